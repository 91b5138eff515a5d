//! Exact monthly spend per channel, spend alarms and enforced limits (BRIEF
//! section 3).
//!
//! * [`SpendLedger`] turns delivery events into exact month-to-date totals per
//!   (UTC month, channel), counting each messageId once and applying price
//!   corrections as differences; months close `receipt_window_hours` after
//!   their end and their per-message state is then dropped (see
//!   [`ledger`]).
//! * [`AlarmEngine`] turns month-to-date spend into alarm state changes and
//!   `LIMIT_REACHED` records with deterministic ids (see [`alarms`]).
//!
//! Both are pure and deterministic. A caller applies each event to the
//! ledger, then evaluates every bucket listed in
//! [`LedgerOutcome::changed`]:
//!
//! ```ignore
//! let outcome = ledger.apply(&event);
//! for (month, channel, totals) in &outcome.changed {
//!     engine.evaluate(*month, *channel, totals.spend, &mut records);
//! }
//! ```

pub mod alarms;
pub mod config;
pub mod ledger;
pub mod month;

pub use alarms::{AlarmEngine, AlarmRecord, AlarmSnapshot, AlarmState, AlarmStateEntry};
pub use ledger::{LedgerChanges, LedgerOutcome, SnapshotError, SpendLedger, Totals};
pub use month::{MonthKey, ParseMonthError};

#[cfg(test)]
mod tests;
