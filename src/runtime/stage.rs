//! The loop every consuming stage runs: consume, process, produce, commit.
//!
//! * **Commit points** every `commit_interval_ms`, or when
//!   `max_in_flight_records` records were read since the last one, or at
//!   shutdown. At a commit point the stage (1) makes its outputs durable,
//!   (2) uploads its archive files ([`Logic::checkpoint`]), (3) commits the
//!   next offset of every partition it read. In at-least-once mode (1) is a
//!   producer flush whose every delivery report must be a success, and (3) a
//!   synchronous offset commit; with `exactly_once` the outputs and the
//!   offsets are one Kafka transaction (`send_offsets_to_transaction` with
//!   the consumer's group metadata, so a fenced zombie cannot commit).
//! * **Assignment** (cooperative rebalancing): a newly assigned partition is
//!   handed to [`Logic::assign`] with its committed offset before any of its
//!   records is processed, so the stage rebuilds that partition's state from
//!   Kafka. A revoked partition is dropped from the offsets to commit and
//!   from the logic (its buffered archive rows too): its new owner re-reads
//!   it from the last commit. In a transaction, a revocation aborts the
//!   transaction and **rewinds** every partition still owned to its
//!   committed offset (state rebuilt), so no transaction ever commits
//!   offsets of a partition this instance no longer owns.
//! * **Errors**, by class ([`RuntimeError::class`]): bad input never reaches
//!   here as an error (the logic turns it into dead letters).
//!   - *Retryable* (broker unavailable, timeouts, throttling, S3 5xx): the
//!     failed operation (committing offsets, sending offsets to or
//!     committing the transaction, flushing, uploading the archive, reading
//!     committed offsets or watermarks, restoring a partition, initialising
//!     transactions) is retried in place with backoff, keeping the restored
//!     state ([`retry::in_place`], at most [`retry::IN_PLACE_BUDGET`]); an
//!     at-least-once offset commit refused because the group is rebalancing
//!     is left for the next commit point, the consumer being polled through
//!     the rebalance meanwhile.
//!   - *Abort* (librdkafka's abortable transaction errors, records not
//!     delivered): the transaction is aborted and every partition rewound to
//!     its last commit ([`rewind`]), at most [`MAX_REWINDS`] times between
//!     two commits.
//!   - *Restart* (anything unexpected, or a retry budget spent): the attempt
//!     ends, the clients are dropped (uncommitted work is redone from the
//!     last commit, by this instance or another) and the stage starts again
//!     after a backoff ([`retry::Restarts`]: 1 s doubling to 30 s), logging
//!     each failure; it never exits the process for a broker outage.
//!   - *Fatal* (authentication, TLS, authorization, a fenced producer, a
//!     fatal librdkafka error, an invalid configuration, an unreadable
//!     internal record, the archive store refusing this process), seen by a
//!     client's context or returned by a call: never retried; the error is
//!     recorded for the instance, which stops, and `smsvoice run` exits
//!     non-zero with one line.
//! * **Backpressure**: a full producer queue blocks the loop; after
//!   [`QUEUE_FULL_PAUSE_AFTER`] the consumer's partitions are paused and it is
//!   polled while waiting, so rebalances, consumer errors and
//!   `max.poll.interval.ms` are served (paused partitions resume where they
//!   were). A commit point is forced after `max_in_flight_records` reads,
//!   which bounds archive buffers too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::formats::FORMAT_HEADER;
use super::records::OutRecord;
use super::restore::try_replay_range;
use super::retry::{self, in_place};
use super::{RuntimeError, Shared};
use crate::archive::writer::{ArchiveWriter, SourceKey};
use crate::kafka::client::{ClientWatch, ErrorClass};
use crate::kafka::{consumer_config, producer_config, ClientError};

/// How long one poll waits for a record.
const POLL: Duration = Duration::from_millis(50);
/// Timeout of broker calls made by the loop (commits, transactions).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A record read by a stage.
#[derive(Debug)]
pub struct InRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<&'a [u8]>,
    /// Value (empty for a null value).
    pub value: &'a [u8],
    /// Record timestamp (ms), if any.
    pub timestamp_ms: Option<i64>,
    /// The value of the record's [`FORMAT_HEADER`], if it has one (see
    /// [`super::formats`]).
    pub format: Option<&'a [u8]>,
}

