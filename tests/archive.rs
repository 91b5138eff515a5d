//! The Parquet archive without a query engine: schema documentation and DDL
//! agree with the code, the local store publishes atomically, rotation by
//! rows and bytes keeps every row exactly once, two runs of the binary write
//! the same objects, and a Kafka-style crash and replay (with and without a
//! recorded `pending_end`) neither duplicates nor loses a row.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use smsvoice::archive::config::{ArchiveConfig, RetryPolicy, RollingPolicy};
use smsvoice::archive::schema::{athena_ddl, markdown_columns, Table};
use smsvoice::archive::store::{LocalStore, Store};
use smsvoice::archive::writer::{ArchiveError, ArchiveWriter, SourceKey};
use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::decode::RecordSource;
use smsvoice::enrich::Outputs;
use smsvoice::file_mode::{self, ArchiveTarget, Input};
use smsvoice::generate::{generate, Generated, Workload};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn bless() -> bool {
    std::env::var_os("SMSVOICE_BLESS").is_some()
}

// ---------------------------------------------------------------- docs / DDL

fn between<'a>(text: &'a str, begin: &str, end: &str) -> &'a str {
    let b = text
        .find(begin)
        .unwrap_or_else(|| panic!("marker {begin} missing"))
        + begin.len();
    let e = text[b..]
        .find(end)
        .unwrap_or_else(|| panic!("marker {end} missing"))
        + b;
    &text[b..e]
}

/// `schemas/archive.md` column tables and `schemas/sql/athena/<table>.sql`
/// are rendered from the Arrow schema of `src/archive/schema.rs`; they must
/// be committed as rendered. `SMSVOICE_BLESS=1 cargo test --test archive`
/// rewrites them after a schema change.
#[test]
fn docs_and_ddl_match_the_code_schema() {
    let md_path = PathBuf::from(ROOT).join("schemas/archive.md");
    let mut md = std::fs::read_to_string(&md_path).expect("schemas/archive.md");
    for t in Table::ALL {
        let begin = format!("<!-- BEGIN GENERATED COLUMNS {} -->\n", t.name());
        let end = format!("<!-- END GENERATED COLUMNS {} -->", t.name());
        let want = markdown_columns(t);
        let got = between(&md, &begin, &end).to_owned();
        if bless() {
            md = md.replacen(
                &format!("{begin}{got}{end}"),
                &format!("{begin}{want}{end}"),
                1,
            );
        } else {
            assert_eq!(
                got,
                want,
                "schemas/archive.md, table {}: out of date (SMSVOICE_BLESS=1 cargo test --test archive)",
                t.name()
            );
        }
        let ddl_path = PathBuf::from(ROOT).join(format!("schemas/sql/athena/{}.sql", t.name()));
        let ddl = athena_ddl(t);
        if bless() {
            std::fs::write(&ddl_path, &ddl).expect("write DDL");
        } else {
            let got = std::fs::read_to_string(&ddl_path).unwrap_or_default();
            assert_eq!(
                got,
                ddl,
                "{}: out of date (SMSVOICE_BLESS=1 cargo test --test archive)",
                ddl_path.display()
            );
        }
        // Every column of the schema is in the DDL with its type, partition
        // columns only in PARTITIONED BY.
        let (cols, parts) = ddl.split_once("PARTITIONED BY").expect("partitioned");
        for f in t.schema().fields() {
            let ty = smsvoice::archive::schema::athena_type(f.data_type()).expect("type");
            assert!(
                cols.contains(&format!("`{}` {ty} COMMENT", f.name())),
                "{}",
                f.name()
            );
        }
        for p in t.partition_columns() {
            assert!(!cols.contains(&format!("`{}`", p.name)), "{}", p.name);
            assert!(parts.contains(&format!("`{}` {}", p.name, p.athena_type)));
        }
    }
    if bless() {
        std::fs::write(&md_path, md).expect("write archive.md");
    }
}

