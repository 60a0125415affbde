//! The distributor's async shell: it moves bytes between gRPC, the QUIC relay and the
//! metastore, and asks [`DistributorCore`] what to do.
//!
//! Every input to the core goes through [`Shared::apply`]: lock, call the core, run the
//! commands it made, unlock. The core and the table of edge links sit under that one mutex,
//! so a message is sequenced and queued on its lanes in one step: two publishes of a topic
//! can never be queued in an order other than their sequence numbers. Frames are encoded by
//! the lane writers, outside the lock.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use firetower_net::relay::{close_code, encode, write_frames, FrameReader};
use firetower_net::{
    spawn_membership, spawn_watch, Channels, Connector, LeaseConfirmed, MetaClient, Registration,
    Tasks,
};
use firetower_proto::client::ErrorCode;
use firetower_proto::distributor::v1::distributor_client::DistributorClient;
use firetower_proto::metastore::v1 as pb;
use firetower_proto::relay::v1::{
    relay_frame::Frame, ClientPublish, ClientPublishDone, Deliver, Fence, InterestAck, Recovered,
    RelayFrame,
};
use firetower_proto::slot_of;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::config::Config;
use crate::core::{
    AttemptId, Command, CoreCounters, Delivery, DistributorCore, ForwardResult, ForwardRun,
    HistoryAnswer, HotProposal, OpId, Outcome, PublishError,
};
use crate::error::NodeError;
use crate::service::{
    forward_request, forward_results, status_of, with_timeout, DistributorService,
};

/// Control frames queued to one edge before its link counts as stuck.
const CONTROL_QUEUE: usize = 1 << 14;
/// Client publishes from one edge waiting for room or for the core (the edge bounds its
/// unanswered publishes below this).
const CLIENT_PUBLISH_QUEUE: usize = 1 << 13;
/// How long an edge has to send Hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A frame on a lane: a delivery (encoded once, by the first lane writer that sends it) or
/// another relay frame, encoded by the writer. Nothing is encoded under the core's lock.
#[derive(Debug)]
pub(crate) enum LaneFrame {
    Deliver(Delivery),
    Other(RelayFrame),
}

impl LaneFrame {
    /// The frame's size on the wire (estimated without encoding for other frames).
    fn len(&self) -> usize {
        match self {
            LaneFrame::Deliver(delivery) => delivery.len(),
            LaneFrame::Other(frame) => prost::Message::encoded_len(frame) + 8,
        }
    }
}

/// The bytes queued toward one edge, over all its lanes, against the budget
/// (`lane_queue_bytes`). Publishes whose subscribers sit behind an edge over budget wait
/// for it to drain ([`Shared::admit`]); that is how a full client queue at the edge slows a
/// publisher instead of losing its messages.
#[derive(Debug)]
pub(crate) struct LaneBytes {
    queued: AtomicUsize,
    budget: usize,
    /// Woken (all waiters) when the queued bytes fall back under the budget.
    drained: Notify,
    /// How many links are over budget (shared by all links: the fast path of `admit`).
    over: Arc<AtomicUsize>,
    /// Bytes of this link's lane frames handed to QUIC (its writers' cache lines, not one
    /// shared by every link); added to `closed_sent` when the link goes.
    sent: AtomicU64,
    /// The bytes sent on the links that are gone (`Shared::relay_sent_closed`).
    closed_sent: Arc<AtomicU64>,
}

impl LaneBytes {
    fn add(&self, n: usize) -> usize {
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before < self.budget && before + n >= self.budget {
            self.over.fetch_add(1, Ordering::AcqRel);
        }
        before + n
    }

    fn release(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::AcqRel);
        if before >= self.budget && before - n < self.budget {
            self.over.fetch_sub(1, Ordering::AcqRel);
            self.drained.notify_waiters();
        }
    }

    fn over_budget(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.budget
    }
}

/// A lane frame with its bytes counted against its link's budget until the lane writer
/// takes it (then it is in QUIC's hands, bounded by the stream's flow control).
#[derive(Debug)]
pub(crate) struct CountedFrame {
    frame: Option<LaneFrame>,
    len: usize,
    bytes: Arc<LaneBytes>,
}

impl CountedFrame {
    fn new(frame: LaneFrame, bytes: &Arc<LaneBytes>) -> (Self, usize) {
        let len = frame.len();
        let queued = bytes.add(len);
        let counted = CountedFrame {
            frame: Some(frame),
            len,
            bytes: bytes.clone(),
        };
        (counted, queued)
    }
}

impl From<CountedFrame> for Bytes {
    /// The lane writer takes the frame: encoded (once per delivery), and counted as sent.
    fn from(mut counted: CountedFrame) -> Bytes {
        let bytes = match counted.frame.take() {
            Some(LaneFrame::Deliver(delivery)) => delivery.frame(),
            Some(LaneFrame::Other(frame)) => encode(&frame),
            None => Bytes::new(),
        };
        counted
            .bytes
            .sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        bytes
    }
}

impl Drop for CountedFrame {
    /// Taken by the writer or dropped unsent (its link closed): either way its bytes leave
    /// the budget, exactly once.
    fn drop(&mut self) {
        self.bytes.release(self.len);
    }
}

/// A control frame to an edge, encoded by the control stream's writer.
#[derive(Debug)]
pub(crate) struct ControlFrame(RelayFrame);

impl From<ControlFrame> for Bytes {
    fn from(frame: ControlFrame) -> Bytes {
        encode(&frame.0)
    }
}

/// The runs of one step for one owner: (owner, its gRPC address, (attempt, run) in order).
type OwnerRuns = (u64, String, Vec<(AttemptId, ForwardRun)>);

/// One edge's relay link.
pub(crate) struct EdgeLink {
    generation: u64,
    conn: quinn::Connection,
    lanes: Vec<mpsc::Sender<CountedFrame>>,
    bytes: Arc<LaneBytes>,
    control: mpsc::Sender<ControlFrame>,
}

impl Drop for EdgeLink {
    /// A link leaves the table (under the node's lock, as a scrape reads it): its sent bytes
    /// move to the closed links' total, so the sum a scrape makes never goes back.
    fn drop(&mut self) {
        let sent = self.bytes.sent.swap(0, Ordering::Relaxed);
        self.bytes.closed_sent.fetch_add(sent, Ordering::Relaxed);
    }
}

/// The relay links to edges, by edge id: the one job of queueing frames on them.
pub(crate) struct Links {
    links: HashMap<u64, EdgeLink>,
    /// Bytes toward one edge beyond which its link is closed as stuck.
    hard_bytes: usize,
}

