//! The two stores and how they open: SQLite's file, read pool and exchange writer thread;
//! PostgreSQL's pool; the paired migrations (`migrations/sqlite`, `migrations/postgres`). What
//! they store is written once for both (see `dialect.rs`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments, PgPool, SqlitePool};

use crate::dialect::{Column, Dialect};
use crate::{Backend, PoolSettings, Result, StoreError};

/// The embedded default: one SQLite file in WAL mode with a busy timeout and foreign keys on.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// Serialises push bookkeeping's write transactions in this process (see
    /// `exchange.rs`): waiting here is a cheap async wait, waiting on SQLite's lock is
    /// its busy handler's sleep.
    pub(crate) write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The command exchange's own thread and connection (see `sqlite_writer.rs`).
    pub(crate) writer: std::sync::Arc<crate::sqlite_writer::SqliteWriter>,
}

/// PostgreSQL, for scale-out: any number of `lanyard serve` processes may share one database.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
    /// The enrollment rows the command exchange saw last (see `binding_memo.rs`).
    pub(crate) memo: std::sync::Arc<crate::binding_memo::BindingMemo>,
    /// The connections the command exchange keeps (see `exchange_connections.rs`).
    pub(crate) exchange_connections:
        std::sync::Arc<crate::exchange_connections::ExchangeConnections>,
}

/// Each connection's page cache, in KiB (SQLite's default is 2,000): the read pool's, the
/// exchange's writer's and its checkpointer's.
pub(crate) const SQLITE_PAGE_CACHE_KIB: u32 = 512;

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://` URL with the default
    /// [`PoolSettings`]. Does not migrate.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PoolSettings::default()).await
    }

    /// Opens (creating if missing, readable by its owner only) the database at a `sqlite://`
    /// URL. Does not migrate.
    pub async fn connect_with(url: &str, settings: PoolSettings) -> Result<Self> {
        Self::open(url, settings, true).await
    }

    /// Opens the database at a `sqlite://` URL only if its file exists
    /// ([`StoreError::NotFound`] with the path if not). Does not migrate.
    pub async fn connect_existing(url: &str, settings: PoolSettings) -> Result<Self> {
        Self::open(url, settings, false).await
    }

    async fn open(url: &str, settings: PoolSettings, create: bool) -> Result<Self> {
        if Backend::from_url(url)? != Backend::Sqlite {
            return Err(StoreError::InvalidUrl("expected a sqlite:// URL".into()));
        }
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let path = opts.get_filename();
        let text = path.to_string_lossy();
        let in_memory = text.is_empty() || text.starts_with(':');
        if in_memory {
            // The exchange's writer thread opens the file a second time.
            return Err(StoreError::InvalidUrl(
                "an in-memory SQLite database is not supported; name a file".into(),
            ));
        }
        if !create && !path.exists() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        private_database_files(path)?;
        // The read pool. The command exchange writes on its own thread (`sqlite_writer.rs`)
        // and other writes take `write_gate`, so these connections mostly read — the command
        // exchange, most of the devices' traffic, reads on the writer — and two are enough:
        // each is a thread of sqlx's with its own malloc arena and page cache
        // (docs/BENCHMARKS.md, "What the peak consists of"). An idle connection is closed
        // after a minute and its thread ends, so an idle server holds one.
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .min_connections(1)
            .idle_timeout(Some(Duration::from_secs(60)))
            // A file's connection cannot drop; sqlx's check of each one it hands out is a
            // round trip to the connection's thread.
            .test_before_acquire(false)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(
                opts.clone()
                    .pragma("cache_size", format!("-{SQLITE_PAGE_CACHE_KIB}")),
            )
            .await?;
        let writer =
            crate::sqlite_writer::SqliteWriter::start(opts.get_filename(), settings.sqlite_wal)
                .await?;
        Ok(Self {
            pool,
            write_gate: Default::default(),
            writer: std::sync::Arc::new(writer),
        })
    }

    /// Applies the SQLite migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        migrate(self).await
    }

    /// Names of the embedded migrations, in order (for `lanyard migrate` output and tests).
    pub fn migration_names() -> Vec<String> {
        migration_names(Self::migrator())
    }

    /// The embedded migrations this database has not applied (all of them for an empty
    /// database). Reads only: nothing is created.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        pending_migrations(self).await
    }

    /// Closes the read pool, then the exchange's writer and checkpoint connections: the writer
    /// copies the write-ahead log into the database file and empties it, and the last
    /// connection to close removes it, so a clean stop leaves the database in one file.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

