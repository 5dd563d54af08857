//! Cloning a tenant in one statement: the rows one layer view shows, flattened into the base
//! layer of a new tenant. The statement reads one snapshot of the source, so a clone of a live
//! tenant is the tree as some committed transaction left it; block data is copied by the server
//! and never leaves it.

use sqlx::postgres::PgPool;

use super::convert::{STATE_DELETED, limit_to_sql, map_err};
use crate::backend::{CopyBlocks, NewClone, TenantAudit, TenantRecord, TenantState};
use crate::error::{BackendError, BackendResult};
use crate::types::LayerId;

/// $1 source tenant, $2 its chain (bigint[]), $3 name, $4/$5 quota, $6 created_at, $7 owner,
/// $8 the source layer (for the base layer's description), $9 the deleted state. Nothing is
/// created if a layer of the chain is gone (dropped or discarded since the view was built).
///
/// Each `v*` CTE is the newest row per key among the chain's layers (ancestors have smaller ids,
/// so `ORDER BY layer_id DESC` puts the newest first), minus tombstones, whiteouts, holes and
/// removed attributes; only inodes with a link are taken, and only what hangs off them.
/// Usage is recounted as the engine charges: each inode's size rounded up to 4 KiB
/// (`Inode::charged_bytes`).
const CLONE_TENANT: &str = "WITH src AS ( \
       SELECT id, name, block_size, compression, next_ino, data_url FROM tenants \
       WHERE id = $1 AND state <> $9 \
         AND (SELECT count(*) FROM layers WHERE tenant_id = $1 AND id = ANY($2)) \
             = cardinality($2)), \
     l AS (SELECT nextval('layer_ids') AS id), \
     vi AS (SELECT * FROM ( \
         SELECT DISTINCT ON (ino) * FROM inodes \
         WHERE tenant_id = $1 AND layer_id = ANY($2) ORDER BY ino, layer_id DESC) v \
       WHERE NOT tombstone AND nlink > 0), \
     vd AS (SELECT * FROM ( \
         SELECT DISTINCT ON (parent, name) parent, name, ino, kind, cookie FROM dentries \
         WHERE tenant_id = $1 AND layer_id = ANY($2) ORDER BY parent, name, layer_id DESC) d \
       WHERE ino IN (SELECT ino FROM vi)), \
     vm AS (SELECT * FROM ( \
         SELECT DISTINCT ON (ino, idx) ino, idx, hash FROM block_map \
         WHERE tenant_id = $1 AND layer_id = ANY($2) ORDER BY ino, idx, layer_id DESC) m \
       WHERE hash IS NOT NULL AND ino IN (SELECT ino FROM vi)), \
     vx AS (SELECT * FROM ( \
         SELECT DISTINCT ON (ino, name) ino, name, value FROM xattrs \
         WHERE tenant_id = $1 AND layer_id = ANY($2) ORDER BY ino, name, layer_id DESC) x \
       WHERE value IS NOT NULL AND ino IN (SELECT ino FROM vi)), \
     t AS ( \
       INSERT INTO tenants (name, state, head_layer, block_size, compression, quota_bytes, \
                            quota_inodes, next_ino, created_at, owner, data_url) \
       SELECT $3, 0, l.id, src.block_size, src.compression, $4, $5, src.next_ino, $6, $7, \
              src.data_url \
       FROM src, l \
       RETURNING id, head_layer), \
     base AS ( \
       INSERT INTO layers (tenant_id, id, parent, name, description, created_at) \
       SELECT t.id, t.head_layer, NULL, NULL, \
              'clone of ' || src.name || ' at layer ' || $8::bigint, $6 \
       FROM t, src), \
     usage AS ( \
       INSERT INTO tenant_usage (tenant_id, bytes, inodes) \
       SELECT t.id, (SELECT COALESCE(sum((size + 4095) / 4096 * 4096), 0) FROM vi), \
              (SELECT count(*) FROM vi) \
       FROM t), \
     i AS ( \
       INSERT INTO inodes (tenant_id, ino, layer_id, tombstone, kind, perm, uid, gid, nlink, \
                           size, atime, mtime, ctime, btime, rdev, parent, target) \
       SELECT t.id, vi.ino, t.head_layer, false, vi.kind, vi.perm, vi.uid, vi.gid, vi.nlink, \
              vi.size, vi.atime, vi.mtime, vi.ctime, vi.btime, vi.rdev, vi.parent, vi.target \
       FROM vi, t), \
     d AS ( \
       INSERT INTO dentries (tenant_id, parent, name, layer_id, ino, kind, cookie) \
       SELECT t.id, vd.parent, vd.name, t.head_layer, vd.ino, vd.kind, vd.cookie FROM vd, t), \
     m AS ( \
       INSERT INTO block_map (tenant_id, ino, idx, layer_id, hash) \
       SELECT t.id, vm.ino, vm.idx, t.head_layer, vm.hash FROM vm, t), \
     vp AS ( \
       SELECT substring(p.parts FROM i * 32 + 1 FOR 32) AS hash FROM ( \
         SELECT b.parts FROM (SELECT DISTINCT hash FROM vm) u \
         JOIN blocks b ON b.tenant_id = $1 AND b.hash = u.hash WHERE b.parts IS NOT NULL) p, \
         generate_series(0, length(p.parts) / 32 - 1) AS i), \
     b AS ( \
       INSERT INTO blocks (tenant_id, hash, refcount, compressed, data, parts) \
       SELECT t.id, b.hash, r.n, b.compressed, b.data, b.parts \
       FROM (SELECT hash, count(*) AS n FROM \
               (SELECT hash FROM vm UNION ALL SELECT hash FROM vp) a GROUP BY hash) r \
       JOIN blocks b ON b.tenant_id = $1 AND b.hash = r.hash, t), \
     x AS ( \
       INSERT INTO xattrs (tenant_id, ino, name, layer_id, value) \
       SELECT t.id, vx.ino, vx.name, t.head_layer, vx.value FROM vx, t) \
     SELECT t.id, t.head_layer, src.block_size, src.compression, src.data_url FROM t, src";

