//! The metastore gRPC API.
//!
//! Writes are proposed to Raft on the leader; a follower forwards the call once to the
//! leader it knows (marking it so that it is never forwarded twice). Heartbeats go to the
//! leader too, because leases are its soft state. `GetSlotMap{linearizable}` reads through
//! the leader after `ensure_linearizable`; other reads and `Watch` are served by any node
//! from its applied state, in revision order.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firetower_proto::metastore::v1 as pb;
use firetower_proto::metastore::v1::metastore_client::MetastoreClient;
use firetower_proto::topic::{validate_topic, MAX_SHARDS, MIN_SHARDS};
use firetower_proto::{Slot, SLOT_COUNT};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::ApiError;
use crate::lease::{LeaseTracker, Registration};
use crate::state::{Command, MemberKind, Response as CommandResponse};
use crate::store::{Catchup, SmShared};
use crate::tracked::Tasks;
use crate::types::Raft;
use firetower_net::api_auth::{ApiAuth, Scope};
use firetower_net::{Caller, Channels, Connector, Role};

/// What members call: registration, leases, interest, hot-topic acks.
const MEMBERS: &[Scope] = &[Scope::Member];
/// What operators may call too: reads, and splitting or merging a hot topic.
const MEMBERS_AND_ADMINS: &[Scope] = &[Scope::Member, Scope::Admin];

/// Metadata set on a request a follower forwards, so the leader never forwards it again.
const FORWARDED: &str = "firetower-forwarded";

/// The most named addresses a member may register, and the longest name or address.
const MAX_ADDRS: usize = 16;
const MAX_ADDR_LEN: usize = 256;

/// What the API needs of its node.
pub(crate) struct NodeContext<C: Connector> {
    pub(crate) config: Config,
    pub(crate) raft: Raft,
    pub(crate) sm: Arc<SmShared>,
    pub(crate) channels: Channels<C>,
    pub(crate) leases: Arc<Mutex<LeaseTracker>>,
    /// Becomes true when the node stops; watch streams end then.
    pub(crate) stopping: watch::Receiver<bool>,
    /// Permits for concurrent watch streams (`config.max_watchers`).
    pub(crate) watchers: Arc<tokio::sync::Semaphore>,
    /// Watch streams per caller (`config.max_watchers_per_caller`).
    pub(crate) watchers_per_caller: Arc<firetower_net::per_caller::PerCaller>,
    /// Spawns the watch streams' tasks as tasks of the node, which `run` waits for. Holding
    /// it counts too: `run` returns once no part of the node can start a task any more.
    pub(crate) tasks: Tasks,
    /// Who may call (`config.api`).
    pub(crate) auth: Arc<ApiAuth>,
}

/// The API service of one node.
pub struct MetastoreService<C: Connector> {
    pub(crate) node: Arc<NodeContext<C>>,
}

