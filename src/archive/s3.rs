//! S3 store of the Parquet archive.
//!
//! [`S3Store`] publishes whole objects under a fixed `s3://bucket/prefix` and
//! reads them back. An object becomes visible only once it is complete:
//! objects below [`S3Config::multipart_threshold_bytes`] go up in one
//! `PutObject`; larger ones go through a multipart upload that is completed
//! only after every part has been stored, and aborted (best effort) on any
//! failure, so neither a partial object nor orphan parts stay behind.
//!
//! Every request is retried by the SDK with exponential backoff and jitter
//! up to [`S3Config::max_attempts`] attempts; a failed [`S3Store::put`] as a
//! whole is meant to be retried by the caller, which
//! [`StoreError::is_retryable`] helps decide. Object names are deterministic,
//! so a replayed put simply overwrites the same object.
//!
//! Credentials come from the standard AWS chain (environment, shared profile
//! files, web identity, ECS/EC2 instance metadata, ...). As a backstop for
//! uploads that were cut off without their abort getting through (a killed
//! process, a lost network), give the bucket a lifecycle rule with
//! `AbortIncompleteMultipartUpload`; [`S3Store::list_open_uploads`] shows
//! what is open under the prefix.

use std::error::Error as StdError;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use serde::Deserialize;

mod config;
mod error;

pub use config::*;
pub use error::*;

/// Parts of one multipart upload sent at the same time.
const PART_CONCURRENCY: usize = 4;
/// Time allowed to open a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to wait for the response once a request has been sent.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound of one attempt of one request (a stuck transfer ends here
/// and is retried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// An S3 bucket and prefix holding the archive's objects.
///
/// Cheap to clone; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    cfg: S3Config,
}

impl S3Store {
    /// Builds a store from `cfg`, loading credentials and the region through
    /// the standard AWS chain. Fails only on invalid settings; credentials
    /// are resolved (and their absence reported) at the first request.
    pub async fn new(cfg: S3Config) -> Result<S3Store, StoreError> {
        let mut cfg = cfg;
        cfg.prefix = normalize_prefix(&cfg.prefix);
        cfg.validate()?;

        let region = RegionProviderChain::first_try(cfg.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new(DEFAULT_REGION));
        let retry = RetryConfig::standard().with_max_attempts(cfg.max_attempts);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(retry)
            .timeout_config(timeouts)
            .load()
            .await;

        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
        if let Some(url) = &cfg.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        let client = Client::from_conf(builder.build());
        Ok(S3Store { client, cfg })
    }

