//! The `volume` datastore: a directory tree, backed up with cairn-delta.
//!
//! The delta work (walking, hashing, compressing, applying) is synchronous
//! and CPU- and disk-bound, so it runs on blocking threads; this module is the
//! glue to the async world: it stages packs on local disk, stores them with
//! the manifest ([`ArtifactStore::put_attempt`]: manifest last, so a
//! manifest never names a pack that is not stored), and serves a restore's
//! range reads from the object store.

use std::{
    collections::HashMap,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context;
use async_trait::async_trait;
use cairn_delta::{BackupOptions, ChainLink, LinkIds, PackSource};
use uuid::Uuid;

use super::{BackupRequest, Datastore, JobProgress, RestoreRequest, StoredLink};
use crate::{failure::permanent, lifecycle::CompletedArtifact, storage::ArtifactStore};

/// Backs up and restores directory trees.
pub struct VolumeDatastore {
    store: ArtifactStore,
    staging: PathBuf,
    options: BackupOptions,
}

impl VolumeDatastore {
    /// The type name in the API.
    pub const KIND: &'static str = "volume";
    /// The datastore version reported by the API (what instances are
    /// created with). Manifests carry their own format version, and every
    /// format since 1 is read, so it stays 1.
    pub const VERSION: &'static str = "1";

    /// A datastore storing into `store`, staging under `staging`, backing
    /// up with `options`.
    pub fn new(store: ArtifactStore, staging: PathBuf, options: BackupOptions) -> Self {
        Self { store, staging, options }
    }

    /// Fetches a link's manifest and checks it against the recorded checksum.
    async fn load_link(&self, position: usize, link: &StoredLink) -> anyhow::Result<ChainLink> {
        let key = format!("{}/manifest", link.artifact_prefix);
        let bytes = self.store.get(&key).await.map_err(|e| {
            let what = if e.is::<crate::seal::SealError>() { "cannot be decrypted" } else { "is missing" };
            permanent(e.context(format!("link {position} (backup {}): manifest {key} {what}", link.backup_id)))
        })?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != link.checksum {
            return Err(permanent(anyhow::anyhow!(
                "link {position} (backup {}): manifest {key} is corrupted: checksum {actual}, recorded {}",
                link.backup_id,
                link.checksum
            )));
        }
        let manifest = cairn_delta::decode_manifest(&bytes)
            .with_context(|| format!("link {position} (backup {}): manifest {key} cannot be read", link.backup_id))?;
        Ok(ChainLink { manifest, checksum: link.checksum.clone() })
    }

    /// Fetches a chain's manifests (root first), as decoded: each holds
    /// only the hashes of the blocks its backup stored.
    async fn fetch_chain(&self, chain: &[StoredLink]) -> anyhow::Result<Vec<ChainLink>> {
        let mut links = Vec::with_capacity(chain.len());
        for (i, link) in chain.iter().enumerate() {
            links.push(self.load_link(i + 1, link).await?);
        }
        Ok(links)
    }

    /// A restore's chain, checked, every link's block hashes completed.
    async fn load_chain(&self, chain: &[StoredLink]) -> anyhow::Result<Vec<ChainLink>> {
        let mut links = self.fetch_chain(chain).await?;
        tokio::task::spawn_blocking(move || cairn_delta::resolve_chain(&mut links).map(|()| links))
            .await?
            .map_err(permanent)
    }

    /// An incremental's parent, completed from its chain (checked), with
    /// no more than two complete manifests in memory at a time.
    async fn load_parent(&self, chain: &[StoredLink]) -> anyhow::Result<ChainLink> {
        let links = self.fetch_chain(chain).await?;
        tokio::task::spawn_blocking(move || cairn_delta::resolve_last(links)).await?.map_err(permanent)
    }
}

#[async_trait]
impl Datastore for VolumeDatastore {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn version(&self) -> &'static str {
        Self::VERSION
    }

    async fn backup(&self, req: BackupRequest, progress: Arc<JobProgress>) -> anyhow::Result<CompletedArtifact> {
        let started = Instant::now();
        let parent: Option<ChainLink> = if req.parent_chain.is_empty() {
            None
        } else {
            Some(self.load_parent(&req.parent_chain).await.context("cannot read the parent backup")?)
        };
        let tree_started = Instant::now();
        // Every claim numbers a new attempt, so only earlier attempts can
        // have left a staging directory. This attempt's is created by
        // cairn-delta with its first pack: a backup that stores no pack
        // makes none.
        let staging = self.staging.join(format!("backup-{}-{}", req.backup_id, req.attempt));
        for earlier in 1..req.attempt {
            let _ = tokio::fs::remove_dir_all(self.staging.join(format!("backup-{}-{earlier}", req.backup_id))).await;
        }
        let source = req.source.clone();
        let ids = LinkIds { backup_id: req.backup_id, instance_id: req.instance_id };
        let staging_dir = staging.clone();
        let options = self.options.clone();
        let output = tokio::task::spawn_blocking(move || {
            let parent = parent.as_ref().map(|p| (&p.manifest, p.checksum.as_str()));
            cairn_delta::backup_tree(&source, parent, ids, &options, &staging_dir, &mut |p| {
                progress.set(p.done_bytes, p.total_bytes)
            })
        })
        .await?
        .with_context(|| format!("cannot back up {}", req.source.display()))?;
        let backed_up = Instant::now();

        let prefix = ArtifactStore::attempt_prefix(req.backup_id, req.attempt);
        let result = self.store.put_attempt(&prefix, &output.packs, output.manifest_bytes.clone()).await.map(|()| {
            CompletedArtifact {
                checksum: output.checksum.clone(),
                bytes: output.stored_bytes,
                location_ref: self.store.url_of(&format!("{prefix}/manifest")),
                artifact_prefix: prefix.clone(),
                pack_objects: output.packs.len(),
            }
        });
        if !output.packs.is_empty() {
            let _ = tokio::fs::remove_dir_all(&staging).await;
        }
        let st = &output.stats;
        tracing::info!(
            tree_ms = backed_up.duration_since(tree_started).as_millis() as u64,
            parent_ms = tree_started.duration_since(started).as_millis() as u64,
            store_ms = backed_up.elapsed().as_millis() as u64,
            files_read = st.files_read,
            files_referenced = st.files_referenced,
            bytes_read = st.bytes_read,
            blocks_stored = st.blocks_stored,
            blocks_unchanged = st.blocks_unchanged,
            stored_bytes = output.stored_bytes,
            "backup data written"
        );
        result
    }

    async fn restore(&self, req: RestoreRequest, progress: Arc<JobProgress>) -> anyhow::Result<u32> {
        let started = Instant::now();
        let links = self.load_chain(&req.chain).await?;
        let steps = links.len() as u32;
        // Restore beside the target, then rename: a crash never leaves a
        // half-written target, and a retry starts from a clean directory.
        let parent = req.target.parent().context("restore target has no parent directory")?.to_path_buf();
        tokio::fs::create_dir_all(&parent).await.with_context(|| format!("cannot create {}", parent.display()))?;
        let name = req.target.file_name().context("restore target has no name")?.to_string_lossy().into_owned();
        let work = parent.join(format!(".{name}.cairn-restore-{}", req.attempt));
        for earlier in 1..=req.attempt {
            let _ = tokio::fs::remove_dir_all(parent.join(format!(".{name}.cairn-restore-{earlier}"))).await;
        }
        if req.attempt > 1 && tokio::fs::symlink_metadata(&req.target).await.is_ok() {
            // An earlier attempt died after its rename but before recording
            // ACTIVE. The path was empty when the instance was created and
            // is reserved for it, so what is there is that attempt's work.
            tokio::fs::remove_dir_all(&req.target)
                .await
                .with_context(|| format!("cannot clear {} left by an earlier attempt", req.target.display()))?;
        }
        tokio::fs::create_dir(&work).await.with_context(|| format!("cannot create {}", work.display()))?;

        let packs = StorePacks::new(
            self.store.clone(),
            req.chain.iter().map(|l| (l.backup_id, l.artifact_prefix.clone())).collect(),
        );
        let work_dir = work.clone();
        let manifests_loaded = Instant::now();
        let applied = tokio::task::spawn_blocking(move || {
            cairn_delta::restore_chain(&links, &packs, &work_dir, &mut |step, steps| {
                progress.set(step as u64, steps as u64)
            })
        })
        .await?;
        let stats = match applied {
            Ok(stats) => stats,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&work).await;
                return Err(e.into());
            }
        };
        tracing::info!(
            manifests_ms = manifests_loaded.duration_since(started).as_millis() as u64,
            apply_ms = manifests_loaded.elapsed().as_millis() as u64,
            plan_ms = stats.plan_time.as_millis() as u64,
            write_ms = stats.write_time.as_millis() as u64,
            verify_ms = stats.verify_time.as_millis() as u64,
            sync_ms = stats.sync_time.as_millis() as u64,
            files = stats.files,
            bytes_written = stats.bytes_written,
            steps,
            "restore applied"
        );
        // An empty directory at the target is replaced by rename(2). The
        // tree is on disk already (the restore ends with a sync); syncing
        // the parent makes the rename durable before the instance is ACTIVE.
        if let Err(e) = tokio::fs::rename(&work, &req.target).await {
            let _ = tokio::fs::remove_dir_all(&work).await;
            return Err(e).with_context(|| format!("cannot move the restored tree to {}", req.target.display()));
        }
        let dir = parent.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
            .await?
            .with_context(|| format!("cannot sync {}", parent.display()))?;
        Ok(steps)
    }

    async fn delete(&self, backup_id: Uuid, attempts: i32) -> anyhow::Result<()> {
        self.store.delete_backup(backup_id, attempts, None).await.map(|_| ())
    }

    async fn verify(&self, link: StoredLink) -> anyhow::Result<()> {
        let chain_link = self.load_link(1, &link).await?;
        for pack in &chain_link.manifest.header.packs {
            let key = format!("{}/{}", link.artifact_prefix, pack.name);
            let (size, digest) = self.store.hash_object(&key).await.map_err(permanent)?;
            if size != pack.size || digest != pack.blake3 {
                return Err(permanent(anyhow::anyhow!(
                    "{key} is corrupted: {size} bytes with BLAKE3 {digest}, the manifest records {} bytes with {}",
                    pack.size,
                    pack.blake3
                )));
            }
        }
        Ok(())
    }
}

