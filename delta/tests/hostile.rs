//! Restores of crafted (hostile) artifacts: each case of issue 6 is built
//! from a real backup by changing its manifest or packs, then fed both to
//! the decoder (as stored bytes) and to `restore_chain` (as an undecoded
//! `ChainLink`, which restore must validate itself). Every case must fail
//! with a message naming the problem, and the directory that holds the
//! target (with a sentinel directory beside the target) must be exactly as
//! it was.

mod common;

use std::fs;
use std::path::PathBuf;

use cairn_delta::*;
use common::*;
use tempfile::TempDir;

/// A full backup of a small tree, and a place to restore it: `outer/`
/// holds `target/` (empty) and `outside/` (with a sentinel file).
struct Scene {
    chain: Chain,
    outer: TempDir,
    _src: TempDir,
}

impl Scene {
    fn new() -> Scene {
        let src = tempfile::tempdir().unwrap();
        write(&src.path().join("a.txt"), b"alpha\n");
        write(&src.path().join("dir/b.bin"), &compressible_bytes(40_000));
        write(&src.path().join("dir/r.bin"), &random_bytes(&mut rng(6), 20_000));
        let mut chain = Chain::new(BackupOptions { block_size: 4096, ..BackupOptions::default() });
        chain.backup(src.path());
        let outer = tempfile::tempdir().unwrap();
        fs::create_dir(outer.path().join("target")).unwrap();
        write(&outer.path().join("outside/sentinel"), b"must stay as it is");
        Scene { chain, outer, _src: src }
    }

    fn manifest(&self) -> Manifest {
        self.chain.links[0].manifest.clone()
    }

    fn target(&self) -> PathBuf {
        self.outer.path().join("target")
    }

    fn outside(&self) -> PathBuf {
        self.outer.path().join("outside")
    }

    /// Everything beside the target (the target's own content may hold
    /// what was written before the failure; the service restores into a
    /// staging directory it removes on failure).
    fn parent_snapshot(&self) -> Snapshot {
        let mut s = snapshot(self.outer.path());
        s.retain(|p, _| !p.starts_with("target/"));
        s.remove("target");
        s
    }

    /// Restores `m` both ways (encoded and decoded, then as a hand-built
    /// link) and returns the two error messages; the target's parent must
    /// be untouched after each attempt.
    fn refuse(&self, m: &Manifest) -> (String, String) {
        let before = self.parent_snapshot();
        let bytes = encode_manifest(m);
        let decoded = match ChainLink::from_bytes(&bytes) {
            Ok(link) => restore_chain(&[link], &self.chain.packs, &self.target(), &mut |_, _| {})
                .expect_err("a hostile artifact was restored")
                .to_string(),
            Err(e) => e.to_string(),
        };
        assert_same(&before, &self.parent_snapshot(), "after restoring the decoded artifact");
        self.reset_target();
        let before = self.parent_snapshot();
        let link = ChainLink { manifest: m.clone(), checksum: checksum(&bytes) };
        let direct = restore_chain(&[link], &self.chain.packs, &self.target(), &mut |_, _| {})
            .expect_err("a hostile artifact was restored")
            .to_string();
        assert_same(&before, &self.parent_snapshot(), "after restoring the hand-built link");
        self.reset_target();
        (decoded, direct)
    }

    fn reset_target(&self) {
        let t = self.target();
        let _ = fs::remove_dir_all(&t);
        fs::create_dir(&t).unwrap();
    }
}

/// A file entry holding one stored block of `data` (raw) at `offset` of pack 0.
fn raw_file(m: &Manifest, data: &[u8], offset: u64) -> EntryKind {
    let run = BlockRun {
        first_block: 0,
        count: 1,
        pack: 0,
        offset,
        stored_len: data.len() as u64,
        raw_len: data.len() as u64,
        frame_offset: 0,
        frame_len: data.len() as u64,
        compression: Compression::Raw,
    };
    assert!(offset + data.len() as u64 <= m.header.packs[0].size);
    EntryKind::File(FileEntry {
        size: data.len() as u64,
        inode: 1,
        ctime: Timestamp::default(),
        blake3: *blake3::hash(data).as_bytes(),
        block_hashes: vec![block_hash(data)],
        base: None,
        content: FileContent::Stored(vec![run]),
    })
}

fn assert_both(msgs: &(String, String), expected: &str) {
    assert!(msgs.0.contains(expected), "decoded: {:?} lacks {expected:?}", msgs.0);
    assert!(msgs.1.contains(expected), "hand-built: {:?} lacks {expected:?}", msgs.1);
}

