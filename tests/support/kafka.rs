//! Apache Kafka for integration tests and benchmarks, as a child process on
//! 127.0.0.1 ([`KafkaBroker`]): one combined broker + controller (KRaft) per
//! test, with its own log directory and free ports, started from the jars
//! that `scripts/install-kafka.sh` copies from Maven Central. It can be
//! stopped, SIGKILLed and restarted on the same log directory and ports, and
//! is always killed and removed on drop (and by a watchdog when the test
//! process itself dies). [`KafkaBroker::start_secure`] adds a SASL_SSL
//! listener (SCRAM-SHA-512 and PLAIN users) and an SSL listener, with a CA
//! generated for the test.
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

use smsvoice::kafka::{consumer_config, ensure_topics, producer_config, KafkaConfig, TopicSpec};

/// The Apache Kafka version `scripts/install-kafka.sh` installs (read from
/// `scripts/kafka/pom.xml`, so the two cannot disagree).
pub fn kafka_version() -> String {
    let pom = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/kafka/pom.xml"
    ))
    .unwrap_or_default();
    pom.split("<kafka.version>")
        .nth(1)
        .and_then(|r| r.split("</kafka.version>").next())
        .unwrap_or("4.1.1")
        .trim()
        .to_owned()
}

/// Directory of the broker's jars: `KAFKA_LIBS`, else the install script's
/// cache (`${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}/kafka-VERSION/libs`).
pub fn kafka_libs() -> PathBuf {
    if let Some(p) = std::env::var_os("KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("SMSVOICE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/smsvoice-tools")
        });
    tools.join(format!("kafka-{}/libs", kafka_version()))
}

/// True when the broker's jars are installed.
pub fn kafka_available() -> bool {
    kafka_libs()
        .join(format!("kafka_2.13-{}.jar", kafka_version()))
        .is_file()
}

