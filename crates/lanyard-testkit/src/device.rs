//! What the simulated Mac says about itself, as the property lists a Mac sends: MachineInfo,
//! check-in messages and command reports.
//!
//! The plists are written here with the `plist` crate, from Apple's schema
//! (`other/machineinfo.yaml`, `mdm/checkin/*.yaml`), and deliberately *not* with
//! `lanyard-proto`'s encoders: the simulated Mac is an independent client, so a bug in the
//! server's codec shows up as a failing test instead of cancelling out. The unit tests decode
//! every body with `lanyard-proto` to prove the two agree.
//!
//! A User Enrollment never reveals hardware identifiers: no `UDID`, `SERIAL`/`SerialNumber`,
//! `IMEI` or `MEID` appear in any body built here.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509Builder, X509NameBuilder, X509NameRef, X509};
use plist::{Dictionary, Value};

/// Facts about the simulated Mac.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// Model identifier, `PRODUCT` / `ProductName` / `Model` (e.g. `Mac14,2`).
    pub product: String,
    /// Marketing model name, `ModelName` (e.g. `MacBook Air`).
    pub model_name: String,
    /// macOS version, `OS_VERSION` / `OSVersion` (e.g. `15.2`).
    pub os_version: String,
    /// macOS build, `VERSION` / `BuildVersion` (e.g. `24C101`).
    pub build_version: String,
    /// `LANGUAGE` (e.g. `en-US`).
    pub language: String,
    /// `SOFTWARE_UPDATE_DEVICE_ID` (the board identifier used for update look-ups).
    pub software_update_device_id: String,
}

impl DeviceFacts {
    /// Facts for `model` running macOS `os_version`; build, model name and board id are
    /// plausible values derived from them.
    pub fn new(model: &str, os_version: &str) -> Self {
        DeviceFacts {
            product: model.to_owned(),
            model_name: model_name_for(model).to_owned(),
            os_version: os_version.to_owned(),
            build_version: build_version_for(os_version),
            language: "en-US".to_owned(),
            software_update_device_id: board_id_for(model).to_owned(),
        }
    }
}

/// The marketing name of a Mac model identifier (a few known ones, else `Mac`).
pub fn model_name_for(model: &str) -> &'static str {
    match model {
        "Mac14,2" | "Mac14,15" | "Mac15,12" | "Mac15,13" | "Mac16,12" | "Mac16,13" => "MacBook Air",
        "Mac14,5" | "Mac14,6" | "Mac14,7" | "Mac14,9" | "Mac14,10" | "Mac15,3" | "Mac15,6"
        | "Mac15,7" | "Mac15,8" | "Mac15,9" | "Mac15,10" | "Mac15,11" | "Mac16,1" | "Mac16,5"
        | "Mac16,6" | "Mac16,7" | "Mac16,8" => "MacBook Pro",
        "Mac14,3" | "Mac14,12" | "Mac16,10" | "Mac16,11" => "Mac mini",
        "Mac13,1" | "Mac13,2" | "Mac14,13" | "Mac14,14" | "Mac16,9" => "Mac Studio",
        "Mac15,4" | "Mac15,5" | "Mac16,2" | "Mac16,3" => "iMac",
        m if m.starts_with("MacBookAir") => "MacBook Air",
        m if m.starts_with("MacBookPro") => "MacBook Pro",
        m if m.starts_with("Macmini") => "Mac mini",
        m if m.starts_with("iMac") => "iMac",
        _ => "Mac",
    }
}

fn board_id_for(model: &str) -> &'static str {
    match model {
        "Mac14,2" => "J413AP",
        "Mac14,7" => "J493AP",
        "Mac14,3" => "J473AP",
        "Mac15,3" => "J504AP",
        // What a virtual Mac reports.
        _ => "VMA2MACOSAP",
    }
}

