//! Checks against Apple's device-management schema (`../shared/apple-schema`):
//! - the committed `ue_table.rs` and `declaration_table.rs` are exactly what
//!   `lanyard-schemagen` generates from it;
//! - the enrollment profile emits only keys the schema defines, every required key, and
//!   nothing macOS User Enrollment forbids or ignores;
//! - the check-in and MachineInfo decoders keep every key the schema defines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "../../lanyard-schemagen/src/generate.rs"]
mod generate;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lanyard_proto::checkin::{decode_checkin, encode_checkin};
use lanyard_proto::profile::{
    build_enrollment_profile, EnrollmentProfileInput, ProfileUuids, ScepSettings, ServerCapability,
};
use lanyard_proto::{decode_machine_info, OsVersion, SecretString};
use plist::{Dictionary, Value};
use serde_norway::Value as Yaml;

fn schema_dir() -> Option<PathBuf> {
    common::shared_path("apple-schema")
}

fn load_yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `payloadkeys` (or a key's `subkeys`) of a schema node.
fn keys_of(node: &Yaml, field: &str) -> Vec<Yaml> {
    node.get(field)
        .and_then(Yaml::as_sequence)
        .cloned()
        .unwrap_or_default()
}

fn key_name(k: &Yaml) -> &str {
    k.get("key").and_then(Yaml::as_str).unwrap()
}

#[test]
fn ue_table_matches_the_schema() {
    let Some(dir) = schema_dir() else { return };
    let generated = generate::generate(&dir).unwrap();
    let committed = include_str!("../src/ue_table.rs");
    assert!(committed.starts_with(generate::HEADER));
    assert!(
        generated == committed,
        "src/ue_table.rs is out of date with ../shared/apple-schema: run \
         `cargo run -p lanyard-schemagen -- --schema ../shared/apple-schema --out crates/lanyard-proto/src/ue_table.rs`"
    );
}

#[test]
fn declaration_table_matches_the_schema() {
    let Some(dir) = schema_dir() else { return };
    let generated = generate::declarations::generate(&dir).unwrap();
    let committed = include_str!("../src/declaration_table.rs");
    assert!(committed.starts_with(generate::declarations::HEADER));
    assert!(
        generated == committed,
        "src/declaration_table.rs is out of date with ../shared/apple-schema: run \
         `cargo run -p lanyard-schemagen -- --schema ../shared/apple-schema --declarations-out crates/lanyard-proto/src/declaration_table.rs`"
    );
}

/// Every declaration and status item file of the schema has its row, with the kind of its
/// folder, read here straight from the YAML.
#[test]
fn declaration_table_covers_every_schema_file() {
    use lanyard_proto::declaration::{self, DeclarationKind};
    let Some(dir) = schema_dir() else { return };
    let folders = [
        ("activations", DeclarationKind::Activation),
        ("assets", DeclarationKind::Asset),
        ("configurations", DeclarationKind::Configuration),
        ("management", DeclarationKind::Management),
    ];
    let mut seen = 0;
    for (folder, kind) in folders {
        for entry in std::fs::read_dir(dir.join("declarative/declarations").join(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let doc = load_yaml(&path);
            let t = doc["payload"]["declarationtype"].as_str().unwrap();
            assert_eq!(declaration::kind_of(t), Some(kind), "{}", path.display());
            let keys = keys_of(&doc, "payloadkeys");
            let required: Vec<&str> = keys
                .iter()
                .filter(|k| k.get("presence").and_then(Yaml::as_str) == Some("required"))
                .map(key_name)
                .collect();
            let row = declaration::declaration_schema(t).unwrap();
            for r in required {
                assert!(
                    row.keys
                        .iter()
                        .any(|k| k.key == r && k.presence == declaration::Presence::Required),
                    "{t}: {r}"
                );
            }
            seen += 1;
        }
    }
    assert_eq!(seen, declaration::declarations().len());
    let mut items = 0;
    for entry in std::fs::read_dir(dir.join("declarative/status")).unwrap() {
        let doc = load_yaml(&entry.unwrap().path());
        if let Some(name) = doc["payload"]["statusitemtype"].as_str() {
            assert!(declaration::status_item_known(name), "{name}");
            items += 1;
        }
    }
    assert_eq!(items, declaration::status_items().len());
}

fn profile_input() -> EnrollmentProfileInput {
    EnrollmentProfileInput {
        organisation: "Example Ltd".into(),
        profile_identifier: "com.example.lanyard.enroll".into(),
        checkin_url: "https://mdm.example.com/mdm/checkin".into(),
        server_url: "https://mdm.example.com/mdm/command".into(),
        push_topic: "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9".into(),
        assigned_managed_apple_id: "ann@example.com".into(),
        scep: ScepSettings {
            url: "https://mdm.example.com/scep".into(),
            challenge: SecretString::new("challenge"),
            subject: vec![("CN".into(), "Lanyard identity".into())],
            key_size: 2048,
            name: Some("Lanyard CA".into()),
            ca_fingerprint: Some(vec![1; 32]),
        },
        ca_cert_der: Some(vec![0x30, 0x03, 0x02, 0x01, 0x00]),
        server_capabilities: ServerCapability::ALL.to_vec(),
        sign_message: true,
        uuids: ProfileUuids::random(),
    }
}

/// The macOS `supportedOS` of a key, merged over its payload's.
fn effective_macos(payload: &Yaml, key: &Yaml) -> Option<serde_norway::Mapping> {
    let base = payload
        .get("supportedOS")?
        .get("macOS")?
        .as_mapping()
        .cloned()?;
    let mut m = base;
    if let Some(own) = key
        .get("supportedOS")
        .and_then(|s| s.get("macOS"))
        .and_then(Yaml::as_mapping)
    {
        for (k, v) in own {
            m.insert(k.clone(), v.clone());
        }
    }
    Some(m)
}

fn version_of(m: &serde_norway::Mapping, field: &str) -> Option<OsVersion> {
    m.get(field)
        .and_then(Yaml::as_str)
        .filter(|s| *s != "n/a")
        .map(|s| OsVersion::parse(s).unwrap())
}

/// Checks one emitted dictionary against the schema keys that describe it; recurses into
/// `<dictionary>` keys that have `subkeys` (the SCEP payload's `PayloadContent`).
fn check_dict(
    what: &str,
    dict: &Dictionary,
    schema_keys: &[Yaml],
    payload: &Yaml,
    problems: &mut Vec<String>,
) {
    let minimum = OsVersion::DEFAULT_MACOS_MINIMUM;
    for (emitted, value) in dict.iter() {
        let Some(k) = schema_keys.iter().find(|k| key_name(k) == emitted) else {
            problems.push(format!(
                "{what}: emits {emitted}, which the schema does not define"
            ));
            continue;
        };
        if let Some(m) = effective_macos(payload, k) {
            if m.get("introduced").and_then(Yaml::as_str) == Some("n/a") {
                problems.push(format!("{what}: {emitted} is not supported on macOS"));
            }
            if version_of(&m, "introduced").is_some_and(|v| v > minimum) {
                problems.push(format!("{what}: {emitted} is newer than macOS {minimum}"));
            }
            if version_of(&m, "removed").is_some_and(|v| v <= minimum) {
                problems.push(format!("{what}: {emitted} was removed from macOS"));
            }
            let mode = m
                .get("userenrollment")
                .and_then(|u| u.get("mode"))
                .and_then(Yaml::as_str);
            if matches!(mode, Some("forbidden" | "ignored")) {
                problems.push(format!(
                    "{what}: {emitted} is {} under macOS User Enrollment",
                    mode.unwrap_or_default()
                ));
            }
        }
        let subkeys = keys_of(k, "subkeys");
        if let (Value::Dictionary(inner), false) = (value, subkeys.is_empty()) {
            if k.get("type").and_then(Yaml::as_str) == Some("<dictionary>") {
                check_dict(
                    &format!("{what}.{emitted}"),
                    inner,
                    &subkeys,
                    payload,
                    problems,
                );
            }
        }
    }
    for k in schema_keys {
        let name = key_name(k);
        let required = k.get("presence").and_then(Yaml::as_str) == Some("required");
        let ue_required = effective_macos(payload, k).is_some_and(|m| {
            m.get("userenrollment")
                .and_then(|u| u.get("mode"))
                .and_then(Yaml::as_str)
                == Some("required")
                && version_of(&m, "removed").is_none_or(|v| v > minimum)
        });
        if (required || ue_required) && !dict.contains_key(name) {
            problems.push(format!("{what}: required key {name} is missing"));
        }
    }
}

fn built_profile() -> Dictionary {
    let bytes = build_enrollment_profile(&profile_input()).unwrap();
    Value::from_reader_xml(bytes.as_slice())
        .unwrap()
        .into_dictionary()
        .unwrap()
}

/// Everything in `top` that disagrees with the schema, and the payload types seen.
fn profile_problems(profiles: &Path, top: &Dictionary) -> (Vec<String>, BTreeSet<String>) {
    let mut problems = Vec::new();
    let top_schema = load_yaml(&profiles.join("TopLevel.yaml"));
    let top_keys = keys_of(&top_schema, "payloadkeys");
    check_dict(
        "Configuration",
        top,
        &top_keys,
        &top_schema["payload"],
        &mut problems,
    );

    let common_schema = load_yaml(&profiles.join("CommonPayloadKeys.yaml"));
    let common_keys = keys_of(&common_schema, "payloadkeys");
    let mut seen = BTreeSet::new();
    for p in top["PayloadContent"].as_array().unwrap() {
        let p = p.as_dictionary().unwrap();
        let ptype = p["PayloadType"].as_string().unwrap();
        seen.insert(ptype.to_owned());
        let schema = load_yaml(&profiles.join(format!("{ptype}.yaml")));
        let mut keys = keys_of(&schema, "payloadkeys");
        // Common keys apply unless the payload's own schema redefines them.
        for c in &common_keys {
            if !keys.iter().any(|k| key_name(k) == key_name(c)) {
                keys.push(c.clone());
            }
        }
        check_dict(ptype, p, &keys, &schema["payload"], &mut problems);
        let mode = schema["payload"]["supportedOS"]["macOS"]["userenrollment"]["mode"].as_str();
        if mode != Some("allowed") {
            problems.push(format!(
                "{ptype}: payload mode under User Enrollment is {mode:?}"
            ));
        }
    }
    (problems, seen)
}

#[test]
fn profile_keys_follow_the_schema() {
    let Some(dir) = schema_dir() else { return };
    let (problems, seen) = profile_problems(&dir.join("mdm/profiles"), &built_profile());
    assert_eq!(
        seen,
        BTreeSet::from([
            "com.apple.mdm".to_owned(),
            "com.apple.security.root".to_owned(),
            "com.apple.security.scep".to_owned()
        ])
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check above does catch unknown, ignored, missing and nested keys.
#[test]
fn profile_check_catches_mistakes() {
    let Some(dir) = schema_dir() else { return };
    let mut top = built_profile();
    let Some(Value::Array(payloads)) = top.get_mut("PayloadContent") else {
        panic!("no PayloadContent")
    };
    for p in payloads.iter_mut() {
        let p = p.as_dictionary_mut().unwrap();
        match p["PayloadType"].as_string().unwrap() {
            "com.apple.mdm" => {
                p.insert("AccessRights".into(), Value::Integer(1.into()));
                p.insert("Bogus".into(), Value::Boolean(true));
                p.remove("ServerURL");
                p.insert("RequiredAppIDForMDM".into(), Value::Integer(1.into()));
                p.insert("ManagedAppleID".into(), Value::String("a@b.c".into()));
            }
            "com.apple.security.scep" => {
                let inner = p
                    .get_mut("PayloadContent")
                    .unwrap()
                    .as_dictionary_mut()
                    .unwrap();
                inner.remove("URL");
            }
            _ => {}
        }
    }
    let (problems, _) = profile_problems(&dir.join("mdm/profiles"), &top);
    let text = problems.join("\n");
    for expected in [
        "com.apple.mdm: AccessRights is ignored under macOS User Enrollment",
        "com.apple.mdm: emits Bogus, which the schema does not define",
        "com.apple.mdm: required key ServerURL is missing",
        "com.apple.security.scep.PayloadContent: required key URL is missing",
        "com.apple.mdm: RequiredAppIDForMDM is not supported on macOS",
        "com.apple.mdm: ManagedAppleID was removed from macOS",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(problems.len(), 6, "{text}");
}

#[test]
fn schema_rangelists_hold_what_the_profile_uses() {
    let Some(dir) = schema_dir() else { return };
    let mdm = load_yaml(&dir.join("mdm/profiles/com.apple.mdm.yaml"));
    let keys = keys_of(&mdm, "payloadkeys");
    let find = |name: &str| keys.iter().find(|k| key_name(k) == name).unwrap().clone();
    let modes: Vec<String> = keys_of(&find("EnrollmentMode"), "rangelist")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert!(modes.iter().any(|m| m == "BYOD"), "{modes:?}");
    let caps_key = find("ServerCapabilities");
    let caps: Vec<&str> = caps_key["subkeys"][0]["rangelist"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for c in ServerCapability::ALL {
        assert!(caps.contains(&c.as_str()), "{} not in {caps:?}", c.as_str());
    }
    // AccessRights is ignored under macOS User Enrollment: the reason the builder omits it.
    let ar = find("AccessRights");
    assert_eq!(
        ar["supportedOS"]["macOS"]["userenrollment"]["mode"].as_str(),
        Some("ignored")
    );
}

/// A value of the schema type, for building complete sample messages.
fn sample_value(key: &Yaml) -> Value {
    if let Some(first) = key
        .get("rangelist")
        .and_then(Yaml::as_sequence)
        .and_then(|r| r.first())
        .and_then(Yaml::as_str)
    {
        return Value::String(first.to_owned());
    }
    match key.get("type").and_then(Yaml::as_str).unwrap() {
        "<string>" => Value::String(format!("{}-value", key_name(key))),
        "<data>" => Value::Data(b"sample".to_vec()),
        "<boolean>" => Value::Boolean(true),
        "<integer>" => Value::Integer(7.into()),
        "<dictionary>" => {
            let mut d = Dictionary::new();
            d.insert("K".into(), Value::String("V".into()));
            Value::Dictionary(d)
        }
        other => panic!("{}: no sample for {other}", key_name(key)),
    }
}

#[test]
fn checkin_decoder_keeps_every_schema_key() {
    let Some(dir) = schema_dir() else { return };
    let mut files: Vec<_> = std::fs::read_dir(dir.join("mdm/checkin"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut types = BTreeSet::new();
    for file in files {
        let schema = load_yaml(&file);
        let message_type = schema["payload"]["requesttype"]
            .as_str()
            .unwrap()
            .to_owned();
        types.insert(message_type.clone());
        let mut d = Dictionary::new();
        for k in keys_of(&schema, "payloadkeys") {
            d.insert(key_name(&k).to_owned(), sample_value(&k));
        }
        // Every message needs an identity; some schema files list none.
        if !d.contains_key("UDID") {
            d.insert("UDID".into(), Value::String("U1".into()));
        }
        let mut body = Vec::new();
        Value::Dictionary(d.clone())
            .to_writer_xml(&mut body)
            .unwrap();
        let m = decode_checkin(&body)
            .unwrap_or_else(|e| panic!("{message_type} with every schema key: {e}"));
        assert_eq!(m.message_type(), message_type);
        let again = Value::from_reader_xml(encode_checkin(&m).unwrap().as_slice())
            .unwrap()
            .into_dictionary()
            .unwrap();
        let sent: BTreeSet<_> = d.keys().cloned().collect();
        let kept: BTreeSet<_> = again.keys().cloned().collect();
        assert_eq!(
            sent, kept,
            "{message_type}: keys lost or invented by decode"
        );
    }
    let ours: BTreeSet<String> = lanyard_proto::CheckinMessage::MESSAGE_TYPES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        types, ours,
        "the enum covers exactly the schema's MessageTypes"
    );
}

#[test]
fn machine_info_decoder_reads_every_schema_key() {
    let Some(dir) = schema_dir() else { return };
    let schema = load_yaml(&dir.join("other/machineinfo.yaml"));
    let mut d = Dictionary::new();
    for k in keys_of(&schema, "payloadkeys") {
        let v = match key_name(&k) {
            "OS_VERSION" => Value::String("15.2".into()),
            _ => sample_value(&k),
        };
        d.insert(key_name(&k).to_owned(), v);
    }
    let mut body = Vec::new();
    Value::Dictionary(d.clone())
        .to_writer_xml(&mut body)
        .unwrap();
    let m = decode_machine_info(&body).unwrap();
    let fields: Vec<(&str, bool)> = vec![
        ("UDID", m.udid.is_some()),
        ("SERIAL", m.serial.is_some()),
        ("PRODUCT", !m.product.is_empty()),
        ("VERSION", !m.version.is_empty()),
        ("OS_VERSION", m.os_version.is_some()),
        (
            "SUPPLEMENTAL_BUILD_VERSION",
            m.supplemental_build_version.is_some(),
        ),
        (
            "SUPPLEMENTAL_OS_VERSION_EXTRA",
            m.supplemental_os_version_extra.is_some(),
        ),
        ("IMEI", m.imei.is_some()),
        ("MEID", m.meid.is_some()),
        ("LANGUAGE", m.language.is_some()),
        (
            "MDM_CAN_REQUEST_SOFTWARE_UPDATE",
            m.mdm_can_request_software_update.is_some(),
        ),
        ("PAIRING_TOKEN", m.pairing_token.is_some()),
        (
            "SOFTWARE_UPDATE_DEVICE_ID",
            m.software_update_device_id.is_some(),
        ),
    ];
    let decoded: BTreeSet<&str> = fields
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(k, _)| *k)
        .collect();
    let schema_keys: BTreeSet<&str> = d.keys().map(String::as_str).collect();
    assert_eq!(decoded, schema_keys);
    assert_eq!(m.os_version().unwrap(), Some(OsVersion::major_minor(15, 2)));
}
