//! The session registry: every open WebSocket connection's send queue, identity and
//! closer, and the slow-client policy applied when a queue is full.
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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use firetower_proto::client::{encode_error, ClientError};
use tokio::sync::Notify;

use crate::config::{Config, SlowPolicy};
use crate::core::{ConnId, Fanout};
use crate::counters::Counters;
use crate::frame::text_frame;
use crate::hooks::Identity;
use crate::send::{Pushed, SendQueue};

/// Close code: no pong (or any frame) within the pong timeout.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
/// Close code: the client could not keep up with its deliveries.
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
/// Close code: an administrator kicked the connection's user (KickUser).
pub const CLOSE_KICKED: u16 = 4002;

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

/// One open connection.
struct Session {
    /// What its session task writes to the socket.
    queue: Arc<SendQueue>,
    /// Frames dropped because the queue was full (the slow-client policy counts them).
    drops: u32,
    /// How the registry closes it (slow client, kick, shutdown).
    closer: Arc<Closer>,
    /// For the hooks the runner calls on its behalf, and for kicks by user id.
    identity: Arc<Identity>,
}

/// Send queues that became non-empty while a lock was held: woken once it is released.
#[derive(Default)]
pub(crate) struct Wakes(Vec<Arc<SendQueue>>);

impl Wakes {
    /// Wakes every queued session. Call only with no lock held.
    pub(crate) fn wake_all(self) {
        for queue in self.0 {
            queue.wake();
        }
    }
}

/// The registry of open connections.
pub(crate) struct Sessions {
    table: Mutex<HashMap<ConnId, Session>>,
    /// Frames each new connection's queue holds.
    queue_frames: usize,
    /// Dropped frames after which the slow-client policy closes a connection.
    drop_limit: u32,
    counters: Arc<Counters>,
}

impl Sessions {
    pub(crate) fn new(config: &Config, counters: Arc<Counters>) -> Self {
        Sessions {
            table: Mutex::new(HashMap::new()),
            queue_frames: config.send_queue_frames,
            drop_limit: match config.slow_policy {
                SlowPolicy::Close => 1,
                SlowPolicy::DropThenClose => config.slow_close_after_drops.max(1),
            },
            counters,
        }
    }

    /// The locked registry, for queueing many frames in one go.
    pub(crate) fn lock(&self) -> SessionTable<'_> {
        SessionTable {
            table: self.table.lock().unwrap_or_else(|p| p.into_inner()),
            sessions: self,
        }
    }

    /// Registers a new connection; returns its send queue.
    pub(crate) fn add(
        &self,
        conn: ConnId,
        identity: Arc<Identity>,
        closer: Arc<Closer>,
    ) -> Arc<SendQueue> {
        let queue = Arc::new(SendQueue::new(self.queue_frames));
        self.lock().table.insert(
            conn,
            Session {
                queue: queue.clone(),
                drops: 0,
                closer,
                identity,
            },
        );
        queue
    }

    pub(crate) fn remove(&self, conn: ConnId) {
        self.lock().table.remove(&conn);
    }

    /// Queues an error frame to one connection (the session's own answer to its client).
    pub(crate) fn send_error(&self, conn: ConnId, error: &ClientError) {
        let mut wakes = Wakes::default();
        self.lock().push_error(conn, error, &mut wakes);
        wakes.wake_all();
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
                session
                    .closer
                    .close(CLOSE_KICKED, "kicked by the server".into());
                closed += 1;
            }
        }
        closed
    }

    /// Closes every connection (shutdown).
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        for session in self.lock().table.values() {
            session.closer.close(code, reason.to_string());
        }
    }
}

/// The registry under its lock.
pub(crate) struct SessionTable<'a> {
    table: MutexGuard<'a, HashMap<ConnId, Session>>,
    sessions: &'a Sessions,
}

impl SessionTable<'_> {
    /// Queues a framed WebSocket frame to a connection under the slow-client policy.
    /// Returns whether the frame was queued; the caller counts queued frames (once per
    /// fan-out, not once per recipient).
    fn push(&mut self, conn: ConnId, frame: &Bytes, wakes: &mut Wakes) -> bool {
        let Some(session) = self.table.get_mut(&conn) else {
            return false;
        };
        match session.queue.push(frame.clone()) {
            Pushed::Queued => return true,
            Pushed::QueuedFirst => {
                wakes.0.push(session.queue.clone());
                return true;
            }
            Pushed::Full => {
                let counters = &self.sessions.counters;
                counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                session.drops += 1;
                let limit = self.sessions.drop_limit;
                if session.drops == limit {
                    counters.closed_slow.fetch_add(1, Ordering::Relaxed);
                    session.closer.close(
                        CLOSE_SLOW_CONSUMER,
                        format!("slow consumer: {limit} frames dropped, send queue full"),
                    );
                }
            }
        }
        false
    }

    /// Queues one text frame (JSON) to a connection.
    pub(crate) fn push_json(&mut self, conn: ConnId, json: &[u8], wakes: &mut Wakes) {
        if self.push(conn, &text_frame(json), wakes) {
            self.sessions
                .counters
                .frames_queued
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn push_error(&mut self, conn: ConnId, error: &ClientError, wakes: &mut Wakes) {
        self.sessions
            .counters
            .client_errors
            .fetch_add(1, Ordering::Relaxed);
        self.push_json(conn, &encode_error(error), wakes);
    }

    /// Queues one message to each of its recipients: the same bytes for all.
    pub(crate) fn fanout(&mut self, fanout: &Fanout, wakes: &mut Wakes) {
        let mut queued = 0;
        for &conn in fanout.conns.iter() {
            queued += u64::from(self.push(conn, &fanout.frame, wakes));
        }
        self.sessions
            .counters
            .frames_queued
            .fetch_add(queued, Ordering::Relaxed);
    }

    /// Who the connection is, while it is registered.
    pub(crate) fn identity(&self, conn: ConnId) -> Option<Arc<Identity>> {
        self.table.get(&conn).map(|s| s.identity.clone())
    }
}
