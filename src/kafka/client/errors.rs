//! Why a Kafka operation failed ([`ClientError`]) and what to do about it
//! ([`ErrorClass`]): retry, abort the transaction, restart, stop.

use super::*;

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
