//! Tenants whose file data lives in a block store (a local directory): overwritten and dropped
//! data is reclaimed while checkpoints keep theirs, a writer racing the reaper never commits a
//! mapping to a deleted object, `check_data` finds missing and corrupt objects, garbage
//! collection removes objects no row names, the background sweep reaps what retired tenants
//! drop, blocks read once are served from the disk cache, and a purge leaves nothing behind. Each test runs on
//! the memory backend and on PostgreSQL (the POSIX suite runs on a block store as `file_store`).

use std::path::PathBuf;
use std::time::Duration;

use tarbox_fs::Filesystem as _;
use tarbox_fs::backend::{BlockHash, StoredBlock};
use tarbox_fs::store::{BlockStore, FileStore};
use tarbox_fs::{
    Caller, DiskCacheConfig, Engine, EngineConfig, FsError, LayerRef, TenantId, TenantOptions,
};
use tarbox_tests::{TestVolume, files_under, noise, postgres_url, unique_tenant_name};

/// A tenant keeping its data in a fresh directory, on an engine whose reaper has no grace.
struct Fixture {
    t: TestVolume,
    dir: tempfile::TempDir,
    id: TenantId,
}

impl Fixture {
    async fn new(url: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = EngineConfig {
            dead_block_grace: Duration::ZERO,
            ..EngineConfig::default()
        };
        let engine = Engine::open(url, config).await.expect("engine");
        let t = TestVolume::with_engine(
            engine,
            TenantOptions {
                data_url: Some(format!("file://{}", dir.path().display())),
                ..TenantOptions::default()
            },
        )
        .await;
        let id = t.engine.tenant_info(&t.tenant).await.expect("info").id;
        Fixture { t, dir, id }
    }

    fn tenant_dir(&self) -> PathBuf {
        self.dir.path().join(self.id.0.to_string())
    }

    /// Objects the store holds for the tenant.
    fn objects(&self) -> Vec<PathBuf> {
        files_under(&self.tenant_dir())
    }

    async fn gc(&self) -> tarbox_fs::GarbageReport {
        self.t
            .engine
            .collect_garbage(&self.t.tenant, Duration::from_secs(3600), &|_| {})
            .await
            .expect("collect garbage")
    }

    async fn check(&self) -> tarbox_fs::DataCheck {
        self.t
            .engine
            .check_data(&self.t.tenant, &|_| {})
            .await
            .expect("check data")
    }

    async fn store(&self) -> FileStore {
        FileStore::open(self.dir.path().to_path_buf())
            .await
            .expect("store")
    }
}

/// Write `data` at `offset` of the file at `path` and close it (one flush).
async fn write_at(t: &TestVolume, path: &str, offset: u64, data: &[u8]) {
    let me = Caller::root();
    let fh = t
        .volume
        .open(&me, t.ino(path).await, libc::O_RDWR)
        .await
        .expect("open");
    t.volume.write(&me, fh, offset, data).await.expect("write");
    t.volume.release(&me, fh).await.expect("release");
}

/// Run `test` on the memory backend and, when reachable, on PostgreSQL.
macro_rules! on_every_backend {
    ($($name:ident => $body:expr;)*) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    ($body)(Fixture::new("memory://").await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(url) = postgres_url().await else { return };
                    ($body)(Fixture::new(&url).await).await;
                }
            }
        )*
    };
}

const MIB: usize = 1 << 20;

/// The whole content of `name` in the root of `tenant`, through a fresh volume of `engine`.
async fn read_all(engine: &Engine, tenant: &str, name: &str) -> Vec<u8> {
    let me = Caller::root();
    let volume = engine.volume(tenant).await.expect("volume");
    let ino = volume
        .lookup(&me, tarbox_fs::Ino::ROOT, name.as_bytes())
        .await
        .expect("lookup")
        .ino;
    tarbox_tests::read_ino(&volume, ino).await
}

