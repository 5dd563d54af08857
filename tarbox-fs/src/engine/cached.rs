//! The store as a volume sees it through the metadata cache (`meta_cache.rs`): a reader that
//! answers inodes and names from memory, and a transaction that keeps the cache right about
//! what it writes and tells the other engines at commit.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;

use super::meta_cache::{Key, TenantMeta, Value};
use crate::backend::changes::Change;
use crate::backend::{
    Backend, BlockHash, BlockWrite, DentryRecord, StoreRead, StoreTxn, StoredBlock,
};
use crate::error::{BackendError, BackendResult, QuotaKind};
use crate::types::{FileType, Ino, Inode, LayerId, TenantId};

/// Reads of committed data, inodes and names from the cache when it has them.
pub(super) struct CachedReader {
    pub inner: Box<dyn StoreRead>,
    pub meta: Arc<TenantMeta>,
    pub head: LayerId,
    /// Ask the store even when the cache has the answer (and refresh the cache with it): an
    /// `open` reads the inode fresh, which is what makes close-to-open consistency hold across
    /// engines whatever the feed's delay.
    pub fresh: bool,
}

impl CachedReader {
    fn cached_inode(&self, ino: Ino) -> Option<Inode> {
        if self.fresh {
            return None;
        }
        self.meta.inode(self.head, ino)
    }

    fn cached_entry(&self, parent: Ino, name: &[u8]) -> Option<Option<DentryRecord>> {
        if self.fresh {
            return None;
        }
        self.meta.entry(self.head, parent, name)
    }

    fn offer_inode(&self, since: u64, inode: &Inode) {
        self.meta.offer(
            self.head,
            since,
            Key::Inode(inode.ino),
            Value::Inode(inode.clone()),
        );
    }

    fn offer_entry(&self, since: u64, parent: Ino, name: &[u8], entry: Option<DentryRecord>) {
        self.meta.offer(
            self.head,
            since,
            Key::Entry(parent, Box::from(name)),
            Value::Entry(entry),
        );
    }
}

#[async_trait]
impl StoreRead for CachedReader {
    async fn inode(&mut self, ino: Ino) -> BackendResult<Option<Inode>> {
        if let Some(inode) = self.cached_inode(ino) {
            return Ok(Some(inode));
        }
        let since = self.meta.epoch();
        let found = self.inner.inode(ino).await?;
        if let Some(inode) = &found {
            self.offer_inode(since, inode);
        }
        Ok(found)
    }

    async fn inodes(&mut self, inos: &[Ino]) -> BackendResult<Vec<Inode>> {
        let mut out = Vec::with_capacity(inos.len());
        let mut missing = Vec::new();
        for &ino in inos {
            match self.cached_inode(ino) {
                Some(inode) => out.push(inode),
                None => missing.push(ino),
            }
        }
        if !missing.is_empty() {
            let since = self.meta.epoch();
            let found = self.inner.inodes(&missing).await?;
            for inode in &found {
                self.offer_inode(since, inode);
            }
            out.extend(found);
        }
        Ok(out)
    }

    async fn lookup(&mut self, parent: Ino, name: &[u8]) -> BackendResult<Option<DentryRecord>> {
        if let Some(entry) = self.cached_entry(parent, name) {
            return Ok(entry);
        }
        let since = self.meta.epoch();
        let found = self.inner.lookup(parent, name).await?;
        self.offer_entry(since, parent, name, found.clone());
        Ok(found)
    }

    async fn lookup_inode(
        &mut self,
        parent: Ino,
        name: &[u8],
    ) -> BackendResult<Option<(DentryRecord, Inode)>> {
        match self.cached_entry(parent, name) {
            Some(None) => return Ok(None),
            Some(Some(entry)) => {
                if let Some(inode) = self.cached_inode(entry.ino) {
                    return Ok(Some((entry, inode)));
                }
            }
            None => {}
        }
        let since = self.meta.epoch();
        let found = self.inner.lookup_inode(parent, name).await?;
        match &found {
            Some((entry, inode)) => {
                self.offer_entry(since, parent, name, Some(entry.clone()));
                self.offer_inode(since, inode);
            }
            None => self.offer_entry(since, parent, name, None),
        }
        Ok(found)
    }

    async fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<DentryRecord>> {
        let since = self.meta.epoch();
        let entries = self.inner.list_dir(parent, after, limit).await?;
        // `ls -l` looks up every name it lists.
        for entry in &entries {
            self.offer_entry(since, parent, &entry.name, Some(entry.clone()));
        }
        Ok(entries)
    }

    async fn dir_has_entries(&mut self, parent: Ino) -> BackendResult<bool> {
        self.inner.dir_has_entries(parent).await
    }

