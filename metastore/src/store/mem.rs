//! [`Backend`] in memory: the simulator's twin of the sled backend. It is shared by clones,
//! so a simulated node that "crashes" and restarts with the same `MemBackend` sees exactly
//! what it had flushed — and, deliberately, also what it had written but not flushed, since
//! a simulated crash does not lose the page cache.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Backend;
use crate::error::BackendError;

#[derive(Default)]
struct Inner {
    log: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

/// An in-memory backend; clones share the same data.
#[derive(Clone, Default)]
pub struct MemBackend {
    inner: Arc<Mutex<Inner>>,
}

impl MemBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain maps behind, still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Backend for MemBackend {
    fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, BackendError> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .log
            .range(start..end)
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, BackendError> {
        Ok(self
            .lock()
            .log
            .last_key_value()
            .map(|(k, v)| (*k, v.clone())))
    }

    fn log_insert(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), BackendError> {
        self.lock().log.extend(entries);
        Ok(())
    }

    fn log_remove_from(&self, from: u64) -> Result<(), BackendError> {
        self.lock().log.split_off(&from);
        Ok(())
    }

    fn log_remove_upto(&self, upto: u64) -> Result<(), BackendError> {
        let mut inner = self.lock();
        let rest = inner.log.split_off(&upto.saturating_add(1));
        inner.log = rest;
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.lock().meta.get(key).cloned())
    }

    fn meta_put(&self, key: &str, value: Vec<u8>) -> Result<(), BackendError> {
        self.lock().meta.insert(key.to_string(), value);
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
