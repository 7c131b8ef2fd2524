//! The simulated Mac's declarative device management: what it holds, how it decides each
//! declaration's state, and the status report it sends. The network side (fetching tokens,
//! the manifest, each declaration and asset data) is in [`crate::sim::SimMac::declarative_sync`].
//!
//! Apple's sources: `../shared/apple-schema/declarative/protocol/*.yaml` (the documents),
//! `declarative/declarations/declarationbase.yaml` (the declaration and its `reasons`),
//! `declarative/status/management.declarations.yaml` (the declarations' state) and
//! `declarative/configurations/management.status-subscriptions.yaml`. Each declaration is read
//! with `lanyard_proto::declaration::Declaration::from_json`, which checks it against Apple's
//! schema, and refused when macOS User Enrollment does not allow its type.

use std::collections::{BTreeMap, BTreeSet};

use lanyard_proto::declaration::{self as schema, Declaration, DeclarationKind};
use serde_json::{json, Map, Value};

use crate::device::DeviceFacts;

/// One declaration the Mac holds, with the state it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub kind: DeclarationKind,
    pub declaration: Declaration,
    pub active: bool,
    /// `valid`, `invalid` or `unknown`.
    pub valid: &'static str,
    pub reasons: Vec<Value>,
}

impl Held {
    /// A declaration the Mac read and can use (not active until an activation says so).
    pub fn valid(kind: DeclarationKind, declaration: Declaration) -> Held {
        Held {
            kind,
            declaration,
            active: false,
            valid: "valid",
            reasons: Vec::new(),
        }
    }

    /// A declaration the Mac could not use, with the reason it reports (`code`, `description`).
    pub fn invalid(
        kind: DeclarationKind,
        declaration: Declaration,
        code: &str,
        description: &str,
    ) -> Held {
        Held {
            kind,
            reasons: vec![reason(code, description, &declaration)],
            declaration,
            active: false,
            valid: "invalid",
        }
    }
}

/// What the Mac holds after its last synchronisation.
#[derive(Debug, Clone, Default)]
pub struct DeclarativeState {
    /// By identifier.
    pub held: BTreeMap<String, Held>,
    /// The `DeclarationsToken` of the last manifest it synchronised with.
    pub declarations_token: Option<String>,
    /// Asset data fetched from `DataURL`s, by asset identifier.
    pub asset_data: BTreeMap<String, Vec<u8>>,
}

/// A reason as Apple's declarationbase.yaml lists them (`Code`, `Description`, `Details`).
pub fn reason(code: &str, description: &str, declaration: &Declaration) -> Value {
    json!({
        "Code": code,
        "Description": description,
        "Details": {"Identifier": declaration.identifier, "ServerToken": declaration.server_token},
    })
}

/// A manifest item: its kind, `Identifier` and `ServerToken`.
pub type ManifestItem = (DeclarationKind, String, String);

/// The manifest's items by kind (`protocol/declarationitemsresponse.yaml`), checked: each
/// group present, each item an `Identifier` and `ServerToken`.
pub fn manifest_items(doc: &Value) -> Result<(Vec<ManifestItem>, String), String> {
    let decls = doc
        .get("Declarations")
        .and_then(Value::as_object)
        .ok_or("the manifest has no Declarations dictionary")?;
    let token = doc
        .get("DeclarationsToken")
        .and_then(Value::as_str)
        .ok_or("the manifest has no DeclarationsToken")?
        .to_string();
    let mut out = Vec::new();
    for (group, kind) in [
        ("Activations", DeclarationKind::Activation),
        ("Configurations", DeclarationKind::Configuration),
        ("Assets", DeclarationKind::Asset),
        ("Management", DeclarationKind::Management),
    ] {
        let list = decls
            .get(group)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the manifest's {group} is not an array"))?;
        for item in list {
            let id = item.get("Identifier").and_then(Value::as_str);
            let st = item.get("ServerToken").and_then(Value::as_str);
            match (id, st) {
                (Some(i), Some(t)) => out.push((kind, i.to_string(), t.to_string())),
                _ => return Err(format!("a {group} item lacks Identifier or ServerToken")),
            }
        }
    }
    if decls.len() != 4 {
        return Err("the manifest's Declarations has keys other than the four groups".into());
    }
    Ok((out, token))
}

/// Reads one fetched declaration as a Mac would: Apple's schema, the item it was listed as,
/// and macOS User Enrollment's rule. `Err` is the reason it is invalid.
pub fn read_declaration(
    doc: &Value,
    kind: DeclarationKind,
    identifier: &str,
    server_token: &str,
) -> Result<Declaration, String> {
    let d = Declaration::from_json(doc).map_err(|e| e.to_string())?;
    if d.identifier != identifier || d.server_token != server_token {
        return Err(format!(
            "the declaration {} / {} is not the listed {identifier} / {server_token}",
            d.identifier, d.server_token
        ));
    }
    if schema::kind_of(&d.declaration_type) != Some(kind) {
        return Err(format!(
            "{} is not a {} declaration",
            d.declaration_type,
            kind.as_str()
        ));
    }
    schema::user_enrollment_macos(&d.declaration_type).map_err(|e| e.to_string())?;
    Ok(d)
}

