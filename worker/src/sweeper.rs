//! Finds jobs whose worker died, or whose message was lost, and re-enqueues
//! them.
//!
//! A job's lease expires when its worker stops heart-beating (killed, machine
//! gone, stalled). Its message may be gone too (acked, or dead-lettered), so
//! the sweeper re-enqueues such jobs through the outbox; the claim then takes
//! them over. A `NEW` backup is normally woken by the end of the backup it
//! waits for; one that has waited two leases (a minute by default) with
//! nothing queued for it is
//! re-enqueued too, so nothing stays `NEW` forever. One sweeper at a time per database does the work (an advisory
//! lock), so many workers do not multiply the messages.

use std::{sync::Arc, time::Duration};

use cairn_shared::{outbox, status::JobKind};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use tokio_util::sync::CancellationToken;

use crate::JobContext;

/// Arbitrary, fixed key of the sweeper's advisory lock.
const LOCK_KEY: i64 = 0x6361_6972_6e00_0001;

pub async fn run(ctx: Arc<JobContext>, shutdown: CancellationToken) {
    let period = (ctx.config.lease / 2).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        match sweep(&ctx).await {
            Ok(true) => ctx.nudge.wake(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}

/// Re-enqueues expired jobs; true if it found any.
async fn sweep(ctx: &JobContext) -> Result<bool, sea_orm::DbErr> {
    let txn = ctx.db.begin().await?;
    let locked = txn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT pg_try_advisory_xact_lock({LOCK_KEY}) AS ok"),
        ))
        .await?
        .and_then(|row| row.try_get::<bool>("", "ok").ok())
        .unwrap_or(false);
    if !locked {
        return Ok(false);
    }
    let stale_new: sea_orm::Value = (2.0 * ctx.config.lease.as_secs_f64()).into();
    let mut requeued = outbox::enqueue_where(
        &txn,
        JobKind::Backup,
        "SELECT id FROM backups WHERE status IN ('BUILDING', 'SAVING') AND lease_expires < now()",
        vec![],
    )
    .await?;
    requeued += outbox::enqueue_where(
        &txn,
        JobKind::Backup,
        "SELECT id FROM backups b WHERE status = 'NEW' AND updated < now() - make_interval(secs => $1)
            AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.target_id = b.id)",
        vec![stale_new],
    )
    .await?;
    requeued += outbox::enqueue_where(
        &txn,
        JobKind::Restore,
        "SELECT id FROM instances WHERE status = 'BUILD' AND NOT deleted
            AND (lease_owner IS NULL OR lease_expires < now()) AND created < now() - interval '10 seconds'",
        vec![],
    )
    .await?;
    if requeued == 0 {
        return Ok(false); // dropping the transaction rolls it back
    }
    txn.commit().await?;
    tracing::info!(jobs = requeued, "re-enqueued jobs whose worker stopped or whose message was lost");
    Ok(true)
}
