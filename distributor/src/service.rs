//! The distributor gRPC API: Publish, PublishBatch, TopicStatus, KickUser, and ForwardBatch
//! (between distributors).
//!
//! A publish for a topic this node owns is sequenced here; otherwise it is forwarded once
//! to the owner (marked, so the owner never forwards it again). When the owner is unknown,
//! unreachable or says it is no longer the owner, the publish waits for the next routing
//! change and tries again, for up to `publish_retry_ms`; then it fails with UNAVAILABLE.
//! A publish is never dropped without an error reaching the caller.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firetower_net::Connector;
use firetower_proto::client::validate_json_data;
use firetower_proto::distributor::v1 as dpb;
use firetower_proto::distributor::v1::distributor_client::DistributorClient;
use firetower_proto::distributor::v1::distributor_server::{Distributor, DistributorServer};
use firetower_proto::routing::route_topics;
use firetower_proto::slot_of;
use firetower_proto::topic::{validate_route_topic, validate_topic};
use tonic::{Code, Request, Response, Status};

use crate::core::{ForwardKey, PublishOutcome};
use crate::node::Shared;

/// Metadata on a request one distributor forwards to another: `<origin id>-<number>`, the
/// key the owner deduplicates retried forwards by.
const FORWARDED: &str = "firetower-forwarded";
/// Metadata on a forwarded publish: `<route tag>-<message id>`.
const ROUTE: &str = "firetower-route";
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
    forwarded: bool,
) -> Result<(), Status> {
    // Sub-topic names (`T#k`) only travel between distributors.
    let valid = if forwarded {
        validate_route_topic(&m.topic)
    } else {
        validate_topic(&m.topic)
    };
    valid.map_err(|e| Status::invalid_argument(format!("{prefix}topic: {e}")))?;
    check_data(shared, prefix, &m.data)
}

/// Checks one message body: its size and that it is one JSON value.
fn check_data(shared: &Shared<impl Connector>, prefix: &str, data: &[u8]) -> Result<(), Status> {
    let max = shared.config.max_data_bytes;
    if data.len() > max {
        return Err(Status::invalid_argument(format!(
            "{prefix}data: {} bytes exceeds the limit of {max} bytes",
            data.len()
        )));
    }
    validate_json_data(data).map_err(|e| Status::invalid_argument(format!("{prefix}data: {e}")))?;
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

/// A new message id: unique per accepting distributor process (its id, registration
/// incarnation and a counter, hashed). Every copy of a hot topic's fan-out carries it.
/// `incarnation` is this node's registration incarnation, read by the caller under the
/// lock it already takes.
pub(crate) fn new_msg_id<C: Connector>(shared: &Shared<C>, incarnation: u64) -> u64 {
    let n = shared.next_forward.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&shared.config.id.to_le_bytes());
    bytes[8..16].copy_from_slice(&incarnation.to_le_bytes());
    bytes[16..].copy_from_slice(&n.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// What a forwarded publish carries besides the message: the forwarder's key, the route
/// tag it routed by and the message id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    key: Option<ForwardKey>,
    route_tag: u64,
    msg_id: u64,
}

/// The forwarding metadata of a publish another distributor routed here, or `None` for a
/// publish from a backend. Every forward carries its route tag and message id.
fn received<T>(request: &Request<T>) -> Result<Option<Received>, Status> {
    if !is_forwarded(request) {
        return Ok(None);
    }
    let (route_tag, msg_id) = request
        .metadata()
        .get(ROUTE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (tag, id) = v.split_once('-')?;
            Some((tag.parse().ok()?, id.parse().ok()?))
        })
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{ROUTE}: a forwarded publish needs `<route tag>-<message id>`"
            ))
        })?;
    Ok(Some(Received {
        key: forward_key(request),
        route_tag,
        msg_id,
    }))
}

