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
//! # Stopping
//!
//! Shutdown is complete when [`run`] returns: a node stopped and started again in the same
//! process (the simulator's crash and restart, `firetower dev`, tests) must find its storage
//! and its address free. So `run` does not return when the server does, nor when
//! `Raft::shutdown` does, but when everything it started is gone:
//!
//! ```text
//!  shutdown ─► stopping = true ─► server: no new connections, GOAWAY; watch streams,
//!                                 initializer, lease driver return at their next wait
//!           ─► requests in flight finish (at most rpc_timeout)
//!           ─► Raft::shutdown     (RaftCore, tick; pending Raft calls fail)
//!           ─► cut open connections, server returns; join initializer, lease driver
//!           ─► wait: every task of the node ended (openraft's state-machine worker,
//!                    replication streams, snapshot builds; hyper's request tasks)
//!           ─► wait: every storage handle but run's own dropped
//!           ─► flush, drop the backend (sled: the database closes, its lock is released)
//! ```
//!
//! Raft stops after the server has drained, so that requests in flight are answered by a
//! live Raft, but before the server is awaited to the end, so that a request waiting on a
//! quorum that is gone cannot hold the stop forever. The waits are structural (see the
//! `tracked` module): each task and each storage handle holds a token, and `run` waits for
//! the last token, not for a fixed time.
//!
//! None of this may change how a node runs before its stop, which the simulator would see:
//! what is polled while serving (the server's stop, each connection's cut) is a plain
//! future, not a tokio `watch`, and is combined with `future::select`, not `tokio::select!`.
//! A tokio `watch` spends the task's cooperative budget on every poll and `tokio::select!`
//! yields once that is spent; either moves when tasks yield, and so the simulator's
//! schedules.
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
use futures::future::{self, Either};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::config::Config;
use crate::error::{BackendError, NodeError};
use crate::lease::{LeaseTracker, Registration};
use crate::metrics::{RaftView, StoreMetrics, Timed};
use crate::network::{Network, RaftService};
use crate::service::{MetastoreService, NodeContext};
use crate::state::{Command, MemberKind, MetaState};
use crate::store::{keys, Backend, LogStore, StateMachine};
use crate::tracked::{signal, Held, Severable, Tasks, Tracker};
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

/// Runs one metastore node until `shutdown` completes, then stops it and returns.
///
/// When it returns, every task the node started (openraft's included) has ended, every
/// connection it accepted is closed and `backend` has been dropped: for sled, the data dir
/// is free for the next start in the same process.
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
    run_with_ops(config, incoming, connector, backend, None, shutdown).await
}

/// [`run`], also serving the operations endpoints on `ops` when given: `/metrics`
/// (Prometheus text, [`crate::metrics`]), `/healthz`, and `/readyz` (200 when the node
/// knows a leader and has applied everything committed it knows of; 503 with the reason).
/// The listener stops with the node's server (step 1 of the stop) and is closed when this
/// returns.
pub async fn run_with_ops<B, C, I, IO, IE>(
    config: Config,
    incoming: I,
    connector: C,
    backend: B,
    ops: Option<tokio::net::TcpListener>,
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

    let (tasks, tasks_token) = Tracker::new();
    let (storage, storage_token) = Tracker::new();
    let id = config.id;
    // Everything of the node lives in `serve` and in the tasks it starts; `run` keeps only
    // the trackers and its own handle of the backend.
    let served = serve(
        config,
        incoming,
        connector,
        Held::new(backend.clone(), storage_token),
        Tasks::new(tasks_token),
        ops,
        shutdown,
    )
    .await;
    // The state-machine worker, replication streams and snapshot builds of openraft, and
    // the request tasks of hyper, may still be finishing: wait for them, then for the last
    // handle of the storage they held.
    wait_released(id, &tasks, "tasks").await;
    wait_released(id, &storage, "storage handles").await;
    // Nothing writes any more: make it all durable, then let go of the last handle (sled
    // closes the database and releases its lock when its last handle drops).
    let flushed = backend.flush();
    drop(backend);
    tracing::info!(id, "metastore node stopped");
    served?;
    flushed.map_err(NodeError::from)
}

