//! Connecting to PostgreSQL: create the database if missing, then migrate.
//!
//! Every process does this at start-up (DESIGN.md §3), so the README's one
//! command works on a fresh machine and tests get a fresh database by naming
//! a new one.

use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use cairn_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use url::Url;

/// Connects to `database_url`, creating the database when it does not exist
/// and applying every pending migration. Transient connection errors are
/// retried for about half a minute.
pub async fn connect_and_migrate(database_url: &str) -> anyhow::Result<DatabaseConnection> {
    ensure_database(database_url).await?;
    let db = connect(database_url).await?;
    // Processes starting together would race to create the same tables: one
    // migrates while the others wait on this lock, then find nothing to do.
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await?;
    Migrator::up(&txn, None).await.context("cannot apply migrations")?;
    txn.commit().await?;
    Ok(db)
}

/// Arbitrary, fixed key of the migration lock.
const MIGRATION_LOCK: i64 = 0x6361_6972_6e00_0000;

/// How long a pooled connection may sit idle before a checkout pings it.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Connects to an existing database.
pub async fn connect(database_url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(database_url);
    opts.max_connections(32)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        // A pooled connection used in the last second is handed out as it
        // is; one idle for longer is pinged first (PostgreSQL may have
        // restarted meanwhile). Pinging every checkout, sqlx's default,
        // cost a round trip per statement outside a transaction: on the job
        // path, the claim, the completion and every batch of the relay and
        // of the submissions.
        .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
        .sqlx_logging(false);
    (|| Database::connect(opts.clone()))
        .retry(retry_policy())
        .notify(|e, after| tracing::warn!(error = %e, ?after, "PostgreSQL not reachable; retrying"))
        .await
        .with_context(|| format!("cannot connect to {}", redact(database_url)))
}

/// Creates the database named in `database_url` if it does not exist.
async fn ensure_database(database_url: &str) -> anyhow::Result<()> {
    let mut url = Url::parse(database_url).with_context(|| "CAIRN_DATABASE_URL is not a URL")?;
    let name = url.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(!name.is_empty(), "CAIRN_DATABASE_URL names no database");
    url.set_path("/postgres");
    let admin = connect(url.as_str()).await?;
    let exists = || async {
        admin
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT 1 FROM pg_database WHERE datname = $1",
                vec![name.clone().into()],
            ))
            .await
            .map(|row| row.is_some())
    };
    if !exists().await? {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match admin.execute_unprepared(&format!("CREATE DATABASE {quoted}")).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it at the same moment.
            Err(_) if exists().await? => {}
            Err(e) => return Err(anyhow::anyhow!("{e:?}")).context(format!("cannot create database {name}")),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Retries for transient errors: exponential with jitter, ~30 s in all.
pub fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(10)
        .with_jitter()
}

/// A URL with its password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
