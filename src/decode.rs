//! Decoding: record bytes -> typed payloads or dead letters.
//!
//! One record (a Kafka record value, or one top-level JSON value of an input
//! file) may hold any envelope of BRIEF section 5:
//!
//! 1. a raw payload object (delivery event or inbound message);
//! 2. an SNS notification whose `Message` is the payload as a JSON string;
//! 3. an EventBridge event whose `detail` is the payload;
//! 4. a Firehose HTTP endpoint batch whose `records[].data` are base64 payloads;
//! 5. several of these concatenated, with or without newlines.
//!
//! The payload kind is detected from its fields: `eventType` makes a delivery
//! event, `originationNumber` / `messageBody` / `inboundMessageId` an inbound
//! message. Every payload found ends as [`Decoded::Accepted`] or
//! [`Decoded::Dead`], in input order; nothing panics and nothing is dropped.
//!
//! Every payload is also checked against the [`Limits`]: sizes (record,
//! identifiers, body, context, JSON depth), the per-message cost ceiling, and
//! the **time bound**: no time inside a record (`eventTimestamp`,
//! `messageRequestTimestamp`, SNS `Timestamp`, EventBridge `time`, Firehose
//! `timestamp`) may be later than the record's *arrival time* (from outside
//! its payload: the Kafka record timestamp, or the input file's modification
//! time) plus the clock-skew allowance. With no arrival time only the
//! absolute range 2000-01-01..2200-01-01 applies.
//!
//! Here: a record's values decoded, by kind. `split`: a byte stream split
//! into values. `scan`: the one pass over an object. `fields`: typed fields
//! from the scan. `payload`: a payload object typed and checked. `rules`:
//! what a field must meet (money, times, sizes, cost). `envelopes`: SNS,
//! EventBridge and Firehose unwrapped.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::classify::{classify, EventTypeError};
use crate::dead_letter::{DeadLetter, Reason};
use crate::limits::{Limits, OVERSIZED_PAYLOAD_KEPT};
use crate::model::{is_e164, DeliveryEvent, InboundMessage, Payload, Provenance};
use crate::money::{MoneyError, Usd};

mod envelopes;
mod fields;
mod payload;
mod rules;
mod scan;
mod split;

use fields::*;
pub use payload::*;
pub(crate) use rules::check_cost;
use rules::*;
use scan::{Key, Kind, Val};
pub use split::*;

/// Envelopes are followed this deep (an SNS message inside a Firehose batch is 2).
pub const MAX_NESTING: usize = 4;

/// Earliest accepted timestamp: 2000-01-01T00:00:00Z, epoch ms.
pub const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// Latest accepted timestamp (exclusive): 2200-01-01T00:00:00Z, epoch ms.
pub const MAX_TIMESTAMP_MS: i64 = 7_258_118_400_000;

/// Where the record being decoded came from.
#[derive(Clone, Debug)]
pub struct RecordSource {
    /// Topic or file path.
    pub source: Arc<str>,
    /// Kafka partition (None in file mode).
    pub partition: Option<i32>,
    /// Kafka offset or record index in the file.
    pub offset: i64,
    /// Kafka record timestamp, epoch ms, if any.
    pub timestamp_ms: Option<i64>,
}

/// An accepted payload.
#[derive(Clone, Debug)]
pub struct Accepted<'a> {
    /// The typed payload.
    pub payload: Payload,
    /// The payload object's JSON text exactly as received (inside its envelope).
    pub raw: Cow<'a, [u8]>,
    /// True when the object already has a key that enrichment writes; the
    /// enricher then rebuilds the object instead of appending to the text.
    pub has_enrichment_keys: bool,
    /// Envelopes unwrapped, outermost first.
    pub envelopes: Vec<&'static str>,
    /// Where it came from.
    pub provenance: Provenance,
}

