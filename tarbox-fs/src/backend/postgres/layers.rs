//! Layer changes: checkpoint, switch, drop, and the questions they ask.
//!
//! Each change is one transaction that first takes the tenant row `FOR UPDATE`. Every
//! file-operation transaction holds that row `FOR KEY SHARE` from its first statement
//! (`tarbox_begin`), so the lock waits for the ones in flight and holds back new ones, which then
//! find the head moved and fail with a stale view. A layer change therefore never sees or leaves a
//! half-written operation, and costs a handful of statements whatever the size of the tree.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Transaction};

use super::convert::{STATE_ACTIVE, STATE_RETIRED, col, map_err, to_i64, to_u64};
use super::tenants::tenant_updated;
use crate::backend::{LayerChanges, LayerRecord, LayerSwitch};
use crate::error::{BackendError, BackendResult};
use crate::types::{Ino, LayerId, TenantId, Timestamp, Usage};

const LAYERS: &str = "SELECT id, parent, name, description, created_at, frozen_at, usage_bytes, \
     usage_inodes FROM layers WHERE tenant_id = $1 ORDER BY id";

fn layer_from_row(tenant: TenantId, row: &PgRow) -> BackendResult<LayerRecord> {
    let bytes: Option<i64> = col(row, "usage_bytes")?;
    let inodes: Option<i64> = col(row, "usage_inodes")?;
    let usage = match (bytes, inodes) {
        (Some(b), Some(i)) => Some(Usage {
            bytes: to_u64("usage bytes", b)?,
            inodes: to_u64("usage inodes", i)?,
        }),
        _ => None,
    };
    Ok(LayerRecord {
        id: LayerId(col(row, "id")?),
        tenant,
        parent: col::<Option<i64>>(row, "parent")?.map(LayerId),
        name: col(row, "name")?,
        description: col(row, "description")?,
        created_at: Timestamp(col(row, "created_at")?),
        frozen_at: col::<Option<i64>>(row, "frozen_at")?.map(Timestamp),
        usage,
    })
}

pub(super) async fn layers(pool: &PgPool, tenant: TenantId) -> BackendResult<Vec<LayerRecord>> {
    let rows = sqlx::query(LAYERS)
        .bind(tenant.0)
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    rows.iter().map(|row| layer_from_row(tenant, row)).collect()
}

pub(super) async fn set_auto_checkpoint(
    pool: &PgPool,
    tenant: TenantId,
    secs: Option<u64>,
) -> BackendResult<()> {
    let secs = secs
        .map(|s| {
            i64::try_from(s)
                .map_err(|_| BackendError::config(format!("auto-checkpoint interval {s}s")))
        })
        .transpose()?;
    let done = sqlx::query("UPDATE tenants SET auto_checkpoint_secs = $2 WHERE id = $1")
        .bind(tenant.0)
        .bind(secs)
        .execute(pool)
        .await
        .map_err(map_err)?;
    tenant_updated(&done)
}

/// Which tenant states a layer change serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serves {
    Active,
    /// Active or retired (dropping a checkpoint of a deleted volume).
    ActiveOrRetired,
}

/// Begin a layer change: lock the tenant row and check that `head` is still its head.
async fn lock_tenant(
    pool: &PgPool,
    tenant: TenantId,
    head: LayerId,
    serves: Serves,
) -> BackendResult<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await.map_err(map_err)?;
    let row: Option<(i16, i64)> =
        sqlx::query_as("SELECT state, head_layer FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(tenant.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
    match row {
        Some((STATE_ACTIVE, h)) if h == head.0 => Ok(tx),
        Some((STATE_RETIRED, h)) if h == head.0 && serves == Serves::ActiveOrRetired => Ok(tx),
        Some((STATE_ACTIVE, _)) => Err(BackendError::StaleView),
        _ => Err(BackendError::TenantGone),
    }
}

/// Freeze the head: record the time and the tenant's usage on it.
const FREEZE: &str = "UPDATE layers l SET frozen_at = $3, usage_bytes = u.bytes, \
     usage_inodes = u.inodes FROM tenant_usage u \
     WHERE l.tenant_id = $1 AND l.id = $2 AND u.tenant_id = $1";

