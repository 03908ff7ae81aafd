//! Backing up a directory tree.
//!
//! Why it works this way:
//! - A cheap metadata-only walk comes first: it yields the progress total
//!   before any data is read and lets entries be processed in manifest
//!   (byte-sorted path) order, which is also what makes "the first link of a
//!   hard-linked inode" well defined.
//! - Each file is read once, in 1 MiB chunks, by one thread that does
//!   nothing else; a thread per core hashes each chunk's blocks, compares
//!   them with the parent's and compresses the changed ones; one more
//!   thread writes, hashes and syncs the packs. Channels between them are
//!   bounded, so memory does not depend on file sizes. The whole-file
//!   BLAKE3 is merged from the chunks' BLAKE3 subtrees (BLAKE3 is a tree
//!   hash), so it describes exactly the bytes whose blocks were stored
//!   without a second pass on the reading thread.
//! - Changed blocks are grouped into runs of consecutive blocks, and all the
//!   runs of a 1 MiB chunk share one zstd frame: a database changes pages
//!   here and there, and one page compressed alone compresses poorly. The
//!   chunk caps a frame, which keeps restore memory bounded.
//! - Each block is hashed once, as a subtree of its file's BLAKE3 tree
//!   ([`crate::tree_hash`]); the chunk's and the file's hashes are merged
//!   from the blocks' values.
//! - Packs are written to the caller's staging directory with `create_new`;
//!   on failure the packs written so far are removed, so a failed attempt
//!   leaves nothing that could be mistaken for a usable backup.
//! - A backup that reads no data (an empty volume, or one whose files are
//!   all unchanged) starts no thread and makes no zstd context, and does
//!   not create the staging directory: the hashing threads start with the
//!   first chunk read, the pack thread and the directory with the first
//!   frame to store. Thread starts and `mkdir` were a measurable share of
//!   a small job's CPU.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::DeltaError;
use crate::manifest::*;
use crate::sync::Syncer;
use crate::{BackupOptions, FORMAT_VERSION, LinkIds, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, Progress, codec};
use crate::{tree_hash, wide_hash};

/// Upper bound of the raw bytes in one stored run (one zstd frame).
pub const RUN_BYTES: usize = 1 << 20;
/// Files whose ctime is this close to the moment they are read are recorded
/// as "racy" so the next backup re-reads them (timestamps have a granularity
/// and a same-tick modification would otherwise go unnoticed).
const RACY_WINDOW: Duration = Duration::from_secs(1);
const PROGRESS_EVERY: u64 = 4 << 20;

/// A pack written into the staging directory, to be uploaded by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPack {
    /// Object name relative to the backup, e.g. `pack-00000`.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// BLAKE3 hex of the pack's bytes.
    pub blake3: String,
}

/// What a backup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupStats {
    /// Regular files whose content was read.
    pub files_read: u64,
    /// Regular files referenced from the parent without being read.
    pub files_referenced: u64,
    /// Blocks stored with data (zstd or raw).
    pub blocks_stored: u64,
    /// Changed blocks that are all zero (recorded, no bytes stored).
    pub zero_blocks: u64,
    /// Blocks read that equal the parent's block at the same index.
    pub blocks_unchanged: u64,
    /// Bytes of file content read.
    pub bytes_read: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Fifos, sockets and devices: not backed up.
    pub skipped_special: Vec<String>,
    /// Entries that disappeared (or changed type) while being backed up.
    pub vanished: Vec<String>,
}

/// Result of [`backup_tree`].
#[derive(Debug, Clone)]
pub struct BackupOutput {
    pub manifest: Manifest,
    /// The encoded manifest, as it must be stored.
    pub manifest_bytes: Vec<u8>,
    /// BLAKE3 hex of `manifest_bytes`; children name their parent by it.
    pub checksum: String,
    pub packs: Vec<StagedPack>,
    /// Sum of pack sizes plus the manifest's size.
    pub stored_bytes: u64,
    pub stats: BackupStats,
}

/// Back up `source` (full if `parent` is `None`, else incremental against the
/// parent manifest and its checksum), writing packs into `staging_dir`
/// (created, with its parents, when the first pack is).
pub fn backup_tree(
    source: &Path,
    parent: Option<(&Manifest, &str)>,
    ids: LinkIds,
    opts: &BackupOptions,
    staging_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BackupOutput, DeltaError> {
    check_options(opts)?;
    let (block_size, hash_kind) = match parent {
        None => (opts.block_size, BlockHashKind::FileTree),
        Some((p, sum)) => {
            check_parent(p, sum, ids)?;
            (p.header.block_size, p.header.block_hashes)
        }
    };
    let mut packs = PackSink::new(staging_dir, opts.pack_target_size);
    let mut b = Backup {
        parent: parent.map(|(m, _)| m),
        parent_inodes: None,
        block_size,
        hash_kind,
        packs: &mut packs,
        zstd_level: opts.zstd_level,
        stats: BackupStats::default(),
        done: 0,
        total: 0,
        last_report: 0,
        progress,
        throttle: Throttle::new(opts.read_limit),
    };
    let entries = b.run(source);
    let stats = std::mem::take(&mut b.stats);
    // On an error the pack thread removes what it wrote.
    let staged = packs.finish(entries.is_ok())?;
    let entries = entries?;
    let manifest = Manifest {
        header: Header {
            format_version: FORMAT_VERSION,
            backup_id: ids.backup_id,
            instance_id: ids.instance_id,
            parent: parent
                .map(|(p, sum)| ParentRef { backup_id: p.header.backup_id, checksum: sum.to_ascii_lowercase() }),
            block_size,
            block_hashes: hash_kind,
            packs: staged
                .iter()
                .map(|p| PackRef { name: p.name.clone(), size: p.size, blake3: p.blake3.clone() })
                .collect(),
        },
        entries,
        hashes: HashCoverage::All,
    };
    if let Err(e) = codec::validate(&manifest) {
        remove_all(&staged);
        return Err(e);
    }
    let manifest_bytes = codec::encode_manifest(&manifest);
    let checksum = checksum(&manifest_bytes);
    let stored_bytes = staged.iter().map(|p| p.size).sum::<u64>() + manifest_bytes.len() as u64;
    Ok(BackupOutput { manifest, manifest_bytes, checksum, packs: staged, stored_bytes, stats })
}

fn check_options(o: &BackupOptions) -> Result<(), DeltaError> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&o.block_size) || !o.block_size.is_power_of_two() {
        return Err(DeltaError::InvalidOptions(format!(
            "block_size {} must be a power of two in {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}",
            o.block_size
        )));
    }
    if o.pack_target_size == 0 {
        return Err(DeltaError::InvalidOptions("pack_target_size must be positive".into()));
    }
    if !zstd::compression_level_range().contains(&o.zstd_level) {
        return Err(DeltaError::InvalidOptions(format!(
            "zstd_level {} out of range {:?}",
            o.zstd_level,
            zstd::compression_level_range()
        )));
    }
    Ok(())
}

