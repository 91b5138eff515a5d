//! Kafka infrastructure: configuration, tuned client builders, typed and
//! classified errors with a retry helper, topic creation, and an in-process
//! librdkafka mock cluster.
//!
//! * [`KafkaConfig`] is the `[kafka]` section of the TOML configuration.
//! * [`client`]: [`consumer_config`] / [`producer_config`] build librdkafka
//!   configurations with measured tuning; [`ClientError::class`] says what
//!   to do about an error ([`client::ErrorClass`]: retry, abort the
//!   transaction, restart, stop), and whether it is fatal to the process
//!   ([`client::fatal_cause`]: authentication, TLS, authorization, a fenced
//!   producer, a fatal librdkafka error, an invalid configuration, which
//!   [`client::ClientWatch`], the context of the runtime's clients, records);
//!   [`retry_with_backoff`] retries on a fixed, deterministic exponential
//!   schedule (the `backon` crate).
//! * [`admin`]: [`ensure_topics`] creates the output and internal topics the
//!   pipeline needs ([`all_topics`] lists them).
//! * [`mock`]: [`start_mock_cluster`] runs librdkafka's mock cluster (real
//!   loopback TCP, about 5 MB kept per partition; transaction calls are
//!   accepted but not isolated, see its docs) for tests and demos;
//!   `smsvoice mock-cluster` runs it as a process.
//!
//! The client library is librdkafka (bundled by the `rdkafka` crate). Every
//! librdkafka property can be set through [`KafkaConfig::properties`], which is
//! applied after the built-in tuning so it always wins.

use std::collections::BTreeMap;

use serde::Deserialize;

pub mod admin;
pub mod client;
pub mod mock;

pub use admin::{all_topics, ensure_topics, EnsureReport, TopicSpec};
pub use client::{consumer_config, producer_config, retry_with_backoff, ClientError, RetryPolicy};
pub use mock::{start_mock_cluster, MockClusterHandle};

/// `[kafka]`: where the pipeline reads and writes when it runs against Kafka.
///
/// ```toml
/// [kafka]
/// bootstrap_servers = "b-1.example:9092,b-2.example:9092"
/// group_id = "smsvoice"
/// exactly_once = true
///
/// [kafka.input_topics]
/// events = ["sms-voice-events"]
/// inbound = ["sms-voice-inbound"]
///
/// [kafka.properties]
/// "security.protocol" = "SASL_SSL"
/// "sasl.mechanisms" = "SCRAM-SHA-512"
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// librdkafka `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group id. Internal consumers append a suffix
    /// (`<group_id>.<suffix>`). Default `"smsvoice"`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Exactly-once processing: outputs and input offsets are committed in one
    /// Kafka transaction, and consumers read with
    /// `isolation.level=read_committed`. Needs a broker with transactions.
    /// Default false (at-least-once; every output record carries a stable
    /// `recordId` so subscribers can drop repeats).
    #[serde(default)]
    pub exactly_once: bool,
    /// Topics read.
    #[serde(default)]
    pub input_topics: InputTopics,
    /// Topics written.
    #[serde(default)]
    pub output_topics: OutputTopics,
    /// Prefix of the internal topics (repartitioning and state changelogs).
    /// Default `"smsvoice.internal."`.
    #[serde(default = "default_internal_prefix")]
    pub internal_prefix: String,
    /// Partition count of the topics the pipeline creates when they are
    /// missing (outputs and internal topics). Topics that already exist are
    /// left as they are. Default 6.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of the topics the pipeline creates. Default 1,
    /// which suits a single-broker development cluster; use 3 on a production
    /// cluster (with `min.insync.replicas=2` set on the broker).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i16,
    /// librdkafka properties passed through to every client (consumers,
    /// producers, admin): `security.protocol`, `sasl.*`, `ssl.*`,
    /// `client.id`, tuning overrides... Applied last, so they override the
    /// built-in settings.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// On SIGTERM/SIGINT, how long (ms) in-flight records may take to be
    /// written and committed before the process exits anyway. Default 30000.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// librdkafka `transaction.timeout.ms` of transactional producers: the
    /// broker aborts a transaction left open longer than this and fences
    /// its producer, so the instance exits with the fenced error (code 3)
    /// and is restarted. A transaction lasts one commit interval plus the
    /// time its records and offsets take to be acknowledged: keep this well
    /// above `commit_interval_ms` and the broker's worst stalls. Default
    /// 60000.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Backpressure bound: at most this many input records are read but not
    /// yet written and committed; consumption pauses beyond it.
    /// Default 100000.
    #[serde(default = "default_max_in_flight_records")]
    pub max_in_flight_records: usize,
    /// How often (ms) each stage commits: its outputs are flushed (or its
    /// transaction committed), its archive files uploaded, then its input
    /// offsets committed. Archive files are cut at these commits, so this is
    /// also the longest a row waits before it is queryable. Default 5000.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Workaround for brokers that skip records (tansu 0.6 answers a fetch
    /// inside a batch with the *next* batch): when true, a gap in a
    /// partition's offsets is re-read until the broker has been seen reading
    /// through it, and a partition stalled below its high watermark is
    /// re-read too (`runtime::stage`, "Reading in sequence"). Apache Kafka,
    /// MSK, Confluent and Redpanda never skip records, and their offset gaps
    /// (transaction markers, compaction) are real: leave it false there,
    /// where a gap then costs nothing. Default false.
    #[serde(default)]
    pub reread_offset_gaps: bool,
    /// `retention.ms` of the internal repartition topic `events-by-message`
    /// when the pipeline creates it (existing topics are left as they are;
    /// a longer retention is logged as a warning). Its message owners
    /// restore their state from the compacted `message-state` changelog and
    /// read only the records since their last commit point, so the topic
    /// needs to hold what they have not committed yet: with margin for an
    /// owner that is down or crash-looping, at least 7 days
    /// ([`admin::MIN_INTERNAL_RETENTION_MS`]) and at least 1000 commit
    /// intervals. Default: the larger of those two; a smaller value is
    /// rejected.
    #[serde(default)]
    pub internal_retention_ms: Option<u64>,
    /// Workers (threads, each its own consumer in the stage's group, with
    /// its own producer and state) of each of the two busy stages, the
    /// router and the message owners: Kafka shares a stage's partitions out
    /// among its workers, so they run in parallel with nothing shared on
    /// the per-record path. The other stages have one. A stage cannot use
    /// more workers than its topics have partitions (the others idle).
    /// Default 1; set it to the number of cores the instance may use.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

