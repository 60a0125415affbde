//! The openraft type configuration of the metastore.

use std::io::Cursor;

use crate::state::{Command, Response};

openraft::declare_raft_types!(
    /// Raft types of the metastore: commands in, responses out, node ids are u64 and nodes
    /// carry their gRPC address.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::SeededRuntime,
);

/// A log id of this configuration.
pub type LogId = openraft::LogId<u64>;
/// A log entry of this configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// The openraft node handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<u64>;
/// The membership as stored in the state machine.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
