//! The edge's decisions, sans-IO: local subscriptions, interest toward the owners, the
//! order filter on deliveries, and the fan-out list of each message.
//!
//! Inputs are `handle_*` calls, with time passed in; every output, the hot path's
//! deliveries included, goes into one queue that the shell drains with
//! [`EdgeCore::poll_output`] after each input and carries out in order (`node::Edge::apply`
//! is the only caller). Nothing comes back as a return value, so nothing can be forgotten.
//!
//! ```text
//!  client (after the hooks)   handle_subscribe / handle_unsubscribe / handle_disconnect
//!                             handle_client_publish               ┐
//!  relay lanes                handle_deliver / handle_fence       │
//!  relay control              handle_interest_ack                 │
//!                             handle_publish_done                 │
//!  metastore watch            handle_watch                        ├─▶ EdgeCore ─▶ poll_output()
//!  link state                 handle_link_up / handle_link_down   │
//!  timer                      handle_tick(now)                    ┘
//!
//!  Output::Deliver(Fanout)        queue one framed message to these connections
//!  Output::Subscribed / SubscribeFailed / Unsubscribed
//!                                 answer a connection (and run on_subscribe)
//!  Output::Left                   a connection no longer holds these topics (on_unsubscribe)
//!  Output::Relay                  send a relay frame (Interest, SlotsSynced, ClientPublish)
//!                                 to a distributor
//!  Output::PublishFailed          tell a publishing connection its publish failed
//!  Output::Published              answer a numbered publish with its position
//!  Output::PauseReads / ResumeReads
//!                                 stop / resume reading a publisher's socket (see [`publish`])
//!  Output::Connect / Disconnect   keep or drop the relay link to a distributor
//!  Output::AckHot                 tell the metastore this edge receives a hot topic's route
//! ```
//!
//! Queries (`routing`, `interest_slots`, `publish_route`, `counters`) read state and emit
//! nothing.
//!
//! A subscriber is acknowledged only once the topic's owner has acknowledged this edge's
//! interest at the owner's current epoch; from then on every message the owner sequences
//! reaches it. Deliveries carry `(epoch, seq)`; a delivery that is not newer than the last
//! one passed on for its topic is dropped, so clients see each message once and in order
//! even when an old and a new owner both send during a slot move.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use firetower_proto::client::{ClientError, ErrorCode, Recovery, StreamPos};
use firetower_proto::metastore::v1 as pb;
use firetower_proto::relay::v1::{relay_frame::Frame, Interest, RelayFrame, SlotsSynced};
use firetower_proto::routing::{edge_route_topic, RoutingTable};
use firetower_proto::{slot_of, Slot};
use tokio::time::{Duration, Instant};

use crate::frame::delivery_frame;

mod publish;
mod recovery;
pub mod seam;
pub use publish::{PublishCounters, DEFAULT_ANSWER_TIMEOUT, DEFAULT_MAX_IN_FLIGHT};
pub use recovery::MAX_RECOVERIES_IN_FLIGHT;

/// A client connection, numbered by the shell.
pub type ConnId = u64;

/// Deliveries held per waiting route of a split topic while the route before it drains.
/// Beyond it the oldest are dropped (counted): they are the most likely to have come
/// through the older route already.
pub const ROUTE_BUFFER: usize = 8192;
/// Message ids remembered per split topic to drop the second copy of a message that came
/// through two routes (a few seconds of a hot topic's messages).
pub const RECENT_IDS: usize = 4096;
/// How long a route change may wait for the old route's fence before the edge moves on
/// anyway (counted in `forced_switches`): the old owner is gone or cut off.
pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Split topics whose recent message ids are kept after their last local subscriber left.
pub const DEPARTED_TOPICS: usize = 64;
/// Deliveries of a split topic kept while a recovery of it waits for its answer (see
/// [`LocalTopic::record`]): a few seconds of a busy topic.
pub const RECOVERY_RECORD: usize = 8192;
/// Deliveries of a split topic with subscribers here always kept (see
/// [`LocalTopic::record`]): what a recovery answer can stop short of, passed before the
/// recovering connection's subscribe arrived (the owner's fan-out of a message takes
/// milliseconds).
pub const RECOVERY_TAIL: usize = 64;
/// How often an unanswered hot-topic ack is sent again.
const HOT_ACK_RESEND: Duration = Duration::from_secs(2);

/// Something the shell must do. Outputs are carried out in the order they were emitted:
/// everything that goes to one connection's send queue or to one distributor's link keeps
/// that order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Queue a message to its local subscribers (a delivery, or one held back while a
    /// split topic changed route, now due). The hot path: one per message passed on.
    Deliver(Fanout),
    /// Send a relay frame to a distributor over its link (if it is up).
    Relay { distributor: u64, frame: RelayFrame },
    /// These topics are now subscribed for the connection: ack them to the client and run
    /// the on_subscribe hook.
    Subscribed { conn: ConnId, topics: Vec<String> },
    /// A subscribe with a position is effective for `topic`: ack it to the client with how
    /// the recovery went (see [`recovery`]) and run the on_subscribe hook. The missed
    /// deliveries, if any, follow as [`Output::Deliver`]s to this connection alone.
    SubscribedFrom {
        conn: ConnId,
        topic: String,
        recovery: Recovery,
    },
    /// These subscriptions could not be made effective: tell the client, run no hook.
    SubscribeFailed { conn: ConnId, error: ClientError },
    /// Ack an unsubscribe to the client: the topics it asked about, held or not.
    Unsubscribed { conn: ConnId, topics: Vec<String> },
    /// The connection no longer holds these topics (an unsubscribe, or its disconnect):
    /// run the on_unsubscribe hook.
    Left { conn: ConnId, topics: Vec<String> },
    /// Open (and keep open) a relay link to this distributor.
    Connect { distributor: u64 },
    /// Close the relay link to this distributor.
    Disconnect { distributor: u64 },
    /// Tell the metastore that this edge receives the route of `topic` prepared at `since`.
    AckHot { topic: String, since: u64 },
    /// A client publish failed (the distributor's answer, no route, a lost link, no
    /// answer in time): send the connection this error frame.
    PublishFailed { conn: ConnId, error: ClientError },
    /// A client publish the client numbered (`id`) was sequenced at `(epoch, seq)`: send
    /// the connection a `published` frame.
    Published {
        conn: ConnId,
        id: u64,
        topic: String,
        epoch: u64,
        seq: u64,
    },
    /// Close the connection with this WebSocket close code and reason.
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// A publish of this connection waits: stop reading its socket (keep writing to it).
    PauseReads { conn: ConnId },
    /// The connection has no waiting publish any more: read its socket again.
    ResumeReads { conn: ConnId },
}

/// What a delivery carries besides its sequence: the message id every copy shares, and
/// the hot-topic route tag it was published under (0: never split).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageTags {
    pub msg_id: u64,
    pub route_tag: u64,
    /// The message's position in its client topic's stream, numbered by the topic's
    /// owner: what clients see. For a sub-topic `T#k` it travels with the delivery; for the
    /// topic's own name it is the delivery's `(epoch, seq)`.
    pub canon: (u64, u64),
}

