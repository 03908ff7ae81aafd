//! Incremental backups: change detection, block deltas, and chains whose
//! every link restores to exactly the source state at that link.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, symlink};
use std::path::Path;

use cairn_delta::*;
use common::*;
use rand::Rng;
use rand::rngs::StdRng;

/// The block size these tests are written for.
const BS: usize = 16 << 10;

fn files(s: &Snapshot) -> Vec<String> {
    s.iter().filter(|(_, n)| matches!(n.kind, Kind::File { .. })).map(|(p, _)| p.clone()).collect()
}

fn dirs(s: &Snapshot) -> Vec<String> {
    s.iter().filter(|(p, n)| !p.is_empty() && n.kind == Kind::Dir).map(|(p, _)| p.clone()).collect()
}

fn pick(r: &mut StdRng, v: &[String]) -> Option<String> {
    (!v.is_empty()).then(|| v[r.random_range(0..v.len())].clone())
}

fn fresh_name(r: &mut StdRng, s: &Snapshot) -> String {
    let ds = dirs(s);
    loop {
        let name = format!("n{}", r.random_range(0..100_000));
        let p = match pick(r, &ds) {
            Some(d) if r.random_bool(0.6) => format!("{d}/{name}"),
            _ => name,
        };
        if !s.contains_key(&p) {
            return p;
        }
    }
}

/// Apply edit `op` somewhere in the tree; returns a description.
fn edit(root: &Path, op: usize, r: &mut StdRng, bs: u64) -> String {
    let s = snapshot(root);
    let fs_ = files(&s);
    let Some(f) = pick(r, &fs_) else {
        let p = fresh_name(r, &s);
        write(&root.join(&p), &random_bytes(r, 5000));
        return format!("create {p}");
    };
    let path = root.join(&f);
    let size = fs::metadata(&path).unwrap().len();
    let desc = match op {
        0 => {
            // rewrite a few blocks in place
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            let nblocks = size.div_ceil(bs).max(1);
            for _ in 0..r.random_range(1..4) {
                let b = r.random_range(0..nblocks);
                let len = bs.min(size.saturating_sub(b * bs)).max(1);
                file.write_all_at(&random_bytes(r, len as usize), b * bs).unwrap();
            }
            format!("rewrite blocks of {f}")
        }
        1 => {
            let file = OpenOptions::new().append(true).open(&path).unwrap();
            let n = r.random_range(1..3 * bs as usize);
            file.write_all_at(&random_bytes(r, n), size).unwrap();
            format!("append {n} to {f}")
        }
        2 => {
            let n = r.random_range(0..=size);
            fs::File::options().write(true).open(&path).unwrap().set_len(n).unwrap();
            format!("truncate {f} to {n}")
        }
        3 => {
            fs::File::options().write(true).open(&path).unwrap().set_len(0).unwrap();
            format!("shrink {f} to zero")
        }
        4 => {
            fs::remove_file(&path).unwrap();
            format!("delete {f}")
        }
        5 => {
            let p = fresh_name(r, &s);
            let n = r.random_range(0..200_000);
            let mut data = random_bytes(r, n);
            if n > 3 * bs as usize {
                data[bs as usize..3 * bs as usize].fill(0); // a hole-like region
            }
            write(&root.join(&p), &data);
            format!("create {p} ({n} bytes)")
        }
        6 => {
            let p = fresh_name(r, &s);
            fs::rename(&path, root.join(&p)).unwrap();
            format!("rename {f} -> {p}")
        }
        7 => {
            fs::remove_file(&path).unwrap();
            fs::create_dir(&path).unwrap();
            write(&path.join("inside"), &random_bytes(r, 3000));
            format!("file {f} -> dir")
        }
        8 => {
            let Some(d) = pick(r, &dirs(&s)) else {
                return "no dir".into();
            };
            fs::remove_dir_all(root.join(&d)).unwrap();
            write(&root.join(&d), &random_bytes(r, 7000));
            format!("dir {d} -> file")
        }
        9 => {
            fs::remove_file(&path).unwrap();
            symlink(format!("target-of-{f}"), &path).unwrap();
            format!("file {f} -> symlink")
        }
        10 => {
            chmod(&path, 0o640);
            format!("chmod {f}")
        }
        11 => {
            // zero out a block range in place (stored as zero blocks)
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            let len = size.min(2 * bs);
            file.write_all_at(&vec![0u8; len as usize], 0).unwrap();
            format!("zero start of {f}")
        }
        _ => unreachable!(),
    };
    if let Ok(m) = fs::symlink_metadata(&path)
        && r.random_bool(0.5)
        && !m.is_dir()
    {
        set_mtime(&path, r.random_range(1..1_700_000_000), r.random_range(0..1_000_000_000));
    }
    desc
}

