//! `CommandExchangeStore`: the hot paths of the command channel, each in as few statements and
//! commits as possible, for both backends.
//!
//! - [`CommandExchangeStore::command_exchange`]: everything one `PUT /mdm/command` needs in ONE
//!   transaction: the identity's binding, the reported command's outcome, the inventory (written
//!   only when it changed), `last_seen_at` (written at most once a minute) and the next command.
//!   SQLite opens it with `BEGIN IMMEDIATE` (the writer lock up front, so a read that turns into a
//!   write never fails on a stale snapshot) behind an in-process async gate, so concurrent
//!   requests queue as tasks instead of sleeping in SQLite's busy handler; PostgreSQL commits once
//!   per acknowledgement and lets requests run in parallel (`FOR UPDATE SKIP LOCKED`).
//! - [`CommandExchangeStore::enrollments_by_ids`]: fan-out reads in chunks of ids.
//! - [`CommandExchangeStore::record_pushes`]: a push batch's outcomes in one transaction.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::*;

/// Ids per statement for fan-out reads and push bookkeeping.
const ID_CHUNK: usize = 500;

/// `last_seen_at` is written when it is older than this (or unset).
pub const LAST_SEEN_RESOLUTION_SECS: i64 = 60;

/// Folds an acknowledged result into an enrollment's inventory document; implemented by the
/// domain layer, called inside the exchange's transaction.
pub trait InventoryMerge: Send + Sync {
    /// The new inventory document for a result of `request_type`, given the current one; `None`
    /// when nothing changes (then nothing is written).
    fn merge(&self, request_type: &str, current: Option<&str>) -> Option<String>;
}

/// What one command-endpoint request asks of the store.
pub struct CommandExchange<'a> {
    /// SHA-256 (hex) of the identity certificate that signed the request.
    pub identity_sha256: &'a str,
    /// The report's `EnrollmentID`; must be the one bound to that identity.
    pub device_channel_id: &'a str,
    pub channel: Channel,
    /// The reported command's outcome; `None` for `Idle`.
    pub outcome: Option<&'a CommandOutcome>,
    /// Applied when the outcome is `acknowledged`.
    pub inventory: Option<&'a dyn InventoryMerge>,
    pub now: DateTime<Utc>,
}

/// How an exchange ended. Every refusal changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchanged {
    /// The report was handled; the next command for the channel, if one is due and the report
    /// was not `NotNow`.
    Done {
        enrollment_id: String,
        next: Option<NextCommand>,
        /// Set when the reported result was not stored (a repeat, or a command never given).
        ignored: Option<IgnoredResult>,
    },
    /// The identity's enrollment may not use the command channel (see [`IdentityBinding`]).
    Refused(IdentityBinding),
    /// No enrollment holds this identity.
    UnknownIdentity,
}

/// Why a reported result changed nothing while the exchange went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoredResult {
    /// The command already finished on this channel: the device repeated a result whose
    /// answer it did not get. Answered like the first time, so the device moves on.
    Repeated,
    /// No such command was handed out on this channel.
    NeverGiven,
}

/// The one identity rule for device requests, applied by check-ins and the command exchange
/// alike: a request signed by an enrollment's identity certificate must name the
/// `EnrollmentID` that enrollment bound at `Authenticate`, and the enrollment must be live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityBinding {
    /// Live and bound to the presented `EnrollmentID`.
    Bound,
    /// Live, but no `EnrollmentID` is bound yet: only `Authenticate` may come.
    Unbound,
    /// The enrollment has checked out (or was removed).
    CheckedOut,
    /// The identity is bound to another `EnrollmentID`.
    OtherDevice,
}

impl IdentityBinding {
    /// The rule: `status` and `bound` are the enrollment's, `presented` the request's
    /// `EnrollmentID`.
    pub fn check(status: &str, bound: Option<&str>, presented: &str) -> IdentityBinding {
        if status == EnrollmentStatus::CheckedOut.as_str() {
            return IdentityBinding::CheckedOut;
        }
        match bound {
            None => IdentityBinding::Unbound,
            Some(b) if b == presented => IdentityBinding::Bound,
            Some(_) => IdentityBinding::OtherDevice,
        }
    }
}

/// One push attempt's outcome, for [`CommandExchangeStore::record_pushes`].
#[derive(Debug, Clone)]
pub struct PushRecord {
    pub enrollment_id: EnrollmentId,
    /// The channel whose token was pushed.
    pub channel: Channel,
    pub status: String,
    /// Forget the token (APNs called it unregistered).
    pub drop_token: bool,
    /// Delivered: make commands deferred by `NotNow` due again.
    pub release_not_now: bool,
}

