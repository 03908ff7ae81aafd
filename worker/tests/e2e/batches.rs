//! Claims and completions of several backups in one statement (a worker
//! batches its jobs' claims and completions): the rules hold as they do
//! for one backup at a time.

use std::time::Duration;

use cairn_shared::lifecycle::{self, BackupClaim, CompletedArtifact};
use uuid::Uuid;

use cairn_testkit::{TestApp, spawn_app};

const LEASE: Duration = Duration::from_secs(30);

async fn status(app: &TestApp, id: Uuid) -> String {
    use sea_orm::EntityTrait;
    cairn_shared::entities::backup::Entity::find_by_id(id).one(&app.db).await.unwrap().unwrap().status
}

fn artifact(prefix: &str) -> CompletedArtifact {
    CompletedArtifact {
        checksum: format!("checksum of {prefix}"),
        bytes: 79,
        location_ref: format!("file:///store/{prefix}/manifest"),
        artifact_prefix: prefix.to_owned(),
        pack_objects: 0,
    }
}

#[tokio::test]
async fn a_batched_claim_keeps_rule3_and_claims_a_backup_once() {
    let app = spawn_app(0).await;
    let a = app.register("a", &app.volumes().join("a")).await;
    let b = app.register("b", &app.volumes().join("b")).await;
    let id = |v: serde_json::Value| v["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    let a1 = id(app.backup(&a, "a1", None).await);
    let a2 = id(app.backup(&a, "a2", None).await);
    let b1 = id(app.backup(&b, "b1", None).await);

    // Two backups of one instance: the statement would break rule 3, so it
    // fails as a whole and claims nothing.
    let refused = lifecycle::claim_backups(&app.db, &[a1, a2, b1], "w1", LEASE).await;
    assert!(refused.as_ref().is_err_and(lifecycle::is_unique_violation), "{refused:?}");
    for backup in [a1, a2, b1] {
        assert_eq!(status(&app, backup).await, "NEW");
    }

    // A backup listed twice (a duplicated message) is claimed once.
    let claimed = lifecycle::claim_backups(&app.db, &[a1, b1, a1], "w1", LEASE).await.unwrap();
    let mut ids: Vec<Uuid> = claimed.iter().map(|c| c.row.id).collect();
    ids.sort();
    let mut expected = vec![a1, b1];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(claimed.iter().all(|c| c.row.status == "BUILDING" && c.row.attempts == 1 && c.instance.is_some()));
    // What is not claimable is explained as for a lone claim.
    let again = lifecycle::explain_unclaimed(&app.db, a1).await.unwrap();
    assert!(matches!(again, BackupClaim::NotRunnable), "{again:?}");
    let second = lifecycle::claim_backups(&app.db, &[a2], "w2", LEASE).await;
    assert!(second.as_ref().is_err_and(lifecycle::is_unique_violation), "a2 runs while a1 does: {second:?}");
}

#[tokio::test]
async fn a_batched_completion_completes_once_with_the_owner_s_recorded_attempt() {
    let app = spawn_app(0).await;
    let a = app.register("a", &app.volumes().join("a")).await;
    let b = app.register("b", &app.volumes().join("b")).await;
    let id = |v: serde_json::Value| v["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    let a1 = id(app.backup(&a, "a1", None).await);
    // Waits for a1 (rule 3); completing a1 queues it again.
    let _a2 = app.backup(&a, "a2", None).await;
    let b1 = id(app.backup(&b, "b1", None).await);
    assert_eq!(lifecycle::claim_backups(&app.db, &[a1, b1], "w1", LEASE).await.unwrap().len(), 2);
    let outbox_before = app.count("SELECT last_value AS n FROM outbox_id_seq").await;

    // Another worker cannot complete w1's backups.
    let (by_other, _) = lifecycle::complete_backups(&app.db, "w2", &[(a1, artifact("a1/1"))]).await.unwrap();
    assert_eq!(by_other, vec![false]);
    assert_eq!(status(&app, a1).await, "BUILDING");

    // Two attempts of a1 in one batch: the row records one of them, and
    // only that one is told it completed the backup.
    let items = [(a1, artifact("a1/1")), (a1, artifact("a1/2")), (b1, artifact("b1/1"))];
    let (completed, woken) = lifecycle::complete_backups(&app.db, "w1", &items).await.unwrap();
    let row = {
        use sea_orm::EntityTrait;
        cairn_shared::entities::backup::Entity::find_by_id(a1).one(&app.db).await.unwrap().unwrap()
    };
    assert_eq!(row.status, "COMPLETED");
    let recorded = row.artifact_prefix.unwrap();
    assert_eq!(completed[0], recorded == "a1/1", "{completed:?}, recorded {recorded}");
    assert_eq!(completed[1], recorded == "a1/2", "{completed:?}, recorded {recorded}");
    assert!(completed[2], "{completed:?}");
    assert_eq!(status(&app, b1).await, "COMPLETED");
    // a2 waited for a1 (rule 3): it is queued again, in the same statement
    // (the sequence counts entries the relay may have sent on already).
    assert_eq!(woken, 1);
    assert_eq!(app.count("SELECT last_value AS n FROM outbox_id_seq").await, outbox_before + 1);

    // Completing again changes nothing: a status never moves, and a
    // backup is completed once.
    let (twice, woken) = lifecycle::complete_backups(&app.db, "w1", &items).await.unwrap();
    assert_eq!((twice, woken), (vec![false, false, false], 0));
}
