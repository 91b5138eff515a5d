//! Exact month-to-date spend and message counts per (UTC month, channel).
//!
//! # Rules (BRIEF section 3)
//!
//! * **Cost of an event** = `totalMessagePrice + totalCarrierFee`, a missing
//!   field counting 0; with `include_carrier_fee = false` the price alone. An
//!   event is *priced* when it has either field. All amounts are exact
//!   [`Usd`]; floating point never touches them.
//! * **Each messageId is counted once.** The counted cost of a message is the
//!   cost of its *latest priced event*, "latest" meaning the largest
//!   `(eventTimestamp, eventType, cost)` in lexicographic order (eventType
//!   compared as text). This is a maximum, so the result does not depend on
//!   the order in which events arrive. An event without price fields changes
//!   no cost; a later event with a different price is applied as the
//!   difference.
//! * **Duplicates**: an event whose `(messageId, eventType, eventTimestamp)`
//!   was already seen is reported with `duplicate = true`. A redelivered copy
//!   changes nothing. (Should the same key ever come back with a *different*
//!   price, it still takes part in the maximum above, so totals stay
//!   independent of arrival order.)
//! * **Attribution**: a message belongs to the UTC month of the smallest
//!   `messageRequestTimestamp` among its events, or, when none of its events
//!   has one, of the smallest `eventTimestamp`; and to the channel of the
//!   first of its events seen (events of one message are expected to agree;
//!   if they do not, the first one wins and the result then depends on arrival
//!   order). When a later event changes the month (typically the first event
//!   had no `messageRequestTimestamp`), the message and its counted cost move
//!   from the old bucket to the new one.
//! * **Totals** per (month, channel): spend, and the number of distinct
//!   messageIds (priced or not).
//!
//! # Closed months and late events (bounded memory)
//!
//! The *watermark* is the largest `eventTimestamp` seen so far (by any event,
//! including duplicates and late ones). When the events come from several
//! *sources* read side by side (the partitions of a Kafka input topic, each
//! in order but at their own pace), the watermark is the smallest of the
//! sources' largest timestamps, so a source that is read ahead of the others
//! cannot close a month whose events are still waiting in a slower one (see
//! [`SpendLedger::apply_from`]). A source holds the watermark back until it
//! is declared caught up with [`SpendLedger::source_idle_at`] (in Kafka, the
//! router sends that marker, with the time of its check, when it has read
//! its input partition to the end, and repeats it while the partition stays
//! so; a source that is merely slow or stalled is never declared idle), and
//! again from its next event on. An idle source in turn holds back what the
//! others forward after its last confirmation, until it is confirmed again
//! or delivers ([`SpendLedger::apply_forwarded`]): when a backlog arrives on
//! every idle partition at once, the partition read first cannot close a
//! month alone. Sources expected but not yet heard from
//! ([`SpendLedger::expect_sources`]: in Kafka, every input partition) hold it
//! back from the start. The watermark never decreases. A month `M` is **closed** once
//! `watermark >= M.end_ms() + receipt_window_hours * 3_600_000`: carrier
//! receipts arrive up to 72 hours after a send, so nothing more is expected for
//! it. When a month closes, the per-message entries attributed to it are
//! dropped (one sweep per month that closes, not per event); its totals are
//! kept and are **final**.
//!
//! Only `eventTimestamp`s move the watermark, and the decoder dead-letters
//! any that is later than its record's arrival time plus the clock-skew
//! allowance (`[limits] max_clock_skew`, see [`crate::limits`]); so data can
//! push the watermark at most that far past the newest arrival time, and a
//! month closes only once records have really arrived after its end plus
//! the receipt window minus the skew. The cost of one event is bounded by
//! the per-message ceiling the same way, so neither a count nor a
//! correction can exceed it.
//!
//! A closed month whose entries were dropped is **sealed**. An event whose
//! attribution month is sealed and whose message has no entry (it was dropped
//! with its month) is **not counted**: it is reported with `late = true` and
//! changes no total, because it may repeat a message that was already counted
//! (a redelivery, or a consumer replaying old offsets) and the entry that
//! would tell is gone. The same holds for an event that would move a tracked
//! message into a sealed month. Late events are expected to be rare (a receipt
//! more than `receipt_window_hours` after the end of its month); they stay in
//! the enriched output and the archive with `lateReceipt = true`.
//!
//! A message of a closed month that was *never* seen (no entry of that month
//! was ever dropped, e.g. a historical file read after newer ones) cannot be a
//! repeat, so it is counted; its entry is dropped at the next sweep, which
//! seals that month too.
//!
//! # Memory
//!
//! Per tracked message: the messageId, the `(eventType, eventTimestamp)` pairs
//! seen (eventTypes interned to `u32` ids), the smallest timestamps needed for
//! attribution, the best priced key and its cost. Only messages of open months
//! are tracked; totals are a few words per (month, channel). An entry is kept
//! packed, as the bytes of its changelog value ([`entry`]), under a key that
//! holds a UUID messageId in 16 bytes ([`key`]): about 106 bytes of heap per
//! tracked message of the generated mix (`cargo bench --bench memory`),
//! against 336 as a struct of vectors under a string key.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{Channel, DeliveryEvent};
use crate::money::Usd;
use crate::spend::config::SpendConfig;

