//! One publisher's order, end to end with real sockets: many messages in flight on one
//! PublishStream, to topics owned by the distributor it talks to and by others, arrive at
//! every subscriber once each and in stream order.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use common::{Client, Cluster, Frame};
use firetower_proto::distributor::v1 as dpb;

const READY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_keeps_stream_order_on_owned_and_forwarded_topics() -> Result<()> {
    let cluster = Cluster::start(3, 2).await?;
    cluster.wait_ready(READY).await?;
    // Three topics distributor 1 owns (sequenced inline) and three it forwards (asked as
    // a fellow distributor: the owner-only form is theirs).
    let mut d1 = cluster.distributor_as_peer(1).await?;
    let (mut owned, mut forwarded) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let topic = format!("stream-{i}");
        let status = d1
            .topic_status(dpb::TopicStatusRequest {
                topic: topic.clone(),
                owner_only: true,
            })
            .await;
        let list = if status.is_ok() {
            &mut owned
        } else {
            &mut forwarded
        };
        if list.len() < 3 {
            list.push(topic);
        }
    }
    ensure!(
        owned.len() == 3 && forwarded.len() == 3,
        "{owned:?} {forwarded:?}"
    );
    let topics: Vec<String> = owned.into_iter().chain(forwarded).collect();
    let mut readers = Vec::new();
    for c in 0..4u64 {
        let mut client = Client::connect(cluster.edge_addr(1 + c % 2)).await?;
        client.subscribe(&topics).await?;
        readers.push(client.spawn_reader());
    }
    let total = 3000u64;
    let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
    let requests: Vec<dpb::PublishStreamRequest> = (0..total)
        .map(|id| {
            let topic = topics[(id * 5 % 6) as usize].clone();
            let n = per_topic.entry(topic.clone()).or_default();
            let data = format!(r#"{{"n":{n}}}"#);
            *n += 1;
            dpb::PublishStreamRequest {
                id,
                topic,
                data: data.into(),
            }
        })
        .collect();
    let mut replies = d1
        .publish_stream(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut positions = BTreeMap::new();
    while let Some(reply) = replies.message().await? {
        match reply.result {
            Some(dpb::publish_stream_reply::Result::Position(p)) => {
                ensure!(
                    positions.insert(reply.id, (p.epoch, p.seq)).is_none(),
                    "message {} answered twice",
                    reply.id
                );
            }
            other => bail!("message {}: {other:?}", reply.id),
        }
    }
    ensure!(
        positions.len() as u64 == total,
        "{} answers",
        positions.len()
    );
    for (c, (mut rx, _)) in readers.into_iter().enumerate() {
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for _ in 0..total {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(Frame::Publish { topic, data, .. })) => {
                    let v: serde_json::Value = serde_json::from_str(&data)?;
                    let n = v["n"].as_u64().unwrap_or(u64::MAX);
                    got.entry(topic).or_default().push(n);
                }
                other => bail!("client {c}: {other:?} after {got:?}"),
            }
        }
        for (topic, ns) in &got {
            let want: Vec<u64> = (0..per_topic[topic]).collect();
            ensure!(*ns == want, "client {c}, {topic}: got {ns:?}");
        }
    }
    cluster.shutdown().await;
    Ok(())
}
