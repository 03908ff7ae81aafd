//! Job-path benchmark (issue 3): what one job costs, through the real service.
//!
//! Starts `cairn-api` and two `cairn-worker` processes (release builds) on a
//! database, queue prefix and data directory of their own, registers empty
//! volume instances and measures, in one run:
//! - idle latency: sequential backups, each submitted over HTTP and polled
//!   in the database until `COMPLETED` (a tight query every 0.5 ms); both the
//!   latency seen by the client and the one in the rows' timestamps
//!   (`updated - created`, as the Celery peer measures it);
//! - a burst of backups submitted by concurrent HTTP clients: the API's
//!   submit latency during the burst and end-to-end jobs/s (first `created`
//!   to last `updated`, from the rows);
//! - database commits per job (`pg_stat_database.xact_commit`), with this
//!   program's own queries and the idle service's background commits taken
//!   out;
//! - `pgbench -N` tps on the same PostgreSQL, and optionally the Celery peer;
//! - the floor of the idle latency: each durable step an idle backup waits
//!   on, timed alone on the same services and disk in the same run (one
//!   commit, a quorum queue's publish-to-delivery, the artifact's directory
//!   and three fsyncs). An idle backup waits on three commits (submission,
//!   claim, completion), one delivery and one artifact, so the sum of
//!   those medians is what its latency cannot go below while it keeps every
//!   durability point; the table shows how far above it cairn is.
//!
//! Why many instances: the rule "at most one BUILDING backup per instance"
//! serializes an instance's backups (each waits for the previous one to end
//! and is then re-enqueued), so 2,000 backups of one instance measure the
//! rule, not the job path. The issue asks for the overhead of a job, so the
//! burst spreads its backups over `--instances` empty volumes (default: one
//! backup per instance); `--instances 200` measures 200 × 10 with the rule
//! in play.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_bench::*;
use clap::Parser;
use futures::StreamExt;
use sea_orm::ConnectionTrait;

