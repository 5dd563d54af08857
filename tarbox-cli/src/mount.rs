//! `tarbox mount` and `tarbox umount`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::sync::Arc;

use tarbox_fs::audit::{AuditConfig, JsonLinesSink, Overflow};
use tarbox_fs::{AuditLevel, LayerRef, VolumeOptions};
use tarbox_fuse::{CacheTimeouts, EngineUpkeep, MountOptions, MountSpec, TenantMount};
use tracing::{info, warn};

use crate::Context;

pub const EXAMPLES: &str = "\
Examples:
  tarbox mount /mnt/scratch                                   # in-memory, vanishes at unmount
  tarbox --database postgres://localhost/tarbox mount --tenant agent-1 /mnt/agent-1
  tarbox mount --tenant agent-1 --layer before-refactor --allow-other /mnt/snapshot
  tarbox mount -o max_read=131072 /mnt/scratch
  tarbox mount --audit-level full --audit-log /var/log/tarbox-audit.jsonl --metrics-addr 127.0.0.1:9567 /mnt/x";

/// Tenant used when none is named.
const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Directory to mount on.
    mountpoint: PathBuf,
    /// Tenant to mount (default: the config file's `tenant`, else "default").
    #[arg(long, short = 't')]
    tenant: Option<String>,
    /// Create the tenant if it does not exist (always done for the in-memory store).
    #[arg(long)]
    create: bool,
    /// Refuse every change.
    #[arg(long)]
    read_only: bool,
    /// Mount a checkpoint read-only (time travel), by name or id.
    #[arg(long, value_name = "NAME")]
    layer: Option<String>,
    /// Let other users access the mount (needed for pods and for tests that switch users).
    #[arg(long)]
    allow_other: bool,
    /// Seconds the kernel caches attributes.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    attr_timeout: f64,
    /// Seconds the kernel caches name lookups.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    entry_timeout: f64,
    /// Memory for decoded blocks (e.g. 256MiB).
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    memory_cache: String,
    /// File data all open files may hold before it is committed; past it, each write commits
    /// its own file first.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    held_limit: String,
    /// Inodes (and as many names) kept in memory per tenant; other mounts' changes reach them
    /// within milliseconds. 0 asks the database for every lookup and stat.
    #[arg(long, default_value_t = 100_000, value_name = "ENTRIES")]
    meta_cache: u64,
    /// Keep decoded blocks on local disk in DIR too (one directory per mount), so data read
    /// once from S3, a shared directory or the database is read locally next time, also
    /// after a remount.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Bound of the --cache-dir cache [default: 10GiB].
    #[arg(long, value_name = "SIZE", requires = "cache_dir")]
    cache_size: Option<String>,
    /// Hide the /.tarbox control directory.
    #[arg(long)]
    no_control_dir: bool,
    /// Run automatic checkpoints in this mount when the tenant has them on (`tarbox layer auto`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    auto_checkpoint: bool,
    /// Audit level of this mount (off, basic, standard, full); default: the tenant's setting.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    audit_level: Option<AuditLevel>,
    /// Also write audit events as JSON lines to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Write change events in the same transaction as the change (compliance mode).
    #[arg(long)]
    audit_strict: bool,
    /// When the audit queue is full: drop (count) events, or block operations until there is room.
    #[arg(long, default_value = "drop", value_name = "drop|block", value_parser = parse_overflow)]
    audit_overflow: Overflow,
    /// Keep audit events the database could not take (an outage) in DIR beyond 100,000 held in
    /// memory and when the mount ends; the next mount on DIR delivers them. Without it they are
    /// dropped (counted) past that bound.
    #[arg(long, value_name = "DIR")]
    audit_spill_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9567); default: the config
    /// file's `metrics_addr`, else none.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Extra FUSE mount options, comma separated or repeated (`-o allow_other,ro` style).
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    options: Vec<String>,
    /// Treat every process using the mount as this Kubernetes pod (NAMESPACE/NAME): the
    /// tenant's access policy and the audit trail see that pod. For a mount that serves one
    /// workload, or to try a policy out before a pod uses it.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_pod)]
    pod: Option<(String, String)>,
    /// The service account of `--pod`.
    #[arg(long, value_name = "NAME", default_value = "default", requires = "pod")]
    service_account: String,
    /// Show a host directory at PATH of the tree for this mount, besides the tenant's stored
    /// native mounts (`tarbox native`): ro refuses changes, rw makes them in SOURCE. Repeatable.
    #[arg(long, value_name = "PATH=SOURCE[:ro|rw]", value_parser = parse_native)]
    native: Vec<tarbox_fs::native::NativeMount>,
}

fn parse_native(s: &str) -> Result<tarbox_fs::native::NativeMount, String> {
    tarbox_fs::native::NativeMount::parse_flag(s).map_err(|e| e.to_string())
}

