//! The distributor's decisions, sans-IO: slot ownership, per-topic sequencing, interest,
//! the choice of edges each message goes to, and publishing (routing, forwarding, retries,
//! deadlines: [`forward`]).
//!
//! ```text
//!  handle_watch(now, event) ─────┐                    ┌─► Deliver{delivery, edges}   lanes
//!  handle_publish(now, topic, …) ┤                    ├─► Replay{edge, deliveries}   lanes
//!  handle_forwarded_run(now, …) ┤                    ├─► Fence{topic, since, edges} lanes
//!  handle_forward_result(now, …) ┼─► DistributorCore ─┼─► InterestAck{edge, …}       control
//!  handle_interest(edge, …) ─────┤   (no clock, no    ├─► Forward{attempt, owner, …} gRPC
//!  handle_edge_up/down, synced ──┤    sockets)        ├─► Reply{op, outcome}         caller
//!  handle_timeout(now) ──────────┘                    └─► Propose(HotProposal)       metastore
//! ```
//!
//! Every input ends with the shell draining [`DistributorCore::poll_command`] and running
//! each command (`node::Runner`); time is always an argument, so the simulator drives it
//! exactly as the real node does.
//!
//! Interest is tagged with the owner epoch the edge saw when it sent it. An entry counts
//! only while its tag is at least the slot's current epoch: interest an edge gave an
//! earlier reign of the slot is stale (the edge re-announces to each new owner).
//!
//! Hot topics: every publish carries the route tag its publisher routed it by (the revision
//! of the topic's hot entry). The owner of a topic or sub-topic refuses a tag older than
//! its own view ([`PublishOutcome::StaleRoute`]); when its view moves on it fences the
//! topic towards its edges ([`Command::Fence`]), after every delivery of the old route. The
//! owner also watches each topic's relay load and proposes splits and merges
//! ([`DistributorCore::handle_tick`]).

mod delivery;
pub mod forward;
pub mod handover;

pub use delivery::Delivery;
pub use forward::{
    AttemptId, ForwardResult, ForwardRun, OpId, Outcome, Position, PublishError, RunOutcome,
};
pub use handover::{HandedForward, HandedMessage, HandedTopic, HandoverAnswer};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use firetower_proto::relay::v1::Deliver;
use tokio::time::{Duration, Instant};

use crate::config::{HistoryPolicy, HistoryRule, HistoryRules, HotPolicy};

use firetower_proto::metastore::v1 as pb;
use firetower_proto::routing::{route_topics, HotRoute, RoutingChanges, RoutingTable};
use firetower_proto::topic::{base_topic, parse_sub_topic, MIN_SHARDS};
use firetower_proto::{slot_of, Slot};

/// Per-topic state: its sequence and which edges want it.
#[derive(Debug, Default)]
struct TopicState {
    /// The stream epoch `seq` counts in: the slot's epoch when this node (or an owner that
    /// handed the stream over, [`handover`]) started the stream.
    epoch: u64,
    seq: u64,
    /// The slot epoch under which `epoch` and `seq` are this node's to continue; any
    /// other reign starts a new stream (0: none).
    reign: u64,
    /// edge → (local subscribers, epoch tag).
    interest: BTreeMap<u64, (u64, u64)>,
    /// Messages sequenced and deliveries sent, since this state was made.
    sequenced: u64,
    relayed: u64,
    /// Messages sequenced in the current load window.
    window_messages: u64,
    /// Messages per second over the last few load windows (each window's rate averaged
    /// with the one before, so a window's weight halves with each that follows): what
    /// [`DistributorCore::busiest_topics`] ranks by.
    recent_rate: f64,
    /// Consecutive windows above the split load / below the merge load.
    windows_over: u32,
    windows_under: u32,
    /// The topic's recent deliveries, newest last, within the [`HistoryPolicy`]: for
    /// clients that recover ([`DistributorCore::handle_recover`]) and the History call.
    /// Those routed by a hot-topic view (route tag > 0) are kept, at least
    /// [`HISTORY_FRAMES`] and [`HISTORY_BYTES`] of them, even with the policy off: an edge
    /// that joins this (sub-)topic while its route changes gets the ones published since
    /// the change was prepared, which the publishers sent here before the edge's interest
    /// arrived.
    history: VecDeque<Kept>,
    /// The bytes of `history`'s frames.
    history_bytes: usize,
    /// The positions of this split topic's messages that its fan-out to the sub-topics has
    /// not finished with yet (bounded by the publishes in progress): recovery and History
    /// serve the stream only up to the first of them, since a client recovered past it
    /// could get the message again when it arrives live (or, were its publisher to send it
    /// again after a crash here, under another position: sim seed 377).
    unfanned: BTreeSet<(u64, u64)>,
    /// The topic's history policy (its rule's, or the default), resolved when the state was
    /// made.
    policy: HistoryPolicy,
    /// When the state was made or last sequenced (the core's clock): a topic idle past
    /// [`DistributorCore::with_idle_topics`] with nobody interested leaves the table.
    active_at: Option<Instant>,
}

/// One delivery in a topic's history.
#[derive(Debug, Clone)]
struct Kept {
    /// The route tag it was published under.
    tag: u64,
    /// The core's clock when it was sequenced (see `DistributorCore::clock`).
    at: Option<Instant>,
    delivery: Delivery,
}

/// What the history holds after a position (see [`DistributorCore::history`]).
#[derive(Debug, Clone)]
pub struct HistoryAnswer {
    /// The position asked for can be served: `messages` are all that followed it (up to
    /// the limit). Without a position: true.
    pub recovered: bool,
    /// The topic's position now, `(epoch, last seq)`; (0, 0) when this distributor does
    /// not own the topic.
    pub current: (u64, u64),
    /// Oldest first.
    pub messages: Vec<Delivery>,
}

/// Deliveries kept per split (sub-)topic for edges that join its route late: a few hundred
/// milliseconds of a busy hot topic, the time an edge takes to see a change and announce.
pub const HISTORY_FRAMES: usize = 1024;
/// And at most this many bytes of them per (sub-)topic, whatever the message size.
pub const HISTORY_BYTES: usize = 1 << 20;

/// Whether a kept delivery was sequenced before `oldest` (see
/// `DistributorCore::history_oldest`).
fn aged(kept: &Kept, oldest: Option<Instant>) -> bool {
    matches!((kept.at, oldest), (Some(at), Some(oldest)) if at < oldest)
}

