//! What the dashboard knows, with no I/O: the metastore's state as its watch told it, and
//! what the last scrapes of the members said. Time comes in as an argument.
//!
//! ```text
//!  watch events ──apply()──────────►  Model  ──► Update "state" | "delta"   (to every viewer)
//!  a scrape round ──record_round()─►         ──► Update "metrics"
//!  a new viewer ───state()─────────►         ──► the whole state (then the updates after it)
//!  the scraper ────targets(), topics_to_count()
//! ```
//!
//! Every update is one JSON object; the shell sends each to every viewer as a
//! Server-Sent Event, in the order the model made them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use firetower_proto::metastore::v1 as pb;
use firetower_proto::SLOT_COUNT;
use serde_json::{json, Value};

use super::prom::{self, Headline};

/// The bounds of what the model keeps and shows.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Members scraped per round (the rest are listed, not scraped): a round's cost.
    pub max_targets: usize,
    /// Departed members remembered, newest first (shown for a while after they leave).
    pub max_departed: usize,
    /// Busiest topics shown.
    pub max_topics: usize,
    /// Topics whose subscriber counts are asked for per round (busiest and hot): each is
    /// one call to an edge, which asks the distributors.
    pub max_subscriber_lookups: usize,
    /// Families listed per node (the busiest first).
    pub max_families_shown: usize,
    /// Topic entries taken from one distributor's `/topics`.
    pub max_topics_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_targets: 256,
            max_departed: 16,
            max_topics: 20,
            max_subscriber_lookups: 10,
            max_families_shown: 40,
            max_topics_per_source: 10_000,
        }
    }
}

/// A member: its kind and id.
pub type MemberKey = (Role, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Distributor,
    Edge,
    Unknown,
}

impl Role {
    fn of(kind: i32) -> Role {
        match pb::MemberKind::try_from(kind) {
            Ok(pb::MemberKind::Distributor) => Role::Distributor,
            Ok(pb::MemberKind::Edge) => Role::Edge,
            _ => Role::Unknown,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Distributor => "distributor",
            Role::Edge => "edge",
            Role::Unknown => "unknown",
        }
    }
}

/// One update for the viewers: an event name and its JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub event: &'static str,
    pub data: Value,
}

/// A member's HTTP endpoints the scraper reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub key: MemberKey,
    /// Where `/metrics` is: the `metrics` address, or an edge's `ws` address.
    pub metrics: Option<String>,
    /// A distributor's `metrics` address, which also serves `/topics`.
    pub topics: Option<String>,
}

/// One topic as a distributor's `/topics` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicStat {
    pub topic: String,
    pub published: f64,
    pub rate: Option<f64>,
}

/// A metastore node as its ClusterStatus answered (or why it did not).
#[derive(Clone, Debug, PartialEq)]
pub struct MetaNode {
    pub addr: String,
    pub status: Result<MetaStatus, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetaStatus {
    pub id: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: u64,
    pub revision: u64,
    /// The members' leases, if this node leads (only the leader tracks them).
    pub leases: Vec<LeaseAge>,
}

/// A member's lease as the leader's ClusterStatus gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseAge {
    pub key: MemberKey,
    /// Since the last heartbeat the leader took.
    pub age_ms: u64,
    /// Before the leader expires it, with no heartbeat.
    pub remaining_ms: u64,
}

impl LeaseAge {
    pub fn from_proto(lease: &pb::LeaseState) -> LeaseAge {
        LeaseAge {
            key: (Role::of(lease.kind), lease.id),
            age_ms: lease.age_ms,
            remaining_ms: lease.remaining_ms,
        }
    }
}

/// What one scrape round brought back.
#[derive(Debug, Default)]
pub struct Round {
    /// Each target's `/metrics` text, or why there is none.
    pub metrics: Vec<(MemberKey, Result<String, String>)>,
    /// Each distributor's `/topics`, or why there is none.
    pub topics: Vec<(MemberKey, Result<Vec<TopicStat>, String>)>,
    /// Subscriber counts of the topics [`Model::topics_to_count`] named (None: no answer).
    pub subscribers: Vec<(String, Option<u64>)>,
    pub metastore: Vec<MetaNode>,
}