/// One payload's fate.
#[derive(Clone, Debug)]
pub enum Decoded<'a> {
    /// Decoded and valid.
    Accepted(Box<Accepted<'a>>),
    /// Not accepted.
    Dead(Box<DeadLetter>),
}

/// Decodes one record into payloads, appending to `out` in input order, with
/// the default [`Limits`] and the record timestamp (`src.timestamp_ms`) as
/// the arrival time.
pub fn decode_record<'a>(bytes: &'a [u8], src: &RecordSource, out: &mut Vec<Decoded<'a>>) {
    decode_record_with(bytes, src, &Limits::DEFAULT, src.timestamp_ms, out);
}

/// Decodes one record into payloads, appending to `out` in input order.
/// `arrival_ms` is the time the record reached us, from outside its payload
/// (the Kafka record timestamp, the input file's modification time): no time
/// inside the record may be later than it plus `limits.max_clock_skew_ms`.
/// `None`: no bound beyond the absolute range.
pub fn decode_record_with<'a>(
    bytes: &'a [u8],
    src: &RecordSource,
    limits: &Limits,
    arrival_ms: Option<i64>,
    out: &mut Vec<Decoded<'a>>,
) {
    let mut d = Decoder::new(bytes, src, limits, arrival_ms, out);
    if bytes.len() > limits.max_record_bytes {
        // Keep a bounded prefix (cut at a UTF-8 boundary when the record is
        // text): a dead letter as large as the record could not be written
        // to a topic whose records are smaller. The detail says so.
        let mut kept = bytes.len().min(OVERSIZED_PAYLOAD_KEPT);
        if let Err(e) = std::str::from_utf8(&bytes[..kept]) {
            if e.error_len().is_none() {
                kept = e.valid_up_to();
            }
        }
        d.dead(
            Reason::RecordTooLarge {
                size: bytes.len(),
                max: limits.max_record_bytes,
                kept,
            },
            0..kept,
            None,
            &[],
        );
        return;
    }
    if bytes.iter().all(|&b| is_ws(b)) {
        d.dead(Reason::EmptyRecord, 0..bytes.len(), None, &[]);
        return;
    }
    d.split_and_decode(bytes, Some(0), &Ctx::top(src.timestamp_ms));
}

/// The latest time a record may carry: its arrival time plus the allowed
/// clock skew. Every time taken from a record passes [`TimeBound::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeBound {
    arrival_ms: Option<i64>,
    skew_ms: i64,
}

impl TimeBound {
    /// No arrival time: only the absolute range 2000..2200 applies.
    pub const NONE: TimeBound = TimeBound {
        arrival_ms: None,
        skew_ms: 0,
    };

    /// The bound of a record that arrived at `arrival_ms`.
    pub fn new(limits: &Limits, arrival_ms: Option<i64>) -> TimeBound {
        TimeBound {
            arrival_ms,
            skew_ms: limits.max_clock_skew_ms,
        }
    }

    /// The latest accepted time, if bounded.
    pub fn latest(&self) -> Option<i64> {
        self.arrival_ms.map(|a| a.saturating_add(self.skew_ms))
    }

    /// `ms` if it is epoch milliseconds in 2000..2200 and not later than the
    /// arrival time plus the skew; else `invalid_value` naming `field`.
    pub fn check(&self, field: &str, ms: i64) -> Result<i64, Reason> {
        self.check_not_after(field, timestamp(field, ms)?)
    }

