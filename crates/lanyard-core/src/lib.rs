//! Lanyard's domain: the rules of enrollment and administration, independent of HTTP and of the
//! database engine.
//!
//! Owns: enrollment settings and their validation, users and their managed Apple IDs, custom
//! attribute definitions and value validation, administrators (sign-in, roles, API tokens),
//! password sign-in throttling (`sign_in`), the audit trail of every admin change, and bootstrapping the server's PKI (the CA kept
//! in the database, sealed with the server's secret key), and Apple Business Manager server tokens
//! (`server_tokens`: key pair, token file, account-driven discovery registration, device sync).
//!
//! Depends on the storage *traits* (never on a concrete backend), the PKI and protocol crates.
//! Must not depend on axum/HTTP, on a concrete database, or on the binary's configuration.

pub mod abm;
pub mod admins;
pub mod attributes;
mod b64;
pub mod commands;
pub mod declarations;
pub mod enrollment;
mod error;
pub mod identity_providers;
pub mod listings;
pub mod mdm;
pub mod pki;
pub mod push;
pub mod pushcert;
pub mod renewal;
pub mod settings;
pub mod sign_in;
pub mod users;

use std::sync::Arc;

pub use error::{CoreError, ErrorChain, Result};
pub use lanyard_store as store;
use lanyard_store::Store;

/// Who performs an action; recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `admin:<username>`, `token:<name>`, `cli@<host user>` or `system`.
    pub name: String,
    pub role: admins::Role,
}

impl Actor {
    /// The local operator running an admin sub-command on the server host.
    pub fn cli() -> Self {
        let who = std::env::var("USER").unwrap_or_else(|_| "operator".into());
        Actor {
            name: format!("cli:{who}"),
            role: admins::Role::Administrator,
        }
    }

    /// Lanyard itself (first-start bootstrap, jobs).
    pub fn system() -> Self {
        Actor {
            name: "system".into(),
            role: admins::Role::Administrator,
        }
    }

    /// Refuses the change unless the actor may make changes.
    pub fn require_write(&self) -> Result<()> {
        match self.role {
            admins::Role::Administrator => Ok(()),
            admins::Role::ReadOnly => Err(CoreError::Forbidden(
                "read-only administrators cannot change anything".into(),
            )),
        }
    }
}

/// The domain services over one store. Cheap to clone.
#[derive(Clone)]
pub struct Lanyard {
    store: Arc<dyn Store>,
    /// Wakes devices after commands are queued; given once at start (`lanyard serve` gives the
    /// push job, the CLI a collector it drains before exiting). `None`: commands wait for the
    /// device's next check-in.
    pusher: Option<Arc<dyn commands::PushRequester>>,
    /// The APNs service pushes go to; a push certificate marked for the other is refused.
    apns_environment: lanyard_apple::apns::ApnsEnvironment,
}

impl Lanyard {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            pusher: None,
            apns_environment: lanyard_apple::apns::ApnsEnvironment::Production,
        }
    }

    /// The same services for a deployment that pushes to this APNs service (see
    /// [`pushcert::environment_of_url`]).
    pub fn with_apns_environment(mut self, env: lanyard_apple::apns::ApnsEnvironment) -> Self {
        self.apns_environment = env;
        self
    }

    /// The same services, waking devices through `pusher` after commands are queued.
    pub fn with_pusher(mut self, pusher: Arc<dyn commands::PushRequester>) -> Self {
        self.pusher = Some(pusher);
        self
    }

    /// Asks the push requester (if any) to wake these enrollments.
    pub(crate) fn request_push(&self, enrollment_ids: Vec<String>) {
        if let Some(p) = &self.pusher {
            p.request_push(enrollment_ids);
        }
    }

    /// The database backend's name (`sqlite` or `postgres`), for health reports.
    pub fn database_backend(&self) -> &'static str {
        self.store.backend()
    }

    /// One round trip to the database (health checks).
    pub async fn ping_database(&self) -> Result<()> {
        Ok(self.store.ping().await?)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
