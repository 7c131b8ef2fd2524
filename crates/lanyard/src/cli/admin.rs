//! `lanyard admin`: administrators and their API tokens.

use anyhow::Result;
use clap::Subcommand;

use lanyard_core::admins::Role;
use lanyard_core::Actor;

use super::{print_list, read_password, OutputArgs};
use crate::setup::Opened;

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
            print_list(&out, admins, &["name", "role", "enabled", "locked"], |a| {
                vec![
                    a.username,
                    a.role.as_str().into(),
                    a.enabled.to_string(),
                    a.locked.to_string(),
                ]
            })?;
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
            print_list(
                &out,
                tokens,
                &["id", "name", "created", "expires", "last used", "revoked"],
                |t| {
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
                },
            )?;
        }
    }
    Ok(())
}
