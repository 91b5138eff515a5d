//! End-to-end throughput of `smsvoice run` (one instance, in process: the
//! router, message, opt-out and totals stages and the replica) through a
//! real Apache Kafka broker (one combined broker + controller on 127.0.0.1,
//! started by `tests/support/kafka.rs`), next to a bare rdkafka consumer
//! reading the same input topic in the same run.
//!
//! ```sh
//! bash scripts/install-kafka.sh          # once: the broker's jars from Maven Central
//! cargo bench --bench end_to_end         # E2E_MESSAGES=50000 by default (~110k records)
//! ```
//!
//! The input (generated records, every envelope, events of one message on
//! different partitions) is produced first to a 4-partition topic. Then:
//! the bare consumer reads it (median of 3); then one `smsvoice` instance
//! processes it with and without the Parquet archive (local directory),
//! with the runtime's default settings except the topic names and
//! `commit_interval_ms = 1000` and `workers` = the number of CPUs
//! (`E2E_WORKERS` overrides), in three phases: at-least-once without and
//! with the archive, exactly-once with the archive (`[kafka]
//! reread_offset_gaps` is left at its default, false). After each phase the
//! running pipeline's latency is probed: 20 fresh events produced one at a
//! time, each timed until its enriched event is readable (`read_committed`
//! in exactly-once mode); half of it is the latency per hop. The smsvoice figure is input records divided by the
//! time from the first input record read to the last record processed by
//! any stage, so every stage's work is inside it (group joins before the
//! first record are not). Without the broker's jars it says how to install
//! them and exits successfully.
//!
//! After the archived phase it prints the archive's files per table: count,
//! rows (from the Parquet footers) and sizes, as the archive sink cut them
//! with the default `[archive.rolling]` (1,000,000 rows, 128 MiB, 10 min).
//! `E2E_PHASES=archive` runs only that phase (after the bare consumer):
//!
//! ```sh
//! E2E_MESSAGES=480000 E2E_PHASES=archive cargo bench --bench end_to_end   # ~1M records
//! ```

#[path = "../tests/support/kafka.rs"]
mod kafka_support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::generate::{generate, Workload};
use smsvoice::kafka::{consumer_config, KafkaConfig};
use smsvoice::runtime::{Instance, Metrics};

const INPUT: &str = "bench.input";
const PARTITIONS: i32 = 4;

