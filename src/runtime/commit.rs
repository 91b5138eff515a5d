//! The commit protocol of a stage: what a commit point does and how the work
//! since the last commit is rewound (taking a partition over, its state
//! restored from its committed position, is [`super::takeover`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::paused_poll::PausedPoll;
use super::produce::{send, DeliveryContext, EPOCHS};
use super::retry::in_place;
use super::stage::{kafka, Logic, LoopState, PendingCommit, StageContext, CALL_TIMEOUT};
use super::takeover::{committed_offsets, restore_all};
use super::{RuntimeError, Shared};
use crate::kafka::ClientError;

/// How many times a stage rewinds after an abortable error without a commit
/// in between before it restarts instead.
pub const MAX_REWINDS: u32 = 5;

/// Aborts the open transaction (if any) and rewinds every owned partition to
/// its last commit, rebuilding its state.
pub(super) fn rewind<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
) -> Result<(), RuntimeError> {
    shared.metrics.rewinds.fetch_add(1, Ordering::Relaxed);
    let stage = logic.name();
    if s.in_txn {
        in_place(shared, stage, "abort transaction", || {
            producer
                .abort_transaction(CALL_TIMEOUT)
                .map_err(|e| kafka("abort transaction", e))
        })?;
        s.in_txn = false;
    }
    s.next.clear();
    s.reads = 0;
    // Nothing of the aborted work is committed; stray reports of its
    // records only count down slots of epochs that no longer exist.
    s.pending.clear();
    s.epoch += 1;
    let owned: Vec<(String, i32)> = s.owned.keys().cloned().collect();
    if owned.is_empty() {
        return Ok(());
    }
    let mut seek = TopicPartitionList::new();
    let committed = committed_offsets(shared, stage, consumer, &owned)?;
    for c in &committed {
        seek.add_partition_offset(
            &c.topic,
            c.partition,
            c.offset.map_or(Offset::Beginning, Offset::Offset),
        )
        .map_err(|e| kafka("seek", e))?;
        logic.revoke(&c.topic, c.partition);
    }
    // No transaction is open (aborted above): the restore may poll.
    restore_all(shared, logic, consumer, s, committed)?;
    // A partition with a rebalance event not yet handled (revoked, before
    // this rewind or while the restore polled, and perhaps assigned again)
    // is not sought: the offset read above may be stale by now (a new
    // owner may have committed since), and its events are handled next
    // (a revocation drops it; an assignment restores it from the offset
    // committed then, where librdkafka starts reading it).
    let unsettled = consumer.context().queued(false);
    let mut settled = TopicPartitionList::new();
    for e in seek.elements() {
        if !unsettled.contains(&(e.topic().to_owned(), e.partition())) {
            settled
                .add_partition_offset(e.topic(), e.partition(), e.offset())
                .map_err(|e| kafka("seek", e))?;
        }
    }
    // Only the call's own failure counts (a partition revoked meanwhile
    // and not yet reported cannot be sought, and needs not be).
    consumer
        .seek_partitions(settled, CALL_TIMEOUT)
        .map_err(|e| kafka("seek", e))?;
    tracing::info!(
        stage,
        "rewound to the last commit (transaction aborted, if any)"
    );
    Ok(())
}

/// A commit point: makes the outputs durable, then commits the offsets (one
/// transaction with the outputs in exactly-once mode). Every broker call is
/// retried in place ([`in_place`]). The archive is written by its own stage
/// from the output topics ([`super::archive_sink`]), so no upload happens
/// here. In at-least-once mode an offset commit refused
/// because the group is rebalancing is left for the next commit point (the
/// outputs are durable; the offsets of partitions still owned after the
/// rebalance are committed then, those of revoked ones are dropped by the
/// revocation).
pub(super) fn commit<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
    last: bool,
) -> Result<(), RuntimeError> {
    s.last_commit = Instant::now();
    let stage = logic.name();
    let started = s.last_commit;
    let r = commit_point(shared, logic, consumer, producer, s, last);
    super::observe::commit(stage, started.elapsed());
    r
}

