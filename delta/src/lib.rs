//! cairn's on-disk backup format: per-file, fixed-size-block deltas packed
//! into a few large objects, described by one compact manifest per backup.
//!
//! Design decisions (see DESIGN.md §6 for the contract):
//! - **Fixed blocks, not content-defined chunks.** Databases rewrite pages in
//!   place; fixed blocks aligned to a multiple of the page size turn a
//!   scattered page write into exactly the blocks touched, where CDC would
//!   re-chunk around each write. The block size is fixed by a chain's root.
//! - **Change detection without reading.** A file whose size, mtime, ctime and
//!   inode equal its parent entry is referenced, not read (pgBackRest,
//!   PostgreSQL 17 incremental backup do the same). Files modified within a
//!   second of being read get their ctime recorded as `{0,0}` so the next
//!   backup cannot mistake a same-tick modification for "unchanged".
//! - **The chain's manifests carry every block hash**, each link those of
//!   the blocks it stores, so an incremental backup compares blocks against
//!   the parent without fetching any parent data, and a restore verifies
//!   every block it reads and every file it writes.
//! - **Few large packs.** Stored blocks are appended, as independently
//!   decodable zstd frames (or raw when compression does not help), to packs
//!   of ~64 MiB: object stores charge per request, and independent frames let
//!   a restore fetch exactly the byte range it needs.
//! - **Newest-first resolution, root-first execution.** A restore works out,
//!   for every block of the final tree, the newest link that stores it, then
//!   performs the writes link by link from the root, so progress reads as
//!   "step k of N" and every byte is still written exactly once.
//! - **Synchronous and streaming.** Memory is bounded by the block size, the
//!   run size and the manifests, never by file sizes; the async service runs
//!   this on a blocking thread and does the object-store I/O itself.
//! - **Hostile input.** Manifests and packs come back from storage; decoding
//!   is bounded and validates everything (refusals name the entry:
//!   [`DeltaError::UnsafeEntry`]), and a restore writes only through
//!   capability handles on its target (cap-std) that never follow a symlink.

mod backup;
mod chain;
mod codec;
mod error;
mod manifest;
mod restore;
mod sync;
mod tree_hash;
mod wide_hash;

pub use backup::{BackupOutput, BackupStats, StagedPack, backup_tree, block_compressor};
pub use chain::{ChainLink, resolve_chain, resolve_last, verify_chain};
pub use codec::{
    DecodeLimits, MAX_MANIFEST_DECODED, MAX_MANIFEST_MEMORY, MAX_RUN_RAW, decode_manifest, decode_manifest_with_limits,
    encode_manifest, validate,
};
pub use error::DeltaError;
pub use manifest::{
    BlockHash, BlockHashKind, BlockRun, Compression, Entry, EntryKind, FileContent, FileEntry, HashCoverage, Header,
    Manifest, PackRef, ParentRef, Timestamp, block_count, block_hash, checksum,
};
pub use restore::{PackSource, RestoreStats, decode_run, restore_chain};
pub use wide_hash::block_values;

/// Version of the manifest encoding written (and of the pack layout it
/// implies). Version 2 added a file's rename base ([`FileEntry::base`]);
/// version 3 the chain's [`BlockHashKind`]; version 4 records only the
/// stored blocks' hashes ([`HashCoverage`]).
pub const FORMAT_VERSION: u32 = 4;
/// The oldest version still read: chains begun before an upgrade restore,
/// and take children of the current version.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Smallest accepted block size.
pub const MIN_BLOCK_SIZE: u32 = 4 << 10;
/// Largest accepted block size.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;

/// Tuning of [`backup_tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOptions {
    /// Power of two in 4 KiB..=1 MiB; default 4 KiB, chosen by measurement
    /// (`pg-blocks`): a changed 8 KiB database page often differs in one
    /// half only, and with a chunk's changed blocks compressed together
    /// small blocks no longer compress worse. Ignored for incremental
    /// backups, which use the chain's.
    pub block_size: u32,
    /// A new pack is started once the current one reaches this size.
    pub pack_target_size: u64,
    /// zstd level for stored blocks (1 favours throughput).
    pub zstd_level: i32,
    /// Largest rate at which file data is read, in bytes per second; `None`
    /// reads as fast as the disk allows. A backup of a live database's
    /// directory should not starve the database of I/O.
    pub read_limit: Option<u64>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions { block_size: 4 << 10, pack_target_size: 64 << 20, zstd_level: 1, read_limit: None }
    }
}

/// Identity of the backup being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkIds {
    pub backup_id: uuid::Uuid,
    pub instance_id: uuid::Uuid,
}

/// Progress of [`backup_tree`]; `total_bytes` comes from a metadata-only walk
/// done first, so it is known before any data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}