fn check_parent(p: &Manifest, sum: &str, ids: LinkIds) -> Result<(), DeltaError> {
    let fail = |reason: String| DeltaError::Parent { backup_id: p.header.backup_id, reason };
    if p.header.instance_id != ids.instance_id {
        return Err(fail(format!("belongs to instance {}, not {}", p.header.instance_id, ids.instance_id)));
    }
    if p.header.backup_id == ids.backup_id {
        return Err(fail("has the id of the backup being made".into()));
    }
    if !is_hex64(&sum.to_ascii_lowercase()) {
        return Err(fail(format!("checksum {sum:?} is not 64 hex digits")));
    }
    if p.hashes != HashCoverage::All {
        return Err(fail("holds only its stored blocks' hashes: resolve its chain first (resolve_chain)".into()));
    }
    codec::validate(p).map_err(|e| fail(e.to_string()))
}

struct Item {
    path: String,
    meta: fs::Metadata,
}

struct Backup<'a> {
    parent: Option<&'a Manifest>,
    /// The parent's regular files by inode, built when first needed: a file
    /// that is new at its path may be an old one renamed.
    parent_inodes: Option<HashMap<u64, (&'a str, &'a FileEntry)>>,
    block_size: u32,
    hash_kind: BlockHashKind,
    zstd_level: i32,
    packs: &'a mut PackSink,
    stats: BackupStats,
    done: u64,
    total: u64,
    last_report: u64,
    progress: &'a mut dyn FnMut(Progress),
    throttle: Throttle,
}

/// Bytes read from a file at once and handed to one hashing/compressing
/// thread: a multiple of every accepted block size, and the cap of a run.
const CHUNK_BYTES: usize = RUN_BYTES;

/// One chunk of a file, to be hashed, compared and compressed off the
/// reading thread.
struct ChunkJob<'m> {
    data: Vec<u8>,
    /// Index of the chunk's first block in its file.
    first_block: u64,
    /// Offset of the chunk in its file, for its part of the file's BLAKE3.
    offset: u64,
    /// The chunk is the whole file: its BLAKE3 is the file's.
    whole: bool,
    /// The parent's block hashes of this file, if it had one.
    parent_hashes: Option<&'m [BlockHash]>,
    reply: mpsc::SyncSender<Result<ChunkDone, String>>,
}

/// How the hashing threads hash blocks.
#[derive(Clone, Copy)]
struct Hashing {
    block_size: usize,
    kind: BlockHashKind,
    /// The hash of a full block of zeros, for a `Standalone` chain (unused
    /// otherwise).
    standalone_zero: BlockHash,
}

/// What a worker made of a chunk.
struct ChunkDone {
    /// The chunk as read: raw runs are written from it, not copied.
    data: Vec<u8>,
    digest: ChunkDigest,
    hashes: Vec<BlockHash>,
    runs: Vec<PreparedRun>,
    /// The frames the runs point into, and each one's decoded length.
    frames: Vec<(Payload, u64)>,
    blocks_stored: u64,
    zero_blocks: u64,
    blocks_unchanged: u64,
}

/// A chunk's part of its file's BLAKE3, computed on the hashing threads so
/// the reading thread only reads. BLAKE3 is a tree: a 1 MiB chunk at a
/// 1 MiB-aligned offset is a complete subtree, whose chaining value the
/// file's root hash is merged from ([`file_blake3`]).
enum ChunkDigest {
    Subtree(blake3::hazmat::ChainingValue),
    /// The root hash of a chunk that is the whole file.
    Root([u8; 32]),
}

/// A run of changed blocks, compressed (or not) but not yet in a pack.
struct PreparedRun {
    first_block: u64,
    count: u64,
    raw_len: u64,
    /// The chunk's frame holding the run's bytes and where they start in
    /// it; `None` for a run of zero blocks (nothing stored).
    stored: Option<(usize, u64)>,
}

/// The bytes of one frame.
enum Payload {
    /// All the chunk's changed blocks, compressed together.
    Zstd(Vec<u8>),
    /// Incompressible: this range of the chunk's data (one run), stored as
    /// it is.
    Raw(std::ops::Range<usize>),
}

/// A file being read, in the order files are read; its entry is completed
/// when the last of its chunks has been written.
struct FileInFlight<'m> {
    /// Its slot in the entries.
    pos: usize,
    path: PathBuf,
    rel: String,
    /// What the file's blocks are compared with: the parent's file at the
    /// same path, or at `base`.
    parent: Option<&'m FileEntry>,
    base: Option<String>,
    hashes: Vec<BlockHash>,
    runs: Vec<BlockRun>,
    /// The file's BLAKE3 so far: one subtree per chunk consumed, or the
    /// root of a file that is one chunk.
    digests: Vec<ChunkDigest>,
    /// Set once the whole file has been read.
    tail: Option<FileTail>,
}

