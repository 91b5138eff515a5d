//! Configuration from the environment: overrides of any key by a variable,
//! secrets read from files (`_FILE`), and the masking of secrets when the
//! effective configuration is printed (`smsvoice check-config`).
//!
//! # The naming rule
//!
//! `SMSVOICE_` + the key's path, each segment in upper case, segments joined
//! by `__` (two underscores): `kafka.bootstrap_servers` is
//! `SMSVOICE_KAFKA__BOOTSTRAP_SERVERS`, `spend.receipt_window_hours` is
//! `SMSVOICE_SPEND__RECEIPT_WINDOW_HOURS`. Two maps have keys that are not
//! snake case:
//!
//! * `[kafka.properties]` (librdkafka properties, lower case with dots):
//!   everything after `SMSVOICE_KAFKA__PROPERTIES__` is one key, lower-cased,
//!   each `_` read as `.` and each `__` as a literal `_`:
//!   `SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD` is `"sasl.password"`.
//! * `[spend.max_message_cost_usd_per_channel]` (channel names): the key is
//!   kept in upper case, `SMSVOICE_SPEND__MAX_MESSAGE_COST_USD_PER_CHANNEL__VOICE`.
//!
//! A segment that is a number indexes an array that already exists
//! (`SMSVOICE_SPEND__ALARMS__0__THRESHOLD_USD` is the first
//! `[[spend.alarms]]`'s `threshold_usd`).
//!
//! A name ending in `_FILE` reads the value of the key without that suffix
//! from the file it names (trailing line breaks removed), for secrets
//! mounted as files (a Kubernetes Secret volume, Docker secrets):
//! `SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE=/var/run/secrets/kafka/password`.
//! Setting a key both ways is an error.
//!
//! # Values
//!
//! A value is read as a TOML value when it parses as one (`48`, `true`,
//! `1.5`, `["a", "b"]`, `"quoted"`, an inline table), else as the string it
//! is. Where the key takes a string, the text is used as is even when it
//! parses as something else (`SMSVOICE_KAFKA__GROUP_ID=123` is the group
//! `"123"`, `SMSVOICE_SPEND__MAX_MESSAGE_COST_USD=10` is `"10"`). A file's
//! content is a string, verbatim (quotes included); only a key that does
//! not take a string reads it as a TOML value.
//!
//! # Other variables under the prefix
//!
//! A variable under `SMSVOICE_` that names no key is an error naming the
//! variable (the configuration types reject unknown keys), except
//! [`NOT_CONFIGURATION`] (read by the program itself or by its tests and
//! scripts) and the service links Kubernetes injects for a Service whose
//! name starts with `smsvoice` (`SMSVOICE_SERVICE_HOST`, `SMSVOICE_PORT`,
//! `SMSVOICE_PORT_8080_TCP_ADDR`, ...), which contain no `__` and so can name
//! no key.
//!
//! # Why not a layering crate
//!
//! The overrides are merged into the `toml::Value` tree of the file before
//! the typed deserialisation, rather than with `figment` or `config`: those
//! crates have no `_FILE` convention, no way to address the dotted keys of
//! `[kafka.properties]` unambiguously, and would replace the errors of the
//! file (`serde_path_to_error` paths and line numbers) with their own; the
//! variables they ignore (unknown ones) must be rejected here anyway. The
//! merge is small and the errors keep naming the key, and the variable.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use toml::{Table, Value};

use super::ConfigError;

/// Prefix of every configuration variable.
pub const PREFIX: &str = "SMSVOICE_";

/// Suffix of a variable naming a file to read the value from.
pub const FILE_SUFFIX: &str = "_FILE";

/// Variables under [`PREFIX`] that are not configuration keys and are left
/// alone: `SMSVOICE_INSTANCE_ID` is read by `smsvoice run`
/// (`runtime::stage::instance_id`); the others by the tests and scripts
/// (`tests/archive.rs`, `tests/support/kafka.rs`, `scripts/install-kafka.sh`),
/// whose environment the `smsvoice` processes they start inherit.
pub const NOT_CONFIGURATION: [&str; 6] = [
    "SMSVOICE_INSTANCE_ID",
    "SMSVOICE_BLESS",
    "SMSVOICE_TOOLS",
    "SMSVOICE_REQUIRE_TOOLS",
    "SMSVOICE_KAFKA_HEAP",
    "SMSVOICE_KEEP_BROKER_DIR",
];

