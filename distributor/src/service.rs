//! The distributor gRPC API: Publish, PublishBatch, TopicStatus, KickUser, and ForwardBatch
//! (between distributors).
//!
//! This is a shell: it checks requests, hands each publish to the core
//! ([`DistributorCore::handle_publish`](crate::core::DistributorCore::handle_publish)) and
//! waits for its outcome. Routing, forwarding, retries and deadlines are the core's
//! decisions (`core::forward`); the forwards themselves are made by `node::Shared::forward`.
//! Every failure becomes one gRPC status in [`status_of`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firetower_net::{Caller, Connector, KeyedChannel, Role};
use firetower_proto::client::validate_json_data;
use firetower_proto::distributor::v1 as dpb;
use firetower_proto::distributor::v1::distributor_client::DistributorClient;
use firetower_proto::distributor::v1::distributor_server::{Distributor, DistributorServer};
use firetower_proto::distributor::v1::run_outcome::Outcome as WireOutcome;
use firetower_proto::routing::route_topics;
use firetower_proto::slot_of;
use firetower_proto::topic::{validate_route_topic, validate_topic};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::api::Scope;
use crate::core::{ForwardRun, Outcome, Position, PublishError, RunOutcome};
use crate::node::Shared;

/// The gRPC service of one distributor.
pub struct DistributorService<C: Connector> {
    shared: Arc<Shared<C>>,
}

impl<C: Connector> DistributorService<C> {
    pub(crate) fn new(shared: Arc<Shared<C>>) -> Self {
        DistributorService { shared }
    }

    pub(crate) fn into_server(self) -> DistributorServer<Self> {
        let limit = decode_limit(&self.shared.config);
        DistributorServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(HANDOVER_REPLY_BYTES)
    }
}

/// The most bytes of one forwarded call (`ForwardBatch`): a forwarder encodes no more
/// (a larger call fails at the sender, before the network).
pub(crate) const FORWARD_CALL_BYTES: usize = 64 << 20;

/// The largest request message the server decodes: the largest legal request, a full
/// `PublishBatch` (`max_batch` messages of `max_data_bytes` with the longest topic and
/// their framing) or a full `ForwardBatch`. tonic reserves a message's declared length
/// before decoding it, so a limit of every maximum multiplied (it was 1.2 GB) let one
/// request reserve that much.
pub(crate) fn decode_limit(config: &crate::Config) -> usize {
    // Per message: data, topic, and the tags and lengths of both fields and the message.
    let message = config.max_data_bytes + firetower_proto::topic::MAX_TOPIC_LEN + 16;
    let batch = message.saturating_mul(config.max_batch) + 16;
    batch.max(FORWARD_CALL_BYTES)
}

/// The largest reply: a Handover answer's history bound plus its framing.
pub(crate) const HANDOVER_REPLY_BYTES: usize = crate::core::handover::HANDOVER_BYTES + (4 << 20);

/// A request with a deadline.
pub(crate) fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The one mapping of a failed publish to a gRPC status.
pub(crate) fn status_of(error: &PublishError) -> Status {
    let code = match error {
        PublishError::NoOwner { .. }
        | PublishError::RouteUnsettled { .. }
        | PublishError::Uncertain { .. }
        | PublishError::Abandoned { .. } => Code::Unavailable,
        PublishError::Core(_) => Code::ResourceExhausted,
        PublishError::Refused { code, .. } => Code::from_i32(*code),
        PublishError::BadAnswer { .. } => Code::Internal,
    };
    Status::new(code, error.to_string())
}

/// The code a publisher is answered with for `outcome` (`Ok` when sequenced): the
/// `result` label of `firetower_distributor_publishes_total`.
pub(crate) fn outcome_code(outcome: &Outcome) -> Code {
    match outcome {
        Outcome::Published(_) => Code::Ok,
        Outcome::Failed(error) => status_of(error).code(),
        Outcome::Refused(_) => Code::Internal,
    }
}

/// Counts `messages` answered with `result` (`Ok`, or the status's code).
fn record<T>(shared: &Shared<impl Connector>, messages: usize, result: &Result<T, Status>) {
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    shared
        .counters
        .publish_results
        .record(code, messages as u64);
}

/// A publish outcome as a backend sees it: positions, or the status of the failure.
fn published(outcome: Outcome) -> Result<Vec<Position>, Status> {
    match outcome {
        Outcome::Published(positions) => Ok(positions),
        Outcome::Failed(error) => Err(status_of(&error)),
        // Only forwarded runs are refused; a backend's publish never is.
        Outcome::Refused(refused) => Err(Status::internal(format!(
            "a publish was refused as a forwarded run: {refused:?}"
        ))),
    }
}

