#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Apple Business Manager server tokens end to end, on both databases: the CLI makes a key
//! pair, the fake ABM issues a token file encrypted to it, the upload marks it the default for
//! account-driven enrollment, the discovery URL is registered at the fake, devices sync across
//! several cursor pages through injected 401/429/500 faults with nothing lost or doubled, an
//! expired cursor falls back to a full fetch, and bad input leaves the state as it was.

mod support;

use rstest::rstest;

use lanyard_testkit::fake_abm::{AbmFault, FakeAbm};
use serde_json::{json, Value};
use support::{Db, Server};

fn device_lines(out: &str) -> Vec<String> {
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

// Multi-threaded: the fake ABM must keep serving while the test waits on a CLI process.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifecycle(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let fake = FakeAbm::start().await.unwrap();
    fake.add_devices("C02L", 25);
    let abm = fake.url();
    let Some(s) = Server::start_with(
        db,
        &[
            ("LANYARD_ABM_URL", abm.as_str()),
            ("LANYARD_NO_ABM_SYNC", "true"),
        ],
    )
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--abm-url", abm.as_str()]);
        s.cli(&all)
    };

    // A key pair and its certificate.
    let (ok, out, err) = cli(&["abm", "new", "main", "-o", &path("main.pem")]);
    assert!(ok, "{err}");
    assert!(out.contains("certificate written"), "{out}");
    let main_pem = std::fs::read(path("main.pem")).unwrap();
    let (ok, out, _) = cli(&["abm", "certificate", "main"]);
    assert!(ok);
    assert_eq!(out.as_bytes(), &main_pem[..]);
    let (ok, _, err) = cli(&["abm", "new", "main"]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");

    // Bad token files are refused and change nothing.
    std::fs::write(path("junk.p7m"), b"this is not CMS").unwrap();
    let other = lanyard_pki::self_signed_rsa("another server", 30).unwrap();
    std::fs::write(
        path("other.p7m"),
        fake.token_file(other.cert_pem.as_bytes(), 365).unwrap(),
    )
    .unwrap();
    std::fs::write(path("expired.p7m"), fake.token_file(&main_pem, -1).unwrap()).unwrap();
    for (file, why) in [
        ("junk.p7m", "not an ABM token"),
        ("other.p7m", "another key"),
        ("expired.p7m", "expired"),
    ] {
        let (ok, _, err) = cli(&["abm", "upload", "main", &path(file), "--default"]);
        assert!(!ok, "{file} accepted");
        assert!(err.contains(why), "{file}: {err}");
    }
    let (ok, out, _) = cli(&["abm", "show", "main"]);
    assert!(ok);
    assert!(out.contains("awaiting_token"), "{out}");

    // The real token file, ticked as the default.
    std::fs::write(path("main.p7m"), fake.token_file(&main_pem, 365).unwrap()).unwrap();
    let (ok, out, err) = cli(&["abm", "upload", "main", &path("main.p7m"), "--default"]);
    assert!(ok, "{err}");
    assert!(out.contains("Example Org"), "{out}");
    assert!(out.contains("account driven: default"), "{out}");

    // A second token; ticking it moves the default (API), and back (CLI).
    let (ok, _, err) = cli(&["abm", "new", "second", "-o", &path("second.pem")]);
    assert!(ok, "{err}");
    let second_pem = std::fs::read(path("second.pem")).unwrap();
    std::fs::write(
        path("second.p7m"),
        fake.token_file(&second_pem, 20).unwrap(),
    )
    .unwrap();
    let (ok, out, err) = cli(&["abm", "upload", "second", &path("second.p7m")]);
    assert!(ok, "{err}");
    assert!(out.contains("account driven: no"), "{out}");
    let c = s.client();
    let api = |p: &str| format!("{}/api/v1{p}", s.url);
    let admin = s.admin_session(&c).await;
    let r = c
        .patch(api("/server-tokens/second"))
        .bearer_auth(&admin)
        .json(&json!({"default_account_driven": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = c
        .get(api("/server-tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let defaults: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["default_account_driven"] == true)
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(defaults, vec!["second"]);
    // The 20-day token carries an expiry warning.
    let second = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "second")
        .unwrap();
    assert!(
        second["warning"].as_str().unwrap().contains("expires in"),
        "{second}"
    );
    let (ok, _, err) = cli(&["abm", "set-default", "main"]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["abm", "list"]);
    assert!(ok);
    assert!(out.contains("ACCOUNT DRIVEN"), "{out}");
    let main_line = out.lines().find(|l| l.starts_with("main ")).unwrap();
    let second_line = out.lines().find(|l| l.starts_with("second ")).unwrap();
    assert!(main_line.contains("yes (default)"), "{out}");
    assert!(!second_line.contains("yes (default)"), "{out}");
    assert!(
        out.contains("WARNING: the server token `second` expires in"),
        "{out}"
    );

    // The discovery URL is registered at ABM with the default token.
    let (ok, out, err) = cli(&["abm", "register-discovery", "--public-url", &s.url]);
    assert!(ok, "{err}");
    let expected = format!("{}/.well-known/com.apple.remotemanagement", s.url);
    assert!(out.contains(&expected), "{out}");
    assert_eq!(fake.discovery_url().as_deref(), Some(expected.as_str()));
    let (ok, out, _) = cli(&["abm", "discovery"]);
    assert!(ok);
    assert!(out.contains(&format!("at ABM:       {expected}")), "{out}");

    // Sync across three pages through an expired session, a 429 and a 500.
    fake.inject([
        AbmFault::ExpireSession,
        AbmFault::TooManyRequests { retry_after: 1 },
        AbmFault::ServerError,
    ]);
    let sessions_before = fake.sessions_issued();
    let (ok, out, err) = cli(&["abm", "sync", "main", "--abm-page-size", "10"]);
    assert!(ok, "{err}");
    assert!(out.contains("3 page(s)"), "{out}");
    assert!(out.contains("25 device(s) stored"), "{out}");
    assert!(fake.sessions_issued() > sessions_before);
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.2).collect();
    assert!(
        statuses.contains(&401) && statuses.contains(&429) && statuses.contains(&500),
        "{statuses:?}"
    );
    let (ok, out, _) = cli(&["abm", "devices", "main", "--limit", "1000"]);
    assert!(ok);
    let mut serials = device_lines(&out);
    assert_eq!(serials.len(), 25, "{out}");
    serials.dedup();
    assert_eq!(serials.len(), 25);

    // Incremental: changes only; then an expired cursor falls back to a full fetch.
    fake.modify_device("C02L000003", "MacBook Pro");
    fake.remove_device("C02L000004");
    fake.add_devices("C02L", 5);
    let (ok, out, err) = cli(&["abm", "sync", "main", "--abm-page-size", "10"]);
    assert!(ok, "{err}");
    assert!(!out.contains("full fetch"), "{out}");
    assert!(out.contains("29 device(s) stored"), "{out}");
    fake.expire_cursors();
    let (ok, out, err) = cli(&["abm", "sync", "main", "--abm-page-size", "10"]);
    assert!(ok, "{err}");
    assert!(out.contains("full fetch"), "{out}");
    assert!(out.contains("29 device(s) stored"), "{out}");
    let (ok, out, _) = cli(&["abm", "devices", "main", "--limit", "1000"]);
    assert!(ok);
    assert!(out.contains("MacBook Pro"), "{out}");
    assert!(!out.contains("C02L000004"), "{out}");
    assert_eq!(fake.device_count(), 29);
    assert_eq!(device_lines(&out).len(), 29);

    // ABM answering garbage: 502, nothing lost.
    fake.inject([AbmFault::Garbage]);
    let r = c
        .post(api("/server-tokens/main/sync"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let shown: Value = c
        .get(api("/server-tokens/main"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["devices"], 29, "{shown}");
    assert!(
        shown["last_sync_status"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{shown}"
    );

    // The API: junk and oversized token files, renewal keeps devices, read-only refused.
    let r = c
        .put(api("/server-tokens/main/token"))
        .bearer_auth(&admin)
        .body("junk")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .put(api("/server-tokens/main/token"))
        .bearer_auth(&admin)
        .body(vec![b'x'; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .put(api("/server-tokens/main/token?default=true"))
        .bearer_auth(&admin)
        .body(fake.token_file(&main_pem, 400).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let renewed: Value = r.json().await.unwrap();
    assert_eq!(renewed["devices"], 29, "{renewed}");
    assert!(renewed["days_left"].as_i64().unwrap() >= 399, "{renewed}");
    let r = c
        .get(api("/server-tokens/main/certificate"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), main_pem);
    let r = c
        .post(api("/server-tokens"))
        .bearer_auth(&admin)
        .json(&json!({"name": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    let vt = &s.read_only_session(&c).await;
    let r = c
        .get(api("/server-tokens"))
        .bearer_auth(vt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for req in [
        c.post(api("/server-tokens/main/sync")),
        c.post(api("/server-tokens")).json(&json!({"name": "x"})),
        c.patch(api("/server-tokens/second"))
            .json(&json!({"default_account_driven": true})),
        c.delete(api("/server-tokens/main")),
        c.delete(api("/account-driven-discovery")),
    ] {
        let r = req.bearer_auth(vt).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    assert!(fake.discovery_url().is_some());

    // The server-token and discovery routes are in the OpenAPI document.
    let doc: Value = c
        .get(api("/openapi.json"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, method) in [
        ("/api/v1/server-tokens", "get"),
        ("/api/v1/server-tokens", "post"),
        ("/api/v1/server-tokens/{name}", "patch"),
        ("/api/v1/server-tokens/{name}/certificate", "get"),
        ("/api/v1/server-tokens/{name}/token", "put"),
        ("/api/v1/server-tokens/{name}/sync", "post"),
        ("/api/v1/server-tokens/{name}/sync", "get"),
        ("/api/v1/server-tokens/{name}/devices", "get"),
        ("/api/v1/account-driven-discovery", "put"),
        ("/api/v1/account-driven-discovery", "delete"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} not in openapi.json"
        );
    }
    for schema in ["AbmTokenView", "SyncReport", "SyncProgress", "AbmDevice"] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} not in openapi.json"
        );
    }

    // Every action is audited.
    let (ok, out, _) = s.cli(&["audit", "--limit", "100"]);
    assert!(ok);
    for action in [
        "server_token.create",
        "server_token.upload",
        "server_token.renew",
        "server_token.default",
        "server_token.discovery_register",
        "server_token.sync",
    ] {
        assert!(out.contains(action), "{action} missing:\n{out}");
    }

    // Unregister and remove.
    let r = c
        .delete(api("/account-driven-discovery"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(fake.discovery_url().is_none());
    let (ok, _, err) = cli(&["abm", "remove", "second"]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["abm", "list"]);
    assert!(ok);
    assert!(!out.contains("second"), "{out}");
    s.stop().await;
}
