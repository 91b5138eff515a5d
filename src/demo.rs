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
//! checked against the generator's own ground truth: spend, alarms and
//! limits, opt-outs, dead letters and the archive's row counts. [`run`]
//! returns the report and the checks that failed; `smsvoice demo` exits
//! non-zero when any did.
//!
//! The mock cluster keeps about 5 MB per partition, so the stream is
//! produced while it is consumed, never more than [`MAX_AHEAD`] records
//! ahead of the router.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::{Config, SpendConfig, EMBEDDED_DEFAULT};
use crate::generate::{generate, Generated, Truth, Workload};
use crate::kafka::{all_topics, producer_config, start_mock_cluster, KafkaConfig};
use crate::money::Usd;
use crate::runtime::restore::replay;
use crate::runtime::{Instance, Metrics, RuntimeError, Shared};
use crate::spend::{AlarmRecord, AlarmState};
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
    /// A configuration file whose spend and opt-out rules replace the
    /// embedded default and [`DEMO_ALARMS`] (its `[kafka]` and `[archive]`
    /// sections are ignored: the demo brings its own). The generator's
    /// ground truth follows the embedded default's pricing and opt-out
    /// lists, so rules that price or list differently (for example
    /// `include_carrier_fee = false`) make the comparisons fail, as they
    /// should; alarms and limits are checked against whatever is configured.
    pub config: Option<PathBuf>,
    /// After the report, keep the in-process cluster and an instance
    /// running with the HTTP server (`[http] listen` of `--config`, else
    /// 127.0.0.1:9464) until interrupted ([`run_serving`]).
    pub serve: bool,
}

/// What [`run`] found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The text to print.
    pub text: String,
    /// Names of the comparisons with the ground truth that failed (empty
    /// when the run matched it in every respect).
    pub failed: Vec<&'static str>,
}

/// Results of the comparisons, by name.
#[derive(Default)]
struct Checks(Vec<(&'static str, bool)>);

impl Checks {
    fn record(&mut self, name: &'static str, ok: bool) -> &'static str {
        self.0.push((name, ok));
        if ok {
            "yes"
        } else {
            "NO"
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The `--config` file (or, a bug, the embedded one) is invalid.
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
    /// The archive could not be read back.
    #[error("archive: {0}")]
    Archive(String),
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

/// The spend and opt-out rules of the demo: the embedded default and
/// [`DEMO_ALARMS`], or those of `--config` without its `[kafka]` and
/// `[archive]` sections.
fn rules(opts: &DemoOptions) -> Result<String, DemoError> {
    let Some(path) = &opts.config else {
        return Ok(format!("{EMBEDDED_DEFAULT}\n{DEMO_ALARMS}"));
    };
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| DemoError::Config(format!("cannot read {name}: {e}")))?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e| DemoError::Config(format!("invalid config {name}: {e}")))?;
    table.remove("kafka");
    table.remove("archive");
    toml::to_string(&table).map_err(|e| DemoError::Config(format!("{name}: {e}")))
}

/// The demo's configuration: the embedded default and two more alarms (or
/// the rules of `--config`), the archive in `out/archive`, and a `[kafka]`
/// section for `bootstrap`.
pub fn demo_config(bootstrap: &str, opts: &DemoOptions) -> Result<Config, DemoError> {
    let archive = opts.out.join("archive");
    let text = format!(
        "{rules}\n[archive]\nuri = {uri:?}\n\n[kafka]\n\
         bootstrap_servers = {bootstrap:?}\ngroup_id = \"smsvoice-demo\"\n\
         exactly_once = {eos}\npartitions = 4\ncommit_interval_ms = 1000\n\n\
         [kafka.input_topics]\nevents = [{INPUT_TOPIC:?}]\ninbound = [{INPUT_TOPIC:?}]\n",
        rules = rules(opts)?,
        uri = archive.display().to_string(),
        eos = opts.exactly_once,
    );
    Config::from_toml(&text, "demo configuration").map_err(|e| DemoError::Config(e.to_string()))
}

/// Runs the demo and returns the report to print, with the comparisons
/// that failed.
pub fn run(opts: &DemoOptions) -> Result<Report, DemoError> {
    run_serving(opts).map(|(report, _)| report)
}

/// The demo kept running after its report (`smsvoice demo --serve`): the
/// in-process cluster, an instance restored from the demo's outputs (a new
/// member of the same group, the one that produced them having stopped to
/// close its archive files) and its HTTP server.
pub struct Serving {
    instance: Instance,
    server: Option<crate::http::Server>,
    _cluster: crate::kafka::MockClusterHandle,
}

impl Serving {
    /// Where the HTTP server listens.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(|s| s.addr)
    }

    /// Serves until SIGINT or SIGTERM (or a fatal error), then stops.
    pub fn wait(self) -> Result<(), RuntimeError> {
        let shared = self.instance.shared().clone();
        let handle = shared.io.clone();
        handle.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).ok();
            let mut check = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => return,
                    _ = check.tick() => if shared.has_fatal() || self.instance.any_finished() { return },
                }
            }
        });
        drop(self.server);
        self.instance.stop(Duration::from_secs(30))
    }
}

