//! The runtime's errors, by class ([`RuntimeError::class`]), and the fatal
//! ones an instance stops with ([`Fatal`], its exit code).

use super::*;

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
    /// Partitions whose records the open transaction holds were revoked
    /// before its commit point (a wait polled the consumer through a
    /// rebalance): committing would commit offsets of partitions given up,
    /// whose new owner reads them from the last commit. `Abort` class: the
    /// transaction is aborted and the work redone from the last commit.
    #[error("stage {stage}: partitions {partitions:?} revoked with the transaction open: it is aborted, not committed")]
    RevokedInTransaction {
        /// The stage.
        stage: &'static str,
        /// The revoked partitions the transaction holds records of.
        partitions: Vec<(String, i32)>,
    },
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
    /// | partitions revoked with the transaction open | `Abort` |
    /// | unreadable internal record | `Fatal` |
    /// | configuration, a stage bug, an already fatal error | `Fatal` |
    pub fn class(&self) -> ErrorClass {
        match self {
            RuntimeError::Kafka(e) => e.class(),
            RuntimeError::RevokedInTransaction { .. } => ErrorClass::Abort,
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
            | RuntimeError::RevokedInTransaction { .. }
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
