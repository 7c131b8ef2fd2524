#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Independent SCEP clients get the identity of an end-to-end enrollment from a running
//! `lanyard serve`, on SQLite and PostgreSQL.
//!
//! Each test: the simulated Mac discovers the server, is challenged (401 `apple-as-web`),
//! signs in on the web pages and fetches the signed enrollment profile
//! ([`SimMac::obtain_profile`]), and stops there. An independent SCEP client (micromdm's
//! `scepclient`, strongSwan's `pki --scep`, or the certmonger daemon) then enrolls with the
//! profile's one-time challenge against the server's `/scep`, and the Mac installs the profile
//! with the identity that client got and checks in with it ([`SimMac::install_profile`]).
//!
//! The clients reach `/scep` through a recording relay: a plain-HTTP front (strongSwan's
//! fetcher cannot be told to trust Lanyard's TLS CA) that forwards each request unchanged to
//! the server over TLS, as a TLS-terminating proxy does, and keeps every answer. So the test
//! reads the very CertReps each client accepted and checks with OpenSSL that they are signed
//! by the RA from GetCACert, which Apple's client requires (`SecSCEPVerifyReply`).
//!
//! Asserted for every client: the certificate it wrote chains to Lanyard's CA (`openssl
//! verify`); the enrollment shows that certificate's serial and SHA-256 (`lanyard device show
//! --json`); every PKIOperation answer is signed by the GetCACert RA (`openssl cms -verify
//! -signer`); the identity signs check-ins the server accepts (the enrollment becomes
//! `enrolled` and the command channel answers); and, for `scepclient` and strongSwan, the spent
//! challenge is refused on a second run. A missing tool is a loud skip, a failure under
//! `CI=true`.

mod support;

use rstest::rstest;

#[path = "../../lanyard-pki/tests/common/mod.rs"]
mod pki_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lanyard_pki::CertInfo;
use lanyard_pki::{PKey, X509};
use lanyard_testkit::{SimMac, SimOptions};
use pki_common::scep_clients::{self, Client};
use serde_json::Value;
use support::{Db, Server};

const ANN: &str = "ann@example.com";
const PASSWORD: &str = "a long enough password";

/// The profile identifier Lanyard gives an enrollment's profile: this prefix and its id.
const PROFILE_ID_PREFIX: &str = "org.lanyard.enrollment.";

// ---------------------------------------------------------------------------------------
// the recording relay

/// One request the relay forwarded, and the server's answer.
#[derive(Debug, Clone)]
struct Exchange {
    method: String,
    /// Path and query as the client sent them.
    target: String,
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Exchange {
    fn operation(&self) -> Option<&str> {
        let query = self.target.split_once('?')?.1;
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("operation="))
    }
}

/// A plain-HTTP listener on loopback that forwards every request (method, path and query,
/// `Content-Type`, body) unchanged to `upstream` over TLS, answers with the upstream status,
/// `Content-Type` and body, and records each exchange. One connection at a time, each closed
/// after its answer. Stopped on drop.
struct Relay {
    port: u16,
    log: Arc<Mutex<Vec<Exchange>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: &str, ca_pem: Vec<u8>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2, upstream) = (log.clone(), stop.clone(), upstream.to_owned());
        let thread = std::thread::spawn(move || {
            // Its own runtime and client: the tests block their own thread on the clients.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
                .build()
                .unwrap();
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    if let Err(e) = relay_one(stream, &rt, &client, &upstream, &log2) {
                        eprintln!("[relay] {e}");
                    }
                }
            }
        });
        Relay {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// The SCEP URL the clients are given.
    fn scep_url(&self) -> String {
        format!("http://127.0.0.1:{}/scep", self.port)
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay_one(
    stream: TcpStream,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    upstream: &str,
    log: &Mutex<Vec<Exchange>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let (mut content_length, mut content_type, mut expect_continue) = (0usize, None, false);
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
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = Some(v.trim().to_owned()),
                "expect" => expect_continue = v.trim().eq_ignore_ascii_case("100-continue"),
                _ => {}
            }
        }
    }
    if expect_continue {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    reader.read_exact(&mut body)?;

    let method_value = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| std::io::Error::other(format!("method {method:?}: {e}")))?;
    let url = format!("{upstream}{target}");
    let (status, answer_type, answer) = rt
        .block_on(async {
            let mut rb = client.request(method_value, &url).body(body);
            if let Some(ct) = &content_type {
                rb = rb.header(reqwest::header::CONTENT_TYPE, ct);
            }
            let resp = rb.send().await?;
            let status = resp.status();
            let ct = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Ok::<_, reqwest::Error>((status, ct, resp.bytes().await?.to_vec()))
        })
        .map_err(|e| std::io::Error::other(format!("forwarding {method} {target}: {e}")))?;
    eprintln!(
        "[relay] {method} {target} -> {} {answer_type} ({} bytes)",
        status.as_u16(),
        answer.len()
    );
    log.lock().unwrap().push(Exchange {
        method,
        target,
        status: status.as_u16(),
        content_type: answer_type.clone(),
        body: answer.clone(),
    });
    write!(
        stream,
        "HTTP/1.1 {} {}\r\nContent-Type: {answer_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Unknown"),
        answer.len()
    )?;
    stream.write_all(&answer)?;
    stream.flush()
}

