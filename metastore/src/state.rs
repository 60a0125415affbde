//! The replicated routing state and its pure `apply`.
//!
//! ```text
//!   Command ──► MetaState::apply ──► (Response, Vec<Change>)
//!                   │
//!                   └─ revision += 1 whenever anything changed
//! ```
//!
//! `apply` is a plain function of the state and the command: it never reads a clock, a
//! random number or the environment, so every replica (and the simulator) computes the same
//! state from the same log. Leases are the leader's soft state (see [`crate::lease`]); what
//! reaches the log is the leader's decision to expire a member, carrying the incarnation it
//! expires so that a late expiry never removes a newer registration.
//!
//! A hot topic's route changes in two phases ([`HotEntry`]):
//!
//! ```text
//!   SetHotTopic{shards} ──► prepared at `since` (old ∪ new route) ─┬─► committed (new route)
//!                                                                 │
//!   AckHotTopic{edge, since} ── every registered edge acked ──────┤
//!   Deregister / Expire of an edge ── no un-acked edge is left ───┘
//! ```

use std::collections::{BTreeMap, BTreeSet};

use firetower_proto::metastore::v1 as pb;
use firetower_proto::{Slot, SLOT_COUNT};
use serde::{Deserialize, Serialize};

/// Which role a member plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberKind {
    Distributor,
    Edge,
}

impl MemberKind {
    /// The protobuf value of this kind.
    pub fn to_proto(self) -> pb::MemberKind {
        match self {
            MemberKind::Distributor => pb::MemberKind::Distributor,
            MemberKind::Edge => pb::MemberKind::Edge,
        }
    }

    /// The kind named by a protobuf enum value; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::MemberKind::try_from(value).ok()? {
            pb::MemberKind::Distributor => Some(MemberKind::Distributor),
            pb::MemberKind::Edge => Some(MemberKind::Edge),
            pb::MemberKind::Unspecified => None,
        }
    }
}

/// A registered member as the state machine keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Named endpoints ("grpc", "quic", "ws", …) that peers dial.
    pub addrs: BTreeMap<String, String>,
    /// How long the leader waits for a heartbeat before it proposes expiry.
    pub lease_ttl_ms: u64,
    /// The revision that applied this registration; it names the registration in heartbeats
    /// and expiries.
    pub incarnation: u64,
    /// The process that registered (0: unknown). A Register from the same process while
    /// this registration stands is a retry and changes nothing.
    #[serde(default)]
    pub instance: u64,
    /// A distributor on its way out ([`Command::Drain`]): still a member, owns no slots.
    #[serde(default)]
    pub draining: bool,
}

/// The owner of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotOwner {
    /// The owning distributor; 0 when no distributor is alive.
    pub distributor: u64,
    /// The revision at which this owner took the slot. It increases on every owner change of
    /// the slot, so a distributor that still believes in an older epoch is fenced.
    pub epoch: u64,
}

/// A replicated command: what the leader proposes and every replica applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a member or replaces its registration (a restart gets a new incarnation).
    Register {
        kind: MemberKind,
        id: u64,
        addrs: BTreeMap<String, String>,
        lease_ttl_ms: u64,
        /// The registering process (0: unknown); see [`MemberRecord::instance`].
        #[serde(default)]
        instance: u64,
    },
    /// A member leaves on purpose.
    Deregister { kind: MemberKind, id: u64 },
    /// A distributor is about to leave: its slots move to the others now, while it stays a
    /// member that they can ask for their streams (a graceful drain: the numbering and
    /// history of its topics go on under the new owners). It deregisters afterwards. A
    /// draining edge changes nothing (it only deregisters).
    Drain { kind: MemberKind, id: u64 },
    /// The leader saw no heartbeat of this registration for its lease.
    Expire {
        kind: MemberKind,
        id: u64,
        incarnation: u64,
    },
    /// An edge gained or lost subscribers in these slots.
    UpdateInterest {
        edge: u64,
        add: Vec<Slot>,
        remove: Vec<Slot>,
    },
    /// Prepares a change of `topic`'s route to `shards` sub-topics (0: plain, which merges
    /// a hot topic back into one). See [`HotEntry`].
    SetHotTopic {
        topic: String,
        shards: u32,
        /// Who asked (a node identity or an API key's name): a new entry counts against
        /// them (`max_hot_topics_per_caller`). Empty in logs written before it existed.
        #[serde(default)]
        by: String,
    },
    /// The same as `SetHotTopic { topic, shards: 0 }`. Kept as its own command because the
    /// log (and the API) already names it.
    ClearHotTopic { topic: String },
    /// Edge `edge` receives the route of `topic` prepared at revision `since`; the change
    /// commits once every registered edge has said so.
    AckHotTopic {
        edge: u64,
        topic: String,
        since: u64,
    },
}