fn view_names(sql: &str) -> BTreeSet<String> {
    sql.lines()
        .filter_map(|l| l.strip_prefix("CREATE OR REPLACE VIEW "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn both_engines_ship_the_same_views_with_price_plus_fee() {
    let duck = std::fs::read_to_string(format!("{ROOT}/schemas/sql/duckdb/views.sql"))
        .expect("duckdb views");
    let athena = std::fs::read_to_string(format!("{ROOT}/schemas/sql/athena/views.sql"))
        .expect("athena views");
    let names = view_names(&duck);
    assert_eq!(names, view_names(&athena));
    for v in [
        "message_latest",
        "spend_monthly",
        "delivery_daily",
        "cost_by_context",
        "cost_by_tenant",
        "optout_daily",
    ] {
        assert!(names.contains(v), "{v}");
    }
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let fee = "COALESCE(total_message_price, CAST(0 AS DECIMAL(38,10))) + COALESCE(total_carrier_fee, CAST(0 AS DECIMAL(38,10))) AS event_cost";
    for sql in [&duck, &athena] {
        let s = squash(sql);
        assert!(s.contains(fee), "cost must be price + carrier fee");
        assert_eq!(s.matches("AS event_cost").count(), 1);
    }
    let tables =
        std::fs::read_to_string(format!("{ROOT}/schemas/sql/duckdb/tables.sql")).expect("tables");
    for t in Table::ALL {
        assert!(tables.contains(&format!(
            "read_parquet('{{{{ARCHIVE_ROOT}}}}/{}/**/*.parquet'",
            t.name()
        )));
    }
}

// -------------------------------------------------------------- local store

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.expect("entry").path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect()
}

#[test]
fn local_store_publishes_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::Local(LocalStore::new(dir.path()));
    let rt = rt();
    let key = "delivery_events/event_date=2025-10-30/channel=SMS/t+0+00000000000000000000.parquet";
    rt.block_on(store.put(key, Bytes::from_static(b"first")))
        .expect("put");
    rt.block_on(store.put(key, Bytes::from_static(b"second")))
        .expect("replace");
    assert_eq!(rt.block_on(store.get(key)).expect("get"), b"second");
    assert_eq!(
        rt.block_on(store.list("delivery_events/")).expect("list"),
        vec![key.to_owned()]
    );
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );

    // A write that fails (the final name is a non-empty directory, so the
    // rename cannot replace it) leaves no partial file and no temporary file.
    let blocked = "dead_letters/receive_date=2025-10-30/x+0+00000000000000000000.parquet";
    let blocked_path = dir.path().join(blocked);
    std::fs::create_dir_all(blocked_path.join("inside")).expect("mkdir");
    let err = rt
        .block_on(store.put(blocked, Bytes::from(vec![7u8; 100_000])))
        .expect_err("cannot replace a directory");
    assert!(!err.is_retryable(), "{err}");
    assert!(blocked_path.join("inside").is_dir());
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );
    // Nothing visible but the first object, to `**/*.parquet` globs or to a
    // listing.
    let visible: Vec<PathBuf> = all_files(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(visible, vec![dir.path().join(key)]);
    assert_eq!(
        rt.block_on(store.list("")).expect("list"),
        vec![key.to_owned()]
    );

    // Keys cannot escape the root or name hidden files.
    for bad in ["../x.parquet", "/abs.parquet", "a/.hidden.parquet", ""] {
        assert!(rt.block_on(store.put(bad, Bytes::new())).is_err(), "{bad}");
    }
}

// --------------------------------------------------------- reading archives

/// One archived row's identity: table, source position.
type Pos = (String, String, Option<i32>, i64, i32);

/// Every Parquet file under `root`: relative key -> batches.
fn read_archive(root: &Path) -> BTreeMap<String, Vec<RecordBatch>> {
    let mut out = BTreeMap::new();
    for p in all_files(root) {
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .replace('\\', "/");
        assert!(rel.ends_with(".parquet"), "unexpected file {rel}");
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).expect("open"))
            .expect("parquet")
            .build()
            .expect("reader");
        let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
        out.insert(rel, batches);
    }
    out
}

