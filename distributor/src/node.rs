//! The distributor's async shell: it moves bytes between gRPC, the QUIC relay and the
//! metastore, and asks [`DistributorCore`] what to do.
//!
//! The core and the table of edge links sit under one mutex, so a message is sequenced
//! and queued on its lanes in one step: two publishes of a topic can never be queued in
//! an order other than their sequence numbers.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use firetower_net::relay::{close_code, encode, write_frames, FrameReader};
use firetower_net::{spawn_membership, spawn_watch, Channels, Connector, MetaClient, Registration};
use firetower_proto::metastore::v1 as pb;
use firetower_proto::relay::v1::{relay_frame::Frame, Deliver, Fence, InterestAck, RelayFrame};
use firetower_proto::slot_of;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::config::Config;
use crate::core::{DistributorCore, FenceOut, PublishOutcome};
use crate::error::NodeError;
use crate::service::DistributorService;

/// Control frames queued to one edge before its link counts as stuck.
const CONTROL_QUEUE: usize = 4096;
/// How long an edge has to send Hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// One edge's relay link.
pub(crate) struct EdgeLink {
    generation: u64,
    conn: quinn::Connection,
    lanes: Vec<mpsc::Sender<Bytes>>,
    control: mpsc::Sender<Bytes>,
}

pub(crate) struct State {
    pub(crate) core: DistributorCore,
    links: HashMap<u64, EdgeLink>,
}

/// Counters, readable from outside (tests, metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub forwarded: AtomicU64,
    pub client_publishes: AtomicU64,
    pub links_overloaded: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Publishes refused because their hot-topic route was older than this owner's.
    pub stale_routes: AtomicU64,
    /// Hot-topic fences sent to edges.
    pub fences: AtomicU64,
    /// Splits and merges this node proposed to the metastore.
    pub hot_proposals: AtomicU64,
    /// Deliveries replayed to edges that joined a split topic's route late.
    pub replayed: AtomicU64,
}

/// What the gRPC service and the relay share.
pub(crate) struct Shared<C: Connector> {
    pub(crate) config: Config,
    state: Mutex<State>,
    pub(crate) peers: Channels<C>,
    /// Bumped on every applied watch event; publishes waiting for an owner watch it.
    pub(crate) routing_revision: watch::Receiver<u64>,
    pub(crate) counters: Arc<Counters>,
    next_generation: AtomicU64,
    /// Numbers this node's forwarded publishes (the owner deduplicates retries by it).
    pub(crate) next_forward: AtomicU64,
    /// Kicks waiting for their edges' answers: request id → where each edge's count goes.
    /// Bounded by the concurrent KickUser calls (each removes its entry when it returns).
    pub(crate) kicks: Mutex<HashMap<u64, mpsc::UnboundedSender<u64>>>,
    pub(crate) next_kick: AtomicU64,
}

