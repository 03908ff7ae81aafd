//! The state machine of backups and restores, in one place.
//!
//! ```text
//! backup:    NEW ──claim──▶ BUILDING ──▶ SAVING ──▶ COMPLETED ──delete──▶ DELETING ──▶ (gone)
//!             │                │            │                                  │
//!             └──parent failed─┴──error─────┴──▶ FAILED ──delete──▶ DELETING   └──▶ DELETE_FAILED
//! instance:  BUILD ──claim (lease)──▶ BUILD ──▶ ACTIVE | ERROR        (registered: ACTIVE)
//! ```
//!
//! A backup that stored only its manifest goes from `BUILDING` straight to
//! `COMPLETED` (nothing is left to make durable, so `SAVING` would be a
//! commit that shows nothing).
//!
//! Every move is a single conditional `UPDATE ... WHERE status = <expected>`
//! (DESIGN.md §4 rule 6). RabbitMQ delivers at least once and two workers may
//! race for one message; whichever update matches wins, the other sees zero
//! rows and drops the message. A status never moves backwards.
//!
//! A running job is owned through a lease (`lease_owner`, `lease_expires`)
//! that the worker's heartbeat extends. A finished job keeps `lease_owner`
//! (who ran it) and clears `lease_expires`, so it can never be claimed again. Every move a running job makes is
//! also conditional on still owning the lease, so a worker that stalled past
//! its lease and was taken over cannot overwrite its successor's result.
//!
//! A failed attempt that may succeed on retry, or a job whose worker is
//! stopping, is [`release`]d: its lease ends (now, or after the retry delay)
//! and a message is queued, so another worker takes it over; its status does
//! not move. After `CAIRN_MAX_ATTEMPTS` attempts it fails for good.
//!
//! Rule 3 (one `BUILDING` backup per instance) is a partial unique index; a
//! claim that would break it fails and the job waits. Whoever ends a backup
//! (completes, fails) re-enqueues the instance's waiting `NEW` backups in the
//! same transaction, so no waiter is forgotten.

use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, Statement, TransactionSession, TransactionTrait,
    Value,
};
use uuid::Uuid;

use crate::{
    entities::{backup, instance},
    outbox,
    status::{BackupStatus, InstanceStatus, JobKind},
};

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn lease_secs(lease: Duration) -> Value {
    (lease.as_secs_f64()).into()
}

/// What came of trying to claim a `NEW` backup.
#[derive(Debug)]
pub enum BackupClaim {
    /// This worker owns the backup now (status `BUILDING`).
    Claimed(Box<ClaimedBackup>),
    /// Not runnable yet: its parent is not `COMPLETED`, or another backup of
    /// the instance is running. It is re-enqueued when that one ends.
    Waiting(String),
    /// Its parent failed or disappeared; the backup was moved to `FAILED`.
    ParentFailed(String),
    /// Nothing to do: the row is gone or past `NEW` (a duplicate message).
    NotRunnable,
}

/// A claimed backup with what running it needs, read by the claim itself.
#[derive(Debug)]
pub struct ClaimedBackup {
    /// The backup's row after the claim.
    pub row: backup::Model,
    /// Its instance, `None` if the row is gone.
    pub instance: Option<ClaimedInstance>,
}

/// The instance fields a backup reads.
#[derive(Debug)]
pub struct ClaimedInstance {
    pub datastore_type: String,
    pub volume_path: String,
}

/// Claims backup `id` for `worker`: `NEW` → `BUILDING`, or takes over a
/// `BUILDING` or `SAVING` backup whose lease has expired (its worker died).
/// A takeover keeps the status it finds: the new attempt starts over under
/// its own prefix, but a status seen by a client never moves backwards
/// (a `SAVING` backup stays `SAVING` until it is `COMPLETED`).
pub async fn claim_backup<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    id: Uuid,
    worker: &str,
    lease: Duration,
) -> Result<BackupClaim, DbErr> {
    // One round trip: the conditional UPDATE, and in the same statement
    // the instance and parent fields the job needs (read after the claim
    // matched, from the statement's snapshot; neither can change under a
    // running backup: a delete is refused while it runs).
    let claim = stmt(&claim_sql("b.id = $1"), vec![id.into(), worker.into(), lease_secs(lease)]);
    match db.query_one_raw(claim).await {
        Ok(Some(res)) => return Ok(BackupClaim::Claimed(Box::new(claimed_from(&res)?))),
        Ok(None) => {}
        Err(e) if is_unique_violation(&e) => {
            return Ok(BackupClaim::Waiting("another backup of this instance is running".into()));
        }
        Err(e) => return Err(e),
    }
    explain_unclaimed(db, id).await
}

