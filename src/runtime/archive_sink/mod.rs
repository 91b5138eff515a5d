//! The archive sink: the stage that writes the Parquet archive in Kafka mode.
//!
//! It reads the public output topics the pipeline writes anyway (enriched
//! events, enriched inbound messages, dead letters; its own consumer group
//! `<group>.archive`, always `read_committed`) and writes the
//! three archive tables, the Kafka Connect S3 sink way:
//!
//! * **Files by output position.** Per output partition, the records are
//!   collected in a *segment*: one open file per table and partition
//!   directory (date, channel), each named after the output offset of its
//!   first row (`<topic>+<partition>+<first offset>.parquet`,
//!   [`crate::archive::naming`]). The rows carry the original input
//!   position (`recordId`, the dead-letter headers), the same column values
//!   the stages wrote when they archived themselves (see
//!   [`super::records`] for the headers that carry the rest).
//! * **Rolling by [`RollingPolicy`]**, deterministically: a segment is cut
//!   after the record that fills a file (`max_rows`, `max_bytes`: counts
//!   and encoded sizes are functions of the records since the segment
//!   start), before the first record whose Kafka timestamp is `max_age` or
//!   more after the segment's first record (timestamps are fixed in the
//!   log), or, for a quiet partition, by the wall clock once its first
//!   record is `max_age` old **and** the partition has been read to its
//!   high watermark. Files are cut between records only. A replay from the
//!   segment start therefore cuts at the same record, or, only where the
//!   wall clock cut a quiet partition, later (a replay cannot be at the
//!   high watermark before the original cut point, which was below it).
//! * **Offsets only for durable files.** The committed offset of an output
//!   partition is always the start of its oldest segment not yet durable.
//!   Before a segment's files are uploaded, the commit records the cut in
//!   its metadata (`smsvoice.archive=1 cut=<end> ...`, the offset stays at
//!   the segment start); once every file is durable the offset moves to the
//!   segment end. Uploads of one partition are strictly in order: the next
//!   segment's upload starts only once the previous one is committed. An
//!   owner that takes a partition over replays from the committed offset
//!   and, when a cut is recorded, cuts there exactly, so a crash between
//!   cut and commit rewrites the very same objects. An instance that lost
//!   its partition without knowing it (a zombie) cannot record a cut (the
//!   group rejects its commit), so it never starts an upload its successor
//!   would not repeat byte for byte. See [`crate::archive`] for the whole
//!   argument.
//! * **Uploads off the loop.** A cut segment's files are uploaded by a task
//!   on the shared tokio runtime while the loop keeps reading; the offsets
//!   are committed when the task reports back. Closed files waiting are
//!   bounded by `[archive.uploads]`: beyond it the partition is paused and
//!   the consumer keeps polling. Retryable store errors are retried by the
//!   task with `[archive.retry]`'s backoff (one store call per attempt: the
//!   S3 client's own retries per request stay as configured, nothing else
//!   is layered on top) for as long as they last; a refusal (credentials,
//!   access denied, no such bucket) stops the instance with exit code 4.
//! * **Repeats dropped.** In at-least-once mode a stage that restarts from
//!   its last commit writes some outputs again. Every output record names
//!   the position the stage consumed its payload at ([`headers::AT`]); a
//!   stage reads each partition in order and its producer is idempotent, so
//!   a repeat is exactly a record whose position is at or below the highest
//!   one already archived for that stage partition. The sink keeps those
//!   highest positions per output partition ([`Marks`]) and commits them in
//!   the offset metadata with every commit, so a new owner starts with the
//!   marks as of the committed offset and drops the same repeats.
//!
//! Here: the loop, segments and rolling. `marks`: the committed-offset
//! metadata (marks, recorded cut) and record ids. `rows`: an output record
//! as an archive row. `durable`: cutting, uploading and committing durable
//! segments. `assignment`: partitions taken over and given up.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use super::records::headers;
use super::retry::{self, in_place};
use super::stage::{kafka, Event, PollErrors, StageContext, CALL_TIMEOUT, IDLE_CHECK, POLL};
use super::{RuntimeError, Shared};
use crate::archive::rows::DeadLetterParts;
use crate::archive::writer::{now_ms, ArchiveError, ArchiveWriter, SealedFile, SourceKey};
use crate::archive::{RollingPolicy, Store, StoreError};
use crate::decode::{decode_delivery_with, decode_inbound_with, TimeBound};
use crate::enrich::{EnrichedEvent, EnrichedInbound, EventEnrichment, InboundEnrichment};
use crate::kafka::client::ErrorClass;
use crate::kafka::consumer_config;
use crate::limits::Limits;
use crate::model::{Provenance, StatusClass};
use crate::money::Usd;
use crate::optout::InboundAction;

