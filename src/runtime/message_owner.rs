//! Stage 2a in Kafka: the owners of the partitions of `events-by-message`.
//!
//! Per owned partition, a [`MessageOwner`] (the spend ledger of its
//! messages). State restore: from the compacted changelog
//! `message-state` ([`state`]): at each commit point the owner writes the
//! ledger entries that changed, tombstones for those dropped, and its
//! ledger state with the offset it reflects, in the transaction that
//! commits its offsets. The stage therefore always commits in transactions
//! ([`Logic::transactional`]), also in at-least-once mode. On assignment
//! the changelog partition is read to its end, which gives the state at
//! the committed offset; `events-by-message` is read only where the
//! changelog is behind (a partition last committed by an older release is
//! replayed from its start, once). The topic keeps its records for
//! `kafka.internal_retention_ms`.
//!
//! Outputs: the enriched event (key messageId), the partition's changed
//! partial totals on `spend-partials` (the latest value per key at each
//! commit point: they are absolute; key `month|channel|p`, partition
//! chosen by `month|channel` so one totals owner sees every partial of a
//! key), dead letters. The archive sink archives the enriched events and
//! dead letters from their topics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::formats::Format;
use super::records::{dead_letter, enriched_event, partition_of, At, OutRecord};
use super::stage::{InRecord, Logic};
use super::{RuntimeError, Shared};
use crate::kafka::admin::{EVENTS_BY_MESSAGE, MESSAGE_STATE, SPEND_PARTIALS};
use crate::model::{Channel, Provenance};
use crate::spend::MonthKey;
use crate::stages::message_owner::{MessageOwner, OwnerOutputs};
use crate::stages::view::PartialTotal;

pub mod state;

pub use state::{Owned, Restored};

/// An empty message owner of `partition` that expects events from every
/// partition of the delivery-event input topics known at start, so that its
/// spend watermark cannot pass a partition not yet read (see
/// [`crate::spend::SpendLedger::expect_sources`]).
pub fn new_owner(shared: &Shared, partition: i32) -> MessageOwner {
    let mut owner = MessageOwner::new(&shared.cfg.spend, partition)
        .with_limits(crate::limits::Limits::new(&shared.cfg));
    for topic in &shared.kafka.input_topics.events {
        if let Some(&n) = shared.partitions.get(topic) {
            owner.expect_streams((0..n).map(|p| (topic.as_str(), p)));
        }
    }
    owner
}

/// Rebuilds the message owner of `partition` of `events-by-message` whose
/// committed offset is `committed`, from `message-state` (see
/// [`state::restore`]).
pub fn restore_owner(
    shared: &Shared,
    partition: i32,
    committed: Option<i64>,
) -> Result<(Owned, Restored), RuntimeError> {
    let topic: Arc<str> = Arc::from(shared.internal(EVENTS_BY_MESSAGE).as_str());
    state::restore(
        shared,
        &topic,
        &shared.internal(MESSAGE_STATE),
        partition,
        committed,
    )
}

/// The message-owner stage.
pub struct MessageStage {
    topic: String,
    topic_arc: Arc<str>,
    partials_topic: String,
    partials_partitions: i32,
    enriched_topic: String,
    dead_topic: String,
    state_topic: String,
    owners: HashMap<i32, Owned>,
    /// The latest partial per (owner partition, month, channel) since the
    /// last commit point: partials are absolute, so only the last matters
    /// and the record is built once, at the commit point.
    pending: BTreeMap<(i32, MonthKey, Channel), PartialTotal>,
    out: OwnerOutputs,
}

impl MessageStage {
    /// A stage for `shared`'s configuration.
    pub fn new(shared: &Shared) -> MessageStage {
        let topic = shared.internal(EVENTS_BY_MESSAGE);
        let partials_topic = shared.internal(SPEND_PARTIALS);
        MessageStage {
            topic_arc: Arc::from(topic.as_str()),
            topic,
            partials_partitions: shared.partitions_of(&partials_topic),
            partials_topic,
            enriched_topic: shared.kafka.output_topics.enriched_events.clone(),
            dead_topic: shared.kafka.output_topics.dead_letters.clone(),
            state_topic: shared.internal(MESSAGE_STATE),
            owners: HashMap::new(),
            pending: BTreeMap::new(),
            out: OwnerOutputs::default(),
        }
    }

    fn at(&self, rec: &InRecord<'_>) -> Provenance {
        Provenance {
            source: self.topic_arc.clone(),
            partition: Some(rec.partition),
            offset: rec.offset,
            sub: 0,
        }
    }
}

impl Logic for MessageStage {
    fn name(&self) -> &'static str {
        "messages"
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
        let (owned, _) = state::restore(
            shared,
            &self.topic_arc,
            &self.state_topic,
            partition,
            committed,
        )?;
        self.owners.insert(partition, owned);
        Ok(())
    }

    /// Always: the state changelog must commit with the offsets it
    /// reflects (see the module documentation).
    fn transactional(&self, _: &Shared) -> bool {
        true
    }

    fn revoke(&mut self, _: &str, partition: i32) {
        self.owners.remove(&partition);
        self.pending.retain(|(p, _, _), _| *p != partition);
    }

    fn process(
        &mut self,
        shared: &Shared,
        rec: &InRecord<'_>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), RuntimeError> {
        let at = self.at(rec);
        let Some(owned) = self.owners.get_mut(&rec.partition) else {
            return Ok(());
        };
        if rec.offset < owned.skip_below {
            // Already in the restored state, its outputs committed with it.
            return Ok(());
        }
        self.out.clear();
        {
            let view = shared
                .view
                .read()
                .map_err(|_| RuntimeError::Stage("messages", "view lock poisoned".into()))?;
            owned.owner.process(rec.value, &at, &view, &mut self.out);
        }
        owned.applied(rec.offset);
        let m = &shared.metrics;
        m.events.fetch_add(1, Ordering::Relaxed);
        let here = |n: usize| At {
            topic: &self.topic,
            partition: rec.partition,
            offset: rec.offset,
            n: u32::try_from(n).unwrap_or(u32::MAX),
        };
        let now = if self.out.events.is_empty() {
            0
        } else {
            chrono::Utc::now().timestamp_millis()
        };
        for (i, e) in self.out.events.iter().enumerate() {
            if !e.enrichment.duplicate {
                super::observe::delivery_event(&e.event, now);
            }
            out.push(enriched_event(
                &self.enriched_topic,
                &e.event.message_id,
                e.json.clone(),
                here(i),
                &e.envelopes,
            ));
        }
        for p in &self.out.partials {
            self.pending.insert((p.partition, p.month, p.channel), *p);
        }
        for (i, d) in self.out.dead_letters.iter().enumerate() {
            m.dead_letters.fetch_add(1, Ordering::Relaxed);
            out.push(dead_letter(&self.dead_topic, d, rec.timestamp_ms, here(i)));
        }
        Ok(())
    }

    fn before_commit(&mut self, _: &Shared, out: &mut Vec<OutRecord>) {
        for p in std::mem::take(&mut self.pending).into_values() {
            let mut o = OutRecord::json(&self.partials_topic, p.key(), &p)
                .with_format(Format::SpendPartial);
            o.partition = Some(partition_of(
                &format!("{}|{}", p.month, p.channel),
                self.partials_partitions,
            ));
            out.push(o);
        }
        // The state changelog last, in the same transaction as the offsets.
        let mut parts: Vec<i32> = self.owners.keys().copied().collect();
        parts.sort_unstable();
        for p in parts {
            if let Some(owned) = self.owners.get_mut(&p) {
                state::publish(owned, &self.state_topic, p, out);
            }
        }
    }
}
