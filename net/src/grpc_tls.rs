//! gRPC over TLS: the accepting side ([`tls_incoming`], whose connections tell each request
//! who the caller is: [`PeerIdentity`]) and the dialling side ([`ClientTls`], used by the
//! connectors).
//!
//! A server's handshakes run concurrently, at most [`HANDSHAKES_IN_FLIGHT`] at once and
//! each within [`HANDSHAKE_TIMEOUT`]: a client that opens a connection and sends nothing
//! holds one place for a few seconds, not the accept loop. A failed handshake is logged
//! and counted ([`handshakes_failed`]); the server goes on.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::error::TlsError;
use crate::tls::{certs_from, client_tls, read, roots_of, NodeIdentity, Role, TlsMaterial};

/// TLS handshakes a server runs at once; more connections wait to be accepted.
pub const HANDSHAKES_IN_FLIGHT: usize = 64;
/// How long a connection has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

static HANDSHAKES_FAILED: AtomicU64 = AtomicU64::new(0);

/// TLS handshakes that failed on this process's gRPC servers (a bad or missing certificate,
/// a client that is not speaking TLS, a timeout).
pub fn handshakes_failed() -> u64 {
    HANDSHAKES_FAILED.load(Ordering::Relaxed)
}

/// Who is calling, as the connection's TLS handshake proved it. Every request on a
/// connection from [`tls_incoming`] carries it in its extensions ([`peer_identity`]); a
/// request on a connection without TLS has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<NodeIdentity>);

/// What a request's connection proved about its caller: `None` if the connection is not
/// TLS (an embedding that serves plaintext), `Some(None)` for a TLS caller without a node
/// certificate (a backend), `Some(Some(identity))` for a node.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<Option<NodeIdentity>> {
    request.extensions().get::<PeerIdentity>().map(|p| p.0)
}

/// The accepting side of gRPC over TLS.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl ServerTls {
    pub fn new(material: &TlsMaterial) -> Result<Self, TlsError> {
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(material.grpc_server()?),
        })
    }
}

/// A connection accepted over TLS.
pub struct TlsIo<IO> {
    stream: tokio_rustls::server::TlsStream<IO>,
    identity: PeerIdentity,
}

impl<IO> TlsIo<IO> {
    /// The connection under TLS.
    pub fn get_ref(&self) -> &IO {
        self.stream.get_ref().0
    }
}

impl<IO> Connected for TlsIo<IO> {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.identity
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections of `incoming` after their TLS handshakes, for
/// `tonic::transport::Server::serve_with_incoming`. Connections whose handshake fails are
/// left out; an error of `incoming` itself is passed on.
pub fn tls_incoming<S, IO, E>(
    incoming: S,
    tls: ServerTls,
) -> impl Stream<Item = Result<TlsIo<IO>, E>> + Send + 'static
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Send + 'static,
{
    incoming
        .map(move |accepted| {
            let acceptor = tls.acceptor.clone();
            async move {
                let io = match accepted {
                    Ok(io) => io,
                    Err(e) => return Some(Err(e)),
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(NodeIdentity::from_cert);
                        Some(Ok(TlsIo {
                            stream,
                            identity: PeerIdentity(identity),
                        }))
                    }
                    Ok(Err(e)) => {
                        HANDSHAKES_FAILED.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "gRPC TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        HANDSHAKES_FAILED.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("gRPC TLS handshake timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(HANDSHAKES_IN_FLIGHT)
        .filter_map(std::future::ready)
}

/// The dialling side of gRPC over TLS: checks the server's certificate against the CA and
/// the role it dials, and presents this node's certificate if it has one.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// A node's: presents its certificate.
    pub fn node(material: &TlsMaterial) -> Result<Self, TlsError> {
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(material.grpc_client()?),
        })
    }

    /// A backend's or the CLI's: trusts the CA in `ca_file`, presents no certificate.
    pub fn trusting(ca_file: &Path) -> Result<Self, TlsError> {
        let ca = certs_from(&read(ca_file)?, ca_file)?;
        let tls = client_tls(roots_of(&ca)?, None, crate::tls::GRPC_ALPN)?;
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }

    /// Runs the handshake on `io`, a connection to a node of `role`.
    pub async fn handshake<IO>(
        &self,
        io: IO,
        role: Role,
    ) -> io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector.connect(role.server_name(), io).await
    }
}

/// Who a request's connection says its caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The connection is not TLS: an embedding serves plaintext, and only API keys hold.
    Plaintext,
    /// TLS without a node certificate: a backend or the CLI.
    Anonymous,
    Node(NodeIdentity),
}

impl Caller {
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        match peer_identity(request) {
            None => Caller::Plaintext,
            Some(None) => Caller::Anonymous,
            Some(Some(node)) => Caller::Node(node),
        }
    }

    /// Ok if the caller is a node that `allowed` accepts, or the connection is plaintext
    /// (no identity to check); PERMISSION_DENIED naming `what` otherwise.
    pub fn require_node(
        self,
        what: &str,
        allowed: impl FnOnce(NodeIdentity) -> bool,
    ) -> Result<(), tonic::Status> {
        match self {
            Caller::Plaintext => Ok(()),
            Caller::Anonymous => Err(tonic::Status::permission_denied(format!(
                "{what}: only a cluster member may call this, with its node certificate"
            ))),
            Caller::Node(node) if allowed(node) => Ok(()),
            Caller::Node(node) => Err(tonic::Status::permission_denied(format!(
                "{what}: not allowed for {node}, as its certificate says"
            ))),
        }
    }
}