/// One hot topic's route: the change in progress, or the last one once committed.
///
/// A change is prepared at revision `since`: publishers send to the old route
/// (`prev_shards`) and the new one (`shards`) under the route tag `since`, edges join the
/// new route and ack. When every registered edge has acked (or the ones that had not are
/// gone) the entry is `committed` and publishers use the new route alone. `shards == 1`
/// is a merged topic, carried by its one sub-topic `T#0` (the topic's own name is its
/// numbered stream once it was split); the entry stays so that a later split gets a higher
/// `since` than anything a publisher may still hold. `prev_shards == 0` is the topic's own
/// name: the route before the first split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "HotEntryRepr")]
pub struct HotEntry {
    /// Sub-topics of the new route (1: merged, carried by `T#0`).
    pub shards: u32,
    /// Sub-topics of the route being replaced (0: the topic's own name, before the first
    /// split): the last committed route.
    pub prev_shards: u32,
    /// The revision that prepared this change; publishers tag their route with it.
    pub since: u64,
    /// Every registered edge has joined the new route; the old one is no longer used.
    pub committed: bool,
    /// The revision of the last change (the prepare, then the commit): the route tag.
    pub changed: u64,
    /// The edges that acked this change. Only registered edges (an edge is dropped from
    /// it when removed), so it is bounded by `max_members`. Not visible to watchers. A
    /// re-registered edge keeps its ack: a new process of it starts from a snapshot that
    /// shows this change prepared, so it joins both routes before serving anyone.
    pub acked: BTreeSet<u64>,
    /// Who made the entry (the first split), for the per-caller limit; kept across its
    /// later changes. Not visible to watchers.
    pub creator: String,
}

impl HotEntry {
    fn to_proto(&self, topic: &str) -> pb::HotTopic {
        pb::HotTopic {
            topic: topic.to_string(),
            shards: self.shards,
            prev_shards: self.prev_shards,
            since: self.since,
            committed: self.committed,
            revision: self.changed,
        }
    }
}

/// How a [`HotEntry`] is read from a snapshot. Snapshots written before the two-phase
/// change held a bare shard count per topic; those read as a committed route, so a node
/// upgraded in place still opens its data directory.
#[derive(Deserialize)]
#[serde(untagged)]
enum HotEntryRepr {
    Current {
        shards: u32,
        prev_shards: u32,
        since: u64,
        committed: bool,
        #[serde(default)]
        changed: u64,
        #[serde(default)]
        acked: BTreeSet<u64>,
        #[serde(default)]
        creator: String,
    },
    Legacy(u32),
}

impl From<HotEntryRepr> for HotEntry {
    fn from(repr: HotEntryRepr) -> Self {
        match repr {
            HotEntryRepr::Current {
                shards,
                prev_shards,
                since,
                committed,
                changed,
                acked,
                creator,
            } => HotEntry {
                shards,
                prev_shards,
                since,
                committed,
                changed: changed.max(since),
                acked,
                creator,
            },
            HotEntryRepr::Legacy(shards) => HotEntry {
                shards,
                prev_shards: 0,
                since: 0,
                committed: true,
                changed: 0,
                acked: BTreeSet::new(),
                creator: String::new(),
            },
        }
    }
}

