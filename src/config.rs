//! The configuration file (TOML) of the shell: the core's sections
//! (`[spend]`, `[optout]`, `[limits]`, defined next to the rules they
//! configure: [`crate::spend::config`], [`crate::optout::config`],
//! [`crate::limits`]) plus the shell's (`[archive]`, `[kafka]`, `[http]`,
//! `[log]`). The core takes a [`CoreConfig`], which names only its own
//! sections.
//!
//! Typed configuration (TOML). Every struct rejects unknown keys, so a typo is
//! an error that names the key instead of a silently ignored setting.
//!
//! Every field is documented in README.md, section "Configuration".

use std::ffi::OsString;
use std::path::Path;

use serde::Deserialize;

use crate::core::CoreConfig;
pub use crate::optout::config::{
    default_help_response, default_start_response, default_stop_response, KeywordAction,
    KeywordConfig, NumberConfig, OptOutConfig, OptOutListConfig, RESERVED_KEYWORDS,
};
pub use crate::spend::config::{AlarmConfig, Comparison, LimitConfig, SpendConfig};

pub mod env;

use env::{KeyPath, Origin, Override};

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
    /// HTTP server of `smsvoice run` and `smsvoice demo --serve`: probes,
    /// metrics, the opt-out and spend API.
    #[serde(default)]
    pub http: crate::http::HttpConfig,
    /// Log lines: text or JSON, the filter, whether personal data may
    /// appear (see [`crate::log`]).
    #[serde(default)]
    pub log: crate::log::LogConfig,
}

/// Why a configuration cannot be used. Every message is one line naming the
/// key (and the environment variable, when one set it).
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
        /// What is wrong: the key, the parser's message and the line.
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
    /// A configuration variable (`SMSVOICE_...`, see [`env`]) names no key,
    /// is malformed, or sets a key to a value it does not accept.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong; names the key.
        message: String,
    },
    /// The file named by a `SMSVOICE_..._FILE` variable cannot be read.
    #[error("cannot read {var}={path}: {source}")]
    SecretFile {
        /// The variable.
        var: String,
        /// The file it names.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A configuration loaded from its layers (a file or the embedded default,
/// then the environment), with what it was made of.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The typed, validated configuration.
    pub config: Config,
    /// The effective TOML tree (the file with every override applied).
    /// Not masked: see [`LoadedConfig::masked_toml`].
    pub effective: toml::Table,
    /// The file (or "embedded default config") it was read from.
    pub origin: String,
    /// The keys the environment set, in the order applied.
    pub overrides: Vec<Override>,
}

impl LoadedConfig {
    /// The effective configuration as TOML, every secret
    /// ([`env::is_secret_key`]) shown as [`env::MASK`], after a comment
    /// header naming the file and the variables that set keys.
    pub fn masked_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(&env::mask_secrets(&self.effective)).map_err(|e| {
            ConfigError::Invalid {
                path: self.origin.clone(),
                message: one_line(&e.to_string()),
            }
        })?;
        let mut out = format!(
            "# Effective configuration: {}{}, secrets masked as \"{}\".\n\
             # Keys not shown take their defaults (README.md, \"Configuration\").\n",
            self.origin,
            if self.overrides.is_empty() {
                ""
            } else {
                " + environment"
            },
            env::MASK
        );
        for o in &self.overrides {
            match &o.origin {
                Origin::Variable => out.push_str(&format!("#   {} <- {}\n", o.path, o.var)),
                Origin::File(p) => {
                    out.push_str(&format!("#   {} <- {}={}\n", o.path, o.var, p.display()))
                }
            }
        }
        out.push('\n');
        out.push_str(&body);
        Ok(out)
    }
}

