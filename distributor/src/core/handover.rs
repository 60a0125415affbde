//! Slot handover, sans-IO: when a rebalance moves a slot from a distributor that is still a
//! member to this one, its topics' streams continue here (same stream epoch, next `seq`)
//! with their history, instead of starting over.
//!
//! ```text
//!  new owner                                   old owner
//!  handle_watch: slots from live member M ─► Command::Handover{from: M, epoch,
//!                                                 slots: (slot, its epoch under M)}
//!                                              handle_handover(now, to, epoch, slots)
//!                                                released: no more sequencing of those
//!                                                slots here; their topics' (epoch, seq,
//!                                                history) handed over
//!  handle_handover_answer(now, …) ◄───────────  HandoverAnswer
//!    installs the topics, sequences the released slots at once
//! ```
//!
//! Without an answer (the old owner unreachable or refusing a slot), the new owner waits for
//! the lease fence ([`super::LeaseFence`]) as before and starts a new stream.
//!
//! The old owner may see the move in its own view before the request comes: it keeps the
//! streams of slots it lost to a live member for [`DEPARTING_FOR`] lease TTLs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use firetower_proto::{slot_of, Slot};
use tokio::time::{Duration, Instant};

use super::{Command, Delivery, DistributorCore, ForwardKey, Kept, TopicState};
use firetower_proto::routing::RoutingChanges;

/// Slots asked for in one Handover call.
pub const HANDOVER_SLOTS: usize = 512;
/// History bytes in one answer: topics beyond it are handed over with their position only
/// (numbering continues; a position older than the handed-over history answers
/// `recovered: false`).
pub const HANDOVER_BYTES: usize = 16 << 20;
/// How many lease TTLs a lost slot's streams are kept for a late Handover.
pub const DEPARTING_FOR: u32 = 2;

/// One topic's stream as handed over.
#[derive(Debug, Clone)]
pub struct HandedTopic {
    pub topic: String,
    pub epoch: u64,
    pub seq: u64,
    /// Oldest first.
    pub history: Vec<HandedMessage>,
}

/// One kept delivery, with its route tag and how long ago it was sequenced.
#[derive(Debug, Clone)]
pub struct HandedMessage {
    pub delivery: Delivery,
    pub tag: u64,
    pub age_ms: u64,
}

/// A forwarded publish the old owner sequenced in a handed-over slot: a retry of it that
/// reaches the new owner gets this position back instead of a second one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandedForward {
    pub key: ForwardKey,
    pub slot: Slot,
    pub epoch: u64,
    pub seq: u64,
}

/// What the old owner answers.
#[derive(Debug, Clone, Default)]
pub struct HandoverAnswer {
    /// The slots it no longer sequences: the asker may start them now.
    pub released: Vec<Slot>,
    pub topics: Vec<HandedTopic>,
    /// The forward keys it remembers in those slots.
    pub forwards: Vec<HandedForward>,
}

/// A stream of a slot this node lost to a live member, kept for its Handover.
#[derive(Debug)]
struct Stream {
    topic: String,
    epoch: u64,
    seq: u64,
    history: VecDeque<Kept>,
}

/// The streams of one lost slot.
#[derive(Debug)]
pub(super) struct Departing {
    to: u64,
    epoch: u64,
    /// The slot's epoch under this node, which its streams number in.
    reign: u64,
    until: Instant,
    streams: Vec<Stream>,
    forwards: Vec<HandedForward>,
}

/// The old owner's side: slots it released before its view showed the move.
#[derive(Debug, Default)]
pub(super) struct Handovers {
    departing: HashMap<Slot, Departing>,
    /// slot → (new owner, epoch): refused here until the view reaches that epoch.
    released: HashMap<Slot, (u64, u64)>,
}

impl DistributorCore {
    /// Before a lost slot's topics are dropped (`handle_watch`): keeps the streams of the
    /// slots that went to a live member, for its Handover.
    pub(super) fn keep_departing(&mut self, now: Instant, changes: &RoutingChanges) {
        let Some(ttl) = self.fence.as_ref().map(|f| f.ttl) else {
            return;
        };
        let mut lost: BTreeMap<Slot, (u64, u64, u64)> = BTreeMap::new();
        for c in &changes.owners {
            if c.from == self.id
                && c.to != self.id
                && c.to != 0
                && self.routing.distributors().contains_key(&c.to)
            {
                lost.insert(c.slot, (c.to, c.epoch, c.from_epoch));
            }
        }
        if lost.is_empty() {
            return;
        }
        let until = now + ttl * DEPARTING_FOR;
        for (topic, state) in self.topics.iter_mut() {
            let slot = slot_of(topic);
            let Some(&(to, epoch, reign)) = lost.get(&slot) else {
                continue;
            };
            let Some(stream) = take_stream(topic, state, reign) else {
                continue;
            };
            self.handovers
                .departing
                .entry(slot)
                .or_insert_with(|| Departing {
                    to,
                    epoch,
                    reign,
                    until,
                    streams: Vec::new(),
                    forwards: Vec::new(),
                })
                .streams
                .push(stream);
        }
        let slots: BTreeSet<Slot> = lost.keys().copied().collect();
        for forward in self.forwards_in(&slots) {
            if let Some(d) = self.handovers.departing.get_mut(&forward.slot) {
                d.forwards.push(forward);
            }
        }
    }

