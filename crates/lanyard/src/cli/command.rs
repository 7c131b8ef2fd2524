//! `lanyard command`: MDM commands, queued and listed.

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use lanyard_core::Actor;

use super::{print_json, print_table, OutputArgs};
use crate::setup::Opened;

#[derive(Debug, Subcommand)]
pub enum CommandCmd {
    /// Queue a command. KIND: device-information, security-info, profile-list,
    /// install-profile, remove-profile, installed-application-list, certificate-list,
    /// declarative-management, raw.
    Send {
        kind: String,
        /// Target this enrollment (repeat for several).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Target every enrolled device (optionally only those the device search finds for
        /// --search, as `lanyard device list --search` lists them).
        #[arg(long, conflicts_with = "devices")]
        all: bool,
        #[arg(long, requires = "all")]
        search: Option<String>,
        /// DeviceInformation query (repeat); default: the inventory set User Enrollment allows.
        #[arg(long = "query")]
        queries: Vec<String>,
        /// install-profile: the .mobileconfig file.
        #[arg(long)]
        profile: Option<std::path::PathBuf>,
        /// remove-profile: the profile identifier.
        #[arg(long)]
        identifier: Option<String>,
        /// raw: the RequestType.
        #[arg(long)]
        request_type: Option<String>,
        /// raw: a file with an XML plist dictionary of the command's other keys;
        /// declarative-management: the Data file.
        #[arg(long)]
        plist: Option<std::path::PathBuf>,
        /// Queue only; do not wake the devices (a later push or check-in picks it up).
        #[arg(long)]
        no_push: bool,
        /// Send on the user channel (EnrollmentUserID) instead of the device channel.
        #[arg(long)]
        user_channel: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show a command's state on each target.
    Show {
        uuid: String,
        #[command(flatten)]
        out: OutputArgs,
    },
}

/// Collects the enrollments a CLI command should wake, to push them before exiting.
#[derive(Default)]
pub(crate) struct CollectPushes(std::sync::Mutex<Vec<String>>);

impl lanyard_core::commands::PushRequester for CollectPushes {
    fn request_push(&self, ids: Vec<String>) {
        if let Ok(mut v) = self.0.lock() {
            v.extend(ids);
        }
    }
}

impl CollectPushes {
    /// Pushes what was collected, printing the outcome (a push failure is reported, not fatal:
    /// the command stays queued for the device's next check-in).
    pub(crate) async fn push(&self, push: Option<&lanyard_core::push::PushService>) {
        let ids = self
            .0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let Some(push) = push.filter(|_| !ids.is_empty()) else {
            return;
        };
        match push.push(&ids).await {
            Ok(r) => eprintln!(
                "push: {} delivered, {} unregistered, {} failed, {} not reachable",
                r.delivered, r.unregistered, r.failed, r.not_reachable
            ),
            Err(e) => eprintln!("push not sent: {e} (the command stays queued)"),
        }
    }
}

pub async fn command(
    o: &Opened,
    cmd: CommandCmd,
    push: Option<&lanyard_core::push::PushService>,
) -> Result<()> {
    use lanyard_core::commands::{CommandSpec, CommandTarget};
    match cmd {
        CommandCmd::Send {
            kind,
            devices,
            all,
            search,
            queries,
            profile,
            identifier,
            request_type,
            plist,
            no_push,
            user_channel,
            out,
        } => {
            let read = |p: &Option<std::path::PathBuf>, what: &str| -> Result<Vec<u8>> {
                let p = p
                    .as_ref()
                    .with_context(|| format!("{kind} needs --{what}"))?;
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let spec = match kind.as_str() {
                "device-information" => CommandSpec::DeviceInformation { queries },
                "security-info" => CommandSpec::SecurityInfo,
                "profile-list" => CommandSpec::ProfileList,
                "install-profile" => CommandSpec::InstallProfile {
                    profile: read(&profile, "profile")?,
                },
                "remove-profile" => CommandSpec::RemoveProfile {
                    identifier: identifier.context("remove-profile needs --identifier")?,
                },
                "installed-application-list" => CommandSpec::InstalledApplicationList {
                    managed_apps_only: None,
                },
                "certificate-list" => CommandSpec::CertificateList { managed_only: None },
                "declarative-management" => CommandSpec::DeclarativeManagement {
                    data: read(&plist, "plist")?,
                },
                "raw" => CommandSpec::Raw {
                    raw_request_type: request_type.context("raw needs --request-type")?,
                    plist: match &plist {
                        Some(_) => Some(
                            String::from_utf8(read(&plist, "plist")?)
                                .context("the plist file is not UTF-8 text")?,
                        ),
                        None => None,
                    },
                },
                other => bail!("unknown command kind `{other}`; see lanyard command send --help"),
            };
            let target = match (all, devices.is_empty()) {
                (true, _) => CommandTarget::Filter {
                    search: search.unwrap_or_default(),
                },
                (false, false) => CommandTarget::Enrollments(devices),
                (false, true) => bail!("name --device ID (repeatable) or --all"),
            };
            let collect = std::sync::Arc::new(CollectPushes::default());
            let q = o
                .lanyard
                .clone()
                .with_pusher(collect.clone())
                .enqueue_command_on(
                    &Actor::cli(),
                    &target,
                    if user_channel {
                        lanyard_core::commands::CommandChannel::User
                    } else {
                        lanyard_core::commands::CommandChannel::Device
                    },
                    &spec,
                    !no_push,
                )
                .await?;
            collect.push(push).await;
            if out.json {
                return print_json(&q);
            }
            println!(
                "queued {} {} for {} device(s){}",
                q.request_type,
                q.command_uuid,
                q.targets,
                if q.push_requested {
                    "; push requested"
                } else {
                    "; not pushed"
                }
            );
        }
        CommandCmd::Show { uuid, out } => {
            let t = o.lanyard.command_targets(&uuid).await?;
            if out.json {
                return print_json(&t);
            }
            print_commands(t);
        }
    }
    Ok(())
}

/// Command states as a table (per target, or an enrollment's history).
pub(crate) fn print_commands(list: Vec<lanyard_core::commands::CommandView>) {
    let when = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    print_table(
        &[
            "command",
            "enrollment",
            "request type",
            "channel",
            "status",
            "queued",
            "finished",
        ],
        list.into_iter()
            .map(|c| {
                vec![
                    c.command_uuid,
                    c.enrollment_id,
                    c.request_type,
                    c.channel.to_string(),
                    c.status.to_string(),
                    when(c.queued_at),
                    c.finished_at.map(when).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    );
}
