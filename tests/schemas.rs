//! Keeps `schemas/*.schema.json` true.
//!
//! * The schemas are valid draft 2020-12, documented, and agree with the code's
//!   own lists (reason codes, enrichment keys, channels).
//! * Every sample payload (envelopes unwrapped by hand) matches its input
//!   schema, and the input schemas accept and reject exactly what the decoder
//!   accepts and rejects on a table of edge cases.
//! * Every record of a real run (library file mode, the core's changelog
//!   values, and the built binary) matches its output schema, and broken
//!   records are rejected, so the schemas can fail.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use jsonschema::{Resource, Validator};
use serde_json::{json, Value};

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::dead_letter::Reason;
use smsvoice::decode::{decode_record, split_values, Decoded, RecordSource, Segment};
use smsvoice::enrich::{Outputs, EVENT_KEYS, INBOUND_KEYS, INBOUND_OPTIONAL_KEYS};
use smsvoice::file_mode::{self, files, Input};
use smsvoice::model::{Channel, Payload};

const DELIVERY: &str = "delivery-event.schema.json";
const INBOUND: &str = "inbound-message.schema.json";
const ENRICHED_EVENT: &str = "enriched-event.schema.json";
const ENRICHED_INBOUND: &str = "enriched-inbound.schema.json";
const ALARM: &str = "alarm.schema.json";
const REPLY: &str = "reply.schema.json";
const DEAD_LETTER: &str = "dead-letter.schema.json";
const SPEND: &str = "spend.schema.json";
const OPTOUTS: &str = "optouts.schema.json";
const OPTOUT_CHANGE: &str = "optout-change.schema.json";

const ALL_SCHEMAS: [&str; 10] = [
    DELIVERY,
    INBOUND,
    ENRICHED_EVENT,
    ENRICHED_INBOUND,
    ALARM,
    REPLY,
    DEAD_LETTER,
    SPEND,
    OPTOUTS,
    OPTOUT_CHANGE,
];

/// JSON-lines outputs of file mode and the schema of one line.
const LINE_OUTPUTS: [(&str, &str); 5] = [
    (files::EVENTS, ENRICHED_EVENT),
    (files::INBOUND, ENRICHED_INBOUND),
    (files::ALARMS, ALARM),
    (files::REPLIES, REPLY),
    (files::DEAD_LETTERS, DEAD_LETTER),
];

/// Whole-file JSON outputs of file mode and their schema.
const ARRAY_OUTPUTS: [(&str, &str); 2] = [(files::SPEND, SPEND), (files::OPTOUTS, OPTOUTS)];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn samples_dir() -> PathBuf {
    root().join("samples")
}

