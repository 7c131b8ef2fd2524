#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The admin portal in a real browser, on both databases: `tests/browser/portal.mjs` drives
//! Debian's headless Chromium through playwright-core (sign in, add a user, change the enrollment
//! settings, add an ABM server token from the fake Apple Business Manager as the default for
//! account-driven enrollment and sync it, find the enrolled simulated Mac as a User Enrollment, send commands and see their
//! result and progress, an OpenID Connect identity provider refused with a bad issuer then added
//! and listed, the APNs certificate request made and signed with a vendor certificate
//! uploaded in the page (a wrong password explained; the downloaded request file checked with
//! plistlib and openssl), a read-only administrator refused a change, axe-core accessibility
//! checks). This test starts the server, plays the simulated Mac when the script asks, and fails
//! when the script fails.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci` run in `tests/browser` (scripts/ensure-test-deps
//! does both). Without them the test is skipped loudly, or fails under `CI=true`.

mod support;

use rstest::rstest;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use lanyard_testkit::fake_abm::FakeAbm;
use lanyard_testkit::fake_pushcert::{fake_vendor_chain, FakeVendorOptions};
use lanyard_testkit::sim::{Ownership, SimMac, SimOptions};
use serde_json::Value;
use support::browser::{browser_dir, tools_present};
use support::pushcert::{independent_checks, require_tool};
use support::{Db, Server, VIEWER_PASSWORD};

fn enrolled_id(s: &Server) -> String {
    let (ok, out, err) = s.cli(&["device", "list", "--json"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    list[0]["id"].as_str().unwrap().to_string()
}

async fn walk(db: Db) {
    if !tools_present() || !require_tool("openssl") || !require_tool("python3") {
        return;
    }
    let fake = FakeAbm::start().await.unwrap();
    fake.add_devices("C02P", 3);
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
    s.upload_push_certificate();
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
        &format!("{VIEWER_PASSWORD}\n"),
    );
    assert!(ok, "{err}");

    let mut node = Command::new("node")
        .arg("portal.mjs")
        .current_dir(browser_dir())
        .env("LANYARD_URL", &s.url)
        .env("LANYARD_ADMIN_PASSWORD", &s.admin_password)
        .env("LANYARD_VIEWER_PASSWORD", VIEWER_PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut to_node = node.stdin.take().unwrap();
    let from_node = BufReader::new(node.stdout.take().unwrap());
    // Lines are read on a thread so the async simulated Mac can run between them.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in from_node.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let vendor = fake_vendor_chain(FakeVendorOptions::default()).unwrap();
    let vendor_dir = tempfile::tempdir().unwrap();
    let mut mac: Option<SimMac> = None;
    let mut done = false;
    while let Some(line) = rx.recv().await {
        println!("browser: {line}");
        if line == "STEP vendor" {
            // A throwaway vendor chain, as the operator downloads it from Apple (DER `.cer`).
            let der = |pem: &str| {
                lanyard_pki::X509::from_pem(pem.as_bytes())
                    .unwrap()
                    .to_der()
                    .unwrap()
            };
            for (name, bytes) in [
                ("vendor.p12", vendor.vendor_p12_der.clone()),
                ("password", vendor.vendor_p12_password.clone().into_bytes()),
                ("AppleWWDRCA.cer", der(&vendor.wwdr_pem)),
                ("AppleIncRootCertificate.cer", der(&vendor.root_pem)),
            ] {
                std::fs::write(vendor_dir.path().join(name), bytes).unwrap();
            }
            writeln!(to_node, "OK {}", vendor_dir.path().display()).unwrap();
            to_node.flush().unwrap();
            continue;
        }
        if let Some(file) = line.strip_prefix("STEP requestfile ") {
            // The downloaded request file, checked as Apple would, carries the pending CSR.
            let carried = independent_checks(vendor_dir.path(), Path::new(file), "browser");
            let api = s.client();
            let token = s.admin_session(&api).await;
            let pending: Value = api
                .get(format!("{}/api/v1/push-certificate/request", s.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let csr = lanyard_pki::csr_pem_to_der(pending["csr_pem"].as_str().unwrap().as_bytes())
                .unwrap();
            assert_eq!(std::fs::read(carried).unwrap(), csr);
            writeln!(to_node, "OK").unwrap();
            to_node.flush().unwrap();
            continue;
        }
        if let Some(pem_path) = line.strip_prefix("STEP token ") {
            // The fake ABM issues a token file encrypted to the downloaded public key.
            let pem = std::fs::read(pem_path).unwrap();
            let p7m = Path::new(pem_path).with_extension("p7m");
            std::fs::write(&p7m, fake.token_file(&pem, 365).unwrap()).unwrap();
            writeln!(to_node, "OK {}", p7m.display()).unwrap();
            to_node.flush().unwrap();
            continue;
        }
        match line.as_str() {
            "STEP enroll" => {
                let mut m = SimMac::new(SimOptions {
                    ownership: Ownership::Employee,
                    attrs: BTreeMap::new(),
                    os_version: "15.2".into(),
                    ca_cert_pem: Some(s.ca_pem()),
                    ..SimOptions::new(s.url.clone(), "ann@example.com", "a long password")
                })
                .unwrap();
                m.enroll().await.expect("the simulated Mac enrolls");
                let id = enrolled_id(&s);
                mac = Some(m);
                writeln!(to_node, "OK {id}").unwrap();
            }
            "STEP answer" => {
                let m = mac.as_mut().expect("enrolled before answering");
                let cmd = m.idle().await.unwrap().expect("a queued command");
                let reply = m.builtin_reply(&cmd, lanyard_testkit::Channel::Device);
                m.respond(&cmd.uuid, reply.status, reply.result)
                    .await
                    .unwrap();
                writeln!(to_node, "OK {}", cmd.request_type).unwrap();
            }
            "DONE" => done = true,
            _ => {}
        }
        to_node.flush().unwrap();
    }
    let status = node.wait().unwrap();
    assert!(
        status.success() && done,
        "the browser walk failed ({status}); see its output above"
    );
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn portal_in_browser(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    walk(db).await;
}
