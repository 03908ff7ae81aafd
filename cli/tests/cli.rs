//! The real `cairn` binary against a real, isolated deployment
//! (`cairn_testkit::spawn_app`): every command, the table and JSON shapes,
//! names resolved to ids, `--wait` progress lines, and the exit codes
//! scripts rely on (0 ok, 1 failed job or refusal, 2 usage, 3 not found,
//! 4 unreachable).

use std::{path::Path, time::Duration};

use serde_json::Value;

use cairn_testkit::{
    TestApp, assert_same_tree, snapshot, spawn_app,
    trees::{mutate, seed},
};

/// What one run of the binary produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts the exit code, naming the run on failure.
    fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// The Value of `property` in a Property/Value table.
    fn property(&self, property: &str) -> String {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert!(lines.len() >= 4, "not a table:\n{}", self.stdout);
        let header: Vec<&str> = lines[1].split('|').map(str::trim).collect();
        assert_eq!(header, ["", "Property", "Value", ""], "header:\n{}", self.stdout);
        lines
            .iter()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells.len() == 4 && cells[1] == property).then(|| cells[2].to_owned())
            })
            .next()
            .unwrap_or_else(|| panic!("no row {property}:\n{}", self.stdout))
    }

    /// The rows of a list table, as cells; asserts the header.
    fn rows(&self, header: &[&str]) -> Vec<Vec<String>> {
        let lines: Vec<&str> = self.stdout.lines().filter(|l| l.starts_with('|')).collect();
        let cells = |l: &str| -> Vec<String> {
            let c: Vec<String> = l.split('|').map(|c| c.trim().to_owned()).collect();
            c[1..c.len() - 1].to_vec()
        };
        assert_eq!(cells(lines[0]), header, "{}", self.stdout);
        lines[1..].iter().map(|l| cells(l)).collect()
    }
}

/// Runs the binary with `--url`/`--project` of `app`.
struct Cairn {
    url: String,
    project: String,
    token: String,
}

