//! Quotas: backups per project and bytes per project. Over quota is 413
//! `overLimit` and records nothing; racing submissions at the limit let
//! exactly the quota through.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use cairn_testkit::{AppOptions, TestApp, assert_fault, client_with_token, spawn_app_with};

/// Backup rows, and how many outbox entries were ever written: the relay
/// deletes entries once published, but never gives back a sequence number
/// (not even a rolled-back insert's). Nothing else enqueues meanwhile here:
/// no backup is waiting or lost.
async fn recorded(app: &TestApp) -> (i64, i64) {
    (app.count("SELECT count(*) AS n FROM backups").await, app.count("SELECT last_value AS n FROM outbox_id_seq").await)
}

async fn post_backup(app: &TestApp, instance: &str, name: &str) -> (StatusCode, serde_json::Value) {
    app.post("/backups", &json!({"backup": {"name": name, "instance": instance}})).await
}

#[tokio::test]
async fn the_backup_quota_refuses_the_next_backup_and_records_nothing() {
    let app = spawn_app_with(0, AppOptions::default().quota_backups(2)).await;
    let a = app.register("a", &app.volumes().join("a")).await;
    for name in ["one", "two"] {
        let (status, reply) = post_backup(&app, &a, name).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    }
    let before = recorded(&app).await;
    let (status, reply) = post_backup(&app, &a, "three").await;
    assert_fault(status, &reply, 413, "overLimit");
    let message = reply["overLimit"]["message"].as_str().unwrap();
    assert!(message.contains("backups") && message.contains("2 of 2"), "{message}");
    assert_eq!(recorded(&app).await, before, "a refused backup recorded something");

    // Another project has a quota of its own.
    let other = format!("{}-x", app.project);
    let client = client_with_token(&app.token_for(&other, false).await);
    let dir = app.volumes().join("x");
    std::fs::create_dir_all(&dir).unwrap();
    let resp = client
        .post(app.url_for(&other, "/instances"))
        .json(&json!({"instance": {"name": "x", "datastore": {"type": "volume"}, "volume": {"path": dir}}}))
        .send()
        .await
        .unwrap();
    let x: serde_json::Value = resp.json().await.unwrap();
    let resp = client
        .post(app.url_for(&other, "/backups"))
        .json(&json!({"backup": {"name": "x1", "instance": x["instance"]["id"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_deleted_backup_frees_its_place() {
    let app = spawn_app_with(1, AppOptions::default().quota_backups(1)).await;
    let a = app.register("a", &app.volumes().join("a")).await;
    let full = app.backup_completed(&a, "full", None).await;
    let (status, reply) = post_backup(&app, &a, "second").await;
    assert_fault(status, &reply, 413, "overLimit");
    let (status, _) = app.delete(&format!("/backups/{}", full["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, reply) = post_backup(&app, &a, "second").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
}

#[tokio::test]
async fn the_byte_quota_refuses_backups_once_the_stored_bytes_reach_it() {
    let app = spawn_app_with(1, AppOptions::default().quota_bytes(1000)).await;
    let dir = app.volumes().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    // Random bytes do not compress: the backup stores more than 1000 bytes.
    let data: Vec<u8> = (0..64 * 1024).map(|_| rand::random::<u8>()).collect();
    std::fs::write(dir.join("data"), data).unwrap();
    let a = app.register("a", &dir).await;
    let full = app.backup_completed(&a, "full", None).await;
    assert!(full["bytes"].as_i64().unwrap() > 1000, "{full}");
    let before = recorded(&app).await;
    let (status, reply) = post_backup(&app, &a, "more").await;
    assert_fault(status, &reply, 413, "overLimit");
    assert!(reply["overLimit"]["message"].as_str().unwrap().contains("bytes"), "{reply}");
    assert_eq!(recorded(&app).await, before, "a refused backup recorded something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_submissions_at_the_limit_let_exactly_the_quota_through() {
    const QUOTA: u64 = 3;
    const RACERS: usize = 16;
    let app = spawn_app_with(0, AppOptions::default().quota_backups(QUOTA)).await;
    let instances =
        [app.register("a", &app.volumes().join("a")).await, app.register("b", &app.volumes().join("b")).await];
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut racers = Vec::new();
    for i in 0..RACERS {
        let (client, url, barrier) = (app.client.clone(), app.url("/backups"), barrier.clone());
        let body = json!({"backup": {"name": format!("racer-{i}"), "instance": instances[i % 2]}});
        racers.push(tokio::spawn(async move {
            barrier.wait().await;
            client.post(url).json(&body).timeout(Duration::from_secs(30)).send().await.unwrap().status()
        }));
    }
    let mut accepted = 0;
    for racer in racers {
        match racer.await.unwrap() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::PAYLOAD_TOO_LARGE => {}
            other => panic!("a racer got {other}"),
        }
    }
    assert_eq!(accepted, QUOTA, "accepted submissions");
    assert_eq!(recorded(&app).await, (QUOTA as i64, QUOTA as i64), "recorded backups and outbox entries");
}
