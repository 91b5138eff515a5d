//! Poison records: single records that a buggy bridge, an attacker or a
//! replayed test fixture could drop into an otherwise correct stream, each of
//! which used to corrupt spend or opt-outs (issue 11). Every one must be
//! dead-lettered (or handled as README "Limits" documents), and a realistic
//! generated stream with them mixed in must end with exactly the generator's
//! own truth for the stream without them: spend and message counts per
//! (month, channel), the alarm and limit record ids that truth implies, and
//! the opt-out table. The truth is the generator's (`generate(..).truth`),
//! computed from its own integer prices, not by the core.
//!
//! Paths: the core (`Core`, as file mode and the oracle tests use it), the
//! Kafka stages (router, message owner, opt-out owner, with forged forwarded
//! records), and the real binary (`smsvoice process`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{json, Value};

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::decode::RecordSource;
use smsvoice::enrich::Outputs;
use smsvoice::generate::{generate, Truth, Workload};
use smsvoice::model::Provenance;
use smsvoice::money::Usd;
use smsvoice::spend::AlarmRecord;
use smsvoice::stages::forward;
use smsvoice::stages::message_owner::{MessageOwner, OwnerOutputs};
use smsvoice::stages::optout_owner::{OptOutOutputs, OptOutOwner};
use smsvoice::stages::router::{route_with, Routed};
use smsvoice::stages::view::View;

/// Arrival time of every record: 2025-11-08T00:00:00Z, after every time the
/// generator writes (its streams span 2025-10-30 .. 2025-11-04).
const ARRIVAL: i64 = 1_762_560_000_000;
/// The default clock-skew allowance (15 minutes).
const SKEW: i64 = 15 * 60_000;
/// 2150-01-01T00:00:00Z: inside the absolute range 2000..2200.
const Y2150: i64 = 5_680_281_600_000;
/// Record size limit of the test configuration.
const MAX_RECORD: usize = 200_000;

/// The embedded default plus alarms and limits that real traffic of the
/// generated streams reaches (or, for RCS and VOICE-50, only a poison
/// record could), and a smaller record size limit.
fn config() -> Config {
    let text = format!(
        "{EMBEDDED_DEFAULT}\n\
         [limits]\nmax_record_bytes = {MAX_RECORD}\n\
         [[spend.alarms]]\nname = \"voice-50\"\nchannel = \"VOICE\"\nthreshold_usd = \"50\"\ncomparison = \"GreaterThanOrEqualToThreshold\"\n\
         [[spend.alarms]]\nname = \"rcs-5\"\nchannel = \"RCS\"\nthreshold_usd = \"5\"\ncomparison = \"GreaterThanThreshold\"\n\
         [[spend.alarms]]\nname = \"sms-1\"\nchannel = \"SMS\"\nthreshold_usd = \"1\"\ncomparison = \"GreaterThanOrEqualToThreshold\"\n\
         [[spend.limits]]\nchannel = \"VOICE\"\nmonthly_limit_usd = \"1\"\n\
         [[spend.limits]]\nchannel = \"RCS\"\nmonthly_limit_usd = \"20\"\n"
    );
    Config::from_toml(&text, "poison test config").expect("test config")
}

fn src(i: usize) -> RecordSource {
    RecordSource {
        source: Arc::from("poison"),
        partition: Some(0),
        offset: i as i64,
        timestamp_ms: Some(ARRIVAL),
    }
}

fn rfc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sns(payload: &str, at: i64) -> String {
    json!({"Type": "Notification", "MessageId": "poison", "Message": payload, "Timestamp": rfc(at)})
        .to_string()
}

fn eventbridge(payload: &str, at: i64) -> String {
    format!(
        r#"{{"version":"0","detail-type":"Text Message Delivery Status Updated","source":"aws.sms-voice","time":"{}","detail":{payload}}}"#,
        rfc(at).replace(".000", "")
    )
}

