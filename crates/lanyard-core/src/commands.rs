//! MDM commands: typed builders for the common ones and a raw escape hatch, the User Enrollment
//! limits (from Apple's schema, through `lanyard_proto::user_enrollment`) applied when a command
//! is queued, the command endpoint's report handling, and inventory kept from query results.

use std::collections::BTreeMap;

use plist::{Dictionary, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use lanyard_proto::command::{Command, CommandStatus};
use lanyard_proto::user_enrollment::{
    ue_command_policy, ue_device_information_query_policy, ue_payload_policy, Policy,
};
use lanyard_store::{
    Audit, CommandOutcome, CommandRecord, DeviceListQuery, Enrollment, EnrollmentId,
    EnrollmentMode, EnrollmentStatus, NewCommand,
};
/// A command's channel and state, as stored (closed sets).
pub use lanyard_store::{Channel, CommandState};

use crate::{Actor, CoreError, Lanyard, Result};

/// Largest inventory section (JSON) kept per enrollment: the device information, security
/// info, profiles, applications or certificates. A section over it is kept as a note of its
/// size, so an enrollment's inventory stays under about 5 MiB.
pub const INVENTORY_SECTION_LIMIT: usize = 1024 * 1024;

/// How long finished command results are kept.
pub const RESULT_RETENTION_DAYS: i64 = 90;
/// Largest profile accepted in an `InstallProfile` command.
pub const MAX_PROFILE_BYTES: usize = 1024 * 1024;

/// A command to queue.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "request_type", deny_unknown_fields)]
pub enum CommandSpec {
    /// `DeviceInformation` with the given queries (default: the ones User Enrollment allows
    /// that Lanyard shows as inventory).
    DeviceInformation {
        #[serde(default)]
        queries: Vec<String>,
    },
    SecurityInfo,
    ProfileList,
    /// `InstallProfile` with a `.mobileconfig` (plist, signed or not), base64 in JSON.
    InstallProfile {
        #[schema(value_type = String, format = Byte)]
        #[serde(with = "crate::b64")]
        profile: Vec<u8>,
    },
    RemoveProfile {
        identifier: String,
    },
    InstalledApplicationList {
        #[serde(default)]
        managed_apps_only: Option<bool>,
    },
    CertificateList {
        #[serde(default)]
        managed_only: Option<bool>,
    },
    /// `DeclarativeManagement` with the synchronisation tokens document (base64).
    DeclarativeManagement {
        #[schema(value_type = String, format = Byte)]
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// Any command: `RequestType` and the rest of the `Command` dictionary as an XML plist
    /// fragment (`<dict>…</dict>`), checked against the User Enrollment table like the others.
    Raw {
        raw_request_type: String,
        /// An XML plist dictionary with the command's other keys.
        #[serde(default)]
        plist: Option<String>,
    },
}

/// The DeviceInformation queries Lanyard asks for by default; only those Apple's schema allows
/// for User Enrollment are sent.
pub const DEFAULT_QUERIES: &[&str] = &[
    "OSVersion",
    "BuildVersion",
    "ProductName",
    "Model",
    "ModelName",
    "DeviceName",
    "DeviceCapacity",
    "AvailableDeviceCapacity",
    "IsSupervised",
];

fn refuse(what: &str, policy: &Policy) -> CoreError {
    CoreError::Invalid(format!(
        "{what} is not allowed for User Enrollment on macOS: {}",
        policy.reason().unwrap_or("refused by Apple's schema")
    ))
}

/// A raw command's extra keys: a whole XML plist, or the bare `<dict>…</dict>` fragment, read by
/// the depth-bounded reader.
fn read_command_plist(text: &str) -> std::result::Result<Value, lanyard_proto::ProtoError> {
    if text.contains("<plist") {
        lanyard_proto::read_plist(text.as_bytes())
    } else {
        lanyard_proto::read_plist(format!("<plist version=\"1.0\">{text}</plist>").as_bytes())
    }
}

/// Payload types inside a profile (top level and `PayloadContent`).
fn profile_payload_types(profile: &[u8]) -> Result<Vec<String>> {
    let bytes = if profile.first() == Some(&0x30) {
        lanyard_pki::verify_cms_attached_untrusted(profile)
            .map_err(|e| CoreError::Invalid(format!("the signed profile is malformed: {e}")))?
            .0
    } else {
        profile.to_vec()
    };
    // The depth-bounded reader devices' plists go through: a deeply nested upload is refused,
    // not a stack overflow. Profiles are XML (a binary one is refused with the reason).
    let v: Value = lanyard_proto::read_plist(&bytes)
        .map_err(|e| CoreError::Invalid(format!("the profile is not an XML plist: {e}")))?;
    let dict = v
        .as_dictionary()
        .ok_or_else(|| CoreError::Invalid("the profile is not a dictionary".into()))?;
    let mut out = Vec::new();
    if let Some(content) = dict.get("PayloadContent").and_then(Value::as_array) {
        for p in content {
            match p
                .as_dictionary()
                .and_then(|d| d.get("PayloadType"))
                .and_then(Value::as_string)
            {
                Some(t) => out.push(t.to_string()),
                None => {
                    return Err(CoreError::Invalid(
                        "a profile payload has no PayloadType".into(),
                    ))
                }
            }
        }
    }
    Ok(out)
}

impl CommandSpec {
    /// Builds the command and checks it against the User Enrollment limits.
    pub fn build(&self, user_enrollment: bool) -> Result<Command> {
        let (request_type, payload) = self.parts()?;
        if user_enrollment {
            let p = ue_command_policy(&request_type);
            if !p.is_allowed() {
                return Err(refuse(&request_type, &p));
            }
            if let Some(queries) = payload.get("Queries").and_then(Value::as_array) {
                for q in queries.iter().filter_map(Value::as_string) {
                    let p = ue_device_information_query_policy(q);
                    if !p.is_allowed() {
                        return Err(refuse(&format!("DeviceInformation query {q}"), &p));
                    }
                }
            }
            if let Some(profile) = payload.get("Payload").and_then(Value::as_data) {
                for t in profile_payload_types(profile)? {
                    let p = ue_payload_policy(&t);
                    if !p.is_allowed() {
                        return Err(refuse(&format!("profile payload {t}"), &p));
                    }
                }
            }
        }
        Ok(Command::with_random_uuid(request_type, payload))
    }

    fn parts(&self) -> Result<(String, Dictionary)> {
        let mut d = Dictionary::new();
        let rt = match self {
            CommandSpec::DeviceInformation { queries } => {
                let qs: Vec<Value> = if queries.is_empty() {
                    DEFAULT_QUERIES
                        .iter()
                        .filter(|q| ue_device_information_query_policy(q).is_allowed())
                        .map(|q| Value::String((*q).into()))
                        .collect()
                } else {
                    queries.iter().map(|q| Value::String(q.clone())).collect()
                };
                d.insert("Queries".into(), Value::Array(qs));
                "DeviceInformation"
            }
            CommandSpec::SecurityInfo => "SecurityInfo",
            CommandSpec::ProfileList => "ProfileList",
            CommandSpec::InstallProfile { profile } => {
                if profile.is_empty() || profile.len() > MAX_PROFILE_BYTES {
                    return Err(CoreError::Invalid(format!(
                        "profiles are 1 byte to {MAX_PROFILE_BYTES} bytes"
                    )));
                }
                profile_payload_types(profile)?;
                d.insert("Payload".into(), Value::Data(profile.clone()));
                "InstallProfile"
            }
            CommandSpec::RemoveProfile { identifier } => {
                if identifier.trim().is_empty() {
                    return Err(CoreError::Invalid(
                        "RemoveProfile needs an identifier".into(),
                    ));
                }
                d.insert("Identifier".into(), Value::String(identifier.trim().into()));
                "RemoveProfile"
            }
            CommandSpec::InstalledApplicationList { managed_apps_only } => {
                if let Some(m) = managed_apps_only {
                    d.insert("ManagedAppsOnly".into(), Value::Boolean(*m));
                }
                "InstalledApplicationList"
            }
            CommandSpec::CertificateList { managed_only } => {
                if let Some(m) = managed_only {
                    d.insert("ManagedOnly".into(), Value::Boolean(*m));
                }
                "CertificateList"
            }
            CommandSpec::DeclarativeManagement { data } => {
                d.insert("Data".into(), Value::Data(data.clone()));
                "DeclarativeManagement"
            }
            CommandSpec::Raw {
                raw_request_type,
                plist,
            } => {
                let rt = check_request_type(raw_request_type)?;
                if let Some(text) = plist.as_deref().filter(|t| !t.trim().is_empty()) {
                    let v: Value = read_command_plist(text).map_err(|e| {
                        CoreError::Invalid(format!("the command plist is malformed: {e}"))
                    })?;
                    let extra = v.into_dictionary().ok_or_else(|| {
                        CoreError::Invalid("the command plist must be a dictionary".into())
                    })?;
                    for (k, v) in extra {
                        if k != "RequestType" {
                            d.insert(k, v);
                        }
                    }
                }
                return Ok((rt.to_string(), d));
            }
        };
        Ok((rt.to_string(), d))
    }
}

/// Longest `RequestType` a raw command may name.
pub const MAX_REQUEST_TYPE_LEN: usize = 100;

/// The one rule for a typed-in `RequestType` (a raw command, from the API or the portal): 1 to
/// [`MAX_REQUEST_TYPE_LEN`] ASCII letters and digits, surrounding spaces ignored.
pub fn check_request_type(raw: &str) -> Result<&str> {
    let rt = raw.trim();
    if rt.is_empty()
        || rt.len() > MAX_REQUEST_TYPE_LEN
        || !rt.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(CoreError::Invalid(format!(
            "RequestType is 1 to {MAX_REQUEST_TYPE_LEN} letters and digits, e.g. EraseDevice"
        )));
    }
    Ok(rt)
}

/// Which enrollments a command goes to.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandTarget {
    /// These enrollments (ids).
    Enrollments(Vec<String>),
    /// Every enrolled device the device search finds for this text (managed Apple ID, the
    /// person's email, model family or product; `%`, `_` and `\` taken literally; "" = all):
    /// exactly the devices the portal's Devices page lists for it with the status "Enrolled".
    Filter { search: String },
}