mod assignment;
mod durable;
mod marks;
mod rows;

use marks::META_MAX_BYTES;
pub use marks::{decode_meta, encode_meta, parse_record_id, AtPos, Marks, META_PREFIX};
use rows::*;
pub use rows::{event_row, inbound_row, sink_limits};

/// Consumer group suffix of the sink: `<group_id>.archive`.
pub const GROUP_SUFFIX: &str = "archive";

/// Wait before a commit that failed with a retryable error is tried again
/// (the loop keeps polling meanwhile).
const COMMIT_RETRY: Duration = Duration::from_millis(500);

/// A cut segment of one output partition.
struct Sealed {
    start: i64,
    end: i64,
    files: Vec<SealedFile>,
    /// The marks as of `end`.
    marks: Marks,
    bytes: u64,
}

/// An owned output partition.
struct Part {
    topic: Arc<str>,
    partition: i32,
    /// Assignment generation: results of uploads started for an earlier
    /// assignment are ignored.
    gen: u64,
    /// Offset below which every row is durable (`None`: nothing yet).
    durable: Option<i64>,
    /// The marks as of `durable`.
    durable_marks: Marks,
    /// What is committed: offset and cut.
    committed: Option<(i64, Option<i64>)>,
    commit_retry_at: Option<Instant>,
    /// The marks of everything read.
    marks: Marks,
    /// The cut a previous owner recorded: the open segment ends there.
    forced_end: Option<i64>,
    open_start: Option<i64>,
    open_first_ts: Option<i64>,
    /// Last offset read in this assignment.
    last: Option<i64>,
    queue: VecDeque<Sealed>,
    uploading: bool,
    paused: bool,
}

impl Part {
    fn key(&self) -> SourceKey {
        SourceKey {
            source: self.topic.clone(),
            partition: Some(self.partition),
        }
    }

    /// The commit this partition wants: the durable offset (or the start of
    /// its first segment) and the end of the segment to upload next (or the
    /// cut a previous owner recorded, until it is reached: it stays
    /// recorded).
    fn desired(&self) -> Option<(i64, Option<i64>)> {
        let head = self.queue.front();
        let offset = self.durable.or(head.map(|h| h.start))?;
        Some((offset, head.map(|h| h.end).or(self.forced_end)))
    }

    fn queued_bytes(&self) -> u64 {
        self.queue.iter().map(|s| s.bytes).sum()
    }

    fn settled(&self) -> bool {
        self.queue.is_empty() && !self.uploading && self.desired() == self.committed
    }
}

/// What an upload task reports.
struct Done {
    topic: Arc<str>,
    partition: i32,
    gen: u64,
    result: Result<(), (String, StoreError)>,
}

/// Which table the records of a topic go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Events,
    Inbound,
    Dead,
}

struct Sink<'s> {
    shared: &'s Shared,
    store: Arc<Store>,
    policy: RollingPolicy,
    limits: Limits,
    topics: [(String, Kind); 3],
    writer: ArchiveWriter,
    parts: BTreeMap<(Arc<str>, i32), Part>,
    gen: u64,
    tx: mpsc::Sender<Done>,
    rx: mpsc::Receiver<Done>,
    /// Shutdown asked: read every partition to its high watermark until
    /// this deadline, then drain.
    catching_up: Option<Instant>,
    draining: Option<Instant>,
    last_check: Instant,
    poll_errors: PollErrors,
}

