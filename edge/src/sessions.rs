//! The session registry: every open WebSocket connection's send queue, identity, closer
//! and read gate, and the slow-consumer rules (see [`crate::flow`]) applied to them.
//!
//! Frames reach a connection two ways, both through here: the core's outputs, queued by
//! the runner (`node::Edge::apply`) while it holds the core's lock, so that every queue
//! sees each topic's messages (and a subscribe's ack before the topic's first delivery)
//! in the core's order; and the session's own answers (a malformed frame, a refused
//! subscribe or publish), queued by [`Sessions::send_error`] without the core's lock.
//!
//! Waking a session is deferred until every lock is released ([`Wakes`]): a burst fanned
//! out under one lock wakes each recipient once, and its one write carries all of that
//! burst's frames for it.
//!
//! Lock order: the registry's lock is taken after the core's (by the runner, which may
//! also hold the link table's) or alone; outside the runner no other lock is taken while
//! it is held.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use firetower_proto::client::{encode_error, ClientError};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::core::{ConnId, Fanout};
use crate::counters::Counters;
use crate::flow::{FlowLimits, Slow};
use crate::frame::text_frame;
use crate::hooks::Identity;
use crate::send::{Blocking, Flow, Pushed, SendQueue};

/// Close code: no pong (or any frame) within the pong timeout.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
/// Close code: the client could not keep up with its deliveries.
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
/// Close code: an administrator kicked the connection's user (KickUser).
pub const CLOSE_KICKED: u16 = 4002;
/// Close code: a publish of the connection has no known outcome (its relay link was lost,
/// or its distributor did not answer in time). It may still be sequenced later, so a
/// later publish on the same connection could overtake it: the stream ends here, and the
/// client reconnects (and recovers what it subscribed to).
pub const CLOSE_PUBLISH_UNCERTAIN: u16 = 4003;

/// Tells a connection task to close with a code and reason.
#[derive(Debug, Default)]
pub(crate) struct Closer {
    reason: Mutex<Option<(u16, String)>>,
    pub(crate) notify: Notify,
}

impl Closer {
    pub(crate) fn close(&self, code: u16, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some((code, reason));
            self.notify.notify_one();
        }
    }

    pub(crate) fn reason(&self) -> Option<(u16, String)> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Whether a session reads its socket: paused while a publish it read waits for room on
/// a relay link or for its topic's earlier publishes (see `core::publish`). Writing goes on
/// meanwhile; TCP pushes back on the publishing client.
#[derive(Debug, Default)]
pub(crate) struct ReadGate {
    paused: AtomicBool,
    /// Wakes the session when reading resumes; a wake with no waiter is kept.
    resumed: Notify,
}

impl ReadGate {
    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    fn set(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        if !paused {
            self.resumed.notify_one();
        }
    }

    /// Waits until reading may have resumed (check [`ReadGate::paused`] again).
    pub(crate) async fn resumed(&self) {
        self.resumed.notified().await
    }
}

/// One open connection.
struct Session {
    /// What its session task writes to the socket.
    queue: Arc<SendQueue>,
    /// How the registry closes it (slow client, kick, shutdown).
    closer: Arc<Closer>,
    /// Whether its session task reads its socket (publishes held by the core).
    reads: Arc<ReadGate>,
    /// For the hooks the runner calls on its behalf, and for kicks by user id.
    identity: Arc<Identity>,
}

/// Hashes a [`ConnId`] by one multiplication (Fibonacci hashing). Connection ids are
/// numbered by this edge, not chosen by clients, so no one can aim collisions at the table;
/// the default SipHash was about 8 % of the edge's CPU at full fan-out (one lookup per
/// recipient per message).
#[derive(Default, Clone, Copy)]
pub(crate) struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; this keeps any other key correct, if slower.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by connection id, with [`ConnIdHasher`].
pub(crate) type ConnMap<V> = HashMap<ConnId, V, BuildHasherDefault<ConnIdHasher>>;
type ConnSet = HashSet<ConnId, BuildHasherDefault<ConnIdHasher>>;

/// What queueing frames under a lock left for after it: the sessions to wake, and the
/// connections that are now over their budget (a lane reader waits for them).
#[derive(Default)]
pub(crate) struct Wakes {
    queues: Vec<Arc<SendQueue>>,
    over: Vec<ConnId>,
    /// `over` as a set, to list each connection once.
    over_set: ConnSet,
}

impl Wakes {
    /// Wakes every queued session. Call only with no lock held. Returns the connections
    /// that were over their budget after a frame was queued to them.
    pub(crate) fn wake_all(self) -> Vec<ConnId> {
        for queue in self.queues {
            queue.wake();
        }
        self.over
    }

    fn over(&mut self, conn: ConnId) {
        if self.over_set.insert(conn) {
            self.over.push(conn);
        }
    }
}

