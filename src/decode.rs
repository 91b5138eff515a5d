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

mod scan;
use scan::{Key, Kind, Val};

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

/// A piece of a byte stream of concatenated JSON values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A syntactically valid JSON value at this byte range.
    Value(Range<usize>),
    /// Bytes that are not JSON, up to the end of their line.
    Invalid(Range<usize>, Reason),
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Splits bytes into top-level JSON values (concatenated with or without
/// whitespace) and invalid spans. After an invalid span the scan resumes at
/// the next line, so one bad line of a JSON-lines file costs only that line.
pub fn split_values(bytes: &[u8]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(seg) = split_step(bytes, &mut pos) {
        out.push(seg);
    }
    out
}

/// One step of [`split_values`]: the segment after `*pos` (whitespace
/// skipped), moving `*pos` past it; `None` at the end.
pub(crate) fn split_step(bytes: &[u8], pos: &mut usize) -> Option<Segment> {
    while *pos < bytes.len() && is_ws(bytes[*pos]) {
        *pos += 1;
    }
    if *pos >= bytes.len() {
        return None;
    }
    // Fast path: a value the scanner accepts is one serde accepts, with
    // the same end (see `scan`).
    if let Some(end) = scan::scan_value_end(&bytes[*pos..], SPLIT_SCAN_DEPTH) {
        let seg = Segment::Value(*pos..*pos + end);
        *pos += end;
        return Some(seg);
    }
    let (seg, _) = next_segment(bytes, *pos, false)?;
    *pos = match &seg {
        Segment::Value(r) | Segment::Invalid(r, _) => r.end,
    };
    Some(seg)
}

/// A top-level value of a file, found by one scan that the decoding of the
/// record then reuses ([`decode_scanned_record`]): the object at `bytes[pos..]`
/// (after whitespace) when the scanner accepts it with `limits`; else the
/// [`split_step`] segment. Moves `*pos` past it; `None` at the end.
pub(crate) fn next_record(
    bytes: &[u8],
    pos: &mut usize,
    limits: &Limits,
) -> Option<(Range<usize>, Option<ScannedRecord>)> {
    while *pos < bytes.len() && is_ws(bytes[*pos]) {
        *pos += 1;
    }
    if *pos >= bytes.len() {
        return None;
    }
    if bytes[*pos] == b'{' {
        if let Some(s) = scan::scan_object(&bytes[*pos..], limits.max_json_depth) {
            let r = *pos..*pos + s.end;
            *pos = r.end;
            return Some((r, Some(ScannedRecord(s))));
        }
    }
    match split_step(bytes, pos)? {
        Segment::Value(r) | Segment::Invalid(r, _) => Some((r, None)),
    }
}

/// The scan of a record that is one object (see [`next_record`]).
pub(crate) struct ScannedRecord(scan::Scanned);

/// [`decode_record_with`] of a record that [`next_record`] scanned: the
/// same result, without scanning it again.
pub(crate) fn decode_scanned_record<'a>(
    bytes: &'a [u8],
    scanned: &ScannedRecord,
    src: &RecordSource,
    limits: &Limits,
    arrival_ms: Option<i64>,
    out: &mut Vec<Decoded<'a>>,
) {
    if bytes.len() > limits.max_record_bytes || scanned.0.end != bytes.len() {
        return decode_record_with(bytes, src, limits, arrival_ms, out);
    }
    let mut d = Decoder {
        record: bytes,
        src,
        sub: 0,
        out,
        limits,
        bound: TimeBound::new(limits, arrival_ms),
    };
    // What `split_and_decode` does for a record that is one scanned object.
    let mut ctx = Ctx::top(src.timestamp_ms);
    ctx.top = Some(0..bytes.len());
    d.decode_value(bytes, Some(0), &ctx, Pre::Scanned(&scanned.0));
}

/// Nesting depth up to which [`split_values`] takes its fast path (deeper
/// values take serde's, which has no limit when it only skips a value).
const SPLIT_SCAN_DEPTH: usize = 128;

