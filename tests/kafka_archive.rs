//! The archive sink against Apache Kafka on loopback (`scripts/install-kafka.sh`),
//! as separate `smsvoice run` processes, at least once:
//!
//! * files roll by `[archive.rolling]` (`max_rows = 500`, so they roll many
//!   times during the run), not at commit points (every 500 ms here);
//! * one instance is SIGKILLed mid-file and started again;
//! * DuckDB then finds every accepted event, inbound message and dead letter
//!   of the generated stream exactly once, and the set of archive objects
//!   (name, directory, rows) is exactly what an independent simulation of
//!   the rolling policy over the output topics predicts: files named by the
//!   output partition and the offset of their first row, cut when a file
//!   reaches 500 rows, the rest cut at shutdown; repeats of the
//!   at-least-once replay (same `recordId`) archived once, at their first
//!   occurrence;
//! * a store that refuses the instance (an S3 bucket that does not exist,
//!   on moto) stops it with exit code 4 and one line.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smsvoice::archive::naming::{file_name, partition_dir, topic_tag};
use smsvoice::archive::Table;
use smsvoice::config::EMBEDDED_DEFAULT;
use smsvoice::decode::{decode_delivery_with, TimeBound};
use smsvoice::generate::{generate, Workload};
use smsvoice::kafka::{ensure_topics, KafkaConfig, TopicSpec};
use smsvoice::limits::Limits;

use support::kafka::{consume_all, produce_all, Consumed, KafkaBroker};

const INPUT: &str = "sms-events";
const INPUT_PARTITIONS: i32 = 4;
const MAX_ROWS: usize = 500;
const EVENTS: &str = "smsvoice.enriched-events";
const INBOUND: &str = "smsvoice.enriched-inbound";
const DEAD: &str = "smsvoice.dead-letters";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

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
            .env("RUST_LOG", "smsvoice=info")
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

    fn sigterm(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn header<'a>(r: &'a Consumed, name: &str) -> Option<&'a [u8]> {
    r.4.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn header_ms(r: &Consumed, name: &str) -> i64 {
    header(r, name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn record_id(r: &Consumed) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.3).expect("enriched JSON");
    v["recordId"].as_str().expect("recordId").to_owned()
}

/// The archive objects the rolling policy makes of one output topic:
/// relative path -> rows. `dir` gives each record's partition directory.
fn simulate(
    topic: &str,
    records: &[Consumed],
    id: impl Fn(&Consumed) -> String,
    dir: impl Fn(&Consumed) -> String,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut by_partition: BTreeMap<i32, Vec<&Consumed>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.0).or_default().push(r);
    }
    for (p, recs) in by_partition {
        // dir -> (first offset, rows) of the open segment
        let mut open: BTreeMap<String, (i64, usize)> = BTreeMap::new();
        let mut flush = |open: &mut BTreeMap<String, (i64, usize)>| {
            for (d, (first, rows)) in std::mem::take(open) {
                out.insert(
                    format!("{d}/{}", file_name(&topic_tag(topic), p, first)),
                    rows,
                );
            }
        };
        for r in recs {
            if !seen.insert(id(r)) {
                continue; // a repeat: archived at its first occurrence
            }
            let f = open.entry(dir(r)).or_insert((r.1, 0));
            f.1 += 1;
            if f.1 >= MAX_ROWS {
                flush(&mut open);
            }
        }
        flush(&mut open);
    }
    out
}