struct FileTail {
    meta: fs::Metadata,
    read_start: SystemTime,
    size: u64,
}

/// A submitted chunk (or, for an empty file, none) in submission order.
struct Slot {
    reply: Option<mpsc::Receiver<Result<ChunkDone, String>>>,
    /// The file's last chunk: its entry can be completed after it.
    last: bool,
}

/// The ordered end of the pipeline: chunks come back from the workers in
/// any order but are consumed here in the order they were read, so packs
/// and entries come out exactly as a sequential backup would write them.
struct Pipeline<'m, 's> {
    jobs: Option<mpsc::SyncSender<ChunkJob<'m>>>,
    /// Starts the hashing threads; taken by the first chunk read, so a
    /// backup that reads no data starts none.
    start_workers: Option<Box<dyn FnOnce() + 's>>,
    slots: VecDeque<Slot>,
    files: VecDeque<FileInFlight<'m>>,
    /// Chunks in flight before the reader waits for the oldest one.
    max_in_flight: usize,
}

/// The compressor of stored blocks at `level`.
///
/// At the fast levels (below 3) zstd only takes matches of 6 bytes or
/// more. Database pages are rows of 4- and 8-byte fields and WAL records
/// of such rows, where 5-byte matches find much more at the same speed:
/// on the changed blocks of one 28,000-transaction pgbench round, level 1
/// stored the WAL's 210 MiB in 23.5 MiB and the tables' 207 MiB in
/// 12.9 MiB; with matches from 5 bytes, 20.3 and 12.1 MiB (level 3's
/// bytes) at level 1's speed (669 against 685 MB/s a core; level 3:
/// 393), by `pg-blocks analyse`, schemes "(b) z1" and "(b) z1 m5".
/// Frames decode the same either way.
pub fn block_compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    if level < 3 {
        compressor.set_parameter(zstd::zstd_safe::CParameter::MinMatch(5))?;
    }
    Ok(compressor)
}

/// Hashes, compares and compresses chunks until the job channel closes.
fn chunk_worker(jobs: &Mutex<mpsc::Receiver<ChunkJob<'_>>>, hashing: Hashing, zstd_level: i32) {
    let mut compressor = block_compressor(zstd_level).ok();
    // The changed runs of a chunk, gathered to be compressed as one frame.
    let mut gathered = Vec::with_capacity(CHUNK_BYTES);
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        let reply = job.reply.clone();
        let result = match compressor.as_mut() {
            Some(c) => prepare_chunk(job, &hashing, c, &mut gathered),
            None => Err(format!("zstd level {zstd_level} rejected")),
        };
        // The reader may have stopped on an error: nobody waits then.
        let _ = reply.send(result);
    }
}

fn prepare_chunk(
    job: ChunkJob<'_>,
    hashing: &Hashing,
    compressor: &mut zstd::bulk::Compressor<'static>,
    gathered: &mut Vec<u8>,
) -> Result<ChunkDone, String> {
    let ChunkJob { data, first_block, offset, whole, parent_hashes, .. } = job;
    let bs = hashing.block_size;
    // FileTree: the blocks' chaining values, merged into the chunk's.
    let mut values = Vec::new();
    if hashing.kind == BlockHashKind::FileTree {
        wide_hash::block_values(&data, offset, bs, &mut values);
    }
    let mut done = ChunkDone {
        data: Vec::new(),
        digest: ChunkDigest::Root([0; 32]),
        hashes: Vec::with_capacity(data.len().div_ceil(bs)),
        runs: Vec::new(),
        frames: Vec::new(),
        blocks_stored: 0,
        zero_blocks: 0,
        blocks_unchanged: 0,
    };
    // Runs as (first block, count, zero, byte range in data): the current
    // one, and those closed.
    let mut run: Option<(u64, u64, bool, usize, usize)> = None;
    let mut spans = Vec::new();
    let close = |run: &mut Option<_>, spans: &mut Vec<_>| spans.extend(run.take());
    for (i, block) in data.chunks(bs).enumerate() {
        let index = first_block + i as u64;
        let zero = is_zero(block);
        let h = match hashing.kind {
            BlockHashKind::Standalone if zero && block.len() == bs => hashing.standalone_zero,
            BlockHashKind::Standalone => block_hash(block),
            BlockHashKind::FileTree => tree_hash::truncate(&values[i]),
        };
        done.hashes.push(h);
        let from = i * bs;
        let to = from + block.len();
        if parent_hashes.and_then(|p| p.get(index as usize)) == Some(&h) {
            done.blocks_unchanged += 1;
            close(&mut run, &mut spans);
            continue;
        }
        if run.is_some_and(|r| r.2 != zero) {
            close(&mut run, &mut spans);
        }
        match &mut run {
            Some(r) => {
                r.1 += 1;
                r.4 = to;
            }
            None => run = Some((index, 1, zero, from, to)),
        }
        if zero {
            done.zero_blocks += 1;
        } else {
            done.blocks_stored += 1;
        }
    }
    close(&mut run, &mut spans);
    frame_runs(&data, &spans, compressor, gathered, &mut done)?;
    done.digest = match (hashing.kind, whole) {
        (BlockHashKind::FileTree, false) => ChunkDigest::Subtree(tree_hash::merge(&values)),
        (BlockHashKind::FileTree, true) if values.len() >= 2 => ChunkDigest::Root(tree_hash::merge_root(&values)),
        (_, true) => ChunkDigest::Root(*blake3::hash(&data).as_bytes()),
        (BlockHashKind::Standalone, false) => ChunkDigest::Subtree(tree_hash::subtree_value(&data, offset)),
    };
    done.data = data;
    Ok(done)
}

