//! The Node service. NodeStageVolume runs one FUSE server per volume per node at the staging path
//! (the mount `tarbox mount` runs, see `volume_server`); NodePublishVolume bind-mounts it into
//! each pod's target, read-only when asked; unpublish and unstage undo exactly that. Every call is
//! idempotent: a second call for what is already done succeeds and changes nothing.
//!
//! What is staged and published is recorded in the state directory (`state`), and the FUSE
//! servers run apart from the plugin, started by the mounter (`mounter`) from those records: a
//! plugin killed or upgraded comes back, reads the records and finds every mount still served.
//! Only with the in-memory store, which no other process can see, do the servers run inside the
//! plugin (and end with it).
//!
//! Every request is audited with the pod that made it (see `pods`): the FUSE server resolves a
//! request's pid through its cgroup to the pod that NodePublishVolume recorded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tarbox_fuse::{TenantMount, is_mount_point};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::controller::{check_capabilities, status};
use crate::csi::node_server::Node;
use crate::csi::node_service_capability::{Rpc, rpc};
use crate::csi::volume_usage::Unit;
use crate::csi::*;
use crate::databases::SECRET_DATABASE_URL;
use crate::mounter::{self, detach};
use crate::pods::pod_of_context;
use crate::server::Driver;
use crate::state::{PublishRecord, VolumeRecord};
use crate::{CONTEXT_CACHE_BYTES, CONTEXT_MEMORY_CACHE_BYTES, CONTEXT_TENANT};

/// How long stage and unstage wait for the mounter to start or stop a server.
const SERVER_WAIT: Duration = Duration::from_secs(30);

