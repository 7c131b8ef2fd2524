//! The MDM check-in protocol: the plist bodies a device `PUT`s to the `CheckInURL`.
//!
//! [`decode_checkin`] turns a body into one [`CheckinMessage`], an exhaustive enum over the
//! `MessageType`s of Apple's schema (`mdm/checkin/*.yaml`), so a server `match`es every message
//! in one place. Each variant carries the identity keys ([`EnrollmentIdentity`]) and the
//! enrollment they resolve to ([`EnrollmentRef`]); decoding fails when they resolve to none.
//!
//! Which keys are required: the schema marks identity keys `required` per enrollment type
//! (`UDID` is "required" yet forbidden under User Enrollment), so decoding requires *an* identity
//! (see [`crate::identity`]) rather than each key; other keys are required as the schema says,
//! except where the schema marks a key as not sent by some OS (for example `DeviceName` is
//! `n/a` on iOS), which are optional here. Unknown keys are ignored.
//!
//! [`encode_checkin`] writes a message back as an XML plist (used by the simulated Mac).

use plist::{Dictionary, Value};

use crate::error::{quote, ProtoError};
use crate::identity::{EnrollmentIdentity, EnrollmentRef};
use crate::plistutil::{parse_dictionary, to_xml_plist, Fields};
use crate::secret::{SecretBytes, SecretString};

/// One check-in request, by `MessageType`.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckinMessage {
    /// `Authenticate`: the first message after the profile is installed.
    Authenticate(Authenticate),
    /// `TokenUpdate`: push token and `PushMagic`; the enrollment becomes reachable.
    TokenUpdate(TokenUpdate),
    /// `CheckOut`: the MDM profile was removed.
    CheckOut(CheckOut),
    /// `UserAuthenticate`: a macOS network or mobile user asks to join the user channel.
    UserAuthenticate(UserAuthenticate),
    /// `GetBootstrapToken`: the device asks for its escrowed bootstrap token.
    GetBootstrapToken(GetBootstrapToken),
    /// `SetBootstrapToken`: the device escrows (or clears) its bootstrap token.
    SetBootstrapToken(SetBootstrapToken),
    /// `DeclarativeManagement`: a declarative device management request.
    DeclarativeManagement(DeclarativeManagement),
    /// `GetToken`: the device asks for a token for a service.
    GetToken(GetToken),
}

/// `Authenticate` (`mdm/checkin/authenticate.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// The identity keys as sent.
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `Topic`: the APNs topic the device subscribes to.
    pub topic: String,
    /// `OSVersion`.
    pub os_version: Option<String>,
    /// `BuildVersion`.
    pub build_version: Option<String>,
    /// `ProductName` (for example `Mac14,2`).
    pub product_name: Option<String>,
    /// `SerialNumber` (never sent under User Enrollment).
    pub serial_number: Option<String>,
    /// `IMEI` (never sent under User Enrollment).
    pub imei: Option<String>,
    /// `MEID` (never sent under User Enrollment).
    pub meid: Option<String>,
    /// `DeviceName` (macOS only).
    pub device_name: Option<String>,
    /// `Model` (macOS only).
    pub model: Option<String>,
    /// `ModelName` (macOS only).
    pub model_name: Option<String>,
}

/// `TokenUpdate` (`mdm/checkin/tokenupdate.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUpdate {
    /// The identity keys as sent.
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `Topic`.
    pub topic: String,
    /// `Token`: the APNs push token (secret).
    pub token: SecretBytes,
    /// `PushMagic`: the string every push must carry (secret).
    pub push_magic: SecretString,
    /// `UnlockToken` (device channel, never under User Enrollment; secret).
    pub unlock_token: Option<SecretBytes>,
    /// `AwaitingConfiguration`.
    pub awaiting_configuration: Option<bool>,
    /// `NotOnConsole` (macOS user channel).
    pub not_on_console: Option<bool>,
}

/// `CheckOut` (`mdm/checkin/checkout.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOut {
    /// The identity keys as sent.
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `Topic`.
    pub topic: String,
}

/// `UserAuthenticate` (`mdm/checkin/userauthenticate.yaml`); forbidden under User Enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAuthenticate {
    /// The identity keys as sent (`UDID` and `UserID` are required).
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `DigestResponse`: present on the second request, after a `DigestChallenge`.
    pub digest_response: Option<String>,
}

