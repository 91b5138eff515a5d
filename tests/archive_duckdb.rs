//! The archive read back by a real query engine: a generated stream (several
//! days across a month boundary, every channel, multi-event messages,
//! redeliveries, every envelope, inbound traffic, malformed records) goes
//! through the `smsvoice` binary's file mode; DuckDB then reads the Parquet
//! files with `read_parquet(..., hive_partitioning = true)` through the
//! shipped `schemas/sql/duckdb/*.sql` and every figure is checked against
//! the core's own records and against figures computed here, in Rust, from
//! the decoded inputs.
//!
//! Needs the Python packages `duckdb` (and `moto[server]` for the S3 run):
//! `scripts/install-test-tools.sh`.

#![recursion_limit = "256"]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arrow::datatypes::DataType;
use base64::Engine as _;
use serde_json::{json, Value};

use smsvoice::archive::naming::utc_date;
use smsvoice::archive::schema::Table;
use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::dead_letter::DeadLetter;
use smsvoice::decode::{split_values, RecordSource, Segment};
use smsvoice::enrich::{EnrichedEvent, EnrichedInbound, Outputs, SpendRecord};
use smsvoice::generate::{generate, Generated, Workload};
use smsvoice::model::StatusClass;
use smsvoice::money::Usd;
use support::duckdb::{self, Row};

/// Exact DECIMAL(38,10) text as DuckDB prints it (`0.0058100000`).
fn dec10(u: Usd) -> String {
    let units = u.units();
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    format!(
        "{sign}{}.{:010}",
        abs / 10_000_000_000,
        abs % 10_000_000_000
    )
}

fn workload() -> Workload {
    Workload {
        seed: 11,
        messages: 1_500,
        malformed_per_mille: 40,
        inbound_per_mille: 150,
        ..Workload::default()
    }
}

/// What the core produced for the input, computed in-process exactly as
/// file mode feeds it.
struct Expected {
    events: Vec<EnrichedEvent>,
    inbound: Vec<EnrichedInbound>,
    dead: Vec<DeadLetter>,
    spend: Vec<SpendRecord>,
    mtime_ms: i64,
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    input: PathBuf,
    config: PathBuf,
    generated: Generated,
    expected: Expected,
}

fn fixture(archive_toml: &str) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let generated = generate(&workload());
    let input = dir.join("events.jsonl");
    let mut text = Vec::new();
    for r in &generated.records {
        text.extend_from_slice(r);
        text.push(b'\n');
    }
    std::fs::write(&input, &text).expect("write input");
    let config = dir.join("config.toml");
    std::fs::write(&config, format!("{EMBEDDED_DEFAULT}\n{archive_toml}\n")).expect("config");
    let cfg = Config::load(&config).expect("test config is valid");
    let mtime_ms = std::fs::metadata(&input)
        .and_then(|m| m.modified())
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_millis() as i64
        })
        .expect("mtime");
    let mut core = Core::new(&cfg);
    let mut all = Outputs::default();
    let source: Arc<str> = Arc::from(input.display().to_string().as_str());
    for (i, seg) in split_values(&text).into_iter().enumerate() {
        let range = match seg {
            Segment::Value(r) | Segment::Invalid(r, _) => r,
        };
        let src = RecordSource {
            source: source.clone(),
            partition: None,
            offset: i as i64,
            timestamp_ms: None,
        };
        core.process(&text[range], &src, &mut all);
    }
    assert_eq!(all.events.len(), generated.truth.events);
    assert_eq!(all.inbound.len(), generated.truth.inbound);
    assert_eq!(all.dead_letters.len(), generated.truth.malformed);
    let expected = Expected {
        events: all.events,
        inbound: all.inbound,
        dead: all.dead_letters,
        spend: core.spend_totals(),
        mtime_ms,
    };
    Fixture {
        _dir: tmp,
        dir,
        input,
        config,
        generated,
        expected,
    }
}

