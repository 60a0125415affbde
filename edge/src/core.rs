//! The edge's decisions, sans-IO: local subscriptions, interest toward the owners, the
//! order filter on deliveries, and the fan-out list of each message.
//!
//! Inputs are `handle_*` calls (client frames after the hooks, relay frames, watch events,
//! link state, ticks); outputs are [`Output`]s taken with [`EdgeCore::poll_output`], plus
//! the fan-out that [`EdgeCore::handle_deliver`] returns directly (the hot path).
//!
//! A subscriber is acknowledged only once the topic's owner has acknowledged this edge's
//! interest at the owner's current epoch; from then on every message the owner sequences
//! reaches it. Deliveries carry `(epoch, seq)`; a delivery that is not newer than the last
//! one passed on for its topic is dropped, so clients see each message once and in order
//! even when an old and a new owner both send during a slot move.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use firetower_proto::client::{encode_delivery, ClientError, ErrorCode};
use firetower_proto::metastore::v1 as pb;
use firetower_proto::relay::v1::{relay_frame::Frame, Interest, RelayFrame, SlotsSynced};
use firetower_proto::routing::RoutingTable;
use firetower_proto::{slot_of, Slot};
use tokio::time::{Duration, Instant};

/// A client connection, numbered by the shell.
pub type ConnId = u64;

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a relay frame to a distributor over its link.
    Relay { distributor: u64, frame: RelayFrame },
    /// These topics are now subscribed for the connection: ack them to the client and run
    /// the on_subscribe hook.
    Subscribed { conn: ConnId, topics: Vec<String> },
    /// These subscriptions could not be made effective: tell the client, run no hook.
    SubscribeFailed { conn: ConnId, error: ClientError },
    /// Open (and keep open) a relay link to this distributor.
    Connect { distributor: u64 },
    /// Close the relay link to this distributor.
    Disconnect { distributor: u64 },
}

/// A message to pass to local subscribers: one encoded frame, many connections.
#[derive(Debug, Clone)]
pub struct Fanout {
    pub frame: Bytes,
    pub conns: Vec<ConnId>,
}

#[derive(Debug, Default)]
struct LocalTopic {
    /// Acknowledged subscribers: they receive deliveries.
    subscribers: BTreeSet<ConnId>,
    /// Waiting for the owner's InterestAck, with the time they asked.
    pending: BTreeMap<ConnId, Instant>,
    /// The owner epoch at which the owner acknowledged our interest; 0 = not yet.
    acked_epoch: u64,
    /// The last `(epoch, seq)` passed on.
    last: (u64, u64),
}

impl LocalTopic {
    fn count(&self) -> u64 {
        (self.subscribers.len() + self.pending.len()) as u64
    }
}

/// Edge counters that the core keeps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CoreCounters {
    /// Deliveries dropped because they were not newer than the last one of their topic.
    pub stale_deliveries: u64,
    /// Deliveries for topics without local subscribers.
    pub unwanted_deliveries: u64,
    /// Deliveries whose data was not UTF-8.
    pub bad_deliveries: u64,
}

/// The edge state machine.
#[derive(Debug)]
pub struct EdgeCore {
    id: u64,
    max_topics_per_conn: usize,
    subscribe_timeout: Duration,
    routing: RoutingTable,
    topics: HashMap<String, LocalTopic>,
    conns: HashMap<ConnId, BTreeSet<String>>,
    /// slot → how many local topics live there (the slots registered with the metastore).
    slot_topics: BTreeMap<Slot, usize>,
    /// Topics whose subscriber count changed since the last flush.
    dirty: BTreeSet<String>,
    links: BTreeSet<u64>,
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
            conns: HashMap::new(),
            slot_topics: BTreeMap::new(),
            dirty: BTreeSet::new(),
            links: BTreeSet::new(),
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