impl MessageTags {
    /// The tags of a relay delivery.
    pub fn of(d: &firetower_proto::relay::v1::Deliver) -> Self {
        let canon = if (d.canon_epoch, d.canon_seq) == (0, 0) {
            (d.epoch, d.seq)
        } else {
            (d.canon_epoch, d.canon_seq)
        };
        MessageTags {
            msg_id: d.msg_id,
            route_tag: d.route_tag,
            canon,
        }
    }
}

/// A delivery held by a route (see [`Route::held`]).
#[derive(Debug, Clone)]
struct Held {
    data: Bytes,
    msg_id: u64,
    route_tag: u64,
    canon: (u64, u64),
}

/// A message to pass to local subscribers: one frame, many connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Fanout {
    /// The complete WebSocket text frame (header and JSON), built once: every recipient's
    /// send queue gets a clone of these bytes.
    pub frame: Bytes,
    /// The recipients. Shared with the topic until its subscribers change, so a delivery
    /// costs no allocation for its recipient list.
    pub conns: Arc<[ConnId]>,
}

impl Fanout {
    /// The client frame's JSON (the WebSocket payload).
    pub fn json(&self) -> &[u8] {
        crate::frame::payload(&self.frame)
    }
}

/// One route of a client topic: the name this edge receives it under. A never-split topic
/// has one route, its own name. While a split topic changes route, the first route
/// delivers and the later ones hold their deliveries until the one before has drained.
#[derive(Debug)]
struct Route {
    name: String,
    /// The hot-entry revision this route was prepared at (0: the topic's first route).
    since: u64,
    /// Held deliveries.
    held: VecDeque<Held>,
    /// When this route was added (for [`SWITCH_TIMEOUT`]).
    added: Option<Instant>,
    /// Joined while the topic had subscribers here, during a change: its owner replays
    /// what was published on it since the change was prepared (see `send_interest`).
    replay: bool,
    /// The revision at which the metastore committed this route (every edge had joined
    /// it), once seen. Publishes routed by a view from before it may have gone to the
    /// previous route alone, so the previous route must be fenced at least this far.
    committed_at: Option<u64>,
}

#[derive(Debug, Default)]
struct LocalTopic {
    /// Acknowledged subscribers: they receive deliveries. Changed only through
    /// `add_subscriber` and `drop_conn`, which keep `recipients` in step.
    subscribers: BTreeSet<ConnId>,
    /// `subscribers` as the list each [`Fanout`] shares; rebuilt at the first delivery
    /// after a change (so a burst of subscribes costs one rebuild, not one each).
    recipients: Option<Arc<[ConnId]>>,
    /// Waiting for every route's InterestAck, with the time they asked.
    pending: BTreeMap<ConnId, Instant>,
    /// The positions given by waiting connections that subscribed with one.
    positions: BTreeMap<ConnId, StreamPos>,
    /// Connections waiting for the owner's answer to their recovery.
    recovering: BTreeMap<ConnId, recovery::Recovering>,
    routes: VecDeque<Route>,
    /// The last `(epoch, seq)` given to clients: a position in the topic's stream, which
    /// its owner numbers (also for a split topic, whose sub-topics carry it; `(0, 0)`
    /// before the first).
    client_last: (u64, u64),
    /// Deliveries of a split topic held behind a gap in the topic's stream, by position
    /// (see [`LocalTopic::pass_in_order`]), at most [`seam::SEAM_BUFFER`].
    gap: BTreeMap<(u64, u64), (Bytes, u64)>,
    /// When `gap` began to hold (the core's clock at the last tick).
    gap_opened: Option<Instant>,
    /// Connections whose recovery of a split topic was answered up to a position this edge
    /// had not passed yet: each becomes a recipient just before the first delivery past it.
    joining: BTreeMap<ConnId, (u64, u64)>,
    /// Connections that left the topic while joining (their recovery went past what this
    /// edge had passed): should one subscribe again, it joins past the same position, or
    /// it would get again what its recovery gave it (sim seed 167). Dropped once the
    /// topic's stream passes them, and with their connection.
    floors: BTreeMap<ConnId, (u64, u64)>,
    /// What was passed on while a recovery of a split topic waits for its answer (an
    /// answer can stop short of what this edge passed meanwhile), at most
    /// [`RECOVERY_RECORD`], else the newest [`RECOVERY_TAIL`] of a split topic; and the
    /// newest position dropped from it.
    record: VecDeque<((u64, u64), Bytes)>,
    record_dropped: (u64, u64),
    /// Recent message ids (split topics only), oldest first.
    recent: VecDeque<u64>,
    recent_set: HashSet<u64>,
    /// Deliveries routed by a hot-topic view newer than this edge's, held until this
    /// edge's view has caught up (see [`EdgeCore::deliver`]), then every later delivery of
    /// the topic behind them, in arrival order. At most [`ROUTE_BUFFER`].
    ahead: VecDeque<AheadDelivery>,
}

/// A delivery held in [`LocalTopic::ahead`].
#[derive(Debug)]
struct AheadDelivery {
    name: String,
    epoch: u64,
    seq: u64,
    data: Bytes,
    tags: MessageTags,
}

impl LocalTopic {
    fn count(&self) -> u64 {
        (self.subscribers.len() + self.pending.len() + self.recovering.len() + self.joining.len())
            as u64
    }

    fn add_subscriber(&mut self, conn: ConnId) {
        if self.subscribers.insert(conn) {
            self.recipients = None;
        }
    }

    /// Removes the connection, acknowledged or waiting.
    fn drop_conn(&mut self, conn: ConnId) {
        if self.subscribers.remove(&conn) {
            self.recipients = None;
        }
        self.pending.remove(&conn);
        self.positions.remove(&conn);
        self.recovering.remove(&conn);
        if let Some(at) = self.joining.remove(&conn) {
            if at > self.client_last {
                self.floors.insert(conn, at);
            }
        }
    }

    /// Makes a connection that subscribes (without a position) a recipient, or one that
    /// joins past its floor.
    fn admit(&mut self, conn: ConnId) {
        match self.floors.remove(&conn) {
            Some(at) if at > self.client_last => {
                self.joining.insert(conn, at);
            }
            _ => self.add_subscriber(conn),
        }
    }

    /// The current subscribers, shared.
    fn recipients(&mut self) -> Arc<[ConnId]> {
        let subscribers = &self.subscribers;
        self.recipients
            .get_or_insert_with(|| subscribers.iter().copied().collect())
            .clone()
    }

    /// Passes a message on to the subscribers, if there are any: it is the topic's latest.
    /// A recovered connection waiting for a position before this one joins first; while a
    /// recovery of a split topic waits for its answer (or to be asked), the frame is kept
    /// for it.
    fn fanout(&mut self, topic: &str, text: &str, epoch: u64, seq: u64) -> Option<Fanout> {
        self.client_last = (epoch, seq);
        if !self.floors.is_empty() {
            self.floors.retain(|_, at| *at > (epoch, seq));
        }
        if !self.joining.is_empty() {
            let due: Vec<ConnId> = self
                .joining
                .iter()
                .filter(|(_, at)| (epoch, seq) > **at)
                .map(|(c, _)| *c)
                .collect();
            for conn in due {
                self.joining.remove(&conn);
                self.add_subscriber(conn);
            }
        }
        // A split topic's owner answers a recovery only up to its first message still being
        // fanned out, so the answer can stop short of what this edge passed, even before
        // the connection's subscribe arrived (sim seed 76): the newest deliveries are
        // always kept ([`RECOVERY_TAIL`]), and everything while a connection with a
        // position waits (for its routes to be acknowledged, to be asked, for the answer).
        let split = self.routes.iter().any(|r| r.name != topic);
        let recording = (!self.recovering.is_empty()
            && self.recovering.values().any(recovery::Recovering::records))
            || (!self.positions.is_empty() && split);
        let keep = if recording {
            RECOVERY_RECORD
        } else if split && !self.subscribers.is_empty() {
            RECOVERY_TAIL
        } else {
            0
        };
        if keep == 0 && !self.record.is_empty() {
            self.record.clear();
        }
        if self.subscribers.is_empty() && !recording {
            return None;
        }
        let frame = delivery_frame(topic, text, epoch, seq);
        if keep > 0 {
            while self.record.len() >= keep {
                if let Some((at, _)) = self.record.pop_front() {
                    self.record_dropped = at;
                }
            }
            self.record.push_back(((epoch, seq), frame.clone()));
        }
        if self.subscribers.is_empty() {
            return None;
        }
        Some(Fanout {
            frame,
            conns: self.recipients(),
        })
    }

