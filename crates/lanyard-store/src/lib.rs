//! Lanyard's storage: narrow traits for each kind of record, composed into [`Store`], and two
//! backends that implement all of them — SQLite (the embedded default) and PostgreSQL (for several
//! stateless server processes on one database).
//!
//! Owns: the record types, the traits, the SQL, the paired migrations (`migrations/sqlite` and
//! `migrations/postgres`, identical file names) and the conformance suite that runs every storage
//! test against both backends.
//!
//! Layout: one file per kind of record holds its rows, its trait and its SQL (`users.rs`,
//! `settings.rs`, `admins.rs`, `throttle.rs`, `audit.rs`, `pki.rs`, `enrollments.rs`,
//! `commands.rs`, `exchange.rs`, `abm.rs`, `idp.rs`, `declarations.rs`, `listings.rs`). The SQL
//! is written once, as generic Rust over the `Dialect` trait (`dialect.rs`), which holds every
//! place the two databases differ; [`SqliteStore`] and [`PostgresStore`] implement it
//! (`connect.rs` opens them). The command exchange alone is two algorithms, one per database
//! (`exchange.rs`, with SQLite's writer thread in `sqlite_writer.rs`, PostgreSQL's memory of the
//! rows it last saw in `binding_memo.rs` and the connections it keeps in
//! `exchange_connections.rs`).
//!
//! Must not depend on: HTTP, the domain services (`lanyard-core`), PKI, or anything that does I/O
//! other than the database. Policy (what is valid, who may change what) belongs to `lanyard-core`;
//! every mutating call takes an [`Audit`] line and writes it in the same transaction as the change.

mod abm;
mod admins;
mod audit;
mod binding_memo;
mod commands;
mod connect;
mod declarations;
mod dialect;
mod enrollments;
mod exchange;
mod exchange_connections;
mod idp;
mod listings;
mod pki;
mod settings;
mod sqlite_writer;
mod throttle;
mod users;
mod values;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Database, Executor, IntoArguments};

use crate::dialect::Dialect;

pub use abm::{AbmDevice, AbmStore, AbmToken, AbmTokenUpload};
pub use admins::{Admin, AdminSession, AdminStore, ApiToken};
pub use audit::{Audit, AuditEntry, AuditFilter, AuditStore};
pub use commands::{
    CommandOutcome, CommandRecord, CommandStore, NewCommand, NextCommand, PushTargetRow,
    QueuedMatching, TargetSummary, RESULTS_KEEP_PER_ENROLLMENT,
};
pub use connect::{PostgresStore, SqliteStore};
pub use declarations::*;
pub use enrollments::{
    AccessTokenRow, AuthenticateRecord, Enrollment, EnrollmentFlow, EnrollmentStore,
    IdentityRecord, IdentityRenewal, NewEnrollment, ProfileIds, TokenUpdateRecord,
};
pub use exchange::*;
pub use idp::*;
pub use listings::{
    AuditSearch, DeviceListQuery, DeviceSort, ListingStore, Paged, MAX_DEVICE_LIST,
};
pub use pki::{PkiMaterial, PkiStore};
pub use settings::{AttributeStore, CustomAttributeRow, SettingsStore};
pub use throttle::{Reservation, SignInKind, ThrottleKey, ThrottlePolicy, ThrottleStore};
pub use users::{ListQuery, NewUser, User, UserChange, UserStore};
pub use values::*;

/// Storage errors. `Conflict` and `NotFound` are expected outcomes a caller maps to 409/404.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database cannot be reached or gave no connection in time (PostgreSQL down, the
    /// pool's acquire timeout passed, the connection dropped). Callers answer "try again
    /// later" (503), not "internal error"; the text names the cause.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write larger than the store keeps (see [`INVENTORY_LIMIT`]); nothing was written.
    #[error("too large: {0}")]
    TooLarge(String),
    /// An error of SQLite's command-exchange connection (`sqlite_writer.rs`).
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.extended_code,
                    ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
            {
                StoreError::Conflict(e.to_string())
            }
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    ffi::ErrorCode::DatabaseBusy | ffi::ErrorCode::DatabaseLocked
                ) =>
            {
                StoreError::Unavailable(format!("SQLite: {e}"))
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_string())
            }
            sqlx::Error::RowNotFound => StoreError::NotFound("row".into()),
            sqlx::Error::PoolTimedOut => {
                StoreError::Unavailable("no database connection within the acquire timeout".into())
            }
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                StoreError::Unavailable("the database connection pool is closed".into())
            }
            sqlx::Error::Io(io) => StoreError::Unavailable(format!("connection lost: {io}")),
            sqlx::Error::Tls(tls) => StoreError::Unavailable(format!("TLS: {tls}")),
            // PostgreSQL's connection-exception class (08…), and "shutting down" / "starting
            // up" / "too many connections".
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")
                }) =>
            {
                StoreError::Unavailable(db.message().to_string())
            }
            _ => StoreError::Database(e),
        }
    }
}

