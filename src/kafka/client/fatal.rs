//! Errors fatal to the process (authentication, TLS, authorization, a
//! fenced producer, a fatal librdkafka error): their cause, the one line
//! that names it with the settings involved, and the slot where a process
//! keeps the first one.

use super::*;

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
pub(super) fn coordinator_ended(code: RDKafkaErrorCode) -> Option<FatalCause> {
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
pub(super) struct Security {
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
pub(super) fn split_broker(reason: &str) -> (Option<String>, &str) {
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
pub(super) fn is_address(s: &str) -> bool {
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
