//! Restoring a chain.
//!
//! Why it works this way:
//! - **Resolve newest-first, execute root-first.** For every block of every
//!   file of the *last* manifest we find the newest link that stores it
//!   (walking back through `Unchanged` files and uncovered blocks). Applying
//!   links naively root-first would rewrite hot blocks once per link; the
//!   plan writes each final byte once, yet is executed link by link from the
//!   root so the caller can report "step k of N".
//! - **Sparse by construction.** Files are created with `set_len` to their
//!   final size and zero blocks are never written, so holes stay holes.
//! - **Verify everything read.** Each block fetched from a pack is checked
//!   against the last manifest's block hash before it is written; each file
//!   is checked against its whole-content BLAKE3 afterwards. A corrupted or
//!   truncated pack is reported with backup id, pack and offset.
//! - **Never escape the target.** Manifests come back from storage and are
//!   untrusted. Every link is validated again here (paths, ordering, run
//!   geometry), and all writes then go through capability handles
//!   (`cap_std::fs::Dir`) opened on the target: a directory handle can only
//!   reach names below it. Parents are opened component by component with
//!   `O_NOFOLLOW`, files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` and
//!   re-opened with `O_NOFOLLOW` only if they are still the inode we created,
//!   symlinks are created with `symlinkat` relative to their parent's handle
//!   (their targets are data, never followed), and metadata is set through
//!   file descriptors or `*at(..., AT_SYMLINK_NOFOLLOW)`. So even an entry
//!   that a validation bug let through (a symlink and then a file "through"
//!   it) fails instead of writing outside the target. Metadata comes last
//!   (modes could make directories read-only), deepest first so directory
//!   mtimes survive their children's creation.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid};
use uuid::Uuid;

use crate::chain::{ChainLink, resolve_chain, verify_chain};
use crate::codec::validate;
use crate::error::DeltaError;
use crate::manifest::*;
use crate::sync::Syncer;
use crate::tree_hash::BlockValues;

/// Reads byte ranges of a backup's packs (the caller fetches them from
/// object storage). `Sync` so a restore can later fetch in parallel.
pub trait PackSource: Sync {
    /// Exactly `len` bytes at `offset` of pack `pack` of backup `backup_id`.
    fn read_range(&self, backup_id: Uuid, pack: &str, offset: u64, len: u64) -> io::Result<Vec<u8>>;
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Regular files restored (hard links to them not counted).
    pub files: u64,
    pub bytes_written: u64,
    pub blocks_written: u64,
    /// Time spent checking the chain (every manifest validated, each link
    /// against its parent), resolving its blocks and creating the tree
    /// (entries, file sizes), before any content is written.
    pub plan_time: std::time::Duration,
    /// Time spent writing content (fetch, decode, check, write).
    pub write_time: std::time::Duration,
    /// Time spent checking every file against the last manifest and
    /// setting metadata, after the content is written.
    pub verify_time: std::time::Duration,
    /// Time spent waiting for the tree to be on disk at the end.
    pub sync_time: std::time::Duration,
}

/// A span of blocks of one final file to be taken from one stored run.
struct Piece {
    entry: usize,
    run: BlockRun,
    from: u64,
    to: u64,
}

