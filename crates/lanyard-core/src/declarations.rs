//! Declarative device management (DDM): declarations, the sets they are grouped in, whom the
//! sets are assigned to, and the protocol a Mac speaks on the check-in endpoint.
//!
//! Apple's sources: the declarations' schema (`../shared/apple-schema/declarative/declarations`,
//! checked by `lanyard_proto::declaration`), the protocol documents
//! (`../shared/apple-schema/declarative/protocol/tokensresponse.yaml`,
//! `declarationitemsresponse.yaml`, `statusreport.yaml`), the check-in message
//! (`../shared/apple-schema/mdm/checkin/declarativemanagement.yaml`) and the command
//! (`../shared/apple-schema/mdm/commands/declarativemanagement.yaml`).
//!
//! - A declaration is stored with its `Type`, `Identifier`, `Payload` and a `ServerToken` that
//!   is the digest of its content, so the token changes whenever the content does
//!   (declarationitemsresponse.yaml: "Servers must compute the token over the entire
//!   declaration content").
//! - Declarations are grouped in sets; a set is assigned to a person (every Mac they enroll),
//!   to every User Enrollment Mac, or to one enrollment. A type macOS does not allow in User
//!   Enrollment (its `allowed-enrollments` lacks `user`) is refused when it would reach a Mac,
//!   with the schema's reason, and nothing changes.
//! - What an enrollment should have ([`resolve`]): the declarations of the sets assigned to it,
//!   the assets they reference, the default status subscriptions, and an activation for each
//!   configuration no administrator's activation names.
//! - **When.** A Mac is told to synchronise (the `DeclarativeManagement` command, then a push)
//!   when what it should hold changes, and at its first user-channel `TokenUpdate` ([`start`]):
//!   every User Enrollment Mac then, so it reports its status items from the start; a Mac
//!   enrolled another way only when a set reaches it.
//! - **Channel.** On macOS a User Enrollment's account configurations are user-scoped only
//!   (e.g. `account.exchange.yaml`: `allowed-scopes: [user]`), and every type a macOS User
//!   Enrollment may receive allows the user scope, so Lanyard manages a Mac's declarations on
//!   its **user channel**: the `DeclarativeManagement` command goes there, and the device
//!   channel's declarative synchronisation is answered with nothing to hold.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use lanyard_pki::SecretBox;
use lanyard_proto::declaration as schema;
/// A declaration's kind, as stored (closed set).
pub use lanyard_store::DeclarationKind;
use lanyard_store::{
    AssignmentTarget, Audit, Channel, DeclarationChange, DeclarationRow, DeclarationStatusCount,
    DeclarationStatusRecord, DeclarationValidity, Enrollment, EnrollmentId, EnrollmentMode,
    NewDeclaration, StatusReportRecord,
};

use crate::commands::{CommandChannel, CommandSpec, CommandTarget};
use crate::{Actor, CoreError, Lanyard, Result};

/// Longest declaration `Identifier`: Apple's declarationbase.yaml ("should not exceed 64
/// octets").
pub const IDENTIFIER_LIMIT: usize = schema::MAX_IDENTIFIER_BYTES;
/// Largest `Payload` (as JSON) an administrator may store.
pub const PAYLOAD_LIMIT: usize = schema::MAX_PAYLOAD_BYTES;
/// Largest asset data Lanyard serves.
pub const ASSET_DATA_LIMIT: usize = 256 * 1024;
/// Largest value kept for one status item; a larger one is kept as a note of its size.
pub const STATUS_ITEM_VALUE_LIMIT: usize = 64 * 1024;
/// Largest `reasons` kept for one declaration's state; larger ones are kept as a note.
pub const STATUS_REASONS_LIMIT: usize = 8 * 1024;
/// Deepest nesting of `StatusItems` read from a status report.
const STATUS_DEPTH_LIMIT: usize = 8;

/// Identifiers beginning with this are Lanyard's own (generated) declarations.
pub const GENERATED_PREFIX: &str = "org.lanyard.";
/// The default status subscriptions every User Enrollment Mac gets.
pub const STATUS_SUBSCRIPTIONS_IDENTIFIER: &str = "org.lanyard.status-subscriptions";
/// The identifiers of the activations Lanyard writes begin with this.
pub const GENERATED_ACTIVATION_PREFIX: &str = "org.lanyard.activation.";

/// The activation Lanyard writes for a configuration no administrator's activation names: one
/// per configuration, so a configuration a Mac fails to apply does not hold back the others (a
/// failed activation fails its configurations, declarationbase.yaml `Error.ActivationFailed`).
/// Its identifier stays within Apple's 64 octets: the prefix and a digest of the
/// configuration's identifier.
pub fn generated_activation_identifier(configuration: &str) -> String {
    let digest = hex::encode(Sha256::digest(configuration.as_bytes()));
    format!("{GENERATED_ACTIVATION_PREFIX}{}", &digest[..32])
}

const STATUS_SUBSCRIPTIONS_TYPE: &str = "com.apple.configuration.management.status-subscriptions";
const SIMPLE_ACTIVATION_TYPE: &str = "com.apple.activation.simple";

/// The status items a User Enrollment Mac is subscribed to by default: OS version and build,
/// model family, its declarations' state and its client capabilities — each allowed for a
/// macOS User Enrollment in the user scope (`../shared/apple-schema/declarative/status/*.yaml`).
/// Passcode compliance (`passcode.is-compliant`) is not among them: the schema marks it
/// `introduced: n/a` on macOS.
pub const DEFAULT_STATUS_ITEMS: &[&str] = &[
    "device.operating-system.version",
    "device.operating-system.build-version",
    "device.model.family",
    "management.declarations",
    "management.client-capabilities",
];

/// The status item carrying the declarations' state
/// (`../shared/apple-schema/declarative/status/management.declarations.yaml`).
const DECLARATIONS_ITEM: &str = "management.declarations";

/// A declaration as an administrator writes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclarationInput {
    /// Apple's `Type`, e.g. `com.apple.configuration.account.exchange`.
    #[serde(rename = "type")]
    pub declaration_type: String,
    /// Apple's `Identifier`: 1 to 64 letters, digits, `.`, `-` or `_`.
    pub identifier: String,
    /// Apple's `Payload` (a JSON object), checked against Apple's schema.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// For an asset: the data Lanyard serves to the Macs it is assigned to; Lanyard fills the
    /// payload's `Reference` (URL, type, size, hash) and `Authentication`.
    #[serde(default)]
    pub asset_data: Option<AssetData>,
}

/// A declaration's new content (its type and identifier stay).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclarationUpdate {
    #[schema(value_type = Object)]
    pub payload: Value,
    /// New asset data; an asset that has data keeps it when this is absent.
    #[serde(default)]
    pub asset_data: Option<AssetData>,
}

