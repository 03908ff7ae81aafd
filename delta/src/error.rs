//! One error type for the whole crate.
//!
//! Messages end up verbatim in the service's `fail_reason`, read by an
//! operator who has no debugger: every variant therefore names the thing
//! involved (file path, chain position and backup id, pack and offset) so the
//! message alone says where to look.

use std::io;
use std::path::PathBuf;

use uuid::Uuid;

/// Everything that can go wrong while backing up, decoding, verifying or
/// restoring.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// [`crate::BackupOptions`] out of range.
    #[error("invalid backup options: {0}")]
    InvalidOptions(String),

    /// A filesystem operation on `path` failed.
    #[error("{path}: {op}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A name in the source tree cannot be represented in a manifest.
    #[error("{path}: {reason}", path = .path.display())]
    UnsupportedPath { path: PathBuf, reason: String },

    /// The parent manifest given to an incremental backup cannot be used.
    #[error("parent backup {backup_id}: {reason}")]
    Parent { backup_id: Uuid, reason: String },

    /// Manifest bytes are not a valid manifest (untrusted input).
    #[error("corrupt manifest: {0}")]
    CorruptManifest(String),

    /// An entry of a manifest that a restore must not apply: its path could
    /// reach outside the target (`..`, absolute, a symlink on the way), it
    /// repeats a name, or its sizes and blocks disagree (untrusted input).
    #[error("unsafe entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },

    /// Manifest written by a newer or older, incompatible format.
    #[error("unsupported manifest format version {found} (this build reads versions 1 to {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },

    /// Manifest bytes do not hash to the checksum recorded for them.
    #[error("manifest checksum mismatch: expected {expected}, bytes hash to {actual}")]
    ManifestChecksum { expected: String, actual: String },

    /// A restore or verification was asked for an empty chain.
    #[error("empty backup chain")]
    EmptyChain,

    /// A link of a chain is inconsistent with the chain (1-based position).
    #[error("link {position} (backup {backup_id}): {reason}")]
    Chain { position: usize, backup_id: Uuid, reason: String },

    /// Reading a byte range of a pack through [`crate::PackSource`] failed.
    #[error("backup {backup_id}, pack {pack}: reading {len} bytes at offset {offset}: {source}")]
    PackRead {
        backup_id: Uuid,
        pack: String,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },

    /// Pack bytes were read but are not what the manifest describes.
    #[error("backup {backup_id}, pack {pack}, offset {offset}: {reason}")]
    PackData { backup_id: Uuid, pack: String, offset: u64, reason: String },

    /// The restore target is unusable (missing, not empty, symlink in path).
    #[error("restore target {path}: {reason}", path = .path.display())]
    Target { path: PathBuf, reason: String },

    /// A file of the last manifest cannot be reconstructed from the chain.
    #[error("file {path}: {reason}")]
    Resolve { path: String, reason: String },

    /// A restored file does not hash to what the last manifest records.
    #[error(
        "file {path}: restored content has blake3 {actual}, link {position} (backup {backup_id}) records {expected}"
    )]
    ContentMismatch { path: String, position: usize, backup_id: Uuid, expected: String, actual: String },
}

impl DeltaError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        DeltaError::Io { path: path.into(), op, source }
    }

    pub(crate) fn unsafe_entry(path: &str, reason: impl Into<String>) -> Self {
        DeltaError::UnsafeEntry { path: path.to_string(), reason: reason.into() }
    }

    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        DeltaError::CorruptManifest(msg.into())
    }
}
