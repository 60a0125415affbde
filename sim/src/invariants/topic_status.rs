//! TopicStatus converges to the true number of subscribers: at the end of a quiet phase the
//! owner's count of a topic equals the number of connected clients subscribed to it.
//!
//! Guards the edges' count updates, the owner's interest table across slot moves, link
//! drops and edge restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::oracle::Oracle;

pub const NAME: &str = "TopicStatus converges";

/// What the clients say: topic → subscribed, connected clients.
pub fn truth(oracle: &Oracle, topics: &[String]) -> BTreeMap<String, u64> {
    topics
        .iter()
        .map(|t| {
            let n = oracle
                .clients
                .iter()
                .filter(|c| {
                    c.connected && c.subscribed.contains_key(t) && !c.unsubscribing.contains_key(t)
                })
                .count() as u64;
            (t.clone(), n)
        })
        .collect()
}

pub fn check(
    oracle: &mut Oracle,
    now: Duration,
    topic: &str,
    expected: u64,
    reported: Option<u64>,
) {
    if reported != Some(expected) {
        oracle.violate(
            now,
            NAME,
            format!("{topic}: TopicStatus says {reported:?}, clients say {expected}"),
        );
    }
}
