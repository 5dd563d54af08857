//! The mounter: one FUSE server process per staged volume, apart from the node plugin, so that
//! killing or upgrading the plugin breaks no pod's mount.
//!
//! It reconciles what `--state-dir` says is staged with the servers running, every
//! [`PASS_INTERVAL`]: a staged volume without a live server gets one (its own process group,
//! so nothing sent to the mounter's reaches it); a server whose volume is no longer staged is
//! asked to stop (SIGTERM: it flushes and unmounts). It finds its servers again from the pid
//! files after a restart of its own, never from memory. A server that died is repaired: the
//! dead FUSE mount at the staging path is detached, a new server mounts there, and every target
//! published from it is bound again, so new openers on the node never meet "transport endpoint
//! is not connected".
//!
//! In the chart the mounter is its own DaemonSet (`updateStrategy: OnDelete`), so an upgrade
//! of the plugin leaves it and its servers alone; on a plain host (and in tests) the plugin runs
//! it in-process (`--mounter embedded`), and its servers still outlive a SIGKILL of the plugin.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tarbox_fuse::is_mount_point;
use tracing::{info, warn};

use crate::state::{PublishRecord, StateDir, VolumeRecord};

/// How often the mounter compares what is staged with what is served.
pub const PASS_INTERVAL: Duration = Duration::from_millis(200);

/// The flag that makes `tarbox-csi` a volume's FUSE server.
pub const SERVE_VOLUME_FLAG: &str = "--serve-volume";

/// How the mounter starts servers.
#[derive(Debug, Clone)]
pub struct MounterConfig {
    /// The `tarbox-csi` binary (it serves a volume when given [`SERVE_VOLUME_FLAG`]).
    pub binary: PathBuf,
    /// The database the servers open (passed in their environment, not on their command line).
    pub database_url: String,
}

/// The reconciler. Holds the servers it started itself, to reap them when they exit.
#[derive(Debug)]
pub struct Mounter {
    state: StateDir,
    config: MounterConfig,
    children: HashMap<u32, Child>,
    /// Servers asked to stop, by pid.
    stopping: HashSet<u32>,
}

impl Mounter {
    pub fn new(state: StateDir, config: MounterConfig) -> Mounter {
        Mounter {
            state,
            config,
            children: HashMap::new(),
            stopping: HashSet::new(),
        }
    }

