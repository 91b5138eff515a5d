//! The records the runtime produces: topic, key, value, headers.
//!
//! | output | key | value |
//! |---|---|---|
//! | enriched events | messageId | the enriched event JSON (`recordId` = original position) |
//! | enriched inbound | customer number | the enriched inbound JSON |
//! | opt-out changelog | `list|number` | `{"optOutList","number","optedOut","asOf","cause"}` (full state) |
//! | spend | `YYYY-MM|CHANNEL` | [`crate::stages::totals::SpendState`] (absolute totals) |
//! | alarms | alarm record id | the alarm or LIMIT_REACHED record |
//! | replies | customer number | the reply record |
//! | dead letters | source `topic:partition:offset` | the original bytes, reason in headers |
//!
//! Enriched events, enriched inbound messages and dead letters also carry
//! what the archive sink ([`super::archive_sink`]) needs to write the same
//! archive row the payload had when the stage archived it itself: the
//! envelopes unwrapped, the receive time, the position the stage consumed
//! the payload at ([`headers::AT`], which makes repeats of an at-least-once
//! replay recognisable), and for dead letters the inner payload, the source
//! record's timestamp and the processing time ([`headers`]).
//!
//! The records smsvoice reads back itself (opt-out changelog, spend,
//! spend partials) carry the header `smsvoice.format` with their format
//! version ([`super::formats`], [`OutRecord::with_format`]).

use super::formats::Format;
use crate::dead_letter::DeadLetter;

/// A record to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRecord {
    /// Topic.
    pub topic: String,
    /// Explicit partition (`None`: by key, librdkafka's partitioner).
    pub partition: Option<i32>,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// Record timestamp (ms); `None`: the producer's clock.
    pub timestamp_ms: Option<i64>,
}

impl OutRecord {
    /// A keyed record.
    pub fn keyed(topic: &str, key: impl Into<Vec<u8>>, value: Vec<u8>) -> OutRecord {
        OutRecord {
            topic: topic.to_owned(),
            partition: None,
            key: key.into(),
            value,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    /// Marks the record with its format version (the `smsvoice.format`
    /// header, see [`super::formats`]).
    pub fn with_format(mut self, f: Format) -> OutRecord {
        self.headers.push(f.header());
        self
    }

    /// A JSON value (serialising the runtime's own types cannot fail; if it
    /// ever did, the value would be `null` and the error logged).
    pub fn json<T: serde::Serialize>(topic: &str, key: impl Into<Vec<u8>>, v: &T) -> OutRecord {
        let value = serde_json::to_vec(v).unwrap_or_else(|e| {
            tracing::error!(topic, error = %e, "cannot serialise an output record");
            b"null".to_vec()
        });
        OutRecord::keyed(topic, key, value)
    }
}

/// Header names of a dead-letter record.
pub mod headers {
    /// Machine-readable reason code.
    pub const REASON: &str = "smsvoice.reason";
    /// Human-readable detail.
    pub const DETAIL: &str = "smsvoice.detail";
    /// The offending field, when one is known.
    pub const FIELD: &str = "smsvoice.field";
    /// Source topic (or file).
    pub const SOURCE_TOPIC: &str = "smsvoice.source.topic";
    /// Source partition.
    pub const SOURCE_PARTITION: &str = "smsvoice.source.partition";
    /// Source offset.
    pub const SOURCE_OFFSET: &str = "smsvoice.source.offset";
    /// Index of the payload inside the source record.
    pub const SOURCE_SUB: &str = "smsvoice.source.sub";
    /// Deterministic record id (`topic:partition:offset:sub`).
    pub const RECORD_ID: &str = "smsvoice.record-id";
    /// Envelopes unwrapped before the failure (dead letters) or of the
    /// payload (enriched records), comma-separated, outermost first; empty
    /// for none.
    pub const ENVELOPES: &str = "smsvoice.envelopes";
    /// Dead letters: the unwrapped payload that failed inside an envelope
    /// (raw bytes); absent when the failure is not inside one.
    pub const INNER_PAYLOAD: &str = "smsvoice.inner-payload";
    /// Dead letters: the timestamp (epoch ms) of the record that was
    /// dead-lettered; empty when it had none.
    pub const SOURCE_TIMESTAMP: &str = "smsvoice.source.timestamp";
    /// Dead letters: when the stage processed the record (epoch ms).
    pub const PROCESSED_AT: &str = "smsvoice.processed-at";
    /// Enriched inbound messages: the receive time (epoch ms; envelope time,
    /// else the input record's timestamp); empty when unknown.
    pub const RECEIVED_AT: &str = "smsvoice.received-at";
    /// Where the stage that wrote the record consumed its payload:
    /// `topic:partition:offset:n`, `n` counting the records of that
    /// consumed record written to the same topic, from 0. A stage reads its
    /// partitions in order, so a replay after a crash repeats positions at
    /// or below the highest one already written: the archive sink drops
    /// those repeats.
    pub const AT: &str = "smsvoice.at";
}

/// The position a stage consumed a payload at ([`headers::AT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At<'a> {
    /// Topic consumed.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Index among the records written to the same topic for it.
    pub n: u32,
}

impl At<'_> {
    /// The header value `topic:partition:offset:n`.
    pub fn header(&self) -> (&'static str, Vec<u8>) {
        (
            headers::AT,
            format!(
                "{}:{}:{}:{}",
                self.topic, self.partition, self.offset, self.n
            )
            .into_bytes(),
        )
    }
}