/// [`run`], and with [`DemoOptions::serve`] the [`Serving`] demo (its URLs
/// appended to the report).
pub fn run_serving(opts: &DemoOptions) -> Result<(Report, Option<Serving>), DemoError> {
    let cluster = start_mock_cluster(1).map_err(|e| DemoError::Kafka(e.to_string()))?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let cfg = demo_config(&bootstrap, opts)?;
    let spend_cfg = cfg.spend.clone();
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

    let serve_cfg = opts.serve.then(|| cfg.clone());
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
    let mut checks = Checks::default();
    report_outputs(&shared, &g, &spend_cfg, &mut checks, &mut r)?;
    let archive = opts.out.join("archive");
    let rows = ArchiveRows::count(&archive)?;
    let t = &g.truth;
    let ok = rows.events == t.events as u64
        && rows.inbound == t.inbound as u64
        && rows.dead_letters == t.malformed as u64;
    let _ = writeln!(
        r,
        "\nArchive: {} (Parquet)\n  {} delivery events, {} inbound messages, {} dead letters (rows); \
         the generator's counts {}, {}, {}: {}",
        archive.display(),
        rows.events,
        rows.inbound,
        rows.dead_letters,
        t.events,
        t.inbound,
        t.malformed,
        checks.record("archive rows", ok),
    );
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
    let serving = match serve_cfg {
        Some(cfg) => Some(serve(cfg, cluster, &mut r)?),
        None => {
            drop(cluster);
            None
        }
    };
    let failed: Vec<&'static str> = checks
        .0
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    let total = checks.0.len();
    let names = |v: &[&str]| v.join(", ");
    if failed.is_empty() {
        let all: Vec<&str> = checks.0.iter().map(|(n, _)| *n).collect();
        let _ = writeln!(
            r,
            "\nAll {total} comparisons with the generator's ground truth passed ({}).",
            names(&all)
        );
    } else {
        let _ = writeln!(
            r,
            "\nFAILED: {} of {total} comparisons with the generator's ground truth: {}.",
            failed.len(),
            names(&failed)
        );
    }
    Ok((Report { text: r, failed }, serving))
}

