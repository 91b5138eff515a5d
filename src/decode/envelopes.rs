//! The envelopes a payload may arrive in (SNS, EventBridge, Firehose),
//! unwrapped down to the payloads they hold.

use super::*;

#[derive(Deserialize)]
pub(super) struct SnsEnvelope {
    #[serde(rename = "Type")]
    sns_type: String,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Timestamp", default)]
    timestamp: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct EventBridgeEnvelope<'a> {
    #[serde(borrow)]
    detail: &'a RawValue,
    #[serde(default)]
    time: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct FirehoseBatch<'a> {
    #[serde(borrow)]
    records: Vec<FirehoseRecord<'a>>,
    #[serde(default)]
    timestamp: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct FirehoseRecord<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
}

impl Decoder<'_, '_> {
    pub(super) fn decode_sns(&mut self, value: &[u8], ctx: &Ctx, scanned: Option<&scan::Scanned>) {
        let fast = scanned.and_then(|s| {
            Some(SnsEnvelope {
                sns_type: req_string(value, s.get(Key::SnsType))?,
                message: req_string(value, s.get(Key::SnsMessage))?,
                timestamp: opt_string(value, s.get(Key::SnsTimestamp))?,
            })
        });
        let env: SnsEnvelope = match fast.map_or_else(|| parse(value), Ok) {
            Ok(e) => e,
            Err(r) => return self.fail(envelope_reason("sns", r), value, ctx),
        };
        if env.sns_type != "Notification" {
            return self.fail(
                Reason::InvalidEnvelope {
                    envelope: "sns",
                    detail: format!(
                        "SNS message of Type {:?} carries no payload (expected Notification)",
                        env.sns_type
                    ),
                },
                value,
                ctx,
            );
        }
        let received =
            match self.envelope_time("Timestamp", env.timestamp.as_deref().and_then(rfc3339_ms)) {
                Ok(t) => t,
                Err(r) => return self.fail(r, value, ctx),
            };
        let inner = ctx.inside("sns", received);
        let body = env.message.into_bytes();
        if body.iter().all(|&b| is_ws(b)) {
            return self.fail(Reason::EmptyRecord, &body, &inner);
        }
        self.split_and_decode(&body, None, &inner);
    }

    pub(super) fn decode_eventbridge(
        &mut self,
        value: &[u8],
        base: Option<usize>,
        ctx: &Ctx,
        scanned: Option<&scan::Scanned>,
    ) {
        let fast = scanned.and_then(|s| {
            let d = s.get(Key::Detail);
            if d.kind == Kind::Absent {
                return None;
            }
            Some((d.text(value), opt_string(value, s.get(Key::Time))?))
        });
        let (detail, time) = match fast {
            Some(f) => f,
            None => match parse::<EventBridgeEnvelope>(value) {
                Ok(e) => (e.detail.get().as_bytes(), e.time),
                Err(r) => return self.fail(envelope_reason("eventbridge", r), value, ctx),
            },
        };
        if detail.first() != Some(&b'{') {
            return self.fail(
                Reason::InvalidEnvelope {
                    envelope: "eventbridge",
                    detail: format!(
                        "detail must be an object, found {}",
                        json_kind(detail.first().copied().unwrap_or(b'n'))
                    ),
                },
                value,
                ctx,
            );
        }
        let received = match self.envelope_time("time", time.as_deref().and_then(rfc3339_ms)) {
            Ok(t) => t,
            Err(r) => return self.fail(r, value, ctx),
        };
        let inner = ctx.inside("eventbridge", received);
        // detail is a sub-slice of value: keep borrowing from the record when we can.
        let offset = detail.as_ptr() as usize - value.as_ptr() as usize;
        // The detail of a scanned envelope is valid and within the depth
        // limit: scanning it again gives its fields (the same verdict as the
        // general path's probe when it accepts it).
        match scan::scan_object(detail, self.limits.max_json_depth) {
            Some(s) if s.end == detail.len() => {
                self.decode_value(detail, base.map(|b| b + offset), &inner, Pre::Scanned(&s))
            }
            _ => self.decode_value(detail, base.map(|b| b + offset), &inner, Pre::Nothing),
        }
    }

    pub(super) fn decode_firehose(&mut self, value: &[u8], ctx: &Ctx) {
        let batch: FirehoseBatch = match parse(value) {
            Ok(e) => e,
            Err(r) => return self.fail(envelope_reason("firehose", r), value, ctx),
        };
        let received = match self.envelope_time("timestamp", batch.timestamp) {
            Ok(t) => t,
            Err(r) => return self.fail(r, value, ctx),
        };
        let inner = ctx.inside("firehose", received);
        for (i, rec) in batch.records.iter().enumerate() {
            match base64::engine::general_purpose::STANDARD.decode(rec.data.as_bytes()) {
                Ok(bytes) if bytes.iter().all(|&b| is_ws(b)) => {
                    self.fail(Reason::EmptyRecord, &bytes, &inner);
                }
                Ok(bytes) => self.split_and_decode(&bytes, None, &inner),
                Err(e) => self.fail(
                    Reason::InvalidBase64 {
                        field: format!("records[{i}].data"),
                        detail: e.to_string(),
                    },
                    rec.data.as_bytes(),
                    &inner,
                ),
            }
        }
    }
}

/// Envelope structure errors are reported as `invalid_envelope`.
pub(super) fn envelope_reason(envelope: &'static str, r: Reason) -> Reason {
    match r {
        Reason::InvalidJson { .. } => r,
        other => Reason::InvalidEnvelope {
            envelope,
            detail: other.to_string(),
        },
    }
}