/// The segment that starts at `pos` (not whitespace), and for an object the
/// probe of its kind fields when `probe` is set: the scan that finds where
/// a value ends reads those fields on the way. `None` at the end of input.
fn next_segment(bytes: &[u8], pos: usize, probe: bool) -> Option<(Segment, Option<Probe>)> {
    if probe && bytes[pos] == b'{' {
        let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Probe>();
        if let Some(Ok(p)) = stream.next() {
            let end = pos + stream.byte_offset();
            return Some((Segment::Value(pos..end), Some(p)));
        }
    }
    let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<IgnoredAny>();
    match stream.next() {
        Some(Ok(_)) => {
            let end = pos + stream.byte_offset();
            Some((Segment::Value(pos..end), None))
        }
        Some(Err(e)) => {
            let end = bytes[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| pos + i);
            let span = &bytes[pos..end];
            let reason = match std::str::from_utf8(span) {
                Err(u) => Reason::InvalidUtf8 {
                    at: u.valid_up_to(),
                },
                Ok(_) => Reason::InvalidJson {
                    detail: e.to_string(),
                },
            };
            Some((Segment::Invalid(pos..end, reason), None))
        }
        None => None,
    }
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
    let mut d = Decoder {
        record: bytes,
        src,
        sub: 0,
        out,
        limits,
        bound: TimeBound::new(limits, arrival_ms),
    };
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

// Typed fields from a scanned object, as serde would deserialize them; the
// outer `None` means "not the common case": the caller decodes with serde,
// which gives the result or the exact reason.

/// A `String` field.
fn req_string(b: &[u8], v: Val) -> Option<String> {
    match v.kind {
        // The scan checked the object is UTF-8, so the text between two
        // ASCII quotes is too.
        Kind::Str => std::str::from_utf8(v.inner(b)).ok().map(str::to_owned),
        Kind::EscStr => serde_json::from_slice(v.text(b)).ok(),
        _ => None,
    }
}

/// An `Option<String>` field (`#[serde(default)]`).
fn opt_string(b: &[u8], v: Val) -> Option<Option<String>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        _ => req_string(b, v).map(Some),
    }
}

/// An `i64` field.
fn req_i64(b: &[u8], v: Val) -> Option<i64> {
    match v.kind {
        Kind::Int => scan::int_i64(v.text(b)),
        _ => None,
    }
}

/// An `Option<i64>` field.
fn opt_i64(b: &[u8], v: Val) -> Option<Option<i64>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        _ => req_i64(b, v).map(Some),
    }
}

/// An `Option<u32>` field.
fn opt_u32(b: &[u8], v: Val) -> Option<Option<u32>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        Kind::Int => scan::int_u32(v.text(b)).map(Some),
        _ => None,
    }
}

/// An `Option<bool>` field.
fn opt_bool(v: Val) -> Option<Option<bool>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        Kind::True => Some(Some(true)),
        Kind::False => Some(Some(false)),
        _ => None,
    }
}

/// An `Option<&RawValue>` field, as its text.
fn opt_raw(b: &[u8], v: Val) -> Option<Option<&str>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        _ => std::str::from_utf8(v.text(b)).ok().map(Some),
    }
}

/// A key of a nested object, unescaped.
fn key_text(k: &[u8], escaped: bool) -> Option<Cow<'_, str>> {
    if escaped {
        let mut quoted = Vec::with_capacity(k.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(k);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted)
            .ok()
            .map(Cow::Owned)
    } else {
        std::str::from_utf8(k).ok().map(Cow::Borrowed)
    }
}

/// The `context` field: a map of strings (a repeated key keeps its last
/// value, as serde's map does).
fn opt_context(b: &[u8], v: Val) -> Option<Option<BTreeMap<String, String>>> {
    match v.kind {
        Kind::Absent | Kind::Null => return Some(None),
        Kind::Object => {}
        _ => return None,
    }
    let mut map = BTreeMap::new();
    scan::for_each_member(b, v, |k, escaped, val| {
        let value = req_string(b, val)?;
        map.insert(key_text(k, escaped)?.into_owned(), value);
        Some(())
    })?;
    Some(Some(map))
}

