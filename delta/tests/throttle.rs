//! `read_limit` bounds the rate at which a backup reads its source.

use std::time::{Duration, Instant};

use cairn_delta::{BackupOptions, LinkIds, backup_tree};

#[test]
fn a_read_limit_slows_the_backup_to_that_rate() {
    let src = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("data"), vec![7u8; 4 << 20]).unwrap();
    let ids = LinkIds { backup_id: uuid::Uuid::new_v4(), instance_id: uuid::Uuid::new_v4() };
    let limited = BackupOptions { read_limit: Some(8 << 20), ..Default::default() };
    let started = Instant::now();
    let out = backup_tree(src.path(), None, ids, &limited, staging.path(), &mut |_| {}).unwrap();
    // 4 MiB at 8 MiB/s cannot take less than half a second.
    assert!(started.elapsed() >= Duration::from_millis(450), "took {:?}", started.elapsed());
    assert_eq!(out.stats.bytes_read, 4 << 20);
}
