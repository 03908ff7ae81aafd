//! Submissions recorded in batches (group commit, `cairn_api::submit`):
//! requests that arrive together share one transaction, yet each is
//! answered for itself, a refused one records nothing, the quota stays
//! exact, and every accepted one is committed before it is answered.

use cairn_api::{
    error::ApiError,
    quota::Quotas,
    submit::{NewBackup, Submitter},
};
use cairn_shared::outbox::Nudge;
use serde_json::json;
use uuid::Uuid;

use cairn_testkit::{AppOptions, spawn_app_with};

fn new_backup(project: &str, instance: Uuid, name: &str) -> NewBackup {
    NewBackup {
        project: project.to_owned(),
        instance_id: instance,
        parent_id: None,
        incremental: false,
        name: name.to_owned(),
        description: None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_answers_each_request_for_itself_and_commits_once() {
    let app = spawn_app_with(0, AppOptions::default()).await;
    let a: Uuid = app.register("a", &app.volumes().join("a")).await.parse().unwrap();
    let b: Uuid = app.register("b", &app.volumes().join("b")).await.parse().unwrap();
    // A backup of b, to be named as the parent of a backup of a (refused).
    let of_b: Uuid = app.backup(&b.to_string(), "of-b", None).await["id"].as_str().unwrap().parse().unwrap();
    let before = app.count("SELECT count(*) AS n FROM backups").await;
    assert_eq!(before, 1);

    // The test's own batcher on the service's database, quota 4 backups:
    // 1 is held, so 3 of the 6 good requests fit.
    let submitter = Submitter::start(app.db.clone(), Quotas { backups: Some(4), bytes: None }, Nudge::default());
    let mut reqs = Vec::new();
    for i in 0..6 {
        reqs.push(("good", new_backup(&app.project, a, &format!("good-{i}"))));
    }
    reqs.push(("unknown instance", new_backup(&app.project, Uuid::now_v7(), "unknown")));
    reqs.push(("foreign project", new_backup("someone-else", a, "foreign")));
    let mut wrong_parent = new_backup(&app.project, a, "wrong-parent");
    wrong_parent.parent_id = Some(of_b);
    reqs.push(("wrong parent", wrong_parent));
    // On a current-thread runtime every request is queued before the
    // batcher runs, so they all land in one batch.
    let answers = futures::future::join_all(reqs.iter().map(|(_, r)| submitter.submit(r.clone()))).await;

    let mut accepted = Vec::new();
    let mut over_quota = 0;
    for ((kind, req), answer) in reqs.iter().zip(answers) {
        match (*kind, answer) {
            ("good", Ok(row)) => {
                assert_eq!(row.name, req.name);
                assert_eq!(row.status, "NEW");
                accepted.push(row.id);
            }
            ("good", Err(ApiError::OverLimit(message))) => {
                assert!(message.contains("4 of 4"), "{message}");
                over_quota += 1;
            }
            ("unknown instance" | "foreign project", Err(ApiError::NotFound(_))) => {}
            ("wrong parent", Err(ApiError::Unprocessable(message))) => {
                assert!(message.contains(&of_b.to_string()), "{message}");
            }
            (kind, other) => panic!("{kind}: unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted.len(), over_quota), (3, 3), "exactly the quota got through");

    // Every accepted backup is stored, with its outbox entry, and nothing
    // else; all of them by the same transaction.
    assert_eq!(app.count("SELECT count(*) AS n FROM backups").await, before + 3);
    let listed = accepted.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
    assert_eq!(
        app.count(&format!("SELECT count(*) AS n FROM backups WHERE id IN ({listed}) AND status = 'NEW'")).await,
        3
    );
    assert_eq!(
        app.count(&format!("SELECT count(DISTINCT xmin::text) AS n FROM backups WHERE id IN ({listed})")).await,
        1,
        "the batch's backups were committed by one transaction"
    );
    // The service's relay may have published (and deleted) them already;
    // the sequence says how many entries were ever written.
    assert_eq!(app.count("SELECT last_value AS n FROM outbox_id_seq").await, 4, "one outbox entry per backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_over_http_are_all_recorded_and_run() {
    let app = spawn_app_with(2, AppOptions::default().quota_backups(1000)).await;
    let mut instances = Vec::new();
    for i in 0..8 {
        instances.push(app.register(&format!("v{i}"), &app.volumes().join(format!("v{i}"))).await);
    }
    let posts = (0..64).map(|i| {
        let (client, url) = (app.client.clone(), app.url("/backups"));
        let body = json!({"backup": {"name": format!("c{i}"), "instance": instances[i % instances.len()]}});
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
            let body: serde_json::Value = resp.json().await.unwrap();
            body["backup"]["id"].as_str().unwrap().to_owned()
        }
    });
    let ids = futures::future::join_all(posts).await;
    for id in &ids {
        let done = app.wait_backup(id, &["COMPLETED", "FAILED"]).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM backups").await, 64);
}

/// A submission's outbox entry is handed to the relay of the process that
/// committed it. If that process dies before publishing it (here: a
/// submitter whose nudge no relay listens to), the other relays leave the
/// entry alone while it is handed over, then publish it like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_entry_whose_relay_died_is_published_once_its_hand_off_runs_out() {
    let app = spawn_app_with(1, AppOptions::default()).await;
    let inst: Uuid = app.register("h", &app.volumes().join("h")).await.parse().unwrap();
    let orphaned = Submitter::start(app.db.clone(), Quotas::default(), Nudge::default());
    let row = orphaned.submit(new_backup(&app.project, inst, "orphaned")).await.unwrap();
    let id = row.id.to_string();

    // Written handed over for cairn_shared::outbox::HANDOFF (10 s).
    let handed_for = format!(
        "SELECT count(*) AS n FROM outbox WHERE target_id = '{id}' AND handed_until > now() + interval '9 seconds'"
    );
    assert_eq!(app.count(&handed_for).await, 1, "the entry is handed over for 10 s");
    // Shorten the hand-off, then let the API's and the worker's relays
    // poll (every 250 ms) several times while it lasts: they skip it.
    app.count(&format!(
        "WITH u AS (UPDATE outbox SET handed_until = now() + interval '1500 milliseconds' WHERE target_id = '{id}' RETURNING 1) SELECT count(*) AS n FROM u"
    ))
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM outbox WHERE target_id = '{id}'")).await, 1);
    let (_, shown) = app.get(&format!("/backups/{id}")).await;
    assert_eq!(shown["backup"]["status"], "NEW", "not published while handed over: {shown}");

    // Once the hand-off has run out, a poll publishes it.
    let done = app.wait_backup(&id, &["COMPLETED", "FAILED"]).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(app.count("SELECT count(*) AS n FROM outbox").await, 0, "the entry was deleted once published");
}

/// A relay that stops gives the entries handed to it and not yet published
/// back to the other relays at once (here: the hand-over of a submitter
/// whose relay never ran), rather than leaving them for the 10 s hand-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_handed_to_a_stopping_relay_are_released_to_the_others_at_once() {
    let app = spawn_app_with(1, AppOptions::default()).await;
    let inst: Uuid = app.register("r", &app.volumes().join("r")).await.parse().unwrap();
    let nudge = Nudge::default();
    let stopping = Submitter::start(app.db.clone(), Quotas::default(), nudge.clone());
    let id = stopping.submit(new_backup(&app.project, inst, "released")).await.unwrap().id.to_string();
    let handed = format!("SELECT count(*) AS n FROM outbox WHERE target_id = '{id}' AND handed_until IS NOT NULL");
    assert_eq!(app.count(&handed).await, 1, "handed over to the stopping relay");

    let released = std::time::Instant::now();
    cairn_shared::outbox::release_unpublished(&app.db, &nudge).await;
    assert_eq!(app.count(&handed).await, 0, "no longer handed over");
    let done = app.wait_backup(&id, &["COMPLETED", "FAILED"]).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let took = released.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "published {took:?} after the release, not at once");
}

/// A submission through the service is published from the relay's memory
/// and its entry deleted afterwards: the outbox drains and the backup runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_is_published_by_its_own_relay_and_its_entry_deleted() {
    let app = spawn_app_with(1, AppOptions::default()).await;
    let inst = app.register("d", &app.volumes().join("d")).await;
    let id = app.backup(&inst, "direct", None).await["id"].as_str().unwrap().to_owned();
    let done = app.wait_backup(&id, &["COMPLETED", "FAILED"]).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // Other relays would have waited out the 10 s hand-off: completed
    // before it ran out, it was published by the relay it was handed to.
    let ms = app
        .count(&format!(
            "SELECT (extract(epoch FROM updated - created) * 1000)::bigint AS n FROM backups WHERE id = '{id}'"
        ))
        .await;
    assert!(ms < 9_500, "completed {ms} ms after it was created");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while app.count("SELECT count(*) AS n FROM outbox").await > 0 {
        assert!(std::time::Instant::now() < deadline, "the handed entry was not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