/// Runs the archive sink until shutdown, restarting it after failures that
/// are not fatal (like the other stages: [`super::stage::run`]).
pub fn run(shared: &Shared) -> Result<(), RuntimeError> {
    let Some(store) = shared.store.clone() else {
        return Ok(());
    };
    let mut restarts = retry::Restarts::default();
    loop {
        let started = Instant::now();
        let Err(e) = attempt(shared, &store) else {
            return Ok(());
        };
        if shared.fatal_stop("archive", &e) || e.class() == ErrorClass::Fatal {
            return Err(e);
        }
        if shared.stopping() {
            tracing::warn!(stage = "archive", error = %e, "failed while stopping");
            return Ok(());
        }
        let wait = restarts.next(started.elapsed());
        tracing::warn!(
            stage = "archive",
            error = %e,
            class = ?e.class(),
            retry_in_ms = wait.as_millis() as u64,
            "stage failed; restarting from the last commit"
        );
        retry::sleep_unless_stopping(&shared.shutdown, wait);
    }
}

fn attempt(shared: &Shared, store: &Arc<Store>) -> Result<(), RuntimeError> {
    let k = &shared.kafka;
    // Always `read_committed`: in exactly-once mode for the guarantee, and
    // in at-least-once mode too, where a stage may still write its outputs
    // in transactions (a consumer of non-transactional topics reads the
    // same either way).
    let mut config = consumer_config(k, GROUP_SUFFIX);
    config.set("isolation.level", "read_committed");
    let consumer: BaseConsumer<StageContext> = config
        .create_with_context(StageContext {
            events: Mutex::new(Vec::new()),
            watch: shared.watch("archive consumer"),
        })
        .map_err(|e| kafka("create consumer", e))?;
    let o = &k.output_topics;
    let topics = [
        (o.enriched_events.clone(), Kind::Events),
        (o.enriched_inbound.clone(), Kind::Inbound),
        (o.dead_letters.clone(), Kind::Dead),
    ];
    let refs: Vec<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
    consumer
        .subscribe(&refs)
        .map_err(|e| kafka("subscribe", e))?;
    let (tx, rx) = mpsc::channel();
    let cfg = &shared.cfg.archive;
    let mut sink = Sink {
        shared,
        store: store.clone(),
        policy: cfg.rolling,
        limits: sink_limits(shared),
        topics,
        writer: ArchiveWriter::new(cfg.rolling, cfg.retry),
        parts: BTreeMap::new(),
        gen: 0,
        tx,
        rx,
        catching_up: None,
        draining: None,
        last_check: Instant::now(),
        poll_errors: PollErrors::default(),
    };
    let r = sink.drive(&consumer);
    consumer.unsubscribe();
    r
}

