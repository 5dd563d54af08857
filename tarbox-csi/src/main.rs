//! `tarbox-csi`: the Kubernetes CSI driver of Tarbox, as the controller Deployment, the node
//! DaemonSet and the mounter DaemonSet run it, and (`--serve-volume`) one volume's FUSE server
//! as the mounter starts it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use tarbox_csi::state::StateDir;
use tarbox_csi::{Driver, Mode, Mounter, MounterConfig, Placement};
use tarbox_fs::{Engine, EngineConfig};

/// Where a node plugin's FUSE servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MounterArg {
    /// This process runs the mounter (a plain host; the servers outlive the plugin).
    Embedded,
    /// A separate `--mode mounter` process runs it (the chart's mounter DaemonSet).
    External,
}

/// Serve the Tarbox CSI driver on a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The socket kubelet and the sidecars connect to.
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Which services to serve: controller, node, all, or mounter (no CSI service: run the
    /// node's FUSE servers from --state-dir).
    #[arg(long, default_value = "all")]
    mode: Mode,
    /// This node's name (the node plugin gets it from the downward API).
    #[arg(long, env = "NODE_NAME", default_value = "localhost")]
    node_id: String,
    /// The PostgreSQL database holding the volumes.
    #[arg(long, env = "TARBOX_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Where the node keeps what it must find again after a restart (shared by the node
    /// plugin and the mounter).
    #[arg(long, default_value = "/var/lib/tarbox-csi")]
    state_dir: PathBuf,
    /// Who runs a node's FUSE servers.
    #[arg(long, value_enum, default_value = "embedded")]
    mounter: MounterArg,
    /// Serve Prometheus metrics on this address.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Be the FUSE server of this staged volume (the mounter starts these).
    #[arg(long, value_name = "VOLUME_ID", hide = true)]
    serve_volume: Option<String>,
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
    let state = StateDir::new(&args.state_dir);
    if let Some(volume) = &args.serve_volume {
        return tarbox_csi::volume_server::serve_volume(state, volume, &args.database_url)
            .await
            .with_context(|| format!("cannot serve volume {volume}"));
    }
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create --state-dir {}", args.state_dir.display()))?;
    let mounter = MounterConfig {
        binary: std::env::current_exe().context("cannot find this program's path")?,
        database_url: args.database_url.clone(),
    };
    if args.mode == Mode::Mounter {
        Mounter::new(state, mounter)
            .run(tarbox_fuse::termination())
            .await;
        return Ok(());
    }
    let engine = Engine::open(&args.database_url, EngineConfig::default())
        .await
        .context("cannot open the database given by --database-url")?;
    // Volumes deleted by the controller are purged by whichever process sees them first.
    let _upkeep = tarbox_fuse::EngineUpkeep::start(&engine, args.mode.controller());
    // The in-memory store lives in this process: only its own FUSE servers can see it.
    let placement = if engine.backend().kind() == "memory" {
        Placement::InProcess
    } else {
        match args.mounter {
            MounterArg::Embedded => Placement::Mounter(Some(mounter)),
            MounterArg::External => Placement::Mounter(None),
        }
    };
    let driver = Driver::new(
        engine.clone(),
        args.mode,
        &args.node_id,
        args.state_dir,
        placement,
    );
    tarbox_csi::serve(driver, &args.endpoint, tarbox_fuse::termination())
        .await
        .context("the CSI server failed")?;
    engine.close().await.ok();
    Ok(())
}
