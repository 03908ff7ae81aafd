//! The statuses of DESIGN.md §4, as types.
//!
//! The database stores them as text (what Trove's API shows); these enums are
//! the only place that spells them, so a typo is a compile error.

use std::fmt;

macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The status as stored and shown by the API.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Parses a stored status; `None` for anything else.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_enum! {
    /// Where a backup is in its life. See [`crate::lifecycle`] for the moves.
    BackupStatus {
        New => "NEW",
        Building => "BUILDING",
        Saving => "SAVING",
        Completed => "COMPLETED",
        Failed => "FAILED",
        Deleting => "DELETING",
        DeleteFailed => "DELETE_FAILED",
    }
}

status_enum! {
    /// Where an instance is in its life: restores start in `BUILD`.
    InstanceStatus {
        Build => "BUILD",
        Active => "ACTIVE",
        Error => "ERROR",
    }
}

impl BackupStatus {
    /// A worker is executing the backup right now.
    pub const fn is_running(self) -> bool {
        matches!(self, Self::Building | Self::Saving)
    }
}

/// The kinds of job a message can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Take a backup (`backups.id`).
    Backup,
    /// Restore a backup chain into a new instance (`instances.id`).
    Restore,
    /// Remove a backup, its descendants and their objects (`backups.id`).
    DeleteBackup,
    /// Re-read a backup's stored objects and check every checksum (`backups.id`).
    VerifyBackup,
}

impl JobKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Backup, Self::Restore, Self::DeleteBackup, Self::VerifyBackup];

    /// The routing key, and the `kind` column of the outbox.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::DeleteBackup => "delete_backup",
            Self::VerifyBackup => "verify_backup",
        }
    }

    /// Parses an outbox `kind`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// What travels through RabbitMQ: only ids. The database is the truth; a
/// handler re-reads the row and acts only if its status says there is work.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobMessage {
    /// What to do.
    pub kind: JobKind,
    /// The backup or instance the job is about.
    pub id: uuid::Uuid,
    /// How many times this job has been handed out before (informational).
    #[serde(default)]
    pub attempt: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_reject_unknown_text() {
        for s in [BackupStatus::New, BackupStatus::Building, BackupStatus::DeleteFailed] {
            assert_eq!(BackupStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(BackupStatus::parse("new"), None);
        assert_eq!(InstanceStatus::parse("ACTIVE"), Some(InstanceStatus::Active));
        assert_eq!(JobKind::parse("delete_backup"), Some(JobKind::DeleteBackup));
        assert_eq!(JobKind::parse("nope"), None);
    }

    #[test]
    fn job_message_is_ids_only_json() {
        let id = uuid::Uuid::nil();
        let json = serde_json::to_string(&JobMessage { kind: JobKind::Restore, id, attempt: 2 }).unwrap();
        assert_eq!(json, format!(r#"{{"kind":"restore","id":"{id}","attempt":2}}"#));
        assert!(serde_json::from_str::<JobMessage>(r#"{"kind":"explode","id":"x"}"#).is_err());
    }
}
