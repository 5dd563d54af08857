//! Volumes made from something: CreateVolume from a snapshot (a restore) or from another volume
//! (a clone) gives a new tenant holding exactly that tree, which `Engine::clone_tenant` copies
//! inside the store: no file data passes through the driver. The new tenant records its source
//! in its owner string, so a retried CreateVolume can tell the same request from a different one
//! of the same name.

use std::collections::HashMap;

use tarbox_fs::{LayerId, LayerRef};
use tonic::Status;

use crate::controller::{Vol, status};
use crate::csi::VolumeContentSource;
use crate::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
use crate::server::Driver;
use crate::snapshots::parse_snapshot_id;

/// A resolved content source.
pub(crate) struct Source {
    /// `snapshot:<id>` or `volume:<id>`: what the new tenant's owner records.
    pub tag: String,
    /// The tenant to copy, and its checkpoint (`None`: its live tree).
    pub tenant: Vol,
    pub layer: Option<LayerRef>,
    /// The source's size: a smaller capacity cannot hold it.
    pub bytes: u64,
}

/// The content source a tag recorded by [`Source::tag`] names.
pub(crate) fn from_tag(tag: &str) -> Option<VolumeContentSource> {
    let r#type = match tag.split_once(':')? {
        ("snapshot", id) => Type::Snapshot(SnapshotSource {
            snapshot_id: id.to_string(),
        }),
        ("volume", id) => Type::Volume(VolumeSource {
            volume_id: id.to_string(),
        }),
        _ => return None,
    };
    Some(VolumeContentSource {
        r#type: Some(r#type),
    })
}

impl Driver {
    /// What a CreateVolume's content source names: `NOT_FOUND` when it names nothing of ours.
    pub(crate) async fn content_source(
        &self,
        source: &VolumeContentSource,
        secrets: &HashMap<String, String>,
    ) -> Result<Source, Status> {
        match &source.r#type {
            Some(Type::Snapshot(s)) => {
                let missing = || Status::not_found(format!("no snapshot {:?}", s.snapshot_id));
                let (volume_id, layer) = parse_snapshot_id(&s.snapshot_id).ok_or_else(missing)?;
                let tenant = self
                    .snapshot_holder(&volume_id, secrets)
                    .await?
                    .ok_or_else(missing)?;
                let tree = tenant
                    .engine
                    .layer_tree(&tenant.name)
                    .await
                    .map_err(status)?;
                let layer = tree
                    .get(LayerId(layer))
                    .filter(|l| l.name.is_some() && l.id != tree.head)
                    .ok_or_else(missing)?;
                Ok(Source {
                    tag: format!("snapshot:{}", s.snapshot_id),
                    bytes: layer.usage.map_or(0, |u| u.bytes),
                    layer: Some(LayerRef::Id(layer.id)),
                    tenant,
                })
            }
            Some(Type::Volume(v)) => {
                let tenant = self
                    .volume(&v.volume_id, secrets)
                    .await?
                    .ok_or_else(|| Status::not_found(format!("no volume {:?}", v.volume_id)))?;
                Ok(Source {
                    tag: format!("volume:{}", v.volume_id),
                    bytes: tenant.quota.bytes.unwrap_or(tenant.usage.bytes),
                    layer: None,
                    tenant,
                })
            }
            None => Err(Status::invalid_argument(
                "the volume content source names neither a snapshot nor a volume",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_their_source() {
        let Some(VolumeContentSource {
            r#type: Some(Type::Snapshot(s)),
        }) = from_tag("snapshot:4-7")
        else {
            panic!("a snapshot tag");
        };
        assert_eq!(s.snapshot_id, "4-7");
        let Some(VolumeContentSource {
            r#type: Some(Type::Volume(v)),
        }) = from_tag("volume:12")
        else {
            panic!("a volume tag");
        };
        assert_eq!(v.volume_id, "12");
        assert!(from_tag("other:1").is_none());
        assert!(from_tag("nothing").is_none());
    }
}
