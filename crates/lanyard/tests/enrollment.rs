#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Account-driven User Enrollment end to end, on both databases: the real `lanyard serve` over
//! TLS, the simulated Mac from `lanyard-testkit` doing discovery, the web sign-in, the signed
//! profile, SCEP and signed check-ins, and the admin CLI and API reading the result. Then the
//! refusals (each leaves nothing behind), single-use access tokens, the identifier typed on the
//! Mac mapped to the managed Apple Account, single-use SCEP challenges, check-in identity, and
//! independent tools (OpenSSL, Python's plistlib) reading what the server produces. The
//! independent SCEP clients run in `scep_serve.rs`.

mod support;

use rstest::rstest;

use std::process::Command;

use lanyard_pki::{PKey, Private, X509};
use lanyard_testkit::profile::{parse_enrollment_profile, EnrollmentProfile};
use lanyard_testkit::scep_client::{self, ScepError};
use lanyard_testkit::sim::{CHECKIN_CONTENT_TYPE, COMMAND_CONTENT_TYPE, MACHINE_INFO_CONTENT_TYPE};
use lanyard_testkit::{device, webauth, Ownership, SimError, SimMac, SimOptions, Step};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{json, Value};
use support::{Db, Server};
use url::Url;

const ANN: &str = "ann@example.com";
const PASSWORD: &str = "a long enough password";

// ---------------------------------------------------------------------------------------
// set-up and helpers

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

/// A server with a push certificate, Ann, the managed domain example.com and two custom
/// attributes (a required choice and an optional number).
async fn start(db: Db, env: &[(&str, &str)]) -> Option<Server> {
    let s = Server::start_with(db, env).await?;
    s.upload_push_certificate();
    add_user(&s, ANN);
    cli_ok(&s, &["settings", "set", "managed-domains", "example.com"]);
    cli_ok(
        &s,
        &[
            "attribute",
            "add",
            "department",
            "--type",
            "choice",
            "--required",
            "--choice",
            "Sales",
            "--choice",
            "R&D",
        ],
    );
    cli_ok(&s, &["attribute", "add", "cost-center", "--type", "number"]);
    Some(s)
}

/// `lanyard device list --json` with extra arguments.
fn devices(s: &Server, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["device", "list", "--json"];
    args.extend_from_slice(extra);
    let out = cli_ok(s, &args);
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("device list --json is not JSON ({e}): {out}"))
        .as_array()
        .expect("device list --json is an array")
        .clone()
}

/// A simulated Mac trusting the server's CA and insisting on its push certificate's topic,
/// answering department=Sales; `tweak` adjusts it.
fn mac_for(s: &Server, email: &str, tweak: impl FnOnce(&mut SimOptions)) -> SimMac {
    let mut o = SimOptions::new(&s.url, email, PASSWORD);
    o.ca_cert_pem = Some(s.ca_pem());
    o.push_topic = s.push_topic();
    o.attrs.insert("department".into(), "Sales".into());
    tweak(&mut o);
    SimMac::new(o).unwrap()
}

fn assert_refused(e: &SimError, step: Step, status: u16, needle: &str) {
    assert_eq!(e.step(), step, "{e}");
    assert_eq!(e.status(), Some(status), "{e}");
    assert!(
        e.message().contains(needle),
        "expected {needle:?} in the message: {e}"
    );
}

/// Discovery, the first `POST /enroll` (expecting the `apple-as-web` challenge) and the web
/// sign-in, as the Mac does them. Returns the BaseURL, the signed MachineInfo and the token.
async fn sign_in(c: &reqwest::Client, mac: &mut SimMac) -> (Url, Vec<u8>, String) {
    let base = mac.discover().await.unwrap();
    let machine_info = mac.signed_machine_info().unwrap();
    let r = post_enroll(c, &base, &machine_info, None).await;
    assert_eq!(r.status(), 401);
    let url = sign_in_url(&base, &r);
    let token = mac.sign_in(&base, url).await.unwrap();
    (base, machine_info, token)
}

