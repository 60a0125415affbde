//! Relay frames on QUIC streams between distributors and edges.
//!
//! A frame is a protobuf varint length followed by that many bytes of one
//! [`v1::RelayFrame`]. Many frames go into one QUIC write; the reader decodes them in place
//! with [`decode_frame`], which tells "need more bytes" ([`FrameError::Incomplete`]) apart
//! from "this stream is corrupt" ([`FrameError::Invalid`], [`FrameError::TooLarge`]).

use crate::error::FrameError;
use prost::Message;

/// Version 1 of the relay frames (`proto/relay.proto`).
pub mod v1 {
    tonic::include_proto!("firetower.relay.v1");
}

/// The default bound on one relay frame: a 64 KiB client payload plus topic and headers,
/// with room to spare. Larger frames are refused so a corrupt prefix cannot make a reader
/// allocate without bound.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// Appends one length-prefixed frame to `out`.
pub fn encode_frame(frame: &v1::RelayFrame, out: &mut Vec<u8>) {
    let len = frame.encoded_len();
    out.reserve(len + prost::length_delimiter_len(len));
    // Encoding into a Vec cannot run out of capacity; the only error prost returns is
    // "insufficient buffer capacity", which a growable Vec never hits.
    let _ = frame.encode_length_delimited(out);
}

/// Decodes the first frame in `buf`. On success returns the frame and how many bytes it used.
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<(v1::RelayFrame, usize), FrameError> {
    let mut cursor = buf;
    let len = match prost::decode_length_delimiter(&mut cursor) {
        Ok(len) => len,
        // A varint is at most 10 bytes; fewer bytes that do not finish one are incomplete.
        Err(_) if buf.len() < 10 && buf.iter().all(|b| b & 0x80 != 0) => {
            return Err(FrameError::Incomplete)
        }
        Err(e) => return Err(FrameError::Invalid(e.to_string())),
    };
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let prefix = buf.len() - cursor.len();
    if cursor.len() < len {
        return Err(FrameError::Incomplete);
    }
    let frame =
        v1::RelayFrame::decode(&cursor[..len]).map_err(|e| FrameError::Invalid(e.to_string()))?;
    if frame.frame.is_none() {
        return Err(FrameError::Invalid("frame has no body".into()));
    }
    Ok((frame, prefix + len))
}

#[cfg(test)]
mod tests {
    use super::v1::{relay_frame::Frame, Deliver, Interest, RelayFrame};
    use super::*;

    fn deliver(seq: u64) -> RelayFrame {
        RelayFrame {
            frame: Some(Frame::Deliver(Deliver {
                topic: "chat".into(),
                epoch: 3,
                seq,
                msg_id: seq,
                route_tag: 0,
                data: bytes::Bytes::from_static(br#"{"hello":"world"}"#),
            })),
        }
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut buf = Vec::new();
        encode_frame(&deliver(1), &mut buf);
        let interest = RelayFrame {
            frame: Some(Frame::Interest(Interest {
                topic: "t".into(),
                subscribers: 5,
                epoch: 1,
                route_since: 0,
            })),
        };
        encode_frame(&interest, &mut buf);
        let (first, used) = decode_frame(&buf, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(first, deliver(1));
        let (second, used2) = decode_frame(&buf[used..], DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(second, interest);
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let mut buf = Vec::new();
        encode_frame(&deliver(9), &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(
                decode_frame(&buf[..cut], DEFAULT_MAX_FRAME_LEN),
                Err(FrameError::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn oversize_and_garbage_are_refused() {
        let mut buf = Vec::new();
        encode_frame(&deliver(1), &mut buf);
        assert!(matches!(
            decode_frame(&buf, 4),
            Err(FrameError::TooLarge { max: 4, .. })
        ));
        // A length of 3 followed by bytes that are not a RelayFrame.
        assert!(matches!(
            decode_frame(&[3, 0xff, 0xff, 0xff], 64),
            Err(FrameError::Invalid(_))
        ));
        // An empty message decodes but carries no frame.
        assert!(matches!(
            decode_frame(&[0], 64),
            Err(FrameError::Invalid(_))
        ));
        // Eleven continuation bytes can never be a varint.
        assert!(matches!(
            decode_frame(&[0x80; 11], 64),
            Err(FrameError::Invalid(_))
        ));
    }
}