/// Restore `links` (root first) into the empty directory `target`.
///
/// Every link is validated (a [`ChainLink`] may have been built by hand),
/// the chain is verified, links decoded with only their stored blocks'
/// hashes are completed (on a copy: [`resolve_chain`] them first to spare
/// it), then the tree is written through a directory handle on `target`
/// that cannot reach anything outside it.
pub fn restore_chain(
    links: &[ChainLink],
    packs: &dyn PackSource,
    target: &Path,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<RestoreStats, DeltaError> {
    let started = std::time::Instant::now();
    for link in links {
        validate(&link.manifest)?;
    }
    verify_chain(links)?;
    let resolved;
    let links = if links.iter().all(|l| l.manifest.hashes == HashCoverage::All) {
        links
    } else {
        let mut copy = links.to_vec();
        resolve_chain(&mut copy)?;
        resolved = copy;
        &resolved[..]
    };
    check_target(target)?;
    apply(links, packs, target, on_step, started)
}

/// The restore proper, on links already validated and verified.
fn apply(
    links: &[ChainLink],
    packs: &dyn PackSource,
    target: &Path,
    on_step: &mut dyn FnMut(usize, usize),
    started: std::time::Instant,
) -> Result<RestoreStats, DeltaError> {
    let n = links.len();
    let last = &links[n - 1].manifest;
    let bs = last.header.block_size;
    let kind = last.header.block_hashes;

    // 1. Plan: newest-first resolution of every block. The values of zero
    // blocks (never written) are taken here for the check of step 4.
    let mut plan: Vec<Vec<Piece>> = (0..n).map(|_| Vec::new()).collect();
    let blocks: u64 = last
        .entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::File(f) => f.block_hashes.len() as u64,
            _ => 0,
        })
        .sum();
    let keep_values = blocks <= MAX_KEPT_VALUES;
    let mut zero_values = BlockValues::new(kind, keep_values);
    for (idx, e) in last.entries.iter().enumerate() {
        if let EntryKind::File(f) = &e.kind {
            resolve_file(links, idx, &e.path, f, bs, &mut zero_values, &mut plan)?;
        }
    }

    // 2. Create the tree (no content yet).
    let mut tree = Tree::open(target)?;
    let mut stats = RestoreStats::default();
    let mut inodes: Vec<u64> = vec![0; last.entries.len()];
    for (idx, e) in last.entries.iter().enumerate() {
        if e.path.is_empty() {
            continue;
        }
        let io_err = |op: &'static str| move |err: io::Error| DeltaError::io(target.join(&e.path), op, err);
        match &e.kind {
            EntryKind::Dir => {
                let (dir, name) = tree.parent_of(&e.path)?;
                dir.create_dir(name).map_err(io_err("creating directory"))?;
            }
            EntryKind::Symlink { target: t } => {
                let (dir, name) = tree.parent_of(&e.path)?;
                rustix::fs::symlinkat(t.as_str(), dir, name)
                    .map_err(|err| io_err("creating symlink")(io::Error::from(err)))?;
            }
            EntryKind::HardLink { to } => {
                let root = tree.root.try_clone().map_err(io_err("opening the target"))?;
                let (dir, name) = tree.parent_of(&e.path)?;
                root.hard_link(to, dir, name).map_err(io_err("creating hard link"))?;
            }
            EntryKind::File(f) => {
                let (dir, name) = tree.parent_of(&e.path)?;
                let file = dir
                    .open_with(
                        name,
                        OpenOptions::new().write(true).create_new(true).mode(0o600).follow(FollowSymlinks::No),
                    )
                    .map_err(io_err("creating file"))?
                    .into_std();
                file.set_len(f.size).map_err(io_err("setting file size"))?;
                inodes[idx] = file.metadata().map_err(io_err("reading metadata"))?.ino();
                stats.files += 1;
            }
        }
    }

    // 3. Write content, link by link from the root, on every core: each
    // link's pieces (in pack order) are cut into contiguous shares, at run
    // boundaries so no run is decoded twice, and the threads take the
    // shares in turn until none is left. Shares are several per thread:
    // the data of a pack is not equally costly everywhere (WAL decodes at
    // half the speed of table pages), and with one share per thread one
    // thread idled while the other finished its half. Files that take a
    // lot of writes are synced in the background as they go, so the disk
    // writes while the next runs are decoded (see `sync`).
    let syncer = Syncer::new();
    stats.plan_time = started.elapsed();
    let writing = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).clamp(1, MAX_THREADS);
    let mut writers = Vec::with_capacity(threads);
    for _ in 0..threads {
        writers.push(ContentWriter::new(target, last, &inodes, &syncer, keep_values)?);
    }
    for (k, pieces) in plan.iter_mut().enumerate() {
        on_step(k + 1, n);
        let header = &links[k].manifest.header;
        pieces.sort_by_key(|p| (p.run.pack, p.run.offset, p.from));
        let shares = split_at_runs(pieces, threads * SHARES_PER_THREAD, u64::from(bs));
        if shares.len() == 1 {
            writers[0].write(packs, header, shares[0])?;
            continue;
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let errors = std::thread::scope(|scope| {
            let running: Vec<_> = writers
                .iter_mut()
                .map(|w| {
                    let (next, failed, shares) = (&next, &failed, &shares);
                    scope.spawn(move || {
                        let mut errors = Vec::new();
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(share) = shares.get(i) else { break };
                            if let Err(e) = w.write(packs, header, share) {
                                failed.store(true, Ordering::Relaxed);
                                errors.push((i, e));
                            }
                        }
                        errors
                    })
                })
                .collect();
            // Every thread is waited for; a panic counts as an error of
            // the last share.
            let mut errors = Vec::new();
            for t in running {
                match t.join() {
                    Ok(e) => errors.extend(e),
                    Err(_) => errors.push((usize::MAX, panicked("writing"))),
                }
            }
            errors
        });
        // The error of the first failed share in pack order wins, as if
        // the shares had been written one after the other.
        if let Some((_, e)) = errors.into_iter().min_by_key(|(i, _)| *i) {
            return Err(e);
        }
    }
    stats.write_time = writing.elapsed();
    let verifying = std::time::Instant::now();
    let mut values = zero_values;
    for w in writers {
        let (s, v) = w.finish()?;
        stats.blocks_written += s.blocks_written;
        stats.bytes_written += s.bytes_written;
        values.absorb(v);
    }

    // 4. Verify every file against the last manifest. A file-tree chain's
    // files are checked from the values of the blocks just written (each
    // block was hashed once, when it was checked); the files whose values
    // are not complete, and a standalone chain's, are read back and hashed
    // on every core.
    let (mut mismatch, unchecked) = values.check(last);
    let files: Vec<(usize, &Entry)> = unchecked.into_iter().map(|i| (i, &last.entries[i])).collect();
    let per = files.len().div_ceil(threads).max(1);
    let read_back = std::thread::scope(|scope| {
        let running: Vec<_> = files.chunks(per).map(|share| scope.spawn(move || verify_files(target, share))).collect();
        let results: Vec<_> = running.into_iter().map(|t| t.join()).collect();
        results.into_iter().map(|r| r.unwrap_or_else(|_| Err(panicked("verifying")))).collect::<Result<Vec<_>, _>>()
    })?;
    mismatch.extend(read_back.into_iter().flatten());
    let last_id = links[n - 1].manifest.header.backup_id;
    if let Some((e, actual)) = mismatch.into_iter().min_by_key(|(e, _)| e.path.as_str()) {
        let EntryKind::File(f) = &e.kind else { unreachable!("only files are verified") };
        return Err(DeltaError::ContentMismatch {
            path: e.path.clone(),
            position: n,
            backup_id: last_id,
            expected: f.blake3_hex(),
            actual: crate::manifest::hex(&actual),
        });
    }

    // 5. Metadata, deepest first (reverse sorted order), root last.
    for e in last.entries.iter().rev() {
        tree.set_metadata(e)?;
    }
    stats.verify_time = verifying.elapsed();

    // 6. Durable before it is reported restored: the large files synced in
    // the background, everything else (small files, directories, metadata)
    // with one `syncfs` of the target's filesystem rather than an fsync per
    // entry.
    let syncing = std::time::Instant::now();
    syncer.finish()?;
    // (The tree's handles are `O_PATH`, which `syncfs` refuses.)
    File::open(target)
        .and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from))
        .map_err(|err| DeltaError::io(target, "syncing the restored tree", err))?;
    stats.sync_time = syncing.elapsed();
    Ok(stats)
}

