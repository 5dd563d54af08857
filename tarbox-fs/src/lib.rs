//! # tarbox-fs
//!
//! The Tarbox filesystem engine: a multi-tenant POSIX filesystem whose metadata and data live in a
//! storage backend (PostgreSQL or memory), with copy-on-write layers underneath.
//!
//! Every rule lives here — name validation, permission checks, inode allocation, quotas, layer
//! resolution — so that frontends (the FUSE mount, the CLI, the CSI driver) only translate their
//! protocol into calls of the [`Filesystem`] trait, which a [`Volume`] implements. Administration
//! (tenants, [`Layers`], the audit trail, fsck) lives on its own types beside it.
//!
//! Every operation is measured and, at the tenant's [`AuditLevel`], recorded as an
//! [`AuditEvent`] delivered to [`audit`] sinks off the data path.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tarbox_fs::FsError> {
//! use tarbox_fs::{Caller, Engine, EngineConfig, Filesystem, Ino, TenantOptions};
//!
//! let engine = Engine::open("memory://", EngineConfig::default()).await?;
//! engine.create_tenant("agent-1", TenantOptions::default()).await?;
//! let volume = engine.volume("agent-1").await?;
//! let me = Caller::root();
//!
//! let (attr, fh) = volume.create(&me, Ino::ROOT, b"hello.txt", 0o644, libc::O_WRONLY).await?;
//! volume.write(&me, fh, 0, b"hello, world\n").await?;
//! volume.release(&me, fh).await?;
//!
//! let fh = volume.open(&me, attr.ino, libc::O_RDONLY).await?;
//! assert_eq!(&volume.read(&me, fh, 0, 100).await?[..], b"hello, world\n");
//! volume.release(&me, fh).await?;
//! # Ok(())
//! # }
//! ```

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod audit;
pub mod backend;
pub mod control;
mod engine;
pub mod error;
pub mod filesystem;
pub mod native;
pub mod paths;
pub mod policy;
pub mod store;
pub mod types;

pub use audit::{AuditConfig, AuditEvent, AuditFilter, AuditLevel, AuditOp};
pub use backend::{Backend, Compression, LayerRecord, TenantAudit, TenantRecord, TenantState};
pub use control::ControlFs;
pub use engine::{
    Change, ChangeKind, CloneOptions, ContentDiff, DataCheck, DataWritten, DiskCacheConfig, Engine,
    EngineConfig, FsckProblem, FsckReport, GarbageReport, LayerDiff, LayerRef, LayerSummary,
    LayerTree, Layers, TEXT_DIFF_LIMIT, TenantInfo, TenantOptions, Volume, VolumeOptions,
    validate_layer_name, validate_tenant_name,
};
pub use error::{BackendError, FsError, FsResult, QuotaKind};
pub use filesystem::{Filesystem, Guard, Guarded, Invalidation, Invalidations, ReadOnly, Request};
pub use types::*;
