//! The Kafka runtime (`smsvoice run`): the pure [`crate::stages`] wired to
//! Kafka with rdkafka.
//!
//! Every instance runs the same loops, each on its own thread:
//!
//! | loop | consumes (group) | produces |
//! |---|---|---|
//! | [`router`] | input topics (`<group>`) | `events-by-message` (key messageId), `inbound-by-number` (key customer), dead letters |
//! | [`message_owner`] | `events-by-message` (`<group>.messages`) | enriched events, `spend-partials` |
//! | [`optout_owner`] | `inbound-by-number` (`<group>.optouts`) | enriched inbound, opt-out changelog, replies |
//! | [`totals`] | `spend-partials` (`<group>.totals`) | spend changelog, alarms |
//! | [`archive_sink`] | enriched events, enriched inbound, dead letters (`<group>.archive`) | the Parquet archive (when `[archive] uri` is set) |
//! | [`view`] | opt-out changelog + `spend-partials`, all partitions, no group | (the local [`crate::stages::view::View`]) |
//!
//! [`stage`] holds what the four processing loops share: consume, process,
//! produce, then at each commit point commit offsets (with the outputs in
//! one transaction when `exactly_once`). The archive sink has a loop of its
//! own: it cuts files by its rolling policy and commits only what is
//! uploaded. State is
//! rebuilt from Kafka on assignment ([`restore`]); nothing is kept on local
//! disk. The delivery guarantee of each output is written down in the
//! README's design section and in `docs/kafka-runtime-design.md`.
//!
//! Failures are handled by class ([`RuntimeError::class`], an
//! [`ErrorClass`]): bad input never fails (it becomes dead letters); a
//! retryable error is retried in place with backoff, keeping the restored
//! state ([`retry`]); an abortable one aborts the transaction and rewinds to
//! the last commit; a fatal one stops the instance with one line and a
//! non-zero exit code ([`Fatal::exit_code`]). Every librdkafka client of an
//! instance has a [`ClientWatch`] context: the first fatal Kafka error
//! (authentication, TLS, authorization, a fenced producer, a fatal
//! librdkafka error; [`crate::kafka::client::fatal_cause`]) any of them sees
//! is kept in [`Metrics::fatal`]; a loop that fails fatally records its error
//! there or in [`Metrics::halt`] (archive refusals, unreadable internal
//! records), and the instance then stops ([`RuntimeError::Fatal`]) instead
//! of retrying forever.

pub mod archive_sink;
pub mod commit;
pub mod formats;
pub mod gaps;
pub mod message_owner;
pub mod observe;
pub mod optout_owner;
pub mod paused_poll;
pub mod produce;
pub mod records;
pub mod restore;
pub mod retry;
pub mod router;
pub mod stage;
pub mod takeover;
pub mod totals;
pub mod view;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub use self::formats::RecordError;
use crate::archive::{ArchiveError, Store, StoreError};
use crate::config::Config;
use crate::kafka::admin::ensure_topics_watched;
use crate::kafka::admin::{EVENTS_BY_MESSAGE, INBOUND_BY_NUMBER, SPEND_PARTIALS};
pub use crate::kafka::client::ErrorClass;
use crate::kafka::client::{ClientWatch, FatalError, FatalSlot};
use crate::kafka::{all_topics, ClientError, KafkaConfig};
use crate::stages::view::View;

