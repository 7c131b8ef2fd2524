//! Certificates and their sealed keys shared by every server process (the CA, the TLS and
//! push certificates), and key material waiting for its certificate: the rows, [`PkiStore`]
//! and its SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments, Transaction};

use crate::audit::{commit_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::{Result, StoreError};

/// A named certificate with its sealed private key (e.g. the CA), shared by all server processes.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PkiMaterial {
    pub name: String,
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait PkiStore: Send + Sync {
    async fn get_pki(&self, name: &str) -> Result<Option<PkiMaterial>>;
    /// Inserts or replaces (e.g. renewing the APNs certificate), audited in one transaction.
    async fn put_pki(&self, material: &PkiMaterial, audit: &Audit) -> Result<()>;
    /// Inserts unless a row of that name exists (another process won the race); returns whether
    /// this call inserted it. Callers re-read afterwards so every process uses the same material.
    async fn insert_pki_if_absent(&self, material: &PkiMaterial) -> Result<bool>;
    /// Whether the database holds anything sealed with the secret key (CA and TLS keys, the
    /// push certificate key and a pending one, server tokens, identity provider secrets, device tokens, sign-in
    /// verifiers): a database that does cannot be used with a freshly generated key.
    async fn holds_sealed_material(&self) -> Result<bool>;

    /// Key material waiting for its certificate (the push key with its CSR in `cert_pem`, or
    /// a helper certificate with its key).
    async fn get_pending_pki(&self, name: &str) -> Result<Option<PkiMaterial>>;
    /// Inserts or replaces these pending rows, audited, in one transaction.
    async fn put_pending_pki(&self, rows: &[PkiMaterial], audit: &Audit) -> Result<()>;
    /// The certificate came back: stores `material` (inserting or replacing) and deletes the
    /// pending rows named in `pending`, audited, in one transaction. When the first pending
    /// row is gone (another upload completed it) this is [`StoreError::NotFound`] and changes
    /// nothing.
    async fn complete_pending_pki(
        &self,
        pending: &[&str],
        material: &PkiMaterial,
        audit: &Audit,
    ) -> Result<()>;
}

#[async_trait]
impl<S, DB> PkiStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    bool: Column<DB>,
    String: Column<DB>,
    Vec<u8>: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    async fn get_pki(&self, name: &str) -> Result<Option<PkiMaterial>> {
        Ok(sqlx::query_as(
            "SELECT name, cert_pem, key_sealed, created_at FROM pki_material \
             WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn put_pki(&self, m: &PkiMaterial, audit: &Audit) -> Result<()> {
        let mut tx = self.begin_write().await?;
        upsert_pki(&mut tx, m).await?;
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
        .execute(self.pool())
        .await?;
        Ok(S::rows_affected(&done) == 1)
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
        .fetch_one(self.pool())
        .await?;
        Ok(any)
    }

    async fn get_pending_pki(&self, name: &str) -> Result<Option<PkiMaterial>> {
        Ok(sqlx::query_as(
            "SELECT name, pem AS cert_pem, key_sealed, created_at FROM pki_pending \
             WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
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
            if i == 0 && S::rows_affected(&gone) == 0 {
                return Err(StoreError::NotFound(format!("pending {name}")));
            }
        }
        upsert_pki(&mut tx, m).await?;
        commit_audited(tx, audit).await
    }
}

/// Inserts or replaces one row of PKI material (upload, renewal, a completed
/// pending request).
async fn upsert_pki<DB>(tx: &mut Transaction<'_, DB>, m: &PkiMaterial) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    String: Column<DB>,
    Vec<u8>: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}