fn schema_json(name: &str) -> Value {
    let path = root().join("schemas").join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

fn schema_id(schema: &Value, name: &str) -> String {
    schema["$id"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: no $id"))
        .to_owned()
}

/// Every schema compiled, with the other schemas registered under their `$id`
/// so relative `$ref`s between them resolve without network or file access.
struct Schemas {
    validators: BTreeMap<&'static str, Validator>,
}

impl Schemas {
    fn load() -> Schemas {
        let docs: Vec<(&'static str, Value)> =
            ALL_SCHEMAS.iter().map(|n| (*n, schema_json(n))).collect();
        let mut validators = BTreeMap::new();
        for (name, schema) in &docs {
            let mut opts = jsonschema::options();
            for (other, doc) in &docs {
                if other != name {
                    let resource = Resource::from_contents(doc.clone())
                        .unwrap_or_else(|e| panic!("{other}: not a resource: {e}"));
                    opts = opts.with_resource(schema_id(doc, other), resource);
                }
            }
            let v = opts
                .build(schema)
                .unwrap_or_else(|e| panic!("{name}: does not compile: {e}"));
            validators.insert(*name, v);
        }
        Schemas { validators }
    }

    fn get(&self, name: &str) -> &Validator {
        self.validators
            .get(name)
            .unwrap_or_else(|| panic!("no schema {name}"))
    }

    /// The schema errors of `instance`, one line each (empty when valid).
    fn errors(&self, name: &str, instance: &Value) -> Vec<String> {
        self.get(name)
            .iter_errors(instance)
            .map(|e| {
                format!(
                    "  at {:?} (schema {:?}): {e}",
                    e.instance_path.as_str(),
                    e.schema_path.as_str()
                )
            })
            .collect()
    }

    fn is_valid(&self, name: &str, instance: &Value) -> bool {
        self.get(name).is_valid(instance)
    }

    /// `Err` with the instance and the schema errors when invalid.
    fn check(&self, name: &str, instance: &Value, what: &str) -> Result<(), String> {
        let errors = self.errors(name, instance);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: does not match {name}\ninstance: {instance}\nschema errors:\n{}",
                errors.join("\n")
            ))
        }
    }

    /// `Err` with the instance when the schema accepts it.
    fn check_rejected(&self, name: &str, instance: &Value, what: &str) -> Result<(), String> {
        if self.is_valid(name, instance) {
            Err(format!(
                "{what}: {name} accepts an invalid record\ninstance: {instance}"
            ))
        } else {
            Ok(())
        }
    }
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// The schemas themselves
// ---------------------------------------------------------------------------

/// Every `properties` entry outside conditional subschemas (`if`, `then`,
/// `else`, `not`) must have a description; collects the paths that do not.
fn undocumented(node: &Value, path: &str, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (k, v) in props {
                    let has = v.get("description").and_then(Value::as_str);
                    if has.is_none_or(|d| d.trim().is_empty()) {
                        out.push(format!("{path}/properties/{k}"));
                    }
                }
            }
            for (k, v) in map {
                if matches!(
                    k.as_str(),
                    "if" | "then" | "else" | "not" | "examples" | "const"
                ) {
                    continue;
                }
                undocumented(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                undocumented(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn schemas_are_valid_documented_and_listed() {
    let mut failures = Vec::new();
    let readme = fs::read_to_string(root().join("schemas/README.md")).expect("schemas/README.md");
    for name in ALL_SCHEMAS {
        let schema = schema_json(name);
        if let Err(e) = jsonschema::meta::validate(&schema) {
            failures.push(format!("{name}: not a valid JSON Schema: {e}"));
        }
        if schema["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
            failures.push(format!(
                "{name}: $schema is not draft 2020-12: {}",
                schema["$schema"]
            ));
        }
        if !schema_id(&schema, name).ends_with(&format!("/{name}")) {
            failures.push(format!("{name}: $id does not end with the file name"));
        }
        for key in ["title", "description"] {
            if schema[key].as_str().is_none_or(|s| s.trim().is_empty()) {
                failures.push(format!("{name}: no {key}"));
            }
        }
        let mut missing = Vec::new();
        undocumented(&schema, "#", &mut missing);
        for m in missing {
            failures.push(format!("{name}: property without description: {m}"));
        }
        if !readme.contains(&format!("`{name}`")) {
            failures.push(format!("schemas/README.md does not list {name}"));
        }
    }
    let on_disk: Vec<String> = fs::read_dir(root().join("schemas"))
        .expect("schemas dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    for f in on_disk {
        if !ALL_SCHEMAS.contains(&f.as_str()) {
            failures.push(format!("schemas/{f} is not checked by tests/schemas.rs"));
        }
    }
    assert_no_failures(&failures);
}

fn string_set(v: &Value, what: &str) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not an array: {v}"))
        .iter()
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
        .collect();
    out.sort();
    out
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[test]
fn schemas_agree_with_the_code_lists() {
    let dl = schema_json(DEAD_LETTER);
    assert_eq!(
        string_set(
            &dl["properties"]["reason"]["enum"],
            "dead-letter reason enum"
        ),
        sorted(&Reason::ALL_CODES),
        "dead-letter.schema.json reason enum differs from Reason::ALL_CODES"
    );

    let ev = schema_json(ENRICHED_EVENT);
    assert_eq!(
        string_set(&ev["required"], "enriched-event required"),
        sorted(&EVENT_KEYS),
        "enriched-event.schema.json required keys differ from enrich::EVENT_KEYS"
    );
    let ev_props: Vec<&str> = ev["properties"]
        .as_object()
        .expect("enriched-event properties")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        sorted(&ev_props),
        sorted(&EVENT_KEYS),
        "enriched-event properties"
    );

    let inb = schema_json(ENRICHED_INBOUND);
    let inb_required: Vec<&str> = INBOUND_KEYS
        .iter()
        .copied()
        .filter(|k| !INBOUND_OPTIONAL_KEYS.contains(k))
        .collect();
    assert_eq!(
        string_set(&inb["required"], "enriched-inbound required"),
        sorted(&inb_required),
        "enriched-inbound.schema.json required keys differ from enrich::INBOUND_KEYS without INBOUND_OPTIONAL_KEYS"
    );
    let inb_props: Vec<&str> = inb["properties"]
        .as_object()
        .expect("enriched-inbound properties")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        sorted(&inb_props),
        sorted(&INBOUND_KEYS),
        "enriched-inbound properties"
    );

    let channels: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
    let alarm = schema_json(ALARM);
    for (what, v) in [
        (
            "enriched-event channel",
            &ev["properties"]["channel"]["enum"],
        ),
        ("alarm channel", &alarm["$defs"]["channel"]["enum"]),
        (
            "spend channel",
            &schema_json(SPEND)["items"]["properties"]["channel"]["enum"],
        ),
    ] {
        assert_eq!(
            string_set(v, what),
            sorted(&channels),
            "{what} differs from Channel::ALL"
        );
    }
    let metrics: Vec<String> = Channel::ALL
        .iter()
        .map(|c| c.spend_metric().map_or("null".to_owned(), str::to_owned))
        .collect();
    let mut metrics_sorted = metrics.clone();
    metrics_sorted.sort();
    assert_eq!(
        string_set(
            &alarm["$defs"]["alarmStateChange"]["properties"]["metric"]["enum"],
            "alarm metric"
        ),
        metrics_sorted,
        "alarm metric enum differs from Channel::spend_metric"
    );
}

// ---------------------------------------------------------------------------
// Input schemas
// ---------------------------------------------------------------------------

/// A payload found in an input, with where it came from.
struct Found {
    payload: Value,
    envelopes: Vec<&'static str>,
    origin: String,
}

fn json_stream(text: &str, origin: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|r| r.unwrap_or_else(|e| panic!("{origin}: not JSON: {e}\n{text}")))
        .collect()
}

/// Unwraps SNS, EventBridge and Firehose envelopes by hand (independently of
/// the crate's decoder) down to the payload objects.
fn unwrap_envelopes(v: Value, envelopes: &[&'static str], origin: &str, out: &mut Vec<Found>) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{origin}: not an object: {v}"));
    let inside = |e: &'static str| {
        let mut v = envelopes.to_vec();
        v.push(e);
        v
    };
    if obj.contains_key("eventType") || obj.contains_key("originationNumber") {
        out.push(Found {
            payload: v,
            envelopes: envelopes.to_vec(),
            origin: origin.to_owned(),
        });
    } else if obj.get("Type").and_then(Value::as_str) == Some("Notification") {
        let message = obj["Message"]
            .as_str()
            .unwrap_or_else(|| panic!("{origin}: SNS Message is not a string: {v}"));
        for inner in json_stream(message, origin) {
            unwrap_envelopes(inner, &inside("sns"), origin, out);
        }
    } else if let Some(detail) = obj.get("detail") {
        unwrap_envelopes(detail.clone(), &inside("eventbridge"), origin, out);
    } else if let Some(records) = obj.get("records").and_then(Value::as_array) {
        for (i, r) in records.iter().enumerate() {
            let data = r["data"]
                .as_str()
                .unwrap_or_else(|| panic!("{origin}: records[{i}].data is not a string"));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap_or_else(|e| panic!("{origin}: records[{i}].data: {e}"));
            let text = String::from_utf8(bytes)
                .unwrap_or_else(|e| panic!("{origin}: records[{i}].data: {e}"));
            for inner in json_stream(&text, origin) {
                unwrap_envelopes(inner, &inside("firehose"), origin, out);
            }
        }
    } else {
        panic!("{origin}: neither a payload nor a known envelope: {v}");
    }
}

fn sample_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(samples_dir())
        .expect("samples dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no sample files");
    files
}

fn test_source() -> RecordSource {
    RecordSource {
        source: Arc::from("schemas-test"),
        partition: None,
        offset: 0,
        timestamp_ms: None,
    }
}

