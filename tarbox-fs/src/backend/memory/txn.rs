//! Transactions of the memory backend: writes apply in place under the tenant's gate and are
//! recorded in an undo log, which a transaction dropped without commit replays backwards.

use std::collections::BTreeMap;
use std::ops::Range;

use async_trait::async_trait;
use tokio::sync::OwnedMutexGuard;

use super::read::{
    dentry_row, inode_row, read_block_map, read_blocks, read_inode, read_list, read_lookup,
    read_patched_blocks, read_xattr_names, xattr_row,
};
use super::{DentryVal, MemoryBackend, TenantData};
use crate::backend::{
    BlockHash, BlockWrite, DentryRecord, LayerView, StoreRead, StoreTxn, StoredBlock,
};
use crate::error::{BackendError, BackendResult, QuotaKind};
use crate::types::{FileType, Ino, Inode, LayerId, Quota, Usage};

/// What a transaction changed, to put back if it is dropped uncommitted.
pub(super) enum Undo {
    Inode((Ino, LayerId), Option<Option<Inode>>),
    Dentry((Ino, Vec<u8>, LayerId), Option<DentryVal>),
    Map((Ino, u64, LayerId), Option<Option<BlockHash>>),
    Block(BlockHash, Option<(StoredBlock, u64)>),
    Xattr((Ino, Vec<u8>, LayerId), Option<Option<Vec<u8>>>),
    Usage(Usage),
    Orphan(Ino, Option<u64>),
}

pub(super) fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, val: Option<V>) -> Option<V> {
    match val {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    }
}

pub(super) struct MemoryTxn {
    pub(super) backend: MemoryBackend,
    pub(super) view: LayerView,
    pub(super) undo: Vec<Undo>,
    /// Strict audit events, appended at commit.
    pub(super) audit: Vec<crate::audit::AuditEvent>,
    pub(super) committed: bool,
    pub(super) _gate: OwnedMutexGuard<()>,
}

impl MemoryTxn {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut TenantData, &[LayerId], &mut Vec<Undo>) -> T,
    ) -> BackendResult<T> {
        let mut store = self.backend.lock();
        let d = store.tenant_data(self.view.tenant)?;
        Ok(f(d, &self.view.chain, &mut self.undo))
    }
}

/// Change a block's reference count by `delta`, releasing it at zero (see `TenantData::release`).
pub(super) fn adjust_ref(d: &mut TenantData, hash: BlockHash, delta: i64, undo: &mut Vec<Undo>) {
    let prev = d.blocks.get(&hash).cloned();
    undo.push(Undo::Block(hash, prev.clone()));
    if let Some((block, count)) = prev {
        let next = (count as i64 + delta).max(0) as u64;
        let parts = if next == 0 {
            block.parts.clone()
        } else {
            Vec::new()
        };
        d.blocks.insert(hash, (block, next));
        if next == 0 {
            d.release(hash);
            // A patched block that went releases what it named.
            if !d.blocks.contains_key(&hash) {
                for part in parts {
                    adjust_ref(d, part, -1, undo);
                }
            }
        }
    }
}

pub(super) fn set_map(
    d: &mut TenantData,
    key: (Ino, u64, LayerId),
    val: Option<Option<BlockHash>>,
    undo: &mut Vec<Undo>,
) {
    let prev = put(&mut d.block_map, key, val);
    // The new reference first: remapping an index to the block it already names must not let
    // that block's count reach zero (which deletes it) in between.
    if let Some(Some(new)) = val {
        adjust_ref(d, new, 1, undo);
    }
    if let Some(Some(old)) = prev {
        adjust_ref(d, old, -1, undo);
    }
    undo.push(Undo::Map(key, prev));
}

#[async_trait]
impl StoreRead for MemoryTxn {
    async fn inode(&mut self, ino: Ino) -> BackendResult<Option<Inode>> {
        self.with(|d, c, _| read_inode(d, ino, c))
    }
    async fn lookup(&mut self, parent: Ino, name: &[u8]) -> BackendResult<Option<DentryRecord>> {
        self.with(|d, c, _| read_lookup(d, parent, name, c))
    }
    async fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<DentryRecord>> {
        self.with(|d, c, _| read_list(d, parent, after, limit, c))
    }
    async fn dir_has_entries(&mut self, parent: Ino) -> BackendResult<bool> {
        self.with(|d, c, _| !read_list(d, parent, 0, 1, c).is_empty())
    }
    async fn block_map(
        &mut self,
        ino: Ino,
        range: Range<u64>,
    ) -> BackendResult<Vec<(u64, BlockHash)>> {
        self.with(|d, c, _| read_block_map(d, ino, range, c))
    }
    async fn blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.with(|d, _, _| read_blocks(d, hashes))
    }
    async fn patched_blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.with(|d, _, _| read_patched_blocks(d, hashes))
    }
    async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        self.with(|d, c, _| xattr_row(d, ino, name, c).cloned().flatten())
    }
    async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>> {
        self.with(|d, c, _| read_xattr_names(d, ino, c))
    }
}

