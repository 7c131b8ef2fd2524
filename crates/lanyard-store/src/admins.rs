//! Administrators of the portal and the admin API, their API tokens and signed-in sessions:
//! their rows, [`AdminStore`] and its SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{ColumnIndex, Database, Executor, IntoArguments, Transaction};

use crate::audit::{commit_audited, execute_one_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::{now, Result, Role, StoreError};

/// An administrator of the portal and admin API.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Admin {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

/// An API token; only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ApiToken {
    pub id: i64,
    pub admin_id: i64,
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

/// An administrator's signed-in session; only the hash of the session secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AdminSession {
    pub token_hash: String,
    pub admin_id: i64,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait AdminStore: Send + Sync {
    async fn create_admin(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        audit: &Audit,
    ) -> Result<Admin>;
    async fn admin_by_username(&self, username: &str) -> Result<Option<Admin>>;
    async fn admin_by_id(&self, id: i64) -> Result<Option<Admin>>;
    async fn list_admins(&self) -> Result<Vec<Admin>>;
    async fn count_admins(&self) -> Result<i64>;
    /// Sets an administrator's password and ends their sessions except `keep_session` (the hash
    /// of the session that made the change, when they changed their own), in one transaction.
    /// Returns how many sessions ended; an unknown id is [`StoreError::NotFound`].
    async fn set_admin_password(
        &self,
        id: i64,
        password_hash: &str,
        keep_session: Option<&str>,
        audit: &Audit,
    ) -> Result<u64>;
    /// Enables or disables an administrator; disabling ends their sessions. Disabling is refused
    /// (`Ok(None)`, nothing changed) when the administrator is the last enabled one with role
    /// `protected_role`. An unknown id is [`StoreError::NotFound`].
    async fn set_admin_enabled(
        &self,
        id: i64,
        enabled: bool,
        protected_role: Role,
        audit: &Audit,
    ) -> Result<Option<Admin>>;
    /// Removes an administrator with their sessions and API tokens; refused (`Ok(false)`,
    /// nothing changed) when they are the last enabled one with role `protected_role`. An
    /// unknown id is [`StoreError::NotFound`].
    async fn delete_admin(&self, id: i64, protected_role: Role, audit: &Audit) -> Result<bool>;

    async fn create_api_token(
        &self,
        admin_id: i64,
        name: &str,
        token_hash: &str,
        expires_at: Option<DateTime<Utc>>,
        audit: &Audit,
    ) -> Result<ApiToken>;
    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>>;
    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>>;
    async fn touch_api_token(&self, id: i64, at: DateTime<Utc>) -> Result<()>;
    async fn revoke_api_token(&self, id: i64, audit: &Audit) -> Result<()>;

    async fn create_session(&self, session: &AdminSession) -> Result<()>;
    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<AdminSession>>;
    async fn delete_session(&self, token_hash: &str) -> Result<()>;
    /// Removes sessions that expired before `now`; returns how many.
    async fn purge_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64>;
}

const ADMIN_COLUMNS: &str = "id, username, password_hash, role, enabled, created_at";

const API_TOKEN_COLUMNS: &str =
    "id, admin_id, name, token_hash, created_at, expires_at, last_used_at, revoked";

#[async_trait]
impl<S, DB> AdminStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    for<'q> Option<&'q str>: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
    bool: Column<DB>,
    String: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
{
    async fn create_admin(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        audit: &Audit,
    ) -> Result<Admin> {
        let mut tx = self.begin_write().await?;
        let row: Admin = sqlx::query_as(&format!(
            "INSERT INTO admins (username, password_hash, role, enabled, failed_logins, \
             created_at) VALUES ($1, $2, $3, TRUE, 0, $4) RETURNING {ADMIN_COLUMNS}"
        ))
        .bind(username)
        .bind(password_hash)
        .bind(role)
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        commit_audited(tx, audit).await?;
        Ok(row)
    }

    async fn admin_by_username(&self, username: &str) -> Result<Option<Admin>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ADMIN_COLUMNS} FROM admins WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn admin_by_id(&self, id: i64) -> Result<Option<Admin>> {
        Ok(
            sqlx::query_as(&format!("SELECT {ADMIN_COLUMNS} FROM admins WHERE id = $1"))
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn list_admins(&self) -> Result<Vec<Admin>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ADMIN_COLUMNS} FROM admins ORDER BY username"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    async fn count_admins(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM admins")
            .fetch_one(self.pool())
            .await?)
    }

    async fn set_admin_password(
        &self,
        id: i64,
        password_hash: &str,
        keep_session: Option<&str>,
        audit: &Audit,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE admins SET password_hash = $2 WHERE id = $1")
            .bind(id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        if S::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(format!("administrator {id}")));
        }
        let ended = sqlx::query(
            "DELETE FROM admin_sessions WHERE admin_id = $1 \
             AND ($2 IS NULL OR token_hash <> $2)",
        )
        .bind(id)
        .bind(keep_session)
        .execute(&mut *tx)
        .await?;
        commit_audited(tx, audit).await?;
        Ok(S::rows_affected(&ended))
    }

    async fn set_admin_enabled(
        &self,
        id: i64,
        enabled: bool,
        protected_role: Role,
        audit: &Audit,
    ) -> Result<Option<Admin>> {
        let mut tx = begin_guarded(self, protected_role).await?;
        let row: Option<Admin> = sqlx::query_as(&format!(
            "UPDATE admins SET enabled = $2 WHERE id = $1 AND ({} OR $2) \
             RETURNING {ADMIN_COLUMNS}",
            keeps_an_enabled_admin("$3")
        ))
        .bind(id)
        .bind(enabled)
        .bind(protected_role)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            admin_must_exist(&mut tx, id).await?;
            return Ok(None);
        };
        if !enabled {
            sqlx::query("DELETE FROM admin_sessions WHERE admin_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        commit_audited(tx, audit).await?;
        Ok(Some(row))
    }

    async fn delete_admin(&self, id: i64, protected_role: Role, audit: &Audit) -> Result<bool> {
        let mut tx = begin_guarded(self, protected_role).await?;
        // Sessions and API tokens go with the row (ON DELETE CASCADE).
        let done = sqlx::query(&format!(
            "DELETE FROM admins WHERE id = $1 AND {}",
            keeps_an_enabled_admin("$2")
        ))
        .bind(id)
        .bind(protected_role)
        .execute(&mut *tx)
        .await?;
        if S::rows_affected(&done) == 0 {
            admin_must_exist(&mut tx, id).await?;
            return Ok(false);
        }
        commit_audited(tx, audit).await?;
        Ok(true)
    }

    async fn create_api_token(
        &self,
        admin_id: i64,
        name: &str,
        token_hash: &str,
        expires_at: Option<DateTime<Utc>>,
        audit: &Audit,
    ) -> Result<ApiToken> {
        let mut tx = self.begin_write().await?;
        let row: ApiToken = sqlx::query_as(&format!(
            "INSERT INTO api_tokens (admin_id, name, token_hash, created_at, expires_at, \
             revoked) VALUES ($1, $2, $3, $4, $5, FALSE) RETURNING {API_TOKEN_COLUMNS}"
        ))
        .bind(admin_id)
        .bind(name)
        .bind(token_hash)
        .bind(now())
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        commit_audited(tx, audit).await?;
        Ok(row)
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY id"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    async fn touch_api_token(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn revoke_api_token(&self, id: i64, audit: &Audit) -> Result<()> {
        let revoke = sqlx::query("UPDATE api_tokens SET revoked = TRUE WHERE id = $1").bind(id);
        let missing = || StoreError::NotFound(format!("API token {id}"));
        execute_one_audited(self, revoke, missing, audit).await
    }

    async fn create_session(&self, session: &AdminSession) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_sessions (token_hash, admin_id, csrf_token, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.token_hash)
        .bind(session.admin_id)
        .bind(&session.csrf_token)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<AdminSession>> {
        Ok(sqlx::query_as(
            "SELECT token_hash, admin_id, csrf_token, created_at, expires_at \
             FROM admin_sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn purge_expired_sessions(&self, at: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM admin_sessions WHERE expires_at < $1")
            .bind(at)
            .execute(self.pool())
            .await?;
        Ok(S::rows_affected(&done))
    }
}

/// True for the administrator `$1` unless it is the last enabled one with the role in parameter
/// `role` (so disabling or removing it would leave no one able to administer the server).
fn keeps_an_enabled_admin(role: &str) -> String {
    format!(
        "(role <> {role} OR NOT enabled OR EXISTS (SELECT 1 FROM admins o \
         WHERE o.id <> $1 AND o.role = {role} AND o.enabled))"
    )
}

/// Begins the transaction of a change the last-administrator rule guards (disabling or
/// removing an administrator), with the enabled administrators of the protected `role` locked
/// where the database needs it ([`Dialect::LOCK_ADMINS`]).
async fn begin_guarded<S, DB>(store: &S, role: Role) -> Result<Transaction<'static, DB>>
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
{
    let mut tx = store.begin_write().await?;
    if let Some(lock) = S::LOCK_ADMINS {
        sqlx::query(lock).bind(role).fetch_all(&mut *tx).await?;
    }
    Ok(tx)
}

/// `NotFound` unless administrator `id` exists: tells a change the last-administrator rule
/// refused from a change of an unknown administrator.
async fn admin_must_exist<DB>(tx: &mut Transaction<'_, DB>, id: i64) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
{
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM admins WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    exists
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("administrator {id}")))
}
