//! The read-only queries behind the admin portal's lists — summary counts, a searchable,
//! sortable, paginated device list with its total, and the audit log filtered by date range
//! with its total: their types, [`ListingStore`] and its SQL. Sort columns come from a
//! whitelist enum, never from request text.
//!
//! [`ListingStore::list_devices`] is THE device search: the portal's Devices page, the bulk
//! command's "every matching device" target, the admin API and the CLI all call it with a
//! [`DeviceListQuery`], so a search lists exactly the devices a command by that search reaches.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use sqlx::{ColumnIndex, Database, Executor, IntoArguments};

use crate::dialect::{Column, Dialect, Param};
use crate::enrollments::ENROLLMENT_COLUMNS;
use crate::{AuditEntry, Enrollment, EnrollmentStatus, Result};

/// Columns the device list can be sorted by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSort {
    ManagedAppleId,
    ModelFamily,
    OsVersion,
    Status,
    LastSeen,
    /// When the enrollment began (the default, newest first).
    #[default]
    Created,
}

impl DeviceSort {
    /// Parses a sort key from a request (`managed_apple_id`, `model`, `os`, `status`,
    /// `last_seen`, `created`); anything else is `None`.
    pub fn parse(s: &str) -> Option<DeviceSort> {
        Some(match s {
            "managed_apple_id" => DeviceSort::ManagedAppleId,
            "model" => DeviceSort::ModelFamily,
            "os" => DeviceSort::OsVersion,
            "status" => DeviceSort::Status,
            "last_seen" => DeviceSort::LastSeen,
            "created" => DeviceSort::Created,
            _ => return None,
        })
    }

    pub fn key(self) -> &'static str {
        match self {
            DeviceSort::ManagedAppleId => "managed_apple_id",
            DeviceSort::ModelFamily => "model",
            DeviceSort::OsVersion => "os",
            DeviceSort::Status => "status",
            DeviceSort::LastSeen => "last_seen",
            DeviceSort::Created => "created",
        }
    }

    fn column(self) -> &'static str {
        match self {
            DeviceSort::ManagedAppleId => "LOWER(managed_apple_id)",
            DeviceSort::ModelFamily => "COALESCE(model_family, product)",
            DeviceSort::OsVersion => "os_version",
            DeviceSort::Status => "status",
            DeviceSort::LastSeen => "last_seen_at",
            DeviceSort::Created => "created_at",
        }
    }
}

/// Most devices one [`ListingStore::list_devices`] call returns.
pub const MAX_DEVICE_LIST: i64 = 100_000;

/// The one device filter: a page of the device list, or every device a bulk command reaches.
#[derive(Debug, Clone, Default)]
pub struct DeviceListQuery {
    /// Case-insensitive substring of the managed Apple ID, the user's email, the model family
    /// or the product name. Taken literally (`%`, `_` and `\` match themselves) and trimmed;
    /// `None` or blank matches every device.
    pub search: Option<String>,
    /// Only this status; `None` = every status.
    pub status: Option<EnrollmentStatus>,
    /// Only enrollments whose Mac reports at least one declaration invalid (its latest
    /// declarative status report).
    pub declarations_failing: bool,
    pub sort: DeviceSort,
    pub descending: bool,
    pub offset: i64,
    /// At most [`MAX_DEVICE_LIST`]; 0 or less means 100.
    pub limit: i64,
}

/// The audit log filtered for the portal: exact actor/action/target, a date range
/// (`from` inclusive, `until` exclusive), newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditSearch {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub offset: i64,
    pub limit: i64,
}

/// Some rows and how many match in all.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub total: i64,
}