/// Why an applied command changed nothing. These are decided by the state, so every
/// replica agrees on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The member (at that incarnation) is not registered.
    UnknownMember { kind: MemberKind, id: u64 },
    /// The topic's previous change (prepared at `since`) is not committed yet: one change
    /// at a time, so an edge never holds more than the route it leaves and the one it joins.
    HotChangeInProgress { topic: String, since: u64 },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::UnknownMember { kind, id } => write!(f, "{kind:?} {id} is not registered"),
            Rejection::HotChangeInProgress { topic, since } => write!(
                f,
                "the change of hot topic {topic:?} prepared at revision {since} is not \
                 committed yet (edges are still joining its route); try again"
            ),
        }
    }
}

/// What applying a command answers to the proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The revision after the command.
    pub revision: u64,
    /// For `Register`: the new incarnation.
    pub incarnation: u64,
    /// Set when the command changed nothing because the state did not allow it.
    pub rejected: Option<Rejection>,
}

/// The whole routing state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// Increases by one with every applied command that changed something.
    pub revision: u64,
    pub distributors: BTreeMap<u64, MemberRecord>,
    pub edges: BTreeMap<u64, MemberRecord>,
    /// Indexed by slot; always [`SLOT_COUNT`] entries.
    pub slot_owner: Vec<SlotOwner>,
    /// Slot → the edges that have subscribers in it. Only non-empty sets are kept.
    pub slot_edges: BTreeMap<Slot, BTreeSet<u64>>,
    /// Hot topic → its route, tombstones of merged topics included (see [`HotEntry`]).
    /// Bounded by `max_hot_topics`, which the API checks before proposing a new topic.
    pub hot_topics: BTreeMap<String, HotEntry>,
}

impl Default for MetaState {
    fn default() -> Self {
        MetaState {
            revision: 0,
            distributors: BTreeMap::new(),
            edges: BTreeMap::new(),
            slot_owner: vec![SlotOwner::default(); SLOT_COUNT],
            slot_edges: BTreeMap::new(),
            hot_topics: BTreeMap::new(),
        }
    }
}

impl MetaState {
    fn members_mut(&mut self, kind: MemberKind) -> &mut BTreeMap<u64, MemberRecord> {
        match kind {
            MemberKind::Distributor => &mut self.distributors,
            MemberKind::Edge => &mut self.edges,
        }
    }

    /// The members of one kind.
    pub fn members(&self, kind: MemberKind) -> &BTreeMap<u64, MemberRecord> {
        match kind {
            MemberKind::Distributor => &self.distributors,
            MemberKind::Edge => &self.edges,
        }
    }

