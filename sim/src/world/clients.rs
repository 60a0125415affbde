//! Clients: the simulated WebSocket clients (one task each, driven by commands from the
//! workload) and the driver's gRPC publisher, and what each records in the oracle as it
//! happens: publishes sent and acknowledged, connects and closes, subscription acks and
//! deliveries. Kept apart because this is where what the clients are told turns into the
//! record the invariants judge.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use firetower_net::Connector;
use firetower_proto::client::{parse_server_frame, ServerFrame};
use firetower_proto::distributor::v1 as dpb;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{now, Ctx};
use crate::net::SimConnector;
use crate::oracle::PublishRecord;

/// What the workload tells a WebSocket client to do.
pub(super) enum Cmd {
    Subscribe(Vec<String>),
    /// A client publish (over the WebSocket, through the edge's on_read and the owner).
    Publish(String, u64),
    Unsubscribe(String),
    Close,
}

/// Sends messages `first..` (one `Publish`, or a `PublishBatch` when there are several)
/// through distributor `dist` over gRPC, records each as sent now, and, in a task of its
/// own, as acknowledged when the reply comes.
pub(super) fn publish(ctx: &Rc<Ctx>, dist: String, topics: Vec<String>, first: u64) {
    let mut records = Vec::new();
    {
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        for (k, topic) in topics.iter().enumerate() {
            let id = first + k as u64;
            o.trace(at, &format!("publish #{id} {topic} via {dist}"));
            o.publishes.push(PublishRecord {
                id,
                topic: topic.clone(),
                sent: at,
                acked: None,
            });
            records.push(o.publishes.len() - 1);
        }
    }
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let Ok(channel) = SimConnector.channel(&dist) else {
            return;
        };
        let mut client = dpb::distributor_client::DistributorClient::new(channel);
        let mut messages: Vec<dpb::PublishRequest> = topics
            .iter()
            .enumerate()
            .map(|(k, topic)| dpb::PublishRequest {
                topic: topic.clone(),
                data: format!(r#"{{"id":{}}}"#, first + k as u64).into(),
            })
            .collect();
        let call = async {
            if messages.len() == 1 {
                let m = messages.remove(0);
                client.publish(m).await.map(|r| vec![r.into_inner()])
            } else {
                let batch = dpb::PublishBatchRequest { messages };
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
                for ((k, r), index) in replies.iter().enumerate().zip(&records) {
                    o.trace(
                        at,
                        &format!(
                            "published #{} {} {}.{} to {} shards",
                            first + k as u64,
                            topics[k],
                            r.epoch,
                            r.seq,
                            r.shards
                        ),
                    );
                    if let Some(p) = o.publishes.get_mut(*index) {
                        p.acked = Some(at);
                    }
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
                    Some(Cmd::Subscribe(topics)) => format!(r#"{{"type":"subscribe","topic":"{}","data":""}}"#, topics.join(",")),
                    Some(Cmd::Publish(topic, id)) => {
                        format!(r#"{{"type":"publish","topic":"{topic}","data":{{"id":{id}}}}}"#)
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
            let id = serde_json::from_str::<serde_json::Value>(data)
                .ok()
                .and_then(|v| v["id"].as_u64())
                .unwrap_or(0);
            o.delivery(at, c, &topic, epoch, seq, id);
        }
        Ok(ServerFrame::Subscribed(topics)) => {
            o.trace(at, &format!("client {c} subscribed {topics:?}"));
            if let Some(r) = o.clients.get_mut(c) {
                for t in topics {
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
                }
            }
        }
        Ok(ServerFrame::Error { code, topic, .. }) => {
            o.trace(at, &format!("client {c} error {code} {topic:?}"));
        }
        Ok(ServerFrame::Heartbeat) => {}
        Err(e) => o.violate(
            at,
            "well-formed server frames",
            format!("client {c}: {e}: {text}"),
        ),
    }
}
