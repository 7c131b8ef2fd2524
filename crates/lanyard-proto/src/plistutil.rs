//! The XML property-list reader for device bodies (strict, depth-bounded, iterative), the
//! matching writer, and small helpers for reading typed keys out of a dictionary with clear errors.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use plist::{Date, Dictionary, Integer, Value};
use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::error::{quote, ProtoError};

/// Deepest nesting of arrays and dictionaries accepted in a device body (and written by
/// [`to_xml_plist`]). Real MDM messages nest a handful of levels. The bound is kept by the
/// decoder itself, which reads with an explicit stack of at most this many open collections, so
/// no body, however it spells its elements, can make decoding (or dropping the decoded value,
/// which recurses per level) exhaust the stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// Parses an XML plist and requires a dictionary at the top level.
pub(crate) fn parse_dictionary(bytes: &[u8]) -> Result<Dictionary, ProtoError> {
    match read_plist(bytes)? {
        Value::Dictionary(d) => Ok(d),
        other => Err(ProtoError::NotADictionary {
            found: kind_name(&other),
        }),
    }
}

/// A collection being read: an array, or a dictionary with, after a `<key>`, the key whose value
/// comes next.
enum Open {
    Array(Vec<Value>),
    Dict(Dictionary, Option<String>),
}

/// Where the reader is in the document.
enum Doc {
    /// Before `<plist>`.
    Prolog,
    /// Inside `<plist>`, with its one value once read.
    Body(Option<Value>),
    /// After `</plist>`.
    Done(Value),
}

fn malformed(at: u64, what: impl std::fmt::Display) -> ProtoError {
    ProtoError::MalformedPlist(format!("{what} (at byte {at})"))
}

