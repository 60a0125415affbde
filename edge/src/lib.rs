//! The Firetower edge: the WebSocket gateway that holds client connections.
//!
//! Clients speak the Firetower JSON protocol ([`firetower_proto::client`]) over WebSocket at
//! `/ws`. The edge tells the owning distributors which topics it needs over the QUIC relay,
//! registers its slots with the metastore, and fans each delivery out to its local
//! subscribers: encoded once, queued to each connection's bounded send queue, written in
//! batches.
//!
//! # Layout
//! - [`core`]: the sans-IO decisions (subscriptions, interest, order filter, fan-out list).
//! - [`node`]: [`run`], the async shell (relay links, metastore, send queues, counters).
//! - [`ws`]: one connection: HTTP routes, the WebSocket session, hooks, the writer.
//! - `send`: WebSocket framing of outgoing frames, the bounded send queue, vectored writes.
//! - [`hooks`]: the per-connection callbacks for embedding the edge.
//! - [`config`], [`error`].

pub mod config;
pub mod core;
pub mod error;
pub mod hooks;
pub mod node;
mod send;
mod ws;

pub use config::{Config, SlowPolicy};
pub use error::{ConfigError, NodeError};
pub use hooks::{AllowAll, Hooks, Identity, ReadDecision, Rejection};
pub use node::{
    run, run_tcp, Counters, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_KICKED, CLOSE_SLOW_CONSUMER,
};
