//! Data-path benchmark (issue 3): cairn through the real service against
//! `tar | zstd -1 -T0`, restic and borg, on the same data in the same run.
//!
//! - Data set 1: a stopped PostgreSQL 15 data directory made by
//!   `pgbench -i -s 60` (cached under the work directory), then rounds of
//!   `pgbench -T 10` + `CHECKPOINT` + stop, each followed by an incremental.
//! - Data set 2: incompressible files (BLAKE3 XOF output) with 1 % of their
//!   8 KiB blocks rewritten per round; after the rounds every tool measures,
//!   cairn alone continues to a 10-link chain and compares its restore with
//!   the restore of a full backup of the same final data.
//!
//! cairn runs as a user runs it: `cairn-api` and two `cairn-worker`
//! processes (release builds, one fresh deployment per data set and run),
//! backups submitted over HTTP and polled until `COMPLETED`, restores through
//! `POST /instances` until `ACTIVE`. Every timed operation starts after a
//! `sync` and ends with one, so data one tool leaves in the page cache is not
//! charged to the next; reads come from a warm page cache for every tool.
//! Peak worker RSS is `VmHWM` of the worker processes at the end.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_bench::*;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scale {
    /// pgbench -s 10, 256 MiB random, pgbench -T 5: a fast check.
    Quick,
    /// The issue's: pgbench -s 60, 2 GiB random, pgbench -T 10.
    Full,
}

#[derive(Parser, Debug)]
#[command(about = "cairn data-path benchmark against tar|zstd, restic and borg")]
struct Args {
    #[arg(long, value_enum, default_value_t = Scale::Full)]
    scale: Scale,
    /// Runs; figures are medians over runs (ratios are taken within a run).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Incremental rounds measured with every tool.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Links of the chain whose restore is compared with a 1-link restore.
    #[arg(long, default_value_t = 10)]
    chain: usize,
    /// Skip data set 1 (PostgreSQL) or 2 (random).
    #[arg(long)]
    skip_pg: bool,
    #[arg(long)]
    skip_random: bool,
    /// Work directory: cached data sets, volumes, repositories, restores.
    #[arg(long, default_value = "/var/tmp/cairn-bench")]
    work_dir: PathBuf,
    /// Port of the private PostgreSQL that makes and changes data set 1.
    #[arg(long, default_value_t = 55441)]
    pg_port: u16,
    /// cairn's block size in KiB (`CAIRN_BLOCK_SIZE`); the service's
    /// default when not given.
    #[arg(long)]
    block_size: Option<u32>,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Figures of one run, by name, in the order they were recorded.
#[derive(Default)]
struct Figures(Vec<(String, f64)>);

impl Figures {
    fn put(&mut self, name: impl Into<String>, v: f64) {
        let name = name.into();
        eprintln!("  {name}: {v:.3}");
        self.0.push((name, v));
    }