/// Publishes one checked message of a client topic. A topic that was never split is
/// sequenced by its owner; a split one goes to every sub-topic of its route (and, while a
/// change is prepared, of the previous route too) with one message id. An owner that
/// refuses the route as stale makes it wait for this node's view to move on and route the
/// remaining names again.
pub(crate) async fn publish<C: Connector>(
    shared: &Arc<Shared<C>>,
    topic: &str,
    data: Bytes,
    received: Option<Received>,
) -> Result<dpb::PublishReply, Status> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.config.publish_retry_ms);
    if let Some(r) = received {
        // Another distributor routed it: sequence it here or say why not.
        return publish_one(
            shared,
            topic,
            &data,
            r.route_tag,
            r.msg_id,
            Some(r.key),
            deadline,
        )
        .await;
    }
    let (incarnation, split) = {
        let state = shared.lock();
        let split = state.core.routing().hot_route(topic).is_some();
        (state.core.incarnation(), split)
    };
    let msg_id = new_msg_id(shared, incarnation);
    if !split {
        // The common case, a topic never split: one name, no fan-out. Should it have been
        // split meanwhile, its owner refuses the route (ABORTED) and the routed path below
        // takes over.
        match publish_one(shared, topic, &data, 0, msg_id, None, deadline).await {
            Err(status) if status.code() == Code::Aborted => {}
            other => return other,
        }
    }
    let mut revision = shared.routing_revision.clone();
    let mut done: BTreeMap<String, dpb::PublishReply> = BTreeMap::new();
    loop {
        revision.borrow_and_update();
        let (tag, names) = shared.lock().core.routing().publish_route(topic);
        let todo: Vec<&String> = names.iter().filter(|n| !done.contains_key(*n)).collect();
        let results = futures::future::join_all(
            todo.iter()
                .map(|name| publish_one(shared, name, &data, tag, msg_id, None, deadline)),
        )
        .await;
        let mut stale = None;
        for (name, result) in todo.into_iter().zip(results) {
            match result {
                Ok(reply) => {
                    done.insert(name.clone(), reply);
                }
                Err(status) if status.code() == Code::Aborted => stale = Some(status),
                Err(status) => return Err(status),
            }
        }
        match stale {
            None => {
                let first = names.first().and_then(|n| done.get(n)).cloned();
                let mut reply = first.unwrap_or_default();
                if names.len() != 1 || names[0] != topic {
                    reply.shards = names.len() as u32;
                }
                return Ok(reply);
            }
            Some(status) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(Status::unavailable(format!(
                        "the hot-topic route of {topic:?} kept changing for {} ms: {}",
                        shared.config.publish_retry_ms,
                        status.message()
                    )));
                }
                let wait = (deadline - now).min(RETRY_POLL);
                let _ = tokio::time::timeout(wait, revision.changed()).await;
            }
        }
    }
}

/// After a forward to `uncertain` ended without a clear answer, a retry may go only to that
/// same owner: it would recognise the retry by its key; another (this node included) would
/// not, and sequencing again could deliver the message twice.
fn refuse_after_unclear_forward<C: Connector>(
    shared: &Shared<C>,
    topic: &str,
    uncertain: Option<u64>,
) -> Result<(), Status> {
    let Some(earlier) = uncertain else {
        return Ok(());
    };
    let owner = shared
        .lock()
        .core
        .routing()
        .route(slot_of(topic))
        .distributor;
    if owner == earlier {
        return Ok(());
    }
    Err(Status::unavailable(format!(
        "the publish may already have been sequenced by distributor {earlier} before slot {} \
         moved; not retried, to avoid a duplicate",
        slot_of(topic)
    )))
}

/// The replies to a sequenced run: `(epoch, seq)` of each message.
fn replies(sequenced: Vec<(u64, u64)>) -> Vec<dpb::PublishReply> {
    sequenced
        .into_iter()
        .map(|(epoch, seq)| dpb::PublishReply {
            epoch,
            seq,
            shards: 0,
        })
        .collect()
}

/// Sorts out a forward that failed (other than ABORTED): `Ok` when it may be retried, with
/// `last` saying why and `uncertain` set when the owner may have sequenced it anyway.
fn failed_forward(
    status: Status,
    owner: u64,
    last: &mut String,
    uncertain: &mut Option<u64>,
) -> Result<(), Status> {
    if status.code() == Code::FailedPrecondition || never_sent(&status) {
        // "Not the owner", or no connection at all: certainly not sequenced.
        *last = format!("owner {owner}: {}", status.message());
        Ok(())
    } else if retryable(&status) {
        // Maybe sequenced, maybe not: only this owner may be retried.
        *uncertain = Some(owner);
        *last = format!("owner {owner}: {}", status.message());
        Ok(())
    } else {
        Err(status)
    }
}