#[test]
fn the_unmodified_backup_restores() {
    let s = Scene::new();
    let before = s.parent_snapshot();
    restore_chain(&s.chain.links, &s.chain.packs, &s.target(), &mut |_, _| {}).unwrap();
    assert_same(&before, &s.parent_snapshot(), "a valid restore stays in its target");
    assert_eq!(fs::read(s.target().join("a.txt")).unwrap(), b"alpha\n");
}

#[test]
fn dot_dot_entries_are_refused() {
    let s = Scene::new();
    let m = s.manifest();
    for path in ["../outside/evil", "dir/../../outside/evil", ".."] {
        let msgs = s.refuse(&with_entry(&m, path, EntryKind::Dir));
        assert_both(&msgs, &format!("unsafe entry {path:?}: `..` path component (would climb out of the target)"));
    }
    let data = b"written through ..";
    let f = raw_file(&m, data, 0);
    let msgs = s.refuse(&with_entry(&m, "../outside/evil", f));
    assert_both(&msgs, "unsafe entry \"../outside/evil\": `..` path component");
}

#[test]
fn absolute_paths_are_refused() {
    let s = Scene::new();
    let m = s.manifest();
    let evil = s.outside().join("evil");
    let evil = evil.to_str().unwrap();
    let msgs = s.refuse(&with_entry(&m, evil, EntryKind::Dir));
    assert_both(&msgs, &format!("unsafe entry {evil:?}: absolute path"));
    // Hard links may only name earlier files of the manifest, never a path.
    let sentinel = s.outside().join("sentinel");
    let msgs = s.refuse(&with_entry(&m, "zz", EntryKind::HardLink { to: sentinel.to_str().unwrap().into() }));
    assert_both(&msgs, "unsafe entry \"zz\": hard link to");
}

#[test]
fn empty_components_and_nul_are_refused() {
    let s = Scene::new();
    let m = s.manifest();
    let msgs = s.refuse(&with_entry(&m, "dir//x", EntryKind::Dir));
    assert_both(&msgs, "unsafe entry \"dir//x\": empty path component");
    let msgs = s.refuse(&with_entry(&m, "dir/x\0y", EntryKind::Dir));
    assert_both(&msgs, "path contains NUL");
}

#[test]
fn duplicate_names_are_refused() {
    let s = Scene::new();
    let m = s.manifest();
    // Same name twice: a directory, then a file of the same name.
    let msgs = s.refuse(&with_entry(&m, "a.txt", EntryKind::Dir));
    assert_both(&msgs, "unsafe entry \"a.txt\": duplicate name");
}

#[test]
fn symlink_then_write_through_it_is_refused() {
    let s = Scene::new();
    let m = s.manifest();
    let outside = s.outside();
    let link = with_entry(&m, "link", EntryKind::Symlink { target: outside.to_str().unwrap().into() });
    let data = b"escaped through a symlink";
    let through = with_entry(&link, "link/evil", raw_file(&m, data, 0));
    let msgs = s.refuse(&through);
    assert_both(&msgs, "unsafe entry \"link/evil\": parent \"link\" is not a directory declared before it");
    assert!(!outside.join("evil").exists());
    // The same through a relative symlink climbing out, and through a
    // symlink to a directory inside the target.
    let rel = with_entry(&m, "up", EntryKind::Symlink { target: "../outside".into() });
    let msgs = s.refuse(&with_entry(&rel, "up/evil", EntryKind::Dir));
    assert_both(&msgs, "unsafe entry \"up/evil\": parent \"up\" is not a directory declared before it");
    let inner = with_entry(&m, "in", EntryKind::Symlink { target: "dir".into() });
    let msgs = s.refuse(&with_entry(&inner, "in/x", EntryKind::Dir));
    assert_both(&msgs, "unsafe entry \"in/x\": parent \"in\" is not a directory declared before it");
    // A symlink alone is data: restored as a link, never followed.
    let before = s.parent_snapshot();
    let alone = ChainLink { checksum: checksum(&encode_manifest(&link)), manifest: link };
    restore_chain(&[alone], &s.chain.packs, &s.target(), &mut |_, _| {}).unwrap();
    assert_eq!(fs::read_link(s.target().join("link")).unwrap(), outside);
    assert_same(&before, &s.parent_snapshot(), "a restored symlink is not followed");
}

