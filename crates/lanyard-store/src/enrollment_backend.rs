//! `EnrollmentStore` for both backends, written once like the rest (see `backend.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::*;

pub(crate) const ENROLLMENT_COLUMNS: &str =
    "id, user_id, managed_apple_id, ownership, attributes, mode, \
    status, os_version, build_version, product, model_family, scep_challenge_hash, \
    challenge_expires_at, challenge_used_at, identity_serial, identity_sha256, \
    identity_not_after, device_channel_id, user_channel_id, push_topic, device_push_token, \
    device_push_magic, user_push_token, user_push_magic, unlock_token_sealed, \
    bootstrap_token_sealed, created_at, authenticated_at, enrolled_at, last_seen_at, \
    checked_out_at, last_push_at, last_push_status";

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
                Ok(sqlx::query_as(&format!(
                    "INSERT INTO enrollments (id, user_id, managed_apple_id, ownership, \
                     attributes, mode, status, os_version, build_version, product, model_family, \
                     scep_challenge_hash, challenge_expires_at, push_topic, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, $12, $13, \
                     $14) RETURNING {ENROLLMENT_COLUMNS}"
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
                .bind(now())
                .fetch_one(&self.pool)
                .await?)
            }

            async fn claim_scep_challenge(
                &self,
                challenge_hash: &str,
                now: DateTime<Utc>,
            ) -> Result<Option<Enrollment>> {
                Ok(sqlx::query_as(&format!(
                    "UPDATE enrollments SET challenge_used_at = $2 \
                     WHERE scep_challenge_hash = $1 AND challenge_used_at IS NULL \
                     AND challenge_expires_at > $2 AND status = 'pending' \
                     RETURNING {ENROLLMENT_COLUMNS}"
                ))
                .bind(challenge_hash)
                .bind(now)
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
                let done = sqlx::query(
                    "UPDATE enrollments SET identity_serial = $2, identity_sha256 = $3, \
                     identity_not_after = $4 WHERE id = $1",
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

            async fn list_enrollments(&self, q: &EnrollmentQuery) -> Result<Vec<Enrollment>> {
                let pattern = q
                    .search
                    .as_deref()
                    .map(|s| format!("%{}%", s.to_lowercase()))
                    .unwrap_or_else(|| "%".into());
                let limit = if q.limit <= 0 { 100 } else { q.limit };
                Ok(sqlx::query_as(&format!(
                    "SELECT {ENROLLMENT_COLUMNS} FROM enrollments \
                     WHERE ($1 IS NULL OR status = $1) AND LOWER(managed_apple_id) LIKE $2 \
                     ORDER BY created_at DESC, id LIMIT $3 OFFSET $4"
                ))
                .bind(q.status.map(EnrollmentStatus::as_str))
                .bind(pattern)
                .bind(limit)
                .bind(q.offset)
                .fetch_all(&self.pool)
                .await?)
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
                let row: Option<Enrollment> = sqlx::query_as(&format!(
                    "UPDATE enrollments SET status = 'checked_out', checked_out_at = $2, \
                     last_seen_at = $2, device_push_token = NULL, device_push_magic = NULL, \
                     user_push_token = NULL, user_push_magic = NULL \
                     WHERE id = $1 RETURNING {ENROLLMENT_COLUMNS}"
                ))
                .bind(id)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                row.ok_or_else(|| StoreError::NotFound(format!("enrollment {id}")))
            }

            async fn set_bootstrap_token(&self, id: &str, sealed: Option<&[u8]>) -> Result<()> {
                sqlx::query("UPDATE enrollments SET bootstrap_token_sealed = $2 WHERE id = $1")
                    .bind(id)
                    .bind(sealed)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn record_declarative(&self, id: &str, endpoint: &str, data: &[u8]) -> Result<()> {
                sqlx::query(
                    "INSERT INTO declarative_messages (enrollment_id, endpoint, data, \
                     received_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(endpoint)
                .bind(data)
                .bind(now())
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

            async fn touch_enrollment(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE enrollments SET last_seen_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
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
