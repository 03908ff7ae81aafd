//! The real OpenStack client (`openstack database ...`, python-troveclient)
//! works against cairn unchanged, with no Keystone: every command of the
//! Trove guide, names or ids, paging, and a restore that is byte-identical.
//! It authenticates as Keystone-less deployments do, with the
//! `admin_token` plugin (`OS_AUTH_TYPE=admin_token`, `OS_TOKEN`), which
//! sends the token in X-Auth-Token.

use std::{path::Path, process::Command};

use cairn_testkit::{assert_same_tree, snapshot, spawn_app, trees::seed};
use serde_json::Value;

/// The pinned client, installed once into a cached virtualenv.
fn openstack() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/openstack-venv");
    let out = Command::new("bash").arg(script).output().expect("scripts/openstack-venv runs");
    assert!(out.status.success(), "cannot install the OpenStack client: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Client {
    bin: String,
    endpoint: String,
    token: String,
}

impl Client {
    /// Runs `openstack database <args>`; its stdout, asserting success.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .arg("database")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("OS_AUTH_TYPE", "admin_token")
            .env("OS_ENDPOINT", &self.endpoint)
            .env("OS_TOKEN", &self.token)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "openstack database {args:?} failed:\n{stdout}\n{stderr}");
        stdout.into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-f", "json"]);
        let out = self.run(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
    }
}

// The client runs synchronously (std::process) while the in-process API
// serves it: the API needs runtime threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openstack_database_commands_work_unchanged() {
    let bin = tokio::task::spawn_blocking(openstack).await.unwrap();
    let app = spawn_app(2).await;
    let client = Client { bin, endpoint: format!("{}/{}", app.base, app.project), token: app.token.clone() };
    let source = app.volumes().join("guest1");
    std::fs::create_dir_all(&source).unwrap();
    seed(&source, 5);
    let instance = app.register("guest1", &source).await;

    let full = client.json(&["backup", "create", "full", "--instance", &instance]);
    assert_eq!(full["status"], "NEW", "{full}");
    let full_id = full["id"].as_str().unwrap().to_owned();
    app.wait_backup(&full_id, &["COMPLETED"]).await;

    // show by name: GET /backups/full is a 404, then the client searches.
    let shown = client.json(&["backup", "show", "full"]);
    assert_eq!(shown["id"], full_id.as_str());
    assert_eq!(shown["status"], "COMPLETED");

    std::fs::write(source.join("base/16384/table"), b"rewritten").unwrap();
    let b11 = client.json(&[
        "backup",
        "create",
        "backup1.1",
        "--instance",
        &instance,
        "--parent",
        &full_id,
        "--description",
        "d",
    ]);
    assert_eq!(b11["parent_id"], full_id.as_str(), "{b11}");
    assert_eq!(b11["description"], "d");
    let b11_id = b11["id"].as_str().unwrap().to_owned();
    app.wait_backup(&b11_id, &["COMPLETED"]).await;

    std::fs::write(source.join("new-file"), b"nightly").unwrap();
    let nightly = client.json(&["backup", "create", "nightly", "--instance", &instance, "--incremental"]);
    assert_eq!(nightly["parent_id"], b11_id.as_str(), "--incremental chains on the newest COMPLETED: {nightly}");
    let nightly_id = nightly["id"].as_str().unwrap().to_owned();
    app.wait_backup(&nightly_id, &["COMPLETED"]).await;
    let state = snapshot(&source);

    let list = client.json(&["backup", "list"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|b| b["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["nightly", "backup1.1", "full"]);
    let by_instance = client.json(&["backup", "list", "--instance", &instance, "--limit", "1"]);
    assert_eq!(by_instance.as_array().unwrap().len(), 1);
    let page2 = client.json(&["backup", "list", "--limit", "1", "--marker", &nightly_id]);
    assert_eq!(page2[0]["Name"], "backup1.1", "{page2}");

    let guest2 =
        client.json(&["instance", "create", "guest2", "--flavor", "6", "--size", "1", "--backup", &nightly_id]);
    assert_eq!(guest2["status"], "BUILD", "{guest2}");
    let restored = app.wait_instance(guest2["id"].as_str().unwrap(), &["ACTIVE", "ERROR"]).await;
    assert_eq!(restored["status"], "ACTIVE", "{restored}");
    let shown = client.json(&["instance", "show", "guest2"]);
    assert_eq!(shown["status"], "ACTIVE", "{shown}");
    assert_same_tree(&state, Path::new(restored["volume"]["path"].as_str().unwrap()));

    // delete by name cascades to the descendants.
    client.run(&["backup", "delete", "backup1.1"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = client.json(&["backup", "list"]);
        let names: Vec<&str> = left.as_array().unwrap().iter().map(|b| b["Name"].as_str().unwrap()).collect();
        if names == ["full"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "delete did not cascade: {names:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
