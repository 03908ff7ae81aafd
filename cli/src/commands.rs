//! One function per subcommand: resolve names, call the API, print.
//!
//! Why apart from `main.rs`: `main.rs` is the command line (clap) and the
//! exit-code policy; this is what each command does, written against the
//! typed [`Client`] so it reads like the command list.

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use crate::{
    client::{Client, Error},
    output,
    wait::{self, Job},
};

/// How a command ended, when the API did not refuse it.
pub enum Outcome {
    Ok,
    /// `--wait` saw the job end FAILED/ERROR (exit 1).
    JobFailed(String),
}

/// Writes the result to stdout. A closed pipe (`cairn list | head -1`) is
/// not an error worth a panic: the reader has what it wanted.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Prints one object: a Property/Value table, or its JSON.
fn print_object(json_out: bool, obj: &Value) {
    emit(&if json_out { output::json(obj) } else { output::properties(obj) });
}

/// An absolute path: the API only takes absolute ones, and a relative path
/// the user typed means one under their working directory.
fn absolute(p: &Path) -> Result<String, Error> {
    std::path::absolute(p)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| Error::Protocol(format!("cannot make {} absolute: {e}", p.display())))
}

/// Waits for a job if asked, prints the final object, tells how it ended.
async fn finish(client: &Client, json_out: bool, job: Job, obj: Value, wait: bool) -> Result<Outcome, Error> {
    let obj = if wait { wait::wait(client, job, obj).await? } else { obj };
    print_object(json_out, &obj);
    if wait && job.failed(&obj) {
        let what = match job {
            Job::Backup => "backup",
            Job::Restore => "instance",
        };
        let reason = obj.get("fail_reason").and_then(Value::as_str).unwrap_or("no reason given");
        return Ok(Outcome::JobFailed(format!(
            "{what} {} ended {}: {reason}",
            output::cell(&obj["id"]),
            output::cell(&obj["status"])
        )));
    }
    Ok(Outcome::Ok)
}

pub struct BackupCreate {
    pub instance: String,
    pub name: String,
    pub parent: Option<String>,
    pub incremental: bool,
    pub description: Option<String>,
    pub wait: bool,
}

pub async fn backup_create(client: &Client, json_out: bool, a: BackupCreate) -> Result<Outcome, Error> {
    let instance = client.instance_id(&a.instance).await?;
    let mut body = json!({ "name": a.name, "instance": instance });
    if let Some(parent) = &a.parent {
        // A parent name is looked up among this instance's backups: every
        // instance may well have its own "full".
        body["parent_id"] = json!(client.backup_id(parent, Some(&instance)).await?);
    }
    if a.incremental {
        body["incremental"] = json!(1);
    }
    if let Some(d) = a.description {
        body["description"] = json!(d);
    }
    let created = client.create_backup(body).await?;
    finish(client, json_out, Job::Backup, created, a.wait).await
}

pub async fn backup_show(client: &Client, json_out: bool, key: &str) -> Result<Outcome, Error> {
    let id = client.backup_id(key, None).await?;
    print_object(json_out, &client.get_backup(&id).await?);
    Ok(Outcome::Ok)
}

pub async fn backup_list(
    client: &Client,
    json_out: bool,
    instance: Option<&str>,
    limit: Option<u64>,
) -> Result<Outcome, Error> {
    let instance = match instance {
        Some(key) => Some(client.instance_id(key).await?),
        None => None,
    };
    let list = client.list_backups(instance.as_deref(), limit).await?;
    if json_out {
        emit(&output::json(&Value::Array(list)));
    } else {
        emit(&output::backups(&list));
    }
    Ok(Outcome::Ok)
}

pub async fn backup_delete(client: &Client, json_out: bool, key: &str) -> Result<Outcome, Error> {
    let id = client.backup_id(key, None).await?;
    client.delete_backup(&id).await?;
    // The API answers 202 with no body: nothing to print for --json.
    if !json_out {
        emit(&format!("Request to delete backup {id} has been accepted."));
    }
    Ok(Outcome::Ok)
}

/// The chain of a backup, root first, and the id of a parent that could not
/// be found (a chain that lost its root).
async fn chain_of(client: &Client, id: &str) -> Result<(Vec<Value>, Option<String>), Error> {
    let mut links = vec![client.get_backup(id).await?];
    let mut seen: HashSet<String> = HashSet::from([id.to_owned()]);
    let mut missing = None;
    while let Some(parent) = links.last().and_then(|b| b.get("parent_id")).and_then(Value::as_str).map(str::to_owned) {
        if !seen.insert(parent.clone()) {
            return Err(Error::Protocol(format!("the chain of backup {id} loops at {parent}")));
        }
        match client.get_backup(&parent).await {
            Ok(b) => links.push(b),
            Err(Error::NotFound(_)) => {
                missing = Some(parent);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    links.reverse();
    Ok((links, missing))
}

pub async fn backup_chain(client: &Client, json_out: bool, key: &str) -> Result<Outcome, Error> {
    let id = client.backup_id(key, None).await?;
    let (links, missing) = chain_of(client, &id).await?;
    if json_out {
        emit(&output::json(&Value::Array(links)));
    } else {
        emit(&output::chain_tree(&links, missing.as_deref()));
    }
    Ok(Outcome::Ok)
}

pub async fn instance_register(client: &Client, json_out: bool, name: &str, path: &Path) -> Result<Outcome, Error> {
    let body = json!({ "name": name, "datastore": { "type": "volume" }, "volume": { "path": absolute(path)? } });
    print_object(json_out, &client.create_instance(body).await?);
    Ok(Outcome::Ok)
}

pub struct Create {
    pub name: String,
    pub backup: String,
    pub path: Option<PathBuf>,
    pub wait: bool,
}

pub async fn create(client: &Client, json_out: bool, a: Create) -> Result<Outcome, Error> {
    let backup = client.backup_id(&a.backup, None).await?;
    let mut body = json!({ "name": a.name, "restorePoint": { "backupRef": backup } });
    if let Some(p) = &a.path {
        body["volume"] = json!({ "path": absolute(p)? });
    }
    let created = client.create_instance(body).await?;
    finish(client, json_out, Job::Restore, created, a.wait).await
}

pub async fn show(client: &Client, json_out: bool, key: &str) -> Result<Outcome, Error> {
    let id = client.instance_id(key).await?;
    print_object(json_out, &client.get_instance(&id).await?);
    Ok(Outcome::Ok)
}

pub async fn list(client: &Client, json_out: bool) -> Result<Outcome, Error> {
    let list = client.list_instances().await?;
    if json_out {
        emit(&output::json(&Value::Array(list)));
    } else {
        emit(&output::instances(&list));
    }
    Ok(Outcome::Ok)
}
