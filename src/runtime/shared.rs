//! What every loop of an instance shares: the configuration, the counters
//! ([`Metrics`]), the stop flag and the first fatal error.

use super::*;

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
