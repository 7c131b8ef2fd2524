//! Records as they are stored. Validation and policy live in `lanyard-core`; these are plain rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A person who may enroll a Mac: email is the login and, by default, the managed Apple ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub display_name: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub managed_apple_id: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The fields needed to create a user; `password_hash` is already hashed by the caller.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub display_name: String,
    pub password_hash: Option<String>,
    pub managed_apple_id: Option<String>,
}

/// A change to an existing user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub display_name: Option<String>,
    pub password_hash: Option<String>,
    /// `Some(None)` clears the managed Apple ID.
    pub managed_apple_id: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// A custom attribute definition as stored; `kind` and `choices` are validated by the domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CustomAttributeRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub required: bool,
    /// JSON array of strings (empty unless `kind` is `choice`).
    pub choices: String,
    pub created_at: DateTime<Utc>,
}

/// An administrator of the portal and admin API.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Admin {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub enabled: bool,
    pub failed_logins: i64,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// An API token; only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ApiToken {
    pub id: i64,
    pub admin_id: i64,
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

/// An administrator's signed-in session; only the hash of the session secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AdminSession {
    pub token_hash: String,
    pub admin_id: i64,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One audit log line: who changed what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON object with the change's details (never secrets).
    pub detail: String,
}

/// What a mutating call records in the audit log, in the same transaction as the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

impl Audit {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail,
        }
    }
}

/// Filter for reading the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// A named certificate with its sealed private key (e.g. the CA), shared by all server processes.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PkiMaterial {
    pub name: String,
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
}
