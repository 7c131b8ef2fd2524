//! Golden tests: real device captures (NanoMDM's test data, in `../shared/fixtures/nanomdm`)
//! decode to the values they hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use lanyard_proto::checkin::CheckinMessage;
use lanyard_proto::{decode_checkin, decode_command_report, CommandStatus, EnrollmentKind};

const TOPIC: &str = "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9";

fn fixture(name: &str) -> Option<Vec<u8>> {
    let dir: PathBuf = common::shared_path("fixtures/nanomdm")?;
    Some(common::read(&dir.join(name)))
}

#[test]
fn authenticate_1_ipad() {
    let Some(bytes) = fixture("Authenticate.1.plist") else {
        return;
    };
    let CheckinMessage::Authenticate(m) = decode_checkin(&bytes).unwrap() else {
        panic!("not Authenticate")
    };
    assert_eq!(
        m.identity.udid.as_deref(),
        Some("663b07bb783e9ade1dae4fbb92ea12afc0ce5b69")
    );
    assert_eq!(m.enrollment.kind, EnrollmentKind::Device);
    assert_eq!(m.enrollment.id, "663b07bb783e9ade1dae4fbb92ea12afc0ce5b69");
    assert_eq!(m.topic, TOPIC);
    assert_eq!(m.os_version.as_deref(), Some("9.3.5"));
    assert_eq!(m.build_version.as_deref(), Some("13G36"));
    assert_eq!(m.product_name.as_deref(), Some("iPad2,5"));
    assert_eq!(m.serial_number.as_deref(), Some("F5JM992LF193"));
    assert_eq!(m.device_name, None);
}

#[test]
fn authenticate_2_mac() {
    let Some(bytes) = fixture("Authenticate.2.plist") else {
        return;
    };
    let CheckinMessage::Authenticate(m) = decode_checkin(&bytes).unwrap() else {
        panic!("not Authenticate")
    };
    assert_eq!(m.enrollment.id, "66ADE930-5FDF-5EC4-8429-15640684C489");
    assert_eq!(m.enrollment.kind, EnrollmentKind::Device);
    assert_eq!(m.topic, TOPIC);
    assert_eq!(m.device_name.as_deref(), Some("Fruit"));
    assert_eq!(m.model.as_deref(), Some("iMac14,2"));
    assert_eq!(m.model_name.as_deref(), Some("iMac"));
    assert_eq!(m.product_name.as_deref(), Some("iMac14,2"));
    assert_eq!(m.os_version.as_deref(), Some("10.12.6"));
    assert_eq!(m.build_version.as_deref(), Some("16G2136"));
    assert_eq!(m.serial_number.as_deref(), Some("C02MT66KFLHH"));
}

#[test]
fn token_update_1_with_unlock_token() {
    let Some(bytes) = fixture("TokenUpdate.1.plist") else {
        return;
    };
    let CheckinMessage::TokenUpdate(m) = decode_checkin(&bytes).unwrap() else {
        panic!("not TokenUpdate")
    };
    assert_eq!(m.enrollment.id, "663b07bb783e9ade1dae4fbb92ea12afc0ce5b69");
    assert_eq!(m.topic, TOPIC);
    assert_eq!(m.token.len(), 32);
    assert!(m.token.expose_hex().starts_with("47e8eec0"));
    assert_eq!(
        m.push_magic.expose(),
        "CEFDF0BD-E342-4A27-8742-E930EA116B0A"
    );
    let unlock = m.unlock_token.as_ref().expect("UnlockToken");
    assert_eq!(unlock.len(), 1288);
    assert_eq!(&unlock.expose()[..4], b"DATA");
    assert_eq!(m.awaiting_configuration, Some(false));
    // Secrets stay out of Debug output.
    let shown = format!("{m:?}");
    assert!(!shown.contains("CEFDF0BD"), "{shown}");
    assert!(!shown.contains("47e8"), "{shown}");
}

#[test]
fn token_update_2_without_unlock_token() {
    let Some(bytes) = fixture("TokenUpdate.2.plist") else {
        return;
    };
    let CheckinMessage::TokenUpdate(m) = decode_checkin(&bytes).unwrap() else {
        panic!("not TokenUpdate")
    };
    assert_eq!(m.enrollment.id, "66ADE930-5FDF-5EC4-8429-15640684C489");
    assert_eq!(m.token.len(), 32);
    assert!(m.token.expose_hex().starts_with("1ba7c900"));
    assert_eq!(
        m.push_magic.expose(),
        "888CEB39-BFFA-40F6-89FA-B60752EB63C2"
    );
    assert!(m.unlock_token.is_none());
}

#[test]
fn device_information_1_report() {
    let Some(bytes) = fixture("DeviceInformation.1.plist") else {
        return;
    };
    let r = decode_command_report(&bytes).unwrap();
    assert_eq!(r.status, CommandStatus::Acknowledged);
    assert_eq!(
        r.command_uuid.as_deref(),
        Some("76eda240-5488-4989-8339-f2ae160113c4")
    );
    assert_eq!(r.enrollment.kind, EnrollmentKind::Device);
    assert_eq!(r.enrollment.id, "66ADE930-5FDF-5EC4-8429-15640684C489");
    assert!(r.error_chain.is_empty());
    assert_eq!(
        r.result
            .get("RequestType")
            .and_then(plist::Value::as_string),
        Some("DeviceInformation")
    );
    let q = r
        .result
        .get("QueryResponses")
        .and_then(plist::Value::as_dictionary)
        .expect("QueryResponses");
    assert_eq!(
        q.get("HostName").and_then(plist::Value::as_string),
        Some("fruit.example.com")
    );
    assert_eq!(
        q.get("UDID").and_then(plist::Value::as_string),
        Some("66ADE930-5FDF-5EC4-8429-15640684C489")
    );
}

/// Every capture in the fixture folder is covered by a test above (a new capture must get one).
#[test]
fn every_fixture_is_covered() {
    let Some(dir) = common::shared_path("fixtures/nanomdm") else {
        return;
    };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".plist"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Authenticate.1.plist",
            "Authenticate.2.plist",
            "DeviceInformation.1.plist",
            "TokenUpdate.1.plist",
            "TokenUpdate.2.plist"
        ]
    );
}
