//! `tarbox-csi`: the Kubernetes CSI driver of Tarbox, as the controller Deployment and the node
//! DaemonSet run it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use tarbox_csi::{Driver, Mode};
use tarbox_fs::{Engine, EngineConfig};

/// Serve the Tarbox CSI driver on a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The socket kubelet and the sidecars connect to.
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Which services to serve: controller, node or all.
    #[arg(long, default_value = "all")]
    mode: Mode,
    /// This node's name (the node plugin gets it from the downward API).
    #[arg(long, env = "NODE_NAME", default_value = "localhost")]
    node_id: String,
    /// The PostgreSQL database holding the volumes.
    #[arg(long, env = "TARBOX_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Where the node keeps what it must find again after a restart.
    #[arg(long, default_value = "/var/lib/tarbox-csi")]
    state_dir: PathBuf,
    /// Serve Prometheus metrics on this address.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let engine = Engine::open(&args.database_url, EngineConfig::default())
        .await
        .context("cannot open the database given by --database-url")?;
    // Volumes deleted by the controller are purged by whichever process sees them first.
    let _upkeep = tarbox_fuse::EngineUpkeep::start(&engine, args.mode.controller());
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create --state-dir {}", args.state_dir.display()))?;
    let driver = Driver::new(engine.clone(), args.mode, &args.node_id, args.state_dir);
    tarbox_csi::serve(driver, &args.endpoint, tarbox_fuse::termination())
        .await
        .context("the CSI server failed")?;
    engine.close().await.ok();
    Ok(())
}
