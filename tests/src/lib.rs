//! Harness of the Tarbox POSIX conformance suite.
//!
//! Every conformance test is written once, as `async fn name(t: TestVolume)`, inside
//! [`backend_tests!`], which runs it against each storage backend: the in-memory store and
//! PostgreSQL. Tests assert what a user of the filesystem observes (bytes read back, `stat`
//! results, listings, errnos), never what a backend stores, so the same assertions hold for every
//! backend.
//!
//! PostgreSQL is found through `TARBOX_TEST_DATABASE_URL` (default
//! [`DEFAULT_DATABASE_URL`]); its database is created when missing. When the server cannot be
//! reached the PostgreSQL variants are skipped with a loud message, except in CI (`CI=true`) or
//! with `TARBOX_REQUIRE_POSTGRES=1`, where they fail: a suite that silently tests nothing must not
//! pass.

pub mod s3_server;

use std::fmt;
use std::io::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tarbox_fs::Filesystem;
use tarbox_fs::backend::faulty::{Faults, FaultyBackend};
use tarbox_fs::{
    Caller, DirEntry, Engine, EngineConfig, FileAttr, FileHandle, FileType, FsError, FsResult, Ino,
    SetAttr, TenantOptions, Timestamp, Usage, Volume, VolumeOptions,
};
use tokio::sync::OnceCell;

/// Where the PostgreSQL variants run when `TARBOX_TEST_DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tarbox_test";

/// How long to wait for the server before declaring it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The result of probing the server once per test process: the URL, or why it is unusable.
static POSTGRES: OnceCell<Result<String, String>> = OnceCell::const_new();

/// The URL of the test database, created if missing; `None` (after a loud message on stderr) when
/// PostgreSQL cannot be reached outside CI.
///
/// # Panics
/// When PostgreSQL cannot be reached and `CI=true` or `TARBOX_REQUIRE_POSTGRES=1`, or when the
/// server is reachable but the test database cannot be created.
pub async fn postgres_url() -> Option<String> {
    match POSTGRES.get_or_init(probe_postgres).await {
        Ok(url) => Some(url.clone()),
        Err(why) => {
            if postgres_required() {
                panic!(
                    "PostgreSQL is required (CI=true or TARBOX_REQUIRE_POSTGRES=1) but not reachable: {why}"
                );
            }
            // Written to the real stderr rather than with `eprintln!`, which the test harness
            // captures and hides for passing tests: a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: PostgreSQL not reachable ({why}); set TARBOX_TEST_DATABASE_URL to run the PostgreSQL variants"
            );
            None
        }
    }
}

/// The S3 block store of the tests (`TARBOX_TEST_S3_URL`, e.g.
/// `s3://tarbox/test?endpoint=http://127.0.0.1:9014`, with `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` set; `scripts/test.sh` starts one); `None` after a loud message when
/// unset outside CI.
///
/// # Panics
/// When unset and `CI=true` or `TARBOX_REQUIRE_POSTGRES=1` (the full suite must run it).
pub fn s3_url() -> Option<String> {
    match std::env::var("TARBOX_TEST_S3_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if postgres_required() => {
            panic!("TARBOX_TEST_S3_URL is required in CI: scripts/test.sh starts an S3 server")
        }
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: TARBOX_TEST_S3_URL not set; set it to run the S3 block store variants"
            );
            None
        }
    }
}

fn postgres_required() -> bool {
    let set = |var: &str, values: &[&str]| {
        std::env::var(var).is_ok_and(|v| values.iter().any(|x| v.eq_ignore_ascii_case(x)))
    };
    set("CI", &["true", "1"]) || set("TARBOX_REQUIRE_POSTGRES", &["1", "true"])
}

