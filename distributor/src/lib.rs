//! The Firetower distributor: takes publishes over gRPC for the slots it owns (forwarding
//! the rest), gives each topic a sequence `(epoch, seq)`, and relays each message over
//! QUIC to exactly the edges that need it.
//!
//! # Layout
//! - [`core`]: the sans-IO decisions (ownership, sequencing, interest, edge choice).
//! - [`service`]: the gRPC API (Publish, PublishBatch, TopicStatus) with forwarding.
//! - [`node`]: [`run`], the async shell wiring gRPC, QUIC, the metastore and the core;
//!   [`run_udp_with_ops`] and [`run_with_ops`] also serve the operations endpoints.
//! - [`metrics`]: the Prometheus metrics (a collector over [`Counters`] and the node's
//!   view) and the operations endpoints (`/metrics`, `/healthz`, `/readyz`, `/topics`).
//!
//! Relay stream I/O, TLS material and the metastore client come from `firetower-net`.
//! - [`config`], [`error`].

pub use firetower_net::api_auth as api;
pub mod config;
pub mod core;
pub mod error;
pub mod metrics;
pub mod node;
pub mod service;

pub use api::{ApiAuthConfig, ApiKeyEntry, Scope};
pub use config::Config;
pub use error::{ConfigError, NodeError, TlsError};
pub use node::{
    run, run_udp, run_udp_with_counters, run_udp_with_ops, run_with_counters, run_with_ops,
    Counters,
};
