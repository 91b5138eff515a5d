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
//! packed, as the bytes of its changelog value (`ledger/entry.rs`), under a key that
//! holds a UUID messageId in 16 bytes (`ledger/key.rs`): about 106 bytes of heap per
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
mod sources;

use entry::{Entry, Fields};
use key::{KeyRef, MessageKey};
pub use snapshot::{LedgerChanges, SnapshotError};
use sources::{Source, MIN_HOLD_MS};
pub use sources::{ROUTER_CLOCK_MARGIN_MS, RUNNING_STEP_MS};

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
