//! Helpers shared by the `concurrency*` test crates: a cluster of several engines on one store
//! sharing one tenant, the macro that runs a test on both stores, and namespace and data helpers.
//!
//! Each crate includes this module with `mod concurrency_common;` and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use tarbox_fs::Filesystem as _;
use tarbox_fs::backend::memory::MemoryBackend;
use tarbox_fs::{
    Backend, Caller, Engine, EngineConfig, FileType, FsError, FsResult, Ino, TenantOptions, Volume,
};
use tarbox_tests::{errno_name, postgres_url, unique_tenant_name};
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------------------------
// A cluster: several engines on one store, one tenant
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    Memory,
    Postgres,
}

pub(crate) struct Cluster {
    /// The shared in-memory store, or `None` for PostgreSQL.
    pub(crate) memory: Option<Arc<dyn Backend>>,
    pub(crate) url: Option<String>,
    pub(crate) tenant: String,
    pub(crate) engines: Vec<Engine>,
}

impl Cluster {
    /// `n` engines on a fresh store (memory) or the test database (PostgreSQL), and one fresh
    /// tenant with `options`. `None` when PostgreSQL is unavailable outside CI (already reported).
    pub(crate) async fn start(store: Store, n: usize, options: TenantOptions) -> Option<Cluster> {
        let (memory, url) = match store {
            Store::Memory => (
                Some(Arc::new(MemoryBackend::new()) as Arc<dyn Backend>),
                None,
            ),
            Store::Postgres => (None, Some(postgres_url().await?)),
        };
        let mut cluster = Cluster {
            memory,
            url,
            tenant: unique_tenant_name(),
            engines: Vec::new(),
        };
        for _ in 0..n {
            let engine = cluster.new_engine().await;
            cluster.engines.push(engine);
        }
        cluster.engines[0]
            .create_tenant(&cluster.tenant, options)
            .await
            .unwrap_or_else(|e| panic!("create tenant {}: {e}", cluster.tenant));
        Some(cluster)
    }

    /// Another engine on the same store.
    pub(crate) async fn new_engine(&self) -> Engine {
        self.new_engine_with(EngineConfig::default()).await
    }

    async fn new_engine_with(&self, config: EngineConfig) -> Engine {
        let engine = match (&self.memory, &self.url) {
            (Some(backend), _) => Engine::with_backend(backend.clone(), config).await,
            (None, Some(url)) => Engine::open(url, config).await,
            (None, None) => unreachable!("a cluster has a store"),
        };
        engine.unwrap_or_else(|e| panic!("cannot open an engine: {e}"))
    }

    /// One volume of the tenant per engine.
    pub(crate) async fn volumes(&self) -> Vec<Volume> {
        let mut out = Vec::new();
        for engine in &self.engines {
            out.push(engine.volume(&self.tenant).await.expect("open volume"));
        }
        out
    }

    /// A volume of the tenant on an engine that caches no metadata: it shows what the store
    /// holds now, also what another engine changed a moment ago (which that engine's peers
    /// hear of within milliseconds, not at once).
    pub(crate) async fn observer(&self) -> Volume {
        let config = EngineConfig {
            meta_cache_entries: 0,
            ..EngineConfig::default()
        };
        self.new_engine_with(config)
            .await
            .volume(&self.tenant)
            .await
            .expect("open volume on an observing engine")
    }

    /// A volume of the tenant on an engine opened now, sharing no cache with the others.
    pub(crate) async fn fresh_volume(&self) -> Volume {
        self.new_engine()
            .await
            .volume(&self.tenant)
            .await
            .expect("open volume on a fresh engine")
    }

    pub(crate) async fn usage(&self) -> tarbox_fs::Usage {
        self.engines[0]
            .tenant_info(&self.tenant)
            .await
            .expect("tenant_info")
            .usage
    }

    /// Delete the tenant (the test passed) and end the engines' sessions.
    pub(crate) async fn finish(self) {
        self.engines[0]
            .delete_tenant(&self.tenant)
            .await
            .expect("delete tenant");
        for engine in &self.engines {
            engine.close().await.expect("close engine");
        }
    }
}

/// Run each listed `async fn name(store: Store)` on both stores: `memory::name`, `postgres::name`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Store::Memory).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Store::Postgres).await;
                }
            )*
        }
    };
}

pub(crate) use on_both_stores;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

pub(crate) fn root() -> Caller {
    Caller::root()
}

pub(crate) fn errno<T>(r: &FsResult<T>) -> Option<i32> {
    r.as_ref().err().map(FsError::errno)
}

pub(crate) fn describe<T>(r: &FsResult<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{} ({e})", errno_name(e.errno())),
    }
}

pub(crate) fn small_blocks() -> TenantOptions {
    TenantOptions {
        block_size: 4096,
        ..TenantOptions::default()
    }
}

/// Entries of a directory without `.` and `..`: name -> (ino, kind), failing on a name listed
/// twice.
pub(crate) async fn list(vol: &Volume, dir: Ino) -> BTreeMap<String, (Ino, FileType)> {
    let fh = vol.opendir(&root(), dir).await.expect("opendir");
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        let page = vol
            .readdir(&root(), dir, fh, offset)
            .await
            .expect("readdir");
        let Some(last) = page.last() else { break };
        assert!(last.next_offset > offset, "readdir offsets must advance");
        offset = last.next_offset;
        for e in page {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = String::from_utf8(e.name).expect("utf-8 names");
            assert!(
                out.insert(name.clone(), (e.ino, e.kind)).is_none(),
                "{name} listed twice in directory {dir}"
            );
        }
    }
    vol.releasedir(&root(), fh).await.expect("releasedir");
    out
}

pub(crate) async fn read_all(vol: &Volume, ino: Ino) -> Vec<u8> {
    let fh = vol
        .open(&root(), ino, libc::O_RDONLY)
        .await
        .expect("open for reading");
    let mut out = Vec::new();
    loop {
        let chunk = vol
            .read(&root(), fh, out.len() as u64, 1 << 20)
            .await
            .expect("read");
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    vol.release(&root(), fh).await.expect("release");
    out
}

pub(crate) async fn new_file(vol: &Volume, dir: Ino, name: &str, data: &[u8]) -> Ino {
    let (attr, fh) = vol
        .create(
            &root(),
            dir,
            name.as_bytes(),
            0o644,
            libc::O_WRONLY | libc::O_EXCL,
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    if !data.is_empty() {
        vol.write(&root(), fh, 0, data).await.expect("write");
    }
    vol.release(&root(), fh).await.expect("release");
    attr.ino
}

pub(crate) async fn mkdir(vol: &Volume, dir: Ino, name: &str) -> Ino {
    vol.mkdir(&root(), dir, name.as_bytes(), 0o755)
        .await
        .unwrap_or_else(|e| panic!("mkdir {name}: {e}"))
        .ino
}

pub(crate) async fn nlink(vol: &Volume, ino: Ino) -> u32 {
    vol.getattr(&root(), ino).await.expect("getattr").nlink
}

/// Number of subdirectories listed in `dir`.
pub(crate) fn subdirs(listing: &BTreeMap<String, (Ino, FileType)>) -> u32 {
    listing
        .values()
        .filter(|(_, k)| *k == FileType::Directory)
        .count() as u32
}

/// Spawn one task per volume, all released together by a barrier; returns their results in
/// volume order.
pub(crate) async fn race<T, F, Fut>(vols: &[Volume], f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Volume) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(vols.len()));
    let tasks = vols.iter().enumerate().map(|(i, vol)| {
        let barrier = barrier.clone();
        let work = f(i, vol.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            work.await
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task panicked"))
        .collect()
}
