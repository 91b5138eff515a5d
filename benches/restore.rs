//! State restore of the message owners for 1M tracked messages, from the
//! compacted `message-state` changelog.
//!
//! ```sh
//! bash scripts/install-kafka.sh          # once: the broker's jars from Maven Central
//! cargo bench --bench restore            # RESTORE_MESSAGES=1000000 by default
//! ```
//!
//! Two histories that end with the same open state (the same `RESTORE_MESSAGES`
//! messages of the last days, tracked by the ledgers):
//!
//! * **1 month**: only those messages;
//! * **6 months**: 5 months of earlier traffic first (`RESTORE_HISTORY`
//!   messages, default half of `RESTORE_MESSAGES`), whose months close and
//!   are sealed, so their entries are tombstoned in the changelog.
//!
//! For each, 4 message owners (the partitions of `events-by-message`, by
//! messageId hash, built in memory exactly as the router forwards:
//! generated records -> `stages::router::route_at` -> forwarded records)
//! process their records and write their changes at a commit point every
//! 25,000 records of a partition (`SpendLedger::snapshot_changes`, what
//! `runtime::message_owner` writes in its commit transaction). The records
//! go to a compacted topic of Apache Kafka 4.1.1 (one combined broker +
//! controller on 127.0.0.1, `tests/support/kafka.rs`); then each partition
//! is restored with `runtime::message_owner::restore_owner` (what a message
//! stage does when it gains a partition), one after the other on one
//! thread, as a stage restores. The restore is timed as written (the log
//! cleaner may not have run yet) and again once the cleaner has compacted
//! the topic (polled up to 2 minutes), and checked: the restored ledgers
//! equal the ones that wrote the changelog (`snapshot_all`).
//!
//! Then the same for `RESTORE_LARGE` open messages (default 10M; `0`
//! skips it), one month of history only: generated in chunks of 1M
//! messages (distinct seeds, all in November 2025) that are routed and
//! processed as they are generated, so the bench holds the ledgers and the
//! changelog but never the whole input (about 10 GB of RAM at 10M).
//!
//! `RESTORE_MESSAGES=0` runs the large run only; `RESTORE_BROKER=0` runs
//! the in-memory part of the 1M runs only.

#[path = "../tests/support/kafka.rs"]
mod kafka_support;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::decode::RecordSource;
use smsvoice::generate::{generate, Workload};
use smsvoice::kafka::admin::MESSAGE_STATE;
use smsvoice::kafka::{producer_config, KafkaConfig};
use smsvoice::limits::Limits;
use smsvoice::model::Provenance;
use smsvoice::runtime::formats::Format;
use smsvoice::runtime::message_owner::restore_owner;
use smsvoice::runtime::message_owner::state::STATE_KEY;
use smsvoice::runtime::records::partition_of;
use smsvoice::runtime::{Metrics, Shared};
use smsvoice::spend::LedgerChanges;
use smsvoice::stages::message_owner::{MessageOwner, OwnerOutputs};
use smsvoice::stages::router::{route_at, Routed};
use smsvoice::stages::view::View;

const PARTITIONS: i32 = 4;
const COMMIT_EVERY: usize = 25_000;
const DAY_MS: i64 = 86_400_000;
/// 2025-10-30T00:00:00Z, the generator's default start.
const OPEN_START_MS: i64 = 1_761_782_400_000;

/// Forwarded records per owner partition.
type Parts = Vec<Vec<Vec<u8>>>;

/// Changelog records (key, value: `None` a tombstone) per partition.
type Changelog = Vec<Vec<(Vec<u8>, Option<Vec<u8>>)>>;

/// Routes `w`'s records read from 4 input partitions, their offsets
/// continuing from `next` (one history of the same input topic), handing
/// each forwarded event to `sink` with its owner partition.
fn route_workload(
    w: &Workload,
    clock: &mut i64,
    next: &mut [i64; 4],
    mut sink: impl FnMut(usize, Vec<u8>),
) {
    let g = generate(w);
    let source: Arc<str> = Arc::from("sms-events");
    let limits = Limits::DEFAULT;
    let mut routed = Vec::new();
    for (i, r) in g.records.iter().enumerate() {
        let q = i % 4;
        let src = RecordSource {
            source: source.clone(),
            partition: Some(q as i32),
            offset: next[q],
            timestamp_ms: None,
        };
        next[q] += 1;
        *clock += 1;
        route_at(r, &src, &limits, Some(*clock), &mut routed);
        for x in routed.drain(..) {
            if let Routed::Event { message_id, record } = x {
                sink(partition_of(&message_id, PARTITIONS) as usize, record);
            }
        }
    }
}