/// An asset's data.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetData {
    /// The media type it is served with, e.g. `application/pem`.
    pub content_type: String,
    /// The data, base64 in JSON.
    #[schema(value_type = String, format = Byte)]
    #[serde(with = "crate::b64")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for AssetData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetData")
            .field("content_type", &self.content_type)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// A declaration for the API, portal and CLI. Asset data is never shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeclarationView {
    pub identifier: String,
    #[serde(rename = "type")]
    pub declaration_type: String,
    pub kind: DeclarationKind,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub server_token: String,
    /// Whether Lanyard serves data for this asset.
    pub has_asset_data: bool,
    pub asset_content_type: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DeclarationView {
    fn from_row(row: &DeclarationRow) -> Result<Self> {
        Ok(Self {
            identifier: row.identifier.clone(),
            declaration_type: row.declaration_type.clone(),
            kind: row.kind,
            payload: stored_payload(row)?,
            server_token: row.server_token.clone(),
            has_asset_data: row.asset_data_sealed.is_some(),
            asset_content_type: row.asset_content_type.clone(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Whom a set is assigned to, as an administrator names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AssignTo {
    /// A person, by email: every Mac they enroll.
    User { email: String },
    /// Every User Enrollment Mac.
    AllUserEnrollments,
    /// One enrollment, by id.
    Enrollment { id: String },
}

/// A set with its members and assignments.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SetView {
    pub name: String,
    pub description: String,
    /// Member declarations' identifiers.
    pub members: Vec<String>,
    pub assignments: Vec<AssignTo>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One declaration's state on one Mac.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeclarationStateView {
    pub identifier: String,
    pub server_token: String,
    /// Whether the Mac holds the declaration's current content.
    pub current: bool,
    pub active: bool,
    pub valid: DeclarationValidity,
    #[schema(value_type = Object)]
    pub reasons: Value,
    pub updated_at: DateTime<Utc>,
}

/// One status item's latest value on one Mac.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusItemView {
    pub name: String,
    #[schema(value_type = Object)]
    pub value: Value,
    pub updated_at: DateTime<Utc>,
}

/// What a Mac reported: its declarations' state (of those it should have) and status items.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnrollmentDeclarativeStatus {
    pub declarations: Vec<DeclarationStateView>,
    pub status_items: Vec<StatusItemView>,
}

/// A declaration as a Mac receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub identifier: String,
    pub declaration_type: String,
    pub kind: DeclarationKind,
    pub server_token: String,
    pub payload: Value,
    asset_data_sealed: Option<Vec<u8>>,
    asset_content_type: Option<String>,
    updated_at: Option<DateTime<Utc>>,
}

impl Served {
    /// The declaration document (declarationbase.yaml: `Type`, `Identifier`, `ServerToken`,
    /// `Payload`).
    pub fn document(&self) -> Value {
        schema::Declaration {
            declaration_type: self.declaration_type.clone(),
            identifier: self.identifier.clone(),
            server_token: self.server_token.clone(),
            payload: self.payload.clone(),
        }
        .to_json()
    }
}

fn store_kind(k: schema::DeclarationKind) -> DeclarationKind {
    match k {
        schema::DeclarationKind::Configuration => DeclarationKind::Configuration,
        schema::DeclarationKind::Asset => DeclarationKind::Asset,
        schema::DeclarationKind::Activation => DeclarationKind::Activation,
        schema::DeclarationKind::Management => DeclarationKind::Management,
    }
}

/// The name a Mac uses for a kind in `declaration/<kind>/<identifier>`.
fn endpoint_kind(k: DeclarationKind) -> &'static str {
    k.as_str()
}

fn invalid(e: schema::DeclarationError) -> CoreError {
    CoreError::Invalid(e.to_string())
}

/// JSON text with object keys sorted, whatever serde_json's map order: the one input of every
/// digest here.
fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, &Value> = m.iter().collect();
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// A declaration's `ServerToken`: the SHA-256 (hex, 64 octets as Apple's limit allows) of its
/// type, identifier and payload.
pub fn server_token(declaration_type: &str, identifier: &str, payload: &Value) -> String {
    let mut h = Sha256::new();
    h.update(declaration_type.as_bytes());
    h.update([0]);
    h.update(identifier.as_bytes());
    h.update([0]);
    h.update(canonical(payload).as_bytes());
    hex::encode(h.finalize())
}

fn check_identifier(identifier: &str) -> Result<()> {
    let ok = !identifier.is_empty()
        && identifier.len() <= IDENTIFIER_LIMIT
        && identifier
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        return Err(CoreError::Invalid(format!(
            "Identifier: 1 to {IDENTIFIER_LIMIT} letters, digits, '.', '-' or '_'"
        )));
    }
    if identifier.starts_with(GENERATED_PREFIX) {
        return Err(CoreError::Invalid(format!(
            "Identifier: identifiers beginning with {GENERATED_PREFIX} are Lanyard's own"
        )));
    }
    Ok(())
}

fn check_set_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        return Err(CoreError::Invalid(
            "set names are 1 to 64 letters, digits, '.', '-' or '_'".into(),
        ));
    }
    Ok(())
}

/// The description trimmed, or why it is refused.
fn check_set_description(description: &str) -> Result<&str> {
    let description = description.trim();
    if description.len() > 1000 {
        return Err(CoreError::Invalid(
            "descriptions are at most 1000 characters".into(),
        ));
    }
    Ok(description)
}

fn stored_payload(row: &DeclarationRow) -> Result<Value> {
    serde_json::from_str(&row.payload)
        .map_err(|e| CoreError::failed(format!("reading declaration {}", row.identifier), e))
}

fn seal_context(identifier: &str) -> Vec<u8> {
    format!("lanyard:declaration-asset:{identifier}").into_bytes()
}

/// Refuses a type a macOS User Enrollment may not receive, with the schema's reason.
fn check_user_enrollment(identifier: &str, declaration_type: &str) -> Result<()> {
    schema::user_enrollment_macos(declaration_type).map_err(|e| {
        CoreError::Invalid(format!(
            "{identifier} ({declaration_type}) cannot go to User Enrollment Macs: {e}"
        ))
    })
}

/// Administration of declarations and sets. Cheap to clone.
#[derive(Clone)]
pub struct DeclarationService {
    lanyard: Lanyard,
    secrets: SecretBox,
    urls: crate::enrollment::DeviceUrls,
}

