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

use crate::config::SpendConfig;
use crate::dead_letter::DeadLetter;
use crate::decode::{decode_delivery_with, TimeBound};
use crate::enrich::{destination_opted_out, splice, EnrichedEvent, EventEnrichment, EVENT_KEYS};
use crate::limits::Limits;
use crate::model::Provenance;
use crate::spend::SpendLedger;
use crate::stages::forward::{self, position_hash, stream_hash};
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
        let f = match forward::decode(record, &mut intern) {
            Ok(f) => f,
            Err(reason) => {
                out.dead_letters.push(dead(reason, record, None, at));
                return;
            }
        };
        let bound = TimeBound::new(&self.limits, f.arrival_ms);
        let (ev, has_keys) = match decode_delivery_with(f.payload, &self.limits, bound) {
            Ok(x) => x,
            Err(reason) => {
                out.dead_letters
                    .push(dead(reason, f.payload, Some(record), &f.provenance));
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
