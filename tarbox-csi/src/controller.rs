//! The Controller service: a volume is a tenant. Creating one creates the tenant (named after
//! its PVC, see `naming`) with a byte quota from the requested capacity, or clones the tenant of
//! a snapshot or volume (`content`); expanding raises the quota online; deleting retires the
//! tenant while snapshots of it remain and marks it deleted otherwise (the controller purges it in
//! the background). The volume id is the tenant's number, so every call finds the tenant from it
//! alone.
//!
//! Snapshots are checkpoints (`snapshots.rs`). Every request is checked before anything
//! happens; the RPCs of capabilities not advertised (publish, capacity, get-snapshot,
//! modification) answer `UNIMPLEMENTED`, as the spec asks.

use std::collections::HashMap;

use tarbox_fs::{
    CloneOptions, Engine, FsError, Quota, TenantAudit, TenantId, TenantInfo, TenantOptions,
    TenantState,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::content::{self, Source};
use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::{Rpc, rpc};
use crate::csi::validate_volume_capabilities_response::Confirmed;
use crate::csi::volume_capability::AccessType;
use crate::csi::volume_capability::access_mode::Mode as AccessMode;
use crate::csi::*;
use crate::databases::VolumeId;
use crate::naming;
use crate::params::{self, VolumeParams};
use crate::server::Driver;
use crate::store_keys;
use crate::{CONTEXT_CACHE_BYTES, CONTEXT_MEMORY_CACHE_BYTES, CONTEXT_TENANT};

/// Root directory of a new volume: writable by every pod's user (the sticky bit keeps them from
/// removing each other's files), as an `emptyDir` is.
const ROOT_MODE: u16 = 0o1777;

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// An engine error as the gRPC status the spec names for it.
pub(crate) fn status(e: FsError) -> Status {
    match e {
        FsError::TenantNotFound(_) | FsError::NotFound => Status::not_found(e.to_string()),
        FsError::BadInput(_) | FsError::Invalid(_) => Status::invalid_argument(e.to_string()),
        FsError::QuotaExceeded(_) => Status::resource_exhausted(e.to_string()),
        FsError::Backend(_) => Status::unavailable(format!("{e}: {}", source_chain(&e))),
        e => Status::internal(e.to_string()),
    }
}

/// One page of `items` for a List call: the entries from `starting_token` (an index; empty for
/// the start), at most `max_entries` of them (0: all), and the token of the next page (empty at
/// the end). A token that is no index of `items` is `ABORTED`, as the spec asks.
pub(crate) fn page<T>(
    mut items: Vec<T>,
    starting_token: &str,
    max_entries: i32,
) -> Result<(Vec<T>, String), Status> {
    let max =
        usize::try_from(max_entries).map_err(|_| invalid("max_entries cannot be negative"))?;
    let start: usize = if starting_token.is_empty() {
        0
    } else {
        starting_token
            .parse()
            .map_err(|_| Status::aborted(format!("invalid starting token {starting_token:?}")))?
    };
    if start > items.len() {
        return Err(Status::aborted(format!(
            "starting token {start} is past the end"
        )));
    }
    let end = if max == 0 {
        items.len()
    } else {
        start.saturating_add(max).min(items.len())
    };
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    items.truncate(end);
    Ok((items.split_off(start), next))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Check volume capabilities: mount access with a known mode (the filesystem is shared by
/// design), except the single-writer modes, which would need enforcing. Block access is refused.
pub(crate) fn check_capabilities(caps: &[VolumeCapability]) -> Result<(), String> {
    if caps.is_empty() {
        return Err("volume capabilities are missing".into());
    }
    for cap in caps {
        match &cap.access_type {
            Some(AccessType::Mount(m)) => {
                if !m.fs_type.is_empty() && m.fs_type != "tarbox" && m.fs_type != "fuse" {
                    return Err(format!(
                        "fs_type {:?} is not offered: a Tarbox volume is a tarbox filesystem",
                        m.fs_type
                    ));
                }
            }
            Some(AccessType::Block(_)) => {
                return Err("block access is not offered: Tarbox volumes are filesystems".into());
            }
            None => return Err("a volume capability has no access type".into()),
        }
        let mode = cap
            .access_mode
            .as_ref()
            .map(|m| AccessMode::try_from(m.mode).unwrap_or(AccessMode::Unknown))
            .unwrap_or(AccessMode::Unknown);
        if mode == AccessMode::Unknown {
            return Err("a volume capability has no access mode".into());
        }
        // These need the SINGLE_NODE_MULTI_WRITER capability, which is not advertised: nothing
        // here would enforce a single writer.
        if matches!(
            mode,
            AccessMode::SingleNodeSingleWriter | AccessMode::SingleNodeMultiWriter
        ) {
            return Err(format!(
                "access mode {} is not offered: the driver does not enforce a single writer",
                mode.as_str_name()
            ));
        }
    }
    Ok(())
}

/// The byte quota for a capacity range: the required bytes (at least one 4 KiB block), else the
/// limit, else none. `OUT_OF_RANGE` for a range the engine cannot give.
fn quota_bytes(range: Option<&CapacityRange>) -> Result<Option<u64>, Status> {
    let Some(range) = range else { return Ok(None) };
    let (required, limit) = (range.required_bytes, range.limit_bytes);
    if required < 0 || limit < 0 {
        return Err(Status::out_of_range("a capacity cannot be negative"));
    }
    if limit > 0 && required > limit {
        return Err(Status::out_of_range(format!(
            "required capacity {required} is above the limit {limit}"
        )));
    }
    let bytes = if required > 0 { required } else { limit };
    if bytes == 0 {
        return Ok(None);
    }
    let rounded = (bytes as u64).div_ceil(4096) * 4096;
    if limit > 0 && rounded > limit as u64 {
        return Err(Status::out_of_range(format!(
            "capacity is counted in 4 KiB units: {bytes} rounds up to {rounded}, above the limit {limit}"
        )));
    }
    Ok(Some(rounded))
}

/// A volume found: the database it lives in, its tenant and its id.
#[derive(Debug, Clone)]
pub(crate) struct Vol {
    pub engine: Engine,
    pub info: TenantInfo,
    pub id: VolumeId,
}

impl Vol {
    fn new(engine: Engine, info: TenantInfo, database: Option<String>) -> Vol {
        let id = VolumeId {
            tenant: info.id.0,
            database,
        };
        Vol { engine, info, id }
    }

    /// The CSI volume id.
    pub fn volume_id(&self) -> String {
        self.id.to_string()
    }
}

impl std::ops::Deref for Vol {
    type Target = TenantInfo;
    fn deref(&self) -> &TenantInfo {
        &self.info
    }
}

/// For the calls that carry no secrets.
pub(crate) fn no_secrets() -> &'static HashMap<String, String> {
    static NONE: std::sync::LazyLock<HashMap<String, String>> =
        std::sync::LazyLock::new(HashMap::new);
    &NONE
}

fn volume_of(v: &Vol) -> Volume {
    let info = &v.info;
    Volume {
        capacity_bytes: info
            .quota
            .bytes
            .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        volume_id: v.volume_id(),
        volume_context: HashMap::from([(CONTEXT_TENANT.to_string(), info.name.clone())]),
        content_source: info
            .owner
            .as_deref()
            .and_then(|o| naming::owner_field(o, "source"))
            .and_then(content::from_tag),
        accessible_topology: Vec::new(),
    }
}

impl Driver {
    /// The tenant of this driver a volume id names, in one of `states`; `None` for ids that
    /// name nothing (any more). `secrets` name the volume's database if it is not the driver's.
    async fn driver_tenant(
        &self,
        volume_id: &str,
        states: &[TenantState],
        secrets: &HashMap<String, String>,
    ) -> Result<Option<Vol>, Status> {
        let Some(id) = VolumeId::parse(volume_id) else {
            return Ok(None);
        };
        let engine = (self.databases())
            .engine(id.database.as_deref(), secrets)
            .await?;
        let info = engine
            .tenant_info_by_id(TenantId(id.tenant))
            .await
            .map_err(status)?;
        // Deleting, cloning or snapshotting it may touch its block store: with these keys.
        let url = info.as_ref().and_then(|i| i.data_url.as_deref());
        store_keys::register(&engine, url, secrets)?;
        Ok(info
            .filter(|i| states.contains(&i.state) && is_ours(i))
            .map(|info| Vol { engine, info, id }))
    }

    /// The live volume a volume id names; `None` for ids that name nothing (any more).
    pub(crate) async fn volume(
        &self,
        volume_id: &str,
        secrets: &HashMap<String, String>,
    ) -> Result<Option<Vol>, Status> {
        (self.driver_tenant(volume_id, &[TenantState::Active], secrets)).await
    }

    /// The tenant holding the snapshots of a volume id: the live volume or, once the volume is
    /// deleted, its retired tenant.
    pub(crate) async fn snapshot_holder(
        &self,
        volume_id: &str,
        secrets: &HashMap<String, String>,
    ) -> Result<Option<Vol>, Status> {
        let holders = [TenantState::Active, TenantState::Retired];
        self.driver_tenant(volume_id, &holders, secrets).await
    }

    /// This driver's tenants in one of `states`, in every database it knows, in tenant-name
    /// order within each.
    pub(crate) async fn driver_tenants(&self, states: &[TenantState]) -> Result<Vec<Vol>, Status> {
        let mut out = Vec::new();
        for (key, engine) in self.databases().known().await {
            let tenants = engine.list_tenants().await.map_err(status)?;
            out.extend(
                tenants
                    .into_iter()
                    .filter(|t| states.contains(&t.state) && is_ours(t))
                    .map(|info| Vol::new(engine.clone(), info, key.clone())),
            );
        }
        Ok(out)
    }

    /// Create (or clone from `source`) the tenant for `name`, or find the one a previous call
    /// (or a racing controller) created for it.
    async fn create_or_find(
        &self,
        name: &str,
        params: &VolumeParams,
        quota: Quota,
        source: Option<&Source>,
        (database, engine): (Option<String>, Engine),
    ) -> Result<Vol, Status> {
        if source.is_some_and(|s| s.tenant.id.database != database) {
            return Err(invalid(
                "a volume can only be restored or cloned within its own database",
            ));
        }
        let found = |info| Vol::new(engine.clone(), info, database.clone());
        let tag = source.map(|s| s.tag.as_str());
        let owner = naming::owner(name, params.pvc(), tag);
        for candidate in naming::candidates(name, params.pvc()) {
            let mut made = self
                .make_tenant(&engine, &candidate, params, quota, source, &owner)
                .await;
            if matches!(made, Err(FsError::TenantExists(_))) {
                // A deleted volume's tenant keeps its name until the background purge: purge it
                // now so the name can be used again at once.
                let held = engine.tenant_info(&candidate).await;
                if held.is_ok_and(|t| t.state == TenantState::Deleted) {
                    engine.purge_tenant(&candidate).await.map_err(status)?;
                    made = self
                        .make_tenant(&engine, &candidate, params, quota, source, &owner)
                        .await;
                }
            }
            match made {
                Ok(info) => {
                    configure(&engine, &info.name, params).await?;
                    let v = found(info);
                    info!(volume = v.volume_id(), tenant = %v.name, request = name, "volume created");
                    return Ok(v);
                }
                Err(FsError::TenantExists(_)) => {
                    let existing = match engine.tenant_info(&candidate).await {
                        Ok(info) => info,
                        // Deleted and purged in between: try the same name again next time.
                        Err(FsError::TenantNotFound(_)) => {
                            return Err(Status::aborted("the volume name is being reused; retry"));
                        }
                        Err(e) => return Err(status(e)),
                    };
                    let ours =
                        existing.owner.as_deref().and_then(naming::owner_request) == Some(name);
                    // A retired tenant (a deleted volume whose snapshots remain) keeps its name.
                    if !ours || existing.state == TenantState::Retired {
                        continue;
                    }
                    if existing.state != TenantState::Active {
                        return Err(Status::aborted(
                            "a volume of this name is being deleted; retry",
                        ));
                    }
                    if existing.quota != quota {
                        return Err(Status::already_exists(format!(
                            "volume {name:?} exists with another capacity"
                        )));
                    }
                    if tag.is_none() && existing.data_url != params.data_url {
                        return Err(Status::already_exists(format!(
                            "volume {name:?} exists with another dataStore"
                        )));
                    }
                    let existing_tag = existing
                        .owner
                        .as_deref()
                        .and_then(|o| naming::owner_field(o, "source"));
                    if existing_tag != tag {
                        return Err(Status::already_exists(format!(
                            "volume {name:?} exists with another content source"
                        )));
                    }
                    return Ok(found(existing));
                }
                Err(e) => return Err(status(e)),
            }
        }
        Err(Status::already_exists(format!(
            "every tenant name for volume {name:?} is taken by other volumes"
        )))
    }

    /// Create tenant `candidate` empty, or as a clone of `source`.
    async fn make_tenant(
        &self,
        engine: &Engine,
        candidate: &str,
        params: &VolumeParams,
        quota: Quota,
        source: Option<&Source>,
        owner: &str,
    ) -> Result<TenantInfo, FsError> {
        match source {
            None => {
                let options = TenantOptions {
                    block_size: params
                        .block_size
                        .unwrap_or(TenantOptions::default().block_size),
                    compression: params.compression.unwrap_or_default(),
                    data_url: params.data_url.clone(),
                    quota,
                    root_mode: ROOT_MODE,
                    owner: Some(owner.to_string()),
                    ..TenantOptions::default()
                };
                engine.create_tenant(candidate, options).await
            }
            Some(source) => {
                let options = CloneOptions {
                    quota,
                    owner: Some(owner.to_string()),
                };
                let layer = source.layer.as_ref();
                (engine)
                    .clone_tenant(&source.tenant.name, layer, candidate, options)
                    .await
            }
        }
    }
}

/// Apply the StorageClass's audit, checkpoint, access-policy and native-mount settings to a new
/// tenant.
async fn configure(engine: &Engine, tenant: &str, params: &VolumeParams) -> Result<(), Status> {
    if params.audit_level.is_some() || params.audit_retention_days.is_some() {
        let audit = TenantAudit {
            level: params.audit_level,
            retention_days: params.audit_retention_days,
        };
        engine.set_audit(tenant, audit).await.map_err(status)?;
    }
    if let Some(interval) = params.checkpoint_interval {
        engine
            .set_auto_checkpoint(tenant, Some(interval))
            .await
            .map_err(status)?;
    }
    if let Some(policy) = &params.access_policy {
        engine
            .set_access_policy(tenant, Some(policy), &tarbox_fs::Caller::this_process())
            .await
            .map_err(status)?;
    }
    if !params.native_mounts.is_empty() {
        engine
            .add_native_mounts(Some(tenant), &params.native_mounts)
            .await
            .map_err(status)?;
    }
    Ok(())
}

fn is_ours(info: &TenantInfo) -> bool {
    info.owner
        .as_deref()
        .and_then(naming::owner_request)
        .is_some()
}

/// A volume's health as the controller sees it: abnormal when a quota is used up.
pub(crate) fn condition(info: &TenantInfo) -> VolumeCondition {
    let full = |used: u64, limit: Option<u64>| limit.is_some_and(|l| used >= l);
    let (abnormal, message) = if full(info.usage.bytes, info.quota.bytes) {
        (
            true,
            "the byte quota is used up: writes fail with ENOSPC".to_string(),
        )
    } else if full(info.usage.inodes, info.quota.inodes) {
        (
            true,
            "the inode quota is used up: creating files fails with ENOSPC".to_string(),
        )
    } else {
        (
            false,
            format!(
                "{} bytes and {} inodes used",
                info.usage.bytes, info.usage.inodes
            ),
        )
    };
    VolumeCondition { abnormal, message }
}

fn capability(rpc: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(Rpc {
            r#type: rpc as i32,
        })),
    }
}

