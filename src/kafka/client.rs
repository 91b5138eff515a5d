//! librdkafka client configurations, typed errors classified by what to do
//! about them ([`ErrorClass`]: retry, abort the transaction, restart, stop),
//! and a deterministic exponential-backoff retry helper (on the `backon`
//! crate).
//!
//! Tuning measured on this project's hardware (2 cores, loopback, tansu 0.6
//! broker, 210k generated records of 774 B, 6 partitions;
//! `BARE_CONSUMER_MESSAGES=100000 cargo bench --bench bare_consumer`), bare
//! `BaseConsumer`, median of 3:
//!
//! | consumer setting | lz4 topic | uncompressed topic |
//! |---|---|---|
//! | [`CONSUMER_TUNING`] (`fetch.wait.max.ms=10`) | 260k rec/s, 201 MB/s | 200k rec/s, 155 MB/s |
//! | `fetch.wait.max.ms=500` (librdkafka default) | 95k rec/s | 27k rec/s |
//! | `fetch.wait.max.ms=100` | 159k rec/s | 59k rec/s |
//! | `fetch.wait.max.ms=1` | 255k rec/s | 263k rec/s |
//! | `max.partition.fetch.bytes=4MiB`, `fetch.min.bytes=64KiB` | no change | no change |
//!
//! tansu holds every fetch until `fetch.wait.max.ms` expires, so the wait
//! bounds throughput; on Apache Kafka the wait only applies to an idle
//! partition, and 10 ms keeps idle fetch traffic moderate. lz4 is kept on
//! the producer: it produced at 200k rec/s against 223k uncompressed and is
//! read faster (fewer bytes through the broker), and it cuts network and
//! storage on a real cluster.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use super::KafkaConfig;

/// Consumer settings applied before the pass-through properties.
pub const CONSUMER_TUNING: &[(&str, &str)] = &[
    // Offsets are committed explicitly (with the outputs, in exactly-once
    // mode), never in the background.
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("enable.partition.eof", "false"),
    // A fetch returns as soon as anything is available, or after 10 ms.
    ("fetch.wait.max.ms", "10"),
    ("fetch.min.bytes", "1"),
    // Pre-fetch queue per partition: enough to hide a fetch round trip,
    // bounded so that memory stays predictable (KiB).
    ("queued.max.messages.kbytes", "65536"),
    ("queued.min.messages", "100000"),
];

/// Producer settings applied before the pass-through properties.
pub const PRODUCER_TUNING: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("batch.size", "1048576"),
    ("compression.type", "lz4"),
    ("queue.buffering.max.messages", "200000"),
    ("queue.buffering.max.kbytes", "262144"),
    ("message.timeout.ms", "300000"),
];

/// The bootstrap servers and the pass-through properties only: the
/// configuration of admin and metadata clients.
pub fn admin_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    apply_properties(&mut c, cfg);
    c
}

/// A consumer configuration: explicit commits, earliest reset, cooperative
/// rebalancing, `read_committed` in exactly-once mode, and the measured fetch
/// tuning ([`CONSUMER_TUNING`]). The group id is `group_id` or
/// `group_id.group_suffix` when the suffix is not empty. The pass-through
/// properties are applied last and override anything set here.
pub fn consumer_config(cfg: &KafkaConfig, group_suffix: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    let group = if group_suffix.is_empty() {
        cfg.group_id.clone()
    } else {
        format!("{}.{}", cfg.group_id, group_suffix)
    };
    c.set("group.id", &group);
    c.set("client.id", &group);
    for (k, v) in CONSUMER_TUNING {
        c.set(*k, *v);
    }
    c.set(
        "isolation.level",
        if cfg.exactly_once {
            "read_committed"
        } else {
            "read_uncommitted"
        },
    );
    apply_properties(&mut c, cfg);
    c
}

/// A producer configuration: idempotent, `acks=all`, batched and
/// lz4-compressed ([`PRODUCER_TUNING`]); transactional with
/// `transaction.timeout.ms` when `transactional_id` is given. The
/// pass-through properties are applied last.
pub fn producer_config(cfg: &KafkaConfig, transactional_id: Option<String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    for (k, v) in PRODUCER_TUNING {
        c.set(*k, *v);
    }
    if let Some(id) = transactional_id {
        c.set("client.id", &id);
        c.set("transactional.id", id);
        c.set(
            "transaction.timeout.ms",
            cfg.transaction_timeout_ms.to_string(),
        );
        // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
        c.set("message.timeout.ms", cfg.transaction_timeout_ms.to_string());
    }
    apply_properties(&mut c, cfg);
    c
}

fn apply_properties(c: &mut ClientConfig, cfg: &KafkaConfig) {
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
}

/// Why a Kafka operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An error reported by librdkafka.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done (`"create topic smsvoice.spend"`).
        context: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// A broker answered one item of a request with an error code.
    #[error("{context}: broker error {code}")]
    Broker {
        /// What was being done.
        context: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// No answer in time.
    #[error("{what}: no answer within {waited_ms} ms")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The configuration cannot work (invalid value, missing setting).
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    /// The mock cluster could not be started.
    #[error("mock cluster: {0}")]
    MockCluster(String),
    /// Records were not delivered (the first failure is named); the batch is
    /// produced again from the last commit.
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// A fatal error a client's context reported ([`FatalCause`]): retrying
    /// cannot fix it.
    #[error("fatal: {0}")]
    Fatal(Box<FatalError>),
}

/// What to do about a failed operation: the class of an error, from the
/// most hopeful to the least.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient: the same operation may succeed when tried again after a
    /// backoff (broker unavailable, timeouts, throttling, a leader or
    /// coordinator moving, a rebalance in progress, S3 5xx), so it is retried
    /// in place, keeping the state built so far.
    Retryable,
    /// The work since the last commit cannot be committed: the open
    /// transaction is aborted (librdkafka's abortable transaction errors),
    /// or the records produced since the last commit were not all delivered;
    /// the stage rewinds to its last commit and redoes that work.
    Abort,
    /// Neither retrying the operation nor rewinding is known to help, but a
    /// fresh attempt (new clients, state rebuilt from Kafka) may: unexpected
    /// errors, and retryable ones still failing when their retry budget is
    /// spent.
    Restart,
    /// Retrying cannot fix it: the process stops with one line and a non-zero
    /// exit code (authentication, authorization, TLS trust, a fenced
    /// producer, a fatal librdkafka error, an invalid configuration, an
    /// internal record that cannot be read, refused archive credentials).
    Fatal,
}

