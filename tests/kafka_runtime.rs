//! The Kafka runtime end to end, as separate `smsvoice run` processes
//! against Apache Kafka on loopback (one broker per test, installed by
//! `scripts/install-kafka.sh`):
//!
//! * at-least-once: two instances in one group, one killed with SIGKILL
//!   mid-stream and started again; then every output is checked against
//!   oracles, and the archive with DuckDB; then one fresh instance rebuilds
//!   spend and opt-out state from Kafka and reproduces the same totals;
//! * exactly-once: two instances, SIGKILLed at random points (also while a
//!   transaction is open) and restarted, one of them frozen (SIGSTOP) until
//!   the group and the transaction coordinator have moved on and then
//!   resumed as a zombie; a `read_committed` consumer then sees every
//!   output record exactly once.
//!
//! Oracles: the generator's own truth (spend per month and channel, opt-out
//! table, counts), and a single in-process `Core` fed the same records at
//! the same positions (record ids, dead-letter ids, alarm ids).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::decode::RecordSource;
use smsvoice::enrich::Outputs;
use smsvoice::generate::{generate, Generated, Workload};
use smsvoice::kafka::{ensure_topics, KafkaConfig, TopicSpec};
use smsvoice::spend::AlarmRecord;

use support::kafka::{consume_to_end, produce_all, Consumed, KafkaBroker};
use support::outputs::{expected_spend, latest, spend_of};

const INPUT: &str = "sms-events";
const INPUT_PARTITIONS: i32 = 4;

/// What one `Core` makes of the records at their Kafka positions.
struct Oracle {
    record_ids: BTreeSet<String>,
    dead_ids: BTreeSet<String>,
    alarm_ids: BTreeSet<String>,
}

fn oracle(cfg: &Config, records: &[Vec<u8>]) -> Oracle {
    let mut core = Core::new(cfg);
    let mut out = Outputs::default();
    let mut o = Oracle {
        record_ids: BTreeSet::new(),
        dead_ids: BTreeSet::new(),
        alarm_ids: BTreeSet::new(),
    };
    let source: Arc<str> = Arc::from(INPUT);
    for (i, r) in records.iter().enumerate() {
        let p = (i % INPUT_PARTITIONS as usize) as i32;
        let src = RecordSource {
            source: source.clone(),
            partition: Some(p),
            offset: (i / INPUT_PARTITIONS as usize) as i64,
            timestamp_ms: None,
        };
        core.process(r, &src, &mut out);
        o.record_ids
            .extend(out.events.iter().map(|e| e.enrichment.record_id.clone()));
        o.record_ids
            .extend(out.inbound.iter().map(|e| e.enrichment.record_id.clone()));
        o.dead_ids
            .extend(out.dead_letters.iter().map(|d| d.provenance.record_id()));
        o.alarm_ids.extend(out.alarms.iter().map(|a| match a {
            AlarmRecord::AlarmStateChange { id, .. } | AlarmRecord::LimitReached { id, .. } => {
                id.clone()
            }
        }));
        out.clear();
    }
    o
}

/// Archive files cut every 20,000 rows (per partition and table), so that
/// files become durable, and the archive sink's offsets move, while the
/// stream is processed rather than all at the last stop.
const ARCHIVE_CUTS: &str = "\n[archive.rolling]\nmax_rows = 20000\n";

/// The test configuration, with `extra_kafka` appended to `[kafka]` and
/// `extra_properties` to `[kafka.properties]`.
fn config_text_with(
    bootstrap: &str,
    group: &str,
    archive: &Path,
    exactly_once: bool,
    extra_kafka: &str,
    extra_properties: &str,
) -> String {
    format!(
        "{EMBEDDED_DEFAULT}\n[archive]\nuri = {archive:?}\n\n[kafka]\nbootstrap_servers = {bootstrap:?}\n\
         group_id = {group:?}\nexactly_once = {exactly_once}\npartitions = 4\n\
         commit_interval_ms = 500\n{grace}{extra_kafka}\n\
         [kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n\n\
         [kafka.properties]\n{debug}{extra_properties}",
        archive = archive.display().to_string(),
        grace = if extra_kafka.contains("shutdown_grace_ms") {
            ""
        } else {
            "shutdown_grace_ms = 20000\n"
        },
        debug = std::env::var("E2E_RDKAFKA_DEBUG")
            .map(|d| format!("debug = {d:?}\n"))
            .unwrap_or_default(),
    )
}

/// Reads the logs of instances `a` and `b` (for failure messages; the files
/// stay the same when an instance is restarted under the same name).
fn both_logs(a: &Instance, b: &Instance) -> impl Fn() -> String {
    let (la, lb) = (a.log.clone(), b.log.clone());
    move || {
        format!(
            "--- a\n{}\n--- b\n{}",
            std::fs::read_to_string(&la).unwrap_or_default(),
            std::fs::read_to_string(&lb).unwrap_or_default()
        )
    }
}

/// A `smsvoice run` child process, its log in a file.
struct Instance {
    child: Option<Child>,
    log: PathBuf,
}

