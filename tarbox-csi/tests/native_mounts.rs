//! A StorageClass `nativeMounts` through the driver, as on a cluster: a bad definition is refused
//! at CreateVolume naming itself; a volume made with a `rw` `/.venv` and a `ro` tools directory is
//! staged and published to a pod (a real process in a kubelet-shaped cgroup, running as uid 1000)
//! that writes its venv to the node's directory and cannot change the tools; DeleteVolume leaves
//! the node's data in place. Needs root and /dev/fuse; under `CI=true` their absence fails.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use common::*;
use tarbox_csi::CONTEXT_TENANT;
use tonic::Code;

async fn venv_and_tools(url: &str) {
    let mut h = Harness::start(url).await;
    let name = format!("pvc-native-{}", h.tag());
    let host = tempfile::tempdir().expect("host directories");
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (venvs, tools) = (host.path().join("venvs"), host.path().join("tools"));
    std::fs::create_dir(&venvs).expect("venvs");
    std::fs::create_dir(&tools).expect("tools");
    std::fs::write(tools.join("tool.sh"), "echo tool ran\n").expect("tool");

    let bad = "[[native_mounts]]\npath = \"/.tarbox/x\"\nsource = \"/usr\"\nmode = \"ro\"\n";
    let message = code(
        h.controller
            .create_volume(create_request(&name, MIB, &[("nativeMounts", bad)]))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        message.contains("nativeMounts") && message.contains("/.tarbox"),
        "{message}"
    );

    let mounts = format!(
        "[[native_mounts]]\npath = \"/.venv\"\nsource = \"{}/{{tenant}}\"\nmode = \"rw\"\n\n\
         [[native_mounts]]\npath = \"/opt/tools\"\nsource = \"{}\"\nmode = \"ro\"\n",
        venvs.display(),
        tools.display()
    );
    let volume = h
        .controller
        .create_volume(create_request(&name, MIB, &[("nativeMounts", &mounts)]))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let tenant = volume
        .volume_context
        .get(CONTEXT_TENANT)
        .cloned()
        .expect("tenant in the context");
    // The tenant's own venv directory is made when the volume is served, writable by its pods
    // whatever user they run as (as a volume's root); a pod running as a user writes it.
    let staging = h.path("staging");
    h.node
        .node_stage_volume(stage_request(&volume, &staging))
        .await
        .expect("stage");
    let pod_uid = format!("{:08x}-0000-4000-8000-0000000000b1", std::process::id());
    let pod = PodInfo {
        uid: &pod_uid,
        namespace: "agents",
        name: "agent-0",
        service_account: "agent",
    };
    let target = h.path("pod");
    h.node
        .node_publish_volume(pod.publish_request(&volume, &staging, &target))
        .await
        .expect("publish");
    let own = venvs.join(&tenant);
    let mode = std::fs::metadata(&own)
        .expect("the volume's venv directory was made")
        .mode();
    assert_eq!(mode & 0o7777, 0o1777);

    let t = target.display();
    let script = format!(
        "set -e
         test \"$(sh {t}/opt/tools/tool.sh)\" = 'tool ran'
         mkdir -p {t}/.venv/lib && echo 'X = 1' > {t}/.venv/lib/mod.py
         if touch {t}/opt/tools/new 2>/dev/null; then echo 'ro mount took a change' >&2; exit 3; fi
         if ln {t}/.venv/lib/mod.py {t}/linked 2>/dev/null; then echo 'linked across' >&2; exit 4; fi"
    );
    let as_user = format!(
        "setpriv --reuid 1000 --regid 1000 --clear-groups sh -c '{}'",
        script.replace('\'', "'\\''")
    );
    let cgroup_uid = pod_uid.clone();
    tokio::task::spawn_blocking(move || PodCgroup::v2(&cgroup_uid).run(&as_user))
        .await
        .expect("pod");
    let written = own.join("lib/mod.py");
    assert_eq!(
        std::fs::read_to_string(&written).expect("on the node"),
        "X = 1\n"
    );
    assert_eq!(
        std::fs::metadata(&written).expect("meta").uid(),
        1000,
        "written as the pod's user"
    );
    assert_eq!(
        std::fs::read_dir(&tools).expect("tools").count(),
        1,
        "the tools are unchanged"
    );

    h.node
        .node_unpublish_volume(unpublish_request(&volume.volume_id, &target))
        .await
        .expect("unpublish");
    h.node
        .node_unstage_volume(unstage_request(&volume.volume_id, &staging))
        .await
        .expect("unstage");
    assert_eq!(
        h.engine
            .native_mounts(Some(&tenant))
            .await
            .expect("list")
            .len(),
        2
    );
    h.controller
        .delete_volume(delete_request(&volume.volume_id))
        .await
        .expect("delete");
    // The node's data is the node's: never deleted by the driver.
    assert!(written.exists());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_mounts_of_a_storage_class_on_memory() {
    if fuse_available() {
        venv_and_tools("memory://").await;
    }
}

/// With PostgreSQL the FUSE server is its own process: the definitions reach it from the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_mounts_of_a_storage_class_on_postgres() {
    if fuse_available() {
        venv_and_tools(&postgres_url()).await;
    }
}