/// The most blocks whose values a restore keeps to check its files without
/// reading them back (about 48 bytes each: 48 MiB, 4 GiB of data at 4 KiB
/// blocks). A larger restore reads its files back, so that its memory does
/// not grow with the data.
const MAX_KEPT_VALUES: u64 = 1 << 20;

/// A restored file open for writing, and the bytes written to it since it
/// was last handed to the [`Syncer`].
struct OpenFile {
    entry: usize,
    file: File,
    unsynced: u64,
}

/// A file that has taken this many bytes of writes since it was last
/// synced is synced in the background now...
const SYNC_EVERY: u64 = 64 << 20;
/// ...and one left with this many unsynced bytes when the restore moves on
/// to another file; smaller remainders wait for the final `syncfs`.
const SYNC_AT_LEAST: u64 = 8 << 20;

impl OpenFile {
    fn sync_if_large(self, syncer: &Syncer, target: &Path, last: &Manifest) -> Result<(), DeltaError> {
        if self.unsynced < SYNC_AT_LEAST {
            return Ok(());
        }
        syncer.sync(target.join(&last.entries[self.entry].path), self.file)
    }
}

fn resolve_file<'m>(
    links: &'m [ChainLink],
    idx: usize,
    path: &'m str,
    f: &FileEntry,
    bs: u32,
    zero_values: &mut BlockValues,
    plan: &mut [Vec<Piece>],
) -> Result<(), DeltaError> {
    let nblocks = f.block_hashes.len() as u64;
    // A block of zeros, made when a zero run is first checked.
    let mut zeros: Vec<u8> = Vec::new();
    let mut resolved = vec![false; nblocks as usize];
    let mut remaining = nblocks;
    let mut k = links.len();
    // The file's path in link k: its own, until a link says it was renamed.
    let mut at: &str = path;
    while remaining > 0 {
        if k == 0 {
            let first = resolved.iter().position(|r| !r).unwrap_or(0);
            return Err(DeltaError::Resolve {
                path: path.to_string(),
                reason: format!("block {first} is not stored by any link of the chain ({remaining} blocks missing)"),
            });
        }
        k -= 1;
        let m = &links[k].manifest;
        let Some(fk) = m.resolve_file(at) else {
            let as_ = if at == path { String::new() } else { format!(" (as {at:?})") };
            return Err(DeltaError::Resolve {
                path: path.to_string(),
                reason: format!(
                    "needs {remaining} blocks from link {} (backup {}), where it{as_} is not a regular file",
                    k + 1,
                    m.header.backup_id
                ),
            });
        };
        for run in fk.runs() {
            let hi = run.end_block().min(nblocks);
            let mut span: Option<u64> = None;
            for i in run.first_block..=hi {
                let free = i < hi && !resolved[i as usize];
                match (free, span) {
                    (true, None) => span = Some(i),
                    (false, Some(s)) => {
                        span = None;
                        if run.compression == Compression::Zero {
                            for j in s..i {
                                let len = block_len(f.size, bs, j);
                                zeros.resize(bs as usize, 0);
                                let zh = zero_values.hash(idx, j, nblocks, &zeros[..len as usize], u64::from(bs));
                                if zh != f.block_hashes[j as usize] {
                                    return Err(DeltaError::Resolve {
                                        path: path.to_string(),
                                        reason: format!(
                                            "block {j} is recorded as zero by link {} (backup {}) but its hash in the last manifest is not that of zeros",
                                            k + 1,
                                            m.header.backup_id
                                        ),
                                    });
                                }
                            }
                        } else {
                            plan[k].push(Piece { entry: idx, run: *run, from: s, to: i });
                        }
                    }
                    _ => {}
                }
                if free {
                    resolved[i as usize] = true;
                    remaining -= 1;
                }
            }
        }
        let nk = fk.block_hashes.len() as u64;
        if nk < nblocks
            && let Some(i) = (nk..nblocks).find(|&i| !resolved[i as usize])
        {
            return Err(DeltaError::Resolve {
                path: path.to_string(),
                reason: format!(
                    "block {i} is not stored by link {}..{} and link {} (backup {}) has only {nk} blocks",
                    k + 2,
                    links.len(),
                    k + 1,
                    m.header.backup_id
                ),
            });
        }
        at = fk.base_or(at);
    }
    Ok(())
}

