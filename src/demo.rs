//! `smsvoice demo`: the whole Kafka runtime on one machine with nothing
//! installed.
//!
//! Starts librdkafka's mock cluster in process (real Kafka protocol on
//! 127.0.0.1), produces a generated stream (SMS, MMS, voice and RCS
//! messages of 1 to 4 events each, events of one message spread over the
//! input partitions, duplicates, out-of-order and corrected receipts,
//! inbound STOP/START/HELP/custom keywords, malformed records, every
//! envelope) while one real [`Instance`] consumes it, archives to a local
//! directory, then reads the output topics back and prints what happened,
//! checked against the generator's own ground truth.
//!
//! The mock cluster keeps about 5 MB per partition, so the stream is
//! produced while it is consumed, never more than [`MAX_AHEAD`] records
//! ahead of the router.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::{Config, EMBEDDED_DEFAULT};
use crate::generate::{generate, Workload};
use crate::kafka::{all_topics, producer_config, start_mock_cluster, KafkaConfig};
use crate::money::Usd;
use crate::runtime::restore::replay;
use crate::runtime::{Instance, Metrics, RuntimeError, Shared};
use crate::spend::AlarmRecord;
use crate::stages::totals::SpendState;

/// Records the producer may be ahead of the router.
pub const MAX_AHEAD: u64 = 20_000;

/// The input topic of the demo.
pub const INPUT_TOPIC: &str = "sms-events";

/// Alarms added to the embedded default so that the demo's spend fires them.
const DEMO_ALARMS: &str = r#"
[[spend.alarms]]
name = "sms-40-dollars"
channel = "SMS"
threshold_usd = "40"
comparison = "GreaterThanOrEqualToThreshold"

[[spend.alarms]]
name = "voice-20-dollars"
channel = "VOICE"
threshold_usd = "20"
comparison = "GreaterThanThreshold"
"#;

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Messages to generate (about 2.2 records each).
    pub messages: usize,
    /// Generator seed.
    pub seed: u64,
    /// Output directory (the archive goes to `OUT/archive`).
    pub out: PathBuf,
    /// Run with Kafka transactions (`exactly_once = true`).
    pub exactly_once: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded configuration or the options are invalid (a bug).
    #[error("configuration: {0}")]
    Config(String),
    /// The mock cluster or a client failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The runtime did not catch up.
    #[error("the runtime made no progress for {0:?}")]
    Stalled(Duration),
}

struct CountErrors(Arc<AtomicUsize>);
impl ClientContext for CountErrors {}
impl ProducerContext for CountErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The demo's configuration: the embedded default, two more alarms, the
/// archive in `out/archive`, and a `[kafka]` section for `bootstrap`.
pub fn demo_config(bootstrap: &str, opts: &DemoOptions) -> Result<Config, DemoError> {
    let archive = opts.out.join("archive");
    let text = format!(
        "{EMBEDDED_DEFAULT}\n{DEMO_ALARMS}\n[archive]\nuri = {uri:?}\n\n[kafka]\n\
         bootstrap_servers = {bootstrap:?}\ngroup_id = \"smsvoice-demo\"\n\
         exactly_once = {eos}\npartitions = 4\ncommit_interval_ms = 1000\n\n\
         [kafka.input_topics]\nevents = [{INPUT_TOPIC:?}]\ninbound = [{INPUT_TOPIC:?}]\n",
        uri = archive.display().to_string(),
        eos = opts.exactly_once,
    );
    Config::from_toml(&text, "demo configuration").map_err(|e| DemoError::Config(e.to_string()))
}

