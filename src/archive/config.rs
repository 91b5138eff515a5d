//! `[archive]` configuration: where the archive goes, when files rotate, how
//! store errors are retried, and S3 connection options.
//!
//! ```toml
//! [archive]
//! # uri = "s3://bucket/prefix"   # default target; `--archive` overrides it,
//! #                              # file mode defaults to <out>/archive
//!
//! [archive.rolling]
//! max_rows = 1000000             # rows per file
//! max_bytes = 134217728          # estimated Parquet bytes per file
//! max_age = "10m"                # Kafka mode: a quiet topic lands within this
//!
//! [archive.uploads]             # Kafka mode (the archive sink)
//! max_in_flight_bytes = 268435456  # closed files not yet durable, all partitions
//! max_queued_per_partition = 2     # closed segments waiting per partition
//!
//! [archive.retry]
//! max_attempts = 5
//! initial_backoff_ms = 200
//! max_backoff_ms = 10000
//!
//! [archive.s3]
//! # region = "us-east-1"
//! # endpoint_url = "http://127.0.0.1:9000"  # S3-compatible store; else env AWS_ENDPOINT_URL
//! # force_path_style = true
//! # sse = "s3"
//! ```
//!
//! Every struct rejects unknown keys.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::s3::Sse;

/// `[archive]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Default archive location: a local directory, or `s3://bucket/prefix`.
    /// In file mode `--archive` overrides it, and without either the archive
    /// is written to `<out>/archive`.
    #[serde(default)]
    pub uri: Option<String>,
    /// When files are cut.
    #[serde(default)]
    pub rolling: RollingPolicy,
    /// How failed store writes are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Kafka mode: how many closed files may wait for their upload.
    #[serde(default)]
    pub uploads: UploadLimits,
    /// S3 connection options (used for `s3://` locations only).
    #[serde(default)]
    pub s3: S3Options,
}

/// `[archive.rolling]`: when an open archive file is cut.
///
/// A file is cut only between input records, never inside one (all payloads
/// of one Kafka record / top-level JSON value land in the same file), so a
/// file can exceed `max_rows` / `max_bytes` by what one record adds.
///
/// * `max_rows` and `max_bytes` are deterministic: the same input gives the
///   same cuts on every replay.
/// * `max_age` bounds how late a row lands. Kafka mode (the archive sink)
///   measures it with the records' Kafka timestamps, which are fixed in the
///   log: a segment is cut before the first record stamped `max_age` or
///   more after the segment's first record, so a replay cuts at the same
///   record. A quiet partition is flushed by the wall clock (its first
///   record `max_age` old), but only once it has been read to its high
///   watermark: a replay cannot be caught up before the original cut point
///   (see [`crate::archive`]). File mode ignores it: its input is finite
///   and everything is flushed at the end of each input file.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RollingPolicy {
    /// Maximum rows per file (at least 1). Default 1,000,000.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Maximum estimated size of a Parquet file in bytes (at least 1):
    /// compressed bytes already encoded plus the raw size of rows not yet
    /// encoded. Default 128 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Maximum age of buffered rows before they are cut (see above): a duration
    /// text (`"500ms"`, `"30s"`, `"10m"`, `"1h"`) or whole seconds.
    /// Default 10 minutes.
    #[serde(default = "default_max_age", deserialize_with = "deserialize_duration")]
    pub max_age: Duration,
}

fn default_max_rows() -> u64 {
    1_000_000
}

fn default_max_bytes() -> u64 {
    128 * 1024 * 1024
}

fn default_max_age() -> Duration {
    Duration::from_secs(600)
}

impl Default for RollingPolicy {
    fn default() -> Self {
        RollingPolicy {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
        }
    }
}

impl RollingPolicy {
    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_rows == 0 {
            return Err("archive.rolling.max_rows must be at least 1".into());
        }
        if self.max_bytes == 0 {
            return Err("archive.rolling.max_bytes must be at least 1".into());
        }
        if self.max_age.is_zero() {
            return Err("archive.rolling.max_age must be positive".into());
        }
        Ok(())
    }
}

/// `[archive.uploads]`: the bound on closed files not yet durable in Kafka
/// mode. The archive sink uploads closed files while it keeps reading; a
/// partition that has `max_queued_per_partition` closed segments waiting,
/// or any waiting segment while all waiting segments together hold
/// `max_in_flight_bytes` or more, is paused (the consumer keeps polling)
/// until its uploads catch up.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UploadLimits {
    /// Bytes of closed files not yet durable, all partitions (at least 1).
    /// Default 256 MiB.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
    /// Closed segments (the files of one partition cut together) waiting
    /// per partition, the one uploading included (at least 1). Default 2.
    #[serde(default = "default_max_queued_per_partition")]
    pub max_queued_per_partition: usize,
}

