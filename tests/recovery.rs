//! Recovery end to end, on real sockets: a client that reconnects with the position it
//! last saw gets exactly what was published meanwhile, in order, then the live messages,
//! on the other edge too; a position that cannot be served is answered with the current
//! one (another epoch, or the owner was killed); across a slot move and a hot-topic split;
//! History over gRPC and `firetower history`.

// The CLI runs as a real process, in real time.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use common::{Client, Cluster, Frame};
use firetower_proto::distributor::v1 as dpb;

const READY: Duration = Duration::from_secs(30);

/// One cluster at a time: clusters started side by side on a 2-core machine slow each
/// other's lease heartbeats and handovers (the slot-move test missed its handover once
/// while the whole suite ran).
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn publish(
    d: &mut dpb::distributor_client::DistributorClient<firetower_net::KeyedChannel>,
    topic: &str,
    n: u64,
) -> Result<(u64, u64)> {
    let reply = d
        .publish(dpb::PublishRequest {
            topic: topic.into(),
            data: format!(r#"{{"n":{n}}}"#).into(),
        })
        .await?
        .into_inner();
    Ok((reply.epoch, reply.seq))
}

/// The next `count` deliveries of `topic`: (epoch, seq, data).
async fn deliveries(
    client: &mut Client,
    topic: &str,
    count: usize,
) -> Result<Vec<(u64, u64, String)>> {
    let mut got = Vec::new();
    while got.len() < count {
        match client.next_frame(Duration::from_secs(10)).await? {
            Some(Frame::Publish {
                topic: t,
                data,
                epoch,
                seq,
            }) if t == topic => got.push((epoch, seq, data)),
            other => bail!("after {} deliveries: {other:?}", got.len()),
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_to_the_other_edge_gets_exactly_what_it_missed() -> Result<()> {
    let _one = ONE_CLUSTER.lock().await;
    let cluster = Cluster::start(2, 2).await?;
    cluster.wait_ready(READY).await?;
    let topic = "recover-chat";
    let mut d = cluster.distributor(1).await?;

    let mut first = Client::connect(cluster.edge_addr(1)).await?;
    first.subscribe(&[topic.to_string()]).await?;
    for n in 0..10 {
        publish(&mut d, topic, n).await?;
    }
    let seen = deliveries(&mut first, topic, 10).await?;
    let (epoch, last) = (seen[9].0, seen[9].1);
    first.close().await;

    let mut missed = Vec::new();
    for n in 10..110 {
        missed.push(publish(&mut d, topic, n).await?);
    }
    let mut second = Client::connect(cluster.edge_addr(2)).await?;
    let (recovered, position) = second.subscribe_from(topic, epoch, last).await?;
    ensure!(recovered && position.is_none(), "{recovered} {position:?}");
    let got = deliveries(&mut second, topic, 100).await?;
    for (i, (e, s, data)) in got.iter().enumerate() {
        ensure!(
            (*e, *s) == missed[i],
            "delivery {i}: {:?}, published as {:?}",
            (e, s),
            missed[i]
        );
        ensure!(
            *data == format!(r#"{{"n":{}}}"#, 10 + i),
            "delivery {i}: {data}"
        );
    }
    // Then the live ones, and nothing twice.
    for n in 110..115 {
        publish(&mut d, topic, n).await?;
    }
    let live = deliveries(&mut second, topic, 5).await?;
    ensure!(
        live.iter()
            .map(|l| l.2.clone())
            .eq((110..115).map(|n| format!(r#"{{"n":{n}}}"#))),
        "{live:?}"
    );
    ensure!(
        live[0].1 == last + 101,
        "no gap or duplicate at the seam: {live:?}"
    );
    ensure!(
        second
            .next_frame(Duration::from_millis(300))
            .await?
            .is_none(),
        "nothing more"
    );

    // Another epoch cannot be served: the ack gives the position now, and live ones follow.
    let mut third = Client::connect(cluster.edge_addr(1)).await?;
    let (recovered, position) = third.subscribe_from(topic, epoch + 1000, 3).await?;
    ensure!(!recovered, "another epoch is not recovered");
    ensure!(position == Some((epoch, last + 105)), "{position:?}");
    publish(&mut d, topic, 115).await?;
    let live = deliveries(&mut third, topic, 1).await?;
    ensure!(live[0].1 == last + 106, "{live:?}");

    // History over gRPC, through a distributor that may not own the topic.
    for id in [1, 2] {
        let mut d = cluster.distributor(id).await?;
        let h = d
            .history(dpb::HistoryRequest {
                topic: topic.into(),
                since: Some(dpb::StreamPosition { epoch, seq: last }),
                limit: 3,
                forwarded: false,
            })
            .await?
            .into_inner();
        ensure!(h.recovered, "distributor {id}: {h:?}");
        let seqs: Vec<u64> = h.messages.iter().map(|m| m.seq).collect();
        ensure!(seqs == vec![last + 1, last + 2, last + 3], "{seqs:?}");
        ensure!(
            h.current
                == Some(dpb::StreamPosition {
                    epoch,
                    seq: last + 106
                }),
            "{h:?}"
        );
    }
    // And from the command line.
    let cli = |since: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_firetower"))
            .args(["history", "--distributor", &cluster.distributors[&2].addr])
            .args(["--topic", topic, "--since", &since, "--limit", "2"])
            .arg("--ca-file")
            .arg(cluster.ca_file())
            .output()
    };
    let out = cli(format!("{epoch}:{last}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!(
        "epoch={epoch} seq={} data={{\"n\":10}}\nepoch={epoch} seq={} data={{\"n\":11}}\ncurrent epoch={epoch} seq={}\n",
        last + 1,
        last + 2,
        last + 106
    );
    ensure!(text == expected, "{text}");
    let out = cli(format!("{}:0", epoch + 1000))?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("it is at {epoch}:{}", last + 106)),
        "{out:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_loses_its_history_and_clients_are_told() -> Result<()> {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = Cluster::start(2, 1).await?;
    cluster.wait_ready(READY).await?;
    // A topic distributor 2 owns, published through distributor 1 (ownership asked as a
    // fellow distributor: the owner-only form is theirs).
    let mut d1 = cluster.distributor_as_peer(1).await?;
    let mut topic = None;
    for i in 0..200 {
        let t = format!("recover-{i}");
        let mine = d1
            .topic_status(dpb::TopicStatusRequest {
                topic: t.clone(),
                owner_only: true,
            })
            .await;
        if mine.is_err() {
            topic = Some(t);
            break;
        }
    }
    let Some(topic) = topic else {
        bail!("no topic owned by distributor 2 among 200");
    };
    let mut client = Client::connect(cluster.edge_addr(1)).await?;
    client.subscribe(std::slice::from_ref(&topic)).await?;
    let (epoch, seq) = publish(&mut d1, &topic, 0).await?;
    deliveries(&mut client, &topic, 1).await?;
    client.close().await;

    if let Some(node) = cluster.distributors.get_mut(&2) {
        node.kill();
    }
    cluster
        .wait_slots_only_on(1, Duration::from_secs(30))
        .await?;
    let mut again = Client::connect(cluster.edge_addr(1)).await?;
    let (recovered, position) = again.subscribe_from(&topic, epoch, seq).await?;
    ensure!(!recovered, "the history died with its owner");
    match position {
        Some((e, s)) => ensure!(e != epoch && s == 0, "a new epoch starts: {position:?}"),
        None => bail!("the new owner gives its position"),
    }
    cluster.shutdown().await;
    Ok(())
}

/// A distributor joins and takes slots by rebalancing: their topics' streams move with
/// their history (same epoch, next seq), so a client that reconnects with a position from
/// before the move recovers across it, and a client that stayed sees no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_a_joining_distributor_keeps_its_streams_and_history() -> Result<()> {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = Cluster::start(1, 2).await?;
    cluster.wait_ready(READY).await?;
    let topics: Vec<String> = (0..24).map(|i| format!("moving-{i}")).collect();
    let mut d = cluster.distributor(1).await?;
    let mut stayer = Client::connect(cluster.edge_addr(1)).await?;
    stayer.subscribe(&topics).await?;
    let mut before = std::collections::BTreeMap::new();
    for topic in &topics {
        for n in 0..5 {
            before.insert(topic.clone(), publish(&mut d, topic, n).await?);
        }
    }
    // Distributor 2 joins: the metastore gives it about half of the slots. A slot whose
    // handover has not been answered within the newcomer's lease TTL starts a new stream
    // (docs/protocol.md §5.11); a longer TTL gives the handover room on a machine busy with
    // other tests (with 1.5 s it missed once while the whole suite ran).
    cluster.distributor_lease_ttl_ms = 6000;
    cluster.start_distributor(2)?;
    let meta = firetower_net::MetaClient::new(
        cluster.metastore.clone(),
        cluster.connector()?,
        Duration::from_secs(2),
    );
    let deadline = tokio::time::Instant::now() + READY;
    let moved: Vec<String> = loop {
        let map = meta.get_slot_map(true).await?;
        let moved: Vec<String> = topics
            .iter()
            .filter(|t| map.slot_owner.get(firetower_proto::slot_of(t) as usize) == Some(&2))
            .cloned()
            .collect();
        if !moved.is_empty() {
            break moved;
        }
        ensure!(tokio::time::Instant::now() < deadline, "no slot moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Published through distributor 1, sequenced by 2: the same stream goes on.
    for topic in &moved {
        let (epoch, seq) = before[topic];
        for n in 5..10 {
            let at = publish(&mut d, topic, n).await?;
            ensure!(
                at == (epoch, seq + n - 4),
                "{topic} #{n} at {at:?} after {:?}",
                (epoch, seq)
            );
        }
    }
    // A client with a position from before the move recovers across it, on the other edge.
    let topic = &moved[0];
    let (epoch, seq) = before[topic];
    let mut returner = Client::connect(cluster.edge_addr(2)).await?;
    let (recovered, position) = returner.subscribe_from(topic, epoch, seq - 3).await?;
    ensure!(recovered && position.is_none(), "{recovered} {position:?}");
    let got = deliveries(&mut returner, topic, 8).await?;
    ensure!(
        got.iter()
            .map(|g| (g.0, g.1))
            .eq((seq - 2..=seq + 5).map(|s| (epoch, s))),
        "{got:?}"
    );
    // The client that stayed got every message of every topic once, in order.
    let mut per_topic: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let expected = topics.len() * 5 + moved.len() * 5;
    let mut seen = 0;
    while seen < expected {
        match stayer.next_frame(Duration::from_secs(10)).await? {
            Some(Frame::Publish { topic, data, .. }) => {
                let v: serde_json::Value = serde_json::from_str(&data)?;
                per_topic
                    .entry(topic)
                    .or_default()
                    .push(v["n"].as_u64().unwrap_or(u64::MAX));
                seen += 1;
            }
            other => bail!("after {seen} deliveries: {other:?}; moved {moved:?}; {per_topic:?}"),
        }
    }
    for topic in &topics {
        let n = if moved.contains(topic) { 10 } else { 5 };
        ensure!(
            per_topic
                .get(topic)
                .is_some_and(|got| got.iter().copied().eq(0..n)),
            "{topic}: {:?}",
            per_topic.get(topic)
        );
    }
    cluster.shutdown().await;
    Ok(())
}

/// A split topic keeps one numbering, its owner's: a client that last saw the topic plain
/// reconnects, after the topic was split and 100 messages were published, to the other edge
/// with its position, and gets exactly those 100, with the positions their publishers were
/// given, then the live ones; History serves the split topic too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_across_a_hot_topic_split() -> Result<()> {
    let _one = ONE_CLUSTER.lock().await;
    let cluster = Cluster::start(2, 2).await?;
    cluster.wait_ready(READY).await?;
    let topic = "recover-hot";
    let mut d = cluster.distributor(1).await?;

    let mut first = Client::connect(cluster.edge_addr(1)).await?;
    first.subscribe(&[topic.to_string()]).await?;
    let mut positions = Vec::new();
    for n in 0..10 {
        positions.push(publish(&mut d, topic, n).await?);
    }
    let seen = deliveries(&mut first, topic, 10).await?;
    ensure!(
        seen.iter()
            .map(|s| (s.0, s.1))
            .eq(positions.iter().copied()),
        "plain: {seen:?} {positions:?}"
    );
    let (epoch, last) = (seen[9].0, seen[9].1);
    first.close().await;

    // Split into 4 sub-topics, committed (every edge joined the route).
    let meta = firetower_net::MetaClient::new(
        cluster.metastore.clone(),
        cluster.connector()?,
        Duration::from_secs(2),
    );
    meta.set_hot_topic(topic.to_string(), 4).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let map = meta.get_slot_map(true).await?;
        if map
            .hot_topics
            .iter()
            .any(|h| h.topic == topic && h.shards == 4 && h.committed)
        {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "no commit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut missed = Vec::new();
    for n in 10..110 {
        missed.push(publish(&mut d, topic, n).await?);
    }
    ensure!(
        missed[0] == (epoch, last + 1) && missed[99] == (epoch, last + 100),
        "the split continues the topic's numbering: {:?} .. {:?}",
        missed[0],
        missed[99]
    );

    let mut second = Client::connect(cluster.edge_addr(2)).await?;
    let (recovered, position) = second.subscribe_from(topic, epoch, last).await?;
    ensure!(recovered && position.is_none(), "{recovered} {position:?}");
    let got = deliveries(&mut second, topic, 100).await?;
    for (i, (e, s, data)) in got.iter().enumerate() {
        ensure!((*e, *s) == missed[i], "delivery {i}: {:?}", (e, s));
        ensure!(
            *data == format!(r#"{{"n":{}}}"#, 10 + i),
            "delivery {i}: {data}"
        );
    }
    for n in 110..115 {
        publish(&mut d, topic, n).await?;
    }
    let live = deliveries(&mut second, topic, 5).await?;
    ensure!(
        live.iter()
            .map(|l| (l.1, l.2.clone()))
            .eq((110..115).map(|n| (last + n - 9, format!(r#"{{"n":{n}}}"#)))),
        "live, with no gap or duplicate at the seam: {live:?}"
    );
    ensure!(
        second
            .next_frame(Duration::from_millis(300))
            .await?
            .is_none(),
        "nothing more"
    );
    let h = d
        .history(dpb::HistoryRequest {
            topic: topic.into(),
            since: Some(dpb::StreamPosition { epoch, seq: last }),
            limit: 2,
            forwarded: false,
        })
        .await?
        .into_inner();
    ensure!(h.recovered, "{h:?}");
    let seqs: Vec<u64> = h.messages.iter().map(|m| m.seq).collect();
    ensure!(seqs == vec![last + 1, last + 2], "{seqs:?}");
    cluster.shutdown().await;
    Ok(())
}