fn reply_of(position: &Position) -> dpb::PublishReply {
    dpb::PublishReply {
        epoch: position.epoch,
        seq: position.seq,
        shards: position.shards,
    }
}

/// Checks one message; `prefix` names it in a batch (`messages[3].`). Public for the fuzz
/// targets (`fuzz/`), which feed it decoded requests of any shape.
pub fn check_message(max: usize, prefix: &str, m: &dpb::PublishRequest) -> Result<(), Status> {
    validate_topic(&m.topic)
        .map_err(|e| Status::invalid_argument(format!("{prefix}topic: {e}")))?;
    check_data(max, prefix, &m.data)
}

/// Checks one message body: at most `max` bytes, and one JSON value.
pub fn check_data(max: usize, prefix: &str, data: &[u8]) -> Result<(), Status> {
    if data.len() > max {
        return Err(Status::invalid_argument(format!(
            "{prefix}data: {} bytes exceeds the limit of {max} bytes",
            data.len()
        )));
    }
    validate_json_data(data).map_err(|e| Status::invalid_argument(format!("{prefix}data: {e}")))?;
    Ok(())
}

pub(crate) fn peer<C: Connector>(
    shared: &Shared<C>,
    owner: u64,
) -> Option<DistributorClient<KeyedChannel>> {
    let addr = {
        let state = shared.lock();
        state
            .core
            .routing()
            .distributor_addr(owner, "grpc")?
            .to_string()
    };
    let channel = shared.peers.get(&addr).ok()?;
    Some(
        DistributorClient::with_interceptor(channel, shared.member_key.clone())
            .max_encoding_message_size(FORWARD_CALL_BYTES),
    )
}

/// The `ForwardBatch` request carrying `runs`, in order.
pub(crate) fn forward_request(runs: Vec<ForwardRun>) -> dpb::ForwardBatchRequest {
    let runs = runs
        .into_iter()
        .map(|run| dpb::ForwardRun {
            topic: run.topic,
            origin: run.origin,
            incarnation: run.incarnation,
            messages: run
                .messages
                .into_iter()
                .zip(
                    run.canon
                        .into_iter()
                        .map(Some)
                        .chain(std::iter::repeat(None)),
                )
                .map(|((key, msg_id, data), canon)| {
                    let (canon_epoch, canon_seq) = canon.unwrap_or((0, 0));
                    dpb::ForwardedMessage {
                        key,
                        route_tag: run.route_tag,
                        msg_id,
                        data,
                        canon_epoch,
                        canon_seq,
                    }
                })
                .collect(),
        })
        .collect();
    dpb::ForwardBatchRequest { runs }
}

/// What an owner's answer to a forward of `runs` runs says, in the core's terms: one result
/// per run, in order.
pub(crate) fn forward_results(
    owner: u64,
    runs: usize,
    reply: Result<dpb::ForwardBatchReply, Status>,
) -> Vec<crate::core::ForwardResult> {
    use crate::core::ForwardResult;
    let reply = match reply {
        Ok(reply) => reply,
        Err(status) => {
            let result = if never_sent(&status) {
                ForwardResult::NotSent(status.message().to_string())
            } else {
                match status.code() {
                    // The owner looked at the call and refused it: a retry would be refused
                    // again.
                    Code::InvalidArgument
                    | Code::ResourceExhausted
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::Unimplemented => ForwardResult::Failed(PublishError::Refused {
                        owner,
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    }),
                    // A timeout, a lost connection, an unknown failure: it may have been
                    // sequenced.
                    _ => ForwardResult::Unclear(status.message().to_string()),
                }
            };
            return vec![result; runs];
        }
    };
    if reply.outcomes.len() != runs {
        let message = format!(
            "the answer has {} outcomes for {runs} runs",
            reply.outcomes.len()
        );
        // Which runs were sequenced is unknown: treat them as a lost answer.
        return vec![ForwardResult::Unclear(message); runs];
    }
    reply
        .outcomes
        .into_iter()
        .map(|outcome| match outcome.outcome {
            Some(WireOutcome::Sequenced(p)) => ForwardResult::Answered(RunOutcome::Sequenced(
                p.results
                    .iter()
                    .map(|r| Position {
                        epoch: r.epoch,
                        seq: r.seq,
                        shards: r.shards,
                    })
                    .collect(),
            )),
            Some(WireOutcome::StaleRoute(s)) => {
                ForwardResult::Answered(RunOutcome::StaleRoute { since: s.since })
            }
            Some(WireOutcome::NotOwner(n)) => {
                ForwardResult::Answered(RunOutcome::NotOwner { owner: n.owner })
            }
            Some(WireOutcome::Error(e)) => ForwardResult::Failed(PublishError::Refused {
                owner,
                code: e.code,
                message: e.message,
            }),
            None => ForwardResult::Failed(PublishError::Refused {
                owner,
                code: Code::Internal as i32,
                message: "the answer has no outcome".to_string(),
            }),
        })
        .collect()
}