/// Connect to the server's `postgres` database and create the test database if it is missing.
/// `Err` only for an unreachable server; a reachable server that refuses the setup panics.
async fn probe_postgres() -> Result<String, String> {
    let url = std::env::var("TARBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string());
    let options = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("TARBOX_TEST_DATABASE_URL is not a PostgreSQL URL: {e}"));
    // Messages name the server without the URL's password.
    let server = format!(
        "postgres://{}@{}:{}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    );
    let Some(database) = options.get_database().map(str::to_string) else {
        // No database named: the server's default for the user is used as is.
        return Ok(url);
    };
    let admin = options.clone().database("postgres");
    let mut conn =
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&admin)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(format!("{server}: {e}")),
            Err(_) => return Err(format!("{server}: no answer within {CONNECT_TIMEOUT:?}")),
        };
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&database)
        .fetch_optional(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot query pg_database on {server}: {e}"));
    if exists.is_none() {
        let create = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
        {
            // Another test process may have created it in between.
            let code = e
                .as_database_error()
                .and_then(|d| d.code())
                .unwrap_or_default();
            if code != "42P04" && code != "23505" {
                panic!("cannot create database {database:?} on {server}: {e}");
            }
        }
    }
    let _ = conn.close().await;
    Ok(url)
}

/// A fresh tenant name, unique across test processes and runs, and a valid DNS label.
#[allow(clippy::disallowed_methods)] // unique across runs, by the wall clock
pub fn unique_tenant_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t-{}-{n}-{nanos}", std::process::id())
}

/// The current wall-clock time, to bound timestamps the engine sets.
#[allow(clippy::disallowed_methods)] // what the engine's SystemClock reads
pub fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

/// An unprivileged caller with supplementary groups.
pub fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
    Caller {
        groups: groups.to_vec(),
        ..Caller::new(uid, gid)
    }
}

/// The usual unprivileged caller: uid 1000, gid 1000.
pub fn alice() -> Caller {
    Caller::new(1000, 1000)
}

/// A second unprivileged caller sharing nothing with [`alice`]: uid 2000, gid 2000.
pub fn bob() -> Caller {
    Caller::new(2000, 2000)
}

/// Symbolic name of an errno, for readable assertion messages.
pub fn errno_name(errno: i32) -> String {
    match tarbox_fs::audit::errno_name(errno) {
        "EOTHER" => format!("errno {errno}"),
        name => name.to_string(),
    }
}

/// Assert that an [`FsResult`] is an error with the given errno, naming the expression and both
/// errnos when it is not. Evaluates to the error.
#[macro_export]
macro_rules! assert_errno {
    ($result:expr, $errno:expr $(,)?) => {
        $crate::check_errno($result, $errno, stringify!($result))
    };
}

/// What [`assert_errno!`] runs.
#[track_caller]
pub fn check_errno<T: fmt::Debug>(result: FsResult<T>, errno: i32, what: &str) -> FsError {
    match result {
        Ok(value) => panic!(
            "{what}: succeeded with {value:?}, expected {}",
            errno_name(errno)
        ),
        Err(e) => {
            assert_eq!(
                e.errno(),
                errno,
                "{what}: failed with {e:?} ({}), expected {}",
                errno_name(e.errno()),
                errno_name(errno)
            );
            e
        }
    }
}

/// One test's filesystem: an engine, a fresh tenant on it, and a volume of that tenant, with
/// path-based conveniences that act as root. A clone shares the engine, volume and tenant.
#[derive(Debug, Clone)]
pub struct TestVolume {
    pub engine: Engine,
    pub volume: Volume,
    /// The tenant's name.
    pub tenant: String,
    /// `"memory"` or `"postgres"`.
    pub backend: &'static str,
    /// Where this harness's tenants keep their file data (`None`: in the backend's rows).
    pub data_url: Option<String>,
    /// Every tenant created through this harness for the test, deleted when it passes.
    created: Arc<Mutex<Vec<String>>>,
}

impl TestVolume {
    /// A fresh in-memory store with one tenant.
    pub async fn memory() -> TestVolume {
        TestVolume::open("memory://").await
    }

    /// An engine on `url` with one fresh tenant of default options.
    pub async fn open(url: &str) -> TestVolume {
        TestVolume::open_with_data(url, None).await
    }