#[derive(Parser, Debug)]
#[command(about = "cairn job-path benchmark: idle latency, burst throughput, commits per job, pgbench -N")]
struct Args {
    /// Runs; figures are medians over runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Backups in the burst.
    #[arg(long, default_value_t = 2000)]
    burst: usize,
    /// Instances the burst's backups are spread over (round robin).
    #[arg(long, default_value_t = 2000)]
    instances: usize,
    /// HTTP submissions in flight during the burst.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Sequential backups for the idle latency, per run.
    #[arg(long, default_value_t = 100)]
    idle: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// CAIRN_WORKER_CONCURRENCY of each worker. The service's default (the
    /// CPU count) is sized for backups of real data, which keep a core
    /// busy each; a job of this benchmark mostly waits (commits, fsyncs),
    /// so workers meant for many small jobs run more of them at once, as
    /// the Celery peer's best configuration runs 4 threads. 0: the
    /// service's default.
    #[arg(long, default_value_t = 8)]
    worker_concurrency: usize,
    /// CAIRN_LOG of the service.
    #[arg(long, default_value = "info")]
    log: String,
    /// Skip pgbench.
    #[arg(long)]
    no_pgbench: bool,
    /// A copy of /work/shared/peers/celery (after its setup.sh): run its
    /// `best` configuration in the same run.
    #[arg(long)]
    celery_dir: Option<PathBuf>,
    /// Where the service's data directory goes.
    #[arg(long, default_value = "/var/tmp/cairn-bench/job-path")]
    work_dir: PathBuf,
    /// Also write every burst submission as CSV (`run,started_ms,latency_ms`,
    /// started from the burst's start) to this file, to see where the
    /// submit latency's tail falls.
    #[arg(long)]
    latencies: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
struct RunFigures {
    idle_client_p50_ms: f64,
    idle_client_p99_ms: f64,
    idle_db_p50_ms: f64,
    idle_db_p99_ms: f64,
    submit_p50_ms: f64,
    submit_p99_ms: f64,
    submit_rate: f64,
    e2e_jobs_per_s: f64,
    burst_db_p50_ms: f64,
    burst_db_p99_ms: f64,
    commits_per_job: f64,
    pgbench_tps: f64,
    celery_jobs_per_s: f64,
    celery_p50_ms: f64,
    floor_commit_ms: f64,
    floor_commit_back_to_back_ms: f64,
    floor_delivery_ms: f64,
    floor_artifact_ms: f64,
}

impl RunFigures {
    /// Three commits, one delivery, one artifact: an idle backup's durable steps.
    fn floor_ms(&self) -> f64 {
        3.0 * self.floor_commit_ms + self.floor_delivery_ms + self.floor_artifact_ms
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = chrono::Utc::now();
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let opts = ServiceOptions {
        workers: args.workers,
        worker_concurrency: (args.worker_concurrency > 0).then_some(args.worker_concurrency),
        log: args.log.clone(),
        ..ServiceOptions::default()
    };
    let mut svc = Service::start(args.work_dir.clone(), &opts).await?;
    eprintln!("service up at {}; registering {} instances", svc.base, args.instances.max(1));
    let mut instances = Vec::new();
    for i in 0..args.instances.max(1) {
        let dir = svc.data_dir.join("volumes").join(format!("empty-{i}"));
        instances.push(svc.register(&format!("empty-{i}"), &dir).await?);
    }
    let idle_instance = svc.register("idle", &svc.data_dir.join("volumes").join("idle")).await?;

    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let mut f = RunFigures::default();
        if !args.no_pgbench {
            f.pgbench_tps = pgbench_tps().context("pgbench")?;
            eprintln!("run {run}: pgbench -N {:.0} tps", f.pgbench_tps);
        }
        if let Some(dir) = &args.celery_dir {
            (f.celery_jobs_per_s, f.celery_p50_ms) = celery(dir).context("celery peer")?;
            eprintln!("run {run}: celery {:.0} jobs/s, p50 {:.1} ms", f.celery_jobs_per_s, f.celery_p50_ms);
        }
        floors(&svc, &mut f).await.context("timing the durable steps alone")?;
        eprintln!(
            "run {run}: floors: commit {:.2} ms ({:.2} back to back), delivery {:.2} ms, artifact {:.2} ms",
            f.floor_commit_ms, f.floor_commit_back_to_back_ms, f.floor_delivery_ms, f.floor_artifact_ms
        );
        idle_latency(&mut svc, &idle_instance, run, args.idle, &mut f).await?;
        eprintln!("run {run}: idle p50 {:.2} ms (rows {:.2} ms)", f.idle_client_p50_ms, f.idle_db_p50_ms);
        burst(&mut svc, &instances, run, &args, &mut f).await?;
        eprintln!(
            "run {run}: burst {:.0} jobs/s, submit p99 {:.1} ms, {:.2} commits/job",
            f.e2e_jobs_per_s, f.submit_p99_ms, f.commits_per_job
        );
        runs.push(f);
    }
    drop(svc);