#[test]
fn files_roll_by_policy_and_every_row_is_archived_once_after_sigkill() {
    let broker = KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    support::s3_server::init_test_env();
    rt().block_on(ensure_topics(
        &KafkaConfig::new(&bootstrap),
        &[TopicSpec {
            name: INPUT.into(),
            partitions: INPUT_PARTITIONS,
            compacted: false,
            retain_forever: true,
        }],
    ))
    .expect("create input topic");
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("archive");
    let cfg_path = dir.path().join("smsvoice.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "{EMBEDDED_DEFAULT}\n[archive]\nuri = {uri:?}\n\n[archive.rolling]\nmax_rows = {MAX_ROWS}\n\
             max_bytes = 1073741824\nmax_age = \"1h\"\n\n[kafka]\nbootstrap_servers = {bootstrap:?}\n\
             group_id = \"arch\"\nexactly_once = false\npartitions = 4\ncommit_interval_ms = 500\n\
             shutdown_grace_ms = 30000\n\n[kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n",
            uri = archive.display().to_string()
        ),
    )
    .expect("config");
    // One day of traffic: a few partition directories, so files fill up.
    let g = generate(&Workload {
        seed: 99,
        messages: 12_000,
        span_ms: 86_400_000,
        ..Workload::default()
    });
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    let half = records.len() / 2;
    let half = half - half % INPUT_PARTITIONS as usize;

    let mut a = Instance::start(&cfg_path, "a", dir.path());
    let mut b = Instance::start(&cfg_path, "b", dir.path());
    produce_all(&bootstrap, INPUT, INPUT_PARTITIONS, &records[..half]);
    // Wait until files have rolled, then kill `a` while it holds open files.
    let start = Instant::now();
    while count_files(&archive) < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no archive file rolled\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Kill `a` while its stages are busy with a fresh batch (outputs not
    // yet committed are written again: repeats for the sink to drop).
    produce_all(
        &bootstrap,
        INPUT,
        INPUT_PARTITIONS,
        &records[half..half + 6000],
    );
    std::thread::sleep(Duration::from_millis(300));
    a.sigkill();
    produce_all(&bootstrap, INPUT, INPUT_PARTITIONS, &records[half + 6000..]);
    std::thread::sleep(Duration::from_secs(3));
    let mut a = Instance::start(&cfg_path, "a", dir.path());

    // Wait until the owners have written every accepted payload.
    let want = g.truth.events + g.truth.inbound;
    let start = Instant::now();
    loop {
        let ids: BTreeSet<String> =
            consume_all(&bootstrap, EVENTS, want, Duration::from_secs(5), false)
                .iter()
                .chain(consume_all(&bootstrap, INBOUND, 0, Duration::from_secs(3), false).iter())
                .map(record_id)
                .collect();
        if ids.len() >= want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "{} of {want} ids\n{}",
            ids.len(),
            a.log_text()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(a.sigterm(), Some(0), "{}", a.log_text());
    assert_eq!(b.sigterm(), Some(0), "{}", b.log_text());

    // Every row exactly once (DuckDB).
    let setup = support::duckdb::archive_setup(&archive);
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
    assert_eq!((n(0, "n"), n(0, "d")), (g.truth.events, g.truth.events));
    assert_eq!((n(1, "n"), n(1, "d")), (g.truth.inbound, g.truth.inbound));
    assert_eq!(
        (n(2, "n"), n(2, "d")),
        (g.truth.malformed, g.truth.malformed)
    );

    // Files: exactly those of the rolling policy over the output topics, as
    // the sink reads them: read_committed (the message stage writes in
    // transactions, so a killed instance leaves aborted records that the
    // sink never sees and a read_uncommitted reader would count as the
    // first occurrence of their redone copies).
    let events = consume_all(&bootstrap, EVENTS, 0, Duration::from_secs(5), true);
    let inbound = consume_all(&bootstrap, INBOUND, 0, Duration::from_secs(3), true);
    let dead = consume_all(&bootstrap, DEAD, 0, Duration::from_secs(3), true);
    let repeats = events.len() + inbound.len() - want;
    let limits = Limits::DEFAULT;
    let mut expected = simulate(EVENTS, &events, record_id, |r| {
        let (e, _) = decode_delivery_with(&r.3, &limits, TimeBound::NONE).expect("event");
        partition_dir(Table::DeliveryEvents, e.event_timestamp, Some(e.channel))
    });
    expected.extend(simulate(INBOUND, &inbound, record_id, |r| {
        partition_dir(
            Table::InboundMessages,
            header_ms(r, "smsvoice.received-at"),
            None,
        )
    }));
    expected.extend(simulate(
        DEAD,
        &dead,
        |r| {
            String::from_utf8_lossy(header(r, "smsvoice.record-id").unwrap_or_default())
                .into_owned()
        },
        |r| {
            partition_dir(
                Table::DeadLetters,
                header_ms(r, "smsvoice.source.timestamp"),
                None,
            )
        },
    ));
    let root = archive.display().to_string().replace('\'', "''");
    let per_file = |t: &str| {
        format!(
            "SELECT replace(filename, '{root}/', '') AS f, count(*) AS n \
             FROM read_parquet('{root}/{t}/**/*.parquet', filename = true) GROUP BY 1"
        )
    };
    let files = support::duckdb::query(
        &[],
        &[
            per_file("delivery_events"),
            per_file("inbound_messages"),
            per_file("dead_letters"),
        ],
    );
    let got: BTreeMap<String, usize> = files
        .iter()
        .flatten()
        .map(|r| {
            (
                r["f"].as_str().expect("file").to_owned(),
                r["n"].as_u64().expect("rows") as usize,
            )
        })
        .collect();
    let full = got.values().filter(|n| **n == MAX_ROWS).count();
    eprintln!(
        "{} archive files, {full} of them full ({MAX_ROWS} rows); {repeats} repeated enriched records dropped",
        got.len()
    );
    assert!(got.values().all(|n| *n <= MAX_ROWS), "{got:?}");
    assert!(
        full * MAX_ROWS * 2 >= g.truth.events,
        "most rows are in full files: {full} full of {}",
        got.len()
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, _)| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "archive objects differ from the rolling policy's:\nexpected, not found (or other rows): {missing:?}\nfound, not expected: {extra:?}"
    );
}

