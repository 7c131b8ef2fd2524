//! The MDM command channel: what a device `PUT`s to the `ServerURL`, and the command it gets
//! back.
//!
//! Device → server: a [`CommandReport`] — `Status` (`Idle`, or the outcome of the previous
//! command), `CommandUUID`, `ErrorChain`, the identity keys, and every other key of the body
//! (the command's result: `QueryResponses`, `ProfileList`, …) kept as a dictionary for storage.
//!
//! Server → device: a [`Command`], written by [`encode_command`] as the XML plist
//! `{CommandUUID, Command: {RequestType, …payload}}`.

use std::fmt;
use std::str::FromStr;

use plist::{Dictionary, Value};
use serde::{Deserialize, Serialize};

use crate::error::{quote, ProtoError};
use crate::identity::{EnrollmentIdentity, EnrollmentRef};
use crate::plistutil::{parse_dictionary, to_xml_plist, Fields};

/// The `Status` of a command report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandStatus {
    /// The device is ready for a command; it reports no result.
    Idle,
    /// The previous command succeeded.
    Acknowledged,
    /// The previous command failed; see the `ErrorChain`.
    Error,
    /// The previous command was malformed.
    CommandFormatError,
    /// The device cannot run the previous command now; the server should send it again later.
    NotNow,
}

impl CommandStatus {
    /// All statuses, in protocol order.
    pub const ALL: [CommandStatus; 5] = [
        Self::Idle,
        Self::Acknowledged,
        Self::Error,
        Self::CommandFormatError,
        Self::NotNow,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "Idle",
            Self::Acknowledged => "Acknowledged",
            Self::Error => "Error",
            Self::CommandFormatError => "CommandFormatError",
            Self::NotNow => "NotNow",
        }
    }

    /// True for every status except `Idle`: the report is the outcome of a command, so it must
    /// name that command's `CommandUUID`.
    pub fn is_result(self) -> bool {
        self != Self::Idle
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommandStatus {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ProtoError::UnknownStatus(quote(s)))
    }
}

/// One entry of an `ErrorChain`. Every field is optional: devices fill them unevenly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorChainItem {
    /// `ErrorCode`.
    pub error_code: Option<i64>,
    /// `ErrorDomain`.
    pub error_domain: Option<String>,
    /// `LocalizedDescription`.
    pub localized_description: Option<String>,
    /// `USEnglishDescription`.
    pub us_english_description: Option<String>,
}

/// What a device reports on the command channel.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReport {
    /// The identity keys as sent.
    pub identity: EnrollmentIdentity,
    /// The enrollment they resolve to.
    pub enrollment: EnrollmentRef,
    /// `Status`.
    pub status: CommandStatus,
    /// `CommandUUID`: required for every status but `Idle`.
    pub command_uuid: Option<String>,
    /// `ErrorChain` (usually with `Status` `Error`).
    pub error_chain: Vec<ErrorChainItem>,
    /// Every other key of the body: the command's result, kept for storage (for example
    /// `RequestType`, `QueryResponses`). The keys above are not repeated here.
    pub result: Dictionary,
}

/// Keys of a command report that [`CommandReport`] holds in typed fields (the rest is its
/// `result`).
pub const REPORT_KEYS: [&str; 9] = [
    "Status",
    "CommandUUID",
    "ErrorChain",
    "UDID",
    "UserID",
    "UserShortName",
    "UserLongName",
    "EnrollmentID",
    "EnrollmentUserID",
];

/// Decodes a command-channel body.
///
/// Errors: not a plist dictionary; missing or unknown `Status`; a result status without
/// `CommandUUID`; a malformed `ErrorChain`; identity keys that name no enrollment.
pub fn decode_command_report(bytes: &[u8]) -> Result<CommandReport, ProtoError> {
    const CONTEXT: &str = "command report";
    let mut dict = parse_dictionary(bytes)?;
    let f = Fields::new(&dict, CONTEXT);
    let status: CommandStatus = f.req_string("Status")?.parse()?;
    let command_uuid = f.opt_string("CommandUUID")?;
    if status.is_result() && command_uuid.is_none() {
        return Err(ProtoError::MissingKey {
            context: CONTEXT,
            key: "CommandUUID",
        });
    }
    let error_chain = match f.opt_array("ErrorChain")? {
        None => Vec::new(),
        Some(items) => items
            .iter()
            .map(decode_error_chain_item)
            .collect::<Result<_, _>>()?,
    };
    let identity = EnrollmentIdentity::from_fields(&f)?;
    let enrollment = identity.resolve_in(CONTEXT)?;
    for key in REPORT_KEYS {
        dict.remove(key);
    }
    Ok(CommandReport {
        identity,
        enrollment,
        status,
        command_uuid,
        error_chain,
        result: dict,
    })
}

