//! Conversions between OpenSSL ASN.1 times and unix seconds.

use openssl::asn1::{Asn1Time, Asn1TimeRef};

use crate::error::{PkiError, Result};

/// Unix seconds for an ASN.1 time (UTCTime or GeneralizedTime).
pub(crate) fn asn1_to_unix(t: &Asn1TimeRef) -> Result<i64> {
    let epoch = Asn1Time::from_unix(0)?;
    let diff = epoch.diff(t)?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

/// The current time in unix seconds.
pub(crate) fn now_unix() -> Result<i64> {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| PkiError::InvalidInput("system clock is before 1970".into()))?;
    i64::try_from(d.as_secs()).map_err(|_| PkiError::InvalidInput("system clock overflow".into()))
}

/// An ASN.1 time `offset_secs` from now (may be negative).
pub(crate) fn from_now(offset_secs: i64) -> Result<Asn1Time> {
    Ok(Asn1Time::from_unix(now_unix()? + offset_secs)?)
}
