//! The processing core: decode -> classify -> state transitions (opt-out,
//! spend ledger, alarms) -> enriched outputs.
//!
//! Deterministic and free of I/O: the same records in the same order give the
//! same outputs, so the core can be tested with plain values and replayed
//! from files. The shells ([`crate::file_mode`], later Kafka) only move bytes
//! in and records out.

use crate::decode::{
    decode_record_with, decode_scanned_record, Accepted, Decoded, RecordSource, ScannedRecord,
};
use crate::enrich::{
    destination_opted_out, splice, splice_event, EnrichedEvent, EnrichedInbound, EventEnrichment,
    InboundEnrichment, OptOutRecord, Outputs, SpendRecord, INBOUND_KEYS,
};
use crate::limits::Limits;
use crate::limits::LimitsConfig;
use crate::model::{DeliveryEvent, InboundMessage, Payload};
use crate::money::Usd;
use crate::optout::config::OptOutConfig;
use crate::optout::OptOutEngine;
use crate::spend::config::SpendConfig;
use crate::spend::{AlarmEngine, SpendLedger};

/// Running counts, for summaries and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records given to [`Core::process`].
    pub records: u64,
    /// Delivery events accepted.
    pub events: u64,
    /// Inbound messages accepted.
    pub inbound: u64,
    /// Payloads dead-lettered.
    pub dead_letters: u64,
    /// Accepted events that repeated an earlier (messageId, eventType, eventTimestamp).
    pub duplicates: u64,
    /// Accepted events that arrived after their month closed (not counted in spend).
    pub late: u64,
    /// Alarm and limit records emitted.
    pub alarms: u64,
    /// Reply records emitted.
    pub replies: u64,
}

/// The configuration the core reads: its own sections only (the shell's
/// [`crate::config::Config`] converts into it, `Core::new(&cfg)`).
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig<'a> {
    /// `[spend]`.
    pub spend: &'a SpendConfig,
    /// `[optout]`.
    pub optout: &'a OptOutConfig,
    /// `[limits]`.
    pub limits: &'a LimitsConfig,
}

/// The core: all state of one pipeline instance.
pub struct Core {
    limits: Limits,
    optout: OptOutEngine,
    ledger: SpendLedger,
    alarms: AlarmEngine,
    counters: Counters,
}

