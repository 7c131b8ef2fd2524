//! A fake Apple Push Notification service (APNs) for MDM pushes, on loopback.
//!
//! It speaks what Apple's does, as far as an MDM server can see: HTTP/2 over TLS (ALPN
//! `h2`), a **required** TLS client certificate (the MDM push certificate), and
//! `POST /3/device/<hex token>` with `apns-topic`, `apns-push-type: mdm` and the body
//! `{"mdm":"<PushMagic>"}`. It answers:
//! - `200` with an `apns-id` header (the request's own `apns-id` echoed, else a new UUID) and
//!   **no body** — clients such as aioapns match answers by `apns-id`, so it must be echoed;
//! - errors as JSON `{"reason": "…"}` (410 adds `timestamp`), also with `apns-id`:
//!   400 `BadDeviceToken`, `TopicDisallowed` (topic ≠ the certificate's UID), `MissingTopic`,
//!   `InvalidPushType`, `BadPriority`, `BadExpirationDate`, `BadMessageId`, `PayloadEmpty`,
//!   `BadPayload` (not `{"mdm": string}`; fake-specific), `DeviceTokenNotForTopic`
//!   ([`FakeApns::set_token_topic`]); 403 `BadCertificate` (no UID, or an expired
//!   certificate when any certificate is accepted); 404 `BadPath`; 405 `MethodNotAllowed`;
//!   410 `Unregistered` ([`FakeApns::set_unregistered`]); 413 `PayloadTooLarge`; and
//!   whatever [`FakeApns::inject`] asks for (429 `TooManyRequests`, 500, 503, …).
//!
//! Accepted pushes are recorded ([`FakeApns::pushes`]) and sent to subscribers
//! ([`FakeApns::subscribe`]), so a test harness can wake the simulated Mac that owns the token.
//! [`fake_push_certificate`] makes an MDM push certificate (subject `UID=<topic>,
//! CN=APSP:<uuid>, C=US`, issued by a process-wide fake "Apple" CA) as PEM and PKCS#12.
//!
//! What it does not do: provider-token (JWT) authentication, payload limits of other push
//! types, the `apns-collapse-id` header, real delivery semantics (storing, coalescing).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use lanyard_pki::Ca;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::X509;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::fake_pushcert::{apsp_subject, now_unix, start_cert};

/// Apple's limit for a regular push payload.
const MAX_PAYLOAD: usize = 4096;

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeApnsOptions {
    /// Verify that the client certificate chains to this CA (PEM), as TLS does with Apple's
    /// own. `None`: accept any client certificate (one is still required) and only record it.
    pub client_ca_pem: Option<Vec<u8>>,
    /// The HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` advertised (Apple's is 1000).
    pub max_concurrent_streams: u32,
    /// Accept a push without `apns-topic` (the certificate's topic is used) or without
    /// `apns-push-type`, as Apple does for a single-topic certificate. Off by default, so a
    /// client that forgets them fails here first.
    pub lenient_headers: bool,
}

impl Default for FakeApnsOptions {
    fn default() -> Self {
        FakeApnsOptions {
            client_ca_pem: None,
            max_concurrent_streams: 1000,
            lenient_headers: false,
        }
    }
}

/// One push the fake accepted (answered 200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPush {
    /// The device token from the path, lower-case hex.
    pub token_hex: String,
    /// The topic pushed to (the `apns-topic` header; the certificate's when lenient and absent).
    pub topic: String,
    /// The `mdm` value of the body.
    pub push_magic: String,
    /// The `apns-id` answered.
    pub apns_id: String,
    /// Whether the client sent that `apns-id` itself.
    pub client_sent_apns_id: bool,
    /// The `apns-push-type` header.
    pub push_type: Option<String>,
    /// The `apns-priority` header.
    pub priority: Option<String>,
    /// The `apns-expiration` header.
    pub expiration: Option<String>,
    /// The subject of the client certificate (`SHORT=value, …`).
    pub client_subject: String,
    /// Which TLS connection carried it (1, 2, … in the order they were opened).
    pub connection: u64,
}

/// One push the fake refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedPush {
    /// The path's token (as sent), if the path had one.
    pub token_hex: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The `reason` answered.
    pub reason: String,
    /// The `apns-id` answered.
    pub apns_id: String,
}

