//! The edge's async shell: [`run`], and `Edge`, the handles its tasks share.
//!
//! Every input reaches the core through one function, `Edge::apply`: it locks the core,
//! hands it the input with the time, drains the core's output queue into one runner
//! (`Edge::run_outputs`), releases the lock, then wakes the sessions that got frames
//! and makes the hook calls. Nothing else touches the core except read-only queries
//! (`Edge::read_core`).
//!
//! ```text
//!  session task (subscribe, unsubscribe, publish,    ─┐
//!                disconnect)                          │
//!  lane readers (deliver, fence)                      │   lock core
//!  control reader (interest ack, publish done),       ├─▶ core.handle_*(now, ..)
//!  link up / down, watch task (routing), tick task    ┘   while let Some(o) = core.poll_output():
//!                                                           Deliver, Subscribed, .. ─▶ Sessions (send queues)
//!                                                           PauseReads / ResumeReads ─▶ Sessions (read gates)
//!                                                           Relay                  ─▶ Links (control queue, unencoded)
//!                                                           Connect / Disconnect   ─▶ Links + Tasks (link task)
//!                                                           AckHot                 ─▶ metastore task's queue
//!                                                         unlock; wake sessions; run hooks
//! ```
//!
//! `apply` returns the connections that are over their send budget after a frame was
//! queued to them: a lane reader waits for those before it reads on (`links::lane_reader`).
//!
//! The handles each do one job: `Sessions` (connections and their send queues),
//! `Links` (relay links to distributors), `Tasks` (everything spawned, for a complete
//! shutdown), [`Counters`]. Under the core's lock the runner only moves frames into
//! queues; relay frames are encoded by each link's writer task, after the lock.
//!
//! Locks: the core's lock first, then (inside the runner only) the session registry's and
//! the link table's. Outside the runner neither of those is held while another lock is
//! taken; runners are serialized by the core's lock, so no cycle can form.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firetower_net::relay::close_code;
use firetower_net::{
    spawn_membership, spawn_watch, Channels, Connector, LeaseConfirmed, MetaClient, Registration,
};
use firetower_proto::client::{encode_ack, encode_recovery_ack, AckKind};
use firetower_proto::metastore::v1 as pb;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};

use crate::admission::{Admission, PeerIp};
use crate::auth::ClientAuth;
use crate::config::Config;
use crate::core::{ConnId, EdgeCore, Fanout, Output, SlotSync};
use crate::error::NodeError;
use crate::hooks::{Hooks, Identity};
use crate::links::{link_task, LinkTable, Links};
use crate::metrics::{CoreView, EdgeMetrics};
use crate::sessions::{SessionTable, Sessions, Wakes};
use firetower_net::Tasks;

pub use crate::counters::Counters;
pub use crate::sessions::{CLOSE_HEARTBEAT_TIMEOUT, CLOSE_KICKED, CLOSE_SLOW_CONSUMER};

/// Hot-topic acks waiting for the metastore. A full queue drops the ack, which the core
/// sends again.
const HOT_ACK_QUEUE: usize = 256;

/// What the edge's tasks share: the core behind its lock, and one handle per job.
pub(crate) struct Edge<C: Connector> {
    pub(crate) config: Config,
    pub(crate) hooks: Arc<dyn Hooks>,
    /// Checks every upgrade request (token, origin) before the `on_connect` hook.
    pub(crate) auth: ClientAuth,
    /// The connection limits (edge-wide and per address).
    pub(crate) admission: Admission,
    /// What this edge presents on its gRPC calls to distributors.
    pub(crate) member_key: firetower_net::ApiKey,
    pub(crate) counters: Arc<Counters>,
    /// The decisions. Its lock is held only to run one input and its outputs.
    core: Mutex<EdgeCore>,
    /// Open connections and their send queues.
    pub(crate) sessions: Sessions,
    /// Relay links to the distributors.
    pub(crate) links: Links,
    /// Every task spawned for this edge (connections, links, lanes, background loops).
    pub(crate) tasks: Tasks,
    /// The QUIC endpoint the links dial from.
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) next_conn: AtomicU64,
    /// gRPC channels to distributors (TopicStatus for the demo page's online count).
    pub(crate) distributors: Channels<C>,
    pub(crate) stop: watch::Receiver<bool>,
    /// Turns at writing to client sockets (see `ws::session`).
    pub(crate) write_turns: tokio::sync::Semaphore,
    /// Hot-topic acks for the metastore task (bounded, see [`HOT_ACK_QUEUE`]).
    hot_acks: mpsc::Sender<(String, u64)>,
    /// What `/metrics` serves; the lane readers feed its latency histogram.
    pub(crate) metrics: EdgeMetrics,
    /// The metastore's last confirmation of this edge's lease (none: not registered yet),
    /// for `/readyz`: past `lease_ttl` without one, the metastore may have expired the edge
    /// (and moved on without its interest), so it stops calling itself ready.
    lease: watch::Receiver<Option<LeaseConfirmed>>,
    lease_ttl: Duration,
}