fn run_process(f: &Fixture, out: &Path, archive: Option<&str>, env: &[(&str, &str)]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsvoice"));
    cmd.arg("process")
        .arg("--config")
        .arg(&f.config)
        .arg("--input")
        .arg(&f.input)
        .arg("--out")
        .arg(out);
    if let Some(a) = archive {
        cmd.arg("--archive").arg(a);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run smsvoice");
    assert!(
        o.status.success(),
        "smsvoice process failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// SELECT list of every column of a table, in a JSON-friendly form:
/// timestamps as epoch ms, decimals as exact text.
fn select_all(table: Table) -> String {
    let mut cols: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(..) => format!("epoch_ms({0}) AS {0}", f.name()),
            DataType::Decimal128(..) => format!("CAST({0} AS VARCHAR) AS {0}", f.name()),
            _ => f.name().to_string(),
        })
        .collect();
    cols.extend(table.partition_columns().iter().map(|p| p.name.to_owned()));
    format!("SELECT {} FROM {}", cols.join(", "), table.name())
}

fn event_row(e: &EnrichedEvent) -> Value {
    let ev = &e.event;
    let en = &e.enrichment;
    let p = &e.provenance;
    json!({
        "event_type": ev.event_type,
        "event_version": ev.event_version,
        "event_timestamp": ev.event_timestamp,
        "is_final": ev.is_final,
        "origination_phone_number": ev.origination_phone_number,
        "destination_phone_number": ev.destination_phone_number,
        "iso_country_code": ev.iso_country_code,
        "is_international_send": ev.is_international_send,
        "mcc": ev.mcc,
        "mnc": ev.mnc,
        "carrier_name": ev.carrier_name,
        "message_id": ev.message_id,
        "message_request_timestamp": ev.message_request_timestamp,
        "message_encoding": ev.message_encoding,
        "message_type": ev.message_type,
        "message_status": ev.message_status,
        "message_status_description": ev.message_status_description,
        "context": ev.context,
        "total_message_parts": ev.total_message_parts,
        "total_message_price": ev.total_message_price.map(dec10),
        "total_carrier_fee": ev.total_carrier_fee.map(dec10),
        "call_duration_in_seconds": ev.call_duration_in_seconds,
        "total_duration_in_minutes": ev.total_duration_in_minutes,
        "content_type": ev.content_type,
        "protect_configuration_id": ev.protect_configuration_id,
        "protect_status": ev.protect_status,
        "record_id": en.record_id,
        "status_class": en.status_class.map(StatusClass::as_str),
        "cost_usd": dec10(en.cost_usd),
        "spend_month": en.spend_month.to_string(),
        "month_to_date_spend_usd": dec10(en.month_to_date_spend_usd),
        "latency_ms": en.latency_ms,
        "destination_opted_out": en.destination_opted_out,
        "duplicate": en.duplicate,
        "late_receipt": en.late_receipt,
        "source": &*p.source,
        "source_partition": p.partition,
        "source_offset": p.offset,
        "source_sub": p.sub,
        "envelopes": e.envelopes,
        "channel": ev.channel.as_str(),
        "event_date": utc_date(ev.event_timestamp),
    })
}

fn inbound_row(m: &EnrichedInbound, mtime_ms: i64) -> Value {
    let msg = &m.message;
    let en = &m.enrichment;
    let p = &m.provenance;
    json!({
        "origination_number": msg.origination_number,
        "destination_number": msg.destination_number,
        "message_keyword": msg.message_keyword,
        "message_body": msg.message_body,
        "inbound_message_id": msg.inbound_message_id,
        "previous_published_message_id": msg.previous_published_message_id,
        "received_at": msg.received_at,
        "record_id": en.record_id,
        "keyword": en.keyword,
        "action": en.action.as_str(),
        "opt_out_list": en.opt_out_list,
        "opted_out": en.opted_out,
        "source": &*p.source,
        "source_partition": p.partition,
        "source_offset": p.offset,
        "source_sub": p.sub,
        "envelopes": m.envelopes,
        "receive_date": utc_date(msg.received_at.unwrap_or(mtime_ms)),
    })
}

fn dead_row(d: &DeadLetter, mtime_ms: i64) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let p = &d.provenance;
    json!({
        "record_id": p.record_id(),
        "reason": d.reason.code(),
        "field": d.reason.field(),
        "detail": d.reason.to_string(),
        "payload": b64.encode(&d.payload),
        "inner_payload": d.inner_payload.as_ref().map(|b| b64.encode(b)),
        "record_timestamp": null,
        "source": &*p.source,
        "source_partition": p.partition,
        "source_offset": p.offset,
        "source_sub": p.sub,
        "envelopes": d.envelopes,
        "receive_date": utc_date(mtime_ms),
    })
}

