//! The MDM command channel outside the device's exchange: commands stored once and queued for
//! their targets, results moved to history, push requests claimed and finished, inventory.
//! The rows, [`CommandStore`] and its SQL. The next-command lookup is one indexed
//! `UPDATE … WHERE id = (SELECT … ORDER BY id LIMIT 1) RETURNING`, its row locked as the
//! database needs ([`Dialect::CLAIM_LOCK`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{ColumnIndex, Database, Executor, IntoArguments, Transaction};

use crate::audit::{commit_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::listings::{like_pattern, DEVICE_WHERE};
use crate::{
    now, Channel, CommandState, CommandUuid, DeviceListQuery, EnrollmentId, EnrollmentMode,
    EnrollmentStatus, Result, StoreError,
};

/// Targets inserted per statement when queueing a command for many enrollments.
const ENQUEUE_CHUNK: usize = 500;

/// Finished results kept per enrollment by the hourly prune (the newest; the admin API's
/// history shows 200). A device adds at most one result per command it was given.
pub const RESULTS_KEEP_PER_ENROLLMENT: i64 = 200;

const RECORD_COLUMNS: &str = "command_uuid, enrollment_id, channel, request_type, status, \
    queued_at, sent_at, finished_at, result, error_chain";

/// A command as queued: its full plist (`{CommandUUID, Command: {RequestType, …}}`), shared by
/// every enrollment it targets.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub uuid: CommandUuid,
    pub request_type: String,
    pub payload: Vec<u8>,
    pub created_by: String,
    /// Wake the targets with a push: recorded with the queueing (`push_requested_at`), so that
    /// the push is sent even if the process that queued it stops before sending it.
    pub push: bool,
}

/// What a device search selects as command targets ([`crate::CommandStore::count_command_targets`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TargetSummary {
    /// Enrollments matching.
    pub matching: i64,
    /// How many of them are User Enrollments.
    pub user_enrollments: i64,
    /// One of them whose user channel has not checked in, if any (the smallest id).
    pub without_user_channel: Option<String>,
}

/// What [`crate::CommandStore::enqueue_command_matching`] queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuedMatching {
    /// Targets queued.
    pub targets: u64,
    /// Their enrollment ids when a push was asked for (empty otherwise).
    pub push_ids: Vec<String>,
}

/// The next command for a device, handed out by the command endpoint.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NextCommand {
    pub command_uuid: CommandUuid,
    pub request_type: String,
    pub payload: Vec<u8>,
}

/// A device's report on a command it was given.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    pub command_uuid: CommandUuid,
    /// `Acknowledged`, `Error`, `CommandFormatError` or `NotNow`.
    pub status: CommandState,
    /// The whole report plist (results of a query), kept for the admin.
    pub result: Option<Vec<u8>>,
    /// JSON of the `ErrorChain`, when the device sent one.
    pub error_chain: Option<String>,
    /// For `not_now`: do not hand the command out again before this time (or a push).
    pub retry_after: Option<DateTime<Utc>>,
}

/// One line of an enrollment's command history (live or finished).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CommandRecord {
    pub command_uuid: CommandUuid,
    pub enrollment_id: EnrollmentId,
    #[sqlx(try_from = "String")]
    pub channel: Channel,
    pub request_type: String,
    #[sqlx(try_from = "String")]
    pub status: CommandState,
    pub queued_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub result: Option<Vec<u8>>,
    pub error_chain: Option<String>,
}

/// Where to push one enrollment (secrets: never logged).
#[derive(Clone, sqlx::FromRow)]
pub struct PushTargetRow {
    pub enrollment_id: EnrollmentId,
    /// Whose push token this is.
    #[sqlx(try_from = "String")]
    pub channel: Channel,
    pub push_token: Vec<u8>,
    pub push_magic: String,
}

impl std::fmt::Debug for PushTargetRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTargetRow")
            .field("enrollment_id", &self.enrollment_id)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// The MDM command channel: a live queue per enrollment and channel (indexed for the
