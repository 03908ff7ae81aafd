//! Running one restore: claim the instance, check the chain, apply it.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, bail};
use cairn_shared::{
    datastore::{JobProgress, RestoreRequest, StoredLink},
    entities::instance,
    lifecycle,
    status::BackupStatus,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::{JobContext, lease};

pub async fn run(ctx: &JobContext, id: Uuid) -> anyhow::Result<()> {
    let worker = ctx.config.worker_id.clone();
    let Some(inst) = lifecycle::claim_restore(&ctx.db, id, &worker, ctx.config.lease).await? else {
        return Ok(()); // done already, or running elsewhere
    };
    let span = tracing::info_span!(
        "restore",
        instance_id = %inst.id,
        backup_id = ?inst.restore_backup_id,
        attempt = inst.attempts
    );
    async move {
        tracing::info!(target = %inst.volume_path, "restore started");
        let progress = Arc::new(JobProgress::default());
        let beat = {
            let (db, lease, id, worker) = (ctx.db.clone(), ctx.config.lease, inst.id, worker.clone());
            move |step: u64, steps: u64| {
                let (db, worker) = (db.clone(), worker.clone());
                async move { lifecycle::heartbeat_restore(&db, id, &worker, lease, step as u32, steps as u32).await }
            }
        };
        let heartbeat = lease::start(ctx.config.lease, progress.clone(), beat);
        let outcome = tokio::select! {
            r = apply(ctx, &inst, progress) => r,
            () = heartbeat.lost.cancelled() => Err(anyhow::anyhow!("lease lost to another worker")),
        };
        drop(heartbeat);
        let reason = outcome.as_ref().err().map(|e| format!("{e:#}"));
        let recorded = match (&outcome, &reason) {
            (Ok(steps), _) => lifecycle::finish_restore(&ctx.db, inst.id, &worker, Ok(*steps)).await?,
            (Err(_), Some(reason)) => lifecycle::finish_restore(&ctx.db, inst.id, &worker, Err(reason)).await?,
            (Err(_), None) => unreachable!("an error always has a reason"),
        };
        match (recorded, reason) {
            (true, None) => tracing::info!("restore completed: instance ACTIVE"),
            (true, Some(reason)) => tracing::error!(%reason, "restore failed: instance ERROR"),
            (false, _) => tracing::warn!("restore ended but another worker owns it now"),
        }
        anyhow::Ok(())
    }
    .instrument(span)
    .await
}

async fn apply(ctx: &JobContext, inst: &instance::Model, progress: Arc<JobProgress>) -> anyhow::Result<u32> {
    let backup_id = inst.restore_backup_id.context("instance was not created from a backup")?;
    let chain = lifecycle::chain_of(&ctx.db, backup_id).await?;
    if chain.last().map(|b| b.id) != Some(backup_id) {
        bail!("backup {backup_id} no longer exists");
    }
    if let Some(root) = chain.first()
        && let Some(missing) = root.parent_id
    {
        bail!("link 1 of the chain is missing: backup {missing} (parent of {}) no longer exists", root.id);
    }
    let mut links = Vec::with_capacity(chain.len());
    for (i, b) in chain.iter().enumerate() {
        if b.status != BackupStatus::Completed.as_str() {
            bail!("link {} of the chain (backup {}) is {}", i + 1, b.id, b.status);
        }
        links.push(StoredLink {
            backup_id: b.id,
            checksum: b
                .checksum
                .clone()
                .with_context(|| format!("link {} (backup {}) has no checksum", i + 1, b.id))?,
            artifact_prefix: b
                .artifact_prefix
                .clone()
                .with_context(|| format!("link {} (backup {}) has no artifact", i + 1, b.id))?,
        });
    }
    let datastore = ctx
        .datastores
        .get(&inst.datastore_type)
        .with_context(|| format!("datastore type {:?} is not served by this worker", inst.datastore_type))?;
    progress.set(0, links.len() as u64);
    let req = RestoreRequest {
        instance_id: inst.id,
        attempt: inst.attempts,
        chain: links,
        target: PathBuf::from(&inst.volume_path),
    };
    datastore.restore(req, progress).await
}
