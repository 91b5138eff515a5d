//! `GET /v1/spend?month=YYYY-MM` (default: the current UTC month): the
//! exact month-to-date spend of every channel as the spend topic publishes
//! it (decimal strings, never floats), with the state of each configured
//! alarm and the enforced limit.
//!
//! ```json
//! {"month":"2025-11","channels":[{"channel":"SMS","spendUsd":"12.34567",
//!  "messages":1234,"alarms":[{"name":"sms-80","thresholdUsd":"80",
//!  "comparison":"GREATER_THAN_OR_EQUAL_TO_THRESHOLD","state":"OK"}],
//!  "limitUsd":"100","limitReached":false}, ...]}
//! ```
//!
//! An alarm is `OK` until the spend topic records it in `ALARM` (the totals
//! owner decides transitions; this reads them). A malformed month -> 400.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{error, AppState};
use crate::model::Channel;
use crate::money::Usd;
use crate::spend::alarms::AlarmState;
use crate::spend::MonthKey;

/// The month a query asks for.
fn month_of(query: Option<&str>) -> Result<MonthKey, String> {
    let mut month = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("month", v)) => month = Some(v),
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?} (only month=YYYY-MM)"
                ))
            }
        }
    }
    match month {
        Some(m) => m
            .parse::<MonthKey>()
            .map_err(|_| format!("month {m:?} is not YYYY-MM")),
        None => MonthKey::from_epoch_ms(chrono::Utc::now().timestamp_millis())
            .ok_or_else(|| "the clock is outside the calendar".to_owned()),
    }
}

/// The body of the answer for `month`.
pub(crate) fn spend_json(state: &AppState, month: MonthKey) -> Result<serde_json::Value, Response> {
    let view = state
        .shared
        .view
        .read()
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "view lock poisoned"))?;
    let cfg = &state.shared.cfg.spend;
    let mut channels = Vec::new();
    for channel in Channel::ALL {
        let published = view.spend().get(&(month, channel));
        let spend = published.map_or(Usd::ZERO, |s| s.spend_usd);
        let alarms: Vec<serde_json::Value> = cfg
            .alarms
            .iter()
            .filter(|a| a.channel == channel)
            .map(|a| {
                let st = published
                    .and_then(|s| s.alarms.alarms.iter().find(|e| e.name == a.name))
                    .map_or(AlarmState::Ok, |e| e.state);
                serde_json::json!({
                    "name": a.name,
                    "thresholdUsd": a.threshold_usd,
                    "comparison": a.comparison,
                    "state": st,
                })
            })
            .collect();
        let limit = cfg.limits.iter().find(|l| l.channel == channel);
        channels.push(serde_json::json!({
            "channel": channel,
            "spendUsd": spend,
            "messages": published.map_or(0, |s| s.messages),
            "alarms": alarms,
            "limitUsd": limit.map(|l| l.monthly_limit_usd),
            "limitReached": published.is_some_and(|s| s.alarms.limit_reached),
        }));
    }
    Ok(serde_json::json!({ "month": month.to_string(), "channels": channels }))
}

pub(crate) async fn get_spend(State(state): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let month = match month_of(q.as_deref()) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match spend_json(&state, month) {
        Ok(body) => Json(body).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_checked() {
        assert_eq!(
            month_of(Some("month=2025-11")).map(|m| m.to_string()),
            Ok("2025-11".into())
        );
        assert!(month_of(Some("month=2025-13")).is_err());
        assert!(month_of(Some("month=25-11")).is_err());
        assert!(month_of(Some("month=2025-11&x=1")).is_err());
        assert!(month_of(None).is_ok());
    }
}
