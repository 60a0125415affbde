//! Faults: the seed's fault schedule (partitions, lossy links, latency, crashes and
//! restarts, distributors joining and leaving for good), applied by the outer loop between
//! simulation steps. Kept apart because it owns its own RNG stream and host bookkeeping,
//! and touches the run only through the turmoil `Sim` and the shared context.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use firetower_net::tls::DevPki;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cluster::{add_distributor, MAX_DISTRIBUTORS};
use super::workload::{phase_at, Phase};
use super::{Ctx, Shape};

/// The fault schedule, drawn from the seed, applied between steps.
pub(super) struct Faults {
    rng: StdRng,
    shape: Shape,
    dists: Vec<String>,
    edges: Vec<String>,
    metas: Vec<String>,
    /// Distributors started so far (1-based count) and those that left for good.
    started: usize,
    left: BTreeSet<usize>,
    crashed: BTreeSet<String>,
    partitions: BTreeSet<(String, String)>,
    lossy: BTreeSet<(String, String)>,
    next_at: Duration,
    in_faults: bool,
    /// The cluster CA: a distributor that joins later gets its certificate from it too.
    pki: Rc<DevPki>,
    pub(super) log: Vec<String>,
}

impl Faults {
    pub(super) fn new(
        seed: u64,
        shape: Shape,
        dists: Vec<String>,
        edges: Vec<String>,
        metas: Vec<String>,
        pki: Rc<DevPki>,
    ) -> Self {
        Faults {
            rng: StdRng::seed_from_u64(seed ^ 0xFA17),
            started: shape.distributors,
            shape,
            dists,
            edges,
            metas,
            left: BTreeSet::new(),
            crashed: BTreeSet::new(),
            partitions: BTreeSet::new(),
            lossy: BTreeSet::new(),
            next_at: Duration::ZERO,
            in_faults: false,
            pki,
            log: Vec::new(),
        }
    }

    pub(super) fn live_distributors(&self) -> usize {
        self.started - self.left.len()
    }

    fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.metas.clone();
        hosts.extend(
            (1..=self.started)
                .filter(|d| !self.left.contains(d))
                .map(|d| self.dists[d - 1].clone()),
        );
        hosts.extend(self.edges.iter().take(self.shape.edges).cloned());
        hosts
    }

    fn note(&mut self, t: Duration, what: String) {
        self.log.push(format!("{:.3}s {what}", t.as_secs_f64()));
    }

    pub(super) fn apply(&mut self, sim: &mut turmoil::Sim<'_>, ctx: &Ctx) {
        let t = sim.elapsed();
        let faults_now = phase_at(t).is_some_and(|(_, _, p)| p == Phase::Faults);
        if !faults_now && self.in_faults {
            // Heal everything at the start of a quiet phase.
            self.in_faults = false;
            for (a, b) in std::mem::take(&mut self.partitions) {
                sim.repair(a.as_str(), b.as_str());
            }
            for host in std::mem::take(&mut self.crashed) {
                sim.bounce(host.as_str());
            }
            sim.set_max_message_latency(Duration::from_millis(5));
            for (a, b) in std::mem::take(&mut self.lossy) {
                sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
            }
            self.note(t, "heal".into());
            return;
        }
        if !faults_now || ctx.checking.get() {
            return;
        }
        if !self.in_faults {
            self.in_faults = true;
            self.next_at = t;
        }
        if t < self.next_at {
            return;
        }
        self.next_at = t + Duration::from_millis(self.rng.gen_range(500..2500));
        let hosts = self.hosts();
        match self.rng.gen_range(0..9) {
            0 | 1 => {
                let a = hosts[self.rng.gen_range(0..hosts.len())].clone();
                let b = hosts[self.rng.gen_range(0..hosts.len())].clone();
                if a != b {
                    sim.partition(a.as_str(), b.as_str());
                    self.note(t, format!("partition {a} {b}"));
                    self.partitions.insert((a, b));
                }
            }
            2 => {
                if let Some((a, b)) = self.partitions.iter().next().cloned() {
                    sim.repair(a.as_str(), b.as_str());
                    self.partitions.remove(&(a.clone(), b.clone()));
                    self.note(t, format!("repair {a} {b}"));
                }
            }
            3 => {
                // Crash any node (restarted when the phase ends); at most one metastore
                // node is down at a time, so the metastore keeps its quorum.
                let meta_down = self.crashed.iter().any(|h| h.starts_with("meta"));
                let candidates: Vec<String> = hosts
                    .iter()
                    .filter(|h| !(self.crashed.contains(*h) || meta_down && h.starts_with("meta")))
                    .cloned()
                    .collect();
                if !candidates.is_empty() {
                    let h = candidates[self.rng.gen_range(0..candidates.len())].clone();
                    sim.crash(h.as_str());
                    self.note(t, format!("crash {h}"));
                    self.crashed.insert(h);
                }
            }
            4 => {
                // Kill the metastore leader (one metastore node down at a time).
                if !self.crashed.iter().any(|h| h.starts_with("meta")) {
                    if let Some(leader) = ctx.leader.get() {
                        let h = format!("meta{leader}");
                        sim.crash(h.as_str());
                        self.note(t, format!("crash leader {h}"));
                        self.crashed.insert(h);
                    }
                }
            }
            5 => {
                // A distributor joins.
                if self.started < MAX_DISTRIBUTORS {
                    self.started += 1;
                    let d = self.started;
                    if add_distributor(sim, &self.pki, d, &ctx.metas, ctx.seed).is_ok() {
                        self.note(t, format!("join dist{d}"));
                    }
                }
            }
            6 => {
                // A distributor leaves for good (crash; its lease expires).
                let live: Vec<usize> = (1..=self.started)
                    .filter(|d| {
                        !self.left.contains(d) && !self.crashed.contains(&self.dists[*d - 1])
                    })
                    .collect();
                if live.len() > 1 {
                    let d = live[self.rng.gen_range(0..live.len())];
                    sim.crash(self.dists[d - 1].as_str());
                    self.left.insert(d);
                    self.note(t, format!("leave dist{d}"));
                }
            }
            7 => {
                // Lossy links between servers: each fails now and then (and repairs). The
                // clients' own links stay clean: turmoil's TCP never retransmits, so a
                // lost segment would silently cut a WebSocket, which real TCP does not do.
                let rate = self.rng.gen_range(1..20) as f64 / 1000.0;
                for (i, a) in hosts.iter().enumerate() {
                    for b in &hosts[i + 1..] {
                        sim.set_link_fail_rate(a.as_str(), b.as_str(), rate);
                        self.lossy.insert((a.clone(), b.clone()));
                    }
                }
                self.note(t, format!("server links fail at rate {rate}"));
            }
            _ => {
                let ms = self.rng.gen_range(5..200);
                sim.set_max_message_latency(Duration::from_millis(ms));
                self.note(t, format!("latency up to {ms} ms"));
            }
        }
    }
}
