//! Raft RPC over tonic, and the channels every node-to-node call uses.
//!
//! openraft's request and response types travel as JSON inside `RaftRequest.payload`
//! (`proto/raft.proto`): openraft owns their shape. The [`Connector`] decides how a channel
//! reaches an address — plain TCP for real nodes, the simulator's network in `sim/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firetower_proto::raft::v1 as pb;
use firetower_proto::raft::v1::raft_transport_client::RaftTransportClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Raft, TypeConfig};

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

/// openraft's network factory: a client per target node.
pub struct Network<C: Connector> {
    pub(crate) channels: Channels<C>,
    pub(crate) cluster: String,
    pub(crate) from: u64,
}

impl<C: Connector> RaftNetworkFactory<TypeConfig> for Network<C> {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            channel: self.channels.get(&node.addr),
            cluster: self.cluster.clone(),
            from: self.from,
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerClient {
    target: u64,
    channel: Result<Channel, String>,
    cluster: String,
    from: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .channel
            .clone()
            .map_err(|e| Unreachable::new(&TransportError(e)))?;
        let payload = serde_json::to_vec(request).map_err(|e| NetworkError::new(&e))?;
        let mut request = tonic::Request::new(pb::RaftRequest {
            cluster: self.cluster.clone(),
            from: self.from,
            payload: payload.into(),
        });
        request.set_timeout(ttl);
        let mut client = RaftTransportClient::new(channel);
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&TransportError(status.to_string())))
            }
            _ => RPCError::Network(NetworkError::new(&TransportError(status.to_string()))),
        })?;
        let result: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&reply.into_inner().payload)
                .map_err(|e| NetworkError::new(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Method::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Method::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }
}

/// The server side of the Raft transport.
pub struct RaftService {
    pub(crate) raft: Raft,
    pub(crate) cluster: String,
    pub(crate) id: u64,
    /// Whether this node has a vote or any log; read by a peer deciding whether to
    /// initialize the cluster.
    pub(crate) has_state: Arc<dyn Fn() -> bool + Send + Sync>,
}

fn check_cluster(ours: &str, theirs: &str) -> Result<(), tonic::Status> {
    if ours != theirs {
        return Err(tonic::Status::failed_precondition(format!(
            "cluster: this node belongs to {ours:?}, the request came from {theirs:?}"
        )));
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(
    cluster: &str,
    request: &pb::RaftRequest,
) -> Result<T, tonic::Status> {
    check_cluster(cluster, &request.cluster)?;
    serde_json::from_slice(&request.payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
    let payload = serde_json::to_vec(value).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(pb::RaftReply {
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<pb::RaftRequest>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&self.cluster, request.get_ref())?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<pb::RaftRequest>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let rpc: VoteRequest<u64> = decode(&self.cluster, request.get_ref())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<pb::RaftRequest>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&self.cluster, request.get_ref())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn node_info(
        &self,
        request: tonic::Request<pb::NodeInfoRequest>,
    ) -> Result<tonic::Response<pb::NodeInfoReply>, tonic::Status> {
        check_cluster(&self.cluster, &request.get_ref().cluster)?;
        Ok(tonic::Response::new(pb::NodeInfoReply {
            node_id: self.id,
            cluster: self.cluster.clone(),
            has_state: (self.has_state)(),
        }))
    }
}