/// Where the node's FUSE servers run.
#[derive(Debug)]
pub(crate) enum Servers {
    /// In the plugin's process, by volume id (the in-memory store): they end with it.
    InProcess(Mutex<HashMap<String, TenantMount>>),
    /// In their own processes, run by the mounter from the state directory.
    Mounter,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

fn state_error(e: std::io::Error) -> Status {
    Status::internal(format!("the node's state directory: {e}"))
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

/// Bind-mount `staging` at `target`, read-only when asked (never leaving a writable mount where
/// a read-only one was asked for).
pub(crate) fn bind(staging: &Path, target: &Path, readonly: bool) -> Result<(), Status> {
    run(
        "mount",
        &["--bind".as_ref(), staging.as_os_str(), target.as_os_str()],
    )?;
    if readonly {
        let remount = [
            "-o".as_ref(),
            "remount,bind,ro".as_ref(),
            target.as_os_str(),
        ];
        if let Err(e) = run("mount", &remount) {
            let _ = run("umount", &[target.as_os_str()]);
            return Err(e);
        }
    }
    Ok(())
}

/// Whether the FUSE server behind a mount answers (a dead one gives ENOTCONN).
fn answers(path: &Path) -> bool {
    is_mount_point(path) && std::fs::metadata(path).is_ok()
}

impl Driver {
    /// At shutdown: unmount the volumes served in this process. Servers run by the mounter
    /// keep running: that is their point.
    pub(crate) async fn unstage_all(&self) {
        let Servers::InProcess(mounts) = self.servers() else {
            return;
        };
        let mounts: Vec<(String, TenantMount)> = mounts.lock().await.drain().collect();
        for (volume, mount) in mounts {
            if let Err(e) = mount.unmount().await {
                warn!(volume, error = %e, "cannot unmount a staged volume");
            }
        }
    }

    fn record_mounts(&self, stage_seconds: Option<f64>) {
        let staged = self.state().volumes_staged().map_or(0, |v| v.len());
        crate::observe::record_mounts(self.node_id(), staged, stage_seconds);
    }

    /// Start serving a staged volume (or check that it is served), waiting until it answers.
    async fn serve_volume(&self, record: &VolumeRecord) -> Result<(), Status> {
        match self.servers() {
            Servers::InProcess(mounts) => {
                let mut mounts = mounts.lock().await;
                if mounts.contains_key(&record.volume_id) && answers(&record.staging_path) {
                    return Ok(());
                }
                if let Some(old) = mounts.remove(&record.volume_id) {
                    let _ = old.unmount().await;
                }
                let engine = (self.databases())
                    .for_url(record.database_url.as_deref())
                    .await?;
                let mount = crate::volume_server::start(&engine, record, self.state())
                    .await
                    .map_err(|e| {
                        Status::internal(format!("cannot mount volume {}: {e}", record.volume_id))
                    })?;
                mounts.insert(record.volume_id.clone(), mount);
                Ok(())
            }
            Servers::Mounter => self.wait_for(record, true).await,
        }
    }

    /// Stop serving an unstaged volume, waiting until its mount is gone.
    async fn unserve_volume(&self, record: &VolumeRecord) -> Result<(), Status> {
        match self.servers() {
            Servers::InProcess(mounts) => {
                let taken = mounts.lock().await.remove(&record.volume_id);
                if let Some(mount) = taken {
                    mount.unmount().await.map_err(|e| {
                        Status::internal(format!(
                            "cannot unmount {}: {e}",
                            record.staging_path.display()
                        ))
                    })?;
                }
                detach(&record.staging_path);
                Ok(())
            }
            Servers::Mounter => self.wait_for(record, false).await,
        }
    }

    /// Wait until the mounter has `record` served (`up`) or stopped.
    async fn wait_for(&self, record: &VolumeRecord, up: bool) -> Result<(), Status> {
        let deadline = Instant::now() + SERVER_WAIT;
        loop {
            let pid = self
                .state()
                .server_pid(&record.volume_id)
                .map_err(state_error)?;
            let running = pid.is_some_and(|p| mounter::serves(p, &record.volume_id));
            let done = if up {
                running && answers(&record.staging_path)
            } else {
                !running && !is_mount_point(&record.staging_path)
            };
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self
                    .state()
                    .log_path(&record.volume_id)
                    .ok()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(Status::deadline_exceeded(format!(
                    "the mounter did not {} volume {} within {}s (is the mounter running?); \
                     its server's last log lines: {}",
                    if up { "serve" } else { "stop serving" },
                    record.volume_id,
                    SERVER_WAIT.as_secs(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
        let _serial = self.node_lock().lock().await;
        if let Some(record) = self.state().volume(&req.volume_id).map_err(state_error)? {
            if record.staging_path != path {
                return Err(Status::failed_precondition(format!(
                    "volume {} is already staged at {}",
                    req.volume_id,
                    record.staging_path.display()
                )));
            }
            // Staged before (perhaps by a plugin since restarted): make sure it is served.
            self.serve_volume(&record).await?;
            return Ok(Response::new(NodeStageVolumeResponse {}));
        }
        let Some(info) = self.volume(&req.volume_id, &req.secrets).await? else {
            return Err(Status::not_found(format!("no volume {:?}", req.volume_id)));
        };
        // The FUSE server opens the volume's database itself: it needs its URL.
        let database_url =
            match &info.id.database {
                None => None,
                Some(key) => Some(req.secrets.get(SECRET_DATABASE_URL).cloned().ok_or_else(
                    || {
                        Status::failed_precondition(format!(
                            "volume {} lives in database {key}: NodeStageVolume needs its \
                     {SECRET_DATABASE_URL} (csi.storage.k8s.io/node-stage-secret-name)",
                            req.volume_id
                        ))
                    },
                )?),
            };
        if let Some(t) = req.volume_context.get(CONTEXT_TENANT) {
            if *t != info.name {
                return Err(invalid(format!(
                    "volume {} is tenant {:?}, not {t:?}",
                    req.volume_id, info.name
                )));
            }
        }
        let bytes = |key: &str| match req.volume_context.get(key) {
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                invalid(format!(
                    "volume context {key}={v:?} is not a number of bytes"
                ))
            }),
            None => Ok(None),
        };
        let cache_bytes = bytes(CONTEXT_CACHE_BYTES)?;
        let memory_cache_bytes = bytes(CONTEXT_MEMORY_CACHE_BYTES)?;
        let store_keys = crate::store_keys::from_secrets(&req.secrets)?;
        std::fs::create_dir_all(&path)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", path.display())))?;
        let record = VolumeRecord {
            volume_id: req.volume_id.clone(),
            tenant: info.name.clone(),
            staging_path: path.clone(),
            mount_name: format!("csi:{}:{}", self.node_id(), req.volume_id),
            cache_bytes,
            memory_cache_bytes,
            store_keys,
            database_url,
        };
        self.state().put_volume(&record).map_err(state_error)?;
        let started = Instant::now();
        if let Err(e) = self.serve_volume(&record).await {
            // Not staged after all: the mounter stops whatever it started.
            let _ = self.state().remove_volume(&req.volume_id);
            return Err(e);
        }
        self.record_mounts(Some(started.elapsed().as_secs_f64()));
        info!(volume = req.volume_id, tenant = %info.name, path = %path.display(), "staged");
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
        let _serial = self.node_lock().lock().await;
        match self.state().volume(&req.volume_id).map_err(state_error)? {
            Some(record) if record.staging_path == path => {
                self.state()
                    .remove_volume(&req.volume_id)
                    .map_err(state_error)?;
                self.unserve_volume(&record).await?;
                // Its cached blocks are of no use any more (a later stage fills them again).
                if let Ok(cache) = self.state().cache_dir(&req.volume_id) {
                    if let Err(e) = std::fs::remove_dir_all(&cache) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            warn!(volume = req.volume_id, error = %e, "cannot remove the volume's block cache");
                        }
                    }
                }
            }
            // Not ours (any more): a mount left there by an ended server goes too.
            _ => detach(&path),
        }
        self.record_mounts(None);
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
        let _serial = self.node_lock().lock().await;
        let record = self.state().volume(&req.volume_id).map_err(state_error)?;
        if record.is_none_or(|r| r.staging_path != staging) {
            return Err(Status::failed_precondition(format!(
                "volume {} is not staged at {}",
                req.volume_id,
                staging.display()
            )));
        }
        let target = PathBuf::from(&req.target_path);
        std::fs::create_dir_all(&target)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", target.display())))?;
        let publish = PublishRecord {
            volume_id: req.volume_id.clone(),
            target: target.clone(),
            readonly: req.readonly,
            pod: pod_of_context(&req.volume_context),
        };
        self.state().put_publish(&publish).map_err(state_error)?;
        if answers(&target) {
            return Ok(Response::new(NodePublishVolumeResponse {}));
        }
        // A bind of a server that died: bind the live one instead.
        detach(&target);
        bind(&staging, &target, req.readonly)?;
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
        let _serial = self.node_lock().lock().await;
        if is_mount_point(&target) && run("umount", &[target.as_os_str()]).is_err() {
            // Busy or its server is gone: detach it; processes inside keep their view.
            detach(&target);
        }
        self.state().remove_publish(&target).map_err(state_error)?;
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
        if !is_mount_point(path) {
            return Err(Status::not_found(format!(
                "volume {} is not mounted at {}",
                req.volume_id, req.volume_path
            )));
        }
        let Some(record) = self.state().volume(&req.volume_id).map_err(state_error)? else {
            return Err(Status::not_found(format!(
                "volume {} is not staged on this node",
                req.volume_id
            )));
        };
        let engine = (self.databases())
            .for_url(record.database_url.as_deref())
            .await?;
        let info = engine.tenant_info(&record.tenant).await.map_err(status)?;
        let condition = if answers(path) {
            VolumeCondition {
                abnormal: false,
                message: "served".into(),
            }
        } else {
            VolumeCondition {
                abnormal: true,
                message: "the volume's FUSE server is gone; the mounter is repairing it".into(),
            }
        };
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
            volume_condition: Some(condition),
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
                capability(rpc::Type::VolumeCondition),
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
