//! One simulated run: the cluster's hosts, the fault schedule and the driver (workload,
//! oracle, checks), all decided by one seed.
//!
//! Hosts run the real `firetower_metastore::run`, `firetower_distributor::run` and
//! `firetower_edge::run` over turmoil's TCP and UDP (see [`crate::net`]). The metastore's
//! "disk" is a `MemBackend` that outlives crashes of its host. The outer loop steps the
//! simulation and applies faults between steps; the driver (a turmoil client) runs the
//! workload and records what clients are told.
//!
//! This file holds what the parts share (the run's shape and context) and the outer loop;
//! the parts, by job:
//! - `cluster`: booting the hosts (metastore, distributors, edges).
//! - `faults`: the fault schedule, applied between steps.
//! - `workload`: the phases and the driver: publishes, clients, hot-topic changes.
//! - `clients`: the WebSocket clients and the gRPC publisher, and what they record.
//! - `checks`: the ownership watch, the quiet-phase checks, the leader lookup.

mod checks;
mod clients;
mod cluster;
mod faults;
mod workload;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::oracle::{Oracle, Violation};
use faults::Faults;

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub trace_hash: u64,
    pub steps: u64,
    pub sim_time: Duration,
    pub events: u64,
    pub deliveries: u64,
    pub publishes: usize,
    pub distributors: usize,
    pub edges: usize,
    pub faults: Vec<String>,
    /// The first broken invariant, with the step it was found at.
    pub violation: Option<(Violation, u64)>,
    /// With `keep_going`: the first violation of each other invariant broken later in the
    /// run (a seed that breaks one invariant early would otherwise hide the others).
    pub later: Vec<Violation>,
}

/// The cluster's shape, drawn from the seed.
#[derive(Debug, Clone)]
struct Shape {
    distributors: usize,
    edges: usize,
}

/// What the driver, its tasks and the fault schedule share.
struct Ctx {
    seed: u64,
    /// True while the driver runs a quiet phase's checks: no fault may start then (a check
    /// that runs long would otherwise be judged against a faulty cluster).
    checking: Cell<bool>,
    oracle: RefCell<Oracle>,
    leader: Cell<Option<u64>>,
    metas: Vec<String>,
    dists: Vec<String>,
    edges: Vec<String>,
    topics: Vec<String>,
    /// Topic → its shard count (0: plain or merged) as the driver's watch last saw it: what
    /// the driver's splits and merges, and the distributors' automatic ones, made of it.
    hot: RefCell<BTreeMap<String, u32>>,
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Runs one seed to the end, or to the first violation unless `keep_going`.
pub fn run_seed(seed: u64, keep_going: bool) -> anyhow::Result<Outcome> {
    firetower_net::rng::seed_thread_rng(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = Shape {
        distributors: rng.gen_range(1..=3),
        edges: rng.gen_range(1..=4),
    };
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .rng_seed(seed)
        .build();

    let cluster = cluster::boot(&mut sim, &shape, seed)?;

    let ctx = Rc::new(Ctx {
        seed,
        checking: Cell::new(false),
        oracle: RefCell::new(Oracle::default()),
        leader: Cell::new(None),
        metas: cluster.metas,
        dists: cluster.dists,
        edges: cluster.edges,
        topics: (0..workload::TOPICS).map(|t| format!("t{t}")).collect(),
        hot: RefCell::default(),
    });
    {
        let ctx = ctx.clone();
        sim.client("driver", async move {
            workload::driver(ctx).await;
            Ok(())
        });
    }

    // Faults between steps.
    let mut faults = Faults::new(
        seed,
        shape.clone(),
        cluster.dist_names,
        cluster.edge_names,
        cluster.meta_names,
        cluster.pki,
    );
    let mut steps = 0u64;
    let mut violation = None;
    loop {
        steps += 1;
        faults.apply(&mut sim, &ctx);
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                violation = Some((
                    Violation {
                        invariant: "simulation ran",
                        detail: e.to_string(),
                        at: sim.elapsed(),
                    },
                    steps,
                ));
                break;
            }
        }
        if violation.is_none() {
            if let Some(v) = ctx.oracle.borrow().violations.first() {
                violation = Some((v.clone(), steps));
                if !keep_going {
                    break;
                }
            }
        }
    }
    let oracle = ctx.oracle.borrow();
    let mut later: Vec<Violation> = Vec::new();
    for v in &oracle.violations {
        let first = violation.as_ref().map(|(f, _)| f.invariant);
        if first != Some(v.invariant) && !later.iter().any(|l| l.invariant == v.invariant) {
            later.push(v.clone());
        }
    }
    Ok(Outcome {
        seed,
        trace_hash: oracle.trace_hash(),
        steps,
        sim_time: sim.elapsed(),
        events: oracle.events,
        deliveries: oracle.deliveries,
        publishes: oracle.publishes.len(),
        distributors: faults.live_distributors(),
        edges: shape.edges,
        faults: faults.log.clone(),
        violation,
        later,
    })
}