impl Links {
    /// Queues `frame` on lane `lane` of `edge`'s link. `false`: the link is stuck (over
    /// the hard bound in bytes, or its lane's frame bound).
    fn queue(&self, edge: u64, lane: usize, frame: LaneFrame) -> bool {
        match self.links.get(&edge) {
            Some(link) => {
                let (counted, queued) = CountedFrame::new(frame, &link.bytes);
                queued <= self.hard_bytes && link.lanes[lane].try_send(counted).is_ok()
            }
            // No link: nothing to queue on (the edge re-announces when it links again).
            None => true,
        }
    }

    /// The links of `edges` that are over their byte budget.
    fn over_budget(&self, edges: &[u64]) -> Option<Arc<LaneBytes>> {
        edges
            .iter()
            .filter_map(|edge| self.links.get(edge))
            .find(|link| link.bytes.over_budget())
            .map(|link| link.bytes.clone())
    }

    /// Queues a control frame to `edge`. `false`: the control queue is full.
    fn control(&self, edge: u64, frame: ControlFrame) -> bool {
        match self.links.get(&edge) {
            Some(link) => link.control.try_send(frame).is_ok(),
            None => true,
        }
    }

    /// Closes a stuck link; the edge reconnects and announces again.
    fn close_overloaded(&mut self, edge: u64, why: &'static [u8]) -> bool {
        match self.links.remove(&edge) {
            Some(link) => {
                link.conn.close(close_code::OVERLOADED.into(), why);
                true
            }
            None => false,
        }
    }
}

/// What sits under the node's one mutex: the core, the links it queues on (so a topic's
/// messages are queued in sequence order), and who waits for which publish.
pub(crate) struct State {
    pub(crate) core: DistributorCore,
    links: Links,
    /// Publish ops whose outcome someone awaits (a gRPC call). Bounded by the calls in
    /// flight.
    pub(crate) waiters: HashMap<OpId, oneshot::Sender<Outcome>>,
    /// Client publishes to answer with `ClientPublishDone`: op → (edge, the edge's id).
    /// Bounded by the edges' unanswered publishes (each edge bounds its own).
    client_waiters: HashMap<OpId, (u64, u64)>,
}

/// Counters, readable from outside (tests, metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub forwarded: AtomicU64,
    pub client_publishes: AtomicU64,
    pub links_overloaded: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Publishes refused because their hot-topic route was older than this owner's.
    pub stale_routes: AtomicU64,
    /// Hot-topic fences sent to edges.
    pub fences: AtomicU64,
    /// Splits and merges this node proposed to the metastore.
    pub hot_proposals: AtomicU64,
    /// Deliveries replayed to edges that joined a split topic's route late.
    pub replayed: AtomicU64,
    /// Publishes that waited for room on the lanes toward their subscribers.
    pub admission_waits: AtomicU64,
    /// Publishes refused (RESOURCE_EXHAUSTED / `overloaded`) because that room did not come
    /// before their deadline.
    pub admission_refused: AtomicU64,
    /// Messages publishers were answered for, by result (the metric
    /// `firetower_distributor_publishes_total{result}`).
    pub publish_results: crate::metrics::PublishResults,
}

impl Counters {
    /// Takes the core's cumulative counts.
    fn sync(&self, core: CoreCounters) {
        self.published.store(core.published, Ordering::Relaxed);
        self.forwarded.store(core.forwarded, Ordering::Relaxed);
        self.stale_routes
            .store(core.stale_routes, Ordering::Relaxed);
        self.fences.store(core.fences, Ordering::Relaxed);
        self.hot_proposals
            .store(core.hot_proposals, Ordering::Relaxed);
        self.replayed.store(core.replayed, Ordering::Relaxed);
    }
}

/// Kicks waiting for their edges' answers: request id → where each edge's count goes.
/// Bounded by the concurrent KickUser calls (each removes its entry when it returns).
#[derive(Default)]
pub(crate) struct Kicks {
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<u64>>>,
    next: AtomicU64,
}

impl Kicks {
    pub(crate) fn open(&self) -> (u64, mpsc::UnboundedReceiver<u64>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(id, tx);
        (id, rx)
    }

