//! The archive writer: rows in, Parquet objects out, cut so that a replay
//! rewrites the same objects.
//!
//! Rows are grouped by **source partition** (topic + Kafka partition, or
//! input file) and, inside it, by **file**: one open file per (table,
//! partition directory). Between two checkpoints a source partition has at
//! most one file per directory, named after the source offset of its first
//! row ([`super::naming`]). A checkpoint ([`ArchiveWriter::checkpoint`],
//! [`ArchiveWriter::checkpoint_source`]) encodes and uploads *all* open files
//! of a source partition and returns the offset range they cover; only then
//! may the runtime commit that range. See [`crate::archive`] for why this
//! gives no duplicate and no missing row on replay.
//!
//! Parquet layout: zstd compression, dictionary encoding for the
//! low-cardinality text columns ([`super::schema::Column::dictionary`]),
//! page-level statistics, row groups of up to [`ROW_GROUP_ROWS`] rows, the
//! List/Map field names of the Parquet specification (`element`,
//! `key_value`). Rows are encoded in chunks of [`CHUNK_ROWS`] while they
//! arrive, so memory holds compressed pages, not raw rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arrow::error::ArrowError;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::dead_letter::DeadLetter;
use crate::decode::RecordSource;
use crate::enrich::{EnrichedEvent, EnrichedInbound, Outputs};
use crate::model::{Channel, Provenance};

use super::config::{RetryPolicy, RollingPolicy};
use super::naming;
use super::rows::{DeadLetterParts, Rows};
use super::schema::{Kind, Table, MAP_ENTRIES, MAP_KEY, MAP_VALUE};
use super::store::{Store, StoreError};

/// Maximum rows of a Parquet row group (sized for scans).
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Rows buffered before they are encoded into the open file.
pub const CHUNK_ROWS: usize = 8 * 1024;
/// zstd level of every column.
pub const ZSTD_LEVEL: i32 = 3;

/// Why the archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Building a record batch failed (a schema bug).
    #[error("building a record batch of {table}: {source}")]
    Arrow {
        /// Table name.
        table: &'static str,
        /// The cause.
        source: ArrowError,
    },
    /// Parquet encoding failed.
    #[error("encoding {table} as Parquet: {source}")]
    Parquet {
        /// Table name.
        table: &'static str,
        /// The cause.
        source: ParquetError,
    },
    /// An upload failed (after the retries the error allowed).
    #[error("uploading {key}: {source}")]
    Store {
        /// Object key.
        key: String,
        /// The cause.
        source: StoreError,
    },
    /// A row at or past the forced end of its source partition was appended
    /// before the checkpoint that the forced end demands.
    #[error("{source_name} partition {partition:?}: offset {offset} is at or past the forced checkpoint end {end}; checkpoint first")]
    PastForcedEnd {
        /// Topic or file.
        source_name: String,
        /// Kafka partition.
        partition: Option<i32>,
        /// The row's offset.
        offset: i64,
        /// The forced end.
        end: i64,
    },
    /// A forced end below rows already appended.
    #[error("{source_name} partition {partition:?}: forced end {end} is not past the last appended offset {last}")]
    ForcedEndTooSmall {
        /// Topic or file.
        source_name: String,
        /// Kafka partition.
        partition: Option<i32>,
        /// The forced end.
        end: i64,
        /// Last offset appended.
        last: i64,
    },
}

impl ArchiveError {
    /// Whether trying the same upload again later may succeed: the store
    /// says so (network failures, timeouts, throttling, 5xx, credentials
    /// passing trouble). The files not uploaded stay queued, so a retry
    /// loses nothing.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ArchiveError::Store { source, .. } if source.is_retryable())
    }

    /// Whether retrying cannot help and the process should stop: the store
    /// refuses this process (missing or rejected credentials, access
    /// denied, no such bucket, invalid store settings, a local directory it
    /// may not write: [`store_refuses`]), or rows cannot be encoded (a
    /// schema bug, the same on every replay). False for the forced-end
    /// checks, which depend on in-memory state a restart rebuilds.
    pub fn is_fatal(&self) -> bool {
        match self {
            ArchiveError::Store { source, .. } => store_refuses(source),
            ArchiveError::Arrow { .. } | ArchiveError::Parquet { .. } => true,
            ArchiveError::PastForcedEnd { .. } | ArchiveError::ForcedEndTooSmall { .. } => false,
        }
    }
}

