use super::*;
use crate::limits::Limits;
use crate::model::Channel;

fn src() -> RecordSource {
    RecordSource {
        source: "t".into(),
        partition: Some(0),
        offset: 9,
        timestamp_ms: Some(1_762_000_000_000),
    }
}

fn decode(bytes: &[u8]) -> Vec<Decoded<'_>> {
    let mut out = Vec::new();
    decode_record(bytes, &src(), &mut out);
    out
}

fn sample(name: &str) -> Vec<u8> {
    let path = format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn accepted<'a>(d: &'a [Decoded<'a>]) -> Vec<&'a Accepted<'a>> {
    d.iter()
        .map(|x| match x {
            Decoded::Accepted(a) => a.as_ref(),
            Decoded::Dead(dl) => panic!("unexpected dead letter: {dl:?}"),
        })
        .collect()
}

fn dead(bytes: &[u8]) -> DeadLetter {
    let d = decode(bytes);
    assert_eq!(
        d.len(),
        1,
        "expected exactly one output for {:?}",
        String::from_utf8_lossy(bytes)
    );
    match &d[0] {
        Decoded::Dead(dl) => (**dl).clone(),
        Decoded::Accepted(a) => panic!("accepted {:?}", a.payload),
    }
}

fn event(bytes: &[u8]) -> DeliveryEvent {
    let d = decode(bytes);
    match &accepted(&d)[..] {
        [a] => match &a.payload {
            Payload::Delivery(e) => e.clone(),
            p => panic!("not a delivery event: {p:?}"),
        },
        other => panic!("expected one payload, got {}", other.len()),
    }
}

const MIN_EVENT: &str =
    r#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1762000000950,"messageId":"m-1"}"#;

fn with(field: &str, value: &str) -> String {
    format!(
        r#"{{"eventType":"TEXT_DELIVERED","eventTimestamp":1762000000950,"messageId":"m-1","{field}":{value}}}"#
    )
}

#[test]
fn raw_sms_sample_decodes_every_field() {
    let e = event(&sample("sms-delivered-carrier.json"));
    assert_eq!(e.event_type, "TEXT_DELIVERED");
    assert_eq!(e.channel, Channel::Sms);
    assert_eq!(e.status(), "DELIVERED");
    assert_eq!(e.status_class, Some(crate::model::StatusClass::Accepted));
    assert_eq!(e.event_timestamp, 1_762_000_000_950);
    assert_eq!(e.message_request_timestamp, Some(1_762_000_000_000));
    assert_eq!(e.message_id, "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b");
    assert_eq!(e.is_final, Some(true));
    assert_eq!(e.mcc.as_deref(), Some("302"));
    assert_eq!(e.mnc.as_deref(), Some("610"));
    assert_eq!(e.carrier_name.as_deref(), Some("Example Mobile"));
    assert_eq!(e.iso_country_code.as_deref(), Some("CA"));
    assert_eq!(e.total_message_parts, Some(1));
    assert_eq!(
        e.total_message_price.map(|u| u.to_string()).as_deref(),
        Some("0.00581")
    );
    assert_eq!(
        e.total_carrier_fee.map(|u| u.to_string()).as_deref(),
        Some("0.006")
    );
    assert_eq!(
        e.protect_configuration_id.as_deref(),
        Some("protect-0123456789abcdef")
    );
    assert_eq!(e.protect_status.as_deref(), Some("ALLOW"));
    assert_eq!(
        e.context
            .as_ref()
            .and_then(|c| c.get("tenant"))
            .map(String::as_str),
        Some("acme")
    );
}

#[test]
fn mms_and_voice_samples_decode() {
    let m = event(&sample("mms-delivered.json"));
    assert_eq!(m.channel, Channel::Mms);
    assert_eq!(m.content_type.as_deref(), Some("MMS"));
    assert_eq!(
        m.total_carrier_fee.map(|u| u.to_string()).as_deref(),
        Some("0.00266")
    );
    let v = event(&sample("voice-completed.json"));
    assert_eq!(v.channel, Channel::Voice);
    assert_eq!(v.call_duration_in_seconds, Some(60));
    assert_eq!(v.total_duration_in_minutes, Some(1));
    assert_eq!(
        v.total_message_price.map(|u| u.to_string()).as_deref(),
        Some("0.013")
    );
    assert_eq!(v.total_carrier_fee, None);
}

#[test]
fn every_event_type_of_the_brief_decodes() {
    for ch in Channel::ALL {
        for status in crate::classify::known_statuses(ch) {
            let et = format!("{}{status}", ch.event_prefix());
            let json =
                format!(r#"{{"eventType":"{et}","eventTimestamp":1762000000950,"messageId":"m"}}"#);
            let e = event(json.as_bytes());
            assert_eq!(e.event_type, et);
            assert_eq!(e.channel, ch);
            assert!(e.status_class.is_some(), "{et} has no class");
        }
    }
    // A known prefix with an unknown suffix is a newer status: accepted.
    let e = event(br#"{"eventType":"RCS_TYPING","eventTimestamp":1762000000950,"messageId":"m"}"#);
    assert_eq!(e.channel, Channel::Rcs);
    assert_eq!(e.status_class, None);
}

#[test]
fn sns_envelope_unwraps_inbound_with_receive_time() {
    let bytes = sample("sns-envelope-inbound.json");
    let d = decode(&bytes);
    let a = accepted(&d);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].envelopes, vec!["sns"]);
    match &a[0].payload {
        Payload::Inbound(m) => {
            assert_eq!(m.origination_number, "+14255550182");
            assert_eq!(m.destination_number, "+12125550101");
            assert_eq!(m.message_body, "STOP");
            assert_eq!(m.message_keyword.as_deref(), Some("JOIN"));
            // 2025-11-01T12:26:40.123Z
            assert_eq!(m.received_at, Some(1_762_000_000_123));
        }
        p => panic!("{p:?}"),
    }
    // raw is the unescaped inner payload, a JSON object of its own
    let v: serde_json::Value = serde_json::from_slice(&a[0].raw).expect("inner json");
    assert_eq!(v["messageBody"], "STOP");
}

#[test]
fn raw_inbound_uses_record_timestamp() {
    let bytes = sample("inbound-stop.json");
    let d = decode(&bytes);
    match &accepted(&d)[0].payload {
        Payload::Inbound(m) => assert_eq!(m.received_at, Some(1_762_000_000_000)),
        p => panic!("{p:?}"),
    }
}

#[test]
fn eventbridge_envelope_borrows_detail() {
    let bytes = sample("eventbridge-envelope-sms.json");
    let d = decode(&bytes);
    let a = accepted(&d);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].envelopes, vec!["eventbridge"]);
    assert!(matches!(a[0].raw, Cow::Borrowed(_)));
    assert!(a[0].raw.starts_with(b"{\"eventType\":\"TEXT_DELIVERED\""));
    match &a[0].payload {
        Payload::Delivery(e) => assert_eq!(e.message_id, "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"),
        p => panic!("{p:?}"),
    }
}

