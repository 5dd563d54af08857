//! A backend that fails on purpose: wraps any backend and makes a chosen statement or commit
//! fail, or every call fail as if the connection dropped, so tests can prove what the engine
//! promises when storage fails (an operation whose commit fails changes nothing, and the engine
//! keeps serving once storage is back).
//!
//! Statements inside transactions (every [`StoreTxn`] call but the commit) are counted, and so
//! are commits (a layer change counts as one commit); calls outside transactions (readers,
//! tenant records, the audit table, heartbeats) fail only while disconnected, so background work
//! of the engine never takes a fault meant for an operation. An injected failure is
//! [`BackendError::Unavailable`], what a dropped connection gives. A failing transaction is
//! dropped without commit by the engine, so the inner backend rolls it back.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    Backend, BlockHash, BlockWrite, CopyBlocks, DeadBlocks, DentryRecord, LayerChanges,
    LayerRecord, LayerSwitch, LayerView, NewClone, NewTenant, Orphan, StoreRead, StoreTxn,
    StoredBlock, TenantAudit, TenantRecord,
};
use crate::audit::{
    AuditEvent, AuditFilter, AuditPartition, AuditStore, ExpiryReport, SeriesPoint, StatsKey,
    StatsRow,
};
use crate::error::{BackendError, BackendResult, QuotaKind};
use crate::types::{Ino, Inode, LayerId, Quota, TenantId, Timestamp, Usage};

/// Which calls fail. Shared between a test and the [`FaultyBackend`] it wraps around a store.
#[derive(Debug, Default)]
pub struct Faults {
    plan: Mutex<Plan>,
}

#[derive(Debug, Default)]
struct Plan {
    /// Transaction statements to let through before one fails (`Some(0)`: the next fails).
    statement_in: Option<u64>,
    /// Commits to let through before one fails.
    commit_in: Option<u64>,
    /// Every call fails until reconnected.
    disconnected: bool,
    injected: u64,
}

/// The error an injected fault returns.
#[derive(Debug, thiserror::Error)]
#[error("injected fault: {0}")]
pub struct InjectedFault(&'static str);

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Make the `n`-th statement inside a transaction from now fail (1: the next one), once.
    pub fn fail_txn_statement(&self, n: u64) {
        self.plan().statement_in = Some(n.saturating_sub(1));
    }

    /// Make the `n`-th commit from now fail (1: the next one), once.
    pub fn fail_commit(&self, n: u64) {
        self.plan().commit_in = Some(n.saturating_sub(1));
    }

    /// Fail every call from now on, as a dropped connection does, until [`Faults::reconnect`].
    pub fn disconnect(&self) {
        self.plan().disconnected = true;
    }

    /// Let calls through again and forget faults not yet injected.
    pub fn reconnect(&self) {
        let mut plan = self.plan();
        *plan = Plan {
            injected: plan.injected,
            ..Plan::default()
        };
    }

    /// How many failures were injected so far.
    pub fn injected(&self) -> u64 {
        self.plan().injected
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call outside any transaction: fails only while disconnected.
    fn call(&self) -> BackendResult<()> {
        let mut plan = self.plan();
        let fail = plan.disconnected;
        plan.fail_if(fail, "call")
    }

    fn statement(&self) -> BackendResult<()> {
        let mut plan = self.plan();
        let fail = count_down(&mut plan.statement_in) || plan.disconnected;
        plan.fail_if(fail, "statement")
    }

    fn commit(&self) -> BackendResult<()> {
        let mut plan = self.plan();
        let fail = count_down(&mut plan.commit_in) || plan.disconnected;
        plan.fail_if(fail, "commit")
    }
}

/// One more call of a planned fault's kind: whether it is the one to fail (then the plan is
/// spent).
fn count_down(left: &mut Option<u64>) -> bool {
    match left {
        Some(0) => {
            *left = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

impl Plan {
    fn fail_if(&mut self, fail: bool, what: &'static str) -> BackendResult<()> {
        if !fail {
            return Ok(());
        }
        self.injected += 1;
        Err(BackendError::Unavailable(Box::new(InjectedFault(what))))
    }
}

/// `inner` with the failures `faults` asks for.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>, faults: Arc<Faults>) -> FaultyBackend {
        FaultyBackend { inner, faults }
    }
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner)
            .finish()
    }
}

