//! Enriched output records: the original payload with what the core learned
//! about it appended.
//!
//! The enriched JSON keeps the original object's text (numbers are not
//! re-formatted, key order is kept) and appends the enrichment keys. It is
//! always one line: an object already on one line is kept byte for byte, one
//! spread over several lines (pretty-printed input) loses the whitespace
//! between its tokens ([`one_line`]), which does not change its value.
//! If the original object already has a key with an enrichment name (listed
//! in [`EVENT_KEYS`] / [`INBOUND_KEYS`]), that original key is dropped so the
//! output has each key once; the archive keeps every typed input field anyway.

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::dead_letter::DeadLetter;
use crate::model::{Channel, DeliveryEvent, InboundMessage, Provenance, StatusClass};
use crate::money::Usd;
use crate::optout::{InboundAction, InboundOutcome, OptOutChange, Reply, StateUnchanged};
use crate::spend::{AlarmRecord, LedgerOutcome, MonthKey};

/// Keys appended to delivery events.
pub const EVENT_KEYS: [&str; 10] = [
    "recordId",
    "channel",
    "statusClass",
    "costUsd",
    "spendMonth",
    "monthToDateSpendUsd",
    "latencyMs",
    "destinationOptedOut",
    "duplicate",
    "lateReceipt",
];

/// Keys appended to inbound messages (`stateUnchanged` only when it applies,
/// see [`INBOUND_OPTIONAL_KEYS`]).
pub const INBOUND_KEYS: [&str; 6] = [
    "recordId",
    "keyword",
    "action",
    "optOutList",
    "optedOut",
    "stateUnchanged",
];

/// The keys of [`INBOUND_KEYS`] that are not always written.
pub const INBOUND_OPTIONAL_KEYS: [&str; 1] = ["stateUnchanged"];

/// What the core adds to a delivery event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnrichment {
    /// Deterministic id from the source position (see [`Provenance::record_id`]).
    pub record_id: String,
    /// Channel from the eventType prefix.
    pub channel: Channel,
    /// Status class; null for a newer status this version does not know.
    pub status_class: Option<StatusClass>,
    /// The message's counted cost after this event (exact decimal string).
    pub cost_usd: Usd,
    /// UTC month the message's cost counts in, `YYYY-MM`.
    pub spend_month: MonthKey,
    /// The channel's spend in `spend_month` after this event.
    pub month_to_date_spend_usd: Usd,
    /// eventTimestamp - messageRequestTimestamp, when both exist.
    pub latency_ms: Option<i64>,
    /// Whether the destination is opted out of the origination's list, as of
    /// processing; null when the event has no destination.
    pub destination_opted_out: Option<bool>,
    /// An earlier event had the same (messageId, eventType, eventTimestamp).
    pub duplicate: bool,
    /// The event arrived after its month closed; it was not counted.
    pub late_receipt: bool,
}

/// What the core adds to an inbound message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundEnrichment {
    /// Deterministic id from the source position.
    pub record_id: String,
    /// The matched keyword (uppercase), or null.
    pub keyword: Option<String>,
    /// What the message did.
    pub action: InboundAction,
    /// The opt-out list of the number that received it.
    pub opt_out_list: String,
    /// The sender's state in that list after processing.
    pub opted_out: bool,
    /// Only for an opt-out or opt-in that left the state as it was: why
    /// (`already_opted_out`, `newer_opt_in`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_unchanged: Option<StateUnchanged>,
}

impl EventEnrichment {
    /// The enrichment of `ev` after the ledger applied it. `destination_opted_out`
    /// is looked up in the list of the origination (`None` without a
    /// destination); `month_to_date` is the channel's spend in the message's
    /// month after this event.
    pub fn new(
        ev: &DeliveryEvent,
        outcome: &LedgerOutcome,
        record_id: String,
        destination_opted_out: Option<bool>,
        month_to_date: Usd,
    ) -> EventEnrichment {
        EventEnrichment {
            record_id,
            channel: ev.channel,
            status_class: ev.status_class,
            cost_usd: outcome.cost,
            spend_month: outcome.month,
            month_to_date_spend_usd: month_to_date,
            latency_ms: ev.message_request_timestamp.map(|r| ev.event_timestamp - r),
            destination_opted_out,
            duplicate: outcome.duplicate,
            late_receipt: outcome.late,
        }
    }
}