#[tonic::async_trait]
impl Controller for Driver {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(invalid("the volume name is missing"));
        }
        check_capabilities(&req.volume_capabilities).map_err(invalid)?;
        let params = params::parse(&req.parameters).map_err(invalid)?;
        let database = self.databases().named_by(&req.secrets).await?;
        store_keys::register(&database.1, params.data_url.as_deref(), &req.secrets)?;
        let source = match &req.volume_content_source {
            Some(s) => Some(self.content_source(s, &req.secrets).await?),
            None => None,
        };
        let mut quota = Quota {
            bytes: quota_bytes(req.capacity_range.as_ref())?,
            inodes: params.inode_quota,
        };
        if let Some(source) = &source {
            // Without a capacity of its own, a restore or clone gets its source's.
            quota.bytes = quota.bytes.or(source.tenant.quota.bytes);
            quota.inodes = quota.inodes.or(source.tenant.quota.inodes);
            if quota.bytes.is_some_and(|b| b < source.bytes) {
                return Err(Status::out_of_range(format!(
                    "the source holds {} bytes, more than the capacity asked for",
                    source.bytes
                )));
            }
        }
        let made = self
            .create_or_find(&req.name, &params, quota, source.as_ref(), database)
            .await?;
        let mut volume = volume_of(&made);
        if let Some(bytes) = params.cache_bytes {
            (volume.volume_context).insert(CONTEXT_CACHE_BYTES.to_string(), bytes.to_string());
        }
        if let Some(bytes) = params.memory_cache_bytes {
            (volume.volume_context)
                .insert(CONTEXT_MEMORY_CACHE_BYTES.to_string(), bytes.to_string());
        }
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        if let Some(info) = self.volume(&req.volume_id, &req.secrets).await? {
            // Its snapshots stay restorable: the tenant is only retired while it has some.
            match info.engine.retire_tenant(&info.name).await {
                Ok(state) => {
                    info!(volume = req.volume_id, tenant = %info.name, ?state, "volume deleted");
                }
                Err(FsError::TenantNotFound(_)) => {}
                Err(e) => return Err(status(e)),
            }
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "volumes need no attaching (attachRequired: false)",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "volumes need no attaching (attachRequired: false)",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(invalid("volume capabilities are missing"));
        }
        if self.volume(&req.volume_id, &req.secrets).await?.is_none() {
            return Err(Status::not_found(format!("no volume {:?}", req.volume_id)));
        }
        let response = match check_capabilities(&req.volume_capabilities) {
            Ok(()) => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            },
            Err(why) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            },
        };
        Ok(Response::new(response))
    }

    /// Volumes this driver created, in tenant-name order; the token is the index to resume at.
    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.driver_tenants(&[TenantState::Active]).await?;
        let (volumes, next_token) = page(volumes, &req.starting_token, req.max_entries)?;
        let entries = volumes
            .iter()
            .map(|info| list_volumes_response::Entry {
                volume: Some(volume_of(info)),
                status: Some(list_volumes_response::VolumeStatus {
                    published_node_ids: Vec::new(),
                    volume_condition: Some(condition(info)),
                }),
            })
            .collect();
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        _request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        Err(Status::unimplemented(
            "capacity is bounded by the database, not reported",
        ))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![
                capability(rpc::Type::CreateDeleteVolume),
                capability(rpc::Type::ListVolumes),
                capability(rpc::Type::ExpandVolume),
                capability(rpc::Type::CreateDeleteSnapshot),
                capability(rpc::Type::ListSnapshots),
                capability(rpc::Type::CloneVolume),
                capability(rpc::Type::GetVolume),
                capability(rpc::Type::VolumeCondition),
            ],
        }))
    }

    /// A checkpoint of the source volume (see `snapshots`).
    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let snapshot = Driver::create_snapshot(self, request.into_inner()).await?;
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        Driver::delete_snapshot(self, request.into_inner()).await?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        Ok(Response::new(
            Driver::list_snapshots(self, request.into_inner()).await?,
        ))
    }

    async fn get_snapshot(
        &self,
        _request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        Err(Status::unimplemented("GET_SNAPSHOT is not offered"))
    }

    /// Raise the byte quota; takes effect for every mount at its next write. Shrinking is
    /// refused.
    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(invalid("the capacity range is missing"));
        };
        if let Some(cap) = &req.volume_capability {
            check_capabilities(std::slice::from_ref(cap)).map_err(invalid)?;
        }
        let Some(info) = self.volume(&req.volume_id, &req.secrets).await? else {
            return Err(Status::not_found(format!("no volume {:?}", req.volume_id)));
        };
        let Some(bytes) = quota_bytes(Some(range))? else {
            return Err(invalid("the capacity range asks for no capacity"));
        };
        let current = info.quota.bytes;
        if current.is_some_and(|c| bytes < c) {
            return Err(Status::out_of_range(format!(
                "volume {} has {} bytes; shrinking is not offered",
                req.volume_id,
                current.unwrap_or(0)
            )));
        }
        let bytes = current.map_or(bytes, |c| c.max(bytes));
        let quota = Quota {
            bytes: Some(bytes),
            ..info.quota
        };
        (info.engine)
            .set_quota(&info.name, quota)
            .await
            .map_err(status)?;
        info!(volume = req.volume_id, bytes, "volume expanded");
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            node_expansion_required: false,
        }))
    }

    /// The volume and its condition: abnormal when it is full (writes fail with ENOSPC).
    async fn controller_get_volume(
        &self,
        request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        let Some(info) = self.volume(&req.volume_id, no_secrets()).await? else {
            return Err(Status::not_found(format!("no volume {:?}", req.volume_id)));
        };
        Ok(Response::new(ControllerGetVolumeResponse {
            volume: Some(volume_of(&info)),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(condition(&info)),
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("MODIFY_VOLUME is not offered"))
    }
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn pages_resume_where_the_token_says() {
        let items: Vec<u32> = (0..5).collect();
        assert_eq!(
            page(items.clone(), "", 2).ok(),
            Some((vec![0, 1], "2".into()))
        );
        assert_eq!(
            page(items.clone(), "2", 2).ok(),
            Some((vec![2, 3], "4".into()))
        );
        assert_eq!(
            page(items.clone(), "4", 2).ok(),
            Some((vec![4], String::new()))
        );
        assert_eq!(
            page(items.clone(), "", 0).ok(),
            Some((items.clone(), String::new()))
        );
        assert_eq!(
            page(items.clone(), "5", 0).ok(),
            Some((vec![], String::new()))
        );
        assert_eq!(
            page(items.clone(), "6", 0).map_err(|s| s.code()).err(),
            Some(tonic::Code::Aborted)
        );
        assert_eq!(
            page(items.clone(), "x", 0).map_err(|s| s.code()).err(),
            Some(tonic::Code::Aborted)
        );
        assert_eq!(
            page(items, "", -1).map_err(|s| s.code()).err(),
            Some(tonic::Code::InvalidArgument)
        );
    }
}
