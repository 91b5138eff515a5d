//! Stage 3 in Kafka: the owners of the partitions of `spend-partials`, that
//! is of the (month, channel) keys that hash to them.
//!
//! Sums the partials, runs alarms and limits, writes the spend changelog
//! (key `month|channel`, value [`SpendState`]: totals, partials, alarm state,
//! and `throughOffset`, the partials offset it reflects) and the alarm
//! records (key = the record's deterministic id).
//!
//! State restore: the spend changelog is read to its end (it holds one
//! value per (month, channel), a small topic) and the values of the keys of
//! the assigned partition restored. Partials at or before a key's
//! `throughOffset` are then skipped, so a partial replayed after a crash can
//! neither overwrite a newer one nor repeat an alarm transition. In
//! at-least-once mode the changelog is flushed before the partials offsets
//! are committed, so it is never behind them; in exactly-once mode both are
//! in one transaction.
//!
//! Spend states and partials are versioned ([`Format::SpendState`],
//! [`Format::SpendPartial`]); one that cannot be read (corrupt, or written
//! by a newer smsvoice) is a fatal error naming its topic, partition and
//! offset, never skipped: skipping would undercount spend silently.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::formats::Format;
use super::records::{partition_of, OutRecord};
use super::restore::try_replay;
use super::stage::{InRecord, Logic};
use super::{RuntimeError, Shared};
use crate::kafka::admin::SPEND_PARTIALS;
use crate::spend::AlarmRecord;
use crate::stages::totals::{SpendState, TotalsOwner};
use crate::stages::view::PartialTotal;

/// The totals stage.
pub struct TotalsStage {
    topic: String,
    owners: HashMap<i32, Owned>,
    alarms: Vec<AlarmRecord>,
}

struct Owned {
    owner: TotalsOwner,
    /// `month|channel` -> offset of the last partial applied.
    through: HashMap<String, i64>,
}

impl TotalsStage {
    /// A stage for `shared`'s configuration.
    pub fn new(shared: &Shared) -> TotalsStage {
        TotalsStage {
            topic: shared.internal(SPEND_PARTIALS),
            owners: HashMap::new(),
            alarms: Vec::new(),
        }
    }
}

fn alarm_id(a: &AlarmRecord) -> &str {
    match a {
        AlarmRecord::AlarmStateChange { id, .. } | AlarmRecord::LimitReached { id, .. } => id,
    }
}

