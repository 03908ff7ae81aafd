//! Taking deliveries from RabbitMQ and handing them to job handlers.
//!
//! At most `CAIRN_WORKER_CONCURRENCY` jobs run at once (a semaphore; the
//! prefetch keeps as many more at hand). A handler acks its delivery as soon
//! as it has claimed the job in the database, so no job holds a delivery for
//! its whole run. A delivery that cannot get a slot within
//! [`MAX_SLOT_WAIT`] goes back to the queue for another worker, so no
//! delivery stays unacked near RabbitMQ's `consumer_timeout` either.
//!
//! A message that cannot be parsed is rejected to the dead-letter queue; a
//! handler that could not reach the database is requeued after a pause. If
//! the connection drops, the loop reconnects with backoff.
//!
//! Shutdown: stop taking deliveries (unclaimed ones return to the queue),
//! let running jobs finish for `CAIRN_SHUTDOWN_GRACE_SECONDS`, then tell the
//! rest to stop; each hands its job back (its lease ends now and a message
//! is queued), so other workers take over at once.

use std::{sync::Arc, time::Duration};

use cairn_shared::{queue::Broker, status::JobMessage};
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicNackOptions, BasicRejectOptions},
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    JobContext,
    jobs::{self, Receipt},
};

/// Longest a delivery waits for a free slot before it is requeued.
const MAX_SLOT_WAIT: Duration = Duration::from_secs(600);
/// How long stopped jobs get to hand themselves back.
const HAND_BACK: Duration = Duration::from_secs(15);

/// Consumes until `shutdown`, reconnecting as needed; then drains.
pub async fn run(ctx: Arc<JobContext>, broker: Broker, shutdown: CancellationToken) {
    let running = TaskTracker::new();
    let stop_jobs = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(ctx.config.worker_concurrency));
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match consume(&ctx, &broker, &shutdown, &running, &slots, &stop_jobs).await {
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
    if tokio::time::timeout(ctx.config.shutdown_grace, running.wait()).await.is_err() {
        tracing::warn!("grace period over: handing the remaining jobs back to other workers");
        stop_jobs.cancel();
        if tokio::time::timeout(HAND_BACK, running.wait()).await.is_err() {
            tracing::warn!("some jobs did not hand themselves back; their leases will expire");
        }
    }
}

async fn consume(
    ctx: &Arc<JobContext>,
    broker: &Broker,
    shutdown: &CancellationToken,
    running: &TaskTracker,
    slots: &Arc<Semaphore>,
    stop_jobs: &CancellationToken,
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
        let (ctx, slots, shutdown, stop_jobs) = (ctx.clone(), slots.clone(), shutdown.clone(), stop_jobs.clone());
        running.spawn(async move {
            let permit = match tokio::time::timeout(MAX_SLOT_WAIT, slots.acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                    return;
                }
            };
            if shutdown.is_cancelled() {
                return; // not claimed: the delivery returns to the queue
            }
            handle(&ctx, delivery, &stop_jobs).await;
            drop(permit);
        });
    }
}

async fn handle(ctx: &JobContext, delivery: Delivery, stop_jobs: &CancellationToken) {
    let msg: JobMessage = match serde_json::from_slice(&delivery.data) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::error!(error = %e, payload = %String::from_utf8_lossy(&delivery.data), "unreadable message: dead-lettering it");
            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let receipt = Receipt::new(delivery.acker.clone());
    match jobs::handle(ctx, &msg, &receipt, stop_jobs).await {
        Ok(()) => receipt.ack().await,
        Err(e) if !receipt.is_acked() => {
            tracing::warn!(error = format!("{e:#}"), job = ?msg, "job could not be handled now; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        }
        // Claimed, then the database went away before the outcome could be
        // recorded: the lease expires and the sweeper hands the job on.
        Err(e) => tracing::error!(error = format!("{e:#}"), job = ?msg, "could not record a job's outcome"),
    }
}
