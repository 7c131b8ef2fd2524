//! Small helpers for reading typed keys out of a property-list dictionary with clear errors.

use std::io::Cursor;

use plist::{Dictionary, Value};

use crate::error::ProtoError;

/// Parses `bytes` (XML or binary plist) and requires a dictionary at the top level.
pub(crate) fn parse_dictionary(bytes: &[u8]) -> Result<Dictionary, ProtoError> {
    let value = Value::from_reader(Cursor::new(bytes))
        .map_err(|e| ProtoError::MalformedPlist(e.to_string()))?;
    match value {
        Value::Dictionary(d) => Ok(d),
        other => Err(ProtoError::NotADictionary {
            found: kind_name(&other),
        }),
    }
}

/// Writes `value` as an XML plist, after checking that XML can carry it: no `Uid` values (binary
/// plists only), no non-finite reals, and no characters XML 1.0 cannot represent in keys or
/// strings (control characters other than tab, line feed and carriage return).
pub(crate) fn to_xml_plist(value: &Value) -> Result<Vec<u8>, ProtoError> {
    check_xml_safe(value)?;
    let mut out = Vec::new();
    value
        .to_writer_xml(&mut out)
        .map_err(|e| ProtoError::Encode(e.to_string()))?;
    Ok(out)
}

fn check_xml_text(s: &str) -> Result<(), ProtoError> {
    match s
        .chars()
        .find(|c| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}'))
    {
        Some(c) => Err(ProtoError::Encode(format!(
            "character U+{:04X} cannot be written in an XML plist",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

fn check_xml_safe(value: &Value) -> Result<(), ProtoError> {
    match value {
        Value::Array(a) => a.iter().try_for_each(check_xml_safe),
        Value::Dictionary(d) => d.iter().try_for_each(|(k, v)| {
            check_xml_text(k)?;
            check_xml_safe(v)
        }),
        Value::String(s) => check_xml_text(s),
        Value::Real(r) if !r.is_finite() => Err(ProtoError::Encode(
            "non-finite real cannot be written in an XML plist".to_owned(),
        )),
        Value::Uid(_) => Err(ProtoError::Encode(
            "UID values exist only in binary plists".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// The schema's name for a value's type, for error messages.
pub(crate) fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "<array>",
        Value::Dictionary(_) => "<dictionary>",
        Value::Boolean(_) => "<boolean>",
        Value::Data(_) => "<data>",
        Value::Date(_) => "<date>",
        Value::Real(_) => "<real>",
        Value::Integer(_) => "<integer>",
        Value::String(_) => "<string>",
        Value::Uid(_) => "<uid>",
        _ => "<unknown>",
    }
}

/// A borrowed dictionary plus the name of the message it belongs to (used in errors).
pub(crate) struct Fields<'a> {
    dict: &'a Dictionary,
    context: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(dict: &'a Dictionary, context: &'static str) -> Self {
        Self { dict, context }
    }

    fn wrong(&self, key: &'static str, expected: &'static str, v: &Value) -> ProtoError {
        ProtoError::WrongType {
            context: self.context,
            key,
            expected,
            found: kind_name(v),
        }
    }

    fn missing(&self, key: &'static str) -> ProtoError {
        ProtoError::MissingKey {
            context: self.context,
            key,
        }
    }

    /// An optional string; an empty string counts as absent.
    pub(crate) fn opt_string(&self, key: &'static str) -> Result<Option<String>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong(key, "<string>", v)),
        }
    }

    /// A required, non-empty string.
    pub(crate) fn req_string(&self, key: &'static str) -> Result<String, ProtoError> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }

    /// Optional data (base64 `<data>` in XML).
    pub(crate) fn opt_data(&self, key: &'static str) -> Result<Option<Vec<u8>>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Data(d)) => Ok(Some(d.clone())),
            Some(v) => Err(self.wrong(key, "<data>", v)),
        }
    }

    /// Required, non-empty data.
    pub(crate) fn req_data(&self, key: &'static str) -> Result<Vec<u8>, ProtoError> {
        match self.opt_data(key)? {
            Some(d) if d.is_empty() => Err(ProtoError::InvalidValue {
                context: self.context,
                key,
                reason: "empty".to_owned(),
            }),
            Some(d) => Ok(d),
            None => Err(self.missing(key)),
        }
    }

    /// An optional boolean.
    pub(crate) fn opt_bool(&self, key: &'static str) -> Result<Option<bool>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "<boolean>", v)),
        }
    }

    /// An optional signed integer.
    pub(crate) fn opt_integer(&self, key: &'static str) -> Result<Option<i64>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => i.as_signed().map(Some).ok_or(ProtoError::InvalidValue {
                context: self.context,
                key,
                reason: "integer out of range".to_owned(),
            }),
            Some(v) => Err(self.wrong(key, "<integer>", v)),
        }
    }

    /// An optional dictionary.
    pub(crate) fn opt_dict(&self, key: &'static str) -> Result<Option<Dictionary>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Dictionary(d)) => Ok(Some(d.clone())),
            Some(v) => Err(self.wrong(key, "<dictionary>", v)),
        }
    }

    /// An optional array.
    pub(crate) fn opt_array(&self, key: &'static str) -> Result<Option<&'a [Value]>, ProtoError> {
        match self.dict.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(v) => Err(self.wrong(key, "<array>", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_must_be_a_dictionary() {
        let xml = br#"<?xml version="1.0"?><plist version="1.0"><array/></plist>"#;
        assert_eq!(
            parse_dictionary(xml),
            Err(ProtoError::NotADictionary { found: "<array>" })
        );
        assert!(matches!(
            parse_dictionary(b"not a plist"),
            Err(ProtoError::MalformedPlist(_))
        ));
        assert!(matches!(
            parse_dictionary(b""),
            Err(ProtoError::MalformedPlist(_))
        ));
    }

    #[test]
    fn typed_getters_report_key_and_types() {
        let mut d = Dictionary::new();
        d.insert("S".into(), Value::Integer(3.into()));
        d.insert("E".into(), Value::String(String::new()));
        let f = Fields::new(&d, "Test");
        assert_eq!(
            f.opt_string("S"),
            Err(ProtoError::WrongType {
                context: "Test",
                key: "S",
                expected: "<string>",
                found: "<integer>"
            })
        );
        assert_eq!(f.opt_string("E"), Ok(None));
        assert_eq!(
            f.req_string("E"),
            Err(ProtoError::MissingKey {
                context: "Test",
                key: "E"
            })
        );
        assert_eq!(f.opt_integer("S"), Ok(Some(3)));
    }
}
