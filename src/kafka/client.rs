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

mod errors;
mod fatal;

pub use errors::*;
pub use fatal::*;

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
