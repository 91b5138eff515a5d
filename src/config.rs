//! Typed configuration (TOML). Every struct rejects unknown keys, so a typo is
//! an error that names the key instead of a silently ignored setting.
//!
//! Every field is documented in README.md, section "Configuration".

use std::path::Path;

use serde::Deserialize;

use crate::model::{is_e164, Channel};
use crate::money::Usd;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Spend ledger, alarms and enforced limits.
    #[serde(default)]
    pub spend: SpendConfig,
    /// Opt-out lists, numbers and keywords.
    #[serde(default)]
    pub optout: OptOutConfig,
    /// Plausibility and size limits of input records (see [`crate::limits`]).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// Parquet archive: location, file rotation, retries, S3 options.
    #[serde(default)]
    pub archive: crate::archive::ArchiveConfig,
    /// Kafka mode: brokers, topics, exactly-once, client properties. Absent
    /// in file mode.
    #[serde(default)]
    pub kafka: Option<crate::kafka::KafkaConfig>,
}

/// `[spend]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpendConfig {
    /// Cost of a message = totalMessagePrice + totalCarrierFee when true,
    /// totalMessagePrice alone when false. Default true.
    #[serde(default = "yes")]
    pub include_carrier_fee: bool,
    /// How long after the end of a UTC month carrier receipts may still arrive
    /// (hours). After that the month is closed: its per-message entries are
    /// dropped and its totals are final. Default 72.
    #[serde(default = "default_receipt_window_hours")]
    pub receipt_window_hours: u32,
    /// Spend alarms.
    #[serde(default)]
    pub alarms: Vec<AlarmConfig>,
    /// Enforced monthly limits.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// Ceiling of the cost of one message (price, carrier fee and their sum,
    /// per event), in USD, a decimal string. An event above it is a dead
    /// letter (`invalid_money`), so one absurd price can neither be counted
    /// nor applied as a correction. Default `"10"`, far above any real SMS,
    /// MMS or voice message.
    #[serde(default = "default_max_message_cost_usd")]
    pub max_message_cost_usd: Usd,
    /// Per-channel overrides of `max_message_cost_usd`
    /// (`[spend.max_message_cost_usd_per_channel]`, keys `SMS`, `MMS`,
    /// `VOICE`, `RCS`). Default: none.
    #[serde(default)]
    pub max_message_cost_usd_per_channel: std::collections::BTreeMap<Channel, Usd>,
}

impl Default for SpendConfig {
    fn default() -> Self {
        SpendConfig {
            include_carrier_fee: true,
            receipt_window_hours: default_receipt_window_hours(),
            alarms: Vec::new(),
            limits: Vec::new(),
            max_message_cost_usd: default_max_message_cost_usd(),
            max_message_cost_usd_per_channel: std::collections::BTreeMap::new(),
        }
    }
}

fn default_max_message_cost_usd() -> Usd {
    crate::limits::DEFAULT_MAX_MESSAGE_COST_USD
}

fn yes() -> bool {
    true
}

fn default_receipt_window_hours() -> u32 {
    72
}

/// How an alarm compares month-to-date spend with its threshold.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
pub enum Comparison {
    /// spend > threshold
    GreaterThanThreshold,
    /// spend >= threshold
    GreaterThanOrEqualToThreshold,
}

impl Comparison {
    /// True when `spend` breaches `threshold`.
    pub fn breached(self, spend: Usd, threshold: Usd) -> bool {
        match self {
            Comparison::GreaterThanThreshold => spend > threshold,
            Comparison::GreaterThanOrEqualToThreshold => spend >= threshold,
        }
    }
}

/// `[[spend.alarms]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Unique alarm name; part of every record id of the alarm.
    pub name: String,
    /// Channel whose month-to-date spend is watched.
    pub channel: Channel,
    /// Threshold in USD, a decimal string (`"80"`, `"0.5"`).
    pub threshold_usd: Usd,
    /// `GreaterThanThreshold` or `GreaterThanOrEqualToThreshold`.
    pub comparison: Comparison,
}

