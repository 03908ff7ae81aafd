//! Outbox entries handed to their own process's relay.
//!
//! A submission's entry is published by the relay of the process that
//! committed it, straight from memory, and deleted afterwards: no database
//! round trip stands between the commit and the publish. Until
//! `handed_until`, other relays leave such an entry alone (so it is not
//! published twice in the normal case); after it, the entry is theirs like
//! any other, which is how a crash between commit and publish is recovered.

const UP: &str = r#"
ALTER TABLE outbox ADD COLUMN handed_until timestamptz;
"#;

const DOWN: &str = r#"
ALTER TABLE outbox DROP COLUMN handed_until;
"#;

sql_migration!(UP, DOWN);