/// What the crate's decoder makes of one record: `Some("delivery")`,
/// `Some("inbound")`, or `None` (dead-lettered), with the dead letter reasons.
fn decoder_verdict(bytes: &[u8]) -> (Option<&'static str>, String) {
    let mut out = Vec::new();
    decode_record(bytes, &test_source(), &mut out);
    assert_eq!(
        out.len(),
        1,
        "one payload expected from {}",
        String::from_utf8_lossy(bytes)
    );
    match &out[0] {
        Decoded::Accepted(a) => match a.payload {
            Payload::Delivery(_) => (Some("delivery"), String::new()),
            Payload::Inbound(_) => (Some("inbound"), String::new()),
        },
        Decoded::Dead(d) => (None, d.reason.to_string()),
    }
}

/// Which input schema accepts the payload: the two are mutually exclusive.
fn schema_verdict(schemas: &Schemas, v: &Value) -> Option<&'static str> {
    match (schemas.is_valid(DELIVERY, v), schemas.is_valid(INBOUND, v)) {
        (true, false) => Some("delivery"),
        (false, true) => Some("inbound"),
        (false, false) => None,
        (true, true) => panic!("both input schemas accept {v}"),
    }
}

#[test]
fn samples_match_input_schemas() {
    let schemas = Schemas::load();
    let mut failures = Vec::new();
    let mut found = Vec::new();
    for path in sample_files() {
        let origin = path.display().to_string();
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{origin}: {e}"));
        let before = found.len();
        for v in json_stream(&text, &origin) {
            unwrap_envelopes(v, &[], &origin, &mut found);
        }
        assert!(found.len() > before, "{origin}: no payload found");
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut envelopes_seen: Vec<&str> = Vec::new();
    for f in &found {
        let (schema, kind) = if f.payload.get("eventType").is_some() {
            (DELIVERY, "delivery")
        } else {
            (INBOUND, "inbound")
        };
        *kinds.entry(kind).or_default() += 1;
        envelopes_seen.extend(f.envelopes.iter().copied());
        let what = format!("{} (envelopes {:?})", f.origin, f.envelopes);
        if let Err(e) = schemas.check(schema, &f.payload, &what) {
            failures.push(e);
        }
        let other = if schema == DELIVERY {
            INBOUND
        } else {
            DELIVERY
        };
        if let Err(e) = schemas.check_rejected(other, &f.payload, &what) {
            failures.push(e);
        }
        let bytes = serde_json::to_vec(&f.payload).expect("serialize");
        let (decoded, why) = decoder_verdict(&bytes);
        if decoded != Some(kind) {
            failures.push(format!(
                "{what}: decoder gives {decoded:?} ({why}), schema says {kind}\ninstance: {}",
                f.payload
            ));
        }
    }
    assert_no_failures(&failures);
    assert!(
        kinds.get("delivery").copied().unwrap_or(0) >= 5,
        "{kinds:?}"
    );
    assert!(kinds.get("inbound").copied().unwrap_or(0) >= 2, "{kinds:?}");
    for e in ["sns", "eventbridge", "firehose"] {
        assert!(
            envelopes_seen.contains(&e),
            "no sample inside a {e} envelope"
        );
    }
}

/// (what, payload, the input kind the decoder and the schemas must both agree on)
fn edge_cases() -> Vec<(&'static str, Value, Option<&'static str>)> {
    let sms: Value = serde_json::from_str(
        &fs::read_to_string(samples_dir().join("sms-delivered-carrier.json")).expect("sample"),
    )
    .expect("sample json");
    let inbound: Value = serde_json::from_str(
        &fs::read_to_string(samples_dir().join("inbound-stop.json")).expect("sample"),
    )
    .expect("sample json");
    let with = |base: &Value, key: &str, value: Value| {
        let mut v = base.clone();
        v[key] = value;
        v
    };
    let without = |base: &Value, key: &str| {
        let mut v = base.clone();
        v.as_object_mut().expect("object").remove(key);
        v
    };
    let minimal = json!({"eventType": "TEXT_DELIVERED", "eventTimestamp": 1762000000950_i64, "messageId": "m-1"});
    let d = Some("delivery");
    let i = Some("inbound");
    vec![
        // required by the task: the schemas must reject these
        ("missing messageId", without(&sms, "messageId"), None),
        ("mnc as a number", with(&sms, "mnc", json!(610)), None),
        (
            "originationNumber not E.164",
            with(&inbound, "originationNumber", json!("4255550182")),
            None,
        ),
        // delivery events
        ("sample SMS", sms.clone(), d),
        ("minimal event", minimal.clone(), d),
        (
            "newer status",
            with(&minimal, "eventType", json!("TEXT_SOMETHING_NEW")),
            d,
        ),
        (
            "RCS event",
            with(&minimal, "eventType", json!("RCS_READ")),
            d,
        ),
        (
            "MMS file error",
            with(&minimal, "eventType", json!("MEDIA_FILE_TOO_OLD")),
            d,
        ),
        (
            "unknown key kept",
            with(&minimal, "somethingNew", json!({"a": [1]})),
            d,
        ),
        ("mnc with leading zero", with(&sms, "mnc", json!("05")), d),
        (
            "optional fields null",
            json!({"eventType": "VOICE_BUSY", "eventTimestamp": 1762000000950_i64, "messageId": "m",
                   "mcc": null, "isFinal": null, "context": null, "totalMessagePrice": null,
                   "totalCarrierFee": null, "messageRequestTimestamp": null, "totalMessageParts": null,
                   "protectConfiguration": {"protectStatus": null}}),
            d,
        ),
        ("zero price", with(&sms, "totalMessagePrice", json!(0)), d),
        (
            "missing eventTimestamp",
            without(&sms, "eventTimestamp"),
            None,
        ),
        (
            "subscription filter TEXT_ALL",
            with(&minimal, "eventType", json!("TEXT_ALL")),
            None,
        ),
        (
            "subscription filter RCS_ALL",
            with(&minimal, "eventType", json!("RCS_ALL")),
            None,
        ),
        (
            "subscription filter ALL",
            with(&minimal, "eventType", json!("ALL")),
            None,
        ),
        (
            "unknown prefix",
            with(&minimal, "eventType", json!("FAX_DELIVERED")),
            None,
        ),
        (
            "lowercase prefix",
            with(&minimal, "eventType", json!("text_delivered")),
            None,
        ),
        (
            "prefix only",
            with(&minimal, "eventType", json!("TEXT_")),
            None,
        ),
        (
            "eventType null",
            with(&minimal, "eventType", Value::Null),
            None,
        ),
        (
            "eventTimestamp as string",
            with(&minimal, "eventTimestamp", json!("1762000000950")),
            None,
        ),
        (
            "eventTimestamp in seconds",
            with(&minimal, "eventTimestamp", json!(1762000000_i64)),
            None,
        ),
        (
            "eventTimestamp after 2200",
            with(&minimal, "eventTimestamp", json!(7258118400000_i64)),
            None,
        ),
        (
            "messageRequestTimestamp 0",
            with(&sms, "messageRequestTimestamp", json!(0)),
            None,
        ),
        (
            "empty messageId",
            with(&minimal, "messageId", json!("")),
            None,
        ),
        (
            "blank messageId",
            with(&minimal, "messageId", json!("  ")),
            None,
        ),
        (
            "messageId number",
            with(&minimal, "messageId", json!(7)),
            None,
        ),
        (
            "negative price",
            with(&sms, "totalMessagePrice", json!(-0.01)),
            None,
        ),
        (
            "price as string",
            with(&sms, "totalMessagePrice", json!("0.00581")),
            None,
        ),
        (
            "negative carrier fee",
            with(&sms, "totalCarrierFee", json!(-1)),
            None,
        ),
        (
            "context value not a string",
            with(&sms, "context", json!({"tenant": 5})),
            None,
        ),
        (
            "context not an object",
            with(&sms, "context", json!("acme")),
            None,
        ),
        (
            "negative parts",
            with(&sms, "totalMessageParts", json!(-1)),
            None,
        ),
        (
            "parts beyond u32",
            with(&sms, "totalMessageParts", json!(4294967296_i64)),
            None,
        ),
        (
            "isFinal as string",
            with(&sms, "isFinal", json!("true")),
            None,
        ),
        (
            "protectStatus not a string",
            with(&sms, "protectConfiguration", json!({"protectStatus": 1})),
            None,
        ),
        // inbound messages
        ("sample inbound", inbound.clone(), i),
        (
            "minimal inbound",
            json!({"originationNumber": "+447700900123", "destinationNumber": "OurSenderId", "messageBody": ""}),
            i,
        ),
        (
            "inbound optional null",
            with(&inbound, "inboundMessageId", Value::Null),
            i,
        ),
        (
            "inbound with eventType null",
            with(&inbound, "eventType", Value::Null),
            None,
        ),
        ("inbound unknown key", with(&inbound, "extra", json!(1)), i),
        (
            "15-digit number",
            with(&inbound, "originationNumber", json!("+123456789012345")),
            i,
        ),
        (
            "16-digit number",
            with(&inbound, "originationNumber", json!("+1234567890123456")),
            None,
        ),
        (
            "number starting +0",
            with(&inbound, "originationNumber", json!("+04255550182")),
            None,
        ),
        (
            "number with spaces",
            with(&inbound, "originationNumber", json!("+1 425 555 0182")),
            None,
        ),
        (
            "missing messageBody",
            without(&inbound, "messageBody"),
            None,
        ),
        (
            "missing destinationNumber",
            without(&inbound, "destinationNumber"),
            None,
        ),
        (
            "blank destinationNumber",
            with(&inbound, "destinationNumber", json!(" ")),
            None,
        ),
        (
            "messageBody number",
            with(&inbound, "messageBody", json!(5)),
            None,
        ),
        (
            "messageKeyword number",
            with(&inbound, "messageKeyword", json!(5)),
            None,
        ),
        // an eventType makes it a delivery event, which then lacks its fields
        (
            "inbound with eventType",
            with(&inbound, "eventType", json!("TEXT_DELIVERED")),
            None,
        ),
        ("neither kind", json!({"hello": "world"}), None),
    ]
}

#[test]
fn input_schemas_accept_exactly_what_the_decoder_accepts() {
    let schemas = Schemas::load();
    let mut failures = Vec::new();
    for (what, payload, expected) in edge_cases() {
        let by_schema = schema_verdict(&schemas, &payload);
        let bytes = serde_json::to_vec(&payload).expect("serialize");
        let (by_decoder, why) = decoder_verdict(&bytes);
        if by_schema != expected || by_decoder != expected {
            let schema_errors = [DELIVERY, INBOUND]
                .iter()
                .map(|n| format!("{n}:\n{}", schemas.errors(n, &payload).join("\n")))
                .collect::<Vec<_>>()
                .join("\n");
            failures.push(format!(
                "{what}: expected {expected:?}, schemas say {by_schema:?}, decoder says {by_decoder:?} {why}\ninstance: {payload}\nschema errors:\n{schema_errors}"
            ));
        }
    }
    assert_no_failures(&failures);
}

// ---------------------------------------------------------------------------
// Output schemas
// ---------------------------------------------------------------------------

/// Validates every output file in `dir`; returns the record count per file.
fn validate_output_dir(
    schemas: &Schemas,
    dir: &Path,
    failures: &mut Vec<String>,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (file, schema) in LINE_OUTPUTS {
        let path = dir.join(file);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            let what = format!("{file} line {}", i + 1);
            match serde_json::from_str::<Value>(line) {
                Ok(v) => {
                    n += 1;
                    if let Err(e) = schemas.check(schema, &v, &what) {
                        failures.push(e);
                    }
                }
                Err(e) => failures.push(format!("{what}: not one JSON value: {e}\nline: {line}")),
            }
        }
        counts.insert(file.to_owned(), n);
    }
    for (file, schema) in ARRAY_OUTPUTS {
        let path = dir.join(file);
        let parsed = fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(v) => {
                counts.insert(file.to_owned(), v.as_array().map_or(0, Vec::len));
                if let Err(e) = schemas.check(schema, &v, file) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    counts
}

/// An extra input that makes every output non-empty and reaches the less
/// common record shapes (dead-letter reasons, LIMIT_REACHED, replies of every
/// action, enrichment-name collisions, nulls).
fn extra_input() -> Vec<u8> {
    let lines = [
        // malformed JSON -> invalid_json
        r#"{"eventType": TEXT_DELIVERED, "eventTimestamp": 1762100000000}"#,
        // HELP to a self-managed number -> HELP reply
        r#"{"originationNumber":"+14255550199","destinationNumber":"+12125550101","messageBody":"help me","inboundMessageId":"11111111-0000-4000-8000-000000000001"}"#,
        // START from the sample's STOP sender -> OPT_IN reply, opt-out change
        r#"{"originationNumber":"+14255550182","destinationNumber":"+12125550101","messageBody":"START","inboundMessageId":"11111111-0000-4000-8000-000000000002"}"#,
        // custom AUTOMATIC_RESPONSE and OPT_IN keywords of +12125550101
        r#"{"originationNumber":"+14255550199","destinationNumber":"+12125550101","messageBody":"hours?"}"#,
        r#"{"originationNumber":"+14255550177","destinationNumber":"+12125550101","messageBody":"Join","messageKeyword":"JOIN"}"#,
        // ordinary text -> action NONE, keyword null, no reply
        r#"{"originationNumber":"+14255550177","destinationNumber":"+12125550101","messageBody":"thanks!"}"#,
        // STOP to the self-managed toll-free number (Default list)
        r#"{"originationNumber":"+14255550166","destinationNumber":"+18445550100","messageBody":"stop","inboundMessageId":null}"#,
        // unknown eventType prefix, subscription filter, wrong type
        r#"{"eventType":"FAX_DELIVERED","eventTimestamp":1762100000000,"messageId":"fax-1"}"#,
        r#"{"eventType":"TEXT_ALL","eventTimestamp":1762100000000,"messageId":"all-1"}"#,
        r#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1762100000000,"messageId":"mnc-1","mnc":5}"#,
        // failures inside envelopes
        r#"{"Type":"Notification","MessageId":"x","Message":"{\"originationNumber\":\"12345\",\"destinationNumber\":\"+12125550101\",\"messageBody\":\"hi\"}","Timestamp":"2025-11-02T00:00:00Z"}"#,
        r#"{"requestId":"r","timestamp":1762100000000,"records":[{"data":"!!not base64!!"}]}"#,
        // not an object, unknown payload
        r#"[1,2,3]"#,
        r#"{"hello":"world"}"#,
        // 11 SMS of 9.5 USD (under the 10 USD per-message ceiling) in
        // 2025-11 -> alarm sms-5-cents and LIMIT_REACHED (100 USD)
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000000,"messageId":"big-1","messageRequestTimestamp":1762099999000,"originationPhoneNumber":"+12125550101","destinationPhoneNumber":"+14255550182","totalMessagePrice":9.5,"totalCarrierFee":0.00302}"#,
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000001,"messageId":"big-2","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000002,"messageId":"big-3","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}"#,
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000003,"messageId":"big-4","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000004,"messageId":"big-5","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}"#,
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000005,"messageId":"big-6","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000006,"messageId":"big-7","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}"#,
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000007,"messageId":"big-8","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000008,"messageId":"big-9","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}"#,
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000009,"messageId":"big-10","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000010,"messageId":"big-11","messageRequestTimestamp":1762099999000,"totalMessagePrice":9.5}"#,
        // the same event again -> duplicate
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000000,"messageId":"big-1","messageRequestTimestamp":1762099999000,"originationPhoneNumber":"+12125550101","destinationPhoneNumber":"+14255550182","totalMessagePrice":9.5,"totalCarrierFee":0.00302}"#,
        // an absurd price, a time far past the file's arrival, an oversized
        // id, too many context entries -> invalid_money, invalid_value,
        // field_too_long, too_many_entries
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000000,"messageId":"absurd-1","totalMessagePrice":95820000000000}"#,
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":5680281600000,"messageId":"future-1","totalMessagePrice":0.01}"#,
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000000,"messageId":"id-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        r#"{"eventType":"TEXT_SUCCESSFUL","eventTimestamp":1762100000000,"messageId":"ctx-1","context":{"a0":"","a1":"","a2":"","a3":"","a4":"","a5":"","a6":"","a7":"","a8":"","a9":"","b0":"","b1":"","b2":"","b3":"","b4":"","b5":"","b6":"","b7":"","b8":"","b9":"","c0":"","c1":"","c2":"","c3":"","c4":"","c5":"","c6":"","c7":"","c8":"","c9":"","d0":"","d1":"","d2":"","d3":"","d4":"","d5":"","d6":"","d7":"","d8":"","d9":"","e0":"","e1":"","e2":"","e3":"","e4":"","e5":"","e6":"","e7":"","e8":"","e9":"","f0":"","f1":"","f2":"","f3":"","f4":"","f5":"","f6":"","f7":"","f8":"","f9":"","g0":"","g1":"","g2":"","g3":"","g4":""}}"#,
        // a STOP again from an opted-out customer -> stateUnchanged
        r#"{"originationNumber":"+14255550166","destinationNumber":"+18445550100","messageBody":"STOP again"}"#,
        // price correction -> spend falls, alarm back to OK
        r#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1762100005000,"messageId":"big-1","messageRequestTimestamp":1762099999000,"destinationPhoneNumber":"+14255550182","totalMessagePrice":0.01}"#,
        // newer status, nulls, no destination, no request time
        r#"{"eventType":"RCS_TYPING","eventTimestamp":1762100010000,"messageId":"rcs-1","mcc":null,"context":null,"totalMessagePrice":null,"isFinal":null}"#,
        // keys with enrichment names are replaced
        r#"{"eventType":"VOICE_BUSY","eventTimestamp":1762100020000,"messageId":"v-1","channel":"FAX","recordId":7,"costUsd":1.5,"originationPhoneNumber":"+12125550101","destinationPhoneNumber":"+14255550166"}"#,
        // concatenated without delimiter, second one broken
        r#"{"eventType":"MEDIA_QUEUED","eventTimestamp":1762100030000,"messageId":"mms-9","messageRequestTimestamp":1762100029000,"totalMessagePrice":0.0195}{"eventType":"MEDIA_QUEUED"}"#,
    ];
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    // not UTF-8 -> invalid_utf8, payload in base64
    out.extend_from_slice(b"{\"eventType\":\"TEXT_\xff\xfe\"}\n");
    out
}