impl PostgresStore {
    /// Connects to a `postgres://` URL with the default [`PoolSettings`]. Does not migrate.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PoolSettings::default()).await
    }

    /// Connects to a `postgres://` URL. Does not migrate. The first connection is made
    /// directly, so a failure names its cause ("cannot connect to PostgreSQL at host:port:
    /// Connection refused") rather than only the pool's timeout.
    pub async fn connect_with(url: &str, settings: PoolSettings) -> Result<Self> {
        use sqlx::{ConnectOptions, Connection};
        if Backend::from_url(url)? != Backend::Postgres {
            return Err(StoreError::InvalidUrl("expected a postgres:// URL".into()));
        }
        let opts =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let place = format!("{}:{}", opts.get_host(), opts.get_port());
        let cannot = |cause: String| {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL at {place}: {cause}"))
        };
        match tokio::time::timeout(settings.acquire_timeout, opts.connect()).await {
            Err(_) => {
                return Err(cannot(format!(
                    "no answer within {} s",
                    settings.acquire_timeout.as_secs_f64()
                )))
            }
            Ok(Err(sqlx::Error::Io(e))) => return Err(cannot(e.to_string())),
            Ok(Err(sqlx::Error::Tls(e))) => return Err(cannot(format!("TLS: {e}"))),
            Ok(Err(sqlx::Error::Database(e))) => return Err(cannot(e.message().to_string())),
            Ok(Err(e)) => return Err(cannot(e.to_string())),
            Ok(Ok(first)) => {
                let _ = first.close().await;
            }
        }
        // sqlx checks every connection it hands out with a round trip to the database by
        // default; only one idle for `CHECK_AFTER` or longer is checked here (a connection in
        // steady use is known to work; PgBouncer's `server_check_delay` makes the same trade).
        // The command exchange keeps up to `KEPT` connections of its own
        // (`exchange_connections.rs`), on top of the 16 the rest of the server shares.
        let pool = PgPoolOptions::new()
            .max_connections(16 + crate::exchange_connections::KEPT as u32)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= crate::exchange_connections::CHECK_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(opts)
            .await?;
        Ok(Self {
            pool,
            memo: Default::default(),
            exchange_connections: Default::default(),
        })
    }

    /// Applies the PostgreSQL migrations that are not applied yet (safe to race: sqlx takes an
    /// advisory lock).
    pub async fn migrate(&self) -> Result<()> {
        migrate(self).await
    }

    pub fn migration_names() -> Vec<String> {
        migration_names(Self::migrator())
    }

    /// The embedded migrations this database has not applied (all of them for an empty
    /// database). Reads only: nothing is created.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        pending_migrations(self).await
    }

    pub async fn close(&self) {
        self.exchange_connections.close();
        self.pool.close().await;
    }
}

/// Applies a database's embedded migrations that are not applied yet.
async fn migrate<S, DB>(store: &S) -> Result<()>
where
    S: Dialect<Db = DB>,
    DB: Database,
    DB::Connection: Migrate,
{
    S::migrator().run(store.pool()).await?;
    Ok(())
}

/// `0001_foundation`-style names of a migrator's migrations; the two backends' lists are equal.
fn migration_names(m: &Migrator) -> Vec<String> {
    m.iter()
        .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
        .collect()
}

/// The names of a database's embedded migrations it has not applied, read without creating
/// sqlx's migration table.
async fn pending_migrations<S, DB>(store: &S) -> Result<Vec<String>>
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    bool: Column<DB>,
    i64: Column<DB>,
{
    let table: bool = sqlx::query_scalar(S::HAS_MIGRATION_TABLE)
        .fetch_one(store.pool())
        .await?;
    let applied: Vec<i64> = if table {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(store.pool())
            .await?
    } else {
        Vec::new()
    };
    let m = S::migrator();
    Ok(m.iter()
        .zip(migration_names(m))
        .filter(|(m, _)| !applied.contains(&m.version))
        .map(|(_, name)| name)
        .collect())
}

/// The SQLite database file and its `-wal` and `-shm` companions are readable by their owner
/// only: the file is created 0600 before SQLite opens it (SQLite gives the companions the
/// database file's mode), and an existing set is narrowed to 0600.
fn private_database_files(path: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let text = path.to_string_lossy();
        if text.is_empty() || text.starts_with(':') {
            return Ok(()); // in memory
        }
        let io = |what: &str, p: &std::path::Path, e: std::io::Error| {
            StoreError::Unavailable(format!("cannot {what} {}: {e}", p.display()))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            // A missing directory and the like: SQLite reports it in its own words.
            Err(_) => return Ok(()),
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = std::path::PathBuf::from(format!("{text}{suffix}"));
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| io("make private", &file, e))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean close leaves no write-ahead log beside the database (the writer's connection
    /// closes last and checkpoints it), and exchanges after it fail instead of waiting.
    #[tokio::test]
    async fn a_closed_sqlite_store_leaves_no_log() {
        let dir =
            std::env::temp_dir().join(format!("lanyard-close-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("lanyard.db");
        let store = SqliteStore::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let wal = dir.join("lanyard.db-wal");
        assert!(wal.exists(), "migrations write through the log");
        store.close().await;
        assert!(!wal.exists(), "the log is left after a clean close");
        assert!(db.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The pool no longer checks every connection it hands out with a round trip, only one
    /// idle for a second or longer: a database restarted while the pool was idle costs no
    /// request.
    #[tokio::test]
    async fn postgres_connections_broken_while_idle_cost_no_request() {
        let Some(db) = lanyard_testkit::scratch_db::ScratchDb::for_test(
            "lanyard_pool",
            "the pool's check of idle connections",
        )
        .await
        else {
            return;
        };
        let store = PostgresStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        // Two connections in the pool, both idle afterwards.
        let (a, b) = tokio::join!(store.pool.acquire(), store.pool.acquire());
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let mut pids = Vec::new();
        for conn in [&mut a, &mut b] {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            pids.push(pid);
        }
        drop((a, b));
        // Ended from a connection outside the pool, as a restart of the database would.
        let mut outside = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
            .await
            .unwrap();
        for pid in &pids {
            let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&mut outside)
                .await
                .unwrap();
        }
        tokio::time::sleep(crate::exchange_connections::CHECK_AFTER).await;
        for _ in 0..4 {
            let pending = store.pending_migrations().await.unwrap();
            assert!(pending.is_empty(), "{pending:?}");
        }
        let _ = sqlx::Connection::close(outside).await;
        store.close().await;
        drop(db);
    }

    #[test]
    fn migrations_are_paired() {
        let names = SqliteStore::migration_names();
        assert_eq!(names, PostgresStore::migration_names());
        assert_eq!(names.first().map(String::as_str), Some("0001_foundation"));
    }
}
