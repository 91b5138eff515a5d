//! Plausibility and size limits: what one record may claim before it is a
//! dead letter instead of state.
//!
//! No single record may break spend or opt-outs. Every record has an
//! *arrival time* from outside its payload (the Kafka record timestamp in
//! Kafka mode, the input file's modification time in file mode), and the
//! decoder ([`crate::decode`]) checks every payload against these limits:
//!
//! * **time**: a time inside the record (`eventTimestamp`,
//!   `messageRequestTimestamp`, SNS `Timestamp`, EventBridge `time`, Firehose
//!   `timestamp`) later than the arrival time plus
//!   [`LimitsConfig::max_clock_skew`] is `invalid_value` with the field named:
//!   such a time never moves a spend watermark or an opt-out's `asOf`.
//!   Without an arrival time (a record handed to the core with no timestamp)
//!   only the absolute range 2000-01-01..2200-01-01 applies;
//! * **money**: a cost above the per-message ceiling of its channel
//!   ([`crate::config::SpendConfig::max_message_cost_usd`] and its
//!   per-channel overrides) is `invalid_money`;
//! * **sizes**: the record, identifiers, the message body, the context map
//!   and the JSON nesting depth are bounded (`record_too_large`,
//!   `field_too_long`, `too_many_entries`, `nesting_too_deep`); beyond a
//!   limit the payload is dead-lettered, never truncated and never a crash.
//!
//! ```toml
//! [limits]
//! max_clock_skew = "15m"           # default 15 minutes
//! max_record_bytes = 8388608       # default 8 MiB
//! max_id_bytes = 128               # default 128
//! max_body_bytes = 8192            # default 8 KiB
//! max_context_entries = 64         # default 64
//! max_context_value_bytes = 1024   # default 1 KiB
//! max_json_depth = 32              # default 32
//! ```

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::core::CoreConfig;
use crate::model::Channel;
use crate::money::Usd;
use crate::spend::config::SpendConfig;

/// Default [`LimitsConfig::max_clock_skew`]: 15 minutes.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: i64 = 15 * 60_000;
/// Default [`LimitsConfig::max_record_bytes`]: 8 MiB (a Firehose batch of the
/// default 5 MiB buffer fits; a Kafka value is at most 1 MB by default).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 8 << 20;
/// Default [`LimitsConfig::max_id_bytes`] (real ids are 36-byte UUIDs).
pub const DEFAULT_MAX_ID_BYTES: usize = 128;
/// Default [`LimitsConfig::max_body_bytes`]: 8 KiB (an inbound SMS of 1,600
/// characters is at most 6,400 bytes of UTF-8).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 10;
/// Default [`LimitsConfig::max_context_entries`].
pub const DEFAULT_MAX_CONTEXT_ENTRIES: usize = 64;
/// Default [`LimitsConfig::max_context_value_bytes`].
pub const DEFAULT_MAX_CONTEXT_VALUE_BYTES: usize = 1 << 10;
/// Default [`LimitsConfig::max_json_depth`] (real payloads nest 3 deep, an
/// EventBridge envelope adds one).
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;
/// Largest accepted [`LimitsConfig::max_json_depth`] (the JSON parser's own
/// recursion limit is 128).
pub const MAX_JSON_DEPTH_LIMIT: usize = 120;
/// Default per-message cost ceiling, every channel: 10 USD. A real SMS, MMS
/// or voice message costs well under a few dollars.
pub const DEFAULT_MAX_MESSAGE_COST_USD: Usd = Usd::from_dollars(10);
/// Bytes of an oversized record kept in its dead letter (the detail says so).
pub const OVERSIZED_PAYLOAD_KEPT: usize = 4096;

/// `[limits]`: size limits and the clock-skew allowance. Every key is
/// optional; the defaults are the `DEFAULT_*` constants of this module.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// How far a time inside a record may be later than the record's arrival
    /// time (clocks of the sender, SNS, EventBridge, Firehose and the bridge
    /// disagree a little). A duration (`"15m"`, `"30s"`, `"1h"`) or whole
    /// seconds. Default 15 minutes.
    #[serde(
        default = "default_max_clock_skew",
        deserialize_with = "deserialize_duration"
    )]
    pub max_clock_skew: Duration,
    /// Largest record (a whole Kafka record value, or one top-level JSON value
    /// of an input file), in bytes. Default 8 MiB.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Longest identifier, in bytes: `messageId`, `eventType`,
    /// `inboundMessageId`, `originationNumber`, `destinationNumber`,
    /// `originationPhoneNumber`, `destinationPhoneNumber` (identifiers the
    /// pipeline keeps in state or in replies). Default 128.
    #[serde(default = "default_max_id_bytes")]
    pub max_id_bytes: usize,
    /// Longest inbound `messageBody`, in bytes (UTF-8). Default 8192.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most entries in a delivery event's `context` map. Default 64.
    #[serde(default = "default_max_context_entries")]
    pub max_context_entries: usize,
    /// Longest key or value of a `context` entry, in bytes. Default 1024.
    #[serde(default = "default_max_context_value_bytes")]
    pub max_context_value_bytes: usize,
    /// Deepest nesting of objects and arrays in one JSON text (a record, an
    /// SNS `Message`, a Firehose `data`). Default 32, at most 120.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_clock_skew: default_max_clock_skew(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_id_bytes: DEFAULT_MAX_ID_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_context_entries: DEFAULT_MAX_CONTEXT_ENTRIES,
            max_context_value_bytes: DEFAULT_MAX_CONTEXT_VALUE_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
        }
    }
}