#[async_trait]
pub trait ListingStore: Send + Sync {
    /// Enrollments counted by mode and status: `(mode, status, count)`, ordered.
    async fn count_enrollments_by_mode(&self) -> Result<Vec<(String, String, i64)>>;
    /// Enrolled devices whose identity certificate expires before `before`, soonest first.
    async fn expiring_identities(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Enrollment>>;
    /// The device search (see the module doc): the matching enrollments in the order asked,
    /// and how many match in all.
    async fn list_devices(&self, q: &DeviceListQuery) -> Result<Paged<Enrollment>>;
    async fn search_audit(&self, q: &AuditSearch) -> Result<Paged<AuditEntry>>;
}

/// `%text%` for `LOWER(column) LIKE … ESCAPE '\'`: the search trimmed and lower-cased, with
/// LIKE's own wildcards in it taken literally. The one pattern rule of every text search.
pub(crate) fn like_pattern(s: Option<&str>) -> String {
    let mut out = String::from("%");
    for c in s.unwrap_or("").trim().to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// THE device search's condition: `$1` the status (or NULL), `$2` the [`like_pattern`], `$3`
/// whether only devices with a failing declaration match. Every statement that uses it binds
/// these three first.
pub(crate) const DEVICE_WHERE: &str =
    "WHERE ($1 IS NULL OR status = $1) AND (LOWER(managed_apple_id) \
     LIKE $2 ESCAPE '\\' OR LOWER(COALESCE(model_family, '')) LIKE $2 ESCAPE '\\' \
     OR LOWER(COALESCE(product, '')) LIKE $2 ESCAPE '\\' \
     OR user_id IN (SELECT id FROM users WHERE LOWER(email) LIKE $2 ESCAPE '\\')) \
     AND (NOT $3 OR id IN (SELECT enrollment_id FROM declaration_status WHERE valid = 'invalid'))";

const AUDIT_WHERE: &str = "WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) \
     AND ($3 IS NULL OR target = $3) AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5)";

#[async_trait]
impl<S, DB> ListingStore for S
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
    Option<String>: Column<DB>,
    Option<Vec<u8>>: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
{
    async fn count_enrollments_by_mode(&self) -> Result<Vec<(String, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT mode, status, COUNT(*) FROM enrollments GROUP BY mode, status \
             ORDER BY mode, status",
        )
        .fetch_all(self.pool())
        .await?)
    }

    async fn expiring_identities(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Enrollment>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM enrollments WHERE status = 'enrolled' \
             AND identity_not_after IS NOT NULL AND identity_not_after < $1 \
             ORDER BY identity_not_after, id LIMIT $2",
            ENROLLMENT_COLUMNS
        ))
        .bind(before)
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.pool())
        .await?)
    }

    async fn list_devices(&self, q: &DeviceListQuery) -> Result<Paged<Enrollment>> {
        let pattern = like_pattern(q.search.as_deref());
        let limit = if q.limit <= 0 {
            100
        } else {
            q.limit.min(MAX_DEVICE_LIST)
        };
        let dir = if q.descending { "DESC" } else { "ASC" };
        let total: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM enrollments {DEVICE_WHERE}"))
                .bind(q.status.map(EnrollmentStatus::as_str))
                .bind(&pattern)
                .bind(q.declarations_failing)
                .fetch_one(self.pool())
                .await?;
        let items = sqlx::query_as(&format!(
            "SELECT {} FROM enrollments {DEVICE_WHERE} \
             ORDER BY {col} IS NULL, {col} {dir}, id {dir} LIMIT $4 OFFSET $5",
            ENROLLMENT_COLUMNS,
            col = q.sort.column(),
        ))
        .bind(q.status.map(EnrollmentStatus::as_str))
        .bind(&pattern)
        .bind(q.declarations_failing)
        .bind(limit)
        .bind(q.offset.max(0))
        .fetch_all(self.pool())
        .await?;
        Ok(Paged { items, total })
    }

    async fn search_audit(&self, q: &AuditSearch) -> Result<Paged<AuditEntry>> {
        let limit = if q.limit <= 0 { 100 } else { q.limit.min(1000) };
        let total: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM audit_log {AUDIT_WHERE}"))
                .bind(&q.actor)
                .bind(&q.action)
                .bind(&q.target)
                .bind(q.from)
                .bind(q.until)
                .fetch_one(self.pool())
                .await?;
        let items = sqlx::query_as(&format!(
            "SELECT id, at, actor, action, target, detail FROM audit_log {AUDIT_WHERE} \
             ORDER BY id DESC LIMIT $6 OFFSET $7"
        ))
        .bind(&q.actor)
        .bind(&q.action)
        .bind(&q.target)
        .bind(q.from)
        .bind(q.until)
        .bind(limit)
        .bind(q.offset.max(0))
        .fetch_all(self.pool())
        .await?;
        Ok(Paged { items, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(like_pattern(Some("A_b%c\\")), "%a\\_b\\%c\\\\%");
        assert_eq!(like_pattern(None), "%%");
        assert_eq!(like_pattern(Some("  Bob ")), "%bob%");
        assert_eq!(like_pattern(Some("   ")), "%%");
    }

    #[test]
    fn sort_keys_round_trip() {
        for s in [
            DeviceSort::ManagedAppleId,
            DeviceSort::ModelFamily,
            DeviceSort::OsVersion,
            DeviceSort::Status,
            DeviceSort::LastSeen,
            DeviceSort::Created,
        ] {
            assert_eq!(DeviceSort::parse(s.key()), Some(s));
        }
        assert_eq!(DeviceSort::parse("password_hash"), None);
    }
}
