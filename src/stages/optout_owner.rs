//! Stage 2b: the owner of the customers of one partition of the
//! inbound-by-number topic: keyword rules, last-writer-wins opt-out state,
//! replies for self-managed numbers, enriched inbound messages.
//!
//! The forwarded receive time (`t`) is checked against the forwarded arrival
//! time (`a`) plus the clock skew, as the router checked the envelope times,
//! so no forwarded record can make later decisions look older.

use std::collections::HashSet;
use std::sync::Arc;

use crate::dead_letter::DeadLetter;
use crate::enrich::{splice, EnrichedInbound, InboundEnrichment, INBOUND_KEYS};
use crate::limits::Limits;
use crate::model::Provenance;
use crate::optout::config::OptOutConfig;
use crate::optout::{OptOutChange, OptOutEngine, Reply};
use crate::stages::forward::{self, Refused};

/// What the owner produced for one forwarded record.
#[derive(Debug, Default)]
pub struct OptOutOutputs {
    /// Enriched inbound messages.
    pub inbound: Vec<EnrichedInbound>,
    /// Opt-out state changes (changelog values, full state).
    pub changes: Vec<OptOutChange>,
    /// Replies owed by self-managed numbers.
    pub replies: Vec<Reply>,
    /// Forwarded records that could not be read.
    pub dead_letters: Vec<DeadLetter>,
}

impl OptOutOutputs {
    /// Empties the vectors, keeping their allocations.
    pub fn clear(&mut self) {
        self.inbound.clear();
        self.changes.clear();
        self.replies.clear();
        self.dead_letters.clear();
    }
}

/// Opt-out state of one partition's customers.
#[derive(Debug)]
pub struct OptOutOwner {
    engine: OptOutEngine,
    limits: Limits,
    /// Original positions applied ([`forward::position_hash`]): a forwarded
    /// record repeated by a router replay emits nothing the second time.
    /// Eight bytes per inbound message (inbound traffic is small next to
    /// delivery events).
    seen: HashSet<u64>,
}

impl OptOutOwner {
    /// An empty owner.
    pub fn new(cfg: &OptOutConfig) -> OptOutOwner {
        OptOutOwner {
            engine: OptOutEngine::new(cfg),
            limits: Limits::DEFAULT,
            seen: HashSet::new(),
        }
    }

    /// The owner with these limits (those of the whole configuration, as the
    /// router uses: [`Limits::new`]).
    pub fn with_limits(mut self, limits: Limits) -> OptOutOwner {
        self.limits = limits;
        self
    }

    /// Restores a changelog value (state restore on assignment).
    pub fn restore(&mut self, change: &OptOutChange) {
        self.engine.apply_change(change);
    }

    /// Remembers the original position of a forwarded record without
    /// processing it (state restore: a repeat of it by a router replay is
    /// then dropped, as by the owner that processed it). A record that
    /// cannot be read names no position: nothing to remember.
    pub fn remember(&mut self, record: &[u8]) {
        if record.starts_with(b"{\"operator\":") {
            // An operator's change has no original position.
            return;
        }
        let mut intern = |s: &str| -> Arc<str> { Arc::from(s) };
        match forward::decode_inbound(record, &self.limits, &mut intern) {
            Ok((f, _, _)) => {
                self.seen.insert(forward::position_hash(&f.provenance));
            }
            Err(Refused::Payload(p)) => {
                self.seen
                    .insert(forward::position_hash(&p.forwarded.provenance));
            }
            Err(Refused::Record(_)) => {}
        }
    }

