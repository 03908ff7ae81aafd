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
//! - **Never escape the target.** Paths were validated when decoding;
//!   entries are created in sorted order (parents first) inside an empty
//!   target, every parent is checked not to be a symlink, files are created
//!   with `create_new` and re-opened only if they are still the inode we
//!   created. Metadata comes last (modes could make directories read-only),
//!   deepest first so directory mtimes survive their children's creation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::{ChainLink, verify_chain};
use crate::error::DeltaError;
use crate::manifest::*;

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
}

/// A span of blocks of one final file to be taken from one stored run.
struct Piece {
    entry: usize,
    run: BlockRun,
    from: u64,
    to: u64,
}

/// Restore `links` (root first) into the empty directory `target`.
pub fn restore_chain(
    links: &[ChainLink],
    packs: &dyn PackSource,
    target: &Path,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<RestoreStats, DeltaError> {
    verify_chain(links)?;
    check_target(target)?;
    let n = links.len();
    let last = &links[n - 1].manifest;
    let bs = last.header.block_size;
    let zero_full = block_hash(&vec![0u8; bs as usize]);

    // 1. Plan: newest-first resolution of every block.
    let mut plan: Vec<Vec<Piece>> = (0..n).map(|_| Vec::new()).collect();
    for (idx, e) in last.entries.iter().enumerate() {
        if let EntryKind::File(f) = &e.kind {
            resolve_file(links, idx, &e.path, f, bs, &zero_full, &mut plan)?;
        }
    }

    // 2. Create the tree (no content yet).
    let mut stats = RestoreStats::default();
    let mut inodes: Vec<u64> = vec![0; last.entries.len()];
    for (idx, e) in last.entries.iter().enumerate() {
        if e.path.is_empty() {
            continue;
        }
        let path = target.join(&e.path);
        check_parent_dir(target, &path)?;
        match &e.kind {
            EntryKind::Dir => fs::create_dir(&path).map_err(|err| DeltaError::io(&path, "creating directory", err))?,
            EntryKind::Symlink { target: t } => {
                std::os::unix::fs::symlink(t, &path).map_err(|err| DeltaError::io(&path, "creating symlink", err))?
            }
            EntryKind::HardLink { to } => {
                fs::hard_link(target.join(to), &path).map_err(|err| DeltaError::io(&path, "creating hard link", err))?
            }
            EntryKind::File(f) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|err| DeltaError::io(&path, "creating file", err))?;
                file.set_len(f.size).map_err(|err| DeltaError::io(&path, "setting file size", err))?;
                inodes[idx] = file.metadata().map_err(|err| DeltaError::io(&path, "reading metadata", err))?.ino();
                stats.files += 1;
            }
        }
    }

    // 3. Write content, link by link from the root.
    let mut open: Option<(usize, File)> = None;
    for (k, pieces) in plan.iter_mut().enumerate() {
        on_step(k + 1, n);
        let header = &links[k].manifest.header;
        pieces.sort_by_key(|p| (p.run.pack, p.run.offset, p.from));
        let mut decoded: Option<((u32, u64), Vec<u8>)> = None;
        for p in pieces.iter() {
            let key = (p.run.pack, p.run.offset);
            if decoded.as_ref().is_none_or(|(dk, _)| *dk != key) {
                decoded = Some((key, fetch_run(packs, header, &p.run)?));
            }
            let data = &decoded.as_ref().expect("just decoded").1;
            let e = &last.entries[p.entry];
            let EntryKind::File(f) = &e.kind else { unreachable!("pieces are only planned for files") };
            let pack_name = &header.packs[p.run.pack as usize].name;
            let bsu = u64::from(bs);
            let start = (p.from - p.run.first_block) * bsu;
            let mut end = start;
            for j in p.from..p.to {
                let off = (j - p.run.first_block) * bsu;
                let len = bsu.min(p.run.raw_len - off);
                let block = &data[off as usize..(off + len) as usize];
                if block_hash(block) != f.block_hashes[j as usize] || j * bsu + len > f.size {
                    return Err(DeltaError::PackData {
                        backup_id: header.backup_id,
                        pack: pack_name.clone(),
                        offset: p.run.offset,
                        reason: format!("block {j} of file {} does not match its hash in the last manifest", e.path),
                    });
                }
                end = off + len;
            }
            let path = target.join(&e.path);
            if open.as_ref().is_none_or(|(i, _)| *i != p.entry) {
                open = Some((p.entry, reopen(&path, inodes[p.entry])?));
            }
            let file = &open.as_ref().expect("just opened").1;
            file.write_all_at(&data[start as usize..end as usize], p.from * bsu)
                .map_err(|err| DeltaError::io(&path, "writing", err))?;
            stats.blocks_written += p.to - p.from;
            stats.bytes_written += end - start;
        }
    }
    drop(open);

    // 4. Verify every file against the last manifest.
    let last_id = links[n - 1].manifest.header.backup_id;
    for e in &last.entries {
        if let EntryKind::File(f) = &e.kind {
            let path = target.join(&e.path);
            let actual = hash_file(&path)?;
            if actual != f.blake3 {
                return Err(DeltaError::ContentMismatch {
                    path: e.path.clone(),
                    position: n,
                    backup_id: last_id,
                    expected: f.blake3_hex(),
                    actual: crate::manifest::hex(&actual),
                });
            }
        }
    }

    // 5. Metadata, deepest first (reverse sorted order), root last.
    for e in last.entries.iter().rev() {
        let path = if e.path.is_empty() { target.to_path_buf() } else { target.join(&e.path) };
        set_metadata(&path, e)?;
    }
    Ok(stats)
}

