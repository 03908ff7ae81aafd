//! Verifying a backup: re-read every stored object, check every checksum.
//!
//! Read-only and idempotent, so it needs no lease: a verify interrupted by a
//! dead worker is simply asked for again.

use cairn_shared::{datastore::StoredLink, entities::backup, lifecycle};
use sea_orm::EntityTrait;
use tracing::Instrument;
use uuid::Uuid;

use super::Receipt;
use crate::JobContext;

pub async fn run(ctx: &JobContext, id: Uuid, receipt: &Receipt) -> anyhow::Result<()> {
    let row = backup::Entity::find_by_id(id).one(&ctx.db).await?;
    receipt.ack().await;
    let Some(row) = row.filter(|b| b.verify_status.as_deref() == Some("RUNNING")) else {
        return Ok(());
    };
    let span = tracing::info_span!("verify", backup_id = %row.id, instance_id = %row.instance_id);
    async move {
        let outcome = match (&row.checksum, &row.artifact_prefix, ctx.datastores.get(&row.datastore_type)) {
            (Some(checksum), Some(prefix), Some(datastore)) => datastore
                .verify(StoredLink { backup_id: row.id, checksum: checksum.clone(), artifact_prefix: prefix.clone() })
                .await
                .map_err(|e| format!("{e:#}")),
            _ => Err("the backup has no complete artifact to verify".to_owned()),
        };
        match &outcome {
            Ok(()) => tracing::info!("verify: every object matches its checksum"),
            Err(why) => tracing::error!(reason = %why, "verify: backup is corrupted"),
        }
        lifecycle::finish_verify(&ctx.db, row.id, outcome.as_ref().map(|_| ()).map_err(String::as_str)).await?;
        anyhow::Ok(())
    }
    .instrument(span)
    .await
}
