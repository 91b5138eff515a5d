//! The commit protocol of a stage: what a commit point does, how a partition
//! is taken over (restored from its committed position) and how the work
//! since the last commit is rewound.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::produce::{send, DeliveryContext};
use super::restore::try_replay_range;
use super::retry::in_place;
use super::stage::{kafka, Logic, LoopState, StageContext, CALL_TIMEOUT};
use super::{RuntimeError, Shared};
use crate::archive::writer::{ArchiveWriter, SourceKey};
use crate::kafka::ClientError;

/// How many times a stage rewinds after an abortable error without a commit
/// in between before it restarts instead.
pub const MAX_REWINDS: u32 = 5;

/// Committed-offset metadata: `smsvoice.archived=<offset>`, the offset below
/// which the archive files of the partition are known to be uploaded.
pub const ARCHIVED_META: &str = "smsvoice.archived=";

/// A partition's committed position: the next offset to read (`None`:
/// nothing committed) and, from its metadata, the offset below which its
/// archive files are uploaded (`None`: not recorded).
#[derive(Clone, Debug)]
pub(super) struct Committed {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: Option<i64>,
    pub(super) archived: Option<i64>,
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
        consumer
            .committed_offsets(tpl.clone(), CALL_TIMEOUT)
            .map_err(|e| kafka("read committed offsets", e))
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
                archived: e
                    .metadata()
                    .strip_prefix(ARCHIVED_META)
                    .and_then(|v| v.parse().ok()),
            }
        })
        .collect())
}

/// Takes ownership of a partition whose next offset is `c.offset`: the
/// stage restores its state, the loop expects that offset next. When the
/// archive files of the last committed range may not have been uploaded
/// (`c.archived` below the committed offset: the previous owner stopped
/// between its commit and its upload), the state is restored up to
/// `c.archived` only, and the records from there to the committed offset
/// are processed again with their outputs discarded: that rebuilds the
/// rest of the state and exactly the archive rows of that range, which are
/// then sealed at the committed offset and uploaded (the same objects the
/// previous owner wrote or would have written).
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
        archived,
    } = c;
    let archiving = shared.store.is_some() && logic.archive().is_some();
    match (committed, archived) {
        (Some(end), Some(from)) if archiving && from < end => {
            logic.assign(shared, &topic, partition, Some(from))?;
            rearchive(shared, logic, &topic, partition, from, end)?;
        }
        _ => logic.assign(shared, &topic, partition, committed)?,
    }
    let key = (topic, partition);
    s.gaps.remove(&key);
    s.last_expected.remove(&key);
    match committed {
        Some(o) => {
            s.expected.insert(key.clone(), o);
            s.archived.insert(key.clone(), o);
        }
        None => {
            s.expected.remove(&key);
            s.archived.remove(&key);
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

/// Processes `topic`/`partition` from `from` to `end` again, outputs
/// discarded, and uploads the archive rows of that range (see [`take`]).
pub(super) fn rearchive<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
) -> Result<(), RuntimeError> {
    let mut discard = Vec::new();
    let n = try_replay_range(shared, topic, partition, Some(from), Some(end), |rec| {
        let r = logic.process(shared, rec, &mut discard);
        discard.clear();
        r
    })?;
    let key = SourceKey {
        source: std::sync::Arc::from(topic),
        partition: Some(partition),
    };
    let stage = logic.name();
    if let (Some(w), Some(store)) = (logic.archive(), shared.store.as_ref()) {
        w.seal_source(&key, Some(end))
            .map_err(RuntimeError::Archive)?;
        upload(shared, stage, w, store)?;
    }
    shared.metrics.rearchived.fetch_add(n, Ordering::Relaxed);
    tracing::info!(
        stage = logic.name(),
        topic,
        partition,
        from,
        end,
        records = n,
        "archive range of the last commit written again"
    );
    Ok(())
}

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
    let owned: Vec<(String, i32)> = s.owned.keys().cloned().collect();
    if owned.is_empty() {
        return Ok(());
    }
    let mut seek = TopicPartitionList::new();
    for c in committed_offsets(shared, stage, consumer, &owned)? {
        seek.add_partition_offset(
            &c.topic,
            c.partition,
            c.offset.map_or(Offset::Beginning, Offset::Offset),
        )
        .map_err(|e| kafka("seek", e))?;
        logic.revoke(&c.topic, c.partition);
        take_retrying(shared, logic, s, c)?;
    }
    consumer
        .seek_partitions(seek, CALL_TIMEOUT)
        .map_err(|e| kafka("seek", e))?;
    tracing::info!(
        stage,
        "rewound to the last commit (transaction aborted, if any)"
    );
    Ok(())
}

