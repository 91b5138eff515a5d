//! Kafka infrastructure against Apache Kafka on 127.0.0.1 (installed from
//! Maven Central by `scripts/install-kafka.sh`, one broker per test):
//!
//! * `ensure_topics` creates the pipeline's topics (compacted ones with
//!   their config), is idempotent, and 20,000 records over 4 partitions go
//!   in and come back out intact;
//! * transactions: committed records and offsets are visible to a
//!   `read_committed` consumer, aborted records never are (though they were
//!   written: `read_uncommitted` sees them), and a zombie producer whose
//!   transactional id was taken over is fenced: nothing it sends afterwards
//!   becomes visible;
//! * the test broker itself: data survives a SIGKILL and a restart on the
//!   same log directory.
//!
//! Every wait is bounded; each test prints its duration.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use smsvoice::kafka::client::admin_config;
use smsvoice::kafka::{
    all_topics, consumer_config, ensure_topics, producer_config, KafkaConfig, TopicSpec,
};
use support::kafka::{consume_all, produce_all, KafkaBroker};

const T: Duration = Duration::from_secs(30);

/// Topic configs as the broker describes them.
async fn describe(cfg: &KafkaConfig, topic: &str) -> BTreeMap<String, String> {
    let admin: AdminClient<DefaultClientContext> =
        admin_config(cfg).create().expect("admin client");
    let r = admin
        .describe_configs(
            [ResourceSpecifier::Topic(topic)].iter(),
            &AdminOptions::new().request_timeout(Some(T)),
        )
        .await
        .expect("describe configs");
    r.into_iter()
        .next()
        .expect("one resource")
        .expect("described")
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_round_trip() {
    let start = Instant::now();
    let broker = tokio::task::spawn_blocking(KafkaBroker::start)
        .await
        .expect("broker");
    let mut cfg = KafkaConfig::new(broker.bootstrap.clone());
    cfg.partitions = 3;

    // Every output and internal topic is created, compacted ones with
    // cleanup.policy=compact.
    let specs = all_topics(&cfg);
    let report = tokio::time::timeout(T, ensure_topics(&cfg, &specs))
        .await
        .expect("ensure_topics in time")
        .expect("ensure_topics");
    let mut created = report.created.clone();
    created.sort();
    let mut want: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    want.sort();
    assert_eq!(created, want, "{report:?}");
    for s in specs.iter().filter(|s| s.compacted) {
        let configs = describe(&cfg, &s.name).await;
        assert!(report.created_without_configs.is_empty(), "{report:?}");
        assert_eq!(
            configs.get("cleanup.policy").map(String::as_str),
            Some("compact"),
            "{}: {configs:?}",
            s.name
        );
    }
    // Idempotent: a second run finds them all.
    let again = tokio::time::timeout(T, ensure_topics(&cfg, &specs))
        .await
        .expect("second ensure_topics in time")
        .expect("second ensure_topics");
    assert!(again.created.is_empty(), "{again:?}");
    assert_eq!(again.existing.len(), specs.len());
    assert!(again.existing.values().all(|&n| n == 3), "{again:?}");
    let setup = start.elapsed();

    // 20,000 records over 4 partitions, keyed and not, back intact.
    let topic = "infra.round-trip";
    ensure_topics(
        &cfg,
        &[TopicSpec {
            name: topic.into(),
            partitions: 4,
            compacted: false,
            retain_forever: false,
        }],
    )
    .await
    .expect("round-trip topic");
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..20_000)
        .map(|i| {
            let key = (i % 3 != 0).then(|| format!("+1206555{:04}", i % 10_000).into_bytes());
            let value = format!(
                r#"{{"eventType":"TEXT_DELIVERED","messageId":"m-{i:05}","pad":"{}"}}"#,
                "x".repeat(i % 200)
            )
            .into_bytes();
            (key, value)
        })
        .collect();
    let t0 = Instant::now();
    let produced = {
        let (bootstrap, records) = (broker.bootstrap.clone(), records.clone());
        tokio::task::spawn_blocking(move || produce_all(&bootstrap, topic, 4, &records))
            .await
            .expect("produce task");
        t0.elapsed()
    };
    let t1 = Instant::now();
    let got = {
        let bootstrap = broker.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            consume_all(&bootstrap, topic, 20_000, Duration::from_secs(60), false)
        })
        .await
        .expect("consume task")
    };
    let consumed = t1.elapsed();
    assert_eq!(got.len(), 20_000);
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &got {
        per_partition.entry(r.0).or_default().push(r.1);
    }
    assert_eq!(per_partition.len(), 4);
    for (p, offsets) in &per_partition {
        assert_eq!(offsets.len(), 5_000, "partition {p}");
        let first = offsets[0];
        assert!(
            offsets
                .iter()
                .enumerate()
                .all(|(i, &o)| o == first + i as i64),
            "partition {p}: offsets not contiguous"
        );
    }
    // Record i went to partition i % 4, in order: rebuild and compare.
    let mut rebuilt: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::with_capacity(20_000);
    let by_partition: Vec<Vec<&support::kafka::Consumed>> = (0..4)
        .map(|p| got.iter().filter(|r| r.0 == p).collect())
        .collect();
    for i in 0..20_000usize {
        let r = by_partition[i % 4][i / 4];
        rebuilt.push((r.2.clone(), r.3.clone()));
    }
    assert!(rebuilt == records, "records differ after the round trip");
    eprintln!(
        "apache kafka: topics {setup:?}, produce 20k {produced:?}, consume 20k {consumed:?}, total {:?}",
        start.elapsed()
    );
}

