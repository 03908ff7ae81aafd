//! Test support for cairn's crates.
//!
//! `spawn_app()`: every test starts from its own deployment — a database
//! with a uuid name, its own queue prefix on the shared broker, its own data
//! directory — with the real API router on port 0 and real workers, so tests
//! run in parallel and never see each other.
//!
//! Every app has a token for its project ([`TestApp::token`]), which
//! [`TestApp::client`] sends with every request, so tests speak to the API
//! as a project's user would; [`TestApp::anonymous`] sends none, and
//! [`TestApp::token_for`] makes tokens of other projects (or admin ones).
//!
//! `spawn_app_with()`: the same on other servers, e.g. a [`PrivatePostgres`]
//! and a [`PrivateRabbit`] that a fault-injection test may stop and restart
//! without disturbing the tests on the shared servers.

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub mod servers;
pub mod trees;

pub use servers::{PrivatePostgres, PrivateRabbit};

use cairn_shared::{Config, config::AuthMode, queue::Topology};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One isolated deployment.
pub struct TestApp {
    pub base: String,
    pub project: String,
    /// A token of `project` (`cairn-<id>-<secret>`).
    pub token: String,
    /// Sends `token` in `X-Auth-Token` with every request.
    pub client: reqwest::Client,
    pub db: DatabaseConnection,
    pub config: Config,
    /// Held so the directory lives as long as the app.
    _data: tempfile::TempDir,
    shutdown: CancellationToken,
    workers: Vec<(CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    processes: Vec<Child>,
    /// Worker processes sent SIGTERM: no longer counted, still reaped.
    terminated: Vec<Child>,
    db_name: String,
    /// `postgres://user@host:port` of the app's server, for cleaning up.
    pg_base: String,
}

/// Which servers a deployment uses; `Default` = the shared ones, 10 s lease.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// A PostgreSQL server URL without a database
    /// (`postgres://postgres@127.0.0.1:PORT`); the app gets a new database
    /// on it. Default: the shared server on 5432.
    pub pg_base_url: Option<String>,
    /// A RabbitMQ URL. Default: the shared broker on 5672. The app's queues
    /// carry a prefix of their own either way.
    pub amqp_url: Option<String>,
    /// How long a job's lease lives without a heartbeat. Default: 10 s.
    pub lease: Option<Duration>,
    /// Attempts before a job fails for good. Default: 3.
    pub max_attempts: Option<u32>,
    /// How long a stopping worker lets running jobs finish. Default: 5 s.
    pub shutdown_grace: Option<Duration>,
    /// Backups read at most this many MiB/s (`CAIRN_BACKUP_READ_LIMIT`).
    pub backup_read_limit_mib: Option<u64>,
    /// Block size of full backups in KiB (`CAIRN_BLOCK_SIZE`).
    pub block_size_kib: Option<u32>,
    /// Most backups per project. Default: 50, Trove's and cairn's default.
    pub quota_backups: Option<u64>,
    /// Most stored bytes per project. Default: unlimited.
    pub quota_bytes: Option<u64>,
    /// Workers seal stored objects with this key file
    /// (`CAIRN_ENCRYPTION_KEY_FILE`).
    pub encryption_key_file: Option<PathBuf>,
    /// `token_cache` of the API (default: 5 s, as in production).
    pub token_cache: Option<Duration>,
}

impl AppOptions {
    /// Uses `pg` instead of the shared PostgreSQL.
    pub fn postgres(mut self, pg: &PrivatePostgres) -> Self {
        self.pg_base_url = Some(pg.base_url());
        self
    }

    /// Uses `rabbit` instead of the shared RabbitMQ.
    pub fn rabbit(mut self, rabbit: &PrivateRabbit) -> Self {
        self.amqp_url = Some(rabbit.url());
        self
    }

    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = Some(grace);
        self
    }

    /// Backups read their source at most `mib` MiB/s: a job of known length.
    pub fn backup_read_limit(mut self, mib: u64) -> Self {
        self.backup_read_limit_mib = Some(mib);
        self
    }

    /// Full backups cut files into blocks of `kib` KiB.
    pub fn block_size_kib(mut self, kib: u32) -> Self {
        self.block_size_kib = Some(kib);
        self
    }

    /// A project may hold at most `backups` backups.
    pub fn quota_backups(mut self, backups: u64) -> Self {
        self.quota_backups = Some(backups);
        self
    }

    /// A project's backups may store at most `bytes` bytes.
    pub fn token_cache(mut self, ttl: Duration) -> Self {
        self.token_cache = Some(ttl);
        self
    }

    pub fn quota_bytes(mut self, bytes: u64) -> Self {
        self.quota_bytes = Some(bytes);
        self
    }
}