fn parse_pod(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// Every caller is the pod of `--pod`.
#[derive(Debug)]
struct FixedPod(Arc<tarbox_fs::PodIdentity>);

impl tarbox_fuse::PodResolver for FixedPod {
    fn pod_of(&self, _pid: u32) -> Option<Arc<tarbox_fs::PodIdentity>> {
        Some(self.0.clone())
    }
}

fn parse_level(s: &str) -> Result<AuditLevel, String> {
    s.parse()
}

fn parse_overflow(s: &str) -> Result<Overflow, String> {
    s.parse()
}

fn seconds(flag: &str, v: f64) -> Result<Duration> {
    if !(0.0..=3600.0).contains(&v) || v.is_nan() {
        bail!("invalid --{flag} {v}: must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

pub async fn run(ctx: &Context, mut args: MountArgs) -> Result<()> {
    let timeouts = CacheTimeouts {
        attr: seconds("attr-timeout", args.attr_timeout)?,
        entry: seconds("entry-timeout", args.entry_timeout)?,
    };
    let memory_cache =
        crate::config::parse_size(&args.memory_cache).context("invalid --memory-cache")?;
    let held_limit = crate::config::parse_size(&args.held_limit).context("invalid --held-limit")?;
    if held_limit < 16 << 20 {
        bail!(
            "invalid --held-limit {}: must be at least 16MiB (one file's write buffer), or every \
             write commits",
            args.held_limit
        );
    }
    let disk_cache = match &args.cache_dir {
        None => None,
        Some(dir) => Some(tarbox_fs::DiskCacheConfig {
            dir: dir.clone(),
            capacity_bytes: crate::config::parse_size(
                args.cache_size.as_deref().unwrap_or("10GiB"),
            )
            .context("invalid --cache-size")?,
        }),
    };
    // `-o ro` and `-o allow_other` mean what the flags mean.
    args.options.retain(|o| match o.as_str() {
        "ro" => {
            args.read_only = true;
            false
        }
        "rw" => false,
        "allow_other" => {
            args.allow_other = true;
            false
        }
        _ => true,
    });
    let url = ctx
        .database
        .clone()
        .or_else(|| ctx.file.database_url.clone())
        .unwrap_or_else(|| "memory://".to_string());
    let in_memory = url.starts_with("memory");
    if in_memory {
        warn!(
            "using the in-memory store: the contents vanish when this mount ends (pass --database to keep them)"
        );
    }
    if let Some(addr) = args.metrics_addr.or(ctx.file.metrics_addr) {
        crate::metrics::serve(addr)?;
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    let mut audit = AuditConfig {
        strict: args.audit_strict,
        overflow: args.audit_overflow,
        spill_dir: args.audit_spill_dir.clone(),
        ..AuditConfig::default()
    };
    match args.audit_log.as_deref() {
        None => {}
        Some(p) if p == Path::new("-") => audit.sinks.push(Arc::new(JsonLinesSink::stdout())),
        Some(p) => audit
            .sinks
            .push(Arc::new(JsonLinesSink::file(p).with_context(|| {
                format!("cannot open --audit-log {}", p.display())
            })?)),
    }
    let config = tarbox_fs::EngineConfig {
        block_cache_bytes: memory_cache,
        disk_cache,
        audit,
        held_limit_bytes: held_limit,
        meta_cache_entries: args.meta_cache,
        ..ctx.engine_config()
    };
    let engine = tarbox_fs::Engine::open(&url, config)
        .await
        .with_context(|| format!("cannot open storage {}", crate::redact(&url)))?;
    let tenant = args
        .tenant
        .clone()
        .or_else(|| ctx.file.tenant.clone())
        .unwrap_or_else(|| DEFAULT_TENANT.to_string());
    let spec = MountSpec {
        tenant: tenant.clone(),
        create: in_memory || args.create,
        volume: VolumeOptions {
            read_only: args.read_only,
            layer: args.layer.as_deref().map(LayerRef::from),
            audit_level: args.audit_level.or(ctx.file.audit_level),
            mount: Some(format!(
                "{}:{}",
                tarbox_fs::audit::host_name(),
                args.mountpoint.display()
            )),
            native_mounts: Some(args.native),
        },
        mount: MountOptions {
            allow_other: args.allow_other,
            read_only: args.read_only,
            timeouts,
            extra: args.options,
            fs_name: None,
            threads: 2,
            pods: args.pod.map(|(namespace, name)| {
                Arc::new(FixedPod(Arc::new(tarbox_fs::PodIdentity {
                    namespace,
                    name,
                    service_account: args.service_account.clone(),
                }))) as Arc<dyn tarbox_fuse::PodResolver>
            }),
        },
        control_dir: !args.no_control_dir,
        auto_checkpoint: args.auto_checkpoint,
    };
    let mounted = TenantMount::start(&engine, &args.mountpoint, spec).await?;
    // Tenants deleted elsewhere are purged by whichever long-running process sees them first.
    let upkeep = EngineUpkeep::start(&engine, !in_memory);
    println!(
        "tarbox: tenant {tenant:?} mounted at {}",
        args.mountpoint.display()
    );
    let served = mounted.run_until(tarbox_fuse::termination()).await;
    drop(upkeep);
    engine.close().await.ok();
    served.context("the FUSE session ended with an error")?;
    info!("unmounted");
    Ok(())
}

/// Unmount with umount2 as root, else with fusermount3 (the setuid helper).
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    if !tarbox_fuse::is_mount_point(mountpoint) {
        bail!("{} is not mounted", mountpoint.display());
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let status = cmd
        .arg(mountpoint)
        .status()
        .context("cannot run fusermount3 (install the fuse3 package)")?;
    if !status.success() {
        bail!(
            "fusermount3 -u {} failed ({status}); is it busy? try --lazy",
            mountpoint.display()
        );
    }
    Ok(())
}
