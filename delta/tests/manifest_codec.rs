//! Manifest encoding round trips; decoding hostile bytes never panics and
//! refuses anything that could make a restore misbehave.

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use cairn_delta::*;
use common::*;
use rand::Rng;

/// A manifest with every entry kind, compression and an incremental parent,
/// as decoded from its bytes (only its stored blocks' hashes), and the bytes.
fn sample() -> (Manifest, Vec<u8>) {
    let (_, _, bytes) = sample_chain();
    (decode_manifest(&bytes).unwrap(), bytes)
}

/// The parent and the incremental manifest as built (every block's hash),
/// and the incremental's bytes.
fn sample_chain() -> (Manifest, Manifest, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(11);
    write(&s.join("dir/random"), &random_bytes(&mut r, 100_000));
    write(&s.join("dir/text"), &compressible_bytes(100_000));
    let f = fs::File::create(s.join("sparse")).unwrap();
    f.set_len(200_000).unwrap();
    fs::hard_link(s.join("dir/text"), s.join("hard")).unwrap();
    symlink("dir/random", s.join("link")).unwrap();
    fs::create_dir(s.join("empty")).unwrap();
    let mut chain = Chain::new(BackupOptions::default());
    chain.backup(s);
    write(&s.join("dir/new"), b"new file");
    let out = chain.backup(s).clone();
    (chain.links[0].manifest.clone(), out.manifest, out.manifest_bytes)
}

fn body(bytes: &[u8]) -> Vec<u8> {
    zstd::decode_all(&bytes[12..]).unwrap()
}

fn rebuild(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = prefix[..12].to_vec();
    out.extend(zstd::encode_all(body, 1).unwrap());
    out
}

#[test]
fn encode_decode_round_trip() {
    let (parent, m, bytes) = sample_chain();
    let mut decoded = decode_manifest(&bytes).unwrap();
    assert_eq!(decoded.hashes, HashCoverage::StoredOnly);
    assert_eq!(encode_manifest(&decoded), bytes, "a decoded incremental encodes back to its bytes");
    assert_eq!(encode_manifest(&m), bytes, "encoding is deterministic");
    decoded.inherit_hashes(&parent).unwrap();
    assert_eq!(decoded, m);
    assert_eq!(decode_manifest(&encode_manifest(&parent)).unwrap(), parent, "a full backup decodes whole");
    let kinds: Vec<_> = m
        .entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::Dir => "dir",
            EntryKind::File(_) => "file",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::HardLink { .. } => "hardlink",
        })
        .collect();
    for k in ["dir", "file", "symlink", "hardlink"] {
        assert!(kinds.contains(&k), "sample has a {k}");
    }
}

#[test]
fn manifest_is_compact() {
    // 40 MiB of distinct blocks: 2560 block hashes, ~16 bytes each.
    let src = tempfile::tempdir().unwrap();
    let mut r = rng(12);
    let data = random_bytes(&mut r, 1 << 20);
    for i in 0..40u8 {
        let mut d = data.clone();
        d.iter_mut().step_by(4096).for_each(|b| *b ^= i);
        write(&src.path().join(format!("f{i:02}")), &d);
    }
    let mut chain = Chain::new(BackupOptions { block_size: 16 << 10, ..Default::default() });
    let out = chain.backup(src.path());
    let blocks = 40 * 64;
    assert!(
        out.manifest_bytes.len() < blocks * 16 + 40 * 120,
        "{} bytes for {blocks} blocks",
        out.manifest_bytes.len()
    );
}

#[test]
fn truncated_input_is_rejected() {
    let (_, bytes) = sample();
    for len in 0..bytes.len() {
        assert!(decode_manifest(&bytes[..len]).is_err(), "prefix of {len} bytes");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_manifest(&longer).is_err(), "trailing byte");
}

