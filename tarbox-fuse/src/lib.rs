//! # tarbox-fuse
//!
//! Mounts a Tarbox [`Volume`] with FUSE. This crate only translates: every FUSE request becomes one
//! engine call whose error maps to its errno; permissions, quotas and layers are decided by the
//! engine. Requests are served concurrently on a Tokio runtime.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tarbox_fs::{Engine, EngineConfig, TenantOptions};
//! use tarbox_fuse::{MountOptions, mount};
//!
//! let engine = Engine::open("memory://", EngineConfig::default()).await?;
//! engine.create_tenant("scratch", TenantOptions::default()).await?;
//! let volume = engine.volume("scratch").await?;
//! let mounted = mount(volume, "/mnt/scratch".as_ref(), &MountOptions::default())?;
//! mounted.wait().await?; // until `tarbox umount /mnt/scratch` or `fusermount3 -u`
//! # Ok(())
//! # }
//! ```

mod convert;
mod fs;

use std::io;
use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, SessionACL, SessionUnmounter};
use tarbox_fs::{ControlFs, Volume};
use tokio::sync::oneshot;
use tracing::info;

pub use fs::CacheTimeouts;

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
    /// Name shown as the mount source (`tarbox:<tenant>` by default).
    pub fs_name: Option<String>,
    /// Threads reading requests from the kernel (the work itself runs on the Tokio runtime).
    pub threads: usize,
    /// Show the `/.tarbox` control directory at the root.
    pub control_dir: bool,
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
            control_dir: true,
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
    volume: Volume,
}

impl Mounted {
    /// Wait until the filesystem is unmounted (by [`Mounted::unmount`] or by `umount`).
    pub async fn wait(self) -> io::Result<()> {
        let result = self.done.await.unwrap_or(Ok(()));
        if let Err(e) = self.volume.flush_all().await {
            tracing::error!(error = %e, "buffered writes could not be flushed");
        }
        result
    }

    /// Unmount and wait for the session to end; buffered writes are flushed first.
    pub async fn unmount(mut self) -> io::Result<()> {
        if let Err(e) = self.volume.flush_all().await {
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
                if let Err(e) = self.volume.flush_all().await {
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
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&m.replace("\\040", " ")) == path)
}

/// Mount `volume` at `mountpoint` and serve it until unmounted.
pub fn mount(
    volume: Volume,
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
    let fs_name = options
        .fs_name
        .clone()
        .unwrap_or_else(|| format!("tarbox:{}", volume.tenant_name()));
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
    let control = ControlFs::with_control_dir(volume.clone(), options.control_dir);
    let fs = fs::TarboxFuse::new(control, runtime, options.timeouts);
    let mut session =
        fuser::Session::new(fs, mountpoint, &config).map_err(|source| MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    let unmounter = session.unmount_callable();
    let (tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("tarbox-fuse".into())
        .spawn(move || {
            let _ = tx.send(session.run());
        })
        .map_err(|source| MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    info!(mountpoint = %mountpoint.display(), tenant = volume.tenant_name(), "mounted");
    Ok(Mounted {
        mountpoint: mountpoint.to_path_buf(),
        unmounter,
        done,
        volume,
    })
}