    /// Topics the connection is subscribed to (or waiting for).
    pub fn conn_topics(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, BTreeSet::len)
    }

    fn owner_link(&self, topic: &str) -> Option<(u64, u64)> {
        let route = self.routing.route(slot_of(topic));
        (route.distributor != 0 && self.links.contains(&route.distributor))
            .then_some((route.distributor, route.epoch))
    }

    fn send_interest(&mut self, topic: &str) {
        let Some((owner, epoch)) = self.owner_link(topic) else {
            return;
        };
        let subscribers = self.topics.get(topic).map_or(0, LocalTopic::count);
        self.outputs.push_back(Output::Relay {
            distributor: owner,
            frame: RelayFrame {
                frame: Some(Frame::Interest(Interest {
                    topic: topic.to_string(),
                    subscribers,
                    epoch,
                })),
            },
        });
    }

    /// A connection subscribes to `topics` (already validated and passed by the hooks).
    pub fn handle_subscribe(&mut self, now: Instant, conn: ConnId, topics: Vec<String>) {
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
            let slot = slot_of(&topic);
            let route = self.routing.route(slot);
            let is_new = !self.topics.contains_key(&topic);
            let entry = self.topics.entry(topic.clone()).or_default();
            if entry.acked_epoch != 0 && entry.acked_epoch == route.epoch {
                entry.subscribers.insert(conn);
                ready.push(topic.clone());
            } else {
                entry.pending.insert(conn, now);
            }
            if is_new {
                *self.slot_topics.entry(slot).or_default() += 1;
                self.send_interest(&topic);
            } else {
                self.dirty.insert(topic);
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

    /// A connection unsubscribes. Returns the topics it was subscribed to among `topics`.
    pub fn handle_unsubscribe(&mut self, conn: ConnId, topics: &[String]) -> Vec<String> {
        let mut removed = Vec::new();
        for topic in topics {
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
        removed
    }

    fn remove_subscriber(&mut self, conn: ConnId, topic: &str) {
        let Some(entry) = self.topics.get_mut(topic) else {
            return;
        };
        entry.subscribers.remove(&conn);
        entry.pending.remove(&conn);
        if entry.count() == 0 {
            self.topics.remove(topic);
            self.dirty.remove(topic);
            let slot = slot_of(topic);
            if let Some(n) = self.slot_topics.get_mut(&slot) {
                *n -= 1;
                if *n == 0 {
                    self.slot_topics.remove(&slot);
                }
            }
            // Tell the owner at once that we no longer need it.
            self.send_interest(topic);
        } else {
            self.dirty.insert(topic.to_string());
        }
    }

    /// A connection is gone. Returns every topic it was subscribed to (for the hooks).
    pub fn handle_disconnect(&mut self, conn: ConnId) -> Vec<String> {
        let topics: Vec<String> = self
            .conns
            .remove(&conn)
            .map(|t| t.into_iter().collect())
            .unwrap_or_default();
        for topic in &topics {
            self.remove_subscriber(conn, topic);
        }
        topics
    }

    /// A delivery from a distributor: the frame to send and who gets it, unless it is stale
    /// or nobody here wants it.
    pub fn handle_deliver(
        &mut self,
        topic: &str,
        epoch: u64,
        seq: u64,
        data: &[u8],
    ) -> Option<Fanout> {
        let Some(entry) = self.topics.get_mut(topic) else {
            self.counters.unwanted_deliveries += 1;
            return None;
        };
        if (epoch, seq) <= entry.last {
            self.counters.stale_deliveries += 1;
            return None;
        }
        let Ok(data) = std::str::from_utf8(data) else {
            self.counters.bad_deliveries += 1;
            return None;
        };
        entry.last = (epoch, seq);
        if entry.subscribers.is_empty() {
            return None;
        }
        Some(Fanout {
            frame: encode_delivery(topic, data, epoch, seq),
            conns: entry.subscribers.iter().copied().collect(),
        })
    }

    /// The owner acknowledged our interest in `topic` at `epoch`: waiting subscribers are
    /// now effective.
    pub fn handle_interest_ack(&mut self, distributor: u64, topic: &str, epoch: u64) {
        let route = self.routing.route(slot_of(topic));
        if route.distributor != distributor || route.epoch != epoch {
            return; // An ack from an owner that is no longer current.
        }
        let Some(entry) = self.topics.get_mut(topic) else {
            return;
        };
        entry.acked_epoch = epoch;
        let pending = std::mem::take(&mut entry.pending);
        for conn in pending.into_keys() {
            entry.subscribers.insert(conn);
            self.outputs.push_back(Output::Subscribed {
                conn,
                topics: vec![topic.to_string()],
            });
        }
    }

    /// Applies a metastore watch event: links follow the distributors, and the topics of
    /// every slot that changed owner are announced to the new owner.
    pub fn handle_watch(&mut self, event: pb::WatchEvent) {
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
        let mut topics: Vec<String> = self
            .topics
            .keys()
            .filter(|t| moved.contains(&slot_of(t)))
            .cloned()
            .collect();
        topics.sort();
        for topic in &topics {
            self.send_interest(topic);
        }
        for (owner, slots) in by_owner {
            self.push_synced(owner, slots);
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

    /// The relay link to `distributor` is up: announce every local topic it owns, then
    /// say that every slot it owns is synced.
    pub fn handle_link_up(&mut self, distributor: u64) {
        self.links.insert(distributor);
        let mut topics: Vec<String> = self
            .topics
            .keys()
            .filter(|t| self.routing.route(slot_of(t)).distributor == distributor)
            .cloned()
            .collect();
        topics.sort();
        for topic in &topics {
            self.send_interest(topic);
        }
        let slots: Vec<(Slot, u64)> = self
            .routing
            .slots_of(distributor)
            .map(|(s, r)| (s, r.epoch))
            .collect();
        self.push_synced(distributor, slots);
    }

    /// The relay link to `distributor` is down. Acked topics stay acked: the owner keeps
    /// sending to us through the metastore fallback until we re-announce.
    pub fn handle_link_down(&mut self, distributor: u64) {
        self.links.remove(&distributor);
    }

    /// Periodic work: send changed subscriber counts, and fail subscribes that waited
    /// longer than the subscribe timeout for their owner.
    pub fn handle_tick(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for topic in dirty {
            self.send_interest(&topic);
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
    }

    /// Where a client publish of `topic` goes: the owner, if its link is up.
    pub fn publish_route(&self, topic: &str) -> Option<u64> {
        self.owner_link(topic).map(|(owner, _)| owner)
    }
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
