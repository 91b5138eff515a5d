-- DuckDB: the archive's three tables as views over its Parquet files.
--
-- Replace {{ARCHIVE_ROOT}} with the archive location: a local directory
-- (smsvoice process writes <out>/archive by default) or s3://bucket/prefix
-- (LOAD httpfs; and a CREATE SECRET for the credentials first). Then:
--   duckdb archive.duckdb < tables.sql && duckdb archive.duckdb < views.sql
--
-- Partition columns come from the directory names (hive_partitioning); they
-- are not stored in the files. Timestamps are TIMESTAMP WITH TIME ZONE:
-- dates and months in the views are UTC because of the SET below.
-- read_parquet fails on a table with no file yet (e.g. no dead letter so far).

SET TimeZone = 'UTC';

CREATE OR REPLACE VIEW delivery_events AS
SELECT *
FROM read_parquet('{{ARCHIVE_ROOT}}/delivery_events/**/*.parquet',
                  hive_partitioning = true,
                  hive_types = {'event_date': DATE, 'channel': VARCHAR});

CREATE OR REPLACE VIEW inbound_messages AS
SELECT *
FROM read_parquet('{{ARCHIVE_ROOT}}/inbound_messages/**/*.parquet',
                  hive_partitioning = true,
                  hive_types = {'receive_date': DATE});

CREATE OR REPLACE VIEW dead_letters AS
SELECT *
FROM read_parquet('{{ARCHIVE_ROOT}}/dead_letters/**/*.parquet',
                  hive_partitioning = true,
                  hive_types = {'receive_date': DATE});
