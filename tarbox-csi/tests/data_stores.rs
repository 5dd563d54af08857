//! A volume whose data lives in S3 with the keys from the StorageClass's secrets (not the node's
//! environment: the test server accepts only its own keys), served by a FUSE server process
//! whose disk cache fills on a cold read and goes when the volume is unstaged.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tarbox_csi::csi::*;
use tarbox_csi::{SECRET_ACCESS_KEY_ID, SECRET_SECRET_ACCESS_KEY};
use tarbox_tests::s3_server::{KEY, S3Server, SECRET};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_on_s3_uses_its_secrets_keys_and_a_disk_cache() {
    if !fuse_available() {
        return;
    }
    let Some(binary) = S3Server::binary() else {
        eprintln!("SKIPPED: no s3s-fs (set TARBOX_TEST_S3_SERVER or install it)");
        return;
    };
    let server = S3Server::start(binary);
    let mut h = Harness::start(&postgres_url()).await;
    let tag = h.tag();
    let store = server.url();
    let params = [("dataStore", store.as_str()), ("cacheSize", "64Mi")];
    let secrets = HashMap::from([
        (SECRET_ACCESS_KEY_ID.to_string(), KEY.to_string()),
        (SECRET_SECRET_ACCESS_KEY.to_string(), SECRET.to_string()),
    ]);

    let half = HashMap::from([(SECRET_ACCESS_KEY_ID.to_string(), KEY.to_string())]);
    let msg = code(
        h.controller
            .create_volume(CreateVolumeRequest {
                secrets: half,
                ..create_request(&format!("pvc-{tag}-half"), 64 * MIB, &params)
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains(SECRET_SECRET_ACCESS_KEY), "{msg}");

    let volume = h
        .controller
        .create_volume(CreateVolumeRequest {
            secrets: secrets.clone(),
            ..create_request(&format!("pvc-{tag}-s3"), 64 * MIB, &params)
        })
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");

    let staging = h.path("staging");
    let target = h.path("pod");
    let stage = NodeStageVolumeRequest {
        secrets: secrets.clone(),
        ..stage_request(&volume, &staging)
    };
    h.node
        .node_stage_volume(stage.clone())
        .await
        .expect("stage");
    h.node
        .node_publish_volume(publish_request(&volume, &staging, &target))
        .await
        .expect("publish");
    let data = tarbox_tests::noise(900_000, 11);
    write(target.join("weights.bin"), data.clone())
        .await
        .expect("write through the pod's mount");
    assert_eq!(
        server.objects(),
        4,
        "900 kB in 256 KiB blocks, stored with the secret's keys"
    );
    let unpublish = unpublish_request(&volume.volume_id, &target);
    let unstage = unstage_request(&volume.volume_id, &staging);
    h.node
        .node_unpublish_volume(unpublish.clone())
        .await
        .expect("unpublish");
    h.node
        .node_unstage_volume(unstage.clone())
        .await
        .expect("unstage");

    // Staged again: a new server, cold; a read fills its disk cache.
    h.node.node_stage_volume(stage).await.expect("stage again");
    h.node
        .node_publish_volume(publish_request(&volume, &staging, &target))
        .await
        .expect("publish again");
    let back = tokio::fs::read(target.join("weights.bin"))
        .await
        .expect("read");
    assert!(back == data, "the file reads back whole from S3");
    let cache = h
        .path("state")
        .join("volumes")
        .join(format!("{}.cache", volume.volume_id));
    let deadline = Instant::now() + Duration::from_secs(30);
    while files(&cache) < 4 {
        assert!(Instant::now() < deadline, "the disk cache is never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.node
        .node_unpublish_volume(unpublish)
        .await
        .expect("unpublish");
    h.node.node_unstage_volume(unstage).await.expect("unstage");
    assert!(!cache.exists(), "unstaging removes the volume's disk cache");

    h.controller
        .delete_volume(DeleteVolumeRequest {
            secrets,
            ..delete_request(&volume.volume_id)
        })
        .await
        .expect("delete");
    // Purged while its store is up (the purger would meet a server this test has stopped).
    let tenant = &volume.volume_context[tarbox_csi::CONTEXT_TENANT];
    h.engine.purge_tenant(tenant).await.expect("purge");
    assert_eq!(server.objects(), 0, "a purge empties the volume's prefix");
    h.stop().await;
}

fn files(dir: &Path) -> usize {
    tarbox_tests::files_under(dir).len()
}
