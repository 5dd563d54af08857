//! The harness of the driver tests: a driver on a Unix socket in a temporary directory, the
//! clients kubelet and the sidecars would use, and helpers that play them.
#![allow(dead_code)] // each test file uses its own share of the helpers

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tarbox_csi::csi::controller_client::ControllerClient;
use tarbox_csi::csi::identity_client::IdentityClient;
use tarbox_csi::csi::node_client::NodeClient;
use tarbox_csi::csi::volume_capability::access_mode::Mode as AccessMode;
use tarbox_csi::csi::volume_capability::{AccessMode as Access, AccessType, MountVolume};
use tarbox_csi::csi::*;
use tarbox_csi::{Driver, Mode, MounterConfig, Placement};
use tarbox_fs::{Engine, EngineConfig};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

pub const MIB: i64 = 1 << 20;

pub fn fuse_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let ok = root && Path::new("/dev/fuse").exists();
    if !ok {
        let strict = std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("TARBOX_REQUIRE_POSTGRES").as_deref() == Ok("1");
        assert!(!strict, "the CSI driver tests need root and /dev/fuse");
        eprintln!("SKIPPED: the CSI driver tests need root and /dev/fuse");
    }
    ok
}

/// A driver serving every service on a socket in a temporary directory, and clients of it.
pub struct Harness {
    pub dir: tempfile::TempDir,
    /// The driver's engine, to read the audit trail.
    pub engine: Engine,
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

impl Harness {
    pub async fn start(url: &str) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("csi.sock");
        let engine = Engine::open(url, EngineConfig::default())
            .await
            .expect("engine");
        // The in-memory store is only visible in this process; on PostgreSQL the FUSE servers
        // run as their own processes, as on a node.
        let placement = if url.starts_with("memory") {
            Placement::InProcess
        } else {
            Placement::Mounter(Some(MounterConfig {
                binary: env!("CARGO_BIN_EXE_tarbox-csi").into(),
                database_url: url.to_string(),
            }))
        };
        let driver = Driver::new(
            engine.clone(),
            Mode::All,
            "node-1",
            dir.path().join("state"),
            placement,
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let endpoint = format!("unix://{}", socket.display());
        let served = tokio::spawn(async move {
            tarbox_csi::serve(driver, &endpoint, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        let channel = channel(socket).await;
        Harness {
            dir,
            engine,
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            stop: Some(stop),
            served,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.served).await.expect("server task");
    }
}

/// A test that fails half way leaves no server and no mount behind: the FUSE servers run apart
/// from the driver by design, so the harness stops those of its state directory (SIGTERM: they
/// flush and unmount) and then detaches whatever is still mounted under its directory.
impl Drop for Harness {
    fn drop(&mut self) {
        let volumes = self.dir.path().join("state/volumes");
        for entry in std::fs::read_dir(&volumes).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "pid") {
                if let Ok(pid) = std::fs::read_to_string(&path) {
                    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
                }
            }
        }
        let root = self.dir.path().display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounted: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounted.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounted {
            let _ = std::process::Command::new("umount")
                .args(["-l", m])
                .status();
        }
    }
}

/// A gRPC channel to the driver listening on `socket`, waiting up to 10 s for it to listen.
pub async fn channel(socket: PathBuf) -> Channel {
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to the driver's socket")
}

pub fn mount_cap(mode: AccessMode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(Access { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

pub fn create_request(name: &str, bytes: i64, params: &[(&str, &str)]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(AccessMode::MultiNodeMultiWriter)],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..CreateVolumeRequest::default()
    }
}

pub fn pvc<'a>(ns: &'a str, name: &'a str) -> [(&'a str, &'a str); 2] {
    [
        ("csi.storage.k8s.io/pvc/namespace", ns),
        ("csi.storage.k8s.io/pvc/name", name),
    ]
}

/// Assert that `result` failed with `code`, and return its message.
#[track_caller]
pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code) -> String {
    match result {
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            s.message().to_string()
        }
    }
}

/// Write `data` to `path` from a blocking thread, as a pod's process would.
pub async fn write(path: PathBuf, data: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&data)?;
        f.sync_all()
    })
    .await
    .expect("join")
}

impl Harness {
    /// A name fragment unique to this run (the temporary directory's random name), as tenant
    /// names stay taken until purged.
    pub fn tag(&self) -> String {
        self.dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect()
    }