struct MemberView {
    member: pb::Member,
    /// When the dashboard saw it register; `None` for one that was there at the start.
    registered_at: Option<Instant>,
}

struct Departed {
    key: MemberKey,
    at: Instant,
}

/// What the scrapes of one member said.
#[derive(Default)]
struct NodeStats {
    /// The previous scrape's families and when it was taken, for rates.
    previous: Option<(Instant, BTreeMap<String, prom::Family>)>,
    /// The families of the last scrape with their rates (per second) since the one before.
    families: Vec<(String, prom::Family, Option<f64>)>,
    last_ok: Option<Instant>,
    error: Option<String>,
    bad_lines: usize,
    truncated: bool,
}

pub struct Model {
    limits: Limits,
    /// Whether a snapshot has arrived.
    synced: bool,
    revision: u64,
    /// The owner of each slot (0: unowned).
    owners: Vec<u64>,
    members: BTreeMap<MemberKey, MemberView>,
    departed: VecDeque<Departed>,
    hot: BTreeMap<String, pb::HotTopic>,
    nodes: BTreeMap<MemberKey, NodeStats>,
    /// Each distributor's published count per topic at its previous scrape, for rates
    /// when it reports none.
    published_before: HashMap<(MemberKey, String), (Instant, f64)>,
    /// The busiest topics of the last round; `None` when no distributor serves `/topics`.
    topics: Option<Vec<TopicStat>>,
    topic_sources: (usize, usize),
    subscribers: BTreeMap<String, Option<u64>>,
    metastore: Vec<MetaNode>,
    /// The last `metrics` update, for a new viewer.
    last_metrics: Value,
}