impl InboundEnrichment {
    /// The enrichment of an inbound message after the opt-out engine handled it.
    pub fn new(outcome: &InboundOutcome, record_id: String) -> InboundEnrichment {
        InboundEnrichment {
            record_id,
            keyword: outcome.keyword.clone(),
            action: outcome.action,
            opt_out_list: outcome.opt_out_list.clone(),
            opted_out: outcome.opted_out,
            state_unchanged: outcome.state_unchanged,
        }
    }
}

/// Looks up whether the destination of `ev` is opted out, with `lookup(origination, destination)`.
/// An event without an origination uses the list of the empty origination (`Default`).
pub fn destination_opted_out(
    ev: &DeliveryEvent,
    lookup: impl Fn(&str, &str) -> bool,
) -> Option<bool> {
    ev.destination_phone_number
        .as_deref()
        .map(|d| lookup(ev.origination_phone_number.as_deref().unwrap_or(""), d))
}

/// An accepted delivery event with its enrichment.
#[derive(Clone, Debug)]
pub struct EnrichedEvent {
    /// The typed event.
    pub event: DeliveryEvent,
    /// The enrichment.
    pub enrichment: EventEnrichment,
    /// Where it came from.
    pub provenance: Provenance,
    /// Envelopes unwrapped, outermost first.
    pub envelopes: Vec<&'static str>,
    /// The enriched JSON object (one line, no trailing newline).
    pub json: Vec<u8>,
}

/// An accepted inbound message with its enrichment.
#[derive(Clone, Debug)]
pub struct EnrichedInbound {
    /// The typed message.
    pub message: InboundMessage,
    /// The enrichment.
    pub enrichment: InboundEnrichment,
    /// Where it came from.
    pub provenance: Provenance,
    /// Envelopes unwrapped, outermost first.
    pub envelopes: Vec<&'static str>,
    /// The enriched JSON object (one line, no trailing newline).
    pub json: Vec<u8>,
}

/// Month-to-date totals of one (month, channel): one element of `spend.json`
/// and the value of the spend changelog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendRecord {
    /// `YYYY-MM`, UTC.
    pub month: MonthKey,
    /// Channel.
    pub channel: Channel,
    /// Exact spend, decimal string.
    pub spend_usd: Usd,
    /// Distinct messages.
    pub messages: u64,
}

/// One row of the opt-out table (`optouts.json`, opt-out changelog value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OptOutRecord {
    /// List name.
    pub opt_out_list: String,
    /// E.164 number.
    pub number: String,
    /// Current state.
    pub opted_out: bool,
}

/// Everything one call of the core produced, in order of production.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Enriched delivery events.
    pub events: Vec<EnrichedEvent>,
    /// Enriched inbound messages.
    pub inbound: Vec<EnrichedInbound>,
    /// Alarm state changes and limit records.
    pub alarms: Vec<AlarmRecord>,
    /// Replies to send (self-managed numbers).
    pub replies: Vec<Reply>,
    /// Dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Opt-out state changes.
    pub optout_changes: Vec<OptOutChange>,
    /// Spend totals that changed.
    pub spend_changes: Vec<SpendRecord>,
}

impl Outputs {
    /// Empties every vector, keeping the allocations.
    pub fn clear(&mut self) {
        self.events.clear();
        self.inbound.clear();
        self.alarms.clear();
        self.replies.clear();
        self.dead_letters.clear();
        self.optout_changes.clear();
        self.spend_changes.clear();
    }
}