    /// Stage `volume` at `<name>-staging` and publish it read-write at `<name>`, as kubelet does
    /// for one pod; returns the pod's view.
    pub async fn mount(&mut self, volume: &Volume, name: &str) -> PathBuf {
        let staging = self.path(&format!("{name}-staging"));
        let target = self.path(name);
        (self.node.node_stage_volume(stage_request(volume, &staging)))
            .await
            .expect("stage");
        (self
            .node
            .node_publish_volume(publish_request(volume, &staging, &target)))
        .await
        .expect("publish");
        target
    }

    /// Undo [`Harness::mount`].
    pub async fn unmount(&mut self, volume: &Volume, name: &str) {
        let target = unpublish_request(&volume.volume_id, &self.path(name));
        self.node
            .node_unpublish_volume(target)
            .await
            .expect("unpublish");
        let staging = unstage_request(&volume.volume_id, &self.path(&format!("{name}-staging")));
        self.node
            .node_unstage_volume(staging)
            .await
            .expect("unstage");
    }
}

/// The PostgreSQL database of the tests.
pub fn postgres_url() -> String {
    std::env::var("TARBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tarbox_test".into())
}

/// The NodeStageVolume kubelet sends for `volume` (a shared mount) at `staging`.
pub fn stage_request(volume: &Volume, staging: &Path) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap(AccessMode::MultiNodeMultiWriter)),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    }
}

/// The NodePublishVolume kubelet sends to publish `volume` staged at `staging` at `target`.
pub fn publish_request(volume: &Volume, staging: &Path, target: &Path) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(AccessMode::MultiNodeMultiWriter)),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    }
}

pub fn unpublish_request(volume_id: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: volume_id.to_string(),
        target_path: target.display().to_string(),
    }
}

pub fn unstage_request(volume_id: &str, staging: &Path) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: volume_id.to_string(),
        staging_target_path: staging.display().to_string(),
    }
}

/// DeleteVolume as the provisioner sends it without secrets.
pub fn delete_request(volume_id: &str) -> DeleteVolumeRequest {
    DeleteVolumeRequest {
        volume_id: volume_id.to_string(),
        secrets: Default::default(),
    }
}

/// The pod kubelet names in a NodePublishVolume (with `podInfoOnMount`).
pub struct PodInfo<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub service_account: &'a str,
}

impl PodInfo<'_> {
    /// Publish `volume` at `target` for this pod.
    pub fn publish_request(
        &self,
        volume: &Volume,
        staging: &Path,
        target: &Path,
    ) -> NodePublishVolumeRequest {
        let mut request = publish_request(volume, staging, target);
        request.volume_context.extend([
            (
                "csi.storage.k8s.io/pod.uid".to_string(),
                self.uid.to_string(),
            ),
            (
                "csi.storage.k8s.io/pod.name".to_string(),
                self.name.to_string(),
            ),
            (
                "csi.storage.k8s.io/pod.namespace".to_string(),
                self.namespace.to_string(),
            ),
            (
                "csi.storage.k8s.io/serviceAccount.name".to_string(),
                self.service_account.to_string(),
            ),
        ]);
        request
    }
}

/// A kubelet-shaped cgroup for a pod's container, removed when dropped (once empty).
pub struct PodCgroup(PathBuf);

impl PodCgroup {
    /// cgroup v1 (the `pids` hierarchy): `kubepods/besteffort/pod<uid>/<container>`.
    pub fn v1(uid: &str) -> PodCgroup {
        PodCgroup::make(Path::new("/sys/fs/cgroup/pids").join(format!(
            "kubepods/besteffort/pod{uid}/c0ffee{}",
            std::process::id()
        )))
    }

    /// cgroup v2 with the systemd driver: the uid's dashes become underscores.
    pub fn v2(uid: &str) -> PodCgroup {
        let u = uid.replace('-', "_");
        PodCgroup::make(Path::new("/sys/fs/cgroup/unified").join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{}.scope",
            std::process::id()
        )))
    }

    fn make(path: PathBuf) -> PodCgroup {
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        PodCgroup(path)
    }

    /// Run `script` in a shell that first moves itself into this cgroup.
    pub fn run(&self, script: &str) {
        let procs = self.0.join("cgroup.procs");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && {script}", procs.display()))
            .status()
            .expect("sh");
        assert!(status.success(), "{script}");
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Innermost first; the shells have exited, so every level is empty.
        let mut dir = Some(self.0.as_path());
        while let Some(d) = dir {
            if !d.to_string_lossy().contains("kubepods") || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}