/// The claim statement for the backups `filter` selects (`$1`: the id or
/// ids, `$2`: the worker, `$3`: the lease in seconds).
fn claim_sql(filter: &str) -> String {
    format!(
        r#"WITH claimed AS (
               UPDATE backups b
                  SET status = CASE WHEN b.status = 'NEW' THEN 'BUILDING' ELSE b.status END,
                      lease_owner = $2,
                      lease_expires = now() + make_interval(secs => $3),
                      attempts = attempts + 1, fail_reason = NULL, updated = now()
                WHERE {filter}
                  AND (b.status = 'NEW'
                       OR (b.status IN ('BUILDING', 'SAVING') AND b.lease_expires < now()))
                  AND (b.parent_id IS NULL
                       OR EXISTS (SELECT 1 FROM backups p WHERE p.id = b.parent_id AND p.status = 'COMPLETED'))
            RETURNING b.*)
           SELECT c.*,
                  i.id AS claim_instance_id, i.datastore_type AS claim_instance_datastore_type,
                  i.volume_path AS claim_instance_volume_path
             FROM claimed c
             LEFT JOIN instances i ON i.id = c.instance_id"#
    )
}

fn claimed_from(res: &sea_orm::QueryResult) -> Result<ClaimedBackup, DbErr> {
    let row = backup::Model::from_query_result(res, "")?;
    let instance = match res.try_get::<Option<Uuid>>("", "claim_instance_id")? {
        Some(_) => Some(ClaimedInstance {
            datastore_type: res.try_get("", "claim_instance_datastore_type")?,
            volume_path: res.try_get("", "claim_instance_volume_path")?,
        }),
        None => None,
    };
    Ok(ClaimedBackup { row, instance })
}

/// Claims, in one statement, every backup of `ids` that [`claim_backup`]
/// would claim, and returns them. The statement is atomic: if claiming them
/// all would break rule 3 (two of one instance, or one whose instance runs
/// a backup already), it fails with a unique violation and claims nothing,
/// and the caller claims them one by one. An id listed twice is claimed
/// once. The ids not returned were not claimable: [`explain_unclaimed`]
/// says why.
pub async fn claim_backups<C: ConnectionTrait>(
    db: &C,
    ids: &[Uuid],
    worker: &str,
    lease: Duration,
) -> Result<Vec<ClaimedBackup>, DbErr> {
    let rows = db
        .query_all_raw(stmt(&claim_sql("b.id = ANY($1)"), vec![ids.to_vec().into(), worker.into(), lease_secs(lease)]))
        .await?;
    rows.iter().map(claimed_from).collect()
}

/// Why backup `id` could not be claimed, from the rows as they are now; a
/// backup whose parent failed is failed here.
pub async fn explain_unclaimed<C: ConnectionTrait + TransactionTrait>(db: &C, id: Uuid) -> Result<BackupClaim, DbErr> {
    let Some(row) = backup::Entity::find_by_id(id).one(db).await? else {
        return Ok(BackupClaim::NotRunnable);
    };
    if BackupStatus::parse(&row.status) != Some(BackupStatus::New) {
        return Ok(BackupClaim::NotRunnable);
    }
    let Some(parent_id) = row.parent_id else {
        return Ok(BackupClaim::NotRunnable);
    };
    let parent = backup::Entity::find_by_id(parent_id).one(db).await?;
    let parent_status = parent.as_ref().and_then(|p| BackupStatus::parse(&p.status));
    let reason = match (parent, parent_status) {
        (_, Some(BackupStatus::New | BackupStatus::Building | BackupStatus::Saving)) => {
            return Ok(BackupClaim::Waiting(format!("waiting for parent backup {parent_id}")));
        }
        // The parent completed between the claim and this read: try again.
        (_, Some(BackupStatus::Completed)) => {
            return Ok(BackupClaim::Waiting(format!("parent backup {parent_id} just completed")));
        }
        (Some(p), Some(status)) => match p.fail_reason {
            Some(why) => format!("parent backup {parent_id} is {status}: {why}"),
            None => format!("parent backup {parent_id} is {status}"),
        },
        _ => format!("parent backup {parent_id} no longer exists"),
    };
    let txn = db.begin().await?;
    let failed = fail_backup(&txn, id, None, &reason).await?;
    txn.commit().await?;
    Ok(if failed { BackupClaim::ParentFailed(reason) } else { BackupClaim::NotRunnable })
}

