//! The enrollment profile for account-driven User Enrollment (`EnrollmentMode` `BYOD`).
//!
//! [`build_enrollment_profile`] writes the unsigned `Configuration` profile as an XML plist;
//! `lanyard-pki` signs it (CMS SignedData) before it is served as
//! `application/x-apple-aspen-config`.
//!
//! Layout (keys from Apple's schema, `mdm/profiles/*.yaml`):
//!
//! - top level (`TopLevel.yaml`): `PayloadType` `Configuration`, `PayloadVersion` 1,
//!   `PayloadIdentifier`, `PayloadUUID`, `PayloadDisplayName`, `PayloadOrganization`,
//!   `PayloadScope` `User`, `PayloadContent`;
//! - `com.apple.security.root` (optional): our CA certificate, when it is not publicly trusted;
//! - `com.apple.security.scep`: the device identity (its `PayloadUUID` is the MDM payload's
//!   `IdentityCertificateUUID`), its key marked `KeyIsExtractable` false;
//! - `com.apple.mdm`: `ServerURL`, `CheckInURL`, `Topic`, `IdentityCertificateUUID`,
//!   `SignMessage`, `CheckOutWhenRemoved` true, `ServerCapabilities`, `EnrollmentMode` `BYOD`,
//!   `AssignedManagedAppleID`.
//!
//! Deliberately absent:
//! - `AccessRights`. The schema marks it `userenrollment.mode: ignored` for macOS, and Apple's
//!   article "Implementing the simple authentication account-driven enrollment flow" says that
//!   with `EnrollmentMode` `BYOD` the key must not be present — "user enrollments have a fixed
//!   set of access rights", and the device cancels the enrollment if it is there. Fleet's
//!   account-driven template leaves it out too. [`AccessRights::user_enrollment_default`]
//!   describes that fixed set; it is never written into this profile.
//! - `ManagedAppleID`: the schema says removed in macOS 15.0 (replaced by
//!   `AssignedManagedAppleID`).
//!
//! UNCONFIRMED: `PayloadScope` `User` for a macOS account-driven User Enrollment. Apple's schema
//! allows `System` or `User` (macOS 10.8+) without saying which this flow needs; Fleet's
//! account-driven User Enrollment template (`server/mdm/apple/apple_mdm.go`) sets `User`, and we
//! follow it until a real Mac shows otherwise.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use plist::{Dictionary, Value};
use uuid::Uuid;

use crate::discovery::UserIdentifier;
use crate::error::ProtoError;
use crate::plistutil::to_xml_plist;
use crate::secret::SecretString;
use crate::user_enrollment::{self, MacosSupport, UeMode};

/// The MDM access-rights bit set (`AccessRights` in `com.apple.mdm.yaml`).
///
/// Not written into a `BYOD` profile (see the module documentation); used to describe what an
/// enrollment lets the organisation do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AccessRights(u32);

impl AccessRights {
    /// `1`: inspect installed configuration profiles (schema name `AllowInspection`).
    pub const INSPECT_PROFILES: Self = Self(1);
    /// `2`: install and remove configuration profiles (`AllowInstallationRemoval`).
    pub const INSTALL_REMOVE_PROFILES: Self = Self(2);
    /// `4`: device lock and passcode removal (`AllowPasscodeRemovalAndLock`).
    pub const LOCK_AND_REMOVE_PASSCODE: Self = Self(4);
    /// `8`: device erase (`AllowDeviceErase`).
    pub const ERASE: Self = Self(8);
    /// `16`: query device information (`AllowQueryDeviceInformation`).
    pub const QUERY_DEVICE_INFORMATION: Self = Self(16);
    /// `32`: query network information (`AllowQueryNetworkInformation`).
    pub const QUERY_NETWORK_INFORMATION: Self = Self(32);
    /// `64`: inspect provisioning profiles (`AllowProvisioningInspection`).
    pub const INSPECT_PROVISIONING_PROFILES: Self = Self(64);
    /// `128`: install and remove provisioning profiles (`AllowProvisioningInstallationRemoval`).
    pub const INSTALL_REMOVE_PROVISIONING_PROFILES: Self = Self(128);
    /// `256`: inspect installed applications (`AllowQueryApplications`).
    pub const QUERY_APPLICATIONS: Self = Self(256);
    /// `512`: restriction-related queries (`AllowQueryRestrictions`).
    pub const QUERY_RESTRICTIONS: Self = Self(512);
    /// `1024`: security-related queries (`AllowQuerySecurity`).
    pub const QUERY_SECURITY: Self = Self(1024);
    /// `2048`: manipulate settings (`AllowSettings`).
    pub const SETTINGS: Self = Self(2048);
    /// `4096`: app management (`AllowAppInstallation`).
    pub const APP_MANAGEMENT: Self = Self(4096);
    /// Every bit the schema defines.
    pub const ALL: Self = Self(8191);
    /// No rights.
    pub const NONE: Self = Self(0);

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// From raw bits; `None` when a bit the schema does not define is set.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::ALL.0 == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// True when every bit of `other` is set here.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when the value obeys the schema's rules: not 0, `1` with `2`, `64` with `128`.
    pub const fn is_valid(self) -> bool {
        self.0 != 0
            && (!self.contains(Self::INSTALL_REMOVE_PROFILES)
                || self.contains(Self::INSPECT_PROFILES))
            && (!self.contains(Self::INSTALL_REMOVE_PROVISIONING_PROFILES)
                || self.contains(Self::INSPECT_PROVISIONING_PROFILES))
    }