#[test]
fn sizes_that_do_not_match_are_refused() {
    let s = Scene::new();
    let m = s.manifest();
    let idx = m.entries.iter().position(|e| e.path == "dir/b.bin").unwrap();
    let mutate = |f: &dyn Fn(&mut FileEntry)| {
        let mut c = m.clone();
        let EntryKind::File(fe) = &mut c.entries[idx].kind else { panic!("dir/b.bin is a file") };
        f(fe);
        c
    };
    // A size that needs more blocks than the manifest has hashes for.
    let msgs = s.refuse(&mutate(&|f| f.size += 100_000));
    assert_both(&msgs, "unsafe entry \"dir/b.bin\": 10 block hashes for 35 blocks");
    // A size within the same blocks but that the runs do not cover.
    let msgs = s.refuse(&mutate(&|f| f.size -= 1));
    assert_both(&msgs, "unsafe entry \"dir/b.bin\": block run 0..10: raw length 40000 should be 39999");
    // A run whose decoded length is not what its blocks cover.
    let msgs = s.refuse(&mutate(&|f| {
        if let FileContent::Stored(r) = &mut f.content {
            r[0].raw_len = 1 << 30;
        }
    }));
    assert_both(&msgs, "should be 40000");
    // A block index beyond the file.
    let msgs = s.refuse(&mutate(&|f| {
        if let FileContent::Stored(r) = &mut f.content {
            r[0].first_block = 5;
        }
    }));
    assert_both(&msgs, "unsafe entry \"dir/b.bin\": block run 5..15 beyond the file's 10 blocks");
    // A run reaching past the end of its pack.
    let msgs = s.refuse(&mutate(&|f| {
        if let FileContent::Stored(r) = &mut f.content {
            r[0].offset = u64::MAX - 1;
        }
    }));
    assert_both(&msgs, "beyond the end of pack");
    // A pack index that does not exist.
    let msgs = s.refuse(&mutate(&|f| {
        if let FileContent::Stored(r) = &mut f.content {
            r[0].pack = 3;
        }
    }));
    assert_both(&msgs, "block run names pack #3 of 1");
}

#[test]
fn owner_minus_one_is_refused() {
    let s = Scene::new();
    let mut m = s.manifest();
    m.entries[1].uid = u32::MAX;
    let path = m.entries[1].path.clone();
    let msgs = s.refuse(&m);
    assert_both(&msgs, &format!("unsafe entry {path:?}: owner or group -1"));
}

/// A zstd frame that expands to `len` zero bytes.
fn zero_bomb(len: usize) -> Vec<u8> {
    zstd::bulk::compress(&vec![0u8; len], 19).unwrap()
}

#[test]
fn a_pack_decompression_bomb_is_refused() {
    let s = Scene::new();
    // One 4 KiB block of zeros, recorded as such, but stored as a frame that
    // expands to 256 MiB.
    let bomb = zero_bomb(256 << 20);
    assert!(bomb.len() < 64 << 10, "the bomb is small: {}", bomb.len());
    let staging = s.outer.path().join("bomb-pack");
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join("pack-00000"), &bomb).unwrap();
    let mut m = s.manifest();
    m.header.backup_id = uuid::Uuid::new_v4();
    m.header.packs = vec![PackRef { name: "pack-00000".into(), size: bomb.len() as u64, blake3: checksum(&bomb) }];
    let block = vec![0u8; 4096];
    m.entries.retain(|e| !matches!(e.kind, EntryKind::File(_)));
    m.entries.push(Entry {
        path: "bomb".into(),
        kind: EntryKind::File(FileEntry {
            size: 4096,
            inode: 1,
            ctime: Timestamp::default(),
            blake3: *blake3::hash(&block).as_bytes(),
            block_hashes: vec![block_hash(&block)],
            base: None,
            content: FileContent::Stored(vec![BlockRun {
                first_block: 0,
                count: 1,
                pack: 0,
                offset: 0,
                stored_len: bomb.len() as u64,
                raw_len: 4096,
                frame_offset: 0,
                frame_len: 4096,
                compression: Compression::Zstd,
            }]),
        }),
        ..m.entries[0].clone()
    });
    m.entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut packs = DirPacks::default();
    packs.dirs.insert(m.header.backup_id, staging.clone());
    let before = s.parent_snapshot();
    let link = ChainLink::from_bytes(&encode_manifest(&m)).expect("the manifest itself is well-formed");
    let err = restore_chain(&[link], &packs, &s.target(), &mut |_, _| {}).unwrap_err().to_string();
    assert!(
        err.contains(
            "pack pack-00000, offset 0: cannot decompress (a frame larger than the 4096 bytes recorded is refused)"
        ),
        "{err}"
    );
    assert_same(&before, &s.parent_snapshot(), "after the bomb");
    // decode_run alone refuses the same frame, and a run claiming more than
    // the per-run limit is refused before any decoding.
    let run = BlockRun {
        first_block: 0,
        count: 1,
        pack: 0,
        offset: 0,
        stored_len: bomb.len() as u64,
        raw_len: 4096,
        frame_offset: 0,
        frame_len: 4096,
        compression: Compression::Zstd,
    };
    assert!(decode_run(&run, bomb.clone()).unwrap_err().contains("cannot decompress"));
    let big = BlockRun { raw_len: MAX_RUN_RAW + 1, frame_len: MAX_RUN_RAW + 1, ..run };
    assert!(decode_run(&big, bomb).unwrap_err().contains("exceeds the"));
}

