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

/// Why an HTTP request head could not be read ([`crate::ops_http::read_head`]). Each maps to
/// the status that answers it ([`HeadError::status`]).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeadError {
    /// The head did not end within the bound (or had more header lines than it allows).
    #[error("request head exceeds {max} bytes or {headers} header lines")]
    TooLarge { max: usize, headers: usize },
    /// Not an HTTP/1.x request head.
    #[error("bad request: {0}")]
    Malformed(String),
    /// The client closed the connection before the head ended.
    #[error("connection closed inside the request head")]
    Closed,
    /// The socket failed.
    #[error("read failed: {0}")]
    Read(String),
}

impl HeadError {
    /// The HTTP status that answers it: 431 for a head over the bounds, else 400.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge { .. } => 431,
            HeadError::Malformed(_) | HeadError::Closed | HeadError::Read(_) => 400,
        }
    }
}

/// Why a GET of another node's endpoint ([`crate::ops_http::get`]) brought no response.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GetError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("write: {0}")]
    Write(String),
    #[error("read: {0}")]
    Read(String),
    /// The whole exchange did not end within its time.
    #[error("no answer within {ms} ms")]
    Timeout { ms: u128 },
    /// The connection ended before what is named (the response, the body, a chunked body).
    #[error("connection closed inside {0}")]
    Closed(&'static str),
    #[error("response head too large")]
    HeadTooLarge,
    #[error("body exceeds {max} bytes")]
    BodyTooLarge { max: usize },
    /// Not an HTTP/1.x response: what is wrong with it.
    #[error("{0}")]
    Malformed(&'static str),
}
