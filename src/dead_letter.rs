//! Dead letters: input that could not be accepted, with a precise,
//! machine-readable reason and the original bytes.

use base64::Engine as _;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::model::Provenance;

/// Why a payload was not accepted. [`Reason::code`] is the stable
/// machine-readable name; `field` and `detail` say where and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The record is empty or only whitespace.
    #[error("empty record")]
    EmptyRecord,
    /// The bytes are not valid UTF-8 (JSON must be).
    #[error("invalid UTF-8 at byte {at}")]
    InvalidUtf8 {
        /// Offset of the first invalid byte inside the payload.
        at: usize,
    },
    /// The bytes are not JSON.
    #[error("invalid JSON: {detail}")]
    InvalidJson {
        /// The parser's message with line and column.
        detail: String,
    },
    /// A JSON value that is not an object (array, string, number, ...).
    #[error("expected a JSON object, found {found}")]
    NotAnObject {
        /// What was found.
        found: &'static str,
    },
    /// An object that is neither a delivery event, an inbound message nor a
    /// known envelope.
    #[error("object is neither a delivery event (eventType), an inbound message (originationNumber) nor an SNS, EventBridge or Firehose envelope")]
    UnknownPayload,
    /// eventType with no known channel prefix.
    #[error("eventType {event_type:?} has no known channel prefix (TEXT_, MEDIA_, VOICE_, RCS_)")]
    UnknownEventType {
        /// The eventType.
        event_type: String,
    },
    /// eventType is a subscription filter (TEXT_ALL, ALL, ...).
    #[error("eventType {event_type:?} is a subscription filter, never the type of an event")]
    SubscriptionFilterEventType {
        /// The eventType.
        event_type: String,
    },
    /// A required field is absent.
    #[error("missing required field {field}")]
    MissingField {
        /// Field name (path inside the payload).
        field: String,
    },
    /// A field has the wrong JSON type.
    #[error("field {field} has the wrong type: {detail}")]
    WrongType {
        /// Field path.
        field: String,
        /// What was expected and found.
        detail: String,
    },
    /// A field appears twice in one object.
    #[error("field {field} appears more than once")]
    DuplicateField {
        /// Field path.
        field: String,
    },
    /// A field has the right type but an impossible value.
    #[error("field {field} has an invalid value: {detail}")]
    InvalidValue {
        /// Field path.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A price that cannot be kept exactly, or is negative.
    #[error("field {field} is not an exact non-negative USD amount: {detail}")]
    InvalidMoney {
        /// Field path.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A customer number that is not E.164.
    #[error("field {field} is not an E.164 phone number: {value:?}")]
    InvalidPhoneNumber {
        /// Field path.
        field: String,
        /// The value.
        value: String,
    },
    /// Firehose `data` that is not valid base64.
    #[error("field {field} is not valid base64: {detail}")]
    InvalidBase64 {
        /// Field path (`records[3].data`).
        field: String,
        /// The decoder's message.
        detail: String,
    },
    /// An envelope whose own structure is wrong (SNS `Message` not a string,
    /// Firehose `records` not an array, EventBridge `detail` not an object).
    #[error("invalid {envelope} envelope: {detail}")]
    InvalidEnvelope {
        /// `sns`, `eventbridge` or `firehose`.
        envelope: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Envelopes nested deeper than the decoder follows.
    #[error("envelopes nested more than {max} deep")]
    NestingTooDeep {
        /// The limit.
        max: usize,
    },
    /// Objects and arrays nested deeper than `[limits] max_json_depth` in one
    /// JSON text (code `nesting_too_deep`, like envelopes nested too deep).
    #[error("JSON objects and arrays nested more than {max} deep ([limits] max_json_depth)")]
    JsonTooDeep {
        /// The limit.
        max: usize,
    },
    /// A record larger than `[limits] max_record_bytes`. Its dead letter keeps
    /// only the first `kept` bytes (said in the detail, never silent).
    #[error("record of {size} bytes is larger than the limit of {max} bytes ([limits] max_record_bytes); the dead letter keeps its first {kept} bytes")]
    RecordTooLarge {
        /// Size of the record.
        size: usize,
        /// The limit.
        max: usize,
        /// Bytes of the record kept in the dead letter's payload.
        kept: usize,
    },
    /// A string field longer than its limit (`[limits] max_id_bytes`,
    /// `max_body_bytes`, `max_context_value_bytes`).
    #[error("field {field} is too long: {detail}")]
    FieldTooLong {
        /// Field path (`messageId`, `messageBody`, `context.tenant`).
        field: String,
        /// Its length and the limit.
        detail: String,
    },
    /// A map with more entries than `[limits] max_context_entries`.
    #[error("field {field} has too many entries: {detail}")]
    TooManyEntries {
        /// Field path (`context`).
        field: String,
        /// The count and the limit.
        detail: String,
    },
}

impl Reason {
    /// Stable machine-readable reason code.
    pub const fn code(&self) -> &'static str {
        match self {
            Reason::EmptyRecord => "empty_record",
            Reason::InvalidUtf8 { .. } => "invalid_utf8",
            Reason::InvalidJson { .. } => "invalid_json",
            Reason::NotAnObject { .. } => "not_an_object",
            Reason::UnknownPayload => "unknown_payload",
            Reason::UnknownEventType { .. } => "unknown_event_type",
            Reason::SubscriptionFilterEventType { .. } => "subscription_filter_event_type",
            Reason::MissingField { .. } => "missing_field",
            Reason::WrongType { .. } => "wrong_type",
            Reason::DuplicateField { .. } => "duplicate_field",
            Reason::InvalidValue { .. } => "invalid_value",
            Reason::InvalidMoney { .. } => "invalid_money",
            Reason::InvalidPhoneNumber { .. } => "invalid_phone_number",
            Reason::InvalidBase64 { .. } => "invalid_base64",
            Reason::InvalidEnvelope { .. } => "invalid_envelope",
            Reason::NestingTooDeep { .. } | Reason::JsonTooDeep { .. } => "nesting_too_deep",
            Reason::RecordTooLarge { .. } => "record_too_large",
            Reason::FieldTooLong { .. } => "field_too_long",
            Reason::TooManyEntries { .. } => "too_many_entries",
        }
    }

    /// The field the reason is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Reason::MissingField { field }
            | Reason::WrongType { field, .. }
            | Reason::DuplicateField { field }
            | Reason::InvalidValue { field, .. }
            | Reason::InvalidMoney { field, .. }
            | Reason::InvalidPhoneNumber { field, .. }
            | Reason::InvalidBase64 { field, .. }
            | Reason::FieldTooLong { field, .. }
            | Reason::TooManyEntries { field, .. } => Some(field),
            Reason::UnknownEventType { .. } | Reason::SubscriptionFilterEventType { .. } => {
                Some("eventType")
            }
            _ => None,
        }
    }

    /// Every reason code, for schemas and documentation.
    pub const ALL_CODES: [&'static str; 19] = [
        "empty_record",
        "invalid_utf8",
        "invalid_json",
        "not_an_object",
        "unknown_payload",
        "unknown_event_type",
        "subscription_filter_event_type",
        "missing_field",
        "wrong_type",
        "duplicate_field",
        "invalid_value",
        "invalid_money",
        "invalid_phone_number",
        "invalid_base64",
        "invalid_envelope",
        "nesting_too_deep",
        "record_too_large",
        "field_too_long",
        "too_many_entries",
    ];
}

