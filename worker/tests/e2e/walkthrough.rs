//! Trove's incremental-backup guide, over HTTP: register guest1, a full
//! backup, incrementals on it, restore into guest2 — byte-identical to
//! guest1 as it was when each backup was taken.

use serde_json::Value;

use cairn_testkit::{
    AppOptions, TestApp, assert_same_tree, snapshot, spawn_app, spawn_app_with,
    trees::{mutate, seed},
};

/// Takes a chain of `links` backups of a changing tree, then restores the
/// last, the first and a middle link and compares each to the snapshot taken
/// when it was backed up.
async fn chain_restores_exactly(links: usize) {
    chain_restores_exactly_in(&spawn_app(2).await, links).await;
}

async fn chain_restores_exactly_in(app: &TestApp, links: usize) -> Vec<Value> {
    let source = app.volumes().join("guest1");
    std::fs::create_dir_all(&source).unwrap();
    seed(&source, links as u64);
    let guest1 = app.register("guest1", &source).await;

    let mut backups: Vec<Value> = Vec::new();
    let mut states = Vec::new();
    for i in 0..links {
        if i > 0 {
            mutate(&source, i as u64);
        }
        let parent = backups.last().map(|b| b["id"].as_str().unwrap().to_owned());
        let name = if i == 0 { "full".to_owned() } else { format!("backup1.{i}") };
        let done = app.backup_completed(&guest1, &name, parent.as_deref()).await;
        assert_eq!(done["parent_id"].as_str(), parent.as_deref());
        assert!(done["size"].as_f64().is_some_and(|s| s > 0.0), "{done}");
        assert!(done["bytes"].as_i64().is_some_and(|b| b > 0), "{done}");
        assert!(done["locationRef"].as_str().is_some_and(|l| l.starts_with("file://")), "{done}");
        assert_eq!(done["checksum"].as_str().map(str::len), Some(64), "{done}");
        states.push(snapshot(&source));
        backups.push(done);
    }
    // Change the source again: restores must not see this.
    mutate(&source, 99);

    let mut targets = vec![links - 1, 0];
    if links > 2 {
        targets.push(links / 2);
    }
    for (n, &k) in targets.iter().enumerate() {
        let id = backups[k]["id"].as_str().unwrap();
        let inst = app.restore(&format!("guest{}", n + 2), id).await;
        assert_eq!(inst["status"], "ACTIVE", "{inst}");
        assert_eq!(inst["restore"]["steps"], k as u64 + 1, "{inst}");
        assert_eq!(inst["restore"]["step"], k as u64 + 1, "{inst}");
        let path = inst["volume"]["path"].as_str().unwrap();
        assert_same_tree(&states[k], std::path::Path::new(path));
    }
    backups
}

#[tokio::test]
async fn chain_of_one_restores_exactly() {
    chain_restores_exactly(1).await;
}

#[tokio::test]
async fn chain_of_two_restores_exactly() {
    chain_restores_exactly(2).await;
}

#[tokio::test]
async fn chain_of_ten_restores_exactly() {
    chain_restores_exactly(10).await;
}

/// `CAIRN_BLOCK_SIZE` reaches the format: the manifests of a chain backed
/// up at 8 KiB (a PostgreSQL page) say so, and the chain restores exactly.
#[tokio::test]
async fn a_chain_at_another_block_size_restores_exactly() {
    let app = spawn_app_with(2, AppOptions::default().block_size_kib(8)).await;
    for backup in chain_restores_exactly_in(&app, 3).await {
        let location = backup["locationRef"].as_str().unwrap();
        let bytes = std::fs::read(location.strip_prefix("file://").unwrap()).unwrap();
        let manifest = cairn_delta::decode_manifest(&bytes).unwrap();
        assert_eq!(manifest.header.block_size, 8 << 10, "{backup}");
    }
}

