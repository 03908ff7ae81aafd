//! Artifact storage through object_store.
//!
//! Layout: `backups/<backup id>.<attempt>/{manifest, pack-NNNNN}`. Each
//! attempt writes under its own prefix, so an attempt that was abandoned
//! (its worker died, it was taken over) can never be confused with the one
//! that completed; the completed row records its prefix (`artifact_prefix`)
//! and every read (restore, verify, an incremental's parent) goes through
//! that recorded prefix, never through this layout. Everything else of the
//! backup is garbage to remove. Backups written before 2026-11-26 used
//! `backups/<backup id>/<attempt>/`; they are read through their recorded
//! prefix like any other, and deleting a backup removes both layouts.
//!
//! Why one directory level per attempt: on a local store each directory is
//! a `mkdir` and an `fsync` per backup, and for a backup of an empty or
//! unchanged volume those were most of a job's kernel time.
//!
//! The local filesystem store does not fsync; a backup is `COMPLETED` only
//! once its objects are durable (DESIGN.md §6), so for `file://` URLs the
//! stored files and their directories are synced here. An attempt's
//! manifest is written in place ([`ArtifactStore::put_attempt`]): to a
//! temporary name, synced, renamed, then the directory synced, so a crash
//! never leaves a half-written manifest under its name.
//!
//! With an encryption key ring ([`crate::seal`]), every object is sealed on
//! the way in and opened on the way out, here and nowhere else: the delta
//! format and the datastores see plaintext, checksums are of plaintext, and
//! range reads of packs map to the frames that cover them. Objects stored
//! before encryption was turned on are still read as they are.

use std::{
    collections::HashMap,
    ops::Range,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context;
use bytes::Bytes;
use cairn_delta::StagedPack;
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart, path::Path as ObjectPath};
use tokio::io::AsyncReadExt;
use url::Url;
use uuid::Uuid;

use crate::seal::{self, KeyRing, Opener, Sealer, StreamOpener};

/// Upload chunk size: memory per upload stays at a few of these.
const CHUNK: usize = 8 << 20;

/// Where backups' objects live.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    base: ObjectPath,
    url: String,
    local_root: Option<PathBuf>,
    /// Keys to seal new objects with and open sealed ones; `None` stores
    /// plaintext (and refuses sealed objects, naming their key id).
    keys: Option<Arc<KeyRing>>,
    /// Headers of objects read by range (`None`: stored plaintext), so a
    /// restore's many range reads of one pack fetch its header once.
    headers: Arc<Mutex<HashMap<String, Option<seal::Header>>>>,
    /// Whether the root directory of a `file://` store has been synced since
    /// this process opened it. Syncing the root makes its entries (the
    /// top-level `backups/`, made once and never removed) durable, so once
    /// per process is enough; every directory below is synced per object.
    root_synced: Arc<AtomicBool>,
}

/// How many object headers the range-read cache keeps before starting over.
const HEADER_CACHE: usize = 4096;

