//! openraft's [`RaftLogStorage`] over a [`Backend`]. Entries and metadata are JSON; an append
//! is reported to openraft (the `LogFlushed` callback) only after the backend's fsync.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{RaftLogId, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use std::sync::Arc;

use super::{keys, Backend};
use crate::error::BackendError;
use crate::metrics::StoreMetrics;
use crate::types::{Entry, LogId, StorageError, TypeConfig};

/// The Raft log of one node. Clones share the backend.
#[derive(Clone)]
pub struct LogStore<B: Backend> {
    backend: B,
    /// Where the committed index goes as openraft saves it (its metrics do not carry it).
    metrics: Option<Arc<StoreMetrics>>,
}

impl<B: Backend> LogStore<B> {
    /// The log kept in `backend`.
    pub fn new(backend: B) -> Self {
        LogStore {
            backend,
            metrics: None,
        }
    }

    /// The same log, recording the committed index in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<StoreMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn note_committed(&self, committed: Option<&LogId>) {
        if let Some(metrics) = &self.metrics {
            metrics.committed(committed.map(|id| id.index));
        }
    }

    fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, BackendError> {
        match self.backend.meta_get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), BackendError> {
        self.backend.meta_put(key, serde_json::to_vec(value)?)?;
        self.backend.flush()
    }
}

fn read_err(e: BackendError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: BackendError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl<B: Backend> RaftLogReader<TypeConfig> for LogStore<B> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let rows = self.backend.log_range(start, end).map_err(read_err)?;
        rows.into_iter()
            .map(|(_, bytes)| serde_json::from_slice(&bytes).map_err(|e| read_err(e.into())))
            .collect()
    }
}

impl<B: Backend> RaftLogStorage<TypeConfig> for LogStore<B> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.meta(keys::PURGED).map_err(read_err)?;
        let last = match self.backend.log_last().map_err(read_err)? {
            Some((_, bytes)) => {
                let entry: Entry =
                    serde_json::from_slice(&bytes).map_err(|e| read_err(e.into()))?;
                Some(*entry.get_log_id())
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta(keys::VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.meta(keys::VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(keys::COMMITTED, &committed)
            .map_err(write_err)?;
        self.note_committed(committed.as_ref());
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self
            .meta::<Option<LogId>>(keys::COMMITTED)
            .map_err(read_err)?
            .flatten();
        // At start: openraft applies up to it before the node is caught up.
        self.note_committed(committed.as_ref());
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| write_err(e.into()))?;
            rows.push((entry.get_log_id().index, bytes));
        }
        let result = self
            .backend
            .log_insert(rows)
            .and_then(|()| self.backend.flush());
        // openraft learns of the append only once it is durable (or failed).
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.backend
            .log_remove_from(log_id.index)
            .and_then(|()| self.backend.flush())
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: if we crash between the two writes, the log state
        // still reports a consistent `last_purged_log_id`.
        self.put_meta(keys::PURGED, &log_id).map_err(write_err)?;
        self.backend
            .log_remove_upto(log_id.index)
            .and_then(|()| self.backend.flush())
            .map_err(write_err)
    }
}
