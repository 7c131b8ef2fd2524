//! `AbmStore` for both backends: Apple Business Manager server tokens, the default token
//! for account-driven enrollment (a partial unique index keeps it to one), the sync lease that
//! lets one of several server processes sync a token at a time, and the synced devices.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{commit_audited, execute_one_audited, fetch_one_audited};
use crate::dialect::Dialect;
use crate::*;

const TOKEN_COLUMNS: &str = "id, name, cert_pem, key_sealed, secrets_sealed, token_expires_at, \
    uploaded_at, org_name, org_id, server_name, server_uuid, is_default_account_driven, \
    discovery_url, discovery_registered_at, sync_cursor, last_sync_at, last_sync_status, \
    lease_owner, lease_until, created_at, updated_at";

const DEVICE_COLUMNS: &str = "serial_number, model, description, os, color, profile_status, \
    profile_uuid, assigned_by, assigned_date, op_type";

fn no_token(name: &str) -> StoreError {
    StoreError::NotFound(format!("server token `{name}`"))
}

fn lease_lost(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "this process no longer holds the sync lease of `{name}`"
    ))
}

/// Before the default for account-driven enrollment moves, the rows it may move between are
/// locked in one order, so two moves at once wait for each other instead of both clearing the
/// others and then meeting at the partial unique index (a conflict or a deadlock). SQLite needs
/// no statement: its write transactions begin `IMMEDIATE` and so run one at a time.
const LOCK_TOKENS_POSTGRES: Option<&str> =
    Some("SELECT id FROM server_tokens ORDER BY id FOR UPDATE");

