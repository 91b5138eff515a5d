//! Column builders: core records in, Arrow record batches out.
//!
//! One builder per table; each appends a row per record and produces a
//! [`RecordBatch`] against the table's schema ([`Table::schema`]). The column
//! order here follows `schema.rs`; [`RecordBatch::try_new`] checks every
//! column's type against the schema, and the tests write each table.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Decimal128Builder, Int32Builder, Int64Builder,
    ListBuilder, MapBuilder, MapFieldNames, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::dead_letter::DeadLetter;
use crate::enrich::{EnrichedEvent, EnrichedInbound};
use crate::model::Provenance;
use crate::money::Usd;

use super::schema::{
    Table, LIST_ITEM, MAP_ENTRIES, MAP_KEY, MAP_VALUE, MONEY_PRECISION, MONEY_SCALE, UTC,
};

fn ts() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone(UTC)
}

fn money() -> Decimal128Builder {
    // 38/10 are valid decimal128 parameters; the fallback keeps the
    // function total without unwrap.
    Decimal128Builder::new()
        .with_precision_and_scale(MONEY_PRECISION, MONEY_SCALE)
        .unwrap_or_else(|_| Decimal128Builder::new())
}

fn text_list() -> ListBuilder<StringBuilder> {
    ListBuilder::new(StringBuilder::new()).with_field(Arc::new(arrow::datatypes::Field::new(
        LIST_ITEM,
        arrow::datatypes::DataType::Utf8,
        true,
    )))
}

fn text_map() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(
        Some(MapFieldNames {
            entry: MAP_ENTRIES.into(),
            key: MAP_KEY.into(),
            value: MAP_VALUE.into(),
        }),
        StringBuilder::new(),
        StringBuilder::new(),
    )
}

fn usd(b: &mut Decimal128Builder, v: Option<Usd>) {
    b.append_option(v.map(Usd::units));
}

fn i32_saturating(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Provenance columns shared by the three tables.
struct ProvenanceCols {
    source: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    sub: Int32Builder,
    envelopes: ListBuilder<StringBuilder>,
    processed_at: TimestampMillisecondBuilder,
}

impl ProvenanceCols {
    fn new() -> Self {
        ProvenanceCols {
            source: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            sub: Int32Builder::new(),
            envelopes: text_list(),
            processed_at: ts(),
        }
    }

    fn append(&mut self, p: &Provenance, envelopes: &[&str], processed_at_ms: i64) -> usize {
        self.source.append_value(&*p.source);
        self.partition.append_option(p.partition);
        self.offset.append_value(p.offset);
        self.sub.append_value(i32_saturating(p.sub));
        for e in envelopes {
            self.envelopes.values().append_value(e);
        }
        self.envelopes.append(true);
        self.processed_at.append_value(processed_at_ms);
        p.source.len() + envelopes.iter().map(|e| e.len()).sum::<usize>() + 32
    }

    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.source.finish()));
        cols.push(Arc::new(self.partition.finish()));
        cols.push(Arc::new(self.offset.finish()));
        cols.push(Arc::new(self.sub.finish()));
        cols.push(Arc::new(self.envelopes.finish()));
        cols.push(Arc::new(self.processed_at.finish()));
    }
}

fn len_opt(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::len)
}

/// Rows of `delivery_events`.
pub struct EventRows {
    event_type: StringBuilder,
    event_version: StringBuilder,
    event_timestamp: TimestampMillisecondBuilder,
    is_final: BooleanBuilder,
    origination_phone_number: StringBuilder,
    destination_phone_number: StringBuilder,
    iso_country_code: StringBuilder,
    is_international_send: BooleanBuilder,
    mcc: StringBuilder,
    mnc: StringBuilder,
    carrier_name: StringBuilder,
    message_id: StringBuilder,
    message_request_timestamp: TimestampMillisecondBuilder,
    message_encoding: StringBuilder,
    message_type: StringBuilder,
    message_status: StringBuilder,
    message_status_description: StringBuilder,
    context: MapBuilder<StringBuilder, StringBuilder>,
    total_message_parts: Int64Builder,
    total_message_price: Decimal128Builder,
    total_carrier_fee: Decimal128Builder,
    call_duration_in_seconds: Int64Builder,
    total_duration_in_minutes: Int64Builder,
    content_type: StringBuilder,
    protect_configuration_id: StringBuilder,
    protect_status: StringBuilder,
    record_id: StringBuilder,
    status_class: StringBuilder,
    cost_usd: Decimal128Builder,
    spend_month: StringBuilder,
    month_to_date_spend_usd: Decimal128Builder,
    latency_ms: Int64Builder,
    destination_opted_out: BooleanBuilder,
    duplicate: BooleanBuilder,
    late_receipt: BooleanBuilder,
    prov: ProvenanceCols,
    rows: usize,
}

