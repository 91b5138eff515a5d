//! The stages of the Kafka runtime, run as several "instances" over a
//! partitioned stream in an arbitrary interleaving, with replays, give the
//! results of one `Core` reading the same records: the same spend totals,
//! the same alarm and limit record ids, the same opt-out table, every input
//! payload enriched exactly once (replays suppressed). Pure simulation: the
//! broker is replaced by per-partition FIFO queues; what it checks is the
//! data flow, not Kafka.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::decode::RecordSource;
use smsvoice::enrich::Outputs;
use smsvoice::generate::{generate, Rng, Workload};
use smsvoice::limits::Limits;
use smsvoice::model::Provenance;
use smsvoice::spend::AlarmRecord;
use smsvoice::stages::message_owner::{MessageOwner, OwnerOutputs};
use smsvoice::stages::optout_owner::{OptOutOutputs, OptOutOwner};
use smsvoice::stages::router::{route, route_at, IdleTracker, Routed};
use smsvoice::stages::totals::TotalsOwner;
use smsvoice::stages::view::{PartialTotal, View};

const INPUT_PARTITIONS: usize = 4;
const OWNER_PARTITIONS: usize = 6;
const TOTALS_PARTITIONS: usize = 3;

fn config() -> Config {
    Config::from_toml(EMBEDDED_DEFAULT, "embedded").expect("embedded config")
}

fn fnv(s: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 1_000_003) as usize
}

fn alarm_id(a: &AlarmRecord) -> String {
    match a {
        AlarmRecord::AlarmStateChange { id, .. } | AlarmRecord::LimitReached { id, .. } => {
            id.clone()
        }
    }
}

struct Reference {
    totals: BTreeMap<(String, String), (String, u64)>,
    alarm_ids: BTreeSet<String>,
    optouts: BTreeMap<(String, String), bool>,
    record_ids: BTreeSet<String>,
    dead: usize,
}

/// One core over the input partitions read one after the other.
fn reference(cfg: &Config, parts: &[Vec<Vec<u8>>]) -> Reference {
    let mut core = Core::new(cfg);
    let mut out = Outputs::default();
    let mut alarm_ids = BTreeSet::new();
    let mut record_ids = BTreeSet::new();
    let mut dead = 0;
    for (p, recs) in parts.iter().enumerate() {
        for (o, r) in recs.iter().enumerate() {
            let src = RecordSource {
                source: Arc::from("events"),
                partition: Some(p as i32),
                offset: o as i64,
                timestamp_ms: None,
            };
            core.process(r, &src, &mut out);
            alarm_ids.extend(out.alarms.iter().map(alarm_id));
            record_ids.extend(out.events.iter().map(|e| e.enrichment.record_id.clone()));
            record_ids.extend(out.inbound.iter().map(|e| e.enrichment.record_id.clone()));
            dead += out.dead_letters.len();
            out.clear();
        }
    }
    Reference {
        totals: core
            .spend_totals()
            .into_iter()
            .map(|s| {
                (
                    (s.month.to_string(), s.channel.to_string()),
                    (s.spend_usd.to_string(), s.messages),
                )
            })
            .collect(),
        alarm_ids,
        optouts: core
            .optout_table()
            .into_iter()
            .map(|o| ((o.opt_out_list, o.number), o.opted_out))
            .collect(),
        record_ids,
        dead,
    }
}

fn internal(p: usize, o: usize) -> Provenance {
    Provenance {
        source: Arc::from("internal"),
        partition: Some(p as i32),
        offset: o as i64,
        sub: 0,
    }
}

