//! Shared test helpers: tree snapshots, a pack source over staging dirs, a
//! chain builder and deterministic content generators.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cairn_delta::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, hash: String },
    Symlink { target: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits; `None` for symlinks (Linux has no symlink modes).
    pub mode: Option<u32>,
    pub mtime: (i64, i64),
    pub uid: u32,
    pub gid: u32,
}

pub type Snapshot = BTreeMap<String, Node>;

/// Everything observable about a tree, keyed by relative path ("" = root).
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn walk(root: &Path, rel: &str, out: &mut Snapshot) {
    let path = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    let m = fs::symlink_metadata(&path).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink { target: fs::read_link(&path).unwrap().to_str().unwrap().to_string() }
    } else if ft.is_file() {
        Kind::File { size: m.len(), hash: blake3::hash(&fs::read(&path).unwrap()).to_hex().to_string() }
    } else {
        return; // special files are not part of the comparison
    };
    out.insert(
        rel.to_string(),
        Node {
            kind: kind.clone(),
            mode: (!ft.is_symlink()).then_some(m.mode() & 0o7777),
            mtime: (m.mtime(), m.mtime_nsec()),
            uid: m.uid(),
            gid: m.gid(),
        },
    );
    if kind == Kind::Dir {
        for de in fs::read_dir(&path).unwrap() {
            let name = de.unwrap().file_name().into_string().unwrap();
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            walk(root, &child, out);
        }
    }
}

/// Snapshot minus special files (which a backup skips).
pub fn assert_same(expected: &Snapshot, actual: &Snapshot, what: &str) {
    let mut problems = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => problems.push(format!("missing {p:?}")),
            Some(a) if a != e => problems.push(format!("{p:?}: expected {e:?}, got {a:?}")),
            _ => {}
        }
    }
    for p in actual.keys() {
        if !expected.contains_key(p) {
            problems.push(format!("unexpected {p:?}"));
        }
    }
    assert!(problems.is_empty(), "{what}: trees differ:\n{}", problems.join("\n"));
}

/// Serves pack ranges from the staging directories of each backup.
#[derive(Default)]
pub struct DirPacks {
    pub dirs: HashMap<Uuid, PathBuf>,
}

impl PackSource for DirPacks {
    fn read_range(&self, backup_id: Uuid, pack: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let dir = self.dirs.get(&backup_id).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown backup"))?;
        let f = fs::File::open(dir.join(pack))?;
        let mut buf = vec![0u8; len as usize];
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read_at(&mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled); // short read: the restore must notice
        Ok(buf)
    }
}

/// Builds a chain of backups of one source directory.
pub struct Chain {
    pub tmp: TempDir,
    pub instance: Uuid,
    pub links: Vec<ChainLink>,
    pub outputs: Vec<BackupOutput>,
    pub packs: DirPacks,
    pub opts: BackupOptions,
}

impl Chain {
    pub fn new(opts: BackupOptions) -> Chain {
        Chain {
            tmp: tempfile::tempdir().unwrap(),
            instance: Uuid::new_v4(),
            links: Vec::new(),
            outputs: Vec::new(),
            packs: DirPacks::default(),
            opts,
        }
    }

    /// Back up `src` on top of the last link (full if none).
    pub fn backup(&mut self, src: &Path) -> &BackupOutput {
        let id = Uuid::new_v4();
        let staging = self.tmp.path().join(id.to_string());
        fs::create_dir(&staging).unwrap();
        let parent = self.links.last().map(|l| (&l.manifest, l.checksum.as_str()));
        let mut calls = Vec::new();
        let out = backup_tree(
            src,
            parent,
            LinkIds { backup_id: id, instance_id: self.instance },
            &self.opts,
            &staging,
            &mut |p| calls.push(p),
        )
        .unwrap();
        let last = calls.last().expect("progress reported");
        assert_eq!(last.done_bytes, last.total_bytes, "progress ends at total");
        assert_eq!(out.checksum, checksum(&out.manifest_bytes));
        // What gets stored decodes back to what was built: an incremental
        // once its parent has given it the hashes of the blocks it does
        // not store.
        let mut link = ChainLink::from_bytes_checked(&out.manifest_bytes, &out.checksum).unwrap();
        if let Some(parent) = self.links.last() {
            assert_eq!(link.manifest.hashes, HashCoverage::StoredOnly);
            link.manifest.inherit_hashes(&parent.manifest).unwrap();
        }
        assert_eq!(link.manifest, out.manifest);
        self.packs.dirs.insert(id, staging);
        self.links.push(link);
        self.outputs.push(out);
        self.outputs.last().unwrap()
    }

    /// Restore links[..=k] into a fresh directory and return it.
    pub fn restore(&self, k: usize) -> (TempDir, RestoreStats) {
        let target = tempfile::tempdir().unwrap();
        let mut steps = Vec::new();
        let stats =
            restore_chain(&self.links[..=k], &self.packs, target.path(), &mut |s, n| steps.push((s, n))).unwrap();
        let want: Vec<_> = (1..=k + 1).map(|s| (s, k + 1)).collect();
        assert_eq!(steps, want, "on_step called once per link, root first");
        (target, stats)
    }
}

/// The default options but for the block size: most tests are written
/// for one block geometry.
pub fn blocks_of(block_size: usize) -> BackupOptions {
    BackupOptions { block_size: block_size as u32, ..BackupOptions::default() }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

pub fn compressible_bytes(len: usize) -> Vec<u8> {
    let line = b"2024-01-01 12:00:00 INFO cairn backup line with some repetitive payload\n";
    line.iter().copied().cycle().take(len).collect()
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

pub fn set_mtime(path: &Path, sec: i64, nsec: u32) {
    filetime::set_symlink_file_times(
        path,
        filetime::FileTime::from_unix_time(sec, nsec),
        filetime::FileTime::from_unix_time(sec, nsec),
    )
    .unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Give every entry a distinct nanosecond mtime, directories last and
/// deepest first so setting children does not disturb parents.
pub fn stamp_all(root: &Path, rng: &mut StdRng) {
    let snap = snapshot(root);
    for p in snap.keys().rev() {
        let path = if p.is_empty() { root.to_path_buf() } else { root.join(p) };
        set_mtime(&path, rng.random_range(1_000_000_000..1_700_000_000), rng.random_range(0..1_000_000_000));
    }
}

/// Wait out the backup's "recently changed" window so unchanged files can be
/// referenced by the next backup.
pub fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

/// `m` with one more entry at `path` of `kind` (a copy of its first entry
/// otherwise), kept in path order: how a crafted manifest is made.
pub fn with_entry(m: &Manifest, path: &str, kind: EntryKind) -> Manifest {
    let mut m = m.clone();
    let mut e = m.entries[0].clone();
    e.path = path.to_string();
    e.kind = kind;
    m.entries.push(e);
    m.entries.sort_by(|a, b| a.path.cmp(&b.path));
    m
}
