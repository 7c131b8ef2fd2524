#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! End to end, on both databases: what an operator sees on a bad day. A stopped database gives
//! 503 with `Retry-After` (API, pages, device routes) and `/healthz` says so; a start-up
//! failure names its cause; a lost or exposed secret key stops the server instead of being
//! replaced; every answer carries the security headers; `/metrics` can be moved or locked.

mod support;

use rstest::rstest;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use support::{Db, Server};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};

/// A TCP proxy in front of PostgreSQL that the test can take down (the port refuses
/// connections, open ones are cut) and bring back on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = Self::bind("127.0.0.1:0".parse().unwrap());
        let mut p = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            accept: None,
            conns: Default::default(),
        };
        p.serve(listener);
        p
    }

    fn bind(addr: SocketAddr) -> TcpListener {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        socket.listen(64).unwrap()
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        let conns = Arc::clone(&self.conns);
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                conns.lock().await.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// The database "stops": new connections are refused, open ones are cut.
    async fn down(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
        let mut conns = self.conns.lock().await;
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }

    fn up(&mut self) {
        let listener = Self::bind(self.addr);
        self.serve(listener);
    }
}

fn host_port(url: &str) -> String {
    let after = url.split_once("://").unwrap().1;
    let after = after.rsplit_once('@').map(|(_, h)| h).unwrap_or(after);
    after.split('/').next().unwrap().to_string()
}

