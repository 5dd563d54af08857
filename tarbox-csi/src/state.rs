//! What a node must find again after a restart, kept in `--state-dir` (a host directory in the
//! chart), never only in memory:
//!
//! - `volumes/<volume id>.json`: a staged volume (tenant, staging path, cache size). Written by
//!   NodeStageVolume, removed by NodeUnstageVolume; the mounter serves exactly these.
//! - `volumes/<volume id>.pid`: the FUSE server process serving it, written by the mounter.
//! - `publishes/<hash of target>.json`: a NodePublishVolume (volume, target, read-only, and the
//!   pod that asked), so a restarted plugin, the audit trail and the repair of a dead server all
//!   know which pod a target belongs to.
//!
//! Every write goes to a temporary file renamed into place, so a reader never sees half a
//! record, even when the writer is killed.

use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tarbox_fs::PodIdentity;

/// The on-disk block cache of a volume whose StorageClass does not say (`cacheSize`).
pub const DEFAULT_DISK_CACHE: u64 = 1 << 30;

/// A volume staged on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub volume_id: String,
    pub tenant: String,
    pub staging_path: PathBuf,
    /// The mount's name in audit events.
    pub mount_name: String,
    /// The server's on-disk block cache in bytes (0: none); [`DEFAULT_DISK_CACHE`] when absent.
    #[serde(default)]
    pub cache_bytes: Option<u64>,
    /// The server's in-memory block cache in bytes; the engine's default when absent.
    #[serde(default)]
    pub memory_cache_bytes: Option<u64>,
    /// Keys of the volume's S3 block store (from the node-stage secret), when not the node's.
    #[serde(default)]
    pub store_keys: Option<tarbox_fs::store::S3Credentials>,
    /// The volume's database when it is not the mounter's own (from the node-stage secret).
    /// Records are readable by root only.
    #[serde(default)]
    pub database_url: Option<String>,
}

/// A volume published into a pod's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    pub volume_id: String,
    pub target: PathBuf,
    pub readonly: bool,
    /// The pod's uid (lower case) and identity, when kubelet passed them (`podInfoOnMount`).
    #[serde(default)]
    pub pod: Option<(String, PodIdentity)>,
}

/// The state directory of a node.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    fn publishes(&self) -> PathBuf {
        self.root.join("publishes")
    }

    fn volume_file(&self, volume_id: &str, ext: &str) -> io::Result<PathBuf> {
        // Volume ids come from requests: never let one name a path outside the directory.
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        if volume_id.is_empty() || volume_id.starts_with('.') || !volume_id.bytes().all(allowed) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("volume id {volume_id:?} is not one of this driver's"),
            ));
        }
        Ok(self.volumes().join(format!("{volume_id}.{ext}")))
    }

    /// Where a volume's FUSE server spills audit events the database could not take.
    pub fn audit_spill_dir(&self, volume_id: &str) -> io::Result<PathBuf> {
        self.volume_file(volume_id, "audit-spill")
    }

    /// Where a volume's FUSE server keeps decoded blocks on disk (kept across restarts of the
    /// server, removed when the volume is unstaged).
    pub fn cache_dir(&self, volume_id: &str) -> io::Result<PathBuf> {
        self.volume_file(volume_id, "cache")
    }

    /// The log file of a volume's FUSE server.
    pub fn log_path(&self, volume_id: &str) -> io::Result<PathBuf> {
        self.volume_file(volume_id, "log")
    }

    pub fn volume(&self, volume_id: &str) -> io::Result<Option<VolumeRecord>> {
        read(&self.volume_file(volume_id, "json")?)
    }

    pub fn put_volume(&self, record: &VolumeRecord) -> io::Result<()> {
        write(&self.volume_file(&record.volume_id, "json")?, record)
    }

    pub fn remove_volume(&self, volume_id: &str) -> io::Result<()> {
        remove(&self.volume_file(volume_id, "json")?)
    }

    /// Every staged volume.
    pub fn volumes_staged(&self) -> io::Result<Vec<VolumeRecord>> {
        list(&self.volumes())
    }

    /// The pid of the server a mounter started for `volume_id`, if it recorded one.
    pub fn server_pid(&self, volume_id: &str) -> io::Result<Option<u32>> {
        match std::fs::read_to_string(self.volume_file(volume_id, "pid")?) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn put_server_pid(&self, volume_id: &str, pid: u32) -> io::Result<()> {
        write_bytes(
            &self.volume_file(volume_id, "pid")?,
            pid.to_string().as_bytes(),
        )
    }

    pub fn remove_server_pid(&self, volume_id: &str) -> io::Result<()> {
        remove(&self.volume_file(volume_id, "pid")?)
    }

    /// Volume ids with a recorded server pid (staged or not any more).
    pub fn volumes_with_servers(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in read_dir(&self.volumes())? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "pid") {
                if let Some(stem) = path.file_stem() {
                    out.push(stem.to_string_lossy().into_owned());
                }
            }
        }
        Ok(out)
    }

    fn publish_file(&self, target: &Path) -> PathBuf {
        let hash = blake3::hash(target.as_os_str().as_encoded_bytes()).to_hex();
        self.publishes()
            .join(format!("{}.json", &hash.as_str()[..24]))
    }

    pub fn publish(&self, target: &Path) -> io::Result<Option<PublishRecord>> {
        read(&self.publish_file(target))
    }

    pub fn put_publish(&self, record: &PublishRecord) -> io::Result<()> {
        write(&self.publish_file(&record.target), record)
    }

    pub fn remove_publish(&self, target: &Path) -> io::Result<()> {
        remove(&self.publish_file(target))
    }

    /// Every publish on this node.
    pub fn publishes_made(&self) -> io::Result<Vec<PublishRecord>> {
        list(&self.publishes())
    }
}