impl ClientError {
    /// What to do about this error ([`ErrorClass`]): `Fatal` when
    /// [`ClientError::fatal_cause`] names a cause (security, a fenced
    /// producer, a fatal librdkafka error, an invalid configuration);
    /// `Abort` for librdkafka's abortable transaction errors and for records
    /// not delivered; `Retryable` for transient errors
    /// ([`ClientError::is_retryable`]) and a consumer group being rebalanced
    /// ([`ClientError::is_rebalance`]); `Restart` for anything else.
    pub fn class(&self) -> ErrorClass {
        if self.fatal_cause().is_some() {
            ErrorClass::Fatal
        } else if self.requires_abort() || matches!(self, ClientError::Delivery(_)) {
            ErrorClass::Abort
        } else if self.is_retryable() || self.is_rebalance() {
            ErrorClass::Retryable
        } else {
            ErrorClass::Restart
        }
    }

    /// True when the consumer group is being rebalanced, or this member's
    /// generation is over ([`code_is_rebalance`]): an offset commit fails
    /// with this during a cooperative rebalance, and succeeds once the
    /// consumer has been polled through the rebalance, so it is neither
    /// fatal nor worth retrying without polling.
    pub fn is_rebalance(&self) -> bool {
        self.code().is_some_and(code_is_rebalance)
    }

    /// Wraps a librdkafka error with what was being done.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> ClientError {
        ClientError::Kafka {
            context: context.into(),
            source,
        }
    }

    /// True when trying again later may succeed: broker unreachable, all
    /// brokers down, timeouts, leader or coordinator moving, throttling. False
    /// for authentication, authorization, configuration, fencing and other
    /// fatal errors, which retrying cannot fix.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Kafka { source, .. } => kafka_error_is_retryable(source),
            ClientError::Broker { code, .. } => code_is_retryable(*code),
            ClientError::Timeout { .. } | ClientError::Delivery(_) => true,
            ClientError::Config(_) | ClientError::MockCluster(_) | ClientError::Fatal(_) => false,
        }
    }

    /// Whether retrying cannot fix this error, and why ([`fatal_cause`],
    /// [`kafka_error_fatal_cause`]): a security setting is wrong, the
    /// producer was fenced, librdkafka raised a fatal error, or the
    /// configuration is invalid. `None` for transient errors (broker
    /// unreachable, timeouts) and for errors that restarting a stage may fix.
    pub fn fatal_cause(&self) -> Option<FatalCause> {
        match self {
            ClientError::Kafka { source, .. } => kafka_error_fatal_cause(source),
            ClientError::Broker { code, .. } => fatal_cause(*code),
            ClientError::Fatal(f) => Some(f.cause),
            ClientError::Config(_) => Some(FatalCause::Config),
            _ => None,
        }
    }

    /// True for a transactional error after which the current transaction
    /// must be aborted (and may then be retried from its start).
    pub fn requires_abort(&self) -> bool {
        match self {
            ClientError::Kafka {
                source: KafkaError::Transaction(e),
                ..
            } => e.txn_requires_abort(),
            _ => false,
        }
    }

    /// The librdkafka or broker error code, when there is one.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            ClientError::Kafka {
                source: KafkaError::AdminOp(code),
                ..
            } => Some(*code),
            ClientError::Kafka { source, .. } => source.rdkafka_error_code(),
            ClientError::Broker { code, .. } => Some(*code),
            ClientError::Fatal(f) => Some(f.code),
            _ => None,
        }
    }
}

/// Whether a librdkafka error is worth retrying (see
/// [`ClientError::is_retryable`]).
pub fn kafka_error_is_retryable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => {
            !t.is_fatal() && (t.is_retriable() || code_is_retryable(t.code()))
        }
        KafkaError::MessageConsumptionFatal(_)
        | KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::AdminOpCreation(_)
        | KafkaError::Canceled
        | KafkaError::Nul(_)
        | KafkaError::Subscription(_)
        | KafkaError::Seek(_)
        | KafkaError::PauseResume(_) => false,
        KafkaError::NoMessageReceived | KafkaError::PartitionEOF(_) => true,
        KafkaError::AdminOp(code) => code_is_retryable(*code),
        other => other.rdkafka_error_code().is_some_and(code_is_retryable),
    }
}

/// Whether an error code is transient. Unknown codes are treated as fatal:
/// an error nobody expected is better reported than retried forever.
pub fn code_is_retryable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::MessageTimedOut
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::TimedOutQueue
            | C::QueueFull
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::BrokerNotAvailable
            | C::ReplicaNotAvailable
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::WaitingForCoordinator
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::ISRInsufficient
            | C::NotController
            | C::KafkaStorageError
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
            | C::PreferredLeaderNotAvailable
            | C::RebalanceInProgress
            | C::ConcurrentTransactions
            | C::ThrottlingQuotaExceeded
            | C::UnknownTopicOrPartition
            | C::UnstableOffsetCommit
            | C::InProgress
            | C::PreviousInProgress
            | C::Retry
            | C::WaitCache
            | C::NodeUpdate
            | C::RebootstrapRequired
    )
}

/// Whether an error code means the consumer group is rebalancing or this
/// member's generation is over (see [`ClientError::is_rebalance`]).
pub fn code_is_rebalance(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::RebalanceInProgress
            | C::IllegalGeneration
            | C::UnknownMemberId
            | C::AssignmentLost
            | C::StaleMemberEpoch
            | C::FencedMemberEpoch
    )
}

