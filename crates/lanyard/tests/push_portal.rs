#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The APNs certificate page's steps over HTTP, on both databases: a request made with the
//! session's CSRF token (a forged one, or a read-only administrator, changes nothing), its CSR downloaded, a foreign
//! certificate refused with nothing changed, Apple's certificate for the pending key
//! accepted; the summary shows the days left, and `/metrics` carries the expiry gauge once a
//! certificate is uploaded.

mod support;

use rstest::rstest;

use base64::Engine as _;
use lanyard_testkit::fake_pushcert::{
    fake_apple_push_certificate, fake_vendor_chain, FakeApnsMarker, FakeVendorOptions,
};
use lanyard_testkit::fake_signing_service::FakeSigningService;
use reqwest::Client;
use serde_json::{json, Value};
use support::portal::{browser, get, post, post_multipart, read_only_browser, sign_in, Part};
use support::pushcert::{independent_checks, require_tool, run};
use support::{Db, Server, VIEWER_PASSWORD};

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
    let (v, vcsrf) = read_only_browser(&s).await;
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

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_page_steps(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    portal_steps(db).await;
}

/// The DER of a PEM CSR or certificate, by `openssl` (`kind`: `req` or `x509`).
fn der_of(dir: &std::path::Path, kind: &str, pem: &str, tag: &str) -> Vec<u8> {
    let (pem_path, der_path) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.der")),
    );
    std::fs::write(&pem_path, pem).unwrap();
    let (ok, _, err) = run(std::process::Command::new("openssl").args([
        kind,
        "-in",
        &pem_path.display().to_string(),
        "-outform",
        "DER",
        "-out",
        &der_path.display().to_string(),
    ]));
    assert!(ok, "{err}");
    std::fs::read(der_path).unwrap()
}

/// A downloaded request file: an attachment whose content passes the independent checks and
/// carries the pending CSR (`csr_der`).
async fn check_download(r: reqwest::Response, dir: &std::path::Path, tag: &str, csr_der: &[u8]) {
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"lanyard-push-request.b64\""
    );
    let file = r.bytes().await.unwrap();
    check_request_file(&file, dir, tag, csr_der);
}

fn check_request_file(file: &[u8], dir: &std::path::Path, tag: &str, csr_der: &[u8]) {
    let path = dir.join(format!("{tag}.b64"));
    std::fs::write(&path, file).unwrap();
    let carried = independent_checks(dir, &path, tag);
    assert_eq!(
        std::fs::read(carried).unwrap(),
        csr_der,
        "{tag}: another CSR"
    );
}

