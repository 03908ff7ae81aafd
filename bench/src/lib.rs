//! Support shared by cairn's benchmark programs.
//!
//! Why it looks like this:
//! - The benchmarks measure the service a user runs, so [`Service`] starts
//!   the release binaries `cairn-api` and `cairn-worker` as processes, each
//!   deployment with its own database (uuid-named), queue prefix and data
//!   directory, exactly like a test's `spawn_app()` but out of process.
//! - Figures are medians of runs and ratios measured in the same run, because
//!   the machine is shared and absolute numbers drift; [`Table`] prints them.
//! - Everything is torn down on drop (processes killed by pid, database
//!   dropped, queues deleted) so a crashed benchmark leaves little behind.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The directory holding the release binaries (`target/release`), found
/// next to the running benchmark binary.
pub fn release_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("benchmark binary has no directory")?.to_path_buf();
    for bin in ["cairn-api", "cairn-worker"] {
        if !dir.join(bin).exists() {
            bail!("{} not found: run `cargo build --release --workspace` first", dir.join(bin).display());
        }
    }
    Ok(dir)
}

/// One running deployment: API + worker processes on the shared servers.
pub struct Service {
    pub api: Child,
    pub workers: Vec<Child>,
    /// `http://127.0.0.1:PORT/v1.0/PROJECT`
    pub base: String,
    pub client: reqwest::Client,
    pub db: DatabaseConnection,
    pub db_name: String,
    pub queue_prefix: String,
    pub data_dir: PathBuf,
    /// Raw queries this process ran on the service's database (each one a
    /// commit), so a commit count can leave them out.
    pub own_queries: u64,
}

