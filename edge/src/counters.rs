//! The edge's counters: shared with the embedder (tests, metrics, the load generator) and
//! bumped by every part of the shell. The core keeps its own ([`crate::core::CoreCounters`]).
//! [`crate::metrics`] reads both at scrape time.

use std::sync::atomic::AtomicU64;

/// Edge counters, readable from outside (tests, metrics, the load generator).
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Upgrades refused by the token or origin check (401, 403); counted in
    /// `connections_refused` too.
    pub auth_refused: AtomicU64,
    /// Subscribes and publishes refused because the token does not grant the topic.
    pub denied_by_token: AtomicU64,
    /// Frames queued to clients (deliveries, acks, errors).
    pub frames_queued: AtomicU64,
    /// Frames written to client sockets.
    pub frames_written: AtomicU64,
    /// Frames not queued because their connection was already closing (it is closed, as
    /// slow or kicked or at shutdown, and would never write them). Nothing is dropped for
    /// a connection that stays open: this stays 0 unless connections are closed.
    pub frames_dropped: AtomicU64,
    /// Bytes queued to clients and not yet written to their sockets, over all connections
    /// (a gauge; the edge-wide watermark applies to it).
    pub queued_bytes: AtomicU64,
    /// Connections closed with 4001: over their send budget for `slow_after_ms`, past the
    /// hard cap, or a write that took longer than `write_timeout_ms`.
    pub closed_slow: AtomicU64,
    /// Times a relay lane stopped reading because a connection it feeds was over its send
    /// budget or the edge's queued bytes were over the high watermark.
    pub lane_pauses: AtomicU64,
    pub closed_heartbeat: AtomicU64,
    pub closed_too_large: AtomicU64,
    /// Connections closed with 1007: a text frame that was not UTF-8.
    pub closed_bad_utf8: AtomicU64,
    /// Client frames answered with an error frame.
    pub client_errors: AtomicU64,
    /// Client frames refused with `rate_limited` (over the connection's rate limits).
    pub rate_limited: AtomicU64,
    /// Connections closed with 1008: they kept sending while refused.
    pub closed_rate_limited: AtomicU64,
    /// Connections closed with 4002: their user was kicked (KickUser).
    pub closed_kicked: AtomicU64,
    /// Connections closed with 1001 because the edge shut down.
    pub closed_shutdown: AtomicU64,
    /// Connections closed with 4003: a publish of theirs had no known outcome.
    pub closed_publish_uncertain: AtomicU64,
    /// Socket writes (each carries every frame pending at the time).
    pub writes: AtomicU64,
    pub client_publishes: AtomicU64,
    pub relay_links_up: AtomicU64,
    /// Relay links established since start (more than the distributors means reconnects).
    pub relay_links_total: AtomicU64,
}
