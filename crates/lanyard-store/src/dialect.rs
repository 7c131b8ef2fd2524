//! Where SQLite and PostgreSQL differ, in one place.
//!
//! Both databases take the same SQL for almost everything (numbered `$n` parameters,
//! `RETURNING`, `ON CONFLICT`), so each record kind's statements are written once, as generic
//! Rust over a [`Dialect`] (`impl<S, DB> UserStore for S where S: Dialect<Db = DB>, …`). What
//! differs is an associated item here, never a runtime branch on the backend's name.
//!
//! Rust does not carry a trait's where-clauses to the places that use it, so every generic item
//! repeats the short list of what it needs of the database: its connections execute
//! statements, its arguments bind, and the column types Lanyard uses ([`Column`], [`Param`])
//! are encoded and decoded.

use std::future::Future;

use sqlx::migrate::Migrator;
use sqlx::query::{Query, QueryAs};
use sqlx::{Database, Decode, Encode, FromRow, Pool, QueryBuilder, Transaction, Type};

use crate::{PostgresStore, SqliteStore};

/// One database's side of the shared SQL; implemented by [`SqliteStore`] and
/// [`PostgresStore`].
pub(crate) trait Dialect: Send + Sync + 'static {
    type Db: Database;

    /// `"sqlite"` or `"postgres"` (`Store::backend`).
    const NAME: &'static str;

    /// How a transaction that will write begins. SQLite: `BEGIN IMMEDIATE`, which takes the
    /// write lock at once (waiting up to the busy timeout for it); a deferred transaction that
    /// reads first and writes later can instead fail at once with "database is locked" when
    /// another connection wrote in between (SQLite, "Isolation In SQLite"; `BEGIN`
    /// documentation: a deferred transaction's upgrade to a write transaction may return
    /// `SQLITE_BUSY`). PostgreSQL: a plain `BEGIN` (its default isolation; row locks are taken
    /// by the statements themselves).
    const BEGIN_WRITE: &'static str;

    /// Ends the inner `SELECT … LIMIT n` of a claim (the next command, push requests), so that
    /// several server processes never claim the same row twice. SQLite has one writer: nothing.
    const CLAIM_LOCK: &'static str;

    /// Run before the last-administrator check of disabling or removing an administrator, with
    /// the protected role as `$1`: holds that role's enabled administrators until the
    /// transaction ends, so two administrators disabling or removing each other at once cannot
    /// each count the other as the one left (under READ COMMITTED both checks would pass).
    /// SQLite runs one write transaction at a time: nothing to lock.
    const LOCK_ADMINS: Option<&'static str>;

    /// Run before the default server token for account-driven enrollment moves: locks the
    /// rows it may move between in one order, so two moves at once wait for each other instead
    /// of both clearing the others and then meeting at the partial unique index (a conflict or
    /// a deadlock). SQLite's write transactions run one at a time: nothing to lock.
    const LOCK_TOKENS: Option<&'static str>;

    /// One row, one `bool` column: whether sqlx's migration table exists (read without
    /// creating it).
    const HAS_MIGRATION_TABLE: &'static str;

    /// The embedded migrations of this database (`migrations/sqlite`, `migrations/postgres`).
    fn migrator() -> &'static Migrator;

    fn pool(&self) -> &Pool<Self::Db>;

    /// Closes every connection the store holds (`Store::close`): SQLite's read pool and then
    /// its writer thread's connections; PostgreSQL's kept exchange connections and its pool.
    fn close_connections(&self) -> impl std::future::Future<Output = ()> + Send;

    /// Serialises push bookkeeping's write transactions in this process (SQLite: waiting here
    /// is a cheap async wait, waiting on SQLite's lock its busy handler's sleep); PostgreSQL
    /// needs none.
    fn write_gate(&self) -> Option<&tokio::sync::Mutex<()>>;

    /// How many rows a statement changed (sqlx has no generic accessor).
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// `qb.build()`, its arguments borrowing for no longer than the builder is borrowed. SQLite's
    /// arguments borrow what they bind, and only the concrete type lets that borrow shorten (so
    /// that the builder can be dropped after its statement ran).
    fn build<'a>(qb: &'a mut QueryBuilder<'_, Self::Db>) -> Query<'a, Self::Db, Args<'a, Self>>;

    /// `qb.build_query_as()`, shortened as [`Dialect::build`].
    fn build_as<'a, T>(
        qb: &'a mut QueryBuilder<'_, Self::Db>,
    ) -> QueryAs<'a, Self::Db, T, Args<'a, Self>>
    where
        T: for<'r> FromRow<'r, <Self::Db as Database>::Row>;

    /// Begins a transaction that will write (see [`Dialect::BEGIN_WRITE`]).
    fn begin_write(
        &self,
    ) -> impl Future<Output = sqlx::Result<Transaction<'static, Self::Db>>> + Send + '_ {
        self.pool().begin_with(Self::BEGIN_WRITE)
    }
}

