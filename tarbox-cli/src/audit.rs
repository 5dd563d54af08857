//! `tarbox audit …`: query, follow and summarize a tenant's audit trail, and set its level and
//! retention.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use tarbox_fs::audit::{AuditFilter, AuditOrder, PathMatch, ResultFilter, StatsKey};
use tarbox_fs::{AuditEvent, AuditLevel, AuditOp, Engine, TenantAudit, Timestamp};

use crate::{Context, Output};

/// How often `--follow` asks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Events `tail` shows before following.
const TAIL_BACKLOG: usize = 10;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Events matching filters, oldest first.
    #[command(
        after_help = "Examples:\n  tarbox audit query -t agent-1 --since 1h --op unlink,rename\n  tarbox audit query -t agent-1 --path '/data/*.csv' --result denied --output json\n  tarbox audit query -t agent-1 --pod ml/trainer-0 --follow"
    )]
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many events (the newest when limited).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Keep printing new events as they arrive (Ctrl-C stops).
        #[arg(long, short = 'f')]
        follow: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The latest events, then new ones as they arrive (Ctrl-C stops).
    #[command(
        after_help = "Example:\n  tarbox audit tail -t agent-1 --op write,close --output json"
    )]
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Top files, directories, processes, pods or users by reads and writes, and activity per
    /// interval (from the close records of the `standard` level).
    #[command(
        after_help = "Examples:\n  tarbox audit stats -t agent-1 --since 24h --by dir --top 5\n  tarbox audit stats -t agent-1 --since 1h --interval 5m --output json"
    )]
    Stats {
        #[command(flatten)]
        filter: FilterArgs,
        /// Group by file, dir, process, pod or uid.
        #[arg(long, default_value = "file", value_parser = parse_key)]
        by: StatsKey,
        /// Rows shown.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Also show a time series with this interval (e.g. 1m, 1h).
        #[arg(long, value_name = "DURATION")]
        interval: Option<humantime::Duration>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Set a tenant's audit level and retention ("default" restores the engine default).
    #[command(
        after_help = "Examples:\n  tarbox audit config -t agent-1 --level full --retention-days 90\n  tarbox audit config -t agent-1 --level default"
    )]
    Config {
        #[arg(long, short = 't')]
        tenant: String,
        /// off, basic, standard, full or default.
        #[arg(long, value_name = "LEVEL")]
        level: Option<String>,
        /// Days events are kept, or default.
        #[arg(long, value_name = "DAYS")]
        retention_days: Option<String>,
    },
    /// Expire events past their retention and create the coming days' partitions now (mounts do
    /// this hourly).
    #[command(after_help = "Example:\n  tarbox audit expire")]
    Expire,
}

/// Conditions shared by query, tail and stats.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Tenant whose events are shown.
    #[arg(long, short = 't')]
    tenant: String,
    /// Events since a time: a duration ago (30m, 24h) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Events before a time: a duration ago or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Operations, comma separated (create, unlink, rename, write, close, …).
    #[arg(long, value_delimiter = ',', value_parser = parse_op)]
    op: Vec<AuditOp>,
    /// A path and everything under it, or a glob with * and ?.
    #[arg(long)]
    path: Option<String>,
    #[arg(long)]
    uid: Option<u32>,
    #[arg(long)]
    pid: Option<u32>,
    /// Pod name or namespace/name.
    #[arg(long)]
    pod: Option<String>,
    /// ok, error, denied or an errno name (EACCES).
    #[arg(long, value_parser = parse_result)]
    result: Option<ResultFilter>,
}

fn parse_op(s: &str) -> Result<AuditOp, String> {
    s.parse()
}

fn parse_key(s: &str) -> Result<StatsKey, String> {
    s.parse()
}

fn parse_result(s: &str) -> Result<ResultFilter, String> {
    s.parse()
}

/// A time given as a duration ago or an RFC 3339 timestamp.
fn parse_when(flag: &str, text: &str) -> Result<Timestamp> {
    if let Ok(ago) = humantime::parse_duration(text) {
        let now = tarbox_fs::Clock::now(&tarbox_fs::SystemClock);
        let ago = i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX);
        return Ok(Timestamp(now.0.saturating_sub(ago)));
    }
    let t: jiff::Timestamp = text.parse().with_context(|| {
        format!("invalid --{flag} {text:?}: expected a duration like 30m or a time like 2026-11-30T10:00:00Z")
    })?;
    let ns = i64::try_from(t.as_nanosecond())
        .with_context(|| format!("--{flag} {text:?} is out of range"))?;
    Ok(Timestamp(ns))
}

impl FilterArgs {
    fn filter(&self) -> Result<AuditFilter> {
        Ok(AuditFilter {
            tenant: Some(self.tenant.clone()),
            since: self
                .since
                .as_deref()
                .map(|s| parse_when("since", s))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|s| parse_when("until", s))
                .transpose()?,
            ops: self.op.clone(),
            path: self.path.as_deref().map(PathMatch::parse),
            uid: self.uid,
            pid: self.pid,
            pod: self.pod.clone(),
            result: self.result,
            ..AuditFilter::default()
        })
    }
}

