//! The SCEP client of the simulated Mac (RFC 8894), as a Mac runs the
//! `com.apple.security.scep` payload of its enrollment profile:
//!
//! 1. `GET URL?operation=GetCACaps` — read the capabilities (AES, POSTPKIOperation);
//! 2. `GET URL?operation=GetCACert` — the CA certificate (DER), or CA and RA in a degenerate
//!    PKCS#7 (`application/x-x509-ca-ra-cert`);
//! 3. `POST URL?operation=PKIOperation` — a PKCSReq: a PKCS#10 request with the profile's
//!    subject and challengePassword, enveloped (AES) to the RA or CA, signed by a throwaway
//!    self-signed certificate with messageType 19, transactionID and senderNonce;
//! 4. read the CertRep: signed by the RA that GetCACert served (by the CA when it served the
//!    CA alone), `recipientNonce` = our nonce, same transactionID, pkiStatus SUCCESS, and the
//!    issued certificate inside an envelope only our key opens.
//!
//! The signer rule is Apple's: `SecSCEPVerifyReply` in Apple's open-source Security framework
//! (`SecSCEP.c`) is handed the CA and RA from GetCACert, takes the RA as the reply's signer
//! ("response should be signed by ra") and refuses a reply signed by any other certificate,
//! even one of the same CA. A Mac then fails the SCEP payload and the whole profile.
//!
//! The message codec is `lanyard-pki`'s client half ([`lanyard_pki::scep::encode_pki_message`],
//! [`lanyard_pki::scep::decode_cert_rep`], [`lanyard_pki::build_csr`]); this module adds what
//! a client decides: which certificate to encrypt to, which cipher, the checks on the reply,
//! and the HTTP exchange.

use base64::Engine as _;
use lanyard_pki::scep::{self, MessageType, PkiStatus};
use lanyard_pki::CertInfo;
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::stack::Stack;
use openssl::symm::Cipher;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Name, X509NameBuilder, X509PurposeId, X509StoreContext, X509};
use url::Url;

use crate::device;
use crate::profile::ScepPayload;

/// A SCEP failure, already phrased for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScepError {
    /// The server answered an HTTP error.
    #[error("{operation} answered {status}: {message}")]
    Http {
        /// `GetCACaps`, `GetCACert` or `PKIOperation`.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// Body text.
        message: String,
    },
    /// The CA answered FAILURE.
    #[error("the CA refused the request: pkiStatus FAILURE, failInfo {0}")]
    Failure(String),
    /// The CA answered PENDING (manual approval), which the simulated Mac does not poll.
    #[error("the CA answered PENDING; the simulated Mac does not poll")]
    Pending,
    /// GetCACert served an RA, and the CertRep is signed by another certificate (the CA,
    /// say). Apple's `SecSCEPVerifyReply` refuses such a reply.
    #[error(
        "the CertRep is signed by {signer}, not by the RA {ra} that GetCACert served; a Mac \
         refuses such a reply"
    )]
    NotSignedByRa {
        /// Subject of the certificate that signed the CertRep.
        signer: String,
        /// Subject of the RA GetCACert served.
        ra: String,
    },
    /// Anything else (transport, malformed answers, failed checks).
    #[error("{0}")]
    Other(String),
}

fn other(what: &str, e: impl std::fmt::Display) -> ScepError {
    ScepError::Other(format!("{what}: {e}"))
}

/// The certificates GetCACert returned, sorted out.
#[derive(Debug, Clone)]
pub struct CaCerts {
    /// The CA certificate (self-signed) that the CertRep and the issued identity chain to.
    pub ca: X509,
    /// The RA, when GetCACert served one (a certificate issued by the CA): it receives the
    /// requests and must be the signer of every CertRep.
    pub ra: Option<X509>,
    /// The certificate to encrypt requests to: the RA when one was sent, else the CA.
    pub recipient: X509,
    /// Everything GetCACert returned.
    pub all: Vec<X509>,
}

fn is_self_signed(c: &X509) -> bool {
    c.issued(c) == openssl::x509::X509VerifyResult::OK
        && c.public_key().and_then(|k| c.verify(&k)).unwrap_or(false)
}

