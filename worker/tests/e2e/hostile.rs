//! Restores over HTTP of artifacts replaced in storage by crafted ones: a
//! restore treats what it reads back as hostile. The crafted manifest is
//! also recorded as the backup's checksum, as if whoever wrote it had the
//! database too, so that the decoder and the restore (not the checksum)
//! are what must refuse it. The instance ends in ERROR with a fail_reason
//! naming the entry, and nothing under the data directory changes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use cairn_delta::{
    BlockRun, Compression, EntryKind, FileContent, FileEntry, Manifest, PackRef, block_hash, checksum, decode_manifest,
    encode_manifest,
};
use cairn_testkit::{EntryState, TestApp, snapshot, spawn_app};
use sea_orm::ConnectionTrait;

/// The data directory as it stands, minus what a restore legitimately
/// touches in passing: directory mtimes (a staging directory is created
/// and removed beside the target) and the worker's staging area.
fn data_dir_state(app: &TestApp) -> BTreeMap<PathBuf, EntryState> {
    let mut s = snapshot(&app.config.data_dir);
    s.retain(|p, _| !p.starts_with("staging"));
    for e in s.values_mut() {
        if e.kind == "dir" {
            e.mtime_ns = 0;
        }
    }
    s
}

fn with_entry(m: &Manifest, path: &str, kind: EntryKind) -> Manifest {
    let mut m = m.clone();
    let mut e = m.entries[0].clone();
    e.path = path.to_owned();
    e.kind = kind;
    m.entries.push(e);
    m.entries.sort_by(|a, b| a.path.cmp(&b.path));
    m
}

/// Stores `m` as backup `id`'s manifest and records its checksum.
async fn replace_manifest(app: &TestApp, id: &str, m: &Manifest) {
    let bytes = encode_manifest(m);
    std::fs::write(app.config.data_dir.join(format!("artifacts/backups/{id}.1/manifest")), &bytes).unwrap();
    let sql = format!("UPDATE backups SET checksum = '{}' WHERE id = '{id}'", checksum(&bytes));
    app.db.execute_unprepared(&sql).await.unwrap();
}

async fn refused(app: &TestApp, name: &str, id: &str, outside: &Path, expected: &str) {
    let before = data_dir_state(app);
    let inst = app.restore(name, id).await;
    assert_eq!(inst["status"], "ERROR", "{inst}");
    let reason = inst["fail_reason"].as_str().unwrap();
    assert!(reason.contains(expected), "fail_reason {reason:?} lacks {expected:?}");
    assert_eq!(std::fs::read_dir(outside).unwrap().count(), 0, "something was written outside");
    let after = data_dir_state(app);
    for (path, state) in &after {
        assert_eq!(before.get(path), Some(state), "{} appeared or changed", path.display());
    }
    assert_eq!(before.len(), after.len(), "something under the data directory disappeared");
}

#[tokio::test]
async fn crafted_artifacts_fail_the_restore_and_write_nothing_outside() {
    let app = spawn_app(1).await;
    let dir = app.volumes().join("g");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), b"the payload a hostile manifest would place").unwrap();
    std::fs::write(dir.join("sub/b.txt"), b"bee").unwrap();
    let outside = app.config.data_dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let inst = app.register("g", &dir).await;
    let full = app.backup_completed(&inst, "full", None).await;
    let id = full["id"].as_str().unwrap();
    let stored = std::fs::read(app.config.data_dir.join(format!("artifacts/backups/{id}.1/manifest"))).unwrap();
    let original = decode_manifest(&stored).unwrap();
    let payload = original.find("a.txt").unwrap().kind.clone();

    // A file entry climbing out of the target.
    replace_manifest(&app, id, &with_entry(&original, "../../outside/evil", payload.clone())).await;
    refused(&app, "r1", id, &outside, "unsafe entry \"../../outside/evil\": `..` path component").await;

    // An absolute path.
    let abs = outside.join("evil");
    replace_manifest(&app, id, &with_entry(&original, abs.to_str().unwrap(), payload.clone())).await;
    refused(&app, "r2", id, &outside, "absolute path").await;

    // A symlink to the outside, then a file written through it.
    let link = with_entry(&original, "link", EntryKind::Symlink { target: outside.to_str().unwrap().to_owned() });
    replace_manifest(&app, id, &with_entry(&link, "link/evil", payload.clone())).await;
    refused(&app, "r3", id, &outside, "unsafe entry \"link/evil\": parent \"link\" is not a directory").await;

    // A duplicate name.
    replace_manifest(&app, id, &with_entry(&original, "sub", payload.clone())).await;
    refused(&app, "r4", id, &outside, "unsafe entry \"sub\": duplicate name").await;

    // Garbage where the manifest was.
    let garbage = b"CAIRNMAN\x01\x00\x00\x00 not a zstd frame".to_vec();
    std::fs::write(app.config.data_dir.join(format!("artifacts/backups/{id}.1/manifest")), &garbage).unwrap();
    let sql = format!("UPDATE backups SET checksum = '{}' WHERE id = '{id}'", checksum(&garbage));
    app.db.execute_unprepared(&sql).await.unwrap();
    refused(&app, "r5", id, &outside, "corrupt manifest").await;

    // The untouched manifest still restores (the test can tell the cases apart).
    replace_manifest(&app, id, &original).await;
    let ok = app.restore("r6", id).await;
    assert_eq!(ok["status"], "ACTIVE", "{ok}");
}

#[tokio::test]
async fn a_decompression_bomb_in_a_stored_pack_fails_the_restore() {
    let app = spawn_app(1).await;
    let dir = app.volumes().join("g");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), b"alpha").unwrap();
    let outside = app.config.data_dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let inst = app.register("g", &dir).await;
    let full = app.backup_completed(&inst, "full", None).await;
    let id = full["id"].as_str().unwrap();
    let attempt = app.config.data_dir.join(format!("artifacts/backups/{id}.1"));
    let mut m = decode_manifest(&std::fs::read(attempt.join("manifest")).unwrap()).unwrap();

    // The pack becomes one small zstd frame expanding to 512 MiB of zeros;
    // the manifest describes it as one 16 KiB block of zeros.
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..512 {
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    std::fs::write(attempt.join("pack-00000"), &bomb).unwrap();
    let bs = m.header.block_size as usize;
    m.header.packs = vec![PackRef { name: "pack-00000".into(), size: bomb.len() as u64, blake3: checksum(&bomb) }];
    let e = m.entries.iter_mut().find(|e| e.path == "a.txt").unwrap();
    e.kind = EntryKind::File(FileEntry {
        size: bs as u64,
        inode: 1,
        ctime: Default::default(),
        blake3: [0; 32], // never reached: the block is refused first
        block_hashes: vec![block_hash(&zeros[..bs])],
        base: None,
        content: FileContent::Stored(vec![BlockRun {
            first_block: 0,
            count: 1,
            pack: 0,
            offset: 0,
            stored_len: bomb.len() as u64,
            raw_len: bs as u64,
            frame_offset: 0,
            frame_len: bs as u64,
            compression: Compression::Zstd,
        }]),
    });
    replace_manifest(&app, id, &m).await;
    refused(
        &app,
        "r",
        id,
        &outside,
        &format!("backup {id}, pack pack-00000, offset 0: cannot decompress (a frame larger than the {bs} bytes recorded is refused)"),
    )
    .await;
}
