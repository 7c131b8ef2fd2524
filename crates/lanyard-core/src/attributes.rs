//! Custom attribute definitions: extra facts the person gives during enrollment (department,
//! cost centre…), and the validation of the values they enter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::{Actor, CoreError, Lanyard, Result};
use lanyard_store::{Audit, CustomAttributeRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttributeKind {
    Text,
    Number,
    Boolean,
    Choice,
}

impl AttributeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttributeKind::Text => "text",
            AttributeKind::Number => "number",
            AttributeKind::Boolean => "boolean",
            AttributeKind::Choice => "choice",
        }
    }
}

impl std::str::FromStr for AttributeKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(AttributeKind::Text),
            "number" => Ok(AttributeKind::Number),
            "boolean" | "bool" => Ok(AttributeKind::Boolean),
            "choice" => Ok(AttributeKind::Choice),
            _ => Err(CoreError::Invalid(format!(
                "unknown attribute type `{s}`; use text, number, boolean or choice"
            ))),
        }
    }
}

/// A custom attribute definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CustomAttribute {
    pub id: i64,
    pub name: String,
    pub kind: AttributeKind,
    pub required: bool,
    /// The allowed values of a `choice` attribute; empty otherwise.
    pub choices: Vec<String>,
}

impl TryFrom<CustomAttributeRow> for CustomAttribute {
    type Error = CoreError;
    fn try_from(r: CustomAttributeRow) -> Result<Self> {
        Ok(CustomAttribute {
            id: r.id,
            kind: r.kind.parse()?,
            choices: serde_json::from_str(&r.choices).map_err(|e| {
                CoreError::failed(format!("reading the stored choices of `{}`", r.name), e)
            })?,
            name: r.name,
            required: r.required,
        })
    }
}

/// Input for defining a custom attribute.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineAttribute {
    pub name: String,
    pub kind: AttributeKind,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub choices: Vec<String>,
}

fn check_name(name: &str) -> Result<String> {
    let n = name.trim();
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ' ')
        && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !ok {
        return Err(CoreError::Invalid(format!(
            "attribute name `{name}` must start with a letter and hold 1 to 64 letters, digits, \
             spaces, `_` or `-`"
        )));
    }
    Ok(n.to_string())
}

impl DefineAttribute {
    fn validated(self) -> Result<(String, AttributeKind, bool, Vec<String>)> {
        let name = check_name(&self.name)?;
        let mut choices: Vec<String> = Vec::new();
        for c in self.choices {
            let c = c.trim().to_string();
            if c.is_empty() || c.len() > 100 {
                return Err(CoreError::Invalid(
                    "choices must be 1 to 100 characters".into(),
                ));
            }
            if choices.contains(&c) {
                return Err(CoreError::Invalid(format!("choice `{c}` is listed twice")));
            }
            choices.push(c);
        }
        match (self.kind, choices.is_empty()) {
            (AttributeKind::Choice, true) => Err(CoreError::Invalid(
                "a choice attribute needs at least one choice".into(),
            )),
            (k, false) if k != AttributeKind::Choice => Err(CoreError::Invalid(format!(
                "only choice attributes take choices, not {}",
                k.as_str()
            ))),
            _ => Ok((name, self.kind, self.required, choices)),
        }
    }
}

impl CustomAttribute {
    /// Checks one entered value; returns it normalised. Empty means "not given".
    pub fn check_value(&self, raw: &str) -> Result<Option<String>> {
        let v = raw.trim();
        if v.is_empty() {
            return if self.required {
                Err(CoreError::Invalid(format!("{} is required", self.name)))
            } else {
                Ok(None)
            };
        }
        if v.len() > 500 {
            return Err(CoreError::Invalid(format!("{} is too long", self.name)));
        }
        let ok = match self.kind {
            AttributeKind::Text => return Ok(Some(v.to_string())),
            AttributeKind::Number => v.parse::<f64>().map(|n| n.is_finite()).unwrap_or(false),
            AttributeKind::Boolean => {
                return match v.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => Ok(Some("true".into())),
                    "false" | "no" | "off" | "0" => Ok(Some("false".into())),
                    _ => Err(CoreError::Invalid(format!(
                        "{} must be yes or no",
                        self.name
                    ))),
                }
            }
            AttributeKind::Choice => self.choices.iter().any(|c| c == v),
        };
        if ok {
            Ok(Some(v.to_string()))
        } else if self.kind == AttributeKind::Number {
            Err(CoreError::Invalid(format!(
                "{} must be a number",
                self.name
            )))
        } else {
            Err(CoreError::Invalid(format!(
                "{} must be one of: {}",
                self.name,
                self.choices.join(", ")
            )))
        }
    }
}

