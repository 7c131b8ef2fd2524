//! Apple Business Manager server tokens: the default token for account-driven enrollment (a
//! partial unique index keeps it to one), the sync lease that lets one of several server
//! processes sync a token at a time, and the synced devices. The rows, [`AbmStore`] and its
//! SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments, Transaction};

use crate::audit::{commit_audited, execute_one_audited, fetch_one_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::{now, Result, StoreError};

/// An Apple Business Manager server token: Lanyard's key pair for it and, once the
/// administrator uploaded the token file, its sealed OAuth secrets and what ABM said of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AbmToken {
    pub id: i64,
    pub name: String,
    pub cert_pem: String,
    #[serde(skip)]
    pub key_sealed: Vec<u8>,
    #[serde(skip)]
    pub secrets_sealed: Option<Vec<u8>>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub uploaded_at: Option<DateTime<Utc>>,
    pub org_name: Option<String>,
    pub org_id: Option<String>,
    pub server_name: Option<String>,
    pub server_uuid: Option<String>,
    pub is_default_account_driven: bool,
    pub discovery_url: Option<String>,
    pub discovery_registered_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub sync_cursor: Option<String>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_sync_status: Option<String>,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    #[serde(skip)]
    pub lease_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The decrypted, validated contents of a token file, ready to store (secrets already sealed).
#[derive(Debug, Clone)]
pub struct AbmTokenUpload {
    pub secrets_sealed: Vec<u8>,
    pub token_expires_at: DateTime<Utc>,
    pub org_name: Option<String>,
    pub org_id: Option<String>,
    pub server_name: Option<String>,
    pub server_uuid: Option<String>,
    /// Also make this the default token for account-driven enrollment (moving it).
    pub make_default: bool,
}

/// A device ABM assigned to one of Lanyard's server tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AbmDevice {
    pub serial_number: String,
    pub model: String,
    pub description: String,
    pub os: String,
    pub color: String,
    pub profile_status: String,
    pub profile_uuid: Option<String>,
    pub assigned_by: Option<String>,
    pub assigned_date: Option<String>,
    /// `added`, `modified` or `deleted` from an incremental sync; `None` from a full fetch.
    pub op_type: Option<String>,
}