/// Waits until `tracker` has no holder left, saying so now and then if that takes long.
async fn wait_released(id: u64, tracker: &Tracker, what: &str) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tracker.released()).await {
            Ok(()) => return,
            Err(_) => {
                tracing::warn!(
                    id,
                    left = tracker.holders(),
                    "stopping: still waiting for {what}"
                )
            }
        }
    }
}

/// Serves until `shutdown`, then stops the server, Raft and the node's tasks, in that order:
///
/// 1. `stopping` becomes true and the server is told to stop: it stops accepting and asks
///    every connection to close once its requests are answered (HTTP/2 GOAWAY); watch
///    streams end once their current batch is sent; the initializer and the lease driver
///    return at their next wait.
/// 2. Requests in flight get `rpc_timeout` to finish against a live Raft.
/// 3. Raft shuts down: RaftCore and the tick are joined, and a request still waiting on
///    Raft (a write without a quorum) fails at once instead of waiting for one.
/// 4. Connections still open are cut (a request still running, a client that does not
///    read its watch stream), and the server returns once every one has closed.
/// 5. The initializer and the lease driver are joined: after step 3, since one of them
///    may be in a Raft call (a lease expiry, the initialization) that only Raft's shutdown
///    ends.
///
/// Everything `serve` owns drops when it returns; what is left (openraft's tasks that end
/// on their own after step 3, hyper's request tasks) is what `run` waits for.
async fn serve<B, C, I, IO, IE>(
    config: Config,
    incoming: I,
    connector: C,
    storage: Held<B>,
    tasks: Tasks,
    ops: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError>
where
    B: Backend,
    C: Connector,
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let raft_config = config
        .raft_config()
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    let member_key = firetower_net::ApiKey::from_optional_file(
        "api.member_key_file",
        config.api.member_key_file.as_deref(),
    )
    .map_err(crate::error::ConfigError::from)?;
    let auth = Arc::new(firetower_net::api_auth::ApiAuth::new(&config.api));
    // The log and the state machine see the storage through `Timed` (flushes timed) and
    // report applies and commits to the same metrics.
    let store_metrics = Arc::new(StoreMetrics::default());
    let timed = Timed::new(storage.clone(), store_metrics.clone());
    let log_store = LogStore::new(timed.clone()).with_metrics(store_metrics.clone());
    let state_machine = StateMachine::open(timed, config.watch_history_changes)?
        .with_metrics(store_metrics.clone());
    let sm = state_machine.shared();
    let channels = Channels::new(connector, firetower_net::Role::Metastore);
    let network = Network {
        channels: channels.clone(),
        cluster: config.cluster.clone(),
        from: config.id,
        key: member_key.clone(),
    };
    // In the node's scope, so that RaftCore, the tick and the state-machine worker (and
    // whatever they spawn) are tasks of the node.
    let raft = tasks
        .scope(Raft::new(
            config.id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        ))
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
        watchers_per_caller: firetower_net::per_caller::PerCaller::new(
            config.max_watchers_per_caller,
        ),
        tasks: tasks.clone(),
        auth: auth.clone(),
    });
    let state_storage = storage.clone();
    let raft_service = RaftService {
        raft: raft.clone(),
        cluster: config.cluster.clone(),
        id: config.id,
        voters: config.peers.keys().copied().collect(),
        has_state: Arc::new(move || has_state(&state_storage)),
        auth,
    };

    let init = tasks.spawn(initialize_when_ready(
        raft.clone(),
        config.clone(),
        member_key,
        channels.clone(),
        storage.clone(),
        stopping.clone(),
    ));
    let lease_driver = tasks.spawn(drive_leases(context.clone(), stopping.clone()));
    // The operations endpoints stop with the server (a plain future, like the server's).
    let ops = ops.map(|listener| {
        let (stop_ops, ops_stop) = signal();
        let view = raft_view(&context, store_metrics.clone());
        let registry = crate::metrics::registry(config.id, &store_metrics, view);
        let handler = crate::metrics::handler(registry, raft_view(&context, store_metrics));
        let task = tasks.spawn(firetower_net::ops_http::serve(
            listener,
            handler,
            async move {
                let _ = ops_stop.await;
            },
        ));
        (stop_ops, task)
    });

    let (cutter, cut) = signal();
    let incoming = incoming.map(move |io| io.map(|io| Severable::new(io, cut.clone())));
    // The server's stop is a plain future, not `stopping`: tonic polls it each time it
    // accepts, and a tokio watch there would spend the cooperative budget.
    let (stop_server, server_stop) = signal();
    let server = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        .add_service(
            RaftTransportServer::new(raft_service).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            MetastoreServer::new(MetastoreService { node: context })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = server_stop.await;
        });
    let mut server = std::pin::pin!(server);
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(id = config.id, cluster = %config.cluster, "metastore node serving");

    // Serve until told to stop (or until the server ends by itself: its listener failed).
    // `future::select` rather than `tokio::select!`, which would yield whenever the task's
    // cooperative budget is spent and so change the simulator's schedules.
    let mut served = match future::select(server.as_mut(), shutdown.as_mut()).await {
        Either::Left((served, _)) => Some(served),
        Either::Right(((), _)) => None,
    };
    // 1.
    let _ = stop_tx.send(true);
    let _ = stop_server.send(());
    let ops_task = ops.map(|(stop_ops, task)| {
        let _ = stop_ops.send(());
        task
    });
    // 2.
    if served.is_none() {
        served = tokio::time::timeout(config.rpc_timeout, server.as_mut())
            .await
            .ok();
    }
    // 3.
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    // 4.
    drop(cutter);
    let served = match served {
        Some(served) => served,
        None => server.await,
    };
    // 5.
    for task in [init, lease_driver].into_iter().chain(ops_task) {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "a background task of the node failed");
        }
    }
    served.map_err(NodeError::from)
}

