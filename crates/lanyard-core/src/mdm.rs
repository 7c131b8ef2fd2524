//! The device service: every request a Mac makes after enrollment — check-ins (`PUT
//! /mdm/checkin`) and the command channel (`PUT /mdm/command`) — goes through [`MdmService`].
//!
//! One identity rule, written once and applied to both:
//! 1. the `Mdm-Signature` (a detached CMS signature by the identity certificate, the profile
//!    sets `SignMessage`) must be present and verify over the exact body and chain to our CA —
//!    otherwise `Invalid` (HTTP 400: malformed or unverifiable, the device may retry);
//! 2. the signer must be the identity of an enrollment (its current one, or its renewed one,
//!    whose first use makes it current and retires the old one) — otherwise
//!    `UnrecognizedDevice`;
//! 3. that enrollment must be live and bound to the request's `EnrollmentID`
//!    ([`IdentityBinding::check`]) — otherwise `UnrecognizedDevice` (HTTP 403
//!    `com.apple.unrecognized.device`, Apple's documented way to make a device unenroll;
//!    Apple recommends it instead of a 401, which the legacy protocol treats as "unenroll" and
//!    which makes a User Enrollment delete its managed volume);
//! 4. on the **user channel** the Mac also sends `Authorization: Bearer <token>` (Apple,
//!    "Onboarding users with account sign-in": on macOS the token is tied to the user, so it
//!    comes on user-channel requests and not on device-channel ones). The token must be the
//!    enrollment's bearer (the access token it enrolled with, or one from a later
//!    re-authentication), and its person must still be enabled — otherwise `Unauthorized`,
//!    which the HTTP layer answers with `401` and the `apple-as-web` challenge so the Mac signs
//!    the person in again. `CheckOut` is never challenged (the profile is already gone).
//!
//! Each check-in message has its own handler, and each is one store transaction.

use std::sync::Arc;

use lanyard_pki::SignerCache;
use lanyard_proto::checkin::{Authenticate, CheckinMessage, DeclarativeManagement, TokenUpdate};
use lanyard_proto::command::CommandStatus;
use lanyard_proto::{EnrollmentKind, OsVersion};
use lanyard_store::{
    AuthenticateRecord, Channel, CommandExchange, Enrollment, EnrollmentStatus, Exchanged,
    IdentityBinding, IgnoredResult, InventoryMerge, NextCommand, StoreError, TokenUpdateRecord,
};
use tracing::field::Empty;
use tracing::Span;

use crate::admins::hash_secret;
use crate::commands::{carries_inventory, outcome_of, ResultInventory};
use crate::declarations::{self, DeclarativeRequest};
use crate::enrollment::{refuse_old_os, DevicePki};
use crate::{CoreError, Lanyard, Result};

// What a device may write, bounded per enrollment (docs/SECURITY.md, "What a device can
// store"). Sizes are of the request body as it arrives, checked after the signature and the
// decode and before anything is written; a larger body is refused with 413.

/// Largest check-in body other than `DeclarativeManagement`. Apple's check-in messages are a
/// few short strings and, for `TokenUpdate`, a 32-byte push token, the PushMagic and an
/// optional UnlockToken keybag (`../shared/apple-schema/mdm/checkin/*.yaml`): the captured
/// `Authenticate` is 804 bytes and the `TokenUpdate` with an UnlockToken 2,430 bytes
/// (`../shared/fixtures/nanomdm/`). 64 KiB is over 25 times the largest.
pub const CHECKIN_MESSAGE_LIMIT: usize = 64 * 1024;
/// Largest `DeclarativeManagement` check-in, the largest check-in body. Its `Data` is a JSON
/// document: sync tokens, or a status report whose `StatusItems` are the subscribed items
/// (`../shared/apple-schema/mdm/checkin/declarativemanagement.yaml`,
/// `../shared/apple-schema/declarative/protocol/statusreport.yaml`); the largest items are
/// lists (managed apps, managed certificates, accounts), which under User Enrollment hold
/// only what this server manages: tens of KiB, so 512 KiB leaves ample room.
pub const DECLARATIVE_MESSAGE_LIMIT: usize = 512 * 1024;
/// Largest command report. Results of `InstalledApplicationList`, `CertificateList` (each
/// certificate's DER as `Data`) and `ProfileList` grow with the Mac
/// (`../shared/apple-schema/mdm/commands/application.installed.list.yaml`,
/// `certificate.list.yaml`, `profile.list.yaml`); a Mac with a thousand applications
/// answers about 1 MiB.
pub const COMMAND_REPORT_LIMIT: usize = 2 * 1024 * 1024;
/// Largest `Endpoint` of a `DeclarativeManagement` check-in (`declaration/<type>/<id>`).
pub const DECLARATIVE_ENDPOINT_LIMIT: usize = 512;