    pub(crate) fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn done(&self, id: u64, closed: u64) {
        if let Some(waiting) = self.lock().get(&id) {
            let _ = waiting.send(closed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<u64>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the gRPC service and the relay share.
pub(crate) struct Shared<C: Connector> {
    pub(crate) config: Config,
    state: Mutex<State>,
    pub(crate) peers: Channels<C>,
    pub(crate) counters: Arc<Counters>,
    /// Checks every gRPC call's API key.
    pub(crate) api: crate::api::ApiAuth,
    /// What this node presents on its calls to other distributors.
    pub(crate) member_key: firetower_net::ApiKey,
    next_generation: AtomicU64,
    pub(crate) kicks: Kicks,
    /// Wakes the timer task when the core's next timeout may have moved.
    timer: Notify,
    /// Where hot-topic proposals go (one task makes them, in order).
    proposals: mpsc::UnboundedSender<HotProposal>,
    /// Edge links, their stream writers, forwards and publish streams: `run` waits for
    /// them to end.
    pub(crate) tasks: Tasks,
    /// How many edge links are over their byte budget: while 0, publishes need no room
    /// check.
    over_links: Arc<AtomicUsize>,
    /// Bytes of lane frames sent on links that have closed (see `LaneBytes::sent`).
    relay_sent_closed: Arc<AtomicU64>,
    /// Set when the shutdown signal came: `/readyz` answers 503 while the node drains.
    stopping: AtomicBool,
}

impl<C: Connector> Shared<C> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one way into the core: locks, runs `input`, then runs every command the core
    /// made, in order. Queueing (lanes, control streams, replies) happens under the lock, so
    /// a topic's messages are queued in sequence order; forwards start after it is released.
    pub(crate) fn apply<R>(
        self: &Arc<Self>,
        input: impl FnOnce(&mut State, tokio::time::Instant) -> R,
    ) -> R {
        let now = tokio::time::Instant::now();
        let mut forwards: Vec<(AttemptId, u64, String, ForwardRun)> = Vec::new();
        let mut handovers: Vec<Handover> = Vec::new();
        let (result, sooner) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let before = state.core.poll_timeout();
            let result = input(state, now);
            while let Some(command) = state.core.poll_command() {
                self.run(state, command, &mut forwards, &mut handovers);
            }
            self.counters.sync(state.core.counters());
            let after = state.core.poll_timeout();
            let sooner = after.is_some_and(|a| before.is_none_or(|b| a < b));
            (result, sooner)
        };
        // One call per owner carries all of this step's runs for it, in the order the core
        // made them: a topic's runs of one group reach the owner together and in order.
        let mut by_owner: Vec<OwnerRuns> = Vec::new();
        for (attempt, owner, addr, run) in forwards {
            match by_owner
                .iter_mut()
                .find(|(o, a, _)| *o == owner && *a == addr)
            {
                Some((_, _, runs)) => runs.push((attempt, run)),
                None => by_owner.push((owner, addr, vec![(attempt, run)])),
            }
        }
        for (owner, addr, runs) in by_owner {
            self.tasks.spawn(forward(self.clone(), owner, addr, runs));
        }
        for (from, addr, epoch, slots) in handovers {
            self.tasks
                .spawn(handover(self.clone(), from, addr, epoch, slots));
        }
        // The timer task sleeps until the core's next timeout; wake it only when that came
        // sooner (its own input always moves it later, so it never wakes itself).
        if sooner {
            self.timer.notify_one();
        }
        result
    }

    /// Runs one command under the lock; forwards and handovers are collected for after it.
    fn run(
        &self,
        state: &mut State,
        command: Command,
        forwards: &mut Vec<(AttemptId, u64, String, ForwardRun)>,
        handovers: &mut Vec<Handover>,
    ) {
        let lanes = self.config.relay_lanes;
        match command {
            Command::Deliver { delivery, edges } => {
                // The owner's timestamp for the edges' publish-to-delivery latency: taken
                // here, in the shell, before any lane writer can encode the frame.
                delivery.stamp(firetower_net::wall::unix_micros());
                let lane = slot_of(&delivery.deliver().topic) as usize % lanes;
                for edge in edges {
                    if !state
                        .links
                        .queue(edge, lane, LaneFrame::Deliver(delivery.clone()))
                    {
                        self.lane_overflow(state, edge);
                    }
                }
            }
            Command::Replay { edge, deliveries } => {
                for delivery in deliveries {
                    let lane = slot_of(&delivery.deliver().topic) as usize % lanes;
                    if !state.links.queue(edge, lane, LaneFrame::Deliver(delivery)) {
                        self.lane_overflow(state, edge);
                        break;
                    }
                }
            }
            Command::Fence(fence) => {
                let lane = slot_of(&fence.topic) as usize % lanes;
                for edge in fence.edges {
                    let frame = LaneFrame::Other(RelayFrame {
                        frame: Some(Frame::Fence(Fence {
                            topic: fence.topic.clone(),
                            since: fence.since,
                        })),
                    });
                    if !state.links.queue(edge, lane, frame) {
                        self.lane_overflow(state, edge);
                    }
                }
            }
            Command::Recovered {
                edge,
                request_id,
                topic,
                answer,
            } => {
                let lane = slot_of(&topic) as usize % lanes;
                for frame in recovered_frames(request_id, &topic, answer) {
                    if !state.links.queue(edge, lane, LaneFrame::Other(frame)) {
                        self.lane_overflow(state, edge);
                        break;
                    }
                }
            }
            Command::InterestAck { edge, topic, epoch } => {
                let ack = ControlFrame(RelayFrame {
                    frame: Some(Frame::InterestAck(InterestAck { topic, epoch })),
                });
                if !state.links.control(edge, ack) {
                    self.control_overflow(state, edge);
                }
            }
            Command::Forward {
                attempt,
                owner,
                addr,
                run,
            } => forwards.push((attempt, owner, addr, run)),
            Command::Reply { op, outcome } => {
                if let Some(waiter) = state.waiters.remove(&op) {
                    let _ = waiter.send(outcome);
                } else if let Some((edge, id)) = state.client_waiters.remove(&op) {
                    self.counters
                        .publish_results
                        .record(crate::service::outcome_code(&outcome), 1);
                    let done = client_publish_done(id, &outcome);
                    // A full control queue closes the link (as for an InterestAck): the
                    // edge then tells its publishers the outcome is unknown.
                    if !state.links.control(edge, ControlFrame(done)) {
                        self.control_overflow(state, edge);
                    }
                }
            }
            Command::Handover {
                from,
                addr,
                epoch,
                slots,
            } => handovers.push((from, addr, epoch, slots)),
            Command::Propose(proposal) => {
                tracing::info!(topic = %proposal.topic, shards = proposal.shards, "proposing a hot-topic change");
                let _ = self.proposals.send(proposal);
            }
        }
    }

    /// An edge's control queue is full: its link is closed (it reconnects and announces
    /// again).
    fn control_overflow(&self, state: &mut State, edge: u64) {
        self.counters
            .links_overloaded
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(edge, "control queue full; closing the edge's link");
        if state
            .links
            .close_overloaded(edge, b"control queue overflow")
        {
            state.core.handle_edge_down(edge);
        }
    }

    /// Waits until the lanes toward the subscribers of `topic` that this node serves have
    /// room (every such edge link under its byte budget), or fails at `deadline` with
    /// RESOURCE_EXHAUSTED. Called before a publish enters the core, so a publish that could
    /// not be queued in time gets an error, never a success.
    pub(crate) async fn admit(
        &self,
        topic: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), tonic::Status> {
        let mut edges = Vec::new();
        loop {
            if self.over_links.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            let full = {
                let state = self.lock();
                edges.clear();
                state.core.local_edges(topic, &mut edges);
                state.links.over_budget(&edges)
            };
            let Some(full) = full else {
                return Ok(());
            };
            let drained = full.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !full.over_budget() {
                continue;
            }
            self.counters
                .admission_waits
                .fetch_add(1, Ordering::Relaxed);
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                self.counters
                    .admission_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Err(tonic::Status::resource_exhausted(format!(
                    "the queues toward the subscribers of {topic:?} stayed full until the \
                     publish deadline; publish slower or retry"
                )));
            }
        }
    }

    /// An edge's lane is full: its link is closed rather than stalling everyone else.
    fn lane_overflow(&self, state: &mut State, edge: u64) {
        if state.links.close_overloaded(edge, b"relay lane overflow") {
            self.counters
                .links_overloaded
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(edge, "relay lane full; closing the edge's link");
            state.core.handle_edge_down(edge);
        }
    }

    /// `/readyz`: the reason this node is not ready, if it is not.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        let now = tokio::time::Instant::now();
        readiness_of(&self.lock().core, now)
    }

    /// What a scrape reads under the node's lock (one short lock: the links, and what the
    /// core keeps summed).
    pub(crate) fn view(&self) -> crate::metrics::NodeView {
        let ready = self.readiness().is_ok();
        let state = self.lock();
        let (queued, sent) = state
            .links
            .links
            .values()
            .fold((0u64, 0u64), |(q, s), link| {
                (
                    q + link.bytes.queued.load(Ordering::Relaxed) as u64,
                    s + link.bytes.sent.load(Ordering::Relaxed),
                )
            });
        let history = state.core.history_size();
        let routing = state.core.routing();
        crate::metrics::NodeView {
            links: state.links.links.len() as u64,
            lane_queued_bytes: queued,
            // Read under the lock links leave the table under, so the sum never goes back.
            lane_sent_bytes: sent + self.relay_sent_closed.load(Ordering::Relaxed),
            topics: state.core.topic_table_len() as u64,
            owned_slots: routing.slots_of(self.config.id).count() as u64,
            history_messages: history.messages,
            history_bytes: history.bytes,
            revision: routing.revision(),
            ready,
        }
    }

