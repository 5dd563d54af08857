//! Reads through a layer chain ([`StoreRead`]), shared by out-of-transaction readers and
//! transactions.
//!
//! Each read is one statement. Every query exists in two forms: a single-layer form for views
//! whose chain is just the head (`layer_id = $chain[1]`, an equality the primary keys serve
//! directly) and a chain form (`layer_id = ANY($chain)`) that picks, per key, the row with the
//! largest layer id. Both forms take the same parameters, so the choice is only of the SQL text.
//! Rows that hide older layers (tombstones, whiteouts, holes, removed xattrs) are filtered after
//! the newest row per key has been chosen.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::postgres::{PgExecutor, PgPool, PgRow};

use super::convert::{block_hash, col, file_type, inode_from_row, map_err, to_i64, to_u64};
use crate::backend::{BlockHash, DentryRecord, LayerView, StoreRead, StoredBlock};
use crate::error::{BackendError, BackendResult};
use crate::types::{Ino, Inode};

/// The tenant and layer chain a reader or transaction works on, as SQL values.
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub(super) tenant: i64,
    /// Layer ids, head first.
    pub(super) chain: Vec<i64>,
}

impl Scope {
    pub(super) fn new(view: &LayerView) -> Scope {
        Scope {
            tenant: view.tenant.0,
            chain: view.chain.iter().map(|l| l.0).collect(),
        }
    }

    /// Whether the chain is the head alone (no checkpoints below it).
    pub(super) fn single(&self) -> bool {
        self.chain.len() <= 1
    }

    /// The layers below the head, newest first.
    pub(super) fn lower(&self) -> &[i64] {
        self.chain.get(1..).unwrap_or(&[])
    }

    /// Pick the single-layer or the chain form of a query.
    fn sql(&self, single: &'static str, chain: &'static str) -> &'static str {
        if self.single() { single } else { chain }
    }
}

/// The `inodes` columns [`inode_from_row`] decodes, as a literal for `concat!`.
macro_rules! inode_cols {
    () => {
        "tombstone, kind, perm, uid, gid, nlink, size, atime, mtime, ctime, btime, rdev, parent, \
         target"
    };
}

const INODE_1: &str = concat!(
    "SELECT ",
    inode_cols!(),
    " FROM inodes \
     WHERE tenant_id = $1 AND ino = $2 AND layer_id = $3[1]"
);
const INODE_N: &str = concat!(
    "SELECT ",
    inode_cols!(),
    " FROM inodes \
     WHERE tenant_id = $1 AND ino = $2 AND layer_id = ANY($3) \
     ORDER BY layer_id DESC LIMIT 1"
);

const INODES_1: &str = concat!(
    "SELECT ino, ",
    inode_cols!(),
    " FROM inodes \
     WHERE tenant_id = $1 AND ino = ANY($2) AND layer_id = $3[1]"
);
const INODES_N: &str = concat!(
    "SELECT DISTINCT ON (ino) ino, ",
    inode_cols!(),
    " FROM inodes \
     WHERE tenant_id = $1 AND ino = ANY($2) AND layer_id = ANY($3) \
     ORDER BY ino, layer_id DESC"
);

/// An entry and the inode it names, each resolved through the chain, in one statement.
const LOOKUP_INODE: &str = concat!(
    // The entry's kind doubles as the inode's (they are equal by construction).
    "SELECT d.name, d.ino, d.kind, d.cookie, i.tombstone, i.perm, i.uid, i.gid, i.nlink, \
       i.size, i.atime, i.mtime, i.ctime, i.btime, i.rdev, i.parent, i.target \
     FROM ( \
       SELECT name, ino, kind, cookie FROM dentries \
       WHERE tenant_id = $1 AND parent = $2 AND name = $3 AND layer_id = ANY($4) \
       ORDER BY layer_id DESC LIMIT 1) d \
     CROSS JOIN LATERAL ( \
       SELECT ",
    inode_cols!(),
    " FROM inodes \
       WHERE tenant_id = $1 AND ino = d.ino AND layer_id = ANY($4) \
       ORDER BY layer_id DESC LIMIT 1) i \
     WHERE d.ino IS NOT NULL"
);

const LOOKUP_1: &str = "SELECT name, ino, kind, cookie FROM dentries \
     WHERE tenant_id = $1 AND parent = $2 AND name = $3 AND layer_id = $4[1]";
const LOOKUP_N: &str = "SELECT name, ino, kind, cookie FROM dentries \
     WHERE tenant_id = $1 AND parent = $2 AND name = $3 AND layer_id = ANY($4) \
     ORDER BY layer_id DESC LIMIT 1";