fn too_large(what: &str, limit: usize) -> CoreError {
    CoreError::TooLarge(format!(
        "{what} is larger than this server accepts ({} KiB at most)",
        limit / 1024
    ))
}

/// A `DeclarativeManagement` `Endpoint` as Apple's schema lists them (`tokens`,
/// `declaration-items`, `status` or `declaration/<type>/<identifier>`, read by
/// [`DeclarativeRequest::parse`]), at most [`DECLARATIVE_ENDPOINT_LIMIT`] long.
fn check_endpoint(endpoint: &str) -> Result<()> {
    if endpoint.len() > DECLARATIVE_ENDPOINT_LIMIT {
        return Err(CoreError::Invalid(format!(
            "DeclarativeManagement Endpoint is longer than {DECLARATIVE_ENDPOINT_LIMIT} bytes"
        )));
    }
    DeclarativeRequest::parse(endpoint, Some(&[])).map(|_| ())
}

/// What the device-facing handler answers to a check-in.
#[derive(Debug)]
pub enum CheckinReply {
    /// 200 with an empty body.
    Ok,
    /// 200 with this plist body.
    Plist(Vec<u8>),
    /// 200 with this JSON body (declarative management's answers).
    Json(Vec<u8>),
    /// 410: the server does not need this (e.g. `UserAuthenticate`).
    Gone,
}

/// One signed device request as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRequest<'a> {
    /// The `Mdm-Signature` header's value (base64 of a detached CMS SignedData).
    pub signature: Option<&'a [u8]>,
    /// The `Authorization: Bearer` token, if any.
    pub bearer: Option<&'a str>,
    /// The exact body.
    pub body: &'a [u8],
}

/// Check-ins and the command channel.
#[derive(Clone)]
pub struct MdmService {
    lanyard: Lanyard,
    /// The CA the signature checks trust, and the secret key (`pki.secrets`).
    pki: Arc<DevicePki>,
    /// `Mdm-Signature` checks; a device certificate's chain is verified once, not per request.
    /// Made on the first device request (see [`DevicePki`]).
    signers: Arc<std::sync::OnceLock<SignerCache>>,
}

fn unrecognized(binding: IdentityBinding) -> CoreError {
    match binding {
        IdentityBinding::CheckedOut => CoreError::UnrecognizedDevice(
            "this enrollment has checked out or was removed; enroll again".into(),
        ),
        IdentityBinding::OtherDevice => {
            CoreError::UnrecognizedDevice("this identity belongs to another device".into())
        }
        IdentityBinding::Unbound => {
            CoreError::Invalid("the first check-in must be Authenticate".into())
        }
        IdentityBinding::Bound => CoreError::Internal("a bound identity was refused".into()),
    }
}

fn unknown_identity() -> CoreError {
    CoreError::UnrecognizedDevice("this identity certificate belongs to no enrollment".into())
}

fn channel_of(kind: EnrollmentKind) -> Channel {
    if kind == EnrollmentKind::UserEnrollmentUser {
        Channel::User
    } else {
        Channel::Device
    }
}

