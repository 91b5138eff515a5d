//! `smsvoice process` on a realistic generated file: delivery events,
//! inbound messages and dead letters per CPU-second (user + sys of the
//! process, from `/usr/bin/time -v`).
//!
//! `cargo bench --bench process` (`PROCESS_MESSAGES=N`, default 100000
//! messages, about 2.9 payloads each; `PROCESS_RUNS=N`, default 3).
//!
//! The file is the generator's realistic stream (`Workload::default()`:
//! SMS/MMS/voice/RCS, multi-event messages, duplicates, inbound
//! STOP/HELP/START, malformed records, every envelope: SNS, EventBridge,
//! Firehose, concatenated), one record a line. Each run is measured twice:
//! `--no-archive` (the core and the JSON outputs) and with the Parquet
//! archive (the default). The output counts are checked against the
//! generator's truth. Prints `RESULT` lines for `scripts/bench.sh`.
//!
//! `PROCESS_BASELINE=/path/to/other/smsvoice` also runs that binary on the
//! same file, alternating with this one, and prints the ratio of the two
//! (the machine is shared and noisy: a ratio from the same run is the
//! figure to compare versions with).

use std::path::Path;
use std::process::Command;

use smsvoice::generate::{generate, Workload};

/// Target of issue 12: payloads per CPU-second, without the archive.
const TARGET: f64 = 250_000.0;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (user + sys seconds, elapsed seconds, max RSS KiB) of one run.
fn timed(bin: &str, dir: &Path, archive: bool) -> (f64, f64, u64) {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v")
        .arg(bin)
        .args(["process", "--input", "input.jsonl", "--out", "out"]);
    if !archive {
        cmd.arg("--no-archive");
    }
    let o = match cmd.current_dir(dir).output() {
        Ok(o) => o,
        Err(e) => panic!("run /usr/bin/time smsvoice process: {e}"),
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "smsvoice process failed: {err}");
    let field = |name: &str| -> f64 {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let elapsed = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss):")
        })
        .map_or(0.0, |v| {
            v.trim()
                .split(':')
                .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap_or(0.0))
        });
    let cpu = field("User time (seconds):") + field("System time (seconds):");
    let rss = field("Maximum resident set size (kbytes):") as u64;
    (cpu, elapsed, rss)
}

fn lines(dir: &Path, name: &str) -> usize {
    std::fs::read(dir.join("out").join(name))
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let messages = env_or("PROCESS_MESSAGES", 100_000);
    let runs = env_or("PROCESS_RUNS", 3).max(1);
    let g = generate(&Workload {
        messages,
        ..Workload::default()
    });
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-process");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut file = Vec::new();
    for r in &g.records {
        file.extend_from_slice(r);
        file.push(b'\n');
    }
    std::fs::write(dir.join("input.jsonl"), &file).expect("write input");
    let payloads = g.truth.events + g.truth.inbound + g.truth.malformed;
    println!(
        "input: {} records, {} bytes, {} payloads ({} delivery events, {} inbound, {} malformed)",
        g.records.len(),
        file.len(),
        payloads,
        g.truth.events,
        g.truth.inbound,
        g.truth.malformed
    );
    let baseline = std::env::var("PROCESS_BASELINE").ok();
    let mut results = Vec::new();
    for archive in [false, true] {
        let mut rates = Vec::new();
        let mut base_cpu = Vec::new();
        let mut this_cpu = Vec::new();
        for _ in 0..runs {
            if let Some(base) = &baseline {
                let (cpu, _, _) = timed(base, &dir, archive);
                assert_eq!(lines(&dir, "enriched-events.jsonl"), g.truth.events);
                base_cpu.push(cpu);
            }
            let (cpu, elapsed, rss) = timed(env!("CARGO_BIN_EXE_smsvoice"), &dir, archive);
            this_cpu.push(cpu);
            assert_eq!(lines(&dir, "enriched-events.jsonl"), g.truth.events);
            assert_eq!(lines(&dir, "enriched-inbound.jsonl"), g.truth.inbound);
            assert_eq!(lines(&dir, "dead-letters.jsonl"), g.truth.malformed);
            let rate = payloads as f64 / cpu.max(1e-9);
            println!(
                "process {}: {cpu:.2} CPU-s, {elapsed:.2} s wall, max RSS {rss} KiB: {rate:.0} payloads per CPU-second ({:.0} delivery events per CPU-second)",
                if archive { "with archive" } else { "--no-archive" },
                g.truth.events as f64 / cpu.max(1e-9)
            );
            rates.push(rate);
        }
        if !base_cpu.is_empty() {
            let sum = |v: &[f64]| v.iter().sum::<f64>();
            println!(
                "baseline {}: {:.0} payloads per CPU-second over the same runs; this binary / baseline = {:.2}x",
                if archive { "with archive" } else { "--no-archive" },
                payloads as f64 * base_cpu.len() as f64 / sum(&base_cpu),
                sum(&base_cpu) / sum(&this_cpu)
            );
        }
        rates.sort_by(f64::total_cmp);
        results.push((archive, rates));
    }
    for (archive, rates) in results {
        let best = rates[rates.len() - 1];
        let (figure, target, status) = if archive {
            (
                "process with archive, payloads per CPU-second (best of runs)",
                "-".to_owned(),
                "-",
            )
        } else {
            (
                "process --no-archive, payloads per CPU-second (best of runs)",
                format!(">= {TARGET:.0}"),
                if best >= TARGET { "met" } else { "missed" },
            )
        };
        println!(
            "range over {} runs: {:.0}..{:.0}",
            rates.len(),
            rates[0],
            best
        );
        println!("RESULT\t{figure}\t{best:.0}\tpayloads/CPU-s\t{target}\t{status}");
    }
}
