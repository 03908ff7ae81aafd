//! Running one restore: claim the instance, check the chain, apply it.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use cairn_shared::{
    datastore::{JobProgress, RestoreRequest},
    entities::instance,
    failure::permanent,
    lifecycle::{self, Leased},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{Disposition, Interrupted, Receipt, dispose, hand_back, retry_db};
use crate::{JobContext, lease};

pub async fn run(ctx: &JobContext, id: Uuid, receipt: &Receipt, stop: &CancellationToken) -> anyhow::Result<()> {
    let worker = ctx.config.worker_id.clone();
    let claimed = lifecycle::claim_restore(&ctx.db, id, &worker, ctx.config.lease).await?;
    receipt.ack().await;
    let Some(inst) = claimed else {
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
            () = heartbeat.lost.cancelled() => Err(Interrupted::LeaseLost.into()),
            () = stop.cancelled() => Err(Interrupted::Shutdown.into()),
        };
        drop(heartbeat);
        let err = match outcome {
            Ok(steps) => {
                if retry_db(|| lifecycle::finish_restore(&ctx.db, inst.id, &worker, Ok(steps))).await? {
                    tracing::info!(steps, "restore completed: instance ACTIVE");
                } else {
                    tracing::warn!("restore ended but another worker owns it now");
                }
                return Ok(());
            }
            Err(err) => err,
        };
        match dispose(ctx, &err, inst.attempts) {
            Disposition::Abandon => tracing::warn!("another worker owns this restore now"),
            Disposition::Release => hand_back(ctx, Leased::Restore, inst.id, Default::default(), None).await?,
            Disposition::Retry(after) => {
                let note = format!("attempt {} failed: {err:#}; retrying in {}s", inst.attempts, after.as_secs());
                tracing::warn!(reason = %note, "restore attempt failed");
                hand_back(ctx, Leased::Restore, inst.id, after, Some(&note)).await?;
            }
            Disposition::Fail(reason) => {
                tracing::error!(%reason, "restore failed: instance ERROR");
                retry_db(|| lifecycle::finish_restore(&ctx.db, inst.id, &worker, Err(&reason))).await?;
            }
        }
        anyhow::Ok(())
    }
    .instrument(span)
    .await
}

async fn apply(ctx: &JobContext, inst: &instance::Model, progress: Arc<JobProgress>) -> anyhow::Result<u32> {
    let backup_id = inst.restore_backup_id.context("instance was not created from a backup").map_err(permanent)?;
    let links = super::chain::stored_chain(ctx, backup_id).await?;
    let datastore = ctx.datastores.get(&inst.datastore_type).ok_or_else(|| {
        permanent(anyhow::anyhow!("datastore type {:?} is not served by this worker", inst.datastore_type))
    })?;
    progress.set(0, links.len() as u64);
    let req = RestoreRequest {
        instance_id: inst.id,
        attempt: inst.attempts,
        chain: links,
        target: PathBuf::from(&inst.volume_path),
    };
    datastore.restore(req, progress).await
}
