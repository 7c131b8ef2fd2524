#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Getting the push certificate from inside Lanyard, end to end on both databases:
//! `push-cert request` keeps the push key and CSR pending, a (throwaway) vendor chain signs
//! it into Apple's request file — checked independently with Python's `plistlib` and
//! `openssl` — and the certificate "Apple" issues for the CSR is matched to the pending key.
//! Bad vendor input, foreign and development certificates, and a renewal with another topic
//! are refused and change nothing.

mod support;

use rstest::rstest;

use lanyard_testkit::fake_pushcert::{
    fake_apple_push_certificate, fake_vendor_chain, FakeApnsMarker, FakeVendorOptions,
};
use lanyard_testkit::fake_signing_service::FakeSigningService;
use lanyard_testkit::sim::{SimMac, SimOptions};
use serde_json::Value;
use std::process::Command;

use support::pushcert::{independent_checks, require_tool, run};
use support::{Db, Server};

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_sign_upload_renew(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    if !require_tool("openssl") || !require_tool("python3") {
        return;
    }
    let Some(s) = Server::start(db).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| dir.path().join(n).display().to_string();
    let write = |n: &str, b: &[u8]| std::fs::write(dir.path().join(n), b).unwrap();

    let chain = fake_vendor_chain(FakeVendorOptions::default()).unwrap();
    write("vendor.p12", &chain.vendor_p12_der);
    write("wwdr.pem", chain.wwdr_pem.as_bytes());
    write("root.pem", chain.root_pem.as_bytes());
    let pw = format!("{}\n", chain.vendor_p12_password);
    let vendor_args = |p12: &str| -> Vec<String> {
        vec![
            "--vendor-p12".into(),
            f(p12),
            "--apple-cert".into(),
            f("wwdr.pem"),
            "--apple-cert".into(),
            f("root.pem"),
        ]
    };
    let cli = |args: &[String], stdin: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        s.cli_stdin(&a, stdin)
    };
    let request = |out: &str, vendor: Option<&[String]>, stdin: &str| {
        let mut a = vec!["push-cert".to_string(), "request".into()];
        if let Some(v) = vendor {
            a.extend(v.iter().cloned());
        }
        a.extend(["--out".to_string(), f(out)]);
        cli(&a, stdin)
    };
    let no_pending = || {
        let (ok, _, err) = s.cli(&["push-cert", "upload", "--cert", &f("root.pem")]);
        assert!(!ok);
        assert!(err.contains("pending push certificate request"), "{err}");
    };

    // Bad vendor input: each explained, and no request is left pending.
    let (ok, _, err) = request("bad1", Some(&vendor_args("vendor.p12")), "wrong password\n");
    assert!(!ok);
    assert!(err.contains("wrong password"), "{err}");
    let not_vendor = fake_vendor_chain(FakeVendorOptions {
        common_name: "Some Developer Certificate".into(),
        ..Default::default()
    })
    .unwrap();
    write("notvendor.p12", &not_vendor.vendor_p12_der);
    let (ok, _, err) = request(
        "bad2",
        Some(&vendor_args("notvendor.p12")),
        &format!("{}\n", not_vendor.vendor_p12_password),
    );
    assert!(!ok);
    assert!(err.contains("not an MDM CSR signing certificate"), "{err}");
    let expired = fake_vendor_chain(FakeVendorOptions {
        expired: true,
        ..Default::default()
    })
    .unwrap();
    write("expired.p12", &expired.vendor_p12_der);
    let (ok, _, err) = request(
        "bad3",
        Some(&vendor_args("expired.p12")),
        &format!("{}\n", expired.vendor_p12_password),
    );
    assert!(!ok);
    assert!(err.contains("vendor certificate expired"), "{err}");
    // The Apple files of another chain (this vendor's intermediate did not issue it).
    let other = fake_vendor_chain(FakeVendorOptions::default()).unwrap();
    write("other-wwdr.pem", other.wwdr_pem.as_bytes());
    let (ok, _, err) = cli(
        &[
            "push-cert".into(),
            "request".into(),
            "--vendor-p12".into(),
            f("vendor.p12"),
            "--apple-cert".into(),
            f("other-wwdr.pem"),
            "--apple-cert".into(),
            f("root.pem"),
            "--out".into(),
            f("bad4"),
        ],
        &pw,
    );
    assert!(!ok);
    assert!(err.contains("not the expected chain"), "{err}");
    // Only the root: not a chain either.
    let (ok, _, err) = cli(
        &[
            "push-cert".into(),
            "request".into(),
            "--vendor-p12".into(),
            f("vendor.p12"),
            "--apple-cert".into(),
            f("root.pem"),
            "--out".into(),
            f("bad5"),
        ],
        &pw,
    );
    assert!(!ok);
    assert!(err.contains("not the expected chain"), "{err}");
    for bad in ["bad1", "bad2", "bad3", "bad4", "bad5"] {
        assert!(!dir.path().join(bad).exists());
    }
    no_pending();

    // A request: the CSR for a vendor, then signed with the vendor certificate.
    let (ok, out, err) = request("push.csr", None, "");
    assert!(ok, "{err}");
    assert!(out.contains("CSR"), "{out}");
    let csr_pem = std::fs::read(f("push.csr")).unwrap();
    assert!(String::from_utf8_lossy(&csr_pem).contains("BEGIN CERTIFICATE REQUEST"));
    let mut sign = vec!["push-cert".to_string(), "sign".into()];
    sign.extend(vendor_args("vendor.p12"));
    sign.extend(["--out".to_string(), f("push.req")]);
    let (ok, _, err) = cli(&sign, &pw);
    assert!(ok, "{err}");
    let csr_der = independent_checks(dir.path(), &dir.path().join("push.req"), "first");
    // The file carries the pending CSR.
    let (ok, der_of_pem, _) = run(Command::new("openssl").args([
        "req",
        "-in",
        &f("push.csr"),
        "-outform",
        "DER",
        "-out",
        &f("push-csr.der"),
    ]));
    assert!(ok, "{der_of_pem}");
    assert_eq!(
        std::fs::read(&csr_der).unwrap(),
        std::fs::read(f("push-csr.der")).unwrap()
    );

    // What Apple returns for another key is refused; so is a development certificate.
    let foreign = lanyard_testkit::fake_apns::fake_push_certificate(
        &lanyard_testkit::fake_apns::fake_mdm_topic(),
    )
    .unwrap();
    write("foreign.pem", foreign.cert_pem.as_bytes());
    let (ok, _, err) = s.cli(&["push-cert", "upload", "--cert", &f("foreign.pem")]);
    assert!(!ok);
    assert!(err.contains("not issued for Lanyard's pending"), "{err}");
    let topic = lanyard_testkit::fake_apns::fake_mdm_topic();
    let dev = fake_apple_push_certificate(&csr_pem, &topic, FakeApnsMarker::Development).unwrap();
    write("dev.pem", dev.as_bytes());
    let (ok, _, err) = s.cli(&["push-cert", "upload", "--cert", &f("dev.pem")]);
    assert!(!ok);
    assert!(
        err.contains("development (sandbox) APNs certificate"),
        "{err}"
    );
    let (ok, _, _) = s.cli(&["push-cert", "show"]);
    assert!(!ok, "nothing was stored");

    // Apple's production certificate for the pending CSR: stored, the request cleared.
    let issued = fake_apple_push_certificate(&csr_pem, &topic, FakeApnsMarker::Production).unwrap();
    write("MDM_Lanyard.pem", issued.as_bytes());
    let (ok, out, err) = s.cli(&["push-cert", "upload", "--cert", &f("MDM_Lanyard.pem")]);
    assert!(ok, "{err}");
    assert!(out.contains(&topic), "{out}");
    no_pending();
    let (ok, out, _) = s.cli(&["push-cert", "show", "--json"]);
    assert!(ok);
    let first: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["topic"], topic.as_str());

    // A Mac enrolls under that topic.
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", "ann@example.com", "--password", "-"],
        "a long password\n",
    );
    assert!(ok, "{err}");
    assert!(
        s.cli(&["settings", "set", "managed-domains", "example.com"])
            .0
    );
    let mut mac = SimMac::new(SimOptions {
        ca_cert_pem: Some(s.ca_pem()),
        push_topic: Some(topic.clone()),
        ..SimOptions::new(s.url.clone(), "ann@example.com", "a long password")
    })
    .unwrap();
    assert_eq!(mac.enroll().await.unwrap().topic, topic);

    // Renewal: a new request signed in one step; a certificate with another topic is
    // refused (the Mac would be orphaned), the same topic is accepted.
    let (ok, _, err) = request("renew.req", Some(&vendor_args("vendor.p12")), &pw);
    assert!(ok, "{err}");
    let renew_csr = independent_checks(dir.path(), &dir.path().join("renew.req"), "renew");
    let renew_csr = std::fs::read(renew_csr).unwrap();
    let wrong_topic = fake_apple_push_certificate(
        &renew_csr,
        &lanyard_testkit::fake_apns::fake_mdm_topic(),
        FakeApnsMarker::Production,
    )
    .unwrap();
    write("wrong-topic.pem", wrong_topic.as_bytes());
    let (ok, _, err) = s.cli(&["push-cert", "upload", "--cert", &f("wrong-topic.pem")]);
    assert!(!ok);
    assert!(err.contains("orphaned"), "{err}");
    let renewed = fake_apple_push_certificate(&renew_csr, &topic, FakeApnsMarker::None).unwrap();
    write("renewed.pem", renewed.as_bytes());
    let (ok, _, err) = s.cli(&["push-cert", "upload", "--cert", &f("renewed.pem")]);
    assert!(ok, "{err}");
    let c = s.client();
    let t = s.admin_session(&c).await;
    let now: Value = c
        .get(format!("{}/api/v1/push-certificate", s.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["topic"], topic.as_str());
    assert_ne!(
        now["sha256"], first["sha256"],
        "the renewed certificate is in use"
    );
    no_pending();

    // The API: a request, its CSR, and Apple's certificate for it by `cert_pem` alone; a
    // foreign certificate is a 422 and changes nothing.
    let api = format!("{}/api/v1/push-certificate/request", s.url);
    let r = c.get(&api).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c.post(&api).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    let api_csr = made["csr_pem"].as_str().unwrap().to_string();
    let shown: Value = c
        .get(&api)
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["csr_pem"], api_csr.as_str());
    let put = format!("{}/api/v1/push-certificate", s.url);
    let r = c
        .put(&put)
        .bearer_auth(&t)
        .json(&serde_json::json!({"cert_pem": foreign.cert_pem}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let api_cert =
        fake_apple_push_certificate(api_csr.as_bytes(), &topic, FakeApnsMarker::Production)
            .unwrap();
    let r = c
        .put(&put)
        .bearer_auth(&t)
        .json(&serde_json::json!({"cert_pem": api_cert}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["topic"], topic.as_str());
    no_pending();
    s.stop().await;
}

/// The signing service path: the request goes to the (fake) service with an encryption
/// certificate, its emailed reply decrypts to a request file that verifies independently,
/// and bad input (wrong API key, bad address, a file that is not a reply, a reply to an
/// earlier request, a reply carrying another CSR) is refused with nothing stored.
async fn signing_service_request_decrypt(db: Db) {
    if !require_tool("openssl") || !require_tool("python3") {
        return;
    }
    let Some(s) = Server::start(db).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| dir.path().join(n).display().to_string();
    let write = |n: &str, b: &[u8]| std::fs::write(dir.path().join(n), b).unwrap();
    let chain = fake_vendor_chain(FakeVendorOptions::default()).unwrap();
    write("root.pem", chain.root_pem.as_bytes());
    let api_key = "test-api-key-0123456789";
    let service = FakeSigningService::start(api_key, &chain).await.unwrap();
    support::write_private_file(
        &dir.path().join("api.key"),
        format!("{api_key}\n").as_bytes(),
    );
    support::write_private_file(&dir.path().join("wrong.key"), b"not-the-key\n");
    // The CLI runs while the fake answers on this runtime's other thread.
    let cli = |args: &[&str], stdin: &str| tokio::task::block_in_place(|| s.cli_stdin(args, stdin));
    let url = service.url();
    let request = |email: &str, key_file: Option<&str>, stdin: &str| {
        let mut a = vec![
            "push-cert",
            "request",
            "--signing-service",
            "--signing-service-url",
            url.as_str(),
            "--email",
            email,
        ];
        let kf;
        if let Some(k) = key_file {
            kf = f(k);
            a.extend(["--api-key-file", kf.as_str()]);
        }
        cli(&a, stdin)
    };
    let no_pending = || {
        let (ok, _, err) = cli(&["push-cert", "upload", "--cert", &f("root.pem")], "");
        assert!(!ok);
        assert!(err.contains("pending push certificate request"), "{err}");
    };

    // A wrong API key: the service refuses, nothing is kept pending.
    let (ok, _, err) = request("admin@example.com", Some("wrong.key"), "");
    assert!(!ok);
    assert!(err.contains("refused the request"), "{err}");
    assert_eq!(service.requests().len(), 1);
    no_pending();
    // Not an address: refused before anything is sent.
    let (ok, _, err) = request("not an address", None, &format!("{api_key}\n"));
    assert!(!ok);
    assert!(err.contains("not an email address"), "{err}");
    assert_eq!(service.requests().len(), 1);
    no_pending();

    // The request: the service gets the CSR, the address, the key and an encryption
    // certificate (each as the service documents them).
    let (ok, out, err) = request("admin@example.com", Some("api.key"), "");
    assert!(ok, "{err}");
    assert!(out.contains("push-cert decrypt"), "{out}");
    let sent = service.requests().pop().unwrap();
    assert_eq!(sent.email, "admin@example.com");
    assert_eq!(sent.key, api_key);
    use base64::Engine as _;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.decode(t).unwrap();
    let csr_pem = b64(&sent.csr);
    assert!(String::from_utf8_lossy(&csr_pem).contains("BEGIN CERTIFICATE REQUEST"));
    let enc = b64(&sent.encrypt);
    assert!(String::from_utf8_lossy(&enc).contains("BEGIN CERTIFICATE"));
    let replies = service.replies();
    assert_eq!(replies.len(), 1);
    write("reply.plist.b64.p7", replies[0].as_bytes());

    // A file that is not a reply: explained, nothing written.
    write("garbage.p7", b"this is not the reply\n");
    let (ok, _, err) = cli(
        &[
            "push-cert",
            "decrypt",
            &f("garbage.p7"),
            "--out",
            &f("bad.b64"),
        ],
        "",
    );
    assert!(!ok);
    assert!(err.contains("not hex text"), "{err}");
    assert!(!dir.path().join("bad.b64").exists());

    // The reply decrypts to a request file that verifies without Lanyard, for this CSR.
    let (ok, _, err) = cli(
        &[
            "push-cert",
            "decrypt",
            &f("reply.plist.b64.p7"),
            "--out",
            &f("service.b64"),
        ],
        "",
    );
    assert!(ok, "{err}");
    let csr_der = independent_checks(dir.path(), &dir.path().join("service.b64"), "service");
    write("sent.csr", &csr_pem);
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-in",
        &f("sent.csr"),
        "-outform",
        "DER",
        "-out",
        &f("sent.der"),
    ]));
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(csr_der).unwrap(),
        std::fs::read(f("sent.der")).unwrap()
    );

    // A new request whose reply carries another CSR: refused; the earlier reply (encrypted
    // to the earlier request's key) is refused too.
    service.sign_another_csr(true);
    let (ok, _, err) = request("admin@example.com", None, &format!("{api_key}\n"));
    assert!(ok, "{err}");
    let second = service.requests().pop().unwrap();
    write("other.plist.b64.p7", service.replies()[1].as_bytes());
    let (ok, _, err) = cli(
        &[
            "push-cert",
            "decrypt",
            &f("other.plist.b64.p7"),
            "--out",
            &f("other.b64"),
        ],
        "",
    );
    assert!(!ok);
    assert!(err.contains("another CSR"), "{err}");
    let (ok, _, err) = cli(
        &[
            "push-cert",
            "decrypt",
            &f("reply.plist.b64.p7"),
            "--out",
            &f("old.b64"),
        ],
        "",
    );
    assert!(!ok);
    assert!(err.contains("cannot be decrypted"), "{err}");
    assert!(!dir.path().join("other.b64").exists() && !dir.path().join("old.b64").exists());

    // Apple's certificate for the pending (second) CSR completes the request.
    let topic = lanyard_testkit::fake_apns::fake_mdm_topic();
    let issued =
        fake_apple_push_certificate(&b64(&second.csr), &topic, FakeApnsMarker::Production).unwrap();
    write("issued.pem", issued.as_bytes());
    let (ok, out, err) = cli(&["push-cert", "upload", "--cert", &f("issued.pem")], "");
    assert!(ok, "{err}");
    assert!(out.contains(&topic), "{out}");
    no_pending();
    // The reply to a completed request has nothing left to answer.
    let (ok, _, err) = cli(
        &[
            "push-cert",
            "decrypt",
            &f("other.plist.b64.p7"),
            "--out",
            &f("late.b64"),
        ],
        "",
    );
    assert!(!ok);
    assert!(err.contains("pending"), "{err}");
    s.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_service(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    signing_service_request_decrypt(db).await;
}
