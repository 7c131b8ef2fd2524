#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! End to end, on both databases: `lanyard serve` over TLS with its own CA, the admin API and the
//! admin sub-commands on the same data, and bad input answered clearly without changing anything.

mod support;

use rstest::rstest;

use serde_json::{json, Value};
use support::{Db, Server};

async fn sign_in(s: &Server, c: &reqwest::Client) -> String {
    let r = c
        .post(format!("{}/api/v1/sessions", s.url))
        .json(&json!({"username": "admin", "password": s.admin_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("Secure"));
    let body: Value = r.json().await.unwrap();
    body["session_token"].as_str().unwrap().to_string()
}

async fn api_round_trip(db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let c = s.client();

    // TLS validated against the data directory's CA; health names the backend.
    let health: Value = c
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let backend = if db == Db::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"], backend);
    assert_eq!(health["database_status"], "ok");
    assert_eq!(health["disk"]["status"], "ok");

    // No credentials: the JSON error shape.
    let r = c
        .get(format!("{}/api/v1/users", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unauthorized");

    let token = sign_in(&s, &c).await;
    let api = |path: &str| format!("{}/api/v1{path}", s.url);

    // Users.
    let r = c
        .post(api("/users"))
        .bearer_auth(&token)
        .json(&json!({"email": "Ann@Example.com", "password": "a long password", "display_name": "Ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ann: Value = r.json().await.unwrap();
    assert_eq!(ann["email"], "ann@example.com");
    assert_eq!(ann["managed_apple_id"], "ann@example.com");
    assert!(ann.get("password_hash").is_none());

    let dup = c
        .post(api("/users"))
        .bearer_auth(&token)
        .json(&json!({"email": "ann@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);

    // Bad input: malformed JSON, unknown field, wrong content type, oversized, invalid values.
    let bad = [
        (
            c.post(api("/users"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{\"email\": "),
            400,
        ),
        (
            c.post(api("/users"))
                .bearer_auth(&token)
                .json(&json!({"email": "bob@example.com", "colour": "blue"})),
            422,
        ),
        (
            c.post(api("/users")).bearer_auth(&token).body("email=bob"),
            415,
        ),
        (
            c.post(api("/users"))
                .bearer_auth(&token)
                .json(&json!({"email": "not-an-email"})),
            422,
        ),
        (
            c.patch(api("/settings/enrollment"))
                .bearer_auth(&token)
                .json(&json!({"min_macos_version": "fifteen"})),
            422,
        ),
        (
            c.patch(api("/settings/enrollment"))
                .bearer_auth(&token)
                .json(&json!({"managed_domains": ["example.com", "bad domain"]})),
            422,
        ),
    ];
    for (req, status) in bad {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{e}"
        );
    }
    // Oversized: the server answers 413 without reading the rest of the body and closes the
    // connection, so an HTTP/1.1 client still sending may see the connection end instead. A
    // client of its own keeps that closed connection out of the shared pool.
    match s
        .client()
        .post(api("/users"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!("{{\"email\": \"{}\"}}", "x".repeat(300 * 1024)))
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let users: Value = c
        .get(api("/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        users.as_array().unwrap().len(),
        1,
        "bad input created nothing"
    );

    // Settings: the three MaaS360 switches plus version and domains; the trust payload and
    // the inactivity limit keep their defaults.
    let r = c
        .patch(api("/settings/enrollment"))
        .bearer_auth(&token)
        .json(
            &json!({"ownership_mode": "employee", "manage_only_corporate_resources": false,
                      "use_email_as_managed_apple_id": false, "min_macos_version": "15.3",
                      "managed_domains": ["Example.com"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let settings: Value = r.json().await.unwrap();
    assert_eq!(
        settings,
        json!({"ownership_mode": "employee", "manage_only_corporate_resources": false,
               "use_email_as_managed_apple_id": false, "min_macos_version": "15.3",
               "managed_domains": ["example.com"], "install_trust_profile": "auto",
               "inactive_after_days": 90})
    );
    // Both through the API; a value out of range changes nothing.
    let r = c
        .patch(api("/settings/enrollment"))
        .bearer_auth(&token)
        .json(&json!({"install_trust_profile": "always", "inactive_after_days": 4000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .patch(api("/settings/enrollment"))
        .bearer_auth(&token)
        .json(&json!({"install_trust_profile": "always", "inactive_after_days": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let settings: Value = r.json().await.unwrap();
    assert_eq!(settings["install_trust_profile"], "always");
    assert_eq!(settings["inactive_after_days"], 30);

    // Custom attributes.
    let r = c
        .post(api("/attributes"))
        .bearer_auth(&token)
        .json(&json!({"name": "department", "kind": "choice", "required": true, "choices": ["Sales", "R&D"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The same data through the CLI while the server runs.
    let (ok, out, err) = s.cli(&["user", "list", "--json"]);
    assert!(ok, "{err}");
    let cli_users: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli_users[0]["email"], "ann@example.com");
    let (ok, out, _) = s.cli(&["settings", "show", "--json"]);
    assert!(ok);
    let cli_settings: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli_settings, settings);
    let (ok, out, _) = s.cli(&["attribute", "list", "--json"]);
    assert!(ok);
    assert!(out.contains("R&D"));

    // CLI changes are visible through the API.
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", "bob@example.com", "--password", "-"],
        "another long password\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = s.cli(&[
        "settings",
        "set",
        "managed-domains",
        "example.com,corp.example.org",
    ]);
    assert!(ok, "{err}");
    let bob: Value = c
        .get(api("/users/bob@example.com"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        bob["managed_apple_id"],
        Value::Null,
        "use-email setting was off"
    );
    let settings: Value = c
        .get(api("/settings/enrollment"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        settings["managed_domains"],
        json!(["corp.example.org", "example.com"])
    );

    // CLI bad input: clear message, non-zero exit, nothing changed.
    let (ok, _, err) = s.cli(&["user", "add", "bob@example.com"]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    let (ok, _, err) = s.cli(&["settings", "set", "min-macos-version", "x.y"]);
    assert!(!ok);
    assert!(err.contains("not a macOS version"), "{err}");
    let (ok, _, err) = s.cli(&["settings", "set", "colour", "blue"]);
    assert!(!ok);
    assert!(err.contains("unknown setting"), "{err}");

    // Audit: every change, by whom.
    let audit: Value = c
        .get(api("/audit?limit=50"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lines: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(lines.contains(&("admin:admin".into(), "user.create".into())));
    assert!(lines.contains(&("admin:admin".into(), "attribute.create".into())));
    assert!(lines
        .iter()
        .any(|(a, act)| a.starts_with("cli:") && act == "user.create"));
    assert!(lines
        .iter()
        .any(|(a, act)| a.starts_with("cli:") && act == "settings.update"));
    assert!(lines.contains(&("system".into(), "admin.create".into())));

    // OpenAPI and metrics.
    let doc: Value = c
        .get(api("/openapi.json"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/v1/users"]["post"].is_object());
    let metrics = c
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("lanyard_http_requests_total"), "{metrics}");

    // Read-only administrators see but cannot change.
    let vt = &s.read_only_session(&c).await;
    assert_eq!(
        c.get(api("/users"))
            .bearer_auth(vt)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .patch(api("/settings/enrollment"))
        .bearer_auth(vt)
        .json(&json!({"ownership_mode": "prompt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn api_and_cli_round_trip(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    api_round_trip(db).await;
}

#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = support::cli_with(dir.path(), "mysql://localhost/x", &["migrate"], None);
    assert!(!ok);
    assert!(err.contains("unsupported scheme `mysql:`"), "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let url = format!("sqlite://{}/lanyard.db", file.display());
    let (ok, _, err) = support::cli_with(&file, &url, &["user", "list"], None);
    assert!(!ok);
    assert!(err.contains("data directory"), "{err}");

    let (ok, _, err) = support::cli_with(
        dir.path(),
        &format!("sqlite://{}/l.db", dir.path().display()),
        &["serve", "--listen", "not-an-address"],
        None,
    );
    assert!(!ok);
    assert!(err.contains("--listen"), "{err}");
}

/// Only `migrate` and `serve` change the schema: every other command refuses a database that is
/// not migrated (on SQLite without creating the file), saying to run `lanyard migrate`; one
/// missing migration is named.
#[rstest]
#[tokio::test]
async fn commands_need_a_migrated_database(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let (url, _scratch) = match db {
        Db::Sqlite => (
            format!("sqlite://{}/lanyard.db", dir.path().display()),
            None,
        ),
        Db::Postgres => {
            let Some(scratch) = support::fresh_pg_database().await else {
                return;
            };
            (scratch.url().to_string(), Some(scratch))
        }
    };
    let cli = |args: &[&str]| support::cli_with(dir.path(), &url, args, None);

    let (ok, _, err) = cli(&["user", "list"]);
    assert!(!ok);
    assert!(err.contains("lanyard migrate"), "{err}");
    if db == Db::Sqlite {
        assert!(
            !dir.path().join("lanyard.db").exists(),
            "a database file was created"
        );
    }

    let (ok, out, err) = cli(&["migrate"]);
    assert!(ok, "{err}");
    assert!(out.contains("0001_foundation"), "{out}");
    let (ok, _, err) = cli(&["user", "list"]);
    assert!(ok, "{err}");

    // A database one migration behind this version: refused, naming the migration.
    let last = lanyard_store::SqliteStore::migration_names().pop().unwrap();
    let version: i64 = last[..4].parse().unwrap();
    let forget = format!("DELETE FROM _sqlx_migrations WHERE version = {version}");
    match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(&forget).execute(&mut c).await.unwrap();
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(&forget).execute(&mut c).await.unwrap();
        }
    }
    let (ok, _, err) = cli(&["admin", "list"]);
    assert!(!ok);
    assert!(
        err.contains(&last) && err.contains("lanyard migrate"),
        "{err}"
    );
}

/// An admin command closes the database when it is done, and so does a server stopped with
/// SIGTERM: on SQLite the write-ahead log is copied into `lanyard.db` and removed, so the file
/// alone, copied afterwards (README's backup of a stopped server), holds what was written.
/// Without the close every command left a `-wal` file beside a database file that held none
/// of it.
#[tokio::test]
async fn admin_commands_leave_the_database_whole_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/lanyard.db", dir.path().display());
    let wal = dir.path().join("lanyard.db-wal");
    // Merged: removed, or emptied when a connection of sqlx's was still closing at the end.
    let merged = |wal: &std::path::Path| std::fs::metadata(wal).map_or(true, |m| m.len() == 0);
    let (ok, _, err) = support::cli_with(dir.path(), &url, &["migrate"], None);
    assert!(ok, "{err}");
    assert!(merged(&wal), "`migrate` left a write-ahead log");
    let (ok, _, err) = support::cli_with(
        dir.path(),
        &url,
        &["user", "add", "ann@example.com", "--password", "-"],
        Some("a long enough password"),
    );
    assert!(ok, "{err}");
    assert!(merged(&wal), "`user add` left a write-ahead log");
    // A failing command closes it too.
    let (ok, _, _) = support::cli_with(
        dir.path(),
        &url,
        &["user", "show", "nobody@example.com"],
        None,
    );
    assert!(!ok);
    assert!(merged(&wal), "a failed command left a write-ahead log");

    // The database file on its own, elsewhere: the user is in it.
    users_in_the_file_alone(dir.path(), "ann@example.com");

    // A server that wrote, then was stopped.
    let server = Server::start(Db::Sqlite).await.unwrap();
    let (ok, _, err) = server.cli_stdin(
        &["user", "add", "bo@example.com", "--password", "-"],
        "another long password",
    );
    assert!(ok, "{err}");
    let data = server.stop_keeping_data();
    assert!(
        merged(&data.path().join("lanyard.db-wal")),
        "a stopped server left a write-ahead log"
    );
    users_in_the_file_alone(data.path(), "bo@example.com");
}

/// Copies `lanyard.db` alone (no `-wal`) out of `data_dir` and finds `email` among its users.
fn users_in_the_file_alone(data_dir: &std::path::Path, email: &str) {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(data_dir.join("lanyard.db"), copy.path().join("lanyard.db")).unwrap();
    let copy_url = format!("sqlite://{}/lanyard.db", copy.path().display());
    let (ok, out, err) = support::cli_with(copy.path(), &copy_url, &["user", "list"], None);
    assert!(ok, "{err}");
    assert!(out.contains(email), "{out}");
}

/// `serve` reads its settings from the `--config` file (`LANYARD_CONFIG`), the ones that
/// could once be given only as flags included, and the environment wins over the file.
#[tokio::test]
async fn serve_reads_the_config_file() {
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("lanyard.toml");
    let missing = conf_dir.path().join("missing.pem");
    let conf_env = conf.display().to_string();

    // The OpenID Connect and ABM trust files come from the file: a missing one stops serve.
    for (key, flag) in [
        ("oidc_ca_cert", "--oidc-ca-cert"),
        ("abm_ca_cert", "--abm-ca-cert"),
    ] {
        std::fs::write(
            &conf,
            format!("{key} = {:?}\n", missing.display().to_string()),
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/lanyard.db", data.path().display());
        let err = support::serve_refuses(data.path(), &url, &[("LANYARD_CONFIG", &conf_env)]);
        assert!(
            err.contains(flag) && err.contains("missing.pem"),
            "{key}: {err}"
        );
    }

    std::fs::write(&conf, "hsts_max_age = 600\norganization = \"From File\"\n").unwrap();
    let s = Server::start_with(
        Db::Sqlite,
        &[
            ("LANYARD_CONFIG", &conf_env),
            ("LANYARD_ORGANIZATION", "From Env"),
        ],
    )
    .await
    .unwrap();
    let r = s
        .client()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["strict-transport-security"], "max-age=600");
    // The organisation names the CA, which serve exported.
    let ca = String::from_utf8(s.ca_pem()).unwrap();
    let info = lanyard_pki::CertInfo::parse(ca.as_bytes()).unwrap();
    assert!(info.subject.contains("From Env"), "{}", info.subject);
    s.stop().await;
}
