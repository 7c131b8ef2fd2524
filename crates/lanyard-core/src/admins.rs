//! Administrators: sign-in (throttled, see [`crate::sign_in`]), sessions, API tokens, roles,
//! and their lifecycle (password, disable, remove; the last enabled administrator stays).
//!
//! A new password ends the administrator's other sessions (all of them when someone else set
//! it); API tokens are separate credentials and are kept (revoke them on their own).
//!
//! Session secrets and API tokens are random 256-bit values shown once; only their SHA-256 is
//! stored, so a database dump cannot be replayed.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::users::{hash_password, password_matches};
use crate::{Actor, CoreError, Lanyard, Result};
use lanyard_store::{AdminSession, ApiToken, Audit, SignInKind};

pub const SESSION_HOURS: i64 = 12;

pub use lanyard_store::Role;

/// The role an operator typed (`administrator` or `admin`, `read-only` or `read_only`).
pub fn parse_role(s: &str) -> Result<Role> {
    match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "administrator" | "admin" => Ok(Role::Administrator),
        "read_only" | "readonly" => Ok(Role::ReadOnly),
        _ => Err(CoreError::Invalid(format!(
            "unknown role `{s}`; use administrator or read-only"
        ))),
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdminView {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub enabled: bool,
    /// A sign-in wait is running for this name from some client address (see
    /// `lanyard admin unlock`).
    pub locked: bool,
}

/// A freshly made secret, shown to its owner once.
#[derive(Clone)]
pub struct NewSecret {
    pub secret: String,
    pub hash: String,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewSecret(<redacted>)")
    }
}

/// 32 random bytes, URL-safe base64, with a prefix that says what it is (`lyt_` for API tokens).
pub fn new_secret(prefix: &str) -> NewSecret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_secret(&secret);
    NewSecret { secret, hash }
}

/// SHA-256 (hex) of a high-entropy secret; what the database keeps.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A random password for the first administrator (printed once).
pub fn random_password() -> String {
    let mut bytes = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn check_username(name: &str) -> Result<String> {
    let n = name.trim().to_lowercase();
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(CoreError::Invalid(format!(
            "administrator name `{name}` must be 1 to 64 letters, digits or . _ - @"
        )));
    }
    Ok(n)
}

/// A signed-in session: the secret goes into the cookie, the CSRF token into forms.
#[derive(Clone)]
pub struct SessionGrant {
    pub secret: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    pub admin: AdminView,
}

