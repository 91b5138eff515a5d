//! Stage 1: decode input records and forward each payload to its owner.
//!
//! Stateless. Delivery events are keyed by messageId (one owner per message),
//! inbound messages by the customer number (one owner per number). Dead
//! letters leave here with their original bytes.

use crate::dead_letter::DeadLetter;
use crate::decode::{decode_record_with, Decoded, RecordSource};
use crate::limits::Limits;
use crate::model::Payload;
use crate::stages::forward;

/// Where a payload goes.
#[derive(Clone, Debug)]
pub enum Routed {
    /// To the owner of `message_id`.
    Event {
        /// Partition key.
        message_id: String,
        /// The forwarded record ([`forward::encode`]).
        record: Vec<u8>,
    },
    /// To the owner of the customer number.
    Inbound {
        /// Partition key: the customer's E.164 number.
        customer: String,
        /// The forwarded record.
        record: Vec<u8>,
    },
    /// To the dead-letter output.
    Dead(Box<DeadLetter>),
}

/// Routes every payload of one input record, in input order, with the
/// default [`Limits`].
pub fn route(bytes: &[u8], src: &RecordSource, out: &mut Vec<Routed>) {
    route_with(bytes, src, &Limits::DEFAULT, out);
}

/// Routes every payload of one input record, in input order. The record
/// timestamp (`src.timestamp_ms`) is the arrival time that bounds every time
/// inside the record (as in [`crate::core::Core::process`]); it travels with
/// each forwarded payload so the owner applies the same bound.
pub fn route_with(bytes: &[u8], src: &RecordSource, limits: &Limits, out: &mut Vec<Routed>) {
    let mut decoded = Vec::new();
    let arrival = src.timestamp_ms;
    decode_record_with(bytes, src, limits, arrival, &mut decoded);
    for d in decoded {
        match d {
            Decoded::Dead(dl) => out.push(Routed::Dead(dl)),
            Decoded::Accepted(a) => match a.payload {
                Payload::Delivery(ev) => out.push(Routed::Event {
                    record: forward::encode(&a.provenance, None, arrival, &a.envelopes, &a.raw),
                    message_id: ev.message_id,
                }),
                Payload::Inbound(msg) => out.push(Routed::Inbound {
                    record: forward::encode(
                        &a.provenance,
                        msg.received_at,
                        arrival,
                        &a.envelopes,
                        &a.raw,
                    ),
                    customer: msg.origination_number,
                }),
            },
        }
    }
}