/// Runs the stages with queues between them, picking the next queue to
/// serve at random; `replay_pct` of forwarded records are delivered twice
/// (as after a router crash before its commit).
fn staged(cfg: &Config, parts: &[Vec<Vec<u8>>], seed: u64, replay_pct: u32) -> Reference {
    let mut rng = Rng::new(seed);
    // Stage 1: route every input partition (order within a partition kept).
    let mut event_q: Vec<VecDeque<Vec<u8>>> = vec![VecDeque::new(); OWNER_PARTITIONS];
    let mut inbound_q: Vec<VecDeque<Vec<u8>>> = vec![VecDeque::new(); OWNER_PARTITIONS];
    let mut dead = 0;
    let mut cursors = vec![0usize; parts.len()];
    let mut routed = Vec::new();
    loop {
        let live: Vec<usize> = (0..parts.len())
            .filter(|&p| cursors[p] < parts[p].len())
            .collect();
        if live.is_empty() {
            break;
        }
        let p = live[rng.below(live.len() as u64) as usize];
        let src = RecordSource {
            source: Arc::from("events"),
            partition: Some(p as i32),
            offset: cursors[p] as i64,
            timestamp_ms: None,
        };
        route(&parts[p][cursors[p]], &src, &mut routed);
        cursors[p] += 1;
        for r in routed.drain(..) {
            match r {
                Routed::Event { message_id, record } => {
                    let q = &mut event_q[fnv(&message_id) % OWNER_PARTITIONS];
                    if rng.pct(replay_pct) {
                        q.push_back(record.clone());
                    }
                    q.push_back(record);
                }
                Routed::Inbound { customer, record } => {
                    let q = &mut inbound_q[fnv(&customer) % OWNER_PARTITIONS];
                    if rng.pct(replay_pct) {
                        q.push_back(record.clone());
                    }
                    q.push_back(record);
                }
                Routed::Dead(_) => dead += 1,
            }
        }
    }
    // Stages 2a, 2b and 3, interleaved at random.
    let mut view = View::new(&cfg.optout);
    let mut owners: Vec<MessageOwner> = (0..OWNER_PARTITIONS)
        .map(|p| MessageOwner::new(&cfg.spend, p as i32))
        .collect();
    let mut optout_owners: Vec<OptOutOwner> = (0..OWNER_PARTITIONS)
        .map(|_| OptOutOwner::new(&cfg.optout))
        .collect();
    let mut totals: Vec<TotalsOwner> = (0..TOTALS_PARTITIONS)
        .map(|_| TotalsOwner::new(&cfg.spend))
        .collect();
    let mut partial_q: Vec<VecDeque<PartialTotal>> = vec![VecDeque::new(); TOTALS_PARTITIONS];
    let mut alarm_ids = BTreeSet::new();
    let mut record_ids = BTreeSet::new();
    let mut enriched = 0usize;
    let mut o_out = OwnerOutputs::default();
    let mut i_out = OptOutOutputs::default();
    let mut offsets = [0usize; OWNER_PARTITIONS * 2];
    loop {
        let mut live = Vec::new();
        live.extend((0..OWNER_PARTITIONS).filter(|&p| !event_q[p].is_empty()));
        live.extend(
            (0..OWNER_PARTITIONS)
                .filter(|&p| !inbound_q[p].is_empty())
                .map(|p| p + OWNER_PARTITIONS),
        );
        live.extend(
            (0..TOTALS_PARTITIONS)
                .filter(|&p| !partial_q[p].is_empty())
                .map(|p| p + 2 * OWNER_PARTITIONS),
        );
        if live.is_empty() {
            break;
        }
        let k = live[rng.below(live.len() as u64) as usize];
        if k < OWNER_PARTITIONS {
            let rec = event_q[k].pop_front().expect("non-empty");
            owners[k].process(&rec, &internal(k, offsets[k]), &view, &mut o_out);
            offsets[k] += 1;
            assert!(o_out.dead_letters.is_empty(), "{:?}", o_out.dead_letters);
            for e in o_out.events.drain(..) {
                enriched += 1;
                assert!(
                    record_ids.insert(e.enrichment.record_id.clone()),
                    "record {} enriched twice",
                    e.enrichment.record_id
                );
            }
            for p in o_out.partials.drain(..) {
                // Replicated to every instance (here: at once) and sent to
                // the totals owner of (month, channel).
                view.apply_partial(&p);
                let q = fnv(&format!("{}|{}", p.month, p.channel)) % TOTALS_PARTITIONS;
                partial_q[q].push_back(p);
                // at-least-once: sometimes the same absolute value twice
                if rng.pct(replay_pct) {
                    partial_q[q].push_back(p);
                }
            }
        } else if k < 2 * OWNER_PARTITIONS {
            let p = k - OWNER_PARTITIONS;
            let rec = inbound_q[p].pop_front().expect("non-empty");
            optout_owners[p].process(&rec, &internal(k, offsets[k]), &mut i_out);
            offsets[k] += 1;
            assert!(i_out.dead_letters.is_empty());
            for c in i_out.changes.drain(..) {
                view.apply_optout(&c);
            }
            for e in i_out.inbound.drain(..) {
                enriched += 1;
                // Inbound replays are re-emitted with the same record id.
                record_ids.insert(e.enrichment.record_id.clone());
            }
            i_out.clear();
        } else {
            let q = k - 2 * OWNER_PARTITIONS;
            let p = partial_q[q].pop_front().expect("non-empty");
            let mut records = Vec::new();
            totals[q].apply(&p, &mut records);
            for a in &records {
                assert!(
                    alarm_ids.insert(alarm_id(a)),
                    "alarm {} emitted twice",
                    alarm_id(a)
                );
            }
        }
    }
    assert!(enriched >= record_ids.len());
    let mut all_totals = BTreeMap::new();
    for t in &totals {
        for (m, c, tot) in t.totals() {
            all_totals.insert(
                (m.to_string(), c.to_string()),
                (tot.spend.to_string(), tot.messages),
            );
        }
    }
    let mut optouts = BTreeMap::new();
    for o in &optout_owners {
        for (l, n, s) in o.engine().entries() {
            optouts.insert((l.to_owned(), n.to_owned()), s);
        }
    }
    // The replicated view agrees with the owners.
    let replicated: BTreeMap<(String, String), bool> = view
        .optout()
        .entries()
        .into_iter()
        .map(|(l, n, s)| ((l.to_owned(), n.to_owned()), s))
        .collect();
    assert_eq!(replicated, optouts, "replicated opt-out table");
    Reference {
        totals: all_totals,
        alarm_ids,
        optouts,
        record_ids,
        dead,
    }
}

