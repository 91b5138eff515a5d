//! The record the router forwards to an owner: one payload, exactly as it was
//! received, with its original position.
//!
//! Routers write the compact binary format ([`compact`]: the typed fields
//! the router decoded, then the payload's bytes), so owners never parse a
//! payload's JSON again. Owners read both that and the JSON format below,
//! which routers of previous releases wrote ([`decode_event`],
//! [`decode_inbound`]).
//!
//! JSON format (one JSON object; `payload` is the original payload object inlined
//! verbatim, never re-serialised):
//! `{"src":"events","p":3,"o":1042,"s":0,"t":1762000000123,"a":1762000000456,"f":1762000000789,"env":["sns"],"payload":{...}}`
//! (`p`, `t`, `a` may be null; `a` and `f` may be absent: records written
//! before they existed).
//!
//! `a` is the input record's *arrival time* (its Kafka record timestamp), so
//! an owner bounds the payload's times exactly as the router did (see
//! [`crate::limits`]): a forwarded record cannot carry a time later than its
//! arrival plus the clock skew either.
//!
//! `f` is the router's wall clock when it forwarded the record, compared by
//! the owners with the times of idle markers
//! (`{"idle":{"src":"events","p":3,"at":1762000000999}}`, `at` absent in
//! markers written before it existed): see
//! [`SpendLedger::apply_forwarded`](crate::spend::SpendLedger::apply_forwarded).

pub mod compact;

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::dead_letter::Reason;
use crate::decode::{decode_delivery_with, decode_inbound_with, TimeBound};
use crate::limits::Limits;
use crate::model::{DeliveryEvent, InboundMessage, Provenance};

/// A forwarded payload, borrowed from the forwarded record.
#[derive(Clone, Debug)]
pub struct Forwarded<'a> {
    /// Original position.
    pub provenance: Provenance,
    /// Receive time known to the router (envelope time or record timestamp).
    pub received_at: Option<i64>,
    /// Arrival time of the input record (its Kafka record timestamp).
    pub arrival_ms: Option<i64>,
    /// The router's wall clock when it forwarded the record.
    pub forwarded_at: Option<i64>,
    /// Envelopes the router unwrapped, outermost first.
    pub envelopes: Vec<&'static str>,
    /// The payload object's original bytes.
    pub payload: &'a [u8],
}

/// Why an owner does not accept a forwarded record.
#[derive(Debug)]
pub enum Refused<'a> {
    /// The record itself cannot be read (a dead letter of the record).
    Record(Reason),
    /// The record is readable but its payload is not accepted (a dead letter
    /// of the payload, inside the record, at its original position).
    Payload(Box<PayloadRefused<'a>>),
}

/// A readable forwarded record whose payload is not accepted.
#[derive(Debug)]
pub struct PayloadRefused<'a> {
    /// Why.
    pub reason: Reason,
    /// The readable record.
    pub forwarded: Forwarded<'a>,
}

