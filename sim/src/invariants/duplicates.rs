//! No duplicates: a client receives each message id at most once.
//!
//! Guards the dedup by `(epoch, seq)` at the edge when both the metastore fallback and an
//! announcement route a message to an edge, or when a relay link is replaced.

pub const NAME: &str = "no duplicates";
