//! Benchmarks and the `firetower-bench` load generator.
//!
//! # Layout
//! - `benches/core.rs`: criterion benches of the pure hot paths (`cargo bench -p firetower-benches`).
//! - [`rawws`]: the subscribers' WebSocket client (many frames per read, parsed in place).
//! - [`scan`]: in-place parsing of delivery frames (no allocation per delivery).
//! - [`stats`]: per-subscriber counters and latency histograms, merged into a [`stats::Report`].
//! - [`svg`]: the latency-percentile plot.
//! - `src/main.rs`: the `firetower-bench` binary (scenarios, subscribers, publishers).

pub mod rawws;
pub mod scan;
pub mod stats;
pub mod svg;
