//! `--scenario recovery`: N subscribers lose their connections at once (as when their edge
//! restarts), messages are published meanwhile, and all N reconnect at once to the other
//! edge with the position they last saw. Measures how long until every one of them has
//! recovered exactly what it missed, and checks it: each gets `recovered: true`, then every
//! missed message once and in order, then a live one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use firetower_proto::distributor::v1 as dpb;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::connect_ws;

/// How long one phase may take before the run is declared failed.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The settings of one run.
pub struct RecoveryPlan {
    pub subscribers: usize,
    pub topics: usize,
    /// Messages per topic published while the subscribers are away.
    pub missed: u64,
    pub payload: usize,
    /// The edge the subscribers start on, and the one they come back to.
    pub first_edge: String,
    pub second_edge: String,
    pub distributor: String,
}

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub struct RecoveryReport {
    pub scenario: &'static str,
    pub subscribers: usize,
    pub topics: usize,
    pub missed_per_topic: u64,
    pub payload: usize,
    /// From the first reconnect to the last subscriber holding everything it missed.
    pub recovery_seconds: f64,
    /// Per subscriber: reconnect → last missed message, milliseconds.
    pub per_client_ms: crate::Percentiles,
    pub recovered_true: u64,
    pub recovered_false: u64,
    pub messages_recovered: u64,
    pub lost: u64,
    pub duplicate: u64,
    pub out_of_order: u64,
    pub closed: u64,
}

/// A delivery frame's topic, `(epoch, seq)` and the generator's number `n`.
fn delivery(frame: &Value) -> Option<(String, (u64, u64), u64)> {
    if frame.get("type")?.as_str()? != "publish" {
        return None;
    }
    let topic = frame.get("topic")?.as_str()?.to_string();
    let epoch = frame.get("epoch")?.as_u64()?;
    let seq = frame.get("seq")?.as_u64()?;
    let n = frame.get("data")?.get("n")?.as_u64()?;
    Some((topic, (epoch, seq), n))
}

fn topic_of(i: usize, topics: usize) -> String {
    format!("bench-{}", i % topics)
}

async fn publish(
    grpc: &mut dpb::distributor_client::DistributorClient<firetower_net::KeyedChannel>,
    topic: &str,
    n: u64,
    size: usize,
) -> Result<(u64, u64)> {
    let reply = grpc
        .publish(dpb::PublishRequest {
            topic: topic.to_string(),
            data: firetower_benches::scan::payload(0, n, size).into(),
        })
        .await
        .with_context(|| format!("publishing {topic} #{n}"))?
        .into_inner();
    Ok((reply.epoch, reply.seq))
}

/// Phase 1: one subscriber on the first edge, until it has seen message `until` of its
/// topic; returns the last position it saw.
async fn first_visit(
    edge: String,
    topic: String,
    until: u64,
    subscribed: Arc<Barrier>,
) -> Result<(u64, u64)> {
    let mut ws = connect_ws(&edge, None).await?;
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","topic":"{topic}"}}"#
    )))
    .await?;
    let mut acked = false;
    let mut last = None;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while last.is_none_or(|(_, n)| n < until) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("first visit: timed out")?
            .context("first visit: closed")??;
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(text.as_str())?;
        if frame.get("type").and_then(Value::as_str) == Some("subscribed") && !acked {
            acked = true;
            subscribed.wait().await;
            continue;
        }
        if let Some((t, pos, n)) = delivery(&frame) {
            if t == topic {
                last = Some((pos, n));
            }
        }
    }
    // Dropped here, without a close handshake, as a restarting edge would drop it.
    let (pos, _) = last.context("no delivery")?;
    Ok(pos)
}

/// What one returning subscriber saw.
#[derive(Default)]
struct Return {
    recovered: Option<bool>,
    took: Duration,
    messages: u64,
    lost: u64,
    duplicate: u64,
    out_of_order: u64,
    closed: bool,
}

