//! Small helpers for reading typed keys out of a property-list dictionary with clear errors.

use plist::{Dictionary, Value};

use crate::error::ProtoError;

/// Deepest nesting of `<array>`/`<dict>` accepted in a device body. Real MDM messages nest a
/// handful of levels; the limit exists because the plist parser recurses per level, so a body of
/// a few hundred kilobytes of `<array>` would otherwise overflow the stack and abort the process.
pub(crate) const MAX_DEPTH: usize = 64;

/// Parses an XML plist and requires a dictionary at the top level.
///
/// Apple devices send XML property lists on every MDM endpoint; binary (`bplist00`) and
/// OpenStep bodies are refused, which keeps one parser, whose nesting [`check_xml_nesting`] can
/// bound before it runs.
pub(crate) fn parse_dictionary(bytes: &[u8]) -> Result<Dictionary, ProtoError> {
    if bytes.starts_with(b"bplist") {
        return Err(ProtoError::MalformedPlist(
            "binary property lists are not accepted (devices send XML)".to_owned(),
        ));
    }
    check_xml_nesting(bytes)?;
    let value =
        Value::from_reader_xml(bytes).map_err(|e| ProtoError::MalformedPlist(e.to_string()))?;
    match value {
        Value::Dictionary(d) => Ok(d),
        other => Err(ProtoError::NotADictionary {
            found: kind_name(&other),
        }),
    }
}

/// Refuses XML whose `<array>`/`<dict>` elements nest deeper than [`MAX_DEPTH`].
///
/// A lexical scan, before and independent of the parser, that tokenises markup the way XML
/// does: comments, CDATA sections, processing instructions and declarations (with an internal
/// subset) are skipped whole, and every tag is skipped to its real end with quoted attribute
/// values respected, so neither a `</array>` inside a value or comment nor a `/>` inside a
/// value can fool the count. Only an element start tag can make it deeper, only a closing tag
/// shallower.
fn check_xml_nesting(bytes: &[u8]) -> Result<(), ProtoError> {
    let find = |from: usize, pat: &[u8]| {
        bytes
            .get(from..)
            .and_then(|rest| rest.windows(pat.len()).position(|w| w == pat))
            .map_or(bytes.len(), |p| from + p + pat.len())
    };
    let mut depth = 0usize;
    let mut i = 0usize;
    while let Some(lt) = bytes
        .get(i..)
        .and_then(|r| r.iter().position(|&b| b == b'<'))
    {
        let start = i + lt + 1;
        let rest = &bytes[start..];
        if rest.starts_with(b"!--") {
            i = find(start + 3, b"-->");
            continue;
        }
        if rest.starts_with(b"![CDATA[") {
            i = find(start + 8, b"]]>");
            continue;
        }
        if rest.starts_with(b"?") {
            i = find(start + 1, b"?>");
            continue;
        }
        let end = tag_end(rest, rest.starts_with(b"!"));
        i = end.map_or(bytes.len(), |e| start + e + 1);
        if rest.starts_with(b"!") {
            continue;
        }
        let (closing, name) = match rest.strip_prefix(b"/") {
            Some(n) => (true, n),
            None => (false, rest),
        };
        let named = |tag: &[u8]| {
            name.starts_with(tag)
                && name
                    .get(tag.len())
                    .is_none_or(|c| matches!(c, b'>' | b'/') || c.is_ascii_whitespace())
        };
        if !(named(b"array") || named(b"dict")) {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
            continue;
        }
        let self_closing = end.is_some_and(|e| e > 0 && rest[e - 1] == b'/');
        if !self_closing {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(ProtoError::MalformedPlist(format!(
                    "arrays and dictionaries nest deeper than {MAX_DEPTH} levels"
                )));
            }
        }
    }
    Ok(())
}

/// Offset of the `>` that ends the markup starting at `rest` (just after its `<`), skipping
/// quoted values and, for declarations, a `[...]` internal subset.
fn tag_end(rest: &[u8], declaration: bool) -> Option<usize> {
    let mut quote: Option<u8> = None;
    let mut brackets = 0usize;
    for (off, &b) in rest.iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'[') if declaration => brackets += 1,
            (None, b']') if declaration => brackets = brackets.saturating_sub(1),
            (None, b'>') if brackets == 0 => return Some(off),
            _ => {}
        }
    }
    None
}

