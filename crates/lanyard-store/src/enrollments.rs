//! Account-driven enrollment: the sign-in flows and access tokens before it, then each
//! enrollment from its profile through check-in to check-out, its identity certificate and
//! renewal. The rows, [`EnrollmentStore`] and its SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{ColumnIndex, Database, Executor, IntoArguments};

use crate::audit::{commit_audited, execute_one_audited, Audit};
use crate::commands::insert_command;
use crate::dialect::{Column, Dialect, Param};
use crate::{
    now, Channel, CommandUuid, EnrollmentId, EnrollmentMode, EnrollmentStatus, NewCommand,
    Ownership, Result, StoreError,
};

pub(crate) const ENROLLMENT_COLUMNS: &str =
    "id, user_id, managed_apple_id, ownership, attributes, mode, \
    status, os_version, build_version, product, model_family, scep_challenge_hash, \
    challenge_expires_at, challenge_used_at, identity_serial, identity_sha256, \
    identity_not_after, device_channel_id, user_channel_id, push_topic, device_push_token, \
    device_push_magic, user_push_token, user_push_magic, unlock_token_sealed, \
    bootstrap_token_sealed, created_at, authenticated_at, enrolled_at, last_seen_at, \
    checked_out_at, last_push_at, last_push_status, profile_uuid, mdm_payload_uuid, \
    trust_payload_uuid, next_identity_serial, next_identity_sha256, next_identity_not_after, \
    identity_renewed_at, renewal_challenge_hash, renewal_challenge_expires_at, \
    renewal_command_uuid, renewal_queued_at, bearer_token_hash";

/// The identity rule's one write: the enrollment whose renewed (next) identity has SHA-256 `$1`
/// makes it current at `$2`, retiring the old one. Shared by the check-in lookup and the command
/// exchange.
pub(crate) const PROMOTE_NEXT_IDENTITY: &str = "UPDATE enrollments SET \
    identity_serial = next_identity_serial, identity_sha256 = next_identity_sha256, \
    identity_not_after = next_identity_not_after, next_identity_serial = NULL, \
    next_identity_sha256 = NULL, next_identity_not_after = NULL, identity_renewed_at = $2 \
    WHERE next_identity_sha256 = $1 AND status <> 'checked_out'";

/// The status an `inactive` enrollment returns to, from how far it had come: `enrolled` once
/// it had a device `TokenUpdate`, `authenticated` once it had `Authenticate`, else `pending`.
pub(crate) const REACTIVATED_STATUS: &str = "CASE WHEN enrolled_at IS NOT NULL THEN 'enrolled' \
    WHEN authenticated_at IS NOT NULL THEN 'authenticated' ELSE 'pending' END";

const TOKEN_COLUMNS: &str =
    "token_hash, user_id, ownership, attributes, created_at, expires_at, used_at";

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

/// Account-driven enrollment: sign-in flows, access tokens, enrollments and check-in state.
/// Single-use secrets are claimed atomically (`UPDATE … WHERE unused … RETURNING`), so two
/// racing requests cannot both use one.
#[async_trait]
pub trait EnrollmentStore: Send + Sync {
    async fn create_flow(&self, flow: &EnrollmentFlow) -> Result<()>;
    /// A live (unexpired) flow.
    async fn flow(&self, id_hash: &str, now: DateTime<Utc>) -> Result<Option<EnrollmentFlow>>;
    async fn update_flow(&self, id_hash: &str, step: &str, ownership: Option<&str>) -> Result<()>;
    async fn delete_flow(&self, id_hash: &str) -> Result<()>;

    async fn create_access_token(&self, token: &AccessTokenRow) -> Result<()>;
    /// Marks an unused, unexpired token used and returns it; `None` when it is unknown, used or
    /// expired.
    async fn consume_access_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AccessTokenRow>>;
    /// Reads a token whatever its state (for ongoing authorisation of a bound device).
    async fn access_token(&self, token_hash: &str) -> Result<Option<AccessTokenRow>>;

