//! Account-driven User Enrollment: service discovery, the web sign-in flow that ends in an access
//! token, profile issuance, SCEP identity issuance bound to one enrollment, and the check-in
//! messages that bring an enrollment to life.
//!
//! The rules here, in order of the flow:
//! - nothing enrolls before an APNs push certificate is uploaded: its topic is the profile's
//!   `Topic`, which can never change after enrollment;
//! - only Macs (`model-family`, and the MachineInfo `PRODUCT`) of users of a verified managed
//!   domain are discovered or signed in; disabled users never;
//! - the Mac must run at least the configured macOS (MachineInfo `OS_VERSION`, or its build
//!   `VERSION`, at profile request, and again `OSVersion` at `Authenticate`);
//! - ownership must be Employee: Corporate and Shared end the flow with a refusal and leave
//!   nothing behind;
//! - access tokens and SCEP challenges are random, stored only as hashes, short-lived and
//!   claimed atomically once;
//! - every check-in must be signed (`Mdm-Signature`) by the identity certificate issued for that
//!   enrollment (or by its renewed identity, see [`crate::renewal`]); a foreign, unknown, retired
//!   or checked-out identity is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use serde::Serialize;
use utoipa::ToSchema;

use lanyard_pki::scep::{FailInfo, MessageType, ScepAnswer, ScepResponder, ScepResponse};
use lanyard_pki::{Ca, SecretBox};
use lanyard_pki::{NameAttribute, PKey, Private, X509Name, X509};
use lanyard_proto::profile::{
    build_enrollment_profile, EnrollmentProfileInput, ProfileUuids, ScepSettings, ServerCapability,
};
use lanyard_proto::{ModelFamily, OsVersion, SecretString, ServiceDiscovery, UserIdentifier};
use lanyard_store::{
    AccessTokenRow, DeviceListQuery, Enrollment, EnrollmentFlow, EnrollmentStatus, IdentityRecord,
    NewEnrollment, ProfileIds, User,
};

use crate::admins::{hash_secret, new_secret};
use crate::attributes::validate_values;
pub use crate::renewal::IdentityPolicy;
use crate::settings::OwnershipMode;
use crate::users::check_presented_identifier;
use crate::{CoreError, Lanyard, Result};

/// How long a sign-in flow, an access token and a SCEP challenge live.
pub const FLOW_MINUTES: i64 = 30;
pub const ACCESS_TOKEN_MINUTES: i64 = 15;
pub const CHALLENGE_MINUTES: i64 = 60;

/// Where the device-facing endpoints live, under the public base URL.
#[derive(Debug, Clone)]
pub struct DeviceUrls {
    pub base: String,
}

impl DeviceUrls {
    pub fn new(public_base: &str) -> Self {
        Self {
            base: public_base.trim_end_matches('/').to_string(),
        }
    }
    pub fn enroll(&self) -> String {
        format!("{}/enroll", self.base)
    }
    pub fn sign_in(&self) -> String {
        format!("{}/enroll/sign-in", self.base)
    }
    pub fn scep(&self) -> String {
        format!("{}/scep", self.base)
    }
    pub fn checkin(&self) -> String {
        format!("{}/mdm/checkin", self.base)
    }
    pub fn command(&self) -> String {
        format!("{}/mdm/command", self.base)
    }
    /// Where a Mac fetches the data of an asset Lanyard serves (identifiers are URL-safe:
    /// letters, digits, `.`, `-`, `_`).
    pub fn asset(&self, identifier: &str) -> String {
        format!("{}/mdm/assets/{identifier}", self.base)
    }
}

/// The keys the enrollment service signs and issues with: opened (so checked against the
/// secret key) when the server starts, parsed on their first use. Until a device enrolls or
/// speaks, the server has not initialised OpenSSL, whose pages an idle server would otherwise
/// keep resident (2.2 MiB more, docs/BENCHMARKS.md).
pub struct DevicePki {
    ca: crate::pki::OpenedPem,
    profile_signer: crate::pki::OpenedPem,
    scep_ra: crate::pki::OpenedPem,
    parsed: std::sync::OnceLock<std::result::Result<DeviceKeys, String>>,
    pub secrets: SecretBox,
}

/// The device PKI parsed.
pub struct DeviceKeys {
    pub ca: Ca,
    pub profile_signer_cert: X509,
    pub profile_signer_key: PKey<Private>,
    pub scep_ra_cert: X509,
    pub scep_ra_key: PKey<Private>,
}

