//! `GET /backups/{id}` shows `progress` (`done`, `total`, `percent`) while a
//! backup runs (issue 3), and none once it has ended.
//!
//! The backup is slowed by `CAIRN_BACKUP_READ_LIMIT` (8 MiB/s over 40 MiB:
//! about 5 s), so several heartbeats (one a second) fall inside it.

use std::time::{Duration, Instant};

use cairn_testkit::{AppOptions, spawn_app_with};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_increases_while_a_backup_runs() {
    let app = spawn_app_with(1, AppOptions::default().backup_read_limit(8)).await;
    let dir = app.volumes().join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut total = 0u64;
    for i in 0..5 {
        let mut data = vec![0u8; 8 << 20];
        rng.fill(&mut data[..]);
        std::fs::write(dir.join(format!("part-{i}")), &data).unwrap();
        total += data.len() as u64;
    }
    let inst = app.register("slow", &dir).await;
    let id = app.backup(&inst, "slow", None).await["id"].as_str().unwrap().to_owned();

    // (done, percent) of every distinct sample seen while BUILDING.
    let mut seen: Vec<(u64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        let (_, body) = app.get(&format!("/backups/{id}")).await;
        let b = &body["backup"];
        match b["status"].as_str().unwrap() {
            "COMPLETED" | "FAILED" => break b.clone(),
            "BUILDING" if !b["progress"].is_null() => {
                let p = &b["progress"];
                let (done, t, percent) =
                    (p["done"].as_u64().unwrap(), p["total"].as_u64().unwrap(), p["percent"].as_f64().unwrap());
                assert!(done <= t, "done {done} > total {t}: {p}");
                if t > 0 {
                    assert_eq!(t, total, "total is the volume's size from the first walk: {p}");
                    let expected = ((done as f64 / t as f64) * 1000.0).round() / 10.0;
                    assert!((percent - expected).abs() < 0.051, "percent {percent} vs done/total {expected}");
                }
                if seen.last().is_none_or(|&(d, _)| d != done) {
                    if let Some(&(prev, _)) = seen.last() {
                        assert!(done > prev, "progress went backwards: {prev} then {done}");
                    }
                    seen.push((done, percent));
                }
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "backup still running after 60 s: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished["status"], "COMPLETED", "{finished}");
    assert!(finished["progress"].is_null(), "no progress once ended: {finished}");
    let partial: Vec<_> = seen.iter().filter(|&&(d, _)| d > 0 && d < total).collect();
    assert!(partial.len() >= 2, "expected at least two distinct partial progress samples while BUILDING, saw {seen:?}");
}
