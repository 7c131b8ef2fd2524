//! Headless Chromium through playwright-core, for the tests that drive a real browser
//! (`tests/browser/*.mjs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the browser scripts and their packages are.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Whether the browser, node and the scripts' packages are here; skips loudly (fails in CI).
pub fn tools_present() -> bool {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("/usr/bin/chromium (apt-get install chromium)");
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node");
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        missing.push("playwright-core (npm ci in crates/lanyard/tests/browser)");
    }
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the browser tests need {what} under CI=true; run scripts/ensure-test-deps");
    }
    eprintln!(
        "\n!!!!! SKIPPED: the browser tests need {what}; run scripts/ensure-test-deps !!!!!\n"
    );
    false
}