#[async_trait]
pub trait CommandExchangeStore: Send + Sync {
    /// One command-endpoint request in one transaction (see the module doc). A repeated
    /// result, or one for a command this channel was never given, changes nothing and is
    /// reported in [`Exchanged::Done::ignored`]; the exchange goes on.
    async fn command_exchange(&self, x: &CommandExchange<'_>) -> Result<Exchanged>;
    /// The enrollments with these ids (unknown ids are skipped), read in chunks.
    async fn enrollments_by_ids(&self, ids: &[String]) -> Result<Vec<Enrollment>>;
    /// Records a batch of push outcomes in one transaction.
    async fn record_pushes(&self, records: &[PushRecord], at: DateTime<Utc>) -> Result<()>;
}

impl SqliteStore {
    fn exchange_gate(&self) -> Option<&tokio::sync::Mutex<()>> {
        Some(&self.write_gate)
    }
}

impl PostgresStore {
    fn exchange_gate(&self) -> Option<&tokio::sync::Mutex<()>> {
        None
    }
}

type Binding = (
    String,
    String,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    bool,
);

macro_rules! impl_exchange_store {
    ($store:ty, $db:ty, $begin:literal, $lock:literal) => {
        #[async_trait]
        impl CommandExchangeStore for $store {
            async fn command_exchange(&self, x: &CommandExchange<'_>) -> Result<Exchanged> {
                let want_inventory =
                    x.inventory.is_some() && x.outcome.is_some_and(|o| o.status == CommandState::Acknowledged);
                let _gate = match self.exchange_gate() {
                    Some(g) => Some(g.lock().await),
                    None => None,
                };
                let mut tx = self.pool.begin_with($begin).await?;
                // The identity rule (as `EnrollmentStore::enrollment_for_identity`): the current
                // identity, or the renewed one, whose first use makes it current.
                let binding: Option<Binding> = sqlx::query_as(
                    "SELECT id, status, device_channel_id, last_seen_at, \
                     CASE WHEN $2 THEN inventory END, \
                     COALESCE(next_identity_sha256 = $1, FALSE) FROM enrollments \
                     WHERE identity_sha256 = $1 OR next_identity_sha256 = $1",
                )
                .bind(x.identity_sha256)
                .bind(want_inventory)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((id, status, bound, last_seen, inventory, renewed)) = binding else {
                    return Ok(Exchanged::UnknownIdentity);
                };
                match IdentityBinding::check(&status, bound.as_deref(), x.device_channel_id) {
                    IdentityBinding::Bound => {}
                    refused => return Ok(Exchanged::Refused(refused)),
                }
                if renewed {
                    sqlx::query(crate::enrollment_backend::PROMOTE_NEXT_IDENTITY)
                        .bind(x.identity_sha256)
                        .bind(x.now)
                        .execute(&mut *tx)
                        .await?;
                }
                if status == EnrollmentStatus::Inactive.as_str() {
                    // The device speaks again: it is no longer inactive.
                    sqlx::query(&format!(
                        "UPDATE enrollments SET status = {} WHERE id = $1",
                        crate::enrollment_backend::REACTIVATED_STATUS
                    ))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                }
                let mut ignored = None;
                // NotNow: the device could not run the command now. Apple ("Handling NotNow
                // status responses"): when the service stops sending commands, the device polls
                // again by itself when conditions change, and the service must send the command
                // again then; sending another command instead stops that re-poll. So no command
                // is handed out on this request, and the deferred one is due at the next poll.
                let not_now = x.outcome.is_some_and(|o| o.status == CommandState::NotNow);
                if let Some(o) = x.outcome {
                    if not_now {
                        let done = sqlx::query(
                            "UPDATE command_queue SET status = 'not_now', not_now_until = $4, \
                             not_now_count = not_now_count + 1 WHERE enrollment_id = $1 \
                             AND channel = $2 AND command_uuid = $3 AND status = 'sent'",
                        )
                        .bind(&id)
                        .bind(x.channel)
                        .bind(&o.command_uuid)
                        .bind(o.retry_after.unwrap_or(x.now))
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() == 0 {
                            ignored = Some(IgnoredResult::NeverGiven);
                        }
                    } else {
                        let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
                            "DELETE FROM command_queue WHERE enrollment_id = $1 AND channel = $2 \
                             AND command_uuid = $3 AND status = 'sent' \
                             RETURNING queued_at, sent_at",
                        )
                        .bind(&id)
                        .bind(x.channel)
                        .bind(&o.command_uuid)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some((queued_at, sent_at)) = row {
                        let request_type: String = sqlx::query_scalar(
                            "INSERT INTO command_results (enrollment_id, channel, command_uuid, \
                             request_type, status, result, error_chain, queued_at, sent_at, \
                             finished_at) SELECT $1, $2, $3, request_type, $4, $5, $6, $7, $8, \
                             $9 FROM commands WHERE uuid = $3 RETURNING request_type",
                        )
                        .bind(&id)
                        .bind(x.channel)
                        .bind(&o.command_uuid)
                        .bind(&o.status)
                        .bind(&o.result)
                        .bind(&o.error_chain)
                        .bind(queued_at)
                        .bind(sent_at)
                        .bind(x.now)
                        .fetch_one(&mut *tx)
                        .await?;
                        if let (true, Some(merge)) = (want_inventory, x.inventory) {
                            if let Some(text) = merge.merge(&request_type, inventory.as_deref()) {
                                sqlx::query("UPDATE enrollments SET inventory = $2 WHERE id = $1")
                                    .bind(&id)
                                    .bind(text)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                        }
                        } else {
                            // A device repeats a result until it gets a 2xx (Apple: a failed
                            // response makes the device retry), so a repeat is answered like the
                            // first answer; one for a command never given here changes nothing
                            // but must not wedge the channel either.
                            let repeated: Option<i32> = sqlx::query_scalar(
                                "SELECT 1 FROM command_results WHERE enrollment_id = $1 \
                                 AND channel = $2 AND command_uuid = $3 LIMIT 1",
                            )
                            .bind(&id)
                            .bind(x.channel)
                            .bind(&o.command_uuid)
                            .fetch_optional(&mut *tx)
                            .await?;
                            ignored = Some(if repeated.is_some() {
                                IgnoredResult::Repeated
                            } else {
                                IgnoredResult::NeverGiven
                            });
                        }
                    }
                }
                let stale = last_seen
                    .is_none_or(|t| x.now - t >= Duration::seconds(LAST_SEEN_RESOLUTION_SECS));
                if stale {
                    sqlx::query("UPDATE enrollments SET last_seen_at = $2 WHERE id = $1")
                        .bind(&id)
                        .bind(x.now)
                        .execute(&mut *tx)
                        .await?;
                }
                // The command's text comes back with the claim (subqueries in `RETURNING`):
                // one statement instead of two.
                let next: Option<NextCommand> = if not_now {
                    None
                } else {
                    sqlx::query_as(concat!(
                    "UPDATE command_queue SET status = 'sent', sent_at = $3 WHERE id = (\
                     SELECT id FROM command_queue WHERE enrollment_id = $1 AND channel = $2 \
                     AND (not_now_until IS NULL OR not_now_until <= $3) ORDER BY id LIMIT 1 ",
                    $lock,
                    ") RETURNING command_uuid, \
                     (SELECT c.request_type FROM commands c WHERE c.uuid = command_uuid) \
                     AS request_type, \
                     (SELECT c.payload FROM commands c WHERE c.uuid = command_uuid) AS payload"
                ))
                .bind(&id)
                .bind(x.channel)
                .bind(x.now)
                .fetch_optional(&mut *tx)
                .await?
                };
                tx.commit().await?;
                Ok(Exchanged::Done {
                    enrollment_id: id,
                    next,
                    ignored,
                })
            }

            async fn enrollments_by_ids(&self, ids: &[String]) -> Result<Vec<Enrollment>> {
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(ID_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {} FROM enrollments WHERE id IN (",
                        crate::enrollment_backend::ENROLLMENT_COLUMNS
                    ));
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id);
                    }
                    qb.push(")");
                    out.extend(
                        qb.build_query_as::<Enrollment>()
                            .fetch_all(&self.pool)
                            .await?,
                    );
                }
                Ok(out)
            }

