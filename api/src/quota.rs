//! Per-project quotas on backups: how many a project holds
//! (`CAIRN_QUOTA_BACKUPS`, 50 by default as in Trove) and how many bytes
//! they store (`CAIRN_QUOTA_BYTES`, unlimited by default).
//!
//! The check runs inside the transaction that records the backup (or the
//! batch of backups, see [`crate::submit`]), under a per-project advisory
//! lock that lasts until that transaction ends. Two
//! submissions racing at the limit therefore take turns: the second counts
//! after the first has committed, so exactly the quota gets through. A
//! refused request records nothing (no row, no outbox entry), since the
//! transaction is rolled back.
//!
//! The byte quota can only judge what is already stored: a backup's size
//! is known once it has run. A new backup is refused once the project's
//! stored bytes have reached the quota; the last one accepted may overshoot.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

use crate::error::{ApiError, ApiResult};

/// The limits, from the configuration; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quotas {
    pub backups: Option<u64>,
    pub bytes: Option<u64>,
}

/// First key of the two-key advisory lock: "quota" in ASCII, so the lock
/// cannot collide with the migration lock or any other of cairn's locks.
const QUOTA_LOCK_CLASS: i32 = 0x7175_6f74;

/// What a project holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub backups: u64,
    pub bytes: u64,
}

/// Locks `project`'s quota until `txn` ends, then refuses (413 `overLimit`)
/// if one more backup would break a quota.
pub async fn admit_backup<C: ConnectionTrait>(txn: &C, quotas: Quotas, project: &str) -> ApiResult<()> {
    if quotas.backups.is_none() && quotas.bytes.is_none() {
        return Ok(());
    }
    let used = lock_and_count(txn, project).await?;
    check(quotas, project, used)
}

/// Takes `project`'s quota lock until `txn` ends and counts what the
/// project holds; nothing can be added to it meanwhile but through `txn`.
pub async fn lock_and_count<C: ConnectionTrait>(txn: &C, project: &str) -> Result<Usage, DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        vec![QUOTA_LOCK_CLASS.into(), project.into()],
    ))
    .await?;
    usage(txn, project).await
}

/// Refuses (413 `overLimit`) if one more backup on top of `used` would
/// break a quota.
pub fn check(quotas: Quotas, project: &str, used: Usage) -> ApiResult<()> {
    if let Some(limit) = quotas.backups
        && used.backups >= limit
    {
        return Err(ApiError::OverLimit(format!(
            "Quota exceeded for resources: ['backups']: project {project} holds {} of {limit} backups",
            used.backups
        )));
    }
    if let Some(limit) = quotas.bytes
        && used.bytes >= limit
    {
        return Err(ApiError::OverLimit(format!(
            "Quota exceeded for resources: ['backup_bytes']: project {project} stores {} of {limit} bytes",
            used.bytes
        )));
    }
    Ok(())
}

/// Backups of `project` that count against its quota (all but those being
/// deleted) and the bytes they store.
pub async fn usage<C: ConnectionTrait>(db: &C, project: &str) -> Result<Usage, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS n, coalesce(sum(bytes), 0)::bigint AS bytes
             FROM backups WHERE project_id = $1 AND status <> 'DELETING'",
            vec![project.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("an aggregate returned no row".into()))?;
    let n: i64 = row.try_get("", "n")?;
    let bytes: i64 = row.try_get("", "bytes")?;
    Ok(Usage { backups: n.max(0) as u64, bytes: bytes.max(0) as u64 })
}
