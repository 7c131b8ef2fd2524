//! Account-driven enrollment service discovery.
//!
//! The device takes the domain of the account the person typed (`ann@example.com` →
//! `example.com`) and asks `GET https://<domain>/.well-known/com.apple.remotemanagement` with
//! query parameters `user-identifier` and `model-family`. The answer is the JSON document
//! [`ServiceDiscovery`]. Apple's "Implementing the simple authentication account-driven
//! enrollment flow" says the device splits the identifier at the **last** `@` and fails when a
//! part is empty or the domain is not a fully qualified domain name; [`UserIdentifier::parse`]
//! applies the same rule so the server agrees with the device about the domain.
//!
//! When the domain does not answer (an HTTP error status), the device asks Apple, which answers
//! from the service-discovery URL the MDM registered with Apple Business Manager; the same Apple
//! article gives iOS 18.2 / macOS 15.2 as the first versions that do this.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The well-known path the device asks on the account's domain.
pub const WELL_KNOWN_PATH: &str = "/.well-known/com.apple.remotemanagement";

/// The service-discovery document: `{"Servers":[{"Version":"mdm-byod","BaseURL":"…"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDiscovery {
    /// `Servers`: Apple asks for exactly one entry in the current release.
    #[serde(rename = "Servers")]
    pub servers: Vec<DiscoveryServer>,
}

/// One entry of `Servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryServer {
    /// `Version`: which enrollment the device performs.
    #[serde(rename = "Version")]
    pub version: DiscoveryVersion,
    /// `BaseURL`: where the device `POST`s its MachineInfo to enroll.
    #[serde(rename = "BaseURL")]
    pub base_url: String,
}

/// The `Version` of a discovery entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DiscoveryVersion {
    /// `mdm-byod`: account-driven **User** Enrollment.
    #[serde(rename = "mdm-byod")]
    MdmByod,
    /// `mdm-adde`: account-driven **Device** Enrollment.
    #[serde(rename = "mdm-adde")]
    MdmAdde,
}

impl DiscoveryVersion {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MdmByod => "mdm-byod",
            Self::MdmAdde => "mdm-adde",
        }
    }
}

impl ServiceDiscovery {
    /// The document for account-driven User Enrollment at `base_url`.
    pub fn byod(base_url: impl Into<String>) -> Self {
        Self {
            servers: vec![DiscoveryServer {
                version: DiscoveryVersion::MdmByod,
                base_url: base_url.into(),
            }],
        }
    }
}

/// The `model-family` query parameter of the well-known request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelFamily {
    /// `AppleTV`.
    AppleTV,
    /// `iPad`.
    #[serde(rename = "iPad")]
    IPad,
    /// `iPhone`.
    #[serde(rename = "iPhone")]
    IPhone,
    /// `Mac`.
    Mac,
    /// `RealityDevice` (Vision Pro).
    RealityDevice,
    /// `Watch`.
    Watch,
}

impl ModelFamily {
    /// All families Apple lists.
    pub const ALL: [ModelFamily; 6] = [
        Self::AppleTV,
        Self::IPad,
        Self::IPhone,
        Self::Mac,
        Self::RealityDevice,
        Self::Watch,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppleTV => "AppleTV",
            Self::IPad => "iPad",
            Self::IPhone => "iPhone",
            Self::Mac => "Mac",
            Self::RealityDevice => "RealityDevice",
            Self::Watch => "Watch",
        }
    }

    /// Parses the wire string (exact match); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The family a MachineInfo `PRODUCT` (a model identifier such as `Mac15,3`,
    /// `MacBookPro18,3`, `iPhone17,2`) names, when its prefix says. Apple's identifiers for
    /// the other families start with the family's name (`iPhone`, `iPad`, `AppleTV`,
    /// `Watch`, `RealityDevice`; `iPod` counts as `iPhone`); Macs with `Mac`, `iMac` or
    /// `VirtualMac`. `None` for anything else (virtual machines of other hypervisors report
    /// their own names, e.g. `VMware7,1`), so a caller refusing non-Macs should refuse only
    /// the families it recognises.
    pub fn of_product(product: &str) -> Option<Self> {
        let p = product.trim();
        const PREFIXES: [(&str, ModelFamily); 9] = [
            ("iPhone", ModelFamily::IPhone),
            ("iPod", ModelFamily::IPhone),
            ("iPad", ModelFamily::IPad),
            ("AppleTV", ModelFamily::AppleTV),
            ("Watch", ModelFamily::Watch),
            ("RealityDevice", ModelFamily::RealityDevice),
            ("Mac", ModelFamily::Mac),
            ("iMac", ModelFamily::Mac),
            ("VirtualMac", ModelFamily::Mac),
        ];
        PREFIXES
            .into_iter()
            .find(|(prefix, _)| p.starts_with(prefix))
            .map(|(_, f)| f)
    }
}