impl DeclarationService {
    /// `public_base` is the URL Macs reach the server at (asset data is served under it).
    pub fn new(lanyard: Lanyard, secrets: SecretBox, public_base: &str) -> Self {
        Self {
            lanyard,
            secrets,
            urls: crate::enrollment::DeviceUrls::new(public_base),
        }
    }

    /// Checks a declaration and makes its stored form: the schema, the asset references (each
    /// an existing asset of an allowed type), an activation's configurations, and an asset's
    /// data (sealed; `Reference` and `Authentication` filled in).
    async fn prepare(
        &self,
        declaration_type: &str,
        identifier: &str,
        mut payload: Value,
        asset: Option<(Vec<u8>, String)>,
    ) -> Result<(
        DeclarationKind,
        String,
        String,
        Option<Vec<u8>>,
        Option<String>,
    )> {
        let kind = schema::kind_of(declaration_type)
            .map(store_kind)
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "Type: {declaration_type} is not a declaration type in Apple's schema"
                ))
            })?;
        if !payload.is_object() {
            return Err(CoreError::Invalid("Payload: must be a JSON object".into()));
        }
        let mut sealed = None;
        let mut content_type = None;
        if let Some((data, ct)) = asset {
            if kind != DeclarationKind::Asset {
                return Err(CoreError::Invalid(
                    "asset_data: only assets carry data".into(),
                ));
            }
            if data.is_empty() || data.len() > ASSET_DATA_LIMIT {
                return Err(CoreError::Invalid(format!(
                    "asset_data: 1 byte to {} KiB",
                    ASSET_DATA_LIMIT / 1024
                )));
            }
            let ct = ct.trim().to_string();
            if ct.is_empty() || ct.len() > 200 || !ct.is_ascii() || ct.contains(['\r', '\n']) {
                return Err(CoreError::Invalid(
                    "asset_data.content_type: a media type such as application/pem".into(),
                ));
            }
            // Apple (e.g. assets/credential.certificate.yaml): `Reference` with `DataURL`
            // (https), `ContentType`, `Size`, `Hash-SHA-256`; `Authentication` `Type` `MDM`
            // makes the Mac fetch the data with its MDM identity, "equivalent to an MDM
            // request made to the CheckInURL or ServerURL".
            if let Some(obj) = payload.as_object_mut() {
                obj.insert(
                    "Reference".into(),
                    json!({
                        "DataURL": self.urls.asset(identifier),
                        "ContentType": ct,
                        "Size": data.len(),
                        "Hash-SHA-256": hex::encode(Sha256::digest(&data)),
                    }),
                );
                obj.insert("Authentication".into(), json!({"Type": "MDM"}));
            }
            sealed = Some(self.secrets.seal(&data, &seal_context(identifier))?);
            content_type = Some(ct);
        }
        schema::validate_payload(declaration_type, &payload).map_err(invalid)?;
        let text = serde_json::to_string(&payload)
            .map_err(|e| CoreError::failed("encoding a declaration", e))?;
        if text.len() > PAYLOAD_LIMIT {
            return Err(CoreError::Invalid(format!(
                "Payload: larger than {} KiB",
                PAYLOAD_LIMIT / 1024
            )));
        }
        let store = self.lanyard.store();
        for r in schema::asset_references(declaration_type, &payload) {
            let found = store.declaration(&r.identifier).await?;
            match found {
                Some(a)
                    if a.kind == DeclarationKind::Asset
                        && (r.allowed_types.is_empty()
                            || r.allowed_types.contains(&a.declaration_type.as_str())) => {}
                Some(a) => {
                    return Err(CoreError::Invalid(format!(
                        "{}: {} is a {}, not one of {}",
                        r.key,
                        r.identifier,
                        a.declaration_type,
                        r.allowed_types.join(", ")
                    )))
                }
                None => {
                    return Err(CoreError::Invalid(format!(
                        "{}: no asset {} exists",
                        r.key, r.identifier
                    )))
                }
            }
        }
        if kind == DeclarationKind::Activation {
            for c in activation_configurations(&payload) {
                match store.declaration(&c).await? {
                    Some(d) if d.kind == DeclarationKind::Configuration => {}
                    _ => {
                        return Err(CoreError::Invalid(format!(
                            "Payload.StandardConfigurations: no configuration {c} exists"
                        )))
                    }
                }
            }
        }
        let token = server_token(declaration_type, identifier, &payload);
        Ok((kind, text, token, sealed, content_type))
    }

    /// Creates a declaration (not yet in any set).
    pub async fn create(&self, actor: &Actor, input: DeclarationInput) -> Result<DeclarationView> {
        actor.require_write()?;
        let id = input.identifier.trim().to_string();
        check_identifier(&id)?;
        let t = input.declaration_type.trim().to_string();
        let asset = input.asset_data.map(|a| (a.data, a.content_type));
        let (kind, payload, token, sealed, ct) =
            self.prepare(&t, &id, input.payload, asset).await?;
        let row = self
            .lanyard
            .store()
            .create_declaration(
                &NewDeclaration {
                    identifier: id.clone(),
                    declaration_type: t.clone(),
                    kind,
                    payload,
                    server_token: token.clone(),
                    asset_data_sealed: sealed,
                    asset_content_type: ct,
                },
                &Audit::new(
                    &actor.name,
                    "declaration.create",
                    &id,
                    json!({"type": t, "server_token": token}),
                ),
            )
            .await?;
        DeclarationView::from_row(&row)
    }

    /// Replaces a declaration's content; the Macs it reaches are told to synchronise.
    pub async fn update(
        &self,
        actor: &Actor,
        identifier: &str,
        update: DeclarationUpdate,
    ) -> Result<DeclarationView> {
        actor.require_write()?;
        let store = self.lanyard.store();
        let old = self.stored(identifier).await?;
        let asset = match update.asset_data {
            Some(a) => Some((a.data, a.content_type)),
            None => match (&old.asset_data_sealed, &old.asset_content_type) {
                (Some(sealed), Some(ct)) => Some((
                    self.secrets.open(sealed, &seal_context(identifier))?,
                    ct.clone(),
                )),
                _ => None,
            },
        };
        let (_, payload, token, sealed, ct) = self
            .prepare(&old.declaration_type, identifier, update.payload, asset)
            .await?;
        if token == old.server_token {
            return DeclarationView::from_row(&old);
        }
        let row = store
            .update_declaration(
                identifier,
                &DeclarationChange {
                    payload,
                    server_token: token.clone(),
                    asset_data_sealed: sealed,
                    asset_content_type: ct,
                },
                &Audit::new(
                    &actor.name,
                    "declaration.update",
                    identifier,
                    json!({"old_server_token": old.server_token, "server_token": token}),
                ),
            )
            .await?;
        let affected = self.enrollments_reached_by(identifier).await?;
        self.synchronise(actor, affected).await;
        DeclarationView::from_row(&row)
    }

    /// Deletes a declaration that nothing references; the Macs it reached are told to
    /// synchronise.
    pub async fn delete(&self, actor: &Actor, identifier: &str) -> Result<()> {
        actor.require_write()?;
        let store = self.lanyard.store();
        let all = store.list_declarations().await?;
        for d in &all {
            let payload = stored_payload(d)?;
            let refs = schema::asset_references(&d.declaration_type, &payload)
                .into_iter()
                .map(|r| r.identifier)
                .chain(activation_configurations(&payload));
            if d.identifier != identifier && refs.into_iter().any(|r| r == identifier) {
                return Err(CoreError::Conflict(format!(
                    "{} references {identifier}; change or delete it first",
                    d.identifier
                )));
            }
        }
        let affected = self.enrollments_reached_by(identifier).await?;
        store
            .delete_declaration(
                identifier,
                &Audit::new(&actor.name, "declaration.delete", identifier, json!({})),
            )
            .await?;
        self.synchronise(actor, affected).await;
        Ok(())
    }

    pub async fn get(&self, identifier: &str) -> Result<DeclarationView> {
        DeclarationView::from_row(&self.stored(identifier).await?)
    }

    /// The stored declaration, or `NotFound`.
    async fn stored(&self, identifier: &str) -> Result<DeclarationRow> {
        self.lanyard
            .store()
            .declaration(identifier)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("declaration {identifier}")))
    }

    pub async fn list(&self) -> Result<Vec<DeclarationView>> {
        self.lanyard
            .store()
            .list_declarations()
            .await?
            .iter()
            .map(DeclarationView::from_row)
            .collect()
    }

    /// Per declaration: how many Macs report it active and how many report it invalid.
    pub async fn status_counts(&self) -> Result<Vec<DeclarationStatusCount>> {
        Ok(self.lanyard.store().declaration_status_counts().await?)
    }

    pub async fn create_set(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
    ) -> Result<SetView> {
        actor.require_write()?;
        let name = name.trim();
        check_set_name(name)?;
        let description = check_set_description(description)?;
        self.lanyard
            .store()
            .create_declaration_set(
                name,
                description,
                &Audit::new(&actor.name, "declaration_set.create", name, json!({})),
            )
            .await?;
        self.set(name).await
    }

    pub async fn update_set(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
    ) -> Result<SetView> {
        actor.require_write()?;
        let description = check_set_description(description)?;
        self.lanyard
            .store()
            .update_declaration_set(
                name,
                description,
                &Audit::new(&actor.name, "declaration_set.update", name, json!({})),
            )
            .await?;
        self.set(name).await
    }

    /// Deletes a set with its assignments; the Macs it reached are told to synchronise.
    pub async fn delete_set(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require_write()?;
        let store = self.lanyard.store();
        let affected = store.enrollments_for_set(name).await?;
        store
            .delete_declaration_set(
                name,
                &Audit::new(&actor.name, "declaration_set.delete", name, json!({})),
            )
            .await?;
        self.synchronise(actor, affected).await;
        Ok(())
    }

    pub async fn set(&self, name: &str) -> Result<SetView> {
        let store = self.lanyard.store();
        let row = store
            .declaration_set(name)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("declaration set {name}")))?;
        let members = store
            .set_members(name)
            .await?
            .into_iter()
            .map(|d| d.identifier)
            .collect();
        let mut assignments = Vec::new();
        for a in store.set_assignments(Some(name)).await? {
            assignments.push(self.assign_to_of(&a.target).await?);
        }
        Ok(SetView {
            name: row.name,
            description: row.description,
            members,
            assignments,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    pub async fn list_sets(&self) -> Result<Vec<SetView>> {
        let mut out = Vec::new();
        for s in self.lanyard.store().list_declaration_sets().await? {
            out.push(self.set(&s.name).await?);
        }
        Ok(out)
    }

    async fn assign_to_of(&self, t: &AssignmentTarget) -> Result<AssignTo> {
        Ok(match t {
            AssignmentTarget::User(id) => AssignTo::User {
                email: self
                    .lanyard
                    .store()
                    .user_by_id(*id)
                    .await?
                    .map(|u| u.email)
                    .unwrap_or_else(|| format!("user {id}")),
            },
            AssignmentTarget::AllUserEnrollments => AssignTo::AllUserEnrollments,
            AssignmentTarget::Enrollment(e) => AssignTo::Enrollment { id: e.0.clone() },
        })
    }

    async fn target_of(&self, to: &AssignTo) -> Result<AssignmentTarget> {
        Ok(match to {
            AssignTo::User { email } => {
                let email = email.trim().to_lowercase();
                let u = self
                    .lanyard
                    .store()
                    .user_by_email(&email)
                    .await?
                    .ok_or_else(|| CoreError::NotFound(format!("user {email}")))?;
                AssignmentTarget::User(u.id)
            }
            AssignTo::AllUserEnrollments => AssignmentTarget::AllUserEnrollments,
            AssignTo::Enrollment { id } => {
                AssignmentTarget::Enrollment(EnrollmentId(id.trim().into()))
            }
        })
    }

    /// Adds a declaration to a set. When the set is assigned (every Mac Lanyard manages is a
    /// User Enrollment), a type User Enrollment forbids is refused with the schema's reason.
    pub async fn add_to_set(&self, actor: &Actor, set: &str, identifier: &str) -> Result<SetView> {
        actor.require_write()?;
        let store = self.lanyard.store();
        let d = self.stored(identifier).await?;
        if !store.set_assignments(Some(set)).await?.is_empty() {
            check_user_enrollment(identifier, &d.declaration_type)?;
        }
        store
            .add_set_member(
                set,
                identifier,
                &Audit::new(
                    &actor.name,
                    "declaration_set.add",
                    set,
                    json!({"declaration": identifier}),
                ),
            )
            .await?;
        let affected = store.enrollments_for_set(set).await?;
        self.synchronise(actor, affected).await;
        self.set(set).await
    }

    pub async fn remove_from_set(
        &self,
        actor: &Actor,
        set: &str,
        identifier: &str,
    ) -> Result<SetView> {
        actor.require_write()?;
        let store = self.lanyard.store();
        let affected = store.enrollments_for_set(set).await?;
        store
            .remove_set_member(
                set,
                identifier,
                &Audit::new(
                    &actor.name,
                    "declaration_set.remove",
                    set,
                    json!({"declaration": identifier}),
                ),
            )
            .await?;
        self.synchronise(actor, affected).await;
        self.set(set).await
    }

    /// Assigns a set. Every target is a User Enrollment Mac (or will be), so a member whose
    /// type User Enrollment forbids is refused with the schema's reason and nothing changes.
    pub async fn assign(&self, actor: &Actor, set: &str, to: &AssignTo) -> Result<SetView> {
        actor.require_write()?;
        let store = self.lanyard.store();
        let target = self.target_of(to).await?;
        if store.declaration_set(set).await?.is_none() {
            return Err(CoreError::NotFound(format!("declaration set {set}")));
        }
        for d in store.set_members(set).await? {
            check_user_enrollment(&d.identifier, &d.declaration_type)?;
        }
        store
            .assign_set(
                set,
                &target,
                &Audit::new(
                    &actor.name,
                    "declaration_set.assign",
                    set,
                    json!({"to": target.key()}),
                ),
            )
            .await?;
        let affected = store.enrollments_for_set(set).await?;
        self.synchronise(actor, affected).await;
        self.set(set).await
    }

    pub async fn unassign(&self, actor: &Actor, set: &str, to: &AssignTo) -> Result<SetView> {
        actor.require_write()?;
        let store = self.lanyard.store();
        let target = self.target_of(to).await?;
        let affected = store.enrollments_for_set(set).await?;
        store
            .unassign_set(
                set,
                &target,
                &Audit::new(
                    &actor.name,
                    "declaration_set.unassign",
                    set,
                    json!({"to": target.key()}),
                ),
            )
            .await?;
        self.synchronise(actor, affected).await;
        self.set(set).await
    }

    /// What an enrollment's Mac reported, for the declarations it should have now.
    pub async fn enrollment_status(
        &self,
        enrollment_id: &str,
    ) -> Result<EnrollmentDeclarativeStatus> {
        let store = self.lanyard.store();
        let enrollment = store
            .enrollment(enrollment_id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("enrollment {enrollment_id}")))?;
        let should: HashMap<String, String> = resolve(&self.lanyard, &enrollment, Channel::User)
            .await?
            .into_iter()
            .map(|s| (s.identifier, s.server_token))
            .collect();
        let declarations = store
            .declaration_statuses(enrollment_id)
            .await?
            .into_iter()
            .filter_map(|d| {
                let token = should.get(&d.identifier)?;
                Some(DeclarationStateView {
                    current: *token == d.server_token,
                    reasons: serde_json::from_str(&d.reasons).unwrap_or(Value::Null),
                    identifier: d.identifier,
                    server_token: d.server_token,
                    active: d.active,
                    valid: d.valid,
                    updated_at: d.updated_at,
                })
            })
            .collect();
        let status_items = store
            .status_items(enrollment_id)
            .await?
            .into_iter()
            .map(|i| StatusItemView {
                value: serde_json::from_str(&i.value).unwrap_or(Value::Null),
                name: i.name,
                updated_at: i.updated_at,
            })
            .collect();
        Ok(EnrollmentDeclarativeStatus {
            declarations,
            status_items,
        })
    }

    /// The enrollments whose declarations include this one: through its sets, and through
    /// the sets of the declarations referencing it (an asset reaches a Mac through its
    /// configuration).
    async fn enrollments_reached_by(&self, identifier: &str) -> Result<Vec<Enrollment>> {
        let store = self.lanyard.store();
        let mut via: BTreeSet<String> = BTreeSet::from([identifier.to_string()]);
        for d in store.list_declarations().await? {
            let payload = stored_payload(&d)?;
            if schema::asset_references(&d.declaration_type, &payload)
                .iter()
                .any(|r| r.identifier == identifier)
            {
                via.insert(d.identifier);
            }
        }
        let mut sets = BTreeSet::new();
        for d in &via {
            for s in store.sets_of_declaration(d).await? {
                sets.insert(s.name);
            }
        }
        let mut out: BTreeMap<String, Enrollment> = BTreeMap::new();
        for s in sets {
            for e in store.enrollments_for_set(&s).await? {
                out.insert(e.id.0.clone(), e);
            }
        }
        Ok(out.into_values().collect())
    }

    /// Tells these Macs to synchronise (see [`synchronise`]); a failure is logged, the change
    /// itself is already made.
    async fn synchronise(&self, actor: &Actor, enrollments: Vec<Enrollment>) {
        if let Err(e) = synchronise(&self.lanyard, actor, &enrollments).await {
            tracing::warn!(error = %e.chain(), "declarations changed, but the Macs could not be told yet; they synchronise at their next check");
        }
    }
}

