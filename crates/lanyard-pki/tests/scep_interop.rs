//! SCEP interop at the codec level: independent SCEP clients enroll against Lanyard's one
//! SCEP responder.
//!
//! A tiny HTTP/1.1 server (std only, loopback, port 0) serves `/scep` with
//! [`lanyard_pki::scep::ScepResponder`] over a throwaway test CA and its RA, and each client
//! is run against it: micromdm's `scepclient` (Go, Debian package `scep`), strongSwan's
//! `pki --scep` (C, `strongswan-pki` + `libstrongswan-standard-plugins` +
//! `libstrongswan-extra-plugins`) and certmonger (C, OpenSSL, Debian `certmonger`: its
//! `scep-submit` helper and the daemon). Each test asserts that the certificate the client
//! wrote chains to the test CA. A missing tool prints a loud SKIPPED line (and fails when
//! `CI=true`). The same clients run against a real `lanyard serve`, inside an end-to-end
//! enrollment, in the `lanyard` crate's `scep_serve` tests.
//!
//! Interop findings (kept here so they are not lost):
//! - certmonger verifies the CertRep with OpenSSL `PKCS7_verify`, which needs the signer to
//!   carry keyUsage digitalSignature (micromdm's CA lacks it and fails there).
//! - strongSwan's `pki --scep` rejects SignerInfo signatureAlgorithm
//!   `sha256WithRSAEncryption` ("only RSA digest encryption supported") and wants
//!   `rsaEncryption`, which Lanyard writes.
//! - OpenSSL 3 based clients cannot open single-DES envelopes; Lanyard answers with AES.
//! - micromdm `scepclient` 2.1 envelopes its request with single DES whatever the caps say
//!   (needs `scep::allow_legacy_des`), signs with SHA-1, encodes with Go's pkcs7 (BER-ish
//!   SET OF order, so Lanyard re-encodes through OpenSSL before reading), and keeps
//!   `csr.pem`/`self.pem` next to the key file (a second run in the same directory reuses
//!   the old CSR).
//! - strongSwan 5.9.8 `pki --scep` tests its caps with enum indices instead of bits: it only
//!   accepts SHA-256 and AES when "SHA-384" is announced too (see `scep::CA_CAPS`).
//! - certmonger 0.79.17 generates self-signed request certificates with 33-byte serial
//!   numbers (more than x509-cert's 20), so SignedData is read without x509-cert.
//! - certmonger with the CA as the only SCEP certificate (GetCACert answering a single
//!   `x-x509-ca-cert`) failed to verify a CA-signed CertRep ("PKCS7 routines::certificate
//!   verify error") although `openssl smime -verify` accepted it; it succeeds against an RA.
//!   Apple's client needs the RA as the signer anyway, so the responder always has one. The
//!   daemon also needs the CA data fetched before a request is added, or the request sticks
//!   in CA_UNCONFIGURED without an RA certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::scep_clients::{enroll, tools, Client};
use lanyard_pki::scep::{FailInfo, IssueDecision, MessageType, ScepResponder};
use lanyard_pki::{Ca, CertInfo};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

/// Are `client`'s programs installed? A loud skip otherwise (a failure under `CI=true`).
fn require(client: Client, test: &str) -> bool {
    tools(client)
        .iter()
        .all(|tool| common::require_tool(tool, test))
}

const CHALLENGE: &str = "s3cret-challenge";

/// The SCEP service state the HTTP thread serves.
struct Service {
    ca: Ca,
    ra: (X509, PKey<Private>),
    log: Mutex<Vec<String>>,
}

impl Service {
    fn new() -> Arc<Service> {
        let ca = Ca::generate("Lanyard SCEP Interop CA", "Lanyard").unwrap();
        let ra = ca.issue_scep_ra("Lanyard SCEP RA", 30).unwrap();
        let ra = (
            X509::from_der(&ra.cert_der).unwrap(),
            PKey::private_key_from_pem(ra.key_pem.as_bytes()).unwrap(),
        );
        Arc::new(Service {
            ca,
            ra,
            log: Mutex::new(Vec::new()),
        })
    }

