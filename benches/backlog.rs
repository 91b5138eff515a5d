//! Memory of `smsvoice run` while it consumes a large backlog: the resident
//! set of the process (a child process, the release binary) sampled every
//! second while it works through `BACKLOG_RECORDS` input records (default
//! 10M) already in Apache Kafka (one combined broker + controller on
//! 127.0.0.1, `tests/support/kafka.rs`).
//!
//! ```sh
//! bash scripts/install-kafka.sh          # once: the broker's jars from Maven Central
//! cargo bench --bench backlog            # BACKLOG_RECORDS=10000000 by default
//! ```
//!
//! The backlog is generated in chunks of 500,000 messages (distinct seeds),
//! each covering the 12 days after the previous one, so it spans about four
//! months: months close while it is consumed and their messages leave the
//! ledgers. The instance runs at least once, without the archive, with
//! `workers` = the number of CPUs and the runtime's defaults otherwise
//! (`max_in_flight_records` bounds what is read but not committed). What
//! it must show: memory follows the open state and the in-flight bound,
//! not the length of the backlog, so the resident set at the end is about
//! what it was a quarter of the way through. Progress is the router's and
//! the message owners' committed offsets (a reader in the same consumer
//! groups, not a member). Prints `RESULT` lines for `scripts/bench.sh`.

#[path = "../tests/support/kafka.rs"]
mod kafka_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use smsvoice::config::EMBEDDED_DEFAULT;
use smsvoice::generate::{generate, Workload};

const INPUT: &str = "backlog.input";
const PARTITIONS: i32 = 4;
const GROUP: &str = "backlog";
const CHUNK_MESSAGES: usize = 500_000;
const DAY_MS: i64 = 86_400_000;

fn main() {
    if !kafka_support::kafka_or_skip("backlog") {
        return;
    }
    let target: usize = std::env::var("BACKLOG_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let broker = kafka_support::KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    kafka_support::create_topic(&bootstrap, INPUT, PARTITIONS);

    let t = Instant::now();
    let mut produced = 0usize;
    let mut messages = 0usize;
    let mut chunk = 0i64;
    while produced < target {
        let g = generate(&Workload {
            seed: 500 + chunk as u64,
            messages: CHUNK_MESSAGES,
            start_ms: 1_761_782_400_000 + chunk * 12 * DAY_MS,
            span_ms: 12 * DAY_MS,
            ..Workload::default()
        });
        // A multiple of the partition count per chunk keeps record i of the
        // backlog on partition i % 4.
        let n = g.records.len() - g.records.len() % PARTITIONS as usize;
        let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
            g.records[..n].iter().map(|r| (None, r.clone())).collect();
        drop(g);
        kafka_support::produce_all(&bootstrap, INPUT, PARTITIONS, &records);
        produced += n;
        messages += CHUNK_MESSAGES;
        chunk += 1;
    }
    println!(
        "backlog: {produced} records ({messages} messages over {} days from 2025-10-30) produced to Apache Kafka {} in {:.0} s",
        chunk * 12,
        kafka_support::kafka_version(),
        t.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = dir.path().join("smsvoice.toml");
    std::fs::write(
        &cfg,
        format!(
            "{EMBEDDED_DEFAULT}\n[kafka]\nbootstrap_servers = {bootstrap:?}\ngroup_id = {GROUP:?}\n\
             partitions = {PARTITIONS}\ncommit_interval_ms = 1000\nworkers = {workers}\n\
             [kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("config: {e}"));
    let log = dir.path().join("smsvoice.log");
    let f = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args(["run", "--config"])
        .env("SMSVOICE_HTTP__LISTEN", "127.0.0.1:0")
        .arg(&cfg)
        .env("RUST_LOG", "smsvoice=info")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap_or_else(|e| panic!("log: {e}")))
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("start smsvoice run: {e}"));
    let pid = child.id();

    let reader = |group: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", group)
            .create()
            .unwrap_or_else(|e| panic!("reader: {e}"))
    };
    let router = reader(GROUP);
    let owners = reader(&format!("{GROUP}.messages"));
    // The message stage commits in transactions: a partition's committed
    // offset stays one below its end (the commit marker), and idle markers
    // keep arriving, so "caught up" is within a few records per partition.
    let forwarded_topic = "smsvoice.internal.events-by-message";
    // (seconds, input records committed by the router, forwarded records
    // committed by the message owners, RSS MiB).
    let mut samples: Vec<(f64, u64, u64, f64)> = Vec::new();
    let start = Instant::now();
    let mut peak = 0.0f64;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "smsvoice run exited: {st}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let (rss, hwm) = rss_mib(pid);
        peak = peak.max(hwm);
        let (done, _) = progress(&router, INPUT);
        let (owned, end) = progress(&owners, forwarded_topic);
        let waiting = end.saturating_sub(owned);
        samples.push((start.elapsed().as_secs_f64(), done, owned, rss));
        if done >= produced as u64 && end > 0 && waiting <= 4 * PARTITIONS as u64 {
            break;
        }
        if start.elapsed() > Duration::from_secs(3600) {
            panic!("backlog not consumed within an hour: {done} of {produced}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    // The instance's log, for diagnosis.
    let kept = std::path::Path::new("target/bench-logs/backlog-smsvoice.log");
    if std::fs::copy(&log, kept).is_ok() {
        println!("smsvoice's log: {}", kept.display());
    }

    println!(
        "consumed in {secs:.0} s ({:.0} records/s); resident set while consuming:",
        produced as f64 / secs
    );
    // Progress is the message owners' (the router finishes first; the
    // owners hold the state).
    let forwarded = samples.last().map_or(1, |s| s.2.max(1));
    println!(
        "  {:>6}  {:>11}  {:>16}  {:>8}",
        "s", "input read", "forwarded done", "RSS MiB"
    );
    let at = |share: f64| -> f64 {
        samples
            .iter()
            .find(|s| s.2 as f64 >= share * forwarded as f64)
            .map_or(f64::NAN, |s| s.3)
    };
    let step = (samples.len() / 24).max(1);
    for s in samples.iter().step_by(step) {
        println!(
            "  {:>6.0}  {:>10.0}%  {:>15.0}%  {:>8.0}",
            s.0,
            100.0 * s.1 as f64 / produced as f64,
            100.0 * s.2 as f64 / forwarded as f64,
            s.3
        );
    }
    let (q, end) = (at(0.25), samples.last().map_or(f64::NAN, |s| s.3));
    let growth = end - q;
    println!(
        "RESULT\tpeak RSS, smsvoice run consuming a {produced}-record backlog ({} days)\t{peak:.0}\tMiB\t-\t-",
        chunk * 12
    );
    println!(
        "RESULT\tRSS growth from 25% to 100% of the backlog processed by the message owners (RSS at 25%: {q:.0} MiB)\t{growth:.0}\tMiB\t<= 10% of RSS at 25%\t{}",
        if growth <= 0.1 * q { "met" } else { "missed" }
    );
}

/// (committed offsets summed over the partitions, high watermarks summed)
/// of `topic` for `c`'s group; zeros while unknown.
fn progress(c: &BaseConsumer, topic: &str) -> (u64, u64) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o.max(0) as u64,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0);
    let end = (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, h)| h.max(0) as u64)
        })
        .sum();
    (committed, end)
}

/// (VmRSS, VmHWM) of process `pid`, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| -> f64 {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}
