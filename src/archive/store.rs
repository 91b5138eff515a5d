//! Where archive objects go: a local directory or an S3 bucket.
//!
//! Both stores publish an object only once it is complete and under its
//! final name: [`LocalStore`] writes a hidden temporary file in the target
//! directory, fsyncs it, renames it over the final name and fsyncs the
//! directory; [`super::s3::S3Store`] completes a `PutObject` or a
//! multipart upload. A reader (or a `**/*.parquet` glob) therefore never sees
//! a partial file. Keys are `/`-separated paths relative to the store's root.
//!
//! [`Store::put_with_retry`] retries errors the store calls retryable with
//! exponential backoff and stops at once on the others.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::config::{ArchiveConfig, RetryPolicy};
use super::s3::{S3Config, S3Store};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Local file system error.
    #[error("{op} {path}: {source}")]
    Local {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A key that cannot name an object (empty, absolute, `..`, hidden part).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// S3 error (boxed: it is large).
    #[error(transparent)]
    S3(Box<super::s3::StoreError>),
}

impl From<super::s3::StoreError> for StoreError {
    fn from(e: super::s3::StoreError) -> Self {
        StoreError::S3(Box::new(e))
    }
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Local { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            StoreError::InvalidKey(_) => false,
            StoreError::S3(e) => e.is_retryable(),
        }
    }
}

/// An archive store.
#[derive(Debug)]
pub enum Store {
    /// A local directory.
    Local(LocalStore),
    /// An S3 bucket and prefix.
    S3(S3Store),
}

impl Store {
    /// Opens the store of a location: `s3://bucket/prefix` (with the
    /// `[archive.s3]` options; the endpoint defaults to env
    /// `AWS_ENDPOINT_URL`), `file:///path`, or a local path.
    pub async fn open(location: &str, cfg: &ArchiveConfig) -> Result<Store, StoreError> {
        if location.starts_with("s3://") {
            let mut c = S3Config::from_uri(location)?;
            let o = &cfg.s3;
            c.region = o.region.clone().or(c.region);
            c.endpoint_url = o
                .endpoint_url
                .clone()
                .or_else(|| {
                    std::env::var("AWS_ENDPOINT_URL_S3")
                        .ok()
                        .filter(|v| !v.is_empty())
                })
                .or_else(|| {
                    std::env::var("AWS_ENDPOINT_URL")
                        .ok()
                        .filter(|v| !v.is_empty())
                })
                .or(c.endpoint_url);
            if let Some(v) = o.force_path_style {
                c.force_path_style = v;
            }
            if let Some(v) = &o.sse {
                c.sse = Some(v.clone());
            }
            if let Some(v) = o.multipart_threshold_bytes {
                c.multipart_threshold_bytes = v;
            }
            if let Some(v) = o.part_size_bytes {
                c.part_size_bytes = v;
            }
            if let Some(v) = o.allow_small_parts {
                c.allow_small_parts = v;
            }
            if let Some(v) = o.max_attempts {
                c.max_attempts = v;
            }
            return Ok(Store::S3(S3Store::new(c).await?));
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        Ok(Store::Local(LocalStore::new(path)))
    }

    /// Where the store writes, for messages.
    pub fn describe(&self) -> String {
        match self {
            Store::Local(l) => l.root().display().to_string(),
            Store::S3(s) => {
                let c = s.config();
                if c.prefix.is_empty() {
                    format!("s3://{}", c.bucket)
                } else {
                    format!("s3://{}/{}", c.bucket, c.prefix)
                }
            }
        }
    }

    /// Publishes `bytes` under `key`, replacing any object of that name.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        match self {
            Store::Local(l) => l.put(key, bytes).await,
            Store::S3(s) => Ok(s.put(key, bytes).await?),
        }
    }

    /// [`Store::put`], retrying retryable errors with exponential backoff.
    pub async fn put_with_retry(
        &self,
        key: &str,
        bytes: Bytes,
        retry: &RetryPolicy,
    ) -> Result<(), StoreError> {
        let mut attempt = 1;
        loop {
            match self.put(key, bytes.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < retry.max_attempts => {
                    let wait = retry.backoff(attempt);
                    tracing::warn!(key, attempt, ?wait, error = %e, "archive put failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the object `key`.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        match self {
            Store::Local(l) => l.get(key).await,
            Store::S3(s) => Ok(s.get(key).await?),
        }
    }

    /// Keys starting with `prefix`, sorted (temporary files excluded).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(l) => l.list(prefix).await,
            Store::S3(s) => Ok(s.list(prefix).await?),
        }
    }
}

/// Objects as files under a root directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: Arc<PathBuf>,
}

/// Distinguishes the temporary files of concurrent puts of one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of temporary files: hidden (a leading `.`), so Hive, Spark, Athena
/// and Trino skip them, and ending in `.tmp`, so `**/*.parquet` globs
/// (DuckDB) never match them.
pub const TMP_PREFIX: &str = ".tmp-";

fn local_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Local {
        op,
        path: path.display().to_string(),
        source,
    }
}