/// Why a Kafka error is fatal to the process: a security setting is wrong
/// (credentials, trusted CA, ACLs), another producer took over this one's
/// transactional id, librdkafka raised a fatal error, or the configuration
/// is invalid, so every retry fails the same way and the process should
/// stop and say so instead of retrying forever. See [`fatal_cause`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatalCause {
    /// The broker refused the SASL credentials or mechanism.
    Authentication,
    /// The TLS handshake failed: the broker's certificate is not trusted
    /// (`ssl.ca.location`), its name does not match, or the two sides share
    /// no protocol.
    Tls,
    /// Authenticated, but an ACL forbids the operation (topic, group,
    /// cluster or transactional id).
    Authorization,
    /// A newer producer with the same transactional id
    /// (`group.stage.instance`) fenced this one: another process runs with
    /// this instance id, or this one was frozen longer than
    /// `transaction_timeout_ms` and the coordinator aborted its transaction.
    Fenced,
    /// librdkafka raised a fatal error (`__FATAL`: an idempotent or
    /// transactional producer, or a static group member, that cannot go on).
    Client,
    /// librdkafka or a broker rejected the configuration (an unknown or
    /// invalid property, an invalid topic setting).
    Config,
}

/// The fatal classification of an error code: `Some` for authentication
/// (`__AUTHENTICATION`, `SASL_AUTHENTICATION_FAILED`, unsupported SASL
/// mechanism), TLS (`__SSL`: librdkafka reports a disconnect during the
/// handshake as `__TRANSPORT`, so `__SSL` is a real handshake failure),
/// authorization errors (topic, group, cluster, transactional id, delegation
/// token), a fenced producer (`__FENCED`, `PRODUCER_FENCED`,
/// `INVALID_PRODUCER_EPOCH`, which librdkafka turns into `__FENCED`), a fatal
/// librdkafka error (`__FATAL`) and an invalid configuration
/// (`INVALID_CONFIG`); `None` for everything else, transient errors
/// (connection refused, all brokers down, timeouts) and rebalances
/// (`ILLEGAL_GENERATION`, `UNKNOWN_MEMBER_ID`, `REBALANCE_IN_PROGRESS`)
/// included. Every fatal code is also not [retryable](code_is_retryable).
pub fn fatal_cause(code: RDKafkaErrorCode) -> Option<FatalCause> {
    use RDKafkaErrorCode as C;
    match code {
        C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch => Some(FatalCause::Fenced),
        C::Fatal => Some(FatalCause::Client),
        C::InvalidConfig => Some(FatalCause::Config),
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState => Some(FatalCause::Authentication),
        C::SSL => Some(FatalCause::Tls),
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::DelegationTokenAuthorizationFailed => Some(FatalCause::Authorization),
        _ => None,
    }
}

/// The fatal cause of a transactional error whose code says the broker's
/// transaction coordinator ended the transaction itself: `INVALID_TXN_STATE`
/// on a fatal transaction error is what Kafka 4's transactions v2 answer
/// when the coordinator aborted a transaction that outlived
/// `transaction.timeout.ms` (its abort bumps the producer epoch, the
/// producer's own end of the transaction then passes the epoch check as a
/// retry and fails the state check; KAFKA-20785, where v1 answers
/// `PRODUCER_FENCED`). The producer is fenced in all but name: its
/// transaction was rolled back and it cannot go on.
fn coordinator_ended(code: RDKafkaErrorCode) -> Option<FatalCause> {
    (code == RDKafkaErrorCode::InvalidTransactionalState).then_some(FatalCause::Fenced)
}

/// [`fatal_cause`] of a librdkafka error (admin and transaction errors
/// included): also `Some` for a transaction error librdkafka calls fatal, a
/// fatal consumer error, and a configuration librdkafka refuses.
pub fn kafka_error_fatal_cause(e: &KafkaError) -> Option<FatalCause> {
    match e {
        KafkaError::AdminOp(code) => fatal_cause(*code),
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => Some(FatalCause::Config),
        KafkaError::Transaction(t) if t.is_fatal() => Some(
            fatal_cause(t.code())
                .or_else(|| coordinator_ended(t.code()))
                .unwrap_or(FatalCause::Client),
        ),
        KafkaError::MessageConsumptionFatal(code) => {
            Some(fatal_cause(*code).unwrap_or(FatalCause::Client))
        }
        other => other.rdkafka_error_code().and_then(fatal_cause),
    }
}

/// The security settings of the `[kafka.properties]` a fatal error is
/// about (never the password).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Security {
    bootstrap: String,
    protocol: String,
    mechanism: Option<String>,
    username: Option<String>,
    ca_location: Option<String>,
}

impl Security {
    fn of(cfg: &KafkaConfig) -> Security {
        let p = |k: &str| cfg.properties.get(k).map(|v| v.trim().to_owned());
        Security {
            bootstrap: cfg.bootstrap_servers.clone(),
            protocol: p("security.protocol")
                .map_or_else(|| "PLAINTEXT".into(), |v| v.to_ascii_uppercase()),
            mechanism: p("sasl.mechanism").or_else(|| p("sasl.mechanisms")),
            username: p("sasl.username"),
            ca_location: p("ssl.ca.location"),
        }
    }
}

/// The first fatal Kafka error of a process ([`FatalCause`]): what failed,
/// where, and librdkafka's or the broker's own words. Its `Display` is the
/// one line `smsvoice run` prints before exiting, naming the settings
/// involved (`sasl.mechanism`, `sasl.username`, `ssl.ca.location`; never
/// the password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatalError {
    /// The class of the error.
    pub cause: FatalCause,
    /// librdkafka's or the broker's error code.
    pub code: RDKafkaErrorCode,
    /// The client that saw it (`"admin"`, `"router consumer"`, ...).
    pub client: String,
    /// `host:port` of the broker concerned, when known.
    pub broker: Option<String>,
    /// What librdkafka or the broker said.
    pub detail: String,
    security: Security,
}

