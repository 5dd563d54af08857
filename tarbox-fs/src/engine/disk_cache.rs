//! The on-disk cache of decoded blocks (`--cache-dir`, `--cache-size`).
//!
//! It sits between the in-memory [`BlockCache`](super::blocks::BlockCache) and the place a
//! tenant's blocks live (its database rows, a directory, S3): a block read from there is decoded
//! once and kept here, as is a block just written, so reading a dataset a second time, or after
//! a remount, costs a local read instead of a round trip to object storage.
//!
//! Layout: `<dir>/<tenant id>/<first two hex digits>/<hash in hex>`, each file the block's trimmed
//! content. Files are written to a temporary name and renamed, never fsynced: the cache is not
//! durable and need not be. Every read verifies the content against its name (BLAKE3), so a file
//! torn by a crash, truncated by a full disk or edited by hand is dropped and read from the store
//! again, never served. The index of what is cached (and so the size bound) is this process's:
//! give each mount a directory of its own.
//!
//! Filling never holds up a reader or a writer: it happens in the background, and blocks are
//! skipped while too many bytes wait to be written (a slow cache disk must not turn into
//! unbounded memory). Eviction is least-recently-used: a block just written or read is the one
//! to keep, and admission by frequency (moka's default) would turn away exactly those.

use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use tracing::{debug, warn};

use crate::backend::BlockHash;
use crate::error::{BackendError, BackendResult};
use crate::store::{hex, parse_hex};
use crate::types::TenantId;

/// Where an engine keeps decoded blocks on disk, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCacheConfig {
    /// The cache's directory (created if missing; what an earlier run left there is reused).
    pub dir: PathBuf,
    /// Bytes of block content kept at most (approximately: eviction runs behind inserts).
    pub capacity_bytes: u64,
}

/// Bytes waiting to be written to the cache, beyond which new blocks are not cached. The blocks
/// are shared with the memory cache, so this bounds how long they are kept alive, not copies.
const MAX_PENDING_BYTES: usize = 256 << 20;

/// Decoded blocks on local disk, bounded by total bytes.
pub(crate) struct DiskCache {
    dir: PathBuf,
    /// Cached blocks and their sizes; evicting an entry deletes its file.
    index: Cache<(TenantId, BlockHash), u32>,
    /// Bytes of blocks handed to [`DiskCache::fill`] and not written yet.
    pending_bytes: AtomicUsize,
    temp_seq: AtomicU64,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("bytes", &self.index.weighted_size())
            .finish()
    }
}

fn block_path(dir: &Path, tenant: TenantId, hash: &BlockHash) -> PathBuf {
    let name = hex(hash);
    dir.join(tenant.0.to_string()).join(&name[..2]).join(name)
}