// ---------------------------------------------------------------------------------------
// helpers

fn cli_ok(s: &Server, args: &[&str]) -> String {
    let (ok, out, err) = s.cli(args);
    assert!(ok, "lanyard {} failed: {err}", args.join(" "));
    out
}

/// A server with Ann and the managed domain example.com; `env` for `lanyard serve`.
async fn start(db: Db, env: &[(&str, &str)]) -> Option<Server> {
    let s = Server::start_with(db, env).await?;
    s.upload_push_certificate();
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", ANN, "--password", "-"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "user add: {err}");
    cli_ok(&s, &["settings", "set", "managed-domains", "example.com"]);
    Some(s)
}

/// `lanyard device show <id> --json`'s enrollment.
fn enrollment(s: &Server, id: &str) -> Value {
    let out = cli_ok(s, &["device", "show", id, "--json"]);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("device show --json is not JSON ({e}): {out}"));
    v["enrollment"].clone()
}

fn require(client: Client, test: &str) -> bool {
    scep_clients::tools(client)
        .iter()
        .chain(&["openssl"])
        .all(|tool| pki_common::require_tool(tool, test))
}

fn openssl(args: &[&str], files: &[&Path]) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    for f in files {
        cmd.arg(f);
    }
    let (ok, out, err) = pki_common::run(&mut cmd);
    (ok, format!("{out}{err}"))
}

/// The certificates of the GetCACert answer the client got, split into CA (self-issued) and
/// RA by OpenSSL's reading of the degenerate PKCS#7.
fn served_ca_and_ra(exchanges: &[Exchange], dir: &Path) -> (X509, X509) {
    let get_ca_cert = exchanges
        .iter()
        .find(|e| e.operation() == Some("GetCACert"))
        .expect("the client never asked GetCACert");
    assert_eq!(get_ca_cert.status, 200);
    assert_eq!(get_ca_cert.content_type, "application/x-x509-ca-ra-cert");
    let p7 = dir.join("getcacert.p7b");
    std::fs::write(&p7, &get_ca_cert.body).unwrap();
    let (ok, text) = openssl(&["pkcs7", "-inform", "DER", "-print_certs", "-in"], &[&p7]);
    assert!(ok, "openssl pkcs7: {text}");
    let certs = X509::stack_from_pem(text.as_bytes()).unwrap();
    assert_eq!(certs.len(), 2, "GetCACert should serve CA and RA: {text}");
    let (ca, ra): (Vec<X509>, Vec<X509>) = certs
        .into_iter()
        .partition(|c| c.subject_name().to_der().unwrap() == c.issuer_name().to_der().unwrap());
    (
        ca.into_iter().next().unwrap(),
        ra.into_iter().next().unwrap(),
    )
}