/// Validates a whole set of entered values against the definitions: unknown names are refused,
/// required ones must be present. Returns the normalised values that were given.
pub fn validate_values(
    defs: &[CustomAttribute],
    entered: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    for name in entered.keys() {
        if !defs.iter().any(|d| &d.name == name) {
            return Err(CoreError::Invalid(format!("unknown attribute `{name}`")));
        }
    }
    let mut out = BTreeMap::new();
    for d in defs {
        let raw = entered.get(&d.name).map(String::as_str).unwrap_or("");
        if let Some(v) = d.check_value(raw)? {
            out.insert(d.name.clone(), v);
        }
    }
    Ok(out)
}

impl Lanyard {
    pub async fn define_attribute(
        &self,
        actor: &Actor,
        input: DefineAttribute,
    ) -> Result<CustomAttribute> {
        actor.require_write()?;
        let (name, kind, required, choices) = input.validated()?;
        let choices_json = serde_json::to_string(&choices)
            .map_err(|e| CoreError::failed("encoding choices", e))?;
        let audit = Audit::new(
            &actor.name,
            "attribute.create",
            &name,
            json!({"kind": kind, "required": required, "choices": choices}),
        );
        self.store
            .create_attribute(&name, kind.as_str(), required, &choices_json, &audit)
            .await
            .map_err(|e| CoreError::creating(format!("an attribute named `{name}`"), e))?
            .try_into()
    }

    pub async fn list_attributes(&self) -> Result<Vec<CustomAttribute>> {
        self.store
            .list_attributes()
            .await?
            .into_iter()
            .map(CustomAttribute::try_from)
            .collect()
    }

    pub async fn delete_attribute(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require_write()?;
        let audit = Audit::new(&actor.name, "attribute.delete", name, json!({}));
        self.store.delete_attribute(name, &audit).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(kind: AttributeKind, required: bool, choices: &[&str]) -> CustomAttribute {
        CustomAttribute {
            id: 1,
            name: "x".into(),
            kind,
            required,
            choices: choices.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn values() {
        let n = def(AttributeKind::Number, false, &[]);
        assert_eq!(n.check_value(" 42.5 ").unwrap().as_deref(), Some("42.5"));
        assert!(n.check_value("4x").is_err());
        assert!(n.check_value("NaN").is_err());
        assert_eq!(n.check_value("").unwrap(), None);
        let c = def(AttributeKind::Choice, true, &["Sales", "R&D"]);
        assert!(c.check_value("").is_err());
        assert!(c.check_value("HR").is_err());
        assert_eq!(c.check_value("R&D").unwrap().as_deref(), Some("R&D"));
        let b = def(AttributeKind::Boolean, false, &[]);
        assert_eq!(b.check_value("Yes").unwrap().as_deref(), Some("true"));
        assert!(b.check_value("perhaps").is_err());
    }

    #[test]
    fn definitions() {
        let ok = DefineAttribute {
            name: "Department".into(),
            kind: AttributeKind::Choice,
            required: true,
            choices: vec!["A".into(), "B".into()],
        };
        assert!(ok.validated().is_ok());
        let no_choices = DefineAttribute {
            name: "d".into(),
            kind: AttributeKind::Choice,
            required: false,
            choices: vec![],
        };
        assert!(no_choices.validated().is_err());
        let text_with_choices = DefineAttribute {
            name: "d".into(),
            kind: AttributeKind::Text,
            required: false,
            choices: vec!["a".into()],
        };
        assert!(text_with_choices.validated().is_err());
        let bad_name = DefineAttribute {
            name: "1<script>".into(),
            kind: AttributeKind::Text,
            required: false,
            choices: vec![],
        };
        assert!(bad_name.validated().is_err());
    }

    #[test]
    fn validate_set() {
        let mut d = def(AttributeKind::Text, true, &[]);
        d.name = "team".into();
        let mut entered = BTreeMap::new();
        assert!(validate_values(std::slice::from_ref(&d), &entered).is_err());
        entered.insert("team".into(), "blue".into());
        assert_eq!(
            validate_values(std::slice::from_ref(&d), &entered)
                .unwrap()
                .len(),
            1
        );
        entered.insert("other".into(), "x".into());
        assert!(validate_values(&[d], &entered).is_err());
    }
}
