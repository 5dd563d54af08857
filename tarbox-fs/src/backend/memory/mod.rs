//! The in-memory backend: the embedded default and what unit tests run on.
//!
//! It implements the same contract as the PostgreSQL backend, layers and all, so the engine's
//! behaviour does not depend on which one is used. Transactions of one tenant are serialized by a
//! per-tenant gate (an async mutex) that readers also pass through, so no reader ever sees an
//! uncommitted write. Writes apply in place and are recorded in an undo log; a transaction dropped
//! without commit replays the log backwards.

mod audit;
mod layers;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::{
    Backend, BlockHash, BlockWrite, DentryRecord, LayerChanges, LayerRecord, LayerView, NewTenant,
    Orphan, StoreRead, StoreTxn, StoredBlock, TenantAudit, TenantRecord, TenantState,
};
use crate::error::{BackendError, BackendResult, QuotaKind};
use crate::types::{FileType, Ino, Inode, LayerId, Quota, TenantId, Timestamp, Usage};

/// A directory entry row: `None` is a whiteout.
type DentryVal = Option<(Ino, FileType, u64)>;

#[derive(Debug, Default)]
struct TenantData {
    /// `None` is a tombstone.
    inodes: BTreeMap<(Ino, LayerId), Option<Inode>>,
    dentries: BTreeMap<(Ino, Vec<u8>, LayerId), DentryVal>,
    /// `None` is a hole.
    block_map: BTreeMap<(Ino, u64, LayerId), Option<BlockHash>>,
    blocks: HashMap<BlockHash, (StoredBlock, u64)>,
    /// `None` is a removed attribute.
    xattrs: BTreeMap<(Ino, Vec<u8>, LayerId), Option<Vec<u8>>>,
    usage: Usage,
    next_ino: u64,
    /// ino -> session
    orphans: BTreeMap<Ino, u64>,
}

#[derive(Debug, Default)]
struct Store {
    tenants: BTreeMap<TenantId, TenantRecord>,
    layers: BTreeMap<(TenantId, LayerId), LayerRecord>,
    data: HashMap<TenantId, TenantData>,
    next_tenant: i64,
    next_layer: i64,
    next_cookie: u64,
    /// session -> (last heartbeat, closed)
    sessions: BTreeMap<u64, (Timestamp, bool)>,
    next_session: u64,
}

impl Store {
    fn tenant_data(&mut self, tenant: TenantId) -> BackendResult<&mut TenantData> {
        self.data.get_mut(&tenant).ok_or(BackendError::TenantGone)
    }
}

/// The in-memory store. Cloning shares the store.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    store: Arc<Mutex<Store>>,
    /// The audit table, under its own lock: writing the trail never waits on file operations.
    audit: Arc<Mutex<audit::AuditLog>>,
    gates: Arc<Mutex<HashMap<TenantId, Arc<AsyncMutex<()>>>>>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves data that is still structurally valid.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn audit_log(&self) -> MutexGuard<'_, audit::AuditLog> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gate(&self, tenant: TenantId) -> Arc<AsyncMutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(tenant).or_default().clone()
    }
}

/// The newest row of `prefix` visible through `chain`, among keys `(prefix.., layer)`.
fn newest<'a, K: Ord + Clone, V>(
    map: &'a BTreeMap<K, V>,
    range: Range<K>,
    layer_of: impl Fn(&K) -> LayerId,
    chain: &[LayerId],
) -> Option<&'a V> {
    map.range(range)
        .rev()
        .find(|(k, _)| chain.contains(&layer_of(k)))
        .map(|(_, v)| v)
}

fn inode_row<'a>(d: &'a TenantData, ino: Ino, chain: &[LayerId]) -> Option<&'a Option<Inode>> {
    newest(
        &d.inodes,
        (ino, LayerId(i64::MIN))..(ino, LayerId(i64::MAX)),
        |k| k.1,
        chain,
    )
}

fn dentry_row<'a>(
    d: &'a TenantData,
    parent: Ino,
    name: &[u8],
    chain: &[LayerId],
) -> Option<&'a DentryVal> {
    newest(
        &d.dentries,
        (parent, name.to_vec(), LayerId(i64::MIN))..(parent, name.to_vec(), LayerId(i64::MAX)),
        |k| k.2,
        chain,
    )
}

