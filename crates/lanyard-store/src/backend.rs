//! The SQLite and PostgreSQL backends.
//!
//! Both speak the same SQL for almost everything (numbered `$n` parameters, `RETURNING`,
//! `ON CONFLICT`), so the trait implementations are written once, in `impl_store!`, and expanded
//! for each backend with its own pool and connection types. Where the dialects differ, the
//! backend-specific piece is passed into the macro, never hidden behind a runtime branch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{commit_audited, execute_one_audited, fetch_one_audited};
use crate::dialect::Dialect;
use crate::*;

const USER_COLUMNS: &str =
    "id, email, display_name, password_hash, managed_apple_id, enabled, created_at, updated_at";

const ADMIN_COLUMNS: &str = "id, username, password_hash, role, enabled, created_at";

const API_TOKEN_COLUMNS: &str =
    "id, admin_id, name, token_hash, created_at, expires_at, last_used_at, revoked";

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

/// True for the administrator `$1` unless it is the last enabled one with the role in parameter
/// `role` (so disabling or removing it would leave no one able to administer the server).
fn keeps_an_enabled_admin(role: &str) -> String {
    format!(
        "(role <> {role} OR NOT enabled OR EXISTS (SELECT 1 FROM admins o \
         WHERE o.id <> $1 AND o.role = {role} AND o.enabled))"
    )
}

impl SqliteStore {
    /// SQLite runs one write transaction at a time, so the last-administrator check inside the
    /// `UPDATE`/`DELETE` cannot race another one: nothing to lock.
    async fn lock_protected_admins(_tx: &mut sqlx::SqliteConnection, _role: Role) -> Result<()> {
        Ok(())
    }
}

impl PostgresStore {
    /// Holds the enabled administrators of the protected role until the transaction ends, so
    /// that two administrators disabling or removing each other at once cannot each count the
    /// other as the one left (under READ COMMITTED both checks would pass).
    async fn lock_protected_admins(tx: &mut sqlx::PgConnection, role: Role) -> Result<()> {
        sqlx::query("SELECT id FROM admins WHERE role = $1 AND enabled FOR UPDATE")
            .bind(role)
            .fetch_all(&mut *tx)
            .await?;
        Ok(())
    }
}

/// The next attempt count of a throttle key under upsert (`$4` now, `$8` the window, in ms).
const NEXT_ATTEMPTS: &str = "(CASE WHEN sign_in_throttle.wait_until_ms <= $4 - $8 THEN 1 \
     ELSE sign_in_throttle.attempts + 1 END)";

/// The wait in ms after `attempts` attempts: none while within `$5` free attempts, then `$6`
/// doubling per attempt, at most `$7`.
fn throttle_wait(attempts: &str) -> String {
    format!(
        "(CASE WHEN {attempts} < $5 THEN 0 \
         WHEN {attempts} - $5 >= 30 THEN $7 \
         WHEN $6 * (1 << CAST({attempts} - $5 AS INTEGER)) > $7 THEN $7 \
         ELSE $6 * (1 << CAST({attempts} - $5 AS INTEGER)) END)"
    )
}