/// Extends the lease of a running backup and records its progress. Returns
/// false when this worker no longer owns it: the job must stop.
pub async fn heartbeat_backup<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    worker: &str,
    lease: Duration,
    done: u64,
    total: u64,
) -> Result<bool, DbErr> {
    let res = db
        .execute_raw(stmt(
            r#"UPDATE backups SET lease_expires = now() + make_interval(secs => $3),
                      progress_done = $4, progress_total = $5, updated = now()
                WHERE id = $1 AND lease_owner = $2 AND status IN ('BUILDING', 'SAVING')"#,
            vec![id.into(), worker.into(), lease_secs(lease), (done as i64).into(), (total as i64).into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}

/// `BUILDING` → `SAVING`: the data is read, the objects are being made durable.
pub async fn mark_saving<C: ConnectionTrait>(db: &C, id: Uuid, worker: &str) -> Result<bool, DbErr> {
    let res = db
        .execute_raw(stmt(
            "UPDATE backups SET status = 'SAVING', updated = now()
              WHERE id = $1 AND lease_owner = $2 AND status = 'BUILDING'",
            vec![id.into(), worker.into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}

/// What a finished backup produced, as recorded on its row.
#[derive(Debug, Clone)]
pub struct CompletedArtifact {
    /// BLAKE3 of the stored manifest, hex.
    pub checksum: String,
    /// Stored bytes: packs plus manifest.
    pub bytes: u64,
    /// URL of the manifest, Trove's `locationRef`.
    pub location_ref: String,
    /// Object-store prefix of the attempt that produced the artifact.
    pub artifact_prefix: String,
    /// Pack objects stored (0 for a backup whose manifest says it all).
    pub pack_objects: usize,
}

/// `BUILDING`/`SAVING` → `COMPLETED`, and wakes the instance's waiting
/// backups (its children, and siblings held back by rule 3).
///
/// One statement, so one round trip and one commit: the conditional
/// `UPDATE` and the outbox entries of the woken backups are data-modifying
/// CTEs of the same query, atomic as a transaction would make them. The
/// wake's `SELECT` reads the snapshot from before the update, which cannot
/// matter: the backup being completed was not `NEW`.
///
/// Says how many outbox entries it wrote, so the caller wakes its relay
/// only when there is something to publish (most completions wake nobody).
pub async fn complete_backup<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    worker: &str,
    artifact: &CompletedArtifact,
) -> Result<Completion, DbErr> {
    let row = db
        .query_one_raw(stmt(
            r#"WITH done AS (
                   UPDATE backups SET status = 'COMPLETED', checksum = $3, bytes = $4, location_ref = $5,
                          artifact_prefix = $6, progress_done = progress_total,
                          lease_expires = NULL, updated = now()
                    WHERE id = $1 AND lease_owner = $2 AND status IN ('BUILDING', 'SAVING')
                RETURNING instance_id),
               woken AS (
                   INSERT INTO outbox (kind, target_id)
                   SELECT $7, w.id FROM backups w JOIN done ON w.instance_id = done.instance_id
                    WHERE w.status = 'NEW' ORDER BY w.created
                RETURNING 1)
               SELECT (SELECT count(*) FROM done) AS completed, (SELECT count(*) FROM woken) AS woken"#,
            vec![
                id.into(),
                worker.into(),
                artifact.checksum.clone().into(),
                (artifact.bytes as i64).into(),
                artifact.location_ref.clone().into(),
                artifact.artifact_prefix.clone().into(),
                JobKind::Backup.as_str().into(),
            ],
        ))
        .await?;
    let (completed, woken): (i64, i64) = match row {
        Some(row) => (row.try_get("", "completed")?, row.try_get("", "woken")?),
        None => (0, 0),
    };
    Ok(Completion { completed: completed == 1, woken: woken.max(0) as u64 })
}

/// [`complete_backup`] for several backups of `worker` in one statement:
/// each completes only if `worker` still owns it, exactly as alone. Says,
/// for each item in order, whether this call completed it with that item's
/// artifact (so of two attempts listed for one backup, only the one
/// recorded counts as completed), and how many outbox entries it wrote.
pub async fn complete_backups<C: ConnectionTrait>(
    db: &C,
    worker: &str,
    items: &[(Uuid, CompletedArtifact)],
) -> Result<(Vec<bool>, u64), DbErr> {
    let ids: Vec<Uuid> = items.iter().map(|(id, _)| *id).collect();
    let checksums: Vec<String> = items.iter().map(|(_, a)| a.checksum.clone()).collect();
    let bytes: Vec<i64> = items.iter().map(|(_, a)| a.bytes as i64).collect();
    let locations: Vec<String> = items.iter().map(|(_, a)| a.location_ref.clone()).collect();
    let prefixes: Vec<String> = items.iter().map(|(_, a)| a.artifact_prefix.clone()).collect();
    let rows = db
        .query_all_raw(stmt(
            r#"WITH input AS (
                   SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::text[])
                       AS t(id, checksum, bytes, location_ref, artifact_prefix)),
               done AS (
                   UPDATE backups b SET status = 'COMPLETED', checksum = i.checksum, bytes = i.bytes,
                          location_ref = i.location_ref, artifact_prefix = i.artifact_prefix,
                          progress_done = b.progress_total, lease_expires = NULL, updated = now()
                     FROM input i
                    WHERE b.id = i.id AND b.lease_owner = $6 AND b.status IN ('BUILDING', 'SAVING')
                RETURNING b.id, b.instance_id, b.artifact_prefix),
               woken AS (
                   INSERT INTO outbox (kind, target_id)
                   SELECT $7, w.id FROM backups w
                    WHERE w.instance_id IN (SELECT instance_id FROM done) AND w.status = 'NEW'
                    ORDER BY w.created
                RETURNING 1)
               SELECT d.id, d.artifact_prefix, (SELECT count(*) FROM woken) AS woken FROM done d"#,
            vec![
                ids.into(),
                checksums.into(),
                bytes.into(),
                locations.into(),
                prefixes.into(),
                worker.into(),
                JobKind::Backup.as_str().into(),
            ],
        ))
        .await?;
    let mut done = std::collections::HashSet::new();
    let mut woken = 0i64;
    for row in &rows {
        let id: Uuid = row.try_get("", "id")?;
        let prefix: String = row.try_get("", "artifact_prefix")?;
        woken = row.try_get("", "woken")?;
        done.insert((id, prefix));
    }
    let completed = items.iter().map(|(id, a)| done.contains(&(*id, a.artifact_prefix.clone()))).collect();
    Ok((completed, woken.max(0) as u64))
}

/// What [`complete_backup`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The backup is `COMPLETED` now, by this call.
    pub completed: bool,
    /// Outbox entries written for the instance's waiting backups.
    pub woken: u64,
}

/// Any state before `COMPLETED` → `FAILED` with `reason`. With `worker`, only
/// if that worker still owns the lease; without, only from `NEW`.
/// Wakes the instance's waiting backups, whose children then fail in turn
/// with a reason naming this one.
pub async fn fail_backup<C: ConnectionTrait>(
    txn: &C,
    id: Uuid,
    worker: Option<&str>,
    reason: &str,
) -> Result<bool, DbErr> {
    let row = backup::Entity::find()
        .from_raw_sql(match worker {
            Some(worker) => stmt(
                r#"UPDATE backups SET status = 'FAILED', fail_reason = $3,
                          lease_expires = NULL, updated = now()
                    WHERE id = $1 AND lease_owner = $2 AND status IN ('BUILDING', 'SAVING')
                RETURNING *"#,
                vec![id.into(), worker.into(), reason.into()],
            ),
            None => stmt(
                r#"UPDATE backups SET status = 'FAILED', fail_reason = $2, updated = now()
                    WHERE id = $1 AND status = 'NEW' RETURNING *"#,
                vec![id.into(), reason.into()],
            ),
        })
        .one(txn)
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    wake_waiting_backups(txn, row.instance_id).await?;
    Ok(true)
}

/// Re-enqueues every `NEW` backup of `instance_id`: they may be runnable now.
async fn wake_waiting_backups<C: ConnectionTrait>(txn: &C, instance_id: Uuid) -> Result<(), DbErr> {
    outbox::enqueue_where(
        txn,
        JobKind::Backup,
        "SELECT id FROM backups WHERE instance_id = $1 AND status = 'NEW' ORDER BY created",
        vec![instance_id.into()],
    )
    .await
    .map(|_| ())
}

/// Why a delete was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeleteRefused {
    /// A backup in the subtree is running.
    #[error("backup {0} is {1}; it can be deleted once it has finished")]
    Running(Uuid, BackupStatus),
    /// A restore is reading the chain.
    #[error("instance {0} is being restored from backup {1}; delete it once the restore has finished")]
    RestoreReading(Uuid, Uuid),
    /// The subtree is already being deleted.
    #[error("backup {0} is already being deleted")]
    AlreadyDeleting(Uuid),
}

