//! `lanyard audit`: the audit log.

use anyhow::{bail, Result};
use clap::Args;

use lanyard_store::AuditFilter;

use super::{print_json, print_table, OutputArgs};
use crate::setup::Opened;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    target: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: i64,
    #[command(flatten)]
    out: OutputArgs,
}

pub async fn audit(o: &Opened, a: AuditArgs) -> Result<()> {
    if !(1..=1000).contains(&a.limit) {
        bail!("--limit is 1 to 1000");
    }
    let entries = o
        .lanyard
        .audit_log(&AuditFilter {
            actor: a.actor,
            action: a.action,
            target: a.target,
            before_id: None,
            limit: a.limit,
        })
        .await?;
    if a.out.json {
        return print_json(&entries);
    }
    print_table(
        &["when", "actor", "action", "target", "detail"],
        entries
            .into_iter()
            .map(|e| {
                vec![
                    e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    e.actor,
                    e.action,
                    e.target,
                    e.detail,
                ]
            })
            .collect(),
    );
    Ok(())
}