    fn get(&self, name: &str) -> f64 {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or(f64::NAN)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = chrono::Utc::now();
    let work = args.work_dir.clone();
    std::fs::create_dir_all(&work)?;
    run(Command::new("chown").arg("postgres").arg(&work))?;
    let mut runs: Vec<Figures> = Vec::new();
    for r in 1..=args.runs {
        let mut f = Figures::default();
        if !args.skip_pg {
            eprintln!("run {r}: data set 1 (PostgreSQL)");
            pg_data_set(&args, &mut f).await?;
        }
        if !args.skip_random {
            eprintln!("run {r}: data set 2 (random)");
            random_data_set(&args, &mut f).await?;
        }
        runs.push(f);
    }

    println!(
        "cairn data-path benchmark, {} UTC, {}, scale {:?}, {} run(s), cairn block size {}; times in s, \
         sizes in MiB; ratios are per run, then the median",
        started.format("%Y-%m-%d %H:%M"),
        machine(),
        args.scale,
        args.runs,
        args.block_size.map_or("default (4 KiB)".to_owned(), |k| format!("{k} KiB"))
    );
    let mut t = Table::new(&["figure", "median", "runs", "target", "verdict"]);
    let names: Vec<String> = runs[0].0.iter().map(|(n, _)| n.clone()).collect();
    for name in names {
        let vals: Vec<f64> = runs.iter().map(|f| f.get(&name)).collect();
        let m = median(&vals);
        let (target, verdict) = target_of(&name, m);
        t.row(vec![
            name,
            format!("{m:.3}"),
            vals.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" "),
            target,
            verdict,
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// The target for a ratio row, and whether the median meets it.
fn target_of(name: &str, m: f64) -> (String, String) {
    let limit = if name.ends_with("full: cairn / tar|zstd") {
        1.2
    } else if name.ends_with("full: cairn / restic") {
        0.4
    } else if name.contains("time: cairn / restic") && name.contains("incr") {
        0.3
    } else if (name.starts_with("pg incr") && name.contains("bytes: cairn / restic"))
        || name.ends_with("restore: cairn / restic")
    {
        0.5
    } else if name.contains("chain restore / 1-link restore") {
        1.3
    } else if name.contains("peak worker RSS") {
        256.0
    } else {
        return (String::new(), String::new());
    };
    (format!("<= {limit}"), if m <= limit { "ok".into() } else { "MISSED".into() })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// `du -sb` of a path, bytes.
fn du(path: &Path) -> anyhow::Result<u64> {
    let out = run(Command::new("du").arg("-sb").arg(path))?;
    out.split_whitespace().next().and_then(|s| s.parse().ok()).context("du output")
}

/// Reads `path` (a file or a tree) into the page cache, untimed. Every
/// restore reads its repository from a warm cache: otherwise a restore of
/// a backup written long ago reads from disk and one written just before
/// from memory, and the comparison measures the cache (seen: a 10-link
/// chain restore whose root pack had been evicted by the peers' writes,
/// against a 1-link restore of a full backup made seconds before).
fn warm(path: &Path) -> anyhow::Result<()> {
    let line = format!("find {} -type f -exec cat {{}} + > /dev/null", path.display());
    run(Command::new("sh").args(["-c", &line])).map(|_| ())
}

fn sync() -> anyhow::Result<()> {
    run(&mut Command::new("sync")).map(|_| ())
}

/// Times a shell line, `sync` before (untimed) and after (timed).
fn timed(line: &str) -> anyhow::Result<f64> {
    sync()?;
    let t = Instant::now();
    run(Command::new("sh").args(["-c", &format!("{line} && sync")]))?;
    Ok(t.elapsed().as_secs_f64())
}

fn reset_dir(p: &Path) -> anyhow::Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p)?;
    }
    std::fs::create_dir_all(p)?;
    Ok(())
}

/// The peers, each with its own repository under `dir`.
struct Peers {
    dir: PathBuf,
    src: PathBuf,
}

const RESTIC_ENV: &str = "RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=";
const BORG_ENV: &str =
    "BORG_PASSPHRASE= BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes";

impl Peers {
    fn init(dir: PathBuf, src: PathBuf) -> anyhow::Result<Peers> {
        reset_dir(&dir)?;
        let p = Peers { dir, src };
        run(Command::new("sh").args([
            "-c",
            &format!(
                "{RESTIC_ENV}{c} restic init -q -r {d}/restic && {BORG_ENV} borg init -e none {d}/borg",
                c = p.dir.join("restic-cache").display(),
                d = p.dir.display()
            ),
        ]))?;
        Ok(p)
    }

    fn restic(&self, cmd: &str) -> String {
        format!(
            "{RESTIC_ENV}{c} restic -q -r {d}/restic {cmd}",
            c = self.dir.join("restic-cache").display(),
            d = self.dir.display()
        )
    }

    /// Full backup with `tar | zstd -1 -T0`: (seconds, bytes).
    fn tar_full(&self) -> anyhow::Result<(f64, u64)> {
        let out = self.dir.join("full.tar.zst");
        let s = timed(&format!("tar -C {} -cf - . | zstd -q -1 -T0 -f -o {}", self.src.display(), out.display()))?;
        Ok((s, std::fs::metadata(&out)?.len()))
    }

    fn tar_restore(&self) -> anyhow::Result<f64> {
        let target = self.dir.join("restore-tar");
        reset_dir(&target)?;
        warm(&self.dir.join("full.tar.zst"))?;
        let s = timed(&format!(
            "zstd -q -d -c {} | tar -C {} -xf -",
            self.dir.join("full.tar.zst").display(),
            target.display()
        ))?;
        std::fs::remove_dir_all(&target)?;
        Ok(s)
    }

    /// restic backup: (seconds, bytes added to the repository).
    fn restic_backup(&self) -> anyhow::Result<(f64, u64)> {
        let before = du(&self.dir.join("restic"))?;
        let s = timed(&format!("cd {} && {}", self.src.display(), self.restic("backup .")))?;
        Ok((s, du(&self.dir.join("restic"))? - before))
    }

    /// The floor of any restore on this disk: `cp -a` of the same final
    /// tree from the page cache, nothing to decompress, check or look up.
    fn copy_floor(&self) -> anyhow::Result<f64> {
        let target = self.dir.join("restore-copy");
        reset_dir(&target)?;
        warm(&self.src)?;
        let s = timed(&format!("cp -a {}/. {}", self.src.display(), target.display()))?;
        std::fs::remove_dir_all(&target)?;
        Ok(s)
    }

    fn restic_restore(&self) -> anyhow::Result<f64> {
        let target = self.dir.join("restore-restic");
        reset_dir(&target)?;
        warm(&self.dir.join("restic"))?;
        let s = timed(&self.restic(&format!("restore latest --target {}", target.display())))?;
        std::fs::remove_dir_all(&target)?;
        Ok(s)
    }

    /// borg create (default compression, lz4): (seconds, bytes added).
    fn borg_backup(&self, archive: &str) -> anyhow::Result<(f64, u64)> {
        let before = du(&self.dir.join("borg"))?;
        let s = timed(&format!(
            "cd {} && {BORG_ENV} borg create {}::{archive} .",
            self.src.display(),
            self.dir.join("borg").display()
        ))?;
        Ok((s, du(&self.dir.join("borg"))? - before))
    }

    fn borg_restore(&self, archive: &str) -> anyhow::Result<f64> {
        let target = self.dir.join("restore-borg");
        reset_dir(&target)?;
        warm(&self.dir.join("borg"))?;
        let s = timed(&format!(
            "cd {} && {BORG_ENV} borg extract {}::{archive}",
            target.display(),
            self.dir.join("borg").display()
        ))?;
        std::fs::remove_dir_all(&target)?;
        Ok(s)
    }
}

/// cairn through its service: backups and restores of one instance.
struct Cairn {
    svc: Service,
    instance: String,
}

impl Cairn {
    async fn start(args: &Args, volume: &Path, name: &str) -> anyhow::Result<Cairn> {
        let data = args.work_dir.join(format!("cairn-{name}"));
        reset_dir(&data)?;
        let opts = ServiceOptions {
            extra_volume_root: volume.parent().map(Path::to_path_buf),
            block_size_kib: args.block_size,
            ..Default::default()
        };
        let svc = Service::start(data, &opts).await?;
        let instance = svc.register(name, volume).await?;
        Ok(Cairn { svc, instance })
    }

    /// A backup (full without parent) through HTTP: (seconds, stored bytes,
    /// id, bytes of its manifest, which the stored bytes include).
    async fn backup(&self, name: &str, parent: Option<&str>) -> anyhow::Result<(f64, u64, String, u64)> {
        sync()?;
        let t = Instant::now();
        let id = self.svc.submit_backup(&self.instance, name, parent).await?;
        let b = self.svc.wait_backup(&id, Duration::from_millis(10)).await?;
        sync()?;
        let s = t.elapsed().as_secs_f64();
        if b["status"] != "COMPLETED" {
            bail!("cairn backup {name} ended {}: {}", b["status"], b["fail_reason"]);
        }
        let manifest = b["locationRef"].as_str().and_then(|l| l.strip_prefix("file://")).context("locationRef")?;
        let manifest_bytes = std::fs::metadata(manifest).with_context(|| format!("manifest {manifest}"))?.len();
        Ok((s, b["bytes"].as_u64().context("bytes")?, id, manifest_bytes))
    }

    /// Bytes `backup`'s manifest would take in format 3, which repeated
    /// every block's hash in every link: its chain's manifests, found
    /// through the API, resolved and re-encoded.
    async fn format_3_manifest_bytes(&self, backup: &str) -> anyhow::Result<u64> {
        let mut paths = Vec::new();
        let mut next = Some(backup.to_owned());
        while let Some(id) = next {
            let b = self.svc.wait_backup(&id, Duration::from_millis(10)).await?;
            let location = b["locationRef"].as_str().and_then(|l| l.strip_prefix("file://")).context("locationRef")?;
            paths.push(PathBuf::from(location));
            next = b["parent_id"].as_str().map(str::to_owned);
        }
        let mut links = Vec::with_capacity(paths.len());
        for path in paths.iter().rev() {
            links.push(cairn_delta::ChainLink::from_bytes(&std::fs::read(path)?)?);
        }
        cairn_delta::resolve_chain(&mut links)?;
        let mut last = links.pop().context("empty chain")?.manifest;
        last.header.format_version = 3;
        Ok(cairn_delta::encode_manifest(&last).len() as u64)
    }

    /// A restore of `backup` into a new instance, until ACTIVE: seconds.
    async fn restore(&self, name: &str, backup: &str) -> anyhow::Result<f64> {
        warm(&self.svc.data_dir.join("artifacts"))?;
        sync()?;
        let t = Instant::now();
        let body = json!({"instance": {"name": name, "restorePoint": {"backupRef": backup}}});
        let r: Value =
            self.svc.client.post(format!("{}/instances", self.svc.base)).json(&body).send().await?.json().await?;
        let id = r["instance"]["id"].as_str().with_context(|| format!("restore refused: {r}"))?.to_owned();
        let inst = self.svc.wait_instance(&id, Duration::from_millis(10)).await?;
        sync()?;
        let s = t.elapsed().as_secs_f64();
        if inst["status"] != "ACTIVE" {
            bail!("cairn restore {name} ended {}: {}", inst["status"], inst["fail_reason"]);
        }
        if let Some(path) = inst["volume"]["path"].as_str() {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(s)
    }
}

fn ratio(f: &mut Figures, name: &str, a: f64, b: f64) {
    f.put(name, a / b);
}

/// Full backups with every tool, into `f` under `ds`.
async fn full_round(ds: &str, cairn: &Cairn, peers: &Peers, f: &mut Figures) -> anyhow::Result<String> {
    // warm the page cache for everyone
    run(Command::new("sh").args(["-c", &format!("tar -C {} -cf - . > /dev/null", peers.src.display())]))?;
    let (cs, cb, id, cm) = cairn.backup("full", None).await?;
    let (ts, tb) = peers.tar_full()?;
    let (rs, rb) = peers.restic_backup()?;
    let (bs, bb) = peers.borg_backup("r0")?;
    f.put(format!("{ds} full: cairn s"), cs);
    f.put(format!("{ds} full: tar|zstd s"), ts);
    f.put(format!("{ds} full: restic s"), rs);
    f.put(format!("{ds} full: borg s"), bs);
    f.put(format!("{ds} full: cairn MiB"), mib(cb));
    f.put(format!("{ds} full: cairn's manifest MiB"), mib(cm));
    f.put(format!("{ds} full: tar|zstd MiB"), mib(tb));
    f.put(format!("{ds} full: restic MiB"), mib(rb));
    f.put(format!("{ds} full: borg MiB"), mib(bb));
    ratio(f, &format!("{ds} full: cairn / tar|zstd"), cs, ts);
    ratio(f, &format!("{ds} full: cairn / restic"), cs, rs);
    Ok(id)
}

async fn incremental_round(
    ds: &str,
    k: usize,
    parent: &str,
    cairn: &Cairn,
    peers: &Peers,
    f: &mut Figures,
) -> anyhow::Result<String> {
    let (cs, cb, id, cm) = cairn.backup(&format!("incr-{k}"), Some(parent)).await?;
    let (rs, rb) = peers.restic_backup()?;
    let (bs, bb) = peers.borg_backup(&format!("r{k}"))?;
    f.put(format!("{ds} incr {k}: cairn s"), cs);
    f.put(format!("{ds} incr {k}: restic s"), rs);
    f.put(format!("{ds} incr {k}: borg s"), bs);
    f.put(format!("{ds} incr {k}: cairn MiB"), mib(cb));
    f.put(format!("{ds} incr {k}: cairn's manifest MiB"), mib(cm));
    f.put(format!("{ds} incr {k}: cairn's manifest in format 3 MiB"), mib(cairn.format_3_manifest_bytes(&id).await?));
    f.put(format!("{ds} incr {k}: restic MiB"), mib(rb));
    f.put(format!("{ds} incr {k}: borg MiB"), mib(bb));
    ratio(f, &format!("{ds} incr {k} time: cairn / restic"), cs, rs);
    ratio(f, &format!("{ds} incr {k} bytes: cairn / restic"), cb as f64, rb as f64);
    Ok(id)
}

async fn restore_round(
    ds: &str,
    last: &str,
    links: usize,
    rounds: usize,
    cairn: &Cairn,
    peers: &Peers,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let cs = cairn.restore("restored", last).await?;
    let ts = peers.tar_restore()?;
    let rs = peers.restic_restore()?;
    let bs = peers.borg_restore(&format!("r{rounds}"))?;
    let floor = peers.copy_floor()?;
    f.put(format!("{ds} restore ({links}-link chain): cairn s"), cs);
    f.put(format!("{ds} restore: tar|zstd (full only) s"), ts);
    f.put(format!("{ds} restore: restic s"), rs);
    f.put(format!("{ds} restore: borg s"), bs);
    f.put(format!("{ds} restore floor: cp -a of the same tree s"), floor);
    ratio(f, &format!("{ds} restore: cairn / restic"), cs, rs);
    ratio(f, &format!("{ds} restore: cairn / cp -a"), cs, floor);
    ratio(f, &format!("{ds} restore: restic / cp -a"), rs, floor);
    Ok(())
}

/// Makes (once) and returns the cached stopped cluster of `pgbench -i -s`.
fn pg_base(args: &Args, scale: u32) -> anyhow::Result<PathBuf> {
    let dir = args.work_dir.join(format!("pg-s{scale}"));
    let ready = args.work_dir.join(format!("pg-s{scale}.ready"));
    if ready.exists() {
        return Ok(dir);
    }
    eprintln!("making {} with pgbench -i -s {scale} (cached for later runs)", dir.display());
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let d = dir.display().to_string();
    run(Command::new("runuser").args([
        "-u",
        "postgres",
        "--",
        &format!("{PG_BIN}/initdb"),
        "-D",
        &d,
        "-U",
        "postgres",
        "-A",
        "trust",
    ]))?;
    pg_ctl(args, &dir, "start")?;
    let r = run(Command::new("runuser").args([
        "-u",
        "postgres",
        "--",
        "pgbench",
        "-h",
        "/tmp",
        "-p",
        &args.pg_port.to_string(),
        "-U",
        "postgres",
        "-i",
        "-q",
        "-s",
        &scale.to_string(),
        "postgres",
    ]));
    pg_ctl(args, &dir, "stop")?;
    r?;
    std::fs::write(&ready, b"")?;
    Ok(dir)
}

fn pg_ctl(args: &Args, dir: &Path, action: &str) -> anyhow::Result<()> {
    let log = args.work_dir.join("pg.log");
    run(Command::new("runuser").args([
        "-u",
        "postgres",
        "--",
        &format!("{PG_BIN}/pg_ctl"),
        "-D",
        &dir.display().to_string(),
        "-o",
        &format!("-p {} -k /tmp -c listen_addresses=''", args.pg_port),
        "-l",
        &log.display().to_string(),
        "-w",
        action,
    ]))
    .map(|_| ())
}

/// One round of load on the stopped cluster at `dir`: start, `pgbench -T`,
/// CHECKPOINT, stop. Returns the transactions pgbench ran.
fn pg_round(args: &Args, dir: &Path, secs: u32) -> anyhow::Result<u64> {
    pg_ctl(args, dir, "start")?;
    let port = args.pg_port.to_string();
    let conn = ["-h", "/tmp", "-p", &port, "-U", "postgres"];
    let r = run(Command::new("runuser").args(["-u", "postgres", "--", "pgbench"]).args(conn).args([
        "-T",
        &secs.to_string(),
        "-c",
        "2",
        "-j",
        "2",
        "postgres",
    ]))
    .and_then(|report| {
        run(Command::new("runuser").args(["-u", "postgres", "--", "psql"]).args(conn).args([
            "-qc",
            "CHECKPOINT",
            "postgres",
        ]))
        .map(|_| report)
    });
    pg_ctl(args, dir, "stop")?;
    let report = r?;
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .with_context(|| format!("no transaction count in pgbench's report: {report}"))
}

async fn pg_data_set(args: &Args, f: &mut Figures) -> anyhow::Result<()> {
    let (scale, secs) = match args.scale {
        Scale::Quick => (10, 5),
        Scale::Full => (60, 10),
    };
    let base = pg_base(args, scale)?;
    let vols = args.work_dir.join("volumes");
    std::fs::create_dir_all(&vols)?;
    let vol = vols.join("pg");
    if vol.exists() {
        std::fs::remove_dir_all(&vol)?;
    }
    run(Command::new("cp").arg("-a").arg(&base).arg(&vol))?;
    let cairn = Cairn::start(args, &vol, "pg").await?;
    let peers = Peers::init(args.work_dir.join("peers-pg"), vol.clone())?;
    let mut last = full_round("pg", &cairn, &peers, f).await?;
    for k in 1..=args.rounds {
        // The change a round makes depends on how many transactions the
        // machine ran in its seconds: recorded, it explains the spread.
        let transactions = pg_round(args, &vol, secs)?;
        f.put(format!("pg incr {k}: pgbench transactions"), transactions as f64);
        last = incremental_round("pg", k, &last, &cairn, &peers, f).await?;
    }
    restore_round("pg", &last, args.rounds + 1, args.rounds, &cairn, &peers, f).await?;
    f.put("pg: peak worker RSS MiB", cairn.svc.worker_peak_rss_kib() as f64 / 1024.0);
    drop(cairn);
    std::fs::remove_dir_all(&peers.dir)?;
    Ok(())
}

const RANDOM_FILE: u64 = 64 << 20;
const PAGE: u64 = 8 << 10;

/// Fills `path` with `size` bytes of BLAKE3 XOF output keyed by `seed`.
fn write_random(path: &Path, size: u64, seed: &str) -> anyhow::Result<()> {
    let mut xof = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let file = std::fs::File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = buf.len().min((size - at) as usize);
        xof.fill(&mut buf[..n]);
        file.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Rewrites 1 % of the 8 KiB blocks of every file with new random data.
fn rewrite_one_percent(dir: &Path, files: u64, round: usize) -> anyhow::Result<()> {
    let pages = RANDOM_FILE / PAGE;
    let mut xof = blake3::Hasher::new().update(format!("round-{round}").as_bytes()).finalize_xof();
    let mut page = vec![0u8; PAGE as usize];
    for i in 0..files {
        let file = std::fs::OpenOptions::new().write(true).open(dir.join(format!("f{i:03}")))?;
        for _ in 0..pages / 100 {
            let mut pick = [0u8; 8];
            xof.fill(&mut pick);
            let at = (u64::from_le_bytes(pick) % pages) * PAGE;
            xof.fill(&mut page);
            file.write_all_at(&page, at)?;
        }
    }
    Ok(())
}

async fn random_data_set(args: &Args, f: &mut Figures) -> anyhow::Result<()> {
    let files = match args.scale {
        Scale::Quick => 4,
        Scale::Full => 32,
    };
    let vol = args.work_dir.join("volumes").join("random");
    reset_dir(&vol)?;
    for i in 0..files {
        write_random(&vol.join(format!("f{i:03}")), RANDOM_FILE, &format!("file-{i}"))?;
    }
    sync()?;
    let cairn = Cairn::start(args, &vol, "random").await?;
    let peers = Peers::init(args.work_dir.join("peers-random"), vol.clone())?;
    let mut last = full_round("random", &cairn, &peers, f).await?;
    for k in 1..=args.rounds {
        rewrite_one_percent(&vol, files, k)?;
        last = incremental_round("random", k, &last, &cairn, &peers, f).await?;
    }
    restore_round("random", &last, args.rounds + 1, args.rounds, &cairn, &peers, f).await?;
    drop(peers);
    std::fs::remove_dir_all(args.work_dir.join("peers-random"))?;
    // cairn alone: extend the chain to `--chain` links, then compare its
    // restore with a 1-link (full) backup of the same final data.
    for k in args.rounds + 1..args.chain {
        rewrite_one_percent(&vol, files, k)?;
        last = cairn.backup(&format!("incr-{k}"), Some(&last)).await?.2;
    }
    let chain_s = cairn.restore("chain-restore", &last).await?;
    let (_, _, full, _) = cairn.backup("full-of-final", None).await?;
    let one_s = cairn.restore("one-link-restore", &full).await?;
    f.put(format!("random restore: {}-link chain s", args.chain), chain_s);
    f.put("random restore: 1-link full of the same data s", one_s);
    ratio(f, &format!("random restore: {}-link chain restore / 1-link restore", args.chain), chain_s, one_s);
    f.put("random: peak worker RSS MiB", cairn.svc.worker_peak_rss_kib() as f64 / 1024.0);
    Ok(())
}
