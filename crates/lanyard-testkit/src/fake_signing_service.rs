//! A stand-in for a CSR signing service (the request/response form mdmcert.download
//! publishes, see `lanyard_apple::apns` `signing_service`): it records each sign request,
//! signs the CSR with a (throwaway) vendor chain from [`crate::fake_pushcert`] into the
//! request file for Apple, and keeps the reply it would email — hex of a CMS EnvelopedData
//! addressed to the request's encryption certificate — for the test to read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::anyhow;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use lanyard_apple::apns::{encrypt_reply, SignRequestBody, VendorSigner, SIGN_REQUEST_PATH};
use serde_json::{json, Value};

use crate::fake_pushcert::FakeVendorChain;

struct Inner {
    api_key: String,
    vendor: VendorSigner,
    requests: Vec<SignRequestBody>,
    replies: Vec<String>,
    sign_another_csr: bool,
}

type Shared = Arc<Mutex<Inner>>;

/// The fake signing service on `127.0.0.1`.
pub struct FakeSigningService {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSigningService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeSigningService {
    /// Starts the fake: it accepts `api_key` and signs with `chain`'s vendor certificate.
    pub async fn start(api_key: &str, chain: &FakeVendorChain) -> anyhow::Result<Self> {
        let vendor = VendorSigner::from_pkcs12(
            &chain.vendor_p12_der,
            &chain.vendor_p12_password,
            &[chain.wwdr_pem.as_bytes(), chain.root_pem.as_bytes()],
        )
        .map_err(|e| anyhow!("{e}"))?;
        let state = Arc::new(Mutex::new(Inner {
            api_key: api_key.to_string(),
            vendor,
            requests: Vec::new(),
            replies: Vec::new(),
            sign_another_csr: false,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route(SIGN_REQUEST_PATH, post(sign))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeSigningService { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`: the service URL to give Lanyard.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every sign request received, in order (including refused ones).
    pub fn requests(&self) -> Vec<SignRequestBody> {
        lock(&self.state).requests.clone()
    }

    /// The replies it "emailed", in order: the text of each `*.plist.b64.p7` attachment.
    pub fn replies(&self) -> Vec<String> {
        lock(&self.state).replies.clone()
    }

    /// From now on, sign a CSR of its own instead of the one sent (a reply that answers
    /// another request).
    pub fn sign_another_csr(&self, on: bool) {
        lock(&self.state).sign_another_csr = on;
    }
}

fn refuse(status: StatusCode, reason: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({"result": "failure", "reason": reason})))
}

async fn sign(State(s): State<Shared>, body: Json<SignRequestBody>) -> (StatusCode, Json<Value>) {
    let Json(req) = body;
    let mut inner = lock(&s);
    inner.requests.push(req.clone());
    if req.key != inner.api_key {
        return refuse(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(csr_pem), Ok(cert_pem)) = (b64.decode(&req.csr), b64.decode(&req.encrypt)) else {
        return refuse(StatusCode::BAD_REQUEST, "csr and encrypt must be Base64");
    };
    let csr_der = if inner.sign_another_csr {
        another_csr()
    } else {
        openssl::x509::X509Req::from_pem(&csr_pem).and_then(|r| r.to_der())
    };
    let Ok(csr_der) = csr_der else {
        return refuse(StatusCode::BAD_REQUEST, "csr is not a PEM CSR");
    };
    let Ok(file) = inner.vendor.sign_request(&csr_der) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot sign");
    };
    let Ok(reply) = encrypt_reply(file.as_bytes(), &cert_pem) else {
        return refuse(StatusCode::BAD_REQUEST, "encrypt is not a PEM certificate");
    };
    inner.replies.push(reply);
    (StatusCode::OK, Json(json!({"result": "success"})))
}

fn another_csr() -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048)?)?;
    let mut name = openssl::x509::X509NameBuilder::new()?;
    name.append_entry_by_nid(openssl::nid::Nid::COMMONNAME, "Another request")?;
    let name = name.build();
    let mut req = openssl::x509::X509ReqBuilder::new()?;
    req.set_subject_name(&name)?;
    req.set_pubkey(&key)?;
    req.sign(&key, openssl::hash::MessageDigest::sha256())?;
    req.build().to_der()
}