impl<C: Connector> Shared<C> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a Kick to every linked edge; returns how many edges it went to.
    pub(crate) fn broadcast_kick(&self, user_id: &str, request_id: u64) -> usize {
        let frame = encode(&RelayFrame {
            frame: Some(Frame::Kick(firetower_proto::relay::v1::Kick {
                user_id: user_id.to_string(),
                request_id,
            })),
        });
        let state = self.lock();
        state
            .links
            .values()
            .filter(|link| link.control.try_send(frame.clone()).is_ok())
            .count()
    }

    /// Sequences and queues a message if this node owns its topic. `route_tag` is the
    /// hot-topic route tag the publisher routed by; `msg_id` travels with the delivery.
    pub(crate) fn publish_local(
        &self,
        topic: &str,
        data: &Bytes,
        forward_key: Option<crate::core::ForwardKey>,
        route_tag: u64,
        msg_id: u64,
    ) -> Result<PublishOutcome, crate::core::CoreError> {
        let mut state = self.lock();
        self.publish_locked(&mut state, topic, data, forward_key, route_tag, msg_id)
    }

    /// Publishes a run of one topic's messages under one lock: all are sequenced, in order,
    /// or (when the first is refused: not the owner, stale route) none. Every message has
    /// the same route tag, so what refuses the first would refuse them all.
    pub(crate) fn publish_local_run(
        &self,
        topic: &str,
        route_tag: u64,
        messages: &[(Option<crate::core::ForwardKey>, u64, Bytes)],
    ) -> Result<Result<Vec<(u64, u64)>, PublishOutcome>, crate::core::CoreError> {
        let mut state = self.lock();
        let mut sequenced = Vec::with_capacity(messages.len());
        for (key, msg_id, data) in messages {
            match self.publish_locked(&mut state, topic, data, *key, route_tag, *msg_id)? {
                PublishOutcome::Sequenced { epoch, seq, .. } => sequenced.push((epoch, seq)),
                refused => return Ok(Err(refused)),
            }
        }
        Ok(Ok(sequenced))
    }

    fn publish_locked(
        &self,
        state: &mut State,
        topic: &str,
        data: &Bytes,
        forward_key: Option<crate::core::ForwardKey>,
        route_tag: u64,
        msg_id: u64,
    ) -> Result<PublishOutcome, crate::core::CoreError> {
        let outcome = match forward_key {
            Some(key) => state.core.handle_forwarded_publish(topic, route_tag, key)?,
            None => state.core.handle_publish(topic, route_tag)?,
        };
        match &outcome {
            PublishOutcome::Sequenced { epoch, seq, edges } => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                // A split topic's deliveries are also kept for edges that join late.
                if !edges.is_empty() || route_tag > 0 {
                    let frame = encode(&RelayFrame {
                        frame: Some(Frame::Deliver(Deliver {
                            topic: topic.to_string(),
                            epoch: *epoch,
                            seq: *seq,
                            data: data.clone(),
                            msg_id,
                            route_tag,
                        })),
                    });
                    queue_on_lanes(&self.config, &self.counters, state, topic, &frame, edges);
                    state.core.record_history(topic, route_tag, &frame);
                }
            }
            PublishOutcome::StaleRoute { .. } => {
                self.counters.stale_routes.fetch_add(1, Ordering::Relaxed);
            }
            PublishOutcome::NotOwner { .. } => {}
        }
        Ok(outcome)
    }
}

/// Queues `frame` on `topic`'s lane to each of `edges`. An edge whose lane is full has its
/// link closed (it reconnects and re-announces) rather than stalling everyone else.
fn queue_on_lanes(
    config: &Config,
    counters: &Counters,
    state: &mut State,
    topic: &str,
    frame: &Bytes,
    edges: &[u64],
) {
    let lane = slot_of(topic) as usize % config.relay_lanes;
    let mut stuck = Vec::new();
    for edge in edges {
        if let Some(link) = state.links.get(edge) {
            if link.lanes[lane].try_send(frame.clone()).is_err() {
                stuck.push(*edge);
            }
        }
    }
    for edge in stuck {
        counters.links_overloaded.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(edge, "relay lane full; closing the edge's link");
        if let Some(link) = state.links.remove(&edge) {
            link.conn
                .close(close_code::OVERLOADED.into(), b"relay lane overflow");
        }
        state.core.handle_edge_down(edge);
    }
}

/// Queues hot-topic fences on their topics' lanes, behind every delivery already queued.
fn send_fences(config: &Config, counters: &Counters, state: &mut State, fences: Vec<FenceOut>) {
    for fence in fences {
        let frame = encode(&RelayFrame {
            frame: Some(Frame::Fence(Fence {
                topic: fence.topic.clone(),
                since: fence.since,
            })),
        });
        counters
            .fences
            .fetch_add(fence.edges.len() as u64, Ordering::Relaxed);
        queue_on_lanes(config, counters, state, &fence.topic, &frame, &fence.edges);
    }
}

/// Runs a distributor until `shutdown` completes.
///
/// `grpc_incoming` yields accepted gRPC connections; `endpoint` is a QUIC endpoint with
/// this node's server configuration (see [`firetower_net::tls::TlsMaterial::server_config`]);
/// `connector` dials the metastore and other distributors.
pub async fn run<C, I, IO, IE>(
    config: Config,
    grpc_incoming: I,
    endpoint: quinn::Endpoint,
    connector: C,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError>
where
    C: Connector,
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    run_with_counters(
        config,
        grpc_incoming,
        endpoint,
        connector,
        shutdown,
        Arc::default(),
    )
    .await
}