impl DevicePki {
    pub(crate) fn new(
        ca: crate::pki::OpenedPem,
        profile_signer: crate::pki::OpenedPem,
        scep_ra: crate::pki::OpenedPem,
        secrets: SecretBox,
    ) -> DevicePki {
        DevicePki {
            ca,
            profile_signer,
            scep_ra,
            parsed: std::sync::OnceLock::new(),
            secrets,
        }
    }

    /// The CA certificate as stored (PEM), without parsing it.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The certificates and keys, parsed on the first call.
    pub fn keys(&self) -> Result<&DeviceKeys> {
        self.parsed
            .get_or_init(|| self.parse().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| CoreError::Internal(format!("the stored device PKI cannot be read: {e}")))
    }

    fn parse(&self) -> lanyard_pki::Result<DeviceKeys> {
        let pair = |p: &crate::pki::OpenedPem| -> lanyard_pki::Result<(X509, PKey<Private>)> {
            Ok((
                X509::from_pem(p.cert_pem.as_bytes())?,
                PKey::private_key_from_pem(&p.key_pem)?,
            ))
        };
        let (profile_signer_cert, profile_signer_key) = pair(&self.profile_signer)?;
        let (scep_ra_cert, scep_ra_key) = pair(&self.scep_ra)?;
        Ok(DeviceKeys {
            ca: Ca::from_pem(self.ca.cert_pem.as_bytes(), &self.ca.key_pem)?,
            profile_signer_cert,
            profile_signer_key,
            scep_ra_cert,
            scep_ra_key,
        })
    }
}

/// The enrollment service.
#[derive(Clone)]
pub struct EnrollmentService {
    lanyard: Lanyard,
    pki: Arc<DevicePki>,
    urls: DeviceUrls,
    organization: String,
    /// Identity certificate lifetime and renewal window.
    identity: IdentityPolicy,
    /// Whether the server answers with its self-issued TLS certificate (chained to Lanyard's
    /// CA), which `install-trust-profile auto` installs the root for.
    self_issued_tls: bool,
}

/// Where the person goes next in the sign-in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStep {
    Privacy,
    Ownership,
    Attributes,
}

impl FlowStep {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStep::Privacy => "privacy",
            FlowStep::Ownership => "ownership",
            FlowStep::Attributes => "attributes",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "privacy" => Ok(FlowStep::Privacy),
            "ownership" => Ok(FlowStep::Ownership),
            "attributes" => Ok(FlowStep::Attributes),
            other => Err(CoreError::Internal(format!("unknown sign-in step {other}"))),
        }
    }
}

/// A live sign-in flow and its user.
#[derive(Debug, Clone)]
pub struct FlowState {
    pub step: FlowStep,
    pub user: User,
    pub organization: String,
}

pub use lanyard_store::Ownership;

/// The ownership a person picked on the enrollment page.
pub fn parse_ownership(choice: &str) -> Result<Ownership> {
    Ownership::parse(choice).ok_or_else(|| CoreError::Invalid("choose who owns this Mac".into()))
}

/// An enrollment as the API, CLI and portal show it (never a secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnrollmentView {
    pub id: String,
    pub managed_apple_id: String,
    pub user_id: i64,
    /// "User Enrollment" for account-driven BYOD enrollments.
    pub enrollment_mode: String,
    /// Employee, the only ownership a User Enrollment accepts.
    pub ownership: String,
    /// pending, authenticated, enrolled, checked_out or inactive (silent for longer than the
    /// `inactive-after-days` setting).
    #[schema(value_type = String, example = "enrolled")]
    pub status: EnrollmentStatus,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub product: Option<String>,
    pub model_family: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub enrollment_id: Option<String>,
    pub enrollment_user_id: Option<String>,
    pub push_topic: Option<String>,
    pub reachable: bool,
    pub identity_certificate_serial: Option<String>,
    pub identity_certificate_sha256: Option<String>,
    pub identity_certificate_not_after: Option<chrono::DateTime<chrono::Utc>>,
    /// When a renewed identity certificate last became the current one.
    pub identity_certificate_renewed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A renewed identity certificate the device has not used yet (the current one stays valid
    /// until it does).
    pub next_identity_certificate_serial: Option<String>,
    pub next_identity_certificate_not_after: Option<chrono::DateTime<chrono::Utc>>,
    /// When the last identity renewal was queued.
    pub identity_renewal_queued_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub enrolled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    pub checked_out_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_push_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last push's outcome: delivered, unregistered, rate limited, …
    pub last_push_status: Option<String>,
}

