//! The README's commands, run as a reader types them.
//!
//! * The Quick start block is parsed out of README.md (not copied here), so
//!   this test follows the README. Its first command, `cargo run --release
//!   -- demo`, runs literally through `sh -c` in the repository root with the
//!   default paths: it must exit 0, report every comparison with the
//!   generator's ground truth passed, log no warning, and leave a DuckDB
//!   archive in `demo-out/archive` with the delivery events it reported. The
//!   second command (`bash scripts/test.sh`) runs this test suite: it is only
//!   checked to be there, never run.
//! * The README's file-mode command (`cargo run --release -- process --out
//!   out/`) runs literally too; every `.jsonl` output must hold one JSON
//!   object a line. A pretty-printed copy of the samples gives the same
//!   records, still one a line.
//! * A demo whose rules disagree with the ground truth exits non-zero and
//!   names the comparison that failed.
//!
//! `cargo run --release` builds the release profile when it is stale (the
//! first time costs minutes); it inherits this process's environment, so a
//! `CARGO_TARGET_DIR` set for `cargo test` is used by it too.

#[path = "support/duckdb.rs"]
mod duckdb;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

/// The commands here share the repository root (`demo-out/`, `out/`) and
/// the machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}

/// The lines of the first fenced code block after the first line that
/// starts with `marker`.
fn code_block_after(text: &str, marker: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(marker));
    assert!(
        lines.next().is_some(),
        "README.md has no line starting {marker:?}"
    );
    let mut lines = lines.skip_while(|l| !l.trim_start().starts_with("```"));
    assert!(lines.next().is_some(), "no code block after {marker:?}");
    lines
        .take_while(|l| !l.trim_start().starts_with("```"))
        .map(str::to_owned)
        .collect()
}

/// The commands of a code block: its lines that are not blank or comments.
fn commands(block: &[String]) -> Vec<String> {
    block
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn quick_start() -> Vec<String> {
    commands(&code_block_after(&readme(), "## Quick start"))
}

/// A command line exactly as written in the README, run by `sh` in the
/// repository root. `RUST_LOG` is removed so that the binary's default log
/// filter applies, as in a fresh shell.
fn sh_in_root(line: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh -c {line:?}: {e}"))
}

fn describe(line: &str, out: &Output) -> String {
    format!(
        "{line}\nstatus {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Log lines at WARN or ERROR (the tracing format: `<time>  WARN target: ...`).
fn log_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

/// Removes `dir` when dropped (also when the test fails).
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fresh(dir: PathBuf) -> RemoveOnDrop {
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!dir.exists(), "cannot remove {}", dir.display());
    RemoveOnDrop(dir)
}

fn gitignore_lists(entry: &str) -> bool {
    std::fs::read_to_string(root().join(".gitignore"))
        .expect(".gitignore")
        .lines()
        .any(|l| l.trim() == entry)
}

/// The count printed on the demo's archive line
/// (`  57107 delivery events, 364 inbound messages, ...`).
fn printed_archive_events(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Archive: "))
        .nth(1)
        .unwrap_or_else(|| panic!("no archive line in\n{stdout}"));
    line.trim()
        .split_once(" delivery events")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no delivery event count in {line:?}"))
}

#[test]
fn quick_start_has_the_demo_then_the_test_script() {
    let cmds = quick_start();
    assert_eq!(cmds.len(), 2, "{cmds:#?}");
    assert_eq!(cmds[0], "cargo run --release -- demo");
    // The second command runs every test, this one included: never run here.
    assert_eq!(cmds[1], "bash scripts/test.sh");
    assert!(root().join("scripts/test.sh").is_file());
}

#[test]
fn readme_demo_command_as_typed() {
    let _serial = serial();
    let cmds = quick_start();
    let demo = cmds
        .iter()
        .find(|c| c.contains(" demo"))
        .unwrap_or_else(|| panic!("no demo command in the Quick start: {cmds:#?}"));
    assert!(
        gitignore_lists("/demo-out"),
        ".gitignore must list /demo-out"
    );
    let out_dir = fresh(root().join("demo-out"));

    let out = sh_in_root(demo);
    let what = describe(demo, &out);
    assert!(out.status.success(), "{what}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("comparisons with the generator's ground truth passed"),
        "{what}"
    );
    assert!(
        !stdout.contains("FAILED") && !stdout.contains(": NO"),
        "{what}"
    );
    assert!(log_warnings(&stderr).is_empty(), "warnings logged:\n{what}");

    // The archive is DuckDB-queryable and holds the events the demo counted.
    let archive = out_dir.0.join("archive");
    assert!(archive.join("delivery_events").is_dir(), "{what}");
    let printed = printed_archive_events(&stdout);
    assert!(printed > 0, "{what}");
    let rows = duckdb::query(
        &duckdb::archive_setup(&archive),
        &["select count(*) as n from delivery_events".to_owned()],
    );
    assert_eq!(rows[0][0]["n"], Value::from(printed), "{what}");

    // The query the demo suggests works as printed, from the same directory.
    let try_line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("try: "))
        .unwrap_or_else(|| panic!("no `try:` query in\n{stdout}"));
    let q = sh_in_root(try_line);
    assert!(q.status.success(), "{}", describe(try_line, &q));
    assert!(
        String::from_utf8_lossy(&q.stdout).contains("SMS"),
        "{}",
        describe(try_line, &q)
    );
}

/// Every line of every `.jsonl` file in `dir` is one JSON object; returns
/// the objects per file name.
fn jsonl_objects(dir: &Path) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut all = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("output directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("utf-8 output");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{name} does not end with a newline"
        );
        let objects: Vec<Value> = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("{name} line {}: not one JSON value ({e}): {line:?}", i + 1)
                });
                assert!(
                    v.is_object(),
                    "{name} line {}: not an object: {line}",
                    i + 1
                );
                v
            })
            .collect();
        all.insert(name, objects);
    }
    for f in [
        "enriched-events.jsonl",
        "enriched-inbound.jsonl",
        "alarms.jsonl",
        "replies.jsonl",
        "dead-letters.jsonl",
    ] {
        assert!(all.contains_key(f), "{f} missing in {}", dir.display());
    }
    all
}

