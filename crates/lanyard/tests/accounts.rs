#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! End to end, on both databases: password sign-in throttling by (account, client address) for
//! the admin API, the portal and the enrollment pages; `X-Forwarded-For` believed only from a
//! `--trusted-proxy`; the same answers for unknown and known names; `lanyard admin unlock` and
//! `lanyard user unlock`; and administrator hygiene (a new password ends other sessions,
//! disable, remove, the last administrator kept), audited.
//!
//! Nothing here depends on timing: a throttled key is found by trying until the first 429
//! (waits double, so one comes within a bounded number of attempts however slow the machine),
//! and what must not be throttled is shown with keys that never reach the limit.

mod support;

use rstest::rstest;

use reqwest::Client;
use serde_json::{json, Value};
use support::portal::{browser, csrf_of, get};
use support::{Db, Server};

const ANN: &str = "ann@example.com";
const ANN_PASSWORD: &str = "ann's long password";
/// Attempts within which a key must be refused: five free, then doubling waits.
const MAX_TRIES: usize = 40;

/// One admin API sign-in, optionally through a proxy naming `xff` as the client; returns the
/// status, the `Retry-After` header and the body.
async fn api_sign_in(
    c: &Client,
    s: &Server,
    user: &str,
    password: &str,
    xff: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut req = c
        .post(format!("{}/api/v1/sessions", s.url))
        .json(&json!({"username": user, "password": password}));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    (status, retry, r.json().await.unwrap())
}

/// Wrong passwords for `user` (the client named by `xff(i)` on try `i`) until the first 429;
/// returns every answer up to and including it.
async fn until_refused(
    c: &Client,
    s: &Server,
    user: &str,
    xff: impl Fn(usize) -> Option<String>,
) -> Vec<(u16, Option<u64>, Value)> {
    let mut seen = Vec::new();
    for i in 0..MAX_TRIES {
        let answer = api_sign_in(c, s, user, "a wrong password", xff(i).as_deref()).await;
        let refused = answer.0 == 429;
        seen.push(answer);
        if refused {
            return seen;
        }
    }
    panic!("{user}: no 429 in {MAX_TRIES} attempts: {seen:?}");
}

fn cli_ok(s: &Server, args: &[&str]) -> String {
    let (ok, out, err) = s.cli(args);
    assert!(ok, "lanyard {} failed: {err}", args.join(" "));
    out
}