/// Starts an API and `workers` in-process workers on the shared servers.
pub async fn spawn_app(workers: usize) -> TestApp {
    spawn_app_with(workers, AppOptions::default()).await
}

/// Starts an API and `workers` in-process workers on the servers `options`
/// names. Drop the app before the servers it uses.
pub async fn spawn_app_with(workers: usize, options: AppOptions) -> TestApp {
    let pg_base = options.pg_base_url.unwrap_or_else(|| PG.to_owned()).trim_end_matches('/').to_owned();
    let data = tempfile::Builder::new().prefix("cairn-test-").tempdir().unwrap();
    let dir = data.path().to_path_buf();
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    let db_name = format!("cairn_test_{}", Uuid::new_v4().simple());
    let config = Config {
        database_url: format!("{pg_base}/{db_name}"),
        amqp_url: options.amqp_url.unwrap_or_else(|| AMQP.to_owned()),
        listen: "127.0.0.1:0".parse().unwrap(),
        storage_url: format!("file://{}", dir.join("artifacts").display()),
        volume_roots: vec![dir.join("volumes")],
        queue_prefix: format!("test-{}", Uuid::new_v4().simple()),
        worker_concurrency: 2,
        lease: options.lease.unwrap_or(Duration::from_secs(10)),
        max_attempts: options.max_attempts.unwrap_or(3),
        shutdown_grace: options.shutdown_grace.unwrap_or(Duration::from_secs(5)),
        backup_read_limit: options.backup_read_limit_mib.map(|mib| mib << 20),
        block_size: options.block_size_kib.map_or(cairn_delta::BackupOptions::default().block_size, |kib| kib << 10),
        encryption_key_file: options.encryption_key_file,
        worker_id: "test-api".into(),
        data_dir: dir,
        auth: AuthMode::Token,
        quota_backups: Some(options.quota_backups.unwrap_or(50)),
        quota_bytes: options.quota_bytes,
        token_cache: options.token_cache.unwrap_or(Duration::from_secs(5)),
    };
    let shutdown = CancellationToken::new();
    let api = cairn_api::Application::start(&config, shutdown.clone()).await.expect("API starts");
    let db = cairn_shared::db::connect(&config.database_url).await.unwrap();
    let project = format!("p{}", &Uuid::new_v4().simple().to_string()[..12]);
    let (_, token) = cairn_api::tokens::create(&db, &project, false, Some("spawn_app")).await.expect("token");
    let mut app = TestApp {
        base: format!("http://{}/v1.0", api.addr),
        project,
        client: client_with_token(&token),
        token,
        db,
        config,
        _data: data,
        shutdown,
        workers: Vec::new(),
        processes: Vec::new(),
        terminated: Vec::new(),
        db_name,
        pg_base,
    };
    for _ in 0..workers {
        app.start_worker().await;
    }
    app
}

/// A client that sends `token` in `X-Auth-Token` with every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(token).expect("a token is a header value");
    value.set_sensitive(true);
    headers.insert("x-auth-token", value);
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

impl TestApp {
    /// Creates a token of `project` (an admin one if `admin`).
    pub async fn token_for(&self, project: &str, admin: bool) -> String {
        cairn_api::tokens::create(&self.db, project, admin, Some("test")).await.expect("token").1
    }

