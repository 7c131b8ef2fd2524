//! The web-view half of `apple-as-web` authentication, without HTTP: reading the
//! `WWW-Authenticate` challenge, reading the first form of a sign-in page and filling it the
//! way a person would, and pulling a human message out of a refusal page.

use std::collections::BTreeMap;

use scraper::{ElementRef, Html, Selector};
use url::Url;

/// The scheme of the URL the sign-in pages finally redirect to.
pub const RESULT_SCHEME: &str = "apple-remotemanagement-user-login";
/// The host of that URL.
pub const RESULT_HOST: &str = "authentication-results";

/// One challenge of a `WWW-Authenticate` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The auth scheme, e.g. `Bearer`.
    pub scheme: String,
    /// Its auth-params (names lower-cased, values unquoted), e.g. `method`, `url`.
    pub params: BTreeMap<String, String>,
    /// Its token68, for a challenge that carries one instead of auth-params.
    pub token68: Option<String>,
}

/// Parse a `WWW-Authenticate` field value strictly, as RFC 7235 §2.1 and §4.1 (RFC 9110 §11.2,
/// §11.6.1) define it, and as Apple's example writes the `apple-as-web` challenge
/// (`Bearer method="apple-as-web", url="…"`):
///
/// ```text
/// WWW-Authenticate = 1#challenge
/// challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
/// auth-param       = token BWS "=" BWS ( token / quoted-string )
/// ```
///
/// Auth-params are separated by commas (`method="apple-as-web" url="…"` is refused), a name
/// occurs once per challenge, values are tokens or quoted-strings (with `\` escapes), and list
/// elements may be empty. Errors say what was expected and where (the character's position).
pub fn parse_challenges(value: &str) -> Result<Vec<Challenge>, String> {
    let mut p = Cursor {
        b: value.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip_list_separators();
        if p.done() {
            break;
        }
        let scheme = p
            .token()
            .ok_or_else(|| p.err("expected an auth-scheme (a token)"))?;
        let mut challenge = Challenge {
            scheme,
            params: BTreeMap::new(),
            token68: None,
        };
        let spaces = p.skip_sp();
        if p.done() || p.peek() == Some(b',') {
            out.push(challenge);
            continue;
        }
        if spaces == 0 {
            return Err(p.err(&format!(
                "expected a space after the auth-scheme {}",
                challenge.scheme
            )));
        }
        if let Some(t) = p.token68() {
            challenge.token68 = Some(t);
            out.push(challenge);
            continue;
        }
        loop {
            let name = p
                .token()
                .ok_or_else(|| p.err("expected an auth-param name (a token)"))?;
            p.skip_ows();
            if p.peek() != Some(b'=') {
                return Err(p.err(&format!("expected '=' after the auth-param name {name}")));
            }
            p.i += 1;
            p.skip_ows();
            let value = if p.peek() == Some(b'"') {
                p.quoted_string()?
            } else {
                p.token().ok_or_else(|| {
                    p.err(&format!(
                        "the value of {name} is neither a token nor a quoted-string"
                    ))
                })?
            };
            if challenge
                .params
                .insert(name.to_ascii_lowercase(), value)
                .is_some()
            {
                return Err(format!(
                    "the auth-param {name} occurs twice in the {} challenge",
                    challenge.scheme
                ));
            }
            p.skip_ows();
            if p.done() {
                break;
            }
            if p.peek() != Some(b',') {
                return Err(p.err(&format!(
                    "expected ',' after the auth-param {name} (auth-params are separated by commas)"
                )));
            }
            p.skip_list_separators();
            if p.done() || !p.auth_param_follows() {
                // The end, or the next challenge's auth-scheme.
                break;
            }
        }
        out.push(challenge);
    }
    if out.is_empty() {
        return Err("no challenge".into());
    }
    Ok(out)
}

