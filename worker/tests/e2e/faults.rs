//! No accepted job lost, none run twice (DESIGN.md §4 rules 6-7), shown by
//! breaking things: workers killed with SIGKILL at random moments, RabbitMQ
//! stopped during a burst of submissions, PostgreSQL restarted under running
//! jobs, a flipped byte in a stored object, duplicate and unreadable
//! messages, transient storage errors, SIGTERM.
//!
//! The tests that stop servers use private ones (`PrivateRabbit`,
//! `PrivatePostgres`), so the rest of the suite keeps running in parallel.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::{Duration, Instant},
};

use cairn_shared::{
    queue::Topology,
    status::{JobKind, JobMessage},
};
use cairn_testkit::{
    AppOptions, PrivatePostgres, PrivateRabbit, TestApp, assert_same_tree, snapshot, spawn_app, spawn_app_with,
    trees::{mutate, seed},
};
use lapin::{BasicProperties, options::BasicPublishOptions};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

const WORKER: &str = env!("CARGO_BIN_EXE_cairn-worker");

/// Status order: a status may only move forward.
fn rank(status: &str) -> u8 {
    match status {
        "NEW" => 0,
        "BUILDING" => 1,
        "SAVING" => 2,
        "COMPLETED" | "FAILED" => 3,
        "BUILD" => 0,
        "ACTIVE" | "ERROR" => 3,
        other => panic!("unexpected status {other}"),
    }
}

/// Records every status every object is seen in, and fails on a step back.
#[derive(Default)]
struct StatusWatch {
    last: HashMap<String, String>,
}

impl StatusWatch {
    async fn sample(&mut self, app: &TestApp) {
        for (path, key) in [("/backups?limit=1000", "backups"), ("/instances", "instances")] {
            let Ok(resp) = app.client.get(app.url(path)).send().await else { return };
            let Ok(body) = resp.json::<Value>().await else { return };
            for item in body[key].as_array().into_iter().flatten() {
                let (id, status) =
                    (item["id"].as_str().unwrap().to_owned(), item["status"].as_str().unwrap().to_owned());
                if let Some(before) = self.last.get(&id) {
                    assert!(rank(&status) >= rank(before), "{key} {id} moved backwards: {before} -> {status}");
                }
                self.last.insert(id, status);
            }
        }
    }
}

/// A volume of `mib` MiB: the seeded tree plus incompressible data files.
fn big_volume(dir: &Path, mib: usize, seed_no: u64) {
    std::fs::create_dir_all(dir).unwrap();
    seed(dir, seed_no);
    let mut rng = StdRng::seed_from_u64(seed_no);
    for i in 0..mib / 16 {
        let mut data = vec![0u8; 16 << 20];
        rng.fill(&mut data[..]);
        std::fs::write(dir.join(format!("base/16384/big-{i}")), data).unwrap();
    }
}

/// Counts "<what> completed" log lines per id across the worker logs.
fn completions(app: &TestApp, what: &str, field: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(&app.config.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let line = strip_ansi(line);
            if line.contains(&format!("{what} completed"))
                && let Some(rest) = line.split(&format!("{field}=")).nth(1)
            {
                let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit() || *c == '-').collect();
                *counts.entry(id).or_default() += 1;
            }
        }
    }
    counts
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Keeps two worker processes running and kills one with SIGKILL every
/// 0.5-3 s, starting a fresh one in its place.
struct Killer {
    rng: StdRng,
    next_kill: Instant,
    started: usize,
    kills: usize,
}

impl Killer {
    fn new(app: &mut TestApp) -> Self {
        let mut killer = Self { rng: StdRng::seed_from_u64(7), next_kill: Instant::now(), started: 0, kills: 0 };
        killer.start(app);
        killer.start(app);
        killer.schedule();
        killer
    }

    fn start(&mut self, app: &mut TestApp) {
        self.started += 1;
        app.start_worker_process(Path::new(WORKER), &format!("w{}", self.started));
    }

    fn schedule(&mut self) {
        self.next_kill = Instant::now() + Duration::from_millis(self.rng.random_range(500..3000));
    }