struct Injection {
    remaining: usize,
    status: u16,
    reason: String,
    retry_after: Option<u64>,
}

struct State {
    options: FakeApnsOptions,
    pushes: Mutex<Vec<ReceivedPush>>,
    rejected: Mutex<Vec<RejectedPush>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<ReceivedPush>>>,
    unregistered: Mutex<HashMap<String, i64>>,
    token_topics: Mutex<HashMap<String, String>>,
    injections: Mutex<VecDeque<Injection>>,
    delay: Mutex<Duration>,
    connections: AtomicU64,
    open_connections: AtomicU64,
    handshake_failures: AtomicU64,
    requests: AtomicU64,
    kill: watch::Sender<u64>,
}

/// The client certificate of one connection, as the fake understood it.
struct ClientCert {
    topic: Option<String>,
    subject: String,
    valid_now: bool,
}

/// A running fake APNs. Dropping it stops the server and closes its connections.
pub struct FakeApns {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<State>,
    accept_task: JoinHandle<()>,
}

impl fmt::Debug for FakeApns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeApns")
            .field("addr", &self.addr)
            .field("connections", &self.connections())
            .field("pushes", &lock(&self.state.pushes).len())
            .finish()
    }
}

impl Drop for FakeApns {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.state.kill.send_modify(|g| *g += 1);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn token_key(token: &[u8]) -> String {
    hex::encode(token)
}

impl FakeApns {
    /// Start the fake on `127.0.0.1` at a free port, with a fresh TLS server certificate
    /// (from a fresh test CA: trust [`FakeApns::ca_pem`]).
    pub async fn start(options: FakeApnsOptions) -> anyhow::Result<FakeApns> {
        let ca = Ca::generate("Lanyard fake APNs CA", "Lanyard test")?;
        let leaf = ca.issue_tls_server(
            &["localhost".to_string()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )?;
        let key_der =
            PKey::private_key_from_pem(leaf.key_pem.as_bytes())?.private_key_to_pkcs8()?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ClientCertVerifier> = match &options.client_ca_pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in X509::stack_from_pem(pem).context("client CA PEM")? {
                    roots.add(CertificateDer::from(cert.to_der()?))?;
                }
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()?
            }
            None => Arc::new(AnyClientCert {
                algorithms: provider.signature_verification_algorithms,
            }),
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(leaf.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
            )?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (kill, _) = watch::channel(0u64);
        let state = Arc::new(State {
            options,
            pushes: Mutex::default(),
            rejected: Mutex::default(),
            subscribers: Mutex::default(),
            unregistered: Mutex::default(),
            token_topics: Mutex::default(),
            injections: Mutex::default(),
            delay: Mutex::new(Duration::ZERO),
            connections: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            kill,
        });
        let accept_state = Arc::clone(&state);
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&accept_state);
                tokio::spawn(serve_connection(acceptor, tcp, state));
            }
        });
        Ok(FakeApns {
            addr,
            ca_pem: ca.cert_pem()?,
            state,
            accept_task,
        })
    }

    /// The base URL to give an APNs client, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA that issued the fake's TLS certificate, PEM: trust it in the client.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Every push accepted so far, in arrival order.
    pub fn pushes(&self) -> Vec<ReceivedPush> {
        lock(&self.state.pushes).clone()
    }

    /// Every push refused so far, in arrival order.
    pub fn rejected(&self) -> Vec<RejectedPush> {
        lock(&self.state.rejected).clone()
    }

    /// A stream of the pushes accepted from now on (each subscriber gets every one).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<ReceivedPush> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.state.subscribers).push(tx);
        rx
    }

    /// From now on, pushes to `token` get `410 Unregistered` (with the current time as
    /// `timestamp`).
    pub fn set_unregistered(&self, token: &[u8]) {
        let ms = now_unix().saturating_mul(1000);
        lock(&self.state.unregistered).insert(token_key(token), ms);
    }

    /// Bind `token` to `topic`: a push to it under another topic gets
    /// `400 DeviceTokenNotForTopic` (the device enrolled with another push certificate).
    pub fn set_token_topic(&self, token: &[u8], topic: &str) {
        lock(&self.state.token_topics).insert(token_key(token), topic.to_string());
    }

    /// The next `n` well-formed pushes fail with `status` and `{"reason": reason}`.
    pub fn inject(&self, n: usize, status: u16, reason: &str) {
        self.inject_inner(n, status, reason, None);
    }

    /// Like [`FakeApns::inject`], with a `retry-after: <secs>` header on the answers.
    pub fn inject_with_retry_after(&self, n: usize, status: u16, reason: &str, secs: u64) {
        self.inject_inner(n, status, reason, Some(secs));
    }

    fn inject_inner(&self, n: usize, status: u16, reason: &str, retry_after: Option<u64>) {
        if n > 0 {
            lock(&self.state.injections).push_back(Injection {
                remaining: n,
                status,
                reason: reason.to_string(),
                retry_after,
            });
        }
    }

    /// Hold every answer this long (to test client time-outs). Zero turns it off.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Close every open connection at once, without a GOAWAY (as a network drop would).
    pub fn disconnect_all(&self) {
        self.state.kill.send_modify(|g| *g += 1);
    }

    /// TLS connections accepted so far (handshake completed with a client certificate).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TLS connections open right now (after [`FakeApns::disconnect_all`] this falls to 0
    /// once every connection is really closed).
    pub fn open_connections(&self) -> u64 {
        self.state.open_connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (no client certificate, untrusted one, …).
    pub fn handshake_failures(&self) -> u64 {
        self.state.handshake_failures.load(Ordering::SeqCst)
    }

    /// HTTP/2 requests received so far, accepted or not.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

async fn serve_connection(acceptor: TlsAcceptor, tcp: TcpStream, state: Arc<State>) {
    let mut kill = state.kill.subscribe();
    let tls = match acceptor.accept(tcp).into_fallible().await {
        Ok(tls) => tls,
        Err((_, mut tcp)) => {
            state.handshake_failures.fetch_add(1, Ordering::SeqCst);
            // The alert is sent. Close with a FIN and read what the client still sends (with
            // TLS 1.3 it sends HTTP/2 before it sees the alert): closing with unread data
            // would make the kernel answer with a reset, which can swallow the alert.
            let _ = tcp.shutdown().await;
            let mut sink = [0u8; 4096];
            let drain = async {
                while let Ok(n) = tcp.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
            return;
        }
    };
    let cert = Arc::new(client_cert(tls.get_ref().1.peer_certificates()));
    let id = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
    state.open_connections.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(Arc::clone(&state));
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(state.options.max_concurrent_streams)
        .handshake::<_, Bytes>(tls);
    let mut conn = tokio::select! {
        c = handshake => match c { Ok(c) => c, Err(_) => return },
        _ = kill.changed() => return,
    };
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    let state = Arc::clone(&state);
                    let cert = Arc::clone(&cert);
                    tokio::spawn(handle(state, cert, id, request, respond));
                }
                Some(Err(_)) | None => break,
            },
            // Dropping the connection closes the socket with no GOAWAY.
            _ = kill.changed() => break,
        }
    }
}

