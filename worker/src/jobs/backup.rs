//! Running one backup: claim, take it through the datastore, record it.

use std::sync::Arc;

use anyhow::Context;
use cairn_shared::{
    datastore::{BackupRequest, JobProgress},
    entities::backup,
    failure::permanent,
    lifecycle::{self, BackupClaim, ClaimedBackup, CompletedArtifact, Leased},
    storage::ArtifactStore,
};
use sea_orm::{EntityTrait, TransactionTrait};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{Disposition, Interrupted, Receipt, dispose, hand_back, retry_db};
use crate::{JobContext, lease};

pub async fn run(ctx: &JobContext, id: Uuid, receipt: &Receipt, stop: &CancellationToken) -> anyhow::Result<()> {
    let claim = ctx.batches.claim(id).await?;
    receipt.ack().await;
    let claimed = match claim {
        BackupClaim::Claimed(claimed) => *claimed,
        BackupClaim::Waiting(why) => {
            tracing::debug!(backup_id = %id, %why, "backup waits");
            return Ok(());
        }
        BackupClaim::ParentFailed(why) => {
            tracing::warn!(backup_id = %id, %why, "backup failed: its parent failed");
            ctx.nudge.wake();
            return Ok(());
        }
        BackupClaim::NotRunnable => return Ok(()),
    };
    let row = &claimed.row;
    let span =
        tracing::info_span!("backup", backup_id = %row.id, instance_id = %row.instance_id, attempt = row.attempts);
    execute(ctx, claimed, stop).instrument(span).await
}

async fn execute(ctx: &JobContext, claimed: ClaimedBackup, stop: &CancellationToken) -> anyhow::Result<()> {
    let row = &claimed.row;
    let worker = ctx.config.worker_id.clone();
    tracing::info!(parent_id = ?row.parent_id, "backup started");
    let progress = Arc::new(JobProgress::default());
    let beat = {
        let (db, lease, id, worker) = (ctx.db.clone(), ctx.config.lease, row.id, worker.clone());
        move |done, total| {
            let (db, worker) = (db.clone(), worker.clone());
            async move { lifecycle::heartbeat_backup(&db, id, &worker, lease, done, total).await }
        }
    };
    let heartbeat = lease::start(ctx.config.lease, progress.clone(), beat);
    let outcome = tokio::select! {
        r = take(ctx, &claimed, progress) => r,
        () = heartbeat.lost.cancelled() => Err(Interrupted::LeaseLost.into()),
        () = stop.cancelled() => Err(Interrupted::Shutdown.into()),
    };
    drop(heartbeat);

    let attempt_prefix = ArtifactStore::attempt_prefix(row.id, row.attempts);
    let artifact = match outcome {
        Ok(artifact) => artifact,
        Err(err) => {
            // Nothing of a failed attempt is ever referenced.
            let _ = ctx.store.delete_prefix(&attempt_prefix, None).await;
            return match dispose(ctx, &err, row.attempts) {
                Disposition::Abandon => {
                    tracing::warn!("another worker owns this backup now; this attempt is discarded");
                    Ok(())
                }
                Disposition::Release => hand_back(ctx, Leased::Backup, row.id, Default::default(), None).await,
                Disposition::Retry(after) => {
                    let note = format!("attempt {} failed: {err:#}; retrying in {}s", row.attempts, after.as_secs());
                    tracing::warn!(reason = %note, "backup attempt failed");
                    hand_back(ctx, Leased::Backup, row.id, after, Some(&note)).await
                }
                Disposition::Fail(reason) => {
                    tracing::error!(%reason, "backup failed");
                    let failed = retry_db(|| async {
                        let txn = ctx.db.begin().await?;
                        let failed = lifecycle::fail_backup(&txn, row.id, Some(&worker), &reason).await?;
                        txn.commit().await?;
                        Ok(failed)
                    })
                    .await?;
                    if failed {
                        ctx.nudge.wake();
                    }
                    Ok(())
                }
            };
        }
    };
    record(ctx, row, &worker, &artifact, &attempt_prefix).await
}

/// Records a finished attempt; discards its objects if it lost the job.
async fn record(
    ctx: &JobContext,
    row: &backup::Model,
    worker: &str,
    artifact: &CompletedArtifact,
    attempt_prefix: &str,
) -> anyhow::Result<()> {
    // SAVING shows a backup whose payload is being stored; one that stored
    // only its manifest goes from BUILDING to COMPLETED in one commit.
    if artifact.pack_objects > 0 {
        retry_db(|| lifecycle::mark_saving(&ctx.db, row.id, worker)).await?;
    }
    let completion = retry_db(|| ctx.batches.complete(row.id, artifact.clone())).await?;
    // A retried commit may have succeeded the first time: look before
    // treating "nothing updated" as "someone else owns it".
    let ours = completion.completed
        || backup::Entity::find_by_id(row.id)
            .one(&ctx.db)
            .await?
            .is_some_and(|now| now.artifact_prefix.as_deref() == Some(attempt_prefix) && now.status == "COMPLETED");
    if !ours {
        tracing::warn!("backup finished but another worker owns it now; discarding this attempt");
        let _ = ctx.store.delete_prefix(attempt_prefix, None).await;
        return Ok(());
    }
    // Wake the relay only if the completion queued something; if a
    // retried commit hid what it queued, the relay's poll finds it.
    if completion.woken > 0 {
        ctx.nudge.wake();
    }
    tracing::info!(bytes = artifact.bytes, checksum = %artifact.checksum, "backup completed");
    // Objects of earlier, abandoned attempts are never referenced. The
    // first attempt has none (every claim numbers a new attempt), so it
    // skips the listing.
    if row.attempts > 1
        && let Err(e) = ctx.store.delete_backup(row.id, row.attempts, Some(attempt_prefix)).await
    {
        tracing::warn!(error = %e, "could not remove objects of abandoned attempts");
    }
    Ok(())
}

async fn take(
    ctx: &JobContext,
    claimed: &ClaimedBackup,
    progress: Arc<JobProgress>,
) -> anyhow::Result<CompletedArtifact> {
    let row = &claimed.row;
    let inst = claimed
        .instance
        .as_ref()
        .ok_or_else(|| permanent(anyhow::anyhow!("instance {} no longer exists", row.instance_id)))?;
    let datastore = ctx.datastores.get(&inst.datastore_type).ok_or_else(|| {
        permanent(anyhow::anyhow!("datastore type {:?} is not served by this worker", inst.datastore_type))
    })?;
    let source = cairn_shared::volume::check_registered(&ctx.config.volume_roots, &inst.volume_path).map_err(|e| {
        permanent(anyhow::Error::from(e).context(format!("instance {}'s volume cannot be read", row.instance_id)))
    })?;
    // The parent's whole chain: the parent's manifest holds only the
    // hashes of the blocks it stored, the links before it the rest.
    let parent_chain = match row.parent_id {
        Some(pid) => super::chain::stored_chain(ctx, pid).await.context("the parent's chain cannot be read")?,
        None => Vec::new(),
    };
    let req =
        BackupRequest { backup_id: row.id, instance_id: row.instance_id, attempt: row.attempts, source, parent_chain };
    datastore.backup(req, progress).await
}
