//! The private-server fixtures do what fault-injection tests need: a
//! PostgreSQL cluster that restarts and a RabbitMQ node whose application
//! stops and starts, without touching the shared servers.

use std::time::{Duration, Instant};

use cairn_testkit::{AppOptions, PrivatePostgres, PrivateRabbit, spawn_app_with};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

async fn one_i64(db: &DatabaseConnection, sql: &str) -> Result<i64, sea_orm::DbErr> {
    let row = db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await?.expect("a row");
    row.try_get::<i64>("", "n")
}

/// Connects to the broker, bounded in time (a refused connection fails at
/// once; this only guards against a hang).
async fn amqp(url: &str) -> Result<Connection, String> {
    match tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, ConnectionProperties::default())).await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Whether process `pid` exists and is no zombie (this machine's init
/// reaps orphans lazily).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

#[tokio::test]
async fn private_postgres_starts_restarts_and_is_not_the_shared_server() {
    let t = Instant::now();
    let pg = PrivatePostgres::start().await;
    let started = t.elapsed();
    assert_ne!(pg.port(), 5432);
    assert!(pg.url("cairn").starts_with(&format!("postgres://postgres@127.0.0.1:{}/", pg.port())));

    let db_name = format!("fixture_{}", uuid::Uuid::new_v4().simple());
    let db = cairn_shared::db::connect_and_migrate(&pg.url(&db_name)).await.unwrap();
    assert_eq!(one_i64(&db, "SELECT current_setting('port')::int8 AS n").await.unwrap(), i64::from(pg.port()));
    db.execute_unprepared("CREATE TABLE probe (v int8); INSERT INTO probe VALUES (42)").await.unwrap();

    // The shared server knows nothing of it.
    let shared = cairn_shared::db::connect("postgres://postgres@127.0.0.1:5432/postgres").await.unwrap();
    let sql = format!("SELECT count(*) AS n FROM pg_database WHERE datname = '{db_name}'");
    assert_eq!(one_i64(&shared, &sql).await.unwrap(), 0);

    let t = Instant::now();
    pg.stop().await;
    assert!(!pg.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_err(), "the server is down");
    pg.stop().await; // already stopped: a no-op
    pg.start_again().await;
    pg.restart().await;
    let restarted = t.elapsed();

    // Same port, same data; a new connection works, and the old pool
    // recovers once its broken connections have been weeded out.
    let fresh = cairn_shared::db::connect(&pg.url(&db_name)).await.unwrap();
    assert_eq!(one_i64(&fresh, "SELECT v AS n FROM probe").await.unwrap(), 42);
    let deadline = Instant::now() + Duration::from_secs(10);
    while one_i64(&db, "SELECT v AS n FROM probe").await.is_err() {
        assert!(Instant::now() < deadline, "the old pool never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("PostgreSQL: started in {started:.2?}; stop, start, restart in {restarted:.2?}");
    assert!(started < Duration::from_secs(10), "slow start: {started:?}");
}

#[tokio::test]
async fn private_postgres_is_removed_on_drop() {
    let pg = PrivatePostgres::start().await;
    let (dir, port) = (pg.dir().to_path_buf(), pg.port());
    drop(pg);
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still open");
}

#[tokio::test]
async fn private_rabbit_stops_and_starts_its_app() {
    let t = Instant::now();
    let rabbit = PrivateRabbit::start().await;
    let started = t.elapsed();
    assert!(![5672, 25672].contains(&rabbit.port()) && rabbit.dist_port() != 25672);

    let conn = amqp(&rabbit.url()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = "cairn-fixture-probe";
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.into(), durable, FieldTable::default()).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for _ in 0..3 {
        channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), b"hello", persistent.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while rabbit.queue_counts(queue).await != (3, 0) {
        assert!(Instant::now() < deadline, "counts: {:?}", rabbit.queues().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let t = Instant::now();
    rabbit.stop_app().await;
    let stopped = t.elapsed();
    let err = amqp(&rabbit.url()).await.expect_err("the broker is stopped");
    eprintln!("connecting to the stopped broker: {err}");
    // The shared broker is not affected.
    amqp("amqp://guest:guest@127.0.0.1:5672/%2f").await.expect("the shared broker is up");

    let t = Instant::now();
    rabbit.start_app().await;
    let restarted = t.elapsed();
    let conn = amqp(&rabbit.url()).await.unwrap();
    conn.create_channel().await.unwrap();
    // Durable queue, persistent messages: still there.
    assert_eq!(rabbit.queue_counts(queue).await, (3, 0));
    eprintln!("RabbitMQ: started in {started:.2?}; stop_app in {stopped:.2?}; start_app in {restarted:.2?}");

    let (dir, port, pid) = (rabbit.dir().to_path_buf(), rabbit.port(), rabbit.pid());
    assert!(running(pid));
    let t = Instant::now();
    drop(rabbit);
    eprintln!("RabbitMQ: dropped in {:.2?}", t.elapsed());
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(!running(pid), "the node's process {pid} is still running");
    assert!(amqp(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await.is_err());
}

#[tokio::test]
async fn an_app_runs_on_private_servers() {
    let (pg, rabbit) = tokio::join!(PrivatePostgres::start(), PrivateRabbit::start());
    let options = AppOptions::default().postgres(&pg).rabbit(&rabbit).lease(Duration::from_secs(3));
    let app = spawn_app_with(1, options).await;
    assert_eq!(app.config.lease, Duration::from_secs(3));
    assert!(app.config.database_url.starts_with(&pg.base_url()));
    assert_eq!(app.config.amqp_url, rabbit.url());

    let volume = app.volumes().join("db1");
    cairn_testkit::trees::seed(&volume, 7);
    let instance = app.register("db1", &volume).await;
    let backup = app.backup_completed(&instance, "b1", None).await;
    assert_eq!(backup["status"], "COMPLETED");
    let (status, _) = app.get("/backups").await;
    assert_eq!(status, StatusCode::OK);
    // Its queues are on the private node.
    let queues = rabbit.queues().await;
    assert!(queues.iter().any(|(name, ..)| name.starts_with(&app.config.queue_prefix)), "{queues:?}");
    drop(app);
}
