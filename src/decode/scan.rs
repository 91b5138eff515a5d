//! One-pass scanner of a JSON object: the fast path of the decoder.
//!
//! [`scan_object`] reads one object once and finds, together: where it ends,
//! whether it is valid JSON, how deep it nests, whether it is ASCII (else it
//! checks UTF-8 once), whether it spans several lines, and the position and
//! kind of the value of every top-level key the decoder knows
//! ([`Key`]). The typed payload is then built from those positions
//! without parsing again.
//!
//! The scanner is a *fast path*, not a second definition of JSON: it accepts
//! only what `serde_json` accepts, and returns `None` for anything else or
//! anything unusual (a syntax error, a key with an escape, a duplicate known
//! key, a `\u` escape of a surrogate, nesting deeper than the limit, invalid
//! UTF-8). The decoder then takes the general serde path for that value,
//! which produces the exact dead letter, so outputs do not depend on which
//! path ran. `tests` below check the scanner against `serde_json` on
//! generated and mutated inputs.

/// Kind of a scanned value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not present (the default of an unused slot).
    #[default]
    Absent,
    /// A string without escapes: its text is the bytes between the quotes.
    Str,
    /// A string with at least one escape (not a surrogate escape).
    EscStr,
    /// A number that is an integer (`-?(0|[1-9][0-9]*)`).
    Int,
    /// Any other number (fraction or exponent).
    Num,
    /// `true`.
    True,
    /// `false`.
    False,
    /// `null`.
    Null,
    /// An object.
    Object,
    /// An array.
    Array,
}

/// A scanned value: its kind and its text, `start..end` of the scanned
/// bytes (quotes included for strings, as a `RawValue` would hold it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Val {
    /// Kind.
    pub kind: Kind,
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Val {
    /// The value's text.
    pub fn text<'b>(&self, b: &'b [u8]) -> &'b [u8] {
        b.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The text between the quotes of a string.
    pub fn inner<'b>(&self, b: &'b [u8]) -> &'b [u8] {
        b.get(self.start as usize + 1..(self.end as usize).saturating_sub(1))
            .unwrap_or_default()
    }
}

/// The top-level keys the decoder reads (payload kinds, event and
/// inbound fields, enrichment names, envelope fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Key {
    /// `eventType`.
    EventType,
    /// `eventTimestamp`.
    EventTimestamp,
    /// `messageId`.
    MessageId,
    /// `messageRequestTimestamp`.
    MessageRequestTimestamp,
    /// `eventVersion`.
    EventVersion,
    /// `isFinal`.
    IsFinal,
    /// `originationPhoneNumber`.
    OriginationPhoneNumber,
    /// `destinationPhoneNumber`.
    DestinationPhoneNumber,
    /// `isoCountryCode`.
    IsoCountryCode,
    /// `isInternationalSend`.
    IsInternationalSend,
    /// `mcc`.
    Mcc,
    /// `mnc`.
    Mnc,
    /// `carrierName`.
    CarrierName,
    /// `messageEncoding`.
    MessageEncoding,
    /// `messageType`.
    MessageType,
    /// `messageStatus`.
    MessageStatus,
    /// `messageStatusDescription`.
    MessageStatusDescription,
    /// `context`.
    Context,
    /// `totalMessageParts`.
    TotalMessageParts,
    /// `totalMessagePrice`.
    TotalMessagePrice,
    /// `totalCarrierFee`.
    TotalCarrierFee,
    /// `callDurationInSeconds`.
    CallDurationInSeconds,
    /// `totalDurationInMinutes`.
    TotalDurationInMinutes,
    /// `contentType`.
    ContentType,
    /// `protectConfiguration`.
    ProtectConfiguration,
    /// `recordId`.
    RecordId,
    /// `channel`.
    Channel,
    /// `statusClass`.
    StatusClass,
    /// `costUsd`.
    CostUsd,
    /// `spendMonth`.
    SpendMonth,
    /// `monthToDateSpendUsd`.
    MonthToDateSpendUsd,
    /// `latencyMs`.
    LatencyMs,
    /// `destinationOptedOut`.
    DestinationOptedOut,
    /// `duplicate`.
    Duplicate,
    /// `lateReceipt`.
    LateReceipt,
    /// `originationNumber`.
    OriginationNumber,
    /// `destinationNumber`.
    DestinationNumber,
    /// `messageBody`.
    MessageBody,
    /// `messageKeyword`.
    MessageKeyword,
    /// `inboundMessageId`.
    InboundMessageId,
    /// `previousPublishedMessageId`.
    PreviousPublishedMessageId,
    /// `keyword`.
    Keyword,
    /// `action`.
    Action,
    /// `optOutList`.
    OptOutList,
    /// `optedOut`.
    OptedOut,
    /// `stateUnchanged`.
    StateUnchanged,
    /// `Type`.
    SnsType,
    /// `Message`.
    SnsMessage,
    /// `Timestamp`.
    SnsTimestamp,
    /// `detail`.
    Detail,
    /// `time`.
    Time,
    /// `records`.
    Records,
    /// `timestamp`.
    FirehoseTimestamp,
}