fn decode_error_chain_item(v: &Value) -> Result<ErrorChainItem, ProtoError> {
    const CONTEXT: &str = "ErrorChain item";
    let Value::Dictionary(d) = v else {
        return Err(ProtoError::WrongType {
            context: "command report",
            key: "ErrorChain",
            expected: "<array> of <dictionary>",
            found: crate::plistutil::kind_name(v),
        });
    };
    let f = Fields::new(d, CONTEXT);
    Ok(ErrorChainItem {
        error_code: f.opt_integer("ErrorCode")?,
        error_domain: f.opt_string("ErrorDomain")?,
        localized_description: f.opt_string("LocalizedDescription")?,
        us_english_description: f.opt_string("USEnglishDescription")?,
    })
}

/// A command for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// `CommandUUID`: the server's id for this command; the device echoes it in its report.
    pub uuid: String,
    /// `RequestType` (for example `DeviceInformation`).
    pub request_type: String,
    /// The other keys of the `Command` dictionary (must not contain `RequestType`).
    pub payload: Dictionary,
}

impl Command {
    /// A command with the given id.
    pub fn new(
        uuid: impl Into<String>,
        request_type: impl Into<String>,
        payload: Dictionary,
    ) -> Self {
        Self {
            uuid: uuid.into(),
            request_type: request_type.into(),
            payload,
        }
    }

    /// A command with a fresh random (version 4) UUID, upper-case as Apple writes them.
    pub fn with_random_uuid(request_type: impl Into<String>, payload: Dictionary) -> Self {
        let uuid = uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase();
        Self::new(uuid, request_type, payload)
    }
}

/// Writes a command as the XML plist the device expects:
/// `{CommandUUID: …, Command: {RequestType: …, …payload}}`.
///
/// Fails ([`ProtoError::Encode`]) for an empty `uuid` or `request_type`, a payload that already
/// holds `RequestType`, or payload values an XML plist cannot carry (UIDs, non-finite reals,
/// control characters).
pub fn encode_command(command: &Command) -> Result<Vec<u8>, ProtoError> {
    if command.uuid.is_empty() {
        return Err(ProtoError::Encode("empty CommandUUID".to_owned()));
    }
    if command.request_type.is_empty() {
        return Err(ProtoError::Encode("empty RequestType".to_owned()));
    }
    if command.payload.contains_key("RequestType") {
        return Err(ProtoError::Encode(
            "payload must not contain RequestType".to_owned(),
        ));
    }
    let mut inner = Dictionary::new();
    inner.insert(
        "RequestType".to_owned(),
        Value::String(command.request_type.clone()),
    );
    for (k, v) in command.payload.iter() {
        inner.insert(k.clone(), v.clone());
    }
    let mut outer = Dictionary::new();
    outer.insert("Command".to_owned(), Value::Dictionary(inner));
    outer.insert(
        "CommandUUID".to_owned(),
        Value::String(command.uuid.clone()),
    );
    to_xml_plist(&Value::Dictionary(outer))
}

/// Reads a command as a device would (the inverse of [`encode_command`]); used by the
/// simulated Mac and by tests.
pub fn decode_command(bytes: &[u8]) -> Result<Command, ProtoError> {
    let dict = parse_dictionary(bytes)?;
    let f = Fields::new(&dict, "command");
    let uuid = f.req_string("CommandUUID")?;
    let mut payload = f.opt_dict("Command")?.ok_or(ProtoError::MissingKey {
        context: "command",
        key: "Command",
    })?;
    let request_type = Fields::new(&payload, "command").req_string("RequestType")?;
    payload.remove("RequestType");
    Ok(Command {
        uuid,
        request_type,
        payload,
    })
}

