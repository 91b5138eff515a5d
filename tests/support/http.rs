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

/// A `smsvoice run` child process serving HTTP on a loopback port of its
/// choosing, its log in `<dir>/<name>.log`; killed when dropped.
pub struct Instance {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
    /// `http://<addr>` it listens on.
    pub base: String,
}

impl Instance {
    /// Starts `smsvoice run --config <config>` as instance `name` (its
    /// `SMSVOICE_INSTANCE_ID`) with `env` added, and waits (90 s at most)
    /// for its listening line; panics if it exits first.
    pub fn start(
        config: &std::path::Path,
        name: &str,
        dir: &std::path::Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Instance {
        use std::time::{Duration, Instant};
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
            .args(["run", "--config"])
            .arg(config)
            .env("SMSVOICE_HTTP__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "smsvoice=info")
            .env("SMSVOICE_INSTANCE_ID", name)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log handle"))
            .stderr(f)
            .spawn()
            .expect("start smsvoice run");
        let mut i = Instance {
            child,
            log,
            base: String::new(),
        };
        let start = Instant::now();
        i.base = loop {
            let text = i.log_text();
            if let Some(base) = http_base(&text) {
                break base;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{name}: no listening line after 90 s\n{text}"
            );
            if let Ok(Some(st)) = i.child.try_wait() {
                panic!("{name}: smsvoice run exited ({st})\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        i
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The body of `GET <path>`.
    pub fn text(&self, path: &str) -> String {
        get_text(&self.base, path, &self.log_text())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
