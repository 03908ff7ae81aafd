//! Group commit of backup submissions.
//!
//! Why: a submission is a short transaction (instance check, quota, insert,
//! outbox entry) whose cost is mostly round trips and the commit's WAL
//! flush. Under a burst, 32 clients each running their own transaction kept
//! 32 connections busy and spent PostgreSQL's CPU on per-transaction work;
//! the job-path benchmark measured a p99 submit latency of 80–130 ms.
//!
//! How: every `POST /backups` hands its validated request to one
//! [`Batcher`] (`cairn_shared::batch`). It takes whatever is waiting (at
//! most [`MAX_BATCH`]) and records it with one commit: one query for the
//! instances, one for the named parents, the quota of each project checked under its lock, and one
//! statement that inserts the backups and their outbox entries. When no
//! request of the batch has a quota or a parent to lock, there is nothing to
//! hold between the reads and the insert, so no explicit transaction either:
//! two round trips for the whole batch, the insert being its own commit.
//! Each request is answered once that commit has returned, so every 202 is
//! as durable as before. There is no timer: an idle API sends a lone
//! request at once, and while [`IN_FLIGHT`] batches are committing the next
//! requests gather in the channel, so batches grow with the load by
//! themselves.
//!
//! Each request keeps its own answer. The checks of one request are plain
//! reads whose outcome is decided in Rust, so a request that is refused
//! (404, 413, 422) never aborts the transaction the others share. If a
//! statement of the batch fails anyway (a constraint, a lost connection
//! before the commit), the transaction is rolled back and every request of
//! the batch is recorded again on its own, exactly as it would have been
//! without batching. A failed commit is answered with a 500 to every request
//! of the batch, as a failed commit was before (whether it took effect is
//! unknown, and a retry could record a backup twice).
//!
//! A request whose client goes away before its answer is still recorded if
//! its batch commits, as a lone request was when the client went away
//! during its commit; the client learns of it by listing its backups.
//!
//! Quotas stay exact: a project's advisory lock is taken (projects in sorted
//! order, so two batchers of two API processes cannot deadlock) before its
//! usage is counted and held until the commit, and the batch counts its own
//! accepted backups on top of the committed ones.

use std::collections::{BTreeMap, HashMap};

use cairn_shared::{
    batch::{Batcher, Limits, Request},
    entities::{backup, instance},
    outbox::{self, Handed, Nudge},
    status::{BackupStatus, InstanceStatus, JobKind},
};
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Set, Statement, TransactionTrait,
};
use uuid::Uuid;

use crate::{
    error::{ApiError, ApiResult},
    quota::{self, Quotas},
};

/// Most submissions recorded by one transaction.
const MAX_BATCH: usize = 128;
/// Batches committing at once. Two lets one batch gather while the other
/// commits, without taking many of the pool's connections.
const IN_FLIGHT: usize = 2;
/// Submissions waiting for the batcher before `POST /backups` waits too.
const QUEUE: usize = 4096;

/// A validated `POST /backups`.
#[derive(Debug, Clone)]
pub struct NewBackup {
    pub project: String,
    pub instance_id: Uuid,
    pub parent_id: Option<Uuid>,
    /// Build on the instance's newest `COMPLETED` backup when no parent is named.
    pub incremental: bool,
    pub name: String,
    pub description: Option<String>,
}

/// A submission waiting in a batch, with its answer.
type Pending = Request<NewBackup, ApiResult<backup::Model>>;

/// Hands submissions to the batcher; cheap to clone.
#[derive(Clone)]
pub struct Submitter {
    batcher: Batcher<NewBackup, ApiResult<backup::Model>>,
}

impl Submitter {
    /// Starts the batcher task on `db`; it ends once every `Submitter` is dropped.
    pub fn start(db: DatabaseConnection, quotas: Quotas, nudge: Nudge) -> Self {
        let limits = Limits { max_batch: MAX_BATCH, in_flight: IN_FLIGHT, queue: QUEUE };
        let batcher = Batcher::start(limits, move |batch: Vec<Pending>| {
            let (db, nudge) = (db.clone(), nudge.clone());
            async move { record_batch(&db, quotas, &nudge, batch).await }
        });
        Self { batcher }
    }

    /// Records `req` (in some batch) and returns its row once committed.
    pub async fn submit(&self, req: NewBackup) -> ApiResult<backup::Model> {
        self.batcher.call(req).await.map_err(|e| anyhow::anyhow!("submission batcher: {e}"))?
    }
}

