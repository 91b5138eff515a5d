//! `[spend]`: how spend is counted, alarms and enforced limits. A core
//! configuration type: it imports nothing of the shell (archive, Kafka).

use serde::Deserialize;

use crate::model::Channel;
use crate::money::Usd;

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

impl SpendConfig {
    /// Checks what types cannot: ranges, uniqueness of alarm names and of
    /// limits per channel.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message_cost_usd <= Usd::ZERO {
            return Err("spend.max_message_cost_usd must be positive".into());
        }
        for (c, v) in &self.max_message_cost_usd_per_channel {
            if *v <= Usd::ZERO {
                return Err(format!(
                    "spend.max_message_cost_usd_per_channel.{c} must be positive"
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.alarms {
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
        for l in &self.limits {
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
        Ok(())
    }
}