    /// The bits for an `accessrights` name in Apple's schema (`supportedOS.*.accessrights`).
    ///
    /// `None`, `n/a` and `Special Case` (rights depend on the request, as for
    /// `DeviceInformation`) map to no bits; an unknown name gives `None`.
    pub fn for_schema_name(name: &str) -> Option<Self> {
        Some(match name {
            "AllowInspection" => Self::INSPECT_PROFILES,
            "AllowInstallationRemoval" => Self::INSTALL_REMOVE_PROFILES,
            "AllowPasscodeRemovalAndLock" | "DeviceLockAndRemovePasscode" => {
                Self::LOCK_AND_REMOVE_PASSCODE
            }
            "AllowDeviceErase" => Self::ERASE,
            "AllowQueryDeviceInformation" => Self::QUERY_DEVICE_INFORMATION,
            "AllowQueryNetworkInformation" => Self::QUERY_NETWORK_INFORMATION,
            "AllowProvisioningInspection" => Self::INSPECT_PROVISIONING_PROFILES,
            "AllowProvisioningInstallationRemoval" => Self::INSTALL_REMOVE_PROVISIONING_PROFILES,
            "AllowQueryApplications" | "QueryInstalledApps" => Self::QUERY_APPLICATIONS,
            "AllowQueryRestrictions" => Self::QUERY_RESTRICTIONS,
            "AllowQuerySecurity" => Self::QUERY_SECURITY,
            "AllowSettings" => Self::SETTINGS,
            "AllowAppInstallation" => Self::APP_MANAGEMENT,
            "None" | "n/a" | "Special Case" => Self::NONE,
            _ => return None,
        })
    }

    /// The fixed set of rights a macOS User Enrollment gives the organisation, derived from
    /// Apple's schema: the union of the `accessrights` of every MDM command (and, for
    /// `DeviceInformation`, whose rights are a "Special Case", of every query) whose
    /// `supportedOS.macOS.userenrollment.mode` allows it (see [`crate::user_enrollment`]).
    ///
    /// `com.apple.mdm.yaml` marks the `AccessRights` key itself `userenrollment.mode: ignored`
    /// on macOS, and Apple forbids the key in a `BYOD` profile: the device applies this fixed
    /// set instead. From the macOS 15.1 schema this is 7187 = inspect (1) and install/remove
    /// (2) profiles, device information (16), security (1024), settings (2048) and app
    /// management (4096); network information, erase, lock and application inventory are not
    /// in it.
    pub fn user_enrollment_default() -> Self {
        let allowed = |e: &&user_enrollment::UeEntry| match e.macos {
            MacosSupport::Supported(m) => {
                m.removed.is_none()
                    && matches!(m.user_enrollment, UeMode::Allowed | UeMode::Required)
            }
            MacosSupport::NotSupported => false,
        };
        user_enrollment::commands()
            .iter()
            .chain(user_enrollment::device_information_queries())
            .filter(allowed)
            .filter_map(|e| match e.macos {
                MacosSupport::Supported(m) => m.access_rights,
                MacosSupport::NotSupported => None,
            })
            .filter_map(Self::for_schema_name)
            .fold(Self::NONE, |acc, r| acc | r)
    }
}