/// The channel a command goes to: the device channel (`EnrollmentID`) or the user channel
/// (`EnrollmentUserID`) of a User Enrollment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandChannel {
    #[default]
    Device,
    User,
}

impl CommandChannel {
    /// Refuses a command on a channel Apple's schema says macOS does not take it on
    /// (`devicechannel: false` / `userchannel: false`): the Mac would answer `Error`.
    pub fn allows(self, request_type: &str) -> Result<()> {
        let Some((device, user)) =
            lanyard_proto::user_enrollment::macos_command_channels(request_type)
        else {
            return Ok(());
        };
        let (allowed, other) = match self {
            CommandChannel::Device => (device, "user"),
            CommandChannel::User => (user, "device"),
        };
        if allowed == Some(false) {
            return Err(CoreError::Invalid(format!(
                "{request_type} is not available on the {} channel on macOS (Apple's schema); \
                 send it on the {other} channel",
                self.as_str()
            )));
        }
        Ok(())
    }

    /// The channel the store queues on.
    pub fn channel(self) -> Channel {
        match self {
            CommandChannel::Device => Channel::Device,
            CommandChannel::User => Channel::User,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.channel().as_str()
    }
}

/// What queueing a command did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Queued {
    pub command_uuid: String,
    pub request_type: String,
    pub targets: u64,
    /// Enrollments the push job was asked to wake.
    pub push_requested: bool,
}