    fn maybe_kill(&mut self, app: &mut TestApp) {
        if Instant::now() >= self.next_kill {
            app.kill_worker_process(self.rng.random_range(0..2));
            self.kills += 1;
            self.start(app);
            self.schedule();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_killed_at_random_moments_lose_nothing_and_run_nothing_twice() {
    let mut app = spawn_app_with(0, AppOptions::default().lease(Duration::from_secs(3))).await;
    let mut killer = Killer::new(&mut app);

    let mut instances = Vec::new();
    for i in 0..2u64 {
        let dir = app.volumes().join(format!("guest{i}"));
        big_volume(&dir, 160, i);
        instances.push((dir.clone(), app.register(&format!("guest{i}"), &dir).await));
    }

    // Kill -9 one of the workers every 0.5-3 s and start a new one, while
    // 20 backups (10 links on each of two instances) and 5 restores run.
    let mut watch = StatusWatch::default();
    let mut parents: Vec<Option<String>> = vec![None, None];
    let mut states: Vec<(String, BTreeMap<std::path::PathBuf, cairn_testkit::EntryState>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    for round in 0..10u64 {
        let mut pending = Vec::new();
        for (i, (dir, id)) in instances.iter().enumerate() {
            if round > 0 {
                mutate(dir, round);
            }
            let b = app.backup(id, &format!("r{round}"), parents[i].as_deref()).await;
            pending.push((i, b["id"].as_str().unwrap().to_owned(), snapshot(dir)));
        }
        for (i, id, state) in pending {
            loop {
                watch.sample(&app).await;
                let (_, body) = app.get(&format!("/backups/{id}")).await;
                let status = body["backup"]["status"].as_str().unwrap_or("").to_owned();
                if status == "COMPLETED" {
                    break;
                }
                assert_ne!(status, "FAILED", "{body}");
                assert!(Instant::now() < deadline, "backups did not finish under kill -9: {body}");
                killer.maybe_kill(&mut app);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            parents[i] = Some(id.clone());
            states.push((id, state));
        }
    }

    // Five restores, still killing workers: the last link of each chain and
    // three earlier ones.
    let picks = [states.len() - 1, states.len() - 2, 0, 7, 12];
    let mut restores = Vec::new();
    for (n, &k) in picks.iter().enumerate() {
        let (status, body) = app
            .post(
                "/instances",
                &json!({"instance": {"name": format!("copy{n}"), "restorePoint": {"backupRef": states[k].0}}}),
            )
            .await;
        assert_eq!(status.as_u16(), 200, "{body}");
        restores.push((body["instance"]["id"].as_str().unwrap().to_owned(), k));
    }
    for (id, k) in &restores {
        loop {
            watch.sample(&app).await;
            let (_, body) = app.get(&format!("/instances/{id}")).await;
            let status = body["instance"]["status"].as_str().unwrap_or("").to_owned();
            if status == "ACTIVE" {
                assert_same_tree(&states[*k].1, Path::new(body["instance"]["volume"]["path"].as_str().unwrap()));
                break;
            }
            assert_ne!(status, "ERROR", "{body}");
            assert!(Instant::now() < deadline, "restores did not finish under kill -9: {body}");
            killer.maybe_kill(&mut app);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let kills = killer.kills;
    assert!(kills >= 3, "the test killed only {kills} workers");

    // Every job ran to completion once: the database says so (the loops above
    // saw each one COMPLETED or ACTIVE), and no job ran to completion twice:
    // no id has two "completed" log lines. A worker killed between its commit
    // and its log line leaves none, so a missing line is not a lost job, and
    // only ids the test submitted may appear.
    let backups = completions(&app, "backup", "backup_id");
    assert!(backups.values().all(|n| *n == 1), "a backup completed twice: {backups:?}");
    assert!(backups.keys().all(|id| states.iter().any(|(s, _)| s == id)), "{backups:?}");
    assert!(backups.len() >= 15, "too few completion lines to judge: {backups:?}");
    let completed = app.count("SELECT count(*) AS n FROM backups WHERE status = 'COMPLETED'").await;
    assert_eq!(completed, 20);
    let restored = completions(&app, "restore", "instance_id");
    assert!(restored.values().all(|n| *n == 1), "a restore completed twice: {restored:?}");
    assert!(restored.keys().all(|id| restores.iter().any(|(r, _)| r == id)), "{restored:?}");
    // Abandoned attempts left no objects behind.
    for (id, _) in &states {
        let attempts = app.stored_attempts(id);
        let names: Vec<_> = attempts
            .iter()
            .map(|p| {
                format!(
                    "{} {:?}",
                    p.display(),
                    std::fs::read_dir(p).map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
                )
            })
            .collect();
        assert_eq!(attempts.len(), 1, "backup {id} keeps objects of {} attempts: {names:?}", attempts.len());
    }
    eprintln!("kill -9 test: {kills} workers killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_stopped_during_a_burst_of_submissions_loses_nothing() {
    let rabbit = PrivateRabbit::start().await;
    let app = spawn_app_with(1, AppOptions::default().rabbit(&rabbit)).await;
    let mut instances = Vec::new();
    for i in 0..4 {
        let dir = app.volumes().join(format!("g{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        seed(&dir, i);
        instances.push(app.register(&format!("g{i}"), &dir).await);
    }
    let mut ids = Vec::new();
    for n in 0..30 {
        if n == 10 {
            rabbit.stop_app().await;
        }
        if n == 25 {
            rabbit.start_app().await;
        }
        // Every submission is accepted, broker or not.
        let b = app.backup(&instances[n % 4], &format!("b{n}"), None).await;
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let done = app.wait_backup(id, &["COMPLETED", "FAILED"]).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.count("SELECT count(*) AS n FROM outbox").await > 0 {
        assert!(Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_running_jobs_they_complete() {
    let pg = PrivatePostgres::start().await;
    let app = spawn_app_with(2, AppOptions::default().postgres(&pg).lease(Duration::from_secs(4))).await;
    let mut ids = Vec::new();
    for i in 0..2u64 {
        let dir = app.volumes().join(format!("g{i}"));
        big_volume(&dir, 96, i);
        let inst = app.register(&format!("g{i}"), &dir).await;
        for n in 0..3 {
            ids.push(app.backup(&inst, &format!("b{n}"), None).await["id"].as_str().unwrap().to_owned());
        }
    }
    // Wait until something runs, then restart the database under it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.count("SELECT count(*) AS n FROM backups WHERE status = 'BUILDING'").await == 0 {
        assert!(Instant::now() < deadline, "nothing started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.restart().await;

    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            // The API answers 500 while the database is away: keep polling.
            let (status, body) = app.get(&format!("/backups/{id}")).await;
            if status.is_success() {
                let s = body["backup"]["status"].as_str().unwrap();
                assert_ne!(s, "FAILED", "{body}");
                if s == "COMPLETED" {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "backup {id} did not complete after the restart: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(app);
}

#[tokio::test]
async fn a_flipped_byte_is_found_by_verify_and_named_by_restore() {
    let app = spawn_app(1).await;
    let dir = app.volumes().join("g");
    big_volume(&dir, 16, 3);
    let inst = app.register("g", &dir).await;
    let full = app.backup_completed(&inst, "full", None).await;
    let id = full["id"].as_str().unwrap();

    let verify = |app: &TestApp, id: String| {
        let app_url = app.url(&format!("/backups/{id}/action"));
        let client = app.client.clone();
        async move { client.post(app_url).json(&json!({"verify": {}})).send().await.unwrap() }
    };
    let resp = verify(&app, id.to_owned()).await;
    assert_eq!(resp.status().as_u16(), 202);
    let checked = app.wait_verify(id).await;
    assert_eq!(checked["status"], "OK", "{checked}");

    // Flip one byte in the middle of the first pack.
    let attempt = app.config.data_dir.join(format!("artifacts/backups/{id}.1"));
    let pack = attempt.join("pack-00000");
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();

    verify(&app, id.to_owned()).await;
    let checked = app.wait_verify(id).await;
    assert_eq!(checked["status"], "CORRUPTED", "{checked}");
    assert!(checked["message"].as_str().unwrap().contains("pack-00000"), "{checked}");

    let inst = app.restore("g2", id).await;
    assert_eq!(inst["status"], "ERROR", "{inst}");
    let reason = inst["fail_reason"].as_str().unwrap();
    assert!(reason.contains("pack-00000") && reason.contains(id), "{reason}");

    // An unknown action is a bad request; a backup that is not COMPLETED
    // cannot be verified.
    let (status, body) = app.post(&format!("/backups/{id}/action"), &json!({"explode": {}})).await;
    cairn_testkit::assert_fault(status, &body, 400, "badRequest");
}

/// Publishes `payload` straight into the backup queue, as a duplicate or a
/// broken producer would.
async fn publish_raw(app: &TestApp, payload: &[u8]) {
    let conn = lapin::Connection::connect(&app.config.amqp_url, Default::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let topology = Topology::new(&app.config.queue_prefix);
    // A plain publish to an exchange that does not exist yet is dropped.
    topology.declare(&channel).await.unwrap();
    channel
        .basic_publish(
            topology.exchange().into(),
            JobKind::Backup.as_str().into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn the_same_message_twice_and_two_racing_workers_have_one_effect() {
    let mut app = spawn_app(0).await;
    let dir = app.volumes().join("g");
    big_volume(&dir, 16, 4);
    let inst = app.register("g", &dir).await;
    let b = app.backup(&inst, "once", None).await;
    let id: uuid::Uuid = b["id"].as_str().unwrap().parse().unwrap();
    let msg = serde_json::to_vec(&JobMessage { kind: JobKind::Backup, id, attempt: 0 }).unwrap();
    for _ in 0..4 {
        publish_raw(&app, &msg).await;
    }
    app.start_worker().await;
    app.start_worker().await;
    let done = app.wait_backup(&id.to_string(), &["COMPLETED", "FAILED"]).await;
    assert_eq!(done["status"], "COMPLETED");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count(&format!("SELECT attempts::bigint AS n FROM backups WHERE id = '{id}'")).await, 1);
    let attempts = app.stored_attempts(&id.to_string());
    assert_eq!(attempts.len(), 1, "one attempt, one set of objects: {attempts:?}");
}

#[tokio::test]
async fn an_unreadable_message_is_dead_lettered_and_blocks_nothing() {
    let app = spawn_app(1).await;
    publish_raw(&app, b"{this is not a job").await;
    let dir = app.volumes().join("g");
    std::fs::create_dir_all(&dir).unwrap();
    let inst = app.register("g", &dir).await;
    app.backup_completed(&inst, "after-garbage", None).await;
    // The garbage is in the dead-letter queue, for a person to look at.
    let conn = lapin::Connection::connect(&app.config.amqp_url, Default::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let dead = Topology::new(&app.config.queue_prefix).dead();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got =
            channel.basic_get(dead.as_str().into(), lapin::options::BasicGetOptions { no_ack: true }).await.unwrap();
        if let Some(message) = got {
            assert_eq!(message.delivery.data, b"{this is not a job");
            break;
        }
        assert!(Instant::now() < deadline, "nothing reached {dead}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_transient_storage_failure_is_retried_then_fails_with_its_cause_after_max_attempts() {
    let app = spawn_app(1).await;
    let dir = app.volumes().join("g");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), b"data").unwrap();
    let inst = app.register("g", &dir).await;
    app.backup_completed(&inst, "first", None).await;

    // Break the store: its backups/ directory becomes a file.
    let store = app.config.data_dir.join("artifacts/backups");
    let aside = app.config.data_dir.join("artifacts/aside");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    let b = app.backup(&inst, "retried", None).await;
    let id = b["id"].as_str().unwrap().to_owned();
    // The first attempt fails and is scheduled again (not FAILED).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = app.get(&format!("/backups/{id}")).await;
        if body["backup"]["fail_reason"].as_str().is_some_and(|r| r.contains("retrying in")) {
            assert_eq!(body["backup"]["status"], "BUILDING", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "no retry was scheduled: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Repair the store: the retry succeeds.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    let done = app.wait_backup(&id, &["COMPLETED", "FAILED"]).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(app.count(&format!("SELECT attempts::bigint AS n FROM backups WHERE id = '{id}'")).await >= 2);

    // Broken for good: after 3 attempts (1 s, then 5 s apart) it fails,
    // naming the cause.
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    let b = app.backup(&inst, "doomed", None).await;
    let id = b["id"].as_str().unwrap().to_owned();
    let failed = app.wait_backup(&id, &["COMPLETED", "FAILED"]).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["fail_reason"].as_str().unwrap();
    assert!(reason.contains("after 3 attempts") && reason.contains("backups/"), "{reason}");
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
}

/// The worker that owns (or, once finished, ran) backup `id`; with
/// `running`, only while it is BUILDING.
async fn lease_owner(app: &TestApp, id: &str, running: bool) -> Option<String> {
    let only_running = if running { " AND status = 'BUILDING'" } else { "" };
    app.db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT lease_owner FROM backups WHERE id = '{id}'{only_running}"),
        ))
        .await
        .unwrap()
        .and_then(|row| row.try_get::<Option<String>>("", "lease_owner").ok().flatten())
}

/// Posts a backup and waits until a worker runs it; its id and the worker.
async fn running_backup(app: &TestApp, instance: &str, name: &str) -> (String, String) {
    let id = app.backup(instance, name, None).await["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(owner) = lease_owner(app, &id, true).await {
            return (id, owner);
        }
        assert!(Instant::now() < deadline, "backup {id} never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The backup of `instance` that is BUILDING now, if any.
async fn building_now(app: &TestApp, instance: &str) -> Option<String> {
    app.db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT id::text AS id FROM backups WHERE instance_id = '{instance}' AND status = 'BUILDING'"),
        ))
        .await
        .unwrap()
        .and_then(|row| row.try_get::<String>("", "id").ok())
}

/// A job runs on its lease, not on a delivery: while it runs, nothing is
/// unacked, so RabbitMQ's consumer_timeout can never cut a long job off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_job_holds_no_delivery() {
    let rabbit = PrivateRabbit::start().await;
    // Backups read at 3 MiB/s: one of 48 MiB runs about 16 s, longer than a
    // rabbitmqctl call even on a loaded machine.
    let mut app = spawn_app_with(0, AppOptions::default().rabbit(&rabbit).backup_read_limit(3)).await;
    let dir = app.volumes().join("g");
    big_volume(&dir, 48, 9);
    let inst = app.register("g", &dir).await;
    app.start_worker_process(Path::new(WORKER), "only");
    let queue = Topology::new(&app.config.queue_prefix).queue_for(JobKind::Backup);
    // A sample counts when the backup was running before and after it.
    let mut ids = Vec::new();
    for n in 0..1 {
        ids.push(app.backup(&inst, &format!("long-{n}"), None).await["id"].as_str().unwrap().to_owned());
    }
    let mut samples = 0;
    while samples < 2 {
        let Some(before) = building_now(&app, &inst).await else {
            if app.count("SELECT count(*) AS n FROM backups WHERE status = 'COMPLETED'").await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let (_, unacked) = rabbit.queue_counts(&queue).await;
        if building_now(&app, &inst).await.as_deref() == Some(before.as_str()) {
            assert_eq!(unacked, 0, "backup {before} runs while holding a delivery");
            samples += 1;
        }
    }
    assert!(samples > 0, "no sample fell inside a running backup");
    for id in &ids {
        app.wait_backup(id, &["COMPLETED"]).await;
    }
}

/// SIGTERM: the worker hands its running job back at once (grace 0 in this
/// app) instead of leaving it for the 30 s lease to expire; the other worker
/// takes it over and completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_hands_a_running_job_to_another_worker() {
    // Backups read at 16 MiB/s: a 64 MiB backup runs about 4 s.
    let options =
        AppOptions::default().lease(Duration::from_secs(30)).shutdown_grace(Duration::ZERO).backup_read_limit(16);
    let mut app = spawn_app_with(0, options).await;
    let dir = app.volumes().join("g");
    big_volume(&dir, 64, 9);
    let inst = app.register("g", &dir).await;
    let mut names = vec!["a".to_owned(), "b".to_owned()];
    app.start_worker_process(Path::new(WORKER), &names[0]);
    app.start_worker_process(Path::new(WORKER), &names[1]);
    let mut started = 2;
    for attempt in 0..3 {
        let (id, owner) = running_backup(&app, &inst, &format!("long-{attempt}")).await;
        let index = names.iter().position(|n| *n == owner).expect("owned by one of our workers");
        let stopped_at = Instant::now();
        app.terminate_worker_process(index);
        names.remove(index);
        let done = app.wait_backup(&id, &["COMPLETED", "FAILED"]).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        let finisher = lease_owner(&app, &id, false).await.expect("a completed backup names its worker");
        if finisher != owner {
            assert!(stopped_at.elapsed() < Duration::from_secs(25), "taken over only after the lease expired");
            return;
        }
        // It finished before the signal reached it: try again.
        started += 1;
        names.push(format!("w{started}"));
        app.start_worker_process(Path::new(WORKER), names.last().unwrap());
    }
    panic!("the terminated worker never handed its job over");
}

#[tokio::test]
async fn a_lost_message_does_not_leave_a_backup_new_forever() {
    let mut app = spawn_app_with(0, AppOptions::default().lease(Duration::from_secs(2))).await;
    let dir = app.volumes().join("g");
    std::fs::create_dir_all(&dir).unwrap();
    let inst = app.register("g", &dir).await;
    let b = app.backup(&inst, "lost", None).await;
    let id = b["id"].as_str().unwrap().to_owned();
    // The relay publishes the job; then the message is lost (purged).
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.count("SELECT count(*) AS n FROM outbox").await > 0 {
        assert!(Instant::now() < deadline, "the outbox was not relayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let conn = lapin::Connection::connect(&app.config.amqp_url, Default::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = Topology::new(&app.config.queue_prefix).queue_for(JobKind::Backup);
    let purged = channel.queue_purge(queue.as_str().into(), Default::default()).await.unwrap();
    assert_eq!(purged, 1, "the job's message was in the queue");
    // A worker's sweeper finds the stale NEW backup and queues it again.
    app.start_worker().await;
    let done = app.wait_backup(&id, &["COMPLETED", "FAILED"]).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
}
