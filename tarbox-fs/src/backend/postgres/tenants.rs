//! Tenant, layer and session administration: the [`Backend`](crate::backend::Backend) methods
//! outside file-operation transactions. Each is one autocommit statement (creating and purging a
//! tenant are single statements with data-modifying CTEs, hence atomic).

use sqlx::postgres::PgPool;

use super::convert::{
    STATE_ACTIVE, STATE_DELETED, STATE_RETIRED, limit_to_sql, map_err, select_tenants,
    tenant_from_row, to_i64, to_u64,
};
use crate::backend::{NewTenant, Orphan, TenantAudit, TenantRecord, TenantState};
use crate::error::{BackendError, BackendResult};
use crate::types::{Ino, LayerId, Quota, TenantId, Timestamp, Usage};

/// $1 name, $2 block size, $3 compression, $4/$5 quota, $6 created_at, $7..$19 the root inode,
/// $20 owner, $21 data URL.
/// The base layer's id is drawn first so the tenant row can name it as head in the same insert.
const CREATE_TENANT: &str = "WITH l AS (SELECT nextval('layer_ids') AS id), \
     t AS ( \
       INSERT INTO tenants (name, state, head_layer, block_size, compression, quota_bytes, \
                            quota_inodes, next_ino, created_at, owner, data_url) \
       SELECT $1, 0, l.id, $2, $3, $4, $5, 2, $6, $20, $21 FROM l \
       RETURNING id, head_layer), \
     base AS ( \
       INSERT INTO layers (tenant_id, id, parent, name, description, created_at) \
       SELECT t.id, t.head_layer, NULL, NULL, 'base', $6 FROM t), \
     usage AS ( \
       INSERT INTO tenant_usage (tenant_id, bytes, inodes) SELECT t.id, 0, 1 FROM t), \
     root AS ( \
       INSERT INTO inodes (tenant_id, ino, layer_id, tombstone, kind, perm, uid, gid, nlink, \
                           size, atime, mtime, ctime, btime, rdev, parent, target) \
       SELECT t.id, 1, t.head_layer, false, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
              $17, $18, $19 FROM t) \
     SELECT id, head_layer FROM t";

/// Deletes every row of a tenant marked deleted; reports whether it did, and the state of the
/// tenant if it was not purged (NULL: no such tenant).
const PURGE_TENANT: &str = "WITH t AS ( \
       DELETE FROM tenants WHERE id = $1 AND state = 1 RETURNING id), \
     usage AS (DELETE FROM tenant_usage WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM t)), \
     layers AS (DELETE FROM layers WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM t)), \
     inodes AS (DELETE FROM inodes WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM t)), \
     dentries AS (DELETE FROM dentries WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM t)), \
     block_map AS (DELETE FROM block_map WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM t)), \
     blocks AS (DELETE FROM blocks WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM t)), \
     xattrs AS (DELETE FROM xattrs WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM t)), \
     orphans AS (DELETE FROM orphans WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM t)) \
     SELECT EXISTS (SELECT 1 FROM t) AS purged, \
            (SELECT state FROM tenants WHERE id = $1) AS state";

const MARK_DELETED: &str = "WITH m AS ( \
       UPDATE tenants SET state = 1 WHERE id = $1 AND state <> 1 RETURNING 1) \
     SELECT EXISTS (SELECT 1 FROM m), EXISTS (SELECT 1 FROM tenants WHERE id = $1)";

const ALLOC_INODES: &str =
    "UPDATE tenants SET next_ino = next_ino + $2 WHERE id = $1 RETURNING next_ino - $2";

const DEAD_ORPHANS: &str = "SELECT o.ino FROM orphans o \
     LEFT JOIN sessions s ON s.id = o.session_id \
     WHERE o.tenant_id = $1 AND (s.id IS NULL OR s.closed OR s.heartbeat < $2) \
     ORDER BY o.ino";

