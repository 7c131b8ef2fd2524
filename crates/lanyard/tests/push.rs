#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! APNs end to end, on both databases: the push certificate is uploaded (its topic becomes the
//! enrollment topic), a queued command makes the server push `{"mdm": PushMagic}` over HTTP/2 to
//! the fake APNs, which wakes the simulated Mac; APNs errors are handled and recorded.

mod support;

use rstest::rstest;

use std::time::Duration;

use lanyard_testkit::fake_apns::{fake_push_certificate, FakeApns, FakeApnsOptions};
use lanyard_testkit::sim::{SimMac, SimOptions};
use serde_json::{json, Value};
use support::{Db, Server};

const TOPIC: &str = "com.apple.mgmt.External.2b8f5a4e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";

async fn wait_for_push(fake: &FakeApns, count: usize) {
    for _ in 0..100 {
        if fake.pushes().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the fake APNs saw {} pushes, expected {count}",
        fake.pushes().len()
    );
}

// Multi-threaded: the fake APNs must keep serving while the test waits on a CLI process.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_wakes_the_mac(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("apns-ca.pem");
    std::fs::write(&ca, fake.ca_pem()).unwrap();
    let url = fake.url();
    let ca_text = ca.display().to_string();
    let Some(s) = Server::start_with(
        db,
        &[
            ("LANYARD_APNS_URL", url.as_str()),
            ("LANYARD_APNS_CA_CERT", ca_text.as_str()),
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
    assert!(
        s.cli(&["settings", "set", "managed-domains", "example.com"])
            .0
    );

    // Upload the push certificate (PKCS#12, password on stdin); its topic is adopted.
    let cert = fake_push_certificate(TOPIC).unwrap();
    let p12 = dir.path().join("push.p12");
    std::fs::write(&p12, &cert.pkcs12_der).unwrap();
    let p12_text = p12.display().to_string();
    let (ok, out, err) = s.cli_stdin(
        &["push-cert", "upload", "--p12", &p12_text],
        &format!("{}\n", cert.pkcs12_password),
    );
    assert!(ok, "{err}");
    assert!(out.contains(TOPIC), "{out}");
    // A wrong password and a non-certificate are refused; the stored one stays.
    let (ok, _, err) = s.cli_stdin(&["push-cert", "upload", "--p12", &p12_text], "wrong\n");
    assert!(!ok);
    assert!(err.contains("push certificate"), "{err}");

    let mut mac = SimMac::new(SimOptions {
        ca_cert_pem: Some(s.ca_pem()),
        push_topic: Some(TOPIC.into()),
        ..SimOptions::new(s.url.clone(), "ann@example.com", "a long password")
    })
    .unwrap();
    let report = mac.enroll().await.unwrap();
    assert_eq!(report.topic, TOPIC);

    // The first user-channel TokenUpdate starts declarative management (a User Enrollment
    // Mac's default status subscriptions): its push wakes the device channel, as every push
    // does, and the user channel, which has a command waiting; the woken Mac synchronises on
    // the user channel.
    wait_for_push(&fake, 2).await;
    let mut woken: Vec<String> = fake.pushes()[..2]
        .iter()
        .map(|p| p.push_magic.clone())
        .collect();
    woken.sort();
    let mut expected = vec![
        report.push_magic.clone(),
        mac.push(lanyard_testkit::Channel::User).push_magic.clone(),
    ];
    expected.sort();
    assert_eq!(woken, expected);
    support::sync_declarative_start(&mut mac).await;

    // A different topic cannot replace the certificate while enrollments depend on it.
    let other =
        fake_push_certificate("com.apple.mgmt.External.00000000-0000-0000-0000-000000000001")
            .unwrap();
    let c = s.client();
    let t = s.admin_session(&c).await;
    let r = c
        .put(format!("{}/api/v1/push-certificate", s.url))
        .bearer_auth(&t)
        .json(&json!({"cert_pem": other.cert_pem, "key_pem": other.key_pem}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let info: Value = c
        .get(format!("{}/api/v1/push-certificate", s.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["topic"], TOPIC);

    // Queue through the API: the push job wakes the Mac through the fake APNs.
    let (ok, out, _) = s.cli(&["device", "list", "--json"]);
    assert!(ok);
    let id = serde_json::from_str::<Value>(&out).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{}/api/v1/commands", s.url))
        .bearer_auth(&t)
        .json(&json!({"target": {"enrollments": [id]}, "command": {"request_type": "ProfileList"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_for_push(&fake, 3).await;
    let p = &fake.pushes()[2];
    assert_eq!(p.topic, TOPIC);
    assert_eq!(p.push_magic, report.push_magic);
    assert_eq!(p.token_hex, report.push_token_hex);
    assert_eq!(p.push_type.as_deref(), Some("mdm"));
    // Woken, the Mac fetches and answers.
    let handled = mac
        .run_commands(lanyard_testkit::Channel::Device, 5)
        .await
        .unwrap();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].request_type, "ProfileList");
    let dev: Value = c
        .get(format!("{}/api/v1/devices/{id}", s.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dev["enrollment_mode"], "User Enrollment");

    // The CLI pushes too; a 500 from APNs is retried with back-off and then delivered.
    // A second push through the server's job reuses its HTTP/2 connection.
    let r = c
        .post(format!("{}/api/v1/commands", s.url))
        .bearer_auth(&t)
        .json(&json!({"target": {"enrollments": [id]}, "command": {"request_type": "CertificateList"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_for_push(&fake, 4).await;
    assert_eq!(fake.connections(), 1, "one connection for every push");
    mac.run_commands(lanyard_testkit::Channel::Device, 5)
        .await
        .unwrap();

    fake.inject(1, 500, "InternalServerError");
    let apns = [
        "--apns-url",
        url.as_str(),
        "--apns-ca-cert",
        ca_text.as_str(),
    ];
    let (ok, _, err) = s.cli(&[
        apns[0],
        apns[1],
        apns[2],
        apns[3],
        "command",
        "send",
        "security-info",
        "--device",
        &id,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("1 delivered"), "{err}");
    wait_for_push(&fake, 5).await;

    // APNs says the token is gone: recorded, and the token is dropped.
    fake.set_unregistered(&mac.push(lanyard_testkit::Channel::Device).token);
    let (ok, _, err) = s.cli(&[
        apns[0],
        apns[1],
        apns[2],
        apns[3],
        "command",
        "send",
        "profile-list",
        "--device",
        &id,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("1 unregistered"), "{err}");
    let (ok, out, _) = s.cli(&["device", "show", &id, "--json"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["enrollment"]["reachable"], false, "{shown}");
    assert_eq!(shown["enrollment"]["last_push_status"], "unregistered");

    // --no-push queues without pushing.
    let before = fake.pushes().len();
    let (ok, _, err) = s.cli(&[
        "command",
        "send",
        "profile-list",
        "--device",
        &id,
        "--no-push",
    ]);
    assert!(ok, "{err}");
    assert_eq!(fake.pushes().len(), before);
    s.stop().await;
}
