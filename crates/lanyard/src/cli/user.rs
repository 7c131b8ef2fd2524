//! `lanyard user`: the people who enroll their Macs.

use anyhow::Result;
use clap::Subcommand;

use lanyard_core::users::{CreateUser, UpdateUser};
use lanyard_core::Actor;
use lanyard_store::ListQuery;

use super::{print_json, print_list, read_password, OutputArgs};
use crate::setup::Opened;

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
            print_list(
                &out,
                users,
                &["email", "name", "managed apple id", "enabled", "password"],
                |u| {
                    vec![
                        u.email,
                        u.display_name,
                        u.managed_apple_id.unwrap_or_else(|| "-".into()),
                        if u.enabled { "yes" } else { "no" }.into(),
                        if u.has_password { "set" } else { "-" }.into(),
                    ]
                },
            )?;
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