on_every_backend! {
    overwritten_data_is_reclaimed_and_checkpoints_keep_theirs => |f: Fixture| async move {
        let t = &f.t;
        t.write_file("/model", &noise(MIB, 1)).await;
        assert_eq!(f.objects().len(), 4, "1 MiB in 256 KiB blocks");
        t.volume.layers().checkpoint("v1", "").await.expect("checkpoint");

        t.write_file("/model", &noise(MIB, 2)).await;
        f.gc().await;
        assert_eq!(f.objects().len(), 8, "the checkpoint keeps its blocks");

        t.write_file("/model", &noise(MIB, 3)).await;
        let report = f.gc().await;
        assert_eq!(report.reaped, 4, "the overwritten version goes: {report:?}");
        assert_eq!(f.objects().len(), 8);

        t.volume
            .layers()
            .drop_layer(&LayerRef::from("v1"), true)
            .await
            .expect("drop v1");
        f.gc().await;
        assert_eq!(f.objects().len(), 4, "the store holds the live tree and nothing else");
        assert_eq!(t.read_file("/model").await, noise(MIB, 3));
        let check = f.check().await;
        assert!(check.is_clean() && check.verified == 4, "{check:?}");

        // A file removed after a checkpoint: dropping the checkpoint frees its data too.
        t.write_file("/scratch", &noise(MIB, 4)).await;
        t.volume.layers().checkpoint("v2", "").await.expect("checkpoint");
        t.unlink("/scratch").await;
        t.volume
            .layers()
            .drop_layer(&LayerRef::from("v2"), true)
            .await
            .expect("drop v2");
        f.gc().await;
        assert_eq!(f.objects().len(), 4, "nothing of the removed file is kept");

        t.engine.delete_tenant(&t.tenant).await.expect("delete");
        t.engine.purge_tenant(&t.tenant).await.expect("purge");
        assert!(!f.tenant_dir().exists(), "a purge deletes the tenant's objects");
    };

    patched_blocks_are_reclaimed_with_what_they_patch => |f: Fixture| async move {
        let t = &f.t;
        let mut model = noise(MIB, 1);
        t.write_file("/model", &model).await;
        assert_eq!(f.objects().len(), 4, "1 MiB in 256 KiB blocks");
        // Small writes into stored blocks store what was written: one object each (the
        // manifests naming them and the blocks written over live in the database).
        for (offset, seed) in [(300_000, 2), (300_000 + 8192, 3), (600_000, 4)] {
            let data = noise(4096, seed);
            model[offset..offset + 4096].copy_from_slice(&data);
            write_at(t, "/model", offset as u64, &data).await;
            if seed == 2 {
                t.volume.layers().checkpoint("v1", "").await.expect("checkpoint");
            }
        }
        assert_eq!(f.objects().len(), 7, "three patches beside the four blocks");
        assert_eq!(t.read_file("/model").await, model);
        let check = f.check().await;
        assert!(check.is_clean() && check.verified == 7, "{check:?}");

        // The checkpoint's patched block goes with it; what the live one names stays.
        t.volume
            .layers()
            .drop_layer(&LayerRef::from("v1"), true)
            .await
            .expect("drop v1");
        let report = f.gc().await;
        assert_eq!(report.reaped, 0, "every object is still named: {report:?}");
        assert_eq!(t.read_file("/model").await, model);

        // Removing the file releases the patched blocks, and through them what they name.
        t.unlink("/model").await;
        f.gc().await;
        assert_eq!(f.objects().len(), 0, "nothing of the file is kept");
        assert!(f.check().await.is_clean());
    };

    a_writer_racing_the_reaper_stores_its_block_again => |f: Fixture| async move {
        let t = &f.t;
        let content = noise(256 * 1024, 7);
        t.write_file("/a", &content).await;
        t.unlink("/a").await;
        t.write_file("/b", b"").await;
        let b = t.ino("/b").await;
        let root = tarbox_fs::Caller::root();
        let fh = t.volume.open(&root, b, libc::O_WRONLY).await.expect("open");
        // The reaper claims the dead block; a writer of the same content comes along, finds the
        // object still there (so stores nothing), and must wait for the claim.
        let claim = t
            .engine
            .backend()
            .claim_dead_blocks(f.id, Duration::ZERO, 16)
            .await
            .expect("claim");
        assert_eq!(claim.hashes().len(), 1);
        let writer = {
            let t = t.clone();
            let content = content.clone();
            tokio::spawn(async move {
                t.volume.write(&root, fh, 0, &content).await.expect("write");
                t.volume.release(&root, fh).await.expect("close");
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.store().await.delete(f.id, claim.hashes()).await.expect("delete object");
        claim.forget().await.expect("forget");
        writer.await.expect("writer");

        let check = f.check().await;
        assert!(check.is_clean(), "the writer stored its block again: {check:?}");
        assert_eq!(f.objects().len(), 1);
        assert_eq!(t.read_file("/b").await, content);
    };

    a_retired_tenants_dropped_snapshot_is_reaped_by_the_sweep => |f: Fixture| async move {
        let t = &f.t;
        t.write_file("/model", &noise(MIB, 1)).await;
        t.volume.layers().checkpoint("s1", "").await.expect("checkpoint");
        t.write_file("/model", &noise(MIB, 2)).await;
        t.volume.layers().checkpoint("s2", "").await.expect("checkpoint");
        // A deleted volume with snapshots: no volume of it is open to reap anything.
        t.engine.retire_tenant(&t.tenant).await.expect("retire");
        assert_eq!(f.objects().len(), 8);
        t.engine
            .drop_retired_checkpoint(&t.tenant, &LayerRef::from("s1"))
            .await
            .expect("drop s1");
        assert_eq!(f.objects().len(), 8, "dead blocks wait for the reaper");
        let swept = t.engine.sweep_block_stores(None).await.expect("sweep");
        assert!(swept.reaped >= 4, "{swept:?}");
        assert_eq!(f.objects().len(), 4, "s2 keeps its blocks, s1's are gone");
        let check = f.check().await;
        assert!(check.is_clean() && check.verified == 4, "{check:?}");
    };

    blocks_read_once_are_served_from_the_disk_cache => |f: Fixture| async move {
        let t = &f.t;
        let data = noise(2 * MIB, 5);
        t.write_file("/dataset", &data).await;
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let cached_engine = || async {
            let config = EngineConfig {
                disk_cache: Some(DiskCacheConfig {
                    dir: cache_dir.path().to_path_buf(),
                    capacity_bytes: 64 << 20,
                }),
                ..EngineConfig::default()
            };
            Engine::with_backend(t.engine.backend().clone(), config)
                .await
                .expect("engine")
        };
        let first = cached_engine().await;
        assert_eq!(read_all(&first, &t.tenant, "dataset").await, data);
        first.close().await.expect("close");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while files_under(cache_dir.path()).len() < 8 {
            assert!(std::time::Instant::now() < deadline, "the cache is never filled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The store is out of reach: a new engine (cold memory) reads from the disk cache.
        let away = f.dir.path().join("away");
        std::fs::rename(f.tenant_dir(), &away).expect("hide the store");
        let second = cached_engine().await;
        assert_eq!(read_all(&second, &t.tenant, "dataset").await, data);
        second.close().await.expect("close");

        // A damaged cache file is never served: the block comes from the store again.
        std::fs::rename(&away, f.tenant_dir()).expect("bring the store back");
        let damaged = &files_under(cache_dir.path())[0];
        std::fs::write(damaged, vec![0x55; 4096]).expect("damage");
        let third = cached_engine().await;
        assert_eq!(read_all(&third, &t.tenant, "dataset").await, data);
        third.close().await.expect("close");
    };

    check_data_finds_missing_and_corrupt_blocks => |f: Fixture| async move {
        let t = &f.t;
        t.write_file("/one", &noise(100_000, 1)).await;
        t.write_file("/two", &noise(100_000, 2)).await;
        let mut objects = f.objects();
        objects.sort();
        assert_eq!(objects.len(), 2);
        std::fs::remove_file(&objects[0]).expect("remove");
        std::fs::write(&objects[1], b"not the block\x00").expect("corrupt");
        let check = f.check().await;
        assert_eq!((check.missing.len(), check.corrupt.len(), check.verified), (1, 1, 0));
        assert!(!check.is_clean());
    };

    garbage_collection_deletes_objects_no_row_names => |f: Fixture| async move {
        let t = &f.t;
        t.write_file("/kept", &noise(300_000, 1)).await;
        let stray = StoredBlock {
            hash: BlockHash(*blake3::hash(b"left by a crash").as_bytes()),
            compressed: false,
            data: bytes::Bytes::from_static(b"left by a crash"),
            parts: Vec::new(),
        };
        f.store().await.put(f.id, vec![stray]).await.expect("put");
        assert_eq!(f.objects().len(), 3);
        let young = f.gc().await;
        assert_eq!(young.adopted, 0, "an object younger than the grace may be a write in flight");
        let report = t
            .engine
            .collect_garbage(&t.tenant, Duration::ZERO, &|_| {})
            .await
            .expect("gc");
        assert_eq!((report.adopted, report.reaped), (1, 1));
        assert_eq!(f.objects().len(), 2);
        assert_eq!(t.read_file("/kept").await, noise(300_000, 1));
        assert!(f.check().await.is_clean());
    };
}

#[tokio::test]
async fn bad_data_urls_name_themselves() {
    let engine = Engine::open("memory://", EngineConfig::default())
        .await
        .expect("engine");
    for (url, says) in [
        ("file://relative", "absolute path"),
        ("ftp://host/x", "\"ftp\""),
    ] {
        let options = TenantOptions {
            data_url: Some(url.into()),
            ..TenantOptions::default()
        };
        match engine.create_tenant(&unique_tenant_name(), options).await {
            Err(FsError::BadInput(msg)) => assert!(msg.contains(says), "{url}: {msg}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}