/// Whether a store error is one retrying cannot fix (see
/// [`ArchiveError::is_fatal`]): S3 refusals
/// ([`super::s3::StoreError::is_fatal`]), an invalid object key, a local
/// directory without write permission or on a read-only file system.
pub fn store_refuses(e: &StoreError) -> bool {
    match e {
        StoreError::Local { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        ),
        StoreError::InvalidKey(_) => true,
        StoreError::S3(e) => e.is_fatal(),
    }
}

/// A source partition: a Kafka topic partition, or an input file
/// (`partition` `None`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    /// Topic, or input file path.
    pub source: Arc<str>,
    /// Kafka partition; `None` in file mode.
    pub partition: Option<i32>,
}

impl SourceKey {
    /// The source partition of a payload.
    pub fn of(p: &Provenance) -> SourceKey {
        SourceKey {
            source: p.source.clone(),
            partition: p.partition,
        }
    }
}

/// What one checkpoint of one source partition made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRange {
    /// The source partition.
    pub key: SourceKey,
    /// Offset of the first record covered.
    pub first_offset: i64,
    /// One past the last record covered: the offset to commit.
    pub end_offset: i64,
    /// Object keys written, sorted.
    pub files: Vec<String>,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// A finished Parquet file, not yet uploaded.
#[derive(Clone, Debug)]
pub struct SealedFile {
    /// Object key (`<dir>/<name>.parquet`).
    pub key: String,
    /// The file.
    pub bytes: Bytes,
    /// Rows in it.
    pub rows: u64,
}

/// Running totals of a writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Objects uploaded.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Their size in bytes.
    pub bytes: u64,
}

struct OpenFile {
    table: Table,
    first_offset: i64,
    rows: u64,
    pending: Rows,
    pending_bytes: usize,
    writer: Option<ArrowWriter<Vec<u8>>>,
}

impl OpenFile {
    fn new(table: Table, first_offset: i64) -> OpenFile {
        OpenFile {
            table,
            first_offset,
            rows: 0,
            pending: Rows::new(table),
            pending_bytes: 0,
            writer: None,
        }
    }

    /// Estimated size of the finished file.
    fn size_estimate(&self) -> u64 {
        let encoded = self
            .writer
            .as_ref()
            .map_or(0, |w| w.bytes_written() + w.in_progress_size());
        (encoded + self.pending_bytes) as u64
    }

    /// Encodes the buffered rows into the Parquet writer.
    fn encode_pending(&mut self, props: &Arc<WriterProperties>) -> Result<(), ArchiveError> {
        let table = self.table.name();
        if self.writer.is_none() {
            let w = ArrowWriter::try_new(Vec::new(), self.table.schema(), Some((**props).clone()))
                .map_err(|source| ArchiveError::Parquet { table, source })?;
            self.writer = Some(w);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = self
            .pending
            .finish()
            .map_err(|source| ArchiveError::Arrow { table, source })?;
        self.pending_bytes = 0;
        if let Some(w) = self.writer.as_mut() {
            w.write(&batch)
                .map_err(|source| ArchiveError::Parquet { table, source })?;
        }
        Ok(())
    }

    /// The finished Parquet file.
    fn finish(mut self, props: &Arc<WriterProperties>) -> Result<Vec<u8>, ArchiveError> {
        let table = self.table.name();
        self.encode_pending(props)?;
        match self.writer.take() {
            Some(w) => w
                .into_inner()
                .map_err(|source| ArchiveError::Parquet { table, source }),
            None => Ok(Vec::new()),
        }
    }
}

/// Identifies an open file inside a source partition: its table and
/// partition directory (UTC day number and channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FileKey {
    table: Table,
    /// Days since 1970-01-01 (UTC) of the partition date.
    day: i64,
    channel: Option<Channel>,
}

impl FileKey {
    fn new(table: Table, date_ms: i64, channel: Option<Channel>) -> FileKey {
        FileKey {
            table,
            day: date_ms.div_euclid(MS_PER_DAY),
            channel,
        }
    }

