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
    #[command(flatten)]
    Admin(AdminAction),
}

/// The sub-commands other than `serve`: each runs on the database and closes it when done.
#[derive(Debug, Subcommand)]
enum AdminAction {
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
    let command = match cli.command {
        Action::Serve(settings) => {
            let serve = config::ServeConfig::resolve(*settings)?;
            setup::init_tracing(g.log_format);
            return serve::run(g, serve, &cli.abm).await;
        }
        Action::Admin(command) => command,
    };
    // Only `migrate` and `serve` change the schema; every other command needs it current.
    let migrations = match command {
        AdminAction::Migrate => Migrations::Apply,
        _ => Migrations::Require,
    };
    let o = setup::open_store(g, migrations).await?;
    let result = admin(&o, g, &cli.abm, command).await;
    // Closed whether the command succeeded or not. Closing is what leaves a SQLite database
    // whole in its one file: its writer copies the write-ahead log into `lanyard.db` (and the
    // last connection removes the `-wal` file), so a file copied after a command (a backup
    // taken while the server is stopped) holds what the command wrote. PostgreSQL's
    // connections end with a goodbye instead of a dropped socket.
    o.lanyard.store().close().await;
    result
}

/// Runs an admin sub-command on the opened database.
async fn admin(
    o: &setup::Opened,
    g: &GlobalSettings,
    abm: &AbmSettings,
    command: AdminAction,
) -> Result<()> {
    match command {
        AdminAction::Migrate => {
            println!(
                "migrations applied ({} backend): {}",
                o.backend_name,
                o.migrations.join(", ")
            );
            Ok(())
        }
        AdminAction::User(c) => cli::user::user(o, c).await,
        AdminAction::Settings(c) => cli::enrollment_settings::settings(o, c).await,
        AdminAction::Device(c) => {
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            let push = setup::push_service(g, &o.lanyard, &secrets)?;
            let declarations = cli::declaration::service(&o.lanyard, &secrets, None);
            cli::device::device(o, c, Some(&push), &declarations).await
        }
        AdminAction::Command(c) => {
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            let push = setup::push_service(g, &o.lanyard, &secrets)?;
            cli::command::command(o, c, Some(&push)).await
        }
        AdminAction::PushCert(c) => {
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            cli::push_cert::push_cert(o, &secrets, g, c).await
        }
        AdminAction::Attribute(c) => cli::attribute::attribute(o, c).await,
        AdminAction::Admin(c) => cli::admin::admin(o, c).await,
        AdminAction::Audit(a) => cli::audit::audit(o, a).await,
        AdminAction::Abm(c) => cli::abm::run(o, g, abm, c).await,
        AdminAction::Idp(c) => cli::idp::idp(o, &setup::secret_box(g, &o.lanyard).await?, c).await,
        AdminAction::Declaration(c) => {
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            cli::declaration::declaration(&o.lanyard, &secrets, c).await
        }
        AdminAction::Set(c) => {
            let secrets = setup::secret_box(g, &o.lanyard).await?;
            cli::set::set(&cli::declaration::service(&o.lanyard, &secrets, None), c).await
        }
    }
}
