//! Reads of the memory backend: resolving a key through a layer chain (the newest row wins, a
//! tombstone or whiteout hides older ones), and the out-of-transaction reader.

use std::collections::BTreeMap;
use std::ops::Range;

use async_trait::async_trait;

use super::{DentryVal, MemoryBackend, TenantData};
use crate::backend::{BlockHash, DentryRecord, LayerView, StoreRead, StoredBlock};
use crate::error::{BackendError, BackendResult};
use crate::types::{Ino, Inode, LayerId};

/// The newest row of `prefix` visible through `chain`, among keys `(prefix.., layer)`.
pub(super) fn newest<'a, K: Ord + Clone, V>(
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

pub(super) fn inode_row<'a>(
    d: &'a TenantData,
    ino: Ino,
    chain: &[LayerId],
) -> Option<&'a Option<Inode>> {
    newest(
        &d.inodes,
        (ino, LayerId(i64::MIN))..(ino, LayerId(i64::MAX)),
        |k| k.1,
        chain,
    )
}

pub(super) fn dentry_row<'a>(
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

pub(super) fn xattr_row<'a>(
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
pub(super) fn live_entries(d: &TenantData, parent: Ino, chain: &[LayerId]) -> Vec<DentryRecord> {
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

pub(super) fn read_inode(d: &TenantData, ino: Ino, chain: &[LayerId]) -> Option<Inode> {
    inode_row(d, ino, chain).cloned().flatten()
}

pub(super) fn read_lookup(
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

pub(super) fn read_list(
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

pub(super) fn read_block_map(
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

pub(super) fn read_blocks(d: &TenantData, hashes: &[BlockHash]) -> Vec<StoredBlock> {
    hashes
        .iter()
        .filter_map(|h| d.blocks.get(h).map(|(b, _)| b.clone()))
        .collect()
}

pub(super) fn read_patched_blocks(d: &TenantData, hashes: &[BlockHash]) -> Vec<StoredBlock> {
    let mut out = read_blocks(d, hashes);
    out.retain(|b| !b.parts.is_empty());
    out
}

pub(super) fn read_xattr_names(d: &TenantData, ino: Ino, chain: &[LayerId]) -> Vec<Vec<u8>> {
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
pub(super) struct MemoryReader {
    pub(super) backend: MemoryBackend,
    pub(super) view: LayerView,
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
    async fn patched_blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.with(|d, _| read_patched_blocks(d, hashes)).await
    }
    async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        self.with(|d, c| xattr_row(d, ino, name, c).cloned().flatten())
            .await
    }
    async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>> {
        self.with(|d, c| read_xattr_names(d, ino, c)).await
    }
}
