//! Offline estimate of what one incremental backup of a PostgreSQL data
//! directory would store under several block sizes and compression schemes
//! (issue 3: an incremental should store <= 0.5x what restic adds).
//!
//! Why offline: the stored bytes of a scheme depend only on which blocks
//! changed and how their bytes compress, so comparing the parent and child
//! snapshots directly (without the service) isolates the choice of block
//! size and framing from everything else, and is cheap to rerun.
//!
//! - `make` builds the data set as `data-path` does (`pgbench -i -s 60`,
//!   clean stop = parent; start, `pgbench -T 10 -c 2 -j 2`, CHECKPOINT,
//!   stop = child), copies both with `cp -a`, backs the live directory up
//!   with restic before and after the round (bytes added = `du -sb` of the
//!   repository before/after) and records each relation file's relkind.
//! - `analyse` walks the child; a block is changed when it differs from the
//!   parent's same file at the same index (new blocks are changed). Zero
//!   blocks are stored as nothing, as cairn does. Each frame is stored raw
//!   when zstd does not make it smaller, as cairn does.
//!
//! Results, 2026-11-26, 2 shared cores (load ~7 from other builds), PG 15,
//! `pgbench -i -s 60`; "+hashes" = plus the manifest's 16 B block hashes of
//! ALL files as cairn's manifest carries today (cairn's real `backup_tree`
//! on the same pairs stores within 0.1 MiB of the (a) row). MiB and ratio to
//! restic's added bytes for the same child (`du -sb` of its repository):
//!
//! | set: round, restic adds          | block | (a) z1 today | (b) z1      | (b) z3      | (c) z1      | (c) z3      | (d) XOR z1 |
//! |----------------------------------|-------|--------------|-------------|-------------|-------------|-------------|------------|
//! | 1: -T 10 = 6110 tx, 43.4 MiB     | 16 K  | 21.5 0.494   | 18.9 0.435  | 16.9 0.389  | 18.5 0.425  | 16.7 0.385  | 5.3 0.121  |
//! |                                  |  8 K  | 16.9 0.390   | 14.5 0.335  | 12.9 0.297  | 14.2 0.328  | 12.7 0.293  | 6.8 0.156  |
//! |                                  |  4 K  | 17.2 0.395   | 11.9 0.274  | 11.4 0.262  | 11.6 0.267  | 11.2 0.258  | 9.9 0.228  |
//! | 2: -t 12000 tx, 42.8 MiB         | 16 K  | 29.3 0.686   | 25.8 0.603  | 22.8 0.534  | 25.5 0.597  | 22.7 0.531  | 2.9 0.069  |
//! |                                  |  8 K  | 23.5 0.549   | 19.9 0.465  | 17.3 0.403  | 19.6 0.457  | 17.0 0.399  | 4.4 0.102  |
//! |                                  |  4 K  | 22.0 0.515   | 13.0 0.305  | 12.6 0.295  | 12.8 0.298  | 12.4 0.290  | 7.3 0.171  |
//!
//! The manifest's share at 4 KiB is 5.9-6.2 MiB; with hashes of changed
//! files only (unchanged files pointing at the parent's), 4 KiB (b) z1 is
//! 9.3 / 10.7 MiB = 0.213 / 0.250. restic re-stores heap and index whole
//! (per class, set 1: heap 21.2, index 20.8, WAL 1.4, other 0.1 MiB), so
//! its bytes barely grow with the transaction count while cairn's do.
//! Single-thread zstd CPU throughput on the changed blocks (set 1): (a)
//! 390 / 380 / 540 MB/s at 4 / 8 / 16 KiB, (b) z1 820 / 610 / 650, (b) z3
//! 580 / 475 / 500; blake3 of all blocks of changed files 3.1-4.9 GB/s.
//! (d) needs the parent's bytes at backup time, which cairn does not have.
//!
//! Second pass, 2026-11-26 (quiet machine, `pgbench -T 10` = 28,326
//! transactions, restic adds 65.1 MiB; `/var/tmp/pgb`), 4 KiB blocks,
//! stored MiB (heap / index / WAL / total, ratio to restic without the
//! manifest): (b) z1 6.0 / 6.9 / 23.5 / 36.5 (0.561); (b) z1 with matches
//! from 5 bytes, cairn's `block_compressor` since, 6.1 / 6.0 / 20.3 / 32.4
//! (0.499) at 669 MB/s against 685; (b) z3 32.3 (0.497) at 393 MB/s. With
//! the manifest (6.2 MiB, block hashes of every file): 0.655 -> 0.593.
//! `pg-blocks cairn --block-kib 4`, the real code on the same pair: 42.8
//! -> 38.7 MiB (0.657 -> 0.595).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_bench::{Table, run};
use clap::{Parser, Subcommand};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// cairn reads and compresses files in 1 MiB chunks; a run never crosses one.
const CHUNK: usize = 1 << 20;
/// Block sizes compared.
const BLOCK_SIZES: [usize; 3] = [4 << 10, 8 << 10, 16 << 10];
/// Bytes of one block hash in the manifest.
const HASH_BYTES: u64 = 16;

