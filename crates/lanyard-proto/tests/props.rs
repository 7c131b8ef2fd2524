//! Property tests: decoders never panic on any input, and what Lanyard encodes decodes back to
//! the same value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use lanyard_proto::checkin::{decode_checkin, encode_checkin, CheckinMessage};
use lanyard_proto::command::{
    decode_command, decode_command_report, encode_command, encode_command_report, Command,
};
use lanyard_proto::{decode_machine_info, OsVersion, UserIdentifier};
use plist::{Date, Dictionary, Integer, Value};
use proptest::prelude::*;

/// Text an XML plist can carry (no control characters other than tab, LF, CR).
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}-\u{8}\u{b}\u{c}\u{e}-\u{1f}\u{fffe}\u{ffff}]{0,24}"
}

fn non_empty_text() -> impl Strategy<Value = String> {
    "[^\u{0}-\u{8}\u{b}\u{c}\u{e}-\u{1f}\u{fffe}\u{ffff}]{1,24}"
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(|i| Value::Integer(i.into())),
        any::<u64>().prop_map(|u| Value::Integer(Integer::from(u))),
        any::<f64>()
            .prop_filter("finite", |r| r.is_finite())
            .prop_map(Value::Real),
        text().prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..48).prop_map(Value::Data),
        (0u64..4_000_000_000).prop_map(|s| {
            Value::Date(Date::from(SystemTime::UNIX_EPOCH + Duration::from_secs(s)))
        }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..5).prop_map(|m| {
                let mut d = Dictionary::new();
                for (k, v) in m {
                    d.insert(k, v);
                }
                Value::Dictionary(d)
            }),
        ]
    })
}

fn dictionary() -> impl Strategy<Value = Dictionary> {
    prop::collection::btree_map(text(), value(), 0..6).prop_map(|m| {
        let mut d = Dictionary::new();
        for (k, v) in m {
            d.insert(k, v);
        }
        d
    })
}

/// Pieces of XML plist markup, real and broken, to reach deep into the parsers.
fn markup_soup() -> impl Strategy<Value = Vec<u8>> {
    let tokens = prop::sample::select(vec![
        "<dict>",
        "</dict>",
        "<dict/>",
        "<array>",
        "</array>",
        "<array/>",
        "<key>MessageType</key>",
        "<string>TokenUpdate</string>",
        "<string>Authenticate</string>",
        "<key>Status</key>",
        "<string>Acknowledged</string>",
        "<key>UDID</key>",
        "<key>EnrollmentID</key>",
        "<key>EnrollmentUserID</key>",
        "<string>U1</string>",
        "<key>Token</key>",
        "<data>AAEC</data>",
        "<data>!!</data>",
        "<key>Topic</key>",
        "<key>CommandUUID</key>",
        "<key>ErrorChain</key>",
        "<integer>12</integer>",
        "<integer>99999999999999999999999</integer>",
        "<real>1.5</real>",
        "<date>2024-01-01T00:00:00Z</date>",
        "<true/>",
        "<false/>",
        "<!--",
        "-->",
        "<?pi ",
        "?>",
        "<![CDATA[",
        "]]>",
        "\"",
        "'",
        "<key a=\"/>\">",
        "&lt;",
        "&#0;",
        "&bogus;",
        "<",
        ">",
        "\u{feff}",
    ]);
    prop::collection::vec(tokens, 0..40).prop_map(|t| {
        let mut s =
            String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><plist version=\"1.0\"><dict>");
        for piece in t {
            s.push_str(piece);
        }
        s.push_str("</dict></plist>");
        s.into_bytes()
    })
}

fn all_decoders(bytes: &[u8]) {
    let _ = decode_checkin(bytes);
    let _ = decode_command_report(bytes);
    let _ = decode_command(bytes);
    let _ = decode_machine_info(bytes);
}

const MESSAGE_TYPES: [&str; 8] = CheckinMessage::MESSAGE_TYPES;

/// A check-in body of a known `MessageType` with every key it needs and random extras.
fn checkin_body() -> impl Strategy<Value = Dictionary> {
    (
        0..MESSAGE_TYPES.len(),
        prop::option::of(non_empty_text()),
        prop::option::of(non_empty_text()),
        prop::option::of(non_empty_text()),
        prop::option::of(non_empty_text()),
        non_empty_text(),
        prop::collection::vec(any::<u8>(), 1..40),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
    )
        .prop_map(
            |(t, udid, user_id, enrollment_id, enrollment_user_id, word, bytes, flag, data)| {
                let s = |v: &str| Value::String(v.to_owned());
                let mut d = Dictionary::new();
                d.insert("MessageType".into(), s(MESSAGE_TYPES[t]));
                // A device id never contains ':' (see lanyard_proto::identity).
                let clean = |v: String| v.replace(':', "-");
                match (udid, enrollment_id) {
                    (Some(u), e) => {
                        d.insert("UDID".into(), s(&clean(u)));
                        if let Some(e) = e {
                            d.insert("EnrollmentID".into(), s(&clean(e)));
                        }
                    }
                    (None, e) => {
                        d.insert("EnrollmentID".into(), s(&clean(e.unwrap_or(word.clone()))));
                    }
                }
                let user = user_id.unwrap_or_else(|| word.clone());
                d.insert("UserID".into(), s(&user));
                if let Some(eu) = enrollment_user_id {
                    d.insert("EnrollmentUserID".into(), s(&eu));
                }
                for key in [
                    "Topic",
                    "PushMagic",
                    "Endpoint",
                    "TokenServiceType",
                    "DigestResponse",
                ] {
                    d.insert(key.into(), s(&word));
                }
                d.insert("Token".into(), Value::Data(bytes));
                if let Some(flag) = flag {
                    d.insert("AwaitingConfiguration".into(), Value::Boolean(flag));
                }
                if let Some(data) = data {
                    d.insert("Data".into(), Value::Data(data.clone()));
                    d.insert("UnlockToken".into(), Value::Data(data.clone()));
                    d.insert("BootstrapToken".into(), Value::Data(data));
                }
                d
            },
        )
}