/// Waits for the routing to change (or a short while, for a peer to come back), or fails
/// with UNAVAILABLE once `deadline` has passed.
async fn wait_for_owner<C: Connector>(
    shared: &Shared<C>,
    topic: &str,
    revision: &mut tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    last: &str,
) -> Result<(), Status> {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return Err(Status::unavailable(format!(
            "no owner of slot {} accepted the publish within {} ms: {last}",
            slot_of(topic),
            shared.config.publish_retry_ms
        )));
    }
    let wait = (deadline - now).min(RETRY_POLL);
    let _ = tokio::time::timeout(wait, revision.changed()).await;
    Ok(())
}

/// Publishes a message under one name (a topic or sub-topic): locally when owned, else
/// through the owner. `received_key` is set when another distributor forwarded it here
/// (with its key). ABORTED means the route tag was stale.
async fn publish_one<C: Connector>(
    shared: &Arc<Shared<C>>,
    topic: &str,
    data: &Bytes,
    route_tag: u64,
    msg_id: u64,
    received_key: Option<Option<ForwardKey>>,
    deadline: tokio::time::Instant,
) -> Result<dpb::PublishReply, Status> {
    let is_forwarded = received_key.is_some();
    // One key for every forward of this publish, so the owner sequences it once however
    // often a lost reply makes us retry; made at the first forward (a publish sequenced
    // here needs none).
    let mut my_key: Option<Option<ForwardKey>> = None;
    let mut revision = shared.routing_revision.clone();
    let mut last = String::from("no distributor owns the topic's slot yet");
    // The owner a forward went to without a clear answer.
    let mut uncertain: Option<u64> = None;
    loop {
        revision.borrow_and_update();
        refuse_after_unclear_forward(shared, topic, uncertain)?;
        let outcome = shared
            .publish_local(topic, data, received_key.flatten(), route_tag, msg_id)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        match outcome {
            PublishOutcome::Sequenced { epoch, seq, .. } => {
                return Ok(dpb::PublishReply {
                    epoch,
                    seq,
                    shards: 0,
                })
            }
            PublishOutcome::StaleRoute { since } => {
                return Err(Status::aborted(format!(
                    "stale hot-topic route for {topic:?}: tag {route_tag} is older than {since}"
                )));
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
                    let mut request = forwarded(
                        dpb::PublishRequest {
                            topic: topic.to_string(),
                            data: data.clone(),
                        },
                        shared.config.rpc_timeout(),
                        *my_key.get_or_insert_with(|| forward_key_of(shared)),
                    );
                    if let Ok(value) =
                        tonic::metadata::MetadataValue::try_from(format!("{route_tag}-{msg_id}"))
                    {
                        request.metadata_mut().insert(ROUTE, value);
                    }
                    match client.publish(request).await {
                        Ok(reply) => return Ok(reply.into_inner()),
                        Err(status) if status.code() == Code::Aborted => return Err(status),
                        Err(status) => failed_forward(status, owner, &mut last, &mut uncertain)?,
                    }
                }
                None => last = format!("owner {owner} has no known gRPC address"),
            },
        }
        wait_for_owner(shared, topic, &mut revision, deadline, &last).await?;
    }
}

/// The replies to a run of one topic's messages (by batch index), or the first failure.
type RunResult = Result<Vec<(usize, dpb::PublishReply)>, (usize, Status)>;