impl LocalStore {
    /// A store rooted at `root` (created on the first put). A relative root
    /// is resolved against the current directory now, so `demo-out/archive`
    /// names the same directory for the whole run (and in messages).
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        let root = root.into();
        // `absolute` fails only for an empty path or without a current
        // directory; the relative path then still works (see `dir_or_cwd`).
        let root = std::path::absolute(&root).unwrap_or(root);
        LocalStore {
            root: Arc::new(root),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key`, refusing keys that would leave the root or name a
    /// hidden file.
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let invalid = || StoreError::InvalidKey(key.to_owned());
        if key.is_empty() || key.starts_with('/') || key.contains('\\') {
            return Err(invalid());
        }
        let mut p = self.root.to_path_buf();
        for part in key.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.starts_with('.') {
                return Err(invalid());
            }
            p.push(part);
        }
        if p.components()
            .skip(self.root.components().count())
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(invalid());
        }
        Ok(p)
    }

    /// Writes `bytes` atomically under `key`: temporary file in the same
    /// directory, fsync, rename, fsync of the directory. On failure the
    /// temporary file is removed and any previous object is left untouched.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || put_blocking(&root, &path, &bytes))
            .await
            .map_err(|e| StoreError::Local {
                op: "write",
                path: key,
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Reads the object `key`.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key)?;
        tokio::fs::read(&path)
            .await
            .map_err(local_err("read", &path))
    }

    /// Keys under the root starting with `prefix`, sorted; hidden files
    /// (temporary files included) are not listed.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            if root.exists() {
                walk(&root, "", &mut keys)?;
            }
            keys.retain(|k| k.starts_with(&prefix));
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| StoreError::Local {
            op: "list",
            path: self.root.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(local_err("list", dir))? {
        let entry = entry.map_err(local_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type().map_err(local_err("list", dir))?;
        if ft.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else if ft.is_file() {
            out.push(key);
        }
    }
    Ok(())
}

/// fsync of a directory, so a rename or a new entry in it is durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir_or_cwd(dir))?.sync_all()
}

/// The parent of a one-component relative path (`demo-out`) is the empty
/// path, which names no file: it stands for the current directory.
fn dir_or_cwd(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

fn put_blocking(root: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = dir_or_cwd(path.parent().unwrap_or(root));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Create missing directories, making each new entry durable in its parent.
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = dir_or_cwd(p),
            None => break,
        }
    }
    fs::create_dir_all(dir).map_err(local_err("create directory", dir))?;
    for m in missing.iter().rev() {
        if let Some(parent) = m.parent() {
            sync_dir(parent).map_err(local_err("sync directory", parent))?;
        }
    }
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{name}.{}-{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Local {
            op: "write",
            path: path.display().to_string(),
            source,
        });
    }
    sync_dir(dir).map_err(local_err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-component relative directory in the current directory (the
    /// package root under `cargo test`), removed on drop.
    struct RelDir(PathBuf);
    impl RelDir {
        fn new(tag: &str) -> RelDir {
            RelDir(PathBuf::from(format!(
                "smsvoice-store-test-{tag}-{}",
                std::process::id()
            )))
        }
    }
    impl Drop for RelDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// `demo-out/archive` from a directory where `demo-out` does not exist
    /// yet: the parent of `demo-out` is the empty path, which once failed
    /// the directory sync ("sync directory : No such file or directory").
    #[tokio::test]
    async fn relative_root_whose_first_component_is_missing() {
        let rel = RelDir::new("relative");
        assert!(!rel.0.exists());
        let store = LocalStore::new(rel.0.join("archive"));
        assert!(store.root().is_absolute(), "{}", store.root().display());
        let key = "delivery_events/event_date=2025-11-01/channel=SMS/a.parquet";
        store
            .put(key, Bytes::from_static(b"x"))
            .await
            .expect("put under a relative root");
        let on_disk = rel.0.join("archive").join(key);
        assert_eq!(fs::read(&on_disk).expect("file"), b"x");
        assert_eq!(store.get(key).await.expect("get"), b"x");
        assert_eq!(store.list("").await.expect("list"), vec![key.to_owned()]);
    }

    /// The blocking writer itself accepts a relative path (the store resolves
    /// its root first, but the empty parent must never reach `File::open`).
    #[test]
    fn put_blocking_with_a_relative_path() {
        let rel = RelDir::new("blocking");
        let path = rel.0.join("t").join("f.parquet");
        put_blocking(&rel.0, &path, b"y").expect("relative put");
        assert_eq!(fs::read(&path).expect("file"), b"y");
        assert_eq!(dir_or_cwd(Path::new("")), Path::new("."));
        assert_eq!(dir_or_cwd(Path::new("a")), Path::new("a"));
    }

    #[test]
    fn keys_cannot_escape_or_hide() {
        let s = LocalStore::new("/tmp/x");
        for bad in ["", "/a", "a/../b", "a//b", ".tmp-a", "a/.b", "a\\b", "./a"] {
            assert!(s.path_of(bad).is_err(), "{bad}");
        }
        assert_eq!(
            s.path_of("t/d=1/f.parquet").expect("valid"),
            PathBuf::from("/tmp/x/t/d=1/f.parquet")
        );
    }
}
