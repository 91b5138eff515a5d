//! A real S3-compatible server for integration tests: moto's standalone
//! server (`python3 -m moto.server -H 127.0.0.1 -p PORT`, with one fix, see
//! [`MOTO_LAUNCHER`]), run as a child process on a free 127.0.0.1 port.
//! Install it with `scripts/install-test-tools.sh` (moto 5.1.x: 5.2.0 to at
//! least 5.2.5 answer CompleteMultipartUpload with a root element the AWS
//! SDK for Rust refuses, moto issue #10055).
//!
//! Its state lives in memory: buckets and objects are lost when the server
//! stops. Credentials are not checked by moto; [`init_test_env`] (called by
//! [`S3Server::start`]) sets dummy ones (`test`/`test`, region `us-east-1`)
//! in this process's environment so the standard AWS chain finds them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Runs `moto.server` with one fix so it answers like S3: the checksum of a
/// multipart object made of per-part checksums (a "composite" checksum) ends
/// in `-<part count>` on real S3, which tells clients not to check it
/// against the whole body; moto (5.1) leaves the suffix out, so the AWS SDK,
/// which checks GetObject checksums by default, would reject every such
/// object as corrupt. Arguments are passed on to `moto.server`.
const MOTO_LAUNCHER: &str = r#"
import sys
try:
    import moto.s3.models as models
    _complete = models.FakeMultipart.complete

    def complete(self, body):
        total, etag, checksum = _complete(self, body)
        if checksum and "-" not in checksum:
            checksum = checksum + "-" + etag.rsplit("-", 1)[-1]
        return total, etag, checksum

    models.FakeMultipart.complete = complete
except Exception as exc:  # moto changed: run it as it is
    print("s3_server.rs: could not patch moto:", exc, file=sys.stderr)
from moto.server import main
main(sys.argv[1:])
"#;

/// How long the server may take to answer its first HTTP request.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Fresh ports tried when the server dies at start (port taken meanwhile).
const START_TRIES: usize = 3;

/// A running moto S3 server; killed on drop.
pub struct S3Server {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Option<Child>,
    port: u16,
    min_part_size: Option<u64>,
    log: PathBuf,
}

/// Sets dummy AWS credentials and region in this process's environment and
/// turns off instance-metadata lookups, once. Every test calls it (through
/// [`S3Server::start`]) before building a client, so the variables are
/// written before any thread reads them.
pub fn init_test_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Edition 2021: `set_var` is safe; it happens before any client
        // exists, and later only reads follow.
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::remove_var("AWS_ENDPOINT_URL");
        std::env::remove_var("AWS_ENDPOINT_URL_S3");
    });
}

fn check_moto_installed() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import moto, moto.server, flask; print(moto.__version__)",
            ])
            .stderr(Stdio::null())
            .output();
        let version = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            _ => panic!(
                "moto's S3 server is not installed (python3 -c 'import moto.server' failed); \
                 run scripts/install-test-tools.sh"
            ),
        };
        assert!(
            !moto_version_is_broken(&version),
            "moto {version} answers CompleteMultipartUpload with a root element the AWS SDK \
             refuses (moto issue #10055); run scripts/install-test-tools.sh (installs moto 5.1.x)"
        );
    });
}

/// moto 5.2.0 to 5.2.5 serialize CompleteMultipartUpload wrongly.
fn moto_version_is_broken(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    major == 5 && minor == 2 && patch <= 5
}

fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port on 127.0.0.1");
    listener.local_addr().expect("local addr").port()
}

/// Whether something on `port` answers an HTTP request.
fn answers_http(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(250)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

impl S3Server {
    /// Starts moto on a free 127.0.0.1 port and waits until it answers HTTP.
    /// Creates no bucket. Panics (asking to run
    /// `scripts/install-test-tools.sh`) when moto is missing.
    pub fn start() -> S3Server {
        Self::start_inner(None)
    }

    /// Like [`S3Server::start`], but the server accepts multipart parts of
    /// at least `min_part_size` bytes instead of S3's 5 MiB (moto's
    /// `S3_UPLOAD_PART_MIN_SIZE`), for tests with `allow_small_parts`.
    pub fn start_with_min_part_size(min_part_size: u64) -> S3Server {
        Self::start_inner(Some(min_part_size))
    }

    fn start_inner(min_part_size: Option<u64>) -> S3Server {
        init_test_env();
        check_moto_installed();
        let mut last_error = String::new();
        for _ in 0..START_TRIES {
            let port = free_port();
            let mut server = S3Server {
                endpoint: format!("http://127.0.0.1:{port}"),
                child: None,
                port,
                min_part_size,
                log: std::env::temp_dir()
                    .join(format!("moto-s3-{}-{port}.log", std::process::id())),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("moto S3 server did not start: {last_error}");
    }

    /// The port the server listens on (kept across [`S3Server::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(&self.log)
            .map_err(|e| format!("create {}: {e}", self.log.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("clone log handle: {e}"))?;
        let mut cmd = Command::new("python3");
        cmd.args(["-c", MOTO_LAUNCHER, "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(min) = self.min_part_size {
            cmd.env("S3_UPLOAD_PART_MIN_SIZE", min.to_string());
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn python3 (moto.server): {e}"))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if answers_http(self.port) {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "moto exited at start with {status}; log:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "moto did not answer on port {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kills the server (its state is lost). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts a new one on the same port (with empty
    /// state: buckets must be created again).
    pub fn restart(&mut self) {
        self.stop();
        // The old listening socket may linger for a moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("moto S3 server did not restart on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An S3 client for the test server at `endpoint` (path-style addressing,
/// dummy credentials, region `us-east-1`), independent of the environment.
pub fn test_client(endpoint: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "tests");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Creates bucket `name` on the test server at `endpoint`; panics on failure.
pub async fn create_bucket(endpoint: &str, name: &str) {
    test_client(endpoint)
        .create_bucket()
        .bucket(name)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create bucket {name} at {endpoint}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
}
