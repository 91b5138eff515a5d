//! librdkafka client configurations, typed errors classified as retryable or
//! fatal, and a deterministic exponential-backoff retry helper.
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
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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
    #[error("{context}: broker error {code:?} ({code})")]
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
}

impl ClientError {
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
            ClientError::Config(_) | ClientError::MockCluster(_) => false,
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

/// Exponential backoff with a cap and no jitter: the delay before retry `n`
/// (0-based) is `min(initial_delay * 2^n, max_delay)`, so a schedule is
/// reproducible in tests and logs.
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
    /// Delay before retry `retry` (0 = the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// Every delay of the schedule, in order (`max_attempts - 1` of them).
    pub fn schedule(&self) -> Vec<Duration> {
        (0..self.max_attempts.saturating_sub(1))
            .map(|r| self.delay(r))
            .collect()
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or
/// `policy.max_attempts` attempts have failed; sleeps
/// [`RetryPolicy::delay`] between attempts and logs each retry (warn) with
/// `what`. Returns the last error.
pub async fn retry_with_backoff<T, F, Fut>(
    what: &str,
    policy: &RetryPolicy,
    mut op: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let attempts = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => {
                tracing::error!(what, attempt, error = %e, "fatal Kafka error, not retrying");
                return Err(e);
            }
            Err(e) if attempt >= attempts => {
                tracing::error!(what, attempts, error = %e, "Kafka operation failed, retries exhausted");
                return Err(e);
            }
            Err(e) => {
                let delay = policy.delay(attempt - 1);
                tracing::warn!(
                    what,
                    attempt,
                    attempts,
                    delay_ms = delay.as_millis() as u64,
                    error = %e,
                    "retryable Kafka error, retrying"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
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