/// The first challenge of a `WWW-Authenticate` field value, parsed strictly by
/// [`parse_challenges`].
pub fn parse_www_authenticate(value: &str) -> Result<Challenge, String> {
    parse_challenges(value).map(|mut all| all.remove(0))
}

/// A position in a header value, for [`parse_challenges`].
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_token68_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/".contains(&c)
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self, what: &str) -> String {
        match self.peek() {
            Some(c) if c.is_ascii_graphic() || c == b' ' => {
                format!("{what} at character {} ({:?})", self.i + 1, c as char)
            }
            Some(c) => format!("{what} at character {} (byte {c:#04x})", self.i + 1),
            None => format!("{what} at the end"),
        }
    }

    /// OWS / BWS.
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// `1*SP` after an auth-scheme; returns how many.
    fn skip_sp(&mut self) -> usize {
        let start = self.i;
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
        self.i - start
    }

    /// Commas and whitespace between list elements (empty elements are allowed).
    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }

    /// A token68 that is the whole of its list element; the position is unchanged otherwise.
    fn token68(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_token68_char) {
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        while self.peek() == Some(b'=') {
            self.i += 1;
        }
        let end = self.i;
        self.skip_ows();
        if self.done() || self.peek() == Some(b',') {
            return Some(String::from_utf8_lossy(&self.b[start..end]).into_owned());
        }
        self.i = start;
        None
    }

    /// Whether an auth-param (`token BWS "="`) starts here, rather than the next challenge.
    fn auth_param_follows(&mut self) -> bool {
        let start = self.i;
        let follows = self.token().is_some() && {
            self.skip_ows();
            self.peek() == Some(b'=')
        };
        self.i = start;
        follows
    }

    /// `DQUOTE *( qdtext / quoted-pair ) DQUOTE`, unescaped.
    fn quoted_string(&mut self) -> Result<String, String> {
        let open = self.i;
        self.i += 1;
        let mut value = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                self.i = open;
                return Err(self.err("unterminated quoted-string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&value).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek() {
                        Some(e) if e == b'\t' || e == b' ' || e >= 0x21 && e != 0x7f => {
                            value.push(e);
                            self.i += 1;
                        }
                        _ => return Err(self.err("bad quoted-pair in a quoted-string")),
                    }
                }
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => {
                    value.push(c);
                    self.i += 1;
                }
                _ => return Err(self.err("a control character in a quoted-string")),
            }
        }
    }
}

/// The kind of a form control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlKind {
    /// `<input type=…>` with its (lower-cased) type; `text` when absent.
    Input(String),
    /// `<select>` with its options' values and the value of the selected one (or first).
    Select {
        /// Option values (`value`, or the option's text).
        options: Vec<String>,
        /// The pre-selected option's value, else the first option's.
        selected: Option<String>,
    },
    /// `<textarea>`.
    TextArea,
    /// `<button>` with its (lower-cased) type; `submit` when absent.
    Button(String),
}

/// One control of a form, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// What it is.
    pub kind: ControlKind,
    /// `name` (controls without one are kept for submit-button selection only).
    pub name: Option<String>,
    /// `value` (text content for a textarea).
    pub value: String,
    /// `checked` (radio buttons and checkboxes).
    pub checked: bool,
    /// `disabled`.
    pub disabled: bool,
}

/// The first form of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtmlForm {
    /// `GET` or `POST` (upper case).
    pub method: String,
    /// The action, resolved against the page URL.
    pub action: Url,
    /// Its controls, in document order.
    pub controls: Vec<Control>,
}

/// What to type into a form.
#[derive(Debug, Clone, Copy)]
pub struct FormAnswers<'a> {
    /// For `email` (by name, or `type=email`).
    pub email: &'a str,
    /// For `password` (by name, or `type=password`).
    pub password: &'a str,
    /// The value of the `ownership` radio button (or select option) to choose.
    pub ownership: &'a str,
    /// Values for controls named `attr:<NAME>`, by NAME.
    pub attrs: &'a BTreeMap<String, String>,
}

