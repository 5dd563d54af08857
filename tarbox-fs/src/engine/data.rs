//! Where a volume's block contents go, and the reaper of dead store blocks.
//!
//! A tenant without a block store keeps each block's bytes in its row: they travel inside the
//! transaction that maps them. A tenant with a [`BlockStore`] has its blocks put into the store
//! *before* that transaction, by hash; the row then holds only the reference count. The order,
//! and why a writer racing the reaper never commits a mapping to a deleted object, is explained
//! in [`crate::store`]; the writer's half of it is [`Volume::map_blocks`]: remember the tenant's
//! reap epoch before storing, and if a reap happened since and a row had to be created afresh,
//! store those blocks again before committing.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use super::{Engine, Shared, Volume, lock};
use crate::backend::{
    BlockHash, BlockWrite, CopyBlocks, StoreRead, StoreTxn, StoredBlock, TenantRecord, TenantState,
};
use crate::error::{BackendError, BackendResult, FsError, FsResult};
use crate::store::BlockStore;
use crate::types::{Ino, TenantId};

/// Where a volume's block contents live.
#[derive(Clone, Debug)]
pub(crate) enum DataPath {
    /// In the backend's block rows.
    Inline,
    /// In a block store; rows hold reference counts only.
    Store(Arc<dyn BlockStore>),
}

/// Dead blocks claimed per round trip of the reaper.
const REAP_BATCH: usize = 1024;
/// Objects listed per page by the sweep and the data check.
const LIST_PAGE: usize = 4096;

impl Shared {
    /// The block store at `url`, opened once per engine (and again when its keys change).
    pub(crate) async fn store(&self, url: &str) -> BackendResult<Arc<dyn BlockStore>> {
        if let Some(store) = lock(&self.stores).get(url) {
            return Ok(store.clone());
        }
        let keys = lock(&self.store_keys).get(url).cloned();
        let keys = keys.or_else(|| self.config.s3_credentials.clone());
        let store = crate::store::open(url, keys.as_ref(), self.config.outage_wait).await?;
        Ok(lock(&self.stores)
            .entry(url.to_string())
            .or_insert(store)
            .clone())
    }

    pub(crate) async fn data_path(&self, data_url: Option<&str>) -> BackendResult<DataPath> {
        Ok(match data_url {
            None => DataPath::Inline,
            Some(url) => DataPath::Store(self.store(url).await?),
        })
    }
}

impl Volume {
    /// The reap epoch to remember before storing blocks (see the module docs).
    pub(super) fn data_epoch(&self) -> u64 {
        self.inner.reap_epoch.load(Ordering::Acquire)
    }

    /// Put `blocks` into the tenant's block store durably (nothing to do when they live in
    /// rows).
    pub(super) async fn store_blocks(&self, blocks: &[StoredBlock]) -> FsResult<()> {
        if let DataPath::Store(store) = &self.inner.data {
            // Patched blocks live in their rows only.
            let put: Vec<StoredBlock> = blocks
                .iter()
                .filter(|b| b.parts.is_empty())
                .cloned()
                .collect();
            if !put.is_empty() {
                store.put(self.inner.tenant.id, put).await?;
                store.sync().await?;
            }
        }
        Ok(())
    }

    /// The tenant's block store, if its blocks do not live in rows.
    pub(super) fn block_store(&self) -> Option<&Arc<dyn BlockStore>> {
        match &self.inner.data {
            DataPath::Inline => None,
            DataPath::Store(store) => Some(store),
        }
    }

