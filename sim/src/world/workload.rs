//! Workload: the driver (a turmoil client) and what it does over a run's phases: gRPC
//! publishes, WebSocket clients opened, told to subscribe, unsubscribe, publish and close,
//! and hot-topic splits and merges; then the checks at the end of each quiet phase. Kept
//! apart because every draw from the driver's RNG stream is made here, in one place, so
//! their order (which the trace hash depends on) is easy to see.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use firetower_client::SubscriberCore;
use firetower_net::MetaClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::checks::{check_quiet, track_leader, watch_ownership};
use super::clients::{self, client_task, Cmd, Msg};
use super::{now, Ctx};
use crate::invariants;
use crate::net::SimConnector;

/// WebSocket clients connected at once, at most.
const MAX_CLIENTS: usize = 12;
/// WebSocket clients opened over a run, at most: closed ones (edge crashes close many at
/// once) are replaced up to this, so every quiet window has subscribers to check.
const MAX_CLIENTS_EVER: usize = 120;
/// Workload topics per run.
pub(super) const TOPICS: usize = 6;
/// The driver's gRPC publishers (backends); each numbers its messages per topic.
const GRPC_PUBLISHERS: u32 = 3;

/// The phases of a run, in simulated seconds. Quiet phases have a settle part (no faults,
/// workload on), a window (only publishes: these must all arrive) and a drain, then the
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Settle,
    Window,
    Drain,
    Faults,
}

const SCHEDULE: &[(u64, u64, Phase)] = &[
    (0, 10, Phase::Settle),
    (10, 14, Phase::Window),
    (14, 18, Phase::Drain),
    (18, 30, Phase::Faults),
    (30, 40, Phase::Settle),
    (40, 44, Phase::Window),
    (44, 48, Phase::Drain),
    (48, 58, Phase::Faults),
    (58, 68, Phase::Settle),
    (68, 72, Phase::Window),
    (72, 76, Phase::Drain),
];

pub(super) fn phase_at(t: Duration) -> Option<(u64, u64, Phase)> {
    let s = t.as_secs();
    SCHEDULE.iter().copied().find(|(a, b, _)| *a <= s && s < *b)
}

/// A WebSocket client as the driver holds it: its task's commands, and its core (its
/// subscriptions and positions), which a client replacing it starts from.
struct Client {
    cmds: mpsc::UnboundedSender<Cmd>,
    core: Rc<RefCell<SubscriberCore>>,
}

/// The driver's own state: the clients it opened and the ids it handed out.
struct Driver {
    ctx: Rc<Ctx>,
    clients: Vec<Client>,
    next_id: u64,
}

impl Driver {
    /// The clients still connected (indices into `clients`, which are the oracle's).
    fn live(&self) -> Vec<usize> {
        let o = self.ctx.oracle.borrow();
        (0..self.clients.len())
            .filter(|&c| o.clients.get(c).is_some_and(|r| r.connected))
            .collect()
    }

    /// Opens client number `c` (the oracle's) on edge `edge` (0-based), starting from
    /// `core`.
    fn open(&mut self, c: usize, edge: usize, core: SubscriberCore) {
        assert_eq!(
            c,
            self.clients.len(),
            "the oracle numbers clients as the driver does"
        );
        let (cmds, rx) = mpsc::unbounded_channel();
        let core = Rc::new(RefCell::new(core));
        self.clients.push(Client {
            cmds,
            core: core.clone(),
        });
        tokio::task::spawn_local(client_task(
            self.ctx.clone(),
            c,
            self.ctx.edges[edge].clone(),
            core,
            rx,
        ));
    }

    /// Sends `cmd` to client `c`.
    fn tell(&self, c: usize, cmd: Cmd) {
        let _ = self.clients[c].cmds.send(cmd);
    }

    /// A new client on a random edge takes over what client `old` held: a copy of its core,
    /// so it subscribes to every topic `old` held and recovers each from the position `old`
    /// last had (see invariants/recovery.rs), as the Rust client does when it reconnects.
    fn reconnect(&mut self, old: usize, rng: &mut StdRng) {
        let edge = rng.gen_range(0..self.ctx.edges.len());
        let Some(core) = self.clients.get(old).map(|h| h.core.borrow().clone()) else {
            return;
        };
        let c = self.ctx.oracle.borrow_mut().new_client(edge + 1);
        self.open(c, edge, core);
    }

    fn ids(&mut self, n: usize) -> u64 {
        let first = self.next_id;
        self.next_id += n as u64;
        first
    }

    fn topic(&self, rng: &mut StdRng) -> String {
        self.ctx.topics[rng.gen_range(0..self.ctx.topics.len())].clone()
    }

