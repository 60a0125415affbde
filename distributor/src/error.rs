//! Typed errors of the distributor.

use std::path::PathBuf;

use thiserror::Error;

/// A configuration value that cannot work. The message names the field.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}

/// TLS material that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not usable PEM: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

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