    /// `ms` if it is not later than the arrival time plus the skew (no range
    /// check: for times that are record timestamps already).
    pub fn check_not_after(&self, field: &str, ms: i64) -> Result<i64, Reason> {
        match (self.arrival_ms, self.latest()) {
            (Some(arrival), Some(latest)) if ms > latest => Err(Reason::InvalidValue {
                field: field.to_owned(),
                detail: format!(
                    "{ms} ({}) is later than the record's arrival time {arrival} ({}) plus the allowed clock skew of {} ms ([limits] max_clock_skew)",
                    rfc3339(ms),
                    rfc3339(arrival),
                    self.skew_ms
                ),
            }),
            _ => Ok(ms),
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

/// True when objects and arrays nest deeper than `max` in the JSON text
/// `json` (brackets inside strings do not count). One pass, no allocation.
pub fn json_too_deep(json: &[u8], max: usize) -> bool {
    // Depth d needs at least 2d bytes.
    if json.len() <= max.saturating_mul(2).saturating_add(1) {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// What the envelopes around a payload said.
#[derive(Clone, Debug)]
struct Ctx {
    depth: usize,
    envelopes: Vec<&'static str>,
    /// Receive time for inbound messages (envelope time or record timestamp).
    received_at: Option<i64>,
    /// Byte range, in the record, of the top-level value this payload is in.
    top: Option<Range<usize>>,
}

impl Ctx {
    fn top(received_at: Option<i64>) -> Ctx {
        Ctx {
            depth: 0,
            envelopes: Vec::new(),
            received_at,
            top: None,
        }
    }

    fn inside(&self, envelope: &'static str, received_at: Option<i64>) -> Ctx {
        let mut envelopes = self.envelopes.clone();
        envelopes.push(envelope);
        Ctx {
            depth: self.depth + 1,
            envelopes,
            received_at: received_at.or(self.received_at),
            top: self.top.clone(),
        }
    }
}

struct Decoder<'a, 'o> {
    record: &'a [u8],
    src: &'o RecordSource,
    sub: u32,
    out: &'o mut Vec<Decoded<'a>>,
    limits: &'o Limits,
    bound: TimeBound,
}

impl<'a, 'o> Decoder<'a, 'o> {
    /// A decoder of record `bytes` from `src`, appending to `out`.
    fn new(
        bytes: &'a [u8],
        src: &'o RecordSource,
        limits: &'o Limits,
        arrival_ms: Option<i64>,
        out: &'o mut Vec<Decoded<'a>>,
    ) -> Self {
        Decoder {
            record: bytes,
            src,
            sub: 0,
            out,
            limits,
            bound: TimeBound::new(limits, arrival_ms),
        }
    }
}

/// Keys that pick the payload kind or envelope: presence only (even `null`
/// counts, so `"eventType": null` is a delivery event with a wrong type).
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "eventType", default)]
    event_type: Present,
    #[serde(rename = "originationNumber", default)]
    origination_number: Present,
    #[serde(rename = "messageBody", default)]
    message_body: Present,
    #[serde(rename = "inboundMessageId", default)]
    inbound_message_id: Present,
    #[serde(rename = "Type", default)]
    sns_type: Present,
    #[serde(rename = "Message", default)]
    sns_message: Present,
    #[serde(rename = "detail", default)]
    detail: Present,
    #[serde(rename = "records", default)]
    records: Present,
}

/// A key that is present, whatever its value (even null).
#[derive(Default, Clone, Copy)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

impl Probe {
    /// The probe of a scanned object (the same flags serde would set).
    fn of(s: &scan::Scanned) -> Probe {
        Probe {
            event_type: Present(s.has(Key::EventType)),
            origination_number: Present(s.has(Key::OriginationNumber)),
            message_body: Present(s.has(Key::MessageBody)),
            inbound_message_id: Present(s.has(Key::InboundMessageId)),
            sns_type: Present(s.has(Key::SnsType)),
            sns_message: Present(s.has(Key::SnsMessage)),
            detail: Present(s.has(Key::Detail)),
            records: Present(s.has(Key::Records)),
        }
    }
}

/// What is known of a value before [`Decoder::decode_value`] looks at it.
enum Pre<'s> {
    /// Nothing: check and probe it.
    Nothing,
    /// Its probe, from the general split.
    Probe(Probe),
    /// Its scan (see [`scan`]).
    Scanned(&'s scan::Scanned),
}

/// A JSON value deserialized as its raw text (`null` is `None`).
fn raw_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de str>, D::Error> {
    Option::<&'de RawValue>::deserialize(d).map(|o| o.map(RawValue::get))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProtectConfiguration {
    #[serde(default)]
    protect_configuration_id: Option<String>,
    #[serde(default)]
    protect_status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent<'a> {
    event_type: String,
    event_timestamp: i64,
    message_id: String,
    #[serde(default)]
    message_request_timestamp: Option<i64>,
    #[serde(default)]
    event_version: Option<String>,
    #[serde(default)]
    is_final: Option<bool>,
    #[serde(default)]
    origination_phone_number: Option<String>,
    #[serde(default)]
    destination_phone_number: Option<String>,
    #[serde(default)]
    iso_country_code: Option<String>,
    #[serde(default)]
    is_international_send: Option<bool>,
    #[serde(default)]
    mcc: Option<String>,
    #[serde(default)]
    mnc: Option<String>,
    #[serde(default)]
    carrier_name: Option<String>,
    #[serde(default)]
    message_encoding: Option<String>,
    #[serde(default)]
    message_type: Option<String>,
    #[serde(default)]
    message_status: Option<String>,
    #[serde(default)]
    message_status_description: Option<String>,
    #[serde(default)]
    context: Option<BTreeMap<String, String>>,
    #[serde(default)]
    total_message_parts: Option<u32>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    total_message_price: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    total_carrier_fee: Option<&'a str>,
    #[serde(default)]
    call_duration_in_seconds: Option<u32>,
    #[serde(default)]
    total_duration_in_minutes: Option<u32>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    protect_configuration: Option<ProtectConfiguration>,
    // Keys that enrichment writes (see crate::enrich::EVENT_KEYS).
    #[serde(default)]
    record_id: Present,
    #[serde(default)]
    channel: Present,
    #[serde(default)]
    status_class: Present,
    #[serde(default)]
    cost_usd: Present,
    #[serde(default)]
    spend_month: Present,
    #[serde(default)]
    month_to_date_spend_usd: Present,
    #[serde(default)]
    latency_ms: Present,
    #[serde(default)]
    destination_opted_out: Present,
    #[serde(default)]
    duplicate: Present,
    #[serde(default)]
    late_receipt: Present,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInbound {
    origination_number: String,
    destination_number: String,
    message_body: String,
    #[serde(default)]
    message_keyword: Option<String>,
    #[serde(default)]
    inbound_message_id: Option<String>,
    #[serde(default)]
    previous_published_message_id: Option<String>,
    // Keys that enrichment writes (see crate::enrich::INBOUND_KEYS).
    #[serde(default)]
    record_id: Present,
    #[serde(default)]
    keyword: Present,
    #[serde(default)]
    action: Present,
    #[serde(default)]
    opt_out_list: Present,
    #[serde(default)]
    opted_out: Present,
    #[serde(default)]
    state_unchanged: Present,
}

fn serde_reason(err: serde_path_to_error::Error<serde_json::Error>) -> Reason {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let full = inner.to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    let in_path = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let backticked = |prefix: &str| {
        msg.strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    if inner.is_syntax() || inner.is_eof() {
        return Reason::InvalidJson {
            detail: full.clone(),
        };
    }
    if let Some(f) = backticked("missing field `") {
        return Reason::MissingField { field: in_path(&f) };
    }
    if let Some(f) = backticked("duplicate field `") {
        return Reason::DuplicateField { field: in_path(&f) };
    }
    if msg.starts_with("invalid type") {
        return Reason::WrongType {
            field: path,
            detail: msg.to_owned(),
        };
    }
    Reason::InvalidValue {
        field: path,
        detail: msg.to_owned(),
    }
}

/// Deserializes with plain serde_json (fast path); only when that fails is the
/// input parsed again with path tracking, to name the field in the reason.
fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Reason> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(e) => Err(serde_reason(e)),
                // Both parsers see the same bytes; this cannot disagree, but
                // if it did the value is still valid.
                Ok(v) => Ok(v),
            }
        }
    }
}

