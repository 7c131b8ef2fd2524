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
    #[error("storage: {0}")]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => CoreError::NotFound(what),
            StoreError::Conflict(what) => CoreError::Conflict(format!("already exists ({what})")),
            StoreError::Unavailable(why) => CoreError::Unavailable(why),
            other => CoreError::Store(other),
        }
    }
}

impl From<lanyard_pki::PkiError> for CoreError {
    fn from(e: lanyard_pki::PkiError) -> Self {
        CoreError::Internal(format!("PKI: {e}"))
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl From<lanyard_pki::openssl::error::ErrorStack> for CoreError {
    fn from(e: lanyard_pki::openssl::error::ErrorStack) -> Self {
        CoreError::Internal(format!("OpenSSL: {e}"))
    }
}