/// `[[spend.limits]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Channel the limit applies to (one limit per channel).
    pub channel: Channel,
    /// Enforced monthly limit in USD, a decimal string.
    pub monthly_limit_usd: Usd,
}

/// `[optout]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptOutConfig {
    /// Named lists and the origination identities linked to them. An
    /// origination not named here uses the list `Default`.
    #[serde(default)]
    pub lists: Vec<OptOutListConfig>,
    /// Per-number settings of our origination numbers.
    #[serde(default)]
    pub numbers: Vec<NumberConfig>,
    /// Custom keywords per origination number.
    #[serde(default)]
    pub keywords: Vec<KeywordConfig>,
}

/// `[[optout.lists]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptOutListConfig {
    /// List name.
    pub name: String,
    /// Origination identities (phone numbers, pool ids, sender ids) linked to it.
    #[serde(default)]
    pub originations: Vec<String>,
}

/// `[[optout.numbers]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NumberConfig {
    /// Our number (as it appears in destinationNumber of inbound messages).
    pub number: String,
    /// US toll-free number: only STOP opts out, only START/UNSTOP opt in.
    #[serde(default)]
    pub toll_free: bool,
    /// Self-managed opt-outs: this pipeline is the system of record and emits
    /// the reply records (HELP, opt-out/opt-in confirmations, custom responses).
    #[serde(default)]
    pub self_managed: bool,
    /// Reply to HELP.
    #[serde(default = "default_help_response")]
    pub help_response: String,
    /// Reply confirming an opt-out.
    #[serde(default = "default_stop_response")]
    pub stop_response: String,
    /// Reply confirming an opt-in.
    #[serde(default = "default_start_response")]
    pub start_response: String,
}

/// Default HELP reply of a self-managed number.
pub fn default_help_response() -> String {
    "Reply STOP to unsubscribe. Msg&data rates may apply.".to_owned()
}

/// Default opt-out confirmation of a self-managed number.
pub fn default_stop_response() -> String {
    "You are unsubscribed and will receive no further messages. Reply START to resubscribe."
        .to_owned()
}

/// Default opt-in confirmation of a self-managed number.
pub fn default_start_response() -> String {
    "You are subscribed again. Reply STOP to unsubscribe.".to_owned()
}

/// Action of a custom keyword.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeywordAction {
    /// Adds the sender to the list.
    OptOut,
    /// Removes the sender from the list.
    OptIn,
    /// Only answers with the response.
    AutomaticResponse,
}

/// `[[optout.keywords]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeywordConfig {
    /// Our number the keyword belongs to.
    pub origination: String,
    /// 1 to 30 characters, no whitespace, matched case-insensitively as the
    /// first word of a message.
    pub keyword: String,
    /// What the keyword does.
    pub action: KeywordAction,
    /// Reply sent (by self-managed numbers) when the keyword matches.
    pub response: String,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type; the message names the key.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The path.
        path: String,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// The values are well-typed but inconsistent.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The built-in keywords, which custom keywords may not redefine.
pub const RESERVED_KEYWORDS: [&str; 13] = [
    "ARRET",
    "CANCEL",
    "END",
    "OPT-OUT",
    "OPTOUT",
    "QUIT",
    "REMOVE",
    "STOP",
    "TD",
    "UNSUBSCRIBE",
    "HELP",
    "START",
    "UNSTOP",
];

