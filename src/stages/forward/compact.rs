//! The compact forwarded record: what the router decoded, in binary, so an
//! owner never parses the payload's JSON again (one JSON parse per input
//! payload end to end; the archive sink, a consumer of the public enriched
//! topics, parses what it archives itself).
//!
//! Layout: one tag byte ([`EVENT_TAG`] or [`INBOUND_TAG`]; a JSON record
//! starts with `{`, so the tag tells the two formats apart), then a
//! [postcard](https://docs.rs/postcard) encoded [`Header`] followed by the
//! typed fields ([`EventFields`] or [`InboundFields`]), then the payload's
//! original bytes up to the end of the record (used as they are for the
//! enriched JSON: the original text is never re-serialised).
//!
//! Strings are borrowed from the record when decoding; the owner allocates
//! only the owned [`DeliveryEvent`] / [`InboundMessage`] it keeps.
//!
//! What an owner still checks, since a record of an internal topic could be
//! written by anything ([`validate_event`]): every time against the
//! forwarded arrival time plus the clock skew (as the router did), the cost
//! ceiling of the channel, and the eventType's channel. Sizes were checked
//! by the router and are bounded by the broker's record size.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{static_envelope, Forwarded, Refused};
use crate::classify::{classify, EventTypeError};
use crate::dead_letter::Reason;
use crate::decode::TimeBound;
use crate::limits::Limits;
use crate::model::{DeliveryEvent, InboundMessage, Provenance};
use crate::money::Usd;

/// First byte of a compact forwarded delivery event.
pub const EVENT_TAG: u8 = 0x02;
/// First byte of a compact forwarded inbound message.
pub const INBOUND_TAG: u8 = 0x03;

/// Position and times of a forwarded payload (as in the JSON format:
/// `src`, `p`, `o`, `s`, `t`, `a`, `f`, `env`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Header<'a> {
    #[serde(borrow)]
    src: &'a str,
    p: Option<i32>,
    o: i64,
    s: u32,
    t: Option<i64>,
    a: Option<i64>,
    f: Option<i64>,
    #[serde(borrow)]
    env: Vec<&'a str>,
    /// The payload already has a key that enrichment writes.
    has_keys: bool,
}

/// The typed fields of a delivery event (see [`DeliveryEvent`]); money as
/// exact units.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventFields<'a> {
    #[serde(borrow)]
    event_type: &'a str,
    event_timestamp: i64,
    #[serde(borrow)]
    message_id: &'a str,
    message_request_timestamp: Option<i64>,
    #[serde(borrow)]
    event_version: Option<&'a str>,
    is_final: Option<bool>,
    #[serde(borrow)]
    origination_phone_number: Option<&'a str>,
    #[serde(borrow)]
    destination_phone_number: Option<&'a str>,
    #[serde(borrow)]
    iso_country_code: Option<&'a str>,
    is_international_send: Option<bool>,
    #[serde(borrow)]
    mcc: Option<&'a str>,
    #[serde(borrow)]
    mnc: Option<&'a str>,
    #[serde(borrow)]
    carrier_name: Option<&'a str>,
    #[serde(borrow)]
    message_encoding: Option<&'a str>,
    #[serde(borrow)]
    message_type: Option<&'a str>,
    #[serde(borrow)]
    message_status: Option<&'a str>,
    #[serde(borrow)]
    message_status_description: Option<&'a str>,
    #[serde(borrow)]
    context: Option<Vec<(&'a str, &'a str)>>,
    total_message_parts: Option<i64>,
    total_message_price: Option<i128>,
    total_carrier_fee: Option<i128>,
    call_duration_in_seconds: Option<i64>,
    total_duration_in_minutes: Option<i64>,
    #[serde(borrow)]
    content_type: Option<&'a str>,
    #[serde(borrow)]
    protect_configuration_id: Option<&'a str>,
    #[serde(borrow)]
    protect_status: Option<&'a str>,
}