impl Sink<'_> {
    fn drive(&mut self, consumer: &BaseConsumer<StageContext>) -> Result<(), RuntimeError> {
        let mut last_beat: Option<Instant> = None;
        loop {
            if last_beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.shared.metrics.beat("archive");
                last_beat = Some(Instant::now());
            }
            if self.shared.has_fatal() {
                return Ok(());
            }
            if self.shared.stopping() && self.catching_up.is_none() && self.draining.is_none() {
                // First read what the stages wrote before they stopped.
                let grace = Duration::from_millis(self.shared.kafka.shutdown_grace_ms);
                self.catching_up = Some(Instant::now() + grace.mul_f64(0.4));
                self.last_check = Instant::now() - IDLE_CHECK;
            }
            if let Some(deadline) = self.catching_up {
                if self.last_check.elapsed() >= IDLE_CHECK {
                    let late = Instant::now() >= deadline;
                    if late || self.all_caught_up(consumer) {
                        if late {
                            // Not lost: the committed offsets stay where the
                            // durable files end, and the next owner reads on.
                            // (No broker round trip here: the grace is spent.)
                            tracing::warn!(
                                stage = "archive",
                                partitions = self.parts.len(),
                                "shutdown: not every partition confirmed read to its high watermark within 40% of the grace; the next owner archives the rest"
                            );
                        }
                        self.catching_up = None;
                        self.begin_drain()?;
                    }
                    self.last_check = Instant::now();
                }
            }
            if let Some(deadline) = self.draining {
                if self.parts.values().all(Part::settled) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        stage = "archive",
                        "shutdown grace spent with uploads outstanding: the next owner writes them again"
                    );
                    return Ok(());
                }
            }
            let polled = consumer.poll(POLL);
            self.handle_events(consumer)?;
            match polled {
                None => {}
                Some(Err(e)) => {
                    self.poll_errors
                        .check(self.shared, "archive", "consume", e, false)?
                }
                Some(Ok(m)) if self.draining.is_none() => self.on_record(&m)?,
                Some(Ok(_)) => {}
            }
            self.collect()?;
            self.advance(consumer)?;
            if self.last_check.elapsed() >= IDLE_CHECK
                && self.draining.is_none()
                && self.catching_up.is_none()
            {
                self.last_check = Instant::now();
                self.check_quiet(consumer)?;
            }
            self.backpressure(consumer)?;
        }
    }

    /// True when every owned partition has been read to its high watermark.
    fn all_caught_up(&self, consumer: &BaseConsumer<StageContext>) -> bool {
        self.parts.values().all(|p| {
            self.caught_up(
                consumer,
                p,
                position(consumer, &p.topic, p.partition).or(p.durable),
            )
        })
    }

    /// Whether `part` has been read to its high watermark ([`caught_up`]).
    /// The last offset of a partition written in transactions is usually a
    /// transaction marker, which the consumer never hands out: one below
    /// the high watermark counts as read to it. (A cut this could
    /// make earlier on a replay is harmless: a segment's cut is recorded
    /// before any of its objects exists, and a recorded cut is replayed
    /// exactly; see the module documentation.)
    fn caught_up(
        &self,
        consumer: &BaseConsumer<StageContext>,
        part: &Part,
        position: Option<i64>,
    ) -> bool {
        let slack = i64::from(part.last.is_some());
        caught_up(
            consumer,
            &part.topic,
            part.partition,
            position.map(|p| p + slack),
        )
    }

    /// Shutdown: cuts every open segment (a forced one not yet reached is
    /// dropped: the next owner cuts it where it was recorded) and waits at
    /// most three quarters of the grace period for the uploads.
    fn begin_drain(&mut self) -> Result<(), RuntimeError> {
        let grace = Duration::from_millis(self.shared.kafka.shutdown_grace_ms);
        self.draining = Some(Instant::now() + grace.mul_f64(0.4));
        let keys: Vec<(Arc<str>, i32)> = self.parts.keys().cloned().collect();
        for k in keys {
            let Some(part) = self.parts.get(&k) else {
                continue;
            };
            match (part.forced_end, part.last, part.open_start) {
                (Some(_), _, _) => {
                    // The recorded cut stays committed for the next owner.
                    let key = part.key();
                    self.writer.discard_source(&key);
                    if let Some(p) = self.parts.get_mut(&k) {
                        p.open_start = None;
                        p.open_first_ts = None;
                    }
                }
                (None, Some(last), Some(_)) => self.seal(&k, last + 1)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn kind_of(&self, topic: &str) -> Option<Kind> {
        self.topics
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, k)| *k)
    }

    fn on_record(&mut self, m: &BorrowedMessage<'_>) -> Result<(), RuntimeError> {
        let topic = m.topic();
        let o = m.offset();
        let ts = m.timestamp().to_millis();
        let Some((k, part)) = self
            .parts
            .iter()
            .find(|((t, p), _)| &**t == topic && *p == m.partition())
            .map(|(k, p)| (k.clone(), p))
        else {
            return Ok(());
        };
        if part.last.is_some_and(|l| o <= l) {
            return Ok(());
        }
        let age_ms = i64::try_from(self.policy.max_age.as_millis()).unwrap_or(i64::MAX);
        match (part.forced_end, part.open_first_ts, ts, part.last) {
            (Some(end), ..) if o >= end => self.seal(&k, end)?,
            (None, Some(t0), Some(t), Some(last))
                if part.open_start.is_some() && t >= t0.saturating_add(age_ms) =>
            {
                self.seal(&k, last + 1)?
            }
            _ => {}
        }
        self.shared.metrics.progress.fetch_add(1, Ordering::Relaxed);
        self.shared
            .metrics
            .archive_records
            .fetch_add(1, Ordering::Relaxed);
        let Some(part) = self.parts.get_mut(&k) else {
            return Ok(());
        };
        part.last = Some(o);
        if part.open_start.is_none() {
            part.open_start = Some(o);
        }
        if part.open_first_ts.is_none() {
            part.open_first_ts = ts;
        }
        let admitted = match header_str(m, headers::AT).and_then(AtPos::parse) {
            Some(at) => part.marks.admit(at),
            None => true,
        };
        let forced = part.forced_end;
        let at = Provenance {
            source: part.topic.clone(),
            partition: Some(part.partition),
            offset: o,
            sub: 0,
        };
        if admitted {
            match self.append(m, &at) {
                Ok(()) => {
                    self.shared
                        .metrics
                        .archive_rows
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(Skip::Archive(e)) => return Err(RuntimeError::Archive(e)),
                Err(Skip::Unreadable(why)) => {
                    let n = self
                        .shared
                        .metrics
                        .archive_skipped
                        .fetch_add(1, Ordering::Relaxed);
                    if n < 10 {
                        tracing::warn!(
                            stage = "archive",
                            topic,
                            partition = m.partition(),
                            offset = o,
                            // may quote the record's content (a number, a body)
                            error = %crate::log::redact(&why),
                            "record not archived: it is not one smsvoice wrote"
                        );
                    }
                }
            }
        } else {
            self.shared
                .metrics
                .archive_repeats
                .fetch_add(1, Ordering::Relaxed);
        }
        let key = at_key(&at);
        match forced {
            Some(end) if o + 1 >= end => self.seal(&k, end)?,
            None if self.writer.is_full(&key) => self.seal(&k, o + 1)?,
            _ => {}
        }
        Ok(())
    }

    fn append(&mut self, m: &BorrowedMessage<'_>, at: &Provenance) -> Result<(), Skip> {
        let value = m.payload().unwrap_or(&[]);
        let record_ts = m.timestamp().to_millis();
        let kind = self
            .kind_of(m.topic())
            .ok_or_else(|| Skip::Unreadable("not an archived topic".into()))?;
        match kind {
            Kind::Events => {
                let env = header(m, headers::ENVELOPES).unwrap_or(&[]);
                let e = event_row(value, env, &self.limits).map_err(Skip::Unreadable)?;
                let processed = record_ts.unwrap_or_else(now_ms);
                self.writer
                    .append_event_at(&e, at, processed)
                    .map_err(Skip::Archive)
            }
            Kind::Inbound => {
                let env = header(m, headers::ENVELOPES).unwrap_or(&[]);
                let received = header_ms(m, headers::RECEIVED_AT).unwrap_or(record_ts);
                let i =
                    inbound_row(value, env, received, &self.limits).map_err(Skip::Unreadable)?;
                let processed = record_ts.unwrap_or_else(now_ms);
                self.writer
                    .append_inbound_at(&i, at, 0, processed)
                    .map_err(Skip::Archive)
            }
            Kind::Dead => {
                let need = |name: &str| {
                    header_str(m, name).ok_or_else(|| Skip::Unreadable(format!("no header {name}")))
                };
                let record_id = need(headers::RECORD_ID)?;
                let reason = need(headers::REASON)?;
                let detail = need(headers::DETAIL)?;
                let source = need(headers::SOURCE_TOPIC)?;
                let num = |name: &str| -> Result<i64, Skip> {
                    need(name)?
                        .parse()
                        .map_err(|_| Skip::Unreadable(format!("header {name}")))
                };
                let partition = num(headers::SOURCE_PARTITION)?;
                let provenance = Provenance {
                    source: Arc::from(source),
                    partition: (partition >= 0)
                        .then(|| i32::try_from(partition).ok())
                        .flatten(),
                    offset: num(headers::SOURCE_OFFSET)?,
                    sub: u32::try_from(num(headers::SOURCE_SUB)?).unwrap_or(0),
                };
                let env = envelopes(header(m, headers::ENVELOPES).unwrap_or(&[]))
                    .ok_or_else(|| Skip::Unreadable("unknown envelope".into()))?;
                let d = DeadLetterParts {
                    record_id,
                    reason,
                    field: header_str(m, headers::FIELD),
                    detail,
                    payload: value,
                    inner_payload: header(m, headers::INNER_PAYLOAD),
                    record_timestamp_ms: header_ms(m, headers::SOURCE_TIMESTAMP)
                        .unwrap_or(record_ts),
                    provenance: &provenance,
                    envelopes: &env,
                };
                let processed = header_ms(m, headers::PROCESSED_AT)
                    .flatten()
                    .or(record_ts)
                    .unwrap_or_else(now_ms);
                self.writer
                    .append_dead_letter_parts_at(&d, at, processed)
                    .map_err(Skip::Archive)
            }
        }
    }
    /// A quiet partition whose first open record is `max_age` old is cut
    /// once it has been read to its high watermark; a segment cut by a
    /// previous owner is cut once the partition has been read past it.
    fn check_quiet(&mut self, consumer: &BaseConsumer<StageContext>) -> Result<(), RuntimeError> {
        let age_ms = i64::try_from(self.policy.max_age.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let mut cuts = Vec::new();
        for (k, part) in &self.parts {
            let position = || position(consumer, &part.topic, part.partition);
            match (part.forced_end, part.last, part.open_start) {
                (Some(end), _, _) if position().is_some_and(|p| p >= end) => {
                    cuts.push((k.clone(), end));
                }
                (None, Some(last), Some(_)) => {
                    let old = part
                        .open_first_ts
                        .is_none_or(|t0| now.saturating_sub(t0) >= age_ms);
                    if old && self.caught_up(consumer, part, position()) {
                        cuts.push((k.clone(), last + 1));
                    }
                }
                _ => {}
            }
        }
        for (k, end) in cuts {
            self.seal(&k, end)?;
        }
        Ok(())
    }

    /// Pauses a partition with too many closed files waiting, resumes it
    /// once they are uploaded.
    fn backpressure(&mut self, consumer: &BaseConsumer<StageContext>) -> Result<(), RuntimeError> {
        let limits = self.shared.cfg.archive.uploads;
        let total: u64 = self.parts.values().map(Part::queued_bytes).sum();
        let draining = self.draining.is_some();
        for part in self.parts.values_mut() {
            let want = draining
                || part.queue.len() >= limits.max_queued_per_partition
                || (total >= limits.max_in_flight_bytes && !part.queue.is_empty());
            if want == part.paused {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&part.topic, part.partition);
            if want {
                consumer.pause(&tpl).map_err(|e| kafka("pause", e))?;
            } else {
                consumer.resume(&tpl).map_err(|e| kafka("resume", e))?;
            }
            part.paused = want;
        }
        Ok(())
    }
}

/// Why a record was not archived.
enum Skip {
    /// It is not a record smsvoice wrote (or its headers are missing).
    Unreadable(String),
    /// Writing it failed.
    Archive(ArchiveError),
}

fn at_key(at: &Provenance) -> SourceKey {
    SourceKey::of(at)
}

/// The consumer's position in a partition, if known.
fn position(consumer: &BaseConsumer<StageContext>, topic: &str, partition: i32) -> Option<i64> {
    consumer.position().ok().and_then(|tpl| {
        tpl.find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
    })
}

/// Whether the partition has been read to its high watermark (one broker
/// round trip): `position` (nothing read yet: the log start) is at it. Any
/// error: no.
fn caught_up(
    consumer: &BaseConsumer<StageContext>,
    topic: &str,
    partition: i32,
    position: Option<i64>,
) -> bool {
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(5))
        .is_ok_and(|(low, high)| position.unwrap_or(low) >= high)
}
