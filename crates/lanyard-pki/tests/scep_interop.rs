//! SCEP interop: independent SCEP clients enroll against Lanyard's codec.
//!
//! A tiny HTTP/1.1 server (std only, loopback, port 0) serves `/scep` with
//! [`lanyard_pki::scep::ScepResponder`] over a throwaway test CA, and each client is run
//! against it: micromdm's `scepclient` (Go, Debian package `scep`), strongSwan's
//! `pki --scep` (C, `strongswan-pki` + `libstrongswan-standard-plugins` +
//! `libstrongswan-extra-plugins`) and certmonger's `scep-submit` helper (C, OpenSSL,
//! Debian `certmonger`). Each test asserts that the certificate the client wrote chains to
//! the test CA. A missing tool prints a loud SKIPPED line (and fails when `CI=true`).
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
//! - certmonger with the CA as the only SCEP certificate (GetCACert answers a single
//!   `x-x509-ca-cert`) fails to verify the CertRep ("PKCS7 routines::certificate verify
//!   error") although `openssl smime -verify` accepts the same reply with the same CA; it
//!   succeeds when the CA is also passed as an extra certificate (`scep-submit -I`) and it
//!   succeeds against an RA. Lanyard therefore serves an RA (`Ca::issue_scep_ra`,
//!   `ScepResponder::with_ra`) in production; the CA-only responder is tested with
//!   scepclient and strongSwan only. The daemon also needs the CA data fetched before a
//!   request is added, or the request sticks in CA_UNCONFIGURED without an RA certificate.
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

use lanyard_pki::openssl::pkey::{PKey, Private};
use lanyard_pki::openssl::x509::X509;
use lanyard_pki::scep::{FailInfo, IssueDecision, MessageType, ScepResponder};
use lanyard_pki::{Ca, CertInfo};

const CHALLENGE: &str = "s3cret-challenge";

/// The SCEP service state the HTTP thread serves.
struct Service {
    ca: Ca,
    ra: Option<(X509, PKey<Private>)>,
    log: Mutex<Vec<String>>,
}

impl Service {
    fn new(with_ra: bool) -> Arc<Service> {
        let ca = Ca::generate("Lanyard SCEP Interop CA", "Lanyard").unwrap();
        let ra = with_ra.then(|| {
            let ra = ca.issue_scep_ra("Lanyard SCEP RA", 30).unwrap();
            (
                X509::from_der(&ra.cert_der).unwrap(),
                PKey::private_key_from_pem(ra.key_pem.as_bytes()).unwrap(),
            )
        });
        Arc::new(Service {
            ca,
            ra,
            log: Mutex::new(Vec::new()),
        })
    }