impl Cairn {
    fn new(app: &TestApp) -> Self {
        Self {
            url: app.base.trim_end_matches("/v1.0").to_owned(),
            project: app.project.clone(),
            token: app.token.clone(),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--url", &self.url, "--project", &self.project, "--token", &self.token];
        all.extend_from_slice(args);
        raw(&all).await
    }
}

/// Runs the binary with exactly `args` and no CAIRN_* environment.
async fn raw(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_remove("CAIRN_URL")
        .env_remove("CAIRN_PROJECT")
        .env_remove("CAIRN_TOKEN")
        .env_remove("OS_TOKEN")
        .output()
        .await
        .expect("the cairn binary runs");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `--wait` progress on a non-terminal: plain lines, one per change, no
/// escape codes, ending on the final status.
fn assert_plain_backup_progress(stderr: &str, last: &str) {
    assert!(!stderr.contains('\x1b'), "escape codes in {stderr:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("error:")).collect();
    assert_eq!(lines.first(), Some(&"NEW"), "{stderr}");
    assert_eq!(lines.last(), Some(&last), "{stderr}");
    for l in &lines {
        let mut words = l.splitn(2, ' ');
        let status = words.next().unwrap();
        assert!(["NEW", "BUILDING", "SAVING", "COMPLETED", "FAILED"].contains(&status), "{l}");
        if let Some(rest) = words.next() {
            // `42.0% (1048576/2497152 bytes)`
            let (pct, bytes) = rest.split_once("% (").unwrap_or_else(|| panic!("{l}"));
            pct.parse::<f64>().unwrap_or_else(|_| panic!("{l}"));
            let (done, total) = bytes.strip_suffix(" bytes)").and_then(|b| b.split_once('/')).expect(l);
            assert!(done.parse::<u64>().unwrap() <= total.parse::<u64>().unwrap(), "{l}");
        }
    }
    let mut dedup = lines.clone();
    dedup.dedup();
    assert_eq!(dedup, lines, "a line per change only");
}

/// Trove's incremental-backup guide with the CLI, by names throughout.
#[tokio::test]
async fn walkthrough_by_name_with_tables_json_chain_and_restore() {
    let app = spawn_app(2).await;
    let cairn = Cairn::new(&app);
    let source = app.volumes().join("guest1");
    std::fs::create_dir_all(&source).unwrap();
    seed(&source, 11);

    let reg = cairn.run(&["instance-register", "guest1", path(&source)]).await.expect(0);
    assert_eq!(reg.property("name"), "guest1");
    assert_eq!(reg.property("status"), "ACTIVE");
    assert_eq!(reg.property("restore"), "None", "null is None, as in the guide");
    assert!(reg.property("volume").starts_with("{\""), "nested objects as compact JSON");
    let guest1 = reg.property("id");

    let full = cairn.run(&["backup-create", "guest1", "full", "--wait"]).await.expect(0);
    assert_eq!(full.property("status"), "COMPLETED");
    assert_eq!(full.property("instance_id"), guest1, "the instance name was resolved");
    assert_eq!(full.property("parent_id"), "None");
    assert_plain_backup_progress(&full.stderr, "COMPLETED");
    let full_id = full.property("id");

    mutate(&source, 1);
    let b11 =
        cairn.run(&["--json", "backup-create", "guest1", "backup1.1", "--parent", "full", "--wait"]).await.expect(0);
    let b11 = b11.json();
    assert_eq!(b11["status"], "COMPLETED", "{b11}");
    assert_eq!(b11["parent_id"].as_str(), Some(full_id.as_str()), "the parent name was resolved");

    mutate(&source, 2);
    let b12 = cairn.run(&["backup-create", "guest1", "backup1.2", "--incremental", "--wait", "--json"]).await.expect(0);
    assert_plain_backup_progress(&b12.stderr, "COMPLETED");
    let b12 = b12.json();
    assert_eq!(b12["parent_id"], b11["id"], "--incremental builds on the latest: {b12}");
    let want = snapshot(&source);
    mutate(&source, 3); // the restore must not see this

    // The chain, root first, as a tree.
    let chain = cairn.run(&["backup-chain", "backup1.2"]).await.expect(0);
    let lines: Vec<&str> = chain.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", chain.stdout);
    assert!(lines[0].starts_with(&format!("full ({full_id}) COMPLETED, size ")), "{}", chain.stdout);
    assert!(lines[1].starts_with(&format!("└── backup1.1 ({}) COMPLETED, size ", b11["id"].as_str().unwrap())));
    assert!(lines[2].starts_with(&format!("    └── backup1.2 ({}) COMPLETED, size ", b12["id"].as_str().unwrap())));
    assert!(lines.iter().all(|l| l.ends_with("B")), "sizes in bytes units: {}", chain.stdout);
    let chain = cairn.run(&["--json", "backup-chain", b12["id"].as_str().unwrap()]).await.expect(0).json();
    let names: Vec<&str> = chain.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["full", "backup1.1", "backup1.2"]);

    // Lists: the table, JSON arrays, --limit, --instance, pages followed.
    let list = cairn.run(&["backup-list"]).await.expect(0);
    let rows = list.rows(&["ID", "Name", "Status", "Parent", "Size", "Created"]);
    let names: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(names, ["backup1.2", "backup1.1", "full"], "newest first");
    assert_eq!(rows[2][3], "None");
    assert_eq!(rows[1][3], full_id);
    let two = cairn.run(&["--json", "backup-list", "--instance", "guest1", "--limit", "2"]).await.expect(0).json();
    assert_eq!(two.as_array().unwrap().len(), 2, "{two}");
    assert_eq!(two[0]["id"], b12["id"]);
    let paged = cairn.run(&["--json", "--page-size", "1", "backup-list"]).await.expect(0).json();
    assert_eq!(paged.as_array().unwrap().len(), 3, "every page followed: {paged}");
    let show = cairn.run(&["--page-size", "1", "backup-show", "full"]).await.expect(0);
    assert_eq!(show.property("id"), full_id, "a name found on the last page");
    let show = cairn.run(&["--json", "backup-show", "backup1.1"]).await.expect(0).json();
    assert_eq!(show["id"], b11["id"]);

    // Restore the tip into guest2 and compare with the source as backed up.
    let created = cairn.run(&["--json", "create", "guest2", "--backup", "backup1.2", "--wait"]).await.expect(0);
    let guest2 = created.json();
    assert_eq!(guest2["status"], "ACTIVE", "{guest2}");
    assert_eq!(guest2["restore"]["steps"], 3);
    let progress: Vec<&str> = created.stderr.lines().collect();
    assert_eq!(progress.first(), Some(&"BUILD step 0/3"), "{}", created.stderr);
    assert_eq!(progress.last(), Some(&"ACTIVE step 3/3"), "{}", created.stderr);
    assert!(progress.iter().all(|l| l.starts_with("BUILD step ") || l.starts_with("ACTIVE step ")), "{progress:?}");
    assert_same_tree(&want, Path::new(guest2["volume"]["path"].as_str().unwrap()));

    let show = cairn.run(&["show", "guest2"]).await.expect(0);
    assert_eq!(show.property("id"), guest2["id"].as_str().unwrap());
    assert_eq!(show.property("status"), "ACTIVE");
    let show = cairn.run(&["--json", "show", &guest1]).await.expect(0).json();
    assert_eq!(show["name"], "guest1");

    let list = cairn.run(&["list"]).await.expect(0);
    let rows = list.rows(&["ID", "Name", "Status", "Datastore", "Path"]);
    let mut names: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    names.sort();
    assert_eq!(names, ["guest1", "guest2"]);
    let g1 = rows.iter().find(|r| r[1] == "guest1").unwrap();
    assert_eq!((g1[2].as_str(), g1[4].as_str()), ("ACTIVE", path(&source)));
    assert!(g1[3].starts_with("volume"), "{g1:?}");
    let list = cairn.run(&["--json", "list"]).await.expect(0).json();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // A restore to an explicit path, without --wait: BUILD at once.
    let target = app.volumes().join("guest3");
    let g3 = cairn.run(&["create", "guest3", "--backup", "full", "--path", path(&target)]).await.expect(0);
    assert_eq!(g3.property("status"), "BUILD");
    let g3 = app.wait_instance(&g3.property("id"), &["ACTIVE", "ERROR"]).await;
    assert_eq!(g3["status"], "ACTIVE");
    assert_eq!(g3["volume"]["path"], path(&target));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    // No project at all: a clear usage error.
    let r = raw(&["list"]).await.expect(2);
    assert!(r.stderr.contains("CAIRN_PROJECT") && r.stderr.contains("--project"), "{}", r.stderr);
    raw(&["--project", "p", "no-such-command"]).await.expect(2);
    raw(&["--project", "p", "backup-create", "a"]).await.expect(2);
    raw(&["--project", "p", "backup-create", "a", "b", "--parent", "x", "--incremental"]).await.expect(2);
    raw(&["--project", "p", "--url", "not a url", "list"]).await.expect(2);
    raw(&["--project", "p", "backup-list", "--limit", "0"]).await.expect(2);
    // The project from the environment, and flags after the subcommand.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["list", "--url", "http://127.0.0.1:1"])
        .env("CAIRN_PROJECT", "p")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "the project came from CAIRN_PROJECT, then nothing answered");
}

#[tokio::test]
async fn unreachable_server_exits_4() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there now
    let url = format!("http://127.0.0.1:{port}");
    for args in [vec!["list"], vec!["backup-show", "full"], vec!["backup-create", "g", "b", "--wait"]] {
        let mut all = vec!["--url", url.as_str(), "--project", "p"];
        all.extend(args);
        let r = raw(&all).await.expect(4);
        assert!(r.stderr.contains("cannot reach") && r.stderr.contains(&url), "{}", r.stderr);
        assert!(r.stdout.is_empty());
    }
}