impl Core {
    /// A core with empty state.
    pub fn new<'a>(cfg: impl Into<CoreConfig<'a>>) -> Core {
        let cfg = cfg.into();
        Core {
            limits: Limits::new(cfg),
            optout: OptOutEngine::new(cfg.optout),
            ledger: SpendLedger::new(cfg.spend),
            alarms: AlarmEngine::new(cfg.spend),
            counters: Counters::default(),
        }
    }

    /// Processes one record (a Kafka record value, or one top-level JSON value
    /// of a file), appending what it produced to `out`. The record timestamp
    /// (`src.timestamp_ms`, the Kafka record timestamp) is its arrival time:
    /// no time inside the record may be later than it plus the clock-skew
    /// allowance (see [`crate::limits`]); without one, only the absolute
    /// range 2000..2200 applies.
    pub fn process(&mut self, bytes: &[u8], src: &RecordSource, out: &mut Outputs) {
        self.process_with_arrival(bytes, src, src.timestamp_ms, out);
    }

    /// [`process`](Self::process) with an explicit arrival time, for records
    /// that have one but no record timestamp (file mode: the input file's
    /// modification time; it bounds the record's times but is not a receive
    /// time of its inbound messages).
    pub fn process_with_arrival(
        &mut self,
        bytes: &[u8],
        src: &RecordSource,
        arrival_ms: Option<i64>,
        out: &mut Outputs,
    ) {
        self.counters.records += 1;
        let mut decoded: Vec<Decoded<'_>> = Vec::new();
        decode_record_with(bytes, src, &self.limits, arrival_ms, &mut decoded);
        for d in decoded {
            match d {
                Decoded::Accepted(a) => self.accept(*a, out),
                Decoded::Dead(dl) => {
                    self.counters.dead_letters += 1;
                    out.dead_letters.push(*dl);
                }
            }
        }
    }

    /// [`process_with_arrival`](Self::process_with_arrival) of a record
    /// that file mode found with one scan, which is reused (the same outputs).
    pub(crate) fn process_scanned(
        &mut self,
        bytes: &[u8],
        scanned: &ScannedRecord,
        src: &RecordSource,
        arrival_ms: Option<i64>,
        out: &mut Outputs,
    ) {
        self.counters.records += 1;
        let mut decoded: Vec<Decoded<'_>> = Vec::new();
        decode_scanned_record(bytes, scanned, src, &self.limits, arrival_ms, &mut decoded);
        for d in decoded {
            match d {
                Decoded::Accepted(a) => self.accept(*a, out),
                Decoded::Dead(dl) => {
                    self.counters.dead_letters += 1;
                    out.dead_letters.push(*dl);
                }
            }
        }
    }

    fn accept(&mut self, a: Accepted<'_>, out: &mut Outputs) {
        let Accepted {
            payload,
            raw,
            has_enrichment_keys,
            envelopes,
            provenance,
        } = a;
        match payload {
            Payload::Delivery(event) => {
                let enrichment = self.delivery(&event, provenance.record_id(), out);
                let json = splice_event(&raw, has_enrichment_keys, &enrichment);
                out.events.push(EnrichedEvent {
                    event,
                    enrichment,
                    provenance,
                    envelopes,
                    json,
                });
            }
            Payload::Inbound(message) => {
                let enrichment = self.inbound(&message, provenance.record_id(), out);
                let json = splice(&raw, has_enrichment_keys, &INBOUND_KEYS, &enrichment);
                out.inbound.push(EnrichedInbound {
                    message,
                    enrichment,
                    provenance,
                    envelopes,
                    json,
                });
            }
        }
    }

    fn delivery(
        &mut self,
        ev: &DeliveryEvent,
        record_id: String,
        out: &mut Outputs,
    ) -> EventEnrichment {
        self.counters.events += 1;
        let outcome = self.ledger.apply(ev);
        if outcome.duplicate {
            self.counters.duplicates += 1;
        }
        if outcome.late {
            self.counters.late += 1;
        }
        for (month, channel, totals) in &outcome.changed {
            let before = out.alarms.len();
            self.alarms
                .evaluate(*month, *channel, totals.spend, &mut out.alarms);
            self.counters.alarms += (out.alarms.len() - before) as u64;
            out.spend_changes.push(SpendRecord {
                month: *month,
                channel: *channel,
                spend_usd: totals.spend,
                messages: totals.messages,
            });
        }
        let optout = &self.optout;
        let opted_out = destination_opted_out(ev, |o, d| optout.is_opted_out(o, d));
        EventEnrichment::new(
            ev,
            &outcome,
            record_id,
            opted_out,
            outcome.month_to_date.spend,
        )
    }

    fn inbound(
        &mut self,
        msg: &InboundMessage,
        record_id: String,
        out: &mut Outputs,
    ) -> InboundEnrichment {
        self.counters.inbound += 1;
        let o = self.optout.handle_inbound(msg);
        let enrichment = InboundEnrichment::new(&o, record_id);
        if let Some(c) = o.change {
            out.optout_changes.push(c);
        }
        if let Some(r) = o.reply {
            self.counters.replies += 1;
            out.replies.push(r);
        }
        enrichment
    }

    /// Month-to-date totals of every (month, channel) seen, sorted.
    pub fn spend_totals(&self) -> Vec<SpendRecord> {
        self.ledger
            .totals()
            .into_iter()
            .map(|(month, channel, t)| SpendRecord {
                month,
                channel,
                spend_usd: t.spend,
                messages: t.messages,
            })
            .collect()
    }

    /// Total spend over every month and channel.
    pub fn total_spend(&self) -> Usd {
        self.ledger
            .totals()
            .into_iter()
            .fold(Usd::ZERO, |acc, (_, _, t)| acc + t.spend)
    }

    /// Every (list, number) with state, sorted.
    pub fn optout_table(&self) -> Vec<OptOutRecord> {
        self.optout
            .entries()
            .into_iter()
            .map(|(l, n, o)| OptOutRecord {
                opt_out_list: l.to_owned(),
                number: n.to_owned(),
                opted_out: o,
            })
            .collect()
    }

    /// Running counts.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The opt-out engine (read-only).
    pub fn optout(&self) -> &OptOutEngine {
        &self.optout
    }

    /// The spend ledger (read-only).
    pub fn ledger(&self) -> &SpendLedger {
        &self.ledger
    }

    /// The limits records are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}