fn positions(archive: &BTreeMap<String, Vec<RecordBatch>>) -> Vec<Pos> {
    let mut out = Vec::new();
    for (key, batches) in archive {
        let table = key.split('/').next().expect("table").to_owned();
        for b in batches {
            let source = b
                .column_by_name("source")
                .expect("source")
                .as_string::<i32>();
            let part = b
                .column_by_name("source_partition")
                .expect("partition")
                .as_primitive::<Int32Type>();
            let off = b
                .column_by_name("source_offset")
                .expect("offset")
                .as_primitive::<Int64Type>();
            let sub = b
                .column_by_name("source_sub")
                .expect("sub")
                .as_primitive::<Int32Type>();
            for i in 0..b.num_rows() {
                out.push((
                    table.clone(),
                    source.value(i).to_owned(),
                    (!part.is_null(i)).then(|| part.value(i)),
                    off.value(i),
                    sub.value(i),
                ));
            }
        }
    }
    out
}

fn assert_unique(pos: &[Pos]) -> BTreeSet<Pos> {
    let set: BTreeSet<Pos> = pos.iter().cloned().collect();
    assert_eq!(set.len(), pos.len(), "a source position is archived twice");
    set
}

/// The rows of each file without `processed_at`.
fn without_processed_at(
    archive: &BTreeMap<String, Vec<RecordBatch>>,
) -> BTreeMap<String, Vec<RecordBatch>> {
    archive
        .iter()
        .map(|(k, batches)| {
            let v = batches
                .iter()
                .map(|b| {
                    let keep: Vec<usize> = (0..b.num_columns())
                        .filter(|&i| b.schema().field(i).name() != "processed_at")
                        .collect();
                    b.project(&keep).expect("project")
                })
                .collect();
            (k.clone(), v)
        })
        .collect()
}

fn rows_of(archive: &BTreeMap<String, Vec<RecordBatch>>) -> usize {
    archive.values().flatten().map(RecordBatch::num_rows).sum()
}

fn small_workload(seed: u64) -> Generated {
    generate(&Workload {
        seed,
        messages: 600,
        malformed_per_mille: 40,
        inbound_per_mille: 150,
        ..Workload::default()
    })
}

fn write_input(dir: &Path, g: &Generated) -> PathBuf {
    let p = dir.join("input.jsonl");
    let mut text = Vec::new();
    for r in &g.records {
        text.extend_from_slice(r);
        text.push(b'\n');
    }
    std::fs::write(&p, text).expect("write input");
    p
}

// ------------------------------------------------------- file mode, rotation

fn config_with(archive_toml: &str) -> Config {
    Config::from_toml(&format!("{EMBEDDED_DEFAULT}\n{archive_toml}\n"), "test").expect("config")
}

fn check_rotation(archive_toml: &str, per_file_limit: Option<usize>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = small_workload(3);
    let input = write_input(dir.path(), &g);
    let root = dir.path().join("archive");
    let summary = file_mode::run_with_archive(
        &config_with(archive_toml),
        &[Input::Path(input)],
        &dir.path().join("out"),
        &ArchiveTarget::Uri(root.display().to_string()),
    )
    .expect("file mode");
    let archive = read_archive(&root);
    assert!(temp_files(&root).is_empty());
    let pos = positions(&archive);
    assert_unique(&pos);
    let count = |t: &str| pos.iter().filter(|p| p.0 == t).count();
    assert_eq!(count("delivery_events"), g.truth.events);
    assert_eq!(count("inbound_messages"), g.truth.inbound);
    assert_eq!(count("dead_letters"), g.truth.malformed);
    let stats = summary.archive.expect("archive summary").stats;
    assert_eq!(stats.rows as usize, pos.len());
    assert_eq!(stats.files as usize, archive.len());
    let mut per_dir: BTreeMap<String, usize> = BTreeMap::new();
    for (k, batches) in &archive {
        let d = k.rsplit_once('/').expect("dir").0.to_owned();
        *per_dir.entry(d).or_default() += 1;
        if let Some(limit) = per_file_limit {
            // a file is cut between records: one record adds at most a few rows
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            assert!(rows <= limit + 8, "{k}: {rows} rows");
        }
    }
    // every SMS partition (the busiest) got several files
    assert!(
        per_dir
            .iter()
            .filter(|(d, _)| d.ends_with("channel=SMS"))
            .all(|(_, &n)| n >= 2),
        "several files per partition: {per_dir:?}"
    );
}