    /// A client that sends no token.
    pub fn anonymous(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// Starts one more in-process worker.
    pub async fn start_worker(&mut self) {
        let mut config = self.config.clone();
        config.worker_id = format!("worker-{}", self.workers.len() + 1);
        let stop = CancellationToken::new();
        let handle = tokio::spawn(cairn_worker::run(config, stop.clone()));
        self.workers.push((stop, handle));
    }

    /// Starts the real `cairn-worker` binary at `bin` (a test's
    /// `env!("CARGO_BIN_EXE_cairn-worker")`), configured like this app
    /// (lease, attempts and grace included; whole seconds, rounded up, the
    /// lease at least 2 s).
    pub fn start_worker_process(&mut self, bin: &Path, id: &str) {
        let c = &self.config;
        let secs = |d: Duration| (d.as_secs() + u64::from(d.subsec_nanos() > 0)).to_string();
        let log = std::fs::File::create(c.data_dir.join(format!("{id}.log"))).unwrap();
        let child = Command::new(bin)
            .env("CAIRN_DATABASE_URL", &c.database_url)
            .env("CAIRN_AMQP_URL", &c.amqp_url)
            .env("CAIRN_DATA_DIR", &c.data_dir)
            .env("CAIRN_STORAGE_URL", &c.storage_url)
            .env("CAIRN_VOLUME_ROOTS", c.volume_roots[0].as_os_str())
            .env("CAIRN_QUEUE_PREFIX", &c.queue_prefix)
            .env("CAIRN_WORKER_CONCURRENCY", "2")
            .env("CAIRN_WORKER_ID", id)
            .env("CAIRN_LEASE_SECONDS", secs(c.lease.max(Duration::from_secs(2))))
            .env("CAIRN_MAX_ATTEMPTS", c.max_attempts.to_string())
            .env("CAIRN_SHUTDOWN_GRACE_SECONDS", secs(c.shutdown_grace))
            .env("CAIRN_BACKUP_READ_LIMIT", c.backup_read_limit.map_or(String::new(), |b| (b >> 20).to_string()))
            .env("CAIRN_BLOCK_SIZE", (c.block_size / 1024).to_string())
            .env("CAIRN_ENCRYPTION_KEY_FILE", c.encryption_key_file.as_deref().unwrap_or(Path::new("")))
            .env("CAIRN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cairn-worker binary starts");
        self.processes.push(child);
    }

    /// The worker processes started and not yet killed or terminated, in
    /// start order.
    pub fn worker_processes(&self) -> usize {
        self.processes.len()
    }

    /// `kill -9`s the `index`th running worker process (start order, killed
    /// and terminated ones no longer counted) and reaps it.
    pub fn kill_worker_process(&mut self, index: usize) {
        let mut child = self.processes.remove(index);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM to the `index`th running worker process (counted as in
    /// [`kill_worker_process`](Self::kill_worker_process)) and returns at
    /// once: the worker shuts down gracefully in its own time. It is
    /// killed on drop if it still runs.
    pub fn terminate_worker_process(&mut self, index: usize) {
        let child = self.processes.remove(index);
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "cannot send SIGTERM to worker process {}", child.id());
        self.terminated.push(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}{path}", self.base, self.project)
    }

    /// A URL in another project of the same deployment.
    pub fn url_for(&self, project: &str, path: &str) -> String {
        format!("{}/{project}{path}", self.base)
    }

    /// Stops every in-process worker and waits for it.
    pub async fn stop_workers(&mut self) {
        for (stop, handle) in self.workers.drain(..) {
            stop.cancel();
            let _ = handle.await;
        }
    }

    /// The directory volume instances live in.
    pub fn volumes(&self) -> PathBuf {
        self.config.volume_roots[0].clone()
    }

    /// The directories of the local artifact store that hold objects of
    /// backup `id`: one per attempt (`backups/<id>.<attempt>`), or the
    /// backup's directory of the older layout (`backups/<id>/`).
    pub fn stored_attempts(&self, id: &str) -> Vec<PathBuf> {
        let store = self.config.data_dir.join("artifacts/backups");
        let Ok(entries) = std::fs::read_dir(&store) else { return Vec::new() };
        let attempt = format!("{id}.");
        let mut dirs: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == id || n.starts_with(&attempt)))
            .collect();
        dirs.sort();
        dirs
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.client.delete(self.url(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Registers a volume instance at `dir` (created if missing); its id.
    pub async fn register(&self, name: &str, dir: &Path) -> String {
        std::fs::create_dir_all(dir).unwrap();
        let (status, body) = self
            .post(
                "/instances",
                &json!({"instance": {"name": name, "datastore": {"type": "volume"}, "volume": {"path": dir}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["instance"]["status"], "ACTIVE");
        body["instance"]["id"].as_str().unwrap().to_owned()
    }

    /// Posts a backup; returns its JSON (status 202 asserted).
    pub async fn backup(&self, instance: &str, name: &str, parent: Option<&str>) -> Value {
        let mut b = json!({"name": name, "instance": instance});
        if let Some(p) = parent {
            b["parent_id"] = json!(p);
        }
        let (status, body) = self.post("/backups", &json!({ "backup": b })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["backup"]["status"], "NEW");
        body["backup"].clone()
    }

    /// Polls a backup until it reaches one of `done`; returns it.
    pub async fn wait_backup(&self, id: &str, done: &[&str]) -> Value {
        self.wait(&format!("/backups/{id}"), "backup", done).await
    }

    /// Polls a backup until it is gone (404), within 30 s.
    pub async fn wait_backup_deleted(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _) = self.get(&format!("/backups/{id}")).await;
            if status == StatusCode::NOT_FOUND {
                return;
            }
            assert!(Instant::now() < deadline, "backup {id} was not deleted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls a backup until its `verify` has a result (not `RUNNING`), within 30 s; returns it.
    pub async fn wait_verify(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = self.get(&format!("/backups/{id}")).await;
            let verify = body["backup"]["verify"].clone();
            if verify["status"] != "RUNNING" && !verify.is_null() {
                return verify;
            }
            assert!(Instant::now() < deadline, "verify did not finish: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls an instance until it reaches one of `done`; returns it.
    pub async fn wait_instance(&self, id: &str, done: &[&str]) -> Value {
        self.wait(&format!("/instances/{id}"), "instance", done).await
    }

    async fn wait(&self, path: &str, key: &str, done: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            let s = body[key]["status"].as_str().unwrap().to_owned();
            if done.contains(&s.as_str()) {
                return body[key].clone();
            }
            assert!(Instant::now() < deadline, "{path} still {s} after 60 s: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Backs up and waits for COMPLETED; returns the completed backup.
    pub async fn backup_completed(&self, instance: &str, name: &str, parent: Option<&str>) -> Value {
        let b = self.backup(instance, name, parent).await;
        let done = self.wait_backup(b["id"].as_str().unwrap(), &["COMPLETED", "FAILED"]).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        done
    }

    /// Restores `backup` into a new instance and waits for it; its JSON.
    pub async fn restore(&self, name: &str, backup: &str) -> Value {
        let (status, body) =
            self.post("/instances", &json!({"instance": {"name": name, "restorePoint": {"backupRef": backup}}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["instance"]["status"], "BUILD");
        self.wait_instance(body["instance"]["id"].as_str().unwrap(), &["ACTIVE", "ERROR"]).await
    }

    /// Runs one SQL query returning one i64 column `n`.
    pub async fn count(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for (stop, handle) in &self.workers {
            stop.cancel();
            handle.abort();
        }
        for child in self.processes.iter_mut().chain(&mut self.terminated) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Clean up the database and the queues from a thread of its own:
        // Drop cannot await, and the test's runtime may be shutting down.
        // Briefly: a fault-injection test may have stopped the server.
        let (db_name, prefix) = (self.db_name.clone(), self.config.queue_prefix.clone());
        let (amqp, admin_url) = (self.config.amqp_url.clone(), format!("{}/postgres", self.pg_base));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let limit = Duration::from_secs(5);
                let _ = tokio::time::timeout(limit, async {
                    if let Ok(conn) = lapin::Connection::connect(&amqp, Default::default()).await
                        && let Ok(channel) = conn.create_channel().await
                    {
                        let _ = Topology::new(&prefix).delete(&channel).await;
                    }
                })
                .await;
                let _ = tokio::time::timeout(limit, async {
                    let mut opts = sea_orm::ConnectOptions::new(admin_url);
                    opts.max_connections(1).connect_timeout(Duration::from_secs(3)).sqlx_logging(false);
                    if let Ok(admin) = sea_orm::Database::connect(opts).await {
                        let _ = admin
                            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"))
                            .await;
                    }
                })
                .await;
            });
        })
        .join();
    }
}

/// What a restore must reproduce of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    pub kind: &'static str,
    pub mode: u32,
    pub mtime_ns: i128,
    pub size: u64,
    pub content: Option<String>,
    pub target: Option<PathBuf>,
}

/// Every entry under `root` (the root itself as ""), by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, EntryState> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
        let ft = meta.file_type();
        let (kind, content, target) = if ft.is_symlink() {
            ("symlink", None, Some(std::fs::read_link(entry.path()).unwrap()))
        } else if ft.is_dir() {
            ("dir", None, None)
        } else {
            ("file", Some(blake3::hash(&std::fs::read(entry.path()).unwrap()).to_hex().to_string()), None)
        };
        let size = if ft.is_dir() { 0 } else { meta.len() };
        let mode = if ft.is_symlink() { 0 } else { meta.permissions().mode() };
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        out.insert(rel, EntryState { kind, mode, mtime_ns, size, content, target });
    }
    out
}

/// Asserts two snapshots are identical, naming the first difference.
pub fn assert_same_tree(expected: &BTreeMap<PathBuf, EntryState>, actual: &Path) {
    let got = snapshot(actual);
    for (path, want) in expected {
        match got.get(path) {
            None => panic!("{} is missing from the restore at {}", path.display(), actual.display()),
            Some(have) => assert_eq!(have, want, "{} differs", path.display()),
        }
    }
    for path in got.keys() {
        assert!(expected.contains_key(path), "{} should not be in the restore", path.display());
    }
}

/// Asserts a response is Trove's fault object with `code` and `fault`.
pub fn assert_fault(status: StatusCode, body: &Value, code: u16, fault: &str) {
    assert_eq!(status.as_u16(), code, "{body}");
    assert_eq!(body[fault]["code"], code, "expected a {fault} fault: {body}");
    assert!(body[fault]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}