/// An enriched delivery event: the enriched JSON keyed by messageId, with
/// the position it was consumed at and its envelopes in headers.
pub fn enriched_event(
    topic: &str,
    message_id: &str,
    json: Vec<u8>,
    at: At<'_>,
    envelopes: &[&str],
) -> OutRecord {
    let mut o = OutRecord::keyed(topic, message_id.as_bytes(), json);
    o.headers = vec![
        at.header(),
        (headers::ENVELOPES, envelopes.join(",").into_bytes()),
    ];
    o
}

/// An enriched inbound message: the enriched JSON keyed by the customer
/// number, with the position it was consumed at, its envelopes and its
/// receive time in headers.
pub fn enriched_inbound(
    topic: &str,
    customer: &str,
    json: Vec<u8>,
    at: At<'_>,
    envelopes: &[&str],
    received_at: Option<i64>,
) -> OutRecord {
    let mut o = OutRecord::keyed(topic, customer.as_bytes(), json);
    o.headers = vec![
        at.header(),
        (headers::ENVELOPES, envelopes.join(",").into_bytes()),
        (
            headers::RECEIVED_AT,
            received_at
                .map(|t| t.to_string())
                .unwrap_or_default()
                .into_bytes(),
        ),
    ];
    o
}

/// A dead-letter record: the original bytes as the value, the reason and the
/// source position in headers (the full JSON description is in the archive
/// and in file mode's `dead-letters.jsonl`). `timestamp_ms` is the timestamp
/// of the record consumed, `at` where it was consumed.
pub fn dead_letter(
    topic: &str,
    d: &DeadLetter,
    timestamp_ms: Option<i64>,
    at: At<'_>,
) -> OutRecord {
    super::observe::dead_letter(d.reason.code());
    let p = &d.provenance;
    let mut h: Vec<(&'static str, Vec<u8>)> = vec![
        (headers::REASON, d.reason.code().as_bytes().to_vec()),
        (headers::DETAIL, d.reason.to_string().into_bytes()),
        (headers::SOURCE_TOPIC, p.source.as_bytes().to_vec()),
        (
            headers::SOURCE_PARTITION,
            p.partition.unwrap_or(-1).to_string().into_bytes(),
        ),
        (headers::SOURCE_OFFSET, p.offset.to_string().into_bytes()),
        (headers::SOURCE_SUB, p.sub.to_string().into_bytes()),
        (headers::RECORD_ID, p.record_id().into_bytes()),
        (headers::ENVELOPES, d.envelopes.join(",").into_bytes()),
        (
            headers::SOURCE_TIMESTAMP,
            timestamp_ms
                .map(|t| t.to_string())
                .unwrap_or_default()
                .into_bytes(),
        ),
        (
            headers::PROCESSED_AT,
            crate::archive::writer::now_ms().to_string().into_bytes(),
        ),
        at.header(),
    ];
    if let Some(f) = d.reason.field() {
        h.push((headers::FIELD, f.as_bytes().to_vec()));
    }
    if let Some(inner) = &d.inner_payload {
        h.push((headers::INNER_PAYLOAD, inner.clone()));
    }
    OutRecord {
        topic: topic.to_owned(),
        partition: None,
        key: format!("{}:{}:{}", p.source, p.partition.unwrap_or(-1), p.offset).into_bytes(),
        value: d.payload.clone(),
        headers: h,
        timestamp_ms,
    }
}

/// FNV-1a of `key` modulo `partitions`: the explicit partition of records
/// whose placement the runtime decides (spend partials and spend values by
/// `month|channel`), the same in every instance and every language.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let h = crate::archive::naming::fnv1a64(key.as_bytes());
    (h % u64::from(partitions.max(1).unsigned_abs())) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::Reason;
    use crate::model::Provenance;
    use std::sync::Arc;

    #[test]
    fn dead_letter_keeps_bytes_and_names_the_source() {
        let d = DeadLetter {
            reason: Reason::EmptyRecord,
            payload: vec![0xff, b'{'],
            inner_payload: None,
            envelopes: vec!["sns"],
            provenance: Provenance {
                source: Arc::from("in"),
                partition: Some(2),
                offset: 41,
                sub: 0,
            },
        };
        let at = At {
            topic: "in",
            partition: 2,
            offset: 41,
            n: 0,
        };
        let r = dead_letter("dl", &d, Some(5), at);
        assert_eq!(r.value, vec![0xff, b'{']);
        let h = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            h(headers::REASON).as_deref(),
            Some(Reason::EmptyRecord.code())
        );
        assert_eq!(h(headers::SOURCE_TOPIC).as_deref(), Some("in"));
        assert_eq!(h(headers::SOURCE_PARTITION).as_deref(), Some("2"));
        assert_eq!(h(headers::SOURCE_OFFSET).as_deref(), Some("41"));
        assert_eq!(h(headers::ENVELOPES).as_deref(), Some("sns"));
        assert_eq!(h(headers::SOURCE_TIMESTAMP).as_deref(), Some("5"));
        assert_eq!(h(headers::AT).as_deref(), Some("in:2:41:0"));
        assert!(h(headers::INNER_PAYLOAD).is_none());
        assert_eq!(r.key, b"in:2:41");
        assert_eq!(r.timestamp_ms, Some(5));
    }

    #[test]
    fn partitions_are_spread_and_stable() {
        let keys = ["2025-11|SMS", "2025-11|MMS", "2025-11|VOICE", "2025-12|SMS"];
        for k in keys {
            let p = partition_of(k, 6);
            assert!((0..6).contains(&p));
            assert_eq!(p, partition_of(k, 6));
        }
        assert_eq!(partition_of("x", 1), 0);
    }
}
