//! `lanyard declaration`: declarative device management declarations. The same domain calls as
//! the admin API and the portal (`lanyard_core::declarations::DeclarationService`), so every
//! change is validated against Apple's schema and audited alike. Sets are `lanyard set`
//! (`set.rs`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use lanyard_core::declarations::{
    AssetData, DeclarationInput, DeclarationService, DeclarationUpdate, DeclarationView,
    EnrollmentDeclarativeStatus,
};
use lanyard_core::Actor;

use super::{print_json, print_table, OutputArgs};

/// Largest payload or asset file read.
const FILE_LIMIT: u64 = 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum DeclarationCmd {
    /// List declarations with how many Macs report each active and failing.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show one declaration (an asset's data is never shown).
    Show {
        identifier: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Add a declaration; its payload is checked against Apple's schema.
    Add {
        /// Apple's Type, e.g. com.apple.configuration.account.exchange.
        #[arg(long = "type")]
        declaration_type: String,
        /// Apple's Identifier: 1 to 64 letters, digits, '.', '-' or '_'.
        #[arg(long)]
        identifier: String,
        #[command(flatten)]
        content: ContentArgs,
    },
    /// Replace a declaration's payload (its type and identifier stay).
    Update {
        identifier: String,
        #[command(flatten)]
        content: ContentArgs,
    },
    /// Remove a declaration that no other declaration references.
    Remove { identifier: String },
}

#[derive(Debug, Args)]
pub struct ContentArgs {
    /// The payload as JSON text.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// A file holding the payload as JSON.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// For an asset: a file with the data Lanyard serves to the Macs it is assigned to.
    #[arg(long, requires_all = ["content_type", "public_url"])]
    asset_data_file: Option<PathBuf>,
    /// The asset data's media type, e.g. application/pem.
    #[arg(long)]
    content_type: Option<String>,
    /// The server's public URL (as given to `serve`): the asset data's URL is made under it.
    #[arg(long)]
    public_url: Option<String>,
}

impl ContentArgs {
    fn payload(&self) -> Result<Value> {
        let text = match (&self.payload, &self.payload_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => String::from_utf8(read_bounded(path)?)
                .with_context(|| format!("{} is not UTF-8 text", path.display()))?,
            (None, None) => bail!("give the payload with --payload or --payload-file"),
        };
        serde_json::from_str(&text).context("the payload is not JSON")
    }

    fn asset_data(&self) -> Result<Option<AssetData>> {
        let Some(path) = &self.asset_data_file else {
            return Ok(None);
        };
        Ok(Some(AssetData {
            content_type: self.content_type.clone().unwrap_or_default(),
            data: read_bounded(path)?,
        }))
    }
}

fn read_bounded(path: &PathBuf) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > FILE_LIMIT {
        bail!("{} is larger than {FILE_LIMIT} bytes", path.display());
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn print_declaration(d: &DeclarationView) -> Result<()> {
    println!("identifier:    {}", d.identifier);
    println!("type:          {}", d.declaration_type);
    println!("kind:          {}", d.kind);
    println!("server token:  {}", d.server_token);
    if d.has_asset_data {
        println!(
            "asset data:    {}",
            d.asset_content_type.as_deref().unwrap_or("-")
        );
    }
    println!("updated:       {}", d.updated_at.format("%Y-%m-%d %H:%M"));
    println!("payload:\n{}", serde_json::to_string_pretty(&d.payload)?);
    Ok(())
}

/// An enrollment's declarations' state and status items, as `device show` prints them.
pub fn print_declarative_status(st: &EnrollmentDeclarativeStatus) {
    println!("declarations:");
    print_table(
        &["identifier", "active", "valid", "current", "reported"],
        st.declarations
            .iter()
            .map(|d| {
                vec![
                    d.identifier.clone(),
                    d.active.to_string(),
                    d.valid.to_string(),
                    d.current.to_string(),
                    d.updated_at.format("%Y-%m-%d %H:%M").to_string(),
                ]
            })
            .collect(),
    );
    println!("status items:");
    print_table(
        &["item", "value", "reported"],
        st.status_items
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    i.value.to_string(),
                    i.updated_at.format("%Y-%m-%d %H:%M").to_string(),
                ]
            })
            .collect(),
    );
}

/// The service for these commands; `public_url` (needed only for asset data) is where asset
/// data URLs are made.
pub fn service(
    lanyard: &lanyard_core::Lanyard,
    secrets: &lanyard_pki::SecretBox,
    public_url: Option<&str>,
) -> DeclarationService {
    DeclarationService::new(lanyard.clone(), secrets.clone(), public_url.unwrap_or(""))
}

pub async fn declaration(
    lanyard: &lanyard_core::Lanyard,
    secrets: &lanyard_pki::SecretBox,
    cmd: DeclarationCmd,
) -> Result<()> {
    let actor = Actor::cli();
    let public_url = match &cmd {
        DeclarationCmd::Add { content, .. } | DeclarationCmd::Update { content, .. } => {
            content.public_url.as_deref()
        }
        _ => None,
    };
    let svc = &service(lanyard, secrets, public_url);
    match cmd {
        DeclarationCmd::List { out } => {
            let counts: HashMap<String, (i64, i64)> = svc
                .status_counts()
                .await?
                .into_iter()
                .map(|c| (c.identifier, (c.active, c.failing)))
                .collect();
            let list = svc.list().await?;
            if out.json {
                let rows: Vec<Value> = list
                    .iter()
                    .map(|d| {
                        let (active, failing) =
                            counts.get(&d.identifier).copied().unwrap_or_default();
                        serde_json::json!({
                            "identifier": d.identifier,
                            "type": d.declaration_type,
                            "kind": d.kind,
                            "server_token": d.server_token,
                            "active": active,
                            "failing": failing,
                        })
                    })
                    .collect();
                return print_json(&rows);
            }
            print_table(
                &["identifier", "type", "kind", "active", "failing"],
                list.into_iter()
                    .map(|d| {
                        let (active, failing) =
                            counts.get(&d.identifier).copied().unwrap_or_default();
                        vec![
                            d.identifier,
                            d.declaration_type,
                            d.kind.to_string(),
                            active.to_string(),
                            failing.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        DeclarationCmd::Show { identifier, out } => {
            let d = svc.get(&identifier).await?;
            if out.json {
                return print_json(&d);
            }
            print_declaration(&d)?;
        }
        DeclarationCmd::Add {
            declaration_type,
            identifier,
            content,
        } => {
            let d = svc
                .create(
                    &actor,
                    DeclarationInput {
                        declaration_type,
                        identifier,
                        payload: content.payload()?,
                        asset_data: content.asset_data()?,
                    },
                )
                .await?;
            println!(
                "added declaration {} ({}), server token {}",
                d.identifier, d.declaration_type, d.server_token
            );
        }
        DeclarationCmd::Update {
            identifier,
            content,
        } => {
            let d = svc
                .update(
                    &actor,
                    &identifier,
                    DeclarationUpdate {
                        payload: content.payload()?,
                        asset_data: content.asset_data()?,
                    },
                )
                .await?;
            println!(
                "saved declaration {}, server token {}",
                d.identifier, d.server_token
            );
        }
        DeclarationCmd::Remove { identifier } => {
            svc.delete(&actor, &identifier).await?;
            println!("removed declaration {identifier}");
        }
    }
    Ok(())
}