/// [`run`], with counters the caller can read.
pub async fn run_with_counters<C, I, IO, IE>(
    config: Config,
    grpc_incoming: I,
    endpoint: quinn::Endpoint,
    connector: C,
    shutdown: impl Future<Output = ()> + Send + 'static,
    counters: Arc<Counters>,
) -> Result<(), NodeError>
where
    C: Connector,
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    config.validate()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (revision_tx, revision_rx) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            core: DistributorCore::with_hot_policy(
                config.id,
                config.max_topics,
                config.hot.clone(),
            ),
            links: HashMap::new(),
        }),
        peers: Channels::new(connector.clone()),
        routing_revision: revision_rx,
        counters,
        next_generation: AtomicU64::new(1),
        next_forward: AtomicU64::new(1),
        kicks: Mutex::new(HashMap::new()),
        next_kick: AtomicU64::new(1),
        config: config.clone(),
    });

    let meta = MetaClient::new(config.metastore.clone(), connector, config.rpc_timeout());
    // Follow the routing state.
    let (events_tx, mut events_rx) = mpsc::channel::<pb::WatchEvent>(64);
    let watch_task = spawn_watch(meta.clone(), events_tx, stop_rx.clone());
    let apply_shared = shared.clone();
    let apply_task = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            let revision = {
                let mut guard = apply_shared.lock();
                let state = &mut *guard;
                state.core.handle_watch(event);
                let fences = state.core.take_fences();
                send_fences(&apply_shared.config, &apply_shared.counters, state, fences);
                state.core.routing().revision()
            };
            revision_tx.send_replace(revision);
        }
    });
    let (incarnation_tx, mut incarnations) = watch::channel(0u64);
    let incarnation_shared = shared.clone();
    tokio::spawn(async move {
        while incarnations.changed().await.is_ok() {
            let current = *incarnations.borrow_and_update();
            incarnation_shared.lock().core.handle_registered(current);
        }
    });
    // Hot-topic load windows: the core decides, this task proposes.
    let hot_shared = shared.clone();
    let hot_meta = meta.clone();
    let mut hot_stop = stop_rx.clone();
    let hot_task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(
            hot_shared.config.hot.window_ms.clamp(100, 1000),
        ));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = hot_stop.wait_for(|s| *s) => break,
            }
            let proposals = hot_shared
                .lock()
                .core
                .handle_tick(tokio::time::Instant::now());
            for proposal in proposals {
                hot_shared
                    .counters
                    .hot_proposals
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(topic = %proposal.topic, shards = proposal.shards, "proposing a hot-topic change");
                let result = if proposal.shards == 0 {
                    hot_meta.clear_hot_topic(proposal.topic.clone()).await
                } else {
                    hot_meta
                        .set_hot_topic(proposal.topic.clone(), proposal.shards)
                        .await
                };
                if let Err(status) = result {
                    tracing::warn!(topic = %proposal.topic, %status, "hot-topic proposal failed");
                }
            }
        }
    });
    let membership = spawn_membership(
        meta,
        Registration {
            kind: pb::MemberKind::Distributor,
            id: config.id,
            addrs: BTreeMap::from([
                ("grpc".to_string(), config.grpc_advertise.clone()),
                ("quic".to_string(), config.quic_advertise.clone()),
            ]),
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
        },
        incarnation_tx,
        stop_rx.clone(),
    );

    // The relay.
    let relay_shared = shared.clone();
    let mut relay_stop = stop_rx.clone();
    let relay_endpoint = endpoint.clone();
    let relay_task = tokio::spawn(async move {
        loop {
            let incoming = tokio::select! {
                i = relay_endpoint.accept() => i,
                _ = relay_stop.wait_for(|s| *s) => break,
            };
            let Some(incoming) = incoming else { break };
            tokio::spawn(serve_edge(relay_shared.clone(), incoming));
        }
    });

    // gRPC.
    let service = DistributorService::new(shared.clone());
    let server = tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(grpc_incoming, shutdown);
    let result = server.await.map_err(|e| NodeError::Grpc(e.to_string()));

    let _ = stop_tx.send(true);
    endpoint.close(close_code::SHUTDOWN.into(), b"distributor shutting down");
    let _ = membership.await;
    let _ = watch_task.await;
    let _ = relay_task.await;
    let _ = hot_task.await;
    apply_task.abort();
    {
        let mut state = shared.lock();
        state.links.clear();
    }
    endpoint.wait_idle().await;
    result
}

