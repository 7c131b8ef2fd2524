//! Base64 fields of API requests (`#[serde(with = "crate::b64")]`): standard alphabet,
//! surrounding whitespace ignored.

use base64::Engine;
use serde::{Deserialize, Deserializer};

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(serde::de::Error::custom)
}
