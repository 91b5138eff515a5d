//! Producing a stage's outputs: the delivery reports (a failed delivery
//! voids the at-least-once commit) and backpressure on a full producer queue
//! (the consumer paused and polled meanwhile, never a blind wait).
//!
//! **Delivery epochs** (at-least-once stages): every record is sent with the
//! slot of the current *epoch* (the records produced between two commit
//! points) as its delivery opaque, and the context counts per slot the
//! records not yet reported. A commit point closes the epoch with the
//! offsets it covers and goes on reading; the offsets of an epoch are
//! committed once its count is zero and every earlier epoch is committed
//! (`commit::drain`): offsets follow what the broker acknowledged, as
//! Vector's Kafka source stores an offset only once its sink acknowledged
//! the batch, and the loop never waits for a flush.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::formats::FORMAT_HEADER;
use super::records::OutRecord;
use super::stage::{kafka, PollErrors, StageContext, CALL_TIMEOUT, POLL};
use super::{RuntimeError, Shared};
use crate::kafka::client::ClientWatch;

/// Epoch slots: at most this many epochs may wait for their deliveries at
/// once (a commit point beyond that waits for the oldest; see
/// `commit::drain`).
pub(super) const EPOCHS: usize = 64;

/// Counts failed deliveries (at-least-once: a failure voids the commit) and
/// the records of each epoch slot not yet reported.
pub(super) struct DeliveryContext {
    pub(super) failed: AtomicU64,
    pub(super) first_error: Mutex<Option<String>>,
    pub(super) watch: ClientWatch,
    outstanding: [AtomicU64; EPOCHS],
}

