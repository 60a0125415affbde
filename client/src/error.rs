//! What can go wrong on the client side.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    /// A setting that cannot work (the message names it).
    #[error("{0}")]
    Config(String),
    /// The server refused or failed the call: its gRPC code and message.
    #[error("{code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    /// The subscriber's task has ended (closed, or kicked).
    #[error("the subscriber has stopped")]
    Stopped,
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Refused {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}