impl<C: Connector> NodeContext<C> {
    /// Where a leader-only request must go: `None` to serve it here, or a client of the
    /// leader.
    fn leader_route<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<MetastoreClient<Channel>>, ApiError> {
        let (leader, addr) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let leader = metrics.current_leader;
            let addr = leader.and_then(|id| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            });
            (leader, addr)
        };
        match leader {
            Some(id) if id == self.config.id => Ok(None),
            Some(id) if request.metadata().contains_key(FORWARDED) => {
                Err(ApiError::Unavailable(format!(
                    "node {} is not the leader (node {id} is); retry",
                    self.config.id
                )))
            }
            Some(id) => {
                let addr = addr
                    .or_else(|| self.config.peers.get(&id).cloned())
                    .ok_or_else(|| {
                        ApiError::Unavailable(format!("leader {id} has no known address"))
                    })?;
                let channel = self.channels.get(&addr).map_err(ApiError::Unavailable)?;
                Ok(Some(
                    MetastoreClient::new(channel)
                        .max_decoding_message_size(crate::node::MAX_MESSAGE_BYTES),
                ))
            }
            None => Err(ApiError::Unavailable(
                "no leader is elected yet; retry".into(),
            )),
        }
    }

    /// Refuses a registration that would grow the member list past `max_members`.
    fn check_member_room(&self, kind: MemberKind, id: u64) -> Result<(), ApiError> {
        let inner = self.sm.read();
        let state = &inner.state;
        let max = self.config.max_members;
        if !state.members(kind).contains_key(&id)
            && state.distributors.len() + state.edges.len() >= max
        {
            return Err(ApiError::ResourceExhausted(format!(
                "the member limit ({max}) is reached"
            )));
        }
        Ok(())
    }

    /// Refuses a new hot topic past `max_hot_topics`. Tombstones of merged topics count:
    /// they are entries of the replicated state like any other.
    fn check_hot_topic_room(&self, topic: &str, by: &str) -> Result<(), ApiError> {
        let inner = self.sm.read();
        if inner.state.hot_topics.contains_key(topic) {
            return Ok(()); // A change of an entry adds none.
        }
        let max = self.config.max_hot_topics;
        if inner.state.hot_topics.len() >= max {
            return Err(ApiError::ResourceExhausted(format!(
                "the hot topic limit ({max}) is reached"
            )));
        }
        let per_caller = self.config.max_hot_topics_per_caller;
        let made = inner
            .state
            .hot_topics
            .values()
            .filter(|e| e.creator == by)
            .count();
        if made >= per_caller {
            return Err(ApiError::ResourceExhausted(format!(
                "{by} made {made} hot topics, its limit ({per_caller})"
            )));
        }
        Ok(())
    }

    /// Proposes a command and waits until it is applied.
    pub(crate) async fn write(&self, command: Command) -> Result<CommandResponse, ApiError> {
        match self.raft.client_write(command).await {
            Ok(reply) => match reply.data.rejected {
                Some(rejection @ crate::state::Rejection::HotChangeInProgress { .. }) => {
                    Err(ApiError::FailedPrecondition(rejection.to_string()))
                }
                Some(rejection) => Err(ApiError::NotFound(rejection.to_string())),
                None => Ok(reply.data),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ApiError::Unavailable(format!(
                    "leadership moved (leader now {:?}) while proposing; retry",
                    f.leader_id
                )))
            }
            Err(RaftError::APIError(e)) => Err(ApiError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ApiError::Fatal(e.to_string())),
        }
    }
}

/// Re-sends a request to the leader, marked as forwarded, within the RPC deadline.
fn forwarded<T>(request: Request<T>, timeout: Duration) -> Request<T> {
    // The caller's key goes along: the leader checks it as well.
    let key = request.metadata().get("authorization").cloned();
    let mut out = Request::new(request.into_inner());
    if let Some(key) = key {
        out.metadata_mut().insert("authorization", key);
    }
    out.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    out.set_timeout(timeout);
    out
}

fn member_kind(value: i32) -> Result<MemberKind, ApiError> {
    MemberKind::from_proto(value).ok_or_else(|| {
        ApiError::invalid(
            "kind",
            format!("{value} is not a member kind (1 = distributor, 2 = edge)"),
        )
    })
}

fn member_id(id: u64) -> Result<u64, ApiError> {
    if id == 0 {
        return Err(ApiError::invalid("id", "member ids start at 1"));
    }
    Ok(id)
}

fn slots(field: &'static str, values: &[u32]) -> Result<Vec<Slot>, ApiError> {
    values
        .iter()
        .map(|&s| {
            if (s as usize) < SLOT_COUNT {
                Ok(s as Slot)
            } else {
                Err(ApiError::invalid(
                    field,
                    format!("slot {s} is out of range 0..{SLOT_COUNT}"),
                ))
            }
        })
        .collect()
}