/// What to do with a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// This distributor owns the topic: the message is `(epoch, seq)` and goes to `edges`.
    Sequenced {
        epoch: u64,
        seq: u64,
        edges: Vec<u64>,
    },
    /// Another distributor owns it (0: nobody does right now).
    NotOwner { owner: u64 },
    /// The publisher routed it by a hot-topic view older than this owner's (`since` is the
    /// owner's): it must wait for its view to catch up and route again.
    StaleRoute { since: u64 },
}

/// A fence to send: `topic`'s owner refuses route tags below `since` from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceOut {
    pub topic: String,
    pub since: u64,
    pub edges: Vec<u64>,
}

/// What the shell does for the core: drained with [`DistributorCore::poll_command`] after
/// every input, in order, by one runner.
#[derive(Debug, Clone)]
pub enum Command {
    /// Queue a sequenced message on its topic's lane to each of `edges` (an edge whose lane
    /// is full loses its link: [`DistributorCore::handle_edge_down`]).
    Deliver { delivery: Delivery, edges: Vec<u64> },
    /// Queue kept deliveries of a split topic on the topic's lane to an edge that joined
    /// its route late, before anything newer.
    Replay {
        edge: u64,
        deliveries: Vec<Delivery>,
    },
    /// Queue a hot-topic fence on its topic's lane, behind every delivery already queued.
    Fence(FenceOut),
    /// Queue the answer to an edge's Recover on the topic's lane, behind every delivery
    /// already queued.
    Recovered {
        edge: u64,
        request_id: u64,
        topic: String,
        answer: HistoryAnswer,
    },
    /// Acknowledge an edge's interest on its control stream.
    InterestAck {
        edge: u64,
        topic: String,
        epoch: u64,
    },
    /// Send `run` to distributor `owner` at `addr` (`ForwardBatch`) and report what became
    /// of it with [`DistributorCore::handle_forward_result`].
    Forward {
        attempt: AttemptId,
        owner: u64,
        addr: String,
        run: ForwardRun,
    },
    /// The outcome of a publish (or of a forwarded run) for whoever waits for `op`.
    Reply { op: OpId, outcome: Outcome },
    /// Propose a split or merge to the metastore.
    Propose(HotProposal),
    /// Ask distributor `from` (at `addr`) for the streams of `slots`, which moved from it
    /// to this node at `epoch`, and report the answer with
    /// [`DistributorCore::handle_handover_answer`].
    Handover {
        from: u64,
        addr: String,
        epoch: u64,
        /// Each slot with its epoch under `from`, as this view shows it.
        slots: Vec<(Slot, u64)>,
    },
}

/// Cumulative counts of the core's decisions, for the shell's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Messages sequenced.
    pub published: u64,
    /// Publishes refused because their hot-topic route was older than this owner's.
    pub stale_routes: u64,
    /// Splits and merges proposed.
    pub hot_proposals: u64,
    /// Deliveries replayed to edges that joined a split topic's route late.
    pub replayed: u64,
    /// Fences sent (one per edge).
    pub fences: u64,
    /// Messages forwarded to their owners (one per message per attempt).
    pub forwarded: u64,
    /// Idle topics that left the table.
    pub topics_evicted: u64,
}

/// How many of its busiest owned topics a distributor reports ([`DistributorCore::busiest_topics`]).
pub const BUSIEST_TOPICS: usize = 20;

/// A rate below this (messages per second) counts as idle: the average of a topic that
/// stopped halves each window and would otherwise never reach 0.
const IDLE_RATE: f64 = 0.01;

/// One of the busiest topics this node owns, as of the last load window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopicRate {
    pub topic: String,
    /// Messages sequenced since its state was made here.
    pub published: u64,
    /// Messages per second over the last few load windows (`TopicState::recent_rate`).
    pub rate: f64,
}

/// The history this node keeps, over all its topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistorySize {
    pub messages: u64,
    /// The frames' bytes (as the policies count them).
    pub bytes: u64,
}

/// A split or merge this owner proposes to the metastore (`shards` 0: merge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotProposal {
    pub topic: String,
    pub shards: u32,
}

/// One (sub-)topic's counters at its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicStats {
    pub sequenced: u64,
    pub relayed: u64,
}

/// Why a publish could not be sequenced here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("the topic table is full ({max} topics); the publish is refused")]
    TooManyTopics { max: usize },
}

/// A topic's cluster-wide subscriber count as this owner knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicCount {
    pub subscribers: u64,
    pub edges: Vec<u64>,
    /// Parallel to `edges`.
    pub edge_subscribers: Vec<u64>,
    pub stats: TopicStats,
}

/// The distributor state machine.
#[derive(Debug)]
pub struct DistributorCore {
    id: u64,
    routing: RoutingTable,
    topics: HashMap<String, TopicState>,
    /// edge → topics it has interest entries in (to clean up when its link drops).
    edge_topics: HashMap<u64, BTreeSet<String>>,
    /// slot → edge → the epoch at which the edge said it had announced all its interest.
    synced: HashMap<Slot, BTreeMap<u64, u64>>,
    /// Edges with a live relay link.
    connected: BTreeSet<u64>,
    max_topics: usize,
    relayed: u64,
    /// Forwarded publishes already sequenced here, by the forwarder's key, so a retried
    /// forward (the first attempt's reply was lost) is answered without sequencing twice.
    /// FIFO-bounded by [`RECENT_FORWARDS`]. With the topic's slot: a slot handed over to
    /// another distributor takes its keys along ([`handover`]), so a retry that reaches
    /// the new owner is not numbered twice in the stream that continues there.
    recent: HashMap<ForwardKey, (Slot, u64, u64)>,
    /// This process's registration incarnation (0 before it registered). It owns a slot
    /// only at an epoch at least this: every slot a new registration gets (or keeps) is
    /// granted at that revision, so an older epoch in the view is stale routing (a lagging
    /// view, or a previous incarnation's).
    incarnation: u64,
    recent_order: VecDeque<ForwardKey>,
    /// Publishes in progress (routing, forwarding, retries).
    publishes: forward::Publishes,
    /// Commands for the shell, in order, until it drains them.
    commands: VecDeque<Command>,
    counters: CoreCounters,
    hot_policy: HotPolicy,
    /// When the current load window started (None: before the first tick).
    window_start: Option<Instant>,
    /// The busiest owned topics as of the last window closed, busiest first (at most
    /// [`BUSIEST_TOPICS`]).
    busiest: Vec<TopicRate>,
    /// The history over all topics as of the last window closed (summed in the window's
    /// pass over the table, so a scrape costs no pass of its own under the node's lock).
    history_size: HistorySize,
    /// Base topic → the highest route tag sequenced here on any of its names, while it is
    /// ahead of this view's hot entry. A tag proves its entry exists, so a publish of any
    /// name of the topic tagged below it was routed by an older view, even while this
    /// owner's own view lags behind both: it is refused as stale like one below the view's
    /// entry. Otherwise a publisher's later message, sent through a distributor with the
    /// older view, could pass through the old route ahead of its earlier one, which the
    /// edges hold for the new route (sim seeds 188 and 193). Pruned as the view catches up;
    /// at most `max_topics` entries.
    route_floors: HashMap<String, u64>,
    history_rules: HistoryRules,
    /// The latest time an input brought (history ages and lease fencing are measured with
    /// it).
    clock: Option<Instant>,
    /// How long a topic nobody is interested in may stay idle before it leaves the table
    /// (None: never).
    idle_after: Option<Duration>,
    /// slot → (reign, the highest `seq` of a topic of that slot evicted in that reign): a
    /// topic made again in the same reign numbers on from there, so no position of its old
    /// stream is ever given twice (a client's old position then answers `recovered:
    /// false`, never a recovery from another stream). At most one entry per slot.
    evicted_floors: HashMap<Slot, (u64, u64)>,
    /// Lease fencing of sequencing (None: off, for tests of other decisions).
    fence: Option<LeaseFence>,
    /// Streams of lost slots kept for their new owners, and slots released early.
    handovers: handover::Handovers,
}