/// The configurations an activation names (`activations/simple.yaml`:
/// `StandardConfigurations`).
fn activation_configurations(payload: &Value) -> Vec<String> {
    payload
        .get("StandardConfigurations")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn generated(
    declaration_type: &str,
    identifier: &str,
    kind: DeclarationKind,
    payload: Value,
) -> Served {
    Served {
        server_token: server_token(declaration_type, identifier, &payload),
        identifier: identifier.into(),
        declaration_type: declaration_type.into(),
        kind,
        payload,
        asset_data_sealed: None,
        asset_content_type: None,
        updated_at: None,
    }
}

fn served_of(row: DeclarationRow) -> Result<Served> {
    Ok(Served {
        payload: stored_payload(&row)?,
        identifier: row.identifier,
        declaration_type: row.declaration_type,
        kind: row.kind,
        server_token: row.server_token,
        asset_data_sealed: row.asset_data_sealed,
        asset_content_type: row.asset_content_type,
        updated_at: Some(row.updated_at),
    })
}

/// What this enrollment's Mac should hold on `channel`, by identifier: the declarations of the
/// sets assigned to it, the assets they reference, Lanyard's default status subscriptions, and
/// an activation of each configuration no administrator's activation names. On the device
/// channel: nothing (see the module documentation).
pub async fn resolve(
    lanyard: &Lanyard,
    enrollment: &Enrollment,
    channel: Channel,
) -> Result<Vec<Served>> {
    if channel == Channel::Device {
        return Ok(Vec::new());
    }
    let store = lanyard.store();
    let mut out: BTreeMap<String, Served> = BTreeMap::new();
    for row in store.declarations_for_enrollment(&enrollment.id).await? {
        let s = served_of(row)?;
        out.insert(s.identifier.clone(), s);
    }
    let referenced: BTreeSet<String> = out
        .values()
        .flat_map(|s| schema::asset_references(&s.declaration_type, &s.payload))
        .map(|r| r.identifier)
        .filter(|id| !out.contains_key(id))
        .collect();
    for id in referenced {
        if let Some(row) = store.declaration(&id).await? {
            if row.kind == DeclarationKind::Asset {
                out.insert(id, served_of(row)?);
            }
        }
    }
    let subscriptions = generated(
        STATUS_SUBSCRIPTIONS_TYPE,
        STATUS_SUBSCRIPTIONS_IDENTIFIER,
        DeclarationKind::Configuration,
        schema::status_subscriptions_payload(DEFAULT_STATUS_ITEMS),
    );
    out.insert(subscriptions.identifier.clone(), subscriptions);
    let activated: BTreeSet<String> = out
        .values()
        .filter(|s| s.kind == DeclarationKind::Activation)
        .flat_map(|s| activation_configurations(&s.payload))
        .collect();
    let unactivated: Vec<String> = out
        .values()
        .filter(|s| s.kind == DeclarationKind::Configuration && !activated.contains(&s.identifier))
        .map(|s| s.identifier.clone())
        .collect();
    for configuration in unactivated {
        let activation = generated(
            SIMPLE_ACTIVATION_TYPE,
            &generated_activation_identifier(&configuration),
            DeclarationKind::Activation,
            schema::simple_activation_payload(&[configuration]),
        );
        out.insert(activation.identifier.clone(), activation);
    }
    Ok(out.into_values().collect())
}

/// The `DeclarationsToken` of a resolved set: the SHA-256 of every identifier with its
/// `ServerToken`, so it changes whenever any declaration is added, removed or changed.
pub fn declarations_token(served: &[Served]) -> String {
    let mut h = Sha256::new();
    for s in served {
        h.update(s.identifier.as_bytes());
        h.update([0]);
        h.update(s.server_token.as_bytes());
        h.update([b'\n']);
    }
    hex::encode(h.finalize())
}

/// The tokens response (`protocol/tokensresponse.yaml`: `SyncTokens`, Apple's
/// SynchronizationTokens with `DeclarationsToken` and `Timestamp`, the time of the latest
/// change to what the Mac should hold).
pub fn tokens_document(enrollment: &Enrollment, served: &[Served]) -> Value {
    let latest = served
        .iter()
        .filter_map(|s| s.updated_at)
        .max()
        .unwrap_or(enrollment.created_at);
    json!({
        "SyncTokens": {
            "DeclarationsToken": declarations_token(served),
            "Timestamp": latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    })
}

/// The manifest (`protocol/declarationitemsresponse.yaml`): every declaration's `Identifier`
/// and `ServerToken` by kind, and the `DeclarationsToken`.
pub fn items_document(served: &[Served]) -> Value {
    let list = |k: DeclarationKind| {
        served
            .iter()
            .filter(|s| s.kind == k)
            .map(|s| json!({"Identifier": s.identifier, "ServerToken": s.server_token}))
            .collect::<Vec<_>>()
    };
    json!({
        "Declarations": {
            "Activations": list(DeclarationKind::Activation),
            "Configurations": list(DeclarationKind::Configuration),
            "Assets": list(DeclarationKind::Asset),
            "Management": list(DeclarationKind::Management),
        },
        "DeclarationsToken": declarations_token(served),
    })
}

/// Tells Macs to synchronise: queues the `DeclarativeManagement` command, whose `Data` is the
/// tokens response (`mdm/commands/declarativemanagement.yaml`), on each one's user channel and
/// asks for a push. Macs whose tokens are the same share one command. Macs without a user
/// channel yet are skipped: their first user `TokenUpdate` starts their synchronisation
/// ([`start`]).
pub async fn synchronise(
    lanyard: &Lanyard,
    actor: &Actor,
    enrollments: &[Enrollment],
) -> Result<u64> {
    let mut by_data: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    for e in enrollments.iter().filter(|e| e.user_channel_id.is_some()) {
        let served = resolve(lanyard, e, Channel::User).await?;
        let data = serde_json::to_vec(&tokens_document(e, &served))
            .map_err(|err| CoreError::failed("encoding the sync tokens", err))?;
        by_data.entry(data).or_default().push(e.id.0.clone());
    }
    let mut n = 0;
    for (data, ids) in by_data {
        let queued = lanyard
            .enqueue_command_on(
                actor,
                &CommandTarget::Enrollments(ids),
                CommandChannel::User,
                &CommandSpec::DeclarativeManagement { data },
                true,
            )
            .await?;
        n += queued.targets;
    }
    Ok(n)
}

/// Starts declarative management for a User Enrollment Mac whose user channel just checked in:
/// the `DeclarativeManagement` command is queued and pushed, so from its first synchronisation
/// on the Mac holds Lanyard's default status subscriptions ([`DEFAULT_STATUS_ITEMS`]) and
/// whatever sets reach it. Apple's `DeclarativeManagement` command
/// (`../shared/apple-schema/mdm/commands/declarativemanagement.yaml`) is allowed in User
/// Enrollment on macOS, on the user channel. A Mac enrolled another way is
/// put under declarative management only when a set reaches it (the assignment then tells it
/// to synchronise).
pub async fn start(lanyard: &Lanyard, enrollment: Enrollment) -> Result<u64> {
    if enrollment.mode != EnrollmentMode::UserEnrollment
        && lanyard
            .store()
            .declarations_for_enrollment(&enrollment.id)
            .await?
            .is_empty()
    {
        return Ok(0);
    }
    synchronise(lanyard, &Actor::system(), &[enrollment]).await
}

/// One request on the check-in endpoint's `DeclarativeManagement` message, answered from what
/// the enrollment should hold on that channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclarativeRequest<'a> {
    Tokens,
    DeclarationItems,
    /// `declaration/<kind>/<identifier>`.
    Declaration {
        kind: &'a str,
        identifier: &'a str,
    },
    Status(&'a [u8]),
}

impl<'a> DeclarativeRequest<'a> {
    /// Reads an `Endpoint` (and the `Data` a status report carries).
    pub fn parse(endpoint: &'a str, data: Option<&'a [u8]>) -> Result<Self> {
        Ok(match endpoint {
            "tokens" => DeclarativeRequest::Tokens,
            "declaration-items" => DeclarativeRequest::DeclarationItems,
            "status" => DeclarativeRequest::Status(
                data.ok_or_else(|| CoreError::Invalid("a status report needs Data".into()))?,
            ),
            other => {
                let (kind, identifier) = other
                    .strip_prefix("declaration/")
                    .and_then(|r| r.split_once('/'))
                    .filter(|(k, i)| !k.is_empty() && !i.is_empty())
                    .ok_or_else(|| {
                        CoreError::Invalid(
                            "DeclarativeManagement Endpoint must be tokens, declaration-items, \
                             status or declaration/<type>/<identifier>"
                                .into(),
                        )
                    })?;
                DeclarativeRequest::Declaration { kind, identifier }
            }
        })
    }
}

/// Answers one declarative request of `enrollment` on `channel`: the JSON body, or `None` for
/// a stored status report (answered empty). A declaration not among what it should hold is
/// `NotFound`; a malformed status report, or one about a declaration it should not hold, is
/// `Invalid` and stores nothing.
pub async fn answer(
    lanyard: &Lanyard,
    enrollment: &Enrollment,
    channel: Channel,
    request: DeclarativeRequest<'_>,
) -> Result<Option<Vec<u8>>> {
    let served = resolve(lanyard, enrollment, channel).await?;
    let body = match request {
        DeclarativeRequest::Tokens => tokens_document(enrollment, &served),
        DeclarativeRequest::DeclarationItems => items_document(&served),
        DeclarativeRequest::Declaration { kind, identifier } => {
            let found = served.iter().find(|s| {
                s.identifier == identifier
                    && (kind == endpoint_kind(s.kind) || kind == s.declaration_type)
            });
            match found {
                Some(s) => s.document(),
                None => {
                    return Err(CoreError::NotFound(format!(
                        "declaration {identifier} for this enrollment"
                    )))
                }
            }
        }
        DeclarativeRequest::Status(data) => {
            let record = read_status_report(data, &served)?;
            lanyard
                .store()
                .record_status_report(&enrollment.id, &record, lanyard_store::now())
                .await?;
            return Ok(None);
        }
    };
    serde_json::to_vec(&body)
        .map(Some)
        .map_err(|e| CoreError::failed("encoding a declarative answer", e))
}

/// An asset's data for this enrollment's Mac (user channel), when the asset is among what it
/// should hold and Lanyard serves its data: `(content type, data)`.
pub async fn asset_data(
    lanyard: &Lanyard,
    secrets: &SecretBox,
    enrollment: &Enrollment,
    identifier: &str,
) -> Result<(String, Vec<u8>)> {
    let served = resolve(lanyard, enrollment, Channel::User).await?;
    let not_found = || CoreError::NotFound(format!("asset {identifier} for this enrollment"));
    let s = served
        .into_iter()
        .find(|s| s.identifier == identifier && s.kind == DeclarationKind::Asset)
        .ok_or_else(not_found)?;
    let (Some(sealed), Some(ct)) = (s.asset_data_sealed, s.asset_content_type) else {
        return Err(not_found());
    };
    Ok((ct, secrets.open(&sealed, &seal_context(identifier))?))
}

/// A JSON value kept within `limit`: as it is, or as a note of its size.
fn bounded(value: &Value, limit: usize) -> String {
    let text = value.to_string();
    if text.len() <= limit {
        text
    } else {
        json!({"omitted": format!("{} bytes, over the {} KiB kept", text.len(), limit / 1024)})
            .to_string()
    }
}

/// Reads a status report (`protocol/statusreport.yaml`): `StatusItems` (a dictionary, its
/// items nested by the dotted name's parts), `Errors` (an array of `StatusItem` and optional
/// `Reasons`), optional `FullReport`. Keeps the items Apple's schema knows (others are
/// ignored, so what is stored stays bounded) and reads `management.declarations` into the
/// declarations' states — each must be one the Mac should hold.
fn read_status_report(data: &[u8], served: &[Served]) -> Result<StatusReportRecord> {
    let bad = |m: String| CoreError::Invalid(format!("status report: {m}"));
    let doc: Value = serde_json::from_slice(data).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    // Keys a later macOS may add (as `FullReport` came with macOS 14) are ignored.
    let items = obj
        .get("StatusItems")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("StatusItems must be a dictionary".into()))?;
    let errors = obj
        .get("Errors")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("Errors must be an array".into()))?;
    for (i, e) in errors.iter().enumerate() {
        let ok = e.get("StatusItem").is_some_and(Value::is_string)
            && e.get("Reasons").is_none_or(Value::is_array);
        if !ok {
            return Err(bad(format!(
                "Errors[{i}] must have a StatusItem string and optional Reasons array"
            )));
        }
    }
    let full = match obj.get("FullReport") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("FullReport must be a boolean".into())),
    };
    let mut found: Vec<(String, &Value)> = Vec::new();
    collect_items(items, "", 0, &mut found)?;
    let mut record = StatusReportRecord::default();
    for (name, value) in found {
        if name == DECLARATIONS_ITEM {
            record.declarations = read_declarations_item(value, served)?;
            // Only a full report that lists the declarations says which ones the Mac holds.
            record.full = full;
        } else {
            record
                .items
                .push((name, bounded(value, STATUS_ITEM_VALUE_LIMIT)));
        }
    }
    Ok(record)
}

