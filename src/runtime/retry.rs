//! Retrying in the runtime's loops, on `backon`'s exponential backoff:
//!
//! * [`in_place`]: an operation of a stage (committing offsets or a
//!   transaction, a flush, an archive upload, reading committed offsets or
//!   watermarks, restoring a partition) that fails with a
//!   [retryable](ErrorClass::Retryable) error is tried again after a backoff,
//!   keeping everything the stage has restored and processed, for at most
//!   [`IN_PLACE_BUDGET`]; then the error is returned and the stage restarts.
//! * [`Restarts`]: the backoff between two restarts of a stage or of the
//!   replica reader (1 s doubling to 30 s; back to 1 s after a run that
//!   lasted [`RESTART_RESET_AFTER`]).
//!
//! Every wait ends early when the instance is asked to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, BlockingRetryable, ExponentialBackoff, ExponentialBuilder};

use super::{RuntimeError, Shared};
use crate::kafka::client::ErrorClass;

/// How long an operation is retried in place before its stage restarts.
/// It is also how long the consumer may go unpolled meanwhile, so it stays
/// well below librdkafka's `max.poll.interval.ms` (300 s), after which the
/// group would evict the member.
pub const IN_PLACE_BUDGET: Duration = Duration::from_secs(120);

/// The backoff of in-place retries: 200 ms doubling to 10 s, no jitter.
pub fn in_place_backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .without_max_times()
}

/// Runs `op`, retrying it in place (see the module documentation) while it
/// fails with a retryable error that is not a rebalance
/// ([`RuntimeError::is_rebalance`]: only polling the consumer gets through
/// one), the instance is not stopping and has no fatal error, and
/// [`IN_PLACE_BUDGET`] is not spent. Each retry is logged (warn) with
/// `stage` and `what`. Returns the last error otherwise.
pub fn in_place<T>(
    shared: &Shared,
    stage: &str,
    what: &str,
    op: impl FnMut() -> Result<T, RuntimeError>,
) -> Result<T, RuntimeError> {
    let metrics = shared.metrics.clone();
    retry_within(
        &shared.shutdown,
        in_place_backoff(),
        IN_PLACE_BUDGET,
        move || metrics.has_fatal(),
        stage,
        what,
        op,
    )
}

/// [`in_place`] with its policy spelled out (for tests): `budget` bounds
/// the time spent, operations included; `give_up` is asked before each
/// retry.
pub fn retry_within<T>(
    stop: &Arc<AtomicBool>,
    backoff: ExponentialBuilder,
    budget: Duration,
    mut give_up: impl FnMut() -> bool,
    stage: &str,
    what: &str,
    op: impl FnMut() -> Result<T, RuntimeError>,
) -> Result<T, RuntimeError> {
    let started = Instant::now();
    let sleep_stop = stop.clone();
    let mut retries = 0u32;
    op.retry(backoff)
        .sleep(move |d| sleep_unless_stopping(&sleep_stop, d))
        .when(|e: &RuntimeError| {
            e.class() == ErrorClass::Retryable
                && !e.is_rebalance()
                && started.elapsed() < budget
                && !stop.load(Ordering::SeqCst)
                && !give_up()
        })
        .notify(|e: &RuntimeError, d: Duration| {
            retries += 1;
            tracing::warn!(
                stage,
                what,
                retry = retries,
                retry_in_ms = d.as_millis() as u64,
                error = %e,
                "retrying in place (state kept)"
            );
        })
        .call()
}