macro_rules! impl_store {
    ($store:ty, $db:ty, $name:literal) => {
        impl $store {
            /// Inserts or replaces one row of PKI material (upload, renewal, a completed
            /// pending request).
            async fn upsert_pki(
                conn: &mut <$db as sqlx::Database>::Connection,
                m: &PkiMaterial,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO pki_material (name, cert_pem, key_sealed, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                     cert_pem = excluded.cert_pem, key_sealed = excluded.key_sealed, \
                     created_at = excluded.created_at",
                )
                .bind(&m.name)
                .bind(&m.cert_pem)
                .bind(&m.key_sealed)
                .bind(m.created_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// `NotFound` unless administrator `id` exists: tells a change the last-administrator
            /// rule refused from a change of an unknown administrator.
            async fn admin_must_exist(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: i64,
            ) -> Result<()> {
                let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM admins WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                exists
                    .map(|_| ())
                    .ok_or_else(|| StoreError::NotFound(format!("administrator {id}")))
            }

        }

        #[async_trait]
        impl UserStore for $store {
            async fn create_user(&self, user: &NewUser, audit: &Audit) -> Result<User> {
                let mut tx = self.begin_write().await?;
                let at = now();
                let row: User = sqlx::query_as(&format!(
                    "INSERT INTO users (email, display_name, password_hash, managed_apple_id, \
                     enabled, created_at, updated_at) VALUES ($1, $2, $3, $4, TRUE, $5, $5) \
                     RETURNING {USER_COLUMNS}"
                ))
                .bind(&user.email)
                .bind(&user.display_name)
                .bind(&user.password_hash)
                .bind(&user.managed_apple_id)
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
                commit_audited(tx, audit).await?;
                Ok(row)
            }

            async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
                Ok(
                    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
                ))
                .bind(email)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn list_users(&self, query: &ListQuery) -> Result<Vec<User>> {
                let pattern = crate::listing_backend::like_pattern(query.search.as_deref());
                Ok(sqlx::query_as(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE LOWER(email) LIKE $1 ESCAPE '\\' \
                     OR LOWER(display_name) LIKE $1 ESCAPE '\\' \
                     ORDER BY email LIMIT $2 OFFSET $3"
                ))
                .bind(pattern)
                .bind(query.limit)
                .bind(query.offset)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn count_users(&self) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn update_user(
                &self,
                id: i64,
                change: &UserChange,
                audit: &Audit,
            ) -> Result<User> {
                let (set_apple_id, apple_id) = match &change.managed_apple_id {
                    Some(v) => (true, v.clone()),
                    None => (false, None),
                };
                let sql = format!(
                    "UPDATE users SET \
                     display_name = COALESCE($2, display_name), \
                     password_hash = COALESCE($3, password_hash), \
                     managed_apple_id = CASE WHEN $4 THEN $5 ELSE managed_apple_id END, \
                     enabled = COALESCE($6, enabled), \
                     updated_at = $7 \
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                );
                let update = sqlx::query_as(&sql)
                    .bind(id)
                    .bind(&change.display_name)
                    .bind(&change.password_hash)
                    .bind(set_apple_id)
                    .bind(apple_id)
                    .bind(change.enabled)
                    .bind(now());
                let missing = || StoreError::NotFound(format!("user {id}"));
                fetch_one_audited(self, update, missing, audit).await
            }
        }

        #[async_trait]
        impl SettingsStore for $store {
            async fn get_setting(&self, name: &str) -> Result<Option<String>> {
                Ok(
                    sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }

            async fn put_setting(&self, name: &str, value: &str, audit: &Audit) -> Result<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value, \
                     updated_at = excluded.updated_at",
                )
                .bind(name)
                .bind(value)
                .bind(now())
                .execute(&mut *tx)
                .await?;
                commit_audited(tx, audit).await
            }
        }

        #[async_trait]
        impl AttributeStore for $store {
            async fn create_attribute(
                &self,
                name: &str,
                kind: &str,
                required: bool,
                choices_json: &str,
                audit: &Audit,
            ) -> Result<CustomAttributeRow> {
                let mut tx = self.begin_write().await?;
                let row: CustomAttributeRow = sqlx::query_as(
                    "INSERT INTO custom_attributes (name, kind, required, choices, created_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     RETURNING id, name, kind, required, choices, created_at",
                )
                .bind(name)
                .bind(kind)
                .bind(required)
                .bind(choices_json)
                .bind(now())
                .fetch_one(&mut *tx)
                .await?;
                commit_audited(tx, audit).await?;
                Ok(row)
            }

            async fn list_attributes(&self) -> Result<Vec<CustomAttributeRow>> {
                Ok(sqlx::query_as(
                    "SELECT id, name, kind, required, choices, created_at \
                     FROM custom_attributes ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn attribute_by_name(&self, name: &str) -> Result<Option<CustomAttributeRow>> {
                Ok(sqlx::query_as(
                    "SELECT id, name, kind, required, choices, created_at \
                     FROM custom_attributes WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn delete_attribute(&self, name: &str, audit: &Audit) -> Result<()> {
                let delete =
                    sqlx::query("DELETE FROM custom_attributes WHERE name = $1").bind(name);
                let missing = || StoreError::NotFound(format!("custom attribute {name}"));
                execute_one_audited(self, delete, missing, audit).await
            }
        }

        #[async_trait]
        impl AdminStore for $store {
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
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn admin_by_id(&self, id: i64) -> Result<Option<Admin>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {ADMIN_COLUMNS} FROM admins WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn list_admins(&self) -> Result<Vec<Admin>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {ADMIN_COLUMNS} FROM admins ORDER BY username"
                ))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn count_admins(&self) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM admins")
                    .fetch_one(&self.pool)
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
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("administrator {id}")));
                }
                let ended = sqlx::query(
                    "DELETE FROM admin_sessions WHERE admin_id = $1 \
                     AND ($2 IS NULL OR token_hash <> $2)",
                )
                .bind(id)
                .bind(keep_session)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                commit_audited(tx, audit).await?;
                Ok(ended)
            }

            async fn set_admin_enabled(
                &self,
                id: i64,
                enabled: bool,
                protected_role: Role,
                audit: &Audit,
            ) -> Result<Option<Admin>> {
                let mut tx = self.begin_write().await?;
                Self::lock_protected_admins(&mut tx, protected_role).await?;
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
                    Self::admin_must_exist(&mut tx, id).await?;
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

            async fn delete_admin(
                &self,
                id: i64,
                protected_role: Role,
                audit: &Audit,
            ) -> Result<bool> {
                let mut tx = self.begin_write().await?;
                Self::lock_protected_admins(&mut tx, protected_role).await?;
                // Sessions and API tokens go with the row (ON DELETE CASCADE).
                let done = sqlx::query(&format!(
                    "DELETE FROM admins WHERE id = $1 AND {}",
                    keeps_an_enabled_admin("$2")
                ))
                .bind(id)
                .bind(protected_role)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    Self::admin_must_exist(&mut tx, id).await?;
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
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY id"
                ))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn touch_api_token(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn revoke_api_token(&self, id: i64, audit: &Audit) -> Result<()> {
                let revoke =
                    sqlx::query("UPDATE api_tokens SET revoked = TRUE WHERE id = $1").bind(id);
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
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn session_by_hash(&self, token_hash: &str) -> Result<Option<AdminSession>> {
                Ok(sqlx::query_as(
                    "SELECT token_hash, admin_id, csrf_token, created_at, expires_at \
                     FROM admin_sessions WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn delete_session(&self, token_hash: &str) -> Result<()> {
                sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
                    .bind(token_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn purge_expired_sessions(&self, at: DateTime<Utc>) -> Result<u64> {
                Ok(
                    sqlx::query("DELETE FROM admin_sessions WHERE expires_at < $1")
                        .bind(at)
                        .execute(&self.pool)
                        .await?
                        .rows_affected(),
                )
            }
        }

        #[async_trait]
        impl ThrottleStore for $store {
            async fn reserve_sign_in(
                &self,
                key: &ThrottleKey,
                policy: &ThrottlePolicy,
                now: DateTime<Utc>,
            ) -> Result<Reservation> {
                let at = now.timestamp_millis();
                let counted: Option<i64> = sqlx::query_scalar(&format!(
                    "INSERT INTO sign_in_throttle (kind, account, address, attempts, \
                     last_attempt_ms, wait_until_ms) VALUES ($1, $2, $3, 1, $4, $4 + {first}) \
                     ON CONFLICT (kind, account, address) DO UPDATE SET \
                     attempts = {next}, last_attempt_ms = $4, wait_until_ms = $4 + {wait} \
                     WHERE sign_in_throttle.wait_until_ms <= $4 \
                     RETURNING attempts",
                    first = throttle_wait("1"),
                    next = NEXT_ATTEMPTS,
                    wait = throttle_wait(NEXT_ATTEMPTS),
                ))
                .bind(key.kind.as_str())
                .bind(&key.account)
                .bind(&key.address)
                .bind(at)
                .bind(policy.free_attempts)
                .bind(policy.first_wait.num_milliseconds())
                .bind(policy.max_wait.num_milliseconds())
                .bind(policy.window.num_milliseconds())
                .fetch_optional(&self.pool)
                .await?;
                if counted.is_some() {
                    return Ok(Reservation::Granted);
                }
                let until: Option<i64> = sqlx::query_scalar(
                    "SELECT wait_until_ms FROM sign_in_throttle \
                     WHERE kind = $1 AND account = $2 AND address = $3",
                )
                .bind(key.kind.as_str())
                .bind(&key.account)
                .bind(&key.address)
                .fetch_optional(&self.pool)
                .await?;
                // Cleared or pruned since: still refused this once, for at least a second.
                let until = until.unwrap_or(0).max(at + 1000);
                Ok(Reservation::Refused {
                    until: DateTime::from_timestamp_millis(until).unwrap_or(now),
                })
            }

            async fn clear_sign_in(&self, key: &ThrottleKey) -> Result<()> {
                sqlx::query(
                    "DELETE FROM sign_in_throttle \
                     WHERE kind = $1 AND account = $2 AND address = $3",
                )
                .bind(key.kind.as_str())
                .bind(&key.account)
                .bind(&key.address)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn unlock_sign_in(
                &self,
                kind: SignInKind,
                account: &str,
                audit: &Audit,
            ) -> Result<u64> {
                let mut tx = self.begin_write().await?;
                let gone =
                    sqlx::query("DELETE FROM sign_in_throttle WHERE kind = $1 AND account = $2")
                        .bind(kind.as_str())
                        .bind(account)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                commit_audited(tx, audit).await?;
                Ok(gone)
            }

            async fn sign_in_wait(
                &self,
                kind: SignInKind,
                account: &str,
                now: DateTime<Utc>,
            ) -> Result<Option<DateTime<Utc>>> {
                let until: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(wait_until_ms) FROM sign_in_throttle \
                     WHERE kind = $1 AND account = $2 AND wait_until_ms > $3",
                )
                .bind(kind.as_str())
                .bind(account)
                .bind(now.timestamp_millis())
                .fetch_one(&self.pool)
                .await?;
                Ok(until.and_then(DateTime::from_timestamp_millis))
            }

            async fn prune_sign_in_throttle(
                &self,
                now: DateTime<Utc>,
                window: chrono::Duration,
            ) -> Result<u64> {
                Ok(
                    sqlx::query("DELETE FROM sign_in_throttle WHERE wait_until_ms <= $1")
                        .bind((now - window).timestamp_millis())
                        .execute(&self.pool)
                        .await?
                        .rows_affected(),
                )
            }
        }

        #[async_trait]
        impl PkiStore for $store {
            async fn get_pki(&self, name: &str) -> Result<Option<PkiMaterial>> {
                Ok(sqlx::query_as(
                    "SELECT name, cert_pem, key_sealed, created_at FROM pki_material \
                     WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn put_pki(&self, m: &PkiMaterial, audit: &Audit) -> Result<()> {
                let mut tx = self.begin_write().await?;
                Self::upsert_pki(&mut tx, m).await?;
                commit_audited(tx, audit).await
            }

            async fn insert_pki_if_absent(&self, m: &PkiMaterial) -> Result<bool> {
                let done = sqlx::query(
                    "INSERT INTO pki_material (name, cert_pem, key_sealed, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&m.name)
                .bind(&m.cert_pem)
                .bind(&m.key_sealed)
                .bind(m.created_at)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn holds_sealed_material(&self) -> Result<bool> {
                let (any,): (bool,) = sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM pki_material) \
                     OR EXISTS (SELECT 1 FROM server_tokens) \
                     OR EXISTS (SELECT 1 FROM identity_providers \
                                WHERE client_secret_sealed IS NOT NULL) \
                     OR EXISTS (SELECT 1 FROM oidc_sign_ins) \
                     OR EXISTS (SELECT 1 FROM pki_pending) \
                     OR EXISTS (SELECT 1 FROM enrollments \
                                WHERE unlock_token_sealed IS NOT NULL \
                                   OR bootstrap_token_sealed IS NOT NULL)",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok(any)
            }

            async fn get_pending_pki(&self, name: &str) -> Result<Option<PkiMaterial>> {
                Ok(sqlx::query_as(
                    "SELECT name, pem AS cert_pem, key_sealed, created_at FROM pki_pending \
                     WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn put_pending_pki(&self, rows: &[PkiMaterial], audit: &Audit) -> Result<()> {
                let mut tx = self.begin_write().await?;
                for m in rows {
                    sqlx::query(
                        "INSERT INTO pki_pending (name, pem, key_sealed, created_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                         pem = excluded.pem, key_sealed = excluded.key_sealed, \
                         created_at = excluded.created_at",
                    )
                    .bind(&m.name)
                    .bind(&m.cert_pem)
                    .bind(&m.key_sealed)
                    .bind(m.created_at)
                    .execute(&mut *tx)
                    .await?;
                }
                commit_audited(tx, audit).await
            }

            async fn complete_pending_pki(
                &self,
                pending: &[&str],
                m: &PkiMaterial,
                audit: &Audit,
            ) -> Result<()> {
                let mut tx = self.begin_write().await?;
                for (i, name) in pending.iter().enumerate() {
                    let gone = sqlx::query("DELETE FROM pki_pending WHERE name = $1")
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                    if i == 0 && gone.rows_affected() == 0 {
                        return Err(StoreError::NotFound(format!("pending {name}")));
                    }
                }
                Self::upsert_pki(&mut tx, m).await?;
                commit_audited(tx, audit).await
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $name
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}

impl_store!(SqliteStore, sqlx::Sqlite, "sqlite");
impl_store!(PostgresStore, sqlx::Postgres, "postgres");