/// The typed fields of an inbound message (see [`InboundMessage`]; its
/// receive time travels in the header, `t`).
#[derive(Debug, Serialize, Deserialize)]
pub struct InboundFields<'a> {
    #[serde(borrow)]
    origination_number: &'a str,
    #[serde(borrow)]
    destination_number: &'a str,
    #[serde(borrow)]
    message_body: &'a str,
    #[serde(borrow)]
    message_keyword: Option<&'a str>,
    #[serde(borrow)]
    inbound_message_id: Option<&'a str>,
    #[serde(borrow)]
    previous_published_message_id: Option<&'a str>,
}

/// Where and when a payload was read, for [`encode_event`] /
/// [`encode_inbound`].
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    /// Original position.
    pub provenance: &'a Provenance,
    /// Receive time known to the router (inbound messages).
    pub received_at: Option<i64>,
    /// Arrival time of the input record.
    pub arrival_ms: Option<i64>,
    /// The router's wall clock when it forwarded the record.
    pub forwarded_at: Option<i64>,
    /// Envelopes unwrapped, outermost first.
    pub envelopes: &'a [&'static str],
    /// The payload has a key that enrichment writes.
    pub has_keys: bool,
}

impl<'a> Origin<'a> {
    fn header(&self) -> Header<'a> {
        Header {
            src: &self.provenance.source,
            p: self.provenance.partition,
            o: self.provenance.offset,
            s: self.provenance.sub,
            t: self.received_at,
            a: self.arrival_ms,
            f: self.forwarded_at,
            env: self.envelopes.to_vec(),
            has_keys: self.has_keys,
        }
    }
}

/// Appends the postcard encoding of `v` (encoding plain structs into a Vec
/// cannot fail; should it ever, the record is the tag alone, which an owner
/// dead-letters as unreadable rather than miscounting).
fn put<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    if let Ok(bytes) = postcard::to_allocvec(v) {
        out.extend_from_slice(&bytes);
    }
}

/// Encodes a decoded delivery event with its original payload bytes.
pub fn encode_event(origin: &Origin<'_>, ev: &DeliveryEvent, payload: &[u8]) -> Vec<u8> {
    let fields = EventFields {
        event_type: &ev.event_type,
        event_timestamp: ev.event_timestamp,
        message_id: &ev.message_id,
        message_request_timestamp: ev.message_request_timestamp,
        event_version: ev.event_version.as_deref(),
        is_final: ev.is_final,
        origination_phone_number: ev.origination_phone_number.as_deref(),
        destination_phone_number: ev.destination_phone_number.as_deref(),
        iso_country_code: ev.iso_country_code.as_deref(),
        is_international_send: ev.is_international_send,
        mcc: ev.mcc.as_deref(),
        mnc: ev.mnc.as_deref(),
        carrier_name: ev.carrier_name.as_deref(),
        message_encoding: ev.message_encoding.as_deref(),
        message_type: ev.message_type.as_deref(),
        message_status: ev.message_status.as_deref(),
        message_status_description: ev.message_status_description.as_deref(),
        context: ev.context.as_ref().map(|c| {
            c.iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>()
        }),
        total_message_parts: ev.total_message_parts,
        total_message_price: ev.total_message_price.map(Usd::units),
        total_carrier_fee: ev.total_carrier_fee.map(Usd::units),
        call_duration_in_seconds: ev.call_duration_in_seconds,
        total_duration_in_minutes: ev.total_duration_in_minutes,
        content_type: ev.content_type.as_deref(),
        protect_configuration_id: ev.protect_configuration_id.as_deref(),
        protect_status: ev.protect_status.as_deref(),
    };
    let mut out = Vec::with_capacity(payload.len() + 160);
    out.push(EVENT_TAG);
    put(&mut out, &(origin.header(), fields));
    out.extend_from_slice(payload);
    out
}

