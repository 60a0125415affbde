//! `firetower dashboard`: a live view of the cluster over HTTP.
//!
//! One process, outside the cluster: it follows the metastore's watch (a snapshot, then
//! every revision) as the edges and distributors do, scrapes each member's plain-HTTP
//! endpoints every couple of seconds, and serves a page (HTML, JS and CSS compiled into the
//! binary, no build step, nothing from another origin) that shows it all and stays live
//! over Server-Sent Events.
//!
//! # Layout
//!
//! - this file: the arguments, and the shell: the watch, the scrape rounds, the HTTP server
//! - `dashboard/model.rs`: what the dashboard knows (sans-IO: watch events and scrape
//!   results in, JSON updates for the viewers out)
//! - `dashboard/prom.rs`: a tolerant reader of the Prometheus text format, and the headline
//!   figures found in it by substring
//! - `dashboard/http.rs`: the headers of its answers, and query values (request heads
//!   are read, answers written, and members' endpoints fetched by
//!   `firetower_net::ops_http`)
//! - `dashboard/index.html`, `app.js`, `style.css`: the page
//!
//! # What it serves
//!
//! | path | what |
//! |---|---|
//! | `/` | the page |
//! | `/app.js`, `/style.css` | its script and style |
//! | `/api/state` | everything as one JSON object (the `state` event's data) |
//! | `/api/events` | Server-Sent Events: `state` first, then `delta` (slot moves, members, hot topics; from the watch, as they happen) and `metrics` (every scrape round) |
//! | `/healthz` | 200 once the metastore's snapshot is in, else 503 |
//!
//! # Where the figures come from
//!
//! Members, slot owners and hot topics: the metastore's watch (`firetower_net::spawn_watch`).
//! Per-node rates: each member's Prometheus `/metrics` (a distributor's at its `metrics`
//! address, an edge's at its `metrics` address or else its `ws` one), as rates of counter
//! deltas between two rounds. Busiest topics: each distributor's `GET /topics` at its
//! `metrics` address. Subscriber counts: an edge's `GET /api/topic?topic=T`. The metastore
//! nodes: their ClusterStatus. Whatever is missing shows as "no data".

mod http;
mod model;
mod prom;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use firetower_net::ops_http::{answer, get, read_request, send, Request, Response, MAX_HEAD};
use firetower_net::{KeyedChannel, MetaClient, TcpConnector};
use firetower_proto::metastore::v1 as pb;
use firetower_proto::metastore::v1::metastore_client::MetastoreClient;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::cli::{parse_addrs, shutdown_signal, CaArgs, Failure};
use crate::status;
use model::{LeaseAge, MetaNode, MetaStatus, Model, Round, Target, TopicStat, Update};

/// Where the dashboard listens and what it watches.
#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    /// Metastore addresses, comma-separated.
    #[arg(long)]
    pub metastore: String,
    /// The HTTP address to serve the dashboard on. It shows the cluster's internals to
    /// anyone who reaches it: keep it on loopback or behind an authenticating proxy.
    #[arg(long, default_value = "127.0.0.1:9990")]
    pub listen: String,
    /// A file holding an `admin` (or `member`) key of the metastore's (`dev` prints its
    /// `api key file:`).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub ca: CaArgs,
    /// How often the members' metrics are scraped, in milliseconds (rates are per second
    /// over this interval).
    #[arg(long, default_value_t = 2000)]
    pub scrape_interval_ms: u64,
    /// How long one scrape of one member may take, in milliseconds (default: 1500, or the
    /// interval if shorter).
    #[arg(long)]
    pub scrape_timeout_ms: Option<u64>,
    /// Browser tabs following the live stream at once; more are refused with 503.
    #[arg(long, default_value_t = 16)]
    pub max_viewers: usize,
}

/// The dashboard's settings, checked once.
#[derive(Clone, Debug)]
struct Config {
    metastore: Vec<String>,
    listen: String,
    scrape_interval: Duration,
    scrape_timeout: Duration,
    max_viewers: usize,
    limits: model::Limits,
}