/// Puts a chunk's changed runs into frames: all of them compressed as one
/// zstd frame, or, if that does not make them smaller, each run stored raw
/// from the chunk itself.
fn frame_runs(
    data: &[u8],
    spans: &[(u64, u64, bool, usize, usize)],
    compressor: &mut zstd::bulk::Compressor<'static>,
    gathered: &mut Vec<u8>,
    done: &mut ChunkDone,
) -> Result<(), String> {
    let stored: Vec<_> = spans.iter().filter(|s| !s.2).collect();
    let compressed = match stored[..] {
        [] => None,
        [&(.., from, to)] => Some((compressor.compress(&data[from..to]), to - from)),
        _ => {
            gathered.clear();
            for &&(.., from, to) in &stored {
                gathered.extend_from_slice(&data[from..to]);
            }
            Some((compressor.compress(gathered), gathered.len()))
        }
    };
    let grouped = match compressed {
        Some((z, raw)) => {
            let z = z.map_err(|e| format!("compressing: {e}"))?;
            if z.len() < raw {
                done.frames.push((Payload::Zstd(z), raw as u64));
                true
            } else {
                false
            }
        }
        None => false,
    };
    let mut at = 0u64;
    for &(first_block, count, zero, from, to) in spans {
        let raw_len = (to - from) as u64;
        let stored = match (zero, grouped) {
            (true, _) => None,
            (false, true) => {
                at += raw_len;
                Some((0, at - raw_len))
            }
            (false, false) => {
                done.frames.push((Payload::Raw(from..to), raw_len));
                Some((done.frames.len() - 1, 0))
            }
        };
        done.runs.push(PreparedRun { first_block, count, raw_len, stored });
    }
    Ok(())
}

impl<'a> Backup<'a> {
    fn run(&mut self, source: &Path) -> Result<Vec<Entry>, DeltaError> {
        let items = self.walk(source)?;
        (self.progress)(Progress { done_bytes: 0, total_bytes: self.total });
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<ChunkJob<'_>>(threads);
        let jobs_rx = Mutex::new(jobs_rx);
        let bs = self.block_size as usize;
        let standalone_zero = match self.hash_kind {
            BlockHashKind::Standalone => block_hash(&vec![0u8; bs]),
            BlockHashKind::FileTree => [0; 16],
        };
        let hashing = Hashing { block_size: bs, kind: self.hash_kind, standalone_zero };
        let level = self.zstd_level;
        std::thread::scope(|scope| {
            let jobs_rx = &jobs_rx;
            let start_workers = move || {
                for _ in 0..threads {
                    scope.spawn(move || chunk_worker(jobs_rx, hashing, level));
                }
            };
            let mut pipe = Pipeline {
                jobs: Some(jobs_tx),
                start_workers: Some(Box::new(start_workers)),
                slots: VecDeque::new(),
                files: VecDeque::new(),
                max_in_flight: 2 * threads + 2,
            };
            let result = self.run_items(source, items, &mut pipe);
            // Closing the job channel ends the workers; the scope joins them.
            pipe.jobs = None;
            result
        })
    }

