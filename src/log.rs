//! `[log]`: the format, the filter and the personal-data rule of the log
//! (tracing events, on stderr), and the subscriber that `smsvoice run`,
//! `process` and `demo` install from it ([`init`]; `demo` reads the
//! `[log]` of its `--config` and defaults to warnings only,
//! [`LogConfig::for_demo`]). The other commands log warnings and errors as
//! text ([`init_plain`]).
//!
//! ```toml
//! [log]
//! format = "text"               # or "json": one JSON object per line
//! level = "warn,smsvoice=info"  # tracing EnvFilter directives; RUST_LOG, when set, replaces them
//! personal_data = false         # false: no phone number or message body is ever logged
//! ```
//!
//! Environment: `SMSVOICE_LOG__FORMAT=json`, `SMSVOICE_LOG__LEVEL=debug`,
//! `SMSVOICE_LOG__PERSONAL_DATA=true` (the rule of [`crate::config::env`]).
//!
//! # Lines
//!
//! `text`: `<RFC 3339 time> <LEVEL> <target>: <message> <field>=<value> ...`,
//! coloured only when stderr is a terminal. `json`: one object per line,
//! `{"timestamp": "<RFC 3339, UTC>", "level": "INFO", "fields": {"message":
//! "...", <the event's fields>}, "target": "smsvoice::runtime::stage"}`.
//! A line about one Kafka record names it by its `topic`, `partition` and
//! `offset` fields, never by its key or value.
//!
//! # Personal data
//!
//! Phone numbers (the customer's destination or origination number, the
//! key of `inbound-by-number` and of the opt-out changelog) and message
//! bodies are personal data. No log line has a field holding one; the
//! error texts that may quote a record's content (the reason an output
//! record cannot be archived, the detail of an unreadable opt-out change)
//! are passed through [`redact`], which hides quoted values and numbers
//! unless `personal_data = true` (for debugging with data one may see).
//! The same holds for the `smsvoice run: fatal: ...` line printed for an
//! unreadable internal record: it names the record by topic, partition and
//! offset, and its detail is redacted. Configuration errors may quote the
//! configuration (our own numbers in `[optout]`), not customer data.

use std::borrow::Cow;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError};

/// The default filter: `info` for smsvoice's own events, `warn` for
/// everything else (librdkafka, the AWS SDK, ...).
pub const DEFAULT_LEVEL: &str = "warn,smsvoice=info";

/// The filter of the commands without a `[log]` (`check-config`,
/// `default-config`, `mock-cluster`): warnings and errors.
pub const PLAIN_LEVEL: &str = "warn";

/// The default filter of `smsvoice demo`, whose output is its report:
/// warnings and errors (its `--config`'s `[log] level` or
/// `SMSVOICE_LOG__LEVEL` may say otherwise).
pub const DEMO_LEVEL: &str = "warn";

/// What replaces a redacted value.
pub const REDACTED: &str = "***";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable text, ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), `target`.
    Json,
}

/// The `[log]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (default) or `"json"`.
    #[serde(default)]
    pub format: LogFormat,
    /// Which events are logged: a tracing `EnvFilter` directive list
    /// (`"info"`, `"warn,smsvoice=debug,librdkafka=info"`). Default
    /// [`DEFAULT_LEVEL`]. The `RUST_LOG` environment variable, when set and
    /// not empty, is used instead.
    #[serde(default = "default_level")]
    pub level: String,
    /// Whether log lines may hold personal data (phone numbers, message
    /// bodies). Default false: none ever does (see the module
    /// documentation). True only to debug with data one is allowed to see.
    #[serde(default)]
    pub personal_data: bool,
}

fn default_level() -> String {
    DEFAULT_LEVEL.to_owned()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_level(),
            personal_data: false,
        }
    }
}

