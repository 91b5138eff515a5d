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

use std::hash::{Hash, Hasher};

use crate::uuid_text::{self, Case};

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

impl<'a> KeyRef<'a> {
    /// The key of `message_id`.
    pub(super) fn of(message_id: &'a str) -> KeyRef<'a> {
        match uuid_text::parse(message_id) {
            Some((u, Case::Lower)) => KeyRef::Lower(u),
            Some((u, Case::Upper)) => KeyRef::Upper(u),
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
        match self {
            MessageKey::Lower(u) => uuid_text::format(u, Case::Lower).into_boxed_str(),
            MessageKey::Upper(u) => uuid_text::format(u, Case::Upper).into_boxed_str(),
            MessageKey::Text(t) => t.clone(),
        }
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