/// A call that failed before the request went out: the connection could not be made (tonic
/// keeps a `ConnectError` in the status's source chain).
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Publishes one topic's messages (checked) through the core and waits for the outcome:
/// first room on the lanes toward the topic's subscribers (up to `publish_retry_ms`).
async fn publish<C: Connector>(
    shared: &Arc<Shared<C>>,
    topic: &str,
    messages: Vec<Bytes>,
) -> Result<Vec<Position>, Status> {
    let count = messages.len();
    let result = publish_uncounted(shared, topic, messages).await;
    record(shared, count, &result);
    result
}

async fn publish_uncounted<C: Connector>(
    shared: &Arc<Shared<C>>,
    topic: &str,
    messages: Vec<Bytes>,
) -> Result<Vec<Position>, Status> {
    let deadline = tokio::time::Instant::now() + shared.config.publish_retry();
    shared.admit(topic, deadline).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.apply(|state, now| {
        let op = state.core.handle_publish(now, topic, messages);
        state.waiters.insert(op, tx);
    });
    published(
        rx.await
            .map_err(|_| Status::unavailable("the distributor is shutting down"))?,
    )
}

/// One name's subscriber count and counters, from its owner (here or forwarded).
/// The most messages one History call returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;

async fn status_one<C: Connector>(
    shared: &Arc<Shared<C>>,
    name: &str,
    owner_only: bool,
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
        Err(owner) if owner == 0 || owner_only => Err(Status::unavailable(format!(
            "distributor {} does not own slot {} (owner: {owner})",
            shared.config.id,
            slot_of(name)
        ))),
        Err(owner) => {
            let mut client = peer(shared, owner).ok_or_else(|| {
                Status::unavailable(format!("owner {owner} has no known gRPC address"))
            })?;
            let reply = client
                .topic_status(with_timeout(
                    dpb::TopicStatusRequest {
                        topic: name.to_string(),
                        owner_only: true,
                    },
                    shared.config.rpc_timeout(),
                ))
                .await?;
            Ok((reply.into_inner(), owner))
        }
    }
}

/// Serves one PublishStream: reads messages while fewer than `max_stream_in_flight` are
/// unanswered, takes what has arrived together (one room check per topic, one step into
/// the core, one op per topic's run, so a topic's messages keep stream order), and answers
/// each message by id as its op ends. One task per stream, none per message.
async fn serve_publish_stream<C: Connector>(
    shared: Arc<Shared<C>>,
    mut requests: Streaming<dpb::PublishStreamRequest>,
    replies: mpsc::Sender<Result<dpb::PublishStreamReply, Status>>,
) {
    type Pending = futures::future::BoxFuture<'static, (Vec<u64>, Result<Outcome, Status>)>;
    let max = shared.config.max_stream_in_flight;
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let mut in_flight = 0usize;
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            biased;
            Some((ids, outcome)) = pending.next(), if !pending.is_empty() => {
                in_flight -= ids.len();
                let replies_of = stream_replies(ids, outcome);
                for reply in &replies_of {
                    let code = match &reply.result {
                        Some(dpb::publish_stream_reply::Result::Error(e)) => Code::from_i32(e.code),
                        _ => Code::Ok,
                    };
                    shared.counters.publish_results.record(code, 1);
                }
                for reply in replies_of {
                    if replies.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
            first = requests.next(), if open && in_flight < max => {
                let mut batch = Vec::new();
                match first {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(status)) => {
                        tracing::debug!(%status, "publish stream ended with an error");
                        open = false;
                    }
                    None => open = false,
                }
                // Whatever else has already arrived, up to the bound.
                while open && in_flight + batch.len() < max {
                    match requests.next().now_or_never() {
                        Some(Some(Ok(m))) => batch.push(m),
                        Some(Some(Err(_)) | None) => open = false,
                        None => break,
                    }
                }
                in_flight += batch.len();
                let (ready, refused) = stream_batch(&shared, batch).await;
                for reply in refused {
                    in_flight -= 1;
                    if replies.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                for (ids, rx) in ready {
                    pending.push(Box::pin(async move {
                        let outcome = rx
                            .await
                            .map_err(|_| Status::unavailable("the distributor is shutting down"));
                        (ids, outcome)
                    }));
                }
            }
        }
    }
}

