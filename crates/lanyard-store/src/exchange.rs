//! `CommandExchangeStore`: the hot paths of the command channel, each in as few statements and
//! commits as possible, for both backends.
//!
//! - [`CommandExchangeStore::command_exchange`]: everything one `PUT /mdm/command` needs, all or
//!   nothing: the identity's binding, the reported command's outcome, the inventory (merged only
//!   when the result's digest changed, written only when the document changed), `last_seen_at`
//!   (written at most once a minute) and the next command.
//!   SQLite runs it on its own writer thread (`sqlite_writer.rs`): one message per exchange,
//!   the statements below run in-thread, and the exchanges waiting together share one
//!   transaction and one commit (when one fails, the group runs again with a savepoint per
//!   exchange). PostgreSQL reads the identity's row (unless it remembers the row from the
//!   identity's last exchange, `binding_memo.rs`) and then makes every write in ONE statement
//!   (data-modifying CTEs, `FOR UPDATE SKIP LOCKED` for the claim), guarded by the row's
//!   version; requests run in parallel, on connections the exchange keeps between requests
//!   (`exchange_connections.rs`).
//! - [`CommandExchangeStore::enrollments_by_ids`]: fan-out reads in chunks of ids.
//! - [`CommandExchangeStore::record_pushes`]: a push batch's outcomes in one transaction.

use std::future::Future;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments, PgConnection};

use crate::binding_memo::{HandedOut, Seen};
use crate::dialect::{Column, Dialect, Param};
use crate::enrollments::{ENROLLMENT_COLUMNS, PROMOTE_NEXT_IDENTITY, REACTIVATED_STATUS};
use crate::{
    Channel, CommandOutcome, CommandState, Enrollment, EnrollmentId, EnrollmentStatus, NextCommand,
    PostgresStore, Result, SqliteStore, StoreError,
};

/// Ids per statement for fan-out reads and push bookkeeping.
const ID_CHUNK: usize = 500;

/// `last_seen_at` is written when it is older than this (or unset).
pub const LAST_SEEN_RESOLUTION_SECS: i64 = 60;

/// Folds an acknowledged result into an enrollment's inventory document; implemented by the
/// domain layer, called inside the exchange's transaction.
///
/// The store keeps, per enrollment and request type, the [`digest`](Self::digest) of the last
/// result it merged; a result with the same digest is not merged again (the inventory is neither
/// read nor parsed), so the merge must be a function of the current document and the digested
/// part of the result alone.
pub trait InventoryMerge: Send + Sync {
    /// A digest of what a result of `request_type` folds into the inventory; `None` when it
    /// folds in nothing (then the inventory is not read).
    fn digest(&self, request_type: &str) -> Option<String>;
    /// The new inventory document for a result of `request_type`, given the current one; `None`
    /// when nothing changes (then only the digest is written).
    fn merge(&self, request_type: &str, current: Option<&str>) -> Option<String>;
}

/// The digest stored for `request_type` in an enrollment's `inventory_digests` (one
/// `RequestType digest` line per request type).
fn stored_digest<'a>(digests: Option<&'a str>, request_type: &str) -> Option<&'a str> {
    digests?
        .lines()
        .find_map(|line| line.split_once(' ').filter(|(rt, _)| *rt == request_type))
        .map(|(_, d)| d)
}

/// The new digest when a result of `request_type` must be merged: it folds something in and
/// differs from the one merged last. `None`: the inventory stays as it is, unread.
pub(crate) fn merge_due(
    merge: &dyn InventoryMerge,
    request_type: &str,
    digests: Option<&str>,
) -> Option<String> {
    let digest = merge.digest(request_type)?;
    (stored_digest(digests, request_type) != Some(digest.as_str())).then_some(digest)
}

/// What a due merge writes: the new document (`None`: unchanged) and the digests with
/// `request_type`'s replaced.
pub(crate) fn merged(
    merge: &dyn InventoryMerge,
    request_type: &str,
    current: Option<&str>,
    digest: &str,
    digests: Option<&str>,
) -> Result<(Option<String>, String)> {
    let document = merge
        .merge(request_type, current)
        .map(bounded_inventory)
        .transpose()?;
    let mut lines: Vec<&str> = digests
        .unwrap_or("")
        .lines()
        .filter(|line| !line.is_empty() && line.split(' ').next() != Some(request_type))
        .collect();
    let own = format!("{request_type} {digest}");
    lines.push(&own);
    Ok((document, lines.join("\n")))
}

/// What one command-endpoint request asks of the store. Owned, so that SQLite's writer thread
/// can run it (see `sqlite_writer.rs`).
pub struct CommandExchange {
    /// SHA-256 (hex) of the identity certificate that signed the request.
    pub identity_sha256: String,
    /// The report's `EnrollmentID`; must be the one bound to that identity.
    pub device_channel_id: String,
    pub channel: Channel,
    /// The reported command's outcome; `None` for `Idle`.
    pub outcome: Option<CommandOutcome>,
    /// Applied when the outcome is `acknowledged`.
    pub inventory: Option<std::sync::Arc<dyn InventoryMerge>>,
    pub now: DateTime<Utc>,
}