fn partitioned(records: Vec<Vec<u8>>, seed: u64) -> Vec<Vec<Vec<u8>>> {
    // Events of one message deliberately spread: records go to input
    // partitions at random, not by key.
    let mut rng = Rng::new(seed);
    let mut parts = vec![Vec::new(); INPUT_PARTITIONS];
    for r in records {
        parts[rng.below(INPUT_PARTITIONS as u64) as usize].push(r);
    }
    parts
}

#[test]
fn any_split_over_instances_equals_one_core() {
    let cfg = config();
    for seed in [11, 12, 13] {
        let g = generate(&Workload {
            seed,
            messages: 2_000,
            ..Workload::default()
        });
        let truth_spend: BTreeMap<(String, String), i128> = g.truth.spend_units.clone();
        let parts = partitioned(g.records, seed);
        let one = reference(&cfg, &parts);
        let many = staged(&cfg, &parts, seed * 7, 5);
        assert_eq!(many.totals, one.totals, "totals, seed {seed}");
        // and both equal the generator's independent truth
        let spend_units: BTreeMap<(String, String), i128> = one
            .totals
            .iter()
            .map(|(k, (s, _))| {
                let u = smsvoice::money::Usd::parse_exact(s)
                    .expect("decimal")
                    .units();
                (k.clone(), u)
            })
            .collect();
        assert_eq!(spend_units, truth_spend, "truth, seed {seed}");
        assert!(!one.alarm_ids.is_empty(), "the scenario fires alarms");
        assert_eq!(many.alarm_ids, one.alarm_ids, "alarm ids, seed {seed}");
        assert_eq!(many.optouts, one.optouts, "opt-out table, seed {seed}");
        assert_eq!(
            many.record_ids, one.record_ids,
            "enriched record ids, seed {seed}"
        );
        assert_eq!(many.dead, one.dead, "dead letters, seed {seed}");
    }
}

