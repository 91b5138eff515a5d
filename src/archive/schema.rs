//! The archive's tables: the one definition of their columns.
//!
//! Every column of the three tables is declared once, here, in
//! [`Table::columns`]: name, type, nullability, whether Parquet dictionary
//! encoding pays off for it, and what it means. Everything else is derived
//! from that list:
//!
//! * the Arrow schemas the writer builds record batches against
//!   ([`Table::schema`]);
//! * the Parquet column encodings ([`Table::dictionary_columns`]);
//! * the column tables of `schemas/archive.md` ([`markdown_columns`]);
//! * the Athena / Glue DDL of `schemas/sql/athena/` ([`athena_ddl`]).
//!
//! A test renders the last two and compares them with the committed files,
//! so code, documentation and DDL cannot drift apart.
//!
//! Partition columns (`event_date`, `channel`, `receive_date`) are **not**
//! stored in the files: the Hive-style directory names carry them
//! ([`Table::partition_columns`]).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Precision of every money column (DECIMAL(38,10)).
pub const MONEY_PRECISION: u8 = 38;
/// Scale of every money column: amounts are exact multiples of 10^-10 USD
/// ([`crate::money::Usd::units`]).
pub const MONEY_SCALE: i8 = 10;
/// Time zone of every timestamp column.
pub const UTC: &str = "UTC";

/// Name of the entries field of MAP columns (Parquet convention).
pub const MAP_ENTRIES: &str = "key_value";
/// Name of the key field of MAP columns.
pub const MAP_KEY: &str = "key";
/// Name of the value field of MAP columns.
pub const MAP_VALUE: &str = "value";
/// Name of the element field of LIST columns (the Arrow builder default;
/// written as `element` in Parquet, see [`super::writer`]).
pub const LIST_ITEM: &str = "item";

/// The type of a column, mapped to Arrow by [`Kind::data_type`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text.
    Text,
    /// Boolean.
    Bool,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// Instant, epoch milliseconds, UTC.
    TimestampMs,
    /// Exact USD amount, DECIMAL(38,10).
    Money,
    /// Map of text to text.
    TextMap,
    /// List of text.
    TextList,
    /// Raw bytes.
    Bytes,
}

impl Kind {
    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            Kind::Text => DataType::Utf8,
            Kind::Bool => DataType::Boolean,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::TimestampMs => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            Kind::Money => DataType::Decimal128(MONEY_PRECISION, MONEY_SCALE),
            Kind::TextMap => DataType::Map(
                Arc::new(Field::new(
                    MAP_ENTRIES,
                    DataType::Struct(Fields::from(vec![
                        Field::new(MAP_KEY, DataType::Utf8, false),
                        Field::new(MAP_VALUE, DataType::Utf8, true),
                    ])),
                    false,
                )),
                false,
            ),
            Kind::TextList => DataType::List(Arc::new(Field::new(LIST_ITEM, DataType::Utf8, true))),
            Kind::Bytes => DataType::Binary,
        }
    }
}

/// One column of an archive table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// snake_case name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// True when the column may be null.
    pub nullable: bool,
    /// True for low-cardinality text, which Parquet stores dictionary-encoded.
    pub dictionary: bool,
    /// What the column means (documentation and DDL comment).
    pub doc: &'static str,
}

const fn col(name: &'static str, kind: Kind, nullable: bool, doc: &'static str) -> Column {
    Column {
        name,
        kind,
        nullable,
        dictionary: false,
        doc,
    }
}

/// A low-cardinality text column (dictionary-encoded in Parquet).
const fn dict(name: &'static str, nullable: bool, doc: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Text,
        nullable,
        dictionary: true,
        doc,
    }
}

/// A Hive partition column: part of the object key, not of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionColumn {
    /// Name (the `name=` of the directory).
    pub name: &'static str,
    /// Athena / Glue type.
    pub athena_type: &'static str,
    /// What it means.
    pub doc: &'static str,
}

const PROVENANCE: [Column; 6] = [
    dict(
        "source",
        false,
        "Kafka topic, or input file path in file mode",
    ),
    col(
        "source_partition",
        Kind::Int32,
        true,
        "Kafka partition; null in file mode",
    ),
    col(
        "source_offset",
        Kind::Int64,
        false,
        "Kafka offset, or index of the top-level JSON value in the input file",
    ),
    col(
        "source_sub",
        Kind::Int32,
        false,
        "index of the payload inside the record (concatenated objects, Firehose batch entries), from 0",
    ),
    col(
        "envelopes",
        Kind::TextList,
        false,
        "envelopes unwrapped, outermost first (sns, eventbridge, firehose); empty for a raw payload",
    ),
    col(
        "processed_at",
        Kind::TimestampMs,
        false,
        "when the pipeline processed the record (the only column that differs between replays)",
    ),
];