fn firehose(payloads: &[&str], at: i64) -> String {
    let data: Vec<String> = payloads
        .iter()
        .map(|p| format!(r#"{{"data":"{}"}}"#, b64(p)))
        .collect();
    format!(
        r#"{{"requestId":"poison","timestamp":{at},"records":[{}]}}"#,
        data.join(",")
    )
}

/// A delivery event; `extra` is appended inside the object.
fn event(ty: &str, id: &str, ts: i64, request: i64, extra: &str) -> String {
    format!(
        r#"{{"eventType":"{ty}","eventTimestamp":{ts},"messageId":"{id}","messageRequestTimestamp":{request},"originationPhoneNumber":"+12065550152","destinationPhoneNumber":"+12065550042"{extra}}}"#
    )
}

fn inbound(from: &str, to: &str, body: &str, id: &str) -> String {
    json!({"originationNumber": from, "destinationNumber": to, "messageBody": body,
           "inboundMessageId": id})
    .to_string()
}

/// The id the generator gives message `i` of a stream of `seed`.
fn generated_id(seed: u64, i: usize) -> String {
    format!("{:08x}-{:04x}-4000-8000-{:012x}", seed as u32, i % 65536, i)
}

/// One poison record and the dead letter it must become.
#[derive(Clone, Debug)]
struct Poison {
    what: String,
    record: Vec<u8>,
    reason: &'static str,
    field: Option<&'static str>,
}

fn poison(
    what: impl Into<String>,
    record: impl Into<Vec<u8>>,
    reason: &'static str,
    field: Option<&'static str>,
) -> Poison {
    Poison {
        what: what.into(),
        record: record.into(),
        reason,
        field,
    }
}

/// Number of poison kinds [`poison_kind`] makes.
const KINDS: usize = 26;

/// Poison record number `kind` aimed at a stream of `seed` with `messages`
/// messages; `n` picks the message or customer it targets. Each one, if it
/// were accepted, would change the spend, the alarms or the opt-out table
/// of that stream.
fn poison_kind(kind: usize, seed: u64, messages: usize, n: u64) -> Poison {
    let real = generated_id(seed, (n as usize) % messages.max(1));
    let fresh = format!("poison-{kind}-{n}");
    // a request time inside the generated span (2025-11-01)
    let req = 1_762_000_000_000;
    let price = r#","totalMessagePrice":0.01460,"totalCarrierFee":0.00302"#;
    let past_skew = ARRIVAL + SKEW + 1 + (n % 1_000) as i64;
    let far = Y2150 + (n % 1_000_000) as i64;
    let customer = format!("+1425555{:04}", n % 50);
    let ours = ["+12065550152", "+12125550101", "+18445550100"][(n % 3) as usize];
    let ok_event = event("TEXT_DELIVERED", &fresh, req + 1_000, req, price);
    match kind {
        // 1. far-future and just-past-the-skew event times
        0 => poison(
            "eventTimestamp in 2150",
            event("TEXT_DELIVERED", &fresh, far, req, price),
            "invalid_value",
            Some("eventTimestamp"),
        ),
        1 => poison(
            "eventTimestamp 1 ms past the skew",
            event("TEXT_DELIVERED", &real, past_skew, req, price),
            "invalid_value",
            Some("eventTimestamp"),
        ),
        2 => poison(
            "messageRequestTimestamp in 2150 on a real message",
            event("TEXT_DELIVERED", &real, req + 9_000, far, price),
            "invalid_value",
            Some("messageRequestTimestamp"),
        ),
        3 => poison(
            "SNS Timestamp in 2150 around an event",
            sns(&ok_event, far),
            "invalid_value",
            Some("Timestamp"),
        ),
        4 => poison(
            "EventBridge time in 2150",
            eventbridge(&ok_event, far),
            "invalid_value",
            Some("time"),
        ),
        5 => poison(
            "Firehose timestamp past the skew",
            firehose(&[&ok_event, &ok_event], past_skew),
            "invalid_value",
            Some("timestamp"),
        ),
        6 => poison(
            "eventTimestamp in 2150 inside SNS inside Firehose",
            firehose(
                &[&sns(
                    &event("VOICE_COMPLETED", &fresh, far, req, price),
                    req,
                )],
                req,
            ),
            "invalid_value",
            Some("eventTimestamp"),
        ),
        // 3. future receive times on inbound: a START that would stand
        //    against every later STOP
        7 => poison(
            "SNS START in 2150",
            sns(&inbound(&customer, ours, "START", &fresh), far),
            "invalid_value",
            Some("Timestamp"),
        ),
        8 => poison(
            "Firehose START past the skew",
            firehose(&[&inbound(&customer, ours, "UNSTOP", &fresh)], past_skew),
            "invalid_value",
            Some("timestamp"),
        ),
        9 => poison(
            "EventBridge STOP in 2150",
            eventbridge(&inbound(&customer, ours, "STOP", &fresh), far),
            "invalid_value",
            Some("time"),
        ),
        // 2. absurd money, on real messages (a correction) and new ones
        10 => poison(
            "price 95820000000000 on a real message",
            event(
                "TEXT_DELIVERED",
                &real,
                req + 5_000,
                req,
                r#","totalMessagePrice":95820000000000"#,
            ),
            "invalid_money",
            Some("totalMessagePrice"),
        ),
        11 => poison(
            "price 1.3e23",
            event(
                "MEDIA_DELIVERED",
                &fresh,
                req + 5_000,
                req,
                r#","totalMessagePrice":1.3e23"#,
            ),
            "invalid_money",
            Some("totalMessagePrice"),
        ),
        12 => poison(
            "price 1e-10 over the ceiling as a correction",
            event(
                "TEXT_DELIVERED",
                &real,
                req + 4_000_000,
                req,
                r#","totalMessagePrice":10.0000000001"#,
            ),
            "invalid_money",
            Some("totalMessagePrice"),
        ),
        13 => poison(
            "carrier fee over the ceiling",
            event(
                "RCS_READ",
                &fresh,
                req + 5_000,
                req,
                r#","totalMessagePrice":0.004,"totalCarrierFee":11"#,
            ),
            "invalid_money",
            Some("totalCarrierFee"),
        ),
        14 => poison(
            "price + fee over the ceiling",
            event(
                "VOICE_COMPLETED",
                &real,
                req + 4_000_000,
                req,
                r#","totalMessagePrice":9.99,"totalCarrierFee":0.02"#,
            ),
            "invalid_money",
            Some("totalMessagePrice"),
        ),
        // 4. unbounded fields
        15 => poison(
            "messageId of 100,000 characters",
            event("TEXT_DELIVERED", &"m".repeat(100_000), req + 1, req, price),
            "field_too_long",
            Some("messageId"),
        ),
        16 => poison(
            "eventType of 200 characters",
            event(
                &format!("TEXT_{}", "X".repeat(200)),
                &fresh,
                req + 1,
                req,
                price,
            ),
            "field_too_long",
            Some("eventType"),
        ),
        17 => {
            let ctx: serde_json::Map<String, Value> =
                (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
            poison(
                "context of 65 entries",
                event(
                    "TEXT_DELIVERED",
                    &real,
                    req + 2,
                    req,
                    &format!(r#","context":{}{price}"#, Value::Object(ctx)),
                ),
                "too_many_entries",
                Some("context"),
            )
        }
        18 => poison(
            "context value of 2 KiB",
            event(
                "TEXT_DELIVERED",
                &real,
                req + 3,
                req,
                &format!(r#","context":{{"tenant":"{}"}}{price}"#, "t".repeat(2048)),
            ),
            "field_too_long",
            Some("context.tenant"),
        ),
        19 => poison(
            "context key of 2 KiB",
            event(
                "TEXT_DELIVERED",
                &real,
                req + 3,
                req,
                &format!(r#","context":{{"{}":"x"}}{price}"#, "k".repeat(2048)),
            ),
            "field_too_long",
            Some("context"),
        ),
        20 => poison(
            "messageBody of 9,000 bytes",
            sns(
                &inbound(
                    &customer,
                    ours,
                    &format!("START {}", "x".repeat(9_000)),
                    &fresh,
                ),
                req,
            ),
            "field_too_long",
            Some("messageBody"),
        ),
        21 => poison(
            "inboundMessageId of 200 bytes",
            sns(&inbound(&customer, ours, "START", &"i".repeat(200)), req),
            "field_too_long",
            Some("inboundMessageId"),
        ),
        22 => poison(
            "destinationNumber of 200 bytes",
            sns(&inbound(&customer, &"9".repeat(200), "STOP", &fresh), req),
            "field_too_long",
            Some("destinationNumber"),
        ),
        23 => poison(
            "JSON nested 40 deep",
            event(
                "TEXT_DELIVERED",
                &fresh,
                req + 1,
                req,
                &format!(r#","x":{}1{}{price}"#, "[".repeat(40), "]".repeat(40)),
            ),
            "nesting_too_deep",
            None,
        ),
        24 => poison(
            "envelopes nested 6 deep",
            {
                let mut r = event("TEXT_DELIVERED", &fresh, req + 1, req, price);
                for _ in 0..6 {
                    r = json!({"Type": "Notification", "Message": r}).to_string();
                }
                r
            },
            "nesting_too_deep",
            None,
        ),
        _ => poison(
            "record of 250 KB",
            event(
                "TEXT_DELIVERED",
                &fresh,
                req + 1,
                req,
                &format!(r#","carrierName":"{}"{price}"#, "c".repeat(250_000)),
            ),
            "record_too_large",
            None,
        ),
    }
}

fn alarm_id(a: &AlarmRecord) -> String {
    match a {
        AlarmRecord::AlarmStateChange { id, .. } | AlarmRecord::LimitReached { id, .. } => {
            id.clone()
        }
    }
}

/// The alarm and limit record ids the truth implies. The generator's spend
/// only ever rises (a correction raises the last event's price, and the
/// ledger keeps the latest priced event), so each alarm fires at most once
/// per month (`:1`) and exactly when the final spend breaches it; a limit
/// record exists exactly when the final spend reaches the limit.
fn expected_alarm_ids(cfg: &Config, truth: &Truth) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for ((month, channel), &units) in &truth.spend_units {
        let spend = Usd::from_units(units);
        for a in &cfg.spend.alarms {
            if a.channel.as_str() == channel && a.comparison.breached(spend, a.threshold_usd) {
                ids.insert(format!("alarm:{}:{month}:1", a.name));
            }
        }
        for l in &cfg.spend.limits {
            if l.channel.as_str() == channel && spend >= l.monthly_limit_usd {
                ids.insert(format!("limit:{channel}:{month}"));
            }
        }
    }
    ids
}

/// What a core run ended with.
struct Run {
    spend: BTreeMap<(String, String), i128>,
    messages: BTreeMap<(String, String), u64>,
    optouts: BTreeMap<(String, String), bool>,
    alarm_ids: BTreeSet<String>,
    events: usize,
    inbound: usize,
    /// Dead letters per record index: (reason, field).
    dead: BTreeMap<usize, Vec<(String, Option<String>)>>,
    late: u64,
}

fn run_core(cfg: &Config, records: &[Vec<u8>]) -> Run {
    let mut core = Core::new(cfg);
    let mut out = Outputs::default();
    let mut run = Run {
        spend: BTreeMap::new(),
        messages: BTreeMap::new(),
        optouts: BTreeMap::new(),
        alarm_ids: BTreeSet::new(),
        events: 0,
        inbound: 0,
        dead: BTreeMap::new(),
        late: 0,
    };
    for (i, r) in records.iter().enumerate() {
        core.process(r, &src(i), &mut out);
        run.events += out.events.len();
        run.inbound += out.inbound.len();
        run.alarm_ids.extend(out.alarms.iter().map(alarm_id));
        for d in &out.dead_letters {
            run.dead.entry(i).or_default().push((
                d.reason.code().to_owned(),
                d.reason.field().map(str::to_owned),
            ));
        }
        out.clear();
    }
    for s in core.spend_totals() {
        let key = (s.month.to_string(), s.channel.to_string());
        run.spend.insert(key.clone(), s.spend_usd.units());
        run.messages.insert(key, s.messages);
    }
    run.optouts = core
        .optout_table()
        .into_iter()
        .map(|o| ((o.opt_out_list, o.number), o.opted_out))
        .collect();
    run.late = core.counters().late;
    run
}

/// Inserts the poison records into the stream; returns the stream and, per
/// poison, its index in it.
fn mix(clean: &[Vec<u8>], poisons: &[(Poison, u16)]) -> (Vec<Vec<u8>>, Vec<(usize, Poison)>) {
    let mut at: Vec<(usize, usize)> = poisons
        .iter()
        .enumerate()
        .map(|(k, (_, frac))| ((usize::from(*frac) * (clean.len() + 1)) >> 16, k))
        .collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(clean.len() + poisons.len());
    let mut placed = Vec::new();
    let mut next = at.iter().peekable();
    for i in 0..=clean.len() {
        while let Some(&&(pos, k)) = next.peek() {
            if pos != i {
                break;
            }
            placed.push((out.len(), poisons[k].0.clone()));
            out.push(poisons[k].0.record.clone());
            next.next();
        }
        if let Some(r) = clean.get(i) {
            out.push(r.clone());
        }
    }
    (out, placed)
}

/// The mixed stream against the truth of the clean one.
fn check_mixed(w: &Workload, poisons: &[(Poison, u16)]) -> Result<(), String> {
    let cfg = config();
    let g = generate(w);
    let (records, placed) = mix(&g.records, poisons);
    let run = run_core(&cfg, &records);
    let mut errors = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            errors.push(what);
        }
    };
    expect(
        run.spend == g.truth.spend_units,
        format!("spend {:?} != truth {:?}", run.spend, g.truth.spend_units),
    );
    expect(
        run.messages == g.truth.messages,
        format!(
            "messages {:?} != truth {:?}",
            run.messages, g.truth.messages
        ),
    );
    expect(
        run.optouts == g.truth.optouts,
        format!("opt-outs {:?} != truth {:?}", run.optouts, g.truth.optouts),
    );
    let alarms = expected_alarm_ids(&cfg, &g.truth);
    expect(
        run.alarm_ids == alarms,
        format!("alarms {:?} != truth {alarms:?}", run.alarm_ids),
    );
    expect(
        run.events == g.truth.events,
        format!("events {} != {}", run.events, g.truth.events),
    );
    expect(
        run.inbound == g.truth.inbound,
        format!("inbound {} != {}", run.inbound, g.truth.inbound),
    );
    expect(run.late == 0, format!("{} late receipts", run.late));
    let dead: usize = run.dead.values().map(Vec::len).sum();
    expect(
        dead == g.truth.malformed + poisons.len(),
        format!(
            "{dead} dead letters, expected {} + {}",
            g.truth.malformed,
            poisons.len()
        ),
    );
    for (i, p) in &placed {
        let got = run.dead.get(i).cloned().unwrap_or_default();
        let want = vec![(p.reason.to_owned(), p.field.map(str::to_owned))];
        expect(
            got == want,
            format!("{}: dead letters {got:?}, expected {want:?}", p.what),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn workload(seed: u64, messages: usize) -> Workload {
    Workload {
        seed,
        messages,
        ..Workload::default()
    }
}

#[test]
fn every_poison_kind_alone_is_a_precise_dead_letter() {
    let cfg = config();
    for kind in 0..KINDS {
        for n in [0, 7, 1_234_567] {
            let p = poison_kind(kind, 1, 100, n);
            let run = run_core(&cfg, std::slice::from_ref(&p.record));
            let got = run.dead.get(&0).cloned().unwrap_or_default();
            assert_eq!(
                got,
                vec![(p.reason.to_owned(), p.field.map(str::to_owned))],
                "{} ({kind}, {n})",
                p.what
            );
            assert_eq!((run.events, run.inbound), (0, 0), "{}", p.what);
            assert!(
                run.spend.is_empty() && run.alarm_ids.is_empty(),
                "{}",
                p.what
            );
        }
    }
}

#[test]
fn realistic_stream_with_every_poison_kind_equals_the_truth_without_them() {
    let w = workload(11, 3_000);
    let poisons: Vec<(Poison, u16)> = (0..KINDS * 3)
        .map(|k| {
            let n = (k as u64).wrapping_mul(2_654_435_761);
            (
                poison_kind(k % KINDS, w.seed, w.messages, n),
                (n % 65_536) as u16,
            )
        })
        .collect();
    // the truth fires alarms and limits, so a wrong one would show
    let cfg = config();
    let g = generate(&w);
    let alarms = expected_alarm_ids(&cfg, &g.truth);
    for id in [
        "alarm:sms-5-cents:2025-11:1",
        "alarm:mms-1-dollar:2025-11:1",
        "limit:VOICE:2025-11",
    ] {
        assert!(
            alarms.contains(id),
            "{id} not reached by the truth: {alarms:?}"
        );
    }
    assert!(!alarms
        .iter()
        .any(|a| a.contains("RCS") || a.contains("voice-50")));
    check_mixed(&w, &poisons).unwrap_or_else(|e| panic!("{e}"));
    // and without envelopes
    let raw = Workload {
        envelopes: false,
        ..workload(12, 2_000)
    };
    check_mixed(&raw, &poisons).unwrap_or_else(|e| panic!("{e}"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random poison records at random places in random valid streams:
    /// spend, alarms and opt-outs equal the truth of the stream without them.
    #[test]
    fn random_poison_in_random_streams(
        seed in 1u64..1_000_000,
        messages in 20usize..400,
        envelopes in any::<bool>(),
        duplicate_pct in 0u32..15,
        correction_pct in 0u32..30,
        inbound_per_mille in 0u32..200,
        poisons in proptest::collection::vec((0usize..KINDS, any::<u64>(), any::<u16>()), 1..16),
    ) {
        let w = Workload {
            seed,
            messages,
            envelopes,
            duplicate_pct,
            correction_pct,
            inbound_per_mille,
            ..Workload::default()
        };
        let poisons: Vec<(Poison, u16)> = poisons
            .into_iter()
            .map(|(kind, n, at)| (poison_kind(kind, seed, messages, n), at))
            .collect();
        if let Err(e) = check_mixed(&w, &poisons) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// ----------------------------------------------------------- the issue's cases

fn one(cfg: &Config, records: &[String]) -> (Core, Outputs) {
    let mut core = Core::new(cfg);
    let mut all = Outputs::default();
    let mut out = Outputs::default();
    for (i, r) in records.iter().enumerate() {
        core.process(r.as_bytes(), &src(i), &mut out);
        all.events.append(&mut out.events);
        all.inbound.append(&mut out.inbound);
        all.dead_letters.append(&mut out.dead_letters);
        all.alarms.append(&mut out.alarms);
        all.replies.append(&mut out.replies);
        out.clear();
    }
    (core, all)
}

/// Issue case 1: one event in 2150 no longer stops spend counting.
#[test]
fn far_future_event_does_not_stop_spend_counting() {
    let req = 1_762_000_000_000;
    let p = r#","totalMessagePrice":0.0146,"totalCarrierFee":0.00302"#;
    let records = [
        event("TEXT_SUCCESSFUL", "m-1", req + 100, req, p),
        event("TEXT_DELIVERED", "m-1", req + 2_000, req, p),
        event("TEXT_DELIVERED", "bogus", Y2150, req, p),
        event("TEXT_SUCCESSFUL", "m-2", req + 200, req, p),
        event("TEXT_DELIVERED", "m-2", req + 3_000, req, p),
    ];
    let (core, out) = one(&config(), &records);
    assert_eq!(core.total_spend().to_string(), "0.03524");
    assert_eq!(out.events.len(), 4);
    assert!(out.events.iter().all(|e| !e.enrichment.late_receipt));
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].reason.code(), "invalid_value");
    assert_eq!(out.dead_letters[0].reason.field(), Some("eventTimestamp"));
    // the watermark never passed the arrival time plus the skew
    assert!(core
        .ledger()
        .watermark()
        .is_some_and(|w| w <= ARRIVAL + SKEW));
}

/// Issue case 2: an absurd price is not counted and fires nothing; a price
/// at the ceiling is counted, one unit above it is not.
#[test]
fn absurd_prices_are_not_counted() {
    let req = 1_762_000_000_000;
    let cfg = config();
    let records = [
        event(
            "TEXT_DELIVERED",
            "a-1",
            req + 1,
            req,
            r#","totalMessagePrice":95820000000000"#,
        ),
        event(
            "TEXT_DELIVERED",
            "a-2",
            req + 1,
            req,
            r#","totalMessagePrice":1.3e23"#,
        ),
        event(
            "VOICE_COMPLETED",
            "a-3",
            req + 1,
            req,
            r#","totalMessagePrice":1.3E+23"#,
        ),
    ];
    let (core, out) = one(&cfg, &records);
    assert_eq!(core.total_spend(), Usd::ZERO);
    assert!(out.alarms.is_empty(), "{:?}", out.alarms);
    assert!(out
        .dead_letters
        .iter()
        .all(|d| d.reason.code() == "invalid_money"));
    assert_eq!(out.dead_letters.len(), 3);

    // at the ceiling: counted; a correction above it: dead letter, the
    // message keeps its price
    let records = [
        event(
            "TEXT_SUCCESSFUL",
            "c-1",
            req + 1,
            req,
            r#","totalMessagePrice":9.99,"totalCarrierFee":0.01"#,
        ),
        event(
            "TEXT_DELIVERED",
            "c-1",
            req + 2,
            req,
            r#","totalMessagePrice":10,"totalCarrierFee":0.0000000001"#,
        ),
        event(
            "TEXT_DELIVERED",
            "c-1",
            req + 3,
            req,
            r#","totalMessagePrice":10.0000000001"#,
        ),
    ];
    let (core, out) = one(&cfg, &records);
    assert_eq!(core.total_spend().to_string(), "10");
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.dead_letters.len(), 2);
    // a per-channel override raises the ceiling for that channel only
    let voice = Config::from_toml(
        "[spend.max_message_cost_usd_per_channel]\nVOICE = \"60\"\n",
        "t",
    )
    .expect("config");
    let records = [
        event(
            "VOICE_COMPLETED",
            "v-1",
            req + 1,
            req,
            r#","totalMessagePrice":59.5"#,
        ),
        event(
            "TEXT_DELIVERED",
            "s-1",
            req + 1,
            req,
            r#","totalMessagePrice":59.5"#,
        ),
    ];
    let (core, out) = one(&voice, &records);
    assert_eq!(core.total_spend().to_string(), "59.5");
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].reason.code(), "invalid_money");
}

const CUST: &str = "+14255550182";
/// Service-managed number on the Default list.
const SVC: &str = "+12065550152";

fn inbound_at(body: &str, id: &str, at: i64) -> String {
    sns(&inbound(CUST, SVC, body, id), at)
}

/// Issue case 3: a START in 2150 no longer disables a later STOP.
#[test]
fn far_future_start_does_not_disable_stop() {
    let now = ARRIVAL - 60_000;
    let (core, out) = one(
        &config(),
        &[
            inbound_at("START", "s", Y2150),
            inbound_at("STOP", "t", now),
        ],
    );
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].reason.field(), Some("Timestamp"));
    assert_eq!(out.inbound.len(), 1);
    let stop = &out.inbound[0].enrichment;
    assert!(stop.opted_out);
    assert_eq!(stop.state_unchanged, None);
    assert_eq!(
        core.optout_table()
            .iter()
            .map(|o| o.opted_out)
            .collect::<Vec<_>>(),
        vec![true]
    );
    // within the skew the START is accepted, and a STOP received earlier
    // then says why it changed nothing
    let (_, out) = one(
        &config(),
        &[
            inbound_at("START", "s", ARRIVAL + SKEW),
            inbound_at("STOP", "t", now),
        ],
    );
    let stop = &out.inbound[1];
    assert!(!stop.enrichment.opted_out);
    let v: Value = serde_json::from_slice(&stop.json).expect("json");
    assert_eq!(v["stateUnchanged"], "newer_opt_in");
    assert_eq!(v["optedOut"], false);
    assert_eq!(v["action"], "OPT_OUT");
}

/// STOP and START with equal receive times, in both orders: the opt-out wins.
#[test]
fn equal_receive_times_opt_out_wins_both_orders() {
    let t = ARRIVAL - 5_000;
    for order in [["STOP", "START"], ["START", "STOP"]] {
        for ids in [["a", "b"], ["b", "a"]] {
            let records = [
                inbound_at(order[0], ids[0], t),
                inbound_at(order[1], ids[1], t),
            ];
            let (core, out) = one(&config(), &records);
            assert!(core.optout().is_opted_out(SVC, CUST), "{order:?} {ids:?}");
            let last: Value = serde_json::from_slice(&out.inbound[1].json).expect("json");
            assert_eq!(last["optedOut"], true, "{order:?} {ids:?}");
            if order[1] == "START" {
                assert_eq!(last["stateUnchanged"], "opt_out_wins_tie");
            } else {
                assert!(last.get("stateUnchanged").is_none(), "{last}");
            }
        }
    }
    // raw inbound with no receive time at all: processing order decides
    let no_time = |body: &str| inbound(CUST, SVC, body, "x");
    let mut core = Core::new(&config());
    let mut out = Outputs::default();
    let src = RecordSource {
        timestamp_ms: None,
        ..src(0)
    };
    core.process(no_time("STOP").as_bytes(), &src, &mut out);
    core.process(no_time("START").as_bytes(), &src, &mut out);
    assert!(!core.optout().is_opted_out(SVC, CUST));
}

/// A reply is never addressed to one of our own numbers.
#[test]
fn no_reply_loops_between_our_numbers() {
    // +12125550101 and +18445550100 are both ours and self-managed
    let records: Vec<String> = ["HELP", "STOP", "START", "HOURS", "JOIN"]
        .iter()
        .flat_map(|b| {
            [
                sns(&inbound("+12125550101", "+18445550100", b, "x"), ARRIVAL),
                sns(&inbound("+18445550100", "+12125550101", b, "y"), ARRIVAL),
                sns(&inbound("+12125550101", "+12125550101", b, "z"), ARRIVAL),
            ]
        })
        .collect();
    let (_, out) = one(&config(), &records);
    assert_eq!(out.inbound.len(), records.len());
    assert!(out.replies.is_empty(), "{:?}", out.replies);
    // a customer is answered
    let (_, out) = one(
        &config(),
        &[sns(&inbound(CUST, "+12125550101", "HELP", "c"), ARRIVAL)],
    );
    assert_eq!(out.replies.len(), 1);
}

// ------------------------------------------------------------ Kafka stages

fn at(p: i32, o: i64) -> Provenance {
    Provenance {
        source: Arc::from("internal"),
        partition: Some(p),
        offset: o,
        sub: 0,
    }
}

/// The router bounds by the record timestamp; a forged forwarded record
/// cannot bypass the bound at the owners.
#[test]
fn stages_bound_times_and_forwarded_records_too() {
    let cfg = config();
    let limits = smsvoice::limits::Limits::new(&cfg);
    let req = 1_762_000_000_000;
    let p = r#","totalMessagePrice":0.01"#;
    // the router dead-letters what the core dead-letters
    for kind in 0..KINDS {
        let poison = poison_kind(kind, 1, 10, 3);
        let mut routed = Vec::new();
        route_with(&poison.record, &src(0), &limits, &mut routed);
        assert!(
            routed.iter().all(|r| matches!(r, Routed::Dead(_))) && !routed.is_empty(),
            "{}",
            poison.what
        );
    }
    // forwarded records carry the arrival time
    let mut routed = Vec::new();
    route_with(
        event("TEXT_DELIVERED", "m-1", req + 1, req, p).as_bytes(),
        &src(0),
        &limits,
        &mut routed,
    );
    let Some(Routed::Event { record, .. }) = routed.pop() else {
        panic!("routed")
    };
    let mut intern = |s: &str| Arc::<str>::from(s);
    let (fwd, _, _) = forward::decode_event(&record, &limits, &mut intern).expect("forwarded");
    assert_eq!(fwd.arrival_ms, Some(ARRIVAL));

    // forged forwarded records: a far-future event, a far-future receive time
    let prov = Provenance {
        source: Arc::from("events"),
        partition: Some(0),
        offset: 1,
        sub: 0,
    };
    let forged_event = forward::encode(
        &prov,
        None,
        Some(ARRIVAL),
        &[],
        event("TEXT_DELIVERED", "f-1", Y2150, req, p).as_bytes(),
    );
    let mut owner = MessageOwner::new(&cfg.spend, 0).with_limits(limits);
    let view = View::new(&cfg.optout);
    let mut o = OwnerOutputs::default();
    owner.process(&forged_event, &at(0, 0), &view, &mut o);
    assert!(o.events.is_empty());
    assert_eq!(o.dead_letters.len(), 1);
    assert_eq!(o.dead_letters[0].reason.field(), Some("eventTimestamp"));
    assert_eq!(owner.ledger().watermark(), None);
    // the same forged event in the compact format routers write
    let raw = event("TEXT_DELIVERED", "f-1", Y2150, req, p);
    let (ev, _) = smsvoice::decode::decode_delivery(raw.as_bytes()).expect("typed");
    let compact = forward::compact::encode_event(
        &forward::compact::Origin {
            provenance: &prov,
            received_at: None,
            arrival_ms: Some(ARRIVAL),
            forwarded_at: None,
            envelopes: &[],
            has_keys: false,
        },
        &ev,
        raw.as_bytes(),
    );
    o.clear();
    owner.process(&compact, &at(0, 0), &view, &mut o);
    assert!(o.events.is_empty());
    assert_eq!(o.dead_letters.len(), 1);
    assert_eq!(o.dead_letters[0].reason.field(), Some("eventTimestamp"));
    assert_eq!(owner.ledger().watermark(), None);
    // a forged absurd price
    let forged_price = forward::encode(
        &prov,
        None,
        Some(ARRIVAL),
        &[],
        event(
            "TEXT_DELIVERED",
            "f-2",
            req + 1,
            req,
            r#","totalMessagePrice":1e15"#,
        )
        .as_bytes(),
    );
    o.clear();
    owner.process(&forged_price, &at(0, 1), &view, &mut o);
    assert_eq!(o.dead_letters.len(), 1);
    assert_eq!(o.dead_letters[0].reason.code(), "invalid_money");

    let forged_start = forward::encode(
        &prov,
        Some(Y2150),
        Some(ARRIVAL),
        &[],
        inbound(CUST, SVC, "START", "s").as_bytes(),
    );
    let mut optouts = OptOutOwner::new(&cfg.optout).with_limits(limits);
    let mut oo = OptOutOutputs::default();
    optouts.process(&forged_start, &at(1, 0), &mut oo);
    assert!(oo.inbound.is_empty() && oo.changes.is_empty());
    assert_eq!(oo.dead_letters.len(), 1);
    assert_eq!(oo.dead_letters[0].reason.field(), Some("t"));
    // the real STOP that follows opts out
    let stop = forward::encode(
        &Provenance {
            offset: 2,
            ..prov.clone()
        },
        Some(ARRIVAL - 1),
        Some(ARRIVAL),
        &[],
        inbound(CUST, SVC, "STOP", "t").as_bytes(),
    );
    oo.clear();
    optouts.process(&stop, &at(1, 1), &mut oo);
    assert!(oo.inbound[0].enrichment.opted_out);
    assert!(optouts.engine().is_opted_out(SVC, CUST));
    // a forwarded record written before the arrival time was forwarded has
    // no bound beyond the absolute range (documented)
    let old = format!(
        r#"{{"src":"events","p":0,"o":9,"s":0,"t":null,"env":[],"payload":{}}}"#,
        event("TEXT_DELIVERED", "old-1", req + 1, req, p)
    );
    o.clear();
    owner.process(old.as_bytes(), &at(0, 2), &view, &mut o);
    assert_eq!(o.events.len(), 1);
}

/// A mixed stream through router and owners ends with the truth too.
#[test]
fn stages_with_poison_equal_the_truth() {
    let cfg = config();
    let limits = smsvoice::limits::Limits::new(&cfg);
    let w = workload(21, 1_500);
    let g = generate(&w);
    let poisons: Vec<(Poison, u16)> = (0..KINDS)
        .map(|k| {
            (
                poison_kind(k, w.seed, w.messages, k as u64 * 977),
                (k * 2_503 % 65_536) as u16,
            )
        })
        .collect();
    let (records, _) = mix(&g.records, &poisons);
    let mut owner = MessageOwner::new(&cfg.spend, 0).with_limits(limits);
    let mut optouts = OptOutOwner::new(&cfg.optout).with_limits(limits);
    let view = View::new(&cfg.optout);
    let (mut o, mut oo) = (OwnerOutputs::default(), OptOutOutputs::default());
    let mut dead = 0;
    let mut routed = Vec::new();
    for (i, r) in records.iter().enumerate() {
        route_with(r, &src(i), &limits, &mut routed);
        for (k, x) in routed.drain(..).enumerate() {
            match x {
                Routed::Event { record, .. } => {
                    owner.process(&record, &at(0, (i * 8 + k) as i64), &view, &mut o)
                }
                Routed::Inbound { record, .. } => {
                    optouts.process(&record, &at(1, (i * 8 + k) as i64), &mut oo)
                }
                Routed::Dead(_) => dead += 1,
            }
        }
        assert!(o.dead_letters.is_empty() && oo.dead_letters.is_empty());
        o.clear();
        oo.clear();
    }
    assert_eq!(dead, g.truth.malformed + poisons.len());
    let spend: BTreeMap<(String, String), i128> = owner
        .partials()
        .into_iter()
        .map(|p| {
            (
                (p.month.to_string(), p.channel.to_string()),
                p.spend_usd.units(),
            )
        })
        .collect();
    assert_eq!(spend, g.truth.spend_units);
    let table: BTreeMap<(String, String), bool> = optouts
        .engine()
        .entries()
        .into_iter()
        .map(|(l, n, s)| ((l.to_owned(), n.to_owned()), s))
        .collect();
    assert_eq!(table, g.truth.optouts);
}

// ------------------------------------------------------------ the binary

fn smsvoice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args(args)
        .output()
        .expect("run smsvoice")
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The issue's reproductions, run with `smsvoice process` on a file written
/// now (its modification time is the arrival time).
#[test]
fn smsvoice_process_dead_letters_the_issue_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("poison.jsonl");
    let req = 1_762_000_000_000;
    let p = r#","totalMessagePrice":0.0146,"totalCarrierFee":0.00302"#;
    let now = chrono::Utc::now().timestamp_millis();
    let lines = [
        // case 1
        event("TEXT_SUCCESSFUL", "m-1", req + 100, req, p),
        event("TEXT_DELIVERED", "m-1", req + 2_000, req, p),
        event("TEXT_DELIVERED", "bogus", Y2150, req, p),
        event("TEXT_SUCCESSFUL", "m-2", req + 200, req, p),
        event("TEXT_DELIVERED", "m-2", req + 3_000, req, p),
        // case 2
        event(
            "TEXT_DELIVERED",
            "absurd-1",
            req + 1,
            req,
            r#","totalMessagePrice":95820000000000"#,
        ),
        event(
            "MEDIA_DELIVERED",
            "absurd-2",
            req + 1,
            req,
            r#","totalMessagePrice":1.3e23"#,
        ),
        // case 3
        inbound_at("START", "s", Y2150),
        inbound_at("STOP", "t", now - 60_000),
        // case 4
        event("TEXT_DELIVERED", &"m".repeat(100_000), req + 1, req, p),
    ];
    std::fs::write(&input, lines.join("\n")).expect("write input");
    let out = dir.path().join("out");
    let input_s = input.display().to_string();
    let out_s = out.display().to_string();
    let o = smsvoice(&[
        "process",
        "--input",
        &input_s,
        "--out",
        &out_s,
        "--no-archive",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let spend: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("spend.json")).expect("spend"))
            .expect("json");
    assert_eq!(
        spend,
        json!([{"month": "2025-11", "channel": "SMS", "spendUsd": "0.03524", "messages": 2}])
    );
    let events = read_lines(&out.join("enriched-events.jsonl"));
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e["lateReceipt"] == false));
    let alarms = std::fs::read_to_string(out.join("alarms.jsonl")).expect("alarms");
    assert!(!alarms.contains("LIMIT_REACHED"), "{alarms}");
    let optouts: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("optouts.json")).expect("optouts"))
            .expect("json");
    assert_eq!(
        optouts,
        json!([{"optOutList": "Default", "number": CUST, "optedOut": true}])
    );
    let inbound = read_lines(&out.join("enriched-inbound.jsonl"));
    assert_eq!(inbound.len(), 1);
    assert_eq!(
        (&inbound[0]["action"], &inbound[0]["optedOut"]),
        (&json!("OPT_OUT"), &json!(true))
    );
    let dead = read_lines(&out.join("dead-letters.jsonl"));
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|d| {
            (
                d["reason"].as_str().unwrap_or_default().to_owned(),
                d["field"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("invalid_value", "eventTimestamp"),
            ("invalid_money", "totalMessagePrice"),
            ("invalid_money", "totalMessagePrice"),
            ("invalid_value", "Timestamp"),
            ("field_too_long", "messageId"),
        ]
        .map(|(r, f)| (r.to_owned(), f.to_owned()))
    );
    // a bounded detail, the original bytes kept
    assert!(dead[4]["detail"].as_str().is_some_and(|d| d.len() < 200));
    assert_eq!(
        dead[4]["payload"].as_str().map(str::len),
        Some(lines[9].len())
    );
}

/// An input file whose modification time is before its records' times:
/// they are later than their arrival, so they are dead letters.
#[test]
fn smsvoice_process_bounds_by_the_file_modification_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("old.jsonl");
    let req = 1_762_000_000_000;
    std::fs::write(
        &input,
        event(
            "TEXT_DELIVERED",
            "m-1",
            req + 1,
            req,
            r#","totalMessagePrice":0.01"#,
        ),
    )
    .expect("write");
    // modified 2025-10-01, a month before the event
    let f = std::fs::File::options()
        .write(true)
        .open(&input)
        .expect("open");
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_759_276_800_000))
        .expect("set mtime");
    drop(f);
    let out = dir.path().join("out");
    let (i, o) = (input.display().to_string(), out.display().to_string());
    let r = smsvoice(&["process", "--input", &i, "--out", &o, "--no-archive"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let dead = read_lines(&out.join("dead-letters.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (&dead[0]["reason"], &dead[0]["field"]),
        (&json!("invalid_value"), &json!("eventTimestamp"))
    );
    // a larger skew in the configuration accepts it
    let cfg = dir.path().join("skew.toml");
    std::fs::write(&cfg, "[limits]\nmax_clock_skew = \"60d\"\n").expect("write config");
    let c = cfg.display().to_string();
    let r = smsvoice(&[
        "process",
        "--config",
        &c,
        "--input",
        &i,
        "--out",
        &o,
        "--no-archive",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(read_lines(&out.join("dead-letters.jsonl")).is_empty());
    // an unknown [limits] key is a configuration error naming it
    std::fs::write(&cfg, "[limits]\nmax_clok_skew = \"1m\"\n").expect("write config");
    let r = smsvoice(&[
        "process",
        "--config",
        &c,
        "--input",
        &i,
        "--out",
        &o,
        "--no-archive",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("max_clok_skew"));
}