impl From<Enrollment> for EnrollmentView {
    fn from(e: Enrollment) -> Self {
        Self {
            attributes: serde_json::from_str(&e.attributes).unwrap_or_default(),
            enrollment_mode: e.mode.label().to_string(),
            ownership: e.ownership.label().to_string(),
            reachable: e.device_push_token.is_some() && e.device_push_magic.is_some(),
            id: e.id.0,
            managed_apple_id: e.managed_apple_id,
            user_id: e.user_id,
            status: e.status,
            os_version: e.os_version,
            build_version: e.build_version,
            product: e.product,
            model_family: e.model_family,
            enrollment_id: e.device_channel_id,
            enrollment_user_id: e.user_channel_id,
            push_topic: e.push_topic,
            identity_certificate_serial: e.identity_serial,
            identity_certificate_sha256: e.identity_sha256,
            identity_certificate_not_after: e.identity_not_after,
            identity_certificate_renewed_at: e.identity_renewed_at,
            next_identity_certificate_serial: e.next_identity_serial,
            next_identity_certificate_not_after: e.next_identity_not_after,
            identity_renewal_queued_at: e.renewal_queued_at,
            created_at: e.created_at,
            enrolled_at: e.enrolled_at,
            last_seen_at: e.last_seen_at,
            checked_out_at: e.checked_out_at,
            last_push_at: e.last_push_at,
            last_push_status: e.last_push_status,
        }
    }
}

/// What the Mac told us about itself when asking for the profile.
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub product: Option<String>,
}

pub(crate) fn refuse_old_os(found: &OsVersion, minimum: &OsVersion) -> CoreError {
    CoreError::Forbidden(format!(
        "This Mac runs macOS {found}; enrolling it needs macOS {minimum} or later. Update \
         macOS in System Settings, then try again."
    ))
}

impl EnrollmentService {
    pub fn new(
        lanyard: Lanyard,
        pki: Arc<DevicePki>,
        urls: DeviceUrls,
        organization: String,
    ) -> Self {
        Self {
            lanyard,
            pki,
            urls,
            organization,
            identity: IdentityPolicy::default(),
            self_issued_tls: false,
        }
    }

    /// The same service issuing and renewing identities by `policy` (default: a year, renewed
    /// in the last 30 days).
    pub fn with_identity_policy(mut self, policy: IdentityPolicy) -> Self {
        self.identity = policy;
        self
    }

    pub fn identity_policy(&self) -> &IdentityPolicy {
        &self.identity
    }

    /// Whether profiles carry Lanyard's root CA now (the `install-trust-profile` setting and
    /// whether this server answers with its self-issued TLS certificate).
    pub(crate) async fn installs_trust_payload(&self) -> Result<bool> {
        Ok(self
            .lanyard
            .enrollment_settings()
            .await?
            .install_trust_profile
            .installs(self.self_issued_tls))
    }

    /// Says whether this server answers with its self-issued TLS certificate (off unless set).
    pub fn with_self_issued_tls(mut self, self_issued: bool) -> Self {
        self.self_issued_tls = self_issued;
        self
    }

    pub fn urls(&self) -> &DeviceUrls {
        &self.urls
    }

    pub fn organization(&self) -> &str {
        &self.organization
    }

    pub fn ca_certificate(&self) -> Result<&X509> {
        Ok(self.pki.keys()?.ca.certificate())
    }

    /// Service discovery: the BaseURL for a Mac of a managed account. Every refusal is an
    /// error the handler answers with Apple's `com.apple.well-known.failed` document:
    /// `Invalid` for a malformed identifier or model family, `Forbidden` for a family Lanyard
    /// does not enroll (anything but `Mac`) or while enrollment is closed (no push
    /// certificate), `NotFound` for a domain that is not managed here.
    pub async fn discover(
        &self,
        user_identifier: &str,
        model_family: Option<&str>,
    ) -> Result<ServiceDiscovery> {
        let id = UserIdentifier::parse(user_identifier).map_err(|e| {
            CoreError::Invalid(format!(
                "user-identifier is not a managed Apple Account: {e}"
            ))
        })?;
        let family = model_family.map(str::trim).unwrap_or_default();
        match ModelFamily::parse(family) {
            Some(ModelFamily::Mac) => {}
            Some(other) => {
                return Err(CoreError::Forbidden(format!(
                    "this organisation enrolls Macs only, not {} devices",
                    other.as_str()
                )))
            }
            None => {
                return Err(CoreError::Invalid(format!(
                    "model-family {family:?} is not one of Apple's device families"
                )))
            }
        }
        let settings = self.lanyard.enrollment_settings().await?;
        if !settings.managed_domains.iter().any(|d| d == id.domain()) {
            return Err(CoreError::NotFound(format!(
                "enrollment service for {}",
                id.domain()
            )));
        }
        self.enrollment_topic().await?;
        Ok(ServiceDiscovery::byod(self.urls.enroll()))
    }

