//! The HTTP server of `smsvoice run` and `smsvoice demo --serve`: probes
//! (`/healthz`, `/readyz`), Prometheus metrics (`/metrics`) and the opt-out
//! and spend API (`/v1/...`). It is part of the shell: it reads the
//! instance's counters and replicated view ([`crate::runtime::Shared`]) and
//! writes operators' opt-out changes to Kafka; the core knows nothing of it.
//!
//! | path | method | what |
//! |---|---|---|
//! | `/healthz` | GET | 200 while the process runs without a fatal error |
//! | `/readyz` | GET | 200 when the view is loaded, no partition is being restored and the broker answers; 503 with the reasons otherwise |
//! | `/metrics` | GET | Prometheus text format ([`metrics_export`]) |
//! | `/v1/opt-out-lists/{list}/numbers/{number}` | GET, PUT, DELETE | one number's opt-out state ([`optout_api`]) |
//! | `/v1/spend?month=YYYY-MM` | GET | exact month-to-date spend and alarm states ([`spend_api`]) |
//!
//! Every error is a JSON body `{"error": "..."}` with a 4xx or 5xx status;
//! no request can panic a handler (every input is checked, never
//! unwrapped).

// The handlers' helpers return the error response itself: a request's
// cost, not a hot path.
#![allow(clippy::result_large_err)]

pub mod config;
mod health;
mod lag;
pub mod metrics_export;
pub mod optout_api;
pub mod spend_api;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use subtle::ConstantTimeEq;

pub use config::HttpConfig;

use crate::runtime::Shared;

/// Why the HTTP server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// `[http] listen` is not an address.
    #[error("{0}")]
    Config(String),
    /// The address cannot be bound (in use, not local).
    #[error("http.listen {addr}: cannot listen: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The Kafka clients of the server could not be created.
    #[error("http server Kafka client: {0}")]
    Kafka(String),
}

/// A running server: its address (the bound port when `listen` asked for
/// port 0). Dropping it stops the server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) shared: Shared,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) probe: Arc<health::Probe>,
    pub(crate) metrics: Arc<metrics_export::Exporter>,
    pub(crate) writer: Arc<optout_api::Writer>,
    pub(crate) write_timeout: std::time::Duration,
}

/// Starts the server of `shared`'s instance on `handle` (`None` when
/// `[http] listen` is empty).
pub fn start(
    shared: &Shared,
    handle: &tokio::runtime::Handle,
) -> Result<Option<Server>, HttpError> {
    let cfg = &shared.cfg.http;
    let Some(addr) = cfg.address().map_err(HttpError::Config)? else {
        return Ok(None);
    };
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| HttpError::Bind { addr, source })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| HttpError::Bind { addr, source })?;
    let bound = std_listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let state = AppState {
        shared: shared.clone(),
        token: cfg.token.as_deref().map(Arc::from),
        probe: Arc::new(health::Probe::new(shared).map_err(HttpError::Kafka)?),
        metrics: Arc::new(metrics_export::Exporter::new(shared).map_err(HttpError::Kafka)?),
        writer: Arc::new(optout_api::Writer::new(shared).map_err(HttpError::Kafka)?),
        write_timeout: std::time::Duration::from_millis(cfg.write_timeout_ms),
    };
    let app = router(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _guard = handle.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|source| HttpError::Bind { addr, source })?;
    handle.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "http server stopped");
        }
    });
    Ok(Some(Server {
        addr: bound,
        stop: Some(stop),
    }))
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics_export::metrics))
        .route(
            "/v1/opt-out-lists/{list}/numbers/{number}",
            get(optout_api::get_number)
                .put(optout_api::put_number)
                .delete(optout_api::delete_number),
        )
        .route("/v1/spend", get(spend_api::get_spend))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint (see the README's Operating section)",
    )
}

/// A JSON error response.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Checks the bearer token of a write request: `Err` with the response to
/// send when the request may not write (writes disabled: 403; no or
/// malformed `Authorization`: 401; a wrong token: 403).
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = state.token.as_deref() else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "write methods are disabled: no [http] token is configured",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return Err(r);
    };
    if bool::from(given.trim().as_bytes().ct_eq(token.trim().as_bytes())) {
        Ok(())
    } else {
        Err(error(StatusCode::FORBIDDEN, "wrong bearer token"))
    }
}
