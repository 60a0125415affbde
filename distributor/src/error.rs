//! Typed errors of the distributor.

use thiserror::Error;

pub use firetower_net::{ConfigError, TlsError};

/// Why a distributor stopped.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("gRPC server: {0}")]
    Grpc(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
