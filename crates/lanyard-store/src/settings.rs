//! Named settings documents and the custom attributes people fill in at enrollment: their
//! rows, [`SettingsStore`], [`AttributeStore`] and their SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments};

use crate::audit::{commit_audited, execute_one_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::{now, Result, StoreError};

/// A custom attribute definition as stored; `kind` and `choices` are validated by the domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CustomAttributeRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub required: bool,
    /// JSON array of strings (empty unless `kind` is `choice`).
    pub choices: String,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait SettingsStore: Send + Sync {
    /// A named settings document (JSON text), if one was ever saved.
    async fn get_setting(&self, name: &str) -> Result<Option<String>>;
    async fn put_setting(&self, name: &str, value: &str, audit: &Audit) -> Result<()>;
}

#[async_trait]
pub trait AttributeStore: Send + Sync {
    async fn create_attribute(
        &self,
        name: &str,
        kind: &str,
        required: bool,
        choices_json: &str,
        audit: &Audit,
    ) -> Result<CustomAttributeRow>;
    async fn list_attributes(&self) -> Result<Vec<CustomAttributeRow>>;
    async fn attribute_by_name(&self, name: &str) -> Result<Option<CustomAttributeRow>>;
    /// Deletes by name; an unknown name is [`StoreError::NotFound`].
    async fn delete_attribute(&self, name: &str, audit: &Audit) -> Result<()>;
}

#[async_trait]
impl<S, DB> SettingsStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    String: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    async fn get_setting(&self, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
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
impl<S, DB> AttributeStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    i64: Column<DB>,
    bool: Column<DB>,
    String: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
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
        .fetch_all(self.pool())
        .await?)
    }

    async fn attribute_by_name(&self, name: &str) -> Result<Option<CustomAttributeRow>> {
        Ok(sqlx::query_as(
            "SELECT id, name, kind, required, choices, created_at \
             FROM custom_attributes WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn delete_attribute(&self, name: &str, audit: &Audit) -> Result<()> {
        let delete = sqlx::query("DELETE FROM custom_attributes WHERE name = $1").bind(name);
        let missing = || StoreError::NotFound(format!("custom attribute {name}"));
        execute_one_audited(self, delete, missing, audit).await
    }
}