use super::month::MonthKey;

mod codec;
mod entry;
mod key;
mod snapshot;

use entry::{Entry, Fields};
use key::{KeyRef, MessageKey};
pub use snapshot::{LedgerChanges, SnapshotError};

/// Milliseconds in an hour.
const MS_PER_HOUR: i64 = 3_600_000;

/// Totals of one (month, channel) bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Sum of the counted costs of the bucket's messages.
    pub spend: Usd,
    /// Number of distinct messageIds attributed to the bucket, priced or not.
    pub messages: u64,
}

/// What applying one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerOutcome {
    /// Month the event's message is attributed to (after this event).
    pub month: MonthKey,
    /// Channel the event's message is attributed to.
    pub channel: Channel,
    /// The message's counted cost after this event (`Usd::ZERO` when no priced
    /// event yet); for a late event: its own cost, not counted.
    pub cost: Usd,
    /// The `(messageId, eventType, eventTimestamp)` was seen before.
    pub duplicate: bool,
    /// The event's month is closed and its message is no longer tracked: it
    /// was not counted.
    pub late: bool,
    /// The same source position was already applied (a replay of the very
    /// same input record, not a redelivery by the bridge): nothing changed
    /// and the caller should not emit it again.
    pub replayed: bool,
    /// Totals of (`month`, `channel`) after this event.
    pub month_to_date: Totals,
    /// Buckets whose totals changed because of this event (0, 1 or 2 entries),
    /// with their new totals. Feed these to
    /// [`AlarmEngine::evaluate`](super::AlarmEngine::evaluate).
    pub changed: Vec<(MonthKey, Channel, Totals)>,
}

/// Exact monthly spend per channel, each message counted once. See the module
/// documentation for the rules.
#[derive(Clone, Debug)]
pub struct SpendLedger {
    include_carrier_fee: bool,
    window_ms: i64,
    watermark: Option<i64>,
    /// Per source (only for [`SpendLedger::apply_from`] and
    /// [`SpendLedger::apply_forwarded`]): its progress and idle state.
    sources: HashMap<u64, Source>,
    /// Largest router time seen (forwarding times and idle-marker times).
    router_clock: Option<i64>,
    /// Router time that passed while the ledger was receiving records: the
    /// sum of the increases of `router_clock`, each counted at most
    /// [`RUNNING_STEP_MS`] (a longer jump is a pause of the whole pipeline,
    /// not time in which an idle source's reader failed to confirm it).
    running: i64,
    /// How long (in `running` time) an idle source's last confirmation
    /// keeps holding back what other sources forward after it.
    hold_ms: i64,
    /// The tracked messages (hashbrown's default hasher, foldhash: the keys
    /// are UUIDs of 16 bytes or short texts, and SipHash cost a twelfth of
    /// the core's time).
    entries: hashbrown::HashMap<MessageKey, Entry>,
    /// Number of entries per attribution month; only open months with at
    /// least one entry are present.
    open_entries: BTreeMap<MonthKey, usize>,
    totals: BTreeMap<(MonthKey, Channel), Totals>,
    /// Closed months whose entries were dropped: their totals are final.
    sealed: BTreeSet<MonthKey>,
    types: Interner,
    /// The messageIds whose entry changed or was dropped since the last
    /// export (`None`: not tracked; see [`SpendLedger::track_changes`]).
    dirty: Option<hashbrown::HashSet<MessageKey>>,
}

