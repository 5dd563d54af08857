//! One volume's FUSE server: what NodeStageVolume mounts at the staging path. The mounter runs
//! it as its own process (`tarbox-csi --serve-volume <id>`); with the in-memory store the plugin
//! runs it in-process. Either way the mount is the one `tarbox mount` runs, with the control
//! directory, automatic checkpoints and pod attribution.

use std::sync::Arc;

use tarbox_fs::{DiskCacheConfig, Engine, EngineConfig, VolumeOptions};
use tarbox_fuse::{MountOptions, MountSpec, ServiceError, TenantMount};
use tracing::info;

use crate::mounter::detach;
use crate::pods::CgroupPods;
use crate::state::{StateDir, VolumeRecord};

/// Why a volume server could not run.
#[derive(Debug, thiserror::Error)]
pub enum VolumeServerError {
    #[error("volume {0} is not staged on this node (no record in the state directory)")]
    NotStaged(String),
    #[error("cannot read the state directory")]
    State(#[from] std::io::Error),
    #[error("cannot open the database")]
    Engine(#[source] tarbox_fs::FsError),
    #[error(transparent)]
    Mount(#[from] ServiceError),
    #[error("the FUSE session failed")]
    Serve(#[source] std::io::Error),
}

/// The mount of a staged volume.
pub(crate) fn mount_spec(record: &VolumeRecord, state: &StateDir) -> MountSpec {
    MountSpec {
        tenant: record.tenant.clone(),
        create: false,
        volume: VolumeOptions {
            mount: Some(record.mount_name.clone()),
            // The tenant's native mounts are the node's host directories: put them in force.
            native_mounts: Some(Vec::new()),
            ..VolumeOptions::default()
        },
        mount: MountOptions {
            allow_other: true,
            pods: Some(Arc::new(CgroupPods::new(state.clone()))),
            ..MountOptions::default()
        },
        control_dir: true,
        auto_checkpoint: true,
    }
}

/// Mount `record`'s volume on `engine` at its staging path.
pub(crate) async fn start(
    engine: &Engine,
    record: &VolumeRecord,
    state: &StateDir,
) -> Result<TenantMount, VolumeServerError> {
    std::fs::create_dir_all(&record.staging_path)?;
    // Left by a server that ended without unmounting.
    detach(&record.staging_path);
    Ok(TenantMount::start(engine, &record.staging_path, mount_spec(record, state)).await?)
}

/// Serve volume `volume_id` until SIGTERM or SIGINT (then flush and unmount) or until it is
/// unmounted from outside: the body of `tarbox-csi --serve-volume`. The volume's database is the
/// one its record names, else `database_url`.
pub async fn serve_volume(
    state: StateDir,
    volume_id: &str,
    database_url: &str,
) -> Result<(), VolumeServerError> {
    let record = state
        .volume(volume_id)?
        .ok_or_else(|| VolumeServerError::NotStaged(volume_id.to_string()))?;
    let mut config = EngineConfig::default();
    if let Some(bytes) = record.memory_cache_bytes {
        config.block_cache_bytes = bytes;
    }
    let disk_cache = record
        .cache_bytes
        .unwrap_or(crate::state::DEFAULT_DISK_CACHE);
    if disk_cache > 0 {
        config.disk_cache = Some(DiskCacheConfig {
            dir: state.cache_dir(volume_id)?,
            capacity_bytes: disk_cache,
        });
    }
    if record.store_keys.is_some() {
        config.s3_credentials = record.store_keys.clone();
    }
    // Audit events a database outage holds back outlive this process, for the next server.
    config.audit.spill_dir = Some(state.audit_spill_dir(volume_id)?);
    let url = record.database_url.as_deref().unwrap_or(database_url);
    let engine = Engine::open(url, config)
        .await
        .map_err(VolumeServerError::Engine)?;
    let mount = start(&engine, &record, &state).await?;
    info!(volume = volume_id, tenant = record.tenant, path = %record.staging_path.display(), "serving");
    let served = mount.run_until(tarbox_fuse::termination()).await;
    // Closed whatever happened to the session: its audit events are written or spilled.
    let closed = engine.close().await;
    served.map_err(VolumeServerError::Serve)?;
    closed.map_err(VolumeServerError::Engine)?;
    info!(volume = volume_id, "volume server stopped");
    Ok(())
}