    async fn block_map(
        &mut self,
        ino: Ino,
        range: Range<u64>,
    ) -> BackendResult<Vec<(u64, BlockHash)>> {
        self.inner.block_map(ino, range).await
    }

    async fn blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.inner.blocks(hashes).await
    }

    async fn patched_blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.inner.patched_blocks(hashes).await
    }

    async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        self.inner.xattr(ino, name).await
    }

    async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>> {
        self.inner.xattr_names(ino).await
    }
}

/// A transaction that marks what it writes in the cache, replaces it at commit and announces
/// it (see `meta_cache.rs` for the rules).
pub(super) struct TrackedTxn {
    inner: Option<Box<dyn StoreTxn>>,
    meta: Arc<TenantMeta>,
    backend: Arc<dyn Backend>,
    tenant: TenantId,
    head: LayerId,
    /// The volume writing, so that its own kernel is not told.
    volume: u64,
    /// Keys written (each marked pending in the cache at its first write), in order, each with
    /// its newest value.
    writes: Vec<(Key, Option<Value>)>,
    /// What else to announce (inodes whose xattrs or blocks changed).
    touched: HashSet<Ino>,
}

impl TrackedTxn {
    pub(super) fn new(
        inner: Box<dyn StoreTxn>,
        meta: Arc<TenantMeta>,
        backend: Arc<dyn Backend>,
        (tenant, head, volume): (TenantId, LayerId, u64),
    ) -> TrackedTxn {
        TrackedTxn {
            inner: Some(inner),
            meta,
            backend,
            tenant,
            head,
            volume,
            writes: Vec::new(),
            touched: HashSet::new(),
        }
    }

    fn txn(&mut self) -> BackendResult<&mut (dyn StoreTxn + 'static)> {
        // Present until commit consumes the transaction (and with it `self`).
        self.inner
            .as_deref_mut()
            .ok_or_else(|| BackendError::Other("transaction used after its commit".into()))
    }

    /// Record `value` as `key`'s newest; the first write of a key marks it pending.
    fn write(&mut self, key: Key, value: Option<Value>) {
        match self.writes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => {
                self.meta.begin_write(&key);
                self.writes.push((key, value));
            }
        }
    }
}

impl Drop for TrackedTxn {
    fn drop(&mut self) {
        // Not committed (an error, a retry): the transaction is rolled back first, then the
        // keys are forgotten, never filled.
        drop(self.inner.take());
        if !self.writes.is_empty() {
            let writes = std::mem::take(&mut self.writes);
            self.meta.end_writes(self.head, writes, false);
        }
    }
}

#[async_trait]
impl StoreRead for TrackedTxn {
    async fn inode(&mut self, ino: Ino) -> BackendResult<Option<Inode>> {
        let found = self.txn()?.inode(ino).await?;
        let value = found.clone().map(Value::Inode);
        self.meta.check(self.head, Key::Inode(ino), value.as_ref());
        Ok(found)
    }

    async fn inodes(&mut self, inos: &[Ino]) -> BackendResult<Vec<Inode>> {
        self.txn()?.inodes(inos).await
    }

    async fn lookup(&mut self, parent: Ino, name: &[u8]) -> BackendResult<Option<DentryRecord>> {
        let found = self.txn()?.lookup(parent, name).await?;
        self.meta.check(
            self.head,
            Key::Entry(parent, Box::from(name)),
            Some(&Value::Entry(found.clone())),
        );
        Ok(found)
    }

    async fn lookup_inode(
        &mut self,
        parent: Ino,
        name: &[u8],
    ) -> BackendResult<Option<(DentryRecord, Inode)>> {
        self.txn()?.lookup_inode(parent, name).await
    }

    async fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<DentryRecord>> {
        self.txn()?.list_dir(parent, after, limit).await
    }

    async fn dir_has_entries(&mut self, parent: Ino) -> BackendResult<bool> {
        self.txn()?.dir_has_entries(parent).await
    }

    async fn block_map(
        &mut self,
        ino: Ino,
        range: Range<u64>,
    ) -> BackendResult<Vec<(u64, BlockHash)>> {
        self.txn()?.block_map(ino, range).await
    }

    async fn blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.txn()?.blocks(hashes).await
    }

    async fn patched_blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.txn()?.patched_blocks(hashes).await
    }

    async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        self.txn()?.xattr(ino, name).await
    }

    async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>> {
        self.txn()?.xattr_names(ino).await
    }
}

#[async_trait]
impl StoreTxn for TrackedTxn {
    async fn put_inode(&mut self, inode: &Inode) -> BackendResult<()> {
        self.write(Key::Inode(inode.ino), Some(Value::Inode(inode.clone())));
        self.txn()?.put_inode(inode).await
    }

