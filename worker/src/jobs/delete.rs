//! Deleting a backup and its descendants, objects first, then rows.

use cairn_shared::{lifecycle, status::BackupStatus};
use tracing::Instrument;
use uuid::Uuid;

use crate::JobContext;

pub async fn run(ctx: &JobContext, id: Uuid) -> anyhow::Result<()> {
    let subtree = lifecycle::deletion_order(&ctx.db, id).await?;
    for b in subtree {
        if b.status != BackupStatus::Deleting.as_str() {
            continue; // deleted already by an earlier delivery, or not ours
        }
        let span = tracing::info_span!("delete", backup_id = %b.id, instance_id = %b.instance_id);
        async {
            match ctx.store.delete_backup(b.id, b.attempts, None).await {
                Ok(objects) => {
                    lifecycle::remove_deleted(&ctx.db, b.id).await?;
                    tracing::info!(objects, "backup deleted");
                }
                Err(e) => {
                    let reason = format!("cannot delete stored objects: {e:#}");
                    tracing::error!(%reason, "delete failed");
                    lifecycle::delete_failed(&ctx.db, b.id, &reason).await?;
                }
            }
            anyhow::Ok(())
        }
        .instrument(span)
        .await?;
    }
    Ok(())
}