#[async_trait]
impl StoreTxn for MemoryTxn {
    async fn put_inode(&mut self, inode: &Inode) -> BackendResult<()> {
        let head = self.view.head();
        self.with(|d, _, undo| {
            let key = (inode.ino, head);
            let prev = d.inodes.insert(key, Some(inode.clone()));
            undo.push(Undo::Inode(key, prev));
        })
    }

    async fn remove_inode(&mut self, ino: Ino) -> BackendResult<()> {
        let head = self.view.head();
        self.with(|d, chain, undo| {
            let older = &chain[1..];
            let key = (ino, head);
            let tomb = inode_row(d, ino, older).is_some().then_some(None);
            let prev = put(&mut d.inodes, key, tomb);
            undo.push(Undo::Inode(key, prev));
            let maps: Vec<_> = d
                .block_map
                .range((ino, 0, LayerId(i64::MIN))..(Ino(ino.0 + 1), 0, LayerId(i64::MIN)))
                .filter(|(k, _)| k.2 == head)
                .map(|(k, _)| *k)
                .collect();
            for k in maps {
                set_map(d, k, None, undo);
            }
            let attrs: Vec<_> = d
                .xattrs
                .range(
                    (ino, Vec::new(), LayerId(i64::MIN))
                        ..(Ino(ino.0 + 1), Vec::new(), LayerId(i64::MIN)),
                )
                .filter(|(k, _)| k.2 == head)
                .map(|(k, _)| k.clone())
                .collect();
            for k in attrs {
                let prev = d.xattrs.remove(&k);
                undo.push(Undo::Xattr(k, prev));
            }
        })
    }

    async fn bind(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileType,
    ) -> BackendResult<u64> {
        let head = self.view.head();
        let cookie = {
            let mut store = self.backend.lock();
            store.next_cookie += 1;
            store.next_cookie
        };
        self.with(|d, _, undo| {
            let key = (parent, name.to_vec(), head);
            let prev = d.dentries.insert(key.clone(), Some((ino, kind, cookie)));
            undo.push(Undo::Dentry(key, prev));
        })?;
        Ok(cookie)
    }

    async fn unbind(&mut self, parent: Ino, name: &[u8]) -> BackendResult<()> {
        let head = self.view.head();
        self.with(|d, chain, undo| {
            let older_live = matches!(dentry_row(d, parent, name, &chain[1..]), Some(Some(_)));
            let key = (parent, name.to_vec(), head);
            let prev = put(&mut d.dentries, key.clone(), older_live.then_some(None));
            undo.push(Undo::Dentry(key, prev));
        })
    }

    async fn write_blocks(
        &mut self,
        ino: Ino,
        writes: &[BlockWrite],
        new_blocks: &[StoredBlock],
    ) -> BackendResult<Vec<BlockHash>> {
        let head = self.view.head();
        self.with(|d, _, undo| {
            // New blocks enter with a zero count; the mappings below take their references, and a
            // block left at zero (named by no mapping) is released again at the end.
            let mut fresh = Vec::new();
            let mut patched = Vec::new();
            for b in new_blocks {
                if let std::collections::hash_map::Entry::Vacant(slot) = d.blocks.entry(b.hash) {
                    undo.push(Undo::Block(b.hash, None));
                    slot.insert((b.clone(), 0));
                    if b.data.is_empty() {
                        fresh.push(b.hash);
                    }
                    if !b.parts.is_empty() {
                        patched.push(b);
                    }
                }
            }
            // A patched block entering holds a reference to each of its parts, taken before any
            // mapping moves off them.
            for b in patched {
                for part in &b.parts {
                    if !d.blocks.contains_key(part) {
                        return Err(BackendError::Conflict);
                    }
                    adjust_ref(d, *part, 1, undo);
                }
            }
            for w in writes {
                // A block named but neither new nor stored (reaped since the engine saw it).
                if let Some(h) = w.block {
                    if !d.blocks.contains_key(&h) {
                        return Err(BackendError::Conflict);
                    }
                }
                set_map(d, (ino, w.index, head), Some(w.block), undo);
            }
            // Patched blocks first: releasing one releases its parts.
            for b in new_blocks.iter().rev() {
                if matches!(d.blocks.get(&b.hash), Some((_, 0))) {
                    adjust_ref(d, b.hash, 0, undo);
                }
            }
            Ok(fresh)
        })?
    }

