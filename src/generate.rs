//! A deterministic synthetic stream of realistic records, with its ground
//! truth computed independently of the core.
//!
//! Used by the benchmarks, the oracle tests and the demo. Messages have the
//! event sequences real senders see (SMS QUEUED/SUCCESSFUL/DELIVERED repeating
//! the price, voice INITIATED..COMPLETED, short codes with one final event,
//! failures), some prices are corrected by a later event, events arrive
//! slightly out of order and some are redelivered, payloads come in every
//! envelope, inbound STOP/START/HELP traffic changes opt-out state, and some
//! records are malformed. [`Truth`] is what a correct pipeline must end with,
//! computed from the generator's own integer prices, not by the core.
//!
//! The numbers used match `config/default.toml`: `+12125550101` is linked to
//! the list `Marketing`; `+18445550100` is toll-free; `+12065550152` uses
//! `Default`.

use std::collections::BTreeMap;

use base64::Engine as _;

/// Shape of the generated stream.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Seed; the same seed gives the same bytes.
    pub seed: u64,
    /// Number of messages (each has 1 to 4 events).
    pub messages: usize,
    /// Request time of the first message, epoch ms.
    pub start_ms: i64,
    /// Request times are spread over this many ms.
    pub span_ms: i64,
    /// Percent of events delivered twice.
    pub duplicate_pct: u32,
    /// Percent of priced messages whose last event carries a corrected price.
    pub correction_pct: u32,
    /// Malformed records per 1000 messages.
    pub malformed_per_mille: u32,
    /// Inbound messages per 1000 messages.
    pub inbound_per_mille: u32,
    /// Events are shuffled within windows of this many records.
    pub shuffle_window: usize,
    /// Wrap payloads in SNS, EventBridge and Firehose envelopes and
    /// concatenate some; raw JSON objects only when false.
    pub envelopes: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            seed: 7,
            messages: 10_000,
            // 2025-10-30T00:00:00Z: the stream crosses a month boundary.
            start_ms: 1_761_782_400_000,
            span_ms: 5 * 86_400_000,
            duplicate_pct: 3,
            correction_pct: 5,
            malformed_per_mille: 10,
            inbound_per_mille: 20,
            shuffle_window: 16,
            envelopes: true,
        }
    }
}

/// What a correct pipeline ends with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    /// Exact spend per (`YYYY-MM`, channel), in 10^-10 USD.
    pub spend_units: BTreeMap<(String, String), i128>,
    /// Distinct messages per (`YYYY-MM`, channel).
    pub messages: BTreeMap<(String, String), u64>,
    /// Delivery events that must be accepted (duplicates included).
    pub events: usize,
    /// Inbound messages that must be accepted.
    pub inbound: usize,
    /// Payloads that must be dead-lettered.
    pub malformed: usize,
    /// Final opt-out state per (list, number) of every number that sent a keyword.
    pub optouts: BTreeMap<(String, String), bool>,
}

/// The generated records (one element per record) and their truth.
#[derive(Clone, Debug)]
pub struct Generated {
    /// Record values, in stream order.
    pub records: Vec<Vec<u8>>,
    /// Ground truth.
    pub truth: Truth,
}

/// splitmix64: small, fast, good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability pct/100.
    pub fn pct(&mut self, pct: u32) -> bool {
        self.below(100) < u64::from(pct)
    }
    /// True with probability pm/1000.
    pub fn per_mille(&mut self, pm: u32) -> bool {
        self.below(1000) < u64::from(pm)
    }
}

/// Formats 10^-5 USD units as a JSON number text (`581` -> `0.00581`).
fn price_text(hundred_thousandths: i64) -> String {
    format!(
        "{}.{:05}",
        hundred_thousandths / 100_000,
        hundred_thousandths % 100_000
    )
}

fn month_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m").to_string())
        .unwrap_or_default()
}

struct Ev {
    ts: i64,
    json: String,
}

const ORIGINATIONS: [&str; 3] = ["+12125550101", "+18445550100", "+12065550152"];
const CARRIERS: [(&str, &str, &str); 3] = [
    ("310", "260", "T-Mobile USA"),
    ("311", "480", "Verizon Wireless"),
    ("310", "410", "AT&T Mobility"),
];

fn list_of(origination: &str) -> &'static str {
    if origination == "+12125550101" {
        "Marketing"
    } else {
        "Default"
    }
}