#[test]
fn readme_process_command_as_typed() {
    let _serial = serial();
    let line = code_block_after(&readme(), "On files, without Kafka")
        .into_iter()
        .find(|l| l.contains(" process "))
        .expect("the README's file-mode command");
    assert!(
        line.starts_with("cargo run --release -- process --out out/"),
        "{line}"
    );
    assert!(gitignore_lists("/out"), ".gitignore must list /out");
    let out_dir = fresh(root().join("out"));

    let out = sh_in_root(&line);
    let what = describe(&line, &out);
    assert!(out.status.success(), "{what}");
    assert!(
        log_warnings(&String::from_utf8_lossy(&out.stderr)).is_empty(),
        "{what}"
    );
    let objects = jsonl_objects(&out_dir.0);
    assert!(!objects["enriched-events.jsonl"].is_empty(), "{what}");
    assert!(!objects["enriched-inbound.jsonl"].is_empty(), "{what}");
    assert!(out_dir.0.join("archive/delivery_events").is_dir(), "{what}");
}

/// A string field with an escaped line break, quotes and non-ASCII text, in
/// a nested object: kept as it is, on one line.
const PRETTY_EXTRA: &str = r#"{
  "eventType" : "TEXT_DELIVERED",
  "eventVersion" : "1.0",
  "eventTimestamp" : 1761800000000,
  "messageId" : "pretty-1",
  "originationPhoneNumber" : "+12065550152",
  "destinationPhoneNumber" : "+14255550156",
  "messageStatus" : "DELIVERED",
  "context" : {
    "note" : "line 1\nline 2 \"quoted\"\t tab",
    "city" : "Zürich ☃ 😀",
    "nested" : "{ \"a\" : 1 }"
  },
  "totalMessagePrice" : 0.00581,
  "totalCarrierFee" : 0.00302
}
"#;

fn without_record_id(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("recordId");
        o.remove("source");
    }
    v
}

