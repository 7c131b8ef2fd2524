//! `lanyard`: the server binary and its admin sub-commands. The composition root — the only
//! place that names concrete storage backends and wires configuration, PKI, storage, the domain
//! and HTTP together.

// The doc comments on the clap structs are the `--help` text, written for a terminal: they name
// placeholders such as `<data-dir>` and bare URLs, which rustdoc would read as HTML and links.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

mod commands;
mod config;
mod connections;
mod idp_cmd;
mod serve;
mod setup;
mod token_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

use config::{DataConfig, FileConfig, GlobalArgs, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "lanyard",
    version,
    about = "Lanyard: an Apple MDM server for account-driven User Enrollment"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(flatten)]
    abm: token_cmd::AbmArgs,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run the server (creates the data directory, CA and keys on first start).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Users who enroll their Macs.
    #[command(subcommand)]
    User(commands::UserCmd),
    /// Enrollment settings.
    #[command(subcommand)]
    Settings(commands::SettingsCmd),
    /// Enrolled devices.
    #[command(subcommand)]
    Device(commands::DeviceCmd),
    /// MDM commands.
    #[command(subcommand)]
    Command(commands::CommandCmd),
    /// The APNs MDM push certificate.
    #[command(subcommand)]
    PushCert(commands::PushCertCmd),
    /// Custom attribute definitions.
    #[command(subcommand)]
    Attribute(commands::AttributeCmd),
    /// Administrators and API tokens.
    #[command(subcommand)]
    Admin(commands::AdminCmd),
    /// The audit log.
    Audit(commands::AuditArgs),
    /// Apple Business Manager server tokens, discovery registration and device sync.
    #[command(subcommand)]
    Token(token_cmd::TokenCmd),
    /// OpenID Connect identity providers for enrollment sign-in.
    #[command(subcommand)]
    Idp(idp_cmd::IdpCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let file = FileConfig::load(cli.global.config.as_deref())?;
    let data = DataConfig::resolve(&cli.global, &file)?;
    match cli.command {
        Action::Serve(args) => {
            let serve = config::ServeConfig::resolve(&args, &file)?;
            setup::init_tracing(data.log_format);
            serve::run(data, serve, cli.abm).await
        }
        Action::Migrate => {
            let store = setup::open_store(&data).await?;
            println!(
                "migrations applied ({} backend): {}",
                store.backend_name,
                store.migrations.join(", ")
            );
            Ok(())
        }
        Action::User(c) => commands::user(&setup::open_store(&data).await?, c).await,
        Action::Settings(c) => commands::settings(&setup::open_store(&data).await?, c).await,
        Action::Device(c) => {
            let o = setup::open_store(&data).await?;
            let secrets = setup::secret_box(&data, &o.lanyard).await?;
            let push = setup::push_service(&data, &o.lanyard, &secrets)?;
            commands::device(&o, c, Some(&push)).await
        }
        Action::Command(c) => {
            let o = setup::open_store(&data).await?;
            let secrets = setup::secret_box(&data, &o.lanyard).await?;
            let push = setup::push_service(&data, &o.lanyard, &secrets)?;
            commands::command(&o, c, Some(&push)).await
        }
        Action::PushCert(c) => {
            let o = setup::open_store(&data).await?;
            commands::push_cert(&o, &setup::secret_box(&data, &o.lanyard).await?, c).await
        }
        Action::Attribute(c) => commands::attribute(&setup::open_store(&data).await?, c).await,
        Action::Admin(c) => commands::admin(&setup::open_store(&data).await?, c).await,
        Action::Audit(a) => commands::audit(&setup::open_store(&data).await?, a).await,
        Action::Token(c) => token_cmd::run(&data, &cli.abm, c).await,
        Action::Idp(c) => {
            let o = setup::open_store(&data).await?;
            idp_cmd::idp(&o, &setup::secret_box(&data, &o.lanyard).await?, c).await
        }
    }
}