fn json_kind(first: u8) -> &'static str {
    match first {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

impl<'a> Decoder<'a, '_> {
    fn provenance(&mut self) -> Provenance {
        let p = Provenance {
            source: self.src.source.clone(),
            partition: self.src.partition,
            offset: self.src.offset,
            sub: self.sub,
        };
        self.sub = self.sub.saturating_add(1);
        p
    }

    /// Records a dead letter; `top` is the byte range in the record of the
    /// original bytes, `inner` the unwrapped payload when inside an envelope.
    fn dead(
        &mut self,
        reason: Reason,
        top: Range<usize>,
        inner: Option<&[u8]>,
        envelopes: &[&'static str],
    ) {
        let provenance = self.provenance();
        let payload = self.record.get(top).unwrap_or_default().to_vec();
        self.out.push(Decoded::Dead(Box::new(DeadLetter {
            reason,
            payload,
            inner_payload: inner.map(<[u8]>::to_vec),
            envelopes: envelopes.to_vec(),
            provenance,
        })));
    }

    /// `buf` is a slice of the record starting at `base`, or an unwrapped
    /// payload (base None).
    fn split_and_decode(&mut self, buf: &[u8], base: Option<usize>, ctx: &Ctx) {
        let mut pos = 0;
        loop {
            while pos < buf.len() && is_ws(buf[pos]) {
                pos += 1;
            }
            if pos >= buf.len() {
                break;
            }
            // Fast path: one scan finds the end, checks the syntax, the
            // depth limit and UTF-8, and locates the fields (see `scan`). An
            // object it accepts is one the general path below accepts with
            // the same end, depth and probe.
            if buf[pos] == b'{' {
                if let Some(scanned) = scan::scan_object(&buf[pos..], self.limits.max_json_depth) {
                    let r = pos..pos + scanned.end;
                    let mut c = ctx.clone();
                    if let (Some(b), None) = (base, &ctx.top) {
                        c.top = Some(b + r.start..b + r.end);
                    }
                    pos = r.end;
                    self.decode_value(
                        &buf[r.clone()],
                        base.map(|b| b + r.start),
                        &c,
                        Pre::Scanned(&scanned),
                    );
                    continue;
                }
            }
            let Some((seg, probe)) = next_segment(buf, pos, true) else {
                break;
            };
            match seg {
                Segment::Value(r) => {
                    pos = r.end;
                    if json_too_deep(&buf[r.clone()], self.limits.max_json_depth) {
                        let reason = Reason::JsonTooDeep {
                            max: self.limits.max_json_depth,
                        };
                        let (top, inner) = match (&ctx.top, base) {
                            (Some(t), _) => (t.clone(), Some(&buf[r])),
                            (None, Some(b)) => (b + r.start..b + r.end, None),
                            (None, None) => (0..self.record.len(), Some(&buf[r])),
                        };
                        self.dead(reason, top, inner, &ctx.envelopes);
                        continue;
                    }
                    let mut c = ctx.clone();
                    if let (Some(b), None) = (base, &ctx.top) {
                        c.top = Some(b + r.start..b + r.end);
                    }
                    let pre = match probe {
                        Some(p) => Pre::Probe(p),
                        None => Pre::Nothing,
                    };
                    self.decode_value(&buf[r.clone()], base.map(|b| b + r.start), &c, pre);
                }
                Segment::Invalid(r, reason) => {
                    pos = r.end;
                    let (top, inner) = match (&ctx.top, base) {
                        (Some(t), _) => (t.clone(), Some(&buf[r])),
                        (None, Some(b)) => (b + r.start..b + r.end, None),
                        (None, None) => (0..self.record.len(), Some(&buf[r])),
                    };
                    self.dead(reason, top, inner, &ctx.envelopes);
                }
            }
        }
    }

    /// An envelope's receive time, checked against the range and the time
    /// bound (an unparseable SNS / EventBridge time is ignored, as if absent:
    /// the outer or record time is used instead, which is bounded too).
    fn envelope_time(&self, field: &str, t: Option<i64>) -> Result<Option<i64>, Reason> {
        t.map(|t| self.bound.check(field, t)).transpose()
    }

    fn fail(&mut self, reason: Reason, value: &[u8], ctx: &Ctx) {
        let top = ctx.top.clone().unwrap_or(0..self.record.len());
        let inner = if ctx.depth > 0 { Some(value) } else { None };
        self.dead(reason, top, inner, &ctx.envelopes);
    }

    /// `value` is one syntactically valid JSON value.
    fn decode_value(&mut self, value: &[u8], base: Option<usize>, ctx: &Ctx, pre: Pre<'_>) {
        if ctx.depth > MAX_NESTING {
            return self.fail(Reason::NestingTooDeep { max: MAX_NESTING }, value, ctx);
        }
        // A scanned object is valid UTF-8 and starts with '{' (see `scan`).
        let scanned = match pre {
            Pre::Scanned(s) => Some(s),
            _ => None,
        };
        if scanned.is_none() {
            if let Err(e) = std::str::from_utf8(value) {
                let at = e.valid_up_to();
                return self.fail(Reason::InvalidUtf8 { at }, value, ctx);
            }
            let first = value.first().copied().unwrap_or(b' ');
            if first != b'{' {
                return self.fail(
                    Reason::NotAnObject {
                        found: json_kind(first),
                    },
                    value,
                    ctx,
                );
            }
        }
        let probe = match pre {
            Pre::Probe(p) => p,
            Pre::Scanned(s) => Probe::of(s),
            Pre::Nothing => match parse(value) {
                Ok(p) => p,
                Err(reason) => return self.fail(reason, value, ctx),
            },
        };
        let raw = |this: &Self| match base {
            Some(b) => Cow::Borrowed(&this.record[b..b + value.len()]),
            None => Cow::Owned(value.to_vec()),
        };
        if probe.event_type.0 {
            let decoded = match scanned.and_then(|s| raw_event_scanned(value, s)) {
                Some(r) => finish_delivery(r, self.limits, self.bound),
                None => decode_delivery_with(value, self.limits, self.bound),
            };
            match decoded {
                Ok((ev, collides)) => {
                    let provenance = self.provenance();
                    let raw = raw(self);
                    self.out.push(Decoded::Accepted(Box::new(Accepted {
                        payload: Payload::Delivery(ev),
                        raw,
                        has_enrichment_keys: collides,
                        envelopes: ctx.envelopes.clone(),
                        provenance,
                    })));
                }
                Err(reason) => self.fail(reason, value, ctx),
            }
        } else if probe.origination_number.0 || probe.message_body.0 || probe.inbound_message_id.0 {
            let decoded = match scanned.and_then(|s| raw_inbound_scanned(value, s)) {
                Some(r) => finish_inbound(r, ctx.received_at, self.limits),
                None => decode_inbound_with(value, ctx.received_at, self.limits),
            };
            match decoded {
                Ok((msg, collides)) => {
                    let provenance = self.provenance();
                    let raw = raw(self);
                    self.out.push(Decoded::Accepted(Box::new(Accepted {
                        payload: Payload::Inbound(msg),
                        raw,
                        has_enrichment_keys: collides,
                        envelopes: ctx.envelopes.clone(),
                        provenance,
                    })));
                }
                Err(reason) => self.fail(reason, value, ctx),
            }
        } else if probe.sns_type.0 && probe.sns_message.0 {
            self.decode_sns(value, ctx, scanned);
        } else if probe.detail.0 {
            self.decode_eventbridge(value, base, ctx, scanned);
        } else if probe.records.0 {
            self.decode_firehose(value, ctx);
        } else {
            self.fail(Reason::UnknownPayload, value, ctx);
        }
    }
}

#[cfg(test)]
mod tests;