fn collect_items<'v>(
    node: &'v Map<String, Value>,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, &'v Value)>,
) -> Result<()> {
    if depth > STATUS_DEPTH_LIMIT {
        return Err(CoreError::Invalid(
            "status report: StatusItems are nested too deeply".into(),
        ));
    }
    for (k, v) in node {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if schema::status_item_known(&name) {
            out.push((name, v));
        } else if let Some(child) = v.as_object() {
            collect_items(child, &name, depth + 1, out)?;
        }
    }
    Ok(())
}

/// `management.declarations`: `activations`, `configurations`, `assets`, `management`, each an
/// array of `identifier`, `server-token`, `active`, `valid` (`unknown`, `invalid`, `valid`) and
/// optional `reasons` (`../shared/apple-schema/declarative/status/management.declarations.yaml`).
fn read_declarations_item(
    value: &Value,
    served: &[Served],
) -> Result<Vec<DeclarationStatusRecord>> {
    let bad =
        |m: String| CoreError::Invalid(format!("status report: management.declarations: {m}"));
    let obj = value
        .as_object()
        .ok_or_else(|| bad("must be a dictionary".into()))?;
    let known: HashMap<&str, &Served> = served.iter().map(|s| (s.identifier.as_str(), s)).collect();
    let mut out = Vec::new();
    for (group, list) in obj {
        if !matches!(
            group.as_str(),
            "activations" | "configurations" | "assets" | "management"
        ) {
            continue; // a kind a later macOS may add
        }
        let list = list
            .as_array()
            .ok_or_else(|| bad(format!("{group} must be an array")))?;
        for (i, d) in list.iter().enumerate() {
            let at = format!("{group}[{i}]");
            let identifier = d
                .get("identifier")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.identifier must be a string")))?;
            let server_token = d
                .get("server-token")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.server-token must be a string")))?;
            let active = d
                .get("active")
                .and_then(Value::as_bool)
                .ok_or_else(|| bad(format!("{at}.active must be a boolean")))?;
            let valid = d
                .get("valid")
                .and_then(Value::as_str)
                .and_then(DeclarationValidity::parse)
                .ok_or_else(|| bad(format!("{at}.valid must be unknown, invalid or valid")))?;
            let reasons = match d.get("reasons") {
                None => Value::Array(Vec::new()),
                Some(r @ Value::Array(_)) => r.clone(),
                Some(_) => return Err(bad(format!("{at}.reasons must be an array"))),
            };
            if !known.contains_key(identifier) {
                return Err(bad(format!(
                    "declaration {identifier} is not assigned to this enrollment"
                )));
            }
            if server_token.len() > 256 {
                return Err(bad(format!("{at}.server-token is too long")));
            }
            out.push(DeclarationStatusRecord {
                identifier: identifier.to_string(),
                server_token: server_token.to_string(),
                active,
                valid,
                reasons: bounded(&reasons, STATUS_REASONS_LIMIT),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_tokens_follow_content_not_key_order() {
        let a = json!({"a": 1, "b": {"c": [1, 2], "d": "x"}});
        let b: Value = serde_json::from_str(r#"{"b": {"d": "x", "c": [1, 2]}, "a": 1}"#)
            .unwrap_or(Value::Null);
        assert_eq!(server_token("t", "i", &a), server_token("t", "i", &b));
        assert_ne!(server_token("t", "i", &a), server_token("t", "j", &a));
        assert_ne!(
            server_token("t", "i", &a),
            server_token("t", "i", &json!({"a": 2, "b": {"c": [1, 2], "d": "x"}}))
        );
        assert_eq!(
            server_token("t", "i", &a).len(),
            64,
            "Apple's 64-octet limit"
        );
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("com.example.exchange-1").is_ok());
        assert!(check_identifier("").is_err());
        assert!(check_identifier("a/b").is_err());
        assert!(check_identifier(&"a".repeat(65)).is_err());
        assert!(check_identifier("org.lanyard.mine").is_err());
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            DeclarativeRequest::parse("tokens", None).ok(),
            Some(DeclarativeRequest::Tokens)
        );
        assert_eq!(
            DeclarativeRequest::parse("declaration/configuration/com.example.a", None).ok(),
            Some(DeclarativeRequest::Declaration {
                kind: "configuration",
                identifier: "com.example.a"
            })
        );
        assert!(DeclarativeRequest::parse("declaration/x", None).is_err());
        assert!(
            DeclarativeRequest::parse("status", None).is_err(),
            "a report needs Data"
        );
        assert!(DeclarativeRequest::parse("anything/else", None).is_err());
    }

    #[test]
    fn what_lanyard_generates_passes_apples_schema() {
        for item in DEFAULT_STATUS_ITEMS {
            assert!(schema::status_item_known(item), "{item}");
            assert!(
                schema::status_item_user_enrollment_macos(item).is_ok(),
                "{item} is allowed for a macOS User Enrollment"
            );
        }
        let subs = schema::status_subscriptions_payload(DEFAULT_STATUS_ITEMS);
        assert!(schema::validate_payload(STATUS_SUBSCRIPTIONS_TYPE, &subs).is_ok());
        assert!(schema::user_enrollment_macos(STATUS_SUBSCRIPTIONS_TYPE).is_ok());
        let act = schema::simple_activation_payload(&["a", "b"]);
        assert!(schema::validate_payload(SIMPLE_ACTIVATION_TYPE, &act).is_ok());
        assert!(
            !schema::status_item_known("passcode.is-compliant")
                || schema::status_item_user_enrollment_macos("passcode.is-compliant").is_err(),
            "passcode compliance is not a macOS status item"
        );
    }

    fn served(identifier: &str) -> Served {
        generated(
            "com.apple.configuration.management.test",
            identifier,
            DeclarationKind::Configuration,
            json!({"Echo": "x"}),
        )
    }

    #[test]
    fn status_reports_are_read_and_bounded() {
        let s = vec![served("a")];
        let report = json!({
            "StatusItems": {
                "device": {"operating-system": {"version": "15.2", "unknown-thing": 1}, "model": {"family": "Mac"}},
                "management": {"declarations": {"configurations": [
                    {"identifier": "a", "server-token": "t", "active": false, "valid": "invalid",
                     "reasons": [{"Code": "Error.ConfigurationCannotBeApplied"}]}
                ]}}
            },
            "Errors": [],
            "FullReport": true
        });
        let r = read_status_report(report.to_string().as_bytes(), &s).unwrap_or_default();
        assert!(r.full, "a full report listing the declarations");
        let mut names: Vec<&str> = r.items.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["device.model.family", "device.operating-system.version"]
        );
        assert_eq!(r.declarations.len(), 1);
        assert_eq!(r.declarations[0].valid, DeclarationValidity::Invalid);
        assert!(r.declarations[0]
            .reasons
            .contains("ConfigurationCannotBeApplied"));

        let unassigned = json!({"StatusItems": {"management": {"declarations": {"configurations": [
            {"identifier": "zzz", "server-token": "t", "active": true, "valid": "valid"}]}}}, "Errors": []});
        let e = read_status_report(unassigned.to_string().as_bytes(), &s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("zzz is not assigned"), "{e}");
        for bad in [
            "not json",
            "[]",
            r#"{"Errors": []}"#,
            r#"{"StatusItems": {}, "Errors": {}}"#,
            r#"{"StatusItems": {}, "Errors": [], "FullReport": "yes"}"#,
            r#"{"StatusItems": {}, "Errors": [{"Reasons": []}]}"#,
            r#"{"StatusItems": {"management": {"declarations": {"configurations": [{"identifier": "a"}]}}}, "Errors": []}"#,
        ] {
            assert!(
                matches!(
                    read_status_report(bad.as_bytes(), &s),
                    Err(CoreError::Invalid(_))
                ),
                "{bad}"
            );
        }
        let later = json!({"StatusItems": {}, "Errors": [], "SomethingNew": 1});
        assert!(
            read_status_report(later.to_string().as_bytes(), &s).is_ok(),
            "keys a later macOS adds are ignored"
        );
        let items_only = json!({"StatusItems": {"device": {"model": {"family": "Mac"}}}, "Errors": [], "FullReport": true});
        let r = read_status_report(items_only.to_string().as_bytes(), &s).unwrap_or_default();
        assert!(
            !r.full,
            "a full report without management.declarations forgets no state"
        );
        let big = json!({"StatusItems": {"device": {"model": {"family": "x".repeat(STATUS_ITEM_VALUE_LIMIT + 1)}}}, "Errors": []});
        let r = read_status_report(big.to_string().as_bytes(), &s).unwrap_or_default();
        assert!(
            r.items[0].1.contains("omitted"),
            "kept as a note of its size"
        );
    }
}
