//! `lanyard`: the server binary and its admin sub-commands. The composition root — the only
//! place that names concrete storage backends and wires configuration, PKI, storage, the domain
//! and HTTP together.

// The doc comments on the clap structs are the `--help` text, written for a terminal: they name
// placeholders such as `<data-dir>` and bare URLs, which rustdoc would read as HTML and links.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

mod commands;
mod config;
mod connections;
mod declaration_cmd;
mod idp_cmd;
mod serve;
mod settings;
mod setup;
mod token_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

use settings::{AbmSettings, ConfigFile, GlobalSettings, ServeSettings};
use setup::Migrations;

#[derive(Debug, Parser)]
#[command(
    name = "lanyard",
    version,
    about = "Lanyard: an Apple MDM server for account-driven User Enrollment",
    after_help = settings::LAYERS_HELP
)]
struct Cli {
    #[command(flatten)]
    config: ConfigFile,
    #[command(flatten)]
    global: GlobalSettings,
    #[command(flatten)]
    abm: AbmSettings,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run the server (creates the data directory, CA and keys on first start; applies
    /// database migrations).
    #[command(after_help = settings::LAYERS_HELP)]
    Serve(Box<ServeSettings>),
    /// Apply database migrations and exit (every command but `serve` needs them applied).
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
    /// Declarative device management declarations (checked against Apple's schema).
    #[command(subcommand)]
    Declaration(declaration_cmd::DeclarationCmd),
    /// Declaration sets: their members and whom they are assigned to.
    #[command(subcommand)]
    Set(declaration_cmd::SetCmd),
}

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match settings::parse::<Cli>(&args, &|name| std::env::var_os(name)) {
        Ok(cli) => cli,
        Err(e) => match e.downcast_ref::<clap::Error>() {
            // Usage errors, --help and --version, as clap prints them.
            Some(usage) => usage.exit(),
            None => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
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
    let g = &cli.global;
    // Only `migrate` and `serve` change the schema; every other command needs it current.
    let open = || setup::open_store(g, Migrations::Require);
    match cli.command {
        Action::Serve(settings) => {
            let serve = config::ServeConfig::resolve(*settings)?;
            setup::init_tracing(g.log_format);
            serve::run(g, serve, &cli.abm).await
        }
        Action::Migrate => {
            let store = setup::open_store(g, Migrations::Apply).await?;
            println!(
                "migrations applied ({} backend): {}",
                store.backend_name,
                store.migrations.join(", ")
            );
            Ok(())
        }
        Action::User(c) => commands::user(&open().await?, c).await,
        Action::Settings(c) => commands::settings(&open().await?, c).await,
        Action::Device(c) => {
            let o = open().await?;
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            let push = setup::push_service(g, &o.lanyard, &secrets)?;
            let declarations = declaration_cmd::service(&o.lanyard, &secrets, None);
            commands::device(&o, c, Some(&push), &declarations).await
        }
        Action::Command(c) => {
            let o = open().await?;
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            let push = setup::push_service(g, &o.lanyard, &secrets)?;
            commands::command(&o, c, Some(&push)).await
        }
        Action::PushCert(c) => {
            let o = open().await?;
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            commands::push_cert(&o, &secrets, g, c).await
        }
        Action::Attribute(c) => commands::attribute(&open().await?, c).await,
        Action::Admin(c) => commands::admin(&open().await?, c).await,
        Action::Audit(a) => commands::audit(&open().await?, a).await,
        Action::Token(c) => token_cmd::run(g, &cli.abm, c).await,
        Action::Idp(c) => {
            let o = open().await?;
            idp_cmd::idp(&o, &setup::secret_box(g, &o.lanyard).await?, c).await
        }
        Action::Declaration(c) => {
            let o = open().await?;
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            declaration_cmd::declaration(&o.lanyard, &secrets, c).await
        }
        Action::Set(c) => {
            let o = open().await?;
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            declaration_cmd::set(&declaration_cmd::service(&o.lanyard, &secrets, None), c).await
        }
    }
}
