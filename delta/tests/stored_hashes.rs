//! Format 4: a link records the hashes of the blocks it stores and takes the
//! others from its parent. What must hold: an incremental's manifest no
//! longer grows with the unchanged part of the tree; the hashes it leaves
//! out come back exactly, and only from the parent it names; a link that
//! leaves a block neither stored nor in its parent is refused by name; and
//! nothing works on a manifest whose hashes are not complete.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use cairn_delta::*;
use common::*;
use tempfile::TempDir;
use uuid::Uuid;

const BS: usize = 4096;

/// A chain of three links of one tree: `big` (1024 blocks) and `small`
/// (3 blocks) in full; then one block of `big` rewritten; then `big`
/// grown by four blocks. `small` never changes after the full backup.
fn three_links() -> (Chain, TempDir) {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(41);
    write(&s.join("big"), &random_bytes(&mut r, 1024 * BS));
    write(&s.join("small"), &random_bytes(&mut r, 3 * BS - 100));
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    settle();
    let big = OpenOptions::new().write(true).open(s.join("big")).unwrap();
    big.write_all_at(&random_bytes(&mut r, BS), 100 * BS as u64).unwrap();
    settle();
    chain.backup(s);
    big.write_all_at(&random_bytes(&mut r, 4 * BS), 1024 * BS as u64).unwrap();
    settle();
    chain.backup(s);
    (chain, src)
}

fn file<'m>(m: &'m Manifest, path: &str) -> &'m FileEntry {
    match &m.find(path).unwrap().kind {
        EntryKind::File(f) => f,
        other => panic!("{path} is {other:?}"),
    }
}

#[test]
fn an_incremental_records_only_the_hashes_of_the_blocks_it_stores() {
    let (chain, src) = three_links();
    let built = &chain.outputs[1].manifest;
    assert_eq!(built.hashes, HashCoverage::All);
    let decoded = decode_manifest(&chain.outputs[1].manifest_bytes).unwrap();
    assert_eq!(decoded.hashes, HashCoverage::StoredOnly);
    assert_eq!(file(&decoded, "big").block_hashes, vec![file(built, "big").block_hashes[100]]);
    assert!(file(&decoded, "small").block_hashes.is_empty());

    // The same manifest in version 3 carries all 1027 hashes.
    let mut v3 = built.clone();
    v3.header.format_version = 3;
    let v3_bytes = encode_manifest(&v3);
    let v4_len = chain.outputs[1].manifest_bytes.len();
    println!("one changed block of 1027: version 3 {} bytes, version 4 {v4_len} bytes", v3_bytes.len());
    assert!(v4_len + 1026 * 16 * 9 / 10 <= v3_bytes.len(), "v3 {} bytes, v4 {v4_len}", v3_bytes.len());
    // An incremental written before version 4 still decodes whole.
    assert_eq!(decode_manifest(&v3_bytes).unwrap(), v3);

    // Completed by its parent, each stored link is exactly what was built,
    // and the chain restores to the source.
    for k in 1..3 {
        let mut m = decode_manifest(&chain.outputs[k].manifest_bytes).unwrap();
        m.inherit_hashes(&chain.outputs[k - 1].manifest).unwrap();
        assert_eq!(m, chain.outputs[k].manifest, "link {}", k + 1);
    }
    let (target, _) = chain.restore(2);
    assert_same(&snapshot(src.path()), &snapshot(target.path()), "three links of version 4");
}