    /// The push topic new enrollments get; `Forbidden` while no push certificate is uploaded,
    /// because a profile's `Topic` can never change after enrollment (see
    /// [`Lanyard::push_topic`]).
    pub async fn enrollment_topic(&self) -> Result<String> {
        self.lanyard.push_topic().await?.ok_or_else(|| {
            CoreError::Forbidden(
                "Enrollment is not open yet: this server has no APNs push certificate. Ask your \
                 IT administrator."
                    .into(),
            )
        })
    }

    /// Reads what the Mac sent with its enrollment request (a CMS-signed MachineInfo plist, or
    /// the bare plist) and applies the gates every enrollment request passes before sign-in:
    /// enrollment is open (a push certificate exists), the device is not of another family,
    /// and macOS is at least the configured minimum.
    ///
    /// The signature of a real Mac chains to Apple's device CA, which Lanyard does not hold, and
    /// may use SHA-1, which a strict OpenSSL policy refuses: the body is read whether or not
    /// the signature verifies (only a malformed CMS message is refused), and nothing here
    /// trusts it beyond this gate. The version is `OS_VERSION` when sent, else the release the
    /// build `VERSION` belongs to ([`OsVersion::from_macos_build`]); Apple's account-driven
    /// enrollment article shows only `LANGUAGE`, `PRODUCT` and `VERSION` in this body.
    pub async fn device_facts(&self, body: &[u8]) -> Result<DeviceFacts> {
        self.enrollment_topic().await?;
        if body.is_empty() {
            return Ok(DeviceFacts::default());
        }
        let plist = if body.first() == Some(&0x30) {
            let (content, signer) = lanyard_pki::read_cms_attached(body).map_err(|e| {
                CoreError::Invalid(format!("the MachineInfo signature is malformed: {e}"))
            })?;
            if let lanyard_pki::AttachedSigner::Unverified(why) = signer {
                tracing::debug!(reason = %why, "MachineInfo read without a verified signature");
            }
            content
        } else {
            body.to_vec()
        };
        let info = lanyard_proto::decode_machine_info(&plist)
            .map_err(|e| CoreError::Invalid(format!("MachineInfo: {e}")))?;
        if let Some(family) = ModelFamily::of_product(&info.product) {
            if family != ModelFamily::Mac {
                return Err(CoreError::Forbidden(format!(
                    "this organisation enrolls Macs only, and {} is not a Mac ({})",
                    info.product,
                    family.as_str()
                )));
            }
        }
        let version = info
            .macos_version()
            .map_err(|e| CoreError::Invalid(format!("MachineInfo OS_VERSION: {e}")))?
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "MachineInfo has no OS_VERSION and VERSION {:?} is not a macOS build",
                    info.version
                ))
            })?;
        let min = self.lanyard.enrollment_settings().await?.min_macos_version;
        if !version.at_least(&min) {
            return Err(refuse_old_os(&version, &min));
        }
        let os_version = info
            .os_version()
            .map_err(|e| CoreError::Invalid(format!("MachineInfo OS_VERSION: {e}")))?;
        Ok(DeviceFacts {
            os_version: os_version.map(|v| v.to_string()),
            build_version: Some(info.version),
            product: Some(info.product),
        })
    }

    /// Signs a person in; returns the flow cookie secret and the first page.
    pub async fn start_flow(
        &self,
        email: &str,
        password: &str,
        user_identifier: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Result<(String, FlowStep)> {
        let settings = self.lanyard.enrollment_settings().await?;
        if !settings.is_managed_email(email.trim()) {
            return Err(CoreError::Forbidden(
                "This account does not belong to an organisation that enrolls Macs here. Use \
                 your work or school account."
                    .into(),
            ));
        }
        let user = self
            .lanyard
            .authenticate_user(email, password, client)
            .await?;
        self.lanyard.open_flow(&user, user_identifier).await
    }

    /// The live flow behind a cookie, with its (still enabled) user.
    pub async fn flow(&self, secret: &str) -> Result<FlowState> {
        let expired =
            || CoreError::Unauthorized("Your sign-in has expired. Please start again.".into());
        let flow = self
            .lanyard
            .store()
            .flow(&hash_secret(secret), lanyard_store::now())
            .await?
            .ok_or_else(expired)?;
        let user = self
            .lanyard
            .store()
            .user_by_id(flow.user_id)
            .await?
            .ok_or_else(expired)?;
        if !user.enabled {
            return Err(CoreError::Forbidden(
                "this account is disabled; ask your IT administrator".into(),
            ));
        }
        Ok(FlowState {
            step: FlowStep::parse(&flow.step)?,
            user,
            organization: self.organization.clone(),
        })
    }

    fn require_step(state: &FlowState, step: FlowStep) -> Result<()> {
        if state.step != step {
            return Err(CoreError::Invalid(
                "That page is out of order; continue from where you are.".into(),
            ));
        }
        Ok(())
    }

    /// The person read what the organisation can and cannot see, and continues.
    pub async fn accept_privacy(&self, secret: &str) -> Result<FlowStep> {
        let state = self.flow(secret).await?;
        Self::require_step(&state, FlowStep::Privacy)?;
        let settings = self.lanyard.enrollment_settings().await?;
        let (next, ownership) = match settings.ownership_mode {
            OwnershipMode::Prompt => (FlowStep::Ownership, None),
            OwnershipMode::Employee => (FlowStep::Attributes, Some(Ownership::Employee.as_str())),
        };
        self.lanyard
            .store()
            .update_flow(&hash_secret(secret), next.as_str(), ownership)
            .await?;
        Ok(next)
    }

    /// The person picked who owns the Mac: Employee continues, anything else ends the flow.
    pub async fn choose_ownership(&self, secret: &str, choice: &str) -> Result<FlowStep> {
        let state = self.flow(secret).await?;
        Self::require_step(&state, FlowStep::Ownership)?;
        let ownership = parse_ownership(choice)?;
        let hash = hash_secret(secret);
        match ownership {
            Ownership::Employee => {
                self.lanyard
                    .store()
                    .update_flow(
                        &hash,
                        FlowStep::Attributes.as_str(),
                        Some(Ownership::Employee.as_str()),
                    )
                    .await?;
                Ok(FlowStep::Attributes)
            }
            Ownership::Corporate | Ownership::Shared => {
                self.lanyard.store().delete_flow(&hash).await?;
                let what = if ownership == Ownership::Corporate {
                    "Corporate-owned"
                } else {
                    "Shared"
                };
                Err(CoreError::Forbidden(format!(
                    "{what} Macs cannot be enrolled with a work or school account here. This \
                     sign-in is for personal (Employee-owned) Macs; your IT administrator \
                     enrolls organisation-owned Macs through Automated Device Enrollment."
                )))
            }
        }
    }

    /// Custom attributes entered; on success returns the access token for the Mac.
    pub async fn submit_attributes(
        &self,
        secret: &str,
        entered: &BTreeMap<String, String>,
    ) -> Result<String> {
        let state = self.flow(secret).await?;
        Self::require_step(&state, FlowStep::Attributes)?;
        let defs = self.lanyard.list_attributes().await?;
        let values = validate_values(&defs, entered)?;
        let attributes = serde_json::to_string(&values)
            .map_err(|e| CoreError::failed("encoding attributes", e))?;
        let token = new_secret("lya_");
        let now = lanyard_store::now();
        self.lanyard
            .store()
            .create_access_token(&AccessTokenRow {
                token_hash: token.hash,
                user_id: state.user.id,
                ownership: Ownership::Employee,
                attributes,
                created_at: now,
                expires_at: now + Duration::minutes(ACCESS_TOKEN_MINUTES),
                used_at: None,
            })
            .await?;
        self.lanyard
            .store()
            .delete_flow(&hash_secret(secret))
            .await?;
        Ok(token.secret)
    }

    /// Issues the signed enrollment profile for a valid, unused access token. Creates the
    /// `pending` enrollment that the SCEP challenge and the identity certificate bind to.
    #[tracing::instrument(name = "enroll", level = "error", skip_all,
        fields(enrollment = tracing::field::Empty))]
    pub async fn issue_profile(&self, access_token: &str, facts: &DeviceFacts) -> Result<Vec<u8>> {
        // The Mac sends its MachineInfo with both requests (Apple's account-driven enrollment
        // article); without it nothing was gated, so no profile.
        if facts.product.is_none() {
            return Err(CoreError::Invalid(
                "the enrollment request carries no MachineInfo".into(),
            ));
        }
        let store = self.lanyard.store();
        let token_hash = hash_secret(access_token);
        let now = lanyard_store::now();
        let unusable =
            || CoreError::Unauthorized("the access token is unknown, used or expired".into());
        // Read first, build and sign, and only then claim the token and record the enrollment:
        // a failure on the way leaves the token usable and nothing half-made behind.
        let token = store
            .access_token(&token_hash)
            .await?
            .filter(|t| t.used_at.is_none() && t.expires_at > now)
            .ok_or_else(unusable)?;
        let user = store
            .user_by_id(token.user_id)
            .await?
            .filter(|u| u.enabled)
            .ok_or_else(|| CoreError::Forbidden("this account is disabled".into()))?;
        let apple_id = user
            .managed_apple_id
            .clone()
            .ok_or_else(|| CoreError::Forbidden("the account has no managed Apple ID".into()))?;

        let push_topic = self.enrollment_topic().await?;
        let settings = self.lanyard.enrollment_settings().await?;
        let challenge = new_secret("");
        let enrollment_id = uuid::Uuid::new_v4().to_string();
        tracing::Span::current().record(
            "enrollment",
            tracing::field::display(enrollment_id.as_str()),
        );
        let uuids = ProfileUuids::random();
        let signed = self.signed_profile(
            &self.profile_input(
                &enrollment_id,
                &apple_id,
                &push_topic,
                SecretString::new(challenge.secret),
                uuids,
                settings
                    .install_trust_profile
                    .installs(self.self_issued_tls),
            )?,
        )?;
        // The token is claimed and the enrollment recorded in one transaction.
        store
            .create_enrollment(&NewEnrollment {
                id: enrollment_id.as_str().into(),
                user_id: user.id,
                managed_apple_id: apple_id,
                ownership: token.ownership,
                attributes: token.attributes.clone(),
                mode: lanyard_store::EnrollmentMode::UserEnrollment,
                os_version: facts.os_version.clone(),
                build_version: facts.build_version.clone(),
                product: facts.product.clone(),
                model_family: Some("Mac".into()),
                scep_challenge_hash: challenge.hash,
                challenge_expires_at: now + Duration::minutes(CHALLENGE_MINUTES),
                push_topic,
                profile_ids: Some(ProfileIds {
                    profile: payload_uuid(&uuids.profile),
                    mdm_payload: payload_uuid(&uuids.mdm),
                    trust_payload: payload_uuid(&uuids.trust),
                }),
                // The Mac keeps sending this token on its user channel (ongoing
                // authorization, see `mdm`).
                bearer_token_hash: Some(token_hash.clone()),
            })
            .await
            .map_err(|e| match e {
                lanyard_store::StoreError::Conflict(_) => unusable(),
                other => other.into(),
            })?;
        tracing::info!(enrollment = %enrollment_id, user = user.id, "issued an enrollment profile");
        Ok(signed)
    }

    /// Lanyard's one SCEP responder over the device PKI: GetCACert serves the CA and the RA,
    /// and the RA signs every CertRep (see [`lanyard_pki::scep::ScepResponder`]).
    fn scep(&self) -> Result<ScepResponder<'_>> {
        let pki = self.pki.keys()?;
        Ok(ScepResponder::new(
            &pki.ca,
            &pki.scep_ra_cert,
            &pki.scep_ra_key,
            Some(pki.ca.private_key()),
        ))
    }

    /// What an enrollment profile holds: the same for the profile issued at enrollment and for
    /// the renewed one an identity renewal reinstalls (only the SCEP payload differs).
    pub(crate) fn profile_input(
        &self,
        enrollment_id: &str,
        assigned_managed_apple_id: &str,
        push_topic: &str,
        challenge: SecretString,
        uuids: ProfileUuids,
        with_trust_payload: bool,
    ) -> Result<EnrollmentProfileInput> {
        Ok(EnrollmentProfileInput {
            organisation: self.organization.clone(),
            profile_identifier: profile_identifier(enrollment_id),
            checkin_url: self.urls.checkin(),
            server_url: self.urls.command(),
            push_topic: push_topic.to_string(),
            assigned_managed_apple_id: assigned_managed_apple_id.to_string(),
            scep: ScepSettings {
                url: self.urls.scep(),
                challenge,
                subject: vec![
                    ("O".into(), self.organization.clone()),
                    ("CN".into(), format!("Lanyard Identity {enrollment_id}")),
                ],
                key_size: 2048,
                name: None,
                ca_fingerprint: None,
            },
            // The trust payload only when the TLS chain is Lanyard's own (the
            // `install-trust-profile` setting): a personal Mac needs no private root otherwise.
            ca_cert_der: if with_trust_payload {
                Some(self.pki.keys()?.ca.cert_der()?)
            } else {
                None
            },
            server_capabilities: ServerCapability::USER_ENROLLMENT.to_vec(),
            sign_message: true,
            uuids,
        })
    }

    /// The profile built and signed (CMS) by the profile signer.
    pub(crate) fn signed_profile(&self, input: &EnrollmentProfileInput) -> Result<Vec<u8>> {
        let plist = build_enrollment_profile(input)
            .map_err(|e| CoreError::failed("building the profile", e))?;
        let pki = self.pki.keys()?;
        Ok(lanyard_pki::sign_cms(
            &pki.profile_signer_cert,
            &pki.profile_signer_key,
            std::slice::from_ref(pki.ca.certificate()),
            &plist,
        )?)
    }

    /// SCEP `GetCACaps`.
    pub fn scep_caps(&self) -> Result<ScepResponse> {
        Ok(self.scep()?.ca_caps())
    }

    /// SCEP `GetCACert`: the CA and the RA that signs our replies.
    pub fn scep_ca_cert(&self) -> Result<ScepResponse> {
        Ok(self.scep()?.ca_cert()?)
    }

    /// SCEP `PKIOperation`: a PKCSReq whose challenge is a live, unused enrollment challenge
    /// gets an identity certificate bound to that enrollment; anything else a FAILURE CertRep,
    /// with nothing changed. Undecodable messages are `Invalid` (HTTP 400), with nothing
    /// changed.
    ///
    /// The challenge is claimed and the identity bound in one statement, after the
    /// certificate is issued: a request that loses a race for the same challenge, or whose
    /// certificate cannot be made, leaves the challenge usable and gets FAILURE (its
    /// certificate, if any, is never delivered).
    #[tracing::instrument(name = "scep", level = "error", skip_all,
        fields(enrollment = tracing::field::Empty))]
    pub async fn scep_pki_operation(&self, body: &[u8]) -> Result<ScepResponse> {
        let scep = self.scep()?;
        let req = scep
            .decode(body)
            .map_err(|e| CoreError::Invalid(format!("not a SCEP message: {e}")))?;
        let refuse = |fi: FailInfo| -> Result<ScepResponse> {
            Ok(scep.answer(&req, ScepAnswer::Refused(fi))?)
        };
        let csr = match req.csr() {
            Ok(csr) if req.pki().message_type == MessageType::PkcsReq => csr,
            // SCEP's own RenewalReq is not used: an identity is renewed by reinstalling the
            // enrollment profile with a fresh one-time challenge, which arrives as a PKCSReq.
            Ok(_) => return refuse(FailInfo::BadRequest),
            Err(fi) => return refuse(fi),
        };
        let Some(challenge) = csr.challenge_password() else {
            tracing::info!("SCEP request without a challenge refused");
            return refuse(FailInfo::BadRequest);
        };
        let challenge_hash = hash_secret(challenge);
        let store = self.lanyard.store();
        let Some(enrollment) = store
            .scep_challenge_enrollment(&challenge_hash, lanyard_store::now())
            .await?
        else {
            tracing::info!("SCEP request with an unknown, used or expired challenge refused");
            return refuse(FailInfo::BadRequest);
        };
        tracing::Span::current().record(
            "enrollment",
            tracing::field::display(enrollment.id.as_str()),
        );
        let subject = identity_subject(&self.organization, &enrollment.id)?;
        let issued = match scep.issue(&req, self.identity.lifetime, Some(&subject)) {
            Ok(issued) => issued,
            Err(e) => {
                tracing::info!(error = %e, "SCEP certificate request refused");
                return refuse(FailInfo::BadRequest);
            }
        };
        let info = lanyard_pki::CertInfo::from_x509(issued.certificate())?;
        let not_after = chrono::DateTime::from_timestamp(info.not_after, 0)
            .ok_or_else(|| CoreError::Internal("certificate expiry out of range".into()))?;
        let identity = IdentityRecord {
            serial: info.serial_hex.clone(),
            sha256: info.sha256,
            not_after,
        };
        if store
            .claim_scep_challenge(
                &enrollment.id,
                &challenge_hash,
                &identity,
                lanyard_store::now(),
            )
            .await?
            .is_none()
        {
            tracing::info!(enrollment = %enrollment.id, "SCEP challenge claimed by a concurrent request; refused");
            return refuse(FailInfo::BadRequest);
        }
        tracing::info!(enrollment = %enrollment.id, serial = %info.serial_hex, "issued an identity certificate");
        Ok(scep.answer(&req, ScepAnswer::Issued(&issued))?)
    }

    pub fn lanyard(&self) -> &Lanyard {
        &self.lanyard
    }

    /// Enrollments matching the device search.
    pub async fn list(&self, q: &DeviceListQuery) -> Result<Vec<EnrollmentView>> {
        list_enrollments(&self.lanyard, q).await
    }
}