    /// Map `writes` in `txn`, inserting `new_blocks`, all of which were stored (see
    /// [`Volume::store_blocks`]) after the reap epoch was `epoch`.
    pub(super) async fn map_blocks(
        &self,
        txn: &mut dyn StoreTxn,
        ino: Ino,
        writes: &[BlockWrite],
        new_blocks: &[StoredBlock],
        epoch: u64,
    ) -> FsResult<()> {
        let DataPath::Store(store) = &self.inner.data else {
            txn.write_blocks(ino, writes, new_blocks).await?;
            return Ok(());
        };
        let rows: Vec<StoredBlock> = new_blocks
            .iter()
            .map(|b| StoredBlock {
                hash: b.hash,
                compressed: b.compressed,
                // A patched block's manifest lives in its row (see `patched.rs`).
                data: if b.parts.is_empty() {
                    bytes::Bytes::new()
                } else {
                    b.data.clone()
                },
                parts: b.parts.clone(),
            })
            .collect();
        let fresh = txn.write_blocks(ino, writes, &rows).await?;
        if fresh.is_empty() {
            return Ok(());
        }
        let now = txn.reap_epoch().await?;
        if now != epoch {
            // A reaper deleted objects since these were stored, maybe one of these: store them
            // again. The rows this transaction created are locked, so no reaper can take them.
            let fresh: HashSet<BlockHash> = fresh.into_iter().collect();
            let again: Vec<StoredBlock> = new_blocks
                .iter()
                .filter(|b| fresh.contains(&b.hash))
                .cloned()
                .collect();
            debug!(blocks = again.len(), "storing blocks again after a reap");
            store.put(self.inner.tenant.id, again).await?;
            store.sync().await?;
        }
        self.inner.reap_epoch.fetch_max(now, Ordering::AcqRel);
        Ok(())
    }

    /// The stored form of blocks `hashes`, from their rows or the tenant's block store; hashes
    /// not found are omitted.
    pub(super) async fn load_blocks(
        &self,
        r: &mut dyn StoreRead,
        hashes: &[BlockHash],
    ) -> FsResult<Vec<StoredBlock>> {
        match &self.inner.data {
            DataPath::Inline => Ok(r.blocks(hashes).await?),
            DataPath::Store(store) => {
                // Patched blocks live in their rows (see `patched.rs`): those known to be
                // patched are read there without asking the store, and what the store does
                // not have is looked for there too.
                let tenant = self.inner.tenant.id;
                let cache = &self.shared().cache;
                let (known, plain): (Vec<BlockHash>, Vec<BlockHash>) = hashes
                    .iter()
                    .partition(|h| matches!(cache.kind(tenant, h), Some(Some(_))));
                let mut found = if known.is_empty() {
                    Vec::new()
                } else {
                    r.patched_blocks(&known).await?
                };
                found.extend(store.get(tenant, &plain).await?);
                if found.len() < hashes.len() {
                    let have: HashSet<BlockHash> = found.iter().map(|b| b.hash).collect();
                    let rest: Vec<BlockHash> = hashes
                        .iter()
                        .filter(|h| !have.contains(h))
                        .copied()
                        .collect();
                    found.extend(r.patched_blocks(&rest).await?);
                }
                Ok(found)
            }
        }
    }

    /// Delete the objects of blocks dead for longer than the grace period. Returns how many.
    pub(crate) async fn reap_dead_blocks(&self) -> FsResult<u64> {
        let DataPath::Store(store) = &self.inner.data else {
            return Ok(0);
        };
        reap(
            &self.inner.shared,
            store.as_ref(),
            self.inner.tenant.id,
            self.inner.shared.config.dead_block_grace,
        )
        .await
    }
}

/// Claim dead rows, delete their objects, then the rows, until none is left.
async fn reap(
    shared: &Shared,
    store: &dyn BlockStore,
    tenant: TenantId,
    grace: Duration,
) -> FsResult<u64> {
    let mut reaped = 0;
    loop {
        let claim = shared
            .backend
            .claim_dead_blocks(tenant, grace, REAP_BATCH)
            .await?;
        let n = claim.hashes().len();
        if n == 0 {
            return Ok(reaped);
        }
        store.delete(tenant, claim.hashes()).await?;
        claim.forget().await?;
        reaped += n as u64;
        if n < REAP_BATCH {
            return Ok(reaped);
        }
    }
}

/// What [`Engine::collect_garbage`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GarbageReport {
    /// Objects no row named, older than the grace period, handed to the reaper.
    pub adopted: u64,
    /// Dead blocks whose objects were deleted.
    pub reaped: u64,
}

/// What an engine's flushes have written where blocks live (rows or a block store) since it
/// opened: block contents as stored (hashed, compressed), each new block once. Against the
/// bytes programs wrote, this is the data path's write amplification: a 4 KiB write into a
/// stored block costs the 4 KiB and a manifest (see `patched.rs`), plus a merge of the block
/// now and then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataWritten {
    pub blocks: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct WrittenCounters {
    blocks: AtomicU64,
    bytes: AtomicU64,
}

