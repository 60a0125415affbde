//! A message's relay frame, built once and encoded once, outside the core's lock.
//!
//! The core decides a message's `(epoch, seq)` and its edges under the node's lock and
//! queues the same [`Delivery`] on each edge's lane (and in the replay history). The first
//! lane writer that sends it encodes it; every other lane and every replay reuses those
//! bytes. So the payload is copied once into the frame per message, not once per edge, and
//! no protobuf is encoded while the lock is held.
//!
//! The owner's timestamp (`sequenced_at_us`, for the edges' publish-to-delivery latency) is
//! not the core's: the core has no wall clock. The shell stamps a delivery once, when it
//! queues it on the lanes ([`Delivery::stamp`]), before any lane writer encodes it.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Counts the stamp, stamped or not.
    len: usize,
    /// The owner's wall clock when the shell queued it, µs since the Unix epoch (0: not
    /// stamped). Set once, before the first encoding.
    stamp: AtomicU64,
    encoded: OnceLock<Bytes>,
}

/// The stamp's bytes in the frame: its tag and a `fixed64`.
const STAMP_LEN: usize = 1 + 8;

impl Delivery {
    pub fn new(deliver: Deliver) -> Self {
        // The oneof's tag and length, then the message, then the frame's length prefix.
        let body = deliver.encoded_len();
        let body = body + STAMP_LEN;
        let len = 1 + prost::encoding::encoded_len_varint(body as u64) + body + 5;
        let stamp = AtomicU64::new(deliver.sequenced_at_us);
        Delivery(Arc::new(Inner {
            deliver,
            len,
            stamp,
            encoded: OnceLock::new(),
        }))
    }

    /// Stamps it with the owner's wall clock (µs since the Unix epoch), unless it has a
    /// stamp already. The shell calls it when it first queues the delivery, before a lane
    /// writer can encode it; a stamp after that would not be sent.
    pub fn stamp(&self, unix_us: u64) {
        let _ = self
            .0
            .stamp
            .compare_exchange(0, unix_us, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Its stamp (0: none).
    pub fn stamped_at_us(&self) -> u64 {
        self.0.stamp.load(Ordering::Relaxed)
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
                let mut deliver = self.0.deliver.clone();
                deliver.sequenced_at_us = self.stamped_at_us();
                firetower_net::relay::encode(&RelayFrame {
                    frame: Some(Frame::Deliver(deliver)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_proto::relay::{decode_frame, DEFAULT_MAX_FRAME_LEN};

    fn delivery() -> Delivery {
        Delivery::new(Deliver {
            topic: "chat".into(),
            epoch: 2,
            seq: 7,
            data: Bytes::from_static(br#"{"a":1}"#),
            msg_id: 9,
            ..Deliver::default()
        })
    }

    fn decoded(delivery: &Delivery) -> Deliver {
        match decode_frame(&delivery.frame(), DEFAULT_MAX_FRAME_LEN) {
            Ok((
                RelayFrame {
                    frame: Some(Frame::Deliver(d)),
                },
                _,
            )) => d,
            other => panic!("not a delivery: {other:?}"),
        }
    }

    #[test]
    fn the_first_stamp_is_sent_and_the_length_counts_it() {
        let d = delivery();
        d.stamp(1_700_000_000_000_000);
        d.stamp(5); // a second stamp (a replay) keeps the first
        assert_eq!(d.stamped_at_us(), 1_700_000_000_000_000);
        let frame = d.frame();
        assert_eq!(decoded(&d).sequenced_at_us, 1_700_000_000_000_000);
        // The estimate covers the frame (its prefix is counted at its widest).
        assert!(
            d.len() >= frame.len() && d.len() <= frame.len() + 4,
            "{} vs {}",
            d.len(),
            frame.len()
        );
        // Unstamped: no stamp on the wire, within the same estimate.
        let plain = delivery();
        assert_eq!(decoded(&plain).sequenced_at_us, 0);
        assert_eq!(plain.len(), d.len());
    }
}
