//! Records as they are stored. Validation and policy live in `lanyard-core`; these are plain rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::NewCommand;

pub use crate::values::{
    Channel, CommandState, CommandUuid, EnrollmentId, EnrollmentMode, EnrollmentStatus, Ownership,
    Role,
};

/// The state of one person's walk through the enrollment sign-in pages.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EnrollmentFlow {
    /// SHA-256 of the flow cookie's secret.
    pub id_hash: String,
    pub user_id: i64,
    /// The managed Apple Account the Mac is signed in with, when the Mac told us.
    pub user_identifier: Option<String>,
    /// `privacy`, `ownership` or `attributes`: the next page.
    pub step: String,
    pub ownership: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// An access token handed to the Mac after sign-in; single use for profile issuance.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccessTokenRow {
    pub token_hash: String,
    pub user_id: i64,
    #[sqlx(try_from = "String")]
    pub ownership: Ownership,
    /// JSON object of custom attribute values.
    pub attributes: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

/// One enrollment of a device: from profile issuance (`pending`) through check-in
/// (`authenticated`, `enrolled`) to `checked_out`, or `inactive` while silent.
#[derive(Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Enrollment {
    pub id: EnrollmentId,
    pub user_id: i64,
    pub managed_apple_id: String,
    #[sqlx(try_from = "String")]
    pub ownership: Ownership,
    /// JSON object of custom attribute values.
    pub attributes: String,
    #[sqlx(try_from = "String")]
    pub mode: EnrollmentMode,
    #[sqlx(try_from = "String")]
    pub status: EnrollmentStatus,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub product: Option<String>,
    pub model_family: Option<String>,
    #[serde(skip)]
    pub scep_challenge_hash: Option<String>,
    pub challenge_expires_at: Option<DateTime<Utc>>,
    pub challenge_used_at: Option<DateTime<Utc>>,
    pub identity_serial: Option<String>,
    pub identity_sha256: Option<String>,
    pub identity_not_after: Option<DateTime<Utc>>,
    /// `EnrollmentID` of a User Enrollment (the device channel).
    pub device_channel_id: Option<String>,
    /// `EnrollmentUserID` of a User Enrollment (the user channel).
    pub user_channel_id: Option<String>,
    pub push_topic: Option<String>,
    #[serde(skip)]
    pub device_push_token: Option<Vec<u8>>,
    #[serde(skip)]
    pub device_push_magic: Option<String>,
    #[serde(skip)]
    pub user_push_token: Option<Vec<u8>>,
    #[serde(skip)]
    pub user_push_magic: Option<String>,
    #[serde(skip)]
    pub unlock_token_sealed: Option<Vec<u8>>,
    #[serde(skip)]
    pub bootstrap_token_sealed: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    pub authenticated_at: Option<DateTime<Utc>>,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub checked_out_at: Option<DateTime<Utc>>,
    pub last_push_at: Option<DateTime<Utc>>,
    /// `delivered`, `unregistered`, `rate_limited`, `failed: …`.
    pub last_push_status: Option<String>,
    /// `PayloadUUID` of the enrollment profile, of its `com.apple.mdm` payload and of its trust
    /// payload, as issued: an identity renewal reinstalls the profile with these.
    pub profile_uuid: Option<String>,
    pub mdm_payload_uuid: Option<String>,
    pub trust_payload_uuid: Option<String>,
    /// The renewed identity, issued by SCEP with a renewal challenge: accepted beside the
    /// current one until a request signed by it makes it current (and retires the old one).
    pub next_identity_serial: Option<String>,
    pub next_identity_sha256: Option<String>,
    pub next_identity_not_after: Option<DateTime<Utc>>,
    /// When a renewed identity last became the current one.
    pub identity_renewed_at: Option<DateTime<Utc>>,
    /// The last renewal queued: its one-time SCEP challenge (hash; cleared when claimed), the
    /// challenge's expiry, its `InstallProfile` command and when it was queued.
    #[serde(skip)]
    pub renewal_challenge_hash: Option<String>,
    pub renewal_challenge_expires_at: Option<DateTime<Utc>>,
    pub renewal_command_uuid: Option<CommandUuid>,
    pub renewal_queued_at: Option<DateTime<Utc>>,
    /// Hash of the bearer token the Mac sends on its user channel; `None` once revoked.
    #[serde(skip)]
    pub bearer_token_hash: Option<String>,
}

impl Enrollment {
    /// The profile identifiers the enrollment was issued with, when they were kept (profiles
    /// issued before Lanyard kept them have none and cannot be renewed in place).
    pub fn profile_ids(&self) -> Option<ProfileIds> {
        Some(ProfileIds {
            profile: self.profile_uuid.clone()?,
            mdm_payload: self.mdm_payload_uuid.clone()?,
            trust_payload: self.trust_payload_uuid.clone()?,
        })
    }
}

