//! Writes valid seed inputs for the fuzz targets in `delta/fuzz/`:
//! manifests of a small full backup and an incremental one on it, stored
//! and decompressed (`manifest_decode`), each stored run of their packs in the pack target's
//! input layout (`pack_decode`), and whole single-link restores
//! (`restore_plan`). Seeds are generated rather than committed, so the
//! repository holds no binary corpus.
//!
//! Usage: `cargo run -p cairn-delta --example fuzz-seeds -- delta/fuzz/corpus`

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use cairn_delta::{BackupOptions, BackupOutput, Compression, EntryKind, FileContent, LinkIds, backup_tree};
use uuid::Uuid;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "delta/fuzz/corpus".into()));
    for target in ["manifest_decode", "pack_decode", "restore_plan"] {
        fs::create_dir_all(out.join(target))?;
    }
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    fs::create_dir_all(src.join("dir/sub"))?;
    fs::write(src.join("small.txt"), b"hello, cairn\n")?;
    let pattern: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(src.join("dir/blocks.bin"), &pattern)?;
    fs::write(src.join("dir/zeros.bin"), vec![0u8; 20_000])?;
    fs::write(src.join("dir/sub/empty"), b"")?;
    symlink("../small.txt", src.join("dir/link"))?;
    fs::hard_link(src.join("small.txt"), src.join("hard"))?;

    let opts = BackupOptions { block_size: 4096, ..BackupOptions::default() };
    let ids = LinkIds { backup_id: Uuid::from_u128(1), instance_id: Uuid::from_u128(9) };
    fs::create_dir(work.path().join("stage-1"))?;
    fs::create_dir(work.path().join("stage-2"))?;
    let full = backup_tree(&src, None, ids, &opts, &work.path().join("stage-1"), &mut |_| {})?;

    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut changed = pattern.clone();
    changed[5000..5100].fill(7);
    changed.extend_from_slice(b"grown");
    fs::write(src.join("dir/blocks.bin"), &changed)?;
    fs::write(src.join("new.txt"), b"added later")?;
    let ids2 = LinkIds { backup_id: Uuid::from_u128(2), instance_id: ids.instance_id };
    let incr = backup_tree(
        &src,
        Some((&full.manifest, &full.checksum)),
        ids2,
        &opts,
        &work.path().join("stage-2"),
        &mut |_| {},
    )?;

    let mut written = 0;
    for (name, link) in [("full", &full), ("incremental", &incr)] {
        // manifest_decode's first byte: even = stored bytes, odd = body.
        let mut framed = vec![0u8];
        framed.extend_from_slice(&link.manifest_bytes);
        fs::write(out.join("manifest_decode").join(name), framed)?;
        let mut body = vec![1u8];
        body.extend_from_slice(&zstd::decode_all(&link.manifest_bytes[12..])?);
        fs::write(out.join("manifest_decode").join(format!("{name}-body")), body)?;
        written += 2;
        written += pack_seeds(&out.join("pack_decode"), name, link)?;
    }
    // restore_plan: one link, its manifest (stored, or as its body with
    // the flags' bit 7) then its (single) pack.
    let pack = fs::read(&full.packs[0].path)?;
    let body = zstd::decode_all(&full.manifest_bytes[12..])?;
    for (name, flags, manifest) in [("full", 0u8, &full.manifest_bytes), ("full-body", 0x80, &body)] {
        let mut seed = vec![flags];
        let len = manifest.len();
        seed.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8]);
        seed.extend_from_slice(manifest);
        seed.extend_from_slice(&pack);
        fs::write(out.join("restore_plan").join(name), &seed)?;
        written += 1;
    }
    println!("wrote {written} seeds under {}", out.display());
    Ok(())
}

/// One seed per stored run: compression byte, raw length (24 bits), bytes.
fn pack_seeds(dir: &Path, name: &str, link: &BackupOutput) -> Result<usize, Box<dyn std::error::Error>> {
    let packs: Vec<Vec<u8>> = link.packs.iter().map(|p| fs::read(&p.path)).collect::<Result<_, _>>()?;
    let mut n = 0;
    for e in &link.manifest.entries {
        let EntryKind::File(f) = &e.kind else { continue };
        let FileContent::Stored(runs) = &f.content else { continue };
        for r in runs {
            let tag = match r.compression {
                Compression::Zstd => 0u8,
                Compression::Raw => 1,
                Compression::Zero => continue,
            };
            let raw = r.raw_len as u32;
            let mut seed = vec![tag, raw as u8, (raw >> 8) as u8, (raw >> 16) as u8];
            let pack = &packs[r.pack as usize];
            seed.extend_from_slice(&pack[r.offset as usize..(r.offset + r.stored_len) as usize]);
            fs::write(dir.join(format!("{name}-{n}")), seed)?;
            n += 1;
        }
    }
    Ok(n)
}
