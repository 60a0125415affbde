//! One simulated run: the cluster's hosts, the fault schedule and the driver (workload,
//! oracle, checks), all decided by one seed.
//!
//! Hosts run the real `firetower_metastore::run`, `firetower_distributor::run` and
//! `firetower_edge::run` over turmoil's TCP and UDP (see [`crate::net`]). The metastore's
//! "disk" is a [`MemBackend`] that outlives crashes of its host. The outer loop steps the
//! simulation and applies faults between steps; the driver (a turmoil client) runs the
//! workload and records what clients are told.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use firetower_metastore::MemBackend;
use firetower_net::tls::{DevPki, TlsMaterial};
use firetower_net::{Connector, MetaClient};
use firetower_proto::client::{parse_server_frame, ServerFrame};
use firetower_proto::distributor::v1 as dpb;
use firetower_proto::metastore::v1 as pb;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::invariants;
use crate::net::{incoming, SimConnector, SimUdp};
use crate::oracle::{Oracle, PublishRecord, Violation};

const META_PORT: u16 = 7101;
const GRPC_PORT: u16 = 6667;
const QUIC_PORT: u16 = 6666;
const WS_PORT: u16 = 9999;
const MAX_DISTRIBUTORS: usize = 4;
const MAX_CLIENTS: usize = 12;
const TOPICS: usize = 6;

/// The phases of a run, in simulated seconds. Quiet phases have a settle part (no faults,
/// workload on), a window (only publishes: these must all arrive) and a drain, then the
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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

fn phase_at(t: Duration) -> Option<(u64, u64, Phase)> {
    let s = t.as_secs();
    SCHEDULE.iter().copied().find(|(a, b, _)| *a <= s && s < *b)
}

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
}

/// The cluster's shape, drawn from the seed.
#[derive(Debug, Clone)]
struct Shape {
    distributors: usize,
    edges: usize,
}

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

/// Runs one seed to the end (or the first violation).
pub fn run_seed(seed: u64) -> anyhow::Result<Outcome> {
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

    let ip = |sim: &turmoil::Sim, name: &str| -> IpAddr { sim.lookup(name) };
    let meta_names: Vec<String> = (1..=3).map(|i| format!("meta{i}")).collect();
    let dist_names: Vec<String> = (1..=MAX_DISTRIBUTORS).map(|i| format!("dist{i}")).collect();
    let edge_names: Vec<String> = (1..=shape.edges).map(|i| format!("edge{i}")).collect();
    // Register every name first so addresses are known before any host starts.
    let metas: Vec<String> = meta_names
        .iter()
        .map(|n| SocketAddr::new(ip(&sim, n), META_PORT).to_string())
        .collect();
    let dists: Vec<String> = dist_names
        .iter()
        .map(|n| SocketAddr::new(ip(&sim, n), GRPC_PORT).to_string())
        .collect();
    let edges: Vec<String> = edge_names
        .iter()
        .map(|n| SocketAddr::new(ip(&sim, n), WS_PORT).to_string())
        .collect();

    // The metastore nodes, each with a disk that survives its crashes.
    let peers: BTreeMap<u64, String> = metas
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.clone()))
        .collect();
    for (i, name) in meta_names.iter().enumerate() {
        let id = i as u64 + 1;
        let disk = MemBackend::default();
        let config = firetower_metastore::Config {
            id,
            peers: peers.clone(),
            data_dir: std::path::PathBuf::from(format!("/sim/meta{id}")),
            ..firetower_metastore::Config::default()
        };
        sim.host(name.as_str(), move || {
            let disk = disk.clone();
            let config = config.clone();
            async move {
                let listener =
                    turmoil::net::TcpListener::bind((IpAddr::from([0, 0, 0, 0]), META_PORT))
                        .await?;
                firetower_metastore::run(
                    config,
                    incoming(listener),
                    SimConnector,
                    disk,
                    std::future::pending(),
                )
                .await?;
                Ok(())
            }
        });
    }

    let pki = Rc::new(DevPki::new()?);
    for d in 1..=shape.distributors {
        add_distributor(&mut sim, &pki, d, &metas, seed)?;
    }
    for e in 1..=shape.edges {
        add_edge(&mut sim, &pki, e, &metas, seed)?;
    }

    let ctx = Rc::new(Ctx {
        seed,
        checking: Cell::new(false),
        oracle: RefCell::new(Oracle::default()),
        leader: Cell::new(None),
        metas,
        dists,
        edges,
        topics: (0..TOPICS).map(|t| format!("t{t}")).collect(),
        hot: RefCell::default(),
    });
    {
        let ctx = ctx.clone();
        sim.client("driver", async move {
            driver(ctx).await;
            Ok(())
        });
    }

    // Faults between steps.
    let mut faults = Faults::new(
        seed,
        shape.clone(),
        dist_names,
        edge_names,
        meta_names,
        pki.clone(),
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
        if let Some(v) = ctx.oracle.borrow().violations.first() {
            violation = Some((v.clone(), steps));
            break;
        }
    }
    let oracle = ctx.oracle.borrow();
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
    })
}

