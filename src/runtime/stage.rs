//! The loop every consuming stage runs: consume, process, produce, commit.
//!
//! * **Commit points** every `commit_interval_ms`, or when
//!   `max_in_flight_records` records were read since the last one, or at
//!   shutdown. A transactional stage (every stage with `exactly_once`; see
//!   [`Logic::transactional`]) commits one Kafka transaction holding the
//!   outputs and the offsets (`send_offsets_to_transaction` with the
//!   consumer's group metadata, so a fenced zombie cannot commit). An
//!   at-least-once stage closes its *delivery epoch* and goes on reading:
//!   the epoch's offsets are committed once every record produced in it is
//!   acknowledged ([`super::produce`], `commit::drain`), with no flush.
//! * **Assignment** (cooperative rebalancing): a newly assigned partition is
//!   handed to [`Logic::assign`] with its committed offset before any of its
//!   records is processed, so the stage rebuilds that partition's state from
//!   Kafka. The restore runs on a thread of its own while the loop's thread
//!   polls the consumer with every partition paused ([`super::takeover`]),
//!   so a long restore never drops the member from the group; nothing is
//!   processed until it ends, and an open transaction is committed before
//!   it starts. A revoked partition is dropped from the offsets to commit
//!   and from the logic: its new owner re-reads it from the last commit. In
//!   a transaction, a revocation aborts the transaction and **rewinds**
//!   every partition still owned to its committed offset (state rebuilt, the
//!   same polling restore), so no transaction ever commits offsets of a
//!   partition this instance no longer owns. A wait inside the work (a full
//!   producer queue, [`super::paused_poll`]) also polls, so a revocation
//!   may be recorded before the loop handles it: the commit point aborts a
//!   transaction holding records of such a partition
//!   ([`RuntimeError::RevokedInTransaction`]) instead of committing it (the
//!   broker would accept it once the member has rejoined).
//! * **Errors**, by class ([`RuntimeError::class`]): bad input never reaches
//!   here as an error (the logic turns it into dead letters).
//!   - *Retryable* (broker unavailable, timeouts, throttling): the
//!     failed operation (committing offsets, sending offsets to or
//!     committing the transaction, flushing, reading
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
//!     internal record), seen by a
//!     client's context or returned by a call: never retried; the error is
//!     recorded for the instance, which stops, and `smsvoice run` exits
//!     non-zero with one line.
//! * **Backpressure**: a full producer queue blocks the loop; after
//!   [`QUEUE_FULL_PAUSE_AFTER`] the consumer's partitions are paused and it is
//!   polled while waiting, so rebalances, consumer errors and
//!   `max.poll.interval.ms` are served (paused partitions resume where they
//!   were). A commit point is forced after `max_in_flight_records` reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::commit::{commit, confirm, drain, rewind, Wait, MAX_REWINDS};
use super::formats::FORMAT_HEADER;
use super::gaps::{in_sequence, probe_stalls, GapProbe};
use super::produce::{send, DeliveryContext};
use super::records::OutRecord;
use super::retry::{self, in_place};
use super::takeover::{committed_offsets, restore_all, Restoring};
use super::{RuntimeError, Shared};
use crate::kafka::client::{ClientWatch, ErrorClass};
use crate::kafka::{consumer_config, producer_config, ClientError};

