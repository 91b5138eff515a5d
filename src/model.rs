//! The decoded payloads the core works on, and where each came from.
//!
//! These are the typed forms of BRIEF sections 1 and 2. The decoder
//! ([`crate::decode`]) produces them; the opt-out engine, the spend ledger and
//! the enrichment consume them. Every field of the input is kept with a faithful
//! type so the archive can store it as such.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::money::Usd;

/// Messaging channel, given by the eventType prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// `TEXT_` events.
    #[serde(rename = "SMS")]
    Sms,
    /// `MEDIA_` events.
    #[serde(rename = "MMS")]
    Mms,
    /// `VOICE_` events.
    #[serde(rename = "VOICE")]
    Voice,
    /// `RCS_` events.
    #[serde(rename = "RCS")]
    Rcs,
}

impl Channel {
    /// All channels, in a fixed order.
    pub const ALL: [Channel; 4] = [Channel::Sms, Channel::Mms, Channel::Voice, Channel::Rcs];

    /// The name used in records and config (`SMS`, `MMS`, `VOICE`, `RCS`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "SMS",
            Channel::Mms => "MMS",
            Channel::Voice => "VOICE",
            Channel::Rcs => "RCS",
        }
    }

    /// The eventType prefix of this channel (`TEXT_`, ...).
    pub const fn event_prefix(self) -> &'static str {
        match self {
            Channel::Sms => "TEXT_",
            Channel::Mms => "MEDIA_",
            Channel::Voice => "VOICE_",
            Channel::Rcs => "RCS_",
        }
    }

    /// The service's own CloudWatch metric for this channel's monthly spend, if any.
    pub const fn spend_metric(self) -> Option<&'static str> {
        match self {
            Channel::Sms => Some("TextMessageMonthlySpend"),
            Channel::Mms => Some("MediaMessageMonthlySpend"),
            Channel::Voice => Some("VoiceMessageMonthlySpend"),
            Channel::Rcs => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a status means to someone grouping events (BRIEF section 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatusClass {
    /// PENDING, QUEUED, INITIATED, RINGING, ANSWERED.
    InFlight,
    /// SUCCESSFUL, DELIVERED, COMPLETED, READ.
    Accepted,
    /// UNREACHABLE, CARRIER_UNREACHABLE, UNKNOWN, TTL_EXPIRED, BUSY, NO_ANSWER.
    TransientFailure,
    /// INVALID, INVALID_MESSAGE, BLOCKED, CARRIER_BLOCKED, SPAM, PROTECT_BLOCKED, FAILED, FILE_*.
    PermanentFailure,
}

impl StatusClass {
    /// The name used in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            StatusClass::InFlight => "IN_FLIGHT",
            StatusClass::Accepted => "ACCEPTED",
            StatusClass::TransientFailure => "TRANSIENT_FAILURE",
            StatusClass::PermanentFailure => "PERMANENT_FAILURE",
        }
    }
}

/// Where a payload came from: enough to name it uniquely and find it again.
///
/// In Kafka mode `source` is the topic, `partition` and `offset` the record's
/// position. In file mode `source` is the input path, `partition` is `None`
/// and `offset` is the index of the top-level JSON value in the file. `sub` is
/// the index of the payload inside that record (concatenated objects, Firehose
/// batch entries), counted in order from 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Provenance {
    /// Topic name or input file path.
    pub source: Arc<str>,
    /// Kafka partition; `None` in file mode.
    pub partition: Option<i32>,
    /// Kafka offset, or the record index in the file.
    pub offset: i64,
    /// Index of the payload inside the record.
    pub sub: u32,
}

impl Provenance {
    /// Deterministic id of the payload, the same on every replay of the same
    /// input: `source:partition:offset:sub` (`source:offset:sub` in file mode).
    pub fn record_id(&self) -> String {
        // Written by hand: `format!` costs more than the rest of the
        // enrichment of an event.
        let mut id = String::with_capacity(self.source.len() + 32);
        id.push_str(&self.source);
        if let Some(p) = self.partition {
            id.push(':');
            push_int(&mut id, i64::from(p));
        }
        id.push(':');
        push_int(&mut id, self.offset);
        id.push(':');
        push_int(&mut id, i64::from(self.sub));
        id
    }
}

/// Appends the decimal text of `n` (as `Display` writes it).
fn push_int(out: &mut String, n: i64) {
    let mut buf = [0u8; 20];
    let mut pos = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    for &d in &buf[pos..] {
        out.push(char::from(d));
    }
}