/// Why a `user-identifier` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdentifierError {
    /// Nothing was given.
    #[error("user identifier is empty")]
    Empty,
    /// No `@`.
    #[error("user identifier has no '@' (expected user@domain)")]
    MissingAt,
    /// Nothing before the last `@`.
    #[error("user identifier has an empty user part")]
    EmptyLocalPart,
    /// The user part holds characters an account name cannot hold.
    #[error("user identifier's user part contains whitespace or control characters")]
    InvalidLocalPart,
    /// The domain is not a fully qualified domain name.
    #[error("user identifier's domain is not a fully qualified domain name: {0}")]
    InvalidDomain(&'static str),
    /// Longer than an e-mail address may be.
    #[error("user identifier is longer than {MAX_LEN} characters")]
    TooLong,
}

/// Longest accepted identifier (the RFC 5321 path limit for an address).
pub const MAX_LEN: usize = 254;

/// A parsed `user-identifier` (`user@domain`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserIdentifier {
    /// The identifier as given, trimmed of surrounding whitespace.
    original: String,
    /// Position of the last `@` in `original`.
    at: usize,
    /// The domain, lower-cased, without a trailing dot.
    domain: String,
}

impl UserIdentifier {
    /// Parses `user@domain`, splitting at the last `@` as the device does.
    ///
    /// The domain is normalised to lower case without a trailing dot and must be a fully
    /// qualified domain name: at least two labels, each 1–63 of `a-z`, `0-9`, `-`, not starting or
    /// ending with `-`, 253 characters at most. Internationalised domains must be given in
    /// their ASCII (`xn--`) form.
    pub fn parse(input: &str) -> Result<Self, UserIdentifierError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(UserIdentifierError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(UserIdentifierError::TooLong);
        }
        let at = s.rfind('@').ok_or(UserIdentifierError::MissingAt)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() {
            return Err(UserIdentifierError::EmptyLocalPart);
        }
        if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UserIdentifierError::InvalidLocalPart);
        }
        let domain = normalise_domain(domain)?;
        Ok(Self {
            original: s.to_owned(),
            at,
            domain,
        })
    }

    /// The identifier as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The part before the last `@`, as given.
    pub fn local_part(&self) -> &str {
        &self.original[..self.at]
    }

    /// The domain, lower-cased, without a trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `local@domain` with the domain normalised (the local part keeps its case).
    pub fn normalised(&self) -> String {
        format!("{}@{}", self.local_part(), self.domain)
    }
}

