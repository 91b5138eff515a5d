//! Creation of the topics the pipeline writes: outputs and internal topics.
//!
//! [`ensure_topics`] creates the missing ones (existing topics are left
//! untouched), with `cleanup.policy=compact` on the keyed state topics. A
//! broker that rejects topic configurations (some Kafka-compatible brokers
//! do) gets the topic without them and a warning naming it: compaction only
//! bounds the size of those topics, their content is correct either way.
//!
//! Observed brokers: tansu 0.6 accepts and describes any topic config
//! (`cleanup.policy=compact` included) but does not compact, and accepts a
//! replication factor above its single broker; librdkafka's mock cluster has
//! no CreateTopics API (creation times out: use
//! [`super::MockClusterHandle::create_topic`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication, TopicResult,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::ThreadedProducer;

use super::client::{
    admin_config, retry_with_backoff, ClientError, ClientWatch, FatalSlot, RetryPolicy,
};
use super::KafkaConfig;

/// How long a metadata request or a topic creation may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long created topics may take to show up with a leader per partition.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A topic the pipeline needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count when created.
    pub partitions: i32,
    /// `cleanup.policy=compact`: a keyed state topic where only the latest
    /// record of a key matters.
    pub compacted: bool,
    /// `retention.ms=-1`: an internal topic that is also the log its owner
    /// rebuilds its state from (the owner replays it from the start).
    pub retain_forever: bool,
}

/// Suffix of the internal topic of delivery events keyed by messageId.
pub const EVENTS_BY_MESSAGE: &str = "events-by-message";
/// Suffix of the internal topic of inbound messages keyed by customer number.
pub const INBOUND_BY_NUMBER: &str = "inbound-by-number";
/// Suffix of the internal topic of partial spend totals, partitioned by
/// (month, channel).
pub const SPEND_PARTIALS: &str = "spend-partials";
/// Suffix of the message owners' state changelog (compacted; partition p
/// written by the owner of partition p of `events-by-message`, so it has
/// that topic's partition count).
pub const MESSAGE_STATE: &str = "message-state";

/// The floor of `[kafka] internal_retention_ms`, and its default: 7 days.
pub const MIN_INTERNAL_RETENTION_MS: u64 = 7 * 86_400_000;

/// Every topic the pipeline writes, for `cfg`: the outputs, then the internal
/// topics `{internal_prefix}events-by-message` and `inbound-by-number`
/// (repartitioning, with a finite retention:
/// [`KafkaConfig::internal_retention`]; their owners restore from
/// `message-state` and from the opt-out changelog),
/// `spend-partials` and `message-state` (state changelogs, compacted). Each
/// has `cfg.partitions` partitions (`message-state`: that of
/// `events-by-message` when it exists, see [`ensure_topics`]).
pub fn all_topics(cfg: &KafkaConfig) -> Vec<TopicSpec> {
    let o = &cfg.output_topics;
    let spec = |name: &str, compacted: bool| TopicSpec {
        name: name.to_owned(),
        partitions: cfg.partitions,
        compacted,
        retain_forever: false,
    };
    let internal = |suffix: &str, compacted: bool| spec(&cfg.internal_topic(suffix), compacted);
    vec![
        spec(&o.enriched_events, false),
        spec(&o.enriched_inbound, false),
        spec(&o.optout_changelog, true),
        spec(&o.spend, true),
        spec(&o.alarms, false),
        spec(&o.replies, false),
        spec(&o.dead_letters, false),
        internal(EVENTS_BY_MESSAGE, false),
        internal(INBOUND_BY_NUMBER, false),
        internal(SPEND_PARTIALS, true),
        internal(MESSAGE_STATE, true),
    ]
}

/// The topic configs `spec` is created with (for `cfg`):
/// `cleanup.policy=compact` for a compacted topic, `retention.ms=-1` for
/// one kept forever, and `retention.ms` = [`KafkaConfig::internal_retention`]
/// for the repartitioning topics `events-by-message` and
/// `inbound-by-number`.
pub fn topic_configs(cfg: &KafkaConfig, spec: &TopicSpec) -> Vec<(&'static str, String)> {
    if spec.compacted {
        vec![("cleanup.policy", "compact".into())]
    } else if spec.retain_forever {
        vec![("retention.ms", "-1".into())]
    } else if is_repartitioning(cfg, &spec.name) {
        vec![("retention.ms", cfg.internal_retention().to_string())]
    } else {
        Vec::new()
    }
}