impl Default for EventRows {
    fn default() -> Self {
        EventRows {
            event_type: StringBuilder::new(),
            event_version: StringBuilder::new(),
            event_timestamp: ts(),
            is_final: BooleanBuilder::new(),
            origination_phone_number: StringBuilder::new(),
            destination_phone_number: StringBuilder::new(),
            iso_country_code: StringBuilder::new(),
            is_international_send: BooleanBuilder::new(),
            mcc: StringBuilder::new(),
            mnc: StringBuilder::new(),
            carrier_name: StringBuilder::new(),
            message_id: StringBuilder::new(),
            message_request_timestamp: ts(),
            message_encoding: StringBuilder::new(),
            message_type: StringBuilder::new(),
            message_status: StringBuilder::new(),
            message_status_description: StringBuilder::new(),
            context: text_map(),
            total_message_parts: Int64Builder::new(),
            total_message_price: money(),
            total_carrier_fee: money(),
            call_duration_in_seconds: Int64Builder::new(),
            total_duration_in_minutes: Int64Builder::new(),
            content_type: StringBuilder::new(),
            protect_configuration_id: StringBuilder::new(),
            protect_status: StringBuilder::new(),
            record_id: StringBuilder::new(),
            status_class: StringBuilder::new(),
            cost_usd: money(),
            spend_month: StringBuilder::new(),
            month_to_date_spend_usd: money(),
            latency_ms: Int64Builder::new(),
            destination_opted_out: BooleanBuilder::new(),
            duplicate: BooleanBuilder::new(),
            late_receipt: BooleanBuilder::new(),
            prov: ProvenanceCols::new(),
            rows: 0,
        }
    }
}

impl EventRows {
    /// Appends one event; returns an estimate of the bytes it adds.
    pub fn append(&mut self, e: &EnrichedEvent, processed_at_ms: i64) -> usize {
        let ev = &e.event;
        let en = &e.enrichment;
        self.event_type.append_value(&ev.event_type);
        self.event_version
            .append_option(ev.event_version.as_deref());
        self.event_timestamp.append_value(ev.event_timestamp);
        self.is_final.append_option(ev.is_final);
        self.origination_phone_number
            .append_option(ev.origination_phone_number.as_deref());
        self.destination_phone_number
            .append_option(ev.destination_phone_number.as_deref());
        self.iso_country_code
            .append_option(ev.iso_country_code.as_deref());
        self.is_international_send
            .append_option(ev.is_international_send);
        self.mcc.append_option(ev.mcc.as_deref());
        self.mnc.append_option(ev.mnc.as_deref());
        self.carrier_name.append_option(ev.carrier_name.as_deref());
        self.message_id.append_value(&ev.message_id);
        self.message_request_timestamp
            .append_option(ev.message_request_timestamp);
        self.message_encoding
            .append_option(ev.message_encoding.as_deref());
        self.message_type.append_option(ev.message_type.as_deref());
        self.message_status
            .append_option(ev.message_status.as_deref());
        self.message_status_description
            .append_option(ev.message_status_description.as_deref());
        let mut context_bytes = 0;
        match &ev.context {
            Some(map) => {
                for (k, v) in map {
                    self.context.keys().append_value(k);
                    self.context.values().append_value(v);
                    context_bytes += k.len() + v.len() + 8;
                }
                // Cannot fail: keys and values were appended in pairs.
                let _ = self.context.append(true);
            }
            None => {
                let _ = self.context.append(false);
            }
        }
        self.total_message_parts
            .append_option(ev.total_message_parts);
        usd(&mut self.total_message_price, ev.total_message_price);
        usd(&mut self.total_carrier_fee, ev.total_carrier_fee);
        self.call_duration_in_seconds
            .append_option(ev.call_duration_in_seconds);
        self.total_duration_in_minutes
            .append_option(ev.total_duration_in_minutes);
        self.content_type.append_option(ev.content_type.as_deref());
        self.protect_configuration_id
            .append_option(ev.protect_configuration_id.as_deref());
        self.protect_status
            .append_option(ev.protect_status.as_deref());
        self.record_id.append_value(&en.record_id);
        self.status_class
            .append_option(en.status_class.map(|c| c.as_str()));
        self.cost_usd.append_value(en.cost_usd.units());
        // Written straight into the builder: no allocation per row.
        let _ = write!(self.spend_month, "{}", en.spend_month);
        self.spend_month.append_value("");
        self.month_to_date_spend_usd
            .append_value(en.month_to_date_spend_usd.units());
        self.latency_ms.append_option(en.latency_ms);
        self.destination_opted_out
            .append_option(en.destination_opted_out);
        self.duplicate.append_value(en.duplicate);
        self.late_receipt.append_value(en.late_receipt);
        let prov = self
            .prov
            .append(&e.provenance, &e.envelopes, processed_at_ms);
        self.rows += 1;
        ev.event_type.len()
            + len_opt(&ev.event_version)
            + len_opt(&ev.origination_phone_number)
            + len_opt(&ev.destination_phone_number)
            + len_opt(&ev.iso_country_code)
            + len_opt(&ev.mcc)
            + len_opt(&ev.mnc)
            + len_opt(&ev.carrier_name)
            + ev.message_id.len()
            + len_opt(&ev.message_encoding)
            + len_opt(&ev.message_type)
            + len_opt(&ev.message_status)
            + len_opt(&ev.message_status_description)
            + context_bytes
            + len_opt(&ev.content_type)
            + len_opt(&ev.protect_configuration_id)
            + len_opt(&ev.protect_status)
            + en.record_id.len()
            + 7
            + 120
            + prov
    }