// Served by the partial (tenant_id, parent, layer_id, cookie) index of live entries (0004): a page
// costs LIMIT rows.
const LIST_1: &str = "SELECT name, ino, kind, cookie FROM dentries \
     WHERE tenant_id = $1 AND parent = $2 AND layer_id = $3[1] AND cookie > $4 \
       AND ino IS NOT NULL \
     ORDER BY cookie LIMIT $5";
// A row is visible when no newer layer of the chain has a row for its name. Filtering on the
// cookie before resolving names (rather than resolving the whole directory with DISTINCT ON and
// filtering after) keeps later pages from re-reading the entries already listed.
const LIST_N: &str = "SELECT d.name, d.ino, d.kind, d.cookie FROM dentries d \
     WHERE d.tenant_id = $1 AND d.parent = $2 AND d.layer_id = ANY($3) AND d.cookie > $4 \
       AND d.ino IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM dentries n \
                       WHERE n.tenant_id = $1 AND n.parent = $2 AND n.name = d.name \
                         AND n.layer_id = ANY($3) AND n.layer_id > d.layer_id) \
     ORDER BY d.cookie LIMIT $5";

const HAS_ENTRIES_1: &str = "SELECT EXISTS (SELECT 1 FROM dentries \
     WHERE tenant_id = $1 AND parent = $2 AND layer_id = $3[1] AND ino IS NOT NULL)";
const HAS_ENTRIES_N: &str = "SELECT EXISTS (SELECT 1 FROM dentries d \
     WHERE d.tenant_id = $1 AND d.parent = $2 AND d.layer_id = ANY($3) AND d.ino IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM dentries n \
                       WHERE n.tenant_id = $1 AND n.parent = $2 AND n.name = d.name \
                         AND n.layer_id = ANY($3) AND n.layer_id > d.layer_id))";

const BLOCK_MAP_1: &str = "SELECT idx, hash FROM block_map \
     WHERE tenant_id = $1 AND ino = $2 AND idx >= $3 AND idx < $4 AND layer_id = $5[1] \
       AND hash IS NOT NULL \
     ORDER BY idx";
// The primary key (tenant_id, ino, idx, layer_id) delivers rows already in DISTINCT ON order.
const BLOCK_MAP_N: &str = "SELECT idx, hash FROM ( \
       SELECT DISTINCT ON (idx) idx, hash FROM block_map \
       WHERE tenant_id = $1 AND ino = $2 AND idx >= $3 AND idx < $4 AND layer_id = ANY($5) \
       ORDER BY idx, layer_id DESC) m \
     WHERE hash IS NOT NULL ORDER BY idx";

const BLOCKS: &str = "SELECT hash, compressed, COALESCE(data, ''), parts FROM blocks \
     WHERE tenant_id = $1 AND hash = ANY($2)";
const PATCHED_BLOCKS: &str = "SELECT hash, compressed, data, parts FROM blocks \
     WHERE tenant_id = $1 AND hash = ANY($2) AND parts IS NOT NULL";

const XATTR_1: &str = "SELECT value FROM xattrs \
     WHERE tenant_id = $1 AND ino = $2 AND name = $3 AND layer_id = $4[1]";
const XATTR_N: &str = "SELECT value FROM xattrs \
     WHERE tenant_id = $1 AND ino = $2 AND name = $3 AND layer_id = ANY($4) \
     ORDER BY layer_id DESC LIMIT 1";

const XATTR_NAMES_1: &str = "SELECT name FROM xattrs \
     WHERE tenant_id = $1 AND ino = $2 AND layer_id = $3[1] AND value IS NOT NULL \
     ORDER BY name";
const XATTR_NAMES_N: &str = "SELECT name FROM ( \
       SELECT DISTINCT ON (name) name, value FROM xattrs \
       WHERE tenant_id = $1 AND ino = $2 AND layer_id = ANY($3) \
       ORDER BY name, layer_id DESC) x \
     WHERE value IS NOT NULL ORDER BY name";

pub(super) async fn inode<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    ino: Ino,
) -> BackendResult<Option<Inode>> {
    let row = sqlx::query(s.sql(INODE_1, INODE_N))
        .bind(s.tenant)
        .bind(to_i64("inode number", ino.0)?)
        .bind(&s.chain)
        .fetch_optional(ex)
        .await
        .map_err(map_err)?;
    match row {
        Some(row) => inode_from_row(ino, &row),
        None => Ok(None),
    }
}