/// Decides every held declaration's state: one the test told the Mac to fail is invalid with
/// `Error.ConfigurationCannotBeApplied`; an activation is active when every configuration it
/// names is held and valid; a configuration when an active activation names it and the assets
/// it references are held; an asset or management declaration when valid.
pub fn apply(held: &mut BTreeMap<String, Held>, fail: &[String]) {
    for h in held.values_mut() {
        if fail.contains(&h.declaration.identifier) && h.valid == "valid" {
            h.valid = "invalid";
            h.reasons = vec![reason(
                "Error.ConfigurationCannotBeApplied",
                "the simulated Mac was told to fail this declaration",
                &h.declaration,
            )];
        }
    }
    let valid: BTreeSet<String> = held
        .iter()
        .filter(|(_, h)| h.valid == "valid")
        .map(|(k, _)| k.clone())
        .collect();
    let mut activated = BTreeSet::new();
    let ids: Vec<String> = held.keys().cloned().collect();
    for id in &ids {
        let Some(h) = held.get_mut(id) else { continue };
        if h.kind != DeclarationKind::Activation {
            continue;
        }
        let names: Vec<String> = h
            .declaration
            .payload
            .get("StandardConfigurations")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<&String> = names.iter().filter(|n| !valid.contains(*n)).collect();
        h.active = h.valid == "valid" && missing.is_empty();
        if h.valid == "valid" && !missing.is_empty() {
            h.reasons = vec![json!({
                "Code": "Error.MissingConfigurations",
                "Details": {"Identifier": h.declaration.identifier, "ServerToken": h.declaration.server_token,
                            "ConfigurationIdentifiers": missing},
            })];
        }
        if h.active {
            activated.extend(names);
        }
    }
    for h in held.values_mut() {
        match h.kind {
            DeclarationKind::Activation => {}
            DeclarationKind::Configuration => {
                let assets_held = schema::asset_references(
                    &h.declaration.declaration_type,
                    &h.declaration.payload,
                )
                .iter()
                .all(|r| valid.contains(&r.identifier));
                h.active = h.valid == "valid"
                    && activated.contains(&h.declaration.identifier)
                    && assets_held;
            }
            DeclarationKind::Asset | DeclarationKind::Management => {
                h.active = h.valid == "valid";
            }
        }
    }
}

/// The status items the held status subscriptions name (`StatusItems[].Name`, combined by set
/// union as the schema's `combinetype` says), plus `management.client-capabilities`, whose
/// subscription is implicit (`status/management.client-capabilities.yaml`).
pub fn subscribed(held: &BTreeMap<String, Held>) -> BTreeSet<String> {
    let mut out = BTreeSet::from(["management.client-capabilities".to_string()]);
    for h in held.values().filter(|h| {
        h.active
            && h.declaration.declaration_type
                == "com.apple.configuration.management.status-subscriptions"
    }) {
        if let Some(items) = h
            .declaration
            .payload
            .get("StatusItems")
            .and_then(Value::as_array)
        {
            out.extend(
                items
                    .iter()
                    .filter_map(|i| i.get("Name").and_then(Value::as_str))
                    .map(str::to_string),
            );
        }
    }
    out
}

/// The value of a status item on this Mac, if it has one.
fn status_value(name: &str, facts: &DeviceFacts, held: &BTreeMap<String, Held>) -> Option<Value> {
    Some(match name {
        "device.operating-system.version" => json!(facts.os_version),
        "device.operating-system.build-version" => json!(facts.build_version),
        "device.operating-system.family" => json!("macOS"),
        "device.model.family" => json!("Mac"),
        "device.model.identifier" => json!(facts.product),
        "device.model.marketing-name" => json!(facts.model_name),
        "management.client-capabilities" => {
            let mut by_kind: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for e in schema::declarations() {
                if let Some(k) = e.kind {
                    let group = match k {
                        DeclarationKind::Activation => "activations",
                        DeclarationKind::Configuration => "configurations",
                        DeclarationKind::Asset => "assets",
                        DeclarationKind::Management => "management",
                    };
                    by_kind.entry(group).or_default().push(e.name);
                }
            }
            json!({
                "supported-versions": ["1.0.0"],
                "supported-features": {},
                "supported-payloads": {
                    "declarations": by_kind,
                    "status-items": schema::status_items().iter().map(|e| e.name).collect::<Vec<_>>(),
                },
            })
        }
        "management.declarations" => {
            let mut groups: BTreeMap<&str, Vec<Value>> = [
                ("activations", vec![]),
                ("configurations", vec![]),
                ("assets", vec![]),
                ("management", vec![]),
            ]
            .into_iter()
            .collect();
            for h in held.values() {
                let group = match h.kind {
                    DeclarationKind::Activation => "activations",
                    DeclarationKind::Configuration => "configurations",
                    DeclarationKind::Asset => "assets",
                    DeclarationKind::Management => "management",
                };
                let mut item = json!({
                    "identifier": h.declaration.identifier,
                    "server-token": h.declaration.server_token,
                    "active": h.active,
                    "valid": h.valid,
                });
                if !h.reasons.is_empty() {
                    item["reasons"] = Value::Array(h.reasons.clone());
                }
                groups.entry(group).or_default().push(item);
            }
            json!(groups)
        }
        _ => return None,
    })
}