/// The registry of open connections.
pub(crate) struct Sessions {
    table: Mutex<ConnMap<Session>>,
    /// The byte bounds and the edge's queued total, shared with every send queue.
    flow: Arc<Flow>,
    counters: Arc<Counters>,
}

impl Sessions {
    pub(crate) fn new(config: &Config, counters: Arc<Counters>) -> Self {
        Sessions {
            table: Mutex::new(ConnMap::default()),
            flow: Arc::new(Flow::new(FlowLimits::from_config(config), counters.clone())),
            counters,
        }
    }

    pub(crate) fn flow(&self) -> &Flow {
        &self.flow
    }

    /// The locked registry, for queueing many frames in one go.
    pub(crate) fn lock(&self) -> SessionTable<'_> {
        SessionTable {
            table: self.table.lock().unwrap_or_else(|p| p.into_inner()),
            sessions: self,
        }
    }

    /// Registers a new connection; returns its send queue and read gate.
    pub(crate) fn add(
        &self,
        conn: ConnId,
        identity: Arc<Identity>,
        closer: Arc<Closer>,
    ) -> (Arc<SendQueue>, Arc<ReadGate>) {
        let queue = Arc::new(SendQueue::new(self.flow.clone()));
        let reads = Arc::new(ReadGate::default());
        self.lock().table.insert(
            conn,
            Session {
                queue: queue.clone(),
                closer,
                reads: reads.clone(),
                identity,
            },
        );
        (queue, reads)
    }

    /// The connection is gone: what it had queued stops counting.
    pub(crate) fn remove(&self, conn: ConnId) {
        let session = self.lock().table.remove(&conn);
        if let Some(session) = session {
            session.queue.release();
        }
    }

    /// Queues an error frame to one connection (the session's own answer to its client).
    pub(crate) fn send_error(&self, conn: ConnId, error: &ClientError) {
        let mut wakes = Wakes::default();
        self.lock()
            .push_error(Instant::now(), conn, error, &mut wakes);
        wakes.wake_all();
    }

    /// For a lane reader that queued frames to `conns` (which were then over their
    /// budget): keeps those that still hold it up, closes those that are slow at `now`, and
    /// returns when to look again at the latest (`None`: nobody holds it up any more).
    pub(crate) fn holding_up(&self, conns: &mut Vec<ConnId>, now: Instant) -> Option<Instant> {
        let table = self.lock();
        let mut next: Option<Instant> = None;
        conns.retain(|conn| {
            let Some(session) = table.table.get(conn) else {
                return false;
            };
            match session.queue.blocking(now) {
                Blocking::No => false,
                Blocking::Until(at) => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    true
                }
                Blocking::Slow(slow) => {
                    self.close_slow(session, slow);
                    false
                }
            }
        });
        next
    }

    /// Closes a slow connection with 4001 (counted once).
    fn close_slow(&self, session: &Session, slow: Slow) {
        if session.queue.close() {
            self.counters.closed_slow.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason = %slow, "slow consumer closed");
            session.closer.close(CLOSE_SLOW_CONSUMER, slow.to_string());
        }
    }

    /// Closes every connection of `user_id`; returns how many.
    pub(crate) fn kick(&self, user_id: &str) -> u64 {
        if user_id.is_empty() {
            return 0;
        }
        let table = self.lock();
        let mut closed = 0;
        for session in table.table.values() {
            if session.identity.user_id == user_id {
                session.queue.close();
                session
                    .closer
                    .close(CLOSE_KICKED, "kicked by the server".into());
                closed += 1;
            }
        }
        self.counters
            .closed_kicked
            .fetch_add(closed, Ordering::Relaxed);
        closed
    }

    /// Closes every connection (shutdown).
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        let table = self.lock();
        for session in table.table.values() {
            session.queue.close();
            session.closer.close(code, reason.to_string());
        }
        self.counters
            .closed_shutdown
            .fetch_add(table.table.len() as u64, Ordering::Relaxed);
    }
}

/// The registry under its lock.
pub(crate) struct SessionTable<'a> {
    table: MutexGuard<'a, ConnMap<Session>>,
    sessions: &'a Sessions,
}