async fn health(s: &Server, c: &reqwest::Client) -> (u16, Option<String>, Value) {
    let r = c.get(format!("{}/healthz", s.url)).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_fails_fast_with_503_and_recovers() {
    let Some(db) = support::fresh_pg_database().await else {
        return;
    };
    let url = db.url().to_string();
    let upstream: SocketAddr = {
        let hp = host_port(&url);
        tokio::net::lookup_host(hp).await.unwrap().next().unwrap()
    };
    let mut proxy = Proxy::start(upstream).await;
    let proxied = url.replace(&host_port(&url), &proxy.addr.to_string());
    let s = Server::start_on(
        tempfile::tempdir().unwrap(),
        proxied,
        Some(db),
        &[("LANYARD_DATABASE_ACQUIRE_TIMEOUT", "1")],
    );
    let c = s.client();
    let token = s.admin_session(&c).await;
    let (status, _, body) = health(&s, &c).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database_status"], "ok");

    proxy.down().await;

    // The JSON API: 503, the error shape, Retry-After; the request id sent comes back and is
    // on the log line of the refusal.
    let started = std::time::Instant::now();
    let r = c
        .get(format!("{}/api/v1/users", s.url))
        .bearer_auth(&token)
        .header("x-request-id", "ops-db-down-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "ops-db-down-1");
    let line = s.wait_for_log("of the refused API request", |l| {
        l.contains("database unavailable") && l.contains("ops-db-down-1")
    });
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("route=/api/v1/users"), "{line}");
    eprintln!(
        "API answer with the database down after {:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unavailable");

    // A portal page (the session cookie) and a device-facing route: the same 503.
    let r = c
        .get(format!("{}/portal/devices", s.url))
        .header("cookie", format!("lanyard_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let r = c
        .get(format!(
            "{}/.well-known/com.apple.remotemanagement?user-identifier=ann@example.com&model-family=Mac",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");

    // Health names the database as the problem. A request without an id is given one, in
    // the answer and on the log line of the failed check.
    let r = c.get(format!("{}/healthz", s.url)).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    s.wait_for_log("of the failed health check", |l| {
        l.contains("health check") && l.contains(&format!("id={id}"))
    });
    let (status, retry, body) = health(&s, &c).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"], "postgres");
    assert_eq!(body["database_status"], "unavailable");
    assert_eq!(body["disk"]["status"], "ok");
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .contains("database is unreachable")
            || body["problems"][0]
                .as_str()
                .unwrap()
                .contains("did not answer"),
        "{body}"
    );

    // The database comes back: so does the server, without a restart.
    proxy.up();
    let mut healthy = false;
    for _ in 0..20 {
        let (status, _, _) = health(&s, &c).await;
        if status == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(healthy, "healthz never recovered");
    let r = c
        .get(format!("{}/api/v1/users", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

/// Every request is logged once when it is answered, with its request id (made when the
/// client sent none, kept when it sent one), its route template and status; the answer carries
/// the id back.
#[tokio::test]
async fn each_request_is_logged_with_its_id() {
    let s = Server::start_with(Db::Sqlite, &[("LANYARD_LOG", "info")])
        .await
        .unwrap();
    let c = s.client();
    let r = c
        .get(format!("{}/api/v1/users/ann@example.com", s.url))
        .header("x-request-id", "ops-follow-me")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-request-id"], "ops-follow-me");
    let line = s.wait_for_log("closing the request", |l| {
        l.contains("id=ops-follow-me") && l.contains("status=401")
    });
    // The route template, not the path: the user's address is not logged.
    assert!(line.contains("route=/api/v1/users/{key}"), "{line}");
    assert!(!line.contains("ann@example.com"), "{line}");

    let r = c.get(format!("{}/healthz", s.url)).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    s.wait_for_log("closing the health check", |l| {
        l.contains(&format!("id={id}")) && l.contains("status=200")
    });
    s.stop().await;
}

/// A start-up failure says which server could not be reached and why.
#[test]
fn start_up_names_the_unreachable_database() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let err = support::serve_refuses(
        dir.path(),
        &format!("postgres://postgres@127.0.0.1:{port}/lanyard"),
        &[("LANYARD_DATABASE_ACQUIRE_TIMEOUT", "2")],
    );
    assert!(
        err.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

#[rstest]
#[tokio::test]
async fn health_headers_and_files(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let c = s.client();
    let (status, _, body) = health(&s, &c).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database_status"], "ok");
    assert_eq!(body["disk"]["status"], "ok");
    assert!(body["disk"]["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(body["disk"]["min_free_bytes"], 256 * 1024 * 1024);
    assert!(body.get("problems").is_none(), "{body}");

    // Every answer: nosniff and, served over TLS, HSTS; answers that carry a token: no-store.
    let r = c
        .post(format!("{}/api/v1/sessions", s.url))
        .json(&serde_json::json!({"username": "admin", "password": s.admin_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("strict-transport-security", "max-age=31536000"),
    ] {
        assert_eq!(r.headers()[name], value, "{name}");
    }
    for path in [
        "/healthz",
        "/enroll/sign-in",
        "/portal/sign-in",
        "/no-such-page",
        "/api/v1/openapi.json",
    ] {
        let r = c.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=31536000",
            "{path}"
        );
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
    }
    // A static asset keeps its own cache policy.
    let r = c
        .get(format!("{}/portal/assets/portal.css", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "public, max-age=3600");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");

    // Files at rest: the secret key and (SQLite) the database, owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(s.data_dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("secret.key"), 0o600);
        if db == Db::Sqlite {
            for f in ["lanyard.db", "lanyard.db-wal", "lanyard.db-shm"] {
                assert_eq!(mode(f), 0o600, "{f}");
            }
        }
    }
    s.stop().await;
}

/// A nearly full disk is not healthy: 503 with the reason.
#[tokio::test]
async fn low_disk_is_unhealthy() {
    let Some(s) =
        Server::start_with(Db::Sqlite, &[("LANYARD_MIN_FREE_DISK_MB", "1000000000")]).await
    else {
        return;
    };
    let (status, retry, body) = health(&s, &s.client()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(body["database_status"], "ok");
    assert_eq!(body["disk"]["status"], "low");
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .contains("nearly full"),
        "{body}"
    );
    s.stop().await;
}

/// Behind a proxy (plain HTTP) Lanyard sends HSTS only when asked to.
#[tokio::test]
async fn hsts_behind_a_proxy_only_when_configured() {
    let proxy_env = [
        ("LANYARD_BEHIND_PROXY", "true"),
        ("LANYARD_PUBLIC_URL", "https://mdm.example.com"),
    ];
    let Some(s) = Server::start_with(Db::Sqlite, &proxy_env).await else {
        return;
    };
    let r = reqwest::get(format!("{}/healthz", s.url)).await.unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    s.stop().await;

    let mut env = proxy_env.to_vec();
    env.push(("LANYARD_HSTS_MAX_AGE", "600"));
    let Some(s) = Server::start_with(Db::Sqlite, &env).await else {
        return;
    };
    let r = reqwest::get(format!("{}/healthz", s.url)).await.unwrap();
    assert_eq!(r.headers()["strict-transport-security"], "max-age=600");
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn secret_key_guards(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    // Sealed material beyond the CA: the push certificate's key.
    s.upload_push_certificate();
    let dir = s.data_dir.path();
    let key = dir.join("secret.key");

    // Readable by others: refused, with the fix.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = support::serve_refuses(dir, &s.database_url, &[]);
        assert!(
            err.contains("open to other users") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // The key on argv or in the environment is no longer accepted.
    let err = support::serve_refuses(dir, &s.database_url, &[("LANYARD_SECRET_KEY", "AAAA")]);
    assert!(err.contains("--secret-key-file"), "{err}");

    // Lost: the database holds sealed keys, so no new key is written.
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = support::serve_refuses(dir, &s.database_url, &[]);
    assert!(
        err.contains("secret key file") && err.contains("is missing"),
        "{err}"
    );
    assert!(!key.exists(), "a fresh key was written");
    // The same from an admin command that needs the key.
    let (ok, _, err) = s.cli(&["push-cert", "show"]);
    assert!(!ok);
    assert!(err.contains("is missing"), "{err}");
    assert!(!key.exists(), "a fresh key was written");

    // Given with --secret-key-file from elsewhere, the original key works again.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("lanyard.key");
    support::write_private_file(&moved, &saved);
    let (ok, out, err) = support::cli_with(
        dir,
        &s.database_url,
        &[
            "--secret-key-file",
            &moved.display().to_string(),
            "push-cert",
            "show",
        ],
        None,
    );
    assert!(ok, "{out}{err}");
    assert!(!key.exists());
    s.stop().await;
}

/// `--secret-key-file` names where a first start writes the key (owner only), instead of the
/// data directory.
#[tokio::test]
async fn secret_key_file_is_created_where_given() {
    let elsewhere = tempfile::tempdir().unwrap();
    let key = elsewhere.path().join("lanyard.key");
    let key_text = key.display().to_string();
    let Some(s) = Server::start_with(Db::Sqlite, &[("LANYARD_SECRET_KEY_FILE", &key_text)]).await
    else {
        return;
    };
    assert!(key.exists());
    assert!(!s.data_dir.path().join("secret.key").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    s.stop().await;
}

/// `/metrics` behind a bearer token, and on its own address.
#[tokio::test]
async fn metrics_token_and_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics.token");
    support::write_private_file(&token_file, b"scrape-secret-123\n");
    let token_text = token_file.display().to_string();
    let Some(s) =
        Server::start_with(Db::Sqlite, &[("LANYARD_METRICS_TOKEN_FILE", &token_text)]).await
    else {
        return;
    };
    let c = s.client();
    let url = format!("{}/metrics", s.url);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(&url)
        .bearer_auth("scrape-secret-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("lanyard_http_requests_total"));
    s.stop().await;

    let Some(s) = Server::start_with(
        Db::Sqlite,
        &[
            ("LANYARD_METRICS_LISTEN", "127.0.0.1:0"),
            ("LANYARD_METRICS_TOKEN_FILE", &token_text),
        ],
    )
    .await
    else {
        return;
    };
    let c = s.client();
    // Not on the main address any more.
    let r = c.get(format!("{}/metrics", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let _ = c.get(format!("{}/healthz", s.url)).send().await.unwrap();
    let metrics_url = s
        .startup_log
        .iter()
        .find_map(|l| l.strip_prefix("lanyard metrics on "))
        .expect("the metrics address is printed")
        .trim()
        .to_string();
    let plain = reqwest::Client::new();
    let r = plain.get(&metrics_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = plain
        .get(&metrics_url)
        .bearer_auth("scrape-secret-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("lanyard_http_requests_total"));
    s.stop().await;
}
