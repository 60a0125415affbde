//! A local copy of the metastore's routing state, fed by its watch stream.
//!
//! Distributors and edges both follow the metastore: who owns each slot (and at which
//! epoch), which edges have subscribers in each slot, the members' addresses, and the hot
//! topics. [`RoutingTable::apply`] takes one watch event (a snapshot or a delta) and returns
//! the slot ownership changes it caused, so the caller can react (claim or release slots,
//! re-announce interest). Pure: no clock, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use crate::metastore::v1 as pb;
use crate::slot::{Slot, SLOT_COUNT};
use crate::topic::{edge_shard, sub_topic};

/// Who owns a slot. `distributor == 0` means nobody.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotRoute {
    pub distributor: u64,
    pub epoch: u64,
}

/// One slot that changed owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerChange {
    pub slot: Slot,
    pub from: u64,
    /// The slot's epoch under `from`.
    pub from_epoch: u64,
    pub to: u64,
    pub epoch: u64,
}

/// What a watch event changed that callers react to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoutingChanges {
    pub owners: Vec<OwnerChange>,
    /// Distributors that appeared or whose addresses changed.
    pub distributors_up: Vec<u64>,
    pub distributors_down: Vec<u64>,
    /// True when this event was a full snapshot.
    pub snapshot: bool,
    /// Hot topics whose entry changed (set, committed or merged), in topic order.
    pub hot: Vec<String>,
}

/// A hot topic's route as the metastore last set it (see `HotTopic` in metastore.proto).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HotRoute {
    /// Sub-topics now (0: plain).
    pub shards: u32,
    /// Sub-topics before the change (0: plain).
    pub prev_shards: u32,
    /// The revision the change was prepared at: the route tag publishers use.
    pub since: u64,
    /// Every edge has joined the new route: publishers use it alone.
    pub committed: bool,
    /// The revision of the entry's last change (prepare, then commit): the route tag.
    pub revision: u64,
}

impl HotRoute {
    fn from_proto(h: &pb::HotTopic) -> Self {
        HotRoute {
            shards: h.shards,
            prev_shards: h.prev_shards,
            since: h.since,
            committed: h.committed,
            revision: h.revision.max(h.since),
        }
    }
}

/// The topic names a route of `topic` with `shards` sub-topics consists of.
pub fn route_topics(topic: &str, shards: u32) -> Vec<String> {
    if shards == 0 {
        vec![topic.to_string()]
    } else {
        (0..shards).map(|k| sub_topic(topic, k)).collect()
    }
}

/// The one name of a `shards`-way route of `topic` that edge `edge_id` subscribes to.
pub fn edge_route_topic(edge_id: u64, topic: &str, shards: u32) -> String {
    if shards == 0 {
        topic.to_string()
    } else {
        sub_topic(topic, edge_shard(edge_id, topic, shards))
    }
}

/// The routing state at one revision.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    revision: u64,
    routes: Vec<SlotRoute>,
    slot_edges: BTreeMap<Slot, BTreeSet<u64>>,
    distributors: BTreeMap<u64, pb::Member>,
    edges: BTreeMap<u64, pb::Member>,
    hot_topics: BTreeMap<String, HotRoute>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        RoutingTable {
            revision: 0,
            routes: vec![SlotRoute::default(); SLOT_COUNT],
            slot_edges: BTreeMap::new(),
            distributors: BTreeMap::new(),
            edges: BTreeMap::new(),
            hot_topics: BTreeMap::new(),
        }
    }
}

impl RoutingTable {
    /// The revision of the last applied event; 0 before any.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The owner of `slot`.
    pub fn route(&self, slot: Slot) -> SlotRoute {
        self.routes.get(slot as usize).copied().unwrap_or_default()
    }