    /// An engine on `url` with one fresh tenant keeping its file data at `data_url` (and so will
    /// every tenant [`TestVolume::new_tenant`] makes).
    pub async fn open_with_data(url: &str, data_url: Option<String>) -> TestVolume {
        let backend = if url.starts_with("memory") {
            "memory"
        } else {
            "postgres"
        };
        let engine = Engine::open(url, EngineConfig::default())
            .await
            .unwrap_or_else(|e| panic!("cannot open an engine on the {backend} store: {e}"));
        let options = TenantOptions {
            data_url,
            ..TenantOptions::default()
        };
        TestVolume::with_tenant(engine, backend, Arc::default(), options).await
    }

    /// A harness whose tenants keep their data in a block store in a directory of this test
    /// process, over PostgreSQL when it is reachable (the deployment that matters) and the
    /// memory backend otherwise.
    pub async fn file_store() -> TestVolume {
        let dir = std::env::temp_dir().join(format!("tarbox-test-blocks-{}", std::process::id()));
        let data = Some(format!("file://{}", dir.display()));
        match postgres_url().await {
            Some(url) => TestVolume::open_with_data(&url, data).await,
            None => TestVolume::open_with_data("memory://", data).await,
        }
    }

    /// A fresh tenant with `options` on an engine the test configured itself.
    pub async fn with_engine(engine: Engine, options: TenantOptions) -> TestVolume {
        let backend = engine.backend().kind();
        TestVolume::with_tenant(engine, backend, Arc::default(), options).await
    }

    /// A harness whose tenants keep their data in the S3 store of [`s3_url`], over PostgreSQL
    /// when reachable; `None` when no S3 store is configured outside CI.
    pub async fn s3_store() -> Option<TestVolume> {
        let data = Some(s3_url()?);
        Some(match postgres_url().await {
            Some(url) => TestVolume::open_with_data(&url, data).await,
            None => TestVolume::open_with_data("memory://", data).await,
        })
    }

