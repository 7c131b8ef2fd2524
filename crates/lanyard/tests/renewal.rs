#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Identity renewal end to end, on both databases: `lanyard serve` with a short identity
//! lifetime and renewal window (by configuration) queues an `InstallProfile` of the renewed
//! enrollment profile as soon as the simulated Mac is enrolled, once, and wakes it through the
//! fake APNs; the Mac installs it, runs SCEP with the new challenge and from then on signs with
//! the new identity. The old identity is accepted until the new one is used and refused after;
//! the Mac keeps working; `lanyard device show` shows the new certificate.

mod support;

use rstest::rstest;

use std::time::Duration;

use lanyard_pki::CertInfo;
use lanyard_proto::command::CommandStatus;
use lanyard_testkit::fake_apns::{fake_push_certificate, FakeApns, FakeApnsOptions};
use lanyard_testkit::sim::{SimMac, SimOptions};
use lanyard_testkit::Channel;
use serde_json::{json, Value};
use support::{Db, Server};

const TOPIC: &str = "com.apple.mgmt.External.7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
/// Long enough that the renewed identity is not renewed again during the test (renewals of one
/// enrollment are a tenth of the window apart), short enough that every identity is due at once.
const LIFETIME: &str = "36000s";

fn unix(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap_or_else(|| panic!("{t}")))
        .unwrap()
        .timestamp()
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gave up waiting: {what}");
}

