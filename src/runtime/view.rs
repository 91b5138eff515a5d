//! The replicated view every instance keeps: the whole opt-out table (to
//! enrich `destinationOptedOut` of any message, whoever owns the customer)
//! and every partial total (month-to-date spend in enriched events).
//!
//! One reader assigned every partition of the opt-out changelog, of
//! `spend-partials` and of the spend topic from their start, never
//! committing (the view is rebuilt from the compacted topics on every
//! start), with the isolation level of the run. The view is eventually
//! consistent: an event is enriched with the opt-out state this instance
//! has read so far. Until the reader has reached the end each partition had
//! when it started ([`Metrics::view_loaded`](super::Metrics)), the instance
//! is not ready and the opt-out API answers 503: a number looked up before
//! its STOP was read back would be reported as not opted out.
//!
//! The records are versioned ([`Format::OptOutChange`],
//! [`Format::SpendPartial`]); one that cannot be read stops the instance
//! (fatal, naming topic, partition and offset) rather than being skipped:
//! a skipped partial or opt-out would leave the view wrong for good.

use std::sync::atomic::Ordering;
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
use crate::model::Channel;
use crate::optout::OptOutChange;
use crate::spend::MonthKey;
use crate::stages::totals::SpendState;
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
    let spend_topic = shared.kafka.output_topics.spend.clone();
    let mut tpl = TopicPartitionList::new();
    // Where each partition ended when the reader started: the view is
    // loaded once the reader is at or past every one.
    let mut ends: Vec<(String, i32, i64)> = Vec::new();
    let loaded = &shared.metrics.view_loaded;
    for t in [&optout_topic, &partials_topic, &spend_topic] {
        for p in 0..shared.partitions_of(t) {
            tpl.add_partition_offset(t, p, Offset::Beginning)
                .map_err(|e| kafka("assign", e))?;
            if !loaded.load(Ordering::Relaxed) {
                let (_, high) = consumer
                    .fetch_watermarks(t, p, super::stage::CALL_TIMEOUT)
                    .map_err(|e| kafka("read watermarks", e))?;
                if high > 0 {
                    ends.push((t.clone(), p, high));
                }
            }
        }
    }
    consumer.assign(&tpl).map_err(|e| kafka("assign", e))?;
    let mut poll_errors = PollErrors::default();
    let mut last_check = Instant::now();
    let mut last_beat: Option<Instant> = None;
    while !shared.stopping() {
        if last_beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            shared.metrics.beat("replica");
            last_beat = Some(Instant::now());
        }
        if !ends.is_empty() && last_check.elapsed() >= Duration::from_millis(50) {
            last_check = Instant::now();
            reached(&consumer, &mut ends);
        }
        if ends.is_empty() && !loaded.load(Ordering::Relaxed) {
            loaded.store(true, Ordering::Relaxed);
            tracing::info!("replicated view loaded (opt-out table, partials, spend)");
        }
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
        } else if m.topic() == spend_topic {
            match Format::SpendState.decode::<SpendState>(&rec)? {
                Some(s) => view_write(shared)?.apply_spend(s),
                None => {
                    if let Some((month, channel)) = rec.key.and_then(spend_key) {
                        view_write(shared)?.remove_spend(month, channel);
                    }
                }
            }
        } else if let Some(p) = Format::SpendPartial.decode::<PartialTotal>(&rec)? {
            view_write(shared)?.apply_partial(&p);
        }
    }
    Ok(())
}

/// Drops from `ends` every partition the reader's position has reached
/// (transaction markers take offsets: the position, not the last record,
/// says where the reader is).
fn reached(consumer: &BaseConsumer<ClientWatch>, ends: &mut Vec<(String, i32, i64)>) {
    let Ok(pos) = consumer.position() else {
        return;
    };
    ends.retain(|(t, p, end)| {
        let at = pos.find_partition(t, *p).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        at.is_none_or(|o| o < *end)
    });
}

/// The (month, channel) of a spend topic key (`YYYY-MM|CHANNEL`).
fn spend_key(key: &[u8]) -> Option<(MonthKey, Channel)> {
    let (month, channel) = std::str::from_utf8(key).ok()?.split_once('|')?;
    let channel: Channel =
        serde_json::from_value(serde_json::Value::String(channel.into())).ok()?;
    Some((month.parse().ok()?, channel))
}

fn view_write(
    shared: &Shared,
) -> Result<std::sync::RwLockWriteGuard<'_, crate::stages::view::View>, RuntimeError> {
    shared
        .view
        .write()
        .map_err(|_| RuntimeError::Stage("replica", "view lock poisoned".into()))
}
