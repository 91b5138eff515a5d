//! Waiting without leaving the group: the consumer's partitions paused and
//! the consumer polled meanwhile.
//!
//! Two waits need it: a full producer queue (backpressure, from
//! [`super::produce::send`] and the at-least-once commit drain) and a
//! partition restore (a restore reads its changelog on a consumer of its own,
//! on another thread, while the stage's consumer is polled here:
//! [`super::stage`], "Assignment"). Polling serves rebalance callbacks
//! (their events are handled by the loop afterwards, as usual), shows
//! consumer errors, and keeps the member within `max.poll.interval.ms`
//! however long the wait lasts.
//!
//! Pausing makes librdkafka drop what it prefetched and resume from the last
//! record handed out. A record a poll still returns (of a partition assigned
//! meanwhile, so not paused) is read again: its partition is sought back to
//! it when the wait ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::produce::QUEUE_FULL_PAUSE_AFTER;
use super::stage::{kafka, PollErrors, StageContext, CALL_TIMEOUT, POLL};
use super::{RuntimeError, Shared};

/// What the wait is for (logs, and whether a stop may end it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// The producer queue is full.
    QueueFull,
    /// Partitions are being restored on another thread.
    Restore,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::QueueFull => "producer queue full",
            Purpose::Restore => "restoring partitions",
        }
    }
}

/// One wait (see the module documentation).
pub(super) struct PausedPoll {
    purpose: Purpose,
    since: Instant,
    /// How long the wait sleeps before it pauses and polls.
    pause_after: Duration,
    paused: Option<TopicPartitionList>,
    reread: BTreeMap<(String, i32), i64>,
    /// How many rebalance events were queued at the last poll.
    events_seen: Option<usize>,
    poll_errors: PollErrors,
}

impl PausedPoll {
    /// A wait on a full producer queue: the first
    /// [`QUEUE_FULL_PAUSE_AFTER`] is slept through (a full queue usually
    /// drains within milliseconds), then the consumer is paused and polled.
    pub(super) fn queue_full() -> PausedPoll {
        PausedPoll::new(Purpose::QueueFull, QUEUE_FULL_PAUSE_AFTER)
    }

    /// A wait on a restore: paused and polled from the first tick.
    pub(super) fn restore() -> PausedPoll {
        PausedPoll::new(Purpose::Restore, Duration::ZERO)
    }

    fn new(purpose: Purpose, pause_after: Duration) -> PausedPoll {
        PausedPoll {
            purpose,
            since: Instant::now(),
            pause_after,
            paused: None,
            reread: BTreeMap::new(),
            events_seen: None,
            poll_errors: PollErrors::default(),
        }
    }

    /// One turn of the wait: an error ends it (a fatal error of the
    /// instance, a fatal consumer error, or, for a full queue, still full a
    /// while after a stop was asked for; a restore is waited for until it
    /// ends, as its thread ends it on a stop).
    pub(super) fn tick(
        &mut self,
        shared: &Shared,
        consumer: &BaseConsumer<StageContext>,
    ) -> Result<(), RuntimeError> {
        if let Some(f) = shared.fatal() {
            return Err(RuntimeError::Fatal(Box::new(f)));
        }
        let waited = self.since.elapsed();
        if self.purpose == Purpose::QueueFull && waited >= CALL_TIMEOUT && shared.stopping() {
            return Err(kafka(
                "produce",
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
            ));
        }
        if waited < self.pause_after {
            std::thread::sleep(Duration::from_millis(2));
            return Ok(());
        }
        if self.paused.is_none() {
            let tpl = consumer
                .assignment()
                .map_err(|e| kafka("read assignment", e))?;
            consumer
                .pause(&tpl)
                .map_err(|e| kafka("pause partitions", e))?;
            tracing::debug!(
                partitions = tpl.count(),
                "{}: consumer paused",
                self.purpose.as_str()
            );
            self.paused = Some(tpl);
        }
        let seen = *self
            .events_seen
            .get_or_insert_with(|| consumer.context().queued_len());
        let polled = consumer.poll(POLL);
        // A record read before a revocation of its partition is not sought
        // back to: if the partition was assigned again, librdkafka reads it
        // from the offset committed then (a new owner may have committed
        // past the record meanwhile), and a record read after that (its
        // first) is sought back to as usual.
        let (revoked, now) = consumer.context().revoked_since(seen);
        self.events_seen = Some(now);
        for k in &revoked {
            self.reread.remove(k);
        }
        match polled {
            None => {}
            Some(Ok(m)) => {
                let o = self
                    .reread
                    .entry((m.topic().to_owned(), m.partition()))
                    .or_insert(m.offset());
                *o = (*o).min(m.offset());
            }
            Some(Err(e)) => {
                self.poll_errors
                    .check(shared, self.purpose.as_str(), "consume", e, true)?
            }
        }
        Ok(())
    }

    /// Resumes what was paused and seeks back to the records read meanwhile.
    /// Failures are logged only: a partition revoked meanwhile can be
    /// neither resumed nor sought, and needs neither.
    pub(super) fn finish(self, consumer: &BaseConsumer<StageContext>) {
        let what = self.purpose.as_str();
        if let Some(tpl) = &self.paused {
            if let Err(e) = consumer.resume(tpl) {
                tracing::debug!(error = %e, "resume after {what}");
            }
        }
        for ((t, p), o) in self.reread {
            if let Err(e) = consumer.seek(&t, p, Offset::Offset(o), CALL_TIMEOUT) {
                tracing::debug!(topic = t, partition = p, error = %e, "seek back after {what}");
            }
        }
    }
}

/// Debug builds only (the binary the integration tests run): while the file
/// `DEBUG_SMSVOICE_STALL_FILE` names exists (30 s at most), a transactional
/// commit point first waits as its sends would on a full producer queue
/// (the consumer paused and polled), so a test can make a rebalance land in
/// a wait inside a transaction (tests/kafka_restore.rs).
pub(super) fn debug_stall(
    shared: &Shared,
    consumer: &BaseConsumer<StageContext>,
) -> Result<(), RuntimeError> {
    #[cfg(debug_assertions)]
    {
        use std::sync::OnceLock;
        static STALL: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
        let stall = STALL.get_or_init(|| {
            std::env::var_os("DEBUG_SMSVOICE_STALL_FILE").map(std::path::PathBuf::from)
        });
        let Some(file) = stall else {
            return Ok(());
        };
        if !file.exists() {
            return Ok(());
        }
        let started = Instant::now();
        let mut w = PausedPoll::queue_full();
        let waited = loop {
            if !file.exists() || started.elapsed() >= Duration::from_secs(30) || shared.stopping() {
                break Ok(());
            }
            if let Err(e) = w.tick(shared, consumer) {
                break Err(e);
            }
        };
        w.finish(consumer);
        waited?;
    }
    #[cfg(not(debug_assertions))]
    let _ = (shared, consumer);
    Ok(())
}