async fn audit_actions(c: &Client, s: &Server, token: &str, action: &str) -> Vec<Value> {
    let r = c
        .get(format!("{}/api/v1/audit?action={action}", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Vec<Value>>().await.unwrap()
}

/// Behind a trusted proxy: an attacker's guesses from one address throttle only that address;
/// unknown and known names are answered alike; `admin unlock` clears the throttle.
#[rstest]
#[tokio::test]
async fn admin_throttle_by_address(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = Server::start_with(db, &[("LANYARD_TRUSTED_PROXY", "127.0.0.1/32")]).await else {
        return;
    };
    let c = s.client();
    let attacker = || Some("198.51.100.7".to_string());

    let known = until_refused(&c, &s, "admin", |_| attacker()).await;
    let (status, retry, body) = known.last().unwrap();
    assert_eq!(*status, 429);
    assert!(retry.is_some_and(|r| r >= 1), "Retry-After: {retry:?}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(known.len() > 5, "five attempts are always free: {known:?}");
    for (status, retry, _) in &known[..known.len() - 1] {
        assert_eq!((*status, *retry), (401, None));
    }

    // The real administrator at another address is not slowed down at all.
    let (status, _, _) = api_sign_in(&c, &s, "admin", &s.admin_password, Some("192.0.2.10")).await;
    assert_eq!(status, 201);

    // An unknown name: the same answers (the 429 tells nothing about who exists).
    let unknown = until_refused(&c, &s, "nobody-here", |_| attacker()).await;
    assert_eq!(unknown[0].2, known[0].2, "401 bodies differ");
    assert_eq!(unknown.last().unwrap().2, known.last().unwrap().2);
    assert!(unknown.last().unwrap().1.is_some());
    assert!(unknown.len() > 5);

    // A trusted proxy's X-Forwarded-For is honoured: each new client address is a new key.
    for i in 0..12 {
        let xff = format!("203.0.113.{i}");
        let (status, _, _) = api_sign_in(&c, &s, "admin", "a wrong password", Some(&xff)).await;
        assert_eq!(status, 401, "client {xff}");
    }

    // `lanyard admin unlock` forgets the failures from every address, audited.
    let out = cli_ok(&s, &["admin", "unlock", "admin"]);
    assert!(out.contains("unlocked administrator admin"), "{out}");
    let (status, _, created) =
        api_sign_in(&c, &s, "admin", &s.admin_password, attacker().as_deref()).await;
    assert_eq!(status, 201);
    let token = created["session_token"].as_str().unwrap();
    let lines = audit_actions(&c, &s, token, "admin.unlock").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["target"], "admin");
    let (ok, _, err) = s.cli(&["admin", "unlock", "nobody-here"]);
    assert!(!ok && err.contains("not found"), "{err}");
    s.stop().await;
}

/// Without --trusted-proxy, X-Forwarded-For names nobody: guesses that each claim a new client
/// address are still one address's guesses, and are throttled.
#[rstest]
#[tokio::test]
async fn untrusted_forwarded_for_is_ignored(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let c = s.client();
    let answers = until_refused(&c, &s, "admin", |i| Some(format!("203.0.113.{i}"))).await;
    assert_eq!(answers.last().unwrap().0, 429);
    s.stop().await;
}

/// One enrollment sign-in through a proxy naming `xff`; returns the status and the page.
async fn enroll_sign_in(s: &Server, email: &str, password: &str, xff: &str) -> (u16, String) {
    let b = browser(s);
    let (st, page) = get(&b, s, "/enroll/sign-in").await;
    assert_eq!(st, 200);
    let csrf = csrf_of(&page);
    let r = b
        .post(format!("{}/enroll/sign-in", s.url))
        .header("x-forwarded-for", xff)
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_identifier", ""),
            ("email", email),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 429 {
        assert!(r.headers().get("retry-after").is_some());
    }
    (status, r.text().await.unwrap())
}

/// The enrollment pages: an attacker's guesses for Ann (or for an unknown email) from one
/// address do not stop Ann at another; `lanyard user unlock` clears the attacker's address.
#[rstest]
#[tokio::test]
async fn enrollment_throttle_by_address(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = Server::start_with(db, &[("LANYARD_TRUSTED_PROXY", "127.0.0.1")]).await else {
        return;
    };
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", ANN, "--password", "-"],
        &format!("{ANN_PASSWORD}\n"),
    );
    assert!(ok, "{err}");
    cli_ok(&s, &["settings", "set", "managed-domains", "example.com"]);

    let attacker = "198.51.100.7";
    let mut refused = None;
    for _ in 0..MAX_TRIES {
        let (status, page) = enroll_sign_in(&s, ANN, "a wrong password", attacker).await;
        if status == 429 {
            refused = Some(page);
            break;
        }
        assert_eq!(status, 401);
    }
    let page = refused.expect("no 429 for Ann from the attacker's address");
    assert!(page.contains("Too many failed sign-ins"), "{page}");

    // Ann at home is not slowed down.
    let (status, _) = enroll_sign_in(&s, ANN, ANN_PASSWORD, "192.0.2.10").await;
    assert_eq!(status, 303);

    // An unknown email gets the same pages.
    let mut unknown_refused = false;
    for _ in 0..MAX_TRIES {
        let (status, _) = enroll_sign_in(&s, "eve@example.com", "a wrong password", attacker).await;
        if status == 429 {
            unknown_refused = true;
            break;
        }
        assert_eq!(status, 401);
    }
    assert!(unknown_refused, "no 429 for an unknown email");

    let out = cli_ok(&s, &["user", "unlock", ANN]);
    assert!(out.contains("unlocked"), "{out}");
    let (status, _) = enroll_sign_in(&s, ANN, ANN_PASSWORD, attacker).await;
    assert_eq!(status, 303);
    s.stop().await;
}

async fn session(c: &Client, s: &Server, user: &str, password: &str) -> String {
    let (status, _, body) = api_sign_in(c, s, user, password, None).await;
    assert_eq!(status, 201, "{body}");
    body["session_token"].as_str().unwrap().to_string()
}

async fn whoami_status(c: &Client, s: &Server, token: &str) -> u16 {
    c.get(format!("{}/api/v1/admins", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn patch_admin(c: &Client, s: &Server, token: &str, name: &str, body: Value) -> (u16, Value) {
    let r = c
        .patch(format!("{}/api/v1/admins/{name}", s.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A new password ends the administrator's other sessions (all of them when the CLI sets it);
/// administrators can be disabled, enabled and removed (API and CLI), audited; the last
/// enabled administrator cannot be disabled or removed.
#[rstest]
#[tokio::test]
async fn admin_lifecycle(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let c = s.client();
    let first = session(&c, &s, "admin", &s.admin_password).await;
    let second = session(&c, &s, "admin", &s.admin_password).await;

    // Changing one's own password keeps this session and ends the other.
    let (status, body) = patch_admin(
        &c,
        &s,
        &first,
        "admin",
        json!({"password": "a brand new password"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami_status(&c, &s, &first).await, 200);
    assert_eq!(whoami_status(&c, &s, &second).await, 401);
    let (status, _, _) = api_sign_in(&c, &s, "admin", &s.admin_password, None).await;
    assert_eq!(status, 401, "the old password still works");

    // Set by the operator on the CLI: every session ends.
    let (ok, out, err) = s.cli_stdin(
        &["admin", "set-password", "admin", "--password", "-"],
        "the operator's password\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("1 sessions ended"), "{out}");
    assert_eq!(whoami_status(&c, &s, &first).await, 401);
    let root = session(&c, &s, "admin", "the operator's password").await;

    // The last enabled administrator stays.
    let (status, body) = patch_admin(&c, &s, &root, "admin", json!({"enabled": false})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last enabled administrator"),
        "{body}"
    );
    let r = c
        .delete(format!("{}/api/v1/admins/admin", s.url))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let (ok, _, err) = s.cli(&["admin", "remove", "admin"]);
    assert!(!ok && err.contains("last enabled administrator"), "{err}");

    // A second administrator: disabled (their session ends), enabled, removed.
    let r = c
        .post(format!("{}/api/v1/admins", s.url))
        .bearer_auth(&root)
        .json(&json!({"username": "ops", "password": "ops password 123", "role": "administrator"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ops = session(&c, &s, "ops", "ops password 123").await;
    let (status, body) = patch_admin(&c, &s, &root, "ops", json!({"enabled": false})).await;
    assert_eq!((status, &body["enabled"]), (200, &json!(false)), "{body}");
    assert_eq!(whoami_status(&c, &s, &ops).await, 401);
    let (status, _, _) = api_sign_in(&c, &s, "ops", "ops password 123", None).await;
    assert_eq!(status, 403, "a disabled administrator signed in");
    let out = cli_ok(&s, &["admin", "enable", "ops"]);
    assert!(out.contains("enabled administrator ops"), "{out}");
    session(&c, &s, "ops", "ops password 123").await;
    // Disabled from the CLI, then removed over the API.
    let out = cli_ok(&s, &["admin", "disable", "ops"]);
    assert!(out.contains("disabled administrator ops"), "{out}");
    let r = c
        .delete(format!("{}/api/v1/admins/ops", s.url))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _, _) = api_sign_in(&c, &s, "ops", "ops password 123", None).await;
    assert_eq!(status, 401);
    let listed: Vec<Value> = c
        .get(format!("{}/api/v1/admins", s.url))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    for (action, count) in [
        ("admin.set_password", 2),
        ("admin.disable", 2),
        ("admin.enable", 1),
        ("admin.remove", 1),
    ] {
        let lines = audit_actions(&c, &s, &root, action).await;
        assert_eq!(lines.len(), count, "{action}: {lines:?}");
    }
    s.stop().await;
}
