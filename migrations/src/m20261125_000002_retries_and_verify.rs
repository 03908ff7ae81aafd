//! Delayed outbox entries (job retries) and backup verification results.

use sea_orm_migration::{async_trait, prelude::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
-- A retry is published to a RabbitMQ delay queue that dead-letters it back
-- to the work exchange after this many seconds.
ALTER TABLE outbox ADD COLUMN delay_seconds integer NOT NULL DEFAULT 0;

-- The last `verify` action on a backup: RUNNING, OK or CORRUPTED.
ALTER TABLE backups ADD COLUMN verify_status text
    CHECK (verify_status IN ('RUNNING', 'OK', 'CORRUPTED'));
ALTER TABLE backups ADD COLUMN verify_message text;
ALTER TABLE backups ADD COLUMN verified_at timestamptz;
"#;

const DOWN: &str = r#"
ALTER TABLE backups DROP COLUMN verified_at, DROP COLUMN verify_message, DROP COLUMN verify_status;
ALTER TABLE outbox DROP COLUMN delay_seconds;
"#;

// The trait is declared with an elided `SchemaManager` lifetime; async_trait
// requires the impl to match it exactly.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await.map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(DOWN).await.map(|_| ())
    }
}
