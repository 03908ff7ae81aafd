//! Full backups restored into an empty directory must be identical.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};

use cairn_delta::*;
use common::*;

const BS: usize = 16 << 10;

#[test]
fn full_backup_restores_identical_tree() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(1);
    for (name, len) in [("empty", 0), ("one", 1), ("bs-1", BS - 1), ("bs", BS), ("bs+1", BS + 1)] {
        write(&s.join("sizes").join(name), &random_bytes(&mut r, len));
    }
    write(&s.join("big/random.bin"), &random_bytes(&mut r, 3 << 20));
    write(&s.join("big/text.log"), &compressible_bytes((3 << 20) + 123));
    write(&s.join("a/b/c/d/deep.txt"), b"deep");
    fs::create_dir_all(s.join("empty/dir/nested")).unwrap();
    fs::create_dir(s.join("a-b")).unwrap(); // sorts between "a" and "a/b"
    write(&s.join("a-b/x"), b"x");
    symlink("../sizes/one", s.join("a/rel-link")).unwrap();
    symlink("/nonexistent/dangling", s.join("dangling")).unwrap();
    symlink("a/b", s.join("dir-link")).unwrap();
    write(&s.join("modes/secret"), b"s");
    write(&s.join("modes/exec"), b"#!/bin/sh\n");
    write(&s.join("modes/suid"), b"suid");
    chmod(&s.join("modes/secret"), 0o600);
    chmod(&s.join("modes/exec"), 0o755);
    chmod(&s.join("modes/suid"), 0o4755);
    fs::create_dir(s.join("modes/sticky")).unwrap();
    chmod(&s.join("modes/sticky"), 0o1777);
    fs::create_dir(s.join("modes/ro-dir")).unwrap();
    write(&s.join("modes/ro-dir/inside"), b"in");
    chmod(&s.join("modes/ro-dir"), 0o555);
    chmod(s, 0o750);
    stamp_all(s, &mut r);
    let before = snapshot(s);

    let mut chain = Chain::new(BackupOptions {
        pack_target_size: 1 << 20, // force several packs
        ..BackupOptions::default()
    });
    let out = chain.backup(s).clone();
    assert!(out.packs.len() > 1, "small pack target starts new packs");
    for p in &out.packs {
        let bytes = fs::read(&p.path).unwrap();
        assert_eq!(bytes.len() as u64, p.size);
        assert_eq!(checksum(&bytes), p.blake3);
    }
    assert_eq!(out.stored_bytes, out.packs.iter().map(|p| p.size).sum::<u64>() + out.manifest_bytes.len() as u64);
    assert_eq!(out.stats.files_read, 13);
    assert_eq!(out.stats.files_referenced, 0);
    assert_eq!(out.stats.symlinks, 3);
    // Compressible data is stored compressed: the text log shrinks a lot.
    assert!(out.stored_bytes < (3 << 20) + (3 << 20) / 4, "{}", out.stored_bytes);

    let (target, stats) = chain.restore(0);
    assert_same(&before, &snapshot(target.path()), "full restore");
    assert_eq!(stats.files, 13);
    assert_eq!(snapshot(s), before, "backup does not modify the source");
}

#[test]
fn sparse_file_stays_sparse() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("sparse.db");
    let f = fs::File::create(&path).unwrap();
    f.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"header", 0).unwrap();
    f.write_all_at(b"middle", 4 << 20).unwrap();
    f.write_all_at(b"end", (8 << 20) - 3).unwrap();
    drop(f);
    let before = snapshot(src.path());

    let mut chain = Chain::new(blocks_of(BS));
    let out = chain.backup(src.path()).clone();
    assert_eq!(out.stats.blocks_stored, 3);
    assert_eq!(out.stats.zero_blocks, (8 << 20) / BS as u64 - 3);
    assert!(out.stored_bytes < 64 << 10, "zero blocks cost nothing");

    let (target, stats) = chain.restore(0);
    assert_same(&before, &snapshot(target.path()), "sparse restore");
    assert_eq!(stats.blocks_written, 3);
    let m = fs::metadata(target.path().join("sparse.db")).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(m.blocks() * 512 <= 256 << 10, "restored file allocates {} bytes", m.blocks() * 512);
}

