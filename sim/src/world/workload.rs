//! Workload: the driver (a turmoil client) and what it does over a run's phases: gRPC
//! publishes, WebSocket clients opened, told to subscribe, unsubscribe, publish and close,
//! and hot-topic splits and merges; then the checks at the end of each quiet phase. Kept
//! apart because every draw from the driver's RNG stream is made here, in one place, so
//! their order (which the trace hash depends on) is easy to see.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use firetower_net::MetaClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::checks::{check_quiet, track_leader, watch_ownership};
use super::clients::{self, client_task, Cmd};
use super::{now, Ctx};
use crate::invariants;
use crate::net::SimConnector;

const MAX_CLIENTS: usize = 12;
/// Workload topics per run.
pub(super) const TOPICS: usize = 6;

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

/// The workload and the checks.
pub(super) async fn driver(ctx: Rc<Ctx>) {
    tokio::task::spawn_local(watch_ownership(ctx.clone()));
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0xD21E);
    let hot = Hot::new(&ctx, &mut rng);
    let mut clients: Vec<mpsc::UnboundedSender<Cmd>> = Vec::new();
    let mut next_id = 1u64;
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
        match phase {
            Phase::Settle | Phase::Faults => {
                match rng.gen_range(0..20) {
                    0..=4 => publish(&ctx, &mut rng, &mut next_id),
                    5..=7 if clients.len() < MAX_CLIENTS => {
                        let edge = rng.gen_range(0..ctx.edges.len());
                        let c = ctx.oracle.borrow_mut().new_client(edge + 1);
                        let (tx, rx) = mpsc::unbounded_channel();
                        clients.push(tx);
                        tokio::task::spawn_local(client_task(
                            ctx.clone(),
                            c,
                            ctx.edges[edge].clone(),
                            rx,
                        ));
                    }
                    8..=11 if !clients.is_empty() => {
                        let c = rng.gen_range(0..clients.len());
                        let n = rng.gen_range(1..=2);
                        let topics: Vec<String> = (0..n)
                            .map(|_| ctx.topics[rng.gen_range(0..ctx.topics.len())].clone())
                            .collect();
                        let _ = clients[c].send(Cmd::Subscribe(topics));
                    }
                    12..=13 if !clients.is_empty() => {
                        let c = rng.gen_range(0..clients.len());
                        let topic = ctx.topics[rng.gen_range(0..ctx.topics.len())].clone();
                        let _ = clients[c].send(Cmd::Unsubscribe(topic));
                    }
                    15..=16 if !clients.is_empty() => {
                        let c = rng.gen_range(0..clients.len());
                        let topic = ctx.topics[rng.gen_range(0..ctx.topics.len())].clone();
                        let id = next_id;
                        next_id += 1;
                        ctx.oracle
                            .borrow_mut()
                            .trace(now(), &format!("client {c} publishes #{id} {topic}"));
                        let _ = clients[c].send(Cmd::Publish(topic, id));
                    }
                    14 if !clients.is_empty() && phase == Phase::Faults => {
                        let c = rng.gen_range(0..clients.len());
                        let _ = clients[c].send(Cmd::Close);
                    }
                    17 if rng.gen_ratio(1, 3) => hot.change(&ctx, &mut rng),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..60))).await;
            }
            Phase::Window => {
                if hot.in_windows && rng.gen_ratio(1, 60) {
                    hot.change(&ctx, &mut rng);
                }
                publish(&ctx, &mut rng, &mut next_id);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..40))).await;
            }
            Phase::Drain => {
                let end_at = Duration::from_secs(end);
                let wait = end_at
                    .saturating_sub(now())
                    .saturating_sub(Duration::from_millis(2500));
                tokio::time::sleep(wait).await;
                if checked.insert(start) {
                    // The window is the phase before this drain.
                    let window = SCHEDULE
                        .iter()
                        .find(|(_, b, p)| *b == start && *p == Phase::Window)
                        .map(|(a, b, _)| (Duration::from_secs(*a), Duration::from_secs(*b)));
                    ctx.checking.set(true);
                    check_quiet(&ctx, window).await;
                    ctx.checking.set(false);
                }
                let rest = end_at.saturating_sub(now());
                tokio::time::sleep(rest).await;
            }
        }
    }
}

/// Publishes one message, or (every fourth publish) a `PublishBatch` of three: two of one
/// topic and one of the next topic, which exercises per-topic runs forwarded to the owner
/// in one `ForwardBatch` call. The batch choice uses no randomness of its own.
fn publish(ctx: &Rc<Ctx>, rng: &mut StdRng, next_id: &mut u64) {
    let first = *next_id;
    let t = rng.gen_range(0..ctx.topics.len());
    let dist = ctx.dists[rng.gen_range(0..ctx.dists.len())].clone();
    let topics: Vec<String> = if first % 4 == 3 {
        let other = ctx.topics[(t + 1) % ctx.topics.len()].clone();
        vec![ctx.topics[t].clone(), ctx.topics[t].clone(), other]
    } else {
        vec![ctx.topics[t].clone()]
    };
    *next_id += topics.len() as u64;
    clients::publish(ctx, dist, topics, first);
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
        let split = ctx.hot.borrow().get(&topic).is_some_and(|&n| n > 0);
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
