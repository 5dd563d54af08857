//! The Node service. NodeStageVolume runs one FUSE server per volume per node at the staging path
//! (a [`TenantMount`], the same mount `tarbox mount` runs); NodePublishVolume bind-mounts it into
//! each pod's target, read-only when asked; unpublish and unstage undo exactly that. Every call is
//! idempotent: a second call for what is already done succeeds and changes nothing.
//!
//! Every request is audited with the pod that made it (see `pods`): the FUSE server resolves a
//! request's pid through its cgroup to the pod that NodePublishVolume registered.
//!
//! The FUSE servers live in the plugin process: restarting the plugin ends them, and the next
//! call that touches such a volume finds it unstaged. Running them apart from the plugin (so a
//! restart loses no mount) is the next step of the driver.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tarbox_fs::VolumeOptions;
use tarbox_fuse::{MountOptions, MountSpec, TenantMount, is_mount_point};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::CONTEXT_TENANT;
use crate::controller::{check_capabilities, status};
use crate::csi::node_server::Node;
use crate::csi::node_service_capability::{Rpc, rpc};
use crate::csi::volume_usage::Unit;
use crate::csi::*;
use crate::pods::CgroupPods;
use crate::server::Driver;

/// A volume staged on this node.
#[derive(Debug)]
pub(crate) struct Staged {
    path: PathBuf,
    tenant: String,
    mount: TenantMount,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// Run `mount`/`umount` with `args`; its stderr becomes the error.
fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), Status> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Status::internal(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Status::internal(format!(
            "{program} {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Driver {
    /// Unmount every volume this process staged (at shutdown).
    pub(crate) async fn unstage_all(&self) {
        let staged: Vec<Staged> = self.staged().lock().await.drain().map(|(_, s)| s).collect();
        for s in staged {
            if let Err(e) = s.mount.unmount().await {
                warn!(path = %s.path.display(), error = %e, "cannot unmount a staged volume");
            }
        }
    }
}

fn capability(rpc: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(Rpc {
            r#type: rpc as i32,
        })),
    }
}