    let med = |get: fn(&RunFigures) -> f64| median(&runs.iter().map(get).collect::<Vec<_>>());
    let each =
        |get: fn(&RunFigures) -> f64| runs.iter().map(|r| format!("{:.2}", get(r))).collect::<Vec<_>>().join(" ");
    let mut t = Table::new(&["figure", "median", "runs", "target", "median / target"]);
    let mut row = |name: &str, get: fn(&RunFigures) -> f64, target: Option<f64>, higher_better: bool| {
        let m = med(get);
        let (tgt, ratio) = match target {
            Some(x) => (
                format!("{} {x}", if higher_better { ">=" } else { "<" }),
                format!("{:.2}{}", m / x, if (m >= x) == higher_better { " ok" } else { " MISSED" }),
            ),
            None => (String::new(), String::new()),
        };
        t.row(vec![name.into(), f2(m), each(get), tgt, ratio]);
    };
    row("idle submit->COMPLETED p50, ms (client, 0.5 ms poll)", |r| r.idle_client_p50_ms, Some(5.0), false);
    row("idle submit->COMPLETED p99, ms (client)", |r| r.idle_client_p99_ms, None, false);
    row("idle created->COMPLETED p50, ms (row timestamps)", |r| r.idle_db_p50_ms, None, false);
    row("idle created->COMPLETED p99, ms (row timestamps)", |r| r.idle_db_p99_ms, None, false);
    row("floor: one commit (INSERT, autocommit) p50, ms", |r| r.floor_commit_ms, None, false);
    row("  the same commits back to back, p50, ms", |r| r.floor_commit_back_to_back_ms, None, false);
    row("floor: quorum queue publish->delivery p50, ms", |r| r.floor_delivery_ms, None, false);
    row("floor: artifact (mkdir, manifest, 3 fsyncs) p50, ms", |r| r.floor_artifact_ms, None, false);
    row("floor: 3 commits + delivery + artifact, ms", RunFigures::floor_ms, None, false);
    row("idle p50 (rows) / floor", |r| r.idle_db_p50_ms / r.floor_ms(), None, false);
    row("burst: API submit p50, ms", |r| r.submit_p50_ms, None, false);
    row("burst: API submit p99, ms", |r| r.submit_p99_ms, Some(20.0), false);
    row("burst: submissions/s", |r| r.submit_rate, None, true);
    row("burst: end-to-end jobs/s", |r| r.e2e_jobs_per_s, Some(700.0), true);
    row("burst: created->COMPLETED p50, ms", |r| r.burst_db_p50_ms, None, false);
    row("burst: created->COMPLETED p99, ms", |r| r.burst_db_p99_ms, None, false);
    row("database commits per job", |r| r.commits_per_job, None, false);
    if !args.no_pgbench {
        row("pgbench -N tps (-c 4 -j 2 -T 10)", |r| r.pgbench_tps, None, true);
        row("pgbench -N tps / commits per job (jobs/s bound)", |r| r.pgbench_tps / r.commits_per_job, None, true);
        row(
            "cairn jobs/s / (pgbench tps / commits per job)",
            |r| r.e2e_jobs_per_s / (r.pgbench_tps / r.commits_per_job),
            None,
            true,
        );
    }
    if args.celery_dir.is_some() {
        row("celery peer (best): end-to-end jobs/s", |r| r.celery_jobs_per_s, None, true);
        row("celery peer (best): p50 latency, ms", |r| r.celery_p50_ms, None, false);
        row("cairn jobs/s / celery jobs/s", |r| r.e2e_jobs_per_s / r.celery_jobs_per_s, None, true);
    }
    println!(
        "cairn job-path benchmark, {} UTC, {}; {} runs; burst {} backups over {} instances, {} clients in flight; {} workers, CAIRN_WORKER_CONCURRENCY {}",
        started.format("%Y-%m-%d %H:%M"),
        machine(),
        args.runs,
        args.burst,
        args.instances,
        args.clients,
        args.workers,
        if args.worker_concurrency > 0 { args.worker_concurrency.to_string() } else { "default".into() }
    );
    print!("{}", t.render());
    Ok(())
}

/// Samples of each floor, one every [`FLOOR_GAP`] so that each runs on a
/// quiet machine, as an idle backup does.
const FLOOR_SAMPLES: usize = 100;
const FLOOR_GAP: Duration = Duration::from_millis(20);

/// Times each durable step of an idle backup alone, on the service's
/// PostgreSQL, RabbitMQ and data directory: medians into `f`.
async fn floors(svc: &Service, f: &mut RunFigures) -> anyhow::Result<()> {
    (f.floor_commit_ms, f.floor_commit_back_to_back_ms) = commit_floor().await.context("commit")?;
    f.floor_delivery_ms = delivery_floor().await.context("delivery")?;
    let dir = svc.data_dir.join("floor");
    f.floor_artifact_ms = tokio::task::spawn_blocking(move || artifact_floor(&dir)).await?.context("artifact")?;
    Ok(())
}

/// One-row `INSERT`s, each its own transaction, on a scratch database:
/// (median with a quiet gap before each, as on the idle path; median back
/// to back). On a virtual machine an operation that starts from an idle
/// machine can cost several times what the same operation costs in a
/// busy stream; the second figure shows how much of the first is that.
async fn commit_floor() -> anyhow::Result<(f64, f64)> {
    let name = format!("cairn_bench_floor_{}", uuid::Uuid::new_v4().simple());
    let admin = sea_orm::Database::connect(format!("{PG_BASE}/postgres")).await?;
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await?;
    let timed = async {
        let db = sea_orm::Database::connect(format!("{PG_BASE}/{name}")).await?;
        db.execute_unprepared("CREATE TABLE probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
            .await?;
        let mut figures = [0.0; 2];
        for (figure, gap) in figures.iter_mut().zip([Some(FLOOR_GAP), None]) {
            let mut ms = Vec::with_capacity(FLOOR_SAMPLES);
            for _ in 0..FLOOR_SAMPLES {
                if let Some(gap) = gap {
                    tokio::time::sleep(gap).await;
                }
                let t = Instant::now();
                db.execute_unprepared("INSERT INTO probe DEFAULT VALUES").await?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            *figure = median(&ms);
        }
        db.close().await?;
        anyhow::Ok((figures[0], figures[1]))
    }
    .await;
    admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
    timed
}

/// Persistent messages through a quorum queue of its own: from the
/// publish until a consumer (prefetch 1, as a busy worker) has the
/// delivery. The confirm is awaited afterwards, as the relay's does not
/// hold the delivery back.
async fn delivery_floor() -> anyhow::Result<f64> {
    use lapin::{
        BasicProperties, Connection, ConnectionProperties,
        options::{BasicAckOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
        types::{AMQPValue, FieldTable},
    };
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let publisher = conn.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = format!("cairn-bench-floor-{}", uuid::Uuid::new_v4().simple());
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    publisher
        .queue_declare(queue.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await?;
    let timed = async {
        let consuming = conn.create_channel().await?;
        consuming.basic_qos(1, BasicQosOptions::default()).await?;
        let mut deliveries = consuming
            .basic_consume(queue.as_str().into(), "floor".into(), Default::default(), FieldTable::default())
            .await?;
        let mut ms = Vec::with_capacity(FLOOR_SAMPLES);
        for _ in 0..FLOOR_SAMPLES {
            tokio::time::sleep(FLOOR_GAP).await;
            let t = Instant::now();
            let confirm = publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    Default::default(),
                    b"{}",
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            let delivery = deliveries.next().await.context("the consumer ended")??;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            delivery.ack(BasicAckOptions::default()).await?;
            if !confirm.await?.is_ack() {
                bail!("RabbitMQ nacked a probe");
            }
        }
        // Closed before the queue goes: a queue deleted under its consumer
        // cancels it, and that cancel races the consumer's own.
        drop(deliveries);
        consuming.close(200, "floor measured".into()).await?;
        anyhow::Ok(median(&ms))
    }
    .await;
    publisher.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    conn.close(200, "floor measured".into()).await?;
    timed
}

/// The durable part of what a backup of an empty volume stores: a new
/// directory, a manifest written and synced in it, then the directory and
/// its parent synced. (`ArtifactStore::put_attempt` also writes the
/// manifest under a temporary name and renames it, which no durability
/// point needs, so the floor leaves it out.)
fn artifact_floor(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let sync_dir = |d: &std::path::Path| std::fs::File::open(d)?.sync_all();
    sync_dir(dir)?;
    let manifest = [0x5au8; 300];
    let mut ms = Vec::with_capacity(FLOOR_SAMPLES);
    for i in 0..FLOOR_SAMPLES {
        std::thread::sleep(FLOOR_GAP);
        let t = Instant::now();
        let attempt = dir.join(format!("{i}.1"));
        std::fs::create_dir(&attempt)?;
        let mut file = std::fs::File::create(attempt.join("manifest"))?;
        file.write_all(&manifest)?;
        file.sync_all()?;
        drop(file);
        sync_dir(&attempt)?;
        sync_dir(dir)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    std::fs::remove_dir_all(dir)?;
    Ok(median(&ms))
}

/// How often the idle measurement polls a submitted backup's row.
const POLL: Duration = Duration::from_micros(500);

/// Sequential backups of one empty instance: submit, then poll the row.
async fn idle_latency(
    svc: &mut Service,
    instance: &str,
    run: usize,
    n: usize,
    f: &mut RunFigures,
) -> anyhow::Result<()> {
    let mut client_ms = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        let id = svc.submit_backup(instance, &format!("idle-{run}-{i}"), None).await?;
        loop {
            let done = svc
                .query_i64(&format!(
                    "SELECT CASE status WHEN 'COMPLETED' THEN 1 WHEN 'FAILED' THEN 2 ELSE 0 END::int8 AS n \
                       FROM backups WHERE id = '{id}'"
                ))
                .await?;
            match done {
                1 => break,
                2 => bail!("idle backup {id} FAILED"),
                // Not `tokio::time::sleep`: its timer ticks in whole
                // milliseconds, so a 0.5 ms sleep took 1-2 ms and the
                // client saw COMPLETED that much later than it happened.
                _ => tokio::task::spawn_blocking(|| std::thread::sleep(POLL)).await?,
            }
        }
        client_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let db_ms = query_f64s(
        &svc.db,
        &format!(
            "SELECT (extract(epoch FROM updated - created) * 1000)::float8 AS x FROM backups \
              WHERE name LIKE 'idle-{run}-%' AND status = 'COMPLETED'"
        ),
    )
    .await?;
    svc.own_queries += 1;
    f.idle_client_p50_ms = percentile(&client_ms, 50.0);
    f.idle_client_p99_ms = percentile(&client_ms, 99.0);
    f.idle_db_p50_ms = percentile(&db_ms, 50.0);
    f.idle_db_p99_ms = percentile(&db_ms, 99.0);
    Ok(())
}

/// `xact_commit` of the service's database, read from the `postgres`
/// database (so the read is not itself counted).
async fn commits(admin: &sea_orm::DatabaseConnection, db: &str) -> anyhow::Result<i64> {
    query_i64(admin, &format!("SELECT xact_commit AS n FROM pg_stat_database WHERE datname = '{db}'")).await
}

/// Backends flush their statistics at most once a second and, when idle,
/// up to 10 s later: wait that long before reading a counter.
const STATS_SETTLE: Duration = Duration::from_secs(11);

async fn burst(
    svc: &mut Service,
    instances: &[String],
    run: usize,
    args: &Args,
    f: &mut RunFigures,
) -> anyhow::Result<()> {
    let admin = sea_orm::Database::connect(format!("{PG_BASE}/postgres")).await?;
    // The idle service commits too (sweeper, relay): measure its rate over a
    // quiet window, to take it out of the burst's count.
    tokio::time::sleep(STATS_SETTLE).await;
    let q0 = commits(&admin, &svc.db_name).await?;
    let own0 = svc.own_queries;
    let tq = Instant::now();
    tokio::time::sleep(STATS_SETTLE).await;
    let c0 = commits(&admin, &svc.db_name).await?;
    let background_per_s = (c0 - q0) as f64 / tq.elapsed().as_secs_f64();
    let own_before = svc.own_queries;
    debug_assert_eq!(own0, own_before);
    let tc = Instant::now();

    let t0 = Instant::now();
    let client = svc.client.clone();
    let base = svc.base.clone();
    let latencies: Vec<anyhow::Result<(f64, f64)>> = futures::stream::iter(0..args.burst)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            let instance = instances[i % instances.len()].clone();
            async move {
                let t = Instant::now();
                submit_backup(&client, &base, &instance, &format!("burst-{run}-{i}"), None).await?;
                Ok(((t - t0).as_secs_f64() * 1e3, t.elapsed().as_secs_f64() * 1e3))
            }
        })
        .buffer_unordered(args.clients)
        .collect()
        .await;
    let submit_secs = t0.elapsed().as_secs_f64();
    let timed = latencies.into_iter().collect::<anyhow::Result<Vec<(f64, f64)>>>()?;
    if let Some(path) = &args.latencies {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        for (started, latency) in &timed {
            writeln!(out, "{run},{started:.3},{latency:.3}")?;
        }
    }
    let latencies: Vec<f64> = timed.into_iter().map(|(_, latency)| latency).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n = svc
            .query_i64(&format!(
                "SELECT count(*) FILTER (WHERE status IN ('COMPLETED', 'FAILED')) AS n FROM backups \
                  WHERE name LIKE 'burst-{run}-%'"
            ))
            .await?;
        if n as usize >= args.burst {
            break;
        }
        if Instant::now() > deadline {
            bail!("burst {run}: only {n} of {} backups ended after 600 s", args.burst);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failed = svc
        .query_i64(&format!("SELECT count(*) AS n FROM backups WHERE name LIKE 'burst-{run}-%' AND status = 'FAILED'"))
        .await?;
    if failed > 0 {
        bail!("burst {run}: {failed} backups FAILED");
    }
    let span = query_f64s(
        &svc.db,
        &format!(
            "SELECT extract(epoch FROM max(updated) - min(created))::float8 AS x FROM backups WHERE name LIKE 'burst-{run}-%'"
        ),
    )
    .await?;
    let lat = query_f64s(
        &svc.db,
        &format!(
            "SELECT (extract(epoch FROM updated - created) * 1000)::float8 AS x FROM backups WHERE name LIKE 'burst-{run}-%'"
        ),
    )
    .await?;
    svc.own_queries += 2;
    tokio::time::sleep(STATS_SETTLE).await;
    let c1 = commits(&admin, &svc.db_name).await?;
    let own = (svc.own_queries - own_before) as f64;
    let background = background_per_s * tc.elapsed().as_secs_f64();
    f.commits_per_job = ((c1 - c0) as f64 - own - background) / args.burst as f64;
    f.submit_p50_ms = percentile(&latencies, 50.0);
    f.submit_p99_ms = percentile(&latencies, 99.0);
    f.submit_rate = args.burst as f64 / submit_secs;
    f.e2e_jobs_per_s = args.burst as f64 / span[0];
    f.burst_db_p50_ms = percentile(&lat, 50.0);
    f.burst_db_p99_ms = percentile(&lat, 99.0);
    Ok(())
}

/// `pgbench -N -T 10 -c 4 -j 2` on a scratch database of the same server.
fn pgbench_tps() -> anyhow::Result<f64> {
    let db = format!("cairn_bench_pgbench_{}", uuid::Uuid::new_v4().simple());
    let pg = ["-h", "127.0.0.1", "-U", "postgres"];
    run(Command::new("createdb").args(pg).arg(&db))?;
    let result = (|| {
        run(Command::new("pgbench").args(pg).args(["-i", "-q", "-s", "10", &db]))?;
        let out = run(Command::new("pgbench").args(pg).args(["-N", "-T", "10", "-c", "4", "-j", "2", &db]))?;
        out.lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|x| x.parse::<f64>().ok())
            .with_context(|| format!("no tps in pgbench output: {out}"))
    })();
    let _ = run(Command::new("dropdb").args(pg).args(["--force", &db]));
    result
}

/// One run of the Celery peer's `best` configuration: (jobs/s, p50 ms).
fn celery(dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    let out = run(Command::new(dir.join("venv/bin/python")).current_dir(dir).args([
        "bench.py",
        "--name",
        "best",
        "--pool",
        "threads",
        "-c",
        "4",
        "--prefetch",
        "4",
        "--acks-late",
        "1",
        "--runs",
        "1",
    ]))?;
    let last = out.lines().rev().find(|l| l.starts_with('{')).context("no summary from the Celery peer")?;
    let v: serde_json::Value = serde_json::from_str(last)?;
    Ok((v["e2e_jobs_per_s"].as_f64().context("e2e_jobs_per_s")?, v["lat_p50_ms"].as_f64().context("lat_p50_ms")?))
}
