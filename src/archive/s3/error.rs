//! What an S3 request failed with, by class: configuration, access,
//! expired credentials, throttling, transient (retryable) or other.

use super::*;

/// Why an operation of the store failed.
///
/// [`StoreError::is_retryable`] tells whether trying again later may succeed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration or an argument is invalid (not retryable).
    #[error("invalid S3 store configuration: {0}")]
    Config(String),
    /// The request was refused for lack of permission or bad credentials:
    /// `AccessDenied`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`, HTTP 403
    /// (not retryable).
    #[error("S3 {operation} on s3://{bucket}/{key}: access denied ({code}): {message}")]
    AccessDenied {
        /// S3 operation, such as `PutObject`.
        operation: &'static str,
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed (empty for bucket-level operations).
        key: String,
        /// S3 error code.
        code: String,
        /// Detail.
        message: String,
    },
    /// The bucket does not exist (not retryable).
    #[error("S3 {operation}: bucket `{bucket}` does not exist")]
    NoSuchBucket {
        /// S3 operation.
        operation: &'static str,
        /// Bucket addressed.
        bucket: String,
    },
    /// No object under the key (not retryable).
    #[error("no S3 object at s3://{bucket}/{key}")]
    NotFound {
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed.
        key: String,
    },
    /// No credentials could be found, or their configuration is invalid
    /// (not retryable).
    #[error("S3 {operation}: no usable AWS credentials: {message}")]
    NoCredentials {
        /// S3 operation.
        operation: &'static str,
        /// Detail.
        message: String,
    },
    /// A credentials provider failed for a while (an instance-metadata
    /// timeout, an expired session token the chain will refresh) (retryable).
    #[error("S3 {operation}: AWS credentials unavailable: {message}")]
    CredentialsUnavailable {
        /// S3 operation.
        operation: &'static str,
        /// Detail.
        message: String,
    },
    /// The request or the connection timed out (retryable).
    #[error("S3 {operation} on s3://{bucket}/{key} timed out: {message}")]
    Timeout {
        /// S3 operation.
        operation: &'static str,
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed.
        key: String,
        /// Detail.
        message: String,
    },
    /// The connection failed or was cut, or the response was unreadable
    /// (retryable).
    #[error("S3 {operation} on s3://{bucket}/{key}: network error: {message}")]
    Network {
        /// S3 operation.
        operation: &'static str,
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed.
        key: String,
        /// Detail.
        message: String,
    },
    /// S3 asked to slow down: `SlowDown`, `Throttling`, HTTP 429 (retryable).
    #[error("S3 {operation} on s3://{bucket}/{key} throttled ({code}): {message}")]
    Throttled {
        /// S3 operation.
        operation: &'static str,
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed.
        key: String,
        /// S3 error code.
        code: String,
        /// Detail.
        message: String,
    },
    /// The service failed on its side: HTTP 5xx, `InternalError`,
    /// `RequestTimeout`, `RequestTimeTooSkewed` (retryable).
    #[error("S3 {operation} on s3://{bucket}/{key}: server error {status} ({code}): {message}")]
    Server {
        /// S3 operation.
        operation: &'static str,
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed.
        key: String,
        /// HTTP status.
        status: u16,
        /// S3 error code.
        code: String,
        /// Detail.
        message: String,
    },
    /// S3 refused the request for another reason: any other 4xx such as
    /// `InvalidArgument`, `EntityTooSmall`, `NoSuchUpload`, or a redirect to
    /// another region (not retryable).
    #[error("S3 {operation} on s3://{bucket}/{key} refused: {status} ({code}): {message}")]
    Rejected {
        /// S3 operation.
        operation: &'static str,
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed.
        key: String,
        /// HTTP status.
        status: u16,
        /// S3 error code.
        code: String,
        /// Detail.
        message: String,
    },
    /// The request could not be built from the arguments (not retryable).
    #[error("S3 {operation}: request could not be built: {message}")]
    Request {
        /// S3 operation.
        operation: &'static str,
        /// Detail.
        message: String,
    },
    /// S3 answered successfully but without a field the store needs, such as
    /// an upload id or an ETag (retryable: a new try starts afresh).
    #[error("S3 {operation} on s3://{bucket}/{key}: malformed answer: {message}")]
    Malformed {
        /// S3 operation.
        operation: &'static str,
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed.
        key: String,
        /// Detail.
        message: String,
    },
    /// A part upload task ended without a result (panicked or cancelled)
    /// (retryable).
    #[error("S3 part upload task of s3://{bucket}/{key} failed: {message}")]
    Task {
        /// Bucket addressed.
        bucket: String,
        /// Full key addressed.
        key: String,
        /// Detail.
        message: String,
    },
}

