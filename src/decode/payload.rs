//! A payload object decoded: a delivery event or an inbound message, typed,
//! then checked (sizes, the cost ceiling, every timestamp against the time
//! bound).

use super::*;

/// Decodes one delivery event object with the default [`Limits`] and no
/// arrival time.
pub fn decode_delivery(bytes: &[u8]) -> Result<(DeliveryEvent, bool), Reason> {
    decode_delivery_with(bytes, &Limits::DEFAULT, TimeBound::NONE)
}

/// Decodes one delivery event object: types, sizes, the cost ceiling, and
/// every timestamp against `bound`.
pub fn decode_delivery_with(
    bytes: &[u8],
    limits: &Limits,
    bound: TimeBound,
) -> Result<(DeliveryEvent, bool), Reason> {
    finish_delivery(parse(bytes)?, limits, bound)
}

/// The checks of [`decode_delivery_with`] after the typed decoding.
pub(super) fn finish_delivery(
    r: RawEvent<'_>,
    limits: &Limits,
    bound: TimeBound,
) -> Result<(DeliveryEvent, bool), Reason> {
    let id_max = limits.max_id_bytes;
    check_len("eventType", &r.event_type, id_max, "max_id_bytes")?;
    check_len("messageId", &r.message_id, id_max, "max_id_bytes")?;
    let (channel, status_class) = classify(&r.event_type).map_err(|e| match e {
        EventTypeError::UnknownPrefix(t) => Reason::UnknownEventType { event_type: t },
        EventTypeError::SubscriptionFilter(t) => {
            Reason::SubscriptionFilterEventType { event_type: t }
        }
    })?;
    if r.message_id.trim().is_empty() {
        return Err(Reason::InvalidValue {
            field: "messageId".into(),
            detail: "empty".into(),
        });
    }
    check_opt_len(
        "originationPhoneNumber",
        r.origination_phone_number.as_deref(),
        id_max,
        "max_id_bytes",
    )?;
    check_opt_len(
        "destinationPhoneNumber",
        r.destination_phone_number.as_deref(),
        id_max,
        "max_id_bytes",
    )?;
    check_context(r.context.as_ref(), limits)?;
    let event_timestamp = bound.check("eventTimestamp", r.event_timestamp)?;
    let message_request_timestamp = r
        .message_request_timestamp
        .map(|t| bound.check("messageRequestTimestamp", t))
        .transpose()?;
    let total_message_price = money("totalMessagePrice", r.total_message_price)?;
    let total_carrier_fee = money("totalCarrierFee", r.total_carrier_fee)?;
    check_cost(channel, total_message_price, total_carrier_fee, limits)?;
    let collides = [
        r.record_id,
        r.channel,
        r.status_class,
        r.cost_usd,
        r.spend_month,
        r.month_to_date_spend_usd,
        r.latency_ms,
        r.destination_opted_out,
        r.duplicate,
        r.late_receipt,
    ]
    .iter()
    .any(|p| p.0);
    let (protect_configuration_id, protect_status) = match r.protect_configuration {
        Some(p) => (p.protect_configuration_id, p.protect_status),
        None => (None, None),
    };
    Ok((
        DeliveryEvent {
            event_type: r.event_type,
            channel,
            status_class,
            event_timestamp,
            message_id: r.message_id,
            message_request_timestamp,
            event_version: r.event_version,
            is_final: r.is_final,
            origination_phone_number: r.origination_phone_number,
            destination_phone_number: r.destination_phone_number,
            iso_country_code: r.iso_country_code,
            is_international_send: r.is_international_send,
            mcc: r.mcc,
            mnc: r.mnc,
            carrier_name: r.carrier_name,
            message_encoding: r.message_encoding,
            message_type: r.message_type,
            message_status: r.message_status,
            message_status_description: r.message_status_description,
            context: r.context,
            total_message_parts: r.total_message_parts.map(i64::from),
            total_message_price,
            total_carrier_fee,
            call_duration_in_seconds: r.call_duration_in_seconds.map(i64::from),
            total_duration_in_minutes: r.total_duration_in_minutes.map(i64::from),
            content_type: r.content_type,
            protect_configuration_id,
            protect_status,
        },
        collides,
    ))
}

/// Decodes one inbound message object with the default [`Limits`];
/// `received_at` comes from the envelope or the record.
pub fn decode_inbound(
    bytes: &[u8],
    received_at: Option<i64>,
) -> Result<(InboundMessage, bool), Reason> {
    decode_inbound_with(bytes, received_at, &Limits::DEFAULT)
}

/// Decodes one inbound message object: types and sizes. `received_at` comes
/// from the envelope or the record and is already bounded by the caller.
pub fn decode_inbound_with(
    bytes: &[u8],
    received_at: Option<i64>,
    limits: &Limits,
) -> Result<(InboundMessage, bool), Reason> {
    finish_inbound(parse(bytes)?, received_at, limits)
}

/// The checks of [`decode_inbound_with`] after the typed decoding.
pub(super) fn finish_inbound(
    r: RawInbound,
    received_at: Option<i64>,
    limits: &Limits,
) -> Result<(InboundMessage, bool), Reason> {
    let id_max = limits.max_id_bytes;
    check_len(
        "originationNumber",
        &r.origination_number,
        id_max,
        "max_id_bytes",
    )?;
    check_len(
        "destinationNumber",
        &r.destination_number,
        id_max,
        "max_id_bytes",
    )?;
    check_opt_len(
        "inboundMessageId",
        r.inbound_message_id.as_deref(),
        id_max,
        "max_id_bytes",
    )?;
    check_len(
        "messageBody",
        &r.message_body,
        limits.max_body_bytes,
        "max_body_bytes",
    )?;
    if !is_e164(&r.origination_number) {
        return Err(Reason::InvalidPhoneNumber {
            field: "originationNumber".into(),
            value: r.origination_number,
        });
    }
    if r.destination_number.trim().is_empty() {
        return Err(Reason::InvalidValue {
            field: "destinationNumber".into(),
            detail: "empty".into(),
        });
    }
    let collides = [
        r.record_id,
        r.keyword,
        r.action,
        r.opt_out_list,
        r.opted_out,
        r.state_unchanged,
    ]
    .iter()
    .any(|p| p.0);
    Ok((
        InboundMessage {
            origination_number: r.origination_number,
            destination_number: r.destination_number,
            message_body: r.message_body,
            message_keyword: r.message_keyword,
            inbound_message_id: r.inbound_message_id,
            previous_published_message_id: r.previous_published_message_id,
            received_at,
        },
        collides,
    ))
}
