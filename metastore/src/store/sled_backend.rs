//! [`Backend`] over sled: two trees, log keys as big-endian u64 so that byte order is index
//! order, and `flush` is sled's fsync.

use std::path::Path;

use super::Backend;
use crate::error::BackendError;

/// The durable backend of a real metastore node.
#[derive(Clone)]
pub struct SledBackend {
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
        Ok(SledBackend { db, log, meta })
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
        self.log
            .range(start.to_be_bytes()..end.to_be_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((index_of(&k)?, v.to_vec()))
            })
            .collect()
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, BackendError> {
        match self.log.last()? {
            Some((k, v)) => Ok(Some((index_of(&k)?, v.to_vec()))),
            None => Ok(None),
        }
    }

    fn log_insert(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        for (index, value) in entries {
            batch.insert(&index.to_be_bytes(), value);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn log_remove_from(&self, from: u64) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(from.to_be_bytes()..) {
            batch.remove(kv?.0);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn log_remove_upto(&self, upto: u64) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=upto.to_be_bytes()) {
            batch.remove(kv?.0);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    fn meta_put(&self, key: &str, value: Vec<u8>) -> Result<(), BackendError> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.db.flush()?;
        Ok(())
    }
}
