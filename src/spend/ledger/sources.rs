//! The watermark of events read from several sources side by side (the
//! partitions of a Kafka input topic, each in order but at its own pace):
//! each source's progress, idle sources and what they hold back, the
//! router's running clock. The rules are in the ledger's documentation
//! ("Closed months and late events"); [`SpendLedger::apply_forwarded`] and
//! [`SpendLedger::source_idle_at`] are where they are applied.

use std::collections::BTreeMap;

use super::{SpendLedger, MS_PER_HOUR};
use crate::model::DeliveryEvent;
use crate::spend::LedgerOutcome;

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
pub(super) const MIN_HOLD_MS: i64 = MS_PER_HOUR;

/// One source read side by side with others (a Kafka input partition).
#[derive(Clone, Debug)]
pub(super) struct Source {
    /// Largest eventTimestamp among the source's *released* events since it
    /// last resumed; `i64::MIN` before any (e.g. expected, not yet heard
    /// from).
    pub(super) released: i64,
    /// The source's events not yet released, because an idle source was
    /// last confirmed before they were forwarded: upper edge of their
    /// forwarding-time bucket -> largest eventTimestamp.
    pub(super) pending: BTreeMap<i64, i64>,
    /// Set while the source is declared idle.
    pub(super) idle: Option<Idle>,
}

impl Source {
    pub(super) fn new() -> Source {
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
pub(super) struct Idle {
    /// Router time at which it was last seen read to its end (`None`: a
    /// marker without a time, which holds nothing back).
    pub(super) at: Option<i64>,
    /// The running clock when that was applied.
    pub(super) run: i64,
}

impl SpendLedger {
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
}