impl Model {
    pub fn new(limits: Limits) -> Model {
        Model {
            limits,
            synced: false,
            revision: 0,
            owners: vec![0; SLOT_COUNT],
            members: BTreeMap::new(),
            departed: VecDeque::new(),
            hot: BTreeMap::new(),
            nodes: BTreeMap::new(),
            published_before: HashMap::new(),
            topics: None,
            topic_sources: (0, 0),
            subscribers: BTreeMap::new(),
            metastore: Vec::new(),
            last_metrics: Value::Null,
        }
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Takes one watch event; returns what the viewers need to hear of it, if anything.
    pub fn apply(&mut self, now: Instant, event: pb::WatchEvent) -> Option<Update> {
        match event.event? {
            pb::watch_event::Event::Snapshot(map) => {
                self.snapshot(now, map);
                Some(Update {
                    event: "state",
                    data: self.state(now),
                })
            }
            pb::watch_event::Event::Delta(delta) => self.delta(now, delta),
        }
    }

    fn snapshot(&mut self, now: Instant, map: pb::SlotMap) {
        let first = !self.synced;
        self.synced = true;
        self.revision = map.revision;
        self.owners = map.slot_owner;
        self.owners.resize(SLOT_COUNT, 0);
        let mut members = BTreeMap::new();
        for member in map.members {
            let key = (Role::of(member.kind), member.id);
            // Kept across a resync when it is the same registration; new ones registered
            // while the watch was down, at an unknown time (`now` is the nearest guess).
            let registered_at = match self.members.get(&key) {
                Some(old) if old.member.incarnation == member.incarnation => old.registered_at,
                _ if first => None,
                _ => Some(now),
            };
            members.insert(
                key,
                MemberView {
                    member,
                    registered_at,
                },
            );
        }
        let gone: Vec<MemberKey> = self
            .members
            .keys()
            .filter(|k| !members.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            self.depart(now, key);
        }
        self.members = members;
        self.hot = map
            .hot_topics
            .into_iter()
            .map(|h| (h.topic.clone(), h))
            .collect();
    }

    fn delta(&mut self, now: Instant, delta: pb::Delta) -> Option<Update> {
        if !self.synced || delta.revision <= self.revision {
            return None;
        }
        self.revision = delta.revision;
        let mut moves = Vec::new();
        let (mut members_changed, mut hot_changed) = (false, false);
        for change in delta.changes.into_iter().filter_map(|c| c.change) {
            use pb::change::Change;
            match change {
                Change::SlotOwner(c) => {
                    let slot = c.slot as usize;
                    if slot < SLOT_COUNT && self.owners[slot] != c.distributor_id {
                        self.owners[slot] = c.distributor_id;
                        moves.push(json!([slot, c.distributor_id]));
                    }
                }
                Change::MemberUp(member) => {
                    let key = (Role::of(member.kind), member.id);
                    self.departed.retain(|d| d.key != key);
                    self.members.insert(
                        key,
                        MemberView {
                            member,
                            registered_at: Some(now),
                        },
                    );
                    members_changed = true;
                }
                Change::MemberDown(r) => {
                    let key = (Role::of(r.kind), r.id);
                    if self.members.remove(&key).is_some() {
                        self.depart(now, key);
                        members_changed = true;
                    }
                }
                Change::HotTopicSet(h) => {
                    self.hot.insert(h.topic.clone(), h);
                    hot_changed = true;
                }
                // Interest is not drawn.
                Change::SlotEdge(_) => {}
            }
        }
        if moves.is_empty() && !members_changed && !hot_changed {
            return None;
        }
        let mut data = json!({ "revision": self.revision });
        if !moves.is_empty() {
            data["moves"] = Value::Array(moves);
        }
        if members_changed {
            data["members"] = self.members_json(now);
            data["departed"] = self.departed_json(now);
        }
        if hot_changed {
            data["hot"] = self.hot_json();
        }
        Some(Update {
            event: "delta",
            data,
        })
    }

    fn depart(&mut self, now: Instant, key: MemberKey) {
        self.nodes.remove(&key);
        self.published_before.retain(|(k, _), _| *k != key);
        self.departed.retain(|d| d.key != key);
        self.departed.push_front(Departed { key, at: now });
        self.departed.truncate(self.limits.max_departed);
    }

    /// Everything, for a new viewer (the updates after it follow on).
    pub fn state(&self, now: Instant) -> Value {
        json!({
            "synced": self.synced,
            "revision": self.revision,
            "slots": self.slots_json(),
            "members": self.members_json(now),
            "departed": self.departed_json(now),
            "hot": self.hot_json(),
            "metrics": self.last_metrics,
        })
    }

    /// The slot owners run-length encoded: `[[owner, count], …]` in slot order.
    fn slots_json(&self) -> Value {
        let mut runs: Vec<(u64, usize)> = Vec::new();
        for &owner in &self.owners {
            match runs.last_mut() {
                Some((o, n)) if *o == owner => *n += 1,
                _ => runs.push((owner, 1)),
            }
        }
        Value::Array(runs.into_iter().map(|(o, n)| json!([o, n])).collect())
    }

    fn members_json(&self, now: Instant) -> Value {
        Value::Array(
            self.members
                .iter()
                .map(|(key, view)| {
                    let m = &view.member;
                    json!({
                        "kind": key.0.name(),
                        "id": key.1,
                        "addrs": m.addrs,
                        "lease_ttl_ms": m.lease_ttl_ms,
                        "incarnation": m.incarnation,
                        "registered_ms_ago": view.registered_at.map(|t| millis(now, t)),
                        "slots": (key.0 == Role::Distributor)
                            .then(|| self.owners.iter().filter(|&&o| o == key.1).count()),
                    })
                })
                .collect(),
        )
    }

    fn departed_json(&self, now: Instant) -> Value {
        Value::Array(
            self.departed
                .iter()
                .map(
                    |d| json!({"kind": d.key.0.name(), "id": d.key.1, "ms_ago": millis(now, d.at)}),
                )
                .collect(),
        )
    }

    fn hot_json(&self) -> Value {
        Value::Array(
            self.hot
                .values()
                .map(|h| {
                    json!({
                        "topic": h.topic,
                        "shards": h.shards,
                        "prev_shards": h.prev_shards,
                        "since": h.since,
                        "committed": h.committed,
                        "revision": h.revision,
                    })
                })
                .collect(),
        )
    }

    /// What the next round scrapes: at most `max_targets` members.
    pub fn targets(&self) -> Vec<Target> {
        self.members
            .iter()
            .take(self.limits.max_targets)
            .map(|(key, view)| {
                let addrs = &view.member.addrs;
                let metrics = addrs.get("metrics").cloned();
                Target {
                    key: *key,
                    topics: (key.0 == Role::Distributor)
                        .then(|| metrics.clone())
                        .flatten(),
                    metrics: metrics.or_else(|| {
                        (key.0 == Role::Edge)
                            .then(|| addrs.get("ws").cloned())
                            .flatten()
                    }),
                }
            })
            .collect()
    }

    /// The edges' HTTP addresses, to ask for subscriber counts.
    pub fn edge_addrs(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(key, _)| key.0 == Role::Edge)
            .filter_map(|(_, view)| view.member.addrs.get("ws").cloned())
            .collect()
    }