/// A reader or transaction of the inner backend.
struct Faulty<T: ?Sized> {
    inner: Box<T>,
    faults: Arc<Faults>,
    /// Whether this is a transaction, whose statements are counted.
    in_txn: bool,
}

impl<T: ?Sized> Faulty<T> {
    fn statement(&self) -> BackendResult<()> {
        if self.in_txn {
            self.faults.statement()
        } else {
            self.faults.call()
        }
    }
}

#[async_trait]
impl<T: StoreRead + ?Sized> StoreRead for Faulty<T> {
    async fn inode(&mut self, ino: Ino) -> BackendResult<Option<Inode>> {
        self.statement()?;
        self.inner.inode(ino).await
    }
    async fn inodes(&mut self, inos: &[Ino]) -> BackendResult<Vec<Inode>> {
        self.statement()?;
        self.inner.inodes(inos).await
    }
    async fn lookup(&mut self, parent: Ino, name: &[u8]) -> BackendResult<Option<DentryRecord>> {
        self.statement()?;
        self.inner.lookup(parent, name).await
    }
    async fn lookup_inode(
        &mut self,
        parent: Ino,
        name: &[u8],
    ) -> BackendResult<Option<(DentryRecord, Inode)>> {
        self.statement()?;
        self.inner.lookup_inode(parent, name).await
    }
    async fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<DentryRecord>> {
        self.statement()?;
        self.inner.list_dir(parent, after, limit).await
    }
    async fn dir_has_entries(&mut self, parent: Ino) -> BackendResult<bool> {
        self.statement()?;
        self.inner.dir_has_entries(parent).await
    }
    async fn block_map(
        &mut self,
        ino: Ino,
        range: Range<u64>,
    ) -> BackendResult<Vec<(u64, BlockHash)>> {
        self.statement()?;
        self.inner.block_map(ino, range).await
    }
    async fn blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.statement()?;
        self.inner.blocks(hashes).await
    }
    async fn patched_blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
        self.statement()?;
        self.inner.patched_blocks(hashes).await
    }
    async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        self.statement()?;
        self.inner.xattr(ino, name).await
    }
    async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>> {
        self.statement()?;
        self.inner.xattr_names(ino).await
    }
}

#[async_trait]
impl StoreTxn for Faulty<dyn StoreTxn> {
    async fn put_inode(&mut self, inode: &Inode) -> BackendResult<()> {
        self.statement()?;
        self.inner.put_inode(inode).await
    }
    async fn remove_inode(&mut self, ino: Ino) -> BackendResult<()> {
        self.statement()?;
        self.inner.remove_inode(ino).await
    }
    async fn bind(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: crate::types::FileType,
    ) -> BackendResult<u64> {
        self.statement()?;
        self.inner.bind(parent, name, ino, kind).await
    }
    async fn unbind(&mut self, parent: Ino, name: &[u8]) -> BackendResult<()> {
        self.statement()?;
        self.inner.unbind(parent, name).await
    }
    async fn write_blocks(
        &mut self,
        ino: Ino,
        writes: &[BlockWrite],
        new_blocks: &[StoredBlock],
    ) -> BackendResult<Vec<BlockHash>> {
        self.statement()?;
        self.inner.write_blocks(ino, writes, new_blocks).await
    }
    async fn reap_epoch(&mut self) -> BackendResult<u64> {
        self.statement()?;
        self.inner.reap_epoch().await
    }
    async fn truncate_blocks(&mut self, ino: Ino, first: u64) -> BackendResult<()> {
        self.statement()?;
        self.inner.truncate_blocks(ino, first).await
    }
    async fn set_xattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> BackendResult<()> {
        self.statement()?;
        self.inner.set_xattr(ino, name, value).await
    }
    async fn charge(&mut self, bytes: i64, inodes: i64) -> BackendResult<Result<(), QuotaKind>> {
        self.statement()?;
        self.inner.charge(bytes, inodes).await
    }
    async fn add_orphan(&mut self, ino: Ino, session: u64) -> BackendResult<()> {
        self.statement()?;
        self.inner.add_orphan(ino, session).await
    }
    async fn remove_orphan(&mut self, ino: Ino) -> BackendResult<()> {
        self.statement()?;
        self.inner.remove_orphan(ino).await
    }
    async fn record_audit(&mut self, event: &AuditEvent) -> BackendResult<()> {
        self.statement()?;
        self.inner.record_audit(event).await
    }
    async fn commit(self: Box<Self>) -> BackendResult<()> {
        // On failure the inner transaction is dropped here: rolled back, as a lost commit is.
        self.faults.commit()?;
        self.inner.commit().await
    }
}