    /// Sends a Kick to every linked edge; returns how many edges it went to.
    pub(crate) fn broadcast_kick(&self, user_id: &str, request_id: u64) -> usize {
        let frame = RelayFrame {
            frame: Some(Frame::Kick(firetower_proto::relay::v1::Kick {
                user_id: user_id.to_string(),
                request_id,
            })),
        };
        let state = self.lock();
        state
            .links
            .links
            .values()
            .filter(|link| link.control.try_send(ControlFrame(frame.clone())).is_ok())
            .count()
    }
}

/// Whether a distributor may take publishes: it holds a routing view, it is registered,
/// and the metastore confirmed its lease recently enough that it may sequence (the core's
/// lease fence).
pub(crate) fn readiness_of(
    core: &DistributorCore,
    now: tokio::time::Instant,
) -> Result<(), String> {
    if core.routing().revision() == 0 {
        return Err("no routing view from the metastore yet".into());
    }
    if core.incarnation() == 0 {
        return Err("not registered with the metastore yet".into());
    }
    match core.lease_fresh_until() {
        Some(until) if until > now => Ok(()),
        Some(_) => Err("the lease lapsed: no heartbeat was confirmed within it".into()),
        None => Err("the metastore has not confirmed the lease yet".into()),
    }
}

/// The most gRPC calls in progress on one client connection (HTTP/2 streams).
const GRPC_STREAMS_PER_CONNECTION: u32 = 1024;

/// Makes one forward (`ForwardBatch`) of `runs` to `owner` and tells the core what became
/// of each.
async fn forward<C: Connector>(
    shared: Arc<Shared<C>>,
    owner: u64,
    addr: String,
    runs: Vec<(AttemptId, ForwardRun)>,
) {
    let (attempts, runs): (Vec<AttemptId>, Vec<ForwardRun>) = runs.into_iter().unzip();
    let results = match shared.peers.get(&addr) {
        Err(reason) => vec![ForwardResult::NotSent(reason); attempts.len()],
        Ok(channel) => {
            let mut client =
                DistributorClient::with_interceptor(channel, shared.member_key.clone())
                    .max_encoding_message_size(crate::service::FORWARD_CALL_BYTES);
            let timeout = shared.config.rpc_timeout();
            let request = with_timeout(forward_request(runs), timeout);
            // The deadline is enforced here too, not only announced to the server: a reply
            // lost on a wedged connection would otherwise hold the op, and every later
            // publish of its topic queued behind it, for good (found by sim seed 103).
            match tokio::time::timeout(timeout, client.forward_batch(request)).await {
                Ok(reply) => forward_results(owner, attempts.len(), reply.map(|r| r.into_inner())),
                Err(_) => vec![
                    ForwardResult::Unclear(format!(
                        "no answer within {} ms",
                        timeout.as_millis()
                    ));
                    attempts.len()
                ],
            }
        }
    };
    shared.apply(|state, now| {
        for (attempt, result) in attempts.into_iter().zip(results) {
            state.core.handle_forward_result(now, attempt, result);
        }
    });
}