impl<'a> Refused<'a> {
    /// The payload of `forwarded` is refused for `reason`.
    pub fn payload(reason: Reason, forwarded: Forwarded<'a>) -> Refused<'a> {
        Refused::Payload(Box::new(PayloadRefused { reason, forwarded }))
    }
}

/// Decodes a forwarded delivery event in either format: compact
/// ([`compact::EVENT_TAG`], what routers write) or JSON (records written
/// by a previous release: the payload is then decoded from its JSON, with
/// the same checks). Returns the forwarded position, the event, and whether
/// its payload has a key that enrichment writes.
pub fn decode_event<'a>(
    record: &'a [u8],
    limits: &Limits,
    intern: &mut impl FnMut(&str) -> Arc<str>,
) -> Result<(Forwarded<'a>, DeliveryEvent, bool), Refused<'a>> {
    if record.first() == Some(&compact::EVENT_TAG) {
        return compact::decode_event(record, limits, intern);
    }
    let f = decode(record, intern).map_err(Refused::Record)?;
    match decode_delivery_with(f.payload, limits, TimeBound::new(limits, f.arrival_ms)) {
        Ok((ev, keys)) => Ok((f, ev, keys)),
        Err(reason) => Err(Refused::payload(reason, f)),
    }
}

/// Decodes a forwarded inbound message in either format (see
/// [`decode_event`]); its forwarded receive time `t` is bounded by the
/// forwarded arrival time plus the skew.
pub fn decode_inbound<'a>(
    record: &'a [u8],
    limits: &Limits,
    intern: &mut impl FnMut(&str) -> Arc<str>,
) -> Result<(Forwarded<'a>, InboundMessage, bool), Refused<'a>> {
    if record.first() == Some(&compact::INBOUND_TAG) {
        return compact::decode_inbound(record, limits, intern);
    }
    let f = decode(record, intern).map_err(Refused::Record)?;
    let bound = TimeBound::new(limits, f.arrival_ms);
    let decoded = f
        .received_at
        .map(|t| bound.check_not_after("t", t))
        .transpose()
        .and_then(|t| decode_inbound_with(f.payload, t, limits));
    match decoded {
        Ok((msg, keys)) => Ok((f, msg, keys)),
        Err(reason) => Err(Refused::payload(reason, f)),
    }
}

/// Encodes a forwarded record without a forwarding time.
pub fn encode(
    provenance: &Provenance,
    received_at: Option<i64>,
    arrival_ms: Option<i64>,
    envelopes: &[&'static str],
    payload: &[u8],
) -> Vec<u8> {
    encode_at(
        provenance,
        received_at,
        arrival_ms,
        None,
        envelopes,
        payload,
    )
}

/// Encodes a forwarded record, with the router time `forwarded_at` when
/// known (`f`, left out when `None`).
pub fn encode_at(
    provenance: &Provenance,
    received_at: Option<i64>,
    arrival_ms: Option<i64>,
    forwarded_at: Option<i64>,
    envelopes: &[&'static str],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 96);
    out.extend_from_slice(b"{\"src\":");
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &*provenance.source);
    out.extend_from_slice(b",\"p\":");
    match provenance.partition {
        Some(p) => out.extend_from_slice(p.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"o\":");
    out.extend_from_slice(provenance.offset.to_string().as_bytes());
    out.extend_from_slice(b",\"s\":");
    out.extend_from_slice(provenance.sub.to_string().as_bytes());
    out.extend_from_slice(b",\"t\":");
    match received_at {
        Some(t) => out.extend_from_slice(t.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"a\":");
    match arrival_ms {
        Some(t) => out.extend_from_slice(t.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(f) = forwarded_at {
        out.extend_from_slice(b",\"f\":");
        out.extend_from_slice(f.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"env\":");
    let _ = serde_json::to_writer(&mut out, envelopes);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    src: Cow<'a, str>,
    p: Option<i32>,
    o: i64,
    s: u32,
    t: Option<i64>,
    #[serde(default)]
    a: Option<i64>,
    #[serde(default)]
    f: Option<i64>,
    #[serde(borrow)]
    env: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

fn static_envelope(name: &str) -> Option<&'static str> {
    ["sns", "eventbridge", "firehose"]
        .into_iter()
        .find(|e| *e == name)
}

/// Decodes a forwarded record. Sources are interned through `intern` so a
/// stream of records from a few topics does not allocate a name per record.
pub fn decode<'a>(
    bytes: &'a [u8],
    intern: &mut impl FnMut(&str) -> Arc<str>,
) -> Result<Forwarded<'a>, Reason> {
    let w: Wire<'a> = serde_json::from_slice(bytes).map_err(|e| Reason::InvalidEnvelope {
        envelope: "forwarded",
        detail: e.to_string(),
    })?;
    let envelopes = w
        .env
        .iter()
        .map(|e| {
            static_envelope(e).ok_or_else(|| Reason::InvalidEnvelope {
                envelope: "forwarded",
                detail: format!("unknown envelope {e:?}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Forwarded {
        provenance: Provenance {
            source: intern(&w.src),
            partition: w.p,
            offset: w.o,
            sub: w.s,
        },
        received_at: w.t,
        arrival_ms: w.a,
        forwarded_at: w.f,
        envelopes,
        payload: w.payload.get().as_bytes(),
    })
}

/// Encodes an *idle marker*: the router found `source`/`partition` read to
/// its end at its wall-clock time `at` (taken before the check), so the
/// owners may stop waiting for it (see
/// [`SpendLedger::source_idle_at`](crate::spend::SpendLedger::source_idle_at)).
pub fn encode_idle(source: &str, partition: i32, at: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(source.len() + 48);
    out.extend_from_slice(IDLE_PREFIX);
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, source);
    out.extend_from_slice(b",\"p\":");
    out.extend_from_slice(partition.to_string().as_bytes());
    out.extend_from_slice(b",\"at\":");
    out.extend_from_slice(at.to_string().as_bytes());
    out.extend_from_slice(b"}}");
    out
}

/// An operator's change of one number's opt-out state (the HTTP API's PUT
/// and DELETE, the equivalents of the service's PutOptedOutNumber and
/// DeleteOptedOutNumber). The instance that served the request sends it to
/// partition `partition_of(number)` (the router's placement) of
/// `inbound-by-number`, so the owner of the number decides it in order with
/// the customer's own messages and writes the result to the opt-out
/// changelog, which every instance reads:
/// `{"operator":{"optOutList":"Default","number":"+14255550100","optedOut":true,"at":1762000000000,"requestId":"..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorChange {
    /// The list.
    pub opt_out_list: String,
    /// The customer number (E.164).
    pub number: String,
    /// Opted out (PUT) or back in (DELETE).
    pub opted_out: bool,
    /// When the operator asked, epoch ms (the decision's time).
    pub at: i64,
    /// The request's id (the cause stored with the entry:
    /// `operator:<requestId>`).
    pub request_id: String,
}

impl OperatorChange {
    /// The cause stored with the entry it decides.
    pub fn cause(&self) -> String {
        format!("operator:{}", self.request_id)
    }
}

const OPERATOR_PREFIX: &[u8] = b"{\"operator\":";

#[derive(serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorWire {
    operator: OperatorChange,
}

/// The record of an operator's change.
pub fn encode_operator(c: &OperatorChange) -> Vec<u8> {
    // Serialising plain strings, numbers and booleans cannot fail.
    serde_json::to_vec(&OperatorWire {
        operator: c.clone(),
    })
    .unwrap_or_default()
}

/// If `bytes` is an operator's change, the change (`Some(Err)` for one that
/// does not parse).
pub fn decode_operator(bytes: &[u8]) -> Option<Result<OperatorChange, Reason>> {
    if !bytes.starts_with(OPERATOR_PREFIX) {
        return None;
    }
    Some(
        serde_json::from_slice::<OperatorWire>(bytes)
            .map(|w| w.operator)
            .map_err(|e| Reason::InvalidEnvelope {
                envelope: "operator-change",
                detail: e.to_string(),
            }),
    )
}

/// A decoded idle marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleMarker {
    /// The [`stream_hash`] of the stream declared caught up.
    pub stream: u64,
    /// The router time of the check (`None` in markers written before it
    /// existed).
    pub at: Option<i64>,
}

const IDLE_PREFIX: &[u8] = b"{\"idle\":{\"src\":";

#[derive(Deserialize)]
struct IdleWire<'a> {
    #[serde(borrow)]
    idle: IdleInner<'a>,
}

#[derive(Deserialize)]
struct IdleInner<'a> {
    #[serde(borrow)]
    src: Cow<'a, str>,
    p: i32,
    #[serde(default)]
    at: Option<i64>,
}