impl Config {
    /// Reads, parses and validates a TOML file (no environment overrides:
    /// see [`Config::load_with_environment`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        Config::from_toml(&read_file(path)?, &p)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::layered(text, origin, Vec::<(OsString, OsString)>::new()).map(|l| l.config)
    }

    /// What `smsvoice run`, `process` and `check-config` load: the file
    /// (the embedded default when `None`) with the overrides of the
    /// process's environment (see [`env`]).
    pub fn load_with_environment(path: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
        Config::load_with(path, std::env::vars_os())
    }

    /// [`Config::load_with_environment`] with the environment given.
    pub fn load_with<I, K, V>(path: Option<&Path>, vars: I) -> Result<LoadedConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        match path {
            Some(p) => Config::layered(&read_file(p)?, &p.display().to_string(), vars),
            None => Config::layered(EMBEDDED_DEFAULT, "embedded default config", vars),
        }
    }

    /// Parses TOML text, applies the configuration variables of `vars`
    /// (any iterator of name and value; see [`env`] for the rule), and
    /// validates the result. `origin` names the text in errors.
    pub fn layered<I, K, V>(text: &str, origin: &str, vars: I) -> Result<LoadedConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let parse_error = |message: String| ConfigError::Parse {
            path: origin.to_owned(),
            message,
        };
        let base: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_error(describe_toml_error(text, None, &e)))?;
        let mut overrides = env::read_overrides(vars)?;
        let (config, effective) = if overrides.is_empty() {
            // From the text itself, so that errors give the line.
            let config =
                serde_path_to_error::deserialize::<_, Config>(toml::Deserializer::new(text))
                    .map_err(|e| {
                        let path = KeyPath::from_serde(e.path());
                        parse_error(describe_toml_error(text, Some(&path), e.inner()))
                    })?;
            (config, base)
        } else {
            deserialize_layered(&base, &mut overrides, origin)?
        };
        if let Err(message) = config.validate() {
            let secrets = env::secrets_of(&effective);
            let mut message = env::redact(&one_line(&message), &secrets);
            let set_by: Vec<&str> = overrides
                .iter()
                .filter(|o| message.contains(&o.path.to_string()))
                .map(|o| o.var.as_str())
                .collect();
            if !set_by.is_empty() {
                message.push_str(&format!(" (set by {})", set_by.join(", ")));
            }
            return Err(ConfigError::Invalid {
                path: origin.to_owned(),
                message,
            });
        }
        Ok(LoadedConfig {
            config,
            effective,
            origin: origin.to_owned(),
            overrides,
        })
    }

    /// Checks what types cannot: uniqueness, ranges, keyword rules.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(k) = &self.kafka {
            k.validate()?;
        }
        self.limits.validate()?;
        self.spend.validate()?;
        self.optout.validate()?;
        self.log.validate()?;
        Ok(())
    }

    /// The checks `smsvoice run` makes before it connects to anything
    /// (`runtime::Instance::start`), on top of [`Config::validate`]: a
    /// `[kafka]` section with at least one input topic, and, when
    /// `archive.uri` is set, a valid `[archive]` and a well-formed `s3://`
    /// location. `smsvoice check-config` runs them too.
    pub fn check_for_run(&self) -> Result<(), String> {
        let Some(k) = &self.kafka else {
            return Err(
                "no [kafka] section: smsvoice run needs kafka.bootstrap_servers and \
                 kafka.input_topics"
                    .into(),
            );
        };
        k.validate()?;
        if k.input_topics.all().is_empty() {
            return Err("kafka.input_topics lists no topic".into());
        }
        self.http.validate()?;
        if let Some(uri) = &self.archive.uri {
            self.archive.validate()?;
            if uri.starts_with("s3://") {
                crate::archive::s3::S3Config::from_uri(uri)
                    .map_err(|e| format!("archive.uri: {}", one_line(&e.to_string())))?;
            }
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Deserialises `base` with the overrides applied. A value read as TOML
/// that its key rejects is tried as the string it was written as (and a
/// file's content the other way round) before the error is reported: the
/// type of a key is only known to its deserialiser.
fn deserialize_layered(
    base: &toml::Table,
    overrides: &mut [Override],
    origin: &str,
) -> Result<(Config, toml::Table), ConfigError> {
    // Each override switches its reading at most once.
    for _ in 0..=overrides.len() {
        let effective = env::apply(base, overrides)?;
        let err = match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(
            effective.clone(),
        )) {
            Ok(config) => return Ok((config, effective)),
            Err(e) => e,
        };
        let path = KeyPath::from_serde(err.path());
        let secrets = env::secrets_of(&effective);
        let message = env::redact(&one_line(err.inner().message()), &secrets);
        if !path.is_empty() {
            if let Some(o) = overrides.iter_mut().find(|o| o.path.matches(&path)) {
                if o.switch_reading(message.clone()) {
                    continue;
                }
            }
        }
        return Err(layered_error(&path, message, overrides, origin));
    }
    // Unreachable: every round either returns or switches one reading.
    Err(ConfigError::Parse {
        path: origin.to_owned(),
        message: "the environment's values could not be typed".into(),
    })
}

/// The error of a deserialisation at `path`, naming the variable that set
/// the key (or created the table) when the environment is involved.
fn layered_error(
    path: &KeyPath,
    message: String,
    overrides: &[Override],
    origin: &str,
) -> ConfigError {
    if !path.is_empty() {
        if let Some(o) = overrides.iter().find(|o| o.path.matches(path)) {
            let message = o.first_error.clone().unwrap_or(message);
            return ConfigError::Env {
                var: o.var.clone(),
                message: format!("{}: {message}", o.path),
            };
        }
        let below: Vec<&Override> = overrides
            .iter()
            .filter(|o| o.path.starts_with(path))
            .collect();
        if message.starts_with("unknown field") {
            if let Some(o) = below.first() {
                return ConfigError::Env {
                    var: o.var.clone(),
                    message: format!("no such key {}: {path}: {message}", o.path),
                };
            }
        }
        let related: Vec<&str> = overrides
            .iter()
            .filter(|o| o.path.starts_with(path) || path.starts_with(&o.path))
            .map(|o| o.var.as_str())
            .collect();
        if !related.is_empty() {
            return ConfigError::Parse {
                path: origin.to_owned(),
                message: format!("{path}: {message} (environment: {})", related.join(", ")),
            };
        }
    }
    ConfigError::Parse {
        path: origin.to_owned(),
        message: if path.is_empty() {
            message
        } else {
            format!("{path}: {message}")
        },
    }
}

/// One line: the key, the parser's message, and where in `text`.
fn describe_toml_error(text: &str, path: Option<&KeyPath>, e: &toml::de::Error) -> String {
    let mut out = String::new();
    if let Some(p) = path.filter(|p| !p.is_empty()) {
        out.push_str(&format!("{p}: "));
    }
    out.push_str(&one_line(e.message()));
    if let Some(span) = e.span() {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        out.push_str(&format!(" (line {line}, column {column})"));
    }
    out
}

/// `message` on one line (parser messages may span several).
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
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

/// The production template `smsvoice default-config` prints
/// (`config/template.toml`): a `[kafka]` section whose broker address is the
/// one thing to fill in, no alarms (commented examples), every section
/// documented. `smsvoice run` and `check-config` accept it as it is.
pub const TEMPLATE: &str = include_str!("../config/template.toml");

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

    fn layered(text: &str, vars: &[(&str, &str)]) -> Result<LoadedConfig, ConfigError> {
        Config::layered(text, "t.toml", vars.iter().map(|(k, v)| (*k, *v)))
    }

    const KAFKA: &str = "[kafka]\nbootstrap_servers = \"file:9092\"\n\
                         [kafka.input_topics]\nevents = [\"ev\"]\n";

    #[test]
    fn template_is_accepted_by_run() {
        let c = Config::from_toml(TEMPLATE, "template").expect("template parses");
        c.check_for_run().expect("run accepts the template");
        let k = c.kafka.as_ref().expect("[kafka]");
        assert_eq!(k.bootstrap_servers, "localhost:9092");
        assert!(c.spend.alarms.is_empty() && c.spend.limits.is_empty());
        // the demo default has no [kafka] section: run refuses it
        let d = Config::from_toml(EMBEDDED_DEFAULT, "embedded").expect("default");
        let e = d.check_for_run().expect_err("no [kafka]");
        assert!(e.contains("[kafka]"), "{e}");
    }

    /// The template's commented keys of these sections show the defaults.
    #[test]
    fn template_comments_show_the_defaults() {
        let markers = [
            "replication_factor",
            "# [kafka.output_topics]",
            "# [limits]",
            "# [archive.uploads]",
            "# [archive.retry]",
            "# [log]",
        ];
        let mut out = Vec::new();
        let mut uncommenting = false;
        for line in TEMPLATE.lines() {
            let key = line.strip_prefix("# ").filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            });
            if markers.iter().any(|m| line.starts_with(m)) {
                uncommenting = true;
                out.push(line.strip_prefix("# ").unwrap_or(line).to_owned());
            } else if let (true, Some(k)) = (uncommenting, key) {
                // computed from commit_interval_ms when unset
                if !k.starts_with("internal_retention_ms") {
                    out.push(k.to_owned());
                }
            } else {
                uncommenting = false;
                out.push(line.to_owned());
            }
        }
        let uncommented = out.join("\n");
        assert!(
            uncommented.contains("\n[limits]\nmax_clock_skew"),
            "{uncommented}"
        );
        assert!(
            uncommented.contains("\n[log]\nformat = \"text\""),
            "{uncommented}"
        );
        let a = Config::from_toml(TEMPLATE, "template").expect("template");
        let b = Config::from_toml(&uncommented, "uncommented").expect("uncommented template");
        assert_eq!(a, b, "{uncommented}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let l = layered(
            KAFKA,
            &[
                ("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS", "env-1:9092,env-2:9092"),
                ("SMSVOICE_KAFKA__EXACTLY_ONCE", "true"),
                ("SMSVOICE_SPEND__RECEIPT_WINDOW_HOURS", "48"),
                ("SMSVOICE_ARCHIVE__URI", "s3://bucket/prefix"),
                ("SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
                ("SMSVOICE_INSTANCE_ID", "pod-1"),
                ("HOME", "/root"),
            ],
        )
        .expect("valid");
        let k = l.config.kafka.as_ref().expect("kafka");
        assert_eq!(k.bootstrap_servers, "env-1:9092,env-2:9092");
        assert!(k.exactly_once);
        assert_eq!(k.input_topics.events, ["ev"]);
        assert_eq!(
            k.properties.get("sasl.password").map(String::as_str),
            Some("hunter2")
        );
        assert_eq!(l.config.spend.receipt_window_hours, 48);
        assert_eq!(l.config.archive.uri.as_deref(), Some("s3://bucket/prefix"));
        l.config.check_for_run().expect("runnable");
        let text = l.masked_toml().expect("printable");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("\"sasl.password\" = \"***\""), "{text}");
        assert!(text.contains("env-1:9092,env-2:9092"), "{text}");
        assert!(text.contains("SMSVOICE_KAFKA__EXACTLY_ONCE"), "{text}");
        // the printed configuration is itself a valid configuration
        Config::from_toml(&text, "printed").expect("printed config parses");
    }

    #[test]
    fn environment_alone_configures_kafka() {
        let l = Config::load_with(
            None,
            [
                ("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS", "b:9092"),
                ("SMSVOICE_KAFKA__INPUT_TOPICS__EVENTS", "[\"ev\"]"),
            ],
        )
        .expect("valid");
        l.config.check_for_run().expect("runnable");
        assert_eq!(l.origin, "embedded default config");
    }

    #[test]
    fn values_are_typed_by_their_key() {
        let l = layered(
            KAFKA,
            &[
                ("SMSVOICE_KAFKA__GROUP_ID", "123"),
                ("SMSVOICE_KAFKA__PROPERTIES__ENABLE_IDEMPOTENCE", "true"),
                ("SMSVOICE_SPEND__MAX_MESSAGE_COST_USD", "25"),
                (
                    "SMSVOICE_SPEND__MAX_MESSAGE_COST_USD_PER_CHANNEL__VOICE",
                    "50.5",
                ),
                ("SMSVOICE_ARCHIVE__ROLLING__MAX_AGE", "5m"),
                ("SMSVOICE_KAFKA__PARTITIONS", "12"),
            ],
        )
        .expect("valid");
        let k = l.config.kafka.as_ref().expect("kafka");
        assert_eq!(k.group_id, "123");
        assert_eq!(k.partitions, 12);
        assert_eq!(
            k.properties.get("enable.idempotence").map(String::as_str),
            Some("true")
        );
        assert_eq!(l.config.spend.max_message_cost_usd, Usd::from_dollars(25));
        assert_eq!(
            l.config
                .spend
                .max_message_cost_usd_per_channel
                .get(&crate::model::Channel::Voice)
                .map(ToString::to_string)
                .as_deref(),
            Some("50.5")
        );
        assert_eq!(
            l.config.archive.rolling.max_age,
            std::time::Duration::from_secs(300)
        );
    }

    #[test]
    fn a_file_value_is_typed_by_its_key_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("partitions");
        std::fs::write(&p, "12\n").expect("write");
        let ps = p.display().to_string();
        let l = layered(KAFKA, &[("SMSVOICE_KAFKA__PARTITIONS_FILE", ps.as_str())]).expect("valid");
        assert_eq!(l.config.kafka.as_ref().map(|k| k.partitions), Some(12));
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let cases = [
            ("SMSVOICE_KAFKA__BOOTSTRAP_SERVRS", "x", "bootstrap_servrs"),
            ("SMSVOICE_SPND__RECEIPT_WINDOW_HOURS", "1", "spnd"),
            ("SMSVOICE_KAFKA__PARTITIONS", "many", "kafka.partitions"),
            ("SMSVOICE_KAFKA__PARTITIONS", "1.5", "kafka.partitions"),
            ("SMSVOICE_KAFKA__PARTITIONS", "0", "kafka.partitions"),
            ("SMSVOICE_KAFKA__EXACTLY_ONCE", "yes", "kafka.exactly_once"),
            ("SMSVOICE_KAFKA_BOOTSTRAP_SERVERS", "x", "two underscores"),
            (
                "SMSVOICE_SPEND__MAX_MESSAGE_COST_USD_PER_CHANNEL__FAX",
                "1",
                "FAX",
            ),
            (
                "SMSVOICE_SPEND__MAX_MESSAGE_COST_USD_PER_CHANNEL__SMS",
                "ten",
                "max_message_cost_usd_per_channel.SMS",
            ),
        ];
        for (var, value, key) in cases {
            let e = layered(KAFKA, &[(var, value)]).expect_err(var).to_string();
            assert!(e.contains(var) && e.contains(key), "{var}={value}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // the float's own error, not that of its string reading
        let e = layered(KAFKA, &[("SMSVOICE_KAFKA__PARTITIONS", "1.5")])
            .expect_err("float")
            .to_string();
        assert!(e.contains("floating point"), "{e}");
        // a [kafka] section made by the environment lacks the broker
        let e = layered("", &[("SMSVOICE_KAFKA__PARTITIONS", "3")])
            .expect_err("no bootstrap")
            .to_string();
        assert!(
            e.contains("bootstrap_servers") && e.contains("SMSVOICE_KAFKA__PARTITIONS"),
            "{e}"
        );
    }

    #[test]
    fn file_errors_are_one_line_with_key_and_line() {
        let e = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"b\"\npartitions = \"x\"\n",
            "t",
        )
        .expect_err("string partitions")
        .to_string();
        assert!(
            e.contains("kafka.partitions") && e.contains("line 3"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = Config::from_toml("[kafka\n", "t")
            .expect_err("syntax")
            .to_string();
        assert!(e.contains("line 1") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn secrets_stay_out_of_errors() {
        // a validation message quoting a value that is also a secret
        let e = layered(
            KAFKA,
            &[
                ("SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD", "my-topic!"),
                ("SMSVOICE_KAFKA__INPUT_TOPICS__EVENTS", "[\"my-topic!\"]"),
            ],
        )
        .expect_err("invalid topic name")
        .to_string();
        assert!(!e.contains("my-topic!") && e.contains("***"), "{e}");
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
