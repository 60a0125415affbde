//! The client side of the metastore API, used by distributors, edges and the CLI.
//!
//! [`MetaClient`] tries the configured metastore nodes in turn (any node serves reads and
//! forwards writes to the leader), with a per-call timeout. [`spawn_membership`] keeps a
//! member registered (register, heartbeat every third of the lease, register again when
//! the lease was lost) and reports each new incarnation. [`spawn_watch`] follows the watch
//! stream across node failures, resuming from the last revision it passed on, so the
//! receiver sees every revision once and in order (or a snapshot that covers a gap).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use firetower_proto::metastore::v1 as pb;
use firetower_proto::metastore::v1::metastore_client::MetastoreClient;
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status};

use crate::api_key::{ApiKey, KeyedChannel};
use crate::connect::{Channels, Connector};

/// The largest message the client accepts (a full SlotMap with many edges is several MiB).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A metastore client over several node addresses.
#[derive(Clone)]
pub struct MetaClient<C: Connector> {
    addrs: Arc<Vec<String>>,
    channels: Channels<C>,
    /// The node that answered last: tried first next time.
    preferred: Arc<AtomicUsize>,
    timeout: Duration,
    /// Presented on every call (a `member` key for nodes, `admin` for operators).
    key: ApiKey,
}

impl<C: Connector> MetaClient<C> {
    /// A client of the nodes at `addrs` (host:port), each call bounded by `timeout`.
    pub fn new(addrs: Vec<String>, connector: C, timeout: Duration) -> Self {
        MetaClient {
            addrs: Arc::new(addrs),
            channels: Channels::new(connector, crate::tls::Role::Metastore),
            preferred: Arc::default(),
            timeout,
            key: ApiKey::none(),
        }
    }

    /// The same client, presenting `key` on every call.
    pub fn with_key(mut self, key: ApiKey) -> Self {
        self.key = key;
        self
    }