pub(super) async fn create_tenant(pool: &PgPool, new: &NewTenant) -> BackendResult<TenantRecord> {
    let root = &new.root;
    let (id, head): (i64, i64) = sqlx::query_as(CREATE_TENANT)
        .bind(&new.name)
        .bind(i32::try_from(new.block_size).map_err(|_| {
            BackendError::config(format!("block size {} is too large", new.block_size))
        })?)
        .bind(new.compression.code())
        .bind(limit_to_sql(new.quota.bytes))
        .bind(limit_to_sql(new.quota.inodes))
        .bind(new.created_at.0)
        .bind(root.kind.code())
        .bind(i32::from(root.perm))
        .bind(i64::from(root.uid))
        .bind(i64::from(root.gid))
        .bind(i64::from(root.nlink))
        .bind(to_i64("file size", root.size)?)
        .bind(root.atime.0)
        .bind(root.mtime.0)
        .bind(root.ctime.0)
        .bind(root.btime.0)
        .bind(i64::from(root.rdev))
        .bind(to_i64("inode number", root.parent.0)?)
        .bind(&root.target)
        .bind(&new.owner)
        .bind(&new.data_url)
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
    Ok(TenantRecord {
        id: TenantId(id),
        name: new.name.clone(),
        state: TenantState::Active,
        head_layer: LayerId(head),
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
    })
}

pub(super) async fn tenant_by_name(
    pool: &PgPool,
    name: &str,
) -> BackendResult<Option<TenantRecord>> {
    let row = sqlx::query(select_tenants!("WHERE name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(map_err)?;
    row.as_ref().map(tenant_from_row).transpose()
}

pub(super) async fn tenant_by_id(
    pool: &PgPool,
    id: TenantId,
) -> BackendResult<Option<TenantRecord>> {
    let row = sqlx::query(select_tenants!("WHERE id = $1"))
        .bind(id.0)
        .fetch_optional(pool)
        .await
        .map_err(map_err)?;
    row.as_ref().map(tenant_from_row).transpose()
}

pub(super) async fn list_tenants(pool: &PgPool) -> BackendResult<Vec<TenantRecord>> {
    let rows = sqlx::query(select_tenants!("ORDER BY name COLLATE \"C\""))
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    rows.iter().map(tenant_from_row).collect()
}

pub(super) async fn set_quota(pool: &PgPool, tenant: TenantId, quota: Quota) -> BackendResult<()> {
    let done = sqlx::query("UPDATE tenants SET quota_bytes = $2, quota_inodes = $3 WHERE id = $1")
        .bind(tenant.0)
        .bind(limit_to_sql(quota.bytes))
        .bind(limit_to_sql(quota.inodes))
        .execute(pool)
        .await
        .map_err(map_err)?;
    tenant_updated(&done)
}

pub(super) async fn usage(pool: &PgPool, tenant: TenantId) -> BackendResult<Usage> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT bytes, inodes FROM tenant_usage WHERE tenant_id = $1")
            .bind(tenant.0)
            .fetch_optional(pool)
            .await
            .map_err(map_err)?;
    let (bytes, inodes) = row.ok_or(BackendError::TenantGone)?;
    Ok(Usage {
        bytes: to_u64("usage bytes", bytes)?,
        inodes: to_u64("usage inodes", inodes)?,
    })
}

pub(super) async fn mark_tenant_deleted(pool: &PgPool, tenant: TenantId) -> BackendResult<bool> {
    let (marked, present): (bool, bool) = sqlx::query_as(MARK_DELETED)
        .bind(tenant.0)
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
    if !present {
        return Err(BackendError::TenantGone);
    }
    Ok(marked)
}

pub(super) async fn retire_tenant(pool: &PgPool, tenant: TenantId) -> BackendResult<bool> {
    let (retired, present): (bool, bool) = sqlx::query_as(
        "WITH r AS (UPDATE tenants SET state = $2 WHERE id = $1 AND state = $3 RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM r), EXISTS (SELECT 1 FROM tenants WHERE id = $1)",
    )
    .bind(tenant.0)
    .bind(STATE_RETIRED)
    .bind(STATE_ACTIVE)
    .fetch_one(pool)
    .await
    .map_err(map_err)?;
    if !present {
        return Err(BackendError::TenantGone);
    }
    Ok(retired)
}

pub(super) async fn purge_tenant(pool: &PgPool, tenant: TenantId) -> BackendResult<()> {
    let (purged, state): (bool, Option<i16>) = sqlx::query_as(PURGE_TENANT)
        .bind(tenant.0)
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
    match (purged, state) {
        // Purged now, or already gone: purging is idempotent.
        (true, _) | (false, None) => Ok(()),
        (false, Some(STATE_ACTIVE | STATE_RETIRED)) => Err(BackendError::Other(
            format!(
                "tenant {} is not marked deleted; refusing to purge it",
                tenant.0
            )
            .into(),
        )),
        // Deleted concurrently between the statement's snapshot and its delete: the other purge
        // did the work.
        (false, Some(STATE_DELETED)) => Ok(()),
        (false, Some(other)) => Err(BackendError::Corrupt(format!("tenant state {other}"))),
    }
}

pub(super) async fn alloc_inodes(
    pool: &PgPool,
    tenant: TenantId,
    count: u64,
) -> BackendResult<u64> {
    let first: Option<i64> = sqlx::query_scalar(ALLOC_INODES)
        .bind(tenant.0)
        .bind(to_i64("inode count", count)?)
        .fetch_optional(pool)
        .await
        .map_err(map_err)?;
    to_u64("inode number", first.ok_or(BackendError::TenantGone)?)
}

pub(super) async fn open_session(
    pool: &PgPool,
    description: &str,
    now: Timestamp,
) -> BackendResult<u64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO sessions (description, heartbeat, closed) VALUES ($1, $2, false) RETURNING id",
    )
    .bind(description)
    .bind(now.0)
    .fetch_one(pool)
    .await
    .map_err(map_err)?;
    to_u64("session id", id)
}

