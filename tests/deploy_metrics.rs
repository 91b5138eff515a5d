//! The monitoring files the Helm chart ships, checked against the service:
//!
//! - `helm/smsvoice-pipeline/files/prometheus-rules.yaml` passes `promtool
//!   check rules`, and the unit tests of `deploy/prometheus/tests/*.yaml`
//!   pass `promtool test rules`; every alert of the rule file has a test
//!   where it fires and one where it does not;
//! - every PromQL expression of `helm/smsvoice-pipeline/files/grafana-dashboard.json`
//!   (panel targets, template variable queries; Grafana variables replaced
//!   by values) parses (`promtool check rules` on a rule file made of them),
//!   and the dashboard is importable: a `DS_PROMETHEUS` input and template
//!   variable used by every panel, unique panel ids;
//! - every metric name the rules and the dashboard use is one a real
//!   `smsvoice run` exports: one instance, archive on (a local directory,
//!   files cut every 100 rows), against Apache Kafka on loopback, with a
//!   generated stream that has malformed records (dead letters), scraped
//!   once every histogram has been observed and the archive has written
//!   files; the names of the scrape are its `# TYPE` families that have
//!   samples (the samples read by the Python `prometheus_client` parser).
//!   Names other than the service's own are refused unless listed in
//!   [`ALLOWED_BUILTINS`] (empty: the rules and the dashboard use only the
//!   service's metrics; recording rules `smsvoice:...` must be recorded by
//!   the rule file).
//!
//! promtool is looked up in `${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}/bin`,
//! then in `PATH` (`scripts/install-deploy-tools.sh` installs it); without
//! it these checks print "skipped", unless `CI` or `SMSVOICE_REQUIRE_TOOLS`
//! is set, where they fail. The Kafka test skips like the other Kafka tests
//! (`scripts/install-kafka.sh`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use smsvoice::config::EMBEDDED_DEFAULT;
use smsvoice::generate::{generate, Workload};

use support::http::{parse_metrics, Instance};
use support::kafka::{kafka_or_skip, produce_all, KafkaBroker};

const RULES: &str = "helm/smsvoice-pipeline/files/prometheus-rules.yaml";
const DASHBOARD: &str = "helm/smsvoice-pipeline/files/grafana-dashboard.json";
const RULE_TESTS: &str = "deploy/prometheus/tests";

/// Metric names that are not the service's own and that the rules or the
/// dashboard may use (Prometheus built-ins such as `up`). None: every
/// expression reads the service's own metrics (`absent(smsvoice_ready)`
/// instead of `up`, `smsvoice_process_start_time_seconds` instead of
/// kube-state-metrics restarts).
const ALLOWED_BUILTINS: &[&str] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---------------------------------------------------------------- promtool

/// True when a missing tool must fail the test rather than skip it.
fn tools_required() -> bool {
    ["CI", "SMSVOICE_REQUIRE_TOOLS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

fn tools_bin() -> PathBuf {
    std::env::var_os("SMSVOICE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/smsvoice-tools")
        })
        .join("bin")
}

fn find_promtool() -> Option<PathBuf> {
    let cached = tools_bin().join("promtool");
    if cached.is_file() {
        return Some(cached);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|c| c.is_file())
    })
}

/// promtool, or `None` after printing "skipped" (a failure when tools are
/// required).
fn promtool_or_skip(what: &str) -> Option<PathBuf> {
    let found = find_promtool();
    if found.is_none() {
        let missing = format!(
            "promtool not found in {} or PATH (run `bash scripts/install-deploy-tools.sh`)",
            tools_bin().display()
        );
        assert!(
            !tools_required(),
            "{what}: {missing}; required: CI or SMSVOICE_REQUIRE_TOOLS is set"
        );
        println!("{what}: skipped, {missing}");
    }
    found
}

