//! Owners restore from compacted state, not from history: `smsvoice run`
//! against Apache Kafka on loopback (installed by
//! `scripts/install-kafka.sh`), at least once. Instance `a` processes the
//! first half of a generated stream and is SIGKILLed; instance `b`, a
//! fresh process, takes over every partition: each message owner must
//! restore from `message-state` (records read there, none of
//! `events-by-message` below the committed offset, no replay from the
//! start), each opt-out owner from the opt-out changelog (together exactly
//! the changelog's entries as this test reads them, each partition its
//! share), and spend and the opt-out table must still equal the generator's
//! truth once the second half and a repeat of the first records are
//! processed. Then two tests of rebalances landing in a wait: a restore
//! that outlasts `max.poll.interval.ms`, and a revocation served inside a
//! transaction.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smsvoice::config::EMBEDDED_DEFAULT;

use support::kafka::{consume_all, consume_to_end, kafka_or_skip, produce_all, KafkaBroker};
use support::outputs::{latest, optout_table, spend_of, stream, Stream};

const INPUT: &str = "restore-events";
const PARTITIONS: i32 = 4;
const INBOUND: &str = "smsvoice.internal.inbound-by-number";

/// Every record of `topic` (read uncommitted, no group).
fn read(bootstrap: &str, topic: &str) -> Vec<support::kafka::Consumed> {
    consume_to_end(bootstrap, topic, false)
}

/// FNV-1a (64-bit) of `key` modulo `partitions`, written out here: the
/// partition the router must send a customer's inbound messages to, and by
/// which an opt-out owner picks its entries out of the changelog.
fn fnv_partition(key: &[u8], partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % partitions as u64) as i32
}

/// How many partitions of `topic` have an offset committed by `group`.
fn committed_partitions(bootstrap: &str, group: &str, topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
    {
        Ok(c) => c,
        Err(_) => return 0,
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| {
            t.elements()
                .iter()
                .filter(|e| matches!(e.offset(), rdkafka::Offset::Offset(_)))
                .count()
        })
        .unwrap_or(0)
}

/// Writes the tests' configuration (the embedded default, this broker, the
/// input topic, group `group`) plus `extra` TOML to `dir`/smsvoice.toml.
fn write_config(dir: &Path, bootstrap: &str, group: &str, extra: &str) -> PathBuf {
    let cfg = dir.join("smsvoice.toml");
    std::fs::write(
        &cfg,
        format!(
            "{EMBEDDED_DEFAULT}\n[kafka]\nbootstrap_servers = {bootstrap:?}\ngroup_id = {group:?}\n\
             partitions = {PARTITIONS}\ncommit_interval_ms = 500\nshutdown_grace_ms = 20000\n\
             [kafka.input_topics]\nevents = [{INPUT:?}]\ninbound = [{INPUT:?}]\n{extra}"
        ),
    )
    .expect("config");
    cfg
}

fn start(config: &Path, name: &str, dir: &Path) -> (Running, PathBuf) {
    start_with(config, name, dir, &[])
}

/// [`start`] with more environment variables.
/// A `smsvoice run` child, killed when dropped (a failing test leaves no
/// instance running).
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Running {
    /// Stops the instance with SIGTERM; its exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        self.0.wait().expect("wait")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_with(config: &Path, name: &str, dir: &Path, env: &[(&str, &str)]) -> (Running, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .envs(env.iter().copied())
        .args(["run", "--config"])
        .env("SMSVOICE_HTTP__LISTEN", "127.0.0.1:0")
        .arg(config)
        .env("RUST_LOG", "smsvoice=info")
        .env("SMSVOICE_INSTANCE_ID", name)
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("log handle"))
        .stderr(f)
        .spawn()
        .expect("start smsvoice run");
    (Running(child), log)
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

/// The `key=value` fields of the log lines containing `what`.
fn restores(log: &Path, what: &str) -> Vec<BTreeMap<String, String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect()
        })
        .collect()
}

