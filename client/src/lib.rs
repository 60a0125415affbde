//! Firetower's Rust client: what an application (or the load generator, or a test) uses to
//! receive and to publish, so that the client protocol has one Rust implementation.
//!
//! ```text
//!  app ── Subscriber::subscribe(topic) ──► shell ── WebSocket ──► edge
//!      ◄── Subscriber::next_event() ──────  │  SubscriberCore (sans-IO): subscriptions,
//!                                           │  positions, the frames to send on (re)connect,
//!                                           │  what each server frame means
//!  app ── Publisher::publish(topic, data) ─────── gRPC over TLS + API key ──► distributor
//! ```
//!
//! # Layout
//! - [`subscriber`]: [`SubscriberCore`] (decisions, no I/O) and [`Subscriber`] (the task
//!   that connects, backs off, reconnects to the next edge and recovers with its positions).
//! - [`frames`]: the client frames (subscribe with `since`, unsubscribe, publish), built in
//!   one place for every Rust client: the core, the simulator's clients, the load generator.
//! - [`publisher`]: [`Publisher`]: Publish, PublishBatch and PublishStream over TLS with an
//!   API key (or over a [`firetower_net::Connector`] of the caller's: the simulator's).
//! - [`error`]: the client's [`ClientError`].

pub mod error;
pub mod frames;
pub mod publisher;
pub mod subscriber;

pub use error::ClientError;
pub use firetower_proto::client::StreamPos;
pub use publisher::{PublishMessage, Published, Publisher, PublisherConfig, StreamAnswer};
pub use subscriber::{DropReason, Event, Subscriber, SubscriberConfig, SubscriberCore};
