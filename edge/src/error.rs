//! Typed errors of the edge.

use thiserror::Error;

/// A configuration value that cannot work (the same type as the distributor's).
pub use firetower_distributor::ConfigError;

/// Why an edge stopped.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] firetower_distributor::TlsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