    fn run_items(
        &mut self,
        source: &Path,
        items: Vec<Item>,
        pipe: &mut Pipeline<'a, '_>,
    ) -> Result<Vec<Entry>, DeltaError> {
        let mut entries: Vec<Option<Entry>> = Vec::with_capacity(items.len());
        let mut first_links: HashMap<(u64, u64), String> = HashMap::new();
        for item in items {
            let full = if item.path.is_empty() { source.to_path_buf() } else { source.join(&item.path) };
            let m = &item.meta;
            let ft = m.file_type();
            let base = |kind| Entry {
                path: item.path.clone(),
                kind,
                mode: m.mode() & 0o7777,
                mtime: mtime_of(m),
                uid: m.uid(),
                gid: m.gid(),
            };
            if ft.is_dir() {
                self.stats.dirs += 1;
                entries.push(Some(base(EntryKind::Dir)));
            } else if ft.is_symlink() {
                let target = match fs::read_link(&full) {
                    Ok(t) => t,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.stats.vanished.push(item.path);
                        continue;
                    }
                    Err(e) => return Err(DeltaError::io(full, "reading symlink", e)),
                };
                let Some(target) = target.to_str().map(str::to_string) else {
                    return Err(DeltaError::UnsupportedPath {
                        path: full,
                        reason: "symlink target is not valid UTF-8".into(),
                    });
                };
                self.stats.symlinks += 1;
                entries.push(Some(base(EntryKind::Symlink { target })));
            } else if ft.is_file() {
                let key = (m.dev(), m.ino());
                if m.nlink() > 1
                    && let Some(first) = first_links.get(&key)
                {
                    self.stats.hard_links += 1;
                    entries.push(Some(base(EntryKind::HardLink { to: first.clone() })));
                    continue;
                }
                let pos = entries.len();
                entries.push(None);
                if self.file(&full, &item.path, m, pos, &mut entries, pipe)? {
                    if m.nlink() > 1 {
                        first_links.insert(key, item.path.clone());
                    }
                } else {
                    entries.pop();
                    self.stats.vanished.push(item.path);
                }
            } else {
                // fifo, socket, block or character device
                self.stats.skipped_special.push(item.path);
            }
        }
        while !pipe.slots.is_empty() {
            self.consume_oldest(&mut entries, pipe)?;
        }
        self.report(true);
        Ok(entries.into_iter().map(|e| e.expect("every read file completed")).collect())
    }

    /// Metadata-only walk; returns items sorted by path, root (`""`) first.
    fn walk(&mut self, source: &Path) -> Result<Vec<Item>, DeltaError> {
        let root_meta = fs::metadata(source).map_err(|e| DeltaError::io(source, "reading metadata", e))?;
        if !root_meta.is_dir() {
            return Err(DeltaError::UnsupportedPath {
                path: source.to_path_buf(),
                reason: "backup source is not a directory".into(),
            });
        }
        let mut items = vec![Item { path: String::new(), meta: root_meta }];
        let mut seen_inodes = std::collections::HashSet::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() { source.to_path_buf() } else { source.join(&rel) };
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => continue,
                Err(e) => return Err(DeltaError::io(dir, "listing directory", e)),
            };
            for de in rd {
                let de = de.map_err(|e| DeltaError::io(&dir, "listing directory", e))?;
                let name = de.file_name();
                let Some(name) = name.to_str() else {
                    return Err(DeltaError::UnsupportedPath {
                        path: de.path(),
                        reason: "file name is not valid UTF-8".into(),
                    });
                };
                let path = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
                let meta = match fs::symlink_metadata(de.path()) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.stats.vanished.push(path);
                        continue;
                    }
                    Err(e) => return Err(DeltaError::io(de.path(), "reading metadata", e)),
                };
                if meta.is_dir() {
                    stack.push(path.clone());
                } else if meta.is_file() && seen_inodes.insert((meta.dev(), meta.ino())) {
                    self.total += meta.len();
                }
                items.push(Item { path, meta });
            }
        }
        items.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(items)
    }

    fn report(&mut self, force: bool) {
        if force || self.done >= self.last_report + PROGRESS_EVERY {
            self.last_report = self.done;
            (self.progress)(Progress { done_bytes: self.done, total_bytes: self.total.max(self.done) });
        }
    }

    /// Backs up one regular file into `entries[pos]`: at once if it can be
    /// referenced, else by reading it into the pipeline (the entry is filled
    /// in when its last chunk is consumed). False if it vanished.
    fn file(
        &mut self,
        full: &Path,
        rel: &str,
        walk_meta: &fs::Metadata,
        pos: usize,
        entries: &mut [Option<Entry>],
        pipe: &mut Pipeline<'a, '_>,
    ) -> Result<bool, DeltaError> {
        let parent: Option<(&'a Entry, &'a FileEntry)> = self.parent.and_then(|p| resolve_with_entry(p, rel));
        if let Some((pe, pf)) = parent
            && pf.size == walk_meta.len()
            && pf.inode == walk_meta.ino()
            && pe.mtime == mtime_of(walk_meta)
            && pf.ctime == ctime_of(walk_meta)
        {
            self.stats.files_referenced += 1;
            self.done += pf.size;
            self.report(false);
            entries[pos] = Some(Entry {
                path: rel.to_string(),
                kind: EntryKind::File(FileEntry {
                    size: pf.size,
                    inode: pf.inode,
                    ctime: pf.ctime,
                    blake3: pf.blake3,
                    block_hashes: pf.block_hashes.clone(),
                    base: None,
                    content: FileContent::Unchanged,
                }),
                mode: walk_meta.mode() & 0o7777,
                mtime: pe.mtime,
                uid: walk_meta.uid(),
                gid: walk_meta.gid(),
            });
            return Ok(true);
        }
        let (parent, base) = match parent {
            Some((_, f)) if f.inode == walk_meta.ino() => (Some(f), None),
            same_path => match self.renamed_from(walk_meta.ino(), rel) {
                Some((path, f)) => (Some(f), Some(path.to_string())),
                None => (same_path.map(|(_, f)| f), None),
            },
        };

        let read_start = SystemTime::now();
        let mut file = match File::open(full) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(DeltaError::io(full, "opening", e)),
        };
        let meta = file.metadata().map_err(|e| DeltaError::io(full, "reading metadata", e))?;
        if !meta.is_file() {
            return Ok(false);
        }
        pipe.files.push_back(FileInFlight {
            pos,
            path: full.to_path_buf(),
            rel: rel.to_string(),
            parent,
            base,
            hashes: Vec::new(),
            runs: Vec::new(),
            digests: Vec::new(),
            tail: None,
        });
        let mut size = 0u64;
        let mut chunks = 0u64;
        let blocks_per_chunk = (CHUNK_BYTES / self.block_size as usize) as u64;
        loop {
            let mut data = self.packs.buffer();
            let n = read_chunk(&mut file, &mut data).map_err(|e| DeltaError::io(full, "reading", e))?;
            if n == 0 {
                self.packs.recycle(data);
                break;
            }
            self.throttle.consumed(n as u64);
            let offset = size;
            size += n as u64;
            self.stats.bytes_read += n as u64;
            self.done += n as u64;
            while pipe.slots.len() >= pipe.max_in_flight {
                self.consume_oldest(entries, pipe)?;
            }
            if let Some(start) = pipe.start_workers.take() {
                start();
            }
            let (reply, rx) = mpsc::sync_channel(1);
            let job = ChunkJob {
                data,
                first_block: chunks * blocks_per_chunk,
                offset,
                whole: chunks == 0 && n < CHUNK_BYTES,
                parent_hashes: parent.map(|p| &p.block_hashes[..]),
                reply,
            };
            pipe.jobs
                .as_ref()
                .expect("open while reading")
                .send(job)
                .map_err(|_| DeltaError::io(full, "hashing", io::Error::other("hashing threads stopped")))?;
            pipe.slots.push_back(Slot { reply: Some(rx), last: false });
            chunks += 1;
            self.report(false);
            if n < CHUNK_BYTES {
                break;
            }
        }
        match pipe.slots.back_mut() {
            Some(s) if chunks > 0 => s.last = true,
            _ => pipe.slots.push_back(Slot { reply: None, last: true }),
        }
        pipe.files.back_mut().expect("pushed above").tail = Some(FileTail { meta, read_start, size });
        self.stats.files_read += 1;
        Ok(true)
    }

    /// The parent's file (other than at `rel`) with inode `ino`: where a
    /// renamed file was. Its blocks are only a base to compare with, so an
    /// inode reused by an unrelated file costs bytes, never correctness.
    fn renamed_from(&mut self, ino: u64, rel: &str) -> Option<(&'a str, &'a FileEntry)> {
        let parent = self.parent?;
        let index = self.parent_inodes.get_or_insert_with(|| {
            parent
                .entries
                .iter()
                .filter_map(|e| match &e.kind {
                    EntryKind::File(f) => Some((f.inode, (e.path.as_str(), f))),
                    _ => None,
                })
                .collect()
        });
        index.get(&ino).copied().filter(|(path, _)| *path != rel)
    }

    /// Waits for the oldest chunk, writes its runs into the packs and, after
    /// a file's last chunk, completes the file's entry.
    fn consume_oldest(&mut self, entries: &mut [Option<Entry>], pipe: &mut Pipeline<'_, '_>) -> Result<(), DeltaError> {
        let Some(slot) = pipe.slots.pop_front() else { return Ok(()) };
        let file = pipe.files.front_mut().expect("a slot belongs to a file in flight");
        if let Some(rx) = slot.reply {
            let done = rx
                .recv()
                .map_err(|_| io::Error::other("hashing thread stopped"))
                .and_then(|r| r.map_err(io::Error::other))
                .map_err(|e| DeltaError::io(&file.path, "hashing and compressing", e))?;
            self.stats.blocks_stored += done.blocks_stored;
            self.stats.zero_blocks += done.zero_blocks;
            self.stats.blocks_unchanged += done.blocks_unchanged;
            file.hashes.extend_from_slice(&done.hashes);
            file.digests.push(match done.digest {
                // A file of exactly one full chunk: known to be the whole
                // file only now, its root hash is taken here.
                ChunkDigest::Subtree(_) if slot.last && file.digests.is_empty() => {
                    ChunkDigest::Root(*blake3::hash(&done.data).as_bytes())
                }
                d => d,
            });
            // Each frame's place in the packs, in the order they are written.
            let placed: Vec<(u32, u64, u64, Compression)> = done
                .frames
                .iter()
                .map(|(payload, frame_len)| {
                    let (len, compression) = match payload {
                        Payload::Zstd(z) => (z.len() as u64, Compression::Zstd),
                        Payload::Raw(range) => (range.len() as u64, Compression::Raw),
                    };
                    let (pack, offset) = self.packs.place(len);
                    (pack, offset, *frame_len, compression)
                })
                .collect();
            for r in done.runs {
                let Some((frame, frame_offset)) = r.stored else {
                    // Zero runs cut at a chunk boundary join up again.
                    if let Some(prev) = file.runs.last_mut()
                        && prev.compression == Compression::Zero
                        && prev.first_block + prev.count == r.first_block
                    {
                        prev.count += r.count;
                        prev.raw_len += r.raw_len;
                        continue;
                    }
                    file.runs.push(BlockRun {
                        first_block: r.first_block,
                        count: r.count,
                        pack: 0,
                        offset: 0,
                        stored_len: 0,
                        raw_len: r.raw_len,
                        frame_offset: 0,
                        frame_len: 0,
                        compression: Compression::Zero,
                    });
                    continue;
                };
                let (pack, offset, frame_len, compression) = placed[frame];
                let stored_len = match &done.frames[frame].0 {
                    Payload::Zstd(z) => z.len() as u64,
                    Payload::Raw(range) => range.len() as u64,
                };
                file.runs.push(BlockRun {
                    first_block: r.first_block,
                    count: r.count,
                    pack,
                    offset,
                    stored_len,
                    raw_len: r.raw_len,
                    frame_offset,
                    frame_len,
                    compression,
                });
            }
            let frames = done.frames.into_iter().map(|(payload, _)| payload).collect();
            self.packs.write(done.data, frames).map_err(|e| DeltaError::io(&file.path, "writing packs", e))?;
        }
        if !slot.last {
            return Ok(());
        }
        let file = pipe.files.pop_front().expect("checked above");
        let tail = file.tail.expect("a file's last slot is queued after its tail is set");
        let blake3 = file_blake3(&file.digests);
        let content = match file.parent {
            Some(p) if file.runs.is_empty() && p.block_hashes.len() == file.hashes.len() => FileContent::Unchanged,
            _ => FileContent::Stored(file.runs),
        };
        let meta = &tail.meta;
        let mut ctime = ctime_of(meta);
        let racy_from = tail
            .read_start
            .checked_sub(RACY_WINDOW)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_secs() as i64, d.subsec_nanos()))
            .unwrap_or((0, 0));
        if (ctime.sec, ctime.nsec) >= racy_from {
            ctime = Timestamp { sec: 0, nsec: 0 };
        }
        entries[file.pos] = Some(Entry {
            path: file.rel,
            kind: EntryKind::File(FileEntry {
                size: tail.size,
                inode: meta.ino(),
                ctime,
                blake3,
                block_hashes: file.hashes,
                base: file.base,
                content,
            }),
            mode: meta.mode() & 0o7777,
            mtime: mtime_of(meta),
            uid: meta.uid(),
            gid: meta.gid(),
        });
        Ok(())
    }
}

