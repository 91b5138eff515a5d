//! Reading each partition in sequence: no record skipped or processed twice
//! within one assignment, whatever the broker delivers, and the gap probe
//! for brokers that skip records (`[kafka] reread_offset_gaps`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::Offset;

use super::stage::Logic;
use super::stage::{kafka, LoopState, StageContext, CALL_TIMEOUT};
use super::{RuntimeError, Shared};

/// Whether `m` is the next record of its partition, so that no record is
/// skipped or processed twice within one assignment, whatever the broker
/// delivers:
///
/// * an offset below the expected one was processed already: skipped;
/// * an offset above it is a *gap*. Gaps are legitimate (transaction markers,
///   compaction, deleted records), but a broker may also skip records: tansu
///   0.6 answers a fetch at offset `o` with the batches whose *first* offset
///   is at least `o`, so a read resuming inside a batch loses the rest of that
///   batch, and under concurrent appends it may list a later batch before an
///   earlier one is stored. So a gap is only believed once the broker has
///   been seen reading *through* it: the partition is re-read from before the
///   expected offset ([`GapProbe`]), and the gap is real when a record below
///   the expected offset arrives and is followed by the same gap again.
///   Until then `m` is not processed. On a well-behaved broker this costs one
///   seek and one or two re-read records per gap.
pub(super) fn in_sequence<L: Logic>(
    shared: &Shared,
    logic: &L,
    consumer: &BaseConsumer<StageContext>,
    s: &mut LoopState,
    key: &(String, i32),
    m: &BorrowedMessage<'_>,
) -> Result<bool, RuntimeError> {
    let offset = m.offset();
    if !shared.kafka.reread_offset_gaps {
        // A broker that never skips records: a gap is real (transaction
        // markers, compaction) and costs nothing; a record below the
        // expected offset (a re-read) was processed already.
        return Ok(match s.expected.get_mut(key) {
            Some(e) if offset < *e => false,
            Some(e) => {
                *e = offset + 1;
                true
            }
            None => {
                s.expected.insert(key.clone(), offset + 1);
                true
            }
        });
    }
    let Some(&expected) = s.expected.get(key) else {
        s.expected.insert(key.clone(), offset + 1);
        return Ok(true);
    };
    if offset < expected {
        if let Some(probe) = s.gaps.get_mut(key) {
            probe.read_below = true;
        }
        return Ok(false);
    }
    if offset > expected && probe_gap(shared, logic, consumer, s, key, expected)? {
        return Ok(false);
    }
    if !s.gaps.is_empty() {
        s.gaps.remove(key);
    }
    if let Some(e) = s.expected.get_mut(key) {
        *e = offset + 1;
    }
    Ok(true)
}

/// The partition `key` is missing records from `expected` on (a gap was
/// delivered, or the reader stalled below the high watermark): starts or
/// widens its [`GapProbe`] and seeks there. False when the probe is over (the
/// gap is real).
pub(super) fn probe_gap<L: Logic>(
    shared: &Shared,
    logic: &L,
    consumer: &BaseConsumer<StageContext>,
    s: &mut LoopState,
    key: &(String, i32),
    expected: i64,
) -> Result<bool, RuntimeError> {
    let mut slot = s.gaps.remove(key);
    let from = GapProbe::advance(&mut slot, expected);
    if let Some(probe) = slot {
        s.gaps.insert(key.clone(), probe);
    }
    tracing::debug!(
        stage = logic.name(),
        topic = key.0,
        partition = key.1,
        expected,
        from = ?from,
        "offset gap (from: where the re-read starts; None: the gap is real)"
    );
    let Some(from) = from else {
        return Ok(false);
    };
    shared.metrics.refetches.fetch_add(1, Ordering::Relaxed);
    consumer
        .seek(&key.0, key.1, Offset::Offset(from), CALL_TIMEOUT)
        .map_err(|e| kafka("seek", e))?;
    Ok(true)
}

/// At an idle moment (at-least-once mode only): every owned partition whose
/// expected offset has not moved since the last check although the broker's
/// high watermark is above it is probed like a gap, since a broker that
/// skips the rest of a batch (see [`in_sequence`]) delivers nothing at all
/// when that batch is the last one. Not under `read_committed`, where
/// reading stops at an open transaction by design.
pub(super) fn probe_stalls<L: Logic>(
    shared: &Shared,
    logic: &L,
    consumer: &BaseConsumer<StageContext>,
    s: &mut LoopState,
) -> Result<(), RuntimeError> {
    let expected: Vec<((String, i32), i64)> =
        s.expected.iter().map(|(k, e)| (k.clone(), *e)).collect();
    let mut stalled = BTreeMap::new();
    for (key, e) in expected {
        if s.last_expected.get(&key) != Some(&e) {
            stalled.insert(key, e);
            continue;
        }
        let Ok((_, high)) = consumer.fetch_watermarks(&key.0, key.1, CALL_TIMEOUT) else {
            stalled.insert(key, e);
            continue;
        };
        if high > e {
            probe_gap(shared, logic, consumer, s, &key, e)?;
        }
        stalled.insert(key, e);
    }
    s.last_expected = stalled;
    Ok(())
}