fn initial_tree(root: &Path, r: &mut StdRng) {
    for i in 0..8 {
        let n = r.random_range(0..300_000);
        write(&root.join(format!("d{}/f{i}", i % 3)), &random_bytes(r, n));
    }
    write(&root.join("d0/sub/big.bin"), &random_bytes(r, 1 << 20));
    write(&root.join("d1/log.txt"), &compressible_bytes(700_000));
    write(&root.join("top"), &random_bytes(r, 4096 * 3));
    fs::create_dir_all(root.join("d2/empty")).unwrap();
    symlink("d0/f0", root.join("link")).unwrap();
}

#[test]
fn chain_of_ten_incrementals_restores_every_link() {
    let bs = 4096u64;
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(42);
    initial_tree(s, &mut r);
    let mut chain = Chain::new(BackupOptions {
        block_size: bs as u32,
        pack_target_size: 256 << 10,
        zstd_level: 3,
        read_limit: None,
    });
    let mut snaps = Vec::new();
    let mut log = Vec::new();
    chain.backup(s);
    snaps.push(snapshot(s));
    for step in 1..=10 {
        // Every kind of edit happens at least once; plus random extras.
        let mut ops: Vec<usize> = vec![(step - 1) % 12, (step + 5) % 12];
        for _ in 0..r.random_range(1..4) {
            ops.push(r.random_range(0..12));
        }
        for op in ops {
            log.push(format!("step {step}: {}", edit(s, op, &mut r, bs)));
        }
        let out = chain.backup(s);
        assert!(out.manifest.header.parent.is_some());
        snaps.push(snapshot(s));
    }
    for (k, snap) in snaps.iter().enumerate() {
        let (target, stats) = chain.restore(k);
        assert_same(snap, &snapshot(target.path()), &format!("restore of link {} ({})", k + 1, log.join("; ")));
        let nfiles = snap.values().filter(|n| matches!(n.kind, Kind::File { .. })).count() as u64;
        assert_eq!(stats.files, nfiles);
    }
    // Incrementals store far less than the full backup.
    let full = chain.outputs[0].stored_bytes;
    let incr: u64 = chain.outputs[1..].iter().map(|o| o.stored_bytes).sum::<u64>() / 10;
    assert!(incr < full / 2, "average incremental {incr} vs full {full}");
}

#[test]
fn unchanged_files_are_referenced_without_reading() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(7);
    for i in 0..5 {
        write(&s.join(format!("f{i}")), &random_bytes(&mut r, 50_000));
    }
    settle();
    let mut chain = Chain::new(blocks_of(BS));
    assert_eq!(chain.backup(s).stats.files_read, 5);
    // Only f2 changes (same size, new content); f4 only changes mode.
    let f2 = s.join("f2");
    fs::File::options().write(true).open(&f2).unwrap().write_all_at(b"changed", 100).unwrap();
    chmod(&s.join("f4"), 0o600);
    set_mtime(&s.join("f4"), 1_600_000_000, 5);
    let out = chain.backup(s).clone();
    assert_eq!(out.stats.files_read, 2, "f2 and f4 (mtime changed)");
    assert_eq!(out.stats.files_referenced, 3);
    assert_eq!(out.stats.bytes_read, 100_000);
    assert_eq!(out.stats.blocks_stored, 1, "only f2's first block");
    let EntryKind::File(f4) = &out.manifest.find("f4").unwrap().kind else { panic!() };
    assert_eq!(f4.content, FileContent::Unchanged);
    let (target, _) = chain.restore(1);
    assert_same(&snapshot(s), &snapshot(target.path()), "after edit");
}

#[test]
fn recently_changed_file_is_read_again() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("hot"), b"written just before the backup");
    let mut chain = Chain::new(blocks_of(BS));
    let out = chain.backup(src.path()).clone();
    let EntryKind::File(f) = &out.manifest.find("hot").unwrap().kind else { panic!() };
    assert_eq!(f.ctime, Timestamp { sec: 0, nsec: 0 }, "marked racy");
    // Without the racy mark, a same-tick rewrite of equal size would be
    // taken for unchanged; with it the file is read again.
    assert_eq!(chain.backup(src.path()).stats.files_read, 1);
}

