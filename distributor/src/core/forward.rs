//! Publishing, sans-IO: which names a publish goes to, which owner sequences each, forward
//! keys, retries, deadlines, and one outcome per publish.
//!
//! ```text
//!  handle_publish(now, topic, data…) ──┐                     ┌─► Sequence here: Deliver{edges}
//!  handle_forward_result(now, attempt) ─┤                     ├─► Forward{attempt, owner, addr, run}
//!  handle_forwarded_run(now, run) ──────┼─► publish ops ──────┼─► Reply{op, outcome}
//!  handle_watch(now, …)  (routing moved)┤   (one per publish) │
//!  handle_timeout(now)   (retry, expiry)┘                     └─ poll_timeout(): next wake-up
//! ```
//!
//! A publish (one message, or a run of one topic's messages from a `PublishBatch`) becomes an
//! *op*. Its topic's route gives the *names* it goes to: the topic itself, or every
//! sub-topic `T#k` of a split topic (both routes while a change is prepared), under the route
//! tag of this node's view. Each name is sequenced here when this node owns its slot, or
//! forwarded as one run to the owner; the owner answers with a typed outcome
//! ([`RunOutcome`]). The op replies once every name is sequenced, with the first name's
//! positions.
//!
//! Retry rules, in one place:
//! - *Not the owner*, *no owner yet*, *no address*, *never sent* (the connection could not
//!   be made): certainly not sequenced. Wait for the next routing change (at most
//!   [`RETRY_POLL`]) and try the then-current owner again.
//! - *Stale route* (the owner's hot-topic view is newer): nothing was sequenced; once the
//!   names in flight have answered, wait, route the topic again and publish the names not yet
//!   done.
//! - *Unclear* (a timeout or a lost connection after sending): the owner may have sequenced
//!   it. Only that same owner may be tried again: it recognises the retry by the run's
//!   forward keys and answers with the first positions. If the slot moved meanwhile, the op
//!   fails ([`PublishError::Uncertain`]) rather than risk a second copy.
//! - Past the op's deadline (`publish_retry_ms` after it began), a name that must wait fails
//!   the op ([`PublishError::NoOwner`] or [`PublishError::RouteUnsettled`]).
//!
//! Order, per topic: the ops of one topic that this node accepted are published in the
//! order it accepted them (so one publisher's messages keep its order, whichever path they
//! take). A topic's ops move in *groups*: while some op of the topic is unfinished (in
//! flight, or waiting to retry), later ops of the topic queue behind it; when the last op
//! of the active group finishes, every queued op becomes the next group and is tried at
//! once, in order. One group's runs reach each owner in one `ForwardBatch` call (the
//! shell sends all the forwards of one step to an owner together), where the owner
//! sequences them in call order under one step; so within a group the runs of a name get
//! the same answer, in order, and a later group starts only after the earlier one is done.
//!
//! At a split topic's owner the order is the order of the positions: a forwarded run is
//! numbered when it arrives and goes ahead of the queued ops not numbered yet, and an op
//! numbered late (it could not be numbered when it came) sends the queued ops numbered
//! before it first (`send_numbered_ahead`). So every sub-topic gets the topic's messages in
//! the stream's order, which an edge that has just joined one relies on (sim seed 5070).
//! No publisher's order changes: a message still waiting here is unanswered, so a run
//! numbered meanwhile is not a later message of the same ordered path.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use firetower_proto::slot_of;
use tokio::time::{Duration, Instant};

use super::{Command, CoreError, DistributorCore, ForwardKey, PublishOutcome};

/// How long a waiting publish waits for a routing change before it tries again anyway (a
/// peer may come back without the routing changing).
pub const RETRY_POLL: Duration = Duration::from_millis(50);

/// The most message copies (messages × the names they go to) in one group of a topic's
/// ops: what one group sends to its owners in one step. The owner accepts up to 64 runs'
/// worth of `max_batch` in one call, so a group never comes near that.
pub const GROUP_COPIES: usize = 4096;

/// A publish in progress at this node (or a forwarded run being answered).
pub type OpId = u64;
/// One forward of one name's run to its owner.
pub type AttemptId = u64;

/// Where one message landed: `(epoch, seq)` under its (first) name; `shards` is the number
/// of sub-topics a split topic's message went to (0 for a plain topic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
    pub shards: u32,
}

/// What an owner did with a forwarded run (`ForwardBatchReply.outcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// All sequenced: one position per message, in order.
    Sequenced(Vec<Position>),
    /// The route tag was older than the owner's (`since`); nothing was sequenced.
    StaleRoute { since: u64 },
    /// The receiver does not own the name's slot (0: nobody it knows of); nothing was
    /// sequenced.
    NotOwner { owner: u64 },
}