/// Reads a property list Lanyard receives from outside (a device body; also fit for what
/// administrators upload) into a [`Value`]: XML only, read in one pass over XML events with an
/// explicit stack, so nothing here recurses and at most `MAX_DEPTH` arrays and dictionaries
/// are ever open. (The `plist` crate's own readers build values recursively, so a deeply nested
/// input overflows the stack.)
///
/// Apple devices send XML property lists on every MDM endpoint; binary (`bplist00`) and
/// OpenStep input is refused, which keeps one reader, strict and depth-bounded.
///
/// Strict where Apple's format is (Apple, "Property list" DTD `PropertyList-1.0.dtd`, which
/// every MDM body declares): one `<plist>` root holding one value; the elements `array`, `dict`,
/// `key`, `string`, `data`, `date`, `integer`, `real`, `true` and `false`, with plain names and
/// no attributes (a prefixed name such as `<x:array>`, or an `xmlns` attribute, is another
/// vocabulary and is refused rather than read by its local name); a dictionary alternates
/// `<key>` and a value, without duplicate keys; text only inside `<key>` and scalar values, with
/// the predefined and character references only, and no characters XML 1.0 cannot carry.
pub fn read_plist(bytes: &[u8]) -> Result<Value, ProtoError> {
    if bytes.starts_with(b"bplist") {
        return Err(ProtoError::MalformedPlist(
            "binary property lists are not accepted (devices send XML)".to_owned(),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        malformed(
            e.valid_up_to() as u64,
            "not UTF-8 text (device property lists are UTF-8 XML)",
        )
    })?;
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.trim_text(false);
    config.check_end_names = true;
    config.expand_empty_elements = false;
    let mut stack: Vec<Open> = Vec::new();
    let mut doc = Doc::Prolog;
    loop {
        let at = reader.buffer_position();
        let event = reader.read_event().map_err(|e| malformed(at, e))?;
        let (start, empty) = match event {
            Event::Start(s) => (s, false),
            Event::Empty(s) => (s, true),
            Event::End(e) => {
                let name = e.name();
                match name.as_ref() {
                    "array" | "dict" => {
                        let value = match stack.pop() {
                            Some(Open::Array(a)) => Value::Array(a),
                            Some(Open::Dict(d, None)) => Value::Dictionary(d),
                            Some(Open::Dict(_, Some(key))) => {
                                return Err(malformed(
                                    at,
                                    format!("key {:?} has no value", quote(&key)),
                                ))
                            }
                            None => return Err(malformed(at, "unbalanced closing tag")),
                        };
                        complete(&mut stack, &mut doc, value, at)?;
                    }
                    // The reader checks that end tags match their start tags, and only
                    // `<plist>` and collections stay open across events.
                    _ => match std::mem::replace(&mut doc, Doc::Prolog) {
                        Doc::Body(Some(v)) if stack.is_empty() => doc = Doc::Done(v),
                        Doc::Body(None) => return Err(malformed(at, "<plist> holds no value")),
                        _ => return Err(malformed(at, "unbalanced closing tag")),
                    },
                }
                continue;
            }
            Event::Text(t) if t.chars().all(|c| c.is_ascii_whitespace()) => continue,
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                return Err(malformed(at, "text outside a <key> or value"))
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => continue,
            Event::Eof => {
                return match doc {
                    Doc::Done(v) => Ok(v),
                    Doc::Prolog => Err(malformed(at, "no <plist> element")),
                    Doc::Body(_) => Err(malformed(at, "the document ends inside <plist>")),
                }
            }
        };
        let qname = start.name();
        let name: &str = qname.as_ref();
        if name.contains(':') {
            return Err(malformed(
                at,
                format!(
                    "element <{}> has a namespace prefix; property-list elements have plain names",
                    quote(name)
                ),
            ));
        }
        match &doc {
            Doc::Prolog if name == "plist" && !empty => {
                for attr in start.attributes() {
                    let attr = attr.map_err(|e| malformed(at, e))?;
                    if attr.key.as_ref() != "version" {
                        return Err(malformed(
                            at,
                            format!(
                                "<plist> has an unknown attribute {:?}",
                                quote(attr.key.as_ref())
                            ),
                        ));
                    }
                }
                doc = Doc::Body(None);
                continue;
            }
            Doc::Prolog => {
                return Err(malformed(
                    at,
                    format!("expected <plist>, found <{}>", quote(name)),
                ))
            }
            Doc::Body(Some(_)) if stack.is_empty() => {
                return Err(malformed(at, "<plist> holds more than one value"))
            }
            Doc::Done(_) => return Err(malformed(at, "content after </plist>")),
            Doc::Body(_) => {}
        }
        if !start.attributes_raw().trim().is_empty() {
            return Err(malformed(
                at,
                format!(
                    "element <{}> has attributes; property-list values carry none",
                    quote(name)
                ),
            ));
        }
        if let Some(Open::Dict(dict, pending @ None)) = stack.last_mut() {
            if name != "key" {
                return Err(malformed(
                    at,
                    format!("expected <key> in a dictionary, found <{}>", quote(name)),
                ));
            }
            let key = if empty {
                String::new()
            } else {
                read_text(&mut reader, "key")?
            };
            if dict.contains_key(&key) {
                return Err(malformed(at, format!("duplicate key {:?}", quote(&key))));
            }
            *pending = Some(key);
            continue;
        }
        let value = match name {
            "array" | "dict" => {
                if stack.len() >= MAX_DEPTH {
                    return Err(malformed(
                        at,
                        format!("arrays and dictionaries nest deeper than {MAX_DEPTH} levels"),
                    ));
                }
                match (name, empty) {
                    ("array", true) => Value::Array(Vec::new()),
                    (_, true) => Value::Dictionary(Dictionary::new()),
                    ("array", false) => {
                        stack.push(Open::Array(Vec::new()));
                        continue;
                    }
                    (_, false) => {
                        stack.push(Open::Dict(Dictionary::new(), None));
                        continue;
                    }
                }
            }
            "key" => return Err(malformed(at, "<key> outside a dictionary's key position")),
            "string" | "data" | "date" | "integer" | "real" | "true" | "false" => {
                let text = if empty {
                    String::new()
                } else {
                    read_text(&mut reader, name)?
                };
                scalar(name, text).map_err(|what| malformed(at, what))?
            }
            other => {
                return Err(malformed(
                    at,
                    format!("<{}> is not a property-list element", quote(other)),
                ))
            }
        };
        complete(&mut stack, &mut doc, value, at)?;
    }
}

/// Puts a finished value into the open collection, or makes it the document's value.
fn complete(stack: &mut [Open], doc: &mut Doc, value: Value, at: u64) -> Result<(), ProtoError> {
    match stack.last_mut() {
        Some(Open::Array(a)) => a.push(value),
        Some(Open::Dict(d, pending)) => match pending.take() {
            Some(key) => {
                d.insert(key, value);
            }
            None => return Err(malformed(at, "a dictionary value without a <key>")),
        },
        None => match doc {
            Doc::Body(slot @ None) => *slot = Some(value),
            _ => return Err(malformed(at, "<plist> holds more than one value")),
        },
    }
    Ok(())
}

/// The text of a `<key>` or scalar element whose start tag was just read, up to its end tag:
/// text, CDATA, and predefined or character references; comments and processing instructions
/// are skipped; an element inside is an error.
fn read_text(reader: &mut Reader<&[u8]>, element: &str) -> Result<String, ProtoError> {
    let mut out = String::new();
    loop {
        let at = reader.buffer_position();
        match reader.read_event().map_err(|e| malformed(at, e))? {
            Event::Text(t) => out.push_str(&t),
            Event::CData(t) => out.push_str(&t),
            Event::GeneralRef(r) => match r.resolve_char_ref().map_err(|e| malformed(at, e))? {
                Some(c) => out.push(c),
                None => match resolve_xml_entity(&r) {
                    Some(s) => out.push_str(s),
                    None => return Err(malformed(at, format!("unknown entity &{};", quote(&r)))),
                },
            },
            Event::Comment(_) | Event::PI(_) => {}
            Event::End(_) => break,
            Event::Start(_) | Event::Empty(_) | Event::Decl(_) | Event::DocType(_) => {
                return Err(malformed(at, format!("markup inside <{element}>")))
            }
            Event::Eof => {
                return Err(malformed(
                    at,
                    format!("the document ends inside <{element}>"),
                ))
            }
        }
    }
    match out.chars().find(|&c| xml_forbidden(c)) {
        Some(c) => Err(malformed(
            reader.buffer_position(),
            format!(
                "character U+{:04X} in <{element}> is not allowed in XML",
                u32::from(c)
            ),
        )),
        None => Ok(out),
    }
}

/// The value of a scalar element from its text.
fn scalar(element: &str, text: String) -> Result<Value, String> {
    let bad = |what: &str| format!("<{element}> holds {what} {:?}", quote(&text));
    Ok(match element {
        "string" => Value::String(text),
        "true" | "false" if !text.chars().all(|c| c.is_ascii_whitespace()) => {
            return Err(bad("text"))
        }
        "true" => Value::Boolean(true),
        "false" => Value::Boolean(false),
        "data" => {
            let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            Value::Data(
                STANDARD
                    .decode(compact)
                    .map_err(|_| bad("invalid base64"))?,
            )
        }
        "date" => Value::Date(Date::from_xml_format(&text).map_err(|_| bad("an invalid date"))?),
        // Decimal as CFPropertyList reads it (signed first, then unsigned), or `0x` hexadecimal.
        "integer" => Value::Integer(
            match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).map(Integer::from),
                None => text
                    .parse::<i64>()
                    .map(Integer::from)
                    .or_else(|_| text.parse::<u64>().map(Integer::from)),
            }
            .map_err(|_| bad("an invalid integer"))?,
        ),
        _ => Value::Real(text.parse().map_err(|_| bad("an invalid real"))?),
    })
}