/// `GetBootstrapToken` (`mdm/checkin/getbootstraptoken.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetBootstrapToken {
    /// The identity keys as sent.
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `AwaitingConfiguration`.
    pub awaiting_configuration: Option<bool>,
}

/// `SetBootstrapToken` (`mdm/checkin/setbootstraptoken.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetBootstrapToken {
    /// The identity keys as sent.
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `BootstrapToken` (secret). Absent or empty means: remove the escrowed token.
    pub bootstrap_token: Option<SecretBytes>,
    /// `AwaitingConfiguration`.
    pub awaiting_configuration: Option<bool>,
}

/// `DeclarativeManagement` (`mdm/checkin/declarativemanagement.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarativeManagement {
    /// The identity keys as sent.
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `Endpoint`: `tokens`, `declaration-items`, `status` or `declaration/<type>/<id>`.
    pub endpoint: String,
    /// `Data`: the request's JSON document, when the endpoint carries one.
    pub data: Option<Vec<u8>>,
}

/// `GetToken` (`mdm/checkin/gettoken.yaml`).
#[derive(Debug, Clone, PartialEq)]
pub struct GetToken {
    /// The identity keys as sent.
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `TokenServiceType` (for example `com.apple.maid`).
    pub token_service_type: String,
    /// `TokenParameters`, as sent.
    pub token_parameters: Option<Dictionary>,
}

impl CheckinMessage {
    /// Every `MessageType` this enum covers, in schema order.
    pub const MESSAGE_TYPES: [&'static str; 8] = [
        "Authenticate",
        "TokenUpdate",
        "CheckOut",
        "UserAuthenticate",
        "GetBootstrapToken",
        "SetBootstrapToken",
        "DeclarativeManagement",
        "GetToken",
    ];

    /// The `MessageType` string.
    pub fn message_type(&self) -> &'static str {
        match self {
            Self::Authenticate(_) => "Authenticate",
            Self::TokenUpdate(_) => "TokenUpdate",
            Self::CheckOut(_) => "CheckOut",
            Self::UserAuthenticate(_) => "UserAuthenticate",
            Self::GetBootstrapToken(_) => "GetBootstrapToken",
            Self::SetBootstrapToken(_) => "SetBootstrapToken",
            Self::DeclarativeManagement(_) => "DeclarativeManagement",
            Self::GetToken(_) => "GetToken",
        }
    }

    /// The identity keys as sent.
    pub fn identity(&self) -> &EnrollmentIdentity {
        match self {
            Self::Authenticate(m) => &m.identity,
            Self::TokenUpdate(m) => &m.identity,
            Self::CheckOut(m) => &m.identity,
            Self::UserAuthenticate(m) => &m.identity,
            Self::GetBootstrapToken(m) => &m.identity,
            Self::SetBootstrapToken(m) => &m.identity,
            Self::DeclarativeManagement(m) => &m.identity,
            Self::GetToken(m) => &m.identity,
        }
    }

    /// The enrollment the message speaks for.
    pub fn enrollment(&self) -> &EnrollmentRef {
        match self {
            Self::Authenticate(m) => &m.enrollment,
            Self::TokenUpdate(m) => &m.enrollment,
            Self::CheckOut(m) => &m.enrollment,
            Self::UserAuthenticate(m) => &m.enrollment,
            Self::GetBootstrapToken(m) => &m.enrollment,
            Self::SetBootstrapToken(m) => &m.enrollment,
            Self::DeclarativeManagement(m) => &m.enrollment,
            Self::GetToken(m) => &m.enrollment,
        }
    }
}

