//! Enrollment settings: the runtime switches an administrator edits from the portal, API or CLI.
//! Stored as one JSON document named `enrollment`; missing fields take their defaults, so older
//! documents keep working when a setting is added.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::{Actor, CoreError, Lanyard, Result};
use lanyard_store::Audit;

const SETTINGS_NAME: &str = "enrollment";

/// How the device's ownership is decided during account-driven enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OwnershipMode {
    /// Ask the person (Employee / Corporate / Shared); only Employee may enroll a personal Mac.
    Prompt,
    /// Every enrollment is Employee-owned without asking.
    Employee,
}

impl std::str::FromStr for OwnershipMode {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "prompt" => Ok(OwnershipMode::Prompt),
            "employee" => Ok(OwnershipMode::Employee),
            "corporate" | "shared" => Err(CoreError::Invalid(format!(
                "ownership `{s}` cannot be fixed: account-driven User Enrollment is for \
                 personal (Employee) devices; use `prompt` or `employee`"
            ))),
            _ => Err(CoreError::Invalid(format!(
                "unknown ownership mode `{s}`; use `prompt` or `employee`"
            ))),
        }
    }
}

/// Whether enrollment profiles install Lanyard's root CA (a `com.apple.security.root`
/// payload). Apple's certificate guide: a device must trust the MDM server's TLS chain, and
/// certificate payloads install before the MDM payload; a chain that is publicly trusted
/// needs no payload, and a personal Mac should not be given a private root for no purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrustProfile {
    /// Install it only when Lanyard serves its own TLS certificate (issued by its CA, so no
    /// device trusts it otherwise); not when the operator gives a certificate (`--tls-cert`)
    /// or terminates TLS in front of Lanyard (`--behind-proxy`), which are taken to be
    /// publicly trusted.
    Auto,
    /// Always install it (the operator's chain ends at Lanyard's CA or another private root
    /// devices already trust through Lanyard's).
    Always,
    /// Never install it.
    Never,
}

impl TrustProfile {
    /// The setting's value as typed.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustProfile::Auto => "auto",
            TrustProfile::Always => "always",
            TrustProfile::Never => "never",
        }
    }

    /// Whether a profile installs the root, given whether Lanyard serves its self-issued TLS
    /// certificate.
    pub fn installs(self, self_issued_tls: bool) -> bool {
        match self {
            TrustProfile::Auto => self_issued_tls,
            TrustProfile::Always => true,
            TrustProfile::Never => false,
        }
    }
}

impl std::str::FromStr for TrustProfile {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(TrustProfile::Auto),
            "always" => Ok(TrustProfile::Always),
            "never" => Ok(TrustProfile::Never),
            _ => Err(CoreError::Invalid(format!(
                "unknown trust profile mode `{s}`; use auto, always or never"
            ))),
        }
    }
}

/// Default silence after which an enrollment that never checked out is marked inactive.
pub const DEFAULT_INACTIVE_AFTER_DAYS: u32 = 90;
/// The longest silence the setting accepts (ten years).
pub const MAX_INACTIVE_AFTER_DAYS: u32 = 3650;

/// Parses the `inactive-after-days` setting: 0 (never) or 1 to 3650 days.
pub fn parse_inactive_after_days(s: &str) -> Result<u32> {
    let days: u32 = s.trim().parse().map_err(|_| {
        CoreError::Invalid(format!(
            "`{s}` is not a number of days; use 0 (never) or 1 to {MAX_INACTIVE_AFTER_DAYS}"
        ))
    })?;
    check_inactive_after_days(days)?;
    Ok(days)
}

fn check_inactive_after_days(days: u32) -> Result<()> {
    if days > MAX_INACTIVE_AFTER_DAYS {
        return Err(CoreError::Invalid(format!(
            "inactive-after-days is at most {MAX_INACTIVE_AFTER_DAYS} (0 turns it off)"
        )));
    }
    Ok(())
}