    /// The topics whose subscriber counts the next round asks for: the hot ones (still
    /// split or changing), then the busiest, at most `max_subscriber_lookups`.
    pub fn topics_to_count(&self) -> Vec<String> {
        let hot = self
            .hot
            .values()
            .filter(|h| h.shards > 0 || !h.committed)
            .map(|h| h.topic.clone());
        let busy = self
            .topics
            .iter()
            .flatten()
            .map(|t| base_topic(&t.topic).to_string());
        let mut out: Vec<String> = Vec::new();
        for topic in hot.chain(busy) {
            if out.len() >= self.limits.max_subscriber_lookups {
                break;
            }
            if !out.contains(&topic) {
                out.push(topic);
            }
        }
        out
    }

    /// Takes a scrape round's results; returns the `metrics` update.
    pub fn record_round(&mut self, now: Instant, round: Round) -> Update {
        for (key, result) in round.metrics {
            if !self.members.contains_key(&key) {
                continue;
            }
            let stats = self.nodes.entry(key).or_default();
            match result {
                Ok(text) => stats.record(now, &text),
                Err(e) => stats.error = Some(e),
            }
        }
        self.record_topics(now, round.topics);
        self.subscribers = round.subscribers.into_iter().collect();
        self.metastore = round.metastore;
        self.last_metrics = self.metrics_json(now);
        Update {
            event: "metrics",
            data: self.last_metrics.clone(),
        }
    }

    fn record_topics(
        &mut self,
        now: Instant,
        lists: Vec<(MemberKey, Result<Vec<TopicStat>, String>)>,
    ) {
        let sources = lists.len();
        let mut answered = 0;
        let mut merged: BTreeMap<String, TopicStat> = BTreeMap::new();
        let mut seen = HashMap::new();
        for (key, list) in lists {
            let Ok(list) = list else { continue };
            answered += 1;
            for stat in list.into_iter().take(self.limits.max_topics_per_source) {
                let before = self
                    .published_before
                    .get(&(key, stat.topic.clone()))
                    .copied();
                let rate = stat.rate.or_else(|| {
                    let (at, published) = before?;
                    let secs = now.checked_duration_since(at)?.as_secs_f64();
                    (secs > 0.05 && stat.published >= published)
                        .then(|| (stat.published - published) / secs)
                });
                seen.insert((key, stat.topic.clone()), (now, stat.published));
                let entry = merged.entry(stat.topic.clone()).or_insert(TopicStat {
                    topic: stat.topic,
                    published: 0.0,
                    rate: None,
                });
                entry.published += stat.published;
                entry.rate = match (entry.rate, rate) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
            }
        }
        // Only what this round saw is kept: the map stays as large as the lists.
        self.published_before = seen;
        self.topic_sources = (sources, answered);
        if answered == 0 {
            self.topics = None;
            return;
        }
        let mut rows: Vec<TopicStat> = merged.into_values().collect();
        rows.sort_by(|a, b| {
            b.rate
                .unwrap_or(0.0)
                .total_cmp(&a.rate.unwrap_or(0.0))
                .then(b.published.total_cmp(&a.published))
                .then(a.topic.cmp(&b.topic))
        });
        rows.truncate(self.limits.max_topics);
        self.topics = Some(rows);
    }

