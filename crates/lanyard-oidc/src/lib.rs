//! Lanyard's OpenID Connect relying party: provider discovery (cached), the authorization URL
//! (authorization code flow with PKCE S256, `state` and `nonce`), the code exchange, and the ID
//! token's validation — signature against the provider's published keys, issuer, audience,
//! expiry and nonce — all done by the maintained `openidconnect` crate. The email (or managed
//! Apple Account) is read from a configurable claim of the validated ID token, falling back to
//! the UserInfo endpoint when the ID token does not carry it.
//!
//! Owns: talking to identity providers and what counts as a valid identity from one.
//!
//! Must not depend on: storage, the domain services (`lanyard-core`) or HTTP serving. Matching an
//! identity to a Lanyard user is policy and lives in `lanyard-core`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError,
    Scope, TokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Serialize};

/// How long discovery documents (and the signing keys they point at) are reused.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(300);

/// What went wrong. Messages are safe to show: they never carry a code, token or secret.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider's configuration is unusable (bad issuer URL, bad redirect URL).
    #[error("{0}")]
    Config(String),
    /// The provider could not be reached or its discovery document is wrong.
    #[error("the identity provider is unavailable: {0}")]
    Discovery(String),
    /// The provider refused the authorization code: invalid, expired or already used.
    #[error("the identity provider refused the sign-in code ({0}); please sign in again")]
    CodeRefused(String),
    /// The provider could not be reached for the code exchange or UserInfo.
    #[error("the identity provider did not answer: {0}")]
    Unreachable(String),
    /// The ID token is missing or fails validation (signature, issuer, audience, expiry, nonce).
    #[error("the identity provider's ID token is not valid: {0}")]
    InvalidIdToken(String),
    /// No email in the configured claim, in the ID token or from UserInfo.
    #[error("the identity provider did not say who you are (no `{0}` claim)")]
    MissingEmail(String),
    /// The provider says the email is not verified.
    #[error("your email address {0} is not verified at the identity provider")]
    EmailNotVerified(String),
}

pub type Result<T, E = OidcError> = std::result::Result<T, E>;

/// Checks an issuer URL: `https://`, or `http://` only for a loopback host (a test or a
/// provider on the same machine); no query or fragment. Returns it without a trailing slash.
pub fn validate_issuer(raw: &str) -> Result<String> {
    let raw = raw.trim();
    let url = url::Url::parse(raw)
        .map_err(|e| OidcError::Config(format!("the issuer URL `{raw}` is not a URL: {e}")))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(OidcError::Config(
            "the issuer URL must not carry a query, fragment or user name".into(),
        ));
    }
    let Some(host) = url.host_str() else {
        return Err(OidcError::Config("the issuer URL has no host".into()));
    };
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(OidcError::Config(
                "the issuer URL must use https (http is allowed only on loopback)".into(),
            ))
        }
        other => {
            return Err(OidcError::Config(format!(
                "the issuer URL must use https, not `{other}:`"
            )))
        }
    }
    Ok(raw.trim_end_matches('/').to_string())
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One provider as the relying party needs it.
#[derive(Clone)]
pub struct ProviderConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
    /// The claim that carries the email / managed Apple Account (`email` by default).
    pub email_claim: String,
    /// Where the provider sends the browser back (Lanyard's callback).
    pub redirect_uri: String,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .field("scopes", &self.scopes)
            .field("email_claim", &self.email_claim)
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// A started sign-in: send the browser to `url`; keep `state` (to find the sign-in again),
/// `nonce` and `pkce_verifier` (secret) until the callback.
pub struct AuthorizationStart {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// Who the provider says signed in, after every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub subject: String,
    /// Lower-cased value of the configured email claim.
    pub email: String,
    pub name: Option<String>,
}

/// Claims beyond the standard ones, to read a configured email claim from UserInfo.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct ExtraClaims(HashMap<String, serde_json::Value>);
impl AdditionalClaims for ExtraClaims {}

/// The relying party: an HTTP client (no redirects followed, system roots plus an optional
/// extra CA) and the discovery cache. The client — and with it the system's root
/// certificates, read from disk — is made on the first sign-in, not when `serve` starts: a
/// server whose users never sign in through a provider does not hold it.
pub struct Oidc {
    extra_roots: Vec<reqwest::Certificate>,
    http: OnceLock<reqwest::Client>,
    cache: Mutex<HashMap<String, (Instant, CoreProviderMetadata)>>,
}

