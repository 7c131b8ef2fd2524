#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The APNs certificate page's steps over HTTP, on both databases: a request made with the
//! session's CSRF token (a forged one, or a read-only administrator, changes nothing), its CSR downloaded, a foreign
//! certificate refused with nothing changed, Apple's certificate for the pending key
//! accepted; the summary shows the days left, and `/metrics` carries the expiry gauge once a
//! certificate is uploaded.

mod support;

use lanyard_testkit::fake_pushcert::{fake_apple_push_certificate, FakeApnsMarker};
use reqwest::Client;
use support::portal::{browser, get, post, sign_in};
use support::{Db, Server};

const GAUGE: &str = "lanyard_push_certificate_expires_in_days";

/// Posts one file (`certificate`) with the CSRF token to the APNs page.
async fn upload(c: &Client, s: &Server, csrf: &str, pem: &str) -> (u16, String) {
    let boundary = "lanyardpushportal";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"certificate\"; \
         filename=\"MDM_Lanyard.pem\"\r\nContent-Type: application/x-pem-file\r\n\r\n{pem}\r\n\
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
    let st = r.status().as_u16();
    (st, r.text().await.unwrap())
}

async fn metrics(s: &Server) -> String {
    s.client()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn portal_steps(db: Db) {
    let Some(s) = Server::start(db).await else {
        return;
    };
    let c = browser(&s);
    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;
    let api = s.client();
    let token = s.admin_session(&api).await;
    let pending = || async {
        api.get(format!("{}/api/v1/push-certificate/request", s.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    // The page explains every step, renewal with the same Apple Account included.
    let (st, page) = get(&c, &s, "/portal/apns").await;
    assert_eq!(st, 200);
    for text in [
        "No request is pending",
        "Make a request",
        "push-cert sign --vendor-p12",
        "https://identity.apple.com",
        "same Apple Account",
        "Renew",
        "Upload the certificate Apple returns",
    ] {
        assert!(page.contains(text), "{text}: {page}");
    }
    let (st, _) = get(&c, &s, "/portal/apns/request.csr").await;
    assert_eq!(st, 404);
    assert!(
        !metrics(&s).await.contains(GAUGE),
        "no certificate, no gauge"
    );

    // A forged CSRF token makes no request.
    let (st, page) = post(&c, &s, "/portal/apns/request", &[("csrf", "forged")]).await;
    assert_eq!(st, 403, "{page}");
    assert_eq!(pending().await, 404);
    // A read-only administrator sees the page but cannot make a request.
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
    let (st, _) = get(&v, &s, "/portal/apns").await;
    assert_eq!(st, 200);
    let (st, page) = post(&v, &s, "/portal/apns/request", &[("csrf", &vcsrf)]).await;
    assert_eq!(st, 403, "{page}");
    assert_eq!(pending().await, 404);

    // Step 1: a request; its CSR downloads as a file.
    let r = c
        .post(format!("{}/portal/apns/request", s.url))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/portal/apns?done=requested");
    assert_eq!(pending().await, 200);
    let (_, page) = get(&c, &s, "/portal/apns?done=requested").await;
    assert!(page.contains("Request made"), "{page}");
    assert!(page.contains("is pending"), "{page}");
    assert!(page.contains("href=\"/portal/apns/request.csr\""), "{page}");
    assert!(page.contains("Make a new request"), "{page}");
    let r = c
        .get(format!("{}/portal/apns/request.csr", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let csr = r.text().await.unwrap();
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"), "{csr}");

    // A certificate for another key: refused, explained, nothing changed.
    let topic = lanyard_testkit::fake_apns::fake_mdm_topic();
    let foreign = lanyard_testkit::fake_apns::fake_push_certificate(&topic).unwrap();
    let (st, page) = upload(&c, &s, &csrf, &foreign.cert_pem).await;
    assert_eq!(st, 422, "{page}");
    assert!(page.contains("Nothing was changed"), "{page}");
    assert!(page.contains("not issued for Lanyard"), "{page}");
    assert_eq!(pending().await, 200, "the request is still pending");
    // A forged token uploads nothing.
    let issued =
        fake_apple_push_certificate(csr.as_bytes(), &topic, FakeApnsMarker::Production).unwrap();
    let (st, _) = upload(&c, &s, "forged", &issued).await;
    assert_eq!(st, 403);
    assert_eq!(pending().await, 200);
    assert!(!metrics(&s).await.contains(GAUGE));

    // Apple's certificate for the pending key: stored, the request cleared.
    let (st, page) = upload(&c, &s, &csrf, &issued).await;
    assert_eq!(st, 303, "{page}");
    assert_eq!(pending().await, 404);
    let (_, page) = get(&c, &s, "/portal/apns?done=uploaded").await;
    assert!(page.contains("APNs certificate saved"), "{page}");
    assert!(page.contains(&topic), "{page}");
    let (_, page) = get(&c, &s, "/portal/summary").await;
    assert!(page.contains(&topic), "{page}");
    assert!(
        page.contains("(364 days left)") || page.contains("(365 days left)"),
        "{page}"
    );

    // The gauge: the days left of the certificate just uploaded.
    let text = metrics(&s).await;
    let line = text
        .lines()
        .find(|l| l.starts_with(GAUGE))
        .unwrap_or_else(|| panic!("no {GAUGE}: {text}"));
    let days: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((364.0..=365.0).contains(&days), "{line}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_page_steps_sqlite() {
    portal_steps(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_page_steps_postgres() {
    portal_steps(Db::Postgres).await;
}