pub(super) async fn inodes<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    inos: &[Ino],
) -> BackendResult<Vec<Inode>> {
    if inos.is_empty() {
        return Ok(Vec::new());
    }
    let keys = inos
        .iter()
        .map(|ino| to_i64("inode number", ino.0))
        .collect::<BackendResult<Vec<i64>>>()?;
    let rows = sqlx::query(s.sql(INODES_1, INODES_N))
        .bind(s.tenant)
        .bind(keys)
        .bind(&s.chain)
        .fetch_all(ex)
        .await
        .map_err(map_err)?;
    // Tombstones decode to None and are dropped.
    rows.iter()
        .filter_map(|row| {
            col::<i64>(row, "ino")
                .and_then(|ino| to_u64("inode number", ino))
                .and_then(|ino| inode_from_row(Ino(ino), row))
                .transpose()
        })
        .collect()
}

/// Decode a `dentries` row; `None` for a whiteout.
fn dentry_from_row(row: &PgRow) -> BackendResult<Option<DentryRecord>> {
    let Some(ino) = col::<Option<i64>>(row, "ino")? else {
        return Ok(None);
    };
    Ok(Some(DentryRecord {
        name: col(row, "name")?,
        ino: Ino(to_u64("inode number", ino)?),
        kind: file_type(col(row, "kind")?)?,
        cookie: to_u64("cookie", col(row, "cookie")?)?,
    }))
}

pub(super) async fn lookup<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    parent: Ino,
    name: &[u8],
) -> BackendResult<Option<DentryRecord>> {
    let row = sqlx::query(s.sql(LOOKUP_1, LOOKUP_N))
        .bind(s.tenant)
        .bind(to_i64("inode number", parent.0)?)
        .bind(name)
        .bind(&s.chain)
        .fetch_optional(ex)
        .await
        .map_err(map_err)?;
    match row {
        Some(row) => dentry_from_row(&row),
        None => Ok(None),
    }
}

pub(super) async fn lookup_inode<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    parent: Ino,
    name: &[u8],
) -> BackendResult<Option<(DentryRecord, Inode)>> {
    let row = sqlx::query(LOOKUP_INODE)
        .bind(s.tenant)
        .bind(to_i64("inode number", parent.0)?)
        .bind(name)
        .bind(&s.chain)
        .fetch_optional(ex)
        .await
        .map_err(map_err)?;
    let Some(row) = row else { return Ok(None) };
    let Some(entry) = dentry_from_row(&row)? else {
        return Ok(None);
    };
    Ok(inode_from_row(entry.ino, &row)?.map(|inode| (entry, inode)))
}

pub(super) async fn list_dir<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    parent: Ino,
    after: u64,
    limit: usize,
) -> BackendResult<Vec<DentryRecord>> {
    // Cookies come from a bigint sequence: nothing sorts after i64::MAX.
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(s.sql(LIST_1, LIST_N))
        .bind(s.tenant)
        .bind(to_i64("inode number", parent.0)?)
        .bind(&s.chain)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(ex)
        .await
        .map_err(map_err)?;
    // The queries only return live rows, so every row decodes to an entry.
    rows.iter()
        .filter_map(|row| dentry_from_row(row).transpose())
        .collect()
}

pub(super) async fn dir_has_entries<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    parent: Ino,
) -> BackendResult<bool> {
    sqlx::query_scalar(s.sql(HAS_ENTRIES_1, HAS_ENTRIES_N))
        .bind(s.tenant)
        .bind(to_i64("inode number", parent.0)?)
        .bind(&s.chain)
        .fetch_one(ex)
        .await
        .map_err(map_err)
}

pub(super) async fn block_map<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    ino: Ino,
    range: Range<u64>,
) -> BackendResult<Vec<(u64, BlockHash)>> {
    // Indexes are stored as bigint: clamp the range to what can exist.
    let start = i64::try_from(range.start).unwrap_or(i64::MAX);
    let end = i64::try_from(range.end).unwrap_or(i64::MAX);
    if start >= end {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(s.sql(BLOCK_MAP_1, BLOCK_MAP_N))
        .bind(s.tenant)
        .bind(to_i64("inode number", ino.0)?)
        .bind(start)
        .bind(end)
        .bind(&s.chain)
        .fetch_all(ex)
        .await
        .map_err(map_err)?;
    rows.into_iter()
        .map(|(idx, hash)| Ok((to_u64("block index", idx)?, block_hash(&hash)?)))
        .collect()
}

/// hash, compressed, data (empty for a store block), parts.
type BlockRow = (Vec<u8>, bool, Vec<u8>, Option<Vec<u8>>);

/// The block rows of `hashes`; only the patched ones with `only_patched`.
pub(super) async fn blocks<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    hashes: &[BlockHash],
    only_patched: bool,
) -> BackendResult<Vec<StoredBlock>> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<&[u8]> = hashes.iter().map(|h| &h.0[..]).collect();
    let sql = if only_patched { PATCHED_BLOCKS } else { BLOCKS };
    let rows: Vec<BlockRow> = sqlx::query_as(sql)
        .bind(s.tenant)
        .bind(keys)
        .fetch_all(ex)
        .await
        .map_err(map_err)?;
    rows.into_iter()
        .map(|(hash, compressed, data, parts)| {
            Ok(StoredBlock {
                hash: block_hash(&hash)?,
                compressed,
                data: Bytes::from(data),
                parts: parts.as_deref().map_or(Ok(Vec::new()), parts_of)?,
            })
        })
        .collect()
}