impl CommandExchange {
    /// Whether the exchange reads the inventory (an acknowledgement with a merge).
    pub(crate) fn wants_inventory(&self) -> bool {
        self.inventory.is_some()
            && self
                .outcome
                .as_ref()
                .is_some_and(|o| o.status == CommandState::Acknowledged)
    }

    /// NotNow: the device could not run the command now. Apple ("Handling NotNow status
    /// responses"): when the service stops sending commands, the device polls again by itself
    /// when conditions change, and the service must send the command again then; sending
    /// another command instead stops that re-poll. So no command is handed out on this
    /// request, and the deferred one is due at the next poll.
    pub(crate) fn not_now(&self) -> bool {
        self.outcome
            .as_ref()
            .is_some_and(|o| o.status == CommandState::NotNow)
    }

    /// What the request reports, as PostgreSQL's write takes it (`$6`): `not_now`, `result`,
    /// or nothing (Idle).
    fn reported(&self) -> Option<&'static str> {
        self.outcome
            .as_ref()
            .map(|_| if self.not_now() { "not_now" } else { "result" })
    }

    /// Whether `last_seen_at` (as read) is old enough to be written again.
    pub(crate) fn last_seen_is_stale(&self, last_seen: Option<DateTime<Utc>>) -> bool {
        last_seen.is_none_or(|t| self.now - t >= Duration::seconds(LAST_SEEN_RESOLUTION_SECS))
    }
}

/// The largest inventory document the store keeps for an enrollment; a merge that would grow it
/// beyond this is refused ([`StoreError::TooLarge`]) and its exchange changes nothing.
pub const INVENTORY_LIMIT: usize = 8 * 1024 * 1024;

/// The inventory document a merge produced, refused when it is larger than [`INVENTORY_LIMIT`].
pub(crate) fn bounded_inventory(text: String) -> Result<String> {
    if text.len() > INVENTORY_LIMIT {
        return Err(StoreError::TooLarge(format!(
            "an inventory document of {} bytes (at most {INVENTORY_LIMIT} are kept)",
            text.len()
        )));
    }
    Ok(text)
}

// The exchange's statements as SQLite's writer thread runs them, one after the other
// (`sqlite_writer.rs`; SQLite reads `$1` as a named parameter, which the writer binds by that
// name). PostgreSQL's `SQL_PG_EXCHANGE` below makes the same writes in one statement.

/// The identity rule's row (as `EnrollmentStore::enrollment_for_identity`): the current identity,
/// or the renewed one, whose first use makes it current. `$1` the identity, `$2` whether to read
/// the inventory's digests. `extra` are database-specific columns after the common six.
fn sql_binding(extra: &str) -> String {
    format!(
        "SELECT id, status, device_channel_id, last_seen_at, \
         CASE WHEN $2 THEN inventory_digests END, \
         COALESCE(next_identity_sha256 = $1, FALSE){extra} \
         FROM enrollments WHERE identity_sha256 = $1 OR next_identity_sha256 = $1"
    )
}

pub(crate) static SQL_BINDING: LazyLock<String> = LazyLock::new(|| sql_binding(""));

/// The device speaks again: it is no longer inactive. `$1` the enrollment.
pub(crate) static SQL_REACTIVATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE enrollments SET status = {} WHERE id = $1 AND status = 'inactive'",
        REACTIVATED_STATUS
    )
});

/// A `NotNow` for a command handed out on this channel: deferred until `$4`.
pub(crate) const SQL_NOT_NOW: &str = "UPDATE command_queue SET status = 'not_now', \
     not_now_until = $4, not_now_count = not_now_count + 1 WHERE enrollment_id = $1 \
     AND channel = $2 AND command_uuid = $3 AND status = 'sent'";

// SQLite writes the rows of a `RETURNING` into a temporary b-tree it opens and closes for each
// statement, so the writer thread reads a row first and then changes it by its `id` (it is the
// only writer: nothing changes in between).

/// The command handed out on this channel that a result answers: its queue row, times and
/// request type (`NULL` if the command itself is gone).
pub(crate) const SQL_FINISHING: &str = "SELECT q.id, q.queued_at, q.sent_at, c.request_type \
     FROM command_queue q LEFT JOIN commands c ON c.uuid = q.command_uuid \
     WHERE q.enrollment_id = $1 AND q.channel = $2 AND q.command_uuid = $3 AND q.status = 'sent'";

/// A queue row leaves the queue (`$1` its `id`).
pub(crate) const SQL_DEQUEUE: &str = "DELETE FROM command_queue WHERE id = $1";

/// ... and its result goes into the history.
pub(crate) const SQL_RESULT: &str = "INSERT INTO command_results (enrollment_id, channel, \
     command_uuid, request_type, status, result, error_chain, queued_at, sent_at, finished_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Whether a result for this command was already stored on this channel (a repeat).
