//! Metrics recorded where things happen (the rest of `/metrics` is read from
//! [`super::Metrics`] and the replicated view at scrape time). Recorded
//! through the `metrics` facade: without the HTTP server no recorder is
//! installed and every call is a no-op.
//!
//! - The service's own delivery counters, per destination country, counted
//!   once per distinct event (duplicates are not counted):
//!   `smsvoice_text_message_parts_sent_total` (parts of TEXT_SUCCESSFUL
//!   events: accepted by the carrier, CloudWatch's
//!   NumberOfTextMessagePartsSent), `..._delivered_total` (TEXT_DELIVERED,
//!   NumberOfTextMessagePartsDelivered),
//!   `smsvoice_text_messages_blocked_by_protect_total`
//!   (TEXT_PROTECT_BLOCKED, TextMessagesBlockedByProtect), and the MEDIA_
//!   equivalents `smsvoice_media_message_parts_sent_total` /
//!   `..._delivered_total`. A country code that is not two letters A-Z is
//!   counted as `other` (label values stay bounded whatever the input).
//! - `smsvoice_event_output_latency_seconds{channel}`: from an event's
//!   `eventTimestamp` to its enriched event being produced.
//! - `smsvoice_dead_letters_by_reason_total{reason}`.
//! - `smsvoice_commit_seconds{stage}`, `smsvoice_partition_restore_seconds{stage}`,
//!   `smsvoice_archive_upload_seconds`.

use std::time::Duration;

use metrics::{counter, histogram};

use crate::model::{Channel, DeliveryEvent};

/// Latency histogram buckets, seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Duration histogram buckets (commits, restores, uploads), seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn country(code: Option<&str>) -> &str {
    match code {
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) => c,
        _ => "other",
    }
}

/// A distinct delivery event, its enriched event produced at `now_ms`.
pub fn delivery_event(ev: &DeliveryEvent, now_ms: i64) {
    let suffix = ev.event_type.split_once('_').map_or("", |(_, s)| s);
    let parts = || {
        ev.total_message_parts
            .filter(|p| *p > 0)
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(1)
    };
    let name = match (ev.channel, suffix) {
        (Channel::Sms, "SUCCESSFUL") => Some(("smsvoice_text_message_parts_sent_total", parts())),
        (Channel::Sms, "DELIVERED") => {
            Some(("smsvoice_text_message_parts_delivered_total", parts()))
        }
        (Channel::Sms, "PROTECT_BLOCKED") => {
            Some(("smsvoice_text_messages_blocked_by_protect_total", 1))
        }
        (Channel::Mms, "SUCCESSFUL") => Some(("smsvoice_media_message_parts_sent_total", parts())),
        (Channel::Mms, "DELIVERED") => {
            Some(("smsvoice_media_message_parts_delivered_total", parts()))
        }
        _ => None,
    };
    if let Some((name, n)) = name {
        let c = country(ev.iso_country_code.as_deref()).to_owned();
        counter!(name, "iso_country_code" => c).increment(n);
    }
    let ms = now_ms.saturating_sub(ev.event_timestamp);
    if ms >= 0 {
        histogram!("smsvoice_event_output_latency_seconds", "channel" => ev.channel.as_str())
            .record(ms as f64 / 1000.0);
    }
}

/// A dead letter written, by reason code.
pub fn dead_letter(reason: &'static str) {
    counter!("smsvoice_dead_letters_by_reason_total", "reason" => reason).increment(1);
}

/// A commit point of `stage` took `d`.
pub fn commit(stage: &'static str, d: Duration) {
    histogram!("smsvoice_commit_seconds", "stage" => stage).record(d.as_secs_f64());
}

/// A partition of `stage` was restored in `d`.
pub fn restore(stage: &'static str, d: Duration) {
    histogram!("smsvoice_partition_restore_seconds", "stage" => stage).record(d.as_secs_f64());
}

/// An archive file upload took `d`.
pub fn upload(d: Duration) {
    histogram!("smsvoice_archive_upload_seconds").record(d.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_labels_stay_bounded() {
        assert_eq!(country(Some("US")), "US");
        assert_eq!(country(Some("us")), "other");
        assert_eq!(country(Some("USA")), "other");
        assert_eq!(country(Some("+1")), "other");
        assert_eq!(country(None), "other");
    }
}
