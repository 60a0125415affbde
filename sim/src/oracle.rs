//! What the clients were told, recorded as it happens, and the trace hash.
//!
//! Every event the driver sees (acks, deliveries, publish results, error frames, closes)
//! goes through here, in simulation order. The per-delivery invariants are checked as
//! deliveries arrive; the others at the end of each quiet phase (see [`crate::invariants`]).
//!
//! Every message's payload is made here ([`payload`]): it names its id, its publisher, the
//! publisher's own number for it and its topic, so a delivery can be traced back to what
//! was published, whatever the cluster did to its `(epoch, seq)` on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use xxhash_rust::xxh3::Xxh3;

use crate::invariants;

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    /// Simulated time when it was found.
    pub at: Duration,
}

/// Who published a message: the unit whose publish order is promised per topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Publisher {
    /// One of the driver's gRPC publishers (a backend with several calls in flight).
    Grpc(u32),
    /// WebSocket client `c`, over its one connection.
    Client(usize),
}

impl fmt::Display for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Publisher::Grpc(k) => write!(f, "g{k}"),
            Publisher::Client(c) => write!(f, "c{c}"),
        }
    }
}

/// What carried a message from its publisher: within one of these, messages of one topic
/// are sequenced in the order they were sent (a WebSocket connection, one `PublishBatch`
/// call); between two gRPC calls, only a reply that came before the next call was made
/// orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stream {
    /// A gRPC call, named by the id of its first message.
    Call(u64),
    /// Client `c`'s WebSocket connection.
    Conn(usize),
}

/// One simulated WebSocket client.
#[derive(Debug, Default)]
pub struct ClientRecord {
    pub edge: usize,
    pub connected: bool,
    pub closed_at: Option<Duration>,
    /// Closed by the edge for slowness (4001).
    pub slow: bool,
    /// Topic → when the `subscribed` ack arrived (present while subscribed).
    pub subscribed: BTreeMap<String, Duration>,
    /// Topic → when an unsubscribe was sent (until its ack).
    pub unsubscribing: BTreeMap<String, Duration>,
    /// Topic → the last `(epoch, seq)` seen.
    pub last: BTreeMap<String, (u64, u64)>,
    /// Message ids received.
    pub ids: BTreeSet<u64>,
    /// (publisher, topic) → the delivered message of that publisher and topic that was
    /// sent last (by [`PublishRecord::sent_mark`]): what per-publisher order compares a
    /// new delivery's acknowledgement against.
    pub latest_sent: BTreeMap<(Publisher, String), Latest>,
    /// (stream, topic) → the highest publisher number delivered from that stream.
    pub latest_in_stream: BTreeMap<(Stream, String), Latest>,
    /// Topic → the position this client subscribed from (`since`: a client replacing a
    /// closed one, or a subscribe its core asked for again after `unavailable`).
    pub asked_from: BTreeMap<String, (u64, u64)>,
    /// Topic → its recovery being checked (see [`invariants::recovery`]).
    pub seams: BTreeMap<String, invariants::recovery::Seam>,
}

/// A delivered message, as per-publisher order remembers it.
#[derive(Debug, Clone, Copy)]
pub struct Latest {
    pub id: u64,
    pub n: u64,
    pub sent: Duration,
    pub sent_mark: u64,
    /// gRPC: the distributor it was sent to (its address, hashed).
    pub via: Option<u64>,
    /// gRPC: the number of names its reply reported, once acknowledged.
    pub shards: Option<u32>,
}

/// One publish, over gRPC or from a WebSocket client.
#[derive(Debug, Clone)]
pub struct PublishRecord {
    pub id: u64,
    pub topic: String,
    pub publisher: Publisher,
    /// The publisher's own number for it: 1, 2, … per (publisher, topic), in send order.
    pub n: u64,
    pub stream: Stream,
    /// Exactly what was sent as the message's `data`.
    pub payload: String,
    pub sent: Duration,
    /// The oracle's logical clock when it was sent (orders events of the same instant).
    pub sent_mark: u64,
    /// gRPC: when the success reply came.
    pub acked: Option<Duration>,
    pub acked_mark: Option<u64>,
    /// gRPC: the distributor it was sent to (its address, hashed).
    pub via: Option<u64>,
    /// gRPC: the number of names its reply reported (0: the topic alone), once acknowledged.
    pub shards: Option<u32>,
    /// WebSocket: an error frame for its topic (or for no topic) came back on the
    /// publisher's connection after it was sent, so it may not have been published.
    pub refused: bool,
}

