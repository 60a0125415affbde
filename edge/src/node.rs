//! The edge's async shell: it moves bytes between client connections, relay links to the
//! distributors and the metastore, and asks [`EdgeCore`] what to do.
//!
//! The core, the table of client send queues and the table of relay links sit under one
//! mutex. A delivery is filtered and queued to every recipient in one step, so queues see
//! each topic's messages in order. Hooks run outside the lock.

use std::collections::HashMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use firetower_net::relay::{close_code, encode, write_frames, FrameReader};
use firetower_net::tls::RELAY_SERVER_NAME;
use firetower_net::{spawn_membership, spawn_watch, Channels, Connector, MetaClient, Registration};
use firetower_proto::client::{encode_ack, encode_error, AckKind, ClientError};
use firetower_proto::metastore::v1 as pb;
use firetower_proto::relay::v1::{relay_frame::Frame, ClientPublish, Hello, RelayFrame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::{Stream, StreamExt};

use crate::config::{Config, SlowPolicy};
use crate::core::{ConnId, EdgeCore, Fanout, MessageTags, Output, SlotSync};
use crate::error::NodeError;
use crate::hooks::{Hooks, Identity};
use crate::send::{text_frame, Pushed, SendQueue};

/// Control frames queued to one distributor; beyond this, frames are dropped (and logged).
/// Interest lost this way is sent again on the next change, link or owner change.
const CONTROL_QUEUE: usize = 1 << 16;
/// Close code: no pong (or any frame) within the pong timeout.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
/// Close code: the client could not keep up with its deliveries.
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
/// Close code: an administrator kicked the connection's user (KickUser).
pub const CLOSE_KICKED: u16 = 4002;

/// Edge counters, readable from outside (tests, metrics, the load generator).
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Frames queued to clients (deliveries, acks, errors).
    pub frames_queued: AtomicU64,
    /// Frames dropped because a send queue was full.
    pub frames_dropped: AtomicU64,
    pub closed_slow: AtomicU64,
    pub closed_heartbeat: AtomicU64,
    pub closed_too_large: AtomicU64,
    /// Client frames answered with an error frame.
    pub client_errors: AtomicU64,
    /// Socket writes (each carries every frame pending at the time).
    pub writes: AtomicU64,
    pub client_publishes: AtomicU64,
    pub relay_links_up: AtomicU64,
    /// Relay links established since start (more than the distributors means reconnects).
    pub relay_links_total: AtomicU64,
}

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

pub(crate) struct ConnHandle {
    queue: Arc<SendQueue>,
    drops: u32,
    closer: Arc<Closer>,
    pub(crate) identity: Arc<Identity>,
}

struct LinkSlot {
    stop: watch::Sender<bool>,
    /// Set while connected: (generation, control queue).
    control: Option<(u64, mpsc::Sender<Bytes>)>,
}

pub(crate) struct State {
    pub(crate) core: EdgeCore,
    conns: HashMap<ConnId, ConnHandle>,
    links: HashMap<u64, LinkSlot>,
    /// Send queues that became non-empty under this lock; woken when it is released.
    wakes: Vec<Arc<SendQueue>>,
}

/// The locked state. Dropping it releases the lock and then wakes every session whose
/// queue became non-empty meanwhile, so a burst fanned out under one lock costs each
/// recipient one wake-up (and one write) rather than one per frame.
pub(crate) struct StateGuard<'a> {
    guard: Option<MutexGuard<'a, State>>,
}

impl Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        // The guard is taken only in drop.
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            let wakes = std::mem::take(&mut guard.wakes);
            drop(guard);
            for queue in wakes {
                queue.wake();
            }
        }
    }
}

/// A hook call to make once the lock is released.
pub(crate) enum HookCall {
    Subscribed(Arc<Identity>, Vec<String>),
}

/// What connections, links and tasks share.
pub(crate) struct Shared<C: Connector> {
    pub(crate) config: Config,
    pub(crate) hooks: Arc<dyn Hooks>,
    state: Mutex<State>,
    pub(crate) counters: Arc<Counters>,
    endpoint: quinn::Endpoint,
    pub(crate) next_conn: AtomicU64,
    next_generation: AtomicU64,
    /// gRPC channels to distributors (TopicStatus for the demo page's online count).
    pub(crate) distributors: Channels<C>,
    pub(crate) stop: watch::Receiver<bool>,
    /// Turns at writing to client sockets (see `ws::session`).
    pub(crate) write_turns: tokio::sync::Semaphore,
    /// Hot-topic acks for the metastore task. Bounded (HOT_ACK_QUEUE); a full queue drops
    /// the ack, which the core sends again.
    hot_acks: mpsc::Sender<(String, u64)>,
}