/// The macOS version type is the protocol crate's; this checks it makes sense as a minimum.
pub use lanyard_proto::OsVersion as MacosVersion;

/// Parses a minimum macOS version such as `15.2`, refusing nonsense like `9.0`.
pub fn parse_min_version(s: &str) -> Result<MacosVersion> {
    let v = MacosVersion::parse(s).map_err(|_| {
        CoreError::Invalid(format!(
            "`{s}` is not a macOS version; use MAJOR.MINOR[.PATCH], e.g. 15.2"
        ))
    })?;
    check_min_version(&v)?;
    Ok(v)
}

fn check_min_version(v: &MacosVersion) -> Result<()> {
    if v.major() < 14 {
        return Err(CoreError::Invalid(format!(
            "macOS {v} is below what account-driven User Enrollment supports (macOS 14 or later)"
        )));
    }
    Ok(())
}

/// The enrollment settings (MaaS360's model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EnrollmentSettings {
    /// Default ownership mode: `prompt` (the default) asks the person; `employee` fixes it.
    pub ownership_mode: OwnershipMode,
    /// User enrollment mode "manage only corporate resources" (on by default).
    pub manage_only_corporate_resources: bool,
    /// Use the user's email address as their managed Apple ID (on by default).
    pub use_email_as_managed_apple_id: bool,
    /// Minimum macOS version for account-driven enrollment (default 15.2).
    #[schema(value_type = String, example = "15.2")]
    pub min_macos_version: MacosVersion,
    /// Verified managed domains: only users of these domains may enroll.
    pub managed_domains: Vec<String>,
    /// Whether enrollment profiles install Lanyard's root CA: `auto` (the default: only while
    /// Lanyard serves its self-issued TLS certificate), `always` or `never`.
    pub install_trust_profile: TrustProfile,
    /// Days without any request after which an enrollment that never checked out is marked
    /// `inactive` (default 90; 0 never marks one). Its next request makes it active again.
    pub inactive_after_days: u32,
}

impl Default for EnrollmentSettings {
    fn default() -> Self {
        Self {
            ownership_mode: OwnershipMode::Prompt,
            manage_only_corporate_resources: true,
            use_email_as_managed_apple_id: true,
            min_macos_version: MacosVersion::DEFAULT_MACOS_MINIMUM,
            managed_domains: Vec::new(),
            install_trust_profile: TrustProfile::Auto,
            inactive_after_days: DEFAULT_INACTIVE_AFTER_DAYS,
        }
    }
}

/// A partial update: absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub ownership_mode: Option<OwnershipMode>,
    pub manage_only_corporate_resources: Option<bool>,
    pub use_email_as_managed_apple_id: Option<bool>,
    #[schema(value_type = Option<String>)]
    pub min_macos_version: Option<MacosVersion>,
    pub managed_domains: Option<Vec<String>>,
    pub install_trust_profile: Option<TrustProfile>,
    pub inactive_after_days: Option<u32>,
}

/// The keys `lanyard settings set KEY VALUE` understands, in display order.
pub const SETTING_KEYS: &[&str] = &[
    "ownership-mode",
    "manage-only-corporate-resources",
    "use-email-as-managed-apple-id",
    "min-macos-version",
    "managed-domains",
    "install-trust-profile",
    "inactive-after-days",
];

impl SettingsPatch {
    /// Builds a patch from a CLI `KEY VALUE` pair.
    pub fn from_key_value(key: &str, value: &str) -> Result<Self> {
        let mut p = SettingsPatch::default();
        match key {
            "ownership-mode" => p.ownership_mode = Some(value.parse()?),
            "manage-only-corporate-resources" => {
                p.manage_only_corporate_resources = Some(parse_bool(key, value)?)
            }
            "use-email-as-managed-apple-id" => {
                p.use_email_as_managed_apple_id = Some(parse_bool(key, value)?)
            }
            "min-macos-version" => p.min_macos_version = Some(parse_min_version(value)?),
            "managed-domains" => {
                p.managed_domains = Some(
                    value
                        .split([',', ' '])
                        .filter(|d| !d.trim().is_empty())
                        .map(|d| d.trim().to_string())
                        .collect(),
                )
            }
            "install-trust-profile" => p.install_trust_profile = Some(value.parse()?),
            "inactive-after-days" => {
                p.inactive_after_days = Some(parse_inactive_after_days(value)?)
            }
            _ => {
                return Err(CoreError::Invalid(format!(
                    "unknown setting `{key}`; known settings: {}",
                    SETTING_KEYS.join(", ")
                )))
            }
        }
        Ok(p)
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(CoreError::Invalid(format!(
            "`{key}` takes true or false, not `{v}`"
        ))),
    }
}

