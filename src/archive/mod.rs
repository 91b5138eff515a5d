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
//! **Kafka mode: the archive sink** ([`crate::runtime::archive_sink`]). A
//! stage of its own (group `<group>.archive`, `read_committed` in
//! exactly-once mode) reads the enriched-event, enriched-inbound and
//! dead-letter topics and writes the files the Kafka Connect S3 sink way:
//! named by the *output* topic partition and the output offset of their
//! first row; the rows carry the original input position (`recordId`, the
//! dead-letter headers). Per output partition the records since the last
//! cut form one *segment*: at most one open file per partition directory,
//! all cut together, between records only.
//!
//! Where a segment is cut (`[archive.rolling]`), from its start `S`:
//!
//! * after the record that makes a file reach `max_rows` rows or
//!   `max_bytes` estimated bytes. Both are functions of the records from
//!   `S` on: every column value comes from the log (`processed_at` too: the
//!   enriched record's timestamp, or the dead letter's
//!   `smsvoice.processed-at` header), so the rows and their encoding are
//!   the same on every replay with the same build;
//! * before the first record whose Kafka timestamp is `max_age` or more
//!   after the segment's first record: timestamps are fixed in the log;
//! * for a quiet partition, by the wall clock: once the segment's first
//!   record is `max_age` old, **and only if the partition has been read to
//!   its high watermark**. A replay from `S` cannot be at the high
//!   watermark before it has read past the original cut point (which was
//!   below the high watermark then, and the log only grows), so a replay
//!   cuts there or later, never earlier. (One offset below the high
//!   watermark counts as read to it: the last offset of a partition written
//!   in transactions is a marker the consumer never hands out. The commit
//!   protocol below does not depend on this rule: it only keeps files large
//!   and replays identical.);
//! * at shutdown, after reading every partition to its high watermark.
//!
//! The protocol, per output partition, keeps one invariant: **objects exist
//! for at most one segment beyond the committed offset, and its cut is
//! recorded.** The committed offset is always the start of the oldest
//! segment not yet durable. Before any file of a cut segment `[S, E)` is
//! uploaded, the sink commits offset `S` with the metadata
//! `smsvoice.archive=1 cut=E ...`; only when every file of it is durable
//! does it commit `E` (with the cut of the next segment, whose upload then
//! starts). Uploads run in a task while the loop keeps reading; the next
//! segment's upload waits for that commit. Hence:
//!
//! 1. After a crash, the next owner restarts at `S`. If a cut is recorded,
//!    it cuts exactly at `E`: every object of `[S, E)` is written again
//!    under the same name (first row of its directory at or after `S`)
//!    with the same rows, replacing whatever was there. If none is
//!    recorded, no object beyond `S` exists, and any cut is safe.
//! 2. A zombie (an instance that lost the partition without knowing it)
//!    cannot record a cut: the group rejects its commit. The only upload
//!    it may still finish is that of a segment whose cut it recorded while
//!    it owned the partition, which its successor writes again identically
//!    (rule 1), so neither order of the two writes loses or repeats a row.
//!    A later segment of the zombie is never uploaded (its cut commit
//!    fails). The same holds for an upload still running when a rebalance
//!    moves the partition.
//! 3. Changing the rolling policy or the build between a crash and its
//!    replay changes later cuts only: the recorded one is kept.
//!
//! **Repeats in at-least-once mode.** The output topics may hold a payload
//! twice when a stage restarted from its last commit (same `recordId`).
//! Every output record names where its stage consumed the payload
//! (`smsvoice.at = topic:partition:offset:n`); a stage reads each partition
//! in order with an idempotent producer, and commits an input offset only
//! once the outputs before it are acknowledged, so in each output
//! partition a repeat is exactly a record whose position is not above the
//! highest position already seen for that stage partition. The sink drops
//! those, and keeps the highest positions as of the committed offset in the
//! offset metadata (`m=<topic>/<p>:<offset>.<n>,...`), so a new owner drops
//! the same repeats. (Caveat: a record whose delivery failed for good while
//! later records of the same producer were delivered would be taken for a
//! repeat when re-sent; librdkafka's idempotent producer fails the records
//! after a failed one, so this needs a producer epoch bump mid-batch.)
//!
//! Memory: the open segments (compressed pages plus up to 8,192 rows per
//! open file not yet encoded) and the closed files waiting for their upload,
//! bounded by `[archive.uploads]`: beyond it the partition is paused while
//! the consumer keeps polling.

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
