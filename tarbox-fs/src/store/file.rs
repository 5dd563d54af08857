//! A block store in a local directory (one node, or a shared filesystem mounted on every node).
//!
//! Layout: `<root>/<tenant id>/<first two hex digits>/<hash in hex>`, each file the block as
//! stored and a trailer byte. A block is written to a temporary name and renamed into place, so a
//! reader never sees half an object; `sync` is one `syncfs` of the store's filesystem, which
//! makes every object put before it (and the renames) durable: one flush of the disk per
//! transaction instead of one per block.

use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;

use super::{BlockStore, from_object, hex, object_trailer, parse_hex};
use crate::backend::{BlockHash, StoredBlock};
use crate::error::{BackendError, BackendResult};
use crate::types::TenantId;

/// A [`BlockStore`] in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Whether `sync` flushes the filesystem to disk (see [`FileStore::without_fsync`]).
    fsync: bool,
    /// Distinguishes the temporary files of concurrent puts of this process.
    temp_seq: AtomicU64,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> BackendError {
    BackendError::Other(format!("{what} {}: {e}", path.display()).into())
}

impl FileStore {
    /// Open (creating if needed) the store rooted at `root`.
    pub async fn open(root: PathBuf) -> BackendResult<FileStore> {
        let dir = root.clone();
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| BackendError::Config {
                what: format!("data store directory {} cannot be created", dir.display()),
                source: Some(Box::new(e)),
            })
        })
        .await?;
        Ok(FileStore {
            inner: Arc::new(Inner {
                root,
                fsync: true,
                temp_seq: AtomicU64::new(0),
            }),
        })
    }

    /// A store whose `sync` only orders, without flushing to disk (`file:///path?fsync=false`):
    /// objects survive a crash of Tarbox (they are in the kernel's page cache) but not of the
    /// machine, as with JuiceFS's local storage. For scratch data, and for a directory on a
    /// filesystem that is durable by other means.
    pub fn without_fsync(self) -> FileStore {
        FileStore {
            inner: Arc::new(Inner {
                root: self.inner.root.clone(),
                fsync: false,
                temp_seq: AtomicU64::new(0),
            }),
        }
    }

    fn tenant_dir(&self, tenant: TenantId) -> PathBuf {
        self.inner.root.join(tenant.0.to_string())
    }

    fn path(&self, tenant: TenantId, hash: &BlockHash) -> PathBuf {
        let name = hex(hash);
        self.tenant_dir(tenant).join(&name[..2]).join(name)
    }

    /// Write one object unless it is already there.
    fn put_one(&self, tenant: TenantId, block: &StoredBlock) -> BackendResult<()> {
        let path = self.path(tenant, &block.hash);
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.inner.root);
        let seq = self.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".tmp-{}-{seq}", std::process::id()));
        let write = |temp: &Path| -> std::io::Result<()> {
            let mut f = std::fs::File::create(temp)?;
            f.write_all(&block.data)?;
            f.write_all(&[object_trailer(block)])?;
            Ok(())
        };
        if let Err(e) = write(&temp) {
            if e.kind() != ErrorKind::NotFound {
                let _ = std::fs::remove_file(&temp);
                return Err(io_err("cannot write", &temp, e));
            }
            std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
            if let Err(e) = write(&temp) {
                let _ = std::fs::remove_file(&temp);
                return Err(io_err("cannot write", &temp, e));
            }
        }
        std::fs::rename(&temp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            io_err("cannot rename into", &path, e)
        })
    }

    /// Flush everything written to the store's filesystem to disk.
    fn sync_all(&self) -> BackendResult<()> {
        if !self.inner.fsync {
            return Ok(());
        }
        let root = &self.inner.root;
        let dir = std::fs::File::open(root).map_err(|e| io_err("cannot open", root, e))?;
        rustix::fs::syncfs(&dir).map_err(|e| io_err("cannot sync", root, e.into()))
    }
}

/// Run blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> BackendResult<T> + Send + 'static,
) -> BackendResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BackendError::Other(Box::new(e))),
    }
}

/// Split `items` into about as many chunks as there are threads worth running for file I/O.
fn chunks<T>(mut items: Vec<T>) -> Vec<Vec<T>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let per = items.len().div_ceil(workers).max(1);
    let mut out = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(per.min(items.len()));
        out.push(std::mem::replace(&mut items, rest));
    }
    out
}