/// Serves one edge's relay connection until it ends.
async fn serve_edge<C: Connector>(shared: Arc<Shared<C>>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "relay handshake failed");
            return;
        }
    };
    let (send, recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(close_code::BAD_HELLO.into(), b"no control stream");
            return;
        }
    };
    let mut reader = FrameReader::new(recv);
    let edge = match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(RelayFrame {
            frame: Some(Frame::Hello(hello)),
        }))) if hello.cluster == shared.config.cluster && hello.edge_id != 0 => hello.edge_id,
        Ok(Ok(Some(RelayFrame {
            frame: Some(Frame::Hello(hello)),
        }))) => {
            tracing::warn!(cluster = %hello.cluster, edge = hello.edge_id, "relay hello refused");
            conn.close(
                close_code::BAD_HELLO.into(),
                format!(
                    "cluster {:?} (edge {}) does not match {:?}",
                    hello.cluster, hello.edge_id, shared.config.cluster
                )
                .as_bytes(),
            );
            return;
        }
        _ => {
            conn.close(close_code::BAD_HELLO.into(), b"expected Hello first");
            return;
        }
    };
    let mut lanes = Vec::with_capacity(shared.config.relay_lanes);
    for _ in 0..shared.config.relay_lanes {
        let Ok(stream) = conn.open_uni().await else {
            return;
        };
        let (tx, rx) = mpsc::channel(shared.config.lane_queue_frames);
        tokio::spawn(write_frames(stream, rx));
        lanes.push(tx);
    }
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    tokio::spawn(write_frames(send, control_rx));
    let generation = shared.next_generation.fetch_add(1, Ordering::Relaxed);
    {
        let mut state = shared.lock();
        if let Some(old) = state.links.insert(
            edge,
            EdgeLink {
                generation,
                conn: conn.clone(),
                lanes,
                control: control.clone(),
            },
        ) {
            old.conn
                .close(close_code::REPLACED.into(), b"replaced by a newer link");
            state.core.handle_edge_down(edge);
        }
        state.core.handle_edge_up(edge);
    }
    tracing::info!(edge, "edge linked");

    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(firetower_net::relay::ReadError::Frame(e)) => {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(edge, error = %e, "bad relay frame; closing the link");
                conn.close(close_code::BAD_FRAME.into(), e.to_string().as_bytes());
                break;
            }
            Err(_) => break,
        };
        match frame.frame {
            Some(Frame::Interest(interest))
                if firetower_proto::topic::validate_route_topic(&interest.topic).is_err() =>
            {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(edge, "interest in an invalid topic; ignored");
            }
            Some(Frame::Interest(interest)) => {
                let recorded = {
                    let mut guard = shared.lock();
                    let state = &mut *guard;
                    let recorded = state.core.handle_interest(
                        edge,
                        &interest.topic,
                        interest.subscribers,
                        interest.epoch,
                        interest.route_since,
                    );
                    // An edge that newly joins a split topic's route first gets what was
                    // published on it since the change was prepared; then (as any edge that
                    // announces such a topic) the owner's fence, on the topic's lane behind
                    // any delivery already queued.
                    if let Ok(replay) = &recorded {
                        for frame in replay {
                            queue_on_lanes(
                                &shared.config,
                                &shared.counters,
                                state,
                                &interest.topic,
                                frame,
                                &[edge],
                            );
                        }
                        shared
                            .counters
                            .replayed
                            .fetch_add(replay.len() as u64, Ordering::Relaxed);
                    }
                    if recorded.is_ok() && interest.subscribers > 0 {
                        if let Some(since) = state.core.fence_for(&interest.topic) {
                            let fence = FenceOut {
                                topic: interest.topic.clone(),
                                since,
                                edges: vec![edge],
                            };
                            send_fences(&shared.config, &shared.counters, state, vec![fence]);
                        }
                    }
                    recorded
                };
                match recorded {
                    Ok(_) if interest.subscribers > 0 => {
                        let ack = encode(&RelayFrame {
                            frame: Some(Frame::InterestAck(InterestAck {
                                topic: interest.topic,
                                epoch: interest.epoch,
                            })),
                        });
                        if control.try_send(ack).is_err() {
                            shared
                                .counters
                                .links_overloaded
                                .fetch_add(1, Ordering::Relaxed);
                            conn.close(close_code::OVERLOADED.into(), b"control queue overflow");
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(edge, error = %e, "interest refused"),
                }
            }
            Some(Frame::SlotsSynced(synced)) => {
                let mut state = shared.lock();
                state
                    .core
                    .handle_slots_synced(edge, &synced.slots, &synced.epochs);
            }
            Some(Frame::KickDone(done)) => {
                let kicks = shared.kicks.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(waiting) = kicks.get(&done.request_id) {
                    let _ = waiting.send(done.closed);
                }
            }
            Some(Frame::ClientPublish(publish)) => {
                shared
                    .counters
                    .client_publishes
                    .fetch_add(1, Ordering::Relaxed);
                client_publish(&shared, publish.topic, publish.data).await;
            }
            _ => {
                shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(edge, "unexpected relay frame from an edge; ignored");
            }
        }
    }
    let mut state = shared.lock();
    if state
        .links
        .get(&edge)
        .is_some_and(|l| l.generation == generation)
    {
        state.links.remove(&edge);
        state.core.handle_edge_down(edge);
        tracing::info!(edge, "edge unlinked");
    }
}

