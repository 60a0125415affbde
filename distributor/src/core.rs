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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use firetower_proto::metastore::v1 as pb;
use firetower_proto::routing::{RoutingChanges, RoutingTable};
use firetower_proto::{slot_of, Slot};

/// Per-topic state: its sequence and which edges want it.
#[derive(Debug, Default)]
struct TopicState {
    /// The owner epoch `seq` counts in; a new epoch restarts the count.
    epoch: u64,
    seq: u64,
    /// edge → (local subscribers, epoch tag).
    interest: BTreeMap<u64, (u64, u64)>,
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
}

/// A forwarded publish's key: (forwarder id, forwarder's registration incarnation, number).
/// The incarnation makes keys unique across restarts of the forwarder.
pub type ForwardKey = (u64, u64, u64);

/// How many forwarded publishes are remembered for retries (a few seconds of forwards at
/// high rates; a retry comes within the forwarder's retry budget).
pub const RECENT_FORWARDS: usize = 100_000;

impl DistributorCore {
    pub fn new(id: u64, max_topics: usize) -> Self {
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
    /// epoch it saw. Returns true when it was recorded (the caller acks it).
    pub fn handle_interest(
        &mut self,
        edge: u64,
        topic: &str,
        subscribers: u64,
        epoch: u64,
    ) -> Result<(), CoreError> {
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
            return Ok(());
        }
        let state = self.topic_entry(topic)?;
        state.interest.insert(edge, (subscribers, epoch));
        self.edge_topics
            .entry(edge)
            .or_default()
            .insert(topic.to_string());
        Ok(())
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
        key: ForwardKey,
    ) -> Result<PublishOutcome, CoreError> {
        if let Some(&(epoch, seq)) = self.recent.get(&key) {
            return Ok(PublishOutcome::Sequenced {
                epoch,
                seq,
                edges: Vec::new(),
            });
        }
        let outcome = self.handle_publish(topic)?;
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

    pub fn handle_publish(&mut self, topic: &str) -> Result<PublishOutcome, CoreError> {
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
        let state = self.topic_entry(topic)?;
        if state.epoch != route.epoch {
            state.epoch = route.epoch;
            state.seq = 0;
        }
        state.seq += 1;
        let seq = state.seq;
        let mut edges: Vec<u64> = state
            .interest
            .iter()
            .filter(|(_, (n, tag))| *n > 0 && *tag >= route.epoch)
            .map(|(e, _)| *e)
            .collect();
        let synced = self.synced.get(&slot);
        for edge in self.routing.edges_of(slot) {
            let has_synced = synced
                .and_then(|s| s.get(&edge))
                .is_some_and(|e| *e >= route.epoch);
            if !has_synced && self.connected.contains(&edge) && !edges.contains(&edge) {
                edges.push(edge);
            }
        }
        edges.retain(|e| self.connected.contains(e));
        self.relayed += edges.len() as u64;
        Ok(PublishOutcome::Sequenced {
            epoch: route.epoch,
            seq,
            edges,
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
                }
            }
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
        core.handle_interest(9, "chat", 3, 5).unwrap();
        for seq in 1..=3 {
            assert_eq!(
                core.handle_publish("chat").unwrap(),
                PublishOutcome::Sequenced {
                    epoch: 5,
                    seq,
                    edges: vec![9]
                }
            );
        }
        assert_eq!(
            core.handle_publish("room-1").unwrap(),
            PublishOutcome::NotOwner { owner: 2 }
        );
        assert_eq!(
            core.topic_count("chat"),
            Ok(TopicCount {
                subscribers: 3,
                edges: vec![9]
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
        core.handle_interest(9, "chat", 1, 5).unwrap();
        core.handle_publish("chat").unwrap();
        core.handle_watch(move_slot(s, 2, 8));
        // The edge already announced for the reign at epoch 10 before we saw it.
        core.handle_interest(9, "chat", 2, 10).unwrap();
        core.handle_watch(move_slot(s, 1, 10));
        assert_eq!(
            core.handle_publish("chat").unwrap(),
            PublishOutcome::Sequenced {
                epoch: 10,
                seq: 1,
                edges: vec![9]
            }
        );
        // Interest tagged with an older epoch does not count.
        core.handle_edge_up(7);
        core.handle_interest(7, "chat", 1, 5).unwrap();
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
        let PublishOutcome::Sequenced { edges, .. } = core.handle_publish("chat").unwrap() else {
            panic!("owned")
        };
        assert_eq!(edges, vec![4]);
        core.handle_slots_synced(4, &[s as u32], &[5]);
        let PublishOutcome::Sequenced { edges, .. } = core.handle_publish("chat").unwrap() else {
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
        core.handle_interest(9, "chat", 1, 5).unwrap();
        let first = core.handle_forwarded_publish("chat", (2, 1, 77)).unwrap();
        assert_eq!(
            first,
            PublishOutcome::Sequenced {
                epoch: 5,
                seq: 1,
                edges: vec![9]
            }
        );
        assert_eq!(
            core.handle_forwarded_publish("chat", (2, 1, 77)).unwrap(),
            PublishOutcome::Sequenced {
                epoch: 5,
                seq: 1,
                edges: vec![]
            }
        );
        assert_eq!(
            core.handle_forwarded_publish("chat", (2, 1, 78)).unwrap(),
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
            core.handle_publish("chat").unwrap(),
            PublishOutcome::NotOwner { owner: 0 }
        );
        // Registered at revision 9, but the view still shows the slot at epoch 5.
        core.handle_registered(9);
        assert_eq!(
            core.handle_publish("chat").unwrap(),
            PublishOutcome::NotOwner { owner: 0 }
        );
        core.handle_watch(snapshot(|_| 1, 9, vec![]));
        assert!(matches!(
            core.handle_publish("chat").unwrap(),
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
        core.handle_interest(9, "a", 1, 5).unwrap();
        core.handle_interest(9, "b", 1, 5).unwrap();
        assert_eq!(
            core.handle_interest(9, "c", 1, 5),
            Err(CoreError::TooManyTopics { max: 2 })
        );
        core.handle_edge_down(9);
        assert_eq!(core.topic_table_len(), 0);
        assert_eq!(core.topic_count("a").unwrap(), TopicCount::default());
    }
}