    /// Passes a split topic's message on in its stream's order: at once when it is the
    /// next one (or the first, or of a newer epoch), with the held ones it lets follow;
    /// held when it leaves a gap (until the gap fills, [`seam::SEAM_WAIT`] passes or
    /// [`seam::SEAM_BUFFER`] are held); dropped when it is not newer than the last.
    /// The sub-topics' owners receive the messages in the stream's order from the topic's
    /// owner, so a gap is a race (a slot move, a retried run), mostly filled at once.
    #[allow(clippy::too_many_arguments)]
    fn pass_in_order(
        &mut self,
        topic: &str,
        pos: (u64, u64),
        text: &str,
        data: &Bytes,
        msg_id: u64,
        clock: Option<Instant>,
        counters: &mut CoreCounters,
        outputs: &mut VecDeque<Output>,
    ) {
        let last = self.client_last;
        if pos <= last {
            counters.stale_deliveries += 1;
            return;
        }
        let next = last == (0, 0) || pos.0 != last.0 || pos.1 == last.1 + 1;
        if !next {
            if self.gap.is_empty() {
                self.gap_opened = clock;
            }
            // A copy of its own, like a route's held delivery.
            self.gap.insert(pos, (Bytes::copy_from_slice(data), msg_id));
            if self.gap.len() >= seam::SEAM_BUFFER {
                counters.seam_gaps_passed += 1;
                self.release_gap(topic, None, counters, outputs);
            }
            return;
        }
        // A newer epoch: what the older one still held goes first.
        if pos.0 != last.0 && !self.gap.is_empty() {
            self.release_gap(topic, Some(pos), counters, outputs);
        }
        if let Some(fanout) = self.fanout(topic, text, pos.0, pos.1) {
            outputs.push_back(Output::Deliver(fanout));
        }
        self.release_following(topic, counters, outputs);
    }

    /// Passes the held deliveries that follow the last one without a gap.
    fn release_following(
        &mut self,
        topic: &str,
        counters: &mut CoreCounters,
        outputs: &mut VecDeque<Output>,
    ) {
        while let Some((&pos, _)) = self.gap.first_key_value() {
            let last = self.client_last;
            if pos <= last {
                self.gap.remove(&pos);
                counters.stale_deliveries += 1;
                continue;
            }
            if pos != (last.0, last.1 + 1) {
                break;
            }
            if let Some((data, _)) = self.gap.remove(&pos) {
                // Checked to be UTF-8 when it arrived.
                if let Ok(text) = std::str::from_utf8(&data) {
                    if let Some(fanout) = self.fanout(topic, text, pos.0, pos.1) {
                        outputs.push_back(Output::Deliver(fanout));
                    }
                }
            }
        }
        if self.gap.is_empty() {
            self.gap_opened = None;
        }
    }

    /// Gives up on the gap: passes every held delivery (below `before`, or all) in order.
    fn release_gap(
        &mut self,
        topic: &str,
        before: Option<(u64, u64)>,
        counters: &mut CoreCounters,
        outputs: &mut VecDeque<Output>,
    ) {
        while let Some((&pos, _)) = self.gap.first_key_value() {
            if before.is_some_and(|b| pos >= b) {
                break;
            }
            let Some((data, _)) = self.gap.remove(&pos) else {
                break;
            };
            if pos <= self.client_last {
                counters.stale_deliveries += 1;
                continue;
            }
            if let Ok(text) = std::str::from_utf8(&data) {
                if let Some(fanout) = self.fanout(topic, text, pos.0, pos.1) {
                    outputs.push_back(Output::Deliver(fanout));
                }
            }
        }
        if self.gap.is_empty() {
            self.gap_opened = None;
        }
    }

    /// Remembers `id`; false when it was seen already.
    fn first_sight(&mut self, id: u64) -> bool {
        if !self.recent_set.insert(id) {
            return false;
        }
        self.recent.push_back(id);
        if self.recent.len() > RECENT_IDS {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        true
    }
}

/// One name this edge receives deliveries under (a topic or a sub-topic `T#k`).
#[derive(Debug)]
struct RouteName {
    /// The client topic it serves.
    base: String,
    /// The owner epoch at which the owner acknowledged our interest; 0 = not yet.
    acked_epoch: u64,
    /// The last `(epoch, seq)` received.
    last: (u64, u64),
    /// The highest fence the owner sent: no more publishes routed below it will come.
    fence: u64,
    /// Deliveries held behind a gap in the stream ([`seam`]).
    gap: seam::Gap,
}

/// Edge counters that the core keeps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CoreCounters {
    /// Deliveries dropped because they were not newer than the last one of their topic.
    pub stale_deliveries: u64,
    /// Gaps in a stream given up on after [`seam::SEAM_WAIT`] (or a full hold): the held
    /// deliveries went on without the missing ones.
    pub seam_gaps_passed: u64,
    /// Deliveries for topics without local subscribers.
    pub unwanted_deliveries: u64,
    /// Deliveries whose data was not UTF-8.
    pub bad_deliveries: u64,
    /// Second copies of a split topic's message (same message id), dropped.
    pub duplicate_deliveries: u64,
    /// Held deliveries dropped because a waiting route's buffer was full.
    pub held_dropped: u64,
    /// Split-topic route changes completed, and those forced by [`SWITCH_TIMEOUT`].
    pub route_switches: u64,
    pub forced_switches: u64,
    /// Subscribes with a position that were recovered, and those the owner could not
    /// serve (see [`recovery`]); deliveries sent as recovered.
    pub recoveries: u64,
    pub recoveries_refused: u64,
    pub recovered_deliveries: u64,
    /// Split-topic recoveries whose answer stopped short of what this edge had passed by
    /// more than it kept ([`RECOVERY_RECORD`]): the connection missed the difference.
    pub recovery_record_short: u64,
}

