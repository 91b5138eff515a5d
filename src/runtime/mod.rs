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

mod errors;
mod instance;
mod shared;

pub use errors::{Fatal, RuntimeError, EXIT_FATAL_ARCHIVE, EXIT_FATAL_KAFKA, EXIT_FATAL_RECORD};
pub use instance::{Instance, FATAL_GRACE};
pub use shared::{Metrics, Shared};

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
