//! A message's relay frame, built once and encoded once, outside the core's lock.
//!
//! The core decides a message's `(epoch, seq)` and its edges under the node's lock and
//! queues the same [`Delivery`] on each edge's lane (and in the replay history). The first
//! lane writer that sends it encodes it; every other lane and every replay reuses those
//! bytes. So the payload is copied once into the frame per message, not once per edge, and
//! no protobuf is encoded while the lock is held.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use firetower_proto::relay::v1::{relay_frame::Frame, Deliver, RelayFrame};
use prost::Message as _;

/// A shared, lazily encoded `Deliver` frame.
#[derive(Clone, Debug)]
pub struct Delivery(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    deliver: Deliver,
    /// The frame's size with its length prefix, known without encoding it (history bounds).
    len: usize,
    encoded: OnceLock<Bytes>,
}

impl Delivery {
    pub fn new(deliver: Deliver) -> Self {
        // The oneof's tag and length, then the message, then the frame's length prefix.
        let body = deliver.encoded_len();
        let len = 1 + prost::encoding::encoded_len_varint(body as u64) + body + 5;
        Delivery(Arc::new(Inner {
            deliver,
            len,
            encoded: OnceLock::new(),
        }))
    }

    /// The `Deliver` it carries.
    pub fn deliver(&self) -> &Deliver {
        &self.0.deliver
    }

    /// The encoded frame's length in bytes (prefix included).
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Never empty: a frame has at least its prefix.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The encoded frame with its length prefix, encoded at the first call.
    pub fn frame(&self) -> Bytes {
        self.0
            .encoded
            .get_or_init(|| {
                // Clones the topic and a handle to the payload, not the payload.
                firetower_net::relay::encode(&RelayFrame {
                    frame: Some(Frame::Deliver(self.0.deliver.clone())),
                })
            })
            .clone()
    }
}

impl From<Delivery> for Bytes {
    fn from(delivery: Delivery) -> Bytes {
        delivery.frame()
    }
}
