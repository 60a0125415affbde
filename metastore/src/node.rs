//! Starting and stopping one metastore node.
//!
//! [`run`] takes everything from outside as arguments — the incoming connection stream, the
//! connector that dials peers, the storage backend and the shutdown signal — so that the
//! binary passes TCP and sled, and the simulator passes its own network and [`MemBackend`].
//!
//! ```text
//!  incoming ──► tonic server ──► RaftTransport (Raft RPC)  ──► openraft ──► LogStore/StateMachine
//!                            └─► Metastore API ──► client_write / forward to leader / watch
//!  background: initializer (lowest id, once), lease driver (leader only)
//! ```
//!
//! [`MemBackend`]: crate::store::MemBackend

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firetower_net::{Channels, Connector};
use firetower_proto::metastore::v1::metastore_server::MetastoreServer;
use firetower_proto::raft::v1 as raft_pb;
use firetower_proto::raft::v1::raft_transport_client::RaftTransportClient;
use firetower_proto::raft::v1::raft_transport_server::RaftTransportServer;
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::config::Config;
use crate::error::{BackendError, NodeError};
use crate::lease::{LeaseTracker, Registration};
use crate::network::{Network, RaftService};
use crate::service::{MetastoreService, NodeContext};
use crate::state::{Command, MemberKind, MetaState};
use crate::store::{keys, Backend, LogStore, StateMachine};
use crate::types::Raft;

/// Largest gRPC message a node accepts: Raft appends batch entries and snapshots travel in
/// chunks, both well under this.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Who a data directory belongs to, written on first start.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Identity {
    cluster: String,
    id: u64,
}

fn check_identity<B: Backend>(backend: &B, config: &Config) -> Result<(), NodeError> {
    let ours = Identity {
        cluster: config.cluster.clone(),
        id: config.id,
    };
    match backend.meta_get(keys::IDENTITY)? {
        Some(bytes) => {
            let found: Identity = serde_json::from_slice(&bytes).map_err(BackendError::from)?;
            if found != ours {
                return Err(NodeError::ForeignDataDir {
                    found_cluster: found.cluster,
                    found_id: found.id,
                    cluster: ours.cluster,
                    id: ours.id,
                });
            }
        }
        None => {
            backend.meta_put(
                keys::IDENTITY,
                serde_json::to_vec(&ours).map_err(BackendError::from)?,
            )?;
            backend.flush()?;
        }
    }
    Ok(())
}

fn has_state<B: Backend>(backend: &B) -> bool {
    // A read error counts as "has state": never initialize over something we cannot read.
    let vote = backend
        .meta_get(keys::VOTE)
        .map(|v| v.is_some())
        .unwrap_or(true);
    let log = backend.log_last().map(|l| l.is_some()).unwrap_or(true);
    let snapshot = backend
        .meta_get(keys::SNAPSHOT_META)
        .map(|s| s.is_some())
        .unwrap_or(true);
    vote || log || snapshot
}

/// Runs one metastore node until `shutdown` completes, then stops Raft and returns.
pub async fn run<B, C, I, IO, IE>(
    config: Config,
    incoming: I,
    connector: C,
    backend: B,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError>
where
    B: Backend,
    C: Connector,
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    config.validate()?;
    check_identity(&backend, &config)?;
    let raft_config = config
        .raft_config()
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    let log_store = LogStore::new(backend.clone());
    let state_machine = StateMachine::open(backend.clone(), config.watch_history_changes)?;
    let sm = state_machine.shared();
    let channels = Channels::new(connector);
    let network = Network {
        channels: channels.clone(),
        cluster: config.cluster.clone(),
        from: config.id,
    };
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let (stop_tx, stopping) = watch::channel(false);
    let leases = Arc::new(Mutex::new(LeaseTracker::new()));
    let context = Arc::new(NodeContext {
        config: config.clone(),
        raft: raft.clone(),
        sm: sm.clone(),
        channels: channels.clone(),
        leases: leases.clone(),
        stopping: stopping.clone(),
        watchers: Arc::new(tokio::sync::Semaphore::new(config.max_watchers)),
    });
    let state_backend = backend.clone();
    let raft_service = RaftService {
        raft: raft.clone(),
        cluster: config.cluster.clone(),
        id: config.id,
        has_state: Arc::new(move || has_state(&state_backend)),
    };

    let init = tokio::spawn(initialize_when_ready(
        raft.clone(),
        config.clone(),
        channels.clone(),
        backend.clone(),
        stopping.clone(),
    ));
    let lease_driver = tokio::spawn(drive_leases(context.clone(), stopping.clone()));

    tracing::info!(id = config.id, cluster = %config.cluster, "metastore node serving");
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let served = tonic::transport::Server::builder()
        .add_service(
            RaftTransportServer::new(raft_service).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            MetastoreServer::new(MetastoreService { node: context })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, signal)
        .await;

    // Stop background work, then Raft, then make sure everything reached the disk.
    let _ = init.await;
    let _ = lease_driver.await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    backend.flush()?;
    tracing::info!(id = config.id, "metastore node stopped");
    served.map_err(NodeError::from)
}