impl MdmService {
    pub fn new(lanyard: Lanyard, pki: Arc<DevicePki>) -> Self {
        Self {
            lanyard,
            pki,
            signers: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The signature checker, made from the CA on the first call (the parsed CA, or why it
    /// cannot be parsed, is kept by [`DevicePki::keys`]).
    fn signers(&self) -> Result<&SignerCache> {
        let keys = self.pki.keys()?;
        Ok(self.signers.get_or_init(|| {
            SignerCache::new(
                keys.ca.certificate().clone(),
                lanyard_pki::SIGNER_CACHE_DEFAULT_CAPACITY,
            )
        }))
    }

    /// Step 1 of the identity rule: the SHA-256 of the identity certificate that signed the
    /// request.
    fn signer_of(&self, req: &DeviceRequest<'_>) -> Result<String> {
        let Some(sig) = req.signature else {
            return Err(CoreError::Invalid(
                "requests must carry an Mdm-Signature by the device identity".into(),
            ));
        };
        self.signers()?
            .verify(sig, req.body)
            .map(|v| v.sha256)
            .map_err(|_| {
                CoreError::Invalid("the Mdm-Signature does not verify against our CA".into())
            })
    }

    /// A device heard from again after a long silence is active again (the command exchange
    /// does the same in its own transaction).
    async fn reactivated(&self, enrollment: Enrollment) -> Result<Enrollment> {
        if enrollment.status != EnrollmentStatus::Inactive {
            return Ok(enrollment);
        }
        Ok(self
            .lanyard
            .store()
            .reactivate_enrollment(&enrollment.id, lanyard_store::now())
            .await?
            .unwrap_or(enrollment))
    }

    /// Step 4: the user channel's bearer token.
    async fn authorize_user_channel(
        &self,
        enrollment: &Enrollment,
        bearer: Option<&str>,
    ) -> Result<()> {
        let store = self.lanyard.store();
        let person_ok = store
            .user_by_id(enrollment.user_id)
            .await?
            .is_some_and(|u| u.enabled);
        if !person_ok {
            return Err(CoreError::Unauthorized(
                "this account is disabled; sign in again".into(),
            ));
        }
        let Some(token) = bearer else {
            return Err(CoreError::Unauthorized(
                "user-channel requests must carry the bearer token; sign in again".into(),
            ));
        };
        let hash = hash_secret(token);
        if enrollment.bearer_token_hash.as_deref() == Some(hash.as_str()) {
            return Ok(());
        }
        // A token from a re-authentication (the Mac ran the web sign-in again after our
        // challenge) replaces the old one on first use.
        if store
            .rebind_bearer(
                &enrollment.id,
                enrollment.user_id,
                &hash,
                lanyard_store::now(),
            )
            .await?
        {
            tracing::info!(enrollment = %enrollment.id, "user channel re-authenticated");
            return Ok(());
        }
        Err(CoreError::Unauthorized(
            "the bearer token is unknown or was revoked; sign in again".into(),
        ))
    }

    /// Steps 2 and 3 of the identity rule: the live enrollment this identity belongs to, bound
    /// to `device_id` (`first_checkin`: not bound yet is allowed, for `Authenticate`). An
    /// inactive enrollment heard from again is active again.
    async fn bound_enrollment(
        &self,
        fingerprint: &str,
        device_id: &str,
        first_checkin: bool,
    ) -> Result<Enrollment> {
        let enrollment = self
            .lanyard
            .store()
            .enrollment_for_identity(fingerprint, lanyard_store::now())
            .await?
            .ok_or_else(unknown_identity)?;
        match IdentityBinding::check(
            enrollment.status.as_str(),
            enrollment.device_channel_id.as_deref(),
            device_id,
        ) {
            IdentityBinding::Bound => {}
            IdentityBinding::Unbound if first_checkin => {}
            refused => return Err(unrecognized(refused)),
        }
        self.reactivated(enrollment).await
    }

    /// A check-in: the identity rule, then the message's handler. Runs in a `checkin` span
    /// naming the message type, the channel and (once the identity rule has found it) the
    /// enrollment; no token or signature is recorded. (The span's level, `error`, only keeps
    /// it enabled under any log filter, so every line written inside it names these.)
    #[tracing::instrument(name = "checkin", level = "error", skip_all,
        fields(message = Empty, channel = Empty, enrollment = Empty))]
    pub async fn checkin(&self, req: DeviceRequest<'_>) -> Result<CheckinReply> {
        let fingerprint = self.signer_of(&req)?;
        let msg = lanyard_proto::decode_checkin(req.body)
            .map_err(|e| CoreError::Invalid(format!("check-in: {e}")))?;
        let span = Span::current();
        span.record("message", tracing::field::display(msg.message_type()));
        span.record(
            "channel",
            tracing::field::display(channel_of(msg.enrollment().kind)),
        );
        match &msg {
            CheckinMessage::DeclarativeManagement(d) => {
                if req.body.len() > DECLARATIVE_MESSAGE_LIMIT {
                    return Err(too_large(
                        "a DeclarativeManagement check-in",
                        DECLARATIVE_MESSAGE_LIMIT,
                    ));
                }
                check_endpoint(&d.endpoint)?;
            }
            other if req.body.len() > CHECKIN_MESSAGE_LIMIT => {
                return Err(too_large(
                    &format!("the {} check-in", other.message_type()),
                    CHECKIN_MESSAGE_LIMIT,
                ));
            }
            _ => {}
        }
        let r = msg.enrollment();
        if !r.kind.is_user_enrollment() {
            return Err(CoreError::Invalid(
                "this server enrolls Macs by User Enrollment; expected EnrollmentID".into(),
            ));
        }
        let device_id = r.device_id().to_string();
        let user_channel = r.kind == EnrollmentKind::UserEnrollmentUser;
        let enrollment = self
            .bound_enrollment(
                &fingerprint,
                &device_id,
                matches!(msg, CheckinMessage::Authenticate(_)),
            )
            .await?;
        span.record(
            "enrollment",
            tracing::field::display(enrollment.id.as_str()),
        );
        if user_channel && !matches!(msg, CheckinMessage::CheckOut(_)) {
            self.authorize_user_channel(&enrollment, req.bearer).await?;
        }
        let enrollment_user_id = user_channel
            .then(|| msg.identity().enrollment_user_id.clone())
            .flatten();
        match msg {
            CheckinMessage::Authenticate(a) => self.authenticate(&enrollment, device_id, a).await,
            CheckinMessage::TokenUpdate(t) => {
                self.token_update(&enrollment, enrollment_user_id, t).await
            }
            CheckinMessage::CheckOut(_) => self.check_out(&enrollment).await,
            // Lanyard asks no extra user authentication on the user channel.
            CheckinMessage::UserAuthenticate(_) => Ok(CheckinReply::Gone),
            // Apple's schema: Get/SetBootstrapToken are `userenrollment: forbidden`; a User
            // Enrollment has no bootstrap token to escrow, and Lanyard does not advertise
            // `com.apple.mdm.bootstraptoken`.
            CheckinMessage::GetBootstrapToken(_) | CheckinMessage::SetBootstrapToken(_) => Err(
                CoreError::Invalid("bootstrap tokens are not used in User Enrollment".into()),
            ),
            CheckinMessage::DeclarativeManagement(d) => {
                let channel = if user_channel {
                    Channel::User
                } else {
                    Channel::Device
                };
                self.declarative_management(&enrollment, channel, d).await
            }
            // Lanyard does not advertise `com.apple.mdm.token` in ServerCapabilities, so a
            // device has no reason to ask; an unknown TokenServiceType is a 400 (Apple,
            // GetTokenRequest).
            CheckinMessage::GetToken(_) => Err(CoreError::Invalid(
                "GetToken is not supported by this server".into(),
            )),
        }
    }

    fn same_topic(enrollment: &Enrollment, topic: &str) -> Result<()> {
        if Some(topic) != enrollment.push_topic.as_deref() {
            return Err(CoreError::Invalid(
                "the check-in topic is not this server's push topic".into(),
            ));
        }
        Ok(())
    }

    /// `Authenticate`: binds the `EnrollmentID` and checks the topic and, when the Mac says
    /// it, the macOS version. `OSVersion` is not guaranteed in a macOS `Authenticate` (the
    /// schema marks it optional); the version gate already ran on the MachineInfo at the
    /// enrollment request.
    async fn authenticate(
        &self,
        enrollment: &Enrollment,
        device_id: String,
        a: Authenticate,
    ) -> Result<CheckinReply> {
        Self::same_topic(enrollment, &a.topic)?;
        let os = a
            .os_version
            .as_deref()
            .map(OsVersion::parse)
            .transpose()
            .map_err(|e| CoreError::Invalid(format!("OSVersion: {e}")))?;
        if let Some(v) = &os {
            let min = self.lanyard.enrollment_settings().await?.min_macos_version;
            if !v.at_least(&min) {
                return Err(refuse_old_os(v, &min));
            }
        }
        self.lanyard
            .store()
            .record_authenticate(
                &enrollment.id,
                &AuthenticateRecord {
                    device_channel_id: device_id,
                    os_version: os.map(|v| v.to_string()),
                    build_version: a.build_version,
                    product: a.product_name.or(a.model),
                },
                lanyard_store::now(),
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => CoreError::UnrecognizedDevice(
                    "this EnrollmentID belongs to another live enrollment, or this enrollment \
                     has already checked out; remove the old enrollment profile and enroll again"
                        .into(),
                ),
                other => other.into(),
            })?;
        Ok(CheckinReply::Ok)
    }

