//! Completeness in quiet phases: every publish of the phase's window reaches every client
//! that was subscribed (acked) to its topic before it was sent, if that client stayed
//! connected and subscribed (and was not dropped for slowness) until the end of the phase.
//! A publish of the window is
//! - over gRPC: one acknowledged in the window;
//! - from a WebSocket client: one sent in the window, by a client still connected (and not
//!   dropped for slowness) at the check, that got no error frame for its topic (or for no
//!   topic) after it: the edge answers a client publish it could not pass on with an error
//!   frame (`unavailable`, `overloaded`), and sends nothing when it could.
//!
//! Guards interest announcement, acks only after the owner confirmed, re-announcement on
//! owner changes and reconnects, client publishes passed on by the edge, and the relay
//! itself. Slot moves settle before the window opens; see docs/architecture.md (Known
//! limits) for why loss during moves is allowed.

use std::time::Duration;

use crate::oracle::{Oracle, PublishRecord, Publisher};

pub const NAME: &str = "completeness in quiet phases";

/// What a window's check covered (for [`super::progress`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Covered {
    /// Publishes of the window that had to arrive, over gRPC and from clients.
    pub grpc: usize,
    pub client: usize,
    /// (publish, subscriber) pairs checked.
    pub pairs: usize,
}

/// Whether `p` is a publish of the window `[start, end)` that had to arrive.
fn of_window(oracle: &Oracle, p: &PublishRecord, start: Duration, end: Duration) -> bool {
    match p.publisher {
        Publisher::Grpc(_) => p.acked.is_some_and(|a| start <= a && a < end),
        Publisher::Client(c) => {
            start <= p.sent
                && p.sent < end
                && !p.refused
                && oracle
                    .clients
                    .get(c)
                    .is_some_and(|r| r.connected && !r.slow)
        }
    }
}

/// Checks the publishes of the window `[window_start, window_end)`, at `now` (the end of
/// the drain).
pub fn check(
    oracle: &mut Oracle,
    window_start: Duration,
    window_end: Duration,
    now: Duration,
) -> Covered {
    let mut covered = Covered::default();
    let mut missing = Vec::new();
    for p in &oracle.publishes {
        if !of_window(oracle, p, window_start, window_end) {
            continue;
        }
        match p.publisher {
            Publisher::Grpc(_) => covered.grpc += 1,
            Publisher::Client(_) => covered.client += 1,
        }
        for (c, client) in oracle.clients.iter().enumerate() {
            let Some(since) = client.subscribed.get(&p.topic) else {
                continue;
            };
            if *since >= p.sent
                || !client.connected
                || client.slow
                || client.unsubscribing.contains_key(&p.topic)
            {
                continue;
            }
            covered.pairs += 1;
            if !client.ids.contains(&p.id) {
                let how = match p.acked {
                    Some(acked) => format!("acked {acked:?}"),
                    None => "no error frame".to_string(),
                };
                missing.push(format!(
                    "client {c} (edge {}) never got #{} on {} from {} (sent {:?}, {how}, subscribed since {:?})",
                    client.edge, p.id, p.topic, p.publisher, p.sent, since
                ));
            }
        }
    }
    let total = missing.len();
    if let Some(first) = missing.into_iter().next() {
        oracle.violate(
            now,
            NAME,
            format!("{total} deliveries missing; first: {first}"),
        );
    }
    covered
}