#[derive(Parser, Debug)]
#[command(about = "per-class changed blocks and stored bytes of one PostgreSQL incremental, by scheme")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Make `<dir>/parent`, `<dir>/child`, `<dir>/relkinds.txt` and
    /// `<dir>/restic.txt` (removes earlier ones).
    Make {
        #[arg(long, default_value = "/work/pgblocks")]
        dir: PathBuf,
        #[arg(long, default_value_t = 60)]
        scale: u32,
        #[arg(long, default_value_t = 10)]
        secs: u32,
        /// Run this many transactions instead of `secs` seconds.
        #[arg(long)]
        transactions: Option<u32>,
        #[arg(long, default_value_t = 55461)]
        port: u16,
    },
    /// Print the tables for `<dir>/parent` -> `<dir>/child`.
    Analyse {
        #[arg(long, default_value = "/work/pgblocks")]
        dir: PathBuf,
    },
    /// cairn's real backup code (`cairn_delta::backup_tree`) on the pair:
    /// a full backup of the parent, then the child against it; checks the
    /// model of scheme (a) above against what cairn stores.
    Cairn {
        #[arg(long, default_value = "/work/pgblocks")]
        dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        block_kib: u32,
        /// Then restore the 2-link chain (`restore_chain`, which syncs) and
        /// restic's latest snapshot (`restic restore` + `sync`), each from a
        /// warm cache into a fresh directory under this one: on a disk and
        /// on a tmpfs, they separate the disk's share from the CPU's.
        #[arg(long)]
        restore_under: Option<PathBuf>,
    },
    /// As the service runs it: `cp -a` the parent to `<dir>/live-cairn`,
    /// full backup (cairn and restic), one more pgbench round on that same
    /// directory (same inodes, so WAL renames are seen), incremental of both.
    CairnLive {
        #[arg(long, default_value = "/work/pgblocks")]
        dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        block_kib: u32,
        #[arg(long, default_value_t = 10)]
        secs: u32,
        #[arg(long, default_value_t = 55461)]
        port: u16,
    },
    /// Where a stored backup's bytes went: raw and stored bytes of its runs
    /// by top directory (`pg_wal`, `base`, ...) from its manifest file (a
    /// shared frame's stored bytes are split in proportion to raw bytes).
    Manifest {
        /// Path of a `manifest` object in a `file://` artifact store.
        file: PathBuf,
    },
    /// restic's added bytes per file class: one fresh repository per class,
    /// the class's files of the parent then of the child (`--files-from`).
    /// Cross-class deduplication is lost, so the sum can exceed the total.
    ResticClasses {
        #[arg(long, default_value = "/work/pgblocks")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Make { dir, scale, secs, transactions, port } => make(&dir, scale, secs, transactions, port),
        Cmd::Analyse { dir } => analyse(&dir),
        Cmd::ResticClasses { dir } => restic_classes(&dir),
        Cmd::Cairn { dir, block_kib, restore_under } => cairn(&dir, block_kib, restore_under.as_deref()),
        Cmd::Manifest { file } => manifest_bytes(&file),
        Cmd::CairnLive { dir, block_kib, secs, port } => cairn_live(&dir, block_kib, secs, port),
    }
}

// ---------------------------------------------------------------- make

fn sh(line: &str) -> anyhow::Result<String> {
    run(Command::new("sh").args(["-c", line]))
}

fn pg_ctl(data: &Path, log: &Path, port: u16, action: &str) -> anyhow::Result<()> {
    sh(&format!(
        "runuser -u postgres -- {PG_BIN}/pg_ctl -D {} -o \"-p {port} -k /tmp -c listen_addresses=''\" -l {} -w {action}",
        data.display(),
        log.display()
    ))
    .map(|_| ())
}

fn du(path: &Path) -> anyhow::Result<u64> {
    sh(&format!("du -sb {}", path.display()))?.split_whitespace().next().and_then(|s| s.parse().ok()).context("du")
}

/// restic backup of `src` (as `.`, like data-path) into `repo`: (seconds,
/// bytes added). The page cache is warmed first and `sync` ends the timing.
fn restic_backup(src: &Path, repo: &Path, cache: &Path) -> anyhow::Result<(f64, u64)> {
    sh(&format!("tar -C {} -cf - . > /dev/null && sync", src.display()))?;
    let before = du(repo)?;
    let t = Instant::now();
    sh(&format!(
        "cd {} && RESTIC_PASSWORD=bench RESTIC_CACHE_DIR={} restic -q -r {} backup . && sync",
        src.display(),
        cache.display(),
        repo.display()
    ))?;
    Ok((t.elapsed().as_secs_f64(), du(repo)? - before))
}