/// A stored incremental records only the hashes of the blocks it stores, so
/// a worker completes its parent's manifest from the whole chain. A file
/// that link 2 left alone and link 3 changes in one block costs link 3 that
/// block, compared with hashes only link 1 recorded, and the chain
/// restores exactly.
#[tokio::test]
async fn an_incremental_compares_with_hashes_recorded_before_its_parent() {
    use rand::{Rng, SeedableRng};
    let app = spawn_app(1).await;
    let source = app.volumes().join("guest1");
    std::fs::create_dir_all(&source).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut big = vec![0u8; 2 << 20];
    rng.fill(&mut big[..]);
    std::fs::write(source.join("big"), &big).unwrap();
    std::fs::write(source.join("small"), b"one").unwrap();
    let guest1 = app.register("guest1", &source).await;
    let settle = || std::thread::sleep(std::time::Duration::from_millis(1100));

    settle();
    let full = app.backup_completed(&guest1, "full", None).await;
    settle();
    std::fs::write(source.join("small"), b"two").unwrap();
    let second = app.backup_completed(&guest1, "small changed", full["id"].as_str()).await;
    rng.fill(&mut big[1 << 20..(1 << 20) + 4096]);
    std::fs::write(source.join("big"), &big).unwrap();
    let third = app.backup_completed(&guest1, "one block of big", second["id"].as_str()).await;
    let state = snapshot(&source);

    let manifest_of = |b: &Value| {
        let location = b["locationRef"].as_str().unwrap();
        cairn_delta::decode_manifest(&std::fs::read(location.strip_prefix("file://").unwrap()).unwrap()).unwrap()
    };
    let big_of = |m: &cairn_delta::Manifest| match &m.find("big").unwrap().kind {
        cairn_delta::EntryKind::File(f) => f.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(big_of(&manifest_of(&second)).content, cairn_delta::FileContent::Unchanged);
    let stored = big_of(&manifest_of(&third));
    assert_eq!(stored.runs().iter().map(|r| r.count).sum::<u64>(), 1, "one block of big stored");
    assert_eq!(stored.block_hashes.len(), 1, "and only its hash recorded");
    assert!(third["bytes"].as_i64().is_some_and(|b| b < 64 << 10), "{third}");

    let inst = app.restore("guest2", third["id"].as_str().unwrap()).await;
    assert_eq!(inst["status"], "ACTIVE", "{inst}");
    assert_same_tree(&state, std::path::Path::new(inst["volume"]["path"].as_str().unwrap()));
}

/// The guide's flow: backup1.2 is posted right after backup1.1, naming it as
/// parent while it is still NEW; it waits for its parent rather than failing.
#[tokio::test]
async fn child_posted_while_parent_is_new_waits_for_it() {
    let mut app = spawn_app(0).await;
    let source = app.volumes().join("guest1");
    std::fs::create_dir_all(&source).unwrap();
    seed(&source, 7);
    let guest1 = app.register("guest1", &source).await;
    let full = app.backup(&guest1, "full", None).await;
    let b11 = app.backup(&guest1, "backup1.1", full["id"].as_str()).await;
    let b12 = app.backup(&guest1, "backup1.2", b11["id"].as_str()).await;
    // No worker yet: all three wait in NEW.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for b in [&full, &b11, &b12] {
        let (_, body) = app.get(&format!("/backups/{}", b["id"].as_str().unwrap())).await;
        assert_eq!(body["backup"]["status"], "NEW");
    }
    app.start_worker().await;
    app.start_worker().await;
    let state = snapshot(&source);
    for b in [&full, &b11, &b12] {
        let done = app.wait_backup(b["id"].as_str().unwrap(), &["COMPLETED", "FAILED"]).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
    }
    let inst = app.restore("guest2", b12["id"].as_str().unwrap()).await;
    assert_eq!(inst["status"], "ACTIVE", "{inst}");
    assert_same_tree(&state, std::path::Path::new(inst["volume"]["path"].as_str().unwrap()));
}