#[tonic::async_trait]
impl Node for Driver {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        if req.staging_target_path.is_empty() {
            return Err(invalid("the staging target path is missing"));
        }
        let Some(cap) = req.volume_capability.as_ref() else {
            return Err(invalid("the volume capability is missing"));
        };
        check_capabilities(std::slice::from_ref(cap)).map_err(invalid)?;
        let path = PathBuf::from(&req.staging_target_path);
        let mut staged = self.staged().lock().await;
        if let Some(s) = staged.get(&req.volume_id) {
            if s.path == path {
                return Ok(Response::new(NodeStageVolumeResponse {}));
            }
            return Err(Status::failed_precondition(format!(
                "volume {} is already staged at {}",
                req.volume_id,
                s.path.display()
            )));
        }
        let Some(info) = self.volume(&req.volume_id).await? else {
            return Err(Status::not_found(format!("no volume {:?}", req.volume_id)));
        };
        if let Some(t) = req.volume_context.get(CONTEXT_TENANT) {
            if *t != info.name {
                return Err(invalid(format!(
                    "volume {} is tenant {:?}, not {t:?}",
                    req.volume_id, info.name
                )));
            }
        }
        std::fs::create_dir_all(&path)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", path.display())))?;
        if is_mount_point(&path) {
            // Left by a plugin that ended without unstaging: its server is gone.
            let _ = run("umount", &["-l".as_ref(), path.as_os_str()]);
        }
        let spec = MountSpec {
            tenant: info.name.clone(),
            create: false,
            volume: VolumeOptions {
                mount: Some(format!("csi:{}:{}", self.node_id(), req.volume_id)),
                ..VolumeOptions::default()
            },
            mount: MountOptions {
                allow_other: true,
                pods: Some(Arc::new(CgroupPods::new(self.pods().clone()))),
                ..MountOptions::default()
            },
            control_dir: true,
            auto_checkpoint: true,
        };
        let mount = TenantMount::start(self.engine(), &path, spec)
            .await
            .map_err(|e| Status::internal(format!("cannot mount volume {}: {e}", req.volume_id)))?;
        info!(volume = req.volume_id, tenant = %info.name, path = %path.display(), "staged");
        staged.insert(
            req.volume_id,
            Staged {
                path,
                tenant: info.name,
                mount,
            },
        );
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        if req.staging_target_path.is_empty() {
            return Err(invalid("the staging target path is missing"));
        }
        let path = PathBuf::from(&req.staging_target_path);
        let taken = {
            let mut staged = self.staged().lock().await;
            match staged.get(&req.volume_id) {
                Some(s) if s.path == path => staged.remove(&req.volume_id),
                _ => None,
            }
        };
        match taken {
            Some(s) => {
                s.mount.unmount().await.map_err(|e| {
                    Status::internal(format!("cannot unmount {}: {e}", path.display()))
                })?
            }
            // Not ours (any more): a mount left there by an ended server goes too.
            None if is_mount_point(&path) => run("umount", &["-l".as_ref(), path.as_os_str()])?,
            None => {}
        }
        info!(volume = req.volume_id, path = %path.display(), "unstaged");
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        if req.staging_target_path.is_empty() {
            return Err(invalid("the staging target path is missing"));
        }
        if req.target_path.is_empty() {
            return Err(invalid("the target path is missing"));
        }
        let Some(cap) = req.volume_capability.as_ref() else {
            return Err(invalid("the volume capability is missing"));
        };
        check_capabilities(std::slice::from_ref(cap)).map_err(invalid)?;
        let staging = PathBuf::from(&req.staging_target_path);
        let staged = matches!(
            self.staged().lock().await.get(&req.volume_id),
            Some(s) if s.path == staging
        );
        if !staged {
            return Err(Status::failed_precondition(format!(
                "volume {} is not staged at {}",
                req.volume_id,
                staging.display()
            )));
        }
        let target = PathBuf::from(&req.target_path);
        std::fs::create_dir_all(&target)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", target.display())))?;
        self.pods().publish(&target, &req.volume_context);
        if is_mount_point(&target) {
            return Ok(Response::new(NodePublishVolumeResponse {}));
        }
        run(
            "mount",
            &["--bind".as_ref(), staging.as_os_str(), target.as_os_str()],
        )?;
        if req.readonly {
            if let Err(e) = run(
                "mount",
                &[
                    "-o".as_ref(),
                    "remount,bind,ro".as_ref(),
                    target.as_os_str(),
                ],
            ) {
                // Never leave a writable mount where a read-only one was asked for.
                let _ = run("umount", &[target.as_os_str()]);
                return Err(e);
            }
        }
        info!(volume = req.volume_id, target = %target.display(), readonly = req.readonly, "published");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        if req.target_path.is_empty() {
            return Err(invalid("the target path is missing"));
        }
        let target = PathBuf::from(&req.target_path);
        if is_mount_point(&target) {
            run("umount", &[target.as_os_str()])?;
        }
        self.pods().unpublish(&target);
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "cannot remove {}: {e}",
                    target.display()
                )));
            }
        }
        info!(volume = req.volume_id, target = %target.display(), "unpublished");
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    /// Bytes and inodes of the volume against its quota, as the engine counts them.
    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        if req.volume_path.is_empty() {
            return Err(invalid("the volume path is missing"));
        }
        let path = Path::new(&req.volume_path);
        if !path.exists() || !is_mount_point(path) {
            return Err(Status::not_found(format!(
                "volume {} is not mounted at {}",
                req.volume_id, req.volume_path
            )));
        }
        let tenant = {
            let staged = self.staged().lock().await;
            match staged.get(&req.volume_id) {
                Some(s) => s.tenant.clone(),
                None => {
                    return Err(Status::not_found(format!(
                        "volume {} is not staged on this node",
                        req.volume_id
                    )));
                }
            }
        };
        let info = self.engine().tenant_info(&tenant).await.map_err(status)?;
        let usage = |used: u64, limit: Option<u64>, unit: Unit| {
            let total = limit.unwrap_or(0);
            VolumeUsage {
                available: i64::try_from(total.saturating_sub(used)).unwrap_or(i64::MAX),
                total: i64::try_from(total).unwrap_or(i64::MAX),
                used: i64::try_from(used).unwrap_or(i64::MAX),
                unit: unit as i32,
            }
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: vec![
                usage(info.usage.bytes, info.quota.bytes, Unit::Bytes),
                usage(info.usage.inodes, info.quota.inodes, Unit::Inodes),
            ],
            volume_condition: None,
        }))
    }

    async fn node_expand_volume(
        &self,
        _request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "expansion is online in the controller; nodes have nothing to do",
        ))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                capability(rpc::Type::StageUnstageVolume),
                capability(rpc::Type::GetVolumeStats),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id().to_string(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
