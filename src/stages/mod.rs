//! The core split into the stages of the Kafka runtime, each pure and
//! deterministic like [`crate::core::Core`], which composes the same rules in
//! one process for file mode.
//!
//! With several instances in one consumer group the events of one message
//! arrive on different partitions, so per-message state needs one owner per
//! messageId, totals and alarms one owner per (month, channel), and opt-out
//! state one owner per customer number (see docs/kafka-runtime-design.md):
//!
//! * [`router`]: decode input records; forward each payload, keyed by its
//!   owner, with its original position; dead-letter the rest;
//! * [`message_owner`]: the spend ledger of the messages of one partition:
//!   enriched events and the partition's *partial* totals (absolute values);
//! * [`totals`]: sums the partials of a (month, channel), runs alarms and
//!   limits, and snapshots their state for the spend changelog;
//! * [`optout_owner`]: keyword rules and last-writer-wins opt-out state of
//!   the customers of one partition;
//! * [`view`]: what every instance replicates: the opt-out table and the
//!   partial totals.
//!
//! `tests/stages_equivalence.rs` checks that any split of a stream over
//! partitions gives the totals, alarms and opt-out table of a single [`crate::core::Core`].

pub mod forward;
pub mod message_owner;
pub mod optout_owner;
pub mod router;
pub mod totals;
pub mod view;