/// Every PKIOperation answer the client got verifies with OpenSSL against the CA, and its one
/// signer is the RA from GetCACert. Returns how many there were.
fn assert_cert_reps_signed_by_ra(
    exchanges: &[Exchange],
    ca: &Path,
    ra: &X509,
    dir: &Path,
) -> usize {
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let mut n = 0;
    for (i, e) in exchanges
        .iter()
        .filter(|e| e.operation() == Some("PKIOperation"))
        .enumerate()
    {
        assert_eq!(e.status, 200, "{} {}", e.method, e.target);
        assert_eq!(e.content_type, "application/x-pki-message");
        let rep = dir.join(format!("certrep-{i}.der"));
        let signer = dir.join(format!("certrep-{i}-signer.pem"));
        std::fs::write(&rep, &e.body).unwrap();
        let verify = |detached: bool| {
            let mut cmd = Command::new("openssl");
            cmd.args([
                "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
            ])
            .args(["-out", "/dev/null", "-in"])
            .arg(&rep)
            .arg("-CAfile")
            .arg(ca)
            .arg("-signer")
            .arg(&signer);
            if detached {
                // a FAILURE CertRep carries no content; its digest is over nothing
                cmd.arg("-content").arg(&empty);
            }
            let (ok, out, err) = pki_common::run(&mut cmd);
            (ok, format!("{out}{err}"))
        };
        let (mut ok, mut text) = verify(false);
        if !ok && text.contains("content") {
            (ok, text) = verify(true);
        }
        assert!(
            ok && text.contains("Verification successful"),
            "openssl cms -verify of the CertRep: {text}"
        );
        let signers = X509::stack_from_pem(&std::fs::read(&signer).unwrap()).unwrap();
        assert_eq!(signers.len(), 1, "one signer expected");
        assert!(
            signers[0].to_der().unwrap() == ra.to_der().unwrap(),
            "the CertRep is signed by {:?}, not by the GetCACert RA {:?}",
            signers[0].subject_name(),
            ra.subject_name()
        );
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------------------
// the test

async fn client_gets_the_identity(db: Db, client: Client) {
    let test = format!("scep_serve {client:?} {db:?}");
    if !require(client, &test) {
        return;
    }
    // micromdm scepclient envelopes its request with single DES whatever GetCACaps says.
    let env: &[(&str, &str)] = if client == Client::Scepclient {
        &[("LANYARD_SCEP_ALLOW_DES", "true")]
    } else {
        &[]
    };
    let Some(s) = start(db, env).await else {
        return;
    };
    let ca_file = s.data_dir.path().join("ca.pem");
    let work = tempfile::tempdir().unwrap();

    // Discovery, the 401 challenge, the sign-in pages, the signed profile: then stop.
    let mut o = SimOptions::new(&s.url, ANN, PASSWORD);
    o.ca_cert_pem = Some(s.ca_pem());
    let mut mac = SimMac::new(o).unwrap();
    let obtained = mac
        .obtain_profile()
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}\n{}", mac.steps().join("\n")));
    assert!(obtained.access_token.is_some(), "no sign-in happened");
    let profile = &obtained.profile;
    assert_eq!(profile.scep.url, format!("{}/scep", s.url));
    assert!(!profile.scep.key_is_extractable);
    let challenge = profile.scep.challenge.clone().expect("no SCEP challenge");
    let id = profile
        .identifier
        .strip_prefix(PROFILE_ID_PREFIX)
        .expect("profile identifier")
        .to_owned();
    let pending = enrollment(&s, &id);
    assert_eq!(pending["status"], "pending");
    assert!(pending["identity_certificate_sha256"].is_null());

    // The independent client, with the profile's challenge, against the server's /scep.
    let relay = Relay::start(&s.url, s.ca_pem());
    let dir = tempfile::tempdir().unwrap();
    let run = scep_clients::enroll(client, &relay.scep_url(), &challenge, "dev1", dir.path());
    assert!(
        run.ok,
        "{test}: the client got no certificate\n{}",
        run.output
    );
    let cert_file = run.certificate.clone().unwrap();

    // The CertReps it accepted are signed by the RA it got from GetCACert.
    let exchanges = relay.exchanges();
    let (served_ca, ra) = served_ca_and_ra(&exchanges, work.path());
    assert_eq!(
        served_ca.to_der().unwrap(),
        X509::from_pem(&s.ca_pem()).unwrap().to_der().unwrap()
    );
    let n = assert_cert_reps_signed_by_ra(&exchanges, &ca_file, &ra, work.path());
    assert!(n >= 1, "{test}: no PKIOperation went through the relay");

    // The certificate chains to Lanyard's CA and is the enrollment's identity.
    let (ok, text) = openssl(&["verify", "-CAfile"], &[&ca_file, &cert_file]);
    assert!(ok && text.contains(": OK"), "openssl verify: {text}");
    let cert = X509::from_pem(&std::fs::read(&cert_file).unwrap()).unwrap();
    let info = CertInfo::from_x509(&cert).unwrap();
    assert!(
        info.subject.contains(&format!("CN=Lanyard Identity {id}")),
        "{info:?}"
    );
    let bound = enrollment(&s, &id);
    assert_eq!(
        bound["identity_certificate_serial"],
        info.serial_hex.as_str()
    );
    assert_eq!(bound["identity_certificate_sha256"], info.sha256.as_str());

    // The spent challenge is refused, and nothing changes.
    if client != Client::Certmonger {
        let dir2 = tempfile::tempdir().unwrap();
        let again =
            scep_clients::enroll(client, &relay.scep_url(), &challenge, "dev2", dir2.path());
        assert!(
            !again.ok && again.certificate.is_none(),
            "{test}: a second certificate for a spent challenge\n{}",
            again.output
        );
        let after = enrollment(&s, &id);
        assert_eq!(after["identity_certificate_sha256"], info.sha256.as_str());
        // That refusal too is signed by the RA.
        assert_cert_reps_signed_by_ra(&relay.exchanges(), &ca_file, &ra, work.path());
    }
    drop(relay);

    // The Mac installs the profile with that identity and checks in with it.
    let key = PKey::private_key_from_pem(&std::fs::read(&run.key).unwrap()).unwrap();
    let report = mac
        .install_profile(obtained, cert, key)
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}\n{}", mac.steps().join("\n")));
    assert_eq!(report.identity_certificate.sha256, info.sha256);
    let enrolled = enrollment(&s, &id);
    assert_eq!(enrolled["status"], "enrolled");
    assert_eq!(enrolled["enrollment_id"], mac.enrollment_id());
    assert_eq!(
        enrolled["identity_certificate_sha256"],
        info.sha256.as_str()
    );
    assert!(mac.idle().await.unwrap().is_none());

    drop(mac);
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn gets_the_identity(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
    #[values(Client::Scepclient, Client::StrongSwan, Client::Certmonger)] client: Client,
) {
    client_gets_the_identity(db, client).await;
}
