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

    /// Processes one forwarded inbound record; `at` names it in a dead letter.
    pub fn process(&mut self, record: &[u8], at: &Provenance, out: &mut OptOutOutputs) {
        let mut intern = |s: &str| -> Arc<str> { Arc::from(s) };
        let (f, msg, has_keys) = match forward::decode_inbound(record, &self.limits, &mut intern) {
            Ok(x) => x,
            Err(Refused::Record(reason)) => {
                out.dead_letters.push(DeadLetter {
                    reason,
                    payload: record.to_vec(),
                    inner_payload: None,
                    envelopes: vec![],
                    provenance: at.clone(),
                });
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