fn embedded_config() -> Config {
    Config::from_toml(EMBEDDED_DEFAULT, "embedded").expect("embedded default config")
}

#[test]
fn file_mode_outputs_match_output_schemas() {
    let schemas = Schemas::load();
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = tmp.path().join("extra.jsonl");
    fs::write(&extra, extra_input()).expect("write extra input");
    let out_dir = tmp.path().join("out");
    let inputs = [Input::Path(samples_dir()), Input::Path(extra)];
    let summary = file_mode::run(&embedded_config(), &inputs, &out_dir).expect("file mode run");

    let mut failures = Vec::new();
    let counts = validate_output_dir(&schemas, &out_dir, &mut failures);
    assert_no_failures(&failures);
    for (file, _) in LINE_OUTPUTS.iter().chain(ARRAY_OUTPUTS.iter()) {
        assert!(
            counts.get(*file).copied().unwrap_or(0) > 0,
            "{file} is empty; counts {counts:?}\nsummary:\n{summary}"
        );
    }

    // Both alarm record types are reached, so both branches were checked.
    let alarms = fs::read_to_string(out_dir.join(files::ALARMS)).expect("alarms");
    for t in ["ALARM_STATE_CHANGE", "LIMIT_REACHED"] {
        assert!(
            alarms.contains(&format!("\"recordType\":\"{t}\"")),
            "no {t} record in alarms.jsonl:\n{alarms}"
        );
    }
    // Dead letters with a field, inside an envelope, and in base64 were written.
    let dead: Vec<Value> = fs::read_to_string(out_dir.join(files::DEAD_LETTERS))
        .expect("dead letters")
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead letter json"))
        .collect();
    for (what, ok) in [
        ("a field", dead.iter().any(|d| d.get("field").is_some())),
        (
            "an innerPayload",
            dead.iter().any(|d| d.get("innerPayload").is_some()),
        ),
        (
            "a base64 payload",
            dead.iter().any(|d| d["payloadEncoding"] == "base64"),
        ),
        (
            "a time past the arrival",
            dead.iter()
                .any(|d| d["reason"] == "invalid_value" && d["field"] == "eventTimestamp"),
        ),
        (
            "a price above the ceiling",
            dead.iter().any(|d| d["reason"] == "invalid_money"),
        ),
        (
            "a field too long",
            dead.iter().any(|d| d["reason"] == "field_too_long"),
        ),
        (
            "too many entries",
            dead.iter().any(|d| d["reason"] == "too_many_entries"),
        ),
    ] {
        assert!(ok, "no dead letter with {what}: {dead:#?}");
    }
    let inbound = fs::read_to_string(out_dir.join(files::INBOUND)).expect("inbound");
    assert!(
        inbound.contains("\"stateUnchanged\":\"already_opted_out\""),
        "no enriched inbound with stateUnchanged:\n{inbound}"
    );
}