/// A `PayloadUUID` as the profile carries it (upper-case, hyphenated), as kept for renewal.
pub(crate) fn payload_uuid(u: &uuid::Uuid) -> String {
    u.hyphenated().to_string().to_uppercase()
}

/// The `PayloadIdentifier` of an enrollment's profile (what `RemoveProfile` names to unenroll).
pub fn profile_identifier(enrollment_id: &str) -> String {
    format!("org.lanyard.enrollment.{enrollment_id}")
}

impl Lanyard {
    /// Opens the enrollment flow of a person who signed in (with a password or through an
    /// identity provider), once they have a managed Apple Account and the Mac's
    /// `presented` identifier names them; returns the flow cookie secret and the first page.
    pub(crate) async fn open_flow(
        &self,
        user: &User,
        presented: Option<&str>,
    ) -> Result<(String, FlowStep)> {
        let Some(apple_id) = user.managed_apple_id.as_deref() else {
            return Err(CoreError::Forbidden(
                "Your account has no managed Apple Account yet; ask your IT administrator.".into(),
            ));
        };
        check_presented_identifier(presented, &user.email, Some(apple_id))?;
        let secret = new_secret("lyf_");
        let now = lanyard_store::now();
        self.store()
            .create_flow(&EnrollmentFlow {
                id_hash: secret.hash,
                user_id: user.id,
                user_identifier: presented.map(|s| s.trim().to_lowercase()),
                step: FlowStep::Privacy.as_str().into(),
                ownership: None,
                created_at: now,
                expires_at: now + Duration::minutes(FLOW_MINUTES),
            })
            .await?;
        Ok((secret.secret, FlowStep::Privacy))
    }

