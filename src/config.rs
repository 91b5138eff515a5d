//! The configuration file (TOML) of the shell: the core's sections
//! (`[spend]`, `[optout]`, `[limits]`, defined next to the rules they
//! configure: [`crate::spend::config`], [`crate::optout::config`],
//! [`crate::limits`]) plus the shell's (`[archive]`, `[kafka]`). The core
//! takes a [`CoreConfig`], which names only its own sections.
//!
//! Typed configuration (TOML). Every struct rejects unknown keys, so a typo is
//! an error that names the key instead of a silently ignored setting.
//!
//! Every field is documented in README.md, section "Configuration".

use std::path::Path;

use serde::Deserialize;

use crate::core::CoreConfig;
pub use crate::optout::config::{
    default_help_response, default_start_response, default_stop_response, KeywordAction,
    KeywordConfig, NumberConfig, OptOutConfig, OptOutListConfig, RESERVED_KEYWORDS,
};
pub use crate::spend::config::{AlarmConfig, Comparison, LimitConfig, SpendConfig};

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
        self.spend.validate()?;
        self.optout.validate()?;
        Ok(())
    }
}

impl<'a> From<&'a Config> for CoreConfig<'a> {
    fn from(c: &'a Config) -> CoreConfig<'a> {
        CoreConfig {
            spend: &c.spend,
            optout: &c.optout,
            limits: &c.limits,
        }
    }
}

impl<'a> From<&'a std::sync::Arc<Config>> for CoreConfig<'a> {
    fn from(c: &'a std::sync::Arc<Config>) -> CoreConfig<'a> {
        CoreConfig::from(&**c)
    }
}

/// A parsed config with every example key of README filled in; used by tests
/// and by `smsvoice process` when no `--config` is given (embedded default).
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Usd;

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