fn tls_for(pki: &DevPki, name: &str) -> anyhow::Result<TlsMaterial> {
    let cert = pki.issue(name)?;
    Ok(TlsMaterial::from_pem(
        &cert.cert_pem,
        &cert.key_pem,
        &pki.ca_pem,
    )?)
}

fn endpoint_config(seed: u64, salt: u64) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&salt.to_le_bytes());
    config.rng_seed(Some(bytes));
    config
}

fn add_distributor(
    sim: &mut turmoil::Sim<'_>,
    pki: &DevPki,
    d: usize,
    metas: &[String],
    seed: u64,
) -> anyhow::Result<()> {
    let name = format!("dist{d}");
    let ip = sim.lookup(name.as_str());
    let tls = tls_for(pki, &name)?;
    let server = tls.server_config()?;
    let config = firetower_distributor::Config {
        id: d as u64,
        metastore: metas.to_vec(),
        grpc_advertise: SocketAddr::new(ip, GRPC_PORT).to_string(),
        quic_advertise: SocketAddr::new(ip, QUIC_PORT).to_string(),
        lease_ttl_ms: 1500,
        ..firetower_distributor::Config::default()
    };
    sim.host(name.as_str(), move || {
        let config = config.clone();
        let server = server.clone();
        async move {
            let grpc =
                turmoil::net::TcpListener::bind((IpAddr::from([0, 0, 0, 0]), GRPC_PORT)).await?;
            let udp =
                turmoil::net::UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), QUIC_PORT)).await?;
            let endpoint = quinn::Endpoint::new_with_abstract_socket(
                endpoint_config(seed, d as u64),
                Some(server),
                Arc::new(SimUdp::new(udp)),
                Arc::new(quinn::TokioRuntime),
            )?;
            firetower_distributor::run(
                config,
                incoming(grpc),
                endpoint,
                SimConnector,
                std::future::pending(),
            )
            .await?;
            Ok(())
        }
    });
    Ok(())
}

fn add_edge(
    sim: &mut turmoil::Sim<'_>,
    pki: &DevPki,
    e: usize,
    metas: &[String],
    seed: u64,
) -> anyhow::Result<()> {
    let name = format!("edge{e}");
    let ip = sim.lookup(name.as_str());
    let client = tls_for(pki, &name)?.client_config()?;
    let config = firetower_edge::Config {
        id: e as u64,
        metastore: metas.to_vec(),
        ws_advertise: SocketAddr::new(ip, WS_PORT).to_string(),
        lease_ttl_ms: 1500,
        heartbeat_interval_ms: 2000,
        pong_timeout_ms: 6000,
        ..firetower_edge::Config::default()
    };
    sim.host(name.as_str(), move || {
        let config = config.clone();
        let client = client.clone();
        async move {
            let listener =
                turmoil::net::TcpListener::bind((IpAddr::from([0, 0, 0, 0]), WS_PORT)).await?;
            let udp = turmoil::net::UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 7000)).await?;
            let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
                endpoint_config(seed, 100 + e as u64),
                None,
                Arc::new(SimUdp::new(udp)),
                Arc::new(quinn::TokioRuntime),
            )?;
            endpoint.set_default_client_config(client);
            firetower_edge::run(
                config,
                incoming(listener),
                endpoint,
                SimConnector,
                Arc::new(firetower_edge::AllowAll),
                Arc::default(),
                std::future::pending(),
            )
            .await?;
            Ok(())
        }
    });
    Ok(())
}

/// The fault schedule, drawn from the seed, applied between steps.
struct Faults {
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
    log: Vec<String>,
}