/// How long one poll waits for a record.
pub(super) const POLL: Duration = Duration::from_millis(50);
/// Timeout of broker calls made by the loop (commits, transactions).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(60);

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
pub trait Logic: Send {
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
    /// Gives a partition up: drop its state.
    fn revoke(&mut self, topic: &str, partition: i32);
    /// Processes one record, pushing what to produce onto `out`.
    fn process(
        &mut self,
        shared: &Shared,
        rec: &InRecord<'_>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), RuntimeError>;
    /// Called at each commit point before anything is flushed or committed:
    /// outputs the stage coalesces between commits (e.g. the latest partial
    /// totals) are pushed onto `out`. Default: nothing.
    fn before_commit(&mut self, _shared: &Shared, _out: &mut Vec<OutRecord>) {}
    /// Whether the stage commits in Kafka transactions (outputs and offsets
    /// in one transaction, a revocation aborting it). Default: in
    /// exactly-once mode only; the message owners always do, since their
    /// state changelog must commit with the offsets it reflects.
    fn transactional(&self, shared: &Shared) -> bool {
        shared.kafka.exactly_once
    }
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
pub(super) enum Event {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

pub(super) struct StageContext {
    pub(super) events: Mutex<Vec<Event>>,
    pub(super) watch: ClientWatch,
}

impl StageContext {
    /// The partitions named by rebalance events recorded and not yet
    /// handled (`revoked_only`: by revocations only). Events are recorded
    /// only while this thread polls the consumer, so the answer holds until
    /// the next poll.
    pub(super) fn queued(&self, revoked_only: bool) -> BTreeSet<(String, i32)> {
        let Ok(ev) = self.events.lock() else {
            return BTreeSet::new();
        };
        ev.iter()
            .filter_map(|e| match e {
                Event::Revoked(parts) => Some(parts),
                Event::Assigned(parts) if !revoked_only => Some(parts),
                Event::Assigned(_) => None,
            })
            .flatten()
            .cloned()
            .collect()
    }

    /// How many rebalance events are queued.
    pub(super) fn queued_len(&self) -> usize {
        self.events.lock().map(|ev| ev.len()).unwrap_or(0)
    }

    /// The partitions revoked by the events queued after the first `seen`,
    /// and how many are queued now.
    pub(super) fn revoked_since(&self, seen: usize) -> (Vec<(String, i32)>, usize) {
        let Ok(ev) = self.events.lock() else {
            return (Vec::new(), seen);
        };
        let revoked = ev
            .iter()
            .skip(seen)
            .filter_map(|e| match e {
                Event::Revoked(parts) => Some(parts),
                Event::Assigned(_) => None,
            })
            .flatten()
            .cloned()
            .collect();
        (revoked, ev.len())
    }
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

/// Runs a stage until shutdown, restarting it after failures that are not
/// fatal (see the module documentation).
pub fn run<L: Logic>(shared: &Shared, logic: L) -> Result<(), RuntimeError> {
    run_worker(shared, logic, 0)
}

/// [`run`] as worker `worker` of the stage: the workers of a stage are
/// members of the same consumer group, so Kafka shares the partitions out
/// among them and each processes its own with its own state, producer and
/// thread (nothing is shared on the per-record path). Transactional ids
/// are `group.stage.instance` for worker 0 and `group.stage.instance.wN`
/// for worker N, stable across restarts, so a restarted worker fences its
/// own zombie and nobody else's.
pub fn run_worker<L: Logic>(
    shared: &Shared,
    mut logic: L,
    worker: usize,
) -> Result<(), RuntimeError> {
    let mut restarts = retry::Restarts::default();
    loop {
        let started = Instant::now();
        let Err(e) = attempt(shared, &mut logic, worker) else {
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

pub(super) fn kafka(context: &str, e: KafkaError) -> RuntimeError {
    RuntimeError::Kafka(ClientError::kafka(context.to_owned(), e))
}

/// One attempt: fresh clients, every partition restored on assignment.
fn attempt<L: Logic>(shared: &Shared, logic: &mut L, worker: usize) -> Result<(), RuntimeError> {
    let k = &shared.kafka;
    let eos = logic.transactional(shared);
    let consumer: BaseConsumer<StageContext> = consumer_config(k, logic.group_suffix())
        .create_with_context(StageContext {
            events: Mutex::new(Vec::new()),
            watch: shared.watch(&format!("{} consumer", logic.name())),
        })
        .map_err(|e| kafka("create consumer", e))?;
    let txn_id = eos.then(|| {
        let id = format!("{}.{}.{}", k.group_id, logic.name(), instance_id());
        if worker == 0 {
            id
        } else {
            format!("{id}.w{worker}")
        }
    });
    // The transactional id names the producer in errors (a fenced one
    // says which).
    let producer_name = match &txn_id {
        Some(id) => format!("{} producer {id}", logic.name()),
        None => format!("{} producer", logic.name()),
    };
    let producer: ThreadedProducer<DeliveryContext> = producer_config(k, txn_id)
        .create_with_context(DeliveryContext::new(shared.watch(&producer_name)))
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
        rewinds: 0,
        in_events: false,
        poll_errors: PollErrors::default(),
        epoch: 0,
        pending: std::collections::VecDeque::new(),
        unconfirmed: BTreeMap::new(),
    };
    let beat_name = format!("{} worker {worker}", logic.name());
    let result = drive(shared, logic, &consumer, &producer, &mut s, &beat_name);
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

pub(super) struct LoopState {
    /// Partitions owned, with their committed offset at assignment.
    pub(super) owned: BTreeMap<(String, i32), Option<i64>>,
    /// Next offset to commit, per partition read since the last commit.
    pub(super) next: BTreeMap<(String, i32), i64>,
    pub(super) in_txn: bool,
    pub(super) reads: usize,
    pub(super) last_commit: Instant,
    pub(super) last_idle: Instant,
    /// Next offset expected per owned partition (see [`in_sequence`]).
    pub(super) expected: BTreeMap<(String, i32), i64>,
    /// The gap being checked per partition (see [`in_sequence`]).
    pub(super) gaps: BTreeMap<(String, i32), GapProbe>,
    /// `expected` at the last idle check (see [`probe_stalls`]).
    pub(super) last_expected: BTreeMap<(String, i32), i64>,
    /// Rewinds since the last commit (see [`MAX_REWINDS`]).
    pub(super) rewinds: u32,
    /// True while rebalance events are handled.
    pub(super) in_events: bool,
    /// The consumer's poll errors.
    pub(super) poll_errors: PollErrors,
    /// The current delivery epoch (see [`super::produce`]): what is sent
    /// now is sent with its slot.
    pub(super) epoch: u64,
    /// At-least-once: the epochs closed by a commit point whose deliveries
    /// are not all reported yet, oldest first, with the offsets each
    /// covers (see `commit::drain`).
    pub(super) pending: std::collections::VecDeque<PendingCommit>,
    /// At-least-once: offsets handed to asynchronous commits whose outcome
    /// is not known. Once the stage has been idle a commit interval, they
    /// are committed again, synchronously (`commit::confirm`): an
    /// asynchronous commit lost in a rebalance is otherwise superseded only
    /// by the next record's commit, which an idle stream never makes (its
    /// last records would be processed again after a restart, and reported
    /// as lag meanwhile).
    pub(super) unconfirmed: BTreeMap<(String, i32), i64>,
}

/// An epoch closed by a commit point: its offsets are committed once every
/// record sent in it has been acknowledged.
#[derive(Debug)]
pub(super) struct PendingCommit {
    /// The epoch.
    pub(super) epoch: u64,
    /// Next offset per partition, as of the commit point.
    pub(super) offsets: BTreeMap<(String, i32), i64>,
    /// Input records read in the epoch (they count against
    /// `max_in_flight_records` until committed).
    pub(super) reads: usize,
}

fn drive<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
    beat_name: &str,
) -> Result<(), RuntimeError> {
    let mut out: Vec<OutRecord> = Vec::new();
    let mut last_beat: Option<Instant> = None;
    loop {
        if last_beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            shared.metrics.beat(beat_name);
            last_beat = Some(Instant::now());
        }
        match step(shared, logic, consumer, producer, s, &mut out) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) if !s.in_events => {
                out.clear();
                rewind_on_abort(shared, logic, consumer, producer, s, e)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `e` failed the work since the last commit. An abortable error (at most
/// [`MAX_REWINDS`] times between two commits) aborts that work and redoes it
/// from the last commit ([`rewind`]), keeping the clients and the
/// assignment; any other is returned.
fn rewind_on_abort<L: Logic>(
    shared: &Shared,
    logic: &mut L,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    s: &mut LoopState,
    e: RuntimeError,
) -> Result<(), RuntimeError> {
    if e.class() != ErrorClass::Abort || s.rewinds >= MAX_REWINDS {
        return Err(e);
    }
    tracing::warn!(
        stage = logic.name(),
        error = %e,
        "aborting the work since the last commit"
    );
    s.rewinds += 1;
    rewind(shared, logic, consumer, producer, s)
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
    let eos = logic.transactional(shared);
    let interval = Duration::from_millis(k.commit_interval_ms);
    if shared.stopping() {
        commit(shared, logic, consumer, producer, s, true)?;
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
                    send(shared, consumer, producer, o, s.epoch)?;
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
                    send(shared, consumer, producer, o, s.epoch)?;
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
        commit(shared, logic, consumer, producer, s, false)?;
    } else if !s.pending.is_empty() {
        drain(shared, logic.name(), consumer, producer, s, Wait::No)?;
    } else if !s.unconfirmed.is_empty() && s.last_commit.elapsed() >= interval {
        confirm(shared, logic.name(), consumer, s)?;
    }
    Ok(true)
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
                if !s.pending.is_empty() {
                    // What is acknowledged is committed before it is given up.
                    drain(shared, logic.name(), consumer, producer, s, Wait::No)?;
                }
                for (t, p) in &parts {
                    for pc in s.pending.iter_mut() {
                        pc.offsets.remove(&(t.clone(), *p));
                    }
                    s.owned.remove(&(t.clone(), *p));
                    s.unconfirmed.remove(&(t.clone(), *p));
                    s.next.remove(&(t.clone(), *p));
                    s.expected.remove(&(t.clone(), *p));
                    s.gaps.remove(&(t.clone(), *p));
                    s.last_expected.remove(&(t.clone(), *p));
                    logic.revoke(t, *p);
                }
                if s.in_txn {
                    // Never commit a transaction holding offsets of a
                    // partition given up: abort and redo the rest.
                    rewind(shared, logic, consumer, producer, s)?;
                }
            }
            Event::Assigned(parts) => {
                // Not ready while restoring (`/readyz`).
                let _restoring = Restoring::new(shared, parts.len());
                // A partition paused by a wait (`paused_poll`), revoked
                // meanwhile and assigned again after the wait resumed what
                // it paused, may come back paused: a new assignment is
                // always read.
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &parts {
                    tpl.add_partition(t, *p);
                }
                if let Err(e) = consumer.resume(&tpl) {
                    tracing::debug!(error = %e, "resume assigned partitions");
                }
                if s.in_txn && !parts.is_empty() {
                    // No transaction stays open across a restore (see
                    // `takeover`): the work so far, all of partitions still
                    // owned, is committed first, or else rewound.
                    if let Err(e) = commit(shared, logic, consumer, producer, s, false) {
                        rewind_on_abort(shared, logic, consumer, producer, s, e)?;
                    }
                }
                let committed = committed_offsets(shared, logic.name(), consumer, &parts)?;
                restore_all(shared, logic, consumer, s, committed)?;
                tracing::info!(stage = logic.name(), partitions = ?parts, "partitions assigned");
            }
        }
    }
    Ok(())
}

/// This process's instance id for transactional ids: `HOSTNAME` (the pod
/// name on Kubernetes, stable across restarts of a StatefulSet pod) or the
/// process id.
pub fn instance_id() -> String {
    std::env::var("SMSVOICE_INSTANCE_ID")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| std::process::id().to_string())
}
