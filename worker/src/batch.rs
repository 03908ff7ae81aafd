//! Claims and completions of backups, batched per worker process.
//!
//! Why: a job on an empty volume costs a claim and a completion, each one
//! statement and one commit. With many jobs running at once in a worker,
//! these single-row statements took a good part of PostgreSQL's CPU; the
//! same work for several jobs fits in one statement each.
//!
//! How: a job hands its claim (or completion) to the process's
//! [`Batcher`] (`cairn_shared::batch`) and waits for its own answer. The
//! batcher sends whatever is waiting as one statement, with no timer: a
//! lone job goes at once, and while [`IN_FLIGHT`] statements run the next
//! requests gather. Each job keeps the answer it would have had alone:
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

use std::time::Duration;

use cairn_shared::{
    batch::{Batcher, Limits},
    lifecycle::{self, BackupClaim, CompletedArtifact, Completion},
};
use sea_orm::{DatabaseConnection, DbErr};
use uuid::Uuid;

/// Most requests in one statement.
const MAX_BATCH: usize = 64;
/// Statements of one batcher running at once. One: while it runs, the
/// next jobs' requests gather for the next statement. A job waits at most
/// one statement longer; a worker's jobs rarely need more than one claim
/// or completion at the same moment, so with two slots most statements
/// carried a single job.
const IN_FLIGHT: usize = 1;
/// Requests waiting for the batcher. Each job waits for its own answer, so
/// at most `CAIRN_WORKER_CONCURRENCY` requests ever wait: a bound that a
/// worker does not reach.
const QUEUE: usize = 4096;
const LIMITS: Limits = Limits { max_batch: MAX_BATCH, in_flight: IN_FLIGHT, queue: QUEUE };

/// The batchers of one worker process.
pub struct Batches {
    claims: Batcher<Uuid, Result<BackupClaim, DbErr>>,
    completions: Batcher<(Uuid, CompletedArtifact), Result<Completion, DbErr>>,
}

fn gone(e: cairn_shared::batch::BatchError) -> DbErr {
    DbErr::Custom(format!("the worker's batcher: {e}"))
}

impl Batches {
    /// Batchers claiming and completing for `worker` on `db`.
    pub fn start(db: DatabaseConnection, worker: String, lease: Duration) -> Self {
        let claims = {
            let (db, worker) = (db.clone(), worker.clone());
            Batcher::start_in_order(LIMITS, move |ids: Vec<Uuid>| {
                let (db, worker) = (db.clone(), worker.clone());
                async move { claim_batch(&db, &worker, lease, ids).await }
            })
        };
        let completions = Batcher::start_in_order(LIMITS, move |items: Vec<(Uuid, CompletedArtifact)>| {
            let (db, worker) = (db.clone(), worker.clone());
            async move { complete_batch(&db, &worker, items).await }
        });
        Self { claims, completions }
    }

    /// [`lifecycle::claim_backup`], batched with other jobs' claims.
    pub async fn claim(&self, id: Uuid) -> Result<BackupClaim, DbErr> {
        self.claims.call(id).await.unwrap_or_else(|e| Err(gone(e)))
    }

    /// [`lifecycle::complete_backup`], batched with other jobs' completions.
    pub async fn complete(&self, id: Uuid, artifact: CompletedArtifact) -> Result<Completion, DbErr> {
        self.completions.call((id, artifact)).await.unwrap_or_else(|e| Err(gone(e)))
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
