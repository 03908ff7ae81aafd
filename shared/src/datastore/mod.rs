//! Datastores: how one kind of instance is backed up and restored.
//!
//! The worker drives jobs and owns their state; a datastore only turns "this
//! source, this parent" into stored objects and "this chain" into a target.
//! `volume` (a directory tree) is served now; live `postgresql` and `mariadb`
//! servers will be further implementations of the same trait.

mod volume;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use uuid::Uuid;

pub use self::volume::VolumeDatastore;
use crate::{lifecycle::CompletedArtifact, storage::ArtifactStore};

/// A completed backup as a link of a chain: enough to find and check it.
#[derive(Debug, Clone)]
pub struct StoredLink {
    /// The backup's id.
    pub backup_id: Uuid,
    /// BLAKE3 of its manifest as recorded when it completed.
    pub checksum: String,
    /// Where its attempt's objects are.
    pub artifact_prefix: String,
}

/// One backup to take.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// The backup being built.
    pub backup_id: Uuid,
    /// The instance it is of.
    pub instance_id: Uuid,
    /// Which attempt this is (objects go under this attempt's prefix).
    pub attempt: i32,
    /// The instance's data: for `volume`, its directory.
    pub source: PathBuf,
    /// For an incremental backup, its parent's chain: root first, the
    /// parent last (empty for a full backup).
    pub parent_chain: Vec<StoredLink>,
}

/// One chain to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The instance being created.
    pub instance_id: Uuid,
    /// Which attempt this is.
    pub attempt: i32,
    /// The chain, root full backup first.
    pub chain: Vec<StoredLink>,
    /// Where the data goes (absent or an empty directory).
    pub target: PathBuf,
}

/// Progress a running job reports; the worker's heartbeat publishes it.
#[derive(Debug, Default)]
pub struct JobProgress {
    done: AtomicU64,
    total: AtomicU64,
}

impl JobProgress {
    /// Records `done` out of `total` (bytes for a backup, steps for a restore).
    pub fn set(&self, done: u64, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
    }

    /// (done, total) as last recorded.
    pub fn get(&self) -> (u64, u64) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }
}

/// A kind of instance cairn can back up and restore.
#[async_trait]
pub trait Datastore: Send + Sync {
    /// The datastore type, as the API names it.
    fn kind(&self) -> &'static str;
    /// The version the API reports.
    fn version(&self) -> &'static str;
    /// Takes a backup (full, or incremental on `parent`), stores its objects
    /// durably and says what was stored.
    async fn backup(&self, req: BackupRequest, progress: Arc<JobProgress>) -> anyhow::Result<CompletedArtifact>;
    /// Restores a chain; returns the number of steps applied.
    async fn restore(&self, req: RestoreRequest, progress: Arc<JobProgress>) -> anyhow::Result<u32>;
    /// Removes every object a backup stored (attempts `1..=attempts`).
    async fn delete(&self, backup_id: Uuid, attempts: i32) -> anyhow::Result<()>;
    /// Re-reads every stored object of a backup and checks it against its
    /// checksum; the error names the first object that does not match.
    async fn verify(&self, link: StoredLink) -> anyhow::Result<()>;
}

/// The datastore types this deployment serves, with their versions.
pub const SERVED: &[(&str, &str)] = &[(VolumeDatastore::KIND, VolumeDatastore::VERSION)];

/// The datastores a worker runs jobs with.
#[derive(Clone)]
pub struct Datastores {
    volume: Arc<VolumeDatastore>,
}

impl Datastores {
    /// Every served datastore over one artifact store, backing up with
    /// `options` (block size, read limit).
    pub fn new(store: ArtifactStore, staging_dir: PathBuf, options: cairn_delta::BackupOptions) -> Self {
        Self { volume: Arc::new(VolumeDatastore::new(store, staging_dir, options)) }
    }

    /// The datastore for `kind`, if served.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Datastore>> {
        match kind {
            VolumeDatastore::KIND => Some(self.volume.clone()),
            _ => None,
        }
    }
}