/// HTTP connections served at once besides the event streams (page loads, API calls, and
/// requests still sending their head): beyond them a connection is answered 503 at once.
const MAX_OTHER_CONNECTIONS: usize = 32;
/// How long a browser may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one event may take to reach a viewer before it is dropped (its browser
/// reconnects and starts from the whole state).
const EVENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A comment on an idle event stream, so that proxies keep it and a gone viewer is
/// noticed.
const EVENT_KEEPALIVE: Duration = Duration::from_secs(15);
/// Updates waiting for the slowest viewer: one that falls further behind is dropped (and
/// reconnects). Watch deltas come one per metastore write; a burst of hundreds is rare.
const UPDATE_BACKLOG: usize = 1024;
/// Watch events waiting to be applied (spawn_watch waits for room, it never skips).
const WATCH_BACKLOG: usize = 256;
/// Metastore calls (the watch's snapshot, ClusterStatus) give up after this long.
const METASTORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes in flight at once in a round.
const SCRAPE_CONCURRENCY: usize = 32;
/// The largest `/metrics` or `/topics` body read from a member.
const MAX_SCRAPE_BODY: usize = 4 << 20;
/// The largest `/api/topic` answer read from an edge.
const MAX_TOPIC_STATUS_BODY: usize = 64 << 10;

impl DashboardArgs {
    fn config(&self) -> Result<Config, Failure> {
        let bad = |what: &str| Failure::Usage(what.to_string());
        if !(100..=60_000).contains(&self.scrape_interval_ms) {
            return Err(bad(&format!(
                "--scrape-interval-ms {}: must be 100 ..= 60000",
                self.scrape_interval_ms
            )));
        }
        let scrape_timeout_ms = self
            .scrape_timeout_ms
            .unwrap_or(self.scrape_interval_ms.min(1500));
        if scrape_timeout_ms == 0 || scrape_timeout_ms > self.scrape_interval_ms {
            return Err(bad(&format!(
                "--scrape-timeout-ms {scrape_timeout_ms}: must be 1 ..= --scrape-interval-ms ({})",
                self.scrape_interval_ms
            )));
        }
        if !(1..=1024).contains(&self.max_viewers) {
            return Err(bad(&format!(
                "--max-viewers {}: must be 1 ..= 1024",
                self.max_viewers
            )));
        }
        Ok(Config {
            metastore: parse_addrs(&self.metastore)?,
            listen: self.listen.clone(),
            scrape_interval: Duration::from_millis(self.scrape_interval_ms),
            scrape_timeout: Duration::from_millis(scrape_timeout_ms),
            max_viewers: self.max_viewers,
            limits: model::Limits::default(),
        })
    }
}

