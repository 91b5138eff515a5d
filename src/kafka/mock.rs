//! librdkafka's mock cluster, in process: real Kafka-protocol brokers on
//! loopback TCP (127.0.0.1, ephemeral ports) with produce, fetch, consumer
//! groups and offset commits, for tests and demos.
//!
//! Limits (librdkafka 2.12, read in its `rdkafka_mock*.c` and checked by the
//! tests below):
//!
//! * **transactions are accepted but not implemented**: InitProducerId,
//!   AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn all
//!   answer OK, but no transaction markers are written (a `read_committed`
//!   consumer sees the records of aborted transactions: the last stable
//!   offset is the high watermark and the aborted list is always empty) and
//!   the offsets of `send_offsets_to_transaction` are not stored. A
//!   transactional producer runs against it; exactly-once *semantics* cannot
//!   be verified on it.
//! * about 5 MB of records are kept per partition (older ones are dropped);
//! * the CreateTopics API is not implemented: topics are auto-created with 4
//!   partitions on first use, or created with
//!   [`MockClusterHandle::create_topic`] / `smsvoice mock-cluster --topic`;
//! * the first rebalance of a consumer group is delayed by 3 s.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

use super::ClientError;

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<(), String>>,
    },
}

/// A running mock cluster; stopped (its brokers closed) on drop.
///
/// The cluster lives on a thread of its own, so the handle can be sent
/// between threads and held by async tasks.
pub struct MockClusterHandle {
    bootstrap: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockClusterHandle")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

/// Starts a mock cluster of `brokers` brokers (at least 1) on 127.0.0.1.
pub fn start_mock_cluster(brokers: i32) -> Result<MockClusterHandle, ClientError> {
    if brokers < 1 {
        return Err(ClientError::Config(format!(
            "a mock cluster needs at least 1 broker, not {brokers}"
        )));
    }
    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
    let thread = std::thread::Builder::new()
        .name("kafka-mock-cluster".into())
        .spawn(move || {
            let cluster = match MockCluster::new(brokers) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
            // Serves commands until every sender is gone (the handle dropped).
            for cmd in cmd_rx {
                match cmd {
                    Command::CreateTopic {
                        name,
                        partitions,
                        reply,
                    } => {
                        let replication = brokers.min(3);
                        let r = cluster
                            .create_topic(&name, partitions, replication)
                            .map_err(|e| e.to_string());
                        let _ = reply.send(r);
                    }
                }
            }
            drop(cluster);
        })
        .map_err(|e| ClientError::MockCluster(format!("cannot start thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(bootstrap)) => {
            tracing::info!(%bootstrap, brokers, "mock Kafka cluster started");
            Ok(MockClusterHandle {
                bootstrap,
                commands: Some(cmd_tx),
                thread: Some(thread),
            })
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(ClientError::MockCluster(e))
        }
        Err(_) => {
            let _ = thread.join();
            Err(ClientError::MockCluster(
                "mock cluster thread ended before it started".into(),
            ))
        }
    }
}

impl MockClusterHandle {
    /// The `bootstrap.servers` of the cluster (`127.0.0.1:PORT,...`).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic with `partitions` partitions (the mock cluster has no
    /// CreateTopics API). Replication is min(brokers, 3).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), ClientError> {
        let (reply, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .ok_or_else(|| ClientError::MockCluster("stopped".into()))?
            .send(Command::CreateTopic {
                name: name.to_owned(),
                partitions,
                reply,
            })
            .map_err(|_| ClientError::MockCluster("cluster thread is gone".into()))?;
        rx.recv()
            .map_err(|_| ClientError::MockCluster("cluster thread is gone".into()))?
            .map_err(|e| ClientError::MockCluster(format!("create topic {name}: {e}")))
    }

    /// Stops the cluster and waits until its brokers are closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MockClusterHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `smsvoice mock-cluster`: starts a mock cluster of `brokers` brokers,
/// creates `topics` (`NAME:PARTITIONS`, or `NAME` for 4 partitions), prints
/// `bootstrap=<servers>` on stdout (and writes the same line to `port_file`,
/// atomically, when given), then runs until SIGTERM or SIGINT, or until stdin
/// is closed when stdin is a pipe, socket or terminal (a parent process that
/// dies takes the cluster with it). Stdin from a file or `/dev/null` is not
/// watched.
pub fn run_mock_cluster_command(
    brokers: i32,
    port_file: Option<&std::path::Path>,
    topics: &[String],
) -> Result<(), ClientError> {
    use std::io::Write as _;

    let mock = start_mock_cluster(brokers)?;
    for t in topics {
        let (name, partitions) = match t.rsplit_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    ClientError::Config(format!(
                        "--topic {t:?}: the partition count must be a positive integer"
                    ))
                })?,
            ),
            None => (t.as_str(), 4),
        };
        if !super::valid_topic_name(name) {
            return Err(ClientError::Config(format!(
                "--topic {t:?}: invalid topic name"
            )));
        }
        mock.create_topic(name, partitions)?;
    }
    let line = format!("bootstrap={}\n", mock.bootstrap_servers());
    if let Some(path) = port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &line)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| ClientError::Config(format!("cannot write {}: {e}", path.display())))?;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| ClientError::Config(format!("cannot write stdout: {e}")))?;
    drop(out);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::MockCluster(format!("cannot start runtime: {e}")))?;
    let reason = rt.block_on(wait_for_stop());
    tracing::info!(reason, "mock Kafka cluster stopping");
    mock.stop();
    Ok(())
}