    /// Applies one command. Returns the response and every change it made, in order; the
    /// revision increases by one when the change list is non-empty.
    pub fn apply(&mut self, command: &Command) -> (Response, Vec<pb::Change>) {
        let next = self.revision + 1;
        let mut changes = Vec::new();
        let mut response = Response::default();
        match command {
            Command::Register {
                kind,
                id,
                addrs,
                lease_ttl_ms,
                instance,
            } => {
                if let Some(current) = self
                    .members(*kind)
                    .get(id)
                    .filter(|m| *instance != 0 && m.instance == *instance)
                {
                    // A retried Register of the same process: keep the registration.
                    response.incarnation = current.incarnation;
                    return (response, changes);
                }
                let record = MemberRecord {
                    addrs: addrs.clone(),
                    lease_ttl_ms: *lease_ttl_ms,
                    incarnation: next,
                    instance: *instance,
                    draining: false,
                };
                let replaced = self.members_mut(*kind).insert(*id, record.clone());
                let existed = replaced.is_some();
                // A new process of a draining distributor takes slots again.
                let was_draining = replaced.is_some_and(|r| r.draining);
                changes.push(change(pb::change::Change::MemberUp(member_to_proto(
                    *kind, *id, &record,
                ))));
                response.incarnation = next;
                match kind {
                    // A re-registered edge starts from no interest and announces it again.
                    MemberKind::Edge => self.drop_edge_interest(*id, &mut changes),
                    MemberKind::Distributor if !existed || was_draining => {
                        self.rebalance(next, &mut changes)
                    }
                    // A re-registered distributor is a new process with no sequence state:
                    // its slots are granted again at a new epoch, so its sequence numbers
                    // restart under an epoch edges have not seen (and its old self is fenced).
                    MemberKind::Distributor => self.regrant(*id, next, &mut changes),
                }
            }
            Command::Deregister { kind, id } => {
                if !self.remove_member(*kind, *id, next, &mut changes) {
                    response.rejected = Some(Rejection::UnknownMember {
                        kind: *kind,
                        id: *id,
                    });
                }
            }
            Command::Drain { kind, id } => match self.members_mut(*kind).get_mut(id) {
                None => {
                    response.rejected = Some(Rejection::UnknownMember {
                        kind: *kind,
                        id: *id,
                    });
                }
                // Already draining: a retry changes nothing.
                Some(record) if record.draining => {}
                Some(record) => {
                    record.draining = true;
                    if *kind == MemberKind::Distributor {
                        self.rebalance(next, &mut changes);
                    }
                }
            },
            Command::Expire {
                kind,
                id,
                incarnation,
            } => {
                let current = self.members(*kind).get(id).map(|m| m.incarnation);
                if current == Some(*incarnation) {
                    self.remove_member(*kind, *id, next, &mut changes);
                } else {
                    response.rejected = Some(Rejection::UnknownMember {
                        kind: *kind,
                        id: *id,
                    });
                }
            }
            Command::UpdateInterest { edge, add, remove } => {
                if !self.edges.contains_key(edge) {
                    response.rejected = Some(Rejection::UnknownMember {
                        kind: MemberKind::Edge,
                        id: *edge,
                    });
                } else {
                    for &slot in remove {
                        if let Some(set) = self.slot_edges.get_mut(&slot) {
                            if set.remove(edge) {
                                changes.push(slot_edge_change(slot, *edge, false));
                            }
                            if set.is_empty() {
                                self.slot_edges.remove(&slot);
                            }
                        }
                    }
                    for &slot in add {
                        if usize::from(slot) < SLOT_COUNT
                            && self.slot_edges.entry(slot).or_default().insert(*edge)
                        {
                            changes.push(slot_edge_change(slot, *edge, true));
                        }
                    }
                }
            }
            Command::SetHotTopic { topic, shards, by } => {
                response.rejected = self.set_hot_topic(topic, *shards, by, next, &mut changes);
            }
            Command::ClearHotTopic { topic } => {
                response.rejected = self.set_hot_topic(topic, 0, "", next, &mut changes);
            }
            Command::AckHotTopic { edge, topic, since } => {
                if !self.edges.contains_key(edge) {
                    response.rejected = Some(Rejection::UnknownMember {
                        kind: MemberKind::Edge,
                        id: *edge,
                    });
                } else if let Some(entry) = self
                    .hot_topics
                    .get_mut(topic)
                    .filter(|e| !e.committed && e.since == *since)
                {
                    // Only an ack of the change now prepared counts. One of an older (or
                    // committed) change is stale, not an error: the edge sees the current
                    // entry on its watch and acks that.
                    entry.acked.insert(*edge);
                    // Recording the ack alone changes nothing watchers see, so it does not
                    // bump the revision; the snapshot carries it.
                    if all_acked(&self.edges, entry) {
                        entry.committed = true;
                        entry.changed = next;
                        changes.push(change(pb::change::Change::HotTopicSet(
                            entry.to_proto(topic),
                        )));
                    }
                }
            }
        }
        if !changes.is_empty() {
            self.revision = next;
        }
        response.revision = self.revision;
        (response, changes)
    }

    fn remove_member(
        &mut self,
        kind: MemberKind,
        id: u64,
        next: u64,
        changes: &mut Vec<pb::Change>,
    ) -> bool {
        if self.members_mut(kind).remove(&id).is_none() {
            return false;
        }
        changes.push(change(pb::change::Change::MemberDown(pb::MemberRef {
            kind: kind.to_proto() as i32,
            id,
        })));
        match kind {
            MemberKind::Distributor => self.rebalance(next, changes),
            MemberKind::Edge => {
                self.drop_edge_interest(id, changes);
                self.forget_edge_acks(id, next, changes);
            }
        }
        true
    }

