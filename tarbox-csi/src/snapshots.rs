//! Snapshots are checkpoints. CreateSnapshot checkpoints the source volume's tenant under the
//! snapshot's name (copying nothing, so it is ready at once); its size is the tenant's usage at
//! that moment; DeleteSnapshot drops the checkpoint, folding it into the layers built on it so no
//! other snapshot and not the live tree changes. The snapshot id is `<volume id>-<layer id>`.
//!
//! Deleting a volume retires its tenant while snapshots of it remain: they stay listed and
//! restorable, and the tenant's data goes with the last of them.
//!
//! A snapshot holds what the volume's mounts had written to the store when it was taken: writes a
//! pod has not yet flushed (or closed, or fsynced) on a node are not in it, as with a crash.

use tarbox_fs::{Caller, FsError, LayerRecord, LayerRef, Layers, TenantState, validate_layer_name};
use tonic::Status;
use tracing::info;

use crate::controller::{Vol, page, status};
use crate::csi::{
    CreateSnapshotRequest, DeleteSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    Snapshot, list_snapshots_response,
};
use crate::databases::VolumeId;
use crate::server::Driver;

/// Prefix of parameter keys the snapshotter sidecar adds: accepted as is.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

fn snapshot_id(volume: &Vol, layer: &LayerRecord) -> String {
    format!("{}-{}", volume.volume_id(), layer.id.0)
}

/// `(volume id, layer id)` of a snapshot id; `None` for ids this driver never made.
pub(crate) fn parse_snapshot_id(id: &str) -> Option<(String, i64)> {
    let (volume, layer) = id.split_once('-')?;
    VolumeId::parse(volume)?;
    let layer: i64 = layer.parse().ok()?;
    // Only the canonical form, as the driver writes it.
    (layer.to_string() == id[volume.len() + 1..]).then(|| (volume.to_string(), layer))
}

