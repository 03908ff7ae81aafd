//! Claims and completions of backups, batched per worker process.
//!
//! Why: a job on an empty volume costs a claim and a completion, each one
//! statement and one commit. With many jobs running at once in a worker,
//! these single-row statements took a good part of PostgreSQL's CPU; the
//! same work for several jobs fits in one statement each.
//!
//! How: a job hands its claim (or completion) to the process's batcher and
//! waits for its own answer. The batcher sends whatever is waiting as one
//! statement, with no timer: a lone job goes at once, and while
//! [`IN_FLIGHT`] statements run the next requests gather. Each job keeps
//! the answer it would have had alone:
//! - a claim of several backups is one atomic `UPDATE`. If it would break
//!   rule 3 (two backups of one instance, or an instance already running
//!   one) it fails as a whole and claims nothing; the batch is then claimed
//!   one by one, as without batching. A backup the statement did not claim
//!   gets the same explanation as alone (waiting, parent failed, nothing
//!   to do);
//! - a completion of several backups is one `UPDATE ... FROM unnest(...)`
//!   with the same conditions as alone (still `BUILDING`/`SAVING`, lease
//!   still ours). A job counts as completed only if the row now records
//!   its own attempt's artifact, so at most one attempt of a backup is ever
//!   told it completed it. If the statement fails, every job of the batch
//!   gets the error and retries on its own (through the batcher again).

use std::{future::Future, sync::Arc, time::Duration};

use cairn_shared::lifecycle::{self, BackupClaim, CompletedArtifact, Completion};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

/// Most requests in one statement.
const MAX_BATCH: usize = 64;
/// Statements of one batcher running at once. One: while it runs, the
/// next jobs' requests gather for the next statement. A job waits at most
/// one statement longer; a worker's jobs rarely need more than one claim
/// or completion at the same moment, so with two slots most statements
/// carried a single job.
const IN_FLIGHT: usize = 1;

/// Runs requests of type `I` in batches, answering each with an `O`.
struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<(I, oneshot::Sender<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// `run` takes a batch and returns one answer per request, in order.
    fn start<F, Fut>(run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(I, oneshot::Sender<O>)>();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (inputs, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
                let answers = run(inputs);
                tokio::spawn(async move {
                    for (reply, answer) in replies.into_iter().zip(answers.await) {
                        let _ = reply.send(answer);
                    }
                    drop(slot);
                });
            }
        });
        Self { tx }
    }

    async fn call(&self, input: I) -> Option<O> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((input, reply)).ok()?;
        answer.await.ok()
    }
}

/// The batchers of one worker process.
pub struct Batches {
    claims: Batcher<Uuid, Result<BackupClaim, DbErr>>,
    completions: Batcher<(Uuid, CompletedArtifact), Result<Completion, DbErr>>,
}

fn gone() -> DbErr {
    DbErr::Custom("the worker's batcher has stopped".into())
}

impl Batches {
    /// Batchers claiming and completing for `worker` on `db`.
    pub fn start(db: DatabaseConnection, worker: String, lease: Duration) -> Self {
        let claims = {
            let (db, worker) = (db.clone(), worker.clone());
            Batcher::start(move |ids: Vec<Uuid>| {
                let (db, worker) = (db.clone(), worker.clone());
                async move { claim_batch(&db, &worker, lease, ids).await }
            })
        };
        let completions = Batcher::start(move |items: Vec<(Uuid, CompletedArtifact)>| {
            let (db, worker) = (db.clone(), worker.clone());
            async move { complete_batch(&db, &worker, items).await }
        });
        Self { claims, completions }
    }

    /// [`lifecycle::claim_backup`], batched with other jobs' claims.
    pub async fn claim(&self, id: Uuid) -> Result<BackupClaim, DbErr> {
        self.claims.call(id).await.unwrap_or_else(|| Err(gone()))
    }

    /// [`lifecycle::complete_backup`], batched with other jobs' completions.
    pub async fn complete(&self, id: Uuid, artifact: CompletedArtifact) -> Result<Completion, DbErr> {
        self.completions.call((id, artifact)).await.unwrap_or_else(|| Err(gone()))
    }
}

async fn claim_batch(
    db: &DatabaseConnection,
    worker: &str,
    lease: Duration,
    ids: Vec<Uuid>,
) -> Vec<Result<BackupClaim, DbErr>> {
    if ids.len() > 1 {
        match lifecycle::claim_backups(db, &ids, worker, lease).await {
            Ok(claimed) => {
                let mut claimed: std::collections::HashMap<Uuid, lifecycle::ClaimedBackup> =
                    claimed.into_iter().map(|c| (c.row.id, c)).collect();
                let mut answers = Vec::with_capacity(ids.len());
                for id in ids {
                    // An id listed twice is claimed once: the second asker
                    // finds it running, as a duplicate message would.
                    answers.push(match claimed.remove(&id) {
                        Some(c) => Ok(BackupClaim::Claimed(Box::new(c))),
                        None => lifecycle::explain_unclaimed(db, id).await,
                    });
                }
                return answers;
            }
            Err(e) => {
                tracing::debug!(error = %e, claims = ids.len(), "batched claim refused; claiming one by one");
            }
        }
    }
    let mut answers = Vec::with_capacity(ids.len());
    for id in ids {
        answers.push(lifecycle::claim_backup(db, id, worker, lease).await);
    }
    answers
}

async fn complete_batch(
    db: &DatabaseConnection,
    worker: &str,
    items: Vec<(Uuid, CompletedArtifact)>,
) -> Vec<Result<Completion, DbErr>> {
    if let [(id, artifact)] = items.as_slice() {
        return vec![lifecycle::complete_backup(db, *id, worker, artifact).await];
    }
    match lifecycle::complete_backups(db, worker, &items).await {
        Ok((completed, woken)) => completed.into_iter().map(|completed| Ok(Completion { completed, woken })).collect(),
        Err(e) => {
            let message = e.to_string();
            items.iter().map(|_| Err(DbErr::Custom(message.clone()))).collect()
        }
    }
}