/// Runs promtool with `args` from the repository root; panics with its
/// output unless it succeeds. Returns stdout and stderr.
fn promtool(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

fn rule_test_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(RULE_TESTS))
        .unwrap_or_else(|e| panic!("read {RULE_TESTS}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("{RULE_TESTS}/{n}"))
        .collect();
    files.sort();
    files
}

#[test]
fn promtool_checks_the_rules() {
    let Some(bin) = promtool_or_skip("promtool check rules") else {
        return;
    };
    let out = promtool(&bin, &["check", "rules", RULES]);
    let n = rules().len();
    assert!(
        out.contains(&format!("SUCCESS: {n} rules found")),
        "{n} rules in {RULES}, promtool says:\n{out}"
    );
}

#[test]
fn promtool_unit_tests_pass_and_cover_every_alert() {
    let files = rule_test_files();
    assert!(files.len() >= 2, "unit tests in {RULE_TESTS}: {files:?}");
    // Each alert fires in some test (exp_alerts with entries) and stays
    // silent in another (exp_alerts: []).
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for f in &files {
        let text = read(f);
        assert!(
            text.contains("../../../helm/smsvoice-pipeline/files/prometheus-rules.yaml"),
            "{f} does not load the rule file by its relative path"
        );
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, l) in lines.iter().enumerate() {
            if let Some(name) = l.strip_prefix("alertname:") {
                let next = lines[i + 1..]
                    .iter()
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .copied()
                    .unwrap_or_default();
                let name = name.trim().to_owned();
                match next {
                    "exp_alerts: []" => silent.insert(name),
                    "exp_alerts:" => firing.insert(name),
                    other => panic!("{f}: alertname {name} followed by {other:?}"),
                };
            }
        }
    }
    let alerts: Vec<String> = rules().into_iter().filter_map(|r| r.alert).collect();
    assert!(alerts.len() >= 8, "alerts {alerts:?}");
    for a in &alerts {
        assert!(firing.contains(a), "no unit test where {a} fires");
        assert!(silent.contains(a), "no unit test where {a} does not fire");
    }
    let Some(bin) = promtool_or_skip("promtool test rules") else {
        return;
    };
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let out = promtool(&bin, &args);
    assert!(!out.contains("FAILED"), "{out}");
}

// ------------------------------------------------------- rule file, dashboard

/// A rule of the rule file: its name (`record:`) or alert name, and its
/// expression.
#[derive(Debug)]
struct Rule {
    record: Option<String>,
    alert: Option<String>,
    expr: String,
}

/// The rules of the rule file, read from its YAML as written there: `-
/// record:` / `- alert:` items whose `expr:` is a plain one-line scalar or
/// a literal block (`|`); any other form fails the test (extend this then).
fn rules() -> Vec<Rule> {
    let text = read(RULES);
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if let Some(n) = t.strip_prefix("- record:") {
            out.push(Rule {
                record: Some(n.trim().to_owned()),
                alert: None,
                expr: String::new(),
            });
        } else if let Some(n) = t.strip_prefix("- alert:") {
            out.push(Rule {
                record: None,
                alert: Some(n.trim().to_owned()),
                expr: String::new(),
            });
        } else if let Some(e) = t.strip_prefix("expr:") {
            let rule = out
                .last_mut()
                .unwrap_or_else(|| panic!("{RULES}:{}: expr outside a rule", i + 1));
            assert!(rule.expr.is_empty(), "{RULES}:{}: two exprs", i + 1);
            let e = e.trim();
            if e == "|" {
                let indent = lines[i].len() - t.len();
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let l = lines[i + 1];
                    let li = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && li <= indent {
                        break;
                    }
                    block.push(l.trim());
                    i += 1;
                }
                rule.expr = block.join("\n").trim().to_owned();
            } else {
                assert!(
                    !e.is_empty() && !e.starts_with(['>', '"', '\'']),
                    "{RULES}:{}: expr form {e:?} not read by this test",
                    i + 1
                );
                rule.expr = e.to_owned();
            }
        }
        i += 1;
    }
    for r in &out {
        assert!(!r.expr.is_empty(), "rule without expr: {r:?}");
    }
    out
}

