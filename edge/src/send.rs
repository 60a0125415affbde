//! The path from a fan-out to a client's socket.
//!
//! A delivery's WebSocket frame is built once (`frame::delivery_frame`) and the same bytes
//! are queued to every recipient. Each connection has a bounded [`SendQueue`]; its session
//! task takes every queued frame at once and hands them to the socket in one vectored
//! write ([`write_frames`]), with no copy per recipient.
//!
//! Waking a session is deferred until every lock is released (see `sessions::Wakes`): a
//! burst of relay frames fanned out under one lock wakes each recipient once, and its one
//! write carries all of that burst's frames for it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// What [`SendQueue::push`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued behind others; the session has been (or will be) woken for those.
    Queued,
    /// Queued into an empty queue: the session must be woken.
    QueuedFirst,
    /// The queue holds its bound already; the frame was not queued.
    Full,
}

/// One connection's send queue: at most `capacity` pre-framed WebSocket frames.
#[derive(Debug)]
pub(crate) struct SendQueue {
    frames: Mutex<VecDeque<Bytes>>,
    capacity: usize,
    /// Wakes the session task; a wake with no waiter is kept for its next wait.
    ready: Notify,
}

impl SendQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        SendQueue {
            frames: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
        }
    }

    /// Queues a frame without waking the session (see [`Pushed`]).
    pub(crate) fn push(&self, frame: Bytes) -> Pushed {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        if frames.len() >= self.capacity {
            return Pushed::Full;
        }
        frames.push_back(frame);
        if frames.len() == 1 {
            Pushed::QueuedFirst
        } else {
            Pushed::Queued
        }
    }

    /// Wakes the session task.
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Waits until woken.
    pub(crate) async fn woken(&self) {
        self.ready.notified().await
    }

    /// Moves up to `max` frames into `out`; wakes the session again if more remain.
    pub(crate) fn take(&self, out: &mut Vec<Bytes>, max: usize) {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let n = frames.len().min(max);
        out.extend(frames.drain(..n));
        if !frames.is_empty() {
            self.ready.notify_one();
        }
    }
}

/// Writes `frames` back to back with vectored writes (one syscall when the socket takes
/// them all), starting `*written` bytes into them. `written` counts the bytes written so
/// far, so a write cut off part way can be resumed, or the caller knows the stream holds
/// a partial frame.
pub(crate) async fn write_frames<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    frames: &[Bytes],
    written: &mut usize,
) -> std::io::Result<()> {
    /// The most buffers one vectored write passes (Linux's IOV_MAX is 1024).
    const MAX_SLICES: usize = 1024;
    // Find where `written` bytes end.
    let (mut index, mut offset) = (0, *written);
    while index < frames.len() && offset >= frames[index].len() {
        offset -= frames[index].len();
        index += 1;
    }
    while index < frames.len() {
        let n = if io.is_write_vectored() {
            let slices: Vec<IoSlice<'_>> = std::iter::once(&frames[index][offset..])
                .chain(frames[index + 1..].iter().map(|f| &f[..]))
                .take(MAX_SLICES)
                .map(IoSlice::new)
                .collect();
            io.write_vectored(&slices).await?
        } else {
            io.write(&frames[index][offset..]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        *written += n;
        // Advance past what was written.
        offset += n;
        while index < frames.len() && offset >= frames[index].len() {
            offset -= frames[index].len();
            index += 1;
        }
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::text_frame;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_full_queue_refuses_and_take_wakes_again_when_more_remain() {
        let q = SendQueue::new(3);
        assert_eq!(q.push(Bytes::from_static(b"a")), Pushed::QueuedFirst);
        assert_eq!(q.push(Bytes::from_static(b"b")), Pushed::Queued);
        assert_eq!(q.push(Bytes::from_static(b"c")), Pushed::Queued);
        assert_eq!(q.push(Bytes::from_static(b"d")), Pushed::Full);
        let mut out = Vec::new();
        q.take(&mut out, 2);
        assert_eq!(
            out,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        // One frame remains, so a wake is stored: `woken` returns at once.
        futures::executor::block_on(q.woken());
        out.clear();
        q.take(&mut out, 2);
        assert_eq!(out, vec![Bytes::from_static(b"c")]);
        assert_eq!(q.push(Bytes::from_static(b"e")), Pushed::QueuedFirst);
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_frame() {
        // A pipe with a tiny buffer forces many short writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let frames: Vec<Bytes> = (0..20)
            .map(|i| text_frame(format!("frame {i}").as_bytes()))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
        });
        let mut written = 0;
        write_frames(&mut a, &frames, &mut written).await.unwrap();
        assert_eq!(written, frames.iter().map(Bytes::len).sum::<usize>());
        reader.await.unwrap();
    }
}