const DELIVERY_EVENTS: [Column; 41] = [
    dict(
        "event_type",
        false,
        "eventType, e.g. TEXT_DELIVERED (the channel is the partition column)",
    ),
    dict("event_version", true, "eventVersion"),
    col(
        "event_timestamp",
        Kind::TimestampMs,
        false,
        "eventTimestamp: when the event was reported; its UTC date is event_date",
    ),
    col("is_final", Kind::Bool, true, "isFinal"),
    dict(
        "origination_phone_number",
        true,
        "originationPhoneNumber: E.164, sender ID or RCS agent id",
    ),
    col(
        "destination_phone_number",
        Kind::Text,
        true,
        "destinationPhoneNumber (E.164)",
    ),
    dict(
        "iso_country_code",
        true,
        "isoCountryCode of the destination (ISO 3166-1 alpha-2)",
    ),
    col(
        "is_international_send",
        Kind::Bool,
        true,
        "isInternationalSend (SMS)",
    ),
    dict(
        "mcc",
        true,
        "mcc, as text (SMS, MMS)",
    ),
    dict(
        "mnc",
        true,
        "mnc, as text: \"05\" is valid (SMS, MMS)",
    ),
    dict("carrier_name", true, "carrierName (SMS, MMS)"),
    col(
        "message_id",
        Kind::Text,
        false,
        "messageId, shared by all events of a message",
    ),
    col(
        "message_request_timestamp",
        Kind::TimestampMs,
        true,
        "messageRequestTimestamp: when the send was requested",
    ),
    dict("message_encoding", true, "messageEncoding: GSM or UNICODE"),
    dict(
        "message_type",
        true,
        "messageType: TRANSACTIONAL or PROMOTIONAL",
    ),
    dict(
        "message_status",
        true,
        "messageStatus: eventType without its prefix",
    ),
    dict(
        "message_status_description",
        true,
        "messageStatusDescription (free text)",
    ),
    col(
        "context",
        Kind::TextMap,
        true,
        "context set by the sender (tenant, campaign, ...)",
    ),
    col(
        "total_message_parts",
        Kind::Int64,
        true,
        "totalMessageParts: billed parts (SMS, MMS)",
    ),
    col(
        "total_message_price",
        Kind::Money,
        true,
        "totalMessagePrice, exact USD",
    ),
    col(
        "total_carrier_fee",
        Kind::Money,
        true,
        "totalCarrierFee, exact USD (SMS, MMS)",
    ),
    col(
        "call_duration_in_seconds",
        Kind::Int64,
        true,
        "callDurationInSeconds (voice)",
    ),
    col(
        "total_duration_in_minutes",
        Kind::Int64,
        true,
        "totalDurationInMinutes: billed minutes (voice)",
    ),
    dict("content_type", true, "contentType (MMS)"),
    dict(
        "protect_configuration_id",
        true,
        "protectConfiguration.protectConfigurationId (SMS)",
    ),
    dict(
        "protect_status",
        true,
        "protectConfiguration.protectStatus (SMS)",
    ),
    col(
        "record_id",
        Kind::Text,
        false,
        "deterministic id from the source position: source:partition:offset:sub (source:offset:sub in file mode)",
    ),
    dict(
        "status_class",
        true,
        "IN_FLIGHT, ACCEPTED, TRANSIENT_FAILURE or PERMANENT_FAILURE; null for a status this version does not know",
    ),
    col(
        "cost_usd",
        Kind::Money,
        false,
        "the message's counted cost (price + carrier fee of its latest priced event) after this event",
    ),
    dict(
        "spend_month",
        false,
        "UTC month (YYYY-MM) the message's cost counts in: month of messageRequestTimestamp",
    ),
    col(
        "month_to_date_spend_usd",
        Kind::Money,
        false,
        "the channel's exact spend in spend_month after this event",
    ),
    col(
        "latency_ms",
        Kind::Int64,
        true,
        "eventTimestamp - messageRequestTimestamp, when both exist",
    ),
    col(
        "destination_opted_out",
        Kind::Bool,
        true,
        "destination opted out of the origination's list when processed; null without destination",
    ),
    col(
        "duplicate",
        Kind::Bool,
        false,
        "an earlier event had the same (messageId, eventType, eventTimestamp)",
    ),
    col(
        "late_receipt",
        Kind::Bool,
        false,
        "arrived after its month closed; not counted in spend",
    ),
    PROVENANCE[0],
    PROVENANCE[1],
    PROVENANCE[2],
    PROVENANCE[3],
    PROVENANCE[4],
    PROVENANCE[5],
];