impl BitOr for AccessRights {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for AccessRights {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for AccessRights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A `ServerCapabilities` entry of the `com.apple.mdm` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerCapability {
    /// `com.apple.mdm.per-user-connections`: device and user channels (required for macOS).
    PerUserConnections,
    /// `com.apple.mdm.bootstraptoken`: the server escrows bootstrap tokens.
    BootstrapToken,
    /// `com.apple.mdm.token`: the server answers `GetToken` check-ins.
    Token,
}

impl ServerCapability {
    /// All three, in schema order.
    pub const ALL: [ServerCapability; 3] =
        [Self::PerUserConnections, Self::BootstrapToken, Self::Token];

    /// What a User Enrollment profile advertises: the per-user connections only. Bootstrap
    /// tokens are not used in User Enrollment (schema `com.apple.mdm` ServerCapabilities;
    /// SetBootstrapToken is unavailable to User Enrollment), and `com.apple.mdm.token` is
    /// advertised only by a server that answers `GetToken`, which Lanyard does not yet do.
    pub const USER_ENROLLMENT: [ServerCapability; 1] = [Self::PerUserConnections];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerUserConnections => "com.apple.mdm.per-user-connections",
            Self::BootstrapToken => "com.apple.mdm.bootstraptoken",
            Self::Token => "com.apple.mdm.token",
        }
    }
}

/// The SCEP identity payload's settings (`com.apple.security.scep`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScepSettings {
    /// `URL`: the SCEP endpoint (`http://` or `https://`).
    pub url: String,
    /// `Challenge`: the one-time challenge password (secret).
    pub challenge: SecretString,
    /// `Subject`: relative distinguished names in order, as (type, value), e.g. `("CN", "…")`.
    pub subject: Vec<(String, String)>,
    /// `Keysize`: 2048 or 4096 (the schema also allows 1024, which Lanyard refuses as weak).
    pub key_size: u32,
    /// `Name`: the CA's name, for servers with several CAs.
    pub name: Option<String>,
    /// `CAFingerprint`: the CA certificate's fingerprint. UNCONFIRMED which digest macOS
    /// accepts here (the schema only says `<data>`; MD5 and SHA-1 are the historical ones).
    pub ca_fingerprint: Option<Vec<u8>>,
}

/// `PayloadUUID`s of the profile and its payloads; random by default, fixed in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileUuids {
    /// The top-level `Configuration`.
    pub profile: Uuid,
    /// The `com.apple.mdm` payload.
    pub mdm: Uuid,
    /// The `com.apple.security.scep` payload (also `IdentityCertificateUUID`).
    pub scep: Uuid,
    /// The `com.apple.security.root` payload.
    pub trust: Uuid,
}

impl ProfileUuids {
    /// Fresh random (version 4) UUIDs.
    pub fn random() -> Self {
        Self {
            profile: Uuid::new_v4(),
            mdm: Uuid::new_v4(),
            scep: Uuid::new_v4(),
            trust: Uuid::new_v4(),
        }
    }
}

/// Everything the enrollment profile needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentProfileInput {
    /// `PayloadOrganization`, and the display names.
    pub organisation: String,
    /// The top-level `PayloadIdentifier` (reverse DNS); payload identifiers extend it.
    pub profile_identifier: String,
    /// `CheckInURL` (`https://`).
    pub checkin_url: String,
    /// `ServerURL`: the command endpoint (`https://`).
    pub server_url: String,
    /// `Topic`: the APNs MDM topic, `com.apple.mgmt.External.<uuid>`.
    pub push_topic: String,
    /// `AssignedManagedAppleID`: must equal the Managed Apple Account signed in on the Mac.
    pub assigned_managed_apple_id: String,
    /// The identity payload.
    pub scep: ScepSettings,
    /// Our CA certificate (DER), for a `com.apple.security.root` trust payload.
    pub ca_cert_der: Option<Vec<u8>>,
    /// `ServerCapabilities` (duplicates are dropped; the schema asks for a unique array).
    pub server_capabilities: Vec<ServerCapability>,
    /// `SignMessage`: the device adds an `Mdm-Signature` header to every request.
    pub sign_message: bool,
    /// The payload UUIDs.
    pub uuids: ProfileUuids,
}