impl<'a> InRecord<'a> {
    /// Borrows a consumed message.
    pub fn of(m: &'a BorrowedMessage<'a>) -> InRecord<'a> {
        InRecord {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            value: m.payload().unwrap_or(&[]),
            timestamp_ms: m.timestamp().to_millis(),
            format: m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == FORMAT_HEADER)
                    .and_then(|h| h.value)
            }),
        }
    }
}

/// What a stage does with its records; the loop does the rest.
pub trait Logic {
    /// Stage name (logs, thread name).
    fn name(&self) -> &'static str;
    /// Consumer group suffix (`""` for the group id itself). Default: the
    /// stage name.
    fn group_suffix(&self) -> &'static str {
        self.name()
    }
    /// Topics consumed.
    fn topics(&self, shared: &Shared) -> Vec<String>;
    /// Takes ownership of a partition: rebuild its state from Kafka.
    /// `committed` is the next offset to read (`None`: nothing committed).
    fn assign(
        &mut self,
        shared: &Shared,
        topic: &str,
        partition: i32,
        committed: Option<i64>,
    ) -> Result<(), RuntimeError>;
    /// Gives a partition up: drop its state and buffered archive rows.
    fn revoke(&mut self, topic: &str, partition: i32);
    /// Processes one record, pushing what to produce onto `out`.
    fn process(
        &mut self,
        shared: &Shared,
        rec: &InRecord<'_>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), RuntimeError>;
    /// The stage's archive writer, if it archives. The loop seals its files
    /// at each commit point and uploads them once the offsets are committed
    /// (see [`commit`]). Default: none.
    fn archive(&mut self) -> Option<&mut ArchiveWriter> {
        None
    }
    /// Called at each commit point before anything is flushed or committed:
    /// outputs the stage coalesces between commits (e.g. the latest partial
    /// totals) are pushed onto `out`. Default: nothing.
    fn before_commit(&mut self, _shared: &Shared, _out: &mut Vec<OutRecord>) {}
    /// Called when the consumer has had nothing to hand out, at most once per
    /// [`IDLE_CHECK`]; `caught_up(topic, partition)` tells whether an owned
    /// partition has been read to its end (one broker round trip). Pushes
    /// what to produce onto `out`. Default: nothing.
    fn idle(
        &mut self,
        _shared: &Shared,
        _caught_up: &mut dyn FnMut(&str, i32) -> bool,
        _out: &mut Vec<OutRecord>,
    ) {
    }
}

/// How often an idle loop asks its [`Logic::idle`].
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long a consumer's poll may keep returning an authentication, TLS or
/// authorization error before the loop ends with it, if no client's context
/// has recorded a fatal error meanwhile.
pub const SECURITY_POLL_GRACE: Duration = Duration::from_secs(5);

/// What a loop does with the errors its consumer's `poll` returns. Most are
/// logged: librdkafka recovers from them itself (reconnects, rejoins the
/// group). A fatal one ends the loop: a fenced or otherwise fatal client, an
/// invalid configuration at once; an authentication, TLS or authorization
/// error once it has lasted [`SECURITY_POLL_GRACE`], since a poll only has
/// the error code while the clients' contexts record the same failure with
/// the broker's own words (the line the process exits with), and a consumer
/// may be the only client refused (a group ACL).
#[derive(Debug, Default)]
pub(crate) struct PollErrors {
    security_since: Option<Instant>,
}

impl PollErrors {
    /// `Err` when the loop must end with `e` (from `what`, e.g.
    /// `"consume"`); else logs it (at debug level when `quiet`, or once the
    /// instance has a fatal error: it is stopping with it).
    pub(crate) fn check(
        &mut self,
        shared: &Shared,
        stage: &str,
        what: &str,
        e: KafkaError,
        quiet: bool,
    ) -> Result<(), RuntimeError> {
        use crate::kafka::client::FatalCause;
        let e = ClientError::kafka(what, e);
        if e.class() == ErrorClass::Fatal {
            let security = matches!(
                e.fatal_cause(),
                Some(FatalCause::Authentication | FatalCause::Tls | FatalCause::Authorization)
            );
            let since = *self.security_since.get_or_insert_with(Instant::now);
            if !security || shared.has_fatal() || since.elapsed() >= SECURITY_POLL_GRACE {
                return Err(RuntimeError::Kafka(e));
            }
        }
        if quiet || shared.has_fatal() {
            tracing::debug!(stage, error = %e, "consumer error");
        } else {
            tracing::warn!(stage, error = %e, "consumer error");
        }
        Ok(())
    }
}