/// What a keyword does to state on a given number, written out independently
/// of the opt-out engine: `Some(true)` opts out, `Some(false)` opts in.
fn truth_effect(origination: &str, body: &str) -> Option<bool> {
    let first: String = body
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_uppercase();
    let toll_free = origination == "+18445550100";
    match first.as_str() {
        "STOP" => Some(true),
        "ARRET" | "CANCEL" | "END" | "OPT-OUT" | "OPTOUT" | "QUIT" | "REMOVE" | "TD"
        | "UNSUBSCRIBE"
            if !toll_free =>
        {
            Some(true)
        }
        "START" | "UNSTOP" => Some(false),
        "JOIN" if origination == "+12125550101" => Some(false),
        _ => None,
    }
}

const BODIES: [&str; 12] = [
    "STOP",
    "Stop.",
    "stop please",
    "START",
    "unstop",
    "HELP",
    "QUIT",
    "Weekend plans?",
    "please stop",
    "JOIN",
    "Thanks!",
    "END",
];

#[allow(clippy::too_many_arguments)]
fn event_json(
    event_type: &str,
    ts: i64,
    msg_id: &str,
    request_ts: i64,
    origination: &str,
    destination: &str,
    price: Option<(i64, Option<i64>)>,
    is_final: bool,
    rng_carrier: usize,
    tenant: u64,
    extra: &str,
) -> String {
    let status = event_type.split_once('_').map_or("", |(_, s)| s);
    let mut s = format!(
        r#"{{"eventType":"{event_type}","eventVersion":"1.0","eventTimestamp":{ts},"isFinal":{is_final},"originationPhoneNumber":"{origination}","destinationPhoneNumber":"{destination}","isoCountryCode":"US","messageId":"{msg_id}","messageRequestTimestamp":{request_ts},"messageStatus":"{status}","context":{{"tenant":"t{tenant}"}}"#
    );
    if event_type.starts_with("TEXT_") || event_type.starts_with("MEDIA_") {
        let (mcc, mnc, carrier) = CARRIERS[rng_carrier % CARRIERS.len()];
        s.push_str(&format!(
            r#","mcc":"{mcc}","mnc":"{mnc}","carrierName":"{carrier}","messageEncoding":"GSM","messageType":"TRANSACTIONAL","totalMessageParts":1"#
        ));
    }
    s.push_str(extra);
    if let Some((p, fee)) = price {
        s.push_str(&format!(r#","totalMessagePrice":{}"#, price_text(p)));
        if let Some(f) = fee {
            s.push_str(&format!(r#","totalCarrierFee":{}"#, price_text(f)));
        }
    }
    s.push('}');
    s
}

const MALFORMED: [&str; 8] = [
    r#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1761800000000"#,
    r#"{"eventType":"FAX_DELIVERED","eventTimestamp":1761800000000,"messageId":"bad-1"}"#,
    r#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1761800000000}"#,
    r#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1761800000000,"messageId":"bad-2","mnc":5}"#,
    r#"{"originationNumber":"4255550182","destinationNumber":"+12125550101","messageBody":"STOP"}"#,
    r#"{"records":[{"data":"%%%not-base64"}]}"#,
    r#"{"eventType":"TEXT_ALL","eventTimestamp":1761800000000,"messageId":"bad-3"}"#,
    r#"{"eventType":"TEXT_DELIVERED","eventTimestamp":1761800000000,"messageId":"bad-4","totalMessagePrice":"0.00581"}"#,
];

/// Generates a stream.
pub fn generate(w: &Workload) -> Generated {
    let mut rng = Rng::new(w.seed);
    let mut truth = Truth::default();
    let mut events: Vec<Ev> = Vec::with_capacity(w.messages * 3);
    for i in 0..w.messages {
        let request_ts = w.start_ms + (rng.below(w.span_ms.max(1) as u64) as i64);
        let msg_id = format!(
            "{:08x}-{:04x}-4000-8000-{:012x}",
            w.seed as u32,
            i % 65536,
            i
        );
        let origination = ORIGINATIONS[rng.below(3) as usize];
        let destination = format!("+1206555{:04}", rng.below(10_000));
        let carrier = rng.below(3) as usize;
        let tenant = rng.below(5);
        let roll = rng.below(100);
        let (types, fee): (Vec<&str>, bool) = if roll < 55 {
            (
                vec!["TEXT_PENDING", "TEXT_SUCCESSFUL", "TEXT_DELIVERED"],
                true,
            )
        } else if roll < 65 {
            (vec!["TEXT_SUCCESSFUL"], true)
        } else if roll < 70 {
            (vec!["TEXT_QUEUED", "TEXT_CARRIER_UNREACHABLE"], true)
        } else if roll < 82 {
            (
                vec!["MEDIA_PENDING", "MEDIA_SUCCESSFUL", "MEDIA_DELIVERED"],
                true,
            )
        } else if roll < 84 {
            (vec!["MEDIA_PENDING", "MEDIA_FILE_INACCESSIBLE"], false)
        } else if roll < 94 {
            (
                vec![
                    "VOICE_INITIATED",
                    "VOICE_RINGING",
                    "VOICE_ANSWERED",
                    "VOICE_COMPLETED",
                ],
                false,
            )
        } else if roll < 96 {
            (vec!["VOICE_INITIATED", "VOICE_BUSY"], false)
        } else {
            (vec!["RCS_DELIVERED", "RCS_READ"], false)
        };
        let channel = match types[0].split('_').next() {
            Some("TEXT") => "SMS",
            Some("MEDIA") => "MMS",
            Some("VOICE") => "VOICE",
            _ => "RCS",
        };
        let base_price = match channel {
            "SMS" => 581 + rng.below(50) as i64 * 10,
            "MMS" => 1950 + rng.below(100) as i64,
            "VOICE" => 1300 * (1 + rng.below(3) as i64),
            _ => 400,
        };
        let fee_units = if fee {
            Some(266 + rng.below(40) as i64)
        } else {
            None
        };
        let correct = rng.pct(w.correction_pct);
        let mut ts = request_ts + 50 + rng.below(500) as i64;
        let mut last_cost: Option<i64> = None;
        let n = types.len();
        for (k, t) in types.iter().enumerate() {
            let priced = !(t.ends_with("_PENDING")
                || t.ends_with("_QUEUED")
                || t.ends_with("_INITIATED")
                || t.ends_with("_RINGING")
                || t.ends_with("_ANSWERED"));
            let price = if priced {
                let p = if correct && k == n - 1 && n > 1 {
                    base_price + 100
                } else {
                    base_price
                };
                last_cost = Some(p + fee_units.unwrap_or(0));
                Some((p, fee_units))
            } else {
                None
            };
            let extra = if channel == "VOICE" && t.ends_with("COMPLETED") {
                r#","callDurationInSeconds":42,"totalDurationInMinutes":1"#
            } else {
                ""
            };
            let json = event_json(
                t,
                ts,
                &msg_id,
                request_ts,
                origination,
                &destination,
                price,
                k == n - 1,
                carrier,
                tenant,
                extra,
            );
            events.push(Ev { ts, json });
            ts += 1 + rng.below(if k == 0 { 2_000 } else { 60_000 }) as i64;
        }
        let key = (month_of(request_ts), channel.to_owned());
        *truth.messages.entry(key.clone()).or_default() += 1;
        // Cost in 10^-10 USD: generator prices are in 10^-5 USD.
        *truth.spend_units.entry(key).or_default() += i128::from(last_cost.unwrap_or(0)) * 100_000;
    }
    events.sort_by_key(|e| e.ts);
    // Local reordering: receipts overtake each other.
    if w.shuffle_window > 1 {
        for i in 0..events.len() {
            let j = i + rng.below(w.shuffle_window as u64) as usize;
            if j < events.len() {
                events.swap(i, j);
            }
        }
    }
    // Payload stream: events, redeliveries, inbound traffic, malformed records.
    let mut payloads: Vec<(String, bool)> = Vec::with_capacity(events.len() * 11 / 10);
    let mut inbound_ts = w.start_ms;
    for (idx, e) in events.iter().enumerate() {
        payloads.push((e.json.clone(), true));
        truth.events += 1;
        if rng.pct(w.duplicate_pct) {
            payloads.push((e.json.clone(), true));
            truth.events += 1;
        }
        if idx % 3 == 0 && rng.per_mille(w.inbound_per_mille) {
            let origination = ORIGINATIONS[rng.below(3) as usize];
            let customer = format!("+1425555{:04}", rng.below(50));
            let body = BODIES[rng.below(BODIES.len() as u64) as usize];
            inbound_ts += 1 + rng.below(1000) as i64;
            let json = format!(
                r#"{{"originationNumber":"{customer}","destinationNumber":"{origination}","messageKeyword":"KEYWORD_111122223333","messageBody":"{body}","inboundMessageId":"in-{idx}","previousPublishedMessageId":"prev-{idx}"}}"#
            );
            // Inbound always goes through SNS with an increasing Timestamp, so
            // its order is known whatever path it takes.
            let ts = chrono::DateTime::from_timestamp_millis(inbound_ts)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default();
            let sns = serde_json::json!({
                "Type": "Notification",
                "MessageId": format!("sns-{idx}"),
                "TopicArn": "arn:aws:sns:us-east-1:111122223333:inbound-sms",
                "Message": json,
                "Timestamp": ts,
            })
            .to_string();
            payloads.push((sns, false));
            truth.inbound += 1;
            if let Some(state) = truth_effect(origination, body) {
                truth
                    .optouts
                    .insert((list_of(origination).to_owned(), customer), state);
            }
        }
        if rng.per_mille(w.malformed_per_mille) {
            payloads.push((
                MALFORMED[rng.below(MALFORMED.len() as u64) as usize].to_owned(),
                false,
            ));
            truth.malformed += 1;
        }
    }
    // Records: wrap and group payloads.
    let mut records = Vec::with_capacity(payloads.len());
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut i = 0;
    while i < payloads.len() {
        let (p, wrappable) = &payloads[i];
        if !w.envelopes || !*wrappable {
            records.push(p.clone().into_bytes());
            i += 1;
            continue;
        }
        match rng.below(10) {
            0 => {
                let sns = serde_json::json!({"Type":"Notification","MessageId":format!("m{i}"),"TopicArn":"arn:aws:sns:us-east-1:111122223333:events","Message":p,"Timestamp":"2025-11-01T00:00:00.000Z"});
                records.push(sns.to_string().into_bytes());
                i += 1;
            }
            1 => {
                records.push(
                    format!(
                        r#"{{"version":"0","id":"eb-{i}","detail-type":"Text Message Delivery Status Updated","source":"aws.sms-voice","account":"111122223333","time":"2025-11-01T00:00:00Z","region":"us-east-1","resources":[],"detail":{p}}}"#
                    )
                    .into_bytes(),
                );
                i += 1;
            }
            2 => {
                // Firehose batch of up to 4 consecutive wrappable payloads.
                let mut datas = Vec::new();
                while i < payloads.len() && payloads[i].1 && datas.len() < 4 {
                    datas.push(format!(r#"{{"data":"{}"}}"#, b64.encode(&payloads[i].0)));
                    i += 1;
                }
                records.push(
                    format!(
                        r#"{{"requestId":"fh-{i}","timestamp":1762000000000,"records":[{}]}}"#,
                        datas.join(",")
                    )
                    .into_bytes(),
                );
            }
            3 => {
                // Two payloads concatenated without a delimiter.
                let mut rec = p.clone();
                i += 1;
                if i < payloads.len() && payloads[i].1 {
                    rec.push_str(&payloads[i].0);
                    i += 1;
                }
                records.push(rec.into_bytes());
            }
            _ => {
                records.push(p.clone().into_bytes());
                i += 1;
            }
        }
    }
    Generated { records, truth }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let w = Workload {
            messages: 500,
            ..Workload::default()
        };
        let a = generate(&w);
        let b = generate(&w);
        assert_eq!(a.records, b.records);
        assert_eq!(a.truth, b.truth);
        assert!(a.truth.events >= 500);
        assert_eq!(a.truth.messages.values().sum::<u64>(), 500);
        // the stream crosses October -> November
        assert!(a.truth.messages.keys().any(|(m, _)| m == "2025-10"));
        assert!(a.truth.messages.keys().any(|(m, _)| m == "2025-11"));
    }

    #[test]
    fn price_text_is_exact() {
        assert_eq!(price_text(581), "0.00581");
        assert_eq!(price_text(123_456), "1.23456");
        assert_eq!(price_text(0), "0.00000");
    }

    #[test]
    fn truth_keywords() {
        assert_eq!(truth_effect("+12065550152", "Stop."), Some(true));
        assert_eq!(truth_effect("+18445550100", "QUIT"), None);
        assert_eq!(truth_effect("+12065550152", "please stop"), None);
        assert_eq!(truth_effect("+12065550152", "Weekend plans?"), None);
        assert_eq!(truth_effect("+12125550101", "JOIN"), Some(false));
    }
}
