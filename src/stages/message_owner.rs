//! Stage 2a: the owner of the messages of one partition of the
//! events-by-message topic.
//!
//! Runs the spend ledger for its messages (dedupe, latest priced event, month
//! attribution, eviction) and publishes the partition's partial totals per
//! (month, channel) as absolute values, so replaying an output never changes a
//! sum. A forwarded record whose original position was already applied (a
//! replay of the router after a crash) is recognised and emits nothing.
//!
//! The forwarded payload is decoded again with the same [`Limits`] and the
//! arrival time the router forwarded (`a`), so a forwarded event cannot carry
//! a time later than its input record's arrival plus the clock skew, or a
//! cost above the ceiling, whoever wrote it.
//!
//! Idle markers (an input partition read to its end, at a router time) and
//! the forwarding time of each record (`f`) go to the ledger, which keeps a
//! month open while an idle partition may still hold events that others
//! have overtaken (see
//! [`SpendLedger::apply_forwarded`](crate::spend::SpendLedger::apply_forwarded)).

use std::collections::HashMap;
use std::sync::Arc;

use crate::dead_letter::DeadLetter;
use crate::enrich::{destination_opted_out, splice, EnrichedEvent, EventEnrichment, EVENT_KEYS};
use crate::limits::Limits;
use crate::model::Provenance;
use crate::spend::config::SpendConfig;
use crate::spend::SpendLedger;
use crate::stages::forward::{self, position_hash, stream_hash, Refused};
use crate::stages::view::{PartialTotal, View};

/// What the owner produced for one forwarded record.
#[derive(Debug, Default)]
pub struct OwnerOutputs {
    /// Enriched events.
    pub events: Vec<EnrichedEvent>,
    /// Partial totals that changed (absolute values).
    pub partials: Vec<PartialTotal>,
    /// Forwarded records that could not be read (version skew, corruption).
    pub dead_letters: Vec<DeadLetter>,
}

impl OwnerOutputs {
    /// Empties the vectors, keeping their allocations.
    pub fn clear(&mut self) {
        self.events.clear();
        self.partials.clear();
        self.dead_letters.clear();
    }
}

/// The ledger of one partition's messages.
#[derive(Debug)]
pub struct MessageOwner {
    partition: i32,
    limits: Limits,
    ledger: SpendLedger,
    sources: HashMap<Box<str>, Arc<str>>,
}

impl MessageOwner {
    /// An empty owner of `partition`, with the cost ceilings of `cfg` and
    /// the default size limits (see [`with_limits`](Self::with_limits)).
    pub fn new(cfg: &SpendConfig, partition: i32) -> MessageOwner {
        MessageOwner {
            partition,
            limits: Limits::for_spend(cfg),
            ledger: SpendLedger::new(cfg),
            sources: HashMap::new(),
        }
    }

    /// The owner with these limits (those of the whole configuration, as the
    /// router uses: [`Limits::new`]).
    pub fn with_limits(mut self, limits: Limits) -> MessageOwner {
        self.limits = limits;
        self
    }

