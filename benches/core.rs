//! Core throughput: decode + classify + opt-out/spend/alarm state + enrichment
//! (the enriched JSON included) over a realistic generated mix.
//!
//! `cargo bench --bench core`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::core::Core;
use smsvoice::decode::RecordSource;
use smsvoice::enrich::Outputs;
use smsvoice::generate::{generate, Workload};

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
criterion_main!(benches);
