//! Chain verification and detection of corrupted or missing pack data.

mod common;

use std::fs;
use std::io;

use cairn_delta::*;
use common::*;
use uuid::Uuid;

/// A full backup and two incrementals of a small tree.
fn three_links() -> (tempfile::TempDir, Chain) {
    let src = tempfile::tempdir().unwrap();
    let mut r = rng(9);
    write(&src.path().join("a"), &random_bytes(&mut r, 100_000));
    let mut chain = Chain::new(BackupOptions::default());
    chain.backup(src.path());
    write(&src.path().join("b"), &random_bytes(&mut r, 50_000));
    chain.backup(src.path());
    write(&src.path().join("a"), &random_bytes(&mut r, 100_000));
    chain.backup(src.path());
    (src, chain)
}

fn id(c: &Chain, k: usize) -> String {
    c.links[k].manifest.header.backup_id.to_string()
}

fn chain_err(links: &[ChainLink]) -> (usize, Uuid, String) {
    match verify_chain(links).unwrap_err() {
        e @ DeltaError::Chain { position, backup_id, .. } => (position, backup_id, e.to_string()),
        e => panic!("unexpected error {e}"),
    }
}

#[test]
fn valid_chain_and_every_prefix_verify() {
    let (_src, c) = three_links();
    for k in 1..=3 {
        verify_chain(&c.links[..k]).unwrap();
    }
    assert!(matches!(verify_chain(&[]), Err(DeltaError::EmptyChain)));
}

#[test]
fn wrong_order_is_refused_naming_the_link() {
    let (_src, c) = three_links();
    let l = &c.links;
    let (pos, bid, msg) = chain_err(&[l[0].clone(), l[2].clone(), l[1].clone()]);
    assert_eq!((pos, bid), (2, l[2].manifest.header.backup_id));
    assert!(msg.starts_with(&format!("link 2 (backup {})", id(&c, 2))), "{msg}");
    assert!(msg.contains(&id(&c, 1)), "names the expected parent: {msg}");

    let (pos, _, msg) = chain_err(&[l[1].clone(), l[0].clone()]);
    assert_eq!(pos, 1, "{msg}");
    let (pos, bid, msg) = chain_err(&[l[0].clone(), l[1].clone(), l[0].clone()]);
    assert_eq!((pos, bid), (3, l[0].manifest.header.backup_id), "{msg}");
}

#[test]
fn missing_link_is_refused() {
    let (_src, c) = three_links();
    let l = &c.links;
    let (pos, bid, msg) = chain_err(&[l[0].clone(), l[2].clone()]);
    assert_eq!((pos, bid), (2, l[2].manifest.header.backup_id));
    assert!(msg.contains("missing link"), "{msg}");
    // Missing root.
    let (pos, bid, msg) = chain_err(&[l[1].clone(), l[2].clone()]);
    assert_eq!((pos, bid), (1, l[1].manifest.header.backup_id));
    assert!(msg.contains("missing its root"), "{msg}");
}

#[test]
fn foreign_instance_is_refused() {
    let (_src, c) = three_links();
    let mut foreign = c.links[1].clone();
    foreign.manifest.header.instance_id = Uuid::new_v4();
    let (pos, bid, msg) = chain_err(&[c.links[0].clone(), foreign.clone()]);
    assert_eq!((pos, bid), (2, foreign.manifest.header.backup_id));
    assert!(msg.contains("instance"), "{msg}");
    assert!(msg.contains(&foreign.manifest.header.instance_id.to_string()), "{msg}");
}

#[test]
fn parent_checksum_mismatch_is_refused() {
    let (_src, c) = three_links();
    let mut l = c.links.clone();
    // Link 2's manifest stored with different bytes than link 3 was made on.
    l[1].checksum = checksum(b"some other manifest");
    let (pos, bid, msg) = chain_err(&l);
    assert_eq!((pos, bid), (3, l[2].manifest.header.backup_id));
    let want = format!(
        "link 3 (backup {}): parent checksum mismatch: manifest names parent {} with checksum {}, chain has {}",
        id(&c, 2),
        id(&c, 1),
        c.links[1].checksum,
        l[1].checksum
    );
    assert_eq!(msg, want);
    // A restore verifies first and writes nothing.
    let target = tempfile::tempdir().unwrap();
    assert!(restore_chain(&l, &c.packs, target.path(), &mut |_, _| {}).is_err());
    assert_eq!(fs::read_dir(target.path()).unwrap().count(), 0);
    // Stored bytes that do not match their recorded checksum are refused.
    let err = ChainLink::from_bytes_checked(&c.outputs[0].manifest_bytes, &l[1].checksum);
    assert!(matches!(err, Err(DeltaError::ManifestChecksum { .. })));
}

