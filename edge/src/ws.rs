//! One client connection: the HTTP request, then (for `/ws`) the WebSocket session.
//!
//! Routes: `GET /` the chat demo page, `GET /firetower.js` the JavaScript client library
//! (which the demo page loads), `GET /ws` the WebSocket, `GET /api/topic?topic=T` the
//! topic's cluster-wide subscriber count (JSON), `GET /healthz`, `GET /readyz` (200 once
//! the edge is registered and holds a routing view; 503 with the reason before), `GET
//! /metrics` (Prometheus text, [`crate::metrics`]). The request head is read, and plain
//! answers written, by `firetower_net::ops_http`, and `/healthz`, `/readyz` and
//! `/metrics` answered by `firetower_net::metrics::node_endpoints`, as every role's
//! operations server does.
//!
//! A WebSocket session is one task. It reads client frames, answers them, and drains the
//! connection's send queue: every frame pending at that moment (already framed, shared
//! with the other recipients) goes to the socket in one vectored write. Tungstenite reads
//! and writes the control frames (ping, pong, close); its buffer is flushed before each
//! batch, so the two never interleave inside a frame.
//!
//! While a publish it read waits in the core (no room on its relay link, or its topic's
//! owner changed), the session does not read its socket but keeps writing to it: TCP
//! pushes back on the publishing client, and its deliveries keep flowing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firetower_net::metrics::node_endpoints;
use firetower_net::ops_http::{answer, read_request, send, Request, Response, MAX_HEAD};
use firetower_net::Connector;
use firetower_proto::client::{
    parse_client_frame, validate_json_data, ClientError, ClientFrame, ErrorCode, LEGACY_HEARTBEAT,
};
use firetower_proto::distributor::v1 as dpb;
use firetower_proto::distributor::v1::distributor_client::DistributorClient;
use firetower_proto::topic::validate_topic;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::create_response;
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::admission::{PeerIp, Refusal};
use crate::hooks::{Identity, ReadDecision};
use crate::node::Edge;
use crate::rate::{ConnLimits, Verdict};
use crate::send::{write_frames, SendQueue};
use crate::sessions::{Closer, ReadGate, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_SLOW_CONSUMER};

/// The most frames one write takes from the send queue (bounds one batch's syscalls; its
/// bytes are bounded by the queue's hard cap).
const MAX_FRAMES_PER_WRITE: usize = 1024;
/// A connection closed while a write is under way gets this long to finish that write, so
/// that the close frame follows on a frame boundary; and this long to take the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const DEMO_PAGE: &str = include_str!("demo.html");
/// The JavaScript client library (`clients/js/`), served so that a page of any edge can
/// `import` it without a build step; the demo page does.
const CLIENT_LIBRARY: &str = include_str!("../../clients/js/firetower.js");

/// Serves one accepted connection until it closes.
pub(crate) async fn serve_conn<C, IO>(edge: Arc<Edge<C>>, mut io: IO)
where
    C: Connector,
    IO: AsyncRead + AsyncWrite + PeerIp + Unpin + Send + 'static,
{
    // Held until the connection ends: the limits count every TCP connection, from before
    // its request head is read (a client that sends its head slowly holds a place too).
    let seat = match edge.admission.admit(io.peer_ip()) {
        Ok(seat) => seat,
        Err(refusal) => {
            edge.counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            let (status, reason) = match refusal {
                Refusal::Full => (503, "connection limit reached"),
                Refusal::PerIp => (429, "too many connections from this address"),
            };
            let _ = send(&mut io, &Response::text(status, reason)).await;
            return;
        }
    };
    let Some((io, request, leftover)) = answer_or_upgrade(&edge, io).await else {
        return;
    };
    let Some((conn, identity, ws)) = handshake(&edge, io, request, leftover).await else {
        return;
    };
    // The session goes on in a task of its own, and this one ends: an idle connection's
    // task then holds the session's state alone, not also the room the request and the
    // handshake took (idle connections are most of an edge's memory).
    let tasks = edge.tasks.clone();
    tasks.spawn(connected(edge, seat, conn, identity, ws));
}