/// A commit point: makes the outputs durable, commits the offsets (one
/// transaction with the outputs in exactly-once mode), then uploads the
/// archive files sealed here. Every broker call and the upload are retried
/// in place ([`in_place`]). In at-least-once mode an offset commit refused
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
) -> Result<(), RuntimeError> {
    s.last_commit = Instant::now();
    if s.next.is_empty() && !s.in_txn {
        return Ok(());
    }
    let stage = logic.name();
    let mut coalesced = Vec::new();
    logic.before_commit(shared, &mut coalesced);
    for o in coalesced {
        send(shared, consumer, producer, o)?;
    }
    let archiving = shared.store.is_some() && logic.archive().is_some();
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &s.next {
        let mut e = tpl.add_partition(t, *p);
        e.set_offset(Offset::Offset(*o))
            .map_err(|e| kafka("commit", e))?;
        if archiving {
            let below = s.archived.get(&(t.clone(), *p)).copied().unwrap_or(*o);
            e.set_metadata(format!("{ARCHIVED_META}{below}"));
        }
    }
    // The archive files of what was read are sealed and uploaded only after
    // the offsets are committed, each offset carrying the point below which
    // the archive is known to be uploaded. A zombie (an instance frozen until
    // the group and the transaction coordinator replaced it) fails to commit
    // and so never uploads files that would replace its successor's; a crash
    // between commit and upload is repaired by the next owner, which writes
    // that range again ([`take`]). Sealing after the commit (nothing is
    // appended in between) keeps one sealed range per committed range: a
    // commit left for the next commit point leaves its files open, so the
    // range a new owner rewrites is always cut as the original was.
    if shared.kafka.exactly_once {
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
        in_place(shared, stage, "flush producer", || {
            producer
                .flush(CALL_TIMEOUT)
                .map_err(|e| kafka("flush producer", e))
        })?;
        let ctx = producer.context();
        if ctx.failed.swap(0, Ordering::Relaxed) > 0 {
            let first = ctx
                .first_error
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .unwrap_or_default();
            return Err(RuntimeError::Kafka(ClientError::Delivery(first)));
        }
        if tpl.count() > 0 {
            let committed = in_place(shared, stage, "commit offsets", || {
                consumer
                    .commit(&tpl, CommitMode::Sync)
                    .map_err(|e| kafka("commit offsets", e))
            });
            match committed {
                Err(e) if e.is_rebalance() => {
                    tracing::info!(
                        stage,
                        error = %e,
                        "offset commit left for the next commit point: the group is rebalancing"
                    );
                    s.reads = 0;
                    return Ok(());
                }
                r => r?,
            }
        }
    }
    s.rewinds = 0;
    if let (Some(w), Some(store)) = (logic.archive(), shared.store.as_ref()) {
        w.seal_all().map_err(RuntimeError::Archive)?;
        upload(shared, stage, w, store)?;
        for (key, o) in &s.next {
            s.archived.insert(key.clone(), *o);
        }
    }
    s.next.clear();
    s.reads = 0;
    shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Uploads the sealed archive files of `w` (retried in place: the files not
/// uploaded stay queued, so a retry resumes where the last one stopped).
pub(super) fn upload(
    shared: &Shared,
    stage: &str,
    w: &mut ArchiveWriter,
    store: &crate::archive::Store,
) -> Result<(), RuntimeError> {
    in_place(shared, stage, "upload archive files", || {
        shared
            .io
            .block_on(w.upload_sealed(store))
            .map_err(RuntimeError::Archive)
    })
}
