//! `smsvoice check-config`, `default-config` and the `SMSVOICE_*`
//! environment, through the built binary.
//!
//! Every variable is given to the child process with `Command::env` (the
//! tests run in parallel and never change their own environment); the
//! `SMSVOICE_*` variables of the test's own environment are removed from the
//! child's, so that a developer's shell cannot change the outcome.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `smsvoice args` with `vars` set and `stdin` written to it; killed
/// (and the test failed) after a minute, so that a check that should have
/// failed before connecting cannot hang the suite.
fn smsvoice(args: &[&str], vars: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsvoice"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SMSVOICE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.envs(vars.iter().copied());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn smsvoice");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => break,
            None if start.elapsed() > Duration::from_secs(60) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "smsvoice {args:?} still running after 60 s; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    child.wait_with_output().expect("output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// Exit 2 with one line on stderr containing every one of `needles`.
fn assert_config_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

const GOOD: &str = r#"
[kafka]
bootstrap_servers = "file-broker:9092"
[kafka.input_topics]
events = ["sms-voice-events"]
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "smsvoice"
"ssl.key.password" = "file-secret-4711"
"#;

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "smsvoice.toml", GOOD);
    // a Kubernetes Secret mounted as a file
    let secret = write(dir.path(), "password", "k8s-secret-0815\n");
    let o = smsvoice(
        &["check-config", "--config", &cfg],
        &[
            (
                "SMSVOICE_KAFKA__BOOTSTRAP_SERVERS",
                "env-broker-1:9096,env-broker-2:9096",
            ),
            ("SMSVOICE_KAFKA__EXACTLY_ONCE", "true"),
            ("SMSVOICE_SPEND__RECEIPT_WINDOW_HOURS", "48"),
            (
                "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                secret.as_str(),
            ),
            ("SMSVOICE_INSTANCE_ID", "smsvoice-0"),
        ],
        None,
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(out.contains("env-broker-1:9096,env-broker-2:9096"), "{out}");
    assert!(!out.contains("file-broker"), "{out}");
    assert!(out.contains("exactly_once = true"), "{out}");
    assert!(out.contains("receipt_window_hours = 48"), "{out}");
    assert!(out.contains("\"sasl.password\" = \"***\""), "{out}");
    assert!(out.contains("\"ssl.key.password\" = \"***\""), "{out}");
    assert!(out.contains("\"sasl.username\" = \"smsvoice\""), "{out}");
    for s in ["k8s-secret-0815", "file-secret-4711"] {
        assert!(!out.contains(s), "secret {s} printed: {out}");
        assert!(!stderr(&o).contains(s), "secret {s} on stderr");
    }
    assert!(
        out.contains("SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE"),
        "the header names the variables: {out}"
    );
    // What it prints is itself a configuration check-config accepts.
    let again = smsvoice(&["check-config", "--config", "-"], &[], Some(&out));
    assert_eq!(again.status.code(), Some(0), "stderr: {}", stderr(&again));
}

#[test]
fn check_config_names_a_bad_key_of_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "bad.toml",
        "[kafka]\nbootstrap_servers = \"b:9092\"\ngroupid = \"typo\"\n",
    );
    let o = smsvoice(&["check-config", "--config", &cfg], &[], None);
    assert_config_error(&o, &["groupid", "bad.toml", "line 3"]);

    let cfg = write(
        dir.path(),
        "type.toml",
        "[kafka]\nbootstrap_servers = \"b:9092\"\npartitions = \"six\"\n",
    );
    let o = smsvoice(&["check-config", "--config", &cfg], &[], None);
    assert_config_error(&o, &["kafka.partitions"]);

    // valid TOML, but run needs input topics
    let cfg = write(
        dir.path(),
        "no-input.toml",
        "[kafka]\nbootstrap_servers = \"b:9092\"\n",
    );
    let o = smsvoice(&["check-config", "--config", &cfg], &[], None);
    assert_config_error(&o, &["kafka.input_topics"]);
}