/// A publish an edge passed on for a client. Owned topics are sequenced inline (so one
/// edge's publishes of a topic keep their order); others are forwarded in the background.
async fn client_publish<C: Connector>(shared: &Arc<Shared<C>>, topic: String, data: Bytes) {
    if firetower_proto::topic::validate_topic(&topic).is_err()
        || data.len() > shared.config.max_data_bytes
        || firetower_proto::client::validate_json_data(&data).is_err()
    {
        shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (incarnation, hot) = {
        let state = shared.lock();
        let hot = state.core.routing().hot_route(&topic).is_some();
        (state.core.incarnation(), hot)
    };
    if hot {
        // A split (or once split) topic goes through the routed path, which fans out to the
        // sub-topics and tags the route.
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(status) = crate::service::publish(&shared, &topic, data, None).await {
                tracing::warn!(%status, topic, "a client publish could not be delivered");
            }
        });
        return;
    }
    let msg_id = crate::service::new_msg_id(shared, incarnation);
    match shared.publish_local(&topic, &data, None, 0, msg_id) {
        Ok(PublishOutcome::Sequenced { .. }) => {}
        Ok(PublishOutcome::NotOwner { .. } | PublishOutcome::StaleRoute { .. }) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(status) = crate::service::publish(&shared, &topic, data, None).await {
                    tracing::warn!(%status, topic, "a client publish could not be delivered");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, topic, "a client publish was refused"),
    }
}

/// Runs a distributor on a TCP listener and a UDP socket, loading TLS from the config:
/// what `firetower distributor` does.
pub async fn run_udp(
    config: Config,
    grpc: tokio::net::TcpListener,
    udp: std::net::UdpSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    run_udp_with_counters(config, grpc, udp, shutdown, Arc::default()).await
}

/// [`run_udp`] with counters the caller can read.
pub async fn run_udp_with_counters(
    config: Config,
    grpc: tokio::net::TcpListener,
    udp: std::net::UdpSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
    counters: Arc<Counters>,
) -> Result<(), NodeError> {
    config.validate()?;
    let tls = firetower_net::tls::TlsMaterial::load(&config.tls)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(tls.server_config()?),
        udp,
        Arc::new(quinn::TokioRuntime),
    )?;
    let incoming = firetower_net::accept_nodelay(grpc);
    run_with_counters(
        config,
        incoming,
        endpoint,
        firetower_net::TcpConnector::default(),
        shutdown,
        counters,
    )
    .await
}
