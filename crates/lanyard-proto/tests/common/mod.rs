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

/// The project's harness Python (`LANYARD_HARNESS_PYTHON`, else `<repo>/.venv-harness`) when it
/// can import `module`; otherwise `None` after a loud skip line (a failure when `CI=true`).
pub fn harness_python(module: &str) -> Option<PathBuf> {
    let python = std::env::var_os("LANYARD_HARNESS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.venv-harness/bin/python"
            ))
        });
    let usable = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if usable {
        return Some(python);
    }
    let why = format!(
        "{} cannot import {module} (run scripts/ensure-test-deps to make .venv-harness)",
        python.display()
    );
    let in_ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    assert!(!in_ci, "Python cross-check cannot run and CI=true: {why}");
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! SKIPPED Python cross-check: {why} !!!!!\n"
    );
    None
}
