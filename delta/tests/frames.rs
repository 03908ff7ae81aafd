//! Shared frames (format 3): the changed blocks of a 1 MiB chunk are
//! compressed as one zstd frame whatever runs they form, because scattered
//! database pages compress much better together than one by one.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;

use cairn_delta::*;
use common::*;

const BS: usize = 16 << 10;

fn stored_runs<'m>(m: &'m Manifest, path: &str) -> &'m [BlockRun] {
    let EntryKind::File(f) = &m.find(path).unwrap().kind else { panic!("{path} is a file") };
    f.runs()
}

/// Compressible pages that differ from each other (like database pages).
fn pages(seed: u64, n: usize) -> Vec<u8> {
    let mut r = rng(seed);
    let mut out = compressible_bytes(n * BS);
    for page in out.chunks_mut(BS) {
        let noise = random_bytes(&mut r, 512);
        page[..512].copy_from_slice(&noise);
    }
    out
}

#[test]
fn scattered_changes_of_a_chunk_share_one_frame_and_restore() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("table"), &pages(1, 100)); // 1.56 MiB: two chunks
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    // Blocks 1, 5, 6 and 9 change in chunk 0; block 70 in chunk 1.
    let f = fs::OpenOptions::new().write(true).open(s.join("table")).unwrap();
    for (i, block) in [1u64, 5, 6, 9, 70].into_iter().enumerate() {
        f.write_all_at(&pages(10 + i as u64, 1), block * BS as u64).unwrap();
    }
    drop(f);
    settle();
    let out = chain.backup(s).clone();
    let runs = stored_runs(&out.manifest, "table");
    let shape: Vec<(u64, u64)> = runs.iter().map(|r| (r.first_block, r.count)).collect();
    assert_eq!(shape, [(1, 1), (5, 2), (9, 1), (70, 1)]);
    // The first chunk's three runs are one zstd frame, at their offsets in it.
    let first = &runs[..3];
    assert!(first.iter().all(|r| r.compression == Compression::Zstd && r.frame() == first[0].frame()));
    assert_eq!(first.iter().map(|r| r.frame_offset).collect::<Vec<_>>(), [0, BS as u64, 3 * BS as u64]);
    assert!(first.iter().all(|r| r.frame_len == 4 * BS as u64));
    // The second chunk's run has a frame of its own.
    assert_ne!(runs[3].frame(), first[0].frame());
    assert_eq!((runs[3].frame_offset, runs[3].frame_len), (0, BS as u64));
    // Together they store less than the same runs compressed one by one.
    let content = fs::read(s.join("table")).unwrap();
    let alone: usize = [(1usize, 1usize), (5, 2), (9, 1)]
        .iter()
        .map(|&(b, n)| zstd::bulk::compress(&content[b * BS..(b + n) * BS], 1).unwrap().len())
        .sum();
    assert!((first[0].stored_len as usize) < alone, "shared frame {} vs {alone} one by one", first[0].stored_len);

    // A third link changes blocks between and inside the earlier ones; the
    // restore takes each block from the newest link that has it.
    let f = fs::OpenOptions::new().write(true).open(s.join("table")).unwrap();
    for (i, block) in [2u64, 6, 71].into_iter().enumerate() {
        f.write_all_at(&pages(20 + i as u64, 1), block * BS as u64).unwrap();
    }
    drop(f);
    settle();
    chain.backup(s);
    for k in 0..3 {
        let (target, _) = chain.restore(k);
        if k == 2 {
            assert_same(&snapshot(s), &snapshot(target.path()), "3-link restore");
        }
    }
}

#[test]
fn incompressible_scattered_changes_are_stored_raw_run_by_run() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut r = rng(2);
    write(&s.join("random"), &random_bytes(&mut r, 20 * BS));
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    let f = fs::OpenOptions::new().write(true).open(s.join("random")).unwrap();
    for block in [3u64, 11] {
        f.write_all_at(&random_bytes(&mut r, BS), block * BS as u64).unwrap();
    }
    drop(f);
    settle();
    let out = chain.backup(s).clone();
    let runs = stored_runs(&out.manifest, "random");
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(run.compression, Compression::Raw);
        assert_eq!((run.frame_offset, run.frame_len, run.stored_len), (0, BS as u64, BS as u64));
    }
    assert_ne!(runs[0].frame(), runs[1].frame());
    let (target, _) = chain.restore(1);
    assert_same(&snapshot(s), &snapshot(target.path()), "restored");
}

/// A frame's geometry is checked: a run outside its frame, a raw frame
/// whose stored length is not its length, and a shared frame in a
/// version 2 manifest are refused by name.
#[test]
fn frame_geometry_is_validated() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("table"), &pages(3, 8));
    let mut chain = Chain::new(blocks_of(BS));
    chain.backup(s);
    let f = fs::OpenOptions::new().write(true).open(s.join("table")).unwrap();
    for block in [1u64, 4] {
        f.write_all_at(&pages(30 + block, 1), block * BS as u64).unwrap();
    }
    drop(f);
    settle();
    let good = chain.backup(s).manifest.clone();
    validate(&good).unwrap();
    let with_runs = |edit: &dyn Fn(&mut BlockRun)| {
        let mut m = good.clone();
        for e in &mut m.entries {
            if let EntryKind::File(FileEntry { content: FileContent::Stored(runs), .. }) = &mut e.kind {
                runs.iter_mut().for_each(edit);
            }
        }
        m
    };
    let err = validate(&with_runs(&|r| r.frame_offset = r.frame_len)).unwrap_err().to_string();
    assert!(err.contains("in a frame of"), "{err}");
    let err = validate(&with_runs(&|r| r.frame_len = MAX_RUN_RAW + 1)).unwrap_err().to_string();
    assert!(err.contains("over the limit"), "{err}");
    let err = validate(&with_runs(&|r| r.compression = Compression::Raw)).unwrap_err().to_string();
    assert!(err.contains("raw run whose stored length differs"), "{err}");
    let mut v2 = good.clone();
    v2.header.format_version = 2;
    v2.header.block_hashes = BlockHashKind::Standalone;
    let err = validate(&v2).unwrap_err().to_string();
    assert!(err.contains("a shared frame in a version 2 manifest"), "{err}");
    // Encoded and decoded, the frame fields survive.
    let mut decoded = decode_manifest(&encode_manifest(&good)).unwrap();
    decoded.inherit_hashes(&chain.links[0].manifest).unwrap();
    assert_eq!(decoded, good);
}
