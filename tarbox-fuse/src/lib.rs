//! # tarbox-fuse
//!
//! Mounts any Tarbox [`Filesystem`] with FUSE, and runs a tenant's mount from start to unmount
//! ([`TenantMount`]) for `tarbox mount` and the CSI node plugin alike. The FUSE adapter only
//! translates: every FUSE request becomes one engine call whose error maps to its errno;
//! permissions, quotas and layers are decided by the engine. Requests are served concurrently on a
//! Tokio runtime.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tarbox_fs::{Engine, EngineConfig, TenantOptions};
//! use tarbox_fuse::{MountSpec, TenantMount};
//!
//! let engine = Engine::open("memory://", EngineConfig::default()).await?;
//! engine.create_tenant("scratch", TenantOptions::default()).await?;
//! let spec = MountSpec::new("scratch");
//! let mount = TenantMount::start(&engine, "/mnt/scratch".as_ref(), spec).await?;
//! mount.run_until(tarbox_fuse::termination()).await?; // until SIGINT/SIGTERM or `umount`
//! # Ok(())
//! # }
//! ```

mod convert;
mod fs;
mod service;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL, SessionUnmounter};
use tarbox_fs::{Filesystem, PodIdentity};
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use fs::CacheTimeouts;
pub use service::{EngineUpkeep, MountSpec, ServiceError, TenantMount, termination};

/// Finds the Kubernetes pod of a process that made a request, so the engine can audit (and one
/// day authorize) by workload. The CSI node plugin provides one; a plain mount has none.
pub trait PodResolver: Send + Sync + fmt::Debug {
    /// The pod `pid` runs in, if any. Called once per process every few seconds at most.
    fn pod_of(&self, pid: u32) -> Option<Arc<PodIdentity>>;
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let users other than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
    /// Mount read-only (the volume should be read-only too).
    pub read_only: bool,
    /// Kernel cache lifetimes.
    pub timeouts: CacheTimeouts,
    /// Additional `-o` options passed to the kernel as they are.
    pub extra: Vec<String>,
    /// Name shown as the mount source (`tarbox` by default; a tenant's mount shows
    /// `tarbox:<tenant>`).
    pub fs_name: Option<String>,
    /// Threads reading requests from the kernel (the work itself runs on the Tokio runtime).
    pub threads: usize,
    /// Resolves a request's pid to its pod; `None` leaves callers without one.
    pub pods: Option<Arc<dyn PodResolver>>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            read_only: false,
            timeouts: CacheTimeouts::default(),
            extra: Vec::new(),
            fs_name: None,
            threads: 2,
            pods: None,
        }
    }
}

/// Why a mount could not start.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0} does not exist or is not a directory")]
    NoMountPoint(PathBuf),
    #[error("mount point {0} is already mounted (busy); unmount it first")]
    Busy(PathBuf),
    #[error(
        "/dev/fuse is missing: load the fuse module or run the container with --device /dev/fuse"
    )]
    NoFuseDevice,
    #[error("must be called from within a Tokio runtime")]
    NoRuntime,
    #[error("mounting {path} failed: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A live mount. Dropping it does not unmount; call [`Mounted::unmount`].
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    unmounter: SessionUnmounter,
    done: oneshot::Receiver<io::Result<()>>,
    fs: Arc<dyn Filesystem>,
}

impl Mounted {
    /// Wait until the filesystem is unmounted (by [`Mounted::unmount`] or by `umount`).
    pub async fn wait(self) -> io::Result<()> {
        let result = self.done.await.unwrap_or(Ok(()));
        if let Err(e) = self.fs.sync_all().await {
            tracing::error!(error = %e, "buffered writes could not be flushed");
        }
        result
    }

    /// Unmount and wait for the session to end; buffered writes are flushed first.
    pub async fn unmount(mut self) -> io::Result<()> {
        if let Err(e) = self.fs.sync_all().await {
            tracing::error!(error = %e, "buffered writes could not be flushed");
        }
        info!(mountpoint = %self.mountpoint.display(), "unmounting");
        self.unmounter.unmount()?;
        self.wait().await
    }