/// Who should be woken after a command was queued (the push job listens).
pub trait PushRequester: Send + Sync {
    fn request_push(&self, enrollment_ids: Vec<String>);
}

/// One command's state on one enrollment, for the API and portal.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandView {
    pub command_uuid: String,
    pub enrollment_id: String,
    pub channel: Channel,
    pub request_type: String,
    pub status: CommandState,
    pub queued_at: chrono::DateTime<chrono::Utc>,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The device's answer as JSON (from its plist), when finished.
    #[schema(value_type = Object)]
    pub result: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    pub error_chain: Option<serde_json::Value>,
}

fn plist_to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Array(a) => serde_json::Value::Array(a.iter().map(plist_to_json).collect()),
        Value::Dictionary(d) => serde_json::Value::Object(
            d.iter()
                .map(|(k, v)| (k.clone(), plist_to_json(v)))
                .collect(),
        ),
        Value::Boolean(b) => json!(b),
        Value::Data(d) => json!(format!("<{} bytes>", d.len())),
        Value::Date(d) => json!(d.to_xml_format()),
        Value::Real(r) => json!(r),
        Value::Integer(i) => i
            .as_signed()
            .map(|n| json!(n))
            .or_else(|| i.as_unsigned().map(|n| json!(n)))
            .unwrap_or(serde_json::Value::Null),
        Value::String(s) => json!(s),
        _ => serde_json::Value::Null,
    }
}

