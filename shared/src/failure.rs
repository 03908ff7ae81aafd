//! Which job failures are worth retrying.
//!
//! A job that fails is retried a few times with growing delays, unless the
//! failure is one that retrying cannot fix: the volume is gone, a parent is
//! missing, a stored object is corrupted. Those are marked [`Permanent`]
//! where they are detected, and the delta format's own errors are classified
//! here: only I/O and pack reads are transient, and of pack reads only
//! those that did not fail to decrypt.

use cairn_delta::DeltaError;

/// A failure that retrying cannot fix: the job fails at once.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Permanent(pub anyhow::Error);

/// Marks `err` as permanent.
pub fn permanent(err: impl Into<anyhow::Error>) -> anyhow::Error {
    Permanent(err.into()).into()
}

/// True when retrying `err` cannot help.
pub fn is_permanent(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Permanent>())
        || err.chain().find_map(|cause| cause.downcast_ref::<DeltaError>()).is_some_and(|delta| match delta {
            DeltaError::Io { .. } => false,
            // A pack that does not decrypt will not decrypt on a retry.
            DeltaError::PackRead { source, .. } => source.kind() == std::io::ErrorKind::InvalidData,
            _ => true,
        })
        || err.chain().any(|cause| cause.is::<crate::seal::SealError>())
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn permanence_survives_context_and_delta_errors_are_classified() {
        let gone: anyhow::Result<()> = Err(permanent(anyhow::anyhow!("volume is gone")));
        assert!(is_permanent(&gone.context("backup failed").unwrap_err()));
        assert!(!is_permanent(&anyhow::anyhow!("connection reset")));
        let corrupt = anyhow::Error::from(DeltaError::CorruptManifest("bad".into()));
        assert!(is_permanent(&corrupt.context("restore")));
    }
}