/// Why a profile could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// A required text field is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A URL without the scheme the schema requires.
    #[error("{field} must start with {required}")]
    BadUrl {
        /// Which field.
        field: &'static str,
        /// The required prefix.
        required: &'static str,
    },
    /// The push topic is not an MDM topic.
    #[error("push topic must start with com.apple.mgmt.")]
    BadTopic,
    /// The assigned Managed Apple Account is not `user@domain`.
    #[error("assigned Managed Apple Account is invalid: {0}")]
    BadManagedAppleId(crate::discovery::UserIdentifierError),
    /// A SCEP key size Lanyard does not issue.
    #[error("SCEP key size {0} is not 2048 or 4096")]
    BadKeySize(u32),
    /// A SCEP subject entry with an empty type or value.
    #[error("SCEP subject entries need a type and a value")]
    BadSubject,
    /// A value XML cannot carry.
    #[error("cannot write the profile: {0}")]
    Encode(String),
}

/// Builds the unsigned enrollment profile (XML plist bytes). See the module documentation.
pub fn build_enrollment_profile(input: &EnrollmentProfileInput) -> Result<Vec<u8>, ProfileError> {
    validate(input)?;
    let uuid = |u: &Uuid| Value::String(u.hyphenated().to_string().to_uppercase());
    let s = |v: &str| Value::String(v.to_owned());
    let org = input.organisation.as_str();
    let id = input.profile_identifier.as_str();

    let mut content = Vec::new();

    if let Some(der) = &input.ca_cert_der {
        let mut trust = payload_header(
            "com.apple.security.root",
            &format!("{id}.ca"),
            &input.uuids.trust,
            &format!("{org} certificate authority"),
            org,
        );
        trust.insert("PayloadContent".into(), Value::Data(der.clone()));
        content.push(Value::Dictionary(trust));
    }

    let scep = &input.scep;
    let mut scep_content = Dictionary::new();
    scep_content.insert("URL".into(), s(&scep.url));
    if let Some(name) = &scep.name {
        scep_content.insert("Name".into(), s(name));
    }
    scep_content.insert(
        "Subject".into(),
        Value::Array(
            scep.subject
                .iter()
                .map(|(k, v)| Value::Array(vec![Value::Array(vec![s(k), s(v)])]))
                .collect(),
        ),
    );
    scep_content.insert("Challenge".into(), s(scep.challenge.expose()));
    scep_content.insert("Keysize".into(), Value::Integer(scep.key_size.into()));
    scep_content.insert("Key Type".into(), s("RSA"));
    // 1 = signing, 4 = encryption (schema "Key Usage"): the identity signs (TLS client auth,
    // Mdm-Signature) and some CAs insist on encipherment too.
    scep_content.insert("Key Usage".into(), Value::Integer(5.into()));
    if let Some(fp) = &scep.ca_fingerprint {
        scep_content.insert("CAFingerprint".into(), Value::Data(fp.clone()));
    }
    // Schema `com.apple.security.scep`, `PayloadContent.KeyIsExtractable` (macOS 10.13.4+,
    // default true): "If 'false', the system disables exporting the private key from the
    // keychain." The identity key is the enrollment's; it never needs to leave the Mac.
    scep_content.insert("KeyIsExtractable".into(), Value::Boolean(false));
    let mut scep_payload = payload_header(
        "com.apple.security.scep",
        &format!("{id}.scep"),
        &input.uuids.scep,
        &format!("{org} device identity"),
        org,
    );
    scep_payload.insert("PayloadContent".into(), Value::Dictionary(scep_content));
    content.push(Value::Dictionary(scep_payload));

    let mut mdm = payload_header(
        "com.apple.mdm",
        &format!("{id}.mdm"),
        &input.uuids.mdm,
        &format!("{org} device management"),
        org,
    );
    mdm.insert("IdentityCertificateUUID".into(), uuid(&input.uuids.scep));
    mdm.insert("Topic".into(), s(&input.push_topic));
    mdm.insert("ServerURL".into(), s(&input.server_url));
    mdm.insert("CheckInURL".into(), s(&input.checkin_url));
    mdm.insert("SignMessage".into(), Value::Boolean(input.sign_message));
    mdm.insert("CheckOutWhenRemoved".into(), Value::Boolean(true));
    let mut caps: Vec<ServerCapability> = Vec::new();
    for c in &input.server_capabilities {
        if !caps.contains(c) {
            caps.push(*c);
        }
    }
    if !caps.is_empty() {
        mdm.insert(
            "ServerCapabilities".into(),
            Value::Array(caps.iter().map(|c| s(c.as_str())).collect()),
        );
    }
    mdm.insert("EnrollmentMode".into(), s("BYOD"));
    mdm.insert(
        "AssignedManagedAppleID".into(),
        s(&input.assigned_managed_apple_id),
    );
    content.push(Value::Dictionary(mdm));

    let mut top = Dictionary::new();
    top.insert("PayloadContent".into(), Value::Array(content));
    top.insert("PayloadDisplayName".into(), s(&format!("{org} enrollment")));
    top.insert("PayloadIdentifier".into(), s(id));
    top.insert("PayloadOrganization".into(), s(org));
    top.insert("PayloadScope".into(), s("User"));
    top.insert("PayloadType".into(), s("Configuration"));
    top.insert("PayloadUUID".into(), uuid(&input.uuids.profile));
    top.insert("PayloadVersion".into(), Value::Integer(1.into()));

    to_xml_plist(&Value::Dictionary(top)).map_err(|e| {
        ProfileError::Encode(match e {
            ProtoError::Encode(reason) => reason,
            other => other.to_string(),
        })
    })
}

