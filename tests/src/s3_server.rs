//! An `s3s-fs` S3 server on a loopback port that a test starts, kills and restarts, with keys of
//! its own (so a test can tell whether the keys it meant reached the store). The binary is
//! `TARBOX_TEST_S3_SERVER` (set by `scripts/test.sh`), else `s3s-fs` on the PATH; in CI its
//! absence fails the test, elsewhere [`S3Server::binary`] returns `None` and the test skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The access key id of every [`S3Server`].
pub const KEY: &str = "test-server-key";
/// The secret access key of every [`S3Server`].
pub const SECRET: &str = "test-server-secret";

/// A running (or killed) `s3s-fs` with one bucket, `bucket`; killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    binary: String,
    root: tempfile::TempDir,
    port: u16,
    child: std::sync::Mutex<Option<Child>>,
}

impl S3Server {
    /// The server binary, if there is one.
    pub fn binary() -> Option<String> {
        if let Ok(path) = std::env::var("TARBOX_TEST_S3_SERVER") {
            return Some(path);
        }
        let found = Command::new("sh")
            .args(["-c", "command -v s3s-fs"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if found.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("s3s-fs is required in CI (scripts/test.sh installs it)");
        }
        found
    }

    /// Start a server with an empty bucket on a free port.
    pub fn start(binary: String) -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("bucket")).expect("bucket");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let server = S3Server {
            binary,
            root,
            port,
            child: std::sync::Mutex::new(None),
        };
        server.up();
        server
    }

    /// Start the server again (same port, same data) after [`S3Server::kill`].
    pub fn up(&self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("s3s-fs did not start listening");
    }

    /// Stop the server at once (SIGKILL), as a crash or a network partition would.
    pub fn kill(&self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A data URL for a tenant under the prefix `tarbox` of the bucket.
    pub fn url(&self) -> String {
        format!("s3://bucket/tarbox?endpoint=http://127.0.0.1:{}", self.port)
    }

    /// The bucket's directory on disk.
    pub fn bucket(&self) -> PathBuf {
        self.root.path().join("bucket")
    }

    /// Objects in the bucket.
    pub fn objects(&self) -> usize {
        crate::files_under(&self.bucket()).len()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