/// data-path's round: start, `pgbench -T secs -c 2 -j 2` (or, with
/// `transactions`, `-t transactions/2` per client: the same change volume
/// whatever the machine's load), CHECKPOINT, stop. Returns pgbench's report.
fn pg_round(data: &Path, log: &Path, port: u16, secs: u32, transactions: Option<u32>) -> anyhow::Result<String> {
    let load = match transactions {
        Some(n) => format!("-t {}", n.div_ceil(2)),
        None => format!("-T {secs}"),
    };
    pg_ctl(data, log, port, "start")?;
    let r = sh(&format!("runuser -u postgres -- pgbench -h /tmp -p {port} -U postgres {load} -c 2 -j 2 postgres"))
        .and_then(|out| {
            sh(&format!("runuser -u postgres -- psql -h /tmp -p {port} -U postgres -qc CHECKPOINT postgres"))?;
            Ok(out)
        });
    pg_ctl(data, log, port, "stop")?;
    r
}

fn make(dir: &Path, scale: u32, secs: u32, transactions: Option<u32>, port: u16) -> anyhow::Result<()> {
    let (live, parent, child, repo, cache, log) = (
        dir.join("live"),
        dir.join("parent"),
        dir.join("child"),
        dir.join("restic-repo"),
        dir.join("restic-cache"),
        dir.join("pg.log"),
    );
    std::fs::create_dir_all(dir)?;
    sh(&format!("chown postgres {}", dir.display()))?;
    for d in [&live, &parent, &child, &repo, &cache] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    let psql = |data_port: u16, sql: &str| {
        sh(&format!("runuser -u postgres -- psql -h /tmp -p {data_port} -U postgres -Atc \"{sql}\" postgres"))
    };
    sh(&format!("runuser -u postgres -- {PG_BIN}/initdb -D {} -U postgres -A trust > /dev/null", live.display()))?;
    pg_ctl(&live, &log, port, "start")?;
    let r = sh(&format!("runuser -u postgres -- pgbench -h /tmp -p {port} -U postgres -i -q -s {scale} postgres"));
    pg_ctl(&live, &log, port, "stop")?;
    r?;
    sh(&format!("cp -a {} {}", live.display(), parent.display()))?;
    sh(&format!("RESTIC_PASSWORD=bench restic init -q -r {}", repo.display()))?;
    let (ps, pb) = restic_backup(&live, &repo, &cache)?;
    let report = pg_round(&live, &log, port, secs, transactions)?;
    let summary: Vec<&str> =
        report.lines().filter(|l| l.starts_with("number of transactions actually") || l.starts_with("tps")).collect();
    std::fs::write(dir.join("pgbench.txt"), summary.join("\n") + "\n")?;
    sh(&format!("cp -a {} {}", live.display(), child.display()))?;
    let (cs, cb) = restic_backup(&live, &repo, &cache)?;
    let text =
        format!("restic parent: seconds {ps:.3} added_bytes {pb}\nrestic child: seconds {cs:.3} added_bytes {cb}\n");
    print!("{text}");
    std::fs::write(dir.join("restic.txt"), text)?;
    // relkinds, from a throw-away copy so the child stays as the round left it
    let scratch = dir.join("scratch");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    sh(&format!("cp -a {} {}", child.display(), scratch.display()))?;
    pg_ctl(&scratch, &log, port, "start")?;
    let kinds = psql(
        port,
        "select pg_relation_filepath(oid), relkind, relname from pg_class where pg_relation_filepath(oid) is not null",
    );
    pg_ctl(&scratch, &log, port, "stop")?;
    std::fs::write(dir.join("relkinds.txt"), kinds?)?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

fn manifest_bytes(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let m = cairn_delta::decode_manifest(&bytes)?;
    // top directory -> (files stored, blocks, raw bytes, stored bytes)
    let mut by_dir: BTreeMap<String, (u64, u64, u64, f64)> = BTreeMap::new();
    for e in &m.entries {
        let cairn_delta::EntryKind::File(f) = &e.kind else { continue };
        let runs = f.runs();
        if runs.is_empty() {
            continue;
        }
        let top = e.path.split('/').next().unwrap_or("").to_owned();
        let row = by_dir.entry(top).or_default();
        row.0 += 1;
        for r in runs {
            row.1 += r.count;
            if r.compression == cairn_delta::Compression::Zero {
                continue;
            }
            row.2 += r.raw_len;
            row.3 += r.stored_len as f64 * r.raw_len as f64 / r.frame_len as f64;
        }
    }
    println!(
        "{}: format {}, {} KiB blocks, manifest {} B",
        file.display(),
        m.header.format_version,
        m.header.block_size >> 10,
        bytes.len()
    );
    let mut t = Table::new(&["top directory", "files stored", "blocks", "raw MiB", "stored MiB"]);
    for (dir, (files, blocks, raw, stored)) in by_dir {
        t.row(vec![dir, files.to_string(), blocks.to_string(), mib(raw), format!("{:.1}", stored / 1048576.0)]);
    }
    print!("{}", t.render());
    Ok(())
}

fn cairn(dir: &Path, block_kib: u32, restore_under: Option<&Path>) -> anyhow::Result<()> {
    let opts = cairn_delta::BackupOptions { block_size: block_kib << 10, ..Default::default() };
    let ids = cairn_delta::LinkIds { backup_id: uuid::Uuid::new_v4(), instance_id: uuid::Uuid::new_v4() };
    let staging = tempfile_dir(dir, "cairn-staging-full")?;
    let full = cairn_delta::backup_tree(&dir.join("parent"), None, ids, &opts, &staging, &mut |_| {})?;
    println!(
        "cairn full of parent, {block_kib} KiB blocks: stored {} B (manifest {} B)",
        full.stored_bytes,
        full.manifest_bytes.len()
    );
    let ids = cairn_delta::LinkIds { backup_id: uuid::Uuid::new_v4(), ..ids };
    let staging_incr = tempfile_dir(dir, "cairn-staging-incr")?;
    let t = Instant::now();
    let incr = cairn_delta::backup_tree(
        &dir.join("child"),
        Some((&full.manifest, &full.checksum)),
        ids,
        &opts,
        &staging_incr,
        &mut |_| {},
    )?;
    let s = t.elapsed().as_secs_f64();
    println!(
        "cairn incremental of child: stored {} B = {} MiB (manifest {} B) in {s:.2} s; {:?}",
        incr.stored_bytes,
        mib(incr.stored_bytes),
        incr.manifest_bytes.len(),
        incr.stats
    );
    if let Some((_, r)) = restic_figures(dir) {
        println!("cairn incremental / restic added: {:.3}", incr.stored_bytes as f64 / r as f64);
    }
    // Where the incremental's bytes went, by top directory.
    let kept = dir.join("cairn-incr.manifest");
    std::fs::write(&kept, &incr.manifest_bytes)?;
    manifest_bytes(&kept)?;
    if let Some(under) = restore_under {
        restore_both(dir, under, [&full, &incr])?;
    }
    std::fs::remove_dir_all(&staging)?;
    std::fs::remove_dir_all(&staging_incr)?;
    Ok(())
}

/// Packs of staged backups, read in place.
struct StagedPacks(HashMap<(uuid::Uuid, String), PathBuf>);

impl cairn_delta::PackSource for StagedPacks {
    fn read_range(&self, backup_id: uuid::Uuid, pack: &str, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let path = self.0.get(&(backup_id, pack.to_owned())).ok_or(std::io::ErrorKind::NotFound)?;
        let mut buf = vec![0; len as usize];
        File::open(path)?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// Restores `links` with cairn and restic's latest snapshot of the child
/// under `under`, and prints both times and their ratio.
fn restore_both(dir: &Path, under: &Path, links: [&cairn_delta::BackupOutput; 2]) -> anyhow::Result<()> {
    let mut packs = HashMap::new();
    let mut chain = Vec::new();
    for l in links {
        for p in &l.packs {
            sh(&format!("cat {} > /dev/null", p.path.display()))?;
            packs.insert((l.manifest.header.backup_id, p.name.clone()), p.path.clone());
        }
        chain.push(cairn_delta::ChainLink { manifest: l.manifest.clone(), checksum: l.checksum.clone() });
    }
    let packs = StagedPacks(packs);
    let target = tempfile_dir(under, "restore-cairn")?;
    sh("sync")?;
    let t = Instant::now();
    let stats = cairn_delta::restore_chain(&chain, &packs, &target, &mut |_, _| {})?;
    let cairn_s = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&target)?;
    let target = tempfile_dir(under, "restore-restic")?;
    sh(&format!(
        "cat {}/restic-repo/*/* {}/restic-repo/data/*/* > /dev/null 2>&1; sync",
        dir.display(),
        dir.display()
    ))?;
    let t = Instant::now();
    sh(&format!(
        "RESTIC_PASSWORD=bench restic -q -r {} restore latest --target {} && sync",
        dir.join("restic-repo").display(),
        target.display()
    ))?;
    let restic_s = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&target)?;
    println!(
        "restore under {}: cairn {cairn_s:.2} s (write {:.2} s, sync {:.2} s, {} MiB written), restic {restic_s:.2} s, cairn / restic {:.2}",
        under.display(),
        stats.write_time.as_secs_f64(),
        stats.sync_time.as_secs_f64(),
        mib(stats.bytes_written),
        cairn_s / restic_s
    );
    Ok(())
}

fn cairn_live(dir: &Path, block_kib: u32, secs: u32, port: u16) -> anyhow::Result<()> {
    let live = dir.join("live-cairn");
    let work = tempfile_dir(dir, "live-cairn-work")?;
    if live.exists() {
        std::fs::remove_dir_all(&live)?;
    }
    sh(&format!("cp -a {} {}", dir.join("parent").display(), live.display()))?;
    let (repo, cache) = (work.join("restic-repo"), work.join("restic-cache"));
    sh(&format!("RESTIC_PASSWORD=bench restic init -q -r {}", repo.display()))?;
    let opts = cairn_delta::BackupOptions { block_size: block_kib << 10, ..Default::default() };
    let ids = cairn_delta::LinkIds { backup_id: uuid::Uuid::new_v4(), instance_id: uuid::Uuid::new_v4() };
    let full = cairn_delta::backup_tree(&live, None, ids, &opts, &tempfile_dir(&work, "full")?, &mut |_| {})?;
    let (_, rfull) = restic_backup(&live, &repo, &cache)?;
    let report = pg_round(&live, &dir.join("pg.log"), port, secs, None)?;
    let tps = report.lines().find(|l| l.starts_with("tps")).unwrap_or("tps ?");
    println!("round: {tps}");
    let ids = cairn_delta::LinkIds { backup_id: uuid::Uuid::new_v4(), ..ids };
    sh("sync")?;
    let t = Instant::now();
    let incr = cairn_delta::backup_tree(
        &live,
        Some((&full.manifest, &full.checksum)),
        ids,
        &opts,
        &tempfile_dir(&work, "incr")?,
        &mut |_| {},
    )?;
    let cs = t.elapsed().as_secs_f64();
    let (rs, rincr) = restic_backup(&live, &repo, &cache)?;
    let renamed = incr
        .manifest
        .entries
        .iter()
        .filter(|e| matches!(&e.kind, cairn_delta::EntryKind::File(f) if f.base.is_some()))
        .count();
    println!("live pair, {block_kib} KiB: full cairn {} B, restic {rfull} B", full.stored_bytes);
    println!(
        "incremental: cairn {} B ({} MiB, manifest {} B, {renamed} files renamed from the parent) in {cs:.2} s; \
         restic adds {rincr} B ({} MiB) in {rs:.2} s; cairn / restic bytes {:.3}, time {:.3}",
        incr.stored_bytes,
        mib(incr.stored_bytes),
        incr.manifest_bytes.len(),
        mib(rincr),
        incr.stored_bytes as f64 / rincr as f64,
        cs / rs
    );
    println!("{:?}", incr.stats);
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

fn tempfile_dir(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = dir.join(name);
    if d.exists() {
        std::fs::remove_dir_all(&d)?;
    }
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn restic_classes(dir: &Path) -> anyhow::Result<()> {
    let kinds = Kinds::load(&dir.join("relkinds.txt"))?;
    let (parent, child) = (dir.join("parent"), dir.join("child"));
    let mut t = Table::new(&["class", "restic adds for parent, MiB", "restic adds for child, MiB", "child bytes"]);
    let mut sum = 0;
    for class in CLASSES {
        let work = dir.join(format!("restic-class-{}", class.name()));
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        std::fs::create_dir_all(&work)?;
        let (repo, cache) = (work.join("repo"), work.join("cache"));
        sh(&format!("RESTIC_PASSWORD=bench restic init -q -r {}", repo.display()))?;
        let mut added = Vec::new();
        for (name, root) in [("parent", &parent), ("child", &child)] {
            let list = work.join(format!("{name}.list"));
            let names: Vec<String> = files(root)?.into_iter().filter(|r| kinds.class(r) == class).collect();
            std::fs::write(&list, names.join("\n") + "\n")?;
            let before = du(&repo)?;
            sh(&format!(
                "cd {} && RESTIC_PASSWORD=bench RESTIC_CACHE_DIR={} restic -q -r {} backup --files-from {}",
                root.display(),
                cache.display(),
                repo.display(),
                list.display()
            ))?;
            added.push(du(&repo)? - before);
        }
        sum += added[1];
        t.row(vec![class.name().into(), mib(added[0]), mib(added[1]), added[1].to_string()]);
    }
    t.row(vec!["sum".into(), String::new(), mib(sum), sum.to_string()]);
    print!("{}", t.render());
    Ok(())
}

// ---------------------------------------------------------------- analyse

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Class {
    Heap,
    Index,
    Wal,
    Other,
}

const CLASSES: [Class; 4] = [Class::Heap, Class::Index, Class::Wal, Class::Other];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Heap => "heap",
            Class::Index => "index",
            Class::Wal => "WAL",
            Class::Other => "other",
        }
    }
}