#[test]
fn hard_links_restored_as_hard_links() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("z/first"), &compressible_bytes(40_000));
    fs::hard_link(s.join("z/first"), s.join("a-second")).unwrap();
    fs::hard_link(s.join("z/first"), s.join("m/third")).unwrap_or_else(|_| {
        fs::create_dir(s.join("m")).unwrap();
        fs::hard_link(s.join("z/first"), s.join("m/third")).unwrap();
    });
    write(&s.join("other"), &compressible_bytes(40_000));
    settle();
    let mut chain = Chain::new(blocks_of(BS));
    let out = chain.backup(s).clone();
    assert_eq!(out.stats.hard_links, 2);
    assert_eq!(out.stats.files_read, 2, "the shared inode is read once");
    // The first link in manifest order carries the content.
    let first = out.manifest.find("a-second").unwrap();
    assert!(matches!(first.kind, EntryKind::File(_)));
    assert_eq!(out.manifest.find("z/first").unwrap().kind, EntryKind::HardLink { to: "a-second".into() });

    let (target, _) = chain.restore(0);
    let t = target.path();
    assert_same(&snapshot(s), &snapshot(t), "hard link restore");
    let ino = |p: &str| fs::metadata(t.join(p)).unwrap().ino();
    assert_eq!(ino("a-second"), ino("z/first"));
    assert_eq!(ino("a-second"), ino("m/third"));
    assert_ne!(ino("a-second"), ino("other"));
    assert_eq!(fs::metadata(t.join("z/first")).unwrap().nlink(), 3);

    // Remove the first link: the new first link ("m/third") is compared
    // with the parent's content through the parent's hard-link entry. The
    // unlink changed the inode's ctime, so it is read, but nothing is stored.
    fs::remove_file(s.join("a-second")).unwrap();
    let out = chain.backup(s).clone();
    assert_eq!(out.stats.files_read, 1);
    assert_eq!(out.stats.files_referenced, 1, "\"other\" is not read");
    assert_eq!(out.stats.blocks_stored, 0);
    assert_eq!(out.stats.blocks_unchanged, 3);
    assert!(out.packs.is_empty());
    let (target, _) = chain.restore(1);
    assert_same(&snapshot(s), &snapshot(target.path()), "after unlink");
}

#[test]
fn special_files_are_skipped_and_listed() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f"), b"data");
    let _sock = std::os::unix::net::UnixListener::bind(src.path().join("sock")).unwrap();
    let mut chain = Chain::new(blocks_of(BS));
    let out = chain.backup(src.path()).clone();
    assert_eq!(out.stats.skipped_special, vec!["sock".to_string()]);
    assert!(out.manifest.find("sock").is_none());
    let (target, _) = chain.restore(0);
    assert_same(&snapshot(src.path()), &snapshot(target.path()), "without socket");
}

#[test]
fn restore_refuses_non_empty_or_missing_target() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f"), b"data");
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(src.path());
    let target = tempfile::tempdir().unwrap();
    write(&target.path().join("junk"), b"x");
    let err = restore_chain(&chain.links, &chain.packs, target.path(), &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let missing = target.path().join("missing");
    let err = restore_chain(&chain.links, &chain.packs, &missing, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let link = target.path().join("link");
    let empty = tempfile::tempdir().unwrap();
    symlink(empty.path(), &link).unwrap();
    let err = restore_chain(&chain.links, &chain.packs, &link, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn invalid_options_rejected() {
    let src = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    for opts in [
        BackupOptions { block_size: 3000, ..Default::default() },
        BackupOptions { block_size: 2 << 20, ..Default::default() },
        BackupOptions { pack_target_size: 0, ..Default::default() },
    ] {
        let err = backup_tree(
            src.path(),
            None,
            LinkIds { backup_id: uuid::Uuid::new_v4(), instance_id: uuid::Uuid::new_v4() },
            &opts,
            staging.path(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, DeltaError::InvalidOptions(_)), "{err}");
    }
}

/// A file's BLAKE3 is merged from the 1 MiB chunks' subtrees hashed on
/// several threads; at every size around the chunk and tree boundaries it
/// must be exactly `blake3::hash` of the content.
#[test]
fn file_hashes_are_blake3_of_the_content_at_chunk_boundaries() {
    const MIB: usize = 1 << 20;
    let sizes = [
        0,
        1,
        1023,
        1024,
        1025,
        16383,
        16384,
        16385,
        3 * 16384 + 1,
        5 * 16384,
        MIB - 1,
        MIB,
        MIB + 1,
        2 * MIB,
        2 * MIB + 1,
        3 * MIB,
        3 * MIB + 5,
        4 * MIB,
        4 * MIB + 1,
        5 * MIB + 16384,
        7 * MIB + 3,
        8 * MIB,
        9 * MIB - 1,
    ];
    let src = tempfile::tempdir().unwrap();
    let mut r = rng(21);
    for size in sizes {
        write(&src.path().join(format!("f{size:09}")), &random_bytes(&mut r, size));
    }
    for bs in [4096, BS] {
        let mut chain = Chain::new(blocks_of(bs));
        let out = chain.backup(src.path()).clone();
        assert_eq!(out.manifest.header.block_hashes, BlockHashKind::FileTree);
        for size in sizes {
            let name = format!("f{size:09}");
            let EntryKind::File(f) = &out.manifest.find(&name).unwrap().kind else { panic!("{name} is a file") };
            let content = fs::read(src.path().join(&name)).unwrap();
            assert_eq!(f.blake3, *blake3::hash(&content).as_bytes(), "file of {size} bytes, {bs} byte blocks");
            // One BLAKE3 pass gave the blocks' hashes too: each block's
            // value in the file's tree.
            let expected: Vec<BlockHash> =
                content.chunks(bs).zip(0u64..).map(|(b, i)| BlockHashKind::FileTree.hash(b, i * bs as u64)).collect();
            assert_eq!(f.block_hashes, expected, "block hashes of the file of {size} bytes, {bs} byte blocks");
        }
        let (target, _) = chain.restore(0);
        assert_same(&snapshot(src.path()), &snapshot(target.path()), "restored");
    }
}