#[test]
fn firehose_batch_yields_each_record_in_order() {
    let bytes = sample("firehose-http-batch.json");
    let d = decode(&bytes);
    let a = accepted(&d);
    let types: Vec<_> = a
        .iter()
        .map(|x| match &x.payload {
            Payload::Delivery(e) => e.event_type.as_str(),
            Payload::Inbound(_) => "inbound",
        })
        .collect();
    assert_eq!(
        types,
        ["TEXT_SUCCESSFUL", "MEDIA_DELIVERED", "VOICE_COMPLETED"]
    );
    let subs: Vec<_> = a.iter().map(|x| x.provenance.sub).collect();
    assert_eq!(subs, [0, 1, 2]);
    assert!(a.iter().all(|x| x.envelopes == ["firehose"]));
}

#[test]
fn concatenated_without_delimiter() {
    let bytes = sample("concatenated-no-delimiter.json");
    let d = decode(&bytes);
    let a = accepted(&d);
    assert_eq!(a.len(), 3);
    // each raw is exactly one object of the record, borrowed
    for x in &a {
        assert!(matches!(x.raw, Cow::Borrowed(_)));
        let _: serde_json::Value = serde_json::from_slice(&x.raw).expect("one object");
    }
    let with_newlines = [MIN_EVENT, "\n", MIN_EVENT, "\r\n  ", MIN_EVENT, "\n"].concat();
    assert_eq!(accepted(&decode(with_newlines.as_bytes())).len(), 3);
}

