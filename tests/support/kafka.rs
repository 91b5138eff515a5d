//! Kafka brokers for integration tests, as child processes on 127.0.0.1:
//!
//! * [`Tansu`]: the tansu broker (Kafka protocol, in-memory storage by
//!   default, no transactions). Install it with `scripts/install-tansu.sh`; found through
//!   `TANSU_BIN` or `${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}/tansu/bin/tansu`.
//! * [`MockClusterProcess`]: `smsvoice mock-cluster` (librdkafka's mock
//!   cluster; transaction calls accepted, but aborted records stay visible).
//!
//! and [`produce_all`] / [`consume_all`] to write and read topics.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use smsvoice::kafka::{consumer_config, producer_config, KafkaConfig};

/// How long a broker may take to answer its first metadata request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried when the broker dies at start (port taken meanwhile).
const START_TRIES: usize = 3;

/// Path of the tansu binary: `TANSU_BIN`, else the install script's cache.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("SMSVOICE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/smsvoice-tools")
        });
    tools.join("tansu/bin/tansu")
}

/// True when the tansu binary is installed.
pub fn tansu_available() -> bool {
    tansu_bin().is_file()
}

/// For benchmarks: false, after printing how to install tansu, when it is
/// not installed (`what` names the measurement skipped).
pub fn tansu_or_skip(what: &str) -> bool {
    if tansu_available() {
        return true;
    }
    println!(
        "{what}: skipped, tansu not found at {} (run `bash scripts/install-tansu.sh` or set TANSU_BIN)",
        tansu_bin().display()
    );
    false
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// True when a metadata request to `bootstrap` succeeds within `timeout`.
pub fn metadata_ok(bootstrap: &str, timeout: Duration) -> bool {
    let c: BaseConsumer = match consumer_config(&KafkaConfig::new(bootstrap), "probe")
        .set("log_level", "0")
        .create()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    c.fetch_metadata(None, timeout)
        .is_ok_and(|m| !m.brokers().is_empty())
}

/// Tansu's storage engine: `SMSVOICE_TANSU_STORAGE` = `memory` (default) or
/// `sqlite`: a sqlite file beside the broker log (tansu opens it relative to
/// its working directory, which is the log's directory). The sqlite engine
/// stores single records and fetches by record offset, but one query at a
/// time: about 13k records/s produced or consumed here (`cargo bench --bench
/// bare_consumer`), too slow for the runtime tests; it is there to check
/// whether a loss seen with the memory engine is the broker's.
fn storage_url(log: &std::path::Path) -> String {
    match std::env::var("SMSVOICE_TANSU_STORAGE").as_deref() {
        Ok("sqlite") => format!(
            "sqlite://{}",
            log.with_extension("db")
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        _ => "memory://tansu/".to_owned(),
    }
}

/// A running tansu broker; killed on drop.
pub struct Tansu {
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
    child: Child,
    log: PathBuf,
}

impl Tansu {
    /// Starts tansu on a free port and waits until it answers a metadata
    /// request. Panics, naming `scripts/install-tansu.sh`, when the binary
    /// is missing.
    pub fn start() -> Tansu {
        let bin = tansu_bin();
        assert!(
            bin.is_file(),
            "tansu not found at {}: run `bash scripts/install-tansu.sh` (or set TANSU_BIN)",
            bin.display()
        );
        let mut last = String::new();
        for _ in 0..START_TRIES {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let log = std::env::temp_dir()
                .join(format!("smsvoice-tansu-{}-{port}.log", std::process::id()));
            let out = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
            let err = out
                .try_clone()
                .unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
            let mut child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", &storage_url(&log)])
                .env("RUST_LOG", "warn")
                .current_dir(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let bootstrap = format!("127.0.0.1:{port}");
            let start = Instant::now();
            while start.elapsed() < READY_TIMEOUT {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "tansu exited with {status}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if metadata_ok(&bootstrap, Duration::from_millis(500)) {
                    return Tansu {
                        bootstrap,
                        child,
                        log,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last.is_empty() {
                last = format!(
                    "tansu did not answer within {READY_TIMEOUT:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        panic!("{last}");
    }

    /// The broker's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        for ext in ["db", "db-wal", "db-shm"] {
            let _ = std::fs::remove_file(self.log.with_extension(ext));
        }
    }
}

/// `smsvoice mock-cluster` as a child process; killed on drop (and it stops
/// by itself when this process dies, since its stdin is a pipe from here).
pub struct MockClusterProcess {
    /// The cluster's `bootstrap.servers`.
    pub bootstrap: String,
    child: Child,
}

impl MockClusterProcess {
    /// Starts a mock cluster of `brokers` brokers with `topics`
    /// (`NAME:PARTITIONS`) created.
    pub fn start(brokers: i32, topics: &[&str]) -> MockClusterProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsvoice"));
        cmd.args(["mock-cluster", "--brokers", &brokers.to_string()]);
        for t in topics {
            cmd.args(["--topic", t]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start smsvoice mock-cluster: {e}"));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("mock-cluster stdout not captured"));
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let bootstrap = match (read, line.trim().strip_prefix("bootstrap=")) {
            (Ok(_), Some(b)) if !b.is_empty() => b.to_owned(),
            (r, _) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("smsvoice mock-cluster printed {line:?} ({r:?}), exit {status:?}");
            }
        };
        let start = Instant::now();
        while !metadata_ok(&bootstrap, Duration::from_millis(500)) {
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "mock cluster at {bootstrap} does not answer"
            );
        }
        MockClusterProcess { bootstrap, child }
    }
}

impl Drop for MockClusterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct CountErrors(Arc<AtomicUsize>);

impl ClientContext for CountErrors {}

impl ProducerContext for CountErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("produce_all: delivery failed: {e}");
            }
        }
    }
}

/// Writes `records` (key, value) to `topic`, record `i` to partition
/// `i % partitions`, with the pipeline's producer settings (idempotent,
/// acks=all), and waits until every record is acknowledged. Panics on any
/// delivery error.
pub fn produce_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
) {
    let n = partitions.max(1) as usize;
    produce_to(
        bootstrap,
        topic,
        records
            .iter()
            .enumerate()
            .map(|(i, (k, v))| ((i % n) as i32, k.as_deref(), v.as_slice())),
    );
}

