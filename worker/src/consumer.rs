//! Taking deliveries from RabbitMQ and handing them to job handlers.
//!
//! At most `CAIRN_WORKER_CONCURRENCY` jobs run at once (a semaphore; the
//! prefetch keeps as many more at hand). A delivery is acked once its handler
//! has recorded the outcome in the database; a message that cannot be parsed
//! is rejected to the dead-letter queue; a handler that failed for a
//! transient reason (database unreachable) is requeued after a pause. If the
//! connection drops, the loop reconnects with backoff; unacked deliveries
//! return to the queue and the database lease keeps their jobs safe.

use std::{sync::Arc, time::Duration};

use cairn_shared::{queue::Broker, status::JobMessage};
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{JobContext, jobs};

/// How long running jobs may take to finish after shutdown is requested.
const GRACE: Duration = Duration::from_secs(30);

/// Consumes until `shutdown`, reconnecting as needed; then drains.
pub async fn run(ctx: Arc<JobContext>, broker: Broker, shutdown: CancellationToken) {
    let running = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(ctx.config.worker_concurrency));
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match consume(&ctx, &broker, &shutdown, &running, &slots).await {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(200 * 2u64.pow(failures.min(5)));
                tracing::warn!(error = format!("{e:#}"), ?pause, "lost RabbitMQ; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    running.close();
    if tokio::time::timeout(GRACE, running.wait()).await.is_err() {
        tracing::warn!("grace period over: leaving the remaining jobs to other workers");
    }
}

async fn consume(
    ctx: &Arc<JobContext>,
    broker: &Broker,
    shutdown: &CancellationToken,
    running: &TaskTracker,
    slots: &Arc<Semaphore>,
) -> anyhow::Result<()> {
    let conn = broker.connect().await?;
    let prefetch = u16::try_from(ctx.config.worker_concurrency).unwrap_or(u16::MAX);
    let (_channel, consumers) = broker.consumers(&conn, prefetch, &ctx.config.worker_id).await?;
    let mut deliveries = futures::stream::select_all(consumers);
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the broker cancelled our consumers"),
            },
        };
        let permit = slots.clone().acquire_owned().await?;
        let ctx = ctx.clone();
        running.spawn(async move {
            handle(&ctx, delivery).await;
            drop(permit);
        });
    }
}

async fn handle(ctx: &JobContext, delivery: Delivery) {
    let msg: JobMessage = match serde_json::from_slice(&delivery.data) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::error!(error = %e, payload = %String::from_utf8_lossy(&delivery.data), "unreadable message: dead-lettering it");
            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    match jobs::handle(ctx, &msg).await {
        Ok(()) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                // The channel closed: the message comes back and the
                // conditional updates make the second run a no-op.
                tracing::warn!(error = %e, job = ?msg, "could not ack");
            }
        }
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), job = ?msg, "job could not be handled now; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        }
    }
}