/// Encodes a decoded inbound message with its original payload bytes (its
/// receive time is `origin.received_at`).
pub fn encode_inbound(origin: &Origin<'_>, msg: &InboundMessage, payload: &[u8]) -> Vec<u8> {
    let fields = InboundFields {
        origination_number: &msg.origination_number,
        destination_number: &msg.destination_number,
        message_body: &msg.message_body,
        message_keyword: msg.message_keyword.as_deref(),
        inbound_message_id: msg.inbound_message_id.as_deref(),
        previous_published_message_id: msg.previous_published_message_id.as_deref(),
    };
    let mut out = Vec::with_capacity(payload.len() + 96);
    out.push(INBOUND_TAG);
    put(&mut out, &(origin.header(), fields));
    out.extend_from_slice(payload);
    out
}

fn unreadable(e: impl std::fmt::Display) -> Reason {
    Reason::InvalidEnvelope {
        envelope: "forwarded",
        detail: format!("compact record: {e}"),
    }
}

/// The header and typed fields of a compact record (`bytes` without its
/// tag), and the payload bytes after them.
fn split<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(Header<'a>, T, &'a [u8]), Reason> {
    let ((h, f), payload): ((Header<'a>, T), &'a [u8]) =
        postcard::take_from_bytes(bytes).map_err(unreadable)?;
    Ok((h, f, payload))
}

fn forwarded<'a>(
    h: &Header<'a>,
    payload: &'a [u8],
    intern: &mut impl FnMut(&str) -> Arc<str>,
) -> Result<Forwarded<'a>, Reason> {
    let envelopes = h
        .env
        .iter()
        .map(|e| static_envelope(e).ok_or_else(|| unreadable(format!("unknown envelope {e:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Forwarded {
        provenance: Provenance {
            source: intern(h.src),
            partition: h.p,
            offset: h.o,
            sub: h.s,
        },
        received_at: h.t,
        arrival_ms: h.a,
        forwarded_at: h.f,
        envelopes,
        payload,
    })
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

/// Decodes a compact delivery event (`bytes` starting with [`EVENT_TAG`]):
/// the forwarded position, the event (checked by [`validate_event`]) and
/// whether its payload has a key that enrichment writes.
pub fn decode_event<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    intern: &mut impl FnMut(&str) -> Arc<str>,
) -> Result<(Forwarded<'a>, DeliveryEvent, bool), Refused<'a>> {
    let body = bytes
        .strip_prefix(&[EVENT_TAG])
        .ok_or_else(|| Refused::Record(unreadable("not a compact delivery event")))?;
    let (h, f, payload): (Header<'a>, EventFields<'a>, &'a [u8]) =
        split(body).map_err(Refused::Record)?;
    let fwd = forwarded(&h, payload, intern).map_err(Refused::Record)?;
    let (channel, status_class) = match classify(f.event_type) {
        Ok(c) => c,
        Err(e) => {
            let reason = match e {
                EventTypeError::UnknownPrefix(t) => Reason::UnknownEventType { event_type: t },
                EventTypeError::SubscriptionFilter(t) => {
                    Reason::SubscriptionFilterEventType { event_type: t }
                }
            };
            return Err(Refused::payload(reason, fwd));
        }
    };
    let ev = DeliveryEvent {
        event_type: f.event_type.to_owned(),
        channel,
        status_class,
        event_timestamp: f.event_timestamp,
        message_id: f.message_id.to_owned(),
        message_request_timestamp: f.message_request_timestamp,
        event_version: owned(f.event_version),
        is_final: f.is_final,
        origination_phone_number: owned(f.origination_phone_number),
        destination_phone_number: owned(f.destination_phone_number),
        iso_country_code: owned(f.iso_country_code),
        is_international_send: f.is_international_send,
        mcc: owned(f.mcc),
        mnc: owned(f.mnc),
        carrier_name: owned(f.carrier_name),
        message_encoding: owned(f.message_encoding),
        message_type: owned(f.message_type),
        message_status: owned(f.message_status),
        message_status_description: owned(f.message_status_description),
        context: f.context.map(|c| {
            c.into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<BTreeMap<_, _>>()
        }),
        total_message_parts: f.total_message_parts,
        total_message_price: f.total_message_price.map(Usd::from_units),
        total_carrier_fee: f.total_carrier_fee.map(Usd::from_units),
        call_duration_in_seconds: f.call_duration_in_seconds,
        total_duration_in_minutes: f.total_duration_in_minutes,
        content_type: owned(f.content_type),
        protect_configuration_id: owned(f.protect_configuration_id),
        protect_status: owned(f.protect_status),
    };
    if let Err(reason) = validate_event(&ev, limits, TimeBound::new(limits, fwd.arrival_ms)) {
        return Err(Refused::payload(reason, fwd));
    }
    Ok((fwd, ev, h.has_keys))
}

/// Decodes a compact inbound message (`bytes` starting with
/// [`INBOUND_TAG`]): the forwarded position, the message (its `received_at`
/// is the forwarded `t`, bounded again by the forwarded arrival time plus
/// the skew) and whether its payload has a key that enrichment writes.
pub fn decode_inbound<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    intern: &mut impl FnMut(&str) -> Arc<str>,
) -> Result<(Forwarded<'a>, InboundMessage, bool), Refused<'a>> {
    let body = bytes
        .strip_prefix(&[INBOUND_TAG])
        .ok_or_else(|| Refused::Record(unreadable("not a compact inbound message")))?;
    let (h, f, payload): (Header<'a>, InboundFields<'a>, &'a [u8]) =
        split(body).map_err(Refused::Record)?;
    let fwd = forwarded(&h, payload, intern).map_err(Refused::Record)?;
    if let Some(t) = h.t {
        if let Err(reason) = TimeBound::new(limits, h.a).check_not_after("t", t) {
            return Err(Refused::payload(reason, fwd));
        }
    }
    let msg = InboundMessage {
        origination_number: f.origination_number.to_owned(),
        destination_number: f.destination_number.to_owned(),
        message_body: f.message_body.to_owned(),
        message_keyword: owned(f.message_keyword),
        inbound_message_id: owned(f.inbound_message_id),
        previous_published_message_id: owned(f.previous_published_message_id),
        received_at: h.t,
    };
    Ok((fwd, msg, h.has_keys))
}

/// The checks an owner repeats on a forwarded event: its times against the
/// forwarded arrival time plus the skew, and the cost ceiling.
pub fn validate_event(ev: &DeliveryEvent, limits: &Limits, bound: TimeBound) -> Result<(), Reason> {
    bound.check("eventTimestamp", ev.event_timestamp)?;
    if let Some(t) = ev.message_request_timestamp {
        bound.check("messageRequestTimestamp", t)?;
    }
    crate::decode::check_cost(
        ev.channel,
        ev.total_message_price,
        ev.total_carrier_fee,
        limits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_delivery;

    fn prov() -> Provenance {
        Provenance {
            source: Arc::from("sms-events"),
            partition: Some(3),
            offset: 1042,
            sub: 1,
        }
    }

    const EVENT: &[u8] = br#"{"eventType":"TEXT_DELIVERED","eventVersion":"1.0","eventTimestamp":1762000000000,"isFinal":true,"originationPhoneNumber":"+12065550152","destinationPhoneNumber":"+14255550182","isoCountryCode":"US","mcc":"310","mnc":"05","carrierName":"T-Mobile","messageId":"m-1","messageRequestTimestamp":1761999999000,"messageEncoding":"GSM","messageType":"TRANSACTIONAL","messageStatus":"DELIVERED","messageStatusDescription":"Message has been accepted by phone","context":{"team":"a","b":"\"q\""},"totalMessageParts":1,"totalMessagePrice":0.00581,"totalCarrierFee":0.00302}"#;

    #[test]
    fn an_event_survives_the_round_trip_exactly() {
        // Oracle: the JSON decoder's own result for the same payload.
        let (ev, keys) = decode_delivery(EVENT).expect("valid sample");
        let p = prov();
        let origin = Origin {
            provenance: &p,
            received_at: None,
            arrival_ms: Some(1_762_000_000_500),
            forwarded_at: Some(1_762_000_000_900),
            envelopes: &["sns"],
            has_keys: keys,
        };
        let rec = encode_event(&origin, &ev, EVENT);
        assert_eq!(rec[0], EVENT_TAG);
        let mut intern = |s: &str| Arc::<str>::from(s);
        let (f, back, has_keys) =
            decode_event(&rec, &Limits::DEFAULT, &mut intern).expect("decodes");
        assert_eq!(back, ev);
        assert_eq!(has_keys, keys);
        assert_eq!(f.payload, EVENT);
        assert_eq!(f.provenance, p);
        assert_eq!(f.arrival_ms, Some(1_762_000_000_500));
        assert_eq!(f.forwarded_at, Some(1_762_000_000_900));
        assert_eq!(f.envelopes, vec!["sns"]);
    }

    #[test]
    fn an_owner_bounds_the_times_again() {
        let (ev, _) = decode_delivery(EVENT).expect("valid sample");
        let p = prov();
        // Arrived an hour before its eventTimestamp: beyond the 15 min skew.
        let origin = Origin {
            provenance: &p,
            received_at: None,
            arrival_ms: Some(ev.event_timestamp - 3_600_000),
            forwarded_at: None,
            envelopes: &[],
            has_keys: false,
        };
        let rec = encode_event(&origin, &ev, EVENT);
        let mut intern = |s: &str| Arc::<str>::from(s);
        let e = decode_event(&rec, &Limits::DEFAULT, &mut intern).expect_err("beyond the skew");
        assert!(
            matches!(e, Refused::Payload(ref p) if matches!(p.reason, Reason::InvalidValue { ref field, .. } if field == "eventTimestamp")),
            "{e:?}"
        );
    }

    #[test]
    fn truncated_or_foreign_bytes_are_reasons_not_panics() {
        let (ev, _) = decode_delivery(EVENT).expect("valid sample");
        let p = prov();
        let origin = Origin {
            provenance: &p,
            received_at: None,
            arrival_ms: None,
            forwarded_at: None,
            envelopes: &[],
            has_keys: false,
        };
        let rec = encode_event(&origin, &ev, EVENT);
        let mut intern = |s: &str| Arc::<str>::from(s);
        for cut in [1usize, 2, 5, 17, 40] {
            assert!(decode_event(&rec[..cut], &Limits::DEFAULT, &mut intern).is_err());
        }
        assert!(decode_event(b"{}", &Limits::DEFAULT, &mut intern).is_err());
        assert!(matches!(
            decode_inbound(&[INBOUND_TAG, 0xff, 0xff], &Limits::DEFAULT, &mut intern),
            Err(Refused::Record(_))
        ));
    }

    #[test]
    fn an_inbound_message_survives_the_round_trip() {
        let raw = br#"{"originationNumber":"+14255550182","destinationNumber":"+12065550152","messageBody":"STOP","inboundMessageId":"i-1"}"#;
        let (msg, keys) =
            crate::decode::decode_inbound(raw, Some(1_762_000_000_000)).expect("valid sample");
        let p = prov();
        let origin = Origin {
            provenance: &p,
            received_at: msg.received_at,
            arrival_ms: Some(1_762_000_000_100),
            forwarded_at: None,
            envelopes: &["eventbridge"],
            has_keys: keys,
        };
        let rec = encode_inbound(&origin, &msg, raw);
        let mut intern = |s: &str| Arc::<str>::from(s);
        let (f, back, k) = decode_inbound(&rec, &Limits::DEFAULT, &mut intern).expect("decodes");
        assert_eq!(back, msg);
        assert_eq!(k, keys);
        assert_eq!(f.payload, raw);
        assert_eq!(f.received_at, Some(1_762_000_000_000));
    }
}
