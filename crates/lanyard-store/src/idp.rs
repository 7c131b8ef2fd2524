//! OpenID Connect providers used for enrollment sign-in, and the single-use state of each
//! sign-in started through one: the rows, [`IdentityProviderStore`] and its SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use sqlx::{ColumnIndex, Database, Executor, IntoArguments};

use crate::audit::{commit_audited, execute_one_audited, fetch_one_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::{now, Result, StoreError};

/// An OpenID Connect provider as stored. The client secret is sealed by the caller.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdentityProviderRow {
    pub id: i64,
    /// Short unique name used in URLs, the API and the CLI (`corp`).
    pub name: String,
    /// What the sign-in button says ("Sign in with Example Corp").
    pub display_name: String,
    /// Issuer URL; discovery lives under `/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret_sealed: Option<Vec<u8>>,
    /// Space-separated scopes asked for besides `openid`.
    pub scopes: String,
    /// The claim that carries the person's email / managed Apple Account.
    pub email_claim: String,
    /// Whether a first sign-in of an unknown person creates a Lanyard user.
    pub allow_create_users: bool,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIdentityProvider {
    pub name: String,
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret_sealed: Option<Vec<u8>>,
    pub scopes: String,
    pub email_claim: String,
    pub allow_create_users: bool,
    pub enabled: bool,
}

/// A change to a provider; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityProviderChange {
    pub display_name: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_sealed: Option<Vec<u8>>,
    pub scopes: Option<String>,
    pub email_claim: Option<String>,
    pub allow_create_users: Option<bool>,
    pub enabled: Option<bool>,
}

/// One sign-in started through a provider: found again by the hash of its `state`, used once.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OidcSignIn {
    pub state_hash: String,
    pub provider_id: i64,
    pub nonce: String,
    pub pkce_verifier_sealed: Vec<u8>,
    /// The managed Apple Account the Mac presented, when it did.
    pub user_identifier: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

/// OpenID Connect providers and their sign-in state.
#[async_trait]
pub trait IdentityProviderStore: Send + Sync {
    /// Creates a provider; an existing name is a [`StoreError::Conflict`].
    async fn create_identity_provider(
        &self,
        p: &NewIdentityProvider,
        audit: &Audit,
    ) -> Result<IdentityProviderRow>;
    async fn identity_provider(&self, name: &str) -> Result<Option<IdentityProviderRow>>;
    async fn identity_provider_by_id(&self, id: i64) -> Result<Option<IdentityProviderRow>>;
    /// Every provider, by name.
    async fn list_identity_providers(&self) -> Result<Vec<IdentityProviderRow>>;
    /// Applies a change; an unknown name is [`StoreError::NotFound`] and writes nothing.
    async fn update_identity_provider(
        &self,
        name: &str,
        change: &IdentityProviderChange,
        audit: &Audit,
    ) -> Result<IdentityProviderRow>;
    /// Deletes a provider (and its pending sign-ins); an unknown name is
    /// [`StoreError::NotFound`].
    async fn delete_identity_provider(&self, name: &str, audit: &Audit) -> Result<()>;