macro_rules! impl_abm_store {
    ($store:ty, $db:ty, $lock_tokens:expr) => {
        impl $store {
            async fn token_id(
                conn: &mut <$db as sqlx::Database>::Connection,
                name: &str,
            ) -> Result<i64> {
                sqlx::query_scalar("SELECT id FROM server_tokens WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or_else(|| no_token(name))
            }

            /// Takes the default for account-driven enrollment from every token but `id`.
            async fn clear_other_defaults(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: i64,
                at: DateTime<Utc>,
            ) -> Result<()> {
                if let Some(lock) = $lock_tokens {
                    sqlx::query(lock).execute(&mut *conn).await?;
                }
                sqlx::query(
                    "UPDATE server_tokens SET is_default_account_driven = FALSE, \
                     updated_at = $2 WHERE is_default_account_driven AND id <> $1",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
        }

        #[async_trait]
        impl AbmStore for $store {
            async fn create_abm_token(
                &self,
                name: &str,
                cert_pem: &str,
                key_sealed: &[u8],
                audit: &Audit,
            ) -> Result<AbmToken> {
                let mut tx = self.begin_write().await?;
                let at = now();
                let row: AbmToken = sqlx::query_as(&format!(
                    "INSERT INTO server_tokens (name, cert_pem, key_sealed, created_at, \
                     updated_at) VALUES ($1, $2, $3, $4, $4) RETURNING {TOKEN_COLUMNS}"
                ))
                .bind(name)
                .bind(cert_pem)
                .bind(key_sealed)
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
                commit_audited(tx, audit).await?;
                Ok(row)
            }

            async fn abm_token(&self, name: &str) -> Result<Option<AbmToken>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM server_tokens WHERE name = $1"
                ))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn default_abm_token(&self) -> Result<Option<AbmToken>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM server_tokens WHERE is_default_account_driven"
                ))
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn list_abm_tokens(&self) -> Result<Vec<AbmToken>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM server_tokens ORDER BY name"
                ))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn upload_abm_token(
                &self,
                name: &str,
                up: &AbmTokenUpload,
                audit: &Audit,
            ) -> Result<AbmToken> {
                let mut tx = self.begin_write().await?;
                let at = now();
                let id = Self::token_id(&mut tx, name).await?;
                if up.make_default {
                    Self::clear_other_defaults(&mut tx, id, at).await?;
                }
                let row: AbmToken = sqlx::query_as(&format!(
                    "UPDATE server_tokens SET secrets_sealed = $2, token_expires_at = $3, \
                     uploaded_at = $4, org_name = $5, org_id = $6, server_name = $7, \
                     server_uuid = $8, is_default_account_driven = \
                     (is_default_account_driven OR $9), updated_at = $4 WHERE id = $1 \
                     RETURNING {TOKEN_COLUMNS}"
                ))
                .bind(id)
                .bind(&up.secrets_sealed)
                .bind(up.token_expires_at)
                .bind(at)
                .bind(&up.org_name)
                .bind(&up.org_id)
                .bind(&up.server_name)
                .bind(&up.server_uuid)
                .bind(up.make_default)
                .fetch_one(&mut *tx)
                .await?;
                commit_audited(tx, audit).await?;
                Ok(row)
            }

            async fn set_default_abm_token(
                &self,
                name: &str,
                audit: &Audit,
            ) -> Result<AbmToken> {
                let mut tx = self.begin_write().await?;
                let at = now();
                let id = Self::token_id(&mut tx, name).await?;
                Self::clear_other_defaults(&mut tx, id, at).await?;
                let row: AbmToken = sqlx::query_as(&format!(
                    "UPDATE server_tokens SET is_default_account_driven = TRUE, updated_at = $2 \
                     WHERE id = $1 RETURNING {TOKEN_COLUMNS}"
                ))
                .bind(id)
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
                commit_audited(tx, audit).await?;
                Ok(row)
            }

            async fn record_discovery(
                &self,
                name: &str,
                url: Option<&str>,
                audit: &Audit,
            ) -> Result<AbmToken> {
                let at = now();
                let registered_at = url.map(|_| at);
                let sql = format!(
                    "UPDATE server_tokens SET discovery_url = $2, discovery_registered_at = $3, \
                     updated_at = $4 WHERE name = $1 RETURNING {TOKEN_COLUMNS}"
                );
                let update = sqlx::query_as(&sql)
                    .bind(name)
                    .bind(url)
                    .bind(registered_at)
                    .bind(at);
                let missing = || no_token(name);
                fetch_one_audited(self, update, missing, audit).await
            }

            async fn take_sync_lease(
                &self,
                name: &str,
                owner: &str,
                until: DateTime<Utc>,
                at: DateTime<Utc>,
            ) -> Result<Option<AbmToken>> {
                Ok(sqlx::query_as(&format!(
                    "UPDATE server_tokens SET lease_owner = $2, lease_until = $3 \
                     WHERE name = $1 AND (lease_owner IS NULL OR lease_owner = $2 \
                     OR lease_until IS NULL OR lease_until <= $4) RETURNING {TOKEN_COLUMNS}"
                ))
                .bind(name)
                .bind(owner)
                .bind(until)
                .bind(at)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn store_device_page(
                &self,
                name: &str,
                owner: &str,
                devices: &[AbmDevice],
                cursor: &str,
                at: DateTime<Utc>,
            ) -> Result<u64> {
                let mut tx = self.begin_write().await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "UPDATE server_tokens SET sync_cursor = $3 \
                     WHERE name = $1 AND lease_owner = $2 RETURNING id",
                )
                .bind(name)
                .bind(owner)
                .bind(cursor)
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or_else(|| lease_lost(name))?;
                let mut changed = 0;
                for d in devices {
                    if d.op_type.as_deref() == Some("deleted") {
                        changed += sqlx::query(
                            "DELETE FROM abm_devices WHERE token_id = $1 AND serial_number = $2",
                        )
                        .bind(id)
                        .bind(&d.serial_number)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        continue;
                    }
                    changed += sqlx::query(
                        "INSERT INTO abm_devices (token_id, serial_number, model, description, \
                         os, color, profile_status, profile_uuid, assigned_by, assigned_date, \
                         op_type, first_seen_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
                         ON CONFLICT (token_id, serial_number) DO UPDATE SET \
                         model = excluded.model, description = excluded.description, \
                         os = excluded.os, color = excluded.color, \
                         profile_status = excluded.profile_status, \
                         profile_uuid = excluded.profile_uuid, \
                         assigned_by = excluded.assigned_by, \
                         assigned_date = excluded.assigned_date, \
                         op_type = excluded.op_type, updated_at = excluded.updated_at",
                    )
                    .bind(id)
                    .bind(&d.serial_number)
                    .bind(&d.model)
                    .bind(&d.description)
                    .bind(&d.os)
                    .bind(&d.color)
                    .bind(&d.profile_status)
                    .bind(&d.profile_uuid)
                    .bind(&d.assigned_by)
                    .bind(&d.assigned_date)
                    .bind(&d.op_type)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
                Ok(changed)
            }

            async fn reset_sync_cursor(&self, name: &str, owner: &str) -> Result<()> {
                let done = sqlx::query(
                    "UPDATE server_tokens SET sync_cursor = NULL \
                     WHERE name = $1 AND lease_owner = $2",
                )
                .bind(name)
                .bind(owner)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(lease_lost(name));
                }
                Ok(())
            }

            async fn finish_sync(
                &self,
                name: &str,
                owner: &str,
                status: &str,
                at: DateTime<Utc>,
                audit: &Audit,
            ) -> Result<()> {
                let finish = sqlx::query(
                    "UPDATE server_tokens SET lease_owner = NULL, lease_until = NULL, \
                     last_sync_at = $3, last_sync_status = $4 \
                     WHERE name = $1 AND lease_owner = $2",
                )
                .bind(name)
                .bind(owner)
                .bind(at)
                .bind(status);
                execute_one_audited(self, finish, || lease_lost(name), audit).await
            }

            async fn list_abm_devices(
                &self,
                name: &str,
                offset: i64,
                limit: i64,
            ) -> Result<Vec<AbmDevice>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM abm_devices WHERE token_id = \
                     (SELECT id FROM server_tokens WHERE name = $1) \
                     ORDER BY serial_number LIMIT $2 OFFSET $3"
                ))
                .bind(name)
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn count_abm_devices(&self, name: &str) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM abm_devices WHERE token_id = \
                     (SELECT id FROM server_tokens WHERE name = $1)",
                )
                .bind(name)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn delete_abm_token(&self, name: &str, audit: &Audit) -> Result<()> {
                let mut tx = self.begin_write().await?;
                let id = Self::token_id(&mut tx, name).await?;
                sqlx::query("DELETE FROM abm_devices WHERE token_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM server_tokens WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                commit_audited(tx, audit).await
            }
        }
    };
}

impl_abm_store!(SqliteStore, sqlx::Sqlite, None::<&str>);
impl_abm_store!(PostgresStore, sqlx::Postgres, LOCK_TOKENS_POSTGRES);
