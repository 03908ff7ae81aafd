//! Bad input gets Trove's fault shape and changes nothing.

use reqwest::StatusCode;
use serde_json::json;

use cairn_testkit::{TestApp, assert_fault, spawn_app};

/// Backups and instances recorded. Every job is one of these rows, so equal
/// counts mean nothing was accepted. (The outbox is not counted: the relay
/// drains it concurrently.)
async fn rows(app: &TestApp) -> (i64, i64) {
    (app.count("SELECT count(*) AS n FROM backups").await, app.count("SELECT count(*) AS n FROM instances").await)
}

#[tokio::test]
async fn malformed_backup_requests_are_bad_requests_and_change_nothing() {
    let app = spawn_app(0).await;
    let dir = app.volumes().join("a");
    let a = app.register("a", &dir).await;
    let before = rows(&app).await;
    let cases = [
        "{not json".to_owned(),
        "".to_owned(),
        json!({"backup": {"instance": a}}).to_string(), // no name
        json!({"backup": {"name": "", "instance": a}}).to_string(),
        json!({"backup": {"name": 5, "instance": a}}).to_string(),
        json!({"backup": {"name": "x", "instance": 17}}).to_string(),
        json!({"backup": {"name": "x", "instance": a, "incremental": "yes"}}).to_string(),
        json!({"backup": {"name": "x", "instance": a, "incremental": 7}}).to_string(),
        json!({"backup": {"name": "x".repeat(300), "instance": a}}).to_string(),
        json!({"name": "x", "instance": a}).to_string(), // not wrapped in "backup"
    ];
    for body in cases {
        let (status, reply) = app.post_raw("/backups", body.clone()).await;
        assert_fault(status, &reply, 400, "badRequest");
        let _ = body;
    }
    // A wrong type names the field.
    let (_, reply) = app.post("/backups", &json!({"backup": {"name": 5, "instance": a}})).await;
    assert!(reply["badRequest"]["message"].as_str().unwrap().contains("backup.name"), "{reply}");
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn unknown_objects_are_not_found() {
    let app = spawn_app(0).await;
    let missing = uuid::Uuid::new_v4();
    let before = rows(&app).await;
    let (status, body) = app.post("/backups", &json!({"backup": {"name": "x", "instance": missing}})).await;
    assert_fault(status, &body, 404, "itemNotFound");
    let (status, body) = app.post("/backups", &json!({"backup": {"name": "x", "instance": "not-a-uuid"}})).await;
    assert_fault(status, &body, 404, "itemNotFound");
    for path in [
        format!("/backups/{missing}"),
        "/backups/backup1.1".to_owned(), // a name: the client then searches by name
        format!("/instances/{missing}"),
        format!("/instances/{missing}/backups"),
        "/flavors/99".to_owned(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_fault(status, &body, 404, "itemNotFound");
    }
    let (status, body) = app.delete(&format!("/backups/{missing}")).await;
    assert_fault(status, &body, 404, "itemNotFound");
    let (status, body) =
        app.post("/instances", &json!({"instance": {"name": "g", "restorePoint": {"backupRef": missing}}})).await;
    assert_fault(status, &body, 404, "itemNotFound");
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn volume_paths_outside_the_roots_or_in_use_are_refused() {
    let app = spawn_app(1).await;
    let outside = app.config.data_dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let inside = app.volumes().join("a");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::write(inside.join("f"), b"data").unwrap();
    std::os::unix::fs::symlink(&outside, app.volumes().join("sneaky")).unwrap();
    let before = rows(&app).await;
    let register = |path: serde_json::Value| json!({"instance": {"name": "x", "datastore": {"type": "volume"}, "volume": {"path": path}}});
    for path in [
        json!(outside),
        json!("relative/path"),
        json!(app.volumes().join("sneaky")),
        json!(format!("{}/a/../../outside", app.volumes().display())),
        json!(app.volumes().join("does-not-exist")),
        json!(app.volumes()),
    ] {
        let (status, body) = app.post("/instances", &register(path.clone())).await;
        assert_fault(status, &body, 422, "unprocessableEntity");
    }
    let (status, body) = app
        .post(
            "/instances",
            &json!({"instance": {"name": "x", "datastore": {"type": "oracle"}, "volume": {"path": inside}}}),
        )
        .await;
    assert_fault(status, &body, 422, "unprocessableEntity");
    let (status, body) =
        app.post("/instances", &json!({"instance": {"name": "x", "datastore": {"type": "volume"}}})).await;
    assert_fault(status, &body, 400, "badRequest");
    assert_eq!(rows(&app).await, before);

    let a = app.register("a", &inside).await;
    // The same directory cannot be registered twice.
    let (status, body) = app.post("/instances", &register(json!(inside))).await;
    assert_fault(status, &body, 422, "unprocessableEntity");

    let full = app.backup_completed(&a, "full", None).await;
    let before = rows(&app).await;
    let restore_to = |path: serde_json::Value| json!({"instance": {"name": "g", "volume": {"path": path}, "restorePoint": {"backupRef": full["id"]}}});
    for path in [
        json!(outside.join("new")),              // outside the roots
        json!(inside),                           // exists, not empty (and guest1's own data)
        json!(app.volumes().join("sneaky/new")), // through a link out of the roots
    ] {
        let (status, body) = app.post("/instances", &restore_to(path)).await;
        assert_fault(status, &body, 422, "unprocessableEntity");
    }
    assert_eq!(rows(&app).await, before);
    assert_eq!(std::fs::read(inside.join("f")).unwrap(), b"data", "the source was not touched");

    // A restore to an explicit, absent path inside the roots works; a second
    // restore to the same path is refused while the first owns it.
    let target = app.volumes().join("restored/here");
    let (status, body) = app.post("/instances", &restore_to(json!(target))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post("/instances", &restore_to(json!(target))).await;
    assert_fault(status, &body, 422, "unprocessableEntity");
}

#[tokio::test]
async fn an_instance_being_restored_cannot_be_backed_up() {
    let mut app = spawn_app(1).await;
    let dir = app.volumes().join("a");
    let a = app.register("a", &dir).await;
    let full = app.backup_completed(&a, "full", None).await;
    app.stop_workers().await;
    let (status, body) =
        app.post("/instances", &json!({"instance": {"name": "g", "restorePoint": {"backupRef": full["id"]}}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let building = body["instance"]["id"].as_str().unwrap().to_owned();
    let before = rows(&app).await;
    let (status, body) = app.post("/backups", &json!({"backup": {"name": "x", "instance": building}})).await;
    assert_fault(status, &body, 422, "unprocessableEntity");
    assert!(body["unprocessableEntity"]["message"].as_str().unwrap().contains("BUILD"), "{body}");
    // Nor deleted while it is being built.
    let (status, body) = app.delete(&format!("/instances/{building}")).await;
    assert_fault(status, &body, 422, "unprocessableEntity");
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn catalog_answers_what_the_trove_client_looks_up() {
    let app = spawn_app(0).await;
    let (status, body) = app.get("/datastores").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["datastores"][0]["name"], "volume");
    let (status, body) = app.get("/flavors/6").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["flavor"]["id"], "6");
    let (status, body) = app.get("/flavors").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["flavors"].as_array().unwrap().len() >= 2);
}
