#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The enrollment sign-in pages in a real browser, on both databases, for both sign-in paths:
//! the Mac's first `POST /enroll` gets the `apple-as-web` challenge, then
//! `tests/browser/enroll.mjs` walks the pages in Debian's headless Chromium as the Mac's web
//! authentication view would (the sign-in URL with `?user-identifier=…`, the password form or
//! the OpenID Connect provider, what the organisation can see, Employee, the attributes) and
//! must be sent on to `apple-remotemanagement-user-login://authentication-results?access-token=…`
//! with no Content-Security-Policy violation. The access token the browser received is then
//! used as the Mac uses it: a second `POST /enroll` with it gets the signed profile.
//!
//! Needs `/usr/bin/chromium`, `node`, `npm ci` in `tests/browser` and in `tests/oidc`
//! (scripts/ensure-test-deps). Without them the test is skipped loudly, or fails under `CI=true`.

mod support;

use rstest::rstest;

use std::process::Command;

use lanyard_pki::X509;
use lanyard_testkit::profile::parse_enrollment_profile;
use lanyard_testkit::sim::MACHINE_INFO_CONTENT_TYPE;
use lanyard_testkit::{webauth, SimMac, SimOptions};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::Value;
use support::browser::{browser_dir, tools_present};
use support::oidc::{start_provider, CLIENT_SECRET};
use support::{Db, Server};
use url::Url;

const ANN: &str = "ann@example.com";
const PASSWORD: &str = "a long enough password";

fn cli_ok(s: &Server, args: &[&str]) -> String {
    let (ok, out, err) = s.cli(args);
    assert!(ok, "lanyard {} failed: {err}", args.join(" "));
    out
}

/// How the person signs in on the first page.
enum SignIn {
    /// The password form.
    Password,
    /// "Sign in with Example Corp", then the provider's own form.
    Oidc,
}

/// One enrollment as a Mac with a real browser as its web view: challenge, browser walk,
/// profile. Returns the profile's `AssignedManagedAppleID`.
async fn enroll_in_browser(s: &Server, how: SignIn) -> String {
    let c = s.client();
    let mut o = SimOptions::new(&s.url, ANN, PASSWORD);
    o.ca_cert_pem = Some(s.ca_pem());
    let mut mac = SimMac::new(o).unwrap();
    let base = mac.discover().await.unwrap();
    let machine_info = mac.signed_machine_info().unwrap();
    let post = |token: Option<String>| {
        let mut rb = c
            .post(base.clone())
            .header(CONTENT_TYPE, MACHINE_INFO_CONTENT_TYPE)
            .body(machine_info.clone());
        if let Some(t) = token {
            rb = rb.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        rb.send()
    };

    // The challenge, read as the Mac reads it; the Mac appends what the person typed.
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 401);
    let header = r.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_string();
    let challenge = webauth::parse_www_authenticate(&header)
        .unwrap_or_else(|e| panic!("challenge {header:?}: {e}"));
    assert_eq!(challenge.params["method"], "apple-as-web", "{header}");
    let mut sign_in_url: Url = base.join(&challenge.params["url"]).unwrap();
    sign_in_url
        .query_pairs_mut()
        .append_pair("user-identifier", ANN);

    let (path, login, password) = match how {
        // The test provider's password is the login.
        SignIn::Oidc => ("oidc", ANN, ANN),
        SignIn::Password => ("password", ANN, PASSWORD),
    };
    let out = Command::new("node")
        .arg("enroll.mjs")
        .current_dir(browser_dir())
        .env("LANYARD_SIGN_IN_URL", sign_in_url.as_str())
        .env("LANYARD_PATH", path)
        .env("LANYARD_LOGIN", login)
        .env("LANYARD_PASSWORD", password)
        .env("LANYARD_DEPARTMENT", "R&D")
        .env("LANYARD_PROVIDER_BUTTON", "Sign in with Example Corp")
        .output()
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("browser ({path}):\n{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the browser walk ({path}) failed ({}); see its output above",
        out.status
    );
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN "))
        .unwrap_or_else(|| panic!("the browser walk ({path}) printed no access token"))
        .trim()
        .to_string();

    // The Mac's second attempt with the token the browser was handed gets the signed profile.
    let r = post(Some(token)).await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(
        r.headers()[CONTENT_TYPE].to_str().unwrap(),
        "application/x-apple-aspen-config"
    );
    let der = r.bytes().await.unwrap();
    let ca = X509::from_pem(&s.ca_pem()).unwrap();
    let (content, _) = lanyard_pki::verify_cms_attached(&der, &[ca]).unwrap();
    let profile = parse_enrollment_profile(&content).unwrap();
    profile.mdm.assigned_managed_apple_id.unwrap_or_default()
}

async fn walk(db: Db) {
    if !tools_present() {
        return;
    }
    let Some(s) = Server::start(db).await else {
        return;
    };
    s.upload_push_certificate();
    let Some(p) = start_provider(&s.url) else {
        return;
    };
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", ANN, "--password", "-"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
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
    let (ok, _, err) = s.cli_stdin(
        &[
            "idp",
            "add",
            "corp",
            "--issuer",
            &p.issuer,
            "--client-id",
            "lanyard",
            "--client-secret-stdin",
            "--display-name",
            "Example Corp",
        ],
        &format!("{CLIENT_SECRET}\n"),
    );
    assert!(ok, "idp add: {err}");

    assert_eq!(enroll_in_browser(&s, SignIn::Password).await, ANN);
    assert_eq!(enroll_in_browser(&s, SignIn::Oidc).await, ANN);

    // Two profiles issued, two enrollments waiting for their Macs' SCEP request.
    let list: Value =
        serde_json::from_str(&cli_ok(&s, &["device", "list", "--json", "--all"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:#?}");
    for d in list {
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["attributes"]["department"], "R&D", "{d}");
    }

    drop(p);
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn enrollment_pages_hand_off_to_the_mac(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    walk(db).await;
}
