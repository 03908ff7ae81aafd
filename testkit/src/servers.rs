//! Private, throwaway PostgreSQL and RabbitMQ servers for fault-injection
//! tests.
//!
//! The other tests share the machine's servers (PostgreSQL on 5432, RabbitMQ
//! on 5672), so a test that stops or restarts a server needs one of its own:
//! [`PrivatePostgres`] is a fresh cluster and [`PrivateRabbit`] a fresh
//! RabbitMQ node, each in a temporary directory, listening on 127.0.0.1 on a
//! port of its own. Pass them to [`crate::spawn_app_with`] through
//! [`crate::AppOptions`].
//!
//! Both are stopped and their directories removed on `Drop`, also when the
//! test panics. If the test process dies without unwinding (SIGKILL, abort,
//! a harness timeout), a small watchdog shell started with each server
//! notices within a second and stops the server in its place.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::{Rng, distr::Alphanumeric};
use uuid::Uuid;

/// PostgreSQL 15's server binaries (`/usr/local/bin/{initdb,pg_ctl}` are
/// symlinks to these).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The real RabbitMQ scripts. `/usr/sbin/rabbitmq-server` is Debian's wrapper,
/// which `su`s to `rabbitmq` and would reset `HOME` (and so the cookie).
const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A free TCP port on 127.0.0.1, never handed out twice by this process.
///
/// Ports come from 20000–31999: below the kernel's ephemeral range (32768+),
/// so outgoing connections and `bind(port 0)` elsewhere do not take them
/// between this check and the server's own bind, and away from the shared
/// servers' ports.
fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    const AVOID: [u16; 5] = [4369, 5432, 5672, 15672, 25672];
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if AVOID.contains(&port) {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn accepting(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500)).is_ok()
}

