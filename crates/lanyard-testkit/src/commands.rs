//! The command channel as the simulated Mac sees it: reading the command the server sends
//! back, and a small built-in responder that answers the common queries with plausible
//! values (and refuses, as a User Enrollment does, what it may not run).

use plist::{Dictionary, Value};
use serde::Serialize;

use lanyard_proto::user_enrollment::{ue_command_policy, ue_device_information_query_policy};
use lanyard_proto::CommandStatus;

use crate::device::DeviceFacts;

/// Which channel a request speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// `EnrollmentID` alone.
    Device,
    /// `EnrollmentID` + `EnrollmentUserID`.
    User,
}

/// A command the server sent: `{CommandUUID, Command: {RequestType, …}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCommand {
    /// `CommandUUID`.
    pub uuid: String,
    /// `Command.RequestType`.
    pub request_type: String,
    /// The whole `Command` dictionary (with `RequestType`).
    pub command: Dictionary,
}

/// Read a command body. Written independently of `lanyard-proto` on purpose (see
/// [`crate::device`]).
pub fn parse_command(bytes: &[u8]) -> Result<ServerCommand, String> {
    let v = plist::from_bytes::<Value>(bytes)
        .map_err(|e| format!("the command is not a property list: {e}"))?;
    let Value::Dictionary(outer) = v else {
        return Err("the command is not a dictionary".into());
    };
    let uuid = outer
        .get("CommandUUID")
        .and_then(Value::as_string)
        .filter(|s| !s.is_empty())
        .ok_or("the command has no CommandUUID")?
        .to_owned();
    let command = outer
        .get("Command")
        .and_then(Value::as_dictionary)
        .ok_or("the command has no Command dictionary")?
        .clone();
    let request_type = command
        .get("RequestType")
        .and_then(Value::as_string)
        .filter(|s| !s.is_empty())
        .ok_or("the command has no RequestType")?
        .to_owned();
    Ok(ServerCommand {
        uuid,
        request_type,
        command,
    })
}

/// The simulated Mac's answer to one command.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `Status`.
    pub status: CommandStatus,
    /// Result keys (and `ErrorChain` for errors).
    pub result: Dictionary,
}

impl Reply {
    /// `Acknowledged` with these result keys.
    pub fn acknowledged(result: Dictionary) -> Self {
        Reply {
            status: CommandStatus::Acknowledged,
            result,
        }
    }

    /// `Error` with a one-entry `ErrorChain`.
    pub fn error(domain: &str, code: i64, description: &str) -> Self {
        let mut item = Dictionary::new();
        item.insert("ErrorDomain".into(), Value::String(domain.into()));
        item.insert("ErrorCode".into(), Value::Integer(code.into()));
        item.insert(
            "LocalizedDescription".into(),
            Value::String(description.into()),
        );
        item.insert(
            "USEnglishDescription".into(),
            Value::String(description.into()),
        );
        let mut result = Dictionary::new();
        result.insert(
            "ErrorChain".into(),
            Value::Array(vec![Value::Dictionary(item)]),
        );
        Reply {
            status: CommandStatus::Error,
            result,
        }
    }
}

/// A profile the simulated Mac holds (the enrollment profile, and any installed by command).
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledProfile {
    /// The profile's top-level dictionary.
    pub profile: Dictionary,
}

impl InstalledProfile {
    /// `PayloadIdentifier`.
    pub fn identifier(&self) -> Option<&str> {
        self.profile
            .get("PayloadIdentifier")
            .and_then(Value::as_string)
    }