/// What is printed instead of a secret.
pub const MASK: &str = "***";

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
    /// A map key that is not a string to the deserialiser (an enum, such as
    /// the channel keys of `spend.max_message_cost_usd_per_channel`):
    /// matches any key.
    Unknown,
}

impl Segment {
    fn matches(&self, other: &Segment) -> bool {
        self == other || *self == Segment::Unknown || *other == Segment::Unknown
    }
}

/// A key path, displayed as TOML writes it: `kafka.bootstrap_servers`,
/// `kafka.properties."sasl.password"`, `spend.alarms[0].name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    /// The path of a deserialisation error.
    pub fn from_serde(path: &serde_path_to_error::Path) -> KeyPath {
        use serde_path_to_error::Segment as S;
        KeyPath(
            path.iter()
                .map(|s| match s {
                    S::Seq { index } => Segment::Index(*index),
                    S::Map { key } => Segment::Key(key.clone()),
                    S::Enum { variant } => Segment::Key(variant.clone()),
                    S::Unknown => Segment::Unknown,
                })
                .collect(),
        )
    }

    /// True when `self` is `other` or below it.
    pub fn starts_with(&self, other: &KeyPath) -> bool {
        self.0.len() >= other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.matches(b))
    }

    /// True when `self` and `other` name the same key ([`Segment::Unknown`]
    /// matching any key).
    pub fn matches(&self, other: &KeyPath) -> bool {
        self.0.len() == other.0.len() && self.starts_with(other)
    }

    /// True for the root (an error of the whole document).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The last key, if the path ends with one.
    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(the whole configuration)");
        }
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Unknown => f.write_str(if i > 0 { ".?" } else { "?" })?,
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where an override's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The variable's own value.
    Variable,
    /// The file named by the `_FILE` variable.
    File(PathBuf),
}

/// One segment of a variable's name, before it meets the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NameSegment {
    name: String,
    /// A map key (never an array index).
    literal: bool,
}

/// One configuration key set from the environment.
#[derive(Clone, Debug)]
pub struct Override {
    /// The variable, as set (with `_FILE` for a file).
    pub var: String,
    /// Where the value came from.
    pub origin: Origin,
    segments: Vec<NameSegment>,
    /// The key path, once applied to a tree (array indices resolved).
    pub path: KeyPath,
    /// The value put in the tree.
    value: Value,
    /// The other reading of the text (as a string, or as TOML), tried when
    /// the key rejects `value`.
    alternative: Option<Value>,
    /// The error of the first reading, reported if the other fails too.
    pub(super) first_error: Option<String>,
}

impl Override {
    /// The key's path as written in the variable's name (indices not yet
    /// resolved against a tree).
    fn name_path(&self) -> String {
        KeyPath(
            self.segments
                .iter()
                .map(|s| Segment::Key(s.name.clone()))
                .collect(),
        )
        .to_string()
    }

    /// Tries the other reading of the value; false when there is none.
    pub(super) fn switch_reading(&mut self, error: String) -> bool {
        match self.alternative.take() {
            Some(v) => {
                self.value = v;
                self.first_error = Some(error);
                true
            }
            None => false,
        }
    }
}

