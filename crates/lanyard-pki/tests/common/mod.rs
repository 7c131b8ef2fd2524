//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod scep_clients;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Is `bin` runnable? When not, print a loud SKIPPED line, and panic when `CI=true`
/// (CI installs every tool, so a missing one there is a broken pipeline, not a skip).
pub fn require_tool(bin: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!("\n==================== SKIPPED ====================");
        eprintln!("SKIPPED {test}: `{bin}` is not installed");
        eprintln!("=================================================\n");
        if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
            panic!("{test}: required tool `{bin}` missing while CI=true");
        }
    }
    found
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Run a command, returning (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write bytes to dir/name and return the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