/// A hook call to make once every lock is released.
enum HookCall {
    Subscribed(Arc<Identity>, Vec<String>),
    Unsubscribed(Arc<Identity>, Vec<String>),
}

/// What the runner leaves for after the locks.
#[derive(Default)]
struct AfterUnlock {
    wakes: Wakes,
    hooks: Vec<HookCall>,
}

impl<C: Connector> Edge<C> {
    /// Runs one input of the core and carries out everything it asked for: lock, handle,
    /// drain into the runner, unlock, wake the sessions that got frames, run the hooks.
    /// The input closure gets the time; it must only call the core. Returns the
    /// connections that were over their send budget after a frame was queued to them.
    pub(crate) fn apply(
        self: &Arc<Self>,
        input: impl FnOnce(&mut EdgeCore, Instant),
    ) -> Vec<ConnId> {
        let mut after = AfterUnlock::default();
        {
            let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            input(&mut core, now);
            self.run_outputs(now, &mut core, &mut after);
        }
        let over = after.wakes.wake_all();
        for call in after.hooks {
            match call {
                HookCall::Subscribed(who, topics) => self.hooks.on_subscribe(&who, &topics),
                HookCall::Unsubscribed(who, topics) => self.hooks.on_unsubscribe(&who, &topics),
            }
        }
        over
    }