/// Decodes a check-in body (XML or binary plist).
///
/// Errors: [`ProtoError::MalformedPlist`] / [`ProtoError::NotADictionary`] for a body that is
/// not a plist dictionary, [`ProtoError::MissingMessageType`], [`ProtoError::UnknownMessageType`],
/// [`ProtoError::MissingKey`] / [`ProtoError::WrongType`] for the message's keys, and
/// [`ProtoError::MissingIdentity`] / [`ProtoError::InvalidIdentity`] when the identity keys name
/// no enrollment.
pub fn decode_checkin(bytes: &[u8]) -> Result<CheckinMessage, ProtoError> {
    let dict = parse_dictionary(bytes)?;
    let message_type = match dict.get("MessageType") {
        None => return Err(ProtoError::MissingMessageType),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(ProtoError::WrongType {
                context: "check-in",
                key: "MessageType",
                expected: "<string>",
                found: crate::plistutil::kind_name(other),
            })
        }
    };
    // Each arm names its MessageType once; the context string doubles as the error context.
    let start = |context: &'static str| -> Result<_, ProtoError> {
        let f = Fields::new(&dict, context);
        let identity = EnrollmentIdentity::from_fields(&f)?;
        let enrollment = identity.resolve_in(context)?;
        Ok((f, identity, enrollment))
    };
    Ok(match message_type {
        "Authenticate" => {
            let (f, identity, enrollment) = start("Authenticate")?;
            CheckinMessage::Authenticate(Authenticate {
                topic: f.req_string("Topic")?,
                os_version: f.opt_string("OSVersion")?,
                build_version: f.opt_string("BuildVersion")?,
                product_name: f.opt_string("ProductName")?,
                serial_number: f.opt_string("SerialNumber")?,
                imei: f.opt_string("IMEI")?,
                meid: f.opt_string("MEID")?,
                device_name: f.opt_string("DeviceName")?,
                model: f.opt_string("Model")?,
                model_name: f.opt_string("ModelName")?,
                identity,
                enrollment,
            })
        }
        "TokenUpdate" => {
            let (f, identity, enrollment) = start("TokenUpdate")?;
            CheckinMessage::TokenUpdate(TokenUpdate {
                topic: f.req_string("Topic")?,
                token: SecretBytes::new(f.req_data("Token")?),
                push_magic: SecretString::new(f.req_string("PushMagic")?),
                unlock_token: f.opt_data("UnlockToken")?.map(SecretBytes::new),
                awaiting_configuration: f.opt_bool("AwaitingConfiguration")?,
                not_on_console: f.opt_bool("NotOnConsole")?,
                identity,
                enrollment,
            })
        }
        "CheckOut" => {
            let (f, identity, enrollment) = start("CheckOut")?;
            CheckinMessage::CheckOut(CheckOut {
                topic: f.req_string("Topic")?,
                identity,
                enrollment,
            })
        }
        "UserAuthenticate" => {
            let (f, identity, enrollment) = start("UserAuthenticate")?;
            if identity.user_id.is_none() {
                return Err(ProtoError::MissingKey {
                    context: "UserAuthenticate",
                    key: "UserID",
                });
            }
            CheckinMessage::UserAuthenticate(UserAuthenticate {
                digest_response: f.opt_string("DigestResponse")?,
                identity,
                enrollment,
            })
        }
        "GetBootstrapToken" => {
            let (f, identity, enrollment) = start("GetBootstrapToken")?;
            CheckinMessage::GetBootstrapToken(GetBootstrapToken {
                awaiting_configuration: f.opt_bool("AwaitingConfiguration")?,
                identity,
                enrollment,
            })
        }
        "SetBootstrapToken" => {
            let (f, identity, enrollment) = start("SetBootstrapToken")?;
            CheckinMessage::SetBootstrapToken(SetBootstrapToken {
                bootstrap_token: f.opt_data("BootstrapToken")?.map(SecretBytes::new),
                awaiting_configuration: f.opt_bool("AwaitingConfiguration")?,
                identity,
                enrollment,
            })
        }
        "DeclarativeManagement" => {
            let (f, identity, enrollment) = start("DeclarativeManagement")?;
            CheckinMessage::DeclarativeManagement(DeclarativeManagement {
                endpoint: f.req_string("Endpoint")?,
                data: f.opt_data("Data")?,
                identity,
                enrollment,
            })
        }
        "GetToken" => {
            let (f, identity, enrollment) = start("GetToken")?;
            CheckinMessage::GetToken(GetToken {
                token_service_type: f.req_string("TokenServiceType")?,
                token_parameters: f.opt_dict("TokenParameters")?,
                identity,
                enrollment,
            })
        }
        other => return Err(ProtoError::UnknownMessageType(quote(other))),
    })
}