impl FatalError {
    /// The fatal error `e` reported by `client`'s context with librdkafka's
    /// `reason` (`"sasl_ssl://host:port/bootstrap: SASL authentication
    /// error: ..."`), or `None` when `e` is not fatal.
    pub fn from_event(
        cfg: &KafkaConfig,
        client: &str,
        e: &KafkaError,
        reason: &str,
    ) -> Option<FatalError> {
        let mut cause = kafka_error_fatal_cause(e)?;
        let mut code = match e {
            KafkaError::AdminOp(c) => *c,
            other => other.rdkafka_error_code()?,
        };
        // librdkafka reports a fenced producer as `__FATAL` ("Fatal error:
        // Local: This instance has been fenced by a newer instance: ...").
        // Kafka 4 (transactions v2) reports a transaction the coordinator
        // aborted on timeout as `INVALID_TXN_STATE` ([`coordinator_ended`]).
        let lower = reason.to_ascii_lowercase();
        // A connection lost during the SASL handshake (a broker restarting)
        // is reported as `__AUTHENTICATION` ("SASL SCRAM-SHA-512 mechanism
        // handshake failed: Local: Broker transport failure: broker's
        // supported mechanisms: (n/a)"): the broker refused nothing, the
        // next connection retries.
        if cause == FatalCause::Authentication && lower.contains("broker transport failure") {
            return None;
        }
        if cause == FatalCause::Client && lower.contains("fenced") {
            cause = FatalCause::Fenced;
        } else if cause == FatalCause::Client
            && lower.contains("transactional operation in an invalid state")
        {
            cause = FatalCause::Fenced;
            code = RDKafkaErrorCode::InvalidTransactionalState;
        }
        let (broker, detail) = split_broker(reason);
        Some(FatalError {
            cause,
            code,
            client: client.to_owned(),
            broker,
            detail: if detail.is_empty() {
                e.to_string()
            } else {
                detail.to_owned()
            },
            security: Security::of(cfg),
        })
    }

    /// The fatal error an operation of `client` returned, or `None` when
    /// `e` is not fatal.
    pub fn from_client_error(
        cfg: &KafkaConfig,
        client: &str,
        e: &ClientError,
    ) -> Option<FatalError> {
        if let ClientError::Fatal(f) = e {
            return Some((**f).clone());
        }
        let cause = e.fatal_cause()?;
        let code = e.code().unwrap_or(match cause {
            FatalCause::Config => RDKafkaErrorCode::InvalidConfig,
            _ => RDKafkaErrorCode::Fatal,
        });
        Some(FatalError {
            cause,
            code,
            client: client.to_owned(),
            broker: None,
            detail: e.to_string(),
            security: Security::of(cfg),
        })
    }
}

/// Splits librdkafka's `"proto://host:port/node: message"` (a broker) or
/// `"GroupCoordinator: host:port: message"` (a logical broker: the group or
/// transaction coordinator) into the broker address and the message; no
/// address when the reason has neither prefix.
fn split_broker(reason: &str) -> (Option<String>, &str) {
    let reason = reason.trim();
    if let Some((name, rest)) = reason.split_once(": ") {
        if let Some((_, addr)) = name.split_once("://") {
            let addr = addr.rsplit_once('/').map_or(addr, |(a, _)| a);
            if is_address(addr) {
                return (Some(addr.to_owned()), rest.trim());
            }
        } else if !name.contains(' ') {
            if let Some((addr, message)) = rest.split_once(": ") {
                if is_address(addr) {
                    return (Some(addr.to_owned()), message.trim());
                }
            }
        }
    }
    (None, reason)
}

/// `host:port` (`[v6]:port` too).
fn is_address(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(char::is_whitespace)
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
    })
}

impl std::fmt::Display for FatalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.security;
        let at = self.broker.as_deref().unwrap_or(&s.bootstrap);
        let user = s
            .username
            .as_deref()
            .map(|u| format!(" as {u:?}"))
            .unwrap_or_default();
        match self.cause {
            FatalCause::Authentication if s.protocol.starts_with("SASL_") => {
                let mechanism = s.mechanism.as_deref().unwrap_or("GSSAPI");
                write!(
                    f,
                    "Kafka authentication failed (SASL {mechanism}{user} at {at})"
                )?;
            }
            FatalCause::Authentication => write!(
                f,
                "Kafka authentication failed (security.protocol {} at {at})",
                s.protocol
            )?,
            FatalCause::Tls
                if self.detail.contains("certificate verify failed")
                    || self.detail.contains("verify broker certificate") =>
            {
                match &s.ca_location {
                    Some(ca) => write!(
                        f,
                        "TLS certificate of the broker not trusted (ssl.ca.location {ca:?} at {at})"
                    )?,
                    None => write!(
                        f,
                        "TLS certificate of the broker not trusted (ssl.ca.location not set: the system CA certificates, at {at})"
                    )?,
                }
            }
            FatalCause::Tls => write!(
                f,
                "TLS handshake with the broker failed (security.protocol {} at {at})",
                s.protocol
            )?,
            FatalCause::Authorization => write!(
                f,
                "Kafka authorization failed ({}{user} at {at})",
                self.client
            )?,
            FatalCause::Fenced if self.code == RDKafkaErrorCode::InvalidTransactionalState => write!(
                f,
                "Kafka producer fenced ({} at {at}): the transaction coordinator aborted \
                 its open transaction, which outlived transaction_timeout_ms (this process \
                 was frozen or starved; Kafka 4 reports it as INVALID_TXN_STATE)",
                self.client
            )?,
            FatalCause::Fenced => write!(
                f,
                "Kafka producer fenced ({} at {at}): a newer producer took over its \
                 transactional id (another process runs with this instance id, \
                 SMSVOICE_INSTANCE_ID or HOSTNAME, or this one was frozen longer than \
                 transaction_timeout_ms)",
                self.client
            )?,
            FatalCause::Client => write!(
                f,
                "Kafka client failed fatally ({} at {at})",
                self.client
            )?,
            FatalCause::Config => write!(f, "invalid Kafka configuration ({})", self.client)?,
        }
        write!(f, ": {}", self.detail)
    }
}

/// Where the first fatal error of any client of a process is kept (clones
/// share it): the runtime stops every stage once it is set, and
/// `smsvoice run` exits with it.
#[derive(Clone, Debug, Default)]
pub struct FatalSlot(Arc<OnceLock<FatalError>>);