/// Writes `value` as an XML plist, after checking that XML can carry it: no `Uid` values (binary
/// plists only), no non-finite reals, no characters XML 1.0 cannot represent in keys or
/// strings (control characters other than tab, line feed and carriage return), and no nesting
/// deeper than [`MAX_DEPTH`] (which the decoders would refuse).
pub(crate) fn to_xml_plist(value: &Value) -> Result<Vec<u8>, ProtoError> {
    check_xml_safe(value, 0)?;
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

/// `depth` is the number of collections around `value`.
fn check_xml_safe(value: &Value, depth: usize) -> Result<(), ProtoError> {
    if depth >= MAX_DEPTH && matches!(value, Value::Array(_) | Value::Dictionary(_)) {
        return Err(ProtoError::Encode(format!(
            "arrays and dictionaries nest deeper than {MAX_DEPTH} levels"
        )));
    }
    match value {
        Value::Array(a) => a.iter().try_for_each(|v| check_xml_safe(v, depth + 1)),
        Value::Dictionary(d) => d.iter().try_for_each(|(k, v)| {
            check_xml_text(k)?;
            check_xml_safe(v, depth + 1)
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
        assert!(matches!(
            parse_dictionary(b"bplist00\xd0\x08\x00\x00"),
            Err(ProtoError::MalformedPlist(_))
        ));
    }

    fn nested(n: usize, open: &str, close: &str) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>K</key>{}{}</dict></plist>",
            open.repeat(n),
            close.repeat(n)
        )
        .into_bytes()
    }

    #[test]
    fn nesting_is_bounded_before_parsing() {
        // Within the limit (plus the outer dict): parses.
        assert!(parse_dictionary(&nested(MAX_DEPTH - 1, "<array>", "</array>")).is_ok());
        let too_deep = Err(ProtoError::MalformedPlist(format!(
            "arrays and dictionaries nest deeper than {MAX_DEPTH} levels"
        )));
        assert_eq!(
            parse_dictionary(&nested(MAX_DEPTH, "<array>", "</array>")),
            too_deep
        );
        // Deep enough to overflow the parser's stack if it ran: refused, no crash.
        assert_eq!(
            parse_dictionary(&nested(200_000, "<array>", "</array>")),
            too_deep
        );
        assert_eq!(
            parse_dictionary(&nested(200_000, "<array x=\"/>\">", "</array>")),
            too_deep
        );
        assert_eq!(
            parse_dictionary(&nested(200_000, "<dict><key>a</key>", "</dict>")),
            too_deep
        );
        // Closing tags hidden where XML does not see them do not make it shallower.
        for hidden in [
            "<array><?pi </array>?>",
            "<array><key a=\"</array>\"/>",
            "<array><!-- </array> -->",
            "<array><![CDATA[</array>]]>",
        ] {
            assert!(
                check_xml_nesting(&nested(MAX_DEPTH + 1, hidden, "</array>")).is_err(),
                "{hidden}"
            );
        }
        // Empty collections and look-alikes do not count.
        let flat = format!(
            "<plist><dict><key>K</key><array>{}</array><key>L</key><string>&lt;array&gt;</string>\
             <!-- <array><array> --><key>M</key><arrayish/></dict></plist>",
            "<array/><dict/><array />".repeat(1000)
        );
        assert!(check_xml_nesting(flat.as_bytes()).is_ok());
    }

    /// `levels` nested collections: a top dictionary, arrays, and a non-empty innermost array.
    fn levels(levels: usize) -> Value {
        let mut v = Value::Array(vec![Value::Boolean(true)]);
        for _ in 0..levels - 2 {
            v = Value::Array(vec![v]);
        }
        let mut top = Dictionary::new();
        top.insert("K".into(), v);
        Value::Dictionary(top)
    }

    #[test]
    fn encoding_bounds_nesting_as_decoding_does() {
        let bytes = to_xml_plist(&levels(MAX_DEPTH)).unwrap();
        assert!(parse_dictionary(&bytes).is_ok());
        assert!(matches!(
            to_xml_plist(&levels(MAX_DEPTH + 1)),
            Err(ProtoError::Encode(_))
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