/// The `protectConfiguration` field.
fn opt_protect(b: &[u8], v: Val) -> Option<Option<ProtectConfiguration>> {
    match v.kind {
        Kind::Absent | Kind::Null => return Some(None),
        Kind::Object => {}
        _ => return None,
    }
    let mut id: Option<Val> = None;
    let mut status: Option<Val> = None;
    scan::for_each_member(b, v, |k, escaped, val| {
        if escaped {
            return None;
        }
        let slot = match k {
            b"protectConfigurationId" => &mut id,
            b"protectStatus" => &mut status,
            _ => return Some(()),
        };
        match slot.replace(val) {
            Some(_) => None,
            None => Some(()),
        }
    })?;
    Some(Some(ProtectConfiguration {
        protect_configuration_id: opt_string(b, id.unwrap_or_default())?,
        protect_status: opt_string(b, status.unwrap_or_default())?,
    }))
}

/// The typed fields of a scanned delivery event, when they are the common
/// case (see [`req_string`]).
fn raw_event_scanned<'v>(b: &'v [u8], s: &scan::Scanned) -> Option<RawEvent<'v>> {
    let p = |k: Key| Present(s.has(k));
    Some(RawEvent {
        event_type: req_string(b, s.get(Key::EventType))?,
        event_timestamp: req_i64(b, s.get(Key::EventTimestamp))?,
        message_id: req_string(b, s.get(Key::MessageId))?,
        message_request_timestamp: opt_i64(b, s.get(Key::MessageRequestTimestamp))?,
        event_version: opt_string(b, s.get(Key::EventVersion))?,
        is_final: opt_bool(s.get(Key::IsFinal))?,
        origination_phone_number: opt_string(b, s.get(Key::OriginationPhoneNumber))?,
        destination_phone_number: opt_string(b, s.get(Key::DestinationPhoneNumber))?,
        iso_country_code: opt_string(b, s.get(Key::IsoCountryCode))?,
        is_international_send: opt_bool(s.get(Key::IsInternationalSend))?,
        mcc: opt_string(b, s.get(Key::Mcc))?,
        mnc: opt_string(b, s.get(Key::Mnc))?,
        carrier_name: opt_string(b, s.get(Key::CarrierName))?,
        message_encoding: opt_string(b, s.get(Key::MessageEncoding))?,
        message_type: opt_string(b, s.get(Key::MessageType))?,
        message_status: opt_string(b, s.get(Key::MessageStatus))?,
        message_status_description: opt_string(b, s.get(Key::MessageStatusDescription))?,
        context: opt_context(b, s.get(Key::Context))?,
        total_message_parts: opt_u32(b, s.get(Key::TotalMessageParts))?,
        total_message_price: opt_raw(b, s.get(Key::TotalMessagePrice))?,
        total_carrier_fee: opt_raw(b, s.get(Key::TotalCarrierFee))?,
        call_duration_in_seconds: opt_u32(b, s.get(Key::CallDurationInSeconds))?,
        total_duration_in_minutes: opt_u32(b, s.get(Key::TotalDurationInMinutes))?,
        content_type: opt_string(b, s.get(Key::ContentType))?,
        protect_configuration: opt_protect(b, s.get(Key::ProtectConfiguration))?,
        record_id: p(Key::RecordId),
        channel: p(Key::Channel),
        status_class: p(Key::StatusClass),
        cost_usd: p(Key::CostUsd),
        spend_month: p(Key::SpendMonth),
        month_to_date_spend_usd: p(Key::MonthToDateSpendUsd),
        latency_ms: p(Key::LatencyMs),
        destination_opted_out: p(Key::DestinationOptedOut),
        duplicate: p(Key::Duplicate),
        late_receipt: p(Key::LateReceipt),
    })
}

