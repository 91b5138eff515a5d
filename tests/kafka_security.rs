//! `smsvoice run` against Apache Kafka's SASL_SSL and SSL listeners,
//! configured only through `[kafka.properties]`, as a user would
//! (`security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
//! `ssl.ca.location`):
//!
//! * SASL_SSL with SCRAM-SHA-512, SASL_SSL with PLAIN, and SSL (TLS only)
//!   trusting the test CA: a generated stream is produced to the input topic
//!   over the broker's PLAINTEXT listener, and the pipeline's outputs, read
//!   over the PLAINTEXT listener too, must match the generator's truth
//!   (spend per month and channel, every accepted record once at least);
//!   then SIGTERM, exit 0;
//! * a wrong password (SCRAM-SHA-512, PLAIN) and an untrusted broker
//!   certificate (`ssl.ca.location` = an unrelated CA): exit code 3 within
//!   30 s, with one line on stderr naming the cause;
//! * a broker that refuses connections stays a retryable condition: the
//!   process is still running, without a fatal line, after 10 s.
//!
//! The six cases of the secure listeners share one broker
//! (`KafkaBroker::start_secure`) and run at the same time, each on its own
//! topics and consumer group, in one test ([`secure_listeners`]), so that
//! the broker is dropped (killed, its directory removed) when they are done;
//! [`password_changed_while_running_is_fatal`] restarts its own broker: a
//! restart is retried, and the clients reconnecting after the password was
//! changed are refused, which is fatal.

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use smsvoice::config::EMBEDDED_DEFAULT;
use smsvoice::generate::{generate, Workload};
use smsvoice::kafka::{ensure_topics, KafkaConfig, TopicSpec};

use support::kafka::{consume_all, produce_all, Consumed, KafkaBroker, SASL_PASSWORD, SASL_USER};
use support::outputs::{expected_spend, spend_of};

const INPUT_PARTITIONS: i32 = 2;
/// How long a refused configuration may take to end the process.
const FATAL_WITHIN: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn tls_properties(ca: &Path) -> Vec<(String, String)> {
    vec![
        ("security.protocol".into(), "SSL".into()),
        ("ssl.ca.location".into(), ca.display().to_string()),
    ]
}

/// A configuration of its own topics and group for test `case`, reaching
/// the cluster at `bootstrap` with `properties` as `[kafka.properties]`.
fn config_text(case: &str, bootstrap: &str, properties: &[(String, String)]) -> String {
    let mut text = format!(
        "{EMBEDDED_DEFAULT}\n[kafka]\nbootstrap_servers = {bootstrap:?}\ngroup_id = {case:?}\n\
         internal_prefix = \"{case}.internal.\"\npartitions = 2\ncommit_interval_ms = 500\n\
         shutdown_grace_ms = 20000\n\n\
         [kafka.input_topics]\nevents = [\"{case}.input\"]\ninbound = [\"{case}.input\"]\n\n\
         [kafka.output_topics]\n"
    );
    for out in [
        "enriched_events",
        "enriched_inbound",
        "optout_changelog",
        "spend",
        "alarms",
        "replies",
        "dead_letters",
    ] {
        text.push_str(&format!("{out} = \"{case}.{}\"\n", out.replace('_', "-")));
    }
    text.push_str("\n[kafka.properties]\n");
    for (k, v) in properties {
        text.push_str(&format!("{k:?} = {v:?}\n"));
    }
    text
}