/// The values the core writes to changelogs (opt-out changes, spend records).
#[test]
fn changelog_values_match_output_schemas() {
    let schemas = Schemas::load();
    let cfg = embedded_config();
    let mut core = Core::new(&cfg);
    let mut out = Outputs::default();
    let mut changes = Vec::new();
    let mut spend = Vec::new();
    let mut inputs: Vec<(String, Vec<u8>)> = sample_files()
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).expect("sample");
            (p.display().to_string(), bytes)
        })
        .collect();
    inputs.push(("extra".to_owned(), extra_input()));
    for (name, bytes) in &inputs {
        for (offset, seg) in split_values(bytes).into_iter().enumerate() {
            let range = match seg {
                Segment::Value(r) | Segment::Invalid(r, _) => r,
            };
            let src = RecordSource {
                source: Arc::from(name.as_str()),
                partition: Some(0),
                offset: i64::try_from(offset).expect("offset"),
                timestamp_ms: None,
            };
            core.process(&bytes[range], &src, &mut out);
            changes.append(&mut out.optout_changes);
            spend.append(&mut out.spend_changes);
            out.clear();
        }
    }
    let mut failures = Vec::new();
    for c in &changes {
        let v = serde_json::to_value(c).expect("serialize opt-out change");
        if let Err(e) = schemas.check(OPTOUT_CHANGE, &v, "opt-out change") {
            failures.push(e);
        }
    }
    for s in &spend {
        let v = json!([serde_json::to_value(s).expect("serialize spend record")]);
        if let Err(e) = schemas.check(SPEND, &v, "spend changelog value") {
            failures.push(e);
        }
    }
    assert_no_failures(&failures);
    assert!(!spend.is_empty(), "no spend change");
    let values: Vec<Value> = changes
        .iter()
        .map(|c| serde_json::to_value(c).expect("serialize"))
        .collect();
    assert!(
        values.iter().any(|v| v["asOf"].is_i64()) && values.iter().any(|v| v["asOf"].is_null()),
        "expected opt-out changes with and without asOf: {values:#?}"
    );
}