fn commit_point<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
    last: bool,
) -> Result<(), RuntimeError> {
    let stage = logic.name();
    if s.next.is_empty() && !s.in_txn {
        if last && !s.pending.is_empty() {
            in_place(shared, stage, "flush producer", || {
                producer
                    .flush(CALL_TIMEOUT)
                    .map_err(|e| kafka("flush producer", e))
            })?;
            return drain(shared, stage, consumer, producer, s, Wait::All);
        }
        return Ok(());
    }
    if logic.transactional(shared) {
        super::paused_poll::debug_stall(shared, consumer)?;
    }
    let mut coalesced = Vec::new();
    logic.before_commit(shared, &mut coalesced);
    for o in coalesced {
        send(shared, consumer, producer, o, s.epoch)?;
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &s.next {
        let mut e = tpl.add_partition(t, *p);
        e.set_offset(Offset::Offset(*o))
            .map_err(|e| kafka("commit", e))?;
    }
    if logic.transactional(shared) {
        // A wait since the last poll (a full producer queue, in `send` or
        // just above) may have polled the consumer through a revocation,
        // recorded but not yet handled. Once librdkafka has given a
        // partition up, the member may rejoin with a new generation before
        // this commit, and the broker would accept offsets of a partition
        // whose new owner already reads it from the last commit: the
        // records in between would be committed twice (KIP-447 fences only
        // a stale generation). So such a transaction is aborted instead.
        let revoked = consumer.context().queued(true);
        let given_up: Vec<(String, i32)> = s
            .next
            .keys()
            .filter(|k| revoked.contains(*k))
            .cloned()
            .collect();
        if !given_up.is_empty() {
            return Err(RuntimeError::RevokedInTransaction {
                stage,
                partitions: given_up,
            });
        }
        let meta = consumer
            .group_metadata()
            .ok_or_else(|| RuntimeError::Stage(stage, "no group metadata".into()))?;
        if tpl.count() > 0 {
            in_place(shared, stage, "send offsets to transaction", || {
                producer
                    .send_offsets_to_transaction(&tpl, &meta, CALL_TIMEOUT)
                    .map_err(|e| kafka("send offsets to transaction", e))
            })?;
        }
        in_place(shared, stage, "commit transaction", || {
            producer
                .commit_transaction(CALL_TIMEOUT)
                .map_err(|e| kafka("commit transaction", e))
        })?;
        s.in_txn = false;
    } else {
        // At-least-once: the epoch closes with the offsets it covers and the
        // loop goes on reading; they are committed once every record of the
        // epoch is acknowledged ([`drain`]). The last commit point (a stop)
        // flushes and waits for all of them.
        if !s.next.is_empty() {
            s.pending.push_back(PendingCommit {
                epoch: s.epoch,
                offsets: std::mem::take(&mut s.next),
                reads: s.reads,
            });
        }
        s.epoch += 1;
        s.reads = 0;
        if last {
            in_place(shared, stage, "flush producer", || {
                producer
                    .flush(CALL_TIMEOUT)
                    .map_err(|e| kafka("flush producer", e))
            })?;
        }
        let wait = if last {
            Wait::All
        } else {
            Wait::Bounded {
                // An epoch's slot is reused only once the epoch is committed.
                epochs: EPOCHS - 2,
                reads: shared.kafka.max_in_flight_records,
            }
        };
        return drain(shared, stage, consumer, producer, s, wait);
    }
    s.rewinds = 0;
    s.next.clear();
    s.reads = 0;
    shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// How long [`drain`] waits for acknowledgements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// Not at all: commit what is acknowledged.
    No,
    /// Until at most `epochs` epochs with at most `reads` input records in
    /// all are left waiting (memory stays bounded by
    /// `max_in_flight_records`, the consumer paused beyond it).
    Bounded {
        /// Epochs.
        epochs: usize,
        /// Input records.
        reads: usize,
    },
    /// Until every epoch is committed (a stop): the commit is synchronous.
    All,
}

/// At-least-once: commits the offsets of the oldest closed epochs whose
/// records are all acknowledged (merged into one commit: offsets only grow),
/// in order, stopping at the first epoch still waiting. With a [`Wait`] it
/// first waits, pausing the consumer and polling it meanwhile
/// ([`PausedPoll`]), while more is waiting than it allows. Commits are
/// asynchronous except the last (a failed asynchronous commit is superseded
/// by the next one). A failed delivery voids every epoch not yet committed:
/// the error is `Abort` class, and the stage rewinds to the last commit.
pub(super) fn drain(
    shared: &Shared,
    stage: &'static str,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
    wait_for: Wait,
) -> Result<(), RuntimeError> {
    let ctx = producer.context();
    let mut ready: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut last_done = 0;
    let mut wait: Option<PausedPoll> = None;
    let result = loop {
        let Some(front) = s.pending.front() else {
            break Ok(());
        };
        if ctx.outstanding(front.epoch) > 0 {
            let too_much = match wait_for {
                Wait::No => false,
                Wait::All => true,
                Wait::Bounded { epochs, reads } => {
                    s.pending.len() > epochs
                        || s.pending.iter().map(|p| p.reads).sum::<usize>() > reads
                }
            };
            if !too_much {
                break Ok(());
            }
            let w = wait.get_or_insert_with(PausedPoll::queue_full);
            if let Err(e) = w.tick(shared, consumer) {
                break Err(e);
            }
            continue;
        }
        if let Some(first) = ctx.take_failure() {
            s.pending.clear();
            break Err(RuntimeError::Kafka(ClientError::Delivery(first)));
        }
        if let Some(done) = s.pending.pop_front() {
            last_done = done.epoch;
            ready.extend(done.offsets);
        }
    };
    if let Some(w) = wait {
        w.finish(consumer);
    }
    result?;
    if ready.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &ready {
        tpl.add_partition(t, *p)
            .set_offset(Offset::Offset(*o))
            .map_err(|e| kafka("commit", e))?;
    }
    let mode = if wait_for == Wait::All {
        CommitMode::Sync
    } else {
        CommitMode::Async
    };
    let committed = in_place(shared, stage, "commit offsets", || {
        consumer
            .commit(&tpl, mode)
            .map_err(|e| kafka("commit offsets", e))
    });
    match committed {
        Err(e) if e.is_rebalance() => {
            tracing::info!(
                stage,
                error = %e,
                "offset commit left for the next commit point: the group is rebalancing"
            );
            // Put them back: the next drain commits them with what follows.
            s.pending.push_front(PendingCommit {
                epoch: last_done,
                offsets: ready,
                reads: 0,
            });
            return Ok(());
        }
        r => r?,
    }
    if wait_for != Wait::All {
        s.unconfirmed.extend(ready);
    } else {
        s.unconfirmed.clear();
    }
    s.rewinds = 0;
    shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// At-least-once, on an idle stage: commits again, synchronously, the
/// offsets last handed to asynchronous commits ([`LoopState::unconfirmed`]),
/// so that an asynchronous commit lost in a rebalance does not leave the
/// last records of an idle stream uncommitted. A rebalance in progress
/// leaves them for the next idle interval.
pub(super) fn confirm(
    shared: &Shared,
    stage: &'static str,
    consumer: &BaseConsumer<StageContext>,
    s: &mut LoopState,
) -> Result<(), RuntimeError> {
    s.last_commit = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &s.unconfirmed {
        tpl.add_partition(t, *p)
            .set_offset(Offset::Offset(*o))
            .map_err(|e| kafka("commit", e))?;
    }
    let committed = in_place(shared, stage, "confirm offsets", || {
        consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| kafka("confirm offsets", e))
    });
    match committed {
        Err(e) if e.is_rebalance() => return Ok(()),
        r => r?,
    }
    s.unconfirmed.clear();
    shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