type Pos = (String, i64, i64);

fn pos_of(r: &Row) -> Pos {
    (
        r["source"].as_str().expect("source").to_owned(),
        r["source_offset"].as_i64().expect("offset"),
        r["source_sub"].as_i64().expect("sub"),
    )
}

/// Compares archive rows with expected rows, matched by source position,
/// field by field; processed_at must be a plausible processing time.
fn compare_rows(table: &str, rows: &[Row], expected: Vec<Value>, not_before_ms: i64) {
    assert_eq!(rows.len(), expected.len(), "{table}: row count");
    let mut by_pos: BTreeMap<Pos, &Row> = BTreeMap::new();
    for r in rows {
        assert!(
            by_pos.insert(pos_of(r), r).is_none(),
            "{table}: position {:?} twice",
            pos_of(r)
        );
    }
    let now = smsvoice::archive::writer::now_ms();
    for want in expected {
        let want = want.as_object().expect("object").clone();
        let pos = pos_of(&want);
        let got = by_pos
            .get(&pos)
            .unwrap_or_else(|| panic!("{table}: no row at {pos:?}"));
        let processed = got["processed_at"].as_i64().expect("processed_at");
        assert!(
            (not_before_ms - 1_000..=now).contains(&processed),
            "{table}: processed_at {processed} is not the processing time"
        );
        let got_keys: BTreeSet<&String> = got.keys().filter(|k| *k != "processed_at").collect();
        let want_keys: BTreeSet<&String> = want.keys().collect();
        assert_eq!(got_keys, want_keys, "{table}: columns");
        for (k, v) in &want {
            assert_eq!(&got[k], v, "{table} {pos:?}: column {k}");
        }
    }
}

/// Per-message figures computed here from the decoded inputs (not from the
/// core's ledger): latest event by (eventTimestamp, eventType, position),
/// cost = price + fee of the latest priced event by (eventTimestamp,
/// eventType, cost), month and date of the first messageRequestTimestamp.
struct Message {
    channel: &'static str,
    latest_type: String,
    latest_status: Option<String>,
    status_class: Option<StatusClass>,
    origination: Option<String>,
    country: Option<String>,
    message_type: Option<String>,
    context: BTreeMap<String, String>,
    events: u64,
    month: String,
    date: String,
    cost: Usd,
    price_plus_price: Usd,
}