/// Number of [`Key`]s.
pub(crate) const KEYS: usize = 53;

fn key_of(k: &[u8]) -> Option<Key> {
    // By length first, then by text: one or two compares per key.
    Some(match k.len() {
        3 => match k {
            b"mcc" => Key::Mcc,
            b"mnc" => Key::Mnc,
            _ => return None,
        },
        4 => match k {
            b"Type" => Key::SnsType,
            b"time" => Key::Time,
            _ => return None,
        },
        6 => match k {
            b"action" => Key::Action,
            b"detail" => Key::Detail,
            _ => return None,
        },
        7 => match k {
            b"isFinal" => Key::IsFinal,
            b"context" => Key::Context,
            b"channel" => Key::Channel,
            b"costUsd" => Key::CostUsd,
            b"keyword" => Key::Keyword,
            b"Message" => Key::SnsMessage,
            b"records" => Key::Records,
            _ => return None,
        },
        8 => match k {
            b"recordId" => Key::RecordId,
            b"optedOut" => Key::OptedOut,
            _ => return None,
        },
        9 => match k {
            b"eventType" => Key::EventType,
            b"messageId" => Key::MessageId,
            b"latencyMs" => Key::LatencyMs,
            b"duplicate" => Key::Duplicate,
            b"Timestamp" => Key::SnsTimestamp,
            b"timestamp" => Key::FirehoseTimestamp,
            _ => return None,
        },
        10 => match k {
            b"spendMonth" => Key::SpendMonth,
            b"optOutList" => Key::OptOutList,
            _ => return None,
        },
        11 => match k {
            b"carrierName" => Key::CarrierName,
            b"messageType" => Key::MessageType,
            b"contentType" => Key::ContentType,
            b"statusClass" => Key::StatusClass,
            b"lateReceipt" => Key::LateReceipt,
            b"messageBody" => Key::MessageBody,
            _ => return None,
        },
        12 => match k {
            b"eventVersion" => Key::EventVersion,
            _ => return None,
        },
        13 => match k {
            b"messageStatus" => Key::MessageStatus,
            _ => return None,
        },
        14 => match k {
            b"eventTimestamp" => Key::EventTimestamp,
            b"isoCountryCode" => Key::IsoCountryCode,
            b"messageKeyword" => Key::MessageKeyword,
            b"stateUnchanged" => Key::StateUnchanged,
            _ => return None,
        },
        15 => match k {
            b"messageEncoding" => Key::MessageEncoding,
            b"totalCarrierFee" => Key::TotalCarrierFee,
            _ => return None,
        },
        16 => match k {
            b"inboundMessageId" => Key::InboundMessageId,
            _ => return None,
        },
        17 => match k {
            b"totalMessageParts" => Key::TotalMessageParts,
            b"totalMessagePrice" => Key::TotalMessagePrice,
            b"originationNumber" => Key::OriginationNumber,
            b"destinationNumber" => Key::DestinationNumber,
            _ => return None,
        },
        19 => match k {
            b"isInternationalSend" => Key::IsInternationalSend,
            b"monthToDateSpendUsd" => Key::MonthToDateSpendUsd,
            b"destinationOptedOut" => Key::DestinationOptedOut,
            _ => return None,
        },
        20 => match k {
            b"protectConfiguration" => Key::ProtectConfiguration,
            _ => return None,
        },
        21 => match k {
            b"callDurationInSeconds" => Key::CallDurationInSeconds,
            _ => return None,
        },
        22 => match k {
            b"originationPhoneNumber" => Key::OriginationPhoneNumber,
            b"destinationPhoneNumber" => Key::DestinationPhoneNumber,
            b"totalDurationInMinutes" => Key::TotalDurationInMinutes,
            _ => return None,
        },
        23 => match k {
            b"messageRequestTimestamp" => Key::MessageRequestTimestamp,
            _ => return None,
        },
        24 => match k {
            b"messageStatusDescription" => Key::MessageStatusDescription,
            _ => return None,
        },
        26 => match k {
            b"previousPublishedMessageId" => Key::PreviousPublishedMessageId,
            _ => return None,
        },
        _ => return None,
    })
}