#[test]
fn corrupted_pack_byte_is_detected_naming_the_pack() {
    let (_src, c) = three_links();
    // Flip one byte in every position class of link 1's only pack.
    let out = &c.outputs[0];
    let pack = &out.packs[0];
    let original = fs::read(&pack.path).unwrap();
    for pos in [0, original.len() / 3, original.len() / 2, original.len() - 1] {
        let mut bad = original.clone();
        bad[pos] ^= 0x40;
        fs::write(&pack.path, &bad).unwrap();
        let target = tempfile::tempdir().unwrap();
        // Link 3 rewrote all of "a": the full chain never reads link 1's pack.
        restore_chain(&c.links, &c.packs, target.path(), &mut |_, _| {}).unwrap();
        let target = tempfile::tempdir().unwrap();
        let err = restore_chain(&c.links[..1], &c.packs, target.path(), &mut |_, _| {}).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DeltaError::PackData { .. }), "{msg}");
        assert!(msg.contains(&pack.name), "{msg}");
        assert!(msg.contains(&id(&c, 0)), "{msg}");
    }
    fs::write(&pack.path, &original).unwrap();
    let target = tempfile::tempdir().unwrap();
    restore_chain(&c.links[..1], &c.packs, target.path(), &mut |_, _| {}).unwrap();
}

#[test]
fn truncated_or_missing_pack_is_an_error_naming_it() {
    let (_src, c) = three_links();
    let pack = &c.outputs[2].packs[0];
    let original = fs::read(&pack.path).unwrap();
    fs::write(&pack.path, &original[..original.len() - 10]).unwrap();
    let target = tempfile::tempdir().unwrap();
    let err = restore_chain(&c.links, &c.packs, target.path(), &mut |_, _| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("truncated"), "{msg}");
    assert!(msg.contains(&pack.name) && msg.contains(&id(&c, 2)), "{msg}");

    fs::remove_file(&pack.path).unwrap();
    let target = tempfile::tempdir().unwrap();
    let err = restore_chain(&c.links, &c.packs, target.path(), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, DeltaError::PackRead { .. }), "{err}");
    assert!(err.to_string().contains(&pack.name), "{err}");
}

#[test]
fn pack_source_errors_are_reported() {
    struct Failing;
    impl PackSource for Failing {
        fn read_range(&self, _: Uuid, _: &str, _: u64, _: u64) -> io::Result<Vec<u8>> {
            Err(io::Error::other("object store unavailable"))
        }
    }
    let (_src, c) = three_links();
    let target = tempfile::tempdir().unwrap();
    let err = restore_chain(&c.links, &Failing, target.path(), &mut |_, _| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("object store unavailable") && msg.contains("pack-00000"), "{msg}");
}

#[test]
fn restored_content_is_checked_against_the_last_manifest() {
    let (src, c) = three_links();
    let mut l = c.links.clone();
    // A manifest whose recorded file checksum is wrong (blocks still fine).
    let last = l.last_mut().unwrap();
    for e in &mut last.manifest.entries {
        if let EntryKind::File(f) = &mut e.kind
            && e.path == "b"
        {
            f.blake3[0] ^= 1;
        }
    }
    let target = tempfile::tempdir().unwrap();
    let err = restore_chain(&l, &c.packs, target.path(), &mut |_, _| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DeltaError::ContentMismatch { .. }), "{msg}");
    assert!(msg.starts_with("file b:") && msg.contains(&id(&c, 2)), "{msg}");
    // The hash found is the real content's, merged from the values of the
    // blocks written (the file is not read back).
    let real = blake3::hash(&std::fs::read(src.path().join("b")).unwrap()).to_hex().to_string();
    assert!(msg.contains(&real), "{msg} names {real}");
}

#[test]
fn with_many_shares_the_first_corruption_in_pack_order_is_reported() {
    // 32 MiB of compressible data: a full restore cut into several shares
    // that the writing threads take in turn.
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("big"), &compressible_bytes(32 << 20));
    let mut c = Chain::new(BackupOptions::default());
    c.backup(src.path());
    let EntryKind::File(f) = &c.links[0].manifest.entries.iter().find(|e| e.path == "big").unwrap().kind else {
        panic!("big is a file")
    };
    let mut frames: Vec<(u32, u64, u64)> = f.runs().iter().map(|r| (r.pack, r.offset, r.stored_len)).collect();
    frames.dedup();
    assert!(frames.len() >= 32, "{} frames", frames.len());
    // Corrupt the last frame of the first share (4 MiB: frames 0-3) and
    // the first of the second: the thread on the second share usually
    // fails first, yet the error reported must be the one a restore in
    // pack order would meet first.
    let (early, late) = (frames[3], frames[4]);
    assert_eq!((early.0, late.0), (0, 0), "one pack expected");
    let pack = &c.outputs[0].packs[0];
    let mut bytes = fs::read(&pack.path).unwrap();
    for (_, offset, len) in [early, late] {
        bytes[(offset + len / 2) as usize] ^= 0x55;
    }
    fs::write(&pack.path, &bytes).unwrap();
    for _ in 0..5 {
        let target = tempfile::tempdir().unwrap();
        match restore_chain(&c.links, &c.packs, target.path(), &mut |_, _| {}) {
            Err(DeltaError::PackData { offset, .. }) => assert_eq!(offset, early.1),
            other => panic!("expected the early frame's PackData error, got {other:?}"),
        }
    }
}
