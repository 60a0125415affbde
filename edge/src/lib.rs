//! The Firetower edge: the WebSocket gateway that holds client connections.
//!
//! Clients speak the Firetower JSON protocol ([`firetower_proto::client`]) over WebSocket at
//! `/ws`. The edge tells the owning distributors which topics it needs over the QUIC relay,
//! registers its slots with the metastore, and fans each delivery out to its local
//! subscribers: framed once, queued to each connection's send queue (bounded in bytes;
//! a full one slows the relay lane down rather than losing a frame), written in batches.
//!
//! # Layout
//! - [`core`]: the sans-IO decisions (subscriptions, interest, order filter, fan-out list;
//!   client publishes: numbering, the bound per link, the order across an owner change).
//!   Inputs are `handle_*` calls; every output goes into one queue ([`core::Output`]).
//! - [`flow`]: the sans-IO flow-control rules: a connection's byte budget, when it is
//!   slow, the edge-wide watermark.
//! - [`rate`]: the sans-IO per-connection rate limits (token buckets for frames and
//!   publishes; refuse, then close on abuse).
//! - [`node`]: [`run`], and `Edge`, the shell's shared handles. `Edge::apply` is the one
//!   way an input reaches the core: lock, handle, drain the outputs into one runner,
//!   unlock, wake sessions, run hooks.
//! - `sessions`: the session registry (connections, their send queues and read gates, the
//!   slow-consumer closes, kicks).
//! - `links`: the link manager (a relay link per distributor: connect with backoff, the
//!   control stream and its writer, the lane readers and their backpressure).
//! - every spawned task is tracked by `firetower_net::Tasks`, so [`run`] returns only once
//!   all have ended.
//! - `ws`: one connection: HTTP routes, the WebSocket session, the writer.
//! - `frame`: client frames on the wire (WebSocket header + JSON), a delivery's built in
//!   one allocation.
//! - `send`: the send queue (bytes counted until written) and vectored writes.
//! - [`hooks`]: the per-connection callbacks for embedding the edge.
//! - [`metrics`]: the Prometheus metrics at `/metrics` (a collector over [`Counters`] and
//!   the core's counts, and the publish-to-delivery latency histogram).
//! - [`counters`], [`config`], [`error`].
//!
//! # A delivery's bytes
//! From the QUIC read to the client's socket a delivery's payload is copied once by the
//! edge: into its client frame. The relay reader decodes frames from the `Bytes` chunks
//! QUIC hands out (the data field is a slice of them; a frame split across two chunks is
//! gathered first, one copy of that frame), the core writes the WebSocket header, the JSON
//! envelope and the data into one buffer, and every recipient's queue shares that buffer
//! until its vectored write. A delivery held back during a hot topic's route change is
//! copied once more, so as not to pin the received packet.

pub mod admission;
pub mod auth;
pub mod config;
pub mod core;
pub mod counters;
pub mod error;
pub mod flow;
mod frame;
pub mod hooks;
mod links;
pub mod metrics;
pub mod node;
pub mod rate;
mod send;
mod sessions;
mod ws;

pub use admission::PeerIp;
pub use auth::{AuthConfig, Claims, ClientAuth, Grants};
pub use config::Config;
pub use counters::Counters;
pub use error::{ConfigError, NodeError};
pub use hooks::{AllowAll, Hooks, Identity, ReadDecision, Rejection};
pub use node::{run, run_tcp, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_KICKED, CLOSE_SLOW_CONSUMER};