impl SessionTable<'_> {
    /// Queues framed WebSocket frames to a connection, in order, their bytes counted in the
    /// edge's total already (see [`Flow::reserve`]). Returns how many were queued; the
    /// caller counts queued frames (once per fan-out, not once per recipient) and takes
    /// back the bytes of those refused. Frames are refused only for a connection that is
    /// gone, or closing (counted in `frames_dropped`), or that one would take past its hard
    /// cap (which closes it).
    fn push_reserved(
        &mut self,
        now: Instant,
        conn: ConnId,
        frames: &[Bytes],
        wakes: &mut Wakes,
    ) -> usize {
        let Some(session) = self.table.get(&conn) else {
            return 0;
        };
        let (queued, pushed) = session.queue.push_all(now, frames);
        match pushed {
            Pushed::Queued { first, over } => {
                if first {
                    wakes.queues.push(session.queue.clone());
                }
                if over {
                    wakes.over(conn);
                }
            }
            Pushed::Closing => {}
            Pushed::HardCap(slow) => {
                // The queue is closing already; this counts the close once.
                self.sessions
                    .counters
                    .closed_slow
                    .fetch_add(1, Ordering::Relaxed);
                session.closer.close(CLOSE_SLOW_CONSUMER, slow.to_string());
            }
        }
        let refused = frames.len() - queued;
        if refused > 0 {
            self.sessions
                .counters
                .frames_dropped
                .fetch_add(refused as u64, Ordering::Relaxed);
        }
        queued
    }

    /// Queues one text frame (JSON) to a connection.
    pub(crate) fn push_json(&mut self, now: Instant, conn: ConnId, json: &[u8], wakes: &mut Wakes) {
        let frame = text_frame(json);
        let flow = &self.sessions.flow;
        flow.reserve(frame.len());
        if self.push_reserved(now, conn, std::slice::from_ref(&frame), wakes) == 1 {
            self.sessions
                .counters
                .frames_queued
                .fetch_add(1, Ordering::Relaxed);
        } else {
            flow.unreserve(frame.len());
        }
    }

    pub(crate) fn push_error(
        &mut self,
        now: Instant,
        conn: ConnId,
        error: &ClientError,
        wakes: &mut Wakes,
    ) {
        self.sessions
            .counters
            .client_errors
            .fetch_add(1, Ordering::Relaxed);
        self.push_json(now, conn, &encode_error(error), wakes);
    }

    /// Queues messages to their recipients: the same bytes for all of a message's. The
    /// messages of one recipient list (one topic's subscribers) go to each recipient
    /// together, in order, under one lock of its queue: a burst over a few topics costs one
    /// table lookup and one lock per recipient and topic, not per message. A connection
    /// that holds several of the topics gets each topic's messages in order, the topics'
    /// groups one after the other.
    pub(crate) fn fanout(&mut self, now: Instant, fanouts: &[Fanout], wakes: &mut Wakes) {
        /// Recipient lists grouped at once; a burst over more topics goes in several rounds,
        /// so grouping stays linear in the burst.
        const GROUPS: usize = 32;
        let mut groups: Vec<(&Arc<[ConnId]>, Vec<Bytes>)> = Vec::new();
        for fanout in fanouts {
            match groups
                .iter_mut()
                .find(|(conns, _)| Arc::ptr_eq(conns, &fanout.conns))
            {
                Some((_, frames)) => frames.push(fanout.frame.clone()),
                None => {
                    if groups.len() == GROUPS {
                        for (conns, frames) in groups.drain(..) {
                            self.fanout_group(now, conns, &frames, wakes);
                        }
                    }
                    groups.push((&fanout.conns, vec![fanout.frame.clone()]));
                }
            }
        }
        for (conns, frames) in groups {
            self.fanout_group(now, conns, &frames, wakes);
        }
    }

    /// Queues `frames`, in order, to each of `conns`.
    fn fanout_group(
        &mut self,
        now: Instant,
        conns: &[ConnId],
        frames: &[Bytes],
        wakes: &mut Wakes,
    ) {
        let flow = &self.sessions.flow;
        let total: usize = frames.iter().map(Bytes::len).sum::<usize>() * conns.len();
        flow.reserve(total);
        let mut queued_bytes = 0;
        let mut queued = 0;
        for &conn in conns {
            let n = self.push_reserved(now, conn, frames, wakes);
            queued += n;
            queued_bytes += if n == frames.len() {
                total / conns.len()
            } else {
                frames[..n].iter().map(Bytes::len).sum()
            };
        }
        flow.unreserve(total - queued_bytes);
        self.sessions
            .counters
            .frames_queued
            .fetch_add(queued as u64, Ordering::Relaxed);
    }

    /// Stops or resumes the reading of a connection's socket.
    /// Closes one connection with `code` (its queued frames are not waited for).
    pub(crate) fn close(&mut self, conn: ConnId, code: u16, reason: String) {
        if let Some(session) = self.table.get(&conn) {
            if code == CLOSE_PUBLISH_UNCERTAIN {
                self.sessions
                    .counters
                    .closed_publish_uncertain
                    .fetch_add(1, Ordering::Relaxed);
            }
            session.closer.close(code, reason);
        }
    }

    pub(crate) fn pause_reads(&mut self, conn: ConnId, paused: bool) {
        if let Some(session) = self.table.get(&conn) {
            session.reads.set(paused);
        }
    }

    /// Who the connection is, while it is registered.
    pub(crate) fn identity(&self, conn: ConnId) -> Option<Arc<Identity>> {
        self.table.get(&conn).map(|s| s.identity.clone())
    }
}