/// Asks distributor `from` for the streams of `slots` (moved from it to this node at
/// `epoch`) and hands its answer to the core.
async fn handover<C: Connector>(
    shared: Arc<Shared<C>>,
    from: u64,
    addr: String,
    epoch: u64,
    slots: Vec<(firetower_proto::Slot, u64)>,
) {
    let answer = match shared.peers.get(&addr) {
        Err(reason) => Err(reason),
        Ok(channel) => {
            let mut client =
                DistributorClient::with_interceptor(channel, shared.member_key.clone())
                    .max_decoding_message_size(crate::service::HANDOVER_REPLY_BYTES);
            let timeout = shared.config.rpc_timeout();
            let request = with_timeout(
                firetower_proto::distributor::v1::HandoverRequest {
                    to: shared.config.id,
                    epoch,
                    slots: slots.iter().map(|(s, _)| u32::from(*s)).collect(),
                    from_epochs: slots.iter().map(|(_, e)| *e).collect(),
                },
                timeout,
            );
            match tokio::time::timeout(timeout, client.handover(request)).await {
                Ok(Ok(reply)) => crate::service::handover_answer(reply.into_inner()),
                Ok(Err(status)) => Err(status.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        }
    };
    shared.apply(|state, now| state.core.handle_handover_answer(now, from, epoch, answer));
}

/// The `ClientPublishDone` answering a client publish: an empty error code when sequenced,
/// else the client-protocol code that says what the client should do.
fn client_publish_done(id: u64, outcome: &Outcome) -> RelayFrame {
    let (epoch, seq) = match outcome {
        Outcome::Published(positions) => positions.first().map_or((0, 0), |p| (p.epoch, p.seq)),
        _ => (0, 0),
    };
    let (code, message) = match outcome {
        Outcome::Published(_) => (None, String::new()),
        Outcome::Refused(refused) => (
            Some(ErrorCode::Unavailable),
            format!("the publish was refused as a forwarded run: {refused:?}"),
        ),
        Outcome::Failed(error) => {
            let code = match status_of(error).code() {
                tonic::Code::ResourceExhausted => ErrorCode::Overloaded,
                tonic::Code::InvalidArgument => ErrorCode::Denied,
                _ => ErrorCode::Unavailable,
            };
            (Some(code), error.to_string())
        }
    };
    RelayFrame {
        frame: Some(Frame::ClientPublishDone(ClientPublishDone {
            id,
            error_code: code.map_or_else(String::new, |c| c.as_str().to_string()),
            message,
            epoch,
            seq,
        })),
    }
}

/// Runs a distributor until `shutdown` completes.
///
/// `grpc_incoming` yields accepted gRPC connections; `endpoint` is a QUIC endpoint with
/// this node's server configuration (see [`firetower_net::tls::TlsMaterial::server_config`]);
/// `connector` dials the metastore and other distributors.
pub async fn run<C, I, IO, IE>(
    config: Config,
    grpc_incoming: I,
    endpoint: quinn::Endpoint,
    connector: C,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError>
where
    C: Connector,
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    run_with_counters(
        config,
        grpc_incoming,
        endpoint,
        connector,
        shutdown,
        Arc::default(),
    )
    .await
}

/// [`run`], with counters the caller can read.
pub async fn run_with_counters<C, I, IO, IE>(
    config: Config,
    grpc_incoming: I,
    endpoint: quinn::Endpoint,
    connector: C,
    shutdown: impl Future<Output = ()> + Send + 'static,
    counters: Arc<Counters>,
) -> Result<(), NodeError>
where
    C: Connector,
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    run_with_ops(
        config,
        grpc_incoming,
        endpoint,
        connector,
        None,
        shutdown,
        counters,
    )
    .await
}

/// [`run_with_counters`], also serving the operations endpoints on `ops` (when given):
/// `/metrics` (Prometheus text), `/healthz`, `/readyz` (200 once this node holds the
/// routing view, is registered and its lease is confirmed fresh; 503 with the reason,
/// and while it shuts down) and `/topics` (its busiest owned topics, JSON). The listener
/// is closed, and every connection on it ended, when this returns.
pub async fn run_with_ops<C, I, IO, IE>(
    config: Config,
    grpc_incoming: I,
    endpoint: quinn::Endpoint,
    connector: C,
    ops: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    counters: Arc<Counters>,
) -> Result<(), NodeError>
where
    C: Connector,
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    config.validate()?;
    let member_key = firetower_net::ApiKey::from_optional_file(
        "api.member_key_file",
        config.api.member_key_file.as_deref(),
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (proposals_tx, mut proposals_rx) = mpsc::unbounded_channel::<HotProposal>();
    let mut core =
        DistributorCore::with_hot_policy(config.id, config.max_topics, config.hot.clone())
            .with_history(config.history)
            .with_history_rules(config.history_rules.clone())
            .with_lease_fencing(Duration::from_millis(config.lease_ttl_ms));
    if let Some(idle) = config.idle_topic() {
        core = core.with_idle_topics(idle);
    }
    core.set_publish_retry(Duration::from_millis(config.publish_retry_ms));
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            core,
            links: Links {
                links: HashMap::new(),
                hard_bytes: config.lane_hard_bytes,
            },
            waiters: HashMap::new(),
            client_waiters: HashMap::new(),
        }),
        peers: Channels::new(connector.clone(), firetower_net::Role::Distributor),
        counters,
        api: crate::api::ApiAuth::new(&config.api),
        member_key,
        next_generation: AtomicU64::new(1),
        kicks: Kicks::default(),
        timer: Notify::new(),
        proposals: proposals_tx,
        tasks: Tasks::new(),
        over_links: Arc::new(AtomicUsize::new(0)),
        relay_sent_closed: Arc::new(AtomicU64::new(0)),
        stopping: AtomicBool::new(false),
        config: config.clone(),
    });
    let ops_task = ops.map(|listener| spawn_ops(&shared, listener, stop_rx.clone()));
    let mut tasks = tokio::task::JoinSet::new();

    let meta = MetaClient::new(config.metastore.clone(), connector, config.rpc_timeout())
        .with_key(shared.member_key.clone());
    // From the signal on, `/readyz` says "shutting down" and the node drains (its slots and
    // their streams go to the others) while it goes on serving; then the server stops.
    let stopping = Arc::downgrade(&shared);
    let drain_meta = meta.clone();
    let (id, drain_for) = (config.id, Duration::from_millis(config.drain_timeout_ms));
    let shutdown = async move {
        shutdown.await;
        if let Some(shared) = stopping.upgrade() {
            shared.stopping.store(true, Ordering::Relaxed);
        }
        drain(stopping, drain_meta, id, drain_for).await;
    };
    // Follow the routing state.
    let (events_tx, mut events_rx) = mpsc::channel::<pb::WatchEvent>(64);
    let watch_task = spawn_watch(meta.clone(), events_tx, stop_rx.clone());
    // Registration waits for the first routing snapshot: slots the metastore gives this
    // node must arrive as moves from their previous owner (so the core asks it for their
    // streams, handover.rs), not in a first snapshot that names no previous owner (a
    // joining distributor then started those slots' streams over).
    let (routed_tx, mut routed_rx) = watch::channel(false);
    let apply_shared = shared.clone();
    tasks.spawn(async move {
        while let Some(event) = events_rx.recv().await {
            apply_shared.apply(|state, now| {
                state.core.handle_watch(now, event);
            });
            routed_tx.send_replace(true);
        }
    });
    let (incarnation_tx, mut incarnations) = watch::channel(0u64);
    let incarnation_shared = shared.clone();
    tasks.spawn(async move {
        while incarnations.changed().await.is_ok() {
            let current = *incarnations.borrow_and_update();
            incarnation_shared.apply(|state, _| state.core.handle_registered(current));
        }
    });
    // The lease confirmations that let the core sequence (`LeaseFence`).
    let (confirmed_tx, mut confirmed) = watch::channel(None::<LeaseConfirmed>);
    let confirmed_shared = shared.clone();
    tasks.spawn(async move {
        while confirmed.changed().await.is_ok() {
            let Some(c) = *confirmed.borrow_and_update() else {
                continue;
            };
            confirmed_shared.apply(|state, now| {
                state
                    .core
                    .handle_lease_confirmed(now, c.sent_at, c.revision)
            });
        }
    });
    // The core's timeouts: publishes waiting to retry, and hot-topic load windows.
    let timer_shared = shared.clone();
    let mut timer_stop = stop_rx.clone();
    tasks.spawn(async move {
        loop {
            timer_shared.apply(|state, now| state.core.handle_timeout(now));
            let next = timer_shared.lock().core.poll_timeout();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = timer_shared.timer.notified() => {}
                _ = timer_stop.wait_for(|s| *s) => break,
            }
        }
    });
    // Hot-topic proposals: the core decides, this task proposes, one at a time.
    let hot_meta = meta.clone();
    let mut hot_stop = stop_rx.clone();
    tasks.spawn(async move {
        loop {
            let proposal = tokio::select! {
                p = proposals_rx.recv() => p,
                _ = hot_stop.wait_for(|s| *s) => None,
            };
            let Some(proposal) = proposal else { break };
            let result = if proposal.shards == 0 {
                hot_meta.clear_hot_topic(proposal.topic.clone()).await
            } else {
                hot_meta
                    .set_hot_topic(proposal.topic.clone(), proposal.shards)
                    .await
            };
            if let Err(status) = result {
                tracing::warn!(topic = %proposal.topic, %status, "hot-topic proposal failed");
            }
        }
    });
    let registration = Registration {
        kind: pb::MemberKind::Distributor,
        id: config.id,
        addrs: member_addrs(&config),
        lease_ttl: Duration::from_millis(config.lease_ttl_ms),
    };
    let mut membership_stop = stop_rx.clone();
    let membership = tokio::spawn(async move {
        tokio::select! {
            seen = routed_rx.wait_for(|routed| *routed) => {
                if seen.is_err() {
                    return; // The watch ended: the node is stopping.
                }
            }
            _ = membership_stop.wait_for(|s| *s) => return,
        }
        let _ = spawn_membership(
            meta,
            registration,
            incarnation_tx,
            Some(confirmed_tx),
            membership_stop,
        )
        .await;
    });

    // The relay.
    let relay_shared = shared.clone();
    let mut relay_stop = stop_rx.clone();
    let relay_endpoint = endpoint.clone();
    let relay_task = tokio::spawn(async move {
        loop {
            let incoming = tokio::select! {
                i = relay_endpoint.accept() => i,
                _ = relay_stop.wait_for(|s| *s) => break,
            };
            let Some(incoming) = incoming else { break };
            relay_shared
                .tasks
                .spawn(serve_edge(relay_shared.clone(), incoming));
        }
    });

    // gRPC.
    let service = DistributorService::new(shared.clone());
    let server = tonic::transport::Server::builder()
        // Each call may hold a request of up to the decode limit: bounded per connection,
        // and in time.
        .max_concurrent_streams(Some(GRPC_STREAMS_PER_CONNECTION))
        .timeout(config.request_timeout())
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(grpc_incoming, shutdown);
    let result = server.await.map_err(|e| NodeError::Grpc(e.to_string()));

    let _ = stop_tx.send(true);
    endpoint.close(close_code::SHUTDOWN.into(), b"distributor shutting down");
    let _ = membership.await;
    let _ = watch_task.await;
    let _ = relay_task.await;
    if let Some(ops_task) = ops_task {
        let _ = ops_task.await;
    }
    // The watch task has ended, so the apply task's channel is closed; the others stop on
    // `stop`. Edge links and forwards end with the endpoint and the gRPC server.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    {
        let mut state = shared.lock();
        state.links.links.clear();
        state.waiters.clear();
        state.client_waiters.clear();
    }
    // The endpoint closed every link, so each edge's task ends, and with the links gone so
    // do their writers; a forward in flight ends within its deadline (`rpc_timeout_ms`),
    // and anything left after that is stopped where it is.
    shared
        .tasks
        .shutdown(tokio::time::Instant::now() + config.rpc_timeout())
        .await;
    endpoint.wait_idle().await;
    result
}