fn selector(css: &str) -> Result<Selector, String> {
    Selector::parse(css).map_err(|e| format!("bad selector {css:?}: {e}"))
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn element_text(el: &ElementRef<'_>) -> String {
    collapse(&el.text().collect::<String>())
}

/// Read the first `<form>` of `html`, resolving its action against `page_url`.
/// `Ok(None)` when the page has no form.
pub fn parse_first_form(html: &str, page_url: &Url) -> Result<Option<HtmlForm>, String> {
    let doc = Html::parse_document(html);
    let form_sel = selector("form")?;
    let Some(form) = doc.select(&form_sel).next() else {
        return Ok(None);
    };
    let method = form
        .value()
        .attr("method")
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "GET".to_owned());
    let action = match form.value().attr("action").map(str::trim) {
        None | Some("") => page_url.clone(),
        Some(a) => page_url
            .join(a)
            .map_err(|e| format!("form action {a:?} is not a URL: {e}"))?,
    };
    let control_sel = selector("input, select, textarea, button")?;
    let option_sel = selector("option")?;
    let mut controls = Vec::new();
    for el in form.select(&control_sel) {
        let v = el.value();
        let name = v.attr("name").map(str::to_owned).filter(|n| !n.is_empty());
        let disabled = v.attr("disabled").is_some();
        let checked = v.attr("checked").is_some();
        let attr_value = v.attr("value").unwrap_or_default().to_owned();
        let (kind, value) = match v.name() {
            "input" => (
                ControlKind::Input(
                    v.attr("type")
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "text".to_owned()),
                ),
                attr_value,
            ),
            "select" => {
                let mut options = Vec::new();
                let mut selected = None;
                for o in el.select(&option_sel) {
                    if o.value().attr("disabled").is_some() {
                        continue;
                    }
                    let ov = o
                        .value()
                        .attr("value")
                        .map(str::to_owned)
                        .unwrap_or_else(|| element_text(&o));
                    if o.value().attr("selected").is_some() && selected.is_none() {
                        selected = Some(ov.clone());
                    }
                    options.push(ov);
                }
                let selected = selected.or_else(|| options.first().cloned());
                let value = selected.clone().unwrap_or_default();
                (ControlKind::Select { options, selected }, value)
            }
            "textarea" => (ControlKind::TextArea, el.text().collect::<String>()),
            _ => (
                ControlKind::Button(
                    v.attr("type")
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "submit".to_owned()),
                ),
                attr_value,
            ),
        };
        controls.push(Control {
            kind,
            name,
            value,
            checked,
            disabled,
        });
    }
    Ok(Some(HtmlForm {
        method,
        action,
        controls,
    }))
}

fn is_submitter(kind: &ControlKind) -> bool {
    match kind {
        ControlKind::Input(t) => t == "submit" || t == "image",
        ControlKind::Button(t) => t == "submit",
        _ => false,
    }
}

impl HtmlForm {
    /// The names of the form's fields (no buttons), for messages.
    pub fn field_names(&self) -> Vec<&str> {
        self.controls
            .iter()
            .filter(|c| !matches!(c.kind, ControlKind::Button(_)) && !is_submitter(&c.kind))
            .filter_map(|c| c.name.as_deref())
            .collect()
    }

