//! OAuth 1.0a request signing (RFC 5849), HMAC-SHA1 only: what Apple's Device Assignment
//! service wants on `GET /session` (with `realm="ADM"`; confirmed against public DEP clients).
//!
//! The signature base string is `METHOD&enc(base URL)&enc(sorted, encoded parameters)`, where
//! the parameters are the request's query parameters plus the `oauth_*` protocol parameters
//! (the `realm` and the signature itself excluded), and the key is
//! `enc(consumer secret)&enc(token secret)`.

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::AbmError;

/// RFC 5849 §3.6: everything but ALPHA, DIGIT, `-`, `.`, `_`, `~` is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// RFC 5849 §3.6 percent-encoding.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The four OAuth values of an ABM server token. `Debug` shows only the consumer key.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OAuthCredentials {
    pub consumer_key: String,
    pub consumer_secret: String,
    pub access_token: String,
    pub access_secret: String,
}

impl std::fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("consumer_key", &self.consumer_key)
            .finish_non_exhaustive()
    }
}

/// The signature base string (RFC 5849 §3.4.1) of a request with these protocol parameters.
pub fn base_string(
    method: &str,
    url: &str,
    oauth_params: &[(&str, &str)],
) -> Result<String, AbmError> {
    let parsed = url::Url::parse(url).map_err(|e| AbmError::Config(format!("URL {url:?}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| AbmError::Config(format!("URL {url:?} has no host")))?
        .to_ascii_lowercase();
    let scheme = parsed.scheme().to_ascii_lowercase();
    let base_uri = match parsed.port() {
        Some(p) => format!("{scheme}://{host}:{p}{}", parsed.path()),
        None => format!("{scheme}://{host}{}", parsed.path()),
    };
    let mut params: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (encode(&k), encode(&v)))
        .collect();
    params.extend(oauth_params.iter().map(|(k, v)| (encode(k), encode(v))));
    params.sort();
    let joined = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    Ok(format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        encode(&base_uri),
        encode(&joined)
    ))
}

/// HMAC-SHA1 of the base string, base64.
pub fn signature(
    base: &str,
    consumer_secret: &str,
    token_secret: &str,
) -> Result<String, AbmError> {
    let key = format!("{}&{}", encode(consumer_secret), encode(token_secret));
    let mac = lanyard_pki::hmac_sha1(key.as_bytes(), base.as_bytes())
        .map_err(|e| AbmError::Config(format!("HMAC-SHA1: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(mac))
}

/// The `Authorization: OAuth …` header for a request, with the given nonce and timestamp
/// (random and current in real use; fixed in tests), including `oauth_version="1.0"`.
pub fn authorization_header(
    method: &str,
    url: &str,
    creds: &OAuthCredentials,
    realm: Option<&str>,
    nonce: &str,
    timestamp: u64,
) -> Result<String, AbmError> {
    header_with(method, url, creds, realm, nonce, timestamp, Some("1.0"))
}

/// [`authorization_header`] with the optional `oauth_version` chosen (RFC 5849 makes it
/// optional; its own §1.2 example omits it).
pub fn header_with(
    method: &str,
    url: &str,
    creds: &OAuthCredentials,
    realm: Option<&str>,
    nonce: &str,
    timestamp: u64,
    version: Option<&str>,
) -> Result<String, AbmError> {
    let ts = timestamp.to_string();
    let mut params = vec![
        ("oauth_consumer_key", creds.consumer_key.as_str()),
        ("oauth_nonce", nonce),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", ts.as_str()),
        ("oauth_token", creds.access_token.as_str()),
    ];
    if let Some(v) = version {
        params.push(("oauth_version", v));
    }
    let base = base_string(method, url, &params)?;
    let sig = signature(&base, &creds.consumer_secret, &creds.access_secret)?;
    let mut parts = Vec::new();
    if let Some(realm) = realm {
        parts.push(format!("realm=\"{}\"", encode(realm)));
    }
    for (k, v) in params
        .iter()
        .copied()
        .chain([("oauth_signature", sig.as_str())])
    {
        parts.push(format!("{}=\"{}\"", encode(k), encode(v)));
    }
    Ok(format!("OAuth {}", parts.join(", ")))
}

/// The parameters of an `Authorization: OAuth …` header, decoded (realm included).
pub fn parse_authorization(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.trim().strip_prefix("OAuth ")?;
    let mut out = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
        let k = percent_encoding::percent_decode_str(k.trim())
            .decode_utf8()
            .ok()?
            .into_owned();
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .ok()?
            .into_owned();
        out.push((k, v));
    }
    Some(out)
}

/// Checks a request's OAuth header against the credentials (what Apple — or the test kit's
/// fake ABM — does). Returns a reason when it does not verify.
pub fn verify_authorization(
    method: &str,
    url: &str,
    header: &str,
    creds: &OAuthCredentials,
) -> Result<(), String> {
    let params = parse_authorization(header).ok_or("malformed OAuth header")?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if get("oauth_signature_method") != Some("HMAC-SHA1") {
        return Err("signature method is not HMAC-SHA1".into());
    }
    if get("oauth_consumer_key") != Some(creds.consumer_key.as_str()) {
        return Err("unknown consumer key".into());
    }
    if get("oauth_token") != Some(creds.access_token.as_str()) {
        return Err("unknown access token".into());
    }
    let sig = get("oauth_signature").ok_or("no signature")?;
    let signed: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "realm" && k != "oauth_signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let base = base_string(method, url, &signed).map_err(|e| e.to_string())?;
    let expected = signature(&base, &creds.consumer_secret, &creds.access_secret)
        .map_err(|e| e.to_string())?;
    if lanyard_pki::constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
        Ok(())
    } else {
        Err("signature does not verify".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc_creds() -> OAuthCredentials {
        OAuthCredentials {
            consumer_key: "dpf43f3p2l4k3l03".into(),
            consumer_secret: "kd94hf93k423kf44".into(),
            access_token: "nnch734d00sl2jdk".into(),
            access_secret: "pfkkdhi9sl3r4s00".into(),
        }
    }

    /// OAuth Core 1.0 Appendix A.5 (the same photo example, with `oauth_version`).
    #[test]
    fn oauth_core_appendix_a_vector() {
        let header = authorization_header(
            "GET",
            "http://photos.example.net/photos?size=original&file=vacation.jpg",
            &rfc_creds(),
            None,
            "kllo9940pd9333jh",
            1191242096,
        )
        .unwrap();
        assert!(
            header.contains("oauth_signature=\"tR3%2BTy81lMeYAr%2FFid0kMTYa%2FWM%3D\""),
            "{header}"
        );
    }

    /// RFC 5849 §1.2: the photo-printing example's signed request.
    #[test]
    fn rfc5849_section_1_2_vector() {
        let header = header_with(
            "GET",
            "http://photos.example.net/photos?file=vacation.jpg&size=original",
            &rfc_creds(),
            Some("Photos"),
            "chapoH",
            137131202,
            None,
        )
        .unwrap();
        assert!(
            header.contains("oauth_signature=\"MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D\""),
            "{header}"
        );
        assert!(header.starts_with("OAuth realm=\"Photos\", "), "{header}");
        verify_authorization(
            "GET",
            "http://photos.example.net/photos?file=vacation.jpg&size=original",
            &header,
            &rfc_creds(),
        )
        .unwrap();
    }

    #[test]
    fn encoding_follows_rfc_3_6() {
        assert_eq!(encode("a b+c/~_-."), "a%20b%2Bc%2F~_-.");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn tampering_is_detected() {
        let creds = rfc_creds();
        let url = "https://mdmenrollment.apple.com/session";
        let header = authorization_header("GET", url, &creds, Some("ADM"), "n1", 1).unwrap();
        verify_authorization("GET", url, &header, &creds).unwrap();
        assert!(verify_authorization("POST", url, &header, &creds).is_err());
        let mut other = creds.clone();
        other.access_secret = "different".into();
        assert!(verify_authorization("GET", url, &header, &other).is_err());
        assert!(verify_authorization("GET", url, "Bearer x", &creds).is_err());
        assert!(!format!("{creds:?}").contains("kd94hf93k423kf44"));
    }
}