/// A plausible macOS build for a version: real builds for releases we know, otherwise one in
/// Apple's pattern (Darwin major, a letter per minor release, a number).
pub fn build_version_for(os_version: &str) -> String {
    let known = match os_version {
        "14.0" => Some("23A344"),
        "14.6" => Some("23G80"),
        "14.7" => Some("23H124"),
        "15.0" => Some("24A335"),
        "15.1" => Some("24B83"),
        "15.2" => Some("24C101"),
        "15.3" => Some("24D60"),
        "15.4" => Some("24E248"),
        "15.5" => Some("24F74"),
        "15.6" => Some("24G84"),
        _ => None,
    };
    if let Some(b) = known {
        return b.to_owned();
    }
    let mut parts = os_version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(15);
    let minor = parts.next().unwrap_or(0);
    let darwin = match major {
        11..=15 => major + 9,
        26.. => major - 1,
        10 => 19,
        _ => 24,
    };
    let letter = char::from(b'A' + u8::try_from(minor.min(25)).unwrap_or(0));
    format!("{darwin}{letter}100")
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// Write a dictionary as an XML plist (the bytes a Mac sends).
pub fn to_xml(dict: Dictionary) -> Result<Vec<u8>, plist::Error> {
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &Value::Dictionary(dict))?;
    Ok(out)
}

/// The MachineInfo dictionary of a Mac doing a User Enrollment: `PRODUCT`, `VERSION`,
/// `OS_VERSION`, `LANGUAGE`, `SOFTWARE_UPDATE_DEVICE_ID`, `MDM_CAN_REQUEST_SOFTWARE_UPDATE`;
/// never `UDID` or `SERIAL` (schema: forbidden under User Enrollment).
pub fn machine_info(facts: &DeviceFacts) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("PRODUCT".into(), s(&facts.product));
    d.insert("VERSION".into(), s(&facts.build_version));
    d.insert("OS_VERSION".into(), s(&facts.os_version));
    d.insert("LANGUAGE".into(), s(&facts.language));
    d.insert(
        "SOFTWARE_UPDATE_DEVICE_ID".into(),
        s(&facts.software_update_device_id),
    );
    d.insert(
        "MDM_CAN_REQUEST_SOFTWARE_UPDATE".into(),
        Value::Boolean(false),
    );
    d
}

/// Identity keys of the user channel of a User Enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChannel {
    /// `EnrollmentUserID`.
    pub enrollment_user_id: String,
    /// `UserShortName` (the macOS account's short name).
    pub short_name: String,
    /// `UserLongName` (the macOS account's full name).
    pub long_name: String,
}

/// Identity keys for a request: `EnrollmentID`, plus the user-channel keys when given.
fn put_identity(d: &mut Dictionary, enrollment_id: &str, user: Option<&UserChannel>) {
    d.insert("EnrollmentID".into(), s(enrollment_id));
    if let Some(u) = user {
        d.insert("EnrollmentUserID".into(), s(&u.enrollment_user_id));
        d.insert("UserShortName".into(), s(&u.short_name));
        d.insert("UserLongName".into(), s(&u.long_name));
    }
}

/// Check-in `Authenticate` of a macOS User Enrollment (device channel only, schema
/// `devicechannel: true, userchannel: false`): `MessageType`, `Topic`, `EnrollmentID`,
/// `OSVersion`, `BuildVersion`, `ProductName`, `Model`, `ModelName`. `DeviceName` is left out:
/// the device's name is personal data a User Enrollment does not hand over.
pub fn authenticate(facts: &DeviceFacts, topic: &str, enrollment_id: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("MessageType".into(), s("Authenticate"));
    d.insert("Topic".into(), s(topic));
    put_identity(&mut d, enrollment_id, None);
    d.insert("OSVersion".into(), s(&facts.os_version));
    d.insert("BuildVersion".into(), s(&facts.build_version));
    d.insert("ProductName".into(), s(&facts.product));
    d.insert("Model".into(), s(&facts.product));
    d.insert("ModelName".into(), s(&facts.model_name));
    d
}

/// Check-in `TokenUpdate`: device channel when `user` is `None`, user channel otherwise
/// (with `EnrollmentUserID`, `UserShortName`, `UserLongName` and `NotOnConsole`, which macOS
/// sends on the user channel only). Never `UnlockToken` (forbidden under User Enrollment).
pub fn token_update(
    topic: &str,
    enrollment_id: &str,
    user: Option<&UserChannel>,
    token: &[u8],
    push_magic: &str,
) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("MessageType".into(), s("TokenUpdate"));
    d.insert("Topic".into(), s(topic));
    put_identity(&mut d, enrollment_id, user);
    d.insert("Token".into(), Value::Data(token.to_vec()));
    d.insert("PushMagic".into(), s(push_magic));
    if user.is_some() {
        d.insert("NotOnConsole".into(), Value::Boolean(false));
    }
    d
}

/// Check-in `CheckOut` (the MDM profile was removed).
pub fn check_out(topic: &str, enrollment_id: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("MessageType".into(), s("CheckOut"));
    d.insert("Topic".into(), s(topic));
    put_identity(&mut d, enrollment_id, None);
    d
}