/// A full status report (`protocol/statusreport.yaml`) of the subscribed items: each value
/// nested under its dotted name's parts, an `Errors` entry for a subscribed item this Mac has
/// no value for, `FullReport` true.
pub fn status_report(facts: &DeviceFacts, held: &BTreeMap<String, Held>) -> Value {
    let mut items = Map::new();
    let mut errors = Vec::new();
    for name in subscribed(held) {
        match status_value(&name, facts, held) {
            Some(v) => insert_dotted(&mut items, &name, v),
            None => errors.push(json!({
                "StatusItem": name,
                "Reasons": [{"Code": "Error.StatusItemUnavailable"}],
            })),
        }
    }
    json!({"StatusItems": items, "Errors": errors, "FullReport": true})
}

fn insert_dotted(root: &mut Map<String, Value>, name: &str, value: Value) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut node = root;
    for p in parts {
        let entry = node
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        node = next;
    }
    node.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(kind: DeclarationKind, t: &str, id: &str, payload: Value) -> (String, Held) {
        let declaration = Declaration {
            declaration_type: t.into(),
            identifier: id.into(),
            server_token: "t".into(),
            payload,
        };
        (id.to_string(), Held::valid(kind, declaration))
    }

    #[test]
    fn activations_make_configurations_active_and_failures_are_reported() {
        let mut h: BTreeMap<String, Held> = [
            held(
                DeclarationKind::Configuration,
                "com.apple.configuration.management.test",
                "a",
                json!({"Echo": "a"}),
            ),
            held(
                DeclarationKind::Configuration,
                "com.apple.configuration.management.test",
                "b",
                json!({"Echo": "b"}),
            ),
            held(
                DeclarationKind::Configuration,
                "com.apple.configuration.management.test",
                "c",
                json!({"Echo": "c"}),
            ),
            held(
                DeclarationKind::Activation,
                "com.apple.activation.simple",
                "act",
                json!({"StandardConfigurations": ["a", "b"]}),
            ),
        ]
        .into_iter()
        .collect();
        apply(&mut h, &["b".to_string()]);
        assert!(
            !h["act"].active,
            "b failed, so the activation is not fully active"
        );
        assert_eq!(h["b"].valid, "invalid");
        assert_eq!(
            h["b"].reasons[0]["Code"],
            "Error.ConfigurationCannotBeApplied"
        );
        assert!(!h["c"].active, "no activation names c");
        let mut ok: BTreeMap<String, Held> = h
            .into_iter()
            .map(|(k, mut v)| {
                v.valid = "valid";
                v.reasons.clear();
                (k, v)
            })
            .collect();
        apply(&mut ok, &[]);
        assert!(ok["act"].active && ok["a"].active && ok["b"].active);
    }

    #[test]
    fn status_items_nest_by_name() {
        let facts = DeviceFacts::new("Mac14,2", "15.2");
        let mut h: BTreeMap<String, Held> = [held(
            DeclarationKind::Configuration,
            "com.apple.configuration.management.status-subscriptions",
            "subs",
            json!({"StatusItems": [{"Name": "device.operating-system.version"}, {"Name": "device.model.family"}, {"Name": "passcode.is-compliant"}]}),
        )]
        .into_iter()
        .collect();
        h.insert(
            "act".into(),
            held(
                DeclarationKind::Activation,
                "com.apple.activation.simple",
                "act",
                json!({"StandardConfigurations": ["subs"]}),
            )
            .1,
        );
        apply(&mut h, &[]);
        let r = status_report(&facts, &h);
        assert_eq!(
            r["StatusItems"]["device"]["operating-system"]["version"],
            "15.2"
        );
        assert_eq!(r["StatusItems"]["device"]["model"]["family"], "Mac");
        assert!(
            r["StatusItems"]["management"]["client-capabilities"]["supported-versions"].is_array()
        );
        assert_eq!(r["Errors"][0]["StatusItem"], "passcode.is-compliant");
        assert_eq!(r["FullReport"], true);
    }
}
