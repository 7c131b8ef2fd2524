#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The fake APNs is strict where Apple is: raw HTTP/2 requests, well-formed and not, and
//! what it answers to each.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use lanyard_testkit::fake_apns::{
    fake_push_certificate, fake_push_certificate_with, FakeApns, FakeApnsOptions,
    FakePushCertOptions, FakePushCertificate,
};
use openssl::pkey::PKey;
use openssl::x509::X509;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const TOPIC: &str = "com.apple.mgmt.External.1a2b3c4d-0000-4000-8000-0123456789ab";
const MAGIC_BODY: &str = r#"{"mdm":"MAGIC"}"#;

async fn connect(
    fake: &FakeApns,
    cert: Option<&FakePushCertificate>,
) -> Result<SendRequest<Bytes>, String> {
    let mut roots = RootCertStore::empty();
    let ca = X509::from_pem(fake.ca_pem().as_bytes()).unwrap();
    roots
        .add(CertificateDer::from(ca.to_der().unwrap()))
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => {
            let der = X509::from_pem(c.cert_pem.as_bytes())
                .unwrap()
                .to_der()
                .unwrap();
            let key = PKey::private_key_from_pem(c.key_pem.as_bytes())
                .unwrap()
                .private_key_to_pkcs8()
                .unwrap();
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(der)],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                )
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(fake.addr()).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (send, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    end_stream_on_headers: bool,
}

impl Answer {
    fn reason(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        v["reason"].as_str().unwrap().to_string()
    }
    fn apns_id(&self) -> String {
        self.headers["apns-id"].to_str().unwrap().to_string()
    }
}

async fn send(
    client: &SendRequest<Bytes>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, h2::Error> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut client = client.clone().ready().await?;
    let (resp, mut stream) = client.send_request(req.body(()).unwrap(), body.is_empty())?;
    if !body.is_empty() {
        stream.send_data(Bytes::from(body.to_string()), true)?;
    }
    let resp = resp.await?;
    let (parts, mut recv) = resp.into_parts();
    let end_stream_on_headers = recv.is_end_stream();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: out,
        end_stream_on_headers,
    })
}

/// Wait (up to 5 s) for `cond`, and fail if it never holds.
async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached within 5 s");
}

fn mdm_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("apns-topic", TOPIC), ("apns-push-type", "mdm")];
    h.extend_from_slice(extra);
    h
}

/// method, path, headers, body, expected status, expected reason
type Case<'a> = (
    Method,
    String,
    Vec<(&'a str, &'a str)>,
    &'a str,
    u16,
    &'a str,
);