impl From<CommandRecord> for CommandView {
    fn from(r: CommandRecord) -> Self {
        Self {
            result: r.result.as_deref().and_then(stored_result),
            error_chain: r
                .error_chain
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
            command_uuid: r.command_uuid.0,
            enrollment_id: r.enrollment_id.0,
            channel: r.channel,
            request_type: r.request_type,
            status: r.status,
            queued_at: r.queued_at,
            sent_at: r.sent_at,
            finished_at: r.finished_at,
        }
    }
}

impl Lanyard {
    /// Queues a command after checking it against each target's enrollment mode; a forbidden
    /// command is refused with the reason and nothing is queued.
    pub async fn enqueue_command(
        &self,
        actor: &Actor,
        target: &CommandTarget,
        spec: &CommandSpec,
        push: bool,
    ) -> Result<Queued> {
        self.enqueue_audited(
            actor,
            target,
            CommandChannel::Device,
            spec,
            push,
            "command.enqueue",
        )
        .await
    }

    /// [`Lanyard::enqueue_command`] for a chosen channel; the user channel needs enrollments
    /// whose user channel has checked in (`EnrollmentUserID`).
    pub async fn enqueue_command_on(
        &self,
        actor: &Actor,
        target: &CommandTarget,
        channel: CommandChannel,
        spec: &CommandSpec,
        push: bool,
    ) -> Result<Queued> {
        self.enqueue_audited(actor, target, channel, spec, push, "command.enqueue")
            .await
    }

    async fn enqueue_audited(
        &self,
        actor: &Actor,
        target: &CommandTarget,
        channel: CommandChannel,
        spec: &CommandSpec,
        push: bool,
        action: &str,
    ) -> Result<Queued> {
        actor.require_write()?;
        match target {
            CommandTarget::Enrollments(ids) => {
                self.enqueue_for_ids(actor, ids, channel, spec, push, action)
                    .await
            }
            CommandTarget::Filter { search } => {
                self.enqueue_for_search(actor, search, channel, spec, push, action)
                    .await
            }
        }
    }

    /// The command built for its targets (User Enrollment limits when any target is one) and
    /// checked against the channel; its encoded payload.
    fn command_for(
        spec: &CommandSpec,
        any_user_enrollment: bool,
        channel: CommandChannel,
    ) -> Result<(Command, Vec<u8>)> {
        let command = spec.build(any_user_enrollment)?;
        channel.allows(&command.request_type)?;
        let payload = lanyard_proto::command::encode_command(&command)
            .map_err(|e| CoreError::Invalid(format!("the command cannot be encoded: {e}")))?;
        Ok((command, payload))
    }

    fn new_command(actor: &Actor, command: &Command, payload: Vec<u8>, push: bool) -> NewCommand {
        NewCommand {
            uuid: command.uuid.as_str().into(),
            request_type: command.request_type.clone(),
            payload,
            created_by: actor.name.clone(),
            push,
        }
    }

    /// Named enrollments: read in chunks, each checked in the order given.
    async fn enqueue_for_ids(
        &self,
        actor: &Actor,
        ids: &[String],
        channel: CommandChannel,
        spec: &CommandSpec,
        push: bool,
        action: &str,
    ) -> Result<Queued> {
        if ids.is_empty() || ids.len() > 100_000 {
            return Err(CoreError::Invalid("name 1 to 100,000 enrollments".into()));
        }
        let found: std::collections::HashMap<EnrollmentId, Enrollment> = self
            .store
            .enrollments_by_ids(ids)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let mut enrollments = Vec::with_capacity(ids.len());
        for id in ids {
            let e = found
                .get(id.as_str())
                .ok_or_else(|| CoreError::NotFound(format!("enrollment {id}")))?;
            // An inactive enrollment may be tried by name: its answer revives it.
            let reachable = e.status == EnrollmentStatus::Enrolled
                || (e.status == EnrollmentStatus::Inactive && e.enrolled_at.is_some());
            if !reachable {
                return Err(CoreError::Invalid(format!(
                    "enrollment {id} is {}, not enrolled",
                    e.status
                )));
            }
            enrollments.push(e);
        }
        if channel == CommandChannel::User {
            if let Some(e) = enrollments.iter().find(|e| e.user_channel_id.is_none()) {
                return Err(no_user_channel(&e.id));
            }
        }
        let any_ue = enrollments
            .iter()
            .any(|e| e.mode == EnrollmentMode::UserEnrollment);
        let (command, payload) = Self::command_for(spec, any_ue, channel)?;
        let targets: Vec<(EnrollmentId, Channel)> = enrollments
            .iter()
            .map(|e| (e.id.clone(), channel.channel()))
            .collect();
        let audit = Audit::new(
            &actor.name,
            action,
            &command.uuid,
            json!({"request_type": command.request_type, "targets": targets.len(),
                   "first_target": targets.first().map(|t| &t.0)}),
        );
        let n = self
            .store
            .enqueue_command(
                &Self::new_command(actor, &command, payload, push),
                &targets,
                &audit,
            )
            .await?;
        let push_requested = push && self.pusher.is_some();
        if push_requested {
            self.request_push(enrollments.iter().map(|e| e.id.0.clone()).collect());
        }
        Ok(Queued {
            command_uuid: command.uuid,
            request_type: command.request_type,
            targets: n,
            push_requested,
        })
    }