/// What the tasks share.
struct Shared {
    model: Mutex<Model>,
    /// Every update, in the order the model made them. Sent while the model is locked, so
    /// that a viewer that takes the state and subscribes under the same lock misses none
    /// and sees none twice.
    updates: broadcast::Sender<Arc<str>>,
    viewers: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

impl Shared {
    fn publish(&self, update: Update) {
        // No viewer is not an error.
        let _ = self.updates.send(sse_frame(update.event, &update.data));
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// One Server-Sent Event (compact JSON has no newline, so one `data:` line).
fn sse_frame(event: &str, data: &serde_json::Value) -> Arc<str> {
    format!("event: {event}\ndata: {data}\n\n").into()
}

pub async fn run(args: DashboardArgs) -> Result<(), Failure> {
    let config = args.config()?;
    let access = args.ca.access(args.api_key_file.as_deref())?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr().context("listener address")?;
    eprintln!("dashboard: http://{local}/");

    let shared = Arc::new(Shared {
        model: Mutex::new(Model::new(config.limits.clone())),
        updates: broadcast::channel(UPDATE_BACKLOG).0,
        viewers: Arc::new(Semaphore::new(config.max_viewers)),
        connections: Arc::new(Semaphore::new(config.max_viewers + MAX_OTHER_CONNECTIONS)),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // The watch: a linearizable snapshot, then every revision, resumed across failures.
    let meta = MetaClient::new(
        config.metastore.clone(),
        TcpConnector {
            connect_timeout: Duration::from_secs(2),
            // The watch is a stream that lasts: no per-request bound on the channel.
            request_timeout: None,
            tls: access.tls.clone(),
        },
        METASTORE_TIMEOUT,
    )
    .with_key(access.key.clone());
    let (events_tx, events_rx) = mpsc::channel(WATCH_BACKLOG);
    let watcher = firetower_net::spawn_watch(meta, events_tx, stop_rx.clone());
    let applier = tokio::spawn(apply_events(shared.clone(), events_rx));

    let metastore_clients = config
        .metastore
        .iter()
        .map(|addr| (addr.clone(), status::connect(addr, &access)))
        .collect::<Vec<_>>();
    let scraper = tokio::spawn(scrape_rounds(
        shared.clone(),
        config.clone(),
        metastore_clients,
        stop_rx.clone(),
    ));

    let server = serve(listener, shared.clone(), stop_rx.clone());
    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        r = server => r,
    };
    let _ = stop_tx.send(true);
    let _ = watcher.await;
    let _ = applier.await;
    let _ = scraper.await;
    result
}

/// Applies the watch's events to the model and tells the viewers, in order.
async fn apply_events(shared: Arc<Shared>, mut events: mpsc::Receiver<pb::WatchEvent>) {
    while let Some(event) = events.recv().await {
        let mut model = shared.model.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(update) = model.apply(now(), event) {
            shared.publish(update);
        }
    }
}

/// Every `scrape_interval`: the members' metrics and topics, subscriber counts, the
/// metastore nodes' status; then one `metrics` update.
async fn scrape_rounds(
    shared: Arc<Shared>,
    config: Config,
    metastore: Vec<(String, Result<MetastoreClient<KeyedChannel>, String>)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.scrape_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (targets, to_count, edges) = {
            let model = shared.model.lock().unwrap_or_else(|e| e.into_inner());
            (model.targets(), model.topics_to_count(), model.edge_addrs())
        };
        let timeout = config.scrape_timeout;
        let round = async {
            let (metrics, topics) = scrape_members(&targets, timeout).await;
            Round {
                metrics,
                topics,
                subscribers: count_subscribers(&to_count, &edges, timeout).await,
                metastore: metastore_status(&metastore, timeout).await,
            }
        };
        let round = tokio::select! {
            r = round => r,
            _ = stop.changed() => return,
        };
        let mut model = shared.model.lock().unwrap_or_else(|e| e.into_inner());
        let update = model.record_round(now(), round);
        shared.publish(update);
    }
}

type MetricsResults = Vec<(model::MemberKey, Result<String, String>)>;
type TopicResults = Vec<(model::MemberKey, Result<Vec<TopicStat>, String>)>;

/// `/metrics` of every target and `/topics` of every distributor that has a `metrics`
/// address, at most [`SCRAPE_CONCURRENCY`] at once.
async fn scrape_members(targets: &[Target], timeout: Duration) -> (MetricsResults, TopicResults) {
    enum Got {
        Metrics(model::MemberKey, Result<String, String>),
        Topics(model::MemberKey, Result<Vec<TopicStat>, String>),
    }
    let jobs = targets.iter().flat_map(|t| {
        let metrics = t.metrics.clone().map(|addr| {
            let key = t.key;
            futures::future::Either::Left(async move {
                let text = get(&addr, "/metrics", timeout, MAX_SCRAPE_BODY)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(ok_body)
                    .map(|body| String::from_utf8_lossy(&body).into_owned());
                Got::Metrics(key, text)
            })
        });
        let topics = t.topics.clone().map(|addr| {
            let key = t.key;
            futures::future::Either::Right(async move {
                let list = get(&addr, "/topics", timeout, MAX_SCRAPE_BODY)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(ok_body)
                    .and_then(|body| parse_topics(&body));
                Got::Topics(key, list)
            })
        });
        metrics.into_iter().chain(topics)
    });
    // Owned futures, collected first: the stream holds no borrow across awaits.
    let jobs: Vec<_> = jobs.collect();
    let got: Vec<Got> = futures::stream::iter(jobs)
        .buffer_unordered(SCRAPE_CONCURRENCY)
        .collect()
        .await;
    let (mut metrics, mut topics) = (Vec::new(), Vec::new());
    for g in got {
        match g {
            Got::Metrics(key, r) => metrics.push((key, r)),
            Got::Topics(key, r) => topics.push((key, r)),
        }
    }
    (metrics, topics)
}

fn ok_body(response: Response) -> Result<Vec<u8>, String> {
    match response.status {
        200 => Ok(response.body),
        status => Err(format!("HTTP {status}")),
    }
}

/// A distributor's `{"topics":[{"topic":"name","published":N,"rate":R}]}`; entries that
/// are not of that shape are skipped.
fn parse_topics(body: &[u8]) -> Result<Vec<TopicStat>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("/topics is not JSON: {e}"))?;
    let list = value
        .get("topics")
        .and_then(|t| t.as_array())
        .ok_or("/topics has no \"topics\" list")?;
    Ok(list
        .iter()
        .filter_map(|t| {
            Some(TopicStat {
                topic: t.get("topic")?.as_str()?.to_string(),
                published: t.get("published").and_then(|p| p.as_f64()).unwrap_or(0.0),
                rate: t.get("rate").and_then(|r| r.as_f64()),
            })
        })
        .collect())
}

/// The subscriber count of each topic, asked of the edges in turn (each edge asks the
/// distributors, so any edge knows the whole cluster's count).
async fn count_subscribers(
    topics: &[String],
    edges: &[String],
    timeout: Duration,
) -> Vec<(String, Option<u64>)> {
    if edges.is_empty() {
        return topics.iter().map(|t| (t.clone(), None)).collect();
    }
    let asks = topics.iter().enumerate().map(|(i, topic)| {
        let edge = edges[i % edges.len()].clone();
        async move {
            let path = format!("/api/topic?topic={}", http::percent_encode(topic));
            let count = get(&edge, &path, timeout, MAX_TOPIC_STATUS_BODY)
                .await
                .ok()
                .filter(|response| response.status == 200)
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .and_then(|v| v.get("subscribers")?.as_u64());
            (topic.clone(), count)
        }
    });
    let asks: Vec<_> = asks.collect();
    futures::stream::iter(asks)
        .buffer_unordered(SCRAPE_CONCURRENCY)
        .collect()
        .await
}

/// Each configured metastore node's ClusterStatus.
async fn metastore_status(
    clients: &[(String, Result<MetastoreClient<KeyedChannel>, String>)],
    timeout: Duration,
) -> Vec<MetaNode> {
    let asks = clients.iter().map(|(addr, client)| async move {
        let status = match client {
            Err(e) => Err(e.clone()),
            Ok(client) => {
                let mut client = client.clone();
                match tokio::time::timeout(
                    timeout,
                    client.cluster_status(pb::ClusterStatusRequest {}),
                )
                .await
                {
                    Ok(Ok(reply)) => {
                        let r = reply.into_inner();
                        Ok(MetaStatus {
                            id: r.node_id,
                            state: r.state,
                            leader: r.leader,
                            term: r.term,
                            last_applied: r.last_applied,
                            revision: r.revision,
                            leases: r.leases.iter().map(LeaseAge::from_proto).collect(),
                        })
                    }
                    Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                    Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                }
            }
        };
        MetaNode {
            addr: addr.clone(),
            status,
        }
    });
    futures::future::join_all(asks).await
}

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Accepts connections until `stop`; each is served by its own task, at most
/// `max_viewers` + [`MAX_OTHER_CONNECTIONS`] at once.
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%e, "dashboard: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            // Not worth a task: a short answer if the socket takes it now, else nothing.
            let _ = stream.try_write(&http::secured(Response::text(503, "")).to_bytes());
            continue;
        };
        tokio::spawn(serve_conn(stream, shared.clone(), stop.clone(), permit));
    }
}

