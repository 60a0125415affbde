//! End to end with real sockets: gRPC publish → distributor → QUIC (TLS) → edge →
//! WebSocket, on an in-process cluster of 3 metastore nodes, 2 distributors and 2 edges.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use common::{Client, Cluster, EdgeTuning, Frame};
use firetower_proto::distributor::v1 as dpb;
use tokio_tungstenite::tungstenite::Message;

const READY: Duration = Duration::from_secs(30);

/// 200 clients over both edges, 20 topics, 2,000 messages over gRPC to either distributor:
/// each client gets exactly its topics' messages, once each, in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_is_exactly_once_and_in_order() -> Result<()> {
    let cluster = Cluster::start(2, 2).await?;
    cluster.wait_ready(READY).await?;
    let topics: Vec<String> = (0..20).map(|i| format!("room-{i}")).collect();
    // Client c subscribes to 3 topics.
    let picks = |c: usize| -> Vec<String> {
        let mut t = vec![
            topics[c % 20].clone(),
            topics[(c * 7 + 3) % 20].clone(),
            topics[(c * 13 + 11) % 20].clone(),
        ];
        t.sort();
        t.dedup();
        t
    };
    let mut readers = Vec::new();
    for c in 0..200usize {
        let edge = if c % 2 == 0 { 1 } else { 2 };
        let mut client = Client::connect(cluster.edge_addr(edge)).await?;
        client.subscribe(&picks(c)).await?;
        readers.push(client.spawn_reader());
    }
    // Publish: message n goes to topic n % 20 (scrambled), alternately via each distributor.
    let mut d1 = cluster.distributor(1).await?;
    let mut d2 = cluster.distributor(2).await?;
    let mut published: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for n in 0..2000u64 {
        let topic = &topics[((n * 7) % 20) as usize];
        let request = dpb::PublishRequest {
            topic: topic.clone(),
            data: format!(r#"{{"n":{n}}}"#).into(),
        };
        let reply = if n % 2 == 0 {
            d1.publish(request).await?
        } else {
            d2.publish(request).await?
        };
        ensure!(reply.get_ref().seq > 0);
        published.entry(topic.clone()).or_default().push(n);
    }
    for (c, (mut rx, handle)) in readers.into_iter().enumerate() {
        let mine = picks(c);
        let expected: usize = mine.iter().map(|t| published[t].len()).sum();
        let mut got: BTreeMap<String, Vec<(u64, u64, u64)>> = BTreeMap::new();
        let mut count = 0;
        while count < expected {
            let frame = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
            match frame {
                Ok(Some(Frame::Publish {
                    topic,
                    data,
                    epoch,
                    seq,
                })) => {
                    let v: serde_json::Value = serde_json::from_str(&data)?;
                    let n = v["n"].as_u64().unwrap_or(u64::MAX);
                    got.entry(topic).or_default().push((epoch, seq, n));
                    count += 1;
                }
                Ok(Some(other)) => bail!("client {c}: unexpected frame {other:?}"),
                Ok(None) => bail!("client {c}: connection ended after {count} of {expected}"),
                Err(_) => {
                    let links: Vec<u64> = cluster
                        .edge_counters
                        .values()
                        .map(|c| {
                            c.relay_links_total
                                .load(std::sync::atomic::Ordering::Relaxed)
                        })
                        .collect();
                    bail!("client {c}: only {count} of {expected} deliveries arrived; relay links made per edge: {links:?}; got {got:?}")
                }
            }
        }
        ensure!(
            got.keys().cloned().collect::<Vec<_>>() == mine,
            "client {c} got topics {:?}",
            got.keys()
        );
        for (topic, list) in &got {
            let ns: Vec<u64> = list.iter().map(|(_, _, n)| *n).collect();
            ensure!(
                ns == published[topic],
                "client {c} topic {topic}: wrong messages or order"
            );
            ensure!(
                list.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)),
                "client {c} topic {topic}: (epoch, seq) not increasing"
            );
        }
        handle.abort();
    }
    cluster.shutdown().await;
    Ok(())
}

async fn topic_status(cluster: &Cluster, topic: &str) -> Result<dpb::TopicStatusReply> {
    let mut d = cluster.distributor(1).await?;
    Ok(d.topic_status(dpb::TopicStatusRequest {
        topic: topic.into(),
        owner_only: false,
    })
    .await?
    .into_inner())
}