fn to_xml(d: &Dictionary) -> Vec<u8> {
    let mut out = Vec::new();
    Value::Dictionary(d.clone())
        .to_writer_xml(&mut out)
        .unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        all_decoders(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_markup(bytes in markup_soup()) {
        all_decoders(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_plists(d in dictionary(), t in 0..MESSAGE_TYPES.len()) {
        let mut d = d;
        d.insert("MessageType".into(), Value::String(MESSAGE_TYPES[t].into()));
        all_decoders(&to_xml(&d));
    }

    #[test]
    fn parsers_never_panic_on_text(s in "\\PC{0,80}") {
        let _ = UserIdentifier::parse(&s);
        let _ = OsVersion::parse(&s);
    }

    #[test]
    fn command_round_trips(
        uuid in non_empty_text(),
        request_type in non_empty_text(),
        payload in dictionary(),
    ) {
        let mut payload = payload;
        payload.remove("RequestType");
        let command = Command::new(uuid, request_type, payload);
        let bytes = encode_command(&command).unwrap();
        prop_assert_eq!(decode_command(&bytes).unwrap(), command);
    }

    #[test]
    fn command_report_round_trips(
        status in prop::sample::select(vec!["Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow"]),
        uuid in non_empty_text(),
        udid in non_empty_text(),
        result in dictionary(),
    ) {
        let mut d = result;
        d.insert("Status".into(), Value::String(status.into()));
        d.insert("CommandUUID".into(), Value::String(uuid));
        d.insert("UDID".into(), Value::String(udid.replace(':', "-")));
        d.remove("ErrorChain");
        for key in ["UserID", "UserShortName", "UserLongName", "EnrollmentID", "EnrollmentUserID"] {
            d.remove(key);
        }
        let report = decode_command_report(&to_xml(&d)).unwrap();
        let again = decode_command_report(&encode_command_report(&report).unwrap()).unwrap();
        prop_assert_eq!(again, report);
    }

    #[test]
    fn checkin_round_trips(body in checkin_body()) {
        let message = decode_checkin(&to_xml(&body)).unwrap();
        let again = decode_checkin(&encode_checkin(&message).unwrap()).unwrap();
        prop_assert_eq!(again, message);
    }

    #[test]
    fn os_version_display_parses_back(a in 0u32..100, b in 0u32..100, c in 0u32..100, n in 1usize..4) {
        let v = match n {
            1 => OsVersion::major_only(a),
            2 => OsVersion::major_minor(a, b),
            _ => OsVersion::new(a, b, c),
        };
        prop_assert_eq!(OsVersion::parse(&v.to_string()).unwrap(), v);
    }
}

/// Every key name of the declaration table (so generated payloads reach nested keys).
fn schema_key_names() -> Vec<String> {
    use lanyard_proto::declaration::{declarations, KeySchema};
    fn walk(keys: &[KeySchema], out: &mut Vec<String>) {
        for k in keys {
            out.push(k.key.to_owned());
            walk(k.subkeys, out);
        }
    }
    let mut out = vec!["Unknown".to_owned()];
    for e in declarations() {
        walk(e.keys, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn json_value(names: Vec<String>) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<f64>()
            .prop_filter("finite", |r| r.is_finite())
            .prop_map(J::from),
        prop::sample::select(vec!["EAS", "EWS", "MDM", "None", "x", "QUFB"]).prop_map(J::from),
        text().prop_map(J::String),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            prop::collection::btree_map(prop::sample::select(names.clone()), inner, 0..6)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Validation and asset lookup never panic on any JSON, and a refusal names the `Type` or a
    /// key under `Payload`.
    #[test]
    fn declaration_checks_never_panic(
        t in prop::sample::select(
            lanyard_proto::declaration::declarations().iter().map(|e| e.name).collect::<Vec<_>>()
        ),
        payload in json_value(schema_key_names()),
    ) {
        use lanyard_proto::declaration::{asset_references, validate_payload};
        match validate_payload(t, &payload) {
            Ok(()) => prop_assert!(payload.is_object()),
            Err(e) => prop_assert!(e.key.starts_with("Payload"), "{e}"),
        }
        for r in asset_references(t, &payload) {
            prop_assert!(r.key.starts_with("Payload."));
            prop_assert!(!r.allowed_types.is_empty());
        }
    }
}
