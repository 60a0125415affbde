//! Errors of the metastore, split by who must react: the operator (configuration, start-up),
//! the storage layer, and API callers (mapped to a `tonic::Status` in one place,
//! [`ApiError::into_status`]).

use thiserror::Error;

/// A configuration value is unusable. Each variant names the bad value.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("node id must be at least 1, got {0}")]
    ZeroId(u64),
    #[error("node id {id} is not in the peer list ({peers})")]
    NotAPeer { id: u64, peers: String },
    #[error("bad peer list entry {entry:?}: {reason}")]
    BadPeer { entry: String, reason: String },
    #[error("peer {id} is listed twice")]
    DuplicatePeer { id: u64 },
    #[error("cluster name {0:?} must be 1-64 characters of [A-Za-z0-9_.-]")]
    BadClusterName(String),
    #[error("{name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(transparent)]
    Api(#[from] firetower_net::ConfigError),
}

/// The storage backend failed.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<serde_json::Error> for BackendError {
    fn from(e: serde_json::Error) -> Self {
        BackendError::Corrupt(e.to_string())
    }
}

/// A node could not start or stopped abnormally.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] BackendError),
    #[error("data directory belongs to cluster {found_cluster:?} node {found_id}, not cluster {cluster:?} node {id}; refusing to start")]
    ForeignDataDir {
        found_cluster: String,
        found_id: u64,
        cluster: String,
        id: u64,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] firetower_net::TlsError),
}

/// Why an API request failed.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A request field is malformed; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(String),
    /// A configured bound (members, hot topics, watchers) is reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The state does not allow it now (a hot-topic change is still being joined).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No leader is known, or forwarding to it failed; the caller should retry.
    #[error("{0}")]
    Unavailable(String),
    /// This node is shutting down or its Raft core stopped.
    #[error("node is shutting down: {0}")]
    Fatal(String),
}

impl ApiError {
    /// A malformed field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// The one place API errors become gRPC statuses.
    pub fn into_status(self) -> tonic::Status {
        let message = self.to_string();
        match self {
            ApiError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            ApiError::NotFound(_) => tonic::Status::not_found(message),
            ApiError::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            ApiError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ApiError::Unavailable(_) | ApiError::Fatal(_) => tonic::Status::unavailable(message),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.into_status()
    }
}
