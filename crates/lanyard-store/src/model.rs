//! Records as they are stored. Validation and policy live in `lanyard-core`; these are plain rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::values::{
    Channel, CommandState, CommandUuid, EnrollmentId, EnrollmentMode, EnrollmentStatus, Ownership,
    Role,
};

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
