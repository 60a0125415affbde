//! Benchmarks and the `firetower-bench` load generator.
//!
//! **Not built yet** (the benchmarks issue).
//!
//! # Layout
//! - (planned) criterion benches under `benches/`, the load generator binary, scenarios.