/// A fresh broker with the input topic, its bootstrap address, and a
/// directory for the instances' configuration and logs.
fn broker_with_input() -> (KafkaBroker, String, tempfile::TempDir) {
    let broker = KafkaBroker::start();
    let bootstrap = broker.bootstrap.clone();
    support::kafka::create_topic(&bootstrap, INPUT, PARTITIONS);
    (broker, bootstrap, tempfile::tempdir().expect("tempdir"))
}

#[test]
fn owners_restore_from_their_changelogs_and_read_only_the_tail() {
    if !kafka_or_skip("message owners restore from the changelog") {
        return;
    }
    let (_broker, bootstrap, dir) = broker_with_input();
    let cfg = write_config(dir.path(), &bootstrap, "restore", "");
    let Stream { g, want, records } = stream(515, 8_000);
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
    // Every opt-out owner partition has committed (so each restores).
    wait_until(
        Duration::from_secs(120),
        || {
            let n = committed_partitions(&bootstrap, "restore.optouts", INBOUND);
            (n < PARTITIONS as usize).then(|| format!("{n} opt-out partitions committed"))
        },
        &log_a,
    );
    a.kill().expect("SIGKILL");
    a.wait().expect("wait");
    // The opt-out table as a left it, read independently of smsvoice.
    let optouts_at_kill = latest(&read(&bootstrap, "smsvoice.optout-changelog"));
    assert!(
        !optouts_at_kill.is_empty(),
        "a decided opt-outs before it was killed"
    );
    let inbound = read(&bootstrap, INBOUND);
    assert!(!inbound.is_empty());
    for r in &inbound {
        let key = r.2.as_deref().unwrap_or_default();
        assert_eq!(
            r.0,
            fnv_partition(key, PARTITIONS),
            "inbound for {} on partition {}",
            String::from_utf8_lossy(key),
            r.0
        );
    }
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
            let got = spend_of(&read(&bootstrap, "smsvoice.spend"));
            (got != want).then(|| format!("spend {got:?}\nwant {want:?}"))
        },
        &log_b,
    );
    wait_until(
        Duration::from_secs(60),
        || {
            let got = optout_table(&read(&bootstrap, "smsvoice.optout-changelog"));
            (got != g.truth.optouts)
                .then(|| format!("opt-outs {got:?}\nwant {:?}", g.truth.optouts))
        },
        &log_b,
    );
    // b's opt-out owners restored, between them, every entry a left, each
    // partition once (its first assignment; b is alone).
    let optout_lines = restores(&log_b, "opt-out owner state restored");
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    for l in &optout_lines {
        let n = |k: &str| -> u64 {
            l.get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {l:?}"))
        };
        // At least once, the positions below the committed offset are read
        // for the repeat check (a's routers' records are there).
        assert!(n("positions_read") > 0, "positions read: {l:?}");
        first.entry(n("partition")).or_insert(n("entries"));
    }
    assert_eq!(first.len(), PARTITIONS as usize, "{optout_lines:?}");
    assert_eq!(
        first.values().sum::<u64>(),
        optouts_at_kill.len() as u64,
        "entries restored per partition {first:?}, changelog keys {}",
        optouts_at_kill.len()
    );
    assert!(
        first.values().filter(|&&e| e > 0).count() > 1,
        "entries spread over partitions: {first:?}"
    );
    let lines = restores(&log_b, "message owner state restored");
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
    let st = b.stop();
    assert!(st.success(), "b after SIGTERM: {st}");
    // Spend is still exact after b's last commit.
    let got = spend_of(&read(&bootstrap, "smsvoice.spend"));
    assert_eq!(got, want);
    eprintln!("b restored: {lines:?}");
}