/// Sort out a GetCACert answer by its content type: one DER certificate
/// (`application/x-x509-ca-cert`) or a degenerate PKCS#7 (`application/x-x509-ca-ra-cert`).
pub fn parse_get_ca_cert(content_type: &str, body: &[u8]) -> Result<CaCerts, ScepError> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let all = if ct == scep::CA_RA_CERT_CONTENT_TYPE {
        scep::parse_certs_only(body).map_err(|e| other("GetCACert PKCS#7", e))?
    } else {
        // application/x-x509-ca-cert, or anything else that is one certificate.
        match X509::from_der(body) {
            Ok(c) => vec![c],
            Err(_) => scep::parse_certs_only(body).map_err(|e| {
                other(
                    &format!("GetCACert ({content_type}) is neither a certificate nor PKCS#7"),
                    e,
                )
            })?,
        }
    };
    let ca = all
        .iter()
        .find(|c| is_self_signed(c))
        .or_else(|| all.last())
        .cloned()
        .ok_or_else(|| ScepError::Other("GetCACert returned no certificate".into()))?;
    // Apple's SecSCEPValidateCACertMessage likewise takes the RA to be a certificate that
    // chains to the CA among the others; several certificates without one are refused.
    let ra = all
        .iter()
        .find(|c| !is_self_signed(c) && chains_to(c, &ca))
        .cloned();
    if ra.is_none() && all.len() > 1 {
        return Err(ScepError::Other(format!(
            "GetCACert served {} certificates but no RA issued by the CA",
            all.len()
        )));
    }
    let recipient = ra.clone().unwrap_or_else(|| ca.clone());
    Ok(CaCerts {
        ca,
        ra,
        recipient,
        all,
    })
}

/// Does `fingerprint` (the profile's `CAFingerprint`: SHA-256, SHA-1 or MD5 by its length)
/// match one of `certs`?
pub fn fingerprint_matches(fingerprint: &[u8], certs: &[X509]) -> bool {
    let md = match fingerprint.len() {
        32 => MessageDigest::sha256(),
        20 => MessageDigest::sha1(),
        16 => MessageDigest::md5(),
        _ => return false,
    };
    certs.iter().any(|c| {
        c.to_der()
            .ok()
            .and_then(|der| hash(md, &der).ok())
            .is_some_and(|d| &d[..] == fingerprint)
    })
}

/// Build an X.509 name from the profile's subject pairs (`CN`, `O`, or dotted OIDs).
pub fn subject_name(pairs: &[(String, String)]) -> Result<X509Name, ScepError> {
    let mut b = X509NameBuilder::new().map_err(|e| other("subject", e))?;
    for (k, v) in pairs {
        b.append_entry_by_text(k, v)
            .map_err(|e| other(&format!("subject entry {k}={v}"), e))?;
    }
    Ok(b.build())
}

/// A PKCSReq ready to send.
pub struct PkcsReq {
    /// The pkiMessage (DER).
    pub der: Vec<u8>,
    /// Our senderNonce (the CertRep must echo it as recipientNonce).
    pub sender_nonce: Vec<u8>,
    /// transactionID: hex SHA-256 of the public key (RFC 8894 suggests a key hash).
    pub transaction_id: String,
    /// The throwaway self-signed certificate that signs the request; the CA encrypts its
    /// answer to it.
    pub signer: X509,
}

/// Build a PKCSReq for `key` with `subject` and `challenge`, encrypted to `recipient` with
/// `cipher`.
pub fn build_pkcs_req(
    key: &PKeyRef<Private>,
    subject: &[(String, String)],
    challenge: Option<&str>,
    recipient: &X509,
    cipher: Cipher,
) -> Result<PkcsReq, ScepError> {
    let name = subject_name(subject)?;
    let csr = lanyard_pki::build_csr(key, &name, challenge).map_err(|e| other("CSR", e))?;
    let signer = device::self_signed_with_name(key, &name, 1)
        .map_err(|e| other("self-signed request signer", e))?;
    let spki = key
        .public_key_to_der()
        .map_err(|e| other("public key", e))?;
    let transaction_id =
        hex::encode(hash(MessageDigest::sha256(), &spki).map_err(|e| other("transactionID", e))?)
            .to_uppercase();
    let (der, sender_nonce) = scep::encode_pki_message(
        MessageType::PkcsReq,
        &csr,
        &signer,
        key,
        recipient,
        &transaction_id,
        cipher,
    )
    .map_err(|e| other("PKCSReq", e))?;
    Ok(PkcsReq {
        der,
        sender_nonce,
        transaction_id,
        signer,
    })
}