    /// Publishes one message over gRPC, or (every fourth publish) a `PublishBatch` of
    /// three: two of one topic and one of the next topic, which exercises per-topic runs
    /// forwarded to the owner in one `ForwardBatch` call. The batch choice uses no
    /// randomness of its own.
    fn publish(&mut self, rng: &mut StdRng) {
        let t = rng.gen_range(0..self.ctx.topics.len());
        let dist = self.ctx.dists[rng.gen_range(0..self.ctx.dists.len())].clone();
        let publisher = rng.gen_range(0..GRPC_PUBLISHERS);
        let topics: Vec<String> = if self.next_id % 4 == 3 {
            let other = self.ctx.topics[(t + 1) % self.ctx.topics.len()].clone();
            vec![
                self.ctx.topics[t].clone(),
                self.ctx.topics[t].clone(),
                other,
            ]
        } else {
            vec![self.ctx.topics[t].clone()]
        };
        let first = self.ids(topics.len());
        let messages = topics
            .into_iter()
            .enumerate()
            .map(|(k, topic)| Msg {
                id: first + k as u64,
                topic,
                pad: 0,
            })
            .collect();
        clients::publish(&self.ctx, dist, publisher, messages);
    }

    /// One client publish from a connected client.
    fn client_publish(&mut self, rng: &mut StdRng, live: &[usize]) {
        if live.is_empty() {
            return;
        }
        let c = live[rng.gen_range(0..live.len())];
        let topic = self.topic(rng);
        let id = self.ids(1);
        self.tell(c, Cmd::Publish(vec![Msg { id, topic, pad: 0 }]));
    }

    /// A burst from one publisher, meant to exceed per-connection queue budgets so that
    /// backpressure runs (under faults too): a few hundred small messages to one topic, or
    /// a few dozen large ones (8–48 KiB, under the 64 KiB limits of a client frame and a
    /// message), from a WebSocket client or a gRPC publisher (one `PublishBatch`).
    fn burst(&mut self, rng: &mut StdRng, live: &[usize]) {
        let topic = self.topic(rng);
        let large = rng.gen_bool(0.5);
        let count = if large {
            rng.gen_range(10..=30)
        } else {
            rng.gen_range(150..=400)
        };
        let first = self.ids(count);
        let messages: Vec<Msg> = (0..count)
            .map(|k| Msg {
                id: first + k as u64,
                topic: topic.clone(),
                pad: if large {
                    rng.gen_range(8 << 10..48 << 10)
                } else {
                    0
                },
            })
            .collect();
        if !live.is_empty() && rng.gen_bool(0.5) {
            let c = live[rng.gen_range(0..live.len())];
            self.tell(c, Cmd::Publish(messages));
        } else {
            let dist = self.ctx.dists[rng.gen_range(0..self.ctx.dists.len())].clone();
            let publisher = rng.gen_range(0..GRPC_PUBLISHERS);
            clients::publish(&self.ctx, dist, publisher, messages);
        }
    }
}