impl Instance {
    fn start(config: &Path, name: &str, dir: &Path) -> Instance {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
            .args(["run", "--config"])
            .env("SMSVOICE_HTTP__LISTEN", "127.0.0.1:0")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "smsvoice=info".into()),
            )
            .env("SMSVOICE_INSTANCE_ID", name)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log handle"))
            .stderr(f)
            .spawn()
            .expect("start smsvoice run");
        Instance {
            child: Some(child),
            log,
        }
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("wait");
        }
    }

    /// Waits until every stage of this instance has completed a rebalance
    /// (logged `partitions assigned`) after byte `mark` of its log.
    fn wait_for_rebalance(&self, mark: u64) {
        wait_until(
            Duration::from_secs(90),
            || {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let since = text.get(mark as usize..).unwrap_or_default();
                let missing: Vec<&str> = ["router", "messages", "optouts", "totals"]
                    .into_iter()
                    .filter(|s| !since.contains(&format!("partitions assigned stage=\"{s}\"")))
                    .collect();
                (!missing.is_empty()).then(|| format!("stages not rebalanced: {missing:?}"))
            },
            &|| self.log_text(),
        );
    }

    /// Waits until every stage of this instance owns at least one
    /// partition, as logged after byte `mark` of its log.
    fn wait_for_partitions(&self, mark: u64) {
        wait_until(
            Duration::from_secs(120),
            || {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let since = text.get(mark as usize..).unwrap_or_default();
                let missing: Vec<&str> = ["router", "messages", "optouts", "totals"]
                    .into_iter()
                    .filter(|s| {
                        !since.contains(&format!(
                            "partitions assigned stage=\"{s}\" partitions=[(\""
                        ))
                    })
                    .collect();
                (!missing.is_empty()).then(|| format!("stages owning nothing: {missing:?}"))
            },
            &|| self.log_text(),
        );
    }

    /// Waits at most `timeout` for the process to exit by itself; its exit
    /// status if it did (the instance then has no process).
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let c = self.child.as_mut()?;
            if let Some(st) = c.try_wait().expect("try_wait") {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGTERM, then waits for a clean exit.
    fn sigterm(&mut self) {
        if let Some(st) = self.sigterm_status() {
            assert!(
                st.success(),
                "exit after SIGTERM: {st}\n{}",
                self.log_text()
            );
        }
    }

    /// SIGTERM, then waits for the exit and returns its status (`None`: the
    /// process had already been reaped).
    fn sigterm_status(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                return Some(st);
            }
            // The longest shutdown grace of these tests is 60 s.
            if start.elapsed() > Duration::from_secs(90) {
                let _ = c.kill();
                panic!("no exit 90 s after SIGTERM\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last warnings and errors of the log (all runs of the instance).
    fn warnings(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let w: Vec<&str> = t
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("smsvoice"))
            .collect();
        w[w.len().saturating_sub(40)..].join("\n")
    }

    fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = t.len().saturating_sub(6_000);
        t[t.floor_char_boundary(start)..].to_owned()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn create_input(bootstrap: &str) {
    let cfg = KafkaConfig::new(bootstrap);
    let spec = TopicSpec {
        name: INPUT.into(),
        partitions: INPUT_PARTITIONS,
        compacted: false,
        retain_forever: true,
    };
    rt().block_on(ensure_topics(&cfg, &[spec]))
        .expect("create input topic");
}

/// DuckDB over the archive: every accepted delivery event, inbound message
/// and dead letter of the generated stream exactly once (row count and
/// distinct record ids both equal the generator's counts). On failure, the
/// archive sink's log lines of the instances (`logs`).
fn assert_archive_once(archive: &Path, g: &Generated, logs: &dyn Fn() -> String) {
    let setup = support::duckdb::archive_setup(archive);
    let q = |t: &str| format!("SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM {t}");
    let r = support::duckdb::query(
        &setup,
        &[
            q("delivery_events"),
            q("inbound_messages"),
            q("dead_letters"),
        ],
    );
    let n = |i: usize, k: &str| r[i][0][k].as_u64().unwrap_or(u64::MAX) as usize;
    let got = [0, 1, 2].map(|i| (n(i, "n"), n(i, "d")));
    let want = [g.truth.events, g.truth.inbound, g.truth.malformed].map(|w| (w, w));
    if got != want {
        let text = logs();
        let sink: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("---") || l.contains("stage=\"archive\""))
            .collect();
        panic!(
            "archive (rows, distinct ids) of delivery_events, inbound_messages, dead_letters: \
             {got:?}, want {want:?}\narchive sink log lines:\n{}",
            sink[sink.len().saturating_sub(200)..].join("\n")
        );
    }
}

fn read(bootstrap: &str, topic: &str, rc: bool) -> Vec<Consumed> {
    // Everything present now, to each partition's end (a fixed window cut
    // the ~140 MB enriched topics of the crash tests short).
    consume_to_end(bootstrap, topic, rc)
}

fn record_id(v: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(v)
        .ok()
        .and_then(|j| j["recordId"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no recordId in {}", String::from_utf8_lossy(v)))
}

/// Polls `check` every few seconds until it returns None (converged) or
/// `timeout`; panics with its last complaint.
fn wait_until(
    timeout: Duration,
    mut check: impl FnMut() -> Option<String>,
    logs: &dyn Fn() -> String,
) {
    let start = Instant::now();
    loop {
        match check() {
            None => return,
            Some(why) if start.elapsed() > timeout => {
                panic!("not converged after {timeout:?}: {why}\n{}", logs())
            }
            Some(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

fn workload(messages: usize) -> Workload {
    Workload {
        seed: 4242,
        messages,
        ..Workload::default()
    }
}

/// At least 100k input records (48k messages) against Apache Kafka, at
/// least once. Diagnostics: `E2E_MESSAGES` (a smaller run), `E2E_RUST_LOG`
/// (the instances' `RUST_LOG`, e.g. `smsvoice=debug,librdkafka=debug`),
/// `E2E_RDKAFKA_DEBUG` (librdkafka's `debug`, e.g. `cgrp`).
#[test]
fn at_least_once_two_instances_sigkill_and_restore() {
    let broker = KafkaBroker::start();
    create_input(&broker.bootstrap);
    let messages = std::env::var("E2E_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok());
    let records = two_instances_sigkill_and_restore(&broker.bootstrap, messages.unwrap_or(48_000));
    if messages.is_none() {
        assert!(records >= 100_000, "{records} input records");
    }
}

/// The at-least-once scenario (see the module doc); returns the number of
/// input records produced.
fn two_instances_sigkill_and_restore(bootstrap: &str, messages: usize) -> usize {
    support::s3_server::init_test_env();
    let bootstrap = bootstrap.to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("archive");
    let cfg_path = dir.path().join("smsvoice.toml");
    // The EOS test's grace and cuts: most archive files are cut while the
    // stream is processed, and the last owners of the archive partitions
    // have time, at debug-build speed on a loaded machine, to read to the
    // end and write what they hold (a 20 s grace left one instance's half
    // unwritten in one CI run: the next owner would have written it).
    std::fs::write(
        &cfg_path,
        config_text_with(
            &bootstrap,
            "e2e",
            &archive,
            false,
            "shutdown_grace_ms = 60000\n",
            "",
        ) + ARCHIVE_CUTS,
    )
    .expect("config");
    let cfg = Config::load(&cfg_path).expect("config parses");

    let g = generate(&workload(messages));
    assert!(
        g.records.len() >= messages * 2,
        "{} records",
        g.records.len()
    );
    let want = oracle(&cfg, &g.records);
    let want_spend = expected_spend(&g);
    assert_eq!(want.record_ids.len(), g.truth.events + g.truth.inbound);
    assert_eq!(want.dead_ids.len(), g.truth.malformed);
    assert!(!want.alarm_ids.is_empty(), "the workload must fire alarms");
    assert!(g.truth.optouts.values().any(|v| *v) && g.truth.optouts.values().any(|v| !*v));

    let mut a = Instance::start(&cfg_path, "a", dir.path());
    let mut b = Instance::start(&cfg_path, "b", dir.path());
    let logs = both_logs(&a, &b);
    // The spread is deliberate: record i goes to partition i % 4, whatever
    // its message, so the events of one message are on several partitions.
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    let half = records.len() / 2;
    // Keep partition assignment i % 4 across the two halves.
    let half = half - half % INPUT_PARTITIONS as usize;
    produce_all(&bootstrap, INPUT, INPUT_PARTITIONS, &records[..half]);
    std::thread::sleep(Duration::from_secs(4));
    a.sigkill();
    produce_all(&bootstrap, INPUT, INPUT_PARTITIONS, &records[half..]);
    std::thread::sleep(Duration::from_secs(2));
    let mut a = Instance::start(&cfg_path, "a", dir.path());

    let spend_topic = "smsvoice.spend";
    // Spend is final once the owners release what they hold for the spend
    // watermarks: an event forwarded at router time f waits for every other
    // input partition to be confirmed idle at f + 60 s or later (markers
    // repeat every 60 s), after the restarted instance has caught up: a few
    // minutes on a loaded 2-core machine (the EOS test waits as long).
    wait_until(
        Duration::from_secs(300),
        || {
            let got = spend_of(&read(&bootstrap, spend_topic, false));
            (got != want_spend).then(|| {
                format!(
                    "spend {got:?}\nwant {want_spend:?}\n{}",
                    diagnose_partials(&bootstrap, &cfg)
                )
            })
        },
        &logs,
    );
    wait_until(
        Duration::from_secs(120),
        || {
            let ids: BTreeSet<String> = read(&bootstrap, "smsvoice.enriched-events", false)
                .iter()
                .chain(read(&bootstrap, "smsvoice.enriched-inbound", false).iter())
                .map(|r| record_id(&r.3))
                .collect();
            (ids != want.record_ids).then(|| {
                let missing: Vec<&String> = want.record_ids.difference(&ids).take(10).collect();
                format!(
                    "{} of {} record ids; missing (first 10): {missing:?}",
                    ids.len(),
                    want.record_ids.len()
                )
            })
        },
        &logs,
    );
    a.sigterm();
    b.sigterm();

    // Enriched topics: every input once at least, no id the oracle lacks.
    let events = read(&bootstrap, "smsvoice.enriched-events", false);
    let inbound = read(&bootstrap, "smsvoice.enriched-inbound", false);
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for r in events.iter().chain(&inbound) {
        *ids.entry(record_id(&r.3)).or_default() += 1;
    }
    let id_set: BTreeSet<String> = ids.keys().cloned().collect();
    assert_eq!(id_set, want.record_ids);
    let repeats: usize = ids.values().map(|n| n - 1).sum();
    eprintln!(
        "enriched records: {} ({} repeats of {} ids)",
        events.len() + inbound.len(),
        repeats,
        ids.len()
    );

    // Spend: exact, from the generator's truth.
    assert_eq!(spend_of(&read(&bootstrap, spend_topic, false)), want_spend);

    // Alarms: the same distinct ids as the oracle's transitions.
    let alarms = read(&bootstrap, "smsvoice.alarms", false);
    let alarm_ids: BTreeSet<String> = alarms
        .iter()
        .map(|r| String::from_utf8_lossy(r.2.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(alarm_ids, want.alarm_ids);
    for r in &alarms {
        let v: serde_json::Value = serde_json::from_slice(&r.3).expect("alarm JSON");
        assert_eq!(v["id"].as_str().map(str::as_bytes), r.2.as_deref());
    }

    // Opt-out changelog: the truth's final table.
    let table = optout_table(&bootstrap);
    assert_eq!(table, g.truth.optouts);

    // Dead letters: every malformed record, original bytes kept.
    let dead = read(&bootstrap, "smsvoice.dead-letters", false);
    let mut dead_ids = BTreeSet::new();
    for r in &dead {
        let h = |k: &str| {
            r.4.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| panic!("dead letter without header {k}"))
        };
        let id = h("smsvoice.record-id");
        assert!(!h("smsvoice.reason").is_empty());
        let p: usize = h("smsvoice.source.partition").parse().expect("partition");
        let o: usize = h("smsvoice.source.offset").parse().expect("offset");
        let original = &g.records[o * INPUT_PARTITIONS as usize + p];
        assert!(
            original
                .windows(r.3.len().max(1))
                .any(|w| w == r.3.as_slice()),
            "dead letter {id} is not a span of its source record"
        );
        dead_ids.insert(id);
    }
    assert_eq!(dead_ids, want.dead_ids);

    // Archive: each accepted payload and dead letter exactly once (DuckDB).
    assert_archive_once(&archive, &g, &logs);

    // Restore: one fresh instance (new process, no local state) rebuilds
    // spend and opt-out state from Kafka. A record produced now for a known
    // message must be deduplicated against the restored ledger, and the
    // spend values it writes must still equal the truth.
    let spend_before = read(&bootstrap, spend_topic, false).len();
    let mut c = Instance::start(&cfg_path, "c", dir.path());
    let replayed: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        records[..INPUT_PARTITIONS as usize * 50].to_vec();
    produce_all(&bootstrap, INPUT, INPUT_PARTITIONS, &replayed);
    let log_c = c.log.clone();
    wait_until(
        Duration::from_secs(120),
        || {
            let t = std::fs::read_to_string(&log_c).unwrap_or_default();
            let restored = t.matches("state restored").count();
            (restored < 8).then(|| format!("{restored} partitions restored"))
        },
        &|| std::fs::read_to_string(&log_c).unwrap_or_default(),
    );
    std::thread::sleep(Duration::from_secs(5));
    c.sigterm();
    // Repeated input changes no total (the restored ledger knows those
    // events), though the spend topic may have new records.
    assert_eq!(spend_of(&read(&bootstrap, spend_topic, false)), want_spend);
    assert!(read(&bootstrap, spend_topic, false).len() >= spend_before);
    assert_eq!(optout_table(&bootstrap), g.truth.optouts);
    eprintln!(
        "{} input records ({messages} messages), restore of c: {}",
        g.records.len(),
        restore_summary(&std::fs::read_to_string(&log_c).unwrap_or_default())
    );
    g.records.len()
}

/// `restored_records` and `restore_ms` from the last progress line of a log.
fn restore_summary(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("restore_ms="))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("restored_records=") || w.starts_with("restore_ms="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Where spend went wrong: the latest partial per key on `spend-partials`
/// against partials recomputed by fresh owners from `events-by-message`
/// (which tells a lost forward from a lost or stale partial).
fn diagnose_partials(bootstrap: &str, cfg: &Config) -> String {
    use smsvoice::model::Provenance;
    use smsvoice::stages::message_owner::{MessageOwner, OwnerOutputs};
    use smsvoice::stages::view::View;
    let published: BTreeMap<String, String> =
        latest(&read(bootstrap, "smsvoice.internal.spend-partials", false))
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
    // Totals: where the latest state of a key disagrees with its latest
    // partials, which partial and at which offset.
    let mut last_partial: BTreeMap<(String, i64), (i32, i64, String)> = BTreeMap::new();
    let mut partial_recs = read(bootstrap, "smsvoice.internal.spend-partials", false);
    partial_recs.sort_by_key(|r| (r.0, r.1));
    for r in &partial_recs {
        let v: serde_json::Value = serde_json::from_slice(&r.3).unwrap_or_default();
        let k = format!(
            "{}|{}",
            v["month"].as_str().unwrap_or(""),
            v["channel"].as_str().unwrap_or("")
        );
        let p = v["partition"].as_i64().unwrap_or(-1);
        last_partial.insert(
            (k, p),
            (r.0, r.1, v["spendUsd"].as_str().unwrap_or("").to_owned()),
        );
    }
    let mut totals_report = String::new();
    for (k, v) in latest(&read(bootstrap, "smsvoice.spend", false)) {
        let k = String::from_utf8_lossy(&k).into_owned();
        let state = String::from_utf8_lossy(&v).into_owned();
        let mine: Vec<String> = last_partial
            .iter()
            .filter(|((kk, _), _)| *kk == k)
            .map(|((_, p), (q, o, usd))| format!("p{p}={usd}@[{q}]{o}"))
            .collect();
        totals_report.push_str(&format!(
            "state {k}: {state}\n  latest partials: {}\n",
            mine.join(" ")
        ));
    }
    let mut forwarded = read(bootstrap, "smsvoice.internal.events-by-message", false);
    forwarded.sort_by_key(|r| (r.0, r.1));
    let view = View::new(&cfg.optout);
    let mut owners: BTreeMap<i32, MessageOwner> = BTreeMap::new();
    let mut out = OwnerOutputs::default();
    let topic: Arc<str> = Arc::from("smsvoice.internal.events-by-message");
    // recordId -> (costUsd, lateReceipt, duplicate) as published.
    let mut live: BTreeMap<String, (String, bool, bool)> = BTreeMap::new();
    for r in read(bootstrap, "smsvoice.enriched-events", false) {
        let v: serde_json::Value = serde_json::from_slice(&r.3).unwrap_or_default();
        live.entry(v["recordId"].as_str().unwrap_or_default().to_owned())
            .or_insert((
                v["costUsd"].as_str().unwrap_or_default().to_owned(),
                v["lateReceipt"].as_bool().unwrap_or(false),
                v["duplicate"].as_bool().unwrap_or(false),
            ));
    }
    let mut diverged = Vec::new();
    for r in &forwarded {
        let owner = owners
            .entry(r.0)
            .or_insert_with(|| MessageOwner::new(&cfg.spend, r.0));
        let at = Provenance {
            source: topic.clone(),
            partition: Some(r.0),
            offset: r.1,
            sub: 0,
        };
        owner.process(&r.3, &at, &view, &mut out);
        for e in &out.events {
            let en = &e.enrichment;
            let mine = (en.cost_usd.to_string(), en.late_receipt, en.duplicate);
            if let Some(l) = live.get(&en.record_id) {
                if *l != mine && diverged.len() < 8 {
                    diverged.push(format!(
                        "[{}]@{} {} {} {}: live {l:?} fresh {mine:?}",
                        r.0, r.1, en.record_id, e.event.message_id, e.event.event_type
                    ));
                }
            }
        }
        out.clear();
    }
    let mut report = format!(
        "{} forwarded records; first divergences of enriched events:\n{}\n{totals_report}",
        forwarded.len(),
        diverged.join("\n")
    );
    // Order: per key, the message count of partials and the throughOffset
    // of spend states never decrease along the log.
    for (topic, field) in [
        ("smsvoice.internal.spend-partials", "messages"),
        ("smsvoice.spend", "throughOffset"),
    ] {
        let mut recs = read(bootstrap, topic, false);
        recs.sort_by_key(|r| (r.0, r.1));
        let mut last: BTreeMap<Vec<u8>, (i64, u64)> = BTreeMap::new();
        let mut backwards = 0;
        for r in &recs {
            let v: serde_json::Value = serde_json::from_slice(&r.3).unwrap_or_default();
            let n = v[field].as_u64().unwrap_or(0);
            let key = r.2.clone().unwrap_or_default();
            if let Some((o, prev)) = last.get(&key) {
                if n < *prev {
                    backwards += 1;
                    if backwards <= 3 {
                        report.push_str(&format!(
                            "{topic} [{}] {} < @{o}: {field} {n} < {prev}\n",
                            r.0, r.1
                        ));
                    }
                }
            }
            last.insert(key, (r.1, n));
        }
        report.push_str(&format!(
            "{topic}: {} records, {backwards} out of order\n",
            recs.len()
        ));
    }
    for owner in owners.values() {
        for p in owner.partials() {
            let want = serde_json::to_string(&p).unwrap_or_default();
            match published.get(&p.key()) {
                Some(got) if *got == want => {}
                got => report.push_str(&format!(
                    "partial {}: published {got:?}, recomputed {want}\n",
                    p.key()
                )),
            }
        }
    }
    report
}

fn optout_table(bootstrap: &str) -> BTreeMap<(String, String), bool> {
    optout_table_rc(bootstrap, false)
}

/// The opt-out table from the changelog (`rc`: read committed only).
fn optout_table_rc(bootstrap: &str, rc: bool) -> BTreeMap<(String, String), bool> {
    support::outputs::optout_table(&read(bootstrap, "smsvoice.optout-changelog", rc))
}

/// `smsvoice demo` (the README's first command, here with fewer messages):
/// exits 0 and reports spend and opt-outs equal to the generator's truth.
#[test]
fn demo_command_matches_the_generators_truth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args(["demo", "--messages", "2000", "--out"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run smsvoice demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.matches("equal to the generator's ground truth: yes")
            .count()
            + text.matches("equal to the ground truth: yes").count(),
        2,
        "{text}"
    );
    assert!(!text.contains(": NO"), "{text}");
    assert!(dir.path().join("archive").is_dir());
}

/// A record to produce: key, value.
type KeyedRecord = (Option<Vec<u8>>, Vec<u8>);

/// A small deterministic random source for the crash schedule (xorshift64*),
/// seeded from `E2E_SEED` or the clock; the seed is printed so a failing
/// schedule can be replayed.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::env::var("E2E_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("crash schedule seed: E2E_SEED={seed}");
        Dice(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration in `[lo, hi)` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// Sends a signal to a child process.
fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig}");
}

/// Exactly-once against Apache Kafka, under crashes: two instances consume
/// a stream of at least 100k records produced in chunks; meanwhile an
/// instance is SIGKILLed at least 3 times at random points (commit points
/// are every 500 ms and records keep arriving, so a transaction is open at
/// almost every kill; the test checks that some transaction was indeed
/// left open by a kill: its records are in the log but aborted) and started
/// again under the same instance id (so its transactional ids fence the
/// dead process's). Then one instance is frozen with SIGSTOP until the
/// other has taken over its partitions and the broker has aborted its open
/// transaction, and is resumed: a zombie, whose transaction must fail as
/// fenced. A fenced producer is fatal (the same error as a second process
/// running under this instance id): the zombie stops within seconds with
/// exit code 3 and one `smsvoice run: fatal: Kafka producer fenced` line,
/// and is started again, as Kubernetes would. (Were no transaction of the
/// zombie open when it froze, nothing fences it and it carries on.) A
/// `read_committed` consumer then sees every enriched record,
/// alarm, limit and dead letter exactly once, the opt-out changelog and the
/// spend topic equal the generator's truth, and the archive has each row
/// once (DuckDB).
#[test]
fn exactly_once_survives_sigkills_and_a_zombie() {
    support::s3_server::init_test_env();
    let broker = KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    create_input(&bootstrap);
    let mut dir = tempfile::tempdir().expect("tempdir");
    // E2E_KEEP: keep the instances' logs and the archive for diagnosis.
    dir.disable_cleanup(std::env::var_os("E2E_KEEP").is_some());
    eprintln!("test directory: {}", dir.path().display());
    let archive = dir.path().join("archive");
    let cfg_path = dir.path().join("smsvoice.toml");
    // Short session and transaction timeouts so the frozen instance is
    // replaced within seconds (production keeps librdkafka's defaults).
    std::fs::write(
        &cfg_path,
        config_text_with(
            &bootstrap,
            "eos",
            &archive,
            true,
            // A longer grace than the other tests: the last owner of each
            // archive partition writes at its stop what it has not cut yet,
            // at debug-build speed.
            "transaction_timeout_ms = 20000\nworkers = 2\nshutdown_grace_ms = 60000\n",
            "\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
        ) + ARCHIVE_CUTS,
    )
    .expect("config");
    let cfg = Config::load(&cfg_path).expect("config parses");
    let messages = std::env::var("E2E_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48_000);
    let g = generate(&workload(messages));
    let want = oracle(&cfg, &g.records);
    let want_spend = expected_spend(&g);
    assert_eq!(want.record_ids.len(), g.truth.events + g.truth.inbound);
    assert_eq!(want.dead_ids.len(), g.truth.malformed);
    assert!(!want.alarm_ids.is_empty(), "the workload must fire alarms");
    if std::env::var_os("E2E_MESSAGES").is_none() {
        assert!(g.records.len() >= 100_000, "{} records", g.records.len());
    }

    let mut dice = Dice::new();
    let mut inst = [
        Instance::start(&cfg_path, "a", dir.path()),
        Instance::start(&cfg_path, "b", dir.path()),
    ];
    let logs = both_logs(&inst[0], &inst[1]);
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    // Chunks of a multiple of the partition count keep record i on
    // partition i % 4 (the oracle's positions). The last chunk is held back
    // for the zombie phase.
    let chunk = 4 * (records.len() / 4 / 10).max(1);
    let chunks: Vec<Vec<KeyedRecord>> = records.chunks(chunk).map(<[_]>::to_vec).collect();
    let (body, last) = chunks.split_at(chunks.len() - 1);
    let producer = {
        let (bootstrap, body) = (bootstrap.clone(), body.to_vec());
        std::thread::spawn(move || {
            for c in &body {
                produce_all(&bootstrap, INPUT, INPUT_PARTITIONS, c);
                std::thread::sleep(Duration::from_millis(700));
            }
        })
    };
    let mut kills = 0;
    // Log length of each instance at its last start.
    let mut started_at = [0u64; 2];
    std::thread::sleep(Duration::from_secs(3));
    while kills < 3 || !producer.is_finished() {
        let victim = (dice.next() % 2) as usize;
        std::thread::sleep(dice.ms(500, 3_000));
        inst[victim].sigkill();
        kills += 1;
        eprintln!("SIGKILL {} (kill {kills})", ["a", "b"][victim]);
        std::thread::sleep(dice.ms(0, 1_500));
        started_at[victim] = std::fs::metadata(&inst[victim].log)
            .map(|m| m.len())
            .unwrap_or(0);
        inst[victim] = Instance::start(&cfg_path, ["a", "b"][victim], dir.path());
        if kills >= 6 {
            break;
        }
    }
    producer.join().expect("producer thread");

    // The zombie: once a owns partitions of every stage again, feed the
    // last chunk and freeze a while it is processing it (its transaction
    // open), let b take over (session timeout) and the broker abort a's
    // transaction (transaction timeout), then resume a.
    inst[0].wait_for_partitions(started_at[0]);
    let mark = std::fs::metadata(&inst[1].log)
        .map(|m| m.len())
        .unwrap_or(0);
    let frozen_log = std::fs::metadata(&inst[0].log)
        .map(|m| m.len())
        .unwrap_or(0);
    let last_chunk = {
        let (bootstrap, last) = (bootstrap.clone(), last[0].clone());
        std::thread::spawn(move || produce_all(&bootstrap, INPUT, INPUT_PARTITIONS, &last))
    };
    std::thread::sleep(Duration::from_millis(800));
    if let Some(c) = inst[0].child.as_ref() {
        signal(c, "-STOP");
    }
    last_chunk.join().expect("last chunk");
    inst[1].wait_for_rebalance(mark);
    // > transaction_timeout_ms (the test broker looks for timed-out
    // transactions every second).
    std::thread::sleep(Duration::from_secs(22));
    if let Some(c) = inst[0].child.as_ref() {
        signal(c, "-CONT");
    }
    match inst[0].wait_exit(Duration::from_secs(45)) {
        Some(st) => {
            let text = std::fs::read_to_string(&inst[0].log).unwrap_or_default();
            let since = text.get(frozen_log as usize..).unwrap_or_default();
            let fatal: Vec<&str> = since
                .lines()
                .filter(|l| l.starts_with("smsvoice run: "))
                .collect();
            assert_eq!(
                st.code(),
                Some(3),
                "the fenced zombie's exit: {st}\n{}",
                inst[0].log_text()
            );
            assert_eq!(
                fatal.len(),
                1,
                "one line: {fatal:?}\n{}",
                inst[0].log_text()
            );
            assert!(
                fatal[0].starts_with("smsvoice run: fatal: Kafka producer fenced ("),
                "{}",
                fatal[0]
            );
            eprintln!("zombie exited (code 3): {}", fatal[0]);
            inst[0] = Instance::start(&cfg_path, "a", dir.path());
        }
        None => eprintln!("the zombie was not fenced within 45 s of SIGCONT"),
    }
    let zombie_restarted = inst[0].child.is_some() && {
        let t = std::fs::read_to_string(&inst[0].log).unwrap_or_default();
        t.get(frozen_log as usize..)
            .unwrap_or_default()
            .contains("smsvoice run: fatal: Kafka producer fenced (")
    };

    wait_until(
        Duration::from_secs(300),
        || {
            let got = spend_of(&read(&bootstrap, "smsvoice.spend", true));
            (got != want_spend).then(|| format!("spend {got:?}\nwant {want_spend:?}"))
        },
        &logs,
    );
    wait_until(
        Duration::from_secs(180),
        || {
            let n = read(&bootstrap, "smsvoice.enriched-events", true).len()
                + read(&bootstrap, "smsvoice.enriched-inbound", true).len();
            (n < want.record_ids.len()).then(|| format!("{n} of {}", want.record_ids.len()))
        },
        &logs,
    );
    let zombie_text = std::fs::read_to_string(&inst[0].log).unwrap_or_default();
    let zombie_text = zombie_text
        .get(frozen_log as usize..)
        .unwrap_or_default()
        .to_owned();
    // b, and a once restarted, stop cleanly. A zombie not yet fenced may
    // learn it is at its shutdown commit: then it exits 3 with the fenced
    // line, which is the documented behaviour, not a failure.
    // What the broker's transaction coordinator said about timeouts and
    // fencing (an instance fenced although no process shared its id had a
    // transaction outlive transaction_timeout_ms).
    let coordinator = || {
        broker
            .log()
            .lines()
            .filter(|l| l.contains("kafka.coordinator.transaction") && !l.contains("Initialized"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let clean = |i: &mut Instance, name: &str| {
        if let Some(st) = i.sigterm_status() {
            assert!(
                st.success(),
                "{name}'s exit after SIGTERM: {st}\n{}\n--- its warnings\n{}\n--- transaction coordinator\n{}",
                i.log_text(),
                i.warnings(),
                coordinator()
            );
        }
    };
    clean(&mut inst[1], "b");
    if zombie_restarted {
        clean(&mut inst[0], "a (restarted after it was fenced)");
    } else if let Some(st) = inst[0].sigterm_status() {
        let text = inst[0].log_text();
        assert!(
            st.success()
                || (st.code() == Some(3)
                    && text.contains("smsvoice run: fatal: Kafka producer fenced (")),
            "the zombie's exit after SIGTERM: {st}\n{text}"
        );
    }

    // Every enriched record exactly once.
    let committed_events = read(&bootstrap, "smsvoice.enriched-events", true);
    let committed_inbound = read(&bootstrap, "smsvoice.enriched-inbound", true);
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for r in committed_events.iter().chain(&committed_inbound) {
        *ids.entry(record_id(&r.3)).or_default() += 1;
    }
    let repeated: Vec<(&String, &usize)> = ids.iter().filter(|(_, n)| **n > 1).take(5).collect();
    if !repeated.is_empty() {
        // Where each copy is (topic partition and offset: one record read
        // twice, or two records), and the records of the same message on
        // the internal topic its owner reads (one per event of the message
        // unless the router committed one twice).
        let mut copies = String::new();
        let by_message = read(&bootstrap, "smsvoice.internal.events-by-message", true);
        for (id, _) in &repeated {
            let mut keys = BTreeSet::new();
            for (topic, rs) in [
                ("smsvoice.enriched-events", &committed_events),
                ("smsvoice.enriched-inbound", &committed_inbound),
            ] {
                for r in rs.iter().filter(|r| record_id(&r.3) == **id) {
                    copies += &format!("{id}: {topic} [{}] @{}\n", r.0, r.1);
                    keys.insert(r.2.clone());
                }
            }
            for r in by_message.iter().filter(|r| keys.contains(&r.2)) {
                copies += &format!(
                    "{id}: its message on smsvoice.internal.events-by-message [{}] @{} ({} bytes)\n",
                    r.0,
                    r.1,
                    r.3.len()
                );
            }
        }
        panic!(
            "repeated under exactly-once: {repeated:?}\n{copies}{}",
            logs()
        );
    }
    assert_eq!(
        ids.keys().cloned().collect::<BTreeSet<_>>(),
        want.record_ids
    );
    // The kills left transactions open: their records are in the log
    // (read_uncommitted sees them) but were aborted.
    let uncommitted = read(&bootstrap, "smsvoice.enriched-events", false).len()
        + read(&bootstrap, "smsvoice.enriched-inbound", false).len();
    let committed = committed_events.len() + committed_inbound.len();
    assert!(
        uncommitted > committed,
        "no kill hit an open transaction ({uncommitted} records written, {committed} committed): the test proved nothing"
    );

    // Alarms and limits: each id once, the oracle's transitions.
    let alarms = read(&bootstrap, "smsvoice.alarms", true);
    let mut alarm_ids: BTreeMap<String, usize> = BTreeMap::new();
    for r in &alarms {
        let id = String::from_utf8_lossy(r.2.as_deref().unwrap_or_default()).into_owned();
        *alarm_ids.entry(id).or_default() += 1;
    }
    assert!(alarm_ids.values().all(|n| *n == 1), "{alarm_ids:?}");
    assert_eq!(
        alarm_ids.keys().cloned().collect::<BTreeSet<_>>(),
        want.alarm_ids
    );

    // Spend and opt-outs: the truth.
    assert_eq!(
        spend_of(&read(&bootstrap, "smsvoice.spend", true)),
        want_spend
    );
    assert_eq!(optout_table_rc(&bootstrap, true), g.truth.optouts);

    // Dead letters: every malformed record once.
    let dead = read(&bootstrap, "smsvoice.dead-letters", true);
    let mut dead_ids: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dead {
        let id =
            r.4.iter()
                .find(|(n, _)| n == "smsvoice.record-id")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .expect("dead letter record id header");
        *dead_ids.entry(id).or_default() += 1;
    }
    assert!(dead_ids.values().all(|n| *n == 1), "dead letters repeated");
    assert_eq!(
        dead_ids.keys().cloned().collect::<BTreeSet<_>>(),
        want.dead_ids
    );

    // Archive: each row once.
    assert_archive_once(&archive, &g, &logs);
    // What the zombie did once resumed: it must have noticed that it was
    // replaced (its partitions revoked or lost, its transaction aborted or
    // fenced) rather than committing.
    let noticed: Vec<&str> = zombie_text
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            ["revoked", "lost", "abort", "fenc", "epoch", "generation"]
                .iter()
                .any(|w| l.contains(w))
        })
        .take(12)
        .collect();
    eprintln!("zombie after SIGCONT:\n{}", noticed.join("\n"));
    assert!(
        !noticed.is_empty(),
        "the resumed zombie logged nothing about losing its partitions:\n{zombie_text}"
    );
    eprintln!(
        "exactly-once: {} input records, {kills} SIGKILLs + one SIGSTOP/SIGCONT zombie; \
         read_committed saw {committed} enriched records ({} ids, none twice), \
         {uncommitted} written in all (aborted: {}), {} alarm/limit records, {} dead letters",
        g.records.len(),
        ids.len(),
        uncommitted - committed,
        alarms.len(),
        dead.len(),
    );
}

/// The README's `[kafka]` example is a valid configuration, and says what
/// the parser understands.
#[test]
fn readme_kafka_example_parses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let from = readme
        .find("id=\"kafka-section\"")
        .expect("kafka section anchor");
    let block = readme[from..]
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block after the anchor");
    let cfg = Config::from_toml(&format!("{EMBEDDED_DEFAULT}\n{block}"), "README")
        .unwrap_or_else(|e| panic!("README [kafka] example: {e}\n{block}"));
    let k = cfg.kafka.expect("[kafka] present");
    assert_eq!(k.input_topics.all(), ["sms-voice-events", "sms-inbound"]);
    assert_eq!(
        k.properties.get("security.protocol").map(String::as_str),
        Some("SASL_SSL")
    );
}