/// The configuration variables of `vars` (any iterator of name and value,
/// such as `std::env::vars_os()`), in the order they are applied, with the
/// files of the `_FILE` ones read.
pub fn read_overrides<I, K, V>(vars: I) -> Result<Vec<Override>, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let mut out: Vec<Override> = Vec::new();
    for (name, value) in vars {
        let name: OsString = name.into();
        let value: OsString = value.into();
        let Some(name) = name.to_str() else {
            if name.to_string_lossy().starts_with(PREFIX) {
                return Err(env_error(
                    &name.to_string_lossy(),
                    "the name is not UTF-8".into(),
                ));
            }
            continue;
        };
        if !name.starts_with(PREFIX) || NOT_CONFIGURATION.contains(&name) {
            continue;
        }
        let Some(value) = value.to_str() else {
            return Err(env_error(name, "the value is not UTF-8".into()));
        };
        if is_kubernetes_service_link(name, value) {
            continue;
        }
        let (segments, file) = parse_name(name).map_err(|m| env_error(name, m))?;
        let (origin, raw) = if file {
            let path = PathBuf::from(value);
            let bytes = std::fs::read(&path).map_err(|source| ConfigError::SecretFile {
                var: name.to_owned(),
                path: value.to_owned(),
                source,
            })?;
            let text = String::from_utf8(bytes).map_err(|_| {
                env_error(name, format!("the content of {value} is not UTF-8 text"))
            })?;
            let text = text.trim_end_matches(['\n', '\r']).to_owned();
            (Origin::File(path), text)
        } else {
            (Origin::Variable, value.to_owned())
        };
        let parsed = parse_value(&raw);
        let as_string = Value::String(raw.clone());
        let (value, alternative) = match (&origin, parsed) {
            // A secret from a file is verbatim first.
            (Origin::File(_), Some(v)) if !v.is_str() => (as_string, Some(v)),
            (Origin::File(_), _) => (as_string, None),
            (Origin::Variable, Some(v)) if !v.is_str() => (v, Some(as_string)),
            (Origin::Variable, Some(v)) => (v, None),
            (Origin::Variable, None) => (as_string, None),
        };
        let o = Override {
            var: name.to_owned(),
            origin,
            segments,
            path: KeyPath::default(),
            value,
            alternative,
            first_error: None,
        };
        if let Some(other) = out.iter().find(|p| p.segments == o.segments) {
            let (a, b) = if other.var < o.var {
                (&other.var, &o.var)
            } else {
                (&o.var, &other.var)
            };
            return Err(env_error(
                a,
                format!(
                    "both {a} and {b} are set (both set {}); set only one of them",
                    o.name_path()
                ),
            ));
        }
        out.push(o);
    }
    // Shorter paths first, so that a key below a table set whole wins;
    // then by name, so the order does not depend on the environment's.
    out.sort_by(|a, b| (a.segments.len(), &a.var).cmp(&(b.segments.len(), &b.var)));
    Ok(out)
}

/// `root` with every override applied; each override learns its resolved
/// key path.
pub fn apply(root: &Table, overrides: &mut [Override]) -> Result<Table, ConfigError> {
    let mut tree = Value::Table(root.clone());
    for o in overrides.iter_mut() {
        let mut done = Vec::new();
        insert(&mut tree, &o.segments, o.value.clone(), &mut done)
            .map_err(|m| env_error(&o.var, m))?;
        o.path = KeyPath(done);
    }
    match tree {
        Value::Table(t) => Ok(t),
        // `insert` never replaces the root: every name has a segment.
        _ => Ok(root.clone()),
    }
}

fn insert(
    node: &mut Value,
    segments: &[NameSegment],
    value: Value,
    done: &mut Vec<Segment>,
) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        *node = value;
        return Ok(());
    };
    match node {
        Value::Table(t) => {
            done.push(Segment::Key(first.name.clone()));
            let child = t
                .entry(first.name.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            insert(child, rest, value, done)
        }
        Value::Array(a) if !first.literal && first.name.parse::<usize>().is_ok() => {
            let i = first.name.parse::<usize>().unwrap_or(usize::MAX);
            let len = a.len();
            let here = KeyPath(done.clone());
            let child = a
                .get_mut(i)
                .ok_or_else(|| format!("{here} has {len} entries, no index {i}"))?;
            done.push(Segment::Index(i));
            insert(child, rest, value, done)
        }
        Value::Array(_) => Err(format!(
            "{} is an array: address an entry by its index (0, 1, ...), or set it whole",
            KeyPath(done.clone())
        )),
        _ => Err(format!("{} is a value, not a table", KeyPath(done.clone()))),
    }
}

