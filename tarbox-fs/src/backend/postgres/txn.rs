//! File-operation transactions ([`StoreTxn`]).
//!
//! # Opening
//! [`PgTxn::begin`] sends one simple-protocol message, `SELECT tarbox_begin(…); BEGIN`: the
//! function (see the migration) takes the inode advisory locks in sorted order and checks the
//! tenant row, inside the implicit transaction that the trailing `BEGIN` turns into a regular
//! one. One round trip opens the transaction, locks and validates; when the check raises, the
//! implicit transaction is gone and the connection goes back to the pool idle. The opening runs
//! in its own task so that a caller giving up while it waits for a lock cannot leave a pooled
//! connection inside a half-opened transaction: the task finishes and rolls back.
//!
//! # Writes
//! Every write is one statement. Multi-step writes (remove an inode and tombstone it, unbind
//! and white out, remap blocks and adjust their counts) use data-modifying CTEs, where all parts
//! see the same snapshot; the parts are written to touch disjoint rows, since PostgreSQL does not
//! let one statement modify a row twice.
//!
//! # Block reference counts
//! Counts change only through `INSERT … ON CONFLICT DO UPDATE` and `UPDATE`, which lock the row
//! and re-read its newest version, so concurrent engines sharing a block never lose an update.
//! A block whose count reaches zero keeps its row (locked by this transaction) until commit,
//! where one call of `tarbox_settle_blocks` removes every such block: a later write in the same
//! transaction may still revive it, and an engine inserting the same content concurrently waits
//! for our commit and then re-inserts it (PostgreSQL retries the upsert when the conflicting row
//! was deleted). A mapping to a block that is not in `new_blocks` and has disappeared meanwhile
//! makes the write fail with [`BackendError::Conflict`]: the engine retries and supplies it.
//!
//! A patched block (see `engine/patched.rs`) holds one reference to each block it names while
//! its row exists: the parts of the patched blocks a transaction inserted take theirs at commit,
//! in the same call and before anything is released, and a patched block released there
//! releases its parts in turn.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use super::audit::Partitions;
use super::convert::{map_err, to_i64};
use super::read::{Scope, impl_store_read};
use crate::audit::AuditEvent;
use crate::backend::{BlockHash, BlockWrite, DentryRecord, StoreRead, StoreTxn, StoredBlock};
use crate::error::{BackendError, BackendResult, QuotaKind};
use crate::types::{FileType, Ino, Inode, Quota, Usage};

/// An open transaction writing through the head of its scope.
#[derive(Debug)]
pub(super) struct PgTxn {
    tx: Transaction<'static, Postgres>,
    scope: Scope,
    head: i64,
    /// Blocks whose count dropped to zero or below; deleted at commit if still unreferenced.
    dead: BTreeSet<Vec<u8>>,
    /// Parts of the patched blocks this transaction inserted, each as often as named: each
    /// takes a reference at commit, before anything is released.
    taken: Vec<Vec<u8>>,
    partitions: Arc<Partitions>,
}

