//! `/healthz`: whether this process can serve — the database answers, and the data directory's
//! file system has room. It answers within a bounded time whatever the database does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::AppState;

/// The longest `/healthz` waits for the database's answer.
pub const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `/healthz` waits for the file system's free-space answer.
const DISK_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/healthz` checks besides the database.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// The data directory whose file system must have room.
    pub data_dir: PathBuf,
    /// Below this many free bytes (for this user) the disk is `low` and the server unhealthy.
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskStatus {
    Ok,
    /// Less free space than the minimum.
    Low,
    /// The free space could not be read (the directory is gone, the file system hangs).
    Unknown,
}

#[derive(Debug, Serialize)]
struct Report {
    status: Status,
    /// The backend, `sqlite` or `postgres`.
    database: &'static str,
    database_status: Status,
    disk: DiskReport,
    /// Why the status is not `ok`, one line per problem.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct DiskReport {
    status: DiskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    free_bytes: Option<u64>,
    min_free_bytes: u64,
}

pub(crate) async fn healthz(State(s): State<AppState>) -> Response {
    let backend = s.lanyard.database_backend();
    let mut problems = Vec::new();
    let database_status =
        match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, s.lanyard.ping_database()).await {
            Ok(Ok(())) => Status::Ok,
            Ok(Err(e)) => {
                let cause = match &e {
                    lanyard_core::CoreError::Unavailable(why) => why.clone(),
                    other => other.chain().to_string(),
                };
                tracing::warn!(error = %cause, "health check: database unreachable");
                problems.push(format!("the {backend} database is unreachable"));
                Status::Unavailable
            }
            Err(_) => {
                tracing::warn!("health check: the database did not answer in time");
                problems.push(format!(
                    "the {backend} database did not answer within {} s",
                    DATABASE_CHECK_TIMEOUT.as_secs()
                ));
                Status::Unavailable
            }
        };
    let disk = disk_report(&s.health).await;
    match disk.status {
        DiskStatus::Ok => {}
        DiskStatus::Low => problems.push(format!(
            "the data directory's disk is nearly full: {} bytes free, at least {} needed",
            disk.free_bytes.unwrap_or(0),
            disk.min_free_bytes
        )),
        DiskStatus::Unknown => {
            problems.push("the data directory's free disk space cannot be read".into())
        }
    }
    let status = if problems.is_empty() {
        Status::Ok
    } else {
        Status::Unavailable
    };
    let code = match status {
        Status::Ok => StatusCode::OK,
        Status::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let report = Report {
        status,
        database: backend,
        database_status,
        disk,
        problems,
    };
    (code, Json(report)).into_response()
}

async fn disk_report(h: &HealthSettings) -> DiskReport {
    let dir = h.data_dir.clone();
    let free = tokio::time::timeout(
        DISK_CHECK_TIMEOUT,
        tokio::task::spawn_blocking(move || free_bytes(&dir)),
    )
    .await;
    let free_bytes = match free {
        Ok(Ok(Ok(n))) => Some(n),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "health check: cannot read the free disk space");
            None
        }
        _ => None,
    };
    let status = match free_bytes {
        Some(n) if n >= h.min_free_bytes => DiskStatus::Ok,
        Some(_) => DiskStatus::Low,
        None => DiskStatus::Unknown,
    };
    DiskReport {
        status,
        free_bytes,
        min_free_bytes: h.min_free_bytes,
    }
}

/// Bytes free for an unprivileged user on the file system holding `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> std::io::Result<u64> {
    Err(std::io::Error::other(
        "free space is only read on Unix-like systems",
    ))
}