pub(crate) const SQL_REPEATED: &str = "SELECT 1 FROM command_results WHERE enrollment_id = $1 \
     AND channel = $2 AND command_uuid = $3 LIMIT 1";

/// A merge that is due reads the document...
pub(crate) const SQL_READ_INVENTORY: &str = "SELECT inventory FROM enrollments WHERE id = $1";

/// ... and writes it (`$2`, unless `NULL`: unchanged) with the digests (`$3`).
pub(crate) const SQL_INVENTORY: &str = "UPDATE enrollments SET \
     inventory = COALESCE($2, inventory), inventory_digests = $3 WHERE id = $1";

pub(crate) const SQL_LAST_SEEN: &str = "UPDATE enrollments SET last_seen_at = $2 WHERE id = $1";

/// The next command due on this channel, with its text (SQLite has one writer: nothing to
/// lock); `$3` now.
pub(crate) const SQL_NEXT_DUE: &str = "SELECT q.id, q.command_uuid, c.request_type, c.payload \
     FROM command_queue q LEFT JOIN commands c ON c.uuid = q.command_uuid \
     WHERE q.enrollment_id = $1 AND q.channel = $2 \
     AND (q.not_now_until IS NULL OR q.not_now_until <= $3) ORDER BY q.id LIMIT 1";

/// ... is handed out (`$1` its queue row's `id`, `$2` now).
pub(crate) const SQL_HAND_OUT: &str =
    "UPDATE command_queue SET status = 'sent', sent_at = $2 WHERE id = $1";

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
    async fn command_exchange(&self, x: CommandExchange) -> Result<Exchanged>;
    /// The enrollments with these ids (unknown ids are skipped), read in chunks.
    async fn enrollments_by_ids(&self, ids: &[String]) -> Result<Vec<Enrollment>>;
    /// Records a batch of push outcomes in one transaction.
    async fn record_pushes(&self, records: &[PushRecord], at: DateTime<Utc>) -> Result<()>;
}