/// Rebalance events, recorded by the consumer's context and handled by the
/// loop between two polls.
#[derive(Debug)]
enum Event {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

struct StageContext {
    events: Mutex<Vec<Event>>,
    watch: ClientWatch,
}

impl ClientContext for StageContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.error(error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.watch.log(level, fac, log_message);
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            if let Ok(mut ev) = self.events.lock() {
                ev.push(Event::Revoked(partitions(tpl)));
            }
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            if let Ok(mut ev) = self.events.lock() {
                ev.push(Event::Assigned(partitions(tpl)));
            }
        }
    }
}

/// Counts failed deliveries (at-least-once: a failure voids the commit).
struct DeliveryContext {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    watch: ClientWatch,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.error(error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.watch.log(level, fac, log_message);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            // An authorization failure is fatal to the process.
            self.watch.delivery(result, ());
            if let Ok(mut f) = self.first_error.lock() {
                f.get_or_insert_with(|| format!("{} [{}]: {e}", m.topic(), m.partition()));
            }
        }
    }
}

/// Runs a stage until shutdown, restarting it after failures that are not
/// fatal (see the module documentation).
pub fn run<L: Logic>(shared: &Shared, mut logic: L) -> Result<(), RuntimeError> {
    let mut restarts = retry::Restarts::default();
    loop {
        let started = Instant::now();
        let Err(e) = attempt(shared, &mut logic) else {
            return Ok(());
        };
        if shared.fatal_stop(logic.name(), &e) || e.class() == ErrorClass::Fatal {
            // Retrying cannot fix it: the instance stops with it.
            return Err(e);
        }
        if shared.stopping() {
            tracing::warn!(stage = logic.name(), error = %e, "failed while stopping");
            return Ok(());
        }
        let wait = restarts.next(started.elapsed());
        tracing::warn!(
            stage = logic.name(),
            error = %e,
            class = ?e.class(),
            retry_in_ms = wait.as_millis() as u64,
            "stage failed; restarting from the last commit"
        );
        retry::sleep_unless_stopping(&shared.shutdown, wait);
    }
}

fn kafka(context: &str, e: KafkaError) -> RuntimeError {
    RuntimeError::Kafka(ClientError::kafka(context.to_owned(), e))
}

/// One attempt: fresh clients, every partition restored on assignment.
fn attempt<L: Logic>(shared: &Shared, logic: &mut L) -> Result<(), RuntimeError> {
    let k = &shared.kafka;
    let eos = k.exactly_once;
    let consumer: BaseConsumer<StageContext> = consumer_config(k, logic.group_suffix())
        .create_with_context(StageContext {
            events: Mutex::new(Vec::new()),
            watch: shared.watch(&format!("{} consumer", logic.name())),
        })
        .map_err(|e| kafka("create consumer", e))?;
    let txn_id = eos.then(|| format!("{}.{}.{}", k.group_id, logic.name(), instance_id()));
    let producer: ThreadedProducer<DeliveryContext> = producer_config(k, txn_id)
        .create_with_context(DeliveryContext {
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            watch: shared.watch(&format!("{} producer", logic.name())),
        })
        .map_err(|e| kafka("create producer", e))?;
    if eos {
        in_place(shared, logic.name(), "init transactions", || {
            producer
                .init_transactions(CALL_TIMEOUT)
                .map_err(|e| kafka("init transactions", e))
        })?;
    }
    let topics = logic.topics(shared);
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&refs)
        .map_err(|e| kafka("subscribe", e))?;
    let mut s = LoopState {
        owned: BTreeMap::new(),
        next: BTreeMap::new(),
        in_txn: false,
        reads: 0,
        last_commit: Instant::now(),
        last_idle: Instant::now(),
        expected: BTreeMap::new(),
        gaps: BTreeMap::new(),
        last_expected: BTreeMap::new(),
        archived: BTreeMap::new(),
        rewinds: 0,
        in_events: false,
        poll_errors: PollErrors::default(),
    };
    let result = drive(shared, logic, &consumer, &producer, &mut s);
    if result.is_err() {
        if s.in_txn {
            let _ = producer.abort_transaction(Duration::from_secs(10));
        }
        // Forget everything: the next attempt restores from Kafka.
        for (t, p) in std::mem::take(&mut s.owned).into_keys() {
            logic.revoke(&t, p);
        }
    } else {
        for (t, p) in std::mem::take(&mut s.owned).into_keys() {
            logic.revoke(&t, p);
        }
    }
    consumer.unsubscribe();
    result
}

