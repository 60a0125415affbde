//! The real components' network, simulated: gRPC over turmoil TCP, QUIC over turmoil UDP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// Dials gRPC over turmoil's TCP. Addresses are `ip:port` of simulated hosts. Plaintext:
/// the simulated gRPC carries no TLS (the relay's QUIC does), so the servers' identity checks
/// are not exercised here (tests/security.rs covers them).
#[derive(Clone, Debug, Default)]
pub struct SimConnector;

impl firetower_net::Connector for SimConnector {
    fn channel(&self, addr: &str, _server: firetower_net::Role) -> Result<Channel, String> {
        let target: SocketAddr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr:?}: {e}"))?
            .connect_timeout(std::time::Duration::from_millis(500))
            // turmoil's TCP drops segments during a partition and never retransmits, so a
            // connection that crossed a partition is dead: HTTP/2 pings find it.
            .http2_keep_alive_interval(std::time::Duration::from_secs(1))
            .keep_alive_timeout(std::time::Duration::from_secs(1))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(tower::service_fn(
            move |_: tonic::transport::Uri| async move {
                let stream = turmoil::net::TcpStream::connect(target).await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            },
        )))
    }
}

/// An accepted simulated TCP connection, as tonic and the edge want it.
pub struct SimStream(pub turmoil::net::TcpStream);

impl firetower_edge::PeerIp for SimStream {
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.0.peer_addr().ok().map(|a| a.ip())
    }
}

impl Connected for SimStream {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The accepted connections of a simulated listener, as a stream.
pub fn incoming(
    listener: turmoil::net::TcpListener,
) -> Pin<Box<dyn Stream<Item = io::Result<SimStream>> + Send>> {
    Box::pin(futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(s, _)| SimStream(s));
        Some((next, listener))
    }))
}

type ReadableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// quinn's socket over a turmoil UDP socket.
pub struct SimUdp {
    socket: Arc<turmoil::net::UdpSocket>,
    /// The pending wait for readability, kept across polls.
    readable: Mutex<Option<ReadableFuture>>,
}

impl std::fmt::Debug for SimUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimUdp").finish()
    }
}

impl SimUdp {
    pub fn new(socket: turmoil::net::UdpSocket) -> Self {
        SimUdp {
            socket: Arc::new(socket),
            readable: Mutex::new(None),
        }
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for SimUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        // One datagram per transmit (max_transmit_segments is 1). A full simulated queue
        // drops it, as a real network would.
        match self
            .socket
            .try_send_to(transmit.contents, transmit.destination)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            match self.socket.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *meta = quinn::udp::RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let mut slot = self.readable.lock().unwrap_or_else(|p| p.into_inner());
            let fut = slot.get_or_insert_with(|| {
                let socket = self.socket.clone();
                Box::pin(async move { socket.readable().await })
            });
            match fut.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    *slot = None;
                    r?;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
