//! `tarbox`: mount a tenant with FUSE and administer tenants.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 the command line was invalid.

mod audit;
mod config;
mod fs;
mod fsck;
mod layer;
mod metrics;
mod mount;
mod native;
mod policy;
mod tenant;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use tarbox_fs::{Engine, EngineConfig};

use config::ConfigFile;

const EXAMPLES: &str = "\
Examples:
  tarbox mount /mnt/scratch                         # in-memory tenant, gone at unmount
  tarbox --database postgres://localhost/tarbox tenant create agent-1 --quota-bytes 10GiB
  tarbox --database postgres://localhost/tarbox mount --tenant agent-1 /mnt/agent-1
  tarbox umount /mnt/agent-1";

#[derive(Debug, Parser)]
#[command(name = "tarbox", version, about = "A POSIX filesystem in PostgreSQL for agents and training jobs", after_help = EXAMPLES)]
struct Cli {
    /// Storage URL (postgres://user@host/db or memory://). Default: $TARBOX_DATABASE_URL, then
    /// the config file, then an in-memory store for `mount`.
    #[arg(long, global = true, env = "TARBOX_DATABASE_URL", value_name = "URL")]
    database: Option<String>,

    /// Config file (TOML). Default: $TARBOX_CONFIG or ~/.config/tarbox/config.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a tenant at MOUNTPOINT and serve it in the foreground until unmounted or signalled.
    #[command(after_help = mount::EXAMPLES)]
    Mount(mount::MountArgs),
    /// Unmount a tarbox mount.
    #[command(after_help = "Example:\n  tarbox umount /mnt/agent-1")]
    Umount {
        mountpoint: PathBuf,
        /// Detach even if busy (lazy unmount).
        #[arg(long)]
        lazy: bool,
    },
    /// Create, list, inspect, limit and delete tenants.
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Checkpoints, rollback, layer tree, diffs and automatic checkpoints of a tenant.
    #[command(
        after_help = "Examples:\n  tarbox layer checkpoint -t agent-1 before-refactor\n  tarbox layer switch -t agent-1 before-refactor\n  tarbox layer diff -t agent-1"
    )]
    Layer(layer::LayerArgs),
    /// A tenant's files without a mount: ls, stat, cat, put, get, mkdir, rm, mv, tree.
    #[command(
        after_help = "Examples:\n  tarbox fs ls -t agent-1 -l /\n  tarbox fs put -t agent-1 ./data.csv /data/data.csv\n  tarbox fs cat -t agent-1 --layer before-refactor /notes.txt"
    )]
    Fs(fs::FsArgs),
    /// Write a tenant's tree (or a checkpoint of it) as a tar archive, to stdout by default.
    #[command(
        after_help = "Examples:\n  tarbox export -t agent-1 -o agent-1.tar\n  tarbox export -t agent-1 --layer before-refactor | tar -tvf -"
    )]
    Export(transfer::ExportArgs),
    /// Copy a tar archive (a file or `-` for stdin) or a local directory into a tenant.
    #[command(
        after_help = "Examples:\n  tarbox import -t agent-2 agent-1.tar\n  tar -cf - -C ./dataset . | tarbox import -t agent-2 - --into /data\n  tarbox import -t agent-2 ./checkout --into /src"
    )]
    Import(transfer::ImportArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  tarbox completions bash > /etc/bash_completion.d/tarbox\n  tarbox completions zsh > \"${fpath[1]}/_tarbox\"\n  tarbox completions fish > ~/.config/fish/completions/tarbox.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Query, follow and summarize a tenant's audit trail; set its level and retention.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check a tenant's tree: names, link counts, blocks and usage (exit code 1 on problems).
    #[command(
        after_help = "Examples:\n  tarbox fsck -t agent-1\n  tarbox fsck -t agent-1 --check-data --output json"
    )]
    Fsck {
        #[arg(long, short = 't')]
        tenant: String,
        /// Also read back every block the tenant references and verify it against its hash.
        #[arg(long)]
        check_data: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Pod-level access policy of a tenant: which workloads may read or write which paths.
    #[command(subcommand, after_help = policy::EXAMPLES)]
    Policy(policy::PolicyCommand),
    /// Host directories shown inside tenants' trees (read-only or read-write).
    #[command(subcommand, after_help = native::EXAMPLES)]
    Native(native::NativeCommand),
    /// Database administration.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Create or upgrade the schema (also done automatically on every connection).
    #[command(after_help = "Example:\n  tarbox --database postgres://localhost/tarbox db migrate")]
    Migrate,
}

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Settings resolved from flags, environment and config file.
#[derive(Debug)]
pub struct Context {
    database: Option<String>,
    file: ConfigFile,
    /// The engine of this invocation, opened on first use and closed when the command ends (so
    /// its audit events are written before the process exits).
    engine: tokio::sync::OnceCell<Engine>,
}

