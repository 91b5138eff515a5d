//! A running instance: topics created, the archive store opened, every
//! loop started on its own thread, and stopped within the grace period.

use super::*;

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

/// The error `Instance::start` reports when creating the topics failed with
/// `e`: the fatal error recorded meanwhile, or `e` itself when it is fatal,
/// else `e`.
fn startup_error(kafka: &KafkaConfig, fatal: &FatalSlot, e: ClientError) -> RuntimeError {
    if let Some(f) = fatal.get() {
        return RuntimeError::Fatal(Box::new(Fatal::Kafka(f.clone())));
    }
    match FatalError::from_client_error(kafka, "admin", &e) {
        Some(f) => RuntimeError::Fatal(Box::new(Fatal::Kafka(f))),
        None => RuntimeError::Kafka(e),
    }
}
