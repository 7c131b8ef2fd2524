//! `lanyard device`: enrolled devices.

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use lanyard_core::Actor;

use super::command::{print_commands, CollectPushes};
use super::{print_json, print_list, OutputArgs};
use crate::setup::Opened;

#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// List enrolled devices (use --status or --all for others).
    List {
        /// Only this status: pending, authenticated, enrolled, checked_out or inactive.
        #[arg(long, conflicts_with = "all")]
        status: Option<String>,
        /// Every enrollment, whatever its status.
        #[arg(long)]
        all: bool,
        /// Case-insensitive text in the managed Apple ID, email, model family or product
        /// (taken literally; the portal's device search).
        #[arg(long)]
        search: Option<String>,
        /// Only devices whose Mac reports a declaration failing.
        #[arg(long)]
        declarations_failing: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show one enrollment by id, with its inventory and its declarations' reported state and
    /// status items.
    Show {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// An enrollment's command history with results.
    Commands {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Unenroll: remove the MDM profile (and the managed volume) from the Mac.
    Unenroll { id: String },
    /// Make the person sign in again: the Mac's next user-channel request is challenged and
    /// the Mac shows the organisation's sign-in page.
    RequireSignIn { id: String },
    /// Mark inactive, now, the enrollments silent for longer than the inactive-after-days
    /// setting (what `serve` does every hour).
    AgeOut,
}

pub async fn device(
    o: &Opened,
    cmd: DeviceCmd,
    push: Option<&lanyard_core::push::PushService>,
    declarations: &lanyard_core::declarations::DeclarationService,
) -> Result<()> {
    use lanyard_core::enrollment::{list_enrollments, EnrollmentView};
    match cmd {
        DeviceCmd::List {
            status,
            all,
            search,
            declarations_failing,
            out,
        } => {
            use lanyard_store::EnrollmentStatus;
            let status = match status {
                None => None,
                Some(s) => match EnrollmentStatus::parse(&s) {
                    Some(v) => Some(v),
                    None => bail!(
                        "unknown status `{s}`; use one of {}",
                        EnrollmentStatus::ALL
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            };
            let status = match (all, status) {
                (true, _) => None,
                (false, s) => s.or(Some(EnrollmentStatus::Enrolled)),
            };
            let list = list_enrollments(
                &o.lanyard,
                &lanyard_store::DeviceListQuery {
                    status,
                    search,
                    declarations_failing,
                    descending: true,
                    limit: lanyard_store::MAX_DEVICE_LIST,
                    ..lanyard_store::DeviceListQuery::default()
                },
            )
            .await?;
            print_list(
                &out,
                list,
                &[
                    "managed apple id",
                    "enrollment mode",
                    "ownership",
                    "status",
                    "macos",
                    "model",
                    "attributes",
                    "last seen",
                    "id",
                ],
                |d: EnrollmentView| {
                    vec![
                        d.managed_apple_id,
                        d.enrollment_mode,
                        d.ownership,
                        d.status.to_string(),
                        d.os_version.unwrap_or_else(|| "-".into()),
                        d.product.unwrap_or_else(|| "-".into()),
                        d.attributes
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        d.last_seen_at
                            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                            .unwrap_or_else(|| "-".into()),
                        d.id,
                    ]
                },
            )?;
        }
        DeviceCmd::Show { id, out } => {
            let e = o
                .lanyard
                .store()
                .enrollment(&id)
                .await?
                .with_context(|| format!("no enrollment {id}"))?;
            let view = EnrollmentView::from(e);
            let inventory = o.lanyard.inventory(&id).await?;
            let declarative = declarations.enrollment_status(&id).await?;
            if out.json {
                return print_json(&serde_json::json!({
                    "enrollment": view,
                    "inventory": inventory,
                    "declarations": declarative,
                }));
            }
            let both = serde_json::json!({"enrollment": view, "inventory": inventory});
            println!("{}", serde_json::to_string_pretty(&both)?);
            super::declaration::print_declarative_status(&declarative);
        }
        DeviceCmd::Commands { id, out } => {
            let h = o.lanyard.command_history(&id, 200).await?;
            if out.json {
                return print_json(&h);
            }
            print_commands(h);
        }
        DeviceCmd::RequireSignIn { id } => {
            o.lanyard.require_sign_in(&Actor::cli(), &id).await?;
            println!("{id}: the person signs in again at the Mac's next user-channel request");
        }
        DeviceCmd::Unenroll { id } => {
            let collect = std::sync::Arc::new(CollectPushes::default());
            let q = o
                .lanyard
                .clone()
                .with_pusher(collect.clone())
                .unenroll(&Actor::cli(), &id, true)
                .await?;
            collect.push(push).await;
            println!(
                "unenroll queued for {id} (RemoveProfile {}); the Mac checks out when it runs it",
                q.command_uuid
            );
        }
        DeviceCmd::AgeOut => {
            let n = o
                .lanyard
                .mark_inactive_enrollments(lanyard_store::now())
                .await?;
            println!("{n} enrollment(s) marked inactive");
        }
    }
    Ok(())
}
