//! The metastore replicas converge: at the end of a quiet phase all three nodes report the
//! same slot map (members, owners, epochs, interest, hot topics) at the same revision.
//!
//! Guards Raft replication, restart catch-up from the (simulated) disk and snapshot
//! installation.

use firetower_proto::metastore::v1 as pb;
use std::time::Duration;

use crate::oracle::Oracle;

pub const NAME: &str = "metastore replicas converge";

/// Compares the maps of every node; `None` entries are nodes that did not answer.
pub fn check(oracle: &mut Oracle, now: Duration, maps: &[Option<pb::SlotMap>]) {
    let answered: Vec<(usize, &pb::SlotMap)> = maps
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.as_ref().map(|m| (i + 1, m)))
        .collect();
    if answered.len() != maps.len() {
        oracle.violate(
            now,
            NAME,
            format!("only {} of {} nodes answered", answered.len(), maps.len()),
        );
        return;
    }
    let (first_node, first) = answered[0];
    for (node, map) in &answered[1..] {
        if *map != first {
            oracle.violate(
                now,
                NAME,
                format!(
                    "node {node} (revision {}) differs from node {first_node} (revision {})",
                    map.revision, first.revision
                ),
            );
            return;
        }
    }
}

/// True when every node answered with the same map (used to wait for convergence).
pub fn agreed(maps: &[Option<pb::SlotMap>]) -> bool {
    maps.iter().all(|m| m.is_some()) && maps.windows(2).all(|w| w[0] == w[1])
}
