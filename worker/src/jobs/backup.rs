//! Running one backup: claim, take it through the datastore, record it.

use std::sync::Arc;

use anyhow::Context;
use cairn_shared::{
    datastore::{BackupRequest, JobProgress, StoredLink},
    entities::{backup, instance},
    lifecycle::{self, BackupClaim},
    storage::ArtifactStore,
};
use sea_orm::{EntityTrait, TransactionTrait};
use tracing::Instrument;
use uuid::Uuid;

use crate::{JobContext, lease};

pub async fn run(ctx: &JobContext, id: Uuid) -> anyhow::Result<()> {
    let worker = ctx.config.worker_id.as_str();
    let row = match lifecycle::claim_backup(&ctx.db, id, worker, ctx.config.lease).await? {
        BackupClaim::Claimed(row) => row,
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
    let span =
        tracing::info_span!("backup", backup_id = %row.id, instance_id = %row.instance_id, attempt = row.attempts);
    execute(ctx, *row).instrument(span).await
}

async fn execute(ctx: &JobContext, row: backup::Model) -> anyhow::Result<()> {
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
        r = take(ctx, &row, progress) => r,
        () = heartbeat.lost.cancelled() => Err(anyhow::anyhow!("lease lost to another worker")),
    };
    drop(heartbeat);

    let attempt_prefix = ArtifactStore::attempt_prefix(row.id, row.attempts);
    match outcome {
        Ok(artifact) => {
            lifecycle::mark_saving(&ctx.db, row.id, &worker).await?;
            if lifecycle::complete_backup(&ctx.db, row.id, &worker, &artifact).await? {
                ctx.nudge.wake();
                tracing::info!(bytes = artifact.bytes, checksum = %artifact.checksum, "backup completed");
                // Objects of earlier, abandoned attempts are never referenced.
                if let Err(e) = ctx.store.delete_prefix(&format!("backups/{}", row.id), Some(&attempt_prefix)).await {
                    tracing::warn!(error = %e, "could not remove objects of abandoned attempts");
                }
            } else {
                tracing::warn!("backup finished but another worker owns it now; discarding this attempt");
                let _ = ctx.store.delete_prefix(&attempt_prefix, None).await;
            }
        }
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::error!(%reason, "backup failed");
            let txn = ctx.db.begin().await?;
            let failed = lifecycle::fail_backup(&txn, row.id, Some(&worker), &reason).await?;
            txn.commit().await?;
            if failed {
                ctx.nudge.wake();
            }
            let _ = ctx.store.delete_prefix(&attempt_prefix, None).await;
        }
    }
    Ok(())
}

async fn take(
    ctx: &JobContext,
    row: &backup::Model,
    progress: Arc<JobProgress>,
) -> anyhow::Result<lifecycle::CompletedArtifact> {
    let inst = instance::Entity::find_by_id(row.instance_id)
        .one(&ctx.db)
        .await?
        .with_context(|| format!("instance {} no longer exists", row.instance_id))?;
    let datastore = ctx
        .datastores
        .get(&inst.datastore_type)
        .with_context(|| format!("datastore type {:?} is not served by this worker", inst.datastore_type))?;
    let source = cairn_shared::volume::check_registered(&ctx.config.volume_roots, &inst.volume_path)
        .with_context(|| format!("instance {}'s volume cannot be read", inst.id))?;
    let parent = match row.parent_id {
        Some(pid) => {
            let p = backup::Entity::find_by_id(pid)
                .one(&ctx.db)
                .await?
                .with_context(|| format!("parent backup {pid} no longer exists"))?;
            Some(StoredLink {
                backup_id: p.id,
                checksum: p.checksum.with_context(|| format!("parent backup {pid} has no checksum"))?,
                artifact_prefix: p.artifact_prefix.with_context(|| format!("parent backup {pid} has no artifact"))?,
            })
        }
        None => None,
    };
    let req = BackupRequest { backup_id: row.id, instance_id: inst.id, attempt: row.attempts, source, parent };
    datastore.backup(req, progress).await
}