/// Publishes a run of one topic's messages from a PublishBatch, in order. A topic with no
/// hot-topic entry is sequenced here or forwarded to its owner in one `ForwardBatch` call;
/// a hot topic (or one that turns hot meanwhile) goes message by message.
async fn publish_run<C: Connector>(
    shared: &Arc<Shared<C>>,
    topic: &str,
    messages: Vec<(usize, Bytes)>,
) -> RunResult {
    let (incarnation, split) = {
        let state = shared.lock();
        let split = state.core.routing().hot_route(topic).is_some();
        (state.core.incarnation(), split)
    };
    if !split && messages.len() > 1 {
        let items: Vec<(u64, Bytes)> = messages
            .iter()
            .map(|(_, data)| (new_msg_id(shared, incarnation), data.clone()))
            .collect();
        match publish_run_once(shared, topic, &items).await {
            Ok(Some(replies)) => {
                return Ok(messages.iter().map(|(i, _)| *i).zip(replies).collect());
            }
            // The topic turned hot: nothing was sequenced; route each message.
            Ok(None) => {}
            Err(status) => return Err((messages[0].0, status)),
        }
    }
    let mut replies = Vec::with_capacity(messages.len());
    for (i, data) in messages {
        match publish(shared, topic, data, None).await {
            Ok(reply) => replies.push((i, reply)),
            Err(status) => return Err((i, status)),
        }
    }
    Ok(replies)
}

/// Sequences a run of a never-split topic's messages (`(message id, data)`) here, or
/// forwards it to the owner in one call; retried like [`publish_one`] (same rules for an
/// unclear forward). `Ok(None)`: the topic has a hot entry now, and nothing was sequenced.
async fn publish_run_once<C: Connector>(
    shared: &Arc<Shared<C>>,
    topic: &str,
    items: &[(u64, Bytes)],
) -> Result<Option<Vec<dpb::PublishReply>>, Status> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.config.publish_retry_ms);
    // One key per message for every forward of this run, reserved at the first forward.
    let mut keys: Option<(u64, u64, u64)> = None;
    let mut revision = shared.routing_revision.clone();
    let mut last = String::from("no distributor owns the topic's slot yet");
    let mut uncertain: Option<u64> = None;
    let local: Vec<(Option<ForwardKey>, u64, Bytes)> = items
        .iter()
        .map(|(msg_id, data)| (None, *msg_id, data.clone()))
        .collect();
    loop {
        revision.borrow_and_update();
        refuse_after_unclear_forward(shared, topic, uncertain)?;
        let outcome = shared
            .publish_local_run(topic, 0, &local)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        match outcome {
            Ok(sequenced) => return Ok(Some(replies(sequenced))),
            Err(PublishOutcome::StaleRoute { .. }) => return Ok(None),
            Err(PublishOutcome::NotOwner { owner }) if owner != 0 => match peer(shared, owner) {
                Some(mut client) => {
                    shared
                        .counters
                        .forwarded
                        .fetch_add(items.len() as u64, Ordering::Relaxed);
                    let (origin, incarnation, base) = *keys.get_or_insert_with(|| {
                        let incarnation = shared.lock().core.incarnation();
                        let base = shared
                            .next_forward
                            .fetch_add(items.len() as u64, Ordering::Relaxed);
                        (shared.config.id, incarnation, base)
                    });
                    let request = forwarded(
                        dpb::ForwardBatchRequest {
                            topic: topic.to_string(),
                            origin,
                            incarnation,
                            messages: items
                                .iter()
                                .zip(base..)
                                .map(|((msg_id, data), key)| dpb::ForwardedMessage {
                                    key,
                                    route_tag: 0,
                                    msg_id: *msg_id,
                                    data: data.clone(),
                                })
                                .collect(),
                        },
                        shared.config.rpc_timeout(),
                        None,
                    );
                    match client.forward_batch(request).await {
                        Ok(reply) => {
                            let results = reply.into_inner().results;
                            if results.len() != items.len() {
                                return Err(Status::internal(format!(
                                    "owner {owner} answered {} results for {} messages",
                                    results.len(),
                                    items.len()
                                )));
                            }
                            return Ok(Some(results));
                        }
                        Err(status) if status.code() == Code::Aborted => return Ok(None),
                        Err(status) => failed_forward(status, owner, &mut last, &mut uncertain)?,
                    }
                }
                None => last = format!("owner {owner} has no known gRPC address"),
            },
            // No owner yet (or not registered): wait for the routing.
            Err(_) => {}
        }
        wait_for_owner(shared, topic, &mut revision, deadline, &last).await?;
    }
}

