//! A UUID's text (`8-4-4-4-12` hexadecimal digits, 36 characters) as its 16
//! bytes and back, exactly: AWS End User Messaging writes messageIds and
//! inboundMessageIds this way, and the state keeps them in 16 bytes instead
//! of a 36-byte string (the spend ledger's keys, the opt-out cause ids).
//!
//! Only texts that [`format`] gives back byte for byte are parsed: the
//! hyphenated form with letters of one case. Anything else (mixed case, no
//! hyphens, braces, a URN) is not a UUID here and stays text where it is
//! kept.

/// The case of a UUID text's letters (digits only: [`Case::Lower`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// `a-f`.
    Lower,
    /// `A-F`.
    Upper,
}

/// Where the hexadecimal groups start and end (a hyphen after each but the
/// last).
const GROUPS: [(usize, usize); 5] = [(0, 8), (9, 13), (14, 18), (19, 23), (24, 36)];

/// The 16 bytes of a UUID text and the case of its letters, or `None` (not a
/// hyphenated UUID, or letters of both cases). One pass over the text.
pub fn parse(s: &str) -> Option<([u8; 16], Case)> {
    let s = s.as_bytes();
    if s.len() != 36 || GROUPS[..4].iter().any(|&(_, end)| s[end] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut case: Option<Case> = None;
    let pairs = GROUPS
        .iter()
        .flat_map(|&(start, end)| s[start..end].chunks_exact(2));
    for (byte, pair) in out.iter_mut().zip(pairs) {
        *byte = (digit(pair[0], &mut case)? << 4) | digit(pair[1], &mut case)?;
    }
    Some((out, case.unwrap_or(Case::Lower)))
}

/// The value of a hexadecimal digit; a letter fixes the case or must match
/// the one already fixed.
fn digit(c: u8, case: &mut Option<Case>) -> Option<u8> {
    let (v, this) = match c {
        b'0'..=b'9' => return Some(c - b'0'),
        b'a'..=b'f' => (c - b'a' + 10, Case::Lower),
        b'A'..=b'F' => (c - b'A' + 10, Case::Upper),
        _ => return None,
    };
    match *case {
        Some(fixed) if fixed != this => None,
        _ => {
            *case = Some(this);
            Some(v)
        }
    }
}

/// The hyphenated text of a UUID, letters in `case`.
pub fn format(b: &[u8; 16], case: Case) -> String {
    let digits: &[u8; 16] = match case {
        Case::Lower => b"0123456789abcdef",
        Case::Upper => b"0123456789ABCDEF",
    };
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(digits[usize::from(byte >> 4)]));
        s.push(char::from(digits[usize::from(byte & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_known_uuid_in_both_cases() {
        let bytes = [
            0x7c, 0x9e, 0x66, 0x79, 0x74, 0x25, 0x40, 0xde, 0x94, 0x4b, 0xe0, 0x7f, 0xc1, 0xf9,
            0x0a, 0xe7,
        ];
        let lower = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        let upper = "7C9E6679-7425-40DE-944B-E07FC1F90AE7";
        assert_eq!(parse(lower), Some((bytes, Case::Lower)));
        assert_eq!(parse(upper), Some((bytes, Case::Upper)));
        assert_eq!(format(&bytes, Case::Lower), lower);
        assert_eq!(format(&bytes, Case::Upper), upper);
        assert_eq!(
            parse("01234567-8901-2345-6789-012345678901").map(|(_, c)| c),
            Some(Case::Lower)
        );
    }

    #[test]
    fn other_texts_are_not_uuids() {
        for s in [
            "7c9e6679-7425-40de-944b-e07fc1f90AE7", // mixed case
            "7c9e6679742540de944be07fc1f90ae7",     // no hyphens
            "{7c9e6679-7425-40de-944b-e07fc1f90ae7}",
            "7c9e6679-7425-40de-944b-e07fc1f90ae",  // short
            "7c9e6679-7425-40de-944b_e07fc1f90ae7", // a hyphen replaced
            "g79e6679-7425-40de-944b-e07fc1f90ae7", // not hex
            "ü9e6679-7425-40de-944b-e07fc1f90ae7",
            "",
        ] {
            assert_eq!(parse(s), None, "{s}");
        }
    }

    proptest! {
        /// Bytes to text and back, in both cases; text to bytes and back
        /// for every text that parses.
        #[test]
        fn round_trips(b in any::<[u8; 16]>(), t in "[0-9a-fA-F-]{34,38}") {
            for case in [Case::Lower, Case::Upper] {
                let s = format(&b, case);
                let parsed = parse(&s);
                prop_assert!(parsed.is_some(), "formatted text not parsed: {}", s);
                let (back, c) = parsed.unwrap_or(([0; 16], case));
                prop_assert_eq!(back, b);
                prop_assert!(c == case || !s.bytes().any(|x| x.is_ascii_alphabetic()));
            }
            if let Some((bytes, case)) = parse(&t) {
                prop_assert_eq!(format(&bytes, case), t);
            }
        }
    }
}