    /// The forward keys remembered in `slots`.
    fn forwards_in(&self, slots: &BTreeSet<Slot>) -> Vec<HandedForward> {
        if slots.is_empty() {
            return Vec::new();
        }
        self.recent
            .iter()
            .filter(|(_, (slot, _, _))| slots.contains(slot))
            .map(|(key, &(slot, epoch, seq))| HandedForward {
                key: *key,
                slot,
                epoch,
                seq,
            })
            .collect()
    }

    /// The new owner's side, on a watch event: asks each live previous owner for the
    /// slots it lost here ([`Command::Handover`]).
    pub(super) fn want_handovers(&mut self, changes: &RoutingChanges) {
        if self.fence.is_none() {
            return;
        }
        let mut wanted: BTreeMap<(u64, u64), Vec<(Slot, u64)>> = BTreeMap::new();
        for c in &changes.owners {
            if c.to == self.id
                && c.from != 0
                && c.from != self.id
                && self.routing.distributors().contains_key(&c.from)
            {
                wanted
                    .entry((c.from, c.epoch))
                    .or_default()
                    .push((c.slot, c.from_epoch));
            }
        }
        for ((from, epoch), slots) in wanted {
            let Some(addr) = self.routing.distributor_addr(from, "grpc") else {
                continue;
            };
            let addr = addr.to_string();
            for chunk in slots.chunks(HANDOVER_SLOTS) {
                self.commands.push_back(Command::Handover {
                    from,
                    addr: addr.clone(),
                    epoch,
                    slots: chunk.to_vec(),
                });
            }
        }
    }

    /// Distributor `to` took `slots` at `epoch` and asks for their streams: every slot this
    /// node held at an older epoch, or lost to `to` at that epoch, is released (never
    /// sequenced here again under that reign) and its topics' streams are handed over.
    ///
    /// Each slot comes with its epoch under this node as the asker's view shows it (0:
    /// unknown). A view here that lags may still show an older reign of this node: the
    /// slot went elsewhere and came back meanwhile (sim seed 716205: 2@4, 3@84 with a new
    /// stream, 2@88, asked by 1@91 while this view still showed 2@4). Streams of that
    /// older reign are older than what the owners between have numbered, so the slot is
    /// released without them and the asker starts a newer stream.
    pub fn handle_handover(
        &mut self,
        now: Instant,
        to: u64,
        epoch: u64,
        slots: &[(Slot, u64)],
    ) -> HandoverAnswer {
        self.advance_clock(now);
        let mut answer = HandoverAnswer::default();
        let mut streams = Vec::new();
        let mut stale: BTreeMap<Slot, u64> = BTreeMap::new();
        for &(slot, from_epoch) in slots {
            if let Some(d) = self.handovers.departing.get(&slot) {
                if d.to == to && d.epoch == epoch && (from_epoch == 0 || d.reign == from_epoch) {
                    if let Some(d) = self.handovers.departing.remove(&slot) {
                        streams.extend(d.streams);
                        answer.forwards.extend(d.forwards);
                    }
                    answer.released.push(slot);
                    continue;
                }
            }
            let route = self.routing.route(slot);
            if route.distributor == self.id && route.epoch < epoch {
                // This view has not seen the move yet: stop here and now.
                self.handovers.released.insert(slot, (to, epoch));
                if from_epoch == 0 || from_epoch == route.epoch {
                    stale.insert(slot, route.epoch);
                } else {
                    tracing::debug!(
                        distributor = self.id,
                        slot,
                        reign = route.epoch,
                        from_epoch,
                        "released without its streams: the slot had other owners since"
                    );
                }
                answer.released.push(slot);
            }
        }
        if !stale.is_empty() {
            let slots: BTreeSet<Slot> = stale.keys().copied().collect();
            answer.forwards.extend(self.forwards_in(&slots));
            for (topic, state) in self.topics.iter_mut() {
                if let Some(&reign) = stale.get(&slot_of(topic)) {
                    streams.extend(take_stream(topic, state, reign));
                }
            }
        }
        let mut bytes = 0usize;
        for stream in streams {
            let mut history = Vec::new();
            let size: usize = stream.history.iter().map(|k| k.delivery.len()).sum();
            if bytes + size <= HANDOVER_BYTES {
                bytes += size;
                history = stream
                    .history
                    .into_iter()
                    .map(|k| HandedMessage {
                        age_ms: k
                            .at
                            .map_or(0, |at| now.saturating_duration_since(at).as_millis() as u64),
                        tag: k.tag,
                        delivery: k.delivery,
                    })
                    .collect();
            }
            answer.topics.push(HandedTopic {
                topic: stream.topic,
                epoch: stream.epoch,
                seq: stream.seq,
                history,
            });
        }
        answer.topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        answer
    }

