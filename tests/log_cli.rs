//! The `[log]` section through the built binary: `smsvoice process` (file
//! mode, no Kafka) logs as `[log] format` says, `RUST_LOG` replaces
//! `[log] level`, and the JSON log of a run over the bundled samples holds
//! none of their phone numbers.
//!
//! The `SMSVOICE_*` variables and `RUST_LOG` of the test's own environment
//! are removed from the child's, so that a developer's shell cannot change
//! the outcome.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `smsvoice args` in `dir` with exactly the variables `vars` of
/// configuration (and `RUST_LOG`) set.
fn smsvoice(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsvoice"));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SMSVOICE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run smsvoice")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stderr lines that are log lines: not empty, and not one of the
/// `smsvoice ...` lines the commands print themselves.
fn log_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("smsvoice"))
        .map(str::to_owned)
        .collect()
}

/// `line` as a JSON log line: an object with `timestamp`, `level`, `target`
/// and `fields.message`; `None` when it is not one.
fn json_line(line: &str) -> Option<serde_json::Map<String, Value>> {
    let v: Value = serde_json::from_str(line).ok()?;
    let o = v.as_object()?;
    let fields = o.get("fields")?.as_object()?;
    (o.get("timestamp")?.is_string()
        && o.get("level")?.is_string()
        && o.get("target")?.is_string()
        && fields.get("message")?.is_string())
    .then(|| o.clone())
}

/// `smsvoice process` over the embedded samples into `dir/out`, without the
/// archive.
fn process(dir: &Path, extra: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut args = vec!["process", "--out", "out", "--no-archive"];
    args.extend_from_slice(extra);
    let o = smsvoice(dir, &args, vars);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    o
}

/// The summary line of `process`, `message` "processed".
fn processed(lines: &[serde_json::Map<String, Value>]) -> &serde_json::Map<String, Value> {
    lines
        .iter()
        .find(|l| l["fields"]["message"] == "processed")
        .unwrap_or_else(|| panic!("no \"processed\" line: {lines:?}"))
}

#[test]
fn json_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = process(dir.path(), &[], &[("SMSVOICE_LOG__FORMAT", "json")]);
    let lines = log_lines(&o);
    assert!(!lines.is_empty(), "no log line: {}", stderr(&o));
    let parsed: Vec<_> = lines
        .iter()
        .map(|l| json_line(l).unwrap_or_else(|| panic!("not a JSON log line: {l}")))
        .collect();
    let p = processed(&parsed);
    assert_eq!(p["level"], "INFO", "{p:?}");
    assert_eq!(p["target"], "smsvoice", "{p:?}");
    assert_eq!(p["fields"]["files"], 9, "{p:?}");
    assert!(p["fields"]["records"].as_u64() > Some(0), "{p:?}");
    // RFC 3339, UTC
    let ts = p["timestamp"].as_str().unwrap_or_default();
    assert!(
        ts.len() > 20 && ts.ends_with('Z') && ts.contains('T'),
        "{ts}"
    );
}

#[test]
fn text_format_writes_no_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("text.toml");
    std::fs::write(&cfg, "[log]\nformat = \"text\"\n").expect("write config");
    let c = cfg.display().to_string();
    let o = process(dir.path(), &["--config", &c], &[]);
    let lines = log_lines(&o);
    assert!(!lines.is_empty(), "no log line: {}", stderr(&o));
    for l in &lines {
        assert!(serde_json::from_str::<Value>(l).is_err(), "JSON: {l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" INFO smsvoice: processed") && l.contains("files=9")),
        "{lines:?}"
    );
    // not a terminal: no colour
    assert!(!stderr(&o).contains('\u{1b}'), "{}", stderr(&o));

    // the environment overrides the file
    let o = process(
        dir.path(),
        &["--config", &c],
        &[("SMSVOICE_LOG__FORMAT", "json")],
    );
    let lines = log_lines(&o);
    assert!(!lines.is_empty(), "no log line: {}", stderr(&o));
    assert!(lines.iter().all(|l| json_line(l).is_some()), "{lines:?}");
}

#[test]
fn level_is_a_filter_and_rust_log_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = ("SMSVOICE_LOG__FORMAT", "json");
    // [log] level = "warn": the info summary is filtered out
    let o = process(dir.path(), &[], &[json, ("SMSVOICE_LOG__LEVEL", "warn")]);
    assert!(log_lines(&o).is_empty(), "{}", stderr(&o));
    // RUST_LOG replaces [log] level, both ways
    let o = process(dir.path(), &[], &[json, ("RUST_LOG", "warn")]);
    assert!(log_lines(&o).is_empty(), "{}", stderr(&o));
    let o = process(
        dir.path(),
        &[],
        &[json, ("SMSVOICE_LOG__LEVEL", "warn"), ("RUST_LOG", "info")],
    );
    let lines: Vec<_> = log_lines(&o).iter().filter_map(|l| json_line(l)).collect();
    processed(&lines);
    // an empty RUST_LOG is unset
    let o = process(dir.path(), &[], &[json, ("RUST_LOG", "")]);
    let lines: Vec<_> = log_lines(&o).iter().filter_map(|l| json_line(l)).collect();
    processed(&lines);
}