    fn responder(&self) -> ScepResponder<'_> {
        ScepResponder::new(
            &self.ca,
            &self.ra.0,
            &self.ra.1,
            Some(self.ca.private_key()),
        )
    }

    fn log(&self, line: String) {
        eprintln!("[scep-server] {line}");
        self.log.lock().unwrap().push(line);
    }

    /// (status, content type, body) for one request.
    fn handle(&self, method: &str, query: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        let params = parse_query(query);
        let op = params
            .iter()
            .find(|(k, _)| k == "operation")
            .map(|(_, v)| v.as_str());
        let responder = self.responder();
        let result = match op {
            Some("GetCACaps") => Ok(responder.ca_caps()),
            Some("GetCACert") => responder.ca_cert(),
            Some("PKIOperation") => {
                let msg = if method == "POST" {
                    body.to_vec()
                } else {
                    let m = params
                        .iter()
                        .find(|(k, _)| k == "message")
                        .map(|(_, v)| v.replace(' ', "+"))
                        .unwrap_or_default();
                    use base64::Engine as _;
                    let cleaned: String = m.chars().filter(|c| !c.is_whitespace()).collect();
                    match base64::engine::general_purpose::STANDARD.decode(cleaned) {
                        Ok(b) => b,
                        Err(e) => {
                            return (
                                400,
                                "text/plain".into(),
                                format!("bad message: {e}").into_bytes(),
                            )
                        }
                    }
                };
                responder.pki_operation(&msg, |req, csr| {
                    self.log(format!(
                        "PKIOperation {:?} tx={} subject={:?} digest={:?} cipher={:?}",
                        req.message_type,
                        req.transaction_id,
                        csr.subject(),
                        req.digest,
                        req.cipher
                    ));
                    match req.message_type {
                        MessageType::PkcsReq if csr.challenge_password() == Some(CHALLENGE) => {}
                        MessageType::RenewalReq
                            if req.signer_chains_to(self.ca.certificate()).unwrap_or(false) => {}
                        _ => return Err(FailInfo::BadRequest),
                    }
                    Ok(IssueDecision {
                        validity: std::time::Duration::from_secs(30 * 86_400),
                        subject_override: None,
                    })
                })
            }
            other => {
                return (
                    400,
                    "text/plain".into(),
                    format!("unknown operation {other:?}").into_bytes(),
                );
            }
        };
        match result {
            Ok(r) => {
                self.log(format!(
                    "{method} {op:?} -> 200 {} ({} bytes)",
                    r.content_type,
                    r.body.len()
                ));
                (200, r.content_type.to_string(), r.body)
            }
            Err(e) => {
                self.log(format!("{method} {op:?} -> 400 {e}"));
                (400, "text/plain".into(), e.to_string().into_bytes())
            }
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// A loopback HTTP/1.1 server, one connection at a time, stopped on drop.
struct TestServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    service: Arc<Service>,
}

impl TestServer {
    fn start(service: Arc<Service>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, svc) = (stop.clone(), service.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let _ = serve_conn(stream, &svc);
                }
            }
        });
        TestServer {
            port,
            stop,
            thread: Some(thread),
            service,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/scep", self.port)
    }

    fn log(&self) -> Vec<String> {
        self.service.log.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_conn(stream: TcpStream, svc: &Service) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut content_length = 0usize;
        let mut close = request_line.contains("HTTP/1.0");
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                } else if k == "connection" {
                    close = v.eq_ignore_ascii_case("close");
                }
            }
        }
        let mut body = vec![0u8; content_length.min(1 << 20)];
        reader.read_exact(&mut body)?;
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let (status, ctype, resp) = if path.ends_with("/scep")
            || path.ends_with("/scep/pkiclient.exe")
            || path.ends_with("/pkiclient.exe")
        {
            svc.handle(&method, query, &body)
        } else {
            (404, "text/plain".to_string(), b"not found".to_vec())
        };
        let reason = if status == 200 {
            "OK"
        } else if status == 404 {
            "Not Found"
        } else {
            "Bad Request"
        };
        write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            resp.len(),
            if close { "close" } else { "keep-alive" }
        )?;
        stream.write_all(&resp)?;
        stream.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// Assert that the PEM or DER certificate at `path` chains to the service's CA, and print it.
