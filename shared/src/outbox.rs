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
//!
//! A submission's entry takes a shorter way: the submitting process hands
//! it, id and message, to its own relay together with the nudge
//! ([`Nudge::hand`]). The relay publishes it from memory at once and
//! deletes it afterwards, so the database round trips of a batch (`BEGIN`,
//! `DELETE ... RETURNING`) no longer stand between the commit and the
//! publish, which is what an idle backup waits on. Such an entry is written
//! with `handed_until` ([`HANDOFF`] ahead); until then other relays skip it,
//! so it is not published twice in the normal case. If the process dies
//! between commit and publish, or the publish fails, the entry outlives its
//! hand-off and any relay's poll publishes it as it would any other; a
//! process that stops cleanly gives back at once what it was handed and did
//! not publish ([`release_unpublished`]). A crash between the publish and
//! the delete leaves a duplicate message, as before.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

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
/// How long a handed entry is left to the relay it was handed to. Long
/// enough for a publish that waits on a busy broker; short enough that an
/// entry whose process died is published soon by another.
pub const HANDOFF: Duration = Duration::from_secs(10);

/// SQL for the `handed_until` of an entry handed over now ([`HANDOFF`]).
pub fn handed_until_sql() -> String {
    format!("now() + interval '{} seconds'", HANDOFF.as_secs())
}

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

/// An outbox entry handed to the relay of the process that committed it.
#[derive(Debug, Clone)]
pub struct Handed {
    /// The entry's id, deleted once the message is confirmed.
    pub outbox_id: i64,
    /// What to publish.
    pub message: JobMessage,
}

impl Handed {
    /// The entry `outbox_id`, a first attempt's job of `kind` on `target`.
    pub fn new(outbox_id: i64, kind: JobKind, target: Uuid) -> Self {
        Self { outbox_id, message: JobMessage { kind, id: target, attempt: 0 } }
    }
}

/// Wakes the relay of this process after a commit that enqueued something.
#[derive(Clone, Default, Debug)]
pub struct Nudge(Arc<NudgeState>);

#[derive(Default, Debug)]
struct NudgeState {
    notify: Notify,
    /// The table has entries for the relay to look for.
    look: AtomicBool,
    /// Entries handed over, to publish without looking.
    handed: Mutex<Vec<Handed>>,
}

impl Nudge {
    /// Tells the relay there are entries in the table; cheap, never blocks.
    pub fn wake(&self) {
        self.0.look.store(true, Ordering::SeqCst);
        self.0.notify.notify_one();
    }

    /// Hands the relay committed entries that were written with
    /// `handed_until` ([`handed_until_sql`]); cheap, never blocks.
    pub fn hand(&self, entries: impl IntoIterator<Item = Handed>) {
        self.0.handed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(entries);
        self.0.notify.notify_one();
    }

    fn take_handed(&self) -> Vec<Handed> {
        std::mem::take(&mut *self.0.handed.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Records a job for `target` in the caller's transaction, to be handed to
/// this process's relay once committed ([`Nudge::hand`]); returns the
/// entry's id.
pub async fn enqueue_handed<C: ConnectionTrait>(txn: &C, kind: JobKind, target: Uuid) -> Result<i64, DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "INSERT INTO outbox (kind, target_id, handed_until) VALUES ($1, $2, {}) RETURNING id",
                handed_until_sql()
            ),
            vec![kind.as_str().into(), target.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)?;
    row.try_get::<i64>("", "id")
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
    // A steady poll, not a pause after the last wake-up: hand-overs alone
    // do not look at the table, so a busy relay must still look now and then.
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let polled = tokio::select! {
            () = cancel.cancelled() => break,
            () = nudge.0.notify.notified() => false,
            _ = poll.tick() => true,
        };
        let handed = nudge.take_handed();
        if !handed.is_empty() {
            let published = match usable(&mut publisher, &broker).await {
                Ok(p) => relay_handed(&db, p, &handed).await,
                Err(e) => Err(e),
            };
            match published {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    publisher = None;
                    tracing::warn!(
                        error = format!("{e:#}"),
                        entries = handed.len(),
                        "publishing handed outbox entries failed; the relay's polls take them"
                    );
                    release_handed(&db, &handed).await;
                }
            }
        }
        // Handed entries alone leave nothing in the table to look for.
        if polled || nudge.0.look.swap(false, Ordering::SeqCst) {
            loop {
                let p = match usable(&mut publisher, &broker).await {
                    Ok(p) => p,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "outbox relay cannot reach RabbitMQ; will retry");
                        break;
                    }
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
    release_unpublished(&db, &nudge).await;
}

/// Gives entries handed to this process's relay and not yet published
/// back to every relay's polls, so that another process (or this one once
/// restarted) publishes them at once instead of after their hand-off. For
/// a process that stops: its relay calls it on the way out, and the API
/// again once its last requests have been answered.
pub async fn release_unpublished(db: &DatabaseConnection, nudge: &Nudge) {
    let handed = nudge.take_handed();
    if !handed.is_empty() {
        tracing::info!(entries = handed.len(), "releasing outbox entries handed over but not published");
        release_handed(db, &handed).await;
    }
}

/// The relay's publisher, connected again if it is gone.
async fn usable<'p>(publisher: &'p mut Option<Publisher>, broker: &Broker) -> anyhow::Result<&'p Publisher> {
    if !publisher.as_ref().is_some_and(Publisher::is_usable) {
        *publisher = Some(broker.publisher().await?);
    }
    Ok(publisher.as_ref().expect("just connected"))
}

/// Publishes entries handed over by this process, then deletes them: one
/// round trip, after the publish. A failed delete leaves them to a poll
/// once their hand-off has run out, which publishes them again: a
/// duplicate message, a no-op for the lifecycle.
async fn relay_handed(db: &DatabaseConnection, publisher: &Publisher, handed: &[Handed]) -> anyhow::Result<()> {
    let messages: Vec<(JobMessage, u32)> = handed.iter().map(|h| (h.message.clone(), 0)).collect();
    publisher.publish_all(&messages).await?;
    let ids: Vec<i64> = handed.iter().map(|h| h.outbox_id).collect();
    match db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM outbox WHERE id = ANY($1)",
            vec![ids.into()],
        ))
        .await
    {
        Ok(_) => tracing::debug!(published = handed.len(), "handed outbox entries relayed"),
        Err(e) => {
            tracing::warn!(error = %e, entries = handed.len(), "handed outbox entries published but not deleted; they will be published again")
        }
    }
    Ok(())
}

/// Gives handed entries that could not be published back to the polls at
/// once. If even that fails, they are theirs when the hand-off runs out.
async fn release_handed(db: &DatabaseConnection, handed: &[Handed]) {
    let ids: Vec<i64> = handed.iter().map(|h| h.outbox_id).collect();
    if let Err(e) = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE outbox SET handed_until = NULL WHERE id = ANY($1)",
            vec![ids.into()],
        ))
        .await
    {
        tracing::warn!(error = %e, entries = handed.len(), "could not release handed outbox entries; they wait for their hand-off to run out");
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
            (SELECT id FROM outbox WHERE handed_until IS NULL OR handed_until < now()
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
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
