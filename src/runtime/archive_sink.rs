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

/// Consumer group suffix of the sink: `<group_id>.archive`.
pub const GROUP_SUFFIX: &str = "archive";

/// Prefix of the sink's committed-offset metadata.
pub const META_PREFIX: &str = "smsvoice.archive=1";

/// The broker's default bound on offset metadata (`offset.metadata.max.bytes`).
const META_MAX_BYTES: usize = 4096;

/// Wait before a commit that failed with a retryable error is tried again
/// (the loop keeps polling meanwhile).
const COMMIT_RETRY: Duration = Duration::from_millis(500);

/// The highest position archived per stage partition ([`headers::AT`]):
/// topic, partition -> (offset, index in the record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks(BTreeMap<String, BTreeMap<i32, (i64, u32)>>);

/// A position of [`headers::AT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtPos<'a> {
    /// Topic the stage consumed.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Index among the records written to the same topic for it.
    pub n: u32,
}

impl<'a> AtPos<'a> {
    /// Parses `topic:partition:offset:n` (topics cannot contain `:`).
    pub fn parse(text: &'a str) -> Option<AtPos<'a>> {
        let mut it = text.rsplitn(4, ':');
        let n = it.next()?.parse().ok()?;
        let offset = it.next()?.parse().ok()?;
        let partition = it.next()?.parse().ok()?;
        let topic = it.next()?;
        (!topic.is_empty()).then_some(AtPos {
            topic,
            partition,
            offset,
            n,
        })
    }
}

impl Marks {
    /// True when `at` is past the highest position of its stage partition
    /// (it is then recorded as the new highest); false for a repeat.
    pub fn admit(&mut self, at: AtPos<'_>) -> bool {
        let pos = (at.offset, at.n);
        let parts = match self.0.get_mut(at.topic) {
            Some(p) => p,
            None => self.0.entry(at.topic.to_owned()).or_default(),
        };
        match parts.get_mut(&at.partition) {
            Some(high) if *high >= pos => false,
            Some(high) => {
                *high = pos;
                true
            }
            None => {
                parts.insert(at.partition, pos);
                true
            }
        }
    }

    /// Stage partitions tracked.
    pub fn len(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The committed-offset metadata of an output partition: the marks as of
/// the committed offset and, while a segment is being uploaded, its end:
/// `smsvoice.archive=1 cut=<end> m=<topic>/<p>:<offset>.<n>,<p>:...`.
pub fn encode_meta(marks: &Marks, cut: Option<i64>) -> String {
    let mut s = String::from(META_PREFIX);
    if let Some(c) = cut {
        s.push_str(&format!(" cut={c}"));
    }
    for (topic, parts) in &marks.0 {
        s.push_str(" m=");
        s.push_str(topic);
        s.push('/');
        let mut first = true;
        for (p, (o, n)) in parts {
            if !first {
                s.push(',');
            }
            first = false;
            s.push_str(&format!("{p}:{o}.{n}"));
        }
    }
    s
}

/// Reads [`encode_meta`]'s text; `None` for metadata that is not the
/// sink's (empty included).
pub fn decode_meta(text: &str) -> Option<(Marks, Option<i64>)> {
    let rest = text.strip_prefix(META_PREFIX)?;
    let mut marks = Marks::default();
    let mut cut = None;
    for tok in rest.split_whitespace() {
        if let Some(c) = tok.strip_prefix("cut=") {
            cut = Some(c.parse().ok()?);
        } else if let Some(m) = tok.strip_prefix("m=") {
            let (topic, list) = m.rsplit_once('/')?;
            let parts = marks.0.entry(topic.to_owned()).or_default();
            for e in list.split(',').filter(|e| !e.is_empty()) {
                let (p, pos) = e.split_once(':')?;
                let (o, n) = pos.split_once('.')?;
                parts.insert(p.parse().ok()?, (o.parse().ok()?, n.parse().ok()?));
            }
        } else {
            return None;
        }
    }
    Some((marks, cut))
}

/// Parses a record id `source:partition:offset:sub` (Kafka mode).
pub fn parse_record_id(id: &str) -> Option<Provenance> {
    let mut it = id.rsplitn(4, ':');
    let sub = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let source = it.next()?;
    Some(Provenance {
        source: Arc::from(source),
        partition: Some(partition),
        offset,
        sub,
    })
}

/// The names of the envelopes the decoder knows, as the `'static` names the
/// rows hold; `None` for an unknown one.
fn envelopes(text: &[u8]) -> Option<Vec<&'static str>> {
    let text = std::str::from_utf8(text).ok()?;
    text.split(',')
        .filter(|e| !e.is_empty())
        .map(|e| {
            ["sns", "eventbridge", "firehose"]
                .into_iter()
                .find(|k| *k == e)
        })
        .collect()
}

/// The value of header `name` (an empty slice for a null value).
fn header<'a>(m: &'a BorrowedMessage<'a>, name: &str) -> Option<&'a [u8]> {
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == name)
            .map(|h| h.value.unwrap_or(&[]))
    })
}

