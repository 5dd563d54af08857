//! `tarbox layer …`: checkpoints, the layer tree, switching (rollback), dropping, diffs and
//! automatic checkpoints. Each command is one engine call; the engine holds every rule.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use tarbox_fs::{Filesystem, LayerRef, LayerTree, Volume};

use crate::{Context, Output};

#[derive(Debug, Args)]
pub struct LayerArgs {
    /// Tenant (default: the config file's `tenant`).
    #[arg(long, short = 't', global = true)]
    tenant: Option<String>,
    #[command(subcommand)]
    command: LayerCommand,
}

#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Freeze the current tree under NAME and keep writing in a new layer on top.
    #[command(
        after_help = "Example:\n  tarbox layer checkpoint --tenant agent-1 before-refactor -m 'tests green'"
    )]
    Checkpoint {
        name: String,
        /// Why this checkpoint exists.
        #[arg(long, short = 'm', default_value = "")]
        description: String,
    },
    /// List every layer.
    #[command(after_help = "Example:\n  tarbox layer list --tenant agent-1 --output json")]
    List {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show the layer tree with the current layer marked.
    #[command(after_help = "Example:\n  tarbox layer tree --tenant agent-1")]
    Tree,
    /// Show one layer (by checkpoint name or id).
    #[command(after_help = "Example:\n  tarbox layer show --tenant agent-1 before-refactor")]
    Show {
        layer: LayerRef,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Make the tree exactly LAYER's (rollback or roll forward); the current layer stays listed.
    #[command(after_help = "Example:\n  tarbox layer switch --tenant agent-1 before-refactor")]
    Switch { layer: LayerRef },
    /// Delete a layer; one that others are built on needs --force (it is folded into them).
    #[command(after_help = "Example:\n  tarbox layer drop --tenant agent-1 experiment --force")]
    Drop {
        layer: LayerRef,
        #[arg(long)]
        force: bool,
    },
    /// Changes between two layers: with no layer, the current layer against its parent; with
    /// FROM only, FROM against the current layer.
    #[command(
        after_help = "Examples:\n  tarbox layer diff --tenant agent-1\n  tarbox layer diff --tenant agent-1 before-refactor\n  tarbox layer diff --tenant agent-1 v1 v2 --format json"
    )]
    Diff {
        from: Option<LayerRef>,
        to: Option<LayerRef>,
        #[arg(long, value_enum, default_value = "text")]
        format: DiffFormat,
    },
    /// Automatic checkpoints: every INTERVAL when something changed (taken by running mounts).
    #[command(
        after_help = "Examples:\n  tarbox layer auto --tenant agent-1 --every 15m\n  tarbox layer auto --tenant agent-1 --off"
    )]
    Auto {
        /// Interval, e.g. 30s, 15m, 2h.
        #[arg(
            long,
            value_name = "INTERVAL",
            conflicts_with = "off",
            required_unless_present = "off"
        )]
        every: Option<String>,
        #[arg(long)]
        off: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    /// Summary lines then unified diffs.
    Text,
    /// Summary lines only.
    Stat,
    Json,
}

async fn volume(ctx: &Context, tenant: &str) -> Result<Volume> {
    let engine = ctx.engine().await?;
    engine
        .volume(tenant)
        .await
        .with_context(|| format!("cannot open tenant {tenant:?}"))
}