    /// The `name=value` pairs a browser would submit after a person filled the form with
    /// `answers` and pressed its first submit button.
    ///
    /// Rules: hidden inputs keep their values; `email`/`password` (by name or type) get the
    /// credentials; the `ownership` choice picks the radio button (or option) whose value is
    /// `answers.ownership` and fails when there is none; `attr:<NAME>` controls get
    /// `answers.attrs[NAME]` when given, else keep their value; other radio buttons and
    /// checkboxes are sent when checked; other controls keep their value; disabled controls
    /// are left out; the first submit button is included when it has a name.
    pub fn fill(&self, answers: &FormAnswers<'_>) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut ownership_done = false;
        let mut submitter_done = false;
        for c in &self.controls {
            if c.disabled {
                continue;
            }
            if is_submitter(&c.kind) {
                if !submitter_done {
                    submitter_done = true;
                    if let Some(n) = &c.name {
                        out.push((n.clone(), c.value.clone()));
                    }
                }
                continue;
            }
            let Some(name) = c.name.as_deref() else {
                continue;
            };
            let attr = name
                .strip_prefix("attr:")
                .and_then(|a| answers.attrs.get(a));
            match &c.kind {
                ControlKind::Button(_) => {}
                ControlKind::Input(t) if t == "hidden" => {
                    out.push((name.to_owned(), c.value.clone()));
                }
                ControlKind::Input(t) if t == "radio" && name == "ownership" => {
                    if !ownership_done {
                        ownership_done = true;
                        let offered = self.radio_values(name);
                        if !offered.contains(&answers.ownership) {
                            return Err(no_choice(answers.ownership, &offered));
                        }
                        out.push((name.to_owned(), answers.ownership.to_owned()));
                    }
                }
                ControlKind::Input(t) if t == "radio" => {
                    if let Some(a) = attr {
                        if c.value == *a {
                            out.push((name.to_owned(), c.value.clone()));
                        }
                    } else if c.checked {
                        out.push((name.to_owned(), c.value.clone()));
                    }
                }
                ControlKind::Input(t) if t == "checkbox" => {
                    let on = match attr {
                        Some(a) => {
                            matches!(a.as_str(), "true" | "on" | "1" | "yes") || *a == c.value
                        }
                        None => c.checked,
                    };
                    if on {
                        let v = if c.value.is_empty() { "on" } else { &c.value };
                        out.push((name.to_owned(), v.to_owned()));
                    }
                }
                ControlKind::Input(t) if t == "reset" || t == "button" || t == "file" => {}
                ControlKind::Select { options, selected } if name == "ownership" => {
                    if !options.iter().any(|o| o == answers.ownership) {
                        let offered: Vec<&str> = options.iter().map(String::as_str).collect();
                        return Err(no_choice(answers.ownership, &offered));
                    }
                    let _ = selected;
                    ownership_done = true;
                    out.push((name.to_owned(), answers.ownership.to_owned()));
                }
                ControlKind::Select { selected, .. } => {
                    let v = attr
                        .cloned()
                        .or_else(|| selected.clone())
                        .unwrap_or_default();
                    out.push((name.to_owned(), v));
                }
                ControlKind::Input(t) if name == "email" || t == "email" => {
                    out.push((name.to_owned(), answers.email.to_owned()));
                }
                ControlKind::Input(t) if name == "password" || t == "password" => {
                    out.push((name.to_owned(), answers.password.to_owned()));
                }
                ControlKind::Input(_) | ControlKind::TextArea => {
                    let v = attr.cloned().unwrap_or_else(|| c.value.clone());
                    out.push((name.to_owned(), v));
                }
            }
        }
        Ok(out)
    }

    fn radio_values(&self, name: &str) -> Vec<&str> {
        self.controls
            .iter()
            .filter(|c| {
                !c.disabled
                    && c.name.as_deref() == Some(name)
                    && c.kind == ControlKind::Input("radio".into())
            })
            .map(|c| c.value.as_str())
            .collect()
    }
}

fn no_choice(wanted: &str, offered: &[&str]) -> String {
    format!(
        "the sign-in page offers no ownership choice {wanted:?} (offered: {})",
        offered.join(", ")
    )
}

/// The longest message kept from a page.
const MAX_MESSAGE: usize = 500;