/// Keys of a JSON object with their raw values, in order.
struct RawEntries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawEntries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawEntries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    let val: &'de RawValue = m.next_value()?;
                    v.push((k, val));
                }
                Ok(RawEntries(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The JSON text `raw` on one line: `raw` itself when it has no line break
/// (the common case, one scan), else [`minify`]d.
pub fn one_line(raw: &[u8]) -> Cow<'_, [u8]> {
    // `contains` on bytes is a memchr: much faster than a byte loop.
    if raw.contains(&b'\n') || raw.contains(&b'\r') {
        Cow::Owned(minify(raw))
    } else {
        Cow::Borrowed(raw)
    }
}

/// `raw` without the whitespace outside strings (space, tab, line feed,
/// carriage return: JSON's insignificant whitespace). Strings, numbers and
/// key order are kept as written, so the value is unchanged. A line break
/// inside a string cannot occur in valid JSON (it is escaped as `\n`); if
/// one does, it is written escaped, so the result is one line whatever the
/// input.
pub fn minify(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if !in_string {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                _ => out.push(b),
            }
            continue;
        }
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_string = false;
        }
    }
    out
}

/// Appends the fields of `enrichment` (a struct serializing to a JSON object)
/// to the JSON object `raw`, on one line ([`one_line`]). With `rebuild`, keys
/// of `raw` named in `keys` are dropped first.
pub fn splice<T: Serialize>(raw: &[u8], rebuild: bool, keys: &[&str], enrichment: &T) -> Vec<u8> {
    let raw = one_line(raw);
    let raw: &[u8] = &raw;
    let extra = match serde_json::to_vec(enrichment) {
        Ok(v) => v,
        // A struct of strings, numbers and booleans always serializes.
        Err(_) => b"{}".to_vec(),
    };
    let extra_body = extra
        .strip_prefix(b"{")
        .and_then(|e| e.strip_suffix(b"}"))
        .unwrap_or_default();
    let mut out = Vec::with_capacity(raw.len() + extra.len() + 2);
    if rebuild {
        if let Ok(RawEntries(entries)) = serde_json::from_slice::<RawEntries>(raw) {
            out.push(b'{');
            let mut first = true;
            for (k, v) in entries.iter().filter(|(k, _)| !keys.contains(&k.as_ref())) {
                if !first {
                    out.push(b',');
                }
                first = false;
                // Writing a String into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut out, k.as_ref());
                out.push(b':');
                out.extend_from_slice(v.get().as_bytes());
            }
            if !first && !extra_body.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(extra_body);
            out.push(b'}');
            return out;
        }
    }
    let end = raw.iter().rposition(|&b| b == b'}').unwrap_or(raw.len());
    let body = &raw[..end];
    out.extend_from_slice(body);
    let empty = body
        .iter()
        .skip(1)
        .all(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    if !empty && !extra_body.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(extra_body);
    out.push(b'}');
    out
}

/// [`splice`] of an [`EventEnrichment`], written directly (no serde
/// serializer, no intermediate buffer): the same bytes as
/// `splice(raw, rebuild, &EVENT_KEYS, e)`, which it uses for the rare
/// `rebuild` case.
pub fn splice_event(raw: &[u8], rebuild: bool, e: &EventEnrichment) -> Vec<u8> {
    if rebuild {
        return splice(raw, rebuild, &EVENT_KEYS, e);
    }
    let raw = one_line(raw);
    let raw: &[u8] = &raw;
    let end = raw.iter().rposition(|&b| b == b'}').unwrap_or(raw.len());
    let body = &raw[..end];
    let mut out = Vec::with_capacity(body.len() + 256 + e.record_id.len());
    out.extend_from_slice(body);
    let empty = body
        .iter()
        .skip(1)
        .all(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    if !empty {
        out.push(b',');
    }
    write_event_fields(&mut out, e);
    out.push(b'}');
    out
}

/// The members of `e` as serde_json writes them (without the braces).
fn write_event_fields(out: &mut Vec<u8>, e: &EventEnrichment) {
    use std::io::Write as _;
    out.extend_from_slice(b"\"recordId\":");
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, e.record_id.as_str());
    out.extend_from_slice(b",\"channel\":\"");
    out.extend_from_slice(e.channel.as_str().as_bytes());
    out.extend_from_slice(b"\",\"statusClass\":");
    match e.status_class {
        Some(c) => {
            out.push(b'"');
            out.extend_from_slice(c.as_str().as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"costUsd\":\"");
    e.cost_usd.write_decimal(out);
    out.extend_from_slice(b"\",\"spendMonth\":\"");
    let _ = write!(out, "{}", e.spend_month);
    out.extend_from_slice(b"\",\"monthToDateSpendUsd\":\"");
    e.month_to_date_spend_usd.write_decimal(out);
    out.extend_from_slice(b"\",\"latencyMs\":");
    match e.latency_ms {
        Some(l) => {
            let _ = write!(out, "{l}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"destinationOptedOut\":");
    out.extend_from_slice(match e.destination_opted_out {
        Some(true) => b"true",
        Some(false) => b"false",
        None => b"null",
    });
    out.extend_from_slice(b",\"duplicate\":");
    out.extend_from_slice(if e.duplicate { b"true" } else { b"false" });
    out.extend_from_slice(b",\"lateReceipt\":");
    out.extend_from_slice(if e.late_receipt { b"true" } else { b"false" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct E {
        record_id: &'static str,
        channel: &'static str,
    }

    #[test]
    fn appends_without_touching_original_text() {
        let raw = br#"{"totalMessagePrice":0.00581,"z":1.0e-3 , "a":[1,2]}"#;
        let out = splice(
            raw,
            false,
            &EVENT_KEYS,
            &E {
                record_id: "r",
                channel: "SMS",
            },
        );
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"totalMessagePrice":0.00581,"z":1.0e-3 , "a":[1,2],"recordId":"r","channel":"SMS"}"#
        );
    }

    #[test]
    fn colliding_keys_are_replaced_once() {
        let raw = br#"{"channel":"X","price":0.10, "recordId" : null,"k\"q":"v"}"#;
        let out = splice(
            raw,
            true,
            &EVENT_KEYS,
            &E {
                record_id: "r",
                channel: "SMS",
            },
        );
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            r#"{"price":0.10,"k\"q":"v","recordId":"r","channel":"SMS"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        assert_eq!(v["channel"], "SMS");
    }

    fn value(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid json")
    }

    #[test]
    fn minify_keeps_the_value_and_strings() {
        let pretty = "{\n  \"body\" : \"line 1\\nline 2\\r\\n\\ttab \\\" quote \\\\ \",\n\
                      \t\"spaced key\": \"  two  spaces  \",\r\n\
                      \"unicode\": \"caf\u{e9} \u{2603} \\u00e9 \u{1f600}\",\n\
                      \"nested\": { \"a\" : [ 1 , 2.50 , -0.0e+3 , { \"b\" : null } ] ,\n\
                      \"c\" : { } , \"d\" : [ ] },\n  \"t\": true , \"f\" : false\n}\n";
        let min = minify(pretty.as_bytes());
        let text = std::str::from_utf8(&min).expect("utf8");
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        assert_eq!(value(&min), value(pretty.as_bytes()));
        // Whitespace inside strings and number texts are kept as written.
        assert!(
            text.contains(r#""body":"line 1\nline 2\r\n\ttab \" quote \\ ""#),
            "{text}"
        );
        assert!(text.contains(r#""spaced key":"  two  spaces  ""#), "{text}");
        assert!(
            text.contains("caf\u{e9} \u{2603} \\u00e9 \u{1f600}"),
            "{text}"
        );
        assert!(text.contains(r#"[1,2.50,-0.0e+3,{"b":null}]"#), "{text}");
        assert!(
            text.ends_with(r#""c":{},"d":[]},"t":true,"f":false}"#),
            "{text}"
        );
    }

    #[test]
    fn one_line_keeps_a_line_as_is() {
        let raw = br#"{"a" : 1 , "b":"x y"}"#;
        assert!(matches!(one_line(raw), Cow::Borrowed(r) if r == raw));
        let raw = b"{\"a\":\n1}";
        assert_eq!(&*one_line(raw), br#"{"a":1}"#);
        // A raw line break inside a string (invalid JSON) still ends on one line.
        assert_eq!(&*one_line(b"{\"a\":\"x\ny\"}"), br#"{"a":"x\ny"}"#);
    }

    #[test]
    fn pretty_input_is_spliced_on_one_line() {
        let e = E {
            record_id: "r",
            channel: "SMS",
        };
        let raw = b"{\n  \"price\": 0.10,\n  \"ctx\": {\n    \"k\": \"a b\"\n  }\n}";
        for rebuild in [false, true] {
            let out = splice(raw, rebuild, &EVENT_KEYS, &e);
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                r#"{"price":0.10,"ctx":{"k":"a b"},"recordId":"r","channel":"SMS"}"#
            );
        }
        let out = splice(b"{\n}", false, &EVENT_KEYS, &e);
        assert_eq!(out, br#"{"recordId":"r","channel":"SMS"}"#.to_vec());
    }

    fn enrichment(
        record_id: String,
        class: Option<StatusClass>,
        units: (i128, i128),
        month: (i32, u32),
        latency: Option<i64>,
        flags: (Option<bool>, bool, bool),
    ) -> EventEnrichment {
        EventEnrichment {
            record_id,
            channel: Channel::Voice,
            status_class: class,
            cost_usd: Usd::from_units(units.0),
            spend_month: MonthKey::new(month.0, month.1)
                .unwrap_or_else(|| MonthKey::new(2025, 11).expect("a month")),
            month_to_date_spend_usd: Usd::from_units(units.1),
            latency_ms: latency,
            destination_opted_out: flags.0,
            duplicate: flags.1,
            late_receipt: flags.2,
        }
    }

    proptest::proptest! {
        #[test]
        fn splice_event_is_splice(
            id in "\\PC{0,30}",
            class in proptest::option::of(proptest::sample::select(vec![
                StatusClass::InFlight, StatusClass::Accepted,
                StatusClass::TransientFailure, StatusClass::PermanentFailure,
            ])),
            cost in proptest::prelude::any::<i128>(),
            mtd in -1_000_000_000_000_000i128..1_000_000_000_000_000_000_000,
            year in -10_000i32..10_000,
            month in 1u32..=12,
            latency in proptest::option::of(proptest::prelude::any::<i64>()),
            flags in proptest::prelude::any::<(Option<bool>, bool, bool)>(),
            raw in proptest::sample::select(vec![
                "{}", "{ }", "{\n}", r#"{"a":1}"#, "{\"a\":\n 1 }", r#"{"channel":"X","b":[1]}"#,
                r#"{"recordId":1}"#, "{\"k\":\"v\"}  ",
            ]),
            rebuild in proptest::prelude::any::<bool>(),
        ) {
            let e = enrichment(id, class, (cost, mtd), (year, month), latency, flags);
            let fast = String::from_utf8_lossy(&splice_event(raw.as_bytes(), rebuild, &e)).into_owned();
            let serde = String::from_utf8_lossy(&splice(raw.as_bytes(), rebuild, &EVENT_KEYS, &e)).into_owned();
            proptest::prop_assert_eq!(fast, serde);
        }
    }

    #[test]
    fn empty_object() {
        let out = splice(
            b"{ }",
            false,
            &EVENT_KEYS,
            &E {
                record_id: "r",
                channel: "SMS",
            },
        );
        assert_eq!(out, br#"{ "recordId":"r","channel":"SMS"}"#.to_vec());
    }
}