struct LoopState {
    /// Partitions owned, with their committed offset at assignment.
    owned: BTreeMap<(String, i32), Option<i64>>,
    /// Next offset to commit, per partition read since the last commit.
    next: BTreeMap<(String, i32), i64>,
    in_txn: bool,
    reads: usize,
    last_commit: Instant,
    last_idle: Instant,
    /// Next offset expected per owned partition (see [`in_sequence`]).
    expected: BTreeMap<(String, i32), i64>,
    /// The gap being checked per partition (see [`in_sequence`]).
    gaps: BTreeMap<(String, i32), GapProbe>,
    /// `expected` at the last idle check (see [`probe_stalls`]).
    last_expected: BTreeMap<(String, i32), i64>,
    /// Per owned partition, the offset below which every archive row is
    /// known to be uploaded (stored with each committed offset as
    /// [`ARCHIVED_META`]; see [`commit`]).
    archived: BTreeMap<(String, i32), i64>,
    /// Rewinds since the last commit (see [`MAX_REWINDS`]).
    rewinds: u32,
    /// True while rebalance events are handled.
    in_events: bool,
    /// The consumer's poll errors.
    poll_errors: PollErrors,
}

/// How many times a stage rewinds after an abortable error without a commit
/// in between before it restarts instead.
pub const MAX_REWINDS: u32 = 5;

/// Committed-offset metadata: `smsvoice.archived=<offset>`, the offset below
/// which the archive files of the partition are known to be uploaded.
pub const ARCHIVED_META: &str = "smsvoice.archived=";

