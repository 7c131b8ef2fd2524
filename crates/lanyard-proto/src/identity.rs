//! Enrollment identity: which enrollment a check-in or command request speaks for.
//!
//! # The scheme
//!
//! Every check-in and command request carries some of these keys (Apple's schema,
//! `mdm/checkin/*.yaml`):
//!
//! | key | meaning |
//! |---|---|
//! | `UDID` | the device, for enrollments other than User Enrollment |
//! | `UserID` | with `UDID`: a macOS user (the user channel) |
//! | `UserShortName` | the macOS short name; on Shared iPad it names the user (see below) |
//! | `EnrollmentID` | User Enrollment: the per-enrollment device identifier (replaces `UDID`) |
//! | `EnrollmentUserID` | User Enrollment: the per-enrollment user identifier (user channel) |
//!
//! They resolve to one [`EnrollmentRef`]:
//!
//! 1. If `UDID` is present, the **device id** is the UDID. If `UserID` is also present the
//!    request is on the **user channel** and the **user id** is the `UserID` — except when
//!    `UserID` is the Shared iPad placeholder `FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF`, where the
//!    user is named by `UserShortName` instead (that key is then required).
//! 2. Otherwise, if `EnrollmentID` is present, it is a **User Enrollment**: the device id is the
//!    `EnrollmentID`, and `EnrollmentUserID`, when present, is the user id.
//! 3. Otherwise the request names no enrollment and is refused.
//!
//! `UDID` wins over `EnrollmentID` when both appear (a User Enrollment never sends a UDID).
//! The enrollment key ([`EnrollmentRef::id`]) is the device id for the device channel and
//! `"<device id>:<user id>"` for the user channel, with `parent_device_id` set to the device id.
//! Device ids must therefore not contain `:` (UDIDs and EnrollmentIDs never do); one that does is
//! refused rather than stored under an ambiguous key. Empty strings count as absent.
//!
//! This follows the same resolution order as NanoMDM (`mdm/type.go`), read for facts only.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::plistutil::Fields;

/// The `UserID` a Shared iPad user connects with; the user is then named by `UserShortName`.
pub const SHARED_IPAD_USER_ID: &str = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF";

/// Separator between device id and user id in a user-channel enrollment key.
pub const USER_CHANNEL_SEPARATOR: char = ':';

/// The identity keys of one request, as sent. Empty strings are stored as `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentIdentity {
    /// `UDID`: the device, for enrollments other than User Enrollment.
    pub udid: Option<String>,
    /// `UserID`: the macOS user's GUID (user channel).
    pub user_id: Option<String>,
    /// `UserShortName`: the macOS user's short name.
    pub user_short_name: Option<String>,
    /// `UserLongName`: the macOS user's full name (informational, not part of the key).
    pub user_long_name: Option<String>,
    /// `EnrollmentID`: User Enrollment's per-enrollment device identifier.
    pub enrollment_id: Option<String>,
    /// `EnrollmentUserID`: User Enrollment's per-enrollment user identifier.
    pub enrollment_user_id: Option<String>,
}

/// What kind of channel an enrollment key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EnrollmentKind {
    /// Device channel of a device enrolled with a UDID.
    Device,
    /// User channel of a device enrolled with a UDID (`UDID` + `UserID`).
    User,
    /// Device channel of a User Enrollment (`EnrollmentID`).
    UserEnrollmentDevice,
    /// User channel of a User Enrollment (`EnrollmentID` + `EnrollmentUserID`).
    UserEnrollmentUser,
}

impl EnrollmentKind {
    /// True for the two User Enrollment kinds.
    pub fn is_user_enrollment(self) -> bool {
        matches!(self, Self::UserEnrollmentDevice | Self::UserEnrollmentUser)
    }

    /// True for the two user-channel kinds.
    pub fn is_user_channel(self) -> bool {
        matches!(self, Self::User | Self::UserEnrollmentUser)
    }

    /// A stable name, for storage and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "Device",
            Self::User => "User",
            Self::UserEnrollmentDevice => "UserEnrollmentDevice",
            Self::UserEnrollmentUser => "UserEnrollmentUser",
        }
    }
}

impl fmt::Display for EnrollmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The enrollment a request speaks for: its kind and its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EnrollmentRef {
    /// Device or user channel, UDID-based or User Enrollment.
    pub kind: EnrollmentKind,
    /// The enrollment key: device id, or `"<device id>:<user id>"` for a user channel.
    pub id: String,
    /// For a user channel, the device channel's key; `None` for a device channel.
    pub parent_device_id: Option<String>,
}

impl EnrollmentRef {
    /// The device channel's key (this enrollment's own id for a device channel).
    pub fn device_id(&self) -> &str {
        self.parent_device_id.as_deref().unwrap_or(&self.id)
    }

    /// For a user channel, the user part of the key.
    pub fn user_id(&self) -> Option<&str> {
        self.parent_device_id.as_ref().and_then(|parent| {
            self.id
                .strip_prefix(parent.as_str())
                .and_then(|rest| rest.strip_prefix(USER_CHANNEL_SEPARATOR))
        })
    }
}

impl EnrollmentIdentity {
    /// Reads the identity keys from a request dictionary.
    pub(crate) fn from_fields(f: &Fields<'_>) -> Result<Self, ProtoError> {
        Ok(Self {
            udid: f.opt_string("UDID")?,
            user_id: f.opt_string("UserID")?,
            user_short_name: f.opt_string("UserShortName")?,
            user_long_name: f.opt_string("UserLongName")?,
            enrollment_id: f.opt_string("EnrollmentID")?,
            enrollment_user_id: f.opt_string("EnrollmentUserID")?,
        })
    }

