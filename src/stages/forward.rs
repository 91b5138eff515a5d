//! The record the router forwards to an owner: one payload, exactly as it was
//! received, with its original position.
//!
//! Format (one JSON object; `payload` is the original payload object inlined
//! verbatim, never re-serialised):
//! `{"src":"events","p":3,"o":1042,"s":0,"t":1762000000123,"env":["sns"],"payload":{...}}`
//! (`p`, `t` may be null).

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::dead_letter::Reason;
use crate::model::Provenance;

/// A forwarded payload, borrowed from the forwarded record.
#[derive(Clone, Debug)]
pub struct Forwarded<'a> {
    /// Original position.
    pub provenance: Provenance,
    /// Receive time known to the router (envelope time or record timestamp).
    pub received_at: Option<i64>,
    /// Envelopes the router unwrapped, outermost first.
    pub envelopes: Vec<&'static str>,
    /// The payload object's original bytes.
    pub payload: &'a [u8],
}

/// Encodes a forwarded record.
pub fn encode(
    provenance: &Provenance,
    received_at: Option<i64>,
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
        envelopes,
        payload: w.payload.get().as_bytes(),
    })
}

/// A stable 64-bit hash of a source position (FNV-1a over its fields), used
/// to recognise a replay of the very same input record.
pub fn position_hash(p: &Provenance) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(p.source.as_bytes());
    eat(&[0xff]);
    eat(&p.partition.unwrap_or(-1).to_le_bytes());
    eat(&p.offset.to_le_bytes());
    eat(&p.sub.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_payload_bytes() {
        let prov = Provenance {
            source: Arc::from("in\"put"),
            partition: Some(3),
            offset: 42,
            sub: 1,
        };
        let payload = br#"{"eventType":"TEXT_DELIVERED", "totalMessagePrice":5.81e-3}"#;
        let rec = encode(&prov, Some(7), &["firehose", "sns"], payload);
        let mut intern = |s: &str| Arc::from(s);
        let f = decode(&rec, &mut intern).expect("decodes");
        assert_eq!(f.provenance, prov);
        assert_eq!(f.received_at, Some(7));
        assert_eq!(f.envelopes, vec!["firehose", "sns"]);
        assert_eq!(f.payload, &payload[..]);
        let none = encode(
            &Provenance {
                partition: None,
                ..prov
            },
            None,
            &[],
            b"{}",
        );
        let f = decode(&none, &mut intern).expect("decodes");
        assert_eq!(f.provenance.partition, None);
        assert_eq!(f.received_at, None);
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
