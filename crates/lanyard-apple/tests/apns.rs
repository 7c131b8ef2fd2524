#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The APNs client against the fake APNs of `lanyard-testkit`: real HTTP/2 over TLS with the
//! push certificate as client certificate, on loopback.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_apple::apns::{
    ApnsClient, ApnsError, ApnsOptions, PushCertificate, PushOutcome, PushTarget,
};
use lanyard_testkit::fake_apns::{
    fake_push_ca_pem, fake_push_certificate, fake_push_certificate_with, FakeApns, FakeApnsOptions,
    FakePushCertOptions, FakePushCertificate,
};

const TOPIC: &str = "com.apple.mgmt.External.5b4b0c4e-49e3-4a4a-8e4e-1f3c0a9b7d21";

fn token(n: u32) -> Vec<u8> {
    let mut t = vec![0xa5u8; 32];
    t[..4].copy_from_slice(&n.to_be_bytes());
    t
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn client_for(fake: &FakeApns, cert: &FakePushCertificate, options: ApnsOptions) -> ApnsClient {
    let push_cert =
        PushCertificate::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    ApnsClient::new(
        &fake.url(),
        &push_cert,
        ApnsOptions {
            extra_root_ca_pem: Some(fake.ca_pem().into_bytes()),
            ..options
        },
    )
    .unwrap()
}

async fn setup(options: FakeApnsOptions) -> (FakeApns, ApnsClient) {
    let fake = FakeApns::start(options).await.unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let client = client_for(&fake, &cert, ApnsOptions::default());
    (fake, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_push_is_well_formed_and_echoes_apns_id() {
    let (fake, client) = setup(FakeApnsOptions::default()).await;
    let outcome = client.push(&token(1), "MAGIC-1").await;
    let PushOutcome::Delivered { apns_id } = outcome else {
        panic!("not delivered: {outcome:?}");
    };
    let pushes = fake.pushes();
    assert_eq!(pushes.len(), 1);
    let p = &pushes[0];
    assert_eq!(p.token_hex, hex(&token(1)));
    assert_eq!(p.topic, TOPIC);
    assert_eq!(p.push_magic, "MAGIC-1");
    assert!(p.client_sent_apns_id, "the client sends its own apns-id");
    assert_eq!(p.apns_id, apns_id, "the answered apns-id is the one sent");
    assert!(uuid_like(&apns_id), "{apns_id}");
    assert_eq!(p.push_type.as_deref(), Some("mdm"));
    assert_eq!(p.priority.as_deref(), Some("10"));
    let expiration: u64 = p.expiration.as_deref().unwrap().parse().unwrap();
    let day_later = now() + 86_400;
    assert!(
        expiration.abs_diff(day_later) < 120,
        "apns-expiration {expiration} is not about a day from now"
    );
    assert!(p.client_subject.contains(&format!("UID={TOPIC}")));
    assert_eq!(p.connection, 1);
    assert_eq!(client.topic(), TOPIC);
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gone_token_is_unregistered_with_timestamp() {
    let (fake, client) = setup(FakeApnsOptions::default()).await;
    fake.set_unregistered(&token(2));
    let outcome = client.push(&token(2), "MAGIC").await;
    let PushOutcome::Unregistered {
        timestamp_ms: Some(ts),
    } = outcome
    else {
        panic!("expected Unregistered with timestamp: {outcome:?}");
    };
    assert!((ts / 1000).abs_diff(i64::try_from(now()).unwrap()) < 120);
    assert!(outcome.token_is_dead());
    assert!(!outcome.is_retryable());
    assert_eq!(fake.pushes().len(), 0);
    let rejected = fake.rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].status, rejected[0].reason.as_str()),
        (410, "Unregistered")
    );
    // Other tokens are unaffected.
    assert!(client.push(&token(3), "MAGIC").await.is_delivered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttled_push_is_rate_limited_with_retry_after() {
    let (fake, client) = setup(FakeApnsOptions::default()).await;
    fake.inject_with_retry_after(1, 429, "TooManyRequests", 7);
    fake.inject(1, 429, "TooManyRequests");
    let first = client.push(&token(4), "MAGIC").await;
    assert_eq!(
        first,
        PushOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert!(first.is_retryable());
    assert!(first.retry_delay(0).unwrap() >= Duration::from_secs(7));
    let second = client.push(&token(4), "MAGIC").await;
    assert_eq!(second, PushOutcome::RateLimited { retry_after: None });
    assert!(second.retry_delay(0).unwrap() <= Duration::from_millis(500));
    // The injection is used up: the third goes through.
    assert!(client.push(&token(4), "MAGIC").await.is_delivered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apns_failures_are_server_errors() {
    let (fake, client) = setup(FakeApnsOptions::default()).await;
    fake.inject(1, 500, "InternalServerError");
    fake.inject(1, 503, "ServiceUnavailable");
    assert_eq!(
        client.push(&token(5), "MAGIC").await,
        PushOutcome::ServerError {
            status: 500,
            reason: "InternalServerError".into()
        }
    );
    let second = client.push(&token(5), "MAGIC").await;
    assert_eq!(
        second,
        PushOutcome::ServerError {
            status: 503,
            reason: "ServiceUnavailable".into()
        }
    );
    assert!(second.is_retryable());
    assert!(client.push(&token(5), "MAGIC").await.is_delivered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_of_another_topic_is_a_bad_token_and_certificate_refusals_are_certificate() {
    let (fake, client) = setup(FakeApnsOptions::default()).await;
    // The device enrolled under another push certificate's topic.
    fake.set_token_topic(&token(6), "com.apple.mgmt.External.other");
    let outcome = client.push(&token(6), "MAGIC").await;
    assert_eq!(
        outcome,
        PushOutcome::BadToken {
            reason: "DeviceTokenNotForTopic".into()
        }
    );
    assert!(outcome.token_is_dead());

    fake.inject(1, 400, "TopicDisallowed");
    assert_eq!(
        client.push(&token(7), "MAGIC").await,
        PushOutcome::Certificate {
            reason: "TopicDisallowed".into()
        }
    );
    fake.inject(1, 403, "BadCertificate");
    assert_eq!(
        client.push(&token(7), "MAGIC").await,
        PushOutcome::Certificate {
            reason: "BadCertificate".into()
        }
    );
    fake.inject(1, 400, "BadDeviceToken");
    assert_eq!(
        client.push(&token(7), "MAGIC").await,
        PushOutcome::BadToken {
            reason: "BadDeviceToken".into()
        }
    );
    fake.inject(1, 413, "PayloadTooLarge");
    assert_eq!(
        client.push(&token(7), "MAGIC").await,
        PushOutcome::Rejected {
            status: 413,
            reason: "PayloadTooLarge".into()
        }
    );
    // An empty token is refused without asking APNs.
    let before = fake.requests();
    assert!(matches!(
        client.push(&[], "MAGIC").await,
        PushOutcome::BadToken { .. }
    ));
    assert_eq!(fake.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_thousand_pushes_share_one_connection() {
    // The fake allows 100 concurrent streams; the client may want more: both limits hold.
    let (fake, client) = setup(FakeApnsOptions {
        max_concurrent_streams: 100,
        ..FakeApnsOptions::default()
    })
    .await;
    let targets: Vec<PushTarget> = (0..1000u32)
        .map(|i| PushTarget::new(token(i), format!("MAGIC-{i}")))
        .collect();
    let started = std::time::Instant::now();
    let outcomes = client.push_many(&targets).await;
    let elapsed = started.elapsed();
    assert_eq!(outcomes.len(), 1000);
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.is_delivered(), "push {i}: {o:?}");
    }
    let pushes = fake.pushes();
    assert_eq!(pushes.len(), 1000, "the fake saw every push");
    let tokens: HashSet<_> = pushes.iter().map(|p| p.token_hex.clone()).collect();
    assert_eq!(tokens.len(), 1000, "every token once");
    for p in &pushes {
        let i = u32::from_str_radix(&p.token_hex[..8], 16).unwrap();
        assert_eq!(
            p.push_magic,
            format!("MAGIC-{i}"),
            "magic belongs to its token"
        );
        assert_eq!(p.connection, 1);
    }
    let ids: HashSet<_> = outcomes
        .iter()
        .map(|o| match o {
            PushOutcome::Delivered { apns_id } => apns_id.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(ids.len(), 1000, "one apns-id per push");
    assert_eq!(
        fake.connections(),
        1,
        "one TLS connection for all 1000 pushes"
    );
    assert_eq!(client.connections_opened(), 1);
    eprintln!("1000 pushes over one connection in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_many_keeps_the_order_of_targets() {
    let (fake, client) = setup(FakeApnsOptions::default()).await;
    fake.set_unregistered(&token(11));
    let targets = vec![
        PushTarget::new(token(10), "A"),
        PushTarget::new(token(11), "B"),
        PushTarget::new(Vec::new(), "C"),
        PushTarget::new(token(12), "D"),
    ];
    let outcomes = client.push_many(&targets).await;
    assert!(outcomes[0].is_delivered());
    assert!(matches!(outcomes[1], PushOutcome::Unregistered { .. }));
    assert!(matches!(outcomes[2], PushOutcome::BadToken { .. }));
    assert!(outcomes[3].is_delivered());
    assert!(client.push_many(&[]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_transparently_when_the_connection_drops() {
    let (fake, client) = setup(FakeApnsOptions::default()).await;
    assert!(client.push(&token(20), "M").await.is_delivered());
    assert_eq!(fake.connections(), 1);

    // Dropped under our feet (the fake has closed it; the client has not looked yet), and
    // the next push is sent at once: its first try fails, the second goes on a new one.
    fake.disconnect_all();
    wait_until(|| fake.open_connections() == 0).await;
    let outcome = client.push(&token(21), "M").await;
    assert!(outcome.is_delivered(), "{outcome:?}");
    assert_eq!(fake.connections(), 2);

    // Dropped, noticed while idle, then a burst.
    fake.disconnect_all();
    wait_until(|| fake.open_connections() == 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let targets: Vec<_> = (0..50)
        .map(|i| PushTarget::new(token(100 + i), "M"))
        .collect();
    let outcomes = client.push_many(&targets).await;
    assert!(
        outcomes.iter().all(PushOutcome::is_delivered),
        "{outcomes:?}"
    );
    assert_eq!(fake.connections(), 3, "the burst shared one new connection");
    assert_eq!(client.connections_opened(), 3);
    assert_eq!(fake.pushes().len(), 52);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_apns_is_a_transport_timeout_then_recovers() {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let client = client_for(
        &fake,
        &cert,
        ApnsOptions {
            timeout: Duration::from_millis(300),
            ..ApnsOptions::default()
        },
    );
    fake.set_delay(Duration::from_secs(2));
    let outcome = client.push(&token(30), "M").await;
    assert!(
        matches!(&outcome, PushOutcome::Transport(m) if m.contains("within")),
        "{outcome:?}"
    );
    assert!(outcome.is_retryable());
    fake.set_delay(Duration::ZERO);
    assert!(client.push(&token(31), "M").await.is_delivered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_apns_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let cert = fake_push_certificate(TOPIC).unwrap();
    let push_cert =
        PushCertificate::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    let client = ApnsClient::new(
        &format!("https://127.0.0.1:{port}"),
        &push_cert,
        ApnsOptions {
            extra_root_ca_pem: Some(cert.issuer_ca_pem.clone().into_bytes()),
            ..ApnsOptions::default()
        },
    )
    .unwrap();
    let outcome = client.push(&token(40), "M").await;
    assert!(
        matches!(&outcome, PushOutcome::Transport(m) if m.contains("cannot connect")),
        "{outcome:?}"
    );
    assert_eq!(client.connections_opened(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn untrusted_push_certificate_is_refused_in_the_tls_handshake() {
    // This fake trusts only a CA that did not issue our certificate, as Apple trusts only
    // its own: the TLS alert becomes a Certificate outcome.
    let stranger = lanyard_pki::Ca::generate("Not Apple", "Elsewhere").unwrap();
    let fake = FakeApns::start(FakeApnsOptions {
        client_ca_pem: Some(stranger.cert_pem().unwrap().into_bytes()),
        ..FakeApnsOptions::default()
    })
    .await
    .unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let client = client_for(&fake, &cert, ApnsOptions::default());
    let outcome = client.push(&token(50), "M").await;
    assert!(
        matches!(&outcome, PushOutcome::Certificate { reason } if reason.contains("TLS alert")),
        "{outcome:?}"
    );
    assert!(!outcome.is_retryable());
    assert_eq!(fake.pushes().len(), 0);
    // The fake counts the refusal just after sending its alert.
    wait_until(|| fake.handshake_failures() >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_verifying_the_chain_accepts_a_certificate_from_its_ca() {
    let fake = FakeApns::start(FakeApnsOptions {
        client_ca_pem: Some(fake_push_ca_pem().unwrap().into_bytes()),
        ..FakeApnsOptions::default()
    })
    .await
    .unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let client = client_for(&fake, &cert, ApnsOptions::default());
    assert!(client.push(&token(51), "M").await.is_delivered());
}

// --- the push certificate -----------------------------------------------------------------

#[test]
fn push_certificate_from_pkcs12_and_pem_agree() {
    let fake = fake_push_certificate(TOPIC).unwrap();
    let from_p12 = PushCertificate::from_pkcs12(&fake.pkcs12_der, &fake.pkcs12_password).unwrap();
    let from_pem =
        PushCertificate::from_pem(fake.cert_pem.as_bytes(), fake.key_pem.as_bytes()).unwrap();
    let combined = fake.combined_pem();
    let from_combined =
        PushCertificate::from_pem(combined.as_bytes(), combined.as_bytes()).unwrap();
    for cert in [&from_p12, &from_pem, &from_combined] {
        assert_eq!(cert.topic(), TOPIC);
        assert!(
            cert.summary().subject().contains(&format!("UID={TOPIC}")),
            "{}",
            cert.summary().subject()
        );
        assert!(cert.summary().subject().contains("CN=APSP:"));
        assert!(
            (364..=365).contains(&cert.days_left()),
            "{}",
            cert.days_left()
        );
        let year = i64::try_from(now()).unwrap() + 365 * 86_400;
        assert!((cert.summary().not_after() - year).abs() < 120);
        assert_eq!(cert.summary().sha256(), from_p12.summary().sha256());
        let debug = format!("{cert:?}");
        assert!(debug.contains(TOPIC));
        assert!(
            !debug.contains("PRIVATE KEY") && !debug.contains("MII"),
            "{debug}"
        );
    }
    let err = PushCertificate::from_pkcs12(&fake.pkcs12_der, "wrong password").unwrap_err();
    assert!(matches!(err, ApnsError::Pkcs12(_)), "{err}");
    assert!(err.to_string().contains("password"));
}

#[test]
fn push_certificate_without_uid_is_refused() {
    let fake = fake_push_certificate_with(FakePushCertOptions {
        topic: None,
        ..FakePushCertOptions::new(TOPIC)
    })
    .unwrap();
    let err =
        PushCertificate::from_pem(fake.cert_pem.as_bytes(), fake.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(err, ApnsError::MissingTopic { .. }), "{err}");
    assert!(err.to_string().contains("UID"), "{err}");
    let err = PushCertificate::from_pkcs12(&fake.pkcs12_der, &fake.pkcs12_password).unwrap_err();
    assert!(matches!(err, ApnsError::MissingTopic { .. }), "{err}");
}

#[test]
fn push_certificate_for_a_non_mdm_topic_is_refused() {
    let fake = fake_push_certificate("com.example.someapp").unwrap();
    let err =
        PushCertificate::from_pem(fake.cert_pem.as_bytes(), fake.key_pem.as_bytes()).unwrap_err();
    assert!(
        matches!(&err, ApnsError::NotMdmTopic { topic } if topic == "com.example.someapp"),
        "{err}"
    );
}

#[test]
fn expired_or_future_push_certificate_is_refused() {
    let expired = fake_push_certificate_with(FakePushCertOptions {
        not_before_offset_secs: -400 * 86_400,
        not_after_offset_secs: -86_400,
        ..FakePushCertOptions::new(TOPIC)
    })
    .unwrap();
    let err =
        PushCertificate::from_pkcs12(&expired.pkcs12_der, &expired.pkcs12_password).unwrap_err();
    assert!(matches!(err, ApnsError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("renew"), "{err}");

    let future = fake_push_certificate_with(FakePushCertOptions {
        not_before_offset_secs: 86_400,
        not_after_offset_secs: 400 * 86_400,
        ..FakePushCertOptions::new(TOPIC)
    })
    .unwrap();
    let err = PushCertificate::from_pem(future.cert_pem.as_bytes(), future.key_pem.as_bytes())
        .unwrap_err();
    assert!(matches!(err, ApnsError::NotYetValid { .. }), "{err}");
}

#[test]
fn key_of_another_certificate_is_refused() {
    let a = fake_push_certificate(TOPIC).unwrap();
    let b = fake_push_certificate(TOPIC).unwrap();
    let err = PushCertificate::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(err, ApnsError::KeyMismatch), "{err}");
    let err = PushCertificate::from_pem(b"no pem here", a.key_pem.as_bytes()).unwrap_err();
    assert!(
        matches!(err, ApnsError::Pem(_) | ApnsError::Missing(_)),
        "{err}"
    );
}

/// A `.p12` with the RC2-40/3DES encryption of older Keychain exports, made by the openssl
/// command line (`-legacy`), loads through OpenSSL 3's legacy provider.
#[test]
fn legacy_encrypted_pkcs12_loads() {
    use std::process::Command;
    if Command::new("openssl").arg("version").output().is_err() {
        use std::io::Write as _;
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is missing and CI=true"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED legacy_encrypted_pkcs12_loads: `openssl` is not installed"
        );
        return;
    }
    let fake = fake_push_certificate(TOPIC).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("push.pem");
    let p12 = dir.path().join("push.p12");
    std::fs::write(&pem, fake.combined_pem()).unwrap();
    let out = Command::new("openssl")
        .args(["pkcs12", "-export", "-legacy", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&p12)
        .args(["-passout", "pass:keychain"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl pkcs12 -export -legacy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = std::fs::read(&p12).unwrap();
    let cert = PushCertificate::from_pkcs12(&der, "keychain").unwrap();
    assert_eq!(cert.topic(), TOPIC);
}

#[test]
fn client_refuses_bad_base_urls_and_debug_shows_no_secrets() {
    let fake = fake_push_certificate(TOPIC).unwrap();
    let cert =
        PushCertificate::from_pem(fake.cert_pem.as_bytes(), fake.key_pem.as_bytes()).unwrap();
    let options = || ApnsOptions {
        extra_root_ca_pem: Some(fake.issuer_ca_pem.clone().into_bytes()),
        ..ApnsOptions::default()
    };
    for bad in ["http://api.push.apple.com", "https://x/3/device", "::"] {
        let err = ApnsClient::new(bad, &cert, options()).unwrap_err();
        assert!(matches!(err, ApnsError::BaseUrl { .. }), "{bad}: {err}");
    }
    let client = ApnsClient::new("https://127.0.0.1:1", &cert, options()).unwrap();
    let debug = format!("{client:?}");
    assert!(
        debug.contains(TOPIC) && !debug.contains("PRIVATE"),
        "{debug}"
    );
}
