//! Access to the team's shared reference material (`../shared` beside the repository):
//! Apple's schema data and real device captures. Tests skip loudly when it is absent, and fail
//! instead when `CI=true`.

#![allow(dead_code)]

use std::path::PathBuf;

/// The shared folder, relative to this crate: `<repo>/../shared`.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared"))
}

/// `Some(path)` of a folder under the shared folder, or `None` after printing a loud skip line.
/// Panics when the folder is missing and the environment says `CI=true`.
pub fn shared_path(rel: &str) -> Option<PathBuf> {
    let p = shared_dir().join(rel);
    if p.exists() {
        return Some(p);
    }
    let in_ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    assert!(
        !in_ci,
        "../shared missing ({rel} not found) and CI=true: the shared reference material is required in CI"
    );
    // Written to the process's stderr directly, past the test harness's output capture, so
    // the skip shows in a normal `cargo test` run.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: ../shared missing ({rel} not found); test did not run"
    );
    None
}

/// Reads one fixture file under the shared folder (after [`shared_path`] found its folder).
pub fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
