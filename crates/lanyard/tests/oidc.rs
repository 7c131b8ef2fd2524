#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Enrollment sign-in through an OpenID Connect identity provider, end to end on both
//! databases: the real `lanyard serve`, a real and independent provider (the certified
//! `oidc-provider` package from npm, run by `tests/oidc/provider.mjs` on loopback), and the
//! simulated Mac pressing "Sign in with …", signing in at the provider and finishing the
//! enrollment. Then the refusals — mismatched email, unverified email, altered state, expired
//! code, replayed callback, unknown person — each leaving no enrollment behind; an identifier
//! typed on the Mac that the user record maps to a different managed Apple Account; and the
//! admin API and CLI for providers (validation, conflicts, read-only refusal, secrets never
//! shown).

mod support;

use rstest::rstest;

use std::time::Duration;

use lanyard_testkit::{OidcTamper, SimError, SimMac, SimOidc, SimOptions, Step};
use serde_json::{json, Value};
use support::oidc::{start_provider, CLIENT_SECRET};
use support::{Db, Server};

const PASSWORD: &str = "a long enough password";

fn cli_ok(s: &Server, args: &[&str]) -> String {
    let (ok, out, err) = s.cli(args);
    assert!(ok, "lanyard {} failed: {err}", args.join(" "));
    out
}

fn add_user(s: &Server, email: &str) {
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", email, "--password", "-"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "user add {email}: {err}");
}