/// The edge state machine.
#[derive(Debug)]
pub struct EdgeCore {
    id: u64,
    max_topics_per_conn: usize,
    subscribe_timeout: Duration,
    routing: RoutingTable,
    topics: HashMap<String, LocalTopic>,
    names: HashMap<String, RouteName>,
    conns: HashMap<ConnId, BTreeSet<String>>,
    /// slot → how many route names live there (the slots registered with the metastore).
    slot_topics: BTreeMap<Slot, usize>,
    /// Route names whose subscriber count changed since the last flush.
    dirty: BTreeSet<String>,
    links: BTreeSet<u64>,
    /// Hot topic → (the `since` acked, when the ack was last sent).
    hot_acks: BTreeMap<String, (u64, Instant)>,
    /// Recent message ids of split topics that stopped being local, newest last, at most
    /// [`DEPARTED_TOPICS`]: a topic subscribed again soon after gets them back, so a copy
    /// still in flight from before (through the other route, or a replay) is not passed on
    /// a second time.
    departed: VecDeque<(String, VecDeque<u64>)>,
    /// Client publishes: numbered, bounded per link, ordered per topic.
    publishes: publish::Publishes,
    /// Topics whose `ahead` holds deliveries.
    ahead_topics: BTreeSet<String>,
    /// Route names holding deliveries behind a gap ([`seam`]).
    gapped: BTreeSet<String>,
    /// Split topics holding deliveries behind a gap in their stream
    /// ([`LocalTopic::pass_in_order`]); a topic whose gap closed leaves at the next tick.
    split_gaps: BTreeSet<String>,
    /// The time of the last tick (when a gap opened, for [`seam::SEAM_WAIT`]).
    clock: Option<Instant>,
    /// Recover requests sent and not yet answered (or given up), at most
    /// [`MAX_RECOVERIES_IN_FLIGHT`]; and the last request id used.
    recoveries_in_flight: usize,
    next_recovery: u64,
    /// Recoveries waiting for room among those in flight, oldest first: (topic, conn). At
    /// most one per connection and topic it is recovering (so bounded by the connections
    /// times `max_topics_per_conn`); entries whose connection left or was answered are
    /// skipped when they come up.
    recovery_queue: VecDeque<(String, ConnId)>,
    outputs: VecDeque<Output>,
    counters: CoreCounters,
}