    /// A read-only query of the core (routing, counters, slots); it emits nothing.
    pub(crate) fn read_core<R>(&self, query: impl FnOnce(&EdgeCore) -> R) -> R {
        query(&self.core.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The runner: carries out the core's outputs in order, under the core's lock (so each
    /// send queue and each link's control queue gets them in the core's order). It only
    /// moves frames into queues; nothing is encoded for a link here.
    fn run_outputs(self: &Arc<Self>, now: Instant, core: &mut EdgeCore, after: &mut AfterUnlock) {
        let mut sessions: Option<SessionTable<'_>> = None;
        let mut links: Option<LinkTable<'_>> = None;
        // Consecutive deliveries are queued together (see `SessionTable::fanout`); any
        // other output first queues those before it, so a client's acks and errors keep
        // their place among its deliveries.
        let mut fanouts: Vec<Fanout> = Vec::new();
        while let Some(output) = core.poll_output() {
            if let Output::Deliver(fanout) = output {
                fanouts.push(fanout);
                continue;
            }
            if !fanouts.is_empty() {
                sessions.get_or_insert_with(|| self.sessions.lock()).fanout(
                    now,
                    &fanouts,
                    &mut after.wakes,
                );
                fanouts.clear();
            }
            match output {
                Output::Deliver(_) => {}
                Output::Relay { distributor, frame } => links
                    .get_or_insert_with(|| self.links.lock())
                    .send(distributor, frame),
                Output::Subscribed { conn, topics } => {
                    let table = sessions.get_or_insert_with(|| self.sessions.lock());
                    table.push_json(
                        now,
                        conn,
                        &encode_ack(AckKind::Subscribed, &topics),
                        &mut after.wakes,
                    );
                    if let Some(who) = table.identity(conn) {
                        after.hooks.push(HookCall::Subscribed(who, topics));
                    }
                }
                Output::SubscribedFrom {
                    conn,
                    topic,
                    recovery,
                } => {
                    let table = sessions.get_or_insert_with(|| self.sessions.lock());
                    table.push_json(
                        now,
                        conn,
                        &encode_recovery_ack(&topic, recovery),
                        &mut after.wakes,
                    );
                    if let Some(who) = table.identity(conn) {
                        after.hooks.push(HookCall::Subscribed(who, vec![topic]));
                    }
                }
                Output::SubscribeFailed { conn, error } | Output::PublishFailed { conn, error } => {
                    sessions
                        .get_or_insert_with(|| self.sessions.lock())
                        .push_error(now, conn, &error, &mut after.wakes)
                }
                Output::Published {
                    conn,
                    id,
                    topic,
                    epoch,
                    seq,
                } => sessions
                    .get_or_insert_with(|| self.sessions.lock())
                    .push_json(
                        now,
                        conn,
                        &firetower_proto::client::encode_published(id, &topic, epoch, seq),
                        &mut after.wakes,
                    ),
                Output::Close { conn, code, reason } => sessions
                    .get_or_insert_with(|| self.sessions.lock())
                    .close(conn, code, reason),
                Output::PauseReads { conn } => sessions
                    .get_or_insert_with(|| self.sessions.lock())
                    .pause_reads(conn, true),
                Output::ResumeReads { conn } => sessions
                    .get_or_insert_with(|| self.sessions.lock())
                    .pause_reads(conn, false),
                Output::Unsubscribed { conn, topics } => sessions
                    .get_or_insert_with(|| self.sessions.lock())
                    .push_json(
                        now,
                        conn,
                        &encode_ack(AckKind::Unsubscribed, &topics),
                        &mut after.wakes,
                    ),
                Output::Left { conn, topics } => {
                    let table = sessions.get_or_insert_with(|| self.sessions.lock());
                    if let Some(who) = table.identity(conn) {
                        after.hooks.push(HookCall::Unsubscribed(who, topics));
                    }
                }
                Output::Connect { distributor } => {
                    let table = links.get_or_insert_with(|| self.links.lock());
                    if let Some(stop) = table.open(distributor) {
                        self.tasks.spawn(link_task(self.clone(), distributor, stop));
                    }
                }
                Output::Disconnect { distributor } => links
                    .get_or_insert_with(|| self.links.lock())
                    .close(distributor),
                Output::AckHot { topic, since } => {
                    let _ = self.hot_acks.try_send((topic, since));
                }
            }
        }
        if !fanouts.is_empty() {
            sessions.get_or_insert_with(|| self.sessions.lock()).fanout(
                now,
                &fanouts,
                &mut after.wakes,
            );
        }
    }

    /// `/readyz`: the reason this edge is not ready to take clients, if it is not. Ready
    /// while it holds a routing view and the metastore has confirmed its lease within the
    /// lease's TTL (registered, and heard from since).
    pub(crate) fn readiness(&self) -> Result<(), String> {
        if *self.stop.borrow() {
            return Err("shutting down".into());
        }
        if self.read_core(|core| core.routing().revision()) == 0 {
            return Err("no routing view from the metastore yet".into());
        }
        let confirmed = *self.lease.borrow();
        lease_readiness(confirmed.map(|c| c.sent_at), Instant::now(), self.lease_ttl)
    }

    /// What a scrape reads of the core (one short lock).
    fn core_view(&self) -> CoreView {
        let ready = self.readiness().is_ok();
        self.read_core(|core| CoreView {
            core: core.counters().clone(),
            publishes: core.publish_counters().clone(),
            topics: core.topic_count() as u64,
            revision: core.routing().revision(),
            ready,
        })
    }

    /// The gRPC address of some distributor (for TopicStatus, which any of them forwards).
    pub(crate) fn any_distributor_grpc(&self, topic: &str) -> Option<String> {
        self.read_core(|core| {
            let routing = core.routing();
            let owner = routing.route(firetower_proto::slot_of(topic)).distributor;
            routing
                .distributor_addr(owner, "grpc")
                .or_else(|| {
                    routing
                        .distributors()
                        .values()
                        .find_map(|m| m.addrs.get("grpc").map(String::as_str))
                })
                .map(str::to_string)
        })
    }
}

/// Feeds the metastore's routing events to the core, until the watch task ends.
async fn apply_watch<C: Connector>(edge: Arc<Edge<C>>, mut events: mpsc::Receiver<pb::WatchEvent>) {
    while let Some(event) = events.recv().await {
        edge.apply(|core, now| core.handle_watch(now, event));
    }
}

/// The core's clock: subscriber counts, subscribe timeouts, stuck route changes, hot acks.
async fn tick<C: Connector>(edge: Arc<Edge<C>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(edge.config.interest_flush_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        edge.apply(|core, now| core.handle_tick(now));
    }
}

/// Keeps the metastore's list of this edge's slots in step with the core's.
async fn sync_slots<C: Connector>(
    edge: Arc<Edge<C>>,
    meta: MetaClient<C>,
    mut incarnations: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sync = SlotSync::default();
    let mut incarnation = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(edge.config.metastore_debounce_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let current = *incarnations.borrow_and_update();
        if current == 0 {
            continue;
        }
        if current != incarnation {
            incarnation = current;
            sync.reset();
        }
        let batch = edge.read_core(|core| sync.next_batch(core.interest_slots()));
        if let Some((add, remove)) = batch {
            match meta
                .update_interest(edge.config.id, add.clone(), remove.clone())
                .await
            {
                Ok(_) => sync.confirm(&add, &remove),
                Err(status) => tracing::debug!(%status, "interest update failed; retrying"),
            }
        }
    }
}

/// Sends the core's hot-topic acks to the metastore.
async fn report_hot_acks<C: Connector>(
    meta: MetaClient<C>,
    edge_id: u64,
    mut acks: mpsc::Receiver<(String, u64)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (topic, since) = tokio::select! {
            ack = acks.recv() => match ack {
                Some(ack) => ack,
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(status) = meta.ack_hot_topic(edge_id, topic.clone(), since).await {
            tracing::debug!(%status, topic, since, "hot-topic ack failed; the core resends");
        }
    }
}

/// Waits for a task we hold the handle of, until `deadline`; then aborts it and waits for
/// it to be dropped.
async fn join_or_abort(mut task: JoinHandle<()>, deadline: Instant) {
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

/// Runs an edge until `shutdown` completes, then shuts it down: it returns once every task
/// it spawned has ended (within [`Config::shutdown_grace_ms`], after which the stragglers
/// are stopped where they are) and its sockets are closed.
///
/// `listener` yields accepted client connections (HTTP and WebSocket); `endpoint` is a
/// QUIC endpoint with this edge's client configuration as its default (see
/// [`firetower_net::tls::TlsMaterial::client_config`]); `connector` dials the
/// metastore and distributors' gRPC.
pub async fn run<C, L, IO>(
    config: Config,
    listener: L,
    endpoint: quinn::Endpoint,
    connector: C,
    hooks: Arc<dyn Hooks>,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError>
where
    C: Connector,
    L: Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    IO: AsyncRead + AsyncWrite + PeerIp + Unpin + Send + 'static,
{
    config.validate()?;
    let auth = ClientAuth::from_config(&config.auth)?;
    let member_key = firetower_net::ApiKey::from_optional_file(
        "member_key_file",
        config.member_key_file.as_deref(),
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (hot_ack_tx, hot_ack_rx) = mpsc::channel::<(String, u64)>(HOT_ACK_QUEUE);
    let (incarnation_tx, incarnations) = watch::channel(0u64);
    let (lease_tx, lease) = watch::channel(None::<LeaseConfirmed>);
    // Cyclic: the metrics read the core at scrape time through a weak handle.
    let edge = Arc::new_cyclic(|weak: &std::sync::Weak<Edge<C>>| {
        let weak = weak.clone();
        Edge {
            metrics: EdgeMetrics::new(
                config.id,
                counters.clone(),
                Box::new(move || weak.upgrade().map(|edge| edge.core_view())),
            ),
            lease,
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
            hooks,
            auth,
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            member_key,
            core: Mutex::new(
                EdgeCore::new(
                    config.id,
                    config.max_topics_per_conn,
                    Duration::from_millis(config.subscribe_timeout_ms),
                )
                .with_publish_limits(
                    config.max_publishes_in_flight,
                    Duration::from_millis(config.publish_answer_timeout_ms),
                ),
            ),
            sessions: Sessions::new(&config, counters.clone()),
            links: Links::new(),
            tasks: Tasks::new(),
            counters,
            endpoint: endpoint.clone(),
            next_conn: AtomicU64::new(1),
            write_turns: tokio::sync::Semaphore::new(config.write_turns()),
            distributors: Channels::new(connector.clone(), firetower_net::Role::Distributor),
            stop: stop_rx.clone(),
            hot_acks: hot_ack_tx,
            config: config.clone(),
        }
    });
    let rpc_timeout = Duration::from_millis(config.rpc_timeout_ms);
    let meta = MetaClient::new(config.metastore.clone(), connector, rpc_timeout)
        .with_key(edge.member_key.clone());
    edge.tasks.spawn(report_hot_acks(
        meta.clone(),
        config.id,
        hot_ack_rx,
        stop_rx.clone(),
    ));

    // Routing: the watch feeds the core.
    let (events_tx, events_rx) = mpsc::channel::<pb::WatchEvent>(64);
    let watch_task = spawn_watch(meta.clone(), events_tx, stop_rx.clone());
    edge.tasks.spawn(apply_watch(edge.clone(), events_rx));

    // Membership, and the slot list the metastore keeps for this edge.
    let membership = spawn_membership(
        meta.clone(),
        Registration {
            kind: pb::MemberKind::Edge,
            id: config.id,
            addrs: [("ws".to_string(), config.ws_advertise.clone())].into(),
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
        },
        incarnation_tx,
        Some(lease_tx),
        stop_rx.clone(),
    );
    edge.tasks.spawn(sync_slots(
        edge.clone(),
        meta,
        incarnations,
        stop_rx.clone(),
    ));
    edge.tasks.spawn(tick(edge.clone(), stop_rx));

    // Clients.
    let mut listener = listener;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.next() => match accepted {
                Some(Ok(io)) => edge.tasks.spawn(crate::ws::serve_conn(edge.clone(), io)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    // No new clients: the listening socket goes first.
    drop(listener);
    let deadline = Instant::now() + Duration::from_millis(config.shutdown_grace_ms);
    let _ = stop_tx.send(true);
    // Close every client with 1001 (going away).
    edge.sessions.close_all(1001, "edge shutting down");
    // Deregister, then let the links go.
    join_or_abort(membership, deadline).await;
    join_or_abort(watch_task, deadline).await;
    edge.links.stop_all();
    edge.tasks.shutdown(deadline).await;
    endpoint.close(close_code::SHUTDOWN.into(), b"edge shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// Runs an edge on a TCP listener and a UDP socket (for its relay links), loading TLS from
/// the config: what `firetower edge` does.
pub async fn run_tcp(
    config: Config,
    listener: tokio::net::TcpListener,
    udp: std::net::UdpSocket,
    hooks: Arc<dyn Hooks>,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate()?;
    let tls = firetower_net::tls::TlsMaterial::load(&config.tls)?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(tls.client_config()?);
    tls.require_identity(firetower_net::NodeIdentity::new(
        firetower_net::Role::Edge,
        config.id,
    ))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|r| {
        r.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    run(
        config,
        incoming,
        endpoint,
        firetower_net::TcpConnector::tls(firetower_net::ClientTls::node(&tls)?),
        hooks,
        counters,
        shutdown,
    )
    .await
}

/// Readiness by the lease: ready while the last confirmed heartbeat (or the registration)
/// was sent less than `ttl` ago. A heartbeat sent at `sent_at` and answered keeps the lease
/// alive until `sent_at + ttl` at least; after that the metastore may have expired it.
fn lease_readiness(
    confirmed_at: Option<Instant>,
    now: Instant,
    ttl: Duration,
) -> Result<(), String> {
    match confirmed_at {
        None => Err("not registered with the metastore yet".into()),
        Some(at) if now.saturating_duration_since(at) >= ttl => Err(format!(
            "the metastore has not confirmed this edge's lease for {} ms (its TTL is {} ms)",
            now.saturating_duration_since(at).as_millis(),
            ttl.as_millis()
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn an_edge_is_ready_only_while_its_lease_was_confirmed_within_the_ttl() {
        let ttl = Duration::from_millis(3000);
        let at = Instant::now();
        assert!(lease_readiness(None, at, ttl)
            .unwrap_err()
            .contains("not registered"));
        assert_eq!(lease_readiness(Some(at), at, ttl), Ok(()));
        assert_eq!(
            lease_readiness(Some(at), at + Duration::from_millis(2999), ttl),
            Ok(())
        );
        let lost = lease_readiness(Some(at), at + ttl, ttl).unwrap_err();
        assert!(lost.contains("3000 ms"), "{lost}");
        // A confirmation stamped after `now` (clock reads in either order) is fresh.
        assert_eq!(
            lease_readiness(Some(at + Duration::from_millis(5)), at, ttl),
            Ok(())
        );
    }
}
