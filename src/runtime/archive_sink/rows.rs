//! An output record as an archive row: the enriched payload decoded back
//! with the enrichment keys and headers the stages wrote.

use super::*;

/// The names of the envelopes the decoder knows, as the `'static` names the
/// rows hold; `None` for an unknown one.
pub(super) fn envelopes(text: &[u8]) -> Option<Vec<&'static str>> {
    let text = std::str::from_utf8(text).ok()?;
    text.split(',')
        .filter(|e| !e.is_empty())
        .map(|e| {
            ["sns", "eventbridge", "firehose"]
                .into_iter()
                .find(|k| *k == e)
        })
        .collect()
}

/// The value of header `name` (an empty slice for a null value).
pub(super) fn header<'a>(m: &'a BorrowedMessage<'a>, name: &str) -> Option<&'a [u8]> {
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == name)
            .map(|h| h.value.unwrap_or(&[]))
    })
}

pub(super) fn header_str<'a>(m: &'a BorrowedMessage<'a>, name: &str) -> Option<&'a str> {
    header(m, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// An optional number header: `Some(None)` when present and empty.
pub(super) fn header_ms(m: &BorrowedMessage<'_>, name: &str) -> Option<Option<i64>> {
    header_str(m, name).map(|v| v.parse().ok())
}

/// The enrichment keys of an enriched delivery event.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventTail {
    record_id: String,
    status_class: Option<StatusClass>,
    cost_usd: Usd,
    spend_month: String,
    month_to_date_spend_usd: Usd,
    latency_ms: Option<i64>,
    destination_opted_out: Option<bool>,
    duplicate: bool,
    late_receipt: bool,
}

/// The enrichment keys of an enriched inbound message.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InboundTail {
    record_id: String,
    keyword: Option<String>,
    action: InboundAction,
    opt_out_list: String,
    opted_out: bool,
}

/// The limits the sink decodes enriched payloads with: those of the
/// configuration without the size and cost bounds (the stages applied
/// them already; the enriched object is larger than the original payload).
pub fn sink_limits(shared: &Shared) -> Limits {
    Limits {
        max_record_bytes: usize::MAX,
        max_id_bytes: usize::MAX,
        max_body_bytes: usize::MAX,
        max_context_entries: usize::MAX,
        max_context_value_bytes: usize::MAX,
        max_message_cost_by_channel: [Usd::from_units(i128::MAX); 4],
        ..Limits::new(&*shared.cfg)
    }
}

/// The archive row of an enriched delivery event.
pub fn event_row(value: &[u8], env: &[u8], limits: &Limits) -> Result<EnrichedEvent, String> {
    let (event, _) =
        decode_delivery_with(value, limits, TimeBound::NONE).map_err(|r| r.to_string())?;
    let tail: EventTail = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let provenance =
        parse_record_id(&tail.record_id).ok_or_else(|| format!("recordId {:?}", tail.record_id))?;
    let envelopes = envelopes(env).ok_or("unknown envelope")?;
    let enrichment = EventEnrichment {
        record_id: tail.record_id,
        channel: event.channel,
        status_class: tail.status_class,
        cost_usd: tail.cost_usd,
        spend_month: tail
            .spend_month
            .parse()
            .map_err(|_| format!("spendMonth {:?}", tail.spend_month))?,
        month_to_date_spend_usd: tail.month_to_date_spend_usd,
        latency_ms: tail.latency_ms,
        destination_opted_out: tail.destination_opted_out,
        duplicate: tail.duplicate,
        late_receipt: tail.late_receipt,
    };
    Ok(EnrichedEvent {
        event,
        enrichment,
        provenance,
        envelopes,
        json: Vec::new(),
    })
}

/// The archive row of an enriched inbound message.
pub fn inbound_row(
    value: &[u8],
    env: &[u8],
    received_at: Option<i64>,
    limits: &Limits,
) -> Result<EnrichedInbound, String> {
    let (message, _) =
        decode_inbound_with(value, received_at, limits).map_err(|r| r.to_string())?;
    let tail: InboundTail = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let provenance =
        parse_record_id(&tail.record_id).ok_or_else(|| format!("recordId {:?}", tail.record_id))?;
    let envelopes = envelopes(env).ok_or("unknown envelope")?;
    Ok(EnrichedInbound {
        message,
        enrichment: InboundEnrichment {
            record_id: tail.record_id,
            keyword: tail.keyword,
            action: tail.action,
            opt_out_list: tail.opt_out_list,
            opted_out: tail.opted_out,
            state_unchanged: None,
        },
        provenance,
        envelopes,
        json: Vec::new(),
    })
}