/// One name's subscriber count and counters, from its owner (here or forwarded).
async fn status_one<C: Connector>(
    shared: &Arc<Shared<C>>,
    name: &str,
    is_forwarded: bool,
) -> Result<(dpb::TopicStatusReply, u64), Status> {
    let local = {
        let state = shared.lock();
        state
            .core
            .topic_count(name)
            .map(|c| (c, state.core.relayed()))
    };
    match local {
        Ok((count, relayed)) => Ok((
            dpb::TopicStatusReply {
                topic: name.to_string(),
                subscribers: count.subscribers,
                edge_ids: count.edges,
                relayed_messages: relayed,
                edge_subscribers: count.edge_subscribers,
                shards: vec![dpb::ShardStatus {
                    topic: name.to_string(),
                    owner: shared.config.id,
                    subscribers: count.subscribers,
                    sequenced: count.stats.sequenced,
                    relayed: count.stats.relayed,
                }],
            },
            shared.config.id,
        )),
        Err(owner) if owner == 0 || is_forwarded => Err(Status::unavailable(format!(
            "distributor {} does not own slot {} (owner: {owner})",
            shared.config.id,
            slot_of(name)
        ))),
        Err(owner) => {
            let mut client = peer(shared, owner).ok_or_else(|| {
                Status::unavailable(format!("owner {owner} has no known gRPC address"))
            })?;
            let reply = client
                .topic_status(forwarded(
                    dpb::TopicStatusRequest {
                        topic: name.to_string(),
                    },
                    shared.config.rpc_timeout(),
                    None,
                ))
                .await?;
            Ok((reply.into_inner(), owner))
        }
    }
}

#[tonic::async_trait]
impl<C: Connector> Distributor for DistributorService<C> {
    async fn publish(
        &self,
        request: Request<dpb::PublishRequest>,
    ) -> Result<Response<dpb::PublishReply>, Status> {
        let received = received(&request)?;
        let m = request.into_inner();
        check_message(&self.shared, "", &m, received.is_some())?;
        publish(&self.shared, &m.topic, m.data, received)
            .await
            .map(Response::new)
    }

