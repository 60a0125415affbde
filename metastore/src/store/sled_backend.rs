//! [`Backend`] over sled: two trees, log keys as big-endian u64 so that byte order is index
//! order, and `flush` is sled's fsync.
//!
//! Dropping the last handle closes the database and returns only once sled's lock on the
//! data dir is released, so the same process can open it again at once. sled alone does not
//! promise that: its last `Db` handle flushes and joins its flusher thread on drop, but an
//! I/O thread of its pool may still hold the file for a moment after the final write (a
//! drop-and-reopen loop in one thread sees `could not acquire lock … WouldBlock` about once
//! in a hundred rounds).

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Backend;
use crate::error::BackendError;

/// How long closing waits for sled's I/O threads to let go of the lock file, in 1 ms
/// steps. They need microseconds; the bound only keeps a wedged thread from hanging the
/// caller.
const UNLOCK_WAIT_STEPS: u32 = 5_000;

/// The durable backend of a real metastore node. Clones share one open database.
#[derive(Clone)]
pub struct SledBackend {
    inner: Arc<Open>,
}

/// The open database; closed when the last [`SledBackend`] clone drops.
struct Open {
    /// Always `Some` until dropped: `Drop` takes it to close the database before waiting
    /// for its lock.
    trees: Option<Trees>,
    /// sled's lock file (`<dir>/db`).
    lock_file: PathBuf,
}

struct Trees {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl SledBackend {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        let db = sled::Config::new().path(dir).open()?;
        let log = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        Ok(SledBackend {
            inner: Arc::new(Open {
                trees: Some(Trees { db, log, meta }),
                lock_file: dir.join("db"),
            }),
        })
    }

    fn trees(&self) -> &Trees {
        match &self.inner.trees {
            Some(trees) => trees,
            None => unreachable!("the trees are taken only when the last handle drops"),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // Close the database: sled flushes and joins its flusher thread here.
        drop(self.trees.take());
        // Then wait until its I/O threads have let go of the lock file too.
        let Ok(file) = File::open(&self.lock_file) else {
            return;
        };
        for _ in 0..UNLOCK_WAIT_STEPS {
            match file.try_lock() {
                Ok(()) => {
                    let _ = file.unlock();
                    return;
                }
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
                // Locking is not supported here: sled could not have locked it either.
                Err(TryLockError::Error(_)) => return,
            }
        }
        tracing::warn!(file = %self.lock_file.display(), "sled still holds its lock file after closing");
    }
}

fn index_of(key: &[u8]) -> Result<u64, BackendError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| BackendError::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Backend for SledBackend {
    fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, BackendError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.trees()
            .log
            .range(start.to_be_bytes()..end.to_be_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((index_of(&k)?, v.to_vec()))
            })
            .collect()
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, BackendError> {
        match self.trees().log.last()? {
            Some((k, v)) => Ok(Some((index_of(&k)?, v.to_vec()))),
            None => Ok(None),
        }
    }

    fn log_insert(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        for (index, value) in entries {
            batch.insert(&index.to_be_bytes(), value);
        }
        self.trees().log.apply_batch(batch)?;
        Ok(())
    }

    fn log_remove_from(&self, from: u64) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        for kv in self.trees().log.range(from.to_be_bytes()..) {
            batch.remove(kv?.0);
        }
        self.trees().log.apply_batch(batch)?;
        Ok(())
    }

    fn log_remove_upto(&self, upto: u64) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        for kv in self.trees().log.range(..=upto.to_be_bytes()) {
            batch.remove(kv?.0);
        }
        self.trees().log.apply_batch(batch)?;
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.trees().meta.get(key)?.map(|v| v.to_vec()))
    }

    fn meta_put(&self, key: &str, value: Vec<u8>) -> Result<(), BackendError> {
        self.trees().meta.insert(key, value)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.trees().db.flush()?;
        Ok(())
    }
}
