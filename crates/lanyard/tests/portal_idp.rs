#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The portal's Identity providers page over HTTP, on both databases: a provider added, listed,
//! edited (a blank secret keeps the stored one), disabled and removed through the portal; a
//! duplicate name, a bad issuer and a bad email claim refused on the page with nothing changed;
//! the client secret never in the HTML; a forged CSRF token and a read-only administrator
//! refused with nothing changed.

mod support;

use rstest::rstest;

use reqwest::Client;
use serde_json::Value;
use support::portal::{browser, get, post, read_only_browser, sign_in};
use support::{Db, Server};

const SECRET: &str = "very-secret-client-secret-4711";

async fn providers(s: &Server, api: &Client, token: &str) -> Value {
    api.get(format!("{}/api/v1/identity-providers", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn add_form<'a>(csrf: &'a str, name: &'a str, issuer: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("name", name),
        ("display_name", "Corporate sign-in"),
        ("issuer", issuer),
        ("client_id", "lanyard-client"),
        ("client_secret", SECRET),
        ("scopes", "email profile"),
        ("email_claim", "email"),
        ("allow_create_users", "on"),
        ("enabled", "on"),
    ]
}

async fn idp_walk(db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let api = s.client();
    let token = s.admin_session(&api).await;
    let c = browser(&s);
    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;

    // The page is in the navigation and starts empty.
    let (st, page) = get(&c, &s, "/portal/identity-providers").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("href=\"/portal/identity-providers\" aria-current=\"page\""),
        "{page}"
    );
    assert!(page.contains("No identity providers yet"), "{page}");

    // A forged CSRF token adds nothing.
    let (st, page) = post(
        &c,
        &s,
        "/portal/identity-providers",
        &add_form("forged", "corp", "https://login.example.com"),
    )
    .await;
    assert_eq!(st, 403);
    assert!(page.contains("nothing was"), "{page}");
    assert_eq!(providers(&s, &api, &token).await, serde_json::json!([]));

    // Added through the portal, then listed with its settings; the secret is never shown.
    let (st, page) = post(
        &c,
        &s,
        "/portal/identity-providers",
        &add_form(&csrf, "corp", "https://login.example.com"),
    )
    .await;
    assert_eq!(st, 303, "{page}");
    let (st, page) = get(&c, &s, "/portal/identity-providers?done=added&name=corp").await;
    assert_eq!(st, 200);
    assert!(page.contains("Identity provider corp added."), "{page}");
    assert!(page.contains("data-provider=\"corp\""), "{page}");
    for shown in [
        "Corporate sign-in",
        "https://login.example.com",
        "lanyard-client",
        "email profile",
        "<td class=\"secret-set\">Yes</td>",
        "<td class=\"enabled\">Yes</td>",
    ] {
        assert!(page.contains(shown), "{shown} missing: {page}");
    }
    assert!(!page.contains(SECRET), "{page}");
    let list = providers(&s, &api, &token).await;
    assert_eq!(list[0]["name"], "corp");
    assert_eq!(list[0]["client_secret_set"], true);
    assert_eq!(list[0]["allow_create_users"], true);
    let before = list;

    // A duplicate name, a bad issuer and a bad claim: a clear message, typed values kept,
    // nothing changed.
    let (st, page) = post(
        &c,
        &s,
        "/portal/identity-providers",
        &add_form(&csrf, "corp", "https://other.example.com"),
    )
    .await;
    assert_eq!(st, 409);
    assert!(page.contains("role=\"alert\""), "{page}");
    assert!(page.contains("already exists"), "{page}");
    assert!(!page.contains(SECRET), "{page}");
    let (st, page) = post(
        &c,
        &s,
        "/portal/identity-providers",
        &add_form(&csrf, "other", "http://login.example.com"),
    )
    .await;
    assert_eq!(st, 422);
    assert!(page.contains("must use https"), "{page}");
    assert!(page.contains("value=\"other\""), "{page}");
    assert!(!page.contains(SECRET), "{page}");
    let mut bad_claim = add_form(&csrf, "other", "https://login.example.com");
    bad_claim.retain(|(k, _)| *k != "email_claim");
    bad_claim.push(("email_claim", "two words"));
    let (st, page) = post(&c, &s, "/portal/identity-providers", &bad_claim).await;
    assert_eq!(st, 422);
    assert!(page.contains("without spaces"), "{page}");
    assert_eq!(providers(&s, &api, &token).await, before);

    // The edit page never shows the secret; a blank secret field keeps it.
    let (st, page) = get(&c, &s, "/portal/identity-providers/corp").await;
    assert_eq!(st, 200);
    assert!(page.contains("a secret is set"), "{page}");
    assert!(!page.contains(SECRET), "{page}");
    let edit = [
        ("csrf", csrf.as_str()),
        ("display_name", "Corp SSO"),
        ("issuer", "https://sso.example.com"),
        ("client_id", "lanyard-client"),
        ("client_secret", ""),
        ("scopes", "email"),
        ("email_claim", "upn"),
        ("enabled", "on"),
    ];
    let (st, page) = post(&c, &s, "/portal/identity-providers/corp", &edit).await;
    assert_eq!(st, 303, "{page}");
    let list = providers(&s, &api, &token).await;
    assert_eq!(list[0]["display_name"], "Corp SSO");
    assert_eq!(list[0]["issuer"], "https://sso.example.com");
    assert_eq!(list[0]["email_claim"], "upn");
    assert_eq!(list[0]["scopes"], serde_json::json!(["email"]));
    assert_eq!(list[0]["allow_create_users"], false);
    assert_eq!(list[0]["client_secret_set"], true);
    // A bad issuer on the edit form changes nothing.
    let mut bad = edit.to_vec();
    bad.retain(|(k, _)| *k != "issuer");
    bad.push(("issuer", "not a url"));
    let (st, page) = post(&c, &s, "/portal/identity-providers/corp", &bad).await;
    assert_eq!(st, 422);
    assert!(page.contains("Nothing was changed"), "{page}");
    let after_edit = providers(&s, &api, &token).await;
    assert_eq!(after_edit[0]["issuer"], "https://sso.example.com");

    // A read-only administrator sees the page; every change is refused with a message.
    let (v, vcsrf) = read_only_browser(&s).await;
    let (st, page) = get(&v, &s, "/portal/identity-providers").await;
    assert_eq!(st, 200);
    assert!(page.contains("data-provider=\"corp\""), "{page}");
    assert!(!page.contains(SECRET), "{page}");
    let refusals: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "/portal/identity-providers",
            add_form(&vcsrf, "viewer-idp", "https://login.example.com"),
        ),
        (
            "/portal/identity-providers/corp",
            vec![
                ("csrf", vcsrf.as_str()),
                ("issuer", "https://evil.example.com"),
                ("client_id", "x"),
                ("email_claim", "email"),
            ],
        ),
        (
            "/portal/identity-providers/corp/enabled",
            vec![("csrf", vcsrf.as_str()), ("enabled", "off")],
        ),
        (
            "/portal/identity-providers/corp/remove",
            vec![("csrf", vcsrf.as_str()), ("confirm", "yes")],
        ),
    ];
    for (path, form) in &refusals {
        let (st, page) = post(&v, &s, path, form).await;
        assert_eq!(st, 403, "{path}: {page}");
        assert!(
            page.contains("Read-only administrators cannot change anything"),
            "{path}: {page}"
        );
    }
    assert_eq!(providers(&s, &api, &token).await, after_edit);

    // Disable, enable, then remove (only with the confirmation ticked).
    let (st, _) = post(
        &c,
        &s,
        "/portal/identity-providers/corp/enabled",
        &[("csrf", &csrf), ("enabled", "off")],
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(providers(&s, &api, &token).await[0]["enabled"], false);
    let (_, page) = get(&c, &s, "/portal/identity-providers").await;
    assert!(page.contains("<td class=\"enabled\">No</td>"), "{page}");
    let (st, _) = post(
        &c,
        &s,
        "/portal/identity-providers/corp/enabled",
        &[("csrf", &csrf), ("enabled", "on")],
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(providers(&s, &api, &token).await[0]["enabled"], true);
    let (st, page) = post(
        &c,
        &s,
        "/portal/identity-providers/corp/remove",
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(st, 422);
    assert!(page.contains("Tick the confirmation box"), "{page}");
    assert_eq!(
        providers(&s, &api, &token).await.as_array().unwrap().len(),
        1
    );
    let (st, _) = post(
        &c,
        &s,
        "/portal/identity-providers/corp/remove",
        &[("csrf", &csrf), ("confirm", "yes")],
    )
    .await;
    assert_eq!(st, 303);
    assert_eq!(providers(&s, &api, &token).await, serde_json::json!([]));
    let (st, page) = get(&c, &s, "/portal/identity-providers/corp").await;
    assert_eq!(st, 404, "{page}");

    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn portal_idp(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    idp_walk(db).await;
}
