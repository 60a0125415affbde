//! Cluster boot: the hosts of one run, each running the real `firetower_metastore::run`,
//! `firetower_distributor::run` or `firetower_edge::run` over turmoil's TCP and UDP (see
//! [`crate::net`]). Kept apart so that what a host is (its ports, config, certificate and
//! seeded QUIC endpoint) is written once, for the first boot and for a distributor that
//! joins later during faults.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use firetower_metastore::MemBackend;
use firetower_net::tls::{DevPki, TlsMaterial};

use super::Shape;
use crate::net::{incoming, SimConnector, SimUdp};

const META_PORT: u16 = 7101;
const GRPC_PORT: u16 = 6667;
const QUIC_PORT: u16 = 6666;
const WS_PORT: u16 = 9999;
/// Distributors a run may have at once: the first boot's, and those that join later.
pub(super) const MAX_DISTRIBUTORS: usize = 4;

/// The hosts a run starts with: their turmoil names, their addresses, and the cluster CA.
pub(super) struct Cluster {
    pub(super) meta_names: Vec<String>,
    /// Every distributor name a run may use (up to [`MAX_DISTRIBUTORS`]), started or not.
    pub(super) dist_names: Vec<String>,
    pub(super) edge_names: Vec<String>,
    /// Metastore gRPC addresses.
    pub(super) metas: Vec<String>,
    /// Distributor gRPC addresses (all [`MAX_DISTRIBUTORS`] of them).
    pub(super) dists: Vec<String>,
    /// Edge WebSocket addresses.
    pub(super) edges: Vec<String>,
    /// The cluster CA: a distributor that joins later gets its certificate from it too.
    pub(super) pki: Rc<DevPki>,
}

/// Registers every host name, then starts the three metastore nodes and the seed's
/// distributors and edges.
pub(super) fn boot(
    sim: &mut turmoil::Sim<'_>,
    shape: &Shape,
    seed: u64,
) -> anyhow::Result<Cluster> {
    let ip = |sim: &turmoil::Sim, name: &str| -> IpAddr { sim.lookup(name) };
    let meta_names: Vec<String> = (1..=3).map(|i| format!("meta{i}")).collect();
    let dist_names: Vec<String> = (1..=MAX_DISTRIBUTORS).map(|i| format!("dist{i}")).collect();
    let edge_names: Vec<String> = (1..=shape.edges).map(|i| format!("edge{i}")).collect();
    // Register every name first so addresses are known before any host starts.
    let metas: Vec<String> = meta_names
        .iter()
        .map(|n| SocketAddr::new(ip(sim, n), META_PORT).to_string())
        .collect();
    let dists: Vec<String> = dist_names
        .iter()
        .map(|n| SocketAddr::new(ip(sim, n), GRPC_PORT).to_string())
        .collect();
    let edges: Vec<String> = edge_names
        .iter()
        .map(|n| SocketAddr::new(ip(sim, n), WS_PORT).to_string())
        .collect();

    // The metastore nodes, each with a disk that survives its crashes.
    let peers: BTreeMap<u64, String> = metas
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.clone()))
        .collect();
    for (i, name) in meta_names.iter().enumerate() {
        add_metastore(sim, name, i as u64 + 1, &peers);
    }

    let pki = Rc::new(DevPki::ed25519()?);
    for d in 1..=shape.distributors {
        add_distributor(sim, &pki, d, &metas, seed)?;
    }
    for e in 1..=shape.edges {
        add_edge(sim, &pki, e, &metas, seed)?;
    }
    Ok(Cluster {
        meta_names,
        dist_names,
        edge_names,
        metas,
        dists,
        edges,
        pki,
    })
}

/// A metastore node, with a disk (a [`MemBackend`]) that outlives crashes of its host.
fn add_metastore(sim: &mut turmoil::Sim<'_>, name: &str, id: u64, peers: &BTreeMap<u64, String>) {
    let disk = MemBackend::default();
    let config = firetower_metastore::Config {
        id,
        peers: peers.clone(),
        data_dir: std::path::PathBuf::from(format!("/sim/meta{id}")),
        api: firetower_net::api_auth::ApiAuthConfig {
            allow_unauthenticated: true,
            ..Default::default()
        },
        // The simulated gRPC is plaintext (see `SimConnector`).
        allow_plaintext: true,
        ..firetower_metastore::Config::default()
    };
    sim.host(name, move || {
        let disk = disk.clone();
        let config = config.clone();
        async move {
            let listener =
                turmoil::net::TcpListener::bind((IpAddr::from([0, 0, 0, 0]), META_PORT)).await?;
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

fn tls_for(pki: &DevPki, identity: firetower_net::NodeIdentity) -> anyhow::Result<TlsMaterial> {
    let cert = pki.issue(identity)?;
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

/// Distributor `d` (1-based): at boot, and when one joins during faults.
pub(super) fn add_distributor(
    sim: &mut turmoil::Sim<'_>,
    pki: &DevPki,
    d: usize,
    metas: &[String],
    seed: u64,
) -> anyhow::Result<()> {
    let name = format!("dist{d}");
    let ip = sim.lookup(name.as_str());
    let tls = tls_for(
        pki,
        firetower_net::NodeIdentity::new(firetower_net::Role::Distributor, d as u64),
    )?;
    let server = tls.server_config()?;
    let config = firetower_distributor::Config {
        id: d as u64,
        metastore: metas.to_vec(),
        grpc_advertise: SocketAddr::new(ip, GRPC_PORT).to_string(),
        quic_advertise: SocketAddr::new(ip, QUIC_PORT).to_string(),
        lease_ttl_ms: 1500,
        // Small relay lane budgets, so the workload's bursts run into them (backpressure
        // from the edges' lanes to the publishers, under faults).
        lane_queue_bytes: 64 << 10,
        // The simulation checks delivery, not API keys (tests/security.rs does).
        api: firetower_distributor::ApiAuthConfig {
            allow_unauthenticated: true,
            ..Default::default()
        },
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
    let client = tls_for(
        pki,
        firetower_net::NodeIdentity::new(firetower_net::Role::Edge, e as u64),
    )?
    .client_config()?;
    let config = firetower_edge::Config {
        id: e as u64,
        metastore: metas.to_vec(),
        ws_advertise: SocketAddr::new(ip, WS_PORT).to_string(),
        lease_ttl_ms: 1500,
        heartbeat_interval_ms: 2000,
        pong_timeout_ms: 6000,
        // Small queue budgets, so the workload's bursts exceed them: a connection's queue
        // (lanes pause), the edge's total (every lane pauses) and the client publishes in
        // flight per link (publishers' sockets are not read).
        send_queue_bytes: 64 << 10,
        queue_high_bytes: 8 << 20,
        max_publishes_in_flight: 64,
        // The simulation checks delivery, not the token check (tests/security.rs does).
        auth: firetower_edge::AuthConfig {
            allow_anonymous: true,
            ..Default::default()
        },
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