    /// What the old owner `from` answered for `slots` taken at `epoch` (an error: nothing
    /// released; those slots wait for the lease fence). Topics of released slots this node
    /// still owns at `epoch`, and has not started a stream for, continue here.
    pub fn handle_handover_answer(
        &mut self,
        now: Instant,
        from: u64,
        epoch: u64,
        answer: Result<HandoverAnswer, String>,
    ) {
        self.advance_clock(now);
        let answer = match answer {
            Ok(a) => a,
            Err(reason) => {
                tracing::debug!(distributor = self.id, from, epoch, %reason, "handover failed");
                return;
            }
        };
        let mine = |core: &Self, slot: Slot| {
            let route = core.routing.route(slot);
            route.distributor == core.id && route.epoch == epoch
        };
        let released: Vec<Slot> = answer
            .released
            .iter()
            .copied()
            .filter(|s| mine(self, *s))
            .collect();
        for topic in answer.topics {
            let slot = slot_of(&topic.topic);
            if !released.contains(&slot) {
                continue;
            }
            let Ok(state) = self.topic_entry(&topic.topic) else {
                continue; // The table is full: the topic starts a new stream here.
            };
            if state.reign == epoch && state.seq > 0 {
                continue; // Already started here (the answer came after the fence's wait).
            }
            state.reign = epoch;
            state.epoch = topic.epoch;
            state.seq = topic.seq;
            state.history = topic
                .history
                .into_iter()
                .map(|m| Kept {
                    tag: m.tag,
                    at: now.checked_sub(Duration::from_millis(m.age_ms)),
                    delivery: m.delivery,
                })
                .collect();
            state.history_bytes = state.history.iter().map(|k| k.delivery.len()).sum();
        }
        for f in answer.forwards {
            if released.contains(&f.slot) {
                self.remember_forward(f.key, f.slot, f.epoch, f.seq);
            }
        }
        if let Some(fence) = self.fence.as_mut() {
            for slot in &released {
                fence.slot_ready.remove(slot);
            }
        }
        tracing::debug!(
            distributor = self.id,
            from,
            epoch,
            released = released.len(),
            "handover"
        );
        self.retry_waiting(now);
    }

    /// The new owner of `slot` when this node released it before its view showed the move.
    pub(super) fn released_to(&self, slot: Slot, route_epoch: u64) -> Option<u64> {
        if self.handovers.released.is_empty() {
            return None;
        }
        self.handovers
            .released
            .get(&slot)
            .filter(|(_, epoch)| route_epoch < *epoch)
            .map(|(to, _)| *to)
    }

    /// Forgets released slots the view has caught up with, and departing streams nobody
    /// asked for in time.
    pub(super) fn prune_handovers(&mut self, now: Instant) {
        let routing = &self.routing;
        self.handovers
            .released
            .retain(|slot, (_, epoch)| routing.route(*slot).epoch < *epoch);
        self.handovers.departing.retain(|_, d| d.until > now);
    }

    /// Whether a draining node is done (issue 16's graceful drain): its view shows it
    /// owning no slot, and every stream it kept for a new owner has been asked for (or
    /// has expired). The shell then stops serving.
    pub fn drained(&self) -> bool {
        self.routing.slots_of(self.id).next().is_none() && self.handovers.departing.is_empty()
    }
}

/// Takes a topic's stream (position and history) out of its state if the state numbers in
/// `reign`; the state keeps its interest and counters.
fn take_stream(topic: &str, state: &mut TopicState, reign: u64) -> Option<Stream> {
    if state.reign != reign || (state.seq == 0 && state.history.is_empty()) {
        return None;
    }
    let stream = Stream {
        topic: topic.to_string(),
        epoch: state.epoch,
        seq: state.seq,
        history: std::mem::take(&mut state.history),
    };
    state.history_bytes = 0;
    state.seq = 0;
    state.reign = 0;
    Some(stream)
}
