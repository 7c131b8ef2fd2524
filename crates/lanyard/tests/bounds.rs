#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! What devices and administrators can make Lanyard store, on both databases, against the real
//! `lanyard serve`:
//! - one device search: the portal's Devices page, the admin API's device list, the API's
//!   command "by filter" and the portal's "send to every matching device" find the same
//!   devices for a search with `_`, `%` or `\`;
//! - device bodies are capped per endpoint (413, nothing stored) and declarative-management
//!   status reports keep only the latest value per status item (a malformed one is 400, an
//!   unassigned declaration 404, nothing stored);
//! - a NUL character in an API JSON field, a portal form, a query string or a device plist is
//!   refused (400) and changes nothing.

mod support;

use rstest::rstest;

use base64::Engine as _;

use std::collections::BTreeMap;

use lanyard_testkit::sim::{SimMac, SimOptions, CHECKIN_CONTENT_TYPE, COMMAND_CONTENT_TYPE};
use lanyard_testkit::Step;
use reqwest::Client;
use serde_json::{json, Value};
use support::portal::{browser, get, sign_in};
use support::{Db, Server};

const PASSWORD: &str = "a long password";

fn sim(s: &Server, email: &str) -> SimMac {
    SimMac::new(SimOptions {
        ownership: lanyard_testkit::sim::Ownership::Employee,
        attrs: BTreeMap::new(),
        os_version: "15.2".into(),
        ca_cert_pem: Some(s.ca_pem()),
        push_topic: s.push_topic(),
        ..SimOptions::new(s.url.clone(), email, PASSWORD)
    })
    .unwrap()
}

/// A server with the push certificate, the managed domain and these users.
async fn setup(db: Db, emails: &[&str]) -> Option<Server> {
    let s = Server::start(db).await?;
    s.upload_push_certificate();
    for email in emails {
        let (ok, _, err) = s.cli_stdin(
            &["user", "add", email, "--password", "-"],
            &format!("{PASSWORD}\n"),
        );
        assert!(ok, "{email}: {err}");
    }
    let (ok, _, err) = s.cli(&["settings", "set", "managed-domains", "example.com"]);
    assert!(ok, "{err}");
    Some(s)
}