/// Checks a stream's batch, waits for room per topic and publishes it in one step: returns
/// the ops to wait for (with their messages' ids) and the replies for refused messages.
async fn stream_batch<C: Connector>(
    shared: &Arc<Shared<C>>,
    batch: Vec<dpb::PublishStreamRequest>,
) -> (
    Vec<(Vec<u64>, oneshot::Receiver<Outcome>)>,
    Vec<dpb::PublishStreamReply>,
) {
    let mut refused = Vec::new();
    let mut groups: Vec<(String, Vec<u64>, Vec<Bytes>)> = Vec::new();
    for m in batch {
        let checked = validate_topic(&m.topic)
            .map_err(|e| Status::invalid_argument(format!("topic: {e}")))
            .and_then(|()| check_data(shared.config.max_data_bytes, "", &m.data));
        if let Err(status) = checked {
            shared.counters.publish_results.record(status.code(), 1);
            refused.push(stream_error(m.id, &status));
            continue;
        }
        match groups.iter_mut().find(|(topic, _, _)| *topic == m.topic) {
            Some((_, ids, data)) => {
                ids.push(m.id);
                data.push(m.data);
            }
            None => groups.push((m.topic, vec![m.id], vec![m.data])),
        }
    }
    let deadline = tokio::time::Instant::now() + shared.config.publish_retry();
    let mut admitted = Vec::with_capacity(groups.len());
    for (topic, ids, data) in groups {
        match shared.admit(&topic, deadline).await {
            Ok(()) => admitted.push((topic, ids, data)),
            Err(status) => {
                shared
                    .counters
                    .publish_results
                    .record(status.code(), ids.len() as u64);
                refused.extend(ids.iter().map(|id| stream_error(*id, &status)));
            }
        }
    }
    let mut ready = Vec::with_capacity(admitted.len());
    shared.apply(|state, now| {
        for (topic, ids, data) in admitted {
            let (tx, rx) = oneshot::channel();
            let op = state.core.handle_publish(now, &topic, data);
            state.waiters.insert(op, tx);
            ready.push((ids, rx));
        }
    });
    (ready, refused)
}

fn stream_error(id: u64, status: &Status) -> dpb::PublishStreamReply {
    dpb::PublishStreamReply {
        id,
        result: Some(dpb::publish_stream_reply::Result::Error(
            dpb::PublishStreamError {
                code: status.code() as i32,
                message: status.message().to_string(),
            },
        )),
    }
}

/// The replies to one op's messages.
fn stream_replies(ids: Vec<u64>, outcome: Result<Outcome, Status>) -> Vec<dpb::PublishStreamReply> {
    match outcome.and_then(published) {
        Ok(positions) if positions.len() == ids.len() => ids
            .into_iter()
            .zip(positions)
            .map(|(id, position)| dpb::PublishStreamReply {
                id,
                result: Some(dpb::publish_stream_reply::Result::Position(reply_of(
                    &position,
                ))),
            })
            .collect(),
        Ok(positions) => {
            let status = Status::internal(format!(
                "{} positions for {} messages",
                positions.len(),
                ids.len()
            ));
            ids.into_iter()
                .map(|id| stream_error(id, &status))
                .collect()
        }
        Err(status) => ids
            .into_iter()
            .map(|id| stream_error(id, &status))
            .collect(),
    }
}