fn assert_issued_by_ca(path: &Path, svc: &Service, tool: &str) -> CertInfo {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("{tool}: no certificate at {path:?}: {e}"));
    let cert = lanyard_pki::parse_cert(&bytes).unwrap();
    let mut sb = openssl::x509::store::X509StoreBuilder::new().unwrap();
    sb.add_cert(svc.ca.certificate().clone()).unwrap();
    let store = sb.build();
    let chain = openssl::stack::Stack::new().unwrap();
    let mut ctx = openssl::x509::X509StoreContext::new().unwrap();
    let ok = ctx
        .init(&store, &cert, &chain, |c| c.verify_cert())
        .unwrap();
    assert!(
        ok,
        "{tool}: issued certificate does not chain to the test CA"
    );
    let info = CertInfo::from_x509(&cert).unwrap();
    eprintln!(
        "INTEROP {tool}: issued subject={:?} issuer={:?} serial={}",
        info.subject, info.issuer, info.serial_hex
    );
    info
}

fn print_output(tool: &str, ok: bool, out: &str, err: &str) {
    eprintln!(
        "---- {tool} (success={ok}) stdout ----\n{out}\n---- {tool} stderr ----\n{err}\n----"
    );
}

// ------------------------------------------------------------------------------------
// micromdm scepclient

#[test]
fn scepclient_with_ra() {
    let name = "scepclient_with_ra";
    if !require(Client::Scepclient, name) {
        return;
    }
    // scepclient 2.1 envelopes its request with single DES-CBC regardless of GetCACaps.
    lanyard_pki::scep::allow_legacy_des().unwrap();
    let server = TestServer::start(Service::new());
    let dir = common::tempdir();
    let run = enroll(
        Client::Scepclient,
        &server.url(),
        CHALLENGE,
        "dev1",
        dir.path(),
    );
    eprintln!("{}", run.output);
    assert!(run.ok, "scepclient failed");
    let info = assert_issued_by_ca(run.certificate.as_ref().unwrap(), &server.service, name);
    assert!(info.subject.contains("CN=dev1"), "{info:?}");
    assert!(server.log().iter().any(|l| l.contains("PkcsReq")));

    // the wrong challenge is refused with a FAILURE CertRep (in a directory of its own)
    let dir2 = common::tempdir();
    let run = enroll(
        Client::Scepclient,
        &server.url(),
        "wrong",
        "dev2",
        dir2.path(),
    );
    eprintln!("{}", run.output);
    assert!(
        !run.ok && run.certificate.is_none(),
        "a certificate was issued for a wrong challenge"
    );
    assert!(
        run.output.contains("FAILURE")
            || run.output.contains("badRequest")
            || run.output.contains("failure"),
        "expected a SCEP failure, got: {}",
        run.output
    );
}

// ------------------------------------------------------------------------------------
// strongSwan pki --scep

#[test]
fn strongswan_pki_with_ra() {
    let name = "strongswan_pki_with_ra";
    if !require(Client::StrongSwan, name) {
        return;
    }
    let server = TestServer::start(Service::new());
    let dir = common::tempdir();
    let run = enroll(
        Client::StrongSwan,
        &server.url(),
        CHALLENGE,
        "sswan-dev1",
        dir.path(),
    );
    eprintln!("{}", run.output);
    assert!(run.ok, "pki --scep failed");
    let info = assert_issued_by_ca(run.certificate.as_ref().unwrap(), &server.service, name);
    assert!(info.subject.contains("CN=sswan-dev1"), "{info:?}");
}

// ------------------------------------------------------------------------------------
// certmonger's scep-submit helper (the daemon's SCEP back end)

const SCEP_SUBMIT: &str = "/usr/lib/certmonger/scep-submit";