fn header_str<'a>(m: &'a BorrowedMessage<'a>, name: &str) -> Option<&'a str> {
    header(m, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// An optional number header: `Some(None)` when present and empty.
fn header_ms(m: &BorrowedMessage<'_>, name: &str) -> Option<Option<i64>> {
    header_str(m, name).map(|v| v.parse().ok())
}

/// The enrichment keys of an enriched delivery event.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventTail {
    record_id: String,
    status_class: Option<StatusClass>,
    cost_usd: Usd,
    spend_month: String,
    month_to_date_spend_usd: Usd,
    latency_ms: Option<i64>,
    destination_opted_out: Option<bool>,
    duplicate: bool,
    late_receipt: bool,
}

/// The enrichment keys of an enriched inbound message.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InboundTail {
    record_id: String,
    keyword: Option<String>,
    action: InboundAction,
    opt_out_list: String,
    opted_out: bool,
}

/// The limits the sink decodes enriched payloads with: those of the
/// configuration without the size and cost bounds (the stages applied
/// them already; the enriched object is larger than the original payload).
pub fn sink_limits(shared: &Shared) -> Limits {
    Limits {
        max_record_bytes: usize::MAX,
        max_id_bytes: usize::MAX,
        max_body_bytes: usize::MAX,
        max_context_entries: usize::MAX,
        max_context_value_bytes: usize::MAX,
        max_message_cost_by_channel: [Usd::from_units(i128::MAX); 4],
        ..Limits::new(&*shared.cfg)
    }
}

/// The archive row of an enriched delivery event.
pub fn event_row(value: &[u8], env: &[u8], limits: &Limits) -> Result<EnrichedEvent, String> {
    let (event, _) =
        decode_delivery_with(value, limits, TimeBound::NONE).map_err(|r| r.to_string())?;
    let tail: EventTail = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let provenance =
        parse_record_id(&tail.record_id).ok_or_else(|| format!("recordId {:?}", tail.record_id))?;
    let envelopes = envelopes(env).ok_or("unknown envelope")?;
    let enrichment = EventEnrichment {
        record_id: tail.record_id,
        channel: event.channel,
        status_class: tail.status_class,
        cost_usd: tail.cost_usd,
        spend_month: tail
            .spend_month
            .parse()
            .map_err(|_| format!("spendMonth {:?}", tail.spend_month))?,
        month_to_date_spend_usd: tail.month_to_date_spend_usd,
        latency_ms: tail.latency_ms,
        destination_opted_out: tail.destination_opted_out,
        duplicate: tail.duplicate,
        late_receipt: tail.late_receipt,
    };
    Ok(EnrichedEvent {
        event,
        enrichment,
        provenance,
        envelopes,
        json: Vec::new(),
    })
}

