//! Firetower's wire formats and the pure types every crate shares.
//!
//! This crate does no I/O of its own: it holds generated protobuf/gRPC code and pure
//! functions, so that every other crate (and the simulator) agrees on the same bytes.
//!
//! # Layout
//! - [`client`]: the WebSocket client protocol (JSON frames), parsing and encoding.
//! - [`routing`]: a local copy of the metastore's routing state, fed by its watch stream.
//! - [`slot`]: `slot_of(topic) = xxh3_64(topic) % 16384`, the one routing function.
//! - [`topic`]: topic name validation and hot sub-topic naming (`topic#k`).
//! - [`relay`]: the length-prefixed framing of [`relay::v1::RelayFrame`] on QUIC streams.
//! - [`metastore`], [`raft`], [`distributor`], [`relay`]: generated code of `proto/*.proto`.
//! - [`error`]: the typed errors of the above.

pub mod client;
pub mod error;
pub mod relay;
pub mod routing;
pub mod slot;
pub mod topic;

pub use error::{FrameError, TopicError};
pub use slot::{slot_of, Slot, SLOT_COUNT};

/// The metastore API (`proto/metastore.proto`).
pub mod metastore {
    /// Version 1 of the metastore API.
    pub mod v1 {
        tonic::include_proto!("firetower.metastore.v1");
    }
}

/// The Raft transport between metastore nodes (`proto/raft.proto`).
pub mod raft {
    /// Version 1 of the Raft transport.
    pub mod v1 {
        tonic::include_proto!("firetower.raft.v1");
    }
}

/// The distributor API (`proto/distributor.proto`).
pub mod distributor {
    /// Version 1 of the distributor API.
    pub mod v1 {
        tonic::include_proto!("firetower.distributor.v1");
    }
}