#[test]
fn totals_owner_restored_from_its_changelog_continues_identically() {
    let cfg = config();
    let g = generate(&Workload {
        seed: 5,
        messages: 1_500,
        envelopes: false,
        ..Workload::default()
    });
    // Partials from one message owner, in order.
    let view = View::new(&cfg.optout);
    let mut owner = MessageOwner::new(&cfg.spend, 0);
    let mut out = OwnerOutputs::default();
    let mut partials = Vec::new();
    for (i, r) in g.records.iter().enumerate() {
        let mut routed = Vec::new();
        let src = RecordSource {
            source: Arc::from("events"),
            partition: Some(0),
            offset: i as i64,
            timestamp_ms: None,
        };
        route(r, &src, &mut routed);
        for x in routed {
            if let Routed::Event { record, .. } = x {
                owner.process(&record, &internal(0, i), &view, &mut out);
                partials.append(&mut out.partials);
                out.clear();
            }
        }
    }
    let half = partials.len() / 2;
    let mut straight = TotalsOwner::new(&cfg.spend);
    let mut straight_alarms = Vec::new();
    for p in &partials {
        straight.apply(p, &mut straight_alarms);
    }
    // Crash after half: restore from the last changelog value of each key,
    // then replay from the last committed position (a few already applied).
    let mut first = TotalsOwner::new(&cfg.spend);
    let mut alarms = Vec::new();
    let mut changelog = BTreeMap::new();
    for p in &partials[..half] {
        if let Some(s) = first.apply(p, &mut alarms) {
            changelog.insert(s.key(), s);
        }
    }
    let mut restored = TotalsOwner::new(&cfg.spend);
    for s in changelog.values() {
        // the changelog value survives serialisation
        let json = serde_json::to_vec(s).expect("serializes");
        let back = serde_json::from_slice(&json).expect("deserializes");
        restored.restore(&back);
    }
    for p in &partials[half.saturating_sub(50)..] {
        restored.apply(p, &mut alarms);
    }
    assert_eq!(restored.totals(), straight.totals());
    let ids = |v: &[AlarmRecord]| v.iter().map(alarm_id).collect::<Vec<_>>();
    assert_eq!(
        ids(&alarms),
        ids(&straight_alarms),
        "no alarm repeated or renumbered"
    );
    assert!(!straight_alarms.is_empty());
}

// ---------------------------------------------------------------------------
// Months across partitions: idle partitions and backlogs.
//
// A small model of the Kafka runtime without Kafka: one router instance per
// input partition (as when every instance owns one partition), a broker that
// holds what has been appended to each input partition so far, FIFO queues
// for the events-by-message partitions, and the message owners. The router
// model does what `src/runtime/router.rs` does: it forwards each record it
// reads and, at an idle check, declares its partition idle (a marker to
// every owner partition) when it has read everything appended so far.

const DAY: i64 = 86_400_000;
/// 2025-11-10T00:00:00Z: the routers run after the data's times.
const CLOCK_START: i64 = 1_762_732_800_000;

/// One router instance: the idle-marker logic of `src/runtime/router.rs`.
struct SimRouter {
    tracker: IdleTracker,
}

impl SimRouter {
    fn new(partition: usize) -> SimRouter {
        let mut tracker = IdleTracker::new();
        // Assigned: declared idle once read to its end.
        tracker.active("events", partition as i32);
        SimRouter { tracker }
    }

    fn read(&mut self, partition: usize) {
        self.tracker.active("events", partition as i32);
    }

    /// The markers this router sends at an idle check at router time `now`.
    fn idle_check(&mut self, _partition: usize, now: i64, caught_up: bool) -> Vec<Vec<u8>> {
        let mut markers = Vec::new();
        self.tracker
            .due(now, &mut |_, _| caught_up, &mut |d| markers.push(d.marker));
        markers
    }
}

struct Pipeline {
    /// Everything each input partition will ever hold, in order.
    parts: Vec<Vec<Vec<u8>>>,
    /// How much of each input partition has been appended so far.
    appended: Vec<usize>,
    /// Each router's position in its partition.
    read: Vec<usize>,
    routers: Vec<SimRouter>,
    /// The routers' wall clock (ms).
    clock: i64,
    queues: Vec<VecDeque<Vec<u8>>>,
    offsets: Vec<usize>,
    /// What each owner processed, in order: its partition's log.
    logs: Vec<Vec<Vec<u8>>>,
    owners: Vec<MessageOwner>,
    view: View,
    out: OwnerOutputs,
    routed: Vec<Routed>,
}