impl LogConfig {
    /// Checks `level`; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        filter(&self.level)
            .map(|_| ())
            .map_err(|e| format!("log.level {:?}: {e}", self.level))
    }

    /// What `smsvoice demo` logs with: the `[log]` section of its
    /// `--config` file `path` (none: the defaults, but `level` defaults to
    /// [`DEMO_LEVEL`]) with the `SMSVOICE_LOG__*` variables of `vars`
    /// applied. The demo's other sections are its own, and it reads no
    /// other variable. A file that cannot be read or is not TOML gives the
    /// defaults: the demo reports it itself.
    pub fn for_demo<I, K, V>(path: Option<&Path>, vars: I) -> Result<LogConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let origin = path.map_or_else(
            || "embedded default config".to_owned(),
            |p| p.display().to_string(),
        );
        let table = path
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| text.parse::<toml::Table>().ok())
            .unwrap_or_default();
        let mut log = table
            .get("log")
            .cloned()
            .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = &mut log {
            t.entry("level").or_insert_with(|| DEMO_LEVEL.into());
        }
        let mut only = toml::Table::new();
        only.insert("log".to_owned(), log);
        let text = toml::to_string(&only).map_err(|e| ConfigError::Parse {
            path: origin.clone(),
            message: e.to_string(),
        })?;
        let prefix = format!("{}LOG__", crate::config::env::PREFIX);
        let vars = vars.into_iter().filter_map(|(k, v)| {
            let k: OsString = k.into();
            k.to_string_lossy()
                .starts_with(&prefix)
                .then(|| (k, v.into()))
        });
        Config::layered(&text, &origin, vars).map(|l| l.config.log)
    }
}

/// Parses an `EnvFilter` directive list, strictly (an invalid directive is
/// an error, not ignored). An empty list is refused: `"off"` logs nothing.
fn filter(directives: &str) -> Result<EnvFilter, String> {
    if directives.trim().is_empty() {
        return Err("empty (\"off\" logs nothing)".into());
    }
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| e.to_string())
}

static PERSONAL_DATA: AtomicBool = AtomicBool::new(false);

/// Whether `[log] personal_data` is on in this process (false until
/// [`init`] installs a configuration that says so).
pub fn personal_data() -> bool {
    PERSONAL_DATA.load(Ordering::Relaxed)
}

/// `text` (an error message about a record's content) as it may be logged:
/// unchanged when [`personal_data`] is on, else with the values it may
/// quote replaced by [`REDACTED`] (see [`redact_values`]).
pub fn redact(text: &str) -> Cow<'_, str> {
    if personal_data() {
        Cow::Borrowed(text)
    } else {
        redact_values(text)
    }
}

/// `text` with every quoted value (`"..."`, `` `...` ``: how serde and the
/// decoder's messages quote a value), every `+` followed by digits (an
/// E.164 number) and every run of 7 or more digits (a number without its
/// `+`) replaced by [`REDACTED`]. Field names, short numbers (line and
/// column, lengths, limits) and the words of the message are kept.
pub fn redact_values(text: &str) -> Cow<'_, str> {
    let b = text.as_bytes();
    let digits_at = |i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let needs = b.iter().enumerate().any(|(i, &c)| {
        c == b'"'
            || c == b'`'
            || (c == b'+' && digits_at(i + 1) > 0)
            || (c.is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) && digits_at(i) >= 7)
    });
    if !needs {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'`' {
            // The closing quote; `"` may be escaped inside (Debug of a str).
            let mut j = i + 1;
            while j < b.len() && b[j] != c {
                j += if c == b'"' && b[j] == b'\\' { 2 } else { 1 };
            }
            out.push(c as char);
            out.push_str(REDACTED);
            if j < b.len() {
                out.push(c as char);
            }
            i = j + 1;
        } else if c == b'+' && i + 1 < b.len() && digits_at(i + 1) > 0 {
            out.push_str(REDACTED);
            i += 1 + digits_at(i + 1);
        } else if c.is_ascii_digit() {
            let n = digits_at(i);
            if n >= 7 {
                out.push_str(REDACTED);
            } else {
                out.push_str(&text[i..i + n]);
            }
            i += n;
        } else {
            // Copy up to the next byte that may start a value (all ASCII,
            // so the slice ends on a char boundary).
            let n = b[i..]
                .iter()
                .position(|&c| c == b'"' || c == b'`' || c == b'+' || c.is_ascii_digit())
                .unwrap_or(b.len() - i);
            let n = n.max(1);
            out.push_str(&text[i..i + n]);
            i += n;
        }
    }
    Cow::Owned(out)
}