#[tokio::test]
async fn not_found_refusals_failed_jobs_and_ambiguous_names() {
    let app = spawn_app(1).await;
    let cairn = Cairn::new(&app);
    let missing = uuid::Uuid::new_v4().to_string();

    // 3: not found, by name or by id.
    for args in [
        vec!["backup-show", "nosuch"],
        vec!["backup-show", missing.as_str()],
        vec!["backup-chain", missing.as_str()],
        vec!["backup-delete", "nosuch"],
        vec!["show", "nosuch"],
        vec!["show", missing.as_str()],
        vec!["backup-create", "nosuch", "x"],
        vec!["backup-list", "--instance", "nosuch"],
        vec!["create", "g", "--backup", "nosuch"],
        vec!["create", "g", "--backup", missing.as_str()],
    ] {
        let r = cairn.run(&args).await.expect(3);
        assert!(r.stderr.starts_with("error: ") && r.stderr.len() > 10, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }

    // 1: a 422 refusal, its message on stderr.
    let outside = app.config.data_dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let r = cairn.run(&["instance-register", "x", path(&outside)]).await.expect(1);
    assert!(r.stderr.contains("HTTP 422"), "{}", r.stderr);

    // 1: the backup job fails (its volume disappeared) under --wait.
    let dir = app.volumes().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    seed(&dir, 3);
    cairn.run(&["instance-register", "a", path(&dir)]).await.expect(0);
    std::fs::remove_dir_all(&dir).unwrap();
    let doomed = cairn.run(&["backup-create", "a", "doomed", "--wait"]).await.expect(1);
    assert_eq!(doomed.property("status"), "FAILED", "the final object is still printed");
    assert!(doomed.property("fail_reason").contains("volume"), "{}", doomed.stdout);
    assert_plain_backup_progress(&doomed.stderr, "FAILED");
    assert!(doomed.stderr.lines().last().unwrap().starts_with("error: backup "), "{}", doomed.stderr);

    // 1: a 409 refusal: a FAILED backup cannot be restored.
    let r = cairn.run(&["create", "g", "--backup", "doomed", "--wait"]).await.expect(1);
    assert!(r.stderr.contains("HTTP 409") && r.stderr.contains("COMPLETED"), "{}", r.stderr);

    // 1: an ambiguous name lists the ids it could mean.
    let b = app.volumes().join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("f"), b"data").unwrap();
    cairn.run(&["instance-register", "b", path(&b)]).await.expect(0);
    let d1 = cairn.run(&["--json", "backup-create", "b", "dup"]).await.expect(0).json();
    assert_eq!(d1["status"], "NEW", "no --wait: the accepted backup");
    let d2 = cairn.run(&["--json", "backup-create", "b", "dup", "--description", "again"]).await.expect(0).json();
    assert_eq!(d2["description"], "again");
    let r = cairn.run(&["backup-show", "dup"]).await.expect(1);
    for id in [&d1["id"], &d2["id"]] {
        assert!(r.stderr.contains(id.as_str().unwrap()), "{}", r.stderr);
    }
    // ...but an id always works.
    cairn.run(&["backup-show", d1["id"].as_str().unwrap()]).await.expect(0);

    // backup-delete by name; once deleted, the name finds nothing (3).
    let r = cairn.run(&["backup-delete", "doomed"]).await.expect(0);
    assert!(r.stdout.contains("delete"), "{}", r.stdout);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = cairn.run(&["backup-show", "doomed"]).await;
        if r.code == 3 {
            break;
        }
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.property("status"), "DELETING");
        assert!(std::time::Instant::now() < deadline, "doomed still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The token comes from `--token`, `CAIRN_TOKEN` or `OS_TOKEN`; without one
/// the API's 401 is a refusal (1) with its message, and so is another
/// project's token (403).
#[tokio::test]
async fn the_token_comes_from_the_flag_or_the_environment() {
    let app = spawn_app(0).await;
    let url = app.base.trim_end_matches("/v1.0").to_owned();
    let with_env = |var: &str, value: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(["--url", &url, "--project", &app.project, "list"])
            .env_remove("CAIRN_TOKEN")
            .env_remove("OS_TOKEN")
            .env(var, value);
        cmd
    };
    for var in ["CAIRN_TOKEN", "OS_TOKEN"] {
        let out = with_env(var, &app.token).output().await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{var}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let r = raw(&["--url", &url, "--project", &app.project, "list"]).await.expect(1);
    assert!(r.stderr.contains("X-Auth-Token"), "{}", r.stderr);
    let foreign = app.token_for(&format!("{}-z", app.project), false).await;
    let r = raw(&["--url", &url, "--project", &app.project, "--token", &foreign, "list"]).await.expect(1);
    assert!(r.stderr.contains("HTTP 403") && !r.stderr.contains(&foreign), "{}", r.stderr);
    // clap's help must not print a token taken from the environment.
    let out = with_env("CAIRN_TOKEN", &app.token).arg("--help").output().await.unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&app.token), "--help shows the token");
}
