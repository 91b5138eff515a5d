//! DuckDB for the archive tests: runs SQL through the Python package
//! `duckdb` (install it with `scripts/install-test-tools.sh`) and returns
//! rows as JSON objects (see `duckdb_query.py` for the value mapping).
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

/// A result row.
pub type Row = Map<String, Value>;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/duckdb_query.py");

/// Panics with the install hint when `import duckdb` fails.
pub fn require_duckdb() {
    let ok = Command::new("python3")
        .args(["-c", "import duckdb"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the Python package duckdb is not installed (python3 -c 'import duckdb' failed); \
         run scripts/install-test-tools.sh"
    );
}

/// Runs the `setup` scripts, then each query; returns each query's rows.
pub fn query(setup: &[String], queries: &[String]) -> Vec<Vec<Row>> {
    require_duckdb();
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let input = json!({"setup": setup, "queries": queries}).to_string();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "duckdb query failed:\n{}\nqueries: {queries:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from duckdb_query.py");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|rows| {
            rows.as_array()
                .expect("rows")
                .iter()
                .map(|r| r.as_object().expect("row object").clone())
                .collect()
        })
        .collect()
}

/// The shipped DuckDB table views (`schemas/sql/duckdb/tables.sql`) with the
/// archive root substituted, followed by the shipped query views.
pub fn archive_setup(root: &Path) -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/sql/duckdb");
    let tables = std::fs::read_to_string(format!("{dir}/tables.sql")).expect("tables.sql");
    let views = std::fs::read_to_string(format!("{dir}/views.sql")).expect("views.sql");
    let root = root.display().to_string().replace('\'', "''");
    vec![tables.replace("{{ARCHIVE_ROOT}}", &root), views]
}
