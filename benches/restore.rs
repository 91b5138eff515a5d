//! State restore of the message owners for 1M tracked messages.
//!
//! ```sh
//! bash scripts/install-kafka.sh          # once: the broker's jars from Maven Central
//! cargo bench --bench restore            # RESTORE_MESSAGES=1000000 by default
//! ```
//!
//! Two measurements of the same partitions:
//!
//! 1. the CPU part, below;
//! 2. the real restore path through Apache Kafka (one combined broker +
//!    controller on 127.0.0.1, started by `tests/support/kafka.rs`), when its
//!    jars are installed (`RESTORE_BROKER=0` skips it): the partitions are
//!    produced to a fresh topic, then each is restored with
//!    `runtime::message_owner::restore_owner` (what a message stage does
//!    when it gains a partition), one after the other, with the runtime's
//!    default Kafka settings (`reread_offset_gaps` false).
//!
//! A restoring message owner reads its `events-by-message` partition from
//! offset 0 to the committed offset and feeds every record to
//! `MessageOwner::process` with outputs discarded. This bench builds those
//! partitions in memory exactly as the router does (generated records ->
//! `stages::router::route` -> forwarded records -> partition by messageId
//! hash, 4 partitions) and times the replay of all of them on one thread,
//! as one stage thread restores its partitions one after the other.

#[path = "../tests/support/kafka.rs"]
mod kafka_support;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::decode::RecordSource;
use smsvoice::generate::{generate, Workload};
use smsvoice::kafka::{ensure_topics, KafkaConfig, TopicSpec};
use smsvoice::model::Provenance;
use smsvoice::runtime::message_owner::restore_owner;
use smsvoice::runtime::records::partition_of;
use smsvoice::runtime::{Metrics, Shared};
use smsvoice::stages::message_owner::{MessageOwner, OwnerOutputs};
use smsvoice::stages::router::{route, Routed};
use smsvoice::stages::view::View;

const PARTITIONS: i32 = 4;

fn main() {
    let messages: usize = std::env::var("RESTORE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let g = generate(&Workload {
        messages,
        ..Workload::default()
    });
    // Per partition: (messageId, forwarded record).
    let mut parts: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); PARTITIONS as usize];
    let source: Arc<str> = Arc::from("sms-events");
    let mut routed = Vec::new();
    for (i, r) in g.records.iter().enumerate() {
        let src = RecordSource {
            source: source.clone(),
            partition: Some((i % 4) as i32),
            offset: (i / 4) as i64,
            timestamp_ms: None,
        };
        route(r, &src, &mut routed);
        for x in routed.drain(..) {
            if let Routed::Event { message_id, record } = x {
                parts[partition_of(&message_id, PARTITIONS) as usize].push((message_id, record));
            }
        }
    }
    drop(g);
    let forwarded: usize = parts.iter().map(Vec::len).sum();
    println!(
        "restore: {messages} messages, {forwarded} forwarded events in {PARTITIONS} partitions (prepared in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let view = View::new(&cfg.optout);
    let topic: Arc<str> = Arc::from("smsvoice.internal.events-by-message");
    let mut out = OwnerOutputs::default();
    let mut tracked = 0usize;
    let start = Instant::now();
    for (p, records) in parts.iter().enumerate() {
        let mut owner = MessageOwner::new(&cfg.spend, p as i32);
        for (o, (_, r)) in records.iter().enumerate() {
            let at = Provenance {
                source: topic.clone(),
                partition: Some(p as i32),
                offset: o as i64,
                sub: 0,
            };
            owner.process(r, &at, &view, &mut out);
            out.clear();
        }
        tracked += owner.ledger().tracked_messages();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "replay through the ledger: {secs:.2} s, {:.0} records/s, {tracked} messages tracked at the end (the rest in closed months)",
        forwarded as f64 / secs
    );
    if std::env::var("RESTORE_BROKER").as_deref() == Ok("0") {
        return;
    }
    if !kafka_support::kafka_or_skip("restore through a broker") {
        return;
    }
    through_kafka(&cfg, &parts, forwarded);
}

/// Produces `parts` to a fresh Apache Kafka broker and times the runtime's
/// restore of each.
fn through_kafka(cfg: &Config, parts: &[Vec<(String, Vec<u8>)>], forwarded: usize) {
    let broker = kafka_support::KafkaBroker::start();
    let kafka = KafkaConfig::new(&broker.bootstrap);
    assert!(!kafka.reread_offset_gaps, "the default: no gap re-reads");
    let topic = kafka.internal_topic(smsvoice::kafka::admin::EVENTS_BY_MESSAGE);
    let io = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("tokio: {e}"));
    io.block_on(ensure_topics(
        &kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: PARTITIONS,
            compacted: false,
            retain_forever: true,
        }],
    ))
    .unwrap_or_else(|e| panic!("create {topic}: {e}"));
    let t = Instant::now();
    kafka_support::produce_to(
        &broker.bootstrap,
        &topic,
        parts.iter().enumerate().flat_map(|(p, records)| {
            records
                .iter()
                .map(move |(k, v)| (p as i32, Some(k.as_bytes()), v.as_slice()))
        }),
    );
    println!(
        "produced {forwarded} forwarded events to Apache Kafka {} (1 broker, loopback) in {:.1} s",
        kafka_support::kafka_version(),
        t.elapsed().as_secs_f64()
    );
    let shared = Shared {
        cfg: Arc::new(cfg.clone()),
        kafka: Arc::new(kafka),
        shutdown: Arc::new(AtomicBool::new(false)),
        metrics: Arc::new(Metrics::default()),
        view: Arc::new(RwLock::new(View::new(&cfg.optout))),
        store: None,
        io: io.handle().clone(),
        partitions: Arc::new(BTreeMap::new()),
    };
    let at_topic: Arc<str> = Arc::from(topic.as_str());
    let mut tracked = 0usize;
    let start = Instant::now();
    for (p, records) in parts.iter().enumerate() {
        let owner = restore_owner(&shared, &at_topic, p as i32, records.len() as i64)
            .unwrap_or_else(|e| panic!("restore partition {p}: {e}"));
        tracked += owner.ledger().tracked_messages();
    }
    let read = Metrics::get(&shared.metrics.restored_records);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(read as usize, forwarded, "records restored");
    println!(
        "restore through Apache Kafka (read + replay, {PARTITIONS} partitions one after the other): {secs:.2} s, {:.0} records/s, {tracked} messages tracked at the end",
        forwarded as f64 / secs
    );
}
