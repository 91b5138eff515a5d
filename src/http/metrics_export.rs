//! `/metrics`: Prometheus text format, rendered by
//! `metrics-exporter-prometheus` (nothing is formatted by hand): the
//! instance's counters and replicated view are read at each scrape; the
//! delivery counters, latency and duration histograms are recorded where
//! they happen ([`crate::runtime::observe`]). Every metric is listed in the README
//! ("Operating"). The spend gauges are a display of the exact decimal
//! totals of the spend topic (a float is fine for a graph; the money path
//! and the API stay exact).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::runtime::observe;
use std::sync::{Mutex, OnceLock};

use super::AppState;
use crate::model::Channel;
use crate::money::Usd;
use crate::runtime::Metrics;
use crate::spend::alarms::AlarmState;
use crate::spend::MonthKey;

/// The process's recorder (installed once, the first time a server starts:
/// the metrics recorded where things happen, [`crate::runtime::observe`],
/// go to it; two instances in one process, as in tests, share it) and the
/// consumer-lag reader of this server's instance.
pub(crate) struct Exporter {
    handle: PrometheusHandle,
    lag: super::lag::Lag,
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// `smsvoice_process_start_time_seconds`: the unix time at which the
/// process set up its first HTTP server (`run` does so once the instance has
/// started, after the brokers answered). A restart changes it, so the alert
/// rules count restarts with `changes(...)`.
static STARTED: OnceLock<f64> = OnceLock::new();

/// The month `smsvoice_current_month_info` last called current.
static CURRENT_MONTH: Mutex<Option<String>> = Mutex::new(None);

/// Unix time now, in seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The process's start time (see [`STARTED`]), fixed on first use.
fn process_start() -> f64 {
    *STARTED.get_or_init(unix_now)
}

/// Records `now` as the current month in `last`; the month it replaces, if
/// any (its `smsvoice_current_month_info` goes to 0: the exporter cannot
/// drop a series).
fn month_change(last: &mut Option<String>, now: &str) -> Option<String> {
    if last.as_deref() == Some(now) {
        return None;
    }
    last.replace(now.to_owned())
}

/// `smsvoice_current_month_info{month}`: 1 for the UTC month of the clock
/// at `now_ms`, 0 for a month that was current earlier in this process's
/// life. The alert rules join on it so that only the current month's spend
/// alerts (the gauges of past months stay exported).
fn current_month(now_ms: i64) {
    let Some(month) = MonthKey::from_epoch_ms(now_ms).map(|m| m.to_string()) else {
        return;
    };
    let old = {
        let mut last = CURRENT_MONTH
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        month_change(&mut last, &month)
    };
    if let Some(old) = old {
        gauge!("smsvoice_current_month_info", "month" => old).set(0.0);
    }
    gauge!("smsvoice_current_month_info", "month" => month).set(1.0);
}

/// The process's Prometheus recorder, installed on first use.
fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                ("smsvoice_event_output_latency_seconds", observe::LATENCY_BUCKETS),
                ("smsvoice_commit_seconds", observe::DURATION_BUCKETS),
                ("smsvoice_partition_restore_seconds", observe::DURATION_BUCKETS),
                ("smsvoice_archive_upload_seconds", observe::DURATION_BUCKETS),
            ];
            let builder = buckets
                .iter()
                .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
                    b.set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed: /metrics shows only what is set at scrape time");
            }
            handle
        })
        .clone()
}

impl Exporter {
    pub(crate) fn new(shared: &crate::runtime::Shared) -> Result<Exporter, String> {
        process_start();
        Ok(Exporter {
            handle: handle(),
            lag: super::lag::Lag::new(shared)?,
        })
    }
}

/// The name of the spend gauge of `channel`, after the service's
/// CloudWatch metrics (`TextMessageMonthlySpend`, ...).
pub fn spend_gauge(channel: Channel) -> &'static str {
    match channel {
        Channel::Sms => "smsvoice_text_message_monthly_spend_usd",
        Channel::Mms => "smsvoice_media_message_monthly_spend_usd",
        Channel::Voice => "smsvoice_voice_message_monthly_spend_usd",
        Channel::Rcs => "smsvoice_rcs_message_monthly_spend_usd",
    }
}

/// A display value of an exact amount.
fn display(u: Usd) -> f64 {
    u.to_string().parse().unwrap_or(f64::NAN)
}