/// What a request of the batch comes to before anything is inserted.
enum Verdict {
    Refused(ApiError),
    Accepted(Box<backup::Model>),
}

async fn record_batch(db: &DatabaseConnection, quotas: Quotas, nudge: &Nudge, batch: Vec<Pending>) {
    let reqs: Vec<&NewBackup> = batch.iter().map(|p| &p.input).collect();
    // Without a quota or a parent to lock, nothing needs holding between
    // the reads and the insert: the instance is read as a lone submission
    // read it (no lock), and the one insert statement is the commit.
    let locks = quotas.backups.is_some()
        || quotas.bytes.is_some()
        || reqs.iter().any(|r| r.parent_id.is_some() || r.incremental);
    let ((verdicts, handed), committed) = if locks {
        let outcome = match db.begin().await {
            Ok(txn) => match decide(&txn, quotas, &reqs).await {
                Ok(decided) => Ok((txn, decided)),
                Err(e) => {
                    let _ = txn.rollback().await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok((txn, decided)) => (decided, txn.commit().await),
            Err(e) => {
                // Nothing was committed: record each on its own, as
                // without batching.
                tracing::warn!(error = %e, batch = batch.len(), "batched submission failed; recording one by one");
                futures::future::join_all(batch.into_iter().map(|p| async move {
                    let answer = record_one(db, quotas, nudge, &p.input).await;
                    p.answer(answer);
                }))
                .await;
                return;
            }
        }
    } else {
        match decide(db, quotas, &reqs).await {
            Ok(decided) => (decided, Ok(())),
            // The insert may or may not have committed: answer as a
            // failed commit is answered.
            Err(e) => {
                for p in batch {
                    p.answer(Err(anyhow::anyhow!("recording a batch of submissions: {e}").into()));
                }
                return;
            }
        }
    };
    if committed.is_ok() && !handed.is_empty() {
        nudge.hand(handed);
    }
    for (p, verdict) in batch.into_iter().zip(verdicts) {
        let answer = match (verdict, &committed) {
            (Verdict::Refused(e), _) => Err(e),
            (Verdict::Accepted(row), Ok(())) => {
                tracing::info!(backup_id = %row.id, instance_id = %row.instance_id, parent_id = ?row.parent_id, "backup accepted");
                Ok(*row)
            }
            (Verdict::Accepted(_), Err(e)) => Err(anyhow::anyhow!("committing a batch of submissions: {e}").into()),
        };
        p.answer(answer);
    }
}

/// Checks every request and inserts the accepted ones with their outbox
/// entries, in `txn`; the entries are to be handed to the relay once
/// committed. `Err` only for a failed statement.
async fn decide<C: ConnectionTrait>(
    txn: &C,
    quotas: Quotas,
    reqs: &[&NewBackup],
) -> Result<(Vec<Verdict>, Vec<Handed>), DbErr> {
    let now = now_as_stored();
    let instance_ids: Vec<Uuid> = reqs.iter().map(|r| r.instance_id).collect();
    let instances: HashMap<Uuid, instance::Model> = instance::Entity::find()
        .filter(instance::Column::Id.is_in(instance_ids))
        .all(txn)
        .await?
        .into_iter()
        .map(|i| (i.id, i))
        .collect();
    // FOR SHARE, as a lone submission takes it: a concurrent delete of a
    // parent either finished first (and we see DELETING) or waits for us.
    let parent_ids: Vec<Uuid> = reqs.iter().filter_map(|r| r.parent_id).collect();
    let parents: HashMap<Uuid, backup::Model> = if parent_ids.is_empty() {
        HashMap::new()
    } else {
        backup::Entity::find()
            .filter(backup::Column::Id.is_in(parent_ids))
            .lock_shared()
            .all(txn)
            .await?
            .into_iter()
            .map(|b| (b.id, b))
            .collect()
    };

    let mut verdicts = Vec::with_capacity(reqs.len());
    for req in reqs {
        let checked = match instances.get(&req.instance_id) {
            Some(inst) if inst.project_id == req.project && !inst.deleted => {
                match check_instance(inst).and_then(|()| check_named_parent(req, &parents)) {
                    Ok(Some(parent)) => Ok((inst, Some(parent.id))),
                    Ok(None) if req.incremental => {
                        Ok((inst, latest_completed(txn, &req.project, req.instance_id).await?.map(|p| p.id)))
                    }
                    Ok(None) => Ok((inst, None)),
                    Err(e) => Err(e),
                }
            }
            _ => Err(ApiError::NotFound(format!("Instance {} could not be found", req.instance_id))),
        };
        verdicts.push(match checked {
            Ok((inst, parent_id)) => Verdict::Accepted(Box::new(new_row(req, inst, parent_id, now))),
            Err(e) => Verdict::Refused(e),
        });
    }

    // Quotas last, as for a lone submission, so a request that is wrong
    // anyway is told why.
    if quotas.backups.is_some() || quotas.bytes.is_some() {
        let mut by_project: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, v) in verdicts.iter().enumerate() {
            if let Verdict::Accepted(row) = v {
                by_project.entry(row.project_id.as_str()).or_default().push(i);
            }
        }
        let mut refused = Vec::new();
        for (project, indices) in by_project {
            let used = quota::lock_and_count(txn, project).await?;
            // The batch's earlier admissions count on top of what is
            // committed; a refused request does not count.
            let mut admitted = 0u64;
            for i in indices {
                let with_earlier = quota::Usage { backups: used.backups + admitted, bytes: used.bytes };
                match quota::check(quotas, project, with_earlier) {
                    Ok(()) => admitted += 1,
                    Err(e) => refused.push((i, e)),
                }
            }
        }
        for (i, e) in refused {
            verdicts[i] = Verdict::Refused(e);
        }
    }

    let rows: Vec<&backup::Model> = verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Accepted(row) => Some(&**row),
            Verdict::Refused(_) => None,
        })
        .collect();
    let mut handed = Vec::with_capacity(rows.len());
    if !rows.is_empty() {
        for entry in txn.query_all_raw(insert_with_outbox(&rows)).await? {
            handed.push(Handed::new(entry.try_get("", "id")?, JobKind::Backup, entry.try_get("", "target_id")?));
        }
    }
    Ok((verdicts, handed))
}

