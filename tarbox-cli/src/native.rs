//! `tarbox native …`: the host directories shown inside tenants' trees (see
//! `tarbox_fs::native`), as TOML in and out.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use tarbox_fs::native::{self, NativeMode, NativeMount};

use crate::Context;

pub const EXAMPLES: &str = "\
Examples:
  tarbox native add --shared --path /usr --source /usr --mode ro
  tarbox native add -t agent-1 --path /.venv --source '/var/tarbox/venvs/{tenant}' --mode rw
  tarbox native add -t agent-1 --file mounts.toml
  tarbox native list -t agent-1 > mounts.toml
  tarbox native remove -t agent-1 /.venv
  tarbox native remove --shared /usr

Mounts follow at their next start (a running mount keeps the native mounts it started with).";

#[derive(Debug, Subcommand)]
pub enum NativeCommand {
    /// Add native mounts: one from --path/--source/--mode, or every `[[native_mounts]]` of a
    /// TOML file (FILE `-` reads stdin; entries with `shared = true` become shared). A mount at
    /// a path already defined in the same place is replaced.
    Add {
        /// The tenant whose own mounts these are.
        #[arg(long, short = 't', required_unless_present = "shared")]
        tenant: Option<String>,
        /// One definition for every tenant.
        #[arg(long)]
        shared: bool,
        #[arg(long, conflicts_with_all = ["path", "source"], required_unless_present = "path")]
        file: Option<PathBuf>,
        /// Where it appears in the tenant's tree.
        #[arg(long, requires = "source")]
        path: Option<String>,
        /// The host directory; `{tenant}` and `{tenant_id}` are replaced.
        #[arg(long, requires = "path")]
        source: Option<String>,
        /// ro (changes refused with EROFS) or rw (changes go to the host directory).
        #[arg(long, default_value = "ro", value_parser = clap::value_parser!(NativeMode))]
        mode: NativeMode,
    },
    /// Print the native mounts as TOML: the shared ones, and the tenant's own with --tenant.
    List {
        #[arg(long, short = 't')]
        tenant: Option<String>,
    },
    /// Remove the native mount at PATH from the tenant's own, or with --shared from the shared
    /// ones.
    Remove {
        #[arg(long, short = 't', required_unless_present = "shared")]
        tenant: Option<String>,
        #[arg(long)]
        shared: bool,
        path: String,
    },
}

pub async fn run(ctx: &Context, command: NativeCommand) -> Result<()> {
    match command {
        NativeCommand::Add {
            tenant,
            shared,
            file,
            path,
            source,
            mode,
        } => {
            let mounts = match (file, path, source) {
                (Some(file), _, _) => {
                    let text = read_text(&file)?;
                    let mut mounts = native::parse(&text).with_context(|| {
                        format!("{} holds no valid native mounts", file.display())
                    })?;
                    if shared {
                        for m in &mut mounts {
                            m.shared = true;
                        }
                    }
                    mounts
                }
                (None, Some(path), Some(source)) => {
                    let mount = NativeMount {
                        path,
                        source,
                        mode,
                        shared,
                    };
                    mount.check()?;
                    vec![mount]
                }
                _ => bail!("give --file, or --path and --source"),
            };
            let engine = ctx.engine().await?;
            engine.add_native_mounts(tenant.as_deref(), &mounts).await?;
            for m in &mounts {
                let whose = if m.shared {
                    "every tenant".to_string()
                } else {
                    format!("tenant {:?}", tenant.as_deref().unwrap_or_default())
                };
                println!("{whose}: {} shows {} ({})", m.path, m.source, m.mode);
            }
        }
        NativeCommand::List { tenant } => {
            let engine = ctx.engine().await?;
            let mounts = engine.native_mounts(tenant.as_deref()).await?;
            if mounts.is_empty() {
                println!("# no native mounts");
            } else {
                print!("{}", native::to_toml(&mounts));
            }
        }
        NativeCommand::Remove {
            tenant,
            shared,
            path,
        } => {
            let engine = ctx.engine().await?;
            match engine
                .remove_native_mount(tenant.as_deref(), &path, shared)
                .await
            {
                Err(tarbox_fs::FsError::NotFound) => {
                    bail!("no native mount at {path:?} to remove")
                }
                other => other?,
            }
            println!("native mount {path} removed; mounts follow at their next start");
        }
    }
    Ok(())
}

fn read_text(file: &PathBuf) -> Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read native mounts from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}