/// A restore that outlasts `max.poll.interval.ms` keeps the member in the
/// group: the stage's consumer is polled, paused, while the partition is
/// restored on another thread. Every restore here is made to last 15 s
/// (`DEBUG_SMSVOICE_RESTORE_DELAY_MS`, debug builds) against a poll
/// interval of 6 s: a loop that did not poll would be evicted, rejoin, be
/// assigned again and restore again (one more "partitions assigned" line
/// per stage each time), and librdkafka would log the exceeded interval.
/// At least once.
#[test]
fn a_restore_longer_than_the_poll_interval_keeps_the_member_in_the_group() {
    if !kafka_or_skip("a long restore keeps polling") {
        return;
    }
    long_restore(false);
}

/// [`a_restore_longer_than_the_poll_interval_keeps_the_member_in_the_group`]
/// exactly once: every stage transactional, spend read `read_committed`.
#[test]
fn exactly_once_a_restore_longer_than_the_poll_interval_keeps_the_member_in_the_group() {
    if !kafka_or_skip("a long exactly-once restore keeps polling") {
        return;
    }
    long_restore(true);
}

fn long_restore(exactly_once: bool) {
    let (_broker, bootstrap, dir) = broker_with_input();
    let group = if exactly_once { "slow-eos" } else { "slow" };
    let cfg = write_config(
        dir.path(),
        &bootstrap,
        group,
        "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"6000\"\n",
    );
    let Stream { want, records, .. } = stream(616, 1_000);
    produce_all(&bootstrap, INPUT, PARTITIONS, &records);
    let (mut c, log) = start_with(
        &cfg,
        group,
        dir.path(),
        &[
            ("DEBUG_SMSVOICE_RESTORE_DELAY_MS", "15000"),
            (
                "SMSVOICE_KAFKA__EXACTLY_ONCE",
                if exactly_once { "true" } else { "false" },
            ),
        ],
    );
    wait_until(
        Duration::from_secs(240),
        || {
            let got = spend_of(&consume_to_end(&bootstrap, "smsvoice.spend", exactly_once));
            (got != want).then(|| format!("spend {got:?}\nwant {want:?}"))
        },
        &log,
    );
    // Past two more poll intervals: an eviction would show by now.
    std::thread::sleep(Duration::from_secs(12));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut assigned: BTreeMap<String, usize> = BTreeMap::new();
    for l in text.lines().filter(|l| l.contains("partitions assigned")) {
        let stage = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("stage="))
            .unwrap_or("?")
            .trim_matches('"')
            .to_owned();
        *assigned.entry(stage).or_default() += 1;
    }
    for stage in ["router", "messages", "optouts", "totals"] {
        assert_eq!(
            assigned.get(stage).copied(),
            Some(1),
            "stage {stage} assigned once (alone in its group, never evicted): {assigned:?}\n{text}"
        );
    }
    assert!(
        !text.to_ascii_lowercase().contains("poll interval"),
        "the poll interval was exceeded:\n{text}"
    );
    let st = c.stop();
    assert!(st.success(), "after SIGTERM: {st}");
}

