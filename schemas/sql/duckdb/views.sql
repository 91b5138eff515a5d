-- DuckDB: query views over the archive (run tables.sql first).
-- The same views for Athena / Trino are in ../athena/views.sql; keep both in step.
--
-- Money is DECIMAL(38,10), exact: sums are exact too. The cost of a message
-- is totalMessagePrice + totalCarrierFee of its latest priced event (not
-- price + price), each message counted once, in the UTC month of its first
-- messageRequestTimestamp: the rules of the pipeline's spend ledger with
-- the default include_carrier_fee = true. Late receipts (late_receipt) are
-- not counted, as in the ledger.

-- One row per messageId: its latest status and its counted cost.
CREATE OR REPLACE VIEW message_latest AS
WITH ev AS (
    SELECT *,
           total_message_price IS NOT NULL OR total_carrier_fee IS NOT NULL AS priced,
           COALESCE(total_message_price, CAST(0 AS DECIMAL(38,10)))
             + COALESCE(total_carrier_fee, CAST(0 AS DECIMAL(38,10))) AS event_cost
    FROM delivery_events
),
latest AS (
    SELECT *,
           row_number() OVER (PARTITION BY message_id
                              ORDER BY event_timestamp DESC, event_type DESC,
                                       source_offset DESC, source_sub DESC) AS rn
    FROM ev
),
latest_priced AS (
    SELECT message_id, event_cost,
           row_number() OVER (PARTITION BY message_id
                              ORDER BY event_timestamp DESC, event_type DESC,
                                       event_cost DESC) AS rn
    FROM ev
    WHERE priced AND NOT late_receipt
),
per_message AS (
    SELECT message_id,
           count(*) AS events,
           bool_or(NOT late_receipt) AS counted,
           min(CASE WHEN NOT late_receipt THEN message_request_timestamp END) AS first_request,
           min(CASE WHEN NOT late_receipt THEN event_timestamp END) AS first_event,
           min(message_request_timestamp) AS any_request,
           min(event_timestamp) AS any_event
    FROM ev
    GROUP BY message_id
)
SELECT l.message_id,
       l.channel,
       l.event_type AS latest_event_type,
       l.message_status AS latest_status,
       l.status_class,
       l.is_final,
       l.event_timestamp AS latest_event_timestamp,
       l.origination_phone_number,
       l.destination_phone_number,
       l.iso_country_code,
       l.message_type,
       l.context,
       m.events,
       m.counted,
       COALESCE(m.first_request, m.first_event, m.any_request, m.any_event) AS message_timestamp,
       CAST(COALESCE(m.first_request, m.first_event, m.any_request, m.any_event) AS DATE) AS message_date,
       strftime(COALESCE(m.first_request, m.first_event, m.any_request, m.any_event), '%Y-%m') AS spend_month,
       COALESCE(p.event_cost, CAST(0 AS DECIMAL(38,10))) AS cost_usd
FROM latest l
JOIN per_message m ON m.message_id = l.message_id
LEFT JOIN latest_priced p ON p.message_id = l.message_id AND p.rn = 1
WHERE l.rn = 1;

-- Exact spend per UTC month and channel (equals the pipeline's spend.json).
CREATE OR REPLACE VIEW spend_monthly AS
SELECT spend_month, channel, sum(cost_usd) AS spend_usd, count(*) AS messages
FROM message_latest
WHERE counted
GROUP BY spend_month, channel;

-- Delivery rate and cost by day (UTC date of the send request), channel,
-- destination country, message type and sender. delivered = latest status
-- in class ACCEPTED (SUCCESSFUL, DELIVERED, COMPLETED, READ).
CREATE OR REPLACE VIEW delivery_daily AS
SELECT message_date,
       channel,
       iso_country_code,
       message_type,
       origination_phone_number,
       count(*) AS messages,
       count(*) FILTER (WHERE status_class = 'ACCEPTED') AS delivered,
       count(*) FILTER (WHERE status_class = 'TRANSIENT_FAILURE') AS failed_transient,
       count(*) FILTER (WHERE status_class = 'PERMANENT_FAILURE') AS failed_permanent,
       count(*) FILTER (WHERE status_class = 'IN_FLIGHT' OR status_class IS NULL) AS pending,
       CAST(count(*) FILTER (WHERE status_class = 'ACCEPTED') AS DOUBLE) / count(*) AS delivery_rate,
       sum(CASE WHEN counted THEN cost_usd ELSE CAST(0 AS DECIMAL(38,10)) END) AS cost_usd
FROM message_latest
GROUP BY message_date, channel, iso_country_code, message_type, origination_phone_number;

-- Cost by every context key and value (context is set by the sender).
CREATE OR REPLACE VIEW cost_by_context AS
WITH kv AS (
    SELECT spend_month,
           channel,
           cost_usd,
           unnest(map_keys(context)) AS context_key,
           unnest(map_values(context)) AS context_value
    FROM message_latest
    WHERE counted
)
SELECT spend_month, channel, context_key, context_value,
       count(*) AS messages,
       sum(cost_usd) AS cost_usd
FROM kv
GROUP BY spend_month, channel, context_key, context_value;

-- Cost by tenant (context key "tenant"; null when the sender set none).
CREATE OR REPLACE VIEW cost_by_tenant AS
SELECT spend_month,
       channel,
       map_extract(context, 'tenant')[1] AS tenant,
       count(*) AS messages,
       sum(cost_usd) AS cost_usd
FROM message_latest
WHERE counted
GROUP BY spend_month, channel, map_extract(context, 'tenant')[1];

-- Opt-out and opt-in keywords received, by day and list.
CREATE OR REPLACE VIEW optout_daily AS
SELECT receive_date,
       opt_out_list,
       action,
       count(*) AS messages,
       count(DISTINCT origination_number) AS numbers
FROM inbound_messages
WHERE action IN ('OPT_OUT', 'OPT_IN')
GROUP BY receive_date, opt_out_list, action;
