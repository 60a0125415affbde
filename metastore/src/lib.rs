//! The Firetower metastore: the Raft-replicated routing truth.
//!
//! Three (or five) nodes run openraft over a sled-backed log and state machine. The state
//! is the member list with leases, slot → owning distributor (with an epoch that fences
//! stale owners), slot → edges with subscribers there, and the hot-topic table; every
//! applied change bumps a revision that watchers follow.
//!
//! # Layout
//! - [`state`]: the replicated state and its pure `apply` (no clock, no I/O).
//! - [`lease`]: the leader's lease deadlines, sans-IO.
//! - [`store`]: the [`store::Backend`] trait (sled, in-memory) and openraft's log store and
//!   state machine over it.
//! - [`network`]: Raft RPC over tonic (channels from [`firetower_net::Channels`]).
//! - [`service`]: the gRPC API (writes, forwarding, linearizable reads, watch, status).
//! - [`node`]: [`run`], which wires it all to a listener, a connector, storage and shutdown;
//!   [`run_with_ops`] and [`run_tcp_with_ops`] also serve the operations endpoints.
//! - [`metrics`]: the Prometheus metrics (Raft's term, leader and indexes, apply and fsync
//!   latency, members, watch streams) and `/metrics`, `/healthz`, `/readyz`.
//!
//! The client side (used by distributors, edges, the CLI) is `firetower_net::meta_client`:
//! a role that only talks to the metastore does not link openraft or sled.
//! - [`runtime`]: openraft's runtime (tokio) with a seedable random-number generator.
//! - `tracked` (private): what `run` waits for before it returns — a node's tasks (openraft's
//!   included), its storage handles, its connections.
//! - [`config`], [`error`], [`types`].

pub mod config;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod network;
pub mod node;
pub mod runtime;
pub mod service;
pub mod state;
pub mod store;
mod tracked;
pub mod types;

pub use config::{parse_peers, Config};
pub use error::{ApiError, BackendError, ConfigError, NodeError};
pub use node::{run, run_with_ops};
pub use store::{Backend, MemBackend, SledBackend};

/// Runs a node on a bound TCP listener with sled storage in `config.data_dir`: what the
/// `firetower metastore` command does. Every connection is TLS with `config.tls` (unless
/// `config.allow_plaintext`). When it returns, the data dir is closed and unlocked: a node
/// can be started on it again at once.
pub async fn run_tcp(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    run_tcp_with_ops(config, listener, None, shutdown).await
}

/// [`run_tcp`], also serving `/metrics`, `/healthz` and `/readyz` on `ops` when given (see
/// [`run_with_ops`]): what `firetower metastore` does with `metrics_listen`.
pub async fn run_tcp_with_ops(
    config: Config,
    listener: tokio::net::TcpListener,
    ops: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate()?;
    let incoming = firetower_net::accept_nodelay(listener);
    if config.allow_plaintext && !config.tls.is_set() {
        tracing::warn!(id = config.id, "serving plaintext gRPC (allow_plaintext)");
        let backend = SledBackend::open(&config.data_dir)?;
        return run_with_ops(
            config,
            incoming,
            firetower_net::TcpConnector::default(),
            backend,
            ops,
            shutdown,
        )
        .await;
    }
    let material = firetower_net::TlsMaterial::load(&config.tls)?;
    material.require_identity(firetower_net::NodeIdentity::new(
        firetower_net::Role::Metastore,
        config.id,
    ))?;
    let server = firetower_net::ServerTls::new(&material)?;
    let connector = firetower_net::TcpConnector::tls(firetower_net::ClientTls::node(&material)?);
    let backend = SledBackend::open(&config.data_dir)?;
    run_with_ops(
        config,
        firetower_net::tls_incoming(incoming, server),
        connector,
        backend,
        ops,
        shutdown,
    )
    .await
}
