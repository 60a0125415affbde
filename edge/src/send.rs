//! The path from a fan-out to a client's socket.
//!
//! A delivery's WebSocket frame is built once (`frame::delivery_frame`) and the same bytes
//! are queued to every recipient. Each connection has a [`SendQueue`] bounded in bytes (see
//! [`crate::flow`]); its session task takes every queued frame at once and hands them to the
//! socket in one vectored write ([`write_frames`]), with no copy per recipient. A frame's
//! bytes count against the connection's budget and the edge's total until its write has
//! completed.
//!
//! Waking a session is deferred until every lock is released (see `sessions::Wakes`): a
//! burst of relay frames fanned out under one lock wakes each recipient once, and its one
//! write carries all of that burst's frames for it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::counters::Counters;
use crate::flow::{ConnBudget, FlowLimits, Slow};

/// The edge-wide side of flow control, shared by every send queue and the lane readers.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) limits: FlowLimits,
    /// The counters, whose `queued_bytes` gauge is the bytes queued over all connections.
    counters: Arc<Counters>,
    /// Wakes every paused lane reader when one may go on: a connection came back within
    /// its budget, or is closing, or is gone, or the total dropped below the low watermark.
    changed: Notify,
}

impl Flow {
    pub(crate) fn new(limits: FlowLimits, counters: Arc<Counters>) -> Self {
        Flow {
            limits,
            counters,
            changed: Notify::new(),
        }
    }

    fn gauge(&self) -> &AtomicU64 {
        &self.counters.queued_bytes
    }

    /// Bytes queued over all connections.
    pub(crate) fn total(&self) -> usize {
        self.gauge().load(Ordering::Relaxed) as usize
    }

    /// A future that completes at the next change (see [`Flow::changed`]). Enable it
    /// before looking at the state it waits on, so no change falls in between.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Counts `bytes` about to be queued (see [`SendQueue::push`]): once per fan-out, not
    /// once per recipient, to keep the shared gauge off the per-recipient path.
    pub(crate) fn reserve(&self, bytes: usize) {
        self.gauge().fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Takes back reserved bytes that were not queued.
    pub(crate) fn unreserve(&self, bytes: usize) {
        if bytes > 0 {
            self.release(bytes, false);
        }
    }

    /// Takes `bytes` off the total; `back_within`: a connection came back within its
    /// budget (or stopped counting) meanwhile.
    fn release(&self, bytes: usize, back_within: bool) {
        let before = self.gauge().fetch_sub(bytes as u64, Ordering::Relaxed) as usize;
        let low = self.limits.low();
        if back_within || (before >= low && before.saturating_sub(bytes) < low) {
            self.changed.notify_waiters();
        }
    }
}

/// What [`SendQueue::push`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued. `first`: into an empty queue, so the session must be woken; `over`: the
    /// queue is over its budget now.
    Queued { first: bool, over: bool },
    /// Not queued: the connection is closing (counted in `frames_dropped`).
    Closing,
    /// Not queued: it would take the queue past its hard cap. The queue is closing from
    /// now on; the caller closes the connection.
    HardCap(Slow),
}

/// Whether a connection holds up a lane reader that queued frames to it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Blocking {
    /// No: within its budget, closing or gone.
    No,
    /// Yes, until it drains or this deadline, when it becomes slow.
    Until(Instant),
    /// It is slow: close it.
    Slow(Slow),
}

#[derive(Debug, Default)]
struct QueueState {
    /// Framed WebSocket frames, not yet taken by the session.
    frames: VecDeque<Bytes>,
    /// Bytes queued here and in the batch being written.
    budget: ConnBudget,
    /// Set when the connection is being closed: nothing more is queued.
    closing: bool,
}

/// One connection's send queue: pre-framed WebSocket frames, bounded in bytes.
#[derive(Debug)]
pub(crate) struct SendQueue {
    state: Mutex<QueueState>,
    flow: Arc<Flow>,
    /// Wakes the session task; a wake with no waiter is kept for its next wait.
    ready: Notify,
}