impl Pipeline {
    fn new(cfg: &Config, parts: Vec<Vec<Vec<u8>>>) -> Pipeline {
        let n = parts.len();
        let owners = (0..OWNER_PARTITIONS)
            .map(|q| {
                let mut o = MessageOwner::new(&cfg.spend, q as i32);
                // As the runtime does: every input partition is expected.
                o.expect_streams((0..n).map(|p| ("events", p as i32)));
                o
            })
            .collect();
        Pipeline {
            parts,
            appended: vec![0; n],
            read: vec![0; n],
            routers: (0..n).map(SimRouter::new).collect(),
            clock: CLOCK_START,
            queues: vec![VecDeque::new(); OWNER_PARTITIONS],
            offsets: vec![0; OWNER_PARTITIONS],
            logs: vec![Vec::new(); OWNER_PARTITIONS],
            owners,
            view: View::new(&config().optout),
            out: OwnerOutputs::default(),
            routed: Vec::new(),
        }
    }

    /// Appends records to input partition `p` up to `upto` (a count).
    fn append(&mut self, p: usize, upto: usize) {
        self.appended[p] = upto.min(self.parts[p].len()).max(self.appended[p]);
    }

    fn caught_up(&self, p: usize) -> bool {
        self.read[p] >= self.appended[p]
    }

    /// Router `p` reads and forwards its next appended record; false when
    /// it has nothing to read.
    fn read_one(&mut self, p: usize) -> bool {
        if self.caught_up(p) {
            return false;
        }
        let src = RecordSource {
            source: Arc::from("events"),
            partition: Some(p as i32),
            offset: self.read[p] as i64,
            timestamp_ms: Some(self.clock),
        };
        route_at(
            &self.parts[p][self.read[p]],
            &src,
            &Limits::DEFAULT,
            Some(self.clock),
            &mut self.routed,
        );
        self.read[p] += 1;
        self.routers[p].read(p);
        for r in self.routed.drain(..) {
            if let Routed::Event { message_id, record } = r {
                self.queues[fnv(&message_id) % OWNER_PARTITIONS].push_back(record);
            }
        }
        self.clock += 1;
        true
    }

    /// Router `p` reads everything appended to its partition.
    fn read_all(&mut self, p: usize) {
        while self.read_one(p) {}
    }

    /// Router `p`'s idle check: markers to every owner partition.
    fn idle_check(&mut self, p: usize) {
        let caught_up = self.caught_up(p);
        for m in self.routers[p].idle_check(p, self.clock, caught_up) {
            for q in &mut self.queues {
                q.push_back(m.clone());
            }
        }
    }

    fn idle_checks(&mut self) {
        for p in 0..self.parts.len() {
            self.idle_check(p);
        }
    }

    /// Advances the routers' clock.
    fn wait(&mut self, ms: i64) {
        self.clock += ms;
    }

    /// Owner partition `q` processes its next queued record.
    fn process_one(&mut self, q: usize) -> bool {
        let Some(rec) = self.queues[q].pop_front() else {
            return false;
        };
        self.owners[q].process(
            &rec,
            &internal(q, self.offsets[q]),
            &self.view,
            &mut self.out,
        );
        self.offsets[q] += 1;
        self.logs[q].push(rec);
        assert!(
            self.out.dead_letters.is_empty(),
            "{:?}",
            self.out.dead_letters
        );
        for p in self.out.partials.drain(..) {
            self.view.apply_partial(&p);
        }
        self.out.clear();
        true
    }

    /// Every owner processes everything queued for it.
    fn drain(&mut self) {
        for q in 0..OWNER_PARTITIONS {
            while self.process_one(q) {}
        }
    }

    /// Spend (10^-10 USD) and messages per (month, channel), summed over
    /// the owners' partials.
    fn totals(&self) -> BTreeMap<(String, String), (i128, u64)> {
        let mut all = BTreeMap::new();
        for o in &self.owners {
            for p in o.partials() {
                let e: &mut (i128, u64) = all
                    .entry((p.month.to_string(), p.channel.to_string()))
                    .or_default();
                e.0 += p.spend_usd.units();
                e.1 += p.messages;
            }
        }
        all
    }
}