/// The typed fields of a scanned inbound message, when they are the common case.
fn raw_inbound_scanned(b: &[u8], s: &scan::Scanned) -> Option<RawInbound> {
    let p = |k: Key| Present(s.has(k));
    Some(RawInbound {
        origination_number: req_string(b, s.get(Key::OriginationNumber))?,
        destination_number: req_string(b, s.get(Key::DestinationNumber))?,
        message_body: req_string(b, s.get(Key::MessageBody))?,
        message_keyword: opt_string(b, s.get(Key::MessageKeyword))?,
        inbound_message_id: opt_string(b, s.get(Key::InboundMessageId))?,
        previous_published_message_id: opt_string(b, s.get(Key::PreviousPublishedMessageId))?,
        record_id: p(Key::RecordId),
        keyword: p(Key::Keyword),
        action: p(Key::Action),
        opt_out_list: p(Key::OptOutList),
        opted_out: p(Key::OptedOut),
        state_unchanged: p(Key::StateUnchanged),
    })
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

#[derive(Deserialize)]
struct SnsEnvelope {
    #[serde(rename = "Type")]
    sns_type: String,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Timestamp", default)]
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct EventBridgeEnvelope<'a> {
    #[serde(borrow)]
    detail: &'a RawValue,
    #[serde(default)]
    time: Option<String>,
}

#[derive(Deserialize)]
struct FirehoseBatch<'a> {
    #[serde(borrow)]
    records: Vec<FirehoseRecord<'a>>,
    #[serde(default)]
    timestamp: Option<i64>,
}

#[derive(Deserialize)]
struct FirehoseRecord<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
}

/// Maps a serde error (with the path where it happened) to a reason.
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

fn money(field: &str, raw: Option<&str>) -> Result<Option<Usd>, Reason> {
    let Some(text) = raw else { return Ok(None) };
    match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => {}
        Some(&c) => {
            return Err(Reason::WrongType {
                field: field.to_owned(),
                detail: format!("expected a number (US dollars), found {}", json_kind(c)),
            })
        }
        None => {
            return Err(Reason::WrongType {
                field: field.to_owned(),
                detail: "empty".into(),
            })
        }
    }
    let usd = Usd::parse_exact(text).map_err(|e| Reason::InvalidMoney {
        field: field.to_owned(),
        detail: match e {
            MoneyError::TooPrecise(_) | MoneyError::OutOfRange(_) | MoneyError::Syntax(_) => {
                e.to_string()
            }
        },
    })?;
    if usd.is_negative() {
        return Err(Reason::InvalidMoney {
            field: field.to_owned(),
            detail: format!("{text} is negative"),
        });
    }
    Ok(Some(usd))
}

