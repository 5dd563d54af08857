//! `tarbox tenant …`: create, clone, list, info, quota, delete.

use anyhow::{Context as _, Result};
use clap::Subcommand;
use tarbox_fs::{CloneOptions, Compression, LayerRef, Quota, TenantInfo, TenantOptions};
use tracing::warn;

use crate::config::parse_size;
use crate::{Context, Output};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (a DNS-style name, up to 253 characters).
    #[command(
        after_help = "Examples:\n  tarbox tenant create agent-1 --quota-bytes 10GiB --quota-inodes 1000000\n  tarbox tenant create trainer-1 --data file:///srv/tarbox-blocks"
    )]
    Create {
        name: String,
        /// Byte quota (e.g. 10GiB); unlimited if absent.
        #[arg(long, value_name = "SIZE")]
        quota_bytes: Option<String>,
        /// Inode quota; unlimited if absent.
        #[arg(long, value_name = "COUNT")]
        quota_inodes: Option<u64>,
        /// Data block size, a power of two from 4KiB to 4MiB.
        #[arg(long, value_name = "SIZE")]
        block_size: Option<String>,
        /// Block compression.
        #[arg(long, value_enum, default_value = "zstd")]
        compression: CompressionArg,
        /// Where file data lives, fixed for the tenant's life: "postgres" (in the database) or a
        /// block store, file:///path (a local or shared directory).
        #[arg(long, value_name = "URL", default_value = "postgres")]
        data: String,
    },
    /// Create a tenant holding exactly the tree of another one, now or at a checkpoint. The
    /// database copies the rows itself; the clone starts without history.
    #[command(
        after_help = "Example:\n  tarbox tenant clone agent-1 agent-1-replay --at before-upgrade --quota-bytes 10GiB"
    )]
    Clone {
        source: String,
        name: String,
        /// The checkpoint to clone (a name or #id); the live tree if absent.
        #[arg(long, value_name = "LAYER")]
        at: Option<String>,
        /// Byte quota of the clone; the source's if absent ("none": unlimited).
        #[arg(long, value_name = "SIZE|none")]
        quota_bytes: Option<String>,
        /// Inode quota of the clone; the source's if absent ("none": unlimited).
        #[arg(long, value_name = "COUNT|none")]
        quota_inodes: Option<String>,
    },
    /// List tenants.
    #[command(after_help = "Example:\n  tarbox tenant list --output json")]
    List {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show one tenant.
    #[command(after_help = "Example:\n  tarbox tenant info agent-1")]
    Info {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Change a tenant's quota ("none" removes a limit).
    #[command(after_help = "Example:\n  tarbox tenant quota agent-1 --bytes 20GiB --inodes none")]
    Quota {
        name: String,
        #[arg(long, value_name = "SIZE|none")]
        bytes: Option<String>,
        #[arg(long, value_name = "COUNT|none")]
        inodes: Option<String>,
    },
    /// Delete a tenant: refused for new access at once, data removed in the background.
    #[command(after_help = "Example:\n  tarbox tenant delete agent-1")]
    Delete { name: String },
    /// Collect the garbage of a tenant's block store: delete objects no file references (left by
    /// a crash between storing and committing) and blocks whose last reference went.
    #[command(after_help = "Example:\n  tarbox tenant gc trainer-1 --orphan-grace 1h")]
    Gc {
        name: String,
        /// Only objects stored longer ago than this count as left behind (younger ones may
        /// belong to a write in flight).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        orphan_grace: std::time::Duration,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    Zstd,
    None,
}

/// `None` for "none", otherwise the parsed value.
fn limit(flag: &str, text: &str, parse: impl Fn(&str) -> Result<u64>) -> Result<Option<u64>> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    parse(text)
        .map(Some)
        .with_context(|| format!("invalid --{flag} {text:?}"))
}

pub async fn run(ctx: &Context, cmd: TenantCommand) -> Result<()> {
    let engine = ctx.engine().await?;
    match cmd {
        TenantCommand::Create {
            name,
            quota_bytes,
            quota_inodes,
            block_size,
            compression,
            data,
        } => {
            let mut options = TenantOptions::default();
            if !data.eq_ignore_ascii_case("postgres") {
                tarbox_fs::store::validate_data_url(&data)
                    .map_err(|e| anyhow::anyhow!("invalid --data: {e}"))?;
                options.data_url = Some(data);
            }
            if let Some(b) = quota_bytes {
                options.quota.bytes = limit("quota-bytes", &b, parse_size)?;
            }
            options.quota.inodes = quota_inodes;
            if let Some(bs) = block_size {
                let bs = parse_size(&bs).context("invalid --block-size")?;
                options.block_size =
                    u32::try_from(bs).context("invalid --block-size: too large")?;
            }
            options.compression = match compression {
                CompressionArg::Zstd => Compression::Zstd,
                CompressionArg::None => Compression::None,
            };
            let info = engine.create_tenant(&name, options).await?;
            print_one(&info, Output::Table)
        }
        TenantCommand::Clone {
            source,
            name,
            at,
            quota_bytes,
            quota_inodes,
        } => {
            let mut quota = engine.tenant_info(&source).await?.quota;
            if let Some(b) = quota_bytes {
                quota.bytes = limit("quota-bytes", &b, parse_size)?;
            }
            if let Some(i) = quota_inodes {
                quota.inodes = limit("quota-inodes", &i, |t| t.parse::<u64>().map_err(Into::into))?;
            }
            let at = at.map(LayerRef::from);
            let options = CloneOptions { quota, owner: None };
            let info = engine
                .clone_tenant(&source, at.as_ref(), &name, options)
                .await?;
            print_one(&info, Output::Table)
        }
        TenantCommand::List { output } => {
            let all = engine.list_tenants().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&all)?),
                Output::Table => {
                    println!(
                        "{:<40} {:<8} {:>14} {:>14} {:>10} {:>10}",
                        "NAME", "STATE", "USED", "QUOTA", "INODES", "IQUOTA"
                    );
                    for t in &all {
                        println!(
                            "{:<40} {:<8} {:>14} {:>14} {:>10} {:>10}",
                            t.name,
                            state(t),
                            human(t.usage.bytes),
                            t.quota.bytes.map_or("-".into(), human),
                            t.usage.inodes,
                            t.quota.inodes.map_or("-".into(), |n| n.to_string()),
                        );
                    }
                }
            }
            Ok(())
        }
        TenantCommand::Info { name, output } => {
            print_one(&engine.tenant_info(&name).await?, output)
        }
        TenantCommand::Quota {
            name,
            bytes,
            inodes,
        } => {
            let current = engine.tenant_info(&name).await?.quota;
            let quota = Quota {
                bytes: match bytes {
                    Some(b) => limit("bytes", &b, parse_size)?,
                    None => current.bytes,
                },
                inodes: match inodes {
                    Some(i) => limit("inodes", &i, |t| t.parse::<u64>().map_err(Into::into))?,
                    None => current.inodes,
                },
            };
            print_one(&engine.set_quota(&name, quota).await?, Output::Table)
        }
        TenantCommand::Gc { name, orphan_grace } => {
            let bar = indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} listed {pos} objects ({per_sec})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            let report = engine
                .collect_garbage(&name, orphan_grace, &|n| bar.set_position(n))
                .await;
            bar.finish_and_clear();
            let report = report?;
            println!(
                "{name}: {} objects left behind adopted, {} dead blocks deleted",
                report.adopted, report.reaped
            );
            Ok(())
        }
        TenantCommand::Delete { name } => {
            engine.delete_tenant(&name).await?;
            match engine.purge_tenant(&name).await {
                Ok(()) => println!("tenant {name:?} deleted"),
                // Deleted all the same: mounts purge it later (its block store is down, say).
                Err(e) => {
                    warn!(tenant = %name, error = %e, "its data cannot be removed now");
                    println!(
                        "tenant {name:?} marked deleted; its data is removed in the background"
                    );
                }
            }
            Ok(())
        }
    }
}