    async fn with_tenant(
        engine: Engine,
        backend: &'static str,
        created: Arc<Mutex<Vec<String>>>,
        options: TenantOptions,
    ) -> TestVolume {
        let data_url = options.data_url.clone();
        let tenant = unique_tenant_name();
        engine
            .create_tenant(&tenant, options)
            .await
            .unwrap_or_else(|e| panic!("cannot create tenant {tenant}: {e}"));
        created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tenant.clone());
        let volume = engine
            .volume(&tenant)
            .await
            .unwrap_or_else(|e| panic!("cannot open volume of tenant {tenant}: {e}"));
        TestVolume {
            engine,
            volume,
            tenant,
            backend,
            data_url,
            created,
        }
    }

    /// Another fresh tenant on the same engine (and so the same store), with `options`: a small
    /// block size, a quota, another root owner.
    pub async fn new_tenant(&self, mut options: TenantOptions) -> TestVolume {
        if options.data_url.is_none() {
            options.data_url = self.data_url.clone();
        }
        TestVolume::with_tenant(
            self.engine.clone(),
            self.backend,
            self.created.clone(),
            options,
        )
        .await
    }

    /// A harness over another, existing tenant of the same engine (a clone, say), deleted with
    /// this test's tenants when the test passes.
    pub async fn adopt(&self, tenant: &str) -> TestVolume {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tenant.to_string());
        let volume = self
            .engine
            .volume(tenant)
            .await
            .unwrap_or_else(|e| panic!("cannot open volume of tenant {tenant}: {e}"));
        TestVolume {
            engine: self.engine.clone(),
            volume,
            tenant: tenant.to_string(),
            backend: self.backend,
            data_url: self.data_url.clone(),
            created: self.created.clone(),
        }
    }

    /// Everything a user can observe of the tree, one line per path in path order: kind,
    /// inode, mode, owner, size, link count, times, symlink target, extended attributes and a
    /// digest of the content. Two trees with equal listings are indistinguishable.
    pub async fn listing(&self) -> Vec<String> {
        let root = Caller::root();
        let mut out = Vec::new();
        let mut pending = vec![(String::new(), Ino::ROOT)];
        while let Some((path, ino)) = pending.pop() {
            let a = self
                .volume
                .getattr(&root, ino)
                .await
                .unwrap_or_else(|e| panic!("getattr {path:?}: {e}"));
            let mut xattrs = self
                .volume
                .listxattr(&root, ino)
                .await
                .unwrap_or_else(|e| panic!("listxattr {path:?}: {e}"));
            xattrs.sort();
            let mut extra = String::new();
            for name in xattrs {
                let value = self
                    .volume
                    .getxattr(&root, ino, &name)
                    .await
                    .unwrap_or_else(|e| panic!("getxattr {path:?}: {e}"));
                extra += &format!(
                    " xattr {}={}",
                    String::from_utf8_lossy(&name),
                    String::from_utf8_lossy(&value)
                );
            }
            match a.kind {
                FileType::Symlink => {
                    let target = self.volume.readlink(&root, ino).await.expect("readlink");
                    extra += &format!(" -> {}", String::from_utf8_lossy(&target));
                }
                FileType::Regular => {
                    let data = self.read_file(&format!("/{path}")).await;
                    extra += &format!(" content {}", blake3::hash(&data).to_hex());
                }
                FileType::Directory => {
                    for e in self.readdir_all(ino).await {
                        if e.name != b"." && e.name != b".." {
                            let name = String::from_utf8_lossy(&e.name);
                            pending.push((format!("{path}/{name}"), e.ino));
                        }
                    }
                }
                _ => {}
            }
            out.push(format!(
                "{path}/ {:?} ino {} mode {:o} owner {}:{} size {} nlink {} rdev {} \
                 atime {} mtime {} ctime {}{extra}",
                a.kind,
                a.ino.0,
                a.perm,
                a.uid,
                a.gid,
                a.size,
                a.nlink,
                a.rdev,
                a.atime.0,
                a.mtime.0,
                a.ctime.0,
            ));
        }
        out.sort();
        out
    }

    /// A second volume of the same tenant, as another mount would open it: it shares the store
    /// but no open handles or buffers with this one.
    pub async fn reopen(&self) -> Volume {
        self.engine
            .volume(&self.tenant)
            .await
            .unwrap_or_else(|e| panic!("cannot reopen tenant {}: {e}", self.tenant))
    }

    /// A second engine on the same store whose storage fails when `faults` says so, with a
    /// volume of this tenant on it whose audit events name the mount `faulty`; `config` tunes
    /// it (e.g. strict audit).
    pub async fn faulty(&self, faults: Arc<Faults>, config: EngineConfig) -> (Engine, Volume) {
        let backend = Arc::new(FaultyBackend::new(self.engine.backend().clone(), faults));
        let engine = Engine::with_backend(backend, config)
            .await
            .unwrap_or_else(|e| panic!("cannot open a faulty engine: {e}"));
        let options = VolumeOptions {
            mount: Some("faulty".into()),
            ..VolumeOptions::default()
        };
        let volume = engine
            .volume_with(&self.tenant, options)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open tenant {} on the faulty engine: {e}",
                    self.tenant
                )
            });
        (engine, volume)
    }

    /// What [`TestVolume::cleanup`] needs, taken before the test consumes the volume.
    pub fn cleanup_handle(&self) -> Cleanup {
        Cleanup {
            engine: self.engine.clone(),
            created: self.created.clone(),
            purge: self.data_url.is_some(),
        }
    }

    /// The tenant's usage as the engine reports it.
    pub async fn usage(&self) -> Usage {
        self.engine
            .tenant_info(&self.tenant)
            .await
            .unwrap_or_else(|e| panic!("tenant_info({}): {e}", self.tenant))
            .usage
    }

    /// Look a path up component by component as `caller` (no symlink following).
    pub async fn resolve_as(&self, caller: &Caller, path: &str) -> FsResult<FileAttr> {
        let mut attr = self.volume.getattr(caller, Ino::ROOT).await?;
        for name in components(path) {
            attr = self
                .volume
                .lookup(caller, attr.ino, name.as_bytes())
                .await?;
        }
        Ok(attr)
    }

    /// Look a path up as root.
    pub async fn resolve(&self, path: &str) -> FsResult<FileAttr> {
        self.resolve_as(&Caller::root(), path).await
    }

    /// Attributes of an existing path.
    pub async fn stat(&self, path: &str) -> FileAttr {
        self.resolve(path)
            .await
            .unwrap_or_else(|e| panic!("stat {path}: {e}"))
    }

    /// Inode of an existing path.
    pub async fn ino(&self, path: &str) -> Ino {
        self.stat(path).await.ino
    }

    /// The inode of the directory holding `path`, and the last component's name.
    pub async fn parent(&self, path: &str) -> (Ino, Vec<u8>) {
        let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => ("", path),
        };
        (self.ino(dir).await, name.as_bytes().to_vec())
    }

    /// Create (or truncate) a file as root and write `data` into it.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> FileAttr {
        self.write_file_as(&Caller::root(), path, data, 0o644)
            .await
            .unwrap_or_else(|e| panic!("write_file {path}: {e}"))
    }

    /// Create (or truncate) a file as `caller` with `mode` and write `data` into it.
    pub async fn write_file_as(
        &self,
        caller: &Caller,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> FsResult<FileAttr> {
        let (dir, name) = self.parent(path).await;
        let flags = libc::O_WRONLY | libc::O_TRUNC;
        let (attr, fh) = self.volume.create(caller, dir, &name, mode, flags).await?;
        let written = self.volume.write(caller, fh, 0, data).await;
        let released = self.volume.release(caller, fh).await;
        assert_eq!(written?, data.len() as u32, "short write to {path}");
        released?;
        self.volume.getattr(caller, attr.ino).await
    }

    /// Create a directory as root with exactly `mode` (its parent must exist); returns it.
    pub async fn mkdir_mode(&self, path: &str, mode: u32) -> Ino {
        let (dir, name) = self.parent(path).await;
        let root = Caller::root();
        let attr = self
            .volume
            .mkdir(&root, dir, &name, mode)
            .await
            .unwrap_or_else(|e| panic!("mkdir {path}: {e}"));
        self.chmod(path, mode).await;
        attr.ino
    }

    /// `chmod` as root.
    pub async fn chmod(&self, path: &str, mode: u32) -> FileAttr {
        let ino = self.ino(path).await;
        let set = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        self.volume
            .setattr(&Caller::root(), ino, &set)
            .await
            .unwrap_or_else(|e| panic!("chmod {mode:o} {path}: {e}"))
    }

    /// `chown` as root.
    pub async fn chown(&self, path: &str, uid: u32, gid: u32) -> FileAttr {
        let ino = self.ino(path).await;
        let set = SetAttr {
            uid: Some(uid),
            gid: Some(gid),
            ..SetAttr::default()
        };
        self.volume
            .setattr(&Caller::root(), ino, &set)
            .await
            .unwrap_or_else(|e| panic!("chown {uid}:{gid} {path}: {e}"))
    }

    /// Everything a file contains, read as root through a fresh handle.
    pub async fn unlink(&self, path: &str) {
        let (dir, name) = self.parent(path).await;
        self.volume
            .unlink(&Caller::root(), dir, &name)
            .await
            .unwrap_or_else(|e| panic!("unlink {path}: {e}"));
    }

    pub async fn read_file(&self, path: &str) -> Vec<u8> {
        let root = Caller::root();
        let ino = self.ino(path).await;
        let fh = self
            .volume
            .open(&root, ino, libc::O_RDONLY)
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        let data = self.read_handle(&root, fh).await;
        self.volume
            .release(&root, fh)
            .await
            .unwrap_or_else(|e| panic!("release {path}: {e}"));
        data
    }

    /// Read a handle from offset 0 to end of file, in chunks smaller than the file so that reads
    /// at offsets inside blocks are exercised too.
    pub async fn read_handle(&self, caller: &Caller, fh: FileHandle) -> Vec<u8> {
        read_to_end(&self.volume, caller, fh).await
    }

    /// Create every missing directory of `path` as root (mode 0755); returns the last one.
    pub async fn mkdir_p(&self, path: &str) -> Ino {
        let root = Caller::root();
        let mut dir = Ino::ROOT;
        for name in components(path) {
            dir = match self.volume.lookup(&root, dir, name.as_bytes()).await {
                Ok(attr) => attr.ino,
                Err(FsError::NotFound) => {
                    self.volume
                        .mkdir(&root, dir, name.as_bytes(), 0o755)
                        .await
                        .unwrap_or_else(|e| panic!("mkdir {name} in {path}: {e}"))
                        .ino
                }
                Err(e) => panic!("lookup {name} in {path}: {e}"),
            };
        }
        dir
    }

    /// Every entry of directory `ino` including `.` and `..`, read as root page by page,
    /// continuing each call from the offset of the last entry received.
    pub async fn readdir_all(&self, ino: Ino) -> Vec<DirEntry> {
        read_dir_as(&self.volume, &Caller::root(), ino).await
    }

    /// Names in a directory, in listing order, without `.` and `..`.
    pub async fn ls(&self, path: &str) -> Vec<String> {
        let ino = self.ino(path).await;
        self.readdir_all(ino)
            .await
            .into_iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }

    /// Names in a directory, sorted, without `.` and `..`.
    pub async fn ls_sorted(&self, path: &str) -> Vec<String> {
        let mut names = self.ls(path).await;
        names.sort();
        names
    }
}