impl FatalSlot {
    /// Keeps `e` unless an error is kept already; true when it was the
    /// first.
    pub fn record(&self, e: FatalError) -> bool {
        self.0.set(e).is_ok()
    }

    /// The first fatal error, once there is one.
    pub fn get(&self) -> Option<&FatalError> {
        self.0.get()
    }

    /// Waits (polling every 50 ms) until a fatal error is recorded.
    pub async fn wait(&self) -> FatalError {
        loop {
            if let Some(e) = self.get() {
                return e.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The client context of every librdkafka client of the runtime: its
/// `error` callback (where librdkafka reports connection, authentication
/// and TLS failures, which it would otherwise retry forever) records a
/// fatal error ([`fatal_cause`]) in the shared [`FatalSlot`]; other errors
/// are logged as warnings (debug once a fatal error is recorded, as the
/// process is stopping with it). librdkafka's `FAIL` log lines, which repeat
/// what the `error` callback receives, are logged at debug level.
#[derive(Clone, Debug)]
pub struct ClientWatch {
    slot: FatalSlot,
    client: Arc<str>,
    cfg: Arc<KafkaConfig>,
}

impl ClientWatch {
    /// The context of client `client` (named in the fatal error) of `cfg`.
    pub fn new(slot: &FatalSlot, cfg: &KafkaConfig, client: &str) -> ClientWatch {
        ClientWatch {
            slot: slot.clone(),
            client: Arc::from(client),
            cfg: Arc::new(cfg.clone()),
        }
    }

    /// The slot it records into.
    pub fn slot(&self) -> &FatalSlot {
        &self.slot
    }

    /// Records `e` (with librdkafka's `reason`) when it is fatal; true when
    /// it is.
    pub fn check(&self, e: &KafkaError, reason: &str) -> bool {
        match FatalError::from_event(&self.cfg, &self.client, e, reason) {
            Some(f) => {
                if self.slot.record(f) {
                    tracing::debug!(client = %self.client, error = %e, reason, "fatal Kafka error recorded");
                }
                true
            }
            None => false,
        }
    }
}

impl ClientContext for ClientWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if self.check(&error, reason) || self.slot.get().is_some() {
            tracing::debug!(target: "librdkafka", client = %self.client, "librdkafka: {error}: {reason}");
        } else {
            tracing::warn!(target: "librdkafka", client = %self.client, "librdkafka: {error}: {reason}");
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        use RDKafkaLogLevel as L;
        // `FAIL` and `FATAL` lines repeat what the error callback receives
        // (and records, when fatal): one line is enough.
        let repeated_by_error_callback = fac == "FAIL" || fac == "FATAL";
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error if !repeated_by_error_callback => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            _ => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
        }
    }
}

impl ConsumerContext for ClientWatch {}

impl ProducerContext for ClientWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            let reason = format!("delivery to {} [{}]: {e}", m.topic(), m.partition());
            self.check(e, &reason);
        }
    }
}