/// The lowest-id node initializes the cluster once every peer answers and none has state.
/// Every other node, and a node restarted from its data dir, waits to be contacted.
async fn initialize_when_ready<B: Backend, C: Connector>(
    raft: Raft,
    config: Config,
    channels: Channels<C>,
    backend: B,
    mut stopping: watch::Receiver<bool>,
) {
    if config.peers.keys().next() != Some(&config.id) {
        return;
    }
    let members: BTreeMap<u64, BasicNode> = config
        .peers
        .iter()
        .map(|(&id, addr)| (id, BasicNode { addr: addr.clone() }))
        .collect();
    loop {
        if has_state(&backend) {
            return;
        }
        let mut all_fresh = true;
        for (&id, addr) in &config.peers {
            if id == config.id {
                continue;
            }
            let Ok(channel) = channels.get(addr) else {
                all_fresh = false;
                continue;
            };
            let mut request = tonic::Request::new(raft_pb::NodeInfoRequest {
                cluster: config.cluster.clone(),
            });
            request.set_timeout(config.rpc_timeout);
            match RaftTransportClient::new(channel).node_info(request).await {
                Ok(reply) if reply.get_ref().has_state => {
                    tracing::info!(
                        peer = id,
                        "peer has state: the cluster exists, not initializing"
                    );
                    return;
                }
                Ok(_) => {}
                Err(status) => {
                    tracing::debug!(peer = id, %status, "peer not ready");
                    all_fresh = false;
                }
            }
        }
        if all_fresh {
            match raft.initialize(members.clone()).await {
                Ok(()) => {
                    tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "cluster initialized");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "initialize failed; retrying"),
            }
        }
        tokio::select! {
            biased;
            _ = stopping.wait_for(|&s| s) => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

fn registrations(state: &MetaState) -> Vec<Registration> {
    [MemberKind::Distributor, MemberKind::Edge]
        .into_iter()
        .flat_map(|kind| {
            state
                .members(kind)
                .iter()
                .map(move |(&id, m)| Registration {
                    key: (kind, id),
                    incarnation: m.incarnation,
                    ttl: Duration::from_millis(m.lease_ttl_ms),
                })
        })
        .collect()
}

/// While this node leads, expires members whose lease ran out.
async fn drive_leases<C: Connector>(
    node: Arc<NodeContext<C>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(node.config.lease_check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    loop {
        tokio::select! {
            biased;
            _ = stopping.wait_for(|&s| s) => return,
            _ = ticker.tick() => {}
        }
        let is_leader = node.raft.metrics().borrow().current_leader == Some(node.config.id);
        let now = tokio::time::Instant::now();
        let expired = {
            let mut tracker = node.leases.lock().unwrap_or_else(|p| p.into_inner());
            if !is_leader || !was_leader {
                // Leases restart from scratch whenever this node gains (or lost) office.
                tracker.clear();
            }
            if !is_leader {
                was_leader = false;
                continue;
            }
            let regs = registrations(&node.sm.read().state);
            tracker.sync_members(now, regs);
            tracker.poll_expired(now)
        };
        was_leader = true;
        for ((kind, id), incarnation) in expired {
            tracing::info!(?kind, id, incarnation, "lease expired; proposing expiry");
            if let Err(e) = node
                .write(Command::Expire {
                    kind,
                    id,
                    incarnation,
                })
                .await
            {
                tracing::debug!(error = %e, ?kind, id, "expiry not applied");
            }
        }
    }
}