/// Why a publish failed. The shell maps each to one gRPC status (`service::status_of`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No owner accepted the publish before its deadline.
    #[error("no owner of slot {slot} accepted the publish within {waited_ms} ms: {last}")]
    NoOwner {
        slot: u16,
        waited_ms: u64,
        last: String,
    },
    /// A split topic's route kept changing until the deadline.
    #[error("the hot-topic route of {topic:?} kept changing for {waited_ms} ms: {last}")]
    RouteUnsettled {
        topic: String,
        waited_ms: u64,
        last: String,
    },
    /// A forward ended without a clear answer and the slot has moved since: the publish may
    /// have been sequenced by the earlier owner, so it is not retried elsewhere.
    #[error(
        "the publish may already have been sequenced by distributor {owner} before slot \
         {slot} moved; not retried, to avoid a duplicate"
    )]
    Uncertain { owner: u64, slot: u16 },
    /// A topic table (here or at the owner) is full.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The owner refused the run for a reason retrying will not fix; `code` is the gRPC
    /// status code it answered with, passed on to the publisher unchanged.
    #[error("owner {owner} refused the publish: {message}")]
    Refused {
        owner: u64,
        code: i32,
        message: String,
    },
    /// The owner's answer broke the protocol.
    #[error("owner {owner} answered {got} positions for {want} messages")]
    BadAnswer { owner: u64, got: usize, want: usize },
    /// The edge that passed the client publish on lost its relay link, and with it the
    /// publish's answer (the edge told its publisher `unavailable`): it is not tried any
    /// further, so it cannot reach subscribers after that publisher's later messages.
    #[error("edge {edge}'s relay link closed; the publish was abandoned")]
    Abandoned { edge: u64 },
}

/// How a publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Sequenced: one position per message.
    Published(Vec<Position>),
    /// A forwarded run this node refused (answered to the forwarder, never to a backend).
    Refused(RunOutcome),
    Failed(PublishError),
}

/// What the shell learned of a forward ([`DistributorCore::handle_forward_result`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardResult {
    /// The owner answered.
    Answered(RunOutcome),
    /// The request never left: the connection could not be made. Certainly not sequenced.
    NotSent(String),
    /// No clear answer (a timeout, a connection lost after sending): maybe sequenced.
    Unclear(String),
    /// The owner refused it with an error that a retry will not fix.
    Failed(PublishError),
}

/// A run of one name's messages on its way to the name's owner: the `ForwardBatch` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRun {
    pub topic: String,
    /// This node's id and registration incarnation (0 before it registered: the owner then
    /// does not deduplicate).
    pub origin: u64,
    pub incarnation: u64,
    pub route_tag: u64,
    /// `(forward key, message id, data)`, in order.
    pub messages: Vec<(u64, u64, Bytes)>,
    /// A sub-topic run's messages' positions in their topic's stream, one per message, as
    /// the topic's owner numbered them (empty for a run of the topic itself).
    pub canon: Vec<(u64, u64)>,
}

/// Where a name of an op stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NameState {
    /// To be tried at the op's next wake-up (or now, when just routed).
    Waiting,
    InFlight {
        attempt: AttemptId,
        owner: u64,
    },
    Done(Vec<Position>),
}

#[derive(Debug)]
struct NameRun {
    name: String,
    state: NameState,
    /// The registration incarnation and first forward key of this name's run, made at its
    /// first forward and kept for every retry (a re-registration meanwhile included: the
    /// owner knows the keys under the first incarnation), so the owner sequences the run
    /// once however often a lost reply makes us retry.
    keys: Option<(u64, u64)>,
    /// The owner a forward went to without a clear answer: only it may be tried again.
    uncertain: Option<u64>,
}

impl NameRun {
    fn new(name: String) -> Self {
        NameRun {
            name,
            state: NameState::Waiting,
            keys: None,
            uncertain: None,
        }
    }
}

#[derive(Debug)]
struct Op {
    topic: String,
    /// `(message id, data)`, in publish order.
    messages: Vec<(u64, Bytes)>,
    deadline: Instant,
    route_tag: u64,
    names: Vec<NameRun>,
    /// The topic is split (or was): the reply carries the shard count.
    split: bool,
    /// Set once this node, the topic's owner, numbered the messages in the topic's stream
    /// and sends them on to its sub-topics (`names` are those then): their positions,
    /// which the sub-topic runs carry and the reply gives.
    canon: Option<Vec<Position>>,
    /// An owner refused the route as stale: route again before the next try.
    reroute: bool,
    /// When a waiting op tries again (or earlier, at a routing change).
    wake_at: Option<Instant>,
    /// Why the last try did not succeed, for the error at the deadline.
    last: String,
}

