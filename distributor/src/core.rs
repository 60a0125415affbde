//! The distributor's decisions, sans-IO: slot ownership, per-topic sequencing, interest and
//! the choice of edges each message goes to.
//!
//! The shell feeds it watch events, edge frames and publishes; it answers with what to do
//! (sequence and send to these edges, or forward to that owner). It holds no clock and no
//! sockets, so the simulator drives it exactly as the real node does.
//!
//! Interest is tagged with the owner epoch the edge saw when it sent it. An entry counts
//! only while its tag is at least the slot's current epoch: interest an edge gave an
//! earlier reign of the slot is stale (the edge re-announces to each new owner).
//!
//! Hot topics: every publish carries the route tag its publisher routed it by (the revision
//! of the topic's hot entry). The owner of a topic or sub-topic refuses a tag older than
//! its own view ([`PublishOutcome::StaleRoute`]); when its view moves on it fences the
//! topic towards its edges ([`DistributorCore::take_fences`]), after every delivery of the
//! old route. The owner also watches each topic's relay load and proposes splits and merges
//! ([`DistributorCore::handle_tick`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use tokio::time::{Duration, Instant};

use crate::config::HotPolicy;

use firetower_proto::metastore::v1 as pb;
use firetower_proto::routing::{route_topics, HotRoute, RoutingChanges, RoutingTable};
use firetower_proto::topic::{base_topic, parse_sub_topic, MIN_SHARDS};
use firetower_proto::{slot_of, Slot};

/// Per-topic state: its sequence and which edges want it.
#[derive(Debug, Default)]
struct TopicState {
    /// The owner epoch `seq` counts in; a new epoch restarts the count.
    epoch: u64,
    seq: u64,
    /// edge → (local subscribers, epoch tag).
    interest: BTreeMap<u64, (u64, u64)>,
    /// Messages sequenced and deliveries sent, since this state was made.
    sequenced: u64,
    relayed: u64,
    /// Messages sequenced in the current load window.
    window_messages: u64,
    /// Consecutive windows above the split load / below the merge load.
    windows_over: u32,
    windows_under: u32,
    /// Encoded deliveries of messages routed by a hot-topic view (route tag > 0), newest
    /// last, at most [`HISTORY_FRAMES`]: an edge that joins this (sub-)topic while its
    /// route changes gets the ones published since the change was prepared, which the
    /// publishers sent here before the edge's interest arrived.
    history: std::collections::VecDeque<(u64, Bytes)>,
    /// The bytes of `history`'s frames, at most [`HISTORY_BYTES`].
    history_bytes: usize,
}