/// `[kafka.input_topics]`. A topic may appear in both lists: it then carries
/// both kinds of payload (each record is recognised by its content).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InputTopics {
    /// Topics carrying delivery events (`TEXT_*`, `MEDIA_*`, `VOICE_*`,
    /// `RCS_*`), in any envelope.
    #[serde(default)]
    pub events: Vec<String>,
    /// Topics carrying inbound (two-way) messages, in any envelope.
    #[serde(default)]
    pub inbound: Vec<String>,
}

impl InputTopics {
    /// Every input topic once, in a stable order (events first).
    pub fn all(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.events.iter().chain(&self.inbound) {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

/// `[kafka.output_topics]`: one topic per output.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutputTopics {
    /// Enriched delivery events. Default `"smsvoice.enriched-events"`.
    #[serde(default = "default_enriched_events")]
    pub enriched_events: String,
    /// Enriched inbound messages. Default `"smsvoice.enriched-inbound"`.
    #[serde(default = "default_enriched_inbound")]
    pub enriched_inbound: String,
    /// Opt-out state changes, keyed by list and number (compacted).
    /// Default `"smsvoice.optout-changelog"`.
    #[serde(default = "default_optout_changelog")]
    pub optout_changelog: String,
    /// Spend per month and channel, keyed by both (compacted).
    /// Default `"smsvoice.spend"`.
    #[serde(default = "default_spend")]
    pub spend: String,
    /// Alarm state changes and LIMIT_REACHED records. Default `"smsvoice.alarms"`.
    #[serde(default = "default_alarms")]
    pub alarms: String,
    /// Replies owed by self-managed numbers. Default `"smsvoice.replies"`.
    #[serde(default = "default_replies")]
    pub replies: String,
    /// Records not accepted, with the reason. Default `"smsvoice.dead-letters"`.
    #[serde(default = "default_dead_letters")]
    pub dead_letters: String,
}

impl Default for OutputTopics {
    fn default() -> Self {
        OutputTopics {
            enriched_events: default_enriched_events(),
            enriched_inbound: default_enriched_inbound(),
            optout_changelog: default_optout_changelog(),
            spend: default_spend(),
            alarms: default_alarms(),
            replies: default_replies(),
            dead_letters: default_dead_letters(),
        }
    }
}

impl KafkaConfig {
    /// A configuration with every default, reading nothing yet.
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            group_id: default_group_id(),
            exactly_once: false,
            input_topics: InputTopics::default(),
            output_topics: OutputTopics::default(),
            internal_prefix: default_internal_prefix(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            properties: BTreeMap::new(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            transaction_timeout_ms: default_transaction_timeout_ms(),
            max_in_flight_records: default_max_in_flight_records(),
            commit_interval_ms: default_commit_interval_ms(),
            reread_offset_gaps: false,
            internal_retention_ms: None,
            workers: default_workers(),
        }
    }

    /// The smallest accepted `internal_retention_ms`, and the default: the
    /// larger of 7 days and 1000 commit intervals.
    pub fn min_internal_retention_ms(&self) -> u64 {
        admin::MIN_INTERNAL_RETENTION_MS.max(self.commit_interval_ms.saturating_mul(1000))
    }

    /// `retention.ms` of `events-by-message` (see
    /// [`internal_retention_ms`](Self::internal_retention_ms)).
    pub fn internal_retention(&self) -> i64 {
        let ms = self
            .internal_retention_ms
            .unwrap_or_else(|| self.min_internal_retention_ms());
        i64::try_from(ms).unwrap_or(i64::MAX)
    }

    /// Name of the internal topic `suffix` ([`admin::EVENTS_BY_MESSAGE`], ...).
    pub fn internal_topic(&self, suffix: &str) -> String {
        format!("{}{}", self.internal_prefix, suffix)
    }

    /// Checks what types cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err("kafka.bootstrap_servers is empty".into());
        }
        if self.group_id.trim().is_empty() {
            return Err("kafka.group_id is empty".into());
        }
        if self.partitions < 1 {
            return Err(format!(
                "kafka.partitions must be at least 1, not {}",
                self.partitions
            ));
        }
        if self.replication_factor < 1 {
            return Err(format!(
                "kafka.replication_factor must be at least 1, not {}",
                self.replication_factor
            ));
        }
        if self.commit_interval_ms == 0 {
            return Err("kafka.commit_interval_ms must be at least 1".into());
        }
        if !(1..=64).contains(&self.workers) {
            return Err(format!(
                "kafka.workers must be between 1 and 64, not {}",
                self.workers
            ));
        }
        if self.max_in_flight_records == 0 {
            return Err("kafka.max_in_flight_records must be at least 1".into());
        }
        if let Some(r) = self.internal_retention_ms {
            let min = self.min_internal_retention_ms();
            if r < min {
                return Err(format!(
                    "kafka.internal_retention_ms must be at least {min} (7 days, and 1000 \
                     commit intervals), not {r}"
                ));
            }
        }
        for t in self.input_topics.all() {
            if !valid_topic_name(&t) {
                return Err(format!("kafka.input_topics: invalid topic name {t:?}"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for t in admin::all_topics(self) {
            if !valid_topic_name(&t.name) {
                return Err(format!("kafka: invalid topic name {:?}", t.name));
            }
            if !names.insert(t.name.clone()) {
                return Err(format!("kafka: topic {:?} is used for two outputs", t.name));
            }
            if self.input_topics.all().contains(&t.name) {
                return Err(format!(
                    "kafka: topic {:?} is both an input and an output",
                    t.name
                ));
            }
        }
        Ok(())
    }
}

/// Kafka's topic-name rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.`
/// or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn default_group_id() -> String {
    "smsvoice".into()
}
fn default_internal_prefix() -> String {
    "smsvoice.internal.".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication_factor() -> i16 {
    1
}
fn default_shutdown_grace_ms() -> u64 {
    30_000
}
fn default_transaction_timeout_ms() -> u64 {
    60_000
}
fn default_workers() -> usize {
    1
}
fn default_max_in_flight_records() -> usize {
    100_000
}
fn default_commit_interval_ms() -> u64 {
    5_000
}
fn default_enriched_events() -> String {
    "smsvoice.enriched-events".into()
}
fn default_enriched_inbound() -> String {
    "smsvoice.enriched-inbound".into()
}
fn default_optout_changelog() -> String {
    "smsvoice.optout-changelog".into()
}
fn default_spend() -> String {
    "smsvoice.spend".into()
}
fn default_alarms() -> String {
    "smsvoice.alarms".into()
}
fn default_replies() -> String {
    "smsvoice.replies".into()
}
fn default_dead_letters() -> String {
    "smsvoice.dead-letters".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_section_gets_defaults() {
        let c: KafkaConfig = toml::from_str("bootstrap_servers = \"127.0.0.1:9092\"\n")
            .expect("minimal kafka section");
        assert_eq!(c, KafkaConfig::new("127.0.0.1:9092"));
        assert_eq!(c.output_topics.dead_letters, "smsvoice.dead-letters");
        assert_eq!(c.partitions, 6);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = toml::from_str::<KafkaConfig>("bootstrap_servers = \"x\"\ngroupid = \"g\"\n")
            .expect_err("typo");
        assert!(e.to_string().contains("groupid"), "{e}");
        let e = toml::from_str::<KafkaConfig>(
            "bootstrap_servers = \"x\"\n[output_topics]\nspnd = \"s\"\n",
        )
        .expect_err("typo");
        assert!(e.to_string().contains("spnd"), "{e}");
    }

    #[test]
    fn full_section_parses() {
        let c: KafkaConfig = toml::from_str(
            r#"
bootstrap_servers = "a:1,b:2"
group_id = "g"
exactly_once = true
internal_prefix = "x."
partitions = 12
replication_factor = 3
shutdown_grace_ms = 5000
transaction_timeout_ms = 20000
max_in_flight_records = 10
[input_topics]
events = ["ev", "both"]
inbound = ["both", "in"]
[output_topics]
spend = "my-spend"
[properties]
"security.protocol" = "SASL_SSL"
"#,
        )
        .expect("full section");
        assert!(c.exactly_once);
        assert_eq!(c.input_topics.all(), ["ev", "both", "in"]);
        assert_eq!(c.output_topics.spend, "my-spend");
        assert_eq!(c.output_topics.alarms, "smsvoice.alarms");
        assert_eq!(c.properties["security.protocol"], "SASL_SSL");
        c.validate().expect("valid");
    }

    #[test]
    fn kafka_section_of_the_config_file() {
        use crate::config::Config;
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n[kafka.input_topics]\nevents = [\"e\"]\n",
            "t",
        )
        .expect("kafka section");
        let k = c.kafka.expect("kafka present");
        assert_eq!(k.input_topics.events, ["e"]);
        let e = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"x:1\"\npartitions = 0\n",
            "t",
        )
        .expect_err("invalid partitions");
        assert!(e.to_string().contains("kafka.partitions"), "{e}");
        let e = Config::from_toml("[kafka]\nbootstrap_server = \"x:1\"\n", "t").expect_err("typo");
        assert!(e.to_string().contains("bootstrap_server"), "{e}");
        assert!(Config::from_toml("", "t").expect("empty").kafka.is_none());
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let mut c = KafkaConfig::new("x:1");
        c.partitions = 0;
        assert!(c.validate().is_err());
        let mut c = KafkaConfig::new("x:1");
        c.output_topics.spend = c.output_topics.alarms.clone();
        assert!(c.validate().is_err());
        let mut c = KafkaConfig::new("x:1");
        c.input_topics.events = vec!["smsvoice.alarms".into()];
        assert!(c.validate().is_err());
        let mut c = KafkaConfig::new("x:1");
        c.input_topics.events = vec!["bad topic".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn internal_retention_has_a_floor() {
        let c = KafkaConfig::new("x:1");
        assert_eq!(c.internal_retention(), 7 * 86_400_000);
        let mut slow = KafkaConfig::new("x:1");
        slow.commit_interval_ms = 1_000_000;
        assert_eq!(slow.internal_retention(), 1_000_000_000);
        let c: KafkaConfig =
            toml::from_str("bootstrap_servers = \"x:1\"\ninternal_retention_ms = 1209600000\n")
                .expect("parses");
        assert_eq!(c.internal_retention(), 1_209_600_000);
        c.validate().expect("two weeks is fine");
        let mut short = c.clone();
        short.internal_retention_ms = Some(3_600_000);
        let e = short.validate().expect_err("below the floor");
        assert!(e.contains("kafka.internal_retention_ms"), "{e}");
        let e =
            toml::from_str::<KafkaConfig>("bootstrap_servers = \"x\"\ninternal_retention = 5\n")
                .expect_err("unknown key");
        assert!(e.to_string().contains("internal_retention"), "{e}");
    }
}