/// Writes a command report as a device would send it (used by the simulated Mac and tests).
pub fn encode_command_report(report: &CommandReport) -> Result<Vec<u8>, ProtoError> {
    let mut d = report.result.clone();
    for key in REPORT_KEYS {
        d.remove(key);
    }
    d.insert(
        "Status".to_owned(),
        Value::String(report.status.as_str().to_owned()),
    );
    if let Some(uuid) = &report.command_uuid {
        d.insert("CommandUUID".to_owned(), Value::String(uuid.clone()));
    }
    if !report.error_chain.is_empty() {
        let items = report
            .error_chain
            .iter()
            .map(|e| {
                let mut item = Dictionary::new();
                if let Some(c) = e.error_code {
                    item.insert("ErrorCode".to_owned(), Value::Integer(c.into()));
                }
                for (key, v) in [
                    ("ErrorDomain", &e.error_domain),
                    ("LocalizedDescription", &e.localized_description),
                    ("USEnglishDescription", &e.us_english_description),
                ] {
                    if let Some(v) = v {
                        item.insert(key.to_owned(), Value::String(v.clone()));
                    }
                }
                Value::Dictionary(item)
            })
            .collect();
        d.insert("ErrorChain".to_owned(), Value::Array(items));
    }
    crate::checkin::put_identity(&mut d, &report.identity);
    to_xml_plist(&Value::Dictionary(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::EnrollmentKind;

    fn plist(body: &str) -> Vec<u8> {
        format!(r#"<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict>{body}</dict></plist>"#)
            .into_bytes()
    }

    #[test]
    fn idle_from_user_enrollment() {
        let r = decode_command_report(&plist(
            "<key>Status</key><string>Idle</string>\
             <key>EnrollmentID</key><string>E1</string>",
        ))
        .unwrap();
        assert_eq!(r.status, CommandStatus::Idle);
        assert_eq!(r.command_uuid, None);
        assert_eq!(r.enrollment.kind, EnrollmentKind::UserEnrollmentDevice);
        assert!(r.result.is_empty());
    }

    #[test]
    fn error_with_chain_keeps_the_rest() {
        let r = decode_command_report(&plist(
            "<key>Status</key><string>Error</string>\
             <key>CommandUUID</key><string>C1</string>\
             <key>UDID</key><string>U1</string>\
             <key>RequestType</key><string>InstallProfile</string>\
             <key>ErrorChain</key><array><dict>\
               <key>ErrorCode</key><integer>4001</integer>\
               <key>ErrorDomain</key><string>MCProfileErrorDomain</string>\
               <key>LocalizedDescription</key><string>bad</string>\
             </dict></array>",
        ))
        .unwrap();
        assert_eq!(r.status, CommandStatus::Error);
        assert_eq!(r.command_uuid.as_deref(), Some("C1"));
        assert_eq!(r.error_chain.len(), 1);
        assert_eq!(r.error_chain[0].error_code, Some(4001));
        assert_eq!(
            r.error_chain[0].error_domain.as_deref(),
            Some("MCProfileErrorDomain")
        );
        assert_eq!(
            r.result.get("RequestType").and_then(Value::as_string),
            Some("InstallProfile")
        );
        assert!(!r.result.contains_key("Status"));
        assert!(!r.result.contains_key("UDID"));

        let again = decode_command_report(&encode_command_report(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn report_errors() {
        assert_eq!(
            decode_command_report(&plist("<key>UDID</key><string>U1</string>")),
            Err(ProtoError::MissingKey {
                context: "command report",
                key: "Status"
            })
        );
        assert_eq!(
            decode_command_report(&plist(
                "<key>Status</key><string>Maybe</string><key>UDID</key><string>U1</string>"
            )),
            Err(ProtoError::UnknownStatus("Maybe".into()))
        );
        assert_eq!(
            decode_command_report(&plist(
                "<key>Status</key><string>Acknowledged</string><key>UDID</key><string>U1</string>"
            )),
            Err(ProtoError::MissingKey {
                context: "command report",
                key: "CommandUUID"
            })
        );
        assert!(matches!(
            decode_command_report(&plist(
                "<key>Status</key><string>Idle</string><key>UDID</key><string>U1</string>\
                 <key>ErrorChain</key><array><string>x</string></array>"
            )),
            Err(ProtoError::WrongType {
                key: "ErrorChain",
                ..
            })
        ));
        assert!(matches!(
            decode_command_report(&plist("<key>Status</key><string>Idle</string>")),
            Err(ProtoError::MissingIdentity { .. })
        ));
    }

    #[test]
    fn status_strings_round_trip() {
        for s in CommandStatus::ALL {
            assert_eq!(s.as_str().parse::<CommandStatus>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert!(!CommandStatus::Idle.is_result());
        assert!(CommandStatus::NotNow.is_result());
    }

    #[test]
    fn encode_command_shape() {
        let mut payload = Dictionary::new();
        payload.insert(
            "Queries".into(),
            Value::Array(vec![Value::String("OSVersion".into())]),
        );
        let c = Command::new("C-1", "DeviceInformation", payload);
        let bytes = encode_command(&c).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("<?xml"));
        let top = parse_dictionary(&bytes).unwrap();
        assert_eq!(
            top.get("CommandUUID").and_then(Value::as_string),
            Some("C-1")
        );
        let inner = top.get("Command").and_then(Value::as_dictionary).unwrap();
        assert_eq!(
            inner.get("RequestType").and_then(Value::as_string),
            Some("DeviceInformation")
        );
        assert!(inner.contains_key("Queries"));
        assert_eq!(decode_command(&bytes).unwrap(), c);
    }

    #[test]
    fn encode_command_refuses_what_xml_cannot_carry() {
        let mut bad = Dictionary::new();
        bad.insert("RequestType".into(), Value::String("X".into()));
        assert!(encode_command(&Command::new("C", "Y", bad)).is_err());
        let mut ctl = Dictionary::new();
        ctl.insert("K".into(), Value::String("a\u{1}b".into()));
        assert!(encode_command(&Command::new("C", "Y", ctl)).is_err());
        let mut nan = Dictionary::new();
        nan.insert("K".into(), Value::Real(f64::NAN));
        assert!(encode_command(&Command::new("C", "Y", nan)).is_err());
        let mut uid = Dictionary::new();
        uid.insert("K".into(), Value::Uid(plist::Uid::new(1)));
        assert!(encode_command(&Command::new("C", "Y", uid)).is_err());
        assert!(encode_command(&Command::new("", "Y", Dictionary::new())).is_err());
        assert!(encode_command(&Command::new("C", "", Dictionary::new())).is_err());
    }

    #[test]
    fn random_uuid_is_upper_case_v4() {
        let c = Command::with_random_uuid("ProfileList", Dictionary::new());
        let u = uuid::Uuid::parse_str(&c.uuid).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(c.uuid, c.uuid.to_uppercase());
    }
}