async fn freeze(
    tx: &mut Transaction<'static, Postgres>,
    tenant: TenantId,
    head: LayerId,
    now: Timestamp,
) -> BackendResult<()> {
    sqlx::query(FREEZE)
        .bind(tenant.0)
        .bind(head.0)
        .bind(now.0)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Create an empty layer on top of `$2` and make it the head.
const PUSH_HEAD: &str = "WITH fresh AS ( \
       INSERT INTO layers (tenant_id, parent, name, description, created_at) \
       VALUES ($1, $2, NULL, '', $3) RETURNING *), \
     head AS (UPDATE tenants SET head_layer = (SELECT id FROM fresh) WHERE id = $1) \
     SELECT id, parent, name, description, created_at, frozen_at, usage_bytes, usage_inodes \
     FROM fresh";

async fn push_head(
    tx: &mut Transaction<'static, Postgres>,
    tenant: TenantId,
    parent: LayerId,
    now: Timestamp,
) -> BackendResult<LayerRecord> {
    let row = sqlx::query(PUSH_HEAD)
        .bind(tenant.0)
        .bind(parent.0)
        .bind(now.0)
        .fetch_one(&mut **tx)
        .await
        .map_err(map_err)?;
    layer_from_row(tenant, &row)
}

pub(super) async fn checkpoint(
    pool: &PgPool,
    tenant: TenantId,
    head: LayerId,
    name: &str,
    description: &str,
    now: Timestamp,
) -> BackendResult<LayerRecord> {
    let mut tx = lock_tenant(pool, tenant, head, Serves::Active).await?;
    freeze(&mut tx, tenant, head, now).await?;
    // A taken name violates layers_tenant_id_name_key, which map_err reports as LayerExists.
    sqlx::query("UPDATE layers SET name = $3, description = $4 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.0)
        .bind(head.0)
        .bind(name)
        .bind(description)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    let record = push_head(&mut tx, tenant, head, now).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(record)
}

/// Whether layer `$2` has no rows; one index probe per table (each key leads with tenant_id and
/// ends with layer_id, so this scans the tenant's keys: switch and auto-checkpoint use it, never
/// a file operation).
const IS_EMPTY: &str = "SELECT NOT (\
       EXISTS (SELECT 1 FROM inodes WHERE tenant_id = $1 AND layer_id = $2) \
       OR EXISTS (SELECT 1 FROM dentries WHERE tenant_id = $1 AND layer_id = $2) \
       OR EXISTS (SELECT 1 FROM block_map WHERE tenant_id = $1 AND layer_id = $2) \
       OR EXISTS (SELECT 1 FROM xattrs WHERE tenant_id = $1 AND layer_id = $2))";

pub(super) async fn switch(
    pool: &PgPool,
    tenant: TenantId,
    head: LayerId,
    target: LayerId,
    switch: LayerSwitch,
    now: Timestamp,
) -> BackendResult<LayerRecord> {
    let mut tx = lock_tenant(pool, tenant, head, Serves::Active).await?;
    let discard = switch.discard_head && {
        sqlx::query_scalar::<_, bool>(IS_EMPTY)
            .bind(tenant.0)
            .bind(head.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?
    };
    freeze(&mut tx, tenant, head, now).await?;
    let record = push_head(&mut tx, tenant, target, now).await?;
    if discard {
        sqlx::query("DELETE FROM layers WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(head.0)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    if let Some(usage) = switch.usage {
        sqlx::query("UPDATE tenant_usage SET bytes = $2, inodes = $3 WHERE tenant_id = $1")
            .bind(tenant.0)
            .bind(to_i64("usage", usage.bytes)?)
            .bind(to_i64("usage", usage.inodes)?)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    tx.commit().await.map_err(map_err)?;
    Ok(record)
}

/// Copy the rows of layer `$2` into layer `$3` where `$3` has no row of the same key; block
/// mappings add a reference to the blocks they name. Mappings and attributes of inodes `$3`
/// removed (a tombstone) stay behind: hidden for good, they would only hold their blocks.
const COPY_INTO_CHILD: &str = "WITH \
     i AS (INSERT INTO inodes (tenant_id, ino, layer_id, tombstone, kind, perm, uid, gid, nlink, \
                               size, atime, mtime, ctime, btime, rdev, parent, target) \
           SELECT tenant_id, ino, $3, tombstone, kind, perm, uid, gid, nlink, size, atime, \
                  mtime, ctime, btime, rdev, parent, target FROM inodes \
           WHERE tenant_id = $1 AND layer_id = $2 \
           ON CONFLICT DO NOTHING), \
     d AS (INSERT INTO dentries (tenant_id, parent, name, layer_id, ino, kind, cookie) \
           SELECT tenant_id, parent, name, $3, ino, kind, cookie FROM dentries \
           WHERE tenant_id = $1 AND layer_id = $2 \
           ON CONFLICT DO NOTHING), \
     x AS (INSERT INTO xattrs (tenant_id, ino, name, layer_id, value) \
           SELECT tenant_id, ino, name, $3, value FROM xattrs s \
           WHERE tenant_id = $1 AND layer_id = $2 AND NOT EXISTS ( \
             SELECT 1 FROM inodes c WHERE c.tenant_id = $1 AND c.layer_id = $3 \
               AND c.ino = s.ino AND c.tombstone) \
           ON CONFLICT DO NOTHING), \
     m AS (INSERT INTO block_map (tenant_id, ino, idx, layer_id, hash) \
           SELECT tenant_id, ino, idx, $3, hash FROM block_map s \
           WHERE tenant_id = $1 AND layer_id = $2 AND NOT EXISTS ( \
             SELECT 1 FROM inodes c WHERE c.tenant_id = $1 AND c.layer_id = $3 \
               AND c.ino = s.ino AND c.tombstone) \
           ON CONFLICT DO NOTHING RETURNING hash) \
     UPDATE blocks b SET refcount = b.refcount + n.refs \
     FROM (SELECT hash, count(*) AS refs FROM m WHERE hash IS NOT NULL GROUP BY hash) n \
     WHERE b.tenant_id = $1 AND b.hash = n.hash";

/// Delete the rows of layer `$2`; returns the blocks whose last reference went with them.
const DELETE_ROWS: &str = "WITH \
     i AS (DELETE FROM inodes WHERE tenant_id = $1 AND layer_id = $2), \
     d AS (DELETE FROM dentries WHERE tenant_id = $1 AND layer_id = $2), \
     x AS (DELETE FROM xattrs WHERE tenant_id = $1 AND layer_id = $2), \
     m AS (DELETE FROM block_map WHERE tenant_id = $1 AND layer_id = $2 RETURNING hash) \
     UPDATE blocks b SET refcount = b.refcount - n.refs \
     FROM (SELECT hash, count(*) AS refs FROM m WHERE hash IS NOT NULL GROUP BY hash) n \
     WHERE b.tenant_id = $1 AND b.hash = n.hash \
     RETURNING b.hash, b.refcount";

pub(super) async fn drop_layer(
    pool: &PgPool,
    tenant: TenantId,
    head: LayerId,
    layer: LayerId,
    children: &[LayerId],
) -> BackendResult<()> {
    if layer == head {
        return Err(BackendError::Conflict);
    }
    let mut tx = lock_tenant(pool, tenant, head, Serves::ActiveOrRetired).await?;
    let parent: Option<Option<i64>> =
        sqlx::query_scalar("SELECT parent FROM layers WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(layer.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
    let Some(parent) = parent else {
        return Err(BackendError::Conflict);
    };
    let mut actual: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM layers WHERE tenant_id = $1 AND parent = $2 ORDER BY id",
    )
    .bind(tenant.0)
    .bind(layer.0)
    .fetch_all(&mut *tx)
    .await
    .map_err(map_err)?;
    let mut expected: Vec<i64> = children.iter().map(|c| c.0).collect();
    expected.sort_unstable();
    actual.sort_unstable();
    if actual != expected {
        return Err(BackendError::Conflict);
    }
    for child in children {
        sqlx::query(COPY_INTO_CHILD)
            .bind(tenant.0)
            .bind(layer.0)
            .bind(child.0)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    let released: Vec<(Vec<u8>, i64)> = sqlx::query_as(DELETE_ROWS)
        .bind(tenant.0)
        .bind(layer.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
    let unreferenced: Vec<Vec<u8>> = released
        .into_iter()
        .filter(|(_, refs)| *refs <= 0)
        .map(|(hash, _)| hash)
        .collect();
    if !unreferenced.is_empty() {
        sqlx::query(super::blocks::SETTLE_BLOCKS)
            .bind(tenant.0)
            .bind(Vec::<Vec<u8>>::new())
            .bind(&unreferenced)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    sqlx::query(
        "WITH c AS (UPDATE layers SET parent = $3 WHERE tenant_id = $1 AND parent = $2) \
         DELETE FROM layers WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.0)
    .bind(layer.0)
    .bind(parent)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(())
}

pub(super) async fn is_empty(
    pool: &PgPool,
    tenant: TenantId,
    layer: LayerId,
) -> BackendResult<bool> {
    sqlx::query_scalar(IS_EMPTY)
        .bind(tenant.0)
        .bind(layer.0)
        .fetch_one(pool)
        .await
        .map_err(map_err)
}

const CHANGED_INODES: &str = "SELECT ino FROM inodes WHERE tenant_id = $1 AND layer_id = ANY($2) \
     UNION SELECT ino FROM block_map WHERE tenant_id = $1 AND layer_id = ANY($2) \
     UNION SELECT ino FROM xattrs WHERE tenant_id = $1 AND layer_id = ANY($2) \
     ORDER BY ino";

const CHANGED_ENTRIES: &str = "SELECT DISTINCT parent, name FROM dentries \
     WHERE tenant_id = $1 AND layer_id = ANY($2) ORDER BY parent, name";

pub(super) async fn changes(
    pool: &PgPool,
    tenant: TenantId,
    layers: &[LayerId],
) -> BackendResult<LayerChanges> {
    let ids: Vec<i64> = layers.iter().map(|l| l.0).collect();
    let inos: Vec<i64> = sqlx::query_scalar(CHANGED_INODES)
        .bind(tenant.0)
        .bind(&ids)
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    let entries: Vec<(i64, Vec<u8>)> = sqlx::query_as(CHANGED_ENTRIES)
        .bind(tenant.0)
        .bind(&ids)
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    Ok(LayerChanges {
        inodes: inos
            .into_iter()
            .map(|i| to_u64("inode number", i).map(Ino))
            .collect::<BackendResult<_>>()?,
        entries: entries
            .into_iter()
            .map(|(p, n)| Ok((Ino(to_u64("inode number", p)?), n)))
            .collect::<BackendResult<_>>()?,
    })
}
