//! Making and changing source trees the way a database's data directory
//! changes: pages rewritten in place, files grown, truncated, created,
//! removed, renamed, plus the awkward cases (empty files and directories,
//! symlinks, odd modes, set mtimes).

use std::{os::unix::fs::PermissionsExt, path::Path};

use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

/// A small data directory with every kind of entry.
pub fn seed(root: &Path, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(root.join("base/16384")).unwrap();
    std::fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    std::fs::create_dir_all(root.join("pg_wal")).unwrap();
    for i in 0..6 {
        let mut data = vec![0u8; rng.random_range(1..200_000)];
        rng.fill_bytes(&mut data);
        std::fs::write(root.join(format!("base/16384/{}", 1000 + i)), data).unwrap();
    }
    // Compressible, page-structured file of 40 pages.
    let page: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("base/16384/table"), page.repeat(40)).unwrap();
    std::fs::write(root.join("empty-file"), b"").unwrap();
    std::fs::write(root.join("PG_VERSION"), b"15\n").unwrap();
    std::os::unix::fs::symlink("base/16384/table", root.join("link-to-table")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::fs::write(root.join("secret.conf"), b"password=hunter2\n").unwrap();
    std::fs::set_permissions(root.join("secret.conf"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(root.join("pg_wal"), std::fs::Permissions::from_mode(0o700)).unwrap();
    filetime::set_file_mtime(root.join("PG_VERSION"), filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789))
        .unwrap();
}

/// One round of changes, different each `round`.
pub fn mutate(root: &Path, round: u64) {
    let mut rng = StdRng::seed_from_u64(1000 + round);
    let table = root.join("base/16384/table");
    if table.exists() {
        // Rewrite a few pages in place.
        let mut data = std::fs::read(&table).unwrap();
        for _ in 0..3 {
            let pages = data.len() / 8192;
            if pages == 0 {
                break;
            }
            let p = rng.random_range(0..pages);
            rng.fill_bytes(&mut data[p * 8192..p * 8192 + 100]);
        }
        std::fs::write(&table, data).unwrap();
    }
    match round % 5 {
        0 => {
            // grow a file and add a new one
            let mut extra = vec![0u8; 20_000];
            rng.fill_bytes(&mut extra);
            let f = root.join("base/16384/1000");
            let mut data = std::fs::read(&f).unwrap_or_default();
            data.extend_from_slice(&extra);
            std::fs::write(&f, data).unwrap();
            std::fs::write(root.join(format!("pg_wal/seg-{round}")), &extra).unwrap();
        }
        1 => {
            // truncate one file, empty another
            let f = root.join("base/16384/1001");
            if let Ok(data) = std::fs::read(&f) {
                std::fs::write(&f, &data[..data.len() / 3]).unwrap();
            }
            let _ = std::fs::write(root.join("base/16384/1002"), b"");
        }
        2 => {
            // delete a file and a directory, rename a file, new empty dir
            let _ = std::fs::remove_file(root.join("base/16384/1003"));
            let _ = std::fs::remove_dir_all(root.join("empty/nested-empty"));
            let _ = std::fs::rename(root.join("base/16384/1004"), root.join("base/16384/1004.renamed"));
            std::fs::create_dir_all(root.join(format!("new-empty-{round}"))).unwrap();
        }
        3 => {
            // a file becomes a directory, a symlink changes target, chmod
            let f = root.join("PG_VERSION");
            let _ = std::fs::remove_file(&f);
            let _ = std::fs::remove_dir_all(&f);
            std::fs::create_dir_all(f.join("inside")).unwrap();
            let l = root.join("link-to-table");
            let _ = std::fs::remove_file(&l);
            std::os::unix::fs::symlink(format!("elsewhere-{round}"), &l).unwrap();
            let _ = std::fs::set_permissions(root.join("secret.conf"), std::fs::Permissions::from_mode(0o640));
        }
        _ => {
            // same size, same mtime, different content: only ctime tells
            let f = root.join("secret.conf");
            if let Ok(meta) = std::fs::metadata(&f) {
                let mtime = filetime::FileTime::from_last_modification_time(&meta);
                std::fs::write(&f, b"password=hunter3\n").unwrap();
                filetime::set_file_mtime(&f, mtime).unwrap();
            }
            let d = root.join("PG_VERSION");
            if d.is_dir() {
                std::fs::remove_dir_all(&d).unwrap();
                std::fs::write(&d, b"16\n").unwrap();
            }
        }
    }
}