/// The generator's truth in the same shape as [`Pipeline::totals`].
fn truth_totals(t: &smsvoice::generate::Truth) -> BTreeMap<(String, String), (i128, u64)> {
    t.spend_units
        .iter()
        .map(|(k, &s)| (k.clone(), (s, t.messages.get(k).copied().unwrap_or(0))))
        .collect()
}

/// What differs between `got` and `want`, one line per key.
fn diff(
    got: &BTreeMap<(String, String), (i128, u64)>,
    want: &BTreeMap<(String, String), (i128, u64)>,
) -> String {
    let keys: BTreeSet<_> = got.keys().chain(want.keys()).collect();
    let mut s = String::new();
    for k in keys {
        let (g, w) = (
            got.get(k).copied().unwrap_or_default(),
            want.get(k).copied().unwrap_or_default(),
        );
        if g != w {
            s.push_str(&format!(
                "\n  {} {}: counted {} messages {} USD, truth {} messages {} USD (missing {} messages, {} USD)",
                k.0,
                k.1,
                g.1,
                smsvoice::money::Usd::from_units(g.0),
                w.1,
                smsvoice::money::Usd::from_units(w.0),
                w.1 as i64 - g.1 as i64,
                smsvoice::money::Usd::from_units(w.0 - g.0),
            ));
        }
    }
    s
}

fn month(s: &str) -> smsvoice::spend::MonthKey {
    s.parse().expect("month")
}

/// Issue 12, item 6: every input partition is idle (read to its end,
/// declared idle to every owner), then a backlog spanning October's close
/// plus the 72 h receipt window arrives on all of them and the routers get
/// to it one after the other. The partition read first must not close
/// October while the others' October events are still to be read.
#[test]
fn a_resumed_partition_does_not_close_a_month_while_the_others_are_idle() {
    let cfg = config();
    let mut lost = String::new();
    for seed in [31, 32, 33] {
        let g = generate(&Workload {
            seed,
            messages: 3_000,
            // 2025-10-30 .. 2025-11-05: past October's close (11-04T00:00Z)
            span_ms: 6 * DAY,
            ..Workload::default()
        });
        let truth = truth_totals(&g.truth);
        let mut sim = Pipeline::new(&cfg, partitioned(g.records, seed));
        let n = sim.parts.len();
        // Live traffic up to about Oct 30 22:00, read as it arrives.
        for p in 0..n {
            let upto = sim.parts[p].len() * 15 / 100;
            sim.append(p, upto);
        }
        loop {
            // One record from every partition per round.
            let mut any = false;
            for p in 0..n {
                any |= sim.read_one(p);
            }
            if !any {
                break;
            }
            sim.drain();
        }
        // Every partition is read to its end and declared idle; the routers
        // stay idle for an hour (an outage upstream), checking every second.
        for _ in 0..3_600 {
            sim.idle_checks();
            sim.drain();
            sim.wait(1_000);
        }
        // The backlog (Oct 30 22:00 .. Nov 5) arrives on every partition at
        // once; router 0 gets to it first, then 1, 2, 3. Each router keeps
        // running its idle checks (they find their partitions behind).
        for p in 0..n {
            let len = sim.parts[p].len();
            sim.append(p, len);
        }
        for p in 0..n {
            sim.read_all(p);
            sim.drain();
            sim.idle_checks();
            sim.drain();
            sim.wait(1_000);
        }
        // Everything read; the routers go idle again.
        for _ in 0..600 {
            sim.idle_checks();
            sim.drain();
            sim.wait(1_000);
        }
        let got = sim.totals();
        if got != truth {
            lost.push_str(&format!("\nseed {seed}:{}", diff(&got, &truth)));
        }
        // The scenario did reach October's close, and no later one.
        for o in &sim.owners {
            assert!(o.ledger().is_closed(month("2025-10")), "seed {seed}");
            assert!(!o.ledger().is_closed(month("2025-11")), "seed {seed}");
        }
    }
    assert!(lost.is_empty(), "spend lost to an early month close:{lost}");
}

