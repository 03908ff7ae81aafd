//! `--wait`: poll a backup or a restore until it ends, showing progress.
//!
//! Why: backups and restores are jobs the API only accepts (202 / `BUILD`);
//! a script or a person who wants the result has to poll. On a terminal the
//! progress is a bar; otherwise (a pipe, a log, CI) it is one plain line on
//! stderr per change, so logs stay readable and stdout keeps only the final
//! object.

use std::{io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{Client, Error};

/// How often the job is polled.
const POLL: Duration = Duration::from_millis(200);

/// What is being waited for.
#[derive(Clone, Copy, Debug)]
pub enum Job {
    /// A backup: ends COMPLETED or FAILED.
    Backup,
    /// An instance being restored: ends ACTIVE or ERROR.
    Restore,
}

fn status(obj: &Value) -> &str {
    obj.get("status").and_then(Value::as_str).unwrap_or("")
}

impl Job {
    fn is_terminal(self, obj: &Value) -> bool {
        match self {
            Self::Backup => matches!(status(obj), "COMPLETED" | "FAILED"),
            Self::Restore => matches!(status(obj), "ACTIVE" | "ERROR"),
        }
    }

    /// Whether the job ended in failure.
    pub fn failed(self, obj: &Value) -> bool {
        match self {
            Self::Backup => status(obj) == "FAILED",
            Self::Restore => status(obj) == "ERROR",
        }
    }

    /// `BUILDING 42.0% (1048576/2497152 bytes)` / `BUILD step 2/3`.
    pub fn line(self, obj: &Value) -> String {
        let s = status(obj);
        match self {
            // Until the worker has sized the volume (total 0) there is no
            // percentage to tell.
            Self::Backup => match obj.get("progress").filter(|p| p["total"].as_u64().is_some_and(|t| t > 0)) {
                Some(p) => format!(
                    "{s} {:.1}% ({}/{} bytes)",
                    p["percent"].as_f64().unwrap_or(0.0),
                    p["done"].as_u64().unwrap_or(0),
                    p["total"].as_u64().unwrap_or(0)
                ),
                None => s.to_owned(),
            },
            Self::Restore => match obj.get("restore").filter(|r| r.is_object()) {
                Some(r) => format!("{s} step {}/{}", r["step"].as_u64().unwrap_or(0), r["steps"].as_u64().unwrap_or(0)),
                None => s.to_owned(),
            },
        }
    }

    /// (position, length) of the bar.
    fn bar(self, obj: &Value) -> (u64, u64) {
        match self {
            Self::Backup => match obj.get("progress").filter(|p| p.is_object()) {
                Some(p) => (p["done"].as_u64().unwrap_or(0), p["total"].as_u64().unwrap_or(0)),
                None if status(obj) == "COMPLETED" => {
                    let b = obj.get("bytes").and_then(Value::as_u64).unwrap_or(1).max(1);
                    (b, b)
                }
                None => (0, 0),
            },
            Self::Restore => match obj.get("restore").filter(|r| r.is_object()) {
                Some(r) => (r["step"].as_u64().unwrap_or(0), r["steps"].as_u64().unwrap_or(0)),
                None => (0, 0),
            },
        }
    }

    async fn fetch(self, client: &Client, id: &str) -> Result<Value, Error> {
        match self {
            Self::Backup => client.get_backup(id).await,
            Self::Restore => client.get_instance(id).await,
        }
    }
}

/// Where progress goes.
enum Reporter {
    /// A terminal: a bar, restyled once the job's size is known.
    Bar { bar: ProgressBar, job: Job, sized: Option<bool> },
    /// Anything else: a line per change.
    Lines { last: Option<String>, job: Job },
}

impl Reporter {
    fn new(job: Job) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Lines { last: None, job };
        }
        let bar = ProgressBar::new(0);
        bar.enable_steady_tick(Duration::from_millis(120));
        Self::Bar { bar, job, sized: None }
    }

    /// The bar's look: a spinner until the job's size is known.
    fn style(job: Job, sized: bool) -> ProgressStyle {
        let template = match (job, sized) {
            (_, false) => "{msg:9} {spinner} {elapsed}",
            (Job::Backup, true) => "{msg:9} [{bar:30.cyan/blue}] {percent:>3}% {bytes}/{total_bytes}",
            (Job::Restore, true) => "{msg:6} [{bar:30.cyan/blue}] restore step {pos}/{len}",
        };
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
    }

    fn show(&mut self, obj: &Value) {
        match self {
            Self::Bar { bar, job, sized } => {
                let (pos, len) = job.bar(obj);
                if *sized != Some(len > 0) {
                    bar.set_style(Self::style(*job, len > 0));
                    *sized = Some(len > 0);
                }
                bar.set_length(len);
                bar.set_position(pos);
                bar.set_message(status(obj).to_owned());
            }
            Self::Lines { last, job } => {
                let line = job.line(obj);
                if last.as_ref() != Some(&line) {
                    eprintln!("{line}");
                    *last = Some(line);
                }
            }
        }
    }

    fn finish(&self) {
        if let Self::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// Polls the job `first` (as the create call returned it) until it ends;
/// the final object.
pub async fn wait(client: &Client, job: Job, first: Value) -> Result<Value, Error> {
    let id = first
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Protocol(format!("the API returned an object without an id: {first}")))?
        .to_owned();
    let mut reporter = Reporter::new(job);
    let mut current = first;
    let result = loop {
        reporter.show(&current);
        if job.is_terminal(&current) {
            break Ok(current);
        }
        tokio::time::sleep(POLL).await;
        match job.fetch(client, &id).await {
            Ok(next) => current = next,
            Err(e) => break Err(e),
        }
    };
    reporter.finish();
    result
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_lines() {
        let b = json!({"status": "BUILDING", "progress": {"done": 1048576, "total": 2497152, "percent": 42.0}});
        assert_eq!(Job::Backup.line(&b), "BUILDING 42.0% (1048576/2497152 bytes)");
        assert_eq!(Job::Backup.line(&json!({"status": "NEW", "progress": null})), "NEW");
        let unknown = json!({"status": "BUILDING", "progress": {"done": 0, "total": 0, "percent": 0.0}});
        assert_eq!(Job::Backup.line(&unknown), "BUILDING");
        let i = json!({"status": "BUILD", "restore": {"step": 2, "steps": 3, "percent": 66.7}});
        assert_eq!(Job::Restore.line(&i), "BUILD step 2/3");
        assert!(Job::Restore.failed(&json!({"status": "ERROR"})));
        assert!(!Job::Backup.failed(&json!({"status": "COMPLETED"})));
    }
}
