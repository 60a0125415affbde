//! No delivery of a topic to a client that was not subscribed to it at the time: between
//! its `subscribed` ack and its `unSubscribed` ack (or disconnect).
//!
//! Guards the edge's rule that only acknowledged subscribers are in a topic's fan-out list
//! and that an ack is queued before any delivery to the new subscriber.

pub const NAME: &str = "delivered only while subscribed";
