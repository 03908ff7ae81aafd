//! One typed configuration for every cairn process.
//!
//! The API, the workers and the tests all read the same environment
//! (DESIGN.md §3), so the parsing lives here once. Tests build a `Config`
//! directly instead of mutating the process environment, which is what lets
//! them run in parallel in one process.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context, bail};

/// Everything a cairn process needs to know about its deployment.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL URL (`CAIRN_DATABASE_URL`). The database is created if it is
    /// missing and migrated at start-up.
    pub database_url: String,
    /// RabbitMQ URL (`CAIRN_AMQP_URL`).
    pub amqp_url: String,
    /// Address the HTTP API listens on (`CAIRN_LISTEN`).
    pub listen: SocketAddr,
    /// Working directory for staging, restores and the default artifact store
    /// (`CAIRN_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Where artifacts live (`CAIRN_STORAGE_URL`): `file:///abs/path` by default.
    pub storage_url: String,
    /// Directories that volume instances may live in (`CAIRN_VOLUME_ROOTS`,
    /// colon-separated). Nothing outside them is read or written.
    pub volume_roots: Vec<PathBuf>,
    /// Prefix of every exchange and queue (`CAIRN_QUEUE_PREFIX`), so that
    /// several deployments and parallel tests share one broker.
    pub queue_prefix: String,
    /// Jobs one worker runs at once (`CAIRN_WORKER_CONCURRENCY`); also the
    /// AMQP prefetch.
    pub worker_concurrency: usize,
    /// How long a worker's claim on a job lives without a heartbeat
    /// (`CAIRN_LEASE_SECONDS`, default 30). A job whose worker died is taken
    /// over once its lease has expired.
    pub lease: Duration,
    /// How many times a job is attempted before it fails for good
    /// (`CAIRN_MAX_ATTEMPTS`, default 3). Failures that retrying cannot fix
    /// (a missing volume, a corrupted link) fail at once.
    pub max_attempts: u32,
    /// How long a stopping worker lets running jobs finish before it
    /// releases them to other workers (`CAIRN_SHUTDOWN_GRACE_SECONDS`, 30).
    pub shutdown_grace: Duration,
    /// Largest rate a backup reads its source at, in bytes per second
    /// (`CAIRN_BACKUP_READ_LIMIT`, in MiB/s; unset = unlimited), so that a
    /// backup does not starve the database it copies.
    pub backup_read_limit: Option<u64>,
    /// Block size of new full backups, in bytes (`CAIRN_BLOCK_SIZE`, in KiB:
    /// a power of two from 4 to 1024; default 4). The unit of change of
    /// an incremental: smaller blocks store less of a scattered write and
    /// make larger manifests. Incrementals keep their chain's block size.
    pub block_size: u32,
    /// Key file for encryption at rest (`CAIRN_ENCRYPTION_KEY_FILE`; unset =
    /// objects are stored in plaintext). One `<key-id> <key>` per line, the
    /// key as 64 hex digits or base64 of 32 bytes; the first line's key
    /// seals new objects, every listed key opens the objects sealed with it
    /// (rotation: put the new key first, keep the old ones). The workers
    /// read it at start; key material never appears in logs or errors.
    pub encryption_key_file: Option<PathBuf>,
    /// Name of this process in leases and logs (`CAIRN_WORKER_ID`, default
    /// `<hostname>-<pid>`).
    pub worker_id: String,
    /// Whether the API asks for a token (`CAIRN_AUTH`: `token`, the
    /// default, or `none` for local development, which the API refuses to
    /// serve on anything but a loopback address).
    pub auth: AuthMode,
    /// Most backups a project may hold (`CAIRN_QUOTA_BACKUPS`, default 50 as
    /// in Trove; `unlimited` for no limit). A backup counts until its
    /// delete is accepted.
    pub quota_backups: Option<u64>,
    /// Most bytes a project's backups may store (`CAIRN_QUOTA_BYTES`: a
    /// number of bytes, or with a K/M/G/T suffix in powers of 1024; default
    /// unlimited). A new backup is refused once the stored bytes reach it.
    pub quota_bytes: Option<u64>,
    /// How long the API trusts a token it has verified without asking the
    /// database again (`CAIRN_TOKEN_CACHE_SECONDS`, default 5; 0 turns the
    /// cache off). A revoked token therefore stops working within this time.
    pub token_cache: Duration,
}