#[test]
fn changed_block_equal_to_parent_is_not_stored() {
    let bs = BS;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("db");
    let mut r = rng(3);
    let data = random_bytes(&mut r, 10 * bs);
    write(&path, &data);
    let mut chain = Chain::new(blocks_of(BS));
    assert_eq!(chain.backup(src.path()).stats.blocks_stored, 10);
    let f = fs::File::options().write(true).open(&path).unwrap();
    // Block 3 rewritten with identical bytes, block 5 really changed.
    f.write_all_at(&data[3 * bs..4 * bs], (3 * bs) as u64).unwrap();
    f.write_all_at(&random_bytes(&mut r, bs), (5 * bs) as u64).unwrap();
    set_mtime(&path, 1_500_000_000, 123_456_789);
    let out = chain.backup(src.path()).clone();
    assert_eq!(out.stats.files_read, 1);
    assert_eq!(out.stats.blocks_stored, 1);
    assert_eq!(out.stats.blocks_unchanged, 9);
    let EntryKind::File(fe) = &out.manifest.find("db").unwrap().kind else { panic!() };
    assert_eq!(fe.runs().len(), 1);
    assert_eq!((fe.runs()[0].first_block, fe.runs()[0].count), (5, 1));
    let (target, stats) = chain.restore(1);
    assert_same(&snapshot(src.path()), &snapshot(target.path()), "one block");
    assert_eq!(stats.blocks_written, 10, "each block written once");
}

#[test]
fn growth_truncation_and_last_partial_block() {
    let bs = 4096usize;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("f");
    let mut r = rng(5);
    write(&path, &random_bytes(&mut r, 2 * bs + 1000)); // 3 blocks, last partial
    let mut chain = Chain::new(BackupOptions { block_size: bs as u32, ..Default::default() });
    assert_eq!(chain.backup(src.path()).stats.blocks_stored, 3);
    let mut snaps = vec![snapshot(src.path())];
    let f = || fs::File::options().write(true).open(&path).unwrap();
    // (edit, blocks the next backup must store)
    type Edit<'a> = Box<dyn Fn(&mut StdRng) + 'a>;
    let edits: Vec<(Edit<'_>, u64)> = vec![
        // one byte of the partial last block
        (Box::new(|_| f().write_all_at(b"!", (2 * bs + 10) as u64).unwrap()), 1),
        // append 10 bytes: only the partial last block changes
        (Box::new(|_| f().write_all_at(&[7u8; 10], (2 * bs + 1000) as u64).unwrap()), 1),
        // grow by three blocks: the old last block (now full) + 3 new ones
        (Box::new(|r| f().write_all_at(&random_bytes(r, 3 * bs), (2 * bs + 1010) as u64).unwrap()), 4),
        // truncate to 1.5 blocks: only the new partial block 1
        (Box::new(|_| f().set_len((bs + bs / 2) as u64).unwrap()), 1),
        // truncate to exactly one block: block 0 is unchanged, nothing stored
        (Box::new(|_| f().set_len(bs as u64).unwrap()), 0),
        // grow back to 3 blocks through a hole: two zero blocks
        (Box::new(|_| f().set_len(3 * bs as u64).unwrap()), 0),
        // shrink to zero
        (Box::new(|_| f().set_len(0).unwrap()), 0),
    ];
    for (edit, want) in &edits {
        edit(&mut r);
        let out = chain.backup(src.path());
        assert_eq!(out.stats.blocks_stored, *want, "{:?}", out.manifest.find("f"));
        snaps.push(snapshot(src.path()));
    }
    assert_eq!(chain.outputs[6].stats.zero_blocks, 2);
    for (k, snap) in snaps.iter().enumerate() {
        let (target, _) = chain.restore(k);
        assert_same(snap, &snapshot(target.path()), &format!("link {}", k + 1));
    }
}

#[test]
fn incremental_keeps_the_chain_block_size() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f"), &compressible_bytes(100_000));
    let mut chain = Chain::new(BackupOptions { block_size: 8192, ..Default::default() });
    chain.backup(src.path());
    chain.opts.block_size = 65536;
    write(&src.path().join("g"), b"new");
    let out = chain.backup(src.path());
    assert_eq!(out.manifest.header.block_size, 8192);
    let (target, _) = chain.restore(1);
    assert_same(&snapshot(src.path()), &snapshot(target.path()), "link 2");
}

#[test]
fn backup_refuses_parent_of_another_instance() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f"), b"x");
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(src.path());
    let link = &chain.links[0];
    let staging = tempfile::tempdir().unwrap();
    let err = backup_tree(
        src.path(),
        Some((&link.manifest, &link.checksum)),
        LinkIds { backup_id: uuid::Uuid::new_v4(), instance_id: uuid::Uuid::new_v4() },
        &blocks_of(BS),
        staging.path(),
        &mut |_| {},
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&link.manifest.header.backup_id.to_string()), "{msg}");
    assert!(msg.contains("instance"), "{msg}");
    assert_eq!(fs::read_dir(staging.path()).unwrap().count(), 0);
}

