//! The command endpoint's fast path: one signed `PUT /mdm/command` = one signature check
//! (the chain verified once per certificate by the signer cache) + one store transaction
//! ([`lanyard_store::CommandExchangeStore::command_exchange`]): binding, outcome, inventory,
//! `last_seen_at` and the next command together.
//!
//! The refusals are those of [`EnrollmentService::identify`] (unknown identity, checked out,
//! another device's `EnrollmentID`), and a result for a command never given changes nothing.

use lanyard_proto::command::CommandStatus;
use lanyard_proto::EnrollmentKind;
use lanyard_store::{CommandExchange, Exchanged, InventoryMerge, NextCommand, StoreError};
use lanyard_store::{CHANNEL_DEVICE, CHANNEL_USER};

use crate::commands::{carries_inventory, outcome_of, ResultInventory};
use crate::enrollment::EnrollmentService;
use crate::{CoreError, Lanyard, Result};

impl Lanyard {
    /// Records a command-channel report from the device whose identity certificate has this
    /// SHA-256 and returns the next command for the channel, in one store transaction.
    pub async fn command_exchange(
        &self,
        identity_sha256: &str,
        body: &[u8],
    ) -> Result<Option<NextCommand>> {
        let report = lanyard_proto::decode_command_report(body)
            .map_err(|e| CoreError::Invalid(format!("command report: {e}")))?;
        let channel = if report.enrollment.kind == EnrollmentKind::UserEnrollmentUser {
            CHANNEL_USER
        } else {
            CHANNEL_DEVICE
        };
        let now = lanyard_store::now();
        let outcome = outcome_of(&report, now)?;
        let merge = ResultInventory(&report.result);
        let inventory = (report.status == CommandStatus::Acknowledged
            && carries_inventory(&report.result))
        .then_some(&merge as &dyn InventoryMerge);
        let done = self
            .store
            .command_exchange(&CommandExchange {
                identity_sha256,
                device_channel_id: report.enrollment.device_id(),
                channel,
                outcome: outcome.as_ref(),
                inventory,
                now,
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound(m) => CoreError::Invalid(m),
                other => other.into(),
            })?;
        match done {
            Exchanged::Done { next, .. } => Ok(next),
            Exchanged::UnknownIdentity => Err(CoreError::Unauthorized(
                "this identity certificate belongs to no enrollment".into(),
            )),
            Exchanged::CheckedOut => Err(CoreError::Unauthorized(
                "this enrollment has checked out; enroll again".into(),
            )),
            Exchanged::OtherDevice => Err(CoreError::Unauthorized(
                "this identity belongs to another device".into(),
            )),
        }
    }
}

impl EnrollmentService {
    /// The command endpoint: checks the `Mdm-Signature`, then [`Lanyard::command_exchange`].
    pub async fn command_request(
        &self,
        signature: Option<&[u8]>,
        body: &[u8],
    ) -> Result<Option<NextCommand>> {
        let fingerprint = self.signer_of(signature, body)?;
        self.lanyard().command_exchange(&fingerprint, body).await
    }
}
