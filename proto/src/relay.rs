//! Relay frames on QUIC streams between distributors and edges.
//!
//! A frame is a protobuf varint length followed by that many bytes of one
//! [`v1::RelayFrame`]. Many frames go into one QUIC write. Two decoders tell "need more
//! bytes" ([`FrameError::Incomplete`]) apart from "this stream is corrupt"
//! ([`FrameError::Invalid`], [`FrameError::TooLarge`]):
//!
//! - [`FrameDecoder`], the reading side of a stream: it is fed the stream's received
//!   chunks as [`Bytes`] and splits frames out of them. A frame that lies within one chunk
//!   is decoded from a slice of that chunk (`Bytes::split_to`), so its `bytes` fields (a
//!   delivery's data) share the chunk's memory: no copy. Only a frame that straddles two
//!   chunks is gathered into one buffer first (one copy of that frame).
//! - [`decode_frame`], for a caller holding a plain byte slice: its `bytes` fields are
//!   copied out of the slice.
//!
//! ```text
//!   push(chunk: Bytes) ──▶ FrameDecoder ──▶ next_frame() -> RelayFrame (data: a slice of chunk)
//!                            │ a frame split across chunks: gathered in `partial` (1 copy)
//! ```

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use crate::error::FrameError;

/// Version 1 of the relay frames (`proto/relay.proto`).
pub mod v1 {
    tonic::include_proto!("firetower.relay.v1");
}

/// The default bound on one relay frame: a 64 KiB client payload plus topic and headers,
/// with room to spare. Larger frames are refused so a corrupt prefix cannot make a reader
/// allocate without bound.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// The longest varint: a length prefix that has not ended after this many bytes is corrupt.
const MAX_PREFIX_LEN: usize = 10;

/// Appends one length-prefixed frame to `out`.
pub fn encode_frame(frame: &v1::RelayFrame, out: &mut Vec<u8>) {
    let len = frame.encoded_len();
    out.reserve(len + prost::length_delimiter_len(len));
    // Encoding into a Vec cannot run out of capacity; the only error prost returns is
    // "insufficient buffer capacity", which a growable Vec never hits.
    let _ = frame.encode_length_delimited(out);
}

/// Where the first frame in `buf` lies: `(prefix length, body length)`, once the length
/// prefix is complete. The body may not have arrived yet.
fn frame_extent(buf: &[u8], max_len: usize) -> Result<(usize, usize), FrameError> {
    let mut cursor = buf;
    let len = match prost::decode_length_delimiter(&mut cursor) {
        Ok(len) => len,
        // A varint is at most 10 bytes; fewer bytes that do not finish one are incomplete.
        Err(_) if buf.len() < MAX_PREFIX_LEN && buf.iter().all(|b| b & 0x80 != 0) => {
            return Err(FrameError::Incomplete)
        }
        Err(e) => return Err(FrameError::Invalid(e.to_string())),
    };
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    Ok((buf.len() - cursor.len(), len))
}

/// Decodes one frame body. With a [`Bytes`] body the frame's `bytes` fields are slices of
/// it (prost's `copy_to_bytes` on `Bytes` is `split_to`); with a `&[u8]` they are copies.
fn decode_body(body: impl Buf) -> Result<v1::RelayFrame, FrameError> {
    let frame = v1::RelayFrame::decode(body).map_err(|e| FrameError::Invalid(e.to_string()))?;
    if frame.frame.is_none() {
        return Err(FrameError::Invalid("frame has no body".into()));
    }
    Ok(frame)
}

/// Decodes the first frame in `buf`. On success returns the frame and how many bytes it used.
/// The frame's `bytes` fields are copied out of `buf` (see [`FrameDecoder`] for the
/// reading side of a stream, which copies nothing).
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<(v1::RelayFrame, usize), FrameError> {
    let (prefix, len) = frame_extent(buf, max_len)?;
    if buf.len() - prefix < len {
        return Err(FrameError::Incomplete);
    }
    let frame = decode_body(&buf[prefix..prefix + len])?;
    Ok((frame, prefix + len))
}