    /// `delivery_events/event_date=2025-10-30/channel=SMS`
    fn dir(&self) -> String {
        naming::partition_dir(
            self.table,
            self.day.saturating_mul(MS_PER_DAY),
            self.channel,
        )
    }
}

const MS_PER_DAY: i64 = 86_400_000;

struct SourceState {
    tag: String,
    /// Offsets of the first and last record appended since the last checkpoint.
    first_offset: i64,
    last_offset: i64,
    /// Wall-clock time of the first row since the last checkpoint.
    opened_at: Option<Instant>,
    forced_end: Option<i64>,
    /// Open files by partition directory (`delivery_events/event_date=.../channel=SMS`).
    files: BTreeMap<FileKey, OpenFile>,
    /// A file reached `max_rows` or `max_bytes`.
    full: bool,
    /// Finished files not yet uploaded (an upload failed): retried first by
    /// the next checkpoint.
    finished: Vec<(String, Bytes, u64)>,
}

impl SourceState {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.finished.is_empty()
    }
}

/// The archive writer. See the module documentation.
pub struct ArchiveWriter {
    policy: RollingPolicy,
    retry: RetryPolicy,
    props: HashMap<Table, Arc<WriterProperties>>,
    sources: BTreeMap<SourceKey, SourceState>,
    tags: HashMap<Arc<str>, String>,
    stats: WriterStats,
}

/// Current wall-clock time, epoch ms (the `processed_at` column).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The Parquet writer properties of a table.
pub fn writer_properties(table: Table) -> WriterProperties {
    let zstd = ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default();
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_coerce_types(true)
        .set_dictionary_enabled(false)
        .set_created_by(format!("smsvoice {}", env!("CARGO_PKG_VERSION")));
    for name in table.dictionary_columns() {
        b = b.set_column_dictionary_enabled(ColumnPath::from(name), true);
    }
    // Map keys and values (context) and list elements (envelopes) repeat a
    // handful of values: dictionary-encode their leaves too.
    for c in table.columns() {
        let leaves: Vec<Vec<String>> = match c.kind {
            Kind::TextMap => vec![
                vec![c.name.into(), MAP_ENTRIES.into(), MAP_KEY.into()],
                vec![c.name.into(), MAP_ENTRIES.into(), MAP_VALUE.into()],
            ],
            Kind::TextList => vec![vec![c.name.into(), "list".into(), "element".into()]],
            _ => Vec::new(),
        };
        for leaf in leaves {
            b = b.set_column_dictionary_enabled(ColumnPath::new(leaf), true);
        }
    }
    b.build()
}

impl ArchiveWriter {
    /// A writer with no open file.
    pub fn new(policy: RollingPolicy, retry: RetryPolicy) -> ArchiveWriter {
        ArchiveWriter {
            policy,
            retry,
            props: Table::ALL
                .iter()
                .map(|&t| (t, Arc::new(writer_properties(t))))
                .collect(),
            sources: BTreeMap::new(),
            tags: HashMap::new(),
            stats: WriterStats::default(),
        }
    }

    /// Names the objects of `source` with `tag` instead of the default
    /// ([`naming::topic_tag`] of the source, or for a file source without a
    /// tag set, [`naming::file_tag`] of its path). File mode sets the tag from
    /// the file's canonical path. Must be called before the source's first row.
    pub fn set_source_tag(&mut self, source: Arc<str>, tag: String) {
        self.tags.insert(source, tag);
    }

    /// The rolling policy.
    pub fn policy(&self) -> &RollingPolicy {
        &self.policy
    }

    /// Totals of what was uploaded.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    fn tag_of(&self, key: &SourceKey) -> String {
        if let Some(t) = self.tags.get(&key.source) {
            return t.clone();
        }
        match key.partition {
            Some(_) => naming::topic_tag(&key.source),
            None => {
                let name = std::path::Path::new(&*key.source).file_name().map_or_else(
                    || key.source.to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                naming::file_tag(&name, &key.source)
            }
        }
    }