pub async fn run(ctx: &Context, cmd: AuditCommand) -> Result<()> {
    let engine = ctx.engine().await?;
    match cmd {
        AuditCommand::Query {
            filter,
            limit,
            follow,
            output,
        } => {
            let filter = filter.filter()?;
            query(&engine, filter, limit, follow, output).await
        }
        AuditCommand::Tail { filter, output } => {
            let filter = filter.filter()?;
            query(&engine, filter, TAIL_BACKLOG, true, output).await
        }
        AuditCommand::Stats {
            filter,
            by,
            top,
            interval,
            output,
        } => {
            let filter = filter.filter()?;
            stats(&engine, &filter, by, top, interval.map(Into::into), output).await
        }
        AuditCommand::Config {
            tenant,
            level,
            retention_days,
        } => {
            let current = engine.tenant_info(&tenant).await?.audit;
            let level = match level.as_deref() {
                None => current.level,
                Some("default") => None,
                Some(l) => Some(
                    l.parse::<AuditLevel>()
                        .map_err(|e| anyhow::anyhow!("invalid --level: {e}"))?,
                ),
            };
            let retention_days = match retention_days.as_deref() {
                None => current.retention_days,
                Some("default") => None,
                Some(d) => Some(d.parse::<u32>().with_context(|| {
                    format!("invalid --retention-days {d:?}: expected a number of days or default")
                })?),
            };
            let info = engine
                .set_audit(
                    &tenant,
                    TenantAudit {
                        level,
                        retention_days,
                    },
                )
                .await?;
            println!(
                "tenant {:?}: audit level {}{}, retention {} days{}",
                info.name,
                info.audit_level,
                if info.audit.level.is_none() {
                    " (default)"
                } else {
                    ""
                },
                info.audit_retention_days,
                if info.audit.retention_days.is_none() {
                    " (default)"
                } else {
                    ""
                },
            );
            Ok(())
        }
        AuditCommand::Expire => {
            engine.prepare_audit_partitions().await?;
            let report = engine.expire_audit().await?;
            println!(
                "dropped {} partitions and deleted {} events past their retention",
                report.partitions_dropped, report.events_deleted
            );
            Ok(())
        }
    }
}

fn print_event(e: &AuditEvent, output: Output) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string(e)?),
        Output::Table => println!("{e}"),
    }
    Ok(())
}

async fn query(
    engine: &Engine,
    mut filter: AuditFilter,
    limit: usize,
    follow: bool,
    output: Output,
) -> Result<()> {
    // The newest `limit`, printed oldest first.
    filter.limit = limit;
    filter.order = AuditOrder::NewestFirst;
    let mut events = engine.audit_query(&filter).await?;
    events.reverse();
    for e in &events {
        print_event(e, output)?;
    }
    if !follow {
        return Ok(());
    }
    let mut last = events.last().map(|e| e.seq);
    if last.is_none() {
        // Nothing matched yet: follow from the newest event of any kind.
        let newest = AuditFilter {
            tenant: filter.tenant.clone(),
            limit: 1,
            order: AuditOrder::NewestFirst,
            ..AuditFilter::default()
        };
        last = Some(
            engine
                .audit_query(&newest)
                .await?
                .first()
                .map_or(0, |e| e.seq),
        );
    }
    filter.limit = 0;
    filter.order = AuditOrder::OldestFirst;
    loop {
        filter.after_seq = last;
        for e in engine.audit_query(&filter).await? {
            last = Some(e.seq);
            print_event(&e, output)?;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn stats(
    engine: &Engine,
    filter: &AuditFilter,
    by: StatsKey,
    top: usize,
    interval: Option<Duration>,
    output: Output,
) -> Result<()> {
    if top == 0 {
        bail!("invalid --top 0: show at least one row");
    }
    let rows = engine.audit_stats(filter, by, top).await?;
    let series = match interval {
        Some(i) => Some(engine.audit_series(filter, i).await?),
        None => None,
    };
    match output {
        Output::Json => {
            let doc = serde_json::json!({ "top": rows, "series": series });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            println!(
                "{:<48} {:>7} {:>9} {:>9} {:>12} {:>12}",
                "KEY", "OPENS", "READS", "WRITES", "READ", "WRITTEN"
            );
            for r in &rows {
                println!(
                    "{:<48} {:>7} {:>9} {:>9} {:>12} {:>12}",
                    r.key, r.opens, r.reads, r.writes, r.bytes_read, r.bytes_written
                );
            }
            if let Some(series) = series {
                println!();
                println!(
                    "{:<22} {:>7} {:>9} {:>9} {:>12} {:>12} {:>8}",
                    "INTERVAL", "OPENS", "READS", "WRITES", "READ", "WRITTEN", "CHANGES"
                );
                for p in &series {
                    println!(
                        "{:<22} {:>7} {:>9} {:>9} {:>12} {:>12} {:>8}",
                        p.start.to_rfc3339(),
                        p.opens,
                        p.reads,
                        p.writes,
                        p.bytes_read,
                        p.bytes_written,
                        p.changes
                    );
                }
            }
        }
    }
    Ok(())
}