    fn responder(&self) -> ScepResponder<'_> {
        match &self.ra {
            None => ScepResponder::with_ca(&self.ca),
            Some((cert, key)) => {
                ScepResponder::with_ra(&self.ca, cert, key, Some(self.ca.private_key()))
            }
        }
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
    let mut sb = lanyard_pki::openssl::x509::store::X509StoreBuilder::new().unwrap();
    sb.add_cert(svc.ca.certificate().clone()).unwrap();
    let store = sb.build();
    let chain = lanyard_pki::openssl::stack::Stack::new().unwrap();
    let mut ctx = lanyard_pki::openssl::x509::X509StoreContext::new().unwrap();
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

fn run_scepclient(with_ra: bool) {
    let name = if with_ra {
        "scepclient_with_ra"
    } else {
        "scepclient_with_ca_signer"
    };
    if !common::require_tool("scepclient", name) {
        return;
    }
    // scepclient 2.1 envelopes its request with single DES-CBC regardless of GetCACaps.
    lanyard_pki::scep::allow_legacy_des().unwrap();
    let server = TestServer::start(Service::new(with_ra));
    let dir = common::tempdir();
    let key = dir.path().join("k.pem");
    let cert = dir.path().join("c.pem");
    let (ok, out, err) = common::run(
        Command::new("scepclient")
            .arg("-server-url")
            .arg(server.url())
            .args(["-challenge", CHALLENGE, "-cn", "dev1"])
            .arg("-private-key")
            .arg(&key)
            .arg("-certificate")
            .arg(&cert),
    );
    print_output(name, ok, &out, &err);
    assert!(ok, "scepclient failed");
    let info = assert_issued_by_ca(&cert, &server.service, name);
    assert!(info.subject.contains("CN=dev1"), "{info:?}");
    assert!(server.log().iter().any(|l| l.contains("PkcsReq")));

    // the wrong challenge is refused with a FAILURE CertRep (scepclient keeps csr.pem and
    // self.pem next to the key, so the second run needs its own directory)
    let dir2 = common::tempdir();
    let key2 = dir2.path().join("k2.pem");
    let cert2 = dir2.path().join("c2.pem");
    let (ok, out, err) = common::run(
        Command::new("scepclient")
            .arg("-server-url")
            .arg(server.url())
            .args(["-challenge", "wrong", "-cn", "dev2"])
            .arg("-private-key")
            .arg(&key2)
            .arg("-certificate")
            .arg(&cert2),
    );
    print_output(&format!("{name} (wrong challenge)"), ok, &out, &err);
    assert!(
        !cert2.exists(),
        "a certificate was issued for a wrong challenge"
    );
    let all = format!("{out}{err}");
    assert!(
        all.contains("FAILURE") || all.contains("badRequest") || all.contains("failure"),
        "expected a SCEP failure, got: {all}"
    );
}

#[test]
fn scepclient_with_ca_signer() {
    run_scepclient(false);
}

#[test]
fn scepclient_with_ra() {
    run_scepclient(true);
}

// ------------------------------------------------------------------------------------
// strongSwan pki --scep

fn run_strongswan(with_ra: bool) {
    let name = if with_ra {
        "strongswan_pki_with_ra"
    } else {
        "strongswan_pki_with_ca_signer"
    };
    if !common::require_tool("pki", name) {
        return;
    }
    let server = TestServer::start(Service::new(with_ra));
    let dir = common::tempdir();
    let d = dir.path();
    let (ok, out, err) = common::run(
        Command::new("pki")
            .args(["--scepca", "--url"])
            .arg(server.url())
            .arg("--caout")
            .arg(d.join("ca"))
            .arg("--raout")
            .arg(d.join("ra"))
            .arg("--force"),
    );
    print_output(&format!("{name} --scepca"), ok, &out, &err);
    assert!(ok, "pki --scepca failed");
    let files: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    eprintln!("pki --scepca wrote {files:?}");
    // pki names the files after --caout/--raout (some versions append ".der" or "-N.der")
    let ca_name = files
        .iter()
        .find(|f| f.starts_with("ca"))
        .expect("no CA certificate written");
    let ca_file = d.join(ca_name);
    let (enc, sig) = if with_ra {
        let ra = files
            .iter()
            .find(|f| f.starts_with("ra"))
            .expect("no RA certificate written");
        (d.join(ra), d.join(ra))
    } else {
        assert!(
            !files.iter().any(|f| f.starts_with("ra")),
            "RA certificate without an RA: {files:?}"
        );
        (ca_file.clone(), ca_file.clone())
    };
    let (ok, key_pem, err) = common::run(Command::new("pki").args([
        "--gen",
        "--type",
        "rsa",
        "--size",
        "2048",
        "--outform",
        "pem",
    ]));
    assert!(ok, "pki --gen: {err}");
    let key = common::write(d, "k.pem", key_pem.as_bytes());
    let cert = d.join("c.pem");
    let (ok, out, err) = common::run(
        Command::new("pki")
            .args(["--scep", "--url"])
            .arg(server.url())
            .arg("--in")
            .arg(&key)
            .args(["--dn", "CN=sswan-dev1", "--password", CHALLENGE])
            .arg("--cacert-enc")
            .arg(&enc)
            .arg("--cacert-sig")
            .arg(&sig)
            .arg("--cacert")
            .arg(&ca_file)
            .args(["--outform", "pem"]),
    );
    print_output(name, ok, "(certificate on stdout)", &err);
    assert!(ok, "pki --scep failed: {out} {err}");
    std::fs::write(&cert, out.as_bytes()).unwrap();
    let info = assert_issued_by_ca(&cert, &server.service, name);
    assert!(info.subject.contains("CN=sswan-dev1"), "{info:?}");
}

#[test]
fn strongswan_pki_with_ca_signer() {
    run_strongswan(false);
}

#[test]
fn strongswan_pki_with_ra() {
    run_strongswan(true);
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
    let server = TestServer::start(Service::new(false));
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
    let ca = lanyard_pki::parse_cert(out.as_bytes()).unwrap();
    assert_eq!(ca.to_der().unwrap(), server.service.ca.cert_der().unwrap());
}

/// The full certmonger daemon (session mode on a private D-Bus, state under a temporary
/// HOME) enrolls through `getcert request`, which makes the PKCSReq with OpenSSL and checks
/// our CertRep with `PKCS7_verify`.
fn run_certmonger(with_ra: bool) {
    let name = if with_ra {
        "certmonger_daemon_with_ra"
    } else {
        "certmonger_daemon_with_ca_signer"
    };
    for tool in ["certmonger", "getcert", "dbus-run-session", "dbus-send"] {
        if !common::require_tool(tool, name) {
            return;
        }
    }
    let server = TestServer::start(Service::new(with_ra));
    let dir = common::tempdir();
    let d = dir.path();
    let key = d.join("cm.key");
    let crt = d.join("cm.crt");
    for sub in ["cas", "requests", "local", "config"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    // Wait for the name with dbus-send rather than getcert: a getcert call before the
    // daemon owns its name would D-Bus-activate a second certmonger.
    let script = format!(
        r#"set -u
certmonger -s -n -d 1 > "{d}/certmonger.log" 2>&1 &
CM=$!
for i in $(seq 1 100); do
  dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.NameHasOwner string:org.fedorahosted.certmonger 2>/dev/null | grep -q true && break
  sleep 0.1
done
getcert add-scep-ca -s -c lanyard-test -u "{url}"
# let the daemon fetch the CA's capabilities and certificates before the request, or the
# request can go out without an RA certificate and get stuck in CA_UNCONFIGURED
for i in $(seq 1 100); do
  getcert list-cas -s -c lanyard-test | grep -q "BEGIN CERTIFICATE" && break
  sleep 0.1
done
getcert list-cas -s -c lanyard-test
timeout 60 getcert request -s -c lanyard-test -k "{key}" -f "{crt}" -L "{chal}" -N CN=cmdev -w -v
rc=$?
getcert list -s
kill $CM
wait $CM 2>/dev/null
exit $rc
"#,
        d = d.display(),
        url = server.url(),
        key = key.display(),
        crt = crt.display(),
        chal = CHALLENGE,
    );
    let (ok, out, err) = common::run(
        Command::new("dbus-run-session")
            .args(["--", "bash", "-c", &script])
            .env("HOME", d)
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("XDG_RUNTIME_DIR", d)
            // keep certmonger's state out of /var/lib/certmonger
            .env("CERTMONGER_CAS_DIR", d.join("cas"))
            .env("CERTMONGER_REQUESTS_DIR", d.join("requests"))
            .env("CERTMONGER_LOCAL_CA_DIR", d.join("local"))
            .env("CERTMONGER_CONFIG_DIR", d.join("config"))
            .env("CERTMONGER_SYSTEM_LOCK_FILE", d.join("lock")),
    );
    print_output(name, ok, &out, &err);
    if !ok {
        let log = std::fs::read_to_string(d.join("certmonger.log")).unwrap_or_default();
        eprintln!("---- certmonger.log ----\n{log}");
        for e in std::fs::read_dir(d.join("cas")).unwrap() {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains("lanyard-test") {
                eprintln!("---- certmonger CA entry {:?} ----\n{text}", e.file_name());
            }
        }
    }
    assert!(ok, "getcert request failed");
    assert!(
        out.contains("status: MONITORING"),
        "certmonger did not reach MONITORING"
    );
    let info = assert_issued_by_ca(&crt, &server.service, name);
    assert!(info.subject.contains("CN=cmdev"), "{info:?}");
}

#[test]
fn certmonger_daemon_with_ra() {
    run_certmonger(true);
}

/// Not a test: serves the SCEP test service for manual client experiments, e.g.
/// `LANYARD_SCEP_SERVE_SECS=120 cargo test -p lanyard-pki --test scep_interop
/// serve_for_manual_testing -- --ignored --nocapture` (set `LANYARD_SCEP_RA=1` for an RA),
/// then `/usr/lib/certmonger/scep-submit -u URL -r DIR/ca.pem -p DIR/pkcsreq.pem`.
#[test]
#[ignore]
fn serve_for_manual_testing() {
    let secs: u64 = std::env::var("LANYARD_SCEP_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let with_ra = std::env::var("LANYARD_SCEP_RA").is_ok();
    let server = TestServer::start(Service::new(with_ra));
    let tmp = common::tempdir();
    let dir = tmp.path().display().to_string();
    std::fs::write(
        format!("{dir}/ca.pem"),
        server.service.ca.cert_pem().unwrap(),
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

/// A PKCSReq made with Lanyard's client-side encoder, encrypted to the service's CA/RA.
fn make_pkcs_req(svc: &Service, cn: &str) -> (Vec<u8>, PKey<Private>) {
    use lanyard_pki::openssl::asn1::Asn1Time;
    use lanyard_pki::openssl::bn::BigNum;
    use lanyard_pki::openssl::hash::MessageDigest;
    use lanyard_pki::openssl::nid::Nid;
    use lanyard_pki::openssl::rsa::Rsa;
    use lanyard_pki::openssl::x509::{X509Builder, X509NameBuilder};
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
    let recipient = svc
        .ra
        .as_ref()
        .map(|(c, _)| c)
        .unwrap_or(svc.ca.certificate());
    let (msg, _nonce) = lanyard_pki::scep::encode_pki_message(
        MessageType::PkcsReq,
        &csr,
        &me,
        &key,
        recipient,
        "manual-tx-1",
        lanyard_pki::openssl::symm::Cipher::aes_256_cbc(),
    )
    .unwrap();
    (msg, key)
}
