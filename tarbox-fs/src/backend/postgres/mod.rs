//! The PostgreSQL backend.
//!
//! # Schema
//! The schema lives in `tarbox-fs/migrations` and is applied on [`PostgresBackend::connect`]
//! (sqlx's migrator serialises concurrent engines with an advisory lock). Every per-tenant table
//! leads its keys with `tenant_id` so the store can later be distributed by tenant.
//!
//! | table | key | holds |
//! | --- | --- | --- |
//! | `tenants` | `id` | record, head layer, quota, inode allocator |
//! | `tenant_usage` | `tenant_id` | bytes and inodes charged (row-locked by `charge` until commit) |
//! | `layers` | `(tenant_id, id)` | layer tree; ids from the global `layer_ids` sequence; a frozen layer's usage |
//! | `inodes` | `(tenant_id, ino, layer_id)` | inode versions; `tombstone` hides older layers |
//! | `dentries` | `(tenant_id, parent, name, layer_id)` | names; `ino IS NULL` is a whiteout |
//! | `block_map` | `(tenant_id, ino, idx, layer_id)` | file blocks; `hash IS NULL` is a hole |
//! | `blocks` | `(tenant_id, hash)` | content-addressed data (NULL: in the tenant's block store) with its reference count; `dead_since` marks a store block awaiting the reaper |
//! | `xattrs` | `(tenant_id, ino, name, layer_id)` | extended attributes; `value IS NULL` removes |
//! | `sessions`, `orphans` | `id`, `(tenant_id, ino)` | open-but-unlinked inodes per engine session |
//! | `audit_events` | partitioned by `at_ns` (a day each) | the audit trail (`audit.rs`) |
//!
//! # Reading through a chain
//! The visible row of a key is the one with the largest `layer_id` among the view's chain (layer
//! ids are monotonic along a chain). Every read has a single-layer form (`layer_id = $head`, the
//! common case of a tenant without checkpoints) and a chain form (`layer_id = ANY($chain)`).
//!
//! # Round trips
//! Each method is one statement, hence one round trip: multi-step writes are single statements
//! with data-modifying CTEs, batches travel as arrays (`UNNEST`), and [`Backend::begin`] opens the
//! transaction, takes its inode locks and checks the head in one message (`txn.rs` explains how).
//! The exceptions: `commit` adds one `DELETE` when blocks lost their last reference in the
//! transaction, and a refused `charge` costs a second statement to tell which limit was hit.
//!
//! # Concurrency
//! File operations run under READ COMMITTED with advisory locks on the inodes they modify; the
//! rows they share with other inodes (blocks, usage) are only changed by single `UPDATE`s or
//! `INSERT … ON CONFLICT DO UPDATE`s, whose re-check of the newest row version keeps concurrent
//! engines consistent without serialisable isolation.

mod audit;
mod blocks;
mod clone;
mod convert;
mod feed;
mod layers;
mod read;
mod tenants;
mod txn;

#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::backend::{
    Backend, BlockHash, CopyBlocks, DeadBlocks, LayerChanges, LayerRecord, LayerSwitch, LayerView,
    NewClone, NewTenant, Orphan, StoreRead, StoreTxn, TenantAudit, TenantRecord,
};
use crate::error::{BackendError, BackendResult};
use crate::types::{Ino, LayerId, Quota, TenantId, Timestamp, Usage};

use self::convert::map_err;
use self::read::{PgReader, Scope};

/// Connections per backend. Each open transaction holds one, so this bounds concurrent writers.
const MAX_CONNECTIONS: u32 = 16;

/// How long a caller waits for a free connection before the store is reported unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Embedded schema migrations (`tarbox-fs/migrations`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A [`Backend`] storing everything in one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    pool: PgPool,
    partitions: std::sync::Arc<audit::Partitions>,
    feed: std::sync::Arc<feed::Feed>,
}

