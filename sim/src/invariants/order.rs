//! Per-topic order: each client sees `(epoch, seq)` strictly increasing per topic.
//!
//! Guards the edge's order filter and the distributor's sequencing under one lock with lane
//! enqueueing: a slot move (new epoch) or two owners sending during a move must never
//! make a client see an older message after a newer one.

pub const NAME: &str = "per-topic order";