/// Deletes the tenants a passing test created, so the shared PostgreSQL database does not grow
/// with every run (a failing test keeps them for inspection). Deleted tenants are purged by the
/// tenant-administration test.
#[derive(Debug)]
pub struct Cleanup {
    engine: Engine,
    created: Arc<Mutex<Vec<String>>>,
    /// Purge at once: tenants with a block store keep files in this machine's temp directory.
    purge: bool,
}

impl Cleanup {
    pub async fn run(self) {
        let names = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        for name in names {
            match self.engine.delete_tenant(&name).await {
                // A test may have deleted or purged its tenant itself.
                Ok(()) | Err(FsError::TenantNotFound(_)) => {}
                Err(e) => panic!("cannot delete tenant {name} after the test: {e}"),
            }
            if self.purge {
                match self.engine.purge_tenant(&name).await {
                    Ok(()) | Err(FsError::TenantNotFound(_)) => {}
                    Err(e) => panic!("cannot purge tenant {name} after the test: {e}"),
                }
            }
        }
        if let Err(e) = self.engine.close().await {
            panic!("cannot close the engine after the test: {e}");
        }
    }
}

/// The non-empty components of a slash-separated path.
fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// Generate, from `async fn name(t: TestVolume) { … }` items, one `#[tokio::test]` per backend:
/// `memory::name`, `postgres::name`, `file_store::name` (file data in a block store in a
/// directory, metadata in PostgreSQL when reachable) and `s3_store::name` (file data in the S3
/// store of [`s3_url`]). The PostgreSQL variant returns early (after the skip
/// message of [`postgres_url`]) when no database is reachable outside CI.
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$meta:meta])* async fn $name:ident($t:ident : $ty:ty) $body:block)*) => {
        $(
            $(#[$meta])*
            async fn $name($t: $ty) $body
        )*

        mod memory {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = $crate::TestVolume::memory().await;
                    let cleanup = t.cleanup_handle();
                    super::$name(t).await;
                    cleanup.run().await;
                }
            )*
        }

        mod postgres {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(url) = $crate::postgres_url().await else {
                        return;
                    };
                    let t = $crate::TestVolume::open(&url).await;
                    let cleanup = t.cleanup_handle();
                    super::$name(t).await;
                    cleanup.run().await;
                }
            )*
        }

        mod file_store {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = $crate::TestVolume::file_store().await;
                    let cleanup = t.cleanup_handle();
                    super::$name(t).await;
                    cleanup.run().await;
                }
            )*
        }

        mod s3_store {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = $crate::TestVolume::s3_store().await else {
                        return;
                    };
                    let cleanup = t.cleanup_handle();
                    super::$name(t).await;
                    cleanup.run().await;
                }
            )*
        }
    };
}

