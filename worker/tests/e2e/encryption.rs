//! Encryption at rest (`CAIRN_ENCRYPTION_KEY_FILE`), end to end: what is
//! stored is sealed, restores and verifies need the right key, and a chain
//! may span key rotations.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_shared::seal::{Header, MAGIC};
use cairn_testkit::{AppOptions, TestApp, assert_same_tree, snapshot, spawn_app, spawn_app_with};
use rand::RngCore;
use serde_json::{Value, json};

const K1: &str = "k1 1111111111111111111111111111111111111111111111111111111111111111";
const K1_OTHER: &str = "k1 9999999999999999999999999999999999999999999999999999999999999999";
const K2: &str = "k2 IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI=";
const K3: &str = "k3 3333333333333333333333333333333333333333333333333333333333333333";
const MARKER: &[u8] = b"cairn-plaintext-marker-7f3a9c: the password is hunter2";

fn key_file(app: &TestApp, name: &str, lines: &[&str]) -> PathBuf {
    let path = app.config.data_dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Restarts the app's worker with `key_file` (or none).
async fn use_keys(app: &mut TestApp, key_file: Option<PathBuf>) {
    app.stop_workers().await;
    app.config.encryption_key_file = key_file;
    app.start_worker().await;
}

fn volume(dir: &Path, seed: u8) -> Vec<u8> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut random = vec![0u8; 300_000];
    rand::rng().fill_bytes(&mut random);
    random[0] = seed;
    std::fs::write(dir.join("random.bin"), &random).unwrap();
    std::fs::write(dir.join("sub/secret.txt"), MARKER.repeat(50)).unwrap();
    random
}