/// A command-channel report: `Status`, the identity keys, `CommandUUID` (for results) and
/// the result keys. Identity and status keys in `result` are overwritten.
pub fn command_report(
    enrollment_id: &str,
    user: Option<&UserChannel>,
    status: &str,
    command_uuid: Option<&str>,
    result: &Dictionary,
) -> Dictionary {
    let mut d = result.clone();
    d.insert("Status".into(), s(status));
    if let Some(u) = command_uuid {
        d.insert("CommandUUID".into(), s(u));
    } else {
        d.remove("CommandUUID");
    }
    put_identity(&mut d, enrollment_id, user);
    d
}

/// A fresh RSA key of `bits` bits.
pub fn rsa_key(bits: u32) -> Result<PKey<Private>, ErrorStack> {
    PKey::from_rsa(Rsa::generate(bits)?)
}

/// A self-signed certificate for `key` with subject `CN=<common_name>`, valid from an hour ago
/// for `days` days: the "device" certificate that signs MachineInfo, and the throwaway
/// signer of a SCEP request.
pub fn self_signed(
    key: &PKeyRef<Private>,
    common_name: &str,
    days: u32,
) -> Result<X509, ErrorStack> {
    let mut nb = X509NameBuilder::new()?;
    nb.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    let name = nb.build();
    self_signed_with_name(key, &name, days)
}

