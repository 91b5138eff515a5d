-- Generated from src/archive/schema.rs; a test checks this file matches it.
-- Replace {{ARCHIVE_ROOT}} with the archive location (s3://bucket/prefix).
CREATE EXTERNAL TABLE IF NOT EXISTS dead_letters (
  `record_id` string COMMENT 'deterministic id from the source position',
  `reason` string COMMENT 'stable reason code (missing_field, invalid_json, ...; see schemas/dead-letter.schema.json)',
  `field` string COMMENT 'the field the reason is about, when there is one',
  `detail` string COMMENT 'human-readable explanation',
  `payload` binary COMMENT 'the original bytes exactly as read (top-level JSON value or unparseable span)',
  `inner_payload` binary COMMENT 'when the failure is inside an envelope: the unwrapped payload that failed',
  `record_timestamp` timestamp COMMENT 'Kafka record timestamp; null in file mode (receive_date then comes from the input file''s modification time)',
  `source` string COMMENT 'Kafka topic, or input file path in file mode',
  `source_partition` int COMMENT 'Kafka partition; null in file mode',
  `source_offset` bigint COMMENT 'Kafka offset, or index of the top-level JSON value in the input file',
  `source_sub` int COMMENT 'index of the payload inside the record (concatenated objects, Firehose batch entries), from 0',
  `envelopes` array<string> COMMENT 'envelopes unwrapped, outermost first (sns, eventbridge, firehose); empty for a raw payload',
  `processed_at` timestamp COMMENT 'when the pipeline processed the record (the only column that differs between replays)'
)
COMMENT 'Payloads that were not accepted, with a machine-readable reason and the exact original bytes.'
PARTITIONED BY (
  `receive_date` date COMMENT 'UTC date of the Kafka record timestamp, or of the input file''s modification time in file mode'
)
STORED AS PARQUET
LOCATION '{{ARCHIVE_ROOT}}/dead_letters/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.receive_date.type' = 'date',
  'projection.receive_date.format' = 'yyyy-MM-dd',
  'projection.receive_date.range' = '2020-01-01,NOW',
  'projection.receive_date.interval' = '1',
  'projection.receive_date.interval.unit' = 'DAYS',
  'storage.location.template' = '{{ARCHIVE_ROOT}}/dead_letters/receive_date=${receive_date}/',
  'parquet.compression' = 'ZSTD'
);