#[async_trait]
impl<S, DB> CommandExchangeStore for S
where
    S: Dialect<Db = DB> + Exchange,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    i64: Column<DB>,
    String: Column<DB>,
    Vec<u8>: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    async fn command_exchange(&self, x: CommandExchange) -> Result<Exchanged> {
        self.exchange(x).await
    }

    async fn enrollments_by_ids(&self, ids: &[String]) -> Result<Vec<Enrollment>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ID_CHUNK) {
            let mut qb = sqlx::QueryBuilder::<DB>::new(format!(
                "SELECT {} FROM enrollments WHERE id IN (",
                ENROLLMENT_COLUMNS
            ));
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            qb.push(")");
            out.extend(
                S::build_as::<Enrollment>(&mut qb)
                    .fetch_all(self.pool())
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
        let _gate = match self.write_gate() {
            Some(g) => Some(g.lock().await),
            None => None,
        };
        let mut tx = self.begin_write().await?;
        for ((status, drop), ids) in &groups {
            for chunk in ids.chunks(ID_CHUNK) {
                let mut qb =
                    sqlx::QueryBuilder::<DB>::new("UPDATE enrollments SET last_push_at = ");
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
                S::build(&mut qb).execute(&mut *tx).await?;
            }
        }
        for chunk in release.chunks(ID_CHUNK) {
            let mut qb = sqlx::QueryBuilder::<DB>::new(
                "UPDATE command_queue SET not_now_until = NULL \
                 WHERE not_now_until IS NOT NULL AND enrollment_id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
            S::build(&mut qb).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The exchange itself: a different algorithm on each database (see the module doc), so two
/// plain implementations rather than one generic one.
pub(crate) trait Exchange {
    fn exchange(&self, x: CommandExchange) -> impl Future<Output = Result<Exchanged>> + Send;
}

impl Exchange for SqliteStore {
    /// One message to the writer thread (`sqlite_writer.rs`), which runs the statements above.
    async fn exchange(&self, x: CommandExchange) -> Result<Exchanged> {
        self.writer.exchange(x).await
    }
}

impl Exchange for PostgresStore {
    /// The exchange in two statements on one connection (one when the row is remembered, below),
    /// each its own transaction: the identity's row is read (with its version, `xmin`) and
    /// checked by [`IdentityBinding`]; one statement then does every write (outcome, result,
    /// inventory, `last_seen_at`, the claim of the next command) only if that row is still the
    /// version read, and locks it until its commit. When the row changed in between, the
    /// exchange starts over. The rare writes of the identity rule (a renewed identity's first
    /// use, an inactive enrollment speaking) are made first, each on its own, and the exchange
    /// starts over.
    ///
    /// The read is skipped when this process remembers the row from the identity's last
    /// exchange (`binding_memo.rs`): the rule is checked on the remembered row and the write's
    /// version check tells whether it is still the row's current version. A device's burst
    /// (Idle, acknowledgement, acknowledgement …) then costs one statement per request.
    ///
    /// The connection is one the exchange kept from an earlier request when it has one
    /// (`exchange_connections.rs`): kept again when this exchange finishes, given back to the
    /// pool when it fails or is dropped half-way.
    async fn exchange(&self, x: CommandExchange) -> Result<Exchanged> {
        let mut conn = self.exchange_connections.acquire(&self.pool).await?;
        let exchanged = self.exchange_on(&mut conn, x).await?;
        conn.finished();
        Ok(exchanged)
    }
}

impl PostgresStore {
    /// [`Exchange::exchange`] on `conn`.
    async fn exchange_on(&self, conn: &mut PgConnection, x: CommandExchange) -> Result<Exchanged> {
        let want_inventory = x.wants_inventory();
        let uuid = x.outcome.as_ref().map(|o| o.command_uuid.as_str());
        let mut memo = self
            .memo
            .take(&x.identity_sha256)
            .filter(|seen| seen.serves(want_inventory, x.channel, uuid));
        // The queue row of the reported command, when this process handed it out: it stays the
        // command's row whatever happened to the enrollment row since, so a retry keeps it.
        let answered = memo
            .as_ref()
            .and_then(|seen| seen.handed_out_as(x.channel, uuid))
            .map(|h| h.queue_row);
        for _ in 0..EXCHANGE_ATTEMPTS {
            let (row, renewed, request_type) = match memo.take() {
                Some(seen) => {
                    let rt = seen.request_type_of(x.channel, uuid).map(str::to_owned);
                    (seen, false, rt)
                }
                None => {
                    // The digests are read for an Idle too: the next request (the Idle's
                    // command's result) can then merge without reading the row.
                    let read: Option<PgBinding> = sqlx::query_as(&SQL_PG_READ)
                        .bind(&x.identity_sha256)
                        .bind(true)
                        .bind(uuid)
                        .fetch_optional(&mut *conn)
                        .await?;
                    let Some((id, status, bound, last_seen, digests, renewed, version, rt, empty)) =
                        read
                    else {
                        return Ok(Exchanged::UnknownIdentity);
                    };
                    let seen = Seen {
                        id,
                        status,
                        bound,
                        last_seen,
                        digests,
                        no_inventory: empty,
                        version,
                        handed_out: None,
                    };
                    (seen, renewed, rt)
                }
            };
            match IdentityBinding::check(&row.status, row.bound.as_deref(), &x.device_channel_id) {
                IdentityBinding::Bound => {}
                refused => return Ok(Exchanged::Refused(refused)),
            }
            if renewed {
                sqlx::query(PROMOTE_NEXT_IDENTITY)
                    .bind(&x.identity_sha256)
                    .bind(x.now)
                    .execute(&mut *conn)
                    .await?;
                continue;
            }
            if row.status == EnrollmentStatus::Inactive.as_str() {
                sqlx::query(&SQL_REACTIVATE)
                    .bind(&row.id)
                    .execute(&mut *conn)
                    .await?;
                continue;
            }
            // The inventory a result would fold in, prepared before the write (which applies
            // it only when the result finishes a command handed out here). A document read here
            // belongs to the version the write checks: were the row changed since, the write
            // would change nothing. An enrollment without a document needs no read.
            let digests = row.digests.as_deref();
            let mut inventory: (Option<String>, Option<String>) = (None, None);
            if let (true, Some(merge), Some(rt)) = (want_inventory, &x.inventory, &request_type) {
                let merge = merge.as_ref();
                if let Some(digest) = merge_due(merge, rt, digests) {
                    let current: Option<String> = if row.no_inventory {
                        None
                    } else {
                        sqlx::query_scalar(SQL_READ_INVENTORY)
                            .bind(&row.id)
                            .fetch_optional(&mut *conn)
                            .await?
                            .flatten()
                    };
                    let (document, digests) =
                        merged(merge, rt, current.as_deref(), &digest, digests)?;
                    inventory = (document, Some(digests));
                }
            }
            let kind = x.reported();
            let stale = x.last_seen_is_stale(row.last_seen);
            let has_document = inventory.0.is_some();
            let write = PgWrite {
                x: &x,
                enrollment: &row.id,
                version: &row.version,
                stale,
                inventory: (inventory.0.as_deref(), inventory.1.as_deref()),
                answered,
            };
            let wrote: PgWrote = write.query(SQL_PG_EXCHANGE).fetch_one(&mut *conn).await?;
            let (
                current,
                deferred,
                finished,
                next_row,
                next_uuid,
                next_type,
                next_payload,
                new_version,
            ) = wrote;
            if !current {
                continue;
            }
            let ignored = match kind {
                Some("not_now") if !deferred => Some(IgnoredResult::NeverGiven),
                Some("result") if !finished => {
                    // Read after the write's commit, so a concurrent first answer that
                    // finished the command (and held the enrollment meanwhile) is seen.
                    let repeated: Option<i32> = sqlx::query_scalar(SQL_REPEATED)
                        .bind(&row.id)
                        .bind(x.channel)
                        .bind(uuid)
                        .fetch_optional(&mut *conn)
                        .await?;
                    Some(repeat_or_never(repeated.is_some()))
                }
                _ => None,
            };
            let (next, handed_out) = match (next_row, next_uuid, next_type, next_payload) {
                (Some(queue_row), Some(command_uuid), Some(request_type), Some(payload)) => {
                    let handed_out = HandedOut {
                        channel: x.channel,
                        command_uuid: command_uuid.clone(),
                        request_type: request_type.clone(),
                        queue_row,
                    };
                    let next = NextCommand {
                        command_uuid: command_uuid.into(),
                        request_type,
                        payload,
                    };
                    (Some(next), Some(handed_out))
                }
                _ => (None, None),
            };
            // The row as this write left it: a new version when it wrote the enrollment, the
            // digests and document it wrote, the command it handed out.
            let merged_digests = if finished { inventory.1 } else { None };
            self.memo.put(
                &x.identity_sha256,
                Seen {
                    version: new_version.unwrap_or(row.version),
                    last_seen: if stale { Some(x.now) } else { row.last_seen },
                    no_inventory: row.no_inventory && !(finished && has_document),
                    digests: merged_digests.or(row.digests),
                    handed_out,
                    id: row.id.clone(),
                    status: row.status,
                    bound: row.bound,
                },
            );
            return Ok(Exchanged::Done {
                enrollment_id: row.id,
                next,
                ignored,
            });
        }
        Err(StoreError::Unavailable(
            "the enrollment kept changing during the command exchange".into(),
        ))
    }
}

/// PostgreSQL's exchange starts over at most this often when its enrollment changes under it.
const EXCHANGE_ATTEMPTS: usize = 8;

/// PostgreSQL's read (`$2` true: always with the digests): the identity rule's row, its version,
/// the reported command's request type (`$3`) and whether the enrollment has no inventory
/// document yet.
static SQL_PG_READ: LazyLock<String> = LazyLock::new(|| {
    sql_binding(
        ", xmin::text, (SELECT request_type FROM commands WHERE uuid = $3), inventory IS NULL",
    )
});

type PgBinding = (
    String,
    String,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    bool,
    String,
    Option<String>,
    bool,
);

/// PostgreSQL's write, one statement: everything happens only while the enrollment `$1` is
/// the version `$2` read (locked until the commit). `$3` channel, `$4` now, `$5` the reported
/// command, `$6` what it reports (`not_now`, `result` or `NULL` for Idle), `$7`–`$9` status,
/// result and error chain, `$10` not before (NotNow), `$11` write `last_seen_at`, `$12`/`$13`
/// inventory document (`NULL`: unchanged) and digests (`NULL`: no merge), `$14` claim the next
/// command, `$15` the queue row this process handed the reported command out from (`NULL`:
/// not known here). Returns whether the enrollment was that version, whether a NotNow deferred
/// and a result finished a command, the command handed out and its queue row, and the
/// enrollment's new version when the statement wrote it (for `binding_memo.rs`). The same
/// rules as SQLite's statements above: the claim skips a command deferred until later and the
/// one this result just finished.
///
/// The queue rows are found by `enrollment_id = $1` (the enrollment `e` holds), not by a join
/// with `e`: with the parameter PostgreSQL's claim reads the first due row in
/// `command_queue_next` order, where the join made it read and sort the enrollment's whole
/// queue (`auto_explain`; a queue of 1,500 commands: 1.5 ms an exchange with the join, 0.8 ms
/// without).
///
/// The row a result or a NotNow answers (`sent`) is found by its `id`: `$15`, or else the first
/// row of the enrollment, channel and command. Matched on those columns alone, PostgreSQL
/// without statistics for `command_queue` (a new database; one whose tables were not analysed
/// since a large enqueue) scans `command_queue_next` over the enrollment's whole queue and
/// filters it by command (`auto_explain`: 1,457 rows read for one acknowledgement of a device
/// with 1,500 queued, 0.5 ms); the unique index on the three columns, which it does not
/// choose, would read one. By `id` it reads one row. At most one row can match, so the
/// `LIMIT 1` (which stops that scan at the first match, usually the first live row) changes
/// nothing but the reading.
const SQL_PG_EXCHANGE: &str = "WITH e AS (\
     SELECT id FROM enrollments WHERE id = $1 AND xmin::text = $2 FOR UPDATE), \
     answered AS (SELECT COALESCE($15::bigint, (SELECT s.id FROM command_queue s \
     WHERE $5::text IS NOT NULL AND s.enrollment_id = $1 AND s.channel = $3 \
     AND s.command_uuid = $5 AND s.status = 'sent' LIMIT 1)) AS id), \
     nn AS (UPDATE command_queue q SET status = 'not_now', not_now_until = $10, \
     not_now_count = q.not_now_count + 1 FROM e WHERE $6 = 'not_now' \
     AND q.id = (SELECT id FROM answered) \
     AND q.enrollment_id = $1 AND q.enrollment_id = e.id AND q.channel = $3 \
     AND q.command_uuid = $5 AND q.status = 'sent' RETURNING q.id), \
     fin AS (DELETE FROM command_queue q USING e WHERE $6 = 'result' \
     AND q.id = (SELECT id FROM answered) \
     AND q.enrollment_id = $1 AND q.enrollment_id = e.id AND q.channel = $3 \
     AND q.command_uuid = $5 AND q.status = 'sent' RETURNING q.id, q.queued_at, q.sent_at), \
     res AS (INSERT INTO command_results (enrollment_id, channel, command_uuid, request_type, \
     status, result, error_chain, queued_at, sent_at, finished_at) \
     SELECT $1, $3, $5, c.request_type, $7, $8, $9, fin.queued_at, fin.sent_at, $4 \
     FROM fin JOIN commands c ON c.uuid = $5 RETURNING 1), \
     upd AS (UPDATE enrollments n SET \
     last_seen_at = CASE WHEN $11 THEN $4 ELSE n.last_seen_at END, \
     inventory = CASE WHEN $13::text IS NOT NULL AND EXISTS (SELECT 1 FROM fin) \
     THEN COALESCE($12, n.inventory) ELSE n.inventory END, \
     inventory_digests = CASE WHEN $13::text IS NOT NULL AND EXISTS (SELECT 1 FROM fin) \
     THEN $13 ELSE n.inventory_digests END \
     FROM e WHERE n.id = e.id AND ($11 OR ($13::text IS NOT NULL AND EXISTS (SELECT 1 FROM fin))) \
     RETURNING n.xmin::text AS version), \
     claim AS (UPDATE command_queue SET status = 'sent', sent_at = $4 WHERE id = (\
     SELECT q.id FROM command_queue q WHERE $14 AND EXISTS (SELECT 1 FROM e) \
     AND q.enrollment_id = $1 AND q.channel = $3 \
     AND (q.not_now_until IS NULL OR q.not_now_until <= $4) \
     AND q.id NOT IN (SELECT id FROM fin) ORDER BY q.id LIMIT 1 FOR UPDATE OF q SKIP LOCKED) \
     RETURNING id, command_uuid, \
     (SELECT c.request_type FROM commands c WHERE c.uuid = command_uuid) AS request_type, \
     (SELECT c.payload FROM commands c WHERE c.uuid = command_uuid) AS payload) \
     SELECT EXISTS (SELECT 1 FROM e), EXISTS (SELECT 1 FROM nn), EXISTS (SELECT 1 FROM fin), \
     claim.id, claim.command_uuid, claim.request_type, claim.payload, \
     (SELECT version FROM upd) \
     FROM (SELECT 1) AS one LEFT JOIN claim ON TRUE";

/// The parameters of [`SQL_PG_EXCHANGE`] for one attempt of an exchange.
struct PgWrite<'a> {
    x: &'a CommandExchange,
    enrollment: &'a str,
    version: &'a str,
    stale: bool,
    /// The inventory document to write and the digests (`None`: no merge).
    inventory: (Option<&'a str>, Option<&'a str>),
    answered: Option<i64>,
}

impl<'a> PgWrite<'a> {
    /// `sql` (the write, or a statement around it such as `EXPLAIN`) with the write's
    /// parameters bound.
    fn query<O>(
        &self,
        sql: &'a str,
    ) -> sqlx::query::QueryAs<'a, sqlx::Postgres, O, sqlx::postgres::PgArguments>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let x = self.x;
        let o = x.outcome.as_ref();
        sqlx::query_as(sql)
            .bind(self.enrollment)
            .bind(self.version)
            .bind(x.channel)
            .bind(x.now)
            .bind(o.map(|o| o.command_uuid.as_str()))
            .bind(x.reported())
            .bind(o.map(|o| o.status))
            .bind(o.and_then(|o| o.result.as_deref()))
            .bind(o.and_then(|o| o.error_chain.as_deref()))
            .bind(o.map(|o| o.retry_after.unwrap_or(x.now)))
            .bind(self.stale)
            .bind(self.inventory.0)
            .bind(self.inventory.1)
            .bind(!x.not_now())
            .bind(self.answered)
    }
}

type PgWrote = (
    bool,
    bool,
    bool,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
);

/// A result that finished nothing: a device repeats a result until it gets a 2xx (Apple: a
/// failed response makes the device retry), so a repeat is answered like the first answer; one
/// for a command never given here changes nothing but must not wedge the channel either.
pub(crate) fn repeat_or_never(stored_before: bool) -> IgnoredResult {
    if stored_before {
        IgnoredResult::Repeated
    } else {
        IgnoredResult::NeverGiven
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

    use super::*;
    use crate::{
        Audit, AuthenticateRecord, CommandExchangeStore, CommandStore, EnrollmentMode,
        EnrollmentStore, NewCommand, NewEnrollment, NewUser, Ownership, TokenUpdateRecord,
        UserStore,
    };
    use lanyard_testkit::scratch_db::ScratchDb;

    /// The rows read and dropped by a filter in the plan nodes that read `command_queue`.
    fn queue_rows_filtered(node: &serde_json::Value) -> u64 {
        let own = if node["Relation Name"] == "command_queue" {
            node["Rows Removed by Filter"].as_u64().unwrap_or(0)
        } else {
            0
        };
        let below: u64 = node["Plans"]
            .as_array()
            .map(|plans| plans.iter().map(queue_rows_filtered).sum())
            .unwrap_or(0);
        own + below
    }

    /// An acknowledgement on PostgreSQL reads the queue row it answers, not the device's
    /// queue: with 200 commands queued and no statistics (a new database), the write reads at
    /// most a couple of rows beyond the ones it changes, whether this process knows the row it
    /// handed the command out from or not. Matched on enrollment, channel and command alone,
    /// PostgreSQL read the whole queue (199 rows dropped by the filter).
    /// A migrated store on `db` with one enrolled device, `e1` (identity `id-e1`, bound to
    /// `EID-e1`), and `commands` commands `c000`, `c001` … queued for it.
    async fn one_device(db: &ScratchDb, commands: usize) -> PostgresStore {
        let store = PostgresStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let audit = || Audit::new("tester", "test", "e1", serde_json::json!({}));
        let user = store
            .create_user(
                &NewUser {
                    email: "ann@example.com".into(),
                    display_name: "Ann".into(),
                    password_hash: None,
                    managed_apple_id: Some("ann@example.com".into()),
                },
                &audit(),
            )
            .await
            .unwrap();
        let t = Utc::now() - Duration::minutes(10);
        store
            .create_enrollment(&NewEnrollment {
                id: "e1".into(),
                user_id: user.id,
                managed_apple_id: user.email.clone(),
                ownership: Ownership::Employee,
                attributes: "{}".into(),
                mode: EnrollmentMode::UserEnrollment,
                os_version: None,
                build_version: None,
                product: None,
                model_family: None,
                scep_challenge_hash: "ch-e1".into(),
                challenge_expires_at: t + Duration::hours(1),
                push_topic: "topic".into(),
                profile_ids: None,
                bearer_token_hash: None,
            })
            .await
            .unwrap();
        store
            .set_identity("e1", "01", "id-e1", t + Duration::days(365))
            .await
            .unwrap();
        store
            .record_authenticate(
                "e1",
                &AuthenticateRecord {
                    device_channel_id: "EID-e1".into(),
                    os_version: None,
                    build_version: None,
                    product: None,
                },
                t,
            )
            .await
            .unwrap();
        store
            .record_token_update(
                "e1",
                &TokenUpdateRecord {
                    user_channel_id: None,
                    topic: "topic".into(),
                    push_token: vec![7; 32],
                    push_magic: "magic".into(),
                    unlock_token_sealed: None,
                },
                t,
            )
            .await
            .unwrap();
        let target = [("e1".into(), Channel::Device)];
        for i in 0..commands {
            let command = NewCommand {
                uuid: format!("c{i:03}").into(),
                request_type: "DeviceInformation".into(),
                payload: b"<plist/>".to_vec(),
                created_by: "tester".into(),
                push: false,
            };
            store
                .enqueue_command(&command, &target, &audit())
                .await
                .unwrap();
        }
        store
    }

    /// The exchange of `e1` (see [`one_device`]) reporting `outcome`.
    fn exchange_of_e1(outcome: Option<CommandOutcome>) -> CommandExchange {
        CommandExchange {
            identity_sha256: "id-e1".into(),
            device_channel_id: "EID-e1".into(),
            channel: Channel::Device,
            outcome,
            inventory: None,
            now: Utc::now(),
        }
    }

    /// An acknowledgement of `uuid`.
    fn acknowledged(uuid: &str) -> Option<CommandOutcome> {
        Some(CommandOutcome {
            command_uuid: uuid.into(),
            status: CommandState::Acknowledged,
            result: Some(b"<dict/>".to_vec()),
            error_chain: None,
            retry_after: None,
        })
    }

    #[tokio::test]
    async fn an_acknowledgement_reads_its_queue_row_not_the_device_queue() {
        let Some(db) = ScratchDb::for_test("lanyard_exchange", "the exchange's plan test").await
        else {
            return;
        };
        let store = one_device(&db, 200).await;
        // The Idle hands out the first command; the store remembers its queue row.
        match store.command_exchange(exchange_of_e1(None)).await.unwrap() {
            Exchanged::Done { next: Some(n), .. } => assert_eq!(n.command_uuid.0, "c000"),
            other => panic!("expected c000 handed out, got {other:?}"),
        }
        let seen = store
            .memo
            .take("id-e1")
            .expect("the Idle's row is remembered");
        let queue_row = seen
            .handed_out_as(Channel::Device, Some("c000"))
            .expect("c000 handed out")
            .queue_row;
        let ack = exchange_of_e1(acknowledged("c000"));
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {SQL_PG_EXCHANGE}");
        for answered in [Some(queue_row), None] {
            let write = PgWrite {
                x: &ack,
                enrollment: &seen.id,
                version: &seen.version,
                stale: false,
                inventory: (None, None),
                answered,
            };
            let mut tx = store.pool.begin().await.unwrap();
            let (plan,): (serde_json::Value,) =
                write.query(&explain).fetch_one(&mut *tx).await.unwrap();
            tx.rollback().await.unwrap();
            let top = &plan[0]["Plan"];
            // The command was finished and the next one claimed...
            assert!(
                top.to_string().contains("\"Operation\":\"Delete\""),
                "{plan}"
            );
            // ... reading no more than the rows it changed, give or take the claim's skip of
            // the row just finished.
            let filtered = queue_rows_filtered(top);
            assert!(
                filtered <= 2,
                "queue row known here: {}; {filtered} queue rows read and dropped: {plan}",
                answered.is_some()
            );
        }
        drop(store);
        drop(db);
    }

    /// The backend process of the connection the exchange keeps (exactly one is kept).
    async fn kept_backend(store: &PostgresStore) -> i32 {
        assert_eq!(store.exchange_connections.kept(), 1);
        let mut conn = store
            .exchange_connections
            .acquire(&store.pool)
            .await
            .unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        conn.finished();
        pid
    }

    /// Ends a backend process as a restart of the database would.
    async fn terminate(store: &PostgresStore, pid: i32) {
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert!(ended);
        // The backend is gone once the server has seen it exit.
        for _ in 0..100 {
            let alive: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                    .bind(pid)
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
            if !alive {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("backend {pid} did not end");
    }

    /// The exchange keeps a connection only after an exchange that finished, and a kept
    /// connection that broke while idle costs no request: it is checked after
    /// [`CHECK_AFTER`](crate::exchange_connections::CHECK_AFTER). One that broke while in
    /// steady use fails one request and is not kept. An exchange dropped half-way gives its
    /// connection back to the pool.
    #[tokio::test]
    async fn the_exchange_keeps_a_connection_only_after_a_finished_exchange() {
        let Some(db) =
            ScratchDb::for_test("lanyard_exchange", "the exchange's kept connections").await
        else {
            return;
        };
        let store = one_device(&db, 4).await;
        assert_eq!(store.exchange_connections.kept(), 0);
        let handed_out = |exchanged: Exchanged| match exchanged {
            Exchanged::Done { next: Some(n), .. } => n.command_uuid.0,
            other => panic!("expected a command handed out, got {other:?}"),
        };
        assert_eq!(
            handed_out(store.command_exchange(exchange_of_e1(None)).await.unwrap()),
            "c000"
        );

        // Broken while idle: checked before use, replaced, and the exchange goes on.
        let first = kept_backend(&store).await;
        terminate(&store, first).await;
        tokio::time::sleep(crate::exchange_connections::CHECK_AFTER).await;
        let after_idle = store
            .command_exchange(exchange_of_e1(acknowledged("c000")))
            .await
            .unwrap();
        assert_eq!(handed_out(after_idle), "c001");
        let second = kept_backend(&store).await;
        assert_ne!(first, second);

        // Broken while in steady use: that request fails, the connection is not kept, and the
        // device's retry succeeds.
        terminate(&store, second).await;
        let failed = store
            .command_exchange(exchange_of_e1(acknowledged("c001")))
            .await;
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(store.exchange_connections.kept(), 0);
        let retried = store
            .command_exchange(exchange_of_e1(acknowledged("c001")))
            .await
            .unwrap();
        assert_eq!(handed_out(retried), "c002");
        assert_eq!(store.exchange_connections.kept(), 1);

        // Dropped half-way (the request's client went away): the connection goes back to the
        // pool, which checks it, and nothing is kept.
        {
            let exchange = store.command_exchange(exchange_of_e1(acknowledged("c002")));
            let mut exchange = std::pin::pin!(exchange);
            let pending = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(exchange.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(pending, "the exchange waits for the database");
        }
        assert_eq!(store.exchange_connections.kept(), 0);
        // Whether or not the dropped statement reached the database, the device's next
        // request is answered.
        let next = store
            .command_exchange(exchange_of_e1(acknowledged("c002")))
            .await
            .unwrap();
        assert!(matches!(next, Exchanged::Done { .. }), "{next:?}");
        assert_eq!(store.exchange_connections.kept(), 1);

        // Closing: nothing is kept any more, so the pool's close, which waits for every
        // connection taken from it, ends.
        store.exchange_connections.close();
        assert_eq!(store.exchange_connections.kept(), 0);
        let late = store.command_exchange(exchange_of_e1(None)).await.unwrap();
        assert!(matches!(late, Exchanged::Done { .. }), "{late:?}");
        assert_eq!(store.exchange_connections.kept(), 0);
        store.close().await;
        drop(db);
    }
}
