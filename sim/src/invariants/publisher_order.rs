//! Per-publisher order: for each (publisher, topic), the deliveries a client sees follow
//! the publisher's order, by the publisher's own numbering carried in the payload (not by
//! `(epoch, seq)`, which the edge renumbers for a split topic, so [`super::order`] is blind
//! to a reordering that happened before the renumbering).
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
//! Guards the publish paths that bypass the owner's lock order: forwarding a not-owned
//! topic, a split topic's fan-out to its sub-topics, client publishes passed on by the
//! edge, retries, slot moves and hot-topic route changes.

use crate::oracle::{ClientRecord, Latest, PublishRecord};

pub const NAME: &str = "per-publisher order";

/// Checks the delivery of `record` to `client` against what the client got before from
/// the same publisher and topic, and remembers it.
pub fn check(client: &mut ClientRecord, record: &PublishRecord) -> Result<(), String> {
    let this = Latest {
        id: record.id,
        n: record.n,
        sent_mark: record.sent_mark,
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
        if acked < latest.sent_mark && result.is_ok() {
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
