//! Deterministic simulation of a whole Firetower cluster: the real metastore, distributors
//! and edges inside turmoil, under seeded faults, checked against an oracle of what the
//! clients were told.
//!
//! # Layout
//! - [`net`]: gRPC over turmoil TCP, QUIC over turmoil UDP.
//! - [`world`]: one run: hosts, fault schedule, workload driver, checks.
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
