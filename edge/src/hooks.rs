//! Hooks for embedding the edge as a library: the original Firetower's per-connection
//! callbacks. Every method has an allow-all default.
//!
//! Hooks run on the connection's task, synchronously; a hook that must wait for something
//! (an HTTP auth service, say) should keep that short or answer from a cache.

use tokio_tungstenite::tungstenite::http;

/// Who a connection is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    pub user_id: String,
    /// The topics it may subscribe to and publish on: its token's, or every topic (an
    /// anonymous connection, or an identity an embedder's hook made).
    pub grants: std::sync::Arc<crate::auth::Grants>,
}

/// A refused connection: the HTTP status and a reason for the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

/// What to do with a client publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadDecision {
    Allow,
    /// Refuse it; the client gets an error frame `denied` with this message.
    Deny(String),
    /// Publish this instead. `data` must be one JSON value.
    Rewrite {
        topic: String,
        data: String,
    },
}

/// The per-connection callbacks.
pub trait Hooks: Send + Sync + 'static {
    /// The HTTP upgrade request. `conn` is the edge-local connection number. The default
    /// names the client `edge-conn-<conn>` and takes the user id from a `user` query
    /// parameter (empty when absent).
    fn on_connect(&self, conn: u64, request: &http::Request<()>) -> Result<Identity, Rejection> {
        let user_id = request
            .uri()
            .query()
            .and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("user=").map(str::to_string))
            })
            .unwrap_or_default();
        Ok(Identity {
            client_id: format!("edge-conn-{conn}"),
            user_id,
            grants: Default::default(),
        })
    }

    /// Filters the topics of a subscribe: the ones returned are subscribed, the others
    /// are refused with an error frame `denied`.
    fn before_subscribe(&self, _who: &Identity, topics: Vec<String>) -> Vec<String> {
        topics
    }

    /// The topics are now subscribed (after the ack went out).
    fn on_subscribe(&self, _who: &Identity, _topics: &[String]) {}

    /// The topics are no longer subscribed (an unsubscribe, or a disconnect).
    fn on_unsubscribe(&self, _who: &Identity, _topics: &[String]) {}

    /// A client publish.
    fn on_read(&self, _who: &Identity, _topic: &str, _data: &str) -> ReadDecision {
        ReadDecision::Allow
    }

    /// The client sent nothing (not even a pong) within the pong timeout; the connection
    /// is closed next.
    fn on_read_timeout(&self, _who: &Identity) {}

    /// The connection is gone (after on_unsubscribe for its topics).
    fn on_offline(&self, _who: &Identity) {}
}

/// The allow-all hooks.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Hooks for AllowAll {}