/// Slack for the difference between two routers' clocks: an event forwarded
/// at router time `f` is released by an idle source confirmed at `c` only
/// when `c >= f + ROUTER_CLOCK_MARGIN_MS`.
pub const ROUTER_CLOCK_MARGIN_MS: i64 = 60_000;

/// Events waiting to be released are kept per forwarding-time bucket of this
/// width (one entry per source and bucket), so a long wait costs memory in
/// proportion to its duration, not to the number of events.
const PENDING_BUCKET_MS: i64 = 60_000;

/// The largest step of the running router clock (see `SpendLedger::running`).
pub const RUNNING_STEP_MS: i64 = 5 * 60_000;

/// The shortest hold of an idle source's confirmation (see
/// [`SpendLedger::apply_forwarded`]); otherwise the receipt window.
const MIN_HOLD_MS: i64 = MS_PER_HOUR;

/// One source read side by side with others (a Kafka input partition).
#[derive(Clone, Debug)]
struct Source {
    /// Largest eventTimestamp among the source's *released* events since it
    /// last resumed; `i64::MIN` before any (e.g. expected, not yet heard
    /// from).
    released: i64,
    /// The source's events not yet released, because an idle source was
    /// last confirmed before they were forwarded: upper edge of their
    /// forwarding-time bucket -> largest eventTimestamp.
    pending: BTreeMap<i64, i64>,
    /// Set while the source is declared idle.
    idle: Option<Idle>,
}

impl Source {
    fn new() -> Source {
        Source {
            released: i64::MIN,
            pending: BTreeMap::new(),
            idle: None,
        }
    }

    /// Whether the source bounds the watermark: it is active, or idle with
    /// events still waiting (they were forwarded before its marker).
    fn bounds(&self) -> bool {
        self.idle.is_none() || !self.pending.is_empty()
    }

    /// The confirmation time of an idle source that still holds back what
    /// other sources forward after it.
    fn holding(&self, running: i64, hold_ms: i64) -> Option<i64> {
        self.idle
            .filter(|i| running.saturating_sub(i.run) <= hold_ms)
            .and_then(|i| i.at)
    }

    /// Records an event forwarded at `forwarded_at`: released at once
    /// unless an idle source was confirmed before it was forwarded.
    fn add(&mut self, ts: i64, forwarded_at: Option<i64>, horizon: Option<i64>) {
        match forwarded_at {
            Some(f) if !released_by(horizon, f) => {
                let edge = f
                    .div_euclid(PENDING_BUCKET_MS)
                    .saturating_add(1)
                    .saturating_mul(PENDING_BUCKET_MS);
                // An event below one released no later than it can never
                // raise anything: not kept.
                let below = self
                    .pending
                    .range(..=edge)
                    .next_back()
                    .map_or(i64::MIN, |(_, &e)| e)
                    .max(self.released);
                if ts > below {
                    let e = self.pending.entry(edge).or_insert(ts);
                    *e = (*e).max(ts);
                }
            }
            _ => self.released = self.released.max(ts),
        }
    }

    /// Releases every bucket the horizon has passed.
    fn release(&mut self, horizon: Option<i64>) {
        while let Some((&edge, &ts)) = self.pending.first_key_value() {
            if !released_by(horizon, edge) {
                break;
            }
            self.pending.remove(&edge);
            self.released = self.released.max(ts);
        }
    }
}

/// Whether an event forwarded at `f` is released under `horizon` (the
/// earliest confirmation time of the idle sources that hold; `None`: none).
fn released_by(horizon: Option<i64>, f: i64) -> bool {
    horizon.is_none_or(|h| f.saturating_add(ROUTER_CLOCK_MARGIN_MS) <= h)
}

/// A source declared idle.
#[derive(Clone, Copy, Debug)]
struct Idle {
    /// Router time at which it was last seen read to its end (`None`: a
    /// marker without a time, which holds nothing back).
    at: Option<i64>,
    /// The running clock when that was applied.
    run: i64,
}

/// Ordering key and cost of a priced event.
#[derive(Clone, Copy, Debug)]
struct Priced {
    ts: i64,
    ty: u32,
    cost: Usd,
}