impl Faults {
    fn new(
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

    fn live_distributors(&self) -> usize {
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

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, ctx: &Ctx) {
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

enum Cmd {
    Subscribe(Vec<String>),
    /// A client publish (over the WebSocket, through the edge's on_read and the owner).
    Publish(String, u64),
    Unsubscribe(String),
    Close,
}

/// The workload and the checks.
async fn driver(ctx: Rc<Ctx>) {
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

/// Follows the metastore's watch stream (as distributors and edges do) and checks the
/// ownership invariant after every event, not only at the end of quiet phases.
async fn watch_ownership(ctx: Rc<Ctx>) {
    let client =
        firetower_net::MetaClient::new(ctx.metas.clone(), SimConnector, Duration::from_millis(500));
    let (tx, mut rx) = mpsc::channel(64);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let _task = firetower_net::spawn_watch(client, tx, stop_rx);
    let mut table = firetower_proto::routing::RoutingTable::default();
    while let Some(event) = rx.recv().await {
        let before = table.hot_routes().clone();
        table.apply(event);
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        invariants::ownership::check_table(&mut o, at, &table);
        // Trace every hot-topic route change (the distributors propose merges of idle
        // split topics on their own, which no driver call shows).
        for (topic, route) in table.hot_routes() {
            if before.get(topic) != Some(route) {
                let state = if route.committed {
                    "committed"
                } else {
                    "prepared"
                };
                o.trace(
                    at,
                    &format!(
                        "watch: hot {topic} {} -> {} shards {state} (since {}, revision {})",
                        route.prev_shards, route.shards, route.since, route.revision
                    ),
                );
                ctx.hot.borrow_mut().insert(topic.clone(), route.shards);
            }
        }
    }
}

async fn track_leader(ctx: &Ctx) {
    for addr in &ctx.metas {
        let Ok(channel) = SimConnector.channel(addr) else {
            continue;
        };
        let mut client = pb::metastore_client::MetastoreClient::new(channel);
        if let Ok(Ok(status)) = tokio::time::timeout(
            Duration::from_millis(300),
            client.cluster_status(pb::ClusterStatusRequest {}),
        )
        .await
        {
            if let Some(leader) = status.into_inner().leader {
                ctx.leader.set(Some(leader));
                return;
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
    let mut records = Vec::new();
    {
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        for (k, topic) in topics.iter().enumerate() {
            let id = first + k as u64;
            o.trace(at, &format!("publish #{id} {topic} via {dist}"));
            o.publishes.push(PublishRecord {
                id,
                topic: topic.clone(),
                sent: at,
                acked: None,
            });
            records.push(o.publishes.len() - 1);
        }
    }
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let Ok(channel) = SimConnector.channel(&dist) else {
            return;
        };
        let mut client = dpb::distributor_client::DistributorClient::new(channel);
        let mut messages: Vec<dpb::PublishRequest> = topics
            .iter()
            .enumerate()
            .map(|(k, topic)| dpb::PublishRequest {
                topic: topic.clone(),
                data: format!(r#"{{"id":{}}}"#, first + k as u64).into(),
            })
            .collect();
        let call = async {
            if messages.len() == 1 {
                let m = messages.remove(0);
                client.publish(m).await.map(|r| vec![r.into_inner()])
            } else {
                let batch = dpb::PublishBatchRequest { messages };
                client
                    .publish_batch(batch)
                    .await
                    .map(|r| r.into_inner().results)
            }
        };
        let result = tokio::time::timeout(Duration::from_secs(8), call).await;
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        match result {
            Ok(Ok(replies)) => {
                for ((k, r), index) in replies.iter().enumerate().zip(&records) {
                    o.trace(
                        at,
                        &format!(
                            "published #{} {} {}.{} to {} shards",
                            first + k as u64,
                            topics[k],
                            r.epoch,
                            r.seq,
                            r.shards
                        ),
                    );
                    if let Some(p) = o.publishes.get_mut(*index) {
                        p.acked = Some(at);
                    }
                }
            }
            Ok(Err(status)) => o.trace(at, &format!("publish #{first} failed {:?}", status.code())),
            Err(_) => o.trace(at, &format!("publish #{first} timed out")),
        }
    });
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

async fn client_task(ctx: Rc<Ctx>, c: usize, edge: String, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let closed = |ctx: &Ctx, code: Option<u16>, why: &str| {
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        o.trace(at, &format!("client {c} closed {code:?} {why}"));
        if let Some(r) = o.clients.get_mut(c) {
            r.connected = false;
            r.closed_at = Some(at);
            r.slow = code == Some(firetower_edge::CLOSE_SLOW_CONSUMER);
        }
    };
    let Ok(addr) = edge.parse::<SocketAddr>() else {
        return;
    };
    let stream = match tokio::time::timeout(
        Duration::from_secs(2),
        turmoil::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => return closed(&ctx, None, "connect failed"),
    };
    let mut ws = match tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::client_async(format!("ws://{edge}/ws"), stream),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        _ => return closed(&ctx, None, "handshake failed"),
    };
    ctx.oracle
        .borrow_mut()
        .trace(now(), &format!("client {c} connected to {edge}"));
    loop {
        tokio::select! {
            biased;
            cmd = cmds.recv() => {
                let frame = match cmd {
                    Some(Cmd::Subscribe(topics)) => format!(r#"{{"type":"subscribe","topic":"{}","data":""}}"#, topics.join(",")),
                    Some(Cmd::Publish(topic, id)) => {
                        format!(r#"{{"type":"publish","topic":"{topic}","data":{{"id":{id}}}}}"#)
                    }
                    Some(Cmd::Unsubscribe(topic)) => {
                        let mut o = ctx.oracle.borrow_mut();
                        let at = now();
                        if let Some(r) = o.clients.get_mut(c) {
                            r.unsubscribing.insert(topic.clone(), at);
                        }
                        format!(r#"{{"type":"unSubscribe","topic":"{topic}"}}"#)
                    }
                    Some(Cmd::Close) | None => {
                        let _ = ws.close(None).await;
                        return closed(&ctx, None, "closed by the client");
                    }
                };
                if ws.send(Message::text(frame)).await.is_err() {
                    return closed(&ctx, None, "send failed");
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => handle_frame(&ctx, c, text.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    return closed(&ctx, frame.map(|f| u16::from(f.code)), "closed by the edge");
                }
                Some(Ok(_)) => {}
                _ => return closed(&ctx, None, "connection lost"),
            },
        }
    }
}

fn handle_frame(ctx: &Ctx, c: usize, text: &str) {
    let mut o = ctx.oracle.borrow_mut();
    let at = now();
    match parse_server_frame(text) {
        Ok(ServerFrame::Publish {
            topic,
            data,
            epoch,
            seq,
        }) => {
            let id = serde_json::from_str::<serde_json::Value>(data)
                .ok()
                .and_then(|v| v["id"].as_u64())
                .unwrap_or(0);
            o.delivery(at, c, &topic, epoch, seq, id);
        }
        Ok(ServerFrame::Subscribed(topics)) => {
            o.trace(at, &format!("client {c} subscribed {topics:?}"));
            if let Some(r) = o.clients.get_mut(c) {
                for t in topics {
                    r.subscribed.entry(t).or_insert(at);
                }
            }
        }
        Ok(ServerFrame::Unsubscribed(topics)) => {
            o.trace(at, &format!("client {c} unsubscribed {topics:?}"));
            if let Some(r) = o.clients.get_mut(c) {
                for t in topics {
                    r.subscribed.remove(&t);
                    r.unsubscribing.remove(&t);
                }
            }
        }
        Ok(ServerFrame::Error { code, topic, .. }) => {
            o.trace(at, &format!("client {c} error {code} {topic:?}"));
        }
        Ok(ServerFrame::Heartbeat) => {}
        Err(e) => o.violate(
            at,
            "well-formed server frames",
            format!("client {c}: {e}: {text}"),
        ),
    }
}

/// The checks at the end of a quiet phase.
async fn check_quiet(ctx: &Ctx, window: Option<(Duration, Duration)>) {
    // Metastore replicas agree (give them a moment), and ownership holds.
    let mut maps = Vec::new();
    for _ in 0..10 {
        maps = Vec::new();
        for addr in &ctx.metas {
            maps.push(slot_map(addr).await);
        }
        if invariants::convergence::agreed(&maps) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        invariants::convergence::check(&mut o, at, &maps);
        for (i, map) in maps.iter().enumerate() {
            if let Some(map) = map {
                invariants::ownership::check(&mut o, at, i + 1, map);
            }
        }
        if let Some((a, b)) = window {
            invariants::completeness::check(&mut o, a, b, at);
        }
        o.trace(
            at,
            &format!(
                "checked quiet phase (revision {:?})",
                maps.first().and_then(|m| m.as_ref().map(|m| m.revision))
            ),
        );
    }
    // TopicStatus converges to what the clients were told.
    let truth = invariants::topic_status::truth(&ctx.oracle.borrow(), &ctx.topics);
    for (topic, expected) in truth {
        let mut reported = None;
        for _ in 0..10 {
            reported = topic_status(ctx, &topic).await;
            if reported == Some(expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        invariants::topic_status::check(&mut o, at, &topic, expected, reported);
    }
}

async fn slot_map(addr: &str) -> Option<pb::SlotMap> {
    let channel = SimConnector.channel(addr).ok()?;
    let mut client =
        pb::metastore_client::MetastoreClient::new(channel).max_decoding_message_size(64 << 20);
    tokio::time::timeout(
        Duration::from_millis(500),
        client.get_slot_map(pb::GetSlotMapRequest {
            linearizable: false,
        }),
    )
    .await
    .ok()?
    .ok()
    .map(|r| r.into_inner())
}

async fn topic_status(ctx: &Ctx, topic: &str) -> Option<u64> {
    for addr in &ctx.dists {
        let Ok(channel) = SimConnector.channel(addr) else {
            continue;
        };
        let mut client = dpb::distributor_client::DistributorClient::new(channel);
        let request = dpb::TopicStatusRequest {
            topic: topic.to_string(),
            owner_only: false,
        };
        if let Ok(Ok(reply)) =
            tokio::time::timeout(Duration::from_millis(300), client.topic_status(request)).await
        {
            return Some(reply.into_inner().subscribers);
        }
    }
    None
}