    fn metrics_json(&self, now: Instant) -> Value {
        let targets = self.targets();
        let nodes: Vec<Value> = self
            .members
            .iter()
            .map(|(key, view)| {
                let target = targets.iter().find(|t| t.key == *key);
                let addr = match target {
                    Some(t) => t.metrics.clone(),
                    None => view.member.addrs.get("metrics").cloned(),
                };
                let mut node = json!({
                    "kind": key.0.name(),
                    "id": key.1,
                    "addr": addr,
                    "incarnation": view.member.incarnation,
                });
                match self.nodes.get(key) {
                    Some(stats) => stats.fill(now, &mut node, &self.limits),
                    None if addr.is_none() => node["error"] = json!("no metrics address"),
                    None if target.is_none() => node["error"] = json!("not scraped (limit)"),
                    None => node["error"] = json!("not scraped yet"),
                }
                node
            })
            .collect();
        let topics = self.topics.as_ref().map(|rows| {
            rows.iter()
                .map(|t| {
                    json!({
                        "topic": t.topic,
                        "published": t.published,
                        "rate": t.rate,
                        "subscribers": self.subscribers.get(base_topic(&t.topic)).copied().flatten(),
                    })
                })
                .collect::<Vec<_>>()
        });
        let metastore: Vec<Value> = self
            .metastore
            .iter()
            .map(|n| match &n.status {
                Ok(s) => json!({
                    "addr": n.addr, "reachable": true, "id": s.id, "state": s.state,
                    "leader": s.leader, "term": s.term, "last_applied": s.last_applied,
                    "revision": s.revision,
                }),
                Err(e) => json!({"addr": n.addr, "reachable": false, "error": e}),
            })
            .collect();
        // The leases as the leader tracks them (its followers know none).
        let leases: Vec<Value> = self
            .metastore
            .iter()
            .filter_map(|n| n.status.as_ref().ok())
            .find(|s| !s.leases.is_empty())
            .map(|s| {
                s.leases
                    .iter()
                    .map(|l| {
                        json!({
                            "kind": l.key.0.name(), "id": l.key.1,
                            "age_ms": l.age_ms, "remaining_ms": l.remaining_ms,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "revision": self.revision,
            "nodes": nodes,
            "topics": topics,
            "topic_sources": {"distributors": self.topic_sources.0, "answered": self.topic_sources.1},
            "subscribers": self.subscribers,
            "metastore": metastore,
            "leases": leases,
        })
    }
}

impl NodeStats {
    fn record(&mut self, now: Instant, text: &str) {
        let scrape = prom::parse(text, MAX_SAMPLES, MAX_FAMILIES);
        let before = self.previous.take();
        self.families = scrape
            .families
            .iter()
            .map(|(name, family)| {
                let rate = before.as_ref().and_then(|(at, old)| {
                    let secs = now.checked_duration_since(*at)?.as_secs_f64();
                    let old = old.get(name)?;
                    // A counter that went down was reset (the node restarted): no rate
                    // this round.
                    (family.kind.has_rate() && secs > 0.05 && family.value >= old.value)
                        .then(|| (family.value - old.value) / secs)
                });
                (name.clone(), *family, rate)
            })
            .collect();
        self.previous = Some((now, scrape.families));
        self.last_ok = Some(now);
        self.error = None;
        self.bad_lines = scrape.bad_lines;
        self.truncated = scrape.truncated;
    }

    fn fill(&self, now: Instant, node: &mut Value, limits: &Limits) {
        node["error"] = json!(self.error);
        node["last_ok_ms_ago"] = json!(self.last_ok.map(|t| millis(now, t)));
        node["bad_lines"] = json!(self.bad_lines);
        node["truncated"] = json!(self.truncated);
        let mut headline = serde_json::Map::new();
        for h in Headline::ALL {
            let matching = self
                .families
                .iter()
                .filter(|(n, f, _)| h.matches(n, f.kind));
            let pick = if h == Headline::Connections {
                // A level: the open connections, summed over the families that hold it.
                let (names, total) =
                    matching.fold((Vec::new(), 0.0), |(mut names, sum), (n, f, _)| {
                        names.push(n.as_str());
                        (names, sum + f.value)
                    });
                (!names.is_empty()).then(|| json!({"family": names.join(" + "), "value": total}))
            } else {
                // Several families may count the same messages (received and sent on):
                // the largest stands for them, not their sum.
                matching
                    .max_by(|a, b| a.2.unwrap_or(-1.0).total_cmp(&b.2.unwrap_or(-1.0)))
                    .map(|(n, f, r)| json!({"family": n, "value": f.value, "rate": r}))
            };
            headline.insert(h.name().to_string(), pick.unwrap_or(Value::Null));
        }
        node["headline"] = Value::Object(headline);
        let mut families: Vec<&(String, prom::Family, Option<f64>)> =
            self.families.iter().collect();
        families.sort_by(|a, b| {
            b.2.unwrap_or(-1.0)
                .total_cmp(&a.2.unwrap_or(-1.0))
                .then(a.0.cmp(&b.0))
        });
        node["families"] = Value::Array(
            families
                .into_iter()
                .take(limits.max_families_shown)
                .map(|(n, f, r)| json!({"name": n, "kind": f.kind.name(), "value": f.value, "rate": r}))
                .collect(),
        );
        node["families_total"] = json!(self.families.len());
    }
}

/// `T` for a sub-topic `T#k`, else the topic itself.
fn base_topic(topic: &str) -> &str {
    match topic.rsplit_once('#') {
        Some((base, k)) if !base.is_empty() && k.parse::<u32>().is_ok() => base,
        _ => topic,
    }
}

fn millis(now: Instant, then: Instant) -> u64 {
    now.saturating_duration_since(then).as_millis() as u64
}

/// Samples read from one scrape: far above what a node exposes (the edge has about 30),
/// low enough that a runaway label set costs little.
const MAX_SAMPLES: usize = 20_000;
/// Families kept from one scrape (what is shown is cut to `max_families_shown`).
const MAX_FAMILIES: usize = 2_000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn member(
        kind: pb::MemberKind,
        id: u64,
        addrs: &[(&str, &str)],
        incarnation: u64,
    ) -> pb::Member {
        pb::Member {
            kind: kind as i32,
            id,
            addrs: addrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            lease_ttl_ms: 3000,
            incarnation,
        }
    }

    fn snapshot(revision: u64, owners: Vec<u64>, members: Vec<pb::Member>) -> pb::WatchEvent {
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(pb::SlotMap {
                revision,
                members,
                slot_owner: owners,
                slot_epoch: vec![],
                slot_edges: vec![],
                hot_topics: vec![],
            })),
        }
    }

    fn delta(revision: u64, changes: Vec<pb::change::Change>) -> pb::WatchEvent {
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Delta(pb::Delta {
                revision,
                changes: changes
                    .into_iter()
                    .map(|c| pb::Change { change: Some(c) })
                    .collect(),
            })),
        }
    }

    fn two_owner_map() -> Vec<u64> {
        (0..SLOT_COUNT)
            .map(|s| if s < SLOT_COUNT / 2 { 1 } else { 2 })
            .collect()
    }

    fn model_with_cluster(now: Instant) -> Model {
        let mut m = Model::new(Limits::default());
        let members = vec![
            member(
                pb::MemberKind::Distributor,
                1,
                &[("grpc", "a:1"), ("metrics", "a:9")],
                5,
            ),
            member(pb::MemberKind::Distributor, 2, &[("grpc", "b:1")], 6),
            member(pb::MemberKind::Edge, 1, &[("ws", "e:1")], 7),
        ];
        let update = m
            .apply(now, snapshot(10, two_owner_map(), members))
            .unwrap();
        assert_eq!(update.event, "state");
        m
    }

    #[test]
    fn a_snapshot_is_the_whole_state_run_length_encoded() {
        let now = tokio::time::Instant::now().into_std();
        let m = model_with_cluster(now);
        let state = m.state(now);
        assert_eq!(state["revision"], 10);
        assert_eq!(state["slots"], json!([[1, 8192], [2, 8192]]));
        assert_eq!(state["members"].as_array().unwrap().len(), 3);
        assert_eq!(state["members"][0]["slots"], 8192);
        assert_eq!(state["members"][0]["registered_ms_ago"], Value::Null);
    }

    #[test]
    fn a_delta_reports_moves_members_and_hot_topics_once() {
        let now = tokio::time::Instant::now().into_std();
        let mut m = model_with_cluster(now);
        use pb::change::Change;
        // Old or interest-only deltas say nothing.
        assert_eq!(
            m.apply(
                now,
                delta(
                    9,
                    vec![Change::SlotOwner(pb::SlotOwnerChange {
                        slot: 0,
                        distributor_id: 2,
                        epoch: 3
                    })]
                )
            ),
            None
        );
        assert_eq!(
            m.apply(
                now,
                delta(
                    11,
                    vec![Change::SlotEdge(pb::SlotEdgeChange {
                        slot: 0,
                        edge_id: 1,
                        present: true
                    })]
                )
            ),
            None
        );
        let later = now + Duration::from_secs(1);
        let update = m
            .apply(
                later,
                delta(
                    12,
                    vec![
                        Change::SlotOwner(pb::SlotOwnerChange {
                            slot: 3,
                            distributor_id: 2,
                            epoch: 2,
                        }),
                        Change::SlotOwner(pb::SlotOwnerChange {
                            slot: 99_999,
                            distributor_id: 2,
                            epoch: 2,
                        }),
                        Change::MemberDown(pb::MemberRef {
                            kind: pb::MemberKind::Edge as i32,
                            id: 1,
                        }),
                        Change::HotTopicSet(pb::HotTopic {
                            topic: "live".into(),
                            shards: 4,
                            prev_shards: 0,
                            since: 12,
                            committed: false,
                            revision: 12,
                        }),
                    ],
                ),
            )
            .unwrap();
        assert_eq!(update.event, "delta");
        assert_eq!(update.data["moves"], json!([[3, 2]]));
        assert_eq!(update.data["members"].as_array().unwrap().len(), 2);
        assert_eq!(
            update.data["departed"],
            json!([{"kind": "edge", "id": 1, "ms_ago": 0}])
        );
        assert_eq!(update.data["hot"][0]["shards"], 4);
        assert_eq!(m.topics_to_count(), vec!["live".to_string()]);
        // A member that comes back is registered from then, and no longer departed.
        let update = m
            .apply(
                later,
                delta(
                    13,
                    vec![Change::MemberUp(member(
                        pb::MemberKind::Edge,
                        1,
                        &[("ws", "e:1")],
                        13,
                    ))],
                ),
            )
            .unwrap();
        assert_eq!(update.data["departed"], json!([]));
        assert_eq!(update.data["members"][2]["registered_ms_ago"], 0);
    }

    #[test]
    fn targets_take_metrics_then_an_edges_ws_address() {
        let m = model_with_cluster(tokio::time::Instant::now().into_std());
        let targets = m.targets();
        assert_eq!(targets[0].metrics.as_deref(), Some("a:9"));
        assert_eq!(targets[0].topics.as_deref(), Some("a:9"));
        assert_eq!(targets[1].metrics, None);
        assert_eq!(targets[2].metrics.as_deref(), Some("e:1"));
        assert_eq!(targets[2].topics, None);
        assert_eq!(m.edge_addrs(), vec!["e:1".to_string()]);
    }

    #[test]
    fn rates_come_from_counter_deltas_and_topics_merge() {
        let t0 = tokio::time::Instant::now().into_std();
        let mut m = model_with_cluster(t0);
        let d1 = (Role::Distributor, 1);
        let e1 = (Role::Edge, 1);
        let round = |edge_frames: u64, published: f64| {
            Round {
            metrics: vec![(e1, Ok(format!("firetower_edge_frames_queued{{edge=\"1\"}} {edge_frames}\nfiretower_edge_connections_open 4\n")))],
            topics: vec![
                (d1, Ok(vec![TopicStat { topic: "a#1".into(), published, rate: None }, TopicStat { topic: "b".into(), published: 1.0, rate: Some(0.5) }])),
            ],
            subscribers: vec![("a".into(), Some(3))],
            metastore: vec![],
        }
        };
        let first = m.record_round(t0, round(100, 10.0));
        assert_eq!(
            first.data["nodes"][2]["headline"]["deliveries"]["rate"],
            Value::Null
        );
        assert_eq!(first.data["nodes"][1]["error"], "no metrics address");
        let second = m.record_round(t0 + Duration::from_secs(2), round(300, 50.0));
        let edge = &second.data["nodes"][2];
        assert_eq!(edge["headline"]["deliveries"]["rate"], 100.0);
        assert_eq!(edge["headline"]["connections"]["value"], 4.0);
        assert_eq!(edge["headline"]["publishes"], Value::Null);
        let topics = &second.data["topics"];
        assert_eq!(topics[0]["topic"], "a#1");
        assert_eq!(topics[0]["rate"], 20.0);
        assert_eq!(topics[0]["subscribers"], 3);
        assert_eq!(topics[1]["rate"], 0.5);
        // A counter that went down (a restart) gives no rate that round.
        let third = m.record_round(t0 + Duration::from_secs(4), round(5, 50.0));
        assert_eq!(
            third.data["nodes"][2]["headline"]["deliveries"]["rate"],
            Value::Null
        );
        // No distributor answering /topics is "no data", not an empty list.
        let mut empty = round(5, 50.0);
        empty.topics = vec![(d1, Err("connect: refused".into()))];
        assert_eq!(
            m.record_round(t0 + Duration::from_secs(6), empty).data["topics"],
            Value::Null
        );
    }

    #[test]
    fn a_resync_keeps_registrations_and_notes_who_left() {
        let now = tokio::time::Instant::now().into_std();
        let mut m = model_with_cluster(now);
        let later = now + Duration::from_secs(5);
        let members = vec![
            member(pb::MemberKind::Distributor, 1, &[("grpc", "a:1")], 5),
            member(pb::MemberKind::Edge, 2, &[("ws", "e:2")], 20),
        ];
        m.apply(later, snapshot(30, two_owner_map(), members))
            .unwrap();
        let state = m.state(later);
        assert_eq!(state["members"][0]["registered_ms_ago"], Value::Null);
        assert_eq!(state["members"][1]["registered_ms_ago"], 0);
        let departed: Vec<u64> = state["departed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_u64().unwrap())
            .collect();
        assert_eq!(departed.len(), 2);
    }

    #[test]
    fn sub_topics_count_as_their_base() {
        assert_eq!(base_topic("live#3"), "live");
        assert_eq!(base_topic("live"), "live");
        assert_eq!(base_topic("#3"), "#3");
        assert_eq!(base_topic("a#b"), "a#b");
    }

    #[test]
    fn the_leases_shown_are_the_leaders() {
        let t0 = tokio::time::Instant::now().into_std();
        let mut m = model_with_cluster(t0);
        let status = |id: u64, state: &str, leases: Vec<LeaseAge>| MetaNode {
            addr: format!("m:{id}"),
            status: Ok(MetaStatus {
                id,
                state: state.into(),
                leader: Some(2),
                term: 4,
                last_applied: 9,
                revision: 9,
                leases,
            }),
        };
        let lease = LeaseAge::from_proto(&pb::LeaseState {
            kind: pb::MemberKind::Edge.into(),
            id: 1,
            age_ms: 420,
            remaining_ms: 2580,
        });
        let update = m.record_round(
            t0,
            Round {
                metastore: vec![
                    status(1, "Follower", vec![]),
                    MetaNode {
                        addr: "m:3".into(),
                        status: Err("no answer within 2000 ms".into()),
                    },
                    status(2, "Leader", vec![lease]),
                ],
                ..Round::default()
            },
        );
        assert_eq!(
            update.data["leases"],
            json!([{"kind": "edge", "id": 1, "age_ms": 420, "remaining_ms": 2580}])
        );
        // No leader answered: no leases, not stale ones.
        let update = m.record_round(
            t0,
            Round {
                metastore: vec![status(1, "Follower", vec![])],
                ..Round::default()
            },
        );
        assert_eq!(update.data["leases"], json!([]));
    }
}
