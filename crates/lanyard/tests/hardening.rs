#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Hostile clients against the real `lanyard serve`, on both databases: a signed device body
//! built to exhaust the stack is refused with 400 and the server keeps serving; connections that
//! never finish a request (silent, dribbling headers, withholding the body, idle after a request,
//! on HTTP/1.1 and HTTP/2) are closed while others are served; the connection cap holds.

mod support;

use rstest::rstest;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lanyard_testkit::sim::{SimMac, SimOptions, CHECKIN_CONTENT_TYPE, COMMAND_CONTENT_TYPE};
use lanyard_testkit::Step;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::{Db, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

fn sim(s: &Server) -> SimMac {
    SimMac::new(SimOptions {
        ownership: lanyard_testkit::sim::Ownership::Employee,
        attrs: BTreeMap::new(),
        os_version: "15.2".into(),
        ca_cert_pem: Some(s.ca_pem()),
        ..SimOptions::new(s.url.clone(), "ann@example.com", "a long password")
    })
    .unwrap()
}

async fn setup(db: Db, env: &[(&str, &str)]) -> Option<Server> {
    let s = Server::start_with(db, env).await?;
    s.upload_push_certificate();
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", "ann@example.com", "--password", "-"],
        "a long password\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = s.cli(&["settings", "set", "managed-domains", "example.com"]);
    assert!(ok, "{err}");
    Some(s)
}

/// A device body with the enrolled Mac's identity whose `K` holds `<x:array>` nested `depth`
/// deep: the shape that once aborted the server (a stack overflow in the plist reader).
fn deeply_nested(message: &str, enrollment_id: &str, depth: usize) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>\
         {message}<key>EnrollmentID</key><string>{enrollment_id}</string>\
         <key>K</key>{}{}</dict></plist>",
        "<x:array>".repeat(depth),
        "</x:array>".repeat(depth)
    )
    .into_bytes()
}

#[rstest]
#[tokio::test]
async fn deep_nesting_is_refused(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = setup(db, &[]).await else {
        return;
    };
    let mut mac = sim(&s);
    mac.enroll().await.unwrap();
    let mdm = mac.profile().unwrap().mdm.clone();
    let id = mac.enrollment_id().to_string();
    let checkin = "<key>MessageType</key><string>Authenticate</string><key>Topic</key>\
                   <string>t</string>";
    let report = "<key>Status</key><string>Idle</string>";
    // As deep as each endpoint's body cap allows (check-ins 512 KiB, command reports 2 MiB).
    for (url, content_type, message, depth, cap) in [
        (
            &mdm.checkin_url,
            CHECKIN_CONTENT_TYPE,
            checkin,
            24_000,
            512 * 1024,
        ),
        (
            &mdm.server_url,
            COMMAND_CONTENT_TYPE,
            report,
            35_000,
            2 * 1024 * 1024,
        ),
    ] {
        // Repeated: one such request used to take every device down until a restart.
        for _ in 0..3 {
            let body = deeply_nested(message, &id, depth);
            assert!(body.len() > 400_000 && body.len() < cap, "{}", body.len());
            let (status, _, answer) = mac
                .put_signed(Step::CheckIn, url, content_type, body)
                .await
                .unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert_eq!(status, 400, "{url}: {answer}");
            assert!(
                answer.contains("element <x:array> has a namespace prefix"),
                "{url}: {answer}"
            );
        }
        // The server is still up and the same Mac's ordinary exchange works.
        assert!(mac.idle().await.unwrap().is_none());
    }
    let health = s
        .client()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Slow clients: connections that never finish a request are closed while others are served.

/// Opens a TLS connection to the server (trusting its CA) offering `alpn`.
async fn tls_connect(s: &Server, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&s.ca_pem()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let addr = s.url.trim_start_matches("https://");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Generous: every limit in these tests is one second.
const CLOSED_WITHIN: Duration = Duration::from_secs(30);

/// Reads until the server closes the connection (end of stream or a reset), which must happen
/// within [`CLOSED_WITHIN`]; returns what was read.
async fn closed_by_server(mut conn: TlsStream<TcpStream>, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(CLOSED_WITHIN, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{what}: still open after {CLOSED_WITHIN:?}");
    seen
}

/// Sends `head` and then one more header byte every 200 ms, never finishing the request, until
/// the server closes the connection (within [`CLOSED_WITHIN`]).
async fn dribble_until_closed(mut conn: TlsStream<TcpStream>, head: &[u8]) {
    conn.write_all(head).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < CLOSED_WITHIN,
            "a client dribbling headers is still connected after {CLOSED_WITHIN:?}"
        );
        if conn.write_all(b"a").await.is_err() || conn.flush().await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => panic!(
                "the server answered an unfinished request: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {} // nothing yet: dribble on
        }
    }
}

/// `GET /healthz` from an ordinary client succeeds (a few tries: with one-second limits, a
/// busy test machine may stall one attempt).
async fn served(s: &Server) {
    let mut last = String::new();
    for _ in 0..5 {
        match s.client().get(format!("{}/healthz", s.url)).send().await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = format!("{e:#}"),
        }
    }
    panic!("an ordinary request was not served: {last}");
}