pub(super) async fn heartbeat(pool: &PgPool, session: u64, now: Timestamp) -> BackendResult<()> {
    // GREATEST: a delayed heartbeat never moves liveness backwards.
    sqlx::query("UPDATE sessions SET heartbeat = GREATEST(heartbeat, $2) WHERE id = $1")
        .bind(to_i64("session id", session)?)
        .bind(now.0)
        .execute(pool)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn close_session(pool: &PgPool, session: u64) -> BackendResult<()> {
    sqlx::query("UPDATE sessions SET closed = true WHERE id = $1")
        .bind(to_i64("session id", session)?)
        .execute(pool)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(super) async fn dead_orphans(
    pool: &PgPool,
    tenant: TenantId,
    stale_before: Timestamp,
) -> BackendResult<Vec<Orphan>> {
    let inos: Vec<i64> = sqlx::query_scalar(DEAD_ORPHANS)
        .bind(tenant.0)
        .bind(stale_before.0)
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    inos.into_iter()
        .map(|ino| {
            Ok(Orphan {
                tenant,
                ino: Ino(to_u64("inode number", ino)?),
            })
        })
        .collect()
}

pub(super) async fn set_access_policy(
    pool: &PgPool,
    tenant: TenantId,
    policy: Option<&str>,
) -> BackendResult<()> {
    let done = sqlx::query("UPDATE tenants SET access_policy = $2 WHERE id = $1")
        .bind(tenant.0)
        .bind(policy)
        .execute(pool)
        .await
        .map_err(map_err)?;
    tenant_updated(&done)
}

/// The `shared_settings` row of the native mounts every tenant shares.
pub(super) const SHARED_NATIVE_MOUNTS: &str = "native_mounts";

pub(super) async fn set_native_mounts(
    pool: &PgPool,
    tenant: Option<TenantId>,
    text: Option<&str>,
) -> BackendResult<()> {
    let Some(tenant) = tenant else {
        let query = match text {
            Some(_) => {
                "INSERT INTO shared_settings (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            }
            None => "DELETE FROM shared_settings WHERE name = $1 AND $2::text IS NULL",
        };
        sqlx::query(query)
            .bind(SHARED_NATIVE_MOUNTS)
            .bind(text)
            .execute(pool)
            .await
            .map_err(map_err)?;
        return Ok(());
    };
    let done = sqlx::query("UPDATE tenants SET native_mounts = $2 WHERE id = $1")
        .bind(tenant.0)
        .bind(text)
        .execute(pool)
        .await
        .map_err(map_err)?;
    tenant_updated(&done)
}

pub(super) async fn shared_setting(pool: &PgPool, name: &str) -> BackendResult<Option<String>> {
    sqlx::query_scalar("SELECT value FROM shared_settings WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(map_err)
}

pub(super) async fn set_audit(
    pool: &PgPool,
    tenant: TenantId,
    audit: TenantAudit,
) -> BackendResult<()> {
    let done =
        sqlx::query("UPDATE tenants SET audit_level = $2, audit_retention_days = $3 WHERE id = $1")
            .bind(tenant.0)
            .bind(audit.level.map(|l| l.code()))
            .bind(audit.retention_days.map(i64::from))
            .execute(pool)
            .await
            .map_err(map_err)?;
    tenant_updated(&done)
}

/// An `UPDATE` of one tenant's row: `TenantGone` if it found none.
pub(super) fn tenant_updated(done: &sqlx::postgres::PgQueryResult) -> BackendResult<()> {
    if done.rows_affected() == 0 {
        return Err(BackendError::TenantGone);
    }
    Ok(())
}