/// Decode the stored bytes of one run (as read from its pack) into the
/// run's raw content. The output is bounded by the frame's `frame_len`, which
/// validation caps at [`crate::MAX_RUN_RAW`]: a zstd frame that would expand
/// further (a decompression bomb) is refused, never decoded in full.
pub fn decode_run(run: &BlockRun, stored: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut decompressor = zstd::bulk::Decompressor::new().map_err(|e| format!("cannot start zstd: {e}"))?;
    let mut frame = decode_frame_with(&mut decompressor, run, stored)?;
    if run.frame_len == run.raw_len {
        return Ok(frame);
    }
    frame.truncate((run.frame_offset + run.raw_len) as usize);
    Ok(frame.split_off(run.frame_offset as usize))
}

/// The whole frame `run`'s bytes are in, decoded with a zstd context
/// reused across frames; the run's bytes are at `run.frame_offset`.
fn decode_frame_with(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    run: &BlockRun,
    stored: Vec<u8>,
) -> Result<Vec<u8>, String> {
    if stored.len() as u64 != run.stored_len {
        return Err(format!("truncated: got {} of {} bytes", stored.len(), run.stored_len));
    }
    if run.frame_len > crate::MAX_RUN_RAW {
        return Err(format!("frame of {} bytes exceeds the {} byte limit", run.frame_len, crate::MAX_RUN_RAW));
    }
    if run.frame_offset.checked_add(run.raw_len).is_none_or(|end| end > run.frame_len) {
        return Err(format!(
            "run of {} bytes at {} outside its {} byte frame",
            run.raw_len, run.frame_offset, run.frame_len
        ));
    }
    let raw = match run.compression {
        Compression::Raw => stored,
        Compression::Zstd => decompressor.decompress(&stored, run.frame_len as usize).map_err(|e| {
            format!("cannot decompress (a frame larger than the {} bytes recorded is refused): {e}", run.frame_len)
        })?,
        Compression::Zero => return Err("zero runs have no stored bytes".into()),
    };
    if raw.len() as u64 != run.frame_len {
        return Err(format!("decoded {} bytes, manifest says {}", raw.len(), run.frame_len));
    }
    Ok(raw)
}