fn default_max_clock_skew() -> Duration {
    Duration::from_millis(DEFAULT_MAX_CLOCK_SKEW_MS.unsigned_abs())
}
fn default_max_record_bytes() -> usize {
    DEFAULT_MAX_RECORD_BYTES
}
fn default_max_id_bytes() -> usize {
    DEFAULT_MAX_ID_BYTES
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_context_entries() -> usize {
    DEFAULT_MAX_CONTEXT_ENTRIES
}
fn default_max_context_value_bytes() -> usize {
    DEFAULT_MAX_CONTEXT_VALUE_BYTES
}
fn default_max_json_depth() -> usize {
    DEFAULT_MAX_JSON_DEPTH
}

fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"15m\" or \"30s\", or whole seconds")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            crate::archive::config::parse_duration(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
    }
    d.deserialize_any(V)
}

impl LimitsConfig {
    /// Checks the ranges types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_record_bytes", self.max_record_bytes),
            ("max_id_bytes", self.max_id_bytes),
            ("max_body_bytes", self.max_body_bytes),
            ("max_context_value_bytes", self.max_context_value_bytes),
            ("max_json_depth", self.max_json_depth),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("limits.{key} must be at least 1"));
            }
        }
        if self.max_json_depth > MAX_JSON_DEPTH_LIMIT {
            return Err(format!(
                "limits.max_json_depth must be at most {MAX_JSON_DEPTH_LIMIT}"
            ));
        }
        if i64::try_from(self.max_clock_skew.as_millis()).is_err() {
            return Err("limits.max_clock_skew is too large".into());
        }
        Ok(())
    }
}

/// The limits the decoder applies, resolved from `[limits]` and `[spend]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Allowed lead of a time inside a record over its arrival time, ms.
    pub max_clock_skew_ms: i64,
    /// See [`LimitsConfig::max_record_bytes`].
    pub max_record_bytes: usize,
    /// See [`LimitsConfig::max_id_bytes`].
    pub max_id_bytes: usize,
    /// See [`LimitsConfig::max_body_bytes`].
    pub max_body_bytes: usize,
    /// See [`LimitsConfig::max_context_entries`].
    pub max_context_entries: usize,
    /// See [`LimitsConfig::max_context_value_bytes`].
    pub max_context_value_bytes: usize,
    /// See [`LimitsConfig::max_json_depth`].
    pub max_json_depth: usize,
    /// Per-message cost ceiling per channel, in [`Channel::ALL`] order (read
    /// it with [`max_message_cost`](Self::max_message_cost)).
    pub max_message_cost_by_channel: [Usd; 4],
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

fn channel_index(c: Channel) -> usize {
    match c {
        Channel::Sms => 0,
        Channel::Mms => 1,
        Channel::Voice => 2,
        Channel::Rcs => 3,
    }
}

impl Limits {
    /// The documented defaults.
    pub const DEFAULT: Limits = Limits {
        max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
        max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        max_id_bytes: DEFAULT_MAX_ID_BYTES,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        max_context_entries: DEFAULT_MAX_CONTEXT_ENTRIES,
        max_context_value_bytes: DEFAULT_MAX_CONTEXT_VALUE_BYTES,
        max_json_depth: DEFAULT_MAX_JSON_DEPTH,
        max_message_cost_by_channel: [DEFAULT_MAX_MESSAGE_COST_USD; 4],
    };

