//! The opt-out API: one number's state on one list.
//!
//! * `GET /v1/opt-out-lists/{list}/numbers/{number}` ->
//!   `{"optOutList","number","optedOut","since","cause"}` from the
//!   replicated view (every instance answers the same once it has read the
//!   changelog). `since` is the RFC 3339 time of the deciding message (or
//!   of the operator's request), `cause` `{"inboundMessageId": ...,
//!   "keyword": ...}` or
//!   `{"operator": {"requestId": ...}}`; both `null` for a number never
//!   seen (not opted out).
//! * `PUT` (opt out) and `DELETE` (opt back in) on the same path, the
//!   equivalents of the service's PutOptedOutNumber and
//!   DeleteOptedOutNumber, for operators with the bearer token. The change
//!   is sent to the owner of the number ([`OperatorChange`] on partition
//!   `partition_of(number)` of `inbound-by-number`), which decides it in
//!   order with the customer's messages (last writer wins by time, as for a
//!   keyword) and writes it to the opt-out changelog; every instance then
//!   reads it back. The answer waits for that (`[http] write_timeout_ms`):
//!   200 with the new state once this instance's view shows it, 202 if not
//!   yet.
//!
//! Bad input: a number that is not E.164 -> 400; a list neither configured
//! nor `Default` -> 404; the view not loaded yet -> 503 (an answer could
//! miss an entry).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{authorize, error, AppState};
use crate::kafka::admin::INBOUND_BY_NUMBER;
use crate::kafka::producer_config;
use crate::model::is_e164;
use crate::runtime::records::partition_of;
use crate::runtime::Shared;
use crate::stages::forward::{encode_operator, OperatorChange};

/// Sends operators' changes to the owners.
pub(crate) struct Writer {
    producer: FutureProducer,
    topic: String,
    partitions: i32,
    seq: AtomicU64,
}

impl Writer {
    pub(crate) fn new(shared: &Shared) -> Result<Writer, String> {
        let topic = shared.internal(INBOUND_BY_NUMBER);
        let producer: FutureProducer = producer_config(&shared.kafka, None)
            .create()
            .map_err(|e| e.to_string())?;
        Ok(Writer {
            partitions: shared.partitions_of(&topic),
            topic,
            producer,
            seq: AtomicU64::new(0),
        })
    }

    /// A request id unique to this process.
    fn request_id(&self, at: i64) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{at}-{n}", crate::runtime::stage::instance_id())
    }

    async fn send(&self, c: &OperatorChange) -> Result<(), String> {
        let value = encode_operator(c);
        let record = FutureRecord::to(&self.topic)
            .key(c.number.as_bytes())
            .payload(&value)
            .partition(partition_of(&c.number, self.partitions));
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }
}

/// Checks the path: the list and number, or the error response.
fn checked(state: &AppState, list: &str, number: &str) -> Result<(), Response> {
    if !is_e164(number) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("number {number:?} is not an E.164 phone number (+ and 2 to 15 digits)"),
        ));
    }
    let known = state
        .shared
        .view
        .read()
        .map(|v| v.optout().has_list(list))
        .unwrap_or(false);
    if !known {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no opt-out list {list:?} (configure it under [[optout.lists]])"),
        ));
    }
    if !state.shared.metrics.view_loaded.load(Ordering::Relaxed) {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the opt-out table is still being loaded",
        ));
    }
    Ok(())
}

/// The entry of `number` on `list` as the API shows it, and its cause
/// text.
fn entry(
    state: &AppState,
    list: &str,
    number: &str,
) -> Result<(serde_json::Value, Option<String>), Response> {
    let view = state
        .shared
        .view
        .read()
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "view lock poisoned"))?;
    let found = view.optout().lookup(list, number);
    drop(view);
    let (opted_out, since, cause, keyword) = match found {
        Some(l) => (l.opted_out, l.since, l.cause, l.keyword),
        None => (false, None, None, None),
    };
    let since = since
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let cause_json = cause.as_deref().map(|c| match c.strip_prefix("operator:") {
        Some(id) => serde_json::json!({ "operator": { "requestId": id } }),
        None => serde_json::json!({ "inboundMessageId": c, "keyword": keyword }),
    });
    Ok((
        serde_json::json!({
            "optOutList": list,
            "number": number,
            "optedOut": opted_out,
            "since": since,
            "cause": cause_json,
        }),
        cause,
    ))
}

pub(crate) async fn get_number(
    State(state): State<AppState>,
    Path((list, number)): Path<(String, String)>,
) -> Response {
    if let Err(r) = checked(&state, &list, &number) {
        return r;
    }
    match entry(&state, &list, &number) {
        Ok((body, _)) => Json(body).into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn put_number(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((list, number)): Path<(String, String)>,
) -> Response {
    write(state, headers, list, number, true).await
}

pub(crate) async fn delete_number(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((list, number)): Path<(String, String)>,
) -> Response {
    write(state, headers, list, number, false).await
}

async fn write(
    state: AppState,
    headers: HeaderMap,
    list: String,
    number: String,
    opted_out: bool,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    if let Err(r) = checked(&state, &list, &number) {
        return r;
    }
    let at = chrono::Utc::now().timestamp_millis();
    let change = OperatorChange {
        opt_out_list: list.clone(),
        number: number.clone(),
        opted_out,
        at,
        request_id: state.writer.request_id(at),
    };
    if let Err(e) = state.writer.send(&change).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not send the change to Kafka: {e}"),
        );
    }
    tracing::info!(
        list = %list,
        opted_out,
        request_id = %change.request_id,
        "operator opt-out change sent"
    );
    let want = change.cause();
    let deadline = Instant::now() + state.write_timeout;
    loop {
        match entry(&state, &list, &number) {
            Ok((body, cause)) if cause.as_deref() == Some(want.as_str()) => {
                return Json(body).into_response();
            }
            Ok((mut body, _)) if Instant::now() >= deadline => {
                // Accepted; not (yet) the stored decision here: a later
                // message of the customer may have decided, or the owner
                // is catching up.
                if let Some(o) = body.as_object_mut() {
                    o.insert(
                        "requestId".into(),
                        serde_json::Value::String(change.request_id.clone()),
                    );
                    o.insert("applied".into(), serde_json::Value::Bool(false));
                }
                return (StatusCode::ACCEPTED, Json(body)).into_response();
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(r) => return r,
        }
    }
}
