//! Deterministic simulation of a whole Firetower cluster: the real metastore, distributors
//! and edges inside turmoil, under seeded faults, checked against an oracle of what the
//! clients were told.
//!
//! # Layout
//! - [`net`]: gRPC over turmoil TCP, QUIC over turmoil UDP.
//! - [`world`]: one run: the shared context and the outer loop that steps the simulation,
//!   with one private module per job:
//!   - `world/cluster.rs`: boots the metastore, distributor and edge hosts through each
//!     crate's `run`.
//!   - `world/faults.rs`: the fault schedule (partitions, lossy links, latency, crashes and
//!     restarts, distributors joining and leaving), applied between steps.
//!   - `world/workload.rs`: the phases and the driver: publishes, clients, subscriptions,
//!     hot-topic splits and merges.
//!   - `world/clients.rs`: the WebSocket clients and the gRPC publisher, and what they
//!     record in the oracle.
//!   - `world/checks.rs`: the ownership watch, the quiet-phase checks, the leader lookup.
//! - [`oracle`]: the record of events, the trace hash, per-delivery checks.
//! - [`invariants`]: one file per invariant.
//! - [`regressions`]: the seeds that found bugs, replayed by `--regressions` (and CI).
//! - `main.rs`: `--seed N` / `--seeds A..B`.

pub mod invariants;
pub mod net;
pub mod oracle;
pub mod regressions;
pub mod world;

pub use world::{run_seed, Outcome};
