//! `--scenario recovery`: N subscribers lose their connections at once (as when their edge
//! restarts), messages are published meanwhile, and all N reconnect at once to the other
//! edge with the position they last saw. Measures how long until every one of them has
//! recovered exactly what it missed, and checks it: each gets `recovered: true`, then every
//! missed message once and in order, then a live one.
//!
//! Each subscriber is the Rust client's `SubscriberCore` over a WebSocket of its own: the
//! core holds the position, builds the frame that subscribes on the second edge with
//! `since`, and says what each frame means. Only the connection's timing is this file's
//! (drop all at once, come back all at once), which the `Subscriber` task's own backoff
//! would not give.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use firetower_client::{DropReason, Event, Publisher, SubscriberCore};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
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

/// The generator's number `n` in a message's data.
fn number(data: &str) -> Result<u64> {
    #[derive(serde::Deserialize)]
    struct Data {
        n: u64,
    }
    Ok(serde_json::from_str::<Data>(data)
        .with_context(|| format!("not the generator's data: {data}"))?
        .n)
}

fn topic_of(i: usize, topics: usize) -> String {
    format!("bench-{}", i % topics)
}

async fn publish(publisher: &Publisher, topic: &str, n: u64, size: usize) -> Result<()> {
    publisher
        .publish(topic, &firetower_benches::scan::payload(0, n, size))
        .await
        .with_context(|| format!("publishing {topic} #{n}"))?;
    Ok(())
}

/// Text frames of `ws` until `deadline`, through `core`: its events. `None`: closed.
async fn events<S>(
    ws: &mut S,
    core: &mut SubscriberCore,
    deadline: Instant,
) -> Result<Option<Vec<Event>>>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Ok(Some(core.on_frame(text.as_str()))),
            Ok(Some(Ok(_))) => {}
            Ok(_) => return Ok(None),
            Err(_) => bail!("no frame within {PHASE_TIMEOUT:?}"),
        }
    }
}

/// Phase 1: one subscriber on the first edge, until it has seen message `until` of its
/// topic; returns its core, which holds the last position it saw.
async fn first_visit(
    edge: String,
    topic: String,
    until: u64,
    subscribed: Arc<Barrier>,
) -> Result<SubscriberCore> {
    let mut core = SubscriberCore::default();
    let mut ws = connect_ws(&edge, None).await?;
    for frame in core.subscribe_all(&[&topic]) {
        ws.send(Message::text(frame)).await?;
    }
    let mut acked = false;
    let mut last_n = None;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while last_n.is_none_or(|n| n < until) {
        let events = events(&mut ws, &mut core, deadline)
            .await
            .context("first visit")?
            .context("first visit: closed")?;
        for event in events {
            match event {
                Event::Subscribed { .. } if !acked => {
                    acked = true;
                    subscribed.wait().await;
                }
                Event::Message { data, .. } => last_n = Some(number(&data)?),
                Event::Error { code, message, .. } => bail!("first visit: {code}: {message}"),
                Event::BadFrame { error, frame } => bail!("first visit: {error}: {frame}"),
                _ => {}
            }
        }
    }
    // Dropped here, without a close handshake, as a restarting edge would drop it.
    ensure!(core.position(&topic).is_some(), "no position held");
    Ok(core)
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

/// Phase 3: reconnect to the second edge with the core's positions (`since`) and read
/// until the live message (`live_n`) arrives; every message from `from_n` on must come once
/// and in order.
async fn come_back(
    edge: String,
    mut core: SubscriberCore,
    from_n: u64,
    live_n: u64,
    start: Arc<Barrier>,
    done: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Return> {
    start.wait().await;
    let began = Instant::now();
    let mut ws = connect_ws(&edge, None).await?;
    for frame in core.on_connected() {
        ws.send(Message::text(frame)).await?;
    }
    let mut out = Return::default();
    let mut next_n = from_n;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    'read: loop {
        let Some(events) = events(&mut ws, &mut core, deadline).await? else {
            out.closed = true;
            break;
        };
        for event in events {
            let n = match event {
                Event::Subscribed { recovered, .. } => {
                    out.recovered = recovered;
                    if recovered != Some(true) {
                        // Nothing to recover: done at once (and nothing after it counts as lost).
                        out.took = began.elapsed();
                        let _ = done.send(());
                    }
                    continue;
                }
                // At or before the position the core holds: a duplicate the edge sent.
                Event::Dropped {
                    reason: DropReason::NotNewer,
                    ..
                } => {
                    out.duplicate += 1;
                    continue;
                }
                Event::Message { data, .. } => number(&data)?,
                _ => continue,
            };
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
                break 'read;
            }
        }
    }
    Ok(out)
}

pub async fn run(plan: RecoveryPlan) -> Result<RecoveryReport> {
    let publisher = firetower_benches::rawws::publisher(&plan.distributor)?;
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
            publish(&publisher, &topic_of(t, plan.topics), n, plan.payload).await?;
        }
    }
    let mut cores = Vec::with_capacity(plan.subscribers);
    for task in first {
        cores.push(task.await??);
    }
    eprintln!(
        "{} subscribers on {} hold a position; their connections are dropped",
        plan.subscribers, plan.first_edge
    );
    // Phase 2: gone; the topics go on.
    for n in WARM..WARM + plan.missed {
        for t in 0..plan.topics {
            let topic = topic_of(t, plan.topics);
            publish(&publisher, &topic, n, plan.payload).await?;
        }
    }
    // Phase 3: all at once to the other edge.
    let start = Arc::new(Barrier::new(plan.subscribers + 1));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let live_n = WARM + plan.missed;
    let mut back = Vec::with_capacity(plan.subscribers);
    for core in cores {
        back.push(tokio::spawn(come_back(
            plan.second_edge.clone(),
            core,
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
        publish(&publisher, &topic_of(t, plan.topics), live_n, plan.payload).await?;
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
