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

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::records::{partition_of, OutRecord};
use super::restore::replay;
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
            replay(
                shared,
                spend_topic,
                p,
                None,
                |rec| match serde_json::from_slice::<SpendState>(rec.value) {
                    Ok(s) => {
                        let key = s.key();
                        if partition_of(&key, n) == partition {
                            latest.insert(key, s);
                        }
                    }
                    Err(e) => tracing::warn!(
                        offset = rec.offset,
                        error = %e,
                        "unreadable spend changelog value ignored"
                    ),
                },
            )?;
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
        let p: PartialTotal = match serde_json::from_slice(rec.value) {
            Ok(p) => p,
            Err(e) => {
                // Written by this program: unreadable means version skew or
                // corruption. Logged and skipped (it is not input data).
                tracing::error!(offset = rec.offset, error = %e, "unreadable spend partial skipped");
                return Ok(());
            }
        };
        let key = format!("{}|{}", p.month, p.channel);
        if owned.through.get(&key).is_some_and(|&t| rec.offset <= t) {
            return Ok(());
        }
        self.alarms.clear();
        if let Some(mut state) = owned.owner.apply(&p, &mut self.alarms) {
            state.through_offset = Some(rec.offset);
            owned.through.insert(key.clone(), rec.offset);
            out.push(OutRecord::json(
                &shared.kafka.output_topics.spend,
                key,
                &state,
            ));
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