    /// Every enrolled device the device search finds: counted, then queued by the store in one
    /// `INSERT … SELECT` — no enrollment row is loaded here, whatever the number of devices.
    async fn enqueue_for_search(
        &self,
        actor: &Actor,
        search: &str,
        channel: CommandChannel,
        spec: &CommandSpec,
        push: bool,
        action: &str,
    ) -> Result<Queued> {
        let filter = filter_target(search);
        let found = self.store.count_command_targets(&filter).await?;
        if found.matching > lanyard_store::MAX_DEVICE_LIST {
            return Err(CoreError::Invalid(format!(
                "{} devices match; a command by search reaches at most {}, so narrow the search",
                found.matching,
                lanyard_store::MAX_DEVICE_LIST
            )));
        }
        if found.matching == 0 {
            return Err(CoreError::Invalid("no enrolled device matches".into()));
        }
        if channel == CommandChannel::User {
            if let Some(id) = &found.without_user_channel {
                return Err(no_user_channel(id));
            }
        }
        let (command, payload) = Self::command_for(spec, found.user_enrollments > 0, channel)?;
        // `targets` is added by the store: how many were queued.
        let audit = Audit::new(
            &actor.name,
            action,
            &command.uuid,
            json!({"request_type": command.request_type, "search": search}),
        );
        let queued = self
            .store
            .enqueue_command_matching(
                &Self::new_command(actor, &command, payload, push),
                &filter,
                channel.channel(),
                &audit,
            )
            .await?;
        let push_requested = push && self.pusher.is_some();
        if push_requested {
            self.request_push(queued.push_ids);
        }
        Ok(Queued {
            command_uuid: command.uuid,
            request_type: command.request_type,
            targets: queued.targets,
            push_requested,
        })
    }

    /// Unenrolls a device: queues `RemoveProfile` for its enrollment profile, which on a User
    /// Enrollment removes the MDM profile and with it the managed volume. The device answers
    /// with `CheckOut`, which ends the enrollment.
    pub async fn unenroll(&self, actor: &Actor, enrollment_id: &str, push: bool) -> Result<Queued> {
        actor.require_write()?;
        let e = self
            .store
            .enrollment(enrollment_id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("enrollment {enrollment_id}")))?;
        if e.status == EnrollmentStatus::CheckedOut {
            return Err(CoreError::Conflict(format!(
                "enrollment {enrollment_id} has already checked out"
            )));
        }
        let queued = self
            .enqueue_audited(
                actor,
                &CommandTarget::Enrollments(vec![e.id.0.clone()]),
                CommandChannel::Device,
                &CommandSpec::RemoveProfile {
                    identifier: crate::enrollment::profile_identifier(&e.id),
                },
                push,
                "enrollment.unenroll",
            )
            .await?;
        Ok(queued)
    }

    /// Makes the person on this Mac sign in again: forgets the enrollment's bearer token, so
    /// the Mac's next user-channel request is answered `401` with the `apple-as-web` challenge
    /// and the Mac runs the web sign-in again (Apple, "Onboarding users with account
    /// sign-in": the server may invalidate the token at any time to force
    /// re-authentication).
    pub async fn require_sign_in(&self, actor: &Actor, enrollment_id: &str) -> Result<()> {
        actor.require_write()?;
        self.store
            .revoke_bearer(
                enrollment_id,
                &Audit::new(
                    &actor.name,
                    "enrollment.require_sign_in",
                    enrollment_id,
                    json!({}),
                ),
            )
            .await?;
        Ok(())
    }

    pub async fn command_history(
        &self,
        enrollment_id: &str,
        limit: i64,
    ) -> Result<Vec<CommandView>> {
        Ok(self
            .store
            .command_history(enrollment_id, limit)
            .await?
            .into_iter()
            .map(CommandView::from)
            .collect())
    }

    pub async fn command_targets(&self, command_uuid: &str) -> Result<Vec<CommandView>> {
        let t = self.store.command_targets(command_uuid).await?;
        if t.is_empty() {
            return Err(CoreError::NotFound(format!("command {command_uuid}")));
        }
        Ok(t.into_iter().map(CommandView::from).collect())
    }

    /// An enrollment's inventory (what its devices reported), as JSON.
    pub async fn inventory(&self, enrollment_id: &str) -> Result<serde_json::Value> {
        Ok(self
            .store
            .inventory(enrollment_id)
            .await?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({})))
    }
}

