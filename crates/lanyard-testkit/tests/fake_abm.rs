#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The fake ABM against Lanyard's ABM client, the token file against `openssl smime`, and the
//! OAuth signer against Python `oauthlib` (an independent implementation, from the project's
//! `.venv-harness`; without it the cross-check prints a loud SKIPPED line, and fails under
//! `CI=true`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_apple::abm::oauth::{authorization_header, parse_authorization};
use lanyard_apple::abm::{AbmClient, AbmError, AbmOptions};
use lanyard_testkit::fake_abm::{AbmFault, FakeAbm};

fn client(fake: &FakeAbm, timeout: Duration) -> AbmClient {
    AbmClient::new(
        AbmOptions {
            base_url: fake.url(),
            timeout,
            max_retry_wait: Duration::from_secs(2),
            ..Default::default()
        },
        fake.credentials(),
    )
    .unwrap()
}

#[tokio::test]
async fn client_pages_through_faults_without_losing_devices() {
    let fake = FakeAbm::start().await.unwrap();
    fake.add_devices("C02A", 25);
    let c = client(&fake, Duration::from_secs(5));
    assert_eq!(
        c.account().await.unwrap().org_name.as_deref(),
        Some("Example Org")
    );
    fake.inject([
        AbmFault::ExpireSession,
        AbmFault::TooManyRequests { retry_after: 1 },
        AbmFault::ServerError,
    ]);
    let mut serials = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c.fetch_devices(cursor.as_deref(), 10).await.unwrap();
        pages += 1;
        serials.extend(page.devices.iter().map(|d| d.serial_number.clone()));
        cursor = Some(page.cursor);
        if !page.more_to_follow {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(serials.len(), 25);
    serials.dedup();
    assert_eq!(serials.len(), 25);
    assert_eq!(fake.sessions_issued(), 2, "one re-session after the 401");
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.2).collect();
    assert!(
        statuses.contains(&429) && statuses.contains(&500),
        "{statuses:?}"
    );

    // Incremental sync from the last cursor sees only the changes after the fetch.
    fake.modify_device("C02A000003", "MacBook Pro");
    fake.remove_device("C02A000004");
    let page = c
        .sync_devices(cursor.as_deref().unwrap(), 10)
        .await
        .unwrap();
    let ops: Vec<_> = page
        .devices
        .iter()
        .map(|d| (d.serial_number.as_str(), d.op_type.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        ops,
        vec![("C02A000003", "modified"), ("C02A000004", "deleted")]
    );
    fake.expire_cursors();
    assert!(matches!(
        c.sync_devices(&page.cursor, 10).await,
        Err(AbmError::ExpiredCursor)
    ));
}

#[tokio::test]
async fn discovery_profile_round_trip_and_errors() {
    let fake = FakeAbm::start().await.unwrap();
    let c = client(&fake, Duration::from_secs(5));
    assert!(c.discovery().await.unwrap().is_none());
    let url = "https://mdm.example.org/.well-known/com.apple.remotemanagement";
    c.assign_discovery(url).await.unwrap();
    assert_eq!(fake.discovery_url().as_deref(), Some(url));
    assert_eq!(
        c.discovery()
            .await
            .unwrap()
            .unwrap()
            .mdm_service_discovery_url,
        url
    );
    match c.assign_discovery("ftp://nope").await {
        Err(AbmError::Status {
            status: 400, code, ..
        }) => {
            assert_eq!(code, "MDM_SERVICE_DISCOVERY_URL_NOT_VALID")
        }
        other => panic!("{other:?}"),
    }
    c.remove_discovery().await.unwrap();
    assert!(fake.discovery_url().is_none());
}

#[tokio::test]
async fn errors_are_typed() {
    let fake = FakeAbm::start().await.unwrap();
    // Garbage answer.
    let c = client(&fake, Duration::from_secs(5));
    fake.inject([AbmFault::Garbage]);
    assert!(matches!(c.account().await, Err(AbmError::Garbage { .. })));
    // Slow answers time out, retried, then a transport error.
    let slow = client(&fake, Duration::from_millis(300));
    slow.account().await.unwrap();
    fake.inject(std::iter::repeat_n(
        AbmFault::Slow(Duration::from_secs(2)),
        4,
    ));
    assert!(matches!(
        slow.account().await,
        Err(AbmError::Transport { .. })
    ));
    // Persistent 500s exhaust the retries.
    fake.inject(std::iter::repeat_n(AbmFault::ServerError, 4));
    assert!(matches!(
        c.account().await,
        Err(AbmError::RetriesExhausted {
            status: 500,
            attempts: 4,
            ..
        })
    ));
    // Wrong secrets: the session is refused.
    let mut creds = fake.credentials();
    creds.access_secret = "wrong".into();
    let bad = AbmClient::new(
        AbmOptions {
            base_url: fake.url(),
            ..Default::default()
        },
        creds,
    )
    .unwrap();
    assert!(matches!(
        bad.account().await,
        Err(AbmError::Unauthorized(_))
    ));
    assert_eq!(fake.oauth_failures(), 1);
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn token_file_opens_with_openssl_smime_and_lanyard() {
    let fake = FakeAbm::start().await.unwrap();
    let recipient = lanyard_pki::self_signed_rsa("Lanyard ABM test", 30).unwrap();
    let file = fake.token_file(recipient.cert_pem.as_bytes(), 365).unwrap();
    assert!(String::from_utf8_lossy(&file).contains("application/"));

    let (creds, expiry) = lanyard_core::abm::open_token_file(
        &file,
        &recipient.cert_pem,
        recipient.key_pem.as_bytes(),
    )
    .unwrap();
    assert_eq!(creds, fake.credentials());
    assert!(expiry > chrono::Utc::now() + chrono::Duration::days(364));

    // Another key cannot open it.
    let other = lanyard_pki::self_signed_rsa("someone else", 30).unwrap();
    assert!(
        lanyard_core::abm::open_token_file(&file, &other.cert_pem, other.key_pem.as_bytes())
            .is_err()
    );

    if !have("openssl") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl missing"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED openssl smime check !!!!!\n"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let token = dir.path().join("token.p7m");
    std::fs::write(&key, &recipient.key_pem).unwrap();
    std::fs::write(&cert, &recipient.cert_pem).unwrap();
    std::fs::write(&token, &file).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["smime", "-decrypt", "-inkey"])
        .arg(&key)
        .arg("-recip")
        .arg(&cert)
        .arg("-in")
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("-----BEGIN MESSAGE-----"), "{text}");
    assert!(text.contains(&fake.credentials().consumer_key), "{text}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn harness_python() -> Option<PathBuf> {
    let python = std::env::var_os("LANYARD_HARNESS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-harness/bin/python"));
    let usable = std::process::Command::new(&python)
        .args(["-c", "import oauthlib"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if usable {
        return Some(python);
    }
    let why = format!(
        "{} cannot import oauthlib (run scripts/ensure-test-deps to make .venv-harness)",
        python.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "oauthlib cross-check cannot run and CI=true: {why}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! SKIPPED oauthlib cross-check: {why} !!!!!\n"
    );
    None
}

#[tokio::test]
async fn oauth_signer_agrees_with_python_oauthlib() {
    let Some(python) = harness_python() else {
        return;
    };
    let fake = FakeAbm::start().await.unwrap();
    let creds = fake.credentials();
    let url = format!("{}/session", fake.url());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/oauthlib_sign.py");
    for (nonce, ts) in [("abc123", 1_700_000_000u64), ("n%/ +~x", 1_234_567_890)] {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .args([
                url.as_str(),
                &creds.consumer_key,
                &creds.consumer_secret,
                &creds.access_token,
                &creds.access_secret,
                nonce,
                &ts.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let ours = authorization_header("GET", &url, &creds, Some("ADM"), nonce, ts).unwrap();
        let mut a = parse_authorization(&theirs).unwrap();
        let mut b = parse_authorization(&ours).unwrap();
        a.sort();
        b.sort();
        assert_eq!(a, b, "oauthlib: {theirs}\nLanyard: {ours}");

        // And the fake accepts oauthlib's header as a session request.
        let resp = reqwest::Client::new()
            .get(&url)
            .header("authorization", &theirs)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(fake.oauth_failures(), 0);
}
