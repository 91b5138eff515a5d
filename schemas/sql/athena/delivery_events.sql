-- Generated from src/archive/schema.rs; a test checks this file matches it.
-- Replace {{ARCHIVE_ROOT}} with the archive location (s3://bucket/prefix).
CREATE EXTERNAL TABLE IF NOT EXISTS delivery_events (
  `event_type` string COMMENT 'eventType, e.g. TEXT_DELIVERED (the channel is the partition column)',
  `event_version` string COMMENT 'eventVersion',
  `event_timestamp` timestamp COMMENT 'eventTimestamp: when the event was reported; its UTC date is event_date',
  `is_final` boolean COMMENT 'isFinal',
  `origination_phone_number` string COMMENT 'originationPhoneNumber: E.164, sender ID or RCS agent id',
  `destination_phone_number` string COMMENT 'destinationPhoneNumber (E.164)',
  `iso_country_code` string COMMENT 'isoCountryCode of the destination (ISO 3166-1 alpha-2)',
  `is_international_send` boolean COMMENT 'isInternationalSend (SMS)',
  `mcc` string COMMENT 'mcc, as text (SMS, MMS)',
  `mnc` string COMMENT 'mnc, as text: "05" is valid (SMS, MMS)',
  `carrier_name` string COMMENT 'carrierName (SMS, MMS)',
  `message_id` string COMMENT 'messageId, shared by all events of a message',
  `message_request_timestamp` timestamp COMMENT 'messageRequestTimestamp: when the send was requested',
  `message_encoding` string COMMENT 'messageEncoding: GSM or UNICODE',
  `message_type` string COMMENT 'messageType: TRANSACTIONAL or PROMOTIONAL',
  `message_status` string COMMENT 'messageStatus: eventType without its prefix',
  `message_status_description` string COMMENT 'messageStatusDescription (free text)',
  `context` map<string,string> COMMENT 'context set by the sender (tenant, campaign, ...)',
  `total_message_parts` bigint COMMENT 'totalMessageParts: billed parts (SMS, MMS)',
  `total_message_price` decimal(38,10) COMMENT 'totalMessagePrice, exact USD',
  `total_carrier_fee` decimal(38,10) COMMENT 'totalCarrierFee, exact USD (SMS, MMS)',
  `call_duration_in_seconds` bigint COMMENT 'callDurationInSeconds (voice)',
  `total_duration_in_minutes` bigint COMMENT 'totalDurationInMinutes: billed minutes (voice)',
  `content_type` string COMMENT 'contentType (MMS)',
  `protect_configuration_id` string COMMENT 'protectConfiguration.protectConfigurationId (SMS)',
  `protect_status` string COMMENT 'protectConfiguration.protectStatus (SMS)',
  `record_id` string COMMENT 'deterministic id from the source position: source:partition:offset:sub (source:offset:sub in file mode)',
  `status_class` string COMMENT 'IN_FLIGHT, ACCEPTED, TRANSIENT_FAILURE or PERMANENT_FAILURE; null for a status this version does not know',
  `cost_usd` decimal(38,10) COMMENT 'the message''s counted cost (price + carrier fee of its latest priced event) after this event',
  `spend_month` string COMMENT 'UTC month (YYYY-MM) the message''s cost counts in: month of messageRequestTimestamp',
  `month_to_date_spend_usd` decimal(38,10) COMMENT 'the channel''s exact spend in spend_month after this event',
  `latency_ms` bigint COMMENT 'eventTimestamp - messageRequestTimestamp, when both exist',
  `destination_opted_out` boolean COMMENT 'destination opted out of the origination''s list when processed; null without destination',
  `duplicate` boolean COMMENT 'an earlier event had the same (messageId, eventType, eventTimestamp)',
  `late_receipt` boolean COMMENT 'arrived after its month closed; not counted in spend',
  `source` string COMMENT 'Kafka topic, or input file path in file mode',
  `source_partition` int COMMENT 'Kafka partition; null in file mode',
  `source_offset` bigint COMMENT 'Kafka offset, or index of the top-level JSON value in the input file',
  `source_sub` int COMMENT 'index of the payload inside the record (concatenated objects, Firehose batch entries), from 0',
  `envelopes` array<string> COMMENT 'envelopes unwrapped, outermost first (sns, eventbridge, firehose); empty for a raw payload',
  `processed_at` timestamp COMMENT 'when the pipeline processed the record (the only column that differs between replays)'
)
COMMENT 'Accepted delivery events, every input field typed, with the pipeline''s enrichment and the source position. Duplicated deliveries are kept (duplicate = true).'
PARTITIONED BY (
  `event_date` date COMMENT 'UTC date of event_timestamp (YYYY-MM-DD)',
  `channel` string COMMENT 'SMS, MMS, VOICE or RCS, from the eventType prefix'
)
STORED AS PARQUET
LOCATION '{{ARCHIVE_ROOT}}/delivery_events/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.event_date.type' = 'date',
  'projection.event_date.format' = 'yyyy-MM-dd',
  'projection.event_date.range' = '2020-01-01,NOW',
  'projection.event_date.interval' = '1',
  'projection.event_date.interval.unit' = 'DAYS',
  'projection.channel.type' = 'enum',
  'projection.channel.values' = 'SMS,MMS,VOICE,RCS',
  'storage.location.template' = '{{ARCHIVE_ROOT}}/delivery_events/event_date=${event_date}/channel=${channel}/',
  'parquet.compression' = 'ZSTD'
);
