//! `/healthz` and `/readyz`.
//!
//! Liveness: the process serves HTTP, has no fatal error (a fatal error
//! stops it anyway; this answers 503 during its last seconds) and every
//! loop (stage workers, replica, archive sink) has turned within
//! [`Metrics::STALE_LOOP`] (a stuck loop answers 503, naming it, so that
//! Kubernetes restarts the pod).
//!
//! Readiness, 200 only when all of these hold, else 503 with the reasons:
//! the replicated view has read its topics up to where they ended at start
//! (opt-out answers would otherwise miss entries), no stage is restoring a
//! partition, the broker answers a metadata request (at most one request
//! per second; 2 s timeout), the instance is not stopping and has no fatal
//! error.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::AppState;
use crate::kafka::consumer_config;
use crate::runtime::{Metrics, Shared};

/// Asks the broker whether it answers, at most once a second.
pub(crate) struct Probe {
    consumer: BaseConsumer,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// How a reason about the broker starts.
pub(crate) const BROKER_UNREACHABLE: &str = "broker unreachable";

const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Probe {
    pub(crate) fn new(shared: &Shared) -> Result<Probe, String> {
        let consumer: BaseConsumer = consumer_config(&shared.kafka, "http")
            .create()
            .map_err(|e| e.to_string())?;
        Ok(Probe {
            consumer,
            last: Mutex::new(None),
        })
    }

    /// Whether the broker answered (cached for a second).
    fn broker(&self) -> Result<(), String> {
        if let Ok(last) = self.last.lock() {
            if let Some((at, r)) = last.as_ref() {
                if at.elapsed() < PROBE_EVERY {
                    return r.clone();
                }
            }
        }
        let r = self
            .consumer
            .fetch_metadata(None, PROBE_TIMEOUT)
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Ok(mut last) = self.last.lock() {
            *last = Some((Instant::now(), r.clone()));
        }
        r
    }
}

pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let m = &state.shared.metrics;
    if let Some(f) = state.shared.fatal() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "fatal", "error": f.to_string() })),
        )
            .into_response();
    }
    let stale = m.stale_loops(Metrics::STALE_LOOP);
    if !stale.is_empty() && !state.shared.stopping() {
        let loops: Vec<String> = stale
            .iter()
            .map(|(n, d)| format!("{n}: last turned {} s ago", d.as_secs()))
            .collect();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "stuck", "loops": loops })),
        )
            .into_response();
    }
    let loops = m.beats.lock().map(|b| b.len()).unwrap_or(0);
    Json(serde_json::json!({ "status": "ok", "loops": loops })).into_response()
}

/// Why the instance is not ready (empty: ready), the broker probe
/// included.
pub(crate) async fn not_ready_reasons(state: &AppState) -> Vec<String> {
    let shared = &state.shared;
    let mut reasons = Vec::new();
    if let Some(f) = shared.fatal() {
        reasons.push(format!("fatal error: {f}"));
    }
    if shared.stopping() {
        reasons.push("stopping".into());
    }
    let m = &shared.metrics;
    if !m.view_loaded.load(Ordering::Relaxed) {
        reasons.push("loading the replicated view (opt-out table, spend)".into());
    }
    let restoring = Metrics::get(&m.restoring);
    if restoring > 0 {
        reasons.push(format!("restoring the state of {restoring} partition(s)"));
    }
    let probe = state.probe.clone();
    let broker = tokio::task::spawn_blocking(move || probe.broker())
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = broker {
        reasons.push(format!(
            "{BROKER_UNREACHABLE} ({}): {e}",
            shared.kafka.bootstrap_servers
        ));
    }
    reasons
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let reasons = not_ready_reasons(&state).await;
    if reasons.is_empty() {
        Json(serde_json::json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reasons": reasons })),
        )
            .into_response()
    }
}
