//! Taking partitions over: their committed positions read, their state
//! restored, without leaving the group.
//!
//! A partition assigned to a stage, or rewound to its last commit
//! ([`super::commit::rewind`]), is restored by [`Logic::assign`] (the
//! owners read their compacted changelog, [`super::restore`]). However long
//! that takes, the stage's consumer is polled meanwhile with every
//! partition paused ([`PausedPoll`]), the restore running on a thread of its
//! own ([`restore_all`]): the member stays within `max.poll.interval.ms`,
//! rebalance callbacks run (their events are handled by the loop after the
//! restore, in order) and consumer errors are seen. Nothing is processed
//! while a restore runs, and no transaction is open across one (the
//! assignment handler commits an open transaction first, a rewind has
//! aborted it): a transaction held open through a long restore could outlive
//! `transaction_timeout_ms` and be aborted by the coordinator, which fences
//! the producer.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::paused_poll::PausedPoll;
use super::retry::in_place;
use super::stage::{kafka, Logic, LoopState, StageContext, CALL_TIMEOUT};
use super::{RuntimeError, Shared};

/// A partition's committed position: the next offset to read (`None`:
/// nothing committed).
#[derive(Clone, Debug)]
pub(super) struct Committed {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: Option<i64>,
}

/// The committed position of each of `parts` (retried in place).
pub(super) fn committed_offsets(
    shared: &Shared,
    stage: &str,
    consumer: &BaseConsumer<StageContext>,
    parts: &[(String, i32)],
) -> Result<Vec<Committed>, RuntimeError> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    let committed = in_place(shared, stage, "read committed offsets", || {
        let got = consumer
            .committed_offsets(tpl.clone(), CALL_TIMEOUT)
            .map_err(|e| kafka("read committed offsets", e))?;
        answered(&got)?;
        Ok(got)
    })?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            Committed {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                offset,
            }
        })
        .collect())
}

/// Checks every partition of a committed-offsets answer: a partition the
/// broker answered with an error (an offset commit of a transaction still
/// pending: UNSTABLE_OFFSET_COMMIT; a coordinator moving) has no offset in
/// the answer, and must never be read as "nothing committed", which would
/// restore it empty and reread it from the start. The caller retries.
pub(super) fn answered(got: &TopicPartitionList) -> Result<(), RuntimeError> {
    for e in got.elements() {
        e.error().map_err(|err| {
            kafka(
                &format!("read committed offset of {} [{}]", e.topic(), e.partition()),
                err,
            )
        })?;
    }
    Ok(())
}

/// Takes ownership of a partition whose next offset is `c.offset`: the
/// stage restores its state, the loop expects that offset next.
pub(super) fn take<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    s: &mut LoopState,
    c: Committed,
) -> Result<(), RuntimeError> {
    let Committed {
        topic,
        partition,
        offset: committed,
    } = c;
    let started = Instant::now();
    logic.assign(shared, &topic, partition, committed)?;
    super::observe::restore(logic.name(), started.elapsed());
    let key = (topic, partition);
    s.gaps.remove(&key);
    s.last_expected.remove(&key);
    match committed {
        Some(o) => {
            s.expected.insert(key.clone(), o);
        }
        None => {
            s.expected.remove(&key);
        }
    };
    s.owned.insert(key, committed);
    Ok(())
}

/// [`take`], retried in place: a retry starts the partition's restore
/// afresh (what a failed try left is dropped first), the other partitions
/// keep their state.
pub(super) fn take_retrying<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    s: &mut LoopState,
    c: Committed,
) -> Result<(), RuntimeError> {
    let stage = logic.name();
    let mut first = true;
    in_place(shared, stage, "restore partition", || {
        if !first {
            logic.revoke(&c.topic, c.partition);
        }
        first = false;
        take(shared, logic, s, c.clone())
    })
}

/// Restores the partitions of `committed` ([`take_retrying`], one after the
/// other) on a thread of its own while this thread polls the consumer with
/// every partition paused ([`PausedPoll`]): however long a restore takes,
/// the member stays in the group (`max.poll.interval.ms`), rebalance
/// callbacks run (their events are handled after it, in order) and consumer
/// errors are seen. Nothing is processed meanwhile: the loop's state belongs
/// to the restore until it ends.
pub(super) fn restore_all<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    s: &mut LoopState,
    committed: Vec<Committed>,
) -> Result<(), RuntimeError> {
    if committed.is_empty() {
        return Ok(());
    }
    let name = logic.name();
    let mut wait = PausedPoll::restore();
    let (restored, waited) = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("{name}-restore"))
            .spawn_scoped(scope, move || {
                debug_restore_delay();
                for c in committed {
                    take_retrying(shared, logic, s, c)?;
                }
                Ok::<(), RuntimeError>(())
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let e = RuntimeError::Stage(name, format!("cannot start the restore thread: {e}"));
                return (Err(e), Ok(()));
            }
        };
        let mut waited = Ok(());
        while !thread.is_finished() {
            if waited.is_ok() {
                waited = wait.tick(shared, consumer);
            } else {
                // The wait ended with an error: the restore is let finish
                // (it stops on a fatal error or a stop too), unpolled.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let restored = thread.join().unwrap_or_else(|_| {
            Err(RuntimeError::Stage(
                name,
                "the restore thread panicked".into(),
            ))
        });
        (restored, waited)
    });
    wait.finish(consumer);
    restored.and(waited)
}

/// Debug builds only (the binary the integration tests run): sleeps
/// `DEBUG_SMSVOICE_RESTORE_DELAY_MS` before each restore, so a test can make
/// a restore outlast `max.poll.interval.ms` (tests/kafka_restore.rs).
fn debug_restore_delay() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("DEBUG_SMSVOICE_RESTORE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Counts partitions being restored in [`super::Metrics::restoring`] for as
/// long as it lives (an error leaving the restore early included).
pub(super) struct Restoring<'a> {
    shared: &'a Shared,
    n: u64,
}

impl<'a> Restoring<'a> {
    pub(super) fn new(shared: &'a Shared, n: usize) -> Restoring<'a> {
        let n = n as u64;
        shared
            .metrics
            .restoring
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Restoring { shared, n }
    }
}

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        self.shared
            .metrics
            .restoring
            .fetch_sub(self.n, std::sync::atomic::Ordering::Relaxed);
    }
}