    /// Rows appended since the last [`EventRows::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The buffered rows as a batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut c: Vec<ArrayRef> = vec![
            Arc::new(self.event_type.finish()),
            Arc::new(self.event_version.finish()),
            Arc::new(self.event_timestamp.finish()),
            Arc::new(self.is_final.finish()),
            Arc::new(self.origination_phone_number.finish()),
            Arc::new(self.destination_phone_number.finish()),
            Arc::new(self.iso_country_code.finish()),
            Arc::new(self.is_international_send.finish()),
            Arc::new(self.mcc.finish()),
            Arc::new(self.mnc.finish()),
            Arc::new(self.carrier_name.finish()),
            Arc::new(self.message_id.finish()),
            Arc::new(self.message_request_timestamp.finish()),
            Arc::new(self.message_encoding.finish()),
            Arc::new(self.message_type.finish()),
            Arc::new(self.message_status.finish()),
            Arc::new(self.message_status_description.finish()),
            Arc::new(self.context.finish()),
            Arc::new(self.total_message_parts.finish()),
            Arc::new(self.total_message_price.finish()),
            Arc::new(self.total_carrier_fee.finish()),
            Arc::new(self.call_duration_in_seconds.finish()),
            Arc::new(self.total_duration_in_minutes.finish()),
            Arc::new(self.content_type.finish()),
            Arc::new(self.protect_configuration_id.finish()),
            Arc::new(self.protect_status.finish()),
            Arc::new(self.record_id.finish()),
            Arc::new(self.status_class.finish()),
            Arc::new(self.cost_usd.finish()),
            Arc::new(self.spend_month.finish()),
            Arc::new(self.month_to_date_spend_usd.finish()),
            Arc::new(self.latency_ms.finish()),
            Arc::new(self.destination_opted_out.finish()),
            Arc::new(self.duplicate.finish()),
            Arc::new(self.late_receipt.finish()),
        ];
        self.prov.finish(&mut c);
        self.rows = 0;
        RecordBatch::try_new(Table::DeliveryEvents.schema(), c)
    }
}

