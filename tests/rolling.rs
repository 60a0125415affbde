//! A rolling restart under steady load (issue 16): every node of a running cluster of real
//! processes (3 metastore nodes, 2 distributors, 2 edges, from config files) is stopped with
//! SIGTERM and started again, one by one, while a publisher keeps publishing and
//! subscribers (the Rust client library) keep reading. A distributor drains before it
//! exits (its slots and their history go to the other), an edge closes its clients with
//! 1001 and they reconnect to the other edge with their positions. Every message the
//! publisher got a position for reaches every subscriber exactly once, in order, and no
//! recovery fails.

// Real processes in real time: this test is a shell, outside the simulated world.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use firetower_client::{Event, Publisher, Subscriber, SubscriberConfig};
use firetower_proto::client::StreamPos;

mod procs;
use procs::ProcCluster;

const TOPICS: usize = 8;
const SUBSCRIBERS: usize = 4;

/// What one subscriber saw.
#[derive(Default, Debug)]
struct Seen {
    /// topic → (position, data) in arrival order.
    messages: BTreeMap<String, Vec<(StreamPos, String)>>,
    /// Recoveries that failed: (topic, position given).
    failed_recoveries: Vec<(String, Option<StreamPos>)>,
    reconnects: u32,
}

#[test]
fn every_node_restarts_one_by_one_under_load_and_no_message_is_lost() -> Result<()> {
    let mut cluster = ProcCluster::start(2, 2, 20)?;
    let status = cluster.wait_ready(Duration::from_secs(60))?;
    let term_before = status["term"].as_u64().context("term")?;
    let token = cluster.token("rolling")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // Subscribers: each knows both edges (in another order), all subscribed to every topic.
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("roll/{i}")).collect();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..SUBSCRIBERS).map(|_| Arc::default()).collect();
    let subscribed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (i, seen) in seen.iter().enumerate() {
        let mut urls = vec![cluster.ws_url(1, &token), cluster.ws_url(2, &token)];
        if i % 2 == 1 {
            urls.reverse();
        }
        let topics = topics.clone();
        let seen = seen.clone();
        let subscribed = subscribed.clone();
        runtime.spawn(async move {
            let Ok(mut subscriber) = Subscriber::start(SubscriberConfig {
                urls,
                min_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                ..SubscriberConfig::default()
            }) else {
                return;
            };
            for topic in &topics {
                if subscriber.subscribe(topic).await.is_err() {
                    return;
                }
            }
            while let Some(event) = subscriber.next_event().await {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    Event::Message {
                        topic,
                        data,
                        position,
                    } => seen
                        .messages
                        .entry(topic)
                        .or_default()
                        .push((position, data)),
                    Event::Subscribed {
                        topic,
                        recovered: Some(false),
                        position,
                    } => seen.failed_recoveries.push((topic, position)),
                    Event::Subscribed {
                        recovered: None, ..
                    } => {
                        subscribed.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Disconnected { .. } => seen.reconnects += 1,
                    _ => {}
                }
            }
        });
    }
    procs::wait_until(Duration::from_secs(30), || {
        (subscribed.load(Ordering::Relaxed) >= SUBSCRIBERS * TOPICS).then_some(())
    })
    .context("the subscribers did not all subscribe")?;

    // The publisher: one message every 10 ms, round robin over the topics, through either
    // distributor (the other one when a call fails). Only answered positions count.
    let acked: Arc<Mutex<Vec<(String, StreamPos, String)>>> = Arc::default();
    let failed_calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Channels are made inside the runtime (they connect on first use).
    let _runtime_context = runtime.enter();
    let publishers: Vec<Publisher> = (1..=2)
        .map(|id| {
            Publisher::with_tls(
                &cluster.grpc_addr(id),
                Some(firetower_net::ClientTls::trusting(std::path::Path::new(
                    &cluster.secret("tls/ca.crt"),
                ))?),
                firetower_net::ApiKey::from_file(
                    "api key",
                    std::path::Path::new(&cluster.secret("auth/api.key")),
                )?,
            )
            .map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    let publisher = {
        let (acked, failed_calls, stop, topics) = (
            acked.clone(),
            failed_calls.clone(),
            stop.clone(),
            topics.clone(),
        );
        runtime.spawn(async move {
            let mut n = 0u64;
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                let topic = &topics[n as usize % TOPICS];
                let data = format!("\"m{n}\"");
                let publisher = &publishers[(n / 50) as usize % 2];
                let call =
                    tokio::time::timeout(Duration::from_secs(5), publisher.publish(topic, &data))
                        .await;
                match call {
                    Ok(Ok(position)) => acked.lock().unwrap_or_else(|p| p.into_inner()).push((
                        topic.clone(),
                        position,
                        data,
                    )),
                    _ => {
                        failed_calls.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        })
    };

    // Restart every node, one at a time, with load running in between.
    let order = [
        "meta-1", "meta-2", "meta-3", "dist-1", "dist-2", "edge-1", "edge-2",
    ];
    for name in order {
        std::thread::sleep(Duration::from_secs(2));
        let before = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
        let exit = cluster.terminate(name, Duration::from_secs(30))?;
        anyhow::ensure!(
            exit.success(),
            "{name} exited with {exit} after SIGTERM:\n{}",
            cluster.logs()
        );
        cluster.start_node(name)?;
        cluster
            .wait_ready(Duration::from_secs(60))
            .with_context(|| format!("the cluster after restarting {name}"))?;
        // Load went on across the restart.
        procs::wait_until(Duration::from_secs(20), || {
            (acked.lock().unwrap_or_else(|p| p.into_inner()).len() > before + 50).then_some(())
        })
        .with_context(|| format!("no publishes answered after restarting {name}"))?;
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(publisher)?;
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    anyhow::ensure!(acked.len() > 500, "too little load: {}", acked.len());

    // Every answered message reaches every subscriber.
    let expected: BTreeMap<&str, BTreeSet<&str>> =
        acked
            .iter()
            .fold(BTreeMap::new(), |mut m, (topic, _, data)| {
                m.entry(topic.as_str()).or_default().insert(data.as_str());
                m
            });
    let complete = procs::wait_until(Duration::from_secs(30), || {
        seen.iter()
            .all(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                expected.iter().all(|(topic, datas)| {
                    let got: BTreeSet<&str> = s
                        .messages
                        .get(*topic)
                        .map(|m| m.iter().map(|(_, d)| d.as_str()).collect())
                        .unwrap_or_default();
                    datas.is_subset(&got)
                })
            })
            .then_some(())
    });
    let mut report = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing = 0;
        let mut out_of_order = 0;
        for (topic, datas) in &expected {
            let got = s.messages.get(*topic).cloned().unwrap_or_default();
            let have: BTreeSet<&str> = got.iter().map(|(_, d)| d.as_str()).collect();
            missing += datas.difference(&have).count();
            out_of_order += got
                .windows(2)
                .filter(|w| (w[0].0.epoch, w[0].0.seq) >= (w[1].0.epoch, w[1].0.seq))
                .count();
        }
        report.push(format!(
            "subscriber {i}: {} reconnects, {missing} missing, {out_of_order} out of order or \
             repeated, failed recoveries {:?}",
            s.reconnects, s.failed_recoveries
        ));
        if missing > 0 || out_of_order > 0 || !s.failed_recoveries.is_empty() {
            bail!("{}\n{}", report.join("\n"), cluster.logs());
        }
    }
    complete.with_context(|| report.join("\n"))?;
    // Nothing crashed, so no stream started over: each topic kept its epoch through every
    // restart (a draining distributor hands its streams over; so does the other one when
    // the restarted one takes its share back).
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, got) in &s.messages {
            let epochs: BTreeSet<u64> = got.iter().map(|(p, _)| p.epoch).collect();
            anyhow::ensure!(
                epochs.len() == 1,
                "subscriber {i}: {topic} went through epochs {epochs:?}\n{}",
                report.join("\n")
            );
        }
    }
    // Each subscriber was moved off an edge at least once (both edges restarted).
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        anyhow::ensure!(s.reconnects >= 1, "subscriber {i} never reconnected");
    }
    // Three metastore restarts cost at most one election each.
    let status = cluster.wait_ready(Duration::from_secs(10))?;
    let term_after = status["term"].as_u64().context("term")?;
    anyhow::ensure!(
        term_after <= term_before + 3,
        "an election storm: term {term_before} → {term_after}"
    );
    eprintln!(
        "{} answered publishes, {} failed calls (retried as new messages), term {term_before} → {term_after}\n{}",
        acked.len(),
        failed_calls.load(Ordering::Relaxed),
        report.join("\n")
    );
    Ok(())
}
