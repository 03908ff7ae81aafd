//! A chain of completed backups as a datastore reads it.
//!
//! A restore reads the whole chain; so does an incremental backup, whose
//! parent's manifest holds only the hashes of the blocks it stored and is
//! completed by the links before it. Both refuse a chain with a missing or
//! unfinished link here, naming it, before any object is fetched.

use anyhow::Context;
use cairn_shared::{datastore::StoredLink, failure::permanent, lifecycle, status::BackupStatus};
use uuid::Uuid;

use crate::JobContext;

/// The chain ending at `backup_id`, root first. Database errors are
/// transient; a chain that cannot be restored from is a permanent error.
pub async fn stored_chain(ctx: &JobContext, backup_id: Uuid) -> anyhow::Result<Vec<StoredLink>> {
    let chain = lifecycle::chain_of(&ctx.db, backup_id).await?;
    if chain.last().map(|b| b.id) != Some(backup_id) {
        return Err(permanent(anyhow::anyhow!("backup {backup_id} no longer exists")));
    }
    if let Some(root) = chain.first()
        && let Some(missing) = root.parent_id
    {
        return Err(permanent(anyhow::anyhow!(
            "link 1 of the chain is missing: backup {missing} (parent of {}) no longer exists",
            root.id
        )));
    }
    let mut links = Vec::with_capacity(chain.len());
    for (i, b) in chain.iter().enumerate() {
        let link = || -> anyhow::Result<StoredLink> {
            if b.status != BackupStatus::Completed.as_str() {
                anyhow::bail!("link {} of the chain (backup {}) is {}", i + 1, b.id, b.status);
            }
            Ok(StoredLink {
                backup_id: b.id,
                checksum: b
                    .checksum
                    .clone()
                    .with_context(|| format!("link {} (backup {}) has no checksum", i + 1, b.id))?,
                artifact_prefix: b
                    .artifact_prefix
                    .clone()
                    .with_context(|| format!("link {} (backup {}) has no artifact", i + 1, b.id))?,
            })
        };
        links.push(link().map_err(permanent)?);
    }
    Ok(links)
}
