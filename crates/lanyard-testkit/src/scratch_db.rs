//! A scratch PostgreSQL database for one test or one benchmark run: created fresh beside the
//! admin URL's database and dropped when the value is dropped — also when the test panics, so
//! a failing test leaves no database behind.

use anyhow::{anyhow, bail, Context, Result};
use sqlx::Connection as _;

/// The environment variable naming the PostgreSQL server tests use (a database URL whose
/// user may create databases).
pub const ADMIN_URL_ENV: &str = "LANYARD_TEST_POSTGRES_URL";
/// Where tests look when [`ADMIN_URL_ENV`] is unset (what `scripts/ensure-test-deps` starts).
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL server tests use.
pub fn admin_url() -> String {
    std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.into())
}

/// A database made for one test or run; dropped with this value.
#[derive(Debug)]
pub struct ScratchDb {
    url: String,
    name: String,
    admin: String,
    keep: bool,
}

impl ScratchDb {
    /// Creates `<prefix>_<random>` on the server of `admin` (a database URL whose user may
    /// create databases).
    pub async fn create_at(admin: &str, prefix: &str) -> Result<ScratchDb> {
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            bail!("scratch database prefix {prefix:?}: use lower-case letters, digits and _");
        }
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .with_context(|| "cannot connect to PostgreSQL".to_string())?;
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        let base = admin.split('?').next().unwrap_or(admin);
        let (base, _) = base
            .rsplit_once('/')
            .ok_or_else(|| anyhow!("a PostgreSQL URL must end in /<database>"))?;
        Ok(ScratchDb {
            url: format!("{base}/{name}"),
            name,
            admin: admin.to_string(),
            keep: false,
        })
    }

    /// A scratch database for a test, on the server [`admin_url`] names. When PostgreSQL is
    /// unreachable: a failure under `CI=true` (PostgreSQL is first-class), otherwise `None`
    /// after a loud note that `what` did not run.
    pub async fn for_test(prefix: &str, what: &str) -> Option<ScratchDb> {
        let admin = admin_url();
        match ScratchDb::create_at(&admin, prefix).await {
            Ok(db) => Some(db),
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("PostgreSQL is required under CI=true but unusable at {admin}: {e:#}");
                }
                eprintln!(
                    "\n!!!!! SKIPPED: PostgreSQL unusable at {admin} ({e:#}); the PostgreSQL run \
                     of {what} did NOT happen !!!!!\n"
                );
                None
            }
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps the database (for a look after a benchmark run); returns its name.
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.name.clone()
    }

    /// The URL of the server's administrative database this one was made beside.
    pub fn admin_url(&self) -> &str {
        &self.admin
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run on a runtime's thread, or while a panic unwinds: the database is
        // dropped from a thread (and runtime) of its own. `WITH (FORCE)` ends connections a
        // test left open.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    async fn exists(admin: &str, name: &str) -> bool {
        let mut c = sqlx::PgConnection::connect(admin).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut c)
            .await
            .unwrap();
        n == 1
    }

    /// Made, reachable at its URL, and gone once dropped — also when the test that held it
    /// panicked.
    #[tokio::test]
    async fn dropped_with_the_value_even_on_panic() {
        let Some(db) = ScratchDb::for_test("lanyard_scratch", "the scratch database test").await
        else {
            return;
        };
        let (admin, name) = (db.admin_url().to_string(), db.name().to_string());
        assert!(exists(&admin, &name).await);
        let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(one, 1);
        drop(db); // with `c` still open
        assert!(!exists(&admin, &name).await);

        let held = ScratchDb::for_test("lanyard_scratch", "the scratch database test")
            .await
            .unwrap();
        let name = held.name().to_string();
        let panicked = std::thread::spawn(move || {
            let _held = held;
            panic!("a failing test");
        })
        .join();
        assert!(panicked.is_err());
        assert!(!exists(&admin, &name).await);
    }

    #[tokio::test]
    async fn refuses_a_prefix_that_is_not_a_plain_name() {
        let e = ScratchDb::create_at(DEFAULT_ADMIN_URL, "x; DROP DATABASE postgres")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
    }
}