#[test]
fn garbage_and_bit_flips_never_panic() {
    let (m, bytes) = sample();
    let mut r = rng(13);
    for _ in 0..300 {
        let n = r.random_range(0..400);
        let mut g = random_bytes(&mut r, n);
        assert!(decode_manifest(&g).is_err());
        if g.len() >= 12 {
            g[..12].copy_from_slice(&bytes[..12]);
            assert!(decode_manifest(&g).is_err());
        }
    }
    // Flips in the compressed bytes: caught by zstd or its checksum.
    for _ in 0..1000 {
        let mut b = bytes.clone();
        for _ in 0..r.random_range(1..4) {
            let i = r.random_range(0..b.len());
            b[i] ^= 1 << r.random_range(0..8);
        }
        if let Ok(d) = decode_manifest(&b) {
            assert_eq!(d, m, "a mutation decoded to a different manifest");
        }
    }
    // Mutations of the decompressed body, recompressed: exercises the parser
    // and the validation, not just zstd.
    let plain = body(&bytes);
    let mut accepted = 0;
    for i in 0..3000 {
        let mut b = plain.clone();
        match i % 4 {
            0 => {
                for _ in 0..r.random_range(1..4) {
                    let j = r.random_range(0..b.len());
                    b[j] ^= 1 << r.random_range(0..8);
                }
            }
            1 => {
                let j = r.random_range(0..b.len());
                b[j] = r.random();
            }
            2 => b.truncate(r.random_range(0..b.len())),
            _ => {
                // A huge varint somewhere: length fields must not allocate.
                let j = r.random_range(0..b.len());
                b.splice(j..j, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
            }
        }
        if let Ok(d) = decode_manifest(&rebuild(&bytes, &b)) {
            // Some flips land in fields without invariants (uid, mtime...).
            // Whatever is accepted must still be a valid manifest.
            validate(&d).unwrap();
            accepted += 1;
        }
    }
    assert!(accepted < 1500, "most mutations are rejected ({accepted})");
}

#[test]
fn huge_counts_do_not_allocate() {
    let (_, bytes) = sample();
    let plain = body(&bytes);
    // Header: 2 uuids, parent flag + uuid + checksum string, block size...
    // Replace the entry count by ~2^56 right after the packs: simplest is to
    // build a body by hand.
    let mut b = Vec::new();
    b.extend_from_slice(&[1u8; 32]); // ids
    b.push(0); // no parent
    b.extend_from_slice(&[0x80, 0x80, 0x01]); // block size 16384
    b.extend_from_slice(&[0xff; 8]);
    b.push(0x7f); // pack count ~2^63
    assert!(decode_manifest(&rebuild(&bytes, &b)).is_err());
    let mut b = b[..36].to_vec();
    b.push(0); // no packs
    b.extend_from_slice(&[0xff; 8]);
    b.push(0x7f); // entry count ~2^63
    assert!(decode_manifest(&rebuild(&bytes, &b)).is_err());
    assert!(plain.len() > b.len());
}

fn rejected(m: &Manifest, what: &str) -> String {
    match decode_manifest(&encode_manifest(m)) {
        Err(e @ (DeltaError::CorruptManifest(_) | DeltaError::UnsafeEntry { .. })) => e.to_string(),
        other => panic!("{what}: expected CorruptManifest or UnsafeEntry, got {other:?}"),
    }
}

#[test]
fn unsafe_paths_are_rejected() {
    let (m, _) = sample();
    for p in ["../x", "/etc/x", "dir/../../x", "dir//x", "dir/./x", "dir/", "x\0y"] {
        let msg = rejected(&with_entry(&m, p, EntryKind::Dir), p);
        assert!(msg.starts_with("unsafe entry") && (msg.contains("path") || msg.contains("sorted")), "{p}: {msg}");
    }
    // Duplicate path.
    let msg = rejected(&with_entry(&m, "dir", EntryKind::Dir), "duplicate");
    assert!(msg.contains("unsafe entry \"dir\": duplicate name"), "{msg}");
    // Unsorted.
    let mut u = m.clone();
    let n = u.entries.len();
    u.entries.swap(1, n - 1);
    assert!(rejected(&u, "unsorted").contains("sorted"));
    // Child of a symlink or of a missing directory.
    let msg = rejected(&with_entry(&m, "link/escape", EntryKind::Dir), "under symlink");
    assert!(msg.contains("is not a directory declared before it"), "{msg}");
    let msg = rejected(&with_entry(&m, "nodir/x", EntryKind::Dir), "no parent");
    assert!(msg.contains("is not a directory declared before it"), "{msg}");
    // Hard link to something that is not an earlier file.
    let msg = rejected(&with_entry(&m, "zz", EntryKind::HardLink { to: "/etc/passwd".into() }), "hard link");
    assert!(msg.contains("hard link"), "{msg}");
    // Missing root.
    let mut nr = m.clone();
    nr.entries.remove(0);
    assert!(rejected(&nr, "no root").contains("root"));
}

#[test]
fn inconsistent_file_records_are_rejected() {
    let (m, _) = sample();
    let idx = m.entries.iter().position(|e| e.path == "dir/new").unwrap();
    let mutate = |f: &dyn Fn(&mut FileEntry)| {
        let mut c = m.clone();
        let EntryKind::File(fe) = &mut c.entries[idx].kind else { panic!() };
        f(fe);
        c
    };
    rejected(&mutate(&|f| f.size += 100_000), "size vs block hashes");
    rejected(
        &mutate(&|f| {
            if let FileContent::Stored(r) = &mut f.content {
                r[0].raw_len += 1;
            }
        }),
        "raw length",
    );
    rejected(
        &mutate(&|f| {
            if let FileContent::Stored(r) = &mut f.content {
                r[0].offset = u64::MAX - 2;
            }
        }),
        "offset beyond pack",
    );
    rejected(
        &mutate(&|f| {
            if let FileContent::Stored(r) = &mut f.content {
                r[0].pack = 7;
            }
        }),
        "unknown pack",
    );
    // A full backup must store every block.
    let mut full = m.clone();
    full.header.parent = None;
    rejected(&full, "unchanged in a full backup");
    // Bad version.
    let mut bytes = encode_manifest(&m);
    bytes[8] = 99;
    assert!(matches!(decode_manifest(&bytes), Err(DeltaError::UnsupportedVersion { found: 99, .. })));
}
