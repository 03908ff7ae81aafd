//! `cairn`: the command-line client of cairn's backup API.
//!
//! This file is the command line itself (clap) and the exit-code contract
//! scripts rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | with `--wait`, the job ended FAILED/ERROR; or the API refused (400/409/422/5xx), or a name is ambiguous |
//! | 2 | usage error (clap's), including a missing `--project` / `CAIRN_PROJECT` |
//! | 3 | not found: a 404, or a name nothing carries |
//! | 4 | the API cannot be reached (connection refused, timeout) |
//!
//! Errors go to stderr; stdout carries only the result (a table, or the
//! API's JSON with `--json`).

mod client;
mod commands;
mod output;
mod wait;

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand, error::ErrorKind};
use reqwest::Url;

use crate::{
    client::Client,
    commands::{BackupCreate, Create, Outcome},
};

/// cairn's client: incremental backups of volumes and restores into new
/// instances, over the Trove v1.0-compatible API.
///
/// Wherever an ID is taken, a name works too (it must name exactly one
/// object).
#[derive(Parser, Debug)]
#[command(name = "cairn", version)]
struct Cli {
    /// The API's address (without /v1.0).
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:8779", global = true, value_parser = parse_url)]
    url: Url,

    /// The project (tenant) to work in. Required.
    #[arg(long, env = "CAIRN_PROJECT", global = true)]
    project: Option<String>,

    /// The API token (`cairn-api token create` makes one), sent in
    /// X-Auth-Token. Also read from OS_TOKEN, as the OpenStack client does.
    #[arg(long, env = "CAIRN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,

    /// Print the API's JSON (an array for lists) instead of a table.
    #[arg(long, global = true)]
    json: bool,

    /// Backups asked for per request when listing (the API's pages).
    #[arg(long, global = true, hide = true, default_value_t = client::MAX_PAGE,
          value_parser = clap::value_parser!(u64).range(1..=client::MAX_PAGE))]
    page_size: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Back up an instance: a full backup, or one on a parent.
    BackupCreate {
        /// The instance to back up (name or ID).
        instance: String,
        /// The new backup's name.
        name: String,
        /// Build on this backup of the instance (name or ID).
        #[arg(long, conflicts_with = "incremental")]
        parent: Option<String>,
        /// Build on the instance's latest completed backup.
        #[arg(long)]
        incremental: bool,
        /// A description.
        #[arg(long)]
        description: Option<String>,
        /// Wait until the backup is COMPLETED or FAILED, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Show a backup.
    BackupShow {
        /// Name or ID.
        backup: String,
    },
    /// List backups, newest first.
    BackupList {
        /// Only this instance's backups (name or ID).
        #[arg(long)]
        instance: Option<String>,
        /// Show at most this many.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Delete a backup.
    BackupDelete {
        /// Name or ID.
        backup: String,
    },
    /// Show the chain from the full backup to this one, as a tree.
    BackupChain {
        /// Name or ID.
        backup: String,
    },
    /// Register a directory as a volume instance.
    InstanceRegister {
        /// The instance's name.
        name: String,
        /// The directory (on the server; relative paths are made absolute here).
        path: PathBuf,
    },
    /// Restore a backup into a new instance.
    Create {
        /// The new instance's name.
        name: String,
        /// The backup to restore (name or ID).
        #[arg(long)]
        backup: String,
        /// Where to restore (absent or empty, inside the server's volume roots).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Wait until the instance is ACTIVE or ERROR, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Show an instance.
    Show {
        /// Name or ID.
        instance: String,
    },
    /// List instances.
    List,
}

fn parse_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.has_host() => Ok(url),
        _ => Err(format!("{raw:?} is not an http:// URL")),
    }
}

async fn run(cli: Cli, project: &str) -> Result<Outcome, client::Error> {
    let token = cli.token.clone().or_else(|| std::env::var("OS_TOKEN").ok()).filter(|t| !t.trim().is_empty());
    let client = Client::new(&cli.url, project, token.as_deref(), cli.page_size)?;
    let j = cli.json;
    match cli.command {
        Command::BackupCreate { instance, name, parent, incremental, description, wait } => {
            let args = BackupCreate { instance, name, parent, incremental, description, wait };
            commands::backup_create(&client, j, args).await
        }
        Command::BackupShow { backup } => commands::backup_show(&client, j, &backup).await,
        Command::BackupList { instance, limit } => commands::backup_list(&client, j, instance.as_deref(), limit).await,
        Command::BackupDelete { backup } => commands::backup_delete(&client, j, &backup).await,
        Command::BackupChain { backup } => commands::backup_chain(&client, j, &backup).await,
        Command::InstanceRegister { name, path } => commands::instance_register(&client, j, &name, &path).await,
        Command::Create { name, backup, path, wait } => {
            commands::create(&client, j, Create { name, backup, path, wait }).await
        }
        Command::Show { instance } => commands::show(&client, j, &instance).await,
        Command::List => commands::list(&client, j).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(project) = cli.project.clone().filter(|p| !p.trim().is_empty()) else {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "no project given: pass --project <PROJECT> or set CAIRN_PROJECT",
            )
            .exit();
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &project)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::JobFailed(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