#[test]
fn certmonger_scep_submit_helper() {
    let name = "certmonger_scep_submit_helper";
    if !Path::new(SCEP_SUBMIT).exists() {
        // require_tool prints the loud SKIPPED line and enforces CI
        common::require_tool(SCEP_SUBMIT, name);
        return;
    }
    let server = TestServer::start(Service::new());
    // caps and CA certificate
    let (ok, out, err) = common::run(
        Command::new(SCEP_SUBMIT)
            .arg("-u")
            .arg(server.url())
            .arg("-c"),
    );
    print_output(&format!("{name} -c"), ok, &out, &err);
    assert!(
        ok && out.contains("POSTPKIOperation"),
        "scep-submit -c failed"
    );
    let (ok, out, err) = common::run(
        Command::new(SCEP_SUBMIT)
            .arg("-u")
            .arg(server.url())
            .arg("-C"),
    );
    print_output(&format!("{name} -C"), ok, &out, &err);
    assert!(
        ok && out.contains("BEGIN CERTIFICATE"),
        "scep-submit -C failed"
    );
    // RA and CA, as GetCACert served them
    let mut served: Vec<Vec<u8>> = X509::stack_from_pem(out.as_bytes())
        .unwrap()
        .iter()
        .map(|c| c.to_der().unwrap())
        .collect();
    served.sort();
    let mut expected = vec![
        server.service.ca.cert_der().unwrap(),
        server.service.ra.0.to_der().unwrap(),
    ];
    expected.sort();
    assert_eq!(served, expected, "scep-submit -C shows other certificates");
}

/// The full certmonger daemon enrolls through `getcert request`, which makes the PKCSReq
/// with OpenSSL and checks our CertRep with `PKCS7_verify`.
#[test]
fn certmonger_daemon_with_ra() {
    let name = "certmonger_daemon_with_ra";
    if !require(Client::Certmonger, name) {
        return;
    }
    let server = TestServer::start(Service::new());
    let dir = common::tempdir();
    let run = enroll(
        Client::Certmonger,
        &server.url(),
        CHALLENGE,
        "cmdev",
        dir.path(),
    );
    eprintln!("{}", run.output);
    assert!(run.ok, "getcert request failed or did not reach MONITORING");
    let info = assert_issued_by_ca(run.certificate.as_ref().unwrap(), &server.service, name);
    assert!(info.subject.contains("CN=cmdev"), "{info:?}");
}

/// Not a test: serves the SCEP test service for manual client experiments, e.g.
/// `LANYARD_SCEP_SERVE_SECS=120 cargo test -p lanyard-pki --test scep_interop
/// serve_for_manual_testing -- --ignored --nocapture`, then
/// `/usr/lib/certmonger/scep-submit -u URL -r DIR/ra.pem -N DIR/ca.pem -p DIR/pkcsreq.pem`.
#[test]
#[ignore]
fn serve_for_manual_testing() {
    let secs: u64 = std::env::var("LANYARD_SCEP_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let server = TestServer::start(Service::new());
    let tmp = common::tempdir();
    let dir = tmp.path().display().to_string();
    std::fs::write(
        format!("{dir}/ca.pem"),
        server.service.ca.cert_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(
        format!("{dir}/ra.pem"),
        server.service.ra.0.to_pem().unwrap(),
    )
    .unwrap();
    // a ready-made PKCSReq for clients that take one (certmonger's scep-submit -p)
    let (msg, _key) = make_pkcs_req(&server.service, "manual-dev");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&msg);
    std::fs::write(
        format!("{dir}/pkcsreq.pem"),
        format!("-----BEGIN PKCS7-----\n{b64}\n-----END PKCS7-----\n"),
    )
    .unwrap();
    eprintln!(
        "SCEP test server at {} for {secs}s (challenge {CHALLENGE:?})",
        server.url()
    );
    std::thread::sleep(Duration::from_secs(secs));
}

/// A PKCSReq made with Lanyard's client-side encoder, encrypted to the service's RA.
fn make_pkcs_req(svc: &Service, cn: &str) -> (Vec<u8>, PKey<Private>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut nb = X509NameBuilder::new().unwrap();
    nb.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = nb.build();
    let csr = lanyard_pki::build_csr(&key, &name, Some(CHALLENGE)).unwrap();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let me = b.build();
    let recipient = &svc.ra.0;
    let (msg, _nonce) = lanyard_pki::scep::encode_pki_message(
        MessageType::PkcsReq,
        &csr,
        &me,
        &key,
        recipient,
        "manual-tx-1",
        openssl::symm::Cipher::aes_256_cbc(),
    )
    .unwrap();
    (msg, key)
}
