//! People who may enroll a Mac: their rows, [`UserStore`] and its SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments};

use crate::audit::{commit_audited, fetch_one_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::listings::like_pattern;
use crate::{now, Result, StoreError};

/// A person who may enroll a Mac: email is the login and, by default, the managed Apple ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub display_name: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub managed_apple_id: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The fields needed to create a user; `password_hash` is already hashed by the caller.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub display_name: String,
    pub password_hash: Option<String>,
    pub managed_apple_id: Option<String>,
}

/// A change to an existing user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub display_name: Option<String>,
    pub password_hash: Option<String>,
    /// `Some(None)` clears the managed Apple ID.
    pub managed_apple_id: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// Paging and search for lists.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Case-insensitive substring of email or display name.
    pub search: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            search: None,
            offset: 0,
            limit: 100,
        }
    }
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates a user; an existing email is a [`StoreError::Conflict`].
    async fn create_user(&self, user: &NewUser, audit: &Audit) -> Result<User>;
    async fn user_by_id(&self, id: i64) -> Result<Option<User>>;
    /// Looks a user up by normalised email.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    async fn list_users(&self, query: &ListQuery) -> Result<Vec<User>>;
    async fn count_users(&self) -> Result<i64>;
    /// Applies a change; an unknown id is [`StoreError::NotFound`] and writes nothing.
    async fn update_user(&self, id: i64, change: &UserChange, audit: &Audit) -> Result<User>;
}

const USER_COLUMNS: &str =
    "id, email, display_name, password_hash, managed_apple_id, enabled, created_at, updated_at";

#[async_trait]
impl<S, DB> UserStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
    bool: Column<DB>,
    Option<bool>: Column<DB>,
    String: Column<DB>,
    Option<String>: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
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
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_users(&self, query: &ListQuery) -> Result<Vec<User>> {
        let pattern = like_pattern(query.search.as_deref());
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE LOWER(email) LIKE $1 ESCAPE '\\' \
             OR LOWER(display_name) LIKE $1 ESCAPE '\\' \
             ORDER BY email LIMIT $2 OFFSET $3"
        ))
        .bind(pattern)
        .bind(query.limit)
        .bind(query.offset)
        .fetch_all(self.pool())
        .await?)
    }

    async fn count_users(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?)
    }

    async fn update_user(&self, id: i64, change: &UserChange, audit: &Audit) -> Result<User> {
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