    /// Prepares `topic`'s route change to `shards` (see [`HotEntry`]). Setting the count
    /// the entry already has is a no-op, committed or not, so a retried call is harmless.
    fn set_hot_topic(
        &mut self,
        topic: &str,
        shards: u32,
        by: &str,
        next: u64,
        changes: &mut Vec<pb::Change>,
    ) -> Option<Rejection> {
        // A merge (0) carries the topic on its one sub-topic `T#0`: once split, a topic's
        // own name is its stream, numbered by its owner, which sends each message on to the
        // sub-topics of its route; never a route name again.
        let shards = match (self.hot_topics.get(topic), shards) {
            // Never split: nothing to merge.
            (None, 0) => return None,
            (_, 0) => 1,
            (_, n) => n,
        };
        let prev = match self.hot_topics.get(topic) {
            Some(entry) if entry.shards == shards => return None,
            Some(entry) if entry.committed => entry.shards,
            Some(entry) => {
                return Some(Rejection::HotChangeInProgress {
                    topic: topic.to_string(),
                    since: entry.since,
                })
            }
            None => 0,
        };
        let creator = self
            .hot_topics
            .get(topic)
            .map_or_else(|| by.to_string(), |e| e.creator.clone());
        let mut entry = HotEntry {
            shards,
            prev_shards: prev,
            since: next,
            committed: false,
            changed: next,
            acked: BTreeSet::new(),
            creator,
        };
        // Back to the committed route, or no edge to wait for: nothing to prepare.
        entry.committed = prev == shards || all_acked(&self.edges, &entry);
        changes.push(change(pb::change::Change::HotTopicSet(
            entry.to_proto(topic),
        )));
        self.hot_topics.insert(topic.to_string(), entry);
        None
    }

    /// A removed edge no longer counts: its acks go (which keeps `acked` within the
    /// registered edges) and every change only it held back commits now.
    fn forget_edge_acks(&mut self, edge: u64, next: u64, changes: &mut Vec<pb::Change>) {
        for (topic, entry) in self.hot_topics.iter_mut().filter(|(_, e)| !e.committed) {
            entry.acked.remove(&edge);
            if all_acked(&self.edges, entry) {
                entry.committed = true;
                entry.changed = next;
                changes.push(change(pb::change::Change::HotTopicSet(
                    entry.to_proto(topic),
                )));
            }
        }
    }

    fn drop_edge_interest(&mut self, edge: u64, changes: &mut Vec<pb::Change>) {
        self.slot_edges.retain(|&slot, set| {
            if set.remove(&edge) {
                changes.push(slot_edge_change(slot, edge, false));
            }
            !set.is_empty()
        });
    }

    /// Spreads the slots evenly over the live distributors (max − min ≤ 1), moving as few
    /// as possible: a distributor keeps its slots up to its target, the distributors that
    /// already hold the most get the `SLOT_COUNT % n` larger targets, and only the excess
    /// and the orphaned slots move, in slot order, to distributors under their target.
    fn rebalance(&mut self, epoch: u64, changes: &mut Vec<pb::Change>) {
        let live: Vec<u64> = self
            .distributors
            .iter()
            .filter(|(_, m)| !m.draining)
            .map(|(&id, _)| id)
            .collect();
        let targets = rebalance_targets(&self.slot_owner, &live);
        let mut kept: BTreeMap<u64, usize> = BTreeMap::new();
        let mut free = Vec::new();
        for (slot, owner) in self.slot_owner.iter().enumerate() {
            let keep = targets.get(&owner.distributor).is_some_and(|&target| {
                let count = kept.entry(owner.distributor).or_default();
                *count += 1;
                *count <= target
            });
            if !keep && (owner.distributor != 0 || !live.is_empty()) {
                free.push(slot);
            }
        }
        let mut takers = live.iter().flat_map(|id| {
            let short =
                targets[id].saturating_sub(kept.get(id).copied().unwrap_or(0).min(targets[id]));
            std::iter::repeat_n(*id, short)
        });
        for slot in free {
            let distributor = takers.next().unwrap_or(0);
            let owner = &mut self.slot_owner[slot];
            if owner.distributor == distributor {
                continue;
            }
            *owner = SlotOwner { distributor, epoch };
            changes.push(change(pb::change::Change::SlotOwner(pb::SlotOwnerChange {
                slot: slot as u32,
                distributor_id: distributor,
                epoch,
            })));
        }
    }