/// Hot-topic acks waiting for the metastore.
const HOT_ACK_QUEUE: usize = 256;

impl<C: Connector> Shared<C> {
    pub(crate) fn lock(&self) -> StateGuard<'_> {
        StateGuard {
            guard: Some(self.state.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }

    /// Queues a framed WebSocket frame to a connection under the slow-client policy.
    /// Returns whether the frame was queued; the caller counts queued frames (once per
    /// fan-out, not once per recipient).
    fn push(&self, state: &mut State, conn: ConnId, frame: &Bytes) -> bool {
        let Some(handle) = state.conns.get_mut(&conn) else {
            return false;
        };
        match handle.queue.push(frame.clone()) {
            Pushed::Queued => return true,
            Pushed::QueuedFirst => {
                state.wakes.push(handle.queue.clone());
                return true;
            }
            Pushed::Full => {
                self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                handle.drops += 1;
                let limit = match self.config.slow_policy {
                    SlowPolicy::Close => 1,
                    SlowPolicy::DropThenClose => self.config.slow_close_after_drops.max(1),
                };
                if handle.drops == limit {
                    self.counters.closed_slow.fetch_add(1, Ordering::Relaxed);
                    handle.closer.close(
                        CLOSE_SLOW_CONSUMER,
                        format!("slow consumer: {limit} frames dropped, send queue full"),
                    );
                }
            }
        }
        false
    }

    /// Queues one text frame (JSON) to a connection.
    pub(crate) fn push_bytes(&self, state: &mut State, conn: ConnId, json: Bytes) {
        if self.push(state, conn, &text_frame(&json)) {
            self.counters.frames_queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn push_error(&self, state: &mut State, conn: ConnId, error: &ClientError) {
        self.counters.client_errors.fetch_add(1, Ordering::Relaxed);
        self.push_bytes(state, conn, encode_error(error));
    }

    fn fanout(&self, state: &mut State, fanout: Fanout) {
        // Framed once; every recipient's queue shares these bytes.
        let frame = text_frame(&fanout.frame);
        let mut queued = 0;
        for conn in fanout.conns {
            queued += u64::from(self.push(state, conn, &frame));
        }
        self.counters
            .frames_queued
            .fetch_add(queued, Ordering::Relaxed);
    }

    /// Carries out the core's outputs. Returns the hook calls to make after unlocking.
    pub(crate) fn drain(self: &Arc<Self>, state: &mut State) -> Vec<HookCall> {
        let mut hooks = Vec::new();
        while let Some(output) = state.core.poll_output() {
            match output {
                Output::Relay { distributor, frame } => {
                    if let Some((_, control)) = state
                        .links
                        .get(&distributor)
                        .and_then(|l| l.control.as_ref())
                    {
                        if control.try_send(encode(&frame)).is_err() {
                            tracing::warn!(distributor, "relay control queue full; frame dropped");
                        }
                    }
                }
                Output::Subscribed { conn, topics } => {
                    self.push_bytes(state, conn, encode_ack(AckKind::Subscribed, &topics));
                    if let Some(handle) = state.conns.get(&conn) {
                        hooks.push(HookCall::Subscribed(handle.identity.clone(), topics));
                    }
                }
                Output::SubscribeFailed { conn, error } => self.push_error(state, conn, &error),
                Output::Connect { distributor } => {
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        state.links.entry(distributor)
                    {
                        let (stop, stop_rx) = watch::channel(false);
                        slot.insert(LinkSlot {
                            stop,
                            control: None,
                        });
                        tokio::spawn(link_task(self.clone(), distributor, stop_rx));
                    }
                }
                Output::Disconnect { distributor } => {
                    if let Some(link) = state.links.remove(&distributor) {
                        let _ = link.stop.send(true);
                    }
                }
                Output::Deliver(fanout) => self.fanout(state, fanout),
                Output::AckHot { topic, since } => {
                    let _ = self.hot_acks.try_send((topic, since));
                }
            }
        }
        hooks
    }

    pub(crate) fn run_hooks(&self, calls: Vec<HookCall>) {
        for call in calls {
            match call {
                HookCall::Subscribed(who, topics) => self.hooks.on_subscribe(&who, &topics),
            }
        }
    }

    /// Registers a new client connection; returns its queue's receiving end.
    pub(crate) fn add_conn(
        &self,
        conn: ConnId,
        identity: Arc<Identity>,
        closer: Arc<Closer>,
    ) -> Arc<SendQueue> {
        let queue = Arc::new(SendQueue::new(self.config.send_queue_frames));
        self.lock().conns.insert(
            conn,
            ConnHandle {
                queue: queue.clone(),
                drops: 0,
                closer,
                identity,
            },
        );
        queue
    }

    /// Removes a connection; returns the topics it held.
    pub(crate) fn remove_conn(self: &Arc<Self>, conn: ConnId) -> Vec<String> {
        let mut state = self.lock();
        state.conns.remove(&conn);
        let topics = state.core.handle_disconnect(conn);
        let calls = self.drain(&mut state);
        drop(state);
        self.run_hooks(calls);
        topics
    }

    /// Sends a client publish to its owner. False when no owner link is up.
    pub(crate) fn client_publish(&self, topic: &str, data: &str) -> bool {
        let state = self.lock();
        let Some(owner) = state.core.publish_route(topic) else {
            return false;
        };
        let Some((_, control)) = state.links.get(&owner).and_then(|l| l.control.as_ref()) else {
            return false;
        };
        self.counters
            .client_publishes
            .fetch_add(1, Ordering::Relaxed);
        control
            .try_send(encode(&RelayFrame {
                frame: Some(Frame::ClientPublish(ClientPublish {
                    topic: topic.to_string(),
                    data: Bytes::copy_from_slice(data.as_bytes()),
                })),
            }))
            .is_ok()
    }

    /// Closes every connection of `user_id`; returns how many.
    pub(crate) fn kick(&self, user_id: &str) -> u64 {
        if user_id.is_empty() {
            return 0;
        }
        let state = self.lock();
        let mut closed = 0;
        for handle in state.conns.values() {
            if handle.identity.user_id == user_id {
                handle
                    .closer
                    .close(CLOSE_KICKED, "kicked by the server".into());
                closed += 1;
            }
        }
        closed
    }

    /// The gRPC address of some distributor (for TopicStatus, which any of them forwards).
    pub(crate) fn any_distributor_grpc(&self, topic: &str) -> Option<String> {
        let state = self.lock();
        let routing = state.core.routing();
        let owner = routing.route(firetower_proto::slot_of(topic)).distributor;
        routing
            .distributor_addr(owner, "grpc")
            .or_else(|| {
                routing
                    .distributors()
                    .values()
                    .find_map(|m| m.addrs.get("grpc").map(String::as_str))
            })
            .map(str::to_string)
    }
}

/// Keeps a relay link to one distributor until told to stop.
async fn link_task<C: Connector>(
    shared: Arc<Shared<C>>,
    distributor: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() || *shared.stop.borrow() {
            return;
        }
        let addr = {
            let state = shared.lock();
            state
                .core
                .routing()
                .distributor_addr(distributor, "quic")
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        };
        if let Some(addr) = addr {
            match shared.endpoint.connect(addr, RELAY_SERVER_NAME) {
                Ok(connecting) => {
                    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                        Ok(Ok(conn)) => {
                            backoff = Duration::from_millis(100);
                            serve_link(&shared, distributor, conn, &mut stop).await;
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

async fn serve_link<C: Connector>(
    shared: &Arc<Shared<C>>,
    distributor: u64,
    conn: quinn::Connection,
    stop: &mut watch::Receiver<bool>,
) {
    let Ok((send, recv)) = conn.open_bi().await else {
        return;
    };
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    tokio::spawn(write_frames(send, control_rx));
    let hello = encode(&RelayFrame {
        frame: Some(Frame::Hello(Hello {
            edge_id: shared.config.id,
            cluster: shared.config.cluster.clone(),
        })),
    });
    if control.try_send(hello).is_err() {
        return;
    }
    let generation = shared.next_generation.fetch_add(1, Ordering::Relaxed);
    {
        let mut state = shared.lock();
        let Some(slot) = state.links.get_mut(&distributor) else {
            conn.close(close_code::SHUTDOWN.into(), b"distributor left");
            return;
        };
        slot.control = Some((generation, control));
        state.core.handle_link_up(distributor);
        let calls = shared.drain(&mut state);
        drop(state);
        shared.run_hooks(calls);
    }
    shared
        .counters
        .relay_links_up
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(distributor, "relay link up");

    let control_shared = shared.clone();
    let mut control_reader = tokio::spawn(async move {
        let mut reader = FrameReader::new(recv);
        while let Ok(Some(frame)) = reader.next().await {
            match frame.frame {
                Some(Frame::InterestAck(ack)) => {
                    let mut state = control_shared.lock();
                    state
                        .core
                        .handle_interest_ack(distributor, &ack.topic, ack.epoch);
                    let calls = control_shared.drain(&mut state);
                    drop(state);
                    control_shared.run_hooks(calls);
                }
                Some(Frame::Kick(kick)) => {
                    let closed = control_shared.kick(&kick.user_id);
                    let done = encode(&RelayFrame {
                        frame: Some(Frame::KickDone(firetower_proto::relay::v1::KickDone {
                            request_id: kick.request_id,
                            closed,
                        })),
                    });
                    let state = control_shared.lock();
                    if let Some((_, control)) = state
                        .links
                        .get(&distributor)
                        .and_then(|l| l.control.as_ref())
                    {
                        let _ = control.try_send(done);
                    }
                }
                _ => {}
            }
        }
    });
    let mut global_stop = shared.stop.clone();
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(stream) => {
                    tokio::spawn(lane_reader(shared.clone(), stream));
                }
                Err(_) => break,
            },
            _ = &mut control_reader => break,
            _ = stop.changed() => break,
            _ = global_stop.wait_for(|s| *s) => break,
        }
    }
    control_reader.abort();
    conn.close(close_code::SHUTDOWN.into(), b"edge link closed");
    shared
        .counters
        .relay_links_up
        .fetch_sub(1, Ordering::Relaxed);
    let mut state = shared.lock();
    if let Some(slot) = state.links.get_mut(&distributor) {
        if slot.control.as_ref().is_some_and(|(g, _)| *g == generation) {
            slot.control = None;
        }
    }
    state.core.handle_link_down(distributor);
    tracing::info!(distributor, "relay link down");
}

/// Reads one lane of deliveries and fans each out; a burst of frames is handled under one
/// lock.
async fn lane_reader<C: Connector>(shared: Arc<Shared<C>>, stream: quinn::RecvStream) {
    let mut reader = FrameReader::new(stream);
    let mut frames = Vec::with_capacity(64);
    while let Ok(true) = reader.next_batch(&mut frames).await {
        let mut state = shared.lock();
        let mut calls = Vec::new();
        for frame in frames.drain(..) {
            match frame.frame {
                Some(Frame::Deliver(d)) => {
                    if let Some(fanout) = state.core.handle_deliver(
                        &d.topic,
                        d.epoch,
                        d.seq,
                        &d.data,
                        MessageTags {
                            msg_id: d.msg_id,
                            route_tag: d.route_tag,
                        },
                    ) {
                        shared.fanout(&mut state, fanout);
                    }
                }
                Some(Frame::Fence(f)) => {
                    // A fence can complete a route change, whose held deliveries must reach
                    // clients before any later delivery of this batch.
                    state.core.handle_fence(&f.topic, f.since);
                    calls.extend(shared.drain(&mut state));
                }
                _ => {}
            }
        }
        drop(state);
        shared.run_hooks(calls);
    }
}

/// Runs an edge until `shutdown` completes.
///
/// `listener` yields accepted client connections (HTTP and WebSocket); `endpoint` is a
/// QUIC endpoint with this edge's client configuration as its default (see
/// [`firetower_net::tls::TlsMaterial::client_config`]); `connector` dials the
/// metastore and distributors' gRPC.
pub async fn run<C, L, IO>(
    config: Config,
    listener: L,
    endpoint: quinn::Endpoint,
    connector: C,
    hooks: Arc<dyn Hooks>,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError>
where
    C: Connector,
    L: Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    config.validate()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (hot_ack_tx, mut hot_ack_rx) = mpsc::channel::<(String, u64)>(HOT_ACK_QUEUE);
    let shared = Arc::new(Shared {
        hooks,
        state: Mutex::new(State {
            core: EdgeCore::new(
                config.id,
                config.max_topics_per_conn,
                Duration::from_millis(config.subscribe_timeout_ms),
            ),
            conns: HashMap::new(),
            links: HashMap::new(),
            wakes: Vec::new(),
        }),
        counters,
        endpoint: endpoint.clone(),
        next_conn: AtomicU64::new(1),
        write_turns: tokio::sync::Semaphore::new(config.write_turns()),
        next_generation: AtomicU64::new(1),
        distributors: Channels::new(connector.clone()),
        stop: stop_rx.clone(),
        hot_acks: hot_ack_tx,
        config: config.clone(),
    });
    let rpc_timeout = Duration::from_millis(config.rpc_timeout_ms);
    let meta = MetaClient::new(config.metastore.clone(), connector, rpc_timeout);
    let ack_meta = meta.clone();
    let edge_id = config.id;
    let ack_task = tokio::spawn(async move {
        while let Some((topic, since)) = hot_ack_rx.recv().await {
            if let Err(status) = ack_meta.ack_hot_topic(edge_id, topic.clone(), since).await {
                tracing::debug!(%status, topic, since, "hot-topic ack failed; the core resends");
            }
        }
    });

    // Routing: the watch feeds the core.
    let (events_tx, mut events_rx) = mpsc::channel::<pb::WatchEvent>(64);
    let watch_task = spawn_watch(meta.clone(), events_tx, stop_rx.clone());
    let apply_shared = shared.clone();
    let apply_task = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            let mut state = apply_shared.lock();
            state.core.handle_watch(tokio::time::Instant::now(), event);
            let calls = apply_shared.drain(&mut state);
            drop(state);
            apply_shared.run_hooks(calls);
        }
    });

    // Membership, and the slot list the metastore keeps for this edge.
    let (incarnation_tx, mut incarnations) = watch::channel(0u64);
    let membership = spawn_membership(
        meta.clone(),
        Registration {
            kind: pb::MemberKind::Edge,
            id: config.id,
            addrs: [("ws".to_string(), config.ws_advertise.clone())].into(),
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
        },
        incarnation_tx,
        stop_rx.clone(),
    );
    let sync_shared = shared.clone();
    let mut sync_stop = stop_rx.clone();
    let sync_task = tokio::spawn(async move {
        let mut sync = SlotSync::default();
        let mut incarnation = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(
            sync_shared.config.metastore_debounce_ms,
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = sync_stop.wait_for(|s| *s) => return,
            }
            let current = *incarnations.borrow_and_update();
            if current == 0 {
                continue;
            }
            if current != incarnation {
                incarnation = current;
                sync.reset();
            }
            let batch = {
                let state = sync_shared.lock();
                sync.next_batch(state.core.interest_slots())
            };
            if let Some((add, remove)) = batch {
                match meta
                    .update_interest(sync_shared.config.id, add.clone(), remove.clone())
                    .await
                {
                    Ok(_) => sync.confirm(&add, &remove),
                    Err(status) => tracing::debug!(%status, "interest update failed; retrying"),
                }
            }
        }
    });
    let tick_shared = shared.clone();
    let mut tick_stop = stop_rx.clone();
    let tick_task = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(Duration::from_millis(tick_shared.config.interest_flush_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tick_stop.wait_for(|s| *s) => return,
            }
            let mut state = tick_shared.lock();
            state.core.handle_tick(tokio::time::Instant::now());
            let calls = tick_shared.drain(&mut state);
            drop(state);
            tick_shared.run_hooks(calls);
        }
    });

    // Clients.
    let mut listener = listener;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.next() => match accepted {
                Some(Ok(io)) => {
                    tokio::spawn(crate::ws::serve_conn(shared.clone(), io));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    let _ = stop_tx.send(true);
    // Close every client with 1001 (going away).
    {
        let state = shared.lock();
        for handle in state.conns.values() {
            handle.closer.close(1001, "edge shutting down".into());
        }
    }
    let _ = membership.await;
    let _ = watch_task.await;
    let _ = sync_task.await;
    let _ = tick_task.await;
    apply_task.abort();
    ack_task.abort();
    {
        let mut state = shared.lock();
        for (_, link) in state.links.drain() {
            let _ = link.stop.send(true);
        }
    }
    endpoint.close(close_code::SHUTDOWN.into(), b"edge shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// Runs an edge on a TCP listener and a UDP socket (for its relay links), loading TLS from
/// the config: what `firetower edge` does.
pub async fn run_tcp(
    config: Config,
    listener: tokio::net::TcpListener,
    udp: std::net::UdpSocket,
    hooks: Arc<dyn Hooks>,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate()?;
    let tls = firetower_net::tls::TlsMaterial::load(&config.tls)?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(tls.client_config()?);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|r| {
        r.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    run(
        config,
        incoming,
        endpoint,
        firetower_net::TcpConnector::default(),
        hooks,
        counters,
        shutdown,
    )
    .await
}