/// The arguments of a statement on `S`'s database.
pub(crate) type Args<'q, S> = <<S as Dialect>::Db as Database>::Arguments<'q>;

/// A column type: bound as a parameter and read back. sqlx encodes `Option<T>` per database,
/// so a statement that binds an `Option<T>` needs its own line for it (`Option<String>:
/// Column<DB>`); reading one back needs only `T`'s.
pub(crate) trait Column<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>
{
}

impl<DB: Database, T> Column<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>
{
}

/// A borrowed parameter (`&str`, `&[u8]`), encoded for as long as it is borrowed.
pub(crate) trait Param<'q, DB: Database>: Encode<'q, DB> + Type<DB> {}

impl<'q, DB: Database, T> Param<'q, DB> for T where T: Encode<'q, DB> + Type<DB> {}

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

impl Dialect for SqliteStore {
    type Db = sqlx::Sqlite;
    const NAME: &'static str = "sqlite";
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const CLAIM_LOCK: &'static str = "";
    const LOCK_ADMINS: Option<&'static str> = None;
    const LOCK_TOKENS: Option<&'static str> = None;
    const HAS_MIGRATION_TABLE: &'static str = "SELECT EXISTS (SELECT 1 FROM sqlite_master \
         WHERE type = 'table' AND name = '_sqlx_migrations')";

    fn migrator() -> &'static Migrator {
        &SQLITE_MIGRATIONS
    }

    fn pool(&self) -> &Pool<sqlx::Sqlite> {
        &self.pool
    }

    fn close_connections(&self) -> impl std::future::Future<Output = ()> + Send {
        SqliteStore::close(self)
    }

    fn write_gate(&self) -> Option<&tokio::sync::Mutex<()>> {
        Some(&self.write_gate)
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn build<'a>(
        qb: &'a mut QueryBuilder<'_, sqlx::Sqlite>,
    ) -> Query<'a, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'a>> {
        qb.build()
    }

    fn build_as<'a, T>(
        qb: &'a mut QueryBuilder<'_, sqlx::Sqlite>,
    ) -> QueryAs<'a, sqlx::Sqlite, T, sqlx::sqlite::SqliteArguments<'a>>
    where
        T: for<'r> FromRow<'r, <sqlx::Sqlite as Database>::Row>,
    {
        qb.build_query_as()
    }
}

impl Dialect for PostgresStore {
    type Db = sqlx::Postgres;
    const NAME: &'static str = "postgres";
    const BEGIN_WRITE: &'static str = "BEGIN";
    const CLAIM_LOCK: &'static str = "FOR UPDATE SKIP LOCKED";
    const LOCK_ADMINS: Option<&'static str> =
        Some("SELECT id FROM admins WHERE role = $1 AND enabled FOR UPDATE");
    const LOCK_TOKENS: Option<&'static str> =
        Some("SELECT id FROM server_tokens ORDER BY id FOR UPDATE");
    const HAS_MIGRATION_TABLE: &'static str = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";

    fn migrator() -> &'static Migrator {
        &POSTGRES_MIGRATIONS
    }

    fn pool(&self) -> &Pool<sqlx::Postgres> {
        &self.pool
    }

    fn close_connections(&self) -> impl std::future::Future<Output = ()> + Send {
        PostgresStore::close(self)
    }

    fn write_gate(&self) -> Option<&tokio::sync::Mutex<()>> {
        None
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn build<'a>(
        qb: &'a mut QueryBuilder<'_, sqlx::Postgres>,
    ) -> Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
        qb.build()
    }

    fn build_as<'a, T>(
        qb: &'a mut QueryBuilder<'_, sqlx::Postgres>,
    ) -> QueryAs<'a, sqlx::Postgres, T, sqlx::postgres::PgArguments>
    where
        T: for<'r> FromRow<'r, <sqlx::Postgres as Database>::Row>,
    {
        qb.build_query_as()
    }
}