/// Runs the demo and returns the report to print.
pub fn run(opts: &DemoOptions) -> Result<String, DemoError> {
    let cluster = start_mock_cluster(1).map_err(|e| DemoError::Kafka(e.to_string()))?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let cfg = demo_config(&bootstrap, opts)?;
    let kafka = cfg
        .kafka
        .clone()
        .ok_or_else(|| DemoError::Config("no [kafka]".into()))?;
    // The mock cluster has no CreateTopics API: create every topic here.
    cluster
        .create_topic(INPUT_TOPIC, 4)
        .map_err(|e| DemoError::Kafka(e.to_string()))?;
    for spec in all_topics(&kafka) {
        cluster
            .create_topic(&spec.name, spec.partitions)
            .map_err(|e| DemoError::Kafka(e.to_string()))?;
    }
    let g = generate(&Workload {
        seed: opts.seed,
        messages: opts.messages,
        ..Workload::default()
    });

    let instance = Instance::start(cfg, None)?;
    let shared = instance.shared().clone();
    let started = Instant::now();
    produce(&kafka, &g.records, &shared.metrics)?;
    wait_idle(&shared.metrics, g.records.len() as u64, &instance)?;
    let elapsed = started.elapsed();
    instance.stop(Duration::from_secs(30))?;

    let mut r = String::new();
    let n = g.records.len();
    let _ = writeln!(
        r,
        "smsvoice demo: {n} records ({} messages) through an in-process Kafka cluster ({bootstrap}), exactly_once = {}",
        opts.messages, opts.exactly_once
    );
    let _ = writeln!(
        r,
        "  done in {:.1} s of wall time (group joins, state restore and the 3 s quiet period that ends the demo included: not a throughput figure)",
        elapsed.as_secs_f64(),
    );
    report_outputs(&shared, &g, &mut r)?;
    let archive = opts.out.join("archive");
    let _ = writeln!(r, "\nArchive: {}", archive.display());
    let _ = writeln!(
        r,
        "  try: python3 -c \"import duckdb; print(duckdb.sql(\\\"select channel, count(*) events, count(distinct message_id) messages from read_parquet('{}/delivery_events/**/*.parquet', hive_partitioning = true) group by all order by 1\\\"))\"",
        archive.display()
    );
    let _ = writeln!(
        r,
        "  dead letters by reason: select reason, count(*) from read_parquet('{}/dead_letters/**/*.parquet', hive_partitioning = true) group by all",
        archive.display()
    );
    drop(cluster);
    Ok(r)
}

