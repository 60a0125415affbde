//! Clients: the simulated WebSocket clients (one task each, driven by commands from the
//! workload) and the driver's gRPC publisher, and what each records in the oracle as it
//! happens: publishes sent and acknowledged, connects and closes, subscription acks and
//! deliveries. Kept apart because this is where what the clients are told turns into the
//! record the invariants judge.
//!
//! The client protocol is the Rust client's (`firetower-client`), not a copy of it: each
//! WebSocket client's decisions (which subscribe frames to send, with which `since`, what a
//! server frame means, its positions) are a `SubscriberCore`'s, its frames are built by
//! `firetower_client::frames`, and the gRPC publishes go through `firetower_client::
//! Publisher` over the simulated network. The oracle keeps its own record: it is told every
//! frame sent (parsed back with the edge's own parser) and every delivery the core saw,
//! including those the core drops (`Event::Dropped`), so it still judges the edges.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use firetower_client::subscriber::TOPICS_PER_FRAME;
use firetower_client::{frames, ClientError, Event, PublishMessage, Publisher, SubscriberCore};
use firetower_proto::client::{parse_client_frame, ClientFrame};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{now, Ctx};
use crate::net::SimConnector;
use crate::oracle::{Oracle, Publisher as Who, Stream};

/// One message a publisher is told to send: its id, its topic and how many bytes of
/// padding its payload carries (large-payload bursts).
#[derive(Debug, Clone)]
pub(super) struct Msg {
    pub(super) id: u64,
    pub(super) topic: String,
    pub(super) pad: usize,
}

/// What the workload tells a WebSocket client to do.
pub(super) enum Cmd {
    /// Subscribe to these topics (those its core holds already are not asked again).
    Subscribe(Vec<String>),
    /// Client publishes (over the WebSocket, through the edge's on_read and the owner),
    /// written back to back and flushed once: one, or a burst.
    Publish(Vec<Msg>),
    Unsubscribe(String),
    Close,
}

/// Calls with more messages than this are traced as one line (bursts).
const TRACED_ONE_BY_ONE: usize = 8;

/// gRPC publisher `publisher` sends `messages` (one `Publish`, or a `PublishBatch` when
/// there are several) through distributor `dist`, with the Rust client's `Publisher`,
/// records each as sent now, and, in a task of its own, as acknowledged when the reply
/// comes.
pub(super) fn publish(ctx: &Rc<Ctx>, dist: String, publisher: u32, messages: Vec<Msg>) {
    let Some(first) = messages.first().map(|m| m.id) else {
        return;
    };
    let who = Who::Grpc(publisher);
    let mut requests: Vec<PublishMessage> = {
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        if messages.len() > TRACED_ONE_BY_ONE {
            o.trace(
                at,
                &format!(
                    "{who} publishes #{first}..#{} ({} messages, {} bytes of padding) via {dist}",
                    first + messages.len() as u64 - 1,
                    messages.len(),
                    messages.iter().map(|m| m.pad).sum::<usize>()
                ),
            );
        }
        messages
            .iter()
            .map(|m| {
                if messages.len() <= TRACED_ONE_BY_ONE {
                    o.trace(
                        at,
                        &format!("publish #{} {} via {dist} by {who}", m.id, m.topic),
                    );
                }
                let data = o.send(at, m.id, &m.topic, who, Stream::Call(first), m.pad);
                o.sent_via(m.id, &dist);
                PublishMessage {
                    topic: m.topic.clone(),
                    data: data.into_bytes(),
                }
            })
            .collect()
    };
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        // Plaintext and no key: the simulated gRPC carries no TLS (sim/src/net.rs).
        let Ok(client) =
            Publisher::with_connector(&SimConnector, &dist, firetower_net::ApiKey::none())
        else {
            return;
        };
        let call = async {
            if requests.len() == 1 {
                let m = requests.remove(0);
                client.publish_message(m).await.map(|r| vec![r])
            } else {
                client.publish_batch(requests).await
            }
        };
        let result = tokio::time::timeout(Duration::from_secs(8), call).await;
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        match result {
            Ok(Ok(replies)) => {
                if replies.len() > TRACED_ONE_BY_ONE {
                    o.trace(
                        at,
                        &format!("published #{first}..: {} positions", replies.len()),
                    );
                }
                for (r, m) in replies.iter().zip(&messages) {
                    if replies.len() <= TRACED_ONE_BY_ONE {
                        o.trace(
                            at,
                            &format!(
                                "published #{} {} {}.{} to {} shards",
                                m.id, m.topic, r.position.epoch, r.position.seq, r.shards
                            ),
                        );
                    }
                    o.acked(at, m.id, r.shards);
                }
            }
            Ok(Err(ClientError::Refused { code, .. })) => {
                o.trace(at, &format!("publish #{first} failed {code:?}"))
            }
            Ok(Err(e)) => o.trace(at, &format!("publish #{first} failed: {e}")),
            Err(_) => o.trace(at, &format!("publish #{first} timed out")),
        }
    });
}

