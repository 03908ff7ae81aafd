//! BLAKE3 as a tree: one pass over a file gives its blocks' hashes and its
//! own hash.
//!
//! BLAKE3 splits its input into 1 KiB chunks and hashes them as a binary
//! tree whose left subtree always holds the largest power of two of chunks
//! below the total. A block of 2^k KiB that starts at a multiple of its size
//! is therefore a complete subtree of its file's tree, and so is a 1 MiB
//! read chunk. Hashing each block as a subtree (its "chaining value") and
//! merging the values upwards gives exactly `blake3::hash(file)`, without
//! hashing any byte twice. Before this, a backup hashed every byte twice:
//! once per block, once for the file.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

use crate::manifest::{BlockHash, BlockHashKind, Entry, EntryKind, Manifest, block_hash};

impl BlockHashKind {
    /// The hash of `block`, found at `offset` in its file. The offset is a
    /// multiple of the block size and the block is not empty.
    pub fn hash(self, block: &[u8], offset: u64) -> BlockHash {
        match self {
            BlockHashKind::Standalone => block_hash(block),
            BlockHashKind::FileTree => truncate(&subtree_value(block, offset)),
        }
    }
}

/// The chaining value of `data`, a complete subtree of its file's tree
/// that starts at `offset` (never the root).
pub(crate) fn subtree_value(data: &[u8], offset: u64) -> ChainingValue {
    blake3::Hasher::new().set_input_offset(offset).update(data).finalize_non_root()
}

