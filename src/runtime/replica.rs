//! The replicated view every instance keeps: the whole opt-out table (to
//! enrich `destinationOptedOut` of any message, whoever owns the customer)
//! and every partial total (month-to-date spend in enriched events).
//!
//! One reader assigned every partition of the opt-out changelog and of
//! `spend-partials` from their start, never committing (the view is rebuilt
//! from the compacted topics on every start), with the isolation level of
//! the run. The view is eventually consistent: an event is enriched with
//! the opt-out state this instance has read so far.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{RuntimeError, Shared};
use crate::kafka::admin::SPEND_PARTIALS;
use crate::kafka::client::ClientWatch;
use crate::kafka::{consumer_config, ClientError};
use crate::optout::OptOutChange;
use crate::stages::view::PartialTotal;

/// Runs the replica until shutdown, recreating its reader after failures.
pub fn run(shared: &Shared) -> Result<(), RuntimeError> {
    let mut backoff = Duration::from_secs(1);
    while !shared.stopping() {
        match attempt(shared) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if shared.fatal_stop("replica reader", &e) {
                    // Retrying cannot fix it: the instance stops with it.
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "replica failed");
                let mut waited = Duration::ZERO;
                while waited < backoff && !shared.stopping() {
                    std::thread::sleep(Duration::from_millis(50));
                    waited += Duration::from_millis(50);
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    Ok(())
}

fn attempt(shared: &Shared) -> Result<(), RuntimeError> {
    let consumer: BaseConsumer<ClientWatch> = consumer_config(&shared.kafka, "replica")
        .create_with_context(shared.watch("replica reader"))
        .map_err(|e| RuntimeError::Kafka(ClientError::kafka("create replica consumer", e)))?;
    let optout_topic = shared.kafka.output_topics.optout_changelog.clone();
    let partials_topic = shared.internal(SPEND_PARTIALS);
    let mut tpl = TopicPartitionList::new();
    for t in [&optout_topic, &partials_topic] {
        for p in 0..shared.partitions_of(t) {
            tpl.add_partition_offset(t, p, Offset::Beginning)
                .map_err(|e| RuntimeError::Kafka(ClientError::kafka("assign", e)))?;
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|e| RuntimeError::Kafka(ClientError::kafka("assign", e)))?;
    while !shared.stopping() {
        let Some(r) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match r {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "replica read error");
                continue;
            }
        };
        let value = m.payload().unwrap_or(&[]);
        let mut view = shared
            .view
            .write()
            .map_err(|_| RuntimeError::Stage("replica", "view lock poisoned".into()))?;
        if m.topic() == optout_topic {
            match serde_json::from_slice::<OptOutChange>(value) {
                Ok(c) => view.apply_optout(&c),
                Err(e) => {
                    tracing::warn!(offset = m.offset(), error = %e, "unreadable opt-out change")
                }
            }
        } else {
            match serde_json::from_slice::<PartialTotal>(value) {
                Ok(p) => view.apply_partial(&p),
                Err(e) => tracing::warn!(offset = m.offset(), error = %e, "unreadable partial"),
            }
        }
    }
    Ok(())
}
