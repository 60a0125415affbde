//! The distributor gRPC API: Publish, PublishBatch, TopicStatus.
//!
//! A publish for a topic this node owns is sequenced here; otherwise it is forwarded once
//! to the owner (marked, so the owner never forwards it again). When the owner is unknown,
//! unreachable or says it is no longer the owner, the publish waits for the next routing
//! change and tries again, for up to `publish_retry_ms`; then it fails with UNAVAILABLE.
//! A publish is never dropped without an error reaching the caller.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firetower_metastore::network::Connector;
use firetower_proto::client::validate_json_data;
use firetower_proto::distributor::v1 as dpb;
use firetower_proto::distributor::v1::distributor_client::DistributorClient;
use firetower_proto::distributor::v1::distributor_server::{Distributor, DistributorServer};
use firetower_proto::slot_of;
use firetower_proto::topic::validate_topic;
use tonic::{Code, Request, Response, Status};

use crate::core::{ForwardKey, PublishOutcome};
use crate::node::Shared;

/// Metadata on a request one distributor forwards to another: `<origin id>-<number>`, the
/// key the owner deduplicates retried forwards by.
const FORWARDED: &str = "firetower-forwarded";
/// How long to wait for a routing change before trying an owner again.
const RETRY_POLL: Duration = Duration::from_millis(50);

/// The gRPC service of one distributor.
pub struct DistributorService<C: Connector> {
    shared: Arc<Shared<C>>,
}

impl<C: Connector> DistributorService<C> {
    pub(crate) fn new(shared: Arc<Shared<C>>) -> Self {
        DistributorService { shared }
    }

    pub(crate) fn into_server(self) -> DistributorServer<Self> {
        let max = self.shared.config.max_data_bytes * 2 + (1 << 20);
        let batch_max = max.saturating_mul(self.shared.config.max_batch.min(1024));
        DistributorServer::new(self)
            .max_decoding_message_size(batch_max)
            .max_encoding_message_size(4 << 20)
    }
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().get(FORWARDED).is_some()
}

/// The forwarder's key of a forwarded request (`origin-incarnation-number`), if it has a
/// valid one.
fn forward_key<T>(request: &Request<T>) -> Option<ForwardKey> {
    let value = request.metadata().get(FORWARDED)?.to_str().ok()?;
    let mut parts = value.split('-').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(origin)), Some(Ok(incarnation)), Some(Ok(n)), None) => {
            Some((origin, incarnation, n))
        }
        _ => None,
    }
}

fn forwarded<T>(message: T, timeout: Duration, key: Option<ForwardKey>) -> Request<T> {
    let mut request = Request::new(message);
    let value = match key {
        Some((origin, incarnation, n)) => format!("{origin}-{incarnation}-{n}"),
        None => "1".to_string(),
    };
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(value) {
        request.metadata_mut().insert(FORWARDED, value);
    }
    request.set_timeout(timeout);
    request
}

/// Checks one message; `prefix` names it in a batch (`messages[3].`).
fn check_message(
    shared: &Shared<impl Connector>,
    prefix: &str,
    m: &dpb::PublishRequest,
) -> Result<(), Status> {
    validate_topic(&m.topic)
        .map_err(|e| Status::invalid_argument(format!("{prefix}topic: {e}")))?;
    let max = shared.config.max_data_bytes;
    if m.data.len() > max {
        return Err(Status::invalid_argument(format!(
            "{prefix}data: {} bytes exceeds the limit of {max} bytes",
            m.data.len()
        )));
    }
    validate_json_data(&m.data)
        .map_err(|e| Status::invalid_argument(format!("{prefix}data: {e}")))?;
    Ok(())
}

fn peer<C: Connector>(
    shared: &Shared<C>,
    owner: u64,
) -> Option<DistributorClient<tonic::transport::Channel>> {
    let addr = {
        let state = shared.lock();
        state
            .core
            .routing()
            .distributor_addr(owner, "grpc")?
            .to_string()
    };
    let channel = shared.peers.get(&addr).ok()?;
    Some(DistributorClient::new(channel).max_encoding_message_size(64 << 20))
}

