//! The OpenID Connect test provider: the certified `oidc-provider` package from npm, run by
//! `tests/oidc/provider.mjs` on loopback, for the tests that sign in through an identity
//! provider.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The client secret of the provider's clients `lanyard` and `lanyard-short`.
pub const CLIENT_SECRET: &str = "lanyard-test-secret";

/// The test provider, stopped on drop.
pub struct Provider {
    pub issuer: String,
    child: Child,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Starts the provider for a Lanyard at `lanyard_url`; `None` (loudly) when Node.js or the
/// provider's packages are missing outside CI (`scripts/ensure-test-deps` installs them).
pub fn start_provider(lanyard_url: &str) -> Option<Provider> {
    let dir = provider_dir();
    let missing = if !dir.join("node_modules/oidc-provider").is_dir() {
        Some("the provider's packages are not installed (npm ci in tests/oidc)".to_string())
    } else if Command::new("node").arg("--version").output().is_err() {
        Some("node is not installed".to_string())
    } else {
        None
    };
    if let Some(why) = missing {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the OpenID Connect test provider is required under CI=true: {why}");
        }
        eprintln!("\n!!!!! SKIPPED: {why}; the OpenID Connect end-to-end test did NOT run !!!!!\n");
        return None;
    }
    let mut child = Command::new("node")
        .arg("provider.mjs")
        .current_dir(&dir)
        .env(
            "REDIRECT_URI",
            format!("{lanyard_url}/enroll/oidc/callback"),
        )
        .env("NODE_NO_WARNINGS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading to the end: a closed pipe would kill the provider at its next line.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the test provider printed no issuer line");
    let issuer = line
        .strip_prefix("issuer ")
        .unwrap_or_else(|| panic!("unexpected provider output: {line}"))
        .to_string();
    Some(Provider { issuer, child })
}