fn enrolled(s: &Server) -> Vec<Value> {
    let out = cli_ok(s, &["device", "list", "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] == "enrolled")
        .cloned()
        .collect()
}

/// A simulated Mac signed in (on the Mac) as `email`, signing in at the provider as `login`.
fn mac(s: &Server, email: &str, provider: &str, login: &str, tamper: OidcTamper) -> SimMac {
    let mut o = SimOptions::new(&s.url, email, PASSWORD);
    o.ca_cert_pem = Some(s.ca_pem());
    o.push_topic = s.push_topic();
    o.oidc = Some(SimOidc {
        provider: provider.into(),
        login: login.into(),
        // The test provider's password is the login.
        password: login.into(),
        tamper,
    });
    SimMac::new(o).unwrap()
}

fn assert_refused(e: &SimError, status: u16, needle: &str) {
    assert_eq!(e.step(), Step::SignIn, "{e}");
    assert_eq!(e.status(), Some(status), "{e}");
    assert!(
        e.message().contains(needle),
        "expected {needle:?} in the message: {e}"
    );
}

async fn refused(m: &mut SimMac) -> SimError {
    match m.enroll().await {
        Ok(r) => panic!("enrollment should have been refused: {r:?}"),
        Err(e) => e,
    }
}

async fn run(db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    s.upload_push_certificate();
    let Some(p) = start_provider(&s.url) else {
        return;
    };
    for u in ["ann@example.com", "bob@example.com", "carol@example.com"] {
        add_user(&s, u);
    }
    cli_ok(&s, &["settings", "set", "managed-domains", "example.com"]);

    // --- the admin API ---------------------------------------------------------------
    let c = s.client();
    let token = s.admin_session(&c).await;
    let api = |path: &str| format!("{}/api/v1{path}", s.url);
    let r = c
        .post(api("/identity-providers"))
        .bearer_auth(&token)
        .json(&json!({
            "name": "corp", "display_name": "Example Corp", "issuer": p.issuer,
            "client_id": "lanyard", "client_secret": CLIENT_SECRET,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body = r.text().await.unwrap();
    assert!(!body.contains(CLIENT_SECRET), "secret returned: {body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["client_secret_set"], true);
    assert_eq!(created["scopes"], json!(["email", "profile"]));
    assert_eq!(created["enabled"], true);

    let again = c
        .post(api("/identity-providers"))
        .bearer_auth(&token)
        .json(&json!({"name": "corp", "issuer": p.issuer, "client_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    for bad in [
        json!({"name": "plain", "issuer": "http://id.example.com", "client_id": "x"}),
        json!({"name": "Bad Name", "issuer": p.issuer, "client_id": "x"}),
        json!({"name": "nohost", "issuer": "not a url", "client_id": "x"}),
        json!({"name": "claim", "issuer": p.issuer, "client_id": "x", "email_claim": "a b"}),
    ] {
        let r = c
            .post(api("/identity-providers"))
            .bearer_auth(&token)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{bad}");
    }
    let r = c
        .post(api("/identity-providers"))
        .bearer_auth(&token)
        .json(&json!({"name": "x", "issuer": p.issuer, "client_id": "x", "surprise": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let list: Value = c
        .get(api("/identity-providers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "bad input changed nothing"
    );

    let vt = &s.read_only_session(&c).await;
    let r = c
        .get(api("/identity-providers/corp"))
        .bearer_auth(vt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .patch(api("/identity-providers/corp"))
        .bearer_auth(vt)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .delete(api("/identity-providers/corp"))
        .bearer_auth(vt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(api("/identity-providers/nope"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let doc = c
        .get(api("/openapi.json"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        doc.contains("/api/v1/identity-providers/{name}"),
        "documented in OpenAPI"
    );

    // --- the CLI: a second client whose codes live one second ---------------------------
    let (ok, out, err) = s.cli_stdin(
        &[
            "idp",
            "add",
            "short",
            "--issuer",
            &p.issuer,
            "--client-id",
            "lanyard-short",
            "--client-secret-stdin",
            "--display-name",
            "Short-lived codes",
        ],
        &format!("{CLIENT_SECRET}\n"),
    );
    assert!(ok, "idp add: {err}");
    assert!(out.contains("added identity provider short"), "{out}");
    let shown = cli_ok(&s, &["idp", "show", "short", "--json"]);
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["client_id"], "lanyard-short");
    assert_eq!(shown["client_secret_set"], true);
    let listed: Value = serde_json::from_str(&cli_ok(&s, &["idp", "list", "--json"])).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["corp", "short"]);
    let (ok, _, err) = s.cli(&[
        "idp",
        "add",
        "corp",
        "--issuer",
        &p.issuer,
        "--client-id",
        "x",
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");

    // --- the sign-in page offers the providers ------------------------------------------
    let page = c
        .get(format!(
            "{}/enroll/sign-in?user-identifier=ann%40example.com",
            s.url
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Sign in with Example Corp"), "{page}");
    assert!(page.contains("id=\"idp-short\""), "{page}");

    // --- refusals, each leaving nothing enrolled ---------------------------------------
    let e = refused(&mut mac(
        &s,
        "ann@example.com",
        "corp",
        "bob@example.com",
        OidcTamper::None,
    ))
    .await;
    assert_refused(
        &e,
        403,
        "This Mac is signed in with ann@example.com, but you signed in as bob@example.com",
    );

    let e = refused(&mut mac(
        &s,
        "carol@example.com",
        "corp",
        "carol@example.com",
        OidcTamper::None,
    ))
    .await;
    assert_refused(&e, 403, "not verified");

    let e = refused(&mut mac(
        &s,
        "ann@example.com",
        "corp",
        "ann@example.com",
        OidcTamper::State,
    ))
    .await;
    assert_refused(&e, 403, "state was altered");

    let e = refused(&mut mac(
        &s,
        "ann@example.com",
        "short",
        "ann@example.com",
        OidcTamper::DelayCallback(Duration::from_millis(2500)),
    ))
    .await;
    assert_refused(&e, 401, "refused the sign-in code");

    let e = refused(&mut mac(
        &s,
        "ann@example.com",
        "corp",
        "ann@example.com",
        OidcTamper::Replay,
    ))
    .await;
    assert_refused(&e, 401, "already used");

    let e = refused(&mut mac(
        &s,
        "dan@example.com",
        "corp",
        "dan@example.com",
        OidcTamper::None,
    ))
    .await;
    assert_refused(&e, 403, "no account for dan@example.com");
    assert!(enrolled(&s).is_empty(), "refusals enrolled nothing");
    assert!(
        !cli_ok(&s, &["user", "list"]).contains("dan@example.com"),
        "no user was created"
    );

    // --- sign in through the provider and enroll ----------------------------------------
    let mut ann = mac(
        &s,
        "ann@example.com",
        "corp",
        "ann@example.com",
        OidcTamper::None,
    );
    if let Err(e) = ann.enroll().await {
        panic!("{e}\n{:#?}", ann.steps());
    }
    let devices = enrolled(&s);
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["managed_apple_id"], "ann@example.com");
    assert_eq!(devices[0]["enrollment_mode"], "User Enrollment");
    assert_eq!(devices[0]["ownership"], "Employee");

    // First sign-in creates the user once the administrator allows it.
    cli_ok(
        &s,
        &["idp", "update", "corp", "--allow-create-users", "true"],
    );
    let mut dan = mac(
        &s,
        "dan@example.com",
        "corp",
        "dan@example.com",
        OidcTamper::None,
    );
    if let Err(e) = dan.enroll().await {
        panic!("{e}\n{:#?}", dan.steps());
    }
    assert_eq!(enrolled(&s).len(), 2);
    assert!(cli_ok(&s, &["user", "list"]).contains("dan@example.com"));

    // What was typed on the Mac may differ from the managed Apple Account: the user record maps
    // the email to it, and the profile assigns the managed Apple Account.
    cli_ok(
        &s,
        &[
            "settings",
            "set",
            "managed-domains",
            "example.com, appleid.example.com",
        ],
    );
    cli_ok(
        &s,
        &[
            "user",
            "set-managed-apple-id",
            "bob@example.com",
            "bob@appleid.example.com",
        ],
    );
    for typed in ["bob@appleid.example.com", "bob@example.com"] {
        let mut bob = mac(&s, typed, "corp", "bob@example.com", OidcTamper::None);
        let mut o = bob.options().clone();
        o.managed_apple_id = Some("bob@appleid.example.com".into());
        bob = SimMac::new(o).unwrap();
        let report = bob
            .enroll()
            .await
            .unwrap_or_else(|e| panic!("{typed}: {e}\n{:#?}", bob.steps()));
        assert_eq!(report.managed_apple_id, "bob@appleid.example.com");
    }
    assert_eq!(enrolled(&s).len(), 4);
    // Someone else's managed Apple Account is still refused.
    let e = refused(&mut mac(
        &s,
        "bob@appleid.example.com",
        "corp",
        "ann@example.com",
        OidcTamper::None,
    ))
    .await;
    assert_refused(
        &e,
        403,
        "This Mac is signed in with bob@appleid.example.com, but you signed in as \
         ann@example.com.",
    );
    assert_eq!(enrolled(&s).len(), 4, "the refusal enrolled nothing");

    // A disabled provider is not offered and cannot be started.
    cli_ok(&s, &["idp", "update", "corp", "--enabled", "false"]);
    let e = refused(&mut mac(
        &s,
        "ann@example.com",
        "corp",
        "ann@example.com",
        OidcTamper::None,
    ))
    .await;
    assert!(e.message().contains("#idp-corp"), "{e}");
    let r = c
        .get(format!("{}/enroll/oidc/start?provider=corp", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Starting sign-ins is limited per address, whether they succeed or not: within the limit's
    // count of further starts from this address the answer becomes 429, and stays so.
    let mut statuses = Vec::new();
    for _ in 0..=lanyard_http::enroll::oidc::OIDC_STARTS_PER_ADDRESS {
        let r = c
            .get(format!("{}/enroll/oidc/start?provider=corp", s.url))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let first = statuses.iter().position(|&st| st == 429);
    let first = first.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert!(
        statuses[..first].iter().all(|&st| st == 404),
        "{statuses:?}"
    );
    assert!(
        statuses[first..].iter().all(|&st| st == 429),
        "{statuses:?}"
    );
    let r = c
        .get(format!("{}/enroll/oidc/start?provider=corp", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("Too many sign-ins"));

    // Audited, and removable.
    let audit = cli_ok(&s, &["audit", "--json"]);
    assert!(audit.contains("identity_provider.create"), "{audit}");
    assert!(audit.contains("identity_provider.update"), "{audit}");
    assert!(
        !audit.contains(CLIENT_SECRET),
        "the audit log holds no secret"
    );
    cli_ok(&s, &["idp", "remove", "short"]);
    let (ok, _, err) = s.cli(&["idp", "show", "short"]);
    assert!(!ok && err.contains("not found"), "{err}");

    drop(p);
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn oidc_sign_in(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    run(db).await;
}
