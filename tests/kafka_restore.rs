//! Message owners restore from their compacted state changelog, not from
//! history: `smsvoice run` against Apache Kafka on loopback (installed by
//! `scripts/install-kafka.sh`), at least once. Instance `a` processes the
//! first half of a generated stream and is SIGKILLed; instance `b`, a
//! fresh process, takes over every partition: each message owner must
//! restore from `message-state` (records read there, none of
//! `events-by-message` below the committed offset, no replay from the
//! start), and spend must still equal the generator's truth once the
//! second half and a repeat of the first records are processed.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smsvoice::config::EMBEDDED_DEFAULT;
use smsvoice::generate::{generate, Workload};
use smsvoice::kafka::{ensure_topics, KafkaConfig, TopicSpec};

use support::kafka::{consume_all, kafka_or_skip, produce_all, KafkaBroker};
use support::outputs::{expected_spend, spend_of};

const INPUT: &str = "restore-events";
const PARTITIONS: i32 = 4;

fn start(config: &Path, name: &str, dir: &Path) -> (Child, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "smsvoice=info")
        .env("SMSVOICE_INSTANCE_ID", name)
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("log handle"))
        .stderr(f)
        .spawn()
        .expect("start smsvoice run");
    (child, log)
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> Option<String>, log: &Path) {
    let start = Instant::now();
    loop {
        match check() {
            None => return,
            Some(why) if start.elapsed() > timeout => panic!(
                "not converged after {timeout:?}: {why}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
            Some(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// The `key=value` fields of the `message owner state restored` lines.
fn restores(log: &Path) -> Vec<BTreeMap<String, String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("message owner state restored"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect()
        })
        .collect()
}

#[test]
fn message_owners_restore_from_the_changelog_and_read_only_the_tail() {
    if !kafka_or_skip("message owners restore from the changelog") {
        return;
    }
    let broker = KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(ensure_topics(
        &KafkaConfig::new(&bootstrap),
        &[TopicSpec {
            name: INPUT.into(),
            partitions: PARTITIONS,
            compacted: false,
            retain_forever: true,
        }],
    ))
    .expect("input topic");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("smsvoice.toml");
    std::fs::write(
        &cfg,
        format!(
            "{EMBEDDED_DEFAULT}\n[kafka]\nbootstrap_servers = {bootstrap:?}\ngroup_id = \"restore\"\n\
             partitions = {PARTITIONS}\ncommit_interval_ms = 500\nshutdown_grace_ms = 20000\n\
             [kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n"
        ),
    )
    .expect("config");
    let g = generate(&Workload {
        seed: 515,
        messages: 8_000,
        ..Workload::default()
    });
    let want = expected_spend(&g);
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        g.records.iter().map(|r| (None, r.clone())).collect();
    let half = records.len() / 2;
    let half = half - half % PARTITIONS as usize;

    let (mut a, log_a) = start(&cfg, "a", dir.path());
    produce_all(&bootstrap, INPUT, PARTITIONS, &records[..half]);
    // Every message owner partition has committed state at least once.
    wait_until(
        Duration::from_secs(120),
        || {
            let state = consume_all(
                &bootstrap,
                "smsvoice.internal.message-state",
                usize::MAX,
                Duration::from_secs(3),
                true,
            );
            let parts: std::collections::BTreeSet<i32> = state.iter().map(|r| r.0).collect();
            (parts.len() < PARTITIONS as usize).then(|| format!("state in partitions {parts:?}"))
        },
        &log_a,
    );
    a.kill().expect("SIGKILL");
    a.wait().expect("wait");
    produce_all(&bootstrap, INPUT, PARTITIONS, &records[half..]);
    // A repeat of the first records (a router replay): deduplicated against
    // the restored ledgers.
    produce_all(
        &bootstrap,
        INPUT,
        PARTITIONS,
        &records[..PARTITIONS as usize * 50],
    );

    let (mut b, log_b) = start(&cfg, "b", dir.path());
    wait_until(
        Duration::from_secs(180),
        || {
            let got = spend_of(&consume_all(
                &bootstrap,
                "smsvoice.spend",
                usize::MAX,
                Duration::from_secs(3),
                false,
            ));
            (got != want).then(|| format!("spend {got:?}\nwant {want:?}"))
        },
        &log_b,
    );
    let lines = restores(&log_b);
    let mut parts = std::collections::BTreeSet::new();
    for l in &lines {
        let n = |k: &str| -> u64 {
            l.get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {l:?}"))
        };
        assert!(n("changelog_records") > 0, "read from the changelog: {l:?}");
        assert_eq!(
            n("tail_records"),
            0,
            "nothing below the committed offset: {l:?}"
        );
        assert_eq!(
            l.get("from_start").map(String::as_str),
            Some("false"),
            "{l:?}"
        );
        assert_eq!(l.get("through"), l.get("committed"), "{l:?}");
        parts.insert(n("partition"));
    }
    assert_eq!(
        parts.len(),
        PARTITIONS as usize,
        "every partition restored from the changelog: {lines:?}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status();
    let st = b.wait().expect("wait b");
    assert!(st.success(), "b after SIGTERM: {st}");
    // Spend is still exact after b's last commit.
    let got = spend_of(&consume_all(
        &bootstrap,
        "smsvoice.spend",
        usize::MAX,
        Duration::from_secs(3),
        false,
    ));
    assert_eq!(got, want);
    eprintln!("b restored: {lines:?}");
}
