//! The APNs HTTP/2 client: one TLS connection with the push certificate as client
//! certificate, shared by every push as concurrent streams, replaced when it drops.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode, Uri};
use lanyard_proto::{SecretBytes, SecretString};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use super::backoff::backoff;
use super::cert::PushCertificate;
use super::error::ApnsError;

/// Apple's production APNs endpoint.
pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
/// Apple's development ("sandbox") APNs endpoint.
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
/// How long APNs keeps trying to deliver a push to an offline device (`apns-expiration`).
pub const DEFAULT_EXPIRATION: Duration = Duration::from_secs(86_400);

/// After a failed connection attempt, pushes fail at once with the same error for this long
/// instead of each trying again (a dead APNs must not cost every queued push a timeout).
const CONNECT_FAILURE_HOLD: Duration = Duration::from_millis(500);
/// Streams opened on a new connection before the server states its limit.
const INITIAL_MAX_STREAMS: usize = 100;
/// Error bodies are small JSON; more than this is not read.
const MAX_BODY: usize = 8 * 1024;

/// Settings of an [`ApnsClient`].
#[derive(Debug, Clone)]
pub struct ApnsOptions {
    /// Longest time one push may take, (re)connecting included. Waiting for a free stream
    /// (see `max_concurrent_streams`) does not count.
    pub timeout: Duration,
    /// Most pushes in flight at once on the connection. APNs advertises its own limit (the
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`, 1000 today), which is honoured as well.
    pub max_concurrent_streams: usize,
    /// More trusted roots, PEM (one or more certificates), added to the operating system's
    /// store: for a test server. Apple's servers need none.
    pub extra_root_ca_pem: Option<Vec<u8>>,
}

impl Default for ApnsOptions {
    fn default() -> Self {
        ApnsOptions {
            timeout: Duration::from_secs(15),
            max_concurrent_streams: 500,
            extra_root_ca_pem: None,
        }
    }
}

/// What APNs said about one push, and so what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// 200: APNs accepted the push. `apns_id` is APNs's id for it (the one we sent, echoed).
    Delivered {
        /// The `apns-id` response header.
        apns_id: String,
    },
    /// 410 (`Unregistered`, `ExpiredToken`): the token is no longer valid for this topic.
    /// Forget it, unless the device sent a newer `TokenUpdate` after `timestamp_ms`.
    Unregistered {
        /// When APNs last knew the token valid, milliseconds since the epoch (if it said).
        timestamp_ms: Option<i64>,
    },
    /// 400 `BadDeviceToken` or `DeviceTokenNotForTopic` (or an empty token, refused before
    /// sending): this token will never work with this push certificate. Do not retry.
    BadToken {
        /// APNs's reason.
        reason: String,
    },
    /// 429 `TooManyRequests`: too many pushes to this device. Retry later, no sooner than
    /// `retry_after` when APNs said (see [`PushOutcome::retry_delay`]).
    RateLimited {
        /// The `retry-after` header, when present.
        retry_after: Option<Duration>,
    },
    /// 5xx (`InternalServerError`, `ServiceUnavailable`, `Shutdown`): APNs's trouble. Retry
    /// with back-off.
    ServerError {
        /// HTTP status.
        status: u16,
        /// APNs's reason.
        reason: String,
    },
    /// 403 (`BadCertificate`, `BadCertificateEnvironment`, `Forbidden`, …), 400
    /// `TopicDisallowed`/`BadTopic`/`MissingTopic`, or a TLS alert refusing the client
    /// certificate: the push certificate is wrong, revoked, expired or for the other
    /// environment. Every push fails until an operator fixes it; do not retry.
    Certificate {
        /// APNs's reason, or the TLS alert.
        reason: String,
    },
    /// Any other refusal (400 `BadPriority`/`PayloadEmpty`/…, 404, 405, 413): a bug in the
    /// request. Do not retry.
    Rejected {
        /// HTTP status.
        status: u16,
        /// APNs's reason.
        reason: String,
    },
    /// No answer: connection refused or dropped, TLS failure, timeout. Retry with back-off.
    Transport(String),
}

impl PushOutcome {
    /// True for [`PushOutcome::Delivered`].
    pub fn is_delivered(&self) -> bool {
        matches!(self, PushOutcome::Delivered { .. })
    }

    /// True when trying again later may succeed: rate limits, APNs errors, transport.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PushOutcome::RateLimited { .. }
                | PushOutcome::ServerError { .. }
                | PushOutcome::Transport(_)
        )
    }

    /// True when the token should be dropped (it cannot be pushed to any more).
    pub fn token_is_dead(&self) -> bool {
        matches!(
            self,
            PushOutcome::Unregistered { .. } | PushOutcome::BadToken { .. }
        )
    }

    /// How long to wait before retry number `attempt` (0 = first retry), or `None` when the
    /// outcome is not retryable: [`backoff`], but never less than APNs's `retry-after`.
    pub fn retry_delay(&self, attempt: u32) -> Option<Duration> {
        match self {
            PushOutcome::RateLimited {
                retry_after: Some(after),
            } => Some(backoff(attempt).max(*after)),
            o if o.is_retryable() => Some(backoff(attempt)),
            _ => None,
        }
    }
}

/// One push of [`ApnsClient::push_many`]: a device's push token and `PushMagic`, both
/// secret (`Debug` shows neither).
#[derive(Debug, Clone)]
pub struct PushTarget {
    /// The push token from `TokenUpdate` (raw bytes, not hex).
    pub token: SecretBytes,
    /// The `PushMagic` from `TokenUpdate`.
    pub push_magic: SecretString,
}

impl PushTarget {
    /// A target from a raw token and its `PushMagic`.
    pub fn new(token: impl Into<Vec<u8>>, push_magic: impl Into<String>) -> PushTarget {
        PushTarget {
            token: SecretBytes::new(token.into()),
            push_magic: SecretString::new(push_magic),
        }
    }
}

/// The APNs client. Cheap to clone (clones share the connection); build one per push
/// certificate and keep it for the life of the process.
#[derive(Clone)]
pub struct ApnsClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    topic: String,
    timeout: Duration,
    streams: Semaphore,
    slot: Mutex<Slot>,
    connections_opened: AtomicU64,
}

#[derive(Default)]
struct Slot {
    current: Option<Conn>,
    last_failure: Option<(Instant, ConnectFailure)>,
}

/// The current connection. Forgetting it does not close it: the pushes still in flight on
/// it finish, and h2 closes it once the last of them drops its handle.
struct Conn {
    id: u64,
    send: SendRequest<Bytes>,
    alive: Arc<AtomicBool>,
}

/// Why a connection could not be had.
#[derive(Debug, Clone)]
enum ConnectFailure {
    /// The server refused our client certificate (a TLS alert).
    Certificate(String),
    /// Anything else.
    Transport(String),
}

impl ConnectFailure {
    fn into_outcome(self) -> PushOutcome {
        match self {
            ConnectFailure::Certificate(reason) => PushOutcome::Certificate { reason },
            ConnectFailure::Transport(msg) => PushOutcome::Transport(msg),
        }
    }
}

/// A failed attempt to send one request on a connection.
struct Failure {
    outcome: PushOutcome,
    /// The connection is unusable: drop it.
    connection_broken: bool,
    /// Sending again on a (new) connection may succeed.
    retry: bool,
}

impl fmt::Debug for ApnsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsClient")
            .field("base", &self.inner.base)
            .field("topic", &self.inner.topic)
            .field(
                "connections_opened",
                &self.inner.connections_opened.load(Ordering::Relaxed),
            )
            .finish()
    }
}

fn parse_base(base: &str) -> Result<(String, String, u16), ApnsError> {
    let bad = |reason: &str| ApnsError::BaseUrl {
        url: base.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = base
        .trim_end_matches('/')
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("APNs is only reached over https"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("give only scheme, host and port (no path or query)"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(443);
    Ok((authority.as_str().to_string(), host, port))
}

fn root_store(extra_pem: Option<&[u8]>) -> Result<RootCertStore, ApnsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApnsError::Tls(format!("extra root CA PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ApnsError::Tls(
                "extra root CA PEM holds no certificate".into(),
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| ApnsError::Tls(format!("extra root CA: {e}")))?;
        }
    }
    if roots.is_empty() {
        let why = native
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(ApnsError::Tls(format!(
            "no trusted root certificates: install the system CA bundle (ca-certificates){why}"
        )));
    }
    Ok(roots)
}

fn tls_config(cert: &PushCertificate, extra_pem: Option<&[u8]>) -> Result<ClientConfig, ApnsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = root_store(extra_pem)?;
    let chain = cert.chain_der();
    let key = cert.key_der();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApnsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| ApnsError::Tls(format!("push certificate or key unusable for TLS: {e}")))?;
    // APNs speaks HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// TLS alerts by which a server refuses a client certificate.
const CERTIFICATE_ALERTS: [rustls::AlertDescription; 8] = [
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::CertificateRevoked,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::AccessDenied,
    rustls::AlertDescription::CertificateRequired,
];

/// A TLS alert from the server that refuses our client certificate, found inside an I/O
/// error from the TLS stream. With TLS 1.3 the alert comes after the client finished its
/// handshake, so it surfaces on the first read, through h2, which keeps only the error's
/// text: match that too (rustls words it "received fatal alert: <Alert>").
fn certificate_alert(err: &io::Error) -> Option<String> {
    let alert = match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => {
            CERTIFICATE_ALERTS.iter().find(|a| *a == alert).copied()
        }
        Some(_) => None,
        None => {
            let text = err.to_string();
            CERTIFICATE_ALERTS
                .iter()
                .find(|a| text.contains(&format!("received fatal alert: {a:?}")))
                .copied()
        }
    };
    alert.map(|a| format!("APNs refused the push certificate: TLS alert {a:?}"))
}

fn h2_failure(e: &h2::Error, stage: &str) -> Failure {
    if let Some(reason) = e.get_io().and_then(certificate_alert) {
        return Failure {
            outcome: PushOutcome::Certificate { reason },
            connection_broken: true,
            retry: false,
        };
    }
    // The server resetting this one stream (REFUSED_STREAM: "not processed, send it again")
    // leaves the connection usable; anything else (I/O, GOAWAY, a closed connection) does not.
    let stream_only = e.is_reset() && e.is_remote() && !e.is_go_away();
    Failure {
        outcome: PushOutcome::Transport(format!("APNs connection: {stage}: {e}")),
        connection_broken: !stream_only,
        // A push is a wake-up: sending it twice is harmless, losing it is not.
        retry: true,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Map an APNs answer to an outcome.
fn outcome_of(
    status: StatusCode,
    apns_id: Option<String>,
    sent_id: &str,
    retry_after: Option<Duration>,
    body: &[u8],
) -> PushOutcome {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let reason = json
        .as_ref()
        .and_then(|j| j.get("reason"))
        .and_then(|r| r.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
    let timestamp_ms = json
        .as_ref()
        .and_then(|j| j.get("timestamp"))
        .and_then(|t| t.as_i64());
    let code = status.as_u16();
    match code {
        200 => PushOutcome::Delivered {
            apns_id: apns_id.unwrap_or_else(|| sent_id.to_string()),
        },
        410 => PushOutcome::Unregistered { timestamp_ms },
        400 if matches!(reason.as_str(), "BadDeviceToken" | "DeviceTokenNotForTopic") => {
            PushOutcome::BadToken { reason }
        }
        400 if matches!(
            reason.as_str(),
            "TopicDisallowed" | "BadTopic" | "MissingTopic"
        ) =>
        {
            PushOutcome::Certificate { reason }
        }
        403 => PushOutcome::Certificate { reason },
        429 => PushOutcome::RateLimited { retry_after },
        500..=599 => PushOutcome::ServerError {
            status: code,
            reason,
        },
        _ => PushOutcome::Rejected {
            status: code,
            reason,
        },
    }
}

impl ApnsClient {
    /// A client for the APNs server at `base_url` ([`PRODUCTION_URL`], [`SANDBOX_URL`], or a
    /// test server), authenticating with `cert`. Nothing is connected yet: the first push
    /// opens the connection.
    pub fn new(
        base_url: &str,
        cert: &PushCertificate,
        options: ApnsOptions,
    ) -> Result<ApnsClient, ApnsError> {
        let (authority, host, port) = parse_base(base_url)?;
        let server_name = ServerName::try_from(host.clone()).map_err(|e| ApnsError::BaseUrl {
            url: base_url.to_string(),
            reason: e.to_string(),
        })?;
        let config = tls_config(cert, options.extra_root_ca_pem.as_deref())?;
        let streams = options
            .max_concurrent_streams
            .clamp(1, Semaphore::MAX_PERMITS);
        Ok(ApnsClient {
            inner: Arc::new(Inner {
                base: base_url.trim_end_matches('/').to_string(),
                authority,
                host,
                port,
                server_name,
                tls: TlsConnector::from(Arc::new(config)),
                topic: cert.topic().to_string(),
                timeout: options.timeout,
                streams: Semaphore::new(streams),
                slot: Mutex::new(Slot::default()),
                connections_opened: AtomicU64::new(0),
            }),
        })
    }

    /// The topic every push is sent to (the push certificate's).
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// How many TLS connections this client has opened so far (1 while the first one holds).
    pub fn connections_opened(&self) -> u64 {
        self.inner.connections_opened.load(Ordering::Relaxed)
    }

    /// Wake one device: `POST /3/device/<hex token>` with `{"mdm":"<push_magic>"}`.
    /// Never fails: every problem is a [`PushOutcome`]. A push whose connection dropped
    /// before APNs answered is sent once more on a new connection.
    pub async fn push(&self, token: &[u8], push_magic: &str) -> PushOutcome {
        if token.is_empty() {
            return PushOutcome::BadToken {
                reason: "EmptyToken".into(),
            };
        }
        let Ok(_permit) = self.inner.streams.acquire().await else {
            return PushOutcome::Transport("APNs client is closed".into());
        };
        let apns_id = uuid::Uuid::new_v4().to_string();
        let outcome = match tokio::time::timeout(
            self.inner.timeout,
            self.inner.push_with_retry(token, push_magic, &apns_id),
        )
        .await
        {
            Ok(o) => o,
            Err(_) => PushOutcome::Transport(format!(
                "no answer from APNs within {:?}",
                self.inner.timeout
            )),
        };
        // Log the outcome by apns-id only: the token and PushMagic are secrets.
        match &outcome {
            PushOutcome::Delivered { apns_id } => {
                tracing::debug!(%apns_id, "APNs accepted the push")
            }
            PushOutcome::Certificate { reason } => {
                tracing::warn!(%apns_id, %reason, "APNs refused the push certificate")
            }
            other => tracing::info!(%apns_id, outcome = ?other, "APNs push not delivered"),
        }
        outcome
    }

    /// [`ApnsClient::push`] for many devices at once, as concurrent streams on the one
    /// connection (at most `max_concurrent_streams` in flight). The outcomes are in the
    /// order of `targets`.
    pub async fn push_many(&self, targets: &[PushTarget]) -> Vec<PushOutcome> {
        let mut set = JoinSet::new();
        for (i, target) in targets.iter().enumerate() {
            let client = self.clone();
            let target = target.clone();
            set.spawn(async move {
                let outcome = client
                    .push(target.token.expose(), target.push_magic.expose())
                    .await;
                (i, outcome)
            });
        }
        let mut out: Vec<Option<PushOutcome>> = (0..targets.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            if let Ok((i, outcome)) = joined {
                if let Some(place) = out.get_mut(i) {
                    *place = Some(outcome);
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| PushOutcome::Transport("push task failed".into())))
            .collect()
    }
}

impl Inner {
    async fn push_with_retry(&self, token: &[u8], push_magic: &str, apns_id: &str) -> PushOutcome {
        let mut last = PushOutcome::Transport("not sent".into());
        for attempt in 0..2 {
            let (conn_id, send) = match self.sender().await {
                Ok(s) => s,
                Err(failure) => return failure.into_outcome(),
            };
            match self.send_once(send, token, push_magic, apns_id).await {
                Ok(outcome) => return outcome,
                Err(failure) => {
                    if failure.connection_broken {
                        self.discard(conn_id).await;
                    }
                    if !failure.retry || attempt > 0 {
                        return failure.outcome;
                    }
                    tracing::debug!(%apns_id, "APNs connection failed mid-push; sending again on a new one");
                    last = failure.outcome;
                }
            }
        }
        last
    }

    /// The live connection's sender, connecting first when there is none. Callers queue on
    /// the slot lock while one of them connects, so there is only ever one connection.
    async fn sender(&self) -> Result<(u64, SendRequest<Bytes>), ConnectFailure> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = &slot.current {
            if conn.alive.load(Ordering::SeqCst) {
                return Ok((conn.id, conn.send.clone()));
            }
        }
        slot.current = None;
        if let Some((at, failure)) = &slot.last_failure {
            if at.elapsed() < CONNECT_FAILURE_HOLD {
                return Err(failure.clone());
            }
        }
        match self.connect().await {
            Ok(conn) => {
                let out = (conn.id, conn.send.clone());
                slot.current = Some(conn);
                slot.last_failure = None;
                Ok(out)
            }
            Err(failure) => {
                tracing::warn!(base = %self.base, error = ?failure, "cannot connect to APNs");
                slot.last_failure = Some((Instant::now(), failure.clone()));
                Err(failure)
            }
        }
    }

    /// Forget connection `id` if it is still the current one.
    async fn discard(&self, id: u64) {
        let mut slot = self.slot.lock().await;
        if slot.current.as_ref().is_some_and(|c| c.id == id) {
            slot.current = None;
        }
    }

    async fn connect(&self) -> Result<Conn, ConnectFailure> {
        let transport = |what: &str, e: &dyn fmt::Display| {
            ConnectFailure::Transport(format!("{what} APNs at {}:{}: {e}", self.host, self.port))
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transport("cannot connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| match certificate_alert(&e) {
                Some(reason) => ConnectFailure::Certificate(reason),
                None => transport("TLS handshake with", &e),
            })?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
            return Err(ConnectFailure::Transport(format!(
                "APNs at {}:{} did not agree to HTTP/2 (ALPN h2)",
                self.host, self.port
            )));
        }
        let (send, connection) = h2::client::Builder::new()
            // Until the server's SETTINGS arrive, open no more streams than RFC 9113
            // recommends every server allow (100), so a burst at connect is not refused.
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| transport("HTTP/2 handshake with", &e))?;
        let id = self.connections_opened.fetch_add(1, Ordering::Relaxed) + 1;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&alive);
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::debug!(connection = id, "APNs connection closed"),
                Err(e) => tracing::debug!(connection = id, error = %e, "APNs connection ended"),
            }
            flag.store(false, Ordering::SeqCst);
        });
        tracing::debug!(connection = id, base = %self.base, "APNs connection open");
        Ok(Conn { id, send, alive })
    }

    async fn send_once(
        &self,
        send: SendRequest<Bytes>,
        token: &[u8],
        push_magic: &str,
        apns_id: &str,
    ) -> Result<PushOutcome, Failure> {
        let uri = format!("https://{}/3/device/{}", self.authority, hex::encode(token));
        let expiration = unix_now() + DEFAULT_EXPIRATION.as_secs();
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("apns-id", apns_id)
            .header("apns-topic", self.topic.as_str())
            // `mdm` is one of the push types in Apple's "Sending notification requests to
            // APNs" ("notifications that tell managed devices to contact the MDM server";
            // the topic must then be the UID of the push certificate's subject). Apple
            // requires apns-push-type only on watchOS and recommends it elsewhere; MDM
            // servers that omit it (nanomdm sends neither it nor apns-topic) still reach
            // macOS, so it is not required for MDM, but we send what Apple recommends.
            .header("apns-push-type", "mdm")
            .header("apns-priority", "10")
            .header("apns-expiration", expiration.to_string())
            .header("content-type", "application/json")
            .body(())
            .map_err(|e| Failure {
                outcome: PushOutcome::Rejected {
                    status: 0,
                    reason: format!("cannot build the request: {e}"),
                },
                connection_broken: false,
                retry: false,
            })?;
        let body = Bytes::from(serde_json::json!({ "mdm": push_magic }).to_string());

        let mut send = send
            .ready()
            .await
            .map_err(|e| h2_failure(&e, "not ready"))?;
        let (response, mut stream) = send
            .send_request(request, false)
            .map_err(|e| h2_failure(&e, "sending headers"))?;
        stream
            .send_data(body, true)
            .map_err(|e| h2_failure(&e, "sending body"))?;
        let response = response
            .await
            .map_err(|e| h2_failure(&e, "awaiting the answer"))?;

        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let answered_id = header("apns-id");
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut recv = response.into_body();
        let mut buf = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The status is known: a broken body only loses the reason.
                Err(_) => break,
            };
            let _ = recv.flow_control().release_capacity(chunk.len());
            if buf.len() < MAX_BODY {
                buf.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY - buf.len())]);
            }
        }
        Ok(outcome_of(status, answered_id, apns_id, retry_after, &buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(status: u16, body: &str) -> PushOutcome {
        outcome_of(
            StatusCode::from_u16(status).unwrap(),
            None,
            "sent-id",
            None,
            body.as_bytes(),
        )
    }

    #[test]
    fn maps_apns_answers() {
        assert_eq!(
            o(200, ""),
            PushOutcome::Delivered {
                apns_id: "sent-id".into()
            }
        );
        assert_eq!(
            o(
                410,
                r#"{"reason":"Unregistered","timestamp":1700000000000}"#
            ),
            PushOutcome::Unregistered {
                timestamp_ms: Some(1_700_000_000_000)
            }
        );
        assert_eq!(
            o(410, r#"{"reason":"ExpiredToken"}"#),
            PushOutcome::Unregistered { timestamp_ms: None }
        );
        assert_eq!(
            o(400, r#"{"reason":"BadDeviceToken"}"#),
            PushOutcome::BadToken {
                reason: "BadDeviceToken".into()
            }
        );
        assert_eq!(
            o(400, r#"{"reason":"DeviceTokenNotForTopic"}"#),
            PushOutcome::BadToken {
                reason: "DeviceTokenNotForTopic".into()
            }
        );
        assert_eq!(
            o(400, r#"{"reason":"TopicDisallowed"}"#),
            PushOutcome::Certificate {
                reason: "TopicDisallowed".into()
            }
        );
        assert_eq!(
            o(400, r#"{"reason":"BadPriority"}"#),
            PushOutcome::Rejected {
                status: 400,
                reason: "BadPriority".into()
            }
        );
        assert_eq!(
            o(403, r#"{"reason":"BadCertificateEnvironment"}"#),
            PushOutcome::Certificate {
                reason: "BadCertificateEnvironment".into()
            }
        );
        assert_eq!(
            o(429, r#"{"reason":"TooManyRequests"}"#),
            PushOutcome::RateLimited { retry_after: None }
        );
        assert_eq!(
            o(503, r#"{"reason":"ServiceUnavailable"}"#),
            PushOutcome::ServerError {
                status: 503,
                reason: "ServiceUnavailable".into()
            }
        );
        assert_eq!(
            o(500, "not json"),
            PushOutcome::ServerError {
                status: 500,
                reason: "Internal Server Error".into()
            }
        );
    }

    #[test]
    fn retry_advice() {
        let limited = PushOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        };
        assert!(limited.is_retryable());
        assert!(limited.retry_delay(0).unwrap() >= Duration::from_secs(30));
        assert!(PushOutcome::Transport("x".into()).retry_delay(2).is_some());
        assert!(PushOutcome::Unregistered { timestamp_ms: None }
            .retry_delay(0)
            .is_none());
        assert!(PushOutcome::Unregistered { timestamp_ms: None }.token_is_dead());
        assert!(!PushOutcome::Certificate { reason: "x".into() }.is_retryable());
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base(PRODUCTION_URL).unwrap(),
            (
                "api.push.apple.com".into(),
                "api.push.apple.com".into(),
                443
            )
        );
        assert_eq!(
            parse_base("https://127.0.0.1:8443/").unwrap(),
            ("127.0.0.1:8443".into(), "127.0.0.1".into(), 8443)
        );
        assert_eq!(parse_base("https://[::1]:9").unwrap().1, "::1");
        assert!(parse_base("http://api.push.apple.com").is_err());
        assert!(parse_base("https://api.push.apple.com/3/device").is_err());
        assert!(parse_base("not a url").is_err());
    }

    #[test]
    fn push_target_debug_hides_secrets() {
        let t = PushTarget::new(vec![0xab; 32], "MAGIC-VALUE");
        let s = format!("{t:?}");
        assert!(!s.contains("abab"), "{s}");
        assert!(!s.contains("MAGIC-VALUE"), "{s}");
    }
}
