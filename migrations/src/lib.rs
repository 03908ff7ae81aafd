//! cairn's PostgreSQL schema, applied at start-up by every process.
//!
//! The schema is written as SQL rather than through the schema builder: the
//! rules that keep jobs correct (one running backup per instance, status
//! values, the outbox) are partial indexes and CHECK constraints, and reading
//! them as SQL is the clearest way to review them.

pub use sea_orm_migration::{async_trait, prelude::*};

/// Declares a migration written as SQL: `up` and `down` run as given, each
/// in the migration's transaction.
macro_rules! sql_migration {
    ($up:expr, $down:expr) => {
        #[derive(sea_orm_migration::prelude::DeriveMigrationName)]
        pub struct Migration;

        // The trait is declared with an elided `SchemaManager` lifetime;
        // async_trait requires the impl to match it exactly.
        #[allow(elided_lifetimes_in_paths)]
        #[sea_orm_migration::async_trait::async_trait]
        impl sea_orm_migration::MigrationTrait for Migration {
            async fn up(&self, manager: &sea_orm_migration::SchemaManager) -> Result<(), sea_orm_migration::DbErr> {
                use sea_orm_migration::sea_orm::ConnectionTrait;
                manager.get_connection().execute_unprepared($up).await.map(|_| ())
            }

            async fn down(&self, manager: &sea_orm_migration::SchemaManager) -> Result<(), sea_orm_migration::DbErr> {
                use sea_orm_migration::sea_orm::ConnectionTrait;
                manager.get_connection().execute_unprepared($down).await.map(|_| ())
            }
        }
    };
}

mod m20261125_000001_initial;
mod m20261125_000002_retries_and_verify;
mod m20261126_000003_auth_tokens;
mod m20261126_000004_outbox_handoff;

/// Applies cairn's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_initial::Migration),
            Box::new(m20261125_000002_retries_and_verify::Migration),
            Box::new(m20261126_000003_auth_tokens::Migration),
            Box::new(m20261126_000004_outbox_handoff::Migration),
        ]
    }
}