/// A topic's unfinished ops: the active group (being published) and the ops queued behind
/// it, in the order this node accepted them.
#[derive(Debug, Default)]
struct TopicOps {
    active: BTreeSet<OpId>,
    queued: VecDeque<OpId>,
}

/// The publish ops of one node, with their bounds. Part of [`DistributorCore`].
#[derive(Debug)]
pub(crate) struct Publishes {
    ops: BTreeMap<OpId, Op>,
    /// Topics with unfinished ops (an op finished at once, the common case of an owned
    /// topic, never enters). Bounded by the ops.
    topics: HashMap<String, TopicOps>,
    /// The waiting ops by wake-up time (each op's `wake_at`), so the next timeout and the
    /// due ops are found without a pass over every op on each input.
    wakes: BTreeSet<(Instant, OpId)>,
    attempts: HashMap<AttemptId, (OpId, usize)>,
    next_op: u64,
    next_attempt: u64,
    /// Numbers this node's forward keys and message ids.
    next_number: u64,
    /// How long an op may wait for an owner.
    retry: Duration,
}

impl Publishes {
    /// Whether `topic` has an unfinished op here.
    pub(super) fn has_ops(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    pub(crate) fn new(retry: Duration) -> Self {
        Publishes {
            ops: BTreeMap::new(),
            topics: HashMap::new(),
            wakes: BTreeSet::new(),
            attempts: HashMap::new(),
            next_op: 1,
            next_attempt: 1,
            next_number: 1,
            retry,
        }
    }

    /// Ops in progress (bounded by the callers: gRPC calls in flight, relay read loops).
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// Sets (or clears) when a waiting op tries again.
    fn set_wake(&mut self, op_id: OpId, at: Option<Instant>) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        if let Some(old) = op.wake_at.take() {
            self.wakes.remove(&(old, op_id));
        }
        if let Some(at) = at {
            op.wake_at = Some(at);
            self.wakes.insert((at, op_id));
        }
    }

    /// Removes an op that has its outcome.
    fn remove(&mut self, op_id: OpId) -> Option<Op> {
        self.set_wake(op_id, None);
        self.ops.remove(&op_id)
    }

    fn new_op(&mut self) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        op
    }
}

impl DistributorCore {
    /// How long a publish may wait for an owner (`publish_retry_ms`).
    pub fn set_publish_retry(&mut self, retry: Duration) {
        self.publishes.retry = retry;
    }

    /// Publishes in progress.
    pub fn publishes_in_progress(&self) -> usize {
        self.publishes.len()
    }

