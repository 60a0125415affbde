//! Typed errors of the edge.

use thiserror::Error;

/// A configuration value that cannot work (the same type as the distributor's).
pub use firetower_net::{ConfigError, TlsError};

/// Why an edge stopped.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