/// [`route_workload`], keeping the forwarded records per owner partition.
fn forward(w: &Workload, parts: &mut Parts, clock: &mut i64, next: &mut [i64; 4]) {
    route_workload(w, clock, next, |p, record| parts[p].push(record));
}

/// One history: its owners, and the changelog records they wrote per
/// partition (key, value: `None` a tombstone).
struct Run {
    name: &'static str,
    owners: Vec<MessageOwner>,
    changelog: Changelog,
    through: Vec<i64>,
    secs: f64,
}

fn run(name: &'static str, cfg: &Config, parts: &Parts) -> Run {
    let view = View::new(&cfg.optout);
    let topic: Arc<str> = Arc::from("smsvoice.internal.events-by-message");
    let mut out = OwnerOutputs::default();
    let mut r = Run {
        name,
        owners: Vec::new(),
        changelog: Vec::new(),
        through: Vec::new(),
        secs: 0.0,
    };
    let start = Instant::now();
    for (p, records) in parts.iter().enumerate() {
        let mut owner = MessageOwner::new(&cfg.spend, p as i32).with_limits(Limits::new(cfg));
        owner.expect_streams((0..4).map(|q| ("sms-events", q)));
        owner.ledger_mut().track_changes();
        let mut log = Vec::new();
        let write = |c: LedgerChanges, through: i64, log: &mut Vec<_>| {
            for (k, v) in c.entries {
                log.push((k.as_bytes().to_vec(), v));
            }
            let mut value = through.to_le_bytes().to_vec();
            value.extend_from_slice(&(p as i32).to_le_bytes());
            value.extend_from_slice(&c.state);
            log.push((STATE_KEY.to_vec(), Some(value)));
        };
        for (o, rec) in records.iter().enumerate() {
            let at = Provenance {
                source: topic.clone(),
                partition: Some(p as i32),
                offset: o as i64,
                sub: 0,
            };
            owner.process(rec, &at, &view, &mut out);
            out.clear();
            if (o + 1) % COMMIT_EVERY == 0 {
                let c = owner.ledger_mut().snapshot_changes();
                write(c, o as i64 + 1, &mut log);
            }
        }
        let c = owner.ledger_mut().snapshot_changes();
        write(c, records.len() as i64, &mut log);
        r.owners.push(owner);
        r.changelog.push(log);
        r.through.push(records.len() as i64);
    }
    r.secs = start.elapsed().as_secs_f64();
    r
}

fn main() {
    let messages: usize = env("RESTORE_MESSAGES", 1_000_000);
    let history: usize = env("RESTORE_HISTORY", messages / 2);
    let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").unwrap_or_else(|e| panic!("{e}"));
    let large: usize = env("RESTORE_LARGE", 10_000_000);
    if messages == 0 {
        // RESTORE_MESSAGES=0: the large run only.
        restore_large(&cfg, large);
        return;
    }
    let t = Instant::now();
    // The open stream: 5 days from 2025-11-02, all in November (which
    // closes only on 2025-12-04), so every one of its messages is tracked.
    let open = Workload {
        messages,
        start_ms: OPEN_START_MS + 3 * DAY_MS,
        ..Workload::default()
    };
    let mut clock = OPEN_START_MS;
    let mut recent: Parts = vec![Vec::new(); PARTITIONS as usize];
    forward(&open, &mut recent, &mut clock, &mut [0; 4]);
    // 5 earlier months (2025-04-25 .. 2025-09-22), then the same open stream.
    let mut long: Parts = vec![Vec::new(); PARTITIONS as usize];
    let mut clock = OPEN_START_MS - 190 * DAY_MS;
    let mut next = [0; 4];
    forward(
        &Workload {
            seed: 99,
            messages: history,
            start_ms: OPEN_START_MS - 188 * DAY_MS,
            span_ms: 150 * DAY_MS,
            ..Workload::default()
        },
        &mut long,
        &mut clock,
        &mut next,
    );
    let mut clock = OPEN_START_MS;
    forward(&open, &mut long, &mut clock, &mut next);
    println!(
        "restore: {messages} open messages ({} forwarded events), plus {history} messages over 5 earlier months in the 6-month history ({} forwarded events), {PARTITIONS} partitions (prepared in {:.1} s)",
        count(&recent),
        count(&long),
        t.elapsed().as_secs_f64()
    );
    let runs = [run("1 month", &cfg, &recent), run("6 months", &cfg, &long)];
    // The forwarded records are not needed any more (the large run below
    // holds a lot of memory).
    drop((recent, long));
    for r in &runs {
        let tracked: usize = r.owners.iter().map(|o| o.ledger().tracked_messages()).sum();
        let records: usize = r.changelog.iter().map(Vec::len).sum();
        let tombstones: usize = r
            .changelog
            .iter()
            .flatten()
            .filter(|(_, v)| v.is_none())
            .count();
        println!(
            "{}: ledgers processed in {:.1} s; {tracked} messages tracked at the end; changelog written: {records} records ({tombstones} tombstones)",
            r.name, r.secs
        );
    }
    let tracked =
        |r: &Run| -> usize { r.owners.iter().map(|o| o.ledger().tracked_messages()).sum() };
    assert_eq!(
        tracked(&runs[0]),
        tracked(&runs[1]),
        "both histories end with the same open state"
    );
    if std::env::var("RESTORE_BROKER").as_deref() == Ok("0") {
        return;
    }
    if !kafka_support::kafka_or_skip("restore through a broker") {
        return;
    }
    through_kafka(&cfg, &runs, messages);
    drop(runs);
    restore_large(&cfg, large);
}