/// Why the runtime stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration has no `[kafka]` section or it is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Kafka failed (classified by [`ClientError::class`]).
    #[error(transparent)]
    Kafka(#[from] ClientError),
    /// The archive failed (its store error says whether retrying may help).
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    /// The archive store could not be opened.
    #[error("archive: open {uri}: {source}")]
    ArchiveOpen {
        /// The archive location.
        uri: String,
        /// Why.
        source: StoreError,
    },
    /// An internal record could not be read (fatal: never skipped).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A stage thread died (a bug).
    #[error("stage {0} stopped unexpectedly: {1}")]
    Stage(&'static str, String),
    /// A fatal error stopped the instance: retrying cannot fix it.
    /// `smsvoice run` exits with [`Fatal::exit_code`].
    #[error("fatal: {0}")]
    Fatal(Box<Fatal>),
    /// Asked to stop (SIGTERM, SIGINT) before the instance had started:
    /// nothing to commit, a clean exit.
    #[error("stopped during startup")]
    StoppedDuringStartup,
}

impl RuntimeError {
    /// What to do about this error:
    ///
    /// | error | class |
    /// |---|---|
    /// | Kafka | [`ClientError::class`]: broker unavailable, timeouts, throttling, rebalances `Retryable`; abortable transaction errors and undelivered records `Abort`; authentication, authorization, TLS, a fenced producer, a fatal librdkafka error, an invalid configuration `Fatal`; anything else `Restart` |
    /// | archive | `Retryable` when its store says so (network, timeouts, throttling, 5xx); `Fatal` when the store refuses this process (missing or rejected credentials, access denied, no such bucket) or rows cannot be encoded; else `Restart` |
    /// | unreadable internal record | `Fatal` |
    /// | configuration, a stage bug, an already fatal error | `Fatal` |
    pub fn class(&self) -> ErrorClass {
        match self {
            RuntimeError::Kafka(e) => e.class(),
            RuntimeError::Archive(e) => archive_class(e.is_retryable(), e.is_fatal()),
            RuntimeError::ArchiveOpen { source, .. } => archive_class(
                source.is_retryable(),
                crate::archive::writer::store_refuses(source),
            ),
            RuntimeError::Record(_)
            | RuntimeError::Config(_)
            | RuntimeError::Stage(..)
            | RuntimeError::StoppedDuringStartup
            | RuntimeError::Fatal(_) => ErrorClass::Fatal,
        }
    }

    /// True for a Kafka error saying the consumer group is rebalancing
    /// ([`ClientError::is_rebalance`]).
    pub fn is_rebalance(&self) -> bool {
        matches!(self, RuntimeError::Kafka(e) if e.is_rebalance())
    }

    /// The fatal error this is, to stop the instance with (`client`: the
    /// loop that saw it): `None` when it is not fatal, or fatal without one
    /// line of its own to report (configuration, a stage bug: the loop ends
    /// with it and the instance stops, exit code 1).
    pub fn fatal(&self, kafka: &KafkaConfig, client: &str) -> Option<Fatal> {
        if self.class() != ErrorClass::Fatal {
            return None;
        }
        match self {
            RuntimeError::Kafka(e) => {
                FatalError::from_client_error(kafka, client, e).map(Fatal::Kafka)
            }
            RuntimeError::Archive(_) | RuntimeError::ArchiveOpen { .. } => {
                Some(Fatal::Archive(one_line(&self.to_string())))
            }
            RuntimeError::Record(r) => Some(Fatal::Record(r.clone())),
            RuntimeError::Fatal(f) => Some((**f).clone()),
            RuntimeError::Config(_)
            | RuntimeError::Stage(..)
            | RuntimeError::StoppedDuringStartup => None,
        }
    }
}

fn archive_class(retryable: bool, fatal: bool) -> ErrorClass {
    if fatal {
        ErrorClass::Fatal
    } else if retryable {
        ErrorClass::Retryable
    } else {
        ErrorClass::Restart
    }
}

/// `s` on one line (store and SDK messages may hold line breaks).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why an instance stopped for good: the one line `smsvoice run` prints
/// (`smsvoice run: fatal: ...`) before exiting with [`Fatal::exit_code`],
/// so that Kubernetes restarts the pod and alerting sees the cause.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// Kafka refused this process or its client cannot go on:
    /// authentication, TLS trust, authorization, a fenced producer, a fatal
    /// librdkafka error, an invalid client configuration. Exit code 3.
    #[error("{0}")]
    Kafka(FatalError),
    /// The archive store refused this process (missing or rejected
    /// credentials, access denied, no such bucket) or cannot encode its
    /// rows. Exit code 4.
    #[error("{0}")]
    Archive(String),
    /// An internal record (spend partial, spend state, opt-out change) is
    /// unreadable or written by a newer smsvoice. Exit code 5.
    #[error(transparent)]
    Record(RecordError),
}

/// Exit code of `smsvoice run` after a fatal Kafka error.
pub const EXIT_FATAL_KAFKA: u8 = 3;
/// Exit code of `smsvoice run` after a fatal archive error.
pub const EXIT_FATAL_ARCHIVE: u8 = 4;
/// Exit code of `smsvoice run` after an unreadable internal record.
pub const EXIT_FATAL_RECORD: u8 = 5;

impl Fatal {
    /// The exit code of `smsvoice run`: [`EXIT_FATAL_KAFKA`],
    /// [`EXIT_FATAL_ARCHIVE`] or [`EXIT_FATAL_RECORD`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Kafka(_) => EXIT_FATAL_KAFKA,
            Fatal::Archive(_) => EXIT_FATAL_ARCHIVE,
            Fatal::Record(_) => EXIT_FATAL_RECORD,
        }
    }
}

