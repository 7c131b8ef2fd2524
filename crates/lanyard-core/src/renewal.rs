//! Identity renewal: before a device's identity certificate expires, Lanyard reinstalls the
//! device's enrollment profile with a fresh SCEP payload, and the device enrolls a new identity.
//!
//! Apple's way, and the sources:
//! - Apple, "Managing certificates for device management services and devices" (Device
//!   Management documentation): the server replaces the profile that contains the MDM payload
//!   before any certificate in it expires.
//! - Apple, "MDM" payload (Device Management documentation): the profile's `PayloadIdentifier`
//!   is what the device uses to decide whether a profile replaces an installed one; the renewed
//!   profile therefore keeps the `PayloadIdentifier` and `PayloadUUID` of the profile and of its
//!   `com.apple.mdm` payload.
//! - Apple's schema, `mdm/profiles/com.apple.mdm.yaml`: on an update of the payload `Topic`,
//!   `ServerURL`, `CheckInURL`, `AssignedManagedAppleID` and `EnrollmentMode` must not change,
//!   the `com.apple.mdm.per-user-connections` capability must not be added or removed and no
//!   access right may be added (a User Enrollment profile carries none); the update is rejected
//!   otherwise. `IdentityCertificateUUID` names the identity payload, here the new SCEP payload.
//! - Apple's schema, `mdm/commands/profile.install.yaml`: `InstallProfile` is allowed under User
//!   Enrollment; `com.apple.mdm` is a device-channel payload (`userchannel: false`), so the
//!   renewal goes to the device channel. The command passes the same User Enrollment check as
//!   any queued command ([`crate::commands::CommandSpec::build`]).
//!
//! The server side: the renewal's one-time challenge is claimed at SCEP like an enrollment
//! challenge, and the certificate issued for it is bound as the enrollment's *next* identity
//! (the store's `claim_scep_challenge` and `set_identity`). Requests signed by either identity
//! are accepted; the first one signed by the new identity makes it current and retires the old
//! one (`enrollment_for_identity`, and the command exchange, in the store).

use std::time::Duration;

use serde_json::json;

use lanyard_proto::profile::ProfileUuids;
use lanyard_proto::SecretString;
use lanyard_store::{Audit, Enrollment, IdentityRenewal, NewCommand};

use crate::admins::new_secret;
use crate::commands::CommandSpec;
use crate::enrollment::EnrollmentService;
use crate::{CoreError, Result};
use lanyard_store::EnrollmentMode;

/// Identity certificates live a year by default.
pub const DEFAULT_IDENTITY_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// They are renewed in their last 30 days by default.
pub const DEFAULT_RENEWAL_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// The shortest lifetime accepted.
pub const MIN_IDENTITY_LIFETIME: Duration = Duration::from_secs(60);
/// Renewals queued per enrollment are at least this fraction of the window apart (a renewal the
/// device answered with an error is retried, but not at every run of the job).
const RETRY_FRACTION: u32 = 10;
/// Renewals queued per run of the job at most.
const RENEWALS_PER_RUN: i64 = 500;

/// How long identity certificates live and when they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// Validity of an issued identity certificate.
    pub lifetime: Duration,
    /// An identity is renewed once it expires within this.
    pub renewal_window: Duration,
}

impl Default for IdentityPolicy {
    fn default() -> Self {
        Self {
            lifetime: DEFAULT_IDENTITY_LIFETIME,
            renewal_window: DEFAULT_RENEWAL_WINDOW,
        }
    }
}

impl IdentityPolicy {
    /// A policy: the lifetime one minute to five years, the window at least a second and no
    /// longer than the lifetime (equal: every identity is renewed as soon as it is issued, which
    /// only tests want).
    pub fn new(lifetime: Duration, renewal_window: Duration) -> Result<Self> {
        let max = Duration::from_secs(u64::from(lanyard_pki::MAX_IDENTITY_VALIDITY_DAYS) * 86_400);
        if lifetime < MIN_IDENTITY_LIFETIME || lifetime > max {
            return Err(CoreError::Invalid(format!(
                "the identity lifetime must be one minute to {} days",
                lanyard_pki::MAX_IDENTITY_VALIDITY_DAYS
            )));
        }
        if renewal_window.is_zero() || renewal_window > lifetime {
            return Err(CoreError::Invalid(
                "the identity renewal window must be at least a second and no longer than the \
                 identity lifetime"
                    .into(),
            ));
        }
        Ok(Self {
            lifetime,
            renewal_window,
        })
    }

    /// The least time between two renewals queued for one enrollment.
    pub fn retry_after(&self) -> Duration {
        (self.renewal_window / RETRY_FRACTION).max(Duration::from_secs(1))
    }
}

fn chrono_duration(d: Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(d).map_err(|e| CoreError::failed("converting a duration", e))
}