/// The `large`-message run (nothing when 0), through Apache Kafka.
fn restore_large(cfg: &Config, large: usize) {
    if large > 0 && kafka_support::kafka_or_skip("restore through a broker") {
        let r = run_streaming(cfg, large);
        let tracked: usize = r.owners.iter().map(|o| o.ledger().tracked_messages()).sum();
        let records: usize = r.changelog.iter().map(Vec::len).sum();
        println!(
            "{}: {large} messages generated, routed and processed in {:.1} s; {tracked} messages tracked; changelog written: {records} records",
            r.name, r.secs
        );
        through_kafka(cfg, &[r], large);
    }
}

/// One month of `messages` open messages, generated in chunks of 1M
/// messages, each routed and processed by the 4 owners as it is generated
/// (commit points every [`COMMIT_EVERY`] records of a partition, as in
/// [`run`]).
fn run_streaming(cfg: &Config, messages: usize) -> Run {
    const CHUNK: usize = 1_000_000;
    let view = View::new(&cfg.optout);
    let topic: Arc<str> = Arc::from("smsvoice.internal.events-by-message");
    let mut out = OwnerOutputs::default();
    let mut owners: Vec<MessageOwner> = (0..PARTITIONS)
        .map(|p| {
            let mut o = MessageOwner::new(&cfg.spend, p).with_limits(Limits::new(cfg));
            o.expect_streams((0..4).map(|q| ("sms-events", q)));
            o.ledger_mut().track_changes();
            o
        })
        .collect();
    let mut changelog: Changelog = vec![Vec::new(); PARTITIONS as usize];
    let mut offsets = vec![0i64; PARTITIONS as usize];
    let write = |p: usize, c: LedgerChanges, through: i64, log: &mut Changelog| {
        for (k, v) in c.entries {
            log[p].push((k.as_bytes().to_vec(), v));
        }
        let mut value = through.to_le_bytes().to_vec();
        value.extend_from_slice(&(p as i32).to_le_bytes());
        value.extend_from_slice(&c.state);
        log[p].push((STATE_KEY.to_vec(), Some(value)));
    };
    let mut next = [0i64; 4];
    let mut clock = OPEN_START_MS;
    let start = Instant::now();
    let chunks = messages.div_ceil(CHUNK);
    for i in 0..chunks {
        // Chunk i: 2 days from 2025-11-02 + 2i days (at most 14 chunks stay
        // in November).
        let w = Workload {
            seed: 1_000 + i as u64,
            messages: CHUNK.min(messages - i * CHUNK),
            start_ms: OPEN_START_MS + (3 + 2 * (i as i64 % 14)) * DAY_MS,
            span_ms: 2 * DAY_MS,
            ..Workload::default()
        };
        route_workload(&w, &mut clock, &mut next, |p, record| {
            let at = Provenance {
                source: topic.clone(),
                partition: Some(p as i32),
                offset: offsets[p],
                sub: 0,
            };
            owners[p].process(&record, &at, &view, &mut out);
            out.clear();
            offsets[p] += 1;
            if (offsets[p] as usize).is_multiple_of(COMMIT_EVERY) {
                let c = owners[p].ledger_mut().snapshot_changes();
                write(p, c, offsets[p], &mut changelog);
            }
        });
    }
    for (p, owner) in owners.iter_mut().enumerate() {
        let c = owner.ledger_mut().snapshot_changes();
        write(p, c, offsets[p], &mut changelog);
    }
    Run {
        name: "large 1 month",
        owners,
        changelog,
        through: offsets,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn count(p: &Parts) -> usize {
    p.iter().map(Vec::len).sum()
}

/// Writes each run's changelog to its own compacted topic of a fresh Apache
/// Kafka broker and times the runtime's restore of every partition.
fn through_kafka(cfg: &Config, runs: &[Run], messages: usize) {
    let broker = kafka_support::KafkaBroker::start();
    let io = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("tokio: {e}"));
    for r in runs {
        let mut kafka = KafkaConfig::new(&broker.bootstrap);
        kafka.internal_prefix = format!("bench{}.", r.name.split(' ').next().unwrap_or("x"));
        let topic = kafka.internal_topic(MESSAGE_STATE);
        create_compacted(&io, &kafka, &topic);
        let t = Instant::now();
        let n = produce(&kafka, &topic, &r.changelog);
        println!(
            "{}: produced {n} changelog records to Apache Kafka {} (1 broker, loopback) in {:.1} s",
            r.name,
            kafka_support::kafka_version(),
            t.elapsed().as_secs_f64()
        );
        let shared = Shared {
            cfg: Arc::new(cfg.clone()),
            kafka: Arc::new(kafka.clone()),
            shutdown: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(Metrics::default()),
            view: Arc::new(RwLock::new(View::new(&cfg.optout))),
            store: None,
            io: io.handle().clone(),
            partitions: Arc::new(BTreeMap::new()),
        };
        let waited = Instant::now();
        let mut first = true;
        loop {
            let start = Instant::now();
            let mut read = 0u64;
            let mut tracked = 0usize;
            let mut restored = Vec::new();
            for p in 0..PARTITIONS {
                let (owned, report) = restore_owner(&shared, p, Some(r.through[p as usize]))
                    .unwrap_or_else(|e| panic!("restore partition {p}: {e}"));
                assert_eq!(report.replayed, 0, "no tail to read");
                read += report.changelog_records;
                tracked += owned.owner.ledger().tracked_messages();
                restored.push(owned);
            }
            let secs = start.elapsed().as_secs_f64();
            // Checked outside the timing: the restored ledgers are the ones
            // that wrote the changelog.
            for (p, owned) in restored.iter().enumerate() {
                assert!(
                    owned.owner.ledger().snapshot_all() == r.owners[p].ledger().snapshot_all(),
                    "partition {p} restored exactly"
                );
            }
            drop(restored);
            let compacted = (read as usize) < tracked + tracked / 10 + 1000;
            let label = if compacted {
                "compacted"
            } else if first {
                "as written"
            } else {
                "partly compacted"
            };
            let last = compacted || waited.elapsed() > Duration::from_secs(120);
            if first || last {
                println!(
                "{}: restore through Apache Kafka ({label}; {PARTITIONS} partitions one after the other): {secs:.2} s, {read} changelog records read, {:.0} records/s, {tracked} messages tracked, 0 events-by-message records read",
                r.name,
                read as f64 / secs
                );
            }
            first = false;
            if last {
                // The target is for 1M open messages.
                let (target, status) = if messages == 1_000_000 {
                    ("< 10", if secs < 10.0 { "met" } else { "missed" })
                } else {
                    ("-", "-")
                };
                println!(
                    "RESULT\trestore of {messages} open messages ({tracked} tracked), {} of history ({label})\t{secs:.2}\ts\t{target}\t{status}",
                    r.name
                );
                break;
            }
            std::thread::sleep(Duration::from_secs(10));
        }
    }
}

fn create_compacted(io: &tokio::runtime::Runtime, kafka: &KafkaConfig, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = smsvoice::kafka::client::admin_config(kafka)
        .create()
        .unwrap_or_else(|e| panic!("admin: {e}"));
    // Small segments and an eager cleaner, so that compaction happens
    // within the bench; tombstones go at the next cleaning.
    let t = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "1048576")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "0")
        .set("min.compaction.lag.ms", "0");
    let r = io
        .block_on(admin.create_topics([&t], &AdminOptions::new()))
        .unwrap_or_else(|e| panic!("create {topic}: {e}"));
    for x in r {
        x.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
    std::thread::sleep(Duration::from_secs(1));
}

fn produce(kafka: &KafkaConfig, topic: &str, parts: &Changelog) -> usize {
    let p: ThreadedProducer<_> = producer_config(kafka, None)
        .create()
        .unwrap_or_else(|e| panic!("producer: {e}"));
    let (h, v) = Format::MessageState.header();
    let mut n = 0;
    for (partition, records) in parts.iter().enumerate() {
        for (k, value) in records {
            let headers = OwnedHeaders::new().insert(Header {
                key: h,
                value: Some(v.as_slice()),
            });
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .key(k.as_slice())
                .partition(partition as i32)
                .headers(headers);
            if let Some(value) = value {
                rec = rec.payload(value.as_slice());
            }
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        r,
                    )) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("produce to {topic}: {e}"),
                }
            }
            n += 1;
        }
    }
    p.flush(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("flush {topic}: {e}"));
    n
}
