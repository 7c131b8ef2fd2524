#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The portal's Administrators page as a browser uses it, on both databases: add an
//! administrator, set their password (their other sessions end), forget their failed sign-ins,
//! disable, enable and remove them; the last enabled Administrator is kept; a read-only
//! administrator sees no controls and is refused a change; every change is audited.

mod support;

use rstest::rstest;

use serde_json::{json, Value};
use support::portal::{browser, get, post, sign_in};
use support::{Db, Server};

const OPS_PASSWORD: &str = "ops password 123";

async fn api_sign_in(s: &Server, user: &str, password: &str) -> u16 {
    s.client()
        .post(format!("{}/api/v1/sessions", s.url))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn audit_actions(s: &Server) -> Vec<String> {
    let (ok, out, err) = s.cli(&["audit", "--json", "--limit", "200"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

#[rstest]
#[tokio::test]
async fn administrators_page(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let c = browser(&s);
    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;
    let (st, page) = get(&c, &s, "/portal/admins").await;
    assert_eq!(st, 200);
    assert!(page.contains("admin (you)"), "{page}");
    assert!(page.contains("Add an administrator"), "{page}");

    // A forged form changes nothing.
    let (st, _) = post(
        &c,
        &s,
        "/portal/admins",
        &[
            ("csrf", "forged"),
            ("username", "ops"),
            ("role", "administrator"),
            ("password", OPS_PASSWORD),
        ],
    )
    .await;
    assert_eq!(st, 403);
    // Add, with a name that must be escaped refused by the domain's rule.
    let (st, page) = post(
        &c,
        &s,
        "/portal/admins",
        &[
            ("csrf", &csrf),
            ("username", "<b>x</b>"),
            ("role", "administrator"),
            ("password", OPS_PASSWORD),
        ],
    )
    .await;
    assert_eq!(st, 422, "{page}");
    assert!(page.contains("&lt;b&gt;x&lt;/b&gt;"), "{page}");
    assert!(!page.contains("<b>x</b>"), "{page}");
    let (st, _) = post(
        &c,
        &s,
        "/portal/admins",
        &[
            ("csrf", &csrf),
            ("username", "ops"),
            ("role", "administrator"),
            ("password", OPS_PASSWORD),
        ],
    )
    .await;
    assert_eq!(st, 303);
    let (_, page) = get(&c, &s, "/portal/admins?done=added").await;
    assert!(page.contains("Administrator added."), "{page}");
    assert!(page.contains("/portal/admins/ops/remove"), "{page}");

    // Ops signs in elsewhere; setting their password here ends that session.
    let ops = browser(&s);
    sign_in(&ops, &s, "ops", OPS_PASSWORD).await;
    let (st, _) = post(
        &c,
        &s,
        "/portal/admins/ops/password",
        &[("csrf", &csrf), ("password", "another ops password")],
    )
    .await;
    assert_eq!(st, 303);
    let (st, _) = get(&ops, &s, "/portal/summary").await;
    assert_eq!(st, 303, "the other session should have ended");
    assert_eq!(api_sign_in(&s, "ops", OPS_PASSWORD).await, 401);

    // Failed sign-ins slow ops down; the page shows it and forgets them.
    let mut throttled = false;
    for _ in 0..20 {
        if api_sign_in(&s, "ops", "wrong password!").await == 429 {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "wrong passwords were never slowed down");
    assert_eq!(api_sign_in(&s, "ops", "another ops password").await, 429);
    let (_, page) = get(&c, &s, "/portal/admins").await;
    assert!(page.contains("Sign-ins slowed after failures"), "{page}");
    let (st, _) = post(&c, &s, "/portal/admins/ops/unlock", &[("csrf", &csrf)]).await;
    assert_eq!(st, 303);
    assert_eq!(api_sign_in(&s, "ops", "another ops password").await, 201);

    // Disable, enable, remove.
    let (st, _) = post(
        &c,
        &s,
        "/portal/admins/ops/enabled",
        &[("csrf", &csrf), ("enabled", "false")],
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(api_sign_in(&s, "ops", "another ops password").await, 403);
    let (st, _) = post(
        &c,
        &s,
        "/portal/admins/ops/enabled",
        &[("csrf", &csrf), ("enabled", "true")],
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(api_sign_in(&s, "ops", "another ops password").await, 201);
    let (st, _) = post(&c, &s, "/portal/admins/ops/remove", &[("csrf", &csrf)]).await;
    assert_eq!(st, 303);
    let (_, page) = get(&c, &s, "/portal/admins").await;
    assert!(!page.contains("/portal/admins/ops/"), "{page}");
    assert_eq!(api_sign_in(&s, "ops", "another ops password").await, 401);

    // The last enabled Administrator stays: refused with the reason, nothing changed.
    let (st, page) = post(
        &c,
        &s,
        "/portal/admins/admin/enabled",
        &[("csrf", &csrf), ("enabled", "false")],
    )
    .await;
    assert_eq!(st, 409, "{page}");
    assert!(page.contains("last"), "{page}");
    let (st, _) = get(&c, &s, "/portal/admins").await;
    assert_eq!(st, 200);

    // A read-only administrator sees no controls but their own password, and is refused.
    let api = s.client();
    s.read_only_session(&api).await;
    let viewer = browser(&s);
    let vcsrf = sign_in(&viewer, &s, "viewer", support::VIEWER_PASSWORD).await;
    let (_, page) = get(&viewer, &s, "/portal/admins").await;
    assert!(!page.contains("Add an administrator"), "{page}");
    assert!(!page.contains("/portal/admins/admin/"), "{page}");
    assert!(page.contains("/portal/admins/viewer/password"), "{page}");
    let (st, _) = post(
        &viewer,
        &s,
        "/portal/admins/admin/enabled",
        &[("csrf", &vcsrf), ("enabled", "false")],
    )
    .await;
    assert_eq!(st, 403);
    let (st, _) = post(
        &viewer,
        &s,
        "/portal/admins/viewer/password",
        &[("csrf", &vcsrf), ("password", "the viewer's new one")],
    )
    .await;
    assert_eq!(st, 303);

    let actions = audit_actions(&s);
    for a in [
        "admin.create",
        "admin.set_password",
        "admin.unlock",
        "admin.disable",
        "admin.enable",
        "admin.remove",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} not audited: {actions:?}"
        );
    }
    s.stop().await;
}