/// For benchmarks: false, after printing how to install the broker, when
/// it is not installed (`what` names the measurement skipped).
pub fn kafka_or_skip(what: &str) -> bool {
    if kafka_available() {
        return true;
    }
    println!(
        "{what}: skipped, Apache Kafka not found in {} (run `bash scripts/install-kafka.sh` or set KAFKA_LIBS)",
        kafka_libs().display()
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

/// SASL user known to a secure broker (SCRAM-SHA-512 and PLAIN).
pub const SASL_USER: &str = "smsvoice";
/// Its password.
pub const SASL_PASSWORD: &str = "smsvoice-test-secret";

/// Files of the test CA and the broker's certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA certificate (PEM) that signed the broker's certificate: what a
    /// client must trust (`ssl.ca.location`).
    pub ca: PathBuf,
    /// A second, unrelated CA (PEM): a client trusting only this one must
    /// refuse the broker.
    pub other_ca: PathBuf,
}

/// Ports and listeners of one broker.
#[derive(Clone, Debug)]
struct Ports {
    plain: u16,
    controller: u16,
    /// SASL_SSL and SSL, when secure.
    secure: Option<(u16, u16)>,
}

/// A running Apache Kafka broker (combined broker and controller) on
/// 127.0.0.1; killed, and its directory removed, on drop.
pub struct KafkaBroker {
    /// `127.0.0.1:PORT` of the PLAINTEXT listener (harness and plain tests).
    pub bootstrap: String,
    /// `127.0.0.1:PORT` of the SASL_SSL listener (SCRAM-SHA-512 and PLAIN),
    /// when started with [`KafkaBroker::start_secure`].
    pub sasl_ssl: Option<String>,
    /// `127.0.0.1:PORT` of the SSL (TLS only) listener, when secure.
    pub ssl: Option<String>,
    /// The CA files, when secure.
    pub tls: Option<TlsFiles>,
    dir: PathBuf,
    ports: Ports,
    /// The watchdog shell that runs java (kills it when our stdin closes).
    watchdog: Option<Child>,
    /// java's pid.
    pid: Option<u32>,
}

/// How long a broker may take to answer its first metadata request.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

impl KafkaBroker {
    /// Starts a broker with a PLAINTEXT listener and waits until it answers.
    /// Panics, naming `scripts/install-kafka.sh`, when it is not installed.
    pub fn start() -> KafkaBroker {
        Self::start_with(false)
    }

    /// As [`start`](Self::start), plus a SASL_SSL listener (SCRAM-SHA-512
    /// and PLAIN, user [`SASL_USER`]) and an SSL listener whose certificate a
    /// CA generated here signed (openssl).
    pub fn start_secure() -> KafkaBroker {
        Self::start_with(true)
    }

    fn start_with(secure: bool) -> KafkaBroker {
        assert!(
            kafka_available(),
            "Apache Kafka not found in {}: run `bash scripts/install-kafka.sh` (or set KAFKA_LIBS)",
            kafka_libs().display()
        );
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "smsvoice-kafka-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let ports = Ports {
            plain: free_port(),
            controller: free_port(),
            secure: secure.then(|| (free_port(), free_port())),
        };
        let tls = secure.then(|| make_tls(&dir));
        let mut b = KafkaBroker {
            bootstrap: format!("127.0.0.1:{}", ports.plain),
            sasl_ssl: ports.secure.map(|(s, _)| format!("127.0.0.1:{s}")),
            ssl: ports.secure.map(|(_, t)| format!("127.0.0.1:{t}")),
            tls,
            dir,
            ports,
            watchdog: None,
            pid: None,
        };
        b.write_config();
        b.format();
        b.launch();
        b
    }

    fn properties(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    /// The broker's log file (stdout and stderr of java).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn write_config(&self) {
        let p = &self.ports;
        let mut listeners = format!(
            "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
            p.plain, p.controller
        );
        let mut advertised = format!("PLAINTEXT://127.0.0.1:{}", p.plain);
        if let Some((s, t)) = p.secure {
            listeners.push_str(&format!(",SASL_SSL://127.0.0.1:{s},SSL://127.0.0.1:{t}"));
            advertised.push_str(&format!(",SASL_SSL://127.0.0.1:{s},SSL://127.0.0.1:{t}"));
        }
        let data = self.dir.join("data");
        let mut text = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
             listeners={listeners}\n\
             advertised.listeners={advertised}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=8\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=8\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             auto.create.topics.enable=false\n\
             log.cleaner.backoff.ms=1000\n\
             transaction.abort.timed.out.transaction.cleanup.interval.ms=1000\n",
            controller = p.controller,
            data = data.display(),
        );
        if let Some(tls) = &self.tls {
            let pem = self.dir.join("tls/server.pem");
            text.push_str(&format!(
                "ssl.keystore.type=PEM\n\
                 ssl.keystore.location={pem}\n\
                 ssl.truststore.type=PEM\n\
                 ssl.truststore.location={ca}\n\
                 sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USER}=\"{SASL_PASSWORD}\";\n",
                pem = pem.display(),
                ca = tls.ca.display(),
            ));
        }
        std::fs::write(self.properties(), text).expect("write server.properties");
        std::fs::write(
            self.dir.join("log4j2.properties"),
            "status = warn\n\
             appender.out.type = Console\n\
             appender.out.name = out\n\
             appender.out.layout.type = PatternLayout\n\
             appender.out.layout.pattern = [%d] %p %m (%c)%n\n\
             rootLogger.level = WARN\n\
             rootLogger.appenderRef.out.ref = out\n\
             logger.server.name = kafka.server.KafkaRaftServer\n\
             logger.server.level = INFO\n\
             logger.txn.name = kafka.coordinator.transaction\n\
             logger.txn.level = INFO\n",
        )
        .expect("write log4j2.properties");
    }

    /// `kafka.tools.StorageTool format` of the log directory (standalone
    /// controller; SCRAM user added when secure).
    fn format(&self) {
        let cluster_id = {
            // 16 bytes, base64url without padding, as Kafka's Uuid prints.
            use base64::Engine as _;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mixed = nanos ^ ((std::process::id() as u128) << 64) ^ 0x5a5a_0000_0000_0001;
            let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mixed.to_le_bytes());
            // An id starting with '-' would be read as an option by the
            // formatter; any other first letter is as valid.
            match id.strip_prefix('-') {
                Some(rest) => format!("A{rest}"),
                None => id,
            }
        };
        let mut cmd = self.java();
        cmd.args(["kafka.tools.StorageTool", "format", "--standalone", "-t"])
            .arg(&cluster_id)
            .arg("-c")
            .arg(self.properties());
        if self.tls.is_some() {
            cmd.arg("--add-scram").arg(format!(
                "SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}]"
            ));
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run java: {e}"));
        assert!(
            out.status.success(),
            "kafka.tools.StorageTool format failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn java(&self) -> Command {
        let mut cmd = Command::new("java");
        cmd.arg("-cp")
            .arg(format!("{}/*", kafka_libs().display()))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ));
        cmd
    }

    /// Starts java on the existing log directory and waits until the
    /// broker answers a metadata request.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open broker log: {e}"));
        // java runs under a shell that kills it when this process's end of
        // the shell's stdin closes: the broker never outlives the test.
        let script = r#"exec 3<&0