            async fn record_pushes(&self, records: &[PushRecord], at: DateTime<Utc>) -> Result<()> {
                if records.is_empty() {
                    return Ok(());
                }
                // Group by what is written so each group is a few `IN (…)` statements.
                let mut groups: std::collections::BTreeMap<(&str, Option<Channel>), Vec<&str>> =
                    Default::default();
                for r in records {
                    let drop = r.drop_token.then_some(r.channel);
                    groups
                        .entry((r.status.as_str(), drop))
                        .or_default()
                        .push(r.enrollment_id.as_str());
                }
                let release: Vec<&str> = records
                    .iter()
                    .filter(|r| r.release_not_now)
                    .map(|r| r.enrollment_id.as_str())
                    .collect();
                let _gate = match self.exchange_gate() {
                    Some(g) => Some(g.lock().await),
                    None => None,
                };
                let mut tx = self.pool.begin_with($begin).await?;
                for ((status, drop), ids) in &groups {
                    for chunk in ids.chunks(ID_CHUNK) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "UPDATE enrollments SET last_push_at = ",
                        );
                        qb.push_bind(at);
                        qb.push(", last_push_status = ");
                        qb.push_bind(*status);
                        match drop {
                            Some(Channel::User) => {
                                qb.push(", user_push_token = NULL");
                            }
                            Some(Channel::Device) => {
                                qb.push(", device_push_token = NULL");
                            }
                            None => {}
                        }
                        qb.push(" WHERE id IN (");
                        let mut sep = qb.separated(", ");
                        for id in chunk {
                            sep.push_bind(*id);
                        }
                        qb.push(")");
                        qb.build().execute(&mut *tx).await?;
                    }
                }
                for chunk in release.chunks(ID_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE command_queue SET not_now_until = NULL \
                         WHERE not_now_until IS NOT NULL AND enrollment_id IN (",
                    );
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(*id);
                    }
                    qb.push(")");
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

impl_exchange_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE", "");
impl_exchange_store!(
    PostgresStore,
    sqlx::Postgres,
    "BEGIN",
    "FOR UPDATE SKIP LOCKED"
);
