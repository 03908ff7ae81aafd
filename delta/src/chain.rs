//! Chain verification.
//!
//! A restore applies several backups on top of each other; applying one to
//! the wrong base silently produces a corrupt tree that may still look fine.
//! Each manifest therefore names its parent by id *and* by the checksum of
//! the parent's manifest bytes, and a chain is only accepted if every link
//! names exactly the link before it. Positions in messages are 1-based, the
//! same numbering as restore's "step k of N".

use crate::error::DeltaError;
use crate::manifest::{Manifest, checksum};

/// A decoded manifest together with the checksum of its stored bytes.
#[derive(Debug, Clone)]
pub struct ChainLink {
    pub manifest: Manifest,
    /// BLAKE3 hex of the encoded manifest, as recorded when it was stored.
    pub checksum: String,
}

impl ChainLink {
    /// Decode stored manifest bytes; the checksum is computed from them.
    pub fn from_bytes(bytes: &[u8]) -> Result<ChainLink, DeltaError> {
        Ok(ChainLink { manifest: crate::decode_manifest(bytes)?, checksum: checksum(bytes) })
    }

    /// Decode stored manifest bytes, refusing them unless they hash to the
    /// checksum recorded when they were stored.
    pub fn from_bytes_checked(bytes: &[u8], expected: &str) -> Result<ChainLink, DeltaError> {
        let actual = checksum(bytes);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(DeltaError::ManifestChecksum { expected: expected.to_string(), actual });
        }
        ChainLink::from_bytes(bytes)
    }
}

/// Verify `links` (root first) as [`verify_chain`] does, then complete each
/// link's block hashes from the link before it ([`Manifest::inherit_hashes`]),
/// root first. A refusal names the link.
pub fn resolve_chain(links: &mut [ChainLink]) -> Result<(), DeltaError> {
    verify_chain(links)?;
    for k in 1..links.len() {
        let (done, rest) = links.split_at_mut(k);
        inherit(k, &mut rest[0], &done[k - 1])?;
    }
    Ok(())
}

/// The last of `links` (root first), verified and completed as
/// [`resolve_chain`] does, holding at most two complete manifests at a
/// time: what an incremental backup needs of its parent's chain.
pub fn resolve_last(links: Vec<ChainLink>) -> Result<ChainLink, DeltaError> {
    verify_chain(&links)?;
    let mut links = links.into_iter().enumerate();
    let (_, mut done) = links.next().ok_or(DeltaError::EmptyChain)?;
    for (k, mut link) in links {
        inherit(k, &mut link, &done)?;
        done = link;
    }
    Ok(done)
}

/// Completes link `k` (0-based) from the complete link before it.
fn inherit(k: usize, link: &mut ChainLink, before: &ChainLink) -> Result<(), DeltaError> {
    let backup_id = link.manifest.header.backup_id;
    link.manifest.inherit_hashes(&before.manifest).map_err(|e| DeltaError::Chain {
        position: k + 1,
        backup_id,
        reason: e.to_string(),
    })
}

/// Check that `links` (root first) form one unbroken chain of one instance.
pub fn verify_chain(links: &[ChainLink]) -> Result<(), DeltaError> {
    let Some(root) = links.first() else {
        return Err(DeltaError::EmptyChain);
    };
    let fail = |k: usize, reason: String| DeltaError::Chain {
        position: k + 1,
        backup_id: links[k].manifest.header.backup_id,
        reason,
    };
    let instance = root.manifest.header.instance_id;
    let block_size = root.manifest.header.block_size;
    let block_hashes = root.manifest.header.block_hashes;
    for (k, link) in links.iter().enumerate() {
        let h = &link.manifest.header;
        if h.instance_id != instance {
            return Err(fail(
                k,
                format!("belongs to instance {}, the chain's root belongs to instance {}", h.instance_id, instance),
            ));
        }
        if h.block_size != block_size {
            return Err(fail(k, format!("block size {} differs from the chain's {}", h.block_size, block_size)));
        }
        if h.block_hashes != block_hashes {
            return Err(fail(
                k,
                format!("block hashes of kind {:?} differ from the chain's {:?}", h.block_hashes, block_hashes),
            ));
        }
        if let Some(j) = links[..k].iter().position(|l| l.manifest.header.backup_id == h.backup_id) {
            return Err(fail(k, format!("same backup as link {}", j + 1)));
        }
        match (&h.parent, k) {
            (None, 0) => {}
            (Some(p), 0) => {
                return Err(fail(
                    k,
                    format!(
                        "is incremental (parent {}) but is the first link: the chain is missing its root or earlier links",
                        p.backup_id
                    ),
                ));
            }
            (None, _) => {
                return Err(fail(
                    k,
                    format!(
                        "is a full backup but follows link {} (backup {}): wrong order",
                        k,
                        links[k - 1].manifest.header.backup_id
                    ),
                ));
            }
            (Some(p), _) => {
                let prev = &links[k - 1];
                let prev_id = prev.manifest.header.backup_id;
                if p.backup_id != prev_id {
                    return Err(fail(
                        k,
                        format!(
                            "parent mismatch: manifest names parent {}, chain has {} at link {}: missing link or wrong order",
                            p.backup_id, prev_id, k
                        ),
                    ));
                }
                if !p.checksum.eq_ignore_ascii_case(&prev.checksum) {
                    return Err(fail(
                        k,
                        format!(
                            "parent checksum mismatch: manifest names parent {} with checksum {}, chain has {}",
                            p.backup_id, p.checksum, prev.checksum
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