/// The `PayloadUUID`s of an enrollment profile that an identity renewal keeps: the profile's,
/// the `com.apple.mdm` payload's and the trust payload's (the SCEP payload is fresh each time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileIds {
    pub profile: String,
    pub mdm_payload: String,
    pub trust_payload: String,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Push tokens, PushMagic and sealed tokens are secrets: never printed.
        f.debug_struct("Enrollment")
            .field("id", &self.id)
            .field("managed_apple_id", &self.managed_apple_id)
            .field("mode", &self.mode)
            .field("status", &self.status)
            .field("device_channel_id", &self.device_channel_id)
            .finish_non_exhaustive()
    }
}

/// What profile issuance records.
#[derive(Debug, Clone)]
pub struct NewEnrollment {
    pub id: EnrollmentId,
    pub user_id: i64,
    pub managed_apple_id: String,
    pub ownership: Ownership,
    pub attributes: String,
    pub mode: EnrollmentMode,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub product: Option<String>,
    pub model_family: Option<String>,
    pub scep_challenge_hash: String,
    pub challenge_expires_at: DateTime<Utc>,
    pub push_topic: String,
    /// The profile's identifiers, kept for identity renewal.
    pub profile_ids: Option<ProfileIds>,
    /// Hash of the access token the profile was issued for: the Mac keeps sending it on its
    /// user channel (ongoing authorization).
    pub bearer_token_hash: Option<String>,
}

/// An identity renewal to queue: a one-time SCEP challenge for the enrollment and the
/// `InstallProfile` command (device channel) carrying the renewed profile with it.
#[derive(Clone)]
pub struct IdentityRenewal {
    pub enrollment_id: String,
    /// The enrollment's `renewal_command_uuid` as the caller read it: the renewal is queued only
    /// if it is still that (no other process queued one meanwhile).
    pub previous_command_uuid: Option<CommandUuid>,
    pub challenge_hash: String,
    pub challenge_expires_at: DateTime<Utc>,
    pub command: NewCommand,
}

impl std::fmt::Debug for IdentityRenewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The command carries the challenge in clear: never printed.
        f.debug_struct("IdentityRenewal")
            .field("enrollment_id", &self.enrollment_id)
            .field("command_uuid", &self.command.uuid)
            .finish_non_exhaustive()
    }
}

/// The identity certificate issued for an enrollment, as bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex (what `Mdm-Signature` checks look up).
    pub sha256: String,
    pub not_after: DateTime<Utc>,
}

/// What an `Authenticate` check-in records.
#[derive(Debug, Clone)]
pub struct AuthenticateRecord {
    pub device_channel_id: String,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub product: Option<String>,
}

/// What a `TokenUpdate` records, per channel.
#[derive(Clone)]
pub struct TokenUpdateRecord {
    /// `None` for the device channel, `Some(EnrollmentUserID)` for the user channel.
    pub user_channel_id: Option<String>,
    pub topic: String,
    pub push_token: Vec<u8>,
    pub push_magic: String,
    pub unlock_token_sealed: Option<Vec<u8>>,
}

impl std::fmt::Debug for TokenUpdateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenUpdateRecord")
            .field("user_channel_id", &self.user_channel_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// An Apple Business Manager server token: Lanyard's key pair for it and, once the
/// administrator uploaded the token file, its sealed OAuth secrets and what ABM said of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AbmToken {
    pub id: i64,
    pub name: String,
    pub cert_pem: String,
    #[serde(skip)]
    pub key_sealed: Vec<u8>,
    #[serde(skip)]
    pub secrets_sealed: Option<Vec<u8>>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub uploaded_at: Option<DateTime<Utc>>,
    pub org_name: Option<String>,
    pub org_id: Option<String>,
    pub server_name: Option<String>,
    pub server_uuid: Option<String>,
    pub is_default_account_driven: bool,
    pub discovery_url: Option<String>,
    pub discovery_registered_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub sync_cursor: Option<String>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_sync_status: Option<String>,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    #[serde(skip)]
    pub lease_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The decrypted, validated contents of a token file, ready to store (secrets already sealed).
#[derive(Debug, Clone)]
pub struct AbmTokenUpload {
    pub secrets_sealed: Vec<u8>,
    pub token_expires_at: DateTime<Utc>,
    pub org_name: Option<String>,
    pub org_id: Option<String>,
    pub server_name: Option<String>,
    pub server_uuid: Option<String>,
    /// Also make this the default token for account-driven enrollment (moving it).
    pub make_default: bool,
}

/// A device ABM assigned to one of Lanyard's server tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AbmDevice {
    pub serial_number: String,
    pub model: String,
    pub description: String,
    pub os: String,
    pub color: String,
    pub profile_status: String,
    pub profile_uuid: Option<String>,
    pub assigned_by: Option<String>,
    pub assigned_date: Option<String>,
    /// `added`, `modified` or `deleted` from an incremental sync; `None` from a full fetch.
    pub op_type: Option<String>,
}