    fn append_row(
        &mut self,
        file_key: FileKey,
        prov: &Provenance,
        append: impl FnOnce(&mut Rows) -> usize,
    ) -> Result<(), ArchiveError> {
        let key = SourceKey::of(prov);
        let offset = prov.offset;
        if !self.sources.contains_key(&key) {
            let tag = self.tag_of(&key);
            self.sources.insert(
                key.clone(),
                SourceState {
                    tag,
                    first_offset: offset,
                    last_offset: offset,
                    opened_at: None,
                    forced_end: None,
                    files: BTreeMap::new(),
                    full: false,
                    finished: Vec::new(),
                },
            );
        }
        let Some(state) = self.sources.get_mut(&key) else {
            return Ok(());
        };
        if let Some(end) = state.forced_end {
            if offset >= end {
                return Err(ArchiveError::PastForcedEnd {
                    source_name: key.source.to_string(),
                    partition: key.partition,
                    offset,
                    end,
                });
            }
        }
        if state.is_empty() {
            state.first_offset = offset;
            state.last_offset = offset;
        } else {
            state.first_offset = state.first_offset.min(offset);
            state.last_offset = state.last_offset.max(offset);
        }
        if state.opened_at.is_none() {
            state.opened_at = Some(Instant::now());
        }
        let file = state
            .files
            .entry(file_key)
            .or_insert_with(|| OpenFile::new(file_key.table, offset));
        file.pending_bytes += append(&mut file.pending);
        file.rows += 1;
        if file.pending.len() >= CHUNK_ROWS {
            let table = file_key.table;
            let props = self.props.get(&table).cloned().unwrap_or_else(|| {
                // Every table has properties; building them again is harmless.
                Arc::new(writer_properties(table))
            });
            file.encode_pending(&props)?;
        }
        if file.rows >= self.policy.max_rows || file.size_estimate() >= self.policy.max_bytes {
            state.full = true;
        }
        Ok(())
    }

    /// Appends an accepted delivery event, partitioned by the UTC date of its
    /// eventTimestamp and its channel.
    pub fn append_event(
        &mut self,
        e: &EnrichedEvent,
        processed_at_ms: i64,
    ) -> Result<(), ArchiveError> {
        self.append_event_at(e, &e.provenance, processed_at_ms)
    }

    /// [`ArchiveWriter::append_event`], with the file cut by the position
    /// `at` the event was consumed from instead of its original position
    /// (the Kafka runtime's archive sink: it consumes the enriched-event
    /// topic, so the files follow that topic's partitions and offsets; the
    /// row still carries the original position).
    pub fn append_event_at(
        &mut self,
        e: &EnrichedEvent,
        at: &Provenance,
        processed_at_ms: i64,
    ) -> Result<(), ArchiveError> {
        let file = FileKey::new(
            Table::DeliveryEvents,
            e.event.event_timestamp,
            Some(e.event.channel),
        );
        self.append_row(file, at, |r| match r {
            Rows::Events(b) => b.append(e, processed_at_ms),
            _ => 0,
        })
    }

    /// [`ArchiveWriter::append_inbound`], cut by the consumed position `at`
    /// (see [`ArchiveWriter::append_event_at`]).
    pub fn append_inbound_at(
        &mut self,
        m: &EnrichedInbound,
        at: &Provenance,
        fallback_date_ms: i64,
        processed_at_ms: i64,
    ) -> Result<(), ArchiveError> {
        let date = m.message.received_at.unwrap_or(fallback_date_ms);
        let file = FileKey::new(Table::InboundMessages, date, None);
        self.append_row(file, at, |r| match r {
            Rows::Inbound(b) => b.append(m, processed_at_ms),
            _ => 0,
        })
    }

    /// [`ArchiveWriter::append_dead_letter`], cut by the consumed position
    /// `at` (see [`ArchiveWriter::append_event_at`]).
    pub fn append_dead_letter_at(
        &mut self,
        d: &DeadLetter,
        at: &Provenance,
        record_timestamp_ms: Option<i64>,
        fallback_date_ms: i64,
        processed_at_ms: i64,
    ) -> Result<(), ArchiveError> {
        let date = record_timestamp_ms.unwrap_or(fallback_date_ms);
        let file = FileKey::new(Table::DeadLetters, date, None);
        self.append_row(file, at, |r| match r {
            Rows::DeadLetters(b) => b.append(d, record_timestamp_ms, processed_at_ms),
            _ => 0,
        })
    }