fn xattr_row<'a>(
    d: &'a TenantData,
    ino: Ino,
    name: &[u8],
    chain: &[LayerId],
) -> Option<&'a Option<Vec<u8>>> {
    newest(
        &d.xattrs,
        (ino, name.to_vec(), LayerId(i64::MIN))..(ino, name.to_vec(), LayerId(i64::MAX)),
        |k| k.2,
        chain,
    )
}

/// Live entries of `parent`, each name resolved through the chain.
fn live_entries(d: &TenantData, parent: Ino, chain: &[LayerId]) -> Vec<DentryRecord> {
    let lo = (parent, Vec::new(), LayerId(i64::MIN));
    let hi = (Ino(parent.0 + 1), Vec::new(), LayerId(i64::MIN));
    let mut out: Vec<DentryRecord> = Vec::new();
    let mut current: Option<(&Vec<u8>, LayerId, &DentryVal)> = None;
    let flush = |cur: Option<(&Vec<u8>, LayerId, &DentryVal)>, out: &mut Vec<DentryRecord>| {
        if let Some((name, _, Some((ino, kind, cookie)))) = cur {
            out.push(DentryRecord {
                name: name.clone(),
                ino: *ino,
                kind: *kind,
                cookie: *cookie,
            });
        }
    };
    for ((_, name, layer), val) in d.dentries.range(lo..hi) {
        if !chain.contains(layer) {
            continue;
        }
        match current {
            Some((n, l, _)) if n == name => {
                if *layer > l {
                    current = Some((name, *layer, val));
                }
            }
            _ => {
                flush(current.take(), &mut out);
                current = Some((name, *layer, val));
            }
        }
    }
    flush(current, &mut out);
    out
}

fn read_inode(d: &TenantData, ino: Ino, chain: &[LayerId]) -> Option<Inode> {
    inode_row(d, ino, chain).cloned().flatten()
}

fn read_lookup(
    d: &TenantData,
    parent: Ino,
    name: &[u8],
    chain: &[LayerId],
) -> Option<DentryRecord> {
    match dentry_row(d, parent, name, chain) {
        Some(Some((ino, kind, cookie))) => Some(DentryRecord {
            name: name.to_vec(),
            ino: *ino,
            kind: *kind,
            cookie: *cookie,
        }),
        _ => None,
    }
}

fn read_list(
    d: &TenantData,
    parent: Ino,
    after: u64,
    limit: usize,
    chain: &[LayerId],
) -> Vec<DentryRecord> {
    let mut entries: Vec<DentryRecord> = live_entries(d, parent, chain)
        .into_iter()
        .filter(|e| e.cookie > after)
        .collect();
    entries.sort_by_key(|e| e.cookie);
    entries.truncate(limit);
    entries
}

fn read_block_map(
    d: &TenantData,
    ino: Ino,
    range: Range<u64>,
    chain: &[LayerId],
) -> Vec<(u64, BlockHash)> {
    let mut out: BTreeMap<u64, (LayerId, Option<BlockHash>)> = BTreeMap::new();
    let lo = (ino, range.start, LayerId(i64::MIN));
    let hi = (ino, range.end, LayerId(i64::MIN));
    if range.start >= range.end {
        return Vec::new();
    }
    for ((_, idx, layer), hash) in d.block_map.range(lo..hi) {
        if !chain.contains(layer) {
            continue;
        }
        let slot = out.entry(*idx).or_insert((*layer, *hash));
        if *layer > slot.0 {
            *slot = (*layer, *hash);
        }
    }
    out.into_iter()
        .filter_map(|(idx, (_, h))| h.map(|h| (idx, h)))
        .collect()
}

fn read_blocks(d: &TenantData, hashes: &[BlockHash]) -> Vec<StoredBlock> {
    hashes
        .iter()
        .filter_map(|h| d.blocks.get(h).map(|(b, _)| b.clone()))
        .collect()
}

