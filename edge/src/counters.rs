//! The edge's counters: shared with the embedder (tests, metrics, the load generator) and
//! bumped by every part of the shell. The core keeps its own ([`crate::core::CoreCounters`]).

use std::sync::atomic::AtomicU64;

/// Edge counters, readable from outside (tests, metrics, the load generator).
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Frames queued to clients (deliveries, acks, errors).
    pub frames_queued: AtomicU64,
    /// Frames dropped because a send queue was full.
    pub frames_dropped: AtomicU64,
    pub closed_slow: AtomicU64,
    pub closed_heartbeat: AtomicU64,
    pub closed_too_large: AtomicU64,
    /// Client frames answered with an error frame.
    pub client_errors: AtomicU64,
    /// Socket writes (each carries every frame pending at the time).
    pub writes: AtomicU64,
    pub client_publishes: AtomicU64,
    pub relay_links_up: AtomicU64,
    /// Relay links established since start (more than the distributors means reconnects).
    pub relay_links_total: AtomicU64,
}