/// Installs the process's subscriber from `cfg`: events on stderr, in
/// `cfg.format`, filtered by `RUST_LOG` when it is set (not empty) and
/// valid, else by `cfg.level`; and sets [`personal_data`]. A second call
/// changes nothing (the first subscriber stays).
pub fn init(cfg: &LogConfig) {
    PERSONAL_DATA.store(cfg.personal_data, Ordering::Relaxed);
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (f, ignored) = match rust_log.as_deref().map(filter) {
        Some(Ok(f)) => (f, None),
        Some(Err(e)) => (level_filter(&cfg.level), Some(e)),
        None => (level_filter(&cfg.level), None),
    };
    let installed = match cfg.format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(f)
            .with_writer(std::io::stderr)
            // Colour only on a terminal: log files and collectors get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(f)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init(),
    };
    if let (Ok(()), Some(e)) = (installed, ignored) {
        tracing::warn!(error = %e, level = %cfg.level, "RUST_LOG is not a valid filter: ignored");
    }
}

/// The subscriber of the commands without a `[log]`: text at
/// [`PLAIN_LEVEL`] (or `RUST_LOG`).
pub fn init_plain() {
    init(&LogConfig {
        level: PLAIN_LEVEL.to_owned(),
        ..LogConfig::default()
    });
}