/// Polls `ready` every 50 ms for up to `limit`; whether it became true.
async fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `user`'s `program args` (through `runuser`) with `env`, in `dir`;
/// its stdout, or stdout and stderr as the error.
async fn run_as(
    user: &str,
    env: &[(String, String)],
    dir: &Path,
    program: &str,
    args: &[&str],
    limit: Duration,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("runuser");
    cmd.args(["-u", user, "--", "env"])
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let what = format!("{program} {}", args.join(" "));
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Err(_) => return Err(format!("{what}: still running after {limit:?}")),
        Ok(Err(e)) => return Err(format!("{what}: cannot run: {e}")),
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{what}: {}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

/// `chown -R user: path`.
fn chown(path: &Path, user: &str) {
    let status = std::process::Command::new("chown")
        .args(["-R", &format!("{user}:"), &path.display().to_string()])
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown -R {user}: {} failed", path.display());
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The tail of a log file, for panic messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Shuts a server down without the test process: when this process has gone
/// (however it died), runs `dir/cleanup.sh` and removes `dir`. In a process
/// group of its own, so a Ctrl-C to the test's group does not stop it first.
fn spawn_watchdog(dir: &Path) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    let d = sh_quote(&dir.display().to_string());
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; sh {d}/cleanup.sh >/dev/null 2>&1; rm -rf {d}",
        pid = std::process::id()
    );
    std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// Drop's half: stop the watchdog (we clean up ourselves), then run
/// `cleanup.sh`. The caller's `TempDir` removes the directory afterwards.
fn shut_down(watchdog: Option<&mut Child>, dir: &Path) {
    if let Some(child) = watchdog {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::process::Command::new("sh")
        .arg(dir.join("cleanup.sh"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A PostgreSQL 15 cluster of one's own: fresh, in a temporary directory,
/// on 127.0.0.1 and a free port, trust authentication, superuser
/// `postgres`. Stopped and removed on drop.
///
/// `fsync` is off (the operating system does not crash in a test), but
/// `synchronous_commit` stays on: a transaction whose COMMIT returned
/// survives [`stop`](Self::stop), just as on a real server.
///
/// ```no_run
/// # async fn t() {
/// let pg = cairn_testkit::PrivatePostgres::start().await;
/// let db = cairn_shared::db::connect_and_migrate(&pg.url("cairn")).await.unwrap();
/// pg.restart().await; // `db`'s pool reconnects on its next acquire
/// # }
/// ```
pub struct PrivatePostgres {
    port: u16,
    watchdog: Option<Child>,
    /// Owned by `postgres`: the cluster in `data/`, the socket, `postgres.log`.
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates and starts the cluster (about 1 s). Panics with the logs
    /// if it cannot.
    pub async fn start() -> Self {
        let started = Instant::now();
        let dir = tempfile::Builder::new().prefix("cairn-pg-").tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        chown(&path, "postgres");
        std::fs::write(
            path.join("cleanup.sh"),
            format!(
                "runuser -u postgres -- {PG_BIN}/pg_ctl -D {} -m immediate -w -t 20 stop\n",
                sh_quote(&path.join("data").display().to_string())
            ),
        )
        .unwrap();
        let data = path.join("data").display().to_string();
        let initdb = format!("{PG_BIN}/initdb");
        let args = ["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"];
        if let Err(e) = run_as("postgres", &[], &path, &initdb, &args, Duration::from_secs(60)).await {
            panic!("initdb failed: {e}");
        }
        // Only now is there something to clean up.
        let watchdog = spawn_watchdog(&path);
        let conf_path = path.join("data/postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap();
        write!(
            conf,
            "\n# cairn-testkit\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 16MB\n\
             max_connections = 200\n",
            path.display()
        )
        .unwrap();
        let mut pg = Self { port: 0, watchdog, dir };
        let mut errors = String::new();
        for _ in 0..3 {
            pg.port = free_port();
            // Later lines win, so a retry on another port just appends.
            writeln!(conf, "port = {}", pg.port).unwrap();
            std::fs::write(&conf_path, &conf).unwrap();
            match pg.pg_ctl(&["start", "-w", "-t", "30", "-l", &path.join("postgres.log").display().to_string()]).await
            {
                Ok(()) => {
                    eprintln!(
                        "private PostgreSQL on 127.0.0.1:{} ({}) up in {:.2?}",
                        pg.port,
                        path.display(),
                        started.elapsed()
                    );
                    return pg;
                }
                // Most likely the port was taken meanwhile: try another.
                Err(e) => writeln!(errors, "on port {}: {e}", pg.port).unwrap(),
            }
        }
        panic!("private PostgreSQL does not start:\n{errors}\n{}", tail(&path.join("postgres.log")));
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.path().join("data").display().to_string();
        let mut all = vec!["-D", &data];
        all.extend_from_slice(args);
        run_as("postgres", &[], self.dir.path(), &format!("{PG_BIN}/pg_ctl"), &all, Duration::from_secs(60))
            .await
            .map(drop)
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.base_url())
    }

    /// `postgres://postgres@127.0.0.1:PORT`, what [`crate::AppOptions`] wants.
    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory (the cluster is in `data/`, its log is
    /// `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the postmaster is running (its pid file exists).
    pub fn is_running(&self) -> bool {
        self.dir.path().join("data/postmaster.pid").exists()
    }

    /// Stops the server at once, like a crash: `pg_ctl stop -m immediate`,
    /// which kills every backend and waits for the postmaster to exit.
    /// Connections break; the next start runs crash recovery (quick).
    /// Does nothing if it is already stopped.
    pub async fn stop(&self) {
        if !self.is_running() {
            return;
        }
        if let Err(e) = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]).await {
            panic!("private PostgreSQL does not stop: {e}\n{}", tail(&self.dir.path().join("postgres.log")));
        }
    }

    /// Starts the stopped server again: same port, same data. Returns once it
    /// accepts connections. Panics if the port has been taken meanwhile.
    pub async fn start_again(&self) {
        let log = self.dir.path().join("postgres.log").display().to_string();
        if let Err(e) = self.pg_ctl(&["start", "-w", "-t", "30", "-l", &log]).await {
            panic!("private PostgreSQL does not start again: {e}\n{}", tail(Path::new(&log)));
        }
    }

    /// [`stop`](Self::stop) (immediate) then [`start_again`](Self::start_again).
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        shut_down(self.watchdog.as_mut(), self.dir.path());
    }
}

/// A RabbitMQ node of one's own (`cairn-test-<random>@localhost`): fresh,
/// in a temporary directory, AMQP and Erlang distribution on 127.0.0.1 and
/// free ports, no plugins, its own Erlang cookie. Runs as the `rabbitmq` OS
/// user, like the system node. Stopped and removed on drop.
///
/// Starting takes several seconds (the broker boots in ~5 s on an idle
/// machine); share one per test.
pub struct PrivateRabbit {
    node: String,
    port: u16,
    dist_port: u16,
    /// The node's OS process (`beam.smp`).
    pid: u32,
    env: Vec<(String, String)>,
    watchdog: Option<Child>,
    /// Owned by `rabbitmq`: mnesia/, log/, the config and the cookie.
    dir: tempfile::TempDir,
}

impl PrivateRabbit {
    /// Starts the node and waits until it accepts AMQP connections. Panics
    /// with its logs if it cannot.
    pub async fn start() -> Self {
        let started = Instant::now();
        let mut errors = String::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(rabbit) => {
                    eprintln!(
                        "private RabbitMQ {} on 127.0.0.1:{} ({}) up in {:.2?}",
                        rabbit.node,
                        rabbit.port,
                        rabbit.dir.path().display(),
                        started.elapsed()
                    );
                    return rabbit;
                }
                // Most likely a port was taken meanwhile: try others.
                Err(e) => writeln!(errors, "{e}\n").unwrap(),
            }
        }
        panic!("private RabbitMQ does not start:\n{errors}");
    }

    async fn try_start() -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("cairn-rmq-").tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let node = format!("cairn-test-{}@localhost", &Uuid::new_v4().simple().to_string()[..12]);
        let (port, dist_port) = (free_port(), free_port());
        let p = |name: &str| path.join(name).display().to_string();
        let env: Vec<(String, String)> = [
            ("HOME", p("")),
            ("RABBITMQ_NODENAME", node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", p("mnesia")),
            ("RABBITMQ_LOG_BASE", p("log")),
            ("RABBITMQ_PID_FILE", p("rabbit.pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", p("advanced.config")),
            // Instead of /etc/rabbitmq/rabbitmq-env.conf (the system node's
            // NODENAME); the two settings of it we want follow.
            ("RABBITMQ_CONF_ENV_FILE", p("rabbitmq-env.conf")),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // No plugins: the management plugin would bind 15672, like the
        // system node's.
        std::fs::write(path.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            path.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{port}\nloopback_users.guest = true\n\
                 log.console = false\nlog.file.level = info\n"
            ),
        )
        .unwrap();
        std::fs::write(path.join("rabbitmq-env.conf"), "# cairn-testkit: see PrivateRabbit\n").unwrap();
        let cookie: String = rand::rng().sample_iter(Alphanumeric).take(32).map(char::from).collect();
        std::fs::write(path.join(".erlang.cookie"), cookie.to_uppercase()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path.join(".erlang.cookie"), std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        let mut cleanup = String::new();
        for (k, v) in &env {
            writeln!(cleanup, "export {k}={}", sh_quote(v)).unwrap();
        }
        write!(
            cleanup,
            "cd \"$HOME\"\n\
             PID=$(cat beam.pid 2>/dev/null)\n\
             alive() {{ [ -n \"$PID\" ] && grep -qa RABBITMQ_NODENAME={node} /proc/$PID/environ 2>/dev/null; }}\n\
             timeout 20 runuser -u rabbitmq -- env HOME=\"$HOME\" {RABBIT_BIN}/rabbitmqctl -n {node} stop\n\
             i=0; while alive && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
             alive && kill -9 $PID\n"
        )
        .unwrap();
        std::fs::write(path.join("cleanup.sh"), cleanup).unwrap();
        chown(&path, "rabbitmq");

        let watchdog = spawn_watchdog(&path);
        let mut rabbit = Self { node, port, dist_port, pid: 0, env, watchdog, dir };
        // `-detached` forks the node and returns at once; the daemon keeps
        // whatever stdout it is given, so give it a file, not a pipe.
        let log = std::fs::File::create(path.join("startup.log")).unwrap();
        let status = std::process::Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "env"])
            .args(rabbit.env.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(format!("{RABBIT_BIN}/rabbitmq-server"))
            .arg("-detached")
            .current_dir(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .map_err(|e| format!("cannot run rabbitmq-server: {e}"))?;
        let logs = |rabbit: &Self| {
            format!(
                "{}\n{}",
                tail(&rabbit.dir.path().join("startup.log")),
                tail(&rabbit.dir.path().join(format!("log/{}.log", rabbit.node)))
            )
        };
        if !status.success() {
            return Err(format!("rabbitmq-server -detached: {status}\n{}", logs(&rabbit)));
        }
        // Cheap polling first (each rabbitmqctl costs a second of CPU): the
        // listener opens near the end of the boot; a crash leaves a dump.
        let crash = path.join("erl_crash.dump");
        let up = wait_until(Duration::from_secs(90), || accepting(port) || crash.exists()).await;
        if !up || crash.exists() {
            return Err(format!("node {} did not come up on port {port}:\n{}", rabbit.node, logs(&rabbit)));
        }
        rabbit.ctl(&["await_startup", "--timeout", "60"]).await.map_err(|e| format!("{e}\n{}", logs(&rabbit)))?;
        let pid_file = std::fs::read_to_string(path.join("rabbit.pid")).ok().and_then(|pid| pid.trim().parse().ok());
        rabbit.pid = match pid_file {
            Some(pid) => pid,
            None => rabbit
                .ctl(&["eval", "list_to_integer(os:getpid())."])
                .await
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| format!("cannot learn the pid of node {}", rabbit.node))?,
        };
        std::fs::write(path.join("beam.pid"), rabbit.pid.to_string()).unwrap();
        Ok(rabbit)
    }

    /// `rabbitmqctl -n <node> args`; its stdout.
    async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", &self.node];
        all.extend_from_slice(args);
        let ctl = format!("{RABBIT_BIN}/rabbitmqctl");
        run_as("rabbitmq", &self.env, self.dir.path(), &ctl, &all, Duration::from_secs(90)).await
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's OS process (`beam.smp`, owned by `rabbitmq`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The node's Erlang distribution port.
    pub fn dist_port(&self) -> u16 {
        self.dist_port
    }

    /// `cairn-test-<random>@localhost`, for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The temporary directory (logs in `log/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `rabbitmqctl -n <node> args` with this node's environment (cookie
    /// included); its stdout. Panics if it fails.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> String {
        self.ctl(args).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stops the RabbitMQ application (the Erlang node stays up): every
    /// connection is closed and the AMQP port refuses new ones. Returns
    /// once the port is closed.
    pub async fn stop_app(&self) {
        self.rabbitmqctl(&["stop_app"]).await;
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(30), || !accepting(port)).await,
            "port {port} still open after stop_app"
        );
    }

    /// Starts the application again; returns once it accepts connections.
    /// Only durable queues (and their persistent messages) survive a
    /// stop_app/start_app.
    pub async fn start_app(&self) {
        self.rabbitmqctl(&["start_app"]).await;
        self.rabbitmqctl(&["await_startup", "--timeout", "60"]).await;
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(30), || accepting(port)).await,
            "port {port} still closed after start_app"
        );
    }

    /// Every queue of the default vhost: (name, messages ready,
    /// messages unacknowledged), by name.
    pub async fn queues(&self) -> Vec<(String, u64, u64)> {
        let out = self
            .rabbitmqctl(&[
                "list_queues",
                "-q",
                "--formatter",
                "json",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ])
            .await;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("list_queues printed {out:?}: {e}"));
        let mut queues: Vec<(String, u64, u64)> = rows
            .iter()
            .map(|r| {
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                (r["name"].as_str().unwrap_or_default().to_owned(), n("messages_ready"), n("messages_unacknowledged"))
            })
            .collect();
        queues.sort();
        queues
    }

    /// (messages ready, messages unacknowledged) of `queue`, which must
    /// exist. The broker updates these counters a few times a second, not
    /// instantly: poll for an expected value.
    pub async fn queue_counts(&self, queue: &str) -> (u64, u64) {
        let queues = self.queues().await;
        match queues.iter().find(|(name, ..)| name == queue) {
            Some((_, ready, unacked)) => (*ready, *unacked),
            None => panic!("no queue {queue:?} on {}; there are {:?}", self.node, queues),
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        shut_down(self.watchdog.as_mut(), self.dir.path());
    }
}
