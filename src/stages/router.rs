//! Stage 1: decode input records and forward each payload to its owner.
//!
//! Stateless. Delivery events are keyed by messageId (one owner per message),
//! inbound messages by the customer number (one owner per number). Dead
//! letters leave here with their original bytes. Each forwarded record
//! carries the router's wall clock (`f`); [`IdleTracker`] says when to tell
//! the owners that an input partition is read to its end (idle markers,
//! which carry the time of the check), the only thing a router remembers,
//! and nothing that needs restoring.

use std::sync::Arc;

use crate::dead_letter::DeadLetter;
use crate::decode::{decode_record_with, Decoded, RecordSource};
use crate::limits::Limits;
use crate::model::Payload;
use crate::stages::forward;
use crate::stages::forward::compact::{self, Origin};

/// Where a payload goes.
#[derive(Clone, Debug)]
pub enum Routed {
    /// To the owner of `message_id`.
    Event {
        /// Partition key.
        message_id: String,
        /// The forwarded record ([`compact::encode_event`]).
        record: Vec<u8>,
    },
    /// To the owner of the customer number.
    Inbound {
        /// Partition key: the customer's E.164 number.
        customer: String,
        /// The forwarded record.
        record: Vec<u8>,
    },
    /// To the dead-letter output.
    Dead(Box<DeadLetter>),
}

/// Routes every payload of one input record, in input order, with the
/// default [`Limits`].
pub fn route(bytes: &[u8], src: &RecordSource, out: &mut Vec<Routed>) {
    route_with(bytes, src, &Limits::DEFAULT, out);
}

/// Routes every payload of one input record, in input order. The record
/// timestamp (`src.timestamp_ms`) is the arrival time that bounds every time
/// inside the record (as in [`crate::core::Core::process`]); it travels with
/// each forwarded payload so the owner applies the same bound. No
/// forwarding time: see [`route_at`].
pub fn route_with(bytes: &[u8], src: &RecordSource, limits: &Limits, out: &mut Vec<Routed>) {
    route_at(bytes, src, limits, None, out);
}

/// Like [`route_with`], with the router's wall clock `forwarded_at` written
/// into each forwarded record (the owners compare it with idle markers:
/// [`crate::spend::SpendLedger::apply_forwarded`]).
pub fn route_at(
    bytes: &[u8],
    src: &RecordSource,
    limits: &Limits,
    forwarded_at: Option<i64>,
    out: &mut Vec<Routed>,
) {
    let mut decoded = Vec::new();
    let arrival = src.timestamp_ms;
    decode_record_with(bytes, src, limits, arrival, &mut decoded);
    for d in decoded {
        match d {
            Decoded::Dead(dl) => out.push(Routed::Dead(dl)),
            Decoded::Accepted(a) => {
                let origin = Origin {
                    provenance: &a.provenance,
                    received_at: None,
                    arrival_ms: arrival,
                    forwarded_at,
                    envelopes: &a.envelopes,
                    has_keys: a.has_enrichment_keys,
                };
                match a.payload {
                    Payload::Delivery(ev) => out.push(Routed::Event {
                        record: compact::encode_event(&origin, &ev, &a.raw),
                        message_id: ev.message_id,
                    }),
                    Payload::Inbound(msg) => out.push(Routed::Inbound {
                        record: compact::encode_inbound(
                            &Origin {
                                received_at: msg.received_at,
                                ..origin
                            },
                            &msg,
                            &a.raw,
                        ),
                        customer: msg.origination_number,
                    }),
                }
            }
        }
    }
}

/// How often (router time, ms) a router repeats the idle marker of an input
/// partition that stays read to its end. Each repetition lets the owners
/// release what other partitions forwarded before it; see
/// [`crate::spend::SpendLedger::apply_forwarded`].
pub const IDLE_REPEAT_MS: i64 = 60_000;

/// One idle marker to send (see [`IdleTracker::due`]).
#[derive(Debug)]
pub struct Declared<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// A repetition (the partition was already declared idle).
    pub repeated: bool,
    /// The marker ([`forward::encode_idle`]), for every owner partition.
    pub marker: Vec<u8>,
}

/// The router's half of the idle protocol: which of its input partitions to
/// declare idle, and when.
///
/// A partition read (or assigned) since its last marker is declared idle at
/// the first idle check that finds it read to its end; while it stays so,
/// the marker is repeated every [`IDLE_REPEAT_MS`], each with the time of
/// its check, so that the owners know it still had nothing at that time.
/// A partition found behind at a repetition (records appended, not yet
/// read) is active again: no marker until it is read to its end.
#[derive(Debug, Default)]
pub struct IdleTracker {
    /// Read or assigned since the last marker.
    active: Vec<(Arc<str>, i32)>,
    /// Declared idle, with the router time of the last marker.
    idle: Vec<(Arc<str>, i32, i64)>,
}