impl DiskCache {
    /// Open the cache in `config.dir`, indexing the blocks an earlier run left there (and
    /// evicting beyond the bound). Blocking: call it off the async threads.
    pub(crate) fn open(config: &DiskCacheConfig) -> BackendResult<DiskCache> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| BackendError::Config {
            what: format!("cache directory {} cannot be created", dir.display()),
            source: Some(Box::new(e)),
        })?;
        let evict_dir = dir.clone();
        let index = Cache::builder()
            .max_capacity(config.capacity_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_, size: &u32| (*size).max(1))
            .eviction_listener(
                move |key: Arc<(TenantId, BlockHash)>, _, cause: RemovalCause| {
                    if cause != RemovalCause::Replaced {
                        let path = block_path(&evict_dir, key.0, &key.1);
                        if let Err(e) = std::fs::remove_file(&path) {
                            if e.kind() != ErrorKind::NotFound {
                                debug!(path = %path.display(), error = %e, "cannot evict a cached block");
                            }
                        }
                    }
                },
            )
            .build();
        let cache = DiskCache {
            dir,
            index,
            pending_bytes: AtomicUsize::new(0),
            temp_seq: AtomicU64::new(0),
        };
        cache.index_existing();
        Ok(cache)
    }

    /// Index the files of an earlier run; remove leftovers that are not blocks (temporary files
    /// of an interrupted fill).
    fn index_existing(&self) {
        let Ok(tenants) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut found = 0u64;
        for tenant_dir in tenants.flatten() {
            let Some(tenant) = tenant_dir
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            let Ok(prefixes) = std::fs::read_dir(tenant_dir.path()) else {
                continue;
            };
            for prefix in prefixes.flatten() {
                let Ok(files) = std::fs::read_dir(prefix.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let name = file.file_name();
                    let hash = name.to_str().and_then(parse_hex);
                    let size = file.metadata().map(|m| m.len()).ok();
                    match (hash, size.and_then(|s| u32::try_from(s).ok())) {
                        (Some(hash), Some(size)) => {
                            self.index.insert((TenantId(tenant), hash), size);
                            found += 1;
                        }
                        _ => {
                            let _ = std::fs::remove_file(file.path());
                        }
                    }
                }
            }
        }
        self.index.run_pending_tasks();
        debug!(dir = %self.dir.display(), blocks = found, "disk cache indexed");
    }

    /// The cached content of those of `hashes` that are here and intact, read off the async
    /// threads.
    pub(crate) async fn get(
        self: &Arc<Self>,
        tenant: TenantId,
        hashes: &[BlockHash],
    ) -> BackendResult<Vec<(BlockHash, Bytes)>> {
        let cache = self.clone();
        let hashes = hashes.to_vec();
        tokio::task::spawn_blocking(move || cache.get_many(tenant, &hashes))
            .await
            .map_err(|e| BackendError::Other(e.into()))
    }

    /// The cached content of those of `hashes` that are here and intact. Blocking.
    fn get_many(&self, tenant: TenantId, hashes: &[BlockHash]) -> Vec<(BlockHash, Bytes)> {
        let mut out = Vec::new();
        for hash in hashes {
            let key = (tenant, *hash);
            if self.index.get(&key).is_none() {
                continue;
            }
            let path = block_path(&self.dir, tenant, hash);
            match std::fs::read(&path) {
                Ok(content) if blake3::hash(&content).as_bytes() == &hash.0 => {
                    out.push((*hash, Bytes::from(content)));
                }
                Ok(_) => {
                    warn!(path = %path.display(), "dropping a cached block that does not match its hash");
                    self.index.invalidate(&key);
                }
                Err(e) => {
                    debug!(path = %path.display(), error = %e, "cached block unreadable");
                    self.index.invalidate(&key);
                }
            }
        }
        metrics::counter!("tarbox_disk_cache_hits_total").increment(out.len() as u64);
        metrics::counter!("tarbox_disk_cache_misses_total")
            .increment((hashes.len() - out.len()) as u64);
        out
    }

    /// Keep `blocks` (decoded content) in the background; those beyond what the disk keeps up
    /// with are not cached.
    pub(crate) fn fill(self: &Arc<Self>, tenant: TenantId, blocks: Vec<(BlockHash, Bytes)>) {
        let mut taken = Vec::with_capacity(blocks.len());
        let mut bytes = 0;
        for (hash, content) in blocks {
            if self.index.contains_key(&(tenant, hash)) {
                continue;
            }
            let len = content.len();
            if self.pending_bytes.fetch_add(len, Ordering::AcqRel) + len > MAX_PENDING_BYTES {
                self.pending_bytes.fetch_sub(len, Ordering::AcqRel);
                metrics::counter!("tarbox_disk_cache_fills_skipped_total").increment(1);
                continue;
            }
            bytes += len;
            taken.push((hash, content));
        }
        if taken.is_empty() {
            return;
        }
        let cache = self.clone();
        let fill = move || {
            for (hash, content) in &taken {
                if let Err(e) = cache.write(tenant, hash, content) {
                    debug!(error = %e, "cannot cache a block on disk");
                }
            }
            cache.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(fill);
            }
            Err(_) => fill(),
        }
    }

    fn write(&self, tenant: TenantId, hash: &BlockHash, content: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(content.len()).map_err(std::io::Error::other)?;
        let path = block_path(&self.dir, tenant, hash);
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let temp = parent.join(format!(
            ".fill-{}-{}",
            std::process::id(),
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let written = std::fs::File::create(&temp)
            .or_else(|e| {
                if e.kind() != ErrorKind::NotFound {
                    return Err(e);
                }
                std::fs::create_dir_all(parent)?;
                std::fs::File::create(&temp)
            })
            .and_then(|mut f| f.write_all(content))
            .and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        self.index.insert((tenant, *hash), size);
        Ok(())
    }

    /// Bytes of blocks cached now.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.index.run_pending_tasks();
        self.index.weighted_size()
    }

    /// Blocks written out and indexed, for tests that wait for background fills.
    #[cfg(test)]
    fn idle(&self) -> bool {
        self.pending_bytes.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: u8) -> (BlockHash, Bytes) {
        let content = Bytes::from(vec![seed; 100 << 10]);
        (BlockHash(*blake3::hash(&content).as_bytes()), content)
    }

    fn wait_idle(cache: &DiskCache) {
        while !cache.idle() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn blocks_survive_a_restart_and_stay_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = DiskCacheConfig {
            dir: dir.path().join("cache"),
            capacity_bytes: 1 << 20,
        };
        let tenant = TenantId(7);
        let cache = Arc::new(DiskCache::open(&config).expect("opens"));
        let blocks: Vec<_> = (1..=3).map(block).collect();
        cache.fill(tenant, blocks.clone());
        wait_idle(&cache);
        let hashes: Vec<BlockHash> = blocks.iter().map(|b| b.0).collect();
        assert_eq!(cache.get_many(tenant, &hashes), blocks);
        assert!(
            cache.get_many(TenantId(8), &hashes).is_empty(),
            "another tenant's blocks are not served"
        );
        drop(cache);

        let cache = Arc::new(DiskCache::open(&config).expect("reopens"));
        assert_eq!(
            cache.get_many(tenant, &hashes),
            blocks,
            "reused after a restart"
        );
        cache.fill(tenant, (10..=30).map(block).collect());
        wait_idle(&cache);
        assert!(cache.bytes() <= 1 << 20, "{} bytes cached", cache.bytes());
        let files: usize = walk(&config.dir);
        assert!(files <= 10, "{files} files left on disk for a 1 MiB cache");
    }

    #[test]
    fn a_damaged_file_is_dropped_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = DiskCacheConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes: 8 << 20,
        };
        let tenant = TenantId(1);
        let cache = Arc::new(DiskCache::open(&config).expect("opens"));
        let (hash, content) = block(5);
        cache.fill(tenant, vec![(hash, content)]);
        wait_idle(&cache);
        let path = block_path(&config.dir, tenant, &hash);
        std::fs::write(&path, b"torn").expect("damages");
        assert!(cache.get_many(tenant, &[hash]).is_empty());
        cache.index.run_pending_tasks();
        assert!(!path.exists(), "the damaged file is removed");
    }

    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
}
