//! Typed errors of the transport.

use std::path::PathBuf;

use thiserror::Error;

/// A configuration value that cannot work. The message names the field. Shared by the
/// distributor's and the edge's `Config::validate`.
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
    /// The node's certificate names another node (`firetower certs` makes one per node).
    #[error("tls.cert: the certificate says {found}, this node is {expected}")]
    Identity { expected: String, found: String },
}
