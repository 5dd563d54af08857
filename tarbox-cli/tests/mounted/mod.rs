//! A real `tarbox mount` of a fresh tenant for end-to-end tests (memory or PostgreSQL), shared by
//! the FUSE test crates (`mount`, `native_mount`). Needs root and /dev/fuse; under `CI=true` or
//! `TARBOX_REQUIRE_POSTGRES=1` a missing PostgreSQL or FUSE fails instead of skipping.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tarbox");

pub(crate) fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("TARBOX_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

pub(crate) fn pg_url() -> String {
    std::env::var("TARBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tarbox_test".into())
}

/// Whether this machine can run FUSE tests; fails loudly in strict mode when it cannot.
pub(crate) fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && running_as_root();
    if !ok {
        assert!(!strict(), "FUSE end-to-end tests need root and /dev/fuse");
        eprintln!("SKIPPED: FUSE end-to-end tests need root and /dev/fuse");
    }
    ok
}

pub(crate) fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub(crate) fn is_mounted(p: &Path) -> bool {
    let Ok(p) = p.canonicalize() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4).is_some_and(|x| Path::new(x) == p))
        })
        .unwrap_or(false)
}

#[derive(Clone, Debug)]
pub(crate) enum Store {
    Memory,
    Postgres,
    /// Metadata in PostgreSQL, file data in the block store at this URL.
    PostgresWithData(String),
}

pub(crate) struct Mount {
    pub(crate) dir: tempfile::TempDir,
    /// What the mount process writes to stderr (its log).
    pub(crate) log: tempfile::NamedTempFile,
    pub(crate) child: Option<Child>,
    pub(crate) args: Vec<String>,
    pub(crate) tenant: String,
}

impl Mount {
    /// Mount a fresh tenant; `None` if PostgreSQL is wanted but absent (outside strict mode).
    pub(crate) fn new(store: Store) -> Option<Mount> {
        Mount::with_flags(store, &[])
    }

    /// [`Mount::new`] with extra `tarbox mount` flags.
    pub(crate) fn with_flags(store: Store, flags: &[&str]) -> Option<Mount> {
        let mut m = Mount::prepare(store, flags)?;
        m.start();
        Some(m)
    }

    /// A fresh tenant and the mount command for it, not started yet (to set the tenant up
    /// first: [`Mount::database_args`] reach its store).
    pub(crate) fn prepare(store: Store, flags: &[&str]) -> Option<Mount> {
        let tenant = format!("e2e-{}-{}", std::process::id(), nanos());
        let mut args = Vec::new();
        let data = match &store {
            Store::PostgresWithData(data) => Some(data.clone()),
            _ => None,
        };
        if matches!(store, Store::Postgres | Store::PostgresWithData(_)) {
            let url = pg_url();
            let ok = Command::new(BIN)
                .args(["--database", &url, "tenant", "create", &tenant])
                .args(data.iter().flat_map(|d| ["--data", d.as_str()]))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                assert!(
                    !strict(),
                    "PostgreSQL at {url} is required (CI=true) but tenant creation failed"
                );
                eprintln!("SKIPPED: PostgreSQL at {url} not usable");
                return None;
            }
            args.extend(["--database".to_string(), url]);
        }
        args.extend([
            "mount".into(),
            "--tenant".into(),
            tenant.clone(),
            "--allow-other".into(),
        ]);
        args.extend(flags.iter().map(|f| f.to_string()));
        let dir = tempfile::tempdir().expect("mount dir");
        let m = Mount {
            dir,
            log: tempfile::NamedTempFile::new().expect("log file"),
            child: None,
            args,
            tenant,
        };
        Some(m)
    }

    /// The `--database URL` arguments of the mount's store (none for memory).
    pub(crate) fn database_args(&self) -> Vec<String> {
        match self.args.first().map(String::as_str) {
            Some("--database") => self.args[..2].to_vec(),
            _ => Vec::new(),
        }
    }

    pub(crate) fn start(&mut self) {
        let child = Command::new(BIN)
            .args(&self.args)
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(self.log.reopen().expect("log file"))
            .spawn()
            .expect("spawn tarbox mount");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(self.dir.path()) {
            assert!(Instant::now() < deadline, "mount did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The mount's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Kill the mount process without letting it flush or unmount (a crash).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path())
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new(BIN)
                .arg("umount")
                .arg(self.dir.path())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::disallowed_methods)] // unique tenant names across runs
pub(crate) fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