/// `level` as a filter; a level that does not parse (the configuration
/// checks it, so only a bug) gives the default.
fn level_filter(level: &str) -> EnvFilter {
    filter(level).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layered(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::layered(text, "t.toml", vars.iter().map(|(k, v)| (*k, *v))).map(|l| l.config)
    }

    #[test]
    fn defaults() {
        let c = layered("", &[]).expect("empty config");
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "warn,smsvoice=info");
        assert!(!c.log.personal_data);
        c.log.validate().expect("default level parses");
    }

    #[test]
    fn section_parses_and_rejects_unknown_keys_and_bad_values() {
        let c = layered(
            "[log]\nformat = \"json\"\nlevel = \"debug\"\npersonal_data = true\n",
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.log,
            LogConfig {
                format: LogFormat::Json,
                level: "debug".into(),
                personal_data: true
            }
        );
        let e = layered("[log]\nformats = \"json\"\n", &[]).expect_err("unknown key");
        assert!(e.to_string().contains("formats"), "{e}");
        let e = layered("[log]\nformat = \"xml\"\n", &[]).expect_err("bad format");
        assert!(e.to_string().contains("log.format"), "{e}");
        let e = layered("[log]\nlevel = \"smsvoice=loud\"\n", &[]).expect_err("bad level");
        assert!(e.to_string().contains("log.level"), "{e}");
        let e = layered("[log]\nlevel = \"\"\n", &[]).expect_err("empty level");
        assert!(e.to_string().contains("log.level"), "{e}");
    }

    #[test]
    fn environment_sets_every_key() {
        let c = layered(
            "",
            &[
                ("SMSVOICE_LOG__FORMAT", "json"),
                ("SMSVOICE_LOG__LEVEL", "warn,smsvoice=debug"),
                ("SMSVOICE_LOG__PERSONAL_DATA", "true"),
            ],
        )
        .expect("valid");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "warn,smsvoice=debug");
        assert!(c.log.personal_data);
        // over the file's section too
        let c = layered(
            "[log]\nformat = \"json\"\n",
            &[("SMSVOICE_LOG__FORMAT", "text")],
        )
        .expect("valid");
        assert_eq!(c.log.format, LogFormat::Text);
        let e = layered("", &[("SMSVOICE_LOG__FORMAT", "xml")]).expect_err("bad format");
        let m = e.to_string();
        assert!(
            m.contains("SMSVOICE_LOG__FORMAT") && m.contains("log.format"),
            "{m}"
        );
        let e = layered("", &[("SMSVOICE_LOG__LEVEL", "info,=")]).expect_err("bad level");
        let m = e.to_string();
        assert!(m.contains("log.level"), "{m}");
        let e = layered("", &[("SMSVOICE_LOG__COLOUR", "true")]).expect_err("no such key");
        assert!(e.to_string().contains("SMSVOICE_LOG__COLOUR"), "{e}");
    }

    #[test]
    fn demo_reads_only_the_log_section_and_its_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("demo.toml");
        // a [kafka] section the demo replaces, invalid on its own
        std::fs::write(
            &p,
            "[kafka]\nbootstrap_servers = \"\"\n[log]\nformat = \"json\"\n",
        )
        .expect("write");
        let vars = [
            ("SMSVOICE_LOG__LEVEL", "debug"),
            ("SMSVOICE_KAFKA__WORKERS", "0"),
        ];
        let c = LogConfig::for_demo(Some(&p), vars).expect("log section");
        assert_eq!(c.format, LogFormat::Json);
        assert_eq!(c.level, "debug");
        let demo_default = LogConfig {
            level: DEMO_LEVEL.into(),
            ..LogConfig::default()
        };
        assert_eq!(
            LogConfig::for_demo(None, [("A", "b")]).expect("defaults"),
            demo_default
        );
        // unreadable: the defaults (the demo reports it)
        let missing = dir.path().join("missing.toml");
        assert_eq!(
            LogConfig::for_demo(Some(&missing), Vec::<(String, String)>::new()).expect("defaults"),
            demo_default
        );
        // a level of the file is kept
        std::fs::write(&p, "[log]\nlevel = \"info\"\n").expect("write");
        let c = LogConfig::for_demo(Some(&p), Vec::<(String, String)>::new()).expect("level");
        assert_eq!(c.level, "info");
        std::fs::write(&p, "[log]\nformat = \"xml\"\n").expect("write");
        let e = LogConfig::for_demo(Some(&p), Vec::<(String, String)>::new()).expect_err("xml");
        assert!(e.to_string().contains("log.format"), "{e}");
    }

    #[test]
    fn redaction_hides_quoted_values_and_numbers() {
        assert_eq!(
            redact_values(
                "field destinationPhoneNumber is not an E.164 phone number: \"+1206555\""
            ),
            "field destinationPhoneNumber is not an E.164 phone number: \"***\""
        );
        assert_eq!(
            redact_values(
                "invalid type: string \"STOP \\\"now\\\"\", expected u64 at line 1 column 52"
            ),
            "invalid type: string \"***\", expected u64 at line 1 column 52"
        );
        assert_eq!(
            redact_values("unknown variant `+12065550100`, expected `a`"),
            "unknown variant `***`, expected `***`"
        );
        assert_eq!(
            redact_values("number +12065550100 and 12065550100, offset 41"),
            "number *** and ***, offset 41"
        );
        assert_eq!(redact_values("unclosed \"+1206"), "unclosed \"***");
        assert_eq!(redact_values("é +1206 ü, a + b"), "é *** ü, a + b");
        let plain = "missing required field messageId (limit 128 bytes)";
        assert!(matches!(redact_values(plain), Cow::Borrowed(s) if s == plain));
        // off by default: redact() redacts
        assert!(!personal_data());
        assert_eq!(redact("\"+12065550100\""), "\"***\"");
    }
}