/// A new forward key, or none before the first registration (there is no incarnation yet
/// to keep keys unique across restarts, so such a forward is not deduplicated).
fn forward_key_of<C: Connector>(shared: &Shared<C>) -> Option<ForwardKey> {
    let incarnation = shared.lock().core.incarnation();
    (incarnation != 0).then(|| {
        (
            shared.config.id,
            incarnation,
            shared.next_forward.fetch_add(1, Ordering::Relaxed),
        )
    })
}

/// A transport failure before the request went out (the connection could not be made).
fn never_sent(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.message().to_ascii_lowercase().contains("connect")
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::FailedPrecondition | Code::DeadlineExceeded | Code::Unknown
    )
}

/// Publishes one checked message: locally when owned, else through the owner.
/// `received_key` is set when another distributor forwarded it here (with its key).
pub(crate) async fn publish<C: Connector>(
    shared: &Arc<Shared<C>>,
    topic: &str,
    data: Bytes,
    received_key: Option<Option<ForwardKey>>,
) -> Result<dpb::PublishReply, Status> {
    let is_forwarded = received_key.is_some();
    // One key for every forward of this publish, so the owner sequences it once however
    // often a lost reply makes us retry; made at the first forward (a publish sequenced
    // here needs none).
    let mut my_key: Option<Option<ForwardKey>> = None;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.config.publish_retry_ms);
    let mut revision = shared.routing_revision.clone();
    let mut last = String::from("no distributor owns the topic's slot yet");
    // The owner a forward went to without a clear answer.
    let mut uncertain: Option<u64> = None;
    loop {
        revision.borrow_and_update();
        if let Some(earlier) = uncertain {
            let owner = {
                let state = shared.lock();
                state.core.routing().route(slot_of(topic)).distributor
            };
            if owner != earlier {
                // A forward to `earlier` may have been sequenced (its reply was lost). That
                // owner would recognise a retry by its key; another (this node included)
                // would not, and sequencing again could deliver the message twice.
                return Err(Status::unavailable(format!(
                    "the publish may already have been sequenced by distributor {earlier} before \
                     slot {} moved; not retried, to avoid a duplicate",
                    slot_of(topic)
                )));
            }
        }
        let outcome = shared
            .publish_local(topic, &data, received_key.flatten())
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        match outcome {
            PublishOutcome::Sequenced { epoch, seq, .. } => {
                return Ok(dpb::PublishReply { epoch, seq })
            }
            PublishOutcome::NotOwner { owner } if is_forwarded => {
                return Err(Status::failed_precondition(format!(
                    "distributor {} does not own slot {} (owner: {owner})",
                    shared.config.id,
                    slot_of(topic)
                )));
            }
            PublishOutcome::NotOwner { owner: 0 } => {}
            PublishOutcome::NotOwner { owner } => match peer(shared, owner) {
                Some(mut client) => {
                    shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    let request = forwarded(
                        dpb::PublishRequest {
                            topic: topic.to_string(),
                            data: data.clone(),
                        },
                        shared.config.rpc_timeout(),
                        *my_key.get_or_insert_with(|| forward_key_of(shared)),
                    );
                    match client.publish(request).await {
                        Ok(reply) => return Ok(reply.into_inner()),
                        // "Not the owner", or no connection at all: certainly not sequenced.
                        Err(status)
                            if status.code() == Code::FailedPrecondition || never_sent(&status) =>
                        {
                            last = format!("owner {owner}: {}", status.message());
                        }
                        Err(status) if retryable(&status) => {
                            // Maybe sequenced, maybe not: only this owner may be retried.
                            uncertain = Some(owner);
                            last = format!("owner {owner}: {}", status.message());
                        }
                        Err(status) => return Err(status),
                    }
                }
                None => last = format!("owner {owner} has no known gRPC address"),
            },
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Status::unavailable(format!(
                "no owner of slot {} accepted the publish within {} ms: {last}",
                slot_of(topic),
                shared.config.publish_retry_ms
            )));
        }
        // Wait for the routing to change (or a short while, for a peer to come back).
        let wait = (deadline - now).min(RETRY_POLL);
        let _ = tokio::time::timeout(wait, revision.changed()).await;
    }
}

