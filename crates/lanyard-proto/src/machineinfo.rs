//! The MachineInfo property list a device `POST`s to the enrollment `BaseURL`, and OS versions.
//!
//! Only the plist is parsed here; unwrapping the CMS signature around it is `lanyard-pki`'s job.
//! Keys come from Apple's schema `other/machineinfo.yaml`. The schema marks `UDID`, `SERIAL`,
//! `PRODUCT`, `VERSION` and `OS_VERSION` as required, but a User Enrollment never sends `UDID` or
//! `SERIAL` (schema: `userenrollment.mode: forbidden`), and Apple's account-driven enrollment
//! article shows a body with only `LANGUAGE`, `PRODUCT` and `VERSION`; so only `PRODUCT` and
//! `VERSION` are required here and `OS_VERSION` is optional (a minimum-version gate must decide
//! what to do when it is absent).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ProtoError;
use crate::plistutil::{parse_dictionary, Fields};

/// A decoded MachineInfo body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineInfo {
    /// `UDID` (never sent for a User Enrollment).
    pub udid: Option<String>,
    /// `SERIAL` (never sent for a User Enrollment).
    pub serial: Option<String>,
    /// `PRODUCT`: the product type, for example `Mac15,3`.
    pub product: String,
    /// `VERSION`: the OS build, for example `24C101`.
    pub version: String,
    /// `OS_VERSION`: the OS version, for example `15.2` (macOS 14 and later).
    pub os_version: Option<String>,
    /// `SUPPLEMENTAL_BUILD_VERSION`.
    pub supplemental_build_version: Option<String>,
    /// `SUPPLEMENTAL_OS_VERSION_EXTRA`.
    pub supplemental_os_version_extra: Option<String>,
    /// `IMEI` (iOS, never under User Enrollment).
    pub imei: Option<String>,
    /// `MEID` (iOS, never under User Enrollment).
    pub meid: Option<String>,
    /// `LANGUAGE`: the selected language, for example `en-US`.
    pub language: Option<String>,
    /// `MDM_CAN_REQUEST_SOFTWARE_UPDATE`.
    pub mdm_can_request_software_update: Option<bool>,
    /// `PAIRING_TOKEN` (watch enrollment).
    pub pairing_token: Option<Vec<u8>>,
    /// `SOFTWARE_UPDATE_DEVICE_ID`: the model identifier for software-update look-ups.
    pub software_update_device_id: Option<String>,
}

impl MachineInfo {
    /// The parsed `OS_VERSION`: `Ok(None)` when absent, an error when present but unparsable.
    pub fn os_version(&self) -> Result<Option<OsVersion>, OsVersionError> {
        self.os_version.as_deref().map(OsVersion::parse).transpose()
    }

    /// The macOS version to gate on: `OS_VERSION` when the body has it (an error when it is
    /// present but unparsable), else the version the build `VERSION` belongs to
    /// ([`OsVersion::from_macos_build`]; `Ok(None)` when the build is not a macOS build
    /// number). Apple's account-driven enrollment article shows a body with only `LANGUAGE`,
    /// `PRODUCT` and `VERSION`, so the build is what a Mac is sure to send.
    pub fn macos_version(&self) -> Result<Option<OsVersion>, OsVersionError> {
        match self.os_version()? {
            Some(v) => Ok(Some(v)),
            None => Ok(OsVersion::from_macos_build(&self.version)),
        }
    }

    /// True when the body carries a hardware identifier (`UDID` or `SERIAL`), which a User
    /// Enrollment never sends.
    pub fn has_device_identifiers(&self) -> bool {
        self.udid.is_some() || self.serial.is_some()
    }
}

/// Decodes a MachineInfo plist (already unwrapped from its CMS signature).
pub fn decode_machine_info(bytes: &[u8]) -> Result<MachineInfo, ProtoError> {
    let dict = parse_dictionary(bytes)?;
    let f = Fields::new(&dict, "MachineInfo");
    Ok(MachineInfo {
        udid: f.opt_string("UDID")?,
        serial: f.opt_string("SERIAL")?,
        product: f.req_string("PRODUCT")?,
        version: f.req_string("VERSION")?,
        os_version: f.opt_string("OS_VERSION")?,
        supplemental_build_version: f.opt_string("SUPPLEMENTAL_BUILD_VERSION")?,
        supplemental_os_version_extra: f.opt_string("SUPPLEMENTAL_OS_VERSION_EXTRA")?,
        imei: f.opt_string("IMEI")?,
        meid: f.opt_string("MEID")?,
        language: f.opt_string("LANGUAGE")?,
        mdm_can_request_software_update: f.opt_bool("MDM_CAN_REQUEST_SOFTWARE_UPDATE")?,
        pairing_token: f.opt_data("PAIRING_TOKEN")?,
        software_update_device_id: f.opt_string("SOFTWARE_UPDATE_DEVICE_ID")?,
    })
}