/// Splits the relay frames out of one stream's received chunks (sans-IO: the reader feeds
/// it with [`FrameDecoder::push`] and takes frames with [`FrameDecoder::next_frame`]).
///
/// Bytes are consumed in stream order: `partial` (the start of a frame that straddles
/// chunks) always comes before every byte in `chunks`.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: usize,
    /// Received chunks not yet consumed, oldest first; none is empty.
    chunks: VecDeque<Bytes>,
    /// The start of a frame that continues in a later chunk, gathered here (the only copy
    /// the decoder makes). Empty unless such a frame is being put together.
    partial: BytesMut,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            max_len,
            chunks: VecDeque::new(),
            partial: BytesMut::new(),
        }
    }

    /// Adds the next chunk of the stream.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.chunks.push_back(chunk);
        }
    }

    /// Bytes received and not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.chunks.iter().map(Bytes::len).sum::<usize>()
    }

    /// The next complete frame; `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<v1::RelayFrame>, FrameError> {
        loop {
            if self.partial.is_empty() {
                let Some(chunk) = self.chunks.front_mut() else {
                    return Ok(None);
                };
                match frame_extent(chunk, self.max_len) {
                    Ok((prefix, len)) if chunk.len() >= prefix + len => {
                        // The whole frame is in this chunk: decode from a slice of it.
                        let mut body = chunk.split_to(prefix + len);
                        if chunk.is_empty() {
                            self.chunks.pop_front();
                        }
                        body.advance(prefix);
                        return decode_body(body).map(Some);
                    }
                    // The frame (or its prefix) continues in the next chunk: this chunk is
                    // its start, all of it.
                    Ok(_) | Err(FrameError::Incomplete) => {
                        if let Some(chunk) = self.chunks.pop_front() {
                            self.partial.extend_from_slice(&chunk);
                        }
                    }
                    Err(e) => return Err(e),
                }
            } else {
                // Take from the next chunk only what this frame still lacks, so the rest of
                // that chunk can again be decoded in place.
                let want = match frame_extent(&self.partial, self.max_len) {
                    Ok((prefix, len)) if self.partial.len() >= prefix + len => {
                        let mut body = self.partial.split_to(prefix + len).freeze();
                        body.advance(prefix);
                        return decode_body(body).map(Some);
                    }
                    Ok((prefix, len)) => prefix + len - self.partial.len(),
                    Err(FrameError::Incomplete) => MAX_PREFIX_LEN - self.partial.len(),
                    Err(e) => return Err(e),
                };
                let Some(chunk) = self.chunks.front_mut() else {
                    return Ok(None);
                };
                let take = want.min(chunk.len());
                self.partial.extend_from_slice(&chunk.split_to(take));
                if chunk.is_empty() {
                    self.chunks.pop_front();
                }
            }
        }
    }
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
                ..Deliver::default()
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
                passed_epoch: 0,
                passed_seq: 0,
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
    fn an_owner_timestamp_round_trips_and_has_one_width() {
        let stamped = |at: u64| RelayFrame {
            frame: Some(Frame::Deliver(Deliver {
                sequenced_at_us: at,
                ..match deliver(1).frame {
                    Some(Frame::Deliver(d)) => d,
                    _ => Deliver::default(),
                }
            })),
        };
        let mut widths = Vec::new();
        for at in [1, 1_700_000_000_000_000, u64::MAX] {
            let mut buf = Vec::new();
            encode_frame(&stamped(at), &mut buf);
            let (frame, used) = decode_frame(&buf, DEFAULT_MAX_FRAME_LEN).unwrap();
            assert_eq!(frame, stamped(at));
            assert_eq!(used, buf.len());
            widths.push(buf.len());
        }
        // fixed64: the frame's size does not depend on the clock (the simulator's packets
        // must not), and an unstamped frame is 9 bytes shorter (tag + 8).
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{widths:?}");
        let mut unstamped = Vec::new();
        encode_frame(&deliver(1), &mut unstamped);
        assert_eq!(unstamped.len() + 9, widths[0]);
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

    fn stream_of(frames: &[RelayFrame]) -> Vec<u8> {
        let mut buf = Vec::new();
        for f in frames {
            encode_frame(f, &mut buf);
        }
        buf
    }

    fn drain(decoder: &mut FrameDecoder) -> Vec<RelayFrame> {
        std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
    }

    #[test]
    fn the_decoder_finds_every_frame_whatever_the_chunking() {
        let frames: Vec<RelayFrame> = (1..=6).map(deliver).collect();
        let stream = stream_of(&frames);
        // Every pair of cut points: chunks of every size, frames and prefixes split anywhere.
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
                let mut got = Vec::new();
                for piece in [&stream[..a], &stream[a..b], &stream[b..]] {
                    decoder.push(Bytes::copy_from_slice(piece));
                    got.extend(drain(&mut decoder));
                }
                assert_eq!(got, frames, "cuts at {a} and {b}");
                assert_eq!(decoder.buffered(), 0);
            }
        }
        // One byte at a time.
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        let mut got = Vec::new();
        for byte in &stream {
            decoder.push(Bytes::copy_from_slice(&[*byte]));
            got.extend(drain(&mut decoder));
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn a_frame_within_one_chunk_shares_the_chunk() {
        let frames: Vec<RelayFrame> = (1..=3).map(deliver).collect();
        let chunk = Bytes::from(stream_of(&frames));
        let range = chunk.as_ptr_range();
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        decoder.push(chunk.clone());
        for frame in drain(&mut decoder) {
            let Some(Frame::Deliver(d)) = frame.frame else {
                panic!("not a delivery");
            };
            assert!(range.contains(&d.data.as_ptr()), "data was copied");
        }
        // A straddling frame is gathered once; the frame after it is in place again.
        let stream = stream_of(&frames);
        let (first, rest) = stream.split_at(stream.len() / 2);
        let (first, rest) = (Bytes::copy_from_slice(first), Bytes::copy_from_slice(rest));
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        decoder.push(first);
        decoder.push(rest.clone());
        let got = drain(&mut decoder);
        assert_eq!(got, frames);
        let Some(Frame::Deliver(last)) = &got[2].frame else {
            panic!("not a delivery");
        };
        assert!(rest.as_ptr_range().contains(&last.data.as_ptr()));
    }

    #[test]
    fn the_decoder_refuses_what_decode_frame_refuses() {
        let mut decoder = FrameDecoder::new(4);
        decoder.push(Bytes::from(stream_of(&[deliver(1)])));
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { max: 4, .. })
        ));
        let mut decoder = FrameDecoder::new(64);
        decoder.push(Bytes::from_static(&[3, 0xff]));
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.push(Bytes::from_static(&[0xff, 0xff]));
        assert!(matches!(decoder.next_frame(), Err(FrameError::Invalid(_))));
        let mut decoder = FrameDecoder::new(64);
        for _ in 0..11 {
            decoder.push(Bytes::from_static(&[0x80]));
        }
        assert!(matches!(decoder.next_frame(), Err(FrameError::Invalid(_))));
    }
}
