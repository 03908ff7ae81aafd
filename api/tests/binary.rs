//! The real `cairn-api` binary: its `token` commands, its refusal of
//! `CAIRN_AUTH=none` off loopback, and logs that never hold a secret.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cairn_testkit::{AppOptions, TestApp, client_with_token, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;

const API: &str = env!("CARGO_BIN_EXE_cairn-api");

/// Runs `cairn-api args...` against `app`'s database; (exit code, stdout, stderr).
fn run(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(API)
        .args(args)
        .env("CAIRN_DATABASE_URL", &app.config.database_url)
        .env("CAIRN_DATA_DIR", &app.config.data_dir)
        .env("CAIRN_LOG", "debug")
        .output()
        .expect("cairn-api runs");
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_commands_create_list_and_revoke() {
    // No token cache, so the revocation takes effect at once (with the
    // default 5 s cache it would within 5 s).
    let app = spawn_app_with(0, AppOptions::default().token_cache(Duration::ZERO)).await;
    let (code, token, stderr) = run(&app, &["token", "create", "--project", &app.project, "--description", "ci"]);
    assert_eq!(code, 0, "{stderr}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("cairn-") && token.len() > 90, "{token}");
    assert!(!stderr.contains(&token), "the token went to stderr too: {stderr}");
    let client = client_with_token(&token);
    assert_eq!(client.get(app.url("/backups")).send().await.unwrap().status(), StatusCode::OK);

    let (code, list, stderr) = run(&app, &["token", "list", "--project", &app.project]);
    assert_eq!(code, 0, "{stderr}");
    let id = uuid::Uuid::parse_str(&token[6..38]).unwrap().to_string();
    let secret = token.rsplit('-').next().unwrap();
    assert!(list.contains(&id) && list.contains("ci"), "{list}");
    assert!(!list.contains(secret), "token list shows a secret: {list}");

    // The database holds the secret's BLAKE3 hash, not the secret.
    let row = sea_orm::ConnectionTrait::query_one_raw(
        &app.db,
        sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT string_agg(t::text, ',') AS s FROM auth_tokens t WHERE id = $1",
            vec![uuid::Uuid::parse_str(&id).unwrap().into()],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let stored: String = row.try_get("", "s").unwrap();
    assert!(!stored.contains(secret), "the secret is stored: {stored}");
    assert!(stored.contains(blake3::hash(secret.as_bytes()).to_hex().as_str()), "{stored}");

    let (code, _, stderr) = run(&app, &["token", "revoke", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(client.get(app.url("/backups")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (_, list, _) = run(&app, &["token", "list", "--project", &app.project]);
    let line = list.lines().find(|l| l.contains(&id)).unwrap();
    assert!(!line.contains("  -  "), "the revoked token shows no revocation time: {line}");

    // Bad input: an invalid project, an unknown id.
    let (code, _, stderr) = run(&app, &["token", "create", "--project", "a/b"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("project id"), "{stderr}");
    let (code, _, stderr) = run(&app, &["token", "revoke", &uuid::Uuid::new_v4().to_string()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no token has the id"), "{stderr}");
}

#[test]
fn auth_none_is_refused_on_a_non_loopback_address() {
    for listen in ["0.0.0.0:0", "192.0.2.1:8779", "[::]:0"] {
        let out = Command::new(API)
            .env("CAIRN_AUTH", "none")
            .env("CAIRN_LISTEN", listen)
            // Nothing listens here: the refusal must come before any connection.
            .env("CAIRN_DATABASE_URL", "postgres://postgres@127.0.0.1:1/never")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{listen}: started");
        assert!(stderr.contains("CAIRN_AUTH=none is refused") && stderr.contains("loopback"), "{listen}: {stderr}");
    }
    let out = Command::new(API).env("CAIRN_AUTH", "sometimes").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAIRN_AUTH"), "an unknown mode is named");
}

/// A `cairn-api` serving `app`'s database with `env`, its stderr in `log`;
/// returns the process and its address once it listens.
fn serve(app: &TestApp, log: &Path, env: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut cmd = Command::new(API);
    cmd.env("CAIRN_DATA_DIR", &app.config.data_dir)
        // The app's own prefix, so the app's clean-up removes the queues.
        .env("CAIRN_QUEUE_PREFIX", &app.config.queue_prefix)
        .env("CAIRN_LISTEN", "127.0.0.1:0")
        .env("CAIRN_DATABASE_URL", &app.config.database_url)
        .env("CAIRN_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("cairn-api listening")) {
            let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
            return (child, addr);
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn-api did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_on_loopback_serves_without_a_token() {
    let app = spawn_app(0).await;
    let log = app.config.data_dir.join("api-none.log");
    let (child, addr) = serve(&app, &log, &[("CAIRN_AUTH", "none")]);
    let resp = reqwest::get(format!("http://{addr}/v1.0/{}/backups", app.project)).await.unwrap();
    let status = resp.status();
    stop(child);
    assert_eq!(status, StatusCode::OK, "{}", std::fs::read_to_string(&log).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_password_ever_reaches_the_logs() {
    let app = spawn_app(0).await;
    let log = app.config.data_dir.join("api.log");
    // The server accepts any password (trust auth); the process must not
    // print the one it was given.
    let password = "pw-7f3a9c1e5b";
    let url = app.config.database_url.replacen("postgres@", &format!("postgres:{password}@"), 1);
    let (child, addr) = serve(&app, &log, &[("CAIRN_DATABASE_URL", &url), ("CAIRN_LOG", "trace")]);
    let base = format!("http://{addr}/v1.0/{}", app.project);
    let wrong = format!("{}-{}", app.token.rsplit_once('-').unwrap().0, "ab".repeat(32));
    let garbage = "cairn-not-a-token-5e8d2a";
    for token in [app.token.as_str(), wrong.as_str(), garbage] {
        let client = client_with_token(token);
        let _ = client.get(format!("{base}/backups")).send().await.unwrap();
        let _ = client.get(format!("{base}/instances/{}", uuid::Uuid::new_v4())).send().await.unwrap();
        let _ = client
            .post(format!("{base}/backups"))
            .json(&json!({"backup": {"name": "x", "instance": uuid::Uuid::new_v4()}}))
            .send()
            .await
            .unwrap();
    }
    // Some other project's path: 403, also logged.
    let _ = client_with_token(&app.token).get(format!("http://{addr}/v1.0/elsewhere/backups")).send().await.unwrap();
    stop(child);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("/backups"), "the requests were not traced, so this test proves nothing:\n{text}");
    let app_secret = app.token.rsplit('-').next().unwrap();
    for (what, secret) in [
        ("a token", app.token.as_str()),
        ("a token's secret", app_secret),
        ("a wrong token", wrong.as_str()),
        ("garbage", garbage),
        ("the database password", password),
    ] {
        assert!(
            !text.contains(secret),
            "{what} is in the log:\n{}",
            text.lines().filter(|l| l.contains(secret)).collect::<Vec<_>>().join("\n")
        );
    }
}
