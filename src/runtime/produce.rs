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

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::formats::FORMAT_HEADER;
use super::paused_poll::PausedPoll;
use super::records::OutRecord;
use super::stage::{kafka, StageContext};
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
/// [`PausedPoll`] for the consumer).
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
    let mut wait: Option<PausedPoll> = None;
    let sent = loop {
        match producer.send(rec) {
            Ok(()) => break Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                // Backpressure: the broker is slower than we are.
                rec = r;
                let w = wait.get_or_insert_with(PausedPoll::queue_full);
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
