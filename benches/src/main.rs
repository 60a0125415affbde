//! `firetower-bench`: the load generator.
//!
//! Connects N WebSocket subscribers spread over the edges, publishes to T topics over gRPC
//! (single or batched) or over WebSocket, at a fixed rate or as fast as accepted, and
//! reports deliveries/s, publishes/s, latency percentiles (publish → delivery, from a
//! timestamp in the payload), lost / duplicate / out-of-order counts, connections per
//! second, the server's RSS per connection (given its PID) and frames per write (from the
//! edges' /metrics). `--scenario` picks the standard settings; `--start-dev` starts
//! `firetower dev` itself.
//!
//! The client protocol is the Rust client's (`firetower-client`): every gRPC publish goes
//! through its `Publisher`, WebSocket publishes are its `frames::publish`, and each
//! subscriber's subscribe frame and the meaning of the edge's answer are a
//! `SubscriberCore`'s (the recovery scenario runs its subscribers on the core entirely).
//! What stays here is the measuring instrument: the raw WebSocket reader (`rawws`) and the
//! delivery scan (`scan`), which read the generator's own payloads in place, count
//! duplicates and reordering by the publisher's numbers instead of dropping them, and cost
//! a fraction of a JSON parse per delivery (see `client/` in benches/core.rs).

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use firetower_benches::rawws::{Incoming, RawWs};
use firetower_benches::scan::{payload, scan_delivery};
use firetower_benches::stats::{cpu_seconds, Percentiles, Report, SubscriberStats};
use firetower_benches::svg::latency_plot;
use firetower_client::{Event, PublishMessage, SubscriberCore};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

mod recovery_run;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    /// 1,000 subscribers on one edge, 10 topics, 128 B, as fast as accepted.
    Fanout,
    /// 25,000 deliveries/s paced, 1,000 subscribers over both edges, 10 topics.
    Paced,
    /// 10,000 idle connections: RSS per connection.
    IdleConns,
    /// One topic, every subscriber on it, split into `--hot-shards` sub-topics (default 2).
    HotTopic,
    /// 1,000 subscribers drop their connections at once, 100 messages per topic are
    /// published, and all reconnect at once to the other edge with their positions: the
    /// time until every one has recovered what it missed (`--count`: messages missed per
    /// topic).
    Recovery,
    /// Only the flags given.
    Custom,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum PublishMode {
    Grpc,
    GrpcBatch,
    Ws,
    /// One PublishStream per publisher with `--in-flight` unanswered messages.
    Stream,
}

#[derive(Parser, Debug)]
#[command(name = "firetower-bench", about = "Firetower load generator")]
struct Args {
    #[arg(long, value_enum, default_value = "custom")]
    scenario: Scenario,
    /// Edge HTTP addresses, comma-separated.
    #[arg(long, default_value = "127.0.0.1:9999,127.0.0.1:9998")]
    edges: String,
    /// Distributor gRPC addresses, comma-separated.
    #[arg(long, default_value = "127.0.0.1:6667,127.0.0.1:6677")]
    distributors: String,
    /// Start `firetower dev` (this binary path) and measure against it (with the client
    /// token it prints).
    #[arg(long)]
    start_dev: Option<String>,
    /// The client token to connect with (the `client token:` line of `firetower dev`).
    #[arg(long)]
    token: Option<String>,
    /// Connect WebSocket clients without a token (with `--start-dev`, the cluster is started
    /// with `--allow-anonymous`): the comparison of the cost of client tokens.
    #[arg(long)]
    anonymous: bool,
    /// A file holding the API key for the distributors (the `api key file:` line of
    /// `firetower dev`).
    #[arg(long)]
    api_key_file: Option<std::path::PathBuf>,
    /// The cluster CA for the gRPC ports (the `ca file:` line of `firetower dev`).
    #[arg(long, env = "FIRETOWER_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    #[arg(long)]
    subscribers: Option<usize>,
    #[arg(long)]
    topics: Option<usize>,
    /// Payload bytes per message.
    #[arg(long)]
    payload: Option<usize>,
    #[arg(long, value_enum)]
    publish: Option<PublishMode>,
    /// Messages per PublishBatch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Unanswered messages per PublishStream (`--publish stream`).
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Messages per second in total; 0 = as fast as accepted.
    #[arg(long)]
    rate: Option<u64>,
    /// Run for this many seconds of publishing.
    #[arg(long)]
    duration: Option<f64>,
    /// Or stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Only use the first N edges.
    #[arg(long)]
    use_edges: Option<usize>,
    /// The server's PID, for RSS (set automatically with --start-dev).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Spread connections over 127.0.0.1 .. 127.0.0.N as source addresses (automatic past
    /// 20,000 connections).
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Subscribers connecting at once (TCP connect to subscribe ack). Unbounded, 10,000
    /// connects overflow the edges' accept queues (1024 each): the kernel drops handshakes,
    /// clients retry after 1 s, and the connection rate measures those timeouts instead of
    /// the server.
    #[arg(long, default_value_t = 512)]
    connect_in_flight: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<String>,
    /// Write a latency plot (SVG) here.
    #[arg(long)]
    svg: Option<String>,
    /// Seconds to hold idle connections before measuring RSS.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Split every bench topic into this many sub-topics first (hot topics); 0 = plain.
    /// The hot-topic scenario defaults to 2.
    #[arg(long)]
    hot_shards: Option<u32>,
    /// Metastore addresses, for --hot-shards.
    #[arg(long, default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103")]
    metastore: String,
}