/// A delivery event (BRIEF section 1), every field typed.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryEvent {
    /// Full eventType text, e.g. `TEXT_DELIVERED`.
    pub event_type: String,
    /// Channel from the eventType prefix.
    pub channel: Channel,
    /// Class of the status, `None` for a newer status this version does not know.
    pub status_class: Option<StatusClass>,
    /// eventTimestamp, epoch milliseconds.
    pub event_timestamp: i64,
    /// messageId.
    pub message_id: String,
    /// messageRequestTimestamp, epoch milliseconds.
    pub message_request_timestamp: Option<i64>,
    /// eventVersion.
    pub event_version: Option<String>,
    /// isFinal.
    pub is_final: Option<bool>,
    /// originationPhoneNumber (E.164, sender ID or RCS agent id).
    pub origination_phone_number: Option<String>,
    /// destinationPhoneNumber.
    pub destination_phone_number: Option<String>,
    /// isoCountryCode.
    pub iso_country_code: Option<String>,
    /// isInternationalSend.
    pub is_international_send: Option<bool>,
    /// mcc, kept as text.
    pub mcc: Option<String>,
    /// mnc, kept as text ("05" is valid).
    pub mnc: Option<String>,
    /// carrierName.
    pub carrier_name: Option<String>,
    /// messageEncoding.
    pub message_encoding: Option<String>,
    /// messageType.
    pub message_type: Option<String>,
    /// messageStatus.
    pub message_status: Option<String>,
    /// messageStatusDescription.
    pub message_status_description: Option<String>,
    /// context (string -> string).
    pub context: Option<BTreeMap<String, String>>,
    /// totalMessageParts.
    pub total_message_parts: Option<i64>,
    /// totalMessagePrice, exact USD.
    pub total_message_price: Option<Usd>,
    /// totalCarrierFee, exact USD.
    pub total_carrier_fee: Option<Usd>,
    /// callDurationInSeconds.
    pub call_duration_in_seconds: Option<i64>,
    /// totalDurationInMinutes.
    pub total_duration_in_minutes: Option<i64>,
    /// contentType.
    pub content_type: Option<String>,
    /// protectConfiguration.protectConfigurationId.
    pub protect_configuration_id: Option<String>,
    /// protectConfiguration.protectStatus.
    pub protect_status: Option<String>,
}

impl DeliveryEvent {
    /// The status suffix of the eventType (`DELIVERED` for `TEXT_DELIVERED`).
    pub fn status(&self) -> &str {
        self.event_type
            .get(self.channel.event_prefix().len()..)
            .unwrap_or_default()
    }

    /// True when the event carries a price or a carrier fee.
    pub fn is_priced(&self) -> bool {
        self.total_message_price.is_some() || self.total_carrier_fee.is_some()
    }
}

/// An inbound two-way message (BRIEF section 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    /// originationNumber: the customer's phone, validated E.164.
    pub origination_number: String,
    /// destinationNumber: our number that received it.
    pub destination_number: String,
    /// messageBody: what the customer typed.
    pub message_body: String,
    /// messageKeyword: the registered keyword of our number, as given.
    pub message_keyword: Option<String>,
    /// inboundMessageId.
    pub inbound_message_id: Option<String>,
    /// previousPublishedMessageId.
    pub previous_published_message_id: Option<String>,
    /// When it was received, epoch ms: from the SNS `Timestamp` or EventBridge
    /// `time` envelope field, else the Kafka record timestamp, else unknown.
    pub received_at: Option<i64>,
}

/// One decoded payload.
// A decoded payload always travels boxed (`decode::Decoded`), so the size
// difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// A delivery event.
    Delivery(DeliveryEvent),
    /// An inbound message.
    Inbound(InboundMessage),
}

/// Checks a customer number is E.164: `+`, a non-zero digit, then 1 to 14 more digits.
pub fn is_e164(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3
        && b.len() <= 16
        && b[0] == b'+'
        && (b'1'..=b'9').contains(&b[1])
        && b[2..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164() {
        assert!(is_e164("+14255550182"));
        assert!(is_e164("+447700900123"));
        assert!(is_e164("+123456789012345"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164("14255550182"));
        assert!(!is_e164("+04255550182"));
        assert!(!is_e164("+1 425 555 0182"));
        assert!(!is_e164("+"));
        assert!(!is_e164(""));
    }

    #[test]
    fn record_ids_are_positional() {
        let k = Provenance {
            source: "events".into(),
            partition: Some(3),
            offset: 42,
            sub: 1,
        };
        assert_eq!(k.record_id(), "events:3:42:1");
        let f = Provenance {
            source: "in.jsonl".into(),
            partition: None,
            offset: 7,
            sub: 0,
        };
        assert_eq!(f.record_id(), "in.jsonl:7:0");
        for (partition, offset, sub) in [
            (Some(i32::MIN), i64::MIN, u32::MAX),
            (Some(i32::MAX), i64::MAX, 0),
            (Some(-1), -10, 9),
            (None, 0, 10),
        ] {
            let p = Provenance {
                source: "t".into(),
                partition,
                offset,
                sub,
            };
            let want = match partition {
                Some(x) => format!("t:{x}:{offset}:{sub}"),
                None => format!("t:{offset}:{sub}"),
            };
            assert_eq!(p.record_id(), want);
        }
    }
}