/// One WebSocket client (`c` in the oracle) connected to `edge`, until it closes or loses
/// its connection. `core` holds its subscriptions and positions: empty for a new client, a
/// copy of its predecessor's for a client that replaces a closed one (it then subscribes
/// to what that one held, with `since`, as the Rust client does after a reconnect).
pub(super) async fn client_task(
    ctx: Rc<Ctx>,
    c: usize,
    edge: String,
    core: Rc<RefCell<SubscriberCore>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let closed = |ctx: &Ctx, code: Option<u16>, why: &str| {
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        o.trace(at, &format!("client {c} closed {code:?} {why}"));
        if let Some(r) = o.clients.get_mut(c) {
            r.connected = false;
            r.closed_at = Some(at);
            r.slow = code == Some(firetower_edge::CLOSE_SLOW_CONSUMER);
        }
    };
    let Ok(addr) = edge.parse::<SocketAddr>() else {
        return;
    };
    let stream = match tokio::time::timeout(
        Duration::from_secs(2),
        turmoil::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => return closed(&ctx, None, "connect failed"),
    };
    let mut ws = match tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::client_async(format!("ws://{edge}/ws"), stream),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        _ => return closed(&ctx, None, "handshake failed"),
    };
    ctx.oracle
        .borrow_mut()
        .trace(now(), &format!("client {c} connected to {edge}"));
    let opening = core.borrow_mut().on_connected();
    for frame in opening {
        if send_frame(&ctx, c, &mut ws, frame).await.is_err() {
            return closed(&ctx, None, "send failed");
        }
    }
    loop {
        tokio::select! {
            biased;
            cmd = cmds.recv() => {
                let frames = match cmd {
                    Some(Cmd::Subscribe(topics)) => core.borrow_mut().subscribe_all(&topics),
                    Some(Cmd::Publish(messages)) => {
                        if send_publishes(&ctx, c, &mut ws, messages).await.is_err() {
                            return closed(&ctx, None, "send failed");
                        }
                        continue;
                    }
                    Some(Cmd::Unsubscribe(topic)) => {
                        core.borrow_mut().unsubscribe(&topic).into_iter().collect()
                    }
                    Some(Cmd::Close) | None => {
                        let _ = ws.close(None).await;
                        return closed(&ctx, None, "closed by the client");
                    }
                };
                for frame in frames {
                    if send_frame(&ctx, c, &mut ws, frame).await.is_err() {
                        return closed(&ctx, None, "send failed");
                    }
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let events = core.borrow_mut().on_frame(text.as_str());
                    record(&mut ctx.oracle.borrow_mut(), c, events);
                }
                Some(Ok(Message::Close(frame))) => {
                    return closed(&ctx, frame.map(|f| u16::from(f.code)), "closed by the edge");
                }
                Some(Ok(_)) => {}
                _ => return closed(&ctx, None, "connection lost"),
            },
        }
    }
}

/// Sends a subscribe or unsubscribe frame of the core, recording in the oracle what it
/// asks for, as the edge reads it: when it was sent, the positions it recovers from (for
/// the recovery invariant), the topics it leaves.
async fn send_frame<S>(
    ctx: &Ctx,
    c: usize,
    ws: &mut S,
    frame: String,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    {
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        match parse_client_frame(&frame, TOPICS_PER_FRAME) {
            Ok(ClientFrame::Subscribe { topics, since }) => {
                o.subscribe_sent.push(at);
                let since: Vec<(String, (u64, u64))> = since
                    .into_iter()
                    .map(|(t, p)| (t, (p.epoch, p.seq)))
                    .collect();
                o.trace(
                    at,
                    &format!("client {c} subscribes to {topics:?} from {since:?}"),
                );
                if let Some(r) = o.clients.get_mut(c) {
                    r.asked_from.extend(since);
                }
            }
            Ok(ClientFrame::Unsubscribe { topics }) => {
                o.trace(at, &format!("client {c} unsubscribes {topics:?}"));
                if let Some(r) = o.clients.get_mut(c) {
                    for t in topics {
                        r.unsubscribing.insert(t.into_owned(), at);
                    }
                }
            }
            Ok(other) => o.violate(
                at,
                "well-formed client frames",
                format!("client {c}: the core made {other:?}"),
            ),
            Err(e) => o.violate(
                at,
                "well-formed client frames",
                format!("client {c}: the edge would refuse {frame}: {e:?}"),
            ),
        }
    }
    ws.send(Message::text(frame)).await
}

