//! The replicated view every instance keeps: the whole opt-out table (to
//! enrich `destinationOptedOut` of any message, whoever owns the customer)
//! and every partial total (month-to-date spend in enriched events).
//!
//! One reader assigned every partition of the opt-out changelog and of
//! `spend-partials` from their start, never committing (the view is rebuilt
//! from the compacted topics on every start), with the isolation level of
//! the run. The view is eventually consistent: an event is enriched with
//! the opt-out state this instance has read so far.
//!
//! The records are versioned ([`Format::OptOutChange`],
//! [`Format::SpendPartial`]); one that cannot be read stops the instance
//! (fatal, naming topic, partition and offset) rather than being skipped:
//! a skipped partial or opt-out would leave the view wrong for good.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::formats::Format;
use super::retry::{sleep_unless_stopping, Restarts};
use super::stage::{InRecord, PollErrors};
use super::{RuntimeError, Shared};
use crate::kafka::admin::SPEND_PARTIALS;
use crate::kafka::client::{ClientWatch, ErrorClass};
use crate::kafka::{consumer_config, ClientError};
use crate::optout::OptOutChange;
use crate::stages::view::PartialTotal;

/// Runs the replica until shutdown, recreating its reader after failures
/// that are not fatal.
pub fn run(shared: &Shared) -> Result<(), RuntimeError> {
    let mut restarts = Restarts::default();
    while !shared.stopping() {
        let started = Instant::now();
        let Err(e) = attempt(shared) else {
            return Ok(());
        };
        if shared.fatal_stop("replica reader", &e) || e.class() == ErrorClass::Fatal {
            // Retrying cannot fix it: the instance stops with it.
            return Err(e);
        }
        let wait = restarts.next(started.elapsed());
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "replica failed");
        sleep_unless_stopping(&shared.shutdown, wait);
    }
    Ok(())
}

fn kafka(context: &str, e: rdkafka::error::KafkaError) -> RuntimeError {
    RuntimeError::Kafka(ClientError::kafka(context.to_owned(), e))
}

fn attempt(shared: &Shared) -> Result<(), RuntimeError> {
    let consumer: BaseConsumer<ClientWatch> = consumer_config(&shared.kafka, "replica")
        .create_with_context(shared.watch("replica reader"))
        .map_err(|e| kafka("create replica consumer", e))?;
    let optout_topic = shared.kafka.output_topics.optout_changelog.clone();
    let partials_topic = shared.internal(SPEND_PARTIALS);
    let mut tpl = TopicPartitionList::new();
    for t in [&optout_topic, &partials_topic] {
        for p in 0..shared.partitions_of(t) {
            tpl.add_partition_offset(t, p, Offset::Beginning)
                .map_err(|e| kafka("assign", e))?;
        }
    }
    consumer.assign(&tpl).map_err(|e| kafka("assign", e))?;
    let mut poll_errors = PollErrors::default();
    while !shared.stopping() {
        let Some(r) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match r {
            Ok(m) => m,
            Err(e) => {
                poll_errors.check(shared, "replica", "replica read", e, true)?;
                continue;
            }
        };
        let rec = InRecord::of(&m);
        if m.topic() == optout_topic {
            if let Some(c) = Format::OptOutChange.decode::<OptOutChange>(&rec)? {
                view_write(shared)?.apply_optout(&c);
            }
        } else if let Some(p) = Format::SpendPartial.decode::<PartialTotal>(&rec)? {
            view_write(shared)?.apply_partial(&p);
        }
    }
    Ok(())
}

fn view_write(
    shared: &Shared,
) -> Result<std::sync::RwLockWriteGuard<'_, crate::stages::view::View>, RuntimeError> {
    shared
        .view
        .write()
        .map_err(|_| RuntimeError::Stage("replica", "view lock poisoned".into()))
}