async fn device(s: &Server, c: &reqwest::Client, token: &str, id: &str) -> Value {
    let r = c
        .get(format!("{}/api/v1/devices/{id}", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn history(s: &Server, c: &reqwest::Client, token: &str, id: &str) -> Vec<Value> {
    c.get(format!("{}/api/v1/devices/{id}/commands", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

// Multi-threaded: the fake APNs must keep serving while the test waits on a CLI process.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_the_identity(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let apns_ca = dir.path().join("apns-ca.pem");
    std::fs::write(&apns_ca, fake.ca_pem()).unwrap();
    let apns_url = fake.url();
    let apns_ca = apns_ca.display().to_string();
    let Some(s) = Server::start_with(
        db,
        &[
            ("LANYARD_APNS_URL", apns_url.as_str()),
            ("LANYARD_APNS_CA_CERT", apns_ca.as_str()),
            ("LANYARD_IDENTITY_LIFETIME", LIFETIME),
            ("LANYARD_IDENTITY_RENEWAL_WINDOW", LIFETIME),
            ("LANYARD_IDENTITY_RENEWAL_INTERVAL", "1s"),
        ],
    )
    .await
    else {
        return;
    };
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", "ann@example.com", "--password", "-"],
        "a long password\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = s.cli(&["settings", "set", "managed-domains", "example.com"]);
    assert!(ok, "{err}");
    let cert = fake_push_certificate(TOPIC).unwrap();
    let p12 = dir.path().join("push.p12");
    std::fs::write(&p12, &cert.pkcs12_der).unwrap();
    let p12 = p12.display().to_string();
    let (ok, _, err) = s.cli_stdin(
        &["push-cert", "upload", "--p12", &p12],
        &format!("{}\n", cert.pkcs12_password),
    );
    assert!(ok, "{err}");

    let mut mac = SimMac::new(SimOptions {
        ca_cert_pem: Some(s.ca_pem()),
        ..SimOptions::new(s.url.clone(), "ann@example.com", "a long password")
    })
    .unwrap();
    let report = mac.enroll().await.unwrap();
    let first = report.identity_certificate.clone();
    let first_info = CertInfo::from_x509(mac.identity_certificate().unwrap()).unwrap();
    assert_eq!(
        first_info.not_after - first_info.not_before,
        36000 + 300,
        "the configured lifetime (plus the 5-minute backdating)"
    );
    let (ok, out, _) = s.cli(&["device", "list", "--json"]);
    assert!(ok);
    let id = serde_json::from_str::<Value>(&out).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = s.client();
    let token = s.admin_session(&c).await;

    // Enrolled, the Mac was put under declarative management on its user channel (a User
    // Enrollment Mac's default status subscriptions); woken there, it synchronises.
    let user_magic = mac.push(Channel::User).push_magic.clone();
    wait_until("the user channel's push", || async {
        fake.pushes().iter().any(|p| p.push_magic == user_magic)
    })
    .await;
    support::sync_declarative_start(&mut mac).await;

    // The job finds the identity inside the window: one renewal queued, the Mac woken.
    wait_until("the renewal is queued", || async {
        !device(&s, &c, &token, &id).await["identity_renewal_queued_at"].is_null()
    })
    .await;
    let pushed_when_queued = fake.pushes().len();
    wait_until("the device channel's push", || async {
        fake.pushes()
            .iter()
            .any(|p| p.push_magic == report.push_magic)
    })
    .await;
    assert!(fake.pushes().iter().all(|p| p.topic == TOPIC));
    // Several more runs of the job (every second) queue nothing while the renewal is pending,
    // and push no more (at most the renewal's own push was still on its way).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h: Vec<Value> = history(&s, &c, &token, &id)
        .await
        .into_iter()
        .filter(|c| c["channel"] == "device")
        .collect();
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["request_type"], "InstallProfile");
    assert!(
        fake.pushes().len() <= pushed_when_queued + 1,
        "{:?}",
        fake.pushes()
    );

    // The Mac fetches it with its identity and installs it: SCEP with the new challenge.
    let cmd = mac.idle().await.unwrap().expect("the renewal");
    assert_eq!(cmd.request_type, "InstallProfile");
    assert_eq!(cmd.uuid, h[0]["command_uuid"].as_str().unwrap());
    let reply = mac.handle_command(&cmd, Channel::Device).await.unwrap();
    assert_eq!(
        reply.status,
        CommandStatus::Acknowledged,
        "{:?}",
        reply.result
    );
    assert!(
        mac.steps()
            .iter()
            .any(|l| l.starts_with("renewal: InstallProfile")),
        "{:?}",
        mac.steps()
    );
    let renewed = CertInfo::from_x509(mac.identity_certificate().unwrap()).unwrap();
    assert_ne!(renewed.sha256, first.sha256);
    assert_eq!(
        renewed.subject, first.subject,
        "same enrollment, same subject"
    );
    assert_eq!(renewed.not_after - renewed.not_before, 36000 + 300);
    assert_eq!(
        CertInfo::from_x509(mac.previous_identity_certificate().unwrap())
            .unwrap()
            .sha256,
        first.sha256
    );
    let d = device(&s, &c, &token, &id).await;
    assert_eq!(d["identity_certificate_serial"], first.serial_hex.as_str());
    assert_eq!(
        d["next_identity_certificate_serial"],
        renewed.serial_hex.as_str(),
        "bound to the same enrollment as its next identity"
    );

    // Until the new identity is used, the old one is still accepted (the unanswered renewal
    // is handed out again).
    let again = mac.idle_with_previous_identity().await.unwrap();
    assert_eq!(again.map(|c| c.uuid), Some(cmd.uuid.clone()));

    // The Mac answers with its new identity: that makes it current and retires the old one.
    assert!(mac
        .respond(&cmd.uuid, reply.status, reply.result)
        .await
        .unwrap()
        .is_none());
    let d = device(&s, &c, &token, &id).await;
    assert_eq!(
        d["identity_certificate_serial"],
        renewed.serial_hex.as_str()
    );
    assert_eq!(d["identity_certificate_sha256"], renewed.sha256.as_str());
    assert!(d["next_identity_certificate_serial"].is_null(), "{d}");
    assert!(!d["identity_certificate_renewed_at"].is_null(), "{d}");
    let h = history(&s, &c, &token, &id).await;
    assert_eq!(h[0]["status"], "acknowledged");
    // The old identity is now refused like an unknown one (the status is the device service's
    // refusal for an unrecognised identity).
    let err = mac.idle_with_previous_identity().await.unwrap_err();
    assert!(matches!(err.status(), Some(401 | 403)), "{err}");

    // The Mac keeps working on the new identity: check-in, both channels, a command.
    mac.token_update(Channel::Device).await.unwrap();
    assert!(mac.idle_on(Channel::User).await.unwrap().is_none());
    let r = c
        .post(format!("{}/api/v1/commands", s.url))
        .bearer_auth(&token)
        .json(&json!({"target": {"enrollments": [id]},
                      "command": {"request_type": "DeviceInformation"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let handled = mac.run_commands(Channel::Device, 5).await.unwrap();
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert_eq!(
        (handled[0].request_type.as_str(), handled[0].status.as_str()),
        ("DeviceInformation", "Acknowledged")
    );

    // `lanyard device show` shows the new certificate.
    let (ok, out, err) = s.cli(&["device", "show", &id, "--json"]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    let e = &shown["enrollment"];
    assert_eq!(
        e["identity_certificate_serial"],
        renewed.serial_hex.as_str()
    );
    assert_eq!(
        unix(&e["identity_certificate_not_after"]),
        renewed.not_after
    );
    assert_ne!(e["identity_certificate_serial"], first.serial_hex.as_str());
    s.stop().await;
}