/// How to start a [`Service`].
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub workers: usize,
    /// `CAIRN_WORKER_CONCURRENCY`; `None` = the service's default (CPUs).
    pub worker_concurrency: Option<usize>,
    /// `CAIRN_LOG`
    pub log: String,
    /// Extra volume root (the data sets live outside the data directory).
    pub extra_volume_root: Option<PathBuf>,
    /// `CAIRN_BLOCK_SIZE` in KiB; `None` = the service's default.
    pub block_size_kib: Option<u32>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            workers: 2,
            worker_concurrency: None,
            log: "info".into(),
            extra_volume_root: None,
            block_size_kib: None,
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Service {
    pub async fn start(data_dir: PathBuf, opts: &ServiceOptions) -> anyhow::Result<Service> {
        let bins = release_dir()?;
        std::fs::create_dir_all(data_dir.join("volumes"))?;
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("cairn_bench_{id}");
        let queue_prefix = format!("bench-{id}");
        let port = free_port()?;
        let mut roots = data_dir.join("volumes").display().to_string();
        if let Some(extra) = &opts.extra_volume_root {
            roots = format!("{roots}:{}", extra.display());
        }
        let env = |cmd: &mut Command, who: &str| -> anyhow::Result<()> {
            let log = std::fs::File::create(data_dir.join(format!("{who}.log")))?;
            cmd.env("CAIRN_DATABASE_URL", format!("{PG_BASE}/{db_name}"))
                .env("CAIRN_AMQP_URL", AMQP)
                .env("CAIRN_LISTEN", format!("127.0.0.1:{port}"))
                .env("CAIRN_DATA_DIR", &data_dir)
                .env("CAIRN_VOLUME_ROOTS", &roots)
                .env("CAIRN_QUEUE_PREFIX", &queue_prefix)
                .env("CAIRN_WORKER_ID", who)
                .env("CAIRN_LOG", &opts.log)
                // The burst holds thousands of backups in one project.
                .env("CAIRN_QUOTA_BACKUPS", "unlimited")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if let Some(kib) = opts.block_size_kib {
                cmd.env("CAIRN_BLOCK_SIZE", kib.to_string());
            }
            if let Some(c) = opts.worker_concurrency {
                cmd.env("CAIRN_WORKER_CONCURRENCY", c.to_string());
            }
            Ok(())
        };
        let project = format!("bench{}", &id[..8]);
        // Requests carry a project token, as in production: its check is
        // part of every submit's cost. (`token create` also creates and
        // migrates the database.)
        let mut cmd = Command::new(bins.join("cairn-api"));
        env(&mut cmd, "token")?;
        let out = cmd.args(["token", "create", "--project", &project]).stdout(Stdio::piped()).output()?;
        if !out.status.success() {
            bail!("cairn-api token create failed; see {}/token.log", data_dir.display());
        }
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-auth-token", reqwest::header::HeaderValue::from_str(&token)?);
        let mut cmd = Command::new(bins.join("cairn-api"));
        env(&mut cmd, "api")?;
        let api = cmd.spawn().context("starting cairn-api")?;
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).default_headers(headers).build()?;
        let base = format!("http://127.0.0.1:{port}/v1.0/{project}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{base}/instances")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("cairn-api did not answer within 60 s; see {}/api.log", data_dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let db = sea_orm::Database::connect(format!("{PG_BASE}/{db_name}")).await?;
        let mut svc = Service {
            api,
            workers: Vec::new(),
            base,
            client,
            db,
            db_name: db_name.clone(),
            queue_prefix: queue_prefix.clone(),
            data_dir: data_dir.clone(),
            own_queries: 0,
        };
        for i in 0..opts.workers {
            let mut cmd = Command::new(bins.join("cairn-worker"));
            env(&mut cmd, &format!("worker-{}", i + 1))?;
            svc.workers.push(cmd.spawn().context("starting cairn-worker")?);
        }
        // Workers are ready once their consumers exist; a job submitted
        // earlier waits in the queue, which would count against the figures.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(svc)
    }

    /// Registers `dir` as a volume instance; its id.
    pub async fn register(&self, name: &str, dir: &Path) -> anyhow::Result<String> {
        std::fs::create_dir_all(dir)?;
        let body = json!({"instance": {"name": name, "datastore": {"type": "volume"}, "volume": {"path": dir}}});
        let r: Value = self.client.post(format!("{}/instances", self.base)).json(&body).send().await?.json().await?;
        r["instance"]["id"].as_str().map(str::to_owned).with_context(|| format!("registering {name}: {r}"))
    }

    /// Posts a backup; its id.
    pub async fn submit_backup(&self, instance: &str, name: &str, parent: Option<&str>) -> anyhow::Result<String> {
        submit_backup(&self.client, &self.base, instance, name, parent).await
    }

    /// Polls `GET /backups/{id}` every `every` until it ends; its JSON.
    pub async fn wait_backup(&self, id: &str, every: Duration) -> anyhow::Result<Value> {
        self.wait(&format!("backups/{id}"), "backup", &["COMPLETED", "FAILED"], every).await
    }

    pub async fn wait_instance(&self, id: &str, every: Duration) -> anyhow::Result<Value> {
        self.wait(&format!("instances/{id}"), "instance", &["ACTIVE", "ERROR"], every).await
    }

    async fn wait(&self, path: &str, key: &str, done: &[&str], every: Duration) -> anyhow::Result<Value> {
        loop {
            let r: Value = self.client.get(format!("{}/{path}", self.base)).send().await?.json().await?;
            let status = r[key]["status"].as_str().unwrap_or_default();
            if done.contains(&status) {
                return Ok(r[key].clone());
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One `i64` column named `n` from the service's database.
    pub async fn query_i64(&mut self, sql: &str) -> anyhow::Result<i64> {
        self.own_queries += 1;
        query_i64(&self.db, sql).await
    }

    /// Highest peak RSS (`VmHWM`, KiB) among the worker processes.
    pub fn worker_peak_rss_kib(&self) -> u64 {
        self.workers.iter().filter_map(|w| vm_hwm_kib(w.id())).max().unwrap_or(0)
    }
}

pub async fn submit_backup(
    client: &reqwest::Client,
    base: &str,
    instance: &str,
    name: &str,
    parent: Option<&str>,
) -> anyhow::Result<String> {
    let mut b = json!({"name": name, "instance": instance});
    if let Some(p) = parent {
        b["parent_id"] = json!(p);
    }
    let resp = client.post(format!("{base}/backups")).json(&json!({ "backup": b })).send().await?;
    let status = resp.status();
    let r: Value = resp.json().await?;
    if status.as_u16() != 202 {
        bail!("backup {name} refused: {status} {r}");
    }
    r["backup"]["id"].as_str().map(str::to_owned).context("no backup id")
}

pub async fn query_i64(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?
        .with_context(|| format!("no row from {sql}"))?;
    Ok(row.try_get::<i64>("", "n")?)
}

pub async fn query_f64s(db: &DatabaseConnection, sql: &str) -> anyhow::Result<Vec<f64>> {
    let rows = db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql)).await?;
    rows.iter().map(|r| Ok(r.try_get::<f64>("", "x")?)).collect()
}

/// `VmHWM` of a process, KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Service {
    fn drop(&mut self) {
        for c in self.workers.iter_mut().chain(std::iter::once(&mut self.api)) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-qAtc"])
            .arg(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db_name))
            .stdout(Stdio::null())
            .status();
        let prefix = self.queue_prefix.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    if let Ok(conn) = lapin::Connection::connect(AMQP, Default::default()).await
                        && let Ok(channel) = conn.create_channel().await
                    {
                        let _ = cairn_shared::queue::Topology::new(&prefix).delete(&channel).await;
                    }
                })
                .await;
            });
        })
        .join();
    }
}

/// Percentile (nearest rank) of unsorted samples; 0 when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

pub fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// Runs a command, failing with its stderr if it fails; its stdout.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a shell command line and returns its wall time.
pub fn timed_sh(line: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    run(Command::new("sh").args(["-c", line]))?;
    Ok(t.elapsed())
}

/// A text table of rows of cells.
#[derive(Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table { rows: vec![header.iter().map(|s| s.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> =
            (0..cols).map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.len()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            let cells: Vec<String> = (0..cols)
                .map(|c| format!("{:<w$}", r.get(c).map(String::as_str).unwrap_or(""), w = width[c]))
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
            if i == 0 {
                let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
            }
        }
        out
    }
}

/// `1.23` style number.
pub fn f2(x: f64) -> String {
    format!("{x:.2}")
}

/// Machine line for the report: CPUs, model, kernel.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    format!("{cpus} CPUs ({model}), {} GiB RAM", mem >> 20)
}