    /// Records a `pending` enrollment. With `bearer_token_hash`, the access token it names is
    /// claimed in the same transaction (unused and unexpired, else [`StoreError::Conflict`] and
    /// nothing is written), so a profile is issued once per token and never without its
    /// enrollment.
    async fn create_enrollment(&self, e: &NewEnrollment) -> Result<Enrollment>;
    /// The enrollment whose live SCEP challenge this is: a pending enrollment's unused,
    /// unexpired challenge, or the renewal challenge of an enrolled one (see
    /// [`EnrollmentStore::queue_identity_renewal`]). Reads only:
    /// [`EnrollmentStore::claim_scep_challenge`] claims it.
    async fn scep_challenge_enrollment(
        &self,
        challenge_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>>;
    /// In one statement, claims the live SCEP challenge of enrollment `id` and binds the
    /// identity certificate issued for it: as its identity for a pending enrollment, as its
    /// *next* identity for a renewal (accepted beside the current one until its first use, see
    /// [`EnrollmentStore::enrollment_for_identity`]); returns the enrollment. `None`, with
    /// nothing changed, when the challenge is not (or no longer) that enrollment's live
    /// challenge, e.g. because a concurrent request claimed it first.
    async fn claim_scep_challenge(
        &self,
        id: &str,
        challenge_hash: &str,
        identity: &IdentityRecord,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>>;
    /// Binds an identity certificate to the enrollment outside SCEP (load tests seed with it):
    /// as its identity when it has none yet, otherwise as its *next* identity.
    async fn set_identity(
        &self,
        id: &str,
        serial: &str,
        sha256: &str,
        not_after: DateTime<Utc>,
    ) -> Result<()>;
    async fn enrollment(&self, id: &str) -> Result<Option<Enrollment>>;
    /// The enrollment whose current identity this is (a read; renewed identities not included).
    async fn enrollment_by_identity(&self, sha256: &str) -> Result<Option<Enrollment>>;
    /// The enrollment a request signed by this identity belongs to: the one whose current
    /// identity it is, or whose renewed (next) identity it is — that first use makes the renewed
    /// identity current and retires the old one (refused from then on like an unknown one), in
    /// one statement. Checked-out enrollments are returned as they are (never promoted).
    async fn enrollment_for_identity(
        &self,
        sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>>;
    /// Enrolled enrollments whose identity expires after `now` and no later than `due_before`,
    /// whose profile identifiers are known, with no renewal command still queued and none
    /// queued after `queued_before`; soonest expiry first, at most `limit`.
    async fn identities_due_for_renewal(
        &self,
        due_before: DateTime<Utc>,
        queued_before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Enrollment>>;
    /// Queues an identity renewal in one transaction: records the renewal challenge and command
    /// on the enrollment (still enrolled, its `renewal_command_uuid` still the one the caller
    /// read), stores the command and queues it on the device channel, with the audit line.
    /// Returns `false`, changing nothing, when the enrollment no longer qualifies.
    async fn queue_identity_renewal(
        &self,
        renewal: &IdentityRenewal,
        now: DateTime<Utc>,
        audit: &Audit,
    ) -> Result<bool>;
    async fn count_enrollments_by_status(&self) -> Result<Vec<(String, i64)>>;
    /// The push topics of enrollments that have not checked out, with how many carry each.
    async fn live_push_topics(&self) -> Result<Vec<(String, i64)>>;
    async fn record_authenticate(
        &self,
        id: &str,
        rec: &AuthenticateRecord,
        now: DateTime<Utc>,
    ) -> Result<Enrollment>;
    async fn record_token_update(
        &self,
        id: &str,
        rec: &TokenUpdateRecord,
        now: DateTime<Utc>,
    ) -> Result<Enrollment>;
    /// Ends the enrollment (`checked_out`, push secrets and bearer dropped) and drops its
    /// command queue and reported declarative status, in one transaction.
    async fn record_checkout(&self, id: &str, now: DateTime<Utc>) -> Result<Enrollment>;
    /// Re-authentication: claims an unused, unexpired access token of `user_id` and makes it
    /// the enrollment's bearer, in one transaction; `false` (nothing changed) when the token is
    /// unknown, used, expired or another person's, or the enrollment has checked out.
    async fn rebind_bearer(
        &self,
        id: &str,
        user_id: i64,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Forgets the enrollment's bearer, so its next user-channel request is challenged.
    async fn revoke_bearer(&self, id: &str, audit: &Audit) -> Result<()>;
    async fn set_bootstrap_token(&self, id: &str, sealed: Option<&[u8]>) -> Result<()>;
    async fn touch_enrollment(&self, id: &str, now: DateTime<Utc>) -> Result<()>;
    /// Marks `inactive` every enrollment that has not checked out and has made no request
    /// (nor been created) since `silent_since`; returns how many.
    async fn mark_inactive_enrollments(&self, silent_since: DateTime<Utc>) -> Result<u64>;
    /// An `inactive` enrollment whose device made a request: back to the status it had
    /// reached, seen `now`. `None` when it was not inactive.
    async fn reactivate_enrollment(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>>;
    /// Removes expired flows and tokens and pending enrollments whose challenge expired
    /// unused; returns how many rows went.
    async fn prune_enrollment_leftovers(&self, now: DateTime<Utc>) -> Result<u64>;
}

#[async_trait]
impl<S, DB> EnrollmentStore for S
where
    S: Dialect<Db = DB>,
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    for<'q> Option<&'q str>: Param<'q, DB>,
    for<'q> Option<&'q [u8]>: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
    String: Column<DB>,
    Option<String>: Column<DB>,
    Vec<u8>: Column<DB>,
    Option<Vec<u8>>: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
{
    async fn create_flow(&self, f: &EnrollmentFlow) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrollment_flows (id_hash, user_id, user_identifier, step, \
             ownership, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&f.id_hash)
        .bind(f.user_id)
        .bind(&f.user_identifier)
        .bind(&f.step)
        .bind(&f.ownership)
        .bind(f.created_at)
        .bind(f.expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn flow(&self, id_hash: &str, now: DateTime<Utc>) -> Result<Option<EnrollmentFlow>> {
        Ok(sqlx::query_as(
            "SELECT id_hash, user_id, user_identifier, step, ownership, created_at, \
             expires_at FROM enrollment_flows WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn update_flow(&self, id_hash: &str, step: &str, ownership: Option<&str>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE enrollment_flows SET step = $2, \
             ownership = COALESCE($3, ownership) WHERE id_hash = $1",
        )
        .bind(id_hash)
        .bind(step)
        .bind(ownership)
        .execute(self.pool())
        .await?;
        if S::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound("enrollment sign-in".into()));
        }
        Ok(())
    }

    async fn delete_flow(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM enrollment_flows WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn create_access_token(&self, t: &AccessTokenRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO access_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&t.token_hash)
        .bind(t.user_id)
        .bind(t.ownership)
        .bind(&t.attributes)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.used_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn consume_access_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AccessTokenRow>> {
        Ok(sqlx::query_as(&format!(
            "UPDATE access_tokens SET used_at = $2 WHERE token_hash = $1 \
             AND used_at IS NULL AND expires_at > $2 RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn access_token(&self, token_hash: &str) -> Result<Option<AccessTokenRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM access_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn create_enrollment(&self, e: &NewEnrollment) -> Result<Enrollment> {
        let ids = e.profile_ids.as_ref();
        let created = now();
        let mut tx = self.begin_write().await?;
        if let Some(token) = &e.bearer_token_hash {
            // The access token the profile is issued for is claimed with the enrollment:
            // both or neither.
            let claimed: Option<String> = sqlx::query_scalar(
                "UPDATE access_tokens SET used_at = $2 WHERE token_hash = $1 \
                 AND used_at IS NULL AND expires_at > $2 RETURNING token_hash",
            )
            .bind(token)
            .bind(created)
            .fetch_optional(&mut *tx)
            .await?;
            if claimed.is_none() {
                return Err(StoreError::Conflict(
                    "the access token is unknown, used or expired".into(),
                ));
            }
        }
        let row: Enrollment = sqlx::query_as(&format!(
            "INSERT INTO enrollments (id, user_id, managed_apple_id, ownership, \
             attributes, mode, status, os_version, build_version, product, model_family, \
             scep_challenge_hash, challenge_expires_at, push_topic, created_at, \
             profile_uuid, mdm_payload_uuid, trust_payload_uuid, bearer_token_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18) RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(&e.id)
        .bind(e.user_id)
        .bind(&e.managed_apple_id)
        .bind(e.ownership)
        .bind(&e.attributes)
        .bind(e.mode)
        .bind(&e.os_version)
        .bind(&e.build_version)
        .bind(&e.product)
        .bind(&e.model_family)
        .bind(&e.scep_challenge_hash)
        .bind(e.challenge_expires_at)
        .bind(&e.push_topic)
        .bind(created)
        .bind(ids.map(|i| i.profile.as_str()))
        .bind(ids.map(|i| i.mdm_payload.as_str()))
        .bind(ids.map(|i| i.trust_payload.as_str()))
        .bind(&e.bearer_token_hash)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn scep_challenge_enrollment(
        &self,
        challenge_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>> {
        // A pending enrollment's challenge, or the renewal challenge of an enrolled one.
        Ok(sqlx::query_as(&format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments \
             WHERE (scep_challenge_hash = $1 AND challenge_used_at IS NULL \
             AND challenge_expires_at > $2 AND status = 'pending') \
             OR (renewal_challenge_hash = $1 AND renewal_challenge_expires_at > $2 \
             AND status = 'enrolled')"
        ))
        .bind(challenge_hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn claim_scep_challenge(
        &self,
        id: &str,
        challenge_hash: &str,
        identity: &IdentityRecord,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>> {
        let enrolling: Option<Enrollment> = sqlx::query_as(&format!(
            "UPDATE enrollments SET challenge_used_at = $3, identity_serial = $4, \
             identity_sha256 = $5, identity_not_after = $6 \
             WHERE id = $1 AND scep_challenge_hash = $2 \
             AND challenge_used_at IS NULL AND challenge_expires_at > $3 \
             AND status = 'pending' RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(id)
        .bind(challenge_hash)
        .bind(now)
        .bind(&identity.serial)
        .bind(&identity.sha256)
        .bind(identity.not_after)
        .fetch_optional(self.pool())
        .await?;
        if enrolling.is_some() {
            return Ok(enrolling);
        }
        // A renewal: the challenge is single-use too (claiming it clears it), and the
        // certificate becomes the *next* identity, accepted beside the current one until
        // its first use.
        Ok(sqlx::query_as(&format!(
            "UPDATE enrollments SET renewal_challenge_hash = NULL, \
             next_identity_serial = $4, next_identity_sha256 = $5, \
             next_identity_not_after = $6 \
             WHERE id = $1 AND renewal_challenge_hash = $2 \
             AND renewal_challenge_expires_at > $3 AND status = 'enrolled' \
             RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(id)
        .bind(challenge_hash)
        .bind(now)
        .bind(&identity.serial)
        .bind(&identity.sha256)
        .bind(identity.not_after)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn set_identity(
        &self,
        id: &str,
        serial: &str,
        sha256: &str,
        not_after: DateTime<Utc>,
    ) -> Result<()> {
        // Every right-hand side reads the row as it was: an enrollment without an
        // identity gets its first one, an enrollment with one gets a next one.
        let done = sqlx::query(
            "UPDATE enrollments SET \
             identity_serial = CASE WHEN identity_sha256 IS NULL THEN $2 \
             ELSE identity_serial END, \
             identity_not_after = CASE WHEN identity_sha256 IS NULL THEN $4 \
             ELSE identity_not_after END, \
             next_identity_serial = CASE WHEN identity_sha256 IS NULL THEN NULL \
             ELSE $2 END, \
             next_identity_sha256 = CASE WHEN identity_sha256 IS NULL THEN NULL \
             ELSE $3 END, \
             next_identity_not_after = CASE WHEN identity_sha256 IS NULL THEN NULL \
             ELSE $4 END, \
             identity_sha256 = COALESCE(identity_sha256, $3) \
             WHERE id = $1",
        )
        .bind(id)
        .bind(serial)
        .bind(sha256)
        .bind(not_after)
        .execute(self.pool())
        .await?;
        if S::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound(format!("enrollment {id}")));
        }
        Ok(())
    }

    async fn enrollment(&self, id: &str) -> Result<Option<Enrollment>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn enrollment_by_identity(&self, sha256: &str) -> Result<Option<Enrollment>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE identity_sha256 = $1"
        ))
        .bind(sha256)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn enrollment_for_identity(
        &self,
        sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>> {
        let promoted: Option<Enrollment> = sqlx::query_as(&format!(
            "{PROMOTE_NEXT_IDENTITY} RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(sha256)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        if promoted.is_some() {
            return Ok(promoted);
        }
        self.enrollment_by_identity(sha256).await
    }

    async fn identities_due_for_renewal(
        &self,
        due_before: DateTime<Utc>,
        queued_before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Enrollment>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE status = 'enrolled' \
             AND identity_not_after > $3 AND identity_not_after <= $1 \
             AND profile_uuid IS NOT NULL AND mdm_payload_uuid IS NOT NULL \
             AND trust_payload_uuid IS NOT NULL \
             AND (renewal_queued_at IS NULL OR renewal_queued_at <= $2) \
             AND NOT EXISTS (SELECT 1 FROM command_queue q \
             WHERE q.enrollment_id = enrollments.id \
             AND q.command_uuid = enrollments.renewal_command_uuid) \
             ORDER BY identity_not_after, id LIMIT $4"
        ))
        .bind(due_before)
        .bind(queued_before)
        .bind(now)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(self.pool())
        .await?)
    }

    async fn queue_identity_renewal(
        &self,
        r: &IdentityRenewal,
        at: DateTime<Utc>,
        audit: &Audit,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let claimed = sqlx::query(
            "UPDATE enrollments SET renewal_challenge_hash = $2, \
             renewal_challenge_expires_at = $3, renewal_command_uuid = $4, \
             renewal_queued_at = $5 WHERE id = $1 AND status = 'enrolled' \
             AND COALESCE(renewal_command_uuid, '') = COALESCE($6, '')",
        )
        .bind(&r.enrollment_id)
        .bind(&r.challenge_hash)
        .bind(r.challenge_expires_at)
        .bind(&r.command.uuid)
        .bind(at)
        .bind(r.previous_command_uuid.as_deref())
        .execute(&mut *tx)
        .await?;
        if S::rows_affected(&claimed) == 0 {
            return Ok(false);
        }
        insert_command(&mut tx, &r.command, at).await?;
        sqlx::query(
            "INSERT INTO command_queue (enrollment_id, channel, command_uuid, status, \
             queued_at) VALUES ($1, $2, $3, 'queued', $4)",
        )
        .bind(&r.enrollment_id)
        .bind(Channel::Device)
        .bind(&r.command.uuid)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if r.command.push {
            sqlx::query("UPDATE enrollments SET push_requested_at = $2 WHERE id = $1")
                .bind(&r.enrollment_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        commit_audited(tx, audit).await?;
        Ok(true)
    }

    async fn count_enrollments_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT status, COUNT(*) FROM enrollments GROUP BY status ORDER BY status",
        )
        .fetch_all(self.pool())
        .await?)
    }

    async fn live_push_topics(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT push_topic, COUNT(*) FROM enrollments WHERE status <> 'checked_out' \
             AND push_topic IS NOT NULL GROUP BY push_topic ORDER BY push_topic",
        )
        .fetch_all(self.pool())
        .await?)
    }

    async fn record_authenticate(
        &self,
        id: &str,
        r: &AuthenticateRecord,
        now: DateTime<Utc>,
    ) -> Result<Enrollment> {
        let row: Option<Enrollment> = sqlx::query_as(&format!(
            "UPDATE enrollments SET device_channel_id = $2, \
             os_version = COALESCE($3, os_version), \
             build_version = COALESCE($4, build_version), \
             product = COALESCE($5, product), \
             status = CASE WHEN status = 'pending' THEN 'authenticated' ELSE status END, \
             authenticated_at = $6, last_seen_at = $6 \
             WHERE id = $1 AND (device_channel_id IS NULL OR device_channel_id = $2) \
             AND status <> 'checked_out' RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(id)
        .bind(&r.device_channel_id)
        .bind(&r.os_version)
        .bind(&r.build_version)
        .bind(&r.product)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or_else(|| {
            StoreError::Conflict(format!(
                "enrollment {id} is checked out or bound to another device"
            ))
        })
    }

    async fn record_token_update(
        &self,
        id: &str,
        r: &TokenUpdateRecord,
        now: DateTime<Utc>,
    ) -> Result<Enrollment> {
        let row: Option<Enrollment> = match &r.user_channel_id {
            Some(user_channel_id) => {
                sqlx::query_as(&format!(
                    "UPDATE enrollments SET user_channel_id = $2, push_topic = $3, \
                     user_push_token = $4, user_push_magic = $5, last_seen_at = $6 \
                     WHERE id = $1 AND status IN ('authenticated', 'enrolled') \
                     RETURNING {ENROLLMENT_COLUMNS}"
                ))
                .bind(id)
                .bind(user_channel_id)
                .bind(&r.topic)
                .bind(&r.push_token)
                .bind(&r.push_magic)
                .bind(now)
                .fetch_optional(self.pool())
                .await?
            }
            None => {
                sqlx::query_as(&format!(
                    "UPDATE enrollments SET push_topic = $2, device_push_token = $3, \
                     device_push_magic = $4, \
                     unlock_token_sealed = COALESCE($5, unlock_token_sealed), \
                     status = 'enrolled', enrolled_at = COALESCE(enrolled_at, $6), \
                     last_seen_at = $6 \
                     WHERE id = $1 AND status IN ('authenticated', 'enrolled') \
                     RETURNING {ENROLLMENT_COLUMNS}"
                ))
                .bind(id)
                .bind(&r.topic)
                .bind(&r.push_token)
                .bind(&r.push_magic)
                .bind(&r.unlock_token_sealed)
                .bind(now)
                .fetch_optional(self.pool())
                .await?
            }
        };
        row.ok_or_else(|| {
            StoreError::Conflict(format!(
                "enrollment {id} has not authenticated or is checked out"
            ))
        })
    }

    async fn record_checkout(&self, id: &str, now: DateTime<Utc>) -> Result<Enrollment> {
        // The enrollment ends and its queue goes in one transaction: a crash between
        // the two can leave neither a live queue for a dead enrollment nor the reverse.
        let mut tx = self.begin_write().await?;
        let row: Option<Enrollment> = sqlx::query_as(&format!(
            "UPDATE enrollments SET status = 'checked_out', checked_out_at = $2, \
             last_seen_at = $2, device_push_token = NULL, device_push_magic = NULL, \
             user_push_token = NULL, user_push_magic = NULL, bearer_token_hash = NULL \
             WHERE id = $1 RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.ok_or_else(|| StoreError::NotFound(format!("enrollment {id}")))?;
        sqlx::query("DELETE FROM command_queue WHERE enrollment_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for table in ["status_items", "declaration_status"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE enrollment_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    async fn rebind_bearer(
        &self,
        id: &str,
        user_id: i64,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let claimed: Option<String> = sqlx::query_scalar(
            "UPDATE access_tokens SET used_at = $3 WHERE token_hash = $1 \
             AND user_id = $2 AND used_at IS NULL AND expires_at > $3 \
             RETURNING token_hash",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE enrollments SET bearer_token_hash = $2 WHERE id = $1 \
             AND user_id = $3 AND status <> 'checked_out'",
        )
        .bind(id)
        .bind(token_hash)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if S::rows_affected(&done) == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn revoke_bearer(&self, id: &str, audit: &Audit) -> Result<()> {
        let revoke =
            sqlx::query("UPDATE enrollments SET bearer_token_hash = NULL WHERE id = $1").bind(id);
        let missing = || StoreError::NotFound(format!("enrollment {id}"));
        execute_one_audited(self, revoke, missing, audit).await
    }

    async fn set_bootstrap_token(&self, id: &str, sealed: Option<&[u8]>) -> Result<()> {
        sqlx::query("UPDATE enrollments SET bootstrap_token_sealed = $2 WHERE id = $1")
            .bind(id)
            .bind(sealed)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn touch_enrollment(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE enrollments SET last_seen_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn mark_inactive_enrollments(&self, silent_since: DateTime<Utc>) -> Result<u64> {
        Ok(S::rows_affected(
            &sqlx::query(
                "UPDATE enrollments SET status = 'inactive' \
                 WHERE status IN ('pending', 'authenticated', 'enrolled') \
                 AND COALESCE(last_seen_at, created_at) < $1",
            )
            .bind(silent_since)
            .execute(self.pool())
            .await?,
        ))
    }

    async fn reactivate_enrollment(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>> {
        Ok(sqlx::query_as(&format!(
            "UPDATE enrollments SET status = {REACTIVATED_STATUS}, last_seen_at = $2 \
             WHERE id = $1 AND status = 'inactive' RETURNING {ENROLLMENT_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn prune_enrollment_leftovers(&self, at: DateTime<Utc>) -> Result<u64> {
        let mut n = 0;
        n += S::rows_affected(
            &sqlx::query("DELETE FROM enrollment_flows WHERE expires_at < $1")
                .bind(at)
                .execute(self.pool())
                .await?,
        );
        n += S::rows_affected(
            &sqlx::query("DELETE FROM access_tokens WHERE expires_at < $1")
                .bind(at)
                .execute(self.pool())
                .await?,
        );
        n += S::rows_affected(
            &sqlx::query(
                "DELETE FROM enrollments WHERE status = 'pending' \
                 AND challenge_used_at IS NULL AND challenge_expires_at < $1",
            )
            .bind(at)
            .execute(self.pool())
            .await?,
        );
        Ok(n)
    }
}
