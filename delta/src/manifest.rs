//! The in-memory manifest.
//!
//! Why it looks like this:
//! - Every backup lists *every* entry, not only the changed ones, so the last
//!   manifest of a chain alone says what the restored tree must be (paths,
//!   kinds, metadata, sizes, content hashes); older links are only consulted
//!   for where bytes live.
//! - In memory, per file we keep the hash of every block. That is what lets
//!   the next backup find changed blocks without reading the parent's data,
//!   and lets a restore check each block as it is read. 16 bytes of BLAKE3
//!   per block is collision-safe for this use.
//! - On disk (format 4), a link records the hashes of the blocks it stores
//!   and no others: a block it does not store equals its parent's, hash
//!   included, so repeating the hash would only repeat bytes. Those repeats
//!   were a sixth of every incremental of a busy database (measured on
//!   pgbench's directory: 5.7 of 33.8 MB, most of it hashes of blocks that
//!   did not change). A decoded incremental is therefore incomplete
//!   ([`HashCoverage::StoredOnly`]) until its parent, itself complete, fills
//!   in the rest ([`Manifest::inherit_hashes`]; a chain at once:
//!   [`crate::resolve_chain`]).
//! - What a backup *stores* for a file is separate from what the file *is*:
//!   `Unchanged`, or runs of consecutive changed blocks. Blocks of a file not
//!   covered by a run are, by definition, equal to the parent's block at the
//!   same index; sizes make growth and truncation explicit.
//! - Entries are sorted by path (byte order). A path's ancestors are proper
//!   prefixes, so they sort before it: a restore that walks the list in order
//!   creates parents before children and never needs to look ahead.

use serde::Serialize;
use uuid::Uuid;

use crate::error::DeltaError;

/// Compact per-block hash: 16 bytes of BLAKE3, made as [`BlockHashKind`] says.
pub type BlockHash = [u8; 16];

/// How a chain's block hashes are made. Fixed by the chain's root, like the
/// block size, because a child's blocks are compared with its parent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum BlockHashKind {
    /// Manifest versions 1 and 2: the block's own BLAKE3 hash. Reading a
    /// file cost two BLAKE3 passes: one for its blocks, one for the file.
    Standalone,
    /// From version 3: the block's chaining value in its file's BLAKE3
    /// tree. A block of 2^k KiB at a multiple of its size is a complete
    /// subtree, so the blocks' values merge into the file's BLAKE3 and one
    /// pass gives both (`cargo run --release -p cairn-bench --bin block-hashing`
    /// measures the two kinds).
    FileTree,
}

/// Seconds and nanoseconds since the Unix epoch (nanosecond precision is kept
/// because databases and `make`-like tools care about it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// Identifies the parent of an incremental backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentRef {
    pub backup_id: Uuid,
    /// BLAKE3 (hex) of the parent's encoded manifest.
    pub checksum: String,
}

/// A pack object written by this backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackRef {
    pub name: String,
    pub size: u64,
    /// BLAKE3 (hex) of the whole pack.
    pub blake3: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    pub format_version: u32,
    pub backup_id: Uuid,
    pub instance_id: Uuid,
    pub parent: Option<ParentRef>,
    /// Fixed for a whole chain (set by its root).
    pub block_size: u32,
    /// Fixed for a whole chain (set by its root); always `Standalone`
    /// before format version 3.
    pub block_hashes: BlockHashKind,
    /// Packs of this backup; [`BlockRun::pack`] indexes this list.
    pub packs: Vec<PackRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub header: Header,
    /// Sorted by path, unique; the first entry is the root directory (`""`).
    pub entries: Vec<Entry>,
    /// Which block hashes [`FileEntry::block_hashes`] holds.
    pub hashes: HashCoverage,
}

