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

use crate::grpc_tls::ClientTls;
use crate::tls::Role;

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
    /// A lazily connecting channel to `addr` (host:port), a node of role `server` (over
    /// TLS, the server's certificate must carry that role's name).
    fn channel(&self, addr: &str, server: Role) -> Result<Channel, String>;
}

/// Dials TCP, with TLS when it has a [`ClientTls`].
#[derive(Clone, Debug)]
pub struct TcpConnector {
    /// Bound on one connection attempt, so a dead peer fails fast instead of hanging a call.
    pub connect_timeout: Duration,
    /// Bound on each call (None: the caller's, or none).
    pub request_timeout: Option<Duration>,
    /// None: plaintext (only towards servers an embedding runs without TLS).
    pub tls: Option<ClientTls>,
}

impl Default for TcpConnector {
    fn default() -> Self {
        TcpConnector {
            connect_timeout: Duration::from_millis(500),
            request_timeout: None,
            tls: None,
        }
    }
}

impl TcpConnector {
    /// A connector that speaks TLS.
    pub fn tls(tls: ClientTls) -> Self {
        TcpConnector {
            tls: Some(tls),
            ..TcpConnector::default()
        }
    }
}

impl Connector for TcpConnector {
    fn channel(&self, addr: &str, server: Role) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr:?}: {e}"))?;
        if let Some(timeout) = self.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A connection that silently stopped carrying bytes (a peer that vanished, a
            // network that dropped state) is found by HTTP/2 pings and replaced, so calls
            // and watch streams do not hang on it forever.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        // Our own connectors, with or without TLS: the name is resolved on every
        // (re)connect, through the hosts override when there is one (crate::resolve).
        let addr = addr.to_string();
        let timeout = self.connect_timeout;
        let Some(tls) = self.tls.clone() else {
            return Ok(endpoint.connect_with_connector_lazy(tower::service_fn(
                move |_: tonic::transport::Uri| {
                    let addr = addr.clone();
                    async move {
                        let tcp = tokio::time::timeout(timeout, crate::resolve::connect_tcp(&addr))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    format!(
                                        "{addr}: no connection within {} ms",
                                        timeout.as_millis()
                                    ),
                                )
                            })??;
                        tcp.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
                    }
                },
            )));
        };
        Ok(endpoint.connect_with_connector_lazy(tower::service_fn(
            move |_: tonic::transport::Uri| {
                let (tls, addr) = (tls.clone(), addr.clone());
                async move {
                    let connect = async {
                        let tcp = crate::resolve::connect_tcp(&addr).await?;
                        tcp.set_nodelay(true)?;
                        tls.handshake(tcp, server).await
                    };
                    match tokio::time::timeout(timeout, connect).await {
                        Ok(stream) => stream.map(hyper_util::rt::TokioIo::new),
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "{addr}: no TLS connection within {} ms",
                                timeout.as_millis()
                            ),
                        )),
                    }
                }
            },
        )))
    }
}

/// One channel per peer address, shared by Raft and forwarding. Bounded by the number of
/// distinct addresses the membership and configuration name.
#[derive(Clone)]
pub struct Channels<C: Connector> {
    connector: C,
    server: Role,
    cache: Arc<Mutex<HashMap<String, Channel>>>,
}

impl<C: Connector> Channels<C> {
    /// An empty cache over `connector`, of channels to nodes of role `server`.
    pub fn new(connector: C, server: Role) -> Self {
        Channels {
            connector,
            server,
            cache: Arc::default(),
        }
    }

    /// The channel to `addr`, made on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = cache.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self.connector.channel(addr, self.server)?;
        cache.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