/// A 64-bit mix of the tenant and the inode number: the advisory-lock key of an inode. A
/// collision only makes two unrelated operations wait for each other.
fn lock_key(tenant: i64, ino: Ino) -> i64 {
    fn splitmix64(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    // Bit reinterpretations: only the bits matter for a lock key.
    let tenant = u64::from_ne_bytes(tenant.to_ne_bytes());
    i64::from_ne_bytes(splitmix64(splitmix64(tenant) ^ ino.0).to_ne_bytes())
}

/// The opening message of a transaction (see the module docs). Only integers are formatted into
/// it, so it cannot carry injected SQL.
fn begin_sql(tenant: i64, head: i64, locks: &[Ino]) -> String {
    let mut keys: Vec<i64> = locks.iter().map(|&ino| lock_key(tenant, ino)).collect();
    // One global order for every transaction: lock waits cannot form a cycle.
    keys.sort_unstable();
    keys.dedup();
    let keys: Vec<String> = keys.iter().map(i64::to_string).collect();
    format!(
        "SELECT tarbox_begin({tenant}, {head}, '{{{}}}'::bigint[]); BEGIN",
        keys.join(",")
    )
}

impl PgTxn {
    pub(super) async fn begin(
        pool: &PgPool,
        partitions: Arc<Partitions>,
        scope: Scope,
        locks: &[Ino],
    ) -> BackendResult<PgTxn> {
        let head = *scope
            .chain
            .first()
            .ok_or_else(|| BackendError::Other("layer view with an empty chain".into()))?;
        let sql = begin_sql(scope.tenant, head, locks);
        let pool = pool.clone();
        let tx = tokio::spawn(async move { pool.begin_with(AssertSqlSafe(sql)).await })
            .await
            .map_err(|e| BackendError::Other(Box::new(e)))?
            .map_err(map_err)?;
        Ok(PgTxn {
            tx,
            scope,
            head,
            dead: BTreeSet::new(),
            taken: Vec::new(),
            partitions,
        })
    }

    fn exec(&mut self) -> (&mut PgConnection, &Scope) {
        (&mut *self.tx, &self.scope)
    }

    /// Remember blocks a statement left without references (rows of `(hash, refcount)`).
    fn note_released(&mut self, rows: Vec<(Vec<u8>, Option<i64>)>) -> BackendResult<()> {
        for (hash, refcount) in rows {
            match refcount {
                Some(n) if n <= 0 => {
                    self.dead.insert(hash);
                }
                Some(_) => {}
                // A mapping names a block that is not stored (any more): see the module docs.
                None => return Err(BackendError::Conflict),
            }
        }
        Ok(())
    }
}

impl_store_read!(PgTxn);

/// One column of `rows`, for an `unnest` of arrays.
fn column<'a, T>(
    rows: &[&'a Inode],
    f: impl Fn(&'a Inode) -> BackendResult<T>,
) -> BackendResult<Vec<T>> {
    rows.iter().map(|&i| f(i)).collect()
}

impl PgTxn {
    /// A charge was refused (or the tenant is gone): which limit, on the latest usage. `None`
    /// when usage dropped (or the quota grew) in between: the caller charges again.
    async fn refused_by(&mut self, bytes: i64, inodes: i64) -> BackendResult<Option<QuotaKind>> {
        let row: Option<(i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(USAGE_AND_QUOTA)
            .bind(self.scope.tenant)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let Some((used_bytes, used_inodes, quota_bytes, quota_inodes)) = row else {
            return Err(BackendError::TenantGone);
        };
        let quota = Quota {
            bytes: quota_bytes.map(|q| q.max(0) as u64),
            inodes: quota_inodes.map(|q| q.max(0) as u64),
        };
        let usage = Usage {
            bytes: used_bytes.max(0) as u64,
            inodes: used_inodes.max(0) as u64,
        };
        Ok(quota.exceeded_by(usage, bytes, inodes))
    }
}

const PUT_INODE: &str = "INSERT INTO inodes (tenant_id, ino, layer_id, tombstone, kind, perm, \
       uid, gid, nlink, size, atime, mtime, ctime, btime, rdev, parent, target) \
     VALUES ($1, $2, $3, false, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
     ON CONFLICT (tenant_id, ino, layer_id) DO UPDATE SET tombstone = false, \
       kind = EXCLUDED.kind, perm = EXCLUDED.perm, uid = EXCLUDED.uid, gid = EXCLUDED.gid, \
       nlink = EXCLUDED.nlink, size = EXCLUDED.size, atime = EXCLUDED.atime, \
       mtime = EXCLUDED.mtime, ctime = EXCLUDED.ctime, btime = EXCLUDED.btime, \
       rdev = EXCLUDED.rdev, parent = EXCLUDED.parent, target = EXCLUDED.target";

/// $1 tenant, $2 ino, $3 head, $4 lower layers. The head row is deleted, or turned into a
/// tombstone when a lower layer has a live version; head mappings and xattrs go, and the blocks
/// they named are released. Returns `(hash, refcount)` of the released blocks.
const REMOVE_INODE: &str = "WITH older AS ( \
       SELECT * FROM ( \
         SELECT tombstone, kind, perm, uid, gid, nlink, size, atime, mtime, ctime, btime, rdev, \
                parent, target \
         FROM inodes WHERE tenant_id = $1 AND ino = $2 AND layer_id = ANY($4) \
         ORDER BY layer_id DESC LIMIT 1) o \
       WHERE NOT o.tombstone), \
     del_inode AS ( \
       DELETE FROM inodes WHERE tenant_id = $1 AND ino = $2 AND layer_id = $3 \
         AND NOT EXISTS (SELECT 1 FROM older)), \
     tombstone AS ( \
       INSERT INTO inodes (tenant_id, ino, layer_id, tombstone, kind, perm, uid, gid, nlink, \
                           size, atime, mtime, ctime, btime, rdev, parent, target) \
       SELECT $1, $2, $3, true, kind, perm, uid, gid, nlink, size, atime, mtime, ctime, btime, \
              rdev, parent, target FROM older \
       ON CONFLICT (tenant_id, ino, layer_id) DO UPDATE SET tombstone = true), \
     del_xattrs AS ( \
       DELETE FROM xattrs WHERE tenant_id = $1 AND ino = $2 AND layer_id = $3), \
     del_map AS ( \
       DELETE FROM block_map WHERE tenant_id = $1 AND ino = $2 AND layer_id = $3 \
       RETURNING hash), \
     released AS ( \
       SELECT hash, count(*) AS n FROM del_map WHERE hash IS NOT NULL GROUP BY hash) \
     UPDATE blocks b SET refcount = b.refcount - r.n FROM released r \
     WHERE b.tenant_id = $1 AND b.hash = r.hash \
     RETURNING b.hash, b.refcount";

/// A fresh cookie on every bind: the column default draws it, also for the conflicting row.
const BIND: &str = "INSERT INTO dentries (tenant_id, parent, name, layer_id, ino, kind) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (tenant_id, parent, name, layer_id) \
     DO UPDATE SET ino = EXCLUDED.ino, kind = EXCLUDED.kind, cookie = EXCLUDED.cookie \
     RETURNING cookie";

/// $1 tenant, $2 parent, $3 name, $4 head, $5 lower layers. Deletes the head row, or makes it a
/// whiteout when a lower layer has a live entry of that name.
const UNBIND: &str = "WITH hidden AS ( \
       SELECT 1 FROM ( \
         SELECT ino FROM dentries \
         WHERE tenant_id = $1 AND parent = $2 AND name = $3 AND layer_id = ANY($5) \
         ORDER BY layer_id DESC LIMIT 1) o \
       WHERE o.ino IS NOT NULL), \
     del AS ( \
       DELETE FROM dentries WHERE tenant_id = $1 AND parent = $2 AND name = $3 \
         AND layer_id = $4 AND NOT EXISTS (SELECT 1 FROM hidden)) \
     INSERT INTO dentries (tenant_id, parent, name, layer_id, ino, kind, cookie) \
     SELECT $1, $2, $3, $4, NULL, 0, 0 FROM hidden \
     ON CONFLICT (tenant_id, parent, name, layer_id) DO UPDATE SET ino = NULL, kind = 0, cookie = 0";

/// $1 tenant, $2 ino, $3 head, $4 indexes, $5 hashes (NULL = hole), $6/$7/$8/$9 new blocks'
/// hashes, compressed flags, data and parts. Upserts the mappings and moves each touched block's
/// count by its net change (+1 per new mapping, -1 per replaced head mapping), inserting new
/// blocks. Returns `(hash, refcount, fresh, inserted)` per changed block, and
/// `(hash, NULL, false, false)` for a block that should exist but does not; `inserted` marks a
/// row this statement inserted rather than found (`xmax = 0` only on a row version the
/// statement inserted), `fresh` such a row of a store block (no data). A dead row found is
/// revived.
const WRITE_BLOCKS: &str = "WITH w AS ( \
       SELECT * FROM UNNEST($4::bigint[], $5::bytea[]) AS w(idx, hash)), \
     old AS ( \
       SELECT hash FROM block_map \
       WHERE tenant_id = $1 AND ino = $2 AND layer_id = $3 AND idx = ANY($4) \
         AND hash IS NOT NULL), \
     put AS ( \
       INSERT INTO block_map (tenant_id, ino, idx, layer_id, hash) \
       SELECT $1, $2, w.idx, $3, w.hash FROM w \
       ON CONFLICT (tenant_id, ino, idx, layer_id) DO UPDATE SET hash = EXCLUDED.hash), \
     delta AS ( \
       SELECT hash, sum(d) AS d FROM ( \
         SELECT hash, 1 AS d FROM w WHERE hash IS NOT NULL \
         UNION ALL SELECT hash, -1 FROM old) x \
       GROUP BY hash), \
     ins AS ( \
       INSERT INTO blocks AS b (tenant_id, hash, refcount, compressed, data, parts) \
       SELECT $1, n.hash, COALESCE(delta.d, 0), n.compressed, n.data, n.parts \
       FROM UNNEST($6::bytea[], $7::bool[], $8::bytea[], $9::bytea[]) \
         AS n(hash, compressed, data, parts) \
       LEFT JOIN delta ON delta.hash = n.hash \
       ON CONFLICT (tenant_id, hash) DO UPDATE \
         SET refcount = b.refcount + EXCLUDED.refcount, dead_since = NULL \
       RETURNING b.hash, b.refcount, (b.xmax = 0 AND b.data IS NULL) AS fresh, \
         (b.xmax = 0) AS inserted), \
     upd AS ( \
       UPDATE blocks b SET refcount = b.refcount + delta.d, \
         dead_since = CASE WHEN b.refcount + delta.d > 0 THEN NULL ELSE b.dead_since END \
       FROM delta \
       WHERE b.tenant_id = $1 AND b.hash = delta.hash AND delta.d <> 0 \
         AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.hash = delta.hash) \
       RETURNING b.hash, b.refcount) \
     SELECT hash, refcount, fresh, inserted FROM ins \
     UNION ALL SELECT hash, refcount, false, false FROM upd \
     UNION ALL SELECT delta.hash, NULL, false, false FROM delta \
       WHERE delta.d > 0 AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.hash = delta.hash) \
         AND NOT EXISTS (SELECT 1 FROM upd WHERE upd.hash = delta.hash)";

/// $1 tenant, $2 ino, $3 head, $4 lower layers, $5 first index. Head rows at or beyond `first`
/// are deleted, or become holes where a lower layer maps the index; their blocks are released.
const TRUNCATE_BLOCKS: &str = "WITH head AS ( \
       SELECT hash FROM block_map \
       WHERE tenant_id = $1 AND ino = $2 AND layer_id = $3 AND idx >= $5), \
     below AS ( \
       SELECT idx FROM ( \
         SELECT DISTINCT ON (idx) idx, hash FROM block_map \
         WHERE tenant_id = $1 AND ino = $2 AND layer_id = ANY($4) AND idx >= $5 \
         ORDER BY idx, layer_id DESC) o \
       WHERE o.hash IS NOT NULL), \
     del AS ( \
       DELETE FROM block_map m \
       WHERE m.tenant_id = $1 AND m.ino = $2 AND m.layer_id = $3 AND m.idx >= $5 \
         AND NOT EXISTS (SELECT 1 FROM below WHERE below.idx = m.idx)), \
     holes AS ( \
       INSERT INTO block_map (tenant_id, ino, idx, layer_id, hash) \
       SELECT $1, $2, idx, $3, NULL FROM below \
       ON CONFLICT (tenant_id, ino, idx, layer_id) DO UPDATE SET hash = NULL), \
     released AS ( \
       SELECT hash, count(*) AS n FROM head WHERE hash IS NOT NULL GROUP BY hash) \
     UPDATE blocks b SET refcount = b.refcount - r.n FROM released r \
     WHERE b.tenant_id = $1 AND b.hash = r.hash \
     RETURNING b.hash, b.refcount";

const SET_XATTR: &str = "INSERT INTO xattrs (tenant_id, ino, name, layer_id, value) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (tenant_id, ino, name, layer_id) DO UPDATE SET value = EXCLUDED.value";

/// $1 tenant, $2 ino, $3 name, $4 head, $5 lower layers: like [`UNBIND`], for an xattr.
const REMOVE_XATTR: &str = "WITH hidden AS ( \
       SELECT 1 FROM ( \
         SELECT value FROM xattrs \
         WHERE tenant_id = $1 AND ino = $2 AND name = $3 AND layer_id = ANY($5) \
         ORDER BY layer_id DESC LIMIT 1) o \
       WHERE o.value IS NOT NULL), \
     del AS ( \
       DELETE FROM xattrs WHERE tenant_id = $1 AND ino = $2 AND name = $3 AND layer_id = $4 \
         AND NOT EXISTS (SELECT 1 FROM hidden)) \
     INSERT INTO xattrs (tenant_id, ino, name, layer_id, value) \
     SELECT $1, $2, $3, $4, NULL FROM hidden \
     ON CONFLICT (tenant_id, ino, name, layer_id) DO UPDATE SET value = NULL";

/// Under READ COMMITTED, an `UPDATE` that waited for a concurrent charge re-evaluates its
/// condition against the committed row: two transactions can never both pass the check on the
/// same headroom. The row stays locked until commit, serialising charges of one tenant.
const CHARGE: &str = "UPDATE tenant_usage u \
     SET bytes = GREATEST(u.bytes + $2, 0), inodes = GREATEST(u.inodes + $3, 0) \
     FROM tenants t \
     WHERE u.tenant_id = $1 AND t.id = $1 \
       AND ($2 <= 0 OR t.quota_bytes IS NULL OR u.bytes + $2 <= t.quota_bytes) \
       AND ($3 <= 0 OR t.quota_inodes IS NULL OR u.inodes + $3 <= t.quota_inodes) \
     RETURNING 1";

/// $1 tenant, $2 bytes to charge, $3 head, $4..$16 the new inode's and the directory's
/// columns (two rows each), $17 directory, $18 name, $19 new inode, $20 its kind. The charge of
/// [`CHARGE`] for one inode, the two inode versions of [`PUT_INODE`] and the binding of
/// [`BIND`], in one statement; writes nothing and returns NULL when the charge is refused.
const CREATE_ENTRY: &str = "WITH c AS ( \
       UPDATE tenant_usage u \
       SET bytes = GREATEST(u.bytes + $2, 0), inodes = GREATEST(u.inodes + 1, 0) \
       FROM tenants t \
       WHERE u.tenant_id = $1 AND t.id = $1 \
         AND ($2 <= 0 OR t.quota_bytes IS NULL OR u.bytes + $2 <= t.quota_bytes) \
         AND (t.quota_inodes IS NULL OR u.inodes + 1 <= t.quota_inodes) \
       RETURNING 1), \
     i AS ( \
       INSERT INTO inodes (tenant_id, ino, layer_id, tombstone, kind, perm, uid, gid, nlink, \
         size, atime, mtime, ctime, btime, rdev, parent, target) \
       SELECT $1, x.ino, $3, false, x.kind, x.perm, x.uid, x.gid, x.nlink, x.size, x.atime, \
         x.mtime, x.ctime, x.btime, x.rdev, x.parent, x.target \
       FROM unnest($4::bigint[], $5::smallint[], $6::integer[], $7::bigint[], $8::bigint[], \
         $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], \
         $14::bigint[], $15::bigint[], $16::bigint[], $21::bytea[]) \
         AS x(ino, kind, perm, uid, gid, nlink, size, atime, mtime, ctime, btime, rdev, parent, \
           target) \
       WHERE EXISTS (SELECT 1 FROM c) \
       ON CONFLICT (tenant_id, ino, layer_id) DO UPDATE SET tombstone = false, \
         kind = EXCLUDED.kind, perm = EXCLUDED.perm, uid = EXCLUDED.uid, gid = EXCLUDED.gid, \
         nlink = EXCLUDED.nlink, size = EXCLUDED.size, atime = EXCLUDED.atime, \
         mtime = EXCLUDED.mtime, ctime = EXCLUDED.ctime, btime = EXCLUDED.btime, \
         rdev = EXCLUDED.rdev, parent = EXCLUDED.parent, target = EXCLUDED.target), \
     b AS ( \
       INSERT INTO dentries (tenant_id, parent, name, layer_id, ino, kind) \
       SELECT $1, $17, $18, $3, $19, $20 WHERE EXISTS (SELECT 1 FROM c) \
       ON CONFLICT (tenant_id, parent, name, layer_id) \
       DO UPDATE SET ino = EXCLUDED.ino, kind = EXCLUDED.kind, cookie = EXCLUDED.cookie \
       RETURNING cookie) \
     SELECT (SELECT cookie FROM b)";

const USAGE_AND_QUOTA: &str = "SELECT u.bytes, u.inodes, t.quota_bytes, t.quota_inodes \
     FROM tenant_usage u JOIN tenants t ON t.id = u.tenant_id WHERE u.tenant_id = $1";

const ADD_ORPHAN: &str = "INSERT INTO orphans (tenant_id, ino, session_id) VALUES ($1, $2, $3) \
     ON CONFLICT (tenant_id, ino) DO UPDATE SET session_id = EXCLUDED.session_id";

const REMOVE_ORPHAN: &str = "DELETE FROM orphans WHERE tenant_id = $1 AND ino = $2";

/// How often a refused charge is re-tried when the usage it was refused on changed before the
/// refusal could be explained.
const CHARGE_ATTEMPTS: usize = 3;

#[async_trait]
impl StoreTxn for PgTxn {
    async fn put_inode(&mut self, inode: &Inode) -> BackendResult<()> {
        sqlx::query(PUT_INODE)
            .bind(self.scope.tenant)
            .bind(to_i64("inode number", inode.ino.0)?)
            .bind(self.head)
            .bind(inode.kind.code())
            .bind(i32::from(inode.perm))
            .bind(i64::from(inode.uid))
            .bind(i64::from(inode.gid))
            .bind(i64::from(inode.nlink))
            .bind(to_i64("file size", inode.size)?)
            .bind(inode.atime.0)
            .bind(inode.mtime.0)
            .bind(inode.ctime.0)
            .bind(inode.btime.0)
            .bind(i64::from(inode.rdev))
            .bind(to_i64("inode number", inode.parent.0)?)
            .bind(&inode.target)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn remove_inode(&mut self, ino: Ino) -> BackendResult<()> {
        let rows: Vec<(Vec<u8>, Option<i64>)> = sqlx::query_as(REMOVE_INODE)
            .bind(self.scope.tenant)
            .bind(to_i64("inode number", ino.0)?)
            .bind(self.head)
            .bind(self.scope.lower())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        self.note_released(rows)
    }

    async fn bind(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileType,
    ) -> BackendResult<u64> {
        let cookie: i64 = sqlx::query_scalar(BIND)
            .bind(self.scope.tenant)
            .bind(to_i64("inode number", parent.0)?)
            .bind(name)
            .bind(self.head)
            .bind(to_i64("inode number", ino.0)?)
            .bind(kind.code())
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)?;
        super::convert::to_u64("cookie", cookie)
    }

    async fn create_entry(
        &mut self,
        dir: &Inode,
        name: &[u8],
        inode: &Inode,
        bytes: i64,
    ) -> BackendResult<Result<u64, QuotaKind>> {
        let rows = [inode, dir];
        let inos = column(&rows, |i| to_i64("inode number", i.ino.0))?;
        let kinds = column(&rows, |i| Ok(i.kind.code()))?;
        let perms = column(&rows, |i| Ok(i32::from(i.perm)))?;
        let uids = column(&rows, |i| Ok(i64::from(i.uid)))?;
        let gids = column(&rows, |i| Ok(i64::from(i.gid)))?;
        let nlinks = column(&rows, |i| Ok(i64::from(i.nlink)))?;
        let sizes = column(&rows, |i| to_i64("file size", i.size))?;
        let atimes = column(&rows, |i| Ok(i.atime.0))?;
        let mtimes = column(&rows, |i| Ok(i.mtime.0))?;
        let ctimes = column(&rows, |i| Ok(i.ctime.0))?;
        let btimes = column(&rows, |i| Ok(i.btime.0))?;
        let rdevs = column(&rows, |i| Ok(i64::from(i.rdev)))?;
        let parents = column(&rows, |i| to_i64("inode number", i.parent.0))?;
        let targets = column(&rows, |i| Ok(i.target.as_slice()))?;
        for _ in 0..CHARGE_ATTEMPTS {
            let cookie: Option<i64> = sqlx::query_scalar(CREATE_ENTRY)
                .bind(self.scope.tenant)
                .bind(bytes)
                .bind(self.head)
                .bind(&inos)
                .bind(&kinds)
                .bind(&perms)
                .bind(&uids)
                .bind(&gids)
                .bind(&nlinks)
                .bind(&sizes)
                .bind(&atimes)
                .bind(&mtimes)
                .bind(&ctimes)
                .bind(&btimes)
                .bind(&rdevs)
                .bind(&parents)
                .bind(inos[1])
                .bind(name)
                .bind(inos[0])
                .bind(inode.kind.code())
                .bind(&targets)
                .fetch_one(&mut *self.tx)
                .await
                .map_err(map_err)?;
            if let Some(cookie) = cookie {
                return Ok(Ok(super::convert::to_u64("cookie", cookie)?));
            }
            if let Some(kind) = self.refused_by(bytes, 1).await? {
                return Ok(Err(kind));
            }
        }
        Err(BackendError::Conflict)
    }

    async fn unbind(&mut self, parent: Ino, name: &[u8]) -> BackendResult<()> {
        sqlx::query(UNBIND)
            .bind(self.scope.tenant)
            .bind(to_i64("inode number", parent.0)?)
            .bind(name)
            .bind(self.head)
            .bind(self.scope.lower())
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn write_blocks(
        &mut self,
        ino: Ino,
        writes: &[BlockWrite],
        new_blocks: &[StoredBlock],
    ) -> BackendResult<Vec<BlockHash>> {
        // One statement may not upsert a row twice: keep the last write per index and one copy
        // of each new block, and insert only new blocks that a mapping names (an unnamed block
        // would be deleted again at once).
        let mut by_index = BTreeMap::new();
        for w in writes {
            by_index.insert(w.index, w.block);
        }
        if by_index.is_empty() {
            return Ok(Vec::new());
        }
        // Named by a mapping, or by a patched block a mapping names.
        let mut named: BTreeSet<BlockHash> = by_index.values().flatten().copied().collect();
        for b in new_blocks {
            if named.contains(&b.hash) {
                named.extend(b.parts.iter().copied());
            }
        }
        let mut fresh: HashMap<BlockHash, &StoredBlock> = HashMap::new();
        for b in new_blocks {
            if named.contains(&b.hash) {
                fresh.insert(b.hash, b);
            }
        }

        let indexes = by_index
            .keys()
            .map(|&i| to_i64("block index", i))
            .collect::<BackendResult<Vec<i64>>>()?;
        let hashes: Vec<Option<&[u8]>> = by_index
            .values()
            .map(|h| h.as_ref().map(|h| &h.0[..]))
            .collect();
        let fresh: Vec<&StoredBlock> = fresh.into_values().collect();
        let fresh_hashes: Vec<&[u8]> = fresh.iter().map(|b| &b.hash.0[..]).collect();
        let fresh_compressed: Vec<bool> = fresh.iter().map(|b| b.compressed).collect();
        // Blocks of a store have no data here (see `StoredBlock::data`).
        let fresh_data: Vec<Option<&[u8]>> = fresh
            .iter()
            .map(|b| (!b.data.is_empty()).then_some(&b.data[..]))
            .collect();
        let fresh_parts: Vec<Option<Vec<u8>>> = fresh
            .iter()
            .map(|b| super::read::parts_column(&b.parts))
            .collect();

        let rows: Vec<(Vec<u8>, Option<i64>, bool, bool)> = sqlx::query_as(WRITE_BLOCKS)
            .bind(self.scope.tenant)
            .bind(to_i64("inode number", ino.0)?)
            .bind(self.head)
            .bind(indexes)
            .bind(hashes)
            .bind(fresh_hashes)
            .bind(fresh_compressed)
            .bind(fresh_data)
            .bind(fresh_parts)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let parts_of: HashMap<&[u8], &StoredBlock> = fresh
            .iter()
            .filter(|b| !b.parts.is_empty())
            .map(|b| (&b.hash.0[..], *b))
            .collect();
        let mut stored_fresh = Vec::new();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut counts = Vec::with_capacity(rows.len());
        for (hash, refcount, fresh, inserted) in rows {
            if fresh {
                stored_fresh.push(super::blocks::hash_of(hash.clone())?);
            }
            if inserted {
                if let Some(b) = parts_of.get(&hash[..]) {
                    parts.extend(b.parts.iter().map(|h| &h.0[..]));
                }
            }
            counts.push((hash, refcount));
        }
        self.note_released(counts)?;
        // A patched block that entered holds a reference to each part, taken at commit (see
        // `commit`): this statement may not change a row twice, and a part may be the block a
        // replaced mapping named.
        self.taken.extend(parts.into_iter().map(<[u8]>::to_vec));
        Ok(stored_fresh)
    }

    async fn reap_epoch(&mut self) -> BackendResult<u64> {
        let epoch: Option<i64> = sqlx::query_scalar(super::blocks::REAP_EPOCH)
            .bind(self.scope.tenant)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let epoch = epoch.ok_or(BackendError::TenantGone)?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }

    async fn truncate_blocks(&mut self, ino: Ino, first: u64) -> BackendResult<()> {
        // Indexes are bigint: nothing is mapped beyond i64::MAX.
        let Ok(first) = i64::try_from(first) else {
            return Ok(());
        };
        let rows: Vec<(Vec<u8>, Option<i64>)> = sqlx::query_as(TRUNCATE_BLOCKS)
            .bind(self.scope.tenant)
            .bind(to_i64("inode number", ino.0)?)
            .bind(self.head)
            .bind(self.scope.lower())
            .bind(first)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        self.note_released(rows)
    }

    async fn set_xattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> BackendResult<()> {
        let ino = to_i64("inode number", ino.0)?;
        let query = match value {
            Some(value) => sqlx::query(SET_XATTR)
                .bind(self.scope.tenant)
                .bind(ino)
                .bind(name)
                .bind(self.head)
                .bind(value),
            None => sqlx::query(REMOVE_XATTR)
                .bind(self.scope.tenant)
                .bind(ino)
                .bind(name)
                .bind(self.head)
                .bind(self.scope.lower()),
        };
        query.execute(&mut *self.tx).await.map_err(map_err)?;
        Ok(())
    }

    async fn charge(&mut self, bytes: i64, inodes: i64) -> BackendResult<Result<(), QuotaKind>> {
        if bytes == 0 && inodes == 0 {
            return Ok(Ok(()));
        }
        for _ in 0..CHARGE_ATTEMPTS {
            let charged = sqlx::query(CHARGE)
                .bind(self.scope.tenant)
                .bind(bytes)
                .bind(inodes)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(map_err)?;
            if charged.is_some() {
                return Ok(Ok(()));
            }
            if let Some(kind) = self.refused_by(bytes, inodes).await? {
                return Ok(Err(kind));
            }
        }
        Err(BackendError::Conflict)
    }

    async fn add_orphan(&mut self, ino: Ino, session: u64) -> BackendResult<()> {
        sqlx::query(ADD_ORPHAN)
            .bind(self.scope.tenant)
            .bind(to_i64("inode number", ino.0)?)
            .bind(to_i64("session id", session)?)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn remove_orphan(&mut self, ino: Ino) -> BackendResult<()> {
        sqlx::query(REMOVE_ORPHAN)
            .bind(self.scope.tenant)
            .bind(to_i64("inode number", ino.0)?)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn record_audit(&mut self, event: &AuditEvent) -> BackendResult<()> {
        // The partition is created outside the transaction (DDL here would hold a lock on the
        // audit table until commit); usually it exists already and this asks nothing.
        self.partitions
            .ensure_for(std::slice::from_ref(event))
            .await?;
        super::audit::insert(&mut self.tx, std::slice::from_ref(event)).await
    }

    async fn commit(self: Box<Self>) -> BackendResult<()> {
        let PgTxn {
            mut tx,
            scope,
            dead,
            taken,
            ..
        } = *self;
        if !dead.is_empty() || !taken.is_empty() {
            let dead: Vec<Vec<u8>> = dead.into_iter().collect();
            sqlx::query(super::blocks::SETTLE_BLOCKS)
                .bind(scope.tenant)
                .bind(taken)
                .bind(dead)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_sql_sorts_and_dedups_keys() {
        let sql = begin_sql(7, 42, &[Ino(5), Ino(1), Ino(5), Ino(0)]);
        let keys: Vec<i64> = [Ino(5), Ino(1), Ino(0)]
            .iter()
            .map(|&i| lock_key(7, i))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let list: Vec<String> = sorted.iter().map(i64::to_string).collect();
        assert_eq!(
            sql,
            format!(
                "SELECT tarbox_begin(7, 42, '{{{}}}'::bigint[]); BEGIN",
                list.join(",")
            )
        );
        assert_eq!(
            begin_sql(1, 2, &[]),
            "SELECT tarbox_begin(1, 2, '{}'::bigint[]); BEGIN"
        );
    }

    #[test]
    fn lock_keys_differ_across_tenants() {
        assert_ne!(lock_key(1, Ino(1)), lock_key(2, Ino(1)));
        assert_ne!(lock_key(1, Ino(1)), lock_key(1, Ino(2)));
    }
}