/// Sleeps `d` in slices of at most 50 ms, returning early once `stop` is
/// set.
pub fn sleep_unless_stopping(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A run that lasted this long resets the restart backoff.
pub const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

/// The backoff between restarts of a loop: 1 s doubling to 30 s, for ever.
pub struct Restarts {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Default for Restarts {
    fn default() -> Self {
        Restarts::new(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(30))
                .with_factor(2.0)
                .without_max_times(),
        )
    }
}

impl Restarts {
    /// Restarts spaced by `builder`'s delays.
    pub fn new(builder: ExponentialBuilder) -> Restarts {
        Restarts {
            builder,
            delays: builder.build(),
        }
    }

    /// The wait before the next restart, after a run that lasted `ran`.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran >= RESTART_RESET_AFTER {
            self.delays = self.builder.build();
        }
        self.delays
            .next()
            .unwrap_or_else(|| Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::ClientError;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use std::collections::BTreeMap;

    fn fast() -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(4))
            .without_max_times()
    }

    fn timeout() -> RuntimeError {
        RuntimeError::Kafka(ClientError::kafka(
            "commit offsets",
            KafkaError::ConsumerCommit(RDKafkaErrorCode::RequestTimedOut),
        ))
    }

    /// The stage's restored state and the progress since the last commit,
    /// as far as the retry can touch them.
    #[derive(Debug, Default, PartialEq)]
    struct FakeStage {
        restores: u32,
        next: BTreeMap<(String, i32), i64>,
        commits: u32,
        calls: u32,
    }

    impl FakeStage {
        /// An offset commit that times out twice, then succeeds.
        fn commit(&mut self) -> Result<(), RuntimeError> {
            self.calls += 1;
            if self.calls <= 2 {
                return Err(timeout());
            }
            self.commits += 1;
            self.next.clear();
            Ok(())
        }
    }

    #[test]
    fn a_retryable_failure_is_retried_in_place_keeping_state() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = FakeStage {
            restores: 1,
            ..FakeStage::default()
        };
        s.next.insert(("t".into(), 0), 42);
        let r = retry_within(
            &stop,
            fast(),
            Duration::from_secs(10),
            || false,
            "messages",
            "commit offsets",
            || s.commit(),
        );
        assert!(r.is_ok(), "{r:?}");
        // Three calls, one commit, and no restart: the state restored once
        // is still the one in use.
        assert_eq!((s.calls, s.commits, s.restores), (3, 1, 1));
        assert!(s.next.is_empty());
    }

    #[test]
    fn other_classes_are_not_retried_in_place() {
        let stop = Arc::new(AtomicBool::new(false));
        let errors: Vec<fn() -> RuntimeError> = vec![
            // Fatal: fenced.
            || {
                RuntimeError::Kafka(ClientError::kafka(
                    "commit transaction",
                    KafkaError::MessageProduction(RDKafkaErrorCode::Fenced),
                ))
            },
            // Abort: records not delivered.
            || RuntimeError::Kafka(ClientError::Delivery("t [0]: x".into())),
            // Restart.
            || RuntimeError::Kafka(ClientError::kafka("seek", KafkaError::Seek("x".into()))),
            // Retryable, but only polling gets through a rebalance.
            || {
                RuntimeError::Kafka(ClientError::kafka(
                    "commit offsets",
                    KafkaError::ConsumerCommit(RDKafkaErrorCode::RebalanceInProgress),
                ))
            },
        ];
        for make in errors {
            let mut calls = 0;
            let r: Result<(), _> = retry_within(
                &stop,
                fast(),
                Duration::from_secs(10),
                || false,
                "messages",
                "op",
                || {
                    calls += 1;
                    Err(make())
                },
            );
            let e = r.expect_err("fails");
            assert_eq!(calls, 1, "{e}: not retried");
        }
    }

    #[test]
    fn retrying_ends_with_the_budget_a_stop_or_a_fatal_error() {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut calls = 0;
        let r: Result<(), _> = retry_within(
            &stop,
            fast(),
            Duration::from_millis(50),
            || false,
            "totals",
            "flush producer",
            || {
                calls += 1;
                Err(timeout())
            },
        );
        assert_eq!(r.expect_err("budget spent").class(), ErrorClass::Retryable);
        assert!(calls > 2, "{calls}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let mut calls = 0;
        let r: Result<(), _> = retry_within(
            &stop,
            fast(),
            Duration::from_secs(10),
            || true,
            "totals",
            "flush producer",
            || {
                calls += 1;
                Err(timeout())
            },
        );
        assert!(r.is_err());
        assert_eq!(calls, 1, "a fatal error elsewhere: no retry");

        stop.store(true, Ordering::SeqCst);
        let mut calls = 0;
        let r: Result<(), _> = retry_within(
            &stop,
            fast(),
            Duration::from_secs(10),
            || false,
            "totals",
            "flush producer",
            || {
                calls += 1;
                Err(timeout())
            },
        );
        assert!(r.is_err());
        assert_eq!(calls, 1, "stopping: no retry");
    }

    #[test]
    fn restarts_back_off_and_reset_after_a_long_run() {
        let mut r = Restarts::default();
        let short = Duration::from_secs(1);
        let waits: Vec<u64> = (0..7).map(|_| r.next(short).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(r.next(RESTART_RESET_AFTER).as_secs(), 1);
    }

    #[test]
    fn a_stop_cuts_a_sleep_short() {
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        sleep_unless_stopping(&stop, Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
