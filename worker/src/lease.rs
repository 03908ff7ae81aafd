//! Heartbeats: keep a running job's lease alive and publish its progress.
//!
//! If a heartbeat finds the lease gone (another worker took the job over
//! because this one stalled), the job is cancelled: two workers never finish
//! the same job, and the later owner's result stands.

use std::{sync::Arc, time::Duration};

use cairn_shared::datastore::JobProgress;
use tokio_util::sync::CancellationToken;

/// How often a running job publishes its progress (and renews its lease).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A running heartbeat; stops when dropped.
pub struct Heartbeat {
    stop: CancellationToken,
    /// Fires when the lease was lost.
    pub lost: CancellationToken,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Beats every second (or `lease / 3` if shorter), calling `beat(done, total)`; `beat` returns
/// `Ok(false)` when the lease is no longer ours.
pub fn start<F, Fut>(lease: Duration, progress: Arc<JobProgress>, beat: F) -> Heartbeat
where
    F: Fn(u64, u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<bool, sea_orm::DbErr>> + Send,
{
    let stop = CancellationToken::new();
    let lost = CancellationToken::new();
    let (stop_task, lost_task) = (stop.clone(), lost.clone());
    // Renewing a third of the way through the lease would be enough for the
    // lease; progress wants fresher figures, so beat at least every second.
    let period = (lease / 3).min(PROGRESS_EVERY).max(Duration::from_millis(200));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop_task.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (done, total) = progress.get();
            match beat(done, total).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("lease lost: another worker owns this job now; stopping");
                    lost_task.cancel();
                    return;
                }
                // The database is unreachable: keep trying; if it stays away
                // past the lease, another worker takes over and our final
                // conditional update will find nothing to update.
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    });
    Heartbeat { stop, lost }
}
