//! Renamed files: an incremental compares a file that is new at its path
//! with the parent's file of the same inode, so a rename (PostgreSQL
//! recycling a WAL segment, a log rotated) stores only the blocks that
//! really changed; restore follows the rename back through the chain.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;

use cairn_delta::*;
use common::*;

const BS: usize = 16 << 10;

fn file_entry<'m>(m: &'m Manifest, path: &str) -> &'m FileEntry {
    match &m.find(path).unwrap_or_else(|| panic!("{path} in the manifest")).kind {
        EntryKind::File(f) => f,
        other => panic!("{path} is {other:?}"),
    }
}

#[test]
fn a_renamed_file_stores_nothing_and_restores() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(11);
    write(&s.join("a"), &random_bytes(&mut r, 20 * BS + 100));
    write(&s.join("keep"), &random_bytes(&mut r, 3 * BS));
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    fs::create_dir(s.join("moved")).unwrap();
    fs::rename(s.join("a"), s.join("moved/c")).unwrap();
    let out = chain.backup(s).clone();
    let c = file_entry(&out.manifest, "moved/c");
    assert_eq!(c.base.as_deref(), Some("a"));
    assert_eq!(c.content, FileContent::Unchanged);
    assert_eq!(out.stats.blocks_stored, 0, "a rename stores no block");
    assert_eq!(out.manifest.packs_size(), 0);
    let (target, stats) = chain.restore(1);
    assert_same(&snapshot(s), &snapshot(target.path()), "after the rename");
    assert_eq!(stats.blocks_written, 21 + 3, "each block written once");
}

/// PostgreSQL's WAL: at a checkpoint, old segments are renamed to future
/// names and later overwritten in place from their start.
#[test]
fn recycled_segments_store_only_the_rewritten_blocks_across_a_chain() {
    let src = tempfile::tempdir().unwrap();
    let wal = src.path().join("pg_wal");
    let mut r = rng(12);
    for seg in 1..=3 {
        write(&wal.join(format!("{seg:024}")), &random_bytes(&mut r, 64 * BS));
    }
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(src.path());
    let mut snaps = vec![snapshot(src.path())];
    // Link 2: segment 1 recycled as 4, its first 5 blocks rewritten.
    // Link 3: segment 4 recycled again as 5, 2 more blocks rewritten; a
    // file that was renamed is then replaced at its old name.
    for (from, to, blocks) in [(1, 4, 5usize), (4, 5, 2)] {
        let (from, to) = (wal.join(format!("{from:024}")), wal.join(format!("{to:024}")));
        fs::rename(&from, &to).unwrap();
        let f = fs::File::options().write(true).open(&to).unwrap();
        f.write_all_at(&random_bytes(&mut r, blocks * BS), 0).unwrap();
        write(&from, &random_bytes(&mut r, 100));
        let out = chain.backup(src.path()).clone();
        let e = file_entry(&out.manifest, to.strip_prefix(src.path()).unwrap().to_str().unwrap());
        assert_eq!(e.base.as_deref(), Some(from.strip_prefix(src.path()).unwrap().to_str().unwrap()));
        let stored: u64 = e.runs().iter().map(|run| run.count).sum();
        assert_eq!(stored, blocks as u64, "only the rewritten blocks of the recycled segment");
        assert_eq!(out.stats.blocks_stored, blocks as u64 + 1, "plus the small new file at the old name");
        snaps.push(snapshot(src.path()));
    }
    for (k, snap) in snaps.iter().enumerate() {
        let (target, _) = chain.restore(k);
        assert_same(snap, &snapshot(target.path()), &format!("link {}", k + 1));
    }
}

#[test]
fn a_rename_over_an_existing_file_compares_with_the_moved_file() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(13);
    write(&s.join("new"), &random_bytes(&mut r, 8 * BS));
    write(&s.join("current"), &random_bytes(&mut r, 8 * BS));
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    // The usual atomic replace: write a new version, rename it over the old.
    let f = fs::File::options().write(true).open(s.join("new")).unwrap();
    f.write_all_at(&random_bytes(&mut r, 10), 3 * BS as u64).unwrap();
    fs::rename(s.join("new"), s.join("current")).unwrap();
    let out = chain.backup(s).clone();
    let e = file_entry(&out.manifest, "current");
    assert_eq!(e.base.as_deref(), Some("new"));
    assert_eq!(out.stats.blocks_stored, 1);
    let (target, _) = chain.restore(1);
    assert_same(&snapshot(s), &snapshot(target.path()), "after the replace");
}

