//! Stage 2b in Kafka: the owners of the partitions of `inbound-by-number`.
//!
//! Per owned partition, an [`OptOutOwner`] (keyword rules, last-writer-wins
//! state of its customers).
//!
//! **State restore reads the opt-out changelog, not history.** The router
//! sends a customer's inbound messages to partition
//! [`partition_of`]`(number)` of `inbound-by-number`, and every change the
//! owner of that partition decides is a full entry (list, number, state, the
//! receive time and inbound message id that decided it) in the compacted
//! opt-out changelog, committed with the input offsets (in the transaction
//! in exactly-once mode, after its acknowledgement in at-least-once mode).
//! So the entries of partition p's customers are the latest changelog
//! records (every changelog partition, read to its end) whose number maps to
//! p: the engine rebuilt from them decides exactly as the one that wrote
//! them. Cost: one read of the opt-out table, whatever the age of the
//! deployment; `inbound-by-number` keeps its records only for
//! `[kafka] internal_retention_ms`.
//!
//! In at-least-once mode the changelog can be ahead of the committed offset
//! (outputs acknowledged, offsets not yet committed): the records after it
//! are processed again over entries that already hold their decisions;
//! last-writer-wins makes that a no-op for the state, and their enriched
//! inbound messages and replies are sent again, as for any at-least-once
//! replay (same record ids and positions: the archive sink drops them).
//! A router replay repeats forwarded records at new offsets: the owner drops
//! a repeat by its original position, so at least once the restore also
//! reads the retained records of the partition below the committed offset
//! for their positions only (no decision, no output; bounded by
//! `internal_retention_ms`, not by history). Exactly-once mode has no
//! router repeats and skips that read.
//!
//! Outputs: the enriched inbound message (key customer number), the opt-out
//! changelog (key `list|number`, full state: a replay rewrites the same
//! value), replies of self-managed numbers, dead letters. The archive sink
//! archives the enriched inbound messages and dead letters from their
//! topics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::formats::Format;
use super::records::{dead_letter, enriched_inbound, partition_of, At, OutRecord};
use super::restore::{try_replay, try_replay_range, RETAINED};
use super::stage::{InRecord, Logic};
use super::{RuntimeError, Shared};
use crate::kafka::admin::INBOUND_BY_NUMBER;
use crate::model::Provenance;
use crate::optout::OptOutChange;
use crate::stages::optout_owner::{OptOutOutputs, OptOutOwner};

/// The opt-out owner stage.
pub struct OptOutStage {
    topic: String,
    topic_arc: Arc<str>,
    owners: HashMap<i32, OptOutOwner>,
    out: OptOutOutputs,
}

impl OptOutStage {
    /// A stage for `shared`'s configuration.
    pub fn new(shared: &Shared) -> OptOutStage {
        let topic = shared.internal(INBOUND_BY_NUMBER);
        OptOutStage {
            topic_arc: Arc::from(topic.as_str()),
            topic,
            owners: HashMap::new(),
            out: OptOutOutputs::default(),
        }
    }
}

impl Logic for OptOutStage {
    fn name(&self) -> &'static str {
        "optouts"
    }

    fn topics(&self, _: &Shared) -> Vec<String> {
        vec![self.topic.clone()]
    }

    fn assign(
        &mut self,
        shared: &Shared,
        // The stage reads one topic: `self.topic_arc`.
        _topic: &str,
        partition: i32,
        committed: Option<i64>,
    ) -> Result<(), RuntimeError> {
        let mut owner = OptOutOwner::new(&shared.cfg.optout)
            .with_limits(crate::limits::Limits::new(&shared.cfg));
        let started = Instant::now();
        let (entries, records) = if committed.is_some() {
            changelog_entries(shared, partition, shared.partitions_of(&self.topic))?
        } else {
            // Nothing committed: nothing decided yet.
            (HashMap::new(), 0)
        };
        let n = entries.len();
        for change in entries.values() {
            owner.restore(change);
        }
        let mut positions = 0;
        if let (Some(until), false) = (committed, shared.kafka.exactly_once) {
            positions = try_replay_range(
                shared,
                &self.topic,
                partition,
                Some(RETAINED),
                Some(until),
                |rec| {
                    owner.remember(rec.value);
                    Ok(())
                },
            )?;
        }
        tracing::info!(
            topic = %self.topic,
            partition,
            changelog_records = records,
            entries = n,
            positions_read = positions,
            committed = committed.unwrap_or(-1),
            ms = started.elapsed().as_millis() as u64,
            "opt-out owner state restored"
        );
        self.owners.insert(partition, owner);
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
        let at = Provenance {
            source: self.topic_arc.clone(),
            partition: Some(rec.partition),
            offset: rec.offset,
            sub: 0,
        };
        let Some(owner) = self.owners.get_mut(&rec.partition) else {
            return Ok(());
        };
        self.out.clear();
        owner.process(rec.value, &at, &mut self.out);
        let k = &shared.kafka.output_topics;
        let m = &shared.metrics;
        m.inbound.fetch_add(1, Ordering::Relaxed);
        let here = |n: usize| At {
            topic: &self.topic,
            partition: rec.partition,
            offset: rec.offset,
            n: u32::try_from(n).unwrap_or(u32::MAX),
        };
        for (n, i) in self.out.inbound.iter().enumerate() {
            out.push(enriched_inbound(
                &k.enriched_inbound,
                &i.message.origination_number,
                i.json.clone(),
                here(n),
                &i.envelopes,
                i.message.received_at,
            ));
        }
        for c in &self.out.changes {
            out.push(
                OutRecord::json(
                    &k.optout_changelog,
                    format!("{}|{}", c.opt_out_list, c.number),
                    c,
                )
                .with_format(Format::OptOutChange),
            );
        }
        for r in &self.out.replies {
            out.push(OutRecord::json(&k.replies, r.to.as_bytes(), r));
        }
        for (n, d) in self.out.dead_letters.iter().enumerate() {
            m.dead_letters.fetch_add(1, Ordering::Relaxed);
            out.push(dead_letter(&k.dead_letters, d, rec.timestamp_ms, here(n)));
        }
        Ok(())
    }
}

/// The latest opt-out changelog entry of every (list, number) whose number
/// belongs to `partition` of `inbound-by-number` (`partitions` partitions),
/// by changelog key; and how many changelog records were read. Every
/// changelog partition is read to its end (a deleted key, a null value,
/// removes its entry). An unreadable record stops the restore (fatal).
fn changelog_entries(
    shared: &Shared,
    partition: i32,
    partitions: i32,
) -> Result<(HashMap<Vec<u8>, OptOutChange>, u64), RuntimeError> {
    let changelog = &shared.kafka.output_topics.optout_changelog;
    let mut latest: HashMap<Vec<u8>, OptOutChange> = HashMap::new();
    let mut records = 0;
    for p in 0..shared.partitions_of(changelog) {
        records += try_replay(shared, changelog, p, None, |rec| {
            let key = rec.key.unwrap_or_default();
            match Format::OptOutChange.decode::<OptOutChange>(rec)? {
                Some(c) if partition_of(&c.number, partitions) == partition => {
                    latest.insert(key.to_vec(), c);
                }
                Some(_) => {}
                None => {
                    latest.remove(key);
                }
            }
            Ok(())
        })?;
    }
    Ok((latest, records))
}
