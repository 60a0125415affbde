//! Clients: the simulated WebSocket clients (one task each, driven by commands from the
//! workload) and the driver's gRPC publisher, and what each records in the oracle as it
//! happens: publishes sent and acknowledged, connects and closes, subscription acks and
//! deliveries. Kept apart because this is where what the clients are told turns into the
//! record the invariants judge.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use firetower_net::Connector;
use firetower_proto::client::{parse_recovery, parse_server_frame, ServerFrame};
use firetower_proto::distributor::v1 as dpb;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{now, Ctx};
use crate::net::SimConnector;
use crate::oracle::{Publisher, Stream};

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
    Subscribe(Vec<String>),
    /// Subscribe to `topics`, recovering those in `since` from the position given (a
    /// reconnect with its predecessor's positions).
    SubscribeFrom {
        topics: Vec<String>,
        since: Vec<(String, (u64, u64))>,
    },
    /// Client publishes (over the WebSocket, through the edge's on_read and the owner),
    /// written back to back and flushed once: one, or a burst.
    Publish(Vec<Msg>),
    Unsubscribe(String),
    Close,
}

/// Calls with more messages than this are traced as one line (bursts).
const TRACED_ONE_BY_ONE: usize = 8;

/// gRPC publisher `publisher` sends `messages` (one `Publish`, or a `PublishBatch` when
/// there are several) through distributor `dist`, records each as sent now, and, in a task
/// of its own, as acknowledged when the reply comes.
pub(super) fn publish(ctx: &Rc<Ctx>, dist: String, publisher: u32, messages: Vec<Msg>) {
    let Some(first) = messages.first().map(|m| m.id) else {
        return;
    };
    let who = Publisher::Grpc(publisher);
    let requests: Vec<dpb::PublishRequest> = {
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
                dpb::PublishRequest {
                    topic: m.topic.clone(),
                    data: data.into(),
                }
            })
            .collect()
    };
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let Ok(channel) = SimConnector.channel(&dist, firetower_net::Role::Distributor) else {
            return;
        };
        let mut client = dpb::distributor_client::DistributorClient::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        let mut requests = requests;
        let call = async {
            if requests.len() == 1 {
                let m = requests.remove(0);
                client.publish(m).await.map(|r| vec![r.into_inner()])
            } else {
                let batch = dpb::PublishBatchRequest { messages: requests };
                client
                    .publish_batch(batch)
                    .await
                    .map(|r| r.into_inner().results)
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
                                m.id, m.topic, r.epoch, r.seq, r.shards
                            ),
                        );
                    }
                    o.acked(at, m.id, r.shards);
                }
            }
            Ok(Err(status)) => o.trace(at, &format!("publish #{first} failed {:?}", status.code())),
            Err(_) => o.trace(at, &format!("publish #{first} timed out")),
        }
    });
}

/// One WebSocket client (`c` in the oracle) connected to `edge`, until it closes or loses
/// its connection.
pub(super) async fn client_task(
    ctx: Rc<Ctx>,
    c: usize,
    edge: String,
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
    loop {
        tokio::select! {
            biased;
            cmd = cmds.recv() => {
                let frame = match cmd {
                    Some(Cmd::Subscribe(topics)) => {
                        ctx.oracle.borrow_mut().subscribe_sent.push(now());
                        format!(r#"{{"type":"subscribe","topic":"{}","data":""}}"#, topics.join(","))
                    }
                    Some(Cmd::SubscribeFrom { topics, since }) => {
                        let mut o = ctx.oracle.borrow_mut();
                        let at = now();
                        o.subscribe_sent.push(at);
                        o.trace(at, &format!("client {c} subscribes to {topics:?} from {since:?}"));
                        let positions: Vec<String> = since
                            .iter()
                            .map(|(t, (e, s))| format!(r#""{t}":{{"epoch":{e},"seq":{s}}}"#))
                            .collect();
                        if let Some(r) = o.clients.get_mut(c) {
                            r.asked_from.extend(since);
                        }
                        format!(
                            r#"{{"type":"subscribe","topic":"{}","since":{{{}}}}}"#,
                            topics.join(","),
                            positions.join(",")
                        )
                    }
                    Some(Cmd::Publish(messages)) => {
                        if send_publishes(&ctx, c, &mut ws, messages).await.is_err() {
                            return closed(&ctx, None, "send failed");
                        }
                        continue;
                    }
                    Some(Cmd::Unsubscribe(topic)) => {
                        let mut o = ctx.oracle.borrow_mut();
                        let at = now();
                        if let Some(r) = o.clients.get_mut(c) {
                            r.unsubscribing.insert(topic.clone(), at);
                        }
                        format!(r#"{{"type":"unSubscribe","topic":"{topic}"}}"#)
                    }
                    Some(Cmd::Close) | None => {
                        let _ = ws.close(None).await;
                        return closed(&ctx, None, "closed by the client");
                    }
                };
                if ws.send(Message::text(frame)).await.is_err() {
                    return closed(&ctx, None, "send failed");
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => handle_frame(&ctx, c, text.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    return closed(&ctx, frame.map(|f| u16::from(f.code)), "closed by the edge");
                }
                Some(Ok(_)) => {}
                _ => return closed(&ctx, None, "connection lost"),
            },
        }
    }
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
            let data = o.send(
                at,
                m.id,
                &m.topic,
                Publisher::Client(c),
                Stream::Conn(c),
                m.pad,
            );
            format!(
                r#"{{"type":"publish","topic":"{}","data":{data}}}"#,
                m.topic
            )
        };
        ws.feed(Message::text(frame)).await?;
    }
    ws.flush().await
}

fn handle_frame(ctx: &Ctx, c: usize, text: &str) {
    let mut o = ctx.oracle.borrow_mut();
    let at = now();
    match parse_server_frame(text) {
        Ok(ServerFrame::Publish {
            topic,
            data,
            epoch,
            seq,
        }) => {
            o.delivery(at, c, &topic, epoch, seq, data);
        }
        Ok(ServerFrame::Subscribed(topics)) => {
            o.trace(at, &format!("client {c} subscribed {topics:?}"));
            o.subscribe_acked.push(at);
            let (recovered, positions) = parse_recovery(text).unwrap_or_default();
            for (t, ok) in &recovered {
                o.trace(
                    at,
                    &format!("client {c} recovered {t}: {ok} {:?}", positions.get(t)),
                );
            }
            if let Some(r) = o.clients.get_mut(c) {
                for t in topics {
                    if recovered.get(&t) == Some(&true) {
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
        Ok(ServerFrame::Unsubscribed(topics)) => {
            o.trace(at, &format!("client {c} unsubscribed {topics:?}"));
            if let Some(r) = o.clients.get_mut(c) {
                for t in topics {
                    r.subscribed.remove(&t);
                    r.unsubscribing.remove(&t);
                    // A later subscribe of it is not a recovery.
                    r.seams.remove(&t);
                    r.asked_from.remove(&t);
                }
            }
        }
        Ok(ServerFrame::Error { code, topic, .. }) => {
            // An error about several topics names them joined by ',' in an order the edge
            // does not fix (a hash set's): traced sorted, so the trace hash does not depend
            // on the process's hash keys.
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
        Ok(ServerFrame::Heartbeat) => {}
        // The simulated clients never number their publishes (the original protocol).
        Ok(ServerFrame::Published { id, .. }) => o.violate(
            at,
            "well-formed server frames",
            format!("client {c}: an answer to publish {id}, which it did not number: {text}"),
        ),
        Err(e) => o.violate(
            at,
            "well-formed server frames",
            format!("client {c}: {e}: {text}"),
        ),
    }
}
