//! `lanyard abm …`: Apple Business Manager server tokens from the server host, and what the
//! ABM settings (shared with `lanyard serve`) make of the ABM client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use lanyard_apple::abm::AbmOptions;
use lanyard_core::abm::{AbmService, AbmSettings, AbmTokenView};
use lanyard_core::Actor;

use crate::settings::{AbmSettings as AbmFlags, GlobalSettings};
use crate::setup::{self, Opened};

impl crate::settings::AbmSettings {
    /// The service's settings; `public_url` gives the discovery URL to register.
    pub fn settings(&self, public_url: Option<&str>) -> Result<AbmSettings> {
        if self.abm_sync_lease <= self.abm_timeout {
            anyhow::bail!(
                "--abm-sync-lease ({} s) must be longer than --abm-timeout ({} s): a sync renews \
                 its lease between ABM requests",
                self.abm_sync_lease,
                self.abm_timeout
            );
        }
        let extra_ca_pem = match &self.abm_ca_cert {
            Some(p) => Some(
                std::fs::read(p)
                    .with_context(|| format!("cannot read --abm-ca-cert {}", p.display()))?,
            ),
            None => None,
        };
        Ok(AbmSettings {
            options: AbmOptions {
                base_url: self.abm_url.clone(),
                extra_ca_pem,
                timeout: Duration::from_secs(self.abm_timeout),
                ..Default::default()
            },
            page_size: self.abm_page_size,
            discovery_url: public_url.map(discovery_url),
            lease: Duration::from_secs(self.abm_sync_lease),
        })
    }
}

/// The service-discovery URL registered at ABM: the server's well-known discovery document.
pub fn discovery_url(public_url: &str) -> String {
    format!(
        "{}/.well-known/com.apple.remotemanagement",
        public_url.trim_end_matches('/')
    )
}

