//! The Firetower distributor: takes publishes over gRPC for the slots it owns, sequences
//! them per topic as `(epoch, seq)` and relays them over QUIC to the edges that need them.
//!
//! **Not built yet.** This crate exists so the workspace has its final shape; the data-path
//! issue fills it in. Its wire formats are already defined in `firetower-proto`
//! (`distributor.proto`, `relay.proto`).
//!
//! # Layout
//! - (planned) `sequencer`: the sans-IO sequencing and fan-out core.
//! - (planned) `service`: the gRPC `Distributor` service.
//! - (planned) `relay`: the relay transport trait and its QUIC implementation.
//! - (planned) `slot_view`: the watch-fed cache of the metastore's slot map.
