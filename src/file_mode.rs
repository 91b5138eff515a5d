//! File mode: a shell that reads JSON files, runs the core and writes the
//! outputs as files. The embedded default of `smsvoice process`.
//!
//! Each input is read whole and split into top-level JSON values (JSON lines
//! or concatenated JSON, any envelope); each value is one record, numbered
//! from 0 in its file. A directory input stands for its files, sorted by name.
//!
//! The Parquet archive ([`crate::archive`]) is written too: under
//! `<out>/archive` by default, or at the location given by `--archive` or
//! `[archive] uri` (a directory or `s3://bucket/prefix`). Each input file is
//! one source partition (objects named after the file's name and a hash of
//! its canonical path, partition 0, first record index); dates that the
//! records do not carry come from the file's modification time, which is
//! also the records' *arrival time*: no time inside them may be later than
//! it plus `[limits] max_clock_skew` (see [`crate::limits`]). Files are cut
//! by `max_rows` / `max_bytes` and at the end of each input file, never by
//! age, so two runs over the same input write the same objects.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::archive::writer::{ArchiveError, ArchiveWriter, SourceKey, WriterStats};
use crate::archive::{naming, Store, StoreError};
use crate::config::Config;
use crate::core::{Core, Counters};
use crate::decode::{next_record, RecordSource};
use crate::enrich::{OptOutRecord, Outputs, SpendRecord};

/// The sample payloads bundled into the binary, used when no input is given.
pub const EMBEDDED_SAMPLES: [(&str, &[u8]); 9] = [
    (
        "samples/concatenated-no-delimiter.json",
        include_bytes!("../samples/concatenated-no-delimiter.json"),
    ),
    (
        "samples/eventbridge-envelope-sms.json",
        include_bytes!("../samples/eventbridge-envelope-sms.json"),
    ),
    (
        "samples/firehose-http-batch.json",
        include_bytes!("../samples/firehose-http-batch.json"),
    ),
    (
        "samples/inbound-stop.json",
        include_bytes!("../samples/inbound-stop.json"),
    ),
    (
        "samples/mms-delivered.json",
        include_bytes!("../samples/mms-delivered.json"),
    ),
    (
        "samples/sms-delivered-carrier.json",
        include_bytes!("../samples/sms-delivered-carrier.json"),
    ),
    (
        "samples/sms-successful.json",
        include_bytes!("../samples/sms-successful.json"),
    ),
    (
        "samples/sns-envelope-inbound.json",
        include_bytes!("../samples/sns-envelope-inbound.json"),
    ),
    (
        "samples/voice-completed.json",
        include_bytes!("../samples/voice-completed.json"),
    ),
];

/// Names of the files written into the output directory.
pub mod files {
    /// Enriched delivery events, one JSON object a line.
    pub const EVENTS: &str = "enriched-events.jsonl";
    /// Enriched inbound messages.
    pub const INBOUND: &str = "enriched-inbound.jsonl";
    /// Alarm state changes and LIMIT_REACHED records.
    pub const ALARMS: &str = "alarms.jsonl";
    /// Replies for self-managed numbers.
    pub const REPLIES: &str = "replies.jsonl";
    /// Dead letters.
    pub const DEAD_LETTERS: &str = "dead-letters.jsonl";
    /// Month-to-date spend per (month, channel), a JSON array.
    pub const SPEND: &str = "spend.json";
    /// Opt-out table, a JSON array.
    pub const OPTOUTS: &str = "optouts.json";
}