/// The graceful part of a stop: asks the metastore to move this node's slots to the others
/// (it stays a member, so each new owner asks it for the slot's streams and history,
/// handover.rs) and waits until the core has handed everything over, at most `within`.
/// A node that cannot reach the metastore, or that was never registered, stops at once.
async fn drain<C: Connector>(
    shared: std::sync::Weak<Shared<C>>,
    meta: MetaClient<C>,
    id: u64,
    within: Duration,
) {
    if within.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let asked = tokio::time::timeout_at(deadline, meta.drain(pb::MemberKind::Distributor, id));
        match asked.await {
            Ok(Ok(revision)) => {
                tracing::info!(
                    revision,
                    "draining: the slots move to the other distributors"
                );
                break;
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => return,
            Ok(Err(status)) => {
                tracing::warn!(%status, "drain refused; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                tracing::warn!("no metastore took the drain in time; stopping");
                return;
            }
        }
    }
    loop {
        let Some(node) = shared.upgrade() else { return };
        if node.lock().core.drained() {
            tracing::info!("drained: every slot and stream went to the other distributors");
            return;
        }
        drop(node);
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("drain timed out; stopping with what is left");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The addresses this distributor registers: `grpc` and `quic`, and `metrics` (where the
/// dashboard finds its operations endpoints) when it has one: `metrics_advertise`, else
/// `metrics_listen`.
fn member_addrs(config: &Config) -> BTreeMap<String, String> {
    let mut addrs = BTreeMap::from([
        ("grpc".to_string(), config.grpc_advertise.clone()),
        ("quic".to_string(), config.quic_advertise.clone()),
    ]);
    let metrics = [&config.metrics_advertise, &config.metrics_listen]
        .into_iter()
        .find(|a| !a.is_empty());
    if let Some(metrics) = metrics {
        addrs.insert("metrics".to_string(), metrics.clone());
    }
    addrs
}

/// Serves the operations endpoints on `listener` until `stop` turns true. Everything it
/// reads of the node goes through a weak handle: the server never keeps the node alive.
fn spawn_ops<C: Connector>(
    shared: &Arc<Shared<C>>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(shared);
    let view = weak.clone();
    let registry = crate::metrics::registry(
        shared.config.id,
        shared.counters.clone(),
        Box::new(move || view.upgrade().map(|s| s.view())),
    );
    let ready = weak.clone();
    let handler = crate::metrics::handler(
        registry,
        move || {
            ready
                .upgrade()
                .map_or_else(|| Err("stopped".to_string()), |s| s.readiness())
        },
        move || {
            weak.upgrade()
                .map(|s| s.lock().core.busiest_topics().to_vec())
                .unwrap_or_default()
        },
    );
    tokio::spawn(firetower_net::ops_http::serve(
        listener,
        handler,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ))
}

/// A Handover to ask for after a step: (from, addr, epoch, slots with their epochs under
/// `from`).
type Handover = (u64, String, u64, Vec<(firetower_proto::Slot, u64)>);

/// Serves one edge's relay connection until it ends.
/// The node identity in a relay peer's (verified) certificate.
fn relay_peer_identity(conn: &quinn::Connection) -> Option<firetower_net::NodeIdentity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs
        .first()
        .and_then(firetower_net::NodeIdentity::from_cert)
}

async fn serve_edge<C: Connector>(shared: Arc<Shared<C>>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "relay handshake failed");
            return;
        }
    };
    let (send, recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(close_code::BAD_HELLO.into(), b"no control stream");
            return;
        }
    };
    let mut reader = FrameReader::new(recv);
    let edge = match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(RelayFrame {
            frame: Some(Frame::Hello(hello)),
        }))) if hello.cluster == shared.config.cluster && hello.edge_id != 0 => hello.edge_id,
        Ok(Ok(Some(RelayFrame {
            frame: Some(Frame::Hello(hello)),
        }))) => {
            tracing::warn!(cluster = %hello.cluster, edge = hello.edge_id, "relay hello refused");
            conn.close(
                close_code::BAD_HELLO.into(),
                format!(
                    "cluster {:?} (edge {}) does not match {:?}",
                    hello.cluster, hello.edge_id, shared.config.cluster
                )
                .as_bytes(),
            );
            return;
        }
        _ => {
            conn.close(close_code::BAD_HELLO.into(), b"expected Hello first");
            return;
        }
    };
    // The Hello's edge id is the one the edge's certificate proves (the CA signs every
    // node's certificate; without this check any of them could take over an edge's link).
    let certified = relay_peer_identity(&conn);
    if certified
        != Some(firetower_net::NodeIdentity::new(
            firetower_net::Role::Edge,
            edge,
        ))
    {
        tracing::warn!(
            edge,
            ?certified,
            "relay hello refused: not the certificate's edge"
        );
        conn.close(
            close_code::BAD_HELLO.into(),
            format!(
                "edge {edge}: the certificate says {}",
                certified.map_or("no node identity".to_string(), |i| i.to_string())
            )
            .as_bytes(),
        );
        return;
    }
    let mut lanes = Vec::with_capacity(shared.config.relay_lanes);
    // Bytes are the bound (`lane_hard_bytes`); the frame bound only keeps the channel finite.
    let lane_frames = (shared.config.lane_hard_bytes / 32).max(1024);
    for _ in 0..shared.config.relay_lanes {
        let Ok(stream) = conn.open_uni().await else {
            return;
        };
        let (tx, rx) = mpsc::channel::<CountedFrame>(lane_frames);
        shared.tasks.spawn(write_frames(stream, rx));
        lanes.push(tx);
    }
    let bytes = Arc::new(LaneBytes {
        queued: AtomicUsize::new(0),
        budget: shared.config.lane_queue_bytes,
        drained: Notify::new(),
        over: shared.over_links.clone(),
        sent: AtomicU64::new(0),
        closed_sent: shared.relay_sent_closed.clone(),
    });
    let (control, control_rx) = mpsc::channel::<ControlFrame>(CONTROL_QUEUE);
    shared.tasks.spawn(write_frames(send, control_rx));
    let generation = shared.next_generation.fetch_add(1, Ordering::Relaxed);
    shared.apply(|state, _| {
        if let Some(old) = state.links.links.insert(
            edge,
            EdgeLink {
                generation,
                conn: conn.clone(),
                lanes,
                bytes,
                control: control.clone(),
            },
        ) {
            old.conn
                .close(close_code::REPLACED.into(), b"replaced by a newer link");
            state.core.handle_edge_down(edge);
        }
        state.core.handle_edge_up(edge);
    });
    tracing::info!(edge, "edge linked");

    // The edge's client publishes, in the order it sent them, through one task: a publish
    // that waits for room never holds up the edge's Interest frames on this stream. The
    // edge bounds its unanswered publishes; one beyond this bound is answered `overloaded`.
    let (publishes, publishes_rx) = mpsc::channel::<ClientPublish>(CLIENT_PUBLISH_QUEUE);
    // Set (under the state lock) when this link ends: the edge has then failed every
    // publish it sent on it, so the task publishes none of those still queued or waiting
    // for room, and no answer meant for this link reaches the edge's next one.
    let link_closed = Arc::new(AtomicBool::new(false));
    shared.tasks.spawn(client_publishes(
        shared.clone(),
        edge,
        publishes_rx,
        link_closed.clone(),
    ));

    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(firetower_net::relay::ReadError::Frame(e)) => {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(edge, error = %e, "bad relay frame; closing the link");
                conn.close(close_code::BAD_FRAME.into(), e.to_string().as_bytes());
                break;
            }
            Err(_) => break,
        };
        match frame.frame {
            Some(Frame::Interest(interest))
                if firetower_proto::topic::validate_route_topic(&interest.topic).is_err() =>
            {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(edge, "interest in an invalid topic; ignored");
            }
            Some(Frame::Interest(interest)) => {
                let recorded = shared.apply(|state, _| {
                    state.core.handle_interest(
                        edge,
                        &interest.topic,
                        interest.subscribers,
                        interest.epoch,
                        interest.route_since,
                        (interest.passed_epoch, interest.passed_seq),
                    )
                });
                if let Err(e) = recorded {
                    tracing::warn!(edge, error = %e, "interest refused");
                }
            }
            Some(Frame::Recover(recover))
                if firetower_proto::topic::validate_topic(&recover.topic).is_err() =>
            {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(edge, "recover of an invalid topic; ignored");
            }
            Some(Frame::Recover(recover)) => {
                shared.apply(|state, _| {
                    state.core.handle_recover(
                        edge,
                        &recover.topic,
                        recover.epoch,
                        recover.seq,
                        recover.request_id,
                    )
                });
            }
            Some(Frame::SlotsSynced(synced)) => {
                shared.apply(|state, _| {
                    state
                        .core
                        .handle_slots_synced(edge, &synced.slots, &synced.epochs)
                });
            }
            Some(Frame::KickDone(done)) => shared.kicks.done(done.request_id, done.closed),
            Some(Frame::ClientPublish(publish)) => {
                shared
                    .counters
                    .client_publishes
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(mpsc::error::TrySendError::Full(publish)) = publishes.try_send(publish) {
                    shared
                        .counters
                        .publish_results
                        .record(tonic::Code::ResourceExhausted, 1);
                    let done = client_publish_done(
                        publish.id,
                        &Outcome::Failed(PublishError::Refused {
                            owner: shared.config.id,
                            code: tonic::Code::ResourceExhausted as i32,
                            message: format!(
                                "more than {CLIENT_PUBLISH_QUEUE} client publishes from edge \
                                 {edge} wait at distributor {}",
                                shared.config.id
                            ),
                        }),
                    );
                    shared.apply(|state, _| {
                        if !state.links.control(edge, ControlFrame(done)) {
                            shared.control_overflow(state, edge);
                        }
                    });
                }
            }
            _ => {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(edge, "unexpected relay frame from an edge; ignored");
            }
        }
    }
    shared.apply(|state, now| {
        link_closed.store(true, Ordering::Relaxed);
        if state
            .links
            .links
            .get(&edge)
            .is_some_and(|l| l.generation == generation)
        {
            state.links.links.remove(&edge);
            state.core.handle_edge_down(edge);
            // The edge failed the publishes it had sent on this link (`unavailable`) and
            // its publishers go on: a late retry here would land after their next ones
            // (found by sim seed 110).
            let mut abandoned: Vec<OpId> = state
                .client_waiters
                .iter()
                .filter(|(_, (from, _))| *from == edge)
                .map(|(op, _)| *op)
                .collect();
            abandoned.sort_unstable();
            for op in abandoned {
                state.client_waiters.remove(&op);
                state.core.handle_publish_abandoned(now, op, edge);
            }
            tracing::info!(edge, "edge unlinked");
        }
    });
}

