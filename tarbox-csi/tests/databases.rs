//! A volume in a database named by the StorageClass's secrets rather than the driver's own:
//! its id carries the database's key, every call reaches it through its secret, a driver that
//! was never given the secret refuses it clearly, and the URL is refused as a plain parameter.
//! The second database is the test database under another URL (another key, the same server).

mod common;

use std::collections::HashMap;

use common::*;
use tarbox_csi::SECRET_DATABASE_URL;
use tarbox_csi::csi::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_names_the_volumes_database() {
    if !fuse_available() {
        return;
    }
    let url = postgres_url();
    let other = format!("{url}?application_name=tarbox-second");
    let secrets = HashMap::from([(SECRET_DATABASE_URL.to_string(), other.clone())]);
    let mut h = Harness::start(&url).await;
    let tag = h.tag();

    let msg = code(
        h.controller
            .create_volume(create_request(
                &format!("pvc-{tag}-param"),
                MIB,
                &[(SECRET_DATABASE_URL, other.as_str())],
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        msg.contains("secret") && !msg.contains("postgres://"),
        "{msg}"
    );

    let volume = h
        .controller
        .create_volume(CreateVolumeRequest {
            secrets: secrets.clone(),
            ..create_request(&format!("pvc-{tag}-db2"), 4 * MIB, &[])
        })
        .await
        .expect("create in the secret's database")
        .into_inner()
        .volume
        .expect("volume");
    let (_, key) = volume
        .volume_id
        .split_once('.')
        .expect("the id names the database");
    assert_eq!(key.len(), 12);
    assert!(!volume.volume_id.contains("postgres"));

    // The node needs the URL too (its FUSE server opens the database itself).
    let staging = h.path("staging");
    let target = h.path("pod");
    let mut stage = stage_request(&volume, &staging);
    code(
        h.node.node_stage_volume(stage.clone()).await,
        Code::FailedPrecondition,
    );
    stage.secrets = secrets.clone();
    h.node
        .node_stage_volume(stage)
        .await
        .expect("stage with the secret");
    h.node
        .node_publish_volume(publish_request(&volume, &staging, &target))
        .await
        .expect("publish");
    write(target.join("f"), b"in the second database".to_vec())
        .await
        .expect("write");
    let snapshot = h
        .controller
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: volume.volume_id.clone(),
            name: format!("snap-{tag}-db2"),
            secrets: secrets.clone(),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert!(snapshot.snapshot_id.starts_with(&volume.volume_id));
    h.node
        .node_unpublish_volume(unpublish_request(&volume.volume_id, &target))
        .await
        .expect("unpublish");
    h.node
        .node_unstage_volume(unstage_request(&volume.volume_id, &staging))
        .await
        .expect("unstage");
    h.stop().await;

    // A driver that was never given the secret says what it needs; with it, it deletes.
    let mut fresh = Harness::start(&url).await;
    let delete = delete_request(&volume.volume_id);
    let msg = code(
        fresh.controller.delete_volume(delete.clone()).await,
        Code::FailedPrecondition,
    );
    assert!(msg.contains(SECRET_DATABASE_URL), "{msg}");
    fresh
        .controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id.clone(),
            secrets: secrets.clone(),
        })
        .await
        .expect("delete the snapshot");
    fresh
        .controller
        .delete_volume(DeleteVolumeRequest { secrets, ..delete })
        .await
        .expect("delete with the secret");
    fresh.stop().await;
}