/// The key segments of a variable's name, and whether it names a file.
fn parse_name(name: &str) -> Result<(Vec<NameSegment>, bool), String> {
    let rest = name.strip_prefix(PREFIX).unwrap_or(name);
    if let Some(c) = rest
        .chars()
        .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "unexpected character {c:?}: a configuration variable is {PREFIX} and the key's \
             path in upper case, segments joined by __ (e.g. SMSVOICE_KAFKA__BOOTSTRAP_SERVERS)"
        ));
    }
    let (rest, file) = match rest.strip_suffix(FILE_SUFFIX) {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let pieces: Vec<&str> = rest.split("__").collect();
    if pieces
        .iter()
        .any(|p| p.is_empty() || p.starts_with('_') || p.ends_with('_'))
    {
        return Err(
            "names no key: the segments of a key's path are joined by exactly two \
             underscores, and none is empty (e.g. SMSVOICE_KAFKA__BOOTSTRAP_SERVERS)"
                .into(),
        );
    }
    if pieces.len() == 1 {
        return Err(
            "names no key: every key is in a section, joined to it by two \
             underscores (SMSVOICE_KAFKA__BOOTSTRAP_SERVERS, not SMSVOICE_KAFKA_BOOTSTRAP_SERVERS)"
                .into(),
        );
    }
    let mut out: Vec<NameSegment> = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let lower = pieces[i].to_ascii_lowercase();
        let section = match out.as_slice() {
            [only] => only.name.as_str(),
            _ => "",
        };
        let more = i + 1 < pieces.len();
        let properties = more && section == "kafka" && lower == "properties";
        let per_channel = more && section == "spend" && lower == "max_message_cost_usd_per_channel";
        if properties {
            out.push(NameSegment {
                name: lower,
                literal: true,
            });
            let key: Vec<String> = pieces[i + 1..]
                .iter()
                .map(|p| p.to_ascii_lowercase().replace('_', "."))
                .collect();
            out.push(NameSegment {
                name: key.join("_"),
                literal: true,
            });
            return Ok((out, file));
        }
        if per_channel {
            if i + 2 != pieces.len() {
                return Err(
                    "spend.max_message_cost_usd_per_channel takes one channel name \
                     (SMS, MMS, VOICE, RCS) after it"
                        .into(),
                );
            }
            out.push(NameSegment {
                name: lower,
                literal: true,
            });
            out.push(NameSegment {
                name: pieces[i + 1].to_owned(),
                literal: true,
            });
            return Ok((out, file));
        }
        out.push(NameSegment {
            name: lower,
            literal: false,
        });
        i += 1;
    }
    Ok((out, file))
}

/// `raw` as a TOML value, if it is one.
fn parse_value(raw: &str) -> Option<Value> {
    let t: Table = format!("v = {raw}").parse().ok()?;
    if t.len() != 1 {
        return None;
    }
    t.get("v").cloned()
}

/// A service link Kubernetes injects into every pod of a namespace for a
/// Service named `smsvoice...` (`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`,
/// `<NAME>_SERVICE_PORT_<PORT>`, `<NAME>_PORT=tcp://...`,
/// `<NAME>_PORT_<N>_<PROTO>` and its `_PROTO`, `_PORT`, `_ADDR`). None
/// contains `__`, so none can be a configuration key.
fn is_kubernetes_service_link(name: &str, value: &str) -> bool {
    if name.contains("__") {
        return false;
    }
    if name.ends_with("_SERVICE_HOST")
        || name.ends_with("_SERVICE_PORT")
        || name.contains("_SERVICE_PORT_")
    {
        return true;
    }
    let url = ["tcp://", "udp://", "sctp://"]
        .iter()
        .any(|p| value.starts_with(p));
    if name.ends_with("_PORT") && url {
        return true;
    }
    // <NAME>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]
    let parts: Vec<&str> = name.split('_').collect();
    parts.windows(3).any(|w| {
        w[0] == "PORT"
            && !w[1].is_empty()
            && w[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w[2], "TCP" | "UDP" | "SCTP")
    }) && {
        let tail = parts
            .iter()
            .rposition(|p| matches!(*p, "TCP" | "UDP" | "SCTP"))
            .map_or(0, |i| parts.len() - 1 - i);
        tail == 0 || (tail == 1 && matches!(parts.last(), Some(&("PROTO" | "PORT" | "ADDR"))))
    }
}