    async fn remove_inode(&mut self, ino: Ino) -> BackendResult<()> {
        self.write(Key::Inode(ino), None);
        self.txn()?.remove_inode(ino).await
    }

    async fn bind(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileType,
    ) -> BackendResult<u64> {
        let key = Key::Entry(parent, Box::from(name));
        // Marked before the write, with no value until the store gave the cookie: a failure
        // in between leaves the key forgotten.
        self.write(key.clone(), None);
        let cookie = self.txn()?.bind(parent, name, ino, kind).await?;
        let entry = DentryRecord {
            name: name.to_vec(),
            ino,
            kind,
            cookie,
        };
        self.write(key, Some(Value::Entry(Some(entry))));
        Ok(cookie)
    }

    async fn create_entry(
        &mut self,
        dir: &Inode,
        name: &[u8],
        inode: &Inode,
        bytes: i64,
    ) -> BackendResult<Result<u64, QuotaKind>> {
        let entry = Key::Entry(dir.ino, Box::from(name));
        self.write(Key::Inode(inode.ino), None);
        self.write(Key::Inode(dir.ino), None);
        self.write(entry.clone(), None);
        let created = self.txn()?.create_entry(dir, name, inode, bytes).await?;
        if let Ok(cookie) = created {
            self.write(Key::Inode(inode.ino), Some(Value::Inode(inode.clone())));
            self.write(Key::Inode(dir.ino), Some(Value::Inode(dir.clone())));
            let bound = DentryRecord {
                name: name.to_vec(),
                ino: inode.ino,
                kind: inode.kind,
                cookie,
            };
            self.write(entry, Some(Value::Entry(Some(bound))));
        }
        Ok(created)
    }

    async fn unbind(&mut self, parent: Ino, name: &[u8]) -> BackendResult<()> {
        self.write(
            Key::Entry(parent, Box::from(name)),
            Some(Value::Entry(None)),
        );
        self.txn()?.unbind(parent, name).await
    }

    async fn write_blocks(
        &mut self,
        ino: Ino,
        writes: &[BlockWrite],
        new_blocks: &[StoredBlock],
    ) -> BackendResult<Vec<BlockHash>> {
        self.touched.insert(ino);
        self.txn()?.write_blocks(ino, writes, new_blocks).await
    }

    async fn reap_epoch(&mut self) -> BackendResult<u64> {
        self.txn()?.reap_epoch().await
    }

    async fn truncate_blocks(&mut self, ino: Ino, first: u64) -> BackendResult<()> {
        self.touched.insert(ino);
        self.txn()?.truncate_blocks(ino, first).await
    }

    async fn set_xattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> BackendResult<()> {
        self.touched.insert(ino);
        self.txn()?.set_xattr(ino, name, value).await
    }

    async fn charge(&mut self, bytes: i64, inodes: i64) -> BackendResult<Result<(), QuotaKind>> {
        self.txn()?.charge(bytes, inodes).await
    }

    async fn add_orphan(&mut self, ino: Ino, session: u64) -> BackendResult<()> {
        self.txn()?.add_orphan(ino, session).await
    }

    async fn remove_orphan(&mut self, ino: Ino) -> BackendResult<()> {
        self.txn()?.remove_orphan(ino).await
    }

    async fn record_audit(&mut self, event: &crate::audit::AuditEvent) -> BackendResult<()> {
        self.txn()?.record_audit(event).await
    }

    async fn commit(mut self: Box<Self>) -> BackendResult<()> {
        let Some(inner) = self.inner.take() else {
            return Ok(());
        };
        let result = inner.commit().await;
        let writes = std::mem::take(&mut self.writes);
        let changes = self.changes_of(&writes);
        self.meta.end_writes(self.head, writes, result.is_ok());
        // A failed commit may still have applied (its outcome is unknown): tell the others
        // either way, so they forget rather than guess.
        if !changes.is_empty() {
            self.meta
                .announce(self.backend.as_ref(), self.tenant, self.volume, changes);
        }
        result
    }
}

impl TrackedTxn {
    fn changes_of(&self, writes: &[(Key, Option<Value>)]) -> Vec<Change> {
        let mut changes: Vec<Change> = writes
            .iter()
            .map(|(key, _)| match key {
                Key::Inode(ino) => Change::Inode(*ino),
                Key::Entry(parent, name) => Change::Entry(*parent, name.to_vec()),
            })
            .collect();
        for ino in &self.touched {
            if !writes.iter().any(|(k, _)| *k == Key::Inode(*ino)) {
                changes.push(Change::Inode(*ino));
            }
        }
        changes
    }
}
