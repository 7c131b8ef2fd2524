//! The error type for decoding and encoding device messages.

/// Why a device message could not be decoded (or a command encoded).
///
/// Messages name the offending key and never echo secrets; values quoted from the input are
/// shortened so a hostile body cannot flood logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The body is not a property list.
    #[error("malformed property list: {0}")]
    MalformedPlist(String),
    /// The property list is valid but its top level is not a dictionary.
    #[error("property list top level is {found}, expected a dictionary")]
    NotADictionary {
        /// The plist type that was found.
        found: &'static str,
    },
    /// A check-in body without `MessageType`.
    #[error("check-in message has no MessageType")]
    MissingMessageType,
    /// A check-in body whose `MessageType` Lanyard does not know.
    #[error("unknown check-in MessageType {0:?}")]
    UnknownMessageType(String),
    /// A key the message must carry is absent.
    #[error("{context}: required key {key} is missing")]
    MissingKey {
        /// The message being decoded (for example `TokenUpdate`).
        context: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// A key is present with the wrong plist type.
    #[error("{context}: key {key} must be {expected}, found {found}")]
    WrongType {
        /// The message being decoded.
        context: &'static str,
        /// The offending key.
        key: &'static str,
        /// The type the schema gives.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// A key has the right type but a value that cannot be accepted.
    #[error("{context}: key {key} is invalid: {reason}")]
    InvalidValue {
        /// The message being decoded.
        context: &'static str,
        /// The offending key.
        key: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Neither `UDID` nor `EnrollmentID` is present, so the request names no enrollment.
    #[error("{context}: no enrollment identity (neither UDID nor EnrollmentID is present)")]
    MissingIdentity {
        /// The message being decoded.
        context: &'static str,
    },
    /// Identity keys are present but cannot form an enrollment key.
    #[error("{context}: invalid enrollment identity: {reason}")]
    InvalidIdentity {
        /// The message being decoded.
        context: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A command report whose `Status` is not one Apple defines.
    #[error("unknown command Status {0:?}")]
    UnknownStatus(String),
    /// A value that cannot be written as an XML property list.
    #[error("cannot write XML property list: {0}")]
    Encode(String),
}

/// Longest excerpt of device input quoted in an error.
const MAX_QUOTED: usize = 64;

/// Shortens untrusted input before it is quoted in an error.
pub(crate) fn quote(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX_QUOTED).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_shortens_long_input() {
        assert_eq!(quote("abc"), "abc");
        let long = "x".repeat(500);
        let q = quote(&long);
        assert_eq!(q.chars().count(), MAX_QUOTED + 1);
        assert!(q.ends_with('…'));
    }
}