/// Why an OS version string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsVersionError {
    /// Nothing was given.
    #[error("OS version is empty")]
    Empty,
    /// More than `major.minor.patch`.
    #[error("OS version has more than three components")]
    TooManyComponents,
    /// A component is empty, not decimal digits, or too large.
    #[error("OS version component {0:?} is not a number")]
    BadComponent(String),
}

/// An OS version: `major[.minor[.patch]]`, compared numerically with missing components as 0
/// (`15.2` == `15.2.0` < `15.10`). Display keeps the number of components it was written with.
#[derive(Debug, Clone, Copy)]
pub struct OsVersion {
    major: u32,
    minor: u32,
    patch: u32,
    components: u8,
}

impl OsVersion {
    /// Lanyard's default minimum macOS for account-driven User Enrollment (configurable
    /// elsewhere): 15.2.
    pub const DEFAULT_MACOS_MINIMUM: OsVersion = OsVersion::major_minor(15, 2);

    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
            components: 3,
        }
    }

    /// `major.minor`.
    pub const fn major_minor(major: u32, minor: u32) -> Self {
        Self {
            major,
            minor,
            patch: 0,
            components: 2,
        }
    }

    /// `major` alone.
    pub const fn major_only(major: u32) -> Self {
        Self {
            major,
            minor: 0,
            patch: 0,
            components: 1,
        }
    }

    /// Parses `14`, `15.2` or `15.2.1` (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<Self, OsVersionError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(OsVersionError::Empty);
        }
        let mut parts = [0u32; 3];
        let mut n = 0usize;
        for part in s.split('.') {
            if n == 3 {
                return Err(OsVersionError::TooManyComponents);
            }
            let ok =
                !part.is_empty() && part.len() <= 9 && part.bytes().all(|b| b.is_ascii_digit());
            parts[n] = part
                .parse()
                .ok()
                .filter(|_| ok)
                .ok_or_else(|| OsVersionError::BadComponent(crate::error::quote(part)))?;
            n += 1;
        }
        Ok(Self {
            major: parts[0],
            minor: parts[1],
            patch: parts[2],
            components: u8::try_from(n).unwrap_or(3),
        })
    }

    /// The macOS release a build number belongs to, as `major.minor` (no patch), or `None`
    /// when `build` is not a build number.
    ///
    /// A build reads `<N><L><n>[x]`: `N` the Darwin major version, `L` a capital letter, `n`
    /// digits, and a lower-case letter on betas and supplemental builds (`24C101` is macOS
    /// 15.2, `24C5089c` a 15.2 beta). The mapping follows Apple's numbering:
    ///
    /// - Darwin 20–24 are macOS 11–15 (`N − 9`); Darwin 25 is macOS 26, where Apple moved to
    ///   year numbers, and later Darwin majors are taken to keep that step (`N + 1`);
    ///   Darwin 4–19 are Mac OS X / macOS 10.0–10.15 (`10.(N − 4)`, and there the letter is
    ///   the patch: `19H2` is 10.15.7).
    /// - From macOS 11 on, the letter counts minor releases from `A` = `.0`: `24A` 15.0,
    ///   `24B` 15.1, `24C` 15.2 … `24G` 15.6; `23A`–`23H` are 14.0–14.7.
    ///
    /// Limits, all on the side of refusing rather than admitting an older Mac:
    ///
    /// - the patch level is not in the build (15.3 and 15.3.1 are both `24D…`), so a minimum
    ///   with a patch (`15.3.1`) refuses every 15.3.x that only sends its build;
    /// - a late release may reuse the previous letter (15.7 is `24G…`, 13.6 `22G…`): the minor
    ///   reads low, which at worst refuses a Mac whose minimum is exactly that release;
    /// - macOS 11–13 skipped letters (12.1 is `21C…`), so their minor reads up to two high;
    ///   that never reaches 14, and Lanyard's minimum is never below 14;
    /// - Darwin majors after 25 are an assumption until Apple ships them.
    pub fn from_macos_build(build: &str) -> Option<OsVersion> {
        let b = build.trim().as_bytes();
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=3).contains(&digits) {
            return None;
        }
        let letter = *b.get(digits)?;
        if !letter.is_ascii_uppercase() {
            return None;
        }
        let rest = &b[digits + 1..];
        let number = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        let suffix = &rest[number..];
        if number == 0
            || number > 6
            || suffix.len() > 1
            || !suffix.iter().all(u8::is_ascii_lowercase)
        {
            return None;
        }
        let darwin: u32 = std::str::from_utf8(&b[..digits]).ok()?.parse().ok()?;
        let step = u32::from(letter - b'A');
        match darwin {
            4..=19 => Some(OsVersion::new(10, darwin - 4, step)),
            20..=24 => Some(OsVersion::major_minor(darwin - 9, step)),
            25..=99 => Some(OsVersion::major_minor(darwin + 1, step)),
            _ => None,
        }
    }

    /// The major version.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The minor version (0 when not written).
    pub fn minor(&self) -> u32 {
        self.minor
    }

    /// The patch version (0 when not written).
    pub fn patch(&self) -> u32 {
        self.patch
    }

    /// True when `self` is at least `minimum`.
    pub fn at_least(&self, minimum: &OsVersion) -> bool {
        self >= minimum
    }

    fn key(&self) -> (u32, u32, u32) {
        (self.major, self.minor, self.patch)
    }
}