async fn wait_subscribers(
    cluster: &Cluster,
    topic: &str,
    want: u64,
) -> Result<dpb::TopicStatusReply> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = topic_status(cluster, topic).await?;
        if status.subscribers == want {
            return Ok(status);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{topic}: {} subscribers, expected {want}",
                status.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Unsubscribe stops deliveries; TopicStatus counts follow subscribes and disconnects;
/// bad client input gets error frames or close codes and the connection (and server)
/// keeps serving; bad gRPC input gets INVALID_ARGUMENT naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_status_and_bad_input() -> Result<()> {
    let cluster = Cluster::start_with(
        2,
        2,
        EdgeTuning {
            max_topics_per_conn: 4,
            ..EdgeTuning::default()
        },
    )
    .await?;
    cluster.wait_ready(READY).await?;
    let mut d = cluster.distributor(2).await?;
    let mut a = Client::connect(cluster.edge_addr(1)).await?;
    let mut b = Client::connect(cluster.edge_addr(2)).await?;
    let mut c = Client::connect(cluster.edge_addr(2)).await?;
    for x in [&mut a, &mut b, &mut c] {
        x.subscribe(&["news".to_string()]).await?;
    }
    let status = wait_subscribers(&cluster, "news", 3).await?;
    ensure!(status.edge_ids == vec![1, 2], "edges {:?}", status.edge_ids);

    // Unsubscribe: b gets the ack and then nothing more.
    b.send(r#"{"type":"unSubscribe","topic":"news"}"#).await?;
    ensure!(
        b.next_frame(Duration::from_secs(5)).await?
            == Some(Frame::Unsubscribed(vec!["news".into()]))
    );
    wait_subscribers(&cluster, "news", 2).await?;
    d.publish(dpb::PublishRequest {
        topic: "news".into(),
        data: "1".into(),
    })
    .await?;
    for x in [&mut a, &mut c] {
        match x.next_frame(Duration::from_secs(5)).await? {
            Some(Frame::Publish { data, .. }) if data == "1" => {}
            other => bail!("expected the delivery, got {other:?}"),
        }
    }
    // A numbered client publish is answered with its position, which is the position the
    // subscribers receive it at; an unnumbered one (the original protocol) is not answered.
    b.send(r#"{"type":"publish","topic":"news","data":{"n":2},"id":41}"#)
        .await?;
    let answer = b.next_frame(Duration::from_secs(5)).await?;
    let Some(Frame::Published {
        id: 41,
        topic,
        epoch,
        seq,
    }) = answer
    else {
        bail!("b: expected the answer to publish 41, got {answer:?}");
    };
    ensure!(topic == "news");
    for x in [&mut a, &mut c] {
        match x.next_frame(Duration::from_secs(5)).await? {
            Some(Frame::Publish {
                data,
                epoch: e,
                seq: s,
                ..
            }) if data == r#"{"n":2}"# && (e, s) == (epoch, seq) => {}
            other => bail!("expected the numbered publish at {epoch}:{seq}, got {other:?}"),
        }
    }
    // The next frame b sees must be its own error, not the delivery.
    b.send("{oops").await?;
    match b.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Error { code, .. }) if code == "bad_json" => {}
        other => bail!("b: expected bad_json, got {other:?}"),
    }

    // A disconnect lowers the count.
    c.close().await;
    let status = wait_subscribers(&cluster, "news", 1).await?;
    ensure!(status.edge_ids == vec![1]);

    // Bad input on one connection, each answered, the connection still usable after.
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad_json"),
        (r#"{"type":"fly","topic":"x"}"#.into(), "unknown_type"),
        (r#"{"type":"subscribe","topic":""}"#.into(), "bad_topic"),
        (
            r#"{"type":"subscribe","topic":"a\u0001b"}"#.into(),
            "bad_topic",
        ),
        (r#"{"type":"subscribe","topic":"a#b"}"#.into(), "bad_topic"),
        (
            format!(r#"{{"type":"subscribe","topic":"{}"}}"#, "t".repeat(300)),
            "bad_topic",
        ),
        (
            r#"{"type":"subscribe","topic":"a,b,c,d,e"}"#.into(),
            "too_many_topics",
        ),
    ];
    for (frame, code) in &cases {
        a.send(frame).await?;
        match a.next_frame(Duration::from_secs(5)).await? {
            Some(Frame::Error {
                code: got, message, ..
            }) if got == *code => {
                ensure!(!message.is_empty());
            }
            other => bail!("{frame:.40}: expected {code}, got {other:?}"),
        }
    }
    a.send_message(Message::binary(vec![1, 2, 3])).await?;
    match a.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Error { code, .. }) if code == "binary_unsupported" => {}
        other => bail!("binary: got {other:?}"),
    }
    // The connection-wide topic bound: a holds "news"; 3 more fit, the 5th does not.
    a.subscribe(&["t1".into(), "t2".into(), "t3".into()])
        .await?;
    a.send(r#"{"type":"subscribe","topic":"t4"}"#).await?;
    match a.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Error { code, .. }) if code == "too_many_topics" => {}
        other => bail!("connection bound: got {other:?}"),
    }
    // Still subscribed and served.
    d.publish(dpb::PublishRequest {
        topic: "news".into(),
        data: "2".into(),
    })
    .await?;
    match a.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Publish { data, .. }) if data == "2" => {}
        other => bail!("after bad input: got {other:?}"),
    }
    // A client publish goes through the owner to subscribers (a sees its own message).
    a.send(r#"{"type":"publish","topic":"news","data":{"from":"a"}}"#)
        .await?;
    match a.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Publish { data, .. }) if data == r#"{"from":"a"}"# => {}
        other => bail!("client publish: got {other:?}"),
    }
    // A frame over 64 KiB closes with 1009; everyone else is unaffected.
    let mut big = Client::connect(cluster.edge_addr(1)).await?;
    big.send(&format!(
        r#"{{"type":"publish","topic":"news","data":"{}"}}"#,
        "x".repeat(70 << 10)
    ))
    .await?;
    match big.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Closed(1009, reason)) => ensure!(reason.contains("65536"), "reason {reason}"),
        other => bail!("oversize frame: got {other:?}"),
    }
    d.publish(dpb::PublishRequest {
        topic: "news".into(),
        data: "3".into(),
    })
    .await?;
    match a.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Publish { data, .. }) if data == "3" => {}
        other => bail!("after an oversize frame elsewhere: got {other:?}"),
    }

    // Bad gRPC input names the field.
    let bad = [
        (
            dpb::PublishRequest {
                topic: "".into(),
                data: "1".into(),
            },
            "topic",
        ),
        (
            dpb::PublishRequest {
                topic: "a,b".into(),
                data: "1".into(),
            },
            "topic",
        ),
        (
            dpb::PublishRequest {
                topic: "ok".into(),
                data: "not json".into(),
            },
            "data",
        ),
        (
            dpb::PublishRequest {
                topic: "ok".into(),
                data: vec![b'1'; 70 << 10].into(),
            },
            "data",
        ),
    ];
    for (request, field) in bad {
        let status = d
            .publish(request)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
        ensure!(status.message().starts_with(field), "{}", status.message());
    }
    let status = d
        .publish_batch(dpb::PublishBatchRequest {
            messages: vec![
                dpb::PublishRequest {
                    topic: "ok".into(),
                    data: "1".into(),
                },
                dpb::PublishRequest {
                    topic: "".into(),
                    data: "1".into(),
                },
            ],
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    ensure!(
        status.message().starts_with("messages[1].topic"),
        "{}",
        status.message()
    );
    let status = d
        .topic_status(dpb::TopicStatusRequest {
            topic: "".into(),
            owner_only: false,
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    ensure!(status.code() == tonic::Code::InvalidArgument && status.message().starts_with("topic"));
    // A batch is sequenced in order.
    let replies = d
        .publish_batch(dpb::PublishBatchRequest {
            messages: (0..3)
                .map(|i| dpb::PublishRequest {
                    topic: "news".into(),
                    data: format!("{}", 10 + i).into(),
                })
                .collect(),
        })
        .await?
        .into_inner();
    ensure!(replies.results.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    for want in ["10", "11", "12"] {
        match a.next_frame(Duration::from_secs(5)).await? {
            Some(Frame::Publish { data, .. }) if data == want => {}
            other => bail!("batch: got {other:?}"),
        }
    }

    // KickUser closes the user's connections on every edge (4002), and nobody else's.
    let mut kicked = Vec::new();
    for edge in [1, 2] {
        let mut k = Client::connect_path(cluster.edge_addr(edge), "/ws?user=u42").await?;
        k.subscribe(&["news".to_string()]).await?;
        kicked.push(k);
    }
    let reply = d
        .kick_user(dpb::KickUserRequest {
            user_id: "u42".into(),
        })
        .await?
        .into_inner();
    ensure!(
        reply.connections_closed == 2,
        "closed {}",
        reply.connections_closed
    );
    for k in &mut kicked {
        match k.next_frame(Duration::from_secs(5)).await? {
            Some(Frame::Closed(code, _)) => ensure!(code == firetower_edge::CLOSE_KICKED),
            other => bail!("kicked client: {other:?}"),
        }
    }
    d.publish(dpb::PublishRequest {
        topic: "news".into(),
        data: "13".into(),
    })
    .await?;
    match a.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Publish { data, .. }) if data == "13" => {}
        other => bail!("after the kick: got {other:?}"),
    }
    let status = d
        .kick_user(dpb::KickUserRequest { user_id: "".into() })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    ensure!(
        status.code() == tonic::Code::InvalidArgument && status.message().starts_with("user_id")
    );
    cluster.shutdown().await;
    Ok(())
}

/// A client that stops reading is closed with 4001 once its send queue has stayed over its
/// budget for `slow_after_ms`; meanwhile the lane feeding it pauses (it does not drop), a
/// topic on another lane keeps flowing, and every client that keeps reading gets every
/// message, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_nobody_else_loses_a_frame() -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    use tokio::time::Instant;
    const BUDGET: usize = 64 << 10;
    const SLOW_AFTER_MS: u64 = 1500;
    let cluster = Cluster::start_with(
        1,
        1,
        EdgeTuning {
            send_queue_bytes: BUDGET,
            slow_after_ms: SLOW_AFTER_MS,
            ..EdgeTuning::default()
        },
    )
    .await?;
    cluster.wait_ready(READY).await?;
    let mut fast_rx = Vec::new();
    for _ in 0..3 {
        let mut fast = Client::connect(cluster.edge_addr(1)).await?;
        fast.subscribe(&["firehose".into()]).await?;
        fast_rx.push(fast.spawn_reader().0);
    }
    // A topic on another relay lane (the distributor's lane is the slot modulo
    // `relay_lanes`, 4 by default).
    let lane = |topic: &str| firetower_proto::slot_of(topic) % 4;
    let side_topic = (0..)
        .map(|i| format!("side-{i}"))
        .find(|t| lane(t) != lane("firehose"))
        .unwrap_or_default();
    let mut side = Client::connect(cluster.edge_addr(1)).await?;
    side.subscribe(std::slice::from_ref(&side_topic)).await?;
    let (mut side_rx, _side) = side.spawn_reader();
    let mut slow = Client::connect(cluster.edge_addr(1)).await?;
    slow.subscribe(&["firehose".into()]).await?;
    // `slow` is not polled from here on. 32 MiB is more than the loopback socket buffers
    // on both sides and the budget take.
    let mut d = cluster.distributor(1).await?;
    let mut d_side = cluster.distributor(1).await?;
    let total = 2000u64;
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Published from a task: the test watches the readers and the close meanwhile (the
    // close frame can follow only if the client reads within a second of it, see below).
    let mut publisher = tokio::spawn({
        let sent = sent.clone();
        async move {
            let padding = "y".repeat(16 << 10);
            for n in 0..total {
                d.publish(dpb::PublishRequest {
                    topic: "firehose".into(),
                    data: format!(r#"{{"n":{n},"p":"{padding}"}}"#).into(),
                })
                .await?;
                sent.store(n + 1, Relaxed);
            }
            anyhow::Ok(Instant::now())
        }
    });
    let counters = &cluster.edge_counters[&1];
    let slack = Duration::from_secs(5);
    let mut got: Vec<Vec<u64>> = vec![Vec::new(); fast_rx.len()];
    let mut progress = Instant::now();
    let mut published: Option<Instant> = None;
    let mut side_checked = false;
    while counters.closed_slow.load(Relaxed) == 0 {
        for (rx, got) in fast_rx.iter_mut().zip(&mut got) {
            while let Ok(frame) = rx.try_recv() {
                match frame {
                    Frame::Publish { data, .. } => got.push(number(&data)?),
                    other => bail!("fast reader: {other:?}"),
                }
                progress = Instant::now();
            }
        }
        if published.is_none() && publisher.is_finished() {
            published = Some((&mut publisher).await??);
        }
        let behind = got.iter().map(Vec::len).min().unwrap_or(0) as u64;
        if !side_checked
            && progress.elapsed() >= Duration::from_millis(300)
            && sent.load(Relaxed) > behind
        {
            // The fast readers are stuck behind the slow one: the firehose lane waits for
            // it. Another lane is not held up.
            d_side
                .publish(dpb::PublishRequest {
                    topic: side_topic.clone(),
                    data: "\"side\"".into(),
                })
                .await?;
            match tokio::time::timeout(Duration::from_secs(1), side_rx.recv()).await {
                Ok(Some(Frame::Publish { topic, .. })) if topic == side_topic => {}
                other => bail!("another lane was held up too: {other:?}"),
            }
            ensure!(
                counters.closed_slow.load(Relaxed) == 0,
                "inconclusive: the slow client was closed before the other lane's delivery"
            );
            side_checked = true;
        }
        if let Some(published) = published {
            // Everything is published: the close is due within slow_after of the burst.
            ensure!(
                published.elapsed() < Duration::from_millis(SLOW_AFTER_MS) + slack,
                "the client that stopped reading was not closed within {SLOW_AFTER_MS} ms + \
                 {slack:?} of the burst (lane pauses: {})",
                counters.lane_pauses.load(Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(
        started.elapsed() >= Duration::from_millis(SLOW_AFTER_MS),
        "closed before it can have been over its budget for {SLOW_AFTER_MS} ms"
    );
    ensure!(
        side_checked,
        "the fast readers never waited for the slow one"
    );
    // The slow client, reading at last, finds a gap-free prefix of the messages, then the
    // 4001 close with the rule that closed it.
    let (mut slow_rx, _slow) = slow.spawn_reader();
    let mut next = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), slow_rx.recv()).await {
            Ok(Some(Frame::Publish { data, .. })) => {
                ensure!(
                    number(&data)? == next,
                    "the slow client skipped to {data:.20}"
                );
                next += 1;
            }
            Ok(Some(Frame::Closed(code, reason))) => {
                ensure!(
                    code == firetower_edge::CLOSE_SLOW_CONSUMER
                        && reason == "slow consumer: send queue over 65536 bytes for 1500 ms",
                    "close {code} {reason}"
                );
                break;
            }
            other => bail!("slow client after {next} messages: {other:?}"),
        }
    }
    ensure!(
        next < total,
        "the slow client got everything: it was not slow"
    );
    if published.is_none() {
        publisher.await??;
    }
    // Every fast reader got every message exactly once, in order.
    for (i, (rx, got)) in fast_rx.iter_mut().zip(&mut got).enumerate() {
        while (got.len() as u64) < total {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(Frame::Publish { data, .. })) => got.push(number(&data)?),
                other => bail!("fast reader {i} after {} messages: {other:?}", got.len()),
            }
        }
        ensure!(
            got.iter().copied().eq(0..total),
            "fast reader {i} got the messages out of order or twice"
        );
    }
    ensure!(
        counters.closed_slow.load(Relaxed) == 1,
        "a fast reader was closed"
    );
    // Everything queued was written (or went with the closed connection).
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.queued_bytes.load(Relaxed) != 0 {
        ensure!(
            Instant::now() < deadline,
            "{} bytes stay queued",
            counters.queued_bytes.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.shutdown().await;
    Ok(())
}

/// The `n` of a test message `{"n":…,"p":…}`.
fn number(data: &str) -> Result<u64> {
    let value: serde_json::Value = serde_json::from_str(data)?;
    value["n"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no n in {data:.40}"))
}

/// Killing a distributor moves its slots to the other; messages published afterwards are
/// delivered, in order, to clients that stayed connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_distributor_moves_its_slots() -> Result<()> {
    let mut cluster = Cluster::start(2, 2).await?;
    cluster.wait_ready(READY).await?;
    let topics: Vec<String> = (0..10).map(|i| format!("k-{i}")).collect();
    let mut clients = Vec::new();
    for edge in [1, 2] {
        let mut c = Client::connect(cluster.edge_addr(edge)).await?;
        c.subscribe(&topics).await?;
        clients.push(c);
    }
    if let Some(d) = cluster.distributors.get_mut(&1) {
        d.kill();
    }
    // The metastore moves distributor 1's slots once its lease (1.5 s) runs out.
    cluster
        .wait_slots_only_on(2, Duration::from_secs(15))
        .await?;
    let mut d2 = cluster.distributor(2).await?;
    for (i, topic) in topics.iter().enumerate() {
        d2.publish(dpb::PublishRequest {
            topic: topic.clone(),
            data: format!("{i}").into(),
        })
        .await?;
    }
    for c in &mut clients {
        let mut seen = BTreeMap::new();
        while seen.len() < topics.len() {
            match c.next_frame(Duration::from_secs(15)).await? {
                Some(Frame::Publish { topic, data, .. }) => {
                    ensure!(
                        seen.insert(topic.clone(), data).is_none(),
                        "duplicate on {topic}"
                    );
                }
                other => bail!("after the kill: {other:?} (got {})", seen.len()),
            }
        }
        for (i, topic) in topics.iter().enumerate() {
            ensure!(seen[topic] == format!("{i}"));
        }
    }
    cluster.shutdown().await;
    Ok(())
}

/// A client that stops reading and is given a minute before it counts as slow: its queue,
/// the edge's lane and the distributor's lane fill, and then a gRPC publish to its topic
/// waits and fails with RESOURCE_EXHAUSTED at the deadline instead of being acked. When the
/// client reads again it gets every acked message, once and in order: nothing acked was
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_cannot_be_queued_gets_resource_exhausted_never_a_success() -> Result<()> {
    let cluster = Cluster::start_with(
        1,
        1,
        EdgeTuning {
            send_queue_bytes: 64 << 10,
            slow_after_ms: 60_000,
            lane_queue_bytes: 64 << 10,
            publish_retry_ms: 1000,
            ..EdgeTuning::default()
        },
    )
    .await?;
    cluster.wait_ready(READY).await?;
    let mut stalled = Client::connect(cluster.edge_addr(1)).await?;
    stalled.subscribe(&["jam".into()]).await?;
    // `stalled` is not polled until the publisher has been refused.
    let mut d = cluster.distributor(1).await?;
    let body = "x".repeat(16 << 10);
    let mut acked = 0u64;
    let refusal = loop {
        let reply = d
            .publish(dpb::PublishRequest {
                topic: "jam".into(),
                data: format!(r#"{{"n":{acked},"pad":"{body}"}}"#).into(),
            })
            .await;
        match reply {
            Ok(r) => {
                ensure!(r.get_ref().seq == acked + 1, "seq {:?}", r.get_ref());
                acked += 1;
            }
            Err(status) => break status,
        }
        // 100k messages of 16 KiB is 1.6 GB: far beyond every buffer on the way.
        ensure!(acked < 100_000, "never refused");
    };
    ensure!(
        refusal.code() == tonic::Code::ResourceExhausted,
        "refused with {refusal:?}"
    );
    ensure!(
        refusal.message().contains("stayed full"),
        "refused with {refusal:?}"
    );
    ensure!(acked > 0, "the first publishes had room");
    let (mut rx, _) = stalled.spawn_reader();
    for n in 0..acked {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(Frame::Publish { data, seq, .. })) => {
                let v: serde_json::Value = serde_json::from_str(&data)?;
                ensure!(
                    v["n"].as_u64() == Some(n) && seq == n + 1,
                    "message {n}: got n={:?} seq={seq}",
                    v["n"]
                );
            }
            other => bail!("message {n} of {acked}: {other:?}"),
        }
    }
    ensure!(
        cluster.edge_counters[&1]
            .closed_slow
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    );
    cluster.shutdown().await;
    Ok(())
}