impl DeliveryContext {
    /// A context reporting to `watch`.
    pub(super) fn new(watch: ClientWatch) -> DeliveryContext {
        DeliveryContext {
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            watch,
            outstanding: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The slot of `epoch`.
    pub(super) fn slot(epoch: u64) -> usize {
        (epoch % EPOCHS as u64) as usize
    }

    /// Records of `epoch`'s slot sent and not yet reported. Zero means every
    /// record of the epoch was reported, and a failure among them is in
    /// `failed` already (it is counted before the slot is decremented).
    pub(super) fn outstanding(&self, epoch: u64) -> u64 {
        self.outstanding[Self::slot(epoch)].load(Ordering::Acquire)
    }

    /// Takes the delivery failures seen so far: `Some(first error)` if any.
    pub(super) fn take_failure(&self) -> Option<String> {
        if self.failed.swap(0, Ordering::AcqRel) == 0 {
            return None;
        }
        Some(
            self.first_error
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .unwrap_or_default(),
        )
    }
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.error(error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.watch.log(level, fac, log_message);
    }
}

impl ProducerContext for DeliveryContext {
    /// The epoch slot of the record.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        if let Err((e, m)) = result {
            // Counted before the slot is decremented: an epoch seen complete
            // has its failures counted.
            self.failed.fetch_add(1, Ordering::AcqRel);
            // An authorization failure is fatal to the process.
            self.watch.delivery(result, ());
            if let Ok(mut f) = self.first_error.lock() {
                f.get_or_insert_with(|| format!("{} [{}]: {e}", m.topic(), m.partition()));
            }
        }
        if let Some(o) = self.outstanding.get(slot) {
            o.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How long [`send`] waits on a full producer queue before it pauses the
/// consumer's partitions and polls the consumer while waiting.
pub const QUEUE_FULL_PAUSE_AFTER: Duration = Duration::from_millis(100);

/// Sends one record of `epoch`, waiting while the producer queue is full
/// (the producer's own thread serves its delivery reports meanwhile; see
/// [`QueueFullWait`] for the consumer).
pub(super) fn send(
    shared: &Shared,
    consumer: &BaseConsumer<StageContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    o: OutRecord,
    epoch: u64,
) -> Result<(), RuntimeError> {
    let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
    for (k, v) in &o.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    let slot = DeliveryContext::slot(epoch);
    let mut rec: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(&o.topic, slot)
        .key(o.key.as_slice())
        .headers(headers);
    // A versioned internal record with an empty value is a tombstone (a
    // compacted key deleted): a null value, which compaction removes.
    let tombstone = o.value.is_empty() && o.headers.iter().any(|(k, _)| *k == FORMAT_HEADER);
    if !tombstone {
        rec = rec.payload(o.value.as_slice());
    }
    if let Some(p) = o.partition {
        rec = rec.partition(p);
    }
    if let Some(t) = o.timestamp_ms {
        rec = rec.timestamp(t);
    }
    let outstanding = &producer.context().outstanding[slot];
    outstanding.fetch_add(1, Ordering::AcqRel);
    let mut wait: Option<QueueFullWait> = None;
    let sent = loop {
        match producer.send(rec) {
            Ok(()) => break Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                // Backpressure: the broker is slower than we are.
                rec = r;
                let w = wait.get_or_insert_with(QueueFullWait::new);
                if let Err(e) = w.tick(shared, consumer) {
                    break Err(e);
                }
            }
            Err((e, _)) => {
                // Never queued: no report will come for it.
                outstanding.fetch_sub(1, Ordering::AcqRel);
                break Err(kafka("produce", e));
            }
        }
    };
    if let Some(w) = wait {
        w.finish(consumer);
    }
    sent
}

/// A wait on a full producer queue. The first [`QUEUE_FULL_PAUSE_AFTER`] is
/// slept through; then every assigned partition is paused (librdkafka drops
/// what it prefetched and resumes from the last record handed out) and the
/// consumer is polled, so that rebalance callbacks run (their events are
/// handled by the loop afterwards, as usual), consumer errors are seen and
/// the member stays within `max.poll.interval.ms`. A record a poll still
/// returns (of a partition assigned meanwhile, so not paused) is read again:
/// its partition is sought back to it when the wait ends.
pub(super) struct QueueFullWait {
    pub(super) since: Instant,
    pub(super) paused: Option<TopicPartitionList>,
    pub(super) reread: BTreeMap<(String, i32), i64>,
    pub(super) poll_errors: PollErrors,
}

impl QueueFullWait {
    pub(super) fn new() -> QueueFullWait {
        QueueFullWait {
            since: Instant::now(),
            paused: None,
            reread: BTreeMap::new(),
            poll_errors: PollErrors::default(),
        }
    }

    /// One turn of the wait: an error ends it (a fatal error of the
    /// instance, a fatal consumer error, or still full a while after a stop
    /// was asked for).
    pub(super) fn tick(
        &mut self,
        shared: &Shared,
        consumer: &BaseConsumer<StageContext>,
    ) -> Result<(), RuntimeError> {
        if let Some(f) = shared.fatal() {
            return Err(RuntimeError::Fatal(Box::new(f)));
        }
        let waited = self.since.elapsed();
        if waited >= CALL_TIMEOUT && shared.stopping() {
            return Err(kafka(
                "produce",
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
            ));
        }
        if waited < QUEUE_FULL_PAUSE_AFTER {
            std::thread::sleep(Duration::from_millis(2));
            return Ok(());
        }
        if self.paused.is_none() {
            let tpl = consumer
                .assignment()
                .map_err(|e| kafka("read assignment", e))?;
            consumer
                .pause(&tpl)
                .map_err(|e| kafka("pause partitions", e))?;
            tracing::debug!(
                partitions = tpl.count(),
                "producer queue full: consumer paused"
            );
            self.paused = Some(tpl);
        }
        match consumer.poll(POLL) {
            None => {}
            Some(Ok(m)) => {
                let o = self
                    .reread
                    .entry((m.topic().to_owned(), m.partition()))
                    .or_insert(m.offset());
                *o = (*o).min(m.offset());
            }
            Some(Err(e)) => {
                self.poll_errors
                    .check(shared, "producer queue full", "consume", e, true)?
            }
        }
        Ok(())
    }

    /// Resumes what was paused and seeks back to the records read meanwhile.
    /// Failures are logged only: a partition revoked meanwhile can be
    /// neither resumed nor sought, and needs neither.
    pub(super) fn finish(self, consumer: &BaseConsumer<StageContext>) {
        if let Some(tpl) = &self.paused {
            if let Err(e) = consumer.resume(tpl) {
                tracing::debug!(error = %e, "resume after a full producer queue");
            }
        }
        for ((t, p), o) in self.reread {
            if let Err(e) = consumer.seek(&t, p, Offset::Offset(o), CALL_TIMEOUT) {
                tracing::debug!(topic = t, partition = p, error = %e, "seek back after a full producer queue");
            }
        }
    }
}