async fn serve_conn(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let request = match read_request(&mut stream, MAX_HEAD, REQUEST_TIMEOUT).await {
        Ok((request, _)) => request,
        Err(refusal) => {
            if let Some(refusal) = refusal {
                let _ = send(&mut stream, &http::secured(refusal)).await;
            }
            return;
        }
    };
    if request.method().as_str() == "GET" && request.uri().path() == "/api/events" {
        return serve_events(stream, shared, stop).await;
    }
    let response = answer(&|asked: &Request<'_>| route(&shared, asked), &request);
    let _ = send(&mut stream, &http::secured(response)).await;
}

/// Every path but the event stream (`None`: 404).
fn route(shared: &Shared, request: &Request<'_>) -> Option<Response> {
    Some(match request.path {
        "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => Response::new(200, "text/javascript; charset=utf-8", APP_JS),
        "/style.css" => Response::new(200, "text/css; charset=utf-8", STYLE_CSS),
        "/api/state" => {
            let state = {
                let model = shared.model.lock().unwrap_or_else(|e| e.into_inner());
                model.state(now())
            };
            Response::json(200, state.to_string())
        }
        "/healthz" => {
            let synced = shared
                .model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .synced();
            if synced {
                Response::text(200, "ok")
            } else {
                Response::text(503, "waiting for the metastore")
            }
        }
        _ => return None,
    })
}

/// One viewer's event stream: the whole state, then every update, until the viewer goes,
/// falls too far behind, or the dashboard stops.
async fn serve_events(mut stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Ok(_viewer) = shared.viewers.clone().try_acquire_owned() else {
        let refusal = http::secured(Response::text(503, "too many viewers"));
        let _ = send(&mut stream, &refusal).await;
        return;
    };
    let (first, mut updates) = {
        let model = shared.model.lock().unwrap_or_else(|e| e.into_inner());
        (
            sse_frame("state", &model.state(now())),
            shared.updates.subscribe(),
        )
    };
    let (mut reader, mut writer) = stream.split();
    let head = http::secured(Response::new(200, "text/event-stream", "")).head(None);
    // `retry`: how soon the browser reconnects after the stream ends.
    let opening = format!("{head}retry: 2000\n\n{first}");
    if !write_event(&mut writer, opening.as_bytes()).await {
        return;
    }
    let mut keepalive = tokio::time::interval(EVENT_KEEPALIVE);
    keepalive.reset();
    let mut scratch = [0u8; 512];
    loop {
        let frame: Arc<str> = tokio::select! {
            update = updates.recv() => match update {
                Ok(frame) => frame,
                // Lagged: the browser reconnects and starts again from the state.
                Err(_) => return,
            },
            _ = keepalive.tick() => Arc::from(": keepalive\n\n"),
            // A viewer sends nothing after its request: any read ending means it went.
            read = reader.read(&mut scratch) => match read {
                Ok(n) if n > 0 => continue,
                _ => return,
            },
            _ = stop.changed() => return,
        };
        if !write_event(&mut writer, frame.as_bytes()).await {
            return;
        }
    }
}

/// Writes to a viewer within [`EVENT_WRITE_TIMEOUT`]; false when it did not take it.
async fn write_event<W: tokio::io::AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(EVENT_WRITE_TIMEOUT, writer.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_lists_are_read_tolerantly() {
        let body =
            br#"{"topics":[{"topic":"a","published":5,"rate":1.5},{"topic":"b"},{"nope":1}]}"#;
        let list = parse_topics(body).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].rate, Some(1.5));
        assert_eq!(list[1].published, 0.0);
        assert!(parse_topics(b"{}").is_err());
        assert!(parse_topics(b"<html>").is_err());
    }

    #[test]
    fn events_are_single_data_lines() {
        let frame = sse_frame("delta", &serde_json::json!({"a": "x\ny"}));
        assert_eq!(&*frame, "event: delta\ndata: {\"a\":\"x\\ny\"}\n\n");
    }
}
