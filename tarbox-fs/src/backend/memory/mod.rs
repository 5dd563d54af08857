//! The in-memory backend: the embedded default and what unit tests run on.
//!
//! It implements the same contract as the PostgreSQL backend, layers and all, so the engine's
//! behaviour does not depend on which one is used. Transactions of one tenant are serialized by a
//! per-tenant gate (an async mutex) that readers also pass through, so no reader ever sees an
//! uncommitted write. Writes apply in place and are recorded in an undo log; a transaction dropped
//! without commit replays the log backwards.

mod audit;
mod blocks;
mod clone;
mod layers;
mod read;
mod txn;

use self::read::MemoryReader;
use self::txn::MemoryTxn;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::Mutex as AsyncMutex;

use super::{
    Backend, BlockHash, CopyBlocks, DeadBlocks, LayerChanges, LayerRecord, LayerSwitch, LayerView,
    NewClone, NewTenant, Orphan, StoreRead, StoreTxn, StoredBlock, TenantAudit, TenantRecord,
    TenantState,
};
use crate::error::{BackendError, BackendResult};
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
    /// Store blocks whose count reached zero, and since when (an entry whose block was revived
    /// or rolled back is stale: the reaper checks the count).
    dead: HashMap<BlockHash, std::time::Instant>,
    /// Reaps that deleted objects (see `Backend::reap_epoch`).
    reap_epoch: u64,
}

impl TenantData {
    /// Drop one reference to a block outside a transaction (a dropped layer), releasing it at
    /// zero, and what it named if it was a patched block.
    fn unref(&mut self, hash: BlockHash) {
        let Some((block, count)) = self.blocks.get_mut(&hash) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count > 0 {
            return;
        }
        let parts = block.parts.clone();
        self.release(hash);
        if !self.blocks.contains_key(&hash) {
            for part in parts {
                self.unref(part);
            }
        }
    }

    /// A block lost its last reference: a row holding its data goes, a store block's row stays
    /// dead for the reaper.
    fn release(&mut self, hash: BlockHash) {
        match self.blocks.get(&hash) {
            Some((block, 0)) if block.data.is_empty() => {
                self.dead
                    .entry(hash)
                    .or_insert_with(std::time::Instant::now);
            }
            Some((_, 0)) => {
                self.blocks.remove(&hash);
            }
            _ => {}
        }
    }
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
    /// The native mounts every tenant shares (TOML).
    shared_native_mounts: Option<String>,
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
    /// Engines watching tenants: notes are delivered as they are announced.
    listeners: Arc<crate::backend::changes::Listeners>,
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
            owner: new.owner.clone(),
            access_policy: None,
            native_mounts: None,
            data_url: new.data_url.clone(),
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

    async fn clone_tenant(
        &self,
        new: &NewClone,
        copy: Option<&dyn CopyBlocks>,
    ) -> BackendResult<TenantRecord> {
        // The source's gate: no transaction of it is half applied while its rows are read, and
        // no reaper deletes its objects while they are copied.
        let gate = self.gate(new.source.tenant);
        let _pass = gate.lock().await;
        let record = clone::clone_tenant(&mut self.lock(), new)?;
        let (Some(copy), Some(_)) = (copy, &record.data_url) else {
            return Ok(record);
        };
        let hashes: Vec<BlockHash> = {
            let mut store = self.lock();
            store
                .tenant_data(record.id)?
                .blocks
                .iter()
                // Patched blocks live in their rows only.
                .filter(|(_, (b, _))| b.parts.is_empty())
                .map(|(h, _)| *h)
                .collect()
        };
        if let Err(e) = copy.copy(record.id, &hashes).await {
            // Nothing may be left of a clone whose blocks are not all there.
            let mut store = self.lock();
            store.tenants.remove(&record.id);
            store.data.remove(&record.id);
            store.layers.retain(|(t, _), _| *t != record.id);
            return Err(e);
        }
        Ok(record)
    }

    async fn reap_epoch(&self, tenant: TenantId) -> BackendResult<u64> {
        Ok(self.lock().tenant_data(tenant)?.reap_epoch)
    }

    async fn claim_dead_blocks(
        &self,
        tenant: TenantId,
        grace: std::time::Duration,
        limit: usize,
    ) -> BackendResult<Box<dyn DeadBlocks>> {
        blocks::claim_dead(self, tenant, grace, limit).await
    }

    async fn adopt_blocks(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<u64> {
        Ok(blocks::adopt(self.lock().tenant_data(tenant)?, hashes))
    }

    async fn block_hashes(
        &self,
        tenant: TenantId,
        after: Option<BlockHash>,
        limit: usize,
    ) -> BackendResult<Vec<BlockHash>> {
        Ok(blocks::referenced(
            self.lock().tenant_data(tenant)?,
            after,
            limit,
        ))
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
        let was_marked = t.state != TenantState::Deleted;
        t.state = TenantState::Deleted;
        Ok(was_marked)
    }

    async fn retire_tenant(&self, tenant: TenantId) -> BackendResult<bool> {
        let mut store = self.lock();
        let t = store
            .tenants
            .get_mut(&tenant)
            .ok_or(BackendError::TenantGone)?;
        if t.state != TenantState::Active {
            return Ok(false);
        }
        t.state = TenantState::Retired;
        Ok(true)
    }

    async fn purge_tenant(&self, tenant: TenantId) -> BackendResult<()> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        let mut store = self.lock();
        match store.tenants.get(&tenant) {
            Some(t) if t.state == TenantState::Deleted => {}
            Some(_) => {
                return Err(BackendError::config(
                    "refusing to purge a tenant that is not marked deleted",
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

    async fn set_access_policy(&self, tenant: TenantId, policy: Option<&str>) -> BackendResult<()> {
        let mut store = self.lock();
        let t = store
            .tenants
            .get_mut(&tenant)
            .ok_or(BackendError::TenantGone)?;
        t.access_policy = policy.map(str::to_string);
        Ok(())
    }

    async fn set_native_mounts(
        &self,
        tenant: Option<TenantId>,
        text: Option<&str>,
    ) -> BackendResult<()> {
        let mut store = self.lock();
        let slot = match tenant {
            None => &mut store.shared_native_mounts,
            Some(tenant) => {
                &mut store
                    .tenants
                    .get_mut(&tenant)
                    .ok_or(BackendError::TenantGone)?
                    .native_mounts
            }
        };
        *slot = text.map(str::to_string);
        Ok(())
    }

    async fn shared_native_mounts(&self) -> BackendResult<Option<String>> {
        Ok(self.lock().shared_native_mounts.clone())
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
        switch: LayerSwitch,
        now: Timestamp,
    ) -> BackendResult<LayerRecord> {
        let gate = self.gate(tenant);
        let _pass = gate.lock().await;
        layers::switch(&mut self.lock(), tenant, head, target, switch, now)
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

    fn announce(&self, note: crate::backend::changes::ChangeNote) {
        self.listeners.deliver(&note);
    }

    async fn watch(
        &self,
        tenant: TenantId,
        listener: crate::backend::changes::ChangeListener,
    ) -> BackendResult<crate::backend::changes::Watch> {
        let watch = self.listeners.add(tenant, listener.clone());
        listener(crate::backend::changes::FeedEvent::Resumed);
        Ok(watch)
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
