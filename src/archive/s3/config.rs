//! `[archive.s3]`: the bucket, prefix, region, endpoint, encryption and
//! multipart settings of the S3 store, with S3's own limits.

use super::*;

/// One mebibyte.
pub(super) const MIB: u64 = 1024 * 1024;
/// Default of [`S3Config::multipart_threshold_bytes`]: 16 MiB.
pub const DEFAULT_MULTIPART_THRESHOLD_BYTES: u64 = 16 * MIB;
/// Default of [`S3Config::part_size_bytes`]: 8 MiB.
pub const DEFAULT_PART_SIZE_BYTES: u64 = 8 * MIB;
/// Default of [`S3Config::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Region used when neither the configuration nor the environment names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Smallest part S3 accepts (all parts but the last).
pub const MIN_PART_SIZE_BYTES: u64 = 5 * MIB;
/// Largest part S3 accepts.
pub const MAX_PART_SIZE_BYTES: u64 = 5 * 1024 * MIB;
/// Most parts one multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;

/// Server-side encryption asked of S3 for every object written.
///
/// In TOML: `sse = "s3"` (SSE-S3, `AES256`), `sse = { kms = {} }` (SSE-KMS
/// with the account's default `aws/s3` key) or
/// `sse = { kms = { key_id = "arn:aws:kms:..." } }` (SSE-KMS with that key).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Sse {
    /// SSE-S3: keys managed by S3 (`x-amz-server-side-encryption: AES256`).
    S3,
    /// SSE-KMS (`x-amz-server-side-encryption: aws:kms`).
    Kms {
        /// KMS key id, alias or ARN; `None` uses the account's default
        /// `aws/s3` key.
        #[serde(default)]
        key_id: Option<String>,
    },
}

/// Settings of an S3 archive target.
///
/// Deserialized from the archive's TOML section; unknown fields are refused.
/// Only `bucket` is required; [`S3Config::from_uri`] builds one with every
/// other field at its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name (the host part of `s3://bucket/prefix`).
    pub bucket: String,
    /// Key prefix every object of the store lives under, without leading or
    /// trailing `/`; empty for the bucket's root. Keys passed to the store are
    /// relative to it (`prefix/key`).
    #[serde(default)]
    pub prefix: String,
    /// AWS region. `None` uses the standard chain (`AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, the profile, instance metadata) and falls back to
    /// `us-east-1` when nothing is set.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (for example
    /// `http://127.0.0.1:9000`); `None` for AWS S3 itself.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Address buckets as `endpoint/bucket/key` instead of
    /// `bucket.endpoint/key`; most S3-compatible stores need this.
    /// Default `false`.
    #[serde(default)]
    pub force_path_style: bool,
    /// Server-side encryption of written objects; `None` leaves it to the
    /// bucket's default encryption.
    #[serde(default)]
    pub sse: Option<Sse>,
    /// Objects of at least this many bytes go up as multipart uploads;
    /// smaller ones in one `PutObject`. Default 16 MiB.
    #[serde(default = "default_multipart_threshold_bytes")]
    pub multipart_threshold_bytes: u64,
    /// Size of each part of a multipart upload (the last one may be
    /// smaller). At least 5 MiB unless `allow_small_parts` is set, at most
    /// 5 GiB; raised automatically when an object would otherwise need more
    /// than 10,000 parts. Default 8 MiB.
    #[serde(default = "default_part_size_bytes")]
    pub part_size_bytes: u64,
    /// Accept `part_size_bytes` below S3's 5 MiB minimum. Only for test
    /// servers configured to take small parts; AWS S3 refuses such uploads.
    /// Default `false`.
    #[serde(default)]
    pub allow_small_parts: bool,
    /// Attempts of each request, the first included, with exponential
    /// backoff between them (network errors, timeouts, 5xx, throttling).
    /// At least 1. Default 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

pub(super) fn default_multipart_threshold_bytes() -> u64 {
    DEFAULT_MULTIPART_THRESHOLD_BYTES
}

pub(super) fn default_part_size_bytes() -> u64 {
    DEFAULT_PART_SIZE_BYTES
}

pub(super) fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl S3Config {
    /// A configuration for `s3://bucket/some/prefix` with every other field
    /// at its default. The prefix loses its leading and trailing `/`; it may
    /// be empty (`s3://bucket` or `s3://bucket/`).
    pub fn from_uri(uri: &str) -> Result<S3Config, StoreError> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::Config(format!("`{uri}` is not an s3:// URI")))?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, prefix),
            None => (rest, ""),
        };
        validate_bucket(bucket)?;
        if prefix.contains(['?', '#']) {
            return Err(StoreError::Config(format!(
                "`{uri}`: query strings and fragments are not supported"
            )));
        }
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix: normalize_prefix(prefix),
            region: None,
            endpoint_url: None,
            force_path_style: false,
            sse: None,
            multipart_threshold_bytes: DEFAULT_MULTIPART_THRESHOLD_BYTES,
            part_size_bytes: DEFAULT_PART_SIZE_BYTES,
            allow_small_parts: false,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        })
    }

    /// Checks the settings S3 would refuse later, or that make no sense.
    pub(super) fn validate(&self) -> Result<(), StoreError> {
        validate_bucket(&self.bucket)?;
        if self.max_attempts == 0 {
            return Err(StoreError::Config("max_attempts must be at least 1".into()));
        }
        if self.part_size_bytes == 0 {
            return Err(StoreError::Config(
                "part_size_bytes must be positive".into(),
            ));
        }
        if self.part_size_bytes < MIN_PART_SIZE_BYTES && !self.allow_small_parts {
            return Err(StoreError::Config(format!(
                "part_size_bytes {} is below S3's minimum of {MIN_PART_SIZE_BYTES} \
                 (set allow_small_parts only for test servers)",
                self.part_size_bytes
            )));
        }
        if self.part_size_bytes > MAX_PART_SIZE_BYTES {
            return Err(StoreError::Config(format!(
                "part_size_bytes {} is above S3's maximum of {MAX_PART_SIZE_BYTES}",
                self.part_size_bytes
            )));
        }
        if let Some(region) = &self.region {
            if region.trim().is_empty() {
                return Err(StoreError::Config("region must not be empty".into()));
            }
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(StoreError::Config(format!(
                    "endpoint_url `{url}` must start with http:// or https://"
                )));
            }
        }
        if let Some(Sse::Kms { key_id: Some(id) }) = &self.sse {
            if id.trim().is_empty() {
                return Err(StoreError::Config(
                    "sse kms key_id must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}

pub(super) fn validate_bucket(bucket: &str) -> Result<(), StoreError> {
    if bucket.is_empty() {
        return Err(StoreError::Config("bucket name is empty".into()));
    }
    if bucket.contains(['/', '?', '#']) || bucket.chars().any(char::is_whitespace) {
        return Err(StoreError::Config(format!(
            "invalid bucket name `{bucket}`"
        )));
    }
    Ok(())
}

pub(super) fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_matches('/').to_owned()
}