/// Waits for SIGTERM, SIGINT or the end of a watched stdin; says which.
async fn wait_for_stop() -> &'static str {
    use std::io::IsTerminal as _;
    use std::os::unix::fs::FileTypeExt as _;
    use tokio::signal::unix::{signal, SignalKind};

    let watch_stdin = std::io::stdin().is_terminal()
        || std::fs::metadata("/dev/stdin")
            .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
            .unwrap_or(false);
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    if watch_stdin {
        std::thread::spawn(move || {
            let mut sink = std::io::sink();
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut sink);
            let _ = eof_tx.send(());
        });
    } else {
        // Keeps the sender alive forever: the receiver never completes.
        std::mem::forget(eof_tx);
    }
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = eof_rx => "stdin closed",
        },
        _ => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = eof_rx => "stdin closed",
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;
    use crate::kafka::{consumer_config, producer_config, KafkaConfig};

    const T: Duration = Duration::from_secs(20);

    fn read_all(cfg: &KafkaConfig, topic: &str, partitions: i32, want: usize) -> Vec<String> {
        let c: BaseConsumer = consumer_config(cfg, "reader").create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("offset");
        }
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        // Reads until `want` records arrived and 1 s passed without more.
        let mut quiet_since = std::time::Instant::now();
        while start.elapsed() < T {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
                    quiet_since = std::time::Instant::now();
                }
                Some(Err(e)) => panic!("consume: {e}"),
                None if out.len() >= want && quiet_since.elapsed() > Duration::from_secs(1) => {
                    break
                }
                None => {}
            }
        }
        out.sort();
        out
    }

    /// init / begin / send_offsets / commit / abort are all accepted. What
    /// the mock does NOT do (librdkafka 2.12), asserted so that a librdkafka
    /// upgrade that fixes it is noticed: it writes no transaction markers, so
    /// a read_committed consumer also sees aborted records, and it does not
    /// store the offsets of send_offsets_to_transaction.
    #[test]
    fn mock_cluster_accepts_transactions_without_isolation() {
        let mock = start_mock_cluster(1).expect("mock cluster");
        mock.create_topic("in", 2).expect("create in");
        mock.create_topic("out", 2).expect("create out");
        let mut cfg = KafkaConfig::new(mock.bootstrap_servers());
        cfg.exactly_once = true;

        let p: ThreadedProducer<DefaultProducerContext> =
            producer_config(&cfg, Some("mock-test-0".into()))
                .create()
                .expect("producer");
        p.init_transactions(T).expect("init_transactions");

        // An input position to commit with the transaction.
        let group: BaseConsumer = consumer_config(&cfg, "txn").create().expect("consumer");
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("in", 0, Offset::Offset(42))
            .expect("offset");

        p.begin_transaction().expect("begin");
        for i in 0..10 {
            let v = format!("committed-{i:02}");
            p.send(BaseRecord::<str, str>::to("out").key(&v).payload(&v))
                .map_err(|(e, _)| e)
                .expect("send");
        }
        p.send_offsets_to_transaction(
            &offsets,
            &group.group_metadata().expect("group metadata"),
            T,
        )
        .expect("send_offsets_to_transaction");
        p.commit_transaction(T).expect("commit");

        p.begin_transaction().expect("begin 2");
        for i in 0..5 {
            let v = format!("aborted-{i:02}");
            p.send(BaseRecord::<str, str>::to("out").key(&v).payload(&v))
                .map_err(|(e, _)| e)
                .expect("send");
        }
        p.flush(T).expect("flush");
        p.abort_transaction(T).expect("abort");

        let seen = read_all(&cfg, "out", 2, 15);
        let committed: Vec<&String> = seen.iter().filter(|s| s.starts_with("committed")).collect();
        assert_eq!(committed.len(), 10, "{seen:?}");
        assert_eq!(
            seen.len(),
            15,
            "the mock cluster now hides aborted records: update the docs of kafka::mock ({seen:?})"
        );

        let mut q = TopicPartitionList::new();
        q.add_partition("in", 0);
        let stored = group.committed_offsets(q, T).expect("committed offsets");
        assert_eq!(
            stored.find_partition("in", 0).expect("partition").offset(),
            Offset::Invalid,
            "the mock cluster now stores transactional offsets: update the docs of kafka::mock"
        );
        drop(p);
        mock.stop();
    }
}