impl EdgeCore {
    pub fn new(id: u64, max_topics_per_conn: usize, subscribe_timeout: Duration) -> Self {
        EdgeCore {
            id,
            max_topics_per_conn,
            subscribe_timeout,
            routing: RoutingTable::default(),
            topics: HashMap::new(),
            names: HashMap::new(),
            conns: HashMap::new(),
            slot_topics: BTreeMap::new(),
            dirty: BTreeSet::new(),
            links: BTreeSet::new(),
            hot_acks: BTreeMap::new(),
            departed: VecDeque::new(),
            publishes: publish::Publishes::default(),
            ahead_topics: BTreeSet::new(),
            gapped: BTreeSet::new(),
            split_gaps: BTreeSet::new(),
            clock: None,
            recoveries_in_flight: 0,
            next_recovery: 0,
            recovery_queue: VecDeque::new(),
            outputs: VecDeque::new(),
            counters: CoreCounters::default(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    pub fn counters(&self) -> &CoreCounters {
        &self.counters
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Slots with local subscribers: what the metastore should list this edge for.
    pub fn interest_slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.slot_topics.keys().copied()
    }

    /// Topics with local subscribers (or subscribes waiting for their owner).
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Topics the connection is subscribed to (or waiting for).
    pub fn conn_topics(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, BTreeSet::len)
    }

    /// The route names a client topic is received under, for a topic becoming local now:
    /// its own name for a never-split topic; the current route of a split one (both routes
    /// while a change is prepared and not yet committed).
    fn initial_routes(&self, topic: &str, now: Instant) -> Vec<Route> {
        let route = |name: String, since: u64| Route {
            name,
            since,
            held: VecDeque::new(),
            added: Some(now),
            replay: false,
            committed_at: None,
        };
        let Some(hot) = self.routing.hot_route(topic) else {
            return vec![route(topic.to_string(), 0)];
        };
        let new = edge_route_topic(self.id, topic, hot.shards);
        if hot.committed {
            return vec![route(new, hot.since)];
        }
        let old = edge_route_topic(self.id, topic, hot.prev_shards);
        if old == new {
            vec![route(new, hot.since)]
        } else {
            vec![route(old, 0), route(new, hot.since)]
        }
    }

    fn owner_link(&self, name: &str) -> Option<(u64, u64)> {
        let route = self.routing.route(slot_of(name));
        (route.distributor != 0 && self.links.contains(&route.distributor))
            .then_some((route.distributor, route.epoch))
    }

    /// Announces the local subscriber count of a route name (0 when it is not used).
    fn send_interest(&mut self, name: &str) {
        let Some((owner, epoch)) = self.owner_link(name) else {
            return;
        };
        let route_name = self.names.get(name);
        let local = route_name.and_then(|n| self.topics.get(&n.base));
        // What this edge passed of the topic, for the owner to fill in what it missed
        // (a plain topic's stream; see `Interest.passed_seq`).
        let passed = route_name
            .filter(|n| n.base == name && local.is_some_and(|t| t.routes.len() <= 1))
            .map_or((0, 0), |n| n.last);
        let subscribers = local.map_or(0, LocalTopic::count);
        // Only a route joined during a change by a topic that already had subscribers here
        // asks for a replay of what was published on it since the change was prepared. The
        // route a topic delivers from, and the routes of a topic that just became local, ask
        // for none: a new subscriber is owed nothing from before it subscribed, and once this
        // edge has left a name it no longer has the filter that would drop what it already
        // passed on.
        let route_since = local
            .and_then(|t| {
                t.routes
                    .iter()
                    .skip(1)
                    .filter(|r| r.name == name && r.replay)
                    .map(|r| r.since)
                    .max()
            })
            .unwrap_or(0);
        self.outputs.push_back(Output::Relay {
            distributor: owner,
            frame: RelayFrame {
                frame: Some(Frame::Interest(Interest {
                    topic: name.to_string(),
                    subscribers,
                    epoch,
                    route_since,
                    passed_epoch: passed.0,
                    passed_seq: passed.1,
                })),
            },
        });
    }

    /// Starts receiving a route name for `base` (if it is not already).
    fn add_name(&mut self, name: &str, base: &str) {
        if self.names.contains_key(name) {
            return;
        }
        self.names.insert(
            name.to_string(),
            RouteName {
                base: base.to_string(),
                acked_epoch: 0,
                last: (0, 0),
                fence: 0,
                gap: seam::Gap::default(),
            },
        );
        *self.slot_topics.entry(slot_of(name)).or_default() += 1;
        self.send_interest(name);
    }

    /// Stops receiving a route name and tells its owner.
    fn remove_name(&mut self, name: &str) {
        self.gapped.remove(name);
        if self.names.remove(name).is_none() {
            return;
        }
        self.dirty.remove(name);
        let slot = slot_of(name);
        if let Some(n) = self.slot_topics.get_mut(&slot) {
            *n -= 1;
            if *n == 0 {
                self.slot_topics.remove(&slot);
            }
        }
        self.send_interest(name);
    }

    fn name_acked(&self, name: &str) -> bool {
        let route = self.routing.route(slot_of(name));
        self.names
            .get(name)
            .is_some_and(|n| n.acked_epoch != 0 && n.acked_epoch == route.epoch)
    }

    /// Every route of the topic has its owner's ack: a subscriber now gets every message.
    fn topic_ready(&self, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| t.routes.iter().all(|r| self.name_acked(&r.name)))
    }

    /// A connection subscribes to `topics` (already validated and passed by the hooks).
    pub fn handle_subscribe(&mut self, now: Instant, conn: ConnId, topics: Vec<String>) {
        self.subscribe(now, conn, topics, &BTreeMap::new());
    }

    /// [`EdgeCore::handle_subscribe`], with the positions to recover from (see
    /// [`recovery`]) for some of the topics.
    fn subscribe(
        &mut self,
        now: Instant,
        conn: ConnId,
        topics: Vec<String>,
        since: &BTreeMap<String, StreamPos>,
    ) {
        let mut ready = Vec::new();
        let mut over_limit = Vec::new();
        for topic in topics {
            let mine = self.conns.entry(conn).or_default();
            if mine.contains(&topic) {
                // Already subscribed (or waiting): ack again only if effective.
                if self
                    .topics
                    .get(&topic)
                    .is_some_and(|t| t.subscribers.contains(&conn))
                {
                    ready.push(topic);
                }
                continue;
            }
            if mine.len() >= self.max_topics_per_conn {
                over_limit.push(topic);
                continue;
            }
            mine.insert(topic.clone());
            if !self.topics.contains_key(&topic) {
                let routes = self.initial_routes(&topic, now);
                let names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
                let recent = match self.departed.iter().position(|(t, _)| *t == topic) {
                    Some(at) => self.departed.remove(at).map(|(_, r)| r).unwrap_or_default(),
                    None => VecDeque::new(),
                };
                let recent_set = recent.iter().copied().collect();
                self.topics.insert(
                    topic.clone(),
                    LocalTopic {
                        routes: routes.into(),
                        pending: BTreeMap::from([(conn, now)]),
                        positions: since
                            .get(&topic)
                            .map(|p| BTreeMap::from([(conn, *p)]))
                            .unwrap_or_default(),
                        recent,
                        recent_set,
                        ..LocalTopic::default()
                    },
                );
                for name in names {
                    self.add_name(&name, &topic);
                }
                if self.topic_ready(&topic) {
                    self.make_ready(&topic);
                }
                continue;
            }
            let is_ready = self.topic_ready(&topic);
            let wanted = since.get(&topic).copied();
            let Some(entry) = self.topics.get_mut(&topic) else {
                continue;
            };
            if let Some(pos) = wanted {
                entry.positions.insert(conn, pos);
            }
            if is_ready && wanted.is_none() {
                entry.admit(conn);
                ready.push(topic.clone());
            } else if !is_ready {
                entry.pending.insert(conn, now);
            }
            let names: Vec<String> = entry.routes.iter().map(|r| r.name.clone()).collect();
            self.dirty.extend(names);
            if is_ready && wanted.is_some() {
                self.start_recovery(now, &topic, conn);
            }
        }
        if !ready.is_empty() {
            self.outputs.push_back(Output::Subscribed {
                conn,
                topics: ready,
            });
        }
        if !over_limit.is_empty() {
            let max = self.max_topics_per_conn;
            self.outputs.push_back(Output::SubscribeFailed {
                conn,
                error: ClientError::new(
                    ErrorCode::TooManyTopics,
                    format!(
                        "a connection may subscribe to at most {max} topics; refused: {}",
                        over_limit.join(",")
                    ),
                ),
            });
        }
    }

    /// A connection unsubscribes from `topics`: the client gets its ack
    /// ([`Output::Unsubscribed`], every topic it named), then [`Output::Left`] names the
    /// ones it held.
    pub fn handle_unsubscribe(&mut self, conn: ConnId, topics: Vec<String>) {
        let mut removed = Vec::new();
        for topic in &topics {
            let Some(mine) = self.conns.get_mut(&conn) else {
                break;
            };
            if !mine.remove(topic) {
                continue;
            }
            removed.push(topic.clone());
            self.remove_subscriber(conn, topic);
        }
        if self.conns.get(&conn).is_some_and(BTreeSet::is_empty) {
            self.conns.remove(&conn);
        }
        self.outputs
            .push_back(Output::Unsubscribed { conn, topics });
        if !removed.is_empty() {
            self.outputs.push_back(Output::Left {
                conn,
                topics: removed,
            });
        }
    }

    fn remove_subscriber(&mut self, conn: ConnId, topic: &str) {
        let Some(entry) = self.topics.get_mut(topic) else {
            return;
        };
        let made_room = entry.recovering.get(&conn).is_some_and(|w| w.sent());
        if made_room {
            // Its answer, if it comes, finds nobody waiting.
            self.recoveries_in_flight -= 1;
        }
        entry.drop_conn(conn);
        let names: Vec<String> = entry.routes.iter().map(|r| r.name.clone()).collect();
        if entry.count() == 0 {
            // Tell the owners at once that we no longer need it.
            if let Some(gone) = self.topics.remove(topic) {
                if self.routing.hot_route(topic).is_some() {
                    self.departed.retain(|(t, _)| t != topic);
                    if self.departed.len() >= DEPARTED_TOPICS {
                        self.departed.pop_front();
                    }
                    self.departed.push_back((topic.to_string(), gone.recent));
                }
            }
            for name in names {
                self.remove_name(&name);
            }
        } else {
            self.dirty.extend(names);
        }
        if made_room {
            self.send_queued_recoveries();
        }
    }

    /// A connection is gone: [`Output::Left`] names every topic it held (for the hooks).
    /// Its waiting publishes are dropped; those sent are still answered (to nobody).
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        self.publishes_disconnect(now, conn);
        let topics: Vec<String> = self
            .conns
            .remove(&conn)
            .map(|t| t.into_iter().collect())
            .unwrap_or_default();
        for topic in &topics {
            self.remove_subscriber(conn, topic);
            if let Some(entry) = self.topics.get_mut(topic) {
                entry.floors.remove(&conn);
            }
        }
        if !topics.is_empty() {
            self.outputs.push_back(Output::Left { conn, topics });
        }
    }

    /// A delivery from a distributor under route name `name`: [`Output::Deliver`] with the
    /// frame and who gets it, unless it is stale, a second copy, held for a later route, or
    /// unwanted. `data` is a slice of the relay stream's buffer; it is copied once, into
    /// the client frame (or, when held, into a buffer of its own).
    fn deliver(&mut self, name: &str, epoch: u64, seq: u64, data: Bytes, tags: MessageTags) {
        let MessageTags {
            msg_id, route_tag, ..
        } = tags;
        tracing::trace!(
            edge = self.id,
            name,
            epoch,
            seq,
            msg_id,
            route_tag,
            "deliver"
        );
        let Some(route_name) = self.names.get_mut(name) else {
            self.counters.unwanted_deliveries += 1;
            return;
        };
        if (epoch, seq) <= route_name.last {
            self.counters.stale_deliveries += 1;
            return;
        }
        let Ok(text) = std::str::from_utf8(&data) else {
            self.counters.bad_deliveries += 1;
            return;
        };
        route_name.last = (epoch, seq);
        let Some(entry) = self.topics.get_mut(&route_name.base) else {
            self.counters.unwanted_deliveries += 1;
            return;
        };
        // A delivery routed by a newer view of the topic's hot entry than this edge's
        // (its tag is above the last change this edge knows of) may belong to a route
        // this edge has not joined yet: passing it now could put it ahead of an earlier
        // message of its publisher that this edge missed on this route and gets from the
        // new route's replay later (sim seeds 126851, 126944). It waits until this
        // edge's view has caught up, however long that takes (passing it on after a
        // timeout reorders it the same way when the view catches up later: sim seed
        // 126851 again, an edge cut off from the metastore for 10 s), and the topic's
        // later deliveries wait behind it.
        if !entry.ahead.is_empty()
            || (route_tag > 0
                && entry.routes.len() == 1
                && route_tag
                    > self
                        .routing
                        .hot_route(&route_name.base)
                        .map_or(0, |h| h.revision))
        {
            if entry.ahead.is_empty() {
                self.ahead_topics.insert(route_name.base.clone());
            }
            entry.ahead.push_back(AheadDelivery {
                name: name.to_string(),
                epoch,
                seq,
                // A copy of its own, like a held delivery (see `route_delivery`).
                data: Bytes::copy_from_slice(&data),
                tags,
            });
            if entry.ahead.len() >= ROUTE_BUFFER {
                // Full: the view has not caught up for a long time; pass them on rather
                // than lose any.
                let base = route_name.base.clone();
                self.release_ahead(&base, true);
            }
            return;
        }
        route_delivery(
            entry,
            &route_name.base,
            name,
            (epoch, seq),
            text,
            &data,
            tags,
            self.clock,
            &mut self.counters,
            &mut self.outputs,
        );
        if !entry.gap.is_empty() && !self.split_gaps.contains(&route_name.base) {
            self.split_gaps.insert(route_name.base.clone());
        }
    }