impl ArtifactStore {
    /// Opens the store named by `CAIRN_STORAGE_URL`. A `file://` directory is
    /// created if missing.
    pub fn open(storage_url: &str) -> anyhow::Result<Self> {
        let url = Url::parse(storage_url).with_context(|| format!("CAIRN_STORAGE_URL={storage_url:?} is not a URL"))?;
        if url.scheme() == "file" {
            let dir = url
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("CAIRN_STORAGE_URL={storage_url:?} is not an absolute file path"))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
            return Ok(Self {
                store: Arc::new(store),
                base: ObjectPath::default(),
                url: storage_url.trim_end_matches('/').to_owned(),
                local_root: Some(dir),
                keys: None,
                headers: Arc::default(),
                root_synced: Arc::default(),
            });
        }
        let (store, base) = object_store::parse_url(&url)
            .with_context(|| format!("CAIRN_STORAGE_URL={storage_url:?}: this build serves file:// storage"))?;
        Ok(Self {
            store: Arc::from(store),
            base,
            url: storage_url.trim_end_matches('/').to_owned(),
            local_root: None,
            keys: None,
            headers: Arc::default(),
            root_synced: Arc::default(),
        })
    }

    /// Seals every object stored from now on with `keys`' current key, and
    /// opens sealed objects with the key each names.
    pub fn with_keys(mut self, keys: Option<KeyRing>) -> Self {
        self.keys = keys.map(Arc::new);
        self
    }

    /// The id new objects are sealed with, if encryption is on.
    pub fn current_key_id(&self) -> Option<&str> {
        self.keys.as_deref().map(KeyRing::current_id)
    }

    /// The prefix of one attempt of one backup.
    pub fn attempt_prefix(backup_id: Uuid, attempt: i32) -> String {
        format!("backups/{backup_id}.{attempt}")
    }

    /// Every prefix attempts `1..=attempts` of a backup may have written
    /// under: each attempt's own, and the directory of the older layout
    /// (`backups/<id>/<attempt>/`).
    fn backup_prefixes(backup_id: Uuid, attempts: i32) -> impl Iterator<Item = String> {
        std::iter::once(format!("backups/{backup_id}"))
            .chain((1..=attempts).map(move |attempt| Self::attempt_prefix(backup_id, attempt)))
    }

    /// Deletes the objects of attempts `1..=attempts` of a backup, in either
    /// layout, except those under `keep` (the completed attempt's prefix).
    pub async fn delete_backup(&self, backup_id: Uuid, attempts: i32, keep: Option<&str>) -> anyhow::Result<usize> {
        let mut deleted = 0;
        for prefix in Self::backup_prefixes(backup_id, attempts) {
            if keep == Some(prefix.as_str()) {
                continue;
            }
            // A kept prefix of the old layout lies inside its backup's directory.
            let keep = keep.filter(|k| k.starts_with(&format!("{prefix}/")));
            deleted += self.delete_prefix(&prefix, keep).await?;
        }
        Ok(deleted)
    }

    fn path(&self, key: &str) -> ObjectPath {
        self.base.parts().chain(ObjectPath::from(key).parts()).collect()
    }

    /// The URL of an object, for `locationRef`.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    /// Stores a staged local file as `key` and makes it durable; the staged
    /// file is consumed. Returns the object's length.
    ///
    /// A `file://` store without encryption on the staging directory's
    /// filesystem takes the file by `rename`, so a pack is written once, not
    /// once to staging and again to the store: that copy cost a full
    /// backup of incompressible data half its speed. Otherwise the file is
    /// streamed (and sealed, with a key).
    pub async fn put_file(&self, key: &str, file: &std::path::Path) -> anyhow::Result<u64> {
        self.forget_header(key);
        if self.keys.is_none()
            && let Some(root) = &self.local_root
        {
            let dest = root.join(key);
            if let Some(dir) = dest.parent() {
                tokio::fs::create_dir_all(dir).await.with_context(|| format!("cannot create {}", dir.display()))?;
            }
            match tokio::fs::rename(file, &dest).await {
                Ok(()) => {
                    let len = tokio::fs::metadata(&dest).await?.len();
                    self.make_durable(key).await?;
                    return Ok(len);
                }
                // Staging on another filesystem: copy.
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {}
                Err(e) => return Err(e).with_context(|| format!("cannot store {key}")),
            }
        }
        let mut reader =
            tokio::fs::File::open(file).await.with_context(|| format!("cannot open staged {}", file.display()))?;
        let upload = self.store.put_multipart(&self.path(key)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        if let Some(keys) = &self.keys {
            let len = reader.metadata().await?.len();
            let mut sealer = Sealer::new(keys, key, len);
            writer.write(sealer.header_bytes());
            let mut frame = Vec::with_capacity(seal::FRAME_SIZE as usize);
            while !sealer.done() {
                frame.resize(sealer.next_frame_len(), 0);
                reader
                    .read_exact(&mut frame)
                    .await
                    .with_context(|| format!("staged {} changed while it was uploaded", file.display()))?;
                writer.wait_for_capacity(2).await?;
                writer.write(&sealer.seal_frame(&frame));
            }
            if reader.read(&mut [0u8; 1]).await? != 0 {
                anyhow::bail!("staged {} grew while it was uploaded", file.display());
            }
            writer.finish().await.with_context(|| format!("cannot store {key}"))?;
            self.make_durable(key).await?;
            return Ok(len);
        }
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(2).await?;
            writer.write(&buf[..n]);
            total += n as u64;
        }
        writer.finish().await.with_context(|| format!("cannot store {key}"))?;
        self.make_durable(key).await?;
        Ok(total)
    }

    /// Stores one attempt's objects under `prefix`: its staged packs, then
    /// its manifest (last, so a stored manifest never names a missing
    /// pack). Everything is durable when this returns.
    ///
    /// On a `file://` store this is one blocking task: one `mkdir` for the
    /// attempt, the packs renamed in (cairn-delta has synced each before
    /// `backup_tree` returned), the manifest written to a temporary name,
    /// synced and renamed, then the attempt's directory and those above it
    /// synced. Sealed packs and remote stores go through
    /// [`Self::put_file`] and [`Self::put_bytes`].
    pub async fn put_attempt(&self, prefix: &str, packs: &[StagedPack], manifest: Vec<u8>) -> anyhow::Result<()> {
        let manifest_key = format!("{prefix}/manifest");
        let Some(root) = self.local_root.clone() else {
            for pack in packs {
                self.put_file(&format!("{prefix}/{}", pack.name), &pack.path).await?;
            }
            return self.put_bytes(&manifest_key, manifest).await;
        };
        let mut renamed = Vec::with_capacity(packs.len());
        for pack in packs {
            let key = format!("{prefix}/{}", pack.name);
            self.forget_header(&key);
            match &self.keys {
                // Sealing streams the pack through object_store.
                Some(_) => {
                    self.put_file(&key, &pack.path).await?;
                }
                None => renamed.push((pack.path.clone(), root.join(&key))),
            }
        }
        self.forget_header(&manifest_key);
        let manifest = match &self.keys {
            Some(keys) => seal::seal(keys, &manifest_key, &manifest),
            None => manifest,
        };
        let (dir, root_synced) = (root.join(prefix), self.root_synced.clone());
        tokio::task::spawn_blocking(move || write_attempt(&root, &dir, &renamed, &manifest, &root_synced))
            .await?
            .with_context(|| format!("cannot store {manifest_key}"))
    }

    /// Stores `bytes` as `key` and makes it durable.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.forget_header(key);
        let bytes = match &self.keys {
            Some(keys) => seal::seal(keys, key, &bytes),
            None => bytes,
        };
        self.store.put(&self.path(key), bytes.into()).await.with_context(|| format!("cannot store {key}"))?;
        self.make_durable(key).await
    }

    async fn make_durable(&self, key: &str) -> anyhow::Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(()); // remote stores acknowledge only durable writes
        };
        let file = root.join(key);
        let root = root.clone();
        let root_synced = self.root_synced.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            match file.parent() {
                Some(dir) => sync_dirs_up_to(dir, &root, &root_synced),
                None => Ok(()),
            }
        })
        .await?
        .with_context(|| format!("cannot sync {key}"))
    }

    /// Reads a whole object (opened, if it was sealed).
    pub async fn get(&self, key: &str) -> anyhow::Result<Bytes> {
        let got = self.store.get(&self.path(key)).await.with_context(|| format!("cannot read {key}"))?;
        let stored = got.bytes().await?;
        if self.keys.is_none() && !stored.starts_with(seal::MAGIC) {
            return Ok(stored);
        }
        Ok(seal::open(self.keys.as_deref(), key, &stored)?.into())
    }

    /// Streams a whole object through BLAKE3: (size, hex digest). Memory
    /// stays at one chunk whatever the object's size.
    pub async fn hash_object(&self, key: &str) -> anyhow::Result<(u64, String)> {
        let got = self.store.get(&self.path(key)).await.with_context(|| format!("cannot read {key}"))?;
        let mut stream = got.into_stream();
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut opener = StreamOpener::new(self.keys.as_deref(), key);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("cannot read {key}"))?;
            let plain = opener.push(&chunk)?;
            size += plain.len() as u64;
            hasher.update(&plain);
        }
        let plain = opener.finish()?;
        size += plain.len() as u64;
        hasher.update(&plain);
        Ok((size, hasher.finalize().to_hex().to_string()))
    }

    /// Reads `range` of an object's plaintext. For a sealed object, only the
    /// frames covering the range are fetched (and authenticated).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        let Some(header) = self.header_of(key).await? else {
            return self.store.get_range(&self.path(key), range).await.with_context(|| format!("cannot read {key}"));
        };
        let opener = Opener::new(self.keys.as_deref(), key, header)?;
        let h = opener.header();
        if range.start > range.end || range.end > h.plaintext_len {
            anyhow::bail!("cannot read {key}: range {range:?} is beyond its {} bytes", h.plaintext_len);
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let (frames, sealed_range) = h.sealed_range(range.start, range.end);
        let sealed =
            self.store.get_range(&self.path(key), sealed_range).await.with_context(|| format!("cannot read {key}"))?;
        let first = frames.start * u64::from(h.frame_size);
        let plain = opener.open_frames(frames, &sealed)?;
        let (a, b) = ((range.start - first) as usize, (range.end - first) as usize);
        Ok(Bytes::from(plain).slice(a..b))
    }

    /// Where a plaintext object of a `file://` store lies on local disk, so
    /// a restore can read its ranges with `pread` on one open file instead
    /// of an open, seek and read per range. `None` for a sealed object or a
    /// remote store: those are read through [`Self::get_range`].
    pub async fn local_plaintext_file(&self, key: &str) -> anyhow::Result<Option<PathBuf>> {
        let Some(root) = &self.local_root else { return Ok(None) };
        Ok(self.header_of(key).await?.is_none().then(|| root.join(key)))
    }

    fn forget_header(&self, key: &str) {
        self.headers.lock().expect("header cache lock").remove(key);
    }

    /// The seal header of `key`, `None` if it is stored plaintext.
    async fn header_of(&self, key: &str) -> anyhow::Result<Option<seal::Header>> {
        if let Some(h) = self.headers.lock().expect("header cache lock").get(key) {
            return Ok(h.clone());
        }
        let options = GetOptions { range: Some(GetRange::Bounded(0..seal::MAX_HEADER_LEN)), ..GetOptions::default() };
        let got = self.store.get_opts(&self.path(key), options).await.with_context(|| format!("cannot read {key}"))?;
        let start = got.bytes().await.with_context(|| format!("cannot read {key}"))?;
        let header = seal::Header::parse(key, &start)?;
        let mut cache = self.headers.lock().expect("header cache lock");
        if cache.len() >= HEADER_CACHE {
            cache.clear();
        }
        cache.insert(key.to_owned(), header.clone());
        Ok(header)
    }

    /// Deletes every object under `prefix` except those under `keep`.
    pub async fn delete_prefix(&self, prefix: &str, keep: Option<&str>) -> anyhow::Result<usize> {
        let keep_key = keep;
        let keep = keep.map(|k| self.path(k));
        let objects: Vec<ObjectPath> = self
            .store
            .list(Some(&self.path(prefix)))
            .map_ok(|meta| meta.location)
            .try_filter(|loc| {
                let kept = keep.as_ref().is_some_and(|k| loc.prefix_matches(k));
                futures::future::ready(!kept)
            })
            .try_collect()
            .await?;
        let n = objects.len();
        let mut deleted = self.store.delete_stream(futures::stream::iter(objects.into_iter().map(Ok)).boxed());
        while let Some(res) = deleted.next().await {
            match res {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(root) = &self.local_root {
            // LocalFileSystem leaves empty directories behind, and an upload
            // killed midway leaves a temporary `name#n` file that list()
            // does not show: remove what is on disk too.
            let (dir, keep) = (root.join(prefix), keep_key.map(|k| root.join(k)));
            tokio::task::spawn_blocking(move || remove_except(&dir, keep.as_deref())).await?;
        }
        Ok(n)
    }
}

/// Syncs `dir` and every directory above it up to the store's `root`. The
/// root itself is synced once per process (`root_synced`): its entries
/// (the top-level `backups/`) are made once and never removed.
fn sync_dirs_up_to(dir: &std::path::Path, root: &std::path::Path, root_synced: &AtomicBool) -> std::io::Result<()> {
    let mut dir = Some(dir);
    while let Some(d) = dir {
        if d == root {
            if !root_synced.load(Ordering::Acquire) {
                std::fs::File::open(d)?.sync_all()?;
                root_synced.store(true, Ordering::Release);
            }
            break;
        }
        std::fs::File::open(d)?.sync_all()?;
        dir = d.parent();
    }
    Ok(())
}

/// Name of a manifest being written, renamed to `manifest` once synced.
/// A crash leaves it only in an attempt that never completed.
const PARTIAL_MANIFEST: &str = "manifest.partial";

/// [`ArtifactStore::put_attempt`] on a local store: creates `dir`, renames
/// `packs` (staged path, destination; already synced) into it, writes the
/// manifest atomically, and syncs `dir` and the directories above it.
fn write_attempt(
    root: &std::path::Path,
    dir: &std::path::Path,
    packs: &[(PathBuf, PathBuf)],
    manifest: &[u8],
    root_synced: &AtomicBool,
) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    for (staged, dest) in packs {
        match std::fs::rename(staged, dest) {
            Ok(()) => {}
            // Staging on another filesystem: copy, and sync the copy.
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                std::fs::copy(staged, dest)?;
                std::fs::File::open(dest)?.sync_all()?;
                let _ = std::fs::remove_file(staged);
            }
            Err(e) => return Err(e),
        }
    }
    let partial = dir.join(PARTIAL_MANIFEST);
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(manifest)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&partial, dir.join("manifest"))?;
    sync_dirs_up_to(dir, root, root_synced)
}

/// Removes everything under `dir` except the subtree `keep`, then `dir`
/// itself if nothing is kept.
fn remove_except(dir: &std::path::Path, keep: Option<&std::path::Path>) {
    match keep {
        Some(keep) if keep == dir => {}
        Some(keep) if keep.starts_with(dir) => {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries.flatten() {
                let path = entry.path();
                if keep.starts_with(&path) {
                    remove_except(&path, Some(keep));
                } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(&path);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        _ => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