fn resolve_file(
    links: &[ChainLink],
    idx: usize,
    path: &str,
    f: &FileEntry,
    bs: u32,
    zero_full: &BlockHash,
    plan: &mut [Vec<Piece>],
) -> Result<(), DeltaError> {
    let nblocks = f.block_hashes.len() as u64;
    let mut resolved = vec![false; nblocks as usize];
    let mut remaining = nblocks;
    let mut k = links.len();
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
        let Some(fk) = m.resolve_file(path) else {
            return Err(DeltaError::Resolve {
                path: path.to_string(),
                reason: format!(
                    "needs {remaining} blocks from link {} (backup {}), where it is not a regular file",
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
                                let zh = if len == u64::from(bs) {
                                    *zero_full
                                } else {
                                    block_hash(&vec![0u8; len as usize])
                                };
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
    }
    Ok(())
}

fn fetch_run(packs: &dyn PackSource, h: &Header, run: &BlockRun) -> Result<Vec<u8>, DeltaError> {
    let pack = &h.packs[run.pack as usize].name;
    let data =
        packs.read_range(h.backup_id, pack, run.offset, run.stored_len).map_err(|source| DeltaError::PackRead {
            backup_id: h.backup_id,
            pack: pack.clone(),
            offset: run.offset,
            len: run.stored_len,
            source,
        })?;
    let fail = |reason: String| DeltaError::PackData {
        backup_id: h.backup_id,
        pack: pack.clone(),
        offset: run.offset,
        reason,
    };
    if data.len() as u64 != run.stored_len {
        return Err(fail(format!("truncated: got {} of {} bytes", data.len(), run.stored_len)));
    }
    let raw = match run.compression {
        Compression::Raw => data,
        Compression::Zstd => {
            zstd::bulk::decompress(&data, run.raw_len as usize).map_err(|e| fail(format!("cannot decompress: {e}")))?
        }
        Compression::Zero => unreachable!("zero runs are never fetched"),
    };
    if raw.len() as u64 != run.raw_len {
        return Err(fail(format!("decoded {} bytes, manifest says {}", raw.len(), run.raw_len)));
    }
    Ok(raw)
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

/// Refuse to create `path` unless its parent is a real directory.
fn check_parent_dir(target: &Path, path: &Path) -> Result<(), DeltaError> {
    let parent = path.parent().unwrap_or(target);
    match fs::symlink_metadata(parent) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DeltaError::Target {
            path: parent.to_path_buf(),
            reason: "a path component is not a directory (symlink?)".into(),
        }),
        Err(e) => Err(DeltaError::io(parent, "checking directory", e)),
    }
}

fn reopen(path: &PathBuf, inode: u64) -> Result<File, DeltaError> {
    let meta = fs::symlink_metadata(path).map_err(|e| DeltaError::io(path, "checking file", e))?;
    if !meta.is_file() || meta.ino() != inode {
        return Err(DeltaError::Target { path: path.clone(), reason: "file was replaced during the restore".into() });
    }
    let f = OpenOptions::new().write(true).open(path).map_err(|e| DeltaError::io(path, "opening for writing", e))?;
    let m = f.metadata().map_err(|e| DeltaError::io(path, "reading metadata", e))?;
    if m.ino() != inode {
        return Err(DeltaError::Target { path: path.clone(), reason: "file was replaced during the restore".into() });
    }
    Ok(f)
}

fn hash_file(path: &Path) -> Result<[u8; 32], DeltaError> {
    let mut f = File::open(path).map_err(|e| DeltaError::io(path, "opening to verify", e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DeltaError::io(path, "reading to verify", e)),
        };
        h.update(&buf[..n]);
    }
    Ok(*h.finalize().as_bytes())
}

fn set_metadata(path: &Path, e: &Entry) -> Result<(), DeltaError> {
    if matches!(e.kind, EntryKind::HardLink { .. }) {
        return Ok(()); // same inode as its first link, which carries the metadata
    }
    // Ownership first: chown clears setuid/setgid, chmod restores them.
    match std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid)) {
        Ok(()) => {}
        Err(err) if matches!(err.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput) => {}
        Err(err) => return Err(DeltaError::io(path, "setting owner", err)),
    }
    let mtime = filetime::FileTime::from_unix_time(e.mtime.sec, e.mtime.nsec);
    if let EntryKind::Symlink { .. } = e.kind {
        return filetime::set_symlink_file_times(path, mtime, mtime)
            .map_err(|err| DeltaError::io(path, "setting symlink times", err));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(e.mode))
        .map_err(|err| DeltaError::io(path, "setting mode", err))?;
    filetime::set_file_times(path, mtime, mtime).map_err(|err| DeltaError::io(path, "setting times", err))
}
