//! Versioned formats of the records the runtime writes and reads back
//! itself: spend partials, spend states and opt-out changes.
//!
//! Each such record carries the header `smsvoice.format` = its format
//! version in decimal (`1`); the JSON value is unchanged, so consumers of
//! the public topics (`spend`, the opt-out changelog) read it as before.
//! A reader ([`Format::decode`]):
//!
//! * accepts the current version and the unversioned legacy form (no
//!   header: records written before formats were versioned, which have the
//!   layout of version 1);
//! * refuses a newer version ([`RecordError::Newer`]: "written by a newer
//!   smsvoice"), a header that is not a number, and a value that does not
//!   decode ([`RecordError::Unreadable`]). Both are fatal: an internal record
//!   is never skipped, since skipping a partial or a spend state undercounts
//!   spend silently. The process stops naming the topic, partition and
//!   offset.
//! * treats an empty value (a tombstone: a compacted key deleted by an
//!   operator) as no record. smsvoice writes tombstones only to
//!   `message-state` (a dropped ledger entry); a versioned record with an
//!   empty value is produced with a null value (`super::produce::send`).
//!
//! `message-state` records ([`Format::MessageState`]) are binary: their
//! reader ([`Format::check`]) requires the header (there is no legacy form)
//! and leaves the value to [`crate::spend::SpendLedger::restore_entry`] and
//! [`crate::spend::SpendLedger::restore_state`].
//!
//! Forwarded records and idle markers (`events-by-message`,
//! `inbound-by-number`) are described in `crate::stages::forward`.
//! `docs/kafka-runtime-design.md` ("Internal formats") lists every format
//! and its versions.

use serde::de::DeserializeOwned;

use super::stage::InRecord;

/// The header naming a record's format version.
pub const FORMAT_HEADER: &str = "smsvoice.format";

/// A record format the runtime writes and reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `spend-partials` values ([`crate::stages::view::PartialTotal`]), read
    /// by the totals owners and by every instance's replicated view.
    SpendPartial,
    /// `spend` values ([`crate::stages::totals::SpendState`]), read back by
    /// the totals owners to restore their state.
    SpendState,
    /// Opt-out changelog values ([`crate::optout::OptOutChange`]), read by
    /// every instance's replicated view.
    OptOutChange,
    /// `message-state` values: a message owner's ledger entries and ledger
    /// state (binary, [`crate::spend::SpendLedger::snapshot_changes`]), read
    /// back by the message owners to restore. No legacy form: a record
    /// without the header is unreadable.
    MessageState,
}

impl Format {
    /// The version this build writes, and the newest it reads.
    pub const fn current(self) -> u32 {
        match self {
            Format::SpendPartial
            | Format::SpendState
            | Format::OptOutChange
            | Format::MessageState => 1,
        }
    }

    /// What a record of this format is, for messages.
    pub const fn what(self) -> &'static str {
        match self {
            Format::SpendPartial => "spend partial",
            Format::SpendState => "spend state",
            Format::OptOutChange => "opt-out change",
            Format::MessageState => "message-owner state",
        }
    }

    /// The header to write with a record of this format.
    pub fn header(self) -> (&'static str, Vec<u8>) {
        (FORMAT_HEADER, self.current().to_string().into_bytes())
    }

    /// Decodes `rec` as a record of this format: `Ok(None)` for a tombstone
    /// (empty value), an error for a newer format version or a value that
    /// does not decode (see the module documentation).
    pub fn decode<T: DeserializeOwned>(self, rec: &InRecord<'_>) -> Result<Option<T>, RecordError> {
        // No header (version 0) and version 1 share one layout; newer is refused.
        self.version(rec)?;
        if rec.value.is_empty() {
            return Ok(None);
        }
        // Version 0 (no header) and version 1 share one layout.
        serde_json::from_slice(rec.value).map(Some).map_err(|e| {
            // An opt-out change holds a phone number, which serde's
            // message may quote: hidden unless `[log] personal_data`.
            let detail = match self {
                Format::OptOutChange => crate::log::redact(&e.to_string()).into_owned(),
                _ => e.to_string(),
            };
            self.unreadable(rec, detail)
        })
    }

    /// Checks the version of a binary record of this format (the header is
    /// required: there is no unversioned form) and returns its value:
    /// `Ok(None)` for a tombstone (empty value).
    pub fn check<'a>(self, rec: &InRecord<'a>) -> Result<Option<&'a [u8]>, RecordError> {
        let Some(version) = self.version(rec)? else {
            return Err(self.unreadable(rec, format!("no {FORMAT_HEADER} header")));
        };
        if version == 0 {
            return Err(self.unreadable(rec, "format version 0".into()));
        }
        Ok((!rec.value.is_empty()).then_some(rec.value))
    }

    /// The version in the record's [`FORMAT_HEADER`] (`None`: no header),
    /// checked to be one this build reads.
    fn version(self, rec: &InRecord<'_>) -> Result<Option<u32>, RecordError> {
        let Some(raw) = rec.format else {
            return Ok(None);
        };
        let version = std::str::from_utf8(raw)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                self.unreadable(
                    rec,
                    format!(
                        "header {FORMAT_HEADER} is {:?}, not a version number",
                        String::from_utf8_lossy(raw)
                    ),
                )
            })?;
        if version > self.current() {
            return Err(RecordError::Newer {
                what: self.what(),
                topic: rec.topic.to_owned(),
                partition: rec.partition,
                offset: rec.offset,
                found: version,
                supported: self.current(),
            });
        }
        Ok(Some(version))
    }

    /// The error for a record of this format that does not decode.
    pub fn unreadable(self, rec: &InRecord<'_>, detail: String) -> RecordError {
        RecordError::Unreadable {
            what: self.what(),
            topic: rec.topic.to_owned(),
            partition: rec.partition,
            offset: rec.offset,
            detail,
        }
    }
}