fn state(t: &TenantInfo) -> &'static str {
    match t.state {
        tarbox_fs::TenantState::Active => "active",
        tarbox_fs::TenantState::Deleted => "deleted",
        tarbox_fs::TenantState::Retired => "retired",
    }
}

fn print_one(t: &TenantInfo, output: Output) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(t)?),
        Output::Table => {
            println!("name:        {}", t.name);
            println!("id:          {}", t.id.0);
            println!("state:       {}", state(t));
            if let Some(owner) = &t.owner {
                println!("owner:       {owner}");
            }
            println!("block size:  {}", human(u64::from(t.block_size)));
            println!("compression: {:?}", t.compression);
            match &t.data_url {
                None => println!("data:        postgres (in the database)"),
                Some(url) => println!("data:        {url}"),
            }
            match t.access_policy_rules {
                None => println!("policy:      none (POSIX permissions alone decide)"),
                Some(n) => println!("policy:      {n} rules (tarbox policy show -t {})", t.name),
            }
            println!(
                "bytes:       {} of {}",
                human(t.usage.bytes),
                t.quota.bytes.map_or("unlimited".into(), human)
            );
            println!(
                "inodes:      {} of {}",
                t.usage.inodes,
                t.quota.inodes.map_or("unlimited".into(), |n| n.to_string())
            );
            let default = |own: bool| if own { "" } else { " (default)" };
            println!(
                "audit:       {}{}, kept {} days{}",
                t.audit_level,
                default(t.audit.level.is_some()),
                t.audit_retention_days,
                default(t.audit.retention_days.is_some())
            );
        }
    }
    Ok(())
}

/// Bytes with a binary unit, e.g. `1.5 GiB`.
fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