/// The workload and the checks.
pub(super) async fn driver(ctx: Rc<Ctx>) {
    tokio::task::spawn_local(watch_ownership(ctx.clone()));
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0xD21E);
    let hot = Hot::new(&ctx, &mut rng);
    let mut recover_rng = StdRng::seed_from_u64(ctx.seed ^ 0x5EC0);
    let mut d = Driver {
        ctx: ctx.clone(),
        clients: Vec::new(),
        next_id: 1,
    };
    let mut last_leader_check = Duration::ZERO;
    let mut checked: BTreeSet<u64> = BTreeSet::new();
    loop {
        let t = now();
        let Some((start, end, phase)) = phase_at(t) else {
            return;
        };
        if t.saturating_sub(last_leader_check) >= Duration::from_millis(500) {
            last_leader_check = t;
            track_leader(&ctx).await;
        }
        let live = d.live();
        match phase {
            Phase::Settle | Phase::Faults => {
                match rng.gen_range(0..20) {
                    0..=4 => d.publish(&mut rng),
                    5..=7 if live.len() < MAX_CLIENTS && d.clients.len() < MAX_CLIENTS_EVER => {
                        let edge = rng.gen_range(0..ctx.edges.len());
                        let c = ctx.oracle.borrow_mut().new_client(edge + 1);
                        d.open(c, edge, SubscriberCore::default());
                    }
                    8..=11 if !live.is_empty() => {
                        let c = live[rng.gen_range(0..live.len())];
                        let n = rng.gen_range(1..=2);
                        let topics: Vec<String> = (0..n).map(|_| d.topic(&mut rng)).collect();
                        d.tell(c, Cmd::Subscribe(topics));
                    }
                    12..=13 if !live.is_empty() => {
                        let c = live[rng.gen_range(0..live.len())];
                        let topic = d.topic(&mut rng);
                        d.tell(c, Cmd::Unsubscribe(topic));
                    }
                    15..=16 => d.client_publish(&mut rng, &live),
                    14 if !live.is_empty() && phase == Phase::Faults => {
                        let c = live[rng.gen_range(0..live.len())];
                        d.tell(c, Cmd::Close);
                        // Half the time it comes back, on a random edge, with the
                        // positions it last saw (drawn from a generator of its own, so the
                        // rest of the workload draws as before).
                        if recover_rng.gen_ratio(1, 2) && d.clients.len() < MAX_CLIENTS_EVER {
                            d.reconnect(c, &mut recover_rng);
                        }
                    }
                    17 if rng.gen_ratio(1, 3) => hot.change(&ctx, &mut rng),
                    18 if rng.gen_ratio(1, 8) => d.burst(&mut rng, &live),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..60))).await;
            }
            Phase::Window => {
                if hot.in_windows && rng.gen_ratio(1, 60) {
                    hot.change(&ctx, &mut rng);
                }
                if rng.gen_ratio(1, 150) {
                    d.burst(&mut rng, &live);
                } else if rng.gen_ratio(1, 3) {
                    d.client_publish(&mut rng, &live);
                } else {
                    d.publish(&mut rng);
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..40))).await;
            }
            Phase::Drain => {
                let end_at = Duration::from_secs(end);
                let wait = end_at
                    .saturating_sub(now())
                    .saturating_sub(Duration::from_millis(2500));
                tokio::time::sleep(wait).await;
                if checked.insert(start) {
                    // The window is the phase before this drain, and the settle part the
                    // one before the window.
                    let window = SCHEDULE
                        .iter()
                        .find(|(_, b, p)| *b == start && *p == Phase::Window)
                        .map(|(a, b, _)| (Duration::from_secs(*a), Duration::from_secs(*b)));
                    let phase = window.map(|(a, b)| {
                        let settle = SCHEDULE
                            .iter()
                            .find(|(_, e, p)| Duration::from_secs(*e) == a && *p == Phase::Settle)
                            .map_or(a, |(s, _, _)| Duration::from_secs(*s));
                        (settle, (a, b))
                    });
                    ctx.checking.set(true);
                    check_quiet(&ctx, phase).await;
                    ctx.checking.set(false);
                }
                let rest = end_at.saturating_sub(now());
                tokio::time::sleep(rest).await;
            }
        }
    }
}

/// Splits and merges of the workload topics (hot topics), through the metastore API an
/// operator uses. Only one change per topic can be under way, so many calls are refused
/// with FAILED_PRECONDITION; that, and UNAVAILABLE or a timeout while the metastore is
/// faulty, is a normal answer and only traced.
struct Hot {
    meta: MetaClient<SimConnector>,
    /// Whether this seed also splits and merges during quiet windows (whose publishes must
    /// all arrive): drawn per seed, so the sweep covers windows with and without changes.
    in_windows: bool,
}

impl Hot {
    fn new(ctx: &Ctx, rng: &mut StdRng) -> Self {
        let in_windows = rng.gen_bool(0.5);
        ctx.oracle.borrow_mut().trace(
            now(),
            &format!("hot topic changes during windows: {in_windows}"),
        );
        Hot {
            meta: MetaClient::new(ctx.metas.clone(), SimConnector, Duration::from_millis(500)),
            in_windows,
        }
    }

    /// Splits a random topic into 2..=8 sub-topics (again, if it is split already), or
    /// merges a split one (as the driver's watch last saw it).
    fn change(&self, ctx: &Rc<Ctx>, rng: &mut StdRng) {
        let topic = ctx.topics[rng.gen_range(0..ctx.topics.len())].clone();
        // A merged topic has 1 shard (its one sub-topic `T#0`).
        let split = ctx.hot.borrow().get(&topic).is_some_and(|&n| n > 1);
        let shards = if split && rng.gen_bool(0.5) {
            0
        } else {
            rng.gen_range(2..=8)
        };
        let verb = if shards == 0 { "merge" } else { "split" };
        ctx.oracle
            .borrow_mut()
            .trace(now(), &format!("hot {verb} {topic} into {shards}"));
        let meta = self.meta.clone();
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            let result = if shards == 0 {
                meta.clear_hot_topic(topic.clone()).await
            } else {
                meta.set_hot_topic(topic.clone(), shards).await
            };
            let mut o = ctx.oracle.borrow_mut();
            let at = now();
            match result {
                Ok(revision) => o.trace(
                    at,
                    &format!("hot {verb} {topic} into {shards}: ok (revision {revision})"),
                ),
                Err(status) => {
                    o.trace(
                        at,
                        &format!("hot {verb} {topic} into {shards}: {:?}", status.code()),
                    );
                    invariants::hot_topics::check_refusal(&mut o, at, &topic, shards, &status);
                }
            }
        });
    }
}