/// The archive row of an enriched inbound message.
pub fn inbound_row(
    value: &[u8],
    env: &[u8],
    received_at: Option<i64>,
    limits: &Limits,
) -> Result<EnrichedInbound, String> {
    let (message, _) =
        decode_inbound_with(value, received_at, limits).map_err(|r| r.to_string())?;
    let tail: InboundTail = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let provenance =
        parse_record_id(&tail.record_id).ok_or_else(|| format!("recordId {:?}", tail.record_id))?;
    let envelopes = envelopes(env).ok_or("unknown envelope")?;
    Ok(EnrichedInbound {
        message,
        enrichment: InboundEnrichment {
            record_id: tail.record_id,
            keyword: tail.keyword,
            action: tail.action,
            opt_out_list: tail.opt_out_list,
            opted_out: tail.opted_out,
            state_unchanged: None,
        },
        provenance,
        envelopes,
        json: Vec::new(),
    })
}

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
                    if Instant::now() >= deadline || self.all_caught_up(consumer) {
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

    /// Cuts the open segment of `k` at `end` and queues its files.
    fn seal(&mut self, k: &(Arc<str>, i32), end: i64) -> Result<(), RuntimeError> {
        let Some(part) = self.parts.get_mut(k) else {
            return Ok(());
        };
        let key = SourceKey {
            source: part.topic.clone(),
            partition: Some(part.partition),
        };
        let files = self
            .writer
            .seal_and_take(&key, end)
            .map_err(RuntimeError::Archive)?;
        let bytes = files.iter().map(|f| f.bytes.len() as u64).sum();
        part.queue.push_back(Sealed {
            start: part.open_start.unwrap_or(end),
            end,
            files,
            marks: part.marks.clone(),
            bytes,
        });
        part.open_start = None;
        part.open_first_ts = None;
        part.forced_end = None;
        Ok(())
    }

    /// Upload results: a completed segment becomes durable.
    fn collect(&mut self) -> Result<(), RuntimeError> {
        while let Ok(d) = self.rx.try_recv() {
            let k = (d.topic.clone(), d.partition);
            let Some(part) = self.parts.get_mut(&k) else {
                continue;
            };
            if part.gen != d.gen {
                continue;
            }
            part.uploading = false;
            match d.result {
                Ok(()) => {
                    if let Some(s) = part.queue.pop_front() {
                        let m = &self.shared.metrics;
                        m.archive_files
                            .fetch_add(s.files.len() as u64, Ordering::Relaxed);
                        m.archive_bytes.fetch_add(s.bytes, Ordering::Relaxed);
                        tracing::debug!(
                            stage = "archive",
                            topic = %part.topic,
                            partition = part.partition,
                            from = s.start,
                            end = s.end,
                            files = s.files.len(),
                            bytes = s.bytes,
                            "archive segment durable"
                        );
                        part.durable = Some(s.end);
                        part.durable_marks = s.marks;
                    }
                }
                Err((key, source)) => {
                    return Err(RuntimeError::Archive(ArchiveError::Store { key, source }));
                }
            }
        }
        Ok(())
    }

    /// Per partition: commits what it wants committed, then starts the
    /// upload of its next segment once its cut is committed.
    fn advance(&mut self, consumer: &BaseConsumer<StageContext>) -> Result<(), RuntimeError> {
        for part in self.parts.values_mut() {
            loop {
                let desired = part.desired();
                if desired.is_some() && desired != part.committed {
                    if part.commit_retry_at.is_some_and(|t| Instant::now() < t) {
                        break;
                    }
                    let Some((offset, cut)) = desired else {
                        break;
                    };
                    match commit(consumer, part, offset, cut) {
                        Ok(()) => {
                            part.committed = desired;
                            part.commit_retry_at = None;
                            self.shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_rebalance() || e.class() == ErrorClass::Retryable => {
                            tracing::debug!(stage = "archive", error = %e, "commit left for later");
                            part.commit_retry_at = Some(Instant::now() + COMMIT_RETRY);
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if part.uploading {
                    break;
                }
                let Some(head) = part.queue.front() else {
                    break;
                };
                if part.committed != Some((part.durable.unwrap_or(head.start), Some(head.end))) {
                    break;
                }
                if head.files.is_empty() {
                    // Nothing to upload: durable at once.
                    if let Some(s) = part.queue.pop_front() {
                        part.durable = Some(s.end);
                        part.durable_marks = s.marks;
                    }
                    continue;
                }
                part.uploading = true;
                let files = head.files.clone();
                let done = Done {
                    topic: part.topic.clone(),
                    partition: part.partition,
                    gen: part.gen,
                    result: Ok(()),
                };
                let tx = self.tx.clone();
                let store = self.store.clone();
                let retry = self.shared.cfg.archive.retry;
                let metrics = self.shared.metrics.clone();
                self.shared.io.spawn(async move {
                    let result = upload(&store, files, retry, move || metrics.has_fatal()).await;
                    let _ = tx.send(Done { result, ..done });
                });
                break;
            }
        }
        Ok(())
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

    fn handle_events(&mut self, consumer: &BaseConsumer<StageContext>) -> Result<(), RuntimeError> {
        let events: Vec<Event> = match consumer.context().events.lock() {
            Ok(mut ev) => std::mem::take(&mut *ev),
            Err(_) => return Err(RuntimeError::Stage("archive", "poisoned lock".into())),
        };
        for ev in events {
            match ev {
                Event::Revoked(parts) => {
                    tracing::info!(stage = "archive", partitions = ?parts, "partitions revoked");
                    for (t, p) in parts {
                        let k: (Arc<str>, i32) = (Arc::from(t.as_str()), p);
                        if let Some(part) = self.parts.remove(&k) {
                            self.writer.discard_source(&part.key());
                        }
                    }
                }
                Event::Assigned(parts) => {
                    self.assign(consumer, &parts)?;
                    tracing::info!(stage = "archive", partitions = ?parts, "partitions assigned");
                }
            }
        }
        Ok(())
    }

    fn assign(
        &mut self,
        consumer: &BaseConsumer<StageContext>,
        parts: &[(String, i32)],
    ) -> Result<(), RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in parts {
            tpl.add_partition(t, *p);
        }
        let committed = in_place(self.shared, "archive", "read committed offsets", || {
            let got = consumer
                .committed_offsets(tpl.clone(), CALL_TIMEOUT)
                .map_err(|e| kafka("read committed offsets", e))?;
            super::takeover::answered(&got)?;
            Ok(got)
        })?;
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            let meta = e.metadata();
            let (marks, cut) = match decode_meta(meta) {
                Some(m) => m,
                None => {
                    if !meta.is_empty() {
                        tracing::warn!(
                            stage = "archive",
                            topic = e.topic(),
                            partition = e.partition(),
                            metadata = meta,
                            "committed offset metadata not the archive sink's: ignored"
                        );
                    }
                    (Marks::default(), None)
                }
            };
            let forced_end = match (offset, cut) {
                (Some(o), Some(c)) if c > o => Some(c),
                _ => None,
            };
            if let Some(end) = forced_end {
                tracing::info!(
                    stage = "archive",
                    topic = e.topic(),
                    partition = e.partition(),
                    from = offset,
                    end,
                    "a previous owner cut a segment here: writing it again, cut at the same record"
                );
            }
            self.gen += 1;
            let topic: Arc<str> = Arc::from(e.topic());
            let part = Part {
                topic: topic.clone(),
                partition: e.partition(),
                gen: self.gen,
                durable: offset,
                durable_marks: marks.clone(),
                committed: offset.map(|o| (o, forced_end)),
                commit_retry_at: None,
                marks,
                forced_end,
                open_start: None,
                open_first_ts: None,
                last: None,
                queue: VecDeque::new(),
                uploading: false,
                paused: false,
            };
            // A partition assigned again (after a failed attempt) starts afresh.
            self.writer.discard_source(&part.key());
            self.parts.insert((topic, e.partition()), part);
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

/// Commits `offset` of `part` with the metadata of its marks as of
/// `offset` and the cut `cut`.
fn commit(
    consumer: &BaseConsumer<StageContext>,
    part: &Part,
    offset: i64,
    cut: Option<i64>,
) -> Result<(), RuntimeError> {
    // The marks as of `offset`: those of the durable offset, or, before
    // anything is durable, those restored at assignment.
    let meta = encode_meta(&part.durable_marks, cut);
    if meta.len() > META_MAX_BYTES {
        tracing::warn!(
            stage = "archive",
            topic = %part.topic,
            partition = part.partition,
            bytes = meta.len(),
            "archive offset metadata above the broker's default bound (offset.metadata.max.bytes)"
        );
    }
    let mut tpl = TopicPartitionList::new();
    let mut e = tpl.add_partition(&part.topic, part.partition);
    e.set_offset(Offset::Offset(offset))
        .map_err(|e| kafka("commit", e))?;
    e.set_metadata(meta);
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| kafka("commit offsets", e))
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

/// Uploads `files` in order; a retryable error is retried with the backoff
/// of `[archive.retry]` (no bound on attempts: the partition waits, paused
/// by `[archive.uploads]`) until `give_up` says the instance is stopping
/// with a fatal error.
async fn upload(
    store: &Store,
    files: Vec<SealedFile>,
    retry: crate::archive::RetryPolicy,
    give_up: impl Fn() -> bool,
) -> Result<(), (String, StoreError)> {
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(retry.initial_backoff_ms))
        .with_max_delay(Duration::from_millis(retry.max_backoff_ms))
        .with_factor(2.0)
        .without_max_times();
    for f in files {
        let key = f.key.clone();
        let started = std::time::Instant::now();
        let put = || store.put(&f.key, f.bytes.clone());
        put.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &StoreError| e.is_retryable() && !give_up())
            .notify(|e: &StoreError, wait: Duration| {
                tracing::warn!(key = %key, ?wait, error = %e, "archive upload failed; retrying");
            })
            .await
            .map_err(|e| (f.key.clone(), e))?;
        super::observe::upload(started.elapsed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_admit_only_new_positions() {
        let at = |t: &'static str, p, o, n| AtPos {
            topic: t,
            partition: p,
            offset: o,
            n,
        };
        let mut m = Marks::default();
        assert!(m.admit(at("a", 0, 10, 0)));
        assert!(m.admit(at("a", 0, 10, 1)));
        assert!(!m.admit(at("a", 0, 10, 1)));
        assert!(!m.admit(at("a", 0, 9, 5)));
        assert!(m.admit(at("a", 1, 3, 0)));
        assert!(m.admit(at("b.x-y", 0, 1, 0)));
        assert!(m.admit(at("a", 0, 11, 0)));
        let text = encode_meta(&m, Some(77));
        assert_eq!(decode_meta(&text), Some((m.clone(), Some(77))));
        assert_eq!(decode_meta(&encode_meta(&m, None)), Some((m, None)));
        assert_eq!(decode_meta(META_PREFIX), Some((Marks::default(), None)));
        assert_eq!(decode_meta(""), None);
        assert_eq!(decode_meta("smsvoice.archived=12"), None);
        assert_eq!(decode_meta("smsvoice.archive=1 x=1"), None);
    }

    #[test]
    fn positions_and_record_ids_parse() {
        assert_eq!(
            AtPos::parse("smsvoice.internal.events-by-message:3:120:0"),
            Some(AtPos {
                topic: "smsvoice.internal.events-by-message",
                partition: 3,
                offset: 120,
                n: 0
            })
        );
        assert_eq!(AtPos::parse("x:1:2"), None);
        assert_eq!(AtPos::parse(":1:2:3"), None);
        let p = parse_record_id("sms-events:2:41:1").expect("parses");
        assert_eq!(
            (&*p.source, p.partition, p.offset, p.sub),
            ("sms-events", Some(2), 41, 1)
        );
        assert!(parse_record_id("f.jsonl:7:0").is_none());
        assert_eq!(
            envelopes(b"sns,eventbridge"),
            Some(vec!["sns", "eventbridge"])
        );
        assert_eq!(envelopes(b""), Some(vec![]));
        assert_eq!(envelopes(b"zip"), None);
    }
}
