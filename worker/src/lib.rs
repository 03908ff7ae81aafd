//! The worker: consumes jobs from RabbitMQ and runs them.
//!
//! A worker owns no state of its own. The database says what a job is and
//! who runs it (a lease); the broker only says "look at job X". So any number
//! of workers on any number of machines can share the queues, a duplicated
//! message is harmless, and a worker that dies leaves nothing behind that
//! another cannot pick up once the lease has expired.

mod batch;
mod consumer;
mod jobs;
mod lease;
mod sweeper;

use std::sync::Arc;

use cairn_shared::{Config, datastore::Datastores, outbox::Nudge, queue::Broker, storage::ArtifactStore};
use sea_orm::DatabaseConnection;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// What every job handler can reach.
pub struct JobContext {
    /// The database: the truth about every job.
    pub db: DatabaseConnection,
    /// The datastores jobs run with.
    pub datastores: Datastores,
    /// Where artifacts are stored.
    pub store: ArtifactStore,
    /// This deployment's configuration.
    pub config: Config,
    /// Wakes this process's outbox relay.
    pub nudge: Nudge,
    /// Claims and completions of this process, batched.
    pub batches: batch::Batches,
}

/// Runs a worker until `shutdown` fires, then stops taking jobs, lets running
/// ones finish within a grace period and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db = cairn_shared::db::connect_and_migrate(&config.database_url).await?;
    let keys = match &config.encryption_key_file {
        Some(path) => Some(cairn_shared::seal::KeyRing::load(path)?),
        None => None,
    };
    let store = ArtifactStore::open(&config.storage_url)?.with_keys(keys);
    std::fs::create_dir_all(config.staging_dir())?;
    let broker = Broker::new(&config.amqp_url, &config.queue_prefix);
    let nudge = Nudge::default();
    let ctx = Arc::new(JobContext {
        db: db.clone(),
        datastores: Datastores::new(
            store.clone(),
            config.staging_dir(),
            cairn_delta::BackupOptions {
                block_size: config.block_size,
                read_limit: config.backup_read_limit,
                ..cairn_delta::BackupOptions::default()
            },
        ),
        store,
        config: config.clone(),
        nudge: nudge.clone(),
        batches: batch::Batches::start(db.clone(), config.worker_id.clone(), config.lease),
    });
    let background = TaskTracker::new();
    background.spawn(cairn_shared::outbox::run_relay(db.clone(), broker.clone(), nudge.clone(), shutdown.clone()));
    background.spawn(sweeper::run(ctx.clone(), shutdown.clone()));
    tracing::info!(
        worker_id = %config.worker_id,
        concurrency = config.worker_concurrency,
        encryption_key_id = ctx.store.current_key_id().unwrap_or("none"),
        "cairn-worker started"
    );
    consumer::run(ctx, broker, shutdown).await;
    background.close();
    background.wait().await;
    tracing::info!(worker_id = %config.worker_id, "cairn-worker stopped");
    Ok(())
}