/// relfilenode -> relkind, from `relkinds.txt` (`base/5/16397|r|name`).
/// Template databases are copies of the same catalog, so a relfilenode not
/// seen under its own database is looked up by number alone.
struct Kinds {
    by_path: HashMap<String, char>,
    by_node: HashMap<String, char>,
}

impl Kinds {
    fn load(path: &Path) -> anyhow::Result<Kinds> {
        let mut k = Kinds { by_path: HashMap::new(), by_node: HashMap::new() };
        for line in std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.lines() {
            let mut f = line.split('|');
            let (Some(p), Some(kind)) = (f.next(), f.next().and_then(|s| s.chars().next())) else { continue };
            k.by_path.insert(p.to_owned(), kind);
            if let Some(node) = p.rsplit('/').next() {
                k.by_node.insert(node.to_owned(), kind);
            }
        }
        Ok(k)
    }

    /// Heap = main fork (any segment) of a table, TOAST table or matview;
    /// index = main fork of an index; fsm/vm forks and the rest are other.
    fn class(&self, rel: &str) -> Class {
        if rel.starts_with("pg_wal/") {
            return Class::Wal;
        }
        let parts: Vec<&str> = rel.split('/').collect();
        let main_fork = |name: &str| {
            let node = name.split('.').next().unwrap_or(name);
            (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then(|| node.to_owned())
        };
        let node = match parts.as_slice() {
            ["base", db, name] => main_fork(name).map(|n| (format!("base/{db}/{n}"), n)),
            ["global", name] => main_fork(name).map(|n| (format!("global/{n}"), n)),
            _ => None,
        };
        let Some((path, node)) = node else { return Class::Other };
        match self.by_path.get(&path).or_else(|| self.by_node.get(&node)) {
            Some('r' | 't' | 'm') => Class::Heap,
            Some('i') => Class::Index,
            _ => Class::Other,
        }
    }
}

/// How changed blocks are grouped into zstd frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// (a) cairn today: each run of consecutive changed blocks of a 1 MiB chunk.
    Runs,
    /// (b) all changed blocks of a 1 MiB chunk of the file.
    Chunk,
    /// (c) all changed blocks of the file, cut into frames of <= 1 MiB.
    File,
    /// (d) each changed block XOR the parent's block, per 1 MiB chunk.
    XorChunk,
}