/// Writes client publishes back to back, each recorded as sent as it is written, and
/// flushes them.
async fn send_publishes<S>(
    ctx: &Ctx,
    c: usize,
    ws: &mut S,
    messages: Vec<Msg>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    if messages.len() > TRACED_ONE_BY_ONE {
        if let (Some(a), Some(b)) = (messages.first(), messages.last()) {
            ctx.oracle.borrow_mut().trace(
                now(),
                &format!(
                    "client {c} publishes #{}..#{} ({} messages, {} bytes of padding)",
                    a.id,
                    b.id,
                    messages.len(),
                    messages.iter().map(|m| m.pad).sum::<usize>()
                ),
            );
        }
    }
    for m in &messages {
        let frame = {
            let mut o = ctx.oracle.borrow_mut();
            let at = now();
            if messages.len() <= TRACED_ONE_BY_ONE {
                o.trace(at, &format!("client {c} publishes #{} {}", m.id, m.topic));
            }
            let data = o.send(at, m.id, &m.topic, Who::Client(c), Stream::Conn(c), m.pad);
            // Not numbered: the original protocol, whose publishes the edge does not answer
            // when they succeed (the oracle judges them by their deliveries).
            frames::publish(&m.topic, &data, None)
        };
        ws.feed(Message::text(frame)).await?;
    }
    ws.flush().await
}

/// Records what client `c`'s core made of one server frame (its events all come from that
/// one frame).
fn record(o: &mut Oracle, c: usize, events: Vec<Event>) {
    let at = now();
    let mut subscribed = Vec::new();
    let mut unsubscribed = Vec::new();
    for event in events {
        match event {
            // A delivery the core dropped is recorded too: the oracle judges the edge's
            // order and subscriptions, not the core's.
            Event::Message {
                topic,
                data,
                position,
            }
            | Event::Dropped {
                topic,
                data,
                position,
                ..
            } => o.delivery(at, c, &topic, position.epoch, position.seq, &data),
            Event::Subscribed {
                topic,
                recovered,
                position,
            } => subscribed.push((topic, recovered, position)),
            Event::Unsubscribed { topic } => unsubscribed.push(topic),
            Event::Error { code, topic, .. } => {
                // An error about several topics names them joined by ',' in an order the
                // edge does not fix (a hash set's): traced sorted, so the trace hash does
                // not depend on the process's hash keys.
                let mut topics: Vec<&str> = topic.iter().flat_map(|t| t.split(',')).collect();
                topics.sort_unstable();
                o.trace(at, &format!("client {c} error {code} {topics:?}"));
                if topics.is_empty() {
                    o.refused(c, None);
                }
                for t in topics {
                    o.refused(c, Some(t));
                }
            }
            // The simulated clients never number their publishes (the original protocol).
            Event::Published { id, .. } => o.violate(
                at,
                "well-formed server frames",
                format!("client {c}: an answer to publish {id}, which it did not number"),
            ),
            Event::BadFrame { error, frame } => o.violate(
                at,
                "well-formed server frames",
                format!("client {c}: {error}: {frame}"),
            ),
            // Connection events come from the shell, not from a frame.
            Event::Connected { .. } | Event::Disconnected { .. } => {}
        }
    }
    if !subscribed.is_empty() {
        let topics: Vec<&String> = subscribed.iter().map(|(t, _, _)| t).collect();
        o.trace(at, &format!("client {c} subscribed {topics:?}"));
        o.subscribe_acked.push(at);
        for (t, recovered, position) in &subscribed {
            if let Some(ok) = recovered {
                let position = position.map(|p| (p.epoch, p.seq));
                o.trace(at, &format!("client {c} recovered {t}: {ok} {position:?}"));
            }
        }
        if let Some(r) = o.clients.get_mut(c) {
            for (t, recovered, _) in subscribed {
                if recovered == Some(true) {
                    if let Some((epoch, seq)) = r.asked_from.remove(&t) {
                        r.seams.insert(
                            t.clone(),
                            crate::invariants::recovery::Seam {
                                epoch,
                                next: seq + 1,
                                acked: at,
                            },
                        );
                    }
                }
                r.subscribed.entry(t).or_insert(at);
            }
        }
    }
    if !unsubscribed.is_empty() {
        o.trace(at, &format!("client {c} unsubscribed {unsubscribed:?}"));
        if let Some(r) = o.clients.get_mut(c) {
            for t in unsubscribed {
                r.subscribed.remove(&t);
                r.unsubscribing.remove(&t);
                // A later subscribe of it is not a recovery.
                r.seams.remove(&t);
                r.asked_from.remove(&t);
            }
        }
    }
}
