//! The artifact store's layout changed from `backups/<id>/<attempt>/` to
//! `backups/<id>.<attempt>/`. Every read goes through the prefix a backup's
//! row records, so backups stored in the old layout are restored, verified,
//! built upon and deleted as before.

use std::{path::PathBuf, time::Duration};

use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::json;

use cairn_testkit::{TestApp, assert_same_tree, snapshot, spawn_app};

/// Moves backup `id`'s completed first attempt to where the old layout put
/// it, and records that prefix, as a row written before the change has it.
async fn move_to_old_layout(app: &TestApp, id: &str) {
    let store = app.config.data_dir.join("artifacts");
    let (new, old) = (format!("backups/{id}.1"), format!("backups/{id}/1"));
    std::fs::create_dir(store.join(format!("backups/{id}"))).unwrap();
    std::fs::rename(store.join(&new), store.join(&old)).unwrap();
    let sql = format!(
        "UPDATE backups SET artifact_prefix = '{old}', location_ref = replace(location_ref, '{new}/', '{old}/') \
          WHERE id = '{id}' AND artifact_prefix = '{new}'"
    );
    assert_eq!(app.db.execute_unprepared(&sql).await.unwrap().rows_affected(), 1);
}

#[tokio::test]
async fn backups_stored_in_the_old_layout_are_restored_verified_extended_and_deleted() {
    let app = spawn_app(1).await;
    let dir = app.volumes().join("g");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/a.txt"), b"alpha ".repeat(10_000)).unwrap();
    std::fs::write(dir.join("b.bin"), (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let inst = app.register("g", &dir).await;
    let full = app.backup_completed(&inst, "full", None).await;
    let full_id = full["id"].as_str().unwrap().to_owned();
    std::fs::write(dir.join("sub/a.txt"), b"beta ".repeat(10_000)).unwrap();
    let c1 = app.backup_completed(&inst, "c1", Some(&full_id)).await;
    let c1_id = c1["id"].as_str().unwrap().to_owned();
    assert!(c1["locationRef"].as_str().unwrap().ends_with(&format!("backups/{c1_id}.1/manifest")), "{c1}");
    move_to_old_layout(&app, &full_id).await;
    move_to_old_layout(&app, &c1_id).await;
    assert_eq!(app.stored_attempts(&full_id), vec![app.config.data_dir.join(format!("artifacts/backups/{full_id}"))]);

    // Read through the recorded (old) prefixes: verify, and a restore of
    // the chain.
    for id in [&full_id, &c1_id] {
        let (status, _) = app.post(&format!("/backups/{id}/action"), &json!({"verify": {}})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let checked = app.wait_verify(id).await;
        assert_eq!(checked["status"], "OK", "{id}: {checked}");
    }
    let at_c1 = snapshot(&dir);
    let restored = app.restore("r1", &c1_id).await;
    assert_eq!(restored["status"], "ACTIVE", "{restored}");
    assert_same_tree(&at_c1, &PathBuf::from(restored["volume"]["path"].as_str().unwrap()));

    // An incremental on an old-layout parent is stored in the new layout;
    // the mixed chain restores.
    std::fs::write(dir.join("c.txt"), b"gamma").unwrap();
    let c2 = app.backup_completed(&inst, "c2", Some(&c1_id)).await;
    let c2_id = c2["id"].as_str().unwrap().to_owned();
    assert_eq!(app.stored_attempts(&c2_id), vec![app.config.data_dir.join(format!("artifacts/backups/{c2_id}.1"))]);
    let at_c2 = snapshot(&dir);
    let restored = app.restore("r2", &c2_id).await;
    assert_eq!(restored["status"], "ACTIVE", "{restored}");
    assert_same_tree(&at_c2, &PathBuf::from(restored["volume"]["path"].as_str().unwrap()));

    // Deleting the root removes the whole chain's objects, in both layouts.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app.delete(&format!("/backups/{full_id}")).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        // A restore reading the chain may still hold it (rule 5).
        assert!(std::time::Instant::now() < deadline, "delete refused: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in [&full_id, &c1_id, &c2_id] {
        app.wait_backup_deleted(id).await;
        let left = app.stored_attempts(id);
        assert!(left.is_empty(), "objects of {id} remain: {left:?}");
    }
}
