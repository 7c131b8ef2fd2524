//! `lanyard-fake-abm`: a fake Apple Business Manager for trying Lanyard's server-token
//! commands by hand (development and tests only).
//!
//! ```text
//! lanyard-fake-abm --cert abm.pem --token-out token.p7m [--listen 127.0.0.1:0] \
//!     [--devices 2500] [--token-days 365] [--fault 401] [--fault 429] [--fault 500]
//! ```
//!
//! Writes a token file encrypted to `--cert` (the certificate `lanyard abm new` printed),
//! prints one JSON line `{"url": …, "token_file": …, "devices": …}` and serves until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lanyard_testkit::fake_abm::{AbmFault, FakeAbm};

#[derive(Parser)]
#[command(
    name = "lanyard-fake-abm",
    version,
    about = "A fake Apple Business Manager (development and tests only)"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The MDM's ABM certificate (PEM) to encrypt the token file to.
    #[arg(long)]
    cert: PathBuf,
    /// Where to write the token file.
    #[arg(long)]
    token_out: PathBuf,
    /// Days until the token expires (negative: an already expired token).
    #[arg(long, default_value_t = 365, allow_negative_numbers = true)]
    token_days: i64,
    /// Macs assigned to the server.
    #[arg(long, default_value_t = 25)]
    devices: usize,
    /// Faults for the first calls after `/session`: 401, 429, 500, slow, garbage (repeatable).
    #[arg(long)]
    fault: Vec<String>,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let fake = FakeAbm::start_on(cli.listen).await?;
    fake.add_devices("C02FAKE", cli.devices);
    let cert = std::fs::read(&cli.cert)?;
    std::fs::write(&cli.token_out, fake.token_file(&cert, cli.token_days)?)?;
    let mut faults = Vec::new();
    for f in &cli.fault {
        faults.push(match f.as_str() {
            "401" => AbmFault::ExpireSession,
            "429" => AbmFault::TooManyRequests { retry_after: 1 },
            "500" => AbmFault::ServerError,
            "slow" => AbmFault::Slow(std::time::Duration::from_secs(5)),
            "garbage" => AbmFault::Garbage,
            other => anyhow::bail!("unknown fault {other:?}: use 401, 429, 500, slow or garbage"),
        });
    }
    fake.inject(faults);
    println!(
        "{}",
        serde_json::json!({
            "url": fake.url(),
            "token_file": cli.token_out.display().to_string(),
            "devices": fake.device_count(),
        })
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