impl PostgresBackend {
    /// Connect to `url` (`postgres://user@host:port/database`) and bring the schema up to date.
    pub async fn connect(url: &str) -> BackendResult<PostgresBackend> {
        let options = PgConnectOptions::from_str(url).map_err(|e| BackendError::Config {
            what: "the PostgreSQL URL".into(),
            source: Some(Box::new(e)),
        })?;
        // `tarbox` in `pg_stat_activity`, unless the URL names the connections itself
        // (`?application_name=node-3-mount`), which tells mounts apart there.
        let options = match options.get_application_name() {
            Some(_) => options,
            None => options.application_name("tarbox"),
        }
        // The begin() protocol relies on the session default isolation, whatever the
        // server's configured default is.
        .options([
            ("default_transaction_isolation", "read committed"),
            // Every statement is a short indexed lookup or write whose plan does not depend
            // on its parameters; skipping per-execution custom planning saves a planner run
            // on every round trip.
            ("plan_cache_mode", "force_generic_plan"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx already pings a connection when it returns to the pool (off the caller's
            // path); pinging again on acquire would add a round trip to every single query.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => map_err(e),
            other => BackendError::Other(Box::new(other)),
        })?;
        Ok(PostgresBackend::from_pool(pool))
    }

    /// A backend over a pool whose database is already migrated.
    pub(crate) fn from_pool(pool: PgPool) -> PostgresBackend {
        let partitions = std::sync::Arc::new(audit::Partitions::new(pool.clone()));
        let feed = std::sync::Arc::new(feed::Feed::new(pool.clone()));
        PostgresBackend {
            pool,
            partitions,
            feed,
        }
    }

    /// The connection pool, for tests and administrative tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn create_tenant(&self, new: &NewTenant) -> BackendResult<TenantRecord> {
        tenants::create_tenant(&self.pool, new).await
    }

    async fn clone_tenant(
        &self,
        new: &NewClone,
        copy: Option<&dyn CopyBlocks>,
    ) -> BackendResult<TenantRecord> {
        clone::clone_tenant(&self.pool, new, copy).await
    }

    async fn tenant_by_name(&self, name: &str) -> BackendResult<Option<TenantRecord>> {
        tenants::tenant_by_name(&self.pool, name).await
    }

    async fn tenant_by_id(&self, id: TenantId) -> BackendResult<Option<TenantRecord>> {
        tenants::tenant_by_id(&self.pool, id).await
    }

    async fn list_tenants(&self) -> BackendResult<Vec<TenantRecord>> {
        tenants::list_tenants(&self.pool).await
    }

    async fn set_quota(&self, tenant: TenantId, quota: Quota) -> BackendResult<()> {
        tenants::set_quota(&self.pool, tenant, quota).await
    }

    async fn usage(&self, tenant: TenantId) -> BackendResult<Usage> {
        tenants::usage(&self.pool, tenant).await
    }

    async fn mark_tenant_deleted(&self, tenant: TenantId) -> BackendResult<bool> {
        tenants::mark_tenant_deleted(&self.pool, tenant).await
    }

    async fn retire_tenant(&self, tenant: TenantId) -> BackendResult<bool> {
        tenants::retire_tenant(&self.pool, tenant).await
    }

    async fn purge_tenant(&self, tenant: TenantId) -> BackendResult<()> {
        tenants::purge_tenant(&self.pool, tenant).await
    }

    async fn reap_epoch(&self, tenant: TenantId) -> BackendResult<u64> {
        blocks::reap_epoch(&self.pool, tenant).await
    }

    async fn claim_dead_blocks(
        &self,
        tenant: TenantId,
        grace: std::time::Duration,
        limit: usize,
    ) -> BackendResult<Box<dyn DeadBlocks>> {
        blocks::claim_dead(&self.pool, tenant, grace, limit).await
    }

    async fn adopt_blocks(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<u64> {
        blocks::adopt(&self.pool, tenant, hashes).await
    }

    async fn block_hashes(
        &self,
        tenant: TenantId,
        after: Option<BlockHash>,
        limit: usize,
    ) -> BackendResult<Vec<BlockHash>> {
        blocks::referenced(&self.pool, tenant, after, limit).await
    }

    async fn alloc_inodes(&self, tenant: TenantId, count: u64) -> BackendResult<u64> {
        tenants::alloc_inodes(&self.pool, tenant, count).await
    }

    async fn layers(&self, tenant: TenantId) -> BackendResult<Vec<LayerRecord>> {
        layers::layers(&self.pool, tenant).await
    }

    async fn set_auto_checkpoint(&self, tenant: TenantId, secs: Option<u64>) -> BackendResult<()> {
        layers::set_auto_checkpoint(&self.pool, tenant, secs).await
    }

    async fn set_audit(&self, tenant: TenantId, audit: TenantAudit) -> BackendResult<()> {
        tenants::set_audit(&self.pool, tenant, audit).await
    }

    async fn set_access_policy(&self, tenant: TenantId, policy: Option<&str>) -> BackendResult<()> {
        tenants::set_access_policy(&self.pool, tenant, policy).await
    }

    async fn set_native_mounts(
        &self,
        tenant: Option<TenantId>,
        text: Option<&str>,
    ) -> BackendResult<()> {
        tenants::set_native_mounts(&self.pool, tenant, text).await
    }

    async fn shared_native_mounts(&self) -> BackendResult<Option<String>> {
        tenants::shared_setting(&self.pool, tenants::SHARED_NATIVE_MOUNTS).await
    }

    async fn checkpoint(
        &self,
        tenant: TenantId,
        head: LayerId,
        name: &str,
        description: &str,
        now: Timestamp,
    ) -> BackendResult<LayerRecord> {
        layers::checkpoint(&self.pool, tenant, head, name, description, now).await
    }

    async fn switch_layer(
        &self,
        tenant: TenantId,
        head: LayerId,
        target: LayerId,
        switch: LayerSwitch,
        now: Timestamp,
    ) -> BackendResult<LayerRecord> {
        layers::switch(&self.pool, tenant, head, target, switch, now).await
    }

    async fn drop_layer(
        &self,
        tenant: TenantId,
        head: LayerId,
        layer: LayerId,
        children: &[LayerId],
    ) -> BackendResult<()> {
        layers::drop_layer(&self.pool, tenant, head, layer, children).await
    }

    async fn layer_is_empty(&self, tenant: TenantId, layer: LayerId) -> BackendResult<bool> {
        layers::is_empty(&self.pool, tenant, layer).await
    }

    async fn layer_changes(
        &self,
        tenant: TenantId,
        layers: &[LayerId],
    ) -> BackendResult<LayerChanges> {
        layers::changes(&self.pool, tenant, layers).await
    }

    fn reader(&self, view: &LayerView) -> Box<dyn StoreRead> {
        Box::new(PgReader::new(self.pool.clone(), Scope::new(view)))
    }

    async fn begin(&self, view: &LayerView, locks: &[Ino]) -> BackendResult<Box<dyn StoreTxn>> {
        let txn =
            txn::PgTxn::begin(&self.pool, self.partitions.clone(), Scope::new(view), locks).await?;
        Ok(Box::new(txn))
    }

    fn announce(&self, note: crate::backend::changes::ChangeNote) {
        self.feed.announce(note);
    }

    async fn flush_announcements(&self) {
        self.feed.flush(Duration::from_secs(5)).await;
    }

    async fn watch(
        &self,
        tenant: TenantId,
        listener: crate::backend::changes::ChangeListener,
    ) -> BackendResult<crate::backend::changes::Watch> {
        Ok(self.feed.watch(tenant, listener))
    }

    async fn open_session(&self, description: &str, now: Timestamp) -> BackendResult<u64> {
        tenants::open_session(&self.pool, description, now).await
    }

    async fn heartbeat(&self, session: u64, now: Timestamp) -> BackendResult<()> {
        tenants::heartbeat(&self.pool, session, now).await
    }

    async fn close_session(&self, session: u64) -> BackendResult<()> {
        tenants::close_session(&self.pool, session).await
    }

    async fn dead_orphans(
        &self,
        tenant: TenantId,
        stale_before: Timestamp,
    ) -> BackendResult<Vec<Orphan>> {
        tenants::dead_orphans(&self.pool, tenant, stale_before).await
    }
}