#[tonic::async_trait]
impl<C: Connector> Distributor for DistributorService<C> {
    async fn publish(
        &self,
        request: Request<dpb::PublishRequest>,
    ) -> Result<Response<dpb::PublishReply>, Status> {
        let received = is_forwarded(&request).then(|| forward_key(&request));
        let m = request.into_inner();
        check_message(&self.shared, "", &m)?;
        publish(&self.shared, &m.topic, m.data, received)
            .await
            .map(Response::new)
    }

    async fn publish_batch(
        &self,
        request: Request<dpb::PublishBatchRequest>,
    ) -> Result<Response<dpb::PublishBatchReply>, Status> {
        let received = is_forwarded(&request).then(|| forward_key(&request));
        let batch = request.into_inner();
        let max = self.shared.config.max_batch;
        if batch.messages.len() > max {
            return Err(Status::invalid_argument(format!(
                "messages: {} messages exceed the batch limit of {max}",
                batch.messages.len()
            )));
        }
        for (i, m) in batch.messages.iter().enumerate() {
            check_message(&self.shared, &format!("messages[{i}]."), m)?;
        }
        let mut results = Vec::with_capacity(batch.messages.len());
        for (i, m) in batch.messages.into_iter().enumerate() {
            match publish(&self.shared, &m.topic, m.data, received.map(|_| None)).await {
                Ok(r) => results.push(r),
                Err(status) => {
                    return Err(Status::new(
                        status.code(),
                        format!(
                            "messages[{i}]: {} (messages before it were published)",
                            status.message()
                        ),
                    ))
                }
            }
        }
        Ok(Response::new(dpb::PublishBatchReply { results }))
    }

    async fn topic_status(
        &self,
        request: Request<dpb::TopicStatusRequest>,
    ) -> Result<Response<dpb::TopicStatusReply>, Status> {
        let is_forwarded = is_forwarded(&request);
        let topic = request.into_inner().topic;
        validate_topic(&topic).map_err(|e| Status::invalid_argument(format!("topic: {e}")))?;
        let local = {
            let state = self.shared.lock();
            state
                .core
                .topic_count(&topic)
                .map(|c| (c, state.core.relayed()))
        };
        match local {
            Ok((count, relayed)) => Ok(Response::new(dpb::TopicStatusReply {
                topic,
                subscribers: count.subscribers,
                edge_ids: count.edges,
                relayed_messages: relayed,
            })),
            Err(owner) if owner == 0 || is_forwarded => Err(Status::unavailable(format!(
                "distributor {} does not own slot {} (owner: {owner})",
                self.shared.config.id,
                slot_of(&topic)
            ))),
            Err(owner) => {
                let mut client = peer(&self.shared, owner).ok_or_else(|| {
                    Status::unavailable(format!("owner {owner} has no known gRPC address"))
                })?;
                client
                    .topic_status(forwarded(
                        dpb::TopicStatusRequest { topic },
                        self.shared.config.rpc_timeout(),
                        None,
                    ))
                    .await
            }
        }
    }

    /// Closes every connection of a user on every edge linked to this distributor (every
    /// edge links to every distributor) and sums the edges' counts. Edges that do not
    /// answer within `rpc_timeout_ms` are left out of the count.
    async fn kick_user(
        &self,
        request: Request<dpb::KickUserRequest>,
    ) -> Result<Response<dpb::KickUserReply>, Status> {
        let user_id = request.into_inner().user_id;
        if user_id.is_empty() || user_id.len() > 256 {
            return Err(Status::invalid_argument("user_id: must be 1 to 256 bytes"));
        }
        let shared = &self.shared;
        let request_id = shared.next_kick.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        shared
            .kicks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, tx);
        let edges = shared.broadcast_kick(&user_id, request_id);
        let deadline = tokio::time::Instant::now() + shared.config.rpc_timeout();
        let mut closed = 0u64;
        for _ in 0..edges {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(n)) => closed += n,
                _ => break,
            }
        }
        shared
            .kicks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
        Ok(Response::new(dpb::KickUserReply {
            connections_closed: closed,
        }))
    }
}