/// If `bytes` is an idle marker, what it declares (`Some(Err)` for a marker
/// that does not parse).
pub fn decode_idle(bytes: &[u8]) -> Option<Result<IdleMarker, Reason>> {
    if !bytes.starts_with(IDLE_PREFIX) {
        return None;
    }
    Some(
        serde_json::from_slice::<IdleWire<'_>>(bytes)
            .map(|w| IdleMarker {
                stream: stream_hash(&Provenance {
                    source: Arc::from(&*w.idle.src),
                    partition: Some(w.idle.p),
                    offset: 0,
                    sub: 0,
                }),
                at: w.idle.at,
            })
            .map_err(|e| Reason::InvalidEnvelope {
                envelope: "idle-marker",
                detail: e.to_string(),
            }),
    )
}

/// FNV-1a, continued from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A stable 64-bit hash of the stream a record was read from (its topic and
/// partition): the ledger keeps one watermark per stream.
pub fn stream_hash(p: &Provenance) -> u64 {
    let h = fnv(0xcbf2_9ce4_8422_2325, p.source.as_bytes());
    let h = fnv(h, &[0xff]);
    fnv(h, &p.partition.unwrap_or(-1).to_le_bytes())
}

/// A stable 64-bit hash of a source position (FNV-1a over its fields), used
/// to recognise a replay of the very same input record.
pub fn position_hash(p: &Provenance) -> u64 {
    let h = fnv(stream_hash(p), &p.offset.to_le_bytes());
    fnv(h, &p.sub.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_markers_name_the_stream_of_its_records() {
        let prov = Provenance {
            source: Arc::from("sms-\"events"),
            partition: Some(2),
            offset: 9,
            sub: 0,
        };
        let marker = encode_idle(&prov.source, 2, 1_762_000_000_123);
        assert_eq!(
            decode_idle(&marker).and_then(Result::ok),
            Some(IdleMarker {
                stream: stream_hash(&prov),
                at: Some(1_762_000_000_123)
            })
        );
        let other = encode_idle(&prov.source, 3, 5);
        assert!(matches!(decode_idle(&other), Some(Ok(m)) if m.stream != stream_hash(&prov)));
        // A marker written before markers had a time still decodes.
        let old = br#"{"idle":{"src":"sms-\"events","p":2}}"#;
        assert_eq!(
            decode_idle(old).and_then(Result::ok),
            Some(IdleMarker {
                stream: stream_hash(&prov),
                at: None
            })
        );
        // A forwarded record is not a marker; a broken marker is an error.
        let rec = encode(&prov, None, None, &[], b"{}");
        assert!(decode_idle(&rec).is_none());
        assert!(matches!(
            decode_idle(br#"{"idle":{"src":"x","p":"two"}}"#),
            Some(Err(Reason::InvalidEnvelope { .. }))
        ));
    }

    #[test]
    fn round_trips_and_keeps_payload_bytes() {
        let prov = Provenance {
            source: Arc::from("in\"put"),
            partition: Some(3),
            offset: 42,
            sub: 1,
        };
        let payload = br#"{"eventType":"TEXT_DELIVERED", "totalMessagePrice":5.81e-3}"#;
        let rec = encode(&prov, Some(7), Some(9), &["firehose", "sns"], payload);
        let mut intern = |s: &str| Arc::from(s);
        let f = decode(&rec, &mut intern).expect("decodes");
        assert_eq!(f.provenance, prov);
        assert_eq!(f.received_at, Some(7));
        assert_eq!(f.arrival_ms, Some(9));
        assert_eq!(f.forwarded_at, None);
        assert_eq!(f.envelopes, vec!["firehose", "sns"]);
        assert_eq!(f.payload, &payload[..]);
        let rec = encode_at(&prov, Some(7), Some(9), Some(11), &["sns"], payload);
        let f = decode(&rec, &mut intern).expect("decodes");
        assert_eq!((f.arrival_ms, f.forwarded_at), (Some(9), Some(11)));
        assert_eq!(f.payload, &payload[..]);
        let none = encode(
            &Provenance {
                partition: None,
                ..prov
            },
            None,
            None,
            &[],
            b"{}",
        );
        let f = decode(&none, &mut intern).expect("decodes");
        assert_eq!(f.provenance.partition, None);
        assert_eq!(f.received_at, None);
        assert_eq!(f.arrival_ms, None);
        // Records written before `a` existed still decode (no arrival time).
        let old = br#"{"src":"e","p":1,"o":2,"s":0,"t":5,"env":[],"payload":{}}"#;
        let f = decode(old, &mut intern).expect("decodes");
        assert_eq!(
            (f.received_at, f.arrival_ms, f.forwarded_at),
            (Some(5), None, None)
        );
    }

    #[test]
    fn garbage_is_a_reason_not_a_panic() {
        let mut intern = |s: &str| Arc::from(s);
        assert!(decode(b"{", &mut intern).is_err());
        assert!(decode(
            br#"{"src":"a","p":null,"o":1,"s":0,"t":null,"env":["x"],"payload":{}}"#,
            &mut intern
        )
        .is_err());
    }

    #[test]
    fn position_hash_distinguishes_fields() {
        let a = Provenance {
            source: Arc::from("t"),
            partition: Some(1),
            offset: 2,
            sub: 0,
        };
        let mut b = a.clone();
        b.sub = 1;
        let mut c = a.clone();
        c.offset = 3;
        assert_ne!(position_hash(&a), position_hash(&b));
        assert_ne!(position_hash(&a), position_hash(&c));
        assert_eq!(position_hash(&a), position_hash(&a.clone()));
    }
}