impl Logic for TotalsStage {
    fn name(&self) -> &'static str {
        "totals"
    }

    fn topics(&self, _: &Shared) -> Vec<String> {
        vec![self.topic.clone()]
    }

    fn assign(
        &mut self,
        shared: &Shared,
        _topic: &str,
        partition: i32,
        _committed: Option<i64>,
    ) -> Result<(), RuntimeError> {
        let spend_topic = &shared.kafka.output_topics.spend;
        let n = shared.partitions_of(&self.topic);
        let mut latest: HashMap<String, SpendState> = HashMap::new();
        for p in 0..shared.partitions_of(spend_topic) {
            try_replay(shared, spend_topic, p, None, |rec| {
                match Format::SpendState.decode::<SpendState>(rec)? {
                    Some(s) => {
                        let key = s.key();
                        if partition_of(&key, n) == partition {
                            latest.insert(key, s);
                        }
                    }
                    // A key deleted from the compacted topic.
                    None => {
                        if let Some(key) = rec.key.and_then(|k| std::str::from_utf8(k).ok()) {
                            latest.remove(key);
                        }
                    }
                }
                Ok(())
            })?;
        }
        let mut owned = Owned {
            owner: TotalsOwner::new(&shared.cfg.spend),
            through: HashMap::new(),
        };
        for (key, s) in latest {
            owned.owner.restore(&s);
            if let Some(o) = s.through_offset {
                owned.through.insert(key, o);
            }
        }
        self.owners.insert(partition, owned);
        Ok(())
    }

    fn revoke(&mut self, _: &str, partition: i32) {
        self.owners.remove(&partition);
    }

    fn process(
        &mut self,
        shared: &Shared,
        rec: &InRecord<'_>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), RuntimeError> {
        let Some(owned) = self.owners.get_mut(&rec.partition) else {
            return Ok(());
        };
        let m = &shared.metrics;
        m.partials.fetch_add(1, Ordering::Relaxed);
        // Written by this program: unreadable means version skew or
        // corruption, which stops the instance (a skipped partial would
        // undercount spend). An empty value (a key deleted from the
        // compacted topic) holds nothing to apply.
        let Some(p) = Format::SpendPartial.decode::<PartialTotal>(rec)? else {
            return Ok(());
        };
        let key = format!("{}|{}", p.month, p.channel);
        if owned.through.get(&key).is_some_and(|&t| rec.offset <= t) {
            return Ok(());
        }
        self.alarms.clear();
        if let Some(mut state) = owned.owner.apply(&p, &mut self.alarms) {
            state.through_offset = Some(rec.offset);
            owned.through.insert(key.clone(), rec.offset);
            out.push(
                OutRecord::json(&shared.kafka.output_topics.spend, key, &state)
                    .with_format(Format::SpendState),
            );
        }
        for a in &self.alarms {
            m.alarms.fetch_add(1, Ordering::Relaxed);
            out.push(OutRecord::json(
                &shared.kafka.output_topics.alarms,
                alarm_id(a).as_bytes(),
                a,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{test_shared, ErrorClass, RecordError, EXIT_FATAL_RECORD};

    fn owned_stage(shared: &Shared, partition: i32) -> TotalsStage {
        let mut stage = TotalsStage::new(shared);
        stage.owners.insert(
            partition,
            Owned {
                owner: TotalsOwner::new(&shared.cfg.spend),
                through: HashMap::new(),
            },
        );
        stage
    }

    fn partial<'a>(
        topic: &'a str,
        offset: i64,
        value: &'a [u8],
        format: Option<&'a [u8]>,
    ) -> InRecord<'a> {
        InRecord {
            topic,
            partition: 0,
            offset,
            key: Some(b"2025-11|SMS|1"),
            value,
            timestamp_ms: None,
            format,
        }
    }

    const VALUE: &[u8] =
        br#"{"month":"2025-11","channel":"SMS","partition":1,"spendUsd":"2.5","messages":4}"#;
    const NEWER_VALUE: &[u8] =
        br#"{"month":"2025-11","channel":"SMS","partition":1,"spendUsd":"3.5","messages":5}"#;

    #[test]
    fn legacy_and_current_partials_apply_and_spend_states_carry_their_format() {
        let (shared, _rt) = test_shared();
        let mut stage = owned_stage(&shared, 0);
        let topic = stage.topic.clone();
        for (offset, value, format) in [(7, VALUE, None), (8, NEWER_VALUE, Some(&b"1"[..]))] {
            let mut out = Vec::new();
            stage
                .process(&shared, &partial(&topic, offset, value, format), &mut out)
                .expect("applied");
            let spend = out
                .iter()
                .find(|o| o.topic == shared.kafka.output_topics.spend)
                .expect("a spend state");
            assert!(spend.headers.contains(&Format::SpendState.header()));
        }
    }

    #[test]
    fn an_unreadable_or_newer_partial_is_fatal_not_skipped() {
        let (shared, _rt) = test_shared();
        let mut stage = owned_stage(&shared, 0);
        let topic = stage.topic.clone();
        let mut out = Vec::new();
        for (value, format) in [(&b"{not json"[..], None), (VALUE, Some(&b"2"[..]))] {
            let e = stage
                .process(&shared, &partial(&topic, 7, value, format), &mut out)
                .expect_err("fatal");
            assert_eq!(e.class(), ErrorClass::Fatal, "{e}");
            assert!(matches!(e, RuntimeError::Record(_)), "{e}");
            assert!(out.is_empty());
            let line = e.to_string();
            assert!(line.contains(&format!("{topic} [0] offset 7")), "{line}");
            if format.is_some() {
                assert!(matches!(
                    e,
                    RuntimeError::Record(RecordError::Newer { found: 2, .. })
                ));
                assert!(line.contains("written by a newer smsvoice"), "{line}");
            }
            assert!(shared.fatal_stop("totals", &e));
            assert_eq!(
                shared.fatal().map(|f| f.exit_code()),
                Some(EXIT_FATAL_RECORD)
            );
        }
    }
}