/// Counts a connection as closed when its task ends, however it ends.
struct OpenGuard(Arc<State>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn client_cert(peer: Option<&[CertificateDer<'_>]>) -> ClientCert {
    let parsed = peer
        .and_then(|chain| chain.first())
        .and_then(|der| X509::from_der(der.as_ref()).ok());
    let Some(cert) = parsed else {
        return ClientCert {
            topic: None,
            subject: String::new(),
            valid_now: false,
        };
    };
    let topic = cert
        .subject_name()
        .entries_by_nid(Nid::USERID)
        .next()
        .and_then(|e| e.data().to_string().ok());
    let valid_now = Asn1Time::days_from_now(0)
        .map(|now| cert.not_before() <= now && cert.not_after() > now)
        .unwrap_or(false);
    ClientCert {
        topic,
        subject: lanyard_pki::name_to_string(cert.subject_name()),
        valid_now,
    }
}

fn is_token_hex(s: &str) -> bool {
    !s.is_empty() && s.len() % 2 == 0 && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Read the request body, up to one byte past the payload limit.
async fn read_body(body: &mut RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if buf.len() <= MAX_PAYLOAD {
            buf.extend_from_slice(&chunk);
        }
    }
    Ok(buf)
}

async fn handle(
    state: Arc<State>,
    cert: Arc<ClientCert>,
    connection: u64,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = request.into_parts();
    let body = read_body(&mut body).await;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let sent_id = header("apns-id");
    let apns_id = match &sent_id {
        Some(id) if uuid::Uuid::parse_str(id).is_ok() => id.clone(),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    let token = parts
        .uri
        .path()
        .strip_prefix("/3/device/")
        .map(str::to_string);

    let verdict = judge(
        &state,
        &cert,
        &parts.method,
        token.as_deref(),
        sent_id.as_deref(),
        &header,
        body.as_deref().ok(),
    );

    let delay = *lock(&state.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    match verdict {
        Ok((topic, push_magic)) => {
            let push = ReceivedPush {
                token_hex: token.unwrap_or_default().to_ascii_lowercase(),
                topic,
                push_magic,
                apns_id: apns_id.clone(),
                client_sent_apns_id: sent_id.is_some(),
                push_type: header("apns-push-type"),
                priority: header("apns-priority"),
                expiration: header("apns-expiration"),
                client_subject: cert.subject.clone(),
                connection,
            };
            let response = Response::builder()
                .status(StatusCode::OK)
                .header("apns-id", apns_id.as_str())
                .body(());
            let Ok(response) = response else { return };
            // Record before answering, so a client that saw 200 finds the push recorded.
            lock(&state.pushes).push(push.clone());
            lock(&state.subscribers).retain(|tx| tx.send(push.clone()).is_ok());
            // Headers with END_STREAM: a 200 from APNs has no body at all.
            let _ = respond.send_response(response, true);
        }
        Err(refusal) => {
            lock(&state.rejected).push(RejectedPush {
                token_hex: token.unwrap_or_default(),
                status: refusal.status,
                reason: refusal.reason.clone(),
                apns_id: apns_id.clone(),
            });
            let mut json = serde_json::json!({ "reason": refusal.reason });
            if let Some(ts) = refusal.timestamp_ms {
                json["timestamp"] = serde_json::json!(ts);
            }
            let mut builder = Response::builder()
                .status(refusal.status)
                .header("apns-id", apns_id.as_str())
                .header("content-type", "application/json");
            if let Some(secs) = refusal.retry_after {
                builder = builder.header("retry-after", secs.to_string());
            }
            let Ok(response) = builder.body(()) else {
                return;
            };
            if let Ok(mut stream) = respond.send_response(response, false) {
                let _ = stream.send_data(Bytes::from(json.to_string()), true);
            }
        }
    }
}

struct Refusal {
    status: u16,
    reason: String,
    timestamp_ms: Option<i64>,
    retry_after: Option<u64>,
}

fn refuse(status: u16, reason: &str) -> Refusal {
    Refusal {
        status,
        reason: reason.to_string(),
        timestamp_ms: None,
        retry_after: None,
    }
}

/// Decide about one request: `Ok((topic, push_magic))` to accept it.
fn judge(
    state: &State,
    cert: &ClientCert,
    method: &Method,
    token: Option<&str>,
    sent_id: Option<&str>,
    header: &dyn Fn(&str) -> Option<String>,
    body: Option<&[u8]>,
) -> Result<(String, String), Refusal> {
    let Some(cert_topic) = cert.topic.clone() else {
        return Err(refuse(403, "BadCertificate"));
    };
    if !cert.valid_now {
        return Err(refuse(403, "BadCertificate"));
    }
    if method != Method::POST {
        return Err(refuse(405, "MethodNotAllowed"));
    }
    let Some(token) = token else {
        return Err(refuse(404, "BadPath"));
    };
    if !is_token_hex(token) {
        return Err(refuse(400, "BadDeviceToken"));
    }
    let token = token.to_ascii_lowercase();
    if sent_id.is_some_and(|id| uuid::Uuid::parse_str(id).is_err()) {
        return Err(refuse(400, "BadMessageId"));
    }
    let lenient = state.options.lenient_headers;
    let topic = match header("apns-topic") {
        Some(t) if t == cert_topic => t,
        Some(_) => return Err(refuse(400, "TopicDisallowed")),
        None if lenient => cert_topic.clone(),
        None => return Err(refuse(400, "MissingTopic")),
    };
    match header("apns-push-type").as_deref() {
        Some("mdm") => {}
        None if lenient => {}
        _ => return Err(refuse(400, "InvalidPushType")),
    }
    if header("apns-priority").is_some_and(|p| !matches!(p.as_str(), "1" | "5" | "10")) {
        return Err(refuse(400, "BadPriority"));
    }
    if header("apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
        return Err(refuse(400, "BadExpirationDate"));
    }
    let Some(body) = body else {
        return Err(refuse(400, "BadPayload"));
    };
    if body.len() > MAX_PAYLOAD {
        return Err(refuse(413, "PayloadTooLarge"));
    }
    if body.is_empty() {
        return Err(refuse(400, "PayloadEmpty"));
    }
    let push_magic = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("mdm").and_then(|m| m.as_str()).map(str::to_string))
        .filter(|m| !m.is_empty())
        .ok_or_else(|| refuse(400, "BadPayload"))?;

    {
        let mut injections = lock(&state.injections);
        if let Some(next) = injections.front_mut() {
            next.remaining -= 1;
            let refusal = Refusal {
                status: next.status,
                reason: next.reason.clone(),
                timestamp_ms: None,
                retry_after: next.retry_after,
            };
            if next.remaining == 0 {
                injections.pop_front();
            }
            return Err(refusal);
        }
    }
    if let Some(ts) = lock(&state.unregistered).get(&token) {
        return Err(Refusal {
            timestamp_ms: Some(*ts),
            ..refuse(410, "Unregistered")
        });
    }
    if lock(&state.token_topics)
        .get(&token)
        .is_some_and(|bound| *bound != topic)
    {
        return Err(refuse(400, "DeviceTokenNotForTopic"));
    }
    Ok((topic, push_magic))
}

/// Requires a client certificate and checks its handshake signature, but trusts any
/// certificate: the fake records who connected instead of judging the chain.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// --- fake MDM push certificates ------------------------------------------------------------

/// What [`fake_push_certificate_with`] makes.
#[derive(Debug, Clone)]
pub struct FakePushCertOptions {
    /// The subject's UID (the APNs topic); `None` leaves the UID out.
    pub topic: Option<String>,
    /// Start of validity, seconds from now (negative: in the past).
    pub not_before_offset_secs: i64,
    /// End of validity, seconds from now (negative: already expired).
    pub not_after_offset_secs: i64,
}

impl FakePushCertOptions {
    /// A certificate for `topic`, valid from five minutes ago for a year (like Apple's).
    pub fn new(topic: &str) -> FakePushCertOptions {
        FakePushCertOptions {
            topic: Some(topic.to_string()),
            not_before_offset_secs: -300,
            not_after_offset_secs: 365 * 86_400,
        }
    }
}

/// A fake MDM push certificate with its key, in the forms an operator might hold it.
#[derive(Clone)]
pub struct FakePushCertificate {
    /// The topic in the subject's UID (`None` when made without).
    pub topic: Option<String>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The RSA-2048 private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Certificate, key and issuer as PKCS#12 (AES-256 / SHA-256, OpenSSL 3 defaults).
    pub pkcs12_der: Vec<u8>,
    /// The PKCS#12 password.
    pub pkcs12_password: String,
    /// The fake "Apple" CA that issued it, PEM (see [`fake_push_ca_pem`]).
    pub issuer_ca_pem: String,
}

impl fmt::Debug for FakePushCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakePushCertificate")
            .field("topic", &self.topic)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl FakePushCertificate {
    /// Certificate then key in one PEM (the form aioapns and curl take).
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// Writes the certificate and the key as PEM files `push-cert.pem` and `push-key.pem` in
    /// `dir` (what `lanyard push-cert upload --cert … --key …` takes); returns their paths.
    pub fn write_pem_files(
        &self,
        dir: &std::path::Path,
    ) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let cert = dir.join("push-cert.pem");
        let key = dir.join("push-key.pem");
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// A fresh MDM push topic of the shape Apple's push certificates carry,
/// `com.apple.mgmt.External.<uuid>`.
pub fn fake_mdm_topic() -> String {
    format!("com.apple.mgmt.External.{}", uuid::Uuid::new_v4())
}

/// The process-wide fake "Apple Application Integration" CA that issues fake push
/// certificates (made once: RSA key generation is slow).
fn fake_push_issuer() -> anyhow::Result<Arc<Ca>> {
    static ISSUER: Mutex<Option<Arc<Ca>>> = Mutex::new(None);
    let mut slot = lock(&ISSUER);
    if let Some(ca) = slot.as_ref() {
        return Ok(Arc::clone(ca));
    }
    let ca = Arc::new(Ca::generate(
        "Lanyard fake Apple Application Integration CA",
        "Lanyard test",
    )?);
    *slot = Some(Arc::clone(&ca));
    Ok(ca)
}

/// The CA that issues every fake push certificate of this process, PEM: give it to
/// [`FakeApnsOptions::client_ca_pem`] to make the fake verify client certificates.
pub fn fake_push_ca_pem() -> anyhow::Result<String> {
    Ok(fake_push_issuer()?.cert_pem()?)
}

/// A fake MDM push certificate for `topic` (e.g. `com.apple.mgmt.External.<uuid>`), valid
/// for a year.
pub fn fake_push_certificate(topic: &str) -> anyhow::Result<FakePushCertificate> {
    fake_push_certificate_with(FakePushCertOptions::new(topic))
}

/// A fake MDM push certificate as described by `options` (no UID, expired, …). Subject
/// `UID=<topic>, CN=APSP:<uuid>, C=US` like Apple's, EKU clientAuth, RSA-2048.
pub fn fake_push_certificate_with(
    options: FakePushCertOptions,
) -> anyhow::Result<FakePushCertificate> {
    let issuer = fake_push_issuer()?;
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let name = apsp_subject(options.topic.as_deref())?;
    let mut b = start_cert(
        &name,
        issuer.certificate().subject_name(),
        &key,
        options.not_before_offset_secs,
        options.not_after_offset_secs,
    )?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
    let ski =
        SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(issuer.certificate()), None))?;
    b.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(issuer.certificate()), None))?;
    b.append_extension(aki)?;
    b.sign(issuer.private_key(), MessageDigest::sha256())?;
    let cert = b.build();

    let password = format!("p12-{}", uuid::Uuid::new_v4().simple());
    let mut chain = Stack::new()?;
    chain.push(issuer.certificate().clone())?;
    let pkcs12 = Pkcs12::builder()
        .name("Lanyard fake MDM push certificate")
        .pkey(&key)
        .cert(&cert)
        .ca(chain)
        .build2(&password)?;

    let pem = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| anyhow!("PEM is not UTF-8"));
    Ok(FakePushCertificate {
        topic: options.topic,
        cert_pem: pem(cert.to_pem()?)?,
        key_pem: pem(key.private_key_to_pem_pkcs8()?)?,
        pkcs12_der: pkcs12.to_der()?,
        pkcs12_password: password,
        issuer_ca_pem: issuer.cert_pem()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_certificate_carries_the_topic_in_its_uid() {
        let topic = "com.apple.mgmt.External.0e1d2c3b-4a59-6877-8695-a4b3c2d1e0f9";
        let fake = fake_push_certificate(topic).unwrap();
        let cert = X509::from_pem(fake.cert_pem.as_bytes()).unwrap();
        let uid = cert
            .subject_name()
            .entries_by_nid(Nid::USERID)
            .next()
            .unwrap()
            .data()
            .to_string()
            .unwrap();
        assert_eq!(uid, topic);
        let parsed = Pkcs12::from_der(&fake.pkcs12_der)
            .unwrap()
            .parse2(&fake.pkcs12_password)
            .unwrap();
        assert_eq!(
            parsed.cert.unwrap().to_der().unwrap(),
            cert.to_der().unwrap()
        );
        assert!(!format!("{fake:?}").contains("PRIVATE"));
        let issuer = X509::from_pem(fake.issuer_ca_pem.as_bytes()).unwrap();
        assert!(cert.verify(&issuer.public_key().unwrap()).unwrap());
    }

    #[test]
    fn token_hex_shape() {
        assert!(is_token_hex(&"ab".repeat(32)));
        assert!(!is_token_hex(""));
        assert!(!is_token_hex("abc"));
        assert!(!is_token_hex("zz"));
    }
}
