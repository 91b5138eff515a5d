//! Core throughput: decode + classify + opt-out/spend/alarm state + enrichment
//! (the enriched JSON included) over a realistic generated mix.
//!
//! `cargo bench --bench core`
//!
//! `CORE_BENCH_ITERS=N cargo bench --bench core` skips criterion and runs
//! each stream N times, printing payloads/s, next to an anchor (serde_json
//! skipping the same bytes, `IgnoredAny`) measured in the same run, so the
//! figure can be read as a ratio on a loaded machine. Under
//! `perf stat -e instructions:u` the instruction count per payload is a
//! load-independent figure.

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use std::sync::Arc;

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::decode::RecordSource;
use smsvoice::enrich::Outputs;
use smsvoice::generate::{generate, Workload};

/// The allocator of the `smsvoice` binary (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run(cfg: &Config, records: &[Vec<u8>]) -> u64 {
    let mut core = Core::new(cfg);
    let mut out = Outputs::default();
    let source: Arc<str> = Arc::from("bench");
    for (i, r) in records.iter().enumerate() {
        let src = RecordSource {
            source: source.clone(),
            partition: Some(0),
            offset: i as i64,
            timestamp_ms: None,
        };
        core.process(r, &src, &mut out);
        out.clear();
    }
    let c = core.counters();
    c.events + c.inbound + c.dead_letters
}

/// The anchor: serde_json skipping every record (no decoding, no state).
fn anchor(records: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for r in records {
        let stream = serde_json::Deserializer::from_slice(r).into_iter::<serde::de::IgnoredAny>();
        n += stream.filter(Result::is_ok).count();
    }
    n
}

/// Target of issue 12 for the raw stream: payloads per second on one core.
const TARGET: f64 = 1_000_000.0;

fn fixed_iterations(cfg: &Config, iters: u32) {
    for (name, envelopes) in [("raw", false), ("mixed_envelopes", true)] {
        let generated = generate(&Workload {
            messages: 20_000,
            envelopes,
            ..Workload::default()
        });
        let payloads = run(cfg, &generated.records);
        let t = std::time::Instant::now();
        for _ in 0..iters {
            std::hint::black_box(run(cfg, &generated.records));
        }
        let core_s = t.elapsed().as_secs_f64() / f64::from(iters);
        let t = std::time::Instant::now();
        for _ in 0..iters {
            std::hint::black_box(anchor(&generated.records));
        }
        let anchor_s = t.elapsed().as_secs_f64() / f64::from(iters);
        let bytes: usize = generated.records.iter().map(Vec::len).sum();
        let rate = payloads as f64 / core_s;
        let (target, status) = if name == "raw" {
            (
                format!(">= {TARGET:.0}"),
                if rate >= TARGET { "met" } else { "missed" },
            )
        } else {
            ("-".to_owned(), "-")
        };
        println!(
            "RESULT\tcore {name}: decode + state + enriched JSON, payloads/s on one core\t{rate:.0}\tpayloads/s\t{target}\t{status}"
        );
        println!(
            "core/{name}: {payloads} payloads, {:.0} payloads/s ({:.0} ns/payload); anchor (serde_json IgnoredAny over the same {bytes} bytes) {:.0} MB/s; core / anchor time = {:.2}",
            payloads as f64 / core_s,
            core_s * 1e9 / payloads as f64,
            bytes as f64 / anchor_s / 1e6,
            core_s / anchor_s
        );
    }
}

fn bench(c: &mut Criterion) {
    let cfg = match Config::from_toml(EMBEDDED_DEFAULT, "embedded") {
        Ok(c) => c,
        Err(e) => panic!("embedded config: {e}"),
    };
    let mut g = c.benchmark_group("core");
    g.sample_size(10);
    for (name, envelopes) in [("raw", false), ("mixed_envelopes", true)] {
        let generated = generate(&Workload {
            messages: 20_000,
            envelopes,
            ..Workload::default()
        });
        let payloads = run(&cfg, &generated.records);
        g.throughput(Throughput::Elements(payloads));
        g.bench_function(name, |b| {
            b.iter_batched(
                || (),
                |_| run(&cfg, &generated.records),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Some(iters) = std::env::var("CORE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        let cfg = match Config::from_toml(EMBEDDED_DEFAULT, "embedded") {
            Ok(c) => c,
            Err(e) => panic!("embedded config: {e}"),
        };
        fixed_iterations(&cfg, iters);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    // The RESULT lines for scripts/bench.sh (criterion's figures are above).
    if !std::env::args().any(|a| a == "--list" || a == "--profile-time") {
        let cfg = match Config::from_toml(EMBEDDED_DEFAULT, "embedded") {
            Ok(c) => c,
            Err(e) => panic!("embedded config: {e}"),
        };
        fixed_iterations(&cfg, 10);
    }
}
