//! The rules a decoded field must meet: money amounts, timestamps in range,
//! sizes, the `context` map's bounds and the per-message cost ceiling.

use super::*;

pub(super) fn money(field: &str, raw: Option<&str>) -> Result<Option<Usd>, Reason> {
    let Some(text) = raw else { return Ok(None) };
    match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => {}
        Some(&c) => {
            return Err(Reason::WrongType {
                field: field.to_owned(),
                detail: format!("expected a number (US dollars), found {}", json_kind(c)),
            })
        }
        None => {
            return Err(Reason::WrongType {
                field: field.to_owned(),
                detail: "empty".into(),
            })
        }
    }
    let usd = Usd::parse_exact(text).map_err(|e| Reason::InvalidMoney {
        field: field.to_owned(),
        detail: match e {
            MoneyError::TooPrecise(_) | MoneyError::OutOfRange(_) | MoneyError::Syntax(_) => {
                e.to_string()
            }
        },
    })?;
    if usd.is_negative() {
        return Err(Reason::InvalidMoney {
            field: field.to_owned(),
            detail: format!("{text} is negative"),
        });
    }
    Ok(Some(usd))
}

pub(super) fn timestamp(field: &str, ms: i64) -> Result<i64, Reason> {
    if (MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(Reason::InvalidValue {
            field: field.to_owned(),
            detail: format!("{ms} is not epoch milliseconds between 2000-01-01 and 2200-01-01"),
        })
    }
}

pub(super) fn rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `field_too_long` unless `value` has at most `max` bytes.
pub(super) fn check_len(field: &str, value: &str, max: usize, limit: &str) -> Result<(), Reason> {
    if value.len() <= max {
        return Ok(());
    }
    Err(Reason::FieldTooLong {
        field: field.to_owned(),
        detail: format!(
            "{} bytes, more than the limit of {max} bytes ([limits] {limit})",
            value.len()
        ),
    })
}

pub(super) fn check_opt_len(
    field: &str,
    value: Option<&str>,
    max: usize,
    limit: &str,
) -> Result<(), Reason> {
    value.map_or(Ok(()), |v| check_len(field, v, max, limit))
}

/// Bounds the `context` map: entry count, key and value lengths.
pub(super) fn check_context(
    context: Option<&BTreeMap<String, String>>,
    limits: &Limits,
) -> Result<(), Reason> {
    let Some(context) = context else {
        return Ok(());
    };
    if context.len() > limits.max_context_entries {
        return Err(Reason::TooManyEntries {
            field: "context".into(),
            detail: format!(
                "{} entries, more than the limit of {} ([limits] max_context_entries)",
                context.len(),
                limits.max_context_entries
            ),
        });
    }
    let max = limits.max_context_value_bytes;
    for (k, v) in context {
        if k.len() > max {
            return Err(Reason::FieldTooLong {
                field: "context".into(),
                detail: format!(
                    "a key of {} bytes, more than the limit of {max} bytes ([limits] max_context_value_bytes)",
                    k.len()
                ),
            });
        }
        check_len(&format!("context.{k}"), v, max, "max_context_value_bytes")?;
    }
    Ok(())
}

/// `invalid_money` when a price, a fee or their sum exceeds the channel's
/// per-message ceiling.
pub(crate) fn check_cost(
    channel: crate::model::Channel,
    price: Option<Usd>,
    fee: Option<Usd>,
    limits: &Limits,
) -> Result<(), Reason> {
    let ceiling = limits.max_message_cost(channel);
    let over = |field: &str, what: String| {
        Reason::InvalidMoney {
        field: field.to_owned(),
        detail: format!(
            "{what} exceeds the {channel} per-message ceiling of {ceiling} USD ([spend] max_message_cost_usd)"
        ),
    }
    };
    for (field, v) in [("totalMessagePrice", price), ("totalCarrierFee", fee)] {
        if let Some(v) = v {
            if v > ceiling {
                return Err(over(field, format!("{v} USD")));
            }
        }
    }
    if let (Some(p), Some(f)) = (price, fee) {
        let sum = p.checked_add(f);
        if sum.is_none_or(|sum| sum > ceiling) {
            let sum = sum.map_or_else(|| "more than 10^28".to_owned(), |s| s.to_string());
            return Err(over(
                "totalMessagePrice",
                format!("totalMessagePrice + totalCarrierFee = {sum} USD"),
            ));
        }
    }
    Ok(())
}