impl Config {
    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Config::from_toml(&text, &p)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks what types cannot: uniqueness, ranges, keyword rules.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(k) = &self.kafka {
            k.validate()?;
        }
        self.limits.validate()?;
        if self.spend.max_message_cost_usd <= Usd::ZERO {
            return Err("spend.max_message_cost_usd must be positive".into());
        }
        for (c, v) in &self.spend.max_message_cost_usd_per_channel {
            if *v <= Usd::ZERO {
                return Err(format!(
                    "spend.max_message_cost_usd_per_channel.{c} must be positive"
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.spend.alarms {
            if a.name.trim().is_empty() {
                return Err("spend.alarms: an alarm has an empty name".into());
            }
            if a.name.contains(':') || a.name.chars().any(char::is_whitespace) {
                return Err(format!(
                    "spend.alarms: alarm name {:?} may not contain ':' or whitespace (it is part of record ids alarm:<name>:<month>:<n>)",
                    a.name
                ));
            }
            if !names.insert(a.name.as_str()) {
                return Err(format!("spend.alarms: duplicate alarm name {:?}", a.name));
            }
            if a.threshold_usd.is_negative() {
                return Err(format!("spend.alarms {:?}: negative threshold", a.name));
            }
        }
        let mut limit_channels = std::collections::HashSet::new();
        for l in &self.spend.limits {
            if !limit_channels.insert(l.channel) {
                return Err(format!(
                    "spend.limits: two limits for channel {}",
                    l.channel
                ));
            }
            if l.monthly_limit_usd < Usd::from_dollars(1) {
                return Err(format!(
                    "spend.limits {}: monthly_limit_usd must be at least 1 USD (the service's minimum enforced limit)",
                    l.channel
                ));
            }
        }
        let mut linked = std::collections::HashMap::new();
        for list in &self.optout.lists {
            if list.name.trim().is_empty() {
                return Err("optout.lists: a list has an empty name".into());
            }
            for o in &list.originations {
                if let Some(prev) = linked.insert(o.as_str(), list.name.as_str()) {
                    if prev != list.name {
                        return Err(format!(
                            "optout.lists: origination {o} is linked to both {prev:?} and {:?}",
                            list.name
                        ));
                    }
                }
            }
        }
        let mut numbers = std::collections::HashMap::new();
        for n in &self.optout.numbers {
            if numbers.insert(n.number.as_str(), n).is_some() {
                return Err(format!("optout.numbers: {} is configured twice", n.number));
            }
            if n.toll_free && !is_e164(&n.number) {
                return Err(format!(
                    "optout.numbers: toll-free number {} is not E.164",
                    n.number
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.optout.keywords {
            let kw = k.keyword.to_uppercase();
            let len = k.keyword.chars().count();
            if !(1..=30).contains(&len) || k.keyword.chars().any(char::is_whitespace) {
                return Err(format!(
                    "optout.keywords: keyword {:?} must be 1 to 30 characters without spaces",
                    k.keyword
                ));
            }
            let edge_punct = |c: Option<char>| c.is_some_and(|c| !c.is_alphanumeric());
            if edge_punct(k.keyword.chars().next()) || edge_punct(k.keyword.chars().last()) {
                return Err(format!(
                    "optout.keywords: keyword {:?} must start and end with a letter or digit (punctuation around the first word of a message is ignored)",
                    k.keyword
                ));
            }
            if RESERVED_KEYWORDS.contains(&kw.as_str()) {
                return Err(format!(
                    "optout.keywords: {:?} is a built-in keyword and cannot be redefined",
                    k.keyword
                ));
            }
            if !seen.insert((k.origination.as_str(), kw.clone())) {
                return Err(format!(
                    "optout.keywords: {:?} is defined twice for {}",
                    k.keyword, k.origination
                ));
            }
            let toll_free = numbers
                .get(k.origination.as_str())
                .is_some_and(|n| n.toll_free);
            if toll_free && k.action != KeywordAction::AutomaticResponse {
                return Err(format!(
                    "optout.keywords: {:?} on toll-free {}: toll-free numbers opt out only with STOP and in only with START/UNSTOP",
                    k.keyword, k.origination
                ));
            }
        }
        Ok(())
    }
}

/// A parsed config with every example key of README filled in; used by tests
/// and by `smsvoice process` when no `--config` is given (embedded default).
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[spend]
include_carrier_fee = true
[[spend.alarms]]
name = "sms-80pct"
channel = "SMS"
threshold_usd = "80"
comparison = "GreaterThanOrEqualToThreshold"
[[spend.limits]]
channel = "SMS"
monthly_limit_usd = "100"
[[optout.lists]]
name = "Marketing"
originations = ["+12125550101"]
[[optout.numbers]]
number = "+18445550100"
toll_free = true
self_managed = true
help_response = "Example Corp: call (206) 555-0199 for help."
[[optout.keywords]]
origination = "+12125550101"
keyword = "JOIN"
action = "OPT_IN"
response = "You are subscribed. Reply STOP to stop."
"#;

    #[test]
    fn issue_example_parses() {
        let c = Config::from_toml(EXAMPLE, "example").expect("valid");
        assert_eq!(c.spend.alarms[0].threshold_usd, Usd::from_dollars(80));
        assert_eq!(c.spend.receipt_window_hours, 72);
        assert_eq!(c.optout.keywords[0].action, KeywordAction::OptIn);
        assert!(c.optout.numbers[0].toll_free);
        assert_eq!(c.optout.numbers[0].stop_response, default_stop_response());
    }

    #[test]
    fn embedded_default_is_valid() {
        Config::from_toml(EMBEDDED_DEFAULT, "embedded").expect("embedded default");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[spend]\ninclude_carier_fee = true\n", "t")
            .expect_err("typo must fail");
        assert!(e.to_string().contains("include_carier_fee"), "{e}");
        let e = Config::from_toml("[spnd]\n", "t").expect_err("unknown section");
        assert!(e.to_string().contains("spnd"), "{e}");
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let cases = [
            "[[optout.keywords]]\norigination=\"+1\"\nkeyword=\"stop\"\naction=\"OPT_IN\"\nresponse=\"x\"\n",
            "[[optout.keywords]]\norigination=\"+1\"\nkeyword=\"TWO WORDS\"\naction=\"OPT_IN\"\nresponse=\"x\"\n",
            "[[optout.keywords]]\norigination=\"+1\"\nkeyword=\"\"\naction=\"OPT_IN\"\nresponse=\"x\"\n",
            "[[optout.keywords]]\norigination=\"+1\"\nkeyword=\"STOP!\"\naction=\"OPT_IN\"\nresponse=\"x\"\n",
            "[[optout.numbers]]\nnumber=\"+18445550100\"\ntoll_free=true\n[[optout.keywords]]\norigination=\"+18445550100\"\nkeyword=\"JOIN\"\naction=\"OPT_IN\"\nresponse=\"x\"\n",
            "[[spend.limits]]\nchannel=\"SMS\"\nmonthly_limit_usd=\"0\"\n",
            "[[spend.alarms]]\nname=\"a:b\"\nchannel=\"SMS\"\nthreshold_usd=\"1\"\ncomparison=\"GreaterThanThreshold\"\n",
            "[[spend.alarms]]\nname=\"a\"\nchannel=\"SMS\"\nthreshold_usd=\"1\"\ncomparison=\"GreaterThanThreshold\"\n[[spend.alarms]]\nname=\"a\"\nchannel=\"MMS\"\nthreshold_usd=\"1\"\ncomparison=\"GreaterThanThreshold\"\n",
            "[[spend.alarms]]\nname=\"a\"\nchannel=\"FAX\"\nthreshold_usd=\"1\"\ncomparison=\"GreaterThanThreshold\"\n",
            "[[spend.alarms]]\nname=\"a\"\nchannel=\"SMS\"\nthreshold_usd=\"0.1.2\"\ncomparison=\"GreaterThanThreshold\"\n",
            "[[optout.lists]]\nname=\"A\"\noriginations=[\"+1\"]\n[[optout.lists]]\nname=\"B\"\noriginations=[\"+1\"]\n",
        ];
        for c in cases {
            assert!(Config::from_toml(c, "t").is_err(), "should reject:\n{c}");
        }
    }
}