fn main() {
    if !kafka_support::kafka_or_skip("end_to_end") {
        return;
    }
    let messages: usize = std::env::var("E2E_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let g = generate(&Workload {
        messages,
        ..Workload::default()
    });
    let n = g.records.len();
    let broker = kafka_support::KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    kafka_support::create_topic(&bootstrap, INPUT, PARTITIONS);
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    kafka_support::produce_all(&bootstrap, INPUT, PARTITIONS, &records);
    println!(
        "end_to_end: {n} records ({messages} messages), {PARTITIONS} partitions, Apache Kafka {}, 1 broker, loopback, 1 instance",
        kafka_support::kafka_version()
    );

    let mut bare: Vec<f64> = (0..3).map(|_| bare_consume(&bootstrap, n)).collect();
    bare.sort_by(f64::total_cmp);
    let bare_rate = n as f64 / bare[1];
    println!("bare rdkafka consumer:             {bare_rate:>9.0} records/s (median of 3)");

    let workers: usize = std::env::var("E2E_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("workers per busy stage ([kafka] workers): {workers}");
    let only_archive = std::env::var("E2E_PHASES").is_ok_and(|p| p == "archive");
    for (label, archive, eos) in [
        ("at-least-once, no archive", false, false),
        ("at-least-once, archive", true, false),
        ("exactly-once, archive", true, true),
    ] {
        if only_archive && (!archive || eos) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let group = match (archive, eos) {
            (false, _) => "bench-plain",
            (true, false) => "bench-archive",
            (true, true) => "bench-eos",
        };
        let archive_section = if archive {
            format!(
                "[archive]\nuri = {:?}\n",
                dir.path().join("archive").display().to_string()
            )
        } else {
            String::new()
        };
        let text = format!(
            "{EMBEDDED_DEFAULT}\n{archive_section}\n[kafka]\nbootstrap_servers = {bootstrap:?}\n\
             group_id = {group:?}\ninternal_prefix = \"{group}.internal.\"\npartitions = {PARTITIONS}\n\
             commit_interval_ms = 1000\nexactly_once = {eos}\nworkers = {workers}\n\n[kafka.output_topics]\n\
             enriched_events = \"{group}.enriched-events\"\nenriched_inbound = \"{group}.enriched-inbound\"\n\
             optout_changelog = \"{group}.optout-changelog\"\nspend = \"{group}.spend\"\n\
             alarms = \"{group}.alarms\"\nreplies = \"{group}.replies\"\ndead_letters = \"{group}.dead-letters\"\n\n\
             [kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n"
        );
        let cfg = Config::from_toml(&text, "bench").unwrap_or_else(|e| panic!("config: {e}"));
        assert!(
            cfg.kafka.as_ref().is_some_and(|k| !k.reread_offset_gaps),
            "the bench runs with the default reread_offset_gaps = false"
        );
        let instance = Instance::start(cfg, None).unwrap_or_else(|e| panic!("start: {e}"));
        let m = instance.shared().metrics.clone();
        let secs = measure(&m, n as u64);
        let rate = n as f64 / secs;
        let ratio = rate / bare_rate;
        println!(
            "smsvoice run, {label:<27} {rate:>9.0} records/s ({secs:.2} s; {ratio:.3} of the bare consumer; {} forwarded events, {} partials)",
            Metrics::get(&m.events),
            Metrics::get(&m.partials)
        );
        println!(
            "RESULT\tend to end, {label}, ratio to a bare consumer (same run, {bare_rate:.0} rec/s)\t{ratio:.3}\tx\t>= 0.5\t{}",
            if ratio >= 0.5 { "met" } else { "missed" }
        );
        let (median, p90) = latency(&bootstrap, &format!("{group}.enriched-events"), eos);
        println!(
            "  latency input record -> enriched event (2 hops: router, message owner), idle pipeline, 20 probes: median {median:.0} ms, p90 {p90:.0} ms; per hop {:.0} ms (commit_interval_ms = 1000)",
            median / 2.0
        );
        println!(
            "RESULT\tlatency per hop, {label} (median of 20 probes / 2 hops)\t{:.0}\tms\t-\t-",
            median / 2.0
        );
        instance
            .stop(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("stop: {e}"));
        if archive {
            print_files(&dir.path().join("archive"));
        }
    }
}

/// Latency of the running pipeline: 20 probe events produced one at a time
/// (a fresh messageId each, stamped now), each timed until its enriched
/// event is readable on `enriched` (`read_committed` when `eos`). Returns
/// the median and the 90th percentile in ms.
fn latency(bootstrap: &str, enriched: &str, eos: bool) -> (f64, f64) {
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let mut cfg = consumer_config(&KafkaConfig::new(bootstrap), "latency");
    cfg.set(
        "isolation.level",
        if eos {
            "read_committed"
        } else {
            "read_uncommitted"
        },
    );
    let c: BaseConsumer = cfg.create().unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(enriched, p, Offset::End)
            .unwrap_or_else(|e| panic!("assign: {e}"));
    }
    c.assign(&tpl).unwrap_or_else(|e| panic!("assign: {e}"));
    // Let the assignment settle at the end of the topic.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        let _ = c.poll(Duration::from_millis(50));
    }
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        smsvoice::kafka::producer_config(&KafkaConfig::new(bootstrap), None)
            .create()
            .unwrap_or_else(|e| panic!("producer: {e}"));
    let mut ms = Vec::new();
    for i in 0..20 {
        let now = chrono::Utc::now().timestamp_millis();
        let id = format!("latency-probe-{now}-{i}");
        let event = format!(
            "{{\"eventType\":\"TEXT_DELIVERED\",\"eventVersion\":\"1.0\",\"eventTimestamp\":{now},\"isFinal\":true,\"originationPhoneNumber\":\"+12065550152\",\"destinationPhoneNumber\":\"+14255550182\",\"messageId\":\"{id}\",\"messageRequestTimestamp\":{},\"totalMessagePrice\":0.00581}}",
            now - 1000
        );
        let start = Instant::now();
        producer
            .send(BaseRecord::<[u8], [u8]>::to(INPUT).payload(event.as_bytes()))
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        let _ = producer.flush(Duration::from_secs(10));
        loop {
            match c.poll(Duration::from_millis(5)) {
                Some(Ok(m)) if m.key() == Some(id.as_bytes()) => break,
                Some(Err(e)) => panic!("consume: {e}"),
                _ => assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "probe {id} not seen after 60 s"
                ),
            }
        }
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
    }
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() * 9 / 10])
}

