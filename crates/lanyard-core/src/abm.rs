//! Apple Business Manager server tokens.
//!
//! The lifecycle: [`AbmService::new_token`] makes an RSA-2048 key pair and a self-signed
//! certificate (the administrator uploads its PEM to ABM); [`AbmService::upload`] opens the
//! token file ABM returns (S/MIME EnvelopedData to that certificate), validates the OAuth values
//! and their expiry, asks ABM for the account details and stores the secrets sealed with the
//! server's key. Renewal is the same upload again under the same name: secrets replaced,
//! devices kept. Exactly one token may be the default for account-driven enrollment; the
//! default token registers Lanyard's service-discovery URL at ABM
//! (`/account-driven-enrollment/profile`), which Apple's hosted service discovery returns for
//! the organisation's managed Apple Accounts when their domain serves no well-known file.
//!
//! Device sync runs under a lease in the database so that only one of several server
//! processes syncs a token at a time; each page (devices and the cursor after it) is stored in
//! one transaction, so an interrupted sync resumes where it stopped and never duplicates. The
//! stored cursor remembers which call it belongs to (`fetch:` while a full fetch is under way,
//! `sync:` after it); an expired sync cursor falls back to a full fetch.
//!
//! [`AbmService::start_sync`] takes the lease at once and runs the sync in a background task;
//! its progress (pages, devices seen and stored, running/done/failed) is kept in this
//! process's registry ([`AbmService::progress`]), updated after every stored page. Another
//! process sees only the lease (its start is refused) and, afterwards, the stored result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use lanyard_apple::abm::{AbmClient, AbmError, AbmOptions, DiscoveryProfile, OAuthCredentials};
use lanyard_pki::SecretBox;
use lanyard_pki::{PKey, X509};
use lanyard_store::{AbmDevice, AbmToken, AbmTokenUpload, Audit};

use crate::{Actor, CoreError, Lanyard, Result};

/// The largest token file accepted (real ones are a few KiB).
pub const MAX_TOKEN_FILE: usize = 64 * 1024;
/// Warn when a token expires within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// Validity of the certificate Lanyard makes for ABM.
pub const TOKEN_CERT_DAYS: u32 = 3650;
/// Upper bound on pages per sync, so a misbehaving upstream cannot loop us forever.
pub const MAX_PAGES: u32 = 100_000;
const KEY_CONTEXT: &[u8] = b"lanyard:abm:token-key";
const SECRETS_CONTEXT: &[u8] = b"lanyard:abm:token-secrets";

/// How Lanyard reaches ABM and what it registers there.
#[derive(Debug, Clone)]
pub struct AbmSettings {
    pub options: AbmOptions,
    /// Devices per page asked of ABM (ABM allows at most 1000).
    pub page_size: u32,
    /// The URL registered as `mdm_service_discovery_url` (the server's public
    /// `/.well-known/com.apple.remotemanagement`); `None` when no public URL is configured.
    pub discovery_url: Option<String>,
    /// How long a sync may hold a token's lease before another process may take over.
    pub lease: Duration,
}

impl Default for AbmSettings {
    fn default() -> Self {
        Self {
            options: AbmOptions::default(),
            page_size: 1000,
            discovery_url: None,
            lease: Duration::from_secs(15 * 60),
        }
    }
}

/// What the API and CLI show of a server token (never its secrets).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AbmTokenView {
    pub name: String,
    /// `awaiting_token` until a token file was uploaded, then `active` or `expired`.
    pub state: String,
    pub org_name: Option<String>,
    pub org_id: Option<String>,
    pub server_name: Option<String>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub days_left: Option<i64>,
    /// Set when the token expires within 30 days or has expired.
    pub warning: Option<String>,
    /// The default token for account-driven enrollment (the "Account Driven" column).
    pub default_account_driven: bool,
    pub discovery_url: Option<String>,
    pub discovery_registered_at: Option<DateTime<Utc>>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_sync_status: Option<String>,
    pub devices: i64,
    pub uploaded_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// How one sync went.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct SyncReport {
    pub name: String,
    /// Whether this sync fetched the whole list (first sync, or the cursor expired).
    pub full_fetch: bool,
    pub pages: u32,
    pub devices_seen: u64,
    pub devices_total: i64,
}

