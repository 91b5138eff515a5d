//! The HTTP server of `smsvoice run` against Apache Kafka on loopback
//! (installed by `scripts/install-kafka.sh`): two instances of one group,
//! `a` with a bearer token read from a file (`SMSVOICE_HTTP__TOKEN_FILE`),
//! `b` with none (writes disabled). Over HTTP, checked against the
//! generator's truth and the output topics read independently:
//!
//! - `/metrics`, parsed by the Python `prometheus_client` text parser: the
//!   spend gauges equal the spend topic's totals for every (month, channel);
//! - `/v1/spend`: exact decimal totals equal to the spend topic and to the
//!   generator's truth, alarm states;
//! - `/v1/opt-out-lists/...`: the generator's opt-out truth on both
//!   instances; the auth rules (writes disabled, no token, wrong token,
//!   right token); a PUT that shows up in the changelog topic and in the
//!   other instance's GET, a DELETE likewise; every bad input a 4xx JSON
//!   error;
//! - `/readyz` 503 while the broker is stopped, 200 after it restarts;
//!   both instances then stop cleanly on SIGTERM.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smsvoice::config::EMBEDDED_DEFAULT;

use support::http::{parse_metrics, Instance};
use support::kafka::{consume_to_end, kafka_or_skip, produce_all, KafkaBroker};
use support::outputs::{latest, spend_of, stream, Stream};

const INPUT: &str = "http-input";
const PARTITIONS: i32 = 3;
const TOKEN: &str = "test-token-0123456789abcdef";
const FRESH: &str = "+14255559999";

