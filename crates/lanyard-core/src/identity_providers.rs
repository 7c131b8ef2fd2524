//! Enrollment sign-in through the organisation's identity provider (OpenID Connect).
//!
//! Administrators configure providers (issuer, client id and secret, scopes, the claim that
//! carries the email); the client secret is sealed with the server's [`SecretBox`] and never
//! shown again. A person on the Mac's sign-in page picks a provider: [`OidcSignIns::begin`]
//! stores a single-use sign-in (hash of `state`, `nonce`, sealed PKCE verifier, the Mac's
//! `user-identifier`) and returns the provider's authorization URL. At the callback,
//! [`OidcSignIns::finish`] claims the sign-in once, lets `lanyard-oidc` exchange the code and
//! validate the ID token, and applies Lanyard's rules:
//! - the email must belong to a managed domain;
//! - with "use email address as managed Apple Account" on, it must equal the Mac's
//!   `user-identifier`;
//! - it is matched to a Lanyard user, or a user is created on first sign-in when the provider
//!   allows it; disabled users and users without a managed Apple Account are refused, and the
//!   user's managed Apple Account must be the one the Mac presented;
//! - then the flow continues exactly as after a local password sign-in (privacy → ownership →
//!   attributes → access token).

use std::sync::Arc;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use lanyard_oidc::{Oidc, OidcError, ProviderConfig};
use lanyard_pki::SecretBox;
use lanyard_store::{
    Audit, IdentityProviderChange, IdentityProviderRow, NewIdentityProvider, OidcSignIn, StoreError,
};

use crate::admins::{hash_secret, Role};
use crate::enrollment::FlowStep;
use crate::users::{check_presented_identifier, normalize_email, CreateUser};
use crate::{Actor, CoreError, Lanyard, Result};

/// How long a person has to sign in at the provider and come back.
pub const SIGN_IN_MINUTES: i64 = 10;
/// The callback path under the public base URL (registered at the provider).
pub const CALLBACK_PATH: &str = "/enroll/oidc/callback";

const DEFAULT_SCOPES: [&str; 2] = ["email", "profile"];

