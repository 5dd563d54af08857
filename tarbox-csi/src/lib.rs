//! # tarbox-csi
//!
//! The Kubernetes CSI driver of Tarbox: a PersistentVolumeClaim is a tenant. The driver only
//! translates CSI calls into engine calls (tenant administration on the controller, a
//! [`tarbox_fuse::TenantMount`] on the node) and owns no filesystem rule. One file per CSI
//! service: [`identity`], [`controller`], [`node`]; [`server`] serves them on a Unix socket.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tarbox_csi::{Driver, Mode, MounterConfig, Placement};
//! use tarbox_fs::{Engine, EngineConfig};
//!
//! let engine = Engine::open("postgres://postgres@127.0.0.1/tarbox", EngineConfig::default()).await?;
//! let placement = Placement::Mounter(Some(MounterConfig {
//!     binary: "/usr/local/bin/tarbox-csi".into(),
//!     database_url: "postgres://postgres@127.0.0.1/tarbox".into(),
//! }));
//! let driver = Driver::new(engine, Mode::All, "node-1", "/var/lib/tarbox-csi".into(), placement);
//! tarbox_csi::serve(driver, "unix:///csi/csi.sock", tarbox_fuse::termination()).await?;
//! # Ok(())
//! # }
//! ```

mod content;
pub mod controller;
mod databases;
pub mod identity;
pub mod mounter;
mod naming;
pub mod node;
pub mod observe;
mod params;
mod pods;
pub mod server;
mod snapshots;
pub mod state;
mod store_keys;
pub mod volume_server;

/// The CSI specification's messages and services (package `csi.v1`), generated from
/// `proto/csi.proto`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

pub use databases::SECRET_DATABASE_URL;
pub use mounter::{Mounter, MounterConfig};
pub use observe::ObserveLayer;
pub use server::{Driver, Mode, Placement, ServeError, serve};
pub use store_keys::{SECRET_ACCESS_KEY_ID, SECRET_SECRET_ACCESS_KEY, SECRET_SESSION_TOKEN};

/// The driver's name, as StorageClasses and the CSIDriver object name it.
pub const DRIVER_NAME: &str = "tarbox.csi.io";

/// The volume context key carrying the tenant's name to the node.
pub const CONTEXT_TENANT: &str = "tarbox.csi.io/tenant";

/// The volume context key carrying the on-disk block cache size (bytes) of the volume's FUSE
/// servers, from the StorageClass's `cacheSize`.
pub const CONTEXT_CACHE_BYTES: &str = "tarbox.csi.io/cacheBytes";

/// The volume context key carrying the in-memory block cache size (bytes) of the volume's FUSE
/// servers, from the StorageClass's `memoryCacheSize`.
pub const CONTEXT_MEMORY_CACHE_BYTES: &str = "tarbox.csi.io/memoryCacheBytes";
