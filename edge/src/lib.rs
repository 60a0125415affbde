//! The Firetower edge: the WebSocket gateway that holds client connections.
//!
//! # Layout
//! - [`core`]: the sans-IO decisions (subscriptions, interest, order filter, fan-out).
//! - [`lib`](crate): re-exports.
pub mod core;
