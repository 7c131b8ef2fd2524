//! Lanyard's closed sets and identifiers as types: each closed set is stored (and shown in the
//! API) as its snake_case name and read back through [`TryFrom<String>`] (sqlx's
//! `#[sqlx(try_from = "String")]`) or its own `Decode`, so a row with a name Lanyard does not
//! know is an error, not a string that slips through. Identifiers are newtypes over their text.
//! The two macros here declare types, not SQL.

use serde::{Deserialize, Serialize};

/// Declares a closed set: variants with their stored name and the label people read.
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $stored:literal, $label:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$( $name::$variant, )+];

            /// The stored and wire name.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $stored, )+ }
            }

            /// How people read it.
            pub fn label(self) -> &'static str {
                match self { $( $name::$variant => $label, )+ }
            }

            /// The value stored as `s` (exact name), if any.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // Stored as its name (TEXT) on any database that stores text; a name it does not know
        // reads back as an error.
        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            for<'a> &'a str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <&str as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <&str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $name
        where
            &'q str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut DB::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, DB>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, DB>>::decode(value)?;
                $name::parse(text)
                    .ok_or_else(|| format!("unknown {} {text:?}", stringify!($name)).into())
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s).ok_or_else(|| format!(concat!("unknown ", $what, " {:?}"), s))
            }
        }
    };
}

closed_set! {
    /// Where an enrollment is in its life.
    EnrollmentStatus, "enrollment status" {
        /// The profile was issued; no `Authenticate` yet.
        Pending = "pending", "Pending";
        /// `Authenticate` arrived; no device `TokenUpdate` yet.
        Authenticated = "authenticated", "Authenticated";
        /// Enrolled: the device channel has a push token.
        Enrolled = "enrolled", "Enrolled";
        /// The device sent `CheckOut` (or was removed): final.
        CheckedOut = "checked_out", "Checked out";
        /// Silent for longer than the `inactive-after-days` setting without checking out (a
        /// Mac re-enrolls under a new `EnrollmentID`, so old ones linger). Any request from
        /// the device makes it active again.
        Inactive = "inactive", "Inactive";
    }
}

closed_set! {
    /// Where a queued command is: waiting, handed out, or finished with the device's status.
    CommandState, "command status" {
        /// Waiting for the device to ask.
        Queued = "queued", "Queued";
        /// Handed to the device; no report yet.
        Sent = "sent", "Sent";
        /// The device answered `NotNow`; it is handed out again later.
        NotNow = "not_now", "Not now";
        /// Done.
        Acknowledged = "acknowledged", "Acknowledged";
        /// The device reported an error.
        Error = "error", "Error";
        /// The device could not read the command.
        CommandFormatError = "command_format_error", "Command format error";
    }
}

impl CommandState {
    /// Finished: the device reported a final status.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandState::Acknowledged | CommandState::Error | CommandState::CommandFormatError
        )
    }

    /// Finished with a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, CommandState::Error | CommandState::CommandFormatError)
    }

    /// The state a device's reported status leaves a command in (`Idle` reports none).
    pub fn of_report(status: lanyard_proto::CommandStatus) -> Option<CommandState> {
        use lanyard_proto::CommandStatus as S;
        match status {
            S::Acknowledged => Some(CommandState::Acknowledged),
            S::Error => Some(CommandState::Error),
            S::CommandFormatError => Some(CommandState::CommandFormatError),
            S::NotNow => Some(CommandState::NotNow),
            S::Idle => None,
        }
    }
}

closed_set! {
    /// Whose MDM channel: the device's, or the signed-in user's.
    Channel, "channel" {
        Device = "device", "Device";
        User = "user", "User";
    }
}

closed_set! {
    /// What an administrator may do.
    Role, "role" {
        /// Sees and changes everything.
        Administrator = "administrator", "Administrator";
        /// Sees everything, changes nothing.
        ReadOnly = "read_only", "Read-only";
    }
}

closed_set! {
    /// Who owns the Mac, as the person picked at enrollment.
    Ownership, "ownership" {
        Employee = "employee", "Employee";
        Corporate = "corporate", "Corporate";
        Shared = "shared", "Shared";
    }
}

closed_set! {
    /// How a device is enrolled.
    EnrollmentMode, "enrollment mode" {
        /// Account-driven User Enrollment (BYOD).
        UserEnrollment = "user_enrollment", "User Enrollment";
    }
}

closed_set! {
    /// What a declaration is, from its `Type` (Apple's schema,
    /// `declarative/declarations/{activations,assets,configurations,management}`).
    DeclarationKind, "declaration kind" {
        Configuration = "configuration", "Configuration";
        Asset = "asset", "Asset";
        Activation = "activation", "Activation";
        Management = "management", "Management";
    }
}

closed_set! {
    /// Whether a Mac holds a declaration as it should: Apple's `valid` of a declaration in
    /// the `management.declarations` status item
    /// (`../shared/apple-schema/declarative/status/management.declarations.yaml`).
    DeclarationValidity, "declaration validity" {
        Unknown = "unknown", "Unknown";
        Invalid = "invalid", "Invalid";
        Valid = "valid", "Valid";
    }
}

/// Declares an identifier newtype over its text.
macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.0.clone()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

identifier! {
    /// An enrollment's id: the device's `EnrollmentID` (User Enrollment) or `UDID`.
    EnrollmentId
}

identifier! {
    /// A command's `CommandUUID`.
    CommandUuid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_name_reads_back_and_unknown_names_are_errors() {
        for s in CommandState::ALL {
            assert_eq!(CommandState::try_from(s.as_str().to_string()), Ok(*s));
        }
        for s in EnrollmentStatus::ALL {
            assert_eq!(EnrollmentStatus::try_from(s.to_string()), Ok(*s));
        }
        for s in [Channel::Device, Channel::User] {
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.as_str()))
            );
        }
        assert!(CommandState::try_from("Acknowledged".to_string()).is_err());
        assert!(Role::try_from("admin".to_string()).is_err());
        assert_eq!(EnrollmentMode::UserEnrollment.label(), "User Enrollment");
    }

    #[test]
    fn identifiers_read_as_their_text() {
        let id = EnrollmentId::from("A1B2");
        assert_eq!(id, "A1B2");
        assert_eq!(&*id, "A1B2");
        assert_eq!(serde_json::to_string(&id).ok().as_deref(), Some("\"A1B2\""));
    }
}