/// The parent's file at `path` and the entry carrying its metadata,
/// following one hard-link hop (same rule as the restore).
pub(crate) fn resolve_with_entry<'m>(m: &'m Manifest, path: &str) -> Option<(&'m Entry, &'m FileEntry)> {
    let e = m.find(path)?;
    let e = match &e.kind {
        EntryKind::HardLink { to } => m.find(to)?,
        _ => e,
    };
    match &e.kind {
        EntryKind::File(f) => Some((e, f)),
        _ => None,
    }
}

fn mtime_of(m: &fs::Metadata) -> Timestamp {
    Timestamp { sec: m.mtime(), nsec: m.mtime_nsec() as u32 }
}

fn ctime_of(m: &fs::Metadata) -> Timestamp {
    Timestamp { sec: m.ctime(), nsec: m.ctime_nsec() as u32 }
}

/// Reads the next chunk of `f` into `buf` (emptied first): `CHUNK_BYTES`,
/// or fewer at the end of the file. The read goes into the buffer's spare
/// capacity, which is not zeroed first: zeroing every chunk before reading
/// over it was 3% of a backup's CPU.
fn read_chunk(f: &mut File, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    buf.reserve_exact(CHUNK_BYTES);
    f.take(CHUNK_BYTES as u64).read_to_end(buf)
}