/// Publishes an edge's client publishes, in order: each is checked as `Publish` checks
/// its message, waits for room toward its subscribers (up to `publish_retry_ms`), and goes
/// through the core like any other publish (sequenced inline when this node owns the
/// topic; otherwise it queues behind the topic's earlier ops, so one edge's publishes of a
/// topic keep their order). A publish with an id is answered with `ClientPublishDone`.
async fn client_publishes<C: Connector>(
    shared: Arc<Shared<C>>,
    edge: u64,
    mut publishes: mpsc::Receiver<ClientPublish>,
    link_closed: Arc<AtomicBool>,
) {
    let retry = Duration::from_millis(shared.config.publish_retry_ms);
    while let Some(publish) = publishes.recv().await {
        if link_closed.load(Ordering::Relaxed) {
            // The edge answered these `unavailable` when the link went.
            break;
        }
        let ClientPublish { topic, data, id } = publish;
        let checked = firetower_proto::topic::validate_topic(&topic)
            .map_err(|e| format!("topic: {e}"))
            .and_then(|()| {
                if data.len() > shared.config.max_data_bytes {
                    return Err(format!(
                        "data: {} bytes exceeds the limit of {} bytes",
                        data.len(),
                        shared.config.max_data_bytes
                    ));
                }
                firetower_proto::client::validate_json_data(&data).map_err(|e| format!("data: {e}"))
            });
        let refused = match checked {
            Err(message) => {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                Some((tonic::Code::InvalidArgument, message))
            }
            Ok(()) => match shared
                .admit(&topic, tokio::time::Instant::now() + retry)
                .await
            {
                Err(status) => Some((status.code(), status.message().to_string())),
                Ok(()) => None,
            },
        };
        shared.apply(|state, now| match refused {
            // Read under the lock the link's end takes to abandon this edge's publishes:
            // a publish that passed its room check after that is not started.
            _ if link_closed.load(Ordering::Relaxed) => {}
            Some((code, message)) => {
                shared.counters.publish_results.record(code, 1);
                if id != 0 {
                    let done = client_publish_done(
                        id,
                        &Outcome::Failed(PublishError::Refused {
                            owner: shared.config.id,
                            code: code as i32,
                            message,
                        }),
                    );
                    if !state.links.control(edge, ControlFrame(done)) {
                        shared.control_overflow(state, edge);
                    }
                }
            }
            None => {
                let op = state.core.handle_publish(now, &topic, vec![data]);
                if id != 0 {
                    state.client_waiters.insert(op, (edge, id));
                }
            }
        });
    }
}