impl EnrollmentService {
    /// Queues a renewal for every enrolled device whose identity enters the renewal window (see
    /// the module documentation) and wakes them (through the push requester given to the
    /// domain at start). Returns how many were queued. Safe to run from several server
    /// processes at once: a renewal is queued once.
    pub async fn renew_identities(&self) -> Result<usize> {
        let policy = *self.identity_policy();
        let now = lanyard_store::now();
        let due = self
            .lanyard()
            .store()
            .identities_due_for_renewal(
                now + chrono_duration(policy.renewal_window)?,
                now - chrono_duration(policy.retry_after())?,
                now,
                RENEWALS_PER_RUN,
            )
            .await?;
        let mut queued = Vec::new();
        for e in due {
            match self.queue_renewal(&e, now).await {
                Ok(true) => queued.push(e.id.0),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(enrollment = %e.id, error = %err.chain(), "queueing an identity renewal failed")
                }
            }
        }
        let n = queued.len();
        if !queued.is_empty() {
            self.lanyard().request_push(queued);
        }
        Ok(n)
    }

    /// Queues one renewal: the renewed profile with a new challenge, in `InstallProfile`.
    async fn queue_renewal(
        &self,
        e: &Enrollment,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        let missing =
            |what: &str| CoreError::Internal(format!("enrollment {} has no {what}", e.id));
        let ids = e
            .profile_ids()
            .ok_or_else(|| missing("profile identifiers"))?;
        let topic = e
            .push_topic
            .as_deref()
            .ok_or_else(|| missing("push topic"))?;
        let expires = e
            .identity_not_after
            .ok_or_else(|| missing("identity certificate"))?;
        let parse = |s: &str| {
            uuid::Uuid::parse_str(s).map_err(|err| {
                CoreError::failed(format!("reading the stored PayloadUUID {s:?}"), err)
            })
        };
        let uuids = ProfileUuids {
            profile: parse(&ids.profile)?,
            mdm: parse(&ids.mdm_payload)?,
            trust: parse(&ids.trust_payload)?,
            // A fresh identity payload, which the MDM payload's IdentityCertificateUUID names.
            scep: uuid::Uuid::new_v4(),
        };
        let challenge = new_secret("");
        let profile = self.signed_profile(&self.profile_input(
            &e.id,
            &e.managed_apple_id,
            topic,
            SecretString::new(challenge.secret),
            uuids,
            self.installs_trust_payload().await?,
        )?)?;
        let command = CommandSpec::InstallProfile { profile }
            .build(e.mode == EnrollmentMode::UserEnrollment)?;
        let payload = lanyard_proto::command::encode_command(&command)
            .map_err(|err| CoreError::failed("encoding InstallProfile", err))?;
        let audit = Audit::new(
            "system",
            "enrollment.identity_renewal",
            &e.id,
            json!({
                "command_uuid": command.uuid,
                "identity_certificate_serial": e.identity_serial,
                "identity_certificate_not_after": e.identity_not_after,
            }),
        );
        let renewal = IdentityRenewal {
            enrollment_id: e.id.0.clone(),
            previous_command_uuid: e.renewal_command_uuid.clone(),
            challenge_hash: challenge.hash,
            // Useless once the current identity has expired: the device could not fetch it.
            challenge_expires_at: expires,
            command: NewCommand {
                uuid: command.uuid.as_str().into(),
                request_type: command.request_type.clone(),
                payload,
                created_by: "system".into(),
                push: true,
            },
        };
        let done = self
            .lanyard()
            .store()
            .queue_identity_renewal(&renewal, now, &audit)
            .await?;
        if done {
            tracing::info!(
                enrollment = %e.id,
                command = %command.uuid,
                not_after = ?e.identity_not_after,
                "queued an identity renewal"
            );
        }
        Ok(done)
    }

    /// Runs [`EnrollmentService::renew_identities`] every `every` in the background.
    pub fn start_identity_renewal_job(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match service.renew_identities().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(queued = n, "identity renewals queued"),
                    Err(e) => tracing::warn!(error = %e.chain(), "the identity renewal run failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_bounds() {
        let d = IdentityPolicy::default();
        assert_eq!(d.lifetime, Duration::from_secs(365 * 86_400));
        assert_eq!(d.renewal_window, Duration::from_secs(30 * 86_400));
        assert_eq!(d.retry_after(), Duration::from_secs(3 * 86_400));
        let s = Duration::from_secs;
        assert!(IdentityPolicy::new(s(120), s(120)).is_ok());
        assert!(IdentityPolicy::new(s(59), s(10)).is_err());
        assert!(IdentityPolicy::new(s(120), s(121)).is_err());
        assert!(IdentityPolicy::new(s(120), Duration::ZERO).is_err());
        assert!(IdentityPolicy::new(s(1827 * 86_400), s(10)).is_err());
        assert_eq!(
            IdentityPolicy::new(s(120), s(5)).unwrap().retry_after(),
            s(1)
        );
    }
}
