//! `lanyard-sim`: a simulated Mac for trying a Lanyard server by hand (development and tests
//! only).
//!
//! ```text
//! lanyard-sim enroll --server https://127.0.0.1:8443 --email ann@example.com \
//!     --password '…' [--sign-in-as EMAIL] [--managed-apple-id ID] \
//!     [--ownership employee|corporate|shared] [--attr NAME=VALUE]... \
//!     [--os-version 15.2] [--model Mac14,2] [--ca-cert ca.pem] [--insecure] [--commands]
//! ```
//!
//! Prints the enrollment report as JSON and exits 0, or prints `error: …` and exits 1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lanyard_testkit::{Channel, Ownership, SimMac, SimOptions};

#[derive(Parser)]
#[command(
    name = "lanyard-sim",
    version,
    about = "A simulated Mac for Lanyard (development and tests only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll a simulated Mac by account-driven User Enrollment and print the report.
    Enroll(EnrollArgs),
}

#[derive(clap::Args)]
struct EnrollArgs {
    /// The Lanyard server (where service discovery is asked), e.g. https://127.0.0.1:8443.
    #[arg(long)]
    server: String,
    /// The account signed in on the Mac (sent as user-identifier).
    #[arg(long)]
    email: String,
    /// The password typed on the sign-in page.
    #[arg(long, env = "LANYARD_SIM_PASSWORD", hide_env_values = true)]
    password: String,
    /// What is typed into the sign-in page's email field. Default: --email
    #[arg(long)]
    sign_in_as: Option<String>,
    /// The managed Apple Account the profile must assign. Default: --email
    #[arg(long)]
    managed_apple_id: Option<String>,
    /// The answer to the ownership question: employee, corporate or shared.
    #[arg(long, default_value = "employee", value_parser = parse_ownership)]
    ownership: Ownership,
    /// An answer for a custom attribute field, NAME=VALUE (repeatable).
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = parse_attr)]
    attrs: Vec<(String, String)>,
    /// The macOS version the Mac reports.
    #[arg(long, default_value = "15.2")]
    os_version: String,
    /// The Mac's model identifier.
    #[arg(long, default_value = "Mac14,2")]
    model: String,
    /// CA certificate(s) to trust (PEM or DER), e.g. the server's ca.pem; default: system roots.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Accept any TLS certificate (testing only).
    #[arg(long)]
    insecure: bool,
    /// After enrolling, poll both channels once and answer queued commands with the built-in
    /// responder; the output is then {"enrollment": …, "commands": […]}.
    #[arg(long)]
    commands: bool,
    /// Print the step log to stderr when enrollment fails.
    #[arg(long, short)]
    verbose: bool,
    /// Sign in through this OpenID Connect provider (its name in Lanyard) instead of the
    /// password form.
    #[arg(long)]
    oidc_provider: Option<String>,
    /// The email typed at the identity provider. Default: --email
    #[arg(long, requires = "oidc_provider")]
    oidc_login: Option<String>,
    /// The password typed at the identity provider. Default: --password
    #[arg(
        long,
        env = "LANYARD_SIM_OIDC_PASSWORD",
        hide_env_values = true,
        requires = "oidc_provider"
    )]
    oidc_password: Option<String>,
    /// The topic of the server's APNs push certificate (`lanyard push-cert show`): refuse a
    /// profile whose Topic is any other.
    #[arg(long)]
    push_topic: Option<String>,
}

fn parse_ownership(s: &str) -> Result<Ownership, String> {
    s.parse()
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

async fn enroll(args: EnrollArgs) -> Result<String, String> {
    let ca_cert_pem = match &args.ca_cert {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?),
        None => None,
    };
    let attrs: BTreeMap<String, String> = args.attrs.into_iter().collect();
    let oidc = args.oidc_provider.map(|provider| lanyard_testkit::SimOidc {
        provider,
        login: args.oidc_login.unwrap_or_else(|| args.email.clone()),
        password: args.oidc_password.unwrap_or_else(|| args.password.clone()),
        tamper: Default::default(),
    });
    let opts = SimOptions {
        oidc,
        server: args.server,
        email: args.email,
        password: args.password,
        sign_in_as: args.sign_in_as,
        managed_apple_id: args.managed_apple_id,
        ownership: args.ownership,
        attrs,
        os_version: args.os_version,
        model: args.model,
        ca_cert_pem,
        insecure: args.insecure,
        push_topic: args.push_topic,
    };
    let mut mac = SimMac::new(opts).map_err(|e| e.to_string())?;
    let report = match mac.enroll().await {
        Ok(r) => r,
        Err(e) => {
            if args.verbose {
                for s in mac.steps() {
                    eprintln!("  {s}");
                }
            }
            return Err(e.to_string());
        }
    };
    let json = if args.commands {
        let mut handled = mac
            .run_commands(Channel::Device, lanyard_testkit::sim::DEFAULT_MAX_COMMANDS)
            .await
            .map_err(|e| e.to_string())?;
        handled.extend(
            mac.run_commands(Channel::User, lanyard_testkit::sim::DEFAULT_MAX_COMMANDS)
                .await
                .map_err(|e| e.to_string())?,
        );
        serde_json::to_string_pretty(&serde_json::json!({
            "enrollment": report,
            "commands": handled,
        }))
    } else {
        serde_json::to_string_pretty(&report)
    };
    json.map_err(|e| format!("cannot write the report: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Enroll(args) => enroll(args).await,
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