    /// How many slots each distributor owns (distributors with none included).
    fn regrant(&mut self, distributor: u64, epoch: u64, changes: &mut Vec<pb::Change>) {
        for (slot, owner) in self.slot_owner.iter_mut().enumerate() {
            if owner.distributor == distributor {
                owner.epoch = epoch;
                changes.push(change(pb::change::Change::SlotOwner(pb::SlotOwnerChange {
                    slot: slot as u32,
                    distributor_id: distributor,
                    epoch,
                })));
            }
        }
    }

    pub fn slots_per_distributor(&self) -> BTreeMap<u64, u32> {
        let mut counts: BTreeMap<u64, u32> = self.distributors.keys().map(|&id| (id, 0)).collect();
        for owner in &self.slot_owner {
            if owner.distributor != 0 {
                *counts.entry(owner.distributor).or_default() += 1;
            }
        }
        counts
    }

    /// The number of slots without an owner.
    pub fn unowned_slots(&self) -> u32 {
        self.slot_owner
            .iter()
            .filter(|o| o.distributor == 0)
            .count() as u32
    }

    /// The full state as a protobuf snapshot.
    pub fn to_proto(&self) -> pb::SlotMap {
        pb::SlotMap {
            revision: self.revision,
            members: self.members_to_proto(),
            slot_owner: self.slot_owner.iter().map(|o| o.distributor).collect(),
            slot_epoch: self.slot_owner.iter().map(|o| o.epoch).collect(),
            slot_edges: self
                .slot_edges
                .iter()
                .map(|(&slot, edges)| pb::SlotEdges {
                    slot: u32::from(slot),
                    edge_ids: edges.iter().copied().collect(),
                })
                .collect(),
            hot_topics: self
                .hot_topics
                .iter()
                .map(|(topic, entry)| entry.to_proto(topic))
                .collect(),
        }
    }

    /// Every member, distributors first, each kind in id order.
    pub fn members_to_proto(&self) -> Vec<pb::Member> {
        let distributors = self
            .distributors
            .iter()
            .map(|(&id, m)| member_to_proto(MemberKind::Distributor, id, m));
        let edges = self
            .edges
            .iter()
            .map(|(&id, m)| member_to_proto(MemberKind::Edge, id, m));
        distributors.chain(edges).collect()
    }
}

/// The number of slots each live distributor should own after a rebalance.
fn rebalance_targets(slot_owner: &[SlotOwner], live: &[u64]) -> BTreeMap<u64, usize> {
    if live.is_empty() {
        return BTreeMap::new();
    }
    let mut current: BTreeMap<u64, usize> = live.iter().map(|&id| (id, 0)).collect();
    for owner in slot_owner {
        if let Some(count) = current.get_mut(&owner.distributor) {
            *count += 1;
        }
    }
    let base = SLOT_COUNT / live.len();
    let extra = SLOT_COUNT % live.len();
    // The larger targets go to those who already hold the most (ties: lower id), which is
    // what makes the number of moved slots minimal.
    let mut order: Vec<(u64, usize)> = current.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    order
        .iter()
        .enumerate()
        .map(|(i, &(id, _))| (id, base + usize::from(i < extra)))
        .collect()
}

/// Whether every registered edge has acked `entry` (true when there are no edges).
fn all_acked(edges: &BTreeMap<u64, MemberRecord>, entry: &HotEntry) -> bool {
    edges.keys().all(|id| entry.acked.contains(id))
}

fn change(change: pb::change::Change) -> pb::Change {
    pb::Change {
        change: Some(change),
    }
}

fn slot_edge_change(slot: Slot, edge: u64, present: bool) -> pb::Change {
    change(pb::change::Change::SlotEdge(pb::SlotEdgeChange {
        slot: u32::from(slot),
        edge_id: edge,
        present,
    }))
}

/// The protobuf form of one member.
pub fn member_to_proto(kind: MemberKind, id: u64, record: &MemberRecord) -> pb::Member {
    pb::Member {
        kind: kind.to_proto() as i32,
        id,
        addrs: record
            .addrs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        lease_ttl_ms: record.lease_ttl_ms,
        incarnation: record.incarnation,
    }
}

#[cfg(test)]
mod tests;