#[test]
fn bad_object_among_good_ones_is_dead_lettered_alone() {
    let rec = format!("{MIN_EVENT}\n{{\"eventType\":\"TEXT_DELIVERED\"}}\n{MIN_EVENT}");
    let d = decode(rec.as_bytes());
    assert_eq!(d.len(), 3);
    assert!(matches!(d[0], Decoded::Accepted(_)));
    match &d[1] {
        Decoded::Dead(dl) => {
            assert_eq!(dl.reason.code(), "missing_field");
            assert_eq!(dl.payload, br#"{"eventType":"TEXT_DELIVERED"}"#.to_vec());
            assert_eq!(dl.provenance.sub, 1);
        }
        _ => panic!("expected dead letter"),
    }
    assert!(matches!(d[2], Decoded::Accepted(_)));
}

#[test]
fn invalid_json_line_is_skipped_to_next_line() {
    let rec = format!("{MIN_EVENT}\n{{\"eventType\": oops}}\n{MIN_EVENT}\n");
    let d = decode(rec.as_bytes());
    assert_eq!(d.len(), 3);
    match &d[1] {
        Decoded::Dead(dl) => {
            assert_eq!(dl.reason.code(), "invalid_json");
            assert_eq!(dl.payload, br#"{"eventType": oops}"#.to_vec());
        }
        _ => panic!("expected dead letter"),
    }
}

#[test]
fn truncated_record_is_invalid_json() {
    let dl = dead(br#"{"eventType":"TEXT_DELIVERED","eventTimestamp":17"#);
    assert_eq!(dl.reason.code(), "invalid_json");
}

#[test]
fn empty_record() {
    assert_eq!(dead(b"").reason, Reason::EmptyRecord);
    assert_eq!(dead(b" \n\t").reason, Reason::EmptyRecord);
}

#[test]
fn invalid_utf8_keeps_original_bytes() {
    let mut bytes = MIN_EVENT.as_bytes().to_vec();
    let at = bytes.len() - 3;
    bytes[at] = 0xff;
    let dl = dead(&bytes);
    assert_eq!(dl.reason.code(), "invalid_utf8");
    assert_eq!(dl.payload, bytes);
}

#[test]
fn not_an_object() {
    for (json, found) in [
        ("[1,2]", "an array"),
        ("\"x\"", "a string"),
        ("42", "a number"),
        ("true", "a boolean"),
        ("null", "null"),
    ] {
        let dl = dead(json.as_bytes());
        assert_eq!(dl.reason, Reason::NotAnObject { found }, "{json}");
    }
}

#[test]
fn unknown_payload() {
    assert_eq!(dead(br#"{"hello":"world"}"#).reason, Reason::UnknownPayload);
    assert_eq!(dead(b"{}").reason, Reason::UnknownPayload);
}

#[test]
fn unknown_prefix_and_subscription_filters() {
    let dl =
        dead(br#"{"eventType":"FAX_DELIVERED","eventTimestamp":1762000000950,"messageId":"m"}"#);
    assert_eq!(dl.reason.code(), "unknown_event_type");
    assert_eq!(dl.reason.field(), Some("eventType"));
    for f in ["TEXT_ALL", "MEDIA_ALL", "VOICE_ALL", "ALL"] {
        let j = format!(r#"{{"eventType":"{f}","eventTimestamp":1762000000950,"messageId":"m"}}"#);
        assert_eq!(
            dead(j.as_bytes()).reason.code(),
            "subscription_filter_event_type",
            "{f}"
        );
    }
}

#[test]
fn missing_required_fields_are_named() {
    for (json, field) in [
        (
            r#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1762000000950}"#,
            "messageId",
        ),
        (
            r#"{"eventType":"TEXT_DELIVERED","messageId":"m"}"#,
            "eventTimestamp",
        ),
        (
            r#"{"originationNumber":"+14255550182","messageBody":"STOP"}"#,
            "destinationNumber",
        ),
        (
            r#"{"destinationNumber":"+12125550101","messageBody":"STOP","inboundMessageId":"i"}"#,
            "originationNumber",
        ),
        (
            r#"{"originationNumber":"+14255550182","destinationNumber":"+12125550101"}"#,
            "messageBody",
        ),
    ] {
        let dl = dead(json.as_bytes());
        assert_eq!(
            dl.reason,
            Reason::MissingField {
                field: field.into()
            },
            "{json}"
        );
    }
}

#[test]
fn wrong_types_are_named() {
    for (field, value) in [
        ("eventTimestamp", "\"1762000000950\""),
        ("eventTimestamp", "1.762e12"),
        ("isFinal", "\"true\""),
        ("mnc", "5"),
        ("mcc", "302"),
        ("totalMessageParts", "\"1\""),
        ("messageRequestTimestamp", "true"),
        ("context", "[\"a\"]"),
        ("totalMessagePrice", "\"0.00581\""),
        ("totalCarrierFee", "{}"),
        ("messageId", "12"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(MIN_EVENT).expect("json");
        v[field] = serde_json::from_str(value).expect("json value");
        let json = v.to_string();
        let dl = dead(json.as_bytes());
        assert_eq!(dl.reason.code(), "wrong_type", "{json}: {:?}", dl.reason);
        assert_eq!(dl.reason.field(), Some(field), "{json}");
    }
    // nested path
    let dl = dead(with("context", r#"{"tenant":7}"#).as_bytes());
    assert_eq!(dl.reason.code(), "wrong_type");
    assert_eq!(dl.reason.field(), Some("context.tenant"));
}

#[test]
fn null_optional_fields_are_absent() {
    let e = event(with("totalMessagePrice", "null").as_bytes());
    assert_eq!(e.total_message_price, None);
    let e = event(with("mnc", "null").as_bytes());
    assert_eq!(e.mnc, None);
}

#[test]
fn duplicate_field() {
    let dl = dead(
        br#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1762000000950,"messageId":"m","messageId":"n"}"#,
    );
    assert_eq!(
        dl.reason,
        Reason::DuplicateField {
            field: "messageId".into()
        }
    );
}

#[test]
fn invalid_values() {
    for (field, value) in [
        ("eventTimestamp", "-5"),
        ("messageRequestTimestamp", "99999999999999"),
        ("totalMessageParts", "-1"),
    ] {
        let json = if field == "eventTimestamp" {
            format!(r#"{{"eventType":"TEXT_DELIVERED","eventTimestamp":{value},"messageId":"m"}}"#)
        } else {
            with(field, value)
        };
        let dl = dead(json.as_bytes());
        assert_eq!(dl.reason.code(), "invalid_value", "{json}: {:?}", dl.reason);
        assert_eq!(dl.reason.field(), Some(field));
    }
    let dl =
        dead(br#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1762000000950,"messageId":" "}"#);
    assert_eq!(dl.reason.code(), "invalid_value");
}

#[test]
fn invalid_money() {
    for v in ["0.000000000001", "-0.5", "1e400"] {
        let dl = dead(with("totalMessagePrice", v).as_bytes());
        assert_eq!(dl.reason.code(), "invalid_money", "{v}");
        assert_eq!(dl.reason.field(), Some("totalMessagePrice"));
    }
    // exponent notation that is exact is fine
    let e = event(with("totalMessagePrice", "5.81e-3").as_bytes());
    assert_eq!(
        e.total_message_price.map(|u| u.to_string()).as_deref(),
        Some("0.00581")
    );
}

#[test]
fn invalid_phone_number_on_inbound() {
    for n in ["4255550182", "+1 425 555 0182", "", "+0123", "STOP"] {
        let j = format!(
            r#"{{"originationNumber":"{n}","destinationNumber":"+12125550101","messageBody":"STOP"}}"#
        );
        let dl = dead(j.as_bytes());
        assert_eq!(dl.reason.code(), "invalid_phone_number", "{n}");
        assert_eq!(dl.reason.field(), Some("originationNumber"));
    }
    // our own number may be a short code
    let j =
        br#"{"originationNumber":"+14255550182","destinationNumber":"12345","messageBody":"STOP"}"#;
    assert_eq!(accepted(&decode(j)).len(), 1);
}

#[test]
fn invalid_base64_in_firehose() {
    let rec = format!(
        r#"{{"requestId":"r","timestamp":1762000001000,"records":[{{"data":"!!notbase64"}},{{"data":"{}"}}]}}"#,
        base64::engine::general_purpose::STANDARD.encode(MIN_EVENT)
    );
    let d = decode(rec.as_bytes());
    assert_eq!(d.len(), 2);
    match &d[0] {
        Decoded::Dead(dl) => {
            assert_eq!(dl.reason.code(), "invalid_base64");
            assert_eq!(dl.reason.field(), Some("records[0].data"));
            assert_eq!(dl.payload, rec.as_bytes().to_vec());
            assert_eq!(dl.inner_payload.as_deref(), Some(&b"!!notbase64"[..]));
        }
        _ => panic!("expected dead letter"),
    }
    assert!(matches!(d[1], Decoded::Accepted(_)));
}

#[test]
fn bad_payload_inside_envelope_keeps_envelope_and_inner() {
    let inner = r#"{"eventType":"TEXT_DELIVERED","messageId":"m"}"#;
    let rec =
        serde_json::json!({"Type":"Notification","MessageId":"x","Message":inner}).to_string();
    let dl = dead(rec.as_bytes());
    assert_eq!(dl.reason.code(), "missing_field");
    assert_eq!(dl.payload, rec.as_bytes().to_vec());
    assert_eq!(dl.inner_payload.as_deref(), Some(inner.as_bytes()));
    assert_eq!(dl.envelopes, vec!["sns"]);
}

#[test]
fn invalid_envelopes() {
    for (rec, env) in [
        (r#"{"Type":"Notification","Message":{"a":1}}"#, "sns"),
        (
            r#"{"Type":"SubscriptionConfirmation","Message":"confirm"}"#,
            "sns",
        ),
        (r#"{"detail-type":"x","detail":"oops"}"#, "eventbridge"),
        (r#"{"records":"oops"}"#, "firehose"),
        (r#"{"records":[{"nodata":1}]}"#, "firehose"),
    ] {
        let dl = dead(rec.as_bytes());
        match &dl.reason {
            Reason::InvalidEnvelope { envelope, .. } => assert_eq!(*envelope, env, "{rec}"),
            r => panic!("{rec}: {r:?}"),
        }
    }
}

#[test]
fn nesting_too_deep() {
    let mut rec = MIN_EVENT.to_owned();
    for _ in 0..=MAX_NESTING {
        rec = serde_json::json!({"Type":"Notification","Message":rec}).to_string();
    }
    assert_eq!(
        dead(rec.as_bytes()).reason,
        Reason::NestingTooDeep { max: MAX_NESTING }
    );
}

#[test]
fn nested_envelopes_within_limit() {
    // SNS inside a Firehose batch, EventBridge inside SNS
    let eb = format!(
        r#"{{"detail-type":"t","source":"aws.sms-voice","time":"2025-11-01T12:26:40Z","detail":{MIN_EVENT}}}"#
    );
    let sns = serde_json::json!({"Type":"Notification","Message":eb}).to_string();
    let fh = format!(
        r#"{{"records":[{{"data":"{}"}}]}}"#,
        base64::engine::general_purpose::STANDARD.encode(&sns)
    );
    let d = decode(fh.as_bytes());
    let a = accepted(&d);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].envelopes, vec!["firehose", "sns", "eventbridge"]);
}

#[test]
fn enrichment_key_collision_is_flagged() {
    let json = with("channel", "\"X\"");
    let d = decode(json.as_bytes());
    assert!(accepted(&d)[0].has_enrichment_keys);
    let d = decode(MIN_EVENT.as_bytes());
    assert!(!accepted(&d)[0].has_enrichment_keys);
}

#[test]
fn split_values_spans() {
    let s = split_values(b" {} [1]\n{bad\n\"s\"");
    assert_eq!(s.len(), 4);
    assert_eq!(s[0], Segment::Value(1..3));
    assert_eq!(s[1], Segment::Value(4..7));
    assert!(matches!(s[2], Segment::Invalid(ref r, _) if *r == (8..12)));
    assert_eq!(s[3], Segment::Value(13..16));
}

#[test]
fn null_kind_field_still_picks_the_kind() {
    let dl = dead(br#"{"eventType":null,"eventTimestamp":1762000000950,"messageId":"m"}"#);
    assert_eq!(dl.reason.code(), "wrong_type");
    assert_eq!(dl.reason.field(), Some("eventType"));
}

// ------------------------------------------------------------ limits

/// Arrival of `src()`: 2025-11-01T12:26:40Z.
const ARRIVAL: i64 = 1_762_000_000_000;
const SKEW: i64 = crate::limits::DEFAULT_MAX_CLOCK_SKEW_MS;

fn decode_limited<'a>(bytes: &'a [u8], limits: &Limits) -> Vec<Decoded<'a>> {
    let mut out = Vec::new();
    decode_record_with(bytes, &src(), limits, Some(ARRIVAL), &mut out);
    out
}

fn dead_limited(bytes: &[u8], limits: &Limits) -> DeadLetter {
    let d = decode_limited(bytes, limits);
    assert_eq!(d.len(), 1, "{}", String::from_utf8_lossy(bytes));
    match &d[0] {
        Decoded::Dead(dl) => (**dl).clone(),
        Decoded::Accepted(a) => panic!("accepted {:?}", a.payload),
    }
}

fn rfc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn event_at(ts: i64, request: i64) -> String {
    format!(
        r#"{{"eventType":"TEXT_DELIVERED","eventTimestamp":{ts},"messageId":"m-1","messageRequestTimestamp":{request}}}"#
    )
}

fn inbound_json() -> String {
    r#"{"originationNumber":"+14255550182","destinationNumber":"+12125550101","messageBody":"START"}"#
        .to_owned()
}

/// Every place a record carries a time, with the time `t`: (name, record,
/// field named by the dead letter).
fn timed_records(t: i64) -> Vec<(&'static str, String, &'static str)> {
    let ok = ARRIVAL - 1_000;
    let sns = |payload: &str, ts: i64| {
        serde_json::json!({"Type":"Notification","Message":payload,"Timestamp":rfc(ts)}).to_string()
    };
    let eb = |payload: &str, ts: i64| {
        format!(
            r#"{{"detail-type":"x","time":"{}","detail":{payload}}}"#,
            rfc(ts)
        )
    };
    let fh = |payload: &str, ts: i64| {
        format!(
            r#"{{"timestamp":{ts},"records":[{{"data":"{}"}}]}}"#,
            base64::engine::general_purpose::STANDARD.encode(payload)
        )
    };
    let ev = event_at(ok, ok);
    let inb = inbound_json();
    vec![
        ("eventTimestamp", event_at(t, ok), "eventTimestamp"),
        (
            "messageRequestTimestamp",
            event_at(ok, t),
            "messageRequestTimestamp",
        ),
        ("sns event", sns(&ev, t), "Timestamp"),
        ("sns inbound", sns(&inb, t), "Timestamp"),
        ("eventbridge event", eb(&ev, t), "time"),
        ("firehose event", fh(&ev, t), "timestamp"),
        ("firehose inbound", fh(&inb, t), "timestamp"),
        ("sns inside firehose", fh(&sns(&inb, t), ok), "Timestamp"),
        (
            "eventTimestamp inside sns inside eventbridge",
            eb(&sns(&event_at(t, ok), ok), ok),
            "eventTimestamp",
        ),
    ]
}

#[test]
fn times_later_than_arrival_plus_skew_are_dead_letters() {
    let limits = Limits::DEFAULT;
    // at the bound: accepted
    for (what, rec, _) in timed_records(ARRIVAL + SKEW) {
        let d = decode_limited(rec.as_bytes(), &limits);
        assert_eq!(accepted(&d).len(), 1, "{what} at the bound");
    }
    // 1 ms past it, and far in the future (inside the old 2000..2200 range)
    for t in [ARRIVAL + SKEW + 1, 5_680_281_600_000] {
        for (what, rec, field) in timed_records(t) {
            let dl = dead_limited(rec.as_bytes(), &limits);
            assert_eq!(dl.reason.code(), "invalid_value", "{what}: {:?}", dl.reason);
            assert_eq!(dl.reason.field(), Some(field), "{what}");
            assert!(
                dl.reason.to_string().contains("max_clock_skew"),
                "{what}: {}",
                dl.reason
            );
            assert_eq!(dl.payload, rec.as_bytes(), "{what}: original bytes");
        }
    }
    // a larger skew accepts them
    let lax = Limits {
        max_clock_skew_ms: 1_000 * 86_400_000,
        ..Limits::DEFAULT
    };
    for (what, rec, _) in timed_records(ARRIVAL + SKEW + 1) {
        assert_eq!(
            accepted(&decode_limited(rec.as_bytes(), &lax)).len(),
            1,
            "{what}"
        );
    }
    // without an arrival time only the range applies
    for (what, rec, _) in timed_records(5_680_281_600_000) {
        let mut out = Vec::new();
        decode_record_with(rec.as_bytes(), &src(), &limits, None, &mut out);
        assert_eq!(accepted(&out).len(), 1, "{what} without arrival");
    }
    // envelope times outside the range are invalid too
    let dl = dead_limited(
        format!(r#"{{"timestamp":-5,"records":[{{"data":"{}"}}]}}"#, "e30=").as_bytes(),
        &limits,
    );
    assert_eq!(
        (dl.reason.code(), dl.reason.field()),
        ("invalid_value", Some("timestamp"))
    );
}

#[test]
fn record_timestamp_is_the_arrival_time() {
    // decode_record bounds by src.timestamp_ms
    let far = event_at(ARRIVAL + SKEW + 1, ARRIVAL);
    assert_eq!(dead(far.as_bytes()).reason.field(), Some("eventTimestamp"));
    let mut out = Vec::new();
    let no_ts = RecordSource {
        timestamp_ms: None,
        ..src()
    };
    decode_record(far.as_bytes(), &no_ts, &mut out);
    assert_eq!(accepted(&out).len(), 1);
}

#[test]
fn cost_ceiling_per_channel() {
    let limits = Limits::DEFAULT; // 10 USD
    let ev = |ty: &str, price: &str, fee: Option<&str>| {
        let fee = fee.map_or(String::new(), |f| format!(r#","totalCarrierFee":{f}"#));
        format!(
            r#"{{"eventType":"{ty}","eventTimestamp":1762000000950,"messageId":"m-1","totalMessagePrice":{price}{fee}}}"#
        )
    };
    for ok in [
        ev("TEXT_DELIVERED", "10", None),
        ev("TEXT_DELIVERED", "9.99", Some("0.01")),
        ev("VOICE_COMPLETED", "1e1", None),
    ] {
        assert_eq!(
            accepted(&decode_limited(ok.as_bytes(), &limits)).len(),
            1,
            "{ok}"
        );
    }
    for (bad, field) in [
        (
            ev("TEXT_DELIVERED", "10.0000000001", None),
            "totalMessagePrice",
        ),
        (
            ev("TEXT_DELIVERED", "95820000000000", None),
            "totalMessagePrice",
        ),
        (ev("MEDIA_DELIVERED", "1.3e23", None), "totalMessagePrice"),
        (ev("TEXT_DELIVERED", "0.005", Some("11")), "totalCarrierFee"),
        (
            ev("TEXT_DELIVERED", "9.99", Some("0.02")),
            "totalMessagePrice",
        ),
    ] {
        let dl = dead_limited(bad.as_bytes(), &limits);
        assert_eq!(dl.reason.code(), "invalid_money", "{bad}");
        assert_eq!(dl.reason.field(), Some(field), "{bad}");
        assert!(dl.reason.to_string().contains("ceiling"), "{}", dl.reason);
    }
    // per-channel override
    let cfg = crate::config::Config::from_toml(
        "[spend.max_message_cost_usd_per_channel]\nVOICE = \"50\"\nSMS = \"1\"\n",
        "t",
    )
    .expect("valid");
    let l = Limits::new(&cfg);
    assert_eq!(
        accepted(&decode_limited(
            ev("VOICE_COMPLETED", "49", None).as_bytes(),
            &l
        ))
        .len(),
        1
    );
    assert_eq!(
        dead_limited(ev("TEXT_DELIVERED", "2", None).as_bytes(), &l)
            .reason
            .code(),
        "invalid_money"
    );
    assert_eq!(
        accepted(&decode_limited(
            ev("MEDIA_DELIVERED", "2", None).as_bytes(),
            &l
        ))
        .len(),
        1
    );
}

#[test]
fn sizes_are_bounded() {
    let limits = Limits::DEFAULT;
    let long = |n: usize| "x".repeat(n);
    let ctx = |entries: usize, klen: usize, vlen: usize| {
        let mut m = serde_json::Map::new();
        for i in 0..entries {
            m.insert(format!("{i:0klen$}"), serde_json::Value::String(long(vlen)));
        }
        serde_json::Value::Object(m).to_string()
    };
    let inbound = |field: &str, value: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&inbound_json()).expect("json");
        v[field] = serde_json::Value::String(value.to_owned());
        v.to_string()
    };
    // (record, reason, field)
    let cases: Vec<(String, &str, Option<String>)> = vec![
        (
            format!(
                r#"{{"eventType":"TEXT_DELIVERED","eventTimestamp":1762000000950,"messageId":"{}"}}"#,
                long(100_000)
            ),
            "field_too_long",
            Some("messageId".into()),
        ),
        (
            format!(
                r#"{{"eventType":"TEXT_{}","eventTimestamp":1762000000950,"messageId":"m"}}"#,
                long(200)
            ),
            "field_too_long",
            Some("eventType".into()),
        ),
        (
            with("destinationPhoneNumber", &format!("\"+1{}\"", long(200))),
            "field_too_long",
            Some("destinationPhoneNumber".into()),
        ),
        (
            with("context", &ctx(65, 3, 1)),
            "too_many_entries",
            Some("context".into()),
        ),
        (
            with("context", &ctx(1, 1, 1025)),
            "field_too_long",
            Some("context.0".into()),
        ),
        (
            with("context", &ctx(1, 1025, 1)),
            "field_too_long",
            Some("context".into()),
        ),
        (
            inbound("messageBody", &long(8193)),
            "field_too_long",
            Some("messageBody".into()),
        ),
        (
            inbound("inboundMessageId", &long(129)),
            "field_too_long",
            Some("inboundMessageId".into()),
        ),
        (
            inbound("destinationNumber", &long(129)),
            "field_too_long",
            Some("destinationNumber".into()),
        ),
        (
            inbound("originationNumber", &long(100_000)),
            "field_too_long",
            Some("originationNumber".into()),
        ),
        (
            with("x", &format!("{}1{}", "[".repeat(33), "]".repeat(33))),
            "nesting_too_deep",
            None,
        ),
    ];
    for (rec, code, field) in &cases {
        let dl = dead_limited(rec.as_bytes(), &limits);
        assert_eq!(dl.reason.code(), *code, "{:?}", dl.reason);
        assert_eq!(dl.reason.field(), field.as_deref(), "{:?}", dl.reason);
        assert!(
            dl.reason.to_string().len() < 400,
            "bounded detail: {}",
            dl.reason
        );
    }
    // at the limits: accepted
    for rec in [
        format!(
            r#"{{"eventType":"TEXT_DELIVERED","eventTimestamp":1762000000950,"messageId":"{}"}}"#,
            long(128)
        ),
        with("context", &ctx(64, 2, 1024)),
        inbound("messageBody", &long(8192)),
        with("x", &format!("{}1{}", "[".repeat(31), "]".repeat(31))),
    ] {
        assert_eq!(accepted(&decode_limited(rec.as_bytes(), &limits)).len(), 1);
    }
    // brackets inside strings do not count
    let deep_text = with("x", &format!("\"{}\"", "[{".repeat(100)));
    assert_eq!(
        accepted(&decode_limited(deep_text.as_bytes(), &limits)).len(),
        1
    );
    // deep JSON inside an SNS message: the inner text is checked
    let deep = with("x", &format!("{}1{}", "[".repeat(40), "]".repeat(40)));
    let sns = serde_json::json!({"Type":"Notification","Message":deep}).to_string();
    let dl = dead_limited(sns.as_bytes(), &limits);
    assert_eq!(
        (dl.reason.code(), dl.envelopes.clone()),
        ("nesting_too_deep", vec!["sns"])
    );
    assert_eq!(dl.inner_payload.as_deref(), Some(deep.as_bytes()));
}

#[test]
fn oversized_record_keeps_a_bounded_prefix() {
    let limits = Limits {
        max_record_bytes: 10_000,
        ..Limits::DEFAULT
    };
    let ok = with("x", &format!("\"{}\"", "é".repeat(4_900)));
    assert!(ok.len() <= 10_000);
    assert_eq!(accepted(&decode_limited(ok.as_bytes(), &limits)).len(), 1);
    let big = with("x", &format!("\"{}\"", "é".repeat(5_100)));
    let dl = dead_limited(big.as_bytes(), &limits);
    assert_eq!(dl.reason.code(), "record_too_large");
    assert_eq!(dl.reason.field(), None);
    assert!(dl.payload.len() <= crate::limits::OVERSIZED_PAYLOAD_KEPT);
    assert!(big.as_bytes().starts_with(&dl.payload));
    assert!(
        std::str::from_utf8(&dl.payload).is_ok(),
        "cut at a character boundary"
    );
    let detail = dl.reason.to_string();
    assert!(
        detail.contains(&big.len().to_string()) && detail.contains("first"),
        "{detail}"
    );
    // a concatenated record is one record: all of it is dead-lettered once
    let two = format!("{MIN_EVENT}{big}");
    assert_eq!(decode_limited(two.as_bytes(), &limits).len(), 1);
}

#[test]
fn json_depth_scan() {
    assert!(!json_too_deep(b"{}", 1));
    assert!(json_too_deep(b"{\"a\":{}}", 1));
    assert!(!json_too_deep(b"{\"a\":\"{{{{\\\"{{\"}", 1));
    assert!(!json_too_deep(b"[[]]", 2));
    assert!(json_too_deep(b"[[[]]]", 2));
    assert!(!json_too_deep(b"[][][][][][][]", 1));
}
