//! Declarations Lanyard writes, checked against Apple's schema by an independent reader:
//! `tests/py/check_declarations.py` reads the YAML with PyYAML and shares nothing with the
//! generated table or `lanyard_proto::declaration`'s validator. Each case must get the same
//! verdict from both, and the bad cases prove the Python check can refuse.
//!
//! Needs `../shared/apple-schema` and the harness Python with PyYAML (`.venv-harness`, made by
//! `scripts/ensure-test-deps`, or `LANYARD_HARNESS_PYTHON`); without them it skips loudly, and
//! fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use lanyard_proto::declaration::{
    simple_activation_payload, status_subscriptions_payload, Declaration,
};
use serde_json::{json, Value};

fn declaration(t: &str, identifier: &str, payload: Value) -> Declaration {
    Declaration {
        declaration_type: t.into(),
        identifier: identifier.into(),
        server_token: format!("{identifier}-token-1"),
        payload,
    }
}

fn exchange() -> Value {
    json!({
        "VisibleName": "Work mail",
        "EnabledProtocolTypes": ["EWS", "EAS"],
        "HostName": "mail.example.com",
        "Port": 443,
        "OAuth": { "Enabled": true, "SignInURL": "https://login.example.com/" },
        "UserIdentityAssetReference": "ann-identity",
        "AuthenticationCredentialsAssetReference": "ann-password",
        "MailServiceActive": true,
        "CalendarServiceActive": false,
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

/// (declaration, whether Apple's schema accepts it).
fn cases() -> Vec<(Declaration, bool)> {
    const EXCHANGE: &str = "com.apple.configuration.account.exchange";
    vec![
        (declaration(EXCHANGE, "exchange-ann", exchange()), true),
        (
            declaration(
                "com.apple.asset.credential.certificate",
                "root-ca",
                json!({
                    "Reference": {
                        "DataURL": "https://mdm.example.com/mdm/assets/root-ca",
                        "ContentType": "application/pem",
                        "Size": 1234,
                        "Hash-SHA-256": "00ff",
                    },
                    "Authentication": { "Type": "MDM" },
                }),
            ),
            true,
        ),
        (
            declaration(
                "com.apple.asset.useridentity",
                "ann-identity",
                json!({ "FullName": "Ann Example", "EmailAddress": "ann@example.com" }),
            ),
            true,
        ),
        (
            declaration(
                "com.apple.activation.simple",
                "activation-ann",
                simple_activation_payload(&["exchange-ann", "root-ca-config"]),
            ),
            true,
        ),
        (
            declaration(
                "com.apple.configuration.management.status-subscriptions",
                "status-default",
                status_subscriptions_payload(&[
                    "device.operating-system.version",
                    "device.operating-system.build-version",
                    "device.model.family",
                    "management.declarations",
                    "management.client-capabilities",
                ]),
            ),
            true,
        ),
        (
            declaration(
                "com.apple.configuration.security.certificate",
                "root-ca-config",
                json!({ "CredentialAssetReference": "root-ca" }),
            ),
            true,
        ),
        // Refused by the schema:
        (
            declaration(
                EXCHANGE,
                "bad-rangelist",
                with(exchange(), "EnabledProtocolTypes", json!(["IMAP"])),
            ),
            false,
        ),
        (
            declaration(
                EXCHANGE,
                "bad-unknown-key",
                with(exchange(), "MailServiceHostName", json!("mail.example.com")),
            ),
            false,
        ),
        (
            declaration(
                EXCHANGE,
                "bad-missing-key",
                without(exchange(), "EnabledProtocolTypes"),
            ),
            false,
        ),
        (
            declaration(EXCHANGE, "bad-type", with(exchange(), "Port", json!("443"))),
            false,
        ),
        (
            declaration(
                EXCHANGE,
                "bad-nested",
                with(
                    exchange(),
                    "OAuth",
                    json!({ "SignInURL": "https://x.example/" }),
                ),
            ),
            false,
        ),
        (
            declaration(
                EXCHANGE,
                "bad-not-on-macos",
                with(exchange(), "LockMailService", json!(true)),
            ),
            false,
        ),
        (
            declaration(
                "com.apple.configuration.passcode.settings",
                "bad-range",
                json!({ "MinimumLength": 17 }),
            ),
            false,
        ),
        (
            declaration(
                "com.apple.configuration.management.status-subscriptions",
                "bad-status-item",
                status_subscriptions_payload(&["device.model.family", "device.nonsense"]),
            ),
            false,
        ),
        (
            declaration(
                "com.apple.activation.simple",
                "bad-activation",
                json!({ "StandardConfigurations": "exchange-ann" }),
            ),
            false,
        ),
    ]
}

#[test]
fn lanyard_declarations_agree_with_python_reading_the_schema() {
    let Some(schema) = common::shared_path("apple-schema") else {
        return;
    };
    let Some(python) = common::harness_python("yaml") else {
        return;
    };
    let cases = cases();
    let body = Value::Array(cases.iter().map(|(d, _)| d.to_json()).collect());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/check_declarations.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the bad cases must make the Python check fail\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), cases.len(), "{stdout}");
    for ((d, accepted), line) in cases.iter().zip(&lines) {
        let python_ok = *line == format!("OK {}", d.identifier);
        assert!(
            python_ok || line.starts_with(&format!("BAD {}: ", d.identifier)),
            "unexpected line {line:?}"
        );
        assert_eq!(python_ok, *accepted, "Python on {}: {line}", d.identifier);
        let ours = Declaration::from_json(&d.to_json());
        assert_eq!(
            ours.is_ok(),
            *accepted,
            "Lanyard on {}: {ours:?}",
            d.identifier
        );
    }
}