/// Counters of one running instance, updated by the loops.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Input records read by the router.
    pub router_records: AtomicU64,
    /// Dead letters written (router and owners).
    pub dead_letters: AtomicU64,
    /// Forwarded delivery events processed by the message owners.
    pub events: AtomicU64,
    /// Forwarded inbound messages processed by the opt-out owners.
    pub inbound: AtomicU64,
    /// Partial totals processed by the totals owners.
    pub partials: AtomicU64,
    /// Alarm and limit records written.
    pub alarms: AtomicU64,
    /// Commits (transactions or offset commits) done, all stages.
    pub commits: AtomicU64,
    /// Records replayed to rebuild state.
    pub restored_records: AtomicU64,
    /// Time spent rebuilding state, ms.
    pub restore_ms: AtomicU64,
    /// Rewinds after an error or a rebalance in a transaction.
    pub rewinds: AtomicU64,
    /// Partitions re-read after the broker delivered an offset beyond the
    /// expected one (see `gaps::in_sequence`).
    pub refetches: AtomicU64,
    /// Records read by the archive sink.
    pub archive_records: AtomicU64,
    /// Rows the archive sink appended.
    pub archive_rows: AtomicU64,
    /// Records the archive sink dropped as repeats of an at-least-once
    /// replay (a stage position at or below one already archived).
    pub archive_repeats: AtomicU64,
    /// Records the archive sink could not read (not written by smsvoice).
    pub archive_skipped: AtomicU64,
    /// Archive files made durable by the sink.
    pub archive_files: AtomicU64,
    /// Their bytes.
    pub archive_bytes: AtomicU64,
    /// Records read by any stage (a progress signal).
    pub progress: AtomicU64,
    /// Partitions whose state is being restored now (all stages): the
    /// instance is not ready while any is.
    pub restoring: AtomicU64,
    /// True once the replicated view has read every partition of its
    /// topics up to where it ended at start ([`view`]): before, the opt-out
    /// table may miss entries and the instance is not ready.
    pub view_loaded: AtomicBool,
    /// When each loop (stage worker, replica, archive sink) last turned,
    /// by loop name: `/healthz` fails when one has not turned for
    /// [`Metrics::STALE_LOOP`].
    pub beats: std::sync::Mutex<BTreeMap<String, Instant>>,
    /// The first fatal Kafka error any client of the instance reported
    /// (admin, consumers, producers, restore and replica readers): once set,
    /// the instance stops ([`Shared::fatal`]). Kept here, with the other
    /// shared run-time state, so that a `Shared` is built as before.
    pub fatal: FatalSlot,
    /// The first other fatal error a loop met (an archive refusal, an
    /// unreadable internal record): once set, the instance stops too.
    pub halt: OnceLock<Fatal>,
}

impl Metrics {
    /// How long a loop may go without turning before `/healthz` fails:
    /// longer than any wait a loop makes (a restore: 10M tracked messages
    /// take about 100 s, the consumer polled meanwhile; a retry in place at
    /// most 120 s; a restart backoff at most a minute).
    pub const STALE_LOOP: Duration = Duration::from_secs(600);

    /// Records that loop `name` turned (call at most every second or so).
    pub fn beat(&self, name: &str) {
        if let Ok(mut b) = self.beats.lock() {
            match b.get_mut(name) {
                Some(t) => *t = Instant::now(),
                None => {
                    b.insert(name.to_owned(), Instant::now());
                }
            }
        }
    }

