//! Archive write throughput: the core's outputs for a realistic generated mix
//! (every channel, multi-event messages, redeliveries, every envelope,
//! inbound traffic, dead letters) appended to an [`ArchiveWriter`], encoded
//! as Parquet (zstd, dictionaries, statistics) and published to a local
//! store (temporary file, fsync, rename), one checkpoint at the end.
//!
//! Reports rows/s (`archive/rows`) and MB/s of Parquet written
//! (`archive/parquet_bytes`), and prints the bytes per row on disk once.
//!
//! `cargo bench --bench archive -- --warm-up-time 1 --measurement-time 5`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use smsvoice::archive::config::{RetryPolicy, RollingPolicy};
use smsvoice::archive::store::{LocalStore, Store};
use smsvoice::archive::writer::{ArchiveWriter, WriterStats};
use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::decode::RecordSource;
use smsvoice::enrich::Outputs;
use smsvoice::generate::{generate, Workload};

/// The core's outputs per record, as partition 0 of a topic.
fn outputs(messages: usize) -> Vec<(RecordSource, Outputs)> {
    let cfg = match Config::from_toml(EMBEDDED_DEFAULT, "embedded") {
        Ok(c) => c,
        Err(e) => panic!("embedded config: {e}"),
    };
    let generated = generate(&Workload {
        messages,
        ..Workload::default()
    });
    let mut core = Core::new(&cfg);
    let source: Arc<str> = Arc::from("sms-events");
    generated
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let src = RecordSource {
                source: source.clone(),
                partition: Some(0),
                offset: i as i64,
                // Arrival after every payload time of the generated stream
                // (2025-12-15): an arrival before a payload's own times
                // would make it a dead letter (times are bounded by arrival).
                timestamp_ms: Some(1_765_756_800_000 + i as i64 * 100),
            };
            let mut out = Outputs::default();
            core.process(r, &src, &mut out);
            (src, out)
        })
        .collect()
}

fn write_all(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    records: &[(RecordSource, Outputs)],
) -> WriterStats {
    let mut w = ArchiveWriter::new(RollingPolicy::default(), RetryPolicy::default());
    for (src, out) in records {
        if let Err(e) = w.append_outputs(out, src, 0) {
            panic!("append: {e}");
        }
    }
    if let Err(e) = rt.block_on(w.checkpoint(store)) {
        panic!("checkpoint: {e}");
    }
    w.stats()
}

/// Removes a run's directory when dropped (outside the timed section).
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let records = outputs(20_000);
    let json_bytes: usize = records
        .iter()
        .map(|(_, o)| {
            o.events.iter().map(|e| e.json.len() + 1).sum::<usize>()
                + o.inbound.iter().map(|m| m.json.len() + 1).sum::<usize>()
        })
        .sum();
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => panic!("tempdir: {e}"),
    };
    let once = write_all(
        &rt,
        &Store::Local(LocalStore::new(tmp.path().join("once"))),
        &records,
    );
    let accepted: u64 = records
        .iter()
        .map(|(_, o)| (o.events.len() + o.inbound.len()) as u64)
        .sum();
    eprintln!(
        "archive: {} rows in {} files, {} bytes of Parquet = {:.1} bytes/row \
         (enriched JSON lines: {:.1} bytes/accepted row)",
        once.rows,
        once.files,
        once.bytes,
        once.bytes as f64 / once.rows as f64,
        json_bytes as f64 / accepted as f64,
    );
    let mut run = 0u64;
    let mut g = c.benchmark_group("archive");
    g.sample_size(10);
    for (name, throughput) in [
        ("rows", Throughput::Elements(once.rows)),
        ("parquet_bytes", Throughput::Bytes(once.bytes)),
    ] {
        g.throughput(throughput);
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    run += 1;
                    let dir = tmp.path().join(format!("run-{run}"));
                    (Store::Local(LocalStore::new(&dir)), Cleanup(dir))
                },
                |(store, cleanup)| (write_all(&rt, &store, &records), cleanup),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
