//! An instance's HTTP server in tests: its address, from the log line it
//! writes when it listens, and its `/metrics` scrape read through a real
//! Prometheus exposition-format parser (the Python `prometheus_client`,
//! installed by `scripts/install-test-tools.sh`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// One sample: (name, labels, value).
pub type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a scrape as the Python `prometheus_client` parser reads
/// them (panics when it refuses the text).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        print(json.dumps([s.name, s.labels, s.value]))
"#;
    let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-test-tools.sh installs prometheus_client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write scrape");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "prometheus_client refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("parser line"))
        .collect()
}

/// `http://<addr>` of the "http server listening addr=..." line in an
/// instance's log text, once it is there.
pub fn http_base(log_text: &str) -> Option<String> {
    log_text
        .lines()
        .filter(|l| l.contains("http server listening"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .map(|a| format!("http://{a}"))
        })
}

/// The body of `GET <base><path>` (panics on an error, with `log` for
/// context).
pub fn get_text(base: &str, path: &str, log: &str) -> String {
    ureq::get(&format!("{base}{path}"))
        .timeout(std::time::Duration::from_secs(30))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{log}"))
        .into_string()
        .expect("body")
}