    /// Passes on (or routes to a held queue) the deliveries of `topic` held because they
    /// were routed by a newer view than this edge's, up to the first one that still is,
    /// or all of them with `force` (too many wait).
    fn release_ahead(&mut self, topic: &str, force: bool) {
        let Some(entry) = self.topics.get_mut(topic) else {
            self.ahead_topics.remove(topic);
            return;
        };
        let known = self.routing.hot_route(topic).map_or(0, |h| h.revision);
        let mut ahead = std::mem::take(&mut entry.ahead);
        while let Some(d) = ahead.pop_front() {
            if !force && entry.routes.len() == 1 && d.tags.route_tag > known {
                ahead.push_front(d);
                break;
            }
            // Checked to be UTF-8 when it arrived.
            let Ok(text) = std::str::from_utf8(&d.data) else {
                continue;
            };
            route_delivery(
                entry,
                topic,
                &d.name,
                (d.epoch, d.seq),
                text,
                &d.data,
                d.tags,
                self.clock,
                &mut self.counters,
                &mut self.outputs,
            );
        }
        if !entry.gap.is_empty() {
            self.split_gaps.insert(topic.to_string());
        }
        if ahead.is_empty() {
            self.ahead_topics.remove(topic);
        }
        entry.ahead = ahead;
    }

    /// The owner acknowledged our interest in route name `name` at `epoch`: subscribers
    /// waiting for it are effective once every route of their topic is acknowledged.
    pub fn handle_interest_ack(&mut self, distributor: u64, name: &str, epoch: u64) {
        let route = self.routing.route(slot_of(name));
        if route.distributor != distributor || route.epoch != epoch {
            return; // An ack from an owner that is no longer current.
        }
        let Some(entry) = self.names.get_mut(name) else {
            return;
        };
        entry.acked_epoch = epoch;
        let base = entry.base.clone();
        if self.topic_ready(&base) {
            self.make_ready(&base);
        }
        self.try_switch(&base, None);
    }

    fn make_ready(&mut self, topic: &str) {
        let Some(mut entry) = self.topics.get_mut(topic) else {
            return;
        };
        let pending = std::mem::take(&mut entry.pending);
        for (conn, asked) in pending {
            if entry.positions.contains_key(&conn) {
                self.start_recovery(asked, topic, conn);
            } else {
                entry.admit(conn);
                self.outputs.push_back(Output::Subscribed {
                    conn,
                    topics: vec![topic.to_string()],
                });
            }
            let Some(again) = self.topics.get_mut(topic) else {
                return;
            };
            entry = again;
        }
    }

    /// The owner of route name `name` refuses publishes routed below `since` from now on,
    /// and every delivery before this fence has arrived.
    pub fn handle_fence(&mut self, name: &str, since: u64) {
        tracing::trace!(edge = self.id, name, since, "fence");
        let Some(entry) = self.names.get_mut(name) else {
            return;
        };
        entry.fence = entry.fence.max(since);
        let base = entry.base.clone();
        self.try_switch(&base, None);
    }

    /// Moves a split topic to its next route once the first route has drained: the next
    /// route is committed (every edge, this one included, had joined it, so every publish
    /// routed by a committed view reaches us through it), and the first route's owner fenced
    /// it at or above the commit revision (so every publish routed by an older view, which
    /// may have gone to the first route alone, has arrived). With `now`, a change that
    /// waited longer than [`SWITCH_TIMEOUT`] moves on anyway.
    fn try_switch(&mut self, topic: &str, now: Option<Instant>) {
        loop {
            let Some(entry) = self.topics.get(topic) else {
                return;
            };
            let (Some(head), Some(next)) = (entry.routes.front(), entry.routes.get(1)) else {
                return;
            };
            let fenced = next
                .committed_at
                .is_some_and(|at| self.names.get(&head.name).is_some_and(|n| n.fence >= at));
            let timed_out = now.is_some_and(|now| {
                next.added
                    .is_some_and(|t| now.saturating_duration_since(t) >= SWITCH_TIMEOUT)
            });
            let ready = fenced && self.name_acked(&next.name);
            if !ready && !timed_out {
                return;
            }
            if !fenced {
                self.counters.forced_switches += 1;
            }
            tracing::debug!(edge = self.id, topic, from = %head.name, to = %next.name, committed_at = ?next.committed_at, forced = !fenced, "route switch");
            self.counters.route_switches += 1;
            let Some(entry) = self.topics.get_mut(topic) else {
                return;
            };
            let Some(old) = entry.routes.pop_front() else {
                return;
            };
            // What the first route held (published by a view that knew the next route) and
            // what the next one held, in the topic's stream order, each message once: the
            // positions the topic's owner gave them order both routes' messages alike. (The
            // first route's are passed too, not only the next's: a message the topic's owner
            // sent on again under a newer route may have reached the first route alone.)
            let mut due: Vec<Held> = old.held.into_iter().collect();
            // The new first route passes on what it held, except what was published by a
            // view that knew the route after it: that stays held, like a delivery that
            // arrives now (see `deliver`), because the route after carries it too, in
            // its own order (found by sim seed 500123: split 0 → 7 → 8 seen late by an
            // edge, whose 7-way sub-topic is also one of the 8).
            let next_since = entry.routes.get(1).map(|r| r.since);
            if let Some(r) = entry.routes.front_mut() {
                let mut covered = VecDeque::new();
                for held in r.held.drain(..) {
                    if next_since.is_some_and(|since| held.route_tag >= since) {
                        covered.push_back(held);
                    } else {
                        due.push(held);
                    }
                }
                r.held = covered;
            }
            due.sort_by_key(|h| h.canon);
            for held in due {
                // Checked to be UTF-8 when it arrived.
                let Ok(text) = std::str::from_utf8(&held.data) else {
                    continue;
                };
                if !entry.first_sight(held.msg_id) {
                    self.counters.duplicate_deliveries += 1;
                    continue;
                }
                entry.pass_in_order(
                    topic,
                    held.canon,
                    text,
                    &held.data,
                    held.msg_id,
                    self.clock,
                    &mut self.counters,
                    &mut self.outputs,
                );
            }
            if !entry.gap.is_empty() {
                self.split_gaps.insert(topic.to_string());
            }
            if !entry.routes.iter().any(|r| r.name == old.name) {
                self.remove_name(&old.name);
            }
        }
    }