fn count_files(root: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, n);
                } else if path.extension().is_some_and(|x| x == "parquet") {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(root, &mut n);
    n
}

/// A store that refuses the instance (here: no such bucket) stops
/// `smsvoice run` with exit code 4 and one line naming the cause, from the
/// archive sink's upload task (the processing stages do not upload).
#[test]
fn a_refusing_store_stops_the_instance_with_exit_code_4() {
    let broker = KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    let s3 = support::s3_server::S3Server::start();
    rt().block_on(ensure_topics(
        &KafkaConfig::new(&bootstrap),
        &[TopicSpec {
            name: INPUT.into(),
            partitions: INPUT_PARTITIONS,
            compacted: false,
            retain_forever: true,
        }],
    ))
    .expect("create input topic");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("smsvoice.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "{EMBEDDED_DEFAULT}\n[archive]\nuri = \"s3://missing-bucket/archive\"\n\n\
             [archive.rolling]\nmax_rows = 10\n\n[archive.s3]\nendpoint_url = {endpoint:?}\n\
             force_path_style = true\n\n[kafka]\nbootstrap_servers = {bootstrap:?}\n\
             group_id = \"refused\"\npartitions = 4\ncommit_interval_ms = 500\n\n\
             [kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n",
            endpoint = s3.endpoint
        ),
    )
    .expect("config");
    let g = generate(&Workload {
        seed: 5,
        messages: 200,
        ..Workload::default()
    });
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    let mut a = Instance::start(&cfg_path, "a", dir.path());
    produce_all(&bootstrap, INPUT, INPUT_PARTITIONS, &records);
    let mut child = a.child.take().expect("running");
    let deadline = Instant::now() + Duration::from_secs(120);
    let code = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after 120 s\n{}", a.log_text());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = a.log_text();
    assert_eq!(code, Some(4), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("smsvoice run: fatal: "))
        .unwrap_or_else(|| panic!("no fatal line\n{log}"));
    assert!(
        line.contains("archive") && line.contains("missing-bucket"),
        "{line}"
    );
}
