//! Error mapping and value conversions between Rust types and SQL columns.
//!
//! PostgreSQL has no unsigned integers: inode numbers, sizes, ids and counters are stored as
//! `bigint` and converted here, checked in both directions. A value read back that does not fit
//! (a negative size, an unknown file type code) means the stored data is corrupt.

use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::backend::{BlockHash, Compression, TenantAudit, TenantRecord, TenantState};
use crate::error::BackendError;
use crate::types::{FileType, Ino, Inode, LayerId, Quota, TenantId, Timestamp};

/// SQLSTATE raised by `tarbox_begin` when the tenant's head layer moved.
const STALE_VIEW: &str = "TB001";
/// SQLSTATE raised by `tarbox_begin` when the tenant is missing or deleted.
const TENANT_GONE: &str = "TB002";

/// Map a sqlx error to the backend error that tells the engine what to do. The one place where
/// SQLSTATEs and driver failures are interpreted.
pub(super) fn map_err(e: sqlx::Error) -> BackendError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            match code.as_deref() {
                Some(STALE_VIEW) => BackendError::StaleView,
                Some(TENANT_GONE) => BackendError::TenantGone,
                // Unique names are the only unique constraints a caller can hit on purpose; any
                // other unique violation is a race between engines inserting the same key.
                Some("23505") => match db.constraint() {
                    Some("tenants_name_key") => BackendError::TenantExists,
                    Some("layers_tenant_id_name_key") => BackendError::LayerExists,
                    _ => BackendError::Conflict,
                },
                // serialization_failure, deadlock_detected
                Some("40001" | "40P01") => BackendError::Conflict,
                // connection_exception class, admin/crash shutdown, cannot_connect_now,
                // too_many_connections
                Some(c)
                    if c.starts_with("08")
                        || matches!(c, "57P01" | "57P02" | "57P03" | "53300") =>
                {
                    BackendError::Unavailable(Box::new(e))
                }
                _ => BackendError::Other(Box::new(e)),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => BackendError::Unavailable(Box::new(e)),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => BackendError::Decode(Box::new(e)),
        _ => BackendError::Other(Box::new(e)),
    }
}

/// Whether `e` is PostgreSQL's refusal of a row no partition of a partitioned table accepts
/// (SQLSTATE 23514, `check_violation`, raised by partition routing).
pub(super) fn is_no_partition(e: &BackendError) -> bool {
    let BackendError::Other(source) = e else {
        return false;
    };
    source
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|db| db.code())
        .as_deref()
        == Some("23514")
}

/// An error for a value the engine passed that PostgreSQL cannot store (beyond `i64::MAX`).
pub(super) fn out_of_range(what: &str, value: u64) -> BackendError {
    BackendError::Other(format!("{what} {value} is beyond the storable range").into())
}

/// A `u64` as `bigint`; values beyond `i64::MAX` are refused.
pub(super) fn to_i64(what: &str, value: u64) -> Result<i64, BackendError> {
    i64::try_from(value).map_err(|_| out_of_range(what, value))
}

/// A stored `bigint` as `u64`; negative values mean corruption.
pub(super) fn to_u64(what: &str, value: i64) -> Result<u64, BackendError> {
    u64::try_from(value).map_err(|_| BackendError::Corrupt(format!("negative {what}: {value}")))
}

/// A stored `bigint` as `u32`.
pub(super) fn to_u32(what: &str, value: i64) -> Result<u32, BackendError> {
    u32::try_from(value).map_err(|_| BackendError::Corrupt(format!("{what} out of range: {value}")))
}

/// A quota limit as stored: `u64` limits beyond `i64::MAX` are as good as unlimited.
pub(super) fn limit_to_sql(limit: Option<u64>) -> Option<i64> {
    limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX))
}

/// Read a column, mapping decode failures to [`BackendError::Corrupt`].
pub(super) fn col<'r, T>(row: &'r PgRow, name: &str) -> Result<T, BackendError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name).map_err(map_err)
}

pub(super) fn file_type(code: i16) -> Result<FileType, BackendError> {
    FileType::from_code(code)
        .ok_or_else(|| BackendError::Corrupt(format!("unknown file type code {code}")))
}

pub(super) fn block_hash(bytes: &[u8]) -> Result<BlockHash, BackendError> {
    <[u8; 32]>::try_from(bytes)
        .map(BlockHash)
        .map_err(|_| BackendError::Corrupt(format!("block hash of {} bytes", bytes.len())))
}