    /// Declares the input streams (topic, partition) whose events this owner
    /// will receive, so that none of them is overtaken before its first
    /// event (see [`SpendLedger::expect_sources`]).
    pub fn expect_streams<'a>(&mut self, streams: impl IntoIterator<Item = (&'a str, i32)>) {
        self.ledger
            .expect_sources(streams.into_iter().map(|(topic, partition)| {
                stream_hash(&Provenance {
                    source: Arc::from(topic),
                    partition: Some(partition),
                    offset: 0,
                    sub: 0,
                })
            }));
    }

    /// Processes one forwarded record; `at` is its own position (in the
    /// internal topic), used only to name it in a dead letter.
    pub fn process(&mut self, record: &[u8], at: &Provenance, view: &View, out: &mut OwnerOutputs) {
        let sources = &mut self.sources;
        let mut intern = |s: &str| -> Arc<str> {
            if let Some(a) = sources.get(s) {
                return a.clone();
            }
            let a: Arc<str> = Arc::from(s);
            sources.insert(s.into(), a.clone());
            a
        };
        match forward::decode_idle(record) {
            Some(Ok(marker)) => {
                self.ledger.source_idle_at(marker.stream, marker.at);
                return;
            }
            Some(Err(reason)) => {
                out.dead_letters.push(dead(reason, record, None, at));
                return;
            }
            None => {}
        }
        let (f, ev, has_keys) = match forward::decode_event(record, &self.limits, &mut intern) {
            Ok(x) => x,
            Err(Refused::Record(reason)) => {
                out.dead_letters.push(dead(reason, record, None, at));
                return;
            }
            Err(Refused::Payload(p)) => {
                let forward::PayloadRefused { reason, forwarded } = *p;
                out.dead_letters.push(dead(
                    reason,
                    forwarded.payload,
                    Some(record),
                    &forwarded.provenance,
                ));
                return;
            }
        };
        let outcome = self.ledger.apply_forwarded(
            &ev,
            Some(position_hash(&f.provenance)),
            stream_hash(&f.provenance),
            f.forwarded_at,
        );
        if outcome.replayed {
            return;
        }
        for (month, channel, totals) in &outcome.changed {
            out.partials.push(PartialTotal {
                month: *month,
                channel: *channel,
                partition: self.partition,
                spend_usd: totals.spend,
                messages: totals.messages,
            });
        }
        let opted_out = destination_opted_out(&ev, |o, d| view.is_opted_out(o, d));
        let mtd = view.month_to_date(
            outcome.month,
            outcome.channel,
            self.partition,
            outcome.month_to_date.spend,
        );
        let enrichment =
            EventEnrichment::new(&ev, &outcome, f.provenance.record_id(), opted_out, mtd);
        let json = splice(f.payload, has_keys, &EVENT_KEYS, &enrichment);
        out.events.push(EnrichedEvent {
            event: ev,
            enrichment,
            provenance: f.provenance,
            envelopes: f.envelopes,
            json,
        });
    }

    /// The partition's partial totals of every (month, channel), for a
    /// restore check or a full republish.
    pub fn partials(&self) -> Vec<PartialTotal> {
        self.ledger
            .totals()
            .into_iter()
            .map(|(month, channel, t)| PartialTotal {
                month,
                channel,
                partition: self.partition,
                spend_usd: t.spend,
                messages: t.messages,
            })
            .collect()
    }

    /// The ledger (read-only).
    pub fn ledger(&self) -> &SpendLedger {
        &self.ledger
    }

    /// The ledger, to export its changes or restore it from its snapshot
    /// records ([`SpendLedger::snapshot_changes`],
    /// [`SpendLedger::restore_entry`], [`SpendLedger::restore_state`]). An
    /// owner restored that way must not be given
    /// [`expect_streams`](Self::expect_streams) again: the restored sources
    /// are exactly those of the owner that wrote the snapshot.
    pub fn ledger_mut(&mut self) -> &mut SpendLedger {
        &mut self.ledger
    }
}

/// A dead letter for a forwarded record; `inner_of` is the forwarded record
/// when `payload` is the payload inside it.
fn dead(
    reason: crate::dead_letter::Reason,
    payload: &[u8],
    inner_of: Option<&[u8]>,
    at: &Provenance,
) -> DeadLetter {
    let (outer, inner) = match inner_of {
        Some(outer) => (outer, Some(payload.to_vec())),
        None => (payload, None),
    };
    DeadLetter {
        reason,
        payload: outer.to_vec(),
        inner_payload: inner,
        envelopes: vec![],
        provenance: at.clone(),
    }
}