/// Reads the offset the group `group` committed for `topic` partition 0.
fn committed_offset(cfg: &KafkaConfig, group: &str, topic: &str) -> Offset {
    let c: BaseConsumer = consumer_config(cfg, group).create().expect("consumer");
    let mut q = TopicPartitionList::new();
    q.add_partition(topic, 0);
    c.committed_offsets(q, T)
        .expect("committed offsets")
        .find_partition(topic, 0)
        .expect("partition")
        .offset()
}

fn values(records: &[support::kafka::Consumed]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.3).into_owned())
        .collect()
}

fn send_all(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let v = format!("{prefix}-{i:03}");
        p.send(BaseRecord::<str, str>::to(topic).key(&v).payload(&v))
            .map_err(|(e, _)| e)
            .expect("send");
    }
}

/// Committed transactions are visible with their offsets, aborted ones never
/// (to `read_committed`), and a zombie is fenced.
#[test]
fn transactions_commit_abort_and_fence_a_zombie() {
    let start = Instant::now();
    let broker = KafkaBroker::start();
    let mut cfg = KafkaConfig::new(broker.bootstrap.clone());
    cfg.exactly_once = true;
    cfg.transaction_timeout_ms = 20_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spec = |name: &str, partitions| TopicSpec {
        name: name.into(),
        partitions,
        compacted: false,
        retain_forever: false,
    };
    rt.block_on(ensure_topics(
        &cfg,
        &[spec("txn.in", 2), spec("txn.out", 3)],
    ))
    .expect("topics");

    let p: ThreadedProducer<DefaultProducerContext> =
        producer_config(&cfg, Some("infra-txn-0".into()))
            .create()
            .expect("transactional producer");
    p.init_transactions(T).expect("init_transactions");

    // Committed: 100 records plus an input offset.
    let group: BaseConsumer = consumer_config(&cfg, "eos")
        .create()
        .expect("group consumer");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("txn.in", 0, Offset::Offset(7))
        .expect("offset");
    p.begin_transaction().expect("begin");
    send_all(&p, "txn.out", "committed", 100);
    p.send_offsets_to_transaction(&offsets, &group.group_metadata().expect("metadata"), T)
        .expect("send_offsets_to_transaction");
    p.commit_transaction(T).expect("commit_transaction");
    let got = values(&consume_all(&broker.bootstrap, "txn.out", 100, T, true));
    assert_eq!(got.len(), 100, "{got:?}");
    assert!(got.iter().all(|v| v.starts_with("committed-")));
    assert_eq!(committed_offset(&cfg, "eos", "txn.in"), Offset::Offset(7));

    // Aborted: 20 records, flushed to the broker, then the transaction is
    // aborted. read_uncommitted sees them (they are in the log),
    // read_committed never does.
    p.begin_transaction().expect("begin 2");
    send_all(&p, "txn.out", "aborted", 20);
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("txn.in", 0, Offset::Offset(99))
        .expect("offset");
    p.send_offsets_to_transaction(&offsets, &group.group_metadata().expect("metadata"), T)
        .expect("send_offsets_to_transaction");
    p.flush(T).expect("flush");
    let uncommitted = values(&consume_all(&broker.bootstrap, "txn.out", 120, T, false));
    assert_eq!(
        uncommitted
            .iter()
            .filter(|v| v.starts_with("aborted-"))
            .count(),
        20,
        "the aborted records were not written: the test would prove nothing"
    );
    p.abort_transaction(T).expect("abort_transaction");
    // A committed transaction after the aborted one, so read_committed
    // reads past the abort marker.
    p.begin_transaction().expect("begin 3");
    send_all(&p, "txn.out", "after", 10);
    p.commit_transaction(T).expect("commit 3");
    let got = values(&consume_all(&broker.bootstrap, "txn.out", 110, T, true));
    assert_eq!(got.len(), 110, "{got:?}");
    assert!(!got.iter().any(|v| v.starts_with("aborted-")), "{got:?}");
    assert_eq!(got.iter().filter(|v| v.starts_with("after-")).count(), 10);
    assert_eq!(
        committed_offset(&cfg, "eos", "txn.in"),
        Offset::Offset(7),
        "the aborted transaction's offset must not be stored"
    );

    // Zombie: a second producer with the same transactional id takes over
    // (a restarted instance). The first one's open transaction is aborted by
    // the broker and its next commit fails as fenced.
    p.begin_transaction().expect("begin zombie");
    send_all(&p, "txn.out", "zombie", 5);
    p.flush(T).expect("flush zombie");
    let successor: ThreadedProducer<DefaultProducerContext> =
        producer_config(&cfg, Some("infra-txn-0".into()))
            .create()
            .expect("successor");
    successor.init_transactions(T).expect("successor init");
    send_all(&p, "txn.out", "zombie-late", 5);
    let fenced = p.commit_transaction(T);
    let err = fenced.expect_err("a fenced zombie must not commit");
    let text = err.to_string();
    assert!(
        text.to_lowercase().contains("fenced") || text.contains("epoch"),
        "zombie commit failed, but not as fenced: {text}"
    );
    successor.begin_transaction().expect("successor begin");
    send_all(&successor, "txn.out", "successor", 5);
    successor.commit_transaction(T).expect("successor commit");
    let got = values(&consume_all(&broker.bootstrap, "txn.out", 115, T, true));
    assert!(!got.iter().any(|v| v.starts_with("zombie")), "{got:?}");
    assert_eq!(
        got.iter().filter(|v| v.starts_with("successor-")).count(),
        5
    );
    assert_eq!(got.len(), 115, "{got:?}");
    eprintln!("apache kafka transactions: {:?} ({text})", start.elapsed());
}