/// Phase 3: reconnect to the second edge with `since` and read until the live message
/// (`live_n`) arrives; every message from `from_n` on must come once and in order.
async fn come_back(
    edge: String,
    topic: String,
    since: (u64, u64),
    from_n: u64,
    live_n: u64,
    start: Arc<Barrier>,
    done: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Return> {
    start.wait().await;
    let began = Instant::now();
    let mut ws = connect_ws(&edge, None).await?;
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","topic":"{topic}","since":{{"{topic}":{{"epoch":{},"seq":{}}}}}}}"#,
        since.0, since.1
    )))
    .await?;
    let mut out = Return::default();
    let mut next_n = from_n;
    let mut last_pos = since;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => {
                out.closed = true;
                break;
            }
            Err(_) => bail!("a returning subscriber waited {PHASE_TIMEOUT:?}"),
        };
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(text.as_str())?;
        if frame.get("type").and_then(Value::as_str) == Some("subscribed") {
            out.recovered = frame
                .get("recovered")
                .and_then(|r| r.get(&topic))
                .and_then(Value::as_bool);
            if out.recovered != Some(true) {
                // Nothing to recover: done at once (and nothing after it counts as lost).
                out.took = began.elapsed();
                let _ = done.send(());
            }
            continue;
        }
        let Some((t, pos, n)) = delivery(&frame) else {
            continue;
        };
        if t != topic {
            continue;
        }
        if pos <= last_pos {
            out.duplicate += 1;
            continue;
        }
        last_pos = pos;
        if n < next_n {
            out.out_of_order += 1;
        } else {
            if out.recovered == Some(true) {
                out.lost += n - next_n;
            }
            next_n = n + 1;
        }
        if n < live_n {
            out.messages += 1;
            if n + 1 == live_n {
                out.took = began.elapsed();
                let _ = done.send(());
            }
        } else {
            break;
        }
    }
    Ok(out)
}

pub async fn run(plan: RecoveryPlan) -> Result<RecoveryReport> {
    let mut grpc = firetower_benches::rawws::grpc_client(&plan.distributor).await?;
    // Phase 1: everyone subscribed on the first edge and holding a position.
    const WARM: u64 = 10;
    let subscribed = Arc::new(Barrier::new(plan.subscribers + 1));
    let mut first = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        first.push(tokio::spawn(first_visit(
            plan.first_edge.clone(),
            topic_of(i, plan.topics),
            WARM - 1,
            subscribed.clone(),
        )));
    }
    tokio::time::timeout(PHASE_TIMEOUT, subscribed.wait())
        .await
        .context("subscribing on the first edge timed out")?;
    for n in 0..WARM {
        for t in 0..plan.topics {
            publish(&mut grpc, &topic_of(t, plan.topics), n, plan.payload).await?;
        }
    }
    let mut positions = Vec::with_capacity(plan.subscribers);
    for task in first {
        positions.push(task.await??);
    }
    eprintln!(
        "{} subscribers on {} hold a position; their connections are dropped",
        plan.subscribers, plan.first_edge
    );
    // Phase 2: gone; the topics go on.
    for n in WARM..WARM + plan.missed {
        for t in 0..plan.topics {
            let topic = topic_of(t, plan.topics);
            publish(&mut grpc, &topic, n, plan.payload).await?;
        }
    }
    // Phase 3: all at once to the other edge.
    let start = Arc::new(Barrier::new(plan.subscribers + 1));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let live_n = WARM + plan.missed;
    let mut back = Vec::with_capacity(plan.subscribers);
    for (i, since) in positions.iter().enumerate() {
        back.push(tokio::spawn(come_back(
            plan.second_edge.clone(),
            topic_of(i, plan.topics),
            *since,
            WARM,
            live_n,
            start.clone(),
            done_tx.clone(),
        )));
    }
    start.wait().await;
    let began = Instant::now();
    // The live message goes out once everyone has recovered (or given up): it ends each
    // subscriber's read and shows that live deliveries follow the recovered ones.
    drop(done_tx);
    for _ in 0..plan.subscribers {
        match tokio::time::timeout(PHASE_TIMEOUT, done_rx.recv()).await {
            Ok(Some(())) => {}
            _ => break,
        }
    }
    let recovery_seconds = began.elapsed().as_secs_f64();
    for t in 0..plan.topics {
        publish(&mut grpc, &topic_of(t, plan.topics), live_n, plan.payload).await?;
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut report = RecoveryReport {
        scenario: "recovery",
        subscribers: plan.subscribers,
        topics: plan.topics,
        missed_per_topic: plan.missed,
        payload: plan.payload,
        recovery_seconds,
        per_client_ms: crate::Percentiles::default(),
        recovered_true: 0,
        recovered_false: 0,
        messages_recovered: 0,
        lost: 0,
        duplicate: 0,
        out_of_order: 0,
        closed: 0,
    };
    for task in back {
        let r = task.await??;
        match r.recovered {
            Some(true) => report.recovered_true += 1,
            _ => report.recovered_false += 1,
        }
        report.messages_recovered += r.messages;
        report.lost += r.lost;
        report.duplicate += r.duplicate;
        report.out_of_order += r.out_of_order;
        report.closed += u64::from(r.closed);
        hist.record(r.took.as_millis() as u64)?;
    }
    report.per_client_ms = crate::Percentiles::of(&hist);
    ensure!(
        report.messages_recovered + report.lost == report.recovered_true * plan.missed,
        "the counts do not add up: {} recovered + {} lost for {} recovered subscribers",
        report.messages_recovered,
        report.lost,
        report.recovered_true
    );
    Ok(report)
}
