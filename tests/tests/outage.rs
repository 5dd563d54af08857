//! A real PostgreSQL restart (`-m fast`, then `-m immediate`) under a workload that creates,
//! writes and fsyncs files: operations wait out the restart (or fail with `EIO`, never another
//! errno), every file whose fsync succeeded reads back byte for byte from a fresh engine, the
//! tenant checks clean, and no audit event is dropped.
//!
//! The restart command comes from `TARBOX_TEST_PG_RESTART` (`{mode}` is replaced by fast or
//! immediate), which `scripts/test.sh` sets for the server it provisions; without it the test
//! is skipped with a message (a database given from outside is not ours to restart).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_nothing_fsynced() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let Ok(command) = std::env::var("TARBOX_TEST_PG_RESTART") else {
        eprintln!("SKIPPED: TARBOX_TEST_PG_RESTART is not set (scripts/test.sh sets it)");
        return;
    };
    let engine = Engine::open(&url, EngineConfig::default())
        .await
        .expect("engine");
    let tenant = unique_tenant_name();
    engine
        .create_tenant(&tenant, TenantOptions::default())
        .await
        .expect("tenant");
    let volume = engine.volume(&tenant).await.expect("volume");

    // A writer: create, write, fsync, close, again and again; it keeps what fsync acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (volume, stop) = (volume.clone(), stop.clone());
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
    for mode in ["fast", "immediate"] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::spawn_blocking({
            let command = command.clone();
            move || restart(&command, mode)
        })
        .await
        .expect("restart");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (durable, errors) = writer.await.expect("writer");
    eprintln!(
        "{} files fsynced, {} operations failed: {errors:?}",
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

    // What fsync acknowledged is there, read by an engine that has never seen it.
    let fresh = Engine::open(&url, EngineConfig::default())
        .await
        .expect("fresh engine");
    let view = fresh.volume(&tenant).await.expect("volume");
    let me = Caller::root();
    for (ino, data) in &durable {
        let fh = view.open(&me, *ino, libc::O_RDONLY).await.expect("open");
        let read = view.read(&me, fh, 0, 1 << 20).await.expect("read");
        view.release(&me, fh).await.expect("release");
        assert!(
            read[..] == data[..],
            "inode {ino} differs after the restarts"
        );
    }
    let report = fresh.fsck(&tenant, &|_| {}).await.expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);

    engine.flush_audit().await;
    let audit = engine.audit_counters();
    assert_eq!(
        (
            audit.dropped_sink_error,
            audit.dropped_queue_full,
            audit.held
        ),
        (0, 0, 0),
        "no audit event lost: {audit:?}"
    );
    engine.delete_tenant(&tenant).await.expect("delete");
    engine.close().await.expect("close");
    fresh.close().await.expect("close");
}
