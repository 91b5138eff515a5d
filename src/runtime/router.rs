//! Stage 1 in Kafka: decode input records, forward each payload to its
//! owner's partition, dead-letter the rest (the archive sink archives the
//! dead letters from the dead-letter topic). Stateless: nothing to restore.

use std::collections::HashMap;
use std::sync::Arc;

use super::records::{dead_letter, partition_of, At, OutRecord};
use super::stage::{InRecord, Logic};
use super::{RuntimeError, Shared};
use crate::archive::writer::now_ms;
use crate::decode::RecordSource;
use crate::kafka::admin::{EVENTS_BY_MESSAGE, INBOUND_BY_NUMBER};
use crate::limits::Limits;
use crate::stages::router::{route_at, IdleTracker, Routed};

/// The router stage.
pub struct Router {
    events_topic: String,
    inbound_topic: String,
    dead_topic: String,
    /// Size, cost and time limits of input records (the record timestamp
    /// is the arrival time that bounds every time inside the record).
    limits: Limits,
    sources: HashMap<String, Arc<str>>,
    routed: Vec<Routed>,
    /// Partitions of `events_topic` (each gets every idle marker).
    events_partitions: i32,
    /// Partitions of `inbound_topic`: a customer's inbound messages go to
    /// partition [`partition_of`]`(number)`, which is also how an opt-out
    /// owner finds its customers' entries in the opt-out changelog when it
    /// restores (see [`super::optout_owner`]).
    inbound_partitions: i32,
    /// Which input partitions to declare idle, and when.
    idle: IdleTracker,
}

impl Router {
    /// A router for `shared`'s configuration.
    pub fn new(shared: &Shared) -> Router {
        let events_topic = shared.internal(EVENTS_BY_MESSAGE);
        let inbound_topic = shared.internal(INBOUND_BY_NUMBER);
        Router {
            events_partitions: shared.partitions_of(&events_topic),
            inbound_partitions: shared.partitions_of(&inbound_topic),
            idle: IdleTracker::new(),
            events_topic,
            inbound_topic,
            dead_topic: shared.kafka.output_topics.dead_letters.clone(),
            limits: Limits::new(&shared.cfg),
            sources: HashMap::new(),
            routed: Vec::new(),
        }
    }

    fn source(&mut self, topic: &str) -> Arc<str> {
        if let Some(s) = self.sources.get(topic) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(topic);
        self.sources.insert(topic.to_owned(), s.clone());
        s
    }
}

impl Logic for Router {
    fn name(&self) -> &'static str {
        "router"
    }

    fn group_suffix(&self) -> &'static str {
        ""
    }

    fn topics(&self, shared: &Shared) -> Vec<String> {
        shared.kafka.input_topics.all()
    }

    fn assign(
        &mut self,
        _: &Shared,
        topic: &str,
        partition: i32,
        _: Option<i64>,
    ) -> Result<(), RuntimeError> {
        // A previous owner may have stopped before declaring it idle.
        self.idle.active(topic, partition);
        Ok(())
    }

    fn revoke(&mut self, topic: &str, partition: i32) {
        self.idle.forget(topic, partition);
    }

    fn process(
        &mut self,
        shared: &Shared,
        rec: &InRecord<'_>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), RuntimeError> {
        let src = RecordSource {
            source: self.source(rec.topic),
            partition: Some(rec.partition),
            offset: rec.offset,
            timestamp_ms: rec.timestamp_ms,
        };
        self.idle.active(rec.topic, rec.partition);
        self.routed.clear();
        // The forwarding time: what the owners compare with idle markers.
        let forwarded_at = Some(now_ms());
        route_at(
            rec.value,
            &src,
            &self.limits,
            forwarded_at,
            &mut self.routed,
        );
        let m = &shared.metrics;
        m.router_records
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut dead = 0u32;
        for r in self.routed.drain(..) {
            match r {
                Routed::Event { message_id, record } => {
                    let mut o = OutRecord::keyed(&self.events_topic, message_id, record);
                    o.timestamp_ms = rec.timestamp_ms;
                    out.push(o);
                }
                Routed::Inbound { customer, record } => {
                    let partition = partition_of(&customer, self.inbound_partitions);
                    let mut o = OutRecord::keyed(&self.inbound_topic, customer, record);
                    o.partition = Some(partition);
                    o.timestamp_ms = rec.timestamp_ms;
                    out.push(o);
                }
                Routed::Dead(d) => {
                    m.dead_letters
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let at = At {
                        topic: rec.topic,
                        partition: rec.partition,
                        offset: rec.offset,
                        n: dead,
                    };
                    dead += 1;
                    out.push(dead_letter(&self.dead_topic, &d, rec.timestamp_ms, at));
                }
            }
        }
        Ok(())
    }

    /// Sends an idle marker, with the time of the check, to every message
    /// owner for each input partition read to its end since its last
    /// marker, and repeats it every [`IDLE_REPEAT_MS`] while the partition
    /// stays so: the owners' spend ledgers stop waiting for it, and release
    /// what other partitions forwarded before the check (a partition merely
    /// behind, or whose reader is down, sends none and keeps holding their
    /// watermark back). See [`IdleTracker`].
    ///
    /// [`IDLE_REPEAT_MS`]: crate::stages::router::IDLE_REPEAT_MS
    fn idle(
        &mut self,
        _: &Shared,
        caught_up: &mut dyn FnMut(&str, i32) -> bool,
        out: &mut Vec<OutRecord>,
    ) {
        let events_topic = &self.events_topic;
        let n = self.events_partitions;
        // Before any check: every record appended before it has been read
        // when a check passes.
        let now = now_ms();
        self.idle.due(now, caught_up, &mut |d| {
            for q in 0..n {
                let mut o = OutRecord::keyed(events_topic, &b"idle"[..], d.marker.clone());
                o.partition = Some(q);
                out.push(o);
            }
            if !d.repeated {
                tracing::debug!(
                    topic = d.topic,
                    partition = d.partition,
                    "input partition caught up"
                );
            }
        });
    }
}