impl SendQueue {
    pub(crate) fn new(flow: Arc<Flow>) -> Self {
        SendQueue {
            state: Mutex::new(QueueState::default()),
            flow,
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waking the session (see [`Pushed`]). Its bytes must have
    /// been counted in the edge's total already ([`Flow::reserve`]); when the frame is not
    /// queued, the caller takes them back ([`Flow::unreserve`]).
    #[cfg(test)]
    pub(crate) fn push(&self, now: Instant, frame: Bytes) -> Pushed {
        self.push_all(now, std::slice::from_ref(&frame)).1
    }

    /// Queues frames in order under one lock, like [`SendQueue::push`] for each: returns
    /// how many were queued (all, none, or the ones before the frame that would have passed
    /// the hard cap) and how it ended (`first`: the queue was empty before).
    pub(crate) fn push_all(&self, now: Instant, frames: &[Bytes]) -> (usize, Pushed) {
        let mut state = self.lock();
        if state.closing {
            return (0, Pushed::Closing);
        }
        let first = state.frames.is_empty() && !frames.is_empty();
        let mut over = false;
        for (queued, frame) in frames.iter().enumerate() {
            match state.budget.queue(&self.flow.limits, now, frame.len()) {
                Ok(now_over) => {
                    over = now_over;
                    state.frames.push_back(frame.clone());
                }
                Err(slow) => {
                    state.closing = true;
                    drop(state);
                    // Lanes waiting for it to drain go on.
                    self.flow.changed.notify_waiters();
                    return (queued, Pushed::HardCap(slow));
                }
            }
        }
        (frames.len(), Pushed::Queued { first, over })
    }

    /// Wakes the session task.
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Waits until woken.
    pub(crate) async fn woken(&self) {
        self.ready.notified().await
    }

    /// Moves up to `max` frames into `out`; wakes the session again if more remain. Their
    /// bytes count until [`SendQueue::written`].
    pub(crate) fn take(&self, out: &mut Vec<Bytes>, max: usize) {
        let mut state = self.lock();
        let n = state.frames.len().min(max);
        out.extend(state.frames.drain(..n));
        if !state.frames.is_empty() {
            self.ready.notify_one();
        }
    }

    /// `bytes` of taken frames reached the socket.
    pub(crate) fn written(&self, bytes: usize) {
        let back_within = self.lock().budget.drain(&self.flow.limits, bytes);
        self.flow.release(bytes, back_within);
    }

    /// Nothing more is queued from now on (the connection is being closed). True the
    /// first time.
    pub(crate) fn close(&self) -> bool {
        let mut state = self.lock();
        if state.closing {
            return false;
        }
        state.closing = true;
        let was_over = state.budget.over_budget();
        drop(state);
        if was_over {
            self.flow.changed.notify_waiters();
        }
        true
    }

    /// The connection is gone: its bytes, queued or being written, stop counting.
    pub(crate) fn release(&self) {
        let mut state = self.lock();
        state.closing = true;
        state.frames.clear();
        let budget = std::mem::take(&mut state.budget);
        drop(state);
        self.flow.release(budget.queued(), budget.over_budget());
    }

    /// Whether this connection holds up a lane that queued frames to it, at `now`.
    pub(crate) fn blocking(&self, now: Instant) -> Blocking {
        let state = self.lock();
        if state.closing || !state.budget.over_budget() {
            return Blocking::No;
        }
        let limits = &self.flow.limits;
        if let Some(slow) = state.budget.slow(limits, now) {
            return Blocking::Slow(slow);
        }
        match state.budget.slow_deadline(limits) {
            Some(deadline) => Blocking::Until(deadline),
            None => Blocking::No,
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

    fn flow() -> Arc<Flow> {
        let limits = FlowLimits {
            budget: 2,
            hard_cap: 4,
            slow_after: std::time::Duration::from_secs(1),
            high: 8,
        };
        Arc::new(Flow::new(limits, Arc::default()))
    }

    #[test]
    fn bytes_count_until_written_and_take_wakes_again_when_more_remain() {
        let flow = flow();
        let q = SendQueue::new(flow.clone());
        let now = Instant::now();
        let b = |bytes: &'static [u8]| {
            flow.reserve(bytes.len());
            Bytes::from_static(bytes)
        };
        assert_eq!(
            q.push(now, b(b"a")),
            Pushed::Queued {
                first: true,
                over: false
            }
        );
        assert_eq!(
            q.push(now, b(b"b")),
            Pushed::Queued {
                first: false,
                over: false
            }
        );
        assert_eq!(
            q.push(now, b(b"c")),
            Pushed::Queued {
                first: false,
                over: true
            }
        );
        assert_eq!(flow.total(), 3);
        assert_eq!(
            q.blocking(now),
            Blocking::Until(now + std::time::Duration::from_secs(1))
        );
        let mut out = Vec::new();
        q.take(&mut out, 2);
        assert_eq!(
            out,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        // Taken is not written: still counted, still over.
        assert_eq!(flow.total(), 3);
        assert!(matches!(q.blocking(now), Blocking::Until(_)));
        // One frame remains, so a wake is stored: `woken` returns at once.
        futures::executor::block_on(q.woken());
        q.written(2);
        assert_eq!(flow.total(), 1);
        assert_eq!(q.blocking(now), Blocking::No);
        out.clear();
        q.take(&mut out, 2);
        assert_eq!(out, vec![Bytes::from_static(b"c")]);
        assert_eq!(
            q.push(now, b(b"e")),
            Pushed::Queued {
                first: true,
                over: false
            }
        );
        // Two more bytes reach the hard cap of 4 bytes; one more would pass it.
        assert_eq!(
            q.push(now, b(b"ff")),
            Pushed::Queued {
                first: false,
                over: true
            }
        );
        assert_eq!(
            q.push(now, b(b"g")),
            Pushed::HardCap(Slow::HardCap { hard_cap: 4 })
        );
        assert_eq!(q.push(now, b(b"h")), Pushed::Closing);
        // Refused frames are taken back by the caller.
        flow.unreserve(2);
        assert_eq!(flow.total(), 4);
        assert_eq!(q.blocking(now), Blocking::No, "closing holds nobody up");
        q.release();
        assert_eq!(flow.total(), 0);
    }

    #[test]
    fn a_queue_over_budget_for_slow_after_is_slow() {
        let q = SendQueue::new(flow());
        let now = Instant::now();
        assert!(matches!(
            q.push(now, Bytes::from_static(b"abc")),
            Pushed::Queued { over: true, .. }
        ));
        let later = now + std::time::Duration::from_secs(1);
        assert!(matches!(
            q.blocking(later),
            Blocking::Slow(Slow::OverBudget { .. })
        ));
        assert!(q.close());
        assert!(!q.close(), "closed once");
        assert_eq!(q.blocking(later), Blocking::No);
    }

    #[test]
    fn push_all_queues_in_order_up_to_the_frame_that_would_pass_the_hard_cap() {
        let flow = flow();
        let q = SendQueue::new(flow.clone());
        let now = Instant::now();
        let frames: Vec<Bytes> = [&b"a"[..], b"bc", b"d", b"e"]
            .iter()
            .map(|b| Bytes::copy_from_slice(b))
            .collect();
        assert_eq!(
            q.push_all(now, &frames[..2]),
            (
                2,
                Pushed::Queued {
                    first: true,
                    over: true
                }
            )
        );
        // 3 bytes queued, hard cap 4: "d" fits, "e" would pass it.
        assert_eq!(
            q.push_all(now, &frames[2..]),
            (1, Pushed::HardCap(Slow::HardCap { hard_cap: 4 }))
        );
        let mut out = Vec::new();
        q.take(&mut out, 10);
        assert_eq!(out, frames[..3].to_vec());
        assert_eq!(q.push_all(now, &frames[..1]), (0, Pushed::Closing));
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