    /// The entry of a `ProfileList` answer.
    pub fn list_entry(&self) -> Dictionary {
        let mut d = pick(
            &self.profile,
            &[
                "PayloadIdentifier",
                "PayloadUUID",
                "PayloadDisplayName",
                "PayloadOrganization",
                "PayloadDescription",
                "PayloadVersion",
                "PayloadRemovalDisallowed",
            ],
        );
        d.insert("IsManaged".into(), Value::Boolean(true));
        d.insert("IsEncrypted".into(), Value::Boolean(false));
        d.insert("HasRemovalPasscode".into(), Value::Boolean(false));
        let content: Vec<Value> = self
            .profile
            .get("PayloadContent")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_dictionary)
                    .map(|p| {
                        Value::Dictionary(pick(
                            p,
                            &[
                                "PayloadType",
                                "PayloadIdentifier",
                                "PayloadUUID",
                                "PayloadDisplayName",
                                "PayloadOrganization",
                                "PayloadVersion",
                            ],
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        d.insert("PayloadContent".into(), Value::Array(content));
        d
    }
}

/// True when a profile's `PayloadContent` holds a `com.apple.mdm` payload.
pub fn carries_mdm_payload(profile: &Dictionary) -> bool {
    profile
        .get("PayloadContent")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter().any(|p| {
                p.as_dictionary()
                    .and_then(|d| d.get("PayloadType"))
                    .and_then(Value::as_string)
                    == Some("com.apple.mdm")
            })
        })
}

/// A certificate the Mac holds, for `CertificateList`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCertificate {
    /// `CommonName`.
    pub common_name: String,
    /// `Data` (DER).
    pub der: Vec<u8>,
    /// `IsIdentity`: the Mac has its private key.
    pub is_identity: bool,
}

/// What the built-in responder knows about the Mac.
#[derive(Debug, Clone)]
pub struct ResponderContext<'a> {
    /// Model, OS, build.
    pub facts: &'a DeviceFacts,
    /// The channel the command came on.
    pub channel: Channel,
    /// The managed Apple Account.
    pub managed_apple_id: &'a str,
    /// The `EnrollmentID` (seeds stable fake values).
    pub enrollment_id: &'a str,
    /// The channel's push token (`PushToken` query).
    pub push_token: &'a [u8],
    /// Certificates installed by the enrollment (identity, CA).
    pub certificates: &'a [HeldCertificate],
}

/// Domain and code the simulated Mac uses for refusals (plausible, not Apple's exact codes).
const ERROR_DOMAIN: &str = "MCMDMErrorDomain";

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn b(v: bool) -> Value {
    Value::Boolean(v)
}

fn dict(pairs: Vec<(&str, Value)>) -> Value {
    let mut d = Dictionary::new();
    for (k, v) in pairs {
        d.insert(k.to_owned(), v);
    }
    Value::Dictionary(d)
}

/// The value of one `DeviceInformation` query, when the simulated Mac has one. Only queries
/// Apple's schema allows under macOS User Enrollment are ever asked of this function.
fn query_value(q: &str, ctx: &ResponderContext<'_>) -> Option<Value> {
    let f = ctx.facts;
    let laptop = f.model_name.starts_with("MacBook");
    Some(match q {
        "OSVersion" => s(&f.os_version),
        "BuildVersion" => s(&f.build_version),
        "ProductName" | "Model" => s(&f.product),
        "ModelName" => s(&f.model_name),
        "ModelNumber" => s("Z15S000AB"),
        "DeviceName" => s(&format!("Simulated {}", f.model_name)),
        "HostName" => s("simulated-mac.local"),
        "LocalHostName" => s("simulated-mac"),
        "IsSupervised" => b(false),
        "IsAppleSilicon" => b(true),
        "SupportsLOMDevice" => b(false),
        "SupportsiOSAppInstalls" => b(true),
        "SystemIntegrityProtectionEnabled" => b(true),
        "HasBattery" => b(laptop),
        "BatteryLevel" if laptop => Value::Real(0.82),
        "DeviceCapacity" => Value::Real(460.43),
        "AvailableDeviceCapacity" => Value::Real(212.07),
        "PushToken" => Value::Data(ctx.push_token.to_vec()),
        _ => return None,
    })
}

fn device_information(cmd: &ServerCommand, ctx: &ResponderContext<'_>) -> Reply {
    let queries: Vec<&str> = cmd
        .command
        .get("Queries")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_string).collect())
        .unwrap_or_default();
    let mut responses = Dictionary::new();
    for q in queries {
        // A User Enrollment silently leaves out what it may not reveal (UDID, serial…).
        if !ue_device_information_query_policy(q).is_allowed() {
            continue;
        }
        if let Some(v) = query_value(q, ctx) {
            responses.insert(q.to_owned(), v);
        }
    }
    let mut result = Dictionary::new();
    result.insert("QueryResponses".into(), Value::Dictionary(responses));
    Reply::acknowledged(result)
}