fn fetch_run(
    packs: &dyn PackSource,
    h: &Header,
    run: &BlockRun,
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Vec<u8>, DeltaError> {
    let pack = &h.packs[run.pack as usize].name;
    let data =
        packs.read_range(h.backup_id, pack, run.offset, run.stored_len).map_err(|source| DeltaError::PackRead {
            backup_id: h.backup_id,
            pack: pack.clone(),
            offset: run.offset,
            len: run.stored_len,
            source,
        })?;
    decode_frame_with(decompressor, run, data).map_err(|reason| DeltaError::PackData {
        backup_id: h.backup_id,
        pack: pack.clone(),
        offset: run.offset,
        reason,
    })
}

fn check_target(target: &Path) -> Result<(), DeltaError> {
    let fail = |reason: &str| DeltaError::Target { path: target.to_path_buf(), reason: reason.to_string() };
    let meta = fs::symlink_metadata(target).map_err(|e| fail(&e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(fail("is a symlink"));
    }
    if !meta.is_dir() {
        return Err(fail("is not a directory"));
    }
    let mut rd = fs::read_dir(target).map_err(|e| fail(&e.to_string()))?;
    if rd.next().is_some() {
        return Err(fail("is not empty"));
    }
    Ok(())
}

/// Capability handles on the tree being restored: nothing reachable from
/// here is outside `target`, and no symlink is ever followed.
struct Tree<'a> {
    target: &'a Path,
    root: Dir,
    /// The last parent directory opened, by relative path: entries are
    /// sorted, so siblings come together and share it.
    cached: Option<(String, Dir)>,
}

impl<'a> Tree<'a> {
    fn open(target: &'a Path) -> Result<Self, DeltaError> {
        let root = Dir::open_ambient_dir(target, cap_std::ambient_authority())
            .map_err(|e| DeltaError::Target { path: target.to_path_buf(), reason: format!("cannot open: {e}") })?;
        Ok(Tree { target, root, cached: None })
    }

    /// The directory holding entry `rel` and the entry's own name, opened
    /// component by component without following symlinks.
    fn parent_of<'p>(&mut self, rel: &'p str) -> Result<(&Dir, &'p str), DeltaError> {
        let Some((parent, name)) = rel.rsplit_once('/') else {
            return Ok((&self.root, rel));
        };
        if self.cached.as_ref().is_none_or(|(p, _)| p != parent) {
            let refuse = |e: io::Error| DeltaError::UnsafeEntry {
                path: rel.to_string(),
                reason: format!("parent {parent:?} cannot be opened as a real directory below the target: {e}"),
            };
            let mut comps = parent.split('/');
            let first = comps.next().expect("split yields at least one item");
            let mut dir = self.root.open_dir_nofollow(first).map_err(refuse)?;
            for c in comps {
                dir = dir.open_dir_nofollow(c).map_err(refuse)?;
            }
            self.cached = Some((parent.to_string(), dir));
        }
        Ok((&self.cached.as_ref().expect("just cached").1, name))
    }

    fn open_file(&mut self, rel: &str, options: &OpenOptions, op: &'static str) -> Result<File, DeltaError> {
        let path = if rel == "." { self.target.to_path_buf() } else { self.target.join(rel) };
        let (dir, name) = self.parent_of(rel)?;
        Ok(dir
            .open_with(name, options.clone().follow(FollowSymlinks::No))
            .map_err(|e| DeltaError::io(path, op, e))?
            .into_std())
    }

    /// Re-open a file we created for writing, only if it is still that inode.
    fn reopen(&mut self, rel: &str, inode: u64) -> Result<File, DeltaError> {
        let f = self.open_file(rel, OpenOptions::new().write(true), "opening for writing")?;
        let m = f.metadata().map_err(|e| DeltaError::io(self.target.join(rel), "reading metadata", e))?;
        if !m.is_file() || m.ino() != inode {
            return Err(DeltaError::Target {
                path: self.target.join(rel),
                reason: "file was replaced during the restore".into(),
            });
        }
        Ok(f)
    }

    fn hash_file(&mut self, rel: &str) -> Result<[u8; 32], DeltaError> {
        let mut f = self.open_file(rel, OpenOptions::new().read(true), "opening to verify")?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DeltaError::io(self.target.join(rel), "reading to verify", e)),
            };
            h.update(&buf[..n]);
        }
        Ok(*h.finalize().as_bytes())
    }

    /// Owner, mode and mtime of `e`, through a descriptor of the entry
    /// itself (or `*at` calls that do not follow symlinks).
    fn set_metadata(&mut self, e: &Entry) -> Result<(), DeltaError> {
        let path = self.target.join(&e.path);
        let uid = Uid::from_raw_unchecked(e.uid);
        let gid = Gid::from_raw_unchecked(e.gid);
        let times = Timestamps {
            last_access: Timespec { tv_sec: e.mtime.sec, tv_nsec: e.mtime.nsec.into() },
            last_modification: Timespec { tv_sec: e.mtime.sec, tv_nsec: e.mtime.nsec.into() },
        };
        let fd: File = match &e.kind {
            EntryKind::HardLink { .. } => return Ok(()), // its first link carries the metadata
            EntryKind::Symlink { .. } => {
                let (dir, name) = self.parent_of(&e.path)?;
                ignore_unprivileged(rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW))
                    .map_err(|err| DeltaError::io(&path, "setting owner", err))?;
                return rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| DeltaError::io(&path, "setting symlink times", err.into()));
            }
            // cap-std's directory handles are `O_PATH`, which cannot change
            // metadata: open the directory itself read-only (no symlink).
            EntryKind::Dir => {
                let rel = if e.path.is_empty() { "." } else { e.path.as_str() };
                let dir_flags = rustix::fs::OFlags::DIRECTORY.bits() as i32;
                self.open_file(rel, OpenOptions::new().read(true).custom_flags(dir_flags), "opening directory")?
            }
            EntryKind::File(_) => self.open_file(&e.path, OpenOptions::new().read(true), "opening for metadata")?,
        };
        // Ownership first: chown clears setuid/setgid, chmod restores them.
        ignore_unprivileged(rustix::fs::fchown(fd.as_fd(), Some(uid), Some(gid)))
            .map_err(|err| DeltaError::io(&path, "setting owner", err))?;
        rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(e.mode))
            .map_err(|err| DeltaError::io(&path, "setting mode", err.into()))?;
        rustix::fs::futimens(fd.as_fd(), &times).map_err(|err| DeltaError::io(&path, "setting times", err.into()))
    }
}