/// Runs a distributor on a TCP listener and a UDP socket, loading TLS from the config:
/// what `firetower distributor` does.
pub async fn run_udp(
    config: Config,
    grpc: tokio::net::TcpListener,
    udp: std::net::UdpSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    run_udp_with_counters(config, grpc, udp, shutdown, Arc::default()).await
}

/// [`run_udp`] with counters the caller can read.
pub async fn run_udp_with_counters(
    config: Config,
    grpc: tokio::net::TcpListener,
    udp: std::net::UdpSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
    counters: Arc<Counters>,
) -> Result<(), NodeError> {
    run_udp_with_ops(config, grpc, udp, None, shutdown, counters).await
}

/// [`run_udp_with_counters`], also serving the operations endpoints (`/metrics`,
/// `/healthz`, `/readyz`, `/topics`; see [`run_with_ops`]) on `ops` when given: what
/// `firetower distributor` does with `metrics_listen`.
pub async fn run_udp_with_ops(
    config: Config,
    grpc: tokio::net::TcpListener,
    udp: std::net::UdpSocket,
    ops: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    counters: Arc<Counters>,
) -> Result<(), NodeError> {
    config.validate()?;
    let tls = firetower_net::tls::TlsMaterial::load(&config.tls)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(tls.server_config()?),
        udp,
        Arc::new(quinn::TokioRuntime),
    )?;
    tls.require_identity(firetower_net::NodeIdentity::new(
        firetower_net::Role::Distributor,
        config.id,
    ))?;
    let incoming = firetower_net::tls_incoming(
        firetower_net::accept_nodelay(grpc),
        firetower_net::ServerTls::new(&tls)?,
    );
    run_with_ops(
        config,
        incoming,
        endpoint,
        firetower_net::TcpConnector::tls(firetower_net::ClientTls::node(&tls)?),
        ops,
        shutdown,
        counters,
    )
    .await
}

/// The most bytes of messages one `Recovered` frame carries (the relay takes frames up to
/// 1 MiB, and one message is at most `max_data_bytes`, below that).
const RECOVERED_FRAME_BYTES: usize = 512 << 10;

/// The answer to a Recover as relay frames, back to back, `last` on the final one: each
/// carries at most [`RECOVERED_FRAME_BYTES`] of messages (or one message).
fn recovered_frames(request_id: u64, topic: &str, answer: HistoryAnswer) -> Vec<RelayFrame> {
    let frame = |messages: Vec<Deliver>, last: bool| RelayFrame {
        frame: Some(Frame::Recovered(Recovered {
            request_id,
            topic: topic.to_string(),
            ok: answer.recovered,
            epoch: answer.current.0,
            seq: answer.current.1,
            messages,
            last,
        })),
    };
    let mut frames = Vec::new();
    let mut chunk: Vec<Deliver> = Vec::new();
    let mut bytes = 0;
    for delivery in &answer.messages {
        if !chunk.is_empty() && bytes + delivery.len() > RECOVERED_FRAME_BYTES {
            frames.push(frame(std::mem::take(&mut chunk), false));
            bytes = 0;
        }
        bytes += delivery.len();
        // The frame names the topic once; the edge reads it there.
        chunk.push(Deliver {
            topic: String::new(),
            ..delivery.deliver().clone()
        });
    }
    frames.push(frame(chunk, true));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_address_is_registered_when_there_is_one() {
        let config = Config {
            grpc_advertise: "10.0.0.1:6667".into(),
            quic_advertise: "10.0.0.1:6666".into(),
            ..Config::default()
        };
        let names = |c: &Config| member_addrs(c).into_iter().collect::<Vec<_>>();
        assert_eq!(
            names(&config),
            vec![
                ("grpc".to_string(), "10.0.0.1:6667".to_string()),
                ("quic".to_string(), "10.0.0.1:6666".to_string())
            ]
        );
        let listening = Config {
            metrics_listen: "0.0.0.0:9100".into(),
            ..config.clone()
        };
        assert_eq!(member_addrs(&listening)["metrics"], "0.0.0.0:9100");
        let advertised = Config {
            metrics_advertise: "10.0.0.1:9100".into(),
            ..listening
        };
        assert_eq!(member_addrs(&advertised)["metrics"], "10.0.0.1:9100");
    }
}