/// The dashboard's PromQL: every panel target's `expr` (rows' nested panels
/// too) and every query variable's query (`label_values(X, label)` gives
/// X), each with where it is.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .or(v["definition"].as_str())
            .unwrap_or_default();
        let q = match q.strip_prefix("label_values(") {
            Some(rest) => rest
                .rsplit_once(',')
                .map_or(rest, |(metric, _label)| metric)
                .to_owned(),
            None => q.to_owned(),
        };
        out.push((format!("variable {}", v["name"]), q));
    }
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Grafana's variables replaced by values Prometheus accepts.
fn grafana_substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$namespace", ".*")
        .replace("$job", ".*")
        .replace("$month", "2026-12")
}

#[test]
fn the_dashboard_is_importable_and_its_promql_parses() {
    let d = dashboard();
    assert_eq!(d["uid"], "smsvoice-pipeline");
    let schema = d["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        d["__inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input"
    );
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no DS_PROMETHEUS datasource variable"
    );
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"], "${DS_PROMETHEUS}",
            "variable {}",
            v["name"]
        );
    }
    // Every panel, and every target, reads the DS_PROMETHEUS datasource;
    // ids are unique.
    let mut ids = BTreeSet::new();
    let mut targets = 0;
    fn all(panels: &serde_json::Value) -> Vec<serde_json::Value> {
        let mut v = Vec::new();
        for p in panels.as_array().into_iter().flatten() {
            v.push(p.clone());
            v.extend(all(&p["panels"]));
        }
        v
    }
    for p in all(&d["panels"]) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "panel {id} has no gridPos"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {}",
                p["title"]
            );
            targets += 1;
        }
    }
    assert!(targets >= 30, "{targets} targets");
    let exprs = dashboard_exprs(&d);
    let Some(bin) = promtool_or_skip("promtool check of the dashboard's PromQL") else {
        return;
    };
    // A rule file of one recording rule per expression: promtool parses
    // each (JSON is YAML; expressions kept verbatim as JSON strings).
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({"record": format!("dashboard:expr_{i}"), "expr": grafana_substituted(e)}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&path, file.to_string()).expect("write");
    let out = promtool(&bin, &["check", "rules", &path.display().to_string()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

// ------------------------------------------------------------- metric names

/// The index after the string literal opening at `c[j]` (a quote), escapes
/// skipped.
fn end_of_quoted(c: &[char], j: usize) -> usize {
    let q = c[j];
    let mut k = j + 1;
    while k < c.len() && c[k] != q {
        if c[k] == '\\' {
            k += 1;
        }
        k += 1;
    }
    k + 1
}
/// The metric names a PromQL expression reads: identifiers that are not
/// functions or aggregations (followed by `(`), keywords, label names
/// (inside `{...}`, `by (...)`, `on (...)`, ...), durations, numbers, or
/// strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    // Keywords followed by a label list.
    const LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // Skips a balanced `open ... close` starting at `j` (c[j] == open).
    let skip_group = |j: usize, open: char, close: char| {
        let mut depth = 0;
        let mut k = j;
        while k < c.len() {
            if c[k] == open {
                depth += 1;
            } else if c[k] == close {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            } else if c[k] == '"' || c[k] == '\'' || c[k] == '`' {
                k = end_of_quoted(&c, k) - 1;
            }
            k += 1;
        }
        c.len()
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = end_of_quoted(&c, i);
        } else if ch == '{' {
            i = skip_group(i, '{', '}');
        } else if ch == '[' {
            i = skip_group(i, '[', ']');
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
        } else if ch == '$' {
            i += 1;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            // `sum by (a) (...)`: an aggregation whose grouping comes first.
            let word_after: String = c[next..]
                .iter()
                .take_while(|ch| ch.is_ascii_alphanumeric() || **ch == '_')
                .collect::<String>()
                .to_ascii_lowercase();
            let grouping_first = (word_after == "by" || word_after == "without")
                && c.get(skip_ws(next + word_after.len())) == Some(&'(');
            if LISTS.contains(&lower.as_str()) && c.get(next) == Some(&'(') {
                i = skip_group(next, '(', ')');
            } else if c.get(next) == Some(&'(')
                || grouping_first
                || KEYWORDS.contains(&lower.as_str())
                || LISTS.contains(&lower.as_str())
            {
                // a function or aggregation, or a keyword
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every `smsvoice_...` token of a text (names inside annotation templates
/// and strings too), not part of a longer identifier.
fn smsvoice_tokens(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut from = 0;
    while let Some(p) = text[from..].find("smsvoice_") {
        let s = from + p;
        let mut e = s + "smsvoice_".len();
        while e < b.len() && (b[e].is_ascii_lowercase() || b[e].is_ascii_digit() || b[e] == b'_') {
            e += 1;
        }
        if (s == 0 || !ident(b[s - 1])) && (e >= b.len() || !ident(b[e])) {
            out.insert(text[s..e].to_owned());
        } else if s == 0 || !ident(b[s - 1]) {
            // e.g. `smsvoice_x:y` or `smsvoice_X`: not a name the service
            // could export; reported as is.
            let mut e2 = e;
            while e2 < b.len() && ident(b[e2]) {
                e2 += 1;
            }
            out.insert(text[s..e2].to_owned());
        }
        from = e;
    }
    out
}

/// The families of a scrape: name -> type, from its `# TYPE` lines, kept
/// only if `sample_names` (the samples' names) has one of the family.
fn families(scrape: &str, sample_names: &BTreeSet<String>) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .filter(|(name, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "counter" => &["", "_total"],
                _ => &[""],
            };
            suffixes
                .iter()
                .any(|s| sample_names.contains(&format!("{name}{s}")))
        })
        .collect()
}

/// The names of `used` that `exported` does not have (a histogram's
/// `_bucket`, `_sum`, `_count` series belong to its family), other than
/// [`ALLOWED_BUILTINS`] and the recording rules of `recorded`.
fn not_exported(
    used: &BTreeSet<String>,
    exported: &BTreeMap<String, String>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    used.iter()
        .filter(|n| {
            if exported.contains_key(n.as_str())
                || recorded.contains(n.as_str())
                || ALLOWED_BUILTINS.contains(&n.as_str())
            {
                return false;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s));
            !family.is_some_and(|f| {
                exported
                    .get(f)
                    .is_some_and(|k| k == "histogram" || k == "summary")
            })
        })
        .cloned()
        .collect()
}

/// Every name the rules and the dashboard read, with where.
fn used_names() -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let rules = rules();
    let recorded: BTreeSet<String> = rules.iter().filter_map(|r| r.record.clone()).collect();
    for r in &rules {
        let at = r
            .record
            .clone()
            .or_else(|| r.alert.clone())
            .unwrap_or_default();
        for n in metric_names(&r.expr) {
            used.entry(n).or_default().insert(format!("rule {at}"));
        }
    }
    // The whole rule file: names in annotation templates and comments too.
    for n in smsvoice_tokens(&read(RULES)) {
        used.entry(n).or_default().insert(RULES.to_owned());
    }
    for (at, e) in dashboard_exprs(&dashboard()) {
        for n in metric_names(&e).into_iter().chain(smsvoice_tokens(&e)) {
            used.entry(n).or_default().insert(format!("dashboard {at}"));
        }
    }
    // The dashboard reads the service's metrics only, not the rules'.
    for (n, at) in &used {
        assert!(
            !(n.starts_with("smsvoice:") && at.iter().any(|a| a.starts_with("dashboard"))),
            "the dashboard reads recording rule {n} ({at:?}): it must work without the rules"
        );
    }
    (used, recorded)
}

#[test]
fn the_name_check_finds_names_and_reports_wrong_ones() {
    assert_eq!(
        metric_names(
            r#"sum by (namespace, job) (rate(smsvoice_dead_letters_total{stage="router", x=~"a{b"}[$__rate_interval]))
               / on (job) group_left () max without (instance) (smsvoice_ready offset 5m) > bool 0.5
               and up unless histogram_quantile(0.9, sum by (le) (rate(smsvoice_commit_seconds_bucket[5m])))
               or smsvoice:recorded * 1e3 + time() - label_replace(x_y, "a", "b", "__name__", ".*")"#
        ),
        [
            "smsvoice:recorded",
            "smsvoice_commit_seconds_bucket",
            "smsvoice_dead_letters_total",
            "smsvoice_ready",
            "up",
            "x_y"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        smsvoice_tokens(
            "{{ query \"smsvoice_a{x='1'}\" }} smsvoice:b xsmsvoice_c smsvoice_d_Total"
        ),
        ["smsvoice_a", "smsvoice_d_Total"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    let scrape = "# TYPE smsvoice_ready gauge\nsmsvoice_ready 1\n\
                  # TYPE smsvoice_commit_seconds histogram\nsmsvoice_commit_seconds_bucket{le=\"1\"} 1\n\
                  # TYPE smsvoice_described_only counter\n";
    let samples: BTreeSet<String> = ["smsvoice_ready", "smsvoice_commit_seconds_bucket"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let exported = families(scrape, &samples);
    assert_eq!(exported.len(), 2, "{exported:?}");
    let used: BTreeSet<String> = [
        "smsvoice_ready",
        "smsvoice_commit_seconds_bucket",
        "smsvoice_commit_seconds_count",
        "smsvoice_ready_bucket",
        "smsvoice_described_only",
        "smsvoice_no_such_metric",
        "smsvoice:recorded",
        "smsvoice:not_recorded",
        "up",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let recorded: BTreeSet<String> = ["smsvoice:recorded".to_owned()].into();
    assert_eq!(
        not_exported(&used, &exported, &recorded),
        [
            "smsvoice:not_recorded",
            "smsvoice_described_only",
            "smsvoice_no_such_metric",
            "smsvoice_ready_bucket",
            "up"
        ]
    );
}

// ------------------------------------------------------------- the service

/// The instance's `/metrics` scrape.
fn scrape(i: &Instance) -> String {
    i.text("/metrics")
}

fn sum_of(samples: &[(String, BTreeMap<String, String>, f64)], name: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|s| s.2)
        .sum()
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    // The names first: this part needs no broker.
    let (used, recorded) = used_names();
    let service: Vec<&String> = used.keys().filter(|n| n.starts_with("smsvoice_")).collect();
    assert!(
        service.len() >= 30,
        "only {} smsvoice_ names found in the rules and the dashboard: {service:?}",
        service.len()
    );
    for r in [
        "smsvoice:monthly_spend_usd",
        "smsvoice:current_month",
        "smsvoice:spend_limit_ratio",
    ] {
        assert!(used.contains_key(r), "recording rule {r} not used");
    }
    if !kafka_or_skip("the metric names of the rules and the dashboard") {
        return;
    }
    const INPUT: &str = "metrics-input";
    const PARTITIONS: i32 = 2;
    let broker = KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    support::kafka::create_topic(&bootstrap, INPUT, PARTITIONS);
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("archive");
    let cfg = dir.path().join("smsvoice.toml");
    // The embedded default has alarms and limits (SMS, MMS); add an alarm
    // and a limit on VOICE and RCS so every channel has both. Files are cut
    // every 100 rows, so the archive writes (and times) uploads while the
    // stream runs.
    std::fs::write(
        &cfg,
        format!(
            "{EMBEDDED_DEFAULT}\n\
             [[spend.alarms]]\nname = \"voice-1\"\nchannel = \"VOICE\"\nthreshold_usd = \"1\"\n\
             comparison = \"GreaterThanOrEqualToThreshold\"\n\
             [[spend.alarms]]\nname = \"rcs-1\"\nchannel = \"RCS\"\nthreshold_usd = \"1\"\n\
             comparison = \"GreaterThanOrEqualToThreshold\"\n\
             [[spend.limits]]\nchannel = \"VOICE\"\nmonthly_limit_usd = \"100\"\n\
             [[spend.limits]]\nchannel = \"RCS\"\nmonthly_limit_usd = \"100\"\n\
             [archive]\nuri = {uri:?}\n\n[archive.rolling]\nmax_rows = 100\nmax_age = \"5s\"\n\n\
             [kafka]\nbootstrap_servers = {bootstrap:?}\ngroup_id = \"metrics\"\n\
             partitions = {PARTITIONS}\ncommit_interval_ms = 500\nshutdown_grace_ms = 10000\n\
             [kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n",
            uri = archive.display().to_string()
        ),
    )
    .expect("config");
    let g = generate(&Workload {
        seed: 1414,
        messages: 1_500,
        malformed_per_mille: 30,
        ..Workload::default()
    });
    assert!(g.truth.malformed > 0, "the stream has malformed records");
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    let instance = Instance::start(&cfg, "metrics", dir.path(), &[]);
    produce_all(&bootstrap, INPUT, PARTITIONS, &records);

    // Wait until every histogram has been observed, dead letters were
    // written, the archive has made files durable and the view has every
    // channel's spend.
    let start = Instant::now();
    let (scrape, samples) = loop {
        let scrape = scrape(&instance);
        let samples = parse_metrics(&scrape);
        let mut missing = Vec::new();
        for n in [
            "smsvoice_event_output_latency_seconds_count",
            "smsvoice_commit_seconds_count",
            "smsvoice_partition_restore_seconds_count",
            "smsvoice_archive_upload_seconds_count",
            "smsvoice_archive_files_total",
            "smsvoice_dead_letters_by_reason_total",
            "smsvoice_text_message_monthly_spend_usd",
            "smsvoice_media_message_monthly_spend_usd",
            "smsvoice_voice_message_monthly_spend_usd",
            "smsvoice_rcs_message_monthly_spend_usd",
            "smsvoice_consumer_lag_records",
        ] {
            if !samples.iter().any(|(s, _, _)| s == n)
                || (n.ends_with("_total") && sum_of(&samples, n) == 0.0)
            {
                missing.push(n);
            }
        }
        if missing.is_empty() {
            break (scrape, samples);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "after 120 s the scrape still lacks {missing:?}\n{scrape}\n{}",
            instance.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let sample_names: BTreeSet<String> = samples.iter().map(|s| s.0.clone()).collect();
    let exported = families(&scrape, &sample_names);
    assert!(exported.len() >= 30, "families {exported:?}");
    let used_set: BTreeSet<&str> = used.keys().map(String::as_str).collect();
    let missing = not_exported(&used.keys().cloned().collect(), &exported, &recorded);
    let report: Vec<String> = missing
        .iter()
        .map(|n| format!("{n} (used by {:?})", used[n]))
        .collect();
    assert!(
        missing.is_empty(),
        "names the rules or the dashboard use that the service does not export:\n  {}\nexported: {:?}",
        report.join("\n  "),
        exported.keys().collect::<Vec<_>>()
    );
    // The current month the rules join on is the clock's UTC month.
    let month = smsvoice::spend::MonthKey::from_epoch_ms(chrono_now_ms())
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(
        samples
            .iter()
            .any(|(n, l, v)| n == "smsvoice_current_month_info"
                && l.get("month") == Some(&month)
                && *v == 1.0),
        "smsvoice_current_month_info{{month={month:?}}} 1 missing"
    );
    let started = sum_of(&samples, "smsvoice_process_start_time_seconds");
    let now = chrono_now_ms() as f64 / 1000.0;
    assert!(
        started <= now && now - started < 300.0,
        "process start time {started}, now {now}"
    );
    println!(
        "{} names used by the rules and the dashboard, all exported ({} families in the scrape); not used: {:?}",
        used_set.len(),
        exported.len(),
        exported
            .keys()
            .filter(|k| !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|s| used_set.contains(format!("{k}{s}").as_str())))
            .collect::<Vec<_>>()
    );
    drop(instance);
    drop(broker);
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