fn path(token: &str) -> String {
    format!("/3/device/{token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepts_a_well_formed_push_with_an_empty_200() {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let client = connect(&fake, Some(&cert)).await.unwrap();
    let mut sub = fake.subscribe();
    let token = "0a".repeat(32);

    // With the client's own apns-id: echoed.
    let id = "6c0b7f52-2c8a-4d1e-9b0e-1d2c3b4a5f60";
    let a = send(
        &client,
        Method::POST,
        &path(&token),
        &mdm_headers(&[
            ("apns-id", id),
            ("apns-priority", "10"),
            ("apns-expiration", "0"),
        ]),
        MAGIC_BODY,
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.apns_id(), id);
    assert!(a.body.is_empty(), "a 200 has no body");
    assert!(a.end_stream_on_headers, "a 200 ends with its headers");

    // Without one: a fresh UUID.
    let b = send(
        &client,
        Method::POST,
        &path(&token),
        &mdm_headers(&[]),
        MAGIC_BODY,
    )
    .await
    .unwrap();
    assert_eq!(b.status, StatusCode::OK);
    assert!(uuid::Uuid::parse_str(&b.apns_id()).is_ok());
    assert_ne!(b.apns_id(), id);

    let first = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.token_hex, token);
    assert_eq!(first.push_magic, "MAGIC");
    assert_eq!(first.apns_id, id);
    let pushes = fake.pushes();
    assert_eq!(pushes.len(), 2);
    assert!(!pushes[1].client_sent_apns_id);
    assert_eq!(fake.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_malformed_pushes_with_apple_reasons() {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let client = connect(&fake, Some(&cert)).await.unwrap();
    let token = "0b".repeat(32);
    let big = format!(r#"{{"mdm":"{}"}}"#, "x".repeat(5000));
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            path(&token),
            mdm_headers(&[]),
            "",
            405,
            "MethodNotAllowed",
        ),
        (
            Method::POST,
            "/3/other".into(),
            mdm_headers(&[]),
            MAGIC_BODY,
            404,
            "BadPath",
        ),
        (
            Method::POST,
            path("xyz"),
            mdm_headers(&[]),
            MAGIC_BODY,
            400,
            "BadDeviceToken",
        ),
        (
            Method::POST,
            path(""),
            mdm_headers(&[]),
            MAGIC_BODY,
            400,
            "BadDeviceToken",
        ),
        (
            Method::POST,
            path(&token),
            vec![("apns-push-type", "mdm")],
            MAGIC_BODY,
            400,
            "MissingTopic",
        ),
        (
            Method::POST,
            path(&token),
            vec![
                ("apns-topic", "com.apple.mgmt.External.other"),
                ("apns-push-type", "mdm"),
            ],
            MAGIC_BODY,
            400,
            "TopicDisallowed",
        ),
        (
            Method::POST,
            path(&token),
            vec![("apns-topic", TOPIC)],
            MAGIC_BODY,
            400,
            "InvalidPushType",
        ),
        (
            Method::POST,
            path(&token),
            vec![("apns-topic", TOPIC), ("apns-push-type", "alert")],
            MAGIC_BODY,
            400,
            "InvalidPushType",
        ),
        (
            Method::POST,
            path(&token),
            mdm_headers(&[("apns-priority", "7")]),
            MAGIC_BODY,
            400,
            "BadPriority",
        ),
        (
            Method::POST,
            path(&token),
            mdm_headers(&[("apns-expiration", "soon")]),
            MAGIC_BODY,
            400,
            "BadExpirationDate",
        ),
        (
            Method::POST,
            path(&token),
            mdm_headers(&[("apns-id", "not-a-uuid")]),
            MAGIC_BODY,
            400,
            "BadMessageId",
        ),
        (
            Method::POST,
            path(&token),
            mdm_headers(&[]),
            "",
            400,
            "PayloadEmpty",
        ),
        (
            Method::POST,
            path(&token),
            mdm_headers(&[]),
            r#"{"aps":{}}"#,
            400,
            "BadPayload",
        ),
        (
            Method::POST,
            path(&token),
            mdm_headers(&[]),
            r#"{"mdm":""}"#,
            400,
            "BadPayload",
        ),
        (
            Method::POST,
            path(&token),
            mdm_headers(&[]),
            &big,
            413,
            "PayloadTooLarge",
        ),
    ];
    for (method, p, headers, body, status, reason) in cases {
        let a = send(&client, method.clone(), &p, &headers, body)
            .await
            .unwrap();
        assert_eq!(
            (a.status.as_u16(), a.reason().as_str()),
            (status, reason),
            "{method} {p} {headers:?}"
        );
        assert!(
            uuid::Uuid::parse_str(&a.apns_id()).is_ok(),
            "errors carry apns-id too"
        );
        assert_eq!(a.headers["content-type"], "application/json");
    }
    assert!(fake.pushes().is_empty());

    // Injected failures, in order, then normal service.
    fake.inject(2, 500, "InternalServerError");
    fake.inject_with_retry_after(1, 429, "TooManyRequests", 3);
    for _ in 0..2 {
        let a = send(
            &client,
            Method::POST,
            &path(&token),
            &mdm_headers(&[]),
            MAGIC_BODY,
        )
        .await
        .unwrap();
        assert_eq!(
            (a.status.as_u16(), a.reason().as_str()),
            (500, "InternalServerError")
        );
    }
    let a = send(
        &client,
        Method::POST,
        &path(&token),
        &mdm_headers(&[]),
        MAGIC_BODY,
    )
    .await
    .unwrap();
    assert_eq!(a.status.as_u16(), 429);
    assert_eq!(a.headers["retry-after"], "3");
    let a = send(
        &client,
        Method::POST,
        &path(&token),
        &mdm_headers(&[]),
        MAGIC_BODY,
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(fake.pushes().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lenient_fake_takes_the_topic_from_the_certificate() {
    let fake = FakeApns::start(FakeApnsOptions {
        lenient_headers: true,
        ..FakeApnsOptions::default()
    })
    .await
    .unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let client = connect(&fake, Some(&cert)).await.unwrap();
    let a = send(
        &client,
        Method::POST,
        &path(&"0c".repeat(32)),
        &[],
        MAGIC_BODY,
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let p = &fake.pushes()[0];
    assert_eq!(p.topic, TOPIC);
    assert_eq!(p.push_type, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requires_a_client_certificate_with_a_topic() {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    // No client certificate: the TLS handshake is refused (with TLS 1.3 the client sees it
    // on its first read).
    let refused = match connect(&fake, None).await {
        Err(_) => true,
        Ok(client) => send(
            &client,
            Method::POST,
            &path(&"0d".repeat(32)),
            &mdm_headers(&[]),
            MAGIC_BODY,
        )
        .await
        .is_err(),
    };
    assert!(refused);
    // The fake counts the refusal just after sending its alert.
    wait_until(|| fake.handshake_failures() == 1).await;
    assert_eq!(fake.connections(), 0);

    // A certificate without a UID is no push certificate: 403.
    let no_uid = fake_push_certificate_with(FakePushCertOptions {
        topic: None,
        ..FakePushCertOptions::new(TOPIC)
    })
    .unwrap();
    let client = connect(&fake, Some(&no_uid)).await.unwrap();
    let a = send(
        &client,
        Method::POST,
        &path(&"0d".repeat(32)),
        &mdm_headers(&[]),
        MAGIC_BODY,
    )
    .await
    .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.reason().as_str()),
        (403, "BadCertificate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnect_all_drops_open_connections() {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let client = connect(&fake, Some(&cert)).await.unwrap();
    let token = "0e".repeat(32);
    assert!(send(
        &client,
        Method::POST,
        &path(&token),
        &mdm_headers(&[]),
        MAGIC_BODY
    )
    .await
    .is_ok());
    assert_eq!(fake.open_connections(), 1);
    fake.disconnect_all();
    wait_until(|| fake.open_connections() == 0).await;
    assert!(send(
        &client,
        Method::POST,
        &path(&token),
        &mdm_headers(&[]),
        MAGIC_BODY
    )
    .await
    .is_err());
    // A new connection works.
    let again = connect(&fake, Some(&cert)).await.unwrap();
    assert!(send(
        &again,
        Method::POST,
        &path(&token),
        &mdm_headers(&[]),
        MAGIC_BODY
    )
    .await
    .is_ok());
    assert_eq!(fake.connections(), 2);
}