/// Deliveries kept per split (sub-)topic for edges that join its route late: a few hundred
/// milliseconds of a busy hot topic, the time an edge takes to see a change and announce.
pub const HISTORY_FRAMES: usize = 1024;
/// And at most this many bytes of them per (sub-)topic, whatever the message size.
pub const HISTORY_BYTES: usize = 1 << 20;

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
    /// FIFO-bounded by [`RECENT_FORWARDS`].
    recent: HashMap<ForwardKey, (u64, u64)>,
    /// This process's registration incarnation (0 before it registered). It owns a slot
    /// only at an epoch at least this: every slot a new registration gets (or keeps) is
    /// granted at that revision, so an older epoch in the view is stale routing (a lagging
    /// view, or a previous incarnation's).
    incarnation: u64,
    recent_order: std::collections::VecDeque<ForwardKey>,
    /// Fences made by watch events, until the shell takes them.
    fences: Vec<FenceOut>,
    hot_policy: HotPolicy,
    /// When the current load window started (None: before the first tick).
    window_start: Option<Instant>,
}

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
            recent_order: std::collections::VecDeque::new(),
            incarnation: 0,
            fences: Vec::new(),
            hot_policy,
            window_start: None,
        }
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

    /// Applies a metastore watch event. Slots this distributor lost drop their interest
    /// and sequencing state (except entries already tagged for a later reign).
    pub fn handle_watch(&mut self, event: pb::WatchEvent) -> RoutingChanges {
        let changes = self.routing.apply(event);
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
                state.history.retain(|(tag, _)| *tag >= hot.since);
                state.history_bytes = state.history.iter().map(|(_, f)| f.len()).sum();
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
        self.fences.extend(fences);
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
        changes
    }

    /// Fences made by the last watch events: send each on its topic's lane.
    pub fn take_fences(&mut self) -> Vec<FenceOut> {
        std::mem::take(&mut self.fences)
    }

    /// The fence an edge that just announced `topic` needs, if the topic was ever split and
    /// this node owns it: the route tag below which it refuses publishes.
    pub fn fence_for(&self, topic: &str) -> Option<u64> {
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
    /// epoch it saw. When it was recorded (the caller acks it), returns the deliveries to
    /// replay to an edge that newly joins a split topic's route (see [`HISTORY_FRAMES`]).
    pub fn handle_interest(
        &mut self,
        edge: u64,
        topic: &str,
        subscribers: u64,
        epoch: u64,
        route_since: u64,
    ) -> Result<Vec<Bytes>, CoreError> {
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
                .filter(|(tag, _)| *tag >= since)
                .map(|(_, frame)| frame.clone())
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

    /// Keeps the encoded delivery of a message routed by a hot-topic view (`route_tag` >
    /// 0) for edges that join late. Bounded by [`HISTORY_FRAMES`] and [`HISTORY_BYTES`] per
    /// topic, oldest dropped first.
    pub fn record_history(&mut self, topic: &str, route_tag: u64, frame: &Bytes) {
        if route_tag == 0 {
            return;
        }
        if let Some(state) = self.topics.get_mut(topic) {
            state.history.push_back((route_tag, frame.clone()));
            state.history_bytes += frame.len();
            while state.history.len() > HISTORY_FRAMES || state.history_bytes > HISTORY_BYTES {
                match state.history.pop_front() {
                    Some((_, old)) => state.history_bytes -= old.len(),
                    None => break,
                }
            }
        }
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
            self.topics.insert(topic.to_string(), TopicState::default());
        }
        // Present: inserted above if it was missing.
        self.topics.get_mut(topic).ok_or(CoreError::TooManyTopics {
            max: self.max_topics,
        })
    }

    /// Sequences a publish if this distributor owns the topic, and picks its edges: those
    /// that announced the topic at the current epoch, plus (until they have synced the
    /// slot) the connected edges the metastore lists for the slot.
    /// [`Self::handle_publish`] for a forwarded publish with the forwarder's key: a key seen
    /// before gets the earlier `(epoch, seq)` back and goes to no edge again.
    pub fn handle_forwarded_publish(
        &mut self,
        topic: &str,
        route_tag: u64,
        key: ForwardKey,
    ) -> Result<PublishOutcome, CoreError> {
        if let Some(&(epoch, seq)) = self.recent.get(&key) {
            return Ok(PublishOutcome::Sequenced {
                epoch,
                seq,
                edges: Vec::new(),
            });
        }
        let outcome = self.handle_publish(topic, route_tag)?;
        if let PublishOutcome::Sequenced { epoch, seq, .. } = &outcome {
            if self.recent_order.len() >= RECENT_FORWARDS {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
            self.recent.insert(key, (*epoch, *seq));
            self.recent_order.push_back(key);
        }
        Ok(outcome)
    }

    ///
    /// `route_tag` is the revision of the last change of the hot-topic entry the publisher routed by (0 for a
    /// topic it knew no entry of).
    pub fn handle_publish(
        &mut self,
        topic: &str,
        route_tag: u64,
    ) -> Result<PublishOutcome, CoreError> {
        let slot = slot_of(topic);
        let route = self.routing.route(slot);
        if route.distributor != self.id {
            return Ok(PublishOutcome::NotOwner {
                owner: route.distributor,
            });
        }
        if self.incarnation == 0 || route.epoch < self.incarnation {
            // Not registered yet, or the view is older than this registration: wait.
            return Ok(PublishOutcome::NotOwner { owner: 0 });
        }
        if let Some(hot) = self.routing.hot_route(base_topic(topic)) {
            if route_tag < hot.revision {
                return Ok(PublishOutcome::StaleRoute {
                    since: hot.revision,
                });
            }
        }
        let edges = self.targets(topic, slot, route.epoch);
        let state = self.topic_entry(topic)?;
        if state.epoch != route.epoch {
            state.epoch = route.epoch;
            state.seq = 0;
        }
        state.seq += 1;
        state.sequenced += 1;
        state.window_messages += 1;
        state.relayed += edges.len() as u64;
        let seq = state.seq;
        tracing::trace!(distributor = self.id, topic, epoch = route.epoch, seq, route_tag, edges = ?edges, "sequenced");
        self.relayed += edges.len() as u64;
        Ok(PublishOutcome::Sequenced {
            epoch: route.epoch,
            seq,
            edges,
        })
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
    pub fn handle_tick(&mut self, now: Instant) -> Vec<HotProposal> {
        let window = Duration::from_millis(self.hot_policy.window_ms);
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return Vec::new();
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < window {
            return Vec::new();
        }
        self.window_start = Some(now);
        let policy = self.hot_policy.clone();
        let secs = elapsed.as_secs_f64().max(0.001);
        let all_edges = self.routing.edges().len() as f64;
        let mut proposals = Vec::new();
        // One pass over the topic table per window (bounded by max_topics).
        for (name, state) in self.topics.iter_mut() {
            let name = name.as_str();
            let route = self.routing.route(slot_of(name));
            let owned = route.distributor == self.id;
            let hot = self.routing.hot_route(base_topic(name));
            let rate = state.window_messages as f64 / secs;
            state.window_messages = 0;
            if !policy.enabled || !owned {
                continue;
            }
            match (parse_sub_topic(name), hot) {
                // A plain topic (never split, or merged and settled).
                (None, None)
                | (
                    None,
                    Some(HotRoute {
                        shards: 0,
                        committed: true,
                        ..
                    }),
                ) => {
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
                            topic: name.to_string(),
                            shards,
                        });
                    }
                }
                // Sub-topic 0 of a settled split topic.
                (Some((base, 0)), Some(h)) if h.committed && h.shards > 0 => {
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
        // The table's iteration order is arbitrary; the proposals' order is not.
        proposals.sort_by(|a, b| a.topic.cmp(&b.topic));
        proposals
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

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_proto::SLOT_COUNT;

    fn snapshot(
        owner_of: impl Fn(usize) -> u64,
        epoch: u64,
        edges: Vec<(u32, u64)>,
    ) -> pb::WatchEvent {
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(pb::SlotMap {
                revision: epoch,
                members: vec![],
                slot_owner: (0..SLOT_COUNT).map(owner_of).collect(),
                slot_epoch: vec![epoch; SLOT_COUNT],
                slot_edges: edges
                    .into_iter()
                    .map(|(slot, edge)| pb::SlotEdges {
                        slot,
                        edge_ids: vec![edge],
                    })
                    .collect(),
                hot_topics: vec![],
            })),
        }
    }

    fn move_slot(slot: Slot, to: u64, epoch: u64) -> pb::WatchEvent {
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Delta(pb::Delta {
                revision: epoch,
                changes: vec![pb::Change {
                    change: Some(pb::change::Change::SlotOwner(pb::SlotOwnerChange {
                        slot: slot as u32,
                        distributor_id: to,
                        epoch,
                    })),
                }],
            })),
        }
    }

    #[test]
    fn sequences_owned_topics_and_forwards_others() {
        let mut core = DistributorCore::new(1, 100);
        core.handle_registered(1);
        let chat = slot_of("chat") as usize;
        core.handle_watch(snapshot(|s| if s == chat { 1 } else { 2 }, 5, vec![]));
        core.handle_edge_up(9);
        core.handle_interest(9, "chat", 3, 5, 0).unwrap();
        for seq in 1..=3 {
            assert_eq!(
                core.handle_publish("chat", 0).unwrap(),
                PublishOutcome::Sequenced {
                    epoch: 5,
                    seq,
                    edges: vec![9]
                }
            );
        }
        assert_eq!(
            core.handle_publish("room-1", 0).unwrap(),
            PublishOutcome::NotOwner { owner: 2 }
        );
        assert_eq!(
            core.topic_count("chat"),
            Ok(TopicCount {
                subscribers: 3,
                edges: vec![9],
                edge_subscribers: vec![3],
                stats: TopicStats {
                    sequenced: 3,
                    relayed: 3
                },
            })
        );
        assert_eq!(core.topic_count("room-1"), Err(2));
        assert_eq!(core.relayed(), 3);
    }

    #[test]
    fn a_new_reign_restarts_seq_and_ignores_stale_interest() {
        let mut core = DistributorCore::new(1, 100);
        core.handle_registered(1);
        let s = slot_of("chat");
        core.handle_watch(snapshot(|_| 1, 5, vec![]));
        core.handle_edge_up(9);
        core.handle_interest(9, "chat", 1, 5, 0).unwrap();
        core.handle_publish("chat", 0).unwrap();
        core.handle_watch(move_slot(s, 2, 8));
        // The edge already announced for the reign at epoch 10 before we saw it.
        core.handle_interest(9, "chat", 2, 10, 0).unwrap();
        core.handle_watch(move_slot(s, 1, 10));
        assert_eq!(
            core.handle_publish("chat", 0).unwrap(),
            PublishOutcome::Sequenced {
                epoch: 10,
                seq: 1,
                edges: vec![9]
            }
        );
        // Interest tagged with an older epoch does not count.
        core.handle_edge_up(7);
        core.handle_interest(7, "chat", 1, 5, 0).unwrap();
        assert_eq!(core.topic_count("chat").unwrap().edges, vec![9]);
    }

    #[test]
    fn falls_back_to_metastore_edges_until_synced() {
        let mut core = DistributorCore::new(1, 100);
        core.handle_registered(1);
        let s = slot_of("chat");
        core.handle_watch(snapshot(|_| 1, 5, vec![(s as u32, 4), (s as u32, 6)]));
        core.handle_edge_up(4);
        // Edge 6 is listed but not connected: nothing can go to it.
        let PublishOutcome::Sequenced { edges, .. } = core.handle_publish("chat", 0).unwrap()
        else {
            panic!("owned")
        };
        assert_eq!(edges, vec![4]);
        core.handle_slots_synced(4, &[s as u32], &[5]);
        let PublishOutcome::Sequenced { edges, .. } = core.handle_publish("chat", 0).unwrap()
        else {
            panic!("owned")
        };
        assert!(edges.is_empty(), "edge 4 synced without interest in chat");
    }

    #[test]
    fn a_retried_forward_is_sequenced_once() {
        let mut core = DistributorCore::new(1, 100);
        core.handle_registered(1);
        core.handle_watch(snapshot(|_| 1, 5, vec![]));
        core.handle_edge_up(9);
        core.handle_interest(9, "chat", 1, 5, 0).unwrap();
        let first = core
            .handle_forwarded_publish("chat", 0, (2, 1, 77))
            .unwrap();
        assert_eq!(
            first,
            PublishOutcome::Sequenced {
                epoch: 5,
                seq: 1,
                edges: vec![9]
            }
        );
        assert_eq!(
            core.handle_forwarded_publish("chat", 0, (2, 1, 77))
                .unwrap(),
            PublishOutcome::Sequenced {
                epoch: 5,
                seq: 1,
                edges: vec![]
            }
        );
        assert_eq!(
            core.handle_forwarded_publish("chat", 0, (2, 1, 78))
                .unwrap(),
            PublishOutcome::Sequenced {
                epoch: 5,
                seq: 2,
                edges: vec![9]
            }
        );
    }

    #[test]
    fn no_sequencing_before_registration_or_on_a_view_older_than_it() {
        let mut core = DistributorCore::new(1, 100);
        core.handle_watch(snapshot(|_| 1, 5, vec![]));
        assert_eq!(
            core.handle_publish("chat", 0).unwrap(),
            PublishOutcome::NotOwner { owner: 0 }
        );
        // Registered at revision 9, but the view still shows the slot at epoch 5.
        core.handle_registered(9);
        assert_eq!(
            core.handle_publish("chat", 0).unwrap(),
            PublishOutcome::NotOwner { owner: 0 }
        );
        core.handle_watch(snapshot(|_| 1, 9, vec![]));
        assert!(matches!(
            core.handle_publish("chat", 0).unwrap(),
            PublishOutcome::Sequenced {
                epoch: 9,
                seq: 1,
                ..
            }
        ));
    }

    #[test]
    fn edge_down_drops_its_interest_and_the_topic_table_is_bounded() {
        let mut core = DistributorCore::new(1, 2);
        core.handle_registered(1);
        core.handle_watch(snapshot(|_| 1, 5, vec![]));
        core.handle_edge_up(9);
        core.handle_interest(9, "a", 1, 5, 0).unwrap();
        core.handle_interest(9, "b", 1, 5, 0).unwrap();
        assert_eq!(
            core.handle_interest(9, "c", 1, 5, 0),
            Err(CoreError::TooManyTopics { max: 2 })
        );
        core.handle_edge_down(9);
        assert_eq!(core.topic_table_len(), 0);
        assert_eq!(core.topic_count("a").unwrap(), TopicCount::default());
    }

    fn hot(topic: &str, shards: u32, since: u64, committed: bool, revision: u64) -> pb::WatchEvent {
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Delta(pb::Delta {
                revision,
                changes: vec![pb::Change {
                    change: Some(pb::change::Change::HotTopicSet(pb::HotTopic {
                        topic: topic.into(),
                        shards,
                        prev_shards: 0,
                        since,
                        committed,
                        revision,
                    })),
                }],
            })),
        }
    }

    #[test]
    fn a_stale_route_is_refused_and_a_moved_on_view_fences_its_edges() {
        let mut core = DistributorCore::new(1, 100);
        core.handle_registered(1);
        core.handle_watch(snapshot(|_| 1, 5, vec![]));
        core.handle_edge_up(9);
        core.handle_interest(9, "live", 1, 5, 0).unwrap();
        core.handle_interest(9, "live#1", 1, 5, 0).unwrap();
        assert!(matches!(
            core.handle_publish("live", 0).unwrap(),
            PublishOutcome::Sequenced { .. }
        ));
        core.handle_watch(hot("live", 2, 6, false, 6));
        let mut fences = core.take_fences();
        fences.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!(
            fences,
            vec![
                FenceOut {
                    topic: "live".into(),
                    since: 6,
                    edges: vec![9]
                },
                FenceOut {
                    topic: "live#1".into(),
                    since: 6,
                    edges: vec![9]
                },
            ]
        );
        assert_eq!(
            core.handle_publish("live", 0).unwrap(),
            PublishOutcome::StaleRoute { since: 6 }
        );
        assert!(matches!(
            core.handle_publish("live", 6).unwrap(),
            PublishOutcome::Sequenced { .. }
        ));
        // The commit moves the fence again; the prepare's tag is refused from then on.
        core.handle_watch(hot("live", 2, 6, true, 7));
        assert_eq!(core.take_fences().len(), 2);
        assert_eq!(
            core.handle_publish("live#0", 6).unwrap(),
            PublishOutcome::StaleRoute { since: 7 }
        );
        assert_eq!(core.fence_for("live#1"), Some(7));
        assert_eq!(core.fence_for("other"), None);
    }

    #[test]
    fn an_edge_joining_a_route_late_gets_what_was_published_since_the_change() {
        let mut core = DistributorCore::new(1, 100);
        core.handle_registered(1);
        core.handle_watch(snapshot(|_| 1, 5, vec![]));
        core.handle_edge_up(9);
        for (n, tag) in [(1u8, 0u64), (2, 6), (3, 6), (4, 7)] {
            core.handle_publish("live#0", tag).unwrap();
            core.record_history("live#0", tag, &Bytes::from(vec![n]));
        }
        // Joining for the change prepared at 6: the messages tagged 6 and later.
        let replay = core.handle_interest(9, "live#0", 3, 5, 6).unwrap();
        assert_eq!(
            replay,
            vec![
                Bytes::from(vec![2]),
                Bytes::from(vec![3]),
                Bytes::from(vec![4])
            ]
        );
        // Already joined: a count update replays nothing.
        assert!(core
            .handle_interest(9, "live#0", 4, 5, 6)
            .unwrap()
            .is_empty());
        // The history is bounded.
        for _ in 0..HISTORY_FRAMES + 10 {
            core.record_history("live#0", 7, &Bytes::from_static(b"x"));
        }
        core.handle_interest(9, "live#0", 0, 5, 0).unwrap();
        assert_eq!(
            core.handle_interest(9, "live#0", 1, 5, 6).unwrap().len(),
            HISTORY_FRAMES
        );
        // And by bytes: of 40 frames of 64 KiB, the last 16 (1 MiB) stay.
        for _ in 0..40 {
            core.record_history("live#0", 7, &Bytes::from(vec![0u8; 64 << 10]));
        }
        core.handle_interest(9, "live#0", 0, 5, 0).unwrap();
        assert_eq!(
            core.handle_interest(9, "live#0", 1, 5, 6).unwrap().len(),
            16
        );
    }

    #[test]
    fn sustained_load_proposes_a_split_and_sustained_quiet_a_merge() {
        let policy = HotPolicy {
            enabled: true,
            split_load: 100,
            merge_load: 10,
            window_ms: 1000,
            windows: 3,
            max_shards: 16,
        };
        let mut core = DistributorCore::with_hot_policy(1, 100, policy);
        core.handle_registered(1);
        core.handle_watch(snapshot(|_| 1, 5, vec![]));
        for edge in [7, 8, 9] {
            core.handle_edge_up(edge);
            core.handle_interest(edge, "live", 1, 5, 0).unwrap();
        }
        let t0 = Instant::now();
        assert!(core.handle_tick(t0).is_empty());
        let mut proposals = Vec::new();
        for w in 1..=3u64 {
            // 200 messages/s to 3 edges: 600 deliveries/s, above 100.
            for _ in 0..200 {
                core.handle_publish("live", 0).unwrap();
            }
            proposals = core.handle_tick(t0 + Duration::from_secs(w));
            if w < 3 {
                assert!(proposals.is_empty(), "window {w}: {proposals:?}");
            }
        }
        // 2 * 600 / 100 = 12, rounded up to a power of two.
        assert_eq!(
            proposals,
            vec![HotProposal {
                topic: "live".into(),
                shards: 16
            }]
        );
        // Split and committed. This routing table lists no registered edges, so the
        // merge estimate for sub-topic 0 (messages/s x registered edges) is 0.
        core.handle_watch(hot("live", 4, 6, true, 7));
        core.handle_interest(9, "live#0", 1, 5, 7).unwrap();
        let mut merge = Vec::new();
        for w in 4..=6u64 {
            core.handle_publish("live#0", 7).unwrap();
            merge = core.handle_tick(t0 + Duration::from_secs(w));
        }
        assert_eq!(
            merge,
            vec![HotProposal {
                topic: "live".into(),
                shards: 0
            }]
        );
    }
}