#[tonic::async_trait]
impl<C: Connector> Distributor for DistributorService<C> {
    type PublishStreamStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<dpb::PublishStreamReply, Status>> + Send>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<dpb::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.shared.api.check(&request, &[Scope::Publish])?;
        let requests = request.into_inner();
        // Replies wait here while the client is slow to read them; past this bound the
        // stream stops reading requests too.
        let (tx, rx) = mpsc::channel(self.shared.config.max_stream_in_flight.min(1024));
        self.shared
            .tasks
            .spawn(serve_publish_stream(self.shared.clone(), requests, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish(
        &self,
        request: Request<dpb::PublishRequest>,
    ) -> Result<Response<dpb::PublishReply>, Status> {
        self.shared.api.check(&request, &[Scope::Publish])?;
        let m = request.into_inner();
        let checked = check_message(self.shared.config.max_data_bytes, "", &m);
        if checked.is_err() {
            record(&self.shared, 1, &checked);
        }
        checked?;
        let positions = publish(&self.shared, &m.topic, vec![m.data]).await?;
        let position = positions
            .first()
            .ok_or_else(|| Status::internal("no position"))?;
        Ok(Response::new(reply_of(position)))
    }

    async fn publish_batch(
        &self,
        request: Request<dpb::PublishBatchRequest>,
    ) -> Result<Response<dpb::PublishBatchReply>, Status> {
        self.shared.api.check(&request, &[Scope::Publish])?;
        let batch = request.into_inner();
        let max = self.shared.config.max_batch;
        let checked = if batch.messages.len() > max {
            Err(Status::invalid_argument(format!(
                "messages: {} messages exceed the batch limit of {max}",
                batch.messages.len()
            )))
        } else {
            batch.messages.iter().enumerate().try_for_each(|(i, m)| {
                check_message(
                    self.shared.config.max_data_bytes,
                    &format!("messages[{i}]."),
                    m,
                )
            })
        };
        if checked.is_err() {
            // None of the batch is published.
            record(&self.shared, batch.messages.len(), &checked);
        }
        checked?;
        // Each topic's messages are one publish, in batch order (sequenced all or none);
        // different topics go concurrently, so a batch costs about one forward's round trip.
        let count = batch.messages.len();
        let mut by_topic: Vec<(String, Vec<usize>, Vec<Bytes>)> = Vec::new();
        let mut index_of: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        for (i, m) in batch.messages.into_iter().enumerate() {
            let group = *index_of.entry(m.topic.clone()).or_insert_with(|| {
                by_topic.push((m.topic, Vec::new(), Vec::new()));
                by_topic.len() - 1
            });
            by_topic[group].1.push(i);
            by_topic[group].2.push(m.data);
        }
        let shared = &self.shared;
        let groups = by_topic
            .into_iter()
            .map(|(topic, indexes, messages)| async move {
                (indexes, publish(shared, &topic, messages).await)
            });
        let mut results = vec![dpb::PublishReply::default(); count];
        let mut first_failure: Option<(usize, Status)> = None;
        for (indexes, group) in futures::future::join_all(groups).await {
            // One position per message, or the batch is not answered as a success.
            let group = group.and_then(|positions| {
                if positions.len() == indexes.len() {
                    Ok(positions)
                } else {
                    Err(Status::internal(format!(
                        "{} positions for {} messages",
                        positions.len(),
                        indexes.len()
                    )))
                }
            });
            match group {
                Ok(positions) => {
                    for (i, position) in indexes.iter().zip(&positions) {
                        results[*i] = reply_of(position);
                    }
                }
                Err(status) => {
                    let i = indexes.first().copied().unwrap_or(0);
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
                    "messages[{i}]: {} (none of its topic's messages were published; \
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
        self.shared.api.check(&request, &[Scope::Member])?;
        from_a_distributor(&request, "ForwardBatch", |_| true)?;
        let request = request.into_inner();
        // A run is at most a batch (one op's messages); a call carries a step's runs to this
        // owner (a group of a topic's ops, bounded by `core::GROUP_COPIES`, or a split
        // batch's sub-topics).
        let max = self.shared.config.max_batch;
        let total: usize = request.runs.iter().map(|r| r.messages.len()).sum();
        let max_total = max.saturating_mul(64);
        if total > max_total {
            return Err(Status::invalid_argument(format!(
                "runs: {total} messages exceed the call limit of {max_total}"
            )));
        }
        if let Some(r) = request.runs.iter().position(|r| r.messages.len() > max) {
            return Err(Status::invalid_argument(format!(
                "runs[{r}]: {} messages exceed the batch limit of {max}",
                request.runs[r].messages.len()
            )));
        }
        let mut runs = Vec::with_capacity(request.runs.len());
        for (r, run) in request.runs.into_iter().enumerate() {
            validate_route_topic(&run.topic)
                .map_err(|e| Status::invalid_argument(format!("runs[{r}].topic: {e}")))?;
            let route_tag = run.messages.first().map_or(0, |m| m.route_tag);
            for (i, m) in run.messages.iter().enumerate() {
                if m.route_tag != route_tag {
                    return Err(Status::invalid_argument(format!(
                        "runs[{r}].messages[{i}].route_tag: a run has one route tag"
                    )));
                }
                check_data(
                    self.shared.config.max_data_bytes,
                    &format!("runs[{r}].messages[{i}]."),
                    &m.data,
                )?;
            }
            // A run of a sub-topic carries every message's position in its topic's
            // stream; a run of the topic itself none.
            let canon: Vec<(u64, u64)> = run
                .messages
                .iter()
                .map(|m| (m.canon_epoch, m.canon_seq))
                .collect();
            let canon = if canon.iter().all(|c| *c == (0, 0)) {
                Vec::new()
            } else {
                canon
            };
            runs.push(ForwardRun {
                topic: run.topic,
                origin: run.origin,
                incarnation: run.incarnation,
                route_tag,
                messages: run
                    .messages
                    .into_iter()
                    .map(|m| (m.key, m.msg_id, m.data))
                    .collect(),
                canon,
            });
        }
        // Room on the lanes toward the runs' subscribers, then every run in one step, in
        // order: a name's runs are sequenced in call order.
        let deadline = tokio::time::Instant::now() + self.shared.config.rpc_timeout() / 2;
        for run in &runs {
            self.shared.admit(&run.topic, deadline).await?;
        }
        let mut waiting = Vec::with_capacity(runs.len());
        self.shared.apply(|state, now| {
            for run in runs {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let op = state.core.handle_forwarded_run(now, run);
                state.waiters.insert(op, tx);
                waiting.push(rx);
            }
        });
        let mut outcomes = Vec::with_capacity(waiting.len());
        for rx in waiting {
            let outcome = rx
                .await
                .map_err(|_| Status::unavailable("the distributor is shutting down"))?;
            let outcome = match outcome {
                Outcome::Published(positions)
                | Outcome::Refused(RunOutcome::Sequenced(positions)) => {
                    WireOutcome::Sequenced(dpb::Positions {
                        results: positions.iter().map(reply_of).collect(),
                    })
                }
                Outcome::Refused(RunOutcome::StaleRoute { since }) => {
                    WireOutcome::StaleRoute(dpb::StaleRoute { since })
                }
                Outcome::Refused(RunOutcome::NotOwner { owner }) => {
                    WireOutcome::NotOwner(dpb::NotOwner { owner })
                }
                Outcome::Failed(error) => {
                    let status = status_of(&error);
                    WireOutcome::Error(dpb::RunError {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    })
                }
            };
            outcomes.push(dpb::RunOutcome {
                outcome: Some(outcome),
            });
        }
        Ok(Response::new(dpb::ForwardBatchReply { outcomes }))
    }

    async fn history(
        &self,
        request: Request<dpb::HistoryRequest>,
    ) -> Result<Response<dpb::HistoryReply>, Status> {
        // The owner-only form is what distributors ask each other.
        let scopes: &[Scope] = if request.get_ref().forwarded {
            &[Scope::Member]
        } else {
            &[Scope::Publish, Scope::Member]
        };
        self.shared.api.check(&request, scopes)?;
        if request.get_ref().forwarded {
            from_a_distributor(&request, "History (forwarded)", |_| true)?;
        }
        let dpb::HistoryRequest {
            topic,
            since,
            limit,
            forwarded,
        } = request.into_inner();
        validate_topic(&topic).map_err(|e| Status::invalid_argument(format!("topic: {e}")))?;
        let limit = match limit as usize {
            0 => MAX_HISTORY_LIMIT,
            n => n.min(MAX_HISTORY_LIMIT),
        };
        let (answer, owner) = {
            let state = self.shared.lock();
            let owner = state.core.routing().route(slot_of(&topic)).distributor;
            // A split topic too: its owner numbers every message in the topic's one stream
            // and keeps its history.
            let answer =
                state
                    .core
                    .history(&topic, since.as_ref().map(|p| (p.epoch, p.seq)), limit);
            (answer, owner)
        };
        if answer.current != (0, 0) {
            return Ok(Response::new(dpb::HistoryReply {
                topic,
                current: Some(dpb::StreamPosition {
                    epoch: answer.current.0,
                    seq: answer.current.1,
                }),
                messages: answer
                    .messages
                    .iter()
                    .map(|d| {
                        let d = d.deliver();
                        dpb::HistoryMessage {
                            epoch: d.epoch,
                            seq: d.seq,
                            data: d.data.clone(),
                        }
                    })
                    .collect(),
                recovered: answer.recovered,
            }));
        }
        if forwarded || owner == 0 || owner == self.shared.config.id {
            return Err(Status::unavailable(format!(
                "distributor {} does not own slot {} (owner: {owner})",
                self.shared.config.id,
                slot_of(&topic)
            )));
        }
        let mut client = peer(&self.shared, owner).ok_or_else(|| {
            Status::unavailable(format!("owner {owner} has no known gRPC address"))
        })?;
        let reply = client
            .history(with_timeout(
                dpb::HistoryRequest {
                    topic,
                    since,
                    limit: limit as u32,
                    forwarded: true,
                },
                self.shared.config.rpc_timeout(),
            ))
            .await?;
        Ok(reply)
    }

    async fn topic_status(
        &self,
        request: Request<dpb::TopicStatusRequest>,
    ) -> Result<Response<dpb::TopicStatusReply>, Status> {
        let scopes: &[Scope] = if request.get_ref().owner_only {
            &[Scope::Member]
        } else {
            &[Scope::Publish, Scope::Member]
        };
        self.shared.api.check(&request, scopes)?;
        if request.get_ref().owner_only {
            from_a_distributor(&request, "TopicStatus (owner only)", |_| true)?;
        }
        let dpb::TopicStatusRequest { topic, owner_only } = request.into_inner();
        let valid = if owner_only {
            validate_route_topic(&topic)
        } else {
            validate_topic(&topic)
        };
        valid.map_err(|e| Status::invalid_argument(format!("topic: {e}")))?;
        let hot = self.shared.lock().core.routing().hot_route(&topic);
        let names = match hot {
            Some(h) if !owner_only && (h.shards > 0 || !h.committed) => {
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
                let (reply, _) = status_one(&self.shared, &topic, owner_only).await?;
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
    async fn handover(
        &self,
        request: Request<dpb::HandoverRequest>,
    ) -> Result<Response<dpb::HandoverReply>, Status> {
        self.shared.api.check(&request, &[Scope::Member])?;
        let to = request.get_ref().to;
        from_a_distributor(&request, "Handover", |id| id == to)?;
        let request = request.into_inner();
        if request.to == 0 || request.epoch == 0 {
            return Err(Status::invalid_argument("to and epoch must be non-zero"));
        }
        if request.slots.len() > crate::core::handover::HANDOVER_SLOTS {
            return Err(Status::invalid_argument(format!(
                "slots: at most {} per call",
                crate::core::handover::HANDOVER_SLOTS
            )));
        }
        if !request.from_epochs.is_empty() && request.from_epochs.len() != request.slots.len() {
            return Err(Status::invalid_argument(format!(
                "from_epochs: {} given for {} slots",
                request.from_epochs.len(),
                request.slots.len()
            )));
        }
        let mut slots = Vec::with_capacity(request.slots.len());
        for (i, slot) in request.slots.iter().enumerate() {
            let from_epoch = request.from_epochs.get(i).copied().unwrap_or(0);
            match firetower_proto::Slot::try_from(*slot) {
                Ok(s) if usize::from(s) < firetower_proto::SLOT_COUNT => {
                    slots.push((s, from_epoch))
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "slots[{i}]: {slot} is not a slot"
                    )))
                }
            }
        }
        let answer = self.shared.apply(|state, now| {
            state
                .core
                .handle_handover(now, request.to, request.epoch, &slots)
        });
        Ok(Response::new(handover_reply(answer)))
    }

    async fn kick_user(
        &self,
        request: Request<dpb::KickUserRequest>,
    ) -> Result<Response<dpb::KickUserReply>, Status> {
        self.shared.api.check(&request, &[Scope::Admin])?;
        let user_id = request.into_inner().user_id;
        if user_id.is_empty() || user_id.len() > 256 {
            return Err(Status::invalid_argument("user_id: must be 1 to 256 bytes"));
        }
        let shared = &self.shared;
        let (request_id, mut rx) = shared.kicks.open();
        let edges = shared.broadcast_kick(&user_id, request_id);
        let deadline = tokio::time::Instant::now() + shared.config.rpc_timeout();
        let mut closed = 0u64;
        for _ in 0..edges {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(n)) => closed += n,
                _ => break,
            }
        }
        shared.kicks.close(request_id);
        Ok(Response::new(dpb::KickUserReply {
            connections_closed: closed,
        }))
    }
}

/// Over TLS, the calls distributors make to each other (forwarded runs, owner-only
/// questions, handovers) come only from a distributor's certificate, whose id `id_ok`
/// accepts: the member API key or a `forwarded` flag alone proves nothing.
fn from_a_distributor<T>(
    request: &Request<T>,
    what: &str,
    id_ok: impl FnOnce(u64) -> bool,
) -> Result<(), Status> {
    Caller::of(request).require_node(what, |node| {
        node.role == Role::Distributor && id_ok(node.id)
    })
}

/// A handover answer on the wire.
fn handover_reply(answer: crate::core::HandoverAnswer) -> dpb::HandoverReply {
    dpb::HandoverReply {
        released: answer.released.iter().map(|s| u32::from(*s)).collect(),
        topics: answer
            .topics
            .into_iter()
            .map(|t| dpb::HandedTopic {
                topic: t.topic,
                epoch: t.epoch,
                seq: t.seq,
                history: t
                    .history
                    .into_iter()
                    .map(|m| {
                        let d = m.delivery.deliver();
                        dpb::HandedMessage {
                            epoch: d.epoch,
                            seq: d.seq,
                            data: d.data.clone(),
                            msg_id: d.msg_id,
                            route_tag: m.tag,
                            age_ms: m.age_ms,
                            canon_epoch: d.canon_epoch,
                            canon_seq: d.canon_seq,
                        }
                    })
                    .collect(),
            })
            .collect(),
        forwards: answer
            .forwards
            .iter()
            .map(|f| dpb::HandedForward {
                forwarder: f.key.0,
                incarnation: f.key.1,
                number: f.key.2,
                slot: u32::from(f.slot),
                epoch: f.epoch,
                seq: f.seq,
            })
            .collect(),
    }
}

/// A handover answer from the wire; anything that does not fit is an error (nothing
/// released then).
pub(crate) fn handover_answer(
    reply: dpb::HandoverReply,
) -> Result<crate::core::HandoverAnswer, String> {
    use crate::core::{Delivery, HandedForward, HandedMessage, HandedTopic, HandoverAnswer};
    use firetower_proto::relay::v1::Deliver;
    let mut released = Vec::with_capacity(reply.released.len());
    for slot in reply.released {
        match firetower_proto::Slot::try_from(slot) {
            Ok(s) if usize::from(s) < firetower_proto::SLOT_COUNT => released.push(s),
            _ => return Err(format!("released slot {slot} is not a slot")),
        }
    }
    let mut topics = Vec::with_capacity(reply.topics.len());
    for t in reply.topics {
        validate_route_topic(&t.topic).map_err(|e| format!("topic {:?}: {e}", t.topic))?;
        let history = t
            .history
            .into_iter()
            .map(|m| HandedMessage {
                delivery: Delivery::new(Deliver {
                    topic: t.topic.clone(),
                    epoch: m.epoch,
                    seq: m.seq,
                    data: m.data,
                    msg_id: m.msg_id,
                    route_tag: m.route_tag,
                    canon_epoch: m.canon_epoch,
                    canon_seq: m.canon_seq,
                    // A handed-over message keeps no stamp (the handover carries none).
                    sequenced_at_us: 0,
                }),
                tag: m.route_tag,
                age_ms: m.age_ms,
            })
            .collect();
        topics.push(HandedTopic {
            topic: t.topic,
            epoch: t.epoch,
            seq: t.seq,
            history,
        });
    }
    let mut forwards = Vec::with_capacity(reply.forwards.len());
    for f in reply.forwards {
        let slot = match firetower_proto::Slot::try_from(f.slot) {
            Ok(s) if usize::from(s) < firetower_proto::SLOT_COUNT => s,
            _ => return Err(format!("forward in slot {} is not a slot", f.slot)),
        };
        forwards.push(HandedForward {
            key: (f.forwarder, f.incarnation, f.number),
            slot,
            epoch: f.epoch,
            seq: f.seq,
        });
    }
    Ok(HandoverAnswer {
        released,
        topics,
        forwards,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decode_limit_is_the_largest_legal_request() {
        let config = crate::Config::default();
        let limit = decode_limit(&config);
        // A full PublishBatch of the largest messages fits ...
        let full_batch = config.max_batch * (config.max_data_bytes + 256 + 16);
        assert!(limit >= full_batch, "{limit} < {full_batch}");
        // ... and the limit is within a few MB of it, not the 1.2 GB of before.
        assert!(limit <= FORWARD_CALL_BYTES.max(full_batch) + 64, "{limit}");
        assert!(limit < 80 << 20, "{limit}");
    }
}