/// Which of a file's block hashes a manifest holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HashCoverage {
    /// Every block's, in block order: what a backup makes, what a full
    /// backup and every manifest before format 4 decodes to, and what a
    /// backup or a restore works with.
    All,
    /// Those of the blocks this backup stores (the blocks of its runs, in
    /// block order), as a format-4 incremental decodes; the others are the
    /// parent's at the same index of the same file (or of its rename base).
    StoredOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Relative, `/`-separated; `""` is the backed-up directory itself.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits of `st_mode` including setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    pub mtime: Timestamp,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EntryKind {
    Dir,
    File(FileEntry),
    Symlink {
        target: String,
    },
    /// Same inode as the `File` entry at `to`, which sorts earlier.
    HardLink {
        to: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    pub size: u64,
    /// For change detection only (with size, mtime and ctime).
    pub inode: u64,
    /// For change detection only; never restored. `{0, 0}` marks a file that
    /// was modified too close to when it was read for its timestamps to be
    /// trusted, which forces the next backup to read it.
    pub ctime: Timestamp,
    /// BLAKE3 of the whole content as of this backup.
    pub blake3: [u8; 32],
    /// One per block: `ceil(size / block_size)` entries.
    pub block_hashes: Vec<BlockHash>,
    /// The path, in the parent, of the file whose blocks this one's
    /// unstored blocks equal (same index): set when the file was renamed
    /// since the parent (found by its inode), `None` for the same path.
    /// PostgreSQL recycles WAL segments by renaming them; without this a
    /// recycled segment is stored whole under its new name.
    pub base: Option<String>,
    pub content: FileContent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FileContent {
    /// Content identical to the parent's file at the same path (or at
    /// [`FileEntry::base`]): every block, same size; nothing stored.
    Unchanged,
    /// Blocks stored by this backup, sorted and non-overlapping. Blocks not
    /// covered equal the parent's block at the same index of the same path
    /// (or of [`FileEntry::base`]).
    Stored(Vec<BlockRun>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Compression {
    /// One independently decodable zstd frame.
    Zstd,
    /// Stored as is (compression did not shrink it).
    Raw,
    /// All bytes zero; nothing stored, a restore leaves a hole.
    Zero,
}

/// A frame as a run describes it: pack, offset, stored and decoded
/// lengths, compression.
pub type FrameKey = (u32, u64, u64, u64, Compression);

/// Consecutive blocks of one file stored together, in a frame of a pack.
/// From format 3 the changed blocks of a 1 MiB chunk share one frame
/// whatever runs they form: scattered database pages compress much better
/// together (measured with `pg-blocks`: a fifth fewer stored bytes at
/// 16 KiB blocks, a third fewer at 4 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockRun {
    pub first_block: u64,
    pub count: u64,
    /// Index into [`Header::packs`] (0 and meaningless for `Zero`).
    pub pack: u32,
    /// Byte offset in the pack (0 for `Zero`).
    pub offset: u64,
    /// Bytes in the pack (0 for `Zero`, `raw_len` for `Raw`).
    pub stored_len: u64,
    /// Bytes of file content covered (the last block may be partial).
    pub raw_len: u64,
    /// Where the run's bytes start in its decoded frame (0 for `Zero`).
    pub frame_offset: u64,
    /// Bytes of the decoded frame: `raw_len` for a frame of the run alone,
    /// 0 for `Zero`.
    pub frame_len: u64,
    pub compression: Compression,
}

impl BlockRun {
    pub fn end_block(&self) -> u64 {
        self.first_block + self.count
    }

    /// The frame holding the run's bytes, as this run describes it: runs
    /// that describe it alike decode it once.
    pub fn frame(&self) -> FrameKey {
        (self.pack, self.offset, self.stored_len, self.frame_len, self.compression)
    }
}

impl FileEntry {
    pub fn blake3_hex(&self) -> String {
        hex(&self.blake3)
    }

    /// The parent's path this file's unstored blocks come from.
    pub fn base_or<'a>(&'a self, path: &'a str) -> &'a str {
        self.base.as_deref().unwrap_or(path)
    }

    /// Blocks this backup stores for the file.
    pub fn runs(&self) -> &[BlockRun] {
        match &self.content {
            FileContent::Unchanged => &[],
            FileContent::Stored(runs) => runs,
        }
    }
}

impl Manifest {
    /// Completes a [`HashCoverage::StoredOnly`] manifest with the hashes of
    /// the blocks it does not store, taken from `parent`, the complete
    /// manifest of its parent. Refuses a parent that is not the one this
    /// manifest names, and a block that is neither stored here nor present
    /// in the parent's file (a manifest that lies about its parent); a
    /// refused manifest is left as it was.
    pub fn inherit_hashes(&mut self, parent: &Manifest) -> Result<(), DeltaError> {
        if self.hashes == HashCoverage::All {
            return Ok(());
        }
        let named = self.header.parent.as_ref().map(|p| p.backup_id);
        if named != Some(parent.header.backup_id) || parent.hashes != HashCoverage::All {
            return Err(DeltaError::corrupt(format!(
                "backup {} names parent {named:?}; its block hashes cannot come from backup {}{}",
                self.header.backup_id,
                parent.header.backup_id,
                if parent.hashes == HashCoverage::All { "" } else { ", itself incomplete" },
            )));
        }
        // Every file's hashes are worked out before any is replaced: a
        // refusal leaves the manifest as it was.
        let mut completed = Vec::new();
        for e in &self.entries {
            let EntryKind::File(f) = &e.kind else { continue };
            completed.push(self.file_hashes(&e.path, f, parent)?);
        }
        let files = self.entries.iter_mut().filter_map(|e| match &mut e.kind {
            EntryKind::File(f) => Some(f),
            _ => None,
        });
        for (f, hashes) in files.zip(completed) {
            f.block_hashes = hashes;
        }
        self.hashes = HashCoverage::All;
        Ok(())
    }

    /// Every block hash of `f` (at `path` in this StoredOnly manifest): its
    /// own for the blocks it stores, its parent's file's for the others.
    fn file_hashes(&self, path: &str, f: &FileEntry, parent: &Manifest) -> Result<Vec<BlockHash>, DeltaError> {
        let nblocks = block_count(f.size, self.header.block_size);
        let base = f.base_or(path);
        let from: &[BlockHash] = parent.resolve_file(base).map(|pf| &pf.block_hashes[..]).unwrap_or(&[]);
        let unstored = |first: u64, end: u64| -> Result<&[BlockHash], DeltaError> {
            if first == end {
                return Ok(&[]);
            }
            from.get(first as usize..end as usize).ok_or_else(|| {
                DeltaError::unsafe_entry(
                    path,
                    format!(
                        "blocks {}..{end} are neither stored by backup {} nor in its parent's {base:?} ({} blocks)",
                        first.max(from.len() as u64),
                        self.header.backup_id,
                        from.len()
                    ),
                )
            })
        };
        // Never more than the hashes at hand: a crafted size must not
        // allocate.
        let mut all = Vec::with_capacity(nblocks.min((from.len() + f.block_hashes.len()) as u64) as usize);
        match &f.content {
            FileContent::Unchanged => {
                if from.len() as u64 != nblocks {
                    return Err(DeltaError::unsafe_entry(
                        path,
                        format!("unchanged, yet {nblocks} blocks where its parent's {base:?} has {}", from.len()),
                    ));
                }
                all.extend_from_slice(from);
            }
            FileContent::Stored(runs) => {
                let mut stored = f.block_hashes.iter();
                let mut next = 0u64;
                for r in runs {
                    all.extend_from_slice(unstored(next, r.first_block)?);
                    all.extend(stored.by_ref().take(r.count as usize));
                    next = r.end_block();
                }
                all.extend_from_slice(unstored(next, nblocks)?);
            }
        }
        Ok(all)
    }

    /// Entry at `path` (binary search; entries are sorted).
    pub fn find(&self, path: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.as_str().cmp(path)).ok().map(|i| &self.entries[i])
    }

    /// The regular file whose content `path` has in this manifest, following
    /// one hard-link hop. `None` if the path is absent or not a file.
    pub fn resolve_file(&self, path: &str) -> Option<&FileEntry> {
        match &self.find(path)?.kind {
            EntryKind::File(f) => Some(f),
            EntryKind::HardLink { to } => match &self.find(to)?.kind {
                EntryKind::File(f) => Some(f),
                _ => None,
            },
            _ => None,
        }
    }

    /// Sum of regular file sizes (hard links counted once).
    pub fn logical_size(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File(f) => Some(f.size),
                _ => None,
            })
            .sum()
    }

    /// Sum of this backup's pack sizes.
    pub fn packs_size(&self) -> u64 {
        self.header.packs.iter().map(|p| p.size).sum()
    }
}

/// Number of blocks of a file of `size` bytes.
pub fn block_count(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size))
}

/// Length of block `index` of a file of `size` bytes.
pub(crate) fn block_len(size: u64, block_size: u32, index: u64) -> u64 {
    let bs = u64::from(block_size);
    size.saturating_sub(index * bs).min(bs)
}

/// The compact per-block hash of a [`BlockHashKind::Standalone`] chain.
pub fn block_hash(data: &[u8]) -> BlockHash {
    crate::tree_hash::truncate(blake3::hash(data).as_bytes())
}

/// BLAKE3 hex checksum, as used for manifests and packs.
pub fn checksum(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
