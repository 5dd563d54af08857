//! A StorageClass `accessPolicy` through the driver, as on a cluster: one volume published to two
//! pods of different service accounts, with real processes in kubelet-shaped cgroups writing
//! through real FUSE mounts. The reader pod cannot change the dataset, the trainer pod writes only
//! its checkpoint directory, root is squashed in both, and the audit trail names each denial with
//! its pod and rule. Needs root and /dev/fuse; under `CI=true` their absence fails.

mod common;

use common::*;
use tarbox_csi::CONTEXT_TENANT;
use tarbox_fs::audit::{AuditFilter, ResultFilter};
use tonic::Code;

const POLICY: &str = r#"
[defaults]
pods = "none"

[[rules]]
name = "trainers write their own checkpoints"
service_account = "trainer"
paths = ["/checkpoints/{pod}"]
access = "write"

[[rules]]
name = "datasets are read-only"
paths = ["/datasets"]
access = "read"

[[rules]]
name = "readers keep notes"
service_account = "reader"
paths = ["/notes"]
access = "write"

[[rules]]
name = "root is uid 1000"
squash = "root"
uid = 1000
gid = 1000
"#;

/// Shell helpers for the pods' scripts: `refused ERRNO-TEXT CMD…` runs CMD, which must fail with
/// that error text (`Read-only file system`, `Permission denied`).
const HELPERS: &str = r#"
refused() { want=$1; shift; if out=$("$@" 2>&1); then echo "allowed: $*" >&2; exit 3; fi;
  case "$out" in *"$want"*) ;; *) echo "$*: $out (wanted $want)" >&2; exit 4;; esac; }
"#;

async fn two_pods(url: &str) {
    let mut h = Harness::start(url).await;
    let name = format!("pvc-policy-{}", h.tag());
    // A policy that cannot work is refused before anything is created.
    let bad = "[[rules]]\nnamespace = \"ML\"\naccess = \"read\"\n";
    let message = code(
        h.controller
            .create_volume(create_request(&name, MIB, &[("accessPolicy", bad)]))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        message.contains("accessPolicy") && message.contains("line 1"),
        "{message}"
    );
    let volume = h
        .controller
        .create_volume(create_request(&name, MIB, &[("accessPolicy", POLICY)]))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let staging = h.path("staging");
    h.node
        .node_stage_volume(stage_request(&volume, &staging))
        .await
        .expect("stage");
    let n = std::process::id();
    let (trainer_uid, reader_uid) = (
        format!("{n:08x}-0000-4000-8000-0000000000a1"),
        format!("{n:08x}-0000-4000-8000-0000000000a2"),
    );
    let (trainer_dir, reader_dir) = (h.path("pod-trainer"), h.path("pod-reader"));
    let trainer = PodInfo {
        uid: &trainer_uid,
        namespace: "ml",
        name: "trainer-0",
        service_account: "trainer",
    };
    let reader = PodInfo {
        uid: &reader_uid,
        namespace: "ml",
        name: "reader-0",
        service_account: "reader",
    };
    for (pod, target) in [(&trainer, &trainer_dir), (&reader, &reader_dir)] {
        h.node
            .node_publish_volume(pod.publish_request(&volume, &staging, target))
            .await
            .expect("publish");
    }
    // The administrator (a process in no pod) lays the volume out.
    let (t, r) = (trainer_dir.display(), reader_dir.display());
    let setup = format!(
        "mkdir -p {t}/datasets {t}/checkpoints/trainer-0 {t}/checkpoints/trainer-1 {t}/notes \
         && echo 1,2,3 > {t}/datasets/train.csv && chmod -R 0777 {t}/checkpoints {t}/notes"
    );
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&setup)
        .status()
        .expect("sh");
    assert!(status.success(), "{setup}");

    let trainer_script = format!(
        "{HELPERS} set -e
         echo weights > {t}/checkpoints/trainer-0/step-1
         test \"$(stat -c %u:%g {t}/checkpoints/trainer-0/step-1)\" = 1000:1000
         grep -q 1,2,3 {t}/datasets/train.csv
         refused 'Read-only file system' sh -c 'echo x > {t}/datasets/train.csv'
         refused 'Read-only file system' rm {t}/datasets/train.csv
         refused 'Permission denied' sh -c 'echo x > {t}/checkpoints/trainer-1/step-1'
         refused 'Operation not permitted' chown 0 {t}/checkpoints/trainer-0/step-1
         test \"$(ls {t}/checkpoints)\" = trainer-0"
    );
    let reader_script = format!(
        "{HELPERS} set -e
         grep -q 1,2,3 {r}/datasets/train.csv
         echo looked > {r}/notes/eval
         test \"$(stat -c %u:%g {r}/notes/eval)\" = 1000:1000
         refused 'Read-only file system' sh -c 'echo x >> {r}/datasets/train.csv'
         refused 'Read-only file system' rm -f {r}/datasets/train.csv
         refused 'Read-only file system' mv {r}/datasets/train.csv {r}/datasets/moved.csv
         refused 'Permission denied' cat {r}/checkpoints/trainer-0/step-1
         refused 'Permission denied' sh -c 'echo x > {r}/checkpoints/trainer-0/mine'
         refused 'Permission denied' ls {r}/checkpoints"
    );
    let (tu, ru) = (trainer_uid.clone(), reader_uid.clone());
    tokio::task::spawn_blocking(move || {
        PodCgroup::v1(&tu).run(&trainer_script);
        PodCgroup::v2(&ru).run(&reader_script);
    })
    .await
    .expect("pods");
    // What the pods could not change is unchanged.
    let data = std::fs::read_to_string(trainer_dir.join("datasets/train.csv")).expect("read");
    assert_eq!(data, "1,2,3\n");

    for target in [&trainer_dir, &reader_dir] {
        h.node
            .node_unpublish_volume(unpublish_request(&volume.volume_id, target))
            .await
            .expect("unpublish");
    }
    h.node
        .node_unstage_volume(unstage_request(&volume.volume_id, &staging))
        .await
        .expect("unstage");
    h.engine.flush_audit().await;
    for (pod, rule) in [
        ("ml/trainer-0", "datasets are read-only"),
        ("ml/reader-0", "datasets are read-only"),
        ("ml/reader-0", "the default for pods"),
    ] {
        let filter = AuditFilter {
            tenant: volume.volume_context.get(CONTEXT_TENANT).cloned(),
            pod: Some(pod.to_string()),
            result: Some(ResultFilter::Denied),
            limit: 1000,
            ..AuditFilter::default()
        };
        let denied = h.engine.audit_query(&filter).await.expect("query");
        assert!(
            denied
                .iter()
                .any(|e| e.detail.as_deref().is_some_and(|d| d.contains(rule))),
            "no denial of {pod} by {rule:?}: {denied:?}"
        );
    }
    h.controller
        .delete_volume(delete_request(&volume.volume_id))
        .await
        .expect("delete");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_one_volume_get_what_the_policy_grants_on_memory() {
    if fuse_available() {
        two_pods("memory://").await;
    }
}

/// With PostgreSQL the FUSE server is its own process: the policy reaches it from the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_one_volume_get_what_the_policy_grants_on_postgres() {
    if fuse_available() {
        two_pods(&postgres_url()).await;
    }
}