pub async fn run(ctx: &Context, args: LayerArgs) -> Result<()> {
    let Some(tenant) = args.tenant.or_else(|| ctx.file.tenant.clone()) else {
        bail!("no tenant given: pass --tenant NAME (or set `tenant` in the config file)");
    };
    let command = match args.command {
        LayerCommand::Auto { every, off } => return auto(ctx, &tenant, every, off).await,
        other => other,
    };
    let v = volume(ctx, &tenant).await?;
    let layers = v.layers();
    match command {
        LayerCommand::Checkpoint { name, description } => {
            let layer = layers.checkpoint(&name, &description).await?;
            println!("checkpoint {}", LayerTree::label(&layer));
        }
        LayerCommand::List { output } => {
            let tree = layers.tree().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&tree.summaries())?),
                Output::Table => print_table(&tree),
            }
        }
        LayerCommand::Tree => print!("{}", layers.tree().await?.render()),
        LayerCommand::Show { layer, output } => {
            let tree = layers.tree().await?;
            let summary = tree.summary(tree.resolve(&layer)?);
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
                Output::Table => {
                    println!("id:          {}", summary.id);
                    println!("name:        {}", summary.name.as_deref().unwrap_or("-"));
                    println!("description: {}", summary.description);
                    let parent = summary.parent.map_or("-".into(), |p| format!("#{p}"));
                    println!("parent:      {parent}");
                    println!("children:    {}", summary.children);
                    println!("created:     {}", summary.created_at);
                    println!(
                        "frozen:      {}",
                        summary.frozen_at.as_deref().unwrap_or("- (current)")
                    );
                    if let Some(u) = summary.usage {
                        println!("usage:       {} bytes, {} inodes", u.bytes, u.inodes);
                    }
                }
            }
        }
        LayerCommand::Switch { layer } => {
            let head = layers.switch_to(&layer).await?;
            println!(
                "switched to {layer}; now writing in {}",
                LayerTree::label(&head)
            );
        }
        LayerCommand::Drop { layer, force } => {
            layers.drop_layer(&layer, force).await?;
            println!("dropped {layer}");
        }
        LayerCommand::Diff { from, to, format } => {
            let diff = match (from, to) {
                (None, _) => layers.diff_current().await?,
                (Some(from), None) => {
                    let head = LayerRef::Id(layers.current());
                    layers.diff(&from, &head).await?
                }
                (Some(from), Some(to)) => layers.diff(&from, &to).await?,
            };
            match format {
                DiffFormat::Json => println!("{}", serde_json::to_string_pretty(&diff)?),
                DiffFormat::Text => print!("{}", diff.render()),
                DiffFormat::Stat => {
                    let text = diff.render();
                    let summary: String = text
                        .lines()
                        .take(diff.changes.len() + 1)
                        .map(|l| format!("{l}\n"))
                        .collect();
                    print!("{summary}");
                }
            }
        }
        LayerCommand::Auto { every, off } => return auto(ctx, &tenant, every, off).await,
    }
    v.sync_all().await?;
    Ok(())
}

async fn auto(ctx: &Context, tenant: &str, every: Option<String>, off: bool) -> Result<()> {
    let interval = match (every, off) {
        (_, true) => None,
        (Some(text), false) => Some(parse_interval(&text)?),
        (None, false) => bail!("pass --every INTERVAL or --off"),
    };
    ctx.engine()
        .await?
        .set_auto_checkpoint(tenant, interval)
        .await?;
    match interval {
        Some(i) => println!(
            "automatic checkpoints of {tenant:?} every {}",
            humantime::format_duration(i)
        ),
        None => println!("automatic checkpoints of {tenant:?} off"),
    }
    Ok(())
}

fn print_table(tree: &LayerTree) {
    println!(
        "{:<8} {:<24} {:<8} {:<21} {:<21} {:>14}",
        "ID", "NAME", "PARENT", "CREATED", "FROZEN", "BYTES"
    );
    for s in tree.summaries() {
        let name = match (&s.name, s.current) {
            (Some(n), true) => format!("{n} *"),
            (Some(n), false) => n.clone(),
            (None, true) => "* (current)".into(),
            (None, false) => "-".into(),
        };
        println!(
            "{:<8} {:<24} {:<8} {:<21} {:<21} {:>14}",
            s.id,
            name,
            s.parent.map_or("-".into(), |p| p.to_string()),
            s.created_at,
            s.frozen_at.unwrap_or_else(|| "-".into()),
            s.usage.map_or("-".into(), |u| u.bytes.to_string()),
        );
    }
}

fn parse_interval(text: &str) -> Result<Duration> {
    let d = humantime::parse_duration(text)
        .with_context(|| format!("invalid --every {text:?}: expected e.g. 30s, 15m, 2h"))?;
    if d < Duration::from_secs(1) {
        bail!("invalid --every {text:?}: at least 1s");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_name_the_bad_value() {
        assert_eq!(parse_interval("15m").ok(), Some(Duration::from_secs(900)));
        let err = parse_interval("soon").expect_err("invalid").to_string();
        assert!(err.contains("--every") && err.contains("soon"), "{err}");
        assert!(parse_interval("10ms").is_err());
    }
}
