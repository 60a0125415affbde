//! At most one owner per slot per epoch, and every slot owned whenever a distributor is
//! registered.
//!
//! Guards the metastore's rebalancing and epochs (the fence between an old and a new owner).

use firetower_proto::metastore::v1 as pb;
use std::time::Duration;

use crate::oracle::Oracle;

pub const NAME: &str = "one owner per slot and epoch; every slot owned";

/// Records a slot map fetched from any metastore node and checks it.
pub fn check(oracle: &mut Oracle, now: Duration, node: usize, map: &pb::SlotMap) {
    let distributors = map
        .members
        .iter()
        .filter(|m| m.kind == pb::MemberKind::Distributor as i32)
        .count();
    let mut conflict = None;
    let mut unowned = 0;
    for (slot, (owner, epoch)) in map.slot_owner.iter().zip(&map.slot_epoch).enumerate() {
        if *owner == 0 {
            unowned += 1;
            continue;
        }
        let seen = oracle
            .owners_seen
            .entry((slot as u32, *epoch))
            .or_insert(*owner);
        if seen != owner && conflict.is_none() {
            conflict = Some(format!(
                "slot {slot} epoch {epoch}: owner {seen} and owner {owner} (node {node})"
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
                "node {node}: {unowned} slots unowned with {distributors} distributors registered"
            ),
        );
    }
}