impl IdleTracker {
    /// A tracker with no partition.
    pub fn new() -> IdleTracker {
        IdleTracker::default()
    }

    /// A record of `topic`/`partition` was read, or the partition was
    /// assigned (a previous owner may have stopped before declaring it
    /// idle): it is declared idle again once read to its end.
    pub fn active(&mut self, topic: &str, partition: i32) {
        if self
            .active
            .iter()
            .any(|(t, p)| *p == partition && &**t == topic)
        {
            return;
        }
        self.idle
            .retain(|(t, p, _)| !(*p == partition && &**t == topic));
        self.active.push((Arc::from(topic), partition));
    }

    /// The partition is no longer this router's.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.active
            .retain(|(t, p)| !(*p == partition && &**t == topic));
        self.idle
            .retain(|(t, p, _)| !(*p == partition && &**t == topic));
    }

    /// At an idle check at router time `now` (read *before* any check, so
    /// that every record appended before `now` has been read when the check
    /// passes): calls `emit` for every partition to declare idle now. `caught_up(topic, partition)` tells
    /// whether a partition is read to its end.
    pub fn due(
        &mut self,
        now: i64,
        caught_up: &mut dyn FnMut(&str, i32) -> bool,
        emit: &mut dyn FnMut(Declared<'_>),
    ) {
        let mut behind = Vec::new();
        self.idle.retain_mut(|(t, p, last)| {
            if now.saturating_sub(*last) < IDLE_REPEAT_MS {
                return true;
            }
            if !caught_up(t, *p) {
                behind.push((t.clone(), *p));
                return false;
            }
            *last = now;
            emit(Declared {
                topic: t,
                partition: *p,
                repeated: true,
                marker: forward::encode_idle(t, *p, now),
            });
            true
        });
        let mut declared = Vec::new();
        self.active.retain(|(t, p)| {
            if !caught_up(t, *p) {
                return true;
            }
            emit(Declared {
                topic: t,
                partition: *p,
                repeated: false,
                marker: forward::encode_idle(t, *p, now),
            });
            declared.push((t.clone(), *p, now));
            false
        });
        self.active.extend(behind);
        self.idle.extend(declared);
    }

    /// Partitions declared idle.
    pub fn idle_partitions(&self) -> impl Iterator<Item = (&str, i32)> {
        self.idle.iter().map(|(t, p, _)| (&**t, *p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Provenance;
    use crate::stages::forward::{decode_idle, stream_hash};

    fn hash(t: &str, p: i32) -> u64 {
        stream_hash(&Provenance {
            source: Arc::from(t),
            partition: Some(p),
            offset: 0,
            sub: 0,
        })
    }

    /// Runs one idle check: the markers emitted, as (stream, at, repeated).
    fn check(tr: &mut IdleTracker, now: i64, behind: &[i32]) -> Vec<(u64, Option<i64>, bool)> {
        let mut got = Vec::new();
        tr.due(now, &mut |_, p| !behind.contains(&p), &mut |d| {
            let marker = decode_idle(&d.marker)
                .and_then(Result::ok)
                .expect("a marker");
            assert_eq!(marker.stream, hash(d.topic, d.partition));
            got.push((marker.stream, marker.at, d.repeated));
        });
        got.sort_unstable();
        got
    }

    #[test]
    fn markers_are_sent_when_caught_up_and_repeated_while_it_stays_so() {
        let mut tr = IdleTracker::new();
        tr.active("in", 0);
        tr.active("in", 1);
        // 1 is behind: only 0 is declared.
        assert_eq!(
            check(&mut tr, 1_000, &[1]),
            vec![(hash("in", 0), Some(1_000), false)]
        );
        // Not yet time to repeat 0; 1 is now caught up.
        assert_eq!(
            check(&mut tr, 2_000, &[]),
            vec![(hash("in", 1), Some(2_000), false)]
        );
        assert!(check(&mut tr, 60_999, &[]).is_empty());
        assert_eq!(
            check(&mut tr, 61_000, &[]),
            vec![(hash("in", 0), Some(61_000), true)]
        );
        // 1 has new records at its repetition: no marker, active again, and
        // declared again (not as a repetition) once read to its end.
        assert!(check(&mut tr, 62_000, &[1]).is_empty());
        assert_eq!(
            check(&mut tr, 62_500, &[]),
            vec![(hash("in", 1), Some(62_500), false)]
        );
        // A record read makes a partition active at once.
        tr.active("in", 0);
        assert_eq!(
            check(&mut tr, 63_000, &[]),
            vec![(hash("in", 0), Some(63_000), false)]
        );
        let mut idle: Vec<_> = tr.idle_partitions().collect();
        idle.sort_unstable();
        assert_eq!(idle, vec![("in", 0), ("in", 1)]);
        // A partition given up sends nothing more.
        tr.forget("in", 0);
        assert_eq!(
            check(&mut tr, 200_000, &[]),
            vec![(hash("in", 1), Some(200_000), true)]
        );
    }
}