fn shorten(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The target of the link with this `id` (e.g. a "Sign in with …" button), resolved against
/// the page's URL.
pub fn link_by_id(html: &str, page_url: &Url, id: &str) -> Option<Url> {
    let doc = Html::parse_document(html);
    let sel = selector("a[id]").ok()?;
    let el = doc
        .select(&sel)
        .find(|e| e.value().attr("id") == Some(id))?;
    page_url.join(el.value().attr("href")?).ok()
}

/// The human message of an HTML page: the text of `id="message"`, else of `<main>`, else of
/// `<body>`, whitespace collapsed. Empty when the page has no text.
pub fn page_message(html: &str) -> String {
    let doc = Html::parse_document(html);
    for css in ["#message", "main", "body"] {
        let Ok(sel) = selector(css) else { continue };
        if let Some(el) = doc.select(&sel).next() {
            let t = element_text(&el);
            if !t.is_empty() {
                return shorten(t);
            }
        }
    }
    shorten(collapse(&doc.root_element().text().collect::<String>()))
}

/// The human message of any error answer: HTML via [`page_message`], JSON via its
/// `message`/`error`/`detail`/`reason` member, otherwise the text itself (trimmed).
pub fn body_message(content_type: &str, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let ct = content_type.to_ascii_lowercase();
    let looks_html = ct.contains("html") || text.trim_start().starts_with('<');
    if looks_html && !ct.contains("xml") {
        let m = page_message(&text);
        if !m.is_empty() {
            return m;
        }
    }
    if ct.contains("json") || text.trim_start().starts_with('{') {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(&text) {
            for key in ["message", "error", "detail", "reason", "title"] {
                match o.get(key) {
                    Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                        return shorten(s.trim().to_owned());
                    }
                    Some(serde_json::Value::Object(inner)) => {
                        if let Some(serde_json::Value::String(s)) = inner.get("message") {
                            return shorten(s.trim().to_owned());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let t = collapse(&text);
    if t.is_empty() {
        "(no message)".to_owned()
    } else {
        shorten(t)
    }
}

/// The access token of the final `apple-remotemanagement-user-login://authentication-results`
/// redirect, from its `access-token` query parameter.
pub fn access_token_from_result(location: &str) -> Result<String, String> {
    let url = Url::parse(location).map_err(|e| format!("bad result URL {location:?}: {e}"))?;
    if url.scheme() != RESULT_SCHEME {
        return Err(format!("not a {RESULT_SCHEME}:// URL: {location}"));
    }
    if url.host_str() != Some(RESULT_HOST) {
        return Err(format!(
            "the sign-in result's host is not {RESULT_HOST}: {location}"
        ));
    }
    url.query_pairs()
        .find(|(k, _)| k == "access-token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("the sign-in result carries no access-token: {location}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_is_parsed() {
        let c = parse_www_authenticate(
            r#"Bearer method="apple-as-web", url="https://mdm.example.com/enroll/sign-in?a=1&b=\"x\"""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.params["method"], "apple-as-web");
        assert_eq!(
            c.params["url"],
            r#"https://mdm.example.com/enroll/sign-in?a=1&b="x""#
        );
        assert_eq!(c.token68, None);
        // Names are case-insensitive, values may be tokens, whitespace around "=" is allowed.
        let c = parse_www_authenticate("Bearer method = apple-as-web ,URL=\"/s\"").unwrap();
        assert_eq!(c.params["method"], "apple-as-web");
        assert_eq!(c.params["url"], "/s");
        assert_eq!(parse_www_authenticate("  ").unwrap_err(), "no challenge");
    }

    #[test]
    fn several_challenges_token68_and_empty_elements() {
        // RFC 7235 §4.1's example, with an empty list element and a trailing comma.
        let all = parse_challenges(
            r#"Newauth realm="apps", type=1, title="Login to \"apps\"", , Basic realm="simple","#,
        )
        .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].scheme, "Newauth");
        assert_eq!(all[0].params["type"], "1");
        assert_eq!(all[0].params["title"], r#"Login to "apps""#);
        assert_eq!(all[1].scheme, "Basic");
        assert_eq!(all[1].params["realm"], "simple");
        let all = parse_challenges("Negotiate a87421000492aa874209af8bc028==, Bearer").unwrap();
        assert_eq!(
            all[0].token68.as_deref(),
            Some("a87421000492aa874209af8bc028==")
        );
        assert!(all[0].params.is_empty());
        assert_eq!(all[1].scheme, "Bearer");
        assert!(all[1].params.is_empty() && all[1].token68.is_none());
    }

    #[test]
    fn what_rfc_7235_does_not_allow_is_refused() {
        let err = |v: &str| parse_challenges(v).unwrap_err();
        // The space-separated form some servers send.
        let e = err(r#"Bearer method="apple-as-web" url="https://mdm.example.com/s""#);
        assert!(
            e.starts_with("expected ',' after the auth-param method") && e.contains("character 30"),
            "{e}"
        );
        assert!(
            err(r#"Bearer method="apple-as-web""#.replace("Bearer ", "Bearer\t").as_str())
                .contains("expected a space after the auth-scheme Bearer")
        );
        assert!(err(r#"Bearer method="apple-as-web"#).starts_with("unterminated quoted-string"));
        assert!(err("Bearer method=\"a\u{1}b\"").contains("control character"));
        assert!(err("Bearer method=@").contains("neither a token nor a quoted-string"));
        // (`Bearer method=` alone is a token68, and allowed.)
        assert_eq!(
            parse_www_authenticate("Bearer method=")
                .unwrap()
                .token68
                .as_deref(),
            Some("method=")
        );
        assert!(err("Bearer url=https://x.example/").contains("expected ','"));
        assert!(err("Bearer foo bar").contains("expected '=' after the auth-param name foo"));
        assert!(err(r#"Bearer method="a", Method="b""#).contains("occurs twice"));
        assert!(err("=x").contains("expected an auth-scheme"));
        assert!(err(r#"Bearer method="a" , url="#).contains("neither a token"));
    }

    const SIGN_IN: &str = r#"<!doctype html>
<html><head><title>Sign in</title></head>
<body><main>
  <h1>Sign in to Example</h1>
  <form method="post" action="sign-in?step=2">
    <input type="hidden" name="csrf" value="tok-123">
    <input type="hidden" name="user-identifier" value="ann@example.com">
    <label>Email <input type="email" name="email" value=""></label>
    <label>Password <input type="password" name="password"></label>
    <fieldset>
      <input type="radio" name="ownership" value="employee" checked>
      <input type="radio" name="ownership" value="corporate">
      <input type="radio" name="ownership" value="shared" disabled>
    </fieldset>
    <input name="attr:department" value="">
    <input name="attr:cost-centre" value="preset">
    <select name="attr:site"><option value="">—</option><option value="lon">London</option><option>Paris</option></select>
    <input type="checkbox" name="remember" value="yes">
    <input type="text" name="nickname" value="keep" disabled>
    <button type="submit" name="action" value="continue">Continue</button>
    <button type="submit" name="action" value="cancel">Cancel</button>
  </form>
  <form action="/other"><input name="x"></form>
</main></body></html>"#;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn first_form_is_read_and_filled() {
        let page = Url::parse("https://mdm.example.com/enroll/sign-in?user-identifier=x").unwrap();
        let form = parse_first_form(SIGN_IN, &page).unwrap().unwrap();
        assert_eq!(form.method, "POST");
        assert_eq!(
            form.action.as_str(),
            "https://mdm.example.com/enroll/sign-in?step=2"
        );
        let a = attrs(&[("department", "R&D"), ("site", "Paris")]);
        let answers = FormAnswers {
            email: "ann@example.com",
            password: "a long password",
            ownership: "corporate",
            attrs: &a,
        };
        let pairs = form.fill(&answers).unwrap();
        let expected: Vec<(String, String)> = [
            ("csrf", "tok-123"),
            ("user-identifier", "ann@example.com"),
            ("email", "ann@example.com"),
            ("password", "a long password"),
            ("ownership", "corporate"),
            ("attr:department", "R&D"),
            ("attr:cost-centre", "preset"),
            ("attr:site", "Paris"),
            ("action", "continue"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(pairs, expected);
        assert!(form.field_names().contains(&"attr:site"));

        // a disabled choice cannot be picked
        let answers = FormAnswers {
            ownership: "shared",
            ..answers
        };
        let err = form.fill(&answers).unwrap_err();
        assert!(
            err.contains("\"shared\"") && err.contains("employee, corporate"),
            "{err}"
        );
    }

    #[test]
    fn defaults_and_select_ownership() {
        let html = r#"<form><input name="email"><select name="ownership">
            <option value="employee">Mine</option><option value="corporate">Company</option></select>
            <select name="attr:site"><option value="a">A</option><option value="b" selected>B</option></select>
            <textarea name="attr:notes">hello</textarea>
            <input type="submit" value="Go"></form>"#;
        let page = Url::parse("https://h.example/p/q").unwrap();
        let form = parse_first_form(html, &page).unwrap().unwrap();
        assert_eq!(form.method, "GET");
        assert_eq!(form.action, page);
        let a = BTreeMap::new();
        let pairs = form
            .fill(&FormAnswers {
                email: "e@x.example",
                password: "p",
                ownership: "employee",
                attrs: &a,
            })
            .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("email".to_owned(), "e@x.example".to_owned()),
                ("ownership".to_owned(), "employee".to_owned()),
                ("attr:site".to_owned(), "b".to_owned()),
                ("attr:notes".to_owned(), "hello".to_owned()),
            ]
        );
        assert!(parse_first_form("<p>no form</p>", &page).unwrap().is_none());
    }

    #[test]
    fn messages_of_refusals() {
        let html = r#"<html><body><header>Example</header><main><h1>Sorry</h1>
            <p id="message">  Corporate devices
            cannot be enrolled here </p></main></body></html>"#;
        assert_eq!(
            page_message(html),
            "Corporate devices cannot be enrolled here"
        );
        let html = "<html><body><nav>x</nav><main><p>Wrong  password.</p></main></body></html>";
        assert_eq!(page_message(html), "Wrong password.");
        assert_eq!(
            body_message("text/html; charset=utf-8", html.as_bytes()),
            "Wrong password."
        );
        assert_eq!(
            body_message(
                "application/json",
                br#"{"error":"os_too_old","message":"macOS 15.2 or later is required"}"#
            ),
            "macOS 15.2 or later is required"
        );
        assert_eq!(
            body_message("text/plain", b"  macOS 15.2 or later is required\n"),
            "macOS 15.2 or later is required"
        );
        assert_eq!(body_message("text/plain", b""), "(no message)");
    }

    #[test]
    fn access_token_is_read() {
        assert_eq!(
            access_token_from_result(
                "apple-remotemanagement-user-login://authentication-results?access-token=abc%2B1"
            )
            .unwrap(),
            "abc+1"
        );
        assert!(access_token_from_result(
            "apple-remotemanagement-user-login://authentication-results"
        )
        .is_err());
        assert!(access_token_from_result("https://x.example/?access-token=a").is_err());
        assert!(access_token_from_result(
            "apple-remotemanagement-user-login://results?access-token=a"
        )
        .is_err());
    }

    #[test]
    fn link_by_id_is_resolved() {
        let page = Url::parse("https://mdm.example.com/enroll/sign-in").unwrap();
        let html = "<p><a id=\"idp-corp\" href=\"/enroll/oidc/start?provider=corp&amp;x=1\">Sign in</a></p>";
        assert_eq!(
            link_by_id(html, &page, "idp-corp").map(|u| u.to_string()),
            Some("https://mdm.example.com/enroll/oidc/start?provider=corp&x=1".to_string())
        );
        assert!(link_by_id(html, &page, "idp-other").is_none());
    }
}