    async fn reap_epoch(&mut self) -> BackendResult<u64> {
        self.with(|d, _, _| d.reap_epoch)
    }

    async fn truncate_blocks(&mut self, ino: Ino, first: u64) -> BackendResult<()> {
        let head = self.view.head();
        self.with(|d, chain, undo| {
            let keys: Vec<_> = d
                .block_map
                .range((ino, first, LayerId(i64::MIN))..(Ino(ino.0 + 1), 0, LayerId(i64::MIN)))
                .filter(|(k, _)| k.2 == head)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                set_map(d, k, None, undo);
            }
            let older: Vec<u64> = read_block_map(d, ino, first..u64::MAX, &chain[1..])
                .into_iter()
                .map(|(idx, _)| idx)
                .collect();
            for idx in older {
                set_map(d, (ino, idx, head), Some(None), undo);
            }
        })
    }

    async fn set_xattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> BackendResult<()> {
        let head = self.view.head();
        self.with(|d, chain, undo| {
            let key = (ino, name.to_vec(), head);
            let row = match value {
                Some(v) => Some(Some(v.to_vec())),
                // A removal only needs a marker if an older layer still has the attribute.
                None => {
                    matches!(xattr_row(d, ino, name, &chain[1..]), Some(Some(_))).then_some(None)
                }
            };
            let prev = put(&mut d.xattrs, key.clone(), row);
            undo.push(Undo::Xattr(key, prev));
        })
    }

    async fn charge(&mut self, bytes: i64, inodes: i64) -> BackendResult<Result<(), QuotaKind>> {
        let tenant = self.view.tenant;
        let quota: Quota = {
            let store = self.backend.lock();
            store
                .tenants
                .get(&tenant)
                .map(|t| t.quota)
                .ok_or(BackendError::TenantGone)?
        };
        self.with(|d, _, undo| {
            let u = d.usage;
            if let Some(kind) = quota.exceeded_by(u, bytes, inodes) {
                return Err(kind);
            }
            undo.push(Undo::Usage(u));
            d.usage = Usage {
                bytes: u.bytes.saturating_add_signed(bytes),
                inodes: u.inodes.saturating_add_signed(inodes),
            };
            Ok(())
        })
    }

    async fn add_orphan(&mut self, ino: Ino, session: u64) -> BackendResult<()> {
        self.with(|d, _, undo| {
            let prev = d.orphans.insert(ino, session);
            undo.push(Undo::Orphan(ino, prev));
        })
    }

    async fn remove_orphan(&mut self, ino: Ino) -> BackendResult<()> {
        self.with(|d, _, undo| {
            let prev = d.orphans.remove(&ino);
            undo.push(Undo::Orphan(ino, prev));
        })
    }

    async fn record_audit(&mut self, event: &crate::audit::AuditEvent) -> BackendResult<()> {
        self.audit.push(event.clone());
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> BackendResult<()> {
        self.committed = true;
        let events = std::mem::take(&mut self.audit);
        if !events.is_empty() {
            self.backend.audit_log().append(events);
        }
        Ok(())
    }
}

impl Drop for MemoryTxn {
    fn drop(&mut self) {
        if self.committed || self.undo.is_empty() {
            return;
        }
        let mut store = self.backend.lock();
        let Some(d) = store.data.get_mut(&self.view.tenant) else {
            return;
        };
        for u in self.undo.drain(..).rev() {
            match u {
                Undo::Inode(k, v) => {
                    put(&mut d.inodes, k, v);
                }
                Undo::Dentry(k, v) => {
                    put(&mut d.dentries, k, v);
                }
                Undo::Map(k, v) => {
                    put(&mut d.block_map, k, v);
                }
                Undo::Block(h, v) => match v {
                    Some(b) => {
                        d.blocks.insert(h, b);
                    }
                    None => {
                        d.blocks.remove(&h);
                    }
                },
                Undo::Xattr(k, v) => {
                    put(&mut d.xattrs, k, v);
                }
                Undo::Usage(u) => d.usage = u,
                Undo::Orphan(ino, v) => match v {
                    Some(s) => {
                        d.orphans.insert(ino, s);
                    }
                    None => {
                        d.orphans.remove(&ino);
                    }
                },
            }
        }
    }
}