impl Instance {
    /// `method path` with an optional bearer token: status and JSON body
    /// (`Value::Null` when the body is not JSON).
    fn call(&self, method: &str, path: &str, auth: Option<&str>) -> (u16, serde_json::Value) {
        let mut req =
            ureq::request(method, &format!("{}{path}", self.base)).timeout(Duration::from_secs(30));
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        let (status, body) = match req.call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        };
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// Starts instance `name`, with the API token file if given.
fn start(config: &Path, name: &str, dir: &Path, token_file: Option<&Path>) -> Instance {
    let env: Vec<(&str, &std::ffi::OsStr)> = token_file
        .map(|t| ("SMSVOICE_HTTP__TOKEN_FILE", t.as_os_str()))
        .into_iter()
        .collect();
    Instance::start(config, name, dir, &env)
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> Option<String>, logs: &[&Instance]) {
    let start = Instant::now();
    loop {
        match check() {
            None => return,
            Some(why) if start.elapsed() > timeout => {
                let tails: Vec<String> = logs
                    .iter()
                    .map(|i| {
                        let t = i.log_text();
                        let from = t.len().saturating_sub(6000);
                        t.get(from..).unwrap_or_default().to_owned()
                    })
                    .collect();
                panic!(
                    "not converged after {timeout:?}: {why}\n{}",
                    tails.join("\n---\n")
                )
            }
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn read(bootstrap: &str, topic: &str) -> Vec<support::kafka::Consumed> {
    consume_to_end(bootstrap, topic, false)
}

/// SIGTERM, then the exit status (panics after `within`).
fn sigterm_and_wait(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        assert!(
            start.elapsed() < within,
            "still running {within:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn gauge_of(channel: &str) -> &'static str {
    match channel {
        "SMS" => "smsvoice_text_message_monthly_spend_usd",
        "MMS" => "smsvoice_media_message_monthly_spend_usd",
        "VOICE" => "smsvoice_voice_message_monthly_spend_usd",
        "RCS" => "smsvoice_rcs_message_monthly_spend_usd",
        other => panic!("channel {other}"),
    }
}

#[test]
fn http_api_against_a_real_broker() {
    if !kafka_or_skip("the HTTP server") {
        return;
    }
    let mut broker = KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    support::kafka::create_topic(&bootstrap, INPUT, PARTITIONS);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("smsvoice.toml");
    std::fs::write(
        &cfg,
        format!(
            "{EMBEDDED_DEFAULT}\n[kafka]\nbootstrap_servers = {bootstrap:?}\ngroup_id = \"http\"\n\
             partitions = {PARTITIONS}\ncommit_interval_ms = 500\nshutdown_grace_ms = 20000\n\
             [kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n\
             [http]\nwrite_timeout_ms = 20000\n"
        ),
    )
    .expect("config");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let Stream { g, want, records } = stream(1313, 3_000);
    let a = start(&cfg, "a", dir.path(), Some(&token_file));
    let b = start(&cfg, "b", dir.path(), None);
    produce_all(&bootstrap, INPUT, PARTITIONS, &records);
    wait_until(
        Duration::from_secs(240),
        || {
            let got = spend_of(&read(&bootstrap, "smsvoice.spend"));
            (got != want).then(|| format!("spend {got:?}\nwant {want:?}"))
        },
        &[&a, &b],
    );
    for i in [&a, &b] {
        wait_until(
            Duration::from_secs(60),
            || {
                let (s, body) = i.call("GET", "/readyz", None);
                (s != 200).then(|| format!("{} /readyz {s} {body}", i.base))
            },
            &[i],
        );
        let (s, body) = i.call("GET", "/healthz", None);
        assert_eq!(s, 200, "{body}");
        // router, message owners, opt-out owners, totals, replica.
        assert!(body["loops"].as_u64().unwrap_or(0) >= 5, "{body}");
    }

    // The published totals, per (month, channel), as the topic has them.
    let topic_spend = spend_of(&read(&bootstrap, "smsvoice.spend"));
    // /v1/spend: exact strings, equal to the topic and to the truth, on
    // both instances (each has replicated the spend topic).
    let months: std::collections::BTreeSet<String> = want.keys().map(|(m, _)| m.clone()).collect();
    assert!(months.len() >= 2, "months {months:?}");
    for i in [&a, &b] {
        // The totals stage may still publish a last value after the check
        // above; wait for the view to have it.
        wait_until(
            Duration::from_secs(30),
            || {
                for m in &months {
                    let (s, body) = i.call("GET", &format!("/v1/spend?month={m}"), None);
                    if s != 200 {
                        return Some(format!("/v1/spend {s} {body}"));
                    }
                    for c in body["channels"].as_array().cloned().unwrap_or_default() {
                        let ch = c["channel"].as_str().unwrap_or_default().to_owned();
                        let got = (
                            c["spendUsd"].as_str().unwrap_or_default().to_owned(),
                            c["messages"].as_u64().unwrap_or(0),
                        );
                        match want.get(&(m.clone(), ch.clone())) {
                            Some(w) if *w == got => {}
                            None if got.1 == 0 => {}
                            other => return Some(format!("{m} {ch}: {got:?}, want {other:?}")),
                        }
                    }
                }
                None
            },
            &[i],
        );
    }
    let (_, one) = a.call(
        "GET",
        &format!("/v1/spend?month={}", months.iter().next().expect("month")),
        None,
    );
    for c in one["channels"].as_array().expect("channels") {
        for al in c["alarms"].as_array().expect("alarms") {
            let st = al["state"].as_str().unwrap_or_default();
            assert!(st == "OK" || st == "ALARM", "{al}");
        }
    }

    // /metrics through a real exposition-format parser: every spend gauge
    // equals the spend topic's total for its (month, channel).
    let samples = parse_metrics(&a.text("/metrics"));
    let mut gauges: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (name, labels, value) in &samples {
        for ch in ["SMS", "MMS", "VOICE", "RCS"] {
            if name == gauge_of(ch) {
                gauges.insert((labels["month"].clone(), ch.to_owned()), *value);
            }
        }
    }
    for ((m, ch), (spend, _)) in &topic_spend {
        let g = gauges
            .get(&(m.clone(), ch.clone()))
            .unwrap_or_else(|| panic!("no gauge for {m} {ch}: {gauges:?}"));
        let want: f64 = spend.parse().expect("decimal");
        assert_eq!(*g, want, "{m} {ch}: gauge {g}, topic {spend}");
    }
    for (k, v) in &gauges {
        assert!(
            topic_spend.contains_key(k) || *v == 0.0,
            "a gauge the topic does not have: {k:?} = {v}"
        );
    }
    let names: std::collections::BTreeSet<&str> =
        samples.iter().map(|(n, _, _)| n.as_str()).collect();
    for n in [
        "smsvoice_records_in_total",
        "smsvoice_dead_letters_total",
        "smsvoice_spend_alarm_state",
        "smsvoice_spend_alarm_threshold_usd",
        "smsvoice_spend_limit_usd",
        "smsvoice_ready",
    ] {
        assert!(names.contains(n), "{n} missing from {names:?}");
    }
    let ready = samples
        .iter()
        .find(|(n, _, _)| n == "smsvoice_ready")
        .map(|s| s.2);
    assert_eq!(ready, Some(1.0));
    // Counters recorded where things happen: the delivery counters carry
    // bounded country labels; every dead letter in the topic was counted by
    // the instance that wrote it; event latencies were observed. Which
    // instance processed which messages is the group's choice (a may own
    // no message-owner partition while the stream is processed): the
    // counters are read from both.
    let both: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|i| parse_metrics(&i.text("/metrics")))
        .collect();
    let sent: Vec<_> = both
        .iter()
        .filter(|(n, _, _)| n == "smsvoice_text_message_parts_sent_total")
        .collect();
    assert!(!sent.is_empty(), "no SMS parts sent counted");
    for (_, l, v) in &sent {
        let c = &l["iso_country_code"];
        assert!(
            c == "other" || (c.len() == 2 && c.chars().all(|ch| ch.is_ascii_uppercase())),
            "country label {c}"
        );
        assert!(*v > 0.0);
    }
    let latency = both
        .iter()
        .filter(|(n, _, _)| n == "smsvoice_event_output_latency_seconds_count")
        .map(|s| s.2)
        .sum::<f64>();
    assert!(latency > 0.0, "no event latency observed");
    let dead_in_topic = read(&bootstrap, "smsvoice.dead-letters").len() as f64;
    let dead_counted: f64 = [&a, &b]
        .iter()
        .flat_map(|i| parse_metrics(&i.text("/metrics")))
        .filter(|(n, _, _)| n == "smsvoice_dead_letters_by_reason_total")
        .map(|s| s.2)
        .sum();
    assert!(dead_in_topic > 0.0, "the stream has malformed records");
    assert_eq!(
        dead_counted, dead_in_topic,
        "dead letters counted by reason on a and b vs records in the dead-letter topic"
    );

    // Consumer lag: every input partition of the router's group is there,
    // and reaches 0 once its offsets are committed (the stream is
    // processed).
    wait_until(
        Duration::from_secs(60),
        || {
            let lag: BTreeMap<String, f64> = parse_metrics(&a.text("/metrics"))
                .into_iter()
                .filter(|(n, l, _)| {
                    n == "smsvoice_consumer_lag_records"
                        && l.get("group").map(String::as_str) == Some("http")
                        && l.get("topic").map(String::as_str) == Some(INPUT)
                })
                .map(|(_, l, v)| (l["partition"].clone(), v))
                .collect();
            (lag.len() != PARTITIONS as usize || lag.values().any(|v| *v != 0.0))
                .then(|| format!("input lag {lag:?}"))
        },
        &[&a],
    );

    // The opt-out table of the truth, on both instances.
    let opted_out = g
        .truth
        .optouts
        .iter()
        .find(|(_, &v)| v)
        .map(|(k, _)| k.clone())
        .expect("an opted-out number in the truth");
    let opted_in = g
        .truth
        .optouts
        .iter()
        .find(|(_, &v)| !v)
        .map(|(k, _)| k.clone());
    for i in [&a, &b] {
        let (s, body) = i.call(
            "GET",
            &format!("/v1/opt-out-lists/{}/numbers/{}", opted_out.0, opted_out.1),
            None,
        );
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["optedOut"], true, "{body}");
        assert!(body["cause"]["inboundMessageId"].is_string(), "{body}");
        assert!(
            body["cause"]["keyword"].is_string(),
            "the deciding keyword: {body}"
        );
        assert!(body["since"].is_string(), "{body}");
        if let Some((l, n)) = &opted_in {
            let (s, body) = i.call("GET", &format!("/v1/opt-out-lists/{l}/numbers/{n}"), None);
            assert_eq!(
                (s, &body["optedOut"]),
                (200, &serde_json::Value::Bool(false)),
                "{body}"
            );
        }
        let (s, body) = i.call(
            "GET",
            &format!("/v1/opt-out-lists/Default/numbers/{FRESH}"),
            None,
        );
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["optedOut"], false, "{body}");
        assert!(body["cause"].is_null() && body["since"].is_null(), "{body}");
    }

    // Bad input: a 4xx JSON error, never a crash.
    for (path, want_status) in [
        ("/v1/opt-out-lists/Default/numbers/4255550100", 400),
        ("/v1/opt-out-lists/Default/numbers/+1%20425", 400),
        ("/v1/opt-out-lists/Default/numbers/+12345678901234567", 400),
        ("/v1/opt-out-lists/NoSuchList/numbers/+14255550100", 404),
        ("/v1/spend?month=2025-13", 400),
        ("/v1/spend?month=November", 400),
        ("/v1/spend?when=2025-11", 400),
        ("/v1/nothing-here", 404),
    ] {
        let (s, body) = a.call("GET", path, None);
        assert_eq!(s, want_status, "GET {path}: {body}");
        assert!(body["error"].is_string(), "GET {path}: {body}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let (s, body) = a.call(
        "PUT",
        "/v1/opt-out-lists/Default/numbers/425",
        Some(&bearer),
    );
    assert_eq!(s, 400, "{body}");

    // The auth rules.
    let path = format!("/v1/opt-out-lists/Default/numbers/{FRESH}");
    let (s, body) = b.call("PUT", &path, Some(&bearer));
    assert_eq!(s, 403, "writes disabled without a token: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("disabled"),
        "{body}"
    );
    let (s, body) = a.call("PUT", &path, None);
    assert_eq!(s, 401, "no token: {body}");
    let (s, body) = a.call("PUT", &path, Some("Bearer not-the-token-0123456789"));
    assert_eq!(s, 403, "wrong token: {body}");
    let (s, body) = a.call("PUT", &path, Some(TOKEN));
    assert_eq!(s, 401, "not a bearer header: {body}");
    // Nothing was written by the refused requests.
    let (_, body) = a.call("GET", &path, None);
    assert_eq!(body["optedOut"], false, "{body}");

    // The right token: the owner decides, the changelog has it, the other
    // instance reads it.
    let (s, body) = a.call("PUT", &path, Some(&bearer));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["optedOut"], true, "{body}");
    let request = body["cause"]["operator"]["requestId"]
        .as_str()
        .unwrap_or_else(|| panic!("operator cause: {body}"))
        .to_owned();
    let key = format!("Default|{FRESH}").into_bytes();
    let entry = |bootstrap: &str| -> Option<serde_json::Value> {
        latest(&read(bootstrap, "smsvoice.optout-changelog"))
            .get(&key)
            .and_then(|v| serde_json::from_slice(v).ok())
    };
    let c = entry(&bootstrap).expect("the PUT in the changelog topic");
    assert_eq!(c["optedOut"], true, "{c}");
    assert_eq!(c["cause"], format!("operator:{request}"), "{c}");
    wait_until(
        Duration::from_secs(30),
        || {
            let (s, body) = b.call("GET", &path, None);
            (body["optedOut"] != true || s != 200).then(|| format!("b: {s} {body}"))
        },
        &[&b],
    );
    let (s, body) = a.call("DELETE", &path, Some(&bearer));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["optedOut"], false, "{body}");
    let c = entry(&bootstrap).expect("the DELETE in the changelog topic");
    assert_eq!(c["optedOut"], false, "{c}");
    wait_until(
        Duration::from_secs(30),
        || {
            let (s, body) = b.call("GET", &path, None);
            (body["optedOut"] != false || s != 200).then(|| format!("b: {s} {body}"))
        },
        &[&b],
    );

    // Readiness follows the broker.
    broker.stop();
    wait_until(
        Duration::from_secs(60),
        || {
            let (s, body) = a.call("GET", "/readyz", None);
            let why = body["reasons"].to_string();
            (s != 503 || !why.contains("broker unreachable")).then(|| format!("{s} {body}"))
        },
        &[&a],
    );
    assert_eq!(
        a.call("GET", "/healthz", None).0,
        200,
        "alive while the broker is down"
    );
    broker.restart();
    wait_until(
        Duration::from_secs(120),
        || {
            let (s, body) = a.call("GET", "/readyz", None);
            (s != 200).then(|| format!("{s} {body}"))
        },
        &[&a],
    );

    for mut i in [a, b] {
        let status = sigterm_and_wait(&mut i.child, Duration::from_secs(90));
        assert!(status.success(), "{status}\n{}", i.log_text());
    }
}

/// `smsvoice demo --serve` (in-process cluster, nothing installed): after
/// its report it answers `/readyz`, `/v1/spend`, `/metrics` and the opt-out
/// API with the values the report printed, and stops cleanly on SIGTERM.
#[test]
fn demo_serve_answers_with_the_values_it_printed() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("demo.toml");
    std::fs::write(
        &cfg,
        format!("{EMBEDDED_DEFAULT}\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args(["demo", "--messages", "1500", "--serve", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smsvoice demo --serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut report = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let last = l.starts_with("All ") || l.starts_with("FAILED");
                report.push(l);
                if last {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no complete report within 300 s:\n{}", report.join("\n"));
            }
        }
    }
    let text = report.join("\n");
    assert!(text.contains("\nAll "), "{text}");
    let base = report
        .iter()
        .find_map(|l| l.strip_prefix("Serving the demo's state on "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no serving line:\n{text}"))
        .to_owned();
    let served = Instance {
        child,
        log: dir.path().join("none"),
        base,
    };
    // The spend lines of the report: `  YYYY-MM CHANNEL AMOUNT USD N messages`.
    let mut printed: BTreeMap<(String, String), (String, u64)> = BTreeMap::new();
    let mut in_spend = false;
    for l in &report {
        if l.starts_with("Spend (topic") {
            in_spend = true;
            continue;
        }
        if in_spend {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() == 6 && w[3] == "USD" && w[5] == "messages" {
                printed.insert(
                    (w[0].to_owned(), w[1].to_owned()),
                    (w[2].to_owned(), w[4].parse().expect("messages")),
                );
            } else {
                in_spend = false;
            }
        }
    }
    assert!(printed.len() >= 4, "spend lines: {printed:?}\n{text}");
    let (s, body) = served.call("GET", "/readyz", None);
    assert_eq!(s, 200, "{body}");
    for ((month, channel), (amount, messages)) in &printed {
        let (s, body) = served.call("GET", &format!("/v1/spend?month={month}"), None);
        assert_eq!(s, 200, "{body}");
        let c = body["channels"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["channel"] == channel.as_str()))
            .unwrap_or_else(|| panic!("{channel} in {body}"));
        assert_eq!(c["spendUsd"], amount.as_str(), "{month} {channel}: {c}");
        assert_eq!(c["messages"], *messages, "{month} {channel}: {c}");
    }
    let samples = parse_metrics(&served.text("/metrics"));
    for ((month, channel), (amount, _)) in &printed {
        let got = samples
            .iter()
            .find(|(n, l, _)| n == gauge_of(channel) && l.get("month") == Some(month))
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no gauge for {month} {channel}"));
        assert_eq!(
            got,
            amount.parse::<f64>().expect("amount"),
            "{month} {channel}"
        );
    }
    let optout_url = report
        .iter()
        .find(|l| l.ends_with("(opted out)"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no opted-out number printed:\n{text}"));
    let path = optout_url.trim_start_matches(&served.base).to_owned();
    let (s, body) = served.call("GET", &path, None);
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["optedOut"], true, "{body}");
    let mut served = served;
    let status = sigterm_and_wait(&mut served.child, Duration::from_secs(60));
    assert!(status.success(), "demo --serve exit: {status}");
}
