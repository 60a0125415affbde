//! Channels between nodes: the [`Connector`] the simulator injects, a per-address channel
//! cache, and the accepted-connection stream every gRPC server uses.
//!
//! Real nodes dial TCP ([`TcpConnector`]); `sim/` passes a connector over turmoil's
//! network. Every node-to-node call (Raft, the metastore API, distributor forwarding,
//! edge → distributor) gets its channel from here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The connections a gRPC server accepts from `listener`, with Nagle's algorithm off:
/// replies are small and latency-bound, and a delayed ACK would hold each one back for
/// tens of milliseconds.
pub fn accept_nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |stream| {
            if let Ok(s) = &stream {
                let _ = s.set_nodelay(true);
            }
            stream
        },
    )
}

/// Makes a gRPC channel to an address. Real nodes dial TCP ([`TcpConnector`]); the
/// simulator passes a connector over its own network.
pub trait Connector: Clone + Send + Sync + 'static {
    /// A lazily connecting channel to `addr` (host:port).
    fn channel(&self, addr: &str) -> Result<Channel, String>;
}

/// Dials plain TCP.
#[derive(Clone, Debug)]
pub struct TcpConnector {
    /// Bound on one connection attempt, so a dead peer fails fast instead of hanging a call.
    pub connect_timeout: Duration,
}

impl Default for TcpConnector {
    fn default() -> Self {
        TcpConnector {
            connect_timeout: Duration::from_millis(500),
        }
    }
}

impl Connector for TcpConnector {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr:?}: {e}"))?;
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A connection that silently stopped carrying bytes (a peer that vanished, a
            // network that dropped state) is found by HTTP/2 pings and replaced, so calls
            // and watch streams do not hang on it forever.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .connect_lazy())
    }
}

/// One channel per peer address, shared by Raft and forwarding. Bounded by the number of
/// distinct addresses the membership and configuration name.
#[derive(Clone)]
pub struct Channels<C: Connector> {
    connector: C,
    cache: Arc<Mutex<HashMap<String, Channel>>>,
}

impl<C: Connector> Channels<C> {
    /// An empty cache over `connector`.
    pub fn new(connector: C) -> Self {
        Channels {
            connector,
            cache: Arc::default(),
        }
    }

    /// The channel to `addr`, made on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = cache.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self.connector.channel(addr)?;
        cache.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
