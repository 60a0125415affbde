//! The Firetower edge: the WebSocket gateway clients connect to.
//!
//! **Not built yet.** This crate exists so the workspace has its final shape; the data-path
//! issue fills it in (client protocol, hooks, bounded send queues, interest registration).
//!
//! # Layout
//! - (planned) `session` and `router`: the sans-IO connection and subscription logic.
//! - (planned) `ws`: the WebSocket shell; `upstream`: the QUIC links to distributors.
//! - (planned) `hooks`, `config`, `error`, `web/` (demo page).