/// Writes (partition, key, value) records to `topic` as [`produce_all`] does.
pub fn produce_to<'a>(
    bootstrap: &str,
    topic: &str,
    records: impl Iterator<Item = (i32, Option<&'a [u8]>, &'a [u8])>,
) {
    let errors = Arc::new(AtomicUsize::new(0));
    let p: ThreadedProducer<CountErrors> = producer_config(&KafkaConfig::new(bootstrap), None)
        .create_with_context(CountErrors(errors.clone()))
        .unwrap_or_else(|e| panic!("producer: {e}"));
    for (partition, key, value) in records {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(value)
            .partition(partition);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        }
    }
    p.flush(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("flush {topic}: {e}"));
    let n = errors.load(Ordering::Relaxed);
    assert_eq!(n, 0, "{n} records to {topic} were not delivered");
}

/// One consumed record: partition, offset, key, value, headers.
pub type Consumed = (i32, i64, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

/// Reads `topic` from the beginning of every partition (no consumer group)
/// until `expected_count` records arrived and then 500 ms passed without
/// another (so extra records are seen too), or until `timeout`. Returns the
/// records sorted by (partition, offset). `read_committed` sets
/// `isolation.level=read_committed`.
pub fn consume_all(
    bootstrap: &str,
    topic: &str,
    expected_count: usize,
    timeout: Duration,
    read_committed: bool,
) -> Vec<Consumed> {
    let start = Instant::now();
    let mut cfg = KafkaConfig::new(bootstrap);
    cfg.exactly_once = read_committed;
    let c: BaseConsumer = consumer_config(&cfg, "test-reader")
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let partitions = loop {
        match c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => {
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map_or(0, |t| t.partitions().len());
                if n > 0 {
                    break n as i32;
                }
            }
            Err(e) if start.elapsed() > timeout => panic!("metadata of {topic}: {e}"),
            Err(_) => {}
        }
        assert!(start.elapsed() < timeout, "topic {topic} has no partitions");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap_or_else(|e| panic!("assign {topic}: {e}"));
    }
    c.assign(&tpl)
        .unwrap_or_else(|e| panic!("assign {topic}: {e}"));
    let mut out: Vec<Consumed> = Vec::with_capacity(expected_count.min(1 << 16));
    let mut last = Instant::now();
    while start.elapsed() < timeout {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.partition(),
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                    headers,
                ));
                last = Instant::now();
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {
                if out.len() >= expected_count && last.elapsed() > Duration::from_millis(500) {
                    break;
                }
            }
        }
    }
    out.sort_by_key(|r| (r.0, r.1));
    out
}