/// A `smsvoice run` child process, its stdout and stderr in files.
struct Run {
    child: Option<Child>,
    started: Instant,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    /// Starts `smsvoice run` on `config`; `rust_log` is its `RUST_LOG`
    /// (`None`: unset, the default filter, as a user runs it).
    fn start(config: &str, rust_log: Option<&str>) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("smsvoice.toml");
        std::fs::write(&cfg, config).expect("config");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsvoice"));
        cmd.args(["run", "--config"])
            .env("SMSVOICE_HTTP__LISTEN", "127.0.0.1:0")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("stdout"))
            .stderr(std::fs::File::create(&stderr).expect("stderr"));
        if let Some(l) = rust_log {
            cmd.env("RUST_LOG", l);
        }
        let child = cmd.spawn().expect("start smsvoice run");
        Run {
            child: Some(child),
            started: Instant::now(),
            stderr,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stderr_tail(&self) -> String {
        let t = self.stderr();
        let start = t.len().saturating_sub(6_000);
        t[t.floor_char_boundary(start)..].to_owned()
    }

    /// Waits at most `timeout` for the process to exit.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                self.child = None;
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then a clean exit within 60 s.
    fn sigterm(&mut self) {
        let Some(c) = self.child.as_ref() else {
            panic!("already exited\n{}", self.stderr_tail());
        };
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        match self.wait(Duration::from_secs(60)) {
            Some(st) => assert!(
                st.success(),
                "exit after SIGTERM: {st}\n{}",
                self.stderr_tail()
            ),
            None => panic!("no exit 60 s after SIGTERM\n{}", self.stderr_tail()),
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn record_ids(records: &[Consumed]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.3).ok())
        .filter_map(|v| v["recordId"].as_str().map(str::to_owned))
        .collect()
}

/// Reads `topic` over the PLAINTEXT listener: everything there is after at
/// most a few seconds.
fn read(plain: &str, topic: &str) -> Vec<Consumed> {
    consume_all(plain, topic, 1, Duration::from_secs(8), false)
}

/// The pipeline through a secure listener (`bootstrap`, `properties`): a
/// generated stream in, its truth out, SIGTERM, exit 0.
fn pipeline_through(case: &str, bootstrap: &str, properties: &[(String, String)], plain: &str) {
    let start = Instant::now();
    let input = format!("{case}.input");
    rt().block_on(ensure_topics(
        &KafkaConfig::new(plain),
        &[TopicSpec {
            name: input.clone(),
            partitions: INPUT_PARTITIONS,
            compacted: false,
            retain_forever: true,
        }],
    ))
    .expect("create the input topic");
    let g = generate(&Workload {
        seed: 99,
        messages: 300,
        ..Workload::default()
    });
    let want_spend = expected_spend(&g);
    let want_ids = g.truth.events + g.truth.inbound;
    assert!(!want_spend.is_empty());

    let mut run = Run::start(
        &config_text(case, bootstrap, properties),
        Some("smsvoice=info,librdkafka=warn"),
    );
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    produce_all(plain, &input, INPUT_PARTITIONS, &records);

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = run.wait(Duration::ZERO) {
            panic!("{case}: smsvoice run exited: {st}\n{}", run.stderr_tail());
        }
        let spend = spend_of(&read(plain, &format!("{case}.spend")));
        let mut enriched = read(plain, &format!("{case}.enriched-events"));
        enriched.extend(read(plain, &format!("{case}.enriched-inbound")));
        let ids = record_ids(&enriched).len();
        if spend == want_spend && ids == want_ids {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: outputs not complete after 120 s: spend {spend:?}\nwant {want_spend:?}\n\
             {ids} of {want_ids} record ids\n{}",
            run.stderr_tail()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    run.sigterm();
    let log = run.stderr();
    assert!(!log.contains("fatal"), "{case}:\n{log}");
    eprintln!(
        "{case}: {} records through {bootstrap}, spend equals the truth, exit 0 after SIGTERM; {:.1} s",
        g.records.len(),
        start.elapsed().as_secs_f64()
    );
}

/// `smsvoice run` refused by the broker: exit code 3 within
/// [`FATAL_WITHIN`], stderr exactly one line starting with `want`.
fn refused(case: &str, bootstrap: &str, properties: &[(String, String)], want: &str) {
    let mut run = Run::start(&config_text(case, bootstrap, properties), None);
    let status = run.wait(FATAL_WITHIN);
    let took = run.started.elapsed();
    let stderr = run.stderr();
    let Some(status) = status else {
        panic!(
            "{case}: still running after {FATAL_WITHIN:?}\n{}",
            run.stderr_tail()
        );
    };
    assert_eq!(status.code(), Some(3), "{case}: {status}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{case}: one line on stderr:\n{stderr}");
    assert!(
        lines[0].starts_with(want),
        "{case}: stderr\n{}\nshould start with\n{want}",
        lines[0]
    );
    assert!(!stderr.contains(SASL_PASSWORD), "{case}: password printed");
    eprintln!(
        "{case}: exit code {:?} after {:.1} s: {}",
        status.code(),
        took.as_secs_f64(),
        lines[0]
    );
}

/// A named case of [`secure_listeners`].
type Case<'a> = (&'static str, Box<dyn FnOnce() + Send + 'a>);

/// The six cases on one secure broker, at the same time (each on its own
/// topics and group): SCRAM-SHA-512, PLAIN and TLS only work end to end; a
/// wrong SCRAM or PLAIN password and an untrusted broker certificate are
/// fatal. Every case runs to its end; the test fails naming each failed
/// case.
#[test]
fn secure_listeners() {
    let b = KafkaBroker::start_secure();
    let sasl = b.sasl_ssl.clone().expect("SASL_SSL listener");
    let ssl = b.ssl.clone().expect("SSL listener");
    let tls = b.tls.clone().expect("secure broker");
    let plain = b.bootstrap.as_str();
    let scram_ok = b.sasl_properties("SCRAM-SHA-512", SASL_PASSWORD);
    let plain_ok = b.sasl_properties("PLAIN", SASL_PASSWORD);
    let scram_bad = b.sasl_properties("SCRAM-SHA-512", "not-the-password");
    let plain_bad = b.sasl_properties("PLAIN", "not-the-password");
    let tls_ok = tls_properties(&tls.ca);
    let tls_bad = tls_properties(&tls.other_ca);
    let auth_failed = |mechanism: &str| {
        format!(
            "smsvoice run: fatal: Kafka authentication failed (SASL {mechanism} as \"{SASL_USER}\" at {sasl}): SASL authentication error: Authentication failed"
        )
    };
    let untrusted = format!(
        "smsvoice run: fatal: TLS certificate of the broker not trusted (ssl.ca.location {:?} at {ssl}): SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
        tls.other_ca.display().to_string()
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "scram",
            Box::new(|| pipeline_through("scram", &sasl, &scram_ok, plain)),
        ),
        (
            "plain",
            Box::new(|| pipeline_through("plain", &sasl, &plain_ok, plain)),
        ),
        (
            "tls",
            Box::new(|| pipeline_through("tls", &ssl, &tls_ok, plain)),
        ),
        (
            "bad-scram",
            Box::new(|| {
                refused(
                    "bad-scram",
                    &sasl,
                    &scram_bad,
                    &auth_failed("SCRAM-SHA-512"),
                )
            }),
        ),
        (
            "bad-plain",
            Box::new(|| {
                refused(
                    "bad-plain",
                    &sasl,
                    &plain_bad,
                    &format!("{}: Invalid username or password", auth_failed("PLAIN")),
                )
            }),
        ),
        (
            "untrusted",
            Box::new(|| refused("untrusted", &ssl, &tls_bad, &untrusted)),
        ),
    ];
    let failed: Vec<&str> = std::thread::scope(|scope| {
        let running: Vec<_> = cases
            .into_iter()
            .map(|(name, case)| (name, scope.spawn(case)))
            .collect();
        running
            .into_iter()
            .filter_map(|(name, h)| h.join().is_err().then_some(name))
            .collect()
    });
    assert!(
        failed.is_empty(),
        "failed cases: {failed:?} (their panics are above)"
    );
}

/// Connection refused is what a broker being restarted looks like: retried,
/// never fatal (no broker needed).
#[test]
fn refused_connections_are_retried() {
    let bootstrap = format!("127.0.0.1:{}", free_port());
    let mut run = Run::start(
        &config_text(
            "down",
            &bootstrap,
            &[
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.username".into(), SASL_USER.into()),
                ("sasl.password".into(), SASL_PASSWORD.into()),
            ],
        ),
        None,
    );
    if let Some(st) = run.wait(Duration::from_secs(10)) {
        panic!(
            "exited while the broker was down: {st}\n{}",
            run.stderr_tail()
        );
    }
    let stderr = run.stderr();
    assert!(!stderr.contains("fatal"), "{stderr}");
}

/// `kafka.admin.ConfigCommand --alter` of the SCRAM-SHA-512 credential of
/// [`SASL_USER`] through the PLAINTEXT listener `plain`.
fn set_scram_password(plain: &str, password: &str) {
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", support::kafka::kafka_libs().display()))
        .args(["kafka.admin.ConfigCommand", "--bootstrap-server", plain])
        .args([
            "--alter",
            "--entity-type",
            "users",
            "--entity-name",
            SASL_USER,
        ])
        .arg("--add-config")
        .arg(format!(
            "SCRAM-SHA-512=[iterations=4096,password={password}]"
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run kafka.admin.ConfigCommand");
    assert!(
        out.status.success(),
        "ConfigCommand: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A broker restart while the pipeline runs over SCRAM-SHA-512 is retried
/// (the pipeline goes on after it); once the password was changed on the
/// broker, the clients reconnecting after the next restart are refused and
/// the process exits with code 3, naming the cause. This broker is this
/// test's own (it is restarted).
#[test]
fn password_changed_while_running_is_fatal() {
    let mut b = KafkaBroker::start_secure();
    let plain = b.bootstrap.clone();
    let listener = b.sasl_ssl.clone().expect("SASL_SSL listener");
    let case = "rotated";
    let input = format!("{case}.input");
    rt().block_on(ensure_topics(
        &KafkaConfig::new(&plain),
        &[TopicSpec {
            name: input.clone(),
            partitions: INPUT_PARTITIONS,
            compacted: false,
            retain_forever: true,
        }],
    ))
    .expect("create the input topic");
    let g = generate(&Workload {
        seed: 5,
        messages: 200,
        ..Workload::default()
    });
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    let mut run = Run::start(
        &config_text(
            case,
            &listener,
            &b.sasl_properties("SCRAM-SHA-512", SASL_PASSWORD),
        ),
        Some("smsvoice=info,librdkafka=warn"),
    );
    let enriched = |min: usize, what: &str, run: &mut Run| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = run.wait(Duration::ZERO) {
                panic!("{what}: smsvoice run exited: {st}\n{}", run.stderr_tail());
            }
            let n = read(&plain, &format!("{case}.enriched-events")).len();
            if n >= min {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {n} of {min} enriched events after 120 s\n{}",
                run.stderr_tail()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    produce_all(&plain, &input, INPUT_PARTITIONS, &records);
    let before = enriched(g.truth.events, "first stream", &mut run);

    // A restart with the same credentials: retried, not fatal.
    b.stop();
    std::thread::sleep(Duration::from_secs(2));
    b.restart();
    produce_all(&plain, &input, INPUT_PARTITIONS, &records[..40]);
    enriched(before + 1, "after a broker restart", &mut run);

    // The password changes; the next restart drops every connection.
    set_scram_password(&plain, "rotated-secret");
    b.stop();
    b.restart();
    let restarted = Instant::now();
    let status = run.wait(FATAL_WITHIN);
    let stderr = run.stderr();
    let Some(status) = status else {
        panic!(
            "still running {FATAL_WITHIN:?} after the restart\n{}",
            run.stderr_tail()
        );
    };
    assert_eq!(status.code(), Some(3), "{status}\n{}", run.stderr_tail());
    let fatal: Vec<&str> = stderr.lines().filter(|l| l.contains("fatal:")).collect();
    let want = format!(
        "smsvoice run: fatal: Kafka authentication failed (SASL SCRAM-SHA-512 as \"{SASL_USER}\" at {listener}): SASL authentication error: Authentication failed"
    );
    assert_eq!(fatal.len(), 1, "one fatal line:\n{stderr}");
    assert!(
        fatal[0].starts_with(&want),
        "{}\nshould start with\n{want}",
        fatal[0]
    );
    eprintln!(
        "{case}: exit code {:?} {:.1} s after the restart with the new password: {}",
        status.code(),
        restarted.elapsed().as_secs_f64(),
        fatal[0]
    );
}