    /// `TokenUpdate`: the push token and PushMagic of the device or the user channel.
    async fn token_update(
        &self,
        enrollment: &Enrollment,
        user_channel_id: Option<String>,
        t: TokenUpdate,
    ) -> Result<CheckinReply> {
        Self::same_topic(enrollment, &t.topic)?;
        let unlock = match &t.unlock_token {
            Some(u) => Some(
                self.pki
                    .secrets
                    .seal(u.expose(), format!("unlock:{}", enrollment.id).as_bytes())?,
            ),
            None => None,
        };
        let first_user_token = user_channel_id.is_some() && enrollment.user_channel_id.is_none();
        let updated = self
            .lanyard
            .store()
            .record_token_update(
                &enrollment.id,
                &TokenUpdateRecord {
                    user_channel_id,
                    topic: t.topic,
                    push_token: t.token.into_inner(),
                    push_magic: t.push_magic.into_inner(),
                    unlock_token_sealed: unlock,
                },
                lanyard_store::now(),
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => CoreError::Invalid(m),
                other => other.into(),
            })?;
        if first_user_token {
            // The user channel is there: when sets reach this Mac, its declarations start with
            // the DeclarativeManagement command (Lanyard serves them on the user channel; see
            // `crate::declarations`). A failure to queue it is logged; the enrollment stands.
            if let Err(e) = declarations::start(&self.lanyard, updated).await {
                tracing::warn!(enrollment = %enrollment.id, error = %e.chain(),
                    "could not start declarative management");
            }
        }
        Ok(CheckinReply::Ok)
    }

    /// `CheckOut`: the enrollment ends and its queue goes, in one transaction.
    async fn check_out(&self, enrollment: &Enrollment) -> Result<CheckinReply> {
        self.lanyard
            .store()
            .record_checkout(&enrollment.id, lanyard_store::now())
            .await?;
        tracing::info!(enrollment = %enrollment.id, "enrollment checked out");
        Ok(CheckinReply::Ok)
    }

    /// `DeclarativeManagement`: answered from what the enrollment should hold on this channel
    /// (`crate::declarations`): `tokens` and `declaration-items` as JSON, one declaration as
    /// JSON (404 when it is not the enrollment's), and a status report stored (200, empty) or
    /// refused (400, nothing stored) — `mdm/checkin/declarativemanagement.yaml` and Apple's
    /// protocol brief ("Responses are JSON").
    async fn declarative_management(
        &self,
        enrollment: &Enrollment,
        channel: Channel,
        d: DeclarativeManagement,
    ) -> Result<CheckinReply> {
        let request = DeclarativeRequest::parse(&d.endpoint, d.data.as_deref())?;
        Ok(
            match declarations::answer(&self.lanyard, enrollment, channel, request).await? {
                Some(body) => CheckinReply::Json(body),
                None => CheckinReply::Ok,
            },
        )
    }

    /// The data of an asset Lanyard serves (`GET` of its `DataURL`). The asset's
    /// `Authentication` is `MDM`: "a request using MDM semantics (includes the device identity
    /// certificate, and any user authentication)"
    /// (`../shared/apple-schema/declarative/declarations/assets/credential.certificate.yaml`),
    /// so the identity rule applies to the (empty) body's `Mdm-Signature`, and since Lanyard
    /// serves declarations on the user channel, the user channel's bearer too. Only an asset
    /// among what the enrollment should hold is served; anything else is `NotFound`.
    #[tracing::instrument(name = "asset", level = "error", skip_all, fields(enrollment = Empty))]
    pub async fn asset(
        &self,
        req: DeviceRequest<'_>,
        identifier: &str,
    ) -> Result<(String, Vec<u8>)> {
        let fingerprint = self.signer_of(&req)?;
        let enrollment = self
            .lanyard
            .store()
            .enrollment_for_identity(&fingerprint, lanyard_store::now())
            .await?
            .ok_or_else(unknown_identity)?;
        let live = matches!(
            enrollment.status,
            EnrollmentStatus::Enrolled | EnrollmentStatus::Inactive
        ) && enrollment.enrolled_at.is_some();
        if !live {
            return Err(unrecognized(
                if enrollment.status == EnrollmentStatus::CheckedOut {
                    IdentityBinding::CheckedOut
                } else {
                    IdentityBinding::Unbound
                },
            ));
        }
        Span::current().record(
            "enrollment",
            tracing::field::display(enrollment.id.as_str()),
        );
        let enrollment = self.reactivated(enrollment).await?;
        self.authorize_user_channel(&enrollment, req.bearer).await?;
        declarations::asset_data(&self.lanyard, &self.pki.secrets, &enrollment, identifier).await
    }

    /// The command endpoint: the identity rule, then one store transaction that records the
    /// report (result, error or NotNow) and claims the next command for the channel.
    ///
    /// - a repeated result (the device did not get our first answer and retries until a 2xx,
    ///   Apple "Sending MDM commands to a device") is answered as the first time and the
    ///   exchange goes on;
    /// - a result for a command never given on this channel is not stored (logged and
    ///   counted) and the exchange goes on, so it cannot wedge the channel;
    /// - `NotNow` is answered with an empty body (see the store's exchange).
    ///
    /// Runs in a `command` span naming the report's status, the command it reports on, the
    /// channel and the enrollment.
    #[tracing::instrument(name = "command", level = "error", skip_all,
        fields(status = Empty, command = Empty, channel = Empty, enrollment = Empty))]
    pub async fn command(&self, req: DeviceRequest<'_>) -> Result<Option<NextCommand>> {
        if req.body.len() > COMMAND_REPORT_LIMIT {
            return Err(too_large("a command report", COMMAND_REPORT_LIMIT));
        }
        let fingerprint = self.signer_of(&req)?;
        let mut report = lanyard_proto::decode_command_report(req.body)
            .map_err(|e| CoreError::Invalid(format!("command report: {e}")))?;
        let channel = channel_of(report.enrollment.kind);
        let span = Span::current();
        span.record("status", tracing::field::display(report.status.as_str()));
        if let Some(uuid) = report.command_uuid.as_deref() {
            span.record("command", tracing::field::display(uuid));
        }
        span.record("channel", tracing::field::display(channel));
        if channel == Channel::User {
            let enrollment = self
                .bound_enrollment(&fingerprint, report.enrollment.device_id(), false)
                .await?;
            self.authorize_user_channel(&enrollment, req.bearer).await?;
        }
        let now = lanyard_store::now();
        let outcome = outcome_of(&report, req.body, now)?;
        let inventory = (report.status == CommandStatus::Acknowledged
            && carries_inventory(&report.result))
        .then(|| {
            Arc::new(ResultInventory(std::mem::take(&mut report.result))) as Arc<dyn InventoryMerge>
        });
        let done = self
            .lanyard
            .store()
            .command_exchange(CommandExchange {
                identity_sha256: fingerprint,
                device_channel_id: report.enrollment.device_id().to_string(),
                channel,
                outcome,
                inventory,
                now,
            })
            .await?;
        match done {
            Exchanged::Done {
                next,
                ignored,
                enrollment_id,
            } => {
                span.record("enrollment", tracing::field::display(&enrollment_id));
                if let Some(why) = ignored {
                    let uuid = report.command_uuid.as_deref().unwrap_or("");
                    let what = match why {
                        IgnoredResult::Repeated => "repeated",
                        IgnoredResult::NeverGiven => "never_given",
                    };
                    metrics::counter!("lanyard_command_results_ignored_total", "why" => what)
                        .increment(1);
                    tracing::info!(enrollment = %enrollment_id, command = %uuid, why = what,
                        "command result not stored");
                }
                Ok(next)
            }
            Exchanged::UnknownIdentity => Err(unknown_identity()),
            Exchanged::Refused(b) => Err(unrecognized(b)),
        }
    }
}