/// Writes a check-in message as an XML plist, as a device would send it.
///
/// Only the keys the message holds are written (absent options are left out); the
/// resolved [`EnrollmentRef`] is not written, it is derived again on decode.
pub fn encode_checkin(message: &CheckinMessage) -> Result<Vec<u8>, ProtoError> {
    let mut d = Dictionary::new();
    put_str(&mut d, "MessageType", Some(message.message_type()));
    put_identity(&mut d, message.identity());
    match message {
        CheckinMessage::Authenticate(m) => {
            put_str(&mut d, "Topic", Some(&m.topic));
            put_str(&mut d, "OSVersion", m.os_version.as_deref());
            put_str(&mut d, "BuildVersion", m.build_version.as_deref());
            put_str(&mut d, "ProductName", m.product_name.as_deref());
            put_str(&mut d, "SerialNumber", m.serial_number.as_deref());
            put_str(&mut d, "IMEI", m.imei.as_deref());
            put_str(&mut d, "MEID", m.meid.as_deref());
            put_str(&mut d, "DeviceName", m.device_name.as_deref());
            put_str(&mut d, "Model", m.model.as_deref());
            put_str(&mut d, "ModelName", m.model_name.as_deref());
        }
        CheckinMessage::TokenUpdate(m) => {
            put_str(&mut d, "Topic", Some(&m.topic));
            put_data(&mut d, "Token", Some(m.token.expose()));
            put_str(&mut d, "PushMagic", Some(m.push_magic.expose()));
            put_data(
                &mut d,
                "UnlockToken",
                m.unlock_token.as_ref().map(|t| t.expose()),
            );
            put_bool(&mut d, "AwaitingConfiguration", m.awaiting_configuration);
            put_bool(&mut d, "NotOnConsole", m.not_on_console);
        }
        CheckinMessage::CheckOut(m) => put_str(&mut d, "Topic", Some(&m.topic)),
        CheckinMessage::UserAuthenticate(m) => {
            put_str(&mut d, "DigestResponse", m.digest_response.as_deref());
        }
        CheckinMessage::GetBootstrapToken(m) => {
            put_bool(&mut d, "AwaitingConfiguration", m.awaiting_configuration);
        }
        CheckinMessage::SetBootstrapToken(m) => {
            put_data(
                &mut d,
                "BootstrapToken",
                m.bootstrap_token.as_ref().map(|t| t.expose()),
            );
            put_bool(&mut d, "AwaitingConfiguration", m.awaiting_configuration);
        }
        CheckinMessage::DeclarativeManagement(m) => {
            put_str(&mut d, "Endpoint", Some(&m.endpoint));
            put_data(&mut d, "Data", m.data.as_deref());
        }
        CheckinMessage::GetToken(m) => {
            put_str(&mut d, "TokenServiceType", Some(&m.token_service_type));
            if let Some(p) = &m.token_parameters {
                d.insert("TokenParameters".into(), Value::Dictionary(p.clone()));
            }
        }
    }
    to_xml_plist(&Value::Dictionary(d))
}

pub(crate) fn put_identity(d: &mut Dictionary, i: &EnrollmentIdentity) {
    put_str(d, "UDID", i.udid.as_deref());
    put_str(d, "UserID", i.user_id.as_deref());
    put_str(d, "UserShortName", i.user_short_name.as_deref());
    put_str(d, "UserLongName", i.user_long_name.as_deref());
    put_str(d, "EnrollmentID", i.enrollment_id.as_deref());
    put_str(d, "EnrollmentUserID", i.enrollment_user_id.as_deref());
}

fn put_str(d: &mut Dictionary, key: &str, v: Option<&str>) {
    if let Some(v) = v {
        d.insert(key.to_owned(), Value::String(v.to_owned()));
    }
}

fn put_data(d: &mut Dictionary, key: &str, v: Option<&[u8]>) {
    if let Some(v) = v {
        d.insert(key.to_owned(), Value::Data(v.to_vec()));
    }
}