struct Scheme {
    label: &'static str,
    short: &'static str,
    framing: Framing,
    level: i32,
    /// zstd's own parameters for the level (false), or cairn's
    /// `block_compressor` (true: matches from 5 bytes at levels below 3).
    cairn: bool,
}

const SCHEMES: [Scheme; 8] = [
    Scheme {
        label: "(a) run frames, zstd 1 [format 2]",
        short: "(a) z1",
        framing: Framing::Runs,
        level: 1,
        cairn: false,
    },
    Scheme { label: "(b) 1 MiB-chunk frame, zstd 1", short: "(b) z1", framing: Framing::Chunk, level: 1, cairn: false },
    Scheme {
        label: "(b) 1 MiB-chunk frame, zstd 1, matches from 5 B [cairn now]",
        short: "(b) z1 m5",
        framing: Framing::Chunk,
        level: 1,
        cairn: true,
    },
    Scheme { label: "(b) 1 MiB-chunk frame, zstd 3", short: "(b) z3", framing: Framing::Chunk, level: 3, cairn: false },
    Scheme {
        label: "(c) per-file frames <= 1 MiB, zstd 1",
        short: "(c) z1",
        framing: Framing::File,
        level: 1,
        cairn: false,
    },
    Scheme {
        label: "(c) per-file frames <= 1 MiB, zstd 3",
        short: "(c) z3",
        framing: Framing::File,
        level: 3,
        cairn: false,
    },
    Scheme {
        label: "(d) XOR parent, chunk frame, zstd 1",
        short: "(d) z1",
        framing: Framing::XorChunk,
        level: 1,
        cairn: false,
    },
    Scheme {
        label: "(d) XOR parent, chunk frame, zstd 3",
        short: "(d) z3",
        framing: Framing::XorChunk,
        level: 3,
        cairn: false,
    },
];
const NS: usize = SCHEMES.len();