/// The compact form of a hash or chaining value.
pub(crate) fn truncate(full: &[u8; 32]) -> BlockHash {
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// The chaining value of consecutive complete subtrees of equal size (the
/// last may be shorter), merged as BLAKE3's tree shape requires.
pub(crate) fn merge(parts: &[ChainingValue]) -> ChainingValue {
    match parts {
        [] => unreachable!("a subtree holds at least one part"),
        [only] => *only,
        _ => {
            let left = left_count(parts.len());
            merge_subtrees_non_root(&merge(&parts[..left]), &merge(&parts[left..]), Mode::Hash)
        }
    }
}

/// The root hash of a file made of at least two such subtrees.
pub(crate) fn merge_root(parts: &[ChainingValue]) -> [u8; 32] {
    assert!(parts.len() >= 2, "a file of one part has no merge: its root is hashed directly");
    let left = left_count(parts.len());
    *merge_subtrees_root(&merge(&parts[..left]), &merge(&parts[left..]), Mode::Hash).as_bytes()
}

/// The largest power of two below `n` (n >= 2): the left subtree's parts.
/// Parts of 2^k chunks split where BLAKE3 splits their chunks, because the
/// split of more than one part falls on a part boundary.
fn left_count(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The values of the blocks a restore wrote (or found to be zeros), kept
/// as each block is checked against its manifest hash: merged, they are
/// the restored file's BLAKE3, so a file-tree chain's restore checks every
/// file without reading it back and hashing it again.
pub(crate) struct BlockValues {
    kind: BlockHashKind,
    /// False for a restore too large to keep a value per block (memory
    /// must not grow with the data): its files are read back instead.
    keep: bool,
    /// (entry index, block index, value); file-tree chains only.
    values: Vec<(usize, u64, ChainingValue)>,
    /// (entry index, root hash) of the files of one block.
    roots: Vec<(usize, [u8; 32])>,
}

impl BlockValues {
    pub(crate) fn new(kind: BlockHashKind, keep: bool) -> Self {
        BlockValues { kind, keep, values: Vec::new(), roots: Vec::new() }
    }

    /// The hash the manifest records for `block`, block `index` of the
    /// `nblocks` of file `entry`; its value is kept.
    pub(crate) fn hash(&mut self, entry: usize, index: u64, nblocks: u64, block: &[u8], block_size: u64) -> BlockHash {
        match self.kind {
            BlockHashKind::Standalone => block_hash(block),
            BlockHashKind::FileTree if !self.keep => truncate(&subtree_value(block, index * block_size)),
            BlockHashKind::FileTree => {
                let value = subtree_value(block, index * block_size);
                self.values.push((entry, index, value));
                if nblocks == 1 {
                    self.roots.push((entry, *blake3::hash(block).as_bytes()));
                }
                truncate(&value)
            }
        }
    }

    pub(crate) fn absorb(&mut self, other: BlockValues) {
        self.values.extend(other.values);
        self.roots.extend(other.roots);
    }

    /// The files of `m` whose blocks' merged values are not their BLAKE3,
    /// with the hash found; and the files these values cannot check (a
    /// standalone chain's, or any whose blocks were not each seen once),
    /// by entry index, to be read back.
    pub(crate) fn check(mut self, m: &Manifest) -> (Vec<(&Entry, [u8; 32])>, Vec<usize>) {
        let files = m.entries.iter().enumerate().filter_map(|(i, e)| match &e.kind {
            EntryKind::File(f) => Some((i, e, f)),
            _ => None,
        });
        if self.kind == BlockHashKind::Standalone || !self.keep {
            return (Vec::new(), files.map(|(i, _, _)| i).collect());
        }
        self.values.sort_unstable_by_key(|&(entry, block, _)| (entry, block));
        self.roots.sort_unstable_by_key(|&(entry, _)| entry);
        let (mut wrong, mut unchecked) = (Vec::new(), Vec::new());
        let mut parts = Vec::new();
        for (i, e, f) in files {
            let from = self.values.partition_point(|v| v.0 < i);
            let to = self.values.partition_point(|v| v.0 <= i);
            let mine = &self.values[from..to];
            let complete = mine.len() == f.block_hashes.len() && mine.iter().zip(0u64..).all(|(v, j)| v.1 == j);
            let root = self.roots.binary_search_by_key(&i, |r| r.0).ok().map(|r| self.roots[r].1);
            let actual = match mine.len() {
                _ if !complete => None,
                0 => Some(*blake3::hash(b"").as_bytes()),
                1 => root,
                _ => {
                    parts.clear();
                    parts.extend(mine.iter().map(|v| v.2));
                    Some(merge_root(&parts))
                }
            };
            match actual {
                Some(a) if a == f.blake3 => {}
                Some(a) => wrong.push((e, a)),
                None => unchecked.push(i),
            }
        }
        (wrong, unchecked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merged values are BLAKE3's own, for files that end anywhere in
    /// a block and have any number of blocks; block sizes 4 and 16 KiB.
    #[test]
    fn merged_block_values_are_the_files_blake3() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for bs in [4096usize, 16384] {
            for len in [bs + 1, 2 * bs, 2 * bs + 7, 3 * bs, 5 * bs - 1, 8 * bs, 9 * bs + 100, 17 * bs + 1] {
                let file = &data[..len];
                let parts: Vec<ChainingValue> =
                    file.chunks(bs).enumerate().map(|(i, b)| subtree_value(b, (i * bs) as u64)).collect();
                assert_eq!(&merge_root(&parts), blake3::hash(file).as_bytes(), "bs {bs}, len {len}");
            }
        }
    }

    /// Values not kept: every file is left to be read back, none judged.
    #[test]
    fn a_restore_too_large_to_keep_values_reads_every_file_back() {
        let block = vec![1u8; 4096];
        let file = EntryKind::File(crate::manifest::FileEntry {
            size: 4096,
            inode: 1,
            ctime: Default::default(),
            blake3: [0; 32], // wrong: only a read-back may judge it
            block_hashes: vec![BlockHashKind::FileTree.hash(&block, 0)],
            base: None,
            content: crate::manifest::FileContent::Unchanged,
        });
        let m = Manifest {
            header: crate::manifest::Header {
                format_version: crate::FORMAT_VERSION,
                backup_id: uuid::Uuid::from_u128(1),
                instance_id: uuid::Uuid::from_u128(2),
                parent: None,
                block_size: 4096,
                block_hashes: BlockHashKind::FileTree,
                packs: vec![],
            },
            entries: vec![Entry {
                path: "f".into(),
                kind: file,
                mode: 0o644,
                mtime: Default::default(),
                uid: 0,
                gid: 0,
            }],
            hashes: crate::manifest::HashCoverage::All,
        };
        for keep in [true, false] {
            let mut values = BlockValues::new(BlockHashKind::FileTree, keep);
            assert_eq!(values.hash(0, 0, 1, &block, 4096), BlockHashKind::FileTree.hash(&block, 0));
            let (wrong, unchecked) = values.check(&m);
            if keep {
                assert_eq!((wrong.len(), unchecked.len()), (1, 0), "judged from the kept values");
                assert_eq!(wrong[0].1, *blake3::hash(&block).as_bytes());
            } else {
                assert_eq!((wrong.len(), unchecked), (0, vec![0]), "left to the read-back");
            }
        }
    }

    #[test]
    fn the_two_kinds_differ_and_file_tree_depends_on_the_offset() {
        let block = vec![7u8; 16384];
        let standalone = BlockHashKind::Standalone.hash(&block, 16384);
        assert_eq!(standalone, block_hash(&block));
        let at_1 = BlockHashKind::FileTree.hash(&block, 16384);
        let at_2 = BlockHashKind::FileTree.hash(&block, 32768);
        assert_ne!(standalone, at_1);
        assert_ne!(at_1, at_2);
    }
}