/// The clone's statement runs in a transaction that also copies the blocks of a store source
/// (`copy`) before it commits: the clone is visible only once every object it names is there.
pub(super) async fn clone_tenant(
    pool: &PgPool,
    new: &NewClone,
    copy: Option<&dyn CopyBlocks>,
) -> BackendResult<TenantRecord> {
    let chain: Vec<i64> = new.source.chain.iter().map(|l| l.0).collect();
    let mut tx = pool.begin().await.map_err(map_err)?;
    let row: Option<(i64, i64, i32, i16, Option<String>)> = sqlx::query_as(CLONE_TENANT)
        .bind(new.source.tenant.0)
        .bind(&chain)
        .bind(&new.name)
        .bind(limit_to_sql(new.quota.bytes))
        .bind(limit_to_sql(new.quota.inodes))
        .bind(new.created_at.0)
        .bind(&new.owner)
        .bind(new.source.head().0)
        .bind(STATE_DELETED)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
    // No row: the tenant is gone, or a layer of the chain is (which the engine retries).
    let Some((id, head, block_size, compression, data_url)) = row else {
        drop(tx);
        let layers = super::layers::layers(pool, new.source.tenant).await?;
        let chain_intact = new
            .source
            .chain
            .iter()
            .all(|l| layers.iter().any(|r| r.id == *l));
        return Err(if chain_intact || layers.is_empty() {
            BackendError::TenantGone
        } else {
            BackendError::StaleView
        });
    };
    if let (Some(copy), Some(_)) = (copy, &data_url) {
        let mut after: Vec<u8> = Vec::new();
        loop {
            let page: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT hash FROM blocks WHERE tenant_id = $1 AND parts IS NULL AND hash > $2 \
                 ORDER BY hash LIMIT 4096",
            )
            .bind(id)
            .bind(&after)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            let Some(last) = page.last() else { break };
            after = last.clone();
            let hashes = page
                .into_iter()
                .map(super::blocks::hash_of)
                .collect::<BackendResult<Vec<_>>>()?;
            copy.copy(crate::types::TenantId(id), &hashes).await?;
        }
    }
    tx.commit().await.map_err(map_err)?;
    Ok(TenantRecord {
        id: crate::types::TenantId(id),
        name: new.name.clone(),
        state: TenantState::Active,
        head_layer: LayerId(head),
        block_size: u32::try_from(block_size)
            .map_err(|_| BackendError::Corrupt(format!("block size {block_size}")))?,
        compression: crate::backend::Compression::from_code(compression)
            .ok_or_else(|| BackendError::Corrupt(format!("compression code {compression}")))?,
        quota: new.quota,
        created_at: new.created_at,
        auto_checkpoint_secs: None,
        audit: TenantAudit::default(),
        owner: new.owner.clone(),
        access_policy: None,
        native_mounts: None,
        data_url,
    })
}