/// Figures of one class at one block size.
#[derive(Default, Clone)]
struct Acc {
    files_changed: u64,
    file_bytes: u64,
    blocks_changed: u64,
    changed_bytes: u64,
    zero_changed_bytes: u64,
    manifest_bytes: u64,
    stored: [u64; NS],
    /// Raw bytes handed to zstd (the same for every non-XOR scheme).
    fed: [u64; NS],
    frames: [u64; NS],
    cpu: [Duration; NS],
    wall: [Duration; NS],
    hash_cpu: Duration,
}

impl Acc {
    fn add(&mut self, o: &Acc) {
        self.files_changed += o.files_changed;
        self.file_bytes += o.file_bytes;
        self.blocks_changed += o.blocks_changed;
        self.changed_bytes += o.changed_bytes;
        self.zero_changed_bytes += o.zero_changed_bytes;
        self.manifest_bytes += o.manifest_bytes;
        for s in 0..NS {
            self.stored[s] += o.stored[s];
            self.fed[s] += o.fed[s];
            self.frames[s] += o.frames[s];
            self.cpu[s] += o.cpu[s];
            self.wall[s] += o.wall[s];
        }
        self.hash_cpu += o.hash_cpu;
    }
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// zstd compressors by (level, cairn's parameters), and the frame accounting.
struct Zstd {
    by_level: BTreeMap<(i32, bool), zstd::bulk::Compressor<'static>>,
}

impl Zstd {
    fn new() -> anyhow::Result<Zstd> {
        let mut by_level = BTreeMap::new();
        for s in &SCHEMES {
            if let std::collections::btree_map::Entry::Vacant(e) = by_level.entry((s.level, s.cairn)) {
                e.insert(match s.cairn {
                    true => cairn_delta::block_compressor(s.level)?,
                    false => zstd::bulk::Compressor::new(s.level)?,
                });
            }
        }
        Ok(Zstd { by_level })
    }