/// The re-reads that decide whether a gap in a partition's offsets is real
/// (see [`in_sequence`]): read again from `expected - back`, doubling `back`
/// while the broker delivers nothing below `expected` before the gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GapProbe {
    /// The offset that should have come next.
    expected: i64,
    /// How far before `expected` the current re-read starts.
    back: i64,
    /// Whether the current re-read delivered a record below `expected`.
    pub(crate) read_below: bool,
}

impl GapProbe {
    /// Records are missing from `expected` on: starts the probe in `slot`,
    /// or continues it when it is about the same offset. Returns where the
    /// next re-read starts, `None` when the gap is confirmed.
    pub(crate) fn advance(slot: &mut Option<GapProbe>, expected: i64) -> Option<i64> {
        match slot.as_mut() {
            Some(p) if p.expected == expected => p.next_step(),
            _ => {
                let p = GapProbe::new(expected);
                *slot = Some(p);
                Some(p.from())
            }
        }
    }

    fn new(expected: i64) -> GapProbe {
        GapProbe {
            expected,
            back: expected.min(1),
            read_below: false,
        }
    }

    /// Where the current re-read starts.
    fn from(&self) -> i64 {
        self.expected - self.back
    }

    /// The same records are still missing: `None` when the gap is confirmed
    /// (the re-read went through records below it, or started at offset 0),
    /// else where the next, wider re-read starts.
    fn next_step(&mut self) -> Option<i64> {
        if self.read_below || self.back >= self.expected {
            return None;
        }
        self.back = (self.back.saturating_mul(2)).min(self.expected);
        self.read_below = false;
        Some(self.from())
    }
}

#[cfg(test)]
mod tests {
    use super::GapProbe;

    /// Plays a tansu-like broker, which answers a read from `from` with the
    /// batches whose first offset is at least `from`, against the probe as
    /// the stage loop drives it (a delivered gap, or a stall: nothing
    /// delivered below the last offset). Returns the offsets accepted from
    /// `expected` on.
    fn accept_after(batches: &[(i64, i64)], expected: i64) -> Vec<i64> {
        let read = |from: i64| -> Vec<i64> {
            batches
                .iter()
                .filter(|(first, _)| *first >= from)
                .flat_map(|(first, last)| *first..=*last)
                .collect()
        };
        let high = batches.iter().map(|(_, last)| last + 1).max().unwrap_or(0);
        let mut expected = expected;
        let mut probe: Option<GapProbe> = None;
        let mut accepted = Vec::new();
        let mut pending = read(expected);
        for _ in 0..64 {
            let mut seek = None;
            for o in std::mem::take(&mut pending) {
                if o < expected {
                    if let Some(p) = probe.as_mut() {
                        p.read_below = true;
                    }
                    continue;
                }
                if o > expected {
                    seek = GapProbe::advance(&mut probe, expected);
                    if seek.is_some() {
                        break;
                    }
                }
                probe = None;
                accepted.push(o);
                expected = o + 1;
            }
            if seek.is_none() && expected < high {
                // Stalled below the high watermark.
                seek = GapProbe::advance(&mut probe, expected);
            }
            match seek {
                Some(from) => pending = read(from),
                None => return accepted,
            }
        }
        panic!("the probe does not terminate");
    }

    #[test]
    fn resuming_inside_a_batch_on_a_batch_skipping_broker_loses_nothing() {
        let batches = [(0, 99), (100, 9_099), (9_100, 9_100), (9_101, 12_000)];
        for start in [
            0, 1, 57, 100, 101, 5_000, 9_099, 9_100, 9_101, 11_999, 12_000,
        ] {
            let want: Vec<i64> = (start..=12_000).collect();
            assert_eq!(accept_after(&batches, start), want, "start {start}");
        }
    }

    #[test]
    fn real_gaps_are_believed() {
        // Offsets 50 and 51 do not exist (a transaction marker, compaction).
        let batches = [(0, 49), (52, 80)];
        let want: Vec<i64> = (10..50).chain(52..=80).collect();
        assert_eq!(accept_after(&batches, 10), want);
        assert_eq!(accept_after(&batches, 50), (52..=80).collect::<Vec<_>>());
        // A log that starts above the expected offset (deleted records).
        assert_eq!(accept_after(&[(7, 9)], 0), vec![7, 8, 9]);
        assert_eq!(accept_after(&[(7, 9)], 3), vec![7, 8, 9]);
    }

    #[test]
    fn a_gap_on_a_well_behaved_broker_costs_one_re_read() {
        let mut p = GapProbe::new(50);
        assert_eq!(p.from(), 49);
        p.read_below = true;
        assert_eq!(p.next_step(), None);
    }

    #[test]
    fn the_probe_widens_by_doubling_down_to_offset_zero() {
        let mut p = GapProbe::new(1_000);
        let mut froms = vec![p.from()];
        while let Some(f) = p.next_step() {
            froms.push(f);
        }
        assert_eq!(froms.len(), 11, "{froms:?}");
        assert_eq!(froms[..4], [999, 998, 996, 992]);
        assert_eq!(froms.last(), Some(&0));
    }
}