/// Reads the request and answers it, unless it asks for the WebSocket: then the socket,
/// the request and the bytes read past its head are handed back for the upgrade.
async fn answer_or_upgrade<C, IO>(
    edge: &Arc<Edge<C>>,
    mut io: IO,
) -> Option<(IO, http::Request<()>, Vec<u8>)>
where
    C: Connector,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = Duration::from_millis(edge.config.handshake_timeout_ms);
    let (request, leftover) = match read_request(&mut io, MAX_HEAD, timeout).await {
        Ok(read) => read,
        Err(refusal) => {
            if let Some(refusal) = refusal {
                let _ = send(&mut io, &refusal).await;
            }
            return None;
        }
    };
    let get = request.method() == http::Method::GET;
    let response = match request.uri().path() {
        "/ws" if get => return Some((io, request, leftover)),
        "/api/topic" if get => {
            let (status, body) = topic_status(edge, request.uri().query().unwrap_or("")).await;
            Response::json(status, body)
        }
        _ => answer(&|asked: &Request<'_>| plain_route(edge, asked), &request),
    };
    let _ = send(&mut io, &response).await;
    None
}

/// The routes answered from what the edge holds, without waiting: the page, the client
/// library, a dev token, and every node's endpoints (`/healthz`, `/readyz`, `/metrics`).
fn plain_route<C: Connector>(edge: &Edge<C>, request: &Request<'_>) -> Option<Response> {
    match request.path {
        "/" | "/index.html" => Some(Response::new(200, "text/html; charset=utf-8", DEMO_PAGE)),
        "/firetower.js" => Some(Response::new(
            200,
            "text/javascript; charset=utf-8",
            CLIENT_LIBRARY,
        )),
        "/dev/token" => {
            let user = request
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("user="))
                .map(percent_decode)
                .unwrap_or_else(|| "dev".to_string());
            // None: tokens are not handed out here (404).
            edge.auth
                .dev_token(&user)
                .map(|token| Response::text(200, token))
        }
        _ => node_endpoints(request, edge.metrics.registry(), || edge.readiness()),
    }
}

