//! Blocks whose bytes live in a block store: the reap epoch, dead-row claims for the reaper,
//! adoption of objects no row names, and the listing of referenced blocks.

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

use super::convert::map_err;
use crate::backend::{BlockHash, DeadBlocks};
use crate::error::{BackendError, BackendResult};
use crate::types::TenantId;

/// A transaction's parts taken ($2) and rows released ($3), at commit or by a dropped layer:
/// rows holding their data go at once (a patched block releasing its parts), rows of store
/// blocks stay, dead, for the reaper (migration 0008).
pub(super) const SETTLE_BLOCKS: &str = "SELECT tarbox_settle_blocks($1, $2, $3)";

pub(super) const REAP_EPOCH: &str = "SELECT reap_epoch FROM tenants WHERE id = $1";

/// Dead rows old enough, locked so that no writer revives them while their objects are deleted.
const CLAIM: &str = "SELECT hash FROM blocks \
     WHERE tenant_id = $1 AND dead_since < now() - make_interval(secs => $2) AND refcount <= 0 \
     ORDER BY dead_since LIMIT $3 FOR UPDATE SKIP LOCKED";

const ADOPT: &str = "INSERT INTO blocks (tenant_id, hash, refcount, compressed, data, dead_since) \
     SELECT $1, h, 0, false, NULL, now() FROM UNNEST($2::bytea[]) AS h \
     ON CONFLICT (tenant_id, hash) DO NOTHING";

/// Blocks whose objects must be in the store: patched blocks live in their rows only.
const HASHES: &str = "SELECT hash FROM blocks \
     WHERE tenant_id = $1 AND refcount > 0 AND parts IS NULL AND hash > $2 \
     ORDER BY hash LIMIT $3";

pub(super) fn hash_of(bytes: Vec<u8>) -> BackendResult<BlockHash> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| BackendError::Corrupt("a block hash is not 32 bytes".into()))?;
    Ok(BlockHash(array))
}

pub(super) async fn reap_epoch(pool: &PgPool, tenant: TenantId) -> BackendResult<u64> {
    let epoch: Option<i64> = sqlx::query_scalar(REAP_EPOCH)
        .bind(tenant.0)
        .fetch_optional(pool)
        .await
        .map_err(map_err)?;
    let epoch = epoch.ok_or(BackendError::TenantGone)?;
    Ok(u64::try_from(epoch).unwrap_or(0))
}

pub(super) async fn claim_dead(
    pool: &PgPool,
    tenant: TenantId,
    grace: std::time::Duration,
    limit: usize,
) -> BackendResult<Box<dyn DeadBlocks>> {
    let mut tx = pool.begin().await.map_err(map_err)?;
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(CLAIM)
        .bind(tenant.0)
        .bind(grace.as_secs_f64())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
    let hashes = rows
        .into_iter()
        .map(hash_of)
        .collect::<BackendResult<Vec<_>>>()?;
    Ok(Box::new(PgDeadBlocks { tx, tenant, hashes }))
}

pub(super) async fn adopt(
    pool: &PgPool,
    tenant: TenantId,
    hashes: &[BlockHash],
) -> BackendResult<u64> {
    let hashes: Vec<&[u8]> = hashes.iter().map(|h| &h.0[..]).collect();
    let done = sqlx::query(ADOPT)
        .bind(tenant.0)
        .bind(hashes)
        .execute(pool)
        .await
        .map_err(map_err)?;
    Ok(done.rows_affected())
}

pub(super) async fn referenced(
    pool: &PgPool,
    tenant: TenantId,
    after: Option<BlockHash>,
    limit: usize,
) -> BackendResult<Vec<BlockHash>> {
    let after: Vec<u8> = after.map_or_else(Vec::new, |h| h.0.to_vec());
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(HASHES)
        .bind(tenant.0)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    rows.into_iter().map(hash_of).collect()
}

/// A reaper's claim: the transaction holding the row locks.
struct PgDeadBlocks {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
    hashes: Vec<BlockHash>,
}

#[async_trait]
impl DeadBlocks for PgDeadBlocks {
    fn hashes(&self) -> &[BlockHash] {
        &self.hashes
    }

    async fn forget(self: Box<Self>) -> BackendResult<()> {
        let PgDeadBlocks {
            mut tx,
            tenant,
            hashes,
        } = *self;
        if hashes.is_empty() {
            return Ok(());
        }
        let hashes: Vec<&[u8]> = hashes.iter().map(|h| &h.0[..]).collect();
        sqlx::query(
            "WITH gone AS (DELETE FROM blocks WHERE tenant_id = $1 AND hash = ANY($2)) \
             UPDATE tenants SET reap_epoch = reap_epoch + 1 WHERE id = $1",
        )
        .bind(tenant.0)
        .bind(hashes)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }
}