/// Hand-made records, each valid, and broken copies the schemas must reject.
#[test]
fn output_schemas_reject_broken_records() {
    let schemas = Schemas::load();
    let event = json!({
        "eventType": "TEXT_DELIVERED", "eventTimestamp": 1762000000950_i64, "messageId": "m-1",
        "messageRequestTimestamp": 1762000000000_i64, "destinationPhoneNumber": "+14165550123",
        "recordId": "samples/x.json:0:0", "channel": "SMS", "statusClass": "ACCEPTED",
        "costUsd": "0.01181", "spendMonth": "2025-11", "monthToDateSpendUsd": "0.01181",
        "latencyMs": 950, "destinationOptedOut": false, "duplicate": false, "lateReceipt": false
    });
    let inbound = json!({
        "originationNumber": "+14255550182", "destinationNumber": "+12125550101",
        "messageBody": "STOP", "recordId": "in:3:0", "keyword": "STOP", "action": "OPT_OUT",
        "optOutList": "Marketing", "optedOut": true
    });
    let unchanged = json!({
        "originationNumber": "+14255550182", "destinationNumber": "+12125550101",
        "messageBody": "STOP", "recordId": "in:3:0", "keyword": "STOP", "action": "OPT_OUT",
        "optOutList": "Marketing", "optedOut": false, "stateUnchanged": "newer_opt_in"
    });
    let alarm = json!({
        "recordType": "ALARM_STATE_CHANGE", "id": "alarm:sms-5-cents:2023-06:1",
        "alarmName": "sms-5-cents", "channel": "SMS", "month": "2023-06",
        "metric": "TextMessageMonthlySpend", "comparison": "GreaterThanOrEqualToThreshold",
        "thresholdUsd": "0.05", "previousState": "OK", "newState": "ALARM", "spendUsd": "0.09582"
    });
    let limit = json!({
        "recordType": "LIMIT_REACHED", "id": "limit:SMS:2025-11", "channel": "SMS",
        "month": "2025-11", "monthlyLimitUsd": "100", "spendUsd": "100.51483"
    });
    let reply = json!({
        "to": "+14255550182", "from": "+12125550101", "body": "bye", "action": "OPT_OUT",
        "keyword": "STOP", "inReplyTo": null
    });
    let dead = json!({
        "recordId": "f:1:0", "reason": "missing_field", "field": "messageId",
        "detail": "missing required field messageId", "payload": "{}", "payloadEncoding": "utf8",
        "envelopes": [], "source": "f", "offset": 1, "sub": 0
    });
    let spend =
        json!([{"month": "2025-11", "channel": "SMS", "spendUsd": "0.01181", "messages": 1}]);
    let optouts = json!([{"optOutList": "Default", "number": "+14255550182", "optedOut": true}]);
    let change = json!({
        "optOutList": "Default", "number": "+14255550182", "optedOut": true, "asOf": null, "cause": "c"
    });

    let set = |base: &Value, ptr: &str, value: Value| {
        let mut v = base.clone();
        *v.pointer_mut(ptr)
            .unwrap_or_else(|| panic!("no {ptr} in {base}")) = value;
        v
    };
    let remove = |base: &Value, key: &str| {
        let mut v = base.clone();
        v.as_object_mut().expect("object").remove(key);
        v
    };
    let add = |base: &Value, key: &str, value: Value| {
        let mut v = base.clone();
        v[key] = value;
        v
    };

    let valid: Vec<(&str, &Value)> = vec![
        (ENRICHED_EVENT, &event),
        (ENRICHED_INBOUND, &inbound),
        (ENRICHED_INBOUND, &unchanged),
        (ALARM, &alarm),
        (ALARM, &limit),
        (REPLY, &reply),
        (DEAD_LETTER, &dead),
        (SPEND, &spend),
        (OPTOUTS, &optouts),
        (OPTOUT_CHANGE, &change),
    ];
    let mut failures = Vec::new();
    for (name, v) in &valid {
        if let Err(e) = schemas.check(name, v, "hand-made valid record") {
            failures.push(e);
        }
    }

    let broken: Vec<(&str, &str, Value)> = vec![
        (
            ENRICHED_EVENT,
            "costUsd as a number",
            set(&event, "/costUsd", json!(0.01181)),
        ),
        (
            ENRICHED_EVENT,
            "costUsd with trailing zero",
            set(&event, "/costUsd", json!("0.0100")),
        ),
        (
            ENRICHED_EVENT,
            "costUsd with exponent",
            set(&event, "/costUsd", json!("1e-2")),
        ),
        (
            ENRICHED_EVENT,
            "negative spend",
            set(&event, "/monthToDateSpendUsd", json!("-1")),
        ),
        (
            ENRICHED_EVENT,
            "month 13",
            set(&event, "/spendMonth", json!("2025-13")),
        ),
        (
            ENRICHED_EVENT,
            "month without zero",
            set(&event, "/spendMonth", json!("2025-1")),
        ),
        (
            ENRICHED_EVENT,
            "channel from the wrong prefix",
            set(&event, "/channel", json!("MMS")),
        ),
        (
            ENRICHED_EVENT,
            "unknown channel",
            set(&event, "/channel", json!("FAX")),
        ),
        (
            ENRICHED_EVENT,
            "wrong status class",
            set(&event, "/statusClass", json!("IN_FLIGHT")),
        ),
        (
            ENRICHED_EVENT,
            "class of a newer status",
            set(&event, "/eventType", json!("TEXT_NEW")),
        ),
        (
            ENRICHED_EVENT,
            "latency without request time",
            remove(&event, "messageRequestTimestamp"),
        ),
        (
            ENRICHED_EVENT,
            "null latency with request time",
            set(&event, "/latencyMs", Value::Null),
        ),
        (
            ENRICHED_EVENT,
            "opted-out without destination",
            remove(&event, "destinationPhoneNumber"),
        ),
        (
            ENRICHED_EVENT,
            "missing lateReceipt",
            remove(&event, "lateReceipt"),
        ),
        (
            ENRICHED_EVENT,
            "missing recordId",
            remove(&event, "recordId"),
        ),
        (
            ENRICHED_EVENT,
            "recordId not positional",
            set(&event, "/recordId", json!("abc")),
        ),
        (
            ENRICHED_EVENT,
            "input field broken",
            add(&event, "mnc", json!(5)),
        ),
        (
            ENRICHED_INBOUND,
            "unknown action",
            set(&inbound, "/action", json!("UNSUBSCRIBE")),
        ),
        (
            ENRICHED_INBOUND,
            "keyword with action NONE",
            set(&inbound, "/action", json!("NONE")),
        ),
        (
            ENRICHED_INBOUND,
            "null keyword with an action",
            set(&inbound, "/keyword", Value::Null),
        ),
        (
            ENRICHED_INBOUND,
            "lowercase keyword",
            set(&inbound, "/keyword", json!("stop")),
        ),
        (
            ENRICHED_INBOUND,
            "missing optedOut",
            remove(&inbound, "optedOut"),
        ),
        (
            ENRICHED_INBOUND,
            "customer not E.164",
            set(&inbound, "/originationNumber", json!("+0")),
        ),
        (
            ENRICHED_INBOUND,
            "unknown stateUnchanged",
            set(&unchanged, "/stateUnchanged", json!("because")),
        ),
        (
            ENRICHED_INBOUND,
            "newer_opt_in but opted out",
            set(&unchanged, "/optedOut", json!(true)),
        ),
        (
            ENRICHED_INBOUND,
            "already_opted_out but opted in",
            set(&unchanged, "/stateUnchanged", json!("already_opted_out")),
        ),
        (
            ENRICHED_INBOUND,
            "newer_opt_out on an opt-out",
            set(
                &set(&unchanged, "/stateUnchanged", json!("newer_opt_out")),
                "/optedOut",
                json!(true),
            ),
        ),
        (
            ENRICHED_INBOUND,
            "stateUnchanged on HELP",
            set(
                &set(&unchanged, "/action", json!("HELP")),
                "/keyword",
                json!("HELP"),
            ),
        ),
        (
            ALARM,
            "unknown recordType",
            set(&alarm, "/recordType", json!("ALARM")),
        ),
        (
            ALARM,
            "state unchanged",
            set(&alarm, "/newState", json!("OK")),
        ),
        (
            ALARM,
            "metric of another channel",
            set(&alarm, "/metric", json!("MediaMessageMonthlySpend")),
        ),
        (
            ALARM,
            "unknown comparison",
            set(&alarm, "/comparison", json!("LessThanThreshold")),
        ),
        (
            ALARM,
            "threshold as a number",
            set(&alarm, "/thresholdUsd", json!(0.05)),
        ),
        (
            ALARM,
            "alarm id without count",
            set(&alarm, "/id", json!("alarm:sms-5-cents:2023-06")),
        ),
        (ALARM, "extra key", add(&alarm, "note", json!("x"))),
        (
            ALARM,
            "limit key on an alarm",
            add(&alarm, "monthlyLimitUsd", json!("100")),
        ),
        (
            ALARM,
            "zero limit",
            set(&limit, "/monthlyLimitUsd", json!("0")),
        ),
        (
            ALARM,
            "limit id of an unknown channel",
            set(&limit, "/id", json!("limit:FAX:2025-11")),
        ),
        (ALARM, "limit without spend", remove(&limit, "spendUsd")),
        (
            REPLY,
            "to not E.164",
            set(&reply, "/to", json!("14255550182")),
        ),
        (
            REPLY,
            "reply to ordinary text",
            set(&reply, "/action", json!("NONE")),
        ),
        (REPLY, "missing inReplyTo", remove(&reply, "inReplyTo")),
        (REPLY, "empty keyword", set(&reply, "/keyword", json!(""))),
        (
            DEAD_LETTER,
            "unknown reason",
            set(&dead, "/reason", json!("bad")),
        ),
        (
            DEAD_LETTER,
            "field missing for missing_field",
            remove(&dead, "field"),
        ),
        (
            DEAD_LETTER,
            "field on invalid_json",
            set(&dead, "/reason", json!("invalid_json")),
        ),
        (
            DEAD_LETTER,
            "unknown envelope",
            set(&dead, "/envelopes", json!(["kinesis"])),
        ),
        (
            DEAD_LETTER,
            "envelope without innerPayload",
            set(&dead, "/envelopes", json!(["sns"])),
        ),
        (
            DEAD_LETTER,
            "innerPayload without encoding",
            add(&dead, "innerPayload", json!("{}")),
        ),
        (
            DEAD_LETTER,
            "bad base64 payload",
            set(&dead, "/payloadEncoding", json!("base64")),
        ),
        (DEAD_LETTER, "negative sub", set(&dead, "/sub", json!(-1))),
        (DEAD_LETTER, "extra key", add(&dead, "note", json!("x"))),
        (
            SPEND,
            "spend as a number",
            set(&spend, "/0/spendUsd", json!(0.01181)),
        ),
        (
            SPEND,
            "negative messages",
            set(&spend, "/0/messages", json!(-1)),
        ),
        (SPEND, "not an array", spend[0].clone()),
        (
            OPTOUTS,
            "number not E.164",
            set(&optouts, "/0/number", json!("+1 425 555 0182")),
        ),
        (
            OPTOUTS,
            "optedOut as string",
            set(&optouts, "/0/optedOut", json!("true")),
        ),
        (
            OPTOUT_CHANGE,
            "asOf as string",
            set(&change, "/asOf", json!("2025-11-01T00:00:00Z")),
        ),
        (OPTOUT_CHANGE, "missing cause", remove(&change, "cause")),
    ];
    for (name, what, v) in &broken {
        if let Err(e) = schemas.check_rejected(name, v, what) {
            failures.push(e);
        }
    }
    assert_no_failures(&failures);
}

