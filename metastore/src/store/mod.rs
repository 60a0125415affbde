//! Durable storage behind openraft: a small [`Backend`] trait with two implementations —
//! [`SledBackend`] (fsync'd, for real nodes) and [`MemBackend`] (its in-memory twin, for the
//! simulator) — and openraft's [`LogStore`] and [`StateMachine`] written once over it.
//!
//! sled is unmaintained upstream; everything it does for us goes through [`Backend`], so it
//! can be replaced without touching the Raft glue.

// openraft's storage traits fix the error type (`StorageError`, > 200 bytes); boxing it is
// not ours to choose.
#![allow(clippy::result_large_err)]

mod log;
mod mem;
mod sled_backend;
mod sm;

pub use self::log::LogStore;
pub use mem::MemBackend;
pub use sled_backend::SledBackend;
pub use sm::{Catchup, SmShared, StateMachine};

use crate::error::BackendError;

/// The operations the metastore needs from a durable key-value store.
///
/// Two keyspaces: the Raft log (keyed by index, kept in index order) and a small metadata
/// map (vote, committed and purged log ids, the latest snapshot, the node's identity).
/// Writes become durable at the next [`Backend::flush`]; nothing is acknowledged to openraft
/// before that returns.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The log values with `start <= index < end`, in index order.
    fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, BackendError>;
    /// The entry with the highest index, if any.
    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, BackendError>;
    /// Inserts (or overwrites) entries.
    fn log_insert(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), BackendError>;
    /// Removes every entry with `index >= from` (conflict truncation).
    fn log_remove_from(&self, from: u64) -> Result<(), BackendError>;
    /// Removes every entry with `index <= upto` (compaction after a snapshot).
    fn log_remove_upto(&self, upto: u64) -> Result<(), BackendError>;
    /// Reads a metadata value.
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// Writes a metadata value.
    fn meta_put(&self, key: &str, value: Vec<u8>) -> Result<(), BackendError>;
    /// Makes every earlier write durable (fsync).
    fn flush(&self) -> Result<(), BackendError>;
}

/// Metadata keys.
pub(crate) mod keys {
    pub const VOTE: &str = "vote";
    pub const COMMITTED: &str = "committed";
    pub const PURGED: &str = "purged";
    pub const SNAPSHOT_META: &str = "snapshot_meta";
    pub const SNAPSHOT_DATA: &str = "snapshot_data";
    pub const IDENTITY: &str = "identity";
}

#[cfg(test)]
mod tests;