fn topic(value: &str) -> Result<String, ApiError> {
    validate_topic(value).map_err(|e| ApiError::invalid("topic", e.to_string()))?;
    Ok(value.to_string())
}

fn check_register(config: &Config, req: &pb::RegisterRequest) -> Result<Command, ApiError> {
    let kind = member_kind(req.kind)?;
    let id = member_id(req.id)?;
    let max = config.max_lease_ttl.as_millis() as u64;
    if req.lease_ttl_ms == 0 || req.lease_ttl_ms > max {
        return Err(ApiError::invalid(
            "lease_ttl_ms",
            format!("{} is outside 1..={max}", req.lease_ttl_ms),
        ));
    }
    if req.addrs.len() > MAX_ADDRS {
        return Err(ApiError::invalid(
            "addrs",
            format!("{} entries; at most {MAX_ADDRS}", req.addrs.len()),
        ));
    }
    if let Some((k, v)) = req
        .addrs
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_ADDR_LEN || v.len() > MAX_ADDR_LEN)
    {
        return Err(ApiError::invalid("addrs", format!("entry {k:?} => {v:?}: names must be 1-{MAX_ADDR_LEN} bytes, addresses at most {MAX_ADDR_LEN}")));
    }
    let addrs: BTreeMap<String, String> = req
        .addrs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Command::Register {
        kind,
        id,
        addrs,
        lease_ttl_ms: req.lease_ttl_ms,
        instance: req.instance,
    })
}

/// Over TLS, a member acts only as itself: its certificate names the member of `kind`
/// and `id` the request is about. A metastore node's certificate is also taken: a follower
/// forwards its callers' requests to the leader, and checked them itself.
fn as_member<T>(request: &Request<T>, what: &str, kind: i32, id: u64) -> Result<(), Status> {
    let role = match pb::MemberKind::try_from(kind) {
        Ok(pb::MemberKind::Distributor) => Role::Distributor,
        Ok(pb::MemberKind::Edge) => Role::Edge,
        _ => return Err(ApiError::invalid("kind", format!("{kind} is not a member kind")).into()),
    };
    Caller::of(request).require_node(what, |node| {
        node.role == Role::Metastore || (node.role == role && node.id == id)
    })
}

