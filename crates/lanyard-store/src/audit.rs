//! The audit log: every mutating call takes an [`Audit`] line and writes it in the same
//! transaction as its change ([`commit_audited`], and [`execute_one_audited`] /
//! [`fetch_one_audited`] for a one-statement change), so a change without its line cannot
//! happen. [`AuditStore`] reads the lines back; the portal's filtered, counted search is
//! [`crate::ListingStore::search_audit`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::query::{Query, QueryAs};
use sqlx::{ColumnIndex, Database, Executor, FromRow, IntoArguments, Transaction};

use crate::dialect::{Column, Dialect, Param};
use crate::{now, Result, StoreError};

/// One audit log line: who changed what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON object with the change's details (never secrets).
    pub detail: String,
}

/// What a mutating call records in the audit log, in the same transaction as the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

impl Audit {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail,
        }
    }
}

/// Filter for reading the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Audit lines, newest first, matching the filter.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;
}

#[async_trait]
impl<S, DB> AuditStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    i64: Column<DB>,
    Option<i64>: Column<DB>,
    String: Column<DB>,
    Option<String>: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let limit = if filter.limit <= 0 {
            100
        } else {
            filter.limit.min(1000)
        };
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, target, detail FROM audit_log \
             WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) \
             AND ($3 IS NULL OR target = $3) AND ($4 IS NULL OR id < $4) \
             ORDER BY id DESC LIMIT $5",
        )
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.target)
        .bind(filter.before_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}

/// Writes a change's audit entry in the change's transaction, then commits both.
pub(crate) async fn commit_audited<DB>(mut tx: Transaction<'_, DB>, audit: &Audit) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    String: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now())
    .bind(&audit.actor)
    .bind(&audit.action)
    .bind(&audit.target)
    .bind(audit.detail.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Runs one statement that must change a row and writes its audit entry, in one transaction;
/// `missing()` when no row matched, and then nothing is written.
pub(crate) async fn execute_one_audited<'q, S, DB>(
    store: &S,
    change: Query<'q, DB, DB::Arguments<'q>>,
    missing: impl FnOnce() -> StoreError + Send,
    audit: &Audit,
) -> Result<()>
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    String: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    let mut tx = store.begin_write().await?;
    if S::rows_affected(&change.execute(&mut *tx).await?) == 0 {
        return Err(missing());
    }
    commit_audited(tx, audit).await
}

/// Runs one statement that returns the row it changed and writes its audit entry, in one
/// transaction; `missing()` when no row matched, and then nothing is written.
pub(crate) async fn fetch_one_audited<'q, S, DB, T>(
    store: &S,
    change: QueryAs<'q, DB, T, DB::Arguments<'q>>,
    missing: impl FnOnce() -> StoreError + Send,
    audit: &Audit,
) -> Result<T>
where
    S: Dialect<Db = DB>,
    DB: Database,
    T: for<'r> FromRow<'r, DB::Row> + Send + Unpin,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    String: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    let mut tx = store.begin_write().await?;
    let row = change.fetch_optional(&mut *tx).await?.ok_or_else(missing)?;
    commit_audited(tx, audit).await?;
    Ok(row)
}