const INBOUND_MESSAGES: [Column; 18] = [
    col(
        "origination_number",
        Kind::Text,
        false,
        "originationNumber: the customer's phone (E.164)",
    ),
    dict(
        "destination_number",
        false,
        "destinationNumber: our number that received the message",
    ),
    dict(
        "message_keyword",
        true,
        "messageKeyword: the registered keyword of our number, as given (not what the customer typed)",
    ),
    col(
        "message_body",
        Kind::Text,
        false,
        "messageBody: what the customer typed",
    ),
    col(
        "inbound_message_id",
        Kind::Text,
        true,
        "inboundMessageId",
    ),
    col(
        "previous_published_message_id",
        Kind::Text,
        true,
        "previousPublishedMessageId",
    ),
    col(
        "received_at",
        Kind::TimestampMs,
        true,
        "SNS Timestamp / EventBridge time of the envelope, else the Kafka record timestamp; null when unknown (receive_date then comes from the record's fallback date)",
    ),
    col(
        "record_id",
        Kind::Text,
        false,
        "deterministic id from the source position",
    ),
    dict(
        "keyword",
        true,
        "the matched keyword (uppercase), or null",
    ),
    dict(
        "action",
        false,
        "OPT_OUT, OPT_IN, HELP, AUTOMATIC_RESPONSE or NONE",
    ),
    dict(
        "opt_out_list",
        false,
        "opt-out list of the number that received the message",
    ),
    col(
        "opted_out",
        Kind::Bool,
        false,
        "the sender's state in that list after processing",
    ),
    PROVENANCE[0],
    PROVENANCE[1],
    PROVENANCE[2],
    PROVENANCE[3],
    PROVENANCE[4],
    PROVENANCE[5],
];

const DEAD_LETTERS: [Column; 13] = [
    col(
        "record_id",
        Kind::Text,
        false,
        "deterministic id from the source position",
    ),
    dict(
        "reason",
        false,
        "stable reason code (missing_field, invalid_json, ...; see schemas/dead-letter.schema.json)",
    ),
    dict(
        "field",
        true,
        "the field the reason is about, when there is one",
    ),
    col(
        "detail",
        Kind::Text,
        false,
        "human-readable explanation",
    ),
    col(
        "payload",
        Kind::Bytes,
        false,
        "the original bytes exactly as read (top-level JSON value or unparseable span)",
    ),
    col(
        "inner_payload",
        Kind::Bytes,
        true,
        "when the failure is inside an envelope: the unwrapped payload that failed",
    ),
    col(
        "record_timestamp",
        Kind::TimestampMs,
        true,
        "Kafka record timestamp; null in file mode (receive_date then comes from the input file's modification time)",
    ),
    PROVENANCE[0],
    PROVENANCE[1],
    PROVENANCE[2],
    PROVENANCE[3],
    PROVENANCE[4],
    PROVENANCE[5],
];

const EVENT_PARTITIONS: [PartitionColumn; 2] = [
    PartitionColumn {
        name: "event_date",
        athena_type: "date",
        doc: "UTC date of event_timestamp (YYYY-MM-DD)",
    },
    PartitionColumn {
        name: "channel",
        athena_type: "string",
        doc: "SMS, MMS, VOICE or RCS, from the eventType prefix",
    },
];

const INBOUND_PARTITIONS: [PartitionColumn; 1] = [PartitionColumn {
    name: "receive_date",
    athena_type: "date",
    doc: "UTC date of received_at; when unknown, of the record's fallback date (Kafka record timestamp, or the input file's modification time)",
}];

const DEAD_LETTER_PARTITIONS: [PartitionColumn; 1] = [PartitionColumn {
    name: "receive_date",
    athena_type: "date",
    doc: "UTC date of the Kafka record timestamp, or of the input file's modification time in file mode",
}];