impl Oidc {
    /// `extra_ca_pem`: one or more PEM certificates trusted besides the system roots (a
    /// provider with a private CA, or a test provider on loopback TLS). A file that holds no
    /// readable certificate is refused here.
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<Self> {
        let extra_roots = match extra_ca_pem {
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| OidcError::Config(format!("the extra CA certificate: {e}")))?;
                if certs.is_empty() {
                    return Err(OidcError::Config(
                        "the extra CA file holds no PEM certificate".into(),
                    ));
                }
                certs
            }
            None => Vec::new(),
        };
        Ok(Self {
            extra_roots,
            http: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client, made on first use.
    fn http(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("Lanyard/", env!("CARGO_PKG_VERSION")));
        for c in rustls_native_certs::load_native_certs().certs {
            if let Ok(cert) = reqwest::Certificate::from_der(c.as_ref()) {
                b = b.add_root_certificate(cert);
            }
        }
        for c in &self.extra_roots {
            b = b.add_root_certificate(c.clone());
        }
        let made = b
            .build()
            .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))?;
        // Two first sign-ins at once may both make one; the first stored is kept.
        Ok(self.http.get_or_init(|| made))
    }

    /// The provider's discovery document (with its signing keys), cached for
    /// [`DISCOVERY_TTL`]. `fresh` skips the cache (after a key rotation).
    async fn metadata(&self, issuer: &str, fresh: bool) -> Result<CoreProviderMetadata> {
        if !fresh {
            if let Ok(cache) = self.cache.lock() {
                if let Some((at, m)) = cache.get(issuer) {
                    if at.elapsed() < DISCOVERY_TTL {
                        return Ok(m.clone());
                    }
                }
            }
        }
        let issuer_url = IssuerUrl::new(validate_issuer(issuer)?)
            .map_err(|e| OidcError::Config(format!("issuer URL: {e}")))?;
        let m = CoreProviderMetadata::discover_async(issuer_url, self.http()?)
            .await
            .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(issuer.to_string(), (Instant::now(), m.clone()));
        }
        Ok(m)
    }

    /// Forgets a provider's cached discovery (after its configuration changed).
    pub fn forget(&self, issuer: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(issuer);
        }
    }

    fn client(
        cfg: &ProviderConfig,
        m: CoreProviderMetadata,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
    > {
        let redirect = RedirectUrl::new(cfg.redirect_uri.clone())
            .map_err(|e| OidcError::Config(format!("redirect URL: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            m,
            ClientId::new(cfg.client_id.clone()),
            cfg.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: the URL to send the browser to, with fresh `state`, `nonce` and a
    /// PKCE S256 challenge.
    pub async fn authorization(&self, cfg: &ProviderConfig) -> Result<AuthorizationStart> {
        let m = self.metadata(&cfg.issuer, false).await?;
        let client = Self::client(cfg, m)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &cfg.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        let (url, state, nonce) = req.url();
        Ok(AuthorizationStart {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Finishes a sign-in: exchanges the code (with the PKCE verifier), validates the ID token
    /// (signature, issuer, audience, expiry, nonce) and reads the email claim, from UserInfo
    /// when the ID token lacks it. An `email_verified` of `false` is refused.
    pub async fn finish(
        &self,
        cfg: &ProviderConfig,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity> {
        let m = self.metadata(&cfg.issuer, false).await?;
        let client = Self::client(cfg, m)?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Discovery(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(self.http()?)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    OidcError::CodeRefused(r.error().as_ref().to_string())
                }
                other => OidcError::Unreachable(error_chain(&other)),
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| OidcError::InvalidIdToken("the token response has none".into()))?;
        let expected = Nonce::new(nonce.to_string());
        let claims = match id_token.claims(&client.id_token_verifier(), &expected) {
            Ok(c) => c.clone(),
            Err(first) => {
                // The provider may have rotated its keys since discovery was cached.
                let m = self.metadata(&cfg.issuer, true).await?;
                let fresh = Self::client(cfg, m)?;
                let verifier = fresh.id_token_verifier();
                let c = id_token
                    .claims(&verifier, &expected)
                    .map_err(|_| OidcError::InvalidIdToken(first.to_string()))?
                    .clone();
                c
            }
        };
        let subject = claims.subject().as_str().to_string();
        // The signature is verified: the payload's raw claims can be read as they are.
        let raw = raw_claims(&id_token.to_string()).unwrap_or_default();
        let mut found = claim_email(&raw, &cfg.email_claim);
        if found.is_none() {
            let user_info = client
                .user_info(token.access_token().clone(), Some(claims.subject().clone()))
                .ok();
            if let Some(req) = user_info {
                let info: UserInfoClaims<ExtraClaims, CoreGenderClaim> =
                    req.request_async(self.http()?).await.map_err(|e| {
                        OidcError::Unreachable(format!("UserInfo: {}", error_chain(&e)))
                    })?;
                let mut raw = info.additional_claims().0.clone();
                if let Some(e) = info.email() {
                    raw.insert("email".into(), serde_json::Value::from(e.as_str()));
                }
                if let Some(v) = info.email_verified() {
                    raw.insert("email_verified".into(), serde_json::Value::from(v));
                }
                found = claim_email(&raw, &cfg.email_claim);
            }
        }
        let Some((email, verified)) = found else {
            return Err(OidcError::MissingEmail(cfg.email_claim.clone()));
        };
        if verified == Some(false) {
            return Err(OidcError::EmailNotVerified(email));
        }
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string());
        Ok(VerifiedIdentity {
            subject,
            email,
            name,
        })
    }
}

/// The JSON claims of a compact JWT's payload.
fn raw_claims(jwt: &str) -> Option<HashMap<String, serde_json::Value>> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The configured email claim (lower-cased) and `email_verified`, when the claim is a
/// non-empty string.
fn claim_email(
    raw: &HashMap<String, serde_json::Value>,
    claim: &str,
) -> Option<(String, Option<bool>)> {
    let email = raw
        .get(claim)?
        .as_str()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())?;
    let verified = raw.get("email_verified").and_then(|v| match v {
        serde_json::Value::Bool(b) => Some(*b),
        // Some providers send it as a string.
        serde_json::Value::String(s) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    });
    Some((email, verified))
}

/// An error with its sources, for log lines and messages (never carries a secret: request
/// bodies are not part of these errors).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_must_be_https_or_loopback_http() {
        assert_eq!(
            validate_issuer("https://id.example.com/").ok().as_deref(),
            Some("https://id.example.com")
        );
        assert!(validate_issuer("http://127.0.0.1:8080/oidc").is_ok());
        assert!(validate_issuer("http://localhost:3000").is_ok());
        assert!(validate_issuer("http://[::1]:3000").is_ok());
        for bad in [
            "http://id.example.com",
            "ftp://id.example.com",
            "not a url",
            "https://id.example.com/?x=1",
            "https://id.example.com/#f",
            "https://user@id.example.com",
        ] {
            assert!(
                matches!(validate_issuer(bad), Err(OidcError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn email_claim_and_verification() {
        let mut raw = HashMap::new();
        raw.insert("upn".to_string(), serde_json::json!(" Ann@Example.COM "));
        assert_eq!(
            claim_email(&raw, "upn"),
            Some(("ann@example.com".into(), None))
        );
        raw.insert("email_verified".into(), serde_json::json!(false));
        assert_eq!(
            claim_email(&raw, "upn"),
            Some(("ann@example.com".into(), Some(false)))
        );
        raw.insert("email_verified".into(), serde_json::json!("true"));
        assert_eq!(claim_email(&raw, "upn").and_then(|c| c.1), Some(true));
        assert_eq!(claim_email(&raw, "email"), None);
        raw.insert("email".into(), serde_json::json!(42));
        assert_eq!(claim_email(&raw, "email"), None);
    }

    #[test]
    fn raw_claims_of_a_compact_jwt() {
        // {"alg":"none"} . {"sub":"1","email":"a@b.c"} . (no signature)
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIiwiZW1haWwiOiJhQGIuYyJ9.";
        let c = raw_claims(jwt).unwrap_or_default();
        assert_eq!(c.get("email"), Some(&serde_json::json!("a@b.c")));
        assert!(raw_claims("garbage").is_none());
    }
}
