//! TopicStatus converges to the true number of subscribers: at the end of a quiet phase the
//! owner's count of a topic equals the number of connected clients subscribed to it.
//!
//! Guards the edges' count updates, the owner's interest table across slot moves, link
//! drops and edge restarts. For a split (hot) topic the distributor answers with the sum
//! over edges of each edge's count on the topic's sub-topics (the larger of two routes while
//! a change is under way); the truth is still the clients subscribed to the topic itself,
//! so the check holds unchanged and also guards that sum and interest across route changes.

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