/// The three archive tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Accepted delivery events with their enrichment.
    DeliveryEvents,
    /// Accepted inbound two-way messages with their enrichment.
    InboundMessages,
    /// Payloads that were not accepted.
    DeadLetters,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 3] = [
        Table::DeliveryEvents,
        Table::InboundMessages,
        Table::DeadLetters,
    ];

    /// Table name, also the top-level directory of its objects.
    pub const fn name(self) -> &'static str {
        match self {
            Table::DeliveryEvents => "delivery_events",
            Table::InboundMessages => "inbound_messages",
            Table::DeadLetters => "dead_letters",
        }
    }

    /// One-line description.
    pub const fn doc(self) -> &'static str {
        match self {
            Table::DeliveryEvents => "Accepted delivery events, every input field typed, with the pipeline's enrichment and the source position. Duplicated deliveries are kept (duplicate = true).",
            Table::InboundMessages => "Accepted inbound two-way messages with the keyword the pipeline matched and the opt-out state after it.",
            Table::DeadLetters => "Payloads that were not accepted, with a machine-readable reason and the exact original bytes.",
        }
    }

    /// The columns stored in the files, in order.
    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::DeliveryEvents => &DELIVERY_EVENTS,
            Table::InboundMessages => &INBOUND_MESSAGES,
            Table::DeadLetters => &DEAD_LETTERS,
        }
    }

    /// The Hive partition columns, in directory order.
    pub fn partition_columns(self) -> &'static [PartitionColumn] {
        match self {
            Table::DeliveryEvents => &EVENT_PARTITIONS,
            Table::InboundMessages => &INBOUND_PARTITIONS,
            Table::DeadLetters => &DEAD_LETTER_PARTITIONS,
        }
    }

    /// The Arrow schema of the files.
    pub fn schema(self) -> SchemaRef {
        static SCHEMAS: OnceLock<[SchemaRef; 3]> = OnceLock::new();
        let all = SCHEMAS.get_or_init(|| Table::ALL.map(build_schema));
        all[self as usize].clone()
    }

    /// Names of the columns Parquet stores dictionary-encoded.
    pub fn dictionary_columns(self) -> impl Iterator<Item = &'static str> {
        self.columns()
            .iter()
            .filter(|c| c.dictionary)
            .map(|c| c.name)
    }
}

fn build_schema(table: Table) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .columns()
            .iter()
            .map(|c| Field::new(c.name, c.kind.data_type(), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// The Athena / Glue (Hive DDL) type of an Arrow type, `None` for a type the
/// archive does not use.
pub fn athena_type(t: &DataType) -> Option<String> {
    Some(match t {
        DataType::Utf8 => "string".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => "timestamp".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Binary => "binary".into(),
        DataType::List(f) => format!("array<{}>", athena_type(f.data_type())?),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                athena_type(kv[0].data_type())?,
                athena_type(kv[1].data_type())?
            ),
            _ => return None,
        },
        _ => return None,
    })
}

/// How the Parquet files store an Arrow type (for the documentation).
pub fn parquet_type(t: &DataType) -> Option<String> {
    Some(match t {
        DataType::Utf8 => "BYTE_ARRAY (STRING)".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int32 => "INT32".into(),
        DataType::Int64 => "INT64".into(),
        DataType::Timestamp(TimeUnit::Millisecond, Some(_)) => {
            "INT64 (TIMESTAMP(MILLIS, UTC))".into()
        }
        DataType::Decimal128(p, s) => format!("FIXED_LEN_BYTE_ARRAY(16) (DECIMAL({p},{s}))"),
        DataType::Binary => "BYTE_ARRAY".into(),
        DataType::List(f) => format!("LIST<{}>", parquet_type(f.data_type())?),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "MAP<{}, {}>",
                parquet_type(kv[0].data_type())?,
                parquet_type(kv[1].data_type())?
            ),
            _ => return None,
        },
        _ => return None,
    })
}

fn doc_of(table: Table, name: &str) -> &'static str {
    table
        .columns()
        .iter()
        .find(|c| c.name == name)
        .map_or("", |c| c.doc)
}

fn sql_comment(text: &str) -> String {
    text.replace('\'', "''")
}

/// Placeholder for the archive location (`s3://bucket/prefix`) in the
/// committed DDL; replace it before running the statements.
pub const ROOT_PLACEHOLDER: &str = "{{ARCHIVE_ROOT}}";