/// `SecurityInfo` with the keys macOS reports under User Enrollment (the schema forbids the
/// FileVault recovery-key, remote-desktop, bootstrap-token and recovery-lock keys there).
fn security_info() -> Reply {
    let info = dict(vec![
        ("FDE_Enabled", b(true)),
        ("SystemIntegrityProtectionEnabled", b(true)),
        ("AuthenticatedRootVolumeEnabled", b(true)),
        (
            "FirewallSettings",
            dict(vec![
                ("FirewallEnabled", b(true)),
                ("BlockAllIncoming", b(false)),
                ("StealthMode", b(false)),
                ("LoggingEnabled", b(true)),
                ("LoggingOption", s("throttled")),
            ]),
        ),
        (
            "FirmwarePasswordStatus",
            dict(vec![
                ("PasswordExists", b(false)),
                ("ChangePending", b(false)),
                ("AllowOroms", b(true)),
            ]),
        ),
        (
            "ManagementStatus",
            dict(vec![
                ("EnrolledViaDEP", b(false)),
                ("UserApprovedEnrollment", b(true)),
                ("IsUserEnrollment", b(true)),
                ("IsActivationLockManageable", b(false)),
            ]),
        ),
        (
            "SecureBoot",
            dict(vec![
                ("SecureBootLevel", s("full")),
                ("ExternalBootLevel", s("restricted")),
                ("ReducedSecurity", Value::Array(Vec::new())),
            ]),
        ),
    ]);
    let mut result = Dictionary::new();
    result.insert("SecurityInfo".into(), info);
    Reply::acknowledged(result)
}

fn certificate_list(ctx: &ResponderContext<'_>) -> Reply {
    let list = ctx
        .certificates
        .iter()
        .map(|c| {
            dict(vec![
                ("CommonName", s(&c.common_name)),
                ("Data", Value::Data(c.der.clone())),
                ("IsIdentity", b(c.is_identity)),
            ])
        })
        .collect();
    let mut result = Dictionary::new();
    result.insert("CertificateList".into(), Value::Array(list));
    Reply::acknowledged(result)
}

/// Answer `cmd` the way a Mac under User Enrollment plausibly would:
///
/// - commands the schema forbids under User Enrollment → `Error`;
/// - `DeviceInformation` → the allowed queries it knows, in `QueryResponses`;
/// - `SecurityInfo` → FileVault, SIP, firewall, management status, secure boot;
/// - `CertificateList` → the certificates the enrollment installed;
/// - `ProvisioningProfileList`, `ManagedApplicationList` → empty;
/// - `ProfileList` → `profiles`;
/// - `InstallProfile` / `RemoveProfile` → change `profiles` (a profile with an MDM payload is
///   `Error` here: [`crate::sim::SimMac::handle_command`] installs the enrollment profile's
///   renewal, with its SCEP);
/// - anything else → `Error` ("not supported by the simulated Mac").
pub fn builtin_reply(
    cmd: &ServerCommand,
    ctx: &ResponderContext<'_>,
    profiles: &mut Vec<InstalledProfile>,
) -> Reply {
    let policy = ue_command_policy(&cmd.request_type);
    if !policy.is_allowed() {
        return Reply::error(
            ERROR_DOMAIN,
            12021,
            &format!(
                "{} is not allowed on this enrollment: {}",
                cmd.request_type,
                policy.reason().unwrap_or("refused")
            ),
        );
    }
    match cmd.request_type.as_str() {
        "DeviceInformation" => device_information(cmd, ctx),
        "SecurityInfo" => security_info(),
        "CertificateList" => certificate_list(ctx),
        "ProvisioningProfileList" => {
            let mut result = Dictionary::new();
            result.insert("ProvisioningProfileList".into(), Value::Array(Vec::new()));
            Reply::acknowledged(result)
        }
        "ManagedApplicationList" => {
            let mut result = Dictionary::new();
            result.insert(
                "ManagedApplicationList".into(),
                Value::Dictionary(Dictionary::new()),
            );
            Reply::acknowledged(result)
        }
        "ProfileList" => {
            let mut result = Dictionary::new();
            result.insert(
                "ProfileList".into(),
                Value::Array(
                    profiles
                        .iter()
                        .map(|p| Value::Dictionary(p.list_entry()))
                        .collect(),
                ),
            );
            Reply::acknowledged(result)
        }
        "InstallProfile" => {
            let Some(payload) = cmd.command.get("Payload").and_then(Value::as_data) else {
                return Reply::error(ERROR_DOMAIN, 12000, "InstallProfile without Payload");
            };
            let content = match lanyard_pki::verify_cms_attached_untrusted(payload) {
                Ok((c, _)) => c,
                Err(_) => payload.to_vec(),
            };
            match plist::from_bytes::<Value>(&content) {
                Ok(Value::Dictionary(d)) if carries_mdm_payload(&d) => Reply::error(
                    "MCProfileErrorDomain",
                    1004,
                    "A profile with an MDM payload is installed only as the renewal of the \
                     enrollment profile (SimMac::handle_command), never by this responder.",
                ),
                Ok(Value::Dictionary(d)) => {
                    let p = InstalledProfile { profile: d };
                    let id = p.identifier().map(str::to_owned);
                    profiles.retain(|q| q.identifier().map(str::to_owned) != id || id.is_none());
                    profiles.push(p);
                    Reply::acknowledged(Dictionary::new())
                }
                _ => Reply::error("MCProfileErrorDomain", 1000, "The profile is malformed."),
            }
        }
        "RemoveProfile" => {
            let Some(id) = cmd.command.get("Identifier").and_then(Value::as_string) else {
                return Reply::error(ERROR_DOMAIN, 12000, "RemoveProfile without Identifier");
            };
            let before = profiles.len();
            profiles.retain(|p| p.identifier() != Some(id));
            if profiles.len() == before {
                Reply::error(
                    ERROR_DOMAIN,
                    12011,
                    &format!("The profile \u{201c}{id}\u{201d} is not installed."),
                )
            } else {
                Reply::acknowledged(Dictionary::new())
            }
        }
        other => Reply::error(
            ERROR_DOMAIN,
            12004,
            &format!("{other} is not supported by the simulated Mac"),
        ),
    }
}

