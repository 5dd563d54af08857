//! Restore and clone through the driver: CreateVolume from a snapshot or a volume gives a
//! volume with exactly that tree, and deleting a volume keeps its snapshots restorable until
//! the last one is deleted.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use common::*;
use tarbox_csi::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
use tarbox_csi::csi::*;
use tarbox_fs::TenantState;
use tonic::Code;

fn from_snapshot(name: &str, bytes: i64, snapshot_id: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource {
                snapshot_id: snapshot_id.to_string(),
            })),
        }),
        ..create_request(name, bytes, &[])
    }
}

fn from_volume(name: &str, bytes: i64, volume_id: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(Type::Volume(VolumeSource {
                volume_id: volume_id.to_string(),
            })),
        }),
        ..create_request(name, bytes, &[])
    }
}

/// What a pod sees of a tree: per path, mode, owner, size, link count, symlink target, the
/// `user.note` attribute and the content.
fn observe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.file_name().is_some_and(|n| n == ".tarbox") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let mut line = format!(
                "{} mode {:o} owner {}:{} size {} nlink {} mtime {}",
                path.strip_prefix(root).expect("under root").display(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.size(),
                meta.nlink(),
                meta.mtime()
            );
            if meta.is_symlink() {
                line += &format!(
                    " -> {}",
                    std::fs::read_link(&path).expect("readlink").display()
                );
            } else if meta.is_dir() {
                pending.push(path.clone());
            } else {
                let data = std::fs::read(&path).expect("read");
                line += &format!(" content {}", blake3::hash(&data).to_hex());
                if let Ok(Some(note)) = xattr::get(&path, "user.note") {
                    line += &format!(" note {}", String::from_utf8_lossy(&note));
                }
            }
            out.push(line);
        }
    }
    out.sort();
    out
}

