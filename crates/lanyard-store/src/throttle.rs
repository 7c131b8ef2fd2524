//! Password sign-in throttling, in the database so every server process shares it: the keys
//! and policy, [`ThrottleStore`] and its SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments};

use crate::audit::{commit_audited, Audit};
use crate::dialect::{Column, Dialect, Param};
use crate::Result;

/// Which password sign-in a throttle row counts attempts of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignInKind {
    /// The admin portal and the admin API (`/api/v1/sessions`).
    Admin,
    /// The enrollment pages' email and password sign-in.
    Enrollment,
}

impl SignInKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInKind::Admin => "admin",
            SignInKind::Enrollment => "enrollment",
        }
    }
}

/// What sign-in attempts are counted by: the kind, the normalised account name and the client
/// address (as text; empty when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThrottleKey {
    pub kind: SignInKind,
    pub account: String,
    pub address: String,
}

/// How attempts are throttled: the first `free_attempts` within a window go through at once;
/// each further one waits, `first_wait` doubling per attempt up to `max_wait`. A key whose last
/// wait ended `window` ago or more starts counting again from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    pub free_attempts: i64,
    pub first_wait: chrono::Duration,
    pub max_wait: chrono::Duration,
    pub window: chrono::Duration,
}

/// The answer to reserving a sign-in attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Counted: check the password now (and clear the key when it is right).
    Granted,
    /// The key is in its wait; nothing was counted. Try again at `until`.
    Refused { until: DateTime<Utc> },
}

/// Password sign-in throttling, in the database so every server process shares it.
#[async_trait]
pub trait ThrottleStore: Send + Sync {
    /// Counts one attempt for `key` before its password is checked, in one statement: refused,
    /// counting nothing, while the key is in its wait; otherwise counted (starting again from
    /// one when the key's last wait ended `policy.window` ago or more) and the key's next wait
    /// set from its new count. Concurrent attempts cannot pass more than the policy allows.
    async fn reserve_sign_in(
        &self,
        key: &ThrottleKey,
        policy: &ThrottlePolicy,
        now: DateTime<Utc>,
    ) -> Result<Reservation>;
    /// Forgets `key`'s attempts (a right password).
    async fn clear_sign_in(&self, key: &ThrottleKey) -> Result<()>;
    /// Forgets every address's attempts for an account, audited; returns how many keys went.
    async fn unlock_sign_in(&self, kind: SignInKind, account: &str, audit: &Audit) -> Result<u64>;
    /// The latest wait still running for an account from any address.
    async fn sign_in_wait(
        &self,
        kind: SignInKind,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>>;
    /// Removes keys whose wait ended `window` ago or more (they would count from one again);
    /// returns how many.
    async fn prune_sign_in_throttle(
        &self,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Result<u64>;
}

/// The next attempt count of a throttle key under upsert (`$4` now, `$8` the window, in ms).
const NEXT_ATTEMPTS: &str = "(CASE WHEN sign_in_throttle.wait_until_ms <= $4 - $8 THEN 1 \
     ELSE sign_in_throttle.attempts + 1 END)";

/// The wait in ms after `attempts` attempts: none while within `$5` free attempts, then `$6`
/// doubling per attempt, at most `$7`.
fn throttle_wait(attempts: &str) -> String {
    format!(
        "(CASE WHEN {attempts} < $5 THEN 0 \
         WHEN {attempts} - $5 >= 30 THEN $7 \
         WHEN $6 * (1 << CAST({attempts} - $5 AS INTEGER)) > $7 THEN $7 \
         ELSE $6 * (1 << CAST({attempts} - $5 AS INTEGER)) END)"
    )
}

#[async_trait]
impl<S, DB> ThrottleStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
    String: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    async fn reserve_sign_in(
        &self,
        key: &ThrottleKey,
        policy: &ThrottlePolicy,
        now: DateTime<Utc>,
    ) -> Result<Reservation> {
        let at = now.timestamp_millis();
        let counted: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO sign_in_throttle (kind, account, address, attempts, \
             last_attempt_ms, wait_until_ms) VALUES ($1, $2, $3, 1, $4, $4 + {first}) \
             ON CONFLICT (kind, account, address) DO UPDATE SET \
             attempts = {next}, last_attempt_ms = $4, wait_until_ms = $4 + {wait} \
             WHERE sign_in_throttle.wait_until_ms <= $4 \
             RETURNING attempts",
            first = throttle_wait("1"),
            next = NEXT_ATTEMPTS,
            wait = throttle_wait(NEXT_ATTEMPTS),
        ))
        .bind(key.kind.as_str())
        .bind(&key.account)
        .bind(&key.address)
        .bind(at)
        .bind(policy.free_attempts)
        .bind(policy.first_wait.num_milliseconds())
        .bind(policy.max_wait.num_milliseconds())
        .bind(policy.window.num_milliseconds())
        .fetch_optional(self.pool())
        .await?;
        if counted.is_some() {
            return Ok(Reservation::Granted);
        }
        let until: Option<i64> = sqlx::query_scalar(
            "SELECT wait_until_ms FROM sign_in_throttle \
             WHERE kind = $1 AND account = $2 AND address = $3",
        )
        .bind(key.kind.as_str())
        .bind(&key.account)
        .bind(&key.address)
        .fetch_optional(self.pool())
        .await?;
        // Cleared or pruned since: still refused this once, for at least a second.
        let until = until.unwrap_or(0).max(at + 1000);
        Ok(Reservation::Refused {
            until: DateTime::from_timestamp_millis(until).unwrap_or(now),
        })
    }

    async fn clear_sign_in(&self, key: &ThrottleKey) -> Result<()> {
        sqlx::query(
            "DELETE FROM sign_in_throttle \
             WHERE kind = $1 AND account = $2 AND address = $3",
        )
        .bind(key.kind.as_str())
        .bind(&key.account)
        .bind(&key.address)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn unlock_sign_in(&self, kind: SignInKind, account: &str, audit: &Audit) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let gone = sqlx::query("DELETE FROM sign_in_throttle WHERE kind = $1 AND account = $2")
            .bind(kind.as_str())
            .bind(account)
            .execute(&mut *tx)
            .await?;
        commit_audited(tx, audit).await?;
        Ok(S::rows_affected(&gone))
    }

    async fn sign_in_wait(
        &self,
        kind: SignInKind,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let until: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(wait_until_ms) FROM sign_in_throttle \
             WHERE kind = $1 AND account = $2 AND wait_until_ms > $3",
        )
        .bind(kind.as_str())
        .bind(account)
        .bind(now.timestamp_millis())
        .fetch_one(self.pool())
        .await?;
        Ok(until.and_then(DateTime::from_timestamp_millis))
    }

    async fn prune_sign_in_throttle(
        &self,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Result<u64> {
        let gone = sqlx::query("DELETE FROM sign_in_throttle WHERE wait_until_ms <= $1")
            .bind((now - window).timestamp_millis())
            .execute(self.pool())
            .await?;
        Ok(S::rows_affected(&gone))
    }
}
