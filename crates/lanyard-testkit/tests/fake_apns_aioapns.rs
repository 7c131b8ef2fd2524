#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cross-check of the fake APNs with an independent client: aioapns (PyPI), run from the
//! project's `.venv-harness` by `tests/py/aioapns_check.py` (see that script for how it is
//! aimed at the fake). When the venv or aioapns is missing the test prints a loud SKIPPED
//! line, and fails under `CI=true` (`scripts/ensure-test-deps` makes the venv).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_testkit::fake_apns::{fake_push_certificate, FakeApns, FakeApnsOptions};

const TOPIC: &str = "com.apple.mgmt.External.9d0c6c8e-2f4b-4e1e-9d55-3b6f2f0a7c11";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python when it can import aioapns; otherwise say SKIPPED (fail in CI).
fn harness_python() -> Option<PathBuf> {
    let python = std::env::var_os("LANYARD_HARNESS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-harness/bin/python"));
    let usable = std::process::Command::new(&python)
        .args(["-c", "import aioapns"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if usable {
        return Some(python);
    }
    let why = format!(
        "{} cannot import aioapns (run scripts/ensure-test-deps to make .venv-harness)",
        python.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "aioapns cross-check cannot run and CI=true: {why}"
    );
    // Straight to the process's stderr, past the test harness's output capture.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! SKIPPED fake_apns_aioapns: {why} !!!!!\n"
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aioapns_pushes_to_the_fake_apns() {
    let Some(python) = harness_python() else {
        return;
    };
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let cert = fake_push_certificate(TOPIC).unwrap();
    let token = "3f".repeat(32);
    let gone = "e0".repeat(32);
    fake.set_unregistered(&hex::decode(&gone).unwrap());

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("fake-apns-ca.pem");
    let push = dir.path().join("push.pem");
    std::fs::write(&ca, fake.ca_pem()).unwrap();
    std::fs::write(&push, cert.combined_pem()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/aioapns_check.py");

    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(fake.addr().port().to_string())
        .arg("--ca")
        .arg(&ca)
        .arg("--cert")
        .arg(&push)
        .args([
            "--token",
            &token,
            "--magic",
            "AIOAPNS-MAGIC",
            "--gone-token",
            &gone,
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("aioapns script timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "aioapns check failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );

    let checks: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check in:\n{stdout}"))
            .clone()
    };
    // aioapns read the topic from the fake certificate's UID.
    assert_eq!(check("topic_from_uid")["topic"], TOPIC);
    let deliver = check("deliver");
    assert_eq!(deliver["successful"], true, "{deliver}");
    assert_eq!(deliver["status"], "200");
    assert_eq!(deliver["notification_id"], deliver["sent_id"]);
    let wrong = check("wrong_topic");
    assert_eq!(
        (wrong["status"].as_str(), wrong["description"].as_str()),
        (Some("400"), Some("TopicDisallowed"))
    );
    let gone_check = check("unregistered");
    assert_eq!(gone_check["status"], "410");
    assert!(gone_check["timestamp"].as_i64().unwrap_or(0) > 0);

    // What the fake recorded is one well-formed MDM push.
    let pushes = fake.pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    let p = &pushes[0];
    assert_eq!(p.token_hex, token);
    assert_eq!(p.topic, TOPIC);
    assert_eq!(p.push_magic, "AIOAPNS-MAGIC");
    assert_eq!(p.apns_id, deliver["sent_id"].as_str().unwrap());
    assert!(p.client_sent_apns_id);
    assert_eq!(p.push_type.as_deref(), Some("mdm"));
    assert_eq!(p.priority.as_deref(), Some("10"));
    assert!(p.expiration.is_some());
    let reasons: Vec<_> = fake
        .rejected()
        .into_iter()
        .map(|r| (r.status, r.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (400, "TopicDisallowed".to_string()),
            (410, "Unregistered".to_string())
        ]
    );
    assert_eq!(fake.connections(), 1, "aioapns used one connection");
}