#[test]
fn check_config_names_a_bad_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "smsvoice.toml", GOOD);
    let missing = dir.path().join("no-such-file").display().to_string();
    let secret = write(dir.path(), "password", "pw");
    type Vars<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Vars, Vec<&str>)> = vec![
        (
            vec![("SMSVOICE_KAFKA__BOOTSTRAP_SERVRS", "x:9092")],
            vec!["SMSVOICE_KAFKA__BOOTSTRAP_SERVRS", "bootstrap_servrs"],
        ),
        (
            vec![("SMSVOICE_KAFKA_BOOTSTRAP_SERVERS", "x:9092")],
            vec!["SMSVOICE_KAFKA_BOOTSTRAP_SERVERS"],
        ),
        (
            vec![("SMSVOICE_KAFKA__PARTITIONS", "many")],
            vec!["SMSVOICE_KAFKA__PARTITIONS", "kafka.partitions"],
        ),
        (
            vec![("SMSVOICE_KAFKA__PARTITIONS", "0")],
            vec!["SMSVOICE_KAFKA__PARTITIONS", "kafka.partitions"],
        ),
        (
            vec![(
                "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                missing.as_str(),
            )],
            vec![
                "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                missing.as_str(),
            ],
        ),
        (
            vec![
                (
                    "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                    secret.as_str(),
                ),
                ("SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD", "pw"),
            ],
            vec![
                "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD ",
                "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
            ],
        ),
    ];
    for (vars, needles) in &cases {
        let o = smsvoice(&["check-config", "--config", &cfg], vars, None);
        assert_config_error(&o, needles);
    }
}

#[test]
fn default_config_is_a_template_run_accepts() {
    let o = smsvoice(&["default-config"], &[], None);
    assert_eq!(o.status.code(), Some(0));
    let template = stdout(&o);
    assert!(template.contains("\n[kafka]\n"), "{template}");
    assert!(
        template.contains("bootstrap_servers = \"localhost:9092\""),
        "{template}"
    );
    // no alarms or limits, only commented examples
    assert!(
        !template
            .lines()
            .any(|l| l.starts_with("[[spend.alarms]]") || l.starts_with("[[spend.limits]]")),
        "{template}"
    );
    assert!(template.contains("# [[spend.alarms]]"), "{template}");

    // default-config | check-config --config -
    let piped = smsvoice(&["check-config", "--config", "-"], &[], Some(&template));
    assert_eq!(piped.status.code(), Some(0), "stderr: {}", stderr(&piped));
    assert!(stdout(&piped).contains("localhost:9092"));

    // as a file, with the broker filled in from the environment
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "smsvoice.toml", &template);
    let o = smsvoice(
        &["check-config", "--config", &cfg],
        &[("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS", "b-1.msk:9096")],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(stdout(&o).contains("b-1.msk:9096"));
}

#[test]
fn check_config_without_a_file_uses_the_embedded_default_and_the_environment() {
    // the embedded default has no [kafka]: run would refuse it
    let o = smsvoice(&["check-config"], &[], None);
    assert_config_error(&o, &["[kafka]"]);
    // the environment can supply it
    let o = smsvoice(
        &["check-config"],
        &[
            ("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS", "b:9092"),
            (
                "SMSVOICE_KAFKA__INPUT_TOPICS__EVENTS",
                "[\"sms-voice-events\"]",
            ),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
}

#[test]
fn run_and_process_read_the_environment_and_exit_2_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    // an unreachable broker: only a check before connecting can end the run
    let cfg = write(
        dir.path(),
        "smsvoice.toml",
        "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[kafka.input_topics]\nevents = [\"e\"]\n",
    );
    let o = smsvoice(
        &["run", "--config", &cfg],
        &[("SMSVOICE_KAFKA__WORKERS", "0")],
        None,
    );
    assert_config_error(&o, &["kafka.workers", "SMSVOICE_KAFKA__WORKERS"]);
    let o = smsvoice(
        &["run", "--config", &cfg],
        &[("SMSVOICE_KAFKA__INPUT_TOPICS__EVENTS", "[]")],
        None,
    );
    assert_config_error(&o, &["kafka.input_topics"]);

    let out = dir.path().join("out").display().to_string();
    let o = smsvoice(
        &["process", "--out", &out, "--no-archive"],
        &[("SMSVOICE_SPEND__RECEIPT_WINDOW_HOURS", "three days")],
        None,
    );
    assert_config_error(
        &o,
        &[
            "SMSVOICE_SPEND__RECEIPT_WINDOW_HOURS",
            "spend.receipt_window_hours",
        ],
    );
    let o = smsvoice(
        &["process", "--out", &out, "--no-archive"],
        &[("SMSVOICE_SPEND__RECEIPT_WINDOW_HOURS", "96")],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
}
