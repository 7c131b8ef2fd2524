//! Declarative device management: declarations, their sets and the sets' assignments, and what
//! each enrollment reported (the latest value of each status item, each declaration's state).
//! The rows, [`DeclarationStore`] and its SQL; migration `0014_declarations`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use sqlx::{ColumnIndex, Database, Executor, IntoArguments, Transaction};

use crate::audit::{commit_audited, execute_one_audited, fetch_one_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::enrollments::ENROLLMENT_COLUMNS;
use crate::{
    conflict_as, now, DeclarationKind, DeclarationValidity, Enrollment, EnrollmentId, Result,
    StoreError,
};

/// A declaration as stored: Apple's `Type`, `Identifier`, `ServerToken` and `Payload` (JSON
/// text), and for an asset whose data Lanyard serves, that data sealed by the caller.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeclarationRow {
    pub id: i64,
    pub identifier: String,
    pub declaration_type: String,
    #[sqlx(try_from = "String")]
    pub kind: DeclarationKind,
    /// The `Payload` object, as JSON text.
    pub payload: String,
    pub server_token: String,
    /// An asset's data, sealed with the server's secret key.
    pub asset_data_sealed: Option<Vec<u8>>,
    /// The media type the asset's data is served with.
    pub asset_content_type: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for DeclarationRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclarationRow")
            .field("identifier", &self.identifier)
            .field("declaration_type", &self.declaration_type)
            .field("kind", &self.kind)
            .field("server_token", &self.server_token)
            .field(
                "asset_data_sealed",
                &self.asset_data_sealed.as_ref().map(Vec::len),
            )
            .finish_non_exhaustive()
    }
}

/// A new declaration (its `ServerToken` computed by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeclaration {
    pub identifier: String,
    pub declaration_type: String,
    pub kind: DeclarationKind,
    pub payload: String,
    pub server_token: String,
    pub asset_data_sealed: Option<Vec<u8>>,
    pub asset_content_type: Option<String>,
}

/// A declaration's new content: everything but its `Type` and `Identifier` is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationChange {
    pub payload: String,
    pub server_token: String,
    pub asset_data_sealed: Option<Vec<u8>>,
    pub asset_content_type: Option<String>,
}

/// A named set of declarations, assigned as a whole.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeclarationSetRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whom a set is assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AssignmentTarget {
    /// A person (by user id): every Mac they enroll.
    User(i64),
    /// Every User Enrollment Mac.
    AllUserEnrollments,
    /// One enrollment.
    Enrollment(EnrollmentId),
}

impl AssignmentTarget {
    /// The stored kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            AssignmentTarget::User(_) => "user",
            AssignmentTarget::AllUserEnrollments => "all_user_enrollments",
            AssignmentTarget::Enrollment(_) => "enrollment",
        }
    }

    /// The one text naming this target (unique per set).
    pub fn key(&self) -> String {
        match self {
            AssignmentTarget::User(id) => format!("user:{id}"),
            AssignmentTarget::AllUserEnrollments => "all_user_enrollments".into(),
            AssignmentTarget::Enrollment(id) => format!("enrollment:{id}"),
        }
    }

    fn from_parts(kind: &str, user_id: Option<i64>, enrollment_id: Option<String>) -> Result<Self> {
        match (kind, user_id, enrollment_id) {
            ("user", Some(u), _) => Ok(AssignmentTarget::User(u)),
            ("all_user_enrollments", _, _) => Ok(AssignmentTarget::AllUserEnrollments),
            ("enrollment", _, Some(e)) => Ok(AssignmentTarget::Enrollment(EnrollmentId(e))),
            (other, _, _) => Err(StoreError::Corrupt(format!(
                "declaration assignment of unknown kind {other:?}"
            ))),
        }
    }
}

/// One assignment of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentRow {
    pub set_name: String,
    pub target: AssignmentTarget,
    pub created_at: DateTime<Utc>,
}

