//! `lanyard idp …`: OpenID Connect identity providers for enrollment sign-in. Same domain calls
//! as the API, so every change is validated and audited alike. Client secrets are read from
//! standard input (`--client-secret-stdin`), never from the command line, and never printed.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use lanyard_core::identity_providers::{
    CreateIdentityProvider, IdentityProviderView, UpdateIdentityProvider, CALLBACK_PATH,
};
use lanyard_core::Actor;

use super::{print_json, print_list, read_line, OutputArgs};
use crate::setup::Opened;

#[derive(Debug, Subcommand)]
pub enum IdpCmd {
    /// Add a provider. Register `<public URL>/enroll/oidc/callback` as its redirect URI.
    Add {
        /// Short name: lower-case letters, digits and dashes.
        name: String,
        /// Issuer URL (discovery at <issuer>/.well-known/openid-configuration).
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        client_id: String,
        /// Read the client secret from standard input (omit for a public client).
        #[arg(long)]
        client_secret_stdin: bool,
        #[command(flatten)]
        opts: IdpOptions,
    },
    /// List providers.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show one provider.
    Show {
        name: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Change a provider.
    Update {
        name: String,
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        client_id: Option<String>,
        /// Read a new client secret from standard input.
        #[arg(long)]
        client_secret_stdin: bool,
        #[command(flatten)]
        opts: IdpOptions,
    },
    /// Remove a provider.
    Remove { name: String },
}

#[derive(Debug, Clone, Args)]
pub struct IdpOptions {
    /// What the sign-in button says ("Sign in with …").
    #[arg(long)]
    display_name: Option<String>,
    /// A scope besides `openid` (repeat the flag). Default: email, profile.
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// The claim carrying the email / managed Apple Account. Default: email
    #[arg(long)]
    email_claim: Option<String>,
    /// Create a Lanyard user on a person's first sign-in (true/false).
    #[arg(long)]
    allow_create_users: Option<bool>,
    /// Offer the provider on the sign-in page (true/false).
    #[arg(long)]
    enabled: Option<bool>,
}

fn read_secret() -> Result<String> {
    let s = read_line("client secret", "the client secret")?;
    if s.is_empty() {
        bail!("no client secret on standard input");
    }
    Ok(s)
}

fn print_one(p: &IdentityProviderView) {
    println!("name:               {}", p.name);
    println!("display name:       {}", p.display_name);
    println!("issuer:             {}", p.issuer);
    println!("client id:          {}", p.client_id);
    println!(
        "client secret:      {}",
        if p.client_secret_set { "set" } else { "none" }
    );
    println!("scopes:             openid {}", p.scopes.join(" "));
    println!("email claim:        {}", p.email_claim);
    println!("create users:       {}", p.allow_create_users);
    println!("enabled:            {}", p.enabled);
}

pub async fn idp(o: &Opened, secrets: &lanyard_pki::SecretBox, cmd: IdpCmd) -> Result<()> {
    let l = &o.lanyard;
    match cmd {
        IdpCmd::Add {
            name,
            issuer,
            client_id,
            client_secret_stdin,
            opts,
        } => {
            let client_secret = client_secret_stdin.then(read_secret).transpose()?;
            let p = l
                .create_identity_provider(
                    &Actor::cli(),
                    secrets,
                    CreateIdentityProvider {
                        name,
                        display_name: opts.display_name,
                        issuer,
                        client_id,
                        client_secret,
                        scopes: (!opts.scopes.is_empty()).then_some(opts.scopes),
                        email_claim: opts.email_claim,
                        allow_create_users: opts.allow_create_users,
                        enabled: opts.enabled,
                    },
                )
                .await?;
            println!(
                "added identity provider {} (redirect URI to register: <public URL>{CALLBACK_PATH})",
                p.name
            );
        }
        IdpCmd::List { out } => {
            let list = l.list_identity_providers().await?;
            print_list(
                &out,
                list,
                &[
                    "name",
                    "issuer",
                    "client id",
                    "email claim",
                    "create users",
                    "enabled",
                ],
                |p| {
                    vec![
                        p.name,
                        p.issuer,
                        p.client_id,
                        p.email_claim,
                        if p.allow_create_users { "yes" } else { "no" }.into(),
                        if p.enabled { "yes" } else { "no" }.into(),
                    ]
                },
            )?;
        }
        IdpCmd::Show { name, out } => {
            let p = l.identity_provider(&name).await?;
            if out.json {
                return print_json(&p);
            }
            print_one(&p);
        }
        IdpCmd::Update {
            name,
            issuer,
            client_id,
            client_secret_stdin,
            opts,
        } => {
            let client_secret = client_secret_stdin.then(read_secret).transpose()?;
            let p = l
                .update_identity_provider(
                    &Actor::cli(),
                    secrets,
                    &name,
                    UpdateIdentityProvider {
                        display_name: opts.display_name,
                        issuer,
                        client_id,
                        client_secret,
                        scopes: (!opts.scopes.is_empty()).then_some(opts.scopes),
                        email_claim: opts.email_claim,
                        allow_create_users: opts.allow_create_users,
                        enabled: opts.enabled,
                    },
                )
                .await?;
            println!("updated identity provider {}", p.name);
        }
        IdpCmd::Remove { name } => {
            l.delete_identity_provider(&Actor::cli(), &name).await?;
            println!("removed identity provider {name}");
        }
    }
    Ok(())
}