#[derive(Debug, Subcommand)]
pub enum AbmCmd {
    /// Make a key pair for a new token; prints the certificate to upload to ABM.
    New {
        name: String,
        /// Write the certificate here instead of printing it.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print (or write) a token's certificate (PEM) again.
    Certificate {
        name: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Upload the token file (.p7m) ABM gave for this token (also renews it).
    Upload {
        name: String,
        file: PathBuf,
        /// Make it the default token for account-driven enrollment.
        #[arg(long)]
        default: bool,
    },
    /// List tokens.
    List,
    /// Show one token.
    Show { name: String },
    /// Make a token the default for account-driven enrollment (moving it).
    SetDefault { name: String },
    /// Register <public URL>/.well-known/com.apple.remotemanagement at ABM with the default token.
    RegisterDiscovery {
        /// The server's public URL (as given to `serve`).
        #[arg(long, env = "LANYARD_PUBLIC_URL")]
        public_url: String,
    },
    /// Show the discovery URL recorded here and registered at ABM.
    Discovery,
    /// Remove the discovery registration at ABM.
    UnregisterDiscovery,
    /// Sync a token's devices now.
    Sync { name: String },
    /// List a token's devices.
    Devices {
        name: String,
        #[arg(long, default_value_t = 0)]
        offset: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Forget a token and its devices.
    Remove { name: String },
}

fn date(d: Option<chrono::DateTime<chrono::Utc>>) -> String {
    d.map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

fn show(v: &AbmTokenView) {
    println!("name:           {}", v.name);
    println!("state:          {}", v.state);
    println!("organisation:   {}", v.org_name.as_deref().unwrap_or("-"));
    println!(
        "ABM server:     {}",
        v.server_name.as_deref().unwrap_or("-")
    );
    match v.days_left {
        Some(d) => println!(
            "expires:        {} ({d} days left)",
            date(v.token_expires_at)
        ),
        None => println!("expires:        -"),
    }
    println!(
        "account driven: {}",
        if v.default_account_driven {
            "default"
        } else {
            "no"
        }
    );
    println!(
        "discovery URL:  {}",
        v.discovery_url.as_deref().unwrap_or("-")
    );
    println!(
        "last sync:      {} {}",
        date(v.last_sync_at),
        v.last_sync_status.as_deref().unwrap_or("")
    );
    println!("devices:        {}", v.devices);
    if let Some(w) = &v.warning {
        println!("WARNING:        {w}");
    }
}

fn write_or_print(pem: &str, output: Option<PathBuf>) -> Result<()> {
    match output {
        Some(p) => {
            std::fs::write(&p, pem).with_context(|| format!("cannot write {}", p.display()))?;
            println!("certificate written to {}", p.display());
        }
        None => print!("{pem}"),
    }
    Ok(())
}

pub async fn run(o: &Opened, data: &GlobalSettings, abm: &AbmFlags, cmd: AbmCmd) -> Result<()> {
    let secrets = setup::secret_box(data, &o.lanyard).await?;
    let public = match &cmd {
        AbmCmd::RegisterDiscovery { public_url } => {
            let u = url::Url::parse(public_url)
                .with_context(|| format!("--public-url {public_url:?} is not a URL"))?;
            if u.scheme() != "https" {
                bail!("--public-url must be https:// (ABM refuses other discovery URLs)");
            }
            Some(public_url.clone())
        }
        _ => None,
    };
    let svc = AbmService::new(o.lanyard.clone(), secrets, abm.settings(public.as_deref())?);
    let actor = Actor::cli();
    match cmd {
        AbmCmd::New { name, output } => {
            let pem = svc.new_token(&actor, &name).await?;
            eprintln!(
                "token `{name}` created: upload this certificate to Apple Business Manager \
                 (Preferences > Your MDM Servers), then `lanyard abm upload {name:?} FILE`"
            );
            write_or_print(&pem, output)?;
        }
        AbmCmd::Certificate { name, output } => {
            write_or_print(&svc.certificate_pem(&name).await?, output)?
        }
        AbmCmd::Upload {
            name,
            file,
            default,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let v = svc.upload(&actor, &name, &bytes, default).await?;
            println!("token file accepted");
            show(&v);
        }
        AbmCmd::List => {
            let list = svc.list().await?;
            println!(
                "{:<20} {:<14} {:<24} {:<17} {:<14} {:<17} {:>7}",
                "NAME",
                "STATE",
                "ORGANISATION",
                "EXPIRES",
                "ACCOUNT DRIVEN",
                "LAST SYNC",
                "DEVICES"
            );
            for v in &list {
                println!(
                    "{:<20} {:<14} {:<24} {:<17} {:<14} {:<17} {:>7}",
                    v.name,
                    v.state,
                    v.org_name.as_deref().unwrap_or("-"),
                    date(v.token_expires_at),
                    if v.default_account_driven {
                        "yes (default)"
                    } else {
                        "-"
                    },
                    date(v.last_sync_at),
                    v.devices
                );
            }
            for v in &list {
                if let Some(w) = &v.warning {
                    println!("WARNING: {w}");
                }
            }
        }
        AbmCmd::Show { name } => show(&svc.show(&name).await?),
        AbmCmd::SetDefault { name } => {
            let v = svc.set_default(&actor, &name).await?;
            println!(
                "`{}` is now the default token for account-driven enrollment",
                v.name
            );
        }
        AbmCmd::RegisterDiscovery { .. } => {
            let d = svc.register_discovery(&actor).await?;
            println!(
                "registered {} at Apple Business Manager with token `{}`",
                d.recorded_url.as_deref().unwrap_or("-"),
                d.token
            );
        }
        AbmCmd::Discovery => {
            let d = svc.discovery().await?;
            println!("token:        {}", d.token);
            println!("recorded:     {}", d.recorded_url.as_deref().unwrap_or("-"));
            println!("at ABM:       {}", d.abm_url.as_deref().unwrap_or("(none)"));
            if let Some(t) = d.abm_last_updated {
                println!("ABM updated:  {t}");
            }
        }
        AbmCmd::UnregisterDiscovery => {
            let d = svc.unregister_discovery(&actor).await?;
            println!("removed the discovery registration of token `{}`", d.token);
        }
        AbmCmd::Sync { name } => {
            let r = svc.sync(&actor, &name).await?;
            println!(
                "synced `{}`: {} page(s), {} device record(s) seen{}, {} device(s) stored",
                r.name,
                r.pages,
                r.devices_seen,
                if r.full_fetch { " (full fetch)" } else { "" },
                r.devices_total
            );
        }
        AbmCmd::Devices {
            name,
            offset,
            limit,
        } => {
            println!(
                "{:<14} {:<16} {:<6} {:<12} {:<10}",
                "SERIAL", "MODEL", "OS", "COLOR", "PROFILE"
            );
            for d in svc.devices(&name, offset, limit).await? {
                println!(
                    "{:<14} {:<16} {:<6} {:<12} {:<10}",
                    d.serial_number, d.model, d.os, d.color, d.profile_status
                );
            }
        }
        AbmCmd::Remove { name } => {
            svc.remove(&actor, &name).await?;
            println!("token `{name}` removed (delete the MDM server in ABM too)");
        }
    }
    Ok(())
}