/// Step 2 in the portal and the API, on both databases: the operator's own vendor
/// certificate signs the pending request (the download verifies with plistlib and openssl
/// and carries the pending CSR); a signing service gets a new request and its emailed reply
/// decrypts to the request file; a wrong password, an incomplete Apple chain, a forged form,
/// a read-only administrator, a refused API key, a file that is not a reply and a reply to
/// an older request are each explained and change nothing; Apple's certificate then
/// completes the request.
async fn signing_steps(db: Db) {
    if !require_tool("openssl") || !require_tool("python3") {
        return;
    }
    let chain = fake_vendor_chain(FakeVendorOptions::default()).unwrap();
    let api_key = "portal-api-key-0123456789";
    let service = FakeSigningService::start(api_key, &chain).await.unwrap();
    let url = service.url();
    let Some(s) = Server::start_with(db, &[("LANYARD_SIGNING_SERVICE_URL", &url)]).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root_der = der_of(dir.path(), "x509", &chain.root_pem, "root");
    let wwdr_der = der_of(dir.path(), "x509", &chain.wwdr_pem, "wwdr");
    let c = browser(&s);
    let csrf = sign_in(&c, &s, "admin", &s.admin_password).await;
    let api = s.client();
    let token = s.admin_session(&api).await;
    let pending = || async {
        let r = api
            .get(format!("{}/api/v1/push-certificate/request", s.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        (st, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let api_post = |path: &'static str, body: Value| {
        let (api, url, token) = (api.clone(), s.url.clone(), token.clone());
        async move {
            let r = api
                .post(format!("{url}/api/v1/push-certificate/request{path}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap())
        }
    };
    let sign = |csrf: String, password: String, apple: Vec<(&'static str, Vec<u8>)>| {
        let (c, p12) = (c.clone(), chain.vendor_p12_der.clone());
        let s = &s;
        async move {
            let mut parts = vec![
                Part::field("csrf", &csrf),
                Part::file("vendor", "vendor.p12", &p12),
                Part::field("password", &password),
            ];
            for (name, der) in &apple {
                parts.push(Part::file("apple", name, der));
            }
            post_multipart(&c, s, "/portal/apns/request/sign", &parts).await
        }
    };
    let both = || {
        vec![
            ("AppleWWDRCA.cer", wwdr_der.clone()),
            ("AppleIncRootCertificate.cer", root_der.clone()),
        ]
    };
    let pw = chain.vendor_p12_password.clone();

    // Before a request: the page names the service; signing has nothing to sign.
    let (st, page) = get(&c, &s, "/portal/apns").await;
    assert_eq!(st, 200);
    assert!(page.contains(&url), "{page}");
    assert!(page.contains("Make a request first"), "{page}");
    let r = sign(csrf.clone(), pw.clone(), both()).await;
    assert_eq!(r.status(), 404);
    let page = r.text().await.unwrap();
    assert!(page.contains("Pending push certificate request"), "{page}");

    // Step 1, then step 2 with the vendor certificate.
    let (st, _) = post(&c, &s, "/portal/apns/request", &[("csrf", &csrf)]).await;
    assert_eq!(st, 303);
    let (st, req) = pending().await;
    assert_eq!(st, 200);
    assert_eq!(req["signing_service"], false);
    let csr_pem = req["csr_pem"].as_str().unwrap().to_string();
    let csr_der = der_of(dir.path(), "req", &csr_pem, "pending-1");
    let (_, page) = get(&c, &s, "/portal/apns").await;
    assert!(
        page.contains("action=\"/portal/apns/request/sign\""),
        "{page}"
    );
    assert!(
        !page.contains("action=\"/portal/apns/request/decrypt\""),
        "no reply to decrypt for a request made here: {page}"
    );

    // Refused: a wrong password, a root alone, a forged form, a read-only administrator.
    let r = sign(csrf.clone(), "wrong".into(), both()).await;
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(page.contains("Not signed"), "{page}");
    assert!(page.contains("wrong password"), "{page}");
    assert!(!page.contains("routines"), "no OpenSSL internals: {page}");
    let r = sign(
        csrf.clone(),
        pw.clone(),
        vec![("AppleIncRootCertificate.cer", root_der.clone())],
    )
    .await;
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(page.contains("not the expected chain"), "{page}");
    let r = sign("forged".into(), pw.clone(), both()).await;
    assert_eq!(r.status(), 403);
    let viewer_token = s.read_only_session(&api).await;
    let v = browser(&s);
    let vcsrf = sign_in(&v, &s, "viewer", VIEWER_PASSWORD).await;
    let vp12 = chain.vendor_p12_der.clone();
    let r = post_multipart(
        &v,
        &s,
        "/portal/apns/request/sign",
        &[
            Part::field("csrf", &vcsrf),
            Part::file("vendor", "vendor.p12", &vp12),
            Part::field("password", &pw),
            Part::file("apple", "AppleWWDRCA.cer", &wwdr_der),
            Part::file("apple", "AppleIncRootCertificate.cer", &root_der),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(pending().await.1["csr_pem"], csr_pem.as_str());

    // Signed: the download verifies independently and carries the pending CSR.
    check_download(
        sign(csrf.clone(), pw.clone(), both()).await,
        dir.path(),
        "portal-vendor",
        &csr_der,
    )
    .await;

    // The same through the API (Apple's files as PEM or base64 of DER).
    let b64 = base64::engine::general_purpose::STANDARD;
    let vendor_body = |password: &str| {
        json!({
            "pkcs12_base64": b64.encode(&chain.vendor_p12_der),
            "password": password,
            "apple_certificates": [chain.wwdr_pem, b64.encode(&root_der)],
        })
    };
    let (st, body) = api_post("/sign", vendor_body("wrong")).await;
    assert_eq!(st, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong password"),
        "{body}"
    );
    let (st, body) = api_post(
        "/sign",
        json!({"pkcs12_base64": "%%%", "password": "", "apple_certificates": []}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not base64"),
        "{body}"
    );
    let r = api
        .post(format!("{}/api/v1/push-certificate/request/sign", s.url))
        .bearer_auth(&viewer_token)
        .json(&vendor_body(&pw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (st, body) = api_post("/sign", vendor_body(&pw)).await;
    assert_eq!(st, 200, "{body}");
    check_request_file(
        body["upload_file"].as_str().unwrap().as_bytes(),
        dir.path(),
        "api-vendor",
        &csr_der,
    );

    // The signing service from the portal: a refused key or a bad address sends nothing
    // and keeps the pending request.
    let send = |key: &'static str, email: &'static str| {
        let (c, csrf) = (c.clone(), csrf.clone());
        let s = &s;
        async move {
            post(
                &c,
                s,
                "/portal/apns/request/signing-service",
                &[("csrf", &csrf), ("email", email), ("api_key", key)],
            )
            .await
        }
    };
    let (st, page) = send("not-the-key", "admin@example.com").await;
    assert_eq!(st, 422, "{page}");
    assert!(page.contains("Nothing was sent or changed"), "{page}");
    assert!(page.contains("refused the request"), "{page}");
    assert!(
        !page.contains("not-the-key"),
        "the key is not echoed: {page}"
    );
    assert_eq!(service.requests().len(), 1);
    let (st, page) = send(api_key, "not an address").await;
    assert_eq!(st, 422, "{page}");
    assert!(page.contains("not an email address"), "{page}");
    assert_eq!(service.requests().len(), 1);
    assert_eq!(pending().await.1["csr_pem"], csr_pem.as_str());
    let (st, page) = post(
        &c,
        &s,
        "/portal/apns/request/signing-service",
        &[
            ("csrf", "forged"),
            ("email", "admin@example.com"),
            ("api_key", api_key),
        ],
    )
    .await;
    assert_eq!(st, 403, "{page}");
    assert_eq!(service.requests().len(), 1);

    // Accepted: a new request is pending, marked as sent; the page offers the decrypt step.
    let (st, page) = send(api_key, "admin@example.com").await;
    assert_eq!(st, 303, "{page}");
    assert_eq!(service.requests().len(), 2);
    assert_eq!(service.requests()[1].email, "admin@example.com");
    let (_, req) = pending().await;
    assert_eq!(req["signing_service"], true);
    let csr_pem_2 = req["csr_pem"].as_str().unwrap().to_string();
    assert_ne!(csr_pem_2, csr_pem);
    let csr_der_2 = der_of(dir.path(), "req", &csr_pem_2, "pending-2");
    let (_, page) = get(&c, &s, "/portal/apns?done=sent").await;
    assert!(
        page.contains("Request sent to the signing service"),
        "{page}"
    );
    assert!(page.contains("(sent to the signing service)"), "{page}");
    assert!(
        page.contains("action=\"/portal/apns/request/decrypt\""),
        "{page}"
    );

    // Decrypting the emailed reply: a file that is not a reply, or a forged form, is
    // refused; the reply gives the request file for the pending CSR.
    let decrypt = |csrf: String, reply: Vec<u8>| {
        let c = c.clone();
        let s = &s;
        async move {
            post_multipart(
                &c,
                s,
                "/portal/apns/request/decrypt",
                &[
                    Part::field("csrf", &csrf),
                    Part::file("reply", "mdm_signed_request.plist.b64.p7", &reply),
                ],
            )
            .await
        }
    };
    let r = decrypt(csrf.clone(), b"this is not a reply".to_vec()).await;
    assert_eq!(r.status(), 422);
    let reply_2 = service.replies().last().unwrap().clone().into_bytes();
    let r = decrypt("forged".into(), reply_2.clone()).await;
    assert_eq!(r.status(), 403);
    check_download(
        decrypt(csrf.clone(), reply_2.clone()).await,
        dir.path(),
        "portal-service",
        &csr_der_2,
    )
    .await;

    // The same through the API; an older reply was encrypted for another request.
    let (st, body) = api_post(
        "/signing-service",
        json!({"email": "admin@example.com", "api_key": "not-the-key"}),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    assert_eq!(pending().await.1["csr_pem"], csr_pem_2.as_str());
    let (st, body) = api_post(
        "/signing-service",
        json!({"email": "ops@example.com", "api_key": api_key}),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["signing_service"], true);
    let csr_der_3 = der_of(
        dir.path(),
        "req",
        body["csr_pem"].as_str().unwrap(),
        "pending-3",
    );
    let reply_3 = service.replies().last().unwrap().clone();
    let (st, body) = api_post("/decrypt", json!({"reply": reply_3})).await;
    assert_eq!(st, 200, "{body}");
    check_request_file(
        body["upload_file"].as_str().unwrap().as_bytes(),
        dir.path(),
        "api-service",
        &csr_der_3,
    );
    let (st, body) = api_post(
        "/decrypt",
        json!({"reply": String::from_utf8(reply_2).unwrap()}),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("made for another request"),
        "{body}"
    );

    // Apple's certificate for the pending CSR completes the request; nothing is left to
    // decrypt or sign.
    let (_, req) = pending().await;
    let topic = lanyard_testkit::fake_apns::fake_mdm_topic();
    let issued = fake_apple_push_certificate(
        req["csr_pem"].as_str().unwrap().as_bytes(),
        &topic,
        FakeApnsMarker::Production,
    )
    .unwrap();
    let r = api
        .put(format!("{}/api/v1/push-certificate", s.url))
        .bearer_auth(&token)
        .json(&json!({ "cert_pem": issued }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(pending().await.0, 404);
    let (st, _) = api_post("/decrypt", json!({"reply": reply_3})).await;
    assert_eq!(st, 404);
    s.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_signing_steps(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    signing_steps(db).await;
}