fn timestamp(field: &str, ms: i64) -> Result<i64, Reason> {
    if (MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(Reason::InvalidValue {
            field: field.to_owned(),
            detail: format!("{ms} is not epoch milliseconds between 2000-01-01 and 2200-01-01"),
        })
    }
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `field_too_long` unless `value` has at most `max` bytes.
fn check_len(field: &str, value: &str, max: usize, limit: &str) -> Result<(), Reason> {
    if value.len() <= max {
        return Ok(());
    }
    Err(Reason::FieldTooLong {
        field: field.to_owned(),
        detail: format!(
            "{} bytes, more than the limit of {max} bytes ([limits] {limit})",
            value.len()
        ),
    })
}

fn check_opt_len(field: &str, value: Option<&str>, max: usize, limit: &str) -> Result<(), Reason> {
    value.map_or(Ok(()), |v| check_len(field, v, max, limit))
}

/// Bounds the `context` map: entry count, key and value lengths.
fn check_context(
    context: Option<&BTreeMap<String, String>>,
    limits: &Limits,
) -> Result<(), Reason> {
    let Some(context) = context else {
        return Ok(());
    };
    if context.len() > limits.max_context_entries {
        return Err(Reason::TooManyEntries {
            field: "context".into(),
            detail: format!(
                "{} entries, more than the limit of {} ([limits] max_context_entries)",
                context.len(),
                limits.max_context_entries
            ),
        });
    }
    let max = limits.max_context_value_bytes;
    for (k, v) in context {
        if k.len() > max {
            return Err(Reason::FieldTooLong {
                field: "context".into(),
                detail: format!(
                    "a key of {} bytes, more than the limit of {max} bytes ([limits] max_context_value_bytes)",
                    k.len()
                ),
            });
        }
        check_len(&format!("context.{k}"), v, max, "max_context_value_bytes")?;
    }
    Ok(())
}

/// `invalid_money` when a price, a fee or their sum exceeds the channel's
/// per-message ceiling.
pub(crate) fn check_cost(
    channel: crate::model::Channel,
    price: Option<Usd>,
    fee: Option<Usd>,
    limits: &Limits,
) -> Result<(), Reason> {
    let ceiling = limits.max_message_cost(channel);
    let over = |field: &str, what: String| {
        Reason::InvalidMoney {
        field: field.to_owned(),
        detail: format!(
            "{what} exceeds the {channel} per-message ceiling of {ceiling} USD ([spend] max_message_cost_usd)"
        ),
    }
    };
    for (field, v) in [("totalMessagePrice", price), ("totalCarrierFee", fee)] {
        if let Some(v) = v {
            if v > ceiling {
                return Err(over(field, format!("{v} USD")));
            }
        }
    }
    if let (Some(p), Some(f)) = (price, fee) {
        let sum = p.checked_add(f);
        if sum.is_none_or(|sum| sum > ceiling) {
            let sum = sum.map_or_else(|| "more than 10^28".to_owned(), |s| s.to_string());
            return Err(over(
                "totalMessagePrice",
                format!("totalMessagePrice + totalCarrierFee = {sum} USD"),
            ));
        }
    }
    Ok(())
}

/// Decodes one delivery event object with the default [`Limits`] and no
/// arrival time.
pub fn decode_delivery(bytes: &[u8]) -> Result<(DeliveryEvent, bool), Reason> {
    decode_delivery_with(bytes, &Limits::DEFAULT, TimeBound::NONE)
}

/// Decodes one delivery event object: types, sizes, the cost ceiling, and
/// every timestamp against `bound`.
pub fn decode_delivery_with(
    bytes: &[u8],
    limits: &Limits,
    bound: TimeBound,
) -> Result<(DeliveryEvent, bool), Reason> {
    finish_delivery(parse(bytes)?, limits, bound)
}

/// The checks of [`decode_delivery_with`] after the typed decoding.
fn finish_delivery(
    r: RawEvent<'_>,
    limits: &Limits,
    bound: TimeBound,
) -> Result<(DeliveryEvent, bool), Reason> {
    let id_max = limits.max_id_bytes;
    check_len("eventType", &r.event_type, id_max, "max_id_bytes")?;
    check_len("messageId", &r.message_id, id_max, "max_id_bytes")?;
    let (channel, status_class) = classify(&r.event_type).map_err(|e| match e {
        EventTypeError::UnknownPrefix(t) => Reason::UnknownEventType { event_type: t },
        EventTypeError::SubscriptionFilter(t) => {
            Reason::SubscriptionFilterEventType { event_type: t }
        }
    })?;
    if r.message_id.trim().is_empty() {
        return Err(Reason::InvalidValue {
            field: "messageId".into(),
            detail: "empty".into(),
        });
    }
    check_opt_len(
        "originationPhoneNumber",
        r.origination_phone_number.as_deref(),
        id_max,
        "max_id_bytes",
    )?;
    check_opt_len(
        "destinationPhoneNumber",
        r.destination_phone_number.as_deref(),
        id_max,
        "max_id_bytes",
    )?;
    check_context(r.context.as_ref(), limits)?;
    let event_timestamp = bound.check("eventTimestamp", r.event_timestamp)?;
    let message_request_timestamp = r
        .message_request_timestamp
        .map(|t| bound.check("messageRequestTimestamp", t))
        .transpose()?;
    let total_message_price = money("totalMessagePrice", r.total_message_price)?;
    let total_carrier_fee = money("totalCarrierFee", r.total_carrier_fee)?;
    check_cost(channel, total_message_price, total_carrier_fee, limits)?;
    let collides = [
        r.record_id,
        r.channel,
        r.status_class,
        r.cost_usd,
        r.spend_month,
        r.month_to_date_spend_usd,
        r.latency_ms,
        r.destination_opted_out,
        r.duplicate,
        r.late_receipt,
    ]
    .iter()
    .any(|p| p.0);
    let (protect_configuration_id, protect_status) = match r.protect_configuration {
        Some(p) => (p.protect_configuration_id, p.protect_status),
        None => (None, None),
    };
    Ok((
        DeliveryEvent {
            event_type: r.event_type,
            channel,
            status_class,
            event_timestamp,
            message_id: r.message_id,
            message_request_timestamp,
            event_version: r.event_version,
            is_final: r.is_final,
            origination_phone_number: r.origination_phone_number,
            destination_phone_number: r.destination_phone_number,
            iso_country_code: r.iso_country_code,
            is_international_send: r.is_international_send,
            mcc: r.mcc,
            mnc: r.mnc,
            carrier_name: r.carrier_name,
            message_encoding: r.message_encoding,
            message_type: r.message_type,
            message_status: r.message_status,
            message_status_description: r.message_status_description,
            context: r.context,
            total_message_parts: r.total_message_parts.map(i64::from),
            total_message_price,
            total_carrier_fee,
            call_duration_in_seconds: r.call_duration_in_seconds.map(i64::from),
            total_duration_in_minutes: r.total_duration_in_minutes.map(i64::from),
            content_type: r.content_type,
            protect_configuration_id,
            protect_status,
        },
        collides,
    ))
}

/// Decodes one inbound message object with the default [`Limits`];
/// `received_at` comes from the envelope or the record.
pub fn decode_inbound(
    bytes: &[u8],
    received_at: Option<i64>,
) -> Result<(InboundMessage, bool), Reason> {
    decode_inbound_with(bytes, received_at, &Limits::DEFAULT)
}

/// Decodes one inbound message object: types and sizes. `received_at` comes
/// from the envelope or the record and is already bounded by the caller.
pub fn decode_inbound_with(
    bytes: &[u8],
    received_at: Option<i64>,
    limits: &Limits,
) -> Result<(InboundMessage, bool), Reason> {
    finish_inbound(parse(bytes)?, received_at, limits)
}

/// The checks of [`decode_inbound_with`] after the typed decoding.
fn finish_inbound(
    r: RawInbound,
    received_at: Option<i64>,
    limits: &Limits,
) -> Result<(InboundMessage, bool), Reason> {
    let id_max = limits.max_id_bytes;
    check_len(
        "originationNumber",
        &r.origination_number,
        id_max,
        "max_id_bytes",
    )?;
    check_len(
        "destinationNumber",
        &r.destination_number,
        id_max,
        "max_id_bytes",
    )?;
    check_opt_len(
        "inboundMessageId",
        r.inbound_message_id.as_deref(),
        id_max,
        "max_id_bytes",
    )?;
    check_len(
        "messageBody",
        &r.message_body,
        limits.max_body_bytes,
        "max_body_bytes",
    )?;
    if !is_e164(&r.origination_number) {
        return Err(Reason::InvalidPhoneNumber {
            field: "originationNumber".into(),
            value: r.origination_number,
        });
    }
    if r.destination_number.trim().is_empty() {
        return Err(Reason::InvalidValue {
            field: "destinationNumber".into(),
            detail: "empty".into(),
        });
    }
    let collides = [
        r.record_id,
        r.keyword,
        r.action,
        r.opt_out_list,
        r.opted_out,
        r.state_unchanged,
    ]
    .iter()
    .any(|p| p.0);
    Ok((
        InboundMessage {
            origination_number: r.origination_number,
            destination_number: r.destination_number,
            message_body: r.message_body,
            message_keyword: r.message_keyword,
            inbound_message_id: r.inbound_message_id,
            previous_published_message_id: r.previous_published_message_id,
            received_at,
        },
        collides,
    ))
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

    fn decode_sns(&mut self, value: &[u8], ctx: &Ctx, scanned: Option<&scan::Scanned>) {
        let fast = scanned.and_then(|s| {
            Some(SnsEnvelope {
                sns_type: req_string(value, s.get(Key::SnsType))?,
                message: req_string(value, s.get(Key::SnsMessage))?,
                timestamp: opt_string(value, s.get(Key::SnsTimestamp))?,
            })
        });
        let env: SnsEnvelope = match fast.map_or_else(|| parse(value), Ok) {
            Ok(e) => e,
            Err(r) => return self.fail(envelope_reason("sns", r), value, ctx),
        };
        if env.sns_type != "Notification" {
            return self.fail(
                Reason::InvalidEnvelope {
                    envelope: "sns",
                    detail: format!(
                        "SNS message of Type {:?} carries no payload (expected Notification)",
                        env.sns_type
                    ),
                },
                value,
                ctx,
            );
        }
        let received =
            match self.envelope_time("Timestamp", env.timestamp.as_deref().and_then(rfc3339_ms)) {
                Ok(t) => t,
                Err(r) => return self.fail(r, value, ctx),
            };
        let inner = ctx.inside("sns", received);
        let body = env.message.into_bytes();
        if body.iter().all(|&b| is_ws(b)) {
            return self.fail(Reason::EmptyRecord, &body, &inner);
        }
        self.split_and_decode(&body, None, &inner);
    }

    fn decode_eventbridge(
        &mut self,
        value: &[u8],
        base: Option<usize>,
        ctx: &Ctx,
        scanned: Option<&scan::Scanned>,
    ) {
        let fast = scanned.and_then(|s| {
            let d = s.get(Key::Detail);
            if d.kind == Kind::Absent {
                return None;
            }
            Some((d.text(value), opt_string(value, s.get(Key::Time))?))
        });
        let (detail, time) = match fast {
            Some(f) => f,
            None => match parse::<EventBridgeEnvelope>(value) {
                Ok(e) => (e.detail.get().as_bytes(), e.time),
                Err(r) => return self.fail(envelope_reason("eventbridge", r), value, ctx),
            },
        };
        if detail.first() != Some(&b'{') {
            return self.fail(
                Reason::InvalidEnvelope {
                    envelope: "eventbridge",
                    detail: format!(
                        "detail must be an object, found {}",
                        json_kind(detail.first().copied().unwrap_or(b'n'))
                    ),
                },
                value,
                ctx,
            );
        }
        let received = match self.envelope_time("time", time.as_deref().and_then(rfc3339_ms)) {
            Ok(t) => t,
            Err(r) => return self.fail(r, value, ctx),
        };
        let inner = ctx.inside("eventbridge", received);
        // detail is a sub-slice of value: keep borrowing from the record when we can.
        let offset = detail.as_ptr() as usize - value.as_ptr() as usize;
        // The detail of a scanned envelope is valid and within the depth
        // limit: scanning it again gives its fields (the same verdict as the
        // general path's probe when it accepts it).
        match scan::scan_object(detail, self.limits.max_json_depth) {
            Some(s) if s.end == detail.len() => {
                self.decode_value(detail, base.map(|b| b + offset), &inner, Pre::Scanned(&s))
            }
            _ => self.decode_value(detail, base.map(|b| b + offset), &inner, Pre::Nothing),
        }
    }

    fn decode_firehose(&mut self, value: &[u8], ctx: &Ctx) {
        let batch: FirehoseBatch = match parse(value) {
            Ok(e) => e,
            Err(r) => return self.fail(envelope_reason("firehose", r), value, ctx),
        };
        let received = match self.envelope_time("timestamp", batch.timestamp) {
            Ok(t) => t,
            Err(r) => return self.fail(r, value, ctx),
        };
        let inner = ctx.inside("firehose", received);
        for (i, rec) in batch.records.iter().enumerate() {
            match base64::engine::general_purpose::STANDARD.decode(rec.data.as_bytes()) {
                Ok(bytes) if bytes.iter().all(|&b| is_ws(b)) => {
                    self.fail(Reason::EmptyRecord, &bytes, &inner);
                }
                Ok(bytes) => self.split_and_decode(&bytes, None, &inner),
                Err(e) => self.fail(
                    Reason::InvalidBase64 {
                        field: format!("records[{i}].data"),
                        detail: e.to_string(),
                    },
                    rec.data.as_bytes(),
                    &inner,
                ),
            }
        }
    }
}

/// Envelope structure errors are reported as `invalid_envelope`.
fn envelope_reason(envelope: &'static str, r: Reason) -> Reason {
    match r {
        Reason::InvalidJson { .. } => r,
        other => Reason::InvalidEnvelope {
            envelope,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
