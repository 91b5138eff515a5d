//! eventType -> channel and status class (BRIEF section 1).

use crate::model::{Channel, StatusClass};

/// Why an eventType is not the type of an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventTypeError {
    /// No known channel prefix (`TEXT_`, `MEDIA_`, `VOICE_`, `RCS_`).
    #[error("eventType {0:?} has no known channel prefix (TEXT_, MEDIA_, VOICE_, RCS_)")]
    UnknownPrefix(String),
    /// `TEXT_ALL`, `MEDIA_ALL`, `VOICE_ALL`, `ALL`: subscription filters, never event types.
    #[error("eventType {0:?} is a subscription filter, never the type of an event")]
    SubscriptionFilter(String),
}

/// Statuses each channel is documented to send; anything else with a known
/// prefix is a newer status and is kept (with no status class).
pub fn known_statuses(channel: Channel) -> &'static [&'static str] {
    match channel {
        Channel::Sms => &[
            "PENDING",
            "QUEUED",
            "SUCCESSFUL",
            "DELIVERED",
            "INVALID",
            "INVALID_MESSAGE",
            "UNREACHABLE",
            "CARRIER_UNREACHABLE",
            "BLOCKED",
            "CARRIER_BLOCKED",
            "SPAM",
            "UNKNOWN",
            "TTL_EXPIRED",
            "PROTECT_BLOCKED",
        ],
        Channel::Mms => &[
            "PENDING",
            "QUEUED",
            "SUCCESSFUL",
            "DELIVERED",
            "INVALID",
            "INVALID_MESSAGE",
            "UNREACHABLE",
            "CARRIER_UNREACHABLE",
            "BLOCKED",
            "CARRIER_BLOCKED",
            "SPAM",
            "UNKNOWN",
            "TTL_EXPIRED",
            "FILE_INACCESSIBLE",
            "FILE_TYPE_UNSUPPORTED",
            "FILE_SIZE_EXCEEDED",
        ],
        Channel::Voice => &[
            "INITIATED",
            "RINGING",
            "ANSWERED",
            "COMPLETED",
            "BUSY",
            "NO_ANSWER",
            "FAILED",
            "TTL_EXPIRED",
        ],
        Channel::Rcs => &["DELIVERED", "READ"],
    }
}

/// Splits an eventType into its channel; rejects unknown prefixes and the
/// subscription filter names.
pub fn channel_of(event_type: &str) -> Result<Channel, EventTypeError> {
    if event_type == "ALL" {
        return Err(EventTypeError::SubscriptionFilter(event_type.to_owned()));
    }
    for ch in Channel::ALL {
        if let Some(status) = event_type.strip_prefix(ch.event_prefix()) {
            if status == "ALL" {
                return Err(EventTypeError::SubscriptionFilter(event_type.to_owned()));
            }
            if status.is_empty() {
                return Err(EventTypeError::UnknownPrefix(event_type.to_owned()));
            }
            return Ok(ch);
        }
    }
    Err(EventTypeError::UnknownPrefix(event_type.to_owned()))
}

/// Status class of a status suffix; `None` for a status this version does not know.
///
/// The class depends on the status alone: the same word means the same thing
/// on every channel that uses it.
pub fn status_class(status: &str) -> Option<StatusClass> {
    Some(match status {
        "PENDING" | "QUEUED" | "INITIATED" | "RINGING" | "ANSWERED" => StatusClass::InFlight,
        "SUCCESSFUL" | "DELIVERED" | "COMPLETED" | "READ" => StatusClass::Accepted,
        "UNREACHABLE"
        | "CARRIER_UNREACHABLE"
        | "UNKNOWN"
        | "TTL_EXPIRED"
        | "BUSY"
        | "NO_ANSWER" => StatusClass::TransientFailure,
        "INVALID" | "INVALID_MESSAGE" | "BLOCKED" | "CARRIER_BLOCKED" | "SPAM"
        | "PROTECT_BLOCKED" | "FAILED" => StatusClass::PermanentFailure,
        s if s.starts_with("FILE_") => StatusClass::PermanentFailure,
        _ => return None,
    })
}