/// Whether `name` is one of the repartitioning topics, kept only for
/// [`KafkaConfig::internal_retention`].
fn is_repartitioning(cfg: &KafkaConfig, name: &str) -> bool {
    name == cfg.internal_topic(EVENTS_BY_MESSAGE) || name == cfg.internal_topic(INBOUND_BY_NUMBER)
}

/// `specs` with `message-state` given the partition count of an existing
/// `events-by-message` (`present`: the topics of the cluster): partition p
/// of the changelog is written by the owner of partition p.
fn copartition(
    cfg: &KafkaConfig,
    specs: &[TopicSpec],
    present: &BTreeMap<String, i32>,
) -> Vec<TopicSpec> {
    let state = cfg.internal_topic(MESSAGE_STATE);
    let events = present.get(&cfg.internal_topic(EVENTS_BY_MESSAGE)).copied();
    specs
        .iter()
        .map(|s| match events {
            Some(n) if s.name == state && n != s.partitions => TopicSpec {
                partitions: n,
                ..s.clone()
            },
            _ => s.clone(),
        })
        .collect()
}

/// What [`ensure_topics`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Topics created (with their configs).
    pub created: Vec<String>,
    /// Topics created without `cleanup.policy=compact` because the broker
    /// rejected topic configs (also listed in `created`).
    pub created_without_configs: Vec<String>,
    /// Compacted topics the broker accepted but then described with another
    /// `cleanup.policy` (the broker ignores the setting).
    pub compaction_ignored: Vec<String>,
    /// Topics that existed already, with their partition count.
    pub existing: BTreeMap<String, i32>,
    /// Every topic of the cluster at the start, with its partition count.
    pub present: BTreeMap<String, i32>,
}

type Admin = AdminClient<DefaultClientContext>;

/// Creates every topic of `specs` that does not exist, then waits until each
/// has a leader for every partition. Topics that already exist are left as
/// they are (a warning is logged when their partition count differs).
/// "Already exists" answers (another instance created it meanwhile) are
/// fine; transient errors are retried ([`RetryPolicy::default`]); a broker
/// rejecting `cleanup.policy` gets the topic without it and a warning.
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    specs: &[TopicSpec],
) -> Result<EnsureReport, ClientError> {
    ensure_topics_watched(cfg, specs, &FatalSlot::default()).await
}

/// [`ensure_topics`], ending at once with [`ClientError::Fatal`] when a
/// fatal error (authentication, TLS, authorization: see
/// [`super::client::fatal_cause`]) is recorded in `fatal`, by this call or
/// any other client sharing the slot.
///
/// rdkafka's admin client never polls its main queue, where librdkafka puts
/// connection errors, so an authentication or TLS failure would only show
/// as metadata requests timing out, retried for minutes. A producer on the
/// same configuration, polled by its own thread, watches the connections
/// meanwhile (librdkafka connects to a bootstrap broker as soon as a client
/// is created) and records such a failure in `fatal`.
pub async fn ensure_topics_watched(
    cfg: &KafkaConfig,
    specs: &[TopicSpec],
    fatal: &FatalSlot,
) -> Result<EnsureReport, ClientError> {
    let _watcher: ThreadedProducer<ClientWatch> = admin_config(cfg)
        .create_with_context(ClientWatch::new(fatal, cfg, "admin"))
        .map_err(|e| ClientError::kafka("create Kafka admin client", e))?;
    tokio::select! {
        r = ensure(cfg, specs) => match (r, fatal.get()) {
            (Err(_), Some(f)) => Err(ClientError::Fatal(Box::new(f.clone()))),
            (r, _) => r,
        },
        f = fatal.wait() => Err(ClientError::Fatal(Box::new(f))),
    }
}

