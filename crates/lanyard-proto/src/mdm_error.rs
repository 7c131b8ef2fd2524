//! The error document an MDM server puts in a `403` body.
//!
//! Apple's schema (`mdm/errors/*.yaml`) defines one shape for every such error: a JSON (or XML
//! property list) document with a required `code`, an optional `description` ("only used by
//! the client for logging purposes") and an optional `message` ("suitable for displaying to
//! the user … best-effort"), answered with a `Content-Type` saying which it is. Each documented
//! code has its own page; Lanyard sends:
//!
//! - `com.apple.well-known.failed` (`well-known.failed.yaml`, macOS 14.5+, iOS 17.5+): "returned
//!   when a device is doing well-known resource service discovery for account driven
//!   enrollments, and the server rejects the request" — every refusal at service discovery.
//! - [`ErrorCode::EnrollmentRefused`] at the enrollment `BaseURL`. Apple documents no code for
//!   refusing that request; its account-driven enrollment article only asks for an HTTP error,
//!   on which the device stops. Lanyard answers `403` with this same document shape and a code
//!   of its own, so the Mac's log gets the reason and the person, at best, the message.

use serde::{Deserialize, Serialize};

/// The `code` of an error document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// `com.apple.well-known.failed`: service discovery refused.
    #[serde(rename = "com.apple.well-known.failed")]
    WellKnownFailed,
    /// `org.lanyard.enrollment.refused`: Lanyard refuses an enrollment request at `BaseURL`
    /// (no Apple code exists for it).
    #[serde(rename = "org.lanyard.enrollment.refused")]
    EnrollmentRefused,
    /// `com.apple.unrecognized.device`: the device is not (or no longer) enrolled here; it
    /// unenrolls (ErrorUnrecognizedDevice, macOS 14+: use it instead of a 401).
    #[serde(rename = "com.apple.unrecognized.device")]
    UnrecognizedDevice,
}

impl ErrorCode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WellKnownFailed => "com.apple.well-known.failed",
            Self::EnrollmentRefused => "org.lanyard.enrollment.refused",
            Self::UnrecognizedDevice => "com.apple.unrecognized.device",
        }
    }
}

/// An error document: `{"code": …, "description": …, "message": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDocument {
    /// `code` (required).
    pub code: ErrorCode,
    /// `description`: for the device's log only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// `message`: shown to the person when the device can.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

impl ErrorDocument {
    /// A document whose description and message are the same text.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            code,
            description: Some(text.clone()),
            message: Some(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let d = ErrorDocument::new(ErrorCode::WellKnownFailed, "no such domain");
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"code":"com.apple.well-known.failed","description":"no such domain","message":"no such domain"}"#
        );
        let bare: ErrorDocument =
            serde_json::from_str(r#"{"code":"com.apple.well-known.failed"}"#).unwrap();
        assert_eq!(bare.code, ErrorCode::WellKnownFailed);
        assert_eq!(bare.message, None);
        for c in [ErrorCode::WellKnownFailed, ErrorCode::EnrollmentRefused] {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
    }
}