    /// The limits of a configuration.
    pub fn new<'a>(cfg: impl Into<CoreConfig<'a>>) -> Limits {
        let cfg = cfg.into();
        Limits::from_parts(cfg.limits, cfg.spend)
    }

    /// The limits of `[limits]` with the cost ceilings of `[spend]`.
    pub fn from_parts(limits: &LimitsConfig, spend: &SpendConfig) -> Limits {
        let mut max_message_cost_by_channel = [spend.max_message_cost_usd; 4];
        for (c, v) in &spend.max_message_cost_usd_per_channel {
            max_message_cost_by_channel[channel_index(*c)] = *v;
        }
        Limits {
            max_clock_skew_ms: i64::try_from(limits.max_clock_skew.as_millis()).unwrap_or(i64::MAX),
            max_record_bytes: limits.max_record_bytes,
            max_id_bytes: limits.max_id_bytes,
            max_body_bytes: limits.max_body_bytes,
            max_context_entries: limits.max_context_entries,
            max_context_value_bytes: limits.max_context_value_bytes,
            max_json_depth: limits.max_json_depth,
            max_message_cost_by_channel,
        }
    }

    /// The default size limits with the cost ceilings of `[spend]` (for
    /// stages that are only given the spend section).
    pub fn for_spend(spend: &SpendConfig) -> Limits {
        Limits::from_parts(&LimitsConfig::default(), spend)
    }

    /// Largest cost one message of `channel` may have.
    pub fn max_message_cost(&self, channel: Channel) -> Usd {
        self.max_message_cost_by_channel[channel_index(channel)]
    }

    /// Latest time a record that arrived at `arrival_ms` may carry (`None`:
    /// no arrival time, no bound beyond the absolute range).
    pub fn latest_allowed(&self, arrival_ms: Option<i64>) -> Option<i64> {
        arrival_ms.map(|a| a.saturating_add(self.max_clock_skew_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn defaults_agree() {
        let from_cfg = Limits::new(&Config::default());
        assert_eq!(from_cfg, Limits::DEFAULT);
        assert_eq!(Limits::default(), Limits::DEFAULT);
        assert_eq!(Limits::for_spend(&SpendConfig::default()), Limits::DEFAULT);
        assert_eq!(Limits::DEFAULT.latest_allowed(None), None);
        assert_eq!(Limits::DEFAULT.latest_allowed(Some(0)), Some(900_000));
        assert_eq!(
            Limits::DEFAULT.latest_allowed(Some(i64::MAX)),
            Some(i64::MAX)
        );
        for c in Channel::ALL {
            assert_eq!(Limits::DEFAULT.max_message_cost(c), Usd::from_dollars(10));
        }
    }

    /// `config/default.toml` (commented) and README's `[limits]` example
    /// show exactly these defaults.
    #[test]
    fn documented_defaults_match() {
        let block = |text: &str, start: &str, strip: &str| -> String {
            text.lines()
                .skip_while(|l| !l.starts_with(start))
                .map_while(|l| l.strip_prefix(strip))
                .take_while(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let embedded = block(crate::config::EMBEDDED_DEFAULT, "# [limits]", "# ");
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let readme = block(&readme, "[limits]", "");
        for (what, text) in [("config/default.toml", embedded), ("README.md", readme)] {
            assert!(
                text.lines().count() >= 8,
                "{what}: no [limits] block:\n{text}"
            );
            let cfg = Config::from_toml(&text, what).expect("valid [limits] block");
            assert_eq!(cfg.limits, LimitsConfig::default(), "{what}:\n{text}");
        }
        let cfg = Config::from_toml(crate::config::EMBEDDED_DEFAULT, "embedded").expect("valid");
        assert_eq!(cfg.spend.max_message_cost_usd, DEFAULT_MAX_MESSAGE_COST_USD);
    }

    #[test]
    fn parses_overrides_and_rejects_unknown_keys() {
        let cfg = Config::from_toml(
            "[limits]\nmax_clock_skew = \"1h\"\nmax_id_bytes = 40\nmax_json_depth = 8\n\
             [spend]\nmax_message_cost_usd = \"2.5\"\n\
             [spend.max_message_cost_usd_per_channel]\nVOICE = \"50\"\n",
            "t",
        )
        .expect("valid");
        let l = Limits::new(&cfg);
        assert_eq!(l.max_clock_skew_ms, 3_600_000);
        assert_eq!(l.max_id_bytes, 40);
        assert_eq!(l.max_json_depth, 8);
        assert_eq!(l.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(
            l.max_message_cost(Channel::Sms),
            Usd::from_units(25_000_000_000)
        );
        assert_eq!(l.max_message_cost(Channel::Voice), Usd::from_dollars(50));
        let secs = Config::from_toml("[limits]\nmax_clock_skew = 30\n", "t").expect("valid");
        assert_eq!(Limits::new(&secs).max_clock_skew_ms, 30_000);
        for bad in [
            "[limits]\nmax_clok_skew = \"1m\"\n",
            "[limits]\nmax_clock_skew = \"soon\"\n",
            "[limits]\nmax_clock_skew = -5\n",
            "[limits]\nmax_record_bytes = 0\n",
            "[limits]\nmax_json_depth = 500\n",
            "[spend.max_message_cost_usd_per_channel]\nFAX = \"1\"\n",
            "[spend]\nmax_message_cost_usd = \"0\"\n",
            "[spend]\nmax_message_cost_usd = \"-1\"\n",
            "[spend.max_message_cost_usd_per_channel]\nSMS = \"0\"\n",
        ] {
            let e = Config::from_toml(bad, "t");
            assert!(e.is_err(), "should reject:\n{bad}");
        }
        let e =
            Config::from_toml("[limits]\nmax_clok_skew = \"1m\"\n", "t").expect_err("unknown key");
        assert!(e.to_string().contains("max_clok_skew"), "{e}");
    }
}