    /// Appends a dead letter read back from the dead-letter topic (the
    /// archive sink), cut by the position `at` it was consumed from and
    /// partitioned by the UTC date of its record timestamp (1970-01-01 when
    /// it has none, as the stages that archived it did).
    pub fn append_dead_letter_parts_at(
        &mut self,
        d: &DeadLetterParts<'_>,
        at: &Provenance,
        processed_at_ms: i64,
    ) -> Result<(), ArchiveError> {
        let date = d.record_timestamp_ms.unwrap_or(0);
        let file = FileKey::new(Table::DeadLetters, date, None);
        self.append_row(file, at, |r| match r {
            Rows::DeadLetters(b) => b.append_parts(d, processed_at_ms),
            _ => 0,
        })
    }

    /// Seals the open files of `key` at `end` ([`seal_source`](Self::seal_source))
    /// and hands them out instead of queueing them: the archive sink uploads
    /// them itself, off its loop. Empty when `key` has no rows.
    pub fn seal_and_take(
        &mut self,
        key: &SourceKey,
        end: i64,
    ) -> Result<Vec<SealedFile>, ArchiveError> {
        if self.seal_source(key, Some(end))?.is_none() {
            return Ok(Vec::new());
        }
        let files = self
            .sources
            .remove(key)
            .map(|s| s.finished)
            .unwrap_or_default();
        Ok(files
            .into_iter()
            .map(|(key, bytes, rows)| SealedFile { key, bytes, rows })
            .collect())
    }

    /// Drops every row of `key` not yet uploaded (the Kafka runtime lost the
    /// partition: its new owner re-reads those records from the last
    /// committed offset and writes them itself).
    pub fn discard_source(&mut self, key: &SourceKey) {
        self.sources.remove(key);
    }

    /// [`discard_source`](Self::discard_source) of `source` `partition`, on
    /// an optional writer (a stage without an archive has none).
    pub fn discard_partition(writer: &mut Option<ArchiveWriter>, source: Arc<str>, partition: i32) {
        if let Some(w) = writer.as_mut() {
            w.discard_source(&SourceKey {
                source,
                partition: Some(partition),
            });
        }
    }

    /// Appends an accepted inbound message, partitioned by the UTC date of
    /// its received_at, or of `fallback_date_ms` when unknown.
    pub fn append_inbound(
        &mut self,
        m: &EnrichedInbound,
        fallback_date_ms: i64,
        processed_at_ms: i64,
    ) -> Result<(), ArchiveError> {
        self.append_inbound_at(m, &m.provenance, fallback_date_ms, processed_at_ms)
    }

    /// Appends a dead letter, partitioned by the UTC date of the record
    /// timestamp, or of `fallback_date_ms` when there is none.
    pub fn append_dead_letter(
        &mut self,
        d: &DeadLetter,
        record_timestamp_ms: Option<i64>,
        fallback_date_ms: i64,
        processed_at_ms: i64,
    ) -> Result<(), ArchiveError> {
        self.append_dead_letter_at(
            d,
            &d.provenance,
            record_timestamp_ms,
            fallback_date_ms,
            processed_at_ms,
        )
    }

    /// Appends everything the core produced for one record `src`.
    ///
    /// `fallback_date_ms` dates inbound messages without received_at and dead
    /// letters when the record has no timestamp of its own
    /// (`src.timestamp_ms`, which takes precedence): in file mode the input
    /// file's modification time. It must be a function of the input, never
    /// the processing time, so replays land in the same partitions.
    pub fn append_outputs(
        &mut self,
        out: &Outputs,
        src: &RecordSource,
        fallback_date_ms: i64,
    ) -> Result<(), ArchiveError> {
        let processed_at = now_ms();
        let fallback = src.timestamp_ms.unwrap_or(fallback_date_ms);
        for e in &out.events {
            self.append_event(e, processed_at)?;
        }
        for m in &out.inbound {
            self.append_inbound(m, fallback, processed_at)?;
        }
        for d in &out.dead_letters {
            self.append_dead_letter(d, src.timestamp_ms, fallback, processed_at)?;
        }
        Ok(())
    }