/// Starts deleting backup `id` and all its descendants (as Trove does):
/// every one moves to `DELETING` and a delete job is enqueued, all in one
/// transaction that holds row locks, so a concurrent claim or restore either
/// happens before (and the delete is refused) or sees `DELETING`.
/// Returns the ids, descendants first.
pub async fn begin_delete<C: ConnectionTrait>(txn: &C, id: Uuid) -> Result<Result<Vec<Uuid>, DeleteRefused>, DbErr> {
    let lock_subtree = || {
        backup::Entity::find().from_raw_sql(stmt(
            r#"SELECT b.* FROM backups b
                WHERE b.id IN (
                    WITH RECURSIVE sub(id, depth) AS (
                        SELECT id, 0 FROM backups WHERE id = $1
                        UNION ALL
                        SELECT c.id, sub.depth + 1 FROM backups c JOIN sub ON c.parent_id = sub.id
                    ) SELECT id FROM sub)
                ORDER BY b.created DESC
                FOR UPDATE"#,
            vec![id.into()],
        ))
    };
    // The first statement's snapshot may miss a child committed while it
    // waited for the locks; once we hold them no new child can appear
    // (adding one takes its parent FOR SHARE), so a second read is complete.
    lock_subtree().all(txn).await?;
    let subtree = lock_subtree().all(txn).await?;
    for b in &subtree {
        match BackupStatus::parse(&b.status) {
            Some(s) if s.is_running() => return Ok(Err(DeleteRefused::Running(b.id, s))),
            Some(BackupStatus::Deleting) => return Ok(Err(DeleteRefused::AlreadyDeleting(b.id))),
            _ => {}
        }
    }
    let ids: Vec<Uuid> = subtree.iter().map(|b| b.id).collect();
    let reader = instance::Entity::find()
        .from_raw_sql(stmt(
            "SELECT * FROM instances WHERE status = 'BUILD' AND restore_backup_id = ANY($1) LIMIT 1",
            vec![ids.clone().into()],
        ))
        .one(txn)
        .await?;
    if let Some(inst) = reader {
        let backup = inst.restore_backup_id.unwrap_or(id);
        return Ok(Err(DeleteRefused::RestoreReading(inst.id, backup)));
    }
    txn.execute_raw(stmt(
        "UPDATE backups SET status = 'DELETING', updated = now() WHERE id = ANY($1)",
        vec![ids.clone().into()],
    ))
    .await?;
    outbox::enqueue(txn, JobKind::DeleteBackup, id).await?;
    Ok(Ok(ids))
}

