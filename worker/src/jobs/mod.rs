//! Job handlers, one per kind. Each re-reads its row, acts only if the
//! status says the work is still to do, and records the outcome through
//! `cairn_shared::lifecycle`.
//!
//! A handler acks its delivery as soon as the job is claimed (or found to
//! need nothing): from then on the database lease owns the job, so a job can
//! run for hours without holding a delivery past RabbitMQ's
//! `consumer_timeout`, and a dead worker's job is found by its expired lease.
//! `Err` from a handler means "could not decide now" (the database is
//! unreachable before the claim): the consumer requeues the message.

mod backup;
mod chain;
mod delete;
mod restore;
mod verify;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use cairn_shared::{
    failure::is_permanent,
    lifecycle::{self, Leased},
    status::{JobKind, JobMessage},
};
use lapin::{Acker, options::BasicAckOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::JobContext;

/// The delivery a job came in, acked once.
pub struct Receipt {
    acker: Acker,
    acked: AtomicBool,
}

impl Receipt {
    pub fn new(acker: Acker) -> Self {
        Self { acker, acked: AtomicBool::new(false) }
    }

    /// Acks the delivery (once; later calls do nothing).
    pub async fn ack(&self) {
        if !self.acked.swap(true, Ordering::SeqCst)
            && let Err(e) = self.acker.ack(BasicAckOptions::default()).await
        {
            // The channel closed: the message comes back, and the claim
            // makes the second delivery a no-op.
            tracing::warn!(error = %e, "could not ack");
        }
    }

    /// Whether the delivery was acked.
    pub fn is_acked(&self) -> bool {
        self.acked.load(Ordering::SeqCst)
    }
}

/// Why a running job stopped without an outcome of its own.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    /// Another worker owns the job now.
    #[error("lease lost to another worker")]
    LeaseLost,
    /// This worker is stopping.
    #[error("worker shutting down")]
    Shutdown,
}

/// Runs the job `msg` names. `stop` fires when the worker's grace period is
/// over: running jobs then hand themselves back.
pub async fn handle(
    ctx: &JobContext,
    msg: &JobMessage,
    receipt: &Receipt,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    match msg.kind {
        JobKind::Backup => backup::run(ctx, msg.id, receipt, stop).await,
        JobKind::Restore => restore::run(ctx, msg.id, receipt, stop).await,
        JobKind::DeleteBackup => delete::run(ctx, msg.id).await,
        JobKind::VerifyBackup => verify::run(ctx, msg.id, receipt).await,
    }
}

/// What to do with a running job that did not succeed.
pub enum Disposition {
    /// Hand it back now (shutdown).
    Release,
    /// Try again after a delay.
    Retry(Duration),
    /// Fail for good with this reason.
    Fail(String),
    /// Nothing: another worker owns it.
    Abandon,
}

/// Decides what an error means for attempt `attempt` of a job.
pub fn dispose(ctx: &JobContext, err: &anyhow::Error, attempt: i32) -> Disposition {
    match err.downcast_ref::<Interrupted>() {
        Some(Interrupted::LeaseLost) => return Disposition::Abandon,
        Some(Interrupted::Shutdown) => return Disposition::Release,
        None => {}
    }
    let reason = format!("{err:#}");
    let attempt = u32::try_from(attempt).unwrap_or(1).max(1);
    if is_permanent(err) || attempt >= ctx.config.max_attempts {
        if attempt > 1 {
            return Disposition::Fail(format!("failed after {attempt} attempts: {reason}"));
        }
        return Disposition::Fail(reason);
    }
    // 1 s, 5 s, 30 s, 120 s, 600 s: the delay queues' tiers.
    let tiers = cairn_shared::queue::RETRY_DELAYS;
    let delay = tiers[(attempt as usize - 1).min(tiers.len() - 1)];
    Disposition::Retry(Duration::from_secs(u64::from(delay)))
}

/// Hands a running job back (release or retry), logging the outcome.
pub async fn hand_back(
    ctx: &JobContext,
    job: Leased,
    id: Uuid,
    after: Duration,
    note: Option<&str>,
) -> anyhow::Result<()> {
    let released = retry_db(|| lifecycle::release(&ctx.db, job, id, &ctx.config.worker_id, after, note)).await?;
    if released {
        ctx.nudge.wake();
        tracing::info!(?after, "job handed back for another attempt");
    }
    Ok(())
}

/// Retries a database call through transient errors (backoff with jitter).
pub async fn retry_db<T, F, Fut>(call: F) -> Result<T, sea_orm::DbErr>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sea_orm::DbErr>>,
{
    use backon::Retryable;
    call.retry(cairn_shared::db::retry_policy())
        .notify(|e, after| tracing::warn!(error = %e, ?after, "database call failed; retrying"))
        .await
}
