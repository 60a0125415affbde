//! Typed errors of the pure shared code.

use thiserror::Error;

/// Why a topic name was rejected. The message names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("topic contains a control character at byte {at}")]
    ControlCharacter { at: usize },
    #[error("topic contains ',' at byte {at}; ',' separates topics in the client protocol")]
    Comma { at: usize },
    #[error("topic contains '#' at byte {at}; '#' is reserved for hot sub-topics")]
    Reserved { at: usize },
    #[error("topic is not valid UTF-8")]
    NotUtf8,
}

/// Why a relay frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// More bytes are needed; nothing is wrong yet.
    #[error("incomplete frame: need more bytes")]
    Incomplete,
    /// The length prefix announces more than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The bytes are not a valid frame; the stream cannot be trusted any further.
    #[error("invalid frame: {0}")]
    Invalid(String),
}
