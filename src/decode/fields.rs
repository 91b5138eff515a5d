//! Typed fields from a scanned object, as serde would deserialize them; the
//! outer `None` means "not the common case": the caller decodes with serde,
//! which gives the result or the exact reason.

use super::*;

/// A `String` field.
pub(super) fn req_string(b: &[u8], v: Val) -> Option<String> {
    match v.kind {
        // The scan checked the object is UTF-8, so the text between two
        // ASCII quotes is too.
        Kind::Str => std::str::from_utf8(v.inner(b)).ok().map(str::to_owned),
        Kind::EscStr => serde_json::from_slice(v.text(b)).ok(),
        _ => None,
    }
}

/// An `Option<String>` field (`#[serde(default)]`).
pub(super) fn opt_string(b: &[u8], v: Val) -> Option<Option<String>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        _ => req_string(b, v).map(Some),
    }
}

/// An `i64` field.
pub(super) fn req_i64(b: &[u8], v: Val) -> Option<i64> {
    match v.kind {
        Kind::Int => scan::int_i64(v.text(b)),
        _ => None,
    }
}

/// An `Option<i64>` field.
pub(super) fn opt_i64(b: &[u8], v: Val) -> Option<Option<i64>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        _ => req_i64(b, v).map(Some),
    }
}

/// An `Option<u32>` field.
pub(super) fn opt_u32(b: &[u8], v: Val) -> Option<Option<u32>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        Kind::Int => scan::int_u32(v.text(b)).map(Some),
        _ => None,
    }
}

/// An `Option<bool>` field.
pub(super) fn opt_bool(v: Val) -> Option<Option<bool>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        Kind::True => Some(Some(true)),
        Kind::False => Some(Some(false)),
        _ => None,
    }
}

/// An `Option<&RawValue>` field, as its text.
pub(super) fn opt_raw(b: &[u8], v: Val) -> Option<Option<&str>> {
    match v.kind {
        Kind::Absent | Kind::Null => Some(None),
        _ => std::str::from_utf8(v.text(b)).ok().map(Some),
    }
}

/// A key of a nested object, unescaped.
pub(super) fn key_text(k: &[u8], escaped: bool) -> Option<Cow<'_, str>> {
    if escaped {
        let mut quoted = Vec::with_capacity(k.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(k);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted)
            .ok()
            .map(Cow::Owned)
    } else {
        std::str::from_utf8(k).ok().map(Cow::Borrowed)
    }
}

/// The `context` field: a map of strings (a repeated key keeps its last
/// value, as serde's map does).
pub(super) fn opt_context(b: &[u8], v: Val) -> Option<Option<BTreeMap<String, String>>> {
    match v.kind {
        Kind::Absent | Kind::Null => return Some(None),
        Kind::Object => {}
        _ => return None,
    }
    let mut map = BTreeMap::new();
    scan::for_each_member(b, v, |k, escaped, val| {
        let value = req_string(b, val)?;
        map.insert(key_text(k, escaped)?.into_owned(), value);
        Some(())
    })?;
    Some(Some(map))
}

/// The `protectConfiguration` field.
pub(super) fn opt_protect(b: &[u8], v: Val) -> Option<Option<ProtectConfiguration>> {
    match v.kind {
        Kind::Absent | Kind::Null => return Some(None),
        Kind::Object => {}
        _ => return None,
    }
    let mut id: Option<Val> = None;
    let mut status: Option<Val> = None;
    scan::for_each_member(b, v, |k, escaped, val| {
        if escaped {
            return None;
        }
        let slot = match k {
            b"protectConfigurationId" => &mut id,
            b"protectStatus" => &mut status,
            _ => return Some(()),
        };
        match slot.replace(val) {
            Some(_) => None,
            None => Some(()),
        }
    })?;
    Some(Some(ProtectConfiguration {
        protect_configuration_id: opt_string(b, id.unwrap_or_default())?,
        protect_status: opt_string(b, status.unwrap_or_default())?,
    }))
}

