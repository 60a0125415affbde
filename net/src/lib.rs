//! Firetower's transport: what every role shares to reach the others.
//!
//! Role crates (metastore, distributor, edge) depend on `firetower-proto` and on this crate,
//! never on each other: an edge reaches a distributor or the metastore only over the wire.
//! Nothing here makes a decision about routing or delivery; it moves bytes and holds
//! connections.
//!
//! # Layout
//! - [`api_key`]: the API key a gRPC caller presents to a distributor or the metastore.
//! - [`api_auth`]: the servers' side: hashed keys with scopes, checked on every call.
//! - [`connect`]: the [`Connector`] the simulator injects, the per-address [`Channels`]
//!   cache, and [`accept_nodelay`] for gRPC servers.
//! - [`tls`]: node identities in certificates, TLS configurations for gRPC and (feature
//!   `relay`) the relay, and a throwaway CA for `dev` and tests (feature `relay`).
//! - [`grpc_tls`]: gRPC over TLS: accepted connections that carry the caller's identity,
//!   and the dialling side the connectors use.
//! - `relay` (feature `relay`, on by default; the metastore turns it off): length-prefixed frame I/O on QUIC streams, batched writers, close codes.
//! - [`per_caller`]: limits per authenticated caller (node identity or API key).
//! - [`meta_client`]: the metastore client side: node failover, membership upkeep
//!   (register + heartbeat) and a resuming watch.
//! - [`metrics`]: the Prometheus glue every role's metrics share: a node's registry, the
//!   encoding of counters, gauges and one-label families, and the endpoints every node
//!   serves (`/metrics`, `/healthz`, `/readyz`).
//! - [`ops_http`]: a small HTTP/1.1 server for the operations endpoints (`/metrics`,
//!   `/healthz`, `/readyz`), the request-head reading and response writing the edge's
//!   WebSocket listener and `firetower dashboard` share, and a bounded GET of another
//!   node's endpoints (what the dashboard scrapes).
//! - [`rng`]: a per-thread random-number generator the simulator seeds.
//! - [`wall`]: the wall clock, read only for timestamps that decide nothing (the
//!   publish-to-delivery latency).
//! - [`tasks`]: the tasks a node spawned, so its `run` returns only once they have ended.
//! - [`error`]: [`ConfigError`], [`TlsError`], [`HeadError`], [`GetError`].

pub mod api_auth;
pub mod api_key;
pub mod connect;
pub mod error;
pub mod grpc_tls;
pub mod meta_client;
pub mod metrics;
pub mod ops_http;
pub mod per_caller;
#[cfg(feature = "relay")]
pub mod relay;
pub mod resolve;
pub mod rng;
pub mod tasks;
pub mod tls;
pub mod wall;

pub use api_key::{ApiKey, KeyedChannel};
pub use connect::{accept_nodelay, Channels, Connector, TcpConnector};
pub use error::{ConfigError, GetError, HeadError, TlsError};
pub use grpc_tls::{peer_identity, tls_incoming, Caller, ClientTls, PeerIdentity, ServerTls};
pub use meta_client::{spawn_membership, spawn_watch, LeaseConfirmed, MetaClient, Registration};
pub use tasks::Tasks;
pub use tls::{NodeIdentity, Role, TlsFiles, TlsMaterial};