impl fmt::Display for UserIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl std::str::FromStr for UserIdentifier {
    type Err = UserIdentifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn normalise_domain(domain: &str) -> Result<String, UserIdentifierError> {
    use UserIdentifierError::InvalidDomain;
    let d = domain.strip_suffix('.').unwrap_or(domain);
    if d.is_empty() {
        return Err(InvalidDomain("empty"));
    }
    if !d.is_ascii() {
        return Err(InvalidDomain("not ASCII (use the xn-- form)"));
    }
    if d.len() > 253 {
        return Err(InvalidDomain("longer than 253 characters"));
    }
    let d = d.to_ascii_lowercase();
    let mut labels = 0usize;
    for label in d.split('.') {
        labels += 1;
        if label.is_empty() {
            return Err(InvalidDomain("empty label"));
        }
        if label.len() > 63 {
            return Err(InvalidDomain("label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(InvalidDomain(
                "label with characters other than a-z, 0-9, -",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(InvalidDomain("label starts or ends with '-'"));
        }
    }
    if labels < 2 {
        return Err(InvalidDomain("a single label is not fully qualified"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_json_shape() {
        let doc = ServiceDiscovery::byod("https://mdm.example.com/enroll");
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            json,
            r#"{"Servers":[{"Version":"mdm-byod","BaseURL":"https://mdm.example.com/enroll"}]}"#
        );
        let back: ServiceDiscovery = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
        let adde: ServiceDiscovery =
            serde_json::from_str(r#"{"Servers":[{"Version":"mdm-adde","BaseURL":"x"}]}"#).unwrap();
        assert_eq!(adde.servers[0].version, DiscoveryVersion::MdmAdde);
        assert_eq!(DiscoveryVersion::MdmAdde.as_str(), "mdm-adde");
    }

    #[test]
    fn model_family_strings() {
        for f in ModelFamily::ALL {
            assert_eq!(ModelFamily::parse(f.as_str()), Some(f));
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.as_str())
            );
        }
        assert_eq!(ModelFamily::parse("mac"), None);
    }

    #[test]
    fn model_family_of_product() {
        for (product, want) in [
            ("Mac15,3", Some(ModelFamily::Mac)),
            ("MacBookPro18,3", Some(ModelFamily::Mac)),
            ("Macmini9,1", Some(ModelFamily::Mac)),
            ("iMac21,1", Some(ModelFamily::Mac)),
            ("VirtualMac2,1", Some(ModelFamily::Mac)),
            ("iPhone17,2", Some(ModelFamily::IPhone)),
            ("iPod9,1", Some(ModelFamily::IPhone)),
            ("iPad13,4", Some(ModelFamily::IPad)),
            ("AppleTV14,1", Some(ModelFamily::AppleTV)),
            ("Watch7,1", Some(ModelFamily::Watch)),
            ("RealityDevice14,1", Some(ModelFamily::RealityDevice)),
            ("VMware7,1", None),
            ("", None),
        ] {
            assert_eq!(ModelFamily::of_product(product), want, "{product}");
        }
    }

    #[test]
    fn parses_and_normalises() {
        let u = UserIdentifier::parse("  Ann.Lee@Example.COM. ").unwrap();
        assert_eq!(u.as_str(), "Ann.Lee@Example.COM.");
        assert_eq!(u.local_part(), "Ann.Lee");
        assert_eq!(u.domain(), "example.com");
        assert_eq!(u.normalised(), "Ann.Lee@example.com");
        assert_eq!(u.to_string(), "Ann.Lee@Example.COM.");
        let sub: UserIdentifier = "a@mdm.eu-west.example.co.uk".parse().unwrap();
        assert_eq!(sub.domain(), "mdm.eu-west.example.co.uk");
    }

    #[test]
    fn splits_at_last_at() {
        let u = UserIdentifier::parse("\"odd@local\"@example.com").unwrap();
        assert_eq!(u.local_part(), "\"odd@local\"");
        assert_eq!(u.domain(), "example.com");
    }

    #[test]
    fn refuses_invalid() {
        use UserIdentifierError::*;
        let cases: &[(&str, UserIdentifierError)] = &[
            ("", Empty),
            ("   ", Empty),
            ("ann.example.com", MissingAt),
            ("@example.com", EmptyLocalPart),
            ("a b@example.com", InvalidLocalPart),
            ("ann@", InvalidDomain("empty")),
            (
                "ann@localhost",
                InvalidDomain("a single label is not fully qualified"),
            ),
            ("ann@example..com", InvalidDomain("empty label")),
            ("ann@-x.com", InvalidDomain("label starts or ends with '-'")),
            (
                "ann@exa_mple.com",
                InvalidDomain("label with characters other than a-z, 0-9, -"),
            ),
            (
                "ann@exämple.com",
                InvalidDomain("not ASCII (use the xn-- form)"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(UserIdentifier::parse(input).as_ref(), Err(want), "{input}");
        }
        let long = format!("a@{}.com", "b".repeat(300));
        assert_eq!(UserIdentifier::parse(&long), Err(TooLong));
        let long_label = format!("a@{}.com", "b".repeat(64));
        assert_eq!(
            UserIdentifier::parse(&long_label),
            Err(InvalidDomain("label longer than 63 characters"))
        );
        assert!(!UserIdentifierError::MissingAt.to_string().is_empty());
    }
}
