//! `lanyard-testkit`: Lanyard's test doubles. **Development and testing only** — nothing here
//! belongs in a production deployment, and no production crate depends on it (only tests and
//! developer tools do).
//!
//! What this crate owns:
//! - the **simulated Mac** ([`SimMac`], CLI `lanyard-sim`): a macOS 15.2 Mac doing an
//!   account-driven User Enrollment (BYOD) against a Lanyard server over real HTTP(S) —
//!   service discovery, the signed MachineInfo, the web sign-in pages (read as HTML forms),
//!   the signed enrollment profile, SCEP for its identity, check-in (`Authenticate`,
//!   `TokenUpdate` on both channels) and the command channel with a small built-in
//!   responder;
//! - a **scratch PostgreSQL database** per test ([`scratch_db`]), dropped even when the test
//!   panics;
//! - a **fake APNs** ([`fake_apns`]) and fake MDM push certificates;
//! - a **fake Apple Business Manager** ([`fake_abm`], CLI `lanyard-fake-abm`): token files,
//!   OAuth-checked sessions, devices with cursors, discovery registration, fault injection;
//! - the reading of `lanyard serve`'s start-up lines ([`serve_output`]), for the tools that
//!   start it;
//! - the **ceiling server** ([`ceiling`]): `lanyard serve`'s command endpoint without the store,
//!   for `lanyard-bench --ceiling`;
//! - later: a test app catalogue.
//!
//! The simulated Mac is written as an independent client: it builds its property lists
//! itself ([`device`]) from Apple's schema and only *checks* them against `lanyard-proto` in
//! its tests, so a codec bug on the server side fails a test instead of cancelling out.
//! Cryptography (CMS, SCEP message codec, CSRs) is `lanyard-pki`'s, through its client-side
//! helpers.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod ceiling;
pub mod commands;
pub mod declarative;
pub mod device;
pub mod error;
pub mod fake_abm;
pub mod fake_apns;
pub mod fake_pushcert;
pub mod fake_signing_service;
pub mod profile;
pub mod scep_client;
pub mod scratch_db;
pub mod serve_output;
pub mod sim;
pub mod webauth;

pub use commands::{Channel, ServerCommand};
pub use error::{SimError, Step};
pub use sim::{
    EnrollmentReport, HandledCommand, IdentityCertificateReport, ObtainedProfile, OidcTamper,
    Ownership, SimMac, SimOidc, SimOptions,
};