#[test]
fn rotation_by_rows_keeps_every_row_once() {
    check_rotation("[archive.rolling]\nmax_rows = 40\n", Some(40));
}

#[test]
fn rotation_by_bytes_keeps_every_row_once() {
    check_rotation("[archive.rolling]\nmax_bytes = 20000\n", None);
}

#[test]
fn running_the_binary_twice_writes_the_same_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = small_workload(5);
    let input = write_input(dir.path(), &g);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("{EMBEDDED_DEFAULT}\n[archive.rolling]\nmax_rows = 150\n"),
    )
    .expect("config");
    let archive_dir = dir.path().join("shared-archive");
    let run = |out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
            .args(["process", "--config"])
            .arg(&config)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(dir.path().join(out))
            .arg("--archive")
            .arg(&archive_dir)
            .output()
            .expect("run smsvoice");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_archive(&archive_dir)
    };
    let first = run("out1");
    std::thread::sleep(Duration::from_millis(5));
    let second = run("out2");
    assert!(first.len() > 10, "{} files", first.len());
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>(),
        "same object names"
    );
    assert_eq!(
        without_processed_at(&first),
        without_processed_at(&second),
        "same rows but processed_at"
    );
    assert_eq!(
        rows_of(&first),
        g.truth.events + g.truth.inbound + g.truth.malformed
    );
    assert_unique(&positions(&second));
    assert!(temp_files(&archive_dir).is_empty());
}

// ------------------------------------------------ Kafka-style crash/replay

const TOPIC: &str = "sms-events";

/// The outputs of each record of a generated stream, as partition 0 of
/// `TOPIC` (record timestamps one second apart, from 2025-11-05, after the
/// stream's payload times: a record timestamp is the arrival time that
/// bounds them).
fn kafka_stream(g: &Generated) -> Vec<(RecordSource, Outputs)> {
    let cfg = config_with("");
    let mut core = Core::new(&cfg);
    let source: Arc<str> = Arc::from(TOPIC);
    g.records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let src = RecordSource {
                source: source.clone(),
                partition: Some(0),
                offset: i as i64,
                timestamp_ms: Some(1_762_300_800_000 + i as i64 * 1_000),
            };
            let mut out = Outputs::default();
            core.process(r, &src, &mut out);
            (src, out)
        })
        .collect()
}

fn key() -> SourceKey {
    SourceKey {
        source: Arc::from(TOPIC),
        partition: Some(0),
    }
}

fn policy() -> RollingPolicy {
    RollingPolicy {
        max_rows: 10_000,
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(600),
    }
}

/// Plays the runtime from `start`: appends records, checkpoints at every
/// offset in `cuts` (as if the age limit fired there), and stops *after
/// uploading* the checkpoint at `crash_at` without committing it. Returns
/// the committed offset.
fn play(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    stream: &[(RecordSource, Outputs)],
    start: usize,
    cuts: &[usize],
    crash_at: Option<usize>,
    forced_end: Option<i64>,
) -> usize {
    let mut w = ArchiveWriter::new(policy(), RetryPolicy::default());
    if let Some(end) = forced_end {
        w.set_forced_end(key(), end);
    }
    let mut committed = start;
    for (i, (src, out)) in stream.iter().enumerate().skip(start) {
        let due = cuts.contains(&i) || w.reached_forced_end(&key(), i as i64);
        if due {
            let pending = w.pending();
            let r = rt
                .block_on(w.checkpoint_source(store, &key(), None))
                .expect("checkpoint");
            if let Some(r) = r {
                assert_eq!(pending, vec![(key(), r.first_offset, r.end_offset)]);
                assert_eq!(r.end_offset, i as i64);
            }
            if crash_at == Some(i) {
                return committed; // crashed before the commit
            }
            committed = i;
        }
        w.append_outputs(out, src, 0).expect("append");
    }
    rt.block_on(w.checkpoint(store)).expect("final checkpoint");
    stream.len()
}