/// When this distributor may sequence, so that two distributors never sequence one slot at
/// once (sim seed 850864: a distributor cut off from the metastore kept sequencing a slot
/// the metastore had moved, and a publisher's later message got an older position).
///
/// - *Its own lease*: the metastore confirms the lease with the revision it answered at
///   ([`DistributorCore::handle_lease_confirmed`]). Once the view has reached that
///   revision, the view was current when the heartbeat was sent, so a slot still shown as
///   owned was owned then; the owner sequences until `ttl` after that send time. The
///   metastore only expires a lease `ttl` after it last heard a heartbeat, and any move
///   committed after a confirmed send time is in a later confirmation's revision, which the
///   view must reach before it counts.
/// - *A slot taken from a live owner* (a rebalance when a distributor joins): the previous
///   owner may not have seen the move; it stops at most `ttl` after the move was committed,
///   so the new owner waits `ttl` from when it saw the move. A slot from no owner, or from
///   one the metastore no longer lists (expired or deregistered), is sequenced at once.
#[derive(Debug)]
struct LeaseFence {
    ttl: Duration,
    /// Sequencing is allowed before this (None: never confirmed).
    fresh_until: Option<Instant>,
    /// Confirmations whose revision the view has not reached yet, oldest first; at most
    /// [`PENDING_CONFIRMATIONS`] (dropping one only delays freshness).
    pending: VecDeque<(Instant, u64)>,
    /// Slots taken from a live owner → when they may be sequenced.
    slot_ready: HashMap<Slot, Instant>,
}

/// Confirmations kept while the view catches up (heartbeats come every third of a lease).
const PENDING_CONFIRMATIONS: usize = 16;

/// A forwarded publish's key: (forwarder id, forwarder's registration incarnation, number).
/// The incarnation makes keys unique across restarts of the forwarder.
pub type ForwardKey = (u64, u64, u64);

/// How many forwarded publishes are remembered for retries (a few seconds of forwards at
/// high rates; a retry comes within the forwarder's retry budget).
pub const RECENT_FORWARDS: usize = 100_000;

impl DistributorCore {
    pub fn new(id: u64, max_topics: usize) -> Self {
        Self::with_hot_policy(
            id,
            max_topics,
            HotPolicy {
                enabled: false,
                ..HotPolicy::default()
            },
        )
    }

    /// A core that proposes hot-topic splits and merges by `hot_policy`.
    pub fn with_hot_policy(id: u64, max_topics: usize, hot_policy: HotPolicy) -> Self {
        DistributorCore {
            id,
            routing: RoutingTable::default(),
            topics: HashMap::new(),
            edge_topics: HashMap::new(),
            synced: HashMap::new(),
            connected: BTreeSet::new(),
            max_topics,
            relayed: 0,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            incarnation: 0,
            publishes: forward::Publishes::new(Duration::from_secs(5)),
            commands: VecDeque::new(),
            counters: CoreCounters::default(),
            hot_policy,
            window_start: None,
            busiest: Vec::new(),
            history_size: HistorySize::default(),
            route_floors: HashMap::new(),
            history_rules: HistoryRules::default(),
            clock: None,
            idle_after: None,
            evicted_floors: HashMap::new(),
            fence: None,
            handovers: handover::Handovers::default(),
        }
    }

    /// The same core, sequencing only under a lease the metastore confirmed (`ttl`: the
    /// lease this node registers with); see [`LeaseFence`].
    pub fn with_lease_fencing(mut self, ttl: Duration) -> Self {
        self.fence = Some(LeaseFence {
            ttl,
            fresh_until: None,
            pending: VecDeque::new(),
            slot_ready: HashMap::new(),
        });
        self
    }

    /// The metastore answered a heartbeat (or the registration) sent at `sent_at` at
    /// `revision` ([`LeaseFence`]). Publishes waiting for an owner try again.
    pub fn handle_lease_confirmed(&mut self, now: Instant, sent_at: Instant, revision: u64) {
        self.advance_clock(now);
        let Some(fence) = self.fence.as_mut() else {
            return;
        };
        if fence.pending.len() >= PENDING_CONFIRMATIONS {
            fence.pending.pop_front();
        }
        fence.pending.push_back((sent_at, revision));
        self.credit_confirmations();
        self.retry_waiting(now);
    }

    /// Counts the confirmations the view has caught up with.
    fn credit_confirmations(&mut self) {
        let view = self.routing.revision();
        let Some(fence) = self.fence.as_mut() else {
            return;
        };
        while let Some(&(sent_at, revision)) = fence.pending.front() {
            if revision > view {
                break;
            }
            fence.pending.pop_front();
            let until = sent_at + fence.ttl;
            fence.fresh_until = Some(fence.fresh_until.map_or(until, |t| t.max(until)));
        }
    }

    /// Whether lease fencing lets this node sequence `slot` now (it owns it in its view).
    fn may_sequence(&self, slot: Slot) -> bool {
        let Some(fence) = &self.fence else {
            return true;
        };
        let Some(now) = self.clock else {
            return false;
        };
        // `slot_ready` is empty unless slots came from a live owner lately (pruned on
        // watch events and ticks): no lookup per message then.
        fence.fresh_until.is_some_and(|until| now < until)
            && (fence.slot_ready.is_empty()
                || fence
                    .slot_ready
                    .get(&slot)
                    .is_none_or(|ready| now >= *ready))
    }