impl WrittenCounters {
    /// Count blocks a flush committed.
    pub(super) fn add(&self, blocks: &[StoredBlock]) {
        let bytes: u64 = blocks.iter().map(|b| b.data.len() as u64).sum();
        self.blocks
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("tarbox_stored_bytes_total").increment(bytes);
    }
}

/// What [`Engine::check_data`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataCheck {
    /// Referenced blocks read back and verified against their hash.
    pub verified: u64,
    /// Referenced blocks whose bytes are missing.
    pub missing: Vec<BlockHash>,
    /// Referenced blocks whose bytes do not match their hash or do not decode.
    pub corrupt: Vec<BlockHash>,
}

impl DataCheck {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty()
    }
}

/// Copies a clone's blocks inside one block store.
struct StoreCopy {
    store: Arc<dyn BlockStore>,
    from: TenantId,
}

#[async_trait::async_trait]
impl CopyBlocks for StoreCopy {
    async fn copy(&self, to: TenantId, hashes: &[BlockHash]) -> BackendResult<()> {
        self.store.copy(self.from, to, hashes).await
    }
}

impl Engine {
    /// File data the engine's open files hold and have not committed yet (buffered, being
    /// stored, or stored awaiting the commit); kept near `held_limit_bytes` at most.
    pub fn held_bytes(&self) -> u64 {
        self.shared.held.load(Ordering::Relaxed)
    }

    /// What this engine's flushes have written where blocks live, since it opened.
    pub fn data_written(&self) -> DataWritten {
        let w = &self.shared.written;
        DataWritten {
            blocks: w.blocks.load(Ordering::Relaxed),
            bytes: w.bytes.load(Ordering::Relaxed),
        }
    }

    /// Use `keys` for the S3 block store at `data_url` from now on, instead of the engine's
    /// (a CSI driver learns them from each StorageClass's secrets).
    pub fn set_store_keys(&self, data_url: &str, keys: crate::store::S3Credentials) {
        let mut known = lock(&self.shared.store_keys);
        if known.get(data_url) != Some(&keys) {
            known.insert(data_url.to_string(), keys);
            // Reopened with the new keys when next used.
            lock(&self.shared.stores).remove(data_url);
        }
    }

    /// The copier a clone of `source` needs: `None` when its blocks live in rows.
    pub(crate) async fn clone_copier(
        &self,
        source: TenantId,
        data_url: Option<&str>,
    ) -> FsResult<Option<Box<dyn CopyBlocks>>> {
        Ok(match self.shared.data_path(data_url).await? {
            DataPath::Inline => None,
            DataPath::Store(store) => Some(Box::new(StoreCopy {
                store,
                from: source,
            })),
        })
    }

    /// Collect the garbage of a tenant's block store: objects no row names that are older than
    /// `orphan_grace` (left by a crash between storing and committing) are handed to the
    /// reaper, then every block dead for longer than the engine's grace is deleted.
    pub async fn collect_garbage(
        &self,
        tenant: &str,
        orphan_grace: Duration,
        progress: &(dyn Fn(u64) + Sync),
    ) -> FsResult<GarbageReport> {
        let record = self.tenant_record(tenant).await?;
        self.collect_garbage_of(&record, Some(orphan_grace), progress)
            .await
    }

    /// [`Engine::collect_garbage`] of every tenant with a block store, live or retired (a
    /// retired tenant's dropped snapshots leave dead blocks that no volume reaps); the sweep for
    /// orphans only when `orphan_grace` is given, as it lists every object.
    pub async fn sweep_block_stores(
        &self,
        orphan_grace: Option<Duration>,
    ) -> FsResult<GarbageReport> {
        let mut total = GarbageReport::default();
        for record in self.shared.backend.list_tenants().await? {
            let live = matches!(record.state, TenantState::Active | TenantState::Retired);
            if record.data_url.is_none() || !live {
                continue;
            }
            match self
                .collect_garbage_of(&record, orphan_grace, &|_| {})
                .await
            {
                Ok(report) => {
                    total.adopted += report.adopted;
                    total.reaped += report.reaped;
                }
                // Purged meanwhile: nothing of it is left to collect.
                Err(FsError::Backend(BackendError::TenantGone)) => {}
                Err(e) => {
                    warn!(tenant = %record.name, error = %e, "collecting a block store's garbage failed")
                }
            }
        }
        Ok(total)
    }

