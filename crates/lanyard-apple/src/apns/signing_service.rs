//! A CSR signing service for the MDM push certificate (for operators without their own MDM
//! vendor certificate), in the form mdmcert.download uses.
//!
//! Not Apple's, and the service publishes no specification, so the form is as its
//! long-standing independent clients (MicroMDM's `mdmctl mdmcert.download`, Commandment)
//! send and read it — they agree: the request is
//! `POST <service>/api/v1/signrequest` with a JSON body `{csr, email, key, encrypt}` — the
//! Base64 of the PEM CSR, the address the reply is emailed to, the service's API key, and the
//! Base64 of a PEM certificate the reply is encrypted to; success is `200` with
//! `{"result": "success"}`. The reply arrives by email as a `*.plist.b64.p7` file: the
//! hex-encoded DER of a CMS EnvelopedData addressed to that certificate, whose content is the
//! request file for Apple (Base64 of the plist, see [`super::vendor`]).

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use lanyard_pki::X509;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The public signing service Lanyard reaches by default.
pub const DEFAULT_SIGNING_SERVICE_URL: &str = "https://mdmcert.download";
/// The request path under the service URL.
pub const SIGN_REQUEST_PATH: &str = "/api/v1/signrequest";
/// The largest emailed reply Lanyard reads (replies are a few KiB).
pub const REPLY_LIMIT: usize = 256 * 1024;

/// Why the signing service cannot be used, or a reply cannot be read. Messages never contain
/// the API key or key material.
#[derive(Debug, Error)]
pub enum SigningServiceError {
    #[error("signing service URL {0}")]
    Config(String),
    #[error("cannot reach the signing service: {0}")]
    Http(String),
    #[error("the signing service refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("not a reply for Lanyard's pending signing-service request: {0}")]
    Reply(String),
}

/// The JSON body of a sign request (the service's field names).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignRequestBody {
    /// Base64 of the PEM CSR.
    pub csr: String,
    /// Where the service emails the reply.
    pub email: String,
    /// The service's API key.
    pub key: String,
    /// Base64 of the PEM certificate the reply is encrypted to.
    pub encrypt: String,
}

impl SignRequestBody {
    pub fn new(csr_pem: &str, email: &str, api_key: &str, encrypt_cert_pem: &str) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        SignRequestBody {
            csr: b64.encode(csr_pem.as_bytes()),
            email: email.to_string(),
            key: api_key.to_string(),
            encrypt: b64.encode(encrypt_cert_pem.as_bytes()),
        }
    }
}

/// The service's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignRequestReply {
    pub result: String,
}

/// A client of the signing service. Its HTTP client — and with it the system's root
/// certificates, read from disk — is made on the first request, not when `serve` starts.
pub struct SigningService {
    http: OnceLock<reqwest::Client>,
    url: String,
}

impl SigningService {
    /// `url` is the service's base URL: https, or plain http to a loopback address (a test
    /// service on this machine).
    pub fn new(url: &str) -> Result<SigningService, SigningServiceError> {
        let base = url.trim_end_matches('/').to_string();
        crate::check_service_url(&base)
            .map_err(|e| SigningServiceError::Config(format!("{base:?}: {e}")))?;
        Ok(SigningService {
            http: OnceLock::new(),
            url: base,
        })
    }

    /// The HTTP client, made on first use.
    fn http(&self) -> Result<&reqwest::Client, SigningServiceError> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        for cert in rustls_native_certs::load_native_certs().certs {
            if let Ok(c) = reqwest::Certificate::from_der(&cert) {
                builder = builder.add_root_certificate(c);
            }
        }
        let made = builder
            .build()
            .map_err(|e| SigningServiceError::Config(format!("HTTP client: {e}")))?;
        // Two first requests at once may both make one; the first stored is kept.
        Ok(self.http.get_or_init(|| made))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a sign request; `Ok` once the service accepted it (the reply comes by email).
    pub async fn submit(&self, body: &SignRequestBody) -> Result<(), SigningServiceError> {
        let res = self
            .http()?
            .post(format!("{}{SIGN_REQUEST_PATH}", self.url))
            .header("accept", "application/json")
            .json(body)
            .send()
            .await
            .map_err(|e| SigningServiceError::Http(e.without_url().to_string()))?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| SigningServiceError::Http(e.without_url().to_string()))?;
        let accepted = status.is_success()
            && serde_json::from_str::<SignRequestReply>(&text)
                .map(|r| r.result == "success")
                .unwrap_or(false);
        if accepted {
            return Ok(());
        }
        // The service's own words, shortened and printable only.
        let message: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
        Err(SigningServiceError::Refused {
            status: status.as_u16(),
            message: if message.is_empty() {
                "no explanation".into()
            } else {
                message
            },
        })
    }
}

/// Reads an emailed reply (hex of a DER CMS EnvelopedData) with the encryption certificate
/// and key Lanyard made for the request: the request file for Apple, as sent.
pub fn decrypt_reply(
    reply: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Vec<u8>, SigningServiceError> {
    let bad = |m: String| SigningServiceError::Reply(m);
    if reply.len() > REPLY_LIMIT {
        return Err(bad("the file is too large to be a reply".into()));
    }
    let compact: Vec<u8> = reply
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = hex::decode(&compact).map_err(|_| {
        bad("the file is not hex text (the service's *.plist.b64.p7 attachment)".into())
    })?;
    let cert = X509::from_pem(cert_pem)
        .map_err(|e| SigningServiceError::Reply(format!("encryption certificate: {e}")))?;
    let key = lanyard_pki::private_key_from_pem(key_pem)
        .map_err(|e| SigningServiceError::Reply(format!("encryption key: {e}")))?;
    lanyard_pki::cms_decrypt(&der, &cert, &key).map_err(|e| match e {
        lanyard_pki::PkiError::InvalidInput(_) => {
            bad("the file does not hold a CMS message".into())
        }
        _ => bad(
            "it cannot be decrypted with the pending request's encryption key (it was made for \
             another request)"
                .into(),
        ),
    })
}

/// Encrypts a request file to `cert_pem` the way the service replies: hex of the DER CMS
/// EnvelopedData (AES-256-CBC). For test services.
pub fn encrypt_reply(request_file: &[u8], cert_pem: &[u8]) -> Result<String, SigningServiceError> {
    let cert = X509::from_pem(cert_pem).map_err(|e| SigningServiceError::Reply(e.to_string()))?;
    let der = lanyard_pki::cms_encrypt_aes256(request_file, &cert)
        .map_err(|e| SigningServiceError::Reply(e.to_string()))?;
    Ok(hex::encode(der))
}