/// `process` on pretty-printed copies of the samples (run from another
/// directory, with relative paths) writes the same records as on the
/// samples themselves, one a line.
#[test]
fn pretty_printed_input_gives_one_object_per_line() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pretty_dir = tmp.path().join("pretty");
    let plain_dir = tmp.path().join("plain");
    std::fs::create_dir_all(&pretty_dir).expect("mkdir");
    std::fs::create_dir_all(&plain_dir).expect("mkdir");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root().join("samples")).expect("samples") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("sample");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .expect("file name");
        let mut pretty = String::new();
        for v in serde_json::Deserializer::from_slice(&bytes).into_iter::<Value>() {
            let v = v.expect("sample JSON");
            pretty.push_str(&serde_json::to_string_pretty(&v).expect("pretty"));
            pretty.push('\n');
        }
        assert!(
            pretty.lines().count() > 2,
            "{name} is not spread over lines"
        );
        std::fs::write(pretty_dir.join(&name), pretty).expect("write");
        std::fs::write(plain_dir.join(&name), bytes).expect("write");
        names.push(name);
    }
    let extra: Value = serde_json::from_str(PRETTY_EXTRA).expect("extra JSON");
    std::fs::write(pretty_dir.join("zz-extra.json"), PRETTY_EXTRA).expect("write");
    std::fs::write(plain_dir.join("zz-extra.json"), extra.to_string()).expect("write");
    // And a rejected one: its dead letter holds the pretty text, escaped.
    let bad = "{\n  \"eventType\" : \"FAX_DELIVERED\",\n  \"messageId\" : \"bad\"\n}\n";
    std::fs::write(pretty_dir.join("zz-rejected.json"), bad).expect("write");
    std::fs::write(plain_dir.join("zz-rejected.json"), bad).expect("write");

    let run = |input: &str, out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
            .args(["process", "--input", input, "--out", out])
            .current_dir(tmp.path())
            .env_remove("RUST_LOG")
            .output()
            .expect("run smsvoice process");
        assert!(o.status.success(), "{}", describe(input, &o));
        jsonl_objects(&tmp.path().join(out))
    };
    let pretty = run("pretty", "out-pretty");
    let plain = run("plain", "out-plain");
    assert!(tmp
        .path()
        .join("out-pretty/archive/delivery_events")
        .is_dir());

    for (file, objects) in &plain {
        let got = &pretty[file];
        assert_eq!(got.len(), objects.len(), "{file}: record count");
        if file == "dead-letters.jsonl" {
            continue; // their payload is the original text, whitespace included
        }
        for (a, b) in got.iter().zip(objects) {
            assert_eq!(
                without_record_id(a.clone()),
                without_record_id(b.clone()),
                "{file}"
            );
        }
    }
    // The extra object's fields, escaped line break and all, are kept.
    let enriched = pretty["enriched-events.jsonl"]
        .iter()
        .find(|e| e["messageId"] == "pretty-1")
        .expect("the extra event");
    for (k, v) in extra.as_object().expect("object") {
        assert_eq!(&enriched[k], v, "field {k}");
    }
    assert_eq!(
        enriched["context"]["note"],
        "line 1\nline 2 \"quoted\"\t tab"
    );
    let dead = &pretty["dead-letters.jsonl"];
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["payload"], bad.trim_end(), "{dead:?}");
}

/// A demo whose pricing differs from the ground truth's fails. The
/// generator's truth prices every message as the embedded default does
/// (`include_carrier_fee = true`, and its SMS and MMS events carry a carrier
/// fee); the same rules with `include_carrier_fee = false` make the pipeline
/// count less than the truth, a real disagreement, not a simulated one. The
/// demo must exit non-zero and name the spend comparison. Run from another
/// directory with a relative `--out` (the relative archive root).
#[test]
fn demo_that_disagrees_with_the_truth_fails() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let default = std::fs::read_to_string(root().join("config/default.toml")).expect("default");
    assert!(default.contains("include_carrier_fee = true"));
    let cfg = default.replace("include_carrier_fee = true", "include_carrier_fee = false");
    std::fs::write(tmp.path().join("no-fee.toml"), cfg).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args([
            "demo",
            "--messages",
            "1500",
            "--config",
            "no-fee.toml",
            "--out",
            "demo-rel",
        ])
        .current_dir(tmp.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run smsvoice demo");
    let what = describe("smsvoice demo --config no-fee.toml", &out);
    assert!(!out.status.success(), "{what}");
    assert_eq!(out.status.code(), Some(1), "{what}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("FAILED: "), "{what}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAILED: ") && l.contains("spend")),
        "{what}"
    );
    assert!(
        stderr.contains("differs from the generator's ground truth: spend"),
        "{what}"
    );
    // What does not depend on pricing still matches.
    assert!(stdout.contains("Opt-outs") && stdout.contains("equal to the ground truth: yes"));
    assert!(
        tmp.path().join("demo-rel/archive/delivery_events").is_dir(),
        "{what}"
    );
}