async fn ensure(cfg: &KafkaConfig, specs: &[TopicSpec]) -> Result<EnsureReport, ClientError> {
    let admin: Arc<Admin> = Arc::new(
        admin_config(cfg)
            .create()
            .map_err(|e| ClientError::kafka("create Kafka admin client", e))?,
    );
    let policy = RetryPolicy::default();
    let mut report = EnsureReport::default();

    let present = retry_with_backoff("fetch topic metadata", &policy, || {
        topic_partitions(admin.clone())
    })
    .await?;
    let mut missing = Vec::new();
    report.present = present.clone();
    let specs = &copartition(cfg, specs, &present)[..];
    warn_unbounded_retention(&admin, cfg, specs, &present).await;
    for s in specs {
        match present.get(&s.name) {
            Some(&n) => {
                if n != s.partitions {
                    tracing::warn!(
                        topic = %s.name,
                        existing_partitions = n,
                        configured_partitions = s.partitions,
                        "topic exists with another partition count; left as it is"
                    );
                }
                report.existing.insert(s.name.clone(), n);
            }
            None => missing.push(s.clone()),
        }
    }

    // Creation: a healthy cluster answers in well under a second; a broker
    // without a controller (librdkafka's mock cluster) never does, so only a
    // few attempts.
    let create_policy = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let mut rejected_configs: Vec<String> = Vec::new();
    while !missing.is_empty() {
        let attempt = missing.clone();
        let without = rejected_configs.clone();
        let results = retry_with_backoff("create topics", &create_policy, || {
            create(admin.clone(), cfg, attempt.clone(), without.clone())
        })
        .await?;
        let mut retry_without_configs = Vec::new();
        for r in results {
            match judge(r, &attempt, &rejected_configs) {
                Outcome::Created(name) => {
                    tracing::info!(topic = %name, "created topic");
                    report.created.push(name);
                }
                Outcome::CreatedWithoutConfigs(name) => {
                    tracing::warn!(
                        topic = %name,
                        "broker rejected topic config cleanup.policy=compact; created the topic without it (it will not be compacted)"
                    );
                    report.created_without_configs.push(name.clone());
                    report.created.push(name);
                }
                Outcome::Existing(name, partitions) => {
                    report.existing.insert(name, partitions);
                }
                Outcome::RetryWithoutConfigs(name, code) => {
                    tracing::debug!(topic = %name, ?code, "topic creation with configs failed; trying without");
                    retry_without_configs.push(name);
                }
                Outcome::Failed(name, code) => {
                    return Err(ClientError::Broker {
                        context: format!("create topic {name}"),
                        code,
                    });
                }
            }
        }
        rejected_configs.extend(retry_without_configs.iter().cloned());
        missing.retain(|s| retry_without_configs.contains(&s.name));
    }

    wait_until_ready(admin.clone(), specs).await?;
    report.compaction_ignored = check_compaction(&admin, &report, specs).await;
    Ok(report)
}

/// What one topic's creation result means.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Created(String),
    CreatedWithoutConfigs(String),
    /// Created meanwhile by someone else (partitions as requested).
    Existing(String, i32),
    /// A compacted topic whose creation with configs failed: try without.
    RetryWithoutConfigs(String, RDKafkaErrorCode),
    Failed(String, RDKafkaErrorCode),
}

/// Judges one result of a creation `attempt`; `without_configs` lists the
/// topics that attempt created without their configs.
fn judge(r: TopicResult, attempt: &[TopicSpec], without_configs: &[String]) -> Outcome {
    match r {
        Ok(name) if without_configs.contains(&name) => Outcome::CreatedWithoutConfigs(name),
        Ok(name) => Outcome::Created(name),
        Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
            let n = attempt
                .iter()
                .find(|s| s.name == name)
                .map_or(0, |s| s.partitions);
            Outcome::Existing(name, n)
        }
        Err((name, code)) => {
            let configured = attempt.iter().any(|s| {
                s.name == name
                    && (s.compacted
                        || s.retain_forever
                        || s.name.contains(EVENTS_BY_MESSAGE)
                        || s.name.contains(INBOUND_BY_NUMBER))
            });
            if configured && !without_configs.contains(&name) {
                Outcome::RetryWithoutConfigs(name, code)
            } else {
                Outcome::Failed(name, code)
            }
        }
    }
}

async fn create(
    admin: Arc<Admin>,
    cfg: &KafkaConfig,
    specs: Vec<TopicSpec>,
    without_configs: Vec<String>,
) -> Result<Vec<TopicResult>, ClientError> {
    let configs: Vec<Vec<(&'static str, String)>> = specs
        .iter()
        .map(|s| {
            if without_configs.contains(&s.name) {
                Vec::new()
            } else {
                topic_configs(cfg, s)
            }
        })
        .collect();
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&configs)
        .map(|(s, c)| {
            let mut t = NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(i32::from(cfg.replication_factor)),
            );
            for (k, v) in c {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(REQUEST_TIMEOUT))
        .request_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|e| ClientError::kafka("create topics", e))?;
    // A transient per-topic error fails the attempt so that the whole
    // creation is retried; other errors are the caller's to judge.
    for r in &results {
        if let Err((name, code)) = r {
            if super::client::code_is_retryable(*code) {
                return Err(ClientError::Broker {
                    context: format!("create topic {name}"),
                    code: *code,
                });
            }
        }
    }
    Ok(results)
}

