//! Admin sub-commands. They act on the same data directory and database as `serve`, through the
//! same domain services, so every change is validated and audited exactly as from the API.

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use lanyard_core::admins::Role;
use lanyard_core::attributes::{AttributeKind, DefineAttribute};
use lanyard_core::settings::{SettingsPatch, SETTING_KEYS};
use lanyard_core::users::{CreateUser, UpdateUser};
use lanyard_core::Actor;
use lanyard_store::{AuditFilter, ListQuery};

use crate::setup::Opened;

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as an aligned text table.
pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    let count = rows.len();
    for r in rows {
        line(r);
    }
    if count == 0 {
        println!("(none)");
    }
}

/// A password from the flag, or read from standard input (one line) when the flag is `-` or
/// absent and input is piped, or prompted for on a terminal.
fn read_password(flag: Option<String>, what: &str) -> Result<String> {
    match flag.as_deref() {
        Some("-") | None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("{what}: ");
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let p = line.trim_end_matches(['\r', '\n']).to_string();
            if p.is_empty() {
                bail!("no password given (use --password or pipe it on standard input)");
            }
            Ok(p)
        }
        Some(p) => Ok(p.to_string()),
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user.
    Add {
        email: String,
        #[arg(long)]
        name: Option<String>,
        /// The sign-in password (`-` reads it from standard input). Omit for users who will
        /// sign in through the identity provider only.
        #[arg(long)]
        password: Option<String>,
        /// Managed Apple ID, when it differs from the email.
        #[arg(long)]
        managed_apple_id: Option<String>,
    },
    /// List users.
    List {
        #[arg(long)]
        search: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show one user.
    Show {
        email: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Disable a user: they can no longer sign in to enroll.
    Disable { email: String },
    /// Enable a disabled user.
    Enable { email: String },
    /// Set a user's password (`--password -` or no flag reads it from standard input).
    SetPassword {
        email: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Set or clear (with "") a user's managed Apple ID.
    SetManagedAppleId {
        email: String,
        managed_apple_id: String,
    },
    /// Forget a user's failed enrollment sign-ins from every address, so they can sign in
    /// again at once.
    Unlock { email: String },
}

pub async fn user(o: &Opened, cmd: UserCmd) -> Result<()> {
    let l = &o.lanyard;
    let actor = Actor::cli();
    match cmd {
        UserCmd::Add {
            email,
            name,
            password,
            managed_apple_id,
        } => {
            let password = match password {
                Some(p) => Some(read_password(Some(p), "password")?),
                None => None,
            };
            let u = l
                .create_user(
                    &actor,
                    CreateUser {
                        email,
                        display_name: name,
                        password,
                        managed_apple_id,
                    },
                )
                .await?;
            println!(
                "added user {} (managed Apple ID: {})",
                u.email,
                u.managed_apple_id.as_deref().unwrap_or("none")
            );
        }
        UserCmd::List { search, out } => {
            let users = l
                .list_users(&ListQuery {
                    search,
                    offset: 0,
                    limit: 10_000,
                })
                .await?;
            if out.json {
                return print_json(&users);
            }
            print_table(
                &["email", "name", "managed apple id", "enabled", "password"],
                users
                    .into_iter()
                    .map(|u| {
                        vec![
                            u.email,
                            u.display_name,
                            u.managed_apple_id.unwrap_or_else(|| "-".into()),
                            if u.enabled { "yes" } else { "no" }.into(),
                            if u.has_password { "set" } else { "-" }.into(),
                        ]
                    })
                    .collect(),
            );
        }
        UserCmd::Show { email, out } => {
            let u: lanyard_core::users::UserView = l.find_user(&email).await?.into();
            if out.json {
                return print_json(&u);
            }
            println!("email:            {}", u.email);
            println!("name:             {}", u.display_name);
            println!(
                "managed Apple ID: {}",
                u.managed_apple_id.as_deref().unwrap_or("-")
            );
            println!("enabled:          {}", u.enabled);
            println!("created:          {}", u.created_at);
        }
        UserCmd::Unlock { email } => {
            let n = l.unlock_user(&actor, &email).await?;
            println!("unlocked {email} (failed sign-ins forgotten from {n} addresses)");
        }
        UserCmd::Disable { email } => {
            set_enabled(o, &actor, &email, false).await?;
            println!("disabled {email}");
        }
        UserCmd::Enable { email } => {
            set_enabled(o, &actor, &email, true).await?;
            println!("enabled {email}");
        }
        UserCmd::SetPassword { email, password } => {
            let password = read_password(password, "new password")?;
            l.update_user(
                &actor,
                &email,
                UpdateUser {
                    password: Some(password),
                    ..Default::default()
                },
            )
            .await?;
            println!("password set for {email}");
        }
        UserCmd::SetManagedAppleId {
            email,
            managed_apple_id,
        } => {
            let u = l
                .update_user(
                    &actor,
                    &email,
                    UpdateUser {
                        managed_apple_id: Some(managed_apple_id),
                        ..Default::default()
                    },
                )
                .await?;
            println!(
                "managed Apple ID of {} is now {}",
                u.email,
                u.managed_apple_id.as_deref().unwrap_or("none")
            );
        }
    }
    Ok(())
}

async fn set_enabled(o: &Opened, actor: &Actor, email: &str, enabled: bool) -> Result<()> {
    o.lanyard
        .update_user(
            actor,
            email,
            UpdateUser {
                enabled: Some(enabled),
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum SettingsCmd {
    /// Show the enrollment settings.
    Show {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Change one setting: ownership-mode (prompt|employee), manage-only-corporate-resources,
    /// use-email-as-managed-apple-id (true|false), min-macos-version (e.g. 15.2),
    /// managed-domains (comma-separated), install-trust-profile (auto|always|never),
    /// inactive-after-days (0 = never).
    Set { key: String, value: String },
}

pub async fn settings(o: &Opened, cmd: SettingsCmd) -> Result<()> {
    let l = &o.lanyard;
    match cmd {
        SettingsCmd::Show { out } => {
            let s = l.enrollment_settings().await?;
            if out.json {
                return print_json(&s);
            }
            let ownership = serde_json::to_value(s.ownership_mode)?;
            let rows = [
                (
                    "ownership-mode",
                    ownership.as_str().unwrap_or("?").to_string(),
                ),
                (
                    "manage-only-corporate-resources",
                    s.manage_only_corporate_resources.to_string(),
                ),
                (
                    "use-email-as-managed-apple-id",
                    s.use_email_as_managed_apple_id.to_string(),
                ),
                ("min-macos-version", s.min_macos_version.to_string()),
                ("managed-domains", s.managed_domains.join(",")),
                (
                    "install-trust-profile",
                    s.install_trust_profile.as_str().to_string(),
                ),
                ("inactive-after-days", s.inactive_after_days.to_string()),
            ];
            debug_assert_eq!(rows.len(), SETTING_KEYS.len());
            print_table(
                &["setting", "value"],
                rows.into_iter()
                    .map(|(k, v)| vec![k.to_string(), if v.is_empty() { "-".into() } else { v }])
                    .collect(),
            );
        }
        SettingsCmd::Set { key, value } => {
            let patch = SettingsPatch::from_key_value(&key, &value)?;
            l.update_enrollment_settings(&Actor::cli(), patch).await?;
            println!("{key} updated");
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AttributeCmd {
    /// Define a custom attribute asked for during enrollment.
    Add {
        name: String,
        /// text, number, boolean or choice
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        required: bool,
        /// An allowed value of a choice attribute (repeat the flag).
        #[arg(long = "choice")]
        choices: Vec<String>,
    },
    /// List custom attribute definitions.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Remove a custom attribute definition.
    Remove { name: String },
}

pub async fn attribute(o: &Opened, cmd: AttributeCmd) -> Result<()> {
    let l = &o.lanyard;
    match cmd {
        AttributeCmd::Add {
            name,
            kind,
            required,
            choices,
        } => {
            let kind: AttributeKind = kind.parse()?;
            let a = l
                .define_attribute(
                    &Actor::cli(),
                    DefineAttribute {
                        name,
                        kind,
                        required,
                        choices,
                    },
                )
                .await?;
            println!("defined attribute {} ({})", a.name, a.kind.as_str());
        }
        AttributeCmd::List { out } => {
            let attrs = l.list_attributes().await?;
            if out.json {
                return print_json(&attrs);
            }
            print_table(
                &["name", "type", "required", "choices"],
                attrs
                    .into_iter()
                    .map(|a| {
                        vec![
                            a.name,
                            a.kind.as_str().into(),
                            if a.required { "yes" } else { "no" }.into(),
                            a.choices.join(", "),
                        ]
                    })
                    .collect(),
            );
        }
        AttributeCmd::Remove { name } => {
            l.delete_attribute(&Actor::cli(), &name).await?;
            println!("removed attribute {name}");
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Create an administrator (`--password -` or no flag reads it from standard input).
    Create {
        username: String,
        /// administrator or read-only
        #[arg(long, default_value = "administrator")]
        role: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// List administrators.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Set an administrator's password: ends all their sessions and forgets their failed
    /// sign-ins (their API tokens are kept).
    SetPassword {
        username: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Forget an administrator's failed sign-ins from every address, so they can sign in again
    /// at once.
    Unlock { username: String },
    /// Disable an administrator: ends their sessions; their API tokens stop working. The last
    /// enabled administrator with the Administrator role cannot be disabled.
    Disable { username: String },
    /// Enable a disabled administrator.
    Enable { username: String },
    /// Remove an administrator with their sessions and API tokens. The last enabled
    /// administrator with the Administrator role cannot be removed.
    Remove { username: String },
    /// Create an API token acting as an administrator; the token is printed once.
    CreateToken {
        /// The administrator the token acts as.
        #[arg(long, default_value = "admin")]
        admin: String,
        /// A name to recognise the token by.
        #[arg(long)]
        name: String,
        /// Days until it expires (default: never).
        #[arg(long)]
        days: Option<i64>,
    },
    /// Revoke an API token by id.
    RevokeToken { id: i64 },
    /// List API tokens (never their secrets).
    ListTokens {
        #[command(flatten)]
        out: OutputArgs,
    },
}

pub async fn admin(o: &Opened, cmd: AdminCmd) -> Result<()> {
    let l = &o.lanyard;
    let actor = Actor::cli();
    match cmd {
        AdminCmd::Create {
            username,
            role,
            password,
        } => {
            let role: Role = lanyard_core::admins::parse_role(&role)?;
            let password = read_password(password, "password")?;
            let a = l.create_admin(&actor, &username, &password, role).await?;
            println!("created administrator {} ({})", a.username, a.role.as_str());
        }
        AdminCmd::List { out } => {
            let admins = l.list_admins().await?;
            if out.json {
                return print_json(&admins);
            }
            print_table(
                &["name", "role", "enabled", "locked"],
                admins
                    .into_iter()
                    .map(|a| {
                        vec![
                            a.username,
                            a.role.as_str().into(),
                            a.enabled.to_string(),
                            a.locked.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        AdminCmd::SetPassword { username, password } => {
            let password = read_password(password, "new password")?;
            let (admin, ended) = l
                .set_admin_password(&actor, &username, &password, None)
                .await?;
            println!(
                "password set for administrator {} ({ended} sessions ended)",
                admin.username
            );
        }
        AdminCmd::Unlock { username } => {
            let n = l.unlock_admin(&actor, &username).await?;
            println!(
                "unlocked administrator {username} (failed sign-ins forgotten from {n} addresses)"
            );
        }
        AdminCmd::Disable { username } => {
            let a = l.set_admin_enabled(&actor, &username, false).await?;
            println!("disabled administrator {}", a.username);
        }
        AdminCmd::Enable { username } => {
            let a = l.set_admin_enabled(&actor, &username, true).await?;
            println!("enabled administrator {}", a.username);
        }
        AdminCmd::Remove { username } => {
            l.remove_admin(&actor, &username).await?;
            println!("removed administrator {username}");
        }
        AdminCmd::CreateToken { admin, name, days } => {
            let (t, secret) = l.create_api_token(&actor, &admin, &name, days).await?;
            eprintln!(
                "created API token {} (id {}); it is shown only now:",
                t.name, t.id
            );
            println!("{secret}");
        }
        AdminCmd::RevokeToken { id } => {
            l.revoke_api_token(&actor, id).await?;
            println!("revoked API token {id}");
        }
        AdminCmd::ListTokens { out } => {
            let tokens = l.store().list_api_tokens().await?;
            if out.json {
                return print_json(&tokens);
            }
            print_table(
                &["id", "name", "created", "expires", "last used", "revoked"],
                tokens
                    .into_iter()
                    .map(|t| {
                        vec![
                            t.id.to_string(),
                            t.name,
                            t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                            t.expires_at
                                .map(|e| e.format("%Y-%m-%d").to_string())
                                .unwrap_or_else(|| "never".into()),
                            t.last_used_at
                                .map(|e| e.format("%Y-%m-%d %H:%M").to_string())
                                .unwrap_or_else(|| "-".into()),
                            t.revoked.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

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
            if out.json {
                return print_json(&list);
            }
            print_table(
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
                list.into_iter()
                    .map(|d: EnrollmentView| {
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
                    })
                    .collect(),
            );
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
            crate::declaration_cmd::print_declarative_status(&declarative);
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
struct CollectPushes(std::sync::Mutex<Vec<String>>);

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
    async fn push(&self, push: Option<&lanyard_core::push::PushService>) {
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

/// Writes a file that must not exist yet (a request file is not overwritten by mistake),
/// readable by the owner only.
fn write_new_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Command states as a table (per target, or an enrollment's history).
fn print_commands(list: Vec<lanyard_core::commands::CommandView>) {
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

/// A vendor certificate to sign the push certificate request with.
#[derive(Debug, clap::Args)]
pub struct VendorArgs {
    /// The MDM CSR signing (vendor) certificate and key, PKCS#12; its password is read from
    /// standard input.
    #[arg(long)]
    vendor_p12: Option<std::path::PathBuf>,
    /// Apple's certificates above the vendor certificate (PEM or DER), given twice: the WWDR
    /// intermediate and the Apple root.
    #[arg(long, requires = "vendor_p12")]
    apple_cert: Vec<std::path::PathBuf>,
}

impl VendorArgs {
    fn signer(&self) -> Result<Option<lanyard_core::pushcert::VendorSigner>> {
        let Some(p12) = &self.vendor_p12 else {
            return Ok(None);
        };
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let der = read(p12)?;
        let apple = self
            .apple_cert
            .iter()
            .map(|p| read(p))
            .collect::<Result<Vec<_>>>()?;
        if apple.is_empty() {
            bail!("give Apple's WWDR intermediate and root with --apple-cert FILE (twice)");
        }
        let password = read_password(None, "vendor PKCS#12 password")?;
        let refs: Vec<&[u8]> = apple.iter().map(Vec::as_slice).collect();
        Ok(Some(lanyard_core::pushcert::vendor_signer(
            &der, &password, &refs,
        )?))
    }
}

/// A CSR signing service instead of an own vendor certificate.
#[derive(Debug, clap::Args)]
pub struct SigningServiceArgs {
    /// Send the CSR to the signing service (the setting --signing-service-url); it emails the
    /// signed request, encrypted, to --email; `lanyard push-cert decrypt` reads it.
    #[arg(long, conflicts_with = "vendor_p12", requires = "email")]
    signing_service: bool,
    /// The address the signing service emails its reply to.
    #[arg(long, requires = "signing_service")]
    email: Option<String>,
    /// A file holding the signing service's API key (private to its owner); without it the
    /// key is read from standard input. Never give the key on the command line.
    #[arg(long, requires = "signing_service")]
    api_key_file: Option<std::path::PathBuf>,
}

impl SigningServiceArgs {
    fn api_key(&self) -> Result<String> {
        let key = match &self.api_key_file {
            Some(path) => crate::setup::read_private(path, "the signing service API key file")?,
            None => read_password(None, "signing service API key")?,
        };
        let key = key.trim().to_string();
        if key.is_empty() {
            bail!("the signing service API key is empty");
        }
        Ok(key)
    }
}

#[derive(Debug, Subcommand)]
pub enum PushCertCmd {
    /// Start getting (or renewing) the MDM push certificate: makes the push key and its CSR,
    /// kept pending in the database. With --vendor-p12 the CSR is signed and --out receives
    /// the request file to upload to Apple's Push Certificates Portal; without, --out
    /// receives the CSR (PEM) for an MDM vendor to sign.
    ///
    /// With --signing-service the CSR goes to a signing service instead, which emails the
    /// signed request file, encrypted; `lanyard push-cert decrypt` turns that reply into the
    /// request file for Apple.
    Request {
        #[command(flatten)]
        vendor: VendorArgs,
        #[command(flatten)]
        service: SigningServiceArgs,
        /// Where to write the request file (or the CSR).
        #[arg(long, required_unless_present = "signing_service")]
        out: Option<std::path::PathBuf>,
    },
    /// Decrypt the signing service's emailed reply (`*.plist.b64.p7`) to the pending request
    /// and write the request file for Apple's Push Certificates Portal.
    Decrypt {
        /// The reply file from the email.
        reply: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sign the pending request with a vendor certificate and write the request file for
    /// Apple's Push Certificates Portal.
    Sign {
        #[command(flatten)]
        vendor: VendorArgs,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Upload (or renew) the MDM push certificate: --cert FILE alone (the certificate Apple
    /// issued for the pending request), --p12 FILE (password on stdin, or --password), or
    /// --cert FILE --key FILE (PEM).
    Upload {
        #[arg(long, conflicts_with_all = ["cert", "key"])]
        p12: Option<std::path::PathBuf>,
        /// The PKCS#12 password (`-` or absent reads it from standard input).
        #[arg(long, requires = "p12")]
        password: Option<String>,
        #[arg(long)]
        cert: Option<std::path::PathBuf>,
        #[arg(long, requires = "cert")]
        key: Option<std::path::PathBuf>,
        /// Accept a topic that differs from the live enrollments' (they must all re-enroll).
        #[arg(long)]
        force: bool,
    },
    /// Show the push certificate: topic, expiry, warnings.
    Show {
        #[command(flatten)]
        out: OutputArgs,
    },
}

pub async fn push_cert(
    o: &Opened,
    secrets: &lanyard_pki::SecretBox,
    settings: &crate::settings::GlobalSettings,
    cmd: PushCertCmd,
) -> Result<()> {
    use lanyard_core::push::PushCertificateUpload;
    let show = |i: &lanyard_core::push::PushCertificateInfo| {
        println!("topic:      {}", i.topic);
        println!("subject:    {}", i.subject);
        println!("expires:    {} ({} days left)", i.not_after, i.days_left);
        println!("sha256:     {}", i.sha256);
        if let Some(w) = &i.warning {
            println!("WARNING:    {w}");
        }
    };
    match cmd {
        PushCertCmd::Request {
            service, out: None, ..
        } if service.signing_service => {
            let email = service.email.clone().unwrap_or_default();
            let client = lanyard_core::pushcert::signing_service(&settings.signing_service_url)?;
            let api_key = service.api_key()?;
            o.lanyard
                .request_push_signing(&Actor::cli(), secrets, &client, &email, &api_key)
                .await?;
            println!(
                "push certificate request sent to {}; it emails the signed request to {email}. \
                 Run `lanyard push-cert decrypt REPLY.plist.b64.p7 --out FILE` with the \
                 attachment, upload FILE to Apple's Push Certificates Portal \
                 (https://identity.apple.com), then `lanyard push-cert upload --cert` with the \
                 certificate Apple returns",
                client.url()
            );
        }
        PushCertCmd::Request { service, .. } if service.signing_service => {
            bail!("--out is not used with --signing-service (the reply comes by email)");
        }
        PushCertCmd::Request { vendor, out, .. } => {
            let Some(out) = out else {
                bail!("give --out FILE");
            };
            if out.exists() {
                bail!("{} exists already; give a new --out file", out.display());
            }
            let signer = vendor.signer()?;
            let r = o
                .lanyard
                .create_push_request(&Actor::cli(), secrets, signer.as_ref())
                .await?;
            match &r.upload_file {
                Some(file) => {
                    write_new_file(&out, file.as_bytes())?;
                    println!(
                        "push certificate request made and signed; upload {} to Apple's Push \
                         Certificates Portal (https://identity.apple.com), then run `lanyard \
                         push-cert upload --cert` with the certificate Apple returns",
                        out.display()
                    );
                }
                None => {
                    write_new_file(&out, r.csr_pem.as_bytes())?;
                    println!(
                        "push certificate request made; {} holds its CSR for an MDM vendor to \
                         sign (or run `lanyard push-cert sign --vendor-p12 …`)",
                        out.display()
                    );
                }
            }
        }
        PushCertCmd::Decrypt { reply, out } => {
            if out.exists() {
                bail!("{} exists already; give a new --out file", out.display());
            }
            let meta = std::fs::metadata(&reply)
                .with_context(|| format!("cannot read {}", reply.display()))?;
            if meta.len() > lanyard_core::pushcert::REPLY_LIMIT as u64 {
                bail!(
                    "{} is too large to be a signing service reply",
                    reply.display()
                );
            }
            let bytes = std::fs::read(&reply)
                .with_context(|| format!("cannot read {}", reply.display()))?;
            let file = o
                .lanyard
                .decrypt_push_reply(&Actor::cli(), secrets, &bytes)
                .await?;
            write_new_file(&out, file.as_bytes())?;
            println!(
                "request file written to {}; upload it to Apple's Push Certificates Portal, then \
                 run `lanyard push-cert upload --cert` with the certificate Apple returns",
                out.display()
            );
        }
        PushCertCmd::Sign { vendor, out } => {
            let Some(signer) = vendor.signer()? else {
                bail!("give --vendor-p12 FILE and --apple-cert FILE (twice)");
            };
            let file = o.lanyard.sign_push_request(&Actor::cli(), &signer).await?;
            write_new_file(&out, file.as_bytes())?;
            println!(
                "request file written to {}; upload it to Apple's Push Certificates Portal",
                out.display()
            );
        }
        PushCertCmd::Upload {
            p12,
            password,
            cert,
            key,
            force,
        } => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let info = match (p12, cert, key) {
                (Some(p), _, _) => {
                    let der = read(&p)?;
                    let password = read_password(password, "PKCS#12 password")?;
                    o.lanyard
                        .set_push_certificate(
                            &Actor::cli(),
                            secrets,
                            &PushCertificateUpload::Pkcs12 {
                                der: &der,
                                password: &password,
                            },
                            force,
                        )
                        .await?
                }
                (None, Some(c), Some(k)) => {
                    let (cert, key) = (read(&c)?, read(&k)?);
                    o.lanyard
                        .set_push_certificate(
                            &Actor::cli(),
                            secrets,
                            &PushCertificateUpload::Pem {
                                cert: &cert,
                                key: &key,
                            },
                            force,
                        )
                        .await?
                }
                (None, Some(c), None) => {
                    let cert = read(&c)?;
                    o.lanyard
                        .complete_push_request(&Actor::cli(), secrets, &cert, force)
                        .await?
                }
                _ => bail!("give --cert FILE, --p12 FILE, or --cert FILE --key FILE"),
            };
            println!("push certificate stored");
            show(&info);
        }
        PushCertCmd::Show { out } => {
            let Some(info) = o.lanyard.push_certificate_info(secrets).await? else {
                bail!("no push certificate; upload one with `lanyard push-cert upload`");
            };
            if out.json {
                return print_json(&info);
            }
            show(&info);
        }
    }
    Ok(())
}