/// A clock the test moves by hand, for engines whose timestamps a test controls.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn at(t: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock(std::sync::atomic::AtomicI64::new(t.0)))
    }

    pub fn advance(&self, d: Duration) {
        let nanos = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl tarbox_fs::Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Block size of [`small_blocks`] tenants: small, so block boundaries are cheap to cross.
pub const SMALL_BLOCK: u32 = 4096;

/// A tenant on the same store as `t` with 4 KiB blocks.
pub async fn small_blocks(t: &TestVolume) -> TestVolume {
    t.new_tenant(TenantOptions {
        block_size: SMALL_BLOCK,
        ..TenantOptions::default()
    })
    .await
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Read a handle of `volume` from offset 0 to end of file, in chunks smaller than a block so
/// that reads at offsets inside blocks are exercised too.
pub async fn read_to_end(volume: &Volume, caller: &Caller, fh: FileHandle) -> Vec<u8> {
    const CHUNK: u32 = 100_000;
    let mut out = Vec::new();
    loop {
        let chunk = volume
            .read(caller, fh, out.len() as u64, CHUNK)
            .await
            .unwrap_or_else(|e| panic!("read at {}: {e}", out.len()));
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

/// The whole content of file `ino` of `volume`, read as root through a handle of its own.
pub async fn read_ino(volume: &Volume, ino: Ino) -> Vec<u8> {
    let root = Caller::root();
    let fh = volume
        .open(&root, ino, libc::O_RDONLY)
        .await
        .unwrap_or_else(|e| panic!("open inode {ino:?}: {e}"));
    let data = read_to_end(volume, &root, fh).await;
    volume
        .release(&root, fh)
        .await
        .unwrap_or_else(|e| panic!("release inode {ino:?}: {e}"));
    data
}

/// Files under `dir`, at any depth, without temporary ones (names starting with `.`): the
/// objects a block store or an S3 server keeps there.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(path);
        }
    }
    out
}

/// Every entry of directory `ino` (`.` and `..` included) as `caller` lists it through `fs`,
/// page by page; panics on an error or on offsets that do not advance.
pub async fn read_dir_as(fs: &dyn Filesystem, caller: &Caller, ino: Ino) -> Vec<DirEntry> {
    let fh = fs
        .opendir(caller, ino)
        .await
        .unwrap_or_else(|e| panic!("opendir {ino}: {e}"));
    let mut out: Vec<DirEntry> = Vec::new();
    let mut offset = 0;
    loop {
        let page = fs
            .readdir(caller, ino, fh, offset)
            .await
            .unwrap_or_else(|e| panic!("readdir {ino} at {offset}: {e}"));
        let Some(last) = page.last() else { break };
        assert!(
            last.next_offset > offset,
            "readdir offsets must advance: {offset} then {}",
            last.next_offset
        );
        offset = last.next_offset;
        out.extend(page);
    }
    fs.releasedir(caller, fh)
        .await
        .unwrap_or_else(|e| panic!("releasedir {ino}: {e}"));
    out
}

/// The names in directory `ino` as `caller` lists them, sorted, without `.` and `..`.
pub async fn names_as(fs: &dyn Filesystem, caller: &Caller, ino: Ino) -> Vec<String> {
    let mut names: Vec<String> = read_dir_as(fs, caller, ino)
        .await
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}
