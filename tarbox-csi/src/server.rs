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
use crate::node::Staged;
use crate::pods::PodRegistry;

/// Which CSI services a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The controller Deployment: volumes and their quotas.
    Controller,
    /// The node DaemonSet: mounts.
    Node,
    /// Both, in one process (a single-node cluster, tests).
    All,
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
            _ => Err(format!(
                "invalid mode {s:?}: expected controller, node or all"
            )),
        }
    }
}

/// The driver: an engine on the volumes' database and what this node has mounted. Cheap to
/// clone; every service shares one.
#[derive(Debug, Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    mode: Mode,
    node_id: String,
    state_dir: PathBuf,
    /// Volumes staged on this node, by volume id.
    staged: Mutex<HashMap<String, Staged>>,
    /// Pods that published volumes here, for the audit trail.
    pods: Arc<PodRegistry>,
}

impl Driver {
    pub fn new(engine: Engine, mode: Mode, node_id: &str, state_dir: PathBuf) -> Driver {
        Driver {
            inner: Arc::new(Inner {
                engine,
                mode,
                node_id: node_id.to_string(),
                state_dir,
                staged: Mutex::new(HashMap::new()),
                pods: Arc::default(),
            }),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn state_dir(&self) -> &std::path::Path {
        &self.inner.state_dir
    }

    pub(crate) fn staged(&self) -> &Mutex<HashMap<String, Staged>> {
        &self.inner.staged
    }

    pub(crate) fn pods(&self) -> &Arc<PodRegistry> {
        &self.inner.pods
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
/// unmount what this process staged.
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
    let router = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(driver.clone()))
        .add_optional_service(
            mode.controller()
                .then(|| ControllerServer::new(driver.clone())),
        )
        .add_optional_service(mode.node().then(|| NodeServer::new(driver.clone())));
    let served = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    driver.unstage_all().await;
    let _ = std::fs::remove_file(&path);
    Ok(served?)
}
