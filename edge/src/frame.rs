//! Client frames as they go on the wire: WebSocket text frames (unmasked, server to client)
//! around the JSON of [`firetower_proto::client`]. Pure functions, no I/O.
//!
//! A delivery's frame is built by [`delivery_frame`] in one allocation: WebSocket header,
//! JSON envelope and the payload copied in once. Every recipient's send queue then shares
//! those bytes (a `Bytes` clone each).

use std::fmt::Write as _;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest WebSocket header of an unmasked frame: opcode byte, 127, 8 length bytes.
const MAX_HEADER: usize = 10;

/// Writes the header of a final text frame carrying `len` payload bytes at the end of
/// `head` (which is [`MAX_HEADER`] bytes long); returns how many bytes it used.
fn put_header(head: &mut [u8], len: usize) -> usize {
    let mut header = [0u8; MAX_HEADER];
    header[0] = 0x81; // FIN, opcode text
    let used = if len < 126 {
        header[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    head[MAX_HEADER - used..].copy_from_slice(&header[..used]);
    used
}

/// Frames a text payload as one unmasked (server-to-client) WebSocket frame.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + MAX_HEADER);
    out.put_bytes(0, MAX_HEADER);
    out.put_slice(payload);
    finish(out)
}

/// Fills in the header of a frame whose payload follows [`MAX_HEADER`] reserved bytes, and
/// drops the unused part of that reserve (moving the start, not the bytes).
fn finish(mut out: BytesMut) -> Bytes {
    let len = out.len() - MAX_HEADER;
    let used = put_header(&mut out[..MAX_HEADER], len);
    out.advance(MAX_HEADER - used);
    out.freeze()
}

/// The WebSocket frame of a delivery: the same bytes as
/// `text_frame(&encode_delivery(topic, data, epoch, seq))`, built with one allocation and
/// one copy of `data`. `data` must be one JSON value (the core checked it is UTF-8; the
/// distributor validated it as JSON when it was published).
pub(crate) fn delivery_frame(topic: &str, data: &str, epoch: u64, seq: u64) -> Bytes {
    // Envelope: {"type":"publish","topic":…,"data":…,"epoch":…,"seq":…}: at most 91 bytes
    // besides the quoted topic and the data (two 20-digit numbers). The quoted topic is at
    // most 2 + its length + 5 per character that JSON escapes. Sized exactly so the buffer
    // never grows (which would copy the payload a second time).
    let escapes = topic
        .bytes()
        .filter(|b| matches!(b, b'"' | b'\\') || *b < 0x20)
        .count();
    let capacity = MAX_HEADER + 91 + topic.len() + 2 + 5 * escapes + data.len();
    let mut out = BytesMut::with_capacity(capacity);
    out.put_bytes(0, MAX_HEADER);
    out.put_slice(br#"{"type":"publish","topic":"#);
    // Serializing a &str into a growable buffer cannot fail.
    let _ = serde_json::to_writer((&mut out).writer(), topic);
    out.put_slice(br#","data":"#);
    out.put_slice(data.as_bytes());
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, r#","epoch":{epoch},"seq":{seq}}}"#);
    debug_assert!(
        out.len() <= capacity,
        "the delivery frame outgrew its estimate"
    );
    finish(out)
}

/// The payload of one complete frame built here (the JSON), for tests and inspection.
pub(crate) fn payload(frame: &[u8]) -> &[u8] {
    let skip = match frame.get(1) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => frame.len(),
    };
    frame.get(skip..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_proto::client::encode_delivery;

    #[test]
    fn frames_carry_the_right_length_encoding() {
        let short = text_frame(b"hi");
        assert_eq!(&short[..], b"\x81\x02hi");
        let medium = text_frame(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
        let long = text_frame(&vec![b'b'; 70_000]);
        assert_eq!(long[1], 127);
        assert_eq!(u64::from_be_bytes(long[2..10].try_into().unwrap()), 70_000);
        assert_eq!(long.len(), 70_010);
        assert_eq!(payload(&long), &vec![b'b'; 70_000][..]);
        assert_eq!(payload(&short), b"hi");
    }

    #[test]
    fn a_delivery_frame_is_the_framed_envelope() {
        let topics = ["chat", "a\"b\\c", "ünï/cødé", "live#3"];
        // Payload lengths around each header-size boundary.
        let sizes = [0usize, 1, 60, 70, 125, 126, 300, 65_400, 65_600, 70_000];
        for topic in topics {
            for size in sizes {
                let data = format!("\"{}\"", "x".repeat(size));
                for (epoch, seq) in [(0, 0), (7, 123_456), (u64::MAX, u64::MAX)] {
                    let expected = text_frame(&encode_delivery(topic, &data, epoch, seq));
                    let got = delivery_frame(topic, &data, epoch, seq);
                    assert_eq!(got, expected, "topic {topic:?}, {size} bytes");
                    assert_eq!(
                        payload(&got),
                        &encode_delivery(topic, &data, epoch, seq)[..]
                    );
                }
            }
        }
    }
}
