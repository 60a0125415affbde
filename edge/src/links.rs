//! The link manager: one relay link (a QUIC connection) to each distributor the core asks
//! for, kept open with backoff until the core lets it go.
//!
//! A link has a *control* stream (Hello, Interest, SlotsSynced, ClientPublish, KickDone
//! out; InterestAck, ClientPublishDone and Kick in) and the distributor's *lanes* of
//! deliveries, each read by its own task. Frames for the control stream are queued unencoded ([`RelayFrame`]), in
//! the order they were decided (the runner queues the core's frames while it holds the
//! core's lock); the link's writer task encodes them, a batch at a time, outside any lock
//! ([`firetower_net::relay::write_relay_frames`]).
//!
//! ```text
//!  Output::Connect ─▶ LinkTable::open ─▶ link_task ─▶ serve_link ─┬─ control writer (encodes)
//!                                          (backoff)              ├─ control reader ─▶ apply(interest_ack, publish_done) / kick
//!                                                                 └─ lane_reader × lanes ─▶ apply(deliver, fence), then wait
//!  Output::Relay ─▶ LinkTable::send ─▶ control queue ─▶ control writer ─▶ QUIC
//! ```
//!
//! **Backpressure.** A lane reader applies its deliveries a group at a time (at most
//! [`LANE_GROUP_BYTES`] of data) and, before it reads on, waits while a connection that
//! group queued frames to is over its send budget, or while the edge's queued total is over
//! the high watermark (see [`crate::flow`]). Not reading lets the lane's QUIC stream window
//! fill, so the distributor stops sending on that lane. Lanes that feed no such connection
//! keep flowing. A connection over its budget for `slow_after_ms` is closed (4001), which
//! ends the wait.
//!
//! Lock order: the table's lock is taken after the core's (by the runner, which may also
//! hold the session registry's) or alone; outside the runner no other lock is taken while
//! it is held.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use firetower_net::relay::{close_code, write_relay_frames, FrameReader};
use firetower_net::tls::RELAY_SERVER_NAME;
use firetower_net::Connector;
use firetower_proto::relay::v1::{relay_frame::Frame, Hello, KickDone, RelayFrame};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::core::{ConnId, MessageTags};
use crate::flow::LaneHold;
use crate::node::Edge;

/// Control frames queued to one distributor; beyond this, frames are dropped (and logged).
/// Interest lost this way is sent again on the next change, link or owner change. Client
/// publishes take at most an eighth of it (`config::MAX_PUBLISHES_IN_FLIGHT`): each queued
/// one is unanswered, and the core bounds those per link.
pub(crate) const CONTROL_QUEUE: usize = 1 << 16;

/// The most delivery data a lane reader queues to clients before it looks at their
/// budgets: bounds how far one lane can take a connection past its budget (a single read
/// can return a whole QUIC stream window, 8 MiB).
pub(crate) const LANE_GROUP_BYTES: usize = 64 << 10;

/// One distributor the core wants a link to.
struct LinkSlot {
    /// Tells the link's task to stop (the distributor left, or the edge shuts down).
    stop: watch::Sender<bool>,
    /// Set while connected: (generation, control queue). The generation tells a link that
    /// ended apart from the one that replaced it.
    control: Option<(u64, mpsc::Sender<RelayFrame>)>,
}

/// The relay links, by distributor.
pub(crate) struct Links {
    table: Mutex<HashMap<u64, LinkSlot>>,
    next_generation: AtomicU64,
}

impl Links {
    pub(crate) fn new() -> Self {
        Links {
            table: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
        }
    }

    /// The locked table, for the runner.
    pub(crate) fn lock(&self) -> LinkTable<'_> {
        LinkTable(self.table.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A connected link's control queue; `None` when the core let the distributor go
    /// meanwhile. Returns the link's generation.
    fn attach(&self, distributor: u64, control: mpsc::Sender<RelayFrame>) -> Option<u64> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut table = self.lock();
        let slot = table.0.get_mut(&distributor)?;
        slot.control = Some((generation, control));
        Some(generation)
    }

    /// The link of `generation` ended (unless a newer one replaced it already).
    fn detach(&self, distributor: u64, generation: u64) {
        let mut table = self.lock();
        if let Some(slot) = table.0.get_mut(&distributor) {
            if slot.control.as_ref().is_some_and(|(g, _)| *g == generation) {
                slot.control = None;
            }
        }
    }

