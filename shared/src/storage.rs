//! Artifact storage through object_store.
//!
//! Layout: `backups/<backup id>/<attempt>/{manifest, pack-NNNNN}`. Each
//! attempt writes under its own prefix, so an attempt that was abandoned
//! (its worker died, it was taken over) can never be confused with the one
//! that completed; the completed row records its prefix, and everything else
//! under `backups/<id>/` is garbage to remove.
//!
//! The local filesystem store does not fsync; a backup is `COMPLETED` only
//! once its objects are durable (DESIGN.md §6), so for `file://` URLs the
//! uploaded files and their directories are synced here.

use std::{ops::Range, path::PathBuf, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart, path::Path as ObjectPath};
use tokio::io::AsyncReadExt;
use url::Url;
use uuid::Uuid;

/// Upload chunk size: memory per upload stays at a few of these.
const CHUNK: usize = 8 << 20;

/// Where backups' objects live.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    base: ObjectPath,
    url: String,
    local_root: Option<PathBuf>,
}

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
            });
        }
        let (store, base) = object_store::parse_url(&url)
            .with_context(|| format!("CAIRN_STORAGE_URL={storage_url:?}: this build serves file:// storage"))?;
        Ok(Self { store: Arc::from(store), base, url: storage_url.trim_end_matches('/').to_owned(), local_root: None })
    }

    /// The prefix of one attempt of one backup.
    pub fn attempt_prefix(backup_id: Uuid, attempt: i32) -> String {
        format!("backups/{backup_id}/{attempt}")
    }

    fn path(&self, key: &str) -> ObjectPath {
        self.base.parts().chain(ObjectPath::from(key).parts()).collect()
    }

    /// The URL of an object, for `locationRef`.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    /// Uploads a local file as `key`, streaming, then makes it durable.
    pub async fn put_file(&self, key: &str, file: &std::path::Path) -> anyhow::Result<u64> {
        let mut reader =
            tokio::fs::File::open(file).await.with_context(|| format!("cannot open staged {}", file.display()))?;
        let upload = self.store.put_multipart(&self.path(key)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
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

    /// Stores `bytes` as `key` and makes it durable.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.store.put(&self.path(key), bytes.into()).await.with_context(|| format!("cannot store {key}"))?;
        self.make_durable(key).await
    }

    async fn make_durable(&self, key: &str) -> anyhow::Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(()); // remote stores acknowledge only durable writes
        };
        let file = root.join(key);
        let root = root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            let mut dir = file.parent();
            while let Some(d) = dir {
                std::fs::File::open(d)?.sync_all()?;
                if d == root {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await?
        .with_context(|| format!("cannot sync {key}"))
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> anyhow::Result<Bytes> {
        let got = self.store.get(&self.path(key)).await.with_context(|| format!("cannot read {key}"))?;
        Ok(got.bytes().await?)
    }

    /// Streams a whole object through BLAKE3: (size, hex digest). Memory
    /// stays at one chunk whatever the object's size.
    pub async fn hash_object(&self, key: &str) -> anyhow::Result<(u64, String)> {
        let got = self.store.get(&self.path(key)).await.with_context(|| format!("cannot read {key}"))?;
        let mut stream = got.into_stream();
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("cannot read {key}"))?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((size, hasher.finalize().to_hex().to_string()))
    }

    /// Reads `range` of an object.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes> {
        self.store.get_range(&self.path(key), range).await.with_context(|| format!("cannot read {key}"))
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
