//! Scaling out: two real `cairn-worker` processes share the queues; every
//! job runs once, and the jobs spread over both.

use std::collections::BTreeSet;

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use cairn_testkit::{
    assert_same_tree, snapshot, spawn_app,
    trees::{mutate, seed},
};

#[tokio::test]
async fn two_worker_processes_share_the_work() {
    let mut app = spawn_app(0).await;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_cairn-worker"));
    app.start_worker_process(bin, "proc-a");
    app.start_worker_process(bin, "proc-b");

    let mut instances = Vec::new();
    for i in 0..6 {
        let dir = app.volumes().join(format!("guest{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        seed(&dir, i);
        instances.push((dir.clone(), app.register(&format!("guest{i}"), &dir).await));
    }
    // A full backup of every instance, then an incremental of each.
    let mut fulls = Vec::new();
    for (_, id) in &instances {
        fulls.push(app.backup(id, "full", None).await);
    }
    for b in &fulls {
        let done = app.wait_backup(b["id"].as_str().unwrap(), &["COMPLETED", "FAILED"]).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
    }
    let mut incs = Vec::new();
    let mut states = Vec::new();
    for ((dir, id), full) in instances.iter().zip(&fulls) {
        mutate(dir, 2);
        states.push(snapshot(dir));
        incs.push(app.backup(id, "inc", full["id"].as_str()).await);
    }
    for b in &incs {
        let done = app.wait_backup(b["id"].as_str().unwrap(), &["COMPLETED", "FAILED"]).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
    }
    for (i, (b, state)) in incs.iter().zip(&states).enumerate() {
        let inst = app.restore(&format!("copy{i}"), b["id"].as_str().unwrap()).await;
        assert_eq!(inst["status"], "ACTIVE", "{inst}");
        assert_same_tree(state, std::path::Path::new(inst["volume"]["path"].as_str().unwrap()));
    }

    let owners: BTreeSet<String> = app
        .db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT lease_owner FROM backups UNION ALL SELECT lease_owner FROM instances WHERE restore_backup_id IS NOT NULL",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<Option<String>>("", "lease_owner").unwrap().unwrap_or_default())
        .collect();
    assert_eq!(owners, BTreeSet::from(["proc-a".to_owned(), "proc-b".to_owned()]), "jobs ran on both processes");
    // Each backup ran exactly once.
    assert_eq!(app.count("SELECT count(*) AS n FROM backups WHERE attempts <> 1").await, 0);
}