/// Files of many 1 MiB chunks (each hashed and compressed on its own
/// thread): changes on both sides of a chunk boundary, a zero region across
/// one, many small files between big ones. Every link restores exactly, runs
/// never overlap, and zero runs cut at a chunk boundary are joined again.
#[test]
fn files_spanning_many_chunks_keep_order_and_exact_content() {
    let bs = 16usize << 10;
    let mib = 1usize << 20;
    let src = tempfile::tempdir().unwrap();
    let mut r = rng(11);
    let mut big = random_bytes(&mut r, 5 * mib + 3 * bs + 77);
    big[mib - 2 * bs..3 * mib + 2 * bs].fill(0); // zero region over two boundaries
    write(&src.path().join("a-big"), &big);
    for i in 0..40 {
        write(&src.path().join(format!("b-small-{i:02}")), &random_bytes(&mut r, 1 + i * 997));
    }
    write(&src.path().join("c-big"), &random_bytes(&mut r, 3 * mib));
    let mut chain = Chain::new(blocks_of(BS));
    let full = chain.backup(src.path()).clone();
    let EntryKind::File(fe) = &full.manifest.find("a-big").unwrap().kind else { panic!() };
    let zero_runs: Vec<_> = fe.runs().iter().filter(|run| run.compression == Compression::Zero).collect();
    assert_eq!(zero_runs.len(), 1, "one zero run across chunk boundaries: {zero_runs:?}");
    assert_eq!(zero_runs[0].count as usize, (2 * mib + 4 * bs) / bs);
    let mut snaps = vec![snapshot(src.path())];
    settle(); // so the small files are not "racy" and get referenced
    chain.backup(src.path());
    snaps.push(snapshot(src.path()));

    // The last block of chunk 0 and the first of chunk 1 of c-big, one block
    // deep inside a-big's zero region, and a byte of a-big's partial tail.
    let c = fs::File::options().write(true).open(src.path().join("c-big")).unwrap();
    c.write_all_at(&random_bytes(&mut r, 2 * bs), (mib - bs) as u64).unwrap();
    let a = fs::File::options().write(true).open(src.path().join("a-big")).unwrap();
    a.write_all_at(&random_bytes(&mut r, bs), (2 * mib) as u64).unwrap();
    a.write_all_at(b"!", (big.len() - 1) as u64).unwrap();
    set_mtime(&src.path().join("a-big"), 1_600_000_000, 1);
    set_mtime(&src.path().join("c-big"), 1_600_000_000, 2);
    let out = chain.backup(src.path()).clone();
    assert_eq!(out.stats.blocks_stored, 4, "two in c-big, two in a-big");
    assert_eq!(out.stats.files_read, 2);
    snaps.push(snapshot(src.path()));
    for (k, snap) in snaps.iter().enumerate() {
        let (target, _) = chain.restore(k);
        assert_same(snap, &snapshot(target.path()), &format!("link {}", k + 1));
    }
    for out in &chain.outputs {
        for e in &out.manifest.entries {
            if let EntryKind::File(f) = &e.kind {
                let mut next = 0;
                for run in f.runs() {
                    assert!(run.first_block >= next, "{}: runs overlap or are out of order", e.path);
                    next = run.first_block + run.count;
                }
            }
        }
    }
}

/// A hard-linked pair keeps its link through incrementals, changed through
/// either name, and a link added later to an existing file.
#[test]
fn hard_links_across_incrementals() {
    let src = tempfile::tempdir().unwrap();
    let mut r = rng(12);
    write(&src.path().join("one"), &random_bytes(&mut r, 50_000));
    fs::hard_link(src.path().join("one"), src.path().join("two")).unwrap();
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(src.path());
    let mut snaps = vec![snapshot(src.path())];
    settle();
    fs::File::options().write(true).open(src.path().join("two")).unwrap().write_all_at(b"changed", 100).unwrap();
    write(&src.path().join("three"), &random_bytes(&mut r, 3000));
    fs::hard_link(src.path().join("three"), src.path().join("four")).unwrap();
    let out = chain.backup(src.path()).clone();
    assert_eq!(out.stats.hard_links, 2);
    snaps.push(snapshot(src.path()));
    for (k, snap) in snaps.iter().enumerate() {
        let (target, _) = chain.restore(k);
        assert_same(snap, &snapshot(target.path()), &format!("link {}", k + 1));
        for (a, b) in [("one", "two"), ("three", "four")] {
            if let (Ok(ma), Ok(mb)) = (fs::metadata(target.path().join(a)), fs::metadata(target.path().join(b))) {
                assert_eq!(
                    std::os::unix::fs::MetadataExt::ino(&ma),
                    std::os::unix::fs::MetadataExt::ino(&mb),
                    "{a} and {b} stay linked in link {}",
                    k + 1
                );
            }
        }
    }
}