fn produce(kafka: &KafkaConfig, records: &[Vec<u8>], m: &Metrics) -> Result<(), DemoError> {
    let errors = Arc::new(AtomicUsize::new(0));
    let p: ThreadedProducer<CountErrors> = producer_config(kafka, None)
        .create_with_context(CountErrors(errors.clone()))
        .map_err(|e| DemoError::Kafka(format!("producer: {e}")))?;
    let stall = Instant::now();
    for (i, value) in records.iter().enumerate() {
        // Keep within the mock cluster's retention: stay close to the router.
        while i as u64 > Metrics::get(&m.router_records) + MAX_AHEAD {
            if stall.elapsed() > Duration::from_secs(600) {
                return Err(DemoError::Stalled(stall.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Record i to partition i % 4: the events of one message land on
        // several partitions, as real bridges do.
        let mut rec = BaseRecord::<(), [u8]>::to(INPUT_TOPIC)
            .payload(value.as_slice())
            .partition((i % 4) as i32);
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
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(DemoError::Kafka(format!("produce: {e}"))),
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .map_err(|e| DemoError::Kafka(format!("flush: {e}")))?;
    match errors.load(Ordering::Relaxed) {
        0 => Ok(()),
        n => Err(DemoError::Kafka(format!("{n} records were not delivered"))),
    }
}

/// Waits until the router has read every record and no stage has read
/// anything for 3 s (the later stages drained too).
fn wait_idle(m: &Metrics, total: u64, instance: &Instance) -> Result<(), DemoError> {
    let mut last = Metrics::get(&m.progress);
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if instance.any_finished() {
            return Ok(()); // stop() reports the error
        }
        let now = Metrics::get(&m.progress);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        let quiet = quiet_since.elapsed();
        if Metrics::get(&m.router_records) >= total && quiet > Duration::from_secs(3) {
            return Ok(());
        }
        if quiet > Duration::from_secs(120) {
            return Err(DemoError::Stalled(quiet));
        }
    }
}

/// Reads the spend, alarm, opt-out and dead-letter topics back.
fn report_outputs(
    shared: &Shared,
    g: &crate::generate::Generated,
    r: &mut String,
) -> Result<(), DemoError> {
    let topics = &shared.kafka.output_topics;
    let mut spend: BTreeMap<String, SpendState> = BTreeMap::new();
    read_all(shared, &topics.spend, |_, v| {
        if let Ok(s) = serde_json::from_slice::<SpendState>(v) {
            spend.insert(s.key(), s);
        }
    })?;
    let _ = writeln!(r, "\nSpend (topic {}, exact):", topics.spend);
    let mut all_match = true;
    for s in spend.values() {
        let key = (s.month.to_string(), s.channel.to_string());
        let want = g.truth.spend_units.get(&key).copied().map(Usd::from_units);
        let ok =
            want == Some(s.spend_usd) && g.truth.messages.get(&key).copied() == Some(s.messages);
        all_match &= ok;
        let _ = writeln!(
            r,
            "  {} {:<5} {:>14} USD {:>7} messages",
            s.month, s.channel, s.spend_usd, s.messages
        );
    }
    all_match &= spend.len() == g.truth.spend_units.len();
    let _ = writeln!(
        r,
        "  equal to the generator's ground truth: {}",
        if all_match { "yes" } else { "NO" }
    );

    let mut alarms: BTreeMap<String, AlarmRecord> = BTreeMap::new();
    read_all(shared, &topics.alarms, |_, v| {
        if let Ok(a) = serde_json::from_slice::<AlarmRecord>(v) {
            let id = match &a {
                AlarmRecord::AlarmStateChange { id, .. } | AlarmRecord::LimitReached { id, .. } => {
                    id.clone()
                }
            };
            alarms.insert(id, a);
        }
    })?;
    let _ = writeln!(r, "\nAlarms and limits (topic {}):", topics.alarms);
    for a in alarms.values() {
        let _ = match a {
            AlarmRecord::AlarmStateChange {
                alarm_name,
                channel,
                month,
                previous_state,
                new_state,
                spend_usd,
                ..
            } => writeln!(
                r,
                "  {month} {channel:<5} alarm {alarm_name}: {previous_state:?} -> {new_state:?} at {spend_usd} USD"
            ),
            AlarmRecord::LimitReached {
                channel,
                month,
                monthly_limit_usd,
                spend_usd,
                ..
            } => writeln!(
                r,
                "  {month} {channel:<5} LIMIT_REACHED (limit {monthly_limit_usd} USD) at {spend_usd} USD"
            ),
        };
    }

    let mut optouts: BTreeMap<String, bool> = BTreeMap::new();
    read_all(shared, &topics.optout_changelog, |k, v| {
        if let Ok(j) = serde_json::from_slice::<serde_json::Value>(v) {
            let key = String::from_utf8_lossy(k.unwrap_or_default()).into_owned();
            optouts.insert(key, j["optedOut"].as_bool().unwrap_or(false));
        }
    })?;
    let out = optouts.values().filter(|v| **v).count();
    let truth_ok = optouts.len() == g.truth.optouts.len()
        && g.truth
            .optouts
            .iter()
            .all(|((l, n), v)| optouts.get(&format!("{l}|{n}")) == Some(v));
    let _ = writeln!(
        r,
        "\nOpt-outs (topic {}): {} numbers with state, {out} opted out, {} opted back in; equal to the ground truth: {}",
        topics.optout_changelog,
        optouts.len(),
        optouts.len() - out,
        if truth_ok { "yes" } else { "NO" }
    );

    let mut dead = 0usize;
    read_all(shared, &topics.dead_letters, |_, _| dead += 1)?;
    let _ = writeln!(
        r,
        "Dead letters (topic {}): {dead} (the generator made {} malformed payloads)",
        topics.dead_letters, g.truth.malformed
    );
    let m = &shared.metrics;
    let _ = writeln!(
        r,
        "Enriched: {} delivery events, {} inbound messages; {} commits",
        Metrics::get(&m.events),
        Metrics::get(&m.inbound),
        Metrics::get(&m.commits)
    );
    Ok(())
}

fn read_all(
    shared: &Shared,
    topic: &str,
    mut f: impl FnMut(Option<&[u8]>, &[u8]),
) -> Result<(), DemoError> {
    for p in 0..shared.partitions_of(topic) {
        replay(shared, topic, p, None, |rec| f(rec.key, rec.value))?;
    }
    Ok(())
}