/// A self-signed certificate for `key` with the given subject (also the issuer).
pub fn self_signed_with_name(
    key: &PKeyRef<Private>,
    name: &X509NameRef,
    days: u32,
) -> Result<X509, ErrorStack> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    b.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
    b.set_subject_name(name)?;
    b.set_issuer_name(name)?;
    b.set_pubkey(key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let now = i64::try_from(now).unwrap_or(0);
    b.set_not_before(Asn1Time::from_unix(now - 3600)?.as_ref())?;
    b.set_not_after(Asn1Time::days_from_now(days)?.as_ref())?;
    b.append_extension(BasicConstraints::new().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .digital_signature()
            .key_encipherment()
            .build()?,
    )?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

/// An attached CMS signature over `data` that carries no certificate: what a device whose
/// signer Lanyard cannot hold would send.
pub fn sign_attached_without_certificates(
    cert: &X509,
    key: &PKeyRef<Private>,
    data: &[u8],
) -> Result<Vec<u8>, ErrorStack> {
    use openssl::cms::{CMSOptions, CmsContentInfo};
    CmsContentInfo::sign(
        Some(cert),
        Some(key),
        None,
        Some(data),
        CMSOptions::BINARY | CMSOptions::CMS_NOCERTS,
    )?
    .to_der()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_proto::checkin::CheckinMessage;
    use lanyard_proto::identity::EnrollmentKind;

    fn facts() -> DeviceFacts {
        DeviceFacts::new("Mac14,2", "15.2")
    }

    #[test]
    fn build_versions() {
        assert_eq!(build_version_for("15.2"), "24C101");
        assert_eq!(build_version_for("15.9"), "24J100");
        assert_eq!(build_version_for("14.1"), "23B100");
        assert_eq!(build_version_for("26.1"), "25B100");
        assert_eq!(facts().model_name, "MacBook Air");
    }

    #[test]
    fn machine_info_decodes_without_device_identifiers() {
        let bytes = to_xml(machine_info(&facts())).unwrap();
        let mi = lanyard_proto::decode_machine_info(&bytes).unwrap();
        assert_eq!(mi.product, "Mac14,2");
        assert_eq!(mi.version, "24C101");
        assert_eq!(mi.os_version.as_deref(), Some("15.2"));
        assert_eq!(mi.language.as_deref(), Some("en-US"));
        assert_eq!(mi.software_update_device_id.as_deref(), Some("J413AP"));
        assert!(!mi.has_device_identifiers());
        let v = mi.os_version().unwrap().unwrap();
        assert!(v.at_least(&lanyard_proto::OsVersion::DEFAULT_MACOS_MINIMUM));
        let text = String::from_utf8(bytes).unwrap();
        for forbidden in ["UDID", "SERIAL", "IMEI", "MEID"] {
            assert!(!text.contains(forbidden), "{forbidden} in {text}");
        }
    }

    const TOPIC: &str = "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9";

    fn user() -> UserChannel {
        UserChannel {
            enrollment_user_id: "EU-1".into(),
            short_name: "ann".into(),
            long_name: "Ann".into(),
        }
    }

    #[test]
    fn authenticate_decodes_as_user_enrollment_device_channel() {
        let bytes = to_xml(authenticate(&facts(), TOPIC, "E-1")).unwrap();
        let CheckinMessage::Authenticate(m) = lanyard_proto::decode_checkin(&bytes).unwrap() else {
            panic!("not Authenticate");
        };
        assert_eq!(m.enrollment.kind, EnrollmentKind::UserEnrollmentDevice);
        assert_eq!(m.enrollment.id, "E-1");
        assert_eq!(m.topic, TOPIC);
        assert_eq!(m.os_version.as_deref(), Some("15.2"));
        assert_eq!(m.build_version.as_deref(), Some("24C101"));
        assert_eq!(m.product_name.as_deref(), Some("Mac14,2"));
        assert_eq!(m.model.as_deref(), Some("Mac14,2"));
        assert_eq!(m.model_name.as_deref(), Some("MacBook Air"));
        assert!(m.serial_number.is_none() && m.identity.udid.is_none());
    }

    #[test]
    fn token_updates_decode_on_both_channels() {
        let token = [7u8; 32];
        let bytes = to_xml(token_update(TOPIC, "E-1", None, &token, "magic-d")).unwrap();
        let CheckinMessage::TokenUpdate(m) = lanyard_proto::decode_checkin(&bytes).unwrap() else {
            panic!("not TokenUpdate");
        };
        assert_eq!(m.enrollment.kind, EnrollmentKind::UserEnrollmentDevice);
        assert_eq!(m.token.expose(), &token);
        assert_eq!(m.push_magic.expose(), "magic-d");
        assert!(m.unlock_token.is_none());
        assert_eq!(m.not_on_console, None);

        let u = user();
        let bytes = to_xml(token_update(TOPIC, "E-1", Some(&u), &token, "magic-u")).unwrap();
        let CheckinMessage::TokenUpdate(m) = lanyard_proto::decode_checkin(&bytes).unwrap() else {
            panic!("not TokenUpdate");
        };
        assert_eq!(m.enrollment.kind, EnrollmentKind::UserEnrollmentUser);
        assert_eq!(m.enrollment.id, "E-1:EU-1");
        assert_eq!(m.enrollment.device_id(), "E-1");
        assert_eq!(m.identity.user_short_name.as_deref(), Some("ann"));
        assert_eq!(m.identity.user_long_name.as_deref(), Some("Ann"));
        assert_eq!(m.not_on_console, Some(false));
    }

    #[test]
    fn check_out_decodes() {
        let bytes = to_xml(check_out(TOPIC, "E-1")).unwrap();
        let m = lanyard_proto::decode_checkin(&bytes).unwrap();
        assert_eq!(m.message_type(), "CheckOut");
        assert_eq!(m.enrollment().id, "E-1");
    }

    #[test]
    fn command_reports_decode() {
        let bytes = to_xml(command_report(
            "E-1",
            None,
            "Idle",
            None,
            &Dictionary::new(),
        ))
        .unwrap();
        let r = lanyard_proto::decode_command_report(&bytes).unwrap();
        assert_eq!(r.status, lanyard_proto::CommandStatus::Idle);
        assert_eq!(r.enrollment.id, "E-1");

        let mut result = Dictionary::new();
        result.insert("RequestType".into(), s("ProfileList"));
        result.insert("ProfileList".into(), Value::Array(vec![]));
        let u = user();
        let bytes = to_xml(command_report(
            "E-1",
            Some(&u),
            "Acknowledged",
            Some("C-1"),
            &result,
        ))
        .unwrap();
        let r = lanyard_proto::decode_command_report(&bytes).unwrap();
        assert_eq!(r.status, lanyard_proto::CommandStatus::Acknowledged);
        assert_eq!(r.command_uuid.as_deref(), Some("C-1"));
        assert_eq!(r.enrollment.id, "E-1:EU-1");
        assert!(r.result.contains_key("ProfileList"));
    }

    #[test]
    fn self_signed_certificates() {
        let key = rsa_key(2048).unwrap();
        let cert = self_signed(&key, "Simulated Mac", 1).unwrap();
        assert!(cert.verify(&key).unwrap());
        let info = lanyard_pki::CertInfo::from_x509(&cert).unwrap();
        assert_eq!(info.subject, "CN=Simulated Mac");
        assert_eq!(info.subject, info.issuer);
    }
}