/// The record of a run.
pub struct Oracle {
    pub clients: Vec<ClientRecord>,
    pub publishes: Vec<PublishRecord>,
    /// Message id → its index in `publishes`.
    by_id: BTreeMap<u64, usize>,
    /// (publisher, topic) → the last number handed out.
    numbers: BTreeMap<(Publisher, String), u64>,
    /// A logical clock: one tick per publish sent or acknowledged.
    marks: u64,
    /// Topic → when the driver's watch saw its hot-topic route change (a few dozen a run).
    hot_changes: BTreeMap<String, Vec<Duration>>,
    /// When each subscribe frame was sent, and when each `subscribed` ack arrived (any
    /// client): what the progress check counts.
    pub subscribe_sent: Vec<Duration>,
    pub subscribe_acked: Vec<Duration>,
    pub violations: Vec<Violation>,
    /// (slot, epoch) → owner, over every slot map fetched.
    pub owners_seen: BTreeMap<(u32, u64), u64>,
    hash: Xxh3,
    pub events: u64,
    pub deliveries: u64,
}

impl Default for Oracle {
    fn default() -> Self {
        Oracle {
            clients: Vec::new(),
            publishes: Vec::new(),
            by_id: BTreeMap::new(),
            numbers: BTreeMap::new(),
            marks: 0,
            hot_changes: BTreeMap::new(),
            subscribe_sent: Vec::new(),
            subscribe_acked: Vec::new(),
            violations: Vec::new(),
            owners_seen: BTreeMap::new(),
            hash: Xxh3::new(),
            events: 0,
            deliveries: 0,
        }
    }
}

