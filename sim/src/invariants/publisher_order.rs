//! Per-publisher order: for each (publisher, topic), the deliveries a client sees follow
//! the publisher's order, by the publisher's own numbering carried in the payload (not by
//! `(epoch, seq)`, so [`super::order`] is blind to a reordering that happened before the
//! topic's owner numbered the messages).
//!
//! What the publisher's order is, per topic:
//! - within one stream (a WebSocket connection, one `PublishBatch` call), the order the
//!   messages were sent;
//! - between two gRPC calls of one publisher, a message whose success reply came before the
//!   other was sent comes first. Calls in flight together are not ordered against each
//!   other (concurrent unary calls race by design; a streaming publish is what orders many
//!   in flight).
//!
//! A message may be missing (only quiet windows promise delivery); one that arrives must
//! not come after a message that was ordered after it.
//!
//! One exemption, a documented limit (docs/hot-topics.md, "Limits"): two gRPC calls sent
//! through different distributors within [`STALE_VIEW`] after a hot-topic route change of
//! their topic (as the driver's watch saw it), unless both were acknowledged with the same
//! route (the same number of names in the reply). While one distributor's metastore view lags
//! the change, the later call can go by the older route, and an owner that lags too cannot
//! tell; edges then hold the earlier message for the new route and pass the later one at
//! once. Calls through one distributor, streams and WebSocket publishes are checked in
//! full, and so are calls through different distributors away from route changes.
//!
//! Guards the publish paths that bypass the owner's lock order: forwarding a not-owned
//! topic, a split topic's fan-out to its sub-topics, client publishes passed on by the
//! edge, retries, slot moves and hot-topic route changes.

use std::time::Duration;

use crate::oracle::{ClientRecord, Latest, PublishRecord};

pub const NAME: &str = "per-publisher order";

/// How long after a route change a distributor's view may still lag it here: partitions
/// and metastore crashes in a fault phase last seconds, and a watch catches up after them.
pub const STALE_VIEW: Duration = Duration::from_secs(10);

/// Checks the delivery of `record` to `client` against what the client got before from
/// the same publisher and topic, and remembers it.
///
/// `hot_changes`: when the driver's watch saw the topic's hot-topic route change.
pub fn check(
    client: &mut ClientRecord,
    record: &PublishRecord,
    hot_changes: &[Duration],
) -> Result<(), String> {
    let this = Latest {
        id: record.id,
        n: record.n,
        sent: record.sent,
        sent_mark: record.sent_mark,
        via: record.via,
        shards: record.shards,
    };
    let mut result = Ok(());
    let in_stream = client
        .latest_in_stream
        .entry((record.stream, record.topic.clone()))
        .or_insert(this);
    if in_stream.n > record.n {
        result = Err(format!(
            "{} #{} (number {}) after #{} (number {}), sent after it on the same {}",
            record.publisher,
            record.id,
            record.n,
            in_stream.id,
            in_stream.n,
            stream_name(record)
        ));
    } else {
        *in_stream = this;
    }
    let latest = client
        .latest_sent
        .entry((record.publisher, record.topic.clone()))
        .or_insert(this);
    if let Some(acked) = record.acked_mark {
        let other_distributor = matches!((record.via, latest.via), (Some(a), Some(b)) if a != b);
        let after_a_change = hot_changes
            .iter()
            .any(|&t| t <= latest.sent && latest.sent - t <= STALE_VIEW);
        // Both acknowledged with the same route: no view was behind the other.
        let same_route = matches!((record.shards, latest.shards), (Some(a), Some(b)) if a == b);
        let exempt = other_distributor && after_a_change && !same_route;
        if acked < latest.sent_mark && result.is_ok() && !exempt {
            result = Err(format!(
                "{} #{} (number {}) after #{} (number {}), which was sent after #{} was acknowledged",
                record.publisher, record.id, record.n, latest.id, latest.n, record.id
            ));
        }
    }
    if record.sent_mark > latest.sent_mark {
        *latest = this;
    }
    result
}

fn stream_name(record: &PublishRecord) -> &'static str {
    match record.stream {
        crate::oracle::Stream::Call(_) => "PublishBatch call",
        crate::oracle::Stream::Conn(_) => "WebSocket connection",
    }
}