/// eventType texts interned to small ids.
#[derive(Clone, Debug, Default)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.get(name) {
            return id;
        }
        // More than u32::MAX distinct eventTypes cannot happen in practice;
        // saturate rather than panic.
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.names.get(i))
            .map_or("", |s| s)
    }

    /// Lexicographic `(eventTimestamp, eventType text, cost)` comparison.
    fn cmp_priced(&self, a: Priced, b: Priced) -> Ordering {
        a.ts.cmp(&b.ts)
            .then_with(|| self.name(a.ty).cmp(self.name(b.ty)))
            .then_with(|| a.cost.cmp(&b.cost))
    }
}

fn add(a: Usd, b: Usd) -> Usd {
    Usd::from_units(a.units().saturating_add(b.units()))
}

fn sub(a: Usd, b: Usd) -> Usd {
    Usd::from_units(a.units().saturating_sub(b.units()))
}

/// The attribution month from the smallest timestamps of a message.
fn attribution_month(min_request_ts: Option<i64>, min_event_ts: i64) -> MonthKey {
    min_request_ts
        .and_then(MonthKey::from_epoch_ms)
        .unwrap_or_else(|| MonthKey::from_epoch_ms_saturating(min_event_ts))
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl SpendLedger {
    /// An empty ledger.
    pub fn new(cfg: &SpendConfig) -> Self {
        SpendLedger {
            include_carrier_fee: cfg.include_carrier_fee,
            window_ms: i64::from(cfg.receipt_window_hours).saturating_mul(MS_PER_HOUR),
            watermark: None,
            sources: HashMap::new(),
            router_clock: None,
            running: 0,
            hold_ms: i64::from(cfg.receipt_window_hours)
                .saturating_mul(MS_PER_HOUR)
                .max(MIN_HOLD_MS),
            entries: hashbrown::HashMap::new(),
            open_entries: BTreeMap::new(),
            totals: BTreeMap::new(),
            sealed: BTreeSet::new(),
            types: Interner::default(),
            dirty: None,
        }
    }

    /// The cost of one event, `None` when it carries neither price nor fee.
    fn event_cost(&self, ev: &DeliveryEvent) -> Option<Usd> {
        if !ev.is_priced() {
            return None;
        }
        let price = ev.total_message_price.unwrap_or(Usd::ZERO);
        Some(if self.include_carrier_fee {
            add(price, ev.total_carrier_fee.unwrap_or(Usd::ZERO))
        } else {
            price
        })
    }

    fn closed_at(&self, watermark: Option<i64>, month: MonthKey) -> bool {
        watermark.is_some_and(|w| w >= month.end_ms().saturating_add(self.window_ms))
    }

    /// Applies one delivery event and says what it changed.
    pub fn apply(&mut self, ev: &DeliveryEvent) -> LedgerOutcome {
        self.apply_at(ev, None)
    }

    /// Applies one delivery event read from a source position (a hash of
    /// topic, partition, offset and sub). A second application of the same
    /// position to a tracked message — a replay after a crash, as opposed to
    /// a redelivery by the bridge, which has its own position — changes
    /// nothing and is reported `replayed`.
    pub fn apply_at(&mut self, ev: &DeliveryEvent, position: Option<u64>) -> LedgerOutcome {
        let outcome = self.apply_inner(ev, position);
        self.advance_watermark(ev.event_timestamp);
        outcome
    }

    /// Like [`apply_at`](Self::apply_at) for an event read from `source` (an
    /// id of the stream it was read from, e.g. a hash of its Kafka topic and
    /// partition), one of several sources read side by side: the watermark
    /// only rises to the smallest of the active sources' largest timestamps.
    /// The same as [`apply_forwarded`](Self::apply_forwarded) without a
    /// forwarding time.
    pub fn apply_from(
        &mut self,
        ev: &DeliveryEvent,
        position: Option<u64>,
        source: u64,
    ) -> LedgerOutcome {
        self.apply_forwarded(ev, position, source, None)
    }

    /// Like [`apply_from`](Self::apply_from) for an event that a router
    /// forwarded at router time `forwarded_at` (its wall clock, written into
    /// the forwarded record).
    ///
    /// While a source is declared idle with a confirmation time `c`
    /// ([`source_idle_at`](Self::source_idle_at)), an event that another
    /// source forwarded later than `c - ROUTER_CLOCK_MARGIN_MS` does not
    /// raise the watermark yet: the idle source may have received records
    /// since `c` that its reader has not forwarded yet (a backlog arriving
    /// on every partition at once, read by one router before the others).
    /// The event counts for the watermark once every idle source has been
    /// confirmed again after it was forwarded (so any record appended to
    /// them before that has been seen), or has delivered again (it then
    /// holds the watermark by its own events), or has not been confirmed for
    /// longer than the hold (the receipt window, at least an hour, of router
    /// time while records keep arriving: its reader is gone, e.g. the topic
    /// left the configuration; this bounds memory). Without a forwarding
    /// time an event counts at once, as before idle markers had times.
    pub fn apply_forwarded(
        &mut self,
        ev: &DeliveryEvent,
        position: Option<u64>,
        source: u64,
        forwarded_at: Option<i64>,
    ) -> LedgerOutcome {
        let outcome = self.apply_inner(ev, position);
        if let Some(t) = forwarded_at {
            self.tick(t);
        }
        let s = self.sources.entry(source).or_insert_with(Source::new);
        if s.idle.is_some() {
            // It resumes: from now on it holds the watermark by its own new
            // events (a backlog may be older than what it delivered before),
            // and no longer holds back the others.
            *s = Source::new();
        }
        let horizon = self.horizon();
        if let Some(s) = self.sources.get_mut(&source) {
            s.add(ev.event_timestamp, forwarded_at, horizon);
        }
        self.settle(horizon);
        outcome
    }

    /// Declares the sources expected to deliver (e.g. every partition of the
    /// input topics): each holds the watermark back from the start, before
    /// its first event, until it delivers or is declared idle. Without this,
    /// the sources read first could close a month while a source not yet
    /// read (its reader not started, its partition not yet assigned) still
    /// holds events of it. Sources already known are left as they are.
    pub fn expect_sources(&mut self, sources: impl IntoIterator<Item = u64>) {
        for s in sources {
            self.sources.entry(s).or_insert_with(Source::new);
        }
    }

    /// Declares `source` caught up without a time: it stops holding the
    /// watermark back until its next event (which
    /// [`apply_from`](Self::apply_from) then counts again), and holds back
    /// nothing the others deliver meanwhile. What idle markers written
    /// before they carried a time mean; see
    /// [`source_idle_at`](Self::source_idle_at).
    pub fn source_idle(&mut self, source: u64) {
        self.source_idle_at(source, None);
    }

    /// Declares `source` caught up: its reader found it read to its end at
    /// router time `at` (taken before the check), so every record appended
    /// to it before `at` has been delivered. It stops holding the watermark
    /// back by its own events (those already delivered still count), and
    /// until it is confirmed again, what other sources forward after `at`
    /// waits (see [`apply_forwarded`](Self::apply_forwarded)). A repeated
    /// declaration moves `at` forward. `at = None` holds nothing back
    /// (the meaning of a marker without a time).
    pub fn source_idle_at(&mut self, source: u64, at: Option<i64>) {
        if let Some(t) = at {
            self.tick(t);
        }
        let run = self.running;
        match self.sources.get_mut(&source) {
            Some(s) => {
                let at = match (s.idle.and_then(|i| i.at), at) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (_, b) => b,
                };
                s.idle = Some(Idle { at, run });
            }
            None if at.is_some() => {
                let mut s = Source::new();
                s.idle = Some(Idle { at, run });
                self.sources.insert(source, s);
            }
            None => return,
        }
        let horizon = self.horizon();
        self.settle(horizon);
    }

    /// Advances the router clock to `t` (and the running clock with it, by
    /// at most [`RUNNING_STEP_MS`]).
    fn tick(&mut self, t: i64) {
        match self.router_clock {
            Some(c) if t <= c => {}
            Some(c) => {
                let step = t.saturating_sub(c).min(RUNNING_STEP_MS);
                self.running = self.running.saturating_add(step);
                self.router_clock = Some(t);
            }
            None => self.router_clock = Some(t),
        }
    }

    /// The earliest confirmation time among the idle sources that hold
    /// (`None`: none holds).
    fn horizon(&self) -> Option<i64> {
        let (running, hold) = (self.running, self.hold_ms);
        self.sources
            .values()
            .filter_map(|s| s.holding(running, hold))
            .min()
    }

    /// Releases what `horizon` allows, raises the watermark to the smallest
    /// released progress of the sources that bound it (nothing when none
    /// does), and forgets idle sources that bound nothing and no longer hold.
    fn settle(&mut self, horizon: Option<i64>) {
        let (running, hold) = (self.running, self.hold_ms);
        let mut low: Option<i64> = None;
        let mut forget = false;
        for s in self.sources.values_mut() {
            // An idle source whose last events are released now still
            // counts this once.
            let bounds = s.bounds();
            s.release(horizon);
            if bounds {
                low = Some(low.map_or(s.released, |l| l.min(s.released)));
            }
            forget |= !s.bounds() && s.holding(running, hold).is_none();
        }
        if forget {
            self.sources
                .retain(|_, s| s.bounds() || s.holding(running, hold).is_some());
        }
        if let Some(low) = low {
            self.advance_watermark(low);
        }
    }

    fn apply_inner(&mut self, ev: &DeliveryEvent, position: Option<u64>) -> LedgerOutcome {
        let own_cost = self.event_cost(ev);
        let key = KeyRef::of(&ev.message_id);
        let Some(entry) = self.entries.get(&key) else {
            return self.apply_new(ev, own_cost, position, key);
        };
        let view = entry.view();
        let old = view.fields;
        if let Some(pos) = position {
            if view.has_position(pos) {
                return LedgerOutcome {
                    month: old.month,
                    channel: old.channel,
                    cost: old.counted(),
                    duplicate: true,
                    late: false,
                    replayed: true,
                    month_to_date: self.total(old.month, old.channel),
                    changed: Vec::new(),
                };
            }
        }

        let min_request_ts = min_opt(old.min_request_ts, ev.message_request_timestamp);
        let min_event_ts = old.min_event_ts.min(ev.event_timestamp);
        let old_month = old.month;
        let new_month = attribution_month(min_request_ts, min_event_ts);
        let channel = old.channel;
        let ty_known = self.types.get(&ev.event_type);
        let duplicate = ty_known.is_some_and(|ty| view.has_seen(ty, ev.event_timestamp));
        if new_month != old_month && self.sealed.contains(&new_month) {
            return LedgerOutcome {
                month: new_month,
                channel,
                cost: own_cost.unwrap_or(Usd::ZERO),
                duplicate,
                late: true,
                replayed: false,
                month_to_date: self.total(new_month, channel),
                changed: Vec::new(),
            };
        }

        let ty = self.types.intern(&ev.event_type);
        let mut best = old.best;
        if let Some(cost) = own_cost {
            let cand = Priced {
                ts: ev.event_timestamp,
                ty,
                cost,
            };
            if best.is_none_or(|b| self.types.cmp_priced(cand, b) == Ordering::Greater) {
                best = Some(cand);
            }
        }
        let fields = Fields {
            channel,
            month: new_month,
            min_event_ts,
            min_request_ts,
            best,
        };
        let seen = (!duplicate).then_some((ty, ev.event_timestamp));
        let updated = Entry::updated(&view, &fields, seen, position);
        if let Some(e) = self.entries.get_mut(&key) {
            *e = updated;
        }
        if let Some(d) = self.dirty.as_mut() {
            d.insert(key.to_owned_key());
        }
        let (old_cost, new_cost) = (old.counted(), fields.counted());

        let mut changed = Vec::new();
        if new_month != old_month {
            self.move_entry_month(old_month, new_month);
            let old = self.bump(old_month, channel, sub(Usd::ZERO, old_cost), -1);
            changed.push((old_month, channel, old));
            let new = self.bump(new_month, channel, new_cost, 1);
            changed.push((new_month, channel, new));
        } else if new_cost != old_cost {
            let t = self.bump(new_month, channel, sub(new_cost, old_cost), 0);
            changed.push((new_month, channel, t));
        }
        LedgerOutcome {
            month: new_month,
            channel,
            cost: new_cost,
            duplicate,
            late: false,
            replayed: false,
            month_to_date: self.total(new_month, channel),
            changed,
        }
    }

    /// First event of a message that has no entry.
    fn apply_new(
        &mut self,
        ev: &DeliveryEvent,
        own_cost: Option<Usd>,
        position: Option<u64>,
        key: KeyRef<'_>,
    ) -> LedgerOutcome {
        let month = attribution_month(ev.message_request_timestamp, ev.event_timestamp);
        let channel = ev.channel;
        if self.sealed.contains(&month) {
            return LedgerOutcome {
                month,
                channel,
                cost: own_cost.unwrap_or(Usd::ZERO),
                duplicate: false,
                late: true,
                replayed: false,
                month_to_date: self.total(month, channel),
                changed: Vec::new(),
            };
        }
        let ty = self.types.intern(&ev.event_type);
        let fields = Fields {
            channel,
            month,
            min_event_ts: ev.event_timestamp,
            min_request_ts: ev.message_request_timestamp,
            best: own_cost.map(|cost| Priced {
                ts: ev.event_timestamp,
                ty,
                cost,
            }),
        };
        let cost = fields.counted();
        let key = key.to_owned_key();
        if let Some(d) = self.dirty.as_mut() {
            d.insert(key.clone());
        }
        self.entries
            .insert(key, Entry::new(&fields, (ty, ev.event_timestamp), position));
        *self.open_entries.entry(month).or_insert(0) += 1;
        let t = self.bump(month, channel, cost, 1);
        LedgerOutcome {
            month,
            channel,
            cost,
            duplicate: false,
            late: false,
            replayed: false,
            month_to_date: t,
            changed: vec![(month, channel, t)],
        }
    }

    /// Moves one entry's count from `from` to `to` in the per-month index.
    fn move_entry_month(&mut self, from: MonthKey, to: MonthKey) {
        if let Some(n) = self.open_entries.get_mut(&from) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open_entries.remove(&from);
            }
        }
        *self.open_entries.entry(to).or_insert(0) += 1;
    }

    /// Adds `spend` and `messages` to a bucket and returns its new totals. A
    /// bucket left with no message and no spend is removed.
    fn bump(&mut self, month: MonthKey, channel: Channel, spend: Usd, messages: i64) -> Totals {
        let t = self.totals.entry((month, channel)).or_default();
        t.spend = add(t.spend, spend);
        t.messages = t.messages.saturating_add_signed(messages);
        let out = *t;
        if out == Totals::default() {
            self.totals.remove(&(month, channel));
        }
        out
    }

    /// Raises the watermark and drops the entries of months that closed.
    fn advance_watermark(&mut self, ts: i64) {
        if self.watermark.is_some_and(|w| w >= ts) {
            return;
        }
        self.watermark = Some(ts);
        let mut last_closed = None;
        while let Some((&month, _)) = self.open_entries.first_key_value() {
            if !self.closed_at(self.watermark, month) {
                break;
            }
            self.open_entries.remove(&month);
            self.sealed.insert(month);
            last_closed = Some(month);
        }
        // Months close in order, so every entry of a closed month has a month
        // <= the last one that closed.
        if let Some(last) = last_closed {
            match self.dirty.as_mut() {
                Some(dirty) => self.entries.retain(|k, e| {
                    let keep = e.month() > last;
                    if !keep {
                        dirty.insert(k.clone());
                    }
                    keep
                }),
                None => self.entries.retain(|_, e| e.month() > last),
            }
        }
    }

    /// Totals of every (month, channel) bucket with at least one message,
    /// sorted by month, then channel.
    pub fn totals(&self) -> Vec<(MonthKey, Channel, Totals)> {
        self.totals.iter().map(|(&(m, c), &t)| (m, c, t)).collect()
    }

    /// Totals of one bucket (zero when it has no message).
    pub fn total(&self, month: MonthKey, channel: Channel) -> Totals {
        self.totals
            .get(&(month, channel))
            .copied()
            .unwrap_or_default()
    }

    /// Number of messages currently tracked (those of open months).
    pub fn tracked_messages(&self) -> usize {
        self.entries.len()
    }

    /// Largest eventTimestamp seen so far.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// True once `month` is closed: the watermark is past its end plus the
    /// receipt window.
    pub fn is_closed(&self, month: MonthKey) -> bool {
        self.closed_at(self.watermark, month)
    }

    /// True once `month`'s entries were dropped: its totals are final and
    /// events of messages no longer tracked are not counted.
    pub fn is_sealed(&self, month: MonthKey) -> bool {
        self.sealed.contains(&month)
    }
}