    /// A new message id: unique per accepting distributor process (its id, registration
    /// incarnation and a number, hashed). Every sub-topic copy of a split topic's message
    /// carries it, so edges drop second copies.
    fn new_msg_id(&mut self) -> u64 {
        let n = self.publishes.next_number;
        self.publishes.next_number += 1;
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.id.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.incarnation.to_le_bytes());
        bytes[16..].copy_from_slice(&n.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// A publish of one topic's messages, checked by the caller, in order. Returns the op
    /// whose [`Command::Reply`] will carry the outcome (possibly among this call's commands).
    pub fn handle_publish(&mut self, now: Instant, topic: &str, messages: Vec<Bytes>) -> OpId {
        self.advance_clock(now);
        let op_id = self.publishes.new_op();
        let messages: Vec<(u64, Bytes)> = messages
            .into_iter()
            .map(|data| (self.new_msg_id(), data))
            .collect();
        let op = Op {
            topic: topic.to_string(),
            messages,
            deadline: now + self.publishes.retry,
            route_tag: 0,
            names: Vec::new(),
            split: false,
            canon: None,
            reroute: true,
            wake_at: None,
            last: String::from("no distributor owns the topic's slot yet"),
        };
        self.publishes.ops.insert(op_id, op);
        // A split topic this node owns is numbered now when nothing of it waits here: its
        // stream's order is then the order this node took its publishes in, local and
        // forwarded alike (see `handle_forwarded_run`), and its sub-topic runs leave in
        // that order. Behind an unfinished op of the topic it waits its turn instead: it
        // must not be numbered before an earlier publish of its publisher (sim seed
        // 500123: a client's publishes waited for the slot's new owner to be allowed to
        // sequence; a later one came when it was and went first).
        if self.routing.route(slot_of(topic)).distributor == self.id
            && self.routing.fanout_route(topic).is_some()
            && !self.publishes.topics.contains_key(topic)
        {
            let (tag, _) = self.routing.publish_route(topic);
            if let Err(error) = self.number_here(op_id, tag) {
                self.fail(now, op_id, error);
                return op_id;
            }
        }
        // An earlier op of the topic is unfinished: this one waits its turn.
        self.enqueue(now, topic, op_id);
        op_id
    }

    /// A run another distributor forwarded here (`ForwardBatch`): sequenced here in order,
    /// all or none, or refused with the reason. Keys seen before (a retried forward) get
    /// their first positions back and go to no edge again. The answer is a
    /// [`Command::Reply`] among this call's commands.
    pub fn handle_forwarded_run(&mut self, now: Instant, run: ForwardRun) -> OpId {
        self.advance_clock(now);
        let op = self.publishes.new_op();
        let keyed = run.origin != 0 && run.incarnation != 0;
        let messages: Vec<(Option<ForwardKey>, u64, Bytes)> = run
            .messages
            .into_iter()
            .map(|(key, msg_id, data)| {
                let key = keyed.then_some((run.origin, run.incarnation, key));
                (key, msg_id, data)
            })
            .collect();
        tracing::trace!(
            distributor = self.id,
            topic = %run.topic,
            origin = run.origin,
            incarnation = run.incarnation,
            keys = ?messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            "forwarded run"
        );
        let outcome = match self.sequence_run(&run.topic, run.route_tag, &messages, &run.canon) {
            Ok(RunOutcome::Sequenced(positions)) => {
                if run.canon.is_empty() && self.routing.fanout_route(&run.topic).is_some() {
                    // A split topic's message, numbered here: it goes on to the sub-topics
                    // before the forwarder gets its answer (also when the numbering is a
                    // retry's first one: the first try may not have reached them all).
                    self.fan_out_forwarded(now, op, &run.topic, messages, positions);
                    return op;
                }
                Outcome::Published(positions)
            }
            Ok(refused) => Outcome::Refused(refused),
            Err(e) => Outcome::Failed(e.into()),
        };
        self.commands.push_back(Command::Reply { op, outcome });
        op
    }

    /// Makes the op that sends a forwarded run of a split topic, numbered here, on to the
    /// sub-topics; it answers the forwarder when they are all done.
    fn fan_out_forwarded(
        &mut self,
        now: Instant,
        op_id: OpId,
        topic: &str,
        messages: Vec<(Option<ForwardKey>, u64, Bytes)>,
        positions: Vec<Position>,
    ) {
        let op = Op {
            topic: topic.to_string(),
            messages: messages
                .into_iter()
                .map(|(_, id, data)| (id, data))
                .collect(),
            deadline: now + self.publishes.retry,
            route_tag: 0,
            names: Vec::new(),
            split: true,
            canon: None,
            reroute: false,
            wake_at: None,
            last: String::new(),
        };
        self.publishes.ops.insert(op_id, op);
        self.begin_fanout(op_id, positions);
        self.enqueue(now, topic, op_id);
    }

    /// Starts an op now, or queues it behind its topic's unfinished ones: an op numbered
    /// already (a forwarded run of a split topic this node owns) goes ahead of the queued
    /// ops not numbered yet, which will be numbered after it, so the topic's ops go to the
    /// sub-topics in the order of their positions (see [`Self::send_numbered_ahead`]).
    fn enqueue(&mut self, now: Instant, topic: &str, op_id: OpId) {
        let Publishes { topics, ops, .. } = &mut self.publishes;
        if let Some(topic_ops) = topics.get_mut(topic) {
            let numbered = |op: &OpId| ops.get(op).is_some_and(|op| op.canon.is_some());
            // The queue is its numbered ops, then the ones not numbered yet (only this
            // inserts a numbered op, and a queued op is numbered only once it leaves the
            // queue): a binary search, since a hot split topic's owner may hold many runs.
            let at = if numbered(&op_id) {
                topic_ops.queued.partition_point(numbered)
            } else {
                topic_ops.queued.len()
            };
            topic_ops.queued.insert(at, op_id);
            return;
        }
        self.drive(now, op_id);
        if self.publishes.ops.contains_key(&op_id) {
            let mut ops = TopicOps::default();
            ops.active.insert(op_id);
            self.publishes.topics.insert(topic.to_string(), ops);
        }
    }

    /// Numbers an op's messages in its topic's stream here (this node owns the topic) and,
    /// for a split topic, turns the op into their fan-out. A refusal leaves the op as it
    /// was, to be routed as usual.
    fn number_here(&mut self, op_id: OpId, route_tag: u64) -> Result<(), PublishError> {
        let Some(op) = self.publishes.ops.get(&op_id) else {
            return Ok(());
        };
        let topic = op.topic.clone();
        let messages: Vec<(Option<ForwardKey>, u64, Bytes)> = op
            .messages
            .iter()
            .map(|(id, data)| (None, *id, data.clone()))
            .collect();
        if let RunOutcome::Sequenced(positions) =
            self.sequence_run(&topic, route_tag, &messages, &[])?
        {
            self.begin_fanout(op_id, positions);
        }
        Ok(())
    }

    /// The op's messages have their positions in the topic's stream: its names become the
    /// topic's sub-topics (a never-split topic is done).
    fn begin_fanout(&mut self, op_id: OpId, positions: Vec<Position>) {
        let Some(op) = self.publishes.ops.get_mut(&op_id) else {
            return;
        };
        match self.routing.fanout_route(&op.topic) {
            Some((tag, names)) => {
                op.names = names.into_iter().map(NameRun::new).collect();
                op.route_tag = tag;
                op.split = true;
                if let Some(state) = self.topics.get_mut(&op.topic) {
                    state
                        .unfanned
                        .extend(positions.iter().map(|p| (p.epoch, p.seq)));
                }
            }
            None => {
                let mut done = NameRun::new(op.topic.clone());
                done.state = NameState::Done(positions.clone());
                op.names = vec![done];
            }
        }
        op.canon = Some(positions);
        op.reroute = false;
    }

    /// What became of a [`Command::Forward`].
    pub fn handle_forward_result(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        result: ForwardResult,
    ) {
        self.advance_clock(now);
        let Some((op_id, index)) = self.publishes.attempts.remove(&attempt) else {
            return;
        };
        let Some(op) = self.publishes.ops.get_mut(&op_id) else {
            return;
        };
        let Some(name) = op.names.get_mut(index) else {
            return;
        };
        let owner = match name.state {
            NameState::InFlight { attempt: a, owner } if a == attempt => owner,
            _ => return,
        };
        name.state = NameState::Waiting;
        match result {
            ForwardResult::Answered(RunOutcome::Sequenced(positions)) => {
                if positions.len() != op.messages.len() {
                    let error = PublishError::BadAnswer {
                        owner,
                        got: positions.len(),
                        want: op.messages.len(),
                    };
                    self.fail(now, op_id, error);
                    return;
                }
                name.state = NameState::Done(positions);
            }
            ForwardResult::Answered(RunOutcome::StaleRoute { since }) => {
                op.reroute = true;
                op.last = format!(
                    "owner {owner}: stale hot-topic route for {:?}: tag {} is older than {since}",
                    name.name, op.route_tag
                );
            }
            ForwardResult::Answered(RunOutcome::NotOwner { owner: theirs }) => {
                op.last = format!(
                    "owner {owner}: distributor {owner} does not own slot {} (owner: {theirs})",
                    slot_of(&name.name)
                );
            }
            ForwardResult::NotSent(reason) => {
                op.last = format!("owner {owner}: {reason}");
            }
            ForwardResult::Unclear(reason) => {
                name.uncertain = Some(owner);
                op.last = format!("owner {owner}: {reason}");
            }
            ForwardResult::Failed(error) => {
                self.fail(now, op_id, error);
                return;
            }
        }
        self.settle(now, op_id);
    }

    /// Retries the waiting publishes that are due, and closes load windows
    /// ([`Self::handle_tick`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance_clock(now);
        self.handle_tick(now);
        let due: Vec<OpId> = self
            .publishes
            .wakes
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, op)| *op)
            .collect();
        for op in due {
            self.drive(now, op);
        }
    }

    /// When [`Self::handle_timeout`] is next due: the earliest waiting publish, or the end
    /// of the load window.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ops = self.publishes.wakes.first().map(|(at, _)| *at);
        let window = self
            .window_start
            .map(|start| start + Duration::from_millis(self.hot_policy.window_ms));
        match (ops, window) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The routing changed: every waiting publish tries again now.
    pub(super) fn retry_waiting(&mut self, now: Instant) {
        let waiting: Vec<OpId> = self.publishes.wakes.iter().map(|(_, op)| *op).collect();
        for op in waiting {
            self.drive(now, op);
        }
    }

    /// Tries every waiting name of an op (routing the topic again first when an owner
    /// refused the route), then settles it.
    fn drive(&mut self, now: Instant, op_id: OpId) {
        self.publishes.set_wake(op_id, None);
        let Some(op) = self.publishes.ops.get_mut(&op_id) else {
            return;
        };
        let in_flight = op
            .names
            .iter()
            .any(|n| matches!(n.state, NameState::InFlight { .. }));
        if op.reroute && !in_flight {
            let (tag, names) = match op.canon {
                // Numbered already: only its sub-topics are routed again.
                Some(_) => self
                    .routing
                    .fanout_route(&op.topic)
                    .unwrap_or_else(|| (op.route_tag, Vec::new())),
                None => self.routing.publish_route(&op.topic),
            };
            let mut old: Vec<NameRun> = std::mem::take(&mut op.names);
            // Under the same route tag, a name already done stays done. Under a new one,
            // every name is published again: a name done under the old tag reached only
            // the edges on it then, and an edge that joins it for the new route asks only
            // for what was published since that change (found by sim seed 87). Edges drop
            // the second copies by message id.
            let same_route = tag == op.route_tag;
            op.names = names
                .into_iter()
                .map(|name| match old.iter().position(|n| n.name == name) {
                    Some(i) if same_route && matches!(old[i].state, NameState::Done(_)) => {
                        old.remove(i)
                    }
                    _ => NameRun::new(name),
                })
                .collect();
            op.route_tag = tag;
            op.reroute = false;
        }
        let mut index = 0;
        // The op's names can change on the way: numbering a split topic here turns them
        // into its sub-topics, which are tried in the same pass.
        while index < op_len(self, op_id) {
            let numbered = |core: &Self| {
                core.publishes
                    .ops
                    .get(&op_id)
                    .is_some_and(|op| op.canon.is_some())
            };
            let before = numbered(self);
            if let Err(error) = self.try_name(op_id, index) {
                self.fail(now, op_id, error);
                return;
            }
            // Numbered just now: its names are the sub-topics from the first. The ops of
            // the topic numbered before it and still queued (forwarded runs, numbered when
            // they came) go to the sub-topics first.
            index = if !before && numbered(self) {
                let topic = self
                    .publishes
                    .ops
                    .get(&op_id)
                    .map(|op| op.topic.clone())
                    .unwrap_or_default();
                self.send_numbered_ahead(now, &topic);
                0
            } else {
                index + 1
            };
        }
        self.settle(now, op_id);
    }

    /// Makes the queued ops of `topic` that are numbered already active and sends them on
    /// to the sub-topics now: an op of the topic is being numbered after them, and every
    /// sub-topic must receive the topic's messages in the order of their positions. An
    /// edge that has just joined a sub-topic starts at the first position it receives, so
    /// a message that reached it behind a later one would be dropped as stale (sim seed
    /// 5070: local publishes that waited here were numbered after forwarded runs queued
    /// behind them, and went first). The numbered ops are the queue's front ([`Self::enqueue`]).
    fn send_numbered_ahead(&mut self, now: Instant, topic: &str) {
        let Publishes { topics, ops, .. } = &mut self.publishes;
        let Some(topic_ops) = topics.get_mut(topic) else {
            return;
        };
        let mut ahead = Vec::new();
        while let Some(&next) = topic_ops.queued.front() {
            if ops.get(&next).is_none_or(|op| op.canon.is_none()) {
                break;
            }
            topic_ops.queued.pop_front();
            topic_ops.active.insert(next);
            ahead.push(next);
        }
        for op in ahead {
            self.drive(now, op);
        }
    }

    /// Sequences one waiting name here, or forwards it to its owner.
    fn try_name(&mut self, op_id: OpId, index: usize) -> Result<(), PublishError> {
        let Some(op) = self.publishes.ops.get(&op_id) else {
            return Ok(());
        };
        let Some(name) = op.names.get(index) else {
            return Ok(());
        };
        if name.state != NameState::Waiting || op.reroute {
            return Ok(());
        }
        let slot = slot_of(&name.name);
        let owner = self.routing.route(slot).distributor;
        if let Some(earlier) = name.uncertain {
            if owner != earlier {
                return Err(PublishError::Uncertain {
                    owner: earlier,
                    slot,
                });
            }
        }
        let name_str = name.name.clone();
        let route_tag = op.route_tag;
        let canon: Vec<(u64, u64)> = op
            .canon
            .iter()
            .flatten()
            .map(|p| (p.epoch, p.seq))
            .collect();
        if owner == self.id {
            let messages: Vec<(Option<ForwardKey>, u64, Bytes)> = op
                .messages
                .iter()
                .map(|(id, data)| (None, *id, data.clone()))
                .collect();
            let outcome = self.sequence_run(&name_str, route_tag, &messages, &canon)?;
            let Some(op) = self.publishes.ops.get_mut(&op_id) else {
                return Ok(());
            };
            match outcome {
                RunOutcome::Sequenced(positions) => {
                    if op.canon.is_none() && self.routing.fanout_route(&name_str).is_some() {
                        // This node owns the split topic (its slot moved here after the op
                        // began): numbered, the messages go on to the sub-topics.
                        self.begin_fanout(op_id, positions);
                        return Ok(());
                    }
                    op.names[index].state = NameState::Done(positions);
                }
                RunOutcome::StaleRoute { since } => {
                    op.reroute = true;
                    op.last = format!(
                        "stale hot-topic route for {name_str:?}: tag {route_tag} is older \
                         than {since}"
                    );
                }
                RunOutcome::NotOwner { .. } => {
                    op.last = format!(
                        "slot {slot}: this distributor's view is older than its registration"
                    );
                }
            }
            return Ok(());
        }
        if owner == 0 {
            if let Some(op) = self.publishes.ops.get_mut(&op_id) {
                op.last = String::from("no distributor owns the topic's slot yet");
            }
            return Ok(());
        }
        let Some(addr) = self
            .routing
            .distributor_addr(owner, "grpc")
            .map(str::to_string)
        else {
            if let Some(op) = self.publishes.ops.get_mut(&op_id) {
                op.last = format!("owner {owner} has no known gRPC address");
            }
            return Ok(());
        };
        if self.incarnation == 0 && name.keys.is_none() {
            // Keys are unique by the registration's incarnation: a run forwarded without
            // one could not be recognised when retried, and would be numbered again (sim
            // seed 127: a joining distributor's forward numbered three times).
            if let Some(op) = self.publishes.ops.get_mut(&op_id) {
                op.last = String::from("this distributor has not registered yet");
            }
            return Ok(());
        }
        let attempt = self.publishes.next_attempt;
        self.publishes.next_attempt += 1;
        let count = op.messages.len() as u64;
        let (incarnation, first_key) = match name.keys {
            Some(keys) => keys,
            None => {
                let k = self.publishes.next_number;
                self.publishes.next_number += count;
                (self.incarnation, k)
            }
        };
        let origin = self.id;
        let Some(op) = self.publishes.ops.get_mut(&op_id) else {
            return Ok(());
        };
        let run = ForwardRun {
            topic: name_str,
            origin,
            incarnation,
            route_tag,
            messages: op
                .messages
                .iter()
                .zip(first_key..)
                .map(|((id, data), key)| (key, *id, data.clone()))
                .collect(),
            canon,
        };
        let name = &mut op.names[index];
        name.keys = Some((incarnation, first_key));
        name.state = NameState::InFlight { attempt, owner };
        self.publishes.attempts.insert(attempt, (op_id, index));
        self.counters.forwarded += count;
        self.commands.push_back(Command::Forward {
            attempt,
            owner,
            addr,
            run,
        });
        Ok(())
    }

    /// Replies when every name is done; otherwise, with nothing in flight, waits for the
    /// next routing change or [`RETRY_POLL`], or fails past the deadline.
    fn settle(&mut self, now: Instant, op_id: OpId) {
        let Some(op) = self.publishes.ops.get_mut(&op_id) else {
            return;
        };
        if !op.reroute
            && op
                .names
                .iter()
                .all(|n| matches!(n.state, NameState::Done(_)))
        {
            // The sub-topics the message went on to: this node's, or (forwarded to the
            // topic's owner) as far as this node's view knows them.
            let shards = if op.split {
                op.names.len() as u32
            } else {
                self.routing
                    .fanout_route(&op.topic)
                    .map_or(0, |(_, names)| names.len() as u32)
            };
            let first = match (&op.canon, op.names.first().map(|n| &n.state)) {
                (Some(canon), _) => Some(canon),
                (None, Some(NameState::Done(p))) => Some(p),
                _ => None,
            };
            let positions = first
                .map(|p| p.iter().map(|p| Position { shards, ..*p }).collect())
                .unwrap_or_default();
            let topic = op.topic.clone();
            if let Some(op) = self.publishes.remove(op_id) {
                self.fanned_out(&op);
            }
            self.commands.push_back(Command::Reply {
                op: op_id,
                outcome: Outcome::Published(positions),
            });
            self.finished(now, &topic, op_id);
            return;
        }
        let waiting = op.reroute || op.names.iter().any(|n| n.state == NameState::Waiting);
        if !waiting {
            // Answers are still to come.
            return;
        }
        if now >= op.deadline {
            let waited_ms = self.publishes.retry.as_millis() as u64;
            let error = if op.reroute {
                PublishError::RouteUnsettled {
                    topic: op.topic.clone(),
                    waited_ms,
                    last: op.last.clone(),
                }
            } else {
                let slot = op
                    .names
                    .iter()
                    .find(|n| n.state == NameState::Waiting)
                    .map_or_else(|| slot_of(&op.topic), |n| slot_of(&n.name));
                PublishError::NoOwner {
                    slot,
                    waited_ms,
                    last: op.last.clone(),
                }
            };
            self.fail(now, op_id, error);
            return;
        }
        let at = (now + RETRY_POLL).min(op.deadline);
        self.publishes.set_wake(op_id, Some(at));
    }

    /// Gives up on a publish whose answer nobody waits for any more (its publisher's edge
    /// went away): no further forward or retry. A forward already in flight may still be
    /// sequenced; its answer is ignored. The op's [`Command::Reply`] says `Abandoned`.
    pub fn handle_publish_abandoned(&mut self, now: Instant, op_id: OpId, edge: u64) {
        self.fail(now, op_id, PublishError::Abandoned { edge });
    }

    fn fail(&mut self, now: Instant, op_id: OpId, error: PublishError) {
        if let Some(op) = self.publishes.remove(op_id) {
            self.fanned_out(&op);
            for name in op.names {
                if let NameState::InFlight { attempt, .. } = name.state {
                    self.publishes.attempts.remove(&attempt);
                }
            }
            self.commands.push_back(Command::Reply {
                op: op_id,
                outcome: Outcome::Failed(error),
            });
            self.finished(now, &op.topic, op_id);
        }
    }

    /// An op that fanned its messages out is over (done or failed): recovery and History
    /// may serve them now.
    fn fanned_out(&mut self, op: &Op) {
        let (Some(canon), Some(state)) = (&op.canon, self.topics.get_mut(&op.topic)) else {
            return;
        };
        for p in canon {
            state.unfanned.remove(&(p.epoch, p.seq));
        }
    }

    /// An op of `topic` has its outcome: when it was the last of the active group, the
    /// queued ops become the next group and are tried now, in the order they came.
    fn finished(&mut self, now: Instant, topic: &str, op_id: OpId) {
        let names = self.routing.publish_route(topic).1.len().max(1);
        let Publishes {
            topics,
            ops: all_ops,
            ..
        } = &mut self.publishes;
        let Some(ops) = topics.get_mut(topic) else {
            return;
        };
        // An op may end while still queued (abandoned): it leaves the queue too, or it would
        // become an active op that never finishes and hold the topic for good.
        ops.active.remove(&op_id);
        ops.queued.retain(|queued| *queued != op_id);
        if !ops.active.is_empty() {
            return;
        }
        if ops.queued.is_empty() {
            topics.remove(topic);
            return;
        }
        // The next group: the queued ops, in order, up to GROUP_COPIES copies (at least one
        // op); the rest stay queued for the group after.
        let mut group = Vec::new();
        let mut copies = 0;
        while let Some(&next) = ops.queued.front() {
            let weight = all_ops.get(&next).map_or(0, |op| op.messages.len()) * names;
            if !group.is_empty() && copies + weight > GROUP_COPIES {
                break;
            }
            copies += weight;
            group.push(next);
            ops.queued.pop_front();
        }
        ops.active.extend(group.iter().copied());
        for op in group {
            self.drive(now, op);
        }
    }

    /// Sequences a run of one name's messages here, in order, all or none: every message
    /// has the same route tag, so what refuses the first would refuse them all. Each
    /// sequenced message goes to its edges as a [`Command::Deliver`].
    ///
    /// `canon` gives a sub-topic run's positions in the topic's stream, one per message
    /// (empty for a run of the topic itself): its deliveries carry them.
    pub(super) fn sequence_run(
        &mut self,
        name: &str,
        route_tag: u64,
        messages: &[(Option<ForwardKey>, u64, Bytes)],
        canon: &[(u64, u64)],
    ) -> Result<RunOutcome, CoreError> {
        let mut positions = Vec::with_capacity(messages.len());
        for (i, (key, msg_id, data)) in messages.iter().enumerate() {
            // A retried forward of a run sequenced before: its first positions, and no
            // second delivery.
            if let Some(&(_, epoch, seq)) = key.as_ref().and_then(|k| self.recent.get(k)) {
                positions.push(Position {
                    epoch,
                    seq,
                    shards: 0,
                });
                continue;
            }
            let outcome = match key {
                Some(key) => self.sequence_forwarded(name, route_tag, *key)?,
                None => self.sequence(name, route_tag)?,
            };
            match outcome {
                PublishOutcome::Sequenced { epoch, seq, edges } => {
                    self.counters.published += 1;
                    let canon = canon.get(i).copied().unwrap_or((0, 0));
                    self.deliver(name, route_tag, (epoch, seq), canon, *msg_id, data, edges);
                    positions.push(Position {
                        epoch,
                        seq,
                        shards: 0,
                    });
                }
                PublishOutcome::StaleRoute { since } => {
                    self.counters.stale_routes += 1;
                    return Ok(RunOutcome::StaleRoute { since });
                }
                PublishOutcome::NotOwner { owner } => return Ok(RunOutcome::NotOwner { owner }),
            }
        }
        Ok(RunOutcome::Sequenced(positions))
    }
}

/// The number of names of an op (0 when it is gone).
fn op_len(core: &DistributorCore, op: OpId) -> usize {
    core.publishes.ops.get(&op).map_or(0, |op| op.names.len())
}