    /// Until when the lease fencing allows sequencing (None: fencing off or never
    /// confirmed).
    pub fn lease_fresh_until(&self) -> Option<Instant> {
        self.fence.as_ref().and_then(|f| f.fresh_until)
    }

    /// The same core, keeping each topic's history by `policy`.
    pub fn with_history(mut self, policy: HistoryPolicy) -> Self {
        self.history_rules.default = policy;
        self
    }

    /// The same core, dropping topics idle for `after` that no edge is interested in (and
    /// with no publish in progress) from its table, at the end of a load window.
    pub fn with_idle_topics(mut self, after: Duration) -> Self {
        self.idle_after = Some(after);
        self
    }

    /// Where a new stream of a topic of `slot` starts numbering in `reign` (see
    /// `evicted_floors`).
    fn evicted_floor(&self, slot: Slot, reign: u64) -> u64 {
        self.evicted_floors
            .get(&slot)
            .filter(|(r, _)| *r == reign)
            .map_or(0, |(_, seq)| *seq)
    }

    /// Drops the idle topics nobody wants (see [`Self::with_idle_topics`]).
    fn evict_idle_topics(&mut self, now: Instant) {
        let Some(after) = self.idle_after else {
            return;
        };
        let routing = &self.routing;
        let busy = &self.publishes;
        let mut evicted: Vec<(Slot, u64, u64)> = Vec::new();
        self.topics.retain(|name, state| {
            let idle = state
                .active_at
                .is_some_and(|at| now.saturating_duration_since(at) >= after);
            let wanted = state.interest.values().any(|(n, _)| *n > 0);
            let publishing = busy.has_ops(name) || busy.has_ops(base_topic(name));
            if !idle || wanted || !state.unfanned.is_empty() || publishing {
                return true;
            }
            let slot = slot_of(name);
            evicted.push((slot, state.reign, state.seq));
            false
        });
        for (slot, reign, seq) in evicted {
            self.counters.topics_evicted += 1;
            if reign != routing.route(slot).epoch || seq == 0 {
                continue; // A stream of an older reign: a new one has a new epoch anyway.
            }
            let floor = self.evicted_floors.entry(slot).or_insert((reign, 0));
            if floor.0 != reign {
                *floor = (reign, 0);
            }
            floor.1 = floor.1.max(seq);
        }
        self.evicted_floors
            .retain(|slot, (reign, _)| routing.route(*slot).epoch == *reign);
    }

