//! Integration tests of the archive's S3 store against a real S3-compatible
//! HTTP server (moto, started per test on 127.0.0.1; install it with
//! `scripts/install-test-tools.sh`).

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::types::ServerSideEncryption;
use bytes::Bytes;
use smsvoice::archive::s3::{S3Config, S3Store, Sse, StoreError};
use support::s3_server::{create_bucket, test_client, S3Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;
/// Bound of each test.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound")
}

/// A store on `endpoint` under `s3://bucket/prefix`, with few attempts so
/// failure paths stay quick; `tweak` adjusts the rest.
async fn store_at(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    tweak: impl FnOnce(&mut S3Config),
) -> S3Store {
    let mut cfg = S3Config::from_uri(&format!("s3://{bucket}/{prefix}")).expect("valid uri");
    cfg.endpoint_url = Some(endpoint.to_owned());
    cfg.force_path_style = true;
    cfg.region = Some("us-east-1".into());
    cfg.max_attempts = 2;
    tweak(&mut cfg);
    S3Store::new(cfg).await.expect("store")
}

/// Deterministic pseudo-random bytes (xorshift), so parts differ.
fn data(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn multipart(cfg: &mut S3Config) {
    cfg.multipart_threshold_bytes = 6 * MIB as u64;
    cfg.part_size_bytes = 5 * MIB as u64;
}

async fn head(
    endpoint: &str,
    bucket: &str,
    key: &str,
) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    test_client(endpoint)
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("head {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_round_trip_with_hive_keys() {
    let server = S3Server::start();
    bounded(async {
        create_bucket(&server.endpoint, "archive").await;
        let store = store_at(&server.endpoint, "archive", "/lake/v1/", |_| {}).await;
        assert_eq!(store.config().prefix, "lake/v1");

        let objects = [
            (
                "delivery_events/event_date=2025-11-01/channel=SMS/x.parquet",
                data(1000, 1),
            ),
            (
                "delivery_events/event_date=2025-11-01/channel=VOICE/x.parquet",
                data(10, 2),
            ),
            (
                "delivery_events/event_date=2025-11-02/channel=SMS/x.parquet",
                data(70_000, 3),
            ),
            ("spend/month=2025-11/part-0.parquet", Bytes::new()),
        ];
        for (key, bytes) in &objects {
            store.put(key, bytes.clone()).await.expect("put");
        }
        // Outside the store prefix, or a prefix that merely starts alike.
        let raw = test_client(&server.endpoint);
        for other in ["lake/v10/x.parquet", "elsewhere/x.parquet", "lake/v1"] {
            raw.put_object()
                .bucket("archive")
                .key(other)
                .body(Bytes::from_static(b"other").into())
                .send()
                .await
                .expect("raw put");
        }

        for (key, bytes) in &objects {
            assert_eq!(store.get(key).await.expect("get"), bytes.to_vec(), "{key}");
        }
        // The key is stored literally under the prefix ('=' and '/' kept).
        let h = head(
            &server.endpoint,
            "archive",
            "lake/v1/delivery_events/event_date=2025-11-01/channel=SMS/x.parquet",
        )
        .await;
        assert_eq!(h.content_length(), Some(1000));
        assert!(!h.e_tag().unwrap_or_default().contains('-'), "single PUT");

        let mut all: Vec<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
        all.sort();
        assert_eq!(store.list("").await.expect("list"), all);
        assert_eq!(
            store.list("delivery_events/").await.expect("list"),
            all[..3].to_vec()
        );
        assert_eq!(
            store
                .list("delivery_events/event_date=2025-11-01/")
                .await
                .expect("list"),
            all[..2].to_vec()
        );
        assert_eq!(
            store
                .list("delivery_events/event_date=2025-11-01/channel=SMS/")
                .await
                .expect("list"),
            vec![all[0].clone()]
        );
        assert!(store.list("nothing/").await.expect("list").is_empty());

        let missing = store
            .get("delivery_events/none.parquet")
            .await
            .expect_err("must fail");
        assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");
        assert!(!missing.is_retryable());
        assert!(store.list_open_uploads().await.expect("uploads").is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_follows_every_page() {
    let server = S3Server::start();
    bounded(async {
        create_bucket(&server.endpoint, "many").await;
        let store = store_at(&server.endpoint, "many", "p", |_| {}).await;
        // ListObjectsV2 returns at most 1000 keys per page.
        let mut want = Vec::new();
        for i in 0..1010 {
            want.push(format!("t/event_date=2025-11-01/k{i:05}"));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in want.chunks(100) {
            let store = store.clone();
            let chunk = chunk.to_vec();
            tasks.spawn(async move {
                for key in chunk {
                    store
                        .put(&key, Bytes::from_static(b"x"))
                        .await
                        .expect("put");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("put task");
        }
        want.sort();
        // The server pages (at most 1000 keys per answer)...
        let first = test_client(&server.endpoint)
            .list_objects_v2()
            .bucket("many")
            .send()
            .await
            .expect("raw list");
        assert_eq!(first.is_truncated(), Some(true));
        // ...and the store follows every page.
        assert_eq!(store.list("t/").await.expect("list"), want);
        assert_eq!(store.list("").await.expect("list"), want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_round_trips() {
    let server = S3Server::start();
    bounded(async {
        create_bucket(&server.endpoint, "mp-bucket").await;
        let store = store_at(&server.endpoint, "mp-bucket", "archive", multipart).await;
        let big = data(12 * MIB, 7);
        let key = "delivery_events/event_date=2025-11-01/channel=SMS/big.parquet";
        store.put(key, big.clone()).await.expect("multipart put");

        let got = store.get(key).await.expect("get");
        assert_eq!(got.len(), big.len());
        assert!(got == big.to_vec(), "multipart object differs");

        let h = head(&server.endpoint, "mp-bucket", &format!("archive/{key}")).await;
        assert_eq!(h.content_length(), Some(12 * MIB as i64));
        assert!(
            h.e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .ends_with("-3"),
            "expected a 3-part multipart ETag, got {:?}",
            h.e_tag()
        );
        assert!(store.list_open_uploads().await.expect("uploads").is_empty());
        assert_eq!(store.list("").await.expect("list"), vec![key.to_string()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_parts_when_allowed() {
    let server = S3Server::start_with_min_part_size(256 * 1024);
    bounded(async {
        create_bucket(&server.endpoint, "small").await;
        let store = store_at(&server.endpoint, "small", "", |c| {
            c.multipart_threshold_bytes = MIB as u64;
            c.part_size_bytes = 256 * 1024;
            c.allow_small_parts = true;
        })
        .await;
        let bytes = data(MIB + 100, 9);
        store.put("a/b.parquet", bytes.clone()).await.expect("put");
        assert!(store.get("a/b.parquet").await.expect("get") == bytes.to_vec());
        let h = head(&server.endpoint, "small", "a/b.parquet").await;
        assert!(h
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .ends_with("-5"));

        // Without the flag such parts are refused up front.
        let mut cfg = store.config().clone();
        cfg.allow_small_parts = false;
        let err = S3Store::new(cfg).await.expect_err("must fail");
        assert!(matches!(err, StoreError::Config(_)) && !err.is_retryable());
    })
    .await;
}

/// What the proxy does to new connections.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Forwards everything.
    Pass,
    /// Drops the connection once the client sent more than this many bytes.
    Cut(usize),
    /// Stops forwarding (but keeps the connection) after this many bytes.
    Stall(usize),
}

/// A loopback TCP proxy in front of the S3 server that can cut or stall
/// connections carrying large request bodies, keeping the server's state.
struct Proxy {
    endpoint: String,
    mode: Arc<Mutex<Mode>>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream_port: u16, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let mode = Arc::new(Mutex::new(mode));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (shared, counter) = (mode.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mode = *shared.lock().expect("mode lock");
                tokio::spawn(forward(inbound, upstream, mode, counter.clone()));
            }
        });
        Proxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            mode,
            cuts,
            task,
        }
    }

    /// Connections cut so far.
    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode lock") = mode;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(inbound: TcpStream, upstream: SocketAddr, mode: Mode, cuts: Arc<AtomicUsize>) {
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_rd, mut client_wr) = inbound.into_split();
    let (mut server_rd, mut server_wr) = outbound.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => n,
            };
            match mode {
                Mode::Cut(limit) if sent + n > limit => {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return false;
                }
                Mode::Stall(limit) if sent + n > limit => std::future::pending::<()>().await,
                _ => {}
            }
            if server_wr.write_all(&buf[..n]).await.is_err() {
                return false;
            }
            sent += n;
        }
    };
    let down = tokio::io::copy(&mut server_rd, &mut client_wr);
    tokio::pin!(down);
    tokio::select! {
        clean = up => {
            if clean {
                let _ = down.await;
            }
            // else: cut; dropping both halves closes both connections.
        }
        _ = &mut down => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_multipart_upload_is_aborted_and_retry_succeeds() {
    let server = S3Server::start();
    bounded(async {
        create_bucket(&server.endpoint, "cut").await;
        // Every connection carrying more than 1 MiB is cut: each 5 MiB part
        // fails (on every attempt), while small requests get through.
        let proxy = Proxy::start(server.port(), Mode::Cut(MIB)).await;
        let store = store_at(&proxy.endpoint, "cut", "archive", multipart).await;
        let direct = store_at(&server.endpoint, "cut", "archive", multipart).await;
        let big = data(12 * MIB, 11);
        let key = "delivery_events/event_date=2025-11-01/channel=SMS/cut.parquet";

        let err = store.put(key, big.clone()).await.expect_err("must fail");
        assert!(err.is_retryable(), "a cut connection is retryable: {err}");
        assert!(
            matches!(
                &err,
                StoreError::Network {
                    operation: "UploadPart",
                    ..
                } | StoreError::Timeout {
                    operation: "UploadPart",
                    ..
                }
            ),
            "expected a failed part upload: {err:?}"
        );
        assert!(proxy.cuts() > 0, "the proxy cut no connection");

        // Nothing visible, no open upload left behind.
        let gone = direct.get(key).await.expect_err("must fail");
        assert!(matches!(gone, StoreError::NotFound { .. }), "{gone}");
        assert!(direct.list("").await.expect("list").is_empty());
        assert!(
            direct
                .list_open_uploads()
                .await
                .expect("uploads")
                .is_empty(),
            "the interrupted upload was not aborted"
        );

        // Healthy path again: the caller's retry of the whole put succeeds.
        proxy.set(Mode::Pass);
        store.put(key, big.clone()).await.expect("retried put");
        assert!(direct.get(key).await.expect("get") == big.to_vec());
        assert!(direct
            .list_open_uploads()
            .await
            .expect("uploads")
            .is_empty());
        assert_eq!(direct.list("").await.expect("list"), vec![key.to_string()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_put_aborts_its_upload_in_the_background() {
    let server = S3Server::start();
    bounded(async {
        create_bucket(&server.endpoint, "stall").await;
        let proxy = Proxy::start(server.port(), Mode::Stall(MIB)).await;
        let store = store_at(&proxy.endpoint, "stall", "archive", multipart).await;
        let direct = store_at(&server.endpoint, "stall", "archive", multipart).await;

        let put = tokio::spawn({
            let store = store.clone();
            async move { store.put("x/stalled.parquet", data(12 * MIB, 5)).await }
        });
        let mut open = Vec::new();
        for _ in 0..100 {
            open = direct.list_open_uploads().await.expect("uploads");
            if !open.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(open, vec!["x/stalled.parquet".to_string()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !put.is_finished(),
            "the stalled put should still be running"
        );
        put.abort();
        assert!(put.await.expect_err("cancelled").is_cancelled());
        // Dropping the put spawned its abort (small requests pass).
        for _ in 0..100 {
            open = direct.list_open_uploads().await.expect("uploads");
            if open.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(open.is_empty(), "dropped put left {open:?} open");
        assert!(direct.list("").await.expect("list").is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_is_retryable_and_restart_recovers() {
    let mut server = S3Server::start();
    create_bucket(&server.endpoint, "down").await;
    let store = store_at(&server.endpoint, "down", "a", |_| {}).await;
    store.put("k.parquet", data(100, 1)).await.expect("put");

    server.stop();
    let err = bounded(store.put("k2.parquet", data(100, 2)))
        .await
        .expect_err("must fail");
    assert!(err.is_retryable(), "server down must be retryable: {err:?}");
    let err = bounded(store.get("k.parquet"))
        .await
        .expect_err("must fail");
    assert!(err.is_retryable(), "{err:?}");

    server.restart();
    bounded(async {
        // moto keeps its state in memory: the restarted server is empty.
        let err = store
            .put("k2.parquet", data(100, 2))
            .await
            .expect_err("must fail");
        assert!(
            matches!(err, StoreError::NoSuchBucket { .. }) && !err.is_retryable(),
            "{err:?}"
        );
        create_bucket(&server.endpoint, "down").await;
        store
            .put("k2.parquet", data(100, 2))
            .await
            .expect("put after restart");
        assert_eq!(
            store.get("k2.parquet").await.expect("get"),
            data(100, 2).to_vec()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_s3_and_kms_are_requested() {
    let server = S3Server::start();
    bounded(async {
        create_bucket(&server.endpoint, "enc").await;
        let s3 = store_at(&server.endpoint, "enc", "s3", |c| {
            multipart(c);
            c.sse = Some(Sse::S3);
        })
        .await;
        s3.put("small.parquet", data(1000, 1)).await.expect("put");
        s3.put("big.parquet", data(7 * MIB, 2))
            .await
            .expect("multipart put");
        for key in ["s3/small.parquet", "s3/big.parquet"] {
            let h = head(&server.endpoint, "enc", key).await;
            assert_eq!(
                h.server_side_encryption(),
                Some(&ServerSideEncryption::Aes256),
                "{key}"
            );
        }
        assert!(s3.get("big.parquet").await.expect("get") == data(7 * MIB, 2).to_vec());

        let kms = store_at(&server.endpoint, "enc", "kms", |c| {
            multipart(c);
            c.sse = Some(Sse::Kms {
                key_id: Some("alias/archive".into()),
            });
        })
        .await;
        kms.put("small.parquet", data(1000, 3)).await.expect("put");
        kms.put("big.parquet", data(7 * MIB, 4))
            .await
            .expect("multipart put");
        for key in ["kms/small.parquet", "kms/big.parquet"] {
            let h = head(&server.endpoint, "enc", key).await;
            assert_eq!(
                h.server_side_encryption(),
                Some(&ServerSideEncryption::AwsKms),
                "{key}"
            );
            assert_eq!(h.ssekms_key_id(), Some("alias/archive"), "{key}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_twice_leaves_the_second_content() {
    let server = S3Server::start();
    bounded(async {
        create_bucket(&server.endpoint, "ow-bucket").await;
        let store = store_at(&server.endpoint, "ow-bucket", "archive", multipart).await;
        let key = "delivery_events/event_date=2025-11-01/channel=SMS/part-00000.parquet";

        store.put(key, data(500, 1)).await.expect("first put");
        store.put(key, data(700, 2)).await.expect("second put");
        assert_eq!(store.list("").await.expect("list"), vec![key.to_string()]);
        assert_eq!(store.get(key).await.expect("get"), data(700, 2).to_vec());

        // Multipart over single, then single over multipart.
        store
            .put(key, data(7 * MIB, 3))
            .await
            .expect("multipart put");
        assert!(store.get(key).await.expect("get") == data(7 * MIB, 3).to_vec());
        store.put(key, data(300, 4)).await.expect("single put");
        assert_eq!(store.get(key).await.expect("get"), data(300, 4).to_vec());
        assert_eq!(store.list("").await.expect("list"), vec![key.to_string()]);
        assert!(store.list_open_uploads().await.expect("uploads").is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_and_bad_keys_are_not_retryable() {
    let server = S3Server::start();
    bounded(async {
        let store = store_at(&server.endpoint, "no-such-bucket", "p", |_| {}).await;
        let err = store.put("k", data(10, 1)).await.expect_err("must fail");
        assert!(matches!(err, StoreError::NoSuchBucket { .. }), "{err:?}");
        assert!(!err.is_retryable());
        let err = store.list("").await.expect_err("must fail");
        assert!(matches!(err, StoreError::NoSuchBucket { .. }), "{err:?}");

        create_bucket(&server.endpoint, "keys").await;
        let store = store_at(&server.endpoint, "keys", "p", |_| {}).await;
        for bad in ["", "/abs"] {
            let err = store.put(bad, data(1, 1)).await.expect_err("must fail");
            assert!(matches!(err, StoreError::Config(_)) && !err.is_retryable());
        }
    })
    .await;
}