java "$@" </dev/null & j=$!
echo "$j"
( read -r _ <&3; kill -9 "$j" 2>/dev/null ) &
w=$!
wait "$j"; st=$?
kill "$w" 2>/dev/null
exit "$st""#;
        let heap = std::env::var("SMSVOICE_KAFKA_HEAP").unwrap_or_else(|_| "768m".into());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("kafka-broker")
            .arg("-cp")
            .arg(format!("{}/*", kafka_libs().display()))
            .arg(format!("-Xmx{heap}"))
            .arg("-Xms128m")
            .arg("-XX:+UseG1GC")
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ))
            .arg("kafka.Kafka")
            .arg(self.properties())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the broker: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let pid: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("broker watchdog printed {line:?}"));
        self.pid = Some(pid);
        self.watchdog = Some(child);
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.watchdog.as_mut().map(Child::try_wait) {
                panic!("the broker exited with {status}:\n{}", self.log());
            }
            if metadata_ok(&self.bootstrap, Duration::from_millis(500)) {
                return;
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "the broker did not answer within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&mut self, sig: &str) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill")
                .args([sig, &pid.to_string()])
                .stdin(Stdio::null())
                .status();
        }
        if let Some(mut w) = self.watchdog.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = w.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = w.kill();
            let _ = w.wait();
            panic!("the broker did not stop 60 s after {sig}");
        }
    }

    /// Stops the broker cleanly (SIGTERM) and waits until it exited.
    pub fn stop(&mut self) {
        self.signal("-TERM");
    }

    /// Kills the broker (SIGKILL): nothing is flushed.
    pub fn kill(&mut self) {
        self.signal("-KILL");
    }

    /// Starts the broker again on the same log directory and ports (after
    /// [`stop`](Self::stop) or [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        assert!(self.pid.is_none(), "restart of a running broker");
        self.launch();
    }

    /// Client properties for the SASL_SSL listener with `mechanism`
    /// (`SCRAM-SHA-512` or `PLAIN`), as a user writes them in
    /// `[kafka.properties]`.
    pub fn sasl_properties(&self, mechanism: &str, password: &str) -> Vec<(String, String)> {
        let tls = self.tls.as_ref().expect("a secure broker");
        vec![
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanism".into(), mechanism.into()),
            ("sasl.username".into(), SASL_USER.into()),
            ("sasl.password".into(), password.into()),
            ("ssl.ca.location".into(), tls.ca.display().to_string()),
        ]
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdin(Stdio::null())
                .status();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if std::env::var_os("SMSVOICE_KEEP_BROKER_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A test CA, a broker certificate it signs (SAN 127.0.0.1 and localhost)
/// and a second unrelated CA, with openssl, under `dir/tls`.
fn make_tls(dir: &std::path::Path) -> TlsFiles {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (name, cn) in [("ca", "smsvoice test CA"), ("other-ca", "unrelated CA")] {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
    std::fs::write(
        tls.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("san.ext");
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    // Kafka's PEM keystore: the PKCS#8 key and the certificate chain.
    let read = |n: &str| std::fs::read_to_string(tls.join(n)).expect("tls file");
    std::fs::write(
        tls.join("server.pem"),
        format!(
            "{}{}{}",
            read("server.key"),
            read("server.crt"),
            read("ca.pem")
        ),
    )
    .expect("server.pem");
    TlsFiles {
        ca: tls.join("ca.pem"),
        other_ca: tls.join("other-ca.pem"),
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
/// Creates `topic` (if missing) with `partitions` partitions, kept for ever:
/// an input topic of a test or a bench.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let spec = TopicSpec {
        name: topic.into(),
        partitions,
        compacted: false,
        retain_forever: true,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
        .block_on(ensure_topics(&KafkaConfig::new(bootstrap), &[spec]))
        .unwrap_or_else(|e| panic!("create {topic}: {e}"));
}

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

/// Reads every record of `topic` present when it is called: from the
/// beginning of every partition (no consumer group) to the end of each, as
/// the broker reports it (librdkafka's partition-EOF event: the high
/// watermark, or with `read_committed` the last stable offset), however long
/// that takes; a fixed read window cut large topics short. Empty when the
/// topic does not exist (5 s of metadata requests); panics after 300 s
/// without reaching every end. Sorted by (partition, offset).
#[allow(dead_code)]
pub fn consume_to_end(bootstrap: &str, topic: &str, read_committed: bool) -> Vec<Consumed> {
    let timeout = Duration::from_secs(300);
    let start = Instant::now();
    let mut cfg = KafkaConfig::new(bootstrap);
    cfg.exactly_once = read_committed;
    let c: BaseConsumer = consumer_config(&cfg, "test-reader")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let Some(partitions) = partitions_of(&c, topic, start, Duration::from_secs(5)) else {
        // Not created yet: nothing in it.
        return Vec::new();
    };
    assign_from_start(&c, topic, partitions);
    let mut at_end = vec![false; partitions as usize];
    let mut out: Vec<Consumed> = Vec::new();
    while at_end.iter().any(|e| !e) {
        assert!(
            start.elapsed() < timeout,
            "{topic}: the end of partitions {:?} not reached in {timeout:?} ({} records read)",
            at_end
                .iter()
                .enumerate()
                .filter(|(_, e)| !**e)
                .map(|(p, _)| p)
                .collect::<Vec<_>>(),
            out.len()
        );
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(consumed(&m)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                if let Some(e) = usize::try_from(p).ok().and_then(|p| at_end.get_mut(p)) {
                    *e = true;
                }
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.0, r.1));
    out
}

fn consumed(m: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    (
        m.partition(),
        m.offset(),
        m.key().map(<[u8]>::to_vec),
        m.payload().unwrap_or_default().to_vec(),
        headers,
    )
}

/// Assigns every partition of `topic` to `c`, from the beginning.
fn assign_from_start(c: &BaseConsumer, topic: &str, partitions: i32) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap_or_else(|e| panic!("assign {topic}: {e}"));
    }
    c.assign(&tpl)
        .unwrap_or_else(|e| panic!("assign {topic}: {e}"));
}

/// The partition count of `topic`, waiting up to `timeout` from `start` for
/// it to exist (`None`: it does not).
fn partitions_of(c: &BaseConsumer, topic: &str, start: Instant, timeout: Duration) -> Option<i32> {
    loop {
        match c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => {
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map_or(0, |t| t.partitions().len());
                if n > 0 {
                    return Some(n as i32);
                }
            }
            Err(e) if start.elapsed() > timeout => panic!("metadata of {topic}: {e}"),
            Err(_) => {}
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

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
    let partitions = partitions_of(&c, topic, start, timeout)
        .unwrap_or_else(|| panic!("topic {topic} has no partitions"));
    assign_from_start(&c, topic, partitions);
    let mut out: Vec<Consumed> = Vec::with_capacity(expected_count.min(1 << 16));
    let mut last = Instant::now();
    while start.elapsed() < timeout {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                out.push(consumed(&m));
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