/// Files, rows and sizes per archive table.
fn print_files(root: &std::path::Path) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|x| x == "parquet") {
                    out.push(path);
                }
            }
        }
    }
    for table in ["delivery_events", "inbound_messages", "dead_letters"] {
        let mut files = Vec::new();
        walk(&root.join(table), &mut files);
        let mut rows: Vec<i64> = Vec::new();
        let mut bytes: Vec<u64> = Vec::new();
        for f in &files {
            let len = std::fs::metadata(f).map_or(0, |m| m.len());
            let n = std::fs::File::open(f)
                .ok()
                .and_then(|h| SerializedFileReader::new(h).ok())
                .map_or(0, |r| r.metadata().file_metadata().num_rows());
            rows.push(n);
            bytes.push(len);
        }
        rows.sort_unstable();
        bytes.sort_unstable();
        let total_rows: i64 = rows.iter().sum();
        let total_bytes: u64 = bytes.iter().sum();
        let max_rows = rows.last().copied().unwrap_or(0);
        let max_bytes = bytes.last().copied().unwrap_or(0);
        let median_rows = rows.get(rows.len() / 2).copied().unwrap_or(0);
        println!(
            "  archive {table:<17} {:>4} files, {total_rows:>8} rows, {:>8.1} MiB; rows per file: median {median_rows}, max {max_rows}; largest file {:.1} MiB",
            files.len(),
            total_bytes as f64 / 1048576.0,
            max_bytes as f64 / 1048576.0,
        );
    }
}

/// Seconds from the first input record read to the last record processed,
/// once every input record was read and nothing moved for 3 s.
fn measure(m: &Metrics, total: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<Instant> = None;
    let mut last_change = Instant::now();
    let mut last = Metrics::get(&m.progress);
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let now = Metrics::get(&m.progress);
        if first.is_none() && Metrics::get(&m.router_records) > 0 {
            first = Some(Instant::now());
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if Metrics::get(&m.router_records) >= total
            && last_change.elapsed() > Duration::from_secs(3)
        {
            let start = first.unwrap_or(last_change);
            return last_change.duration_since(start).as_secs_f64();
        }
        assert!(Instant::now() < deadline, "no end after 900 s");
    }
}

/// Reads the input topic from the beginning until `want` records arrived.
fn bare_consume(bootstrap: &str, want: usize) -> f64 {
    let cfg = consumer_config(&KafkaConfig::new(bootstrap), "bare");
    let c: BaseConsumer = cfg.create().unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(INPUT, p, Offset::Beginning)
            .unwrap_or_else(|e| panic!("assign: {e}"));
    }
    let start = Instant::now();
    c.assign(&tpl).unwrap_or_else(|e| panic!("assign: {e}"));
    let mut n = 0usize;
    let mut sink = 0usize;
    while n < want {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                n += 1;
                sink += m.payload_len();
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => assert!(
                start.elapsed() < Duration::from_secs(300),
                "{n} of {want} after 300 s"
            ),
        }
    }
    std::hint::black_box(sink);
    start.elapsed().as_secs_f64()
}