    /// Compresses one frame for scheme `s`, stored raw when zstd does not
    /// make it smaller.
    fn frame(&mut self, s: usize, raw: &[u8], acc: &mut Acc) -> anyhow::Result<()> {
        if raw.is_empty() {
            return Ok(());
        }
        let c = self.by_level.get_mut(&(SCHEMES[s].level, SCHEMES[s].cairn)).context("compressor")?;
        let (cpu0, wall0) = (thread_cpu(), Instant::now());
        let out = c.compress(raw)?;
        acc.wall[s] += wall0.elapsed();
        acc.cpu[s] += thread_cpu() - cpu0;
        acc.stored[s] += out.len().min(raw.len()) as u64;
        acc.fed[s] += raw.len() as u64;
        acc.frames[s] += 1;
        Ok(())
    }
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// One file at one block size; `None` when its content did not change.
fn file_at(child: &File, parent: Option<&File>, bs: usize, z: &mut Zstd) -> anyhow::Result<Option<Acc>> {
    let clen = child.metadata()?.len() as usize;
    let plen = match parent {
        Some(p) => p.metadata()?.len() as usize,
        None => 0,
    };
    let mut acc = Acc::default();
    let mut cbuf = vec![0u8; CHUNK];
    let mut pbuf = vec![0u8; CHUNK];
    // (c): changed data of the file not yet in a frame
    let mut file_frame: Vec<u8> = Vec::with_capacity(CHUNK);
    let file_schemes: Vec<usize> = (0..NS).filter(|&s| SCHEMES[s].framing == Framing::File).collect();
    let mut any_changed = false;
    let mut off = 0;
    while off < clen {
        let n = (clen - off).min(CHUNK);
        child.read_exact_at(&mut cbuf[..n], off as u64)?;
        let pn = plen.saturating_sub(off).min(CHUNK);
        if let Some(p) = parent {
            p.read_exact_at(&mut pbuf[..pn], off as u64)?;
        }
        let (c, p) = (&cbuf[..n], &pbuf[..pn]);
        // block hashing, as cairn does for every block it reads (context for the timings)
        let h0 = thread_cpu();
        for b in c.chunks(bs) {
            std::hint::black_box(blake3::hash(b));
        }
        acc.hash_cpu += thread_cpu() - h0;

        let mut run: Vec<u8> = Vec::new();
        let mut chunk_frame: Vec<u8> = Vec::new();
        let mut xor_frame: Vec<u8> = Vec::new();
        for (i, cb) in c.chunks(bs).enumerate() {
            let from = i * bs;
            let pb = if from < p.len() { &p[from..(from + bs).min(p.len())] } else { &[][..] };
            if cb == pb {
                flush(z, &mut run, Framing::Runs, &mut acc)?;
                continue;
            }
            any_changed = true;
            acc.blocks_changed += 1;
            acc.changed_bytes += cb.len() as u64;
            if is_zero(cb) {
                // cairn stores a changed zero block as nothing; it ends a data run
                acc.zero_changed_bytes += cb.len() as u64;
                flush(z, &mut run, Framing::Runs, &mut acc)?;
                continue;
            }
            run.extend_from_slice(cb);
            chunk_frame.extend_from_slice(cb);
            xor_frame.extend(cb.iter().enumerate().map(|(j, &x)| x ^ pb.get(j).copied().unwrap_or(0)));
            if file_frame.len() + cb.len() > CHUNK {
                for &s in &file_schemes {
                    z.frame(s, &file_frame, &mut acc)?;
                }
                file_frame.clear();
            }
            file_frame.extend_from_slice(cb);
        }
        flush(z, &mut run, Framing::Runs, &mut acc)?;
        flush(z, &mut chunk_frame, Framing::Chunk, &mut acc)?;
        flush(z, &mut xor_frame, Framing::XorChunk, &mut acc)?;
        off += n;
    }
    for &s in &file_schemes {
        z.frame(s, &file_frame, &mut acc)?;
    }
    if !any_changed && clen == plen && parent.is_some() {
        return Ok(None);
    }
    acc.files_changed = 1;
    acc.file_bytes = clen as u64;
    acc.manifest_bytes = clen.div_ceil(bs) as u64 * HASH_BYTES;
    Ok(Some(acc))
}

/// Compresses `buf` as one frame for every scheme with `framing`, then empties it.
fn flush(z: &mut Zstd, buf: &mut Vec<u8>, framing: Framing, acc: &mut Acc) -> anyhow::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    for (s, scheme) in SCHEMES.iter().enumerate() {
        if scheme.framing == framing {
            z.frame(s, buf, acc)?;
        }
    }
    buf.clear();
    Ok(())
}

/// Regular files under `root`, as paths relative to it, sorted.
fn files(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let ft = e.file_type()?;
            let r = rel.join(e.file_name());
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                out.push(r.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `restic child: seconds S added_bytes B` from `restic.txt`.
fn restic_figures(dir: &Path) -> Option<(f64, u64)> {
    let text = std::fs::read_to_string(dir.join("restic.txt")).ok()?;
    let line = text.lines().find(|l| l.starts_with("restic child:"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    Some((w.get(3)?.parse().ok()?, w.get(5)?.parse().ok()?))
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 20) as f64)
}

fn mbps(bytes: u64, d: Duration) -> String {
    if d.is_zero() { "-".into() } else { format!("{:.0}", bytes as f64 / 1e6 / d.as_secs_f64()) }
}

fn analyse(dir: &Path) -> anyhow::Result<()> {
    let (parent, child) = (dir.join("parent"), dir.join("child"));
    if !parent.is_dir() || !child.is_dir() {
        bail!("{} and {} must exist (run `make` first)", parent.display(), child.display());
    }
    let kinds = Kinds::load(&dir.join("relkinds.txt"))?;
    let restic = restic_figures(dir);
    let mut z = Zstd::new()?;
    // [block size][class]
    let mut accs: Vec<BTreeMap<Class, Acc>> = vec![BTreeMap::new(); BLOCK_SIZES.len()];
    let mut files_seen = 0u64;
    // blocks of every file of the child, by block size
    let mut all_blocks = [0u64; BLOCK_SIZES.len()];
    for rel in files(&child)? {
        files_seen += 1;
        let len = std::fs::metadata(child.join(&rel))?.len();
        for (k, &bs) in BLOCK_SIZES.iter().enumerate() {
            all_blocks[k] += len.div_ceil(bs as u64);
        }
        let class = kinds.class(&rel);
        let c = File::open(child.join(&rel))?;
        let p = File::open(parent.join(&rel)).ok();
        for (k, &bs) in BLOCK_SIZES.iter().enumerate() {
            if let Some(a) = file_at(&c, p.as_ref(), bs, &mut z)? {
                accs[k].entry(class).or_default().add(&a);
            }
        }
    }

    println!("parent {} -> child {}: {files_seen} files in the child", parent.display(), child.display());
    if let Ok(p) = std::fs::read_to_string(dir.join("pgbench.txt")) {
        println!("the round: {}", p.trim().replace('\n', "; "));
    }
    match restic {
        Some((s, b)) => println!("restic adds {} MiB ({b} B) for the child, in {s:.1} s", mib(b)),
        None => println!("restic figures: none ({}/restic.txt missing)", dir.display()),
    }
    for (k, &bs) in BLOCK_SIZES.iter().enumerate() {
        let mut total = Acc::default();
        for a in accs[k].values() {
            total.add(a);
        }
        let get = |c: Option<Class>| c.map_or(total.clone(), |c| accs[k].get(&c).cloned().unwrap_or_default());
        let cols: Vec<Option<Class>> = CLASSES.iter().copied().map(Some).chain([None]).collect();
        let mut header = vec![format!("block {} KiB, MiB", bs >> 10)];
        header.extend(cols.iter().map(|c| c.map_or("total".to_owned(), |c| c.name().to_owned())));
        header.push("total / restic".into());
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut t = Table::new(&h);
        let ratio = |b: u64| restic.map_or("-".to_owned(), |(_, r)| format!("{:.3}", b as f64 / r as f64));
        let mut count = vec!["files changed (count)".to_owned()];
        count.extend(cols.iter().map(|&c| get(c).files_changed.to_string()));
        t.row(count);
        let mut row = |name: &str, f: &dyn Fn(&Acc) -> u64, with_ratio: bool| {
            let mut cells = vec![name.to_owned()];
            cells.extend(cols.iter().map(|&c| mib(f(&get(c)))));
            cells.push(if with_ratio { ratio(f(&total)) } else { String::new() });
            t.row(cells);
        };
        row("bytes of files changed", &|a| a.file_bytes, false);
        row("changed blocks, raw", &|a| a.changed_bytes, true);
        row("  of which zero blocks", &|a| a.zero_changed_bytes, false);
        row("manifest block hashes (16 B/block)", &|a| a.manifest_bytes, true);
        for (s, sc) in SCHEMES.iter().enumerate() {
            row(sc.label, &|a| a.stored[s], true);
        }
        for (s, sc) in SCHEMES.iter().enumerate() {
            row(&format!("{} + changed files' hashes", sc.short), &|a| a.stored[s] + a.manifest_bytes, true);
        }
        // cairn's manifest today carries every file's block hashes
        let all_hashes = all_blocks[k] * HASH_BYTES;
        t.row(vec![
            "manifest hashes of ALL files (cairn today)".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            mib(all_hashes),
            ratio(all_hashes),
        ]);
        for (s, sc) in SCHEMES.iter().enumerate() {
            let b = total.stored[s] + all_hashes;
            t.row(vec![
                format!("{} + all files' hashes", sc.short),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                mib(b),
                ratio(b),
            ]);
        }
        println!();
        print!("{}", t.render());

        let mut tt = Table::new(&[
            &format!("block {} KiB scheme", bs >> 10),
            "frames",
            "MiB in",
            "MiB stored",
            "CPU s",
            "MB/s (CPU)",
            "MB/s (wall)",
        ]);
        for (s, sc) in SCHEMES.iter().enumerate() {
            tt.row(vec![
                sc.label.to_owned(),
                total.frames[s].to_string(),
                mib(total.fed[s]),
                mib(total.stored[s]),
                format!("{:.2}", total.cpu[s].as_secs_f64()),
                mbps(total.fed[s], total.cpu[s]),
                mbps(total.fed[s], total.wall[s]),
            ]);
        }
        tt.row(vec![
            "blake3 of every block of changed files".into(),
            String::new(),
            mib(total.file_bytes),
            String::new(),
            format!("{:.2}", total.hash_cpu.as_secs_f64()),
            mbps(total.file_bytes, total.hash_cpu),
            String::new(),
        ]);
        println!();
        print!("{}", tt.render());
    }
    Ok(())
}
