//! Completeness in quiet phases: every publish acknowledged in the phase's window, sent
//! after a client's subscribe ack, reaches that client if it stayed connected and
//! subscribed (and was not dropped for slowness) until the end of the phase.
//!
//! Guards interest announcement, acks only after the owner confirmed, re-announcement on
//! owner changes and reconnects, and the relay itself. Slot moves settle before the window
//! opens; see docs/architecture.md (Known limits) for why loss during moves is allowed.

use std::time::Duration;

use crate::oracle::Oracle;

pub const NAME: &str = "completeness in quiet phases";

/// Checks publishes acknowledged in `[window_start, window_end)`, at `now` (the end of
/// the drain).
pub fn check(oracle: &mut Oracle, window_start: Duration, window_end: Duration, now: Duration) {
    let mut missing = Vec::new();
    for p in &oracle.publishes {
        let Some(acked) = p.acked else { continue };
        if acked < window_start || acked >= window_end {
            continue;
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
            if !client.ids.contains(&p.id) {
                missing.push(format!(
                    "client {c} (edge {}) never got #{} on {} (sent {:?}, acked {:?}, subscribed since {:?})",
                    client.edge, p.id, p.topic, p.sent, acked, since
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
}
