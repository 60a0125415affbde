//! The QUIC relay between distributors and edges: framing on streams, shared by both ends.
//!
//! One connection per distributor–edge pair, opened by the edge. The edge opens one
//! bidirectional *control* stream and sends `Hello` first; `Interest`, `SlotsSynced` and
//! `ClientPublish` follow on it, and the distributor answers `InterestAck` (and `Kick`) on
//! its other half. The distributor opens `relay_lanes` unidirectional *lanes* for
//! `Deliver` frames; a topic always uses lane `slot(topic) % lanes`, so per-topic order
//! holds while a large message on one lane does not stall the others.
//!
//! Every stream has one writer task that takes every queued frame (up to
//! [`MAX_FRAMES_PER_WRITE`]) and hands them to QUIC in one call: [`write_frames`] for
//! frames encoded by whoever queued them, [`write_relay_frames`] for frames queued as
//! [`RelayFrame`] values, which it encodes itself (so that the edge never encodes a frame
//! while it holds its core's lock, and the queue keeps their order).

use bytes::Bytes;
use firetower_proto::relay::v1::RelayFrame;
use firetower_proto::relay::{encode_frame, FrameDecoder, DEFAULT_MAX_FRAME_LEN};
use firetower_proto::FrameError;
use prost::Message as _;
use tokio::sync::mpsc;

/// The most frames one write takes from a queue: bounds the work between two checks of
/// the queue and the memory one batch pins.
pub const MAX_FRAMES_PER_WRITE: usize = 512;

/// The most received segments (about one QUIC packet each) a stream reader takes from
/// QUIC at a time: a burst of frames is then handled in one batch.
const READ_CHUNKS: usize = 64;

/// Application close codes of the relay connection.
pub mod close_code {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The first frame was not Hello, or the cluster names differ.
    pub const BAD_HELLO: u32 = 1;
    /// A frame could not be decoded.
    pub const BAD_FRAME: u32 = 2;
    /// The peer could not keep up: a lane queue overflowed.
    pub const OVERLOADED: u32 = 3;
    /// A newer connection of the same edge replaced this one.
    pub const REPLACED: u32 = 4;
}

/// Encodes one frame with its length prefix.
pub fn encode(frame: &RelayFrame) -> Bytes {
    let mut out = Vec::with_capacity(frame.encoded_len() + 5);
    encode_frame(frame, &mut out);
    Bytes::from(out)
}

/// Why a stream stopped yielding frames.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stream: {0}")]
    Stream(String),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
}

/// Reads length-prefixed frames from one QUIC receive stream.
///
/// The chunks QUIC hands out are [`Bytes`] (slices of the received packets); they go to a
/// [`FrameDecoder`] as they are, so a frame within one chunk is decoded in place and its
/// payload is never copied (see [`firetower_proto::relay`]).
pub struct FrameReader {
    stream: quinn::RecvStream,
    decoder: FrameDecoder,
    chunks: Vec<Bytes>,
}

impl FrameReader {
    pub fn new(stream: quinn::RecvStream) -> Self {
        FrameReader {
            stream,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_LEN),
            chunks: vec![Bytes::new(); READ_CHUNKS],
        }
    }

    /// Every frame that is complete after one read (at least one); `Ok(false)` at a clean
    /// end of stream. Lets a reader handle a burst under one lock.
    pub async fn next_batch(&mut self, out: &mut Vec<RelayFrame>) -> Result<bool, ReadError> {
        match self.next().await? {
            Some(frame) => out.push(frame),
            None => return Ok(false),
        }
        while let Some(frame) = self.decoder.next_frame()? {
            out.push(frame);
        }
        Ok(true)
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<RelayFrame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            match self
                .stream
                .read_chunks(&mut self.chunks)
                .await
                .map_err(|e| ReadError::Stream(e.to_string()))?
            {
                Some(n) => {
                    for chunk in &mut self.chunks[..n] {
                        self.decoder.push(std::mem::take(chunk));
                    }
                }
                None if self.decoder.buffered() == 0 => return Ok(None),
                None => {
                    return Err(ReadError::Stream(format!(
                        "stream ended inside a frame ({} bytes left)",
                        self.decoder.buffered()
                    )))
                }
            }
        }
    }
}

/// Writes every frame from `queue` to `stream`, batching what is queued into one write,
/// until the queue closes (then finishes the stream) or the stream fails.
pub async fn write_frames<F>(mut stream: quinn::SendStream, mut queue: mpsc::Receiver<F>)
where
    F: Into<Bytes> + Send + 'static,
{
    let mut batch: Vec<Bytes> = Vec::with_capacity(16);
    while let Some(first) = queue.recv().await {
        batch.push(first.into());
        while batch.len() < MAX_FRAMES_PER_WRITE {
            match queue.try_recv() {
                Ok(frame) => batch.push(frame.into()),
                Err(_) => break,
            }
        }
        if stream.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = stream.finish();
}

/// Like [`write_frames`], for frames queued unencoded: the writer encodes each batch into
/// one buffer (one QUIC write), outside whatever lock the producers held when they queued.
pub async fn write_relay_frames(
    mut stream: quinn::SendStream,
    mut queue: mpsc::Receiver<RelayFrame>,
) {
    let mut batch: Vec<RelayFrame> = Vec::with_capacity(16);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_FRAMES_PER_WRITE {
            match queue.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        let mut out = Vec::with_capacity(batch.iter().map(|f| f.encoded_len() + 5).sum::<usize>());
        for frame in batch.drain(..) {
            encode_frame(&frame, &mut out);
        }
        // Handed to QUIC as one owned chunk: no further copy.
        if stream
            .write_all_chunks(&mut [Bytes::from(out)])
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = stream.finish();
}