#[async_trait]
impl AuditStore for FaultyBackend {
    async fn insert_audit(&self, events: &[AuditEvent]) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.insert_audit(events).await
    }
    async fn query_audit(&self, filter: &AuditFilter) -> BackendResult<Vec<AuditEvent>> {
        self.faults.call()?;
        self.inner.query_audit(filter).await
    }
    async fn audit_stats(
        &self,
        filter: &AuditFilter,
        key: StatsKey,
        top: usize,
    ) -> BackendResult<Vec<StatsRow>> {
        self.faults.call()?;
        self.inner.audit_stats(filter, key, top).await
    }
    async fn audit_series(
        &self,
        filter: &AuditFilter,
        interval_ns: i64,
    ) -> BackendResult<Vec<SeriesPoint>> {
        self.faults.call()?;
        self.inner.audit_series(filter, interval_ns).await
    }
    async fn ensure_audit_partitions(&self, from: Timestamp, to: Timestamp) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.ensure_audit_partitions(from, to).await
    }
    async fn audit_partitions(&self) -> BackendResult<Vec<AuditPartition>> {
        self.faults.call()?;
        self.inner.audit_partitions().await
    }
    async fn expire_audit(
        &self,
        default_cutoff: Timestamp,
        cutoffs: &[(TenantId, Timestamp)],
    ) -> BackendResult<ExpiryReport> {
        self.faults.call()?;
        self.inner.expire_audit(default_cutoff, cutoffs).await
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn create_tenant(&self, new: &NewTenant) -> BackendResult<TenantRecord> {
        self.faults.call()?;
        self.inner.create_tenant(new).await
    }
    async fn clone_tenant(
        &self,
        new: &NewClone,
        copy: Option<&dyn CopyBlocks>,
    ) -> BackendResult<TenantRecord> {
        self.faults.call()?;
        self.inner.clone_tenant(new, copy).await
    }
    async fn tenant_by_name(&self, name: &str) -> BackendResult<Option<TenantRecord>> {
        self.faults.call()?;
        self.inner.tenant_by_name(name).await
    }
    async fn tenant_by_id(&self, id: TenantId) -> BackendResult<Option<TenantRecord>> {
        self.faults.call()?;
        self.inner.tenant_by_id(id).await
    }
    async fn list_tenants(&self) -> BackendResult<Vec<TenantRecord>> {
        self.faults.call()?;
        self.inner.list_tenants().await
    }
    async fn set_quota(&self, tenant: TenantId, quota: Quota) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.set_quota(tenant, quota).await
    }
    async fn usage(&self, tenant: TenantId) -> BackendResult<Usage> {
        self.faults.call()?;
        self.inner.usage(tenant).await
    }
    async fn mark_tenant_deleted(&self, tenant: TenantId) -> BackendResult<bool> {
        self.faults.call()?;
        self.inner.mark_tenant_deleted(tenant).await
    }
    async fn retire_tenant(&self, tenant: TenantId) -> BackendResult<bool> {
        self.faults.call()?;
        self.inner.retire_tenant(tenant).await
    }
    async fn purge_tenant(&self, tenant: TenantId) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.purge_tenant(tenant).await
    }
    async fn alloc_inodes(&self, tenant: TenantId, count: u64) -> BackendResult<u64> {
        self.faults.call()?;
        self.inner.alloc_inodes(tenant, count).await
    }
    async fn reap_epoch(&self, tenant: TenantId) -> BackendResult<u64> {
        self.faults.call()?;
        self.inner.reap_epoch(tenant).await
    }
    async fn claim_dead_blocks(
        &self,
        tenant: TenantId,
        grace: std::time::Duration,
        limit: usize,
    ) -> BackendResult<Box<dyn DeadBlocks>> {
        self.faults.call()?;
        self.inner.claim_dead_blocks(tenant, grace, limit).await
    }
    async fn adopt_blocks(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<u64> {
        self.faults.call()?;
        self.inner.adopt_blocks(tenant, hashes).await
    }
    async fn block_hashes(
        &self,
        tenant: TenantId,
        after: Option<BlockHash>,
        limit: usize,
    ) -> BackendResult<Vec<BlockHash>> {
        self.faults.call()?;
        self.inner.block_hashes(tenant, after, limit).await
    }
    async fn layers(&self, tenant: TenantId) -> BackendResult<Vec<LayerRecord>> {
        self.faults.call()?;
        self.inner.layers(tenant).await
    }
    async fn set_auto_checkpoint(&self, tenant: TenantId, secs: Option<u64>) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.set_auto_checkpoint(tenant, secs).await
    }
    async fn set_audit(&self, tenant: TenantId, audit: TenantAudit) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.set_audit(tenant, audit).await
    }
    async fn set_access_policy(&self, tenant: TenantId, policy: Option<&str>) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.set_access_policy(tenant, policy).await
    }
    async fn set_native_mounts(
        &self,
        tenant: Option<TenantId>,
        text: Option<&str>,
    ) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.set_native_mounts(tenant, text).await
    }
    async fn shared_native_mounts(&self) -> BackendResult<Option<String>> {
        self.faults.call()?;
        self.inner.shared_native_mounts().await
    }
    async fn checkpoint(
        &self,
        tenant: TenantId,
        head: LayerId,
        name: &str,
        description: &str,
        now: Timestamp,
    ) -> BackendResult<LayerRecord> {
        self.faults.commit()?;
        self.inner
            .checkpoint(tenant, head, name, description, now)
            .await
    }
    async fn switch_layer(
        &self,
        tenant: TenantId,
        head: LayerId,
        target: LayerId,
        switch: LayerSwitch,
        now: Timestamp,
    ) -> BackendResult<LayerRecord> {
        self.faults.commit()?;
        self.inner
            .switch_layer(tenant, head, target, switch, now)
            .await
    }
    async fn drop_layer(
        &self,
        tenant: TenantId,
        head: LayerId,
        layer: LayerId,
        children: &[LayerId],
    ) -> BackendResult<()> {
        self.faults.commit()?;
        self.inner.drop_layer(tenant, head, layer, children).await
    }
    async fn layer_is_empty(&self, tenant: TenantId, layer: LayerId) -> BackendResult<bool> {
        self.faults.call()?;
        self.inner.layer_is_empty(tenant, layer).await
    }
    async fn layer_changes(
        &self,
        tenant: TenantId,
        layers: &[LayerId],
    ) -> BackendResult<LayerChanges> {
        self.faults.call()?;
        self.inner.layer_changes(tenant, layers).await
    }
    fn reader(&self, view: &LayerView) -> Box<dyn StoreRead> {
        Box::new(Faulty {
            inner: self.inner.reader(view),
            faults: self.faults.clone(),
            in_txn: false,
        })
    }
    async fn begin(&self, view: &LayerView, locks: &[Ino]) -> BackendResult<Box<dyn StoreTxn>> {
        self.faults.call()?;
        let inner = self.inner.begin(view, locks).await?;
        Ok(Box::new(Faulty {
            inner,
            faults: self.faults.clone(),
            in_txn: true,
        }))
    }
    fn announce(&self, note: crate::backend::changes::ChangeNote) {
        self.inner.announce(note);
    }
    async fn flush_announcements(&self) {
        self.inner.flush_announcements().await;
    }
    async fn watch(
        &self,
        tenant: TenantId,
        listener: crate::backend::changes::ChangeListener,
    ) -> BackendResult<crate::backend::changes::Watch> {
        self.inner.watch(tenant, listener).await
    }
    async fn open_session(&self, description: &str, now: Timestamp) -> BackendResult<u64> {
        self.faults.call()?;
        self.inner.open_session(description, now).await
    }
    async fn heartbeat(&self, session: u64, now: Timestamp) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.heartbeat(session, now).await
    }
    async fn close_session(&self, session: u64) -> BackendResult<()> {
        self.faults.call()?;
        self.inner.close_session(session).await
    }
    async fn dead_orphans(
        &self,
        tenant: TenantId,
        stale_before: Timestamp,
    ) -> BackendResult<Vec<Orphan>> {
        self.faults.call()?;
        self.inner.dead_orphans(tenant, stale_before).await
    }
}