fn default_max_in_flight_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_max_queued_per_partition() -> usize {
    2
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_in_flight_bytes: default_max_in_flight_bytes(),
            max_queued_per_partition: default_max_queued_per_partition(),
        }
    }
}

/// `[archive.retry]`: exponential backoff for store writes. Only errors the
/// store reports as retryable (timeouts, throttling, 5xx, interrupted I/O)
/// are retried; any other error stops at once.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (at least 1). Default 5.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt, doubled after each failure. Default 200.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Upper bound of the wait. Default 10000.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_attempts() -> u32 {
    5
}

fn default_initial_backoff_ms() -> u64 {
    200
}

fn default_max_backoff_ms() -> u64 {
    10_000
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(30);
        Duration::from_millis(
            self.initial_backoff_ms
                .saturating_mul(factor)
                .min(self.max_backoff_ms),
        )
    }
}

/// `[archive.s3]`: options of `s3://` locations. Unset options keep the
/// defaults of the AWS SDK (region and credentials from the environment, the
/// endpoint from `AWS_ENDPOINT_URL`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// AWS region of the bucket.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, moto, Ceph, ...).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible stores need.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    /// Server-side encryption of written objects: `sse = "s3"` (SSE-S3),
    /// `sse = { kms = {} }` or `sse = { kms = { key_id = "arn:..." } }`;
    /// unset leaves it to the bucket's default encryption.
    #[serde(default)]
    pub sse: Option<Sse>,
    /// Objects at least this large are uploaded in parts.
    #[serde(default)]
    pub multipart_threshold_bytes: Option<u64>,
    /// Size of one part of a multipart upload (at least 5 MiB).
    #[serde(default)]
    pub part_size_bytes: Option<u64>,
    /// Accept parts below 5 MiB (test servers only).
    #[serde(default)]
    pub allow_small_parts: Option<bool>,
    /// Attempts of the SDK's own retry loop per request (the archive retries
    /// a failed upload as a whole on top, see `[archive.retry]`).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl ArchiveConfig {
    /// Checks what types cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.rolling.validate()?;
        if self.uploads.max_in_flight_bytes == 0 {
            return Err("archive.uploads.max_in_flight_bytes must be at least 1".into());
        }
        if self.uploads.max_queued_per_partition == 0 {
            return Err("archive.uploads.max_queued_per_partition must be at least 1".into());
        }
        if self.retry.max_attempts == 0 {
            return Err("archive.retry.max_attempts must be at least 1".into());
        }
        if let Some(u) = &self.uri {
            if u.trim().is_empty() {
                return Err("archive.uri is empty".into());
            }
        }
        Ok(())
    }
}

/// Parses `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"2d"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. \"30s\", \"10m\""))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => return Err(format!("invalid duration unit {other:?} in {text:?}")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\" or \"10m\", or whole seconds")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c: ArchiveConfig = toml::from_str(
            "[rolling]\nmax_rows = 10\nmax_age = \"2m\"\n[s3]\nforce_path_style = true\n",
        )
        .expect("valid");
        assert_eq!(c.rolling.max_rows, 10);
        assert_eq!(c.rolling.max_bytes, default_max_bytes());
        assert_eq!(c.rolling.max_age, Duration::from_secs(120));
        assert_eq!(c.s3.force_path_style, Some(true));
        let c: ArchiveConfig = toml::from_str("[rolling]\nmax_age = 90\n").expect("seconds");
        assert_eq!(c.rolling.max_age, Duration::from_secs(90));
        let e = toml::from_str::<ArchiveConfig>("[rolling]\nmax_row = 10\n")
            .expect_err("typo must fail");
        assert!(e.to_string().contains("max_row"), "{e}");
        let c: ArchiveConfig = toml::from_str("[rolling]\nmax_rows = 0\n").expect("parses");
        assert!(c.validate().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryPolicy::default();
        assert_eq!(r.backoff(1), Duration::from_millis(200));
        assert_eq!(r.backoff(2), Duration::from_millis(400));
        assert_eq!(r.backoff(3), Duration::from_millis(800));
        assert_eq!(r.backoff(40), Duration::from_millis(10_000));
    }
}