fn messages(events: &[EnrichedEvent]) -> BTreeMap<String, Message> {
    let mut groups: BTreeMap<&str, Vec<&EnrichedEvent>> = BTreeMap::new();
    for e in events {
        assert!(!e.enrichment.late_receipt, "workload has no late receipt");
        groups.entry(&e.event.message_id).or_default().push(e);
    }
    groups
        .into_iter()
        .map(|(id, evs)| {
            let latest = evs
                .iter()
                .max_by(|a, b| {
                    (
                        a.event.event_timestamp,
                        &a.event.event_type,
                        a.provenance.offset,
                        a.provenance.sub,
                    )
                        .cmp(&(
                            b.event.event_timestamp,
                            &b.event.event_type,
                            b.provenance.offset,
                            b.provenance.sub,
                        ))
                })
                .expect("non-empty");
            let cost_of = |e: &EnrichedEvent| {
                e.event.total_message_price.unwrap_or(Usd::ZERO)
                    + e.event.total_carrier_fee.unwrap_or(Usd::ZERO)
            };
            let priced = evs.iter().filter(|e| e.event.is_priced()).max_by(|a, b| {
                (a.event.event_timestamp, &a.event.event_type, cost_of(a)).cmp(&(
                    b.event.event_timestamp,
                    &b.event.event_type,
                    cost_of(b),
                ))
            });
            let first = evs
                .iter()
                .filter_map(|e| e.event.message_request_timestamp)
                .min()
                .unwrap_or_else(|| {
                    evs.iter()
                        .map(|e| e.event.event_timestamp)
                        .min()
                        .unwrap_or(0)
                });
            let ev = &latest.event;
            let m = Message {
                channel: ev.channel.as_str(),
                latest_type: ev.event_type.clone(),
                latest_status: ev.message_status.clone(),
                status_class: ev.status_class,
                origination: ev.origination_phone_number.clone(),
                country: ev.iso_country_code.clone(),
                message_type: ev.message_type.clone(),
                context: ev.context.clone().unwrap_or_default(),
                events: evs.len() as u64,
                month: utc_date(first)[..7].to_owned(),
                date: utc_date(first),
                cost: priced.map_or(Usd::ZERO, |e| cost_of(e)),
                price_plus_price: priced.map_or(Usd::ZERO, |e| {
                    let p = e.event.total_message_price.unwrap_or(Usd::ZERO);
                    p + p
                }),
            };
            (id.to_owned(), m)
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows keyed by the named columns, each row reduced to the other columns.
fn keyed(rows: &[Row], key: &[&str]) -> BTreeMap<Vec<String>, Row> {
    let mut out = BTreeMap::new();
    for r in rows {
        let k: Vec<String> = key.iter().map(|c| text(&r[*c])).collect();
        let mut rest = r.clone();
        for c in key {
            rest.remove(*c);
        }
        assert!(
            out.insert(k.clone(), rest).is_none(),
            "duplicate group {k:?}"
        );
    }
    out
}

/// Asserts two keyed row sets are equal, reporting only the first difference.
fn same<K: std::fmt::Debug + Ord, V: std::fmt::Debug + PartialEq>(
    what: &str,
    got: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) {
    for (k, w) in want {
        match got.get(k) {
            None => panic!("{what}: missing {k:?} (want {w:?})"),
            Some(g) => assert_eq!(g, w, "{what}: {k:?}"),
        }
    }
    if let Some(k) = got.keys().find(|k| !want.contains_key(k)) {
        panic!("{what}: unexpected {k:?} = {:?}", got[k]);
    }
}

fn obj(v: Value) -> Row {
    v.as_object().expect("object").clone()
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "null".into())
}

fn check_views(f: &Fixture, setup: &[String]) {
    let msgs = messages(&f.expected.events);
    let q = |s: &str| s.to_owned();
    let results = duckdb::query(
        setup,
        &[
            q("SELECT message_id, channel, latest_event_type, latest_status, status_class, \
               origination_phone_number, iso_country_code, message_type, events, counted, \
               CAST(message_date AS VARCHAR) AS message_date, spend_month, \
               CAST(cost_usd AS VARCHAR) AS cost_usd FROM message_latest"),
            q("SELECT spend_month, channel, CAST(spend_usd AS VARCHAR) AS spend_usd, messages \
               FROM spend_monthly"),
            q("SELECT CAST(message_date AS VARCHAR) AS message_date, channel, iso_country_code, \
               message_type, origination_phone_number, messages, delivered, failed_transient, \
               failed_permanent, pending, delivery_rate, CAST(cost_usd AS VARCHAR) AS cost_usd \
               FROM delivery_daily"),
            q("SELECT spend_month, channel, tenant, messages, CAST(cost_usd AS VARCHAR) AS cost_usd \
               FROM cost_by_tenant"),
            q("SELECT spend_month, channel, context_key, context_value, messages, \
               CAST(cost_usd AS VARCHAR) AS cost_usd FROM cost_by_context"),
            q("SELECT CAST(receive_date AS VARCHAR) AS receive_date, opt_out_list, action, \
               messages, numbers FROM optout_daily"),
        ],
    );

    // message_latest
    let got = keyed(&results[0], &["message_id"]);
    let want: BTreeMap<Vec<String>, Row> = msgs
        .iter()
        .map(|(id, m)| {
            (
                vec![id.clone()],
                obj(json!({
                    "channel": m.channel,
                    "latest_event_type": m.latest_type,
                    "latest_status": m.latest_status,
                    "status_class": m.status_class.map(StatusClass::as_str),
                    "origination_phone_number": m.origination,
                    "iso_country_code": m.country,
                    "message_type": m.message_type,
                    "events": m.events,
                    "counted": true,
                    "message_date": m.date,
                    "spend_month": m.month,
                    "cost_usd": dec10(m.cost),
                })),
            )
        })
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "message_latest: one row per messageId"
    );
    same("message_latest", &got, &want);

    // cost = price + fee, not price + price: the workload must tell them apart
    let fee_messages = msgs
        .values()
        .filter(|m| m.cost != m.price_plus_price)
        .count();
    assert!(fee_messages > 100, "too few messages with a carrier fee");

    // spend_monthly: equals the core's exact spend and the generator's truth
    let got = keyed(&results[1], &["spend_month", "channel"]);
    let mut want: BTreeMap<Vec<String>, (Usd, u64)> = BTreeMap::new();
    for m in msgs.values() {
        let e = want
            .entry(vec![m.month.clone(), m.channel.to_owned()])
            .or_insert((Usd::ZERO, 0));
        e.0 += m.cost;
        e.1 += 1;
    }
    let want: BTreeMap<Vec<String>, Row> = want
        .into_iter()
        .map(|(k, (s, n))| (k, obj(json!({"spend_usd": dec10(s), "messages": n}))))
        .collect();
    same("spend_monthly vs figures from the inputs", &got, &want);
    let core: BTreeMap<Vec<String>, Row> = f
        .expected
        .spend
        .iter()
        .map(|s| {
            (
                vec![s.month.to_string(), s.channel.to_string()],
                obj(json!({"spend_usd": dec10(s.spend_usd), "messages": s.messages})),
            )
        })
        .collect();
    same("spend_monthly vs Core::spend_totals", &got, &core);
    let truth: BTreeMap<Vec<String>, String> = f
        .generated
        .truth
        .spend_units
        .iter()
        .map(|((m, c), u)| (vec![m.clone(), c.clone()], dec10(Usd::from_units(*u))))
        .collect();
    let got_spend: BTreeMap<Vec<String>, String> = got
        .iter()
        .map(|(k, r)| (k.clone(), text(&r["spend_usd"])))
        .collect();
    same("spend_monthly vs generator truth", &got_spend, &truth);
    assert!(got.keys().any(|k| k[0] == "2025-10") && got.keys().any(|k| k[0] == "2025-11"));

    // delivery_daily
    let key = [
        "message_date",
        "channel",
        "iso_country_code",
        "message_type",
        "origination_phone_number",
    ];
    let mut got = keyed(&results[2], &key);
    let mut want: BTreeMap<Vec<String>, [u64; 5]> = BTreeMap::new();
    let mut want_cost: BTreeMap<Vec<String>, Usd> = BTreeMap::new();
    for m in msgs.values() {
        let k = vec![
            m.date.clone(),
            m.channel.to_owned(),
            opt(&m.country),
            opt(&m.message_type),
            opt(&m.origination),
        ];
        let e = want.entry(k.clone()).or_insert([0; 5]);
        e[0] += 1;
        match m.status_class {
            Some(StatusClass::Accepted) => e[1] += 1,
            Some(StatusClass::TransientFailure) => e[2] += 1,
            Some(StatusClass::PermanentFailure) => e[3] += 1,
            Some(StatusClass::InFlight) | None => e[4] += 1,
        }
        *want_cost.entry(k).or_insert(Usd::ZERO) += m.cost;
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "delivery_daily groups"
    );
    assert!(
        want.keys().map(|k| &k[0]).collect::<BTreeSet<_>>().len() >= 5,
        "several days"
    );
    for (k, n) in &want {
        let r = got.get_mut(k).expect("group");
        let rate = r
            .remove("delivery_rate")
            .and_then(|v| v.as_f64())
            .expect("rate");
        assert!(
            (rate - n[1] as f64 / n[0] as f64).abs() < 1e-12,
            "{k:?} rate"
        );
        assert_eq!(
            Value::Object(r.clone()),
            json!({"messages": n[0], "delivered": n[1], "failed_transient": n[2],
                   "failed_permanent": n[3], "pending": n[4], "cost_usd": dec10(want_cost[k])}),
            "delivery_daily {k:?}"
        );
    }

    // cost_by_tenant and cost_by_context
    let got = keyed(&results[3], &["spend_month", "channel", "tenant"]);
    let mut want: BTreeMap<Vec<String>, (u64, Usd)> = BTreeMap::new();
    let mut want_ctx: BTreeMap<Vec<String>, (u64, Usd)> = BTreeMap::new();
    for m in msgs.values() {
        let tenant = m.context.get("tenant").cloned();
        let e = want
            .entry(vec![m.month.clone(), m.channel.to_owned(), opt(&tenant)])
            .or_insert((0, Usd::ZERO));
        e.0 += 1;
        e.1 += m.cost;
        for (ck, cv) in &m.context {
            let e = want_ctx
                .entry(vec![
                    m.month.clone(),
                    m.channel.to_owned(),
                    ck.clone(),
                    cv.clone(),
                ])
                .or_insert((0, Usd::ZERO));
            e.0 += 1;
            e.1 += m.cost;
        }
    }
    let as_rows = |m: BTreeMap<Vec<String>, (u64, Usd)>| -> BTreeMap<Vec<String>, Row> {
        m.into_iter()
            .map(|(k, (n, c))| (k, obj(json!({"messages": n, "cost_usd": dec10(c)}))))
            .collect()
    };
    assert!(want.len() >= 5 * 4, "tenants x channels");
    same("cost_by_tenant", &got, &as_rows(want));
    let got = keyed(
        &results[4],
        &["spend_month", "channel", "context_key", "context_value"],
    );
    same("cost_by_context", &got, &as_rows(want_ctx));

    // optout_daily
    let got = keyed(&results[5], &["receive_date", "opt_out_list", "action"]);
    let mut want: BTreeMap<Vec<String>, (u64, BTreeSet<&str>)> = BTreeMap::new();
    for m in &f.expected.inbound {
        let action = m.enrichment.action.as_str();
        if action != "OPT_OUT" && action != "OPT_IN" {
            continue;
        }
        let day = utc_date(m.message.received_at.unwrap_or(f.expected.mtime_ms));
        let e = want
            .entry(vec![
                day,
                m.enrichment.opt_out_list.clone(),
                action.to_owned(),
            ])
            .or_insert((0, BTreeSet::new()));
        e.0 += 1;
        e.1.insert(&m.message.origination_number);
    }
    assert!(!want.is_empty(), "the workload has opt-out traffic");
    let want: BTreeMap<Vec<String>, Row> = want
        .into_iter()
        .map(|(k, (n, nums))| (k, obj(json!({"messages": n, "numbers": nums.len()}))))
        .collect();
    same("optout_daily", &got, &want);
}

/// Every check of an archive rooted at `root` (a local directory).
fn check_archive(f: &Fixture, root: &Path, not_before_ms: i64) {
    let setup = duckdb::archive_setup(root);
    let tables = [
        Table::DeliveryEvents,
        Table::InboundMessages,
        Table::DeadLetters,
    ];
    let mut queries: Vec<String> = tables.iter().map(|t| select_all(*t)).collect();
    queries.push(
        "SELECT source, source_partition, source_offset, source_sub, count(*) AS n FROM (\
           SELECT source, source_partition, source_offset, source_sub FROM delivery_events \
           UNION ALL SELECT source, source_partition, source_offset, source_sub FROM inbound_messages \
           UNION ALL SELECT source, source_partition, source_offset, source_sub FROM dead_letters) \
         GROUP BY ALL HAVING count(*) > 1"
            .to_owned(),
    );
    for t in tables {
        queries.push(format!(
            "SELECT column_name, column_type FROM (DESCRIBE {})",
            t.name()
        ));
    }
    let r = duckdb::query(&setup, &queries);

    // row counts = accepted inputs; each source position exactly once
    assert_eq!(r[0].len(), f.generated.truth.events, "delivery_events rows");
    assert_eq!(
        r[1].len(),
        f.generated.truth.inbound,
        "inbound_messages rows"
    );
    assert_eq!(r[2].len(), f.generated.truth.malformed, "dead_letters rows");
    assert!(
        r[3].is_empty(),
        "source positions archived twice: {:?}",
        r[3]
    );

    // every column round-trips
    let mtime = f.expected.mtime_ms;
    compare_rows(
        "delivery_events",
        &r[0],
        f.expected.events.iter().map(event_row).collect(),
        not_before_ms,
    );
    compare_rows(
        "inbound_messages",
        &r[1],
        f.expected
            .inbound
            .iter()
            .map(|m| inbound_row(m, mtime))
            .collect(),
        not_before_ms,
    );
    compare_rows(
        "dead_letters",
        &r[2],
        f.expected.dead.iter().map(|d| dead_row(d, mtime)).collect(),
        not_before_ms,
    );
    let channels: BTreeSet<&str> = r[0].iter().filter_map(|r| r["channel"].as_str()).collect();
    assert_eq!(channels, BTreeSet::from(["MMS", "RCS", "SMS", "VOICE"]));

    // engine-visible types
    for (t, described) in tables.iter().zip(&r[4..7]) {
        let types: BTreeMap<String, String> = described
            .iter()
            .map(|c| (text(&c["column_name"]), text(&c["column_type"])))
            .collect();
        let mut names: BTreeSet<String> = t
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        names.extend(t.partition_columns().iter().map(|p| p.name.to_owned()));
        assert_eq!(
            types.keys().cloned().collect::<BTreeSet<_>>(),
            names,
            "{}",
            t.name()
        );
        for f in t.schema().fields() {
            let want = match f.data_type() {
                DataType::Utf8 => "VARCHAR",
                DataType::Boolean => "BOOLEAN",
                DataType::Int32 => "INTEGER",
                DataType::Int64 => "BIGINT",
                DataType::Timestamp(..) => "TIMESTAMP WITH TIME ZONE",
                DataType::Decimal128(..) => "DECIMAL(38,10)",
                DataType::Binary => "BLOB",
                DataType::List(_) => "VARCHAR[]",
                DataType::Map(..) => "MAP(VARCHAR, VARCHAR)",
                other => panic!("unexpected type {other}"),
            };
            assert_eq!(types[f.name()], want, "{}.{}", t.name(), f.name());
        }
        for p in t.partition_columns() {
            let want = if p.athena_type == "date" {
                "DATE"
            } else {
                "VARCHAR"
            };
            assert_eq!(types[p.name], want, "{}.{}", t.name(), p.name);
        }
    }

    check_views(f, &setup);
}

const ROLLING: &str = "[archive.rolling]\nmax_rows = 400\n";

#[test]
fn local_archive_reads_back_exactly_in_duckdb() {
    duckdb::require_duckdb();
    let f = fixture(ROLLING);
    let started = smsvoice::archive::writer::now_ms();
    let out = f.dir.join("out");
    run_process(&f, &out, None, &[]);
    let root = out.join("archive");
    // rotation by rows gave several files in some partition
    let mut per_dir: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for e in walk(&root) {
        *per_dir
            .entry(e.parent().expect("dir").to_path_buf())
            .or_default() += 1;
    }
    assert!(per_dir.values().any(|&n| n > 1), "{per_dir:?}");
    check_archive(&f, &root, started);
}

#[test]
fn s3_archive_reads_back_exactly_in_duckdb() {
    duckdb::require_duckdb();
    let server = support::s3_server::S3Server::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(support::s3_server::create_bucket(
        &server.endpoint,
        "archive",
    ));
    let f = fixture(&format!("{ROLLING}[archive.s3]\nforce_path_style = true\n"));
    let started = smsvoice::archive::writer::now_ms();
    run_process(
        &f,
        &f.dir.join("out"),
        Some("s3://archive/team/sms"),
        &[
            ("AWS_ENDPOINT_URL", &server.endpoint),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    // Download every object and query the copy.
    let root = f.dir.join("downloaded");
    let client = support::s3_server::test_client(&server.endpoint);
    let keys = rt.block_on(async {
        let mut keys = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket("archive")
            .prefix("team/sms/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for o in page.expect("list objects").contents() {
                keys.push(o.key().expect("key").to_owned());
            }
        }
        for k in &keys {
            let body = client
                .get_object()
                .bucket("archive")
                .key(k)
                .send()
                .await
                .expect("get object")
                .body
                .collect()
                .await
                .expect("read body")
                .into_bytes();
            let path = root.join(k.strip_prefix("team/sms/").expect("under the prefix"));
            std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            std::fs::write(&path, &body).expect("write copy");
        }
        keys
    });
    assert!(keys.len() > 10, "objects in S3: {keys:?}");
    assert!(keys.iter().all(|k| k.ends_with(".parquet")), "{keys:?}");
    check_archive(&f, &root, started);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