const _: () = assert!(KEYS <= 64, "the presence mask is a u64");

/// What [`scan_object`] found.
#[derive(Clone, Debug)]
pub(crate) struct Scanned {
    /// One past the object's closing brace.
    pub end: usize,
    /// Bit `k` set: [`Key`] `k` is present.
    pub present: u64,
    /// The value of each present [`Key`].
    pub vals: [Val; KEYS],
}

impl Scanned {
    /// The value of `k` (kind [`Kind::Absent`] when the key is not there).
    pub fn get(&self, k: Key) -> Val {
        self.vals[k as usize]
    }

    /// Whether `k` is present (whatever its value, even null).
    pub fn has(&self, k: Key) -> bool {
        self.present & (1u64 << k as u8) != 0
    }
}

const HI: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// Bytes that end the fast loop inside a string: `"`, `\`, control
/// characters and non-ASCII bytes. The lowest flagged byte is exact.
#[inline(always)]
fn special(v: u64) -> u64 {
    let ctrl = v.wrapping_sub(ONES * 0x20) & !v;
    let q = v ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let s = v ^ (ONES * u64::from(b'\\'));
    let backslash = s.wrapping_sub(ONES) & !s;
    (ctrl | quote | backslash | v) & HI
}

fn hex(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Why the scan stopped: not an error to report, only "take the general path".
struct Bail;

type R<T> = Result<T, Bail>;

struct Scanner<'b> {
    b: &'b [u8],
    i: usize,
    non_ascii: bool,
    max_depth: usize,
}

