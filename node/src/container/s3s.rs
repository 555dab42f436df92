//! Test harness: a private `s3s-fs` S3 server on a free loopback port.
//!
//! The server runs over a fresh temporary root directory (a bucket is a
//! sub-directory of it) and is killed when the [`S3sServer`] is dropped.
//! When `s3s-fs` is not on `PATH`, starting one panics with instructions:
//! the S3 tests fail loudly rather than pass without testing anything.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::spec::{ByteSize, ContainerSpec, S3Spec, Secret};

pub const ACCESS_KEY: &str = "dynostore-test-ak";
pub const SECRET_KEY: &str = "dynostore-test-sk";
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running `s3s-fs`, killed on drop.
#[derive(Debug)]
pub struct S3sServer {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl S3sServer {
    /// Starts a server with the given buckets and waits until it accepts
    /// connections.
    pub fn start(buckets: &[&str]) -> S3sServer {
        let Some(bin) = find_on_path("s3s-fs") else {
            panic!(
                "s3s-fs is not on PATH, so the S3 container tests cannot run. \
                 Install it with scripts/s3s-fs.sh (cargo install s3s-fs --version 0.14.1 \
                 --features binary --locked) and make sure ~/.cargo/bin is on PATH."
            );
        };
        let root = tempfile::tempdir().expect("temp dir for s3s-fs");
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).expect("create bucket dir");
        }
        // The port is free when chosen but could be taken before s3s-fs
        // binds it: retry with another one if the server exits.
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let log_path = root.path().join(format!("s3s-fs-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("s3s-fs log file");
            let log_err = log.try_clone().expect("clone log handle");
            let data = root.path().to_path_buf();
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if let Some(status) = child.try_wait().expect("poll s3s-fs") {
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    eprintln!("s3s-fs exited with {status} on port {port}; retrying\n{last_log}");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return S3sServer { child, port, root };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("s3s-fs did not accept connections on {addr} within {START_DEADLINE:?}:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("s3s-fs failed to start three times; last log:\n{last_log}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory holding a bucket's objects, to inspect or tamper with.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.path().join(bucket)
    }

    /// A container spec for `bucket` on this server.
    pub fn spec(&self, bucket: &str, prefix: &str, quota_bytes: u64) -> ContainerSpec {
        ContainerSpec::S3(S3Spec {
            name: None,
            endpoint: self.endpoint(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: super::spec::DEFAULT_S3_REGION.to_string(),
            access_key: ACCESS_KEY.to_string(),
            secret_key: Secret::new(SECRET_KEY),
            quota: ByteSize(quota_bytes),
        })
    }
}

impl Drop for S3sServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