/// A declaration's state on one enrollment, as its Mac last reported it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeclarationStatusRow {
    pub identifier: String,
    /// The `ServerToken` the Mac holds.
    pub server_token: String,
    pub active: bool,
    #[sqlx(try_from = "String")]
    pub valid: DeclarationValidity,
    /// The reasons the Mac gave (a JSON array).
    pub reasons: String,
    pub updated_at: DateTime<Utc>,
}

/// The latest value of one status item of one enrollment.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StatusItemRow {
    pub name: String,
    /// JSON text.
    pub value: String,
    pub updated_at: DateTime<Utc>,
}

/// How many enrollments report a declaration active, and how many invalid.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeclarationStatusCount {
    pub identifier: String,
    pub active: i64,
    pub failing: i64,
}

/// A declaration's reported state, to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationStatusRecord {
    pub identifier: String,
    pub server_token: String,
    pub active: bool,
    pub valid: DeclarationValidity,
    /// JSON array.
    pub reasons: String,
}

/// What one status report changes, already checked and bounded by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReportRecord {
    /// Status items and their new values (JSON text).
    pub items: Vec<(String, String)>,
    /// The declarations' states, when the report carried them.
    pub declarations: Vec<DeclarationStatusRecord>,
    /// A full report: the declarations listed are all the Mac holds, so the states of others
    /// are forgotten.
    pub full: bool,
}

/// Declarations, sets, assignments and reported status.
#[async_trait]
pub trait DeclarationStore: Send + Sync {
    /// Creates a declaration; an existing identifier is [`StoreError::Conflict`].
    async fn create_declaration(&self, d: &NewDeclaration, audit: &Audit)
        -> Result<DeclarationRow>;
    /// Replaces a declaration's content; an unknown identifier is [`StoreError::NotFound`].
    async fn update_declaration(
        &self,
        identifier: &str,
        change: &DeclarationChange,
        audit: &Audit,
    ) -> Result<DeclarationRow>;
    /// Deletes a declaration (and its set memberships); unknown is [`StoreError::NotFound`].
    async fn delete_declaration(&self, identifier: &str, audit: &Audit) -> Result<()>;
    async fn declaration(&self, identifier: &str) -> Result<Option<DeclarationRow>>;
    /// Every declaration, by identifier.
    async fn list_declarations(&self) -> Result<Vec<DeclarationRow>>;