/// The hashes of a patched block's `parts` column (concatenated 32-byte hashes).
pub(super) fn parts_of(parts: &[u8]) -> BackendResult<Vec<BlockHash>> {
    if parts.len() % 32 != 0 {
        return Err(BackendError::Corrupt(
            "a patched block's parts are not whole hashes".into(),
        ));
    }
    parts.chunks(32).map(block_hash).collect()
}

/// The `parts` column of a block: `NULL` for a plain block.
pub(super) fn parts_column(parts: &[BlockHash]) -> Option<Vec<u8>> {
    (!parts.is_empty()).then(|| parts.iter().flat_map(|h| h.0).collect())
}

pub(super) async fn xattr<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    ino: Ino,
    name: &[u8],
) -> BackendResult<Option<Vec<u8>>> {
    let value: Option<Option<Vec<u8>>> = sqlx::query_scalar(s.sql(XATTR_1, XATTR_N))
        .bind(s.tenant)
        .bind(to_i64("inode number", ino.0)?)
        .bind(name)
        .bind(&s.chain)
        .fetch_optional(ex)
        .await
        .map_err(map_err)?;
    // No row, or a removal row (NULL value) hiding older layers.
    Ok(value.flatten())
}

pub(super) async fn xattr_names<'c>(
    ex: impl PgExecutor<'c>,
    s: &Scope,
    ino: Ino,
) -> BackendResult<Vec<Vec<u8>>> {
    sqlx::query_scalar(s.sql(XATTR_NAMES_1, XATTR_NAMES_N))
        .bind(s.tenant)
        .bind(to_i64("inode number", ino.0)?)
        .bind(&s.chain)
        .fetch_all(ex)
        .await
        .map_err(map_err)
}

/// Implements [`StoreRead`] for a type with a method `exec(&mut self) -> (executor, &Scope)`,
/// forwarding every read to the functions of this module.
macro_rules! impl_store_read {
    ($ty:ty) => {
        #[async_trait]
        impl StoreRead for $ty {
            async fn inode(&mut self, ino: Ino) -> BackendResult<Option<Inode>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::inode(ex, scope, ino).await
            }

            async fn inodes(&mut self, inos: &[Ino]) -> BackendResult<Vec<Inode>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::inodes(ex, scope, inos).await
            }

            async fn lookup(
                &mut self,
                parent: Ino,
                name: &[u8],
            ) -> BackendResult<Option<DentryRecord>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::lookup(ex, scope, parent, name).await
            }

            async fn lookup_inode(
                &mut self,
                parent: Ino,
                name: &[u8],
            ) -> BackendResult<Option<(DentryRecord, Inode)>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::lookup_inode(ex, scope, parent, name).await
            }

            async fn list_dir(
                &mut self,
                parent: Ino,
                after: u64,
                limit: usize,
            ) -> BackendResult<Vec<DentryRecord>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::list_dir(ex, scope, parent, after, limit).await
            }

            async fn dir_has_entries(&mut self, parent: Ino) -> BackendResult<bool> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::dir_has_entries(ex, scope, parent).await
            }

            async fn block_map(
                &mut self,
                ino: Ino,
                range: std::ops::Range<u64>,
            ) -> BackendResult<Vec<(u64, BlockHash)>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::block_map(ex, scope, ino, range).await
            }

            async fn blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::blocks(ex, scope, hashes, false).await
            }

            async fn patched_blocks(
                &mut self,
                hashes: &[BlockHash],
            ) -> BackendResult<Vec<StoredBlock>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::blocks(ex, scope, hashes, true).await
            }

            async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::xattr(ex, scope, ino, name).await
            }

            async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>> {
                let (ex, scope) = self.exec();
                $crate::backend::postgres::read::xattr_names(ex, scope, ino).await
            }
        }
    };
}
pub(super) use impl_store_read;

/// Reads committed data; every call is one autocommit statement on a pooled connection.
#[derive(Debug)]
pub(super) struct PgReader {
    pool: PgPool,
    scope: Scope,
}

impl PgReader {
    pub(super) fn new(pool: PgPool, scope: Scope) -> PgReader {
        PgReader { pool, scope }
    }

    fn exec(&mut self) -> (&PgPool, &Scope) {
        (&self.pool, &self.scope)
    }
}

impl_store_read!(PgReader);