/// Read a CertRep answering `req`: its signer must chain to the CA of `certs` and, when
/// GetCACert served an RA, be that RA; the nonce and transaction must match, the status must
/// be SUCCESS, and the issued certificate must be for `key` and chain to the CA. Returns the
/// identity certificate.
pub fn read_cert_rep(
    der: &[u8],
    certs: &CaCerts,
    req: &PkcsReq,
    key: &PKeyRef<Private>,
) -> Result<X509, ScepError> {
    let ca = &certs.ca;
    let rep = scep::decode_cert_rep(der, ca, &req.signer, key).map_err(|e| other("CertRep", e))?;
    if let Some(ra) = &certs.ra {
        let same = match (rep.signer_cert.to_der(), ra.to_der()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            return Err(ScepError::NotSignedByRa {
                signer: lanyard_pki::name_to_string(rep.signer_cert.subject_name()),
                ra: lanyard_pki::name_to_string(ra.subject_name()),
            });
        }
    }
    if rep.transaction_id != req.transaction_id {
        return Err(ScepError::Other(format!(
            "CertRep transactionID {:?} is not ours ({:?})",
            rep.transaction_id, req.transaction_id
        )));
    }
    if rep.recipient_nonce != req.sender_nonce {
        return Err(ScepError::Other(
            "CertRep recipientNonce does not echo our senderNonce".into(),
        ));
    }
    match rep.status {
        PkiStatus::Success => {}
        PkiStatus::Failure => {
            return Err(ScepError::Failure(match rep.fail_info {
                Some(fi) => format!("{fi:?} ({})", fi.code()),
                None => "(none given)".into(),
            }));
        }
        PkiStatus::Pending => return Err(ScepError::Pending),
    }
    let issued = rep
        .certificates
        .into_iter()
        .find(|c| c.public_key().map(|k| k.public_eq(key)).unwrap_or(false))
        .ok_or_else(|| {
            ScepError::Other("CertRep SUCCESS holds no certificate for our key".into())
        })?;
    if !chains_to(&issued, ca) {
        return Err(ScepError::Other(
            "the issued certificate does not chain to the SCEP CA".into(),
        ));
    }
    Ok(issued)
}

/// Does `cert` chain to `ca` (and is valid now)?
pub fn chains_to(cert: &X509, ca: &X509) -> bool {
    let check = || -> Result<bool, openssl::error::ErrorStack> {
        let mut sb = X509StoreBuilder::new()?;
        sb.add_cert(ca.clone())?;
        sb.set_purpose(X509PurposeId::ANY)?;
        let store = sb.build();
        let chain = Stack::new()?;
        let mut ctx = X509StoreContext::new()?;
        ctx.init(&store, cert, &chain, |c| c.verify_cert())
    };
    check().unwrap_or(false)
}

/// What a SCEP enrollment produced.
pub struct ScepOutcome {
    /// The identity certificate.
    pub certificate: X509,
    /// Its private key.
    pub key: PKey<Private>,
    /// The SCEP CA.
    pub ca: X509,
    /// GetCACaps, one capability per entry.
    pub caps: Vec<String>,
    /// What happened, for the step log.
    pub log: Vec<String>,
}

fn op_url(base: &Url, operation: &str, message: Option<&str>) -> Url {
    let mut u = base.clone();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("operation", operation);
        if let Some(m) = message {
            q.append_pair("message", m);
        }
    }
    u
}

async fn read(
    operation: &'static str,
    resp: reqwest::Response,
) -> Result<(String, Vec<u8>), ScepError> {
    let status = resp.status();
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp
        .bytes()
        .await
        .map_err(|e| other(operation, crate::error::error_chain(&e)))?
        .to_vec();
    if !status.is_success() {
        return Err(ScepError::Http {
            operation,
            status: status.as_u16(),
            message: crate::webauth::body_message(&ct, &body),
        });
    }
    Ok((ct, body))
}

