//! The Parquet archive that data teams query directly (Athena, Spark, Trino,
//! DuckDB): every accepted delivery event and inbound message, and every dead
//! letter, with no duplicate and no missing row.
//!
//! # Layout
//!
//! Hive-style partitions, dates in UTC, partition values never stored inside
//! the files:
//!
//! ```text
//! <root>/delivery_events/event_date=YYYY-MM-DD/channel=SMS|MMS|VOICE|RCS/<file>.parquet
//! <root>/inbound_messages/receive_date=YYYY-MM-DD/<file>.parquet
//! <root>/dead_letters/receive_date=YYYY-MM-DD/<file>.parquet
//! ```
//!
//! Columns: [`schema`] (the one definition), documented in
//! `schemas/archive.md`, with Athena DDL and ready-made views for Athena and
//! DuckDB in `schemas/sql/`.
//!
//! Partition dates come from the input, never from the processing time:
//! delivery events by eventTimestamp; inbound messages by received_at, else
//! the record's fallback date; dead letters by the record timestamp, else
//! the fallback date. The fallback date is the Kafka record timestamp, or in
//! file mode the input file's modification time. `processed_at` is the only
//! column that differs between two runs over the same input.
//!
//! # Replay and duplicates
//!
//! Object names are deterministic, Kafka Connect style
//! ([`naming`]): `<source-tag>+<partition>+<first-offset:020>.parquet`, the
//! first offset being the source position of the file's first row. Writing
//! an object again under the same name replaces it, so a replay that
//! reproduces the names reproduces the archive.
//!
//! **Commit rule.** The runtime may commit a source partition's offsets only
//! after a checkpoint ([`writer::ArchiveWriter::checkpoint_source`]) uploaded
//! **all** open files of that source partition, and it commits exactly the
//! returned `end_offset`. Consequences:
//!
//! 1. Between two checkpoints a source partition has at most one file per
//!    partition directory, and it starts at the first row of that directory
//!    after the last committed offset. Files are cut between records only
//!    (all payloads of one record share its offset and its file).
//! 2. After a crash the runtime resumes at the last committed offset, so
//!    every object the crashed run may have uploaded for the uncommitted
//!    range is named after a row that the replay processes again, and the
//!    replay writes an object of the same name, replacing it. Committed
//!    ranges are never reprocessed. Hence no duplicate and no missing row.
//! 3. Checkpoint boundaries triggered by `max_rows` / `max_bytes` are a
//!    deterministic function of the input (the rows since the last commit).
//!    A boundary triggered by `max_age` depends on the wall clock, so the
//!    Kafka runtime first records the intended end offset durably (the
//!    committed-offset metadata `pending_end=<offset>` of the *previous*
//!    offset, written before the upload), and a replay passes it to
//!    [`writer::ArchiveWriter::set_forced_end`], cutting the checkpoint at
//!    the same record: the replay rewrites byte-identical objects (but for
//!    `processed_at`). File mode has no age rotation: its input is finite and
//!    each input file is checkpointed when it ends.
//!
//! Changing the rolling policy between a crash and its replay may change
//! where files are cut, but rule 2 still holds: names come from first rows.
//!
//! # Stores
//!
//! [`store::Store`]: a local directory (temporary file, fsync, atomic
//! rename, directory fsync) or S3 ([`s3`]); failed writes that the store
//! calls retryable are retried with exponential backoff.

pub mod config;
pub mod naming;
pub mod rows;
pub mod s3;
pub mod schema;
pub mod store;
pub mod writer;

pub use config::{ArchiveConfig, RetryPolicy, RollingPolicy};
pub use schema::Table;
pub use store::{LocalStore, Store, StoreError};
pub use writer::{ArchiveError, ArchiveWriter, CheckpointRange, SourceKey};