    /// Serve until the filesystem is unmounted from outside or `shutdown` completes (then unmount
    /// cleanly, flushing buffered writes first).
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> io::Result<()> {
        tokio::select! {
            r = &mut self.done => {
                if let Err(e) = self.fs.sync_all().await {
                    tracing::error!(error = %e, "buffered writes could not be flushed");
                }
                r.unwrap_or(Ok(()))
            }
            () = shutdown => self.unmount().await,
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

/// Whether `path` is a mount point, from `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    // The root of a FUSE mount whose server died cannot be stat'ed (ENOTCONN), so resolve the
    // parent and append the name rather than resolving the mount point itself.
    let resolved = path.canonicalize().ok().or_else(|| {
        let parent = path.parent()?.canonicalize().ok()?;
        Some(parent.join(path.file_name()?))
    });
    let Some(path) = resolved else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&m.replace("\\040", " ")) == path)
}

/// Pass what changed behind the kernel's back (another engine, another mount of this one) on to
/// the kernel, so that its entry and attribute caches never serve it for longer than the
/// change takes to arrive, whatever their timeouts. Until the session ends.
fn forward_invalidations(
    runtime: &tokio::runtime::Handle,
    mut invalidations: tarbox_fs::Invalidations,
    notifier: fuser::Notifier,
    mut ended: oneshot::Receiver<()>,
) {
    // The kernel may wait on locks held by requests in flight before it answers a
    // notification: the writes to /dev/fuse happen on a thread of their own, never on a
    // thread that serves requests.
    let (tx, rx) = std::sync::mpsc::channel::<tarbox_fs::Invalidation>();
    runtime.spawn(async move {
        loop {
            tokio::select! {
                next = invalidations.next() => match next {
                    Some(inv) => if tx.send(inv).is_err() { return },
                    None => return,
                },
                _ = &mut ended => return,
            }
        }
    });
    let spawned = std::thread::Builder::new()
        .name("tarbox-inval".into())
        .spawn(move || {
            use std::os::unix::ffi::OsStrExt;
            for inv in rx {
                let sent = match &inv {
                    tarbox_fs::Invalidation::Inode(ino) => {
                        notifier.inval_inode(convert::node(*ino), 0, 0)
                    }
                    tarbox_fs::Invalidation::Entry { parent, name } => notifier
                        .inval_entry(convert::node(*parent), std::ffi::OsStr::from_bytes(name)),
                };
                match sent {
                    Ok(()) => {}
                    // Not in the kernel's caches: nothing to forget.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, ?inv, "kernel invalidation failed");
                        if e.raw_os_error() == Some(libc::ENODEV) {
                            return;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "no thread for kernel invalidations: caches expire by their timeouts");
    }
}

/// Mount `fs` at `mountpoint` and serve it until unmounted.
pub fn mount(
    fs: Arc<dyn Filesystem>,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Mounted, MountError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| MountError::NoRuntime)?;
    if !mountpoint.is_dir() {
        return Err(MountError::NoMountPoint(mountpoint.to_path_buf()));
    }
    if is_mount_point(mountpoint) {
        return Err(MountError::Busy(mountpoint.to_path_buf()));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    let fs_name = options.fs_name.clone().unwrap_or_else(|| "tarbox".into());
    let mut mount_options = vec![
        MountOption::FSName(fs_name),
        MountOption::Subtype("tarbox".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    mount_options.push(if options.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    mount_options.extend(options.extra.iter().map(|o| MountOption::CUSTOM(o.clone())));
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = options.threads > 1;
    let callers = convert::GroupCache::new(options.pods.clone());
    let adapter = fs::TarboxFuse::new(fs.clone(), runtime.clone(), options.timeouts, callers);
    let mut session =
        fuser::Session::new(adapter, mountpoint, &config).map_err(|source| MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    let unmounter = session.unmount_callable();
    let (tx, done) = oneshot::channel();
    let (ended_tx, ended) = oneshot::channel::<()>();
    if let Some(invalidations) = fs.invalidations() {
        forward_invalidations(&runtime, invalidations, session.notifier(), ended);
    }
    std::thread::Builder::new()
        .name("tarbox-fuse".into())
        .spawn(move || {
            let result = session.run();
            drop(ended_tx);
            let _ = tx.send(result);
        })
        .map_err(|source| MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(Mounted {
        mountpoint: mountpoint.to_path_buf(),
        unmounter,
        done,
        fs,
    })
}
