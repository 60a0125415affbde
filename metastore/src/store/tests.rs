//! openraft's storage test suite, run on both backends.

use openraft::testing::{StoreBuilder, Suite};

use super::{LogStore, MemBackend, SledBackend, StateMachine};
use crate::types::{StorageError, TypeConfig};

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore<MemBackend>, StateMachine<MemBackend>> for MemBuilder {
    async fn build(
        &self,
    ) -> Result<((), LogStore<MemBackend>, StateMachine<MemBackend>), StorageError> {
        let backend = MemBackend::new();
        let sm = StateMachine::open(backend.clone(), 1000)
            .map_err(|e| openraft::StorageIOError::read(&e))?;
        Ok(((), LogStore::new(backend), sm))
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore<SledBackend>, StateMachine<SledBackend>, tempfile::TempDir>
    for SledBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<SledBackend>,
            StateMachine<SledBackend>,
        ),
        StorageError,
    > {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::read(&e))?;
        let backend =
            SledBackend::open(dir.path()).map_err(|e| openraft::StorageIOError::read(&e))?;
        let sm = StateMachine::open(backend.clone(), 1000)
            .map_err(|e| openraft::StorageIOError::read(&e))?;
        Ok((dir, LogStore::new(backend), sm))
    }
}

#[test]
fn mem_backend_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(MemBuilder)
}

#[test]
fn sled_backend_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

/// sled's last `Db` handle can finish dropping while one of its I/O threads still holds the
/// lock file (about one round in a hundred here); dropping the last [`SledBackend`] waits for
/// it, so the data dir can be opened again at once.
#[test]
fn dropping_the_last_sled_handle_releases_the_data_dir() {
    use super::Backend;

    let dir = tempfile::tempdir().expect("temp dir");
    for round in 0..300u64 {
        let backend = SledBackend::open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: the data dir is still held: {e}"));
        let entries = (0..16).map(|i| (round * 16 + i, vec![7; 256])).collect();
        backend.log_insert(entries).expect("insert");
        backend.flush().expect("flush");
        // Left for the close to write: sled hands that write to its I/O threads.
        backend
            .meta_put("round", round.to_be_bytes().to_vec())
            .expect("put");
        let clone = backend.clone();
        drop(backend);
        drop(clone);
        let lock = std::fs::File::open(dir.path().join("db")).expect("lock file");
        match lock.try_lock() {
            Ok(()) => lock.unlock().expect("unlock"),
            Err(e) => panic!("round {round}: sled still holds its lock after the last drop: {e}"),
        }
    }
}
