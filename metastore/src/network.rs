//! Raft RPC over tonic.
//!
//! openraft's request and response types travel as JSON inside `RaftRequest.payload`
//! (`proto/raft.proto`): openraft owns their shape. Channels come from
//! [`firetower_net::Channels`], whose [`Connector`] decides how a channel reaches an
//! address — plain TCP for real nodes, the simulator's network in `sim/`.

use std::sync::Arc;
use std::time::Duration;

use firetower_net::{Channels, Connector};
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
use tonic::transport::Channel;

use crate::types::{Raft, TypeConfig};

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