/// Decode an `inodes` row (columns `tombstone, kind, perm, uid, gid, nlink, size, atime, mtime,
/// ctime, btime, rdev, parent, target`); `None` for a tombstone.
pub(super) fn inode_from_row(ino: Ino, row: &PgRow) -> Result<Option<Inode>, BackendError> {
    if col::<bool>(row, "tombstone")? {
        return Ok(None);
    }
    let perm: i32 = col(row, "perm")?;
    Ok(Some(Inode {
        ino,
        kind: file_type(col(row, "kind")?)?,
        perm: u16::try_from(perm)
            .map_err(|_| BackendError::Corrupt(format!("permission bits {perm}")))?,
        uid: to_u32("uid", col(row, "uid")?)?,
        gid: to_u32("gid", col(row, "gid")?)?,
        nlink: to_u32("nlink", col(row, "nlink")?)?,
        size: to_u64("size", col(row, "size")?)?,
        atime: Timestamp(col(row, "atime")?),
        mtime: Timestamp(col(row, "mtime")?),
        ctime: Timestamp(col(row, "ctime")?),
        btime: Timestamp(col(row, "btime")?),
        rdev: to_u32("rdev", col(row, "rdev")?)?,
        parent: Ino(to_u64("parent", col(row, "parent")?)?),
        target: col(row, "target")?,
    }))
}

/// `SELECT` of the `tenants` columns that [`tenant_from_row`] reads, followed by the rest of the
/// query (a literal, so queries stay `&'static str`).
macro_rules! select_tenants {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, state, head_layer, block_size, compression, quota_bytes, \
             quota_inodes, created_at, auto_checkpoint_secs, audit_level, \
             audit_retention_days, owner, data_url, access_policy, native_mounts FROM tenants ",
            $rest
        )
    };
}
pub(super) use select_tenants;

pub(super) fn tenant_from_row(row: &PgRow) -> Result<TenantRecord, BackendError> {
    let state: i16 = col(row, "state")?;
    let block_size: i32 = col(row, "block_size")?;
    let compression: i16 = col(row, "compression")?;
    let limit = |name: &str| -> Result<Option<u64>, BackendError> {
        col::<Option<i64>>(row, name)?
            .map(|v| to_u64(name, v))
            .transpose()
    };
    Ok(TenantRecord {
        id: TenantId(col(row, "id")?),
        name: col(row, "name")?,
        state: tenant_state(state)?,
        head_layer: LayerId(col(row, "head_layer")?),
        block_size: u32::try_from(block_size)
            .map_err(|_| BackendError::Corrupt(format!("block size {block_size}")))?,
        compression: Compression::from_code(compression)
            .ok_or_else(|| BackendError::Corrupt(format!("compression code {compression}")))?,
        quota: Quota {
            bytes: limit("quota_bytes")?,
            inodes: limit("quota_inodes")?,
        },
        created_at: Timestamp(col(row, "created_at")?),
        auto_checkpoint_secs: col::<Option<i64>>(row, "auto_checkpoint_secs")?
            .map(|v| to_u64("auto-checkpoint interval", v))
            .transpose()?,
        audit: TenantAudit {
            level: col::<Option<i16>>(row, "audit_level")?
                .map(|c| {
                    crate::audit::AuditLevel::from_code(c)
                        .ok_or_else(|| BackendError::Corrupt(format!("audit level code {c}")))
                })
                .transpose()?,
            retention_days: col::<Option<i32>>(row, "audit_retention_days")?
                .map(|d| to_u32("audit retention", i64::from(d)))
                .transpose()?,
        },
        owner: col(row, "owner")?,
        data_url: col(row, "data_url")?,
        access_policy: col(row, "access_policy")?,
        native_mounts: col(row, "native_mounts")?,
    })
}

pub(super) const STATE_ACTIVE: i16 = 0;
pub(super) const STATE_DELETED: i16 = 1;
pub(super) const STATE_RETIRED: i16 = 2;

fn tenant_state(code: i16) -> Result<TenantState, BackendError> {
    match code {
        STATE_ACTIVE => Ok(TenantState::Active),
        STATE_DELETED => Ok(TenantState::Deleted),
        STATE_RETIRED => Ok(TenantState::Retired),
        other => Err(BackendError::Corrupt(format!("tenant state {other}"))),
    }
}