/// Rows of `inbound_messages`.
pub struct InboundRows {
    origination_number: StringBuilder,
    destination_number: StringBuilder,
    message_keyword: StringBuilder,
    message_body: StringBuilder,
    inbound_message_id: StringBuilder,
    previous_published_message_id: StringBuilder,
    received_at: TimestampMillisecondBuilder,
    record_id: StringBuilder,
    keyword: StringBuilder,
    action: StringBuilder,
    opt_out_list: StringBuilder,
    opted_out: BooleanBuilder,
    prov: ProvenanceCols,
    rows: usize,
}

impl Default for InboundRows {
    fn default() -> Self {
        InboundRows {
            origination_number: StringBuilder::new(),
            destination_number: StringBuilder::new(),
            message_keyword: StringBuilder::new(),
            message_body: StringBuilder::new(),
            inbound_message_id: StringBuilder::new(),
            previous_published_message_id: StringBuilder::new(),
            received_at: ts(),
            record_id: StringBuilder::new(),
            keyword: StringBuilder::new(),
            action: StringBuilder::new(),
            opt_out_list: StringBuilder::new(),
            opted_out: BooleanBuilder::new(),
            prov: ProvenanceCols::new(),
            rows: 0,
        }
    }
}

impl InboundRows {
    /// Appends one message; returns an estimate of the bytes it adds.
    pub fn append(&mut self, m: &EnrichedInbound, processed_at_ms: i64) -> usize {
        let msg = &m.message;
        let en = &m.enrichment;
        self.origination_number
            .append_value(&msg.origination_number);
        self.destination_number
            .append_value(&msg.destination_number);
        self.message_keyword
            .append_option(msg.message_keyword.as_deref());
        self.message_body.append_value(&msg.message_body);
        self.inbound_message_id
            .append_option(msg.inbound_message_id.as_deref());
        self.previous_published_message_id
            .append_option(msg.previous_published_message_id.as_deref());
        self.received_at.append_option(msg.received_at);
        self.record_id.append_value(&en.record_id);
        self.keyword.append_option(en.keyword.as_deref());
        self.action.append_value(en.action.as_str());
        self.opt_out_list.append_value(&en.opt_out_list);
        self.opted_out.append_value(en.opted_out);
        let prov = self
            .prov
            .append(&m.provenance, &m.envelopes, processed_at_ms);
        self.rows += 1;
        msg.origination_number.len()
            + msg.destination_number.len()
            + len_opt(&msg.message_keyword)
            + msg.message_body.len()
            + len_opt(&msg.inbound_message_id)
            + len_opt(&msg.previous_published_message_id)
            + en.record_id.len()
            + len_opt(&en.keyword)
            + en.action.as_str().len()
            + en.opt_out_list.len()
            + 16
            + prov
    }

    /// Rows appended since the last [`InboundRows::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The buffered rows as a batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut c: Vec<ArrayRef> = vec![
            Arc::new(self.origination_number.finish()),
            Arc::new(self.destination_number.finish()),
            Arc::new(self.message_keyword.finish()),
            Arc::new(self.message_body.finish()),
            Arc::new(self.inbound_message_id.finish()),
            Arc::new(self.previous_published_message_id.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.record_id.finish()),
            Arc::new(self.keyword.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.opt_out_list.finish()),
            Arc::new(self.opted_out.finish()),
        ];
        self.prov.finish(&mut c);
        self.rows = 0;
        RecordBatch::try_new(Table::InboundMessages.schema(), c)
    }
}

/// A dead letter as the archive sink reads it back from the dead-letter
/// topic: the column values, borrowed from the record and its headers.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetterParts<'a> {
    /// `record_id`.
    pub record_id: &'a str,
    /// `reason` (the code).
    pub reason: &'a str,
    /// `field`.
    pub field: Option<&'a str>,
    /// `detail`.
    pub detail: &'a str,
    /// `payload`.
    pub payload: &'a [u8],
    /// `inner_payload`.
    pub inner_payload: Option<&'a [u8]>,
    /// `record_timestamp`.
    pub record_timestamp_ms: Option<i64>,
    /// The source position.
    pub provenance: &'a Provenance,
    /// `envelopes`.
    pub envelopes: &'a [&'a str],
}

/// Rows of `dead_letters`.
pub struct DeadLetterRows {
    record_id: StringBuilder,
    reason: StringBuilder,
    field: StringBuilder,
    detail: StringBuilder,
    payload: BinaryBuilder,
    inner_payload: BinaryBuilder,
    record_timestamp: TimestampMillisecondBuilder,
    prov: ProvenanceCols,
    rows: usize,
}

