//! Job handlers, one per kind. Each re-reads its row, acts only if the
//! status says the work is still to do, and records the outcome through
//! `cairn_shared::lifecycle`. `Err` means "could not decide now" (the
//! database is unreachable): the message is requeued. A job that ran and
//! failed is `Ok` here: its failure is recorded on the row.

mod backup;
mod delete;
mod restore;

use cairn_shared::status::{JobKind, JobMessage};

use crate::JobContext;

/// Runs the job `msg` names.
pub async fn handle(ctx: &JobContext, msg: &JobMessage) -> anyhow::Result<()> {
    match msg.kind {
        JobKind::Backup => backup::run(ctx, msg.id).await,
        JobKind::Restore => restore::run(ctx, msg.id).await,
        JobKind::DeleteBackup => delete::run(ctx, msg.id).await,
    }
}