/// Reads what `/metrics` and `/readyz` report of the node: Raft's metrics, the applied
/// state, the watch streams, and the commit index the log store saw.
fn raft_view<C: Connector>(
    node: &Arc<NodeContext<C>>,
    store: Arc<StoreMetrics>,
) -> crate::metrics::ViewFn {
    let raft = node.raft.clone();
    let sm = node.sm.clone();
    let watchers = node.watchers.clone();
    let max_watchers = node.config.max_watchers;
    let id = node.config.id;
    Box::new(move || {
        let mut view = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            RaftView {
                fatal: m.running_state.as_ref().err().map(ToString::to_string),
                term: m.current_term,
                leader: m.current_leader,
                is_leader: m.current_leader == Some(id),
                last_log_index: m.last_log_index,
                applied: m.last_applied.map(|l| l.index),
                committed: store.commit_index(),
                ..RaftView::default()
            }
        };
        {
            let inner = sm.read();
            view.revision = inner.state.revision;
            view.distributors = inner.state.members(MemberKind::Distributor).len() as u64;
            view.edges = inner.state.members(MemberKind::Edge).len() as u64;
            view.hot_topics = inner.state.hot_topics.len() as u64;
        }
        view.watch_streams = max_watchers.saturating_sub(watchers.available_permits()) as u64;
        view
    })
}

/// The lowest-id node initializes the cluster once every peer answers and none has state.
/// Every other node, and a node restarted from its data dir, waits to be contacted.
async fn initialize_when_ready<B: Backend, C: Connector>(
    raft: Raft,
    config: Config,
    member_key: firetower_net::ApiKey,
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
            member_key.attach(&mut request);
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