/// The Athena / Glue `CREATE EXTERNAL TABLE` statement of a table, with
/// partition projection, rendered from the Arrow schema ([`Table::schema`]).
/// This is the text of `schemas/sql/athena/<table>.sql`.
pub fn athena_ddl(table: Table) -> String {
    let schema = table.schema();
    let name = table.name();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "-- Generated from src/archive/schema.rs; a test checks this file matches it."
    );
    let _ = writeln!(
        s,
        "-- Replace {ROOT_PLACEHOLDER} with the archive location (s3://bucket/prefix)."
    );
    let _ = writeln!(s, "CREATE EXTERNAL TABLE IF NOT EXISTS {name} (");
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "  `{}` {} COMMENT '{}'",
                f.name(),
                athena_type(f.data_type()).unwrap_or_else(|| "unsupported".into()),
                sql_comment(doc_of(table, f.name()))
            )
        })
        .collect();
    let _ = writeln!(s, "{}", cols.join(",\n"));
    let _ = writeln!(s, ")");
    let _ = writeln!(s, "COMMENT '{}'", sql_comment(table.doc()));
    let parts: Vec<String> = table
        .partition_columns()
        .iter()
        .map(|p| {
            format!(
                "  `{}` {} COMMENT '{}'",
                p.name,
                p.athena_type,
                sql_comment(p.doc)
            )
        })
        .collect();
    let _ = writeln!(s, "PARTITIONED BY (\n{}\n)", parts.join(",\n"));
    let _ = writeln!(s, "STORED AS PARQUET");
    let _ = writeln!(s, "LOCATION '{ROOT_PLACEHOLDER}/{name}/'");
    let _ = writeln!(s, "TBLPROPERTIES (");
    let mut props: Vec<(String, String)> = vec![("projection.enabled".into(), "true".into())];
    let mut template = format!("{ROOT_PLACEHOLDER}/{name}");
    for p in table.partition_columns() {
        let k = |suffix: &str| format!("projection.{}.{suffix}", p.name);
        if p.athena_type == "date" {
            props.push((k("type"), "date".into()));
            props.push((k("format"), "yyyy-MM-dd".into()));
            props.push((k("range"), "2020-01-01,NOW".into()));
            props.push((k("interval"), "1".into()));
            props.push((k("interval.unit"), "DAYS".into()));
        } else {
            props.push((k("type"), "enum".into()));
            props.push((
                k("values"),
                crate::model::Channel::ALL
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ));
        }
        let _ = write!(template, "/{0}=${{{0}}}", p.name);
    }
    template.push('/');
    props.push(("storage.location.template".into(), template));
    props.push(("parquet.compression".into(), "ZSTD".into()));
    let props: Vec<String> = props
        .iter()
        .map(|(k, v)| format!("  '{k}' = '{v}'"))
        .collect();
    let _ = writeln!(s, "{}", props.join(",\n"));
    let _ = writeln!(s, ");");
    s
}

/// The markdown column table of a table, rendered from the Arrow schema:
/// the text between the `BEGIN`/`END` markers of `schemas/archive.md`.
pub fn markdown_columns(table: Table) -> String {
    let schema = table.schema();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| column | Athena / Glue type | Parquet type | null | meaning |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for f in schema.fields() {
        let c = table.columns().iter().find(|c| c.name == f.name());
        let dict = if c.is_some_and(|c| c.dictionary) {
            ", dictionary"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "| `{}` | `{}` | {}{} | {} | {} |",
            f.name(),
            athena_type(f.data_type()).unwrap_or_default(),
            parquet_type(f.data_type()).unwrap_or_default(),
            dict,
            if f.is_nullable() { "yes" } else { "no" },
            doc_of(table, f.name()).replace('|', "\\|")
        );
    }
    for p in table.partition_columns() {
        let _ = writeln!(
            s,
            "| `{}` | `{}` | partition directory `{}=...` (not in the file) | no | {} |",
            p.name, p.athena_type, p.name, p.doc
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_typed() {
        for t in Table::ALL {
            let mut names: Vec<&str> = t.columns().iter().map(|c| c.name).collect();
            names.extend(t.partition_columns().iter().map(|p| p.name));
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), n, "{}: duplicate column", t.name());
            for c in t.columns() {
                assert!(
                    c.name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{}",
                    c.name
                );
                assert!(athena_type(&c.kind.data_type()).is_some(), "{}", c.name);
                assert!(parquet_type(&c.kind.data_type()).is_some(), "{}", c.name);
                assert!(!c.doc.is_empty(), "{}", c.name);
            }
        }
    }

    #[test]
    fn partition_columns_are_not_in_files() {
        for t in Table::ALL {
            let schema = t.schema();
            for p in t.partition_columns() {
                assert!(schema.field_with_name(p.name).is_err(), "{}", p.name);
            }
        }
    }
}