/// The subtree of `id` in deletion order (descendants before ancestors).
pub async fn deletion_order<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Vec<backup::Model>, DbErr> {
    backup::Entity::find()
        .from_raw_sql(stmt(
            r#"WITH RECURSIVE sub AS (
                   SELECT b.*, 0 AS depth FROM backups b WHERE b.id = $1
                   UNION ALL
                   SELECT c.*, sub.depth + 1 FROM backups c JOIN sub ON c.parent_id = sub.id
               ) SELECT * FROM sub ORDER BY depth DESC"#,
            vec![id.into()],
        ))
        .all(db)
        .await
}

/// Removes a deleted backup's row once its objects are gone.
pub async fn remove_deleted<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<bool, DbErr> {
    let res =
        db.execute_raw(stmt("DELETE FROM backups WHERE id = $1 AND status = 'DELETING'", vec![id.into()])).await?;
    Ok(res.rows_affected() == 1)
}

/// `DELETING` → `DELETE_FAILED` with a reason.
pub async fn delete_failed<C: ConnectionTrait>(db: &C, id: Uuid, reason: &str) -> Result<bool, DbErr> {
    let res = db
        .execute_raw(stmt(
            "UPDATE backups SET status = 'DELETE_FAILED', fail_reason = $2, updated = now()
              WHERE id = $1 AND status = 'DELETING'",
            vec![id.into(), reason.into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}

/// The chain of `id`, root full backup first, resolved in one query.
pub async fn chain_of<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Vec<backup::Model>, DbErr> {
    backup::Entity::find()
        .from_raw_sql(stmt(
            r#"WITH RECURSIVE chain AS (
                   SELECT b.*, 0 AS depth FROM backups b WHERE b.id = $1
                   UNION ALL
                   SELECT p.*, chain.depth + 1 FROM backups p JOIN chain ON p.id = chain.parent_id
                   WHERE chain.depth < 100000
               ) SELECT * FROM chain ORDER BY depth DESC"#,
            vec![id.into()],
        ))
        .all(db)
        .await
}

/// Claims restore instance `id` for `worker` (it stays `BUILD`; the lease
/// says who runs it), or takes it over when the previous lease expired.
pub async fn claim_restore<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    worker: &str,
    lease: Duration,
) -> Result<Option<instance::Model>, DbErr> {
    instance::Entity::find()
        .from_raw_sql(stmt(
            r#"UPDATE instances SET lease_owner = $2, lease_expires = now() + make_interval(secs => $3),
                      attempts = attempts + 1, updated = now()
                WHERE id = $1 AND status = 'BUILD' AND NOT deleted
                  AND (lease_owner IS NULL OR lease_expires < now())
            RETURNING *"#,
            vec![id.into(), worker.into(), lease_secs(lease)],
        ))
        .one(db)
        .await
}

/// Extends a restore's lease and records its step. False when lost.
pub async fn heartbeat_restore<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    worker: &str,
    lease: Duration,
    step: u32,
    steps: u32,
) -> Result<bool, DbErr> {
    let res = db
        .execute_raw(stmt(
            r#"UPDATE instances SET lease_expires = now() + make_interval(secs => $3),
                      restore_step = $4, restore_steps = $5, updated = now()
                WHERE id = $1 AND lease_owner = $2 AND status = 'BUILD'"#,
            vec![id.into(), worker.into(), lease_secs(lease), (step as i32).into(), (steps as i32).into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Ends a restore: `BUILD` → `ACTIVE`, or `ERROR` with a reason.
pub async fn finish_restore<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    worker: &str,
    outcome: Result<u32, &str>,
) -> Result<bool, DbErr> {
    let (status, reason, steps) = match outcome {
        Ok(steps) => (InstanceStatus::Active, None, Some(steps as i32)),
        Err(reason) => (InstanceStatus::Error, Some(reason.to_owned()), None),
    };
    let res = db
        .execute_raw(stmt(
            r#"UPDATE instances SET status = $3, fail_reason = $4,
                      restore_step = COALESCE($5, restore_step), restore_steps = COALESCE($5, restore_steps),
                      lease_expires = NULL, updated = now()
                WHERE id = $1 AND lease_owner = $2 AND status = 'BUILD'"#,
            vec![id.into(), worker.into(), status.as_str().into(), reason.into(), steps.into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}

/// True for PostgreSQL's unique_violation (23505).
pub fn is_unique_violation(err: &DbErr) -> bool {
    err.to_string().contains("23505") || err.to_string().contains("duplicate key value")
}

/// Which table a job's lease lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leased {
    /// A running backup (`backups`, status `BUILDING`/`SAVING`).
    Backup,
    /// A running restore (`instances`, status `BUILD`).
    Restore,
}

impl Leased {
    fn table_and_statuses(self) -> (&'static str, &'static str) {
        match self {
            Self::Backup => ("backups", "('BUILDING', 'SAVING')"),
            Self::Restore => ("instances", "('BUILD')"),
        }
    }

    fn kind(self) -> JobKind {
        match self {
            Self::Backup => JobKind::Backup,
            Self::Restore => JobKind::Restore,
        }
    }
}

/// Hands a running job back without finishing it: its lease ends at once
/// (`retry_in` = 0, a stopping worker) or after `retry_in` (a failed attempt
/// to be retried), and a message is queued for that moment, so another
/// worker, or this one, takes it over. The status does not move: the job is
/// still running as far as anyone can see, and no status goes backwards.
/// `note` (the failed attempt's reason) is shown as `fail_reason` meanwhile.
pub async fn release<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    job: Leased,
    id: Uuid,
    worker: &str,
    retry_in: Duration,
    note: Option<&str>,
) -> Result<bool, DbErr> {
    let (table, statuses) = job.table_and_statuses();
    let txn = db.begin().await?;
    // The lease ends a little before the delayed message arrives, so the
    // message finds the job claimable.
    let ends_in = retry_in.saturating_sub(Duration::from_millis(500));
    let res = txn
        .execute_raw(stmt(
            &format!(
                "UPDATE {table} SET lease_expires = now() + make_interval(secs => $3),
                        fail_reason = COALESCE($4, fail_reason), updated = now()
                  WHERE id = $1 AND lease_owner = $2 AND status IN {statuses}"
            ),
            vec![id.into(), worker.into(), lease_secs(ends_in), note.map(str::to_owned).into()],
        ))
        .await?;
    if res.rows_affected() != 1 {
        return Ok(false);
    }
    outbox::enqueue_delayed(&txn, job.kind(), id, retry_in.as_secs().try_into().unwrap_or(u32::MAX)).await?;
    txn.commit().await?;
    Ok(true)
}

/// Starts a `verify` of a `COMPLETED` backup: `verify_status` → `RUNNING`
/// and a verify job queued. False if the backup is not `COMPLETED`.
pub async fn begin_verify<C: ConnectionTrait>(txn: &C, id: Uuid) -> Result<bool, DbErr> {
    let res = txn
        .execute_raw(stmt(
            "UPDATE backups SET verify_status = 'RUNNING', verify_message = NULL, updated = now()
              WHERE id = $1 AND status = 'COMPLETED'",
            vec![id.into()],
        ))
        .await?;
    if res.rows_affected() != 1 {
        return Ok(false);
    }
    outbox::enqueue(txn, JobKind::VerifyBackup, id).await?;
    Ok(true)
}

/// Records a verify's result: `OK`, or `CORRUPTED` with what was found.
pub async fn finish_verify<C: ConnectionTrait>(db: &C, id: Uuid, outcome: Result<(), &str>) -> Result<bool, DbErr> {
    let (status, message) = match outcome {
        Ok(()) => ("OK", None),
        Err(why) => ("CORRUPTED", Some(why.to_owned())),
    };
    let res = db
        .execute_raw(stmt(
            "UPDATE backups SET verify_status = $2, verify_message = $3, verified_at = now(), updated = now()
              WHERE id = $1 AND verify_status = 'RUNNING'",
            vec![id.into(), status.into(), message.into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}