/// Channel and status class of an eventType.
pub fn classify(event_type: &str) -> Result<(Channel, Option<StatusClass>), EventTypeError> {
    let channel = channel_of(event_type)?;
    let status = &event_type[channel.event_prefix().len()..];
    Ok((channel, status_class(status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent table of BRIEF section 1, written out by hand.
    const EXPECTED: &[(&str, &str)] = &[
        ("PENDING", "IN_FLIGHT"),
        ("QUEUED", "IN_FLIGHT"),
        ("INITIATED", "IN_FLIGHT"),
        ("RINGING", "IN_FLIGHT"),
        ("ANSWERED", "IN_FLIGHT"),
        ("SUCCESSFUL", "ACCEPTED"),
        ("DELIVERED", "ACCEPTED"),
        ("COMPLETED", "ACCEPTED"),
        ("READ", "ACCEPTED"),
        ("UNREACHABLE", "TRANSIENT_FAILURE"),
        ("CARRIER_UNREACHABLE", "TRANSIENT_FAILURE"),
        ("UNKNOWN", "TRANSIENT_FAILURE"),
        ("TTL_EXPIRED", "TRANSIENT_FAILURE"),
        ("BUSY", "TRANSIENT_FAILURE"),
        ("NO_ANSWER", "TRANSIENT_FAILURE"),
        ("INVALID", "PERMANENT_FAILURE"),
        ("INVALID_MESSAGE", "PERMANENT_FAILURE"),
        ("BLOCKED", "PERMANENT_FAILURE"),
        ("CARRIER_BLOCKED", "PERMANENT_FAILURE"),
        ("SPAM", "PERMANENT_FAILURE"),
        ("PROTECT_BLOCKED", "PERMANENT_FAILURE"),
        ("FAILED", "PERMANENT_FAILURE"),
        ("FILE_INACCESSIBLE", "PERMANENT_FAILURE"),
        ("FILE_TYPE_UNSUPPORTED", "PERMANENT_FAILURE"),
        ("FILE_SIZE_EXCEEDED", "PERMANENT_FAILURE"),
    ];

    fn expected(status: &str) -> &'static str {
        EXPECTED
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("status {status} missing from the test table"))
    }

    #[test]
    fn every_documented_event_type_classifies() {
        let mut count = 0;
        for ch in Channel::ALL {
            for status in known_statuses(ch) {
                let et = format!("{}{}", ch.event_prefix(), status);
                let (c, class) = classify(&et).expect(&et);
                assert_eq!(c, ch, "{et}");
                assert_eq!(
                    class.map(StatusClass::as_str),
                    Some(expected(status)),
                    "{et}"
                );
                count += 1;
            }
        }
        // 14 TEXT_ + 16 MEDIA_ + 8 VOICE_ + 2 RCS_
        assert_eq!(count, 40);
    }

    #[test]
    fn newer_status_with_known_prefix_is_kept() {
        assert_eq!(classify("TEXT_SOMETHING_NEW"), Ok((Channel::Sms, None)));
        assert_eq!(classify("RCS_TYPING"), Ok((Channel::Rcs, None)));
        assert_eq!(classify("VOICE_VOICEMAIL"), Ok((Channel::Voice, None)));
    }

    #[test]
    fn rejects_unknown_prefix_and_filters() {
        for f in ["TEXT_ALL", "MEDIA_ALL", "VOICE_ALL", "RCS_ALL", "ALL"] {
            assert!(
                matches!(classify(f), Err(EventTypeError::SubscriptionFilter(_))),
                "{f}"
            );
        }
        for u in [
            "FAX_DELIVERED",
            "text_delivered",
            "DELIVERED",
            "",
            "TEXT_",
            "EMAIL_SENT",
        ] {
            assert!(
                matches!(classify(u), Err(EventTypeError::UnknownPrefix(_))),
                "{u}"
            );
        }
    }
}