fn payload_header(
    payload_type: &str,
    identifier: &str,
    uuid: &Uuid,
    display_name: &str,
    organisation: &str,
) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("PayloadType".into(), Value::String(payload_type.to_owned()));
    d.insert("PayloadVersion".into(), Value::Integer(1.into()));
    d.insert(
        "PayloadIdentifier".into(),
        Value::String(identifier.to_owned()),
    );
    d.insert(
        "PayloadUUID".into(),
        Value::String(uuid.hyphenated().to_string().to_uppercase()),
    );
    d.insert(
        "PayloadDisplayName".into(),
        Value::String(display_name.to_owned()),
    );
    d.insert(
        "PayloadOrganization".into(),
        Value::String(organisation.to_owned()),
    );
    d
}

fn validate(input: &EnrollmentProfileInput) -> Result<(), ProfileError> {
    let non_empty = |v: &str, field| {
        if v.trim().is_empty() {
            Err(ProfileError::Empty(field))
        } else {
            Ok(())
        }
    };
    non_empty(&input.organisation, "organisation")?;
    non_empty(&input.profile_identifier, "profile identifier")?;
    non_empty(input.scep.challenge.expose(), "SCEP challenge")?;
    // Schema `format: ^https://.*$` for ServerURL and CheckInURL.
    for (field, url) in [
        ("server URL", &input.server_url),
        ("check-in URL", &input.checkin_url),
    ] {
        if !url.starts_with("https://") || url.len() == "https://".len() {
            return Err(ProfileError::BadUrl {
                field,
                required: "https://",
            });
        }
    }
    let scep_url = &input.scep.url;
    if !(scep_url.starts_with("https://") || scep_url.starts_with("http://")) {
        return Err(ProfileError::BadUrl {
            field: "SCEP URL",
            required: "http:// or https://",
        });
    }
    // Schema: "The topic must begin with the 'com.apple.mgmt.' prefix."
    if !input.push_topic.starts_with("com.apple.mgmt.") {
        return Err(ProfileError::BadTopic);
    }
    UserIdentifier::parse(&input.assigned_managed_apple_id)
        .map_err(ProfileError::BadManagedAppleId)?;
    if !matches!(input.scep.key_size, 2048 | 4096) {
        return Err(ProfileError::BadKeySize(input.scep.key_size));
    }
    if input
        .scep
        .subject
        .iter()
        .any(|(k, v)| k.trim().is_empty() || v.trim().is_empty())
    {
        return Err(ProfileError::BadSubject);
    }
    if input.ca_cert_der.as_ref().is_some_and(Vec::is_empty) {
        return Err(ProfileError::Empty("CA certificate"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_input() -> EnrollmentProfileInput {
        EnrollmentProfileInput {
            organisation: "Example Ltd".into(),
            profile_identifier: "com.example.lanyard.enroll".into(),
            checkin_url: "https://mdm.example.com/mdm/checkin".into(),
            server_url: "https://mdm.example.com/mdm/command".into(),
            push_topic: "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9".into(),
            assigned_managed_apple_id: "ann@example.com".into(),
            scep: ScepSettings {
                url: "https://mdm.example.com/scep".into(),
                challenge: SecretString::new("one-time-secret"),
                subject: vec![
                    ("O".into(), "Example Ltd".into()),
                    ("CN".into(), "Lanyard device identity".into()),
                ],
                key_size: 2048,
                name: Some("Lanyard CA".into()),
                ca_fingerprint: Some(vec![0xab; 32]),
            },
            ca_cert_der: Some(vec![0x30, 0x82, 0x01, 0x00]),
            server_capabilities: ServerCapability::ALL.to_vec(),
            sign_message: true,
            uuids: ProfileUuids {
                profile: Uuid::from_u128(1),
                mdm: Uuid::from_u128(2),
                scep: Uuid::from_u128(3),
                trust: Uuid::from_u128(4),
            },
        }
    }

    fn payloads(top: &Dictionary) -> Vec<Dictionary> {
        top.get("PayloadContent")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .map(|p| p.as_dictionary().unwrap().clone())
            .collect()
    }

    fn get<'a>(d: &'a Dictionary, k: &str) -> &'a Value {
        d.get(k).unwrap_or_else(|| panic!("missing {k}"))
    }

    #[test]
    fn builds_the_byod_profile() {
        let input = sample_input();
        let bytes = build_enrollment_profile(&input).unwrap();
        let top = crate::plistutil::parse_dictionary(&bytes).unwrap();
        assert_eq!(get(&top, "PayloadType").as_string(), Some("Configuration"));
        assert_eq!(get(&top, "PayloadScope").as_string(), Some("User"));
        assert_eq!(get(&top, "PayloadVersion").as_signed_integer(), Some(1));
        let p = payloads(&top);
        let types: Vec<_> = p
            .iter()
            .map(|d| get(d, "PayloadType").as_string().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "com.apple.security.root",
                "com.apple.security.scep",
                "com.apple.mdm"
            ]
        );
        let (scep, mdm) = (&p[1], &p[2]);
        assert_eq!(
            get(mdm, "IdentityCertificateUUID"),
            get(scep, "PayloadUUID")
        );
        assert_eq!(
            get(mdm, "IdentityCertificateUUID").as_string(),
            Some("00000000-0000-0000-0000-000000000003")
        );
        assert_eq!(get(mdm, "EnrollmentMode").as_string(), Some("BYOD"));
        assert_eq!(
            get(mdm, "AssignedManagedAppleID").as_string(),
            Some("ann@example.com")
        );
        assert_eq!(get(mdm, "CheckOutWhenRemoved").as_boolean(), Some(true));
        assert_eq!(get(mdm, "SignMessage").as_boolean(), Some(true));
        assert!(!mdm.contains_key("AccessRights"));
        assert!(!mdm.contains_key("ManagedAppleID"));
        let caps: Vec<_> = get(mdm, "ServerCapabilities")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_string().unwrap())
            .collect();
        assert_eq!(
            caps,
            [
                "com.apple.mdm.per-user-connections",
                "com.apple.mdm.bootstraptoken",
                "com.apple.mdm.token"
            ]
        );
        let sc = get(scep, "PayloadContent").as_dictionary().unwrap();
        assert_eq!(get(sc, "Challenge").as_string(), Some("one-time-secret"));
        assert_eq!(get(sc, "Keysize").as_signed_integer(), Some(2048));
        assert_eq!(get(sc, "KeyIsExtractable").as_boolean(), Some(false));
        assert_eq!(
            get(sc, "CAFingerprint").as_data().map(<[u8]>::len),
            Some(32)
        );
        let subject = get(sc, "Subject").as_array().unwrap();
        assert_eq!(subject.len(), 2);
        assert_eq!(
            subject[1],
            Value::Array(vec![Value::Array(vec![
                Value::String("CN".into()),
                Value::String("Lanyard device identity".into())
            ])])
        );
    }

    #[test]
    fn optional_parts_can_be_left_out() {
        let mut input = sample_input();
        input.ca_cert_der = None;
        input.scep.name = None;
        input.scep.ca_fingerprint = None;
        input.server_capabilities = vec![ServerCapability::PerUserConnections; 2];
        input.sign_message = false;
        let top =
            crate::plistutil::parse_dictionary(&build_enrollment_profile(&input).unwrap()).unwrap();
        let p = payloads(&top);
        assert_eq!(p.len(), 2);
        assert_eq!(get(&p[1], "SignMessage").as_boolean(), Some(false));
        assert_eq!(
            get(&p[1], "ServerCapabilities").as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn refuses_bad_input() {
        type Mutation = Box<dyn Fn(&mut EnrollmentProfileInput)>;
        let cases: Vec<(Mutation, ProfileError)> = vec![
            (
                Box::new(|i| i.organisation.clear()),
                ProfileError::Empty("organisation"),
            ),
            (
                Box::new(|i| i.server_url = "http://mdm.example.com".into()),
                ProfileError::BadUrl {
                    field: "server URL",
                    required: "https://",
                },
            ),
            (
                Box::new(|i| i.checkin_url = "https://".into()),
                ProfileError::BadUrl {
                    field: "check-in URL",
                    required: "https://",
                },
            ),
            (
                Box::new(|i| i.push_topic = "com.example".into()),
                ProfileError::BadTopic,
            ),
            (
                Box::new(|i| i.scep.key_size = 1024),
                ProfileError::BadKeySize(1024),
            ),
            (
                Box::new(|i| i.scep.subject.push(("CN".into(), String::new()))),
                ProfileError::BadSubject,
            ),
            (
                Box::new(|i| i.ca_cert_der = Some(Vec::new())),
                ProfileError::Empty("CA certificate"),
            ),
            (
                Box::new(|i| i.scep.challenge = SecretString::new("")),
                ProfileError::Empty("SCEP challenge"),
            ),
            (
                Box::new(|i| i.organisation = "Bad\u{1}Org".into()),
                ProfileError::Encode("character U+0001 cannot be written in an XML plist".into()),
            ),
        ];
        for (mutate, want) in cases {
            let mut input = sample_input();
            mutate(&mut input);
            assert_eq!(build_enrollment_profile(&input), Err(want));
        }
        let mut input = sample_input();
        input.assigned_managed_apple_id = "ann".into();
        assert!(matches!(
            build_enrollment_profile(&input),
            Err(ProfileError::BadManagedAppleId(_))
        ));
    }

    #[test]
    fn debug_hides_the_challenge() {
        let shown = format!("{:?}", sample_input());
        assert!(!shown.contains("one-time-secret"));
    }

    #[test]
    fn access_rights_bits() {
        assert_eq!(AccessRights::ALL.bits(), 8191);
        assert_eq!(AccessRights::from_bits(8192), None);
        assert_eq!(AccessRights::from_bits(3), Some(AccessRights(3)));
        assert!(!AccessRights::NONE.is_valid());
        assert!(!AccessRights::INSTALL_REMOVE_PROFILES.is_valid());
        assert!(
            (AccessRights::INSTALL_REMOVE_PROFILES | AccessRights::INSPECT_PROFILES).is_valid()
        );
        assert!(!AccessRights::INSTALL_REMOVE_PROVISIONING_PROFILES.is_valid());
        assert!(AccessRights::ALL.is_valid());
        assert_eq!(AccessRights::for_schema_name("Bogus"), None);
        assert_eq!(
            AccessRights::for_schema_name("None"),
            Some(AccessRights::NONE)
        );
    }

    #[test]
    fn user_enrollment_default_rights() {
        let ue = AccessRights::user_enrollment_default();
        assert!(ue.is_valid(), "{ue}");
        assert_eq!(ue.bits(), 7187);
        assert!(ue.contains(AccessRights::QUERY_DEVICE_INFORMATION));
        assert!(!ue.contains(AccessRights::ERASE));
        assert!(!ue.contains(AccessRights::LOCK_AND_REMOVE_PASSCODE));
        assert!(!ue.contains(AccessRights::QUERY_NETWORK_INFORMATION));
        assert!(!ue.contains(AccessRights::QUERY_APPLICATIONS));
    }

    #[test]
    fn every_schema_access_right_name_is_known() {
        let tables = [
            crate::user_enrollment::commands(),
            crate::user_enrollment::device_information_queries(),
        ];
        for e in tables.iter().flat_map(|t| t.iter()) {
            if let MacosSupport::Supported(m) = e.macos {
                if let Some(name) = m.access_rights {
                    assert!(
                        AccessRights::for_schema_name(name).is_some(),
                        "{}: unknown access right {name:?}",
                        e.name
                    );
                }
            }
        }
    }
}
