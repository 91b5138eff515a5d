//! Bare consumer throughput: how fast librdkafka (through `rdkafka`'s
//! `BaseConsumer`, no processing at all) reads realistic records from a local
//! Apache Kafka broker (one combined broker + controller on 127.0.0.1,
//! started by `tests/support/kafka.rs`). This is the ceiling of the
//! pipeline's Kafka mode on this machine, and the measurement behind the
//! fetch tuning of `smsvoice::kafka::client::CONSUMER_TUNING`.
//!
//! ```sh
//! bash scripts/install-kafka.sh          # once: the broker's jars from Maven Central
//! cargo bench --bench bare_consumer      # BARE_CONSUMER_MESSAGES=50000 by default
//! ```
//!
//! It generates `smsvoice::generate` records (every envelope, ~1 KB each),
//! produces them to fresh 6-partition topics (once lz4-compressed with the
//! pipeline's producer settings, once uncompressed), then reads each topic
//! from the beginning with several consumer configurations, 3 runs each,
//! and prints the median records/s and MB/s (record values and keys).
//! Without the broker's jars it prints how to install them and exits
//! successfully.

#[path = "../tests/support/kafka.rs"]
mod kafka_support;

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use smsvoice::generate::{generate, Workload};
use smsvoice::kafka::{consumer_config, ensure_topics, producer_config, KafkaConfig, TopicSpec};

const PARTITIONS: i32 = 6;
const RUNS: usize = 3;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run
    // benches with harness = false unless asked, so any argument is fine.
    if !kafka_support::kafka_or_skip("bare_consumer") {
        return;
    }
    let messages: usize = std::env::var("BARE_CONSUMER_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let generated = generate(&Workload {
        messages,
        ..Workload::default()
    });
    let records = generated.records;
    let bytes: usize = records.iter().map(Vec::len).sum();
    println!(
        "bare_consumer: {} records, {:.1} MB ({} B/record avg), {PARTITIONS} partitions, Apache Kafka {}, 1 broker, loopback",
        records.len(),
        bytes as f64 / 1e6,
        bytes / records.len().max(1),
        kafka_support::kafka_version()
    );

    let broker = kafka_support::KafkaBroker::start();
    let cfg = KafkaConfig::new(broker.bootstrap.clone());
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let specs: Vec<TopicSpec> = ["bench.lz4", "bench.none"]
        .iter()
        .map(|n| TopicSpec {
            name: (*n).into(),
            partitions: PARTITIONS,
            compacted: false,
            retain_forever: false,
        })
        .collect();
    if let Err(e) = rt.block_on(ensure_topics(&cfg, &specs)) {
        panic!("ensure_topics: {e}");
    }

    for (topic, compression) in [("bench.lz4", "lz4"), ("bench.none", "none")] {
        let mut pc = producer_config(&cfg, None);
        pc.set("compression.type", compression);
        let secs = produce(&pc, topic, &records);
        println!(
            "produce  {topic:<11} compression={compression:<4}: {:>9.0} records/s {:>7.1} MB/s ({secs:.2} s)",
            records.len() as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
    }

    let tuned = consumer_config(&cfg, "bench");
    let mut variants: Vec<(&str, ClientConfig)> = vec![("tuned (client.rs)", tuned.clone())];
    let mut v = tuned.clone();
    v.set("fetch.wait.max.ms", "500");
    variants.push(("fetch.wait.max.ms=500 (librdkafka default)", v));
    let mut v = tuned.clone();
    v.set("fetch.wait.max.ms", "100");
    variants.push(("fetch.wait.max.ms=100", v));
    for ms in ["20", "5", "1"] {
        let mut v = tuned.clone();
        v.set("fetch.wait.max.ms", ms);
        variants.push((
            Box::leak(format!("fetch.wait.max.ms={ms}").into_boxed_str()),
            v,
        ));
    }
    let mut v = tuned.clone();
    v.set("max.partition.fetch.bytes", "4194304");
    variants.push(("max.partition.fetch.bytes=4MiB", v));
    let mut v = tuned.clone();
    v.set("fetch.min.bytes", "65536");
    variants.push(("fetch.min.bytes=64KiB", v));
    let mut v = tuned.clone();
    v.set("queued.max.messages.kbytes", "16384");
    variants.push(("queued.max.messages.kbytes=16MiB", v));

    for topic in ["bench.lz4", "bench.none"] {
        for (name, config) in &variants {
            let mut runs: Vec<f64> = (0..RUNS)
                .map(|_| consume(config, topic, records.len()))
                .collect();
            runs.sort_by(f64::total_cmp);
            let secs = runs[RUNS / 2];
            println!(
                "consume  {topic:<11} {name:<42}: {:>9.0} records/s {:>7.1} MB/s (median of {RUNS}: {secs:.3} s)",
                records.len() as f64 / secs,
                bytes as f64 / 1e6 / secs
            );
        }
    }
}

/// Produces `records` round-robin over the partitions; seconds until all
/// are acknowledged.
fn produce(config: &ClientConfig, topic: &str, records: &[Vec<u8>]) -> f64 {
    let p: ThreadedProducer<DefaultProducerContext> = match config.create() {
        Ok(p) => p,
        Err(e) => panic!("producer: {e}"),
    };
    let start = Instant::now();
    for (i, r) in records.iter().enumerate() {
        let mut rec = BaseRecord::<(), [u8]>::to(topic)
            .payload(r.as_slice())
            .partition((i % PARTITIONS as usize) as i32);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    if let Err(e) = p.flush(Duration::from_secs(120)) {
        panic!("flush: {e}");
    }
    start.elapsed().as_secs_f64()
}

/// Reads `topic` from the beginning of every partition until `want` records
/// arrived; seconds from assignment to the last record.
fn consume(config: &ClientConfig, topic: &str, want: usize) -> f64 {
    let c: BaseConsumer = match config.create() {
        Ok(c) => c,
        Err(e) => panic!("consumer: {e}"),
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        if let Err(e) = tpl.add_partition_offset(topic, p, Offset::Beginning) {
            panic!("assign: {e}");
        }
    }
    let start = Instant::now();
    if let Err(e) = c.assign(&tpl) {
        panic!("assign: {e}");
    }
    let mut n = 0usize;
    let mut sink = 0usize;
    while n < want {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                n += 1;
                sink += m.payload_len();
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {
                if start.elapsed() > Duration::from_secs(300) {
                    panic!("consume: {n} of {want} records after 300 s");
                }
            }
        }
    }
    std::hint::black_box(sink);
    start.elapsed().as_secs_f64()
}