fn no_user_channel(id: &str) -> CoreError {
    CoreError::Invalid(format!(
        "enrollment {id} has no user channel yet (no user TokenUpdate)"
    ))
}

/// The device search a [`CommandTarget::Filter`] runs: the enrolled devices matching `search`,
/// all of them (up to [`lanyard_store::MAX_DEVICE_LIST`]).
pub fn filter_target(search: &str) -> DeviceListQuery {
    DeviceListQuery {
        search: Some(search.to_string()),
        status: Some(EnrollmentStatus::Enrolled),
        declarations_failing: false,
        sort: lanyard_store::DeviceSort::Created,
        descending: false,
        offset: 0,
        limit: lanyard_store::MAX_DEVICE_LIST,
    }
}

/// The outcome a result report records (`None` for `Idle`). The stored result is the report's
/// body as received (`body`, bounded by the command endpoint's body limit): nothing is
/// re-encoded on the device path; [`CommandView`] reads the result keys back out of it.
pub(crate) fn outcome_of(
    report: &lanyard_proto::command::CommandReport,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<CommandOutcome>> {
    if !report.status.is_result() {
        return Ok(None);
    }
    let uuid = report
        .command_uuid
        .clone()
        .ok_or_else(|| CoreError::Invalid("a result must name its CommandUUID".into()))?;
    let Some(status) = CommandState::of_report(report.status) else {
        return Ok(None);
    };
    let error_chain = (!report.error_chain.is_empty())
        .then(|| serde_json::to_string(&report.error_chain).ok())
        .flatten();
    Ok(Some(CommandOutcome {
        command_uuid: uuid.into(),
        status,
        result: Some(body.to_vec()),
        error_chain,
        // NotNow: due again at the next poll (see the store's exchange).
        retry_after: (report.status == CommandStatus::NotNow).then_some(now),
    }))
}

/// A stored result (a command report's body) as the admin reads it: the report's result keys,
/// without the keys the report's typed fields hold (status, identity, error chain).
fn stored_result(body: &[u8]) -> Option<serde_json::Value> {
    let mut value = plist::from_bytes::<Value>(body).ok()?;
    if let Value::Dictionary(d) = &mut value {
        for key in lanyard_proto::command::REPORT_KEYS {
            d.remove(key);
        }
    }
    Some(plist_to_json(&value))
}

/// The result key a request type's answer carries and the inventory section it fills.
pub(crate) fn inventory_section(request_type: &str) -> Option<(&'static str, &'static str)> {
    Some(match request_type {
        "DeviceInformation" => ("QueryResponses", "device_information"),
        "SecurityInfo" => ("SecurityInfo", "security_info"),
        "ProfileList" => ("ProfileList", "profiles"),
        "InstalledApplicationList" => ("InstalledApplicationList", "applications"),
        "CertificateList" => ("CertificateList", "certificates"),
        _ => return None,
    })
}

/// Whether a result carries anything the inventory keeps (any request type's result key).
pub(crate) fn carries_inventory(result: &Dictionary) -> bool {
    [
        "QueryResponses",
        "SecurityInfo",
        "ProfileList",
        "InstalledApplicationList",
        "CertificateList",
    ]
    .iter()
    .any(|k| result.contains_key(k))
}

/// The inventory document with a result of `request_type` folded in, or `None` when the
/// section would not change (then nothing needs writing; `updated_at` is the last change).
pub(crate) fn merge_inventory(
    current: Option<&str>,
    request_type: &str,
    result: &Dictionary,
) -> Option<String> {
    let (key, section) = inventory_section(request_type)?;
    let value = result.get(key)?;
    let mut inv: BTreeMap<String, serde_json::Value> = current
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    let mut new = plist_to_json(value);
    if section == "device_information" {
        // Merge: a query for a few keys must not erase the others.
        if let (Some(old), Some(fresh)) = (
            inv.get(section).and_then(|v| v.as_object()).cloned(),
            new.as_object_mut(),
        ) {
            // (A note that an earlier answer was too large is not carried over.)
            for (k, v) in old.into_iter().filter(|(k, _)| k != "omitted") {
                fresh.entry(k).or_insert(v);
            }
        }
    }
    let size = serde_json::to_string(&new).map_or(usize::MAX, |t| t.len());
    if size > INVENTORY_SECTION_LIMIT {
        new = json!({"omitted": format!(
            "the reported section is {size} bytes; at most {INVENTORY_SECTION_LIMIT} are kept"
        )});
    }
    if inv.get(section) == Some(&new) {
        return None;
    }
    inv.insert(section.into(), new);
    inv.insert("updated_at".into(), json!(lanyard_store::now()));
    serde_json::to_string(&inv).ok()
}

/// [`merge_inventory`] for the store's exchange transaction (it owns the result, as the store
/// may run the exchange on another thread).
pub(crate) struct ResultInventory(pub Dictionary);

impl lanyard_store::InventoryMerge for ResultInventory {
    /// SHA-256 over the section's value (the part [`merge_inventory`] reads), walked with type
    /// tags and lengths so that different values cannot run together.
    fn digest(&self, request_type: &str) -> Option<String> {
        use sha2::{Digest, Sha256};
        let (key, _) = inventory_section(request_type)?;
        let value = self.0.get(key)?;
        let mut h = Sha256::new();
        digest_value(value, &mut h);
        Some(hex::encode(h.finalize()))
    }

    fn merge(&self, request_type: &str, current: Option<&str>) -> Option<String> {
        merge_inventory(current, request_type, &self.0)
    }
}

/// Feeds a plist value into a digest: a tag per type, lengths before contents.
fn digest_value(v: &Value, h: &mut sha2::Sha256) {
    use sha2::Digest;
    let len = |h: &mut sha2::Sha256, n: usize| h.update((n as u64).to_be_bytes());
    // A type's tag, then the length, then the bytes.
    let bytes = |h: &mut sha2::Sha256, tag: &[u8], b: &[u8]| {
        h.update(tag);
        len(h, b.len());
        h.update(b);
    };
    match v {
        Value::Array(a) => {
            h.update(b"a");
            len(h, a.len());
            for x in a {
                digest_value(x, h);
            }
        }
        Value::Dictionary(d) => {
            h.update(b"d");
            len(h, d.len());
            for (k, x) in d {
                len(h, k.len());
                h.update(k.as_bytes());
                digest_value(x, h);
            }
        }
        Value::Boolean(b) => h.update([b'b', u8::from(*b)]),
        Value::Data(d) => bytes(h, b"x", d),
        Value::Date(d) => bytes(h, b"t", d.to_xml_format().as_bytes()),
        Value::Real(r) => {
            h.update(b"r");
            h.update(r.to_bits().to_be_bytes());
        }
        Value::Integer(i) => match (i.as_signed(), i.as_unsigned()) {
            (Some(n), _) => {
                h.update(b"i");
                h.update(n.to_be_bytes());
            }
            (None, Some(n)) => {
                h.update(b"u");
                h.update(n.to_be_bytes());
            }
            (None, None) => h.update(b"?"),
        },
        Value::String(s) => bytes(h, b"s", s.as_bytes()),
        Value::Uid(u) => {
            h.update(b"U");
            h.update(u.get().to_be_bytes());
        }
        _ => h.update(b"?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_enrollment_limits_come_from_the_schema() {
        let erase = CommandSpec::Raw {
            raw_request_type: "EraseDevice".into(),
            plist: None,
        };
        let err = erase.build(true).unwrap_err().to_string();
        assert!(
            err.contains("EraseDevice is not allowed for User Enrollment"),
            "{err}"
        );
        assert!(
            erase.build(false).is_ok(),
            "allowed outside User Enrollment"
        );
        let serial = CommandSpec::DeviceInformation {
            queries: vec!["SerialNumber".into()],
        };
        assert!(serial
            .build(true)
            .unwrap_err()
            .to_string()
            .contains("SerialNumber"));
        let ok = CommandSpec::DeviceInformation { queries: vec![] }
            .build(true)
            .unwrap();
        assert_eq!(ok.request_type, "DeviceInformation");
        let sent = ok.payload.get("Queries").and_then(Value::as_array).unwrap();
        assert!(sent.iter().any(|q| q.as_string() == Some("OSVersion")));
        assert!(CommandSpec::ProfileList.build(true).is_ok());
        assert!(CommandSpec::SecurityInfo.build(true).is_ok());
    }

    #[test]
    fn raw_commands_are_checked() {
        let bad = CommandSpec::Raw {
            raw_request_type: "Device Information".into(),
            plist: None,
        };
        assert!(bad.build(false).is_err());
        for (raw, ok) in [
            ("EraseDevice", true),
            (" ProfileList ", true),
            ("", false),
            ("<script>", false),
            ("com.apple.Thing", false),
            (&"A".repeat(MAX_REQUEST_TYPE_LEN + 1), false),
        ] {
            assert_eq!(check_request_type(raw).is_ok(), ok, "{raw:?}");
        }
        let bad_plist = CommandSpec::Raw {
            raw_request_type: "ProfileList".into(),
            plist: Some("<dict><key>x</key>".into()),
        };
        assert!(bad_plist.build(false).is_err());
        let good = CommandSpec::Raw {
            raw_request_type: "ProfileList".into(),
            plist: Some("<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>ManagedOnly</key><true/></dict></plist>".into()),
        };
        let c = good.build(true).unwrap();
        assert_eq!(c.payload.get("ManagedOnly"), Some(&Value::Boolean(true)));
    }

    #[test]
    fn profiles_are_checked_payload_by_payload() {
        let profile = |t: &str| {
            format!(
                "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>PayloadType</key>\
                 <string>Configuration</string><key>PayloadContent</key><array><dict>\
                 <key>PayloadType</key><string>{t}</string></dict></array></dict></plist>"
            )
            .into_bytes()
        };
        let wifi = CommandSpec::InstallProfile {
            profile: profile("com.apple.wifi.managed"),
        };
        assert!(
            wifi.build(true).is_ok(),
            "Wi-Fi is allowed under User Enrollment"
        );
        let restrictions = CommandSpec::InstallProfile {
            profile: profile("com.apple.applicationaccess.new"),
        };
        let r = restrictions.build(true);
        // The verdict must match the schema table, whatever it is.
        assert_eq!(
            r.is_ok(),
            ue_payload_policy("com.apple.applicationaccess.new").is_allowed()
        );
        let garbage = CommandSpec::InstallProfile {
            profile: b"not a plist".to_vec(),
        };
        assert!(garbage.build(true).is_err());
    }

    #[test]
    fn deeply_nested_uploads_are_refused_not_a_crash() {
        let deep = |n: usize| format!("{}{}", "<array>".repeat(n), "</array>".repeat(n));
        let profile = format!(
            "<plist version=\"1.0\"><dict><key>PayloadContent</key>{}</dict></plist>",
            deep(35_000)
        );
        let err = profile_payload_types(profile.as_bytes()).unwrap_err();
        assert!(matches!(err, CoreError::Invalid(_)), "{err}");
        let raw = CommandSpec::Raw {
            raw_request_type: "ProfileList".into(),
            plist: Some(format!("<dict><key>K</key>{}</dict>", deep(35_000))),
        };
        assert!(matches!(raw.build(true), Err(CoreError::Invalid(_))));
        // The bare fragment still works.
        let ok = CommandSpec::Raw {
            raw_request_type: "ProfileList".into(),
            plist: Some("<dict><key>ManagedOnly</key><true/></dict>".into()),
        };
        let built = ok.build(true).unwrap();
        assert_eq!(built.request_type, "ProfileList");
    }
}