/// Where a sync started by this process stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SyncProgress {
    pub name: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub pages: u32,
    /// Device records ABM sent so far.
    pub devices_seen: u64,
    /// Device records stored so far (records without a serial number are skipped).
    pub devices_stored: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set when the sync failed.
    pub error: Option<String>,
    /// Set when the sync is done.
    pub report: Option<SyncReport>,
}

impl SyncProgress {
    /// One line for people: the counts while running, then the result or the error.
    pub fn text(&self) -> String {
        match (self.state.as_str(), &self.report, &self.error) {
            ("done", Some(r), _) => r.text(),
            ("failed", _, Some(e)) => format!("Sync of {} failed: {e}", self.name),
            _ => format!(
                "Sync of {} running: {} page{} done, {} devices seen, {} stored.",
                self.name,
                self.pages,
                if self.pages == 1 { "" } else { "s" },
                self.devices_seen,
                self.devices_stored
            ),
        }
    }

    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

impl SyncReport {
    /// One line for people.
    pub fn text(&self) -> String {
        format!(
            "Sync of {} finished: {} devices seen in {} page{} ({}); {} devices assigned in all.",
            self.name,
            self.devices_seen,
            self.pages,
            if self.pages == 1 { "" } else { "s" },
            if self.full_fetch {
                "full fetch"
            } else {
                "changes since the last sync"
            },
            self.devices_total
        )
    }
}

type ProgressMap = Arc<Mutex<HashMap<String, SyncProgress>>>;

/// The service-discovery registration as Lanyard recorded it and as ABM reports it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DiscoveryStatus {
    pub token: String,
    pub recorded_url: Option<String>,
    pub recorded_at: Option<DateTime<Utc>>,
    /// What ABM answers now (`None`: nothing registered there).
    pub abm_url: Option<String>,
    pub abm_last_updated: Option<String>,
}

/// The JSON inside an ABM token file.
#[derive(Deserialize)]
struct TokenFile {
    consumer_key: String,
    consumer_secret: String,
    access_token: String,
    access_secret: String,
    access_token_expiry: String,
}

fn upstream(e: AbmError) -> CoreError {
    match e {
        AbmError::Config(m) => CoreError::Invalid(m),
        other => CoreError::Upstream(other.to_string()),
    }
}

/// Token names: 1–64 letters, digits, spaces, `.`, `_`, `-`; not blank at either end.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "token name {name:?}: use 1-64 letters, digits, spaces, '.', '_' or '-'"
        )))
    }
}

fn view(t: &AbmToken, devices: i64) -> AbmTokenView {
    let now = lanyard_store::now();
    let days_left = t.token_expires_at.map(|e| (e - now).num_days());
    let expired = t.token_expires_at.is_some_and(|e| e <= now);
    let state = if t.secrets_sealed.is_none() {
        "awaiting_token"
    } else if expired {
        "expired"
    } else {
        "active"
    };
    let warning = match (t.secrets_sealed.is_some(), days_left) {
        (true, Some(_)) if expired => Some(format!(
            "the server token `{}` has expired: download a new token file in Apple Business \
             Manager and upload it under the same name",
            t.name
        )),
        (true, Some(d)) if d < EXPIRY_WARNING_DAYS => Some(format!(
            "the server token `{}` expires in {d} days: renew it in Apple Business Manager",
            t.name
        )),
        _ => None,
    };
    AbmTokenView {
        name: t.name.clone(),
        state: state.into(),
        org_name: t.org_name.clone(),
        org_id: t.org_id.clone(),
        server_name: t.server_name.clone(),
        token_expires_at: t.token_expires_at,
        days_left,
        warning,
        default_account_driven: t.is_default_account_driven,
        discovery_url: t.discovery_url.clone(),
        discovery_registered_at: t.discovery_registered_at,
        last_sync_at: t.last_sync_at,
        last_sync_status: t.last_sync_status.clone(),
        devices,
        uploaded_at: t.uploaded_at,
        created_at: t.created_at,
    }
}

