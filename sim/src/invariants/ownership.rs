//! At most one owner per slot per epoch, and every slot owned whenever a distributor is
//! registered: checked on every revision a watcher sees, and on every node's slot map at the
//! end of each quiet phase.
//!
//! Guards the metastore's rebalancing and epochs (the fence between an old and a new owner).

use firetower_proto::metastore::v1 as pb;
use firetower_proto::routing::RoutingTable;
use firetower_proto::SLOT_COUNT;
use std::time::Duration;

use crate::oracle::Oracle;

pub const NAME: &str = "one owner per slot and epoch; every slot owned";

/// Checks the routing state a watcher has after one event (every revision it sees).
pub fn check_table(oracle: &mut Oracle, now: Duration, table: &RoutingTable) {
    let routes = (0..SLOT_COUNT).map(|slot| {
        let r = table.route(slot as u16);
        (r.distributor, r.epoch)
    });
    let source = format!("watch, revision {}", table.revision());
    check_routes(oracle, now, &source, table.distributors().len(), routes);
}

/// Records a slot map fetched from metastore node `node` and checks it.
pub fn check(oracle: &mut Oracle, now: Duration, node: usize, map: &pb::SlotMap) {
    let distributors = map
        .members
        .iter()
        .filter(|m| m.kind == pb::MemberKind::Distributor as i32)
        .count();
    let routes = map
        .slot_owner
        .iter()
        .copied()
        .zip(map.slot_epoch.iter().copied());
    check_routes(oracle, now, &format!("node {node}"), distributors, routes);
}

/// The check itself over `(owner, epoch)` per slot, in slot order, from `source`.
fn check_routes(
    oracle: &mut Oracle,
    now: Duration,
    source: &str,
    distributors: usize,
    routes: impl Iterator<Item = (u64, u64)>,
) {
    let mut conflict = None;
    let mut unowned = 0;
    for (slot, (owner, epoch)) in routes.enumerate() {
        if owner == 0 {
            unowned += 1;
            continue;
        }
        let seen = *oracle
            .owners_seen
            .entry((slot as u32, epoch))
            .or_insert(owner);
        if seen != owner && conflict.is_none() {
            conflict = Some(format!(
                "slot {slot} epoch {epoch}: owner {seen} and owner {owner} ({source})"
            ));
        }
    }
    if let Some(c) = conflict {
        oracle.violate(now, NAME, c);
    }
    if distributors > 0 && unowned > 0 {
        oracle.violate(
            now,
            NAME,
            format!(
                "{source}: {unowned} slots unowned with {distributors} distributors registered"
            ),
        );
    }
}
