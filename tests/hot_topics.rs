//! Hot topics end to end with real sockets: a topic split into sub-topics over 3
//! distributors and 2 edges, and splits and merges while a publisher keeps publishing.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{Client, Cluster, Frame};
use firetower_net::{MetaClient, TcpConnector};
use firetower_proto::distributor::v1 as dpb;
use firetower_proto::distributor::v1::distributor_client::DistributorClient;
use firetower_proto::metastore::v1 as pb;
use tokio::sync::mpsc;

const READY: Duration = Duration::from_secs(30);

/// One cluster at a time: two whole clusters on a 2-core machine starve each other's
/// lease heartbeats, and a distributor whose lease lapses moves slots mid-test (slot moves
/// are not loss-free; see docs/architecture.md).
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn meta(cluster: &Cluster) -> Result<MetaClient<TcpConnector>> {
    Ok(MetaClient::new(
        cluster.metastore.clone(),
        cluster.connector()?,
        Duration::from_secs(2),
    ))
}

/// Waits until the metastore shows `topic` with `shards` sub-topics, committed (every edge
/// joined the route).
async fn wait_committed(
    meta: &MetaClient<TcpConnector>,
    topic: &str,
    shards: u32,
) -> Result<pb::HotTopic> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let map = meta.get_slot_map(true).await?;
        if let Some(hot) = map.hot_topics.iter().find(|h| h.topic == topic) {
            if hot.shards == shards && hot.committed {
                return Ok(hot.clone());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{topic} never committed with {shards} shards: {:?}",
                map.hot_topics
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every distributor in `clients` routes `topic` over `shards` sub-topics:
/// the metastore commits a split once the edges joined it, and each distributor learns it
/// from its own watch stream a moment later.
async fn wait_distributors_split(
    clients: &mut [DistributorClient<firetower_net::KeyedChannel>],
    topic: &str,
    shards: usize,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for client in clients.iter_mut() {
        loop {
            let status = client
                .topic_status(dpb::TopicStatusRequest {
                    topic: topic.to_string(),
                    owner_only: false,
                })
                .await?
                .into_inner();
            if status.shards.len() == shards {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "a distributor never routed {topic} over {shards} sub-topics: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// One counter from an edge's `/metrics`.
async fn edge_metric(addr: &str, name: &str) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let key = format!("firetower_edge_{name}_total{{");
    let line = body
        .lines()
        .find(|l| l.starts_with(&key))
        .with_context(|| format!("{name} not in /metrics"))?;
    Ok(line.rsplit(' ').next().context("value")?.parse()?)
}

/// `n` clients subscribed to `topic`, alternating between edges 1 and 2, each read in the
/// background.
async fn subscribers(cluster: &Cluster, topic: &str, n: usize) -> Result<Vec<Reader>> {
    let mut readers = Vec::new();
    for c in 0..n {
        let mut client = Client::connect(cluster.edge_addr(1 + (c % 2) as u64)).await?;
        client.subscribe(&[topic.to_string()]).await?;
        readers.push(client.spawn_reader());
    }
    Ok(readers)
}

type Reader = (
    mpsc::UnboundedReceiver<Frame>,
    tokio::task::JoinHandle<Client>,
);

/// Publishes message `n` (`{"n":n}`) of `topic` through `client`.
async fn publish_n(
    client: &mut DistributorClient<firetower_net::KeyedChannel>,
    topic: &str,
    n: u64,
) -> Result<dpb::PublishReply> {
    Ok(client
        .publish(dpb::PublishRequest {
            topic: topic.to_string(),
            data: format!(r#"{{"n":{n}}}"#).into(),
        })
        .await?
        .into_inner())
}

/// What one client received: message number → (epoch, seq), in arrival order.
type Received = Vec<(u64, u64, u64)>;

/// Reads a client's deliveries of `topic` until `expected` messages or a quiet period.
async fn collect(
    c: usize,
    rx: &mut mpsc::UnboundedReceiver<Frame>,
    topic: &str,
    expected: usize,
) -> Result<Received> {
    let mut got = Vec::new();
    while got.len() < expected {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(Frame::Publish {
                topic: t,
                data,
                epoch,
                seq,
            })) => {
                ensure!(t == topic, "client {c}: delivery with topic {t:?}");
                let v: serde_json::Value = serde_json::from_str(&data)?;
                let n = v["n"].as_u64().context("n")?;
                got.push((n, epoch, seq));
            }
            Ok(Some(other)) => bail!("client {c}: unexpected frame {other:?}"),
            Ok(None) => bail!("client {c}: connection ended after {}", got.len()),
            Err(_) => break,
        }
    }
    Ok(got)
}

/// Every number in `published` exactly once, in publish order, with `(epoch, seq)`
/// strictly increasing.
fn check_exactly_once_in_order(c: usize, got: &Received, published: &[u64]) -> Result<()> {
    let numbers: Vec<u64> = got.iter().map(|(n, _, _)| *n).collect();
    if numbers != published {
        let mut seen = BTreeMap::new();
        for n in &numbers {
            *seen.entry(*n).or_insert(0) += 1;
        }
        let missing: Vec<u64> = published
            .iter()
            .filter(|n| !seen.contains_key(*n))
            .copied()
            .collect();
        let doubled: Vec<u64> = seen
            .iter()
            .filter(|(_, k)| **k > 1)
            .map(|(n, _)| *n)
            .collect();
        bail!(
            "client {c}: got {} of {} messages; missing {:?}; twice {:?}; first out of order at {:?}",
            numbers.len(),
            published.len(),
            &missing[..missing.len().min(20)],
            &doubled[..doubled.len().min(20)],
            numbers.windows(2).position(|w| w[0] >= w[1])
        );
    }
    for w in got.windows(2) {
        ensure!(
            (w[0].1, w[0].2) < (w[1].1, w[1].2),
            "client {c}: ({}, {}) then ({}, {})",
            w[0].1,
            w[0].2,
            w[1].1,
            w[1].2
        );
    }
    Ok(())
}

/// A topic split 8 ways over 3 distributors and 2 edges: every subscriber gets every
/// message once and in order; TopicStatus sums the sub-topics; the sub-topics' work is
/// spread over the distributors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_topic_delivers_once_and_spreads_its_work() -> Result<()> {
    let _one = ONE_CLUSTER.lock().await;
    let cluster = Cluster::start(3, 2).await?;
    cluster.wait_ready(READY).await?;
    let topic = "arena";
    let meta = meta(&cluster)?;
    let mut readers = subscribers(&cluster, topic, 20).await?;
    meta.set_hot_topic(topic.to_string(), 8).await?;
    let hot = wait_committed(&meta, topic, 8).await?;
    ensure!(hot.prev_shards == 0);

    let mut clients = Vec::new();
    for id in 1..=3 {
        clients.push(cluster.distributor(id).await?);
    }
    wait_distributors_split(&mut clients, topic, 8).await?;
    let published: Vec<u64> = (0..300).collect();
    for &n in &published {
        let reply = publish_n(&mut clients[(n % 3) as usize], topic, n).await?;
        ensure!(
            reply.shards == 8,
            "publish {n} went to {} shards",
            reply.shards
        );
    }
    for (c, (rx, _)) in readers.iter_mut().enumerate() {
        let got = collect(c, rx, topic, published.len()).await?;
        check_exactly_once_in_order(c, &got, &published)?;
    }

    let status = clients[0]
        .topic_status(dpb::TopicStatusRequest {
            topic: topic.to_string(),
            owner_only: false,
        })
        .await?
        .into_inner();
    ensure!(status.subscribers == 20, "TopicStatus: {status:?}");
    ensure!(status.edge_ids == vec![1, 2], "TopicStatus: {status:?}");
    ensure!(status.shards.len() == 8, "TopicStatus: {status:?}");
    // Each sub-topic sequenced every message once, on its owner.
    let mut per_owner: BTreeMap<u64, u64> = BTreeMap::new();
    for shard in &status.shards {
        ensure!(shard.sequenced == 300, "shard {shard:?}");
        *per_owner.entry(shard.owner).or_default() += shard.sequenced;
    }
    let total: u64 = per_owner.values().sum();
    let even = total as f64 / 3.0;
    eprintln!("sub-topic messages sequenced per distributor: {per_owner:?} (even share {even:.0})");
    ensure!(
        per_owner.len() == 3,
        "every distributor owns a shard: {per_owner:?}"
    );
    for (owner, n) in &per_owner {
        let n = *n as f64;
        ensure!(
            n >= even / 2.0 && n <= even * 2.0,
            "distributor {owner} did {n} of {total}: not within 2x of {even:.0}"
        );
    }
    // Each edge receives one sub-topic: the relay to edges is one copy per edge.
    let relayed: u64 = status.shards.iter().map(|s| s.relayed).sum();
    ensure!(
        relayed == 600,
        "relayed {relayed}, expected 300 messages x 2 edges"
    );
    cluster.shutdown().await;
    Ok(())
}

/// One WebSocket client publishes to a topic split 8 ways as fast as it can write: every
/// subscriber, on both edges, gets every message once and in the order it was published
/// (the client publishes go through the plain topic's owner, which forwards each
/// sub-topic's copy in one ordered group per step, never one task per message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_publisher_to_a_split_topic_keeps_its_order() -> Result<()> {
    let _one = ONE_CLUSTER.lock().await;
    let cluster = Cluster::start(3, 2).await?;
    cluster.wait_ready(READY).await?;
    let topic = "arena-ws";
    let meta = meta(&cluster)?;
    let mut readers = subscribers(&cluster, topic, 6).await?;
    meta.set_hot_topic(topic.to_string(), 8).await?;
    wait_committed(&meta, topic, 8).await?;
    let mut clients = Vec::new();
    for id in 1..=3 {
        clients.push(cluster.distributor(id).await?);
    }
    wait_distributors_split(&mut clients, topic, 8).await?;
    let mut publisher = Client::connect(cluster.edge_addr(1)).await?;
    let published: Vec<u64> = (0..1000).collect();
    for n in &published {
        publisher
            .send(&format!(
                r#"{{"type":"publish","topic":"{topic}","data":{{"n":{n}}}}}"#
            ))
            .await?;
    }
    let (mut answers, _) = publisher.spawn_reader();
    for (c, (rx, _)) in readers.iter_mut().enumerate() {
        let got = collect(c, rx, topic, published.len()).await?;
        if let Err(e) = check_exactly_once_in_order(c, &got, &published) {
            let mut frames = Vec::new();
            while let Ok(f) = answers.try_recv() {
                frames.push(f);
            }
            bail!("{e}; the publisher got {frames:?}");
        }
    }
    cluster.shutdown().await;
    Ok(())
}

/// Split, re-split and merge a topic while a publisher keeps publishing through all three
/// distributors: every subscriber gets every message once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_while_publishing_lose_nothing() -> Result<()> {
    let _one = ONE_CLUSTER.lock().await;
    let cluster = Cluster::start(3, 2).await?;
    cluster.wait_ready(READY).await?;
    let topic = "live";
    let meta = meta(&cluster)?;
    let mut readers = subscribers(&cluster, topic, 10).await?;
    let mut clients = Vec::new();
    for id in 1..=3 {
        clients.push(cluster.distributor(id).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = {
        let stop = stop.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut published = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                publish_n(&mut clients[(n % 3) as usize], topic, n)
                    .await
                    .with_context(|| format!("publish {n}"))?;
                published.push(n);
                n += 1;
                progress.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(published)
        })
    };
    let pause = Duration::from_millis(300);
    tokio::time::sleep(pause).await;
    for shards in [4u32, 8, 3] {
        eprintln!(
            "split into {shards} at message {}",
            progress.load(Ordering::Relaxed)
        );
        meta.set_hot_topic(topic.to_string(), shards).await?;
        wait_committed(&meta, topic, shards).await?;
        eprintln!("committed at message {}", progress.load(Ordering::Relaxed));
        tokio::time::sleep(pause).await;
    }
    eprintln!("merge at message {}", progress.load(Ordering::Relaxed));
    meta.clear_hot_topic(topic.to_string()).await?;
    // A merge is carried by the topic's one sub-topic `T#0`.
    wait_committed(&meta, topic, 1).await?;
    eprintln!("committed at message {}", progress.load(Ordering::Relaxed));
    tokio::time::sleep(pause).await;
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await??;
    ensure!(published.len() > 100, "only {} published", published.len());
    let mut failures = Vec::new();
    for (c, (rx, _)) in readers.iter_mut().enumerate() {
        let got = collect(c, rx, topic, published.len()).await?;
        if let Err(e) = check_exactly_once_in_order(c, &got, &published) {
            failures.push(format!("edge {}: {e}", 1 + c % 2));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    // Every edge changed route (up to four times: fewer where its sub-topic stayed the
    // same across a change), and none was forced through.
    for edge in [1u64, 2] {
        let switches = edge_metric(cluster.edge_addr(edge), "route_switches").await?;
        let forced = edge_metric(cluster.edge_addr(edge), "forced_switches").await?;
        ensure!(
            switches >= 1 && forced == 0,
            "edge {edge}: {switches} route switches, {forced} forced"
        );
    }
    cluster.shutdown().await;
    Ok(())
}

/// The owner splits a topic on its own when its relay load stays high, and merges it back
/// when the load stays low; subscribers get every message once and in order throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_splits_a_topic_and_quiet_merges_it() -> Result<()> {
    let _one = ONE_CLUSTER.lock().await;
    let tuning = common::EdgeTuning {
        hot: firetower_distributor::config::HotPolicy {
            enabled: true,
            // Up to about 100 messages/s to 2 edges is 200 deliveries/s: well above 60,
            // even when a busy machine slows the publisher to a third.
            split_load: 60,
            merge_load: 20,
            window_ms: 300,
            windows: 3,
            max_shards: 4,
        },
        ..common::EdgeTuning::default()
    };
    let cluster = Cluster::start_with(2, 2, tuning).await?;
    cluster.wait_ready(READY).await?;
    let topic = "surge";
    let meta = meta(&cluster)?;
    let mut readers = subscribers(&cluster, topic, 6).await?;
    let mut d1 = cluster.distributor(1).await?;
    let mut published = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0u64;
    let split = loop {
        publish_n(&mut d1, topic, n).await?;
        published.push(n);
        n += 1;
        if n.is_multiple_of(20) {
            let map = meta.get_slot_map(false).await?;
            if let Some(hot) = map.hot_topics.iter().find(|h| h.topic == topic) {
                if hot.committed && hot.shards > 1 {
                    break hot.clone();
                }
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no split within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(8)).await;
    };
    ensure!(split.shards >= 2 && split.shards <= 4, "{split:?}");
    eprintln!("split into {} after {n} messages", split.shards);
    // A trickle: 2 messages/s to 2 edges is 4 deliveries/s, below 20.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        publish_n(&mut d1, topic, n).await?;
        published.push(n);
        n += 1;
        let map = meta.get_slot_map(false).await?;
        if map
            .hot_topics
            .iter()
            .any(|h| h.topic == topic && h.shards == 1 && h.committed)
        {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no merge within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("merged after {n} messages");
    for _ in 0..5 {
        publish_n(&mut d1, topic, n).await?;
        published.push(n);
        n += 1;
    }
    for (c, (rx, _)) in readers.iter_mut().enumerate() {
        let got = collect(c, rx, topic, published.len()).await?;
        check_exactly_once_in_order(c, &got, &published)?;
    }
    cluster.shutdown().await;
    Ok(())
}
