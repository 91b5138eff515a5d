-- Generated from src/archive/schema.rs; a test checks this file matches it.
-- Replace {{ARCHIVE_ROOT}} with the archive location (s3://bucket/prefix).
CREATE EXTERNAL TABLE IF NOT EXISTS inbound_messages (
  `origination_number` string COMMENT 'originationNumber: the customer''s phone (E.164)',
  `destination_number` string COMMENT 'destinationNumber: our number that received the message',
  `message_keyword` string COMMENT 'messageKeyword: the registered keyword of our number, as given (not what the customer typed)',
  `message_body` string COMMENT 'messageBody: what the customer typed',
  `inbound_message_id` string COMMENT 'inboundMessageId',
  `previous_published_message_id` string COMMENT 'previousPublishedMessageId',
  `received_at` timestamp COMMENT 'SNS Timestamp / EventBridge time of the envelope, else the Kafka record timestamp; null when unknown (receive_date then comes from the record''s fallback date)',
  `record_id` string COMMENT 'deterministic id from the source position',
  `keyword` string COMMENT 'the matched keyword (uppercase), or null',
  `action` string COMMENT 'OPT_OUT, OPT_IN, HELP, AUTOMATIC_RESPONSE or NONE',
  `opt_out_list` string COMMENT 'opt-out list of the number that received the message',
  `opted_out` boolean COMMENT 'the sender''s state in that list after processing',
  `source` string COMMENT 'Kafka topic, or input file path in file mode',
  `source_partition` int COMMENT 'Kafka partition; null in file mode',
  `source_offset` bigint COMMENT 'Kafka offset, or index of the top-level JSON value in the input file',
  `source_sub` int COMMENT 'index of the payload inside the record (concatenated objects, Firehose batch entries), from 0',
  `envelopes` array<string> COMMENT 'envelopes unwrapped, outermost first (sns, eventbridge, firehose); empty for a raw payload',
  `processed_at` timestamp COMMENT 'when the pipeline processed the record (the only column that differs between replays)'
)
COMMENT 'Accepted inbound two-way messages with the keyword the pipeline matched and the opt-out state after it.'
PARTITIONED BY (
  `receive_date` date COMMENT 'UTC date of received_at; when unknown, of the record''s fallback date (Kafka record timestamp, or the input file''s modification time)'
)
STORED AS PARQUET
LOCATION '{{ARCHIVE_ROOT}}/inbound_messages/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.receive_date.type' = 'date',
  'projection.receive_date.format' = 'yyyy-MM-dd',
  'projection.receive_date.range' = '2020-01-01,NOW',
  'projection.receive_date.interval' = '1',
  'projection.receive_date.interval.unit' = 'DAYS',
  'storage.location.template' = '{{ARCHIVE_ROOT}}/inbound_messages/receive_date=${receive_date}/',
  'parquet.compression' = 'ZSTD'
);