async fn post_enroll(
    c: &reqwest::Client,
    base: &Url,
    machine_info: &[u8],
    token: Option<&str>,
) -> reqwest::Response {
    let mut rb = c
        .post(base.clone())
        .header(CONTENT_TYPE, MACHINE_INFO_CONTENT_TYPE)
        .body(machine_info.to_vec());
    if let Some(t) = token {
        rb = rb.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    rb.send().await.unwrap()
}

/// The sign-in URL of a `401` answer's `WWW-Authenticate: Bearer method="apple-as-web"`.
fn sign_in_url(base: &Url, r: &reqwest::Response) -> Url {
    let header = r
        .headers()
        .get(WWW_AUTHENTICATE)
        .expect("401 without WWW-Authenticate")
        .to_str()
        .unwrap();
    let ch = webauth::parse_www_authenticate(header).expect("unparsable WWW-Authenticate");
    assert_eq!(ch.scheme, "Bearer", "{header}");
    assert_eq!(ch.params["method"], "apple-as-web", "{header}");
    base.join(&ch.params["url"]).unwrap()
}

/// The profile a freshly signed-in Mac of `email` gets: the DER as served and its content.
async fn fresh_profile(
    s: &Server,
    c: &reqwest::Client,
    email: &str,
) -> (Vec<u8>, EnrollmentProfile) {
    let mut mac = mac_for(s, email, |_| {});
    let (base, mi, token) = sign_in(c, &mut mac).await;
    let r = post_enroll(c, &base, &mi, Some(&token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[CONTENT_TYPE].to_str().unwrap(),
        "application/x-apple-aspen-config"
    );
    let der = r.bytes().await.unwrap().to_vec();
    let ca = X509::from_pem(&s.ca_pem()).unwrap();
    let (content, _) = lanyard_pki::verify_cms_attached(&der, &[ca]).unwrap();
    (der, parse_enrollment_profile(&content).unwrap())
}

/// `Mdm-Signature` header value: base64 of a detached CMS signature over `body`.
fn mdm_signature(cert: &X509, key: &PKey<Private>, body: &[u8]) -> String {
    let sig = lanyard_pki::sign_detached(cert, key, body).unwrap();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(&sig)
}

/// `PUT` a device request; returns the status and the body text.
/// Apple's ErrorUnrecognizedDevice: 403 with a JSON body whose `code` makes a Mac unenroll.
fn assert_unrecognized(status: u16, body: &str) {
    assert_eq!(status, 403, "{body}");
    let v: Value = serde_json::from_str(body).expect("a JSON error body");
    assert_eq!(v["code"], "com.apple.unrecognized.device", "{body}");
}

async fn put_device(
    c: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: &[u8],
    signature: Option<String>,
) -> (u16, String) {
    let mut rb = c
        .put(url)
        .header(CONTENT_TYPE, content_type)
        .body(body.to_vec());
    if let Some(sig) = signature {
        rb = rb.header("Mdm-Signature", sig);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

// ---------------------------------------------------------------------------------------
// 1. the happy path

#[rstest]
#[tokio::test]
async fn happy_path(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = start(db, &[]).await else {
        return;
    };
    let mut mac = mac_for(&s, ANN, |_| {});
    let report = mac
        .enroll()
        .await
        .unwrap_or_else(|e| panic!("enrollment failed: {e}\n{}", mac.steps().join("\n")));
    assert_eq!(report.managed_apple_id, ANN);
    assert_eq!(report.enrollment_id, mac.enrollment_id());
    assert!(!report.topic.is_empty());
    assert!(
        report
            .identity_certificate
            .subject
            .contains("Lanyard Identity"),
        "{:?}",
        report.identity_certificate
    );
    // The command channel answers (no command queued yet).
    assert!(mac.idle().await.unwrap().is_none());

    let list = devices(&s, &[]);
    assert_eq!(list.len(), 1, "{list:#?}");
    let d = &list[0];
    assert_eq!(d["enrollment_mode"], "User Enrollment");
    assert_eq!(d["ownership"], "Employee");
    assert_eq!(d["status"], "enrolled");
    assert_eq!(d["managed_apple_id"], ANN);
    assert_eq!(d["attributes"], json!({"department": "Sales"}));
    assert_eq!(d["os_version"], "15.2");
    assert_eq!(d["enrollment_id"], mac.enrollment_id());
    assert_eq!(d["enrollment_user_id"], mac.enrollment_user_id());
    assert_eq!(d["push_topic"], report.topic.as_str());
    assert_eq!(d["reachable"], true);
    assert_eq!(
        d["identity_certificate_sha256"],
        report.identity_certificate.sha256.as_str()
    );
    assert_eq!(
        d["identity_certificate_serial"],
        report.identity_certificate.serial_hex.as_str()
    );
    assert!(d["enrolled_at"].is_string() && d["checked_out_at"].is_null());
    let text = serde_json::to_string(d).unwrap();
    for secret in [&report.push_magic, &report.push_token_hex] {
        assert!(
            !text.contains(secret.as_str()),
            "device list shows a secret"
        );
    }

    // The admin API shows the same.
    let c = s.client();
    let token = s.admin_session(&c).await;
    let api: Value = c
        .get(format!("{}/api/v1/devices", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api, Value::Array(list.clone()));
    let one: Value = c
        .get(format!(
            "{}/api/v1/devices/{}",
            s.url,
            d["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(&one, d);

    // The table.
    let table = cli_ok(&s, &["device", "list"]);
    for needle in [
        "User Enrollment",
        ANN,
        "Employee",
        "enrolled",
        "department=Sales",
    ] {
        assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }

    drop((c, mac));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. refusals leave nothing behind

async fn refusals(db: Db) {
    let Some(s) = start(db, &[]).await else {
        return;
    };
    let c = s.client();

    let enroll_err = |mut mac: SimMac| async move {
        let e = mac
            .enroll()
            .await
            .expect_err("the enrollment should be refused");
        assert!(!mac.is_enrolled());
        e
    };

    // Ownership other than Employee ends the flow.
    let e = enroll_err(mac_for(&s, ANN, |o| o.ownership = Ownership::Corporate)).await;
    assert_refused(&e, Step::SignIn, 403, "Corporate");
    let e = enroll_err(mac_for(&s, ANN, |o| o.ownership = Ownership::Shared)).await;
    assert_refused(&e, Step::SignIn, 403, "Shared");

    // Too old a macOS: refused at the enrollment request, naming the minimum.
    let e = enroll_err(mac_for(&s, ANN, |o| o.os_version = "15.1".into())).await;
    assert_refused(&e, Step::Enrollment, 403, "15.2");
    assert!(e.message().contains("15.1"), "{e}");

    // Wrong password, unknown account.
    let e = enroll_err(mac_for(&s, ANN, |o| o.password = "not the password".into())).await;
    assert_refused(&e, Step::SignIn, 401, "wrong email or password");
    let e = enroll_err(mac_for(&s, "zed@example.com", |_| {})).await;
    assert_refused(&e, Step::SignIn, 401, "wrong email or password");

    // A disabled account.
    add_user(&s, "carl@example.com");
    cli_ok(&s, &["user", "disable", "carl@example.com"]);
    let e = enroll_err(mac_for(&s, "carl@example.com", |_| {})).await;
    assert_refused(&e, Step::SignIn, 403, "disabled");

    // An account outside the managed domains: discovery does not know it, and the sign-in
    // page refuses it when reached directly.
    add_user(&s, "bob@other.org");
    let mut bob = mac_for(&s, "bob@other.org", |_| {});
    let e = bob.discover().await.unwrap_err();
    assert_eq!(e.step(), Step::Discovery, "{e}");
    assert_eq!(e.status(), Some(403), "{e}");
    let base = Url::parse(&format!("{}/enroll", s.url)).unwrap();
    let r = post_enroll(&c, &base, &bob.signed_machine_info().unwrap(), None).await;
    assert_eq!(r.status(), 401);
    let url = sign_in_url(&base, &r);
    let e = bob.sign_in(&base, url).await.unwrap_err();
    assert_refused(&e, Step::SignIn, 403, "does not belong");

    // A required attribute left empty, and a choice that is not offered.
    let e = enroll_err(mac_for(&s, ANN, |o| o.attrs.clear())).await;
    assert_refused(&e, Step::SignIn, 422, "department");
    let e = enroll_err(mac_for(&s, ANN, |o| {
        o.attrs.insert("department".into(), "Marketing".into());
    }))
    .await;
    assert_eq!(e.status(), Some(422), "{e}");
    let e = enroll_err(mac_for(&s, ANN, |o| {
        o.attrs.insert("cost-center".into(), "twelve".into());
    }))
    .await;
    assert_eq!(e.status(), Some(422), "{e}");

    // Nothing was left behind.
    assert_eq!(devices(&s, &["--all"]), Vec::<Value>::new());

    drop(c);
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn refusals_leave_nothing_behind(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    refusals(db).await;
}

// ---------------------------------------------------------------------------------------
// 2b. discovery and the enrollment URL refuse the way Apple documents

/// `GET` service discovery with this raw query string.
async fn discover_raw(c: &reqwest::Client, s: &Server, query: &str) -> reqwest::Response {
    c.get(format!(
        "{}/.well-known/com.apple.remotemanagement?{query}",
        s.url
    ))
    .send()
    .await
    .unwrap()
}

/// Asserts Apple's error document in a `403`: JSON with `code` (schema `mdm/errors`), and a
/// description naming `needle`.
async fn assert_apple_refusal(r: reqwest::Response, code: &str, needle: &str) {
    assert_eq!(r.status(), 403, "{:?}", r.url().to_string());
    let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    let text = body["description"].as_str().unwrap_or_default();
    assert!(
        text.to_lowercase().contains(&needle.to_lowercase()),
        "expected {needle:?} in {body}"
    );
    assert_eq!(body["message"], body["description"], "{body}");
}

/// A MachineInfo plist as a Mac writes it; `os_version` `None` leaves `OS_VERSION` out, as the
/// body in Apple's account-driven enrollment article does.
fn machine_info_xml(product: &str, build: &str, os_version: Option<&str>) -> Vec<u8> {
    let os = os_version
        .map(|v| format!("<key>OS_VERSION</key><string>{v}</string>"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>\
         <key>LANGUAGE</key><string>en-US</string>{os}\
         <key>PRODUCT</key><string>{product}</string>\
         <key>VERSION</key><string>{build}</string></dict></plist>"
    )
    .into_bytes()
}

/// Signs a MachineInfo as a device would (CMS, content attached) with a throw-away identity.
fn signed(plist: &[u8]) -> Vec<u8> {
    let key = device::rsa_key(2048).unwrap();
    let cert = device::self_signed(&key, "Device Identity", 30).unwrap();
    lanyard_pki::sign_cms(&cert, &key, &[], plist).unwrap()
}

#[rstest]
#[tokio::test]
async fn refusals_as_apple_documents(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    const WELL_KNOWN: &str = "com.apple.well-known.failed";
    const REFUSED: &str = "org.lanyard.enrollment.refused";
    // Ann and her domain, but no push certificate yet.
    let Some(s) = Server::start_with(db, &[]).await else {
        return;
    };
    add_user(&s, ANN);
    cli_ok(&s, &["settings", "set", "managed-domains", "example.com"]);
    let c = s.client();
    let base = Url::parse(&format!("{}/enroll", s.url)).unwrap();
    let mac_query = "user-identifier=ann%40example.com&model-family=Mac";
    let mi = signed(&machine_info_xml("Mac15,3", "24C101", Some("15.2")));

    // No push certificate: serve said so at start-up…
    assert!(
        s.startup_log
            .iter()
            .any(|l| l.contains("WARN")
                && l.contains("no APNs push certificate: enrollment is closed")),
        "{:#?}",
        s.startup_log
    );
    // …and discovery and the enrollment URL refuse; nothing is stored.
    let r = discover_raw(&c, &s, mac_query).await;
    assert_apple_refusal(r, WELL_KNOWN, "push certificate").await;
    let r = post_enroll(&c, &base, &mi, None).await;
    assert_apple_refusal(r, REFUSED, "push certificate").await;
    let r = post_enroll(&c, &base, &mi, Some("lya_0123456789abcdef")).await;
    assert_apple_refusal(r, REFUSED, "push certificate").await;
    let mut mac = mac_for(&s, ANN, |_| {});
    let e = mac.enroll().await.unwrap_err();
    assert_refused(&e, Step::Discovery, 403, "push certificate");
    assert_eq!(devices(&s, &["--all"]), Vec::<Value>::new());

    // With one, the same requests go through.
    let topic = s.upload_push_certificate();
    let r = discover_raw(&c, &s, mac_query).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["Servers"][0]["Version"], "mdm-byod");
    assert_eq!(post_enroll(&c, &base, &mi, None).await.status(), 401);

    // Every refusal at discovery is Apple's well-known refusal.
    add_user(&s, "bob@other.org");
    for (query, needle) in [
        (
            "user-identifier=bob%40other.org&model-family=Mac",
            "other.org",
        ),
        ("user-identifier=ann&model-family=Mac", "user-identifier"),
        (
            "user-identifier=%40example.com&model-family=Mac",
            "user-identifier",
        ),
        (
            "user-identifier=ann%40localhost&model-family=Mac",
            "user-identifier",
        ),
        ("model-family=Mac", "user-identifier"),
        ("user-identifier=&model-family=Mac", "user-identifier"),
        (
            "user-identifier=ann%40example.com&model-family=iPhone",
            "iPhone",
        ),
        (
            "user-identifier=ann%40example.com&model-family=iPad",
            "iPad",
        ),
        (
            "user-identifier=ann%40example.com&model-family=Watch",
            "Watch",
        ),
        (
            "user-identifier=ann%40example.com&model-family=mac",
            "model-family",
        ),
        (
            "user-identifier=ann%40example.com&model-family=Toaster",
            "model-family",
        ),
        ("user-identifier=ann%40example.com", "model-family"),
        (
            "user-identifier=ann%40example.com&user-identifier=x",
            "query",
        ),
    ] {
        let r = discover_raw(&c, &s, query).await;
        assert_apple_refusal(r, WELL_KNOWN, needle).await;
    }

    // The enrollment URL: a device of another family, and a macOS below the minimum judged
    // from the build alone (no OS_VERSION), are refused with the error document.
    for (body, needle) in [
        (
            machine_info_xml("iPhone17,2", "22C161", Some("18.2")),
            "iPhone",
        ),
        (machine_info_xml("iPad13,4", "22C161", None), "iPad"),
        (machine_info_xml("Mac15,3", "24B83", None), "15.1"),
        (machine_info_xml("Mac15,3", "23H124", None), "14.7"),
    ] {
        let r = post_enroll(&c, &base, &signed(&body), None).await;
        assert_apple_refusal(r, REFUSED, needle).await;
    }
    // The build of 15.2 without OS_VERSION passes the gate: the Mac is challenged to sign in.
    let build_only = signed(&machine_info_xml("Mac15,3", "24C101", None));
    let r = post_enroll(&c, &base, &build_only, None).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key(WWW_AUTHENTICATE));
    // No OS_VERSION and a build that is no macOS build: malformed, 400.
    let r = post_enroll(
        &c,
        &base,
        &signed(&machine_info_xml("Mac15,3", "next", None)),
        None,
    )
    .await;
    assert_eq!(r.status(), 400);

    // A MachineInfo whose signature cannot be verified (here: no signer certificate in the
    // message, as with a chain Lanyard cannot hold) is read all the same…
    let plist = machine_info_xml("Mac15,3", "24C101", None);
    let key = device::rsa_key(2048).unwrap();
    let cert = device::self_signed(&key, "Device Identity", 30).unwrap();
    let unverifiable = device::sign_attached_without_certificates(&cert, &key, &plist).unwrap();
    assert!(lanyard_pki::verify_cms_attached_untrusted(&unverifiable).is_err());
    let r = post_enroll(&c, &base, &unverifiable, None).await;
    assert_eq!(
        r.status(),
        401,
        "an unverifiable signature is read, not refused"
    );
    // …and still gated: an unverifiable 15.1 is refused for its version.
    let old = device::sign_attached_without_certificates(
        &cert,
        &key,
        &machine_info_xml("Mac15,3", "24B83", None),
    )
    .unwrap();
    assert_apple_refusal(post_enroll(&c, &base, &old, None).await, REFUSED, "15.1").await;
    // A malformed CMS message is 400.
    let mut truncated = build_only.clone();
    truncated.truncate(build_only.len() / 2);
    assert_eq!(post_enroll(&c, &base, &truncated, None).await.status(), 400);

    // A signed-in Mac that sends no MachineInfo with its token gets no profile (nothing was
    // gated), and its token stays good for the real request.
    let mut mac = mac_for(&s, ANN, |_| {});
    let (base, mi, token) = sign_in(&c, &mut mac).await;
    let r = post_enroll(&c, &base, b"", Some(&token)).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("MachineInfo"));
    assert_eq!(devices(&s, &["--all"]), Vec::<Value>::new());
    assert_eq!(
        post_enroll(&c, &base, &mi, Some(&token)).await.status(),
        200
    );

    // A whole enrollment now: under the uploaded topic.
    let mut mac = mac_for(&s, ANN, |_| {});
    let report = mac.enroll().await.unwrap();
    assert_eq!(report.topic, topic);

    // None of the refusals left anything behind: Ann's two enrollments (the profile fetched
    // by hand, pending, and the simulated Mac's), both under the uploaded topic.
    let all = devices(&s, &["--all"]);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all.iter().all(|d| d["push_topic"] == topic.as_str()),
        "{all:#?}"
    );

    drop(c);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2c. the trust payload only for a private TLS chain

#[rstest]
#[tokio::test]
async fn trust_payload_only_for_a_private_chain(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    // Lanyard's self-issued TLS certificate: no device trusts it, so `auto` installs the root.
    let Some(s) = start(db, &[]).await else {
        return;
    };
    let c = s.client();
    let ca_der = X509::from_pem(&s.ca_pem()).unwrap().to_der().unwrap();
    let (_, p) = fresh_profile(&s, &c, ANN).await;
    assert_eq!(p.root_certificates, vec![ca_der.clone()]);
    assert!(p
        .payload_types
        .iter()
        .any(|t| t == "com.apple.security.root"));
    // `never` leaves it out; a value that is not a mode changes nothing.
    cli_ok(&s, &["settings", "set", "install-trust-profile", "never"]);
    let (ok, _, err) = s.cli(&["settings", "set", "install-trust-profile", "sometimes"]);
    assert!(!ok && err.contains("auto, always or never"), "{err}");
    let shown: Value = serde_json::from_str(&cli_ok(&s, &["settings", "show", "--json"])).unwrap();
    assert_eq!(shown["install_trust_profile"], "never", "{shown}");
    let (_, p) = fresh_profile(&s, &c, ANN).await;
    assert!(p.root_certificates.is_empty(), "{:?}", p.payload_types);
    assert!(!p
        .payload_types
        .iter()
        .any(|t| t == "com.apple.security.root"));
    drop(c);
    s.stop().await;

    // The operator's own certificate (--tls-cert): taken as publicly trusted, no root.
    let operator = lanyard_pki::Ca::generate("Operator Root", "Example").unwrap();
    let tls = operator
        .issue_tls_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
    std::fs::write(&cert, &tls.cert_pem).unwrap();
    std::fs::write(&key, &tls.key_pem).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let Some(s) = start(
        db,
        &[
            ("LANYARD_TLS_CERT", cert.as_str()),
            ("LANYARD_TLS_KEY", key.as_str()),
        ],
    )
    .await
    else {
        return;
    };
    // The simulated Mac trusts the operator's root (TLS) and Lanyard's (the profile signature).
    let mut trust = operator.cert_pem().unwrap().into_bytes();
    trust.extend(s.ca_pem());
    let mut mac = mac_for(&s, ANN, |o| o.ca_cert_pem = Some(trust.clone()));
    mac.enroll().await.unwrap();
    let p = mac.profile().unwrap();
    assert!(p.root_certificates.is_empty(), "{:?}", p.payload_types);
    // `always` installs Lanyard's root even so.
    cli_ok(&s, &["settings", "set", "install-trust-profile", "always"]);
    let mut mac = mac_for(&s, ANN, |o| o.ca_cert_pem = Some(trust.clone()));
    mac.enroll().await.unwrap();
    let lanyard_ca = X509::from_pem(&s.ca_pem()).unwrap().to_der().unwrap();
    assert_eq!(mac.profile().unwrap().root_certificates, vec![lanyard_ca]);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2d. enrollments that never check out are aged out

/// Moves every enrollment's last request (and creation) `days` into the past, in the
/// database itself: the silence the aging looks for.
async fn silence_for(s: &Server, db: Db, days: i64) {
    use sqlx::Connection;
    let then = chrono::Utc::now() - chrono::Duration::days(days);
    let sql = "UPDATE enrollments SET last_seen_at = $1, created_at = $1";
    match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&s.database_url)
                .await
                .unwrap();
            sqlx::query(sql).bind(then).execute(&mut c).await.unwrap();
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(&s.database_url).await.unwrap();
            sqlx::query(sql).bind(then).execute(&mut c).await.unwrap();
        }
    }
}

#[rstest]
#[tokio::test]
async fn silent_enrollments_age_out(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = start(db, &[]).await else {
        return;
    };
    let mut mac = mac_for(&s, ANN, |_| {});
    mac.enroll().await.unwrap();
    let id = devices(&s, &[])[0]["id"].as_str().unwrap().to_string();

    // Recent: nothing to age out.
    assert!(cli_ok(&s, &["device", "age-out"]).contains("0 enrollment"));
    // Silent for 100 days (the default limit is 90): inactive, listed as such everywhere.
    silence_for(&s, db, 100).await;
    assert!(cli_ok(&s, &["device", "age-out"]).contains("1 enrollment"));
    assert_eq!(
        devices(&s, &[]),
        Vec::<Value>::new(),
        "no longer listed as enrolled"
    );
    let inactive = devices(&s, &["--status", "inactive"]);
    assert_eq!(inactive.len(), 1, "{inactive:#?}");
    assert_eq!(inactive[0]["status"], "inactive");
    assert!(cli_ok(&s, &["device", "list", "--all"]).contains("inactive"));
    let (ok, _, err) = s.cli(&["device", "list", "--status", "stale"]);
    assert!(!ok && err.contains("inactive"), "{err}");
    let c = s.client();
    let token = s.admin_session(&c).await;
    let api: Value = c
        .get(format!("{}/api/v1/devices?status=inactive", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api[0]["id"], id.as_str(), "{api}");
    assert_eq!(api[0]["status"], "inactive", "{api}");
    let b = support::portal::browser(&s);
    support::portal::sign_in(&b, &s, "admin", &s.admin_password).await;
    let (st, page) = support::portal::get(&b, &s, "/portal/devices?status=inactive").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("<td>Inactive</td>") && page.contains(ANN),
        "{page}"
    );
    let (_, page) = support::portal::get(&b, &s, "/portal/summary").await;
    assert!(page.contains("<span>Inactive</span>"), "{page}");

    // The Mac speaks again (a poll on the command channel): enrolled again.
    assert!(mac.idle().await.unwrap().is_none());
    let back = devices(&s, &[]);
    assert_eq!(back.len(), 1, "{back:#?}");
    assert_eq!(back[0]["id"], id.as_str());
    // Likewise through a check-in.
    silence_for(&s, db, 100).await;
    assert!(cli_ok(&s, &["device", "age-out"]).contains("1 enrollment"));
    mac.token_update(lanyard_testkit::Channel::User)
        .await
        .unwrap();
    assert_eq!(devices(&s, &[])[0]["status"], "enrolled");

    // A longer limit, and 0 (never), leave a silent enrollment alone.
    silence_for(&s, db, 100).await;
    cli_ok(&s, &["settings", "set", "inactive-after-days", "365"]);
    assert!(cli_ok(&s, &["device", "age-out"]).contains("0 enrollment"));
    cli_ok(&s, &["settings", "set", "inactive-after-days", "0"]);
    assert!(cli_ok(&s, &["device", "age-out"]).contains("0 enrollment"));
    let (ok, _, _) = s.cli(&["settings", "set", "inactive-after-days", "-5"]);
    assert!(!ok);
    assert_eq!(devices(&s, &[])[0]["status"], "enrolled");

    drop((c, b, mac));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. access tokens are single use

#[rstest]
#[tokio::test]
async fn access_token_single_use(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = start(db, &[]).await else {
        return;
    };
    let c = s.client();
    let mut mac = mac_for(&s, ANN, |_| {});
    let (base, mi, token) = sign_in(&c, &mut mac).await;

    let r = post_enroll(&c, &base, &mi, Some(&token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[CONTENT_TYPE].to_str().unwrap(),
        "application/x-apple-aspen-config"
    );
    let der = r.bytes().await.unwrap();
    let ca = X509::from_pem(&s.ca_pem()).unwrap();
    lanyard_pki::verify_cms_attached(&der, &[ca]).unwrap();

    // The same token again: the Mac is sent back to the sign-in.
    let r = post_enroll(&c, &base, &mi, Some(&token)).await;
    assert_eq!(r.status(), 401);
    let header = r.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_string();
    assert!(
        header.starts_with("Bearer method=\"apple-as-web\""),
        "{header}"
    );
    assert_eq!(sign_in_url(&base, &r).path(), "/enroll/sign-in", "{header}");

    // A made-up token, and one with the right prefix.
    for bogus in [
        format!("{:032x}", rand::random::<u128>()),
        format!("lya_{:032x}", rand::random::<u128>()),
    ] {
        let r = post_enroll(&c, &base, &mi, Some(&bogus)).await;
        assert_eq!(r.status(), 401);
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer method=\"apple-as-web\""));
    }

    // One profile, one (pending) enrollment.
    let all = devices(&s, &["--all"]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["status"], "pending");

    drop((c, mac));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3b. what was typed on the Mac may differ from the managed Apple Account

const DANA: &str = "dana@example.com";
const DANA_APPLE_ID: &str = "dana@appleid.example.com";

#[rstest]
#[tokio::test]
async fn typed_identifier_maps_to_the_managed_apple_account(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let Some(s) = start(db, &[]).await else {
        return;
    };
    cli_ok(
        &s,
        &[
            "settings",
            "set",
            "managed-domains",
            "example.com, appleid.example.com",
        ],
    );
    let (ok, _, err) = s.cli_stdin(
        &[
            "user",
            "add",
            DANA,
            "--managed-apple-id",
            DANA_APPLE_ID,
            "--password",
            "-",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");

    // The Mac is signed in with Dana's email: the profile assigns her managed Apple Account.
    let mut mac = mac_for(&s, DANA, |o| {
        o.managed_apple_id = Some(DANA_APPLE_ID.into())
    });
    let report = mac
        .enroll()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mac.steps().join("\n")));
    assert_eq!(report.managed_apple_id, DANA_APPLE_ID);

    // The Mac is signed in with her managed Apple Account; she signs in here with her email.
    let mut mac = mac_for(&s, DANA_APPLE_ID, |o| o.sign_in_as = Some(DANA.into()));
    let report = mac
        .enroll()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mac.steps().join("\n")));
    assert_eq!(report.managed_apple_id, DANA_APPLE_ID);

    // Anyone else's identifier is refused at the sign-in, and leaves nothing behind; so is
    // Dana's on a Mac where someone else signs in.
    let e = mac_for(&s, ANN, |o| o.sign_in_as = Some(DANA.into()))
        .enroll()
        .await
        .unwrap_err();
    assert_refused(
        &e,
        Step::SignIn,
        403,
        "This Mac is signed in with ann@example.com, but you signed in as dana@example.com \
         (managed Apple Account dana@appleid.example.com)",
    );
    let e = mac_for(&s, DANA_APPLE_ID, |o| o.sign_in_as = Some(ANN.into()))
        .enroll()
        .await
        .unwrap_err();
    assert_refused(
        &e,
        Step::SignIn,
        403,
        "This Mac is signed in with dana@appleid.example.com, but you signed in as \
         ann@example.com.",
    );

    let all = devices(&s, &["--all"]);
    assert_eq!(all.len(), 2, "{all:#?}");
    for d in &all {
        assert_eq!(d["status"], "enrolled", "{d}");
        assert_eq!(d["managed_apple_id"], DANA_APPLE_ID, "{d}");
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// 4. SCEP challenges are single use

#[rstest]
#[tokio::test]
async fn scep_challenge_single_use(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = start(db, &[]).await else {
        return;
    };
    let c = s.client();
    let (_, profile) = fresh_profile(&s, &c, ANN).await;
    let payload = profile.scep.clone();
    assert!(payload.challenge.is_some());
    let scep = format!("{}/scep", s.url);

    // Before the first use: a made-up challenge gets a FAILURE CertRep (signed by the RA, or
    // the strict simulated Mac would say so) and an undecodable message a 400; neither
    // changes anything, and the real challenge still works afterwards.
    let mut made_up = payload.clone();
    made_up.challenge = Some(format!("{:032x}", rand::random::<u128>()));
    let err = scep_client::enroll(&c, &made_up).await.err();
    assert_eq!(err, Some(ScepError::Failure("BadRequest (2)".into())));
    let r = c
        .post(format!("{scep}?operation=PKIOperation"))
        .header(CONTENT_TYPE, "application/x-pki-message")
        .body(b"this is not a SCEP message".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let untouched = devices(&s, &["--all"]);
    assert_eq!(untouched.len(), 1);
    assert_eq!(untouched[0]["status"], "pending");
    assert!(untouched[0]["identity_certificate_serial"].is_null());

    // First use: an identity certificate from our CA, named for the enrollment.
    let first = scep_client::enroll(&c, &payload).await.unwrap();
    let ca = X509::from_pem(&s.ca_pem()).unwrap();
    assert!(scep_client::chains_to(&first.certificate, &ca));
    let info = lanyard_pki::CertInfo::from_x509(&first.certificate).unwrap();
    assert!(info.subject.contains("CN=Lanyard Identity "), "{info:?}");
    let pending = devices(&s, &["--all"]);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["identity_certificate_serial"], info.serial_hex);

    // Second use of the same challenge, a made-up one and none at all: FAILURE badRequest.
    let again = scep_client::enroll(&c, &payload).await.err();
    assert_eq!(again, Some(ScepError::Failure("BadRequest (2)".into())));
    let err = scep_client::enroll(&c, &made_up).await.err();
    assert_eq!(err, Some(ScepError::Failure("BadRequest (2)".into())));
    let mut none = payload.clone();
    none.challenge = None;
    let err = scep_client::enroll(&c, &none).await.err();
    assert_eq!(err, Some(ScepError::Failure("BadRequest (2)".into())));

    // Malformed requests: 400.
    let r = c
        .post(format!("{scep}?operation=PKIOperation"))
        .header(CONTENT_TYPE, "application/x-pki-message")
        .body(b"this is not a SCEP message".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for url in [
        format!("{scep}?operation=GetCRL"),
        format!("{scep}?operation=PKIOperation&message=%%%"),
        format!("{scep}?operation=PKIOperation&message=bm90IFNDRVA="),
        scep.clone(),
    ] {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 400, "GET {url}");
    }
    let r = c
        .post(format!("{scep}?operation=GetCACert"))
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Still exactly one identity, on the one enrollment.
    let after = devices(&s, &["--all"]);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["identity_certificate_serial"], info.serial_hex);

    drop(c);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// 5. check-in identity

#[rstest]
#[tokio::test]
async fn checkin_identity(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let Some(s) = start(db, &[]).await else {
        return;
    };
    let c = s.client();
    add_user(&s, "dan@example.com");
    let mut ann = mac_for(&s, ANN, |_| {});
    ann.enroll().await.unwrap();
    let mut dan = mac_for(&s, "dan@example.com", |_| {});
    dan.enroll().await.unwrap();

    let profile = ann.profile().unwrap().clone();
    let checkin = profile.mdm.checkin_url.clone();
    let command = profile.mdm.server_url.clone();
    let topic = profile.mdm.topic.clone();
    let ann_cert = ann.identity_certificate().unwrap().clone();
    let ann_key = ann.identity_key().unwrap().clone();
    let dan_cert = dan.identity_certificate().unwrap().clone();
    let dan_key = dan.identity_key().unwrap().clone();

    let authenticate = device::to_xml(device::authenticate(
        ann.facts(),
        &topic,
        ann.enrollment_id(),
    ))
    .unwrap();
    let token_update = device::to_xml(device::token_update(
        &topic,
        ann.enrollment_id(),
        None,
        &[7u8; 32],
        "SOME-PUSH-MAGIC",
    ))
    .unwrap();
    let idle = device::to_xml(device::command_report(
        ann.enrollment_id(),
        None,
        "Idle",
        None,
        &Default::default(),
    ))
    .unwrap();

    // The real identity is accepted (so the refusals below are about the identity alone).
    let (st, body) = put_device(
        &c,
        &checkin,
        CHECKIN_CONTENT_TYPE,
        &authenticate,
        Some(mdm_signature(&ann_cert, &ann_key, &authenticate)),
    )
    .await;
    assert_eq!(st, 200, "{body}");

    // No signature: malformed, 400 (never 401, which makes a Mac unenroll).
    let (st, body) = put_device(&c, &checkin, CHECKIN_CONTENT_TYPE, &authenticate, None).await;
    assert_eq!(st, 400, "{body}");
    let (st, _) = put_device(&c, &command, COMMAND_CONTENT_TYPE, &idle, None).await;
    assert_eq!(st, 400);

    // A self-signed identity with the same subject, not from our CA.
    let key = device::rsa_key(2048).unwrap();
    let forged = device::self_signed_with_name(&key, ann_cert.subject_name(), 30).unwrap();
    let (st, body) = put_device(
        &c,
        &checkin,
        CHECKIN_CONTENT_TYPE,
        &authenticate,
        Some(mdm_signature(&forged, &key, &authenticate)),
    )
    .await;
    assert_eq!(st, 400, "unverifiable: {body}");

    // A signature that does not cover the body sent.
    let (st, body) = put_device(
        &c,
        &checkin,
        CHECKIN_CONTENT_TYPE,
        &token_update,
        Some(mdm_signature(&ann_cert, &ann_key, &authenticate)),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    let (st, _) = put_device(
        &c,
        &checkin,
        CHECKIN_CONTENT_TYPE,
        &authenticate,
        Some("bm90IGEgc2lnbmF0dXJl".into()),
    )
    .await;
    assert_eq!(st, 400);

    // Another enrolled Mac's identity carrying Ann's EnrollmentID, on every endpoint.
    for (url, ct, body) in [
        (&checkin, CHECKIN_CONTENT_TYPE, &authenticate),
        (&checkin, CHECKIN_CONTENT_TYPE, &token_update),
        (&command, COMMAND_CONTENT_TYPE, &idle),
    ] {
        let (st, text) = put_device(
            &c,
            url,
            ct,
            body,
            Some(mdm_signature(&dan_cert, &dan_key, body)),
        )
        .await;
        assert_unrecognized(st, &text);
    }

    // A fresh identity of a pending enrollment (profile and SCEP done, no Authenticate yet)
    // claiming Ann's live EnrollmentID: refused, in words of its own (not the database's).
    let (_, pending) = fresh_profile(&s, &c, "dan@example.com").await;
    let fresh = scep_client::enroll(&c, &pending.scep).await.unwrap();
    let (st, text) = put_device(
        &c,
        &checkin,
        CHECKIN_CONTENT_TYPE,
        &authenticate,
        Some(mdm_signature(&fresh.certificate, &fresh.key, &authenticate)),
    )
    .await;
    assert_unrecognized(st, &text);
    let lower = text.to_lowercase();
    for leak in ["constraint", "unique", "duplicate key", "device_channel_id"] {
        assert!(
            !lower.contains(leak),
            "the refusal leaks database text: {text}"
        );
    }

    // A malformed body, validly signed.
    let junk = b"<?xml version=\"1.0\"?><plist><dict><key>MessageType".to_vec();
    let (st, body) = put_device(
        &c,
        &checkin,
        CHECKIN_CONTENT_TYPE,
        &junk,
        Some(mdm_signature(&ann_cert, &ann_key, &junk)),
    )
    .await;
    assert_eq!(st, 400, "{body}");

    // Neither Mac's record was touched by the other's attempts.
    let list = devices(&s, &[]);
    assert_eq!(list.len(), 2, "{list:#?}");
    for (mac, who) in [(&ann, ANN), (&dan, "dan@example.com")] {
        let row = list.iter().find(|d| d["managed_apple_id"] == who).unwrap();
        assert_eq!(row["enrollment_id"], mac.enrollment_id());
        assert_eq!(row["status"], "enrolled");
    }

    // CheckOut: the identity is dead afterwards.
    let old_id = ann.enrollment_id().to_string();
    ann.check_out().await.unwrap();
    let (st, body) = put_device(
        &c,
        &checkin,
        CHECKIN_CONTENT_TYPE,
        &authenticate,
        Some(mdm_signature(&ann_cert, &ann_key, &authenticate)),
    )
    .await;
    assert_unrecognized(st, &body);
    let (st, body) = put_device(
        &c,
        &command,
        COMMAND_CONTENT_TYPE,
        &idle,
        Some(mdm_signature(&ann_cert, &ann_key, &idle)),
    )
    .await;
    assert_unrecognized(st, &body);
    let out = devices(&s, &["--status", "checked_out"]);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0]["enrollment_id"], old_id.as_str());
    assert_eq!(out[0]["reachable"], false);
    assert!(out[0]["checked_out_at"].is_string());
    // Dan is unaffected.
    assert!(dan.idle().await.unwrap().is_none());

    // The same Mac enrolls again, with the same EnrollmentID: a new, clean enrollment next
    // to the checked-out one.
    ann.enroll().await.unwrap();
    let ann_rows = devices(&s, &["--all", "--search", ANN]);
    assert_eq!(ann_rows.len(), 2, "{ann_rows:#?}");
    let enrolled: Vec<&Value> = ann_rows
        .iter()
        .filter(|d| d["status"] == "enrolled")
        .collect();
    assert_eq!(enrolled.len(), 1, "{ann_rows:#?}");
    let new = enrolled[0];
    assert_eq!(new["enrollment_id"], old_id.as_str());
    assert_eq!(new["attributes"], json!({"department": "Sales"}));
    assert_eq!(new["reachable"], true);
    assert!(new["checked_out_at"].is_null());
    let new_identity = ann.identity_certificate().unwrap().to_der().unwrap();
    assert_eq!(
        new["identity_certificate_sha256"].as_str(),
        Some(lanyard_pki::sha256_fingerprint(&new_identity).as_str())
    );
    assert_ne!(
        new["identity_certificate_sha256"].as_str(),
        Some(lanyard_pki::sha256_fingerprint(&ann_cert.to_der().unwrap()).as_str())
    );
    assert!(ann_rows
        .iter()
        .any(|d| d["status"] == "checked_out" && d["id"] != new["id"]));
    assert!(ann.idle().await.unwrap().is_none());
    // The old identity stays dead.
    let (st, body) = put_device(
        &c,
        &checkin,
        CHECKIN_CONTENT_TYPE,
        &authenticate,
        Some(mdm_signature(&ann_cert, &ann_key, &authenticate)),
    )
    .await;
    assert_unrecognized(st, &body);

    drop((c, ann, dan));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// 6. independent tools (SQLite only: they check formats, not storage)

/// Is `bin` runnable? When not, a loud SKIPPED line, and a failure under `CI=true`.
fn require_tool(bin: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!(
            "\n!!!!! SKIPPED: {bin} not installed; the {test} end-to-end test did NOT run !!!!!\n"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: `{bin}` is required under CI=true but not installed");
        }
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An `Mdm-Signature` made by an independent signer, `openssl smime -sign` (detached PKCS #7
/// with signed attributes, what a Mac sends), by the Mac's identity, sent to the running
/// server: its check (the signer cache, first contact and then cached) accepts it on both
/// requests and refuses it over another body.
#[tokio::test]
async fn an_mdm_signature_made_by_openssl_is_checked_by_the_server_sqlite() {
    let test = "an_mdm_signature_made_by_openssl_is_checked_by_the_server";
    if !require_tool("openssl", test) {
        return;
    }
    let Some(s) = start(Db::Sqlite, &[]).await else {
        return;
    };
    let c = s.client();
    let mut mac = mac_for(&s, ANN, |_| {});
    mac.enroll().await.unwrap();
    let command = mac.profile().unwrap().mdm.server_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("identity.pem");
    let key = dir.path().join("identity.key");
    std::fs::write(&cert, mac.identity_certificate().unwrap().to_pem().unwrap()).unwrap();
    std::fs::write(
        &key,
        mac.identity_key()
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap(),
    )
    .unwrap();
    let idle = device::to_xml(device::command_report(
        mac.enrollment_id(),
        None,
        "Idle",
        None,
        &Default::default(),
    ))
    .unwrap();
    let body = dir.path().join("idle.plist");
    std::fs::write(&body, &idle).unwrap();
    let signed_by_openssl = || {
        let out = dir.path().join("sig.der");
        let (ok, _, err) = run(Command::new("openssl")
            .args(["smime", "-sign", "-binary", "-outform", "DER", "-signer"])
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .arg("-in")
            .arg(&body)
            .arg("-out")
            .arg(&out));
        assert!(ok, "openssl smime -sign: {err}");
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&out).unwrap())
    };
    for request in ["first contact", "cached"] {
        let (st, text) = put_device(
            &c,
            &command,
            COMMAND_CONTENT_TYPE,
            &idle,
            Some(signed_by_openssl()),
        )
        .await;
        assert_eq!(st, 200, "{request}: {text}");
    }
    let mut other = idle.clone();
    other.extend_from_slice(b"\n");
    let (st, text) = put_device(
        &c,
        &command,
        COMMAND_CONTENT_TYPE,
        &other,
        Some(signed_by_openssl()),
    )
    .await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("does not verify"), "{text}");
    drop((c, mac));
    s.stop().await;
}

#[tokio::test]
async fn profile_reads_with_openssl_and_plistlib_sqlite() {
    if !require_tool("openssl", "profile_reads_with_openssl_and_plistlib")
        || !require_tool("python3", "profile_reads_with_openssl_and_plistlib")
    {
        return;
    }
    let Some(s) = start(Db::Sqlite, &[]).await else {
        return;
    };
    let c = s.client();
    let (der, _) = fresh_profile(&s, &c, ANN).await;
    let dir = tempfile::tempdir().unwrap();
    let p_der = dir.path().join("p.der");
    let p_plist = dir.path().join("p.plist");
    std::fs::write(&p_der, &der).unwrap();
    let ca = s.data_dir.path().join("ca.pem");

    let (ok, out, err) = run(Command::new("openssl")
        .args(["cms", "-verify", "-inform", "DER", "-in"])
        .arg(&p_der)
        .arg("-CAfile")
        .arg(&ca)
        .arg("-out")
        .arg(&p_plist));
    assert!(
        ok && err.contains("Verification successful"),
        "openssl cms -verify: {out} {err}"
    );

    let script = r#"
import json, plistlib, sys
d = plistlib.load(open(sys.argv[1], "rb"))
mdm = [p for p in d["PayloadContent"] if p["PayloadType"] == "com.apple.mdm"]
print(json.dumps({
    "type": d["PayloadType"],
    "types": sorted(p["PayloadType"] for p in d["PayloadContent"]),
    "mdm": len(mdm),
    "mode": mdm[0].get("EnrollmentMode"),
    "apple_id": mdm[0].get("AssignedManagedAppleID"),
    "access_rights": "AccessRights" in mdm[0],
}))
"#;
    let (ok, out, err) = run(Command::new("python3").arg("-c").arg(script).arg(&p_plist));
    assert!(ok, "python3 plistlib: {err}");
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["type"], "Configuration", "{got}");
    assert_eq!(got["mdm"], 1, "{got}");
    assert_eq!(got["mode"], "BYOD", "{got}");
    assert_eq!(got["apple_id"], ANN, "{got}");
    assert_eq!(got["access_rights"], false, "{got}");
    assert!(
        got["types"]
            .as_array()
            .unwrap()
            .contains(&json!("com.apple.security.scep")),
        "{got}"
    );

    drop(c);
    s.stop().await;
}

/// The public URL of the servers that run behind a (pretend) TLS-terminating proxy.
const PROXY_PUBLIC_URL: &str = "https://mdm.example.test";

/// A profile from a server behind a proxy, fetched the way the proxy would forward the Mac's
/// requests: straight to the plain-HTTP listener (`s.url`), with the public URLs the server
/// hands out mapped back to it.
async fn fresh_profile_behind_proxy(s: &Server, c: &reqwest::Client) -> EnrollmentProfile {
    let mut mac = mac_for(s, ANN, |_| {});
    let base = Url::parse(&format!("{}/enroll", s.url)).unwrap();
    let mi = mac.signed_machine_info().unwrap();
    let r = post_enroll(c, &base, &mi, None).await;
    assert_eq!(r.status(), 401);
    let public = sign_in_url(&base, &r);
    assert_eq!(
        public.as_str(),
        format!("{PROXY_PUBLIC_URL}/enroll/sign-in")
    );
    let token = mac
        .sign_in(&base, base.join(public.path()).unwrap())
        .await
        .unwrap();
    let r = post_enroll(c, &base, &mi, Some(&token)).await;
    assert_eq!(r.status(), 200);
    let der = r.bytes().await.unwrap();
    let ca = X509::from_pem(&s.ca_pem()).unwrap();
    let (content, _) = lanyard_pki::verify_cms_attached(&der, &[ca]).unwrap();
    let profile = parse_enrollment_profile(&content).unwrap();
    assert_eq!(profile.scep.url, format!("{PROXY_PUBLIC_URL}/scep"));
    assert_eq!(
        profile.mdm.checkin_url,
        format!("{PROXY_PUBLIC_URL}/mdm/checkin")
    );
    profile
}

/// Behind a (pretend) TLS-terminating proxy, the profile names the public URLs, and SCEP
/// works through the plain-HTTP listener the proxy forwards to. (The independent SCEP clients
/// run against a live server in the `scep_serve` tests.)
#[tokio::test]
async fn behind_proxy_profile_and_scep_sqlite() {
    let env = [
        ("LANYARD_BEHIND_PROXY", "true"),
        ("LANYARD_PUBLIC_URL", PROXY_PUBLIC_URL),
    ];
    let Some(s) = start(Db::Sqlite, &env).await else {
        return;
    };
    assert!(s.url.starts_with("http://"), "{}", s.url);
    let c = reqwest::Client::new();
    let profile = fresh_profile_behind_proxy(&s, &c).await;
    let mut payload = profile.scep.clone();
    payload.url = format!("{}/scep", s.url);
    let issued = scep_client::enroll(&c, &payload).await.unwrap();
    let ca = X509::from_pem(&s.ca_pem()).unwrap();
    assert!(scep_client::chains_to(&issued.certificate, &ca));
    let info = lanyard_pki::CertInfo::from_x509(&issued.certificate).unwrap();
    let all = devices(&s, &["--all"]);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["identity_certificate_serial"], info.serial_hex);

    drop(c);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// server bugs found by these tests, kept as regression tests

/// `lanyard serve --behind-proxy` without `--public-url` must not hand out `http://` URLs:
/// it either refuses to start (asking for the public https URL) or serves https URLs.
#[tokio::test]
async fn behind_proxy_without_public_url_hands_out_https_only_sqlite() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/lanyard.db", dir.path().display());
    let mut child = Command::new(support::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--behind-proxy"])
        .env("LANYARD_DATA_DIR", dir.path())
        .env("LANYARD_DATABASE_URL", &db)
        .env("LANYARD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stdout for the server's whole life (it logs there), keeping the listening line.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("lanyard listening on ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let listening = rx.recv_timeout(std::time::Duration::from_secs(60)).ok();
    let Some(line) = listening else {
        // Refusing to start is a fix too, if it says why.
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("public"), "{err}");
        return;
    };
    let url = line.split_whitespace().next().unwrap().to_string();
    let (ok, _, err) = support::cli_with(
        dir.path(),
        &db,
        &["settings", "set", "managed-domains", "example.com"],
        None,
    );
    let doc = async {
        reqwest::get(format!(
            "{url}/.well-known/com.apple.remotemanagement?user-identifier={ANN}&model-family=Mac"
        ))
        .await?
        .json::<Value>()
        .await
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "{err}");
    let doc = doc.unwrap();
    let base = doc["Servers"][0]["BaseURL"].as_str().unwrap_or_default();
    assert!(base.starts_with("https://"), "discovery hands out {doc}");
}