/// Every stored object of backup `id`, by name.
fn stored_objects(app: &TestApp, id: &str) -> Vec<(String, Vec<u8>)> {
    let dir = app.config.data_dir.join(format!("artifacts/backups/{id}.1"));
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn key_id_of(object: &[u8]) -> String {
    Header::parse("object", object).unwrap().expect("sealed").key_id
}

async fn verify(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.post(&format!("/backups/{id}/action"), &json!({"verify": {}})).await;
    assert_eq!(status.as_u16(), 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = app.get(&format!("/backups/{id}")).await;
        let v = body["backup"]["verify"].clone();
        if !v.is_null() && v["status"] != "RUNNING" {
            return v;
        }
        assert!(Instant::now() < deadline, "verify did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn restored_path(inst: &Value) -> PathBuf {
    PathBuf::from(inst["volume"]["path"].as_str().unwrap())
}

#[tokio::test]
async fn encrypted_round_trip_stores_no_plaintext() {
    let mut app = spawn_app(0).await;
    let keys = key_file(&app, "keys", &[K1]);
    use_keys(&mut app, Some(keys)).await;
    let dir = app.volumes().join("g");
    let random = volume(&dir, 1);
    let inst = app.register("g", &dir).await;
    let full = app.backup_completed(&inst, "full", None).await;
    let full_id = full["id"].as_str().unwrap();
    std::fs::write(dir.join("sub/new.txt"), MARKER).unwrap();
    let incr = app.backup_completed(&inst, "incr", Some(full_id)).await;
    let incr_id = incr["id"].as_str().unwrap();

    for id in [full_id, incr_id] {
        let objects = stored_objects(&app, id);
        assert!(objects.len() >= 2, "{objects:?}");
        for (name, bytes) in &objects {
            assert!(bytes.starts_with(MAGIC), "{id}/{name} is not sealed");
            assert_eq!(key_id_of(bytes), "k1");
            assert!(!contains(bytes, MARKER), "{id}/{name} holds the marker in plaintext");
            assert!(!contains(bytes, &random[1000..1064]), "{id}/{name} holds random.bin's bytes");
            assert!(!contains(bytes, b"secret.txt"), "{id}/{name} holds a file name in plaintext");
        }
    }
    let expected = snapshot(&dir);
    let restored = app.restore("g2", incr_id).await;
    assert_eq!(restored["status"], "ACTIVE", "{restored}");
    assert_same_tree(&expected, &restored_path(&restored));
    assert_eq!(verify(&app, incr_id).await["status"], "OK");
    assert_eq!(verify(&app, full_id).await["status"], "OK");

    // The control: the same data without a key file is stored readable,
    // so the checks above can fail.
    let plain = spawn_app(1).await;
    let dir = plain.volumes().join("g");
    let random = volume(&dir, 2);
    let inst = plain.register("g", &dir).await;
    let id = plain.backup_completed(&inst, "full", None).await["id"].as_str().unwrap().to_owned();
    let objects = stored_objects(&plain, &id);
    assert!(objects.iter().any(|(_, b)| contains(b, &random[1000..1064])));
    assert!(objects.iter().all(|(_, b)| !b.starts_with(MAGIC)));
}

#[tokio::test]
async fn wrong_missing_or_unknown_keys_fail_restore_and_verify_naming_the_key_id() {
    let mut app = spawn_app(0).await;
    let k1 = key_file(&app, "keys", &[K1]);
    use_keys(&mut app, Some(k1.clone())).await;
    let dir = app.volumes().join("g");
    volume(&dir, 3);
    let inst = app.register("g", &dir).await;
    let id = app.backup_completed(&inst, "full", None).await["id"].as_str().unwrap().to_owned();

    let cases = [
        (
            "wrong",
            Some(key_file(&app, "wrong", &[K1_OTHER])),
            "key id \"k1\", but the key under that id in the key file is not that key (wrong key)",
        ),
        (
            "unknown",
            Some(key_file(&app, "other", &[K2, K3])),
            "key id \"k1\", which the encryption key file does not hold",
        ),
        ("missing", None, "key id \"k1\", but no CAIRN_ENCRYPTION_KEY_FILE is configured"),
    ];
    for (name, keys, expected) in cases {
        use_keys(&mut app, keys).await;
        let inst = app.restore(name, &id).await;
        assert_eq!(inst["status"], "ERROR", "{name}: {inst}");
        let reason = inst["fail_reason"].as_str().unwrap();
        assert!(reason.contains(expected), "{name}: fail_reason {reason:?}");
        assert!(!reason.contains("1111111111") && !reason.contains("9999999999"), "{name}: a key leaked: {reason}");
        assert!(!restored_path(&inst).exists(), "{name}: a restore that failed left its target");
        let checked = verify(&app, &id).await;
        assert_eq!(checked["status"], "CORRUPTED", "{name}: {checked}");
        assert!(checked["message"].as_str().unwrap().contains(expected), "{name}: {checked}");
    }
    // A key file that cannot be read stops the worker at start, naming it.
    let mut config = app.config.clone();
    config.encryption_key_file = Some(app.config.data_dir.join("no-such-key-file"));
    let err = cairn_worker::run(config, tokio_util::sync::CancellationToken::new()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("no-such-key-file") && msg.contains("cannot read"), "{msg}");

    // With the right key back, the same backup restores.
    use_keys(&mut app, Some(k1)).await;
    let ok = app.restore("right", &id).await;
    assert_eq!(ok["status"], "ACTIVE", "{ok}");
    assert_same_tree(&snapshot(&dir), &restored_path(&ok));
}

#[tokio::test]
async fn a_chain_of_three_spans_two_key_rotations() {
    let mut app = spawn_app_with(0, AppOptions::default()).await;
    let dir = app.volumes().join("g");
    volume(&dir, 4);
    let inst = app.register("g", &dir).await;
    let mut ids = Vec::new();
    let rings: [&[&str]; 3] = [&[K1], &[K2, K1], &[K3, K2, K1]];
    for (i, ring) in rings.iter().enumerate() {
        let keys = key_file(&app, &format!("ring{i}"), ring);
        use_keys(&mut app, Some(keys)).await;
        std::fs::write(dir.join(format!("step{i}.txt")), format!("step {i}")).unwrap();
        let parent = ids.last().map(String::as_str);
        let b = app.backup_completed(&inst, &format!("b{i}"), parent).await;
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    for (id, want) in ids.iter().zip(["k1", "k2", "k3"]) {
        for (name, bytes) in stored_objects(&app, id) {
            assert_eq!(key_id_of(&bytes), want, "{id}/{name}");
        }
    }
    // The newest ring opens all three links.
    let expected = snapshot(&dir);
    let restored = app.restore("r", &ids[2]).await;
    assert_eq!(restored["status"], "ACTIVE", "{restored}");
    assert_same_tree(&expected, &restored_path(&restored));
    // Retiring k1 too early breaks the chain at its root, by name.
    let retired = key_file(&app, "retired", &[K3, K2]);
    use_keys(&mut app, Some(retired)).await;
    let broken = app.restore("r2", &ids[2]).await;
    assert_eq!(broken["status"], "ERROR", "{broken}");
    let reason = broken["fail_reason"].as_str().unwrap();
    assert!(reason.contains("key id \"k1\", which the encryption key file does not hold"), "{reason}");
    assert!(reason.contains(&format!("link 1 (backup {}): manifest", ids[0])), "{reason}");
    assert!(reason.contains("cannot be decrypted"), "{reason}");
}
