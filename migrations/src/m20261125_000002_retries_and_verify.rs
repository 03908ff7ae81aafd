//! Delayed outbox entries (job retries) and backup verification results.

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

sql_migration!(UP, DOWN);