    /// Processes one forwarded inbound record; `at` names it in a dead letter.
    pub fn process(&mut self, record: &[u8], at: &Provenance, out: &mut OptOutOutputs) {
        if let Some(op) = forward::decode_operator(record) {
            match op {
                Ok(c) => {
                    if let Some(change) = self.engine.decide_operator(
                        &c.opt_out_list,
                        &c.number,
                        c.opted_out,
                        c.at,
                        &c.cause(),
                    ) {
                        out.changes.push(change);
                    }
                }
                Err(reason) => out.dead_letters.push(record_refused(reason, record, at)),
            }
            return;
        }
        let mut intern = |s: &str| -> Arc<str> { Arc::from(s) };
        let (f, msg, has_keys) = match forward::decode_inbound(record, &self.limits, &mut intern) {
            Ok(x) => x,
            Err(Refused::Record(reason)) => {
                out.dead_letters.push(record_refused(reason, record, at));
                return;
            }
            Err(Refused::Payload(p)) => {
                let forward::PayloadRefused { reason, forwarded } = *p;
                if self
                    .seen
                    .insert(forward::position_hash(&forwarded.provenance))
                {
                    out.dead_letters.push(DeadLetter {
                        reason,
                        payload: record.to_vec(),
                        inner_payload: Some(forwarded.payload.to_vec()),
                        envelopes: vec![],
                        provenance: forwarded.provenance,
                    });
                }
                return;
            }
        };
        if !self.seen.insert(forward::position_hash(&f.provenance)) {
            return;
        }
        let o = self.engine.handle_inbound(&msg);
        let enrichment = InboundEnrichment::new(&o, f.provenance.record_id());
        if let Some(c) = o.change {
            out.changes.push(c);
        }
        if let Some(r) = o.reply {
            out.replies.push(r);
        }
        let json = splice(f.payload, has_keys, &INBOUND_KEYS, &enrichment);
        out.inbound.push(EnrichedInbound {
            message: msg,
            enrichment,
            provenance: f.provenance,
            envelopes: f.envelopes,
            json,
        });
    }

    /// The engine (read-only).
    pub fn engine(&self) -> &OptOutEngine {
        &self.engine
    }
}

/// The dead letter of a forwarded record that cannot be read, at `at`.
fn record_refused(
    reason: crate::dead_letter::Reason,
    record: &[u8],
    at: &Provenance,
) -> DeadLetter {
    DeadLetter {
        reason,
        payload: record.to_vec(),
        inner_payload: None,
        envelopes: vec![],
        provenance: at.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EMBEDDED_DEFAULT};
    use crate::decode::RecordSource;
    use crate::generate::{generate, Workload};
    use crate::stages::router::{route_at, Routed};

    /// The forwarded inbound records of a generated stream, as the router
    /// writes them.
    fn forwarded_inbound() -> Vec<Vec<u8>> {
        let g = generate(&Workload {
            messages: 2_000,
            ..Workload::default()
        });
        let mut routed = Vec::new();
        let mut out = Vec::new();
        for (i, r) in g.records.iter().enumerate() {
            let src = RecordSource {
                source: Arc::from("in"),
                partition: Some(0),
                offset: i as i64,
                timestamp_ms: None,
            };
            route_at(r, &src, &Limits::DEFAULT, Some(1), &mut routed);
            for x in routed.drain(..) {
                if let Routed::Inbound { record, .. } = x {
                    out.push(record);
                }
            }
        }
        out
    }

    #[test]
    fn a_remembered_position_is_dropped_as_a_repeat_and_only_that_one() {
        let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").expect("default config");
        let records = forwarded_inbound();
        assert!(records.len() >= 2, "{} inbound records", records.len());
        let at = Provenance {
            source: Arc::from("inbound-by-number"),
            partition: Some(0),
            offset: 0,
            sub: 0,
        };
        let mut restored = OptOutOwner::new(&cfg.optout);
        restored.remember(&records[0]);
        let mut out = OptOutOutputs::default();
        restored.process(&records[0], &at, &mut out);
        assert!(
            out.inbound.is_empty() && out.changes.is_empty() && out.replies.is_empty(),
            "a remembered record is a repeat: {out:?}"
        );
        restored.process(&records[1], &at, &mut out);
        assert_eq!(out.inbound.len(), 1, "another record is processed");
        // An owner that never saw the first record processes it.
        let mut fresh = OptOutOwner::new(&cfg.optout);
        let mut out = OptOutOutputs::default();
        fresh.process(&records[0], &at, &mut out);
        assert_eq!(out.inbound.len(), 1);
    }
}