/// Maps a unique violation to a `Conflict` in the caller's words (`message()`) rather than the
/// database's; every other error as [`StoreError::from`] maps it.
pub(crate) fn conflict_as(
    message: impl FnOnce() -> String,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::Conflict(message()),
        other => other,
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How a backend's connection pool behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// How long a query waits for a connection (a free one, or a new one being made) before it
    /// fails with [`StoreError::Unavailable`]. Also bounds the first connection at start-up.
    pub acquire_timeout: std::time::Duration,
    /// How SQLite's write-ahead log is checkpointed and kept short (SQLite only).
    pub sqlite_wal: SqliteWal,
}

/// How SQLite's write-ahead log is checkpointed and kept short (see `sqlite_writer.rs`).
///
/// A checkpoint copies the log's pages into the database file, but the log file only starts
/// over from its beginning when a writer begins while every frame in it has been copied. Under
/// a steady stream of exchanges a background checkpoint never catches the writer, so without
/// more the log would grow for as long as the stream lasts (a 10,000-device fan-out left a
/// 376 MB log beside a 33 MB database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteWal {
    /// How often the background thread runs a PASSIVE checkpoint when something was written.
    pub checkpoint_every: std::time::Duration,
    /// When that checkpoint finds the log this many frames long (one frame per 4 KiB page) or
    /// longer, the writer thread checkpoints too, between two groups, so that its next
    /// transaction starts the log over.
    pub restart_after_frames: u32,
}

impl Default for SqliteWal {
    fn default() -> Self {
        Self {
            checkpoint_every: std::time::Duration::from_millis(500),
            // SQLite's own automatic checkpoint threshold (about 4 MiB of log).
            restart_after_frames: 1000,
        }
    }
}

impl PoolSettings {
    /// The default acquire timeout: long enough for a busy pool, short enough that a request
    /// against a stopped database fails fast.
    pub const DEFAULT_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT,
            sqlite_wal: SqliteWal::default(),
        }
    }
}

/// The current time at the precision both backends keep (microseconds), so values read back
/// compare equal to values written.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}

/// Everything Lanyard stores, as one object the domain services hold.
#[async_trait]
pub trait Store:
    UserStore
    + SettingsStore
    + AttributeStore
    + AdminStore
    + ThrottleStore
    + AuditStore
    + PkiStore
    + EnrollmentStore
    + CommandStore
    + ListingStore
    + AbmStore
    + IdentityProviderStore
    + CommandExchangeStore
    + DeclarationStore
{
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;
    /// A cheap round trip to the database, for health checks.
    async fn ping(&self) -> Result<()>;
    /// Closes the store's connections, after its last use (a clean stop): SQLite's
    /// write-ahead log is then copied into the database file, and removed when this process
    /// was its last user.
    async fn close(&self);
}

#[async_trait]
impl<S, DB> Store for S
where
    S: Dialect<Db = DB>
        + UserStore
        + SettingsStore
        + AttributeStore
        + AdminStore
        + ThrottleStore
        + AuditStore
        + PkiStore
        + EnrollmentStore
        + CommandStore
        + ListingStore
        + AbmStore
        + IdentityProviderStore
        + CommandExchangeStore
        + DeclarationStore,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    fn backend(&self) -> &'static str {
        S::NAME
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    async fn close(&self) {
        self.close_connections().await
    }
}

/// Which backend a database URL names; anything else is a clear error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Backend> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "" => Err(StoreError::InvalidUrl(
                "a database URL must start with sqlite:// or postgres://".into(),
            )),
            other => Err(StoreError::InvalidUrl(format!(
                "unsupported scheme `{other}:`; use sqlite:// or postgres://"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_url() {
        assert_eq!(
            Backend::from_url("sqlite:///var/lib/lanyard/lanyard.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("postgres://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        let err = Backend::from_url("mysql://h/db")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid database URL: unsupported scheme `mysql:`; use sqlite:// or postgres://")
        );
        assert!(Backend::from_url("lanyard.db").is_err());
    }
}