impl StoreError {
    /// Whether trying the same operation again later may succeed: network
    /// failures, timeouts, 5xx, throttling and passing credential troubles
    /// are retryable; access denied, a missing bucket or object, bad
    /// configuration and other refusals are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::CredentialsUnavailable { .. }
            | StoreError::Timeout { .. }
            | StoreError::Network { .. }
            | StoreError::Throttled { .. }
            | StoreError::Server { .. }
            | StoreError::Malformed { .. }
            | StoreError::Task { .. } => true,
            StoreError::Config(_)
            | StoreError::AccessDenied { .. }
            | StoreError::NoSuchBucket { .. }
            | StoreError::NotFound { .. }
            | StoreError::NoCredentials { .. }
            | StoreError::Rejected { .. }
            | StoreError::Request { .. } => false,
        }
    }
}

impl StoreError {
    /// Whether the store refuses this process for good, so retrying or
    /// restarting cannot help and the process should stop and say so:
    /// missing or rejected credentials (`NoCredentials`, `AccessDenied`:
    /// `InvalidAccessKeyId`, `SignatureDoesNotMatch`, HTTP 403), a bucket that
    /// does not exist, an invalid store configuration. Never true for a
    /// [retryable](StoreError::is_retryable) error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::Config(_)
                | StoreError::AccessDenied { .. }
                | StoreError::NoSuchBucket { .. }
                | StoreError::NoCredentials { .. }
        )
    }
}

pub(super) const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "PriorRequestNotComplete",
];

pub(super) const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestTimeTooSkewed",
    "OperationAborted",
];

pub(super) const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccountProblem",
    "AllAccessDisabled",
    "InvalidSecurity",
    "InvalidToken",
    "InvalidObjectState",
];

pub(super) const EXPIRED_CODES: &[&str] =
    &["ExpiredToken", "TokenRefreshRequired", "RequestExpired"];

/// Finds an error of type `T` in the `source()` chain of `err`.
pub(super) fn find_in_chain<'a, T: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// Turns an SDK error into a [`StoreError`].
pub(super) fn classify<E>(
    operation: &'static str,
    bucket: &str,
    key: &str,
    err: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let message = DisplayErrorContext(&err).to_string();
    let bucket = bucket.to_owned();
    let key = key.to_owned();
    match &err {
        SdkError::ConstructionFailure(_) => StoreError::Request { operation, message },
        SdkError::TimeoutError(_) => StoreError::Timeout {
            operation,
            bucket,
            key,
            message,
        },
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                return StoreError::Timeout {
                    operation,
                    bucket,
                    key,
                    message,
                };
            }
            if failure.is_user() {
                return StoreError::Request { operation, message };
            }
            if let Some(creds) = find_in_chain::<CredentialsError>(&err) {
                return match creds {
                    CredentialsError::CredentialsNotLoaded(_)
                    | CredentialsError::InvalidConfiguration(_) => {
                        StoreError::NoCredentials { operation, message }
                    }
                    _ => StoreError::CredentialsUnavailable { operation, message },
                };
            }
            StoreError::Network {
                operation,
                bucket,
                key,
                message,
            }
        }
        SdkError::ResponseError(_) => StoreError::Network {
            operation,
            bucket,
            key,
            message,
        },
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("").to_owned();
            let detail = service.err().message().unwrap_or("").to_owned();
            let message = if detail.is_empty() { message } else { detail };
            classify_service(operation, bucket, key, status, code, message)
        }
        _ => StoreError::Network {
            operation,
            bucket,
            key,
            message,
        },
    }
}

/// Classifies an error answer of S3 by its code and HTTP status.
pub(super) fn classify_service(
    operation: &'static str,
    bucket: String,
    key: String,
    status: u16,
    code: String,
    message: String,
) -> StoreError {
    let c = code.as_str();
    if c == "NoSuchBucket" {
        StoreError::NoSuchBucket { operation, bucket }
    } else if c == "NoSuchKey" || (c.is_empty() && status == 404 && !key.is_empty()) {
        StoreError::NotFound { bucket, key }
    } else if EXPIRED_CODES.contains(&c) {
        StoreError::CredentialsUnavailable { operation, message }
    } else if ACCESS_CODES.contains(&c) || (c.is_empty() && status == 403) {
        StoreError::AccessDenied {
            operation,
            bucket,
            key,
            code,
            message,
        }
    } else if THROTTLING_CODES.contains(&c) || status == 429 {
        StoreError::Throttled {
            operation,
            bucket,
            key,
            code,
            message,
        }
    } else if TRANSIENT_CODES.contains(&c) || status >= 500 {
        StoreError::Server {
            operation,
            bucket,
            key,
            status,
            code,
            message,
        }
    } else {
        StoreError::Rejected {
            operation,
            bucket,
            key,
            status,
            code,
            message,
        }
    }
}