/// How the API authenticates requests (`CAIRN_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Every request carries `X-Auth-Token`, checked against `auth_tokens`.
    #[default]
    Token,
    /// No authentication: anyone who reaches the port is an admin. Only for
    /// a loopback listen address.
    None,
}

impl FromStr for AuthMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "token" => Ok(Self::Token),
            "none" => Ok(Self::None),
            other => bail!("CAIRN_AUTH={other:?} must be `token` or `none`"),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Token => "token",
            Self::None => "none",
        })
    }
}

impl Config {
    /// Reads the environment, applying DESIGN.md §3's defaults.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let data_dir = PathBuf::from(var("CAIRN_DATA_DIR").unwrap_or_else(|| "./cairn-data".into()));
        let data_dir = absolute(&data_dir)?;
        let listen = var("CAIRN_LISTEN").unwrap_or_else(|| "127.0.0.1:8779".into());
        let listen =
            listen.parse().with_context(|| format!("CAIRN_LISTEN={listen:?} is not an address like 127.0.0.1:8779"))?;
        let volume_roots = match var("CAIRN_VOLUME_ROOTS") {
            Some(roots) => roots.split(':').filter(|r| !r.is_empty()).map(PathBuf::from).collect(),
            None => vec![data_dir.join("volumes")],
        };
        let worker_concurrency = match var("CAIRN_WORKER_CONCURRENCY") {
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("CAIRN_WORKER_CONCURRENCY={n:?} is not a positive number"))?,
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        let lease_seconds: u64 = match var("CAIRN_LEASE_SECONDS") {
            Some(s) => s
                .parse()
                .ok()
                .filter(|s| *s >= 2)
                .with_context(|| format!("CAIRN_LEASE_SECONDS={s:?} must be a number of seconds >= 2"))?,
            None => 30,
        };
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match var(name) {
                Some(v) => v.parse().with_context(|| format!("{name}={v:?} is not a whole number")),
                None => Ok(default),
            }
        };
        let max_attempts = u32::try_from(number("CAIRN_MAX_ATTEMPTS", 3)?.max(1)).unwrap_or(u32::MAX);
        let shutdown_grace = Duration::from_secs(number("CAIRN_SHUTDOWN_GRACE_SECONDS", 30)?);
        let backup_read_limit = match var("CAIRN_BACKUP_READ_LIMIT") {
            Some(v) => Some(
                v.parse::<u64>()
                    .ok()
                    .filter(|mib| *mib > 0)
                    .with_context(|| format!("CAIRN_BACKUP_READ_LIMIT={v:?} is not a positive number of MiB/s"))?
                    << 20,
            ),
            None => None,
        };
        let block_size = match var("CAIRN_BLOCK_SIZE") {
            Some(v) => v
                .parse::<u32>()
                .ok()
                .and_then(|kib| kib.checked_mul(1024))
                .with_context(|| format!("CAIRN_BLOCK_SIZE={v:?} is not a number of KiB"))?,
            None => cairn_delta::BackupOptions::default().block_size,
        };
        let auth = var("CAIRN_AUTH").map_or(Ok(AuthMode::Token), |a| a.parse())?;
        let quota_backups = match var("CAIRN_QUOTA_BACKUPS").as_deref() {
            None => Some(50),
            Some("unlimited") => None,
            Some(n) => Some(
                n.parse()
                    .with_context(|| format!("CAIRN_QUOTA_BACKUPS={n:?} is not a whole number (or `unlimited`)"))?,
            ),
        };
        let quota_bytes = match var("CAIRN_QUOTA_BYTES").as_deref() {
            None | Some("unlimited") => None,
            Some(v) => Some(parse_bytes(v).with_context(|| {
                format!("CAIRN_QUOTA_BYTES={v:?} is not a number of bytes like 1048576 or 500G (or `unlimited`)")
            })?),
        };
        let token_cache = Duration::from_secs(number("CAIRN_TOKEN_CACHE_SECONDS", 5)?);
        let config = Self {
            token_cache,
            auth,
            quota_backups,
            quota_bytes,
            database_url: var("CAIRN_DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/cairn".into()),
            amqp_url: var("CAIRN_AMQP_URL").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            listen,
            storage_url: var("CAIRN_STORAGE_URL")
                .unwrap_or_else(|| format!("file://{}", data_dir.join("artifacts").display())),
            volume_roots,
            queue_prefix: var("CAIRN_QUEUE_PREFIX").unwrap_or_else(|| "cairn".into()),
            worker_concurrency,
            lease: Duration::from_secs(lease_seconds),
            max_attempts,
            shutdown_grace,
            backup_read_limit,
            block_size,
            encryption_key_file: var("CAIRN_ENCRYPTION_KEY_FILE").map(PathBuf::from),
            worker_id: var("CAIRN_WORKER_ID").unwrap_or_else(default_worker_id),
            data_dir,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what `from_env` cannot express in types.
    pub fn validate(&self) -> anyhow::Result<()> {
        let (min, max) = (cairn_delta::MIN_BLOCK_SIZE, cairn_delta::MAX_BLOCK_SIZE);
        if !self.block_size.is_power_of_two() || !(min..=max).contains(&self.block_size) {
            bail!(
                "CAIRN_BLOCK_SIZE={} KiB must be a power of two from {} to {} KiB",
                self.block_size / 1024,
                min / 1024,
                max / 1024
            );
        }
        if self.queue_prefix.is_empty()
            || !self.queue_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "CAIRN_QUEUE_PREFIX={:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.queue_prefix
            );
        }
        if self.volume_roots.is_empty() {
            bail!("CAIRN_VOLUME_ROOTS names no directory");
        }
        Ok(())
    }

    /// Refuses `CAIRN_AUTH=none` on an address other hosts can reach: the
    /// API would hand every project to anyone on the network. Called by the
    /// API before it binds (workers do not listen, so they do not care).
    pub fn check_auth_exposure(&self) -> anyhow::Result<()> {
        if self.auth == AuthMode::None && !self.listen.ip().is_loopback() {
            bail!(
                "CAIRN_AUTH=none is refused with CAIRN_LISTEN={}: without authentication the API may only listen \
                 on a loopback address (127.0.0.1 or ::1); use CAIRN_AUTH=token and `cairn-api token create`",
                self.listen
            );
        }
        Ok(())
    }

    /// Where a worker stages packs before upload and restores before the
    /// final rename.
    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir.join("staging")
    }

    /// Where a restore goes when the request names no `volume.path`.
    pub fn default_volume_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }
}

/// `1048576`, `512K`, `100M`, `500G`, `2T` (powers of 1024).
fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, shift) = match v.char_indices().last()? {
        (i, 'K' | 'k') => (&v[..i], 10),
        (i, 'M' | 'm') => (&v[..i], 20),
        (i, 'G' | 'g') => (&v[..i], 30),
        (i, 'T' | 't') => (&v[..i], 40),
        _ => (v, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    format!("{}-{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("512K"), Some(512 << 10));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("1T"), Some(1 << 40));
        assert_eq!(parse_bytes("G"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes("99999999999T"), None);
    }

    #[test]
    fn auth_modes_parse() {
        assert_eq!("token".parse::<AuthMode>().unwrap(), AuthMode::Token);
        assert_eq!("none".parse::<AuthMode>().unwrap(), AuthMode::None);
        assert!("off".parse::<AuthMode>().is_err());
    }
}