impl<'b> Scanner<'b> {
    #[inline(always)]
    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Bail)
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
                _ => break,
            }
        }
    }

    /// A string; `self.i` is at its opening quote. Returns whether it has an escape.
    #[inline]
    fn string(&mut self) -> R<bool> {
        self.i += 1;
        let b = self.b;
        let mut escaped = false;
        loop {
            // Eight bytes at a time while nothing special is in sight.
            while let Some(chunk) = b.get(self.i..self.i + 8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                let m = special(u64::from_le_bytes(w));
                if m == 0 {
                    self.i += 8;
                } else {
                    self.i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
            }
            let c = *b.get(self.i).ok_or(Bail)?;
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    let e = *b.get(self.i + 1).ok_or(Bail)?;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let h = b.get(self.i + 2..self.i + 6).ok_or(Bail)?;
                            let mut n: u16 = 0;
                            for &d in h {
                                n = (n << 4) | hex(d).ok_or(Bail)?;
                            }
                            // Surrogates: a string parsed to text rejects a
                            // lone one, an ignored string does not; leave
                            // them to serde.
                            if (0xD800..=0xDFFF).contains(&n) {
                                return Err(Bail);
                            }
                            self.i += 6;
                        }
                        _ => return Err(Bail),
                    }
                }
                0..=0x1F => return Err(Bail),
                0x80.. => {
                    self.non_ascii = true;
                    self.i += 1;
                }
                _ => self.i += 1,
            }
        }
    }

    /// A number; `self.i` is at its first byte. Returns whether it is an integer.
    fn number(&mut self) -> R<bool> {
        let b = self.b;
        if b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match b.get(self.i) {
            Some(b'0') => {
                self.i += 1;
                if matches!(b.get(self.i), Some(b'0'..=b'9')) {
                    return Err(Bail);
                }
            }
            Some(b'1'..=b'9') => {
                self.i += 1;
                while matches!(b.get(self.i), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            _ => return Err(Bail),
        }
        let mut int = true;
        if b.get(self.i) == Some(&b'.') {
            int = false;
            self.i += 1;
            if !matches!(b.get(self.i), Some(b'0'..=b'9')) {
                return Err(Bail);
            }
            while matches!(b.get(self.i), Some(b'0'..=b'9')) {
                self.i += 1;
            }
        }
        if matches!(b.get(self.i), Some(b'e' | b'E')) {
            int = false;
            self.i += 1;
            if matches!(b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(b.get(self.i), Some(b'0'..=b'9')) {
                return Err(Bail);
            }
            while matches!(b.get(self.i), Some(b'0'..=b'9')) {
                self.i += 1;
            }
        }
        Ok(int)
    }

    fn literal(&mut self, text: &[u8]) -> R<()> {
        if self.b.get(self.i..self.i + text.len()) == Some(text) {
            self.i += text.len();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// Any value at `self.i` (after whitespace), `depth` being the depth of
    /// the container it is in.
    fn value(&mut self, depth: usize) -> R<Val> {
        let start = self.i;
        let kind = match self.peek()? {
            b'"' => {
                if self.string()? {
                    Kind::EscStr
                } else {
                    Kind::Str
                }
            }
            b'{' => {
                self.object(depth + 1, |_, _, _| Ok(()))?;
                Kind::Object
            }
            b'[' => {
                self.array(depth + 1)?;
                Kind::Array
            }
            b't' => {
                self.literal(b"true")?;
                Kind::True
            }
            b'f' => {
                self.literal(b"false")?;
                Kind::False
            }
            b'n' => {
                self.literal(b"null")?;
                Kind::Null
            }
            b'-' | b'0'..=b'9' => {
                if self.number()? {
                    Kind::Int
                } else {
                    Kind::Num
                }
            }
            _ => return Err(Bail),
        };
        Ok(Val {
            kind,
            start: u32::try_from(start).map_err(|_| Bail)?,
            end: u32::try_from(self.i).map_err(|_| Bail)?,
        })
    }

    fn enter(&mut self, depth: usize) -> R<()> {
        if depth > self.max_depth {
            return Err(Bail);
        }
        self.i += 1;
        Ok(())
    }

    fn array(&mut self, depth: usize) -> R<()> {
        self.enter(depth)?;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Bail),
            }
        }
    }

    /// An object at `self.i`; `f(key text, key has escapes, value)` for each member.
    fn object(&mut self, depth: usize, mut f: impl FnMut(&'b [u8], bool, Val) -> R<()>) -> R<()> {
        self.enter(depth)?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return Err(Bail);
            }
            let ks = self.i + 1;
            let escaped = self.string()?;
            let key = self.b.get(ks..self.i - 1).ok_or(Bail)?;
            self.ws();
            if self.peek()? != b':' {
                return Err(Bail);
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth)?;
            f(key, escaped, v)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Bail),
            }
        }
    }
}

/// Scans the object at the start of `b` (which must start with `{`),
/// nesting at most `max_depth` deep (the object itself is depth 1). `None`:
/// take the general path (see the module documentation).
pub(crate) fn scan_object(b: &[u8], max_depth: usize) -> Option<Scanned> {
    if b.first() != Some(&b'{') || max_depth == 0 {
        return None;
    }
    let mut s = Scanner {
        b,
        i: 0,
        non_ascii: false,
        max_depth,
    };
    let mut present = 0u64;
    let mut vals = [Val::default(); KEYS];
    s.object(1, |key, escaped, v| {
        if escaped {
            return Err(Bail);
        }
        if let Some(k) = key_of(key) {
            let bit = 1u64 << k as u8;
            if present & bit != 0 {
                return Err(Bail);
            }
            present |= bit;
            vals[k as usize] = v;
        }
        Ok(())
    })
    .ok()?;
    let end = s.i;
    if s.non_ascii && std::str::from_utf8(&b[..end]).is_err() {
        return None;
    }
    Some(Scanned { end, present, vals })
}

/// Validates the value at the start of `b` like [`scan_object`] (any value
/// kind), returning where it ends, or `None` for the general path.
pub(crate) fn scan_value_end(b: &[u8], max_depth: usize) -> Option<usize> {
    let mut s = Scanner {
        b,
        i: 0,
        non_ascii: false,
        max_depth,
    };
    // Numbers and literals are not self-delimiting: leave them to serde.
    if !matches!(b.first(), Some(b'{' | b'[' | b'"')) {
        return None;
    }
    s.value(0).ok()?;
    if s.non_ascii && std::str::from_utf8(&b[..s.i]).is_err() {
        return None;
    }
    Some(s.i)
}