    /// Resolves the identity keys to one enrollment (see the module documentation).
    pub fn resolve(&self) -> Result<EnrollmentRef, ProtoError> {
        self.resolve_in("request")
    }

    pub(crate) fn resolve_in(&self, context: &'static str) -> Result<EnrollmentRef, ProtoError> {
        let invalid = |reason: String| ProtoError::InvalidIdentity { context, reason };
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());

        let (device_id, user_id, device_kind, user_kind) = if let Some(udid) = non_empty(&self.udid)
        {
            let user = match non_empty(&self.user_id) {
                Some(uid) if uid.eq_ignore_ascii_case(SHARED_IPAD_USER_ID) => {
                    Some(non_empty(&self.user_short_name).ok_or_else(|| {
                        invalid(
                            "Shared iPad UserID without UserShortName to name the user".to_owned(),
                        )
                    })?)
                }
                other => other,
            };
            (udid, user, EnrollmentKind::Device, EnrollmentKind::User)
        } else if let Some(eid) = non_empty(&self.enrollment_id) {
            (
                eid,
                non_empty(&self.enrollment_user_id),
                EnrollmentKind::UserEnrollmentDevice,
                EnrollmentKind::UserEnrollmentUser,
            )
        } else {
            return Err(ProtoError::MissingIdentity { context });
        };

        if device_id.contains(USER_CHANNEL_SEPARATOR) {
            return Err(invalid(format!(
                "device id {:?} contains {USER_CHANNEL_SEPARATOR:?}",
                crate::error::quote(&device_id)
            )));
        }
        Ok(match user_id {
            None => EnrollmentRef {
                kind: device_kind,
                id: device_id,
                parent_device_id: None,
            },
            Some(user) => EnrollmentRef {
                kind: user_kind,
                id: format!("{device_id}{USER_CHANNEL_SEPARATOR}{user}"),
                parent_device_id: Some(device_id),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(pairs: &[(&str, &str)]) -> EnrollmentIdentity {
        let mut i = EnrollmentIdentity::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "UDID" => i.udid = v,
                "UserID" => i.user_id = v,
                "UserShortName" => i.user_short_name = v,
                "EnrollmentID" => i.enrollment_id = v,
                "EnrollmentUserID" => i.enrollment_user_id = v,
                _ => unreachable!(),
            }
        }
        i
    }

    #[test]
    fn device_channel_by_udid() {
        let r = ident(&[("UDID", "U1")]).resolve().unwrap();
        assert_eq!(r.kind, EnrollmentKind::Device);
        assert_eq!(r.id, "U1");
        assert_eq!(r.parent_device_id, None);
        assert_eq!(r.device_id(), "U1");
        assert_eq!(r.user_id(), None);
    }

    #[test]
    fn user_channel_by_udid_and_user_id() {
        let r = ident(&[("UDID", "U1"), ("UserID", "G1"), ("UserShortName", "ann")])
            .resolve()
            .unwrap();
        assert_eq!(r.kind, EnrollmentKind::User);
        assert_eq!(r.id, "U1:G1");
        assert_eq!(r.parent_device_id.as_deref(), Some("U1"));
        assert_eq!(r.user_id(), Some("G1"));
    }

    #[test]
    fn shared_ipad_user_uses_short_name() {
        let r = ident(&[
            ("UDID", "U1"),
            ("UserID", SHARED_IPAD_USER_ID),
            ("UserShortName", "ann@example.com"),
        ])
        .resolve()
        .unwrap();
        assert_eq!(r.id, "U1:ann@example.com");
        assert!(ident(&[("UDID", "U1"), ("UserID", SHARED_IPAD_USER_ID)])
            .resolve()
            .is_err());
    }

    #[test]
    fn user_enrollment_channels() {
        let d = ident(&[("EnrollmentID", "E1")]).resolve().unwrap();
        assert_eq!(d.kind, EnrollmentKind::UserEnrollmentDevice);
        assert_eq!(d.id, "E1");
        assert!(d.kind.is_user_enrollment());
        assert!(!d.kind.is_user_channel());

        let u = ident(&[
            ("EnrollmentID", "E1"),
            ("EnrollmentUserID", "EU1"),
            ("UserShortName", "ann"),
        ])
        .resolve()
        .unwrap();
        assert_eq!(u.kind, EnrollmentKind::UserEnrollmentUser);
        assert_eq!(u.id, "E1:EU1");
        assert_eq!(u.device_id(), "E1");
        assert_eq!(u.user_id(), Some("EU1"));
    }

    #[test]
    fn udid_wins_over_enrollment_id() {
        let r = ident(&[("UDID", "U1"), ("EnrollmentID", "E1")])
            .resolve()
            .unwrap();
        assert_eq!(r.kind, EnrollmentKind::Device);
        assert_eq!(r.id, "U1");
    }

    #[test]
    fn nothing_or_empty_is_refused() {
        assert!(matches!(
            EnrollmentIdentity::default().resolve(),
            Err(ProtoError::MissingIdentity { .. })
        ));
        assert!(matches!(
            ident(&[("UDID", ""), ("UserID", "G1")]).resolve(),
            Err(ProtoError::MissingIdentity { .. })
        ));
        assert!(matches!(
            ident(&[("EnrollmentUserID", "EU1")]).resolve(),
            Err(ProtoError::MissingIdentity { .. })
        ));
    }

    #[test]
    fn separator_in_device_id_is_refused() {
        assert!(matches!(
            ident(&[("UDID", "a:b")]).resolve(),
            Err(ProtoError::InvalidIdentity { .. })
        ));
    }
}
