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
use smsvoice::model::Provenance;
use smsvoice::spend::AlarmRecord;
use smsvoice::stages::message_owner::{MessageOwner, OwnerOutputs};
use smsvoice::stages::optout_owner::{OptOutOutputs, OptOutOwner};
use smsvoice::stages::router::{route, Routed};
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
