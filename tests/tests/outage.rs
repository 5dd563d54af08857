//! A real PostgreSQL restart (`-m fast`, then `-m immediate`), and connections killed with
//! `pg_terminate_backend`, under a workload that creates, writes and fsyncs files: operations
//! wait out the fault (or fail with `EIO`, never another errno), every file whose fsync succeeded
//! reads back byte for byte from a fresh engine, the tenant checks clean, and no audit event is
//! dropped.
//!
//! The restart command comes from `TARBOX_TEST_PG_RESTART` (`{mode}` is replaced by fast or
//! immediate), which `scripts/test.sh` sets for the server it provisions; without it the test
//! is skipped with a message (a database given from outside is not ours to restart).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{Connection as _, PgConnection};
use tarbox_fs::Filesystem as _;
use tarbox_fs::{Caller, Engine, EngineConfig, Ino, TenantOptions};
use tarbox_tests::{noise, postgres_url, unique_tenant_name};

fn restart(command: &str, mode: &str) {
    let command = command.replace("{mode}", mode);
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed: {status}");
}

/// The faults of one test would fall on the other's workload and checks: they take turns.
static ONE_FAULT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The writer's outcome: the files whose fsync succeeded with their data, and the errno of every
/// step that failed.
type Outcome = (Vec<(Ino, Vec<u8>)>, Vec<i32>);

/// A tenant under a writer that creates, writes, fsyncs and closes files in a loop, keeping what
/// fsync acknowledged and the errno of every failed step.
struct Workload {
    engine: Engine,
    tenant: String,
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<Outcome>,
}

/// The PostgreSQL `application_name` of the workloads' connections.
fn application_name() -> String {
    format!("tarbox-outage-{}", std::process::id())
}

impl Workload {
    async fn start(url: &str) -> Workload {
        // Named, so that a fault can be aimed at these connections only.
        let sep = if url.contains('?') { '&' } else { '?' };
        let named = format!("{url}{sep}application_name={}", application_name());
        let engine = Engine::open(&named, EngineConfig::default())
            .await
            .expect("engine");
        let tenant = unique_tenant_name();
        engine
            .create_tenant(&tenant, TenantOptions::default())
            .await
            .expect("tenant");
        let volume = engine.volume(&tenant).await.expect("volume");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let me = Caller::root();
                let (mut durable, mut errors) = (Vec::new(), Vec::new());
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let name = format!("f{n}");
                    let data = noise(64 << 10, n);
                    let step = async {
                        let (attr, fh) = volume
                            .create(&me, Ino::ROOT, name.as_bytes(), 0o644, libc::O_RDWR)
                            .await?;
                        volume.write(&me, fh, 0, &data).await?;
                        let synced = volume.fsync(&me, fh, false).await;
                        volume.release(&me, fh).await?;
                        synced.map(|()| attr.ino)
                    };
                    match step.await {
                        Ok(ino) => durable.push((ino, data)),
                        Err(e) => errors.push(e.errno()),
                    }
                }
                (durable, errors)
            })
        };
        Workload {
            engine,
            tenant,
            stop,
            writer,
        }
    }

    /// Stop the writer and check what the fault cost: only `EIO`s, every fsynced file byte for
    /// byte from an engine that has never seen it, a clean fsck, no audit event lost.
    async fn finish(self, url: &str, fault: &str) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.store(true, Ordering::Relaxed);
        let (durable, errors) = self.writer.await.expect("writer");
        eprintln!(
            "{fault}: {} files fsynced, {} operations failed: {errors:?}",
            durable.len(),
            errors.len()
        );
        assert!(
            durable.len() > 10,
            "the workload ran: {} files",
            durable.len()
        );
        assert!(
            errors.iter().all(|&e| e == libc::EIO),
            "only EIO, never another errno: {errors:?}"
        );
        let fresh = Engine::open(url, EngineConfig::default())
            .await
            .expect("fresh engine");
        let view = fresh.volume(&self.tenant).await.expect("volume");
        let me = Caller::root();
        for (ino, data) in &durable {
            let fh = view.open(&me, *ino, libc::O_RDONLY).await.expect("open");
            let read = view.read(&me, fh, 0, 1 << 20).await.expect("read");
            view.release(&me, fh).await.expect("release");
            assert!(read[..] == data[..], "inode {ino} differs after {fault}");
        }
        let report = fresh.fsck(&self.tenant, &|_| {}).await.expect("fsck");
        assert!(report.is_clean(), "{:?}", report.problems);

        self.engine.flush_audit().await;
        let audit = self.engine.audit_counters();
        assert_eq!(
            (
                audit.dropped_sink_error,
                audit.dropped_queue_full,
                audit.held
            ),
            (0, 0, 0),
            "no audit event lost: {audit:?}"
        );
        self.engine
            .delete_tenant(&self.tenant)
            .await
            .expect("delete");
        self.engine.close().await.expect("close");
        fresh.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_nothing_fsynced() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let Ok(command) = std::env::var("TARBOX_TEST_PG_RESTART") else {
        eprintln!("SKIPPED: TARBOX_TEST_PG_RESTART is not set (scripts/test.sh sets it)");
        return;
    };
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let workload = Workload::start(&url).await;
    for mode in ["fast", "immediate"] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::spawn_blocking({
            let command = command.clone();
            move || restart(&command, mode)
        })
        .await
        .expect("restart");
    }
    workload.finish(&url, "two restarts").await;
}

/// The same workload while an administrator (or a failing proxy) kills the connections it is
/// using, ten times, with `pg_terminate_backend`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing_fsynced() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let workload = Workload::start(&url).await;
    let mut admin = PgConnection::connect(&url).await.expect("admin connection");
    let mut killed = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let rows: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(application_name())
        .fetch_all(&mut admin)
        .await
        .expect("terminate");
        killed += rows.iter().filter(|(done,)| *done).count();
    }
    assert!(killed > 0, "no connection was killed");
    workload
        .finish(&url, &format!("{killed} connections killed"))
        .await;
}
