//! Delivered as published: a delivery's `data` parses, names a message that was
//! published, and is exactly that message's payload (its id, publisher, publisher number,
//! topic and padding), and the delivery carries the topic the message was published to.
//!
//! Guards the byte path end to end: the edge's and distributor's framing and re-framing of
//! a payload (split topics' sub-topic names mapped back to the client's topic, the frame
//! built once per message and shared by its subscribers, batches of deliveries on one
//! relay lane), which the other invariants only see through the message id.

use crate::oracle::Oracle;

pub const NAME: &str = "delivered as published (topic and payload)";

/// The message id a delivery of `topic` with `data` names (0 if none), and whether it is
/// what was published under that id (the error says how not).
pub fn check(oracle: &Oracle, topic: &str, data: &str) -> (u64, Result<(), String>) {
    let value = match serde_json::from_str::<serde_json::Value>(data) {
        Ok(v) => v,
        Err(e) => return (0, Err(format!("data does not parse ({e}): {}", cut(data)))),
    };
    let Some(id) = value["id"].as_u64() else {
        return (0, Err(format!("data names no message id: {}", cut(data))));
    };
    let Some(record) = oracle.publish(id) else {
        return (id, Err(format!("#{id} was never published: {}", cut(data))));
    };
    if record.topic != topic {
        return (
            id,
            Err(format!(
                "#{id} was published to {}, not {topic} (by {}, number {})",
                record.topic, record.publisher, record.n
            )),
        );
    }
    // The payload may come back re-serialized: compare values, not bytes, when the bytes
    // differ.
    if data != record.payload
        && serde_json::from_str::<serde_json::Value>(&record.payload).ok() != Some(value)
    {
        return (
            id,
            Err(format!(
                "#{id} arrived with data {} but was published with {}",
                cut(data),
                cut(&record.payload)
            )),
        );
    }
    (id, Ok(()))
}

/// The start of a long payload, for a message.
fn cut(s: &str) -> String {
    const SHOWN: usize = 120;
    match s.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}… ({} bytes)", &s[..at], s.len()),
        None => s.to_string(),
    }
}
