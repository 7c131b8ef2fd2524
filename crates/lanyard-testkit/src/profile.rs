//! Reading the enrollment profile the way a Mac installing it would: find the MDM and SCEP
//! payloads, and refuse what macOS refuses for an account-driven User Enrollment.

use plist::{Dictionary, Value};

/// The `com.apple.mdm` payload.
#[derive(Debug, Clone, PartialEq)]
pub struct MdmPayload {
    /// The payload's `PayloadIdentifier`.
    pub payload_identifier: String,
    /// The payload's `PayloadUUID`.
    pub payload_uuid: String,
    /// `ServerURL` (command channel).
    pub server_url: String,
    /// `CheckInURL` (check-in; the schema says `ServerURL` when absent).
    pub checkin_url: String,
    /// `Topic`.
    pub topic: String,
    /// `SignMessage`.
    pub sign_message: bool,
    /// `EnrollmentMode`.
    pub enrollment_mode: Option<String>,
    /// `AssignedManagedAppleID`.
    pub assigned_managed_apple_id: Option<String>,
    /// `IdentityCertificateUUID`.
    pub identity_certificate_uuid: String,
    /// `AccessRights` as found, whatever its type, if (wrongly, for BYOD) present: its mere
    /// presence is what the Mac refuses.
    pub access_rights: Option<Value>,
    /// `ServerCapabilities`.
    pub server_capabilities: Vec<String>,
    /// `CheckOutWhenRemoved`.
    pub check_out_when_removed: bool,
}

/// The `com.apple.security.scep` payload.
#[derive(Clone, PartialEq, Eq)]
pub struct ScepPayload {
    /// The payload's `PayloadUUID`.
    pub payload_uuid: String,
    /// `URL`.
    pub url: String,
    /// `Name` (sent as the `message` parameter of GetCACert).
    pub name: Option<String>,
    /// `Challenge`.
    pub challenge: Option<String>,
    /// `Subject` as (type, value) pairs, e.g. `("CN", "…")`.
    pub subject: Vec<(String, String)>,
    /// `Keysize` (1024 when absent, as the schema says).
    pub key_size: u32,
    /// `Key Type`.
    pub key_type: Option<String>,
    /// `CAFingerprint`.
    pub ca_fingerprint: Option<Vec<u8>>,
    /// `KeyIsExtractable` (true when absent, as the schema says).
    pub key_is_extractable: bool,
}

impl std::fmt::Debug for ScepPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScepPayload")
            .field("payload_uuid", &self.payload_uuid)
            .field("url", &self.url)
            .field("name", &self.name)
            .field("challenge", &self.challenge.as_ref().map(|_| "<redacted>"))
            .field("subject", &self.subject)
            .field("key_size", &self.key_size)
            .field("key_is_extractable", &self.key_is_extractable)
            .finish()
    }
}

/// An enrollment profile, as far as the simulated Mac needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentProfile {
    /// Top-level `PayloadIdentifier`.
    pub identifier: String,
    /// Top-level `PayloadUUID`.
    pub uuid: String,
    /// Top-level `PayloadDisplayName`.
    pub display_name: Option<String>,
    /// Top-level `PayloadOrganization`.
    pub organization: Option<String>,
    /// Top-level `PayloadScope`.
    pub scope: Option<String>,
    /// The MDM payload.
    pub mdm: MdmPayload,
    /// The SCEP payload.
    pub scep: ScepPayload,
    /// DER certificates of `com.apple.security.root` payloads.
    pub root_certificates: Vec<Vec<u8>>,
    /// `PayloadType` of every payload, in order.
    pub payload_types: Vec<String>,
    /// The whole top-level dictionary (for `ProfileList` answers).
    pub raw: Dictionary,
}

fn string(d: &Dictionary, key: &str) -> Option<String> {
    d.get(key).and_then(Value::as_string).map(str::to_owned)
}

fn req_string(d: &Dictionary, key: &str, ctx: &str) -> Result<String, String> {
    match d.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("{ctx}: {key} is empty")),
        Some(other) => Err(format!("{ctx}: {key} is not a string ({other:?})")),
        None => Err(format!("{ctx}: {key} is missing")),
    }
}

fn bool_of(d: &Dictionary, key: &str) -> bool {
    d.get(key).and_then(Value::as_boolean).unwrap_or(false)
}