    /// The settings the store runs with (prefix normalized).
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// The full S3 key of `key` (relative to the store prefix).
    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        if key.is_empty() || key.starts_with('/') {
            return Err(StoreError::Config(format!(
                "object key `{key}` must be non-empty and relative (no leading `/`)"
            )));
        }
        Ok(self.join(key))
    }

    fn join(&self, rel: &str) -> String {
        if self.cfg.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{}", self.cfg.prefix, rel)
        }
    }

    /// The listing prefix of everything in the store.
    fn root(&self) -> String {
        if self.cfg.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.cfg.prefix)
        }
    }

    fn relative(&self, full: &str) -> Option<String> {
        full.strip_prefix(&self.root()).map(str::to_owned)
    }

    /// Publishes `bytes` at `prefix/key`, replacing any object of that key.
    ///
    /// The object becomes visible only when complete: a single `PutObject`
    /// below [`S3Config::multipart_threshold_bytes`], else
    /// `CreateMultipartUpload`, `UploadPart` (a few parts at a time) and
    /// `CompleteMultipartUpload`. On any failure of a multipart upload it is
    /// aborted (best effort; also when this future is dropped midway) so no
    /// partial object or orphan parts remain, and the error is returned; the
    /// caller retries the whole put. Each part carries a CRC32 checksum that
    /// S3 verifies.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        let len = bytes.len() as u64;
        if len < self.cfg.multipart_threshold_bytes || bytes.is_empty() {
            self.put_single(&full, bytes).await
        } else {
            self.put_multipart(&full, bytes).await
        }
    }

    async fn put_single(&self, full: &str, bytes: Bytes) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(full)
            .content_length(bytes.len() as i64)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(bytes));
        match &self.cfg.sse {
            Some(Sse::S3) => req = req.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Sse::Kms { key_id }) => {
                req = req
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(key_id.clone());
            }
            None => {}
        }
        req.send()
            .await
            .map_err(|e| classify("PutObject", &self.cfg.bucket, full, e))?;
        Ok(())
    }

    async fn put_multipart(&self, full: &str, bytes: Bytes) -> Result<(), StoreError> {
        let bucket = self.cfg.bucket.as_str();
        let len = bytes.len() as u64;
        let part_size = part_size_for(self.cfg.part_size_bytes, len);
        if part_size > MAX_PART_SIZE_BYTES {
            return Err(StoreError::Config(format!(
                "object of {len} bytes is larger than S3 allows in one upload"
            )));
        }

        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(full)
            .checksum_algorithm(ChecksumAlgorithm::Crc32);
        match &self.cfg.sse {
            Some(Sse::S3) => create = create.server_side_encryption(ServerSideEncryption::Aes256),
            Some(Sse::Kms { key_id }) => {
                create = create
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(key_id.clone());
            }
            None => {}
        }
        let created = create
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", bucket, full, e))?;
        let upload_id = created
            .upload_id()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| StoreError::Malformed {
                operation: "CreateMultipartUpload",
                bucket: bucket.to_owned(),
                key: full.to_owned(),
                message: "no upload id in the answer".into(),
            })?
            .to_owned();

        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: bucket.to_owned(),
            key: full.to_owned(),
            upload_id: upload_id.clone(),
            armed: true,
        };

        let result = self
            .upload_parts_and_complete(full, &upload_id, bytes, part_size)
            .await;
        match result {
            Ok(()) => {
                guard.armed = false;
                Ok(())
            }
            Err(err) => {
                // The guard stays armed while aborting: if this future is
                // dropped meanwhile, the guard aborts in the background.
                abort_upload(&self.client, bucket, full, &upload_id).await;
                guard.armed = false;
                Err(err)
            }
        }
    }

    async fn upload_parts_and_complete(
        &self,
        full: &str,
        upload_id: &str,
        bytes: Bytes,
        part_size: u64,
    ) -> Result<(), StoreError> {
        let bucket = self.cfg.bucket.as_str();
        let len = bytes.len();
        // part_size <= MAX_PART_SIZE_BYTES (5 GiB), which fits usize on
        // 64-bit targets; saturate elsewhere (the object is smaller anyway).
        let step = usize::try_from(part_size).unwrap_or(usize::MAX);
        let mut ranges = Vec::new();
        let mut start = 0usize;
        while start < len {
            let end = start.saturating_add(step).min(len);
            ranges.push((start, end));
            start = end;
        }

        let mut pending = ranges.into_iter().enumerate();
        let mut tasks = tokio::task::JoinSet::new();
        let mut parts: Vec<CompletedPart> = Vec::new();
        let mut first_err: Option<StoreError> = None;

        loop {
            while first_err.is_none() && tasks.len() < PART_CONCURRENCY {
                let Some((index, (start, end))) = pending.next() else {
                    break;
                };
                let part_number = match i32::try_from(index + 1) {
                    Ok(n) => n,
                    Err(_) => {
                        first_err = Some(StoreError::Config("too many parts".into()));
                        break;
                    }
                };
                let client = self.client.clone();
                let body = bytes.slice(start..end);
                let bucket = bucket.to_owned();
                let key = full.to_owned();
                let upload_id = upload_id.to_owned();
                tasks.spawn(async move {
                    upload_part(&client, &bucket, &key, &upload_id, part_number, body).await
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let outcome = joined.unwrap_or_else(|e| {
                Err(StoreError::Task {
                    bucket: bucket.to_owned(),
                    key: full.to_owned(),
                    message: e.to_string(),
                })
            });
            match outcome {
                Ok(part) => parts.push(part),
                Err(err) => {
                    if first_err.is_none() {
                        first_err = Some(err);
                    }
                    // Stop the other parts and wait until they are gone, so
                    // the abort that follows is not raced by a late part.
                    tasks.shutdown().await;
                }
            }
        }
        if let Some(err) = first_err {
            return Err(err);
        }

        parts.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CompleteMultipartUpload", bucket, full, e))?;
        Ok(())
    }

    /// Reads the whole object at `prefix/key`;
    /// [`StoreError::NotFound`] when there is none.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let full = self.full_key(key)?;
        let bucket = self.cfg.bucket.as_str();
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify("GetObject", bucket, &full, e))?;
        let data = out.body.collect().await.map_err(|e| StoreError::Network {
            operation: "GetObject",
            bucket: bucket.to_owned(),
            key: full.clone(),
            message: DisplayErrorContext(&e).to_string(),
        })?;
        Ok(data.into_bytes().to_vec())
    }

    /// Keys under `prefix/<prefix>` (a plain string prefix, not only whole
    /// path segments; `""` lists the whole store), relative to the store
    /// prefix, over all pages, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let bucket = self.cfg.bucket.as_str();
        let full_prefix = format!("{}{}", self.root(), prefix.trim_start_matches('/'));
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.client.list_objects_v2().bucket(bucket);
            if !full_prefix.is_empty() {
                req = req.prefix(&full_prefix);
            }
            let out = req
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify("ListObjectsV2", bucket, &full_prefix, e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| self.relative(k)),
            );
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) && !next.is_empty() => {
                    token = Some(next.to_owned());
                }
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Keys (relative to the store prefix) of multipart uploads still open
    /// under the store prefix, one entry per open upload, sorted. Empty when
    /// every upload was completed or aborted.
    pub async fn list_open_uploads(&self) -> Result<Vec<String>, StoreError> {
        let bucket = self.cfg.bucket.as_str();
        let root = self.root();
        let mut keys = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let mut req = self.client.list_multipart_uploads().bucket(bucket);
            if !root.is_empty() {
                req = req.prefix(&root);
            }
            let out = req
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|e| classify("ListMultipartUploads", bucket, &root, e))?;
            keys.extend(
                out.uploads()
                    .iter()
                    .filter_map(|u| u.key())
                    .filter_map(|k| self.relative(k)),
            );
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            upload_marker = out.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && upload_marker.is_none() {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// Part size used for an object of `len` bytes: the configured one, raised
/// so that at most [`MAX_PARTS`] parts are needed.
fn part_size_for(configured: u64, len: u64) -> u64 {
    configured.max(len.div_ceil(MAX_PARTS))
}

async fn upload_part(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    part_number: i32,
    body: Bytes,
) -> Result<CompletedPart, StoreError> {
    let out = client
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .part_number(part_number)
        .content_length(body.len() as i64)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| classify("UploadPart", bucket, key, e))?;
    let e_tag = out.e_tag().ok_or_else(|| StoreError::Malformed {
        operation: "UploadPart",
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        message: format!("no ETag for part {part_number}"),
    })?;
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .e_tag(e_tag)
        .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
        .build())
}

