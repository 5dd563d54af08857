//! An S3 server that goes down and comes back: a large write in progress waits the outage out
//! and completes, a checkpoint dropped while the server is down leaves its objects to the reaper,
//! which deletes them once the server is back; afterwards every fsynced byte reads back from a
//! fresh engine and `check_data` is clean.
//!
//! The server is an `s3s-fs` process this test starts and kills (`TARBOX_TEST_S3_SERVER`, set
//! by `scripts/test.sh`, else `s3s-fs` on the PATH); without one the test is skipped with a
//! message outside CI.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tarbox_fs::Filesystem as _;
use tarbox_fs::store::S3Credentials;
use tarbox_fs::{Caller, Engine, EngineConfig, LayerRef, TenantOptions};
use tarbox_tests::{noise, postgres_url, unique_tenant_name};

const KEY: &str = "outage-key";
const SECRET: &str = "outage-secret";
const MIB: usize = 1 << 20;

/// An `s3s-fs` server on a loopback port, killed when dropped.
struct Server {
    binary: String,
    root: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn binary() -> Option<String> {
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

    fn start(binary: String) -> Server {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("bucket")).expect("bucket");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = Server {
            binary,
            root,
            port,
            child: None,
        };
        server.up();
        server
    }

    fn up(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("s3s-fs did not start listening");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("s3://bucket/tarbox?endpoint=http://127.0.0.1:{}", self.port)
    }

    fn objects(&self) -> usize {
        tarbox_tests::files_under(&self.root.path().join("bucket")).len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        dead_block_grace: Duration::ZERO,
        s3_credentials: Some(S3Credentials {
            access_key_id: KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        }),
        ..EngineConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_loses_nothing_fsynced() {
    let Some(binary) = Server::binary() else {
        eprintln!("SKIPPED: no s3s-fs (set TARBOX_TEST_S3_SERVER or install it)");
        return;
    };
    let url = postgres_url().await.unwrap_or_else(|| "memory://".into());
    let mut server = Server::start(binary);
    let engine = Engine::open(&url, config()).await.expect("engine");
    let tenant = unique_tenant_name();
    let options = TenantOptions {
        data_url: Some(server.url()),
        ..TenantOptions::default()
    };
    engine
        .create_tenant(&tenant, options)
        .await
        .expect("tenant");
    let volume = engine.volume(&tenant).await.expect("volume");
    let me = Caller::root();

    // A checkpoint holding 4 MiB that nothing else references.
    let (_, fh) = volume
        .create(&me, tarbox_fs::Ino::ROOT, b"old", 0o644, libc::O_WRONLY)
        .await
        .expect("create old");
    volume
        .write(&me, fh, 0, &noise(4 * MIB, 9))
        .await
        .expect("write old");
    volume.release(&me, fh).await.expect("close old");
    volume
        .layers()
        .checkpoint("before", "")
        .await
        .expect("checkpoint");
    let old = volume
        .lookup(&me, tarbox_fs::Ino::ROOT, b"old")
        .await
        .expect("lookup")
        .ino;
    volume
        .unlink(&me, tarbox_fs::Ino::ROOT, b"old")
        .await
        .expect("unlink old");

    // A 32 MiB file written in 1 MiB pieces, fsynced every 4 MiB; the server dies after 8 MiB
    // and is back 2 seconds later, well within the retry bound.
    let data = noise(32 * MIB, 1);
    let (attr, fh) = volume
        .create(&me, tarbox_fs::Ino::ROOT, b"big", 0o644, libc::O_WRONLY)
        .await
        .expect("create big");
    for (i, piece) in data.chunks(MIB).enumerate() {
        if i == 8 {
            server.kill();
            let restart = std::thread::spawn({
                let mut server = std::mem::replace(
                    &mut server,
                    Server {
                        binary: String::new(),
                        root: tempfile::tempdir().expect("tempdir"),
                        port: 0,
                        child: None,
                    },
                );
                move || {
                    std::thread::sleep(Duration::from_secs(2));
                    server.up();
                    server
                }
            });
            // Writing on while it is down: the pieces are buffered, the next fsync waits.
            volume
                .write(&me, fh, (i * MIB) as u64, piece)
                .await
                .expect("write during the outage");
            // Dropping the checkpoint needs only the database; its blocks go dead.
            volume
                .layers()
                .drop_layer(&LayerRef::from("before"), true)
                .await
                .expect("drop during the outage");
            volume
                .fsync(&me, fh, false)
                .await
                .expect("fsync waits the outage out");
            server = restart.join().expect("restart");
            continue;
        }
        volume
            .write(&me, fh, (i * MIB) as u64, piece)
            .await
            .expect("write");
        if i % 4 == 3 {
            volume.fsync(&me, fh, false).await.expect("fsync");
        }
    }
    volume.release(&me, fh).await.expect("close big");
    let _ = old;

    // The reaper deletes the dropped checkpoint's objects now that the server is back.
    let report = engine
        .collect_garbage(&tenant, Duration::from_secs(3600), &|_| {})
        .await
        .expect("gc");
    assert_eq!(
        report.reaped, 16,
        "4 MiB of dead 256 KiB blocks: {report:?}"
    );
    assert_eq!(server.objects(), 128, "32 MiB live, nothing else");

    // A fresh engine (cold caches) reads every byte back and finds every block.
    engine.close().await.expect("close engine");
    let fresh = Engine::open(&url, config()).await.expect("fresh engine");
    let check = fresh
        .check_data(&tenant, &|_| {})
        .await
        .expect("check data");
    assert!(check.is_clean() && check.verified == 128, "{check:?}");
    let volume = fresh.volume(&tenant).await.expect("volume");
    let fh = volume
        .open(&me, attr.ino, libc::O_RDONLY)
        .await
        .expect("open");
    let mut back = Vec::with_capacity(data.len());
    while back.len() < data.len() {
        let got = volume
            .read(&me, fh, back.len() as u64, MIB as u32)
            .await
            .expect("read");
        assert!(!got.is_empty(), "short file at {}", back.len());
        back.extend_from_slice(&got);
    }
    assert!(back == data, "the file reads back byte for byte");
    volume.release(&me, fh).await.expect("close");
    fresh.delete_tenant(&tenant).await.expect("delete");
    fresh.purge_tenant(&tenant).await.expect("purge");
    assert_eq!(server.objects(), 0, "a purge empties the tenant's prefix");
}
