//! The Rust client (`firetower-client`) against a real cluster: a subscriber on two edges
//! loses its edge (drained and stopped) while a publisher goes on, reconnects to the other
//! edge and recovers exactly what it missed, then receives live messages; its own publish
//! over the WebSocket is answered with the position it is delivered at.

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use common::Cluster;
use firetower_client::{Event, Publisher, PublisherConfig, Subscriber, SubscriberConfig};

const READY: Duration = Duration::from_secs(30);

async fn next(sub: &mut Subscriber) -> Result<Event> {
    match tokio::time::timeout(Duration::from_secs(15), sub.next_event()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("the subscriber stopped"),
        Err(_) => bail!("no event within 15 s"),
    }
}

/// The next event that is not a connection change or an ack.
async fn next_message(sub: &mut Subscriber) -> Result<(String, String)> {
    loop {
        match next(sub).await? {
            Event::Message { topic, data, .. } => return Ok((topic, data)),
            Event::Error { code, message, .. } => bail!("error {code}: {message}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_moves_to_the_other_edge_and_recovers_what_it_missed() -> Result<()> {
    let mut cluster = Cluster::start(1, 2).await?;
    cluster.wait_ready(READY).await?;
    let publisher = Publisher::new(&PublisherConfig {
        distributor: cluster.distributors[&1].addr.clone(),
        ca_file: Some(cluster.ca_file()),
        api_key: None,
    })?;
    let urls = [1, 2].map(|e| format!("ws://{}/ws", cluster.edge_addr(e)));
    // A backoff of 2–4 s: messages published once it noticed the loss of its edge come
    // before it reconnects, so they are recovered, not received live.
    let mut sub = Subscriber::start(SubscriberConfig {
        urls: urls.to_vec(),
        min_backoff: Duration::from_secs(4),
        ..SubscriberConfig::default()
    })?;
    sub.subscribe("rust/t").await?;
    loop {
        if let Event::Subscribed { topic, .. } = next(&mut sub).await? {
            ensure!(topic == "rust/t");
            break;
        }
    }
    for n in 0..3 {
        publisher.publish("rust/t", &n.to_string()).await?;
    }
    for n in 0..3 {
        ensure!(next_message(&mut sub).await? == ("rust/t".into(), n.to_string()));
    }
    // Edge 1 stops (it drains: close 1001); five messages are published meanwhile.
    let Some(mut edge1) = cluster.edges.remove(&1) else {
        bail!("no edge 1");
    };
    let stopped = tokio::spawn(async move {
        edge1.stop().await;
        edge1
    });
    loop {
        if let Event::Disconnected { .. } = next(&mut sub).await? {
            break;
        }
    }
    for n in 3..8 {
        publisher.publish("rust/t", &n.to_string()).await?;
    }
    // It reconnects to edge 2, recovers 3..8, then gets live ones.
    let recovered = loop {
        match next(&mut sub).await? {
            Event::Subscribed {
                topic, recovered, ..
            } if topic == "rust/t" => break recovered,
            Event::Message { data, .. } => bail!("a message {data} before the resubscribe"),
            _ => {}
        }
    };
    ensure!(recovered == Some(true), "recovered: {recovered:?}");
    for n in 3..8 {
        ensure!(next_message(&mut sub).await? == ("rust/t".into(), n.to_string()));
    }
    publisher.publish("rust/t", "8").await?;
    ensure!(next_message(&mut sub).await? == ("rust/t".into(), "8".into()));
    // Its own publish over the WebSocket: answered with the position it is delivered at.
    let id = sub.publish("rust/t", r#"{"from":"sub"}"#).await?;
    let (mut answered, mut echoed) = (None, None);
    while answered.is_none() || echoed.is_none() {
        match next(&mut sub).await? {
            Event::Published {
                id: got, position, ..
            } if got == id => answered = Some(position),
            Event::Message { data, position, .. } => {
                ensure!(data == r#"{"from":"sub"}"#, "{data}");
                echoed = Some(position);
            }
            Event::Error { code, message, .. } => bail!("publish refused: {code}: {message}"),
            _ => {}
        }
    }
    ensure!(
        answered == echoed,
        "answered {answered:?}, delivered {echoed:?}"
    );
    drop(stopped.await?);
    Ok(())
}
