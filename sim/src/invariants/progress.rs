//! Progress in quiet windows: a quiet phase does work, so its completeness check is not
//! passed vacuously. At the end of each quiet phase:
//! - at least one gRPC publish was acknowledged in the window;
//! - at least one (publish of the window, subscribed client) pair was checked by
//!   completeness, i.e. some client held an acked subscription to a topic published in the
//!   window;
//! - if clients asked to subscribe during the phase's settle part, at least one
//!   `subscribed` ack came in the phase.
//!
//! Guards liveness after faults heal: a cluster that acknowledges nothing (every publish
//! failing or timing out, every subscribe timing out) would otherwise pass every other
//! check of the phase.

use std::time::Duration;

use super::completeness::Covered;
use crate::oracle::Oracle;

pub const NAME: &str = "progress in quiet windows";

/// Checks the quiet phase that started at `phase_start` and whose window is
/// `[window_start, window_end)`, given what completeness `covered`.
pub fn check(
    oracle: &mut Oracle,
    phase_start: Duration,
    window: (Duration, Duration),
    covered: Covered,
    now: Duration,
) {
    let (window_start, window_end) = window;
    let span = format!("window {window_start:?}..{window_end:?}");
    if covered.grpc == 0 {
        let sent = oracle
            .publishes
            .iter()
            .filter(|p| {
                matches!(p.publisher, crate::oracle::Publisher::Grpc(_))
                    && window_start <= p.sent
                    && p.sent < window_end
            })
            .count();
        oracle.violate(
            now,
            NAME,
            format!("{span}: none of the {sent} gRPC publishes sent was acknowledged in it"),
        );
        return;
    }
    if covered.pairs == 0 {
        let connected = oracle.clients.iter().filter(|c| c.connected).count();
        let subscribed = oracle
            .clients
            .iter()
            .filter(|c| c.connected && !c.subscribed.is_empty())
            .count();
        oracle.violate(
            now,
            NAME,
            format!(
                "{span}: no client held an acked subscription to a topic published in it \
                 ({} gRPC and {} client publishes had to arrive; {connected} clients \
                 connected, {subscribed} of them subscribed to something)",
                covered.grpc, covered.client
            ),
        );
        return;
    }
    let asked = oracle
        .subscribe_sent
        .iter()
        .filter(|t| phase_start <= **t && **t < window_start)
        .count();
    let acked = oracle
        .subscribe_acked
        .iter()
        .filter(|t| phase_start <= **t && **t < window_end)
        .count();
    if asked > 0 && acked == 0 {
        oracle.violate(
            now,
            NAME,
            format!(
                "quiet phase from {phase_start:?}: {asked} subscribes sent before the window, \
                 no subscribe acked by its end"
            ),
        );
    }
}