    /// Applies a metastore watch event: links follow the distributors, the topics of every
    /// slot that changed owner are announced to the new owner, and split topics join their
    /// new routes.
    pub fn handle_watch(&mut self, now: Instant, event: pb::WatchEvent) {
        let changes = self.routing.apply(event);
        for d in changes.distributors_down {
            if !self.routing.distributors().contains_key(&d) {
                self.outputs
                    .push_back(Output::Disconnect { distributor: d });
            }
        }
        for d in changes.distributors_up {
            self.outputs.push_back(Output::Connect { distributor: d });
        }
        self.follow_hot_routes(now, &changes.hot);
        let mut by_owner: BTreeMap<u64, Vec<(Slot, u64)>> = BTreeMap::new();
        for change in &changes.owners {
            if change.to != 0 && self.links.contains(&change.to) {
                by_owner
                    .entry(change.to)
                    .or_default()
                    .push((change.slot, change.epoch));
            }
        }
        if by_owner.is_empty() {
            return;
        }
        let moved: BTreeSet<Slot> = by_owner.values().flatten().map(|(s, _)| *s).collect();
        let mut names: Vec<String> = self
            .names
            .keys()
            .filter(|t| moved.contains(&slot_of(t)))
            .cloned()
            .collect();
        names.sort();
        for name in &names {
            self.send_interest(name);
        }
        for (owner, slots) in by_owner {
            self.push_synced(owner, slots);
        }
    }

    /// Follows the hot entries of local topics: a prepared change adds its route (the
    /// topic then holds two or more); a committed one marks its route committed.
    fn follow_hot_routes(&mut self, now: Instant, hot_changed: &[String]) {
        let mut added: Vec<(String, String)> = Vec::new();
        let mut changed: Vec<String> = Vec::new();
        for topic in hot_changed {
            let (Some(entry), Some(hot)) =
                (self.topics.get_mut(topic), self.routing.hot_route(topic))
            else {
                continue;
            };
            let Some(last) = entry.routes.back() else {
                continue;
            };
            let name = edge_route_topic(self.id, topic, hot.shards);
            if hot.since > last.since && last.name != name {
                tracing::debug!(edge = self.id, topic, %name, since = hot.since, "route added");
                entry.routes.push_back(Route {
                    name: name.clone(),
                    since: hot.since,
                    held: VecDeque::new(),
                    added: Some(now),
                    replay: true,
                    committed_at: None,
                });
                added.push((name.clone(), topic.clone()));
            }
            // (The same sub-topic under a new shard count keeps its route: nothing moves.)
            // A change is prepared only after the one before it committed, so a route from
            // before this entry's `since` is committed even if this view skipped that event
            // (a snapshot): by `since` at the latest.
            for route in entry.routes.iter_mut().skip(1) {
                if route.committed_at.is_none() && route.since < hot.since {
                    route.committed_at = Some(hot.since);
                    changed.push(topic.clone());
                }
            }
            if hot.committed && entry.routes.len() > 1 {
                if let Some(last) = entry.routes.back_mut() {
                    if last.committed_at.is_none() {
                        last.committed_at = Some(hot.revision);
                        changed.push(topic.clone());
                    }
                }
            }
        }
        added.sort();
        for (name, topic) in &added {
            self.add_name(name, topic);
            // Subscribers wait for the new route too (see topic_ready), so a subscriber
            // acked from now on is owed nothing the old route misses.
            let names: Vec<String> = self.topics.get(topic).map_or_else(Vec::new, |t| {
                t.routes.iter().map(|r| r.name.clone()).collect()
            });
            self.dirty.extend(names);
        }
        changed.extend(added.into_iter().map(|(_, topic)| topic));
        // Deliveries that waited for this view go on: into the held queue of a route
        // added just now, or to the subscribers.
        for topic in hot_changed {
            if self.ahead_topics.contains(topic) {
                self.release_ahead(topic, false);
            }
        }
        changed.sort();
        changed.dedup();
        for topic in changed {
            self.try_switch(&topic, None);
        }
    }

    fn push_synced(&mut self, distributor: u64, slots: Vec<(Slot, u64)>) {
        // Bounded frames: 4096 slots (about 40 KiB) each.
        for chunk in slots.chunks(4096) {
            self.outputs.push_back(Output::Relay {
                distributor,
                frame: RelayFrame {
                    frame: Some(Frame::SlotsSynced(SlotsSynced {
                        slots: chunk.iter().map(|(s, _)| u32::from(*s)).collect(),
                        epochs: chunk.iter().map(|(_, e)| *e).collect(),
                    })),
                },
            });
        }
    }

    /// The relay link to `distributor` is up: announce every local route name it owns,
    /// then say that every slot it owns is synced.
    pub fn handle_link_up(&mut self, distributor: u64) {
        self.links.insert(distributor);
        self.publishes_link_up(distributor);
        let mut names: Vec<String> = self
            .names
            .keys()
            .filter(|t| self.routing.route(slot_of(t)).distributor == distributor)
            .cloned()
            .collect();
        names.sort();
        for name in &names {
            self.send_interest(name);
        }
        let slots: Vec<(Slot, u64)> = self
            .routing
            .slots_of(distributor)
            .map(|(s, r)| (s, r.epoch))
            .collect();
        self.push_synced(distributor, slots);
    }

    /// The relay link to `distributor` is down. Acked topics stay acked: the owner keeps
    /// sending to us through the metastore fallback until we re-announce. The client
    /// publishes sent on it and not answered fail with `unavailable` (they may or may not
    /// have been delivered).
    pub fn handle_link_down(&mut self, now: Instant, distributor: u64) {
        // First, so that no waiting publish is routed to it.
        self.links.remove(&distributor);
        self.publishes_link_down(now, distributor);
    }

