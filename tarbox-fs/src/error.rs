//! Typed errors.
//!
//! [`FsError`] is what every engine operation returns: each variant maps to exactly one errno via
//! [`FsError::errno`], so frontends never decide an errno themselves. [`BackendError`] is what a
//! storage backend returns; its kind tells the engine what to do (retry, report, give up).

use std::fmt;

/// Any error, as the cause of another.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of storage backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A concurrent transaction touched the same rows (serialization failure, deadlock, or a
    /// unique-key race). Nothing was written; the engine retries the whole operation.
    #[error("concurrent update conflict, retry")]
    Conflict,
    /// The tenant's head layer is no longer the one the transaction was started for (another
    /// engine created a checkpoint or switched layers). The engine refreshes its view and retries.
    #[error("the tenant's head layer moved")]
    StaleView,
    /// The tenant does not exist or is being deleted.
    #[error("tenant not found or deleted")]
    TenantGone,
    /// A tenant with that name already exists.
    #[error("tenant already exists")]
    TenantExists,
    /// A layer name that must be unique within a tenant is already taken.
    #[error("layer name already exists")]
    LayerExists,
    /// The store could not be reached or refused the connection. Retrying later may help.
    #[error("storage unavailable")]
    Unavailable(#[source] BoxError),
    /// The stored data violates an invariant (a bug or manual tampering). Not retryable.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// A stored value could not be decoded (a column of the wrong type, a bad encoding).
    #[error("storage corrupt: a stored value cannot be decoded")]
    Decode(#[source] BoxError),
    /// The storage URL or backend configuration is invalid: what, and the cause if there is one.
    #[error("invalid storage configuration: {what}")]
    Config {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A block that should be in the tenant's block store is not.
    #[error("block {0:?} is missing from the block store")]
    BlockMissing(crate::backend::BlockHash),
    /// Any other storage failure, with its source.
    #[error("storage error")]
    Other(#[source] BoxError),
}

impl BackendError {
    /// An invalid configuration `what`, without a further cause.
    pub fn config(what: impl Into<String>) -> BackendError {
        BackendError::Config {
            what: what.into(),
            source: None,
        }
    }
}

/// Which limit a quota denial hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Bytes,
    Inodes,
}

impl fmt::Display for QuotaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaKind::Bytes => "byte",
            QuotaKind::Inodes => "inode",
        })
    }
}

/// Errors of engine operations. Each maps to one errno ([`FsError::errno`]).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// ENOENT
    #[error("no such file or directory")]
    NotFound,
    /// EEXIST
    #[error("file exists")]
    Exists,
    /// ENOTDIR
    #[error("not a directory")]
    NotDir,
    /// EISDIR
    #[error("is a directory")]
    IsDir,
    /// ENOTEMPTY
    #[error("directory not empty")]
    NotEmpty,
    /// EACCES: permission bits deny the access.
    #[error("permission denied")]
    PermissionDenied,
    /// EPERM: the operation is reserved to the owner or to root.
    #[error("operation not permitted")]
    NotPermitted,
    /// ENOSPC: the tenant's quota is exhausted.
    #[error("{0} quota exceeded")]
    QuotaExceeded(QuotaKind),
    /// ENAMETOOLONG: a name longer than 255 bytes.
    #[error("file name too long")]
    NameTooLong,
    /// EINVAL, with what was invalid.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// EMLINK
    #[error("too many links")]
    TooManyLinks,
    /// EBADF: unknown handle, or a handle not open for the access requested.
    #[error("bad file handle")]
    BadHandle,
    /// ENODATA: no such extended attribute.
    #[error("no such attribute")]
    NoData,
    /// ERANGE: an extended attribute name or value too large.
    #[error("attribute name or value too large")]
    Range,
    /// E2BIG: an extended attribute value larger than the engine keeps.
    #[error("attribute value too large")]
    TooBig,
    /// EROFS: the volume is read-only (a time-travel view, or mounted read-only).
    #[error("read-only file system")]
    ReadOnly,
    /// EFBIG: an offset beyond the maximum file size.
    #[error("file too large")]
    FileTooBig,
    /// EOPNOTSUPP: a mode or flag the engine does not support.
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    /// EXDEV: a link or rename across tenants or layers.
    #[error("cross-device link")]
    CrossDevice,
    /// ENXIO: an `lseek` for data or a hole at or past the end of the file.
    #[error("no data or hole past the end of the file")]
    PastEnd,
    /// ENOSYS: a request of the kernel protocol the engine does not serve, for which the kernel
    /// has its own fallback (`poll`, `copy_file_range`, `bmap`, local locks).
    #[error("not served by this filesystem: {0}")]
    NotServed(&'static str),
    /// ENOTTY: an `ioctl` the filesystem does not serve.
    #[error("inappropriate ioctl for device")]
    NoIoctl,
    /// ELOOP: too many symlinks while resolving a path.
    #[error("too many levels of symbolic links")]
    Loop,
    /// EBUSY
    #[error("resource busy: {0}")]
    Busy(&'static str),
    /// ENOENT for an administrative lookup of a tenant by name.
    #[error("tenant {0:?} not found")]
    TenantNotFound(String),
    /// EEXIST for tenant creation.
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    /// ENOENT for a layer named by a command (a checkpoint name or a layer id).
    #[error("layer {0:?} not found")]
    LayerNotFound(String),
    /// EEXIST for a checkpoint name already taken in the tenant.
    #[error("a layer named {0:?} already exists")]
    LayerExists(String),
    /// EBUSY for a layer change refused because of the layer's place in the tree, with why.
    #[error("{0}")]
    LayerBusy(String),
    /// EINVAL for administrative input, naming what was wrong.
    #[error("{0}")]
    BadInput(String),
    /// The host directory of a native mount answered with this error (its errno is passed on).
    #[error("native mount: {0}")]
    Host(std::io::Error),
    /// EIO: the storage backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl FsError {
    /// The errno a Linux filesystem returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound | FsError::TenantNotFound(_) | FsError::LayerNotFound(_) => {
                libc::ENOENT
            }
            FsError::Exists | FsError::TenantExists(_) | FsError::LayerExists(_) => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::PermissionDenied => libc::EACCES,
            FsError::NotPermitted => libc::EPERM,
            FsError::QuotaExceeded(_) => libc::ENOSPC,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) | FsError::BadInput(_) => libc::EINVAL,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::BadHandle => libc::EBADF,
            FsError::NoData => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooBig => libc::E2BIG,
            FsError::ReadOnly => libc::EROFS,
            FsError::FileTooBig => libc::EFBIG,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::CrossDevice => libc::EXDEV,
            FsError::Loop => libc::ELOOP,
            FsError::PastEnd => libc::ENXIO,
            FsError::NoIoctl => libc::ENOTTY,
            FsError::NotServed(_) => libc::ENOSYS,
            FsError::Busy(_) | FsError::LayerBusy(_) => libc::EBUSY,
            FsError::Host(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::Backend(BackendError::TenantGone) => libc::ENOENT,
            FsError::Backend(_) => libc::EIO,
        }
    }

    /// Whether the operation should be retried from scratch (internal to the engine's retry loop).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            FsError::Backend(BackendError::Conflict | BackendError::StaleView)
        )
    }
}

pub type FsResult<T> = Result<T, FsError>;
pub type BackendResult<T> = Result<T, BackendError>;