impl Context {
    /// The storage URL, or an error saying how to give one.
    fn database_url(&self) -> Result<String> {
        self.database
            .clone()
            .or_else(|| self.file.database_url.clone())
            .context("no database configured: pass --database postgres://…, set TARBOX_DATABASE_URL, or put database_url in the config file")
    }

    async fn engine(&self) -> Result<Engine> {
        let url = self.database_url()?;
        let config = self.engine_config();
        let engine = self
            .engine
            .get_or_try_init(|| open_engine(&url, config))
            .await?;
        Ok(engine.clone())
    }

    /// Engine settings from the config file.
    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            s3_credentials: self.file.s3.clone(),
            ..EngineConfig::default()
        }
    }

    /// End the invocation's engine session, writing its queued audit events.
    async fn close(&self) -> Result<()> {
        if let Some(engine) = self.engine.get() {
            engine
                .close()
                .await
                .context("cannot close the storage session")?;
        }
        Ok(())
    }
}

async fn open_engine(url: &str, config: EngineConfig) -> Result<Engine> {
    Engine::open(url, config)
        .await
        .with_context(|| format!("cannot open storage {}", redact(url)))
}

/// A storage URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn init_logging(verbose: u8, default: &str) {
    let level = match verbose {
        0 => default,
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = Context {
        database: cli.database,
        file: ConfigFile::load(cli.config.as_deref())?,
        engine: tokio::sync::OnceCell::new(),
    };
    let result = run_command(&ctx, cli.command).await;
    let closed = ctx.close().await;
    result.and(closed)
}

async fn run_command(ctx: &Context, command: Command) -> Result<()> {
    match command {
        Command::Mount(args) => mount::run(ctx, args).await,
        Command::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy),
        Command::Tenant(cmd) => tenant::run(ctx, cmd).await,
        Command::Layer(args) => layer::run(ctx, args).await,
        Command::Audit(cmd) => audit::run(ctx, cmd).await,
        Command::Policy(cmd) => policy::run(ctx, cmd).await,
        Command::Native(cmd) => native::run(ctx, cmd).await,
        Command::Fsck {
            tenant,
            check_data,
            output,
        } => fsck::run(ctx, &tenant, check_data, output).await,
        Command::Fs(args) => fs::run(ctx, args).await,
        Command::Export(args) => transfer::export(ctx, args).await,
        Command::Import(args) => transfer::import(ctx, args).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tarbox", &mut std::io::stdout());
            Ok(())
        }
        Command::Db(DbCommand::Migrate) => {
            let url = ctx.database_url()?;
            if !url.starts_with("postgres") {
                bail!("db migrate needs a PostgreSQL URL, got {}", redact(&url));
            }
            open_engine(&url, EngineConfig::default()).await?;
            println!("schema is up to date");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Mount(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.verbose, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tarbox: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarbox: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("memory://"), "memory://");
    }
}