/// Normalises and checks a DNS domain name (lowercase, no trailing dot, at least two labels).
pub fn normalize_domain(raw: &str) -> Result<String> {
    let d = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| CoreError::Invalid(format!("`{raw}` is not a valid domain: {why}"));
    if d.is_empty() || d.len() > 253 {
        return Err(bad("length must be 1 to 253 characters"));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(bad("it needs at least two labels, e.g. example.com"));
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err(bad("each label must be 1 to 63 characters"));
        }
        if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || l.starts_with('-')
            || l.ends_with('-')
        {
            return Err(bad(
                "labels may hold only letters, digits and inner hyphens",
            ));
        }
    }
    Ok(d)
}

impl EnrollmentSettings {
    fn apply(&mut self, patch: SettingsPatch) -> Result<()> {
        if let Some(v) = patch.ownership_mode {
            self.ownership_mode = v;
        }
        if let Some(v) = patch.manage_only_corporate_resources {
            self.manage_only_corporate_resources = v;
        }
        if let Some(v) = patch.use_email_as_managed_apple_id {
            self.use_email_as_managed_apple_id = v;
        }
        if let Some(v) = patch.min_macos_version {
            check_min_version(&v)?;
            self.min_macos_version = v;
        }
        if let Some(v) = patch.install_trust_profile {
            self.install_trust_profile = v;
        }
        if let Some(v) = patch.inactive_after_days {
            check_inactive_after_days(v)?;
            self.inactive_after_days = v;
        }
        if let Some(domains) = patch.managed_domains {
            let mut out: Vec<String> = Vec::new();
            for d in domains {
                let d = normalize_domain(&d)?;
                if !out.contains(&d) {
                    out.push(d);
                }
            }
            out.sort();
            self.managed_domains = out;
        }
        Ok(())
    }

    /// Whether an email's domain is one of the verified managed domains.
    pub fn is_managed_email(&self, email: &str) -> bool {
        email
            .rsplit_once('@')
            .map(|(_, d)| {
                let d = d.to_ascii_lowercase();
                self.managed_domains.contains(&d)
            })
            .unwrap_or(false)
    }
}