fn is_zero(data: &[u8]) -> bool {
    let (chunks, rest) = data.split_at(data.len() & !7);
    chunks.chunks_exact(8).all(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// A file's BLAKE3 from its chunks' parts, in order (see [`tree_hash`]).
fn file_blake3(digests: &[ChunkDigest]) -> [u8; 32] {
    match digests {
        [] => *blake3::hash(b"").as_bytes(),
        [ChunkDigest::Root(root)] => *root,
        ds => {
            let values: Vec<_> = ds
                .iter()
                .map(|d| match d {
                    ChunkDigest::Subtree(value) => *value,
                    ChunkDigest::Root(_) => unreachable!("a root is only made for a one-chunk file"),
                })
                .collect();
            tree_hash::merge_root(&values)
        }
    }
}

/// The reading side of the pack writer: decides where each frame goes
/// (so the manifest can name it at once) and hands the bytes to the pack
/// thread, which writes, hashes and syncs them while the next chunks are
/// read. Pack writing and hashing were a third of the reading thread's
/// work on incompressible data.
struct PackSink {
    layout: PackLayout,
    /// The staging directory, created by the pack thread before its first pack.
    dir: PathBuf,
    /// The pack thread's channel and handle, once the first frame started it.
    thread: Option<PackThread>,
    /// Chunk buffers back from the pack thread, reused instead of
    /// allocating (and zeroing) a new MiB per chunk. As many circulate as
    /// chunks can be in flight.
    recycled: mpsc::Receiver<Vec<u8>>,
    /// Also keeps the channel open while the pack thread has exited.
    recycle: mpsc::Sender<Vec<u8>>,
}

struct PackThread {
    queue: Option<mpsc::SyncSender<PackMessage>>,
    handle: Option<std::thread::JoinHandle<Result<Vec<StagedPack>, DeltaError>>>,
}

enum PackMessage {
    /// Append these frames (in order) to the packs.
    Write { chunk: Vec<u8>, frames: Vec<Payload> },
    /// Everything is written: close, sync and report the packs.
    Finish,
}

/// Where frames go: a new pack is started once the current one reaches
/// `target` bytes. The pack thread applies the same rule to the same
/// sizes, and checks that it lands where this said.
struct PackLayout {
    target: u64,
    /// Index and size of the pack being filled.
    current: Option<(u32, u64)>,
    opened: u32,
}

impl PackLayout {
    fn place(&mut self, len: u64) -> (u32, u64) {
        if self.current.is_some_and(|(_, size)| size >= self.target) {
            self.current = None;
        }
        let (index, size) = self.current.get_or_insert_with(|| {
            self.opened += 1;
            (self.opened - 1, 0)
        });
        let offset = *size;
        *size += len;
        (*index, offset)
    }
}

impl PackSink {
    /// A sink writing packs of about `target` bytes into `dir`; nothing
    /// starts until the first frame.
    fn new(dir: &Path, target: u64) -> Self {
        let (recycle, recycled) = mpsc::channel();
        PackSink {
            layout: PackLayout { target, current: None, opened: 0 },
            dir: dir.to_path_buf(),
            thread: None,
            recycled,
            recycle,
        }
    }

    /// Starts the pack thread (once).
    fn started(&mut self) -> io::Result<&mpsc::SyncSender<PackMessage>> {
        if self.thread.is_none() {
            let (queue, messages) = mpsc::sync_channel::<PackMessage>(4);
            let back = self.recycle.clone();
            let (pack_dir, target) = (self.dir.clone(), self.layout.target);
            let handle = std::thread::Builder::new().name("cairn-packs".into()).spawn(move || {
                fs::create_dir_all(&pack_dir)
                    .map_err(|e| DeltaError::io(&pack_dir, "creating the staging directory", e))?;
                let mut packs = PackWriter {
                    dir: &pack_dir,
                    layout: PackLayout { target, current: None, opened: 0 },
                    cur: None,
                    done: Vec::new(),
                    syncer: Some(Syncer::new()),
                };
                let result = packs.serve(messages, &back);
                if result.is_err() {
                    packs.abort();
                }
                result
            })?;
            self.thread = Some(PackThread { queue: Some(queue), handle: Some(handle) });
        }
        Ok(self.thread.as_ref().and_then(|t| t.queue.as_ref()).expect("open until finished"))
    }

    /// Pack index and offset of the next frame of `len` bytes.
    fn place(&mut self, len: u64) -> (u32, u64) {
        self.layout.place(len)
    }

    /// Queues frames (placed in this order) for writing; `chunk` is what
    /// raw frames are ranges of.
    fn write(&mut self, chunk: Vec<u8>, frames: Vec<Payload>) -> io::Result<()> {
        if frames.is_empty() {
            self.recycle(chunk);
            return Ok(());
        }
        let queue = self.started()?;
        queue.send(PackMessage::Write { chunk, frames }).map_err(|_| io::Error::other("the pack thread stopped"))
    }

    /// A buffer for the next chunk: a recycled one if there is one.
    fn buffer(&mut self) -> Vec<u8> {
        self.recycled.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES))
    }

    /// Takes a buffer back; the next chunk is read into its capacity.
    fn recycle(&mut self, buffer: Vec<u8>) {
        let _ = self.recycle.send(buffer);
    }

    /// Waits for the pack thread. With `ok`, the packs are closed, synced
    /// and returned; otherwise (the backup failed) they are removed.
    fn finish(&mut self, ok: bool) -> Result<Vec<StagedPack>, DeltaError> {
        // No frame was stored: no thread, no directory, no packs.
        let Some(mut thread) = self.thread.take() else { return Ok(Vec::new()) };
        if let Some(queue) = thread.queue.take()
            && ok
        {
            // A send fails only if the thread stopped; its error is below.
            let _ = queue.send(PackMessage::Finish);
        }
        let handle = thread.handle.take().expect("finished once");
        let result = handle
            .join()
            .unwrap_or_else(|_| Err(DeltaError::io("", "writing packs", io::Error::other("the pack thread panicked"))));
        match (result, ok) {
            (Ok(packs), true) => Ok(packs),
            (Ok(packs), false) => {
                remove_all(&packs);
                Ok(Vec::new())
            }
            (Err(e), _) => Err(e),
        }
    }
}