    async fn publish_batch(
        &self,
        request: Request<dpb::PublishBatchRequest>,
    ) -> Result<Response<dpb::PublishBatchReply>, Status> {
        if is_forwarded(&request) {
            return Err(Status::invalid_argument(
                "PublishBatch is not forwarded between distributors",
            ));
        }
        let batch = request.into_inner();
        let max = self.shared.config.max_batch;
        if batch.messages.len() > max {
            return Err(Status::invalid_argument(format!(
                "messages: {} messages exceed the batch limit of {max}",
                batch.messages.len()
            )));
        }
        for (i, m) in batch.messages.iter().enumerate() {
            check_message(&self.shared, &format!("messages[{i}]."), m, false)?;
        }
        // Each topic's messages go one after the other, in batch order; different topics
        // go concurrently, so a batch costs about one forward's round trip rather than
        // one per forwarded message.
        let count = batch.messages.len();
        let mut by_topic: Vec<(String, Vec<(usize, Bytes)>)> = Vec::new();
        let mut index_of: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        for (i, m) in batch.messages.into_iter().enumerate() {
            let group = *index_of.entry(m.topic.clone()).or_insert_with(|| {
                by_topic.push((m.topic, Vec::new()));
                by_topic.len() - 1
            });
            by_topic[group].1.push((i, m.data));
        }
        let shared = &self.shared;
        let groups = by_topic
            .into_iter()
            .map(|(topic, messages)| async move { publish_run(shared, &topic, messages).await });
        let mut results = vec![dpb::PublishReply::default(); count];
        let mut first_failure: Option<(usize, Status)> = None;
        for group in futures::future::join_all(groups).await {
            match group {
                Ok(replies) => {
                    for (i, reply) in replies {
                        results[i] = reply;
                    }
                }
                Err((i, status)) => {
                    if first_failure.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_failure = Some((i, status));
                    }
                }
            }
        }
        if let Some((i, status)) = first_failure {
            return Err(Status::new(
                status.code(),
                format!(
                    "messages[{i}]: {} (the later messages of its topic were not published; \
                     messages of other topics may have been)",
                    status.message()
                ),
            ));
        }
        Ok(Response::new(dpb::PublishBatchReply { results }))
    }

    async fn forward_batch(
        &self,
        request: Request<dpb::ForwardBatchRequest>,
    ) -> Result<Response<dpb::ForwardBatchReply>, Status> {
        if !is_forwarded(&request) {
            return Err(Status::invalid_argument(
                "ForwardBatch is only called between distributors",
            ));
        }
        let run = request.into_inner();
        validate_route_topic(&run.topic)
            .map_err(|e| Status::invalid_argument(format!("topic: {e}")))?;
        let max = self.shared.config.max_batch;
        if run.messages.len() > max {
            return Err(Status::invalid_argument(format!(
                "messages: {} messages exceed the batch limit of {max}",
                run.messages.len()
            )));
        }
        let route_tag = run.messages.first().map_or(0, |m| m.route_tag);
        for (i, m) in run.messages.iter().enumerate() {
            if m.route_tag != route_tag {
                return Err(Status::invalid_argument(format!(
                    "messages[{i}].route_tag: a run has one route tag"
                )));
            }
            check_data(&self.shared, &format!("messages[{i}]."), &m.data)?;
        }
        let keyed = run.origin != 0 && run.incarnation != 0;
        let items: Vec<(Option<ForwardKey>, u64, Bytes)> = run
            .messages
            .into_iter()
            .map(|m| {
                let key = keyed.then_some((run.origin, run.incarnation, m.key));
                (key, m.msg_id, m.data)
            })
            .collect();
        let outcome = self
            .shared
            .publish_local_run(&run.topic, route_tag, &items)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        match outcome {
            Ok(sequenced) => Ok(Response::new(dpb::ForwardBatchReply {
                results: replies(sequenced),
            })),
            Err(PublishOutcome::StaleRoute { since }) => Err(Status::aborted(format!(
                "stale hot-topic route for {:?}: tag {route_tag} is older than {since}",
                run.topic
            ))),
            Err(PublishOutcome::NotOwner { owner }) => Err(Status::failed_precondition(format!(
                "distributor {} does not own slot {} (owner: {owner})",
                self.shared.config.id,
                slot_of(&run.topic)
            ))),
            Err(PublishOutcome::Sequenced { .. }) => {
                Err(Status::internal("a run was refused without a reason"))
            }
        }
    }

    async fn topic_status(
        &self,
        request: Request<dpb::TopicStatusRequest>,
    ) -> Result<Response<dpb::TopicStatusReply>, Status> {
        let is_forwarded = is_forwarded(&request);
        let topic = request.into_inner().topic;
        let valid = if is_forwarded {
            validate_route_topic(&topic)
        } else {
            validate_topic(&topic)
        };
        valid.map_err(|e| Status::invalid_argument(format!("topic: {e}")))?;
        let hot = self.shared.lock().core.routing().hot_route(&topic);
        let names = match hot {
            Some(h) if !is_forwarded && (h.shards > 0 || !h.committed) => {
                let mut names = route_topics(&topic, h.shards);
                if !h.committed {
                    for name in route_topics(&topic, h.prev_shards) {
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                names
            }
            _ => {
                let (reply, _) = status_one(&self.shared, &topic, is_forwarded).await?;
                return Ok(Response::new(reply));
            }
        };
        // A split topic: every edge subscribes to one sub-topic (two while it changes route,
        // with the same count), so the total is the sum over edges of each edge's largest
        // count.
        let replies = futures::future::join_all(
            names
                .iter()
                .map(|name| status_one(&self.shared, name, false)),
        )
        .await;
        let mut per_edge: BTreeMap<u64, u64> = BTreeMap::new();
        let mut shards = Vec::new();
        let mut relayed = 0;
        for reply in replies {
            let (reply, _) = reply?;
            for (edge, n) in reply.edge_ids.iter().zip(&reply.edge_subscribers) {
                let e = per_edge.entry(*edge).or_default();
                *e = (*e).max(*n);
            }
            relayed += reply.shards.iter().map(|s| s.relayed).sum::<u64>();
            shards.extend(reply.shards);
        }
        Ok(Response::new(dpb::TopicStatusReply {
            topic,
            subscribers: per_edge.values().sum(),
            edge_ids: per_edge.keys().copied().collect(),
            edge_subscribers: per_edge.values().copied().collect(),
            relayed_messages: relayed,
            shards,
        }))
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