fn read_dir(dir: &Path) -> io::Result<Box<dyn Iterator<Item = io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(Box::new(entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

fn read<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every record of a directory, in file-name order.
fn list<T: DeserializeOwned>(dir: &Path) -> io::Result<Vec<T>> {
    let mut paths = Vec::new();
    for entry in read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        match read(&path) {
            Ok(Some(record)) => out.push(record),
            // Removed between the listing and the read: not there any more.
            Ok(None) => {}
            // One damaged record must not stop the node from serving every other volume.
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable state record")
            }
        }
    }
    Ok(out)
}

fn write<T: Serialize>(path: &Path, record: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    write_bytes(path, &bytes)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // The whole name plus the pid: `7.json` and `7.pid` never share a temporary file.
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    // Root only: a record may hold a database URL with its password.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    // On disk before it is renamed into place, and the rename too: after a power loss a record
    // is the old one or the new one, never empty.
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_ids_stay_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let v = VolumeRecord {
            volume_id: "42".into(),
            tenant: "ml-data".into(),
            staging_path: "/var/lib/kubelet/x".into(),
            mount_name: "csi:n:42".into(),
            cache_bytes: Some(1 << 20),
            memory_cache_bytes: None,
            store_keys: None,
            database_url: None,
        };
        state.put_volume(&v).expect("put");
        assert_eq!(state.volume("42").expect("read"), Some(v.clone()));
        assert_eq!(state.volumes_staged().expect("list"), vec![v]);
        state.put_server_pid("42", 77).expect("pid");
        assert_eq!(state.server_pid("42").expect("pid"), Some(77));
        assert_eq!(
            state.volumes_with_servers().expect("servers"),
            vec!["42".to_string()]
        );
        state.remove_volume("42").expect("remove");
        assert_eq!(state.volume("42").expect("read"), None);
        assert!(state.volume("../etc/passwd").is_err());
        assert!(state.volume("..").is_err());
        assert!(state.volume("").is_err());

        let p = PublishRecord {
            volume_id: "42".into(),
            target: "/pods/a/volumes/x".into(),
            readonly: true,
            pod: Some(("uid".into(), PodIdentity::default())),
        };
        state.put_publish(&p).expect("publish");
        assert_eq!(state.publish(&p.target).expect("read"), Some(p.clone()));
        assert_eq!(state.publishes_made().expect("list"), vec![p.clone()]);
        state.remove_publish(&p.target).expect("remove");
        assert!(state.publishes_made().expect("list").is_empty());
    }
}