fn describe() {
    for c in Channel::ALL {
        describe_gauge!(
            spend_gauge(c),
            Unit::Count,
            "Month-to-date spend of the channel in USD, as the spend topic publishes it (label month, YYYY-MM)"
        );
    }
    describe_gauge!(
        "smsvoice_monthly_messages",
        "Distinct messages counted in a month's spend (labels channel, month)"
    );
    describe_gauge!(
        "smsvoice_spend_alarm_state",
        "1 while a spend alarm is in ALARM in a month, 0 in OK (labels alarm, channel, month)"
    );
    describe_gauge!(
        "smsvoice_spend_alarm_threshold_usd",
        "Configured threshold of a spend alarm in USD (labels alarm, channel)"
    );
    describe_gauge!(
        "smsvoice_spend_limit_usd",
        "Configured enforced monthly limit in USD (label channel)"
    );
    describe_gauge!(
        "smsvoice_spend_limit_reached",
        "1 once LIMIT_REACHED was emitted for a channel in a month (labels channel, month)"
    );
    describe_counter!(
        "smsvoice_records_in_total",
        "Records read by a stage (label stage: router, messages, optouts, totals, archive)"
    );
    describe_counter!(
        "smsvoice_dead_letters_total",
        "Records written to the dead-letter topic (router and owners)"
    );
    describe_counter!(
        "smsvoice_alarm_records_total",
        "Alarm state changes and LIMIT_REACHED records written"
    );
    describe_counter!(
        "smsvoice_commits_total",
        "Commit points done (transactions or offset commits), all stages"
    );
    describe_counter!(
        "smsvoice_rewinds_total",
        "Rewinds to the last commit after an abortable error or a rebalance inside a transaction"
    );
    describe_counter!(
        "smsvoice_refetches_total",
        "Partitions re-read after the broker skipped offsets"
    );
    describe_counter!(
        "smsvoice_restored_records_total",
        "Changelog and retained records read to restore state"
    );
    describe_counter!(
        "smsvoice_restore_seconds_total",
        Unit::Seconds,
        "Time spent restoring state"
    );
    describe_counter!(
        "smsvoice_archive_rows_total",
        "Rows appended to archive files"
    );
    describe_counter!("smsvoice_archive_files_total", "Archive files made durable");
    describe_counter!(
        "smsvoice_archive_bytes_total",
        Unit::Bytes,
        "Bytes of the archive files made durable"
    );
    describe_counter!(
        "smsvoice_archive_repeats_total",
        "Records the archive dropped as repeats of an at-least-once replay"
    );
    describe_gauge!(
        "smsvoice_restoring_partitions",
        "Partitions whose state is being restored now"
    );
    describe_gauge!("smsvoice_view_loaded", "1 once the replicated view (opt-out table, spend) has read its topics to where they ended at start");
    describe_gauge!("smsvoice_ready", "1 when /readyz answers 200");
    for (name, what) in [
        ("smsvoice_text_message_parts_sent_total", "SMS message parts accepted by the carrier (TEXT_SUCCESSFUL, distinct events; NumberOfTextMessagePartsSent), label iso_country_code"),
        ("smsvoice_text_message_parts_delivered_total", "SMS message parts delivered to the handset (TEXT_DELIVERED; NumberOfTextMessagePartsDelivered), label iso_country_code"),
        ("smsvoice_text_messages_blocked_by_protect_total", "SMS messages blocked by Protect (TEXT_PROTECT_BLOCKED; TextMessagesBlockedByProtect), label iso_country_code"),
        ("smsvoice_media_message_parts_sent_total", "MMS message parts accepted by the carrier (MEDIA_SUCCESSFUL; NumberOfMediaMessagePartsSent), label iso_country_code"),
        ("smsvoice_media_message_parts_delivered_total", "MMS message parts delivered (MEDIA_DELIVERED; NumberOfMediaMessagePartsDelivered), label iso_country_code"),
        ("smsvoice_dead_letters_by_reason_total", "Dead letters written, by reason code (label reason)"),
    ] {
        describe_counter!(name, what);
    }
    describe_histogram!("smsvoice_event_output_latency_seconds", Unit::Seconds, "From a delivery event's eventTimestamp to its enriched event being produced (label channel)");
    describe_histogram!(
        "smsvoice_commit_seconds",
        Unit::Seconds,
        "Duration of a commit point (label stage)"
    );
    describe_histogram!(
        "smsvoice_partition_restore_seconds",
        Unit::Seconds,
        "Duration of one partition's state restore (label stage)"
    );
    describe_histogram!(
        "smsvoice_archive_upload_seconds",
        Unit::Seconds,
        "Duration of one archive file upload, retries included"
    );
    describe_gauge!(
        "smsvoice_current_month_info",
        "1 for the UTC month of the instance's clock (label month, YYYY-MM), 0 for a month that was current earlier"
    );
    describe_gauge!(
        "smsvoice_process_start_time_seconds",
        Unit::Seconds,
        "Unix time at which the process started (set up its HTTP server, once the instance had started)"
    );
    describe_gauge!("smsvoice_consumer_lag_records", "Records of a partition after the group's committed offset (labels group, topic, partition; not updated while the broker does not answer)");
}