/// Opens a token file with the token's key: S/MIME (or PEM/DER CMS) → MIME text → JSON.
/// Every failure is [`CoreError::Invalid`] with a message for the administrator.
pub fn open_token_file(
    bytes: &[u8],
    cert_pem: &str,
    key_pem: &[u8],
) -> Result<(OAuthCredentials, DateTime<Utc>)> {
    if bytes.is_empty() {
        return Err(CoreError::Invalid("the token file is empty".into()));
    }
    if bytes.len() > MAX_TOKEN_FILE {
        return Err(CoreError::Invalid(format!(
            "the token file is larger than {MAX_TOKEN_FILE} bytes; is it the .p7m ABM gave?"
        )));
    }
    let cert = X509::from_pem(cert_pem.as_bytes())?;
    let key = PKey::private_key_from_pem(key_pem)?;
    let decrypted = lanyard_pki::decrypt_smime(bytes, &cert, &key).map_err(|_| {
        CoreError::Invalid(
            "the file is not an ABM token encrypted to this token's certificate (not S/MIME \
             CMS, or encrypted to another key): download the token again after uploading this \
             token's certificate"
                .into(),
        )
    })?;
    let text = lanyard_pki::smime_message_text(&decrypted)
        .map_err(|e| CoreError::Invalid(format!("the token's message: {e}")))?;
    let file: TokenFile = serde_json::from_str(&text).map_err(|e| {
        CoreError::Invalid(format!(
            "the token's message is not the expected JSON (consumer_key, consumer_secret, \
             access_token, access_secret, access_token_expiry): {}",
            e.classify_name()
        ))
    })?;
    for (field, value) in [
        ("consumer_key", &file.consumer_key),
        ("consumer_secret", &file.consumer_secret),
        ("access_token", &file.access_token),
        ("access_secret", &file.access_secret),
    ] {
        if value.trim().is_empty() {
            return Err(CoreError::Invalid(format!("the token's {field} is empty")));
        }
    }
    let expiry = DateTime::parse_from_rfc3339(file.access_token_expiry.trim())
        .map_err(|_| {
            CoreError::Invalid(format!(
                "the token's access_token_expiry {:?} is not a date",
                file.access_token_expiry
            ))
        })?
        .with_timezone(&Utc);
    if expiry <= lanyard_store::now() {
        return Err(CoreError::Invalid(format!(
            "the token expired at {expiry}: download a new one in Apple Business Manager"
        )));
    }
    Ok((
        OAuthCredentials {
            consumer_key: file.consumer_key,
            consumer_secret: file.consumer_secret,
            access_token: file.access_token,
            access_secret: file.access_secret,
        },
        expiry,
    ))
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// A JSON error's kind without its position text (which could quote secret values).
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "a field is missing or of the wrong type",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// ABM server tokens, discovery registration and device sync. Cheap to clone.
#[derive(Clone)]
pub struct AbmService {
    lanyard: Lanyard,
    secrets: SecretBox,
    settings: Arc<AbmSettings>,
    /// This process's name in the sync lease.
    owner: String,
    /// Progress of the syncs this process ran, by token name (the latest one each).
    progress: ProgressMap,
}

impl AbmService {
    pub fn new(lanyard: Lanyard, secrets: SecretBox, settings: AbmSettings) -> Self {
        Self {
            lanyard,
            secrets,
            settings: Arc::new(settings),
            owner: format!("lanyard-{}", uuid::Uuid::new_v4()),
            progress: Arc::default(),
        }
    }

    pub fn settings(&self) -> &AbmSettings {
        &self.settings
    }

    async fn token(&self, name: &str) -> Result<AbmToken> {
        self.lanyard
            .store()
            .abm_token(name)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("server token `{name}`")))
    }

    async fn view_of(&self, t: &AbmToken) -> Result<AbmTokenView> {
        let n = self.lanyard.store().count_abm_devices(&t.name).await?;
        Ok(view(t, n))
    }

    /// Creates a token entry with a new key pair; returns the certificate PEM to upload to ABM.
    pub async fn new_token(&self, actor: &Actor, name: &str) -> Result<String> {
        actor.require_write()?;
        validate_name(name)?;
        if self.lanyard.store().abm_token(name).await?.is_some() {
            return Err(CoreError::Conflict(format!(
                "a server token named `{name}` already exists"
            )));
        }
        let issued = lanyard_pki::self_signed_rsa(&format!("Lanyard ABM {name}"), TOKEN_CERT_DAYS)?;
        let sealed = self.secrets.seal(issued.key_pem.as_bytes(), KEY_CONTEXT)?;
        self.lanyard
            .store()
            .create_abm_token(
                name,
                &issued.cert_pem,
                &sealed,
                &Audit::new(
                    &actor.name,
                    "server_token.create",
                    name,
                    json!({"certificate_serial": issued.serial_hex}),
                ),
            )
            .await
            .map_err(|e| CoreError::creating(format!("a server token named `{name}`"), e))?;
        Ok(issued.cert_pem)
    }

    /// The certificate (PEM) to upload to ABM for this token.
    pub async fn certificate_pem(&self, name: &str) -> Result<String> {
        Ok(self.token(name).await?.cert_pem)
    }

    fn open_secrets(&self, t: &AbmToken) -> Result<OAuthCredentials> {
        let sealed = t.secrets_sealed.as_ref().ok_or_else(|| {
            CoreError::Invalid(format!(
                "no token file uploaded for `{}` yet: `lanyard abm upload {:?} FILE`",
                t.name, t.name
            ))
        })?;
        if t.token_expires_at
            .is_some_and(|e| e <= lanyard_store::now())
        {
            return Err(CoreError::Invalid(format!(
                "the server token `{}` has expired: upload a renewed token file",
                t.name
            )));
        }
        let plain = self
            .secrets
            .open(sealed, SECRETS_CONTEXT)
            .map_err(|e| CoreError::failed("opening the token secrets", e))?;
        serde_json::from_slice(&plain)
            .map_err(|_| CoreError::Internal("the stored token secrets are corrupt".into()))
    }

    fn client(&self, creds: OAuthCredentials) -> Result<AbmClient> {
        AbmClient::new(self.settings.options.clone(), creds).map_err(upstream)
    }

    /// Opens, validates and stores a token file (first upload or renewal). When ABM cannot be
    /// asked for the account details the token is still stored (the details show later).
    pub async fn upload(
        &self,
        actor: &Actor,
        name: &str,
        file: &[u8],
        make_default: bool,
    ) -> Result<AbmTokenView> {
        actor.require_write()?;
        let t = self.token(name).await?;
        let key_pem = self
            .secrets
            .open(&t.key_sealed, KEY_CONTEXT)
            .map_err(|e| CoreError::failed("opening the token key", e))?;
        let (creds, expiry) = open_token_file(file, &t.cert_pem, &key_pem)?;
        let account = match self.client(creds.clone())?.account().await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(token = name, error = %e, "ABM account details unavailable");
                None
            }
        };
        let plain = serde_json::to_vec(&creds)
            .map_err(|e| CoreError::failed("encoding token secrets", e))?;
        let sealed = self.secrets.seal(&plain, SECRETS_CONTEXT)?;
        let renewal = t.secrets_sealed.is_some();
        let up = AbmTokenUpload {
            secrets_sealed: sealed,
            token_expires_at: expiry,
            org_name: account
                .as_ref()
                .and_then(|a| a.org_name.clone())
                .or(t.org_name.clone()),
            org_id: account
                .as_ref()
                .and_then(|a| a.org_id.clone())
                .or(t.org_id.clone()),
            server_name: account
                .as_ref()
                .and_then(|a| a.server_name.clone())
                .or(t.server_name.clone()),
            server_uuid: account
                .as_ref()
                .and_then(|a| a.server_uuid.clone())
                .or(t.server_uuid.clone()),
            make_default,
        };
        let row = self
            .lanyard
            .store()
            .upload_abm_token(
                name,
                &up,
                &Audit::new(
                    &actor.name,
                    if renewal {
                        "server_token.renew"
                    } else {
                        "server_token.upload"
                    },
                    name,
                    json!({"expires_at": expiry, "default_account_driven": make_default,
                        "org_name": up.org_name}),
                ),
            )
            .await?;
        self.view_of(&row).await
    }

    /// Makes this token the default for account-driven enrollment (moving it).
    pub async fn set_default(&self, actor: &Actor, name: &str) -> Result<AbmTokenView> {
        actor.require_write()?;
        let t = self.token(name).await?;
        if t.secrets_sealed.is_none() {
            return Err(CoreError::Invalid(format!(
                "upload a token file for `{name}` before making it the default"
            )));
        }
        let row = self
            .lanyard
            .store()
            .set_default_abm_token(
                name,
                &Audit::new(&actor.name, "server_token.default", name, json!({})),
            )
            .await?;
        self.view_of(&row).await
    }

    pub async fn list(&self) -> Result<Vec<AbmTokenView>> {
        let mut out = Vec::new();
        for t in self.lanyard.store().list_abm_tokens().await? {
            out.push(self.view_of(&t).await?);
        }
        Ok(out)
    }

    pub async fn show(&self, name: &str) -> Result<AbmTokenView> {
        let t = self.token(name).await?;
        self.view_of(&t).await
    }

    /// Forgets the token and its devices (ABM keeps its side; delete the server there too).
    pub async fn remove(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require_write()?;
        Ok(self
            .lanyard
            .store()
            .delete_abm_token(
                name,
                &Audit::new(&actor.name, "server_token.delete", name, json!({})),
            )
            .await?)
    }

    async fn default_token(&self) -> Result<AbmToken> {
        self.lanyard
            .store()
            .default_abm_token()
            .await?
            .ok_or_else(|| {
                CoreError::Invalid(
                    "no default token for account-driven enrollment: `lanyard abm set-default \
                     NAME`"
                        .into(),
                )
            })
    }

    /// Registers Lanyard's service-discovery URL at ABM with the default token.
    pub async fn register_discovery(&self, actor: &Actor) -> Result<DiscoveryStatus> {
        actor.require_write()?;
        let url = self.settings.discovery_url.clone().ok_or_else(|| {
            CoreError::Invalid(
                "no public URL is configured (--public-url), so there is no discovery URL to \
                 register"
                    .into(),
            )
        })?;
        let t = self.default_token().await?;
        let client = self.client(self.open_secrets(&t)?)?;
        client.assign_discovery(&url).await.map_err(upstream)?;
        let row = self
            .lanyard
            .store()
            .record_discovery(
                &t.name,
                Some(&url),
                &Audit::new(
                    &actor.name,
                    "server_token.discovery_register",
                    &t.name,
                    json!({"mdm_service_discovery_url": url}),
                ),
            )
            .await?;
        Ok(DiscoveryStatus {
            token: row.name,
            recorded_url: row.discovery_url,
            recorded_at: row.discovery_registered_at,
            abm_url: Some(url),
            abm_last_updated: None,
        })
    }

    /// What is registered, as recorded and as ABM reports it now.
    pub async fn discovery(&self) -> Result<DiscoveryStatus> {
        let t = self.default_token().await?;
        let client = self.client(self.open_secrets(&t)?)?;
        let at_abm: Option<DiscoveryProfile> = client.discovery().await.map_err(upstream)?;
        Ok(DiscoveryStatus {
            token: t.name,
            recorded_url: t.discovery_url,
            recorded_at: t.discovery_registered_at,
            abm_url: at_abm.as_ref().map(|p| p.mdm_service_discovery_url.clone()),
            abm_last_updated: at_abm.and_then(|p| p.last_updated_timestamp),
        })
    }

    /// Removes the registration at ABM and forgets it.
    pub async fn unregister_discovery(&self, actor: &Actor) -> Result<DiscoveryStatus> {
        actor.require_write()?;
        let t = self.default_token().await?;
        let client = self.client(self.open_secrets(&t)?)?;
        client.remove_discovery().await.map_err(upstream)?;
        let row = self
            .lanyard
            .store()
            .record_discovery(
                &t.name,
                None,
                &Audit::new(
                    &actor.name,
                    "server_token.discovery_remove",
                    &t.name,
                    json!({}),
                ),
            )
            .await?;
        Ok(DiscoveryStatus {
            token: row.name,
            recorded_url: None,
            recorded_at: None,
            abm_url: None,
            abm_last_updated: None,
        })
    }

    /// Syncs one token's devices now. Refused while another process holds its lease.
    pub async fn sync(&self, actor: &Actor, name: &str) -> Result<SyncReport> {
        let (client, t) = self.begin_sync(actor, name).await?;
        self.finish(actor, &client, &t).await
    }

    /// Takes the lease and starts the sync in a background task; returns at once. Its progress
    /// is [`AbmService::progress`]. Refused (`Conflict`) while a sync of the token is running.
    pub async fn start_sync(&self, actor: &Actor, name: &str) -> Result<SyncProgress> {
        let (client, t) = self.begin_sync(actor, name).await?;
        let started = self.progress(name).ok_or_else(|| {
            CoreError::Internal(format!("no progress recorded for the sync of `{name}`"))
        })?;
        let svc = self.clone();
        let actor = actor.clone();
        tokio::spawn(async move {
            match svc.finish(&actor, &client, &t).await {
                Ok(r) => tracing::info!(token = %t.name, pages = r.pages,
                    devices = r.devices_total, "ABM sync done"),
                Err(e) => tracing::warn!(token = %t.name, error = %e.chain(), "ABM sync failed"),
            }
        });
        Ok(started)
    }

    /// The progress of this process's latest sync of the token, if it ran one.
    pub fn progress(&self, name: &str) -> Option<SyncProgress> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn set_progress(&self, name: &str, f: impl FnOnce(&mut SyncProgress)) {
        let mut map = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get_mut(name) {
            f(p);
        }
    }

    /// Checks the role, opens the secrets and takes the lease; records a fresh progress entry.
    async fn begin_sync(&self, actor: &Actor, name: &str) -> Result<(AbmClient, AbmToken)> {
        actor.require_write()?;
        let store = self.lanyard.store();
        let t = self.token(name).await?;
        let creds = self.open_secrets(&t)?;
        let client = self.client(creds)?;
        let now = lanyard_store::now();
        let fresh = SyncProgress {
            name: name.to_string(),
            state: "running".into(),
            pages: 0,
            devices_seen: 0,
            devices_stored: 0,
            started_at: now,
            finished_at: None,
            error: None,
            report: None,
        };
        let running = || CoreError::Conflict(format!("a sync of `{name}` is already running"));
        // The lease is re-entrant for this process, so a sync running here is refused here.
        let previous = {
            let mut map = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(name).is_some_and(SyncProgress::running) {
                return Err(running());
            }
            map.insert(name.to_string(), fresh)
        };
        let leased = store
            .take_sync_lease(name, &self.owner, now + self.lease(), now)
            .await;
        match leased {
            Ok(Some(t)) => Ok((client, t)),
            other => {
                let mut map = self.progress.lock().unwrap_or_else(|p| p.into_inner());
                match previous {
                    Some(p) => map.insert(name.to_string(), p),
                    None => map.remove(name),
                };
                Err(match other {
                    Err(e) => e.into(),
                    _ => running(),
                })
            }
        }
    }

    /// Runs the sync under the lease taken by `begin_sync`, then records its result.
    async fn finish(&self, actor: &Actor, client: &AbmClient, t: &AbmToken) -> Result<SyncReport> {
        let store = self.lanyard.store();
        let name = t.name.as_str();
        let mut outcome = self.run_sync(client, t).await;
        let status = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        let detail = match &outcome {
            Ok(r) => json!({"pages": r.pages, "devices_seen": r.devices_seen,
                "full_fetch": r.full_fetch}),
            Err(e) => json!({"error": e.to_string()}),
        };
        let finished = store
            .finish_sync(
                name,
                &self.owner,
                &status,
                lanyard_store::now(),
                &Audit::new(&actor.name, "server_token.sync", name, detail),
            )
            .await;
        if let Err(e) = finished {
            outcome = outcome.and(Err(e.into()));
        }
        if let Ok(r) = &mut outcome {
            match store.count_abm_devices(name).await {
                Ok(n) => r.devices_total = n,
                Err(e) => outcome = Err(e.into()),
            }
        }
        let at = lanyard_store::now();
        self.set_progress(name, |p| {
            p.finished_at = Some(at);
            match &outcome {
                Ok(r) => {
                    p.state = "done".into();
                    p.report = Some(r.clone());
                }
                Err(e) => {
                    p.state = "failed".into();
                    p.error = Some(e.to_string());
                }
            }
        });
        outcome
    }

    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.lease)
            .unwrap_or_else(|_| chrono::Duration::minutes(15))
    }

    async fn run_sync(&self, client: &AbmClient, t: &AbmToken) -> Result<SyncReport> {
        let store = self.lanyard.store();
        let limit = self.settings.page_size.clamp(1, 1000);
        let mut report = SyncReport {
            name: t.name.clone(),
            ..Default::default()
        };
        // `None`: start a full fetch; `fetch:C`: continue one; `sync:C`: incremental.
        let mut state = t.sync_cursor.clone();
        report.full_fetch = !state.as_deref().is_some_and(|s| s.starts_with("sync:"));
        loop {
            if report.pages >= MAX_PAGES {
                return Err(CoreError::Upstream(format!(
                    "ABM kept sending pages after {MAX_PAGES}; stopped"
                )));
            }
            let (page, incremental) = match state.as_deref().and_then(|s| s.split_once(':')) {
                Some(("sync", c)) => match client.sync_devices(c, limit).await {
                    Err(AbmError::ExpiredCursor) => {
                        tracing::info!(token = %t.name, "sync cursor expired; fetching everything");
                        store.reset_sync_cursor(&t.name, &self.owner).await?;
                        state = None;
                        report.full_fetch = true;
                        continue;
                    }
                    other => (other.map_err(upstream)?, true),
                },
                Some(("fetch", c)) => (
                    client
                        .fetch_devices(Some(c), limit)
                        .await
                        .map_err(upstream)?,
                    false,
                ),
                _ => (
                    client.fetch_devices(None, limit).await.map_err(upstream)?,
                    false,
                ),
            };
            if page.cursor.is_empty() {
                return Err(CoreError::Upstream(
                    "ABM answered a device page without a cursor".into(),
                ));
            }
            let devices: Vec<AbmDevice> = page
                .devices
                .iter()
                .filter(|d| !d.serial_number.trim().is_empty())
                .map(|d| AbmDevice {
                    serial_number: d.serial_number.clone(),
                    model: d.model.clone().unwrap_or_default(),
                    description: d.description.clone().unwrap_or_default(),
                    os: d.os.clone().unwrap_or_default(),
                    color: d.color.clone().unwrap_or_default(),
                    profile_status: d.profile_status.clone().unwrap_or_else(|| "empty".into()),
                    profile_uuid: d.profile_uuid.clone(),
                    assigned_by: d.device_assigned_by.clone(),
                    assigned_date: d.device_assigned_date.clone(),
                    op_type: d.op_type.clone(),
                })
                .collect();
            let next = if incremental || !page.more_to_follow {
                format!("sync:{}", page.cursor)
            } else {
                format!("fetch:{}", page.cursor)
            };
            store
                .store_device_page(&t.name, &self.owner, &devices, &next, lanyard_store::now())
                .await?;
            report.pages += 1;
            report.devices_seen += devices.len() as u64;
            let (pages, seen, stored) = (report.pages, page.devices.len(), devices.len());
            self.set_progress(&t.name, |p| {
                p.pages = pages;
                p.devices_seen += seen as u64;
                p.devices_stored += stored as u64;
            });
            // Keep the lease alive for long syncs (a lost lease is refused by the store).
            let now = lanyard_store::now();
            store
                .take_sync_lease(&t.name, &self.owner, now + self.lease(), now)
                .await?
                .ok_or_else(|| {
                    CoreError::Conflict(format!(
                        "another process took over the sync of `{}`",
                        t.name
                    ))
                })?;
            state = Some(next);
            if !page.more_to_follow {
                return Ok(report);
            }
        }
    }

    pub async fn devices(&self, name: &str, offset: i64, limit: i64) -> Result<Vec<AbmDevice>> {
        self.token(name).await?;
        Ok(self
            .lanyard
            .store()
            .list_abm_devices(name, offset.max(0), limit.clamp(1, 1000))
            .await?)
    }

    /// Syncs every uploaded, unexpired token; errors are logged, not returned.
    pub async fn sync_all(&self) {
        let tokens = match self.lanyard.store().list_abm_tokens().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "ABM sync: cannot list tokens");
                return;
            }
        };
        for t in tokens {
            let live = t.secrets_sealed.is_some()
                && t.token_expires_at.is_none_or(|e| e > lanyard_store::now());
            if !live {
                continue;
            }
            match self.sync(&Actor::system(), &t.name).await {
                Ok(r) => tracing::info!(token = %t.name, pages = r.pages,
                    devices = r.devices_total, "ABM sync done"),
                Err(CoreError::Conflict(m)) => tracing::debug!(token = %t.name, "{m}"),
                Err(e) => tracing::warn!(token = %t.name, error = %e.chain(), "ABM sync failed"),
            }
        }
    }

    /// Starts the periodic sync job on the current runtime.
    pub fn start_sync_job(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let svc = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_secs(60)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                svc.sync_all().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        validate_name("Main ABM").unwrap();
        validate_name("abm-2026_a.b").unwrap();
        for bad in ["", " x", "x ", "a/b", "ü", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