fn env_error(var: &str, message: String) -> ConfigError {
    ConfigError::Env {
        var: var.to_owned(),
        message,
    }
}

/// True for a key whose value is a secret: its name contains `password`,
/// `passphrase`, `secret`, `token` or `credential` (any case), or it is a
/// librdkafka property holding a private key or secrets in free form
/// (`ssl.key.pem`, `ssl_key`, `sasl.oauthbearer.config`, a
/// `...private.key...`).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passphrase", "secret", "token", "credential"]
        .iter()
        .any(|w| k.contains(w))
        || k.contains("private.key")
        || k.contains("private_key")
        || matches!(
            k.as_str(),
            "ssl.key.pem" | "ssl_key" | "sasl.oauthbearer.config"
        )
}

/// `table` with the value of every secret key ([`is_secret_key`]) replaced
/// by [`MASK`], at any depth.
pub fn mask_secrets(table: &Table) -> Table {
    let mut t = table.clone();
    mask_table(&mut t);
    t
}

fn mask_table(t: &mut Table) {
    for (k, v) in t.iter_mut() {
        if is_secret_key(k) {
            *v = Value::String(MASK.into());
        } else {
            mask_value(v);
        }
    }
}

fn mask_value(v: &mut Value) {
    match v {
        Value::Table(t) => mask_table(t),
        Value::Array(a) => a.iter_mut().for_each(mask_value),
        _ => {}
    }
}

