//! `lanyard`: the server binary and its admin sub-commands. The composition root — the only
//! place that names concrete storage backends and wires configuration, PKI, storage, the domain
//! and HTTP together.

// The doc comments on the clap structs are the `--help` text, written for a terminal: they name
// placeholders such as `<data-dir>` and bare URLs, which rustdoc would read as HTML and links.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

mod cli;
mod config;
mod connections;
mod serve;
mod settings;
mod setup;

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
struct Cli<A: Subcommand = Action> {
    #[command(flatten)]
    config: ConfigFile,
    #[command(flatten)]
    global: GlobalSettings,
    #[command(flatten)]
    abm: AbmSettings,
    #[command(subcommand)]
    command: A,
}

/// `serve` as the only sub-command: what a server's start parses first, without building the
/// admin sub-commands' arguments (0.4 MB of code every start ran). Whatever it does not take —
/// another sub-command, `--help`, `--version`, a mistake — is parsed again by the whole
/// [`Cli`], which answers it; what it takes means the same to the whole [`Cli`].
#[derive(Debug, Subcommand)]
enum ServeOnly {
    Serve(Box<ServeSettings>),
}

impl From<Cli<ServeOnly>> for Cli {
    fn from(cli: Cli<ServeOnly>) -> Cli {
        let Cli {
            config,
            global,
            abm,
            command: ServeOnly::Serve(serve),
        } = cli;
        Cli {
            config,
            global,
            abm,
            command: Action::Serve(serve),
        }
    }
}

/// The command line with every setting layered (see `settings::parse`).
fn parse_command_line(
    args: &[std::ffi::OsString],
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Cli> {
    match settings::parse::<Cli<ServeOnly>>(args, env) {
        Ok(serve) => Ok(serve.into()),
        Err(_) => settings::parse::<Cli>(args, env),
    }
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
    User(cli::user::UserCmd),
    /// Enrollment settings.
    #[command(subcommand)]
    Settings(cli::enrollment_settings::SettingsCmd),
    /// Enrolled devices.
    #[command(subcommand)]
    Device(cli::device::DeviceCmd),
    /// MDM commands.
    #[command(subcommand)]
    Command(cli::command::CommandCmd),
    /// The APNs MDM push certificate.
    #[command(subcommand)]
    PushCert(cli::push_cert::PushCertCmd),
    /// Custom attribute definitions.
    #[command(subcommand)]
    Attribute(cli::attribute::AttributeCmd),
    /// Administrators and API tokens.
    #[command(subcommand)]
    Admin(cli::admin::AdminCmd),
    /// The audit log.
    Audit(cli::audit::AuditArgs),
    /// Apple Business Manager: server tokens, discovery registration and device sync.
    #[command(subcommand, alias = "token")]
    Abm(cli::abm::AbmCmd),
    /// OpenID Connect identity providers for enrollment sign-in.
    #[command(subcommand)]
    Idp(cli::idp::IdpCmd),
    /// Declarative device management declarations (checked against Apple's schema).
    #[command(subcommand)]
    Declaration(cli::declaration::DeclarationCmd),
    /// Declaration sets: their members and whom they are assigned to.
    #[command(subcommand)]
    Set(cli::set::SetCmd),
}

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match parse_command_line(&args, &|name| std::env::var_os(name)) {
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
            let o = setup::open_store(g, Migrations::Apply).await?;
            on_store(o, async |o| {
                println!(
                    "migrations applied ({} backend): {}",
                    o.backend_name,
                    o.migrations.join(", ")
                );
                Ok(())
            })
            .await
        }
        Action::User(c) => on_store(open().await?, async |o| cli::user::user(o, c).await).await,
        Action::Settings(c) => {
            on_store(open().await?, async |o| {
                cli::enrollment_settings::settings(o, c).await
            })
            .await
        }
        Action::Device(c) => {
            on_store(open().await?, async |o| {
                let secrets = setup::secret_box(g, &o.lanyard).await?;
                let push = setup::push_service(g, &o.lanyard, &secrets)?;
                let declarations = cli::declaration::service(&o.lanyard, &secrets, None);
                cli::device::device(o, c, Some(&push), &declarations).await
            })
            .await
        }
        Action::Command(c) => {
            on_store(open().await?, async |o| {
                let secrets = setup::secret_box(g, &o.lanyard).await?;
                let push = setup::push_service(g, &o.lanyard, &secrets)?;
                cli::command::command(o, c, Some(&push)).await
            })
            .await
        }
        Action::PushCert(c) => {
            on_store(open().await?, async |o| {
                let secrets = setup::secret_box(g, &o.lanyard).await?;
                cli::push_cert::push_cert(o, &secrets, g, c).await
            })
            .await
        }
        Action::Attribute(c) => {
            on_store(open().await?, async |o| {
                cli::attribute::attribute(o, c).await
            })
            .await
        }
        Action::Admin(c) => on_store(open().await?, async |o| cli::admin::admin(o, c).await).await,
        Action::Audit(a) => on_store(open().await?, async |o| cli::audit::audit(o, a).await).await,
        Action::Abm(c) => {
            on_store(open().await?, async |o| {
                cli::abm::run(o, g, &cli.abm, c).await
            })
            .await
        }
        Action::Idp(c) => {
            on_store(open().await?, async |o| {
                cli::idp::idp(o, &setup::secret_box(g, &o.lanyard).await?, c).await
            })
            .await
        }
        Action::Declaration(c) => {
            on_store(open().await?, async |o| {
                let secrets = setup::secret_box(g, &o.lanyard).await?;
                cli::declaration::declaration(&o.lanyard, &secrets, c).await
            })
            .await
        }
        Action::Set(c) => {
            on_store(open().await?, async |o| {
                let secrets = setup::secret_box(g, &o.lanyard).await?;
                cli::set::set(&cli::declaration::service(&o.lanyard, &secrets, None), c).await
            })
            .await
        }
    }
}

/// Runs an admin command on the opened database, then closes it, whether the command succeeded
/// or not. Closing is what leaves a SQLite database whole in its one file: its last connection
/// copies the write-ahead log into `lanyard.db` and removes the `-wal` file, so a file copied
/// after a command (a backup taken while the server is stopped) holds what the command wrote.
/// PostgreSQL's connections end with a goodbye instead of a dropped socket.
async fn on_store(
    o: setup::Opened,
    command: impl AsyncFnOnce(&setup::Opened) -> Result<()>,
) -> Result<()> {
    let result = command(&o).await;
    o.lanyard.store().close().await;
    result
}
