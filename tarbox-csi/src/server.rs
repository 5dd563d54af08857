//! The driver's state and the gRPC server on a Unix socket.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tarbox_fs::Engine;
use tokio::net::UnixListener;
use tokio::sync::Mutex;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::csi::controller_server::ControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::databases::Databases;
use crate::mounter::{Mounter, MounterConfig};
use crate::node::Servers;
use crate::state::StateDir;

/// Which CSI services a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The controller Deployment: volumes and their quotas.
    Controller,
    /// The node DaemonSet: mounts.
    Node,
    /// Both, in one process (a single-node cluster, tests).
    All,
    /// No CSI service: the mounter that runs the node's FUSE servers (see `mounter`).
    Mounter,
}

impl Mode {
    pub fn controller(self) -> bool {
        matches!(self, Mode::Controller | Mode::All)
    }

    pub fn node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "controller" => Ok(Mode::Controller),
            "node" => Ok(Mode::Node),
            "all" => Ok(Mode::All),
            "mounter" => Ok(Mode::Mounter),
            _ => Err(format!(
                "invalid mode {s:?}: expected controller, node, all or mounter"
            )),
        }
    }
}

/// Where a node runs its volumes' FUSE servers.
#[derive(Debug, Clone)]
pub enum Placement {
    /// Inside the plugin (the only choice for the in-memory store): they end with it.
    InProcess,
    /// In their own processes, started by a mounter: this process's own (`Some`, for a plain
    /// host and tests) or a separate one (`None`: the chart's mounter DaemonSet).
    Mounter(Option<MounterConfig>),
}

/// The driver: an engine on the volumes' database and what this node has mounted. Cheap to
/// clone; every service shares one.
#[derive(Debug, Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    databases: Databases,
    mode: Mode,
    node_id: String,
    /// What this node has staged and published.
    state: StateDir,
    servers: Servers,
    /// The mounter this process runs, if any.
    embedded_mounter: Option<MounterConfig>,
    /// Node calls one at a time: each reads and writes the state directory and the mount
    /// table, and kubelet retries rather than waits.
    node_lock: Mutex<()>,
}

impl Driver {
    pub fn new(
        engine: Engine,
        mode: Mode,
        node_id: &str,
        state_dir: PathBuf,
        placement: Placement,
    ) -> Driver {
        let (servers, embedded_mounter) = match placement {
            Placement::InProcess => (Servers::InProcess(Mutex::new(HashMap::new())), None),
            Placement::Mounter(config) => (Servers::Mounter, config),
        };
        Driver {
            inner: Arc::new(Inner {
                databases: Databases::new(engine),
                mode,
                node_id: node_id.to_string(),
                state: StateDir::new(state_dir),
                servers,
                embedded_mounter,
                node_lock: Mutex::new(()),
            }),
        }
    }

    /// The engine of the driver's own database (`--database-url`).
    pub fn engine(&self) -> &Engine {
        self.inner.databases.own()
    }

    /// Every database the driver serves volumes of.
    pub(crate) fn databases(&self) -> &Databases {
        &self.inner.databases
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn state_dir(&self) -> &std::path::Path {
        self.inner.state.root()
    }

    pub(crate) fn state(&self) -> &StateDir {
        &self.inner.state
    }

    pub(crate) fn servers(&self) -> &Servers {
        &self.inner.servers
    }

    pub(crate) fn node_lock(&self) -> &Mutex<()> {
        &self.inner.node_lock
    }
}

/// How often the controller refreshes the volume and snapshot gauges.
const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

impl Driver {
    /// Refresh the volume and snapshot gauges every `interval`.
    async fn record_volumes_every(self, interval: std::time::Duration) {
        loop {
            match self.volumes_and_snapshots().await {
                Ok((volumes, snapshots)) => {
                    let by_id: Vec<_> = volumes.iter().map(|v| (v.volume_id(), &v.info)).collect();
                    crate::observe::record_volumes(&by_id, &snapshots);
                }
                Err(e) => tracing::warn!(error = %e.message(), "cannot refresh the volume gauges"),
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid --endpoint {0:?}: expected unix:///path/to/csi.sock")]
    Endpoint(String),
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// The socket path of a `unix://` endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| ServeError::Endpoint(endpoint.to_string()))?;
    Ok(PathBuf::from(path))
}

/// Serve the driver's services for its mode on `endpoint` until `shutdown` completes, then
/// unmount what this process serves itself (servers run by a mounter keep running). A node with
/// an embedded mounter runs it meanwhile.
pub async fn serve(
    driver: Driver,
    endpoint: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let path = socket_path(endpoint)?;
    // A socket left by a previous run of the plugin would refuse the bind.
    let _ = std::fs::remove_file(&path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let listener = UnixListener::bind(&path).map_err(|source| ServeError::Listen {
        path: path.clone(),
        source,
    })?;
    info!(endpoint, mode = ?driver.mode(), node = driver.node_id(), "serving CSI");
    let mode = driver.mode();
    let mounter = match (&driver.inner.embedded_mounter, mode.node()) {
        (Some(config), true) => {
            let mounter = Mounter::new(driver.state().clone(), config.clone());
            Some(tokio::spawn(mounter.run(std::future::pending())))
        }
        _ => None,
    };
    let volume_gauges = mode
        .controller()
        .then(|| tokio::spawn(driver.clone().record_volumes_every(GAUGE_INTERVAL)));
    let router = tonic::transport::Server::builder()
        .layer(crate::observe::ObserveLayer)
        .add_service(IdentityServer::new(driver.clone()))
        .add_optional_service(
            mode.controller()
                .then(|| ControllerServer::new(driver.clone())),
        )
        .add_optional_service(mode.node().then(|| NodeServer::new(driver.clone())));
    let served = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Some(m) = mounter {
        // Between passes: a pass is synchronous, so none is left half done.
        m.abort();
    }
    if let Some(g) = volume_gauges {
        g.abort();
    }
    driver.unstage_all().await;
    let _ = std::fs::remove_file(&path);
    Ok(served?)
}