    /// Creates a set; an existing name is [`StoreError::Conflict`].
    async fn create_declaration_set(
        &self,
        name: &str,
        description: &str,
        audit: &Audit,
    ) -> Result<DeclarationSetRow>;
    /// Changes a set's description; unknown is [`StoreError::NotFound`].
    async fn update_declaration_set(
        &self,
        name: &str,
        description: &str,
        audit: &Audit,
    ) -> Result<DeclarationSetRow>;
    /// Deletes a set with its memberships and assignments; unknown is
    /// [`StoreError::NotFound`].
    async fn delete_declaration_set(&self, name: &str, audit: &Audit) -> Result<()>;
    async fn declaration_set(&self, name: &str) -> Result<Option<DeclarationSetRow>>;
    /// Every set, by name.
    async fn list_declaration_sets(&self) -> Result<Vec<DeclarationSetRow>>;
    /// Adds a declaration to a set: an unknown set or declaration is [`StoreError::NotFound`],
    /// a member already there [`StoreError::Conflict`].
    async fn add_set_member(&self, set: &str, identifier: &str, audit: &Audit) -> Result<()>;
    /// Removes a declaration from a set; not a member is [`StoreError::NotFound`].
    async fn remove_set_member(&self, set: &str, identifier: &str, audit: &Audit) -> Result<()>;
    /// A set's declarations, by identifier.
    async fn set_members(&self, set: &str) -> Result<Vec<DeclarationRow>>;
    /// The sets a declaration belongs to, by name.
    async fn sets_of_declaration(&self, identifier: &str) -> Result<Vec<DeclarationSetRow>>;
    /// Assigns a set: an unknown set, user or enrollment is [`StoreError::NotFound`], the same
    /// assignment again [`StoreError::Conflict`].
    async fn assign_set(&self, set: &str, target: &AssignmentTarget, audit: &Audit) -> Result<()>;
    /// Removes an assignment; not assigned is [`StoreError::NotFound`].
    async fn unassign_set(&self, set: &str, target: &AssignmentTarget, audit: &Audit)
        -> Result<()>;
    /// The assignments of one set (`Some`) or of every set, by set name.
    async fn set_assignments(&self, set: Option<&str>) -> Result<Vec<AssignmentRow>>;
    /// The declarations of every set assigned to this enrollment: to its person, to every
    /// User Enrollment (when it is one), or to it; by identifier.
    async fn declarations_for_enrollment(&self, enrollment_id: &str)
        -> Result<Vec<DeclarationRow>>;
    /// The enrollments a set reaches that can be pushed (enrolled, or inactive after having
    /// enrolled).
    async fn enrollments_for_set(&self, set: &str) -> Result<Vec<Enrollment>>;
    /// Stores a status report's items and declaration states in one transaction.
    async fn record_status_report(
        &self,
        enrollment_id: &str,
        report: &StatusReportRecord,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// An enrollment's latest status items, by name.
    async fn status_items(&self, enrollment_id: &str) -> Result<Vec<StatusItemRow>>;
    /// An enrollment's declaration states, by identifier.
    async fn declaration_statuses(&self, enrollment_id: &str) -> Result<Vec<DeclarationStatusRow>>;
    /// Per declaration identifier reported by any enrollment: how many report it active and
    /// how many invalid.
    async fn declaration_status_counts(&self) -> Result<Vec<DeclarationStatusCount>>;
}

const DECLARATION_COLUMNS: &str = "id, identifier, declaration_type, kind, payload, \
    server_token, asset_data_sealed, asset_content_type, created_at, updated_at";

const SET_COLUMNS: &str = "id, name, description, created_at, updated_at";

/// True for assignment `a` of a set reaching enrollment `e`.
const REACHES: &str = "((a.target_kind = 'user' AND a.user_id = e.user_id) \
    OR (a.target_kind = 'all_user_enrollments' AND e.mode = 'user_enrollment') \
    OR (a.target_kind = 'enrollment' AND a.enrollment_id = e.id))";

fn prefixed(columns: &str, alias: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

type AssignmentParts = (String, String, Option<i64>, Option<String>, DateTime<Utc>);

fn assignments_from(rows: Vec<AssignmentParts>) -> Result<Vec<AssignmentRow>> {
    rows.into_iter()
        .map(|(set_name, kind, user, enrollment, created_at)| {
            Ok(AssignmentRow {
                set_name,
                target: AssignmentTarget::from_parts(&kind, user, enrollment)?,
                created_at,
            })
        })
        .collect()
}

#[async_trait]
impl<S, DB> DeclarationStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    for<'q> Option<&'q str>: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
    Option<i64>: Column<DB>,
    bool: Column<DB>,
    String: Column<DB>,
    Option<String>: Column<DB>,
    Option<Vec<u8>>: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    async fn create_declaration(
        &self,
        d: &NewDeclaration,
        audit: &Audit,
    ) -> Result<DeclarationRow> {
        let mut tx = self.begin_write().await?;
        let at = now();
        let row: DeclarationRow = sqlx::query_as(&format!(
            "INSERT INTO declarations (identifier, declaration_type, kind, payload, \
             server_token, asset_data_sealed, asset_content_type, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             RETURNING {DECLARATION_COLUMNS}"
        ))
        .bind(&d.identifier)
        .bind(&d.declaration_type)
        .bind(d.kind)
        .bind(&d.payload)
        .bind(&d.server_token)
        .bind(&d.asset_data_sealed)
        .bind(&d.asset_content_type)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict_as(|| {
            format!("declaration {} exists", d.identifier)
        }))?;
        commit_audited(tx, audit).await?;
        Ok(row)
    }