    /// Reconcile until `shutdown` completes. The servers keep running afterwards.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        info!(state_dir = %self.state.root().display(), "mounter running");
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.pass() {
                warn!(error = %e, "mounter pass failed");
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
            }
        }
    }

    /// One reconciliation. One volume's trouble never keeps the others from being served.
    pub fn pass(&mut self) -> io::Result<()> {
        self.reap();
        let staged = self.state.volumes_staged()?;
        let publishes = self.state.publishes_made()?;
        let mounts = MountTable::read();
        for volume in &staged {
            if let Err(e) = self.serve(volume, &publishes, &mounts) {
                warn!(volume = volume.volume_id, error = %e, "cannot serve the volume");
            }
        }
        let wanted: HashSet<&str> = staged.iter().map(|v| v.volume_id.as_str()).collect();
        for id in self.state.volumes_with_servers()? {
            if wanted.contains(id.as_str()) {
                continue;
            }
            match self.state.server_pid(&id) {
                Ok(Some(pid)) if serves(pid, &id) => {
                    if self.stopping.insert(pid) {
                        info!(volume = id, pid, "volume unstaged: stopping its server");
                        terminate(pid);
                    }
                }
                Ok(_) => self.state.remove_server_pid(&id)?,
                Err(e) => warn!(volume = id, error = %e, "cannot read the server's pid"),
            }
        }
        Ok(())
    }

    /// Keep `volume` served: start a server if none is alive (repairing a dead one's mount), and
    /// bind again every target still bound to a mount of an earlier server.
    fn serve(
        &mut self,
        volume: &VolumeRecord,
        publishes: &[PublishRecord],
        mounts: &MountTable,
    ) -> io::Result<()> {
        let pid = self.state.server_pid(&volume.volume_id)?;
        if !pid.is_some_and(|p| serves(p, &volume.volume_id)) {
            if pid.is_some() {
                warn!(
                    volume = volume.volume_id,
                    "the volume's FUSE server died; repairing"
                );
            }
            return self.start(volume);
        }
        // Each FUSE connection is its own device: a target on another device than the staging
        // path is a bind of a server that died (found again after a restart of this mounter
        // too, since nothing of it is kept in memory).
        let Some(served) = mounts.device(&volume.staging_path) else {
            return Ok(());
        };
        for p in publishes.iter().filter(|p| p.volume_id == volume.volume_id) {
            if mounts.device(&p.target).is_some_and(|d| d != served) {
                detach(&p.target);
                match crate::node::bind(&volume.staging_path, &p.target, p.readonly) {
                    Ok(()) => {
                        info!(volume = volume.volume_id, target = %p.target.display(), "target bound again")
                    }
                    Err(e) => {
                        warn!(target = %p.target.display(), error = %e, "cannot bind the target again")
                    }
                }
            }
        }
        Ok(())
    }

    /// Collect the exit status of servers this mounter started.
    fn reap(&mut self) {
        self.children.retain(|pid, child| match child.try_wait() {
            Ok(Some(status)) => {
                info!(pid, %status, "volume server exited");
                false
            }
            _ => true,
        });
        let children = &self.children;
        self.stopping.retain(|pid| {
            children.contains_key(pid) || Path::new(&format!("/proc/{pid}")).exists()
        });
    }

    fn start(&mut self, volume: &VolumeRecord) -> io::Result<()> {
        if is_mount_point(&volume.staging_path) || stale_mount(&volume.staging_path) {
            // The dead server's mount: detach it so the new one can mount in its place.
            detach(&volume.staging_path);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.log_path(&volume.volume_id)?)?;
        let child = Command::new(&self.config.binary)
            .arg(SERVE_VOLUME_FLAG)
            .arg(&volume.volume_id)
            .arg("--state-dir")
            .arg(self.state.root())
            .env("TARBOX_DATABASE_URL", &self.config.database_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a signal to the plugin's or the mounter's group (a
            // terminal's Ctrl-C, a container stop) does not reach the server.
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        self.state.put_server_pid(&volume.volume_id, pid)?;
        info!(
            volume = volume.volume_id,
            tenant = volume.tenant,
            pid,
            "volume server started"
        );
        self.children.insert(pid, child);
        Ok(())
    }
}

/// The mount table of this process's mount namespace: mount point → device (`major:minor`,
/// one per FUSE connection).
struct MountTable(HashMap<PathBuf, String>);

impl MountTable {
    fn read() -> MountTable {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let table = info
            .lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                let point = fields.get(4)?.replace("\\040", " ");
                Some((PathBuf::from(point), (*fields.get(2)?).to_string()))
            })
            .collect();
        MountTable(table)
    }

    /// The device mounted at `path` (the topmost mount there), if any.
    fn device(&self, path: &Path) -> Option<&str> {
        let resolved = path.parent()?.canonicalize().ok()?.join(path.file_name()?);
        self.0.get(&resolved).map(String::as_str)
    }
}

/// Whether `pid` is a live server of `volume_id` (not a zombie, not a reused pid).
pub fn serves(pid: u32, volume_id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    args.any(|a| a == SERVE_VOLUME_FLAG.as_bytes())
        && args.next().is_some_and(|a| a == volume_id.as_bytes())
}

/// Ask a process to stop (SIGTERM).
fn terminate(pid: u32) {
    let sent = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .map(|p| rustix::process::kill_process(p, rustix::process::Signal::TERM));
    if let Some(Err(e)) = sent {
        warn!(pid, error = %e, "cannot signal the volume server");
    }
}

/// A FUSE mount whose server is gone answers ENOTCONN.
fn stale_mount(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Detach whatever is mounted at `path` (lazily: processes still inside keep their view).
pub(crate) fn detach(path: &Path) {
    if is_mount_point(path) || stale_mount(path) {
        let _ = Command::new("umount").arg("-l").arg(path).output();
    }
}
