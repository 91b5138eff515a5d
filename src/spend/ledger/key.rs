//! The messageId as the key of the ledger's table of tracked messages.
//!
//! AWS End User Messaging gives every message a UUID
//! (`8-4-4-4-12` hexadecimal digits, 36 characters); kept as text that is a
//! 36-byte heap string plus a 16-byte pointer per tracked message, the
//! largest single part of an entry. A [`MessageKey`] keeps a UUID written in
//! lowercase (or in uppercase) as its 16 bytes, inline, and any other text
//! as it is. The mapping is one to one on texts (a UUID in mixed case, or
//! anything else, stays text), so two keys are equal exactly when their
//! messageIds are, and [`MessageKey::text`] gives the messageId back byte
//! for byte.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

/// A messageId as kept in the table. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum MessageKey {
    /// A UUID written in lowercase hexadecimal.
    Lower([u8; 16]),
    /// A UUID written in uppercase hexadecimal.
    Upper([u8; 16]),
    /// Any other messageId.
    Text(Box<str>),
}

/// A messageId to look up, without allocating (the table's keys are
/// [`MessageKey`]s; this hashes and compares the same way).
#[derive(Clone, Copy, Debug)]
pub(super) enum KeyRef<'a> {
    Lower([u8; 16]),
    Upper([u8; 16]),
    Text(&'a str),
}

/// Where the hexadecimal groups of a UUID's text start and end (a dash
/// after each but the last).
const GROUPS: [(usize, usize); 5] = [(0, 8), (9, 13), (14, 18), (19, 23), (24, 36)];

/// The 16 bytes of a UUID and whether its letters are uppercase (digits
/// only: lowercase), or `None` (not a UUID, or letters of both cases). One
/// pass over the text.
fn parse_uuid(s: &[u8]) -> Option<([u8; 16], bool)> {
    if s.len() != 36 || GROUPS[..4].iter().any(|&(_, end)| s[end] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut upper: Option<bool> = None;
    let mut n = 0;
    for &(start, end) in &GROUPS {
        for pair in s[start..end].chunks_exact(2) {
            let hi = hex(pair[0], &mut upper)?;
            let lo = hex(pair[1], &mut upper)?;
            out[n] = (hi << 4) | lo;
            n += 1;
        }
    }
    Some((out, upper.unwrap_or(false)))
}

/// The value of a hexadecimal digit; a letter fixes the case (`upper`) or
/// must match the one already fixed.
fn hex(c: u8, upper: &mut Option<bool>) -> Option<u8> {
    let (v, is_upper) = match c {
        b'0'..=b'9' => return Some(c - b'0'),
        b'a'..=b'f' => (c - b'a' + 10, false),
        b'A'..=b'F' => (c - b'A' + 10, true),
        _ => return None,
    };
    match *upper {
        Some(u) if u != is_upper => None,
        _ => {
            *upper = Some(is_upper);
            Some(v)
        }
    }
}

impl<'a> KeyRef<'a> {
    /// The key of `message_id`.
    pub(super) fn of(message_id: &'a str) -> KeyRef<'a> {
        match parse_uuid(message_id.as_bytes()) {
            Some((u, false)) => KeyRef::Lower(u),
            Some((u, true)) => KeyRef::Upper(u),
            None => KeyRef::Text(message_id),
        }
    }

    /// The owned key.
    pub(super) fn to_owned_key(self) -> MessageKey {
        match self {
            KeyRef::Lower(u) => MessageKey::Lower(u),
            KeyRef::Upper(u) => MessageKey::Upper(u),
            KeyRef::Text(t) => MessageKey::Text(t.into()),
        }
    }
}

impl MessageKey {
    /// The key of `message_id`.
    pub(super) fn of(message_id: &str) -> MessageKey {
        KeyRef::of(message_id).to_owned_key()
    }

    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            MessageKey::Lower(u) => KeyRef::Lower(*u),
            MessageKey::Upper(u) => KeyRef::Upper(*u),
            MessageKey::Text(t) => KeyRef::Text(t),
        }
    }

    /// The messageId, exactly as it was written.
    pub(super) fn text(&self) -> Box<str> {
        let (u, upper) = match self {
            MessageKey::Lower(u) => (u, false),
            MessageKey::Upper(u) => (u, true),
            MessageKey::Text(t) => return t.clone(),
        };
        let mut s = String::with_capacity(36);
        for (i, b) in u.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            // Writing to a String cannot fail.
            let _ = if upper {
                write!(s, "{b:02X}")
            } else {
                write!(s, "{b:02x}")
            };
        }
        s.into_boxed_str()
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            KeyRef::Lower(u) => {
                state.write_u8(0);
                state.write(u);
            }
            KeyRef::Upper(u) => {
                state.write_u8(1);
                state.write(u);
            }
            KeyRef::Text(t) => {
                state.write_u8(2);
                t.hash(state);
            }
        }
    }
}

impl Hash for MessageKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl hashbrown::Equivalent<MessageKey> for KeyRef<'_> {
    fn equivalent(&self, key: &MessageKey) -> bool {
        match (self, key) {
            (KeyRef::Lower(a), MessageKey::Lower(b)) | (KeyRef::Upper(a), MessageKey::Upper(b)) => {
                a == b
            }
            (KeyRef::Text(a), MessageKey::Text(b)) => *a == &**b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uuids_are_kept_as_bytes_and_written_back_as_they_were() {
        for id in [
            "0190c3a1-0000-4000-8000-00000000002a",
            "D4F4B3C8-1A2B-4C5D-8E9F-0123456789AB",
        ] {
            let k = MessageKey::of(id);
            assert!(!matches!(k, MessageKey::Text(_)), "{id}");
            assert_eq!(&*k.text(), id);
        }
    }

    #[test]
    fn anything_else_stays_text() {
        for id in [
            "d4f4b3c8-1a2b-4c5d-8e9f-0123456789AB", // mixed case
            "d4f4b3c81a2b4c5d8e9f0123456789ab",     // no dashes
            "d4f4b3c8-1a2b-4c5d-8e9f-0123456789a",  // short
            "d4f4b3c8-1a2b-4c5d-8e9f_0123456789ab", // a dash replaced
            "g4f4b3c8-1a2b-4c5d-8e9f-0123456789ab", // not hex
            "bad-1",
            "",
            "ünïcödé-ïd",
        ] {
            let k = MessageKey::of(id);
            assert_eq!(k, MessageKey::Text(id.into()), "{id}");
            assert_eq!(&*k.text(), id);
        }
    }

    fn hash_of(k: &impl Hash) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        k.hash(&mut h);
        h.finish()
    }

    fn uuid_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}",
            "[0-9a-fA-F-]{34,38}",
            ".{0,40}",
        ]
    }

    proptest! {
        /// Keys are equal exactly when the texts are; the text comes back;
        /// a lookup key hashes and compares as the stored one.
        #[test]
        fn keys_are_one_to_one_with_texts(a in uuid_like(), b in uuid_like()) {
            let (ka, kb) = (MessageKey::of(&a), MessageKey::of(&b));
            prop_assert_eq!(&*ka.text(), a.as_str());
            prop_assert_eq!(ka == kb, a == b);
            let ra = KeyRef::of(&a);
            prop_assert_eq!(hash_of(&ra), hash_of(&ka));
            prop_assert!(hashbrown::Equivalent::equivalent(&ra, &ka));
            prop_assert_eq!(hashbrown::Equivalent::equivalent(&ra, &kb), a == b);
        }
    }
}