/// The test broker keeps its data across a SIGKILL and a restart on the
/// same log directory and ports (what the crash tests rely on).
#[test]
fn broker_survives_sigkill_and_restart() {
    let mut broker = KafkaBroker::start();
    let cfg = KafkaConfig::new(broker.bootstrap.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(ensure_topics(
        &cfg,
        &[TopicSpec {
            name: "restart".into(),
            partitions: 2,
            compacted: false,
            retain_forever: true,
        }],
    ))
    .expect("topic");
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..1_000)
        .map(|i| (None, format!("r{i}").into_bytes()))
        .collect();
    produce_all(&broker.bootstrap, "restart", 2, &records);
    let before = broker.bootstrap.clone();
    broker.kill();
    assert!(!support::kafka::metadata_ok(
        &before,
        Duration::from_secs(1)
    ));
    broker.restart();
    assert_eq!(broker.bootstrap, before);
    let got = consume_all(&broker.bootstrap, "restart", 1_000, T, false);
    assert_eq!(got.len(), 1_000);
    broker.stop();
    broker.restart();
    assert_eq!(
        consume_all(&broker.bootstrap, "restart", 1_000, T, false).len(),
        1_000
    );
}

/// `smsvoice mock-cluster` (the in-process mock as a command, for trying
/// the runtime without a broker): writes its port file and stops when its
/// stdin closes.
#[test]
fn mock_cluster_process_writes_port_file_and_stops_on_stdin_close() {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let port_file = dir.path().join("bootstrap");
    let mut child = Command::new(env!("CARGO_BIN_EXE_smsvoice"))
        .args(["mock-cluster", "--brokers", "2", "--port-file"])
        .arg(&port_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mock-cluster");
    let mut line = [0u8; 10];
    child
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut line)
        .expect("bootstrap line");
    assert_eq!(&line, b"bootstrap=");
    let content = std::fs::read_to_string(&port_file).expect("port file");
    let servers = content
        .trim()
        .strip_prefix("bootstrap=")
        .expect("bootstrap= line");
    assert_eq!(servers.split(',').count(), 2, "{content}");
    assert!(
        servers.split(',').all(|s| s.starts_with("127.0.0.1:")),
        "{content}"
    );
    assert!(support::kafka::metadata_ok(servers, T));
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mock-cluster did not stop on stdin close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
