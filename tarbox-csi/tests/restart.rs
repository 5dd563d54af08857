//! Restarts lose nothing: the node plugin killed with SIGKILL while a pod writes through its
//! mount comes back, finds the volume still served from its state directory, and the writer
//! never sees an error; a volume's FUSE server that dies is replaced and its targets bound
//! again. Runs the real `tarbox-csi` binary on PostgreSQL (the in-memory store does not outlive
//! a process).

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use tarbox_csi::csi::controller_client::ControllerClient;
use tarbox_csi::csi::node_client::NodeClient;
use tarbox_csi::csi::*;

const RECORD: usize = 4096;

/// The plugin as the node DaemonSet runs it (with its mounter embedded, as on a plain host).
fn spawn_plugin(dir: &Path, url: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("plugin.log"))
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_tarbox-csi"))
        .arg("--mode=all")
        .arg(format!(
            "--endpoint=unix://{}",
            dir.join("csi.sock").display()
        ))
        .arg(format!("--state-dir={}", dir.join("state").display()))
        .arg("--node-id=node-1")
        .env("TARBOX_DATABASE_URL", url)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start tarbox-csi")
}

async fn clients(
    dir: &Path,
) -> (
    ControllerClient<tonic::transport::Channel>,
    NodeClient<tonic::transport::Channel>,
) {
    let channel = channel(dir.join("csi.sock")).await;
    (
        ControllerClient::new(channel.clone()),
        NodeClient::new(channel),
    )
}

fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let path = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path.as_str()))
}

/// A pod's process appending numbered records to a file, fsyncing every 16; stops at the first
/// error, which it keeps.
struct Writer {
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Writer {
    fn start(path: PathBuf) -> Writer {
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (written.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut f = std::fs::File::create(&path).map_err(|e| format!("create: {e}"))?;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let record = vec![(n % 251) as u8; RECORD];
                f.write_all(&record)
                    .map_err(|e| format!("write {n}: {e}"))?;
                n += 1;
                if n % 16 == 0 {
                    f.sync_data().map_err(|e| format!("fsync after {n}: {e}"))?;
                    w.store(n, Ordering::Relaxed);
                }
            }
            f.sync_all().map_err(|e| format!("final fsync: {e}"))?;
            w.store(n, Ordering::Relaxed);
            Ok(())
        });
        Writer {
            written,
            stop,
            thread,
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let result = self.thread.join().expect("writer thread");
        if let Err(e) = result {
            panic!("the pod's writer saw an error: {e}");
        }
        self.written.load(Ordering::Relaxed)
    }
}

fn check_records(path: &Path, count: u64) {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .expect("read back");
    assert_eq!(
        data.len() as u64,
        count * RECORD as u64,
        "every record written is there"
    );
    for (n, record) in data.chunks(RECORD).enumerate() {
        assert!(
            record.iter().all(|&b| b == (n % 251) as u8),
            "record {n} is intact"
        );
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_plugin_loses_no_mount_and_a_dead_server_is_replaced() {
    if !fuse_available() {
        return;
    }
    let url = postgres_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut plugin = spawn_plugin(dir.path(), &url);
    let (mut controller, mut node) = clients(dir.path()).await;

    let name = format!("pvc-restart-{}", std::process::id());
    let volume = controller
        .create_volume(create_request(&name, 256 * MIB, &[]))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let (staging, target) = (dir.path().join("staging"), dir.path().join("pod"));
    let stage = stage_request(&volume, &staging);
    let publish = publish_request(&volume, &staging, &target);
    node.node_stage_volume(stage.clone()).await.expect("stage");
    node.node_publish_volume(publish.clone())
        .await
        .expect("publish");

    // SIGKILL the plugin mid-write; the pod keeps writing while it is gone.
    let writer = Writer::start(target.join("journal"));
    wait_until("the writer has fsynced", || writer.written() >= 64).await;
    plugin.kill().expect("SIGKILL the plugin");
    plugin.wait().expect("reap the plugin");
    let at_kill = writer.written();
    wait_until("the writer went on without the plugin", || {
        writer.written() >= at_kill + 64
    })
    .await;

    // The restarted plugin finds the volume served, from its state directory.
    let mut plugin = spawn_plugin(dir.path(), &url);
    let (mut controller, mut node) = clients(dir.path()).await;
    node.node_stage_volume(stage.clone())
        .await
        .expect("stage after the restart");
    node.node_publish_volume(publish.clone())
        .await
        .expect("publish after the restart");
    let stats = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: volume.volume_id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert!(stats.volume_condition.is_some_and(|c| !c.abnormal));
    let count = writer.finish();
    assert!(count > at_kill);
    check_records(&target.join("journal"), count);

    // The volume's FUSE server dies: the mounter starts another and binds the target again;
    // everything fsynced is still there.
    let pid_file = dir
        .path()
        .join(format!("state/volumes/{}.pid", volume.volume_id));
    let server = std::fs::read_to_string(&pid_file).expect("pid file");
    let status = Command::new("kill")
        .args(["-KILL", server.trim()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_until("a new server serves the volume", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() != server.trim())
            && std::fs::metadata(target.join("journal")).is_ok()
    })
    .await;
    check_records(&target.join("journal"), count);
    std::fs::write(target.join("after-repair"), b"ok").expect("write after the repair");

    // Undo: no mount is left behind.
    node.node_unpublish_volume(unpublish_request(&volume.volume_id, &target))
        .await
        .expect("unpublish");
    node.node_unstage_volume(unstage_request(&volume.volume_id, &staging))
        .await
        .expect("unstage");
    assert!(
        !mounted(&target) && !mounted(&staging),
        "nothing stays mounted"
    );
    wait_until("the server is gone", || !pid_file.exists()).await;
    controller
        .delete_volume(delete_request(&volume.volume_id))
        .await
        .expect("delete");
    Command::new("kill")
        .args(["-TERM", &plugin.id().to_string()])
        .status()
        .expect("stop the plugin");
    plugin.wait().expect("reap the plugin");
}
