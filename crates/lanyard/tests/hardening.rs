#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Hostile clients against the real `lanyard serve`, on both databases: a signed device body
//! built to exhaust the stack is refused with 400 and the server keeps serving.

mod support;

use std::collections::BTreeMap;

use lanyard_testkit::sim::{SimMac, SimOptions, CHECKIN_CONTENT_TYPE, COMMAND_CONTENT_TYPE};
use lanyard_testkit::Step;
use support::{Db, Server};

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

async fn deep_nesting_is_refused(db: Db) {
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
    for (url, content_type, message) in [
        (&mdm.checkin_url, CHECKIN_CONTENT_TYPE, checkin),
        (&mdm.server_url, COMMAND_CONTENT_TYPE, report),
    ] {
        // Repeated: one such request used to take every device down until a restart.
        for _ in 0..3 {
            let body = deeply_nested(message, &id, 35_000);
            assert!(body.len() > 600_000 && body.len() < 2 * 1024 * 1024);
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

#[tokio::test]
async fn deep_nesting_is_refused_sqlite() {
    deep_nesting_is_refused(Db::Sqlite).await;
}

#[tokio::test]
async fn deep_nesting_is_refused_postgres() {
    deep_nesting_is_refused(Db::Postgres).await;
}