#[cfg(test)]
mod tests {
    //! A message owner rebuilt from its snapshot records (as a compacted
    //! changelog keeps them: the latest record per key) behaves exactly like
    //! one that never stopped, on a realistic stream of several months
    //! (months close and are sealed, their entries tombstoned), with idle
    //! markers and forwarding times; and its spend equals the generator's
    //! truth.

    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Config, EMBEDDED_DEFAULT};
    use crate::decode::RecordSource;
    use crate::generate::{generate, Rng, Workload};
    use crate::spend::LedgerChanges;
    use crate::stages::router::{route_at, Routed};

    const SOURCE: &str = "sms-events";
    const SOURCES: usize = 4;
    const DAY_MS: i64 = 86_400_000;

    /// Forwarded records (events and idle markers) of `months` of traffic,
    /// as one owner partition receives them from routers reading 4 input
    /// partitions, and the generator's truth.
    fn stream(months: i64, messages: usize, seed: u64) -> (Vec<Vec<u8>>, crate::generate::Truth) {
        let g = generate(&Workload {
            seed,
            messages,
            span_ms: months * 30 * DAY_MS,
            ..Workload::default()
        });
        let limits = Limits::DEFAULT;
        let source: Arc<str> = Arc::from(SOURCE);
        let mut rng = Rng::new(seed);
        let mut out = Vec::new();
        let mut routed = Vec::new();
        // Router clock: starts at the stream's start, advances with it.
        let mut clock = 1_761_782_400_000i64;
        for (i, r) in g.records.iter().enumerate() {
            let src = RecordSource {
                source: source.clone(),
                partition: Some((i % SOURCES) as i32),
                offset: (i / SOURCES) as i64,
                timestamp_ms: None,
            };
            clock += 1 + rng.below(400) as i64;
            route_at(r, &src, &limits, Some(clock), &mut routed);
            for x in routed.drain(..) {
                if let Routed::Event { record, .. } = x {
                    out.push(record);
                }
            }
            // Now and then an input partition is declared idle, later
            // than everything forwarded so far.
            if rng.below(500) == 0 {
                let p = rng.below(SOURCES as u64) as i32;
                out.push(forward::encode_idle(SOURCE, p, clock + 1));
            }
        }
        // The end: every partition read to its end, repeatedly.
        for k in 0..3 {
            for p in 0..SOURCES as i32 {
                out.push(forward::encode_idle(SOURCE, p, clock + 120_000 * (k + 1)));
            }
        }
        (out, g.truth)
    }

    fn owner(cfg: &Config) -> MessageOwner {
        MessageOwner::new(&cfg.spend, 0).with_limits(Limits::new(cfg))
    }

    fn fresh(cfg: &Config) -> MessageOwner {
        let mut o = owner(cfg);
        o.expect_streams((0..SOURCES as i32).map(|p| (SOURCE, p)));
        o
    }

    /// What one record produced, comparable.
    fn outputs(o: &OwnerOutputs) -> (Vec<Vec<u8>>, Vec<PartialTotal>, usize) {
        (
            o.events.iter().map(|e| e.json.clone()).collect(),
            o.partials.clone(),
            o.dead_letters.len(),
        )
    }

    /// A compacted changelog: the latest value per key, and the latest
    /// ledger state.
    #[derive(Default)]
    struct Compacted {
        entries: BTreeMap<Box<str>, Option<Vec<u8>>>,
        state: Option<Vec<u8>>,
        records: usize,
    }

    impl Compacted {
        fn write(&mut self, c: LedgerChanges) {
            self.records += c.entries.len() + 1;
            for (k, v) in c.entries {
                self.entries.insert(k, v);
            }
            self.state = Some(c.state);
        }

        /// The log cleaner removes some tombstones (after
        /// `delete.retention.ms`).
        fn clean(&mut self, rng: &mut Rng) {
            self.entries.retain(|_, v| v.is_some() || rng.below(2) == 0);
        }

        fn restore(&self, cfg: &Config) -> MessageOwner {
            let mut o = owner(cfg);
            let l = o.ledger_mut();
            for (k, v) in &self.entries {
                l.restore_entry(k, v.as_deref()).expect("entry decodes");
            }
            if let Some(s) = &self.state {
                l.restore_state(s).expect("state decodes");
            }
            l.finish_restore().expect("consistent");
            l.track_changes();
            o
        }

        fn live(&self) -> usize {
            self.entries.values().filter(|v| v.is_some()).count()
        }
    }

    fn spend_by_month(o: &MessageOwner) -> BTreeMap<(String, String), (i128, u64)> {
        o.ledger()
            .totals()
            .into_iter()
            .map(|(m, c, t)| {
                (
                    (m.to_string(), c.to_string()),
                    (t.spend.units(), t.messages),
                )
            })
            .collect()
    }

    fn truth_by_month(t: &crate::generate::Truth) -> BTreeMap<(String, String), (i128, u64)> {
        t.spend_units
            .iter()
            .map(|(k, s)| (k.clone(), (*s, t.messages.get(k).copied().unwrap_or(0))))
            .collect()
    }

    fn check(months: i64, messages: usize, seed: u64) {
        let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").expect("default config");
        let (records, truth) = stream(months, messages, seed);
        let view = View::new(&cfg.optout);
        let topic: Arc<str> = Arc::from("smsvoice.internal.events-by-message");
        let at = |o: usize| Provenance {
            source: topic.clone(),
            partition: Some(0),
            offset: o as i64,
            sub: 0,
        };
        // The oracle: one owner that never stops.
        let mut never = fresh(&cfg);
        // The owner under test: exports its changes at commit points and is
        // now and then rebuilt from the compacted changelog alone.
        let mut restarted = fresh(&cfg);
        restarted.ledger_mut().track_changes();
        let mut log = Compacted::default();
        let mut rng = Rng::new(seed ^ 0x5eed);
        let (mut a, mut b) = (OwnerOutputs::default(), OwnerOutputs::default());
        let (mut restores, mut sealed_seen, mut tombstones) = (0, 0, 0);
        for (i, r) in records.iter().enumerate() {
            never.process(r, &at(i), &view, &mut a);
            restarted.process(r, &at(i), &view, &mut b);
            assert_eq!(outputs(&a), outputs(&b), "record {i}");
            a.clear();
            b.clear();
            if rng.below(700) == 0 {
                // A commit point.
                let c = restarted.ledger_mut().snapshot_changes();
                tombstones += c.entries.iter().filter(|e| e.1.is_none()).count();
                log.write(c);
                assert_eq!(
                    log.live(),
                    restarted.ledger().tracked_messages(),
                    "record {i}"
                );
                if rng.below(3) == 0 {
                    log.clean(&mut rng);
                    // A crash right after the commit: the next owner has the
                    // changelog only.
                    restarted = log.restore(&cfg);
                    restores += 1;
                    assert_eq!(
                        restarted.ledger().snapshot_all(),
                        never.ledger().snapshot_all(),
                        "restored at record {i}"
                    );
                }
            }
            sealed_seen = sealed_seen.max(
                never
                    .ledger()
                    .totals()
                    .iter()
                    .filter(|(m, _, _)| never.ledger().is_sealed(*m))
                    .count(),
            );
        }
        assert!(restores >= 5, "{restores} restores");
        assert_eq!(
            restarted.ledger().snapshot_all(),
            never.ledger().snapshot_all()
        );
        assert_eq!(spend_by_month(&restarted), truth_by_month(&truth));
        if months > 1 {
            assert!(sealed_seen > 0, "no month was sealed");
            assert!(tombstones > 0, "no entry was tombstoned");
        }
    }

    #[test]
    fn an_owner_restored_from_its_snapshot_records_behaves_as_one_that_never_stopped() {
        check(1, 6_000, 11);
        check(4, 12_000, 12);
    }

    #[test]
    fn snapshot_records_that_do_not_decode_are_errors() {
        let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").expect("default config");
        let (records, _) = stream(1, 300, 3);
        let view = View::new(&cfg.optout);
        let mut o = fresh(&cfg);
        o.ledger_mut().track_changes();
        let mut out = OwnerOutputs::default();
        let topic: Arc<str> = Arc::from("t");
        for (i, r) in records.iter().enumerate() {
            let at = Provenance {
                source: topic.clone(),
                partition: Some(0),
                offset: i as i64,
                sub: 0,
            };
            o.process(r, &at, &view, &mut out);
            out.clear();
        }
        let c = o.ledger_mut().snapshot_changes();
        let (key, value) = c
            .entries
            .iter()
            .find_map(|(k, v)| Some((k, v.clone()?)))
            .expect("an entry");
        let mut r = owner(&cfg);
        let l = r.ledger_mut();
        for cut in [0, 1, value.len() / 2, value.len() - 1] {
            assert!(
                l.restore_entry(key, Some(&value[..cut])).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(l.restore_entry(key, Some(&longer)).is_err());
        for cut in [0, c.state.len() / 2, c.state.len() - 1] {
            assert!(l.restore_state(&c.state[..cut]).is_err(), "state cut {cut}");
        }
        // An entry naming an eventType the state does not list.
        let mut r = owner(&cfg);
        let l = r.ledger_mut();
        l.restore_entry(key, Some(&value)).expect("entry");
        assert!(l.finish_restore().is_err());
    }
}
