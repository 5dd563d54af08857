//! The driver over its gRPC socket, as kubelet and the external sidecars drive it: a real Unix
//! socket, real FUSE mounts and bind mounts, the in-memory store and PostgreSQL. Needs root and
//! /dev/fuse; under `CI=true` their absence fails instead of skipping.

mod common;

use std::io::ErrorKind;
use std::path::Path;

use common::*;
use tarbox_csi::CONTEXT_TENANT;
use tarbox_csi::csi::volume_capability::access_mode::Mode as AccessMode;
use tarbox_csi::csi::volume_capability::{AccessMode as Access, AccessType, BlockVolume};
use tarbox_csi::csi::*;
use tarbox_fs::AuditOp;
use tarbox_fs::audit::AuditFilter;
use tonic::Code;

async fn lifecycle(url: &str) {
    let mut h = Harness::start(url).await;
    let tag = h.tag();

    // Identity.
    let info = h
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .expect("info");
    assert_eq!(info.get_ref().name, "tarbox.csi.io");
    let probe = h.identity.probe(ProbeRequest {}).await.expect("probe");
    assert_eq!(probe.get_ref().ready, Some(true));

    // Create with PVC metadata; again with the same capacity is the same volume.
    let team = format!("team-{tag}");
    let params = pvc(&team, "data");
    let name = format!("pvc-{tag}-1");
    let created = h
        .controller
        .create_volume(create_request(&name, MIB, &params))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(created.capacity_bytes, MIB);
    assert_eq!(
        created
            .volume_context
            .get(CONTEXT_TENANT)
            .map(String::as_str),
        Some(format!("team-{tag}-data").as_str())
    );
    let again = h
        .controller
        .create_volume(create_request(&name, MIB, &params))
        .await
        .expect("create again")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(again.volume_id, created.volume_id);
    code(
        h.controller
            .create_volume(create_request(&name, 2 * MIB, &params))
            .await,
        Code::AlreadyExists,
    );

    // Two controllers racing on one name create one volume.
    let race = format!("pvc-{tag}-race");
    let (mut c1, mut c2) = (h.controller.clone(), h.controller.clone());
    let (r1, r2) = tokio::join!(
        c1.create_volume(create_request(&race, MIB, &[])),
        c2.create_volume(create_request(&race, MIB, &[]))
    );
    let (r1, r2) = (
        r1.expect("racer 1").into_inner(),
        r2.expect("racer 2").into_inner(),
    );
    let raced = r1.volume.expect("volume");
    assert_eq!(
        Some(&raced.volume_id),
        r2.volume.as_ref().map(|v| &v.volume_id)
    );

    // Two PVCs whose readable names collide get two tenants.
    let a = h
        .controller
        .create_volume(create_request(
            &format!("pvc-{tag}-a"),
            MIB,
            &pvc(&format!("x{tag}-b"), "c"),
        ))
        .await
        .expect("create a")
        .into_inner()
        .volume
        .expect("volume");
    let b = h
        .controller
        .create_volume(create_request(
            &format!("pvc-{tag}-b"),
            MIB,
            &pvc(&format!("x{tag}"), "b-c"),
        ))
        .await
        .expect("create b")
        .into_inner()
        .volume
        .expect("volume");
    assert_ne!(a.volume_id, b.volume_id);
    assert_ne!(
        a.volume_context[CONTEXT_TENANT],
        b.volume_context[CONTEXT_TENANT]
    );

    // Bad requests are refused with the code the spec names, creating nothing.
    let msg = code(
        h.controller
            .create_volume(create_request(
                &format!("pvc-{tag}-bad"),
                MIB,
                &[("blockSize", "3000")],
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("blockSize"), "{msg}");
    code(
        h.controller
            .create_volume(create_request("", MIB, &[]))
            .await,
        Code::InvalidArgument,
    );
    let mut block = create_request(&format!("pvc-{tag}-block"), MIB, &[]);
    block.volume_capabilities = vec![VolumeCapability {
        access_mode: Some(Access {
            mode: AccessMode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }];
    code(
        h.controller.create_volume(block).await,
        Code::InvalidArgument,
    );
    // A single writer is not enforced, so it is not offered.
    let mut single = create_request(&format!("pvc-{tag}-single"), MIB, &[]);
    single.volume_capabilities = vec![mount_cap(AccessMode::SingleNodeSingleWriter)];
    let msg = code(
        h.controller.create_volume(single).await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("SINGLE_NODE_SINGLE_WRITER"), "{msg}");
    let unconfirmed = h
        .controller
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: created.volume_id.clone(),
            volume_capabilities: vec![mount_cap(AccessMode::SingleNodeMultiWriter)],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(unconfirmed.confirmed.is_none() && !unconfirmed.message.is_empty());
    code(
        h.controller
            .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: "999999999".into(),
                volume_capabilities: vec![mount_cap(AccessMode::SingleNodeWriter)],
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    let confirmed = h
        .controller
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: created.volume_id.clone(),
            volume_capabilities: vec![mount_cap(AccessMode::MultiNodeMultiWriter)],
            ..Default::default()
        })
        .await
        .expect("validate");
    assert!(confirmed.get_ref().confirmed.is_some());

    // Stage once, publish to two pods (the second read-only).
    let cap = mount_cap(AccessMode::MultiNodeMultiWriter);
    let staging = h.path("staging");
    let (t1, t2) = (h.path("pod1"), h.path("pod2"));
    let stage = stage_request(&created, &staging);
    h.node
        .node_stage_volume(stage.clone())
        .await
        .expect("stage");
    h.node.node_stage_volume(stage).await.expect("stage again");
    for (target, readonly) in [(&t1, false), (&t2, true)] {
        let publish = NodePublishVolumeRequest {
            readonly,
            ..publish_request(&created, &staging, target)
        };
        h.node
            .node_publish_volume(publish.clone())
            .await
            .expect("publish");
        h.node
            .node_publish_volume(publish)
            .await
            .expect("publish again");
    }
    write(t1.join("model.bin"), vec![7u8; 100_000])
        .await
        .expect("write through pod 1");
    assert_eq!(
        std::fs::read(t2.join("model.bin")).expect("read through pod 2"),
        vec![7u8; 100_000]
    );
    let refused = write(t2.join("x"), b"no".to_vec())
        .await
        .expect_err("read-only target");
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");

    // Snapshots are checkpoints: ready at once, idempotent, unique by name across volumes, and
    // readable in the volume's own /.tarbox/snapshots.
    let snap_name = format!("snap-{tag}");
    let snap_request = CreateSnapshotRequest {
        source_volume_id: created.volume_id.clone(),
        name: snap_name.clone(),
        ..Default::default()
    };
    let snap = h
        .controller
        .create_snapshot(snap_request.clone())
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert!(snap.ready_to_use);
    assert!(snap.size_bytes >= 100_000, "{snap:?}");
    assert_eq!(snap.source_volume_id, created.volume_id);
    let again = h
        .controller
        .create_snapshot(snap_request)
        .await
        .expect("again");
    assert_eq!(
        again.get_ref().snapshot.as_ref().map(|s| &s.snapshot_id),
        Some(&snap.snapshot_id)
    );
    code(
        h.controller
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: b.volume_id.clone(),
                name: snap_name.clone(),
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
    );
    write(t1.join("model.bin"), vec![8u8; 10])
        .await
        .expect("overwrite after the snapshot");
    let kept = std::fs::read(t1.join(format!(".tarbox/snapshots/{snap_name}/model.bin")))
        .expect("read the snapshot through the mount");
    assert_eq!(kept, vec![7u8; 100_000]);
    let listed = h
        .controller
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: created.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list snapshots")
        .into_inner();
    assert_eq!(
        listed
            .entries
            .iter()
            .filter_map(|e| e.snapshot.as_ref())
            .map(|s| &s.snapshot_id)
            .collect::<Vec<_>>(),
        [&snap.snapshot_id]
    );
    for _ in 0..2 {
        h.controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete snapshot");
    }
    let gone = h
        .controller
        .list_snapshots(ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list by id")
        .into_inner();
    assert!(gone.entries.is_empty());
    assert_eq!(
        std::fs::read(t1.join("model.bin")).expect("live tree"),
        vec![8u8; 10]
    );

    // The quota is the capacity; expansion raises it online; shrinking is refused.
    let full = write(t1.join("big"), vec![1u8; 2 * MIB as usize])
        .await
        .expect_err("over quota");
    assert_eq!(full.kind(), ErrorKind::StorageFull, "{full}");
    let expanded = h
        .controller
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: created.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 4 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("expand");
    assert_eq!(expanded.get_ref().capacity_bytes, 4 * MIB);
    write(t1.join("big"), vec![1u8; 2 * MIB as usize])
        .await
        .expect("write after expanding");
    code(
        h.controller
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: created.volume_id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: MIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await,
        Code::OutOfRange,
    );

    // Stats count what the pods wrote against the quota.
    let stats = h
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: created.volume_id.clone(),
            volume_path: t1.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats")
        .into_inner();
    let bytes = &stats.usage[0];
    assert_eq!(bytes.total, 4 * MIB);
    assert!(bytes.used >= 2 * MIB, "{bytes:?}");
    assert_eq!(bytes.available, bytes.total - bytes.used);

    // Listing pages through the driver's volumes.
    let page = h
        .controller
        .list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.entries.len(), 1);
    assert!(!page.next_token.is_empty());
    code(
        h.controller
            .list_volumes(ListVolumesRequest {
                max_entries: 1,
                starting_token: "x".into(),
            })
            .await,
        Code::Aborted,
    );

    // Undo everything, twice: each call is idempotent and leaves no mount behind.
    for _ in 0..2 {
        for target in [&t1, &t2] {
            h.node
                .node_unpublish_volume(unpublish_request(&created.volume_id, target))
                .await
                .expect("unpublish");
        }
        h.node
            .node_unstage_volume(unstage_request(&created.volume_id, &staging))
            .await
            .expect("unstage");
    }
    assert!(!t1.exists() && !t2.exists());
    assert!(!tarbox_fuse::is_mount_point(&staging));
    for v in [&created, &a, &b, &raced] {
        for _ in 0..2 {
            h.controller
                .delete_volume(delete_request(&v.volume_id))
                .await
                .expect("delete");
        }
    }
    code(
        h.controller
            .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: created.volume_id.clone(),
                volume_capabilities: vec![cap],
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    // A deleted volume's name can be used again at once (csi-sanity reuses names in one run).
    let again = h
        .controller
        .create_volume(create_request(&name, MIB, &params))
        .await
        .expect("the name of a deleted volume")
        .into_inner()
        .volume
        .expect("volume");
    assert_ne!(again.volume_id, created.volume_id);
    h.controller
        .delete_volume(delete_request(&again.volume_id))
        .await
        .expect("delete");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_lifecycle_on_memory() {
    if fuse_available() {
        lifecycle("memory://").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_lifecycle_on_postgres() {
    if !fuse_available() {
        return;
    }
    lifecycle(&postgres_url()).await;
}

/// Files written by processes in two pods' cgroups (v1 and v2 naming) are audited with the pod,
/// namespace and service account that NodePublishVolume received.
async fn pods_are_named(url: &str) {
    let mut h = Harness::start(url).await;
    let volume = h
        .controller
        .create_volume(create_request(&format!("pvc-pods-{}", h.tag()), MIB, &[]))
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
    let pods = [
        (
            format!("{n:08x}-0000-4000-8000-000000000001"),
            "trainer-0",
            "trainer",
            h.path("pod-trainer"),
        ),
        (
            format!("{n:08x}-0000-4000-8000-000000000002"),
            "eval-0",
            "evaluator",
            h.path("pod-eval"),
        ),
    ];
    for (uid, name, sa, target) in &pods {
        let pod = PodInfo {
            uid,
            namespace: "ml",
            name,
            service_account: sa,
        };
        h.node
            .node_publish_volume(pod.publish_request(&volume, &staging, target))
            .await
            .expect("publish");
    }
    let (trainer, eval) = (&pods[0], &pods[1]);
    let (t_script, e_script) = (
        format!("echo weights > {}/from-trainer", trainer.3.display()),
        format!("echo scores > {}/from-eval", eval.3.display()),
    );
    let (t_uid, e_uid) = (trainer.0.clone(), eval.0.clone());
    tokio::task::spawn_blocking(move || {
        PodCgroup::v1(&t_uid).run(&t_script);
        PodCgroup::v2(&e_uid).run(&e_script);
    })
    .await
    .expect("writers");
    // A process in no pod is in no pod's record.
    write(trainer.3.join("from-host"), b"x".to_vec())
        .await
        .expect("host write");

    // The servers write their audit trail before they stop.
    for (_, _, _, target) in &pods {
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
    for (path, pod, sa) in [
        ("/from-trainer", "ml/trainer-0", "trainer"),
        ("/from-eval", "ml/eval-0", "evaluator"),
    ] {
        // This volume's events only: other tests (and earlier runs) share the database and
        // the pod names.
        let filter = AuditFilter {
            tenant: volume.volume_context.get(CONTEXT_TENANT).cloned(),
            pod: Some(pod.to_string()),
            limit: 1000,
            ..AuditFilter::default()
        };
        let events = h.engine.audit_query(&filter).await.expect("query");
        let create = events
            .iter()
            .find(|e| e.op == AuditOp::Create)
            .unwrap_or_else(|| panic!("no create by {pod}: {events:?}"));
        assert_eq!(create.path.as_deref(), Some(path));
        assert_eq!(
            create.pod.as_ref().map(|p| p.service_account.as_str()),
            Some(sa)
        );
        assert!(
            events
                .iter()
                .all(|e| e.path.as_deref() != Some("/from-host"))
        );
    }
    h.controller
        .delete_volume(delete_request(&volume.volume_id))
        .await
        .expect("delete");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_named_in_the_audit_trail_on_memory() {
    if fuse_available() {
        pods_are_named("memory://").await;
    }
}

/// With PostgreSQL the FUSE server is its own process, which learns the pods from the publishes
/// the plugin records in the state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_named_in_the_audit_trail_on_postgres() {
    if fuse_available() {
        pods_are_named(&postgres_url()).await;
    }
}

/// A StorageClass with `dataStore` puts the volume's file data in that store: a pod's fsynced
/// file is there as objects and reads back whole; the same volume name with another store is
/// another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_keeps_its_data_in_its_data_store() {
    if !fuse_available() {
        return;
    }
    let mut h = Harness::start(&postgres_url()).await;
    let tag = h.tag();
    let blocks = h.path("blocks");
    let store = format!("file://{}", blocks.display());
    let name = format!("pvc-{tag}-store");
    let params = [("dataStore", store.as_str())];
    let volume = h
        .controller
        .create_volume(create_request(&name, 64 * MIB, &params))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    code(
        h.controller
            .create_volume(create_request(&name, 64 * MIB, &[]))
            .await,
        Code::AlreadyExists,
    );
    code(
        h.controller
            .create_volume(create_request(
                &name,
                64 * MIB,
                &[("dataStore", "file://x")],
            ))
            .await,
        Code::InvalidArgument,
    );

    let pod = h.mount(&volume, "pod").await;
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let data: Vec<u8> = (0..900_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    write(pod.join("weights.bin"), data.clone())
        .await
        .expect("write");
    let objects = walkdir(&blocks);
    assert_eq!(
        objects, 4,
        "900 kB in 256 KiB blocks, as objects in the store"
    );
    let back = tokio::fs::read(pod.join("weights.bin"))
        .await
        .expect("read");
    assert!(back == data, "the file reads back whole");
    h.unmount(&volume, "pod").await;
    h.controller
        .delete_volume(delete_request(&volume.volume_id))
        .await
        .expect("delete");
    h.stop().await;
}

/// Files under `dir`, at any depth, not counting temporary ones.
fn walkdir(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walkdir(&e.path())
            } else {
                usize::from(!e.file_name().to_string_lossy().starts_with('.'))
            }
        })
        .sum()
}