/// Apple Business Manager server tokens and their synced devices. The default token for
/// account-driven enrollment moves in one transaction; a sync page (devices and cursor) is
/// stored in one transaction and only by the process holding the token's sync lease.
#[async_trait]
pub trait AbmStore: Send + Sync {
    /// Creates a token row with Lanyard's certificate and sealed key; a taken name is
    /// [`StoreError::Conflict`].
    async fn create_abm_token(
        &self,
        name: &str,
        cert_pem: &str,
        key_sealed: &[u8],
        audit: &Audit,
    ) -> Result<AbmToken>;
    async fn abm_token(&self, name: &str) -> Result<Option<AbmToken>>;
    /// The default token for account-driven enrollment, if one is set.
    async fn default_abm_token(&self) -> Result<Option<AbmToken>>;
    async fn list_abm_tokens(&self) -> Result<Vec<AbmToken>>;
    /// Stores (or, on renewal, replaces) the token file's sealed secrets; devices are kept.
    async fn upload_abm_token(
        &self,
        name: &str,
        upload: &AbmTokenUpload,
        audit: &Audit,
    ) -> Result<AbmToken>;
    /// Makes this token the one default, clearing it on any other, in one transaction.
    async fn set_default_abm_token(&self, name: &str, audit: &Audit) -> Result<AbmToken>;
    /// Records the service-discovery URL registered at ABM (`None`: removed).
    async fn record_discovery(
        &self,
        name: &str,
        url: Option<&str>,
        audit: &Audit,
    ) -> Result<AbmToken>;
    /// Takes the token's sync lease until `until` unless another owner holds a live one;
    /// returns the token when taken.
    async fn take_sync_lease(
        &self,
        name: &str,
        owner: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<AbmToken>>;
    /// Upserts one page of devices (removing `deleted` ones) and saves the cursor after it, in
    /// one transaction; refused with [`StoreError::Conflict`] when `owner` lost the lease.
    /// Returns how many rows changed.
    async fn store_device_page(
        &self,
        name: &str,
        owner: &str,
        devices: &[AbmDevice],
        cursor: &str,
        now: DateTime<Utc>,
    ) -> Result<u64>;
    /// Forgets the cursor (ABM said it expired), so the next sync fetches everything.
    async fn reset_sync_cursor(&self, name: &str, owner: &str) -> Result<()>;
    /// Releases the lease and records how the sync ended.
    async fn finish_sync(
        &self,
        name: &str,
        owner: &str,
        status: &str,
        now: DateTime<Utc>,
        audit: &Audit,
    ) -> Result<()>;
    async fn list_abm_devices(&self, name: &str, offset: i64, limit: i64)
        -> Result<Vec<AbmDevice>>;
    async fn count_abm_devices(&self, name: &str) -> Result<i64>;
    /// Removes the token and its devices; an unknown name is [`StoreError::NotFound`].
    async fn delete_abm_token(&self, name: &str, audit: &Audit) -> Result<()>;
}

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

#[async_trait]
impl<S, DB> AbmStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    for<'q> &'q [u8]: Param<'q, DB>,
    for<'q> Option<&'q str>: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
    bool: Column<DB>,
    String: Column<DB>,
    Option<String>: Column<DB>,
    Vec<u8>: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
{
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
        .fetch_optional(self.pool())
        .await?)
    }

    async fn default_abm_token(&self) -> Result<Option<AbmToken>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM server_tokens WHERE is_default_account_driven"
        ))
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_abm_tokens(&self) -> Result<Vec<AbmToken>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM server_tokens ORDER BY name"
        ))
        .fetch_all(self.pool())
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
        let id = token_id(&mut tx, name).await?;
        if up.make_default {
            clear_other_defaults::<S, _>(&mut tx, id, at).await?;
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

    async fn set_default_abm_token(&self, name: &str, audit: &Audit) -> Result<AbmToken> {
        let mut tx = self.begin_write().await?;
        let at = now();
        let id = token_id(&mut tx, name).await?;
        clear_other_defaults::<S, _>(&mut tx, id, at).await?;
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
        .fetch_optional(self.pool())
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
                changed += S::rows_affected(
                    &sqlx::query(
                        "DELETE FROM abm_devices WHERE token_id = $1 AND serial_number = $2",
                    )
                    .bind(id)
                    .bind(&d.serial_number)
                    .execute(&mut *tx)
                    .await?,
                );
                continue;
            }
            changed += S::rows_affected(
                &sqlx::query(
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
                .await?,
            );
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
        .execute(self.pool())
        .await?;
        if S::rows_affected(&done) == 0 {
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
        .fetch_all(self.pool())
        .await?)
    }

    async fn count_abm_devices(&self, name: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM abm_devices WHERE token_id = \
             (SELECT id FROM server_tokens WHERE name = $1)",
        )
        .bind(name)
        .fetch_one(self.pool())
        .await?)
    }

    async fn delete_abm_token(&self, name: &str, audit: &Audit) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let id = token_id(&mut tx, name).await?;
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

/// The id of the token named `name`; an unknown name is [`StoreError::NotFound`].
async fn token_id<DB>(tx: &mut Transaction<'_, DB>, name: &str) -> Result<i64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
{
    sqlx::query_scalar("SELECT id FROM server_tokens WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| no_token(name))
}

/// Takes the default for account-driven enrollment from every token but `id`.
async fn clear_other_defaults<S, DB>(
    tx: &mut Transaction<'_, DB>,
    id: i64,
    at: DateTime<Utc>,
) -> Result<()>
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    i64: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    if let Some(lock) = S::LOCK_TOKENS {
        sqlx::query(lock).execute(&mut **tx).await?;
    }
    sqlx::query(
        "UPDATE server_tokens SET is_default_account_driven = FALSE, \
         updated_at = $2 WHERE is_default_account_driven AND id <> $1",
    )
    .bind(id)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