/// Starts the serving instance and its HTTP server once its view is loaded
/// (what it answers is then what the report printed), and appends the URLs
/// to try to `r`.
fn serve(
    cfg: Config,
    cluster: crate::kafka::MockClusterHandle,
    r: &mut String,
) -> Result<Serving, DemoError> {
    let instance = Instance::start(cfg, None)?;
    let shared = instance.shared().clone();
    let started = Instant::now();
    while !shared.metrics.view_loaded.load(Ordering::Relaxed) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(DemoError::Stalled(started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let server =
        crate::http::start(&shared, &shared.io).map_err(|e| DemoError::Config(e.to_string()))?;
    let Some(addr) = server.as_ref().map(|s| s.addr) else {
        let _ = writeln!(
            r,
            "
Serving: no HTTP server ([http] listen is empty)."
        );
        return Ok(Serving {
            instance,
            server,
            _cluster: cluster,
        });
    };
    let (month, opted_out) = {
        let view = shared
            .view
            .read()
            .map_err(|_| DemoError::Config("view lock poisoned".into()))?;
        let month = view.spend().keys().next_back().map(|(m, _)| m.to_string());
        let opted_out = view
            .optout()
            .entries()
            .into_iter()
            .find(|e| e.2)
            .map(|(l, n, _)| (l.to_owned(), n.to_owned()));
        (month, opted_out)
    };
    let base = format!("http://{addr}");
    let _ = writeln!(
        r,
        "
Serving the demo's state on {base} until interrupted (Ctrl-C):"
    );
    let _ = writeln!(r, "  curl {base}/readyz");
    let _ = writeln!(r, "  curl {base}/metrics");
    if let Some(m) = month {
        let _ = writeln!(r, "  curl '{base}/v1/spend?month={m}'");
    }
    if let Some((l, n)) = opted_out {
        let _ = writeln!(
            r,
            "  curl {base}/v1/opt-out-lists/{l}/numbers/{n}    (opted out)"
        );
    }
    let _ = writeln!(
        r,
        "  (writes need [http] token in --config: curl -X PUT -H 'Authorization: Bearer <token>' {base}/v1/opt-out-lists/Default/numbers/+14255550100)"
    );
    Ok(Serving {
        instance,
        server,
        _cluster: cluster,
    })
}

/// Rows of each archive table, from the Parquet footers.
struct ArchiveRows {
    events: u64,
    inbound: u64,
    dead_letters: u64,
}

impl ArchiveRows {
    fn count(root: &Path) -> Result<ArchiveRows, DemoError> {
        Ok(ArchiveRows {
            events: parquet_rows(&root.join("delivery_events"))?,
            inbound: parquet_rows(&root.join("inbound_messages"))?,
            dead_letters: parquet_rows(&root.join("dead_letters"))?,
        })
    }
}

/// Rows of the visible `.parquet` files under `dir` (none when it does not
/// exist); hidden entries (temporary files) are skipped.
fn parquet_rows(dir: &Path) -> Result<u64, DemoError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    if !dir.exists() {
        return Ok(0);
    }
    let err =
        |p: &Path, e: &dyn std::fmt::Display| DemoError::Archive(format!("{}: {e}", p.display()));
    let mut rows = 0u64;
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, &e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry.file_type().map_err(|e| err(&path, &e))?;
        if ft.is_dir() {
            rows += parquet_rows(&path)?;
        } else if path.extension().is_some_and(|x| x == "parquet") {
            let file = std::fs::File::open(&path).map_err(|e| err(&path, &e))?;
            let reader = SerializedFileReader::new(file).map_err(|e| err(&path, &e))?;
            rows += u64::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
        }
    }
    Ok(rows)
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

/// Reads the spend, alarm, opt-out and dead-letter topics back and compares
/// each with the ground truth.
fn report_outputs(
    shared: &Shared,
    g: &Generated,
    spend_cfg: &SpendConfig,
    checks: &mut Checks,
    r: &mut String,
) -> Result<(), DemoError> {
    let topics = &shared.kafka.output_topics;
    // A record of an output topic that does not parse fails its comparison.
    let mut unreadable = 0usize;
    let mut spend: BTreeMap<String, SpendState> = BTreeMap::new();
    read_all(shared, &topics.spend, |_, v| {
        match serde_json::from_slice::<SpendState>(v) {
            Ok(s) => {
                spend.insert(s.key(), s);
            }
            Err(_) => unreadable += 1,
        }
    })?;
    let _ = writeln!(r, "\nSpend (topic {}, exact):", topics.spend);
    let mut all_match = unreadable == 0;
    for s in spend.values() {
        let key = (s.month.to_string(), s.channel.to_string());
        let want = g.truth.spend_units.get(&key).copied().map(Usd::from_units);
        let ok =
            want == Some(s.spend_usd) && g.truth.messages.get(&key).copied() == Some(s.messages);
        all_match &= ok;
        let _ = writeln!(
            r,
            "  {} {:<5} {:>14} USD {:>7} messages",
            s.month,
            s.channel.to_string(),
            s.spend_usd.to_string(),
            s.messages
        );
    }
    all_match &= spend.len() == g.truth.spend_units.len();
    let _ = writeln!(
        r,
        "  equal to the generator's ground truth: {}",
        checks.record("spend", all_match)
    );

    let mut unreadable = 0usize;
    let mut alarms: BTreeMap<String, AlarmRecord> = BTreeMap::new();
    read_all(
        shared,
        &topics.alarms,
        |_, v| match serde_json::from_slice::<AlarmRecord>(v) {
            Ok(a) => {
                let id = match &a {
                    AlarmRecord::AlarmStateChange { id, .. }
                    | AlarmRecord::LimitReached { id, .. } => id.clone(),
                };
                alarms.insert(id, a);
            }
            Err(_) => unreadable += 1,
        },
    )?;
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
                "  {month} {:<5} alarm {alarm_name}: {previous_state:?} -> {new_state:?} at {spend_usd} USD",
                channel.to_string()
            ),
            AlarmRecord::LimitReached {
                channel,
                month,
                monthly_limit_usd,
                spend_usd,
                ..
            } => writeln!(
                r,
                "  {month} {:<5} LIMIT_REACHED (limit {monthly_limit_usd} USD) at {spend_usd} USD",
                channel.to_string()
            ),
        };
    }
    if alarms.is_empty() {
        let _ = writeln!(r, "  none");
    }
    let ok = unreadable == 0 && alarms_consistent(&alarms, spend_cfg, &g.truth);
    let _ = writeln!(
        r,
        "  every record, the final state of every (alarm, month) and every limit reached \
         consistent with the ground-truth spend: {}",
        checks.record("alarms", ok)
    );

    let mut unreadable = 0usize;
    let mut optouts: BTreeMap<String, bool> = BTreeMap::new();
    read_all(
        shared,
        &topics.optout_changelog,
        |k, v| match serde_json::from_slice::<serde_json::Value>(v) {
            Ok(j) => {
                let key = String::from_utf8_lossy(k.unwrap_or_default()).into_owned();
                optouts.insert(key, j["optedOut"].as_bool().unwrap_or(false));
            }
            Err(_) => unreadable += 1,
        },
    )?;
    let out = optouts.values().filter(|v| **v).count();
    let truth_ok = unreadable == 0
        && optouts.len() == g.truth.optouts.len()
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
        checks.record("opt-outs", truth_ok)
    );

    // A dead letter's value is the original payload and its key the source
    // position: distinct (key, value) pairs, since a repeat (at-least-once)
    // has the same both.
    let mut dead: BTreeSet<(Vec<u8>, Vec<u8>)> = BTreeSet::new();
    read_all(shared, &topics.dead_letters, |k, v| {
        dead.insert((k.unwrap_or_default().to_vec(), v.to_vec()));
    })?;
    let ok = dead.len() == g.truth.malformed;
    let _ = writeln!(
        r,
        "Dead letters (topic {}): {}, the generator made {} malformed payloads: as many: {}",
        topics.dead_letters,
        dead.len(),
        g.truth.malformed,
        checks.record("dead letters", ok)
    );
    let _ = writeln!(r, "Commits: {}", Metrics::get(&shared.metrics.commits));
    Ok(())
}