/// A revocation served by a poll made *inside* a transaction (a wait on a
/// full producer queue, which polls the consumer paused) must abort that
/// transaction, not commit it: once librdkafka has given the partition up
/// and the member has rejoined, the broker accepts its offsets with the new
/// generation while the partition's new owner already reads it from the
/// last commit. Instance `a` reads a stream fed continuously; its commit
/// points are then made to wait first as their sends would on a full queue
/// (`DEBUG_SMSVOICE_STALL_FILE`, debug builds) while instance `b` joins,
/// so `a`'s router, which has read every partition since its last commit,
/// serves the revocation inside such a wait with its transaction open (the
/// stages downstream of it too, when they have work in flight). Every enriched
/// record must then be committed exactly once (`read_committed`), spend
/// must equal the generator's truth, and `a`'s log must show a transaction
/// aborted for a revocation (else the window was not exercised and the test
/// proved nothing).
#[test]
fn exactly_once_a_revocation_during_a_wait_in_a_transaction_aborts_it() {
    if !kafka_or_skip("a revocation inside a transaction") {
        return;
    }
    let (_broker, bootstrap, dir) = broker_with_input();
    let group = "stall-eos";
    let cfg = write_config(
        dir.path(),
        &bootstrap,
        group,
        "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n",
    );
    let Stream { g, want, records } = stream(717, 2_000);
    let (first, rest) = records.split_at(records.len() / 4);
    produce_all(&bootstrap, INPUT, PARTITIONS, first);
    let stall = dir.path().join("stall");
    let stall_env = stall.to_str().expect("utf-8 path");
    let eos = ("SMSVOICE_KAFKA__EXACTLY_ONCE", "true");
    let (mut a, log_a) = start_with(
        &cfg,
        "a",
        dir.path(),
        &[eos, ("DEBUG_SMSVOICE_STALL_FILE", stall_env)],
    );
    let has = |log: &Path, what: &str| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(what)
    };
    let routing = "stage=\"router\" partitions=[(\"restore-events\"";
    wait_until(
        Duration::from_secs(120),
        || (!has(&log_a, routing)).then(|| "a's router has no partition yet".to_owned()),
        &log_a,
    );
    // A stream that keeps coming: a's router is always inside a
    // transaction.
    let feeder = {
        let (bootstrap, rest) = (bootstrap.clone(), rest.to_vec());
        std::thread::spawn(move || {
            for c in rest.chunks(rest.len() / 40 + 1) {
                produce_all(&bootstrap, INPUT, PARTITIONS, c);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stall, b"").expect("stall file");
    std::thread::sleep(Duration::from_secs(1));
    let (mut b, log_b) = start_with(&cfg, "b", dir.path(), &[eos]);
    // b's router takes partitions over: a's router has revoked them, in
    // the wait (and so have a's other stages, in theirs, if they were
    // sending).
    wait_until(
        Duration::from_secs(25),
        || (!has(&log_b, routing)).then(|| "b's router has no partition yet".to_owned()),
        &log_b,
    );
    std::thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(&stall).expect("remove the stall file");
    feeder.join().expect("feeder");
    let logs = || {
        format!(
            "--- a\n{}\n--- b\n{}",
            std::fs::read_to_string(&log_a).unwrap_or_default(),
            std::fs::read_to_string(&log_b).unwrap_or_default()
        )
    };
    let start = Instant::now();
    let want_ids = g.truth.events + g.truth.inbound;
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let spend = spend_of(&consume_to_end(&bootstrap, "smsvoice.spend", true));
        ids.clear();
        for topic in ["smsvoice.enriched-events", "smsvoice.enriched-inbound"] {
            for r in consume_to_end(&bootstrap, topic, true) {
                let id = serde_json::from_slice::<serde_json::Value>(&r.3)
                    .ok()
                    .and_then(|j| j["recordId"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| panic!("no recordId in {}", String::from_utf8_lossy(&r.3)));
                *ids.entry(id).or_default() += 1;
            }
        }
        let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            repeated.is_empty(),
            "committed twice under exactly-once: {repeated:?}\n{}",
            logs()
        );
        if spend == want && ids.len() == want_ids {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "not converged: {} of {want_ids} enriched records; spend {spend:?}\nwant {want:?}\n{}",
            ids.len(),
            logs()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let text_a = std::fs::read_to_string(&log_a).unwrap_or_default();
    let aborted = text_a
        .lines()
        .filter(|l| l.contains("revoked with the transaction open"))
        .count();
    assert!(
        aborted > 0,
        "a aborted no transaction for a revocation: the window was not exercised\n{}",
        logs()
    );
    eprintln!(
        "{} enriched records, each once; a aborted {aborted} transaction(s) for a revocation",
        ids.len()
    );
    for c in [&mut a, &mut b] {
        let st = c.stop();
        assert!(st.success(), "after SIGTERM: {st}\n{}", logs());
    }
}