async fn restore_and_clone(url: &str) {
    let mut h = Harness::start(url).await;
    let tag = h.tag();

    // A source volume with one of everything, snapshotted, then changed.
    let source = h
        .controller
        .create_volume(create_request(&format!("pvc-{tag}-src"), 4 * MIB, &[]))
        .await
        .expect("create the source")
        .into_inner()
        .volume
        .expect("volume");
    let pod = h.mount(&source, "src").await;
    std::fs::create_dir_all(pod.join("data/deep")).expect("mkdir");
    write(pod.join("data/weights"), vec![3u8; 600_000])
        .await
        .expect("write");
    write(pod.join("data/deep/config"), b"lr=0.1".to_vec())
        .await
        .expect("write");
    std::fs::set_permissions(
        pod.join("data/deep"),
        std::fs::Permissions::from_mode(0o750),
    )
    .expect("chmod");
    std::os::unix::fs::chown(pod.join("data/weights"), Some(1000), Some(1000)).expect("chown");
    std::fs::hard_link(pod.join("data/weights"), pod.join("weights-link")).expect("link");
    std::os::unix::fs::symlink("data/deep/config", pod.join("config")).expect("symlink");
    xattr::set(pod.join("data/weights"), "user.note", b"epoch-3").expect("setxattr");
    let at_snapshot = observe(&pod);
    let snapshot = h
        .controller
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: source.volume_id.clone(),
            name: format!("snap-{tag}"),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    write(pod.join("data/weights"), b"overwritten".to_vec())
        .await
        .expect("write");
    write(pod.join("after"), b"after".to_vec())
        .await
        .expect("write");
    let live = observe(&pod);

    // Restore: exactly the tree at the snapshot; a retry is the same volume.
    let name = format!("pvc-{tag}-restored");
    let restored = h
        .controller
        .create_volume(from_snapshot(&name, 4 * MIB, &snapshot.snapshot_id))
        .await
        .expect("restore")
        .into_inner()
        .volume
        .expect("volume");
    assert!(matches!(
        restored.content_source.as_ref().and_then(|s| s.r#type.as_ref()),
        Some(Type::Snapshot(s)) if s.snapshot_id == snapshot.snapshot_id
    ));
    let again = h
        .controller
        .create_volume(from_snapshot(&name, 4 * MIB, &snapshot.snapshot_id))
        .await
        .expect("restore again")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(again.volume_id, restored.volume_id);
    code(
        h.controller
            .create_volume(from_volume(&name, 4 * MIB, &source.volume_id))
            .await,
        Code::AlreadyExists,
    );
    let view = h.mount(&restored, "restored").await;
    assert_eq!(observe(&view), at_snapshot);
    write(view.join("data/weights"), b"restored's own".to_vec())
        .await
        .expect("write");
    assert_eq!(
        std::fs::read(pod.join("data/weights")).expect("read"),
        b"overwritten"
    );
    h.unmount(&restored, "restored").await;

    // Clone: the live tree as the pods wrote it.
    let cloned = h
        .controller
        .create_volume(from_volume(
            &format!("pvc-{tag}-clone"),
            4 * MIB,
            &source.volume_id,
        ))
        .await
        .expect("clone")
        .into_inner()
        .volume
        .expect("volume");
    let view = h.mount(&cloned, "cloned").await;
    assert_eq!(observe(&view), live);
    h.unmount(&cloned, "cloned").await;

    // Bad sources and capacities.
    code(
        h.controller
            .create_volume(from_snapshot(
                &format!("pvc-{tag}-x1"),
                4 * MIB,
                "999999999-1",
            ))
            .await,
        Code::NotFound,
    );
    code(
        h.controller
            .create_volume(from_volume(&format!("pvc-{tag}-x2"), 4 * MIB, "999999999"))
            .await,
        Code::NotFound,
    );
    code(
        h.controller
            .create_volume(from_snapshot(
                &format!("pvc-{tag}-x3"),
                MIB / 4,
                &snapshot.snapshot_id,
            ))
            .await,
        Code::OutOfRange,
    );

    // The condition of a volume.
    let got = h
        .controller
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: source.volume_id.clone(),
        })
        .await
        .expect("get volume")
        .into_inner();
    let condition = got
        .status
        .and_then(|s| s.volume_condition)
        .expect("condition");
    assert!(!condition.abnormal, "{condition:?}");
    code(
        h.controller
            .controller_get_volume(ControllerGetVolumeRequest {
                volume_id: "999999999".into(),
            })
            .await,
        Code::NotFound,
    );

    // Deleting the source keeps its snapshot listed and restorable.
    h.unmount(&source, "src").await;
    h.controller
        .delete_volume(delete_request(&source.volume_id))
        .await
        .expect("delete the source");
    let volumes = h
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .expect("list volumes")
        .into_inner();
    assert!(
        volumes.entries.iter().all(|e| e
            .volume
            .as_ref()
            .is_some_and(|v| v.volume_id != source.volume_id)),
        "a deleted volume is not listed"
    );
    let listed = h
        .controller
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: source.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list snapshots")
        .into_inner();
    assert_eq!(listed.entries.len(), 1, "the snapshot outlives its volume");
    let late = h
        .controller
        .create_volume(from_snapshot(
            &format!("pvc-{tag}-late"),
            4 * MIB,
            &snapshot.snapshot_id,
        ))
        .await
        .expect("restore after the source was deleted")
        .into_inner()
        .volume
        .expect("volume");
    let view = h.mount(&late, "late").await;
    assert_eq!(observe(&view), at_snapshot);
    h.unmount(&late, "late").await;

    // The name is free again at once, while the old tenant keeps the snapshot.
    let reborn = h
        .controller
        .create_volume(create_request(&format!("pvc-{tag}-src"), 4 * MIB, &[]))
        .await
        .expect("the deleted volume's name again")
        .into_inner()
        .volume
        .expect("volume");
    assert_ne!(reborn.volume_id, source.volume_id);

    // The data goes with the last snapshot.
    let tenant = &source.volume_context[tarbox_csi::CONTEXT_TENANT];
    assert_eq!(
        h.engine.tenant_info(tenant).await.expect("info").state,
        TenantState::Retired
    );
    h.controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete the snapshot");
    assert_eq!(
        h.engine.tenant_info(tenant).await.expect("info").state,
        TenantState::Deleted
    );

    for v in [&restored, &cloned, &late, &reborn] {
        h.controller
            .delete_volume(delete_request(&v.volume_id))
            .await
            .expect("delete");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_clone_on_memory() {
    if fuse_available() {
        restore_and_clone("memory://").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_clone_on_postgres() {
    if fuse_available() {
        restore_and_clone(&postgres_url()).await;
    }
}
