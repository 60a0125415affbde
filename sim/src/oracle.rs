//! What the clients were told, recorded as it happens, and the trace hash.
//!
//! Every event the driver sees (acks, deliveries, publish results, closes) goes through
//! here, in simulation order. The per-delivery invariants are checked as deliveries arrive;
//! the others at the end of each quiet phase (see [`crate::invariants`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use xxhash_rust::xxh3::Xxh3;

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    /// Simulated time when it was found.
    pub at: Duration,
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
}

/// One gRPC publish.
#[derive(Debug, Clone)]
pub struct PublishRecord {
    pub id: u64,
    pub topic: String,
    pub sent: Duration,
    pub acked: Option<Duration>,
}

/// The record of a run.
pub struct Oracle {
    pub clients: Vec<ClientRecord>,
    pub publishes: Vec<PublishRecord>,
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
            violations: Vec::new(),
            owners_seen: BTreeMap::new(),
            hash: Xxh3::new(),
            events: 0,
            deliveries: 0,
        }
    }
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

    /// A delivery reached client `c`: checks order, duplicates and subscription.
    pub fn delivery(&mut self, at: Duration, c: usize, topic: &str, epoch: u64, seq: u64, id: u64) {
        self.deliveries += 1;
        self.trace(at, &format!("deliver c{c} {topic} {epoch}.{seq} #{id}"));
        let mut found = Vec::new();
        let Some(client) = self.clients.get_mut(c) else {
            return;
        };
        if !client.subscribed.contains_key(topic) {
            found.push((
                crate::invariants::subscribed::NAME,
                format!("client {c} got {topic} #{id} ({epoch}.{seq}) while not subscribed"),
            ));
        }
        if let Some(last) = client.last.get(topic) {
            if (epoch, seq) <= *last {
                found.push((
                    crate::invariants::order::NAME,
                    format!(
                        "client {c} topic {topic}: {epoch}.{seq} after {}.{}",
                        last.0, last.1
                    ),
                ));
            }
        }
        client.last.insert(topic.to_string(), (epoch, seq));
        if !client.ids.insert(id) {
            found.push((
                crate::invariants::duplicates::NAME,
                format!("client {c} got message #{id} on {topic} twice"),
            ));
        }
        for (name, detail) in found {
            self.violate(at, name, detail);
        }
    }
}
