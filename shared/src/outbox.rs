//! The transactional outbox: how a job gets from PostgreSQL to RabbitMQ.
//!
//! A request that creates work writes its row and an outbox entry in one
//! transaction, then returns 202. The relay, running in every cairn process,
//! publishes entries with publisher confirms and deletes them only once the
//! broker has confirmed. So a 202 never depends on RabbitMQ being up, and a
//! crash between publish and delete only causes a duplicate message, which
//! the lifecycle's conditional updates turn into a no-op.
//!
//! Relays in several processes share the table through
//! `FOR UPDATE SKIP LOCKED`; a nudge wakes the local relay right after a
//! commit, and a short poll catches entries written by other processes or
//! left behind by a crash.

use std::{sync::Arc, time::Duration};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement, TransactionTrait, Value,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    queue::{Broker, Publisher},
    status::{JobKind, JobMessage},
};

/// How often a relay looks for entries nobody nudged it about.
const POLL: Duration = Duration::from_millis(250);
/// Entries published per transaction.
const BATCH: i64 = 500;

/// Records a job for `target` in the caller's transaction.
pub async fn enqueue<C: ConnectionTrait>(txn: &C, kind: JobKind, target: Uuid) -> Result<(), DbErr> {
    enqueue_delayed(txn, kind, target, 0).await
}

/// Records a job for `target` that is to run after `delay_seconds` (a
/// retry), in the caller's transaction.
pub async fn enqueue_delayed<C: ConnectionTrait>(
    txn: &C,
    kind: JobKind,
    target: Uuid,
    delay_seconds: u32,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO outbox (kind, target_id, delay_seconds) VALUES ($1, $2, $3)",
        vec![kind.as_str().into(), target.into(), (delay_seconds as i32).into()],
    ))
    .await
    .map(|_| ())
}

/// Records a job for every id that `select_ids` (a query returning one uuid
/// column, with `values` as its `$1..$n`) yields, in the caller's
/// transaction. Returns how many were recorded.
pub async fn enqueue_where<C: ConnectionTrait>(
    txn: &C,
    kind: JobKind,
    select_ids: &str,
    mut values: Vec<Value>,
) -> Result<u64, DbErr> {
    // The kind is bound after the caller's parameters.
    values.push(kind.as_str().into());
    let kind_param = values.len();
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("INSERT INTO outbox (kind, target_id) SELECT ${kind_param}, id FROM ({select_ids}) AS waiting"),
        values,
    ))
    .await
    .map(|res| res.rows_affected())
}

/// Wakes the relay of this process after a commit that enqueued something.
#[derive(Clone, Default, Debug)]
pub struct Nudge(Arc<Notify>);

impl Nudge {
    /// Tells the relay there is work; cheap, never blocks.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

#[derive(Debug, FromQueryResult)]
struct Entry {
    id: i64,
    kind: String,
    target_id: Uuid,
    attempt: i32,
    delay_seconds: i32,
}

/// Publishes outbox entries until `cancel` fires.
pub async fn run_relay(db: DatabaseConnection, broker: Broker, nudge: Nudge, cancel: CancellationToken) {
    let mut publisher: Option<Publisher> = None;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = nudge.0.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        loop {
            let p = match publisher.as_ref() {
                Some(p) if p.is_usable() => p,
                _ => match broker.publisher().await {
                    Ok(p) => publisher.insert(p),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "outbox relay cannot reach RabbitMQ; will retry");
                        break;
                    }
                },
            };
            match relay_batch(&db, p).await {
                Ok(0) => {
                    failures = 0;
                    break;
                }
                // A short batch took everything committed before its
                // statement; whatever was committed since woke the nudge
                // (a stored permit), so going round now would only run an
                // empty transaction, three round trips per wake-up.
                Ok(n) if n < BATCH as usize => {
                    failures = 0;
                    tracing::debug!(published = n, "outbox relayed");
                    break;
                }
                Ok(n) => {
                    failures = 0;
                    tracing::debug!(published = n, "outbox relayed");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "outbox relay failed; entries stay for the next try");
                    publisher = None;
                    break;
                }
            }
        }
        if failures > 0 {
            // Back off while the broker or database is down, up to 5 s.
            let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(backoff.min(Duration::from_secs(5))) => {}
            }
        }
    }
}

/// Publishes one batch; returns how many entries it sent.
///
/// The entries are deleted first and published second, in one
/// transaction that commits only after the broker confirmed: a failed
/// publish rolls the delete back, so nothing is lost, and the batch costs
/// three round trips (begin, `DELETE ... RETURNING`, commit) besides the
/// publish.
async fn relay_batch(db: &DatabaseConnection, publisher: &Publisher) -> anyhow::Result<usize> {
    let txn = db.begin().await?;
    let mut entries = Entry::find_by_statement(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "DELETE FROM outbox WHERE id IN
            (SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, kind, target_id, attempt, delay_seconds",
        vec![BATCH.into()],
    ))
    .all(&txn)
    .await?;
    if entries.is_empty() {
        return Ok(0);
    }
    entries.sort_unstable_by_key(|e| e.id);
    let mut messages = Vec::with_capacity(entries.len());
    for e in &entries {
        match JobKind::parse(&e.kind) {
            Some(kind) => messages.push((
                JobMessage { kind, id: e.target_id, attempt: e.attempt.max(0) as u32 },
                e.delay_seconds.max(0) as u32,
            )),
            None => tracing::error!(outbox_id = e.id, kind = %e.kind, "dropping outbox entry of unknown kind"),
        }
    }
    publisher.publish_all(&messages).await?;
    txn.commit().await?;
    Ok(entries.len())
}