#[async_trait]
impl BlockStore for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn put(&self, tenant: TenantId, blocks: Vec<StoredBlock>) -> BackendResult<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let tasks: Vec<_> = chunks(blocks)
            .into_iter()
            .map(|chunk| {
                let store = self.clone();
                blocking(move || chunk.iter().try_for_each(|b| store.put_one(tenant, b)))
            })
            .collect();
        for result in futures::future::join_all(tasks).await {
            result?;
        }
        Ok(())
    }

    async fn sync(&self) -> BackendResult<()> {
        let store = self.clone();
        blocking(move || store.sync_all()).await
    }

    async fn get(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        let tasks: Vec<_> = chunks(hashes.to_vec())
            .into_iter()
            .map(|chunk| {
                let store = self.clone();
                blocking(move || {
                    let mut out = Vec::with_capacity(chunk.len());
                    for hash in chunk {
                        let path = store.path(tenant, &hash);
                        match std::fs::read(&path) {
                            Ok(bytes) => out.push(from_object(hash, bytes)?),
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => return Err(io_err("cannot read", &path, e)),
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(hashes.len());
        for result in futures::future::join_all(tasks).await {
            out.extend(result?);
        }
        Ok(out)
    }

    async fn delete(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<()> {
        let store = self.clone();
        let hashes = hashes.to_vec();
        blocking(move || {
            for hash in hashes {
                let path = store.path(tenant, &hash);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("cannot delete", &path, e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        tenant: TenantId,
        after: Option<BlockHash>,
        limit: usize,
    ) -> BackendResult<Vec<(BlockHash, SystemTime)>> {
        let store = self.clone();
        blocking(move || {
            let mut out = Vec::new();
            let first = after.map_or(0, |h| h.0[0]);
            for prefix in first..=u8::MAX {
                let dir = store.tenant_dir(tenant).join(format!("{prefix:02x}"));
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("cannot list", &dir, e)),
                };
                let mut found = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
                    let Some(hash) = entry.file_name().to_str().and_then(parse_hex) else {
                        continue;
                    };
                    if after.is_some_and(|a| hash <= a) {
                        continue;
                    }
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((hash, modified));
                }
                found.sort_unstable_by_key(|(h, _)| *h);
                for item in found {
                    if out.len() == limit {
                        return Ok(out);
                    }
                    out.push(item);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn copy(&self, from: TenantId, to: TenantId, hashes: &[BlockHash]) -> BackendResult<()> {
        let tasks: Vec<_> = chunks(hashes.to_vec())
            .into_iter()
            .map(|chunk| {
                let store = self.clone();
                blocking(move || {
                    for hash in chunk {
                        let (src, dst) = (store.path(from, &hash), store.path(to, &hash));
                        if dst.exists() {
                            continue;
                        }
                        if let Some(dir) = dst.parent() {
                            std::fs::create_dir_all(dir)
                                .map_err(|e| io_err("cannot create", dir, e))?;
                        }
                        // Objects are immutable: a hard link shares one without copying it.
                        match std::fs::hard_link(&src, &dst) {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                            Err(e) if e.kind() == ErrorKind::NotFound => {
                                return Err(BackendError::BlockMissing(hash));
                            }
                            Err(_) => {
                                std::fs::copy(&src, &dst)
                                    .map_err(|e| io_err("cannot copy", &src, e))?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for result in futures::future::join_all(tasks).await {
            result?;
        }
        let store = self.clone();
        blocking(move || store.sync_all()).await
    }

    async fn delete_tenant(&self, tenant: TenantId) -> BackendResult<()> {
        let dir = self.tenant_dir(tenant);
        blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot delete", &dir, e)),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn block(content: &[u8]) -> StoredBlock {
        StoredBlock {
            hash: BlockHash(*blake3::hash(content).as_bytes()),
            compressed: false,
            data: Bytes::copy_from_slice(content),
            parts: Vec::new(),
        }
    }

    #[tokio::test]
    async fn put_get_list_copy_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path().join("blocks"))
            .await
            .expect("open");
        let (a, b) = (block(b"alpha"), block(b"beta"));
        let (t1, t2) = (TenantId(1), TenantId(2));
        store
            .put(t1, vec![a.clone(), b.clone()])
            .await
            .expect("put");
        store
            .put(t1, vec![a.clone()])
            .await
            .expect("put again is a no-op");
        let mut got = store
            .get(t1, &[a.hash, b.hash, block(b"none").hash])
            .await
            .expect("get");
        got.sort_by_key(|x| x.data.clone());
        assert_eq!(got, vec![a.clone(), b.clone()]);
        assert!(
            store.get(t2, &[a.hash]).await.expect("get").is_empty(),
            "tenants apart"
        );

        let listed: Vec<BlockHash> = store
            .list(t1, None, 10)
            .await
            .expect("list")
            .into_iter()
            .map(|x| x.0)
            .collect();
        let mut want = vec![a.hash, b.hash];
        want.sort();
        assert_eq!(listed, want);
        let rest = store.list(t1, Some(want[0]), 10).await.expect("list");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, want[1]);

        store.copy(t1, t2, &[a.hash]).await.expect("copy");
        assert_eq!(
            store.get(t2, &[a.hash]).await.expect("get"),
            vec![a.clone()]
        );
        assert!(store.copy(t1, t2, &[block(b"none").hash]).await.is_err());

        store
            .delete(t1, &[a.hash, block(b"none").hash])
            .await
            .expect("delete");
        assert!(store.get(t1, &[a.hash]).await.expect("get").is_empty());
        assert_eq!(
            store.get(t2, &[a.hash]).await.expect("get").len(),
            1,
            "a copy stays"
        );
        store.delete_tenant(t1).await.expect("delete tenant");
        assert!(store.list(t1, None, 10).await.expect("list").is_empty());
    }
}