/// The same model in random interleavings: the stream (in time order) is
/// appended to the input partitions in chunks, each chunk to all of them at
/// once, with idle periods in between; routers read, run idle checks and
/// let their clock run, owners process, all at random. Whatever the order,
/// every message is counted (the generator's truth), October closes, and
/// replaying each owner's log (markers included), as a restore does,
/// rebuilds the same state.
#[test]
fn idle_periods_and_backlogs_in_any_interleaving_count_every_message() {
    let cfg = config();
    let mut lost = String::new();
    for seed in 41..49_u64 {
        let g = generate(&Workload {
            seed,
            messages: 2_000,
            span_ms: 6 * DAY,
            ..Workload::default()
        });
        let truth = truth_totals(&g.truth);
        let mut sim = Pipeline::new(&cfg, partitioned(g.records, seed));
        let n = sim.parts.len();
        let mut rng = Rng::new(seed * 101);
        // Chunk ends (percent of the stream): live traffic, then backlogs
        // that span October's close plus the receipt window.
        let first = 5 + rng.below(25) as usize;
        let second = (first + 50 + rng.below(20) as usize).min(100);
        let ends = [first, second, 100];
        // Routers read at different speeds (one per instance: some start
        // late, some are slow): weights for picking the next to read.
        let speeds: Vec<u64> = (0..n).map(|_| 1 + rng.below(4) * rng.below(10)).collect();
        let total_speed: u64 = speeds.iter().sum();
        let mut chunk = 0;
        loop {
            let done = chunk == ends.len()
                && (0..n).all(|p| sim.caught_up(p))
                && sim.queues.iter().all(VecDeque::is_empty);
            if done {
                break;
            }
            match rng.below(100) {
                0 if chunk < ends.len() => {
                    for p in 0..n {
                        let upto = sim.parts[p].len() * ends[chunk] / 100;
                        sim.append(p, upto);
                    }
                    chunk += 1;
                }
                0..=39 => {
                    // Mostly short reads, sometimes a router races ahead.
                    let mut pick = rng.below(total_speed);
                    let mut p = 0;
                    while pick >= speeds[p] {
                        pick -= speeds[p];
                        p += 1;
                    }
                    let burst = if rng.pct(25) { 1_500 } else { 40 };
                    for _ in 0..rng.below(burst) {
                        sim.read_one(p);
                    }
                }
                40..=51 => {
                    let p = rng.below(n as u64) as usize;
                    sim.idle_check(p);
                }
                52..=56 => {
                    let ms = rng.below(120_000) as i64;
                    sim.wait(ms);
                }
                _ => {
                    let q = rng.below(OWNER_PARTITIONS as u64) as usize;
                    for _ in 0..rng.below(60) {
                        sim.process_one(q);
                    }
                }
            }
        }
        // Everything read: the routers go idle and keep confirming.
        for _ in 0..10 {
            sim.wait(61_000);
            sim.idle_checks();
            sim.drain();
        }
        let got = sim.totals();
        if got != truth {
            lost.push_str(&format!("\nseed {seed}:{}", diff(&got, &truth)));
        }
        for (q, o) in sim.owners.iter().enumerate() {
            assert!(o.ledger().is_closed(month("2025-10")), "seed {seed}");
            assert!(!o.ledger().is_closed(month("2025-11")), "seed {seed}");
            // A restore: the owner's log replayed into a new owner.
            let mut restored = MessageOwner::new(&cfg.spend, q as i32);
            restored.expect_streams((0..n).map(|p| ("events", p as i32)));
            let view = View::new(&cfg.optout);
            let mut out = OwnerOutputs::default();
            for (i, rec) in sim.logs[q].iter().enumerate() {
                restored.process(rec, &internal(q, i), &view, &mut out);
                out.clear();
            }
            assert_eq!(restored.partials(), o.partials(), "seed {seed}");
            assert_eq!(
                restored.ledger().watermark(),
                o.ledger().watermark(),
                "seed {seed}"
            );
            assert_eq!(
                restored.ledger().tracked_messages(),
                o.ledger().tracked_messages(),
                "seed {seed}"
            );
        }
    }
    assert!(lost.is_empty(), "spend lost to an early month close:{lost}");
}
