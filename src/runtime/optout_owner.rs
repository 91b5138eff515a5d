//! Stage 2b in Kafka: the owners of the partitions of `inbound-by-number`.
//!
//! Per owned partition, an [`OptOutOwner`] (keyword rules, last-writer-wins
//! state of its customers). State restore: like the message owners, the
//! partition is replayed from offset 0 to the committed offset with outputs
//! discarded (`retention.ms=-1`).
//!
//! Outputs: the enriched inbound message (key customer number), the opt-out
//! changelog (key `list|number`, full state: a replay rewrites the same
//! value), replies of self-managed numbers, dead letters. The archive sink
//! archives the enriched inbound messages and dead letters from their
//! topics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::formats::Format;
use super::records::{dead_letter, enriched_inbound, At, OutRecord};
use super::restore::replay_values;
use super::stage::{InRecord, Logic};
use super::{RuntimeError, Shared};
use crate::kafka::admin::INBOUND_BY_NUMBER;
use crate::model::Provenance;
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
        if let Some(until) = committed {
            // Outputs of the replay are discarded: they were produced when
            // the records were first processed.
            let mut scratch = OptOutOutputs::default();
            replay_values(shared, &self.topic_arc, partition, until, |value, at| {
                owner.process(value, at, &mut scratch);
                scratch.clear();
            })?;
        }
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
