//! `EnrollmentStore` for both backends, written once like the rest (see `backend.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{commit_audited, execute_one_audited};
use crate::dialect::Dialect;
use crate::*;

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

macro_rules! impl_enrollment_store {
    ($store:ty) => {
        #[async_trait]
        impl EnrollmentStore for $store {
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
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn flow(
                &self,
                id_hash: &str,
                now: DateTime<Utc>,
            ) -> Result<Option<EnrollmentFlow>> {
                Ok(sqlx::query_as(
                    "SELECT id_hash, user_id, user_identifier, step, ownership, created_at, \
                     expires_at FROM enrollment_flows WHERE id_hash = $1 AND expires_at > $2",
                )
                .bind(id_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn update_flow(
                &self,
                id_hash: &str,
                step: &str,
                ownership: Option<&str>,
            ) -> Result<()> {
                let done = sqlx::query(
                    "UPDATE enrollment_flows SET step = $2, \
                     ownership = COALESCE($3, ownership) WHERE id_hash = $1",
                )
                .bind(id_hash)
                .bind(step)
                .bind(ownership)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("enrollment sign-in".into()));
                }
                Ok(())
            }

            async fn delete_flow(&self, id_hash: &str) -> Result<()> {
                sqlx::query("DELETE FROM enrollment_flows WHERE id_hash = $1")
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_access_token(&self, t: &AccessTokenRow) -> Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO access_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(&t.token_hash)
                .bind(t.user_id)
                .bind(&t.ownership)
                .bind(&t.attributes)
                .bind(t.created_at)
                .bind(t.expires_at)
                .bind(t.used_at)
                .execute(&self.pool)
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
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn access_token(&self, token_hash: &str) -> Result<Option<AccessTokenRow>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM access_tokens WHERE token_hash = $1"
                ))
                .bind(token_hash)
                .fetch_optional(&self.pool)
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
                .bind(&e.ownership)
                .bind(&e.attributes)
                .bind(&e.mode)
                .bind(&e.os_version)
                .bind(&e.build_version)
                .bind(&e.product)
                .bind(&e.model_family)
                .bind(&e.scep_challenge_hash)
                .bind(e.challenge_expires_at)
                .bind(&e.push_topic)
                .bind(created)
                .bind(ids.map(|i| &i.profile))
                .bind(ids.map(|i| &i.mdm_payload))
                .bind(ids.map(|i| &i.trust_payload))
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
                .fetch_optional(&self.pool)
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
                .fetch_optional(&self.pool)
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
                .fetch_optional(&self.pool)
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
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("enrollment {id}")));
                }
                Ok(())
            }

            async fn enrollment(&self, id: &str) -> Result<Option<Enrollment>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn enrollment_by_identity(&self, sha256: &str) -> Result<Option<Enrollment>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE identity_sha256 = $1"
                ))
                .bind(sha256)
                .fetch_optional(&self.pool)
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
                .fetch_optional(&self.pool)
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
                .fetch_all(&self.pool)
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
                .bind(&r.previous_command_uuid)
                .execute(&mut *tx)
                .await?;
                if claimed.rows_affected() == 0 {
                    return Ok(false);
                }
                crate::commands::insert_command(&mut tx, &r.command, at).await?;
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
                .fetch_all(&self.pool)
                .await?)
            }

            async fn live_push_topics(&self) -> Result<Vec<(String, i64)>> {
                Ok(sqlx::query_as(
                    "SELECT push_topic, COUNT(*) FROM enrollments WHERE status <> 'checked_out' \
                     AND push_topic IS NOT NULL GROUP BY push_topic ORDER BY push_topic",
                )
                .fetch_all(&self.pool)
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
                .fetch_optional(&self.pool)
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
                        .fetch_optional(&self.pool)
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
                        .fetch_optional(&self.pool)
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
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn revoke_bearer(&self, id: &str, audit: &Audit) -> Result<()> {
                let revoke =
                    sqlx::query("UPDATE enrollments SET bearer_token_hash = NULL WHERE id = $1")
                        .bind(id);
                let missing = || StoreError::NotFound(format!("enrollment {id}"));
                execute_one_audited(self, revoke, missing, audit).await
            }

            async fn set_bootstrap_token(&self, id: &str, sealed: Option<&[u8]>) -> Result<()> {
                sqlx::query("UPDATE enrollments SET bootstrap_token_sealed = $2 WHERE id = $1")
                    .bind(id)
                    .bind(sealed)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn touch_enrollment(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE enrollments SET last_seen_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn mark_inactive_enrollments(&self, silent_since: DateTime<Utc>) -> Result<u64> {
                Ok(sqlx::query(
                    "UPDATE enrollments SET status = 'inactive' \
                     WHERE status IN ('pending', 'authenticated', 'enrolled') \
                     AND COALESCE(last_seen_at, created_at) < $1",
                )
                .bind(silent_since)
                .execute(&self.pool)
                .await?
                .rows_affected())
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
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn prune_enrollment_leftovers(&self, at: DateTime<Utc>) -> Result<u64> {
                let mut n = 0;
                n += sqlx::query("DELETE FROM enrollment_flows WHERE expires_at < $1")
                    .bind(at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                n += sqlx::query("DELETE FROM access_tokens WHERE expires_at < $1")
                    .bind(at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                n += sqlx::query(
                    "DELETE FROM enrollments WHERE status = 'pending' \
                     AND challenge_used_at IS NULL AND challenge_expires_at < $1",
                )
                .bind(at)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n)
            }
        }
    };
}

impl_enrollment_store!(SqliteStore);
impl_enrollment_store!(PostgresStore);