fn snapshot_of(volume: &Vol, layer: &LayerRecord) -> Snapshot {
    let at = layer.frozen_at.unwrap_or(layer.created_at);
    let (seconds, nanos) = at.secs_nanos();
    Snapshot {
        size_bytes: layer
            .usage
            .map_or(0, |u| i64::try_from(u.bytes).unwrap_or(i64::MAX)),
        snapshot_id: snapshot_id(volume, layer),
        source_volume_id: volume.volume_id(),
        creation_time: Some(prost_types::Timestamp {
            seconds,
            nanos: i32::try_from(nanos).unwrap_or(0),
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

impl Driver {
    /// The history of a volume's tenant, administered as this driver.
    async fn layers_of(&self, volume: &Vol) -> Result<Layers, Status> {
        let v = volume.engine.volume(&volume.name).await.map_err(status)?;
        Ok(v.layers().acting_as(Caller::this_process()))
    }

    /// Every snapshot (named checkpoint) of `volume`, live or retired, oldest first.
    /// A volume deleted since it was listed has none.
    async fn snapshots_of(&self, volume: &Vol) -> Result<Vec<Snapshot>, Status> {
        let tree = match volume.engine.layer_tree(&volume.name).await {
            Ok(tree) => tree,
            Err(FsError::TenantNotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(status(e)),
        };
        Ok(tree
            .layers
            .iter()
            .filter(|l| l.name.is_some() && l.id != tree.head)
            .map(|l| snapshot_of(volume, l))
            .collect())
    }

    /// The live volumes, and every snapshot's id and size (for the gauges).
    pub(crate) async fn volumes_and_snapshots(
        &self,
    ) -> Result<(Vec<Vol>, Vec<(String, u64)>), Status> {
        let holders = [TenantState::Active, TenantState::Retired];
        let mut volumes = Vec::new();
        let mut snapshots = Vec::new();
        for tenant in self.driver_tenants(&holders).await? {
            for s in self.snapshots_of(&tenant).await? {
                snapshots.push((s.snapshot_id, u64::try_from(s.size_bytes).unwrap_or(0)));
            }
            if tenant.state == TenantState::Active {
                volumes.push(tenant);
            }
        }
        Ok((volumes, snapshots))
    }

    pub(crate) async fn create_snapshot(
        &self,
        req: CreateSnapshotRequest,
    ) -> Result<Snapshot, Status> {
        if req.name.is_empty() {
            return Err(Status::invalid_argument("the snapshot name is missing"));
        }
        if req.source_volume_id.is_empty() {
            return Err(Status::invalid_argument("the source volume id is missing"));
        }
        if let Some(key) = req
            .parameters
            .keys()
            .find(|k| !k.starts_with(SIDECAR_PREFIX))
        {
            return Err(Status::invalid_argument(format!(
                "unknown snapshot parameter {key:?} (snapshots take none)"
            )));
        }
        validate_layer_name(&req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(volume) = self.volume(&req.source_volume_id, &req.secrets).await? else {
            return Err(Status::not_found(format!(
                "no volume {:?}",
                req.source_volume_id
            )));
        };
        let wanted = LayerRef::Name(req.name.clone());
        let layers = self.layers_of(&volume).await?;
        if let Some(layer) = layers.tree().await.map_err(status)?.find(&wanted) {
            return Ok(snapshot_of(&volume, layer));
        }
        // Snapshot names are unique across the driver, as the spec wants them.
        let holders = [TenantState::Active, TenantState::Retired];
        for other in self.driver_tenants(&holders).await? {
            if other.id == volume.id {
                continue;
            }
            let tree = match other.engine.layer_tree(&other.name).await {
                Ok(tree) => tree,
                // Deleted since the listing: it holds no snapshot any more.
                Err(FsError::TenantNotFound(_)) => continue,
                Err(e) => return Err(status(e)),
            };
            if tree.find(&wanted).is_some() {
                return Err(Status::already_exists(format!(
                    "snapshot {:?} exists for another volume ({})",
                    req.name,
                    other.volume_id()
                )));
            }
        }
        let layer = match layers.checkpoint(&req.name, "CSI snapshot").await {
            Ok(layer) => layer,
            // A retry racing the first call: the first one made it.
            Err(FsError::LayerExists(_)) => layers
                .tree()
                .await
                .map_err(status)?
                .find(&wanted)
                .cloned()
                .ok_or_else(|| Status::aborted("the snapshot vanished while being created"))?,
            Err(e) => return Err(status(e)),
        };
        info!(
            volume = volume.volume_id(),
            snapshot = req.name,
            layer = layer.id.0,
            "snapshot created"
        );
        Ok(snapshot_of(&volume, &layer))
    }

    pub(crate) async fn delete_snapshot(&self, req: DeleteSnapshotRequest) -> Result<(), Status> {
        if req.snapshot_id.is_empty() {
            return Err(Status::invalid_argument("the snapshot id is missing"));
        }
        let Some((volume_id, layer)) = parse_snapshot_id(&req.snapshot_id) else {
            return Ok(());
        };
        let Some(volume) = self.snapshot_holder(&volume_id, &req.secrets).await? else {
            return Ok(());
        };
        let target = LayerRef::Id(tarbox_fs::LayerId(layer));
        let tree = volume
            .engine
            .layer_tree(&volume.name)
            .await
            .map_err(status)?;
        match tree.find(&target) {
            Some(l) if l.name.is_some() && l.id != tree.head => {}
            _ => return Ok(()),
        }
        let dropped = if volume.state == TenantState::Retired {
            (volume.engine)
                .drop_retired_checkpoint(&volume.name, &target)
                .await
        } else {
            self.layers_of(&volume)
                .await?
                .drop_layer(&target, true)
                .await
        };
        match dropped {
            Ok(()) | Err(FsError::LayerNotFound(_)) => {
                info!(snapshot = req.snapshot_id, "snapshot deleted");
                Ok(())
            }
            Err(e) => Err(status(e)),
        }
    }

    pub(crate) async fn list_snapshots(
        &self,
        req: ListSnapshotsRequest,
    ) -> Result<ListSnapshotsResponse, Status> {
        let volumes: Vec<Vol> = if !req.snapshot_id.is_empty() {
            match parse_snapshot_id(&req.snapshot_id) {
                Some((v, _)) => (self.snapshot_holder(&v, &req.secrets).await?)
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            }
        } else if !req.source_volume_id.is_empty() {
            (self
                .snapshot_holder(&req.source_volume_id, &req.secrets)
                .await?)
                .into_iter()
                .collect()
        } else {
            (self.driver_tenants(&[TenantState::Active, TenantState::Retired])).await?
        };
        let mut all = Vec::new();
        for volume in &volumes {
            all.extend(self.snapshots_of(volume).await?);
        }
        if !req.snapshot_id.is_empty() {
            all.retain(|s| s.snapshot_id == req.snapshot_id);
        }
        let (snapshots, next_token) = page(all, &req.starting_token, req.max_entries)?;
        Ok(ListSnapshotsResponse {
            entries: snapshots
                .into_iter()
                .map(|s| list_snapshots_response::Entry { snapshot: Some(s) })
                .collect(),
            next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_snapshot_id;

    #[test]
    fn snapshot_ids_name_volume_and_layer() {
        assert_eq!(parse_snapshot_id("42-17"), Some(("42".into(), 17)));
        assert_eq!(parse_snapshot_id("42"), None);
        assert_eq!(parse_snapshot_id("x-1"), None);
        assert_eq!(parse_snapshot_id("1-y"), None);
        assert_eq!(parse_snapshot_id("7-05"), None);
        assert_eq!(parse_snapshot_id("07-5"), None);
    }
}
