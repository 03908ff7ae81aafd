//! Making files durable off the critical path.
//!
//! A pack must be on disk before its backup is reported done, and a
//! restored tree before its instance is `ACTIVE`. But an `fsync` issued
//! inline stalls the pipeline for as long as the disk takes to write what
//! is dirty: a full backup of 2 GiB of incompressible data spent half its
//! time waiting on its 32 pack fsyncs, one after the other, with the CPU
//! idle. Here a file that is finished (or has grown by a lot) is handed to
//! one background thread that syncs it while the next one is being filled,
//! so the disk writes while the CPU hashes and compresses; the caller waits
//! once, at the end, for whatever is still pending. PostgreSQL starts
//! writeback early for the same reason (`checkpoint_flush_after`).
//!
//! The first error is kept and returned by [`Syncer::finish`]: a file
//! that could not be synced fails the whole backup or restore.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::DeltaError;

/// A background thread that `fsync`s the files it is given, in order.
pub(crate) struct Syncer {
    queue: Option<mpsc::Sender<(PathBuf, File)>>,
    thread: Option<JoinHandle<Result<(), DeltaError>>>,
}

impl Syncer {
    pub(crate) fn new() -> Self {
        let (queue, files) = mpsc::channel::<(PathBuf, File)>();
        let thread = std::thread::Builder::new()
            .name("cairn-sync".into())
            .spawn(move || {
                let mut first_error = None;
                for (path, file) in files {
                    if first_error.is_none()
                        && let Err(e) = file.sync_all()
                    {
                        first_error = Some(DeltaError::io(path, "syncing", e));
                    }
                }
                first_error.map_or(Ok(()), Err)
            })
            .ok();
        // Without a thread (the system refused one), files are synced inline.
        Syncer { queue: thread.as_ref().map(|_| queue), thread }
    }

    /// Syncs `file` in the background (inline if there is no thread).
    pub(crate) fn sync(&self, path: PathBuf, file: File) -> Result<(), DeltaError> {
        match &self.queue {
            Some(q) => match q.send((path, file)) {
                Ok(()) => Ok(()),
                // The thread is gone: sync here, so nothing goes unsynced.
                Err(mpsc::SendError((path, file))) => file.sync_all().map_err(|e| DeltaError::io(path, "syncing", e)),
            },
            None => file.sync_all().map_err(|e| DeltaError::io(path, "syncing", e)),
        }
    }

    /// Waits until every file handed over is synced; the first error.
    pub(crate) fn finish(mut self) -> Result<(), DeltaError> {
        self.queue = None;
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(DeltaError::io("", "syncing", std::io::Error::other("the sync thread panicked")))
            }),
            None => Ok(()),
        }
    }
}
