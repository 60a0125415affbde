//! Raft RPC over tonic.
//!
//! openraft's request and response types travel as JSON inside `RaftRequest.payload`
//! (`proto/raft.proto`): openraft owns their shape. Channels come from
//! [`firetower_net::Channels`], whose [`Connector`] decides how a channel reaches an
//! address — plain TCP for real nodes, the simulator's network in `sim/`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use firetower_net::api_auth::{ApiAuth, Scope};
use firetower_net::{ApiKey, Channels, Connector};
use firetower_net::{Caller, Role};
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
use openraft::{BasicNode, LogId, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::types::{Raft, TypeConfig};

/// openraft's network factory: a client per target node.
pub struct Network<C: Connector> {
    pub(crate) channels: Channels<C>,
    pub(crate) cluster: String,
    pub(crate) from: u64,
    /// The key this node presents to its peers (a `member` key of theirs).
    pub(crate) key: ApiKey,
}

impl<C: Connector> RaftNetworkFactory<TypeConfig> for Network<C> {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            channel: self.channels.get(&node.addr),
            cluster: self.cluster.clone(),
            from: self.from,
            key: self.key.clone(),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerClient {
    target: u64,
    channel: Result<Channel, String>,
    cluster: String,
    from: u64,
    key: ApiKey,
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
        self.key.attach(&mut request);
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
    /// The configured voters (`Config::peers`): the only nodes whose Raft RPCs are taken.
    pub(crate) voters: BTreeSet<u64>,
    /// Whether this node has a vote or any log; read by a peer deciding whether to
    /// initialize the cluster.
    pub(crate) has_state: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Who may call: members only (`member` scope).
    pub(crate) auth: Arc<ApiAuth>,
}

impl RaftService {
    /// Over TLS, a Raft message comes from the metastore node its certificate names, and
    /// `from` says the same.
    fn check_peer<T>(&self, request: &tonic::Request<T>, from: u64) -> Result<(), tonic::Status> {
        Caller::of(request).require_node("Raft", |node| {
            node.role == Role::Metastore && node.id == from
        })
    }

    fn wire(&self, request: &pb::RaftRequest) -> WireCheck<'_> {
        WireCheck {
            id: self.id,
            voters: &self.voters,
            from: request.from,
        }
    }
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

/// The largest term or log index taken from the wire. openraft adds to both (a candidate
/// increments its term), so a value near `u64::MAX` from a peer would overflow inside its
/// core and, once persisted, again after every restart. 2^48 elections or entries are
/// beyond any real cluster's life (9 000 years of one election per second).
pub const MAX_WIRE_TERM_OR_INDEX: u64 = 1 << 48;

/// The checks on a Raft RPC before openraft sees it: the sender is another configured
/// voter, the vote in the payload is its own, and every term and log index is in range.
pub(crate) struct WireCheck<'a> {
    pub id: u64,
    pub voters: &'a BTreeSet<u64>,
    pub from: u64,
}

impl WireCheck<'_> {
    fn sender(&self) -> Result<(), tonic::Status> {
        if self.from == self.id || !self.voters.contains(&self.from) {
            return Err(tonic::Status::permission_denied(format!(
                "from: node {} is not another voter of this cluster (voters: {:?})",
                self.from, self.voters
            )));
        }
        Ok(())
    }

    /// The vote (a candidate's, or the leader's that sends entries) is the sender's.
    fn vote(&self, field: &str, vote: &Vote<u64>) -> Result<(), tonic::Status> {
        self.sender()?;
        term(field, vote.leader_id.term)?;
        if vote.leader_id.voted_for() != Some(self.from) {
            return Err(tonic::Status::invalid_argument(format!(
                "{field}: the vote is for {:?}, not for the sender {}",
                vote.leader_id.voted_for(),
                self.from
            )));
        }
        Ok(())
    }
}

fn term(field: &str, term: u64) -> Result<(), tonic::Status> {
    if term > MAX_WIRE_TERM_OR_INDEX {
        return Err(tonic::Status::invalid_argument(format!(
            "{field}: term {term} is above the limit of {MAX_WIRE_TERM_OR_INDEX}"
        )));
    }
    Ok(())
}

fn log_id(field: &str, id: Option<&LogId<u64>>) -> Result<(), tonic::Status> {
    let Some(id) = id else {
        return Ok(());
    };
    term(field, id.leader_id.term)?;
    if id.index > MAX_WIRE_TERM_OR_INDEX {
        return Err(tonic::Status::invalid_argument(format!(
            "{field}: log index {} is above the limit of {MAX_WIRE_TERM_OR_INDEX}",
            id.index
        )));
    }
    Ok(())
}

impl WireCheck<'_> {
    pub(crate) fn append_entries(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<(), tonic::Status> {
        self.vote("vote", &rpc.vote)?;
        log_id("prev_log_id", rpc.prev_log_id.as_ref())?;
        log_id("leader_commit", rpc.leader_commit.as_ref())?;
        for (i, entry) in rpc.entries.iter().enumerate() {
            log_id(&format!("entries[{i}].log_id"), Some(&entry.log_id))?;
        }
        Ok(())
    }

    pub(crate) fn vote_request(&self, rpc: &VoteRequest<u64>) -> Result<(), tonic::Status> {
        self.vote("vote", &rpc.vote)?;
        log_id("last_log_id", rpc.last_log_id.as_ref())
    }

    pub(crate) fn install_snapshot(
        &self,
        rpc: &InstallSnapshotRequest<TypeConfig>,
    ) -> Result<(), tonic::Status> {
        self.vote("vote", &rpc.vote)?;
        log_id("meta.last_log_id", rpc.meta.last_log_id.as_ref())?;
        log_id(
            "meta.last_membership.log_id",
            rpc.meta.last_membership.log_id().as_ref(),
        )
    }
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
        self.auth.check(&request, &[Scope::Member])?;
        self.check_peer(&request, request.get_ref().from)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&self.cluster, request.get_ref())?;
        self.wire(request.get_ref()).append_entries(&rpc)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<pb::RaftRequest>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        self.auth.check(&request, &[Scope::Member])?;
        self.check_peer(&request, request.get_ref().from)?;
        let rpc: VoteRequest<u64> = decode(&self.cluster, request.get_ref())?;
        self.wire(request.get_ref()).vote_request(&rpc)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<pb::RaftRequest>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        self.auth.check(&request, &[Scope::Member])?;
        self.check_peer(&request, request.get_ref().from)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&self.cluster, request.get_ref())?;
        self.wire(request.get_ref()).install_snapshot(&rpc)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn node_info(
        &self,
        request: tonic::Request<pb::NodeInfoRequest>,
    ) -> Result<tonic::Response<pb::NodeInfoReply>, tonic::Status> {
        self.auth.check(&request, &[Scope::Member])?;
        Caller::of(&request).require_node("NodeInfo", |node| node.role == Role::Metastore)?;
        check_cluster(&self.cluster, &request.get_ref().cluster)?;
        Ok(tonic::Response::new(pb::NodeInfoReply {
            node_id: self.id,
            cluster: self.cluster.clone(),
            has_state: (self.has_state)(),
        }))
    }
}