    /// Marks `inactive` the enrollments that have not checked out and made no request for
    /// the `inactive-after-days` setting (none when it is 0); returns how many. `serve` runs
    /// this hourly. A Mac that re-enrolls gets a new `EnrollmentID`, so one removed without a
    /// `CheckOut` (or wiped) would otherwise stay listed as enrolled for ever; one that speaks
    /// again is active again (the identity rule of [`crate::mdm::MdmService`], on check-in and
    /// the command exchange).
    pub async fn mark_inactive_enrollments(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64> {
        let days = self.enrollment_settings().await?.inactive_after_days;
        if days == 0 {
            return Ok(0);
        }
        Ok(self
            .store
            .mark_inactive_enrollments(now - Duration::days(i64::from(days)))
            .await?)
    }

    /// One enrollment, by its id.
    pub async fn enrollment(&self, id: &str) -> Result<EnrollmentView> {
        self.store
            .enrollment(id)
            .await?
            .map(EnrollmentView::from)
            .ok_or_else(|| CoreError::NotFound(format!("enrollment {id}")))
    }
}

/// Enrollments matching the one device search ([`Lanyard::device_list`] without the total;
/// also used by the CLI, which has no device PKI loaded).
pub async fn list_enrollments(l: &Lanyard, q: &DeviceListQuery) -> Result<Vec<EnrollmentView>> {
    Ok(l.device_list(q).await?.items)
}

fn identity_subject(org: &str, enrollment_id: &str) -> Result<X509Name> {
    Ok(lanyard_pki::name(&[
        (NameAttribute::Organization, org),
        (
            NameAttribute::CommonName,
            &format!("Lanyard Identity {enrollment_id}"),
        ),
    ])?)
}
