use lanyard_store::StoreError;

/// Domain errors. Each variant maps to one HTTP status and one CLI exit message; the message is
/// safe to show to the caller (never a secret).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The input is malformed or breaks a rule (400/422).
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Missing or wrong credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// A device request from an identity that is not, or no longer, enrolled here (unknown,
    /// removed or checked out). Device endpoints answer `403` with
    /// `{"code":"com.apple.unrecognized.device"}`, which makes the device unenroll; Apple's
    /// ErrorUnrecognizedDevice ("Use this error instead of the server returning a 401
    /// response to cause an unenroll", macOS 14+).
    #[error("{0}")]
    UnrecognizedDevice(String),
    /// The request body is larger than this kind of request may be (413); nothing was stored.
    #[error("{0}")]
    TooLarge(String),
    /// Too many attempts (429); `retry_after_secs` becomes the answer's `Retry-After`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// An upstream service (Apple Business Manager) failed or answered garbage (502).
    #[error("{0}")]
    Upstream(String),
    /// The database is unreachable or gave no connection in time (503 with `Retry-After`):
    /// the request changed nothing and may be retried.
    #[error("the service is temporarily unavailable; try again shortly")]
    Unavailable(String),
    /// The storage backend failed (500). The store's error is the source, for the log.
    #[error("storage failed")]
    Store(#[source] StoreError),
    /// A certificate, key or CMS operation failed (500).
    #[error("PKI operation failed")]
    Pki(#[source] lanyard_pki::PkiError),
    /// An OpenSSL call made by the domain itself failed (500).
    #[error("OpenSSL operation failed")]
    OpenSsl(#[source] lanyard_pki::ErrorStack),
    /// A lower-level failure (encoding, decoding, hashing, an identity provider's library)
    /// while doing `context` (500). The cause stays attached as the source for the log; callers
    /// are told only that something failed inside the server.
    #[error("{context}")]
    Failed {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A broken invariant with no lower error behind it (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoreError {
    /// A lower-level failure while doing `context`, its cause kept as the source.
    pub fn failed(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        CoreError::Failed {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether this is a fault of the server (storage, PKI, a broken invariant) rather than
    /// something the caller can change: these are logged with their cause chain, and callers
    /// see only that the server failed.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            CoreError::Store(_)
                | CoreError::Pki(_)
                | CoreError::OpenSsl(_)
                | CoreError::Failed { .. }
                | CoreError::Internal(_)
        )
    }

    /// A store error from creating `what`; a conflict (its unique name or key already taken)
    /// says "`what` already exists".
    pub(crate) fn creating(what: String, e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => CoreError::Conflict(format!("{what} already exists")),
            other => other.into(),
        }
    }

    /// The error with its causes, for a log line: `what failed: why: lower cause`.
    pub fn chain(&self) -> ErrorChain<'_> {
        ErrorChain(self)
    }
}

/// Displays an error followed by its sources, separated by `: ` (a source whose text the
/// previous message already ends with is not repeated).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            let text = e.to_string();
            if !previous.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            previous = text;
            next = e.source();
        }
        Ok(())
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => CoreError::NotFound(what),
            StoreError::Conflict(what) => CoreError::Conflict(format!("already exists ({what})")),
            StoreError::Unavailable(why) => CoreError::Unavailable(why),
            StoreError::TooLarge(what) => CoreError::TooLarge(what),
            other => CoreError::Store(other),
        }
    }
}

impl From<lanyard_pki::PkiError> for CoreError {
    fn from(e: lanyard_pki::PkiError) -> Self {
        CoreError::Pki(e)
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl From<lanyard_pki::ErrorStack> for CoreError {
    fn from(e: lanyard_pki::ErrorStack) -> Self {
        CoreError::OpenSsl(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_every_cause_once() {
        let e = CoreError::Store(StoreError::Corrupt("bad row".into()));
        assert_eq!(e.to_string(), "storage failed");
        assert_eq!(
            e.chain().to_string(),
            "storage failed: stored data is corrupt: bad row"
        );
        let e = CoreError::failed(
            "reading the settings",
            lanyard_pki::PkiError::Verify("wrong".into()),
        );
        assert_eq!(
            e.chain().to_string(),
            "reading the settings: verification failed: wrong"
        );
        // A source whose text its parent already ends with is not repeated.
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner;
        let e = CoreError::failed("doing", Outer(Inner));
        assert_eq!(e.chain().to_string(), "doing: outer: inner");
        assert!(e.is_server_fault());
        assert!(!CoreError::Invalid("x".into()).is_server_fault());
    }
}