/// Aborts a multipart upload, best effort: failures are only logged, as the
/// caller is already returning another error.
async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let res = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(e) = res {
        let err = classify("AbortMultipartUpload", bucket, key, e);
        // An upload that is already gone needs no abort.
        if !matches!(&err, StoreError::Rejected { code, .. } if code == "NoSuchUpload") {
            tracing::warn!(
                bucket,
                key,
                upload_id,
                error = %err,
                "could not abort multipart upload; its parts stay until aborted \
                 (a bucket lifecycle rule with AbortIncompleteMultipartUpload removes them)"
            );
        }
    }
}

/// Aborts the upload in the background if the put future is dropped before
/// it finished (for example by a caller's timeout).
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let bucket = std::mem::take(&mut self.bucket);
            let key = std::mem::take(&mut self.key);
            let upload_id = std::mem::take(&mut self.upload_id);
            handle.spawn(async move {
                abort_upload(&client, &bucket, &key, &upload_id).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_uri_splits_bucket_and_prefix() {
        let c = S3Config::from_uri("s3://my-bucket/some/prefix/").expect("must succeed");
        assert_eq!(c.bucket, "my-bucket");
        assert_eq!(c.prefix, "some/prefix");
        assert_eq!(c.multipart_threshold_bytes, 16 * MIB);
        assert_eq!(c.part_size_bytes, 8 * MIB);
        assert_eq!(c.max_attempts, 5);
        assert!(!c.force_path_style);
        assert_eq!(
            S3Config::from_uri("s3://b").expect("must succeed").prefix,
            ""
        );
        assert_eq!(
            S3Config::from_uri("s3://b/").expect("must succeed").prefix,
            ""
        );
        assert_eq!(
            S3Config::from_uri("s3://b//x//")
                .expect("must succeed")
                .prefix,
            "x"
        );
        for bad in ["http://b/x", "s3://", "s3:///x", "b/x", "s3://b/x?y=1"] {
            let err = S3Config::from_uri(bad).expect_err("must fail");
            assert!(matches!(err, StoreError::Config(_)), "{bad}: {err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn toml_defaults_and_sse_forms() {
        let c: S3Config = toml::from_str("bucket = \"b\"").expect("must succeed");
        assert_eq!(c, S3Config::from_uri("s3://b").expect("must succeed"));

        let c: S3Config = toml::from_str(
            r#"
            bucket = "b"
            prefix = "archive"
            region = "eu-west-1"
            endpoint_url = "http://127.0.0.1:9000"
            force_path_style = true
            sse = "s3"
            multipart_threshold_bytes = 100
            part_size_bytes = 10
            allow_small_parts = true
            max_attempts = 2
            "#,
        )
        .expect("must succeed");
        assert_eq!(c.sse, Some(Sse::S3));
        assert!(c.validate().is_ok());

        let c: S3Config =
            toml::from_str("bucket = \"b\"\nsse = { kms = {} }").expect("must succeed");
        assert_eq!(c.sse, Some(Sse::Kms { key_id: None }));
        let c: S3Config =
            toml::from_str("bucket = \"b\"\nsse = { kms = { key_id = \"alias/x\" } }")
                .expect("must succeed");
        assert_eq!(
            c.sse,
            Some(Sse::Kms {
                key_id: Some("alias/x".into())
            })
        );
        assert!(toml::from_str::<S3Config>("bucket = \"b\"\nbogus = 1").is_err());
        assert!(toml::from_str::<S3Config>("bucket = \"b\"\nsse = \"aes\"").is_err());
        assert!(
            toml::from_str::<S3Config>("bucket = \"b\"\nsse = { kms = { key = \"x\" } }").is_err()
        );
    }

    #[test]
    fn validate_refuses_bad_settings() {
        let base = S3Config::from_uri("s3://b/p").expect("must succeed");
        assert!(base.validate().is_ok());
        let small = S3Config {
            part_size_bytes: MIB,
            ..base.clone()
        };
        assert!(small.validate().is_err());
        assert!(S3Config {
            allow_small_parts: true,
            ..small
        }
        .validate()
        .is_ok());
        assert!(S3Config {
            max_attempts: 0,
            ..base.clone()
        }
        .validate()
        .is_err());
        assert!(S3Config {
            part_size_bytes: MAX_PART_SIZE_BYTES + 1,
            ..base.clone()
        }
        .validate()
        .is_err());
        assert!(S3Config {
            endpoint_url: Some("127.0.0.1:9000".into()),
            ..base
        }
        .validate()
        .is_err());
    }

    #[test]
    fn service_errors_are_classified() {
        let f = |status: u16, code: &str| {
            classify_service(
                "PutObject",
                "b".into(),
                "k".into(),
                status,
                code.into(),
                String::new(),
            )
        };
        assert!(matches!(
            f(403, "AccessDenied"),
            StoreError::AccessDenied { .. }
        ));
        assert!(matches!(f(403, ""), StoreError::AccessDenied { .. }));
        assert!(matches!(
            f(404, "NoSuchBucket"),
            StoreError::NoSuchBucket { .. }
        ));
        assert!(matches!(f(404, "NoSuchKey"), StoreError::NotFound { .. }));
        assert!(matches!(f(503, "SlowDown"), StoreError::Throttled { .. }));
        assert!(matches!(f(429, ""), StoreError::Throttled { .. }));
        assert!(matches!(f(500, "InternalError"), StoreError::Server { .. }));
        assert!(matches!(
            f(400, "RequestTimeout"),
            StoreError::Server { .. }
        ));
        assert!(matches!(
            f(400, "ExpiredToken"),
            StoreError::CredentialsUnavailable { .. }
        ));
        assert!(matches!(
            f(400, "EntityTooSmall"),
            StoreError::Rejected { .. }
        ));
        assert!(matches!(
            f(301, "PermanentRedirect"),
            StoreError::Rejected { .. }
        ));
        for (status, code, retryable) in [
            (403, "AccessDenied", false),
            (404, "NoSuchBucket", false),
            (404, "NoSuchKey", false),
            (503, "SlowDown", true),
            (500, "InternalError", true),
            (502, "", true),
            (400, "InvalidArgument", false),
        ] {
            assert_eq!(f(status, code).is_retryable(), retryable, "{status} {code}");
        }
    }

    #[test]
    fn dispatch_failures_are_classified() {
        use aws_sdk_s3::error::ConnectorError;
        use aws_sdk_s3::operation::put_object::PutObjectError;

        let mk = |e: ConnectorError| -> SdkError<PutObjectError, HttpResponse> {
            SdkError::dispatch_failure(e)
        };
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let err = classify("PutObject", "b", "k", mk(ConnectorError::io(Box::new(io))));
        assert!(matches!(err, StoreError::Network { .. }) && err.is_retryable());

        let t = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        let err = classify(
            "PutObject",
            "b",
            "k",
            mk(ConnectorError::timeout(Box::new(t))),
        );
        assert!(matches!(err, StoreError::Timeout { .. }) && err.is_retryable());

        let missing = CredentialsError::not_loaded("no provider had credentials");
        let err = classify(
            "PutObject",
            "b",
            "k",
            mk(ConnectorError::other(Box::new(missing), None)),
        );
        assert!(matches!(err, StoreError::NoCredentials { .. }) && !err.is_retryable());

        let slow = CredentialsError::provider_timed_out(Duration::from_secs(1));
        let err = classify(
            "PutObject",
            "b",
            "k",
            mk(ConnectorError::other(Box::new(slow), None)),
        );
        assert!(matches!(err, StoreError::CredentialsUnavailable { .. }) && err.is_retryable());
    }

    #[test]
    fn part_size_grows_to_fit_max_parts() {
        assert_eq!(part_size_for(8 * MIB, 100 * MIB), 8 * MIB);
        assert_eq!(part_size_for(8 * MIB, 80_000 * MIB), 8 * MIB);
        let big = 200_000 * MIB;
        let size = part_size_for(8 * MIB, big);
        assert!(size > 8 * MIB && size * MAX_PARTS >= big);
    }
}