/// One number from the server's database.
async fn scalar(s: &Server, sql: &str) -> i64 {
    use sqlx::Connection;
    if s.database_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&s.database_url)
            .await
            .unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(&s.database_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The enrollment ids a portal page links to (`/portal/devices/{id}`), sorted.
fn linked_devices(page: &str) -> Vec<String> {
    let marker = "href=\"/portal/devices/";
    let mut ids: Vec<String> = page
        .match_indices(marker)
        .map(|(i, _)| {
            let rest = &page[i + marker.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The enrollments a queued command went to, sorted.
async fn command_targets(s: &Server, api: &Client, token: &str, uuid: &str) -> Vec<String> {
    let r = api
        .get(format!("{}/api/v1/commands/{uuid}", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["enrollment_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn one_search(db: Db) {
    let emails = ["a_b@example.com", "a%b@example.com", "axb@example.com"];
    let Some(s) = setup(db, &emails).await else {
        return;
    };
    let mut by_email = BTreeMap::new();
    for email in emails {
        let mut mac = sim(&s, email);
        mac.enroll().await.unwrap();
        by_email.insert(email, mac.enrollment_id().to_string());
    }
    let (ok, out, err) = s.cli(&["device", "list", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let id_of = |email: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["managed_apple_id"] == email)
            .unwrap_or_else(|| panic!("{email} in {listed}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (u, p, x) = (
        id_of("a_b@example.com"),
        id_of("a%b@example.com"),
        id_of("axb@example.com"),
    );
    let api = s.client();
    let token = s.admin_session(&api).await;
    let c = browser(&s);
    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    for (search, want) in [
        ("_", vec![u.clone()]),
        ("%", vec![p.clone()]),
        ("\\", vec![]),
        ("A_B", vec![u.clone()]),
        (" axb ", vec![x.clone()]),
        ("", vec![u.clone(), p.clone(), x.clone()]),
    ] {
        let want = sorted(want);
        // The Devices page.
        let (st, page) = get(
            &c,
            &s,
            &format!("/portal/devices?search={}&status=enrolled", enc(search)),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(linked_devices(&page), want, "page, search {search:?}");
        // The API's device list.
        let r = api
            .get(format!("{}/api/v1/devices?search={}", s.url, enc(search)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let api_ids = sorted(
            v.as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string())
                .collect(),
        );
        assert_eq!(api_ids, want, "API list, search {search:?}");
        // A command by filter through the API.
        let r = api
            .post(format!("{}/api/v1/commands", s.url))
            .bearer_auth(&token)
            .json(&json!({"target": {"filter": {"search": search}},
                          "command": {"request_type": "DeviceInformation"}, "push": false}))
            .send()
            .await
            .unwrap();
        if want.is_empty() {
            assert_eq!(r.status(), 422, "API command, search {search:?}");
        } else {
            assert_eq!(r.status(), 202, "API command, search {search:?}");
            let q: Value = r.json().await.unwrap();
            let uuid = q["command_uuid"].as_str().unwrap();
            assert_eq!(
                command_targets(&s, &api, &token, uuid).await,
                want,
                "API command, search {search:?}"
            );
        }
        // "Send to every matching device" on the portal.
        let r = c
            .post(format!("{}/portal/commands?search={}", s.url, enc(search)))
            .form(&[
                ("csrf", csrf.as_str()),
                ("command", "SecurityInfo"),
                ("channel", "device"),
            ])
            .send()
            .await
            .unwrap();
        if want.is_empty() {
            assert_eq!(r.status(), 422, "portal command, search {search:?}");
        } else {
            assert_eq!(r.status(), 303, "portal command, search {search:?}");
            let to = r.headers()["location"].to_str().unwrap().to_string();
            let uuid = to.strip_prefix("/portal/commands/").unwrap();
            assert_eq!(
                command_targets(&s, &api, &token, uuid).await,
                want,
                "portal command, search {search:?}"
            );
        }
    }
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn one_search_lists_and_targets_the_same_devices(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    one_search(db).await;
}

/// A device-channel check-in body from `mac` with these keys (already XML).
fn checkin_body(mac: &SimMac, keys: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>{keys}\
         <key>EnrollmentID</key><string>{}</string></dict></plist>",
        mac.enrollment_id()
    )
    .into_bytes()
}

fn declarative(mac: &SimMac, endpoint: &str, data_base64: &str) -> Vec<u8> {
    checkin_body(
        mac,
        &format!(
            "<key>MessageType</key><string>DeclarativeManagement</string>\
             <key>Endpoint</key><string>{endpoint}</string><key>Data</key>\
             <data>{data_base64}</data>"
        ),
    )
}

async fn device_input(db: Db) {
    let Some(s) = setup(db, &["ann@example.com"]).await else {
        return;
    };
    let mut mac = sim(&s, "ann@example.com");
    mac.enroll().await.unwrap();
    let mdm = mac.profile().unwrap().mdm.clone();
    // A request sent on a connection the server closed after an early 413 (below) fails while
    // it is written, before any handler saw it; a Mac sends it again, and so does this.
    let put = |url: String, ct: &'static str, body: Vec<u8>| {
        let mac = &mac;
        async move {
            let (st, _, answer) = match mac.put_signed(Step::CheckIn, &url, ct, body.clone()).await
            {
                Ok(r) => r,
                Err(e) if closed_connection(&e.to_string()) => {
                    mac.put_signed(Step::CheckIn, &url, ct, body).await.unwrap()
                }
                Err(e) => panic!("{e}"),
            };
            (st.as_u16(), String::from_utf8_lossy(&answer).to_string())
        }
    };
    // An oversized body is refused by its Content-Length before it is read, and the connection
    // is closed after the 413 (RFC 9110, 413 Content Too Large: the server may close the
    // connection). A client still writing the body may see that close before it reads the
    // answer; either way nothing is stored, which the callers check.
    let put_oversized = |url: String, ct: &'static str, body: Vec<u8>| {
        let mac = &mac;
        async move {
            match mac.put_signed(Step::CheckIn, &url, ct, body).await {
                Ok((st, _, answer)) => {
                    Some((st.as_u16(), String::from_utf8_lossy(&answer).to_string()))
                }
                Err(e) => {
                    let m = e.to_string();
                    assert!(closed_connection(&m), "{m}");
                    None
                }
            }
        }
    };
    let stored = "SELECT (SELECT COUNT(*) FROM status_items) + \
                  (SELECT COUNT(*) FROM declaration_status)";

    // Status reports keep the latest value of each status item, not the messages: twelve
    // reports of one item leave one row.
    let report = base64::engine::general_purpose::STANDARD.encode(
        r#"{"StatusItems":{"device":{"operating-system":{"version":"15.2"}}},"Errors":[]}"#,
    );
    for n in 0..12 {
        let (st, a) = put(
            mdm.checkin_url.clone(),
            CHECKIN_CONTENT_TYPE,
            declarative(&mac, "status", &report),
        )
        .await;
        assert_eq!(st, 200, "status report {n}: {a}");
    }
    assert_eq!(scalar(&s, stored).await, 1);
    // A malformed report (`{}`: no StatusItems) is 400; a declaration the Mac was not given
    // is 404; neither stores anything.
    let (st, a) = put(
        mdm.checkin_url.clone(),
        CHECKIN_CONTENT_TYPE,
        declarative(&mac, "status", "e30="),
    )
    .await;
    assert_eq!(st, 400, "{a}");
    for n in 0..3 {
        let endpoint = format!("declaration/configuration/d{n}");
        let (st, a) = put(
            mdm.checkin_url.clone(),
            CHECKIN_CONTENT_TYPE,
            declarative(&mac, &endpoint, "e30="),
        )
        .await;
        assert_eq!(st, 404, "{endpoint}: {a}");
    }
    assert_eq!(scalar(&s, stored).await, 1);

    // Too large for its kind: 413 with the cap, nothing stored.
    let big = "AAAA".repeat(160 * 1024); // 480 KiB of data, 640 KiB of base64
    if let Some((st, a)) = put_oversized(
        mdm.checkin_url.clone(),
        CHECKIN_CONTENT_TYPE,
        declarative(&mac, "status", &big),
    )
    .await
    {
        assert_eq!(st, 413, "{a}");
        assert!(a.contains("512 KiB at most"), "{a}");
    }
    let under_cap = "AAAA".repeat(90 * 1024); // 360 KiB of base64, under 512 KiB
    let padded_auth = checkin_body(
        &mac,
        &format!(
            "<key>MessageType</key><string>Authenticate</string><key>Topic</key>\
             <string>{}</string><key>DeviceName</key><string>{under_cap}</string>",
            s.push_topic().unwrap()
        ),
    );
    let (st, a) = put(mdm.checkin_url.clone(), CHECKIN_CONTENT_TYPE, padded_auth).await;
    assert_eq!(st, 413, "{a}");
    assert!(
        a.contains("the Authenticate check-in is larger") && a.contains("64 KiB at most"),
        "{a}"
    );
    let report = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>\
         <key>Status</key><string>Idle</string><key>EnrollmentID</key><string>{}</string>\
         <key>Pad</key><data>{}</data></dict></plist>",
        mac.enrollment_id(),
        "AAAA".repeat(600 * 1024)
    );
    if let Some((st, a)) = put_oversized(
        mdm.server_url.clone(),
        COMMAND_CONTENT_TYPE,
        report.into_bytes(),
    )
    .await
    {
        assert_eq!(st, 413, "{a}");
        assert!(a.contains("2048 KiB at most"), "{a}");
    }
    // An Endpoint outside Apple's list is refused.
    let (st, a) = put(
        mdm.checkin_url.clone(),
        CHECKIN_CONTENT_TYPE,
        declarative(&mac, "anything/else", "e30="),
    )
    .await;
    assert_eq!(st, 400, "{a}");
    assert_eq!(scalar(&s, stored).await, 1);

    // NUL in a device plist: 400, nothing stored.
    let (st, a) = put(
        mdm.checkin_url.clone(),
        CHECKIN_CONTENT_TYPE,
        declarative(&mac, "status&#0;", "e30="),
    )
    .await;
    assert_eq!(st, 400, "{a}");
    assert!(a.contains("malformed property list"), "{a}");
    assert_eq!(scalar(&s, stored).await, 1);

    // NUL in an API JSON field, a query string, a portal form: 400, nothing changes.
    let api = s.client();
    let token = s.admin_session(&api).await;
    let users = "SELECT COUNT(*) FROM users";
    let before = scalar(&s, users).await;
    let r = api
        .post(format!("{}/api/v1/users", s.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"email": "nul\u0000@example.com", "display_name": "Nul"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid");
    assert!(v["error"]["message"].as_str().unwrap().contains("U+0000"));
    let r = api
        .get(format!("{}/api/v1/devices?search=a%00", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let c = browser(&s);
    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;
    let (st, _) = get(&c, &s, "/portal/devices?search=%00").await;
    assert_eq!(st, 400);
    let r = c
        .post(format!("{}/portal/users", s.url))
        .form(&[
            ("csrf", csrf.as_str()),
            ("email", "nul\0@example.com"),
            ("display_name", "Nul"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(scalar(&s, users).await, before);
    // A bulk command by a NUL search reaches nobody.
    let queued = "SELECT COUNT(*) FROM command_queue";
    let before = scalar(&s, queued).await;
    let r = c
        .post(format!("{}/portal/commands?search=%00", s.url))
        .form(&[
            ("csrf", csrf.as_str()),
            ("command", "SecurityInfo"),
            ("channel", "device"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(scalar(&s, queued).await, before);

    // The Mac's ordinary exchange still works.
    assert!(mac.idle().await.unwrap().is_none());
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn device_input_is_bounded_and_nul_refused(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    device_input(db).await;
}

/// Whether a client error says the server closed the connection under the request (after an
/// early 413 the server closes it; the write or the read of the next request on it fails:
/// "Broken pipe", "connection reset", or hyper's "connection closed before message completed").
fn closed_connection(message: &str) -> bool {
    message.contains("Broken pipe") || message.contains("reset") || message.contains("closed")
}