/// Calls `f(key, key has escapes, value)` for each member of the object `v`
/// of `b` (scanned already: valid), in order; offsets are those of `b`.
/// `None` when `v` is not an object or `f` returned `None`.
pub(crate) fn for_each_member<'b>(
    b: &'b [u8],
    v: Val,
    mut f: impl FnMut(&'b [u8], bool, Val) -> Option<()>,
) -> Option<()> {
    if v.kind != Kind::Object {
        return None;
    }
    let mut s = Scanner {
        b,
        i: v.start as usize,
        non_ascii: false,
        max_depth: usize::MAX,
    };
    s.object(1, |k, e, val| f(k, e, val).ok_or(Bail)).ok()
}

/// The members of the object `v` of `b`, collected (see [`for_each_member`]).
#[cfg(test)]
pub(crate) fn members<'b>(b: &'b [u8], v: Val, out: &mut Vec<(&'b [u8], bool, Val)>) -> Option<()> {
    for_each_member(b, v, |k, e, val| {
        out.push((k, e, val));
        Some(())
    })
}

/// The integer text `t` as an `i64`, when serde_json would deserialize it as
/// one: no `-0` (serde_json reads it as a float), at most 18 digits (no overflow).
pub(crate) fn int_i64(t: &[u8]) -> Option<i64> {
    let (neg, digits) = match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, t),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    if neg {
        if n == 0 {
            return None;
        }
        n = -n;
    }
    Some(n)
}