/// The secrets of `table` (values of secret keys, as text), to keep out of
/// error messages.
pub fn secrets_of(table: &Table) -> Vec<String> {
    fn walk(v: &Value, secret: bool, out: &mut Vec<String>) {
        match v {
            Value::Table(t) => {
                for (k, v) in t {
                    walk(v, secret || is_secret_key(k), out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, secret, out)),
            Value::String(s) if secret => out.push(s.clone()),
            other if secret => out.push(other.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, v) in table {
        walk(v, is_secret_key(k), &mut out);
    }
    out
}

/// `message` with every secret of at least 3 characters replaced by [`MASK`].
pub fn redact(message: &str, secrets: &[String]) -> String {
    let mut m = message.to_owned();
    for s in secrets {
        if s.chars().count() >= 3 {
            m = m.replace(s.as_str(), MASK);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Vec<Override>, ConfigError> {
        read_overrides(vars.iter().map(|(k, v)| (*k, *v)))
    }

    fn applied(base: &str, vars: &[(&str, &str)]) -> Result<Table, ConfigError> {
        let base: Table = base.parse().expect("base toml");
        let mut o = read(vars)?;
        apply(&base, &mut o)
    }

    fn keys(name: &str) -> Vec<String> {
        parse_name(name)
            .expect(name)
            .0
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    #[test]
    fn naming_rule() {
        assert_eq!(
            keys("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS"),
            ["kafka", "bootstrap_servers"]
        );
        assert_eq!(
            keys("SMSVOICE_SPEND__RECEIPT_WINDOW_HOURS"),
            ["spend", "receipt_window_hours"]
        );
        assert_eq!(
            keys("SMSVOICE_ARCHIVE__S3__ENDPOINT_URL"),
            ["archive", "s3", "endpoint_url"]
        );
        assert_eq!(
            keys("SMSVOICE_SPEND__ALARMS__0__THRESHOLD_USD"),
            ["spend", "alarms", "0", "threshold_usd"]
        );
        let (_, file) = parse_name("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS_FILE").expect("file");
        assert!(file);
    }

    #[test]
    fn properties_keys() {
        assert_eq!(
            keys("SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD"),
            ["kafka", "properties", "sasl.password"]
        );
        assert_eq!(
            keys("SMSVOICE_KAFKA__PROPERTIES__SASL_OAUTHBEARER_CLIENT_SECRET"),
            ["kafka", "properties", "sasl.oauthbearer.client.secret"]
        );
        assert_eq!(
            keys("SMSVOICE_KAFKA__PROPERTIES__SSL__KEY"),
            ["kafka", "properties", "ssl_key"]
        );
        let (segs, file) =
            parse_name("SMSVOICE_KAFKA__PROPERTIES__SSL_KEY_PASSWORD_FILE").expect("file");
        assert!(file);
        assert_eq!(segs[2].name, "ssl.key.password");
        assert_eq!(
            keys("SMSVOICE_SPEND__MAX_MESSAGE_COST_USD_PER_CHANNEL__VOICE"),
            ["spend", "max_message_cost_usd_per_channel", "VOICE"]
        );
    }

    #[test]
    fn malformed_names_are_rejected_naming_the_variable() {
        for name in [
            "SMSVOICE_KAFKA_BOOTSTRAP_SERVERS",
            "SMSVOICE_KAFKA___BOOTSTRAP_SERVERS",
            "SMSVOICE_KAFKA____X",
            "SMSVOICE_kafka__bootstrap_servers",
            "SMSVOICE_",
            "SMSVOICE___X",
        ] {
            let e = read(&[(name, "x")]).expect_err(name).to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn foreign_and_reserved_variables_are_ignored() {
        let o = read(&[
            ("PATH", "/bin"),
            ("HOSTNAME", "pod-1"),
            ("SMSVOICE_INSTANCE_ID", "pod-1"),
            ("SMSVOICE_KAFKA_HEAP", "1g"),
            ("SMSVOICE_TOOLS", "/tmp/t"),
            ("SMSVOICE_BLESS", "1"),
            ("SMSVOICE_KEEP_BROKER_DIR", "1"),
            ("SMSVOICE_REQUIRE_TOOLS", "1"),
            ("SMSVOICE_SERVICE_HOST", "10.0.0.1"),
            ("SMSVOICE_SERVICE_PORT", "8080"),
            ("SMSVOICE_SERVICE_PORT_METRICS", "8080"),
            ("SMSVOICE_PORT", "tcp://10.0.0.1:8080"),
            ("SMSVOICE_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
            ("SMSVOICE_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ("SMSVOICE_METRICS_PORT_9090_TCP_PROTO", "tcp"),
        ])
        .expect("none is a configuration variable");
        assert!(o.is_empty(), "{o:?}");
        // A plain SMSVOICE_PORT that is not a service link is an error.
        assert!(read(&[("SMSVOICE_PORT", "8080")]).is_err());
    }

    #[test]
    fn typing() {
        let t = applied(
            "",
            &[
                ("SMSVOICE_SPEND__RECEIPT_WINDOW_HOURS", "48"),
                ("SMSVOICE_KAFKA__EXACTLY_ONCE", "true"),
                ("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS", "b-1:9092,b-2:9092"),
                ("SMSVOICE_KAFKA__INPUT_TOPICS__EVENTS", r#"["a", "b"]"#),
                ("SMSVOICE_KAFKA__GROUP_ID", r#""quoted""#),
            ],
        )
        .expect("applies");
        assert_eq!(t["spend"]["receipt_window_hours"], Value::Integer(48));
        assert_eq!(t["kafka"]["exactly_once"], Value::Boolean(true));
        assert_eq!(
            t["kafka"]["bootstrap_servers"],
            Value::String("b-1:9092,b-2:9092".into())
        );
        assert_eq!(
            t["kafka"]["input_topics"]["events"],
            Value::Array(vec!["a".into(), "b".into()])
        );
        assert_eq!(t["kafka"]["group_id"], Value::String("quoted".into()));
        // Two lines are not one value: the text.
        assert_eq!(parse_value("1\nw = 2"), None);
    }

    #[test]
    fn overrides_replace_and_index() {
        let base = "[kafka]\nbootstrap_servers = \"file:9092\"\n\
                    [[spend.alarms]]\nname = \"a\"\nchannel = \"SMS\"\n\
                    threshold_usd = \"1\"\ncomparison = \"GreaterThanThreshold\"\n";
        let t = applied(
            base,
            &[
                ("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS", "env:9092"),
                ("SMSVOICE_SPEND__ALARMS__0__THRESHOLD_USD", "80"),
            ],
        )
        .expect("applies");
        assert_eq!(t["kafka"]["bootstrap_servers"].as_str(), Some("env:9092"));
        assert_eq!(t["spend"]["alarms"][0]["threshold_usd"], Value::Integer(80));
        assert_eq!(t["spend"]["alarms"][0]["name"].as_str(), Some("a"));
        let e = applied(base, &[("SMSVOICE_SPEND__ALARMS__3__NAME", "x")])
            .expect_err("no such entry")
            .to_string();
        assert!(
            e.contains("SMSVOICE_SPEND__ALARMS__3__NAME") && e.contains("1 entries"),
            "{e}"
        );
        let e = applied(base, &[("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS__X", "x")])
            .expect_err("not a table")
            .to_string();
        assert!(e.contains("SMSVOICE_KAFKA__BOOTSTRAP_SERVERS__X"), "{e}");
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("password");
        std::fs::write(&p, "s3cr\"et true\n\n").expect("write");
        let ps = p.display().to_string();
        let o = read(&[(
            "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
            ps.as_str(),
        )])
        .expect("reads");
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].origin, Origin::File(p.clone()));
        assert_eq!(o[0].value, Value::String("s3cr\"et true".into()));
        // verbatim even when the content is a TOML value
        std::fs::write(&p, "\"quoted\"\n").expect("write");
        let o = read(&[(
            "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
            ps.as_str(),
        )])
        .expect("reads");
        assert_eq!(o[0].value, Value::String("\"quoted\"".into()));

        let missing = dir.path().join("missing").display().to_string();
        let e = read(&[(
            "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
            missing.as_str(),
        )])
        .expect_err("missing file")
        .to_string();
        assert!(
            e.contains("SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE") && e.contains(&missing),
            "{e}"
        );
    }

    #[test]
    fn variable_and_file_both_set_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("password");
        std::fs::write(&p, "x").expect("write");
        let ps = p.display().to_string();
        let e = read(&[
            (
                "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                ps.as_str(),
            ),
            ("SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD", "y"),
        ])
        .expect_err("both set")
        .to_string();
        assert!(
            e.contains(
                "both SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD and \
                 SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE are set"
            ),
            "{e}"
        );
    }

    #[test]
    fn masking() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "api_token",
            "Secret",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "sasl.username",
            "bootstrap_servers",
            "ssl.ca.location",
            "key_id",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
        let t: Table = "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\
                        \"sasl.username\" = \"u\"\n[[x]]\napi_token = 5\n"
            .parse()
            .expect("toml");
        let m = mask_secrets(&t);
        let text = toml::to_string(&m).expect("serialise");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            m["kafka"]["properties"]["sasl.password"].as_str(),
            Some(MASK)
        );
        assert_eq!(
            m["kafka"]["properties"]["sasl.username"].as_str(),
            Some("u")
        );
        assert_eq!(m["x"][0]["api_token"].as_str(), Some(MASK));
        let s = secrets_of(&t);
        assert_eq!(redact("bad hunter2 value", &s), "bad *** value");
    }

    #[test]
    fn key_paths_display_as_toml() {
        let p = KeyPath(vec![
            Segment::Key("kafka".into()),
            Segment::Key("properties".into()),
            Segment::Key("sasl.password".into()),
        ]);
        assert_eq!(p.to_string(), "kafka.properties.\"sasl.password\"");
        let p = KeyPath(vec![
            Segment::Key("spend".into()),
            Segment::Key("alarms".into()),
            Segment::Index(0),
            Segment::Key("name".into()),
        ]);
        assert_eq!(p.to_string(), "spend.alarms[0].name");
    }
}