    /// The loops that have not turned for longer than `older_than`, with
    /// how long ago they last did.
    pub fn stale_loops(&self, older_than: Duration) -> Vec<(String, Duration)> {
        self.beats
            .lock()
            .map(|b| {
                b.iter()
                    .filter(|(_, t)| t.elapsed() > older_than)
                    .map(|(n, t)| (n.clone(), t.elapsed()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// The instance's fatal error, once there is one (a Kafka one first).
    pub fn first_fatal(&self) -> Option<Fatal> {
        self.fatal
            .get()
            .map(|f| Fatal::Kafka(f.clone()))
            .or_else(|| self.halt.get().cloned())
    }

    /// True once the instance has a fatal error.
    pub fn has_fatal(&self) -> bool {
        self.fatal.get().is_some() || self.halt.get().is_some()
    }

    /// Keeps `f` unless a fatal error is kept already.
    pub fn record_fatal(&self, f: Fatal) {
        match f {
            Fatal::Kafka(k) => {
                self.fatal.record(k);
            }
            other => {
                let _ = self.halt.set(other);
            }
        }
    }
}

/// What every loop of an instance shares.
#[derive(Clone)]
pub struct Shared {
    /// The whole configuration.
    pub cfg: Arc<Config>,
    /// Its `[kafka]` section.
    pub kafka: Arc<KafkaConfig>,
    /// Set to stop: loops finish and commit what they hold, then return.
    pub shutdown: Arc<AtomicBool>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The replicated view (opt-out table, partial totals).
    pub view: Arc<RwLock<View>>,
    /// The archive location, if archiving.
    pub store: Option<Arc<Store>>,
    /// Runs the archive's uploads.
    pub io: tokio::runtime::Handle,
    /// Partition count of every topic the runtime writes with an explicit
    /// partition, and of the input topics present at start.
    pub partitions: Arc<BTreeMap<String, i32>>,
}

impl Shared {
    /// Name of an internal topic.
    pub fn internal(&self, suffix: &str) -> String {
        self.kafka.internal_topic(suffix)
    }

    /// Partition count of `topic` (1 when unknown).
    pub fn partitions_of(&self, topic: &str) -> i32 {
        self.partitions.get(topic).copied().unwrap_or(1).max(1)
    }

    /// True once shutdown was asked for.
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// The first fatal error of the instance, once there is one.
    pub fn fatal(&self) -> Option<Fatal> {
        self.metrics.first_fatal()
    }

    /// True once the instance has a fatal error.
    pub fn has_fatal(&self) -> bool {
        self.metrics.has_fatal()
    }

    /// The client context of librdkafka client `client` of this instance:
    /// it records fatal errors in [`Metrics::fatal`].
    pub fn watch(&self, client: &str) -> ClientWatch {
        ClientWatch::new(&self.metrics.fatal, &self.kafka, client)
    }

    /// For a loop that failed with `e`: records `e` when it is fatal
    /// ([`RuntimeError::fatal`]), and returns true when the instance has a
    /// fatal error (`e` or an earlier one), so the loop returns instead of
    /// restarting.
    pub fn fatal_stop(&self, client: &str, e: &RuntimeError) -> bool {
        if let Some(f) = e.fatal(&self.kafka, client) {
            self.metrics.record_fatal(f);
        }
        self.has_fatal()
    }
}

/// A running instance: its threads and handles.
pub struct Instance {
    shared: Shared,
    threads: Vec<(
        &'static str,
        std::thread::JoinHandle<Result<(), RuntimeError>>,
    )>,
    _io: Option<tokio::runtime::Runtime>,
}

impl Instance {
    /// Validates the configuration, creates the missing topics, opens the
    /// archive and starts the loops. `io` runs async work (topic creation,
    /// archive uploads); when `None` the instance makes its own runtime.
    pub fn start(
        cfg: Config,
        io: Option<tokio::runtime::Handle>,
    ) -> Result<Instance, RuntimeError> {
        Instance::starting(cfg, io, Arc::new(AtomicBool::new(false)), false)
    }

    /// [`Instance::start`] with the instance's shutdown flag made by the
    /// caller: setting it while the instance starts (topic creation against
    /// a broker that does not answer yet, retried) ends the start with
    /// [`RuntimeError::StoppedDuringStartup`] within a second.
    pub fn start_stoppable(
        cfg: Config,
        io: Option<tokio::runtime::Handle>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Instance, RuntimeError> {
        Instance::starting(cfg, io, shutdown, true)
    }

    /// Starts; `warn_unreachable`: warn while the brokers do not answer
    /// (`smsvoice run`; not in process, where the demo's mock cluster takes
    /// its time over topic creation, which it does not support).
    fn starting(
        cfg: Config,
        io: Option<tokio::runtime::Handle>,
        shutdown: Arc<AtomicBool>,
        warn_unreachable: bool,
    ) -> Result<Instance, RuntimeError> {
        let kafka = cfg
            .kafka
            .clone()
            .ok_or_else(|| RuntimeError::Config("no [kafka] section".into()))?;
        kafka.validate().map_err(RuntimeError::Config)?;
        if kafka.input_topics.all().is_empty() {
            return Err(RuntimeError::Config(
                "kafka.input_topics lists no topic".into(),
            ));
        }
        let (own_rt, handle) = match io {
            Some(h) => (None, h),
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| RuntimeError::Config(format!("tokio runtime: {e}")))?;
                let h = rt.handle().clone();
                (Some(rt), h)
            }
        };
        let specs = all_topics(&kafka);
        let fatal = FatalSlot::default();
        let report = match block_on(
            &handle,
            startup_topics(&kafka, &specs, &fatal, &shutdown, warn_unreachable),
        ) {
            Some(r) => r.map_err(|e| startup_error(&kafka, &fatal, e))?,
            None => return Err(RuntimeError::StoppedDuringStartup),
        };
        if !report.created.is_empty() {
            tracing::info!(created = ?report.created, "created topics");
        }
        let mut partitions = BTreeMap::new();
        for s in &specs {
            let n = report
                .existing
                .get(&s.name)
                .copied()
                .unwrap_or(s.partitions);
            partitions.insert(s.name.clone(), n);
        }
        for t in kafka.input_topics.all() {
            match report.present.get(&t) {
                Some(&n) => {
                    partitions.insert(t, n);
                }
                None => tracing::warn!(
                    topic = %t,
                    "input topic not found at start: its partitions are not expected by the spend watermarks"
                ),
            }
        }
        let store = match &cfg.archive.uri {
            Some(uri) => {
                cfg.archive.validate().map_err(RuntimeError::Config)?;
                let store =
                    block_on(&handle, Store::open(uri, &cfg.archive)).map_err(|source| {
                        RuntimeError::ArchiveOpen {
                            uri: uri.clone(),
                            source,
                        }
                    })?;
                Some(Arc::new(store))
            }
            None => None,
        };
        let view = View::new(&cfg.optout);
        let shared = Shared {
            cfg: Arc::new(cfg),
            kafka: Arc::new(kafka),
            shutdown,
            metrics: Arc::new(Metrics {
                fatal,
                ..Metrics::default()
            }),
            view: Arc::new(RwLock::new(view)),
            store,
            io: handle,
            partitions: Arc::new(partitions),
        };
        let mut threads = Vec::new();
        let spawn = |name: &'static str,
                     f: Box<dyn FnOnce() -> Result<(), RuntimeError> + Send>|
         -> Result<_, RuntimeError> {
            std::thread::Builder::new()
                .name(format!("smsvoice-{name}"))
                .spawn(f)
                .map(|h| (name, h))
                .map_err(|e| RuntimeError::Stage(name, e.to_string()))
        };
        {
            let s = shared.clone();
            threads.push(spawn("replica", Box::new(move || view::run(&s)))?);
        }
        for w in 0..shared.kafka.workers {
            let s = shared.clone();
            threads.push(spawn(
                "router",
                Box::new(move || stage::run_worker(&s, router::Router::new(&s), w)),
            )?);
            let s = shared.clone();
            threads.push(spawn(
                "messages",
                Box::new(move || stage::run_worker(&s, message_owner::MessageStage::new(&s), w)),
            )?);
        }
        {
            let s = shared.clone();
            threads.push(spawn(
                "optouts",
                Box::new(move || stage::run(&s, optout_owner::OptOutStage::new(&s))),
            )?);
        }
        {
            let s = shared.clone();
            threads.push(spawn(
                "totals",
                Box::new(move || stage::run(&s, totals::TotalsStage::new(&s))),
            )?);
        }
        if shared.store.is_some() {
            let s = shared.clone();
            threads.push(spawn("archive", Box::new(move || archive_sink::run(&s)))?);
        }
        Ok(Instance {
            shared,
            threads,
            _io: own_rt,
        })
    }

    /// The shared handles (metrics, view, shutdown flag).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Asks every loop to stop after committing what it holds.
    pub fn request_stop(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
    }

    /// True when a loop has ended (after an internal error, or a stop).
    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(|(_, h)| h.is_finished())
    }

    /// The first fatal error of the instance, once there is one: the
    /// instance should then be stopped ([`Instance::stop`] returns it).
    pub fn fatal(&self) -> Option<Fatal> {
        self.shared.fatal()
    }

    /// Stops and waits at most `grace` (at most [`FATAL_GRACE`] after a
    /// fatal error) for the loops to finish; returns the fatal error if there
    /// is one ([`RuntimeError::Fatal`]), else the first error a loop
    /// reported. Loops still running after the grace period are left behind
    /// (the process is about to exit; their uncommitted work is redone by the
    /// next owner).
    pub fn stop(self, grace: Duration) -> Result<(), RuntimeError> {
        self.request_stop();
        let fatal = self.shared.has_fatal();
        let grace = if fatal { grace.min(FATAL_GRACE) } else { grace };
        let deadline = Instant::now() + grace;
        let mut first_err = None;
        for (name, h) in self.threads {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !h.is_finished() {
                if fatal {
                    tracing::info!(stage = name, "did not finish within the grace period");
                } else {
                    tracing::warn!(stage = name, "did not finish within the grace period");
                }
                continue;
            }
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // After a fatal error, the loops' own failures are its
                    // consequences: the fatal error alone is reported.
                    if fatal {
                        tracing::debug!(stage = name, error = %e, "stage failed");
                    } else {
                        tracing::error!(stage = name, error = %e, "stage failed");
                    }
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(RuntimeError::Stage(name, "panicked".into()));
                }
            }
        }
        if let Some(rt) = self._io {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        if let Some(f) = self.shared.fatal() {
            return Err(RuntimeError::Fatal(Box::new(f)));
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// How long the loops may take to finish after a fatal error (at most
/// `kafka.shutdown_grace_ms`): the cluster or the archive refuses this
/// instance, or it cannot read its own state, so there is little to
/// commit.
pub const FATAL_GRACE: Duration = Duration::from_secs(10);

/// The error `Instance::start` reports when creating the topics failed with
/// `e`: the fatal error recorded meanwhile, or `e` itself when it is fatal,
/// else `e`.
/// How long startup waits for the brokers before it says so.
const UNREACHABLE_WARN_AFTER: Duration = Duration::from_secs(5);

/// Creates the missing topics ([`ensure_topics_watched`], retried with
/// [`crate::kafka::RetryPolicy::default`]), warning at the default level
/// after [`UNREACHABLE_WARN_AFTER`] and every 10 s while the brokers do not
/// answer, with the address and the retry schedule; `None` when `shutdown`
/// is set meanwhile.
async fn startup_topics(
    kafka: &KafkaConfig,
    specs: &[crate::kafka::TopicSpec],
    fatal: &FatalSlot,
    shutdown: &AtomicBool,
    warn_unreachable: bool,
) -> Option<Result<crate::kafka::EnsureReport, ClientError>> {
    let started = Instant::now();
    let ensure = ensure_topics_watched(kafka, specs, fatal);
    tokio::pin!(ensure);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut warned_at: Option<Instant> = None;
    loop {
        tokio::select! {
            r = &mut ensure => {
                if warned_at.is_some() && r.is_ok() {
                    tracing::warn!(bootstrap = %kafka.bootstrap_servers, waited_ms = started.elapsed().as_millis() as u64, "Kafka brokers reachable: starting");
                }
                return Some(r);
            }
            _ = tick.tick() => {
                if shutdown.load(Ordering::SeqCst) {
                    tracing::warn!(bootstrap = %kafka.bootstrap_servers, "stopped before the brokers answered");
                    return None;
                }
                let due = warn_unreachable && match warned_at {
                    None => started.elapsed() >= UNREACHABLE_WARN_AFTER,
                    Some(t) => t.elapsed() >= Duration::from_secs(10),
                };
                if due {
                    warned_at = Some(Instant::now());
                    let p = crate::kafka::RetryPolicy::default();
                    tracing::warn!(
                        bootstrap = %kafka.bootstrap_servers,
                        waited_ms = started.elapsed().as_millis() as u64,
                        retry = %format!(
                            "each metadata request waits for an answer; up to {} attempts, {} ms doubling to {} s between them",
                            p.max_attempts,
                            p.initial_delay.as_millis(),
                            p.max_delay.as_secs()
                        ),
                        "cannot reach the Kafka brokers yet: retrying (SIGTERM stops)"
                    );
                }
            }
        }
    }
}

fn startup_error(kafka: &KafkaConfig, fatal: &FatalSlot, e: ClientError) -> RuntimeError {
    if let Some(f) = fatal.get() {
        return RuntimeError::Fatal(Box::new(Fatal::Kafka(f.clone())));
    }
    match FatalError::from_client_error(kafka, "admin", &e) {
        Some(f) => RuntimeError::Fatal(Box::new(Fatal::Kafka(f))),
        None => RuntimeError::Kafka(e),
    }
}

/// Runs `f` on `handle` from a plain thread.
pub fn block_on<F: std::future::Future>(handle: &tokio::runtime::Handle, f: F) -> F::Output {
    handle.block_on(f)
}

/// The internal topic names, for tests and tools.
pub fn internal_topics(k: &KafkaConfig) -> [String; 3] {
    [
        k.internal_topic(EVENTS_BY_MESSAGE),
        k.internal_topic(INBOUND_BY_NUMBER),
        k.internal_topic(SPEND_PARTIALS),
    ]
}

/// `smsvoice run`: starts an instance and runs it until SIGTERM or SIGINT,
/// then stops it within `kafka.shutdown_grace_ms` (every loop finishes its
/// record, commits what it holds and leaves its group). Logs progress every
/// 10 seconds at info level. A fatal error (Kafka: authentication, TLS,
/// authorization, a fenced producer, a fatal librdkafka error, an invalid
/// configuration; the archive store refusing this process; an unreadable
/// internal record), at start or later, stops the instance too and is
/// returned as [`RuntimeError::Fatal`].
pub fn run_until_signal(cfg: Config) -> Result<(), RuntimeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RuntimeError::Config(format!("tokio runtime: {e}")))?;
    let grace = Duration::from_millis(cfg.kafka.as_ref().map_or(30_000, |k| k.shutdown_grace_ms));
    // Signals are handled from the start: SIGTERM while the brokers do not
    // answer yet ends the start cleanly (exit 0) instead of killing it.
    let shutdown = Arc::new(AtomicBool::new(false));
    let signalled: Arc<std::sync::Mutex<Option<&'static str>>> = Arc::default();
    {
        let (shutdown, signalled) = (shutdown.clone(), signalled.clone());
        rt.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).ok();
            let why = tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => "SIGTERM",
            };
            if let Ok(mut s) = signalled.lock() {
                *s = Some(why);
            }
            shutdown.store(true, Ordering::SeqCst);
        });
    }
    let instance = match Instance::start_stoppable(cfg, Some(rt.handle().clone()), shutdown) {
        Ok(i) => i,
        Err(RuntimeError::StoppedDuringStartup) => {
            rt.shutdown_timeout(Duration::from_secs(1));
            return Ok(());
        }
        Err(e) => {
            // Not a plain drop: that would wait for a blocked metadata
            // request of the topic creation.
            rt.shutdown_timeout(Duration::from_secs(1));
            return Err(e);
        }
    };
    let server = match crate::http::start(instance.shared(), rt.handle()) {
        Ok(s) => s,
        Err(e) => {
            let _ = instance.stop(Duration::from_secs(5));
            rt.shutdown_timeout(Duration::from_secs(1));
            return Err(RuntimeError::Config(e.to_string()));
        }
    };
    if let Some(s) = &server {
        tracing::info!(
            addr = %s.addr,
            "http server listening (healthz, readyz, metrics, v1/opt-out-lists, v1/spend)"
        );
    }
    let metrics = instance.shared().metrics.clone();
    let why = rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => log_progress(&metrics),
                _ = check.tick() => {
                    if let Some(why) = signalled.lock().ok().and_then(|s| *s) {
                        return why;
                    }
                    if instance.shared().has_fatal() {
                        return "fatal error";
                    }
                    if instance.any_finished() {
                        return "a stage stopped";
                    }
                }
            }
        }
    });
    tracing::info!(reason = why, "stopping");
    let r = instance.stop(grace);
    drop(server);
    log_progress(&metrics);
    rt.shutdown_timeout(Duration::from_secs(1));
    r
}