/// Hot-topic changes come from distributors (splits and merges they measured), the
/// metastore's own forwarding, or an operator (no certificate, an admin API key); an edge
/// never makes one.
fn not_an_edge<T>(request: &Request<T>, what: &str) -> Result<(), Status> {
    match Caller::of(request) {
        Caller::Node(node) if node.role == Role::Edge => Err(Status::permission_denied(format!(
            "{what}: not allowed for {node}, as its certificate says"
        ))),
        _ => Ok(()),
    }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<C: Connector> pb::metastore_server::Metastore for MetastoreService<C> {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        self.node.auth.check(&request, MEMBERS)?;
        let command = check_register(&self.node.config, request.get_ref())?;
        as_member(
            &request,
            "Register",
            request.get_ref().kind,
            request.get_ref().id,
        )?;
        if let Some(mut leader) = self.node.leader_route(&request)? {
            return leader
                .register(forwarded(request, self.node.config.rpc_timeout))
                .await;
        }
        if let Command::Register { kind, id, .. } = &command {
            self.node.check_member_room(*kind, *id)?;
        }
        let reply = self.node.write(command).await?;
        Ok(Response::new(pb::RegisterReply {
            revision: reply.revision,
            incarnation: reply.incarnation,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.node.auth.check(&request, MEMBERS)?;
        let req = request.get_ref();
        let kind = member_kind(req.kind)?;
        let id = member_id(req.id)?;
        as_member(&request, "Heartbeat", req.kind, id)?;
        let incarnation = req.incarnation;
        if let Some(mut leader) = self.node.leader_route(&request)? {
            return leader
                .heartbeat(forwarded(request, self.node.config.rpc_timeout))
                .await;
        }
        // The reply's revision is what a distributor's lease fencing trusts: after a
        // linearizable read, it covers every write committed before this heartbeat arrived
        // (a deposed leader cut off from the others cannot answer with an old one).
        self.node
            .raft
            .ensure_linearizable()
            .await
            .map_err(|e| ApiError::Unavailable(format!("linearizable read failed: {e}; retry")))?;
        let (ttl, revision) = {
            let inner = self.node.sm.read();
            let member = inner
                .state
                .members(kind)
                .get(&id)
                .filter(|m| m.incarnation == incarnation);
            (
                member.map(|m| Duration::from_millis(m.lease_ttl_ms)),
                inner.state.revision,
            )
        };
        let ttl = ttl.ok_or_else(|| {
            ApiError::NotFound(format!(
                "{kind:?} {id} incarnation {incarnation} is not registered; register again"
            ))
        })?;
        let registration = Registration {
            key: (kind, id),
            incarnation,
            ttl,
        };
        self.node
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .handle_heartbeat(tokio::time::Instant::now(), registration);
        Ok(Response::new(pb::HeartbeatReply { revision }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterReply>, Status> {
        self.node.auth.check(&request, MEMBERS)?;
        let kind = member_kind(request.get_ref().kind)?;
        let id = member_id(request.get_ref().id)?;
        as_member(&request, "Deregister", request.get_ref().kind, id)?;
        if let Some(mut leader) = self.node.leader_route(&request)? {
            return leader
                .deregister(forwarded(request, self.node.config.rpc_timeout))
                .await;
        }
        let command = if request.get_ref().drain {
            Command::Drain { kind, id }
        } else {
            Command::Deregister { kind, id }
        };
        let reply = self.node.write(command).await?;
        Ok(Response::new(pb::DeregisterReply {
            revision: reply.revision,
        }))
    }

    async fn update_interest(
        &self,
        request: Request<pb::UpdateInterestRequest>,
    ) -> Result<Response<pb::UpdateInterestReply>, Status> {
        self.node.auth.check(&request, MEMBERS)?;
        let req = request.get_ref();
        if req.edge_id == 0 {
            return Err(ApiError::invalid("edge_id", "member ids start at 1").into());
        }
        as_member(
            &request,
            "UpdateInterest",
            pb::MemberKind::Edge as i32,
            req.edge_id,
        )?;
        let total = req.add_slots.len() + req.remove_slots.len();
        let field = if req.add_slots.len() >= req.remove_slots.len() {
            "add_slots"
        } else {
            "remove_slots"
        };
        if total > self.node.config.max_interest_batch {
            let max = self.node.config.max_interest_batch;
            return Err(ApiError::invalid(
                field,
                format!("{total} slots in one batch; at most {max}"),
            )
            .into());
        }
        let command = Command::UpdateInterest {
            edge: req.edge_id,
            add: slots("add_slots", &req.add_slots)?,
            remove: slots("remove_slots", &req.remove_slots)?,
        };
        if let Some(mut leader) = self.node.leader_route(&request)? {
            return leader
                .update_interest(forwarded(request, self.node.config.rpc_timeout))
                .await;
        }
        let reply = self.node.write(command).await?;
        Ok(Response::new(pb::UpdateInterestReply {
            revision: reply.revision,
        }))
    }

    async fn set_hot_topic(
        &self,
        request: Request<pb::SetHotTopicRequest>,
    ) -> Result<Response<pb::HotTopicReply>, Status> {
        self.node.auth.check(&request, MEMBERS_AND_ADMINS)?;
        not_an_edge(&request, "SetHotTopic")?;
        // Whom a new entry counts against: the caller, or (from a metastore node that
        // forwards) the caller it checked.
        let by = match Caller::of(&request) {
            Caller::Node(node)
                if node.role == Role::Metastore && !request.get_ref().on_behalf_of.is_empty() =>
            {
                request.get_ref().on_behalf_of.clone()
            }
            _ => firetower_net::per_caller::caller_key(&request, &self.node.auth),
        };
        let req = request.get_ref();
        let name = topic(&req.topic)?;
        if !(MIN_SHARDS..=MAX_SHARDS).contains(&req.shards) {
            return Err(ApiError::invalid(
                "shards",
                format!("{} is outside {MIN_SHARDS}..={MAX_SHARDS}", req.shards),
            )
            .into());
        }
        self.node.check_hot_topic_room(&name, &by)?;
        let command = Command::SetHotTopic {
            topic: name,
            shards: req.shards,
            by: by.clone(),
        };
        if let Some(mut leader) = self.node.leader_route(&request)? {
            let mut request = forwarded(request, self.node.config.rpc_timeout);
            request.get_mut().on_behalf_of = by;
            return leader.set_hot_topic(request).await;
        }
        let reply = self.node.write(command).await?;
        Ok(Response::new(pb::HotTopicReply {
            revision: reply.revision,
        }))
    }

    async fn clear_hot_topic(
        &self,
        request: Request<pb::ClearHotTopicRequest>,
    ) -> Result<Response<pb::HotTopicReply>, Status> {
        self.node.auth.check(&request, MEMBERS_AND_ADMINS)?;
        not_an_edge(&request, "ClearHotTopic")?;
        let command = Command::ClearHotTopic {
            topic: topic(&request.get_ref().topic)?,
        };
        if let Some(mut leader) = self.node.leader_route(&request)? {
            return leader
                .clear_hot_topic(forwarded(request, self.node.config.rpc_timeout))
                .await;
        }
        let reply = self.node.write(command).await?;
        Ok(Response::new(pb::HotTopicReply {
            revision: reply.revision,
        }))
    }

    async fn ack_hot_topic(
        &self,
        request: Request<pb::AckHotTopicRequest>,
    ) -> Result<Response<pb::HotTopicReply>, Status> {
        self.node.auth.check(&request, MEMBERS)?;
        let req = request.get_ref();
        if req.edge_id == 0 {
            return Err(ApiError::invalid("edge_id", "member ids start at 1").into());
        }
        as_member(
            &request,
            "AckHotTopic",
            pb::MemberKind::Edge as i32,
            req.edge_id,
        )?;
        let command = Command::AckHotTopic {
            edge: req.edge_id,
            topic: topic(&req.topic)?,
            since: req.since,
        };
        if let Some(mut leader) = self.node.leader_route(&request)? {
            return leader
                .ack_hot_topic(forwarded(request, self.node.config.rpc_timeout))
                .await;
        }
        let reply = self.node.write(command).await?;
        Ok(Response::new(pb::HotTopicReply {
            revision: reply.revision,
        }))
    }

    async fn get_slot_map(
        &self,
        request: Request<pb::GetSlotMapRequest>,
    ) -> Result<Response<pb::SlotMap>, Status> {
        self.node.auth.check(&request, MEMBERS_AND_ADMINS)?;
        if request.get_ref().linearizable {
            if let Some(mut leader) = self.node.leader_route(&request)? {
                return leader
                    .get_slot_map(forwarded(request, self.node.config.rpc_timeout))
                    .await;
            }
            self.node.raft.ensure_linearizable().await.map_err(|e| {
                ApiError::Unavailable(format!("linearizable read failed: {e}; retry"))
            })?;
        }
        Ok(Response::new(self.node.sm.read().state.to_proto()))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.node.auth.check(&request, MEMBERS_AND_ADMINS)?;
        let caller = firetower_net::per_caller::caller_key(&request, &self.node.auth);
        let caller_permit = self
            .node
            .watchers_per_caller
            .try_acquire(caller.clone())
            .ok_or_else(|| {
                let max = self.node.config.max_watchers_per_caller;
                ApiError::ResourceExhausted(format!(
                    "{caller} holds {max} watch streams on this node, its limit"
                ))
            })?;
        let permit = self
            .node
            .watchers
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                let max = self.node.config.max_watchers;
                ApiError::ResourceExhausted(format!(
                    "the watch stream limit ({max}) is reached on this node"
                ))
            })?;
        let (tx, rx) = mpsc::channel(self.node.config.watch_buffer);
        let (sm, from, stopping) = (
            self.node.sm.clone(),
            request.get_ref().from_revision,
            self.node.stopping.clone(),
        );
        self.node.tasks.spawn(async move {
            serve_watch(sm, from, tx, stopping).await;
            drop(permit);
            drop(caller_permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        self.node.auth.check(&request, MEMBERS_AND_ADMINS)?;
        let (leader, voters, last_applied, term, state) = {
            let metrics = self.node.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let voters = membership
                .voter_ids()
                .map(|id| pb::NodeAddr {
                    id,
                    addr: membership
                        .get_node(&id)
                        .map(|n| n.addr.clone())
                        .unwrap_or_default(),
                })
                .collect();
            (
                m.current_leader,
                voters,
                m.last_applied.map_or(0, |l| l.index),
                m.current_term,
                format!("{:?}", m.state),
            )
        };
        let leases = self
            .node
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ages(tokio::time::Instant::now())
            .into_iter()
            .map(|((kind, id), age, remaining)| pb::LeaseState {
                kind: kind.to_proto().into(),
                id,
                age_ms: age.as_millis() as u64,
                remaining_ms: remaining.as_millis() as u64,
            })
            .collect();
        let inner = self.node.sm.read();
        let reply = pb::ClusterStatusReply {
            node_id: self.node.config.id,
            leader,
            voters,
            last_applied,
            revision: inner.state.revision,
            members: inner.state.members_to_proto(),
            slots_per_distributor: inner
                .state
                .slots_per_distributor()
                .into_iter()
                .map(|(distributor_id, slots)| pb::DistributorSlots {
                    distributor_id,
                    slots,
                })
                .collect(),
            term,
            state,
            cluster: self.node.config.cluster.clone(),
            unowned_slots: inner.state.unowned_slots(),
            leases,
        };
        Ok(Response::new(reply))
    }
}

/// Feeds one watch stream: catch up from `from` (deltas, or a snapshot when the history is
/// too short), then follow every new revision. Ends when the client goes away or the node
/// stops (a stopping node closes the connection of a client that does not read: see
/// `node::serve`). The channel bound makes a slow client wait alone; if it falls behind the
/// history it is resynced with a snapshot.
async fn serve_watch(
    sm: Arc<SmShared>,
    mut from: u64,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut revisions = sm.subscribe();
    let mut first = true;
    loop {
        revisions.borrow_and_update();
        let catchup = {
            let inner = sm.read();
            if first && from == 0 {
                Catchup::Snapshot(Box::new(inner.state.to_proto()))
            } else {
                inner.catch_up(from)
            }
        };
        first = false;
        let events = match catchup {
            Catchup::Snapshot(map) => {
                from = map.revision;
                vec![pb::watch_event::Event::Snapshot(*map)]
            }
            Catchup::Deltas(deltas) => {
                if let Some(last) = deltas.last() {
                    from = last.revision;
                }
                deltas
                    .into_iter()
                    .map(pb::watch_event::Event::Delta)
                    .collect()
            }
        };
        for event in events {
            // While the channel is full this waits for the client, not for `stopping`: on a
            // stop the task returns after this batch (below), or, for a client that does
            // not read it within `rpc_timeout`, when the node cuts the connection and so
            // drops the receiver. A stop check here would spend tokio's cooperative budget
            // on every event and change the simulator's schedules.
            if tx
                .send(Ok(pb::WatchEvent { event: Some(event) }))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            biased;
            _ = stopping.wait_for(|&stop| stop) => return,
            changed = revisions.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}
