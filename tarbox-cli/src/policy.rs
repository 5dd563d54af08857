//! `tarbox policy …`: set, show, remove and try out a tenant's pod-level access policy.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use tarbox_fs::Caller;
use tarbox_fs::policy::{AccessPolicy, Need, Workload};

use crate::Context;

pub const EXAMPLES: &str = "\
Examples:
  tarbox policy set -t training policy.toml
  tarbox policy show -t training
  tarbox policy check -t training --pod ml/trainer-0 --sa trainer /checkpoints/trainer-0/step-9 write
  tarbox policy check --file policy.toml --pod ml/eval-0 --sa eval /datasets/train read
  tarbox policy clear -t training";

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file and make it the tenant's (FILE `-` reads stdin). Running mounts
    /// follow within a second; the change is audited as `set_policy`.
    Set {
        #[arg(long, short = 't')]
        tenant: String,
        file: PathBuf,
    },
    /// Print the tenant's policy as it was set.
    Show {
        #[arg(long, short = 't')]
        tenant: String,
    },
    /// Remove the tenant's policy: POSIX permissions alone decide again.
    Clear {
        #[arg(long, short = 't')]
        tenant: String,
    },
    /// Explain what the policy decides for a caller, a path and an operation (`read` or
    /// `write`). Exit code 0 if allowed, 1 if refused.
    Check {
        /// The tenant whose policy to ask.
        #[arg(
            long,
            short = 't',
            required_unless_present = "file",
            conflicts_with = "file"
        )]
        tenant: Option<String>,
        /// A policy file to ask instead, before setting it.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The caller's pod as NAMESPACE/NAME; without it, a caller with no pod (the CLI, a
        /// plain mount).
        #[arg(long, value_name = "NAMESPACE/NAME")]
        pod: Option<String>,
        /// The pod's service account.
        #[arg(long, value_name = "NAME", default_value = "default", requires = "pod")]
        sa: String,
        path: String,
        #[arg(value_parser = parse_need)]
        op: Need,
    },
}

fn parse_need(s: &str) -> Result<Need, String> {
    s.parse()
}

pub async fn run(ctx: &Context, command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Set { tenant, file } => {
            let text = read_policy(&file)?;
            let policy = AccessPolicy::parse(&text)
                .with_context(|| format!("{} is not a valid policy", file.display()))?;
            let engine = ctx.engine().await?;
            engine
                .set_access_policy(&tenant, Some(&text), &Caller::this_process())
                .await?;
            println!(
                "tenant {tenant:?}: access policy set ({} rules); mounts follow within a second",
                policy.rule_count()
            );
        }
        PolicyCommand::Show { tenant } => {
            let engine = ctx.engine().await?;
            match engine.access_policy(&tenant).await? {
                Some(policy) => print!("{}", policy.source()),
                None => println!("# tenant {tenant:?} has no access policy"),
            }
        }
        PolicyCommand::Clear { tenant } => {
            let engine = ctx.engine().await?;
            engine
                .set_access_policy(&tenant, None, &Caller::this_process())
                .await?;
            println!("tenant {tenant:?}: access policy removed");
        }
        PolicyCommand::Check {
            tenant,
            file,
            pod,
            sa,
            path,
            op,
        } => {
            let policy = match (tenant, file) {
                (_, Some(file)) => {
                    let text = read_policy(&file)?;
                    AccessPolicy::parse(&text)
                        .with_context(|| format!("{} is not a valid policy", file.display()))?
                }
                (Some(tenant), None) => {
                    let engine = ctx.engine().await?;
                    match engine.access_policy(&tenant).await? {
                        Some(policy) => policy,
                        None => {
                            println!(
                                "tenant {tenant:?} has no access policy: POSIX permissions alone decide"
                            );
                            return Ok(());
                        }
                    }
                }
                (None, None) => bail!("give --tenant or --file"),
            };
            return check(&policy, pod.as_deref(), &sa, &path, op);
        }
    }
    Ok(())
}

fn read_policy(file: &PathBuf) -> Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the policy from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

fn check(policy: &AccessPolicy, pod: Option<&str>, sa: &str, path: &str, op: Need) -> Result<()> {
    if !path.starts_with('/') {
        bail!("path {path:?} is not absolute: policies name paths from the tenant's root");
    }
    let pod = pod
        .map(|p| {
            p.split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .with_context(|| format!("--pod {p:?} is not NAMESPACE/NAME"))
        })
        .transpose()?;
    let workload = pod.map(|(namespace, name)| Workload {
        namespace,
        service_account: sa,
        pod: name,
    });
    let compiled = policy.for_caller(workload.as_ref());
    let decision = compiled.decide(path, op);
    let who = match pod {
        Some((ns, name)) => format!("pod {ns}/{name} (service account {sa})"),
        None => "a caller without a pod".to_string(),
    };
    let what = if op == Need::Write { "write" } else { "read" };
    let verdict = match decision.refusal() {
        None => "allowed".to_string(),
        Some(tarbox_fs::policy::RefusedAs::ReadOnly) => "refused (EROFS)".to_string(),
        Some(tarbox_fs::policy::RefusedAs::Denied) => "refused (EACCES)".to_string(),
    };
    println!(
        "{what} of {path} by {who}: {verdict}, decided by {}",
        decision.reason
    );
    if let Some(root) = compiled.map_identity(&Caller::root()) {
        println!("root in this pod acts as uid {} gid {}", root.uid, root.gid);
    }
    if let Some(user) = compiled.map_identity(&Caller::new(1000, 1000)) {
        if (user.uid, user.gid) != (1000, 1000) {
            println!("every other user acts as uid {} gid {}", user.uid, user.gid);
        }
    }
    if !decision.allowed {
        bail!("the policy refuses it");
    }
    Ok(())
}
