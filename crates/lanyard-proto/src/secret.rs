//! Wrappers for secret values (push tokens, `PushMagic`, `UnlockToken`, bootstrap tokens,
//! SCEP challenges) whose `Debug` output never shows the value.
//!
//! The wrapped value is reachable only through an explicit `expose…` call, so a secret cannot
//! reach a log line through `{:?}` by accident.

use std::fmt;

/// Secret binary data. `Debug` prints only its length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps the bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Call only where the value is really needed (storage, APNs).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Unwraps into the secret bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }

    /// Lower-case hexadecimal form, as APNs expects a device push token in its URL path.
    pub fn expose_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        out
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.0.len())
    }
}

/// A secret string. `Debug` prints only that it is redacted.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps the string.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret text. Call only where the value is really needed.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Unwraps into the secret text.
    pub fn into_inner(self) -> String {
        self.0
    }

    /// True when the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let b = SecretBytes::new(vec![0xde, 0xad, 0xbe, 0xef]);
        let s = SecretString::new("CEFDF0BD-E342");
        let shown = format!("{b:?} {s:?}");
        assert!(!shown.contains("de"), "{shown}");
        assert!(!shown.contains("CEFD"), "{shown}");
        assert!(shown.contains("4 bytes"));
    }

    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(
            SecretBytes::new(vec![0x00, 0x0f, 0xa0, 0xff]).expose_hex(),
            "000fa0ff"
        );
        assert_eq!(SecretBytes::default().expose_hex(), "");
    }
}