/// Range reads of packs, for the synchronous restore.
struct StorePacks {
    store: ArtifactStore,
    runtime: tokio::runtime::Handle,
    prefixes: HashMap<Uuid, String>,
    /// Plaintext packs of a local store, open once and read with `pread`;
    /// `None` for a pack read through the store (sealed or remote).
    local: Mutex<HashMap<String, Option<Arc<std::fs::File>>>>,
}

impl StorePacks {
    fn new(store: ArtifactStore, prefixes: HashMap<Uuid, String>) -> Self {
        Self { store, runtime: tokio::runtime::Handle::current(), prefixes, local: Mutex::default() }
    }

    /// The open local file of `key`, if it is read with `pread`.
    fn local_file(&self, key: &str) -> std::io::Result<Option<Arc<std::fs::File>>> {
        if let Some(known) = self.local.lock().expect("pack file cache lock").get(key) {
            return Ok(known.clone());
        }
        let path = self
            .runtime
            .block_on(self.store.local_plaintext_file(key))
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let file = match path {
            Some(path) => Some(Arc::new(std::fs::File::open(&path)?)),
            None => None,
        };
        self.local.lock().expect("pack file cache lock").insert(key.to_owned(), file.clone());
        Ok(file)
    }
}

impl PackSource for StorePacks {
    fn read_range(&self, backup_id: Uuid, pack: &str, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let prefix = self
            .prefixes
            .get(&backup_id)
            .ok_or_else(|| std::io::Error::other(format!("backup {backup_id} is not in this chain")))?;
        let key = format!("{prefix}/{pack}");
        if let Some(file) = self.local_file(&key)? {
            let mut buf = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
            file.read_exact_at(&mut buf, offset)?;
            return Ok(buf);
        }
        self.runtime
            .block_on(self.store.get_range(&key, offset..offset + len))
            .map(|b| b.to_vec())
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
}