/// Threads a restore writes and verifies with, at most.
const MAX_THREADS: usize = 8;
/// Shares of a step's pieces per thread (see step 3 of `apply`)...
const SHARES_PER_THREAD: usize = 8;
/// ...but none smaller than this.
const MIN_SHARE: u64 = 4 << 20;

fn panicked(what: &str) -> DeltaError {
    DeltaError::io("", "restoring", io::Error::other(format!("a {what} thread panicked")))
}

/// Cuts `pieces` (sorted by pack and offset) into up to `wanted`
/// contiguous shares of about equal bytes, never between two pieces of
/// one frame, and none under [`MIN_SHARE`]: a small step stays in one
/// share, as a thread costs more than it saves below a few MiB.
fn split_at_runs(pieces: &[Piece], wanted: usize, bs: u64) -> Vec<&[Piece]> {
    let bytes = |p: &Piece| (p.to - p.from) * bs;
    let total: u64 = pieces.iter().map(bytes).sum();
    let count = wanted.min((total / MIN_SHARE) as usize);
    if count <= 1 {
        return vec![pieces];
    }
    let mut shares = Vec::with_capacity(count);
    let (mut from, mut acc) = (0, 0u64);
    for (i, p) in pieces.iter().enumerate() {
        let same_run = i > 0 && (pieces[i - 1].run.pack, pieces[i - 1].run.offset) == (p.run.pack, p.run.offset);
        if !same_run && acc >= total * (shares.len() as u64 + 1) / count as u64 && shares.len() + 1 < count {
            shares.push(&pieces[from..i]);
            from = i;
        }
        acc += bytes(p);
    }
    shares.push(&pieces[from..]);
    shares
}