/// The entries of `from` under `keys`, those it has.
fn pick(from: &Dictionary, keys: &[&str]) -> Dictionary {
    let mut d = Dictionary::new();
    for &key in keys {
        if let Some(v) = from.get(key) {
            d.insert(key.into(), v.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_proto::command::{encode_command, Command};

    const TOKEN: &[u8] = &[9u8; 32];

    fn certs() -> Vec<HeldCertificate> {
        vec![HeldCertificate {
            common_name: "Lanyard Identity".into(),
            der: vec![0x30, 0x00],
            is_identity: true,
        }]
    }

    fn ctx<'a>(facts: &'a DeviceFacts, certs: &'a [HeldCertificate]) -> ResponderContext<'a> {
        ResponderContext {
            facts,
            channel: Channel::Device,
            managed_apple_id: "ann@example.com",
            enrollment_id: "2C1B5D6E-0F5A-4C39-9D3F-6E2B1A0C9D11",
            push_token: TOKEN,
            certificates: certs,
        }
    }

    fn cmd(request_type: &str, payload: Dictionary) -> ServerCommand {
        let bytes = encode_command(&Command::new("C-1", request_type, payload)).unwrap();
        parse_command(&bytes).unwrap()
    }

    /// `InstallProfile` of `profile`, written as an XML plist.
    fn install(profile: Dictionary) -> ServerCommand {
        let mut bytes = Vec::new();
        plist::to_writer_xml(&mut bytes, &Value::Dictionary(profile)).unwrap();
        let mut p = Dictionary::new();
        p.insert("Payload".into(), Value::Data(bytes));
        cmd("InstallProfile", p)
    }

    #[test]
    fn reads_commands_lanyard_writes() {
        let c = cmd("ProfileList", Dictionary::new());
        assert_eq!(c.uuid, "C-1");
        assert_eq!(c.request_type, "ProfileList");
        assert!(parse_command(b"<plist><dict/></plist>").is_err());
    }

    #[test]
    fn device_information_leaves_out_forbidden_queries() {
        let facts = DeviceFacts::new("Mac14,2", "15.2");
        let held = certs();
        let mut p = Dictionary::new();
        p.insert(
            "Queries".into(),
            Value::Array(
                [
                    "OSVersion",
                    "UDID",
                    "SerialNumber",
                    "ModelName",
                    "BuildVersion",
                    "PushToken",
                    "WiFiMAC",
                    "IsUserEnrollment",
                ]
                .iter()
                .map(|q| s(q))
                .collect(),
            ),
        );
        let r = builtin_reply(
            &cmd("DeviceInformation", p),
            &ctx(&facts, &held),
            &mut Vec::new(),
        );
        assert_eq!(r.status, CommandStatus::Acknowledged);
        let qr = r.result["QueryResponses"].as_dictionary().unwrap();
        assert_eq!(qr["OSVersion"].as_string(), Some("15.2"));
        assert_eq!(qr["BuildVersion"].as_string(), Some("24C101"));
        assert!(!qr.contains_key("UDID"));
        assert!(!qr.contains_key("SerialNumber"));
        assert!(!qr.contains_key("WiFiMAC"));
        assert!(!qr.contains_key("IsUserEnrollment"));
        assert_eq!(qr["PushToken"].as_data(), Some(TOKEN));
        assert_eq!(qr.len(), 4);
    }

    #[test]
    fn profiles_install_list_remove_and_forbidden_commands() {
        let facts = DeviceFacts::new("Mac14,2", "15.2");
        let held = certs();
        let mut profiles = Vec::new();
        let mut prof = Dictionary::new();
        prof.insert("PayloadIdentifier".into(), s("com.example.wifi"));
        prof.insert("PayloadUUID".into(), s("U-1"));
        prof.insert("PayloadType".into(), s("Configuration"));
        prof.insert("PayloadContent".into(), Value::Array(vec![]));
        let r = builtin_reply(&install(prof), &ctx(&facts, &held), &mut profiles);
        assert_eq!(r.status, CommandStatus::Acknowledged);
        // A profile with an MDM payload is never installed by the built-in responder.
        let mut mdm = Dictionary::new();
        mdm.insert("PayloadIdentifier".into(), s("com.example.other-mdm"));
        mdm.insert("PayloadType".into(), s("Configuration"));
        mdm.insert(
            "PayloadContent".into(),
            Value::Array(vec![dict(vec![("PayloadType", s("com.apple.mdm"))])]),
        );
        let r = builtin_reply(&install(mdm), &ctx(&facts, &held), &mut profiles);
        assert_eq!(r.status, CommandStatus::Error);
        let r = builtin_reply(
            &cmd("ProfileList", Dictionary::new()),
            &ctx(&facts, &held),
            &mut profiles,
        );
        let list = r.result["ProfileList"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0].as_dictionary().unwrap()["PayloadIdentifier"].as_string(),
            Some("com.example.wifi")
        );
        let mut p = Dictionary::new();
        p.insert("Identifier".into(), s("com.example.wifi"));
        let r = builtin_reply(
            &cmd("RemoveProfile", p.clone()),
            &ctx(&facts, &held),
            &mut profiles,
        );
        assert_eq!(r.status, CommandStatus::Acknowledged);
        let r = builtin_reply(&cmd("RemoveProfile", p), &ctx(&facts, &held), &mut profiles);
        assert_eq!(r.status, CommandStatus::Error);

        let r = builtin_reply(
            &cmd("EraseDevice", Dictionary::new()),
            &ctx(&facts, &held),
            &mut profiles,
        );
        assert_eq!(r.status, CommandStatus::Error);
        let r = builtin_reply(
            &cmd("SecurityInfo", Dictionary::new()),
            &ctx(&facts, &held),
            &mut profiles,
        );
        assert_eq!(r.status, CommandStatus::Acknowledged);
        let si = r.result["SecurityInfo"].as_dictionary().unwrap();
        let ms = si["ManagementStatus"].as_dictionary().unwrap();
        assert_eq!(ms["IsUserEnrollment"].as_boolean(), Some(true));
        assert!(!si.contains_key("FDE_HasPersonalRecoveryKey"));
        let r = builtin_reply(
            &cmd("CertificateList", Dictionary::new()),
            &ctx(&facts, &held),
            &mut profiles,
        );
        let list = r.result["CertificateList"].as_array().unwrap();
        assert_eq!(
            list[0].as_dictionary().unwrap()["IsIdentity"].as_boolean(),
            Some(true)
        );
    }
}