/// next-command lookup), and finished results moved to history in the same transaction.
#[async_trait]
pub trait CommandStore: Send + Sync {
    /// Stores the command once and queues it for every target; all or nothing. Returns how many
    /// targets were queued.
    async fn enqueue_command(
        &self,
        command: &NewCommand,
        targets: &[(EnrollmentId, Channel)],
        audit: &Audit,
    ) -> Result<u64>;
    /// What the device search `filter` (its search text and status; sort, offset and limit do
    /// not apply) selects, counted in the database: how many enrollments, how many User
    /// Enrollments, and one without a user channel yet, if any.
    async fn count_command_targets(&self, filter: &DeviceListQuery) -> Result<TargetSummary>;
    /// Stores the command once and queues it for every enrollment the device search `filter`
    /// selects on `channel` (the user channel: those whose user channel has checked in), with
    /// one `INSERT … SELECT`: no enrollment row is read into the server. With `command.push`
    /// the targets' push requests are recorded in the same transaction and their ids returned
    /// (ids only). All or nothing; the audit's detail gets `targets`, how many were queued.
    async fn enqueue_command_matching(
        &self,
        command: &NewCommand,
        filter: &DeviceListQuery,
        channel: Channel,
        audit: &Audit,
    ) -> Result<QueuedMatching>;
    /// The oldest command due for this enrollment and channel (queued, or sent without an
    /// answer yet, and not deferred by `NotNow`), marked `sent`.
    async fn next_command(
        &self,
        enrollment_id: &str,
        channel: Channel,
        now: DateTime<Utc>,
    ) -> Result<Option<NextCommand>>;
    /// Records a device's report. A finished command moves to history; `not_now` stays queued
    /// until `retry_after`. A report for a command this enrollment was never given is
    /// [`StoreError::NotFound`] and changes nothing.
    async fn record_command_outcome(
        &self,
        enrollment_id: &str,
        channel: Channel,
        outcome: &CommandOutcome,
        now: DateTime<Utc>,
    ) -> Result<String>;
    /// Makes commands deferred by `NotNow` due again (called when a push goes out).
    async fn release_not_now(&self, enrollment_id: &str) -> Result<u64>;
    /// An enrollment's commands, newest first: live ones, then finished ones.
    async fn command_history(&self, enrollment_id: &str, limit: i64) -> Result<Vec<CommandRecord>>;
    /// Every target's state for one command.
    async fn command_targets(&self, command_uuid: &str) -> Result<Vec<CommandRecord>>;
    /// Removes finished results older than `before`, and all but the latest
    /// [`RESULTS_KEEP_PER_ENROLLMENT`] of each enrollment; returns how many rows went.
    async fn prune_command_results(&self, before: DateTime<Utc>) -> Result<u64>;
    /// Drops every queued command of an enrollment (at checkout or unenrollment).
    async fn clear_queue(&self, enrollment_id: &str) -> Result<u64>;
    /// Push targets of these enrollments (enrolled, with a push token): the device channel's,
    /// and the user channel's where user-channel commands wait.
    async fn push_targets(&self, enrollment_ids: &[String]) -> Result<Vec<PushTargetRow>>;
    /// Claims, until `claim_until`, up to `limit` enrollments whose push was requested at or
    /// before `requested_before` and is neither sent nor claimed by a live claim at `now`.
    /// Several server processes may sweep at once: each enrollment goes to one of them.
    async fn claim_push_requests(
        &self,
        requested_before: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<String>>;
    /// Marks the push requests of these enrollments made at or before `started` as done (a push
    /// to them was attempted from `started` on); later requests stay pending.
    async fn finish_push_requests(&self, ids: &[String], started: DateTime<Utc>) -> Result<u64>;
    /// Records a push attempt's outcome; `drop_token` forgets a token APNs called unregistered.
    async fn record_push(
        &self,
        enrollment_id: &str,
        status: &str,
        drop_token: bool,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Replaces the enrollment's inventory document (JSON).
    async fn set_inventory(&self, enrollment_id: &str, inventory: &str) -> Result<()>;
    async fn inventory(&self, enrollment_id: &str) -> Result<Option<String>>;
}

#[async_trait]
impl<S, DB> CommandStore for S
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
    Vec<u8>: Column<DB>,
    Option<Vec<u8>>: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
{
    async fn enqueue_command(
        &self,
        command: &NewCommand,
        targets: &[(EnrollmentId, Channel)],
        audit: &Audit,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let at = now();
        insert_command(&mut tx, command, at).await?;
        let mut queued = 0;
        for chunk in targets.chunks(ENQUEUE_CHUNK) {
            let mut qb = sqlx::QueryBuilder::<DB>::new(
                "INSERT INTO command_queue (enrollment_id, channel, command_uuid, status, \
                 queued_at) ",
            );
            qb.push_values(chunk, |mut b, (enrollment, channel)| {
                b.push_bind(enrollment)
                    .push_bind(channel)
                    .push_bind(&command.uuid)
                    .push_bind(CommandState::Queued)
                    .push_bind(at);
            });
            queued += S::rows_affected(&S::build(&mut qb).execute(&mut *tx).await?);
            if command.push {
                let mut qb =
                    sqlx::QueryBuilder::<DB>::new("UPDATE enrollments SET push_requested_at = ");
                qb.push_bind(at).push(" WHERE id IN (");
                let mut sep = qb.separated(", ");
                for (enrollment, _) in chunk {
                    sep.push_bind(enrollment);
                }
                qb.push(")");
                S::build(&mut qb).execute(&mut *tx).await?;
            }
        }
        commit_audited(tx, audit).await?;
        Ok(queued)
    }

    async fn count_command_targets(&self, filter: &DeviceListQuery) -> Result<TargetSummary> {
        Ok(sqlx::query_as(&format!(
            "SELECT COUNT(*) AS matching, \
             COALESCE(SUM(CASE WHEN mode = $4 THEN 1 ELSE 0 END), 0) AS user_enrollments, \
             MIN(CASE WHEN user_channel_id IS NULL THEN id END) AS without_user_channel \
             FROM enrollments {DEVICE_WHERE}"
        ))
        .bind(filter.status.map(EnrollmentStatus::as_str))
        .bind(like_pattern(filter.search.as_deref()))
        .bind(filter.declarations_failing)
        .bind(EnrollmentMode::UserEnrollment)
        .fetch_one(self.pool())
        .await?)
    }

    async fn enqueue_command_matching(
        &self,
        command: &NewCommand,
        filter: &DeviceListQuery,
        channel: Channel,
        audit: &Audit,
    ) -> Result<QueuedMatching> {
        let mut tx = self.begin_write().await?;
        let at = now();
        insert_command(&mut tx, command, at).await?;
        let user_channel = if channel == Channel::User {
            " AND user_channel_id IS NOT NULL"
        } else {
            ""
        };
        let targets = S::rows_affected(
            &sqlx::query(&format!(
                "INSERT INTO command_queue (enrollment_id, channel, command_uuid, status, \
                 queued_at) SELECT id, $4, $5, $6, $7 FROM enrollments \
                 {DEVICE_WHERE}{user_channel}"
            ))
            .bind(filter.status.map(EnrollmentStatus::as_str))
            .bind(like_pattern(filter.search.as_deref()))
            .bind(filter.declarations_failing)
            .bind(channel)
            .bind(&command.uuid)
            .bind(CommandState::Queued)
            .bind(at)
            .execute(&mut *tx)
            .await?,
        );
        let push_ids = if command.push {
            sqlx::query_scalar(
                "UPDATE enrollments SET push_requested_at = $1 WHERE id IN \
                 (SELECT enrollment_id FROM command_queue WHERE command_uuid = $2) \
                 RETURNING id",
            )
            .bind(at)
            .bind(&command.uuid)
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        let mut audit = audit.clone();
        if let Some(detail) = audit.detail.as_object_mut() {
            detail.insert("targets".into(), targets.into());
        }
        commit_audited(tx, &audit).await?;
        Ok(QueuedMatching { targets, push_ids })
    }

    async fn next_command(
        &self,
        enrollment_id: &str,
        channel: Channel,
        at: DateTime<Utc>,
    ) -> Result<Option<NextCommand>> {
        let uuid: Option<String> = sqlx::query_scalar(&format!(
            "UPDATE command_queue SET status = 'sent', sent_at = $3 WHERE id = (\
             SELECT id FROM command_queue WHERE enrollment_id = $1 AND channel = $2 \
             AND (not_now_until IS NULL OR not_now_until <= $3) ORDER BY id LIMIT 1 {}) \
             RETURNING command_uuid",
            S::CLAIM_LOCK
        ))
        .bind(enrollment_id)
        .bind(channel)
        .bind(at)
        .fetch_optional(self.pool())
        .await?;
        let Some(uuid) = uuid else {
            return Ok(None);
        };
        Ok(sqlx::query_as(
            "SELECT uuid AS command_uuid, request_type, payload FROM commands \
             WHERE uuid = $1",
        )
        .bind(uuid)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn record_command_outcome(
        &self,
        enrollment_id: &str,
        channel: Channel,
        o: &CommandOutcome,
        at: DateTime<Utc>,
    ) -> Result<String> {
        let never_given = || {
            StoreError::NotFound(format!(
                "command {} was never given to this device",
                o.command_uuid
            ))
        };
        if o.status == CommandState::NotNow {
            let done = sqlx::query(
                "UPDATE command_queue SET status = 'not_now', not_now_until = $4, \
                 not_now_count = not_now_count + 1 WHERE enrollment_id = $1 \
                 AND channel = $2 AND command_uuid = $3 AND status = 'sent'",
            )
            .bind(enrollment_id)
            .bind(channel)
            .bind(&o.command_uuid)
            .bind(o.retry_after.unwrap_or(at))
            .execute(self.pool())
            .await?;
            if S::rows_affected(&done) == 0 {
                return Err(never_given());
            }
            return Ok("not_now".into());
        }
        let mut tx = self.begin_write().await?;
        let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "DELETE FROM command_queue WHERE enrollment_id = $1 AND channel = $2 \
             AND command_uuid = $3 AND status = 'sent' RETURNING queued_at, sent_at",
        )
        .bind(enrollment_id)
        .bind(channel)
        .bind(&o.command_uuid)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((queued_at, sent_at)) = row else {
            return Err(never_given());
        };
        let request_type: String = sqlx::query_scalar(
            "INSERT INTO command_results (enrollment_id, channel, command_uuid, \
             request_type, status, result, error_chain, queued_at, sent_at, finished_at) \
             SELECT $1, $2, $3, request_type, $4, $5, $6, $7, $8, $9 FROM commands \
             WHERE uuid = $3 RETURNING request_type",
        )
        .bind(enrollment_id)
        .bind(channel)
        .bind(&o.command_uuid)
        .bind(o.status)
        .bind(&o.result)
        .bind(&o.error_chain)
        .bind(queued_at)
        .bind(sent_at)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(request_type)
    }

    async fn release_not_now(&self, enrollment_id: &str) -> Result<u64> {
        Ok(S::rows_affected(
            &sqlx::query(
                "UPDATE command_queue SET not_now_until = NULL WHERE enrollment_id = $1 \
                 AND not_now_until IS NOT NULL",
            )
            .bind(enrollment_id)
            .execute(self.pool())
            .await?,
        ))
    }

    async fn command_history(&self, enrollment_id: &str, limit: i64) -> Result<Vec<CommandRecord>> {
        let limit = limit.clamp(1, 1000);
        let mut live: Vec<CommandRecord> = sqlx::query_as(
            "SELECT q.command_uuid, q.enrollment_id, q.channel, c.request_type, \
             q.status, q.queued_at, q.sent_at, NULL AS finished_at, NULL AS result, \
             NULL AS error_chain FROM command_queue q \
             JOIN commands c ON c.uuid = q.command_uuid \
             WHERE q.enrollment_id = $1 ORDER BY q.id DESC LIMIT $2",
        )
        .bind(enrollment_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let done: Vec<CommandRecord> = sqlx::query_as(&format!(
            "SELECT {RECORD_COLUMNS} FROM command_results WHERE enrollment_id = $1 \
             ORDER BY id DESC LIMIT $2"
        ))
        .bind(enrollment_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        live.extend(done);
        live.truncate(usize::try_from(limit).unwrap_or(1000));
        Ok(live)
    }

    async fn command_targets(&self, command_uuid: &str) -> Result<Vec<CommandRecord>> {
        let mut live: Vec<CommandRecord> = sqlx::query_as(
            "SELECT q.command_uuid, q.enrollment_id, q.channel, c.request_type, \
             q.status, q.queued_at, q.sent_at, NULL AS finished_at, NULL AS result, \
             NULL AS error_chain FROM command_queue q \
             JOIN commands c ON c.uuid = q.command_uuid WHERE q.command_uuid = $1",
        )
        .bind(command_uuid)
        .fetch_all(self.pool())
        .await?;
        let done: Vec<CommandRecord> = sqlx::query_as(&format!(
            "SELECT {RECORD_COLUMNS} FROM command_results WHERE command_uuid = $1"
        ))
        .bind(command_uuid)
        .fetch_all(self.pool())
        .await?;
        live.extend(done);
        Ok(live)
    }

    async fn prune_command_results(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut n = S::rows_affected(
            &sqlx::query("DELETE FROM command_results WHERE finished_at < $1")
                .bind(before)
                .execute(self.pool())
                .await?,
        );
        n += S::rows_affected(
            &sqlx::query(
                "DELETE FROM command_results WHERE id IN (SELECT id FROM (SELECT id, \
                 ROW_NUMBER() OVER (PARTITION BY enrollment_id ORDER BY id DESC) AS newest \
                 FROM command_results) ranked WHERE newest > $1)",
            )
            .bind(RESULTS_KEEP_PER_ENROLLMENT)
            .execute(self.pool())
            .await?,
        );
        n += S::rows_affected(
            &sqlx::query(
                "DELETE FROM commands WHERE created_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM command_queue q WHERE q.command_uuid = uuid) \
                 AND NOT EXISTS (SELECT 1 FROM command_results r WHERE r.command_uuid = uuid)",
            )
            .bind(before)
            .execute(self.pool())
            .await?,
        );
        Ok(n)
    }

    async fn clear_queue(&self, enrollment_id: &str) -> Result<u64> {
        Ok(S::rows_affected(
            &sqlx::query("DELETE FROM command_queue WHERE enrollment_id = $1")
                .bind(enrollment_id)
                .execute(self.pool())
                .await?,
        ))
    }

    async fn claim_push_requests(
        &self,
        requested_before: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        at: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(&format!(
            "UPDATE enrollments SET push_claimed_until = $2 WHERE id IN (\
             SELECT id FROM enrollments WHERE push_requested_at IS NOT NULL \
             AND push_requested_at <= $1 \
             AND (push_claimed_until IS NULL OR push_claimed_until <= $3) \
             ORDER BY push_requested_at LIMIT $4 {}) RETURNING id",
            S::CLAIM_LOCK
        ))
        .bind(requested_before)
        .bind(claim_until)
        .bind(at)
        .bind(limit.clamp(1, 100_000))
        .fetch_all(self.pool())
        .await?)
    }

    async fn finish_push_requests(&self, ids: &[String], started: DateTime<Utc>) -> Result<u64> {
        let mut n = 0;
        for chunk in ids.chunks(ENQUEUE_CHUNK) {
            let mut qb = sqlx::QueryBuilder::<DB>::new(
                "UPDATE enrollments SET push_requested_at = NULL, \
                 push_claimed_until = NULL WHERE push_requested_at <= ",
            );
            qb.push_bind(started).push(" AND id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            qb.push(")");
            n += S::rows_affected(&S::build(&mut qb).execute(self.pool()).await?);
        }
        Ok(n)
    }

    async fn push_targets(&self, ids: &[String]) -> Result<Vec<PushTargetRow>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ENQUEUE_CHUNK) {
            // The device channel always; the user channel when it has commands waiting
            // (they are fetched on the user channel, which only a push to the user's
            // token wakes: schema `userchannel`, Apple "Sending MDM commands").
            let mut qb = sqlx::QueryBuilder::<DB>::new(
                "SELECT id AS enrollment_id, 'device' AS channel, \
                 device_push_token AS push_token, device_push_magic AS push_magic \
                 FROM enrollments WHERE status = 'enrolled' \
                 AND device_push_token IS NOT NULL AND device_push_magic IS NOT NULL \
                 AND id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            qb.push(
                ") UNION ALL SELECT e.id, 'user', e.user_push_token, e.user_push_magic \
                 FROM enrollments e WHERE e.status = 'enrolled' \
                 AND e.user_push_token IS NOT NULL AND e.user_push_magic IS NOT NULL \
                 AND EXISTS (SELECT 1 FROM command_queue q WHERE q.enrollment_id = e.id \
                 AND q.channel = 'user') AND e.id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            qb.push(")");
            out.extend(
                S::build_as::<PushTargetRow>(&mut qb)
                    .fetch_all(self.pool())
                    .await?,
            );
        }
        Ok(out)
    }

    async fn record_push(
        &self,
        enrollment_id: &str,
        status: &str,
        drop_token: bool,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE enrollments SET last_push_at = $2, last_push_status = $3, \
             device_push_token = CASE WHEN $4 THEN NULL ELSE device_push_token END \
             WHERE id = $1",
        )
        .bind(enrollment_id)
        .bind(at)
        .bind(status)
        .bind(drop_token)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn set_inventory(&self, enrollment_id: &str, inventory: &str) -> Result<()> {
        // A document from elsewhere: the next results are merged whatever their digests.
        sqlx::query(
            "UPDATE enrollments SET inventory = $2, inventory_digests = NULL WHERE id = $1",
        )
        .bind(enrollment_id)
        .bind(inventory)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn inventory(&self, enrollment_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, Option<String>>(
            "SELECT inventory FROM enrollments WHERE id = $1",
        )
        .bind(enrollment_id)
        .fetch_optional(self.pool())
        .await?
        .flatten())
    }
}

/// Stores a command once, before it is queued for its targets.
pub(crate) async fn insert_command<DB>(
    tx: &mut Transaction<'_, DB>,
    command: &NewCommand,
    at: DateTime<Utc>,
) -> Result<()>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    String: Column<DB>,
    Vec<u8>: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    sqlx::query(
        "INSERT INTO commands (uuid, request_type, payload, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&command.uuid)
    .bind(&command.request_type)
    .bind(&command.payload)
    .bind(&command.created_by)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