const ONE_SECOND_LIMITS: [(&str, &str); 3] = [
    ("LANYARD_HEADER_READ_TIMEOUT", "1"),
    ("LANYARD_IDLE_TIMEOUT", "1"),
    ("LANYARD_BODY_READ_TIMEOUT", "1"),
];

#[rstest]
#[tokio::test]
async fn slow_clients_are_dropped(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = Server::start_with(db, &ONE_SECOND_LIMITS).await else {
        return;
    };
    // Opened together, before any of them can have timed out.
    let silent = tls_connect(&s, b"http/1.1").await;
    let dribbler = tls_connect(&s, b"http/1.1").await;
    let mut no_body = tls_connect(&s, b"http/1.1").await;
    let mut keep_alive = tls_connect(&s, b"http/1.1").await;
    let mut h2_silent = tls_connect(&s, b"h2").await;
    assert_eq!(h2_silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // A request head whose body (1,000 bytes announced) never comes.
    no_body
        .write_all(
            b"PUT /mdm/checkin HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/x-apple-aspen-mdm-checkin\r\n\
              Content-Length: 1000\r\n\r\n<?xml version=",
        )
        .await
        .unwrap();
    // One complete request, then nothing on a kept-alive connection.
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // HTTP/2: the connection preface and an empty SETTINGS frame, then nothing.
    h2_silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();

    // Others are served meanwhile.
    served(&s).await;

    let dribbling = tokio::spawn(dribble_until_closed(
        dribbler,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    ));
    closed_by_server(silent, "a silent connection").await;
    let answer = closed_by_server(no_body, "a request whose body never comes").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("not received within"),
        "the body timeout answers 400 before closing: {answer}"
    );
    let answer = closed_by_server(keep_alive, "an idle kept-alive connection").await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "the complete request was answered before the connection was closed"
    );
    closed_by_server(h2_silent, "a silent HTTP/2 connection").await;
    dribbling.await.unwrap();

    served(&s).await;
    s.stop().await;
}

/// With `LANYARD_MAX_CONNECTIONS=3`, three open connections take every slot: a fourth is closed
/// at once; when they go, ordinary requests are served again.
#[rstest]
#[tokio::test]
async fn connections_are_capped(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    // Long timeouts, so the held connections cannot time out before the fourth is tried.
    let env = [
        ("LANYARD_MAX_CONNECTIONS", "3"),
        ("LANYARD_HEADER_READ_TIMEOUT", "120"),
        ("LANYARD_IDLE_TIMEOUT", "120"),
    ];
    let Some(s) = Server::start_with(db, &env).await else {
        return;
    };
    // Completed handshakes: the server holds a slot for each.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(&s, b"http/1.1").await);
    }
    let refused = s.client().get(format!("{}/healthz", s.url)).send().await;
    assert!(
        refused.is_err(),
        "a fourth connection was served: {refused:?}"
    );
    drop(held);
    let started = std::time::Instant::now();
    loop {
        match s.client().get(format!("{}/healthz", s.url)).send().await {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                started.elapsed() < CLOSED_WITHIN,
                "slots were not freed when their connections closed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}