/// One thread's part of step 3: fetches and decodes runs, checks every
/// block against the last manifest, writes it once.
struct ContentWriter<'t> {
    tree: Tree<'t>,
    target: &'t Path,
    last: &'t Manifest,
    inodes: &'t [u64],
    syncer: &'t Syncer,
    /// Reused: creating a zstd context per run cost 6% of a restore.
    decompressor: zstd::bulk::Decompressor<'static>,
    open: Option<OpenFile>,
    stats: RestoreStats,
    values: BlockValues,
}

impl<'t> ContentWriter<'t> {
    fn new(
        target: &'t Path,
        last: &'t Manifest,
        inodes: &'t [u64],
        syncer: &'t Syncer,
        keep_values: bool,
    ) -> Result<Self, DeltaError> {
        Ok(ContentWriter {
            tree: Tree::open(target)?,
            target,
            last,
            inodes,
            syncer,
            decompressor: zstd::bulk::Decompressor::new().map_err(|e| DeltaError::io(target, "starting zstd", e))?,
            open: None,
            stats: RestoreStats::default(),
            values: BlockValues::new(last.header.block_hashes, keep_values),
        })
    }

    fn write(&mut self, packs: &dyn PackSource, header: &Header, pieces: &[Piece]) -> Result<(), DeltaError> {
        let bsu = u64::from(header.block_size);
        let mut decoded: Option<(FrameKey, Vec<u8>)> = None;
        for p in pieces {
            let key = p.run.frame();
            if decoded.as_ref().is_none_or(|(dk, _)| *dk != key) {
                decoded = Some((key, fetch_run(packs, header, &p.run, &mut self.decompressor)?));
            }
            let data = &decoded.as_ref().expect("just decoded").1;
            let e = &self.last.entries[p.entry];
            let EntryKind::File(f) = &e.kind else { unreachable!("pieces are only planned for files") };
            let at = p.run.frame_offset;
            let start = at + (p.from - p.run.first_block) * bsu;
            let mut end = start;
            for j in p.from..p.to {
                let off = at + (j - p.run.first_block) * bsu;
                let len = bsu.min(at + p.run.raw_len - off);
                let block = &data[off as usize..(off + len) as usize];
                let nblocks = f.block_hashes.len() as u64;
                if self.values.hash(p.entry, j, nblocks, block, bsu) != f.block_hashes[j as usize]
                    || j * bsu + len > f.size
                {
                    return Err(DeltaError::PackData {
                        backup_id: header.backup_id,
                        pack: header.packs[p.run.pack as usize].name.clone(),
                        offset: p.run.offset,
                        reason: format!("block {j} of file {} does not match its hash in the last manifest", e.path),
                    });
                }
                end = off + len;
            }
            if self.open.as_ref().is_none_or(|o| o.entry != p.entry) {
                if let Some(done) = self.open.take() {
                    done.sync_if_large(self.syncer, self.target, self.last)?;
                }
                let file = self.tree.reopen(&e.path, self.inodes[p.entry])?;
                self.open = Some(OpenFile { entry: p.entry, file, unsynced: 0 });
            }
            let o = self.open.as_mut().expect("just opened");
            let path = || self.target.join(&e.path);
            o.file
                .write_all_at(&data[start as usize..end as usize], p.from * bsu)
                .map_err(|err| DeltaError::io(path(), "writing", err))?;
            o.unsynced += end - start;
            if o.unsynced >= SYNC_EVERY {
                let copy = o.file.try_clone().map_err(|err| DeltaError::io(path(), "syncing", err))?;
                self.syncer.sync(path(), copy)?;
                o.unsynced = 0;
            }
            self.stats.blocks_written += p.to - p.from;
            self.stats.bytes_written += end - start;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(RestoreStats, BlockValues), DeltaError> {
        if let Some(done) = self.open.take() {
            done.sync_if_large(self.syncer, self.target, self.last)?;
        }
        Ok((self.stats, self.values))
    }
}

/// Hashes each of `files` as restored; the ones whose content is not what
/// the manifest says, with the hash found.
fn verify_files<'m>(target: &Path, files: &[(usize, &'m Entry)]) -> Result<Vec<(&'m Entry, [u8; 32])>, DeltaError> {
    let mut tree = Tree::open(target)?;
    let mut wrong = Vec::new();
    for (_, e) in files {
        let EntryKind::File(f) = &e.kind else { continue };
        let actual = tree.hash_file(&e.path)?;
        if actual != f.blake3 {
            wrong.push((*e, actual));
        }
    }
    Ok(wrong)
}