/// `/api/topic?topic=T`: TopicStatus from the distributors, as JSON.
async fn topic_status<C: Connector>(edge: &Edge<C>, query: &str) -> (u16, String) {
    let topic = query.split('&').find_map(|kv| kv.strip_prefix("topic="));
    let Some(topic) = topic.map(percent_decode) else {
        return (400, r#"{"error":"missing query parameter topic"}"#.into());
    };
    if let Err(e) = validate_topic(&topic) {
        return (
            400,
            serde_json::json!({ "error": format!("topic: {e}") }).to_string(),
        );
    }
    let Some(addr) = edge.any_distributor_grpc(&topic) else {
        return (503, r#"{"error":"no distributor is known"}"#.into());
    };
    let Ok(channel) = edge.distributors.get(&addr) else {
        return (503, r#"{"error":"bad distributor address"}"#.into());
    };
    let mut client = DistributorClient::with_interceptor(channel, edge.member_key.clone());
    let mut request = tonic::Request::new(dpb::TopicStatusRequest {
        topic: topic.clone(),
        owner_only: false,
    });
    request.set_timeout(Duration::from_millis(edge.config.rpc_timeout_ms));
    match client.topic_status(request).await {
        Ok(reply) => {
            let r = reply.into_inner();
            (
                200,
                serde_json::json!({
                    "topic": r.topic,
                    "subscribers": r.subscribers,
                    "edges": r.edge_ids,
                })
                .to_string(),
            )
        }
        Err(status) => (
            502,
            serde_json::json!({ "error": status.message() }).to_string(),
        ),
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket connection from its upgrade to its end; `_seat` holds its place in the
/// connection limits until then.
async fn connected<C, IO>(
    edge: Arc<Edge<C>>,
    _seat: crate::admission::Seat,
    conn: u64,
    identity: Arc<Identity>,
    mut ws: WebSocketStream<IO>,
) where
    C: Connector,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counters = &edge.counters;
    counters.connections_open.fetch_add(1, Ordering::Relaxed);
    counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let closer = Arc::new(Closer::default());
    let (queue, reads) = edge.sessions.add(conn, identity.clone(), closer.clone());
    // The socket by reference: moved into the session's future, it would take its room
    // twice (this future keeps its argument's place).
    session(&edge, conn, &identity, &mut ws, queue, &reads, &closer).await;
    // on_unsubscribe (for the topics it held) runs from the core's output, while the
    // session is still registered; then it goes, then on_offline.
    edge.apply(|core, now| core.handle_disconnect(now, conn));
    edge.sessions.remove(conn);
    edge.hooks.on_offline(&identity);
    counters.connections_open.fetch_sub(1, Ordering::Relaxed);
}

/// The upgrade's answer (101, or a refusal): the connection's number, who it is and its
/// WebSocket, or None when it was refused or went away.
async fn handshake<C, IO>(
    edge: &Edge<C>,
    mut io: IO,
    request: http::Request<()>,
    leftover: Vec<u8>,
) -> Option<(u64, Arc<Identity>, WebSocketStream<IO>)>
where
    C: Connector,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counters = &edge.counters;
    let response = match create_response(&request) {
        Ok(r) => r,
        Err(e) => {
            let refusal = Response::text(400, format!("not a WebSocket upgrade: {e}"));
            let _ = send(&mut io, &refusal).await;
            return None;
        }
    };
    let conn = edge.next_conn.fetch_add(1, Ordering::Relaxed);
    let identity = match identify(edge, conn, &request) {
        Ok(id) => Arc::new(id),
        Err(rejection) => {
            counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            let _ = send(&mut io, &Response::text(rejection.status, rejection.reason)).await;
            return None;
        }
    };
    let mut head = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in response.headers() {
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(value.to_str().unwrap_or(""));
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    if io.write_all(head.as_bytes()).await.is_err() {
        return None;
    }
    // Idle connections are most of an edge's memory: free the handshake's allocations
    // before the session, which lives as long as the connection.
    drop((head, response, request));
    let config = WebSocketConfig::default()
        .read_buffer_size(edge.config.read_buffer_bytes)
        // Only control frames go through tungstenite's buffer (deliveries bypass it).
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(edge.config.max_frame_bytes))
        .max_frame_size(Some(edge.config.max_frame_bytes));
    let ws = WebSocketStream::from_partially_read(io, leftover, Role::Server, Some(config)).await;
    Some((conn, identity, ws))
}

/// Who an upgrade request is: its token (or anonymous access) checked first, then the
/// `on_connect` hook; a verified token decides the user id and the grants.
fn identify<C: Connector>(
    edge: &Edge<C>,
    conn: u64,
    request: &http::Request<()>,
) -> Result<Identity, crate::hooks::Rejection> {
    let verified = edge.auth.check(request).inspect_err(|_| {
        edge.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
    })?;
    let mut id = edge.hooks.on_connect(conn, request)?;
    if let Some(user_id) = verified.user_id {
        id.user_id = user_id;
        id.grants = verified.grants;
    }
    Ok(id)
}

/// Why a session ended.
enum End {
    Close(u16, String),
    Gone,
}

/// How a batch's write ended.
enum Written {
    /// Completed, or failed.
    Done(std::io::Result<()>),
    /// Took longer than `write_timeout_ms`.
    TimedOut,
    /// The connection was closed (slow, kicked, shutdown) while it was under way; true if
    /// it completed within [`CLOSE_GRACE`] all the same.
    Closed(bool),
}

/// Whether `written` bytes of `frames` end exactly where a frame ends.
fn at_frame_boundary(frames: &[Bytes], written: usize) -> bool {
    let mut end = 0;
    for frame in frames {
        if end == written {
            return true;
        }
        end += frame.len();
    }
    end == written
}

async fn session<C, IO>(
    edge: &Arc<Edge<C>>,
    conn: u64,
    identity: &Identity,
    ws: &mut WebSocketStream<IO>,
    queue: Arc<SendQueue>,
    reads: &ReadGate,
    closer: &Closer,
) where
    C: Connector,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &edge.config;
    let heartbeat = Duration::from_millis(config.heartbeat_interval_ms);
    let pong_timeout = Duration::from_millis(config.pong_timeout_ms);
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let mut batch: Vec<bytes::Bytes> = Vec::new();
    let mut limits = ConnLimits::new(&config.rate);
    // Bytes of the batch being written; a write cut off part way leaves a partial frame
    // on the stream, after which no close frame can be sent.
    let mut torn = false;
    let end = loop {
        tokio::select! {
            biased;
            _ = closer.notify.notified() => {
                let (code, reason) = closer.reason().unwrap_or((1000, String::new()));
                break End::Close(code, reason);
            }
            _ = queue.woken() => {
                // Writers take turns (a bounded number at a time): while one writes, the
                // others' frames pile up, so under load each write carries more of them.
                // The turn covers what the socket takes at once, never a wait for it.
                let turn = edge.write_turns.acquire().await;
                queue.take(&mut batch, MAX_FRAMES_PER_WRITE);
                if batch.is_empty() {
                    continue;
                }
                let bytes: usize = batch.iter().map(Bytes::len).sum();
                let mut written = 0;
                let at_once = async {
                    // Pending control frames (a pong) first, then the batch.
                    ws.flush().await.map_err(std::io::Error::other)?;
                    write_frames(ws.get_mut(), &batch, &mut written).await
                }
                .now_or_never();
                drop(turn);
                let result = match at_once {
                    Some(result) => Written::Done(result),
                    None => {
                        // Boxed: the rare path (the socket did not take the batch at once)
                        // would otherwise add its futures to every idle connection's task.
                        let mut rest = Box::pin(async {
                            ws.flush().await.map_err(std::io::Error::other)?;
                            write_frames(ws.get_mut(), &batch, &mut written).await
                        });
                        tokio::select! {
                            result = tokio::time::timeout(write_timeout, &mut rest) => {
                                result.map_or(Written::TimedOut, Written::Done)
                            }
                            _ = closer.notify.notified() => {
                                let done = tokio::time::timeout(CLOSE_GRACE, &mut rest).await;
                                Written::Closed(matches!(done, Ok(Ok(()))))
                            }
                        }
                    }
                };
                match result {
                    Written::Done(Ok(())) => {
                        queue.written(bytes);
                        edge.counters.writes.fetch_add(1, Ordering::Relaxed);
                        edge.counters
                            .frames_written
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Written::Done(Err(_)) => break End::Gone,
                    Written::TimedOut => {
                        torn = !at_frame_boundary(&batch, written);
                        edge.counters.closed_slow.fetch_add(1, Ordering::Relaxed);
                        break End::Close(CLOSE_SLOW_CONSUMER, "slow consumer: write timed out".into());
                    }
                    Written::Closed(completed) => {
                        torn = !completed && !at_frame_boundary(&batch, written);
                        let (code, reason) = closer.reason().unwrap_or((1000, String::new()));
                        break End::Close(code, reason);
                    }
                }
                batch.clear();
            }
            _ = reads.resumed(), if reads.paused() => {
                // Reading resumes (checked at the top of the loop). The client was not
                // silent meanwhile: we were not listening.
                last_heard = tokio::time::Instant::now();
            }
            incoming = ws.next(), if !reads.paused() => {
                last_heard = tokio::time::Instant::now();
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(close) = handle_text(edge, conn, identity, &mut limits, text.as_str()) {
                            break close;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => match rate_limited(edge, conn, &mut limits, false, None) {
                        Rated::Pass => edge.sessions.send_error(conn, &ClientError::new(
                            ErrorCode::BinaryUnsupported,
                            "binary frames are not part of the protocol; send JSON text frames",
                        )),
                        Rated::Refused => {}
                        Rated::Close(end) => break end,
                    },
                    Some(Ok(Message::Close(_))) | None => break End::Gone,
                    Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                    Some(Err(WsError::Capacity(e))) => {
                        edge.counters.closed_too_large.fetch_add(1, Ordering::Relaxed);
                        break End::Close(1009, format!("frame too large: {e}; the limit is {} bytes", config.max_frame_bytes));
                    }
                    Some(Err(WsError::Utf8(e))) => {
                        // RFC 6455 §8.1: a text frame that is not UTF-8 fails the
                        // connection with 1007.
                        edge.counters.closed_bad_utf8.fetch_add(1, Ordering::Relaxed);
                        break End::Close(1007, format!("text frame is not valid UTF-8: {e}"));
                    }
                    Some(Err(_)) => break End::Gone,
                }
            }
            _ = ping.tick() => {
                if reads.paused() {
                    // Not reading, so no pong can be seen: not the client's silence.
                    last_heard = tokio::time::Instant::now();
                } else if last_heard.elapsed() >= pong_timeout {
                    edge.counters.closed_heartbeat.fetch_add(1, Ordering::Relaxed);
                    edge.hooks.on_read_timeout(identity);
                    break End::Close(CLOSE_HEARTBEAT_TIMEOUT, format!("no pong within {} ms", config.pong_timeout_ms));
                }
                let mut result = ws.feed(Message::Ping(Default::default())).await;
                if config.legacy_heartbeat && result.is_ok() {
                    result = ws.feed(Message::Text(Utf8Bytes::from_static(LEGACY_HEARTBEAT))).await;
                }
                if result.is_err() || tokio::time::timeout(write_timeout, ws.flush()).await.map_or(true, |r| r.is_err()) {
                    break End::Gone;
                }
            }
        }
    };
    if let End::Close(code, reason) = end {
        // Nothing more is queued to it (counted as dropped), and no lane waits for it.
        // Not for a client that left on its own: frames racing its departure are not
        // counted as dropped.
        queue.close();
        if torn {
            // The peer would read the close frame as the rest of a data frame.
            let _ = tokio::time::timeout(CLOSE_GRACE, ws.get_mut().shutdown()).await;
            return;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
    }
}

/// Answers a subscribe or publish that the connection's token does not grant.
fn deny_by_token<C: Connector>(
    edge: &Edge<C>,
    conn: u64,
    topic: &str,
    doing: &str,
    publish_id: Option<u64>,
) {
    edge.counters
        .denied_by_token
        .fetch_add(1, Ordering::Relaxed);
    let message = format!("the token does not allow {doing} this topic");
    edge.sessions.send_error(
        conn,
        &ClientError::new(ErrorCode::Denied, message)
            .with_topic(topic)
            .with_id(publish_id),
    );
}

/// Handles one client text frame. What the core decides goes through `Edge::apply` (a
/// publish too: the core numbers it, sends it or holds it, and may pause this session's
/// reading); the session's own answers (a malformed frame, a refusal by the hooks) go
/// straight to its send queue.
/// What the rate limits make of a client frame.
enum Rated {
    /// Act on it.
    Pass,
    /// Answered `rate_limited`; nothing else to do.
    Refused,
    /// The connection kept sending while refused: it ends.
    Close(End),
}

/// Checks a client frame against the connection's rate limits.
fn rate_limited<C: Connector>(
    edge: &Edge<C>,
    conn: u64,
    limits: &mut ConnLimits,
    publish: bool,
    topic: Option<&str>,
) -> Rated {
    let verdict = limits.check(tokio::time::Instant::now(), publish);
    if verdict == Verdict::Pass {
        return Rated::Pass;
    }
    edge.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
    if verdict == Verdict::Close {
        edge.counters
            .closed_rate_limited
            .fetch_add(1, Ordering::Relaxed);
        return Rated::Close(End::Close(
            1008,
            "rate limit exceeded: kept sending while refused".into(),
        ));
    }
    let limit = limits.limit(publish);
    let what = if publish { "publishes" } else { "frames" };
    let mut error = ClientError::new(
        ErrorCode::RateLimited,
        format!(
            "more than {} {what} a second (burst {}) on this connection; slow down",
            limit.per_sec, limit.burst
        ),
    );
    if let Some(topic) = topic {
        error = error.with_topic(topic);
    }
    edge.sessions.send_error(conn, &error);
    Rated::Refused
}

/// Acts on one client text frame; returns how the connection ends when it must.
fn handle_text<C: Connector>(
    edge: &Arc<Edge<C>>,
    conn: u64,
    identity: &Identity,
    limits: &mut ConnLimits,
    text: &str,
) -> Option<End> {
    let parsed = parse_client_frame(text, edge.config.max_topics_per_conn);
    let publish = match &parsed {
        Ok(ClientFrame::Publish { topic, .. }) => Some(topic.as_ref()),
        _ => None,
    };
    match rate_limited(edge, conn, limits, publish.is_some(), publish) {
        Rated::Pass => {}
        Rated::Refused => return None,
        Rated::Close(end) => return Some(end),
    }
    let frame = match parsed {
        Ok(f) => f,
        Err(error) => {
            edge.sessions.send_error(conn, &error);
            return None;
        }
    };
    match frame {
        ClientFrame::Heartbeat => {}
        ClientFrame::Subscribe { topics, since } => {
            let mut asked: Vec<String> = topics.into_iter().map(|t| t.into_owned()).collect();
            asked.retain(|topic| {
                let granted = identity.grants.may_subscribe(topic);
                if !granted {
                    deny_by_token(edge, conn, topic, "subscribing to", None);
                }
                granted
            });
            if asked.is_empty() {
                return None;
            }
            let allowed = edge.hooks.before_subscribe(identity, asked.clone());
            for topic in asked.iter().filter(|t| !allowed.contains(t)) {
                edge.sessions.send_error(
                    conn,
                    &ClientError::new(ErrorCode::Denied, "subscribe refused by the server")
                        .with_topic(topic.as_str()),
                );
            }
            let allowed: Vec<String> = allowed.into_iter().filter(|t| asked.contains(t)).collect();
            if !allowed.is_empty() {
                let since: Vec<_> = since
                    .into_iter()
                    .filter(|(t, _)| allowed.contains(t))
                    .collect();
                edge.apply(|core, now| core.handle_subscribe_from(now, conn, allowed, since));
            }
        }
        ClientFrame::Unsubscribe { topics } => {
            let topics: Vec<String> = topics.into_iter().map(|t| t.into_owned()).collect();
            edge.apply(|core, _| core.handle_unsubscribe(conn, topics));
        }
        ClientFrame::Publish { topic, data, id } => {
            if !identity.grants.may_publish(&topic) {
                deny_by_token(edge, conn, &topic, "publishing to", id);
                return None;
            }
            let (topic, data) = match edge.hooks.on_read(identity, &topic, data) {
                ReadDecision::Allow => (topic.into_owned(), data.to_string()),
                ReadDecision::Deny(reason) => {
                    edge.sessions.send_error(
                        conn,
                        &ClientError::new(ErrorCode::Denied, reason)
                            .with_topic(topic.as_ref())
                            .with_id(id),
                    );
                    return None;
                }
                ReadDecision::Rewrite { topic, data } => {
                    if validate_topic(&topic).is_err()
                        || validate_json_data(data.as_bytes()).is_err()
                    {
                        edge.sessions.send_error(
                            conn,
                            &ClientError::new(
                                ErrorCode::Denied,
                                "the server's rewrite of this publish is invalid",
                            )
                            .with_topic(topic.as_str())
                            .with_id(id),
                        );
                        return None;
                    }
                    (topic, data)
                }
            };
            edge.counters
                .client_publishes
                .fetch_add(1, Ordering::Relaxed);
            edge.apply(|core, now| {
                core.handle_client_publish(now, conn, topic, Bytes::from(data), id)
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_net::metrics::testing::{parse, sample, Value};

    /// A GET over a real socket.
    async fn get(addr: std::net::SocketAddr, path: &str) -> Response {
        let timeout = Duration::from_secs(10);
        firetower_net::ops_http::get(&addr.to_string(), path, timeout, 1 << 20)
            .await
            .unwrap()
    }

    /// An edge whose metastore does not answer: alive, not ready (and says why), and its
    /// metrics are Prometheus text on the WebSocket listener.
    #[tokio::test]
    async fn an_edge_without_its_metastore_is_live_but_not_ready_and_serves_metrics() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = crate::Config {
            id: 3,
            metastore: vec!["127.0.0.1:9".into()],
            ws_advertise: addr.to_string(),
            auth: crate::AuthConfig {
                allow_anonymous: true,
                ..Default::default()
            },
            ..crate::Config::default()
        };
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let edge = tokio::spawn(crate::run(
            config,
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            endpoint,
            firetower_net::TcpConnector::default(),
            Arc::new(crate::AllowAll),
            Arc::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        assert_eq!(get(addr, "/healthz").await, Response::text(200, "ok"));
        assert_eq!(
            get(addr, "/readyz").await,
            Response::text(503, "not ready: no routing view from the metastore yet")
        );
        let metrics = get(addr, "/metrics").await;
        assert_eq!(
            (metrics.status, &*metrics.content_type),
            (200, firetower_net::ops_http::OPENMETRICS_CONTENT_TYPE)
        );
        let text = String::from_utf8_lossy(&metrics.body);
        let scrape = parse(&text);
        for family in [
            "firetower_edge_connections_open",
            "firetower_edge_connections",
            "firetower_edge_closes",
            "firetower_edge_queue_bytes",
            "firetower_edge_delivery_latency_seconds",
            "firetower_edge_ready",
        ] {
            assert!(scrape.docs.contains_key(family), "{family} in\n{text}");
        }
        assert_eq!(
            sample(&scrape, "firetower_edge_ready", &[]),
            Some(Value::Gauge(0.0))
        );
        // An unknown path.
        assert_eq!(get(addr, "/nope").await.status, 404);
        stop.send(()).unwrap();
        edge.await.unwrap().unwrap();
    }

    #[test]
    fn the_client_library_is_the_es_module_of_clients_js() {
        // The demo page imports `FiretowerClient` from /firetower.js.
        assert!(CLIENT_LIBRARY.contains("export class FiretowerClient"));
        assert!(DEMO_PAGE.contains("/firetower.js"));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The size of the future `f` returns (without calling it).
    fn future_size<F, A, B, C2, D, E, R>(_: &F) -> usize
    where
        F: Fn(A, B, C2, D, E) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// An idle connection's memory is mostly its task: the `connected` future (the session
    /// and what it borrows). It was about 6 KiB with the request, the handshake and a
    /// second copy of the future in the task; this keeps it from creeping back.
    #[test]
    fn an_idle_connections_task_holds_the_session_alone() {
        let size = future_size(&connected::<firetower_net::TcpConnector, tokio::net::TcpStream>);
        assert!(size <= 2048, "the connected future takes {size} bytes");
    }
}