fn log_progress(m: &Metrics) {
    tracing::info!(
        input_records = Metrics::get(&m.router_records),
        events = Metrics::get(&m.events),
        inbound = Metrics::get(&m.inbound),
        partials = Metrics::get(&m.partials),
        alarms = Metrics::get(&m.alarms),
        dead_letters = Metrics::get(&m.dead_letters),
        commits = Metrics::get(&m.commits),
        restored_records = Metrics::get(&m.restored_records),
        restore_ms = Metrics::get(&m.restore_ms),
        refetches = Metrics::get(&m.refetches),
        archive_rows = Metrics::get(&m.archive_rows),
        archive_repeats = Metrics::get(&m.archive_repeats),
        archive_files = Metrics::get(&m.archive_files),
        "progress"
    );
}

/// A [`Shared`] for unit tests: the embedded default configuration, a
/// `[kafka]` section pointing nowhere, no archive. Keep the runtime alive as
/// long as the `Shared`.
#[cfg(test)]
pub(crate) fn test_shared() -> (Shared, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = Config::from_toml(crate::config::EMBEDDED_DEFAULT, "embedded default")
        .expect("embedded default");
    let view = View::new(&cfg.optout);
    let shared = Shared {
        cfg: Arc::new(cfg),
        kafka: Arc::new(KafkaConfig::new("127.0.0.1:1")),
        shutdown: Arc::new(AtomicBool::new(false)),
        metrics: Arc::new(Metrics::default()),
        view: Arc::new(RwLock::new(view)),
        store: None,
        io: rt.handle().clone(),
        partitions: Arc::new(BTreeMap::new()),
    };
    (shared, rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_turning_is_stale() {
        let m = Metrics::default();
        m.beat("router worker 0");
        m.beat("replica");
        assert!(m.stale_loops(Duration::from_secs(3600)).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        m.beat("replica");
        let stale = m.stale_loops(Duration::from_millis(10));
        assert_eq!(
            stale.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            vec!["router worker 0"]
        );
    }
    use crate::archive::s3::StoreError as S3Error;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    fn upload(source: StoreError) -> RuntimeError {
        RuntimeError::Archive(ArchiveError::Store {
            key: "delivery_events/event_date=2025-11-01/channel=SMS/x.parquet".into(),
            source,
        })
    }

    fn s3(e: S3Error) -> RuntimeError {
        upload(StoreError::S3(Box::new(e)))
    }

    fn local(kind: std::io::ErrorKind) -> RuntimeError {
        upload(StoreError::Local {
            op: "write",
            path: "/archive/x".into(),
            source: std::io::Error::from(kind),
        })
    }

    #[test]
    fn every_runtime_error_has_a_class() {
        use ErrorClass::{Abort, Fatal as F, Restart, Retryable};
        let k = |e: KafkaError| RuntimeError::Kafka(ClientError::kafka("x", e));
        let cases = [
            (
                k(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
                Retryable,
            ),
            (
                k(KafkaError::ConsumerCommit(
                    RDKafkaErrorCode::IllegalGeneration,
                )),
                Retryable,
            ),
            (
                RuntimeError::Kafka(ClientError::Delivery("x".into())),
                Abort,
            ),
            (
                k(KafkaError::MessageProduction(RDKafkaErrorCode::Fenced)),
                F,
            ),
            (k(KafkaError::Global(RDKafkaErrorCode::Fatal)), F),
            (k(KafkaError::Seek("x".into())), Restart),
            // The archive: its store's verdict.
            (
                s3(S3Error::Server {
                    operation: "PutObject",
                    bucket: "b".into(),
                    key: "k".into(),
                    status: 503,
                    code: "SlowDown".into(),
                    message: "x".into(),
                }),
                Retryable,
            ),
            (
                s3(S3Error::Timeout {
                    operation: "PutObject",
                    bucket: "b".into(),
                    key: "k".into(),
                    message: "x".into(),
                }),
                Retryable,
            ),
            (
                s3(S3Error::Throttled {
                    operation: "PutObject",
                    bucket: "b".into(),
                    key: "k".into(),
                    code: "SlowDown".into(),
                    message: "x".into(),
                }),
                Retryable,
            ),
            (
                s3(S3Error::CredentialsUnavailable {
                    operation: "PutObject",
                    message: "IMDS timed out".into(),
                }),
                Retryable,
            ),
            (
                s3(S3Error::NoCredentials {
                    operation: "PutObject",
                    message: "no provider had credentials".into(),
                }),
                F,
            ),
            (
                s3(S3Error::AccessDenied {
                    operation: "PutObject",
                    bucket: "b".into(),
                    key: "k".into(),
                    code: "InvalidAccessKeyId".into(),
                    message: "The AWS Access Key Id you provided does not exist\nin our records."
                        .into(),
                }),
                F,
            ),
            (
                s3(S3Error::NoSuchBucket {
                    operation: "PutObject",
                    bucket: "b".into(),
                }),
                F,
            ),
            (
                s3(S3Error::Rejected {
                    operation: "CompleteMultipartUpload",
                    bucket: "b".into(),
                    key: "k".into(),
                    status: 404,
                    code: "NoSuchUpload".into(),
                    message: "x".into(),
                }),
                Restart,
            ),
            (local(std::io::ErrorKind::TimedOut), Retryable),
            (local(std::io::ErrorKind::PermissionDenied), F),
            (local(std::io::ErrorKind::NotFound), Restart),
            (
                RuntimeError::Archive(ArchiveError::PastForcedEnd {
                    source_name: "t".into(),
                    partition: Some(0),
                    offset: 9,
                    end: 5,
                }),
                Restart,
            ),
            (
                RuntimeError::Record(RecordError::Unreadable {
                    what: "spend partial",
                    topic: "t".into(),
                    partition: 0,
                    offset: 1,
                    detail: "x".into(),
                }),
                F,
            ),
            (RuntimeError::Config("x".into()), F),
            (
                RuntimeError::Stage("totals", "view lock poisoned".into()),
                F,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.class(), want, "{e}");
        }
    }

    #[test]
    fn fatal_errors_stop_the_instance_with_their_exit_code() {
        let (shared, _rt) = test_shared();
        // Not fatal: nothing recorded, the loop restarts.
        let retry = s3(S3Error::Timeout {
            operation: "PutObject",
            bucket: "b".into(),
            key: "k".into(),
            message: "x".into(),
        });
        assert!(!shared.fatal_stop("messages", &retry));
        assert!(shared.fatal().is_none());
        // Configuration and stage bugs end the loop without a line of their
        // own (exit code 1).
        assert!(RuntimeError::Config("x".into())
            .fatal(&shared.kafka, "x")
            .is_none());
        // An archive refusal: one line, exit code 4.
        let denied = s3(S3Error::AccessDenied {
            operation: "PutObject",
            bucket: "b".into(),
            key: "k".into(),
            code: "InvalidAccessKeyId".into(),
            message: "The AWS Access Key Id you provided does not exist\nin our records.".into(),
        });
        assert!(shared.fatal_stop("messages", &denied));
        let f = shared.fatal().expect("recorded");
        assert_eq!(f.exit_code(), EXIT_FATAL_ARCHIVE);
        let line = f.to_string();
        assert!(
            line.starts_with("archive: uploading delivery_events/"),
            "{line}"
        );
        assert!(
            line.contains("access denied (InvalidAccessKeyId)"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
        // The first fatal error is kept; a Kafka one is reported first.
        let record = RuntimeError::Record(RecordError::Unreadable {
            what: "spend partial",
            topic: "t".into(),
            partition: 0,
            offset: 1,
            detail: "x".into(),
        });
        assert!(shared.fatal_stop("totals", &record));
        assert_eq!(
            shared.fatal().map(|f| f.exit_code()),
            Some(EXIT_FATAL_ARCHIVE)
        );
        let fenced = RuntimeError::Kafka(ClientError::kafka(
            "abort transaction",
            KafkaError::MessageProduction(RDKafkaErrorCode::Fenced),
        ));
        assert!(shared.fatal_stop("optouts producer", &fenced));
        let f = shared.fatal().expect("kafka");
        assert_eq!(f.exit_code(), EXIT_FATAL_KAFKA);
        assert!(
            f.to_string()
                .starts_with("Kafka producer fenced (optouts producer at 127.0.0.1:1): "),
            "{f}"
        );
        assert_eq!(
            RuntimeError::Fatal(Box::new(f))
                .to_string()
                .split_once(": ")
                .map(|p| p.0),
            Some("fatal")
        );
        let (other, _rt2) = test_shared();
        assert!(other.fatal_stop("totals", &record));
        assert_eq!(
            other.fatal().map(|f| f.exit_code()),
            Some(EXIT_FATAL_RECORD)
        );
    }
}