/// The typed fields of a scanned delivery event, when they are the common
/// case (see [`req_string`]).
pub(super) fn raw_event_scanned<'v>(b: &'v [u8], s: &scan::Scanned) -> Option<RawEvent<'v>> {
    let p = |k: Key| Present(s.has(k));
    Some(RawEvent {
        event_type: req_string(b, s.get(Key::EventType))?,
        event_timestamp: req_i64(b, s.get(Key::EventTimestamp))?,
        message_id: req_string(b, s.get(Key::MessageId))?,
        message_request_timestamp: opt_i64(b, s.get(Key::MessageRequestTimestamp))?,
        event_version: opt_string(b, s.get(Key::EventVersion))?,
        is_final: opt_bool(s.get(Key::IsFinal))?,
        origination_phone_number: opt_string(b, s.get(Key::OriginationPhoneNumber))?,
        destination_phone_number: opt_string(b, s.get(Key::DestinationPhoneNumber))?,
        iso_country_code: opt_string(b, s.get(Key::IsoCountryCode))?,
        is_international_send: opt_bool(s.get(Key::IsInternationalSend))?,
        mcc: opt_string(b, s.get(Key::Mcc))?,
        mnc: opt_string(b, s.get(Key::Mnc))?,
        carrier_name: opt_string(b, s.get(Key::CarrierName))?,
        message_encoding: opt_string(b, s.get(Key::MessageEncoding))?,
        message_type: opt_string(b, s.get(Key::MessageType))?,
        message_status: opt_string(b, s.get(Key::MessageStatus))?,
        message_status_description: opt_string(b, s.get(Key::MessageStatusDescription))?,
        context: opt_context(b, s.get(Key::Context))?,
        total_message_parts: opt_u32(b, s.get(Key::TotalMessageParts))?,
        total_message_price: opt_raw(b, s.get(Key::TotalMessagePrice))?,
        total_carrier_fee: opt_raw(b, s.get(Key::TotalCarrierFee))?,
        call_duration_in_seconds: opt_u32(b, s.get(Key::CallDurationInSeconds))?,
        total_duration_in_minutes: opt_u32(b, s.get(Key::TotalDurationInMinutes))?,
        content_type: opt_string(b, s.get(Key::ContentType))?,
        protect_configuration: opt_protect(b, s.get(Key::ProtectConfiguration))?,
        record_id: p(Key::RecordId),
        channel: p(Key::Channel),
        status_class: p(Key::StatusClass),
        cost_usd: p(Key::CostUsd),
        spend_month: p(Key::SpendMonth),
        month_to_date_spend_usd: p(Key::MonthToDateSpendUsd),
        latency_ms: p(Key::LatencyMs),
        destination_opted_out: p(Key::DestinationOptedOut),
        duplicate: p(Key::Duplicate),
        late_receipt: p(Key::LateReceipt),
    })
}

/// The typed fields of a scanned inbound message, when they are the common case.
pub(super) fn raw_inbound_scanned(b: &[u8], s: &scan::Scanned) -> Option<RawInbound> {
    let p = |k: Key| Present(s.has(k));
    Some(RawInbound {
        origination_number: req_string(b, s.get(Key::OriginationNumber))?,
        destination_number: req_string(b, s.get(Key::DestinationNumber))?,
        message_body: req_string(b, s.get(Key::MessageBody))?,
        message_keyword: opt_string(b, s.get(Key::MessageKeyword))?,
        inbound_message_id: opt_string(b, s.get(Key::InboundMessageId))?,
        previous_published_message_id: opt_string(b, s.get(Key::PreviousPublishedMessageId))?,
        record_id: p(Key::RecordId),
        keyword: p(Key::Keyword),
        action: p(Key::Action),
        opt_out_list: p(Key::OptOutList),
        opted_out: p(Key::OptedOut),
        state_unchanged: p(Key::StateUnchanged),
    })
}
