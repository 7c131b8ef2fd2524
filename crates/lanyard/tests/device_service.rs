#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The device service end to end, on both databases, against a running `lanyard serve` and
//! the simulated Mac, for the points where a real Mac depends on the exact answer:
//! - a result whose answer was lost is sent again and answered as the first time;
//! - `NotNow` is answered with an empty body, and the command comes again at the next poll;
//! - user-channel commands wake the user channel's push token;
//! - the user channel's bearer token is checked: none, revoked or a disabled person's gets
//!   `401` with the `apple-as-web` challenge, and the Mac signs in again;
//! - device-channel-only commands are refused for the user channel;
//! - the profile advertises only the per-user connections; bootstrap tokens are refused;
//!   `Authenticate` without `OSVersion` is accepted.

mod support;

use rstest::rstest;

use std::time::Duration;

use lanyard_proto::command::CommandStatus;
use lanyard_testkit::device;
use lanyard_testkit::error::Step;
use lanyard_testkit::fake_apns::{fake_push_certificate, FakeApns, FakeApnsOptions};
use lanyard_testkit::sim::{SimMac, SimOptions};
use lanyard_testkit::Channel;
use reqwest::header::WWW_AUTHENTICATE;
use serde_json::{json, Value};
use support::{Db, Server};

const TOPIC: &str = "com.apple.mgmt.External.7d0c1e2f-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
const PASSWORD: &str = "a long password";

struct Setup {
    s: Server,
    fake: FakeApns,
    _dir: tempfile::TempDir,
    api: reqwest::Client,
    token: String,
    mac: SimMac,
    id: String,
}

async fn setup(db: Db) -> Option<Setup> {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("apns-ca.pem");
    std::fs::write(&ca, fake.ca_pem()).unwrap();
    let url = fake.url();
    let ca_text = ca.display().to_string();
    let s = Server::start_with(
        db,
        &[
            ("LANYARD_APNS_URL", url.as_str()),
            ("LANYARD_APNS_CA_CERT", ca_text.as_str()),
            ("LANYARD_LOG", "info"),
        ],
    )
    .await?;
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", "ann@example.com", "--password", "-"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
    assert!(
        s.cli(&["settings", "set", "managed-domains", "example.com"])
            .0
    );
    let cert = fake_push_certificate(TOPIC).unwrap();
    let p12 = dir.path().join("push.p12");
    std::fs::write(&p12, &cert.pkcs12_der).unwrap();
    let (ok, _, err) = s.cli_stdin(
        &["push-cert", "upload", "--p12", &p12.display().to_string()],
        &format!("{}\n", cert.pkcs12_password),
    );
    assert!(ok, "{err}");
    let mut mac = SimMac::new(SimOptions {
        ca_cert_pem: Some(s.ca_pem()),
        ..SimOptions::new(s.url.clone(), "ann@example.com", PASSWORD)
    })
    .unwrap();
    mac.enroll().await.unwrap();
    let (ok, out, _) = s.cli(&["device", "list", "--json"]);
    assert!(ok);
    let id = serde_json::from_str::<Value>(&out).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let api = s.client();
    let token = s.admin_session(&api).await;
    Some(Setup {
        s,
        fake,
        _dir: dir,
        api,
        token,
        mac,
        id,
    })
}