    /// Stops every link (shutdown).
    pub(crate) fn stop_all(&self) {
        let slots: Vec<LinkSlot> = self.lock().0.drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            let _ = slot.stop.send(true);
        }
    }
}

/// The link table under its lock.
pub(crate) struct LinkTable<'a>(MutexGuard<'a, HashMap<u64, LinkSlot>>);

impl LinkTable<'_> {
    /// Queues a frame on the link's control stream. Dropped when the link is down (the
    /// core sends what matters again when it comes up) or its queue is full (logged).
    pub(crate) fn send(&mut self, distributor: u64, frame: RelayFrame) {
        if let Some((_, control)) = self.0.get(&distributor).and_then(|l| l.control.as_ref()) {
            if control.try_send(frame).is_err() {
                tracing::warn!(distributor, "relay control queue full; frame dropped");
            }
        }
    }

    /// Starts keeping a link to `distributor`: the stop signal for its new task, or `None`
    /// when it has one already.
    pub(crate) fn open(&mut self, distributor: u64) -> Option<watch::Receiver<bool>> {
        let Entry::Vacant(slot) = self.0.entry(distributor) else {
            return None;
        };
        let (stop, stop_rx) = watch::channel(false);
        slot.insert(LinkSlot {
            stop,
            control: None,
        });
        Some(stop_rx)
    }

    /// Lets the link to `distributor` go.
    pub(crate) fn close(&mut self, distributor: u64) {
        if let Some(link) = self.0.remove(&distributor) {
            let _ = link.stop.send(true);
        }
    }
}

/// Keeps a relay link to one distributor until told to stop.
pub(crate) async fn link_task<C: Connector>(
    edge: Arc<Edge<C>>,
    distributor: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() || *edge.stop.borrow() {
            return;
        }
        let advertised = edge.read_core(|core| {
            core.routing()
                .distributor_addr(distributor, "quic")
                .map(str::to_string)
        });
        // Resolved on every attempt: a name that moved is followed on reconnect.
        let addr = match advertised {
            Some(name) => match firetower_net::resolve::first(&name).await {
                Ok(addr) => Some(addr),
                Err(e) => {
                    tracing::debug!(distributor, error = %e, "relay address does not resolve");
                    None
                }
            },
            None => None,
        };
        if let Some(addr) = addr {
            match edge.endpoint.connect(addr, RELAY_SERVER_NAME) {
                Ok(connecting) => {
                    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                        Ok(Ok(conn)) => {
                            backoff = Duration::from_millis(100);
                            serve_link(&edge, distributor, conn, &mut stop).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(distributor, error = %e, "relay connect failed")
                        }
                        Err(_) => tracing::debug!(distributor, "relay connect timed out"),
                    }
                }
                Err(e) => tracing::warn!(distributor, error = %e, "relay connect refused"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Serves one connected link until it fails or is stopped.
async fn serve_link<C: Connector>(
    edge: &Arc<Edge<C>>,
    distributor: u64,
    conn: quinn::Connection,
    stop: &mut watch::Receiver<bool>,
) {
    let Ok((send, recv)) = conn.open_bi().await else {
        return;
    };
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    edge.tasks.spawn(write_relay_frames(send, control_rx));
    let hello = RelayFrame {
        frame: Some(Frame::Hello(Hello {
            edge_id: edge.config.id,
            cluster: edge.config.cluster.clone(),
        })),
    };
    if control.try_send(hello).is_err() {
        return;
    }
    // The queue is in the table before the core learns the link is up, so the frames of
    // handle_link_up (and everything after) find it.
    let Some(generation) = edge.links.attach(distributor, control) else {
        conn.close(close_code::SHUTDOWN.into(), b"distributor left");
        return;
    };
    edge.apply(|core, _| core.handle_link_up(distributor));
    edge.counters.relay_links_up.fetch_add(1, Ordering::Relaxed);
    edge.counters
        .relay_links_total
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(distributor, "relay link up");

    let control_reader = read_control(edge, distributor, recv);
    tokio::pin!(control_reader);
    let mut global_stop = edge.stop.clone();
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(stream) => edge.tasks.spawn(lane_reader(edge.clone(), stream)),
                Err(_) => break,
            },
            _ = &mut control_reader => break,
            _ = stop.changed() => break,
            _ = global_stop.wait_for(|s| *s) => break,
        }
    }
    // Ends the lanes (their readers see the stream fail) and the control writer's stream.
    conn.close(close_code::SHUTDOWN.into(), b"edge link closed");
    edge.counters.relay_links_up.fetch_sub(1, Ordering::Relaxed);
    edge.links.detach(distributor, generation);
    edge.apply(|core, now| core.handle_link_down(now, distributor));
    tracing::info!(distributor, "relay link down");
}