/// Run the SCEP payload against its server with `client`: a fresh RSA key of the payload's
/// size (2048 unless it asks for more), then GetCACaps, GetCACert, PKIOperation.
pub async fn enroll(
    client: &reqwest::Client,
    payload: &ScepPayload,
) -> Result<ScepOutcome, ScepError> {
    let base = Url::parse(&payload.url).map_err(|e| other("SCEP URL", e))?;
    let mut log = Vec::new();
    // Sends one request of `op`; its content type and body when it succeeds.
    let exchange = |rb: reqwest::RequestBuilder, op: &'static str| async move {
        let resp = rb
            .send()
            .await
            .map_err(|e| other(op, crate::error::error_chain(&e)))?;
        read(op, resp).await
    };
    let get =
        |op: &'static str| exchange(client.get(op_url(&base, op, payload.name.as_deref())), op);

    let (_, caps_body) = get("GetCACaps").await?;
    let caps: Vec<String> = String::from_utf8_lossy(&caps_body)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let has = |c: &str| caps.iter().any(|x| x.eq_ignore_ascii_case(c));
    log.push(format!("SCEP GetCACaps: {}", caps.join(", ")));

    let (ct, body) = get("GetCACert").await?;
    let certs = parse_get_ca_cert(&ct, &body)?;
    if let Some(fp) = &payload.ca_fingerprint {
        if !fingerprint_matches(fp, &certs.all) {
            return Err(ScepError::Other(
                "CAFingerprint matches none of the GetCACert certificates".into(),
            ));
        }
    }
    let ca_info = CertInfo::from_x509(&certs.ca).map_err(|e| other("CA certificate", e))?;
    log.push(format!(
        "SCEP GetCACert ({ct}): {} certificate(s), CA {}",
        certs.all.len(),
        ca_info.subject
    ));

    let bits = payload.key_size.max(2048);
    let key = device::rsa_key(bits).map_err(|e| other("RSA key", e))?;
    let cipher = if has("AES") {
        Cipher::aes_256_cbc()
    } else {
        Cipher::des_ede3_cbc()
    };
    let req = build_pkcs_req(
        &key,
        &payload.subject,
        payload.challenge.as_deref(),
        &certs.recipient,
        cipher,
    )?;
    let op = "PKIOperation";
    let (ct, body) = if has("POSTPKIOperation") {
        exchange(
            client
                .post(op_url(&base, op, None))
                .header(
                    reqwest::header::CONTENT_TYPE,
                    scep::PKI_MESSAGE_CONTENT_TYPE,
                )
                .body(req.der.clone()),
            op,
        )
        .await?
    } else {
        let msg = base64::engine::general_purpose::STANDARD.encode(&req.der);
        exchange(client.get(op_url(&base, op, Some(&msg))), op).await?
    };
    if !ct.starts_with(scep::PKI_MESSAGE_CONTENT_TYPE) {
        log.push(format!(
            "SCEP PKIOperation answered with content type {ct:?}"
        ));
    }
    let certificate = read_cert_rep(&body, &certs, &req, &key)?;
    let info = CertInfo::from_x509(&certificate).map_err(|e| other("identity", e))?;
    log.push(format!(
        "SCEP PKIOperation: RSA-{bits} PKCSReq ({}), SUCCESS: identity {} serial {}",
        if has("AES") { "AES-256" } else { "3DES" },
        info.subject,
        info.serial_hex
    ));
    Ok(ScepOutcome {
        certificate,
        key,
        ca: certs.ca,
        caps,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_pki::scep::{FailInfo, IssueDecision, ScepResponder};
    use lanyard_pki::{Ca, CertificateIssuer as _};

    fn subject() -> Vec<(String, String)> {
        vec![
            ("O".into(), "Example Ltd".into()),
            ("CN".into(), "Lanyard device identity".into()),
        ]
    }

    fn policy(req: &scep::PkiRequest, csr: &lanyard_pki::Csr) -> Result<IssueDecision, FailInfo> {
        assert_eq!(req.message_type, MessageType::PkcsReq);
        if csr.challenge_password() != Some("one-time") {
            return Err(FailInfo::BadRequest);
        }
        Ok(IssueDecision {
            validity: std::time::Duration::from_secs(365 * 86_400),
            subject_override: None,
        })
    }

    /// A PKCSReq for `subject()` with `challenge`, enveloped to `recipient`.
    fn request(key: &PKey<Private>, challenge: &str, recipient: &X509, cipher: Cipher) -> PkcsReq {
        build_pkcs_req(key, &subject(), Some(challenge), recipient, cipher).unwrap()
    }

    /// A SCEP RA certificate of `ca`, with its key.
    fn ra_of(ca: &Ca, name: &str, days: u32) -> (X509, PKey<Private>) {
        let ra = ca.issue_scep_ra(name, days).unwrap();
        let ra_cert = X509::from_der(&ra.cert_der).unwrap();
        let ra_key = PKey::private_key_from_pem(ra.key_pem.as_bytes()).unwrap();
        (ra_cert, ra_key)
    }

    /// A CA and its SCEP RA.
    fn ca_and_ra() -> (Ca, X509, PKey<Private>) {
        let ca = Ca::generate("Lanyard CA", "Example Ltd").unwrap();
        let (ra_cert, ra_key) = ra_of(&ca, "Lanyard SCEP RA", 365);
        (ca, ra_cert, ra_key)
    }

    #[test]
    fn pkcs_req_against_lanyard_pki_responder() {
        let (ca, ra_cert, ra_key) = ca_and_ra();
        let responder = ScepResponder::new(&ca, &ra_cert, &ra_key, Some(ca.private_key()));
        let cacert = responder.ca_cert().unwrap();
        let certs = parse_get_ca_cert(cacert.content_type, &cacert.body).unwrap();
        assert_eq!(certs.all.len(), 2);
        assert_eq!(certs.ca.to_der().unwrap(), ca.cert_der().unwrap());
        assert_eq!(
            certs.ra.as_ref().unwrap().to_der().unwrap(),
            ra_cert.to_der().unwrap()
        );
        assert_eq!(certs.recipient.to_der().unwrap(), ra_cert.to_der().unwrap());

        let key = device::rsa_key(2048).unwrap();
        let req = request(&key, "one-time", &certs.recipient, Cipher::aes_256_cbc());
        // the server side sees what we meant to send
        let decoded = scep::decode_pki_message(&req.der, &[(&ra_cert, &ra_key)]).unwrap();
        assert_eq!(decoded.message_type, MessageType::PkcsReq);
        assert_eq!(decoded.transaction_id, req.transaction_id);
        assert_eq!(decoded.sender_nonce, req.sender_nonce);
        let csr = decoded.csr().unwrap();
        assert_eq!(csr.challenge_password(), Some("one-time"));
        assert_eq!(csr.subject(), "O=Example Ltd, CN=Lanyard device identity");

        let reply = responder.pki_operation(&req.der, policy).unwrap();
        let cert = read_cert_rep(&reply.body, &certs, &req, &key).unwrap();
        assert!(cert.public_key().unwrap().public_eq(&key));
        assert!(chains_to(&cert, ca.certificate()));
        let info = CertInfo::from_x509(&cert).unwrap();
        assert_eq!(info.subject, "O=Example Ltd, CN=Lanyard device identity");

        // the identity signs an Mdm-Signature the server accepts
        let body = b"<plist/>";
        let sig = lanyard_pki::sign_detached(&cert, &key, body).unwrap();
        lanyard_pki::verify_detached(&sig, body, ca.certificate()).unwrap();

        // wrong challenge → FAILURE badRequest, reported with the failInfo
        let req = request(&key, "wrong", &certs.recipient, Cipher::aes_128_cbc());
        let reply = responder.pki_operation(&req.der, policy).unwrap();
        let err = read_cert_rep(&reply.body, &certs, &req, &key).unwrap_err();
        assert_eq!(err, ScepError::Failure("BadRequest (2)".into()));

        // a reply to someone else's request is refused (a FAILURE reply, which carries no
        // envelope, so the nonce check is what catches it)
        let other_req = request(&key, "wrong", &certs.recipient, Cipher::aes_256_cbc());
        let reply = responder.pki_operation(&other_req.der, policy).unwrap();
        let err = read_cert_rep(&reply.body, &certs, &req, &key).unwrap_err();
        assert!(err.to_string().contains("recipientNonce"), "{err}");

        // a CertRep signed under another CA is refused
        let stranger = Ca::generate("Other", "").unwrap();
        let stranger_certs = CaCerts {
            ca: stranger.certificate().clone(),
            ra: None,
            recipient: stranger.certificate().clone(),
            all: vec![stranger.certificate().clone()],
        };
        let reply = responder.pki_operation(&req.der, policy).unwrap();
        assert!(read_cert_rep(&reply.body, &stranger_certs, &req, &key).is_err());
    }

    /// The server side of a PKCSReq built from the codec alone, so that a test can sign the
    /// CertRep with whatever it likes: the request is opened with `opener`, the identity
    /// issued by `ca`, the CertRep signed by `signer`.
    fn cert_rep_signed_by(
        ca: &Ca,
        opener: (&X509, &PKey<Private>),
        signer: (&X509, &PKeyRef<Private>),
        req: &PkcsReq,
    ) -> Vec<u8> {
        let decoded = scep::decode_pki_message(&req.der, &[(opener.0, opener.1)]).unwrap();
        let issued = ca.issue_identity(&decoded.message_data, 30, None).unwrap();
        // the CA rides along when it is not the signer itself
        let extra = if signer.0.to_der().unwrap() == ca.cert_der().unwrap() {
            Vec::new()
        } else {
            vec![ca.certificate().clone()]
        };
        scep::encode_cert_rep(
            &decoded,
            scep::CertRepStatus::Success {
                issued: &issued,
                chain: &[],
            },
            signer.0,
            signer.1,
            &extra,
        )
        .unwrap()
    }

    /// GetCACert served CA and RA, and the CertRep is signed by the CA (or by another
    /// certificate of the same CA): refused, as `SecSCEPVerifyReply` refuses it.
    #[test]
    fn a_cert_rep_not_signed_by_the_served_ra_is_refused() {
        let (ca, ra_cert, ra_key) = ca_and_ra();
        let served = scep::get_ca_cert(ca.certificate(), Some(&ra_cert)).unwrap();
        let certs = parse_get_ca_cert(served.content_type, &served.body).unwrap();
        let key = device::rsa_key(2048).unwrap();
        let req = request(&key, "one-time", &certs.recipient, Cipher::aes_256_cbc());

        let by_ca = cert_rep_signed_by(
            &ca,
            (&ra_cert, &ra_key),
            (ca.certificate(), ca.private_key()),
            &req,
        );
        let err = read_cert_rep(&by_ca, &certs, &req, &key).unwrap_err();
        assert_eq!(
            err,
            ScepError::NotSignedByRa {
                signer: "O=Example Ltd, CN=Lanyard CA".into(),
                ra: "O=Example Ltd, CN=Lanyard SCEP RA".into(),
            }
        );
        assert!(err.to_string().contains("not by the RA"), "{err}");

        let (other_cert, other_key) = ra_of(&ca, "Another RA", 30);
        let by_other =
            cert_rep_signed_by(&ca, (&ra_cert, &ra_key), (&other_cert, &other_key), &req);
        assert!(matches!(
            read_cert_rep(&by_other, &certs, &req, &key),
            Err(ScepError::NotSignedByRa { .. })
        ));

        // signed by the served RA, the same reply is accepted
        let by_ra = cert_rep_signed_by(&ca, (&ra_cert, &ra_key), (&ra_cert, &ra_key), &req);
        let cert = read_cert_rep(&by_ra, &certs, &req, &key).unwrap();
        assert!(cert.public_key().unwrap().public_eq(&key));
    }

    /// GetCACert served the CA alone: there is no RA, so a CertRep signed by the CA is read.
    #[test]
    fn a_ca_served_alone_may_sign() {
        let ca = Ca::generate("Lanyard CA", "Example Ltd").unwrap();
        let served = scep::get_ca_cert(ca.certificate(), None).unwrap();
        let certs = parse_get_ca_cert(served.content_type, &served.body).unwrap();
        assert!(certs.ra.is_none());
        assert_eq!(certs.recipient.to_der().unwrap(), ca.cert_der().unwrap());
        let key = device::rsa_key(2048).unwrap();
        let req = request(&key, "one-time", &certs.recipient, Cipher::aes_256_cbc());
        let ca_key = ca.private_key().to_owned();
        let reply = cert_rep_signed_by(
            &ca,
            (ca.certificate(), &ca_key),
            (ca.certificate(), ca.private_key()),
            &req,
        );
        assert!(read_cert_rep(&reply, &certs, &req, &key).is_ok());
    }

    /// Several certificates in GetCACert but none issued by the CA: no RA to trust.
    #[test]
    fn get_ca_cert_without_an_ra_of_the_ca_is_refused() {
        let ca = Ca::generate("Lanyard CA", "Example Ltd").unwrap();
        let other = Ca::generate("Other CA", "").unwrap();
        let stray = other.issue_scep_ra("Stray RA", 30).unwrap();
        let stray = X509::from_der(&stray.cert_der).unwrap();
        let served = scep::get_ca_cert(ca.certificate(), Some(&stray)).unwrap();
        let err = parse_get_ca_cert(served.content_type, &served.body).unwrap_err();
        assert!(err.to_string().contains("no RA issued by the CA"), "{err}");
    }

    #[test]
    fn fingerprints() {
        let ca = Ca::generate("Lanyard CA", "Example Ltd").unwrap();
        let der = ca.cert_der().unwrap();
        let certs = vec![ca.certificate().clone()];
        let sha256 = hash(MessageDigest::sha256(), &der).unwrap();
        let sha1 = hash(MessageDigest::sha1(), &der).unwrap();
        assert!(fingerprint_matches(&sha256, &certs));
        assert!(fingerprint_matches(&sha1, &certs));
        assert!(!fingerprint_matches(&[0u8; 32], &certs));
        assert!(!fingerprint_matches(&[0u8; 7], &certs));
    }
}
