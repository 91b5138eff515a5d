//! Reading a partition from its start to rebuild state.
//!
//! A partition is read by a consumer of its own (assigned, no group, never
//! committing), with the isolation level of the run (`read_committed` in
//! exactly-once mode, so aborted records are never part of restored state).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use std::sync::Arc;

use super::gaps::GapProbe;
use super::retry::in_place;
use super::stage::{InRecord, PollErrors};
use super::{RuntimeError, Shared};
use crate::kafka::client::ClientWatch;
use crate::kafka::{consumer_config, ClientError};
use crate::model::Provenance;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the reader may see no progress before it gives up (the attempt
/// then restarts from scratch).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

fn kafka(context: &str, e: rdkafka::error::KafkaError) -> RuntimeError {
    RuntimeError::Kafka(ClientError::kafka(context.to_owned(), e))
}

/// [`replay`] of `topic`/`partition` up to `until` calling `f` with each
/// record's value and its position as the record's provenance.
pub fn replay_values(
    shared: &Shared,
    topic: &Arc<str>,
    partition: i32,
    until: i64,
    mut f: impl FnMut(&[u8], &Provenance),
) -> Result<u64, RuntimeError> {
    replay(shared, topic, partition, Some(until), |rec| {
        let at = Provenance {
            source: topic.clone(),
            partition: Some(rec.partition),
            offset: rec.offset,
            sub: 0,
        };
        f(rec.value, &at);
    })
}

/// Reads `topic`/`partition` from its first retained record up to `until`
/// (exclusive; `None`: up to the end as of now), calling `f` on each record.
/// Returns the number of records read. Logs a warning when the log no
/// longer starts at offset 0 (retention deleted records: the state rebuilt
/// from it may be incomplete).
pub fn replay(
    shared: &Shared,
    topic: &str,
    partition: i32,
    until: Option<i64>,
    f: impl FnMut(&InRecord<'_>),
) -> Result<u64, RuntimeError> {
    replay_range(shared, topic, partition, None, until, f)
}

/// [`replay`] from offset `from` (`None`: the first retained record).
pub fn replay_range(
    shared: &Shared,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    until: Option<i64>,
    mut f: impl FnMut(&InRecord<'_>),
) -> Result<u64, RuntimeError> {
    try_replay_range(shared, topic, partition, from, until, |rec| {
        f(rec);
        Ok(())
    })
}

/// [`replay`] with a fallible `f`: the first error `f` returns (an internal
/// record that cannot be read, say) ends the replay and is returned.
pub fn try_replay(
    shared: &Shared,
    topic: &str,
    partition: i32,
    until: Option<i64>,
    f: impl FnMut(&InRecord<'_>) -> Result<(), RuntimeError>,
) -> Result<u64, RuntimeError> {
    try_replay_range(shared, topic, partition, None, until, f)
}

/// [`replay_range`] with a fallible `f` (see [`try_replay`]). The broker
/// calls are retried in place ([`in_place`]); a fatal consumer error ends
/// the replay.
pub fn try_replay_range(
    shared: &Shared,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    until: Option<i64>,
    f: impl FnMut(&InRecord<'_>) -> Result<(), RuntimeError>,
) -> Result<u64, RuntimeError> {
    read_range(shared, topic, partition, from, until, false, f)
}

/// `from` for [`try_replay_range`]: the first retained record, without the
/// warning about a log that no longer starts at offset 0 (for a caller that
/// needs only what retention kept).
pub const RETAINED: i64 = -1;

/// [`try_replay`] of a topic written only in transactions (a state
/// changelog), with `isolation.level=read_committed` whatever the run's
/// mode: what an aborted transaction wrote is never read back. Reads up to
/// the end as of now (the last stable offset: an open transaction of a
/// previous owner is waited for, its records read if it commits).
pub fn try_replay_committed(
    shared: &Shared,
    topic: &str,
    partition: i32,
    f: impl FnMut(&InRecord<'_>) -> Result<(), RuntimeError>,
) -> Result<u64, RuntimeError> {
    read_range(shared, topic, partition, None, None, true, f)
}

fn read_range(
    shared: &Shared,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    until: Option<i64>,
    read_committed: bool,
    mut f: impl FnMut(&InRecord<'_>) -> Result<(), RuntimeError>,
) -> Result<u64, RuntimeError> {
    let started = Instant::now();
    let mut cfg = consumer_config(&shared.kafka, "restore");
    // No group membership, no commits: a plain reader.
    cfg.set("enable.auto.commit", "false");
    if read_committed {
        cfg.set("isolation.level", "read_committed");
    }
    let consumer: BaseConsumer<ClientWatch> = cfg
        .create_with_context(shared.watch("restore reader"))
        .map_err(|e| kafka("create restore consumer", e))?;
    let (low, high) = in_place(shared, "restore", "fetch watermarks", || {
        consumer
            .fetch_watermarks(topic, partition, CALL_TIMEOUT)
            .map_err(|e| kafka("fetch watermarks", e))
    })?;
    // A committed offset is a fact about the log: read up to it even when the
    // broker's reported high watermark lags behind it (seen with tansu).
    if let Some(u) = until {
        if high < u {
            tracing::warn!(
                topic,
                partition,
                high,
                committed = u,
                "high watermark below the committed offset: reading up to the committed offset"
            );
        }
    }
    let end = until.unwrap_or(high);
    // (A compacted changelog may start anywhere: only its latest records
    // matter.)
    if !read_committed && low > 0 && end > 0 && from.is_none_or(|f| f != RETAINED && f < low) {
        tracing::warn!(
            topic,
            partition,
            first_retained = low,
            "the log no longer starts at offset 0: state rebuilt from it may be incomplete"
        );
    }
    let low = from.map_or(low, |f| f.max(low));
    if end <= low {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .map_err(|e| kafka("assign", e))?;
    consumer.assign(&tpl).map_err(|e| kafka("assign", e))?;
    let mut n = 0u64;
    let mut last_progress = Instant::now();
    // As in the stage loop, with `reread_offset_gaps` (brokers that skip
    // records): a gap is believed only once the broker has been seen
    // reading through it (see `gaps::in_sequence`). Otherwise a gap is
    // real (transaction markers, compaction) and costs nothing.
    let mut expected = low;
    let mut probe: Option<GapProbe> = None;
    let mut poll_errors = PollErrors::default();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let offset = m.offset();
                if offset < expected {
                    if let Some(p) = probe.as_mut() {
                        p.read_below = true;
                    }
                    continue;
                }
                if offset > expected && shared.kafka.reread_offset_gaps {
                    if let Some(from) = GapProbe::advance(&mut probe, expected) {
                        consumer
                            .seek(topic, partition, Offset::Offset(from), CALL_TIMEOUT)
                            .map_err(|e| kafka("seek", e))?;
                        continue;
                    }
                }
                probe = None;
                expected = offset + 1;
                if m.offset() >= end {
                    break;
                }
                f(&InRecord::of(&m))?;
                n += 1;
                if m.offset() + 1 >= end {
                    break;
                }
            }
            Some(Err(e)) => poll_errors.check(shared, "restore", "restore read", e, false)?,
            None => {
                // Transaction markers take offsets too: the position may
                // reach the end without a record at end - 1.
                if let Ok(pos) = consumer.position() {
                    let at = pos
                        .find_partition(topic, partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                    if at.is_some_and(|o| o >= end) {
                        break;
                    }
                }
                if last_progress.elapsed() > STALL_TIMEOUT {
                    return Err(RuntimeError::Kafka(ClientError::Timeout {
                        what: format!("restore {topic} [{partition}] up to {end}"),
                        waited_ms: STALL_TIMEOUT.as_millis() as u64,
                    }));
                }
            }
        }
    }
    let ms = started.elapsed().as_millis() as u64;
    shared
        .metrics
        .restored_records
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    shared
        .metrics
        .restore_ms
        .fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        topic,
        partition,
        records = n,
        low,
        high,
        end,
        ms,
        "state restored"
    );
    Ok(n)
}