impl PartialEq for OsVersion {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for OsVersion {}

impl Hash for OsVersion {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for OsVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OsVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for OsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.components {
            1 => write!(f, "{}", self.major),
            2 => write!(f, "{}.{}", self.major, self.minor),
            _ => write!(f, "{}.{}.{}", self.major, self.minor, self.patch),
        }
    }
}

impl FromStr for OsVersion {
    type Err = OsVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for OsVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OsVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> OsVersion {
        OsVersion::parse(s).unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(v("15.2").to_string(), "15.2");
        assert_eq!(v("15.2.1").to_string(), "15.2.1");
        assert_eq!(v("14").to_string(), "14");
        assert_eq!(v(" 15.2 ").to_string(), "15.2");
        assert_eq!(v("15.2.1").patch(), 1);
        assert_eq!(v("14").minor(), 0);
        assert_eq!(OsVersion::DEFAULT_MACOS_MINIMUM.to_string(), "15.2");
    }

    #[test]
    fn compare_numerically() {
        assert_eq!(v("15.2"), v("15.2.0"));
        assert!(v("15.10") > v("15.2"));
        assert!(v("15.2.1") > v("15.2"));
        assert!(v("14.7.2") < v("15"));
        assert!(v("15.2").at_least(&OsVersion::DEFAULT_MACOS_MINIMUM));
        assert!(v("15.3").at_least(&OsVersion::DEFAULT_MACOS_MINIMUM));
        assert!(!v("15.1.1").at_least(&OsVersion::DEFAULT_MACOS_MINIMUM));
        assert_eq!(OsVersion::new(15, 2, 0), OsVersion::major_minor(15, 2));
        assert_eq!(OsVersion::major_only(14), v("14.0.0"));
    }