/// Partition count of every topic of the cluster.
async fn topic_partitions(admin: Arc<Admin>) -> Result<BTreeMap<String, i32>, ClientError> {
    tokio::task::spawn_blocking(move || {
        let md = admin
            .inner()
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map_err(|e| ClientError::kafka("fetch topic metadata", e))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    })
    .await
    .map_err(|e| ClientError::Config(format!("metadata task failed: {e}")))?
}

/// Waits until every topic of `specs` is listed with every partition led.
async fn wait_until_ready(admin: Arc<Admin>, specs: &[TopicSpec]) -> Result<(), ClientError> {
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let start = Instant::now();
    loop {
        let a = admin.clone();
        let n = names.clone();
        let not_ready = tokio::task::spawn_blocking(move || -> Result<Vec<String>, ClientError> {
            let md = a
                .inner()
                .fetch_metadata(None, REQUEST_TIMEOUT)
                .map_err(|e| ClientError::kafka("fetch topic metadata", e))?;
            Ok(n.into_iter()
                .filter(|name| {
                    !md.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0)
                    })
                })
                .collect())
        })
        .await
        .map_err(|e| ClientError::Config(format!("metadata task failed: {e}")))?;
        match not_ready {
            Ok(v) if v.is_empty() => return Ok(()),
            Ok(v) if start.elapsed() > PROPAGATION_TIMEOUT => {
                return Err(ClientError::Timeout {
                    what: format!("topics {} to get a leader per partition", v.join(", ")),
                    waited_ms: start.elapsed().as_millis() as u64,
                })
            }
            Err(e) if !e.is_retryable() || start.elapsed() > PROPAGATION_TIMEOUT => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Logs a warning for an existing repartitioning topic (`events-by-message`,
/// `inbound-by-number`) whose retention is longer than
/// [`KafkaConfig::internal_retention`] (a topic created by a release that
/// restored its owners by replaying it keeps every record for ever, message
/// bodies and numbers included). It is not altered: until every message
/// owner has committed once with this release (its `message-state`
/// partition then holds its state), a restore still replays
/// `events-by-message` from its start. Best effort: a broker that cannot
/// describe configs is not checked.
async fn warn_unbounded_retention(
    admin: &Admin,
    cfg: &KafkaConfig,
    specs: &[TopicSpec],
    present: &BTreeMap<String, i32>,
) {
    let want = cfg.internal_retention();
    for suffix in [EVENTS_BY_MESSAGE, INBOUND_BY_NUMBER] {
        let name = cfg.internal_topic(suffix);
        if !present.contains_key(&name) || !specs.iter().any(|s| s.name == name) {
            continue;
        }
        let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        let resources = [ResourceSpecifier::Topic(&name)];
        let Ok(results) = admin.describe_configs(resources.iter(), &opts).await else {
            return;
        };
        let Some(Ok(res)) = results.into_iter().next() else {
            continue;
        };
        let retention: Option<i64> = res
            .get("retention.ms")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse().ok());
        if let Some(r) = retention.filter(|&r| r < 0 || r > want) {
            tracing::warn!(
                topic = %name,
                retention_ms = r,
                internal_retention_ms = want,
                "internal topic keeps records longer than kafka.internal_retention_ms; once its \
                 owners have logged 'message owner state restored' or 'opt-out owner state \
                 restored' with this release, lower it with kafka-configs.sh --alter \
                 --add-config retention.ms=..."
            );
        }
    }
}

/// Compacted topics created with their configs whose `cleanup.policy` the
/// broker does not report as `compact`. Best effort: a broker that cannot
/// describe configs is not checked.
async fn check_compaction(
    admin: &Admin,
    report: &EnsureReport,
    specs: &[TopicSpec],
) -> Vec<String> {
    let names: Vec<&str> = specs
        .iter()
        .filter(|s| {
            s.compacted
                && report.created.contains(&s.name)
                && !report.created_without_configs.contains(&s.name)
        })
        .map(|s| s.name.as_str())
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let resources: Vec<ResourceSpecifier<'_>> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let results = match admin.describe_configs(resources.iter(), &opts).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot describe topic configs; compaction not checked");
            return Vec::new();
        }
    };
    let mut ignored = Vec::new();
    for (name, r) in names.iter().zip(results) {
        match r {
            Ok(res) => {
                let policy = res
                    .get("cleanup.policy")
                    .and_then(|e| e.value.clone())
                    .unwrap_or_default();
                if !policy.split(',').any(|p| p.trim() == "compact") {
                    tracing::warn!(
                        topic = %name,
                        cleanup_policy = %policy,
                        "broker accepted cleanup.policy=compact but reports another policy; the topic will not be compacted"
                    );
                    ignored.push((*name).to_owned());
                }
            }
            Err(code) => {
                tracing::debug!(topic = %name, ?code, "cannot describe topic config; compaction not checked");
            }
        }
    }
    ignored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_topics_lists_outputs_and_internal_topics() {
        let cfg = KafkaConfig::new("x:1");
        let t = all_topics(&cfg);
        assert_eq!(t.len(), 11);
        let compacted: Vec<&str> = t
            .iter()
            .filter(|s| s.compacted)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            compacted,
            [
                "smsvoice.optout-changelog",
                "smsvoice.spend",
                "smsvoice.internal.spend-partials",
                "smsvoice.internal.message-state"
            ]
        );
        assert!(t.iter().all(|s| !s.retain_forever), "nothing kept for ever");
        assert!(t.iter().all(|s| s.partitions == 6));
        let configs = |name: &str| {
            let s = t.iter().find(|s| s.name == name).expect("listed");
            topic_configs(&cfg, s)
        };
        for repartitioning in [
            "smsvoice.internal.events-by-message",
            "smsvoice.internal.inbound-by-number",
        ] {
            assert_eq!(
                configs(repartitioning),
                [("retention.ms", "604800000".to_owned())]
            );
        }
        assert_eq!(
            configs("smsvoice.internal.message-state"),
            [("cleanup.policy", "compact".to_owned())]
        );
        assert!(configs("smsvoice.alarms").is_empty());
        let mut longer = cfg.clone();
        longer.internal_retention_ms = Some(30 * 86_400_000);
        assert_eq!(
            topic_configs(&longer, &t[7]),
            [("retention.ms", "2592000000".to_owned())]
        );
    }

    #[test]
    fn message_state_gets_the_partition_count_of_events_by_message() {
        let cfg = KafkaConfig::new("x:1");
        let specs = all_topics(&cfg);
        let mut present = BTreeMap::new();
        let state = |v: &[TopicSpec]| {
            v.iter()
                .find(|s| s.name == "smsvoice.internal.message-state")
                .map(|s| s.partitions)
        };
        assert_eq!(state(&copartition(&cfg, &specs, &present)), Some(6));
        present.insert("smsvoice.internal.events-by-message".to_owned(), 12);
        let c = copartition(&cfg, &specs, &present);
        assert_eq!(state(&c), Some(12));
        assert!(c
            .iter()
            .filter(|s| s.name != "smsvoice.internal.message-state")
            .all(|s| s.partitions == 6));
    }

    #[test]
    fn ensure_topics_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let cfg = KafkaConfig::new("127.0.0.1:1");
        let specs = all_topics(&cfg);
        let f = ensure_topics(&cfg, &specs);
        is_send(&f);
    }

    #[test]
    fn rejected_configs_lead_to_creation_without_them() {
        let specs = [
            TopicSpec {
                name: "state".into(),
                partitions: 3,
                compacted: true,
                retain_forever: false,
            },
            TopicSpec {
                name: "plain".into(),
                partitions: 3,
                compacted: false,
                retain_forever: false,
            },
        ];
        let e = |n: &str, c| Err((n.to_owned(), c));
        use RDKafkaErrorCode as C;
        assert_eq!(
            judge(e("state", C::InvalidConfig), &specs, &[]),
            Outcome::RetryWithoutConfigs("state".into(), C::InvalidConfig)
        );
        assert_eq!(
            judge(e("state", C::PolicyViolation), &specs, &[]),
            Outcome::RetryWithoutConfigs("state".into(), C::PolicyViolation)
        );
        // Without configs, a second failure is final.
        assert_eq!(
            judge(e("state", C::InvalidConfig), &specs, &["state".into()]),
            Outcome::Failed("state".into(), C::InvalidConfig)
        );
        assert_eq!(
            judge(Ok("state".into()), &specs, &["state".into()]),
            Outcome::CreatedWithoutConfigs("state".into())
        );
        // A topic without configs has nothing to drop.
        assert_eq!(
            judge(e("plain", C::InvalidReplicationFactor), &specs, &[]),
            Outcome::Failed("plain".into(), C::InvalidReplicationFactor)
        );
        assert_eq!(
            judge(e("plain", C::TopicAlreadyExists), &specs, &[]),
            Outcome::Existing("plain".into(), 3)
        );
        assert_eq!(
            judge(Ok("plain".into()), &specs, &[]),
            Outcome::Created("plain".into())
        );
    }
}