impl Default for DeadLetterRows {
    fn default() -> Self {
        DeadLetterRows {
            record_id: StringBuilder::new(),
            reason: StringBuilder::new(),
            field: StringBuilder::new(),
            detail: StringBuilder::new(),
            payload: BinaryBuilder::new(),
            inner_payload: BinaryBuilder::new(),
            record_timestamp: ts(),
            prov: ProvenanceCols::new(),
            rows: 0,
        }
    }
}

impl DeadLetterRows {
    /// Appends one dead letter; `record_timestamp_ms` is the Kafka record
    /// timestamp, if any. Returns an estimate of the bytes it adds.
    pub fn append(
        &mut self,
        d: &DeadLetter,
        record_timestamp_ms: Option<i64>,
        processed_at_ms: i64,
    ) -> usize {
        let record_id = d.provenance.record_id();
        let detail = d.reason.to_string();
        self.record_id.append_value(&record_id);
        self.reason.append_value(d.reason.code());
        self.field.append_option(d.reason.field());
        self.detail.append_value(&detail);
        self.payload.append_value(&d.payload);
        self.inner_payload.append_option(d.inner_payload.as_deref());
        self.record_timestamp.append_option(record_timestamp_ms);
        let prov = self
            .prov
            .append(&d.provenance, &d.envelopes, processed_at_ms);
        self.rows += 1;
        record_id.len()
            + d.reason.code().len()
            + d.reason.field().map_or(0, str::len)
            + detail.len()
            + d.payload.len()
            + d.inner_payload.as_ref().map_or(0, Vec::len)
            + 8
            + prov
    }

    /// Appends a dead letter from its column values (the archive sink);
    /// returns an estimate of the bytes it adds.
    pub fn append_parts(&mut self, d: &DeadLetterParts<'_>, processed_at_ms: i64) -> usize {
        self.record_id.append_value(d.record_id);
        self.reason.append_value(d.reason);
        self.field.append_option(d.field);
        self.detail.append_value(d.detail);
        self.payload.append_value(d.payload);
        self.inner_payload.append_option(d.inner_payload);
        self.record_timestamp.append_option(d.record_timestamp_ms);
        let prov = self.prov.append(d.provenance, d.envelopes, processed_at_ms);
        self.rows += 1;
        d.record_id.len()
            + d.reason.len()
            + d.field.map_or(0, str::len)
            + d.detail.len()
            + d.payload.len()
            + d.inner_payload.map_or(0, <[u8]>::len)
            + 8
            + prov
    }

    /// Rows appended since the last [`DeadLetterRows::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The buffered rows as a batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut c: Vec<ArrayRef> = vec![
            Arc::new(self.record_id.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.field.finish()),
            Arc::new(self.detail.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.inner_payload.finish()),
            Arc::new(self.record_timestamp.finish()),
        ];
        self.prov.finish(&mut c);
        self.rows = 0;
        RecordBatch::try_new(Table::DeadLetters.schema(), c)
    }
}

/// The builder of one table.
pub enum Rows {
    /// `delivery_events`.
    Events(Box<EventRows>),
    /// `inbound_messages`.
    Inbound(Box<InboundRows>),
    /// `dead_letters`.
    DeadLetters(Box<DeadLetterRows>),
}

impl Rows {
    /// An empty builder for `table`.
    pub fn new(table: Table) -> Rows {
        match table {
            Table::DeliveryEvents => Rows::Events(Box::default()),
            Table::InboundMessages => Rows::Inbound(Box::default()),
            Table::DeadLetters => Rows::DeadLetters(Box::default()),
        }
    }

    /// Buffered rows.
    pub fn len(&self) -> usize {
        match self {
            Rows::Events(r) => r.len(),
            Rows::Inbound(r) => r.len(),
            Rows::DeadLetters(r) => r.len(),
        }
    }

    /// True when no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffered rows as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        match self {
            Rows::Events(r) => r.finish(),
            Rows::Inbound(r) => r.finish(),
            Rows::DeadLetters(r) => r.finish(),
        }
    }
}