#[test]
fn a_base_the_parent_does_not_have_is_refused_naming_the_file() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(14);
    write(&s.join("a"), &random_bytes(&mut r, 4 * BS));
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    fs::rename(s.join("a"), s.join("b")).unwrap();
    chain.backup(s);
    // A crafted second link whose base names nothing in the parent.
    let mut m = chain.links[1].manifest.clone();
    for e in &mut m.entries {
        if let EntryKind::File(f) = &mut e.kind {
            f.base = Some("nowhere".into());
        }
    }
    chain.links[1] = ChainLink { checksum: checksum(&encode_manifest(&m)), manifest: m };
    let target = tempfile::tempdir().unwrap();
    let err = restore_chain(&chain.links, &chain.packs, target.path(), &mut |_, _| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("file b:") && msg.contains("\"nowhere\"") && msg.contains("link 1"), "{msg}");
    assert_eq!(fs::read_dir(target.path()).unwrap().count(), 0, "nothing written");
}

#[test]
fn a_base_is_validated_like_a_path_and_only_in_version_2() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("a"), b"some bytes");
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    fs::rename(s.join("a"), s.join("b")).unwrap();
    let good = chain.backup(s).manifest.clone();
    assert_eq!(file_entry(&good, "b").base.as_deref(), Some("a"));
    let with_base = |base: &str, version: u32| {
        let mut m = good.clone();
        m.header.format_version = version;
        if version < 3 {
            m.header.block_hashes = BlockHashKind::Standalone;
        }
        for e in &mut m.entries {
            if let EntryKind::File(f) = &mut e.kind {
                f.base = Some(base.into());
            }
        }
        m
    };
    for bad in ["../a", "/etc/passwd", "", "a//b", "b"] {
        let err = validate(&with_base(bad, 2)).unwrap_err();
        assert!(matches!(err, DeltaError::UnsafeEntry { ref path, .. } if path == "b"), "{bad:?}: {err}");
    }
    let err = validate(&with_base("a", 1)).unwrap_err();
    assert!(err.to_string().contains("version 1"), "{err}");
    // Encoded and decoded, a base survives in versions 2 and 3.
    for version in [2, 3] {
        let m = with_base("a", version);
        let bytes = encode_manifest(&m);
        assert_eq!(&bytes[8..12], &version.to_le_bytes());
        assert_eq!(decode_manifest(&bytes).unwrap(), m);
    }
}

/// Chains begun before version 2 still restore, and take children of the
/// current version, which keep the chain's standalone block hashes.
#[test]
fn a_version_1_parent_takes_a_current_child() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(15);
    write(&s.join("a"), &random_bytes(&mut r, 6 * BS));
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    // Rewrite the root as version 1 (no base fields, standalone block
    // hashes of the bytes backed up), as an older build wrote it.
    let mut root = chain.links[0].manifest.clone();
    root.header.format_version = 1;
    root.header.block_hashes = BlockHashKind::Standalone;
    let a = fs::read(s.join("a")).unwrap();
    for e in &mut root.entries {
        if let EntryKind::File(f) = &mut e.kind {
            f.block_hashes = a.chunks(BS).map(block_hash).collect();
        }
    }
    let bytes = encode_manifest(&root);
    assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
    chain.links[0] = ChainLink::from_bytes(&bytes).unwrap();
    assert_eq!(chain.links[0].manifest.header.format_version, 1);
    fs::rename(s.join("a"), s.join("b")).unwrap();
    let out = chain.backup(s).clone();
    assert_eq!(out.manifest.header.format_version, FORMAT_VERSION);
    assert_eq!(out.manifest.header.block_hashes, BlockHashKind::Standalone);
    assert_eq!(file_entry(&out.manifest, "b").base.as_deref(), Some("a"));
    assert_eq!(out.stats.blocks_stored, 0, "the renamed file's blocks match the v1 root's hashes");
    let (target, _) = chain.restore(1);
    assert_same(&snapshot(s), &snapshot(target.path()), "v1 root, v2 child");
    let (target, _) = chain.restore(0);
    assert_eq!(fs::read(target.path().join("a")).unwrap().len(), 6 * BS);
}

/// The kind of block hashes is the chain's: a link of another kind is
/// refused by name, and a version 2 header cannot claim file-tree hashes.
#[test]
fn a_link_with_other_block_hashes_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("a"), b"some bytes");
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    write(&s.join("a"), b"other bytes");
    chain.backup(s);
    let mut child = chain.links[1].manifest.clone();
    child.header.block_hashes = BlockHashKind::Standalone;
    let links = vec![chain.links[0].clone(), ChainLink::from_bytes(&encode_manifest(&child)).unwrap()];
    let err = verify_chain(&links).unwrap_err().to_string();
    assert!(err.contains("link 2") && err.contains("block hashes of kind Standalone differ"), "{err}");

    let mut v2 = chain.links[0].manifest.clone();
    v2.header.format_version = 2;
    let err = validate(&v2).unwrap_err().to_string();
    assert!(err.contains("file-tree block hashes in a version 2 manifest"), "{err}");
}