/// Splits (or merges, with 0) every bench topic and waits until the change is committed.
async fn set_hot(args: &Args, topics: usize, shards: u32) -> Result<()> {
    let meta = firetower_net::MetaClient::new(
        args.metastore.split(',').map(str::to_string).collect(),
        firetower_benches::rawws::connector(),
        Duration::from_secs(2),
    )
    // The dev cluster's key has the `admin` scope the metastore asks for a split.
    .with_key(
        firetower_benches::rawws::API_KEY
            .get()
            .cloned()
            .unwrap_or_default(),
    );
    for t in 0..topics {
        let topic = format!("bench-{t}");
        let result = if shards == 0 {
            meta.clear_hot_topic(topic.clone()).await
        } else {
            meta.set_hot_topic(topic.clone(), shards).await
        };
        result.map_err(|s| anyhow::anyhow!("hot set {topic}: {}", s.message()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        // A merge is carried by the topic's one sub-topic: 1 shard.
        let want = shards.max(1);
        loop {
            let map = meta.get_slot_map(true).await?;
            if map
                .hot_topics
                .iter()
                .any(|h| h.topic == topic && h.shards == want && h.committed)
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{topic}: not committed in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

struct Plan {
    subscribers: usize,
    topics: usize,
    payload: usize,
    publish: PublishMode,
    rate: u64,
    duration: f64,
    count: Option<u64>,
    edges: Vec<String>,
    idle: bool,
}

fn plan(args: &Args) -> Plan {
    let mut edges: Vec<String> = args.edges.split(',').map(str::to_string).collect();
    let (subs, topics, payload, publish, rate, duration, use_edges, idle) = match args.scenario {
        Scenario::Fanout => (
            1000,
            10,
            128,
            PublishMode::GrpcBatch,
            0,
            10.0,
            Some(1),
            false,
        ),
        Scenario::Paced => (1000, 10, 128, PublishMode::Grpc, 250, 10.0, None, false),
        Scenario::IdleConns => (10_000, 1, 128, PublishMode::Grpc, 0, 0.0, None, true),
        Scenario::HotTopic => (2000, 1, 128, PublishMode::GrpcBatch, 0, 10.0, None, false),
        Scenario::Custom | Scenario::Recovery => {
            (100, 10, 128, PublishMode::Grpc, 0, 5.0, None, false)
        }
    };
    if let Some(n) = args.use_edges.or(use_edges) {
        edges.truncate(n.max(1));
    }
    Plan {
        subscribers: args.subscribers.unwrap_or(subs),
        topics: args.topics.unwrap_or(topics).max(1),
        payload: args.payload.unwrap_or(payload),
        publish: args.publish.unwrap_or(publish),
        rate: args.rate.unwrap_or(rate),
        duration: args.duration.unwrap_or(duration),
        count: args.count,
        edges,
        idle,
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of a counter over the edges' /metrics.
async fn edge_metric(edges: &[String], name: &str) -> Option<u64> {
    let mut total = 0;
    for edge in edges {
        let mut stream = tokio::net::TcpStream::connect(edge).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        let key = format!("firetower_edge_{name}_total{{");
        let line = body.lines().find(|l| l.starts_with(&key))?;
        total += line.rsplit(' ').next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

async fn connect_tcp(
    edge: &str,
    source: Option<std::net::IpAddr>,
) -> Result<tokio::net::TcpStream> {
    let addr: std::net::SocketAddr = tokio::net::lookup_host(edge)
        .await?
        .next()
        .context("edge address")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect_ws(
    edge: &str,
    source: Option<std::net::IpAddr>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let stream = connect_tcp(edge, source).await?;
    let path = firetower_benches::rawws::ws_path();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{edge}{path}"), stream).await?;
    Ok(ws)
}

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

struct Shared {
    base: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
    received: AtomicU64,
    /// Subscriber connections the server ended before the run did.
    closed: AtomicU64,
    /// When the last delivery arrived (ns since `base`).
    last_delivery_ns: AtomicU64,
}

/// One subscriber: connect, subscribe, wait at the barrier, then record deliveries.
async fn subscriber(
    i: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    ready: Arc<Barrier>,
    source: Option<std::net::IpAddr>,
    connecting: Arc<tokio::sync::Semaphore>,
) -> Result<SubscriberStats> {
    let edge = &plan.edges[i % plan.edges.len()];
    // Held from the TCP connect to the subscribe's ack (see `--connect-in-flight`).
    let connect_permit = connecting.acquire_owned().await?;
    let mut ws = RawWs::connect(connect_tcp(edge, source).await?, edge).await?;
    let topic = format!("bench-{}", i % plan.topics);
    // The subscribe frame, and what the edge's answer means, are the Rust client's.
    let mut core = SubscriberCore::default();
    for frame in core.subscribe_all(&[&topic]) {
        ws.send_text(&frame).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acked = false;
    while !acked {
        let mut refused = None;
        let read = ws.read_frames(|f| {
            if let Incoming::Text(t) = f {
                for event in core.on_frame(&String::from_utf8_lossy(t)) {
                    match event {
                        Event::Subscribed { .. } => acked = true,
                        Event::Error { code, message, .. } => {
                            refused = Some(format!("{code}: {message}"))
                        }
                        Event::BadFrame { error, frame } => {
                            refused = Some(format!("{error}: {frame}"))
                        }
                        _ => {}
                    }
                }
            }
        });
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(true)) => {}
            other => bail!("subscriber {i}: no ack: {other:?}"),
        }
        if let Some(t) = refused {
            bail!("subscriber {i}: {t}");
        }
    }
    drop(connect_permit);
    ready.wait().await;
    let mut stats = SubscriberStats::new(plan.topics);
    let mut stop = shared.stop.clone();
    // Deliveries are scanned in place rather than handed to the core: the generator shares
    // the machine with the server, and a JSON parse and two allocations per delivery would
    // take cores from the server it measures (see the module doc).
    loop {
        let mut received = 0;
        // Every frame of one read arrived at the same time: one clock read per batch.
        let mut now = None;
        let read = ws.read_frames(|f| {
            if let Incoming::Text(t) = f {
                if let Some(d) = scan_delivery(t) {
                    let at = *now.get_or_insert_with(|| now_ns(shared.base));
                    stats.record(d, at);
                    received += 1;
                }
            }
        });
        tokio::select! {
            r = read => match r {
                Ok(true) => {}
                _ => {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        }
        shared.received.fetch_add(received, Ordering::Relaxed);
        if let Some(at) = now {
            shared.last_delivery_ns.fetch_max(at, Ordering::Relaxed);
        }
    }
    Ok(stats)
}

/// One publisher: owns topics `j, j+P, …` so per-topic numbering is sequential.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    j: usize,
    publishers: usize,
    plan: Arc<Plan>,
    args_batch: usize,
    in_flight: usize,
    distributors: Vec<String>,
    shared: Arc<Shared>,
    published: Arc<Vec<AtomicU64>>,
    per_publisher_rate: f64,
    deadline: Instant,
    quota: Option<u64>,
) -> Result<u64> {
    let my_topics: Vec<usize> = (j..plan.topics).step_by(publishers).collect();
    if my_topics.is_empty() {
        return Ok(0);
    }
    let addr = &distributors[j % distributors.len()];
    let publisher = firetower_benches::rawws::publisher(addr)?;
    let mut ws = if plan.publish == PublishMode::Ws {
        Some(connect_ws(&plan.edges[j % plan.edges.len()], None).await?)
    } else {
        None
    };
    // PublishStream: messages go through a channel, a task reads the answers and gives
    // back one permit per answer; any error answer fails the run.
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut stream = None;
    if plan.publish == PublishMode::Stream {
        let (tx, rx) = tokio::sync::mpsc::channel::<(u64, String, Vec<u8>)>(1024);
        let mut answers = Box::pin(
            publisher
                .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?,
        );
        let answered = permits.clone();
        let reader = tokio::spawn(async move {
            let mut errors = Vec::new();
            while let Some(answer) = answers.next().await {
                let answer = answer?;
                answered.add_permits(1);
                if let Err((code, message)) = answer.result {
                    errors.push(format!("message {}: {code:?}: {message}", answer.id));
                }
            }
            anyhow::ensure!(
                errors.is_empty(),
                "{} stream errors, first {:?}",
                errors.len(),
                errors.first()
            );
            Ok::<(), anyhow::Error>(())
        });
        stream = Some((tx, reader));
    }
    let mut next_id = 0u64;
    let mut next_n = vec![0u64; plan.topics];
    let mut sent = 0u64;
    let mut k = 0usize;
    let start = Instant::now();
    let batch = if plan.publish == PublishMode::GrpcBatch {
        args_batch.max(1)
    } else {
        1
    };
    loop {
        if Instant::now() >= deadline || quota.is_some_and(|q| sent >= q) || *shared.stop.borrow() {
            break;
        }
        if per_publisher_rate > 0.0 {
            // Publishers are staggered by 1/P of their interval, so the total rate is
            // evenly paced rather than P publishes at the same instant.
            let phase = j as f64 / publishers as f64;
            let due = (start.elapsed().as_secs_f64() * per_publisher_rate + phase) as u64;
            if sent >= due {
                tokio::time::sleep(Duration::from_micros(500)).await;
                continue;
            }
        }
        let mut messages = Vec::with_capacity(batch);
        for _ in 0..batch {
            let t = my_topics[k % my_topics.len()];
            k += 1;
            next_n[t] += 1;
            messages.push(PublishMessage {
                topic: format!("bench-{t}"),
                data: payload(now_ns(shared.base), next_n[t], plan.payload).into_bytes(),
            });
            published[t].fetch_add(1, Ordering::Relaxed);
        }
        sent += messages.len() as u64;
        match (plan.publish, ws.as_mut()) {
            (PublishMode::Ws, Some(ws)) => {
                for m in messages {
                    let data = std::str::from_utf8(&m.data)?;
                    ws.feed(Message::text(firetower_client::frames::publish(
                        &m.topic, data, None,
                    )))
                    .await?;
                }
                ws.flush().await?;
            }
            (PublishMode::GrpcBatch, _) => {
                publisher.publish_batch(messages).await?;
            }
            (PublishMode::Stream, _) => {
                let Some((tx, _)) = stream.as_ref() else {
                    bail!("no stream");
                };
                for m in messages {
                    permits.acquire().await?.forget();
                    next_id += 1;
                    tx.send((next_id, m.topic, m.data)).await?;
                }
            }
            _ => {
                for m in messages {
                    publisher.publish_message(m).await?;
                }
            }
        }
    }
    if let Some((tx, reader)) = stream {
        drop(tx);
        reader.await??;
    }
    Ok(sent)
}

struct DevServer {
    child: std::process::Child,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start_dev(binary: &str, anonymous: bool) -> Result<DevServer> {
    let mut command = std::process::Command::new(binary);
    command.arg("dev");
    if anonymous {
        command.arg("--allow-anonymous");
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {binary} dev"))?;
    let stdout = child.stdout.take().context("dev stdout")?;
    let server = DevServer { child };
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(token) = line.strip_prefix("client token: ") {
            if !anonymous {
                let _ = firetower_benches::rawws::TOKEN.set(token.to_string());
            }
        }
        if let Some(path) = line.strip_prefix("api key file: ") {
            let key = firetower_net::ApiKey::from_file("api key file", path.as_ref())?;
            let _ = firetower_benches::rawws::API_KEY.set(key);
        }
        if let Some(path) = line.strip_prefix("ca file: ") {
            let tls = firetower_net::ClientTls::trusting(path.as_ref())?;
            let _ = firetower_benches::rawws::CLIENT_TLS.set(tls);
        }
        if line == "ready" {
            return Ok(server);
        }
    }
    bail!("firetower dev exited before it was ready")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let plan = Arc::new(plan(&args));
    if let Some(token) = &args.token {
        let _ = firetower_benches::rawws::TOKEN.set(token.clone());
    }
    if let Some(path) = &args.api_key_file {
        let key = firetower_net::ApiKey::from_file("--api-key-file", path)?;
        let _ = firetower_benches::rawws::API_KEY.set(key);
    }
    if let Some(path) = &args.ca_file {
        let _ = firetower_benches::rawws::CLIENT_TLS.set(firetower_net::ClientTls::trusting(path)?);
    }
    let _dev = match &args.start_dev {
        Some(binary) => Some(start_dev(binary, args.anonymous)?),
        None => None,
    };
    let server_pid = args.server_pid.or(_dev.as_ref().map(|d| d.child.id()));
    if args.scenario == Scenario::Recovery {
        let edges: Vec<String> = args.edges.split(',').map(str::to_string).collect();
        anyhow::ensure!(edges.len() >= 2, "the recovery scenario needs two edges");
        let report = recovery_run::run(recovery_run::RecoveryPlan {
            subscribers: args.subscribers.unwrap_or(1000),
            topics: args.topics.unwrap_or(10),
            missed: args.count.unwrap_or(100),
            payload: args.payload.unwrap_or(128),
            first_edge: edges[0].clone(),
            second_edge: edges[1].clone(),
            distributor: args
                .distributors
                .split(',')
                .next()
                .unwrap_or_default()
                .to_string(),
        })
        .await?;
        let json = serde_json::to_string_pretty(&report)?;
        println!("{json}");
        if let Some(path) = &args.json {
            std::fs::write(path, &json)?;
        }
        return Ok(());
    }
    let hot_shards = args
        .hot_shards
        .unwrap_or(if args.scenario == Scenario::HotTopic {
            2
        } else {
            0
        });
    if hot_shards > 0 {
        set_hot(&args, plan.topics, hot_shards).await?;
    }
    let distributors: Vec<String> = args.distributors.split(',').map(str::to_string).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        base: Instant::now(),
        stop: stop_rx,
        received: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
    });
    let rss_before = server_pid.and_then(rss_bytes);
    let writes_before = edge_metric(&plan.edges, "writes").await;
    let server_cpu_before = server_pid.and_then(|p| cpu_seconds(&p.to_string()));
    let self_cpu_before = cpu_seconds("self");
    let queued_before = edge_metric(&plan.edges, "frames_queued").await;

    // One source address has about 28k ephemeral ports toward one edge address: past 20k
    // connections, spread them over more loopback addresses unless told otherwise.
    let source_ips = if args.source_ips <= 1 && plan.subscribers > 20_000 {
        (plan.subscribers / 20_000 + 1).min(250) as u8
    } else {
        args.source_ips
    };
    // Connect the subscribers.
    let ready = Arc::new(Barrier::new(plan.subscribers + 1));
    let connecting = Arc::new(tokio::sync::Semaphore::new(args.connect_in_flight.max(1)));
    let connect_start = Instant::now();
    let mut subs = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let source = (source_ips > 1).then(|| {
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % source_ips as usize) as u8,
            ))
        });
        subs.push(tokio::spawn(subscriber(
            i,
            plan.clone(),
            shared.clone(),
            ready.clone(),
            source,
            connecting.clone(),
        )));
    }
    ready.wait().await;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    eprintln!(
        "{} subscribers connected and subscribed in {connect_seconds:.2} s",
        plan.subscribers
    );

    let mut rss_after = None;
    let mut published_total = 0u64;
    let published: Arc<Vec<AtomicU64>> =
        Arc::new((0..plan.topics).map(|_| AtomicU64::new(0)).collect());
    let mut seconds = 0.0;
    let mut start_ns = 0u64;
    if plan.idle {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        rss_after = server_pid.and_then(rss_bytes);
    } else {
        let publishers = args.publishers.clamp(1, plan.topics);
        let start = Instant::now();
        let deadline = if plan.count.is_some() {
            start + Duration::from_secs(3600)
        } else {
            start + Duration::from_secs_f64(plan.duration)
        };
        let per_rate = plan.rate as f64 / publishers as f64;
        let quota = plan.count.map(|c| c.div_ceil(publishers as u64));
        let mut pubs = Vec::new();
        for j in 0..publishers {
            pubs.push(tokio::spawn(publisher(
                j,
                publishers,
                plan.clone(),
                args.batch,
                args.in_flight,
                distributors.clone(),
                shared.clone(),
                published.clone(),
                per_rate,
                deadline,
                quota,
            )));
        }
        for p in pubs {
            published_total += p.await??;
        }
        seconds = start.elapsed().as_secs_f64();
        start_ns = start.duration_since(shared.base).as_nanos() as u64;
        // Let the deliveries drain: stop when nothing arrived for 1 s.
        let mut last = shared.received.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = shared.received.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        rss_after = server_pid.and_then(rss_bytes).or(rss_after);
    }
    let _ = stop_tx.send(true);
    let delivery_seconds = shared
        .last_delivery_ns
        .load(Ordering::Relaxed)
        .saturating_sub(start_ns) as f64
        / 1e9;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2)?;
    let (mut delivered, mut duplicates, mut out_of_order) = (0u64, 0u64, 0u64);
    for s in subs {
        let stats = s.await??;
        delivered += stats.received;
        duplicates += stats.duplicates;
        out_of_order += stats.out_of_order;
        latency.add(&stats.latency_us)?;
    }
    let subscribers_per_topic = |t: usize| {
        (0..plan.subscribers)
            .filter(|i| i % plan.topics == t)
            .count() as u64
    };
    let expected: u64 = (0..plan.topics)
        .map(|t| published[t].load(Ordering::Relaxed) * subscribers_per_topic(t))
        .sum();
    let server_cpu = server_pid
        .and_then(|p| cpu_seconds(&p.to_string()))
        .zip(server_cpu_before)
        .map(|(a, b)| a - b);
    let generator_cpu = cpu_seconds("self").zip(self_cpu_before).map(|(a, b)| a - b);
    let writes_after = edge_metric(&plan.edges, "writes").await;
    let queued_after = edge_metric(&plan.edges, "frames_queued").await;
    let edge_writes = writes_after.zip(writes_before).map(|(a, b)| a - b);
    let edge_frames = queued_after.zip(queued_before).map(|(a, b)| a - b);
    let report = Report {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        subscribers: plan.subscribers,
        topics: plan.topics,
        payload_bytes: plan.payload,
        publish_mode: format!("{:?}", plan.publish).to_lowercase(),
        hot_shards,
        seconds,
        published: published_total,
        publishes_per_sec: if seconds > 0.0 {
            published_total as f64 / seconds
        } else {
            0.0
        },
        expected_deliveries: expected,
        delivered,
        // Over the time from the first publish to the last delivery: a publisher that
        // finishes writing long before its messages are delivered (a WebSocket) is not
        // credited with deliveries it has not caused yet.
        deliveries_per_sec: if delivery_seconds > 0.0 {
            delivered as f64 / delivery_seconds
        } else {
            0.0
        },
        delivery_seconds,
        lost: expected.saturating_sub(delivered),
        closed_connections: shared.closed.load(Ordering::Relaxed),
        duplicates,
        out_of_order,
        latency_us: Percentiles::of(&latency),
        connect_seconds,
        connections_per_sec: plan.subscribers as f64 / connect_seconds.max(1e-9),
        server_rss_bytes_before: rss_before,
        server_rss_bytes_after: rss_after,
        rss_bytes_per_connection: rss_before
            .zip(rss_after)
            .map(|(b, a)| (a as f64 - b as f64) / plan.subscribers.max(1) as f64),
        edge_writes,
        edge_frames_queued: edge_frames,
        server_cpu_seconds: server_cpu,
        generator_cpu_seconds: generator_cpu,
        frames_per_write: edge_writes
            .zip(edge_frames)
            .map(|(w, f)| f as f64 / (w.max(1)) as f64),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "{} — {} subscribers, {} topics, {} B, {:.0} deliveries/s",
            report.scenario,
            report.subscribers,
            report.topics,
            report.payload_bytes,
            report.deliveries_per_sec
        );
        std::fs::write(path, latency_plot(&latency, &title))?;
    }
    Ok(())
}