#[test]
fn a_bad_log_key_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (vars, needles) in [
        (
            [("SMSVOICE_LOG__FORMAT", "xml")],
            ["SMSVOICE_LOG__FORMAT", "log.format"],
        ),
        (
            [("SMSVOICE_LOG__LEVEL", "smsvoice=loud")],
            ["SMSVOICE_LOG__LEVEL", "log.level"],
        ),
        (
            [("SMSVOICE_LOG__COLOUR", "true")],
            ["SMSVOICE_LOG__COLOUR", "log.colour"],
        ),
    ] {
        for args in [
            &["process", "--out", "out", "--no-archive"][..],
            &["check-config"][..],
        ] {
            let o = smsvoice(dir.path(), args, &vars);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?} {vars:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
            assert!(err.starts_with("smsvoice"), "{err}");
            for n in needles {
                assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
            }
        }
    }
    // the demo reads the [log] of its --config, before it starts anything
    let cfg = dir.path().join("demo.toml");
    std::fs::write(&cfg, "[log]\nformat = \"xml\"\n").expect("write config");
    let c = cfg.display().to_string();
    let o = smsvoice(dir.path(), &["demo", "--config", &c, "--out", "d"], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("smsvoice demo: ") && err.contains("log.format"),
        "{err}"
    );
}

#[test]
fn check_config_shows_the_log_keys_the_environment_sets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let template = smsvoice(dir.path(), &["default-config"], &[]);
    assert!(template.status.success());
    let cfg = dir.path().join("smsvoice.toml");
    std::fs::write(&cfg, &template.stdout).expect("write template");
    let c = cfg.display().to_string();
    let o = smsvoice(
        dir.path(),
        &["check-config", "--config", &c],
        &[
            ("SMSVOICE_LOG__FORMAT", "json"),
            ("SMSVOICE_LOG__LEVEL", "warn,smsvoice=debug"),
            ("SMSVOICE_LOG__PERSONAL_DATA", "false"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "[log]",
        "format = \"json\"",
        "level = \"warn,smsvoice=debug\"",
        "personal_data = false",
        "log.format <- SMSVOICE_LOG__FORMAT",
    ] {
        assert!(out.contains(want), "lacks {want:?}:\n{out}");
    }
}

/// The E.164 numbers (`+` and 7 to 15 digits) written in `text`.
fn phone_numbers(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if b[i] == b'+' && (7..=15).contains(&n) {
            found.push(text[i..i + 1 + n].to_owned());
        }
        i += 1 + if b[i] == b'+' { n } else { 0 };
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_json_log_holds_no_phone_number_of_the_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::create_dir(&input).expect("mkdir");
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut text = String::new();
    for e in std::fs::read_dir(&samples).expect("samples") {
        let p = e.expect("entry").path();
        let bytes = std::fs::read(&p).expect("read sample");
        text.push_str(&String::from_utf8_lossy(&bytes));
        std::fs::write(input.join(p.file_name().expect("name")), bytes).expect("copy");
    }
    // and records refused for their numbers and bodies: dead letters
    let refused = concat!(
        r#"{"originationNumber":"+1425555019","destinationNumber":"12125550101","messageBody":"STOP +14255550199","inboundMessageId":"x-1"}"#,
        "\n",
        r#"{"originationNumber":"+14255550177","destinationNumber":"+12125550101","messageBody":7,"inboundMessageId":"x-2"}"#,
        "\n",
        r#"{"originationNumber":"+44 20 7946 0958","destinationNumber":"+12125550101","messageBody":"HELP","inboundMessageId":"x-3"}"#,
        "\n",
    );
    std::fs::write(input.join("zz-refused.json"), refused).expect("write");
    text.push_str(refused);
    let numbers = phone_numbers(&text);
    assert!(numbers.len() >= 8, "{numbers:?}");

    let i = input.display().to_string();
    let o = process(
        dir.path(),
        &["--input", &i],
        &[
            ("SMSVOICE_LOG__FORMAT", "json"),
            // everything anything logs
            ("SMSVOICE_LOG__LEVEL", "trace"),
        ],
    );
    let lines = log_lines(&o);
    let parsed: Vec<_> = lines
        .iter()
        .map(|l| json_line(l).unwrap_or_else(|| panic!("not a JSON log line: {l}")))
        .collect();
    let p = processed(&parsed);
    assert!(p["fields"]["dead_letters"].as_u64() >= Some(2), "{p:?}");
    for l in &lines {
        for n in &numbers {
            assert!(!l.contains(n.as_str()), "{n} logged: {l}");
        }
        // nor without its +
        for n in &numbers {
            assert!(!l.contains(&n[1..]), "{n} logged: {l}");
        }
    }
    // the dead letters do hold them: the input did reach the core
    let dead = std::fs::read_to_string(dir.path().join("out/dead-letters.jsonl")).expect("dead");
    assert!(dead.contains("+14255550177"), "{dead}");
}

/// `smsvoice run` against a broker address nothing answers on: at the
/// default level it says so within seconds, naming the address and the
/// retry schedule, and SIGTERM during that startup ends it cleanly (exit 0)
/// within seconds.
#[test]
fn an_unreachable_broker_is_logged_at_once_and_sigterm_stops_the_startup() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("smsvoice.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:{port}\"\n[kafka.input_topics]\nevents = [\"e\"]\n[http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsvoice"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SMSVOICE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smsvoice run");
    let started = Instant::now();
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let warning = loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l.contains("cannot reach the Kafka brokers") => break l,
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("no warning within 15 s:\n{}", seen.join("\n"));
            }
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "warned after {:?}",
        started.elapsed()
    );
    assert!(warning.contains(&format!("127.0.0.1:{port}")), "{warning}");
    assert!(warning.contains("attempts"), "{warning}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let signalled = Instant::now();
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after SIGTERM during startup");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{status}");
}