    /// The same core, keeping the history of the topics these rules match by the first
    /// matching rule's policy (the others by the default).
    pub fn with_history_rules(mut self, rules: Vec<HistoryRule>) -> Self {
        self.history_rules.rules = rules;
        self
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The routing view (owners, members) as of the last watch event.
    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    /// Messages relayed to edges so far (one per message per edge).
    pub fn relayed(&self) -> u64 {
        self.relayed
    }

    /// Topics with state here.
    pub fn topic_table_len(&self) -> usize {
        self.topics.len()
    }

    /// The next command for the shell, in order.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Cumulative counts of the core's decisions.
    pub fn counters(&self) -> CoreCounters {
        self.counters
    }

    /// Applies a metastore watch event. Slots this distributor lost drop their interest
    /// and sequencing state (except entries already tagged for a later reign). Changed hot
    /// entries fence their topics ([`Command::Fence`]); publishes waiting for an owner try
    /// again.
    pub fn handle_watch(&mut self, now: Instant, event: pb::WatchEvent) -> RoutingChanges {
        self.advance_clock(now);
        let changes = self.routing.apply(event);
        self.keep_departing(now, &changes);
        self.want_handovers(&changes);
        self.prune_handovers(now);
        self.credit_confirmations();
        if let Some(fence) = self.fence.as_mut() {
            for change in &changes.owners {
                if change.to != self.id {
                    fence.slot_ready.remove(&change.slot);
                } else if change.from != 0
                    && change.from != self.id
                    && (changes.snapshot || self.routing.distributors().contains_key(&change.from))
                {
                    fence.slot_ready.insert(change.slot, now + fence.ttl);
                }
            }
            fence.slot_ready.retain(|_, ready| *ready > now);
        }
        let routing = &self.routing;
        self.route_floors.retain(|base, floor| {
            routing
                .hot_route(base)
                .is_none_or(|hot| hot.revision < *floor)
        });
        // A changed hot entry fences its topics here, and drops the kept deliveries routed
        // by older changes. Its topics are the plain name and the sub-topics of the current
        // and the previous route (one change at a time: no edge is on an older one).
        let mut fences = Vec::new();
        for topic in &changes.hot {
            let Some(hot) = self.routing.hot_route(topic) else {
                continue;
            };
            let widest = hot.shards.max(hot.prev_shards);
            let mut names = route_topics(topic, widest);
            if widest > 0 {
                names.push(topic.clone());
            }
            for name in names {
                let slot = slot_of(&name);
                let route = self.routing.route(slot);
                let Some(state) = self.topics.get_mut(&name) else {
                    continue;
                };
                if name != *topic {
                    // The topic's own stream keeps its history (recovery and History
                    // serve it); only the sub-topics' replay of older changes goes.
                    state.history.retain(|k| k.tag >= hot.since);
                    state.history_bytes = state.history.iter().map(|k| k.delivery.len()).sum();
                }
                if route.distributor != self.id {
                    continue;
                }
                let edges = self.targets(&name, slot, route.epoch);
                if !edges.is_empty() {
                    fences.push(FenceOut {
                        topic: name,
                        since: hot.revision,
                        edges,
                    });
                }
            }
        }
        for fence in fences {
            self.counters.fences += fence.edges.len() as u64;
            self.commands.push_back(Command::Fence(fence));
        }
        let lost: HashMap<Slot, u64> = changes
            .owners
            .iter()
            .filter(|c| c.to != self.id)
            .map(|c| (c.slot, c.epoch))
            .collect();
        if !lost.is_empty() {
            let edge_topics = &mut self.edge_topics;
            self.topics.retain(|topic, state| {
                let Some(&epoch) = lost.get(&slot_of(topic)) else {
                    return true;
                };
                state.interest.retain(|edge, (_, tag)| {
                    let keep = *tag > epoch;
                    if !keep {
                        if let Some(set) = edge_topics.get_mut(edge) {
                            set.remove(topic);
                        }
                    }
                    keep
                });
                !state.interest.is_empty()
            });
            for (slot, epoch) in &lost {
                if let Some(edges) = self.synced.get_mut(slot) {
                    edges.retain(|_, e| *e > *epoch);
                    if edges.is_empty() {
                        self.synced.remove(slot);
                    }
                }
            }
        }
        self.retry_waiting(now);
        changes
    }

    /// The fence an edge that just announced `topic` needs, if the topic was ever split and
    /// this node owns it: the route tag below which it refuses publishes.
    fn fence_for(&self, topic: &str) -> Option<u64> {
        let hot = self.routing.hot_route(base_topic(topic))?;
        let route = self.routing.route(slot_of(topic));
        (route.distributor == self.id && hot.revision > 0).then_some(hot.revision)
    }

    /// The registration incarnation (0 before the first registration).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This process registered with the metastore under `incarnation`.
    pub fn handle_registered(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    /// A relay link from `edge` is up.
    pub fn handle_edge_up(&mut self, edge: u64) {
        self.connected.insert(edge);
    }

    /// The relay link from `edge` is gone: forget its interest (it re-announces when it
    /// reconnects; meanwhile the metastore fallback covers it).
    pub fn handle_edge_down(&mut self, edge: u64) {
        self.connected.remove(&edge);
        if let Some(topics) = self.edge_topics.remove(&edge) {
            for topic in topics {
                if let Some(state) = self.topics.get_mut(&topic) {
                    state.interest.remove(&edge);
                    if state.interest.is_empty() && state.seq == 0 {
                        self.topics.remove(&topic);
                    }
                }
            }
        }
        for edges in self.synced.values_mut() {
            edges.remove(&edge);
        }
    }

    /// An edge's interest in a topic (its local subscriber count; 0 = none) at the owner
    /// epoch it saw. When it is recorded with subscribers: an edge that newly joins a split
    /// topic's route first gets the deliveries published on it since the change was
    /// prepared ([`Command::Replay`], see [`HISTORY_FRAMES`]), then (as any edge that
    /// announces a topic that was ever split) the owner's fence, on the topic's lane behind
    /// them, and the edge's interest is acked ([`Command::InterestAck`]). An edge that newly
    /// announces a plain topic with the position it `passed` of the topic's stream first
    /// gets what the history holds after it (the deliveries sequenced here before its
    /// interest arrived: a slot that moved here before the edge linked to this node).
    pub fn handle_interest(
        &mut self,
        edge: u64,
        topic: &str,
        subscribers: u64,
        epoch: u64,
        route_since: u64,
        passed: (u64, u64),
    ) -> Result<(), CoreError> {
        let replay = self.record_interest(edge, topic, subscribers, epoch, route_since, passed)?;
        if subscribers == 0 {
            return Ok(());
        }
        if !replay.is_empty() {
            self.counters.replayed += replay.len() as u64;
            self.commands.push_back(Command::Replay {
                edge,
                deliveries: replay,
            });
        }
        if let Some(since) = self.fence_for(topic) {
            self.counters.fences += 1;
            self.commands.push_back(Command::Fence(FenceOut {
                topic: topic.to_string(),
                since,
                edges: vec![edge],
            }));
        }
        self.commands.push_back(Command::InterestAck {
            edge,
            topic: topic.to_string(),
            epoch,
        });
        Ok(())
    }

    /// Records an edge's interest; returns the deliveries to replay to it.
    fn record_interest(
        &mut self,
        edge: u64,
        topic: &str,
        subscribers: u64,
        epoch: u64,
        route_since: u64,
        passed: (u64, u64),
    ) -> Result<Vec<Delivery>, CoreError> {
        if subscribers == 0 {
            if let Some(state) = self.topics.get_mut(topic) {
                state.interest.remove(&edge);
                if state.interest.is_empty() && state.seq == 0 {
                    self.topics.remove(topic);
                }
            }
            if let Some(set) = self.edge_topics.get_mut(&edge) {
                set.remove(topic);
            }
            return Ok(Vec::new());
        }
        let current = self.routing.route(slot_of(topic)).epoch;
        // The edge says which change it joins for; this owner's view may not show it yet.
        let since = route_since;
        let state = self.topic_entry(topic)?;
        let joined = !state
            .interest
            .get(&edge)
            .is_some_and(|(n, tag)| *n > 0 && *tag >= current);
        state.interest.insert(edge, (subscribers, epoch));
        let replay = if joined && since > 0 {
            state
                .history
                .iter()
                .filter(|k| k.tag >= since)
                .map(|k| k.delivery.clone())
                .collect()
        } else if joined && passed.0 == state.epoch && passed.1 < state.seq {
            // Only deliveries routed under the topic's own name (tag 0): a split topic's
            // sub-topics are replayed by `route_since` above.
            state
                .history
                .iter()
                .filter(|k| {
                    let d = k.delivery.deliver();
                    k.tag == 0 && d.epoch == passed.0 && d.seq > passed.1
                })
                .map(|k| k.delivery.clone())
                .collect()
        } else {
            Vec::new()
        };
        tracing::trace!(
            distributor = self.id,
            topic,
            edge,
            subscribers,
            epoch,
            route_since,
            ?passed,
            joined,
            replay = replay.len(),
            "interest"
        );
        self.edge_topics
            .entry(edge)
            .or_default()
            .insert(topic.to_string());
        Ok(replay)
    }

    /// Sends a sequenced message to its edges ([`Command::Deliver`]); one routed by a
    /// hot-topic view (`route_tag` > 0) is also kept for edges that join late.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        topic: &str,
        route_tag: u64,
        (epoch, seq): (u64, u64),
        (canon_epoch, canon_seq): (u64, u64),
        msg_id: u64,
        data: &Bytes,
        edges: Vec<u64>,
    ) {
        if edges.is_empty()
            && route_tag == 0
            && !self.topics.get(topic).is_some_and(|s| s.policy.enabled())
        {
            return;
        }
        let delivery = Delivery::new(Deliver {
            topic: topic.to_string(),
            epoch,
            seq,
            data: data.clone(),
            msg_id,
            route_tag,
            canon_epoch,
            canon_seq,
            // Stamped by the shell when it queues the delivery (`Delivery::stamp`).
            sequenced_at_us: 0,
        });
        self.record_history(topic, route_tag, &delivery);
        if !edges.is_empty() {
            self.commands
                .push_back(Command::Deliver { delivery, edges });
        }
    }

    /// Keeps a delivery in its topic's history (see [`TopicState::history`]), dropping the
    /// oldest beyond the bounds.
    fn record_history(&mut self, topic: &str, route_tag: u64, delivery: &Delivery) {
        let Some(policy) = self.topics.get(topic).map(|s| s.policy) else {
            return;
        };
        let (messages, bytes) = if route_tag > 0 {
            (
                policy.messages.max(HISTORY_FRAMES),
                policy.bytes.max(HISTORY_BYTES),
            )
        } else if policy.enabled() {
            (policy.messages, policy.bytes)
        } else {
            return;
        };
        let oldest = self.history_oldest(&policy);
        let at = self.clock;
        if let Some(state) = self.topics.get_mut(topic) {
            state.history.push_back(Kept {
                tag: route_tag,
                at,
                delivery: delivery.clone(),
            });
            state.history_bytes += delivery.len();
            while state.history.len() > messages
                || state.history_bytes > bytes
                || state
                    .history
                    .front()
                    .is_some_and(|k| k.tag == 0 && aged(k, oldest))
            {
                match state.history.pop_front() {
                    Some(old) => state.history_bytes -= old.delivery.len(),
                    None => break,
                }
            }
        }
    }

    /// Moves the core's clock to `now` (never back).
    fn advance_clock(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    /// The time before which kept messages are too old (None: no age bound, or no clock).
    fn history_oldest(&self, policy: &HistoryPolicy) -> Option<Instant> {
        let age = policy.age_ms;
        if age == 0 {
            return None;
        }
        self.clock
            .and_then(|now| now.checked_sub(Duration::from_millis(age)))
    }

    /// What `topic`'s history holds after `since` (`(epoch, seq)`), at most `limit`
    /// messages: the first `limit` after `since`, or without it the newest `limit`. A
    /// position is served when it is in the topic's current epoch, not ahead of it, and
    /// every message after it is still kept (none aged out or dropped by the bounds).
    pub fn history(&self, topic: &str, since: Option<(u64, u64)>, limit: usize) -> HistoryAnswer {
        let slot = slot_of(topic);
        let route = self.routing.route(slot);
        if route.distributor != self.id
            || self.incarnation == 0
            || route.epoch < self.incarnation
            || self.released_to(slot, route.epoch).is_some()
        {
            return HistoryAnswer {
                recovered: false,
                current: (0, 0),
                messages: Vec::new(),
            };
        }
        let state = self.topics.get(topic).filter(|s| s.reign == route.epoch);
        let current = state.map_or((route.epoch, self.evicted_floor(slot, route.epoch)), |s| {
            (s.epoch, s.seq)
        });
        // The end of what is served: before the first message still being fanned out.
        let fanned = state
            .and_then(|s| s.unfanned.iter().find(|p| p.0 == current.0))
            .map_or(current.1, |p| p.1.saturating_sub(1));
        let oldest = state.and_then(|s| self.history_oldest(&s.policy));
        // The kept messages of this epoch that have not aged out, oldest first.
        let kept: Vec<&Delivery> = state
            .map(|s| {
                s.history
                    .iter()
                    .filter(|k| k.delivery.deliver().epoch == current.0 && !aged(k, oldest))
                    .map(|k| &k.delivery)
                    .collect()
            })
            .unwrap_or_default();
        let refused = HistoryAnswer {
            recovered: false,
            current,
            messages: Vec::new(),
        };
        match since {
            None => {
                let kept: Vec<&Delivery> = kept
                    .into_iter()
                    .filter(|d| d.deliver().seq <= fanned)
                    .collect();
                let skip = kept.len().saturating_sub(limit);
                HistoryAnswer {
                    recovered: true,
                    current: (current.0, fanned),
                    messages: kept[skip..].iter().map(|d| (*d).clone()).collect(),
                }
            }
            Some((epoch, after)) => {
                if epoch != current.0 || after > current.1 {
                    return refused;
                }
                // Every message after `after` must still be here, one seq after another
                // (a gap would be a silent loss for the client), up to the topic's last.
                // Served up to the fan-out's end, or the position itself when that is past
                // it (the client got a message whose fan-out goes on elsewhere).
                let end = fanned.max(after);
                let missed: Vec<&Delivery> = kept
                    .iter()
                    .copied()
                    .filter(|d| d.deliver().seq > after && d.deliver().seq <= end)
                    .collect();
                let whole = missed.len() as u64 == end - after
                    && missed
                        .iter()
                        .zip(after + 1..)
                        .all(|(d, seq)| d.deliver().seq == seq);
                if !whole {
                    return refused;
                }
                HistoryAnswer {
                    recovered: true,
                    current: (current.0, end),
                    messages: missed.into_iter().take(limit).cloned().collect(),
                }
            }
        }
    }

    /// An edge asks, for a client that subscribes with a position, for what `topic`'s
    /// owner sequenced after `(epoch, seq)`: answered with [`Command::Recovered`] on the
    /// topic's lane, behind every delivery of the topic already queued, so the deliveries
    /// that follow it there are exactly the ones after the answer.
    pub fn handle_recover(
        &mut self,
        edge: u64,
        topic: &str,
        epoch: u64,
        seq: u64,
        request_id: u64,
    ) {
        let answer = self.history(topic, Some((epoch, seq)), usize::MAX);
        tracing::trace!(
            distributor = self.id,
            edge,
            topic,
            epoch,
            seq,
            recovered = answer.recovered,
            current = ?answer.current,
            messages = answer.messages.len(),
            "recover"
        );
        self.commands.push_back(Command::Recovered {
            edge,
            request_id,
            topic: topic.to_string(),
            answer,
        });
    }

    /// The edge has announced all its interest in these slots at these epochs.
    pub fn handle_slots_synced(&mut self, edge: u64, slots: &[u32], epochs: &[u64]) {
        for (slot, epoch) in slots.iter().zip(epochs) {
            if let Ok(slot) = Slot::try_from(*slot) {
                let entry = self.synced.entry(slot).or_default();
                let e = entry.entry(edge).or_insert(0);
                *e = (*e).max(*epoch);
            }
        }
    }

    fn topic_entry(&mut self, topic: &str) -> Result<&mut TopicState, CoreError> {
        if !self.topics.contains_key(topic) {
            if self.topics.len() >= self.max_topics {
                return Err(CoreError::TooManyTopics {
                    max: self.max_topics,
                });
            }
            let policy = self.history_rules.for_topic(base_topic(topic));
            self.topics.insert(
                topic.to_string(),
                TopicState {
                    policy,
                    active_at: self.clock,
                    ..TopicState::default()
                },
            );
        }
        // Present: inserted above if it was missing.
        self.topics.get_mut(topic).ok_or(CoreError::TooManyTopics {
            max: self.max_topics,
        })
    }

    /// [`Self::sequence`] for a forwarded publish with the forwarder's key: a key seen
    /// before gets the earlier `(epoch, seq)` back and goes to no edge again.
    pub fn sequence_forwarded(
        &mut self,
        topic: &str,
        route_tag: u64,
        key: ForwardKey,
    ) -> Result<PublishOutcome, CoreError> {
        if let Some(&(_, epoch, seq)) = self.recent.get(&key) {
            return Ok(PublishOutcome::Sequenced {
                epoch,
                seq,
                edges: Vec::new(),
            });
        }
        let outcome = self.sequence(topic, route_tag)?;
        if let PublishOutcome::Sequenced { epoch, seq, .. } = &outcome {
            self.remember_forward(key, slot_of(topic), *epoch, *seq);
        }
        Ok(outcome)
    }

    /// Remembers a forwarded publish's position (the oldest goes beyond
    /// [`RECENT_FORWARDS`]).
    fn remember_forward(&mut self, key: ForwardKey, slot: Slot, epoch: u64, seq: u64) {
        if self.recent.insert(key, (slot, epoch, seq)).is_some() {
            return;
        }
        if self.recent_order.len() >= RECENT_FORWARDS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        self.recent_order.push_back(key);
    }

    /// Sequences one message if this distributor owns the topic, and picks its edges: those
    /// that announced the topic at the current epoch, plus (until they have synced the
    /// slot) the connected edges the metastore lists for the slot. This is the decision
    /// alone, with no delivery: shells publish through [`Self::handle_publish`].
    ///
    /// `route_tag` is the revision of the last change of the hot-topic entry the publisher
    /// routed by (0 for a topic it knew no entry of).
    pub fn sequence(&mut self, topic: &str, route_tag: u64) -> Result<PublishOutcome, CoreError> {
        let slot = slot_of(topic);
        let route = self.routing.route(slot);
        if route.distributor != self.id {
            return Ok(PublishOutcome::NotOwner {
                owner: route.distributor,
            });
        }
        if let Some(to) = self.released_to(slot, route.epoch) {
            return Ok(PublishOutcome::NotOwner { owner: to });
        }
        if self.incarnation == 0 || route.epoch < self.incarnation || !self.may_sequence(slot) {
            // Not registered yet, the view is older than this registration, or the lease
            // does not cover sequencing now: wait.
            return Ok(PublishOutcome::NotOwner { owner: 0 });
        }
        let base = base_topic(topic);
        let view_floor = self.routing.hot_route(base).map_or(0, |hot| hot.revision);
        // Empty unless some view lags a change here: no lookup per message then.
        let seen_floor = if self.route_floors.is_empty() {
            0
        } else {
            self.route_floors.get(base).copied().unwrap_or(0)
        };
        let floor = view_floor.max(seen_floor);
        if route_tag < floor {
            return Ok(PublishOutcome::StaleRoute { since: floor });
        }
        if route_tag > view_floor && base == topic {
            // The publisher knows a change of the topic's route that this view does not
            // show yet. Numbering the message here is also deciding where it goes on to
            // (the fan-out, `forward.rs`): that waits until this view has caught up, or
            // the message would miss the route the change added.
            return Ok(PublishOutcome::NotOwner { owner: 0 });
        }
        let edges = self.targets(topic, slot, route.epoch);
        let start = self.evicted_floor(slot, route.epoch);
        let clock = self.clock;
        let state = self.topic_entry(topic)?;
        if state.reign != route.epoch {
            state.reign = route.epoch;
            state.epoch = route.epoch;
            state.seq = start;
        }
        state.active_at = clock;
        state.seq += 1;
        state.sequenced += 1;
        state.window_messages += 1;
        state.relayed += edges.len() as u64;
        let (epoch, seq) = (state.epoch, state.seq);
        if route_tag > floor
            && (self.route_floors.contains_key(base) || self.route_floors.len() < self.max_topics)
        {
            self.route_floors.insert(base.to_string(), route_tag);
        }
        tracing::trace!(distributor = self.id, topic, epoch, seq, route_tag, edges = ?edges, "sequenced");
        self.relayed += edges.len() as u64;
        Ok(PublishOutcome::Sequenced { epoch, seq, edges })
    }

    /// The edges a message of `topic` goes to: those that announced it at the current
    /// epoch, plus (until they have synced the slot) the connected edges the metastore lists
    /// for the slot.
    fn targets(&self, topic: &str, slot: Slot, epoch: u64) -> Vec<u64> {
        let mut edges: Vec<u64> = self.topics.get(topic).map_or_else(Vec::new, |state| {
            state
                .interest
                .iter()
                .filter(|(_, (n, tag))| *n > 0 && *tag >= epoch)
                .map(|(e, _)| *e)
                .collect()
        });
        let synced = self.synced.get(&slot);
        for edge in self.routing.edges_of(slot) {
            let has_synced = synced
                .and_then(|s| s.get(&edge))
                .is_some_and(|e| *e >= epoch);
            if !has_synced && self.connected.contains(&edge) && !edges.contains(&edge) {
                edges.push(edge);
            }
        }
        edges.retain(|e| self.connected.contains(e));
        edges
    }

    /// Closes a load window when it is due and returns the splits and merges to propose.
    /// A topic's load is its messages per second times the edges that announced it; a
    /// split topic is judged by its sub-topic 0 (every message goes to every sub-topic)
    /// times every registered edge.
    /// Each proposal is a [`Command::Propose`].
    pub fn handle_tick(&mut self, now: Instant) {
        self.advance_clock(now);
        if let Some(fence) = self.fence.as_mut() {
            fence.slot_ready.retain(|_, ready| *ready > now);
        }
        self.prune_handovers(now);
        let window = Duration::from_millis(self.hot_policy.window_ms);
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < window {
            return;
        }
        self.window_start = Some(now);
        let policy = self.hot_policy.clone();
        let secs = elapsed.as_secs_f64().max(0.001);
        let all_edges = self.routing.edges().len() as f64;
        let mut proposals = Vec::new();
        let mut busiest: Vec<TopicRate> = Vec::with_capacity(2 * BUSIEST_TOPICS);
        let mut history = HistorySize::default();
        // One pass over the topic table per window (bounded by max_topics).
        for (name, state) in self.topics.iter_mut() {
            let name = name.as_str();
            let route = self.routing.route(slot_of(name));
            let owned = route.distributor == self.id;
            let hot = self.routing.hot_route(base_topic(name));
            let rate = state.window_messages as f64 / secs;
            state.window_messages = 0;
            state.recent_rate = if state.recent_rate == 0.0 {
                rate
            } else {
                (state.recent_rate + rate) / 2.0
            };
            if state.recent_rate < IDLE_RATE {
                state.recent_rate = 0.0;
            }
            history.messages += state.history.len() as u64;
            history.bytes += state.history_bytes as u64;
            if owned && state.recent_rate > 0.0 {
                rank_busiest(
                    &mut busiest,
                    TopicRate {
                        topic: name.to_string(),
                        published: state.sequenced,
                        rate: state.recent_rate,
                    },
                );
            }
            if !policy.enabled || !owned {
                continue;
            }
            // The topic a split would be proposed for: a plain topic never split, or a merged
            // one (judged by `T#0`, its one sub-topic) once settled.
            let splittable = match (parse_sub_topic(name), hot) {
                (None, None) => Some(name),
                (
                    Some((base, 0)),
                    Some(HotRoute {
                        shards: 1,
                        committed: true,
                        ..
                    }),
                ) => Some(base),
                _ => None,
            };
            match (splittable, parse_sub_topic(name), hot) {
                (Some(topic), ..) => {
                    let edges = state
                        .interest
                        .values()
                        .filter(|(n, tag)| *n > 0 && *tag >= route.epoch)
                        .count() as f64;
                    let load = rate * edges;
                    if load > policy.split_load as f64 {
                        state.windows_over += 1;
                    } else {
                        state.windows_over = 0;
                    }
                    if state.windows_over >= policy.windows {
                        state.windows_over = 0;
                        let wanted = (2.0 * load / policy.split_load as f64).ceil() as u32;
                        let shards = wanted
                            .max(MIN_SHARDS)
                            .checked_next_power_of_two()
                            .unwrap_or(u32::MAX)
                            .min(policy.max_shards);
                        proposals.push(HotProposal {
                            topic: topic.to_string(),
                            shards,
                        });
                    }
                }
                // Sub-topic 0 of a settled split topic.
                (None, Some((base, 0)), Some(h)) if h.committed && h.shards > 1 => {
                    let load = rate * all_edges;
                    if load < policy.merge_load as f64 {
                        state.windows_under += 1;
                    } else {
                        state.windows_under = 0;
                    }
                    if state.windows_under >= policy.windows {
                        state.windows_under = 0;
                        proposals.push(HotProposal {
                            topic: base.to_string(),
                            shards: 0,
                        });
                    }
                }
                _ => {
                    state.windows_over = 0;
                    state.windows_under = 0;
                }
            }
        }
        finish_busiest(&mut busiest);
        self.busiest = busiest;
        self.history_size = history;
        self.evict_idle_topics(now);
        // The table's iteration order is arbitrary; the proposals' order is not.
        proposals.sort_by(|a, b| a.topic.cmp(&b.topic));
        self.counters.hot_proposals += proposals.len() as u64;
        self.commands
            .extend(proposals.into_iter().map(Command::Propose));
    }

    /// The busiest topics this node owned when the last load window closed (`window_ms`),
    /// busiest first: at most [`BUSIEST_TOPICS`], idle ones left out.
    pub fn busiest_topics(&self) -> &[TopicRate] {
        &self.busiest
    }

    /// The history kept over all topics when the last load window closed (its pass over
    /// the topic table sums it).
    pub fn history_size(&self) -> HistorySize {
        self.history_size
    }

    /// One topic's counters here, if it has state.
    pub fn topic_stats(&self, topic: &str) -> TopicStats {
        self.topics
            .get(topic)
            .map_or_else(TopicStats::default, |s| TopicStats {
                sequenced: s.sequenced,
                relayed: s.relayed,
            })
    }

    /// The owner's view of a topic's subscribers, or `Err(owner)` when another
    /// distributor (or nobody, 0) owns it.
    /// The edges that this node relays `topic`'s messages to: for each name the topic is
    /// published under (itself, or its sub-topics when split; a route name `T#k` as is)
    /// whose slot this node owns, the edges with subscribers there. For the room check
    /// before a publish.
    pub fn local_edges(&self, topic: &str, edges: &mut Vec<u64>) {
        let (_, mut names) = self.routing.publish_route(topic);
        if let Some((_, fanout)) = self.routing.fanout_route(topic) {
            names.extend(fanout);
        }
        for name in names {
            let route = self.routing.route(slot_of(&name));
            if route.distributor != self.id {
                continue;
            }
            if let Some(state) = self.topics.get(&name) {
                for (edge, (n, _)) in &state.interest {
                    if *n > 0 && !edges.contains(edge) {
                        edges.push(*edge);
                    }
                }
            }
        }
    }

    pub fn topic_count(&self, topic: &str) -> Result<TopicCount, u64> {
        let route = self.routing.route(slot_of(topic));
        if route.distributor != self.id {
            return Err(route.distributor);
        }
        let mut count = TopicCount::default();
        if let Some(state) = self.topics.get(topic) {
            for (edge, (n, tag)) in &state.interest {
                if *n > 0 && *tag >= route.epoch && self.connected.contains(edge) {
                    count.subscribers += n;
                    count.edges.push(*edge);
                    count.edge_subscribers.push(*n);
                }
            }
            count.stats = TopicStats {
                sequenced: state.sequenced,
                relayed: state.relayed,
            };
        }
        Ok(count)
    }
}

/// Adds `candidate` to the running top list: kept within twice [`BUSIEST_TOPICS`] (cut back
/// to the busiest when it reaches that), so one window's pass stays linear in the table.
fn rank_busiest(busiest: &mut Vec<TopicRate>, candidate: TopicRate) {
    busiest.push(candidate);
    if busiest.len() >= 2 * BUSIEST_TOPICS {
        finish_busiest(busiest);
    }
}

/// Busiest first (ties by name, so the order does not depend on the table's), at most
/// [`BUSIEST_TOPICS`].
fn finish_busiest(busiest: &mut Vec<TopicRate>) {
    busiest.sort_by(|a, b| {
        b.rate
            .total_cmp(&a.rate)
            .then_with(|| a.topic.cmp(&b.topic))
    });
    busiest.truncate(BUSIEST_TOPICS);
}

#[cfg(test)]
mod forward_tests;

#[cfg(test)]
mod tests;