// ---------------------------------------------------------------------------
// The binary, as a user runs it
// ---------------------------------------------------------------------------

fn smsvoice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run smsvoice {args:?}: {e}"))
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn binary_process_writes_valid_outputs() {
    let schemas = Schemas::load();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("out");
    let samples = samples_dir();
    let samples = samples.to_str().expect("utf-8 path");
    let out_str = out_dir.to_str().expect("utf-8 path");

    let out = smsvoice(&["process", "--input", samples, "--out", out_str]);
    assert!(
        out.status.success(),
        "smsvoice process failed\n{}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dead-lettered"),
        "summary lacks dead-lettered\n{}",
        describe(&out)
    );

    let mut failures = Vec::new();
    let counts = validate_output_dir(&schemas, &out_dir, &mut failures);
    assert_no_failures(&failures);
    assert!(
        counts.get(files::EVENTS).copied().unwrap_or(0) > 0,
        "no enriched event from the samples: {counts:?}\n{}",
        describe(&out)
    );
}

#[test]
fn binary_reports_bad_config_and_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_str = tmp.path().join("out");
    let out_str = out_str.to_str().expect("utf-8 path");
    let samples = samples_dir();
    let samples = samples.to_str().expect("utf-8 path");

    let missing_config = "/nonexistent.toml";
    let out = smsvoice(&[
        "process",
        "--config",
        missing_config,
        "--input",
        samples,
        "--out",
        out_str,
    ]);
    assert!(
        !out.status.success(),
        "a missing config must fail\n{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(missing_config),
        "stderr must name the config path\n{}",
        describe(&out)
    );

    let missing_input = "/nonexistent";
    let out = smsvoice(&["process", "--input", missing_input, "--out", out_str]);
    assert!(
        !out.status.success(),
        "a missing input must fail\n{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(missing_input),
        "stderr must name the input path\n{}",
        describe(&out)
    );
}
