//! DESIGN.md §4's rules, each shown against the running service.

use std::time::Duration;

use cairn_shared::lifecycle::{self, BackupClaim};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use cairn_testkit::{TestApp, assert_fault, spawn_app};

async fn instance_with_data(app: &TestApp, name: &str) -> String {
    let dir = app.volumes().join(name);
    std::fs::create_dir_all(dir.join("d")).unwrap();
    std::fs::write(dir.join("d/file"), name.as_bytes()).unwrap();
    app.register(name, &dir).await
}

/// POSTs `body` to `path` in a second project of the same deployment, with
/// that project's own token.
async fn post_in_other_project(app: &TestApp, path: &str, body: &serde_json::Value) -> (StatusCode, serde_json::Value) {
    let client = cairn_testkit::client_with_token(&app.token_for("other-project", false).await);
    let resp = client.post(app.url_for("other-project", path)).json(body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

async fn post_backup(app: &TestApp, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    app.post("/backups", &json!({ "backup": body })).await
}

#[tokio::test]
async fn rule1_parent_of_another_instance_or_project_is_refused() {
    let app = spawn_app(1).await;
    let a = instance_with_data(&app, "a").await;
    let b = instance_with_data(&app, "b").await;
    let full_a = app.backup_completed(&a, "full-a", None).await;
    let before = app.count("SELECT count(*) AS n FROM backups").await;

    let (status, body) = post_backup(&app, json!({"name": "x", "instance": b, "parent_id": full_a["id"]})).await;
    assert_fault(status, &body, 422, "unprocessableEntity");

    // The same ids seen from another project: the instance is not there (404).
    let body = json!({"backup": {"name": "x", "instance": a, "parent_id": full_a["id"]}});
    let (status, body) = post_in_other_project(&app, "/backups", &body).await;
    assert_fault(status, &body, 404, "itemNotFound");

    // An instance of the other project naming our backup as parent: 422.
    let dir = app.volumes().join("c");
    std::fs::create_dir_all(&dir).unwrap();
    let register = json!({"instance": {"name": "c", "datastore": {"type": "volume"}, "volume": {"path": dir}}});
    let (_, c) = post_in_other_project(&app, "/instances", &register).await;
    let body = json!({"backup": {"name": "x", "instance": c["instance"]["id"], "parent_id": full_a["id"]}});
    let (status, body) = post_in_other_project(&app, "/backups", &body).await;
    assert_fault(status, &body, 422, "unprocessableEntity");

    assert_eq!(app.count("SELECT count(*) AS n FROM backups").await, before, "nothing was recorded");
}

#[tokio::test]
async fn rule1_failed_parent_is_refused() {
    let app = spawn_app(1).await;
    let a = instance_with_data(&app, "a").await;
    // The volume disappears: the backup fails with a reason.
    std::fs::remove_dir_all(app.volumes().join("a")).unwrap();
    let b = app.backup(&a, "doomed", None).await;
    let failed = app.wait_backup(b["id"].as_str().unwrap(), &["COMPLETED", "FAILED"]).await;
    assert_eq!(failed["status"], "FAILED");
    assert!(failed["fail_reason"].as_str().is_some_and(|r| r.contains("volume")), "{failed}");

    let (status, body) = post_backup(&app, json!({"name": "child", "instance": a, "parent_id": b["id"]})).await;
    assert_fault(status, &body, 422, "unprocessableEntity");
    assert!(body["unprocessableEntity"]["message"].as_str().unwrap().contains("FAILED"), "{body}");
}

#[tokio::test]
async fn rule1_child_waits_for_its_parent_and_fails_when_it_fails() {
    let mut app = spawn_app(0).await;
    let a = instance_with_data(&app, "a").await;
    let parent = app.backup(&a, "parent", None).await;
    let child = app.backup(&a, "child", parent["id"].as_str()).await;
    let grandchild = app.backup(&a, "grandchild", child["id"].as_str()).await;
    // The parent will fail: its volume is gone when a worker gets to it.
    std::fs::remove_dir_all(app.volumes().join("a")).unwrap();
    app.start_worker().await;

    let p = app.wait_backup(parent["id"].as_str().unwrap(), &["COMPLETED", "FAILED"]).await;
    assert_eq!(p["status"], "FAILED");
    let c = app.wait_backup(child["id"].as_str().unwrap(), &["COMPLETED", "FAILED"]).await;
    assert_eq!(c["status"], "FAILED");
    let reason = c["fail_reason"].as_str().unwrap();
    assert!(reason.contains(parent["id"].as_str().unwrap()) && reason.contains("FAILED"), "{reason}");
    let g = app.wait_backup(grandchild["id"].as_str().unwrap(), &["COMPLETED", "FAILED"]).await;
    assert_eq!(g["status"], "FAILED");
    assert!(g["fail_reason"].as_str().unwrap().contains(child["id"].as_str().unwrap()), "{g}");
}

#[tokio::test]
async fn rule2_incremental_takes_the_newest_completed_backup() {
    let app = spawn_app(1).await;
    let a = instance_with_data(&app, "a").await;

    // No completed backup yet: incremental gives a full backup.
    let (status, body) = post_backup(&app, json!({"name": "first", "instance": a, "incremental": 1})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["backup"]["parent_id"].is_null(), "{body}");
    let first = app.wait_backup(body["backup"]["id"].as_str().unwrap(), &["COMPLETED"]).await;
    let second = app.backup_completed(&a, "second", None).await;
    assert_ne!(first["id"], second["id"]);

    let (status, body) = post_backup(&app, json!({"name": "nightly", "instance": a, "incremental": 1})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["backup"]["parent_id"], second["id"], "newest COMPLETED is the parent");
    // "incremental": 0 is a full backup.
    let (status, body) = post_backup(&app, json!({"name": "full", "instance": a, "incremental": 0})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(body["backup"]["parent_id"].is_null());
}

/// Rule 3 at the state machine: with one backup BUILDING, claiming a second
/// of the same instance waits; another instance's is not held up.
#[tokio::test]
async fn rule3_one_building_backup_per_instance() {
    let app = spawn_app(0).await;
    let a = instance_with_data(&app, "a").await;
    let b = instance_with_data(&app, "b").await;
    let a1 = app.backup(&a, "a1", None).await;
    let a2 = app.backup(&a, "a2", None).await;
    let b1 = app.backup(&b, "b1", None).await;
    let id = |v: &serde_json::Value| v["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    let lease = Duration::from_secs(30);

    let first = lifecycle::claim_backup(&app.db, id(&a1), "w1", lease).await.unwrap();
    assert!(matches!(first, BackupClaim::Claimed(_)), "{first:?}");
    let second = lifecycle::claim_backup(&app.db, id(&a2), "w2", lease).await.unwrap();
    assert!(matches!(second, BackupClaim::Waiting(_)), "{second:?}");
    let other = lifecycle::claim_backup(&app.db, id(&b1), "w2", lease).await.unwrap();
    assert!(matches!(other, BackupClaim::Claimed(_)), "{other:?}");
    // The same message delivered twice: the second claim does nothing.
    let again = lifecycle::claim_backup(&app.db, id(&a1), "w2", lease).await.unwrap();
    assert!(matches!(again, BackupClaim::NotRunnable), "{again:?}");
}

/// Rule 3 in the running service: many backups of one instance at once on
/// two workers; at no sampled moment are two of them running.
#[tokio::test]
async fn rule3_holds_under_concurrent_workers() {
    let mut app = spawn_app(0).await;
    let a = instance_with_data(&app, "a").await;
    std::fs::write(app.volumes().join("a/big"), vec![7u8; 4 << 20]).unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.backup(&a, &format!("b{i}"), None).await["id"].as_str().unwrap().to_owned());
    }
    app.start_worker().await;
    app.start_worker().await;
    let (mut max_running, mut seen_running) = (0, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let running = app.count("SELECT count(*) AS n FROM backups WHERE status IN ('BUILDING', 'SAVING')").await;
        max_running = max_running.max(running);
        seen_running |= running > 0;
        let done = app.count("SELECT count(*) AS n FROM backups WHERE status = 'COMPLETED'").await;
        if done == 6 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backups did not complete");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(seen_running, "the sampler never saw a backup running");
    assert_eq!(max_running, 1, "two backups of one instance ran at once");
}

#[tokio::test]
async fn rule4_restore_needs_a_completed_backup() {
    let app = spawn_app(0).await;
    let a = instance_with_data(&app, "a").await;
    let b = app.backup(&a, "still-new", None).await;
    let before = app.count("SELECT count(*) AS n FROM instances").await;
    let (status, body) =
        app.post("/instances", &json!({"instance": {"name": "g2", "restorePoint": {"backupRef": b["id"]}}})).await;
    assert_fault(status, &body, 409, "conflict");
    assert_eq!(app.count("SELECT count(*) AS n FROM instances").await, before);
}

#[tokio::test]
async fn rule4_restore_names_a_corrupted_link() {
    let app = spawn_app(1).await;
    let a = instance_with_data(&app, "a").await;
    let full = app.backup_completed(&a, "full", None).await;
    std::fs::write(app.volumes().join("a/d/more"), b"more").unwrap();
    let inc = app.backup_completed(&a, "inc", full["id"].as_str()).await;
    // Flip one byte of the root's manifest.
    let manifest = full["locationRef"].as_str().unwrap().trim_start_matches("file://").to_owned();
    let mut bytes = std::fs::read(&manifest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&manifest, bytes).unwrap();
    let inst = app.restore("g2", inc["id"].as_str().unwrap()).await;
    assert_eq!(inst["status"], "ERROR", "{inst}");
    let reason = inst["fail_reason"].as_str().unwrap();
    assert!(reason.contains("link 1") && reason.contains(full["id"].as_str().unwrap()), "{reason}");
}

#[tokio::test]
async fn rule5_delete_cascades_to_descendants_and_their_objects() {
    let app = spawn_app(1).await;
    let a = instance_with_data(&app, "a").await;
    let full = app.backup_completed(&a, "full", None).await;
    let c1 = app.backup_completed(&a, "c1", full["id"].as_str()).await;
    let c2 = app.backup_completed(&a, "c2", c1["id"].as_str()).await;
    for b in [&full, &c1, &c2] {
        assert_eq!(app.stored_attempts(b["id"].as_str().unwrap()).len(), 1);
    }
    let (status, _) = app.delete(&format!("/backups/{}", c1["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for gone in [&c1, &c2] {
        let id = gone["id"].as_str().unwrap();
        app.wait_backup_deleted(id).await;
        let left = app.stored_attempts(id);
        assert!(left.is_empty(), "objects of {id} remain: {left:?}");
    }
    let (status, body) = app.get(&format!("/backups/{}", full["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["backup"]["status"], "COMPLETED");
    assert_eq!(app.stored_attempts(full["id"].as_str().unwrap()).len(), 1);
}

#[tokio::test]
async fn rule5_delete_is_refused_while_a_descendant_runs_or_a_restore_reads() {
    let app = spawn_app(0).await;
    let a = instance_with_data(&app, "a").await;
    let full = app.backup(&a, "full", None).await;
    let child = app.backup(&a, "child", full["id"].as_str()).await;
    let full_id: Uuid = full["id"].as_str().unwrap().parse().unwrap();
    // A worker is running the full backup.
    let claim = lifecycle::claim_backup(&app.db, full_id, "w1", Duration::from_secs(30)).await.unwrap();
    assert!(matches!(claim, BackupClaim::Claimed(_)));
    let (status, body) = app.delete(&format!("/backups/{full_id}")).await;
    assert_fault(status, &body, 422, "unprocessableEntity");
    assert!(body["unprocessableEntity"]["message"].as_str().unwrap().contains("BUILDING"), "{body}");
    // Nothing changed.
    let (_, c) = app.get(&format!("/backups/{}", child["id"].as_str().unwrap())).await;
    assert_eq!(c["backup"]["status"], "NEW");
}

#[tokio::test]
async fn rule5_delete_is_refused_while_a_restore_reads_the_chain() {
    let mut app = spawn_app(1).await;
    let a = instance_with_data(&app, "a").await;
    let full = app.backup_completed(&a, "full", None).await;
    let inc = app.backup_completed(&a, "inc", full["id"].as_str()).await;
    // Stop the workers so the restore stays BUILD.
    app.stop_workers().await;
    let (status, inst) =
        app.post("/instances", &json!({"instance": {"name": "g2", "restorePoint": {"backupRef": inc["id"]}}})).await;
    assert_eq!(status, StatusCode::OK, "{inst}");
    let (status, body) = app.delete(&format!("/backups/{}", full["id"].as_str().unwrap())).await;
    assert_fault(status, &body, 422, "unprocessableEntity");
    assert!(body["unprocessableEntity"]["message"].as_str().unwrap().contains("restored"), "{body}");
    let (_, f) = app.get(&format!("/backups/{}", full["id"].as_str().unwrap())).await;
    assert_eq!(f["backup"]["status"], "COMPLETED");
}
