//! A tenant's mount from start to unmount, shared by `tarbox mount` and the CSI node plugin.
//!
//! [`TenantMount::start`] checks (or creates) the tenant, opens its volume, stacks the frontends'
//! view of it (the `/.tarbox` control directory over the volume), mounts it, and runs the
//! volume's automatic checkpoints. [`EngineUpkeep`] runs what an engine needs once, however many
//! tenants it mounts: purging deleted tenants and audit partition upkeep. Neither decides a rule of
//! the filesystem; they only start and stop things in the right order, so that an unmount flushes
//! every buffered write before the engine closes.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tarbox_fs::{ControlFs, Engine, Filesystem, FsError, TenantOptions, VolumeOptions};
use tokio::task::JoinHandle;
use tracing::info;

use crate::{MountError, MountOptions, Mounted, mount};

/// How often long-running processes look for deleted tenants to purge.
const PURGE_INTERVAL: Duration = Duration::from_secs(300);
/// How often the dead blocks of every tenant's block store are reaped (those of retired tenants,
/// which no volume reaps, and of tenants no one mounts).
const STORE_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Every how many sweeps block stores are listed for objects no row names (a crash between
/// storing and committing), and how old such an object must be to go.
const ORPHAN_SWEEP_EVERY: u32 = 24;
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);
/// How often audit partitions are created ahead and expired.
const AUDIT_UPKEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub tenant: String,
    /// Create the tenant (with default options) when it does not exist.
    pub create: bool,
    /// Read-only, time travel, audit level and the mount's name in audit events.
    pub volume: VolumeOptions,
    /// FUSE options: cache timeouts, `allow_other`, the pod resolver, …
    pub mount: MountOptions,
    /// Show the `/.tarbox` control directory at the root.
    pub control_dir: bool,
    /// Run the tenant's automatic checkpoints in this mount (when the tenant has them on).
    pub auto_checkpoint: bool,
}

impl MountSpec {
    /// The tenant's head, read-write, with the control directory and automatic checkpoints.
    pub fn new(tenant: impl Into<String>) -> MountSpec {
        MountSpec {
            tenant: tenant.into(),
            create: false,
            volume: VolumeOptions::default(),
            mount: MountOptions::default(),
            control_dir: true,
            auto_checkpoint: true,
        }
    }
}

/// Why a mount could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "tenant {0:?} does not exist: create it with `tarbox tenant create {0}` or pass --create"
    )]
    NoTenant(String),
    #[error("cannot create tenant {tenant:?}")]
    Create {
        tenant: String,
        #[source]
        source: FsError,
    },
    #[error("cannot open tenant {tenant:?}")]
    Open {
        tenant: String,
        #[source]
        source: FsError,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// A mounted tenant. Ends with [`TenantMount::run_until`] or [`TenantMount::unmount`], which
/// flush every buffered write before they return.
#[derive(Debug)]
pub struct TenantMount {
    tenant: String,
    mounted: Mounted,
    checkpointer: Option<JoinHandle<()>>,
}

impl TenantMount {
    /// Open `spec.tenant` on `engine` and mount it at `mountpoint`.
    pub async fn start(
        engine: &Engine,
        mountpoint: &Path,
        mut spec: MountSpec,
    ) -> Result<TenantMount, ServiceError> {
        let tenant = spec.tenant.clone();
        if spec.create {
            match engine
                .create_tenant(&tenant, TenantOptions::default())
                .await
            {
                Ok(_) => info!(tenant, "tenant created"),
                Err(FsError::TenantExists(_)) => {}
                Err(source) => return Err(ServiceError::Create { tenant, source }),
            }
        }
        let volume = engine
            .volume_with(&tenant, spec.volume.clone())
            .await
            .map_err(|source| match source {
                FsError::TenantNotFound(_) => ServiceError::NoTenant(tenant.clone()),
                source => ServiceError::Open {
                    tenant: tenant.clone(),
                    source,
                },
            })?;
        let read_only = volume.is_read_only();
        spec.mount.read_only |= read_only;
        if spec.mount.fs_name.is_none() {
            spec.mount.fs_name = Some(format!("tarbox:{tenant}"));
        }
        let checkpointer = (spec.auto_checkpoint && !read_only && !volume.is_pinned())
            .then(|| volume.layers().spawn_auto_checkpoints());
        let fs: Arc<dyn Filesystem> =
            Arc::new(ControlFs::with_control_dir(volume, spec.control_dir));
        let mounted = match mount(fs, mountpoint, &spec.mount) {
            Ok(m) => m,
            Err(e) => {
                if let Some(c) = checkpointer {
                    c.abort();
                }
                return Err(e.into());
            }
        };
        info!(tenant, mountpoint = %mountpoint.display(), "tenant mounted");
        Ok(TenantMount {
            tenant,
            mounted,
            checkpointer,
        })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn mountpoint(&self) -> &Path {
        self.mounted.mountpoint()
    }

    /// Serve until the filesystem is unmounted from outside or `shutdown` completes (then
    /// unmount cleanly). Buffered writes are flushed either way.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let served = self.mounted.run_until(shutdown).await;
        if let Some(c) = self.checkpointer {
            c.abort();
        }
        served
    }

    /// Flush buffered writes, unmount and wait for the session to end.
    pub async fn unmount(self) -> io::Result<()> {
        let result = self.mounted.unmount().await;
        if let Some(c) = self.checkpointer {
            c.abort();
        }
        result
    }
}

/// Background work of an engine that serves mounts: purging tenants deleted elsewhere and
/// sweeping block stores (not for the in-memory store, which no one else sees) and audit
/// partition upkeep. Stops when dropped.
#[derive(Debug)]
pub struct EngineUpkeep {
    tasks: Vec<JoinHandle<()>>,
}

impl EngineUpkeep {
    pub fn start(engine: &Engine, purge: bool) -> EngineUpkeep {
        let mut tasks = vec![engine.spawn_audit_maintenance(AUDIT_UPKEEP_INTERVAL)];
        if purge {
            tasks.push(engine.spawn_purger(PURGE_INTERVAL));
            tasks.push(engine.spawn_store_sweeper(
                STORE_SWEEP_INTERVAL,
                ORPHAN_SWEEP_EVERY,
                ORPHAN_GRACE,
            ));
        }
        EngineUpkeep { tasks }
    }
}

impl Drop for EngineUpkeep {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Completes at the first SIGTERM or SIGINT (what kubelet and a terminal send to stop a
/// process). If the handlers cannot be installed it never completes, and the mount ends only
/// when unmounted from outside.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install the SIGTERM/SIGINT handlers: unmount to stop");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: unmounting"),
        _ = int.recv() => info!("SIGINT: unmounting"),
    }
}