impl Setup {
    async fn queue(&self, command: Value, channel: &str, push: bool) -> (u16, Value) {
        let r = self
            .api
            .post(format!("{}/api/v1/commands", self.s.url))
            .bearer_auth(&self.token)
            .json(
                &json!({"target": {"enrollments": [self.id]}, "command": command,
                          "channel": channel, "push": push}),
            )
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn history(&self) -> Vec<Value> {
        let v: Value = self
            .api
            .get(format!(
                "{}/api/v1/devices/{}/commands",
                self.s.url, self.id
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().unwrap().clone()
    }

    async fn status_of(&self, uuid: &str) -> Vec<String> {
        self.history()
            .await
            .iter()
            .filter(|c| c["command_uuid"] == uuid)
            .map(|c| c["status"].as_str().unwrap().to_string())
            .collect()
    }
}

#[rstest]
#[tokio::test]
async fn device_channel(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(mut t) = setup(db).await else { return };

    // The profile advertises what Lanyard answers, and nothing User Enrollment forbids.
    let caps = t.mac.profile().unwrap().mdm.server_capabilities.clone();
    assert_eq!(caps, ["com.apple.mdm.per-user-connections"]);

    // A lost answer: the Mac sends the same result again and gets the same next command;
    // the result is stored once.
    let (st, a) = t
        .queue(json!({"request_type": "ProfileList"}), "device", false)
        .await;
    assert_eq!(st, 202, "{a}");
    let (st, b) = t
        .queue(json!({"request_type": "SecurityInfo"}), "device", false)
        .await;
    assert_eq!(st, 202, "{b}");
    let first = t.mac.idle().await.unwrap().unwrap();
    assert_eq!(first.uuid, a["command_uuid"].as_str().unwrap());
    t.mac.conditions().lose_next_answer = true;
    let next = t
        .mac
        .respond(&first.uuid, CommandStatus::Acknowledged, Default::default())
        .await
        .unwrap()
        .expect("the repeat is answered with the next command");
    assert_eq!(next.uuid, b["command_uuid"].as_str().unwrap());
    assert_eq!(t.status_of(&first.uuid).await, ["acknowledged"]);
    assert!(t.mac.steps().iter().any(|l| l.contains("was lost")));

    // The enrollment can be followed in the log: each line names its request (id, route) and
    // the device service's step with the enrollment.
    let followed = |what: &str, message: &str, span: String, route: &str| {
        let line = t.s.wait_for_log(what, |l| l.contains(message));
        assert!(line.contains("request{id="), "{line}");
        assert!(line.contains(&format!("route={route}")), "{line}");
        assert!(line.contains(&span), "{line}");
    };
    followed(
        "of the issued profile",
        "issued an enrollment profile",
        format!("enroll{{enrollment={}}}", t.id),
        "/enroll",
    );
    followed(
        "of the issued identity",
        "issued an identity certificate",
        format!("scep{{enrollment={}}}", t.id),
        "/scep",
    );
    followed(
        "of the repeated result",
        "command result not stored",
        format!(
            "command{{status=Acknowledged command={} channel=device enrollment={}}}",
            first.uuid, t.id
        ),
        "/mdm/command",
    );
    t.mac
        .respond(&next.uuid, CommandStatus::Acknowledged, Default::default())
        .await
        .unwrap();

    // NotNow: the server answers empty although another command waits; the Mac polls again
    // later and gets the deferred command first.
    let (_, c) = t
        .queue(json!({"request_type": "CertificateList"}), "device", false)
        .await;
    let (_, d) = t
        .queue(json!({"request_type": "ProfileList"}), "device", false)
        .await;
    t.mac.conditions().not_now.push("CertificateList".into());
    let handled = t.mac.run_commands(Channel::Device, 10).await.unwrap();
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert_eq!(handled[0].status, "NotNow");
    assert_eq!(
        t.status_of(c["command_uuid"].as_str().unwrap()).await,
        ["not_now"]
    );
    let handled = t.mac.run_commands(Channel::Device, 10).await.unwrap();
    let order: Vec<&str> = handled.iter().map(|h| h.command_uuid.as_str()).collect();
    assert_eq!(
        order,
        [
            c["command_uuid"].as_str().unwrap(),
            d["command_uuid"].as_str().unwrap()
        ]
    );
    assert!(handled.iter().all(|h| h.status == "Acknowledged"));

    // Device-channel-only commands are refused for the user channel (schema `userchannel`),
    // and nothing is queued.
    let before = t.history().await.len();
    let (st, body) = t
        .queue(
            json!({"request_type": "Raw", "raw_request_type": "ProvisioningProfileList"}),
            "user",
            false,
        )
        .await;
    assert_eq!(st, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user channel"),
        "{body}"
    );
    assert_eq!(t.history().await.len(), before);

    // Bootstrap tokens are not part of User Enrollment (schema: userenrollment forbidden).
    let topic = t.mac.profile().unwrap().mdm.topic.clone();
    let mut get = device::authenticate(t.mac.facts(), &topic, t.mac.enrollment_id());
    get.retain(|k, _| k == "EnrollmentID");
    get.insert("MessageType".into(), "GetBootstrapToken".into());
    let err = t.mac.check_in(Step::CheckIn, get).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");

    // Authenticate without OSVersion (not guaranteed on macOS) is accepted.
    let mut auth = device::authenticate(t.mac.facts(), &topic, t.mac.enrollment_id());
    auth.remove("OSVersion");
    t.mac.check_in(Step::Authenticate, auth).await.unwrap();
    assert!(t.mac.idle().await.unwrap().is_none());
    t.s.stop().await;
}

#[rstest]
#[tokio::test]
async fn user_channel(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(mut t) = setup(db).await else { return };

    // Enrolled, the Mac was put under declarative management on its user channel (a User
    // Enrollment Mac's default status subscriptions); it synchronises first.
    support::sync_declarative_start(&mut t.mac).await;
    let user_token = hex_of(&t.mac.push(Channel::User).token);
    let user_pushes = |t: &Setup| {
        t.fake
            .pushes()
            .iter()
            .filter(|p| p.token_hex == user_token)
            .count()
    };
    for _ in 0..100 {
        if user_pushes(&t) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(user_pushes(&t), 1, "declarative management's push");

    // A user-channel command wakes the user channel's token; the Mac answers it on the user
    // channel with its bearer token.
    let (st, q) = t
        .queue(json!({"request_type": "ProfileList"}), "user", true)
        .await;
    assert_eq!(st, 202, "{q}");
    let device_token = hex_of(&t.mac.push(Channel::Device).token);
    let mut woke_user = false;
    for _ in 0..100 {
        woke_user = user_pushes(&t) == 2;
        if woke_user {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(woke_user, "pushes: {:?}", t.fake.pushes());
    assert_ne!(user_token, device_token);
    let handled = t.mac.run_commands(Channel::User, 5).await.unwrap();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].command_uuid, q["command_uuid"].as_str().unwrap());

    // Without the bearer token, a user-channel request is challenged (never a bare 401).
    let idle_user = device::to_xml(device::command_report(
        t.mac.enrollment_id(),
        Some(t.mac.user_channel()),
        "Idle",
        None,
        &Default::default(),
    ))
    .unwrap();
    let challenge = unsigned_challenge(&t, &idle_user).await;
    assert!(
        challenge.starts_with("Bearer method=\"apple-as-web\""),
        "{challenge}"
    );

    // The administrator asks for a new sign-in: the Mac's next user-channel request is
    // challenged, the person signs in again on the web page, and the Mac carries on with the
    // new token; the old one is dead.
    let old = t.mac.access_token().unwrap().to_string();
    let r = t
        .api
        .post(format!(
            "{}/api/v1/devices/{}/require-sign-in",
            t.s.url, t.id
        ))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(t.mac.idle_on(Channel::User).await.unwrap().is_none());
    assert!(t.mac.steps().iter().any(|l| l.contains("signing in again")));
    assert_ne!(t.mac.access_token().unwrap(), old);
    let (ok, out, _) = t.s.cli(&["audit", "--limit", "5"]);
    assert!(ok);
    assert!(out.contains("enrollment.require_sign_in"), "{out}");
    // The device channel never needed the token.
    assert!(t.mac.idle().await.unwrap().is_none());

    // A disabled person: the user channel is challenged and the sign-in refuses them; the
    // device channel still works (the Mac stays enrolled, the organisation can still remove
    // its data).
    assert!(t.s.cli(&["user", "disable", "ann@example.com"]).0);
    let err = t.mac.idle_on(Channel::User).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("disabled"), "{err}");
    assert!(t.mac.is_enrolled());
    assert!(t.mac.idle().await.unwrap().is_none());
    t.s.stop().await;
}

/// The `WWW-Authenticate` value answered to a user-channel request without a bearer token.
async fn unsigned_challenge(t: &Setup, body: &[u8]) -> String {
    let url = t.mac.profile().unwrap().mdm.server_url.clone();
    let r = t
        .mac
        .send_signed(
            Step::Command,
            &url,
            "application/x-apple-aspen-mdm",
            body.to_vec(),
            Channel::Device,
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    r.headers()
        .get(WWW_AUTHENTICATE)
        .expect("401 comes with the challenge")
        .to_str()
        .unwrap()
        .to_string()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
