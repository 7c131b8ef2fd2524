#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Declarative device management administration over the real server, on both databases: the
//! admin API (a declaration refused by Apple's schema is 422 naming the key and stores nothing;
//! a set holding a type macOS User Enrollment forbids cannot be assigned, with the schema's
//! reason; read-only administrators are refused; every change is in the audit log), the portal
//! Declarations page (the refusal shown against the field with the typed values kept, sets,
//! members and assignment, a forged CSRF token changing nothing), the Devices list's
//! "declarations failing" filter, and the CLI (`lanyard declaration …`, `lanyard set …`).

mod support;

use reqwest::Client;
use rstest::rstest;
use serde_json::{json, Value};
use support::portal::{browser, get, post, sign_in};
use support::{Db, Server};

const EXCHANGE: &str = "com.apple.configuration.account.exchange";
const PASSCODE: &str = "com.apple.configuration.passcode.settings";

fn exchange_payload() -> Value {
    json!({
        "VisibleName": "Work mail",
        "EnabledProtocolTypes": ["EWS"],
        "HostName": "mail.example.com",
        "OAuth": { "Enabled": true },
    })
}

async fn call(
    c: &Client,
    s: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", s.url);
    let mut r = match method {
        "GET" => c.get(url),
        "POST" => c.post(url),
        "PUT" => c.put(url),
        "PATCH" => c.patch(url),
        "DELETE" => c.delete(url),
        other => panic!("{other}"),
    }
    .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn cli_ok(s: &Server, args: &[&str]) -> String {
    let (ok, out, err) = s.cli(args);
    assert!(ok, "lanyard {} failed: {err}", args.join(" "));
    out
}

async fn walk(db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let api = s.client();
    let token = s.admin_session(&api).await;

    // --- API ----------------------------------------------------------------------------------
    // Refused by Apple's schema: 422 naming the key, nothing stored.
    let mut bad = exchange_payload();
    bad["EnabledProtocolTypes"] = json!(["IMAP"]);
    let (st, body) = call(
        &api,
        &s,
        &token,
        "POST",
        "/api/v1/declarations",
        Some(json!({"type": EXCHANGE, "identifier": "mail", "payload": bad})),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Payload.EnabledProtocolTypes[0]:"),
        "{message}"
    );
    let mut unknown = exchange_payload();
    unknown["MailServerName"] = json!("x");
    let (st, body) = call(
        &api,
        &s,
        &token,
        "POST",
        "/api/v1/declarations",
        Some(json!({"type": EXCHANGE, "identifier": "mail", "payload": unknown})),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Payload.MailServerName:"));
    let (_, list) = call(&api, &s, &token, "GET", "/api/v1/declarations", None).await;
    assert_eq!(list, json!([]));

    // Accepted, listed with its counts.
    let (st, d) = call(
        &api,
        &s,
        &token,
        "POST",
        "/api/v1/declarations",
        Some(json!({"type": EXCHANGE, "identifier": "mail", "payload": exchange_payload()})),
    )
    .await;
    assert_eq!(st, 201, "{d}");
    assert_eq!(d["kind"], "configuration");
    let first_token = d["server_token"].as_str().unwrap().to_string();
    let (st, _) = call(
        &api,
        &s,
        &token,
        "POST",
        "/api/v1/declarations",
        Some(json!({"type": PASSCODE, "identifier": "passcode", "payload": {"MinimumLength": 8}})),
    )
    .await;
    assert_eq!(st, 201);
    let (_, list) = call(&api, &s, &token, "GET", "/api/v1/declarations", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["identifier"], "mail");
    assert_eq!(list[0]["active"], 0);
    assert_eq!(list[0]["failing"], 0);

    // An edit changes the server token.
    let mut edited = exchange_payload();
    edited["VisibleName"] = json!("Mail");
    let (st, d) = call(
        &api,
        &s,
        &token,
        "PUT",
        "/api/v1/declarations/mail",
        Some(json!({"payload": edited})),
    )
    .await;
    assert_eq!(st, 200, "{d}");
    assert_ne!(d["server_token"].as_str().unwrap(), first_token);

    // Sets: the Exchange set assigns; the passcode set is refused with the schema's reason and
    // keeps no assignment.
    for (name, member) in [("mail-set", "mail"), ("locks", "passcode")] {
        let (st, b) = call(
            &api,
            &s,
            &token,
            "POST",
            "/api/v1/declaration-sets",
            Some(json!({"name": name, "description": "test"})),
        )
        .await;
        assert_eq!(st, 201, "{b}");
        let (st, b) = call(
            &api,
            &s,
            &token,
            "PUT",
            &format!("/api/v1/declaration-sets/{name}/members/{member}"),
            None,
        )
        .await;
        assert_eq!(st, 200, "{b}");
        assert_eq!(b["members"], json!([member]));
    }
    let (st, b) = call(
        &api,
        &s,
        &token,
        "POST",
        "/api/v1/declaration-sets/mail-set/assignments",
        Some(json!("all_user_enrollments")),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["assignments"], json!(["all_user_enrollments"]));
    let (st, b) = call(
        &api,
        &s,
        &token,
        "POST",
        "/api/v1/declaration-sets/locks/assignments",
        Some(json!("all_user_enrollments")),
    )
    .await;
    assert_eq!(st, 422, "{b}");
    let reason = b["error"]["message"].as_str().unwrap();
    assert!(reason.contains("allowed-enrollments"), "{reason}");
    assert!(reason.contains("passcode.settings.yaml"), "{reason}");
    let (_, locks) = call(
        &api,
        &s,
        &token,
        "GET",
        "/api/v1/declaration-sets/locks",
        None,
    )
    .await;
    assert_eq!(locks["assignments"], json!([]));
    // Adding the forbidden type to an assigned set is refused too.
    let (st, b) = call(
        &api,
        &s,
        &token,
        "PUT",
        "/api/v1/declaration-sets/mail-set/members/passcode",
        None,
    )
    .await;
    assert_eq!(st, 422, "{b}");
    let (_, set) = call(
        &api,
        &s,
        &token,
        "GET",
        "/api/v1/declaration-sets/mail-set",
        None,
    )
    .await;
    assert_eq!(set["members"], json!(["mail"]));

    // Read-only administrators see but cannot change.
    let viewer = s.read_only_session(&api).await;
    let (st, _) = call(&api, &s, &viewer, "GET", "/api/v1/declarations", None).await;
    assert_eq!(st, 200);
    let (st, b) = call(
        &api,
        &s,
        &viewer,
        "POST",
        "/api/v1/declarations",
        Some(json!({"type": EXCHANGE, "identifier": "other", "payload": exchange_payload()})),
    )
    .await;
    assert_eq!(st, 403, "{b}");
    let (st, _) = call(
        &api,
        &s,
        &viewer,
        "DELETE",
        "/api/v1/declaration-sets/locks",
        None,
    )
    .await;
    assert_eq!(st, 403);

    // Audited.
    for action in [
        "declaration.create",
        "declaration.update",
        "declaration_set.create",
        "declaration_set.add",
        "declaration_set.assign",
    ] {
        let (_, entries) = call(
            &api,
            &s,
            &token,
            "GET",
            &format!("/api/v1/audit?action={action}"),
            None,
        )
        .await;
        assert!(
            !entries.as_array().unwrap().is_empty(),
            "no audit entry {action}: {entries}"
        );
    }

    // --- portal -------------------------------------------------------------------------------
    let c = browser(&s);
    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;
    let (st, page) = get(&c, &s, "/portal/declarations").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("href=\"/portal/declarations\" aria-current=\"page\""),
        "{page}"
    );
    assert!(page.contains("data-declaration=\"mail\""), "{page}");
    assert!(page.contains("data-set=\"mail-set\""), "{page}");
    assert!(page.contains("All User Enrollment Macs"), "{page}");

    // A refusal is shown against the payload field, the typed values kept, nothing stored.
    let bad_payload = r#"{"EnabledProtocolTypes": ["EWS"], "Port": "443"}"#;
    let form = |csrf: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("csrf", csrf),
            ("type", EXCHANGE),
            ("identifier", "portal-mail"),
        ]
    };
    let mut f = form("forged");
    f.push(("payload", r#"{"EnabledProtocolTypes": ["EWS"]}"#));
    let (st, page) = post(&c, &s, "/portal/declarations", &f).await;
    assert_eq!(st, 403, "{page}");
    let csrf_static: &'static str = Box::leak(csrf.clone().into_boxed_str());
    let mut f = form(csrf_static);
    f.push(("payload", bad_payload));
    let (st, page) = post(&c, &s, "/portal/declarations", &f).await;
    assert_eq!(st, 422, "{page}");
    assert!(page.contains("id=\"payload-error\""), "{page}");
    assert!(page.contains("Payload.Port:"), "{page}");
    assert!(page.contains("value=\"portal-mail\""), "{page}");
    let mut f = form(csrf_static);
    f.push(("payload", "{not json"));
    let (st, page) = post(&c, &s, "/portal/declarations", &f).await;
    assert_eq!(st, 422);
    assert!(page.contains("this is not JSON"), "{page}");
    let (_, list) = call(&api, &s, &token, "GET", "/api/v1/declarations", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Added, edited (a bad edit keeps the stored content), put in a set and assigned to a person.
    let mut f = form(csrf_static);
    f.push(("payload", r#"{"EnabledProtocolTypes": ["EAS"]}"#));
    let (st, page) = post(&c, &s, "/portal/declarations", &f).await;
    assert_eq!(st, 303, "{page}");
    let (st, page) = get(&c, &s, "/portal/declarations/portal-mail").await;
    assert_eq!(st, 200);
    assert!(page.contains("EAS"), "{page}");
    let (st, page) = post(
        &c,
        &s,
        "/portal/declarations/portal-mail",
        &[
            ("csrf", &csrf),
            (
                "payload",
                r#"{"EnabledProtocolTypes": ["EAS"], "Bogus": 1}"#,
            ),
        ],
    )
    .await;
    assert_eq!(st, 422);
    assert!(page.contains("Payload.Bogus:"), "{page}");
    let (_, d) = call(
        &api,
        &s,
        &token,
        "GET",
        "/api/v1/declarations/portal-mail",
        None,
    )
    .await;
    assert_eq!(d["payload"], json!({"EnabledProtocolTypes": ["EAS"]}));
    let (st, _) = post(
        &c,
        &s,
        "/portal/declarations/portal-mail",
        &[
            ("csrf", &csrf),
            ("payload", r#"{"EnabledProtocolTypes": ["EWS", "EAS"]}"#),
        ],
    )
    .await;
    assert_eq!(st, 303);
    let (_, d) = call(
        &api,
        &s,
        &token,
        "GET",
        "/api/v1/declarations/portal-mail",
        None,
    )
    .await;
    assert_eq!(d["payload"]["EnabledProtocolTypes"], json!(["EWS", "EAS"]));

    let (st, _) = post(
        &c,
        &s,
        "/portal/declaration-sets",
        &[
            ("csrf", &csrf),
            ("name", "people"),
            ("description", "for Ann"),
        ],
    )
    .await;
    assert_eq!(st, 303);
    let (st, _) = post(
        &c,
        &s,
        "/portal/declaration-sets/people/members",
        &[("csrf", &csrf), ("identifier", "portal-mail")],
    )
    .await;
    assert_eq!(st, 303);
    cli_ok(&s, &["user", "add", "ann@example.com", "--name", "Ann"]);
    let (st, page) = post(
        &c,
        &s,
        "/portal/declaration-sets/people/assign",
        &[
            ("csrf", &csrf),
            ("target", "user"),
            ("value", "ann@example.com"),
        ],
    )
    .await;
    assert_eq!(st, 303, "{page}");
    let (_, set) = call(
        &api,
        &s,
        &token,
        "GET",
        "/api/v1/declaration-sets/people",
        None,
    )
    .await;
    assert_eq!(set["members"], json!(["portal-mail"]));
    assert_eq!(
        set["assignments"],
        json!([{"user": {"email": "ann@example.com"}}])
    );
    // The forbidden set cannot be assigned from the portal either.
    let (st, page) = post(
        &c,
        &s,
        "/portal/declaration-sets/locks/assign",
        &[("csrf", &csrf), ("target", "all"), ("value", "")],
    )
    .await;
    assert_eq!(st, 422, "{page}");
    assert!(page.contains("allowed-enrollments"), "{page}");
    assert!(page.contains("Nothing was changed."), "{page}");
    // Unassigned again.
    let (st, _) = post(
        &c,
        &s,
        "/portal/declaration-sets/people/unassign",
        &[
            ("csrf", &csrf),
            ("target", "user"),
            ("value", "ann@example.com"),
        ],
    )
    .await;
    assert_eq!(st, 303);
    let (_, set) = call(
        &api,
        &s,
        &token,
        "GET",
        "/api/v1/declaration-sets/people",
        None,
    )
    .await;
    assert_eq!(set["assignments"], json!([]));

    // The Devices list filters "declarations failing" (no Mac reports anything here).
    let (st, page) = get(&c, &s, "/portal/devices?failing=1").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("name=\"failing\" value=\"1\" checked"),
        "{page}"
    );
    assert!(page.contains("0 devices"), "{page}");
    let (st, _) = get(&c, &s, "/portal/devices?failing=x").await;
    assert_eq!(st, 400);
    let (st, b) = call(
        &api,
        &s,
        &token,
        "GET",
        "/api/v1/devices?declarations_failing=true",
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(b, json!([]));

    // --- CLI ----------------------------------------------------------------------------------
    let out = cli_ok(&s, &["declaration", "list"]);
    for id in ["mail", "passcode", "portal-mail"] {
        assert!(out.contains(id), "{out}");
    }
    let (ok, _, err) = s.cli(&[
        "declaration",
        "add",
        "--type",
        EXCHANGE,
        "--identifier",
        "cli-mail",
        "--payload",
        r#"{"EnabledProtocolTypes": "EWS"}"#,
    ]);
    assert!(!ok);
    assert!(err.contains("Payload.EnabledProtocolTypes"), "{err}");
    let out = cli_ok(
        &s,
        &[
            "declaration",
            "add",
            "--type",
            EXCHANGE,
            "--identifier",
            "cli-mail",
            "--payload",
            r#"{"EnabledProtocolTypes": ["EWS"]}"#,
        ],
    );
    assert!(out.contains("added declaration cli-mail"), "{out}");
    let out = cli_ok(&s, &["declaration", "show", "cli-mail", "--json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["type"], EXCHANGE);
    // An asset with data: Lanyard fills its Reference under the public URL and keeps the data.
    let pem = s.data_dir.path().join("ca-copy.pem");
    std::fs::write(&pem, s.ca_pem()).unwrap();
    let pem_text = pem.display().to_string();
    cli_ok(
        &s,
        &[
            "declaration",
            "add",
            "--type",
            "com.apple.asset.credential.certificate",
            "--identifier",
            "cli-ca",
            "--payload",
            "{}",
            "--asset-data-file",
            &pem_text,
            "--content-type",
            "application/pem",
            "--public-url",
            "https://mdm.example.com",
        ],
    );
    let out = cli_ok(&s, &["declaration", "show", "cli-ca", "--json"]);
    let asset: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(asset["has_asset_data"], true, "{asset}");
    assert_eq!(
        asset["payload"]["Reference"]["DataURL"],
        "https://mdm.example.com/mdm/assets/cli-ca"
    );
    assert!(
        !out.contains("BEGIN CERTIFICATE"),
        "the data is never shown: {out}"
    );
    let (ok, _, err) = s.cli(&[
        "declaration",
        "add",
        "--type",
        "com.apple.asset.credential.certificate",
        "--identifier",
        "cli-ca2",
        "--payload",
        "{}",
        "--asset-data-file",
        &pem_text,
    ]);
    assert!(!ok);
    assert!(err.contains("--content-type"), "{err}");
    cli_ok(&s, &["set", "add", "cli-set"]);
    cli_ok(&s, &["set", "add-member", "cli-set", "cli-mail"]);
    let out = cli_ok(&s, &["set", "assign", "cli-set", "--all-user-enrollments"]);
    assert!(
        out.contains("assigned to all User Enrollment Macs"),
        "{out}"
    );
    let (ok, _, err) = s.cli(&["set", "assign", "locks", "--all-user-enrollments"]);
    assert!(!ok);
    assert!(err.contains("allowed-enrollments"), "{err}");
    let out = cli_ok(&s, &["set", "show", "cli-set", "--json"]);
    let set: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(set["assignments"], json!(["all_user_enrollments"]));
    cli_ok(&s, &["set", "remove", "cli-set"]);
    let out = cli_ok(&s, &["declaration", "remove", "cli-mail"]);
    assert!(out.contains("removed declaration cli-mail"), "{out}");
    let out = cli_ok(&s, &["device", "list", "--declarations-failing"]);
    assert!(out.contains("(none)"), "{out}");
    let (_, entries) = call(
        &api,
        &s,
        &token,
        "GET",
        "/api/v1/audit?action=declaration.delete",
        None,
    )
    .await;
    assert_eq!(entries[0]["target"], "cli-mail", "{entries}");

    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn declarations_administration(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    walk(db).await;
}