    /// Periodic work: send changed subscriber counts, fail subscribes that waited longer
    /// than the subscribe timeout, move on from route changes stuck past
    /// [`SWITCH_TIMEOUT`], ack prepared hot-topic routes to the metastore, and fail client
    /// publishes left unanswered past the answer timeout.
    pub fn handle_tick(&mut self, now: Instant) {
        self.seam_tick(now);
        self.split_gap_tick(now);
        self.publishes_tick(now);
        let dirty = std::mem::take(&mut self.dirty);
        for name in dirty {
            self.send_interest(&name);
        }
        let timeout = self.subscribe_timeout;
        let mut failed: BTreeMap<ConnId, Vec<String>> = BTreeMap::new();
        for (topic, entry) in &self.topics {
            for (conn, since) in &entry.pending {
                if now.saturating_duration_since(*since) >= timeout {
                    failed.entry(*conn).or_default().push(topic.clone());
                }
            }
        }
        for (conn, topic) in self.recoveries_timed_out(now) {
            failed.entry(conn).or_default().push(topic);
        }
        for (conn, topics) in failed {
            for topic in &topics {
                if let Some(mine) = self.conns.get_mut(&conn) {
                    mine.remove(topic);
                }
                self.remove_subscriber(conn, topic);
            }
            self.outputs.push_back(Output::SubscribeFailed {
                conn,
                error: ClientError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "no distributor confirmed these topics within {} ms; subscribe again",
                        timeout.as_millis()
                    ),
                )
                .with_topic(topics.join(",")),
            });
        }
        let mut changing: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, t)| t.routes.len() > 1)
            .map(|(name, _)| name.clone())
            .collect();
        changing.sort();
        for topic in changing {
            self.try_switch(&topic, Some(now));
        }
        // Deliveries waiting for this edge's view of a hot entry go on once it has caught
        // up (also when no watch event named the topic, e.g. after a snapshot).
        let ahead: Vec<String> = self.ahead_topics.iter().cloned().collect();
        for topic in ahead {
            self.release_ahead(&topic, false);
        }
        self.ack_hot_routes(now);
    }

    /// Gives up on the gaps in split topics' streams that waited [`seam::SEAM_WAIT`].
    fn split_gap_tick(&mut self, now: Instant) {
        if self.split_gaps.is_empty() {
            return;
        }
        let topics: Vec<String> = self.split_gaps.iter().cloned().collect();
        for topic in topics {
            let Some(entry) = self.topics.get_mut(&topic) else {
                self.split_gaps.remove(&topic);
                continue;
            };
            let due = entry
                .gap_opened
                .is_none_or(|at| now.saturating_duration_since(at) >= seam::SEAM_WAIT);
            if !entry.gap.is_empty() && due {
                self.counters.seam_gaps_passed += 1;
                entry.release_gap(&topic, None, &mut self.counters, &mut self.outputs);
            }
            if entry.gap.is_empty() {
                self.split_gaps.remove(&topic);
            }
        }
    }

    /// Acks every prepared (uncommitted) hot route this edge now receives: at once for a
    /// topic without local subscribers, else once the new route's owner acked our
    /// interest. Unanswered acks are sent again every [`HOT_ACK_RESEND`].
    fn ack_hot_routes(&mut self, now: Instant) {
        let mut acks = Vec::new();
        for (topic, hot) in self.routing.hot_routes() {
            if hot.committed {
                continue;
            }
            if let Some((since, sent)) = self.hot_acks.get(topic) {
                if *since == hot.since && now.saturating_duration_since(*sent) < HOT_ACK_RESEND {
                    continue;
                }
            }
            let ready = match self.topics.get(topic) {
                None => true,
                Some(_) => {
                    let name = edge_route_topic(self.id, topic, hot.shards);
                    self.name_acked(&name)
                }
            };
            if ready {
                acks.push((topic.clone(), hot.since));
            }
        }
        for (topic, since) in acks {
            self.hot_acks.insert(topic.clone(), (since, now));
            self.outputs.push_back(Output::AckHot { topic, since });
        }
        // Bounded by the metastore's hot table: forget acks of entries no longer pending.
        let routing = &self.routing;
        self.hot_acks
            .retain(|topic, _| routing.hot_route(topic).is_some_and(|h| !h.committed));
    }

    /// Where a client publish of `topic` goes: the owner of the topic's own slot, if its
    /// link is up (it fans a split topic out).
    pub fn publish_route(&self, topic: &str) -> Option<u64> {
        self.owner_link(topic).map(|(owner, _)| owner)
    }
}

/// Passes a delivery on to the topic's subscribers, or holds it in the queue of its route
/// while a route change waits (see [`EdgeCore::deliver`]): the part of the order filter
/// after the `(epoch, seq)` check and the wait for this edge's view.
#[allow(clippy::too_many_arguments)]
fn route_delivery(
    entry: &mut LocalTopic,
    topic: &str,
    name: &str,
    (epoch, seq): (u64, u64),
    text: &str,
    data: &Bytes,
    tags: MessageTags,
    clock: Option<Instant>,
    counters: &mut CoreCounters,
    outputs: &mut VecDeque<Output>,
) {
    let MessageTags {
        msg_id,
        route_tag,
        canon,
    } = tags;
    // A name can come back in the list (split, merge, split again before this edge
    // switched): a delivery belongs to the latest route of that name that its tag knew of.
    let at = entry
        .routes
        .iter()
        .rposition(|r| r.name == name && r.since <= route_tag)
        .or_else(|| entry.routes.iter().position(|r| r.name == name));
    let Some(at) = at else {
        counters.unwanted_deliveries += 1;
        return;
    };
    // The first route holds, rather than passes on, what was published by a view that
    // knew the next route: the next route carries it too (publishers send to both, and
    // its owner replays what it had before our interest arrived), in an order consistent
    // with what was published on the new route alone.
    let covered = at == 0
        && entry
            .routes
            .get(1)
            .is_some_and(|next| route_tag >= next.since);
    if at > 0 || covered {
        // Held until the routes before it have drained (or, for the first route, in case
        // the change has to be forced through).
        let held = &mut entry.routes[at].held;
        if held.len() >= ROUTE_BUFFER {
            held.pop_front();
            counters.held_dropped += 1;
        }
        // A copy of its own: a slice of the stream's buffer would keep the whole received
        // packet (batch) alive for as long as the message is held.
        held.push_back(Held {
            data: Bytes::copy_from_slice(data),
            msg_id,
            route_tag,
            canon,
        });
        return;
    }
    if route_tag == 0 && entry.routes.len() == 1 {
        // A never-split topic: its owner's order is the lane's ([`seam`] held any gap).
        if let Some(fanout) = entry.fanout(name, text, epoch, seq) {
            outputs.push_back(Output::Deliver(fanout));
        }
        return;
    }
    // A message routed by a hot-topic view may also come through another route of the
    // topic (the topic's owner sends it on to both while a change is prepared, and again
    // under a newer route): remember what passed.
    if !entry.first_sight(msg_id) {
        counters.duplicate_deliveries += 1;
        return;
    }
    entry.pass_in_order(topic, canon, text, data, msg_id, clock, counters, outputs);
}

/// Keeps the metastore's list of this edge's slots in step with the local subscriptions:
/// it computes each batch of additions and removals and remembers what was confirmed.
#[derive(Debug, Default)]
pub struct SlotSync {
    registered: BTreeSet<Slot>,
}

impl SlotSync {
    /// The changes that would make the metastore match `wanted`, or `None` if it does.
    pub fn next_batch(&self, wanted: impl Iterator<Item = Slot>) -> Option<(Vec<u32>, Vec<u32>)> {
        let wanted: BTreeSet<Slot> = wanted.collect();
        let add: Vec<u32> = wanted
            .difference(&self.registered)
            .map(|s| u32::from(*s))
            .collect();
        let remove: Vec<u32> = self
            .registered
            .difference(&wanted)
            .map(|s| u32::from(*s))
            .collect();
        (!add.is_empty() || !remove.is_empty()).then_some((add, remove))
    }

    /// The metastore applied a batch.
    pub fn confirm(&mut self, add: &[u32], remove: &[u32]) {
        for s in add {
            if let Ok(s) = Slot::try_from(*s) {
                self.registered.insert(s);
            }
        }
        for s in remove {
            if let Ok(s) = Slot::try_from(*s) {
                self.registered.remove(&s);
            }
        }
    }

    /// The metastore forgot this edge (a new incarnation): everything must be sent again.
    pub fn reset(&mut self) {
        self.registered.clear();
    }
}

#[cfg(test)]
mod tests;
