//! `tarbox fsck`: check a tenant's tree and report what is wrong.

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{Context, Output};

pub async fn run(ctx: &Context, tenant: &str, check_data: bool, output: Output) -> Result<()> {
    let engine = ctx.engine().await?;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} checking {pos} inodes ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let report = engine.fsck(tenant, &|n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let mut report = report?;
    if check_data {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} verified {pos} blocks ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let data = engine.check_data(tenant, &|n| bar.set_position(n)).await;
        bar.finish_and_clear();
        let data = data?;
        for hash in &data.missing {
            report.problems.push(tarbox_fs::FsckProblem {
                path: "/".into(),
                problem: format!("block {hash:?} is missing from the data store"),
            });
        }
        for hash in &data.corrupt {
            report.problems.push(tarbox_fs::FsckProblem {
                path: "/".into(),
                problem: format!("block {hash:?} does not match its hash"),
            });
        }
        report
            .notes
            .push(format!("{} blocks read back and verified", data.verified));
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            println!(
                "{}: {} directories, {} files, {} other; {} bytes and {} inodes in the tree, {} bytes and {} inodes charged",
                tenant,
                report.directories,
                report.files,
                report.other,
                report.counted.bytes,
                report.counted.inodes,
                report.charged.bytes,
                report.charged.inodes
            );
            for note in &report.notes {
                println!("note: {note}");
            }
            for p in &report.problems {
                println!("PROBLEM {}: {}", p.path, p.problem);
            }
        }
    }
    if !report.is_clean() {
        bail!(
            "{} problems found in tenant {tenant:?}",
            report.problems.len()
        );
    }
    if output == Output::Table {
        println!("clean");
    }
    Ok(())
}
