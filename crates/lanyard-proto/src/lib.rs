//! Apple MDM wire formats for Lanyard, as types and pure functions.
//!
//! This crate owns everything Lanyard says to, or reads from, an Apple device or Apple's
//! enrollment services, as bytes in and typed values out:
//!
//! - [`checkin`]: the check-in protocol (`MessageType` …), decoded into one exhaustive enum;
//! - [`identity`]: how the identity keys of a request (`UDID`, `UserID`, `EnrollmentID`, …)
//!   resolve to one enrollment key;
//! - [`command`]: the command channel (device reports in, commands out);
//! - [`declaration`]: declarative device management declarations and status items, checked
//!   against Apple's schema (generated);
//! - [`discovery`]: account-driven enrollment service discovery and the `user-identifier`;
//! - [`machineinfo`]: the MachineInfo property list and OS versions;
//! - [`mdm_error`]: the error document of a `403` answer to a device;
//! - [`profile`]: the account-driven User Enrollment profile builder;
//! - [`user_enrollment`]: what macOS User Enrollment allows, generated from Apple's schema.
//!
//! Rules for this crate: it must not depend on any other Lanyard crate, and it does no I/O
//! (no files, network, clocks or databases; no async runtime). It only transforms values, so
//! every function here can be tested with bytes alone. CMS signing and verification live in
//! `lanyard-pki`; HTTP lives in `lanyard-http`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod checkin;
pub mod command;
pub mod declaration;
pub mod discovery;
pub mod error;
pub mod identity;
pub mod machineinfo;
pub mod mdm_error;
pub mod profile;
pub mod secret;
pub mod user_enrollment;

#[rustfmt::skip]
mod declaration_table;
mod plistutil;
#[rustfmt::skip]
mod ue_table;

pub use checkin::{decode_checkin, encode_checkin, CheckinMessage};
pub use command::{
    decode_command, decode_command_report, encode_command, encode_command_report, Command,
    CommandReport, CommandStatus,
};
pub use discovery::{ModelFamily, ServiceDiscovery, UserIdentifier, UserIdentifierError};
pub use error::ProtoError;
pub use identity::{EnrollmentIdentity, EnrollmentKind, EnrollmentRef};
pub use machineinfo::{decode_machine_info, MachineInfo, OsVersion, OsVersionError};
pub use mdm_error::{ErrorCode, ErrorDocument};
pub use plistutil::read_plist;
pub use profile::{
    build_enrollment_profile, AccessRights, EnrollmentProfileInput, ProfileError, ProfileUuids,
    ScepSettings, ServerCapability,
};
pub use secret::{SecretBytes, SecretString};
pub use user_enrollment::{
    ue_command_policy, ue_device_information_query_policy, ue_payload_policy, Policy,
};