    fn client(&self, index: usize) -> Result<MetastoreClient<KeyedChannel>, Status> {
        let addr = &self.addrs[index % self.addrs.len().max(1)];
        let channel = self.channels.get(addr).map_err(Status::unavailable)?;
        Ok(MetastoreClient::with_interceptor(channel, self.key.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Runs `call` against each node in turn until one answers with something other than
    /// UNAVAILABLE / DEADLINE_EXCEEDED / a transport error.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(MetastoreClient<KeyedChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if self.addrs.is_empty() {
            return Err(Status::failed_precondition(
                "no metastore address configured",
            ));
        }
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = Status::unavailable("no metastore node answered");
        for i in 0..self.addrs.len() {
            let index = (start + i) % self.addrs.len();
            let client = self.client(index)?;
            match tokio::time::timeout(self.timeout, call(client)).await {
                Ok(Ok(reply)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) if !retryable(&status) => return Err(status),
                Ok(Err(status)) => last = status,
                Err(_) => last = Status::deadline_exceeded("metastore call timed out"),
            }
        }
        Err(last)
    }

    /// Registers; `instance` names this process (see `RegisterRequest.instance`), so that a
    /// retry after a lost reply does not register twice.
    pub async fn register(
        &self,
        kind: pb::MemberKind,
        id: u64,
        addrs: BTreeMap<String, String>,
        lease_ttl: Duration,
        instance: u64,
    ) -> Result<pb::RegisterReply, Status> {
        let request = pb::RegisterRequest {
            kind: kind as i32,
            id,
            addrs,
            lease_ttl_ms: lease_ttl.as_millis() as u64,
            instance,
        };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.register(r).await }
        })
        .await
    }

    pub async fn heartbeat(
        &self,
        kind: pb::MemberKind,
        id: u64,
        incarnation: u64,
    ) -> Result<pb::HeartbeatReply, Status> {
        let request = pb::HeartbeatRequest {
            kind: kind as i32,
            id,
            incarnation,
        };
        self.call(|mut c| async move { c.heartbeat(request).await })
            .await
    }

    pub async fn deregister(&self, kind: pb::MemberKind, id: u64) -> Result<(), Status> {
        let request = pb::DeregisterRequest {
            kind: kind as i32,
            id,
            drain: false,
        };
        self.call(|mut c| async move { c.deregister(request).await })
            .await
            .map(|_| ())
    }

    /// Starts a graceful leave: the member stays registered (its heartbeats go on) while
    /// the metastore moves its slots to the others; [`MetaClient::deregister`] ends it.
    /// Returns the revision of the moves.
    pub async fn drain(&self, kind: pb::MemberKind, id: u64) -> Result<u64, Status> {
        let request = pb::DeregisterRequest {
            kind: kind as i32,
            id,
            drain: true,
        };
        self.call(|mut c| async move { c.deregister(request).await })
            .await
            .map(|reply| reply.revision)
    }

    pub async fn update_interest(
        &self,
        edge_id: u64,
        add_slots: Vec<u32>,
        remove_slots: Vec<u32>,
    ) -> Result<pb::UpdateInterestReply, Status> {
        let request = pb::UpdateInterestRequest {
            edge_id,
            add_slots,
            remove_slots,
        };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.update_interest(r).await }
        })
        .await
    }

    pub async fn get_slot_map(&self, linearizable: bool) -> Result<pb::SlotMap, Status> {
        self.call(
            |mut c| async move { c.get_slot_map(pb::GetSlotMapRequest { linearizable }).await },
        )
        .await
    }

    /// Prepares a change of `topic`'s route to `shards` sub-topics (it commits once every
    /// edge acked, see [`MetaClient::ack_hot_topic`]). Returns the revision after it.
    pub async fn set_hot_topic(&self, topic: String, shards: u32) -> Result<u64, Status> {
        self.call(|mut c| {
            let topic = topic.clone();
            async move {
                c.set_hot_topic(pb::SetHotTopicRequest {
                    topic,
                    shards,
                    on_behalf_of: String::new(),
                })
                .await
            }
        })
        .await
        .map(|r| r.revision)
    }

    /// Prepares the merge of `topic` back into one (a change to 0 shards).
    pub async fn clear_hot_topic(&self, topic: String) -> Result<u64, Status> {
        self.call(|mut c| {
            let topic = topic.clone();
            async move { c.clear_hot_topic(pb::ClearHotTopicRequest { topic }).await }
        })
        .await
        .map(|r| r.revision)
    }

    /// Tells the metastore that edge `edge` receives the route of `topic` prepared at
    /// `since` (see `AckHotTopicRequest`). Returns the revision after the ack: higher than
    /// before when this ack committed the change. A stale `since` is not an error.
    pub async fn ack_hot_topic(&self, edge: u64, topic: String, since: u64) -> Result<u64, Status> {
        self.call(|mut c| {
            let topic = topic.clone();
            async move {
                c.ack_hot_topic(pb::AckHotTopicRequest {
                    edge_id: edge,
                    topic,
                    since,
                })
                .await
            }
        })
        .await
        .map(|r| r.revision)
    }

    /// Opens a watch stream from `from_revision` on the first node that accepts it.
    async fn open_watch(
        &self,
        from_revision: u64,
    ) -> Result<tonic::Streaming<pb::WatchEvent>, Status> {
        self.call(|mut c| async move { c.watch(pb::WatchRequest { from_revision }).await })
            .await
    }
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// How long to wait before trying the metastore again after a failure.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// Follows the metastore from a linearizable snapshot, then the watch stream, until `stop` turns true or
/// the receiver is dropped. Events go to `events` in order; the channel's bound (the
/// caller's) is the backlog this task holds, and it waits for room rather than skipping.
pub fn spawn_watch<C: Connector>(
    client: MetaClient<C>,
    events: mpsc::Sender<pb::WatchEvent>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut revision = 0u64;
        loop {
            if *stop.borrow() {
                return;
            }
            if revision == 0 {
                // Start from a linearizable read (through the leader): a node that is behind
                // (just restarted, or cut off) would hand out an old snapshot, and a follower
                // of it would act on routing that is no longer true.
                let map = tokio::select! {
                    m = client.get_slot_map(true) => m,
                    _ = stop.changed() => return,
                };
                match map {
                    Ok(map) => {
                        revision = map.revision;
                        let event = pb::WatchEvent {
                            event: Some(pb::watch_event::Event::Snapshot(map)),
                        };
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        tracing::debug!(%status, "linearizable slot map failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY_DELAY) => {}
                            _ = stop.changed() => return,
                        }
                        continue;
                    }
                }
            }
            let stream = tokio::select! {
                s = client.open_watch(revision) => s,
                _ = stop.changed() => return,
            };
            match stream {
                Ok(mut stream) => loop {
                    let next = tokio::select! {
                        n = stream.message() => n,
                        _ = stop.changed() => return,
                    };
                    match next {
                        Ok(Some(event)) => {
                            let rev = match &event.event {
                                Some(pb::watch_event::Event::Snapshot(m)) => m.revision,
                                Some(pb::watch_event::Event::Delta(d)) => d.revision,
                                None => continue,
                            };
                            // Anything we already passed on (after a resume) is skipped; a
                            // node never sends a snapshot older than what was asked for, but
                            // the routing must never go back in time.
                            if rev <= revision {
                                continue;
                            }
                            revision = rev;
                            if events.send(event).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                },
                Err(status) => {
                    tracing::debug!(%status, "metastore watch failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_DELAY) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// The metastore confirmed this member's lease: a heartbeat (or the registration) sent at
/// `sent_at` was answered by the leader after a linearizable read at `revision`. A member
/// whose routing view has reached `revision` knew the cluster's state as of `sent_at`, and
/// the metastore cannot expire it before `sent_at` + its lease (distributors fence their
/// sequencing with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfirmed {
    pub sent_at: tokio::time::Instant,
    pub revision: u64,
}

/// A member's identity for [`spawn_membership`].
#[derive(Debug, Clone)]
pub struct Registration {
    pub kind: pb::MemberKind,
    pub id: u64,
    pub addrs: BTreeMap<String, String>,
    pub lease_ttl: Duration,
}

/// Keeps `registration` registered until `stop` turns true, then deregisters (best effort).
/// `incarnations` receives each incarnation the member is registered under: a new value
/// means the metastore forgot the member's earlier state (an edge re-sends its interest).
/// `confirmations` (if any) receives each answered registration and heartbeat.
pub fn spawn_membership<C: Connector>(
    client: MetaClient<C>,
    registration: Registration,
    incarnations: watch::Sender<u64>,
    confirmations: Option<watch::Sender<Option<LeaseConfirmed>>>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // One instance per membership (per process): seeded in the simulator, random otherwise.
    let instance = rand::RngCore::next_u64(&mut crate::rng::ThreadRng) | 1;
    tokio::spawn(async move {
        let beat = registration.lease_ttl / 3;
        let mut incarnation = 0u64;
        loop {
            if *stop.borrow() {
                break;
            }
            if incarnation == 0 {
                let sent_at = tokio::time::Instant::now();
                match client
                    .register(
                        registration.kind,
                        registration.id,
                        registration.addrs.clone(),
                        registration.lease_ttl,
                        instance,
                    )
                    .await
                {
                    Ok(reply) => {
                        incarnation = reply.incarnation;
                        let _ = incarnations.send(incarnation);
                        confirm(&confirmations, sent_at, reply.revision);
                        continue;
                    }
                    Err(status) => {
                        tracing::warn!(%status, "registering with the metastore failed; retrying");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(beat) => {}
                _ = stop.changed() => continue,
            }
            let sent_at = tokio::time::Instant::now();
            match client
                .heartbeat(registration.kind, registration.id, incarnation)
                .await
            {
                Ok(reply) => confirm(&confirmations, sent_at, reply.revision),
                Err(status) if status.code() == Code::NotFound => {
                    tracing::warn!("the metastore lost this member's lease; registering again");
                    incarnation = 0;
                }
                Err(status) => tracing::debug!(%status, "heartbeat failed; retrying"),
            }
        }
        if incarnation != 0 {
            let _ = client.deregister(registration.kind, registration.id).await;
        }
    })
}

fn confirm(
    confirmations: &Option<watch::Sender<Option<LeaseConfirmed>>>,
    sent_at: tokio::time::Instant,
    revision: u64,
) {
    if let Some(tx) = confirmations {
        let _ = tx.send(Some(LeaseConfirmed { sent_at, revision }));
    }
}