/// One statement that inserts `rows` and their outbox entries (in the
/// order of `rows`, handed over, returning their ids): atomic, and on a
/// connection outside a transaction it is its own commit.
fn insert_with_outbox(rows: &[&backup::Model]) -> Statement {
    let insert = backup::Entity::insert_many(rows.iter().map(|r| active(r))).build(DbBackend::Postgres);
    let mut values = insert.values.map(|v| v.0).unwrap_or_default();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    values.push(JobKind::Backup.as_str().into());
    values.push(ids.into());
    let (kind, ids) = (values.len() - 1, values.len());
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "WITH inserted AS ({}) INSERT INTO outbox (kind, target_id, handed_until) \
             SELECT ${kind}, t.id, {} FROM unnest(${ids}::uuid[]) WITH ORDINALITY AS t(id, n) ORDER BY t.n \
             RETURNING id, target_id",
            insert.sql,
            outbox::handed_until_sql()
        ),
        values,
    )
}

/// Records one submission in a transaction of its own, and hands its
/// outbox entry to the relay: the path a batch falls back to.
pub async fn record_one(
    db: &DatabaseConnection,
    quotas: Quotas,
    nudge: &Nudge,
    req: &NewBackup,
) -> ApiResult<backup::Model> {
    let txn = db.begin().await?;
    let inst = instance::Entity::find_by_id(req.instance_id)
        .filter(instance::Column::ProjectId.eq(&req.project))
        .filter(instance::Column::Deleted.eq(false))
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Instance {} could not be found", req.instance_id)))?;
    check_instance(&inst)?;
    let parent = match req.parent_id {
        Some(pid) => {
            let found = backup::Entity::find_by_id(pid).lock_shared().one(&txn).await?;
            let parents: HashMap<Uuid, backup::Model> = found.into_iter().map(|p| (p.id, p)).collect();
            check_named_parent(req, &parents)?.map(|p| p.id)
        }
        None if req.incremental => latest_completed(&txn, &req.project, req.instance_id).await?.map(|p| p.id),
        None => None,
    };
    quota::admit_backup(&txn, quotas, &req.project).await?;
    let row = new_row(req, &inst, parent, now_as_stored());
    backup::Entity::insert(active(&row)).exec_without_returning(&txn).await?;
    let outbox_id = outbox::enqueue_handed(&txn, JobKind::Backup, row.id).await?;
    txn.commit().await?;
    nudge.hand([Handed::new(outbox_id, JobKind::Backup, row.id)]);
    tracing::info!(backup_id = %row.id, instance_id = %row.instance_id, parent_id = ?row.parent_id, "backup accepted");
    Ok(row)
}