/// Sets every metric from the instance's state (inside the server's
/// recorder).
fn update(state: &AppState, ready: bool, lags: &[super::lag::PartitionLag]) {
    describe();
    let shared = &state.shared;
    let m = &shared.metrics;
    let cfg = &shared.cfg.spend;
    for a in &cfg.alarms {
        gauge!("smsvoice_spend_alarm_threshold_usd", "alarm" => a.name.clone(), "channel" => a.channel.as_str())
            .set(display(a.threshold_usd));
    }
    for l in &cfg.limits {
        gauge!("smsvoice_spend_limit_usd", "channel" => l.channel.as_str())
            .set(display(l.monthly_limit_usd));
    }
    if let Ok(view) = shared.view.read() {
        for ((month, channel), s) in view.spend() {
            let month = month.to_string();
            gauge!(spend_gauge(*channel), "month" => month.clone()).set(display(s.spend_usd));
            gauge!("smsvoice_monthly_messages", "channel" => channel.as_str(), "month" => month.clone())
                .set(s.messages as f64);
            for a in cfg.alarms.iter().filter(|a| a.channel == *channel) {
                let st = s
                    .alarms
                    .alarms
                    .iter()
                    .find(|e| e.name == a.name)
                    .map_or(AlarmState::Ok, |e| e.state);
                gauge!("smsvoice_spend_alarm_state", "alarm" => a.name.clone(), "channel" => channel.as_str(), "month" => month.clone())
                    .set(if st == AlarmState::Alarm { 1.0 } else { 0.0 });
            }
            if cfg.limits.iter().any(|l| l.channel == *channel) {
                gauge!("smsvoice_spend_limit_reached", "channel" => channel.as_str(), "month" => month.clone())
                    .set(if s.alarms.limit_reached { 1.0 } else { 0.0 });
            }
        }
    }
    for (stage, c) in [
        ("router", &m.router_records),
        ("messages", &m.events),
        ("optouts", &m.inbound),
        ("totals", &m.partials),
        ("archive", &m.archive_records),
    ] {
        counter!("smsvoice_records_in_total", "stage" => stage).absolute(Metrics::get(c));
    }
    for (name, c) in [
        ("smsvoice_dead_letters_total", &m.dead_letters),
        ("smsvoice_alarm_records_total", &m.alarms),
        ("smsvoice_commits_total", &m.commits),
        ("smsvoice_rewinds_total", &m.rewinds),
        ("smsvoice_refetches_total", &m.refetches),
        ("smsvoice_restored_records_total", &m.restored_records),
        ("smsvoice_archive_rows_total", &m.archive_rows),
        ("smsvoice_archive_files_total", &m.archive_files),
        ("smsvoice_archive_bytes_total", &m.archive_bytes),
        ("smsvoice_archive_repeats_total", &m.archive_repeats),
    ] {
        counter!(name).absolute(Metrics::get(c));
    }
    counter!("smsvoice_restore_seconds_total").absolute(Metrics::get(&m.restore_ms) / 1000);
    gauge!("smsvoice_restoring_partitions").set(Metrics::get(&m.restoring) as f64);
    gauge!("smsvoice_view_loaded").set(if m.view_loaded.load(Ordering::Relaxed) {
        1.0
    } else {
        0.0
    });
    gauge!("smsvoice_ready").set(if ready { 1.0 } else { 0.0 });
    gauge!("smsvoice_process_start_time_seconds").set(process_start());
    current_month(chrono::Utc::now().timestamp_millis());
    for l in lags {
        gauge!("smsvoice_consumer_lag_records", "group" => l.group.clone(), "topic" => l.topic.clone(), "partition" => l.partition.to_string())
            .set(l.records as f64);
    }
}

/// The text of a scrape.
pub(crate) async fn render(state: &AppState) -> String {
    let reasons = super::health::not_ready_reasons(state).await;
    let ready = reasons.is_empty();
    let broker_up = !reasons
        .iter()
        .any(|r| r.starts_with(super::health::BROKER_UNREACHABLE));
    let exporter = state.metrics.clone();
    let lags = if broker_up {
        let (e, shared) = (exporter.clone(), state.shared.clone());
        tokio::task::spawn_blocking(move || e.lag.read(&shared))
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    update(state, ready, &lags);
    exporter.handle.render()
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let body = render(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_month_changes_once_per_month() {
        let mut last = None;
        assert_eq!(month_change(&mut last, "2026-11"), None);
        assert_eq!(month_change(&mut last, "2026-11"), None);
        assert_eq!(
            month_change(&mut last, "2026-12"),
            Some("2026-11".to_owned())
        );
        assert_eq!(last.as_deref(), Some("2026-12"));
        // 2026-12-31T23:59:59.999Z and the next millisecond.
        let end = MonthKey::new(2026, 12).map(MonthKey::end_ms);
        assert_eq!(
            end.and_then(|e| MonthKey::from_epoch_ms(e - 1))
                .map(|m| m.to_string()),
            Some("2026-12".to_owned())
        );
        assert_eq!(
            end.and_then(MonthKey::from_epoch_ms).map(|m| m.to_string()),
            Some("2027-01".to_owned())
        );
    }

    #[test]
    fn the_start_time_is_fixed() {
        let a = process_start();
        assert!(a > 1.6e9, "{a}");
        assert_eq!(process_start(), a);
    }
}