/// An unprivileged restore cannot give files away: keep the restoring
/// user as owner rather than fail.
fn ignore_unprivileged(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) | Err(rustix::io::Errno::PERM | rustix::io::Errno::INVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoPacks;

    impl PackSource for NoPacks {
        fn read_range(&self, _: Uuid, _: &str, _: u64, _: u64) -> io::Result<Vec<u8>> {
            Err(io::Error::other("no packs in this test"))
        }
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry { path: path.into(), kind, mode: 0o755, mtime: Timestamp::default(), uid: 0, gid: 0 }
    }

    fn empty_file() -> EntryKind {
        EntryKind::File(FileEntry {
            size: 0,
            inode: 0,
            ctime: Timestamp::default(),
            blake3: *blake3::hash(b"").as_bytes(),
            block_hashes: vec![],
            base: None,
            content: FileContent::Stored(vec![]),
        })
    }

    /// Feeds `apply` (no validation) a manifest with `entries` after the
    /// root; returns the error and checks that `outside` stayed empty.
    fn apply_unvalidated(entries: Vec<Entry>) -> DeltaError {
        let outer = tempfile::tempdir().unwrap();
        let target = outer.path().join("target");
        let outside = outer.path().join("outside");
        fs::create_dir(&target).unwrap();
        fs::create_dir(&outside).unwrap();
        let mut all = vec![entry("", EntryKind::Dir)];
        for mut e in entries {
            e.path = e.path.replace("OUTSIDE", outside.to_str().unwrap());
            if let EntryKind::Symlink { target } = &mut e.kind {
                *target = target.replace("OUTSIDE", outside.to_str().unwrap());
            }
            all.push(e);
        }
        let manifest = Manifest {
            header: Header {
                format_version: crate::FORMAT_VERSION,
                backup_id: Uuid::from_u128(1),
                instance_id: Uuid::from_u128(2),
                parent: None,
                block_size: 4096,
                block_hashes: BlockHashKind::FileTree,
                packs: vec![],
            },
            entries: all,
            hashes: HashCoverage::All,
        };
        assert!(validate(&manifest).is_err(), "validation alone would refuse this manifest");
        let link = ChainLink { manifest, checksum: String::new() };
        let err = apply(&[link], &NoPacks, &target, &mut |_, _| {}, std::time::Instant::now())
            .expect_err("the write escaped or succeeded");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the target");
        let names: Vec<_> = fs::read_dir(outer.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        err
    }

    fn assert_unsafe(err: DeltaError, path: &str) {
        match &err {
            DeltaError::UnsafeEntry { path: p, .. } if p == path => {}
            other => panic!("expected UnsafeEntry for {path:?}, got {other}"),
        }
    }

    #[test]
    fn capability_handles_alone_stop_writes_through_symlinks() {
        let abs = || EntryKind::Symlink { target: "OUTSIDE".into() };
        let rel = || EntryKind::Symlink { target: "../outside".into() };
        assert_unsafe(apply_unvalidated(vec![entry("esc", abs()), entry("esc/evil", empty_file())]), "esc/evil");
        assert_unsafe(apply_unvalidated(vec![entry("esc", abs()), entry("esc/d", EntryKind::Dir)]), "esc/d");
        assert_unsafe(apply_unvalidated(vec![entry("up", rel()), entry("up/evil", empty_file())]), "up/evil");
        // Deeper: a real directory, then a symlink inside it.
        let err = apply_unvalidated(vec![
            entry("d", EntryKind::Dir),
            entry("d/esc", abs()),
            entry("d/esc/evil", empty_file()),
        ]);
        assert_unsafe(err, "d/esc/evil");
    }

    #[test]
    fn capability_handles_alone_stop_dot_dot_and_absolute_paths() {
        assert!(matches!(
            apply_unvalidated(vec![entry("../outside/evil", empty_file())]),
            DeltaError::UnsafeEntry { .. }
        ));
        assert!(apply_unvalidated(vec![entry("..", EntryKind::Dir)]).to_string().contains(".."));
        let err = apply_unvalidated(vec![entry("OUTSIDE/evil", empty_file())]);
        assert!(matches!(err, DeltaError::UnsafeEntry { .. }), "{err}");
        // A hard link to a file outside the target.
        let err = apply_unvalidated(vec![entry("h", EntryKind::HardLink { to: "../outside/x".into() })]);
        assert!(err.to_string().contains("creating hard link"), "{err}");
    }
}