/// The integer text `t` as a `u32`, when serde_json would deserialize it as one.
pub(crate) fn int_u32(t: &[u8]) -> Option<u32> {
    if t.first() == Some(&b'-') {
        return None;
    }
    int_i64(t).and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;

    /// serde_json's verdict on the value at the start of `b`: its end, or None.
    fn serde_end(b: &[u8]) -> Option<usize> {
        let mut stream = serde_json::Deserializer::from_slice(b).into_iter::<IgnoredAny>();
        match stream.next() {
            Some(Ok(_)) => Some(stream.byte_offset()),
            _ => None,
        }
    }

    fn agree(b: &[u8]) {
        if let Some(s) = scan_object(b, 32) {
            assert_eq!(
                serde_end(b),
                Some(s.end),
                "{:?}",
                String::from_utf8_lossy(b)
            );
            assert!(std::str::from_utf8(&b[..s.end]).is_ok());
        }
        if let Some(end) = scan_value_end(b, 32) {
            assert_eq!(serde_end(b), Some(end), "{:?}", String::from_utf8_lossy(b));
        }
    }

    const ALL: &[(&str, Key)] = &[
        ("eventType", Key::EventType),
        ("eventTimestamp", Key::EventTimestamp),
        ("messageId", Key::MessageId),
        ("messageRequestTimestamp", Key::MessageRequestTimestamp),
        ("eventVersion", Key::EventVersion),
        ("isFinal", Key::IsFinal),
        ("originationPhoneNumber", Key::OriginationPhoneNumber),
        ("destinationPhoneNumber", Key::DestinationPhoneNumber),
        ("isoCountryCode", Key::IsoCountryCode),
        ("isInternationalSend", Key::IsInternationalSend),
        ("mcc", Key::Mcc),
        ("mnc", Key::Mnc),
        ("carrierName", Key::CarrierName),
        ("messageEncoding", Key::MessageEncoding),
        ("messageType", Key::MessageType),
        ("messageStatus", Key::MessageStatus),
        ("messageStatusDescription", Key::MessageStatusDescription),
        ("context", Key::Context),
        ("totalMessageParts", Key::TotalMessageParts),
        ("totalMessagePrice", Key::TotalMessagePrice),
        ("totalCarrierFee", Key::TotalCarrierFee),
        ("callDurationInSeconds", Key::CallDurationInSeconds),
        ("totalDurationInMinutes", Key::TotalDurationInMinutes),
        ("contentType", Key::ContentType),
        ("protectConfiguration", Key::ProtectConfiguration),
        ("recordId", Key::RecordId),
        ("channel", Key::Channel),
        ("statusClass", Key::StatusClass),
        ("costUsd", Key::CostUsd),
        ("spendMonth", Key::SpendMonth),
        ("monthToDateSpendUsd", Key::MonthToDateSpendUsd),
        ("latencyMs", Key::LatencyMs),
        ("destinationOptedOut", Key::DestinationOptedOut),
        ("duplicate", Key::Duplicate),
        ("lateReceipt", Key::LateReceipt),
        ("originationNumber", Key::OriginationNumber),
        ("destinationNumber", Key::DestinationNumber),
        ("messageBody", Key::MessageBody),
        ("messageKeyword", Key::MessageKeyword),
        ("inboundMessageId", Key::InboundMessageId),
        (
            "previousPublishedMessageId",
            Key::PreviousPublishedMessageId,
        ),
        ("keyword", Key::Keyword),
        ("action", Key::Action),
        ("optOutList", Key::OptOutList),
        ("optedOut", Key::OptedOut),
        ("stateUnchanged", Key::StateUnchanged),
        ("Type", Key::SnsType),
        ("Message", Key::SnsMessage),
        ("Timestamp", Key::SnsTimestamp),
        ("detail", Key::Detail),
        ("time", Key::Time),
        ("records", Key::Records),
        ("timestamp", Key::FirehoseTimestamp),
    ];

    #[test]
    fn every_key_is_found() {
        assert_eq!(ALL.len(), KEYS);
        for (i, (t, k)) in ALL.iter().enumerate() {
            assert_eq!(key_of(t.as_bytes()), Some(*k), "{t}");
            assert_eq!(*k as usize, i);
        }
        assert_eq!(key_of(b"eventtype"), None);
        assert_eq!(key_of(b""), None);
    }

    const CASES: &[&str] = &[
        r#"{}"#,
        r#"{ }"#,
        r#"{"a":1}"#,
        r#"{"a":1,}"#,
        r#"{"a":01}"#,
        r#"{"a":-0}"#,
        r#"{"a":-}"#,
        r#"{"a":1.}"#,
        r#"{"a":.5}"#,
        r#"{"a":1e}"#,
        r#"{"a":1e+}"#,
        r#"{"a":1E-5}"#,
        r#"{"a":"\u00e9\ud83d\ude00"}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12"}"#,
        r#"{"a":"\u12g4"}"#,
        "{\"a\":\"\t\"}",
        "{\"a\":\"\u{e9}\"}",
        r#"{"a":tru}"#,
        r#"{"a":nul}"#,
        r#"{"a":[1,2,]}"#,
        r#"{"a":[,]}"#,
        r#"{"a":[]}"#,
        r#"{"a":{"b":{}}}"#,
        r#"{"a" 1}"#,
        r#"{a:1}"#,
        r#"{"a":1"b":2}"#,
        r#"{"a":1}{"b":2}"#,
        "{\"a\":1}\n{\"b\":2}",
        "{\r\n \"a\" :\t[ 1 , { } ]\r\n}",
        r#"{"a":"x"#,
        r#"{"a":"#,
        r#"{"#,
        r#"{"eventType":"A","eventType":"B"}"#,
        r#"{"event\u0054ype":"A"}"#,
        r#"["a",{"b":[null,true,false]}]"#,
        r#""str\"ing""#,
        r#"{"a":1}x"#,
        r#"{"a":12345678901234567890123}"#,
    ];

    #[test]
    fn agrees_with_serde_on_cases() {
        for c in CASES {
            agree(c.as_bytes());
        }
        // Invalid UTF-8 inside a string.
        agree(b"{\"a\":\"\xff\"}");
        agree(b"{\"a\":\"\xc3\"}");
        assert!(scan_object(b"{\"a\":\"\xff\"}", 32).is_none());
    }

    #[test]
    fn finds_known_keys_and_kinds() {
        let b = br#"{"eventType":"TEXT_DELIVERED","x":{"eventType":1},"eventTimestamp":1761800000000,"mcc":"3\"1","totalMessagePrice":0.5e-3,"isFinal":true,"context":{"a":"b"},"protectConfiguration":null}"#;
        let s = scan_object(b, 32).expect("scans");
        assert_eq!(s.end, b.len());
        let et = s.get(Key::EventType);
        assert_eq!((et.kind, et.inner(b)), (Kind::Str, &b"TEXT_DELIVERED"[..]));
        assert_eq!(s.get(Key::EventTimestamp).kind, Kind::Int);
        assert_eq!(s.get(Key::Mcc).kind, Kind::EscStr);
        assert_eq!(s.get(Key::Mcc).text(b), br#""3\"1""#);
        assert_eq!(s.get(Key::TotalMessagePrice).kind, Kind::Num);
        assert_eq!(s.get(Key::TotalMessagePrice).text(b), b"0.5e-3");
        assert_eq!(s.get(Key::IsFinal).kind, Kind::True);
        assert_eq!(s.get(Key::Context).kind, Kind::Object);
        assert_eq!(s.get(Key::ProtectConfiguration).kind, Kind::Null);
        assert!(s.has(Key::ProtectConfiguration));
        assert!(!s.has(Key::MessageId));
        let mut m = Vec::new();
        members(b, s.get(Key::Context), &mut m).expect("object");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, b"a");
        assert_eq!(m[0].2.text(b), br#""b""#);
        // A duplicate known key, an escaped key: the general path.
        assert!(scan_object(br#"{"mcc":"1","mcc":"2"}"#, 32).is_none());
        assert!(scan_object(br#"{"m\u0063c":"1"}"#, 32).is_none());
        // Unknown duplicates are fine (serde ignores them too).
        assert!(scan_object(br#"{"zz":"1","zz":"2"}"#, 32).is_some());
        assert!(scan_object(b"{\n\"a\":1}", 32).is_some());
    }

    #[test]
    fn depth_limit() {
        let deep = |n: usize| format!("{}{}", "{\"a\":".repeat(n), "1".to_owned() + &"}".repeat(n));
        assert!(scan_object(deep(32).as_bytes(), 32).is_some());
        assert!(scan_object(deep(33).as_bytes(), 32).is_none());
        let arr = format!("{{\"a\":{}1{}}}", "[".repeat(31), "]".repeat(31));
        assert!(scan_object(arr.as_bytes(), 32).is_some());
        let arr = format!("{{\"a\":{}1{}}}", "[".repeat(32), "]".repeat(32));
        assert!(scan_object(arr.as_bytes(), 32).is_none());
    }

    #[test]
    fn integers_as_serde_reads_them() {
        assert_eq!(int_i64(b"1761800000000"), Some(1_761_800_000_000));
        assert_eq!(int_i64(b"-5"), Some(-5));
        assert_eq!(int_i64(b"-0"), None);
        assert_eq!(int_i64(b"0"), Some(0));
        assert_eq!(int_i64(b"1234567890123456789"), None);
        assert_eq!(int_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(int_u32(b"4294967296"), None);
        assert_eq!(int_u32(b"-1"), None);
        for t in ["0", "7", "-12", "999999999999999999", "-999999999999999999"] {
            let serde: i64 = serde_json::from_str(t).expect("serde reads it");
            assert_eq!(int_i64(t.as_bytes()), Some(serde));
        }
        assert!(serde_json::from_str::<i64>("-0").is_err());
    }

    fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
        let atom = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\\",
            "\"a\"",
            "\"eventType\"",
            "\"mcc\"",
            "1",
            "-0",
            "0.5",
            "1e5",
            "true",
            "null",
            "false",
            " ",
            "\n",
            "\\u00e9",
            "\\ud800",
            "\\n",
            "\u{e9}",
            "\t",
            "01",
            "-",
        ]);
        prop::collection::vec(atom, 0..40).prop_map(|v| {
            let mut s = String::from("{");
            for a in v {
                s.push_str(a);
            }
            s.into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn never_accepts_what_serde_rejects(b in json_bytes()) {
            agree(&b);
        }

        #[test]
        fn accepts_and_agrees_on_valid_objects(
            entries in prop::collection::vec(("[a-zA-Z]{1,12}", prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
                "\\PC{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
                Just("null".to_owned()),
                Just("[1,{\"k\":[true,false]}]".to_owned()),
            ]), 0..12),
            pretty in any::<bool>(),
        ) {
            let sep = if pretty { ",\n  " } else { "," };
            let body: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let text = format!("{{{}}}", body.join(sep));
            agree(text.as_bytes());
            let unique: std::collections::BTreeSet<&String> = entries.iter().map(|(k, _)| k).collect();
            if unique.len() == entries.len() {
                prop_assert!(scan_object(text.as_bytes(), 32).is_some(), "{}", text);
            }
        }
    }
}
