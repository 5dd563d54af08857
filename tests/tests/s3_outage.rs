//! An S3 server that goes down and comes back: a large write in progress waits the outage out
//! and completes, a checkpoint dropped while the server is down leaves its objects to the reaper,
//! which deletes them once the server is back; afterwards every fsynced byte reads back from a
//! fresh engine and `check_data` is clean.
//!
//! The server is an `s3s-fs` process these tests start and kill ([`S3Server`]); without one they
//! are skipped with a message outside CI.

use std::sync::Arc;
use std::time::Duration;

use tarbox_fs::Filesystem as _;
use tarbox_fs::store::S3Credentials;
use tarbox_fs::{Caller, Engine, EngineConfig, LayerRef, TenantOptions};
use tarbox_tests::s3_server::{KEY, S3Server, SECRET};
use tarbox_tests::{noise, postgres_url, read_ino, unique_tenant_name};

const MIB: usize = 1 << 20;

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
    let Some(binary) = S3Server::binary() else {
        eprintln!("SKIPPED: no s3s-fs (set TARBOX_TEST_S3_SERVER or install it)");
        return;
    };
    let url = postgres_url().await.unwrap_or_else(|| "memory://".into());
    let server = Arc::new(S3Server::start(binary));
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
                let server = server.clone();
                move || {
                    std::thread::sleep(Duration::from_secs(2));
                    server.up();
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
            restart.join().expect("restart");
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
    let back = read_ino(&volume, attr.ino).await;
    assert_eq!(back.len(), data.len(), "short file");
    assert!(back == data, "the file reads back byte for byte");
    fresh.delete_tenant(&tenant).await.expect("delete");
    fresh.purge_tenant(&tenant).await.expect("purge");
    assert_eq!(server.objects(), 0, "a purge empties the tenant's prefix");
}

/// An outage longer than the engine waits: the fsync fails with `EIO` instead of hanging, no
/// committed row names a block the store never got, and the data stays buffered, so the same
/// fsync succeeds once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_s3_outage_fails_with_eio_and_commits_nothing_unstored() {
    let Some(binary) = S3Server::binary() else {
        eprintln!("SKIPPED: no s3s-fs (set TARBOX_TEST_S3_SERVER or install it)");
        return;
    };
    let url = postgres_url().await.unwrap_or_else(|| "memory://".into());
    let server = S3Server::start(binary);
    let config = EngineConfig {
        outage_wait: Duration::from_secs(2),
        ..config()
    };
    let engine = Engine::open(&url, config.clone()).await.expect("engine");
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
    let kept = noise(2 * MIB, 3);
    let (kept_attr, fh) = volume
        .create(&me, tarbox_fs::Ino::ROOT, b"kept", 0o644, libc::O_WRONLY)
        .await
        .expect("create kept");
    volume.write(&me, fh, 0, &kept).await.expect("write kept");
    volume.fsync(&me, fh, false).await.expect("fsync kept");
    volume.release(&me, fh).await.expect("close kept");

    server.kill();
    let late = noise(2 * MIB, 4);
    let (late_attr, fh) = volume
        .create(&me, tarbox_fs::Ino::ROOT, b"late", 0o644, libc::O_WRONLY)
        .await
        .expect("create late");
    volume.write(&me, fh, 0, &late).await.expect("buffered");
    // A guard against hanging, far beyond the 2 s the engine waits.
    let failed = tokio::time::timeout(Duration::from_secs(120), volume.fsync(&me, fh, false))
        .await
        .expect("the fsync gives up instead of hanging");
    let e = failed.expect_err("nothing can be stored while the server is down");
    assert_eq!(e.errno(), libc::EIO, "{e}");

    server.up();
    let check = engine
        .check_data(&tenant, &|_| {})
        .await
        .expect("check data");
    assert!(
        check.is_clean() && check.verified == 8,
        "only the 2 MiB fsynced before the outage is referenced: {check:?}"
    );
    volume
        .fsync(&me, fh, false)
        .await
        .expect("the buffered data is stored once the server is back");
    volume.release(&me, fh).await.expect("close late");

    engine.close().await.expect("close engine");
    let fresh = Engine::open(&url, config).await.expect("fresh engine");
    let volume = fresh.volume(&tenant).await.expect("volume");
    for (attr, data) in [(kept_attr, &kept), (late_attr, &late)] {
        let back = read_ino(&volume, attr.ino).await;
        assert_eq!(back.len(), data.len(), "short file");
        assert!(&back == data, "the file reads back byte for byte");
    }
    let check = fresh
        .check_data(&tenant, &|_| {})
        .await
        .expect("check data");
    assert!(check.is_clean() && check.verified == 16, "{check:?}");
    fresh.delete_tenant(&tenant).await.expect("delete");
    fresh.purge_tenant(&tenant).await.expect("purge");
}