/// A payload that was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why.
    pub reason: Reason,
    /// The original bytes, exactly as read: the top-level JSON value (or the
    /// unparseable span) of the record.
    pub payload: Vec<u8>,
    /// When the failure is inside an envelope: the unwrapped payload that
    /// failed (SNS `Message` text, decoded Firehose `data`, EventBridge `detail`).
    pub inner_payload: Option<Vec<u8>>,
    /// Envelopes unwrapped on the way, outermost first (`sns`, `firehose`, `eventbridge`).
    pub envelopes: Vec<&'static str>,
    /// Where it came from.
    pub provenance: Provenance,
}

fn put_bytes<M: SerializeMap>(m: &mut M, key: &str, bytes: &[u8]) -> Result<(), M::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            m.serialize_entry(key, text)?;
            m.serialize_entry(&format!("{key}Encoding"), "utf8")
        }
        Err(_) => {
            m.serialize_entry(
                key,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            )?;
            m.serialize_entry(&format!("{key}Encoding"), "base64")
        }
    }
}

impl Serialize for DeadLetter {
    /// `{"recordId","reason","field"?,"detail","payload","payloadEncoding",
    /// "innerPayload"?,"innerPayloadEncoding"?,"envelopes","source","partition"?,"offset","sub"}`;
    /// `payload` is the original text, or base64 when the bytes are not UTF-8
    /// (`payloadEncoding` says which).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("recordId", &self.provenance.record_id())?;
        m.serialize_entry("reason", self.reason.code())?;
        if let Some(f) = self.reason.field() {
            m.serialize_entry("field", f)?;
        }
        m.serialize_entry("detail", &self.reason.to_string())?;
        put_bytes(&mut m, "payload", &self.payload)?;
        if let Some(inner) = &self.inner_payload {
            put_bytes(&mut m, "innerPayload", inner)?;
        }
        m.serialize_entry("envelopes", &self.envelopes)?;
        m.serialize_entry("source", &*self.provenance.source)?;
        if let Some(p) = self.provenance.partition {
            m.serialize_entry("partition", &p)?;
        }
        m.serialize_entry("offset", &self.provenance.offset)?;
        m.serialize_entry("sub", &self.provenance.sub)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_listed() {
        let mut codes: Vec<_> = Reason::ALL_CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL_CODES.len());
        assert!(Reason::ALL_CODES.contains(&Reason::EmptyRecord.code()));
        assert!(Reason::ALL_CODES.contains(&Reason::NestingTooDeep { max: 1 }.code()));
        let new = [
            Reason::JsonTooDeep { max: 1 },
            Reason::RecordTooLarge {
                size: 2,
                max: 1,
                kept: 1,
            },
            Reason::FieldTooLong {
                field: "messageId".into(),
                detail: "x".into(),
            },
            Reason::TooManyEntries {
                field: "context".into(),
                detail: "x".into(),
            },
        ];
        for r in &new {
            assert!(Reason::ALL_CODES.contains(&r.code()), "{r:?}");
        }
        assert_eq!(new[2].field(), Some("messageId"));
        assert_eq!(new[3].field(), Some("context"));
        assert_eq!(new[1].field(), None);
    }

    #[test]
    fn serializes_original_bytes_faithfully() {
        let dl = DeadLetter {
            reason: Reason::MissingField {
                field: "messageId".into(),
            },
            payload: b"{\"eventType\":\"TEXT_DELIVERED\"}".to_vec(),
            inner_payload: None,
            envelopes: vec![],
            provenance: Provenance {
                source: "f.jsonl".into(),
                partition: None,
                offset: 3,
                sub: 0,
            },
        };
        let v: serde_json::Value = serde_json::to_value(&dl).expect("serializes");
        assert_eq!(v["reason"], "missing_field");
        assert_eq!(v["field"], "messageId");
        assert_eq!(v["payload"], "{\"eventType\":\"TEXT_DELIVERED\"}");
        assert_eq!(v["payloadEncoding"], "utf8");
        assert_eq!(v["recordId"], "f.jsonl:3:0");

        let bad = DeadLetter {
            reason: Reason::InvalidUtf8 { at: 1 },
            payload: vec![b'{', 0xff, b'}'],
            ..dl
        };
        let v: serde_json::Value = serde_json::to_value(&bad).expect("serializes");
        assert_eq!(v["payloadEncoding"], "base64");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["payload"].as_str().expect("string"))
            .expect("base64");
        assert_eq!(back, vec![b'{', 0xff, b'}']);
    }
}