    /// Run [`Engine::sweep_block_stores`] in the background: dead blocks reaped every
    /// `interval`, orphans looked for every `orphan_every` intervals.
    pub fn spawn_store_sweeper(
        &self,
        interval: Duration,
        orphan_every: u32,
        orphan_grace: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            for round in 1u64.. {
                tokio::time::sleep(interval).await;
                let orphans = (round % u64::from(orphan_every.max(1)) == 0).then_some(orphan_grace);
                match engine.sweep_block_stores(orphans).await {
                    Ok(r) if r.adopted + r.reaped > 0 => {
                        debug!(adopted = r.adopted, reaped = r.reaped, "block stores swept");
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "sweeping the block stores failed"),
                }
            }
        })
    }

    async fn collect_garbage_of(
        &self,
        record: &TenantRecord,
        orphan_grace: Option<Duration>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> FsResult<GarbageReport> {
        let DataPath::Store(store) = self.shared.data_path(record.data_url.as_deref()).await?
        else {
            return Ok(GarbageReport::default());
        };
        let mut report = GarbageReport::default();
        let Some(orphan_grace) = orphan_grace else {
            report.reaped = reap(
                &self.shared,
                store.as_ref(),
                record.id,
                self.shared.config.dead_block_grace,
            )
            .await?;
            return Ok(report);
        };
        let now = SystemTime::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(self.shared.now().0).unwrap_or(0));
        let cutoff = now
            .checked_sub(orphan_grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut after = None;
        let mut listed = 0;
        loop {
            let page = store.list(record.id, after, LIST_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            listed += page.len() as u64;
            progress(listed);
            let old: Vec<BlockHash> = page
                .iter()
                .filter(|(_, stored)| *stored <= cutoff)
                .map(|(h, _)| *h)
                .collect();
            report.adopted += self.shared.backend.adopt_blocks(record.id, &old).await?;
        }
        // Adopted objects are dead as of now; reap them at once, as an operator asked for it.
        report.reaped = reap(&self.shared, store.as_ref(), record.id, Duration::ZERO).await?;
        Ok(report)
    }

    /// Read back every block the tenant references and verify it against its hash.
    pub async fn check_data(
        &self,
        tenant: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> FsResult<DataCheck> {
        let record = self.tenant_record(tenant).await?;
        let data = self.shared.data_path(record.data_url.as_deref()).await?;
        let view =
            super::build_view(self.shared.backend.as_ref(), record.id, record.head_layer).await?;
        let mut reader = self.shared.backend.reader(&view);
        let bs = u64::from(record.block_size);
        let mut check = DataCheck::default();
        let mut after = None;
        loop {
            let page = self
                .shared
                .backend
                .block_hashes(record.id, after, LIST_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(*last);
            for chunk in page.chunks(64) {
                let found = match &data {
                    DataPath::Inline => reader.blocks(chunk).await?,
                    DataPath::Store(store) => store.get(record.id, chunk).await?,
                };
                let have: HashSet<BlockHash> = found.iter().map(|b| b.hash).collect();
                check
                    .missing
                    .extend(chunk.iter().filter(|h| !have.contains(h)).copied());
                for block in &found {
                    match super::blocks::decode(block, bs) {
                        Ok(_) => check.verified += 1,
                        Err(_) => check.corrupt.push(block.hash),
                    }
                }
            }
            progress(check.verified);
        }
        Ok(check)
    }

    /// Delete what a purged tenant kept in its block store.
    pub(crate) async fn purge_store(
        &self,
        tenant: TenantId,
        data_url: Option<&str>,
    ) -> FsResult<()> {
        if let DataPath::Store(store) = self.shared.data_path(data_url).await? {
            if let Err(e) = store.delete_tenant(tenant).await {
                warn!(tenant = tenant.0, error = %e, "cannot delete a purged tenant's blocks");
                return Err(e.into());
            }
        }
        Ok(())
    }
}