impl Lanyard {
    /// The current enrollment settings (defaults when never saved).
    pub async fn enrollment_settings(&self) -> Result<EnrollmentSettings> {
        match self.store.get_setting(SETTINGS_NAME).await? {
            None => Ok(EnrollmentSettings::default()),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| CoreError::failed("reading the stored enrollment settings", e)),
        }
    }

    /// Validates and applies a partial update; nothing is written when any field is invalid.
    pub async fn update_enrollment_settings(
        &self,
        actor: &Actor,
        patch: SettingsPatch,
    ) -> Result<EnrollmentSettings> {
        actor.require_write()?;
        let before = self.enrollment_settings().await?;
        let mut after = before.clone();
        after.apply(patch)?;
        let text = serde_json::to_string(&after)
            .map_err(|e| CoreError::failed("serialising settings", e))?;
        let audit = Audit::new(
            &actor.name,
            "settings.update",
            SETTINGS_NAME,
            json!({"before": before, "after": after}),
        );
        self.store.put_setting(SETTINGS_NAME, &text, &audit).await?;
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_versions() {
        let v = parse_min_version("15.2").unwrap();
        assert_eq!(v.to_string(), "15.2");
        assert!(parse_min_version("15.2.1").unwrap() > v);
        assert!(parse_min_version("26").unwrap() > v);
        for bad in ["", "15.", "x", "15.2.1.1", "-1", "9.0", "13.6", "15 .2"] {
            assert!(parse_min_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains() {
        assert_eq!(normalize_domain(" Example.COM. ").unwrap(), "example.com");
        for bad in ["example", "exa mple.com", "-a.com", "a..com", "@x.com", ""] {
            assert!(normalize_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patch_from_cli_and_unknown_fields() {
        let p = SettingsPatch::from_key_value("managed-domains", "a.com, b.org").unwrap();
        assert_eq!(p.managed_domains.unwrap(), ["a.com", "b.org"]);
        assert!(SettingsPatch::from_key_value("colour", "blue").is_err());
        assert!(SettingsPatch::from_key_value("ownership-mode", "corporate").is_err());
        assert!(SettingsPatch::from_key_value("use-email-as-managed-apple-id", "maybe").is_err());
        let err = serde_json::from_str::<SettingsPatch>(r#"{"colour":"blue"}"#);
        assert!(err.is_err());
        let s = EnrollmentSettings::default();
        assert_eq!(s.ownership_mode, OwnershipMode::Prompt);
        assert!(s.manage_only_corporate_resources && s.use_email_as_managed_apple_id);
        assert_eq!(s.min_macos_version.to_string(), "15.2");
    }

    #[test]
    fn trust_profile_and_inactivity() {
        let s = EnrollmentSettings::default();
        assert_eq!(s.install_trust_profile, TrustProfile::Auto);
        assert_eq!(s.inactive_after_days, 90);
        assert!(TrustProfile::Auto.installs(true));
        assert!(!TrustProfile::Auto.installs(false));
        assert!(TrustProfile::Always.installs(false));
        assert!(!TrustProfile::Never.installs(true));
        let p = SettingsPatch::from_key_value("install-trust-profile", "Never").unwrap();
        assert_eq!(p.install_trust_profile, Some(TrustProfile::Never));
        assert!(SettingsPatch::from_key_value("install-trust-profile", "sometimes").is_err());
        let p = SettingsPatch::from_key_value("inactive-after-days", "30").unwrap();
        assert_eq!(p.inactive_after_days, Some(30));
        assert_eq!(parse_inactive_after_days("0").unwrap(), 0);
        for bad in ["-1", "x", "3651", ""] {
            assert!(parse_inactive_after_days(bad).is_err(), "{bad}");
        }
        let mut s = EnrollmentSettings::default();
        assert!(s
            .apply(SettingsPatch {
                inactive_after_days: Some(4000),
                ..Default::default()
            })
            .is_err());
        // Documents saved before these settings existed read with the defaults.
        let old: EnrollmentSettings =
            serde_json::from_str(r#"{"ownership_mode":"employee"}"#).unwrap();
        assert_eq!(old.install_trust_profile, TrustProfile::Auto);
        assert_eq!(old.inactive_after_days, 90);
        assert_eq!(
            serde_json::to_value(TrustProfile::Always).unwrap(),
            serde_json::json!("always")
        );
    }

    #[test]
    fn apply_rejects_whole_patch_on_bad_domain() {
        let mut s = EnrollmentSettings::default();
        let r = s.apply(SettingsPatch {
            manage_only_corporate_resources: Some(false),
            managed_domains: Some(vec!["ok.com".into(), "bad domain".into()]),
            ..Default::default()
        });
        assert!(r.is_err());
        // apply mutates a copy in update_enrollment_settings; the stored value is untouched there.
        let mut s = EnrollmentSettings::default();
        s.apply(SettingsPatch {
            managed_domains: Some(vec!["B.com".into(), "a.com".into(), "b.com".into()]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.managed_domains, ["a.com", "b.com"]);
        assert!(s.is_managed_email("ann@A.com"));
        assert!(!s.is_managed_email("ann@c.com"));
    }
}