#[test]
fn hashes_come_only_from_the_parent_a_link_names() {
    let (chain, _src) = three_links();
    let raw = |k: usize| ChainLink::from_bytes(&chain.outputs[k].manifest_bytes).unwrap();
    // The grandparent is not the parent, and an incomplete parent cannot lend.
    let err = raw(2).manifest.inherit_hashes(&chain.outputs[0].manifest).unwrap_err().to_string();
    assert!(err.contains(&format!("names parent Some({})", chain.outputs[1].manifest.header.backup_id)), "{err}");
    let err = raw(2).manifest.inherit_hashes(&raw(1).manifest).unwrap_err().to_string();
    assert!(err.contains("itself incomplete"), "{err}");

    // A chain as stored resolves to the manifests as built.
    let mut links: Vec<_> = (0..3).map(raw).collect();
    resolve_chain(&mut links).unwrap();
    for (link, out) in links.iter().zip(&chain.outputs) {
        assert_eq!(link.manifest, out.manifest);
    }
    // What a backup takes of its parent's chain: the last link, the same.
    assert_eq!(resolve_last((0..3).map(raw).collect()).unwrap().manifest, chain.outputs[2].manifest);
    // A chain with a link missing is refused by the chain's check, naming
    // it, whichever way it is resolved.
    let gap_errors =
        [resolve_chain(&mut [raw(0), raw(2)]).unwrap_err(), resolve_last(vec![raw(0), raw(2)]).unwrap_err()];
    for err in gap_errors {
        match err {
            DeltaError::Chain { position: 2, backup_id, reason } => {
                assert_eq!(backup_id, chain.outputs[2].manifest.header.backup_id);
                assert!(reason.contains("missing link or wrong order"), "{reason}");
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn a_link_that_leaves_a_block_nowhere_is_refused_naming_it() {
    let (chain, _src) = three_links();
    let restore_err = |crafted: &Manifest| {
        let bytes = encode_manifest(crafted);
        let links = vec![chain.links[0].clone(), chain.links[1].clone(), ChainLink::from_bytes(&bytes).unwrap()];
        let target = tempfile::tempdir().unwrap();
        let err = restore_chain(&links, &chain.packs, target.path(), &mut |_, _| {}).unwrap_err();
        assert_eq!(fs::read_dir(target.path()).unwrap().count(), 0, "nothing is written");
        err
    };
    // The grown blocks 1024..1028 of `big`, dropped with their hashes: no
    // link has them.
    let mut crafted = decode_manifest(&chain.outputs[2].manifest_bytes).unwrap();
    let EntryKind::File(big) = &mut crafted.entries.iter_mut().find(|e| e.path == "big").unwrap().kind else {
        panic!()
    };
    let FileContent::Stored(runs) = &mut big.content else { panic!("big grew") };
    assert_eq!((runs[0].first_block, runs[0].end_block()), (1024, 1028));
    runs.clear();
    big.block_hashes.clear();
    let before = crafted.clone();
    assert!(crafted.inherit_hashes(&chain.links[1].manifest).is_err());
    assert_eq!(crafted, before, "a refused manifest is left as it was");
    match restore_err(&crafted) {
        DeltaError::Chain { position: 3, reason, .. } => {
            assert!(reason.contains("\"big\"") && reason.contains("blocks 1024..1028 are neither stored"), "{reason}")
        }
        other => panic!("{other}"),
    }
    // An unchanged file cannot change its number of blocks.
    let mut crafted = decode_manifest(&chain.outputs[2].manifest_bytes).unwrap();
    let EntryKind::File(small) = &mut crafted.entries.iter_mut().find(|e| e.path == "small").unwrap().kind else {
        panic!()
    };
    assert_eq!(small.content, FileContent::Unchanged);
    small.size += BS as u64;
    // ... nor claim a size whose hashes would not fit in memory.
    let mut huge = crafted.clone();
    if let EntryKind::File(f) = &mut huge.entries.iter_mut().find(|e| e.path == "small").unwrap().kind {
        f.size = 1 << 59;
    }
    let err = huge.inherit_hashes(&chain.links[1].manifest).unwrap_err().to_string();
    assert!(err.contains("unchanged, yet 140737488355328 blocks"), "{err}");
    match restore_err(&crafted) {
        DeltaError::Chain { position: 3, reason, .. } => {
            assert!(reason.contains("\"small\"") && reason.contains("unchanged, yet 4 blocks"), "{reason}")
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_backup_refuses_a_parent_whose_hashes_are_not_complete() {
    let (chain, src) = three_links();
    let raw = decode_manifest(&chain.outputs[2].manifest_bytes).unwrap();
    let staging = tempfile::tempdir().unwrap();
    let ids = LinkIds { backup_id: Uuid::new_v4(), instance_id: chain.instance };
    let err = backup_tree(
        src.path(),
        Some((&raw, &chain.outputs[2].checksum)),
        ids,
        &chain.opts,
        staging.path(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(&err, DeltaError::Parent { reason, .. } if reason.contains("resolve its chain first")), "{err}");
    assert_eq!(fs::read_dir(staging.path()).unwrap().count(), 0, "no pack is staged");
}
