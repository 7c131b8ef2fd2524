//! Errors of the simulated Mac: every failure names the enrollment step it happened in and,
//! when the server answered, its HTTP status and human message.

use std::fmt;

use serde::Serialize;

/// The steps of an account-driven User Enrollment, plus the command channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Building the simulated Mac (options, keys, HTTP client).
    Setup,
    /// `GET /.well-known/com.apple.remotemanagement`.
    Discovery,
    /// `POST BaseURL` with the signed MachineInfo (with or without a token).
    Enrollment,
    /// The web sign-in pages.
    SignIn,
    /// Reading and checking the signed enrollment profile.
    Profile,
    /// Obtaining the identity certificate by SCEP.
    Scep,
    /// Check-in `Authenticate`.
    Authenticate,
    /// Check-in `TokenUpdate` on the device channel.
    TokenUpdate,
    /// Check-in `TokenUpdate` on the user channel.
    UserTokenUpdate,
    /// Any other check-in message (for example `CheckOut`).
    CheckIn,
    /// The command channel (`ServerURL`).
    Command,
}

impl Step {
    /// How the step is named in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Setup => "setup",
            Step::Discovery => "discovery",
            Step::Enrollment => "enrollment",
            Step::SignIn => "sign-in",
            Step::Profile => "profile",
            Step::Scep => "SCEP",
            Step::Authenticate => "check-in Authenticate",
            Step::TokenUpdate => "check-in TokenUpdate (device channel)",
            Step::UserTokenUpdate => "check-in TokenUpdate (user channel)",
            Step::CheckIn => "check-in",
            Step::Command => "command channel",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the simulated Mac stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The server answered with a refusal (an HTTP error status).
    #[error("{step} refused ({status}): {message}")]
    Refused {
        /// Where.
        step: Step,
        /// The HTTP status.
        status: u16,
        /// The server's message (text of the page, JSON `message`/`error`, or the body).
        message: String,
    },
    /// Anything else: transport errors, malformed answers, failed checks on the Mac's side.
    #[error("{step} failed: {message}")]
    Failed {
        /// Where.
        step: Step,
        /// What went wrong.
        message: String,
    },
}

impl SimError {
    /// A failure that is not a server refusal.
    pub fn failed(step: Step, message: impl fmt::Display) -> Self {
        SimError::Failed {
            step,
            message: message.to_string(),
        }
    }

    /// A refusal by the server.
    pub fn refused(step: Step, status: u16, message: impl Into<String>) -> Self {
        SimError::Refused {
            step,
            status,
            message: message.into(),
        }
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            SimError::Refused { step, .. } | SimError::Failed { step, .. } => *step,
        }
    }

    /// The HTTP status, for a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            SimError::Refused { status, .. } => Some(*status),
            SimError::Failed { .. } => None,
        }
    }

    /// The message without the step prefix.
    pub fn message(&self) -> &str {
        match self {
            SimError::Refused { message, .. } | SimError::Failed { message, .. } => message,
        }
    }
}

/// Result of the simulated Mac's operations.
pub type Result<T> = std::result::Result<T, SimError>;

/// An error with its whole `source()` chain, `outer: inner: innermost` (reqwest's own
/// `Display` hides the interesting part, e.g. the TLS failure, in the sources).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Attach a step to errors of other kinds.
pub trait StepContext<T> {
    /// Map the error to [`SimError::Failed`] at `step`.
    fn at(self, step: Step) -> Result<T>;
    /// Map the error to [`SimError::Failed`] at `step`, prefixed with `what`.
    fn at_doing(self, step: Step, what: &str) -> Result<T>;
}

impl<T, E: std::error::Error + 'static> StepContext<T> for std::result::Result<T, E> {
    fn at(self, step: Step) -> Result<T> {
        self.map_err(|e| SimError::failed(step, error_chain(&e)))
    }

    fn at_doing(self, step: Step, what: &str) -> Result<T> {
        self.map_err(|e| SimError::failed(step, format!("{what}: {}", error_chain(&e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_step_and_status() {
        let e = SimError::refused(
            Step::SignIn,
            403,
            "Corporate devices cannot be enrolled here",
        );
        assert_eq!(
            e.to_string(),
            "sign-in refused (403): Corporate devices cannot be enrolled here"
        );
        assert_eq!(e.status(), Some(403));
        assert_eq!(e.step(), Step::SignIn);
        let e = SimError::failed(Step::Scep, "FAILURE (badRequest)");
        assert_eq!(e.to_string(), "SCEP failed: FAILURE (badRequest)");
        assert_eq!(e.status(), None);
    }
}
