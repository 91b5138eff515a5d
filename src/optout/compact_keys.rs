//! The compact keys of the opt-out state: a customer number inline (no heap
//! allocation for an E.164 number) and the id of the message that caused an
//! entry, 16 bytes when it is a UUID.

use super::*;
use crate::uuid_text::{self, Case};

/// Longest key kept inline (E.164 numbers are at most 16 bytes).
pub(super) const INLINE: usize = 22;

/// A customer number, inline (no heap allocation) when short, as E.164
/// numbers always are. Hashes and compares as its text, so maps keyed by it
/// are queried with `&str`.
#[derive(Clone)]
pub(super) enum NumKey {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl NumKey {
    pub(super) fn new(s: &str) -> Self {
        let b = s.as_bytes();
        if b.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..b.len()].copy_from_slice(b);
            NumKey::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            NumKey::Heap(s.into())
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // The bytes were copied from a whole `str`, so they are UTF-8.
            NumKey::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            NumKey::Heap(s) => s,
        }
    }
}

impl Borrow<str> for NumKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for NumKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for NumKey {}

impl Hash for NumKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for NumKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// An inboundMessageId: 16 bytes for a canonical lowercase UUID (the usual
/// form), else the text. Ordered as its text.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum CauseId {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl CauseId {
    pub(super) fn new(s: &str) -> Self {
        parse_uuid(s).map_or_else(|| CauseId::Text(s.into()), CauseId::Uuid)
    }

    pub(super) fn text(&self) -> String {
        match self {
            CauseId::Uuid(b) => format_uuid(b),
            CauseId::Text(s) => s.to_string(),
        }
    }

    /// Text order. For two canonical lowercase UUIDs the text order is the
    /// byte order (fixed hyphen positions, `0-9` < `a-f`).
    pub(super) fn cmp_text(&self, other: &Self) -> Ordering {
        match (self, other) {
            (CauseId::Uuid(a), CauseId::Uuid(b)) => a.cmp(b),
            (CauseId::Text(a), CauseId::Text(b)) => a.cmp(b),
            _ => self.text().cmp(&other.text()),
        }
    }
}

impl fmt::Debug for CauseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text(), f)
    }
}

/// A UUID's 16 bytes from its canonical lowercase text only, so that
/// [`format_uuid`] gives back exactly the same text.
pub(super) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    match uuid_text::parse(s) {
        Some((b, Case::Lower)) => Some(b),
        _ => None,
    }
}

/// The canonical lowercase text of a UUID.
pub(super) fn format_uuid(b: &[u8; 16]) -> String {
    uuid_text::format(b, Case::Lower)
}