#[test]
fn kafka_replay_after_a_crash_rewrites_the_same_objects() {
    let g = small_workload(9);
    let stream = kafka_stream(&g);
    let n = stream.len();
    assert!(n > 1_000);
    let cuts = [300usize, 650, 900];
    let rt = rt();
    let total = g.truth.events + g.truth.inbound + g.truth.malformed;

    // Reference: no crash.
    let ref_dir = tempfile::tempdir().expect("tempdir");
    let ref_store = Store::Local(LocalStore::new(ref_dir.path()));
    play(&rt, &ref_store, &stream, 0, &cuts, None, None);
    let reference = read_archive(ref_dir.path());
    assert_eq!(rows_of(&reference), total);
    assert_unique(&positions(&reference));

    // Crash after uploading the age-triggered checkpoint at 650, before its
    // commit; `pending_end=650` was recorded first, so the replay from the
    // committed 300 is forced to cut at 650 again.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::Local(LocalStore::new(dir.path()));
    let committed = play(&rt, &store, &stream, 0, &cuts, Some(650), None);
    assert_eq!(committed, 300);
    play(&rt, &store, &stream, committed, &[900], None, Some(650));
    let replayed = read_archive(dir.path());
    assert_eq!(
        replayed.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        without_processed_at(&replayed),
        without_processed_at(&reference)
    );
}

#[test]
fn kafka_replay_cutting_elsewhere_still_has_every_row_once() {
    let g = small_workload(10);
    let stream = kafka_stream(&g);
    let rt = rt();
    let total = g.truth.events + g.truth.inbound + g.truth.malformed;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::Local(LocalStore::new(dir.path()));
    // Crash after uploading the checkpoint at 700 without any pending_end:
    // the replay from 250 cuts at other offsets.
    let committed = play(&rt, &store, &stream, 0, &[250, 700], Some(700), None);
    assert_eq!(committed, 250);
    play(&rt, &store, &stream, committed, &[480, 1_100], None, None);
    let archive = read_archive(dir.path());
    let pos = positions(&archive);
    let set = assert_unique(&pos);
    assert_eq!(set.len(), total, "no row lost, none twice");
}

#[test]
fn forced_end_is_enforced() {
    let g = small_workload(12);
    let stream = kafka_stream(&g);
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::Local(LocalStore::new(dir.path()));
    let mut w = ArchiveWriter::new(policy(), RetryPolicy::default());
    w.set_forced_end(key(), 5);
    for (src, out) in &stream[..5] {
        assert!(!w.reached_forced_end(&key(), src.offset));
        w.append_outputs(out, src, 0).expect("append");
    }
    assert!(w.reached_forced_end(&key(), 5));
    // Neither age nor a general checkpoint cuts before the forced boundary.
    assert!(w
        .due(Instant::now() + Duration::from_secs(3_600))
        .is_empty());
    assert!(rt.block_on(w.checkpoint(&store)).expect("skips").is_empty());
    assert!(all_files(dir.path()).is_empty());
    let (src, out) = &stream[5];
    let err = w
        .append_outputs(out, src, 0)
        .expect_err("past the forced end");
    assert!(
        matches!(err, ArchiveError::PastForcedEnd { end: 5, .. }),
        "{err}"
    );
    let r = rt
        .block_on(w.checkpoint_source(&store, &key(), None))
        .expect("checkpoint")
        .expect("rows");
    assert_eq!((r.first_offset, r.end_offset), (0, 5));
    assert!(!w.reached_forced_end(&key(), 5));
    w.append_outputs(out, src, 0).expect("after the checkpoint");
    // an explicit end below what was appended is refused
    let err = rt
        .block_on(w.checkpoint_source(&store, &key(), Some(5)))
        .expect_err("too small");
    assert!(
        matches!(err, ArchiveError::ForcedEndTooSmall { .. }),
        "{err}"
    );
}

