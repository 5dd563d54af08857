//! The mount library end to end on a real FUSE mount: requests carry the pod the mount's
//! `PodResolver` finds for their process, and the audit trail records it. Needs root and
//! /dev/fuse; under `CI=true` their absence fails instead of skipping.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use tarbox_fs::audit::AuditFilter;
use tarbox_fs::{AuditOp, Engine, EngineConfig, PodIdentity, TenantOptions};
use tarbox_fuse::{MountSpec, PodResolver, TenantMount};

/// Puts every process in one pod, and remembers which pids it was asked about.
#[derive(Debug, Default)]
struct OnePod {
    asked: Mutex<Vec<u32>>,
}

impl PodResolver for OnePod {
    fn pod_of(&self, pid: u32) -> Option<Arc<PodIdentity>> {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pid);
        Some(Arc::new(PodIdentity {
            namespace: "ml".into(),
            name: "trainer-0".into(),
            service_account: "trainer".into(),
        }))
    }
}

fn fuse_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let ok = root && Path::new("/dev/fuse").exists();
    if !ok {
        let strict = std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("TARBOX_REQUIRE_POSTGRES").as_deref() == Ok("1");
        assert!(!strict, "FUSE tests need root and /dev/fuse");
        eprintln!("SKIPPED: FUSE tests need root and /dev/fuse");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_the_pod_of_their_process() {
    if !fuse_available() {
        return;
    }
    let engine = Engine::open("memory://", EngineConfig::default())
        .await
        .expect("engine");
    engine
        .create_tenant("pods", TenantOptions::default())
        .await
        .expect("tenant");
    let dir = tempfile::tempdir().expect("mount point");
    let resolver = Arc::new(OnePod::default());
    let mut spec = MountSpec::new("pods");
    spec.mount.pods = Some(resolver.clone());
    let mount = TenantMount::start(&engine, dir.path(), spec)
        .await
        .expect("mount");
    let path = dir.path().to_path_buf();
    let status = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .arg("-c")
            .arg("echo hello > f && cat f > /dev/null")
            .current_dir(path)
            .status()
    })
    .await
    .expect("join")
    .expect("sh");
    assert!(status.success());
    mount.unmount().await.expect("unmount");
    assert!(
        !resolver.asked.lock().expect("lock").is_empty(),
        "the resolver was never asked"
    );
    engine.flush_audit().await;
    let filter = AuditFilter {
        tenant: Some("pods".into()),
        pod: Some("ml/trainer-0".into()),
        limit: 1000,
        ..AuditFilter::default()
    };
    let events = engine.audit_query(&filter).await.expect("query");
    let create = events
        .iter()
        .find(|e| e.op == AuditOp::Create)
        .unwrap_or_else(|| panic!("no create recorded for the pod: {events:?}"));
    assert_eq!(create.path.as_deref(), Some("/f"));
    let pod = create.pod.as_ref().expect("the event names its pod");
    assert_eq!(pod.service_account, "trainer");
    engine.close().await.expect("close");
}