#[test]
fn a_manifest_decompression_bomb_is_refused() {
    let s = Scene::new();
    let bytes = encode_manifest(&s.manifest());
    // The same manifest under limits it exceeds: the body is bounded while
    // it is decompressed, the decoded size before it is allocated.
    let decoded_len = zstd::decode_all(&bytes[12..]).unwrap().len() as u64;
    let err = decode_manifest_with_limits(&bytes, &DecodeLimits { max_decoded: decoded_len - 1, ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("decompressed manifest exceeds its size limit (decompression bomb refused)"), "{err}");
    decode_manifest_with_limits(&bytes, &DecodeLimits { max_decoded: decoded_len, ..Default::default() }).unwrap();
    let err = decode_manifest_with_limits(&bytes, &DecodeLimits { max_memory: 1000, ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs more memory than the decoding limit allows; refused before allocating"), "{err}");

    // A crafted bomb: one file claiming 2^40 bytes, whose 2^28 block hashes
    // are zeros that compress to almost nothing. Decoding stops at the
    // memory bound (64 MiB here, to keep the test light; the default is
    // MAX_MANIFEST_MEMORY) instead of allocating 4 GiB.
    let limit: u64 = 64 << 20;
    let mut body = Vec::new();
    body.extend_from_slice(&[7u8; 32]); // backup id, instance id
    body.push(0); // no parent
    body.extend_from_slice(&[0x80, 0x20]); // block size 4096
    body.push(1); // block hashes of kind FileTree (format 3)
    body.push(0); // no packs
    body.push(2); // two entries
    body.extend_from_slice(&[0, 0, 0, 0xed, 0x03, 0, 0, 0, 0]); // "" dir 0o755
    body.extend_from_slice(&[0, 1, b'f', 1, 0xa4, 0x03, 0, 0, 0, 0]); // "f" file 0o644
    body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]); // size 2^40
    body.extend_from_slice(&[0, 0, 0]); // inode, ctime
    body.resize(body.len() + 32 + limit as usize + (1 << 20), 0);
    let mut bomb = b"CAIRNMAN".to_vec();
    bomb.extend_from_slice(&3u32.to_le_bytes());
    bomb.extend_from_slice(&zstd::bulk::compress(&body, 3).unwrap());
    drop(body);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let err = decode_manifest_with_limits(&bomb, &DecodeLimits { max_memory: limit, ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "(268435456 blocks for 1099511627776 bytes): the manifest needs more memory than the decoding limit allows"
        ),
        "{err}"
    );
}

#[test]
fn truncated_and_garbled_artifacts_are_refused() {
    let s = Scene::new();
    let bytes = encode_manifest(&s.manifest());
    for cut in [0, 5, 12, 20, bytes.len() / 2, bytes.len() - 1] {
        let err = ChainLink::from_bytes(&bytes[..cut]).unwrap_err().to_string();
        assert!(err.starts_with("corrupt manifest:"), "cut at {cut}: {err}");
    }
    let mut garbled = bytes.clone();
    let mid = garbled.len() / 2;
    garbled[mid] ^= 0x40;
    let err = ChainLink::from_bytes(&garbled).unwrap_err().to_string();
    assert!(err.starts_with("corrupt manifest:"), "{err}");
    // A pack whose bytes were garbled or cut: the restore names the pack.
    let staged = s.chain.packs.dirs[&s.chain.links[0].manifest.header.backup_id].join("pack-00000");
    let original = fs::read(&staged).unwrap();
    let mut flipped = original.clone();
    for b in flipped.iter_mut() {
        *b ^= 0x5a;
    }
    fs::write(&staged, &flipped).unwrap();
    let before = s.parent_snapshot();
    let err = restore_chain(&s.chain.links, &s.chain.packs, &s.target(), &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("pack pack-00000, offset"), "{err}");
    assert_same(&before, &s.parent_snapshot(), "after a garbled pack");
    s.reset_target();
    let before = s.parent_snapshot();
    fs::write(&staged, &original[..original.len() / 2]).unwrap();
    let err = restore_chain(&s.chain.links, &s.chain.packs, &s.target(), &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("truncated: got"), "{err}");
    assert_same(&before, &s.parent_snapshot(), "after a truncated pack");
}