impl std::fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGrant")
            .field("admin", &self.admin.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Lanyard {
    pub async fn create_admin(
        &self,
        actor: &Actor,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<AdminView> {
        actor.require_write()?;
        let username = check_username(username)?;
        let hash = hash_password(password).await?;
        let audit = Audit::new(
            &actor.name,
            "admin.create",
            &username,
            json!({"role": role}),
        );
        let a = self
            .store
            .create_admin(&username, &hash, role, &audit)
            .await
            .map_err(|e| CoreError::creating(format!("administrator `{username}`"), e))?;
        self.admin_view(a).await
    }

    /// Sets an administrator's password, ends their other sessions and clears their sign-in
    /// waits. `own_session` is the session secret of the request when administrators change
    /// their own password: that session stays (any administrator may change their own, a
    /// read-only one included). Returns the administrator and how many sessions ended.
    pub async fn set_admin_password(
        &self,
        actor: &Actor,
        username: &str,
        password: &str,
        own_session: Option<&str>,
    ) -> Result<(AdminView, u64)> {
        let admin = self.admin_named(username).await?;
        let own = actor.name == format!("admin:{}", admin.username);
        if !own {
            actor.require_write()?;
        }
        let hash = hash_password(password).await?;
        let keep = own_session.filter(|_| own).map(hash_secret);
        let audit = Audit::new(
            &actor.name,
            "admin.set_password",
            &admin.username,
            json!({}),
        );
        let ended = self
            .store
            .set_admin_password(admin.id, &hash, keep.as_deref(), &audit)
            .await?;
        let audit = Audit::new(
            &actor.name,
            "admin.unlock",
            &admin.username,
            json!({"reason": "password set"}),
        );
        self.store
            .unlock_sign_in(SignInKind::Admin, &admin.username, &audit)
            .await?;
        Ok((self.admin_view(admin).await?, ended))
    }

    /// Enables or disables an administrator (disabling ends their sessions; their API tokens
    /// stop working while disabled). The last enabled administrator with the Administrator role
    /// cannot be disabled.
    pub async fn set_admin_enabled(
        &self,
        actor: &Actor,
        username: &str,
        enabled: bool,
    ) -> Result<AdminView> {
        actor.require_write()?;
        let admin = self.admin_named(username).await?;
        let action = if enabled {
            "admin.enable"
        } else {
            "admin.disable"
        };
        let audit = Audit::new(&actor.name, action, &admin.username, json!({}));
        match self
            .store
            .set_admin_enabled(admin.id, enabled, Role::Administrator, &audit)
            .await?
        {
            Some(a) => self.admin_view(a).await,
            None => Err(last_administrator(&admin.username, "disabled")),
        }
    }

    /// Removes an administrator with their sessions and API tokens. The last enabled
    /// administrator with the Administrator role cannot be removed.
    pub async fn remove_admin(&self, actor: &Actor, username: &str) -> Result<()> {
        actor.require_write()?;
        let admin = self.admin_named(username).await?;
        let audit = Audit::new(
            &actor.name,
            "admin.remove",
            &admin.username,
            json!({"role": admin.role}),
        );
        if !self
            .store
            .delete_admin(admin.id, Role::Administrator, &audit)
            .await?
        {
            return Err(last_administrator(&admin.username, "removed"));
        }
        Ok(())
    }

    /// The administrator of this name, or [`CoreError::NotFound`].
    pub(crate) async fn admin_named(&self, username: &str) -> Result<lanyard_store::Admin> {
        let username = check_username(username)?;
        self.store
            .admin_by_username(&username)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("administrator {username}")))
    }

    async fn admin_view(&self, a: lanyard_store::Admin) -> Result<AdminView> {
        let wait = self
            .store
            .sign_in_wait(SignInKind::Admin, &a.username, lanyard_store::now())
            .await?;
        Ok(AdminView {
            id: a.id,
            role: a.role,
            enabled: a.enabled,
            locked: wait.is_some(),
            username: a.username,
        })
    }

    pub async fn list_admins(&self) -> Result<Vec<AdminView>> {
        let mut out = Vec::new();
        for a in self.store.list_admins().await? {
            out.push(self.admin_view(a).await?);
        }
        Ok(out)
    }

    /// On a server with no administrator, creates `admin` with a random password and returns the
    /// password (to print once). Returns `None` when an administrator exists.
    pub async fn bootstrap_first_admin(&self) -> Result<Option<(String, String)>> {
        if self.store.count_admins().await? > 0 {
            return Ok(None);
        }
        let password = random_password();
        match self
            .create_admin(&Actor::system(), "admin", &password, Role::Administrator)
            .await
        {
            Ok(a) => Ok(Some((a.username, password))),
            // Another server process created it first.
            Err(CoreError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Signs an administrator in from `client`. Every attempt goes through the sign-in
    /// throttle (see [`crate::sign_in`]) before the password is checked; an unknown name is
    /// throttled and checked (against a dummy hash) the same way as a known one.
    pub async fn admin_sign_in(
        &self,
        username: &str,
        password: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<SessionGrant> {
        let denied = || CoreError::Unauthorized("wrong name or password".into());
        let key = self
            .reserve_sign_in(SignInKind::Admin, username, client)
            .await?;
        let admin = match check_username(username) {
            Ok(name) => self.store.admin_by_username(&name).await?,
            Err(_) => None,
        };
        let ok = password_matches(password, admin.as_ref().map(|a| a.password_hash.as_str())).await;
        let Some(admin) = admin.filter(|_| ok) else {
            return Err(denied());
        };
        self.sign_in_passed(&key).await?;
        if !admin.enabled {
            return Err(CoreError::Forbidden(
                "this administrator is disabled".into(),
            ));
        }
        let now = lanyard_store::now();
        let s = new_secret("lys_");
        let csrf = new_secret("");
        let expires_at = now + Duration::hours(SESSION_HOURS);
        self.store
            .create_session(&AdminSession {
                token_hash: s.hash,
                admin_id: admin.id,
                csrf_token: csrf.secret.clone(),
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(SessionGrant {
            secret: s.secret,
            csrf_token: csrf.secret,
            expires_at,
            admin: self.admin_view(admin).await?,
        })
    }

    pub async fn admin_sign_out(&self, session_secret: &str) -> Result<()> {
        self.store
            .delete_session(&hash_secret(session_secret))
            .await?;
        Ok(())
    }

    /// Resolves a session cookie to the acting administrator and the session's CSRF token.
    pub async fn actor_for_session(&self, session_secret: &str) -> Result<(Actor, String)> {
        let expired = || CoreError::Unauthorized("session expired; sign in again".into());
        let Some(s) = self
            .store
            .session_by_hash(&hash_secret(session_secret))
            .await?
        else {
            return Err(expired());
        };
        if s.expires_at <= lanyard_store::now() {
            self.store.delete_session(&s.token_hash).await?;
            return Err(expired());
        }
        let admin = self
            .store
            .admin_by_id(s.admin_id)
            .await?
            .ok_or_else(expired)?;
        if !admin.enabled {
            return Err(CoreError::Forbidden(
                "this administrator is disabled".into(),
            ));
        }
        let role: Role = admin.role;
        Ok((
            Actor {
                name: format!("admin:{}", admin.username),
                role,
            },
            s.csrf_token,
        ))
    }

    /// Creates an API token for an administrator; the secret is returned once.
    pub async fn create_api_token(
        &self,
        actor: &Actor,
        admin_username: &str,
        name: &str,
        valid_days: Option<i64>,
    ) -> Result<(ApiToken, String)> {
        actor.require_write()?;
        let username = check_username(admin_username)?;
        let admin = self
            .store
            .admin_by_username(&username)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("administrator {username}")))?;
        let name = name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(CoreError::Invalid(
                "token names are 1 to 100 characters".into(),
            ));
        }
        let expires_at = match valid_days {
            Some(d) if d <= 0 || d > 3650 => {
                return Err(CoreError::Invalid(
                    "token validity is 1 to 3650 days".into(),
                ))
            }
            Some(d) => Some(lanyard_store::now() + Duration::days(d)),
            None => None,
        };
        let s = new_secret("lyt_");
        let audit = Audit::new(
            &actor.name,
            "api_token.create",
            name,
            json!({"admin": username, "expires_at": expires_at}),
        );
        let t = self
            .store
            .create_api_token(admin.id, name, &s.hash, expires_at, &audit)
            .await?;
        Ok((t, s.secret))
    }

    pub async fn revoke_api_token(&self, actor: &Actor, id: i64) -> Result<()> {
        actor.require_write()?;
        let audit = Audit::new(&actor.name, "api_token.revoke", id.to_string(), json!({}));
        self.store.revoke_api_token(id, &audit).await?;
        Ok(())
    }

    /// Every API token (never a secret: only hashes are stored), revoked ones included.
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        Ok(self.store.list_api_tokens().await?)
    }

    /// Resolves an API bearer token to the acting administrator.
    pub async fn actor_for_api_token(&self, token: &str) -> Result<Actor> {
        let denied = || CoreError::Unauthorized("invalid or revoked API token".into());
        let Some(t) = self.store.api_token_by_hash(&hash_secret(token)).await? else {
            return Err(denied());
        };
        let now = lanyard_store::now();
        if t.revoked || t.expires_at.is_some_and(|e| e <= now) {
            return Err(denied());
        }
        let admin = self
            .store
            .admin_by_id(t.admin_id)
            .await?
            .ok_or_else(denied)?;
        if !admin.enabled {
            return Err(denied());
        }
        // Recording use is best effort: a failed touch must not refuse the request.
        if let Err(e) = self.store.touch_api_token(t.id, now).await {
            tracing::warn!(error = %e, token_id = t.id, "could not record API token use");
        }
        Ok(Actor {
            name: format!("token:{}", t.name),
            role: admin.role,
        })
    }
}

/// The refusal to leave the server without an enabled administrator.
fn last_administrator(username: &str, done: &str) -> CoreError {
    CoreError::Conflict(format!(
        "`{username}` is the last enabled administrator with the Administrator role and cannot \
         be {done}; create or enable another administrator first"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret("lyt_");
        let b = new_secret("lyt_");
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with("lyt_"));
        assert_eq!(a.hash, hash_secret(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn roles() {
        assert_eq!(parse_role("read-only").unwrap(), Role::ReadOnly);
        assert_eq!(parse_role("Administrator").unwrap(), Role::Administrator);
        assert!(parse_role("root").is_err());
    }
}