fn drive<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
) -> Result<(), RuntimeError> {
    let mut out: Vec<OutRecord> = Vec::new();
    loop {
        match step(shared, logic, consumer, producer, s, &mut out) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) if e.class() == ErrorClass::Abort && !s.in_events && s.rewinds < MAX_REWINDS => {
                // The work since the last commit cannot be committed: abort
                // it and redo it, keeping the clients and the assignment.
                tracing::warn!(
                    stage = logic.name(),
                    error = %e,
                    "aborting the work since the last commit"
                );
                out.clear();
                s.rewinds += 1;
                rewind(shared, logic, consumer, producer, s)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One turn of the loop: poll, handle rebalance events, process what was
/// read, commit when due. False once the stage has stopped (shutdown, with
/// what it held committed).
fn step<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
    out: &mut Vec<OutRecord>,
) -> Result<bool, RuntimeError> {
    let k = &shared.kafka;
    let eos = k.exactly_once;
    let interval = Duration::from_millis(k.commit_interval_ms);
    if shared.stopping() {
        commit(shared, logic, consumer, producer, s)?;
        return Ok(false);
    }
    let polled = consumer.poll(POLL);
    // An error while handling rebalance events leaves the assignment half
    // handled: the stage restarts rather than rewinding (see `drive`).
    s.in_events = true;
    handle_events(shared, logic, consumer, producer, s)?;
    s.in_events = false;
    match polled {
        None if s.last_idle.elapsed() >= IDLE_CHECK => {
            s.last_idle = Instant::now();
            if !eos && k.reread_offset_gaps {
                probe_stalls(shared, logic, consumer, s)?;
            }
            let owned = &s.owned;
            let mut check = |t: &str, p: i32| caught_up(consumer, owned, t, p);
            logic.idle(shared, &mut check, out);
            if !out.is_empty() {
                if eos && !s.in_txn {
                    producer
                        .begin_transaction()
                        .map_err(|e| kafka("begin transaction", e))?;
                    s.in_txn = true;
                }
                for o in out.drain(..) {
                    send(shared, consumer, producer, o)?;
                }
            }
        }
        None => {}
        Some(Err(e)) => s
            .poll_errors
            .check(shared, logic.name(), "consume", e, false)?,
        Some(Ok(m)) => {
            let key = (m.topic().to_owned(), m.partition());
            if s.owned.contains_key(&key) && in_sequence(shared, logic, consumer, s, &key, &m)? {
                if eos && !s.in_txn {
                    producer
                        .begin_transaction()
                        .map_err(|e| kafka("begin transaction", e))?;
                    s.in_txn = true;
                }
                let rec = InRecord::of(&m);
                logic.process(shared, &rec, out)?;
                for o in out.drain(..) {
                    send(shared, consumer, producer, o)?;
                }
                if !s.archived.contains_key(&key) {
                    // Once per partition and assignment: no key copy per record.
                    s.archived.insert(key.clone(), m.offset());
                }
                s.next.insert(key, m.offset() + 1);
                s.reads += 1;
                shared.metrics.progress.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if (!s.next.is_empty() || s.in_txn)
        && (s.last_commit.elapsed() >= interval || s.reads >= k.max_in_flight_records)
    {
        commit(shared, logic, consumer, producer, s)?;
    }
    Ok(true)
}

/// Whether `m` is the next record of its partition, so that no record is
/// skipped or processed twice within one assignment, whatever the broker
/// delivers:
///
/// * an offset below the expected one was processed already: skipped;
/// * an offset above it is a *gap*. Gaps are legitimate (transaction markers,
///   compaction, deleted records), but a broker may also skip records: tansu
///   0.6 answers a fetch at offset `o` with the batches whose *first* offset
///   is at least `o`, so a read resuming inside a batch loses the rest of that
///   batch, and under concurrent appends it may list a later batch before an
///   earlier one is stored. So a gap is only believed once the broker has
///   been seen reading *through* it: the partition is re-read from before the
///   expected offset ([`GapProbe`]), and the gap is real when a record below
///   the expected offset arrives and is followed by the same gap again.
///   Until then `m` is not processed. On a well-behaved broker this costs one
///   seek and one or two re-read records per gap.
fn in_sequence<L: Logic>(
    shared: &Shared,
    logic: &L,
    consumer: &BaseConsumer<StageContext>,
    s: &mut LoopState,
    key: &(String, i32),
    m: &BorrowedMessage<'_>,
) -> Result<bool, RuntimeError> {
    let offset = m.offset();
    if !shared.kafka.reread_offset_gaps {
        // A broker that never skips records: a gap is real (transaction
        // markers, compaction) and costs nothing; a record below the
        // expected offset (a re-read) was processed already.
        return Ok(match s.expected.get_mut(key) {
            Some(e) if offset < *e => false,
            Some(e) => {
                *e = offset + 1;
                true
            }
            None => {
                s.expected.insert(key.clone(), offset + 1);
                true
            }
        });
    }
    let Some(&expected) = s.expected.get(key) else {
        s.expected.insert(key.clone(), offset + 1);
        return Ok(true);
    };
    if offset < expected {
        if let Some(probe) = s.gaps.get_mut(key) {
            probe.read_below = true;
        }
        return Ok(false);
    }
    if offset > expected && probe_gap(shared, logic, consumer, s, key, expected)? {
        return Ok(false);
    }
    if !s.gaps.is_empty() {
        s.gaps.remove(key);
    }
    if let Some(e) = s.expected.get_mut(key) {
        *e = offset + 1;
    }
    Ok(true)
}

/// The partition `key` is missing records from `expected` on (a gap was
/// delivered, or the reader stalled below the high watermark): starts or
/// widens its [`GapProbe`] and seeks there. False when the probe is over (the
/// gap is real).
fn probe_gap<L: Logic>(
    shared: &Shared,
    logic: &L,
    consumer: &BaseConsumer<StageContext>,
    s: &mut LoopState,
    key: &(String, i32),
    expected: i64,
) -> Result<bool, RuntimeError> {
    let mut slot = s.gaps.remove(key);
    let from = GapProbe::advance(&mut slot, expected);
    if let Some(probe) = slot {
        s.gaps.insert(key.clone(), probe);
    }
    tracing::debug!(
        stage = logic.name(),
        topic = key.0,
        partition = key.1,
        expected,
        from = ?from,
        "offset gap (from: where the re-read starts; None: the gap is real)"
    );
    let Some(from) = from else {
        return Ok(false);
    };
    shared.metrics.refetches.fetch_add(1, Ordering::Relaxed);
    consumer
        .seek(&key.0, key.1, Offset::Offset(from), CALL_TIMEOUT)
        .map_err(|e| kafka("seek", e))?;
    Ok(true)
}

/// At an idle moment (at-least-once mode only): every owned partition whose
/// expected offset has not moved since the last check although the broker's
/// high watermark is above it is probed like a gap, since a broker that
/// skips the rest of a batch (see [`in_sequence`]) delivers nothing at all
/// when that batch is the last one. Not under `read_committed`, where
/// reading stops at an open transaction by design.
fn probe_stalls<L: Logic>(
    shared: &Shared,
    logic: &L,
    consumer: &BaseConsumer<StageContext>,
    s: &mut LoopState,
) -> Result<(), RuntimeError> {
    let expected: Vec<((String, i32), i64)> =
        s.expected.iter().map(|(k, e)| (k.clone(), *e)).collect();
    let mut stalled = BTreeMap::new();
    for (key, e) in expected {
        if s.last_expected.get(&key) != Some(&e) {
            stalled.insert(key, e);
            continue;
        }
        let Ok((_, high)) = consumer.fetch_watermarks(&key.0, key.1, CALL_TIMEOUT) else {
            stalled.insert(key, e);
            continue;
        };
        if high > e {
            probe_gap(shared, logic, consumer, s, &key, e)?;
        }
        stalled.insert(key, e);
    }
    s.last_expected = stalled;
    Ok(())
}

/// The re-reads that decide whether a gap in a partition's offsets is real
/// (see [`in_sequence`]): read again from `expected - back`, doubling `back`
/// while the broker delivers nothing below `expected` before the gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GapProbe {
    /// The offset that should have come next.
    expected: i64,
    /// How far before `expected` the current re-read starts.
    back: i64,
    /// Whether the current re-read delivered a record below `expected`.
    pub(crate) read_below: bool,
}

impl GapProbe {
    /// Records are missing from `expected` on: starts the probe in `slot`,
    /// or continues it when it is about the same offset. Returns where the
    /// next re-read starts, `None` when the gap is confirmed.
    pub(crate) fn advance(slot: &mut Option<GapProbe>, expected: i64) -> Option<i64> {
        match slot.as_mut() {
            Some(p) if p.expected == expected => p.next_step(),
            _ => {
                let p = GapProbe::new(expected);
                *slot = Some(p);
                Some(p.from())
            }
        }
    }

    fn new(expected: i64) -> GapProbe {
        GapProbe {
            expected,
            back: expected.min(1),
            read_below: false,
        }
    }

    /// Where the current re-read starts.
    fn from(&self) -> i64 {
        self.expected - self.back
    }

    /// The same records are still missing: `None` when the gap is confirmed
    /// (the re-read went through records below it, or started at offset 0),
    /// else where the next, wider re-read starts.
    fn next_step(&mut self) -> Option<i64> {
        if self.read_below || self.back >= self.expected {
            return None;
        }
        self.back = (self.back.saturating_mul(2)).min(self.expected);
        self.read_below = false;
        Some(self.from())
    }
}

/// Whether `topic`/`partition` (owned) has been read to its end: the
/// consumer's position (or the committed offset, or the log start, before the
/// first record) is at the broker's high watermark. Any error: no.
fn caught_up(
    consumer: &BaseConsumer<StageContext>,
    owned: &BTreeMap<(String, i32), Option<i64>>,
    topic: &str,
    partition: i32,
) -> bool {
    let Some(committed) = owned.get(&(topic.to_owned(), partition)) else {
        return false;
    };
    let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))
    else {
        return false;
    };
    let position = consumer
        .position()
        .ok()
        .and_then(|tpl| {
            tpl.find_partition(topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
        })
        .or(*committed)
        .unwrap_or(low);
    position >= high
}

fn handle_events<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
) -> Result<(), RuntimeError> {
    let events: Vec<Event> = match consumer.context().events.lock() {
        Ok(mut ev) => std::mem::take(&mut *ev),
        Err(_) => return Err(RuntimeError::Stage(logic.name(), "poisoned lock".into())),
    };
    for ev in events {
        match ev {
            Event::Revoked(parts) => {
                tracing::info!(stage = logic.name(), partitions = ?parts, "partitions revoked");
                for (t, p) in &parts {
                    s.owned.remove(&(t.clone(), *p));
                    s.next.remove(&(t.clone(), *p));
                    s.expected.remove(&(t.clone(), *p));
                    s.gaps.remove(&(t.clone(), *p));
                    s.last_expected.remove(&(t.clone(), *p));
                    s.archived.remove(&(t.clone(), *p));
                    logic.revoke(t, *p);
                }
                if s.in_txn {
                    // Never commit a transaction holding offsets of a
                    // partition given up: abort and redo the rest.
                    rewind(shared, logic, consumer, producer, s)?;
                }
            }
            Event::Assigned(parts) => {
                for c in committed_offsets(shared, logic.name(), consumer, &parts)? {
                    take_retrying(shared, logic, s, c)?;
                }
                tracing::info!(stage = logic.name(), partitions = ?parts, "partitions assigned");
            }
        }
    }
    Ok(())
}

/// A partition's committed position: the next offset to read (`None`:
/// nothing committed) and, from its metadata, the offset below which its
/// archive files are uploaded (`None`: not recorded).
#[derive(Clone, Debug)]
struct Committed {
    topic: String,
    partition: i32,
    offset: Option<i64>,
    archived: Option<i64>,
}

/// The committed position of each of `parts` (retried in place).
fn committed_offsets(
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
fn take<L: Logic>(
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
fn take_retrying<L: Logic>(
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
fn rearchive<L: Logic>(
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
fn rewind<L: Logic>(
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

/// How long [`send`] waits on a full producer queue before it pauses the
/// consumer's partitions and polls the consumer while waiting.
pub const QUEUE_FULL_PAUSE_AFTER: Duration = Duration::from_millis(100);

/// Sends one record, waiting while the producer queue is full (the
/// producer's own thread serves its delivery reports meanwhile; see
/// [`QueueFullWait`] for the consumer).
fn send(
    shared: &Shared,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    o: OutRecord,
) -> Result<(), RuntimeError> {
    let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
    for (k, v) in &o.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    let mut rec = BaseRecord::to(&o.topic)
        .key(o.key.as_slice())
        .payload(o.value.as_slice())
        .headers(headers);
    if let Some(p) = o.partition {
        rec = rec.partition(p);
    }
    if let Some(t) = o.timestamp_ms {
        rec = rec.timestamp(t);
    }
    let mut wait: Option<QueueFullWait> = None;
    let sent = loop {
        match producer.send(rec) {
            Ok(()) => break Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                // Backpressure: the broker is slower than we are.
                rec = r;
                let w = wait.get_or_insert_with(QueueFullWait::new);
                if let Err(e) = w.tick(shared, consumer) {
                    break Err(e);
                }
            }
            Err((e, _)) => break Err(kafka("produce", e)),
        }
    };
    if let Some(w) = wait {
        w.finish(consumer);
    }
    sent
}

/// A wait on a full producer queue. The first [`QUEUE_FULL_PAUSE_AFTER`] is
/// slept through; then every assigned partition is paused (librdkafka drops
/// what it prefetched and resumes from the last record handed out) and the
/// consumer is polled, so that rebalance callbacks run (their events are
/// handled by the loop afterwards, as usual), consumer errors are seen and
/// the member stays within `max.poll.interval.ms`. A record a poll still
/// returns (of a partition assigned meanwhile, so not paused) is read again:
/// its partition is sought back to it when the wait ends.
struct QueueFullWait {
    since: Instant,
    paused: Option<TopicPartitionList>,
    reread: BTreeMap<(String, i32), i64>,
    poll_errors: PollErrors,
}

impl QueueFullWait {
    fn new() -> QueueFullWait {
        QueueFullWait {
            since: Instant::now(),
            paused: None,
            reread: BTreeMap::new(),
            poll_errors: PollErrors::default(),
        }
    }

    /// One turn of the wait: an error ends it (a fatal error of the
    /// instance, a fatal consumer error, or still full a while after a stop
    /// was asked for).
    fn tick(
        &mut self,
        shared: &Shared,
        consumer: &BaseConsumer<StageContext>,
    ) -> Result<(), RuntimeError> {
        if let Some(f) = shared.fatal() {
            return Err(RuntimeError::Fatal(Box::new(f)));
        }
        let waited = self.since.elapsed();
        if waited >= CALL_TIMEOUT && shared.stopping() {
            return Err(kafka(
                "produce",
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
            ));
        }
        if waited < QUEUE_FULL_PAUSE_AFTER {
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
                "producer queue full: consumer paused"
            );
            self.paused = Some(tpl);
        }
        match consumer.poll(POLL) {
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
                    .check(shared, "producer queue full", "consume", e, true)?
            }
        }
        Ok(())
    }

    /// Resumes what was paused and seeks back to the records read meanwhile.
    /// Failures are logged only: a partition revoked meanwhile can be
    /// neither resumed nor sought, and needs neither.
    fn finish(self, consumer: &BaseConsumer<StageContext>) {
        if let Some(tpl) = &self.paused {
            if let Err(e) = consumer.resume(tpl) {
                tracing::debug!(error = %e, "resume after a full producer queue");
            }
        }
        for ((t, p), o) in self.reread {
            if let Err(e) = consumer.seek(&t, p, Offset::Offset(o), CALL_TIMEOUT) {
                tracing::debug!(topic = t, partition = p, error = %e, "seek back after a full producer queue");
            }
        }
    }
}

/// A commit point: makes the outputs durable, commits the offsets (one
/// transaction with the outputs in exactly-once mode), then uploads the
/// archive files sealed here. Every broker call and the upload are retried
/// in place ([`in_place`]). In at-least-once mode an offset commit refused
/// because the group is rebalancing is left for the next commit point (the
/// outputs are durable; the offsets of partitions still owned after the
/// rebalance are committed then, those of revoked ones are dropped by the
/// revocation).
fn commit<L: Logic>(
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
fn upload(
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

/// This process's instance id for transactional ids: `HOSTNAME` (the pod
/// name on Kubernetes, stable across restarts of a StatefulSet pod) or the
/// process id.
pub fn instance_id() -> String {
    std::env::var("SMSVOICE_INSTANCE_ID")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| std::process::id().to_string())
}

#[cfg(test)]
mod tests {
    use super::GapProbe;

    /// Plays a tansu-like broker, which answers a read from `from` with the
    /// batches whose first offset is at least `from`, against the probe as
    /// the stage loop drives it (a delivered gap, or a stall: nothing
    /// delivered below the last offset). Returns the offsets accepted from
    /// `expected` on.
    fn accept_after(batches: &[(i64, i64)], expected: i64) -> Vec<i64> {
        let read = |from: i64| -> Vec<i64> {
            batches
                .iter()
                .filter(|(first, _)| *first >= from)
                .flat_map(|(first, last)| *first..=*last)
                .collect()
        };
        let high = batches.iter().map(|(_, last)| last + 1).max().unwrap_or(0);
        let mut expected = expected;
        let mut probe: Option<GapProbe> = None;
        let mut accepted = Vec::new();
        let mut pending = read(expected);
        for _ in 0..64 {
            let mut seek = None;
            for o in std::mem::take(&mut pending) {
                if o < expected {
                    if let Some(p) = probe.as_mut() {
                        p.read_below = true;
                    }
                    continue;
                }
                if o > expected {
                    seek = GapProbe::advance(&mut probe, expected);
                    if seek.is_some() {
                        break;
                    }
                }
                probe = None;
                accepted.push(o);
                expected = o + 1;
            }
            if seek.is_none() && expected < high {
                // Stalled below the high watermark.
                seek = GapProbe::advance(&mut probe, expected);
            }
            match seek {
                Some(from) => pending = read(from),
                None => return accepted,
            }
        }
        panic!("the probe does not terminate");
    }

    #[test]
    fn resuming_inside_a_batch_on_a_batch_skipping_broker_loses_nothing() {
        let batches = [(0, 99), (100, 9_099), (9_100, 9_100), (9_101, 12_000)];
        for start in [
            0, 1, 57, 100, 101, 5_000, 9_099, 9_100, 9_101, 11_999, 12_000,
        ] {
            let want: Vec<i64> = (start..=12_000).collect();
            assert_eq!(accept_after(&batches, start), want, "start {start}");
        }
    }

    #[test]
    fn real_gaps_are_believed() {
        // Offsets 50 and 51 do not exist (a transaction marker, compaction).
        let batches = [(0, 49), (52, 80)];
        let want: Vec<i64> = (10..50).chain(52..=80).collect();
        assert_eq!(accept_after(&batches, 10), want);
        assert_eq!(accept_after(&batches, 50), (52..=80).collect::<Vec<_>>());
        // A log that starts above the expected offset (deleted records).
        assert_eq!(accept_after(&[(7, 9)], 0), vec![7, 8, 9]);
        assert_eq!(accept_after(&[(7, 9)], 3), vec![7, 8, 9]);
    }

    #[test]
    fn a_gap_on_a_well_behaved_broker_costs_one_re_read() {
        let mut p = GapProbe::new(50);
        assert_eq!(p.from(), 49);
        p.read_below = true;
        assert_eq!(p.next_step(), None);
    }

    #[test]
    fn the_probe_widens_by_doubling_down_to_offset_zero() {
        let mut p = GapProbe::new(1_000);
        let mut froms = vec![p.from()];
        while let Some(f) = p.next_step() {
            froms.push(f);
        }
        assert_eq!(froms.len(), 11, "{froms:?}");
        assert_eq!(froms[..4], [999, 998, 996, 992]);
        assert_eq!(froms.last(), Some(&0));
    }
}