fn put_bool(d: &mut Dictionary, key: &str, v: Option<bool>) {
    if let Some(v) = v {
        d.insert(key.to_owned(), Value::Boolean(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::EnrollmentKind;

    fn plist(body: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>{body}</dict></plist>"#
        )
        .into_bytes()
    }

    const TOPIC: &str = "<key>Topic</key><string>com.apple.mgmt.External.x</string>";

    #[test]
    fn user_enrollment_token_update_on_user_channel() {
        let body = plist(&format!(
            "<key>MessageType</key><string>TokenUpdate</string>{TOPIC}\
             <key>EnrollmentID</key><string>E1</string>\
             <key>EnrollmentUserID</key><string>EU1</string>\
             <key>UserShortName</key><string>ann</string>\
             <key>Token</key><data>AAEC</data>\
             <key>PushMagic</key><string>magic-1</string>"
        ));
        let CheckinMessage::TokenUpdate(m) = decode_checkin(&body).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(m.enrollment.kind, EnrollmentKind::UserEnrollmentUser);
        assert_eq!(m.enrollment.id, "E1:EU1");
        assert_eq!(m.token.expose(), &[0, 1, 2]);
        assert_eq!(m.push_magic.expose(), "magic-1");
        assert!(m.unlock_token.is_none());
        let shown = format!("{m:?}");
        assert!(!shown.contains("magic-1"), "{shown}");
    }

    #[test]
    fn every_message_type_decodes_and_round_trips() {
        let bodies = [
            format!("<key>MessageType</key><string>Authenticate</string>{TOPIC}"),
            format!(
                "<key>MessageType</key><string>TokenUpdate</string>{TOPIC}\
                 <key>Token</key><data>AAEC</data><key>PushMagic</key><string>m</string>\
                 <key>UnlockToken</key><data>AAEC</data>\
                 <key>AwaitingConfiguration</key><false/>"
            ),
            format!("<key>MessageType</key><string>CheckOut</string>{TOPIC}"),
            "<key>MessageType</key><string>UserAuthenticate</string>\
             <key>UserID</key><string>G1</string>"
                .to_owned(),
            "<key>MessageType</key><string>GetBootstrapToken</string>".to_owned(),
            "<key>MessageType</key><string>SetBootstrapToken</string>\
             <key>BootstrapToken</key><data>AAEC</data>"
                .to_owned(),
            "<key>MessageType</key><string>DeclarativeManagement</string>\
             <key>Endpoint</key><string>tokens</string>"
                .to_owned(),
            "<key>MessageType</key><string>GetToken</string>\
             <key>TokenServiceType</key><string>com.apple.maid</string>\
             <key>TokenParameters</key><dict><key>K</key><string>V</string></dict>"
                .to_owned(),
        ];
        for (body, expected) in bodies.iter().zip(CheckinMessage::MESSAGE_TYPES) {
            let body = plist(&format!("<key>UDID</key><string>U1</string>{body}"));
            let m = decode_checkin(&body).unwrap_or_else(|e| panic!("{expected}: {e}"));
            assert_eq!(m.message_type(), expected);
            assert_eq!(m.identity().udid.as_deref(), Some("U1"));
            let again = decode_checkin(&encode_checkin(&m).unwrap()).unwrap();
            assert_eq!(again, m, "{expected} round trip");
        }
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(
            decode_checkin(&plist("<key>UDID</key><string>U1</string>")),
            Err(ProtoError::MissingMessageType)
        );
        assert_eq!(
            decode_checkin(&plist("<key>MessageType</key><string>Bogus</string>")),
            Err(ProtoError::UnknownMessageType("Bogus".into()))
        );
        assert!(matches!(
            decode_checkin(&plist("<key>MessageType</key><integer>1</integer>")),
            Err(ProtoError::WrongType {
                key: "MessageType",
                ..
            })
        ));
        assert_eq!(
            decode_checkin(&plist(
                "<key>MessageType</key><string>TokenUpdate</string>\
                 <key>UDID</key><string>U1</string>{TOPIC}\
                 <key>PushMagic</key><string>m</string>"
                    .replace("{TOPIC}", TOPIC)
                    .as_str()
            )),
            Err(ProtoError::MissingKey {
                context: "TokenUpdate",
                key: "Token"
            })
        );
        assert_eq!(
            decode_checkin(&plist(&format!(
                "<key>MessageType</key><string>Authenticate</string>{TOPIC}"
            ))),
            Err(ProtoError::MissingIdentity {
                context: "Authenticate"
            })
        );
        assert_eq!(
            decode_checkin(&plist(
                "<key>MessageType</key><string>UserAuthenticate</string>\
                 <key>UDID</key><string>U1</string>"
            )),
            Err(ProtoError::MissingKey {
                context: "UserAuthenticate",
                key: "UserID"
            })
        );
        assert!(matches!(
            decode_checkin(b"<plist"),
            Err(ProtoError::MalformedPlist(_))
        ));
    }

    #[test]
    fn unknown_message_type_is_shortened() {
        let long = "A".repeat(10_000);
        let err = decode_checkin(&plist(&format!(
            "<key>MessageType</key><string>{long}</string>"
        )))
        .unwrap_err();
        assert!(err.to_string().len() < 200);
    }
}