#[test]
fn rotation_triggers() {
    let g = small_workload(13);
    let stream = kafka_stream(&g);
    let mut w = ArchiveWriter::new(
        RollingPolicy {
            max_rows: 25,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(60),
        },
        RetryPolicy::default(),
    );
    let start = Instant::now();
    assert!(!w.should_rotate(start));
    w.append_outputs(&stream[0].1, &stream[0].0, 0)
        .expect("append");
    assert!(!w.should_rotate(Instant::now()));
    // by age: a quiet source is due once its oldest row is max_age old
    assert!(w.should_rotate(Instant::now() + Duration::from_secs(61)));
    // by rows: deterministic, at a record boundary
    let mut i = 1;
    while !w.is_full(&key()) {
        w.append_outputs(&stream[i].1, &stream[i].0, 0)
            .expect("append");
        i += 1;
    }
    assert!(w.should_rotate(Instant::now()));
    assert_eq!(w.due(Instant::now()), vec![key()]);
    assert!(w.buffered_rows() >= 25);
}

#[test]
fn archive_config_section_parses() {
    let cfg = config_with(
        "[archive]\nuri = \"s3://bucket/prefix\"\n[archive.rolling]\nmax_age = \"5m\"\n[archive.s3]\nendpoint_url = \"http://127.0.0.1:9000\"\nforce_path_style = true\nsse = \"s3\"\n",
    );
    assert_eq!(cfg.archive.uri.as_deref(), Some("s3://bucket/prefix"));
    assert_eq!(cfg.archive.rolling.max_age, Duration::from_secs(300));
    assert_eq!(cfg.archive.s3.force_path_style, Some(true));
    assert_eq!(
        Config::from_toml(EMBEDDED_DEFAULT, "d")
            .expect("default")
            .archive,
        ArchiveConfig::default()
    );
    let e = Config::from_toml(
        &format!("{EMBEDDED_DEFAULT}\n[archive.rolling]\nmax_rowz = 1\n"),
        "t",
    )
    .expect_err("unknown key");
    assert!(e.to_string().contains("max_rowz"), "{e}");
}

// ------------------------------------------------------------------ retries

#[test]
fn s3_puts_are_retried_while_the_store_is_down() {
    let server = support::s3_server::S3Server::start();
    let rt = rt();
    rt.block_on(support::s3_server::create_bucket(&server.endpoint, "retry"));
    // The store talks to moto through a proxy we can take down: moto (and
    // its in-memory bucket) stays up while the endpoint refuses connections.
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], server.port()));
    let mut proxy = support::outage_proxy::OutageProxy::start(upstream);
    let mut cfg = ArchiveConfig::default();
    cfg.s3.endpoint_url = Some(proxy.endpoint());
    cfg.s3.force_path_style = Some(true);
    cfg.s3.region = Some("us-east-1".into());
    cfg.s3.max_attempts = Some(1);
    let store = rt
        .block_on(Store::open("s3://retry/archive", &cfg))
        .expect("open store");
    let quick = RetryPolicy {
        max_attempts: 40,
        initial_backoff_ms: 100,
        max_backoff_ms: 1_000,
    };

    // Not retryable: a missing bucket fails at once.
    let missing = rt
        .block_on(Store::open("s3://no-such-bucket/x", &cfg))
        .expect("open store");
    let t = Instant::now();
    let err = rt
        .block_on(missing.put_with_retry("k.parquet", Bytes::from_static(b"x"), &quick))
        .expect_err("no bucket");
    assert!(!err.is_retryable(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Retryable: the endpoint is down for a while, then back.
    proxy.down();
    let down_since = Instant::now();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        proxy.up();
        proxy
    });
    rt.block_on(store.put_with_retry("t/d=1/f.parquet", Bytes::from_static(b"payload"), &quick))
        .expect("retried until the store came back");
    // It cannot have succeeded while the endpoint was down.
    assert!(down_since.elapsed() >= Duration::from_millis(1_500));
    let _proxy = restarter.join().expect("restarter");
    assert_eq!(
        rt.block_on(store.get("t/d=1/f.parquet")).expect("get"),
        b"payload"
    );
    assert_eq!(
        rt.block_on(store.list("t/")).expect("list"),
        vec!["t/d=1/f.parquet".to_owned()]
    );
}
