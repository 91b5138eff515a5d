//! Consumer lag per (group, topic, partition) for `/metrics`: the high
//! watermark minus the group's committed offset (minus the low watermark
//! when the group has committed nothing there), for every stage's group and
//! input topics. Read at scrape time with one client per group that never
//! joins it (it only asks for committed offsets and watermarks). Skipped
//! while the broker does not answer (the scrape would wait for timeouts);
//! `smsvoice_ready` says so then.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::admin::{EVENTS_BY_MESSAGE, INBOUND_BY_NUMBER, SPEND_PARTIALS};
use crate::kafka::consumer_config;
use crate::runtime::Shared;

const TIMEOUT: Duration = Duration::from_secs(2);

/// One stage's group and the topics it consumes.
struct Group {
    name: String,
    topics: Vec<String>,
    consumer: BaseConsumer,
}

/// The groups of an instance's stages.
pub(crate) struct Lag {
    groups: Vec<Group>,
}

/// One partition's lag.
pub(crate) struct PartitionLag {
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) records: i64,
}

impl Lag {
    pub(crate) fn new(shared: &Shared) -> Result<Lag, String> {
        let k = &shared.kafka;
        let o = &k.output_topics;
        let mut stages: Vec<(&str, Vec<String>)> = vec![
            ("", k.input_topics.all()),
            ("messages", vec![shared.internal(EVENTS_BY_MESSAGE)]),
            ("optouts", vec![shared.internal(INBOUND_BY_NUMBER)]),
            ("totals", vec![shared.internal(SPEND_PARTIALS)]),
        ];
        if shared.store.is_some() {
            stages.push((
                crate::runtime::archive_sink::GROUP_SUFFIX,
                vec![
                    o.enriched_events.clone(),
                    o.enriched_inbound.clone(),
                    o.dead_letters.clone(),
                ],
            ));
        }
        let mut groups = Vec::new();
        for (suffix, topics) in stages {
            let name = if suffix.is_empty() {
                k.group_id.clone()
            } else {
                format!("{}.{suffix}", k.group_id)
            };
            let consumer: BaseConsumer = consumer_config(k, suffix)
                .create()
                .map_err(|e| e.to_string())?;
            groups.push(Group {
                name,
                topics,
                consumer,
            });
        }
        Ok(Lag { groups })
    }

    /// The lag of every partition of every group (blocking: a few requests
    /// per group; partitions whose offsets cannot be read are left out).
    pub(crate) fn read(&self, shared: &Shared) -> Vec<PartitionLag> {
        let mut out = Vec::new();
        for g in &self.groups {
            let mut tpl = TopicPartitionList::new();
            for t in &g.topics {
                for p in 0..shared.partitions_of(t) {
                    tpl.add_partition(t, p);
                }
            }
            let Ok(committed) = g.consumer.committed_offsets(tpl, TIMEOUT) else {
                continue;
            };
            for e in committed.elements() {
                let Ok((low, high)) =
                    g.consumer
                        .fetch_watermarks(e.topic(), e.partition(), TIMEOUT)
                else {
                    continue;
                };
                let from = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                out.push(PartitionLag {
                    group: g.name.clone(),
                    topic: e.topic().to_owned(),
                    partition: e.partition(),
                    records: (high - from).max(0),
                });
            }
        }
        out
    }
}