/// The `data` of message `id`: a JSON object naming the message, its publisher, the
/// publisher's number for it and its topic, padded with `pad` bytes of filler that depend
/// on the id (so two messages' payloads never match by accident).
pub fn payload(id: u64, publisher: Publisher, n: u64, topic: &str, pad: usize) -> String {
    let mut s = format!(r#"{{"id":{id},"p":"{publisher}","n":{n},"topic":"{topic}""#);
    if pad > 0 {
        const FILL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        s.push_str(r#","pad":""#);
        s.extend((0..pad).map(|i| FILL[(i + id as usize) % FILL.len()] as char));
        s.push('"');
    }
    s.push('}');
    s
}

impl Oracle {
    /// Adds an event to the trace hash.
    pub fn trace(&mut self, at: Duration, event: &str) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("{:>9.3}s {event}", at.as_secs_f64());
        }
        self.events += 1;
        self.hash.update(&(at.as_micros() as u64).to_le_bytes());
        self.hash.update(event.as_bytes());
        self.hash.update(b"\n");
    }

    pub fn trace_hash(&self) -> u64 {
        self.hash.digest()
    }

    pub fn violate(&mut self, at: Duration, invariant: &'static str, detail: String) {
        self.violations.push(Violation {
            invariant,
            detail,
            at,
        });
    }

    pub fn new_client(&mut self, edge: usize) -> usize {
        self.clients.push(ClientRecord {
            edge,
            connected: true,
            ..ClientRecord::default()
        });
        self.clients.len() - 1
    }

    fn mark(&mut self) -> u64 {
        self.marks += 1;
        self.marks
    }

    /// Records message `id` as sent now by `publisher` on `stream`, numbers it, and
    /// returns the payload to send.
    pub fn send(
        &mut self,
        at: Duration,
        id: u64,
        topic: &str,
        publisher: Publisher,
        stream: Stream,
        pad: usize,
    ) -> String {
        let n = self
            .numbers
            .entry((publisher, topic.to_string()))
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let n = *n;
        let payload = payload(id, publisher, n, topic, pad);
        let sent_mark = self.mark();
        self.by_id.insert(id, self.publishes.len());
        self.publishes.push(PublishRecord {
            id,
            topic: topic.to_string(),
            publisher,
            n,
            stream,
            payload: payload.clone(),
            sent: at,
            sent_mark,
            acked: None,
            acked_mark: None,
            via: None,
            shards: None,
            refused: false,
        });
        payload
    }

    /// Message `id` was sent over gRPC to the distributor at `addr`.
    pub fn sent_via(&mut self, id: u64, addr: &str) {
        if let Some(p) = self.by_id.get(&id).and_then(|&i| self.publishes.get_mut(i)) {
            p.via = Some(xxhash_rust::xxh3::xxh3_64(addr.as_bytes()));
        }
    }

    /// The driver's watch saw `topic`'s hot-topic route change at `at`.
    pub fn hot_changed(&mut self, at: Duration, topic: &str) {
        self.hot_changes
            .entry(topic.to_string())
            .or_default()
            .push(at);
    }

    /// A gRPC publish of message `id` succeeded.
    pub fn acked(&mut self, at: Duration, id: u64, shards: u32) {
        let mark = self.mark();
        if let Some(p) = self.by_id.get(&id).and_then(|&i| self.publishes.get_mut(i)) {
            p.acked = Some(at);
            p.acked_mark = Some(mark);
            p.shards = Some(shards);
        }
    }

    /// An error frame came to client `c` for `topic` (or for no topic): its publishes of
    /// that topic (of every topic) sent before now may have failed.
    pub fn refused(&mut self, c: usize, topic: Option<&str>) {
        for p in &mut self.publishes {
            if p.publisher == Publisher::Client(c) && topic.is_none_or(|t| t == p.topic) {
                p.refused = true;
            }
        }
    }

    pub fn publish(&self, id: u64) -> Option<&PublishRecord> {
        self.by_id.get(&id).and_then(|&i| self.publishes.get(i))
    }

    /// A delivery of `topic` with `data` reached client `c`: checks order, duplicates,
    /// subscription, that it is what was published, and per-publisher order.
    pub fn delivery(
        &mut self,
        at: Duration,
        c: usize,
        topic: &str,
        epoch: u64,
        seq: u64,
        data: &str,
    ) {
        self.deliveries += 1;
        let (id, as_published) = invariants::as_published::check(self, topic, data);
        self.trace(at, &format!("deliver c{c} {topic} {epoch}.{seq} #{id}"));
        let mut found = Vec::new();
        if let Err(detail) = as_published {
            found.push((
                invariants::as_published::NAME,
                format!("client {c} got on {topic} ({epoch}.{seq}): {detail}"),
            ));
        }
        let record = self.publish(id).cloned();
        let Some(client) = self.clients.get_mut(c) else {
            return;
        };
        if !client.subscribed.contains_key(topic) {
            found.push((
                invariants::subscribed::NAME,
                format!("client {c} got {topic} #{id} ({epoch}.{seq}) while not subscribed"),
            ));
        }
        if let Some(last) = client.last.get(topic) {
            if (epoch, seq) <= *last {
                found.push((
                    invariants::order::NAME,
                    format!(
                        "client {c} topic {topic}: {epoch}.{seq} after {}.{}",
                        last.0, last.1
                    ),
                ));
            }
        }
        if let Some(seam) = client.seams.get_mut(topic) {
            match invariants::recovery::check(seam, at, epoch, seq) {
                Ok(true) => {}
                Ok(false) => {
                    client.seams.remove(topic);
                }
                Err(detail) => {
                    client.seams.remove(topic);
                    found.push((
                        invariants::recovery::NAME,
                        format!("client {c} on {topic}: {detail}"),
                    ));
                }
            }
        }
        client.last.insert(topic.to_string(), (epoch, seq));
        if !client.ids.insert(id) {
            found.push((
                invariants::duplicates::NAME,
                format!("client {c} got message #{id} on {topic} twice"),
            ));
        }
        // Only a message that is what was published under its id can be placed in its
        // publisher's order (a mismatch is reported above).
        if let Some(record) = record.filter(|r| r.topic == topic) {
            let changes = self.hot_changes.get(topic).map_or(&[][..], Vec::as_slice);
            if let Err(detail) = invariants::publisher_order::check(client, &record, changes) {
                found.push((
                    invariants::publisher_order::NAME,
                    format!("client {c} on {topic}: {detail}"),
                ));
            }
        }
        for (name, detail) in found {
            self.violate(at, name, detail);
        }
    }
}
