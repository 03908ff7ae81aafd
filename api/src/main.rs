//! `cairn-api`: serves the HTTP API on `CAIRN_LISTEN` until Ctrl-C/SIGTERM.
//!
//! `cairn-api token ...` manages API tokens instead (an operator's command,
//! run where `CAIRN_DATABASE_URL` reaches the database): `create` prints a
//! new token once, `list` shows them without their secrets, `revoke` ends
//! one.

use anyhow::Context;
use cairn_api::tokens;
use cairn_shared::Config;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// cairn's HTTP API. With no command it serves; `token` manages tokens.
#[derive(Parser, Debug)]
#[command(name = "cairn-api", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage API tokens (sent by clients in X-Auth-Token).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it (on stdout, this once only).
    Create {
        /// The project the token is for.
        #[arg(long)]
        project: String,
        /// May use every project, and list across projects (all_projects).
        #[arg(long)]
        admin: bool,
        /// What the token is for, shown by `token list`.
        #[arg(long)]
        description: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this project's tokens.
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a token: it is refused (401) from now on.
    Revoke {
        /// The token's id (as `token list` shows it).
        id: Uuid,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cairn_shared::telemetry::init();
    let config = Config::from_env()?;
    match cli.command {
        None => serve(config).await,
        Some(Command::Token(command)) => token(&config, command).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let app = cairn_api::Application::start(&config, shutdown.clone()).await?;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    app.wait().await
}

async fn token(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let db = cairn_shared::db::connect_and_migrate(&config.database_url).await?;
    match command {
        TokenCommand::Create { project, admin, description } => {
            let (id, token) = tokens::create(&db, &project, admin, description.as_deref())
                .await
                .context("cannot create the token")?;
            // The token alone on stdout, so scripts can capture it; the
            // rest on stderr.
            println!("{token}");
            let kind = if admin { "admin token" } else { "token" };
            eprintln!("created {kind} {id} for project {project}; it is shown only this once");
        }
        TokenCommand::List { project } => {
            let list = tokens::list(&db, project.as_deref()).await?;
            println!(
                "{:<36}  {:<20}  {:<5}  {:<19}  {:<19}  description",
                "id", "project", "admin", "created", "revoked"
            );
            for t in list {
                let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
                println!(
                    "{:<36}  {:<20}  {:<5}  {:<19}  {:<19}  {}",
                    t.id,
                    t.project,
                    if t.admin { "yes" } else { "no" },
                    time(t.created),
                    t.revoked_at.map_or_else(|| "-".to_owned(), time),
                    t.description.unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { id } => {
            tokens::revoke(&db, id).await.context("cannot revoke the token")?;
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