    async fn create_oidc_sign_in(&self, s: &OidcSignIn) -> Result<()>;
    /// Marks an unused, unexpired sign-in used and returns it; `None` when the state is
    /// unknown, already used or expired. Atomic: two racing callbacks cannot both use one.
    async fn consume_oidc_sign_in(
        &self,
        state_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OidcSignIn>>;
    /// Removes sign-ins that expired before `now`; returns how many.
    async fn prune_oidc_sign_ins(&self, now: DateTime<Utc>) -> Result<u64>;
}

const IDP_COLUMNS: &str = "id, name, display_name, issuer, client_id, client_secret_sealed, \
    scopes, email_claim, allow_create_users, enabled, created_at, updated_at";

const SIGN_IN_COLUMNS: &str = "state_hash, provider_id, nonce, pkce_verifier_sealed, \
    user_identifier, created_at, expires_at, used_at";

#[async_trait]
impl<S, DB> IdentityProviderStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    i64: Column<DB>,
    bool: Column<DB>,
    Option<bool>: Column<DB>,
    String: Column<DB>,
    Option<String>: Column<DB>,
    Vec<u8>: Column<DB>,
    Option<Vec<u8>>: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
{
    async fn create_identity_provider(
        &self,
        p: &NewIdentityProvider,
        audit: &Audit,
    ) -> Result<IdentityProviderRow> {
        let mut tx = self.begin_write().await?;
        let at = now();
        let row: IdentityProviderRow = sqlx::query_as(&format!(
            "INSERT INTO identity_providers (name, display_name, issuer, client_id, \
             client_secret_sealed, scopes, email_claim, allow_create_users, enabled, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $10) RETURNING {IDP_COLUMNS}"
        ))
        .bind(&p.name)
        .bind(&p.display_name)
        .bind(&p.issuer)
        .bind(&p.client_id)
        .bind(&p.client_secret_sealed)
        .bind(&p.scopes)
        .bind(&p.email_claim)
        .bind(p.allow_create_users)
        .bind(p.enabled)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        commit_audited(tx, audit).await?;
        Ok(row)
    }

    async fn identity_provider(&self, name: &str) -> Result<Option<IdentityProviderRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {IDP_COLUMNS} FROM identity_providers WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn identity_provider_by_id(&self, id: i64) -> Result<Option<IdentityProviderRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {IDP_COLUMNS} FROM identity_providers WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_identity_providers(&self) -> Result<Vec<IdentityProviderRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {IDP_COLUMNS} FROM identity_providers ORDER BY name"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    async fn update_identity_provider(
        &self,
        name: &str,
        c: &IdentityProviderChange,
        audit: &Audit,
    ) -> Result<IdentityProviderRow> {
        let sql = format!(
            "UPDATE identity_providers SET \
             display_name = COALESCE($2, display_name), \
             issuer = COALESCE($3, issuer), \
             client_id = COALESCE($4, client_id), \
             client_secret_sealed = COALESCE($5, client_secret_sealed), \
             scopes = COALESCE($6, scopes), \
             email_claim = COALESCE($7, email_claim), \
             allow_create_users = COALESCE($8, allow_create_users), \
             enabled = COALESCE($9, enabled), \
             updated_at = $10 \
             WHERE name = $1 RETURNING {IDP_COLUMNS}"
        );
        let update = sqlx::query_as(&sql)
            .bind(name)
            .bind(&c.display_name)
            .bind(&c.issuer)
            .bind(&c.client_id)
            .bind(&c.client_secret_sealed)
            .bind(&c.scopes)
            .bind(&c.email_claim)
            .bind(c.allow_create_users)
            .bind(c.enabled)
            .bind(now());
        let missing = || StoreError::NotFound(format!("identity provider {name}"));
        fetch_one_audited(self, update, missing, audit).await
    }

    async fn delete_identity_provider(&self, name: &str, audit: &Audit) -> Result<()> {
        let delete = sqlx::query("DELETE FROM identity_providers WHERE name = $1").bind(name);
        let missing = || StoreError::NotFound(format!("identity provider {name}"));
        execute_one_audited(self, delete, missing, audit).await
    }

    async fn create_oidc_sign_in(&self, s: &OidcSignIn) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO oidc_sign_ins ({SIGN_IN_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&s.state_hash)
        .bind(s.provider_id)
        .bind(&s.nonce)
        .bind(&s.pkce_verifier_sealed)
        .bind(&s.user_identifier)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.used_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn consume_oidc_sign_in(
        &self,
        state_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<OidcSignIn>> {
        Ok(sqlx::query_as(&format!(
            "UPDATE oidc_sign_ins SET used_at = $2 WHERE state_hash = $1 \
             AND used_at IS NULL AND expires_at > $2 RETURNING {SIGN_IN_COLUMNS}"
        ))
        .bind(state_hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn prune_oidc_sign_ins(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM oidc_sign_ins WHERE expires_at <= $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(S::rows_affected(&done))
    }
}
