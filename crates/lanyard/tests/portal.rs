#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The admin portal over HTTP, on both databases: sign-in with its CSRF cookie and secure
//! session cookie, wrong passwords throttled and unlocked, forged CSRF and expired sessions refused with
//! nothing changed, invalid settings refused whole, a read-only administrator refused every
//! change, users added and listed with search and pagination, the audit log filtered, sign-out.

mod support;

use rstest::rstest;

use reqwest::Client;
use serde_json::{json, Value};
use support::portal::{browser, csrf_of, get, post, sign_in};
use support::{Db, Server};

async fn settings_json(s: &Server, api: &Client, token: &str) -> Value {
    api.get(format!("{}/api/v1/settings/enrollment", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn portal_walk(db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let api = s.client();
    let token = s.admin_session(&api).await;
    let c = browser(&s);

    // Not signed in: pages lead to the sign-in page; the root leads to the portal.
    let r = c.get(format!("{}/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/portal");
    let r = c
        .get(format!("{}/portal/devices", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/portal/sign-in");

    // The sign-in form refuses a forged CSRF token and a wrong password, with a clear message.
    let (_, page) = get(&c, &s, "/portal/sign-in").await;
    let pre = csrf_of(&page);
    let (st, page) = post(
        &c,
        &s,
        "/portal/sign-in",
        &[
            ("csrf", "forged"),
            ("username", "admin"),
            ("password", &s.admin_password),
        ],
    )
    .await;
    assert_eq!(st, 403);
    assert!(page.contains("did not come from this portal"), "{page}");
    let (st, page) = post(
        &c,
        &s,
        "/portal/sign-in",
        &[
            ("csrf", &pre),
            ("username", "admin"),
            ("password", "not the password"),
        ],
    )
    .await;
    assert_eq!(st, 401);
    assert!(page.contains("Wrong name or password"), "{page}");

    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;
    let r = c
        .get(format!("{}/portal/summary", s.url))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    // Only the enrollment pages may hand a form off to the Mac's callback scheme.
    assert!(
        csp.contains("form-action 'self';") && !csp.contains("apple-remotemanagement-user-login"),
        "{csp}"
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("Enrolled devices") && page.contains("User Enrollment"));
    assert!(page.contains("No APNs certificate"), "{page}");

    // Add a user; a forged CSRF token changes nothing.
    let (st, page) = post(
        &c,
        &s,
        "/portal/users",
        &[("csrf", "forged"), ("email", "forged@example.com")],
    )
    .await;
    assert_eq!(st, 403);
    assert!(page.contains("nothing was"), "{page}");
    let (st, _) = post(
        &c,
        &s,
        "/portal/users",
        &[
            ("csrf", &csrf),
            ("email", "ann@example.com"),
            ("display_name", "Ann"),
            ("password", "a long password"),
        ],
    )
    .await;
    assert_eq!(st, 303);
    let (_, page) = get(&c, &s, "/portal/users?done=added").await;
    assert!(page.contains("User added."));
    assert!(page.contains("ann@example.com"));
    assert!(!page.contains("forged@example.com"));
    // An invalid email: a message, the typed values kept, nothing added.
    let (st, page) = post(
        &c,
        &s,
        "/portal/users",
        &[
            ("csrf", &csrf),
            ("email", "not an email"),
            ("display_name", "Zed"),
        ],
    )
    .await;
    assert_eq!(st, 422);
    assert!(page.contains("role=\"alert\""), "{page}");
    assert!(page.contains("value=\"Zed\""), "{page}");
    let users: Value = api
        .get(format!("{}/api/v1/users", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");

    // Settings: an invalid value refuses the whole form; a valid one saves all three switches.
    let before = settings_json(&s, &api, &token).await;
    let (st, page) = post(
        &c,
        &s,
        "/portal/settings",
        &[
            ("csrf", &csrf),
            ("ownership_mode", "prompt"),
            ("min_macos_version", "9.0"),
            ("managed_domains", "example.com"),
        ],
    )
    .await;
    assert_eq!(st, 422);
    assert!(page.contains("Nothing was saved"), "{page}");
    assert!(page.contains("macOS 14"), "{page}");
    assert_eq!(settings_json(&s, &api, &token).await, before);
    assert_eq!(before["install_trust_profile"], "auto");
    assert_eq!(before["inactive_after_days"], 90);
    for (k, v) in [
        ("install_trust_profile", "sometimes"),
        ("inactive_after_days", "-1"),
    ] {
        let (st, page) = post(
            &c,
            &s,
            "/portal/settings",
            &[
                ("csrf", &csrf),
                ("ownership_mode", "prompt"),
                ("min_macos_version", "15.3"),
                (k, v),
            ],
        )
        .await;
        assert_eq!(st, 422, "{k}={v}");
        assert!(page.contains("Nothing was saved"), "{page}");
        assert_eq!(settings_json(&s, &api, &token).await, before);
    }
    let (st, _) = post(
        &c,
        &s,
        "/portal/settings",
        &[
            ("csrf", &csrf),
            ("ownership_mode", "prompt"),
            ("min_macos_version", "15.3"),
            ("managed_domains", "example.com, example.org"),
            ("manage_only_corporate_resources", "on"),
            ("install_trust_profile", "never"),
            ("inactive_after_days", "30"),
        ],
    )
    .await;
    assert_eq!(st, 303);
    let after = settings_json(&s, &api, &token).await;
    assert_eq!(after["install_trust_profile"], "never");
    assert_eq!(after["inactive_after_days"], 30);
    let (_, page) = get(&c, &s, "/portal/settings").await;
    assert!(page.contains("<option value=\"never\" selected>"), "{page}");
    assert!(
        page.contains("name=\"inactive_after_days\" value=\"30\""),
        "{page}"
    );
    assert_eq!(after["min_macos_version"], "15.3");
    assert_eq!(after["ownership_mode"], "prompt");
    assert_eq!(after["manage_only_corporate_resources"], true);
    assert_eq!(after["use_email_as_managed_apple_id"], false);
    assert_eq!(
        after["managed_domains"],
        json!(["example.com", "example.org"])
    );

    // Pagination and search over users (created through the API, without passwords).
    for i in 0..55 {
        let r = api
            .post(format!("{}/api/v1/users", s.url))
            .bearer_auth(&token)
            .json(&json!({"email": format!("user{i:02}@example.com")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let (_, p1) = get(&c, &s, "/portal/users").await;
    assert!(p1.contains("rel=\"next\""), "page 1 links to page 2");
    let rows1 = p1.matches("/enabled\"").count();
    assert_eq!(rows1, 50);
    let (_, p2) = get(&c, &s, "/portal/users?page=2").await;
    assert_eq!(p2.matches("/enabled\"").count(), 6);
    assert!(!p2.contains("rel=\"next\""));
    let (_, found) = get(&c, &s, "/portal/users?search=user07").await;
    assert_eq!(found.matches("/enabled\"").count(), 1);
    assert!(found.contains("user07@example.com"));
    let (st, _) = get(&c, &s, "/portal/users?page=zero").await;
    assert_eq!(st, 400);
    let (st, _) = get(&c, &s, "/portal/devices?status=nonsense").await;
    assert_eq!(st, 400);
    let (st, page) = get(&c, &s, "/portal/devices?sort=password_hash").await;
    assert_eq!(st, 400);
    assert!(page.contains("Unknown sort column"), "{page}");
    let (st, page) = get(&c, &s, "/portal/devices?sort=os&dir=asc&status=all").await;
    assert_eq!(st, 200);
    assert!(page.contains("0 devices"), "{page}");

    // The audit log filters by action and by date, and pages with its total.
    let (_, page) = get(&c, &s, "/portal/audit?action=settings.update").await;
    assert!(page.contains("settings.update"), "{page}");
    assert!(!page.contains("user.create"), "{page}");
    assert!(page.contains("1 entry<"), "{page}");
    // Dates a day either side of now, so the test holds across midnight.
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let before = yesterday - chrono::Duration::days(1);
    let (_, page) = get(
        &c,
        &s,
        &format!("/portal/audit?action=user.create&from={yesterday}"),
    )
    .await;
    assert!(page.contains("56 entries"), "{page}");
    assert!(page.contains("rel=\"next\""), "{page}");
    let (_, page) = get(&c, &s, &format!("/portal/audit?until={before}")).await;
    assert!(page.contains("0 entries"), "{page}");
    let (st, page) = get(&c, &s, "/portal/audit?from=03%2F12%2F2026").await;
    assert_eq!(st, 400);
    assert!(page.contains("not a date"), "{page}");

    // A wrong certificate file is refused with a message; nothing is stored.
    let boundary = "lanyardtestboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"certificate\"; \
         filename=\"cert.txt\"\r\nContent-Type: text/plain\r\n\r\njust some text\r\n\
         --{boundary}--\r\n"
    );
    let r = c
        .post(format!("{}/portal/apns", s.url))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("Nothing was changed"));
    let r = api
        .get(format!("{}/api/v1/push-certificate", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Without a push certificate the summary says enrollment is closed; with one it does not.
    let (_, page) = get(&c, &s, "/portal/summary").await;
    assert!(page.contains("id=\"enrollment-closed\""), "{page}");
    assert!(page.contains("Enrollment is closed"), "{page}");
    let topic = s.upload_push_certificate();
    let (_, page) = get(&c, &s, "/portal/summary").await;
    assert!(!page.contains("enrollment-closed"), "{page}");
    assert!(page.contains(&topic), "{page}");

    // A read-only administrator sees everything and every change is refused.
    let (ok, _, err) = s.cli_stdin(
        &[
            "admin",
            "create",
            "viewer",
            "--role",
            "read-only",
            "--password",
            "-",
        ],
        "viewer password 123\n",
    );
    assert!(ok, "{err}");
    let v = browser(&s);
    let vcsrf = sign_in(&v, &s, "viewer", "viewer password 123").await;
    let (st, page) = get(&v, &s, "/portal/settings").await;
    assert_eq!(st, 200);
    assert!(page.contains("read-only administrator"), "{page}");
    let (st, page) = post(
        &v,
        &s,
        "/portal/settings",
        &[
            ("csrf", &vcsrf),
            ("ownership_mode", "employee"),
            ("min_macos_version", "15.2"),
        ],
    )
    .await;
    assert_eq!(st, 403);
    assert!(
        page.contains("Read-only administrators cannot change anything"),
        "{page}"
    );
    assert_eq!(settings_json(&s, &api, &token).await, after);
    let (st, _) = post(
        &v,
        &s,
        "/portal/users",
        &[("csrf", &vcsrf), ("email", "ro@example.com")],
    )
    .await;
    assert_eq!(st, 403);
    let (st, page) = post(&v, &s, "/portal/abm", &[("csrf", &vcsrf), ("name", "ro")]).await;
    assert_eq!(st, 403);
    assert!(page.contains("Read-only administrators"), "{page}");
    let (st, page) = get(&v, &s, "/portal/abm").await;
    assert_eq!(st, 200);
    assert!(page.contains("No server tokens yet"), "{page}");

    // An expired (or unknown) session: a change is refused with a clear message.
    let stale = Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&s.ca_pem()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = stale
        .post(format!("{}/portal/users", s.url))
        .header("cookie", "lanyard_session=lys_not_a_live_session")
        .form(&[("csrf", csrf.as_str()), ("email", "late@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("session has expired"));

    // Throttling: after five free attempts each one waits longer, so wrong passwords soon get
    // 429 (with Retry-After); `lanyard admin unlock` lets the right one in again at once.
    let l = browser(&s);
    let (_, page) = get(&l, &s, "/portal/sign-in").await;
    let pre = csrf_of(&page);
    let mut refused = None;
    for _ in 0..40 {
        let r = l
            .post(format!("{}/portal/sign-in", s.url))
            .form(&[
                ("csrf", pre.as_str()),
                ("username", "viewer"),
                ("password", "wrong password"),
            ])
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            refused = Some(r.text().await.unwrap());
            break;
        }
        assert_eq!(r.status(), 401);
    }
    let page = refused.expect("no 429 after many wrong passwords");
    assert!(page.contains("Too many failed sign-ins"), "{page}");
    let (ok, _, err) = s.cli(&["admin", "unlock", "viewer"]);
    assert!(ok, "{err}");
    let (st, _) = post(
        &l,
        &s,
        "/portal/sign-in",
        &[
            ("csrf", &pre),
            ("username", "viewer"),
            ("password", "viewer password 123"),
        ],
    )
    .await;
    assert_eq!(st, 303);

    // Sign-out ends the session: the next page is the sign-in page again.
    let (st, _) = post(&c, &s, "/portal/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(st, 303);
    let r = c
        .get(format!("{}/portal/summary", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn portal(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    portal_walk(db).await;
}

/// A sync started from the ABM page returns at once and runs in the background; its
/// progress is polled (as `portal.js` does) until done, every device is stored once, and a
/// second start while it runs is refused with a message.
// Multi-threaded: the fake ABM must keep serving while the test waits on a CLI process.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_progress(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    use lanyard_testkit::fake_abm::{AbmFault, FakeAbm};

    let fake = FakeAbm::start().await.unwrap();
    fake.add_devices("C02P", 23);
    let abm = fake.url();
    let Some(s) = Server::start_with(
        db,
        &[
            ("LANYARD_ABM_URL", abm.as_str()),
            ("LANYARD_ABM_PAGE_SIZE", "5"),
            ("LANYARD_NO_ABM_SYNC", "true"),
        ],
    )
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("main.pem").display().to_string();
    let p7m = dir.path().join("main.p7m").display().to_string();
    let (ok, _, err) = s.cli(&["abm", "new", "main", "-o", &pem, "--abm-url", &abm]);
    assert!(ok, "{err}");
    std::fs::write(
        &p7m,
        fake.token_file(&std::fs::read(&pem).unwrap(), 365).unwrap(),
    )
    .unwrap();
    let (ok, _, err) = s.cli(&["abm", "upload", "main", &p7m, "--abm-url", &abm]);
    assert!(ok, "{err}");

    let c = browser(&s);
    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;
    // Nothing started yet: no progress to show.
    let (st, _) = get(&c, &s, "/portal/abm/main/progress").await;
    assert_eq!(st, 404);

    // Every device page is slow, so the sync is still running when the page comes back.
    fake.inject((0..5).map(|_| AbmFault::Slow(std::time::Duration::from_millis(400))));
    let r = c
        .post(format!("{}/portal/abm/main/sync", s.url))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/portal/abm?done=sync&name=main");

    // A second start while the first runs: refused with a message, nothing started.
    let (st, page) = post(&c, &s, "/portal/abm/main/sync", &[("csrf", &csrf)]).await;
    assert_eq!(st, 409, "{page}");
    assert!(
        page.contains("A sync of `main` is already running"),
        "{page}"
    );

    // The token page shows the progress line the script polls.
    let (st, page) = get(&c, &s, "/portal/abm?done=sync&name=main").await;
    assert_eq!(st, 200);
    assert!(page.contains("Sync of main started"), "{page}");
    assert!(
        page.contains("data-poll=\"/portal/abm/main/progress\""),
        "{page}"
    );

    // Poll until done: counts only grow, and the last answer is the result.
    let mut last_pages = 0;
    let mut polls = 0;
    let done = loop {
        let (st, body) = get(&c, &s, "/portal/abm/main/progress").await;
        assert_eq!(st, 200, "{body}");
        let p: Value = serde_json::from_str(&body).unwrap();
        let pages = p["pages"].as_u64().unwrap();
        assert!(pages >= last_pages, "{p}");
        last_pages = pages;
        if p["waiting"] == 0 {
            break p;
        }
        assert_eq!(p["state"], "running", "{p}");
        assert!(p["text"].as_str().unwrap().contains("running"), "{p}");
        polls += 1;
        assert!(polls < 600, "the sync never finished: {p}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(polls > 0, "the sync ran within the request");
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["pages"], 5, "{done}");
    assert_eq!(done["devices_seen"], 23, "{done}");
    assert_eq!(done["devices_stored"], 23, "{done}");
    let text = done["text"].as_str().unwrap();
    assert!(
        text.contains("Sync of main finished: 23 devices seen in 5 pages (full fetch)"),
        "{text}"
    );

    // Every device stored once; the page shows the result without polling.
    let api = s.client();
    let admin = s.admin_session(&api).await;
    let devices: Value = api
        .get(format!(
            "{}/api/v1/server-tokens/main/devices?limit=1000",
            s.url
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut serials: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["serial_number"].as_str().unwrap())
        .collect();
    serials.sort_unstable();
    serials.dedup();
    assert_eq!(serials.len(), 23, "{devices}");
    let (st, page) = get(&c, &s, "/portal/abm").await;
    assert_eq!(st, 200);
    assert!(page.contains("23 devices assigned in all"), "{page}");
    assert!(!page.contains("data-poll="), "{page}");

    // Done, the lease released: the API starts one in the background (`?wait=false`) and
    // reports it at the progress URL until done; nothing is doubled.
    fake.inject([AbmFault::Slow(std::time::Duration::from_millis(300))]);
    let r = api
        .post(format!(
            "{}/api/v1/server-tokens/main/sync?wait=false",
            s.url
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["progress"]["state"], "running", "{started}");
    let url = started["progress_url"].as_str().unwrap().to_string();
    assert_eq!(url, "/api/v1/server-tokens/main/sync");
    let r = api
        .post(format!("{}/api/v1/server-tokens/main/sync", s.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let mut polls = 0;
    let p = loop {
        let p: Value = api
            .get(format!("{}{url}", s.url))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if p["state"] != "running" {
            break p;
        }
        polls += 1;
        assert!(polls < 600, "the sync never finished: {p}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(p["state"], "done", "{p}");
    assert_eq!(p["report"]["devices_total"], 23, "{p}");
    let r = api
        .post(format!(
            "{}/api/v1/server-tokens/main/sync?wait=maybe",
            s.url
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}
