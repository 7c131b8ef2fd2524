//! Password sign-in throttling, for every password sign-in Lanyard has: the admin portal and
//! admin API (`SignInKind::Admin`) and the enrollment pages (`SignInKind::Enrollment`).
//!
//! Attempts are counted per (kind, normalised account name, client address) in the store, so
//! every server process on one database shares the counts, and an attacker's guesses from one
//! address never slow the real person down at another. Each attempt is reserved *before* the
//! password is checked, in one statement that refuses while the key waits, so parallel guesses
//! cannot get past the limit; a right password clears the key. There is no hard lock for an
//! attacker to hold: the first [`FREE_ATTEMPTS`] go through at once, then each further attempt
//! waits, from [`FIRST_WAIT_SECS`] doubling up to [`MAX_WAIT_MINUTES`]; a key left alone for
//! [`WINDOW_MINUTES`] after its last wait counts from one again. Unknown names are counted and
//! checked (against a dummy hash) exactly like known ones, so neither the answer nor its timing
//! says which names exist.

use std::net::IpAddr;

use chrono::Duration;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Actor, CoreError, Lanyard, Result};
use lanyard_store::{Audit, Reservation, SignInKind, ThrottleKey, ThrottlePolicy};

/// Attempts per key that go through without waiting.
pub const FREE_ATTEMPTS: i64 = 5;
/// The first wait after the free attempts; it doubles with each further attempt.
pub const FIRST_WAIT_SECS: i64 = 1;
/// The longest wait.
pub const MAX_WAIT_MINUTES: i64 = 15;
/// How long a key must be left alone after its last wait to count from one again.
pub const WINDOW_MINUTES: i64 = 15;

/// The throttle's policy.
pub fn policy() -> ThrottlePolicy {
    ThrottlePolicy {
        free_attempts: FREE_ATTEMPTS,
        first_wait: Duration::seconds(FIRST_WAIT_SECS),
        max_wait: Duration::minutes(MAX_WAIT_MINUTES),
        window: Duration::minutes(WINDOW_MINUTES),
    }
}

/// The account part of a throttle key: the name as typed, trimmed and lower-cased (what both
/// sign-ins normalise names to); an over-long one by its hash, so keys stay small.
pub fn account_key(raw: &str) -> String {
    let n = raw.trim().to_lowercase();
    if n.len() <= 320 {
        n
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(n.as_bytes())))
    }
}

/// The message of a refused attempt: the same whoever the name belongs to (the wait is in the
/// answer's `Retry-After`).
pub const TOO_MANY: &str = "too many failed sign-ins; wait a little, then try again";

impl Lanyard {
    /// Counts one sign-in attempt before its password is checked; refused with
    /// [`CoreError::RateLimited`] while the key waits. Returns the key to clear on success.
    pub(crate) async fn reserve_sign_in(
        &self,
        kind: SignInKind,
        account: &str,
        client: Option<IpAddr>,
    ) -> Result<ThrottleKey> {
        let key = ThrottleKey {
            kind,
            account: account_key(account),
            address: client.map(|a| a.to_string()).unwrap_or_default(),
        };
        let now = lanyard_store::now();
        match self.store.reserve_sign_in(&key, &policy(), now).await? {
            Reservation::Granted => Ok(key),
            Reservation::Refused { until } => {
                let ms = u64::try_from((until - now).num_milliseconds()).unwrap_or(0);
                Err(CoreError::RateLimited {
                    message: TOO_MANY.into(),
                    retry_after_secs: Some(ms.div_ceil(1000).max(1)),
                })
            }
        }
    }

    /// A right password: the key's attempts are forgotten.
    pub(crate) async fn sign_in_passed(&self, key: &ThrottleKey) -> Result<()> {
        self.store.clear_sign_in(key).await?;
        Ok(())
    }

    /// Forgets an administrator's failed sign-ins from every address; returns how many
    /// addresses had some. Audited as `admin.unlock`.
    pub async fn unlock_admin(&self, actor: &Actor, username: &str) -> Result<u64> {
        actor.require_write()?;
        let admin = self.admin_named(username).await?;
        let audit = Audit::new(&actor.name, "admin.unlock", &admin.username, json!({}));
        Ok(self
            .store
            .unlock_sign_in(SignInKind::Admin, &account_key(&admin.username), &audit)
            .await?)
    }

    /// Forgets a user's failed enrollment sign-ins from every address; returns how many
    /// addresses had some. Audited as `user.unlock`.
    pub async fn unlock_user(&self, actor: &Actor, email: &str) -> Result<u64> {
        actor.require_write()?;
        let email = crate::users::normalize_email(email)?;
        if self.store.user_by_email(&email).await?.is_none() {
            return Err(CoreError::NotFound(format!("user {email}")));
        }
        let audit = Audit::new(&actor.name, "user.unlock", &email, json!({}));
        Ok(self
            .store
            .unlock_sign_in(SignInKind::Enrollment, &account_key(&email), &audit)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_are_normalised_and_bounded() {
        assert_eq!(account_key("  Admin "), "admin");
        assert_eq!(account_key("Ann@Example.COM"), "ann@example.com");
        let long = account_key(&"x".repeat(10_000));
        assert!(long.starts_with("sha256:") && long.len() == 71, "{long}");
    }
}