fn int_of(d: &Dictionary, key: &str) -> Option<i64> {
    match d.get(key) {
        Some(Value::Integer(i)) => i.as_signed(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Read Apple's X.500 subject array `[[["CN","x"]],[["O","y"]]]` into pairs.
fn subject_of(v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Some(rdns) = v.as_array() else {
        return Err("SCEP Subject is not an array".into());
    };
    let mut out = Vec::new();
    for rdn in rdns {
        let Some(attrs) = rdn.as_array() else {
            return Err("SCEP Subject entry is not an array".into());
        };
        for attr in attrs {
            match attr.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => out.push((k.clone(), v.clone())),
                _ => return Err("SCEP Subject attribute is not [type, value]".into()),
            }
        }
    }
    Ok(out)
}

/// Parse the (already unwrapped) profile plist.
pub fn parse_enrollment_profile(bytes: &[u8]) -> Result<EnrollmentProfile, String> {
    let top = plist::from_bytes::<Value>(bytes)
        .map_err(|e| format!("the profile is not a property list: {e}"))?;
    let Value::Dictionary(top) = top else {
        return Err("the profile is not a dictionary".into());
    };
    let ptype = string(&top, "PayloadType");
    if ptype.as_deref() != Some("Configuration") {
        return Err(format!(
            "top-level PayloadType is {ptype:?}, expected \"Configuration\""
        ));
    }
    let payloads = top
        .get("PayloadContent")
        .and_then(Value::as_array)
        .ok_or("the profile has no PayloadContent array")?;
    let mut mdm = None;
    let mut scep = None;
    let mut roots = Vec::new();
    let mut types = Vec::new();
    for p in payloads {
        let Some(d) = p.as_dictionary() else {
            return Err("a payload is not a dictionary".into());
        };
        let t = string(d, "PayloadType").unwrap_or_default();
        types.push(t.clone());
        match t.as_str() {
            "com.apple.mdm" => {
                let ctx = "com.apple.mdm payload";
                let server_url = req_string(d, "ServerURL", ctx)?;
                mdm = Some(MdmPayload {
                    payload_identifier: req_string(d, "PayloadIdentifier", ctx)?,
                    payload_uuid: req_string(d, "PayloadUUID", ctx)?,
                    checkin_url: string(d, "CheckInURL").unwrap_or_else(|| server_url.clone()),
                    server_url,
                    topic: req_string(d, "Topic", ctx)?,
                    sign_message: bool_of(d, "SignMessage"),
                    enrollment_mode: string(d, "EnrollmentMode"),
                    assigned_managed_apple_id: string(d, "AssignedManagedAppleID"),
                    identity_certificate_uuid: req_string(d, "IdentityCertificateUUID", ctx)?,
                    access_rights: d.get("AccessRights").cloned(),
                    server_capabilities: d
                        .get("ServerCapabilities")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_string)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                    check_out_when_removed: bool_of(d, "CheckOutWhenRemoved"),
                });
            }
            "com.apple.security.scep" => {
                let ctx = "com.apple.security.scep payload";
                let c = d
                    .get("PayloadContent")
                    .and_then(Value::as_dictionary)
                    .ok_or("com.apple.security.scep payload has no PayloadContent dictionary")?;
                scep = Some(ScepPayload {
                    payload_uuid: req_string(d, "PayloadUUID", ctx)?,
                    url: req_string(c, "URL", ctx)?,
                    name: string(c, "Name"),
                    challenge: string(c, "Challenge"),
                    subject: subject_of(c.get("Subject"))?,
                    key_size: int_of(c, "Keysize")
                        .and_then(|k| u32::try_from(k).ok())
                        .unwrap_or(1024),
                    key_type: string(c, "Key Type"),
                    ca_fingerprint: c
                        .get("CAFingerprint")
                        .and_then(Value::as_data)
                        .map(<[u8]>::to_vec),
                    key_is_extractable: c
                        .get("KeyIsExtractable")
                        .and_then(Value::as_boolean)
                        .unwrap_or(true),
                });
            }
            "com.apple.security.root" | "com.apple.security.pkcs1" => {
                if let Some(der) = d.get("PayloadContent").and_then(Value::as_data) {
                    roots.push(der.to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(EnrollmentProfile {
        identifier: req_string(&top, "PayloadIdentifier", "profile")?,
        uuid: req_string(&top, "PayloadUUID", "profile")?,
        display_name: string(&top, "PayloadDisplayName"),
        organization: string(&top, "PayloadOrganization"),
        scope: string(&top, "PayloadScope"),
        mdm: mdm.ok_or("the profile has no com.apple.mdm payload")?,
        scep: scep.ok_or("the profile has no com.apple.security.scep payload")?,
        root_certificates: roots,
        payload_types: types,
        raw: top,
    })
}

/// Whether `topic` is an MDM push topic: Apple's schema for `com.apple.mdm` says "The topic
/// must begin with the 'com.apple.mgmt.' prefix", and the push certificates Apple issues carry
/// `com.apple.mgmt.External.<UUID>` in their subject's UID; so the prefix, then dot-separated
/// non-empty labels of letters, digits and `-` (nothing else: no spaces, no empty labels).
pub fn is_mdm_push_topic(topic: &str) -> bool {
    topic.strip_prefix("com.apple.mgmt.").is_some_and(|rest| {
        !rest.is_empty()
            && rest.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    })
}

/// The profile's `Topic` must be the topic of the server's push certificate, when the Mac is
/// told what that is: the schema says the certificate that sends the pushes "must have the
/// same topic in its subject", and the topic can never change afterwards, so a Mac enrolled
/// under any other topic could never be woken.
pub fn check_push_topic(p: &EnrollmentProfile, push_certificate_topic: &str) -> Result<(), String> {
    if p.mdm.topic != push_certificate_topic {
        return Err(format!(
            "Topic {:?} is not the topic of the server's push certificate ({push_certificate_topic:?}): \
             pushes for this Mac could never be sent",
            p.mdm.topic
        ));
    }
    Ok(())
}

/// The checks macOS makes before installing an account-driven User Enrollment profile, and the
/// account it is expected for: `EnrollmentMode` `BYOD`, `AssignedManagedAppleID` equal to
/// `signed_in_as` (case-insensitive; the managed Apple Account the server maps the typed
/// identifier to, which may differ from what was typed), no `AccessRights` at all (Apple: the device cancels a BYOD
/// enrollment that has it, whatever its value), https `ServerURL`/`CheckInURL`, an MDM push
/// topic ([`is_mdm_push_topic`]), and `IdentityCertificateUUID` naming the SCEP payload.
pub fn check_user_enrollment(p: &EnrollmentProfile, signed_in_as: &str) -> Result<(), String> {
    let m = &p.mdm;
    if m.enrollment_mode.as_deref() != Some("BYOD") {
        return Err(format!(
            "EnrollmentMode is {:?}, expected \"BYOD\"",
            m.enrollment_mode
        ));
    }
    match &m.assigned_managed_apple_id {
        None => return Err("AssignedManagedAppleID is missing".into()),
        Some(id) if !id.eq_ignore_ascii_case(signed_in_as) => {
            return Err(format!(
                "AssignedManagedAppleID {id:?} is not the expected account ({signed_in_as:?})"
            ));
        }
        Some(_) => {}
    }
    if let Some(r) = &m.access_rights {
        return Err(format!(
            "AccessRights ({r:?}) must not be present with EnrollmentMode BYOD"
        ));
    }
    for (k, u) in [("ServerURL", &m.server_url), ("CheckInURL", &m.checkin_url)] {
        if !u.starts_with("https://") {
            return Err(format!("{k} {u:?} is not https"));
        }
    }
    if !is_mdm_push_topic(&m.topic) {
        return Err(format!("Topic {:?} is not an MDM push topic", m.topic));
    }
    if !m
        .identity_certificate_uuid
        .eq_ignore_ascii_case(&p.scep.payload_uuid)
    {
        return Err(format!(
            "IdentityCertificateUUID {} does not name the SCEP payload ({})",
            m.identity_certificate_uuid, p.scep.payload_uuid
        ));
    }
    Ok(())
}

/// Whether `new` is `installed` renewed: the same profile (`PayloadIdentifier` and
/// `PayloadUUID`) with the same `com.apple.mdm` payload (its `PayloadIdentifier` and
/// `PayloadUUID`). A device holds one MDM payload; any other profile carrying one is not an
/// update of it.
pub fn is_renewal_of(new: &EnrollmentProfile, installed: &EnrollmentProfile) -> bool {
    new.identifier == installed.identifier
        && new.uuid.eq_ignore_ascii_case(&installed.uuid)
        && new.mdm.payload_identifier == installed.mdm.payload_identifier
        && new
            .mdm
            .payload_uuid
            .eq_ignore_ascii_case(&installed.mdm.payload_uuid)
}

/// The rules Apple's schema (`com.apple.mdm.yaml`) sets for updating an installed MDM payload:
/// `Topic`, `ServerURL`, `CheckInURL`, `AssignedManagedAppleID` and `EnrollmentMode` must not
/// change, the `com.apple.mdm.per-user-connections` capability must not be added or removed,
/// and no access right may be added; "any change is an error, and the update rejected".
pub fn check_mdm_update(new: &MdmPayload, installed: &MdmPayload) -> Result<(), String> {
    let same = |key: &str, a: &Option<String>, b: &Option<String>| {
        if a == b {
            Ok(())
        } else {
            Err(format!("{key} changed from {b:?} to {a:?}"))
        }
    };
    same(
        "Topic",
        &Some(new.topic.clone()),
        &Some(installed.topic.clone()),
    )?;
    same(
        "ServerURL",
        &Some(new.server_url.clone()),
        &Some(installed.server_url.clone()),
    )?;
    same(
        "CheckInURL",
        &Some(new.checkin_url.clone()),
        &Some(installed.checkin_url.clone()),
    )?;
    same(
        "AssignedManagedAppleID",
        &new.assigned_managed_apple_id,
        &installed.assigned_managed_apple_id,
    )?;
    same(
        "EnrollmentMode",
        &new.enrollment_mode,
        &installed.enrollment_mode,
    )?;
    let per_user = |m: &MdmPayload| {
        m.server_capabilities
            .iter()
            .any(|c| c == "com.apple.mdm.per-user-connections")
    };
    if per_user(new) != per_user(installed) {
        return Err(
            "the com.apple.mdm.per-user-connections capability was added or removed".into(),
        );
    }
    // A User Enrollment has no AccessRights at all; an update must not bring any (or change
    // what an installed profile had).
    let rights = |m: &MdmPayload| {
        m.access_rights
            .as_ref()
            .map(|v| v.as_signed_integer().unwrap_or(-1))
            .unwrap_or(0)
    };
    let added = rights(new) & !rights(installed);
    if added != 0 || (new.access_rights.is_some() && installed.access_rights.is_none()) {
        return Err(format!("access rights {:?} were added", new.access_rights));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_proto::profile::{
        build_enrollment_profile, EnrollmentProfileInput, ProfileUuids, ScepSettings,
        ServerCapability,
    };
    use lanyard_proto::SecretString;

    fn input() -> EnrollmentProfileInput {
        EnrollmentProfileInput {
            organisation: "Example Ltd".into(),
            profile_identifier: "com.example.lanyard.enroll".into(),
            checkin_url: "https://mdm.example.com/mdm/checkin".into(),
            server_url: "https://mdm.example.com/mdm/command".into(),
            push_topic: "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9".into(),
            assigned_managed_apple_id: "Ann@Example.com".into(),
            scep: ScepSettings {
                url: "https://mdm.example.com/scep".into(),
                challenge: SecretString::new("one-time"),
                subject: vec![
                    ("O".into(), "Example Ltd".into()),
                    ("CN".into(), "Lanyard device identity".into()),
                ],
                key_size: 2048,
                name: Some("Lanyard CA".into()),
                ca_fingerprint: None,
            },
            ca_cert_der: Some(vec![0x30, 0x03, 0x02, 0x01, 0x01]),
            server_capabilities: ServerCapability::ALL.to_vec(),
            sign_message: true,
            uuids: ProfileUuids::random(),
        }
    }

    #[test]
    fn reads_the_profile_lanyard_builds() {
        let bytes = build_enrollment_profile(&input()).unwrap();
        let p = parse_enrollment_profile(&bytes).unwrap();
        assert_eq!(p.mdm.server_url, "https://mdm.example.com/mdm/command");
        assert_eq!(p.mdm.checkin_url, "https://mdm.example.com/mdm/checkin");
        assert!(p.mdm.sign_message);
        assert_eq!(p.mdm.enrollment_mode.as_deref(), Some("BYOD"));
        assert_eq!(p.scep.url, "https://mdm.example.com/scep");
        assert_eq!(p.scep.challenge.as_deref(), Some("one-time"));
        assert_eq!(
            p.scep.subject,
            vec![
                ("O".to_owned(), "Example Ltd".to_owned()),
                ("CN".to_owned(), "Lanyard device identity".to_owned())
            ]
        );
        assert_eq!(p.scep.key_size, 2048);
        assert!(!p.scep.key_is_extractable);
        assert_eq!(p.root_certificates.len(), 1);
        assert_eq!(p.scope.as_deref(), Some("User"));
        assert!(!format!("{:?}", p.scep).contains("one-time"));
        check_user_enrollment(&p, "ann@example.com").unwrap();
        let err = check_user_enrollment(&p, "bob@example.com").unwrap_err();
        assert!(err.contains("not the expected account"), "{err}");
    }

    #[test]
    fn refuses_what_macos_refuses() {
        let bytes = build_enrollment_profile(&input()).unwrap();
        let mut p = parse_enrollment_profile(&bytes).unwrap();
        p.mdm.access_rights = Some(Value::Integer(8191.into()));
        assert!(check_user_enrollment(&p, "ann@example.com")
            .unwrap_err()
            .contains("AccessRights"));
        p.mdm.access_rights = None;
        for bad in [
            "com.apple.mgmt.",
            "com.apple.mgmt",
            "com.example.mdm",
            "com.apple.mgmt.External.",
            "com.apple.mgmt..x",
            "com.apple.mgmt.External.a b",
            "com.apple.mgmt.External/x",
            " com.apple.mgmt.External.x",
        ] {
            p.mdm.topic = bad.into();
            let err = check_user_enrollment(&p, "ann@example.com").unwrap_err();
            assert!(err.contains("push topic"), "{bad}: {err}");
        }
        p.mdm.topic = "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9".into();
        check_user_enrollment(&p, "ann@example.com").unwrap();
        check_push_topic(
            &p,
            "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9",
        )
        .unwrap();
        let err = check_push_topic(&p, "com.apple.mgmt.External.other").unwrap_err();
        assert!(err.contains("push certificate"), "{err}");
        p.mdm.enrollment_mode = None;
        assert!(check_user_enrollment(&p, "ann@example.com")
            .unwrap_err()
            .contains("BYOD"));
        assert!(parse_enrollment_profile(b"<plist><array/></plist>").is_err());
    }

    #[test]
    fn renewals_keep_identifiers_and_immutable_keys() {
        let first = input();
        let installed =
            parse_enrollment_profile(&build_enrollment_profile(&first).unwrap()).unwrap();
        let mut renewed_input = first.clone();
        renewed_input.uuids.scep = uuid::Uuid::new_v4();
        renewed_input.scep.challenge = SecretString::new("another one-time");
        let renewed =
            parse_enrollment_profile(&build_enrollment_profile(&renewed_input).unwrap()).unwrap();
        assert!(is_renewal_of(&renewed, &installed));
        check_mdm_update(&renewed.mdm, &installed.mdm).unwrap();

        let mut other = first.clone();
        other.uuids = ProfileUuids::random();
        let other = parse_enrollment_profile(&build_enrollment_profile(&other).unwrap()).unwrap();
        assert!(!is_renewal_of(&other, &installed), "new MDM payload UUID");

        let mut moved = renewed.mdm.clone();
        moved.server_url = "https://elsewhere.example.com/mdm".into();
        assert!(check_mdm_update(&moved, &installed.mdm)
            .unwrap_err()
            .contains("ServerURL"));
        let mut topic = renewed.mdm.clone();
        topic.topic = "com.apple.mgmt.External.other".into();
        assert!(check_mdm_update(&topic, &installed.mdm)
            .unwrap_err()
            .contains("Topic"));
        let mut caps = renewed.mdm.clone();
        caps.server_capabilities.clear();
        assert!(check_mdm_update(&caps, &installed.mdm)
            .unwrap_err()
            .contains("per-user-connections"));
        let mut rights = renewed.mdm.clone();
        rights.access_rights = Some(Value::Integer(8191.into()));
        assert!(check_mdm_update(&rights, &installed.mdm)
            .unwrap_err()
            .contains("access rights"));
        let mut who = renewed.mdm;
        who.assigned_managed_apple_id = Some("bob@example.com".into());
        assert!(check_mdm_update(&who, &installed.mdm)
            .unwrap_err()
            .contains("AssignedManagedAppleID"));
    }

    #[test]
    fn access_rights_of_any_type_is_refused() {
        // Lanyard's builder never writes AccessRights; add it the way another server might.
        let bytes = build_enrollment_profile(&input()).unwrap();
        for value in [
            Value::Integer(8191.into()),
            Value::String("8191".into()),
            Value::Real(1.0),
            Value::Boolean(false),
        ] {
            let Value::Dictionary(mut top) = plist::from_bytes::<Value>(&bytes).unwrap() else {
                panic!("not a dictionary")
            };
            let Some(Value::Array(payloads)) = top.get_mut("PayloadContent") else {
                panic!("no PayloadContent")
            };
            for p in payloads.iter_mut() {
                let Value::Dictionary(d) = p else { continue };
                if d.get("PayloadType").and_then(Value::as_string) == Some("com.apple.mdm") {
                    d.insert("AccessRights".into(), value.clone());
                }
            }
            let mut out = Vec::new();
            plist::to_writer_xml(&mut out, &Value::Dictionary(top)).unwrap();
            let p = parse_enrollment_profile(&out).unwrap();
            let err = check_user_enrollment(&p, "ann@example.com").unwrap_err();
            assert!(err.contains("AccessRights"), "{value:?}: {err}");
        }
    }
}