    async fn update_declaration(
        &self,
        identifier: &str,
        c: &DeclarationChange,
        audit: &Audit,
    ) -> Result<DeclarationRow> {
        let sql = format!(
            "UPDATE declarations SET payload = $2, server_token = $3, \
             asset_data_sealed = $4, asset_content_type = $5, updated_at = $6 \
             WHERE identifier = $1 RETURNING {DECLARATION_COLUMNS}"
        );
        let update = sqlx::query_as(&sql)
            .bind(identifier)
            .bind(&c.payload)
            .bind(&c.server_token)
            .bind(&c.asset_data_sealed)
            .bind(&c.asset_content_type)
            .bind(now());
        let missing = || StoreError::NotFound(format!("declaration {identifier}"));
        fetch_one_audited(self, update, missing, audit).await
    }

    async fn delete_declaration(&self, identifier: &str, audit: &Audit) -> Result<()> {
        let delete = sqlx::query("DELETE FROM declarations WHERE identifier = $1").bind(identifier);
        let missing = || StoreError::NotFound(format!("declaration {identifier}"));
        execute_one_audited(self, delete, missing, audit).await
    }

    async fn declaration(&self, identifier: &str) -> Result<Option<DeclarationRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DECLARATION_COLUMNS} FROM declarations WHERE identifier = $1"
        ))
        .bind(identifier)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_declarations(&self) -> Result<Vec<DeclarationRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DECLARATION_COLUMNS} FROM declarations ORDER BY identifier"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    async fn create_declaration_set(
        &self,
        name: &str,
        description: &str,
        audit: &Audit,
    ) -> Result<DeclarationSetRow> {
        let mut tx = self.begin_write().await?;
        let row: DeclarationSetRow = sqlx::query_as(&format!(
            "INSERT INTO declaration_sets (name, description, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) RETURNING {SET_COLUMNS}"
        ))
        .bind(name)
        .bind(description)
        .bind(now())
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict_as(|| format!("declaration set {name} exists")))?;
        commit_audited(tx, audit).await?;
        Ok(row)
    }

    async fn update_declaration_set(
        &self,
        name: &str,
        description: &str,
        audit: &Audit,
    ) -> Result<DeclarationSetRow> {
        let sql = format!(
            "UPDATE declaration_sets SET description = $2, updated_at = $3 \
             WHERE name = $1 RETURNING {SET_COLUMNS}"
        );
        let update = sqlx::query_as(&sql)
            .bind(name)
            .bind(description)
            .bind(now());
        let missing = || StoreError::NotFound(format!("declaration set {name}"));
        fetch_one_audited(self, update, missing, audit).await
    }

    async fn delete_declaration_set(&self, name: &str, audit: &Audit) -> Result<()> {
        let delete = sqlx::query("DELETE FROM declaration_sets WHERE name = $1").bind(name);
        let missing = || StoreError::NotFound(format!("declaration set {name}"));
        execute_one_audited(self, delete, missing, audit).await
    }

    async fn declaration_set(&self, name: &str) -> Result<Option<DeclarationSetRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {SET_COLUMNS} FROM declaration_sets WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_declaration_sets(&self) -> Result<Vec<DeclarationSetRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {SET_COLUMNS} FROM declaration_sets ORDER BY name"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    async fn add_set_member(&self, set: &str, identifier: &str, audit: &Audit) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let set_id = set_id(&mut tx, set).await?;
        let declaration_id = declaration_id(&mut tx, identifier).await?;
        let done = sqlx::query(
            "INSERT INTO declaration_set_members (set_id, declaration_id) \
             VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(set_id)
        .bind(declaration_id)
        .execute(&mut *tx)
        .await?;
        if S::rows_affected(&done) == 0 {
            return Err(StoreError::Conflict(format!(
                "{identifier} is already in set {set}"
            )));
        }
        commit_audited(tx, audit).await
    }

    async fn remove_set_member(&self, set: &str, identifier: &str, audit: &Audit) -> Result<()> {
        let remove = sqlx::query(
            "DELETE FROM declaration_set_members WHERE \
             set_id = (SELECT id FROM declaration_sets WHERE name = $1) AND \
             declaration_id = (SELECT id FROM declarations WHERE identifier = $2)",
        )
        .bind(set)
        .bind(identifier);
        let missing = || StoreError::NotFound(format!("declaration {identifier} in set {set}"));
        execute_one_audited(self, remove, missing, audit).await
    }

    async fn set_members(&self, set: &str) -> Result<Vec<DeclarationRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM declarations d JOIN declaration_set_members m \
             ON m.declaration_id = d.id JOIN declaration_sets s ON s.id = m.set_id \
             WHERE s.name = $1 ORDER BY d.identifier",
            prefixed(DECLARATION_COLUMNS, "d")
        ))
        .bind(set)
        .fetch_all(self.pool())
        .await?)
    }

    async fn sets_of_declaration(&self, identifier: &str) -> Result<Vec<DeclarationSetRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM declaration_sets s JOIN declaration_set_members m \
             ON m.set_id = s.id JOIN declarations d ON d.id = m.declaration_id \
             WHERE d.identifier = $1 ORDER BY s.name",
            prefixed(SET_COLUMNS, "s")
        ))
        .bind(identifier)
        .fetch_all(self.pool())
        .await?)
    }

    async fn assign_set(&self, set: &str, target: &AssignmentTarget, audit: &Audit) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let set_id = set_id(&mut tx, set).await?;
        let (user_id, enrollment_id) = match target {
            AssignmentTarget::User(u) => {
                let known: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
                    .bind(*u)
                    .fetch_optional(&mut *tx)
                    .await?;
                if known.is_none() {
                    return Err(StoreError::NotFound(format!("user {u}")));
                }
                (Some(*u), None)
            }
            AssignmentTarget::AllUserEnrollments => (None, None),
            AssignmentTarget::Enrollment(e) => {
                let known: Option<String> =
                    sqlx::query_scalar("SELECT id FROM enrollments WHERE id = $1")
                        .bind(e.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                if known.is_none() {
                    return Err(StoreError::NotFound(format!("enrollment {e}")));
                }
                (None, Some(e.as_str()))
            }
        };
        let done = sqlx::query(
            "INSERT INTO declaration_assignments (set_id, target_kind, target_key, \
             user_id, enrollment_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT DO NOTHING",
        )
        .bind(set_id)
        .bind(target.kind())
        .bind(target.key())
        .bind(user_id)
        .bind(enrollment_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        if S::rows_affected(&done) == 0 {
            return Err(StoreError::Conflict(format!(
                "set {set} is already assigned to {}",
                target.key()
            )));
        }
        commit_audited(tx, audit).await
    }

    async fn unassign_set(
        &self,
        set: &str,
        target: &AssignmentTarget,
        audit: &Audit,
    ) -> Result<()> {
        let remove = sqlx::query(
            "DELETE FROM declaration_assignments WHERE \
             set_id = (SELECT id FROM declaration_sets WHERE name = $1) \
             AND target_key = $2",
        )
        .bind(set)
        .bind(target.key());
        let missing =
            || StoreError::NotFound(format!("assignment of set {set} to {}", target.key()));
        execute_one_audited(self, remove, missing, audit).await
    }

    async fn set_assignments(&self, set: Option<&str>) -> Result<Vec<AssignmentRow>> {
        let rows: Vec<AssignmentParts> = sqlx::query_as(
            "SELECT s.name, a.target_kind, a.user_id, a.enrollment_id, a.created_at \
             FROM declaration_assignments a JOIN declaration_sets s ON s.id = a.set_id \
             WHERE $1 IS NULL OR s.name = $1 ORDER BY s.name, a.target_key",
        )
        .bind(set)
        .fetch_all(self.pool())
        .await?;
        assignments_from(rows)
    }

    async fn declarations_for_enrollment(
        &self,
        enrollment_id: &str,
    ) -> Result<Vec<DeclarationRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DECLARATION_COLUMNS} FROM declarations WHERE id IN (\
             SELECT m.declaration_id FROM declaration_set_members m \
             JOIN declaration_assignments a ON a.set_id = m.set_id \
             JOIN enrollments e ON e.id = $1 WHERE {REACHES}) \
             ORDER BY identifier"
        ))
        .bind(enrollment_id)
        .fetch_all(self.pool())
        .await?)
    }

    async fn enrollments_for_set(&self, set: &str) -> Result<Vec<Enrollment>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM enrollments e WHERE \
             (e.status = 'enrolled' OR (e.status = 'inactive' AND \
             e.enrolled_at IS NOT NULL)) AND EXISTS (SELECT 1 FROM \
             declaration_assignments a JOIN declaration_sets s ON s.id = a.set_id \
             WHERE s.name = $1 AND {REACHES}) ORDER BY e.id",
            prefixed(ENROLLMENT_COLUMNS, "e")
        ))
        .bind(set)
        .fetch_all(self.pool())
        .await?)
    }

    async fn record_status_report(
        &self,
        enrollment_id: &str,
        report: &StatusReportRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (name, value) in &report.items {
            sqlx::query(
                "INSERT INTO status_items (enrollment_id, name, value, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (enrollment_id, name) DO UPDATE \
                 SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(enrollment_id)
            .bind(name)
            .bind(value)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if report.full {
            sqlx::query("DELETE FROM declaration_status WHERE enrollment_id = $1")
                .bind(enrollment_id)
                .execute(&mut *tx)
                .await?;
        }
        for d in &report.declarations {
            sqlx::query(
                "INSERT INTO declaration_status (enrollment_id, identifier, \
                 server_token, active, valid, reasons, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (enrollment_id, identifier) DO UPDATE SET \
                 server_token = excluded.server_token, active = excluded.active, \
                 valid = excluded.valid, reasons = excluded.reasons, \
                 updated_at = excluded.updated_at",
            )
            .bind(enrollment_id)
            .bind(&d.identifier)
            .bind(&d.server_token)
            .bind(d.active)
            .bind(d.valid)
            .bind(&d.reasons)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn status_items(&self, enrollment_id: &str) -> Result<Vec<StatusItemRow>> {
        Ok(sqlx::query_as(
            "SELECT name, value, updated_at FROM status_items \
             WHERE enrollment_id = $1 ORDER BY name",
        )
        .bind(enrollment_id)
        .fetch_all(self.pool())
        .await?)
    }

    async fn declaration_statuses(&self, enrollment_id: &str) -> Result<Vec<DeclarationStatusRow>> {
        Ok(sqlx::query_as(
            "SELECT identifier, server_token, active, valid, reasons, updated_at \
             FROM declaration_status WHERE enrollment_id = $1 ORDER BY identifier",
        )
        .bind(enrollment_id)
        .fetch_all(self.pool())
        .await?)
    }

    async fn declaration_status_counts(&self) -> Result<Vec<DeclarationStatusCount>> {
        Ok(sqlx::query_as(
            "SELECT identifier, COUNT(CASE WHEN active THEN 1 END) AS active, \
             COUNT(CASE WHEN valid = 'invalid' THEN 1 END) AS failing \
             FROM declaration_status GROUP BY identifier ORDER BY identifier",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

/// The id of the set named `name`; an unknown name is [`StoreError::NotFound`].
async fn set_id<DB>(tx: &mut Transaction<'_, DB>, name: &str) -> Result<i64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
{
    sqlx::query_scalar("SELECT id FROM declaration_sets WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("declaration set {name}")))
}

/// The id of the declaration `identifier`; an unknown one is [`StoreError::NotFound`].
async fn declaration_id<DB>(tx: &mut Transaction<'_, DB>, identifier: &str) -> Result<i64>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
{
    sqlx::query_scalar("SELECT id FROM declarations WHERE identifier = $1")
        .bind(identifier)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("declaration {identifier}")))
}