/// An internal record that cannot be read: fatal, never skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Written by a newer smsvoice, in a format version this one does not
    /// know.
    #[error(
        "{what} at {topic} [{partition}] offset {offset} was written by a newer smsvoice \
         (format {found}; this version reads up to {supported}): upgrade this instance"
    )]
    Newer {
        /// What the record is (`"spend partial"`).
        what: &'static str,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// The record's format version.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The value or its format header does not decode.
    #[error(
        "unreadable {what} at {topic} [{partition}] offset {offset} (an internal record is \
         never skipped): {detail}"
    )]
    Unreadable {
        /// What the record is.
        what: &'static str,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// Why it does not decode.
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::view::PartialTotal;

    fn rec<'a>(value: &'a [u8], format: Option<&'a [u8]>) -> InRecord<'a> {
        InRecord {
            topic: "smsvoice.spend-partials",
            partition: 3,
            offset: 41,
            key: None,
            value,
            timestamp_ms: None,
            format,
        }
    }

    const PARTIAL: &[u8] =
        br#"{"month":"2025-11","channel":"SMS","partition":2,"spendUsd":"1.25","messages":3}"#;

    #[test]
    fn current_and_legacy_records_decode() {
        let (_, v) = Format::SpendPartial.header();
        assert_eq!(v, b"1");
        for format in [Some(&b"1"[..]), None, Some(&b"0"[..])] {
            let p: PartialTotal = Format::SpendPartial
                .decode(&rec(PARTIAL, format))
                .expect("decodes")
                .expect("a record");
            assert_eq!((p.partition, p.messages), (2, 3), "{format:?}");
        }
        // A tombstone is no record.
        let none: Option<PartialTotal> = Format::SpendPartial
            .decode(&rec(b"", Some(b"1")))
            .expect("tombstone");
        assert!(none.is_none());
    }

    #[test]
    fn a_newer_format_is_refused_naming_the_record() {
        let e = Format::SpendPartial
            .decode::<PartialTotal>(&rec(PARTIAL, Some(b"2")))
            .expect_err("newer");
        assert!(matches!(
            e,
            RecordError::Newer {
                found: 2,
                supported: 1,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "spend partial at smsvoice.spend-partials [3] offset 41 was written by a newer \
             smsvoice (format 2; this version reads up to 1): upgrade this instance"
        );
        // Even with a value this version could decode: its meaning may differ.
        let e = Format::SpendState
            .decode::<PartialTotal>(&rec(b"", Some(b"7")))
            .expect_err("newer tombstone");
        assert!(matches!(e, RecordError::Newer { .. }), "{e}");
    }

    #[test]
    fn undecodable_records_are_errors_not_skips() {
        for (value, format) in [
            (&b"{"[..], None),
            (&br#"{"month":"2025-11"}"#[..], Some(&b"1"[..])),
            (PARTIAL, Some(&b"one"[..])),
            (PARTIAL, Some(&[0xff][..])),
        ] {
            let e = Format::SpendPartial
                .decode::<PartialTotal>(&rec(value, format))
                .expect_err("unreadable");
            assert!(matches!(e, RecordError::Unreadable { .. }), "{e}");
            let line = e.to_string();
            assert!(
                line.starts_with(
                    "unreadable spend partial at smsvoice.spend-partials [3] offset 41"
                ),
                "{line}"
            );
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn an_unreadable_opt_out_change_does_not_quote_its_number() {
        for value in [
            &br#"{"optOutList":"Default","number":12065550100,"optedOut":true}"#[..],
            br#"{"optOutList":"Default","number":"+12065550100","optedOut":"+12065550100"}"#,
        ] {
            let e = Format::OptOutChange
                .decode::<crate::optout::OptOutChange>(&rec(value, Some(b"1")))
                .expect_err("unreadable");
            let line = e.to_string();
            assert!(
                line.starts_with(
                    "unreadable opt-out change at smsvoice.spend-partials [3] offset 41"
                ),
                "{line}"
            );
            assert!(!line.contains("2065550100"), "{line}");
            assert!(line.contains("invalid type"), "{line}");
        }
    }
}
