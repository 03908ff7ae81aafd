//! cairn's PostgreSQL schema, applied at start-up by every process.
//!
//! The schema is written as SQL rather than through the schema builder: the
//! rules that keep jobs correct (one running backup per instance, status
//! values, the outbox) are partial indexes and CHECK constraints, and reading
//! them as SQL is the clearest way to review them.

pub use sea_orm_migration::{async_trait, prelude::*};

mod m20261125_000001_initial;
mod m20261125_000002_retries_and_verify;

/// Applies cairn's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261125_000001_initial::Migration), Box::new(m20261125_000002_retries_and_verify::Migration)]
    }
}
