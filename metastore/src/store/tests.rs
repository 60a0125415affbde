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