/// Characters XML 1.0 cannot carry: control characters other than tab, line feed and carriage
/// return, and U+FFFE/U+FFFF.
fn xml_forbidden(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
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
    match s.chars().find(|&c| xml_forbidden(c)) {
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

    fn malformed_text(r: Result<Dictionary, ProtoError>) -> String {
        match r {
            Err(ProtoError::MalformedPlist(m)) => m,
            other => panic!("expected a malformed-plist error, got {other:?}"),
        }
    }

    #[test]
    fn nesting_is_bounded_in_the_decode() {
        // Within the limit (plus the outer dict): parses.
        assert!(parse_dictionary(&nested(MAX_DEPTH - 1, "<array>", "</array>")).is_ok());
        assert!(parse_dictionary(&nested(MAX_DEPTH - 2, "<array>", "<array/></array>")).is_ok());
        let too_deep = format!("arrays and dictionaries nest deeper than {MAX_DEPTH} levels");
        for body in [
            nested(MAX_DEPTH, "<array>", "</array>"),
            // An empty collection one level too deep counts as the encoder counts it.
            nested(MAX_DEPTH - 1, "<array>", "<dict/></array>"),
            // Deep enough to overflow a recursive reader: refused, no crash.
            nested(200_000, "<array>", "</array>"),
            nested(200_000, "<dict><key>a</key>", "</dict>"),
        ] {
            let m = malformed_text(parse_dictionary(&body));
            assert!(m.starts_with(&too_deep), "{m}");
        }
        // Markup that only looks like a closing tag does not make it shallower: the decode
        // counts what the XML reader reports.
        for hidden in [
            "<array><?pi </array>?>",
            "<array><!-- </array> -->",
            "<array><string><![CDATA[</array>]]></string>",
            "<array><string>&lt;/array&gt;</string>",
        ] {
            let m = malformed_text(parse_dictionary(&nested(MAX_DEPTH, hidden, "</array>")));
            assert!(m.starts_with(&too_deep), "{hidden}: {m}");
        }
        // Many empty collections side by side are not nesting.
        let flat = format!(
            "<plist><dict><key>K</key><array>{}</array><key>L</key><string>&lt;array&gt;</string>\
             <!-- <array><array> --></dict></plist>",
            "<array/><dict/><array />".repeat(1000)
        );
        assert!(parse_dictionary(flat.as_bytes()).is_ok());
    }

    #[test]
    fn only_plain_property_list_elements_are_read() {
        for (body, expected) in [
            (
                "<x:array></x:array>",
                "element <x:array> has a namespace prefix",
            ),
            (
                "<x:string>a</x:string>",
                "element <x:string> has a namespace prefix",
            ),
            (
                "<array xmlns=\"urn:x\"></array>",
                "element <array> has attributes",
            ),
            (
                "<string id=\"1\">a</string>",
                "element <string> has attributes",
            ),
            ("<arrayish/>", "<arrayish> is not a property-list element"),
            ("<string>a<b/></string>", "markup inside <string>"),
            ("<string>&ent;</string>", "unknown entity &ent;"),
            (
                "<string>a&#1;</string>",
                "character U+0001 in <string> is not allowed",
            ),
            (
                "<string>\u{1}</string>",
                "character U+0001 in <string> is not allowed",
            ),
            // U+0000 cannot be carried at all: not raw, not as a character reference, not in
            // a key (PostgreSQL could not store it; SQLite would).
            (
                "<string>a\u{0}</string>",
                "character U+0000 in <string> is not allowed",
            ),
            ("<string>a&#0;</string>", "0x0 character is not permitted"),
            ("<string>a&#x0;</string>", "0x0 character is not permitted"),
            (
                "<string>x</string><key>b\u{0}</key><string>y</string>",
                "character U+0000 in <key> is not allowed",
            ),
            ("<true>yes</true>", "<true> holds text"),
            (
                "<integer>1.5</integer>",
                "<integer> holds an invalid integer",
            ),
            ("<data>!!</data>", "<data> holds invalid base64"),
        ] {
            let xml = format!("<plist><dict><key>K</key>{body}</dict></plist>");
            let m = malformed_text(parse_dictionary(xml.as_bytes()));
            assert!(m.contains(expected), "{body}: {m}");
            assert!(m.contains("(at byte "), "{body}: {m}");
        }
        for (xml, expected) in [
            (
                "<plist><dict><key>K</key></dict></plist>",
                "key \"K\" has no value",
            ),
            (
                "<plist><dict><key>K</key><true/><key>K</key><true/></dict></plist>",
                "duplicate key \"K\"",
            ),
            (
                "<plist><dict><string>K</string></dict></plist>",
                "expected <key> in a dictionary",
            ),
            ("<plist><dict/><dict/></plist>", "more than one value"),
            ("<plist><dict/></plist><dict/>", "content after </plist>"),
            ("<plist><dict>text</dict></plist>", "text outside"),
            ("<plist></plist>", "holds no value"),
            ("<plist><dict>", "ends inside <plist>"),
            ("<dict/>", "expected <plist>"),
            ("<plist x=\"1\"><dict/></plist>", "unknown attribute"),
            ("<plist><dict></array></plist>", "(at byte"),
        ] {
            let m = malformed_text(parse_dictionary(xml.as_bytes()));
            assert!(m.contains(expected), "{xml}: {m}");
        }
        assert!(malformed_text(parse_dictionary(b"<plist>\xff</plist>")).contains("not UTF-8"));
    }

    #[test]
    fn apple_plists_read_as_the_plist_crate_reads_them() {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
            <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
            \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
            <plist version=\"1.0\">\n<dict>\n\
            \t<key>S</key>\n\t<string> a &amp; b &#x41;&#66; <![CDATA[<c>]]>\r\n</string>\n\
            \t<key>E</key><string/>\n\t<key>E2</key><string></string>\n\
            \t<key>D</key>\n\t<data>\n\tAAEC\n\tAw==\n\t</data>\n\
            \t<key>T</key><date>2024-05-01T12:00:00Z</date>\n\
            \t<key>I</key><integer>-9223372036854775808</integer>\n\
            \t<key>U</key><integer>18446744073709551615</integer>\n\
            \t<key>H</key><integer>0xff</integer>\n\
            \t<key>R</key><real>1.5</real>\n\
            \t<key>B</key><array><true/><false></false><!-- c --><dict/></array>\n\
            </dict>\n</plist>\n";
        let ours = parse_dictionary(xml.as_bytes()).unwrap();
        assert_eq!(
            ours.get("S").and_then(Value::as_string),
            Some(" a & b AB <c>\r\n")
        );
        assert_eq!(
            ours.get("D").and_then(Value::as_data),
            Some(&[0, 1, 2, 3][..])
        );
        assert_eq!(
            ours.get("H").and_then(Value::as_unsigned_integer),
            Some(255)
        );
        // Without the CDATA section (which the plist crate drops), both readers agree.
        let plain = xml.replace("<![CDATA[<c>]]>", "&lt;c>");
        let theirs = Value::from_reader_xml(plain.as_bytes()).unwrap();
        assert_eq!(
            Value::Dictionary(parse_dictionary(plain.as_bytes()).unwrap()),
            theirs
        );
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