/// A provider as the API and CLI show it (never the client secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IdentityProviderView {
    pub name: String,
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    /// Whether a client secret is stored (the secret itself is never returned).
    pub client_secret_set: bool,
    pub scopes: Vec<String>,
    pub email_claim: String,
    pub allow_create_users: bool,
    pub enabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<IdentityProviderRow> for IdentityProviderView {
    fn from(r: IdentityProviderRow) -> Self {
        Self {
            client_secret_set: r.client_secret_sealed.is_some(),
            scopes: r.scopes.split_whitespace().map(str::to_string).collect(),
            name: r.name,
            display_name: r.display_name,
            issuer: r.issuer,
            client_id: r.client_id,
            email_claim: r.email_claim,
            allow_create_users: r.allow_create_users,
            enabled: r.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A new provider.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIdentityProvider {
    /// Short name: lower-case letters, digits and dashes (`corp`).
    pub name: String,
    /// What the sign-in button says; defaults to the name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Issuer URL (https; http only on loopback).
    pub issuer: String,
    pub client_id: String,
    /// Omit for a public client (PKCE only).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Scopes besides `openid`; default `email profile`.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// The claim carrying the email / managed Apple Account; default `email`.
    #[serde(default)]
    pub email_claim: Option<String>,
    /// Create a Lanyard user on a person's first sign-in; default false.
    #[serde(default)]
    pub allow_create_users: Option<bool>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for CreateIdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateIdentityProvider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

/// A change to a provider; absent fields stay as they are.
#[derive(Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIdentityProvider {
    pub display_name: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    /// Replaces the stored secret.
    pub client_secret: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub email_claim: Option<String>,
    pub allow_create_users: Option<bool>,
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for UpdateIdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateIdentityProvider")
            .field("issuer", &self.issuer)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

fn check_name(name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty()
        || n.len() > 40
        || !n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || n.starts_with('-')
    {
        return Err(CoreError::Invalid(
            "a provider name is 1 to 40 lower-case letters, digits and dashes".into(),
        ));
    }
    Ok(n.to_string())
}

fn check_text(what: &str, v: &str, max: usize) -> Result<String> {
    let v = v.trim();
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(CoreError::Invalid(format!(
            "{what} must be 1 to {max} printable characters"
        )));
    }
    Ok(v.to_string())
}

fn check_issuer(v: &str) -> Result<String> {
    lanyard_oidc::validate_issuer(v).map_err(|e| CoreError::Invalid(e.to_string()))
}

fn check_scopes(scopes: &[String]) -> Result<String> {
    let mut out: Vec<&str> = Vec::new();
    for s in scopes {
        let s = s.trim();
        if s.is_empty() || s.len() > 100 || !s.chars().all(|c| c.is_ascii_graphic() && c != '"') {
            return Err(CoreError::Invalid(format!("`{s}` is not a valid scope")));
        }
        if s != "openid" && !out.contains(&s) {
            out.push(s);
        }
    }
    if out.len() > 20 {
        return Err(CoreError::Invalid("at most 20 scopes".into()));
    }
    Ok(out.join(" "))
}

fn check_claim(v: &str) -> Result<String> {
    let v = check_text("the email claim", v, 100)?;
    if v.chars().any(char::is_whitespace) {
        return Err(CoreError::Invalid(
            "the email claim is one claim name, without spaces".into(),
        ));
    }
    Ok(v)
}

fn check_secret(v: &str) -> Result<&str> {
    if v.is_empty() || v.len() > 1000 {
        return Err(CoreError::Invalid(
            "the client secret must be 1 to 1000 characters".into(),
        ));
    }
    Ok(v)
}

fn secret_context(name: &str) -> Vec<u8> {
    format!("identity-provider-client-secret:{name}").into_bytes()
}

impl Lanyard {
    pub async fn create_identity_provider(
        &self,
        actor: &Actor,
        secrets: &SecretBox,
        input: CreateIdentityProvider,
    ) -> Result<IdentityProviderView> {
        actor.require_write()?;
        let name = check_name(&input.name)?;
        let display_name = match input.display_name.as_deref() {
            Some(d) => check_text("the display name", d, 100)?,
            None => name.clone(),
        };
        let issuer = check_issuer(&input.issuer)?;
        let client_id = check_text("the client id", &input.client_id, 200)?;
        let scopes = match &input.scopes {
            Some(s) => check_scopes(s)?,
            None => DEFAULT_SCOPES.join(" "),
        };
        let email_claim = check_claim(input.email_claim.as_deref().unwrap_or("email"))?;
        let client_secret_sealed = match input.client_secret.as_deref() {
            Some(s) => Some(secrets.seal(check_secret(s)?.as_bytes(), &secret_context(&name))?),
            None => None,
        };
        let p = NewIdentityProvider {
            name: name.clone(),
            display_name,
            issuer,
            client_id,
            client_secret_sealed,
            scopes,
            email_claim,
            allow_create_users: input.allow_create_users.unwrap_or(false),
            enabled: input.enabled.unwrap_or(true),
        };
        let audit = Audit::new(
            &actor.name,
            "identity_provider.create",
            &name,
            json!({"issuer": p.issuer, "client_id": p.client_id, "scopes": p.scopes,
                   "email_claim": p.email_claim, "allow_create_users": p.allow_create_users,
                   "enabled": p.enabled, "client_secret_set": p.client_secret_sealed.is_some()}),
        );
        let row = self
            .store()
            .create_identity_provider(&p, &audit)
            .await
            .map_err(|e| CoreError::creating(format!("an identity provider named {name}"), e))?;
        Ok(row.into())
    }

    pub async fn list_identity_providers(&self) -> Result<Vec<IdentityProviderView>> {
        Ok(self
            .store()
            .list_identity_providers()
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn identity_provider(&self, name: &str) -> Result<IdentityProviderView> {
        self.store()
            .identity_provider(name)
            .await?
            .map(Into::into)
            .ok_or_else(|| CoreError::NotFound(format!("identity provider {name}")))
    }

    pub async fn update_identity_provider(
        &self,
        actor: &Actor,
        secrets: &SecretBox,
        name: &str,
        input: UpdateIdentityProvider,
    ) -> Result<IdentityProviderView> {
        actor.require_write()?;
        let change = IdentityProviderChange {
            display_name: input
                .display_name
                .as_deref()
                .map(|d| check_text("the display name", d, 100))
                .transpose()?,
            issuer: input.issuer.as_deref().map(check_issuer).transpose()?,
            client_id: input
                .client_id
                .as_deref()
                .map(|c| check_text("the client id", c, 200))
                .transpose()?,
            client_secret_sealed: match input.client_secret.as_deref() {
                Some(s) => Some(secrets.seal(check_secret(s)?.as_bytes(), &secret_context(name))?),
                None => None,
            },
            scopes: input.scopes.as_deref().map(check_scopes).transpose()?,
            email_claim: input.email_claim.as_deref().map(check_claim).transpose()?,
            allow_create_users: input.allow_create_users,
            enabled: input.enabled,
        };
        if change == IdentityProviderChange::default() {
            return Err(CoreError::Invalid("nothing to change".into()));
        }
        let audit = Audit::new(
            &actor.name,
            "identity_provider.update",
            name,
            json!({"display_name": change.display_name, "issuer": change.issuer,
                   "client_id": change.client_id, "scopes": change.scopes,
                   "email_claim": change.email_claim,
                   "allow_create_users": change.allow_create_users, "enabled": change.enabled,
                   "client_secret_changed": change.client_secret_sealed.is_some()}),
        );
        let row = self
            .store()
            .update_identity_provider(name, &change, &audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => CoreError::NotFound(format!("identity provider {name}")),
                other => other.into(),
            })?;
        Ok(row.into())
    }

    pub async fn delete_identity_provider(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require_write()?;
        let audit = Audit::new(&actor.name, "identity_provider.delete", name, json!({}));
        self.store()
            .delete_identity_provider(name, &audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => CoreError::NotFound(format!("identity provider {name}")),
                other => other.into(),
            })
    }
}

/// Sign-in through a provider, for the enrollment pages. Cheap to clone.
#[derive(Clone)]
pub struct OidcSignIns {
    lanyard: Lanyard,
    oidc: Arc<Oidc>,
    secrets: SecretBox,
    callback_url: String,
}

/// An enabled provider, for the sign-in page's buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderButton {
    pub name: String,
    pub display_name: String,
}

fn verifier_context(state_hash: &str) -> Vec<u8> {
    format!("oidc-pkce-verifier:{state_hash}").into_bytes()
}

fn provider_error(e: OidcError) -> CoreError {
    match e {
        OidcError::CodeRefused(_) | OidcError::InvalidIdToken(_) => {
            CoreError::Unauthorized(e.to_string())
        }
        OidcError::MissingEmail(_) | OidcError::EmailNotVerified(_) => {
            CoreError::Forbidden(e.to_string())
        }
        OidcError::Config(_) | OidcError::Discovery(_) | OidcError::Unreachable(_) => {
            CoreError::failed("signing in at the identity provider", e)
        }
    }
}

impl OidcSignIns {
    /// `public_base`: the server's public URL (the callback is [`CALLBACK_PATH`] under it).
    pub fn new(lanyard: Lanyard, oidc: Arc<Oidc>, secrets: SecretBox, public_base: &str) -> Self {
        Self {
            lanyard,
            oidc,
            secrets,
            callback_url: format!("{}{CALLBACK_PATH}", public_base.trim_end_matches('/')),
        }
    }

    /// The redirect URI to register at the provider.
    pub fn callback_url(&self) -> &str {
        &self.callback_url
    }

    /// Enabled providers, by name.
    pub async fn buttons(&self) -> Result<Vec<ProviderButton>> {
        Ok(self
            .lanyard
            .store()
            .list_identity_providers()
            .await?
            .into_iter()
            .filter(|p| p.enabled)
            .map(|p| ProviderButton {
                name: p.name,
                display_name: p.display_name,
            })
            .collect())
    }

    fn config(&self, p: &IdentityProviderRow) -> Result<ProviderConfig> {
        let client_secret = match &p.client_secret_sealed {
            Some(sealed) => Some(
                String::from_utf8(self.secrets.open(sealed, &secret_context(&p.name))?).map_err(
                    |_| CoreError::Internal("the stored client secret is not text".into()),
                )?,
            ),
            None => None,
        };
        Ok(ProviderConfig {
            issuer: p.issuer.clone(),
            client_id: p.client_id.clone(),
            client_secret,
            scopes: p.scopes.split_whitespace().map(str::to_string).collect(),
            email_claim: p.email_claim.clone(),
            redirect_uri: self.callback_url.clone(),
        })
    }

    /// Starts a sign-in through `provider` for a Mac that presented `user_identifier`; returns
    /// the provider's authorization URL to redirect the browser to, and the `state` (to bind
    /// to the browser).
    pub async fn begin(
        &self,
        provider: &str,
        user_identifier: Option<&str>,
    ) -> Result<(String, String)> {
        let p = self
            .lanyard
            .store()
            .identity_provider(provider)
            .await?
            .filter(|p| p.enabled)
            .ok_or_else(|| CoreError::NotFound(format!("identity provider {provider}")))?;
        let start = self
            .oidc
            .authorization(&self.config(&p)?)
            .await
            .map_err(provider_error)?;
        let state_hash = hash_secret(&start.state);
        let sealed = self.secrets.seal(
            start.pkce_verifier.as_bytes(),
            &verifier_context(&state_hash),
        )?;
        let now = lanyard_store::now();
        self.lanyard
            .store()
            .create_oidc_sign_in(&OidcSignIn {
                state_hash,
                provider_id: p.id,
                nonce: start.nonce,
                pkce_verifier_sealed: sealed,
                user_identifier: user_identifier
                    .map(|u| u.trim().to_lowercase())
                    .filter(|u| !u.is_empty()),
                created_at: now,
                expires_at: now + Duration::minutes(SIGN_IN_MINUTES),
                used_at: None,
            })
            .await?;
        Ok((start.url, start.state))
    }

    /// The callback: claims the sign-in named by `state` (once), validates the provider's
    /// answer and applies Lanyard's rules. Returns the enrollment flow's cookie secret and its
    /// first page, as a local sign-in does.
    pub async fn finish(&self, state: &str, code: &str) -> Result<(String, FlowStep)> {
        let store = self.lanyard.store();
        let state_hash = hash_secret(state);
        let sign_in = store
            .consume_oidc_sign_in(&state_hash, lanyard_store::now())
            .await?
            .ok_or_else(|| {
                CoreError::Unauthorized(
                    "This sign-in is unknown, was already used or has expired. Start again from \
                     the Mac's sign-in page."
                        .into(),
                )
            })?;
        let p = store
            .identity_provider_by_id(sign_in.provider_id)
            .await?
            .filter(|p| p.enabled)
            .ok_or_else(|| CoreError::NotFound("identity provider".into()))?;
        let verifier = String::from_utf8(self.secrets.open(
            &sign_in.pkce_verifier_sealed,
            &verifier_context(&state_hash),
        )?)
        .map_err(|_| CoreError::Internal("the stored PKCE verifier is not text".into()))?;
        let identity = self
            .oidc
            .finish(&self.config(&p)?, code, &verifier, &sign_in.nonce)
            .await
            .map_err(provider_error)?;
        let email = normalize_email(&identity.email).map_err(|_| {
            CoreError::Forbidden(format!(
                "The identity provider's `{}` claim is not an email address.",
                p.email_claim
            ))
        })?;
        let settings = self.lanyard.enrollment_settings().await?;
        if !settings.is_managed_email(&email) {
            return Err(CoreError::Forbidden(format!(
                "{email} does not belong to an organisation that enrolls Macs here. Sign in with \
                 your work or school account."
            )));
        }
        let presented = sign_in.user_identifier.as_deref();
        let user = match store.user_by_email(&email).await? {
            Some(u) => u,
            None if p.allow_create_users => {
                // Refuse before creating what the new record would not match.
                let new_apple_id = settings
                    .use_email_as_managed_apple_id
                    .then_some(email.as_str());
                check_presented_identifier(presented, &email, new_apple_id)?;
                let actor = Actor {
                    name: format!("idp:{}", p.name),
                    role: Role::Administrator,
                };
                let created = self
                    .lanyard
                    .create_user(
                        &actor,
                        CreateUser {
                            email: email.clone(),
                            display_name: identity.name.clone(),
                            password: None,
                            managed_apple_id: None,
                        },
                    )
                    .await?;
                store
                    .user_by_id(created.id)
                    .await?
                    .ok_or_else(|| CoreError::Internal("the new user vanished".into()))?
            }
            None => {
                return Err(CoreError::Forbidden(format!(
                    "There is no account for {email} here yet; ask your IT administrator."
                )))
            }
        };
        if !user.enabled {
            return Err(CoreError::Forbidden(
                "this account is disabled; ask your IT administrator".into(),
            ));
        }
        let opened = self.lanyard.open_flow(&user, presented).await?;
        tracing::info!(provider = %p.name, user = %user.email, "enrollment sign-in through identity provider");
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_scopes_and_claims_are_checked() {
        assert_eq!(check_name(" corp-1 ").ok().as_deref(), Some("corp-1"));
        for bad in ["", "Corp", "a b", "-x", &"a".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_scopes(&[
                "openid".into(),
                "email".into(),
                "email".into(),
                "groups".into()
            ])
            .ok()
            .as_deref(),
            Some("email groups")
        );
        assert!(check_scopes(&["a b".into()]).is_err());
        assert!(check_claim("upn").is_ok());
        assert!(check_claim("a b").is_err());
        assert!(check_issuer("http://id.example.com").is_err());
    }
}
