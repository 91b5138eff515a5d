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
//! **File mode.** Each input file is checkpointed
//! ([`writer::ArchiveWriter::checkpoint_source`]) when it ends: all its open
//! files are encoded and uploaded. A rerun rewrites the same objects.
//!
//! **Kafka mode: seal, commit, upload.** At each commit point a stage
//! *seals* its open files ([`writer::ArchiveWriter::seal_all`]: encoded,
//! queued), commits its offsets (in its transaction in exactly-once mode),
//! and only then uploads them ([`writer::ArchiveWriter::upload_sealed`]).
//! Each committed offset carries the metadata `smsvoice.archived=<offset>`:
//! the offset below which the partition's files are known to be uploaded
//! (the previous commit's offset, until an upload completes). Consequences:
//!
//! 1. Between two commit points a source partition has at most one file per
//!    partition directory, starting at the first row of that directory after
//!    the last committed offset. Files are cut between records only (all
//!    payloads of one record share its offset and its file).
//! 2. A zombie (an instance frozen until its group and the transaction
//!    coordinator replaced it) fails to commit, so it never uploads: it
//!    cannot replace its successor's file of the same name with a shorter
//!    one. (Uploading before the commit lost rows that way in the
//!    exactly-once crash test.)
//! 3. After a crash between a commit and its upload, the next owner sees
//!    `archived` below the committed offset: it restores state up to
//!    `archived`, processes the range up to the committed offset again with
//!    its outputs discarded, seals it exactly at the committed offset and
//!    uploads it (`runtime::commit::take`). Those are the objects the crashed
//!    owner wrote or would have written (same names: first rows; same rows),
//!    so a partial upload is completed or replaced. Uncommitted ranges are
//!    reprocessed from the committed offset, and every object a crashed run
//!    may have uploaded for them is named after a row the replay writes
//!    again. Hence no duplicate and no missing row.
//!
//! Changing the rolling policy between a crash and its replay may change
//! where files are cut, but rule 3 still holds: names come from first rows.
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

pub use config::{ArchiveConfig, RetryPolicy, RollingPolicy, UploadLimits};
pub use schema::Table;
pub use store::{LocalStore, Store, StoreError};
pub use writer::{ArchiveError, ArchiveWriter, CheckpointRange, SourceKey};