fn read_xattr_names(d: &TenantData, ino: Ino, chain: &[LayerId]) -> Vec<Vec<u8>> {
    let lo = (ino, Vec::new(), LayerId(i64::MIN));
    let hi = (Ino(ino.0 + 1), Vec::new(), LayerId(i64::MIN));
    let mut newest: BTreeMap<&Vec<u8>, (LayerId, bool)> = BTreeMap::new();
    for ((_, name, layer), val) in d.xattrs.range(lo..hi) {
        if !chain.contains(layer) {
            continue;
        }
        let slot = newest.entry(name).or_insert((*layer, val.is_some()));
        if *layer > slot.0 {
            *slot = (*layer, val.is_some());
        }
    }
    newest
        .into_iter()
        .filter(|(_, (_, live))| *live)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Out-of-transaction reader: passes the tenant gate for each call so it never sees a transaction
/// in progress.
struct MemoryReader {
    backend: MemoryBackend,
    view: LayerView,
}

impl MemoryReader {
    async fn with<T>(&self, f: impl FnOnce(&TenantData, &[LayerId]) -> T) -> BackendResult<T> {
        let gate = self.backend.gate(self.view.tenant);
        let _pass = gate.lock().await;
        let store = self.backend.lock();
        let d = store
            .data
            .get(&self.view.tenant)
            .ok_or(BackendError::TenantGone)?;
        Ok(f(d, &self.view.chain))
    }
}

#[async_trait]
impl StoreRead for MemoryReader {
    async fn inode(&mut self, ino: Ino) -> BackendResult<Option<Inode>> {
        self.with(|d, c| read_inode(d, ino, c)).await
    }
    async fn lookup(&mut self, parent: Ino, name: &[u8]) -> BackendResult<Option<DentryRecord>> {
        self.with(|d, c| read_lookup(d, parent, name, c)).await
    }
    async fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<DentryRecord>> {
        self.with(|d, c| read_list(d, parent, after, limit, c))
            .await
    }
    async fn dir_has_entries(&mut self, parent: Ino) -> BackendResult<bool> {
        self.with(|d, c| !read_list(d, parent, 0, 1, c).is_empty())
            .await
    }
    async fn block_map(
        &mut self,
        ino: Ino,
        range: Range<u64>,
    ) -> BackendResult<Vec<(u64, BlockHash)>> {
        self.with(|d, c| read_block_map(d, ino, range, c)).await
    }
    async fn blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.with(|d, _| read_blocks(d, hashes)).await
    }
    async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        self.with(|d, c| xattr_row(d, ino, name, c).cloned().flatten())
            .await
    }
    async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>> {
        self.with(|d, c| read_xattr_names(d, ino, c)).await
    }
}

/// What a transaction changed, to put back if it is dropped uncommitted.
enum Undo {
    Inode((Ino, LayerId), Option<Option<Inode>>),
    Dentry((Ino, Vec<u8>, LayerId), Option<DentryVal>),
    Map((Ino, u64, LayerId), Option<Option<BlockHash>>),
    Block(BlockHash, Option<(StoredBlock, u64)>),
    Xattr((Ino, Vec<u8>, LayerId), Option<Option<Vec<u8>>>),
    Usage(Usage),
    Orphan(Ino, Option<u64>),
}

fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, val: Option<V>) -> Option<V> {
    match val {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    }
}