struct OpenPack {
    name: String,
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    hasher: blake3::Hasher,
}

/// The pack thread's side: owns the pack files.
struct PackWriter<'a> {
    dir: &'a Path,
    layout: PackLayout,
    cur: Option<OpenPack>,
    done: Vec<StagedPack>,
    /// Syncs closed packs while the next one is filled.
    syncer: Option<Syncer>,
}

impl PackWriter<'_> {
    /// Writes what arrives until told to finish; if the channel closes
    /// first, the backup failed and the caller removes the packs.
    fn serve(
        &mut self,
        messages: mpsc::Receiver<PackMessage>,
        recycle: &mpsc::Sender<Vec<u8>>,
    ) -> Result<Vec<StagedPack>, DeltaError> {
        for message in messages {
            match message {
                PackMessage::Write { chunk, frames } => {
                    for frame in &frames {
                        let bytes = match frame {
                            Payload::Zstd(z) => &z[..],
                            Payload::Raw(range) => &chunk[range.clone()],
                        };
                        self.append(bytes)?;
                    }
                    let _ = recycle.send(chunk);
                }
                PackMessage::Finish => return self.finish(),
            }
        }
        Err(DeltaError::io(self.dir, "writing packs", io::Error::other("the backup stopped")))
    }

    /// Append one frame where the layout puts it.
    fn append(&mut self, data: &[u8]) -> Result<(), DeltaError> {
        let (idx, offset) = self.layout.place(data.len() as u64);
        if self.cur.is_some() && idx as usize != self.done.len() {
            self.close_current()?;
        }
        if self.cur.is_none() {
            let name = format!("pack-{:05}", self.done.len());
            let path = self.dir.join(&name);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| DeltaError::io(&path, "creating pack", e))?;
            self.cur = Some(OpenPack {
                name,
                path,
                file: BufWriter::with_capacity(1 << 20, file),
                size: 0,
                hasher: blake3::Hasher::new(),
            });
        }
        let c = self.cur.as_mut().expect("just opened");
        if idx as usize != self.done.len() || offset != c.size {
            return Err(DeltaError::io(
                &c.path,
                "writing pack",
                io::Error::other(format!("frame placed at pack {idx} offset {offset}, lands at {}", c.size)),
            ));
        }
        c.file.write_all(data).map_err(|e| DeltaError::io(&c.path, "writing pack", e))?;
        c.hasher.update(data);
        c.size += data.len() as u64;
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), DeltaError> {
        if let Some(c) = self.cur.take() {
            let path = c.path.clone();
            let file = c.file.into_inner().map_err(|e| DeltaError::io(&path, "writing pack", e.into_error()))?;
            match &self.syncer {
                Some(s) => s.sync(path, file)?,
                None => file.sync_all().map_err(|e| DeltaError::io(&path, "syncing pack", e))?,
            }
            self.done.push(StagedPack {
                name: c.name,
                path: c.path,
                size: c.size,
                blake3: c.hasher.finalize().to_hex().to_string(),
            });
        }
        Ok(())
    }

    /// Closes the last pack and waits until every pack is on disk.
    fn finish(&mut self) -> Result<Vec<StagedPack>, DeltaError> {
        let synced = self.close_current().and_then(|()| self.syncer.take().map_or(Ok(()), Syncer::finish));
        if let Err(e) = synced {
            self.abort();
            return Err(e);
        }
        Ok(std::mem::take(&mut self.done))
    }

    fn abort(&mut self) {
        if let Some(c) = self.cur.take() {
            let _ = fs::remove_file(&c.path);
        }
        remove_all(&self.done);
        self.done.clear();
    }
}

fn remove_all(packs: &[StagedPack]) {
    for p in packs {
        let _ = fs::remove_file(&p.path);
    }
}

/// Keeps reading at or below a rate: after each read, sleeps for as long as
/// the reads so far are ahead of the schedule the limit allows.
struct Throttle {
    limit: Option<u64>,
    started: std::time::Instant,
    read: u64,
}

impl Throttle {
    fn new(limit: Option<u64>) -> Self {
        Throttle { limit: limit.filter(|l| *l > 0), started: std::time::Instant::now(), read: 0 }
    }

    fn consumed(&mut self, bytes: u64) {
        let Some(limit) = self.limit else { return };
        self.read += bytes;
        let due = std::time::Duration::from_secs_f64(self.read as f64 / limit as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows like a pgbench table's: a few 4-byte integers that differ from
    /// row to row, then padding, so rows share short runs of bytes.
    fn table_rows(rows: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for id in 0..rows {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(id / 100_000).to_le_bytes());
            out.extend_from_slice(&(id.wrapping_mul(2_654_435_761) % 5_000).to_le_bytes());
            out.extend_from_slice(&[0x20, 0, 0, 0, 0]);
        }
        out
    }

    #[test]
    fn block_compressor_takes_short_matches_and_stays_plain_zstd() {
        let data = table_rows(60_000);
        let ours = block_compressor(1).unwrap().compress(&data).unwrap();
        let plain = zstd::bulk::compress(&data, 1).unwrap();
        assert!(ours.len() < plain.len(), "tuned {} bytes vs level 1's {}", ours.len(), plain.len());
        assert_eq!(zstd::bulk::decompress(&ours, data.len()).unwrap(), data);
        // Levels that already match from 5 bytes are left as zstd makes them.
        let three = block_compressor(3).unwrap().compress(&data).unwrap();
        assert_eq!(three, zstd::bulk::compress(&data, 3).unwrap());
    }
}