/// Exponential backoff with a cap and no jitter: the delay before retry `n`
/// (0-based) is `min(initial_delay * 2^n, max_delay)`, so a schedule is
/// reproducible in tests and logs. The schedule is `backon`'s
/// [`ExponentialBuilder`] ([`RetryPolicy::builder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Attempts in all (the first one included); at least 1.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 100 ms, doubling, capped at 10 s, 10 attempts: about 33 s of retries.
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// The policy as a `backon` backoff: `max_attempts - 1` delays, doubling
    /// from `initial_delay`, capped at `max_delay`, no jitter.
    pub fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_attempts.max(1).saturating_sub(1) as usize)
    }

    /// Delay before retry `retry` (0 = the first retry), also past the
    /// last one (the closed form of [`RetryPolicy::builder`]'s schedule).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// Every delay of the schedule, in order (`max_attempts - 1` of them).
    pub fn schedule(&self) -> Vec<Duration> {
        self.builder().build().collect()
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or
/// `policy.max_attempts` attempts have failed; sleeps the policy's delays
/// between attempts (`backon`, tokio's timer) and logs each retry (warn)
/// with `what`. Returns the last error.
pub async fn retry_with_backoff<T, F, Fut>(
    what: &str,
    policy: &RetryPolicy,
    op: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let attempts = policy.max_attempts.max(1);
    let mut attempt = 1;
    let r = op
        .retry(policy.builder())
        .sleep(tokio::time::sleep)
        .when(|e: &ClientError| e.is_retryable())
        .notify(|e: &ClientError, delay: Duration| {
            tracing::warn!(
                what,
                attempt,
                attempts,
                delay_ms = delay.as_millis() as u64,
                error = %e,
                "retryable Kafka error, retrying"
            );
            attempt += 1;
        })
        .await;
    if let Err(e) = &r {
        if e.is_retryable() {
            tracing::error!(what, attempts, error = %e, "Kafka operation failed, retries exhausted");
        } else {
            tracing::error!(what, attempt, error = %e, "Kafka operation failed, not retryable");
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn properties_override_tuning() {
        let mut cfg = KafkaConfig::new("127.0.0.1:1");
        cfg.properties
            .insert("fetch.wait.max.ms".into(), "100".into());
        cfg.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let c = consumer_config(&cfg, "state");
        assert_eq!(c.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("group.id"), Some("smsvoice.state"));
        assert_eq!(c.get("isolation.level"), Some("read_uncommitted"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        cfg.exactly_once = true;
        let c = consumer_config(&cfg, "");
        assert_eq!(c.get("group.id"), Some("smsvoice"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        let p = producer_config(&cfg, Some("smsvoice-0".into()));
        assert_eq!(p.get("transactional.id"), Some("smsvoice-0"));
        assert_eq!(p.get("transaction.timeout.ms"), Some("60000"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(producer_config(&cfg, None).get("transactional.id"), None);
    }

    #[test]
    fn configs_are_accepted_by_librdkafka() {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::producer::BaseProducer;
        let mut cfg = KafkaConfig::new("127.0.0.1:1");
        cfg.exactly_once = true;
        consumer_config(&cfg, "x")
            .create::<BaseConsumer>()
            .expect("consumer config");
        producer_config(&cfg, Some("t".into()))
            .create::<BaseProducer>()
            .expect("producer config");
        cfg.properties.insert("no.such.property".into(), "1".into());
        let e = consumer_config(&cfg, "x")
            .create::<BaseConsumer>()
            .map(|_| ())
            .map_err(|e| ClientError::kafka("create consumer", e))
            .expect_err("unknown property");
        assert!(!e.is_retryable(), "{e}");
    }

    #[test]
    fn classification() {
        let retryable = [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotCoordinator,
        ];
        for c in retryable {
            assert!(
                ClientError::kafka("x", KafkaError::MetadataFetch(c)).is_retryable(),
                "{c:?}"
            );
        }
        let fatal = [
            RDKafkaErrorCode::Authentication,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidConfig,
            RDKafkaErrorCode::InvalidArgument,
            RDKafkaErrorCode::ProducerFenced,
        ];
        for c in fatal {
            assert!(
                !ClientError::kafka("x", KafkaError::MetadataFetch(c)).is_retryable(),
                "{c:?}"
            );
            assert!(
                !ClientError::Broker {
                    context: "x".into(),
                    code: c
                }
                .is_retryable(),
                "{c:?}"
            );
        }
        assert!(ClientError::kafka(
            "x",
            KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut)
        )
        .is_retryable());
        assert!(!ClientError::kafka(
            "x",
            KafkaError::AdminOp(RDKafkaErrorCode::ClusterAuthorizationFailed)
        )
        .is_retryable());
        assert!(!ClientError::Config("x".into()).is_retryable());
        assert!(ClientError::Timeout {
            what: "x".into(),
            waited_ms: 1
        }
        .is_retryable());
    }

    #[test]
    fn fatal_classification_of_both_classes() {
        use RDKafkaErrorCode as C;
        // Broker down, unreachable or slow: retried, never fatal.
        let transient = [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::Resolve,
            C::OperationTimedOut,
            C::RequestTimedOut,
            C::NetworkException,
            C::BrokerNotAvailable,
            C::CoordinatorNotAvailable,
            C::NotCoordinator,
        ];
        for c in transient {
            assert_eq!(fatal_cause(c), None, "{c:?}");
            assert!(code_is_retryable(c), "{c:?}");
            let e = ClientError::kafka("x", KafkaError::Global(c));
            assert_eq!(e.fatal_cause(), None, "{c:?}");
            assert!(e.is_retryable(), "{c:?}");
        }
        let fatal = [
            (C::Authentication, FatalCause::Authentication),
            (C::SaslAuthenticationFailed, FatalCause::Authentication),
            (C::UnsupportedSASLMechanism, FatalCause::Authentication),
            (C::SSL, FatalCause::Tls),
            (C::TopicAuthorizationFailed, FatalCause::Authorization),
            (C::GroupAuthorizationFailed, FatalCause::Authorization),
            (C::ClusterAuthorizationFailed, FatalCause::Authorization),
            (
                C::TransactionalIdAuthorizationFailed,
                FatalCause::Authorization,
            ),
        ];
        for (c, cause) in fatal {
            assert_eq!(fatal_cause(c), Some(cause), "{c:?}");
            assert!(!code_is_retryable(c), "fatal {c:?} must not be retryable");
            for e in [
                KafkaError::Global(c),
                KafkaError::MessageConsumption(c),
                KafkaError::MetadataFetch(c),
                KafkaError::AdminOp(c),
            ] {
                assert_eq!(kafka_error_fatal_cause(&e), Some(cause), "{e:?}");
                let ce = ClientError::kafka("x", e);
                assert_eq!(ce.fatal_cause(), Some(cause), "{ce}");
                assert!(!ce.is_retryable(), "{ce}");
            }
            let broker = ClientError::Broker {
                context: "create topic t".into(),
                code: c,
            };
            assert_eq!(broker.fatal_cause(), Some(cause));
        }
        // An invalid configuration is fatal too (issue 12), of its own cause.
        assert_eq!(fatal_cause(C::InvalidConfig), Some(FatalCause::Config));
        assert_eq!(
            ClientError::Config("x".into()).fatal_cause(),
            Some(FatalCause::Config)
        );
        assert_eq!(
            ClientError::Timeout {
                what: "x".into(),
                waited_ms: 1
            }
            .fatal_cause(),
            None
        );
    }

    #[test]
    fn every_error_has_a_class() {
        use ErrorClass::{Abort, Fatal, Restart, Retryable};
        use RDKafkaErrorCode as C;
        let k = |e: KafkaError| ClientError::kafka("x", e);
        let cases = [
            // Broker unavailable, timeouts, throttling, coordinators moving.
            (k(KafkaError::Global(C::BrokerTransportFailure)), Retryable),
            (k(KafkaError::Global(C::AllBrokersDown)), Retryable),
            (k(KafkaError::Flush(C::OperationTimedOut)), Retryable),
            (k(KafkaError::ConsumerCommit(C::RequestTimedOut)), Retryable),
            (k(KafkaError::ConsumerCommit(C::NotCoordinator)), Retryable),
            (k(KafkaError::MessageProduction(C::QueueFull)), Retryable),
            (
                k(KafkaError::MetadataFetch(C::ThrottlingQuotaExceeded)),
                Retryable,
            ),
            (
                ClientError::Timeout {
                    what: "x".into(),
                    waited_ms: 1,
                },
                Retryable,
            ),
            // A commit during a cooperative rebalance: never fatal.
            (
                k(KafkaError::ConsumerCommit(C::RebalanceInProgress)),
                Retryable,
            ),
            (
                k(KafkaError::ConsumerCommit(C::IllegalGeneration)),
                Retryable,
            ),
            (k(KafkaError::ConsumerCommit(C::UnknownMemberId)), Retryable),
            (k(KafkaError::ConsumerCommit(C::AssignmentLost)), Retryable),
            // Records not delivered: redo the work since the last commit.
            (ClientError::Delivery("t [0]: x".into()), Abort),
            // Unexpected: a fresh attempt.
            (
                k(KafkaError::MessageProduction(C::MessageSizeTooLarge)),
                Restart,
            ),
            (k(KafkaError::Seek("x".into())), Restart),
            // Retrying cannot fix these.
            (k(KafkaError::Global(C::Authentication)), Fatal),
            (
                k(KafkaError::MessageConsumption(C::GroupAuthorizationFailed)),
                Fatal,
            ),
            (k(KafkaError::MessageProduction(C::Fenced)), Fatal),
            (k(KafkaError::MessageProduction(C::ProducerFenced)), Fatal),
            (
                k(KafkaError::MessageProduction(C::InvalidProducerEpoch)),
                Fatal,
            ),
            (k(KafkaError::Global(C::Fatal)), Fatal),
            (
                k(KafkaError::MessageConsumptionFatal(C::FencedInstanceId)),
                Fatal,
            ),
            (
                k(KafkaError::ClientCreation("ssl.ca.location failed".into())),
                Fatal,
            ),
            (ClientError::Config("x".into()), Fatal),
        ];
        for (e, want) in cases {
            assert_eq!(e.class(), want, "{e}");
        }
        for c in [
            C::RebalanceInProgress,
            C::IllegalGeneration,
            C::UnknownMemberId,
        ] {
            let e = k(KafkaError::ConsumerCommit(c));
            assert!(e.is_rebalance() && e.fatal_cause().is_none(), "{e}");
        }
        assert!(!k(KafkaError::ConsumerCommit(C::NotCoordinator)).is_rebalance());
        // A property librdkafka does not know: an invalid configuration.
        let mut cfg = KafkaConfig::new("127.0.0.1:1");
        cfg.properties.insert("no.such.property".into(), "1".into());
        let e = consumer_config(&cfg, "x")
            .create::<rdkafka::consumer::BaseConsumer>()
            .map(|_| ())
            .map_err(|e| ClientError::kafka("create consumer", e))
            .expect_err("unknown property");
        assert_eq!(
            (e.class(), e.fatal_cause()),
            (Fatal, Some(FatalCause::Config))
        );
        let f = FatalError::from_client_error(&cfg, "router consumer", &e).expect("fatal");
        assert_eq!(f.code, RDKafkaErrorCode::InvalidConfig);
        assert!(
            f.to_string()
                .starts_with("invalid Kafka configuration (router consumer): create consumer: "),
            "{f}"
        );
    }

    /// A transaction call that times out is retriable (librdkafka's own
    /// verdict): retried in place, not fatal.
    #[test]
    fn a_transaction_call_that_times_out_is_retryable() {
        use rdkafka::producer::{BaseProducer, Producer};
        let mut cfg = KafkaConfig::new("127.0.0.1:1");
        cfg.exactly_once = true;
        let p: BaseProducer = producer_config(&cfg, Some("t".into()))
            .create()
            .expect("producer");
        let e = p
            .init_transactions(Duration::from_millis(200))
            .map_err(|e| ClientError::kafka("init transactions", e))
            .expect_err("no broker");
        assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    }

    #[test]
    fn a_fenced_producer_is_fatal_and_says_why() {
        let f = FatalError::from_event(
            &KafkaConfig::new("127.0.0.1:9092"),
            "messages producer",
            &KafkaError::Global(RDKafkaErrorCode::Fatal),
            "Fatal error: Local: This instance has been fenced by a newer instance: \
             Producer fenced by newer instance",
        )
        .expect("fatal");
        assert_eq!(f.cause, FatalCause::Fenced);
        let line = f.to_string();
        assert!(
            line.starts_with("Kafka producer fenced (messages producer at 127.0.0.1:9092): "),
            "{line}"
        );
        assert!(line.contains("SMSVOICE_INSTANCE_ID"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        // Kafka 4's answer to a producer ending a transaction its
        // coordinator aborted on timeout (transactions v2).
        let ended = FatalError::from_event(
            &KafkaConfig::new("127.0.0.1:9092"),
            "router producer",
            &KafkaError::Global(RDKafkaErrorCode::Fatal),
            "Fatal error: Broker: Producer attempted a transactional operation in an \
             invalid state: Failed to end transaction: Broker: Producer attempted a \
             transactional operation in an invalid state",
        )
        .expect("fatal");
        assert_eq!(ended.cause, FatalCause::Fenced);
        let line = ended.to_string();
        assert!(
            line.starts_with("Kafka producer fenced (router producer at 127.0.0.1:9092): "),
            "{line}"
        );
        assert!(line.contains("transaction_timeout_ms"), "{line}");
        assert_eq!(
            coordinator_ended(RDKafkaErrorCode::InvalidTransactionalState),
            Some(FatalCause::Fenced)
        );
        assert_eq!(
            coordinator_ended(RDKafkaErrorCode::InvalidTransactionTimeout),
            None
        );
        // A connection lost in the SASL handshake (a broker restarting) is
        // reported as an authentication error, and is not one.
        assert!(FatalError::from_event(
            &sasl_config(),
            "restore reader",
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "GroupCoordinator: SASL SCRAM-SHA-512 mechanism handshake failed: Local: Broker \
             transport failure: broker's supported mechanisms: (n/a) (after 0ms in state DOWN)",
        )
        .is_none());
        assert!(FatalError::from_event(
            &sasl_config(),
            "restore reader",
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication \
             failed during authentication due to invalid credentials with SASL mechanism \
             SCRAM-SHA-512",
        )
        .is_some());
        // Any other fatal librdkafka error.
        let other = FatalError::from_event(
            &KafkaConfig::new("127.0.0.1:9092"),
            "router producer",
            &KafkaError::Global(RDKafkaErrorCode::Fatal),
            "Fatal error: Broker: Broker received an out of order sequence number",
        )
        .expect("fatal");
        assert_eq!(other.cause, FatalCause::Client);
        assert!(
            other
                .to_string()
                .starts_with("Kafka client failed fatally (router producer at 127.0.0.1:9092): "),
            "{other}"
        );
    }

    fn sasl_config() -> KafkaConfig {
        let mut cfg = KafkaConfig::new("127.0.0.1:9093");
        for (k, v) in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "smsvoice"),
            ("sasl.password", "hunter2"),
            ("ssl.ca.location", "/etc/kafka/ca.pem"),
        ] {
            cfg.properties.insert(k.into(), v.into());
        }
        cfg
    }

    #[test]
    fn the_watch_records_the_first_fatal_error_and_ignores_transient_ones() {
        let slot = FatalSlot::default();
        let watch = ClientWatch::new(&slot, &sasl_config(), "router consumer");
        watch.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)",
        );
        watch.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(slot.get().is_none(), "connection refused is not fatal");
        watch.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 650ms in state AUTH_REQ)",
        );
        let other = ClientWatch::new(&slot, &sasl_config(), "admin");
        assert!(other.check(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9094/bootstrap: SSL handshake failed"
        ));
        let f = slot.get().expect("recorded");
        assert_eq!(f.cause, FatalCause::Authentication);
        assert_eq!(f.code, RDKafkaErrorCode::Authentication);
        assert_eq!(f.client, "router consumer", "the first one is kept");
        assert_eq!(f.broker.as_deref(), Some("127.0.0.1:9093"));
        let line = f.to_string();
        assert_eq!(
            line,
            "Kafka authentication failed (SASL SCRAM-SHA-512 as \"smsvoice\" at 127.0.0.1:9093): \
             SASL authentication error: Authentication failed during authentication due to \
             invalid credentials with SASL mechanism SCRAM-SHA-512 (after 650ms in state AUTH_REQ)"
        );
        assert!(!line.contains("hunter2"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn fatal_lines_name_the_settings_involved() {
        let mut cfg = sasl_config();
        cfg.properties
            .insert("security.protocol".into(), "SSL".into());
        let tls = FatalError::from_event(
            &cfg,
            "admin",
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified (after 4ms in state SSL_HANDSHAKE)",
        )
        .expect("fatal");
        assert_eq!(
            tls.to_string(),
            "TLS certificate of the broker not trusted (ssl.ca.location \"/etc/kafka/ca.pem\" at 127.0.0.1:9094): \
             SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: \
             broker certificate could not be verified (after 4ms in state SSL_HANDSHAKE)"
        );
        cfg.properties.remove("ssl.ca.location");
        let tls = FatalError::from_event(
            &cfg,
            "admin",
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "ssl://[::1]:9094/1: SSL handshake failed: error:0A00010B:SSL routines::wrong version number",
        )
        .expect("fatal");
        assert_eq!(tls.broker.as_deref(), Some("[::1]:9094"));
        // The group coordinator is a logical broker: its address follows.
        let coordinator = FatalError::from_event(
            &sasl_config(),
            "router consumer",
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "GroupCoordinator: 127.0.0.1:46255: SASL authentication error: Authentication failed (after 177ms in state AUTH_REQ)",
        )
        .expect("fatal");
        assert_eq!(coordinator.broker.as_deref(), Some("127.0.0.1:46255"));
        assert_eq!(
            coordinator.detail,
            "SASL authentication error: Authentication failed (after 177ms in state AUTH_REQ)"
        );
        for (reason, broker) in [
            ("1/1 brokers are down", None),
            ("Failed to acquire SASL OAUTHBEARER token: x", None),
            (
                "sasl_ssl://b-1.example.com:9096/2: x",
                Some("b-1.example.com:9096"),
            ),
        ] {
            assert_eq!(split_broker(reason).0.as_deref(), broker, "{reason}");
        }
        assert!(
            tls.to_string()
                .starts_with("TLS handshake with the broker failed (security.protocol SSL at [::1]:9094): SSL handshake failed"),
            "{tls}"
        );
        let denied = FatalError::from_client_error(
            &sasl_config(),
            "router producer",
            &ClientError::Broker {
                context: "create topic smsvoice.spend".into(),
                code: RDKafkaErrorCode::TopicAuthorizationFailed,
            },
        )
        .expect("fatal");
        assert_eq!(
            denied.to_string(),
            "Kafka authorization failed (router producer as \"smsvoice\" at 127.0.0.1:9093): \
             create topic smsvoice.spend: broker error TopicAuthorizationFailed (Broker: Topic authorization failed)"
        );
        assert!(FatalError::from_client_error(
            &cfg,
            "x",
            &ClientError::kafka("x", KafkaError::Global(RDKafkaErrorCode::AllBrokersDown))
        )
        .is_none());
        assert!(FatalError::from_event(
            &cfg,
            "x",
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "x"
        )
        .is_none());
    }

    #[tokio::test]
    async fn the_slot_wakes_its_waiter() {
        let slot = FatalSlot::default();
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.wait().await }
        });
        let f = FatalError::from_event(
            &sasl_config(),
            "admin",
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://b:1/bootstrap: bad",
        )
        .expect("fatal");
        assert!(slot.record(f.clone()));
        assert!(!slot.record(f.clone()), "only the first is kept");
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, f);
    }

    #[test]
    fn schedule_is_exponential_and_capped() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_attempts: 7,
        };
        let ms: Vec<u128> = p.schedule().iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(u32::MAX), Duration::from_millis(1000));
        let total: Duration = RetryPolicy::default().schedule().iter().sum();
        assert_eq!(total.as_millis(), 32_700);
    }

    #[tokio::test]
    async fn retries_retryable_errors_only() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_attempts: 4,
        };
        let calls = AtomicU32::new(0);
        let r = retry_with_backoff("op", &p, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(ClientError::Timeout {
                        what: "op".into(),
                        waited_ms: 1,
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.expect("third attempt succeeds"), 2);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry_with_backoff("op", &p, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(ClientError::Config("bad".into())) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "fatal: no retry");

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry_with_backoff("op", &p, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err(ClientError::kafka(
                    "op",
                    KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown),
                ))
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4, "max_attempts");
    }
}