/// Whether the alarm and limit records agree with the configured alarms and
/// limits and the ground-truth spend. The spend an alarm saw when it fired
/// depends on the order events were read in (and falls after a price
/// correction), so what is checked is what the truth fixes:
///
/// * every transition flips the state and its new state is what its own
///   spend implies, and the transitions of an (alarm, month) are numbered
///   1, 2, ... from OK;
/// * the final state of every (alarm, month) is what the month's final
///   ground-truth spend implies;
/// * a month whose ground-truth spend reached a limit has its
///   `LIMIT_REACHED`, and every `LIMIT_REACHED` was at or above the limit
///   (spend may fall below it again afterwards).
fn alarms_consistent(
    alarms: &BTreeMap<String, AlarmRecord>,
    cfg: &SpendConfig,
    truth: &Truth,
) -> bool {
    let truth_spend = |month: &str, channel: &str| {
        Usd::from_units(
            truth
                .spend_units
                .get(&(month.to_owned(), channel.to_owned()))
                .copied()
                .unwrap_or(0),
        )
    };
    let mut ok = true;
    // (alarm name, month) -> transition number -> new state.
    let mut transitions: BTreeMap<(String, String), BTreeMap<u32, AlarmState>> = BTreeMap::new();
    let mut limits_reached: BTreeSet<(String, String)> = BTreeSet::new();
    for (id, a) in alarms {
        match a {
            AlarmRecord::AlarmStateChange {
                alarm_name,
                channel,
                month,
                previous_state,
                new_state,
                spend_usd,
                ..
            } => {
                let Some(conf) = cfg.alarms.iter().find(|c| &c.name == alarm_name) else {
                    return false;
                };
                let breached = conf.comparison.breached(*spend_usd, conf.threshold_usd);
                ok &= conf.channel == *channel
                    && previous_state != new_state
                    && (*new_state == AlarmState::Alarm) == breached;
                match id.rsplit_once(':').and_then(|(_, n)| n.parse::<u32>().ok()) {
                    Some(n) => {
                        transitions
                            .entry((alarm_name.clone(), month.clone()))
                            .or_default()
                            .insert(n, *new_state);
                    }
                    None => return false,
                }
            }
            AlarmRecord::LimitReached {
                channel,
                month,
                monthly_limit_usd,
                spend_usd,
                ..
            } => {
                let limit = cfg.limits.iter().find(|l| l.channel == *channel);
                ok &= limit.map(|l| l.monthly_limit_usd) == Some(*monthly_limit_usd)
                    && spend_usd >= monthly_limit_usd;
                limits_reached.insert((channel.to_string(), month.clone()));
            }
        }
    }
    for seq in transitions.values() {
        let mut want = AlarmState::Alarm;
        for (i, (n, state)) in seq.iter().enumerate() {
            ok &= u32::try_from(i + 1) == Ok(*n) && *state == want;
            want = match want {
                AlarmState::Alarm => AlarmState::Ok,
                AlarmState::Ok => AlarmState::Alarm,
            };
        }
    }
    for conf in &cfg.alarms {
        let channel = conf.channel.as_str();
        let months: BTreeSet<&str> = truth
            .spend_units
            .keys()
            .filter(|(_, c)| c == channel)
            .map(|(m, _)| m.as_str())
            .chain(
                transitions
                    .keys()
                    .filter(|(name, _)| *name == conf.name)
                    .map(|(_, m)| m.as_str()),
            )
            .collect();
        for month in months {
            let want = conf
                .comparison
                .breached(truth_spend(month, channel), conf.threshold_usd);
            let last = transitions
                .get(&(conf.name.clone(), month.to_owned()))
                .and_then(|seq| seq.values().next_back().copied());
            ok &= want == (last == Some(AlarmState::Alarm));
        }
    }
    for limit in &cfg.limits {
        let channel = limit.channel.as_str();
        for (month, c) in truth.spend_units.keys() {
            if c == channel && truth_spend(month, channel) >= limit.monthly_limit_usd {
                ok &= limits_reached.contains(&(c.clone(), month.clone()));
            }
        }
    }
    ok
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
