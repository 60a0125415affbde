//! Deterministic simulation of a whole Firetower cluster under seeded faults.
//!
//! **Not built yet** (the simulation issue). What is ready for it: the metastore's
//! [`firetower_metastore::run`] takes its incoming connections, connector, storage
//! ([`firetower_metastore::MemBackend`]) and shutdown as arguments, and its decision logic
//! (`state::MetaState::apply`, `lease::LeaseTracker`) is sans-IO.
//!
//! # Layout
//! - (planned) cluster boot through each crate's `run`, the simulated network with faults,
//!   the workload, the oracle, `invariants/`, and a `sim` binary with `--seed`.