fn check_instance(inst: &instance::Model) -> ApiResult<()> {
    if InstanceStatus::parse(&inst.status) != Some(InstanceStatus::Active) {
        return Err(ApiError::Unprocessable(format!(
            "instance {} is {}; only ACTIVE instances can be backed up",
            inst.id, inst.status
        )));
    }
    Ok(())
}

/// The parent `req` names, if it names one, checked: a backup of the same
/// project and instance that is or will be `COMPLETED`.
fn check_named_parent<'a>(
    req: &NewBackup,
    parents: &'a HashMap<Uuid, backup::Model>,
) -> ApiResult<Option<&'a backup::Model>> {
    let Some(pid) = req.parent_id else { return Ok(None) };
    let instance_id = req.instance_id;
    let parent =
        parents.get(&pid).filter(|p| p.project_id == req.project && p.instance_id == instance_id).ok_or_else(|| {
            ApiError::Unprocessable(format!("parent backup {pid} is not a backup of instance {instance_id}"))
        })?;
    match BackupStatus::parse(&parent.status) {
        Some(BackupStatus::New | BackupStatus::Building | BackupStatus::Saving | BackupStatus::Completed) => {
            Ok(Some(parent))
        }
        Some(status) => {
            Err(ApiError::Unprocessable(format!("parent backup {pid} is {status} and cannot be built upon")))
        }
        None => Err(anyhow::anyhow!("backup {pid} has unknown status {}", parent.status).into()),
    }
}

/// The instance's newest `COMPLETED` backup, locked FOR SHARE.
async fn latest_completed<C: ConnectionTrait>(
    txn: &C,
    project: &str,
    instance_id: Uuid,
) -> Result<Option<backup::Model>, DbErr> {
    backup::Entity::find()
        .filter(backup::Column::ProjectId.eq(project))
        .filter(backup::Column::InstanceId.eq(instance_id))
        .filter(backup::Column::Status.eq(BackupStatus::Completed.as_str()))
        .order_by_desc(backup::Column::Created)
        .lock_shared()
        .one(txn)
        .await
}

/// Now, at the precision PostgreSQL stores (µs), so the row answered is
/// the row stored.
fn now_as_stored() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn new_row(req: &NewBackup, inst: &instance::Model, parent_id: Option<Uuid>, now: DateTime<Utc>) -> backup::Model {
    backup::Model {
        id: Uuid::now_v7(),
        project_id: req.project.clone(),
        instance_id: req.instance_id,
        parent_id,
        name: req.name.clone(),
        description: req.description.clone(),
        status: BackupStatus::New.as_str().into(),
        datastore_type: inst.datastore_type.clone(),
        datastore_version: inst.datastore_version.clone(),
        bytes: None,
        checksum: None,
        location_ref: None,
        artifact_prefix: None,
        progress_done: None,
        progress_total: None,
        fail_reason: None,
        lease_owner: None,
        lease_expires: None,
        attempts: 0,
        verify_status: None,
        verify_message: None,
        verified_at: None,
        created: now,
        updated: now,
    }
}

fn active(row: &backup::Model) -> backup::ActiveModel {
    let row = row.clone();
    backup::ActiveModel {
        id: Set(row.id),
        project_id: Set(row.project_id),
        instance_id: Set(row.instance_id),
        parent_id: Set(row.parent_id),
        name: Set(row.name),
        description: Set(row.description),
        status: Set(row.status),
        datastore_type: Set(row.datastore_type),
        datastore_version: Set(row.datastore_version),
        bytes: Set(row.bytes),
        checksum: Set(row.checksum),
        location_ref: Set(row.location_ref),
        artifact_prefix: Set(row.artifact_prefix),
        progress_done: Set(row.progress_done),
        progress_total: Set(row.progress_total),
        fail_reason: Set(row.fail_reason),
        lease_owner: Set(row.lease_owner),
        lease_expires: Set(row.lease_expires),
        attempts: Set(row.attempts),
        verify_status: Set(row.verify_status),
        verify_message: Set(row.verify_message),
        verified_at: Set(row.verified_at),
        created: Set(row.created),
        updated: Set(row.updated),
    }
}