struct MemoryTxn {
    backend: MemoryBackend,
    view: LayerView,
    undo: Vec<Undo>,
    /// Strict audit events, appended at commit.
    audit: Vec<crate::audit::AuditEvent>,
    committed: bool,
    _gate: OwnedMutexGuard<()>,
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

/// Change a block's reference count by `delta`, deleting it at zero.
fn adjust_ref(d: &mut TenantData, hash: BlockHash, delta: i64, undo: &mut Vec<Undo>) {
    let prev = d.blocks.get(&hash).cloned();
    undo.push(Undo::Block(hash, prev.clone()));
    if let Some((block, count)) = prev {
        let next = count as i64 + delta;
        if next <= 0 {
            d.blocks.remove(&hash);
        } else {
            d.blocks.insert(hash, (block, next as u64));
        }
    }
}

fn set_map(
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
    ) -> BackendResult<()> {
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
        })
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
    ) -> BackendResult<()> {
        let head = self.view.head();
        self.with(|d, _, undo| {
            // New blocks enter with a zero count; the mappings below take their references, and a
            // block left at zero (named by no mapping) is dropped again at the end.
            for b in new_blocks {
                if let std::collections::hash_map::Entry::Vacant(slot) = d.blocks.entry(b.hash) {
                    undo.push(Undo::Block(b.hash, None));
                    slot.insert((b.clone(), 0));
                }
            }
            for w in writes {
                set_map(d, (ino, w.index, head), Some(w.block), undo);
            }
            for b in new_blocks {
                if matches!(d.blocks.get(&b.hash), Some((_, 0))) {
                    adjust_ref(d, b.hash, 0, undo);
                }
            }
        })
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
            let nb = u.bytes.saturating_add_signed(bytes);
            let ni = u.inodes.saturating_add_signed(inodes);
            if bytes > 0 && quota.bytes.is_some_and(|q| nb > q) {
                return Err(QuotaKind::Bytes);
            }
            if inodes > 0 && quota.inodes.is_some_and(|q| ni > q) {
                return Err(QuotaKind::Inodes);
            }
            undo.push(Undo::Usage(u));
            d.usage = Usage {
                bytes: nb,
                inodes: ni,
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

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn create_tenant(&self, new: &NewTenant) -> BackendResult<TenantRecord> {
        let mut store = self.lock();
        if store.tenants.values().any(|t| t.name == new.name) {
            return Err(BackendError::TenantExists);
        }
        store.next_tenant += 1;
        store.next_layer += 1;
        let id = TenantId(store.next_tenant);
        let layer = LayerId(store.next_layer);
        let record = TenantRecord {
            id,
            name: new.name.clone(),
            state: TenantState::Active,
            head_layer: layer,
            block_size: new.block_size,
            compression: new.compression,
            quota: new.quota,
            created_at: new.created_at,
            auto_checkpoint_secs: None,
            audit: TenantAudit::default(),
        };
        store.layers.insert(
            (id, layer),
            LayerRecord {
                id: layer,
                tenant: id,
                parent: None,
                name: None,
                description: "base".into(),
                created_at: new.created_at,
                frozen_at: None,
                usage: None,
            },
        );
        let mut data = TenantData {
            usage: Usage {
                bytes: 0,
                inodes: 1,
            },
            next_ino: Ino::ROOT.0 + 1,
            ..TenantData::default()
        };
        data.inodes
            .insert((Ino::ROOT, layer), Some(new.root.clone()));
        store.data.insert(id, data);
        store.tenants.insert(id, record.clone());
        Ok(record)
    }

    async fn tenant_by_name(&self, name: &str) -> BackendResult<Option<TenantRecord>> {
        Ok(self
            .lock()
            .tenants
            .values()
            .find(|t| t.name == name)
            .cloned())
    }

    async fn tenant_by_id(&self, id: TenantId) -> BackendResult<Option<TenantRecord>> {
        Ok(self.lock().tenants.get(&id).cloned())
    }

    async fn list_tenants(&self) -> BackendResult<Vec<TenantRecord>> {
        let mut all: Vec<_> = self.lock().tenants.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn set_quota(&self, tenant: TenantId, quota: Quota) -> BackendResult<()> {
        let mut store = self.lock();
        let t = store
            .tenants
            .get_mut(&tenant)
            .ok_or(BackendError::TenantGone)?;
        t.quota = quota;
        Ok(())
    }

    async fn usage(&self, tenant: TenantId) -> BackendResult<Usage> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        Ok(self.lock().tenant_data(tenant)?.usage)
    }

    async fn mark_tenant_deleted(&self, tenant: TenantId) -> BackendResult<bool> {
        let mut store = self.lock();
        let t = store
            .tenants
            .get_mut(&tenant)
            .ok_or(BackendError::TenantGone)?;
        let was_active = t.state == TenantState::Active;
        t.state = TenantState::Deleted;
        Ok(was_active)
    }

    async fn purge_tenant(&self, tenant: TenantId) -> BackendResult<()> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        let mut store = self.lock();
        match store.tenants.get(&tenant) {
            Some(t) if t.state == TenantState::Deleted => {}
            Some(_) => {
                return Err(BackendError::Config(
                    "refusing to purge a tenant that is not marked deleted".into(),
                ));
            }
            None => return Ok(()),
        }
        store.tenants.remove(&tenant);
        store.data.remove(&tenant);
        store.layers.retain(|(t, _), _| *t != tenant);
        Ok(())
    }

    async fn alloc_inodes(&self, tenant: TenantId, count: u64) -> BackendResult<u64> {
        let mut store = self.lock();
        let d = store.tenant_data(tenant)?;
        let first = d.next_ino;
        d.next_ino += count;
        Ok(first)
    }

    async fn layers(&self, tenant: TenantId) -> BackendResult<Vec<LayerRecord>> {
        let store = self.lock();
        Ok(store
            .layers
            .range((tenant, LayerId(i64::MIN))..=(tenant, LayerId(i64::MAX)))
            .map(|(_, l)| l.clone())
            .collect())
    }

    async fn set_auto_checkpoint(&self, tenant: TenantId, secs: Option<u64>) -> BackendResult<()> {
        let mut store = self.lock();
        let t = store
            .tenants
            .get_mut(&tenant)
            .ok_or(BackendError::TenantGone)?;
        t.auto_checkpoint_secs = secs;
        Ok(())
    }

    async fn set_audit(&self, tenant: TenantId, audit: TenantAudit) -> BackendResult<()> {
        let mut store = self.lock();
        let t = store
            .tenants
            .get_mut(&tenant)
            .ok_or(BackendError::TenantGone)?;
        t.audit = audit;
        Ok(())
    }

    async fn checkpoint(
        &self,
        tenant: TenantId,
        head: LayerId,
        name: &str,
        description: &str,
        now: Timestamp,
    ) -> BackendResult<LayerRecord> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        layers::checkpoint(&mut self.lock(), tenant, head, name, description, now)
    }

    async fn switch_layer(
        &self,
        tenant: TenantId,
        head: LayerId,
        target: LayerId,
        now: Timestamp,
    ) -> BackendResult<LayerRecord> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        layers::switch(&mut self.lock(), tenant, head, target, now)
    }

    async fn drop_layer(
        &self,
        tenant: TenantId,
        head: LayerId,
        layer: LayerId,
        children: &[LayerId],
    ) -> BackendResult<()> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        layers::drop_layer(&mut self.lock(), tenant, head, layer, children)
    }

    async fn layer_is_empty(&self, tenant: TenantId, layer: LayerId) -> BackendResult<bool> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        Ok(layers::is_empty(self.lock().tenant_data(tenant)?, layer))
    }

    async fn layer_changes(
        &self,
        tenant: TenantId,
        layers: &[LayerId],
    ) -> BackendResult<LayerChanges> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        Ok(layers::changes(self.lock().tenant_data(tenant)?, layers))
    }

    fn reader(&self, view: &LayerView) -> Box<dyn StoreRead> {
        Box::new(MemoryReader {
            backend: self.clone(),
            view: view.clone(),
        })
    }

    async fn begin(&self, view: &LayerView, _locks: &[Ino]) -> BackendResult<Box<dyn StoreTxn>> {
        // One transaction per tenant at a time: stronger than the per-inode locks the contract
        // asks for, and free of deadlocks.
        let gate = self.gate(view.tenant).lock_owned().await;
        {
            let store = self.lock();
            let t = store
                .tenants
                .get(&view.tenant)
                .ok_or(BackendError::TenantGone)?;
            if t.state != TenantState::Active {
                return Err(BackendError::TenantGone);
            }
            if t.head_layer != view.head() {
                return Err(BackendError::StaleView);
            }
        }
        Ok(Box::new(MemoryTxn {
            backend: self.clone(),
            view: view.clone(),
            undo: Vec::new(),
            audit: Vec::new(),
            committed: false,
            _gate: gate,
        }))
    }

    async fn open_session(&self, _description: &str, now: Timestamp) -> BackendResult<u64> {
        let mut store = self.lock();
        store.next_session += 1;
        let id = store.next_session;
        store.sessions.insert(id, (now, false));
        Ok(id)
    }

    async fn heartbeat(&self, session: u64, now: Timestamp) -> BackendResult<()> {
        if let Some(s) = self.lock().sessions.get_mut(&session) {
            s.0 = now;
        }
        Ok(())
    }

    async fn close_session(&self, session: u64) -> BackendResult<()> {
        if let Some(s) = self.lock().sessions.get_mut(&session) {
            s.1 = true;
        }
        Ok(())
    }

    async fn dead_orphans(
        &self,
        tenant: TenantId,
        stale_before: Timestamp,
    ) -> BackendResult<Vec<Orphan>> {
        let store = self.lock();
        let Some(d) = store.data.get(&tenant) else {
            return Ok(Vec::new());
        };
        Ok(d.orphans
            .iter()
            .filter(|(_, s)| match store.sessions.get(s) {
                Some((beat, closed)) => *closed || *beat < stale_before,
                None => true,
            })
            .map(|(ino, _)| Orphan { tenant, ino: *ino })
            .collect())
    }
}