/// Why file mode stopped.
#[derive(Debug, thiserror::Error)]
pub enum FileModeError {
    /// An input could not be read.
    #[error("cannot read input {path}: {source}")]
    Unreadable {
        /// The input path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An output could not be written.
    #[error("cannot write output {path}: {source}")]
    Output {
        /// The output path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The `[archive]` configuration is invalid.
    #[error("invalid archive configuration: {0}")]
    ArchiveConfig(String),
    /// The archive location could not be opened.
    #[error("cannot open archive {location}: {source}")]
    ArchiveStore {
        /// The location.
        location: String,
        /// The cause.
        source: StoreError,
    },
    /// Writing the archive failed.
    #[error("cannot write archive: {0}")]
    Archive(#[from] ArchiveError),
}

/// Where file mode writes the Parquet archive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ArchiveTarget {
    /// `[archive] uri` if set, else `<out>/archive`.
    #[default]
    Default,
    /// This location: a local directory, `file:///dir` or `s3://bucket/prefix`.
    Uri(String),
    /// No archive.
    Disabled,
}

/// What was written to the archive.
#[derive(Clone, Debug)]
pub struct ArchiveSummary {
    /// Where.
    pub location: String,
    /// Objects, rows and bytes uploaded.
    pub stats: WriterStats,
}

/// An input: a file on disk or an embedded sample.
#[derive(Clone, Debug)]
pub enum Input {
    /// A path (file or directory).
    Path(PathBuf),
    /// Bytes bundled in the binary, with the name they are reported under.
    Embedded(&'static str, &'static [u8]),
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Input files read.
    pub files: usize,
    /// Counters of the core.
    pub counters: Counters,
    /// Final spend per (month, channel).
    pub spend: Vec<SpendRecord>,
    /// Final opt-out table.
    pub optouts: Vec<OptOutRecord>,
    /// The archive written, if any.
    pub archive: Option<ArchiveSummary>,
}

struct Sink {
    dir: PathBuf,
    events: BufWriter<File>,
    inbound: BufWriter<File>,
    alarms: BufWriter<File>,
    replies: BufWriter<File>,
    dead: BufWriter<File>,
}

fn create(dir: &Path, name: &str) -> Result<BufWriter<File>, FileModeError> {
    let path = dir.join(name);
    File::create(&path)
        .map(|f| BufWriter::with_capacity(1 << 16, f))
        .map_err(|source| FileModeError::Output {
            path: path.display().to_string(),
            source,
        })
}

fn line<T: Serialize>(w: &mut BufWriter<File>, v: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")
}

impl Sink {
    fn open(dir: &Path) -> Result<Sink, FileModeError> {
        fs::create_dir_all(dir).map_err(|source| FileModeError::Output {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Sink {
            dir: dir.to_owned(),
            events: create(dir, files::EVENTS)?,
            inbound: create(dir, files::INBOUND)?,
            alarms: create(dir, files::ALARMS)?,
            replies: create(dir, files::REPLIES)?,
            dead: create(dir, files::DEAD_LETTERS)?,
        })
    }

    fn err(&self, source: std::io::Error) -> FileModeError {
        FileModeError::Output {
            path: self.dir.display().to_string(),
            source,
        }
    }

    fn write(&mut self, out: &Outputs) -> Result<(), FileModeError> {
        let r = (|| -> std::io::Result<()> {
            for e in &out.events {
                self.events.write_all(&e.json)?;
                self.events.write_all(b"\n")?;
            }
            for i in &out.inbound {
                self.inbound.write_all(&i.json)?;
                self.inbound.write_all(b"\n")?;
            }
            for a in &out.alarms {
                line(&mut self.alarms, a)?;
            }
            for r in &out.replies {
                line(&mut self.replies, r)?;
            }
            for d in &out.dead_letters {
                line(&mut self.dead, d)?;
            }
            Ok(())
        })();
        r.map_err(|e| self.err(e))
    }

    fn finish(
        mut self,
        spend: &[SpendRecord],
        optouts: &[OptOutRecord],
    ) -> Result<(), FileModeError> {
        let r = (|| -> std::io::Result<()> {
            for w in [
                &mut self.events,
                &mut self.inbound,
                &mut self.alarms,
                &mut self.replies,
                &mut self.dead,
            ] {
                w.flush()?;
            }
            fs::write(
                self.dir.join(files::SPEND),
                serde_json::to_vec_pretty(spend).map_err(std::io::Error::other)?,
            )?;
            fs::write(
                self.dir.join(files::OPTOUTS),
                serde_json::to_vec_pretty(optouts).map_err(std::io::Error::other)?,
            )?;
            Ok(())
        })();
        r.map_err(|e| self.err(e))
    }
}

impl Loaded {
    /// The arrival time of the file's records: its modification time (no
    /// bound for embedded samples, which have none). It bounds every time
    /// inside the records (see [`crate::limits`]) but is not the receive
    /// time of their inbound messages.
    fn arrival_ms(&self) -> Option<i64> {
        (self.mtime_ms > 0).then_some(self.mtime_ms)
    }
}

/// One input file, read.
struct Loaded {
    /// The path as given (or the embedded sample's name): the `source` of its records.
    name: String,
    bytes: Vec<u8>,
    /// Modification time, epoch ms (0 for embedded samples): the archive's
    /// fallback date.
    mtime_ms: i64,
    /// Canonical path (the name for embedded samples): hashed into the
    /// archive's object names.
    full_path: String,
}

fn mtime_ms(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Expands directories into their files (sorted by name) and reads each
/// input, failing on the first unreadable one before any processing.
fn load(inputs: &[Input]) -> Result<Vec<Loaded>, FileModeError> {
    let mut loaded = Vec::new();
    for input in inputs {
        match input {
            Input::Embedded(name, bytes) => loaded.push(Loaded {
                name: (*name).to_owned(),
                bytes: bytes.to_vec(),
                mtime_ms: 0,
                full_path: (*name).to_owned(),
            }),
            Input::Path(p) => {
                let unreadable = |source| FileModeError::Unreadable {
                    path: p.display().to_string(),
                    source,
                };
                let meta = fs::metadata(p).map_err(unreadable)?;
                let mut paths = if meta.is_dir() {
                    let mut v: Vec<PathBuf> = fs::read_dir(p)
                        .map_err(unreadable)?
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_file())
                        .collect();
                    v.sort();
                    v
                } else {
                    vec![p.clone()]
                };
                for path in paths.drain(..) {
                    let unreadable = |source| FileModeError::Unreadable {
                        path: path.display().to_string(),
                        source,
                    };
                    let bytes = fs::read(&path).map_err(unreadable)?;
                    let meta = fs::metadata(&path).map_err(unreadable)?;
                    let full_path = fs::canonicalize(&path)
                        .unwrap_or_else(|_| path.clone())
                        .display()
                        .to_string();
                    loaded.push(Loaded {
                        name: path.display().to_string(),
                        bytes,
                        mtime_ms: mtime_ms(&meta),
                        full_path,
                    });
                }
            }
        }
    }
    Ok(loaded)
}

/// The archive side of a run: a store, a writer and the runtime the store
/// needs (file mode itself is synchronous).
struct ArchiveSink {
    rt: tokio::runtime::Runtime,
    store: Store,
    writer: ArchiveWriter,
}

impl ArchiveSink {
    fn open(
        cfg: &Config,
        target: &ArchiveTarget,
        out_dir: &Path,
    ) -> Result<Option<ArchiveSink>, FileModeError> {
        let location = match target {
            ArchiveTarget::Disabled => return Ok(None),
            ArchiveTarget::Uri(u) => u.clone(),
            ArchiveTarget::Default => cfg
                .archive
                .uri
                .clone()
                .unwrap_or_else(|| out_dir.join("archive").display().to_string()),
        };
        cfg.archive
            .validate()
            .map_err(FileModeError::ArchiveConfig)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| FileModeError::Output {
                path: location.clone(),
                source,
            })?;
        let store = rt
            .block_on(Store::open(&location, &cfg.archive))
            .map_err(|source| FileModeError::ArchiveStore {
                location: location.clone(),
                source,
            })?;
        let writer = ArchiveWriter::new(cfg.archive.rolling, cfg.archive.retry);
        Ok(Some(ArchiveSink { rt, store, writer }))
    }

    fn checkpoint(&mut self, key: &SourceKey) -> Result<(), FileModeError> {
        self.rt
            .block_on(self.writer.checkpoint_source(&self.store, key, None))?;
        Ok(())
    }
}

/// Runs the core over the inputs in order and writes the outputs into
/// `out_dir`, and the archive into `<out_dir>/archive` (or `[archive] uri`).
pub fn run(cfg: &Config, inputs: &[Input], out_dir: &Path) -> Result<Summary, FileModeError> {
    run_with_archive(cfg, inputs, out_dir, &ArchiveTarget::Default)
}

/// [`run`], with the archive written to `archive`.
pub fn run_with_archive(
    cfg: &Config,
    inputs: &[Input],
    out_dir: &Path,
    archive: &ArchiveTarget,
) -> Result<Summary, FileModeError> {
    let loaded = load(inputs)?;
    let mut sink = Sink::open(out_dir)?;
    let mut archive = ArchiveSink::open(cfg, archive, out_dir)?;
    let mut core = Core::new(cfg);
    let mut out = Outputs::default();
    for input in &loaded {
        let source: Arc<str> = Arc::from(input.name.as_str());
        let key = SourceKey {
            source: source.clone(),
            partition: None,
        };
        if let Some(a) = archive.as_mut() {
            let file_name = Path::new(&input.name)
                .file_name()
                .map_or_else(|| input.name.clone(), |n| n.to_string_lossy().into_owned());
            a.writer.set_source_tag(
                source.clone(),
                naming::file_tag(&file_name, &input.full_path),
            );
        }
        // The records of `split_values`, each found by one scan that its
        // decoding reuses.
        let limits = *core.limits();
        let mut pos = 0;
        let mut index = 0i64;
        while let Some((range, scanned)) = next_record(&input.bytes, &mut pos, &limits) {
            let src = RecordSource {
                source: source.clone(),
                partition: None,
                offset: index,
                timestamp_ms: None,
            };
            index += 1;
            let bytes = &input.bytes[range];
            match &scanned {
                Some(s) => core.process_scanned(bytes, s, &src, input.arrival_ms(), &mut out),
                None => core.process_with_arrival(bytes, &src, input.arrival_ms(), &mut out),
            }
            sink.write(&out)?;
            if let Some(a) = archive.as_mut() {
                a.writer.append_outputs(&out, &src, input.mtime_ms)?;
                // Cut at this record boundary: deterministic (rows/bytes).
                if a.writer.is_full(&key) {
                    a.checkpoint(&key)?;
                }
            }
            out.clear();
        }
        if let Some(a) = archive.as_mut() {
            a.checkpoint(&key)?;
        }
    }
    let spend = core.spend_totals();
    let optouts = core.optout_table();
    sink.finish(&spend, &optouts)?;
    Ok(Summary {
        files: loaded.len(),
        counters: core.counters(),
        spend,
        optouts,
        archive: archive.map(|a| ArchiveSummary {
            location: a.store.describe(),
            stats: a.writer.stats(),
        }),
    })
}

impl std::fmt::Display for Summary {
    /// The one-screen summary printed by `smsvoice process`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counters;
        writeln!(f, "files read           {}", self.files)?;
        writeln!(f, "records read         {}", c.records)?;
        writeln!(
            f,
            "accepted             {} ({} delivery events, {} inbound messages)",
            c.events + c.inbound,
            c.events,
            c.inbound
        )?;
        writeln!(f, "dead-lettered        {}", c.dead_letters)?;
        writeln!(f, "duplicate events     {}", c.duplicates)?;
        writeln!(
            f,
            "late receipts        {} (after month close, not counted)",
            c.late
        )?;
        writeln!(f, "alarm/limit records  {}", c.alarms)?;
        writeln!(f, "replies              {}", c.replies)?;
        if let Some(a) = &self.archive {
            writeln!(
                f,
                "archive              {} files, {} rows, {} bytes -> {}",
                a.stats.files, a.stats.rows, a.stats.bytes, a.location
            )?;
        }
        let opted_out = self.optouts.iter().filter(|o| o.opted_out).count();
        writeln!(
            f,
            "opt-out table        {} numbers, {} opted out",
            self.optouts.len(),
            opted_out
        )?;
        writeln!(f, "spend (USD, exact):")?;
        if self.spend.is_empty() {
            writeln!(f, "  none")?;
        }
        let shown = 12;
        for s in self.spend.iter().take(shown) {
            writeln!(
                f,
                "  {}  {:<5}  {:>16}  {} messages",
                s.month, s.channel, s.spend_usd, s.messages
            )?;
        }
        if self.spend.len() > shown {
            writeln!(
                f,
                "  ... {} more (see spend.json)",
                self.spend.len() - shown
            )?;
        }
        Ok(())
    }
}