    /// Source partitions whose checkpoint is due at `now`: a file reached
    /// `max_rows` / `max_bytes`, or the oldest buffered row is `max_age` old.
    pub fn due(&self, now: Instant) -> Vec<SourceKey> {
        self.sources
            .iter()
            .filter(|(_, s)| {
                // A source with a forced boundary pending is cut there and
                // nowhere else (see `set_forced_end`).
                s.forced_end.is_none()
                    && (s.full
                        || !s.finished.is_empty()
                        || s.opened_at.is_some_and(|t| {
                            now.saturating_duration_since(t) >= self.policy.max_age
                        }))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// True when some source partition is due for a checkpoint
    /// ([`ArchiveWriter::due`]). Call it after every record (or batch).
    pub fn should_rotate(&self, now: Instant) -> bool {
        !self.due(now).is_empty()
    }

    /// True when `source` has a file that reached `max_rows` / `max_bytes`
    /// (a deterministic checkpoint point, unlike age).
    pub fn is_full(&self, key: &SourceKey) -> bool {
        self.sources.get(key).is_some_and(|s| s.full)
    }

    /// What a checkpoint now would cover, per source partition with rows:
    /// `(key, first offset, end offset)`.
    pub fn pending(&self) -> Vec<(SourceKey, i64, i64)> {
        self.sources
            .iter()
            .filter(|(_, s)| !s.files.is_empty())
            .map(|(k, s)| {
                (
                    k.clone(),
                    s.first_offset,
                    s.forced_end.unwrap_or(s.last_offset.saturating_add(1)),
                )
            })
            .collect()
    }

    /// Sets the **forced boundary** of a source partition: the end offset a
    /// crashed run recorded for its last checkpoint. The replay must cut the
    /// checkpoint exactly there: call [`ArchiveWriter::reached_forced_end`]
    /// before each record and checkpoint the source when it says so;
    /// appending a row at or past `end` first is an error.
    pub fn set_forced_end(&mut self, key: SourceKey, end: i64) {
        let tag = self.tag_of(&key);
        self.sources
            .entry(key)
            .or_insert_with(|| SourceState {
                tag,
                first_offset: end,
                last_offset: end,
                opened_at: None,
                forced_end: None,
                files: BTreeMap::new(),
                full: false,
                finished: Vec::new(),
            })
            .forced_end = Some(end);
    }

    /// True when the record at `next_offset` of `key` lies at or past the
    /// source's forced boundary: checkpoint the source before appending it.
    pub fn reached_forced_end(&self, key: &SourceKey, next_offset: i64) -> bool {
        self.sources
            .get(key)
            .and_then(|s| s.forced_end)
            .is_some_and(|end| next_offset >= end)
    }

    /// Checkpoints every source partition that has rows, except those with a
    /// forced boundary pending (they are cut at that boundary only, by
    /// [`ArchiveWriter::checkpoint_source`] once
    /// [`ArchiveWriter::reached_forced_end`] says so). Returns the ranges
    /// that may be committed.
    pub async fn checkpoint(
        &mut self,
        store: &Store,
    ) -> Result<Vec<CheckpointRange>, ArchiveError> {
        let keys: Vec<SourceKey> = self
            .sources
            .iter()
            .filter(|(_, s)| s.forced_end.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in keys {
            if let Some(r) = self.checkpoint_source(store, &k, None).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Encodes and uploads **all** open files of one source partition, and
    /// returns the offset range they cover (`None` when it had no rows).
    ///
    /// The range ends at `force_end`, else at the forced boundary set with
    /// [`ArchiveWriter::set_forced_end`], else one past the last record
    /// appended. Files are uploaded with retries ([`Store::put_with_retry`]);
    /// when an upload still fails the error is returned and the files not yet
    /// uploaded are kept, so calling this again retries them (no row is
    /// lost). Only after `Ok` may the runtime commit `end_offset`.
    pub async fn checkpoint_source(
        &mut self,
        store: &Store,
        key: &SourceKey,
        force_end: Option<i64>,
    ) -> Result<Option<CheckpointRange>, ArchiveError> {
        let Some(end) = self.seal_source(key, force_end)? else {
            return Ok(None);
        };
        self.upload_source(store, key, end).await
    }

    /// Seals every source partition that has open files: they are encoded
    /// and queued for [`upload_sealed`](Self::upload_sealed); rows appended
    /// afterwards go to new files. (The Kafka runtime's archive sink uses
    /// [`seal_and_take`](Self::seal_and_take) instead and uploads off its
    /// loop.)
    pub fn seal_all(&mut self) -> Result<(), ArchiveError> {
        let keys: Vec<SourceKey> = self.sources.keys().cloned().collect();
        for k in keys {
            self.seal_source(&k, None)?;
        }
        Ok(())
    }

    /// Uploads every sealed file (with retries). On error the files not yet
    /// uploaded stay queued.
    pub async fn upload_sealed(&mut self, store: &Store) -> Result<(), ArchiveError> {
        let keys: Vec<SourceKey> = self
            .sources
            .iter()
            .filter(|(_, s)| !s.finished.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let end = self
                .sources
                .get(&k)
                .map_or(0, |s| s.last_offset.saturating_add(1));
            self.upload_source(store, &k, end).await?;
        }
        Ok(())
    }

    /// Encodes the open files of `key` into its upload queue; returns the
    /// end of the range they cover (`None` when it had no rows).
    pub fn seal_source(
        &mut self,
        key: &SourceKey,
        force_end: Option<i64>,
    ) -> Result<Option<i64>, ArchiveError> {
        let Some(state) = self.sources.get_mut(key) else {
            return Ok(None);
        };
        if state.is_empty() {
            // Nothing to cut: a forced boundary stays pending.
            return Ok(None);
        }
        let end = force_end
            .or(state.forced_end)
            .unwrap_or(state.last_offset.saturating_add(1));
        if end <= state.last_offset {
            return Err(ArchiveError::ForcedEndTooSmall {
                source_name: key.source.to_string(),
                partition: key.partition,
                end,
                last: state.last_offset,
            });
        }
        let partition = key.partition.unwrap_or(0);
        for (file_key, file) in std::mem::take(&mut state.files) {
            let dir = file_key.dir();
            let name = naming::file_name(&state.tag, partition, file.first_offset);
            let props = self
                .props
                .get(&file.table)
                .cloned()
                .unwrap_or_else(|| Arc::new(writer_properties(file.table)));
            let file_rows = file.rows;
            let bytes = file.finish(&props)?;
            state
                .finished
                .push((format!("{dir}/{name}"), Bytes::from(bytes), file_rows));
        }
        state.full = false;
        state.opened_at = None;
        state.forced_end = None;
        Ok(Some(end))
    }

    /// Uploads the queued files of `key` (see [`seal_source`](Self::seal_source)).
    async fn upload_source(
        &mut self,
        store: &Store,
        key: &SourceKey,
        end: i64,
    ) -> Result<Option<CheckpointRange>, ArchiveError> {
        let Some(state) = self.sources.get_mut(key) else {
            return Ok(None);
        };
        let first = state.first_offset;
        let mut files = Vec::new();
        let mut written = 0u64;
        let mut rows = 0u64;
        while let Some((obj, bytes, n)) = state.finished.first().cloned() {
            let len = bytes.len() as u64;
            store
                .put_with_retry(&obj, bytes, &self.retry)
                .await
                .map_err(|source| ArchiveError::Store {
                    key: obj.clone(),
                    source,
                })?;
            state.finished.remove(0);
            self.stats.files += 1;
            self.stats.rows += n;
            self.stats.bytes += len;
            written += len;
            rows += n;
            files.push(obj);
        }
        if state.is_empty() {
            self.sources.remove(key);
        }
        files.sort();
        Ok(Some(CheckpointRange {
            key: key.clone(),
            first_offset: first,
            end_offset: end,
            files,
            rows,
            bytes: written,
        }))
    }

    /// Rows appended and not yet uploaded.
    pub fn buffered_rows(&self) -> u64 {
        self.sources
            .values()
            .flat_map(|s| s.files.values())
            .map(|f| f.rows)
            .sum()
    }
}