    #[test]
    fn refuses_bad_versions() {
        assert_eq!(OsVersion::parse(""), Err(OsVersionError::Empty));
        assert_eq!(
            OsVersion::parse("15.2.1.4"),
            Err(OsVersionError::TooManyComponents)
        );
        for bad in [
            "15.",
            ".2",
            "15..2",
            "15.x",
            "+15",
            "-1",
            "15.2b",
            "9999999999",
            "15 .2",
        ] {
            assert!(
                matches!(OsVersion::parse(bad), Err(OsVersionError::BadComponent(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn serde_as_string() {
        let json = serde_json::to_string(&v("15.2")).unwrap();
        assert_eq!(json, "\"15.2\"");
        let back: OsVersion = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v("15.2"));
        assert!(serde_json::from_str::<OsVersion>("\"x\"").is_err());
    }

    #[test]
    fn machine_info_user_enrollment_body() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
<key>LANGUAGE</key><string>en-US</string>
<key>OS_VERSION</key><string>15.2</string>
<key>PRODUCT</key><string>Mac15,3</string>
<key>SOFTWARE_UPDATE_DEVICE_ID</key><string>J514cAP</string>
<key>VERSION</key><string>24C101</string>
<key>MDM_CAN_REQUEST_SOFTWARE_UPDATE</key><true/>
</dict></plist>"#;
        let m = decode_machine_info(body).unwrap();
        assert_eq!(m.product, "Mac15,3");
        assert_eq!(m.version, "24C101");
        assert_eq!(m.language.as_deref(), Some("en-US"));
        assert_eq!(m.software_update_device_id.as_deref(), Some("J514cAP"));
        assert_eq!(m.mdm_can_request_software_update, Some(true));
        assert_eq!(m.os_version().unwrap(), Some(v("15.2")));
        assert!(!m.has_device_identifiers());
    }

    #[test]
    fn macos_builds_map_to_releases() {
        // Public releases: build → the release it shipped as (major.minor).
        for (build, want) in [
            ("23A344", "14.0"),
            ("23C64", "14.2"),
            ("23H124", "14.7"),
            ("24A335", "15.0"),
            ("24B83", "15.1"),
            ("24C101", "15.2"),
            ("24D60", "15.3"),
            ("24D70", "15.3"), // 15.3.1: the patch is not in the build
            ("24E248", "15.4"),
            ("24G84", "15.6"),
            ("25A354", "26.0"),
            ("25B78", "26.1"),
            ("24C5089c", "15.2"), // a beta
            (" 24C101 ", "15.2"),
        ] {
            let got = OsVersion::from_macos_build(build).unwrap();
            assert_eq!(got, v(want), "{build}");
            assert_eq!(got.to_string(), want, "{build}");
        }
        assert_eq!(
            OsVersion::from_macos_build("19H2").unwrap().to_string(),
            "10.15.7"
        );
        // Known limits: 15.7 shipped as 24G… (reads 15.6); 12.1 as 21C… (reads 12.2).
        assert_eq!(OsVersion::from_macos_build("24G222"), Some(v("15.6")));
        assert_eq!(OsVersion::from_macos_build("21C52"), Some(v("12.2")));
        // The default gate: 15.1 refused, 15.2 admitted, from the build alone.
        let min = OsVersion::DEFAULT_MACOS_MINIMUM;
        assert!(!OsVersion::from_macos_build("24B91").unwrap().at_least(&min));
        assert!(OsVersion::from_macos_build("24C101")
            .unwrap()
            .at_least(&min));
        assert!(!OsVersion::from_macos_build("23H124")
            .unwrap()
            .at_least(&min));
        for bad in [
            "",
            "C101",
            "24",
            "24c101",
            "24C",
            "24CC101",
            "2400C101",
            "24C101cd",
            "24C1011111",
            "24C10.1",
            "3A1",
            "15.2",
            "24C101C",
        ] {
            assert_eq!(OsVersion::from_macos_build(bad), None, "{bad}");
        }
    }

    #[test]
    fn machine_info_version_from_build_when_os_version_is_absent() {
        let only_build = br#"<plist version="1.0"><dict><key>LANGUAGE</key><string>en-US</string>
<key>PRODUCT</key><string>Mac15,3</string><key>VERSION</key><string>24B83</string></dict></plist>"#;
        let m = decode_machine_info(only_build).unwrap();
        assert_eq!(m.os_version().unwrap(), None);
        assert_eq!(m.macos_version().unwrap(), Some(v("15.1")));
        // OS_VERSION wins over the build when both are there.
        let both = br#"<plist version="1.0"><dict><key>PRODUCT</key><string>Mac15,3</string>
<key>VERSION</key><string>24B83</string><key>OS_VERSION</key><string>15.1.1</string></dict></plist>"#;
        let m = decode_machine_info(both).unwrap();
        assert_eq!(m.macos_version().unwrap(), Some(v("15.1.1")));
        let odd = br#"<plist version="1.0"><dict><key>PRODUCT</key><string>Mac15,3</string>
<key>VERSION</key><string>next</string></dict></plist>"#;
        assert_eq!(
            decode_machine_info(odd).unwrap().macos_version().unwrap(),
            None
        );
    }

    #[test]
    fn machine_info_errors() {
        let no_product = br#"<plist version="1.0"><dict><key>VERSION</key><string>24C101</string></dict></plist>"#;
        assert_eq!(
            decode_machine_info(no_product),
            Err(ProtoError::MissingKey {
                context: "MachineInfo",
                key: "PRODUCT"
            })
        );
        let with_udid = br#"<plist version="1.0"><dict><key>PRODUCT</key><string>iMac14,2</string>
<key>VERSION</key><string>16G2136</string><key>UDID</key><string>U1</string>
<key>SERIAL</key><string>C02</string><key>OS_VERSION</key><string>ten</string></dict></plist>"#;
        let m = decode_machine_info(with_udid).unwrap();
        assert!(m.has_device_identifiers());
        assert!(m.os_version().is_err());
    }
}