/// Reads the distributor's half of the control stream until it ends.
async fn read_control<C: Connector>(
    edge: &Arc<Edge<C>>,
    distributor: u64,
    recv: quinn::RecvStream,
) {
    let mut reader = FrameReader::new(recv);
    while let Ok(Some(frame)) = reader.next().await {
        match frame.frame {
            Some(Frame::InterestAck(ack)) => {
                edge.apply(|core, _| core.handle_interest_ack(distributor, &ack.topic, ack.epoch));
            }
            Some(Frame::ClientPublishDone(done)) => {
                edge.apply(|core, now| {
                    core.handle_publish_done(
                        now,
                        distributor,
                        done.id,
                        &done.error_code,
                        &done.message,
                        (done.epoch, done.seq),
                    )
                });
            }
            Some(Frame::Kick(kick)) => {
                let closed = edge.sessions.kick(&kick.user_id);
                let done = RelayFrame {
                    frame: Some(Frame::KickDone(KickDone {
                        request_id: kick.request_id,
                        closed,
                    })),
                };
                edge.links.lock().send(distributor, done);
            }
            _ => {}
        }
    }
}

/// Reads one lane of deliveries. The frames one read completes are handled in groups of
/// at most [`LANE_GROUP_BYTES`] of data: one lock, one drain of the core's outputs, one
/// wake per recipient per group; after each group the lane waits as long as the
/// connections it fed (or the edge as a whole) hold too much (see [`hold_lane`]).
async fn lane_reader<C: Connector>(edge: Arc<Edge<C>>, stream: quinn::RecvStream) {
    let mut reader = FrameReader::new(stream);
    let mut frames = Vec::with_capacity(64);
    let mut hold = LaneHold::default();
    // The owners' stamps of a group's deliveries, for the latency histogram.
    let mut stamps: Vec<u64> = Vec::with_capacity(64);
    while let Ok(true) = reader.next_batch(&mut frames).await {
        let mut pending = frames.drain(..).peekable();
        while pending.peek().is_some() {
            let mut bytes = 0;
            let over = edge.apply(|core, _| {
                while bytes < LANE_GROUP_BYTES {
                    let Some(frame) = pending.next() else {
                        break;
                    };
                    match frame.frame {
                        Some(Frame::Deliver(d)) => {
                            bytes += d.data.len();
                            stamps.push(d.sequenced_at_us);
                            let tags = MessageTags::of(&d);
                            core.handle_deliver(&d.topic, d.epoch, d.seq, d.data, tags)
                        }
                        // A fence can complete a route change: the deliveries it releases
                        // are queued in the core's one output queue ahead of this group's
                        // later ones.
                        Some(Frame::Fence(f)) => core.handle_fence(&f.topic, f.since),
                        // In lane order: the deliveries before it are in the answer.
                        Some(Frame::Recovered(r)) => core.handle_recovered(r),
                        _ => {}
                    }
                }
            });
            // The group is queued to its clients: one read of the wall clock for it.
            if !stamps.is_empty() {
                edge.metrics
                    .observe_deliveries(&stamps, firetower_net::wall::unix_micros());
                stamps.clear();
            }
            hold_lane(&edge, over, &mut hold).await;
        }
    }
}

/// Waits, before a lane reads on, while a connection in `over` (fed by the lane's last
/// group, then over its budget) still is over its budget and open, or while the edge's
/// queued total is over the high watermark (until it is below the low one, or for at most
/// `slow_after_ms`). A connection over its budget for `slow_after_ms` is closed as slow,
/// which ends the wait for it. Counts each pause in `lane_pauses`.
async fn hold_lane<C: Connector>(edge: &Edge<C>, mut over: Vec<ConnId>, hold: &mut LaneHold) {
    let flow = edge.sessions.flow();
    let mut paused = false;
    let mut stop = edge.stop.clone();
    loop {
        // Armed before the state is read, so a change in between still wakes us.
        let changed = flow.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = Instant::now();
        let conns_until = if over.is_empty() {
            None
        } else {
            edge.sessions.holding_up(&mut over, now)
        };
        let mark_until = hold.watermark(&flow.limits, now, flow.total());
        let until = match (conns_until, mark_until) {
            (None, None) => return,
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
        };
        if !paused {
            paused = true;
            edge.counters.lane_pauses.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