    /// Every slot owned by `distributor`.
    pub fn slots_of(&self, distributor: u64) -> impl Iterator<Item = (Slot, SlotRoute)> + '_ {
        self.routes
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.distributor == distributor && distributor != 0)
            .map(|(s, r)| (s as Slot, *r))
    }

    /// The edges the metastore lists as having subscribers in `slot`.
    pub fn edges_of(&self, slot: Slot) -> impl Iterator<Item = u64> + '_ {
        self.slot_edges.get(&slot).into_iter().flatten().copied()
    }

    /// A distributor's named address (`"grpc"`, `"quic"`).
    pub fn distributor_addr(&self, id: u64, name: &str) -> Option<&str> {
        self.distributors
            .get(&id)
            .and_then(|m| m.addrs.get(name))
            .map(String::as_str)
    }

    /// Registered distributors, by id.
    pub fn distributors(&self) -> &BTreeMap<u64, pb::Member> {
        &self.distributors
    }

    /// Registered edges, by id.
    pub fn edges(&self) -> &BTreeMap<u64, pb::Member> {
        &self.edges
    }

    /// The hot-topic route of `topic`, if it was ever split.
    pub fn hot_route(&self, topic: &str) -> Option<HotRoute> {
        self.hot_topics.get(topic).copied()
    }

    /// Every hot-topic entry (tombstones of merged topics included).
    pub fn hot_routes(&self) -> &BTreeMap<String, HotRoute> {
        &self.hot_topics
    }

    /// Where a publish of `topic` goes first: the topic's own name, sequenced by the owner
    /// of its slot, under the route tag (the revision of the hot entry's last change, 0 for
    /// a never-split topic). The owner numbers every message of the topic in one stream and
    /// fans a split topic's messages out to its sub-topics ([`Self::fanout_route`]).
    pub fn publish_route(&self, topic: &str) -> (u64, Vec<String>) {
        let tag = self.hot_topics.get(topic).map_or(0, |h| h.revision);
        (tag, vec![topic.to_string()])
    }

    /// The sub-topics the owner of `topic` sends each message on to, after numbering it,
    /// with the route tag: the current route's, and while a change is prepared the
    /// previous route's too. `None` for a topic that was never split (its own name is its
    /// only route). The topic's own name is never among them: a merged topic is carried
    /// by its one sub-topic `T#0`.
    pub fn fanout_route(&self, topic: &str) -> Option<(u64, Vec<String>)> {
        let hot = self.hot_topics.get(topic)?;
        let mut names = route_topics(topic, hot.shards);
        if !hot.committed {
            for name in route_topics(topic, hot.prev_shards) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names.retain(|n| n != topic);
        (!names.is_empty()).then_some((hot.revision, names))
    }

    /// Applies one watch event. Events must come in the order the watch stream sends them.
    pub fn apply(&mut self, event: pb::WatchEvent) -> RoutingChanges {
        match event.event {
            Some(pb::watch_event::Event::Snapshot(map)) => self.apply_snapshot(map),
            Some(pb::watch_event::Event::Delta(delta)) => self.apply_delta(delta),
            None => RoutingChanges::default(),
        }
    }

    fn apply_snapshot(&mut self, map: pb::SlotMap) -> RoutingChanges {
        let mut changes = RoutingChanges {
            snapshot: true,
            ..RoutingChanges::default()
        };
        for slot in 0..SLOT_COUNT {
            let new = SlotRoute {
                distributor: map.slot_owner.get(slot).copied().unwrap_or(0),
                epoch: map.slot_epoch.get(slot).copied().unwrap_or(0),
            };
            let old = self.routes[slot];
            if old != new {
                self.routes[slot] = new;
                changes.owners.push(OwnerChange {
                    slot: slot as Slot,
                    from: old.distributor,
                    from_epoch: old.epoch,
                    to: new.distributor,
                    epoch: new.epoch,
                });
            }
        }
        self.slot_edges.clear();
        for se in map.slot_edges {
            if let Ok(slot) = Slot::try_from(se.slot) {
                self.slot_edges.entry(slot).or_default().extend(se.edge_ids);
            }
        }
        let mut distributors = BTreeMap::new();
        let mut edges = BTreeMap::new();
        for m in map.members {
            match pb::MemberKind::try_from(m.kind) {
                Ok(pb::MemberKind::Distributor) => {
                    distributors.insert(m.id, m);
                }
                Ok(pb::MemberKind::Edge) => {
                    edges.insert(m.id, m);
                }
                _ => {}
            }
        }
        for (id, m) in &distributors {
            if self.distributors.get(id) != Some(m) {
                changes.distributors_up.push(*id);
            }
        }
        for id in self.distributors.keys() {
            if !distributors.contains_key(id) {
                changes.distributors_down.push(*id);
            }
        }
        self.distributors = distributors;
        self.edges = edges;
        let hot_topics: BTreeMap<String, HotRoute> = map
            .hot_topics
            .into_iter()
            .map(|h| (h.topic.clone(), HotRoute::from_proto(&h)))
            .collect();
        // Entries never go away (merged topics stay as tombstones), so new or changed ones
        // are all a snapshot can bring.
        changes.hot = hot_topics
            .iter()
            .filter(|(t, h)| self.hot_topics.get(*t) != Some(h))
            .map(|(t, _)| t.clone())
            .collect();
        self.hot_topics = hot_topics;
        self.revision = map.revision;
        changes
    }

    fn apply_delta(&mut self, delta: pb::Delta) -> RoutingChanges {
        let mut changes = RoutingChanges::default();
        for change in delta.changes {
            let Some(change) = change.change else {
                continue;
            };
            match change {
                pb::change::Change::MemberUp(m) => match pb::MemberKind::try_from(m.kind) {
                    Ok(pb::MemberKind::Distributor) => {
                        changes.distributors_up.push(m.id);
                        self.distributors.insert(m.id, m);
                    }
                    Ok(pb::MemberKind::Edge) => {
                        self.edges.insert(m.id, m);
                    }
                    _ => {}
                },
                pb::change::Change::MemberDown(r) => match pb::MemberKind::try_from(r.kind) {
                    Ok(pb::MemberKind::Distributor)
                        if self.distributors.remove(&r.id).is_some() =>
                    {
                        changes.distributors_down.push(r.id);
                    }
                    Ok(pb::MemberKind::Edge) => {
                        self.edges.remove(&r.id);
                    }
                    _ => {}
                },
                pb::change::Change::SlotOwner(o) => {
                    let Ok(slot) = Slot::try_from(o.slot) else {
                        continue;
                    };
                    let Some(route) = self.routes.get_mut(slot as usize) else {
                        continue;
                    };
                    let (from, from_epoch) = (route.distributor, route.epoch);
                    *route = SlotRoute {
                        distributor: o.distributor_id,
                        epoch: o.epoch,
                    };
                    changes.owners.push(OwnerChange {
                        slot,
                        from,
                        from_epoch,
                        to: o.distributor_id,
                        epoch: o.epoch,
                    });
                }
                pb::change::Change::SlotEdge(e) => {
                    let Ok(slot) = Slot::try_from(e.slot) else {
                        continue;
                    };
                    if e.present {
                        self.slot_edges.entry(slot).or_default().insert(e.edge_id);
                    } else if let Some(set) = self.slot_edges.get_mut(&slot) {
                        set.remove(&e.edge_id);
                        if set.is_empty() {
                            self.slot_edges.remove(&slot);
                        }
                    }
                }
                pb::change::Change::HotTopicSet(h) => {
                    self.hot_topics
                        .insert(h.topic.clone(), HotRoute::from_proto(&h));
                    changes.hot.push(h.topic);
                }
            }
        }
        changes.hot.sort();
        changes.hot.dedup();
        self.revision = delta.revision;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(kind: pb::MemberKind, id: u64) -> pb::Member {
        pb::Member {
            kind: kind as i32,
            id,
            addrs: [("grpc".to_string(), format!("127.0.0.1:{id}"))].into(),
            lease_ttl_ms: 1000,
            incarnation: 1,
        }
    }

    #[test]
    fn snapshot_then_deltas() {
        let mut table = RoutingTable::default();
        let mut owners = vec![1u64; SLOT_COUNT];
        owners[7] = 2;
        let changes = table.apply(pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(pb::SlotMap {
                revision: 10,
                members: vec![
                    member(pb::MemberKind::Distributor, 1),
                    member(pb::MemberKind::Distributor, 2),
                    member(pb::MemberKind::Edge, 5),
                ],
                slot_owner: owners,
                slot_epoch: vec![3; SLOT_COUNT],
                slot_edges: vec![pb::SlotEdges {
                    slot: 7,
                    edge_ids: vec![5],
                }],
                hot_topics: vec![],
            })),
        });
        assert!(changes.snapshot);
        assert_eq!(changes.owners.len(), SLOT_COUNT);
        assert_eq!(changes.distributors_up, vec![1, 2]);
        assert_eq!(
            table.route(7),
            SlotRoute {
                distributor: 2,
                epoch: 3
            }
        );
        assert_eq!(table.edges_of(7).collect::<Vec<_>>(), vec![5]);
        assert_eq!(table.slots_of(2).count(), 1);
        assert_eq!(table.distributor_addr(2, "grpc"), Some("127.0.0.1:2"));

        let changes = table.apply(pb::WatchEvent {
            event: Some(pb::watch_event::Event::Delta(pb::Delta {
                revision: 11,
                changes: vec![
                    pb::Change {
                        change: Some(pb::change::Change::MemberDown(pb::MemberRef {
                            kind: pb::MemberKind::Distributor as i32,
                            id: 2,
                        })),
                    },
                    pb::Change {
                        change: Some(pb::change::Change::SlotOwner(pb::SlotOwnerChange {
                            slot: 7,
                            distributor_id: 1,
                            epoch: 11,
                        })),
                    },
                    pb::Change {
                        change: Some(pb::change::Change::SlotEdge(pb::SlotEdgeChange {
                            slot: 7,
                            edge_id: 5,
                            present: false,
                        })),
                    },
                ],
            })),
        });
        assert_eq!(table.revision(), 11);
        assert_eq!(changes.distributors_down, vec![2]);
        assert_eq!(
            changes.owners,
            vec![OwnerChange {
                slot: 7,
                from: 2,
                from_epoch: 3,
                to: 1,
                epoch: 11
            }]
        );
        assert_eq!(table.edges_of(7).count(), 0);
        assert_eq!(table.slots_of(1).count(), SLOT_COUNT);
    }

    #[test]
    fn hot_entry_changes_are_reported_once() {
        let hot = |shards: u32, committed: bool, revision: u64| pb::HotTopic {
            topic: "t".into(),
            shards,
            prev_shards: 0,
            since: 3,
            committed,
            revision,
        };
        let snapshot = |revision: u64, h: pb::HotTopic| pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(pb::SlotMap {
                revision,
                hot_topics: vec![h],
                ..pb::SlotMap::default()
            })),
        };
        let mut table = RoutingTable::default();
        assert_eq!(table.apply(snapshot(3, hot(8, false, 3))).hot, vec!["t"]);
        assert!(table.apply(snapshot(3, hot(8, false, 3))).hot.is_empty());
        let delta = pb::WatchEvent {
            event: Some(pb::watch_event::Event::Delta(pb::Delta {
                revision: 4,
                changes: vec![pb::Change {
                    change: Some(pb::change::Change::HotTopicSet(hot(8, true, 4))),
                }],
            })),
        };
        assert_eq!(table.apply(delta).hot, vec!["t"]);
        assert_eq!(
            table.fanout_route("t").map(|(tag, _)| tag),
            Some(4),
            "the commit revision is the route tag"
        );
    }
}
